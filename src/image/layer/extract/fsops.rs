//! The filesystem side of extraction: walking to an entry's parent beneath the destination
//! without following symlinks, making room for an entry, and applying an entry's
//! metadata in the order that keeps it (owner, then mode, since chown clears set-id bits
//! and capabilities; then xattrs; times last).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use crate::fs::remove_tree;
use crate::image::layer::header::XATTR_PAX_PREFIX;
use crate::layer::whiteout::{is_private_xattr, is_whiteout_device};
use crate::layer::{FileKind, stack::kind_of};
use crate::sys::{self, Errno, SetTime, SysResult};

/// A failed step: the operation and its errno.
pub type StepError = (&'static str, Errno);

/// An entry's metadata as the archive gives it (mode already reduced to what may be set).
#[derive(Debug)]
pub struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: (i64, i64),
    pub mtime: (i64, i64),
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A directory's mode and times, applied after its contents.
#[derive(Clone, Copy, Debug)]
pub struct DirMeta {
    pub mode: u32,
    /// `None` for a directory the archive did not name (created as a parent).
    pub times: Option<((i64, i64), (i64, i64))>,
}

impl From<&Meta> for DirMeta {
    fn from(m: &Meta) -> DirMeta {
        DirMeta {
            mode: m.mode,
            times: Some((m.atime, m.mtime)),
        }
    }
}

/// Parses a PAX time (`1700000000.123456789`, possibly negative) as (seconds, nanoseconds).
pub fn parse_pax_time(v: &[u8]) -> Option<(i64, i64)> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    let mut digits = frac.as_bytes().iter().take(9).map(|d| i64::from(d - b'0'));
    let mut nsec = 0;
    for _ in 0..9 {
        nsec = nsec * 10 + digits.next().unwrap_or(0);
    }
    Some(match (neg, nsec) {
        (false, _) => (secs, nsec),
        (true, 0) => (-secs, 0),
        (true, n) => (-secs - 1, 1_000_000_000 - n),
    })
}

impl Meta {
    /// Reads an entry's header and PAX records. Without privilege, set-id bits are dropped.
    pub fn read<R: Read>(e: &mut tar::Entry<'_, R>, privileged: bool) -> io::Result<Meta> {
        let h = e.header();
        let mut mode = h.mode()? & 0o7777;
        if !privileged {
            mode &= !(libc::S_ISUID | libc::S_ISGID);
        }
        let id = |v: u64| {
            u32::try_from(v)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "uid or gid too large"))
        };
        let (uid, gid) = (id(h.uid()?)?, id(h.gid()?)?);
        let secs = i64::try_from(h.mtime()?).unwrap_or(i64::MAX);
        let mut mtime = (secs, 0);
        let mut atime = None;
        let mut xattrs = Vec::new();
        if let Some(pax) = e.pax_extensions()? {
            for rec in pax {
                let rec = rec?;
                let (k, v) = (rec.key_bytes(), rec.value_bytes());
                if let Some(name) = k.strip_prefix(XATTR_PAX_PREFIX) {
                    xattrs.push((name.to_vec(), v.to_vec()));
                } else if k == b"mtime" {
                    mtime = parse_pax_time(v).unwrap_or(mtime);
                } else if k == b"atime" {
                    atime = parse_pax_time(v);
                }
            }
        }
        Ok(Meta {
            mode,
            uid,
            gid,
            atime: atime.unwrap_or(mtime),
            mtime,
            xattrs,
        })
    }
}

/// What was at an entry's name before it was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Room {
    /// Nothing.
    Empty,
    /// A directory, kept because the new entry is a directory too.
    Dir,
    /// A whiteout device, removed.
    Whiteout,
    /// Something else, removed.
    Replaced,
}

/// Clears `name` in `parent` for a new entry: a directory stays for a new directory,
/// anything else is removed (a directory with its contents, whose deferred metadata in
/// `dirs` is dropped too).
pub fn make_room(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    new_is_dir: bool,
    rel: &[u8],
    dirs: &mut HashMap<Vec<u8>, DirMeta>,
) -> SysResult<Room> {
    let st = match sys::stat_at(parent, name) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(Room::Empty),
        Err(e) => return Err(e),
    };
    let kind = kind_of(&st)?;
    if kind == FileKind::Directory {
        if new_is_dir {
            return Ok(Room::Dir);
        }
        remove_tree(parent, name)?;
        dirs.retain(|k, _| {
            !(k.as_slice() == rel || k.starts_with(rel) && k.get(rel.len()) == Some(&b'/'))
        });
        return Ok(Room::Replaced);
    }
    sys::unlink_at(parent, name, false)?;
    Ok(if is_whiteout_device(kind, st.st_rdev) {
        Room::Whiteout
    } else {
        Room::Replaced
    })
}

/// Sets the owner (with privilege) and xattrs of `name` in `dir` (or of `dir`); returns
/// how many xattrs were not set.
pub fn apply_owner_xattrs(
    dir: BorrowedFd<'_>,
    name: Option<&OsStr>,
    m: &Meta,
    privileged: bool,
) -> Result<u64, StepError> {
    if privileged {
        sys::chown_at(dir, name, Some(m.uid), Some(m.gid)).map_err(|e| ("chown", e))?;
    }
    apply_xattrs(dir, name, m, privileged)
}

/// Sets the xattrs of `name` in `dir` (or of `dir`) that may be set; returns how many were
/// not: overlay-private ones never, `trusted.*` and `security.*` only with privilege, and
/// those the filesystem refuses (`user.*` on a symlink, no xattr support).
fn apply_xattrs(
    dir: BorrowedFd<'_>,
    name: Option<&OsStr>,
    m: &Meta,
    privileged: bool,
) -> Result<u64, StepError> {
    let mut dropped = 0;
    for (attr, value) in &m.xattrs {
        let host_only = attr.starts_with(b"trusted.") || attr.starts_with(b"security.");
        if is_private_xattr(attr) || !privileged && host_only {
            dropped += 1;
            continue;
        }
        match sys::set_xattr(dir, name, OsStr::from_bytes(attr), value, 0) {
            Ok(()) => {}
            Err(Errno::EPERM | Errno::EACCES | Errno::ENOTSUP | Errno::EINVAL) => dropped += 1,
            Err(e) => return Err(("setting xattrs of", e)),
        }
    }
    Ok(dropped)
}

fn set_time(t: (i64, i64)) -> SetTime {
    SetTime::At(t.0, t.1)
}

/// Applies all of a non-directory's metadata; returns how many xattrs were not set.
pub fn apply_meta(
    dir: BorrowedFd<'_>,
    name: Option<&OsStr>,
    m: &Meta,
    privileged: bool,
    symlink: bool,
) -> Result<u64, StepError> {
    if privileged {
        sys::chown_at(dir, name, Some(m.uid), Some(m.gid)).map_err(|e| ("chown", e))?;
    }
    if !symlink {
        sys::chmod_at(dir, name, m.mode).map_err(|e| ("chmod", e))?;
    }
    let dropped = apply_xattrs(dir, name, m, privileged)?;
    sys::utimens_at(dir, name, set_time(m.atime), set_time(m.mtime))
        .map_err(|e| ("setting times of", e))?;
    Ok(dropped)
}

/// What a regular file created by the extraction has before its metadata is applied, so
/// that calls which would change nothing are left out (most files of most archives need
/// neither `fchown` nor `fchmod`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Born {
    /// Owner and group of a new file: the process's, unless a set-group-id directory
    /// above would hand down its group (then unknown).
    pub owner: Option<(u32, u32)>,
    /// The process umask, when known.
    pub umask: Option<u32>,
}

impl Born {
    /// What files created beneath `root` get. Directories made by the extraction are
    /// 0700 until the end, so only `root` itself can hand down a group.
    pub fn probe(root: BorrowedFd<'_>) -> Born {
        let setgid = sys::stat_fd(root).map_or(true, |st| st.st_mode & libc::S_ISGID != 0);
        Born {
            owner: (!setgid).then(|| (sys::euid(), sys::egid())),
            umask: sys::current_umask(),
        }
    }

    fn needs_chown(&self, m: &Meta, privileged: bool) -> bool {
        privileged && self.owner != Some((m.uid, m.gid))
    }

    /// The mode to create a file for `m` with, and whether `fchmod` must follow. A file
    /// that changes owner is created 0600 and given its mode after `fchown` (which clears
    /// set-id bits), as are set-id and sticky files; others get their mode at creation
    /// when the umask keeps it whole.
    pub fn create_mode(&self, m: &Meta, privileged: bool) -> (u32, bool) {
        match self.umask {
            Some(mask)
                if m.mode & 0o7000 == 0
                    && m.mode & mask == 0
                    && !self.needs_chown(m, privileged) =>
            {
                (m.mode, false)
            }
            _ => (0o600, true),
        }
    }
}

/// Applies all of a regular file's metadata through its open `file` (`fchown`, `fchmod`,
/// each only when `born` says it changes something); returns how many xattrs were not set.
pub fn apply_file_meta(
    file: &File,
    m: &Meta,
    privileged: bool,
    born: &Born,
) -> Result<u64, StepError> {
    let errno = |e: io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
    if born.needs_chown(m, privileged) {
        std::os::unix::fs::fchown(file, Some(m.uid), Some(m.gid))
            .map_err(|e| ("chown", errno(e)))?;
    }
    if born.create_mode(m, privileged).1 {
        file.set_permissions(std::fs::Permissions::from_mode(m.mode))
            .map_err(|e| ("chmod", errno(e)))?;
    }
    let dropped = apply_xattrs(file.as_fd(), None, m, privileged)?;
    sys::utimens_at(file.as_fd(), None, set_time(m.atime), set_time(m.mtime))
        .map_err(|e| ("setting times of", e))?;
    Ok(dropped)
}

/// Applies a directory's deferred mode and times.
pub fn apply_dir_meta(dir: BorrowedFd<'_>, d: &DirMeta) -> Result<(), StepError> {
    sys::chmod_at(dir, None, d.mode).map_err(|e| ("chmod", e))?;
    if let Some((a, m)) = d.times {
        sys::utimens_at(dir, None, set_time(a), set_time(m))
            .map_err(|e| ("setting times of", e))?;
    }
    Ok(())
}

/// The open directories from the destination down to the last entry's parent, reused
/// while entries come in order.
#[derive(Default)]
pub struct Cursor {
    /// Shared with the file writers that still have a file to create in them.
    stack: Vec<(Vec<u8>, Arc<OwnedFd>)>,
}

/// Opens the directory `name` in `dir` without following a symlink.
fn open_dir(dir: BorrowedFd<'_>, name: &[u8]) -> SysResult<OwnedFd> {
    sys::open_at(
        dir,
        OsStr::from_bytes(name),
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )
}

/// Why a walk beneath the destination stopped: the path walked so far and the errno.
#[derive(Debug)]
pub struct WalkError {
    pub at: Vec<u8>,
    pub errno: Errno,
}

impl std::fmt::Display for WalkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.errno {
            Errno::ELOOP | Errno::ENOTDIR => write!(
                f,
                "`{}` is a symlink or not a directory: refusing to go through it",
                self.at.escape_ascii()
            ),
            e => write!(f, "opening `{}`: {e}", self.at.escape_ascii()),
        }
    }
}

fn walk_error(comps: &[&[u8]], i: usize, errno: Errno) -> WalkError {
    WalkError {
        at: comps[..=i].join(&b'/'),
        errno,
    }
}

impl Cursor {
    /// The directory `parents` beneath `root`, creating missing ones (mode 0755, as tar
    /// does, recorded in `dirs`); an error for a component that is a symlink or not a
    /// directory.
    pub fn walk<'a>(
        &'a mut self,
        root: BorrowedFd<'a>,
        parents: &[&[u8]],
        dirs: &mut HashMap<Vec<u8>, DirMeta>,
    ) -> Result<BorrowedFd<'a>, WalkError> {
        let keep = self
            .stack
            .iter()
            .zip(parents)
            .take_while(|((have, _), want)| have.as_slice() == **want)
            .count();
        self.stack.truncate(keep);
        for i in keep..parents.len() {
            let dir = self.stack.last().map_or(root, |(_, fd)| fd.as_fd());
            let fd = match open_dir(dir, parents[i]) {
                Err(Errno::ENOENT) => {
                    let name = OsStr::from_bytes(parents[i]);
                    sys::mkdir_at(dir, name, 0o700).map_err(|e| walk_error(parents, i, e))?;
                    dirs.entry(parents[..=i].join(&b'/')).or_insert(DirMeta {
                        mode: 0o755,
                        times: None,
                    });
                    open_dir(dir, parents[i])
                }
                other => other,
            }
            .map_err(|e| walk_error(parents, i, e))?;
            self.stack.push((parents[i].to_vec(), Arc::new(fd)));
        }
        Ok(self.stack.last().map_or(root, |(_, fd)| fd.as_fd()))
    }

    /// The directory the last [`walk`](Self::walk) ended in, to keep; `root` if none.
    pub fn current(&self, root: &Arc<OwnedFd>) -> Arc<OwnedFd> {
        self.stack.last().map_or(root, |(_, fd)| fd).clone()
    }
}

/// The existing directory `comps` beneath `root`, never following a symlink.
pub fn open_existing(root: BorrowedFd<'_>, comps: &[&[u8]]) -> Result<OwnedFd, WalkError> {
    let mut fd = open_dir(root, b".").map_err(|errno| WalkError {
        at: b".".to_vec(),
        errno,
    })?;
    for (i, c) in comps.iter().enumerate() {
        fd = open_dir(fd.as_fd(), c).map_err(|e| walk_error(comps, i, e))?;
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(parse_pax_time(b"1.5"), Some((1, 500_000_000)));
        assert_eq!(parse_pax_time(b"1.123456789123"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time(b"-3"), Some((-3, 0)));
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b".5"), None);
        assert_eq!(parse_pax_time(b"1.x"), None);
    }
}
