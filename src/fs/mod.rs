//! The union filesystem core: merged-view operations as methods that return values
//! (`Result<T, Errno>`), independent of FUSE, so every rule can be exercised without a
//! mount. The FUSE adapter in [`crate::fuse`] only converts and replies.

pub mod handle;
pub mod inode;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use crate::layer::merge::merge_listings;
use crate::layer::resolve::{Probe, Resolver, Step};
use crate::layer::stack::{is_opaque_dir, kind_of};
use crate::layer::whiteout::{is_private_xattr, is_reserved_name};
use crate::layer::{FileKind, LayerStack};
use crate::sys::{self, Errno, Stat, SysResult};
use handle::HandleTable;
use inode::{Node, NodeState, NodeTable, ROOT_ID};

/// Attributes of a merged-view object: the backing `stat` with the merged-view inode number.
#[derive(Clone, Copy, Debug)]
pub struct Attr {
    pub ino: u64,
    pub st: Stat,
}

/// One entry of a merged directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirItem {
    pub name: OsString,
    pub kind: FileKind,
    pub ino: u64,
}

/// An opened regular file.
#[derive(Debug)]
pub struct OpenedFile {
    pub fh: u64,
    pub file: Arc<File>,
}

/// The merged view of one layer stack.
#[derive(Debug)]
pub struct UnionFs {
    stack: LayerStack,
    nodes: NodeTable,
    handles: HandleTable,
}

/// Where to reach a node's backing instance: a directory fd and, for non-directories, the
/// name inside it.
enum Place<'a> {
    Dir(BorrowedFd<'a>),
    Entry(BorrowedFd<'a>, &'a OsStr),
}

impl UnionFs {
    /// Builds the merged view of `stack`; fails if the root of the top layer is unusable.
    pub fn new(stack: LayerStack) -> SysResult<UnionFs> {
        let nodes = NodeTable::default();
        let mut resolver = Resolver::new(stack.upper());
        let mut dirs = Vec::new();
        for i in 0..stack.len() {
            let root = stack.layer(i).root.try_clone().map_err(|_| Errno::EMFILE)?;
            let opaque = is_opaque_dir(root.as_fd())?;
            dirs.push((i, root));
            let probe = Probe::Entry {
                kind: FileKind::Directory,
                opaque,
            };
            if resolver.feed(i, probe) == Step::Done {
                break;
            }
        }
        let merged = resolver.finish().merged;
        dirs.retain(|(l, _)| merged.contains(l));
        nodes.insert_root(NodeState {
            parent: None,
            name: OsString::new(),
            kind: FileKind::Directory,
            layer: 0,
            dirs,
        });
        Ok(UnionFs {
            stack,
            nodes,
            handles: HandleTable::default(),
        })
    }

    pub fn stack(&self) -> &LayerStack {
        &self.stack
    }

    /// True when there is no upper layer: every change is refused with EROFS.
    pub fn read_only(&self) -> bool {
        self.stack.upper().is_none()
    }

    /// Number of nodes the kernel holds (for memory accounting and tests).
    pub fn live_nodes(&self) -> usize {
        self.nodes.len()
    }

    fn node(&self, id: u64) -> SysResult<Arc<Node>> {
        self.nodes.get(id).ok_or(Errno::ESTALE)
    }

    /// Calls `f` with the place of the node's shown instance.
    fn with_place<T>(
        &self,
        node: &Node,
        f: impl FnOnce(Place<'_>) -> SysResult<T>,
    ) -> SysResult<T> {
        let st = node.state.read();
        if st.kind.is_dir() {
            let fd = st
                .dirs
                .first()
                .map(|(_, fd)| fd.as_fd())
                .ok_or(Errno::ESTALE)?;
            return f(Place::Dir(fd));
        }
        let parent = st.parent.as_ref().ok_or(Errno::ESTALE)?;
        let pst = parent.state.read();
        let dir = pst.dir_in(st.layer).ok_or(Errno::ESTALE)?;
        f(Place::Entry(dir, &st.name))
    }

    fn stat_node(&self, node: &Node) -> SysResult<Attr> {
        let st = self.with_place(node, |p| match p {
            Place::Dir(fd) => sys::stat_fd(fd),
            Place::Entry(dir, name) => sys::stat_at(dir, name),
        })?;
        Ok(Attr { ino: node.id, st })
    }

    /// Looks `name` up in the directory `parent`, top-down through its merged layers.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> SysResult<Attr> {
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        if is_reserved_name(name.as_bytes()) {
            return Err(Errno::ENOENT);
        }
        let parent = self.node(parent)?;
        let pst = parent.state.read();
        if !pst.kind.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let mut resolver = Resolver::new(self.stack.upper());
        let mut winner_stat: Option<Stat> = None;
        let mut origin_stat: Option<(usize, Stat)> = None;
        let mut dirs = Vec::new();
        for (layer, fd) in &pst.dirs {
            let probed = self.stack.probe(fd.as_fd(), name)?;
            let step = resolver.feed(*layer, probed.probe);
            if let Probe::Entry { .. } = probed.probe {
                if winner_stat.is_none() {
                    winner_stat = probed.stat;
                } else if origin_stat.is_none() {
                    origin_stat = probed.stat.map(|s| (*layer, s));
                }
                if let Some(dir) = probed.dir {
                    dirs.push((*layer, dir));
                }
            }
            if step == Step::Done {
                break;
            }
        }
        let res = resolver.finish();
        let (layer, kind) = res.winner.ok_or(Errno::ENOENT)?;
        let st = winner_stat.ok_or(Errno::EIO)?;
        dirs.retain(|(l, _)| res.merged.contains(l));
        let id = match (res.origin, origin_stat) {
            (Some(ol), Some((sl, ost))) if ol == sl => self.id_of(&ost),
            _ => self.id_of(&st),
        };
        drop(pst);
        self.nodes.lookup(
            id,
            NodeState {
                parent: Some(parent),
                name: name.to_os_string(),
                kind,
                layer,
                dirs,
            },
        );
        Ok(Attr { ino: id, st })
    }

    /// The merged-view id of the backing file `st`.
    fn id_of(&self, st: &Stat) -> u64 {
        self.nodes
            .id_for(self.stack.dev_index(st.st_dev), st.st_ino)
    }

    pub fn forget(&self, id: u64, n: u64) {
        self.nodes.forget(id, n);
    }

    pub fn getattr(&self, id: u64) -> SysResult<Attr> {
        let node = self.node(id)?;
        self.stat_node(&node)
    }

    pub fn readlink(&self, id: u64) -> SysResult<Vec<u8>> {
        let node = self.node(id)?;
        self.with_place(&node, |p| match p {
            Place::Entry(dir, name) => sys::readlink_at(dir, name),
            Place::Dir(_) => Err(Errno::EINVAL),
        })
    }

    /// Opens a regular file for reading.
    pub fn open(&self, id: u64, flags: i32) -> SysResult<OpenedFile> {
        let writes = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if writes {
            return Err(Errno::EROFS);
        }
        let node = self.node(id)?;
        let fd = self.with_place(&node, |p| match p {
            Place::Entry(dir, name) => {
                sys::open_at(dir, name, libc::O_RDONLY | (flags & libc::O_NONBLOCK), 0)
            }
            Place::Dir(_) => Err(Errno::EISDIR),
        })?;
        let file = Arc::new(File::from(fd));
        let fh = self.handles.add_file(file.clone());
        Ok(OpenedFile { fh, file })
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> SysResult<Vec<u8>> {
        let file = self.handles.file(fh).ok_or(Errno::EBADF)?;
        let mut buf = vec![0u8; size as usize];
        let n = sys::pread_full(file.as_fd(), &mut buf, offset)?;
        buf.truncate(n);
        Ok(buf)
    }

    pub fn release(&self, fh: u64) {
        self.handles.remove_file(fh);
    }

    pub fn opendir(&self, id: u64) -> SysResult<u64> {
        let node = self.node(id)?;
        if !node.state.read().kind.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        Ok(self.handles.add_dir(node))
    }

    /// The merged listing of an open directory, `.` and `..` first; entry `i` has offset
    /// `i + 1`. Offset 0 (a fresh read or a rewind) reads the layers again.
    pub fn readdir(&self, fh: u64, offset: u64) -> SysResult<Arc<Vec<DirItem>>> {
        let dir = self.handles.dir(fh).ok_or(Errno::EBADF)?;
        let mut cached = dir.listing.lock();
        if offset == 0 || cached.is_none() {
            *cached = Some(Arc::new(self.list_merged(&dir.node)?));
        }
        cached.clone().ok_or(Errno::EIO)
    }

    pub fn releasedir(&self, fh: u64) {
        self.handles.remove_dir(fh);
    }

    fn list_merged(&self, node: &Node) -> SysResult<Vec<DirItem>> {
        let st = node.state.read();
        let mut listings = Vec::with_capacity(st.dirs.len());
        for (layer, fd) in &st.dirs {
            listings.push(self.stack.list(*layer, fd.as_fd())?);
        }
        let parent_id = st.parent.as_ref().map(|p| p.id).unwrap_or(ROOT_ID);
        let merged = merge_listings(&listings, self.stack.upper());
        let mut out = Vec::with_capacity(merged.len() + 2);
        out.push(DirItem {
            name: ".".into(),
            kind: FileKind::Directory,
            ino: node.id,
        });
        out.push(DirItem {
            name: "..".into(),
            kind: FileKind::Directory,
            ino: parent_id,
        });
        for e in merged {
            let (layer, ino) = e.origin.unwrap_or((e.layer, e.ino));
            let dev = self.stack.dev_index(self.stack.layer(layer).dev);
            out.push(DirItem {
                name: e.name,
                kind: e.kind,
                ino: self.nodes.id_for(dev, ino),
            });
        }
        Ok(out)
    }

    pub fn statfs(&self, id: u64) -> SysResult<libc::statvfs> {
        let _ = self.node(id)?;
        sys::statvfs(self.stack.layer(0).root.as_fd())
    }

    pub fn getxattr(&self, id: u64, name: &OsStr) -> SysResult<Vec<u8>> {
        if is_private_xattr(name.as_bytes()) {
            return Err(Errno::ENODATA);
        }
        let node = self.node(id)?;
        let v = self.with_place(&node, |p| match p {
            Place::Dir(fd) => sys::get_xattr(fd, None, name),
            Place::Entry(dir, n) => sys::get_xattr(dir, Some(n), name),
        })?;
        v.ok_or(Errno::ENODATA)
    }

    /// The xattr names of a node, NUL-separated, overlay-private ones left out.
    pub fn listxattr(&self, id: u64) -> SysResult<Vec<u8>> {
        let node = self.node(id)?;
        let raw = self.with_place(&node, |p| match p {
            Place::Dir(fd) => sys::list_xattr(fd, None),
            Place::Entry(dir, n) => sys::list_xattr(dir, Some(n)),
        })?;
        let mut out = Vec::with_capacity(raw.len());
        for name in raw.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            if !is_private_xattr(name) {
                out.extend_from_slice(name);
                out.push(0);
            }
        }
        Ok(out)
    }

    /// `access(2)`: modes are enforced by the kernel (`default_permissions`); this only
    /// refuses writes to a read-only stack.
    pub fn access(&self, id: u64, mask: i32) -> SysResult<()> {
        let _ = self.node(id)?;
        if mask & libc::W_OK != 0 && self.read_only() {
            return Err(Errno::EROFS);
        }
        Ok(())
    }

    /// The kind of a stat result, for callers outside the layer module.
    pub fn kind_of(st: &Stat) -> SysResult<FileKind> {
        kind_of(st)
    }
}
