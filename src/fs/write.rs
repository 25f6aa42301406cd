//! The write path: every mutation of the merged view, in the overlayfs on-disk format.
//!
//! Rules (those of overlayfs, see docs/design.md):
//! - changes happen only in the upper layer; a lower object is copied up first;
//! - removing a name that a lower layer shows leaves a whiteout; creating a directory
//!   where a whiteout hid something makes it opaque;
//! - renaming a directory with lower parts first copies its whole tree up (and makes it
//!   opaque), so the rename is a plain rename in the upper layer: no EXDEV;
//! - names beginning with `.wh.` cannot be created: they would read back as whiteouts.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use super::acl;
use super::copyup::{Replace, WhiteoutFormat, remove_tree};
use super::handle::OpenFile;
use super::inode::{Node, NodeState};
use super::trace::{self, TraceEvent, TraceKind};
use super::{Attr, Found, OpenedFile, UnionFs};
use crate::layer::FileKind;
use crate::layer::resolve::{Resolver, Step};
use crate::layer::whiteout::{self, is_private_xattr, is_reserved_name};
use crate::sys::{self, Errno, SetTime, Stat, SysResult};

/// Who asks: the new object's owner.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// What a `setattr` changes; `None` leaves a field alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
    pub fh: Option<u64>,
}

/// What kind of object to create.
pub enum NewObject<'a> {
    File { mode: u32 },
    Dir { mode: u32 },
    Node { mode: u32, rdev: u64 },
    Symlink { target: &'a OsStr },
}

impl UnionFs {
    fn writable(&self) -> SysResult<()> {
        if self.read_only() {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    fn check_new_name(name: &OsStr) -> SysResult<()> {
        if name.len() > 255 {
            Err(Errno::ENAMETOOLONG)
        } else if is_reserved_name(name.as_bytes()) {
            Err(Errno::EINVAL)
        } else {
            Ok(())
        }
    }

    /// Whether the layers below the upper one show `name` in directory `pst`: removing the
    /// upper entry would then reveal it, so a whiteout is needed.
    fn lower_has(&self, pst: &NodeState, name: &OsStr) -> SysResult<bool> {
        let mut resolver = Resolver::new(None);
        let lowers: Vec<_> = pst.dirs.iter().filter(|(l, _)| *l != 0).collect();
        for (i, (layer, fd)) in lowers.iter().enumerate() {
            let p = self
                .stack
                .probe_in(fd.as_fd(), name, i + 1 == lowers.len())?;
            if resolver.feed(*layer, p.probe) == Step::Done {
                break;
            }
        }
        Ok(resolver.finish().winner.is_some())
    }

    /// The node for a found name: the live one, or a detached one for this call.
    fn node_for(&self, parent: &Arc<Node>, name: &OsStr, f: Found) -> Arc<Node> {
        match self.nodes.get(f.id) {
            Some(n) => {
                let mut st = n.state.write();
                st.set_layer(f.layer);
                st.kind = f.kind;
                st.dirs = f.dirs.into_boxed_slice();
                st.set_primary(parent.clone(), name.into());
                drop(st);
                n
            }
            None => Arc::new(Node::new(
                f.id,
                NodeState::new(
                    Some(parent.clone()),
                    name.into(),
                    f.kind,
                    f.layer,
                    f.dirs,
                    self.generation(),
                ),
            )),
        }
    }

    /// Creates a new object at `name` in `parent` owned by `caller`, replacing a whiteout
    /// there if any, and returns its attributes (counting a kernel lookup). Its mode is the
    /// requested one under the caller's `umask`, or, in a directory with a default ACL,
    /// under that ACL instead.
    pub fn create_object(
        &self,
        parent: u64,
        name: &OsStr,
        obj: NewObject<'_>,
        umask: u32,
        caller: Caller,
    ) -> SysResult<Attr> {
        let _reason = trace::reason(match &obj {
            NewObject::File { .. } => "create",
            NewObject::Dir { .. } => "mkdir",
            NewObject::Node { .. } => "mknod",
            NewObject::Symlink { .. } => "symlink",
        });
        self.writable()?;
        Self::check_new_name(name)?;
        // A 0/0 character device is a whiteout in the upper layer: made by the daemon it
        // would hide the name instead of creating it. Kernel overlayfs refuses it to
        // everyone (the VFS lets unprivileged callers make one, so the kernel's own
        // CAP_MKNOD check does not stop it).
        if let NewObject::Node { mode, rdev: 0 } = &obj
            && mode & libc::S_IFMT == libc::S_IFCHR
        {
            return Err(Errno::EPERM);
        }
        let parent_node = self.node(parent)?;
        {
            let pst = parent_node.state.read();
            if !pst.kind.is_dir() {
                return Err(Errno::ENOTDIR);
            }
            // In a directory of the upper layer alone, the upper slot probed below tells
            // whether the name exists.
            let upper_only = matches!(&*pst.dirs, [(0, _)]);
            if !upper_only && self.find(&pst, name)?.is_some() {
                return Err(Errno::EEXIST);
            }
        }
        self.copy_up(&parent_node)?;
        self.indexes.drop_dir(parent_node.id);
        let parent_path = self.tracer.enabled().then(|| self.path_of(&parent_node));
        let pst = parent_node.state.read();
        let upper = pst.dir_in(0).ok_or(Errno::EIO)?;
        let parent_st = sys::stat_fd(upper)?;
        // Ownership as the kernel gives it: the caller's, but the group of a setgid dir
        // (given explicitly: an object built in the work dir does not inherit it).
        let gid = if parent_st.st_mode & libc::S_ISGID == 0 {
            caller.gid
        } else {
            parent_st.st_gid
        };
        let (is_dir, requested) = match &obj {
            NewObject::File { mode } | NewObject::Node { mode, .. } => (false, *mode),
            NewObject::Dir { mode } => (true, *mode),
            NewObject::Symlink { .. } => (false, 0o777),
        };
        // An upper filesystem without ACLs (EOPNOTSUPP) has no default ACL either.
        let default_acl = match obj {
            NewObject::Symlink { .. } => None,
            _ => sys::get_xattr(upper, None, OsStr::new(acl::DEFAULT_XATTR))
                .ok()
                .flatten(),
        };
        let from_acl = default_acl
            .as_deref()
            .and_then(|d| acl::inherit(d, requested));
        let mode = from_acl
            .as_ref()
            .map_or(requested & !(umask & 0o777), |i| i.mode);
        let make = |dir: BorrowedFd<'_>, n: &OsStr| -> SysResult<()> {
            match &obj {
                NewObject::File { .. } => sys::open_at(
                    dir,
                    n,
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                    mode & 0o777,
                )
                .map(drop),
                NewObject::Dir { .. } => sys::mkdir_at(dir, n, mode & 0o777),
                NewObject::Node { rdev, .. } => {
                    sys::mknod_at(dir, n, (mode & libc::S_IFMT) | (mode & 0o777), *rdev)
                }
                NewObject::Symlink { target } => sys::symlink_at(target, dir, n),
            }?;
            sys::chown_at(dir, Some(n), Some(caller.uid), Some(gid))?;
            // Set explicitly: built in the work dir, the object inherited nothing.
            if let Some(access) = from_acl.as_ref().and_then(|i| i.access.as_deref()) {
                sys::set_xattr(dir, Some(n), OsStr::new(acl::ACCESS_XATTR), access, 0)?;
            }
            if let (true, Some(default)) = (is_dir, &default_acl) {
                sys::set_xattr(dir, Some(n), OsStr::new(acl::DEFAULT_XATTR), default, 0)?;
            }
            // After chown (which clears setuid/setgid), the full requested mode; a new
            // directory in a setgid directory keeps the setgid bit it inherited.
            let inherited = if is_dir {
                parent_st.st_mode & libc::S_ISGID
            } else {
                0
            };
            if !matches!(obj, NewObject::Symlink { .. }) && (mode & 0o7000 | inherited) != 0 {
                sys::chmod_at(dir, Some(n), (mode & 0o7777) | inherited)?;
            }
            Ok(())
        };
        let slot = upper_slot(upper, name)?;
        let over_whiteout = matches!(slot, Slot::OverlayWhiteout | Slot::OciWhiteout);
        match slot {
            Slot::Empty => make(upper, name)?,
            Slot::OverlayWhiteout => {
                // Build in the work dir and swap it in for the whiteout atomically.
                let work = self.work()?;
                let tmp = self.temp_name();
                make(work, &tmp)?;
                if is_dir {
                    let fd = sys::open_dir_at(work, &tmp)?;
                    self.set_opaque(fd.as_fd())?;
                }
                if let Err(e) = sys::rename_at(work, &tmp, upper, name, sys::RENAME_EXCHANGE) {
                    let _ = remove_tree(work, &tmp);
                    return Err(e);
                }
                remove_tree(work, &tmp)?;
            }
            Slot::OciWhiteout => {
                make(upper, name)?;
                if is_dir {
                    let fd = sys::open_dir_at(upper, name)?;
                    self.set_opaque(fd.as_fd())?;
                }
                let wh = whiteout::whiteout_name(name.as_bytes());
                sys::unlink_at(upper, OsStr::from_bytes(&wh), false)?;
            }
            Slot::Taken => return Err(Errno::EEXIST),
        }
        // The new object may have the inode number of a removed one the kernel still
        // knows (its node is live until the kernel forgets it): ids must not be shared,
        // so the new object gets a fresh one, kept like a copied-up file's.
        let st = sys::stat_at(upper, name)?;
        if self.nodes.get(self.file_id(0, &st)).is_some() {
            self.copied
                .insert((st.st_dev, st.st_ino), self.nodes.fresh_id());
        }
        // The new object is all the merged view shows of the name: a directory made
        // where lower ones are hidden is opaque.
        let kind = crate::layer::stack::kind_of(&st)?;
        let found = Found {
            layer: 0,
            kind,
            dirs: if is_dir {
                vec![(0, sys::open_dir_at(upper, name)?)]
            } else {
                Vec::new()
            },
            id: self.file_id(0, &st),
            stat: st,
        };
        drop(pst);
        if let Some(pp) = parent_path
            && is_dir
            && over_whiteout
        {
            self.tracer.emit(TraceEvent {
                kind: TraceKind::Opaque,
                path: Self::child_path(&pp, name, true),
                layer: None,
                reason: trace::current_reason(),
            });
        }
        Ok(self.remember(parent_node, name, found))
    }

    /// Opens a file for writing (copying it up first) or reading.
    pub fn open_for_write(&self, id: u64, flags: i32) -> SysResult<OpenedFile> {
        let _reason = trace::reason("open for write");
        self.writable()?;
        let node = self.node(id)?;
        if node.state.read().kind.is_dir() {
            return Err(Errno::EISDIR);
        }
        self.copy_up_with(&node, flags & libc::O_TRUNC == 0)?;
        self.open_upper(&node, flags)
    }

    /// Opens the upper instance of `node`. The fd is opened read-write where possible: it
    /// backs every open of the inode under passthrough; the kernel enforces each open's mode.
    pub(super) fn open_upper(&self, node: &Node, flags: i32) -> SysResult<OpenedFile> {
        let keep = flags & (libc::O_NONBLOCK | libc::O_DIRECT | libc::O_SYNC | libc::O_DSYNC);
        // Always the upper layer's entry, whatever the node's state says: a write must
        // never reach a lower file, even if a racing lookup left the state stale.
        let fd = {
            let st = node.state.read();
            if st.kind.is_dir() {
                return Err(Errno::EISDIR);
            }
            let parent = st.parent.as_ref().ok_or(Errno::ESTALE)?;
            let pst = parent.state.read();
            let dir = pst.dir_in(0).ok_or(Errno::EIO)?;
            match sys::open_at(dir, &st.name, libc::O_RDWR | keep, 0) {
                Err(Errno::EACCES) | Err(Errno::ETXTBSY) | Err(Errno::EROFS) => {
                    sys::open_at(dir, &st.name, (flags & libc::O_ACCMODE) | keep, 0)
                }
                other => other,
            }?
        };
        if flags & libc::O_TRUNC != 0 {
            sys::truncate_fd(fd.as_fd(), 0)?;
        }
        let file = Arc::new(std::fs::File::from(fd));
        let fh = self.handles.add_file(OpenFile {
            file: file.clone(),
            upper: true,
            place: None,
            ino: node.id,
        });
        Ok(OpenedFile {
            fh,
            file,
            upper: true,
        })
    }

    /// Creates and opens a regular file.
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        caller: Caller,
    ) -> SysResult<(Attr, OpenedFile)> {
        let attr = self.create_object(parent, name, NewObject::File { mode }, umask, caller)?;
        let node = self.node(attr.ino)?;
        let opened = self.open_upper(&node, flags & !libc::O_TRUNC)?;
        Ok((attr, opened))
    }

    /// Removes a non-directory (`dir` false) or an empty directory (`dir` true).
    pub fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> SysResult<()> {
        let _reason = trace::reason(if dir { "rmdir" } else { "unlink" });
        self.writable()?;
        let parent_node = self.node(parent)?;
        let found = {
            let pst = parent_node.state.read();
            self.find_indexed(&parent_node, &pst, name)?
                .ok_or(Errno::ENOENT)?
        };
        match (dir, found.kind.is_dir()) {
            (false, true) => return Err(Errno::EISDIR),
            (true, false) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        if dir && !self.merged_is_empty(found.id, &found.dirs)? {
            return Err(Errno::ENOTEMPTY);
        }
        self.copy_up(&parent_node)?;
        let parent_path = self.tracer.enabled().then(|| self.path_of(&parent_node));
        let pst = parent_node.state.read();
        let upper = pst.dir_in(0).ok_or(Errno::EIO)?;
        let in_upper = found.layer == 0;
        // A name found in a lower layer needs a whiteout; one found in the upper layer
        // only if it also shadows a lower one.
        let need_whiteout = !in_upper || self.lower_has(&pst, name)?;
        match (in_upper, need_whiteout) {
            (true, true) => {
                let replace = if dir {
                    Replace::EmptiedDir
                } else {
                    Replace::Entry
                };
                self.make_whiteout(upper, name, replace)?
            }
            (true, false) if dir => {
                // Its whiteouts go with it: move it aside, then delete.
                let work = self.work()?;
                let tmp = self.temp_name();
                sys::rename_at(upper, name, work, &tmp, 0)?;
                self.dispose(work, tmp, Replace::EmptiedDir)?;
            }
            (true, false) => sys::unlink_at(upper, name, false)?,
            (false, _) => self.make_whiteout(upper, name, Replace::Nothing)?,
        }
        // Only this name left the merged view: the rest of a cached listing still holds
        // (an `rm -rf` then resolves each name without probing the layers).
        self.indexes.forget_name(parent_node.id, name);
        // The parent's times changed by themselves: every path above modified it.
        // The parent's lock goes before the child's is taken: `with_place` takes a child's
        // and then its parent's, so holding them the other way round deadlocks.
        drop(pst);
        if let Some(pp) = parent_path
            && need_whiteout
        {
            self.tracer.emit(TraceEvent {
                kind: TraceKind::Whiteout,
                path: Self::child_path(&pp, name, dir),
                layer: self.layer_number(found.layer),
                reason: trace::current_reason(),
            });
        }
        if let Some(n) = self.nodes.get(found.id) {
            self.name_removed(&n, &parent_node, name, Some((found.stat, found.layer)));
        }
        Ok(())
    }

    /// Whether directory `id`, made of `dirs`, shows no names: its cached listing answers
    /// where there is one (kept current by removals, so after an `rm -rf` of its contents
    /// no layer is read again).
    fn merged_is_empty(&self, id: u64, dirs: &[(usize, std::os::fd::OwnedFd)]) -> SysResult<bool> {
        if let Some(index) = self.indexes.get(id, self.generation()) {
            return Ok(index.is_empty());
        }
        Ok(self.merged_entries(dirs)?.is_empty())
    }

    /// Renames `name` in `parent` to `newname` in `newparent`; `flags` are renameat2's.
    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> SysResult<()> {
        let _reason = trace::reason("rename");
        self.writable()?;
        Self::check_new_name(newname)?;
        let exchange = flags & sys::RENAME_EXCHANGE != 0;
        if flags & !(sys::RENAME_EXCHANGE | sys::RENAME_NOREPLACE) != 0 {
            return Err(Errno::EINVAL);
        }
        let (pnode, npnode) = (self.node(parent)?, self.node(newparent)?);
        let src = self.find(&pnode.state.read(), name)?.ok_or(Errno::ENOENT)?;
        let dst = self.find(&npnode.state.read(), newname)?;
        if flags & sys::RENAME_NOREPLACE != 0 && dst.is_some() {
            return Err(Errno::EEXIST);
        }
        if exchange && dst.is_none() {
            return Err(Errno::ENOENT);
        }
        if let Some(d) = &dst {
            if d.id == src.id && !exchange {
                return Ok(());
            }
            match (src.kind.is_dir(), d.kind.is_dir(), exchange) {
                (true, false, false) => return Err(Errno::ENOTDIR),
                (false, true, false) => return Err(Errno::EISDIR),
                (_, true, false) if !self.merged_is_empty(d.id, &d.dirs)? => {
                    return Err(Errno::ENOTEMPTY);
                }
                _ => {}
            }
        }
        let src_is_dir = src.kind.is_dir();
        let dst_info = dst.as_ref().map(|d| (d.layer, d.kind));
        let dst_stat = dst.as_ref().map(|d| (d.stat, d.layer));
        let src_node = self.node_for(&pnode, name, src);
        let dst_node = dst.map(|d| self.node_for(&npnode, newname, d));
        for n in std::iter::once(&src_node).chain(dst_node.iter().filter(|_| exchange)) {
            if n.state.read().kind.is_dir() {
                self.copy_up_tree(n)?;
            } else {
                self.copy_up(n)?;
            }
        }
        self.copy_up(&pnode)?;
        self.copy_up(&npnode)?;
        self.indexes.drop_dir(pnode.id);
        self.indexes.drop_dir(npnode.id);
        let parent_path = self.tracer.enabled().then(|| self.path_of(&pnode));
        let pst = pnode.state.read();
        let up = pst.dir_in(0).ok_or(Errno::EIO)?;
        let need_whiteout = !exchange && self.lower_has(&pst, name)?;
        let same_parent = Arc::ptr_eq(&pnode, &npnode);
        let npst = if same_parent {
            None
        } else {
            Some(npnode.state.read())
        };
        let unp = match &npst {
            Some(s) => s.dir_in(0).ok_or(Errno::EIO)?,
            None => up,
        };
        let work = self.work()?;
        let mut aside = None;
        if !exchange && let Some((0, FileKind::Directory)) = dst_info {
            // The target directory may hold whiteouts; it must be empty on disk.
            let tmp = self.temp_name();
            sys::rename_at(unp, newname, work, &tmp, 0)?;
            aside = Some(tmp);
        }
        // A directory moved onto a name a lower layer holds must hide what is below there.
        if src_is_dir && self.lower_has(npst.as_deref().unwrap_or(&pst), newname)? {
            let fd = sys::open_dir_at(up, name)?;
            self.set_opaque(fd.as_fd())?;
        }
        let dst_is_dir = dst_info.is_some_and(|(_, k)| k.is_dir());
        if exchange && dst_is_dir && self.lower_has(&pst, name)? {
            let fd = sys::open_dir_at(unp, newname)?;
            self.set_opaque(fd.as_fd())?;
        }
        let mut rflags = flags & (sys::RENAME_EXCHANGE);
        if need_whiteout && self.whiteout == WhiteoutFormat::Overlay {
            rflags |= sys::RENAME_WHITEOUT;
        }
        // A directory cannot replace the whiteout device at the target: swap them, and
        // the whiteout lands on the source name, where it is needed or removed.
        let dir_onto_whiteout =
            src_is_dir && !exchange && matches!(upper_slot(unp, newname)?, Slot::OverlayWhiteout);
        if dir_onto_whiteout {
            rflags = sys::RENAME_EXCHANGE;
        }
        let renamed = sys::rename_at(up, name, unp, newname, rflags).and_then(|()| {
            if dir_onto_whiteout && !need_whiteout {
                sys::unlink_at(up, name, false)
            } else {
                Ok(())
            }
        });
        if let Err(e) = renamed {
            if let Some(tmp) = &aside {
                let _ = sys::rename_at(work, tmp, unp, newname, 0);
            }
            return Err(e);
        }
        if let Some(tmp) = aside {
            remove_tree(work, &tmp)?;
        }
        if need_whiteout && self.whiteout == WhiteoutFormat::Oci && !dir_onto_whiteout {
            self.make_whiteout(up, name, Replace::Nothing)?;
        }
        if !exchange && self.whiteout == WhiteoutFormat::Oci {
            let wh = whiteout::whiteout_name(newname.as_bytes());
            let _ = sys::unlink_at(unp, OsStr::from_bytes(&wh), false);
        }
        drop(npst);
        drop(pst);
        if let Some(pp) = parent_path
            && need_whiteout
        {
            self.tracer.emit(TraceEvent {
                kind: TraceKind::Whiteout,
                path: Self::child_path(&pp, name, src_is_dir),
                layer: None,
                reason: trace::current_reason(),
            });
        }
        self.moved(&src_node, (&pnode, name), &npnode, newname);
        match &dst_node {
            Some(d) if exchange => self.moved(d, (&npnode, newname), &pnode, name),
            // The replaced target loses this name.
            Some(d) if d.id != src_node.id => self.name_removed(d, &npnode, newname, dst_stat),
            _ => {}
        }
        Ok(())
    }

    /// Records that (`parent`, `name`) no longer names `node`, whose attributes were `stat`.
    /// `stat` is the attributes it had there and the layer it was in: an upper file loses
    /// a link; a lower file is only hidden, and keeps its links.
    fn name_removed(
        &self,
        node: &Node,
        parent: &Arc<Node>,
        name: &OsStr,
        stat: Option<(Stat, usize)>,
    ) {
        let mut st = node.state.write();
        st.forget_name(parent, name);
        // A remembered name may since have gone by a way the node did not see (its
        // directory replaced, say): the name taking over must still lead to this file.
        while let Some(p) = st.parent.clone().filter(|_| !st.unlinked) {
            let n = st.name.clone();
            drop(st);
            let leads_here =
                matches!(self.find(&p.state.read(), &n), Ok(Some(f)) if f.id == node.id);
            st = node.state.write();
            if leads_here {
                break;
            }
            st.forget_name(&p, &n);
        }
        if st.unlinked
            && let Some((mut gone, layer)) = stat
        {
            // What descriptors still open on it answer (see `stat_node`).
            if layer == 0 {
                gone.st_nlink = gone.st_nlink.saturating_sub(1);
            }
            st.set_removed(gone);
        }
    }

    /// Records that `node` now lives at `name` in `parent`, in the upper layer.
    fn moved(
        &self,
        node: &Arc<Node>,
        from: (&Arc<Node>, &OsStr),
        parent: &Arc<Node>,
        name: &OsStr,
    ) {
        let mut st = node.state.write();
        st.rename_name(from, parent.clone(), name.into());
        st.set_layer(0);
        st.generation = self.generation();
    }

    /// Makes a hard link `newname` in `newparent` to `id` (copied up first).
    pub fn link(&self, id: u64, newparent: u64, newname: &OsStr) -> SysResult<Attr> {
        let _reason = trace::reason("link");
        self.writable()?;
        Self::check_new_name(newname)?;
        let node = self.node(id)?;
        if node.state.read().kind.is_dir() {
            return Err(Errno::EPERM);
        }
        let np = self.node(newparent)?;
        if self.find(&np.state.read(), newname)?.is_some() {
            return Err(Errno::EEXIST);
        }
        self.copy_up(&node)?;
        self.copy_up(&np)?;
        self.indexes.drop_dir(np.id);
        {
            let st = node.state.read();
            let parent = st.parent.as_ref().ok_or(Errno::ESTALE)?;
            let pst = parent.state.read();
            let src_dir = pst.dir_in(0).ok_or(Errno::EIO)?;
            let npst = if Arc::ptr_eq(parent, &np) {
                None
            } else {
                Some(np.state.read())
            };
            let dst_dir = match &npst {
                Some(s) => s.dir_in(0).ok_or(Errno::EIO)?,
                None => src_dir,
            };
            match upper_slot(dst_dir, newname)? {
                Slot::Empty => sys::link_at(src_dir, &st.name, dst_dir, newname)?,
                Slot::OverlayWhiteout => {
                    let work = self.work()?;
                    let tmp = self.temp_name();
                    sys::link_at(src_dir, &st.name, work, &tmp)?;
                    sys::rename_at(work, &tmp, dst_dir, newname, 0)?;
                }
                Slot::OciWhiteout => {
                    sys::link_at(src_dir, &st.name, dst_dir, newname)?;
                    let wh = whiteout::whiteout_name(newname.as_bytes());
                    sys::unlink_at(dst_dir, OsStr::from_bytes(&wh), false)?;
                }
                Slot::Taken => return Err(Errno::EEXIST),
            }
        }
        node.state.write().add_alias(np.clone(), newname.into());
        // Answer as a lookup of the new name would: every name of the file gets the
        // same number (the node's, unless the copy-up made the file a new inode).
        self.lookup(newparent, newname)
    }

    /// Changes attributes, copying up first.
    pub fn setattr(&self, id: u64, set: SetAttr) -> SysResult<Attr> {
        let _reason = trace::reason("setattr");
        self.writable()?;
        // Through an open upper file: that file, whatever its names mean by now.
        if let Some(file) = set.fh.and_then(|fh| self.handles.upper_file(fh)) {
            return self.setattr_fd(id, file.as_fd(), &set);
        }
        let node = self.node(id)?;
        // A file whose last name went while open (the kernel clearing setuid after a
        // write to it, say): its open upper file is all that is left of it.
        let gone = node.state.read().unlinked;
        if gone && let Some(file) = self.handles.upper_file_of(id) {
            return self.setattr_fd(id, file.as_fd(), &set);
        }
        self.copy_up(&node)?;
        if let Some(size) = set.size {
            let via_handle = set.fh.and_then(|fh| self.handles.file(fh));
            match via_handle {
                Some(f) => sys::truncate_fd(f.as_fd(), size)?,
                None => {
                    let fd = self.with_place(&node, |p| match p {
                        super::Place::Entry(dir, name) => {
                            sys::open_at(dir, name, libc::O_WRONLY, 0)
                        }
                        super::Place::Dir(_) => Err(Errno::EISDIR),
                    })?;
                    sys::truncate_fd(fd.as_fd(), size)?;
                }
            }
        }
        self.with_place(&node, |p| match p {
            super::Place::Dir(fd) => apply_meta(fd, None, &set),
            super::Place::Entry(dir, name) => apply_meta(dir, Some(name), &set),
        })?;
        self.stat_node(&node)
    }

    /// [`Self::setattr`] on the open upper file `fd` of node `id`.
    fn setattr_fd(&self, id: u64, fd: BorrowedFd<'_>, set: &SetAttr) -> SysResult<Attr> {
        if let Some(size) = set.size {
            sys::truncate_fd(fd, size)?;
        }
        apply_meta(fd, None, set)?;
        Ok(Attr {
            ino: id,
            st: sys::stat_fd(fd)?,
            volatile: false,
        })
    }

    /// After an open with `O_TRUNC` by a caller without `CAP_FSETID`: the kernel leaves
    /// clearing setuid and setgid to us when it hands the truncation to open
    /// (`FUSE_ATOMIC_O_TRUNC`); as it would, setgid goes only with group execute.
    pub fn drop_privileges_on_truncate(&self, fh: u64) -> SysResult<()> {
        let file = self.handles.upper_file(fh).ok_or(Errno::EBADF)?;
        let st = sys::stat_fd(file.as_fd())?;
        let mut mode = st.st_mode & 0o7777 & !libc::S_ISUID;
        if mode & libc::S_IXGRP != 0 {
            mode &= !libc::S_ISGID;
        }
        if mode != st.st_mode & 0o7777 {
            sys::chmod_at(file.as_fd(), None, mode)?;
        }
        Ok(())
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> SysResult<usize> {
        let file = self.handles.file(fh).ok_or(Errno::EBADF)?;
        sys::pwrite_all(file.as_fd(), data, offset)
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> SysResult<()> {
        let file = self.handles.file(fh).ok_or(Errno::EBADF)?;
        sys::sync_fd(file.as_fd(), datasync)
    }

    /// fsync of a directory: its upper instance, if it has one.
    pub fn fsyncdir(&self, id: u64, datasync: bool) -> SysResult<()> {
        let node = self.node(id)?;
        let st = node.state.read();
        match st.dir_in(0) {
            Some(fd) => match sys::sync_fd(fd, datasync) {
                Err(Errno::EBADF) => Ok(()),
                other => other,
            },
            None => Ok(()),
        }
    }

    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> SysResult<()> {
        let file = self.handles.file(fh).ok_or(Errno::EBADF)?;
        sys::fallocate(file.as_fd(), mode, offset, len)
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> SysResult<i64> {
        let file = self.handles.file(fh).ok_or(Errno::EBADF)?;
        sys::lseek(file.as_fd(), offset, whence)
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        off_in: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
    ) -> SysResult<usize> {
        let src = self.handles.file(fh_in).ok_or(Errno::EBADF)?;
        let dst = self.handles.file(fh_out).ok_or(Errno::EBADF)?;
        sys::copy_range(src.as_fd(), off_in, dst.as_fd(), off_out, len)
    }

    pub fn setxattr(&self, id: u64, name: &OsStr, value: &[u8], flags: i32) -> SysResult<()> {
        let _reason = trace::reason("setxattr");
        self.writable()?;
        if is_private_xattr(name.as_bytes()) {
            return Err(Errno::EOPNOTSUPP);
        }
        let node = self.node(id)?;
        self.copy_up(&node)?;
        self.with_place(&node, |p| match p {
            super::Place::Dir(fd) => sys::set_xattr(fd, None, name, value, flags),
            super::Place::Entry(dir, n) => sys::set_xattr(dir, Some(n), name, value, flags),
        })
    }

    pub fn removexattr(&self, id: u64, name: &OsStr) -> SysResult<()> {
        let _reason = trace::reason("removexattr");
        self.writable()?;
        if is_private_xattr(name.as_bytes()) {
            return Err(Errno::EOPNOTSUPP);
        }
        let node = self.node(id)?;
        // Nothing to copy up for an attribute that is not there.
        self.getxattr(id, name)?;
        self.copy_up(&node)?;
        self.with_place(&node, |p| match p {
            super::Place::Dir(fd) => sys::remove_xattr(fd, None, name),
            super::Place::Entry(dir, n) => sys::remove_xattr(dir, Some(n), name),
        })
    }

    /// Whether node `id` is a file that has an upper instance.
    pub fn is_copied_up(&self, id: u64) -> bool {
        self.nodes
            .get(id)
            .is_some_and(|n| n.state.read().layer() == 0)
    }

    /// Copies `id` up and shows the copy as a new inode from now on: used when a lower
    /// file held open read-only under passthrough is opened for writing (the kernel allows
    /// one backing file per inode).
    pub fn split_for_write(&self, id: u64) -> SysResult<()> {
        let _reason = trace::reason("write");
        self.writable()?;
        let node = self.node(id)?;
        self.copy_up(&node)?;
        let st = self.stat_node(&node)?.st;
        self.copied.remove(&(st.st_dev, st.st_ino));
        Ok(())
    }
}

/// Owner, mode and times of `set` onto `name` in `dir` (or `dir` itself).
fn apply_meta(dir: BorrowedFd<'_>, name: Option<&OsStr>, set: &SetAttr) -> SysResult<()> {
    if set.uid.is_some() || set.gid.is_some() {
        sys::chown_at(dir, name, set.uid, set.gid)?;
    }
    if let Some(mode) = set.mode {
        sys::chmod_at(dir, name, mode & 0o7777)?;
    }
    if set.atime.is_some() || set.mtime.is_some() {
        let (a, m) = (
            set.atime.unwrap_or(SetTime::Omit),
            set.mtime.unwrap_or(SetTime::Omit),
        );
        sys::utimens_at(dir, name, a, m)?;
    }
    Ok(())
}

/// What the upper directory holds at a name about to be created.
enum Slot {
    Empty,
    OverlayWhiteout,
    OciWhiteout,
    Taken,
}

fn upper_slot(upper: BorrowedFd<'_>, name: &OsStr) -> SysResult<Slot> {
    match sys::stat_at(upper, name) {
        Ok(st) => {
            let kind = crate::layer::stack::kind_of(&st)?;
            if whiteout::is_whiteout_device(kind, st.st_rdev) {
                Ok(Slot::OverlayWhiteout)
            } else {
                Ok(Slot::Taken)
            }
        }
        Err(Errno::ENOENT) => {
            let wh = whiteout::whiteout_name(name.as_bytes());
            match sys::stat_at(upper, OsStr::from_bytes(&wh)) {
                Ok(_) => Ok(Slot::OciWhiteout),
                Err(Errno::ENOENT) | Err(Errno::ENAMETOOLONG) => Ok(Slot::Empty),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}
