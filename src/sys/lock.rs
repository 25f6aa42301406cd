//! Advisory whole-file locks (`flock(2)`) for the image store, and `syncfs(2)`.
//!
//! A lock belongs to the open file description, so two `FileLock`s on the same path in one
//! process exclude each other just as two processes do; the lock ends when the value is
//! dropped (or the process dies), so a crashed command never leaves the store locked.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// How to lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockKind {
    /// Many holders at once; excludes `Exclusive`.
    Shared,
    /// One holder; excludes everything else.
    Exclusive,
}

/// A held `flock` on a file; released on drop.
#[derive(Debug)]
pub struct FileLock {
    _lock: Flock<File>,
}

/// Opens (creating it 0644 if it is absent and the directory is writable) the lock file.
fn open_lock_file(path: &Path) -> io::Result<File> {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o644)
        .open(path)
    {
        Ok(f) => Ok(f),
        // A reader without write permission on the store can still take a shared lock.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => File::open(path),
        Err(e) => Err(e),
    }
}

impl FileLock {
    /// Waits for and takes a lock on `path`.
    pub fn lock(path: &Path, kind: LockKind) -> io::Result<FileLock> {
        let arg = match kind {
            LockKind::Shared => FlockArg::LockShared,
            LockKind::Exclusive => FlockArg::LockExclusive,
        };
        Self::take(path, arg)?.ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))
    }

    /// Takes a lock on `path` if nobody holds a conflicting one; `None` if somebody does.
    pub fn try_lock(path: &Path, kind: LockKind) -> io::Result<Option<FileLock>> {
        let arg = match kind {
            LockKind::Shared => FlockArg::LockSharedNonblock,
            LockKind::Exclusive => FlockArg::LockExclusiveNonblock,
        };
        Self::take(path, arg)
    }

    fn take(path: &Path, arg: FlockArg) -> io::Result<Option<FileLock>> {
        let mut file = open_lock_file(path)?;
        loop {
            match Flock::lock(file, arg) {
                Ok(lock) => return Ok(Some(FileLock { _lock: lock })),
                Err((f, Errno::EINTR)) => file = f,
                Err((_, Errno::EWOULDBLOCK)) => return Ok(None),
                Err((_, e)) => return Err(io::Error::from(e)),
            }
        }
    }
}

/// `syncfs(2)` on the filesystem holding `path`: makes a freshly written tree durable
/// with one call instead of an fsync per file.
pub fn syncfs(path: &Path) -> io::Result<()> {
    let f = File::open(path)?;
    nix::unistd::syncfs(f.as_fd()).map_err(io::Error::from)
}
