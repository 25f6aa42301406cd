//! Copy-up: giving a lower-layer object an instance in the upper layer before it changes,
//! and the whiteout and opaque markers the write path leaves in the upper layer.
//!
//! Invariants:
//! - a copy is built under a temporary name in the work directory (same filesystem as the
//!   upper) with data, owner, mode, xattrs and times, fsync'ed, and only then renamed into
//!   place, so a crash never leaves a half-copied file visible;
//! - data moves in the kernel: FICLONE where the filesystem shares extents, else
//!   `copy_file_range` over the data extents only (holes stay holes);
//! - overlay-private xattrs are never copied;
//! - the upper parent's timestamps are restored afterwards, as overlayfs does, so a copy-up
//!   is invisible in the merged view.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::UnionFs;
use super::inode::Node;
use super::trace::{self, TraceEvent, TraceKind};
use crate::layer::FileKind;
use crate::layer::merge::merge_listings;
use crate::layer::stack::kind_of;
use crate::layer::whiteout::{self, EntryClass, OPAQUE_MARKER};
use crate::sys::{self, Errno, SetTime, Stat, SysResult};

/// Files with several links copied during one tree copy-up, by lower (device, inode):
/// the upper directory and name of the first copy.
type CopiedLinks = HashMap<(u64, u64), (OwnedFd, OsString)>;

/// What a new whiteout takes the place of in the upper directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Replace {
    /// No upper entry of that name.
    Nothing,
    /// An entry that may hold data: deleted before the reply, so its space is free then.
    Entry,
    /// A directory that was empty in the merged view, so it holds only whiteouts and
    /// markers: deleted after the reply (see `discard`).
    EmptiedDir,
}

/// How this mount writes whiteouts and opaque markers into the upper layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhiteoutFormat {
    /// Character device 0/0 and `trusted.overlay.opaque=y` (kernel overlayfs can mount it).
    Overlay,
    /// `.wh.NAME` files and `.wh..wh..opq` markers, where mknod is not permitted.
    Oci,
}

/// Upper-layer copy of `st`'s times.
fn times_of(st: &Stat) -> (SetTime, SetTime) {
    (
        SetTime::At(st.st_atime, st.st_atime_nsec),
        SetTime::At(st.st_mtime, st.st_mtime_nsec),
    )
}

impl UnionFs {
    /// The work directory, where copies and whiteouts are staged.
    pub(super) fn work(&self) -> SysResult<BorrowedFd<'_>> {
        self.work.as_ref().map(|w| w.as_fd()).ok_or(Errno::EROFS)
    }

    /// A fresh name in the work directory.
    pub(super) fn temp_name(&self) -> OsString {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        OsString::from(format!("#ufsd.{}.{n}", sys::process::pid()))
    }

    /// Ensures `node` has an instance in the upper layer, copying it and any missing
    /// parent directories up.
    pub(super) fn copy_up(&self, node: &Arc<Node>) -> SysResult<()> {
        self.copy_up_with(node, true)
    }

    /// [`Self::copy_up`]; without `data` a regular file is copied empty, for an open with
    /// `O_TRUNC` that would discard the data anyway.
    pub(super) fn copy_up_with(&self, node: &Arc<Node>, data: bool) -> SysResult<()> {
        let parent = {
            let st = node.state.read();
            if st.layer() == 0 {
                return Ok(());
            }
            st.parent.clone().ok_or(Errno::EIO)?
        };
        self.copy_up(&parent)?;
        // Before taking the node's lock: the path walks the ancestors' locks.
        let path = self.tracer.enabled().then(|| self.path_of(node));
        let mut st = node.state.write();
        if st.layer() == 0 {
            return Ok(());
        }
        let from = st.layer();
        let pst = parent.state.read();
        let upper_parent = pst.dir_in(0).ok_or(Errno::EIO)?;
        let src_dir = pst.dir_in(st.layer()).ok_or(Errno::ESTALE)?;
        let stat = sys::stat_at(src_dir, &st.name)?;
        let parent_times = sys::stat_at(upper_parent, OsStr::new("."))?;
        let mut stat = stat;
        if !data {
            stat.st_size = 0;
        }
        self.copy_one(src_dir, &st.name, &stat, upper_parent, &st.name)?;
        self.indexes.drop_dir(parent.id);
        restore_times(upper_parent, None, &parent_times);
        if st.kind.is_dir() {
            let fd = sys::open_dir_at(upper_parent, &st.name)?;
            let up = sys::stat_fd(fd.as_fd())?;
            self.copied.insert((up.st_dev, up.st_ino), node.id);
            let mut dirs = std::mem::take(&mut st.dirs).into_vec();
            dirs.insert(0, (0, fd));
            st.dirs = dirs.into_boxed_slice();
        } else if stat.st_nlink <= 1 {
            // The copy keeps the lower file's number. Not for a file with several links:
            // its other names still show the lower file under that number, so the copy
            // becomes a new inode (as on overlayfs without `index`).
            let up = sys::stat_at(upper_parent, &st.name)?;
            self.copied.insert((up.st_dev, up.st_ino), node.id);
        }
        if st.kind == FileKind::Regular {
            self.switch_lower_readers(node.id, upper_parent, &st.name);
        }
        st.set_layer(0);
        if let Some(path) = path {
            self.tracer.emit(TraceEvent {
                kind: TraceKind::CopyUp,
                path,
                layer: self.layer_number(from),
                reason: trace::current_reason(),
            });
        }
        Ok(())
    }

    /// Descriptors opened read-only on the lower file `id` read its upper copy `name` in
    /// `dir` from now on, as on overlayfs (for reads served by the daemon; see
    /// docs/write-path.md).
    fn switch_lower_readers(&self, id: u64, dir: BorrowedFd<'_>, name: &OsStr) {
        let handles = self.handles.lower_handles_of(id);
        if !handles.is_empty()
            && let Ok(fd) = sys::open_at(dir, name, libc::O_RDONLY, 0)
        {
            let file = Arc::new(std::fs::File::from(fd));
            for fh in handles {
                self.handles.switch_to_upper(fh, file.clone());
            }
        }
    }

    /// Copies the object `name` in `src_dir` (with stat `stat`) to `dst_name` in
    /// `dst_dir`, through the work directory. Directories are copied empty.
    pub(super) fn copy_one(
        &self,
        src_dir: BorrowedFd<'_>,
        name: &OsStr,
        stat: &Stat,
        dst_dir: BorrowedFd<'_>,
        dst_name: &OsStr,
    ) -> SysResult<()> {
        let work = self.work()?;
        let tmp = self.temp_name();
        let kind = kind_of(stat)?;
        let made = (|| {
            // The object itself; a regular file's copy stays open to be synced last.
            let data = match kind {
                FileKind::Regular => {
                    let src = sys::open_at(src_dir, name, libc::O_RDONLY, 0)?;
                    let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY;
                    let dst = sys::open_at(work, &tmp, flags, 0o600)?;
                    copy_data(src.as_fd(), dst.as_fd(), stat.st_size as u64)?;
                    Some(dst)
                }
                FileKind::Directory => sys::mkdir_at(work, &tmp, 0o700).map(|()| None)?,
                FileKind::Symlink => {
                    let target = sys::readlink_at(src_dir, name)?;
                    sys::symlink_at(OsStr::from_bytes(&target), work, &tmp).map(|()| None)?
                }
                _ => sys::mknod_at(work, &tmp, stat.st_mode, stat.st_rdev).map(|()| None)?,
            };
            self.copy_meta(src_dir, name, stat, work, &tmp, kind)?;
            if let Some(dst) = data {
                sys::sync_fd(dst.as_fd(), false)?;
            }
            sys::rename_at(work, &tmp, dst_dir, dst_name, 0)
        })();
        if made.is_err() {
            let _ = remove_tree(work, &tmp);
        }
        made?;
        if kind.is_dir() {
            // Renaming a directory may touch its times; set them again.
            let (a, m) = times_of(stat);
            let _ = sys::utimens_at(dst_dir, Some(dst_name), a, m);
        }
        Ok(())
    }

    /// Owner, mode, xattrs and times of `name` in `src_dir` onto `tmp` in `work`.
    fn copy_meta(
        &self,
        src_dir: BorrowedFd<'_>,
        name: &OsStr,
        stat: &Stat,
        work: BorrowedFd<'_>,
        tmp: &OsStr,
        kind: FileKind,
    ) -> SysResult<()> {
        sys::chown_at(work, Some(tmp), Some(stat.st_uid), Some(stat.st_gid))?;
        // After chown, which clears setuid/setgid bits.
        if kind != FileKind::Symlink {
            sys::chmod_at(work, Some(tmp), stat.st_mode & 0o7777)?;
        }
        copy_xattrs(src_dir, name, work, tmp)?;
        let (a, m) = times_of(stat);
        sys::utimens_at(work, Some(tmp), a, m)
    }

    /// Copies a whole merged directory tree into the upper layer and makes its top opaque,
    /// so that it no longer depends on any lower layer (used before renaming a directory
    /// that has lower parts). Whiteouts inside it become pointless and are removed.
    pub(super) fn copy_up_tree(&self, node: &Arc<Node>) -> SysResult<()> {
        self.copy_up(node)?;
        let path = self.tracer.enabled().then(|| self.path_of(node));
        let mut st = node.state.write();
        if st.dirs.len() == 1 && st.dirs[0].0 == 0 {
            return Ok(());
        }
        let upper = st.dirs[0].1.try_clone().map_err(|_| Errno::EMFILE)?;
        let dirs: Vec<(usize, BorrowedFd<'_>)> =
            st.dirs.iter().map(|(l, fd)| (*l, fd.as_fd())).collect();
        self.copy_children(&dirs, upper.as_fd(), &mut HashMap::new())?;
        self.set_opaque(upper.as_fd())?;
        let mut dirs = std::mem::take(&mut st.dirs).into_vec();
        dirs.truncate(1);
        st.dirs = dirs.into_boxed_slice();
        if let Some(path) = path {
            self.tracer.emit(TraceEvent {
                kind: TraceKind::CopyUpTree,
                path,
                layer: None,
                reason: trace::current_reason(),
            });
        }
        // Nodes below now have stale layer instances.
        st.generation = self.tree_gen.fetch_add(1, Ordering::AcqRel) + 1;
        Ok(())
    }

    /// Copies every merged child of the directory made of `dirs` (top-down; the first is
    /// the upper one) into `upper`, recursively.
    fn copy_children(
        &self,
        dirs: &[(usize, BorrowedFd<'_>)],
        upper: BorrowedFd<'_>,
        links: &mut CopiedLinks,
    ) -> SysResult<()> {
        let upper_times = sys::stat_fd(upper)?;
        let mut listings = Vec::with_capacity(dirs.len());
        for (layer, fd) in dirs {
            listings.push(self.stack.list(*layer, *fd)?);
        }
        // Whiteouts and markers in the upper directory hide nothing once it is complete.
        for e in &listings[0].entries {
            if !matches!(
                whiteout::classify(e.name.as_bytes(), e.kind, e.rdev),
                EntryClass::Visible
            ) {
                let _ = sys::unlink_at(upper, &e.name, e.kind.is_dir());
            }
        }
        for e in merge_listings(&listings, Some(0)) {
            let src = dirs
                .iter()
                .find(|(l, _)| *l == e.layer)
                .map(|(_, fd)| *fd)
                .ok_or(Errno::EIO)?;
            if e.layer != 0 {
                let stat = sys::stat_at(src, &e.name)?;
                let key = (stat.st_dev, stat.st_ino);
                match links.get(&key) {
                    // Another name of a file already copied in this tree: link to the copy.
                    Some((dir, first)) if !e.kind.is_dir() => {
                        sys::link_at(dir.as_fd(), first, upper, &e.name)?
                    }
                    _ => {
                        self.copy_one(src, &e.name, &stat, upper, &e.name)?;
                        if e.kind == FileKind::Regular {
                            self.switch_lower_readers(self.id_of(&stat), upper, &e.name);
                        }
                        if !e.kind.is_dir() && stat.st_nlink > 1 {
                            let dir = upper.try_clone_to_owned().map_err(|_| Errno::EMFILE)?;
                            links.insert(key, (dir, e.name.clone()));
                        } else if !e.kind.is_dir() {
                            // As for a single copy-up: the copy keeps the lower number.
                            let up = sys::stat_at(upper, &e.name)?;
                            self.copied
                                .insert((up.st_dev, up.st_ino), self.id_of(&stat));
                        }
                    }
                }
            }
            if e.kind.is_dir() {
                // The child's own merged layers: every parent layer that holds it as a
                // directory, until an opaque one.
                let mut child_dirs: Vec<(usize, OwnedFd)> = Vec::new();
                for (layer, fd) in dirs {
                    let p = self.stack.probe(*fd, &e.name)?;
                    match (p.probe, p.dir) {
                        (crate::layer::resolve::Probe::Entry { opaque, .. }, Some(d)) => {
                            child_dirs.push((*layer, d));
                            if opaque {
                                break;
                            }
                        }
                        (crate::layer::resolve::Probe::Absent, _) => continue,
                        _ => break,
                    }
                }
                let upper_child = sys::open_dir_at(upper, &e.name)?;
                self.keep_dir_id(upper_child.as_fd(), &child_dirs)?;
                if !child_dirs.iter().any(|(l, _)| *l == 0) {
                    child_dirs.insert(0, (0, upper_child.try_clone().map_err(|_| Errno::EMFILE)?));
                }
                let borrowed: Vec<(usize, BorrowedFd<'_>)> =
                    child_dirs.iter().map(|(l, fd)| (*l, fd.as_fd())).collect();
                if borrowed.len() > 1 {
                    self.copy_children(&borrowed, upper_child.as_fd(), links)?;
                }
            }
        }
        restore_times(upper, None, &upper_times);
        Ok(())
    }

    /// Records that the upper directory `upper`, copied (or completed) during a tree
    /// copy-up, keeps the number the merged directory had: its own if it was copied up
    /// before, else that of its top-most lower instance (`dirs`, top-down), as `find`
    /// numbers a merged directory. Without this the directory would change number when
    /// the tree moves away from its lower instances.
    fn keep_dir_id(&self, upper: BorrowedFd<'_>, dirs: &[(usize, OwnedFd)]) -> SysResult<()> {
        let up = sys::stat_fd(upper)?;
        if self.copied.contains_key(&(up.st_dev, up.st_ino)) {
            return Ok(());
        }
        if let Some((_, origin)) = dirs.iter().find(|(l, _)| *l != 0) {
            let id = self.id_of(&sys::stat_fd(origin.as_fd())?);
            self.copied.insert((up.st_dev, up.st_ino), id);
        }
        Ok(())
    }

    /// Marks the upper directory `dir` opaque.
    pub(super) fn set_opaque(&self, dir: BorrowedFd<'_>) -> SysResult<()> {
        if self.whiteout == WhiteoutFormat::Overlay {
            match sys::set_xattr(dir, None, OsStr::new(whiteout::OPAQUE_XATTRS[0]), b"y", 0) {
                Ok(()) => return Ok(()),
                Err(Errno::EPERM) | Err(Errno::ENOTSUP) => {}
                Err(e) => return Err(e),
            }
        }
        let marker = OsStr::from_bytes(OPAQUE_MARKER);
        match sys::open_at(dir, marker, libc::O_CREAT | libc::O_WRONLY, 0o600) {
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates a whiteout for `name` in the upper directory `dir`. An existing upper
    /// entry of that name (see [`Replace`]) is swapped out atomically and removed.
    pub(super) fn make_whiteout(
        &self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        replace: Replace,
    ) -> SysResult<()> {
        let work = self.work()?;
        match self.whiteout {
            WhiteoutFormat::Overlay => {
                if replace == Replace::Nothing {
                    return self.overlay_whiteout(dir, name);
                }
                let tmp = self.temp_name();
                self.overlay_whiteout(work, &tmp)?;
                if let Err(e) = sys::rename_at(work, &tmp, dir, name, sys::RENAME_EXCHANGE) {
                    let _ = sys::unlink_at(work, &tmp, false);
                    return Err(e);
                }
                self.dispose(work, tmp, replace)
            }
            WhiteoutFormat::Oci => {
                if replace != Replace::Nothing {
                    let tmp = self.temp_name();
                    sys::rename_at(dir, name, work, &tmp, 0)?;
                    self.dispose(work, tmp, replace)?;
                }
                let wh = whiteout::whiteout_name(name.as_bytes());
                sys::open_at(
                    dir,
                    OsStr::from_bytes(&wh),
                    libc::O_CREAT | libc::O_WRONLY,
                    0o600,
                )
                .map(drop)
            }
        }
    }

    /// Deletes `tmp`, moved aside into `work`: now, or later for an emptied directory.
    pub(super) fn dispose(
        &self,
        work: BorrowedFd<'_>,
        tmp: OsString,
        how: Replace,
    ) -> SysResult<()> {
        match how {
            Replace::EmptiedDir => {
                self.discarder.later(work, tmp);
                Ok(())
            }
            Replace::Nothing | Replace::Entry => remove_tree(work, &tmp),
        }
    }

    /// Makes `name` in `dir` an overlay whiteout (a 0/0 character device): a hard link of
    /// the shared one in the work directory, made on first use and again when it has as
    /// many links as the filesystem allows; a plain `mknod` where links fail otherwise.
    fn overlay_whiteout(&self, dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<()> {
        let work = self.work()?;
        let mut shared = self.shared_whiteout.lock().clone();
        for _ in 0..2 {
            let source = match shared {
                Some(s) => s,
                None => {
                    let fresh = self.temp_name();
                    sys::mknod_at(work, &fresh, libc::S_IFCHR, 0)?;
                    *self.shared_whiteout.lock() = Some(fresh.clone());
                    fresh
                }
            };
            match sys::link_at(work, &source, dir, name) {
                Ok(()) => return Ok(()),
                // Too many links, or the shared one went away: start a new one.
                Err(Errno::EMLINK | Errno::ENOENT) => {
                    let mut current = self.shared_whiteout.lock();
                    if current.as_ref() == Some(&source) {
                        *current = None;
                    }
                    shared = current.clone();
                }
                Err(e @ (Errno::EEXIST | Errno::ENOSPC | Errno::EDQUOT | Errno::EROFS)) => {
                    return Err(e);
                }
                // A filesystem without hard links for device nodes.
                Err(_) => break,
            }
        }
        sys::mknod_at(dir, name, libc::S_IFCHR, 0)
    }
}

/// Sets `name` in `dir` (or `dir`) back to the times in `st`; best effort.
pub(super) fn restore_times(dir: BorrowedFd<'_>, name: Option<&OsStr>, st: &Stat) {
    let (a, m) = times_of(st);
    let _ = sys::utimens_at(dir, name, a, m);
}

/// Copies the data of `src` into the empty file `dst`: a reflink where possible, else
/// `copy_file_range` over each data extent, then sets the size (trailing holes).
fn copy_data(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, size: u64) -> SysResult<()> {
    if size == 0 || sys::clone_file(src, dst).is_ok() {
        return sys::truncate_fd(dst, size);
    }
    let mut off: u64 = 0;
    while off < size {
        let data = match sys::lseek(src, off as i64, libc::SEEK_DATA) {
            Ok(d) => d as u64,
            Err(Errno::ENXIO) => break,
            Err(_) => off,
        };
        let end = match sys::lseek(src, data as i64, libc::SEEK_HOLE) {
            Ok(h) => (h as u64).min(size),
            Err(_) => size,
        };
        let mut pos = data;
        while pos < end {
            let chunk = (end - pos).min(WRITEBACK_CHUNK);
            let n = match sys::copy_range(src, pos, dst, pos, chunk) {
                Ok(0) => copy_by_buffer(src, dst, pos, end - pos)?,
                Ok(n) => n,
                Err(Errno::EXDEV) | Err(Errno::EINVAL) | Err(Errno::EOPNOTSUPP) => {
                    copy_by_buffer(src, dst, pos, end - pos)?
                }
                Err(e) => return Err(e),
            };
            if n == 0 {
                break;
            }
            // The copy is fsync'ed before it is renamed into place: writing each chunk
            // back while the next one is copied leaves the fsync less to wait for.
            let _ = sys::start_writeback(dst, pos, n as u64);
            pos += n as u64;
        }
        off = end;
    }
    sys::truncate_fd(dst, size)
}

/// How much data is copied before its writeback is started.
const WRITEBACK_CHUNK: u64 = 8 << 20;

/// The fallback where the kernel cannot copy between the two filesystems: 1 MiB chunks.
fn copy_by_buffer(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    pos: u64,
    len: u64,
) -> SysResult<usize> {
    let mut buf = vec![0u8; len.min(1 << 20) as usize];
    let n = sys::pread_full(src, &mut buf, pos)?;
    sys::pwrite_all(dst, &buf[..n], pos)
}

/// Copies every xattr but the overlay-private ones. Namespaces the daemon may not write
/// (or the target filesystem does not support) are skipped.
fn copy_xattrs(
    src_dir: BorrowedFd<'_>,
    name: &OsStr,
    dst_dir: BorrowedFd<'_>,
    dst: &OsStr,
) -> SysResult<()> {
    let list = match sys::list_xattr(src_dir, Some(name)) {
        Ok(l) => l,
        Err(Errno::ENOTSUP) => return Ok(()),
        Err(e) => return Err(e),
    };
    for attr in list.split(|b| *b == 0).filter(|a| !a.is_empty()) {
        if whiteout::is_private_xattr(attr) {
            continue;
        }
        let attr = OsStr::from_bytes(attr);
        let Some(value) = sys::get_xattr(src_dir, Some(name), attr)? else {
            continue;
        };
        match sys::set_xattr(dst_dir, Some(dst), attr, &value, 0) {
            Ok(()) | Err(Errno::ENOTSUP) | Err(Errno::EPERM) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Removes `name` in `dir` and everything below it.
pub fn remove_tree(dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<()> {
    match sys::unlink_at(dir, name, false) {
        Ok(()) => return Ok(()),
        Err(Errno::EISDIR) | Err(Errno::EPERM) => {}
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    }
    let sub = sys::open_dir_at(dir, name)?;
    for e in sys::read_dir(sub.as_fd())? {
        remove_tree(sub.as_fd(), &e.name)?;
    }
    sys::unlink_at(dir, name, true)
}
