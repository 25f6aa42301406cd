//! The oracle's syscalls: thin wrappers that return the raw errno, so a result on the ufsd
//! mount can be compared with the same call on the kernel overlay mount. The only module of
//! the oracle with `unsafe`. Paths are bytes; nothing here follows a symlink unless the
//! function says so.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A syscall result: the value or the raw errno.
pub type SysResult<T> = Result<T, i32>;

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

fn cbytes(b: &[u8]) -> CString {
    CString::new(b).expect("name without NUL")
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn check(r: libc::c_int) -> SysResult<()> {
    if r < 0 { Err(errno()) } else { Ok(()) }
}

fn check_len(r: isize) -> SysResult<usize> {
    if r < 0 { Err(errno()) } else { Ok(r as usize) }
}

/// Maps an `std::io::Error` to its errno.
pub fn io_errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

pub fn open(p: &Path, flags: i32, mode: u32) -> SysResult<OwnedFd> {
    let c = cstr(p);
    // SAFETY: a valid C string; the returned fd is owned by the caller.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    if fd < 0 {
        Err(errno())
    } else {
        // SAFETY: `fd` was just opened and is owned by no one else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

pub fn pwrite(fd: &OwnedFd, buf: &[u8], off: u64) -> SysResult<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes.
    check_len(unsafe {
        libc::pwrite(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            off as libc::off_t,
        )
    })
}

pub fn write(fd: &OwnedFd, buf: &[u8]) -> SysResult<usize> {
    // SAFETY: `buf` is valid for `buf.len()` bytes.
    check_len(unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) })
}

pub fn pread(fd: &OwnedFd, buf: &mut [u8], off: u64) -> SysResult<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    check_len(unsafe {
        libc::pread(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            off as libc::off_t,
        )
    })
}

/// Reads from `fd` at `off` until end of file or `max` bytes.
pub fn pread_all(fd: &OwnedFd, off: u64, max: usize) -> SysResult<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while out.len() < max {
        let want = buf.len().min(max - out.len());
        let n = pread(fd, &mut buf[..want], off + out.len() as u64)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    Ok(out)
}

pub fn ftruncate(fd: &OwnedFd, len: u64) -> SysResult<()> {
    // SAFETY: plain syscall on an owned fd.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) })
}

/// `truncate(2)`: follows symlinks.
pub fn truncate(p: &Path, len: u64) -> SysResult<()> {
    let c = cstr(p);
    // SAFETY: a valid C string.
    check(unsafe { libc::truncate(c.as_ptr(), len as libc::off_t) })
}

pub fn unlink(p: &Path) -> SysResult<()> {
    let c = cstr(p);
    // SAFETY: a valid C string.
    check(unsafe { libc::unlink(c.as_ptr()) })
}

pub fn rmdir(p: &Path) -> SysResult<()> {
    let c = cstr(p);
    // SAFETY: a valid C string.
    check(unsafe { libc::rmdir(c.as_ptr()) })
}

pub fn mkdir(p: &Path, mode: u32) -> SysResult<()> {
    let c = cstr(p);
    // SAFETY: a valid C string.
    check(unsafe { libc::mkdir(c.as_ptr(), mode) })
}

/// `renameat2(2)` with `RENAME_*` flags.
pub fn rename(from: &Path, to: &Path, flags: u32) -> SysResult<()> {
    let (a, b) = (cstr(from), cstr(to));
    // SAFETY: valid C strings; renameat2 takes two dirfd/path pairs and a flag word.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r < 0 { Err(errno()) } else { Ok(()) }
}

pub fn symlink(target: &[u8], p: &Path) -> SysResult<()> {
    let (t, c) = (cbytes(target), cstr(p));
    // SAFETY: valid C strings.
    check(unsafe { libc::symlink(t.as_ptr(), c.as_ptr()) })
}

/// `link(2)` without following a symlink source.
pub fn link(from: &Path, to: &Path) -> SysResult<()> {
    let (a, b) = (cstr(from), cstr(to));
    // SAFETY: valid C strings.
    check(unsafe { libc::linkat(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), 0) })
}

pub fn mknod(p: &Path, mode: u32, dev: u64) -> SysResult<()> {
    let c = cstr(p);
    // SAFETY: a valid C string.
    check(unsafe { libc::mknod(c.as_ptr(), mode, dev as libc::dev_t) })
}

/// `chmod(2)`: follows symlinks.
pub fn chmod(p: &Path, mode: u32) -> SysResult<()> {
    let c = cstr(p);
    // SAFETY: a valid C string.
    check(unsafe { libc::chmod(c.as_ptr(), mode) })
}

/// `fchownat(2)`; `u32::MAX` leaves an id unchanged.
pub fn chown(p: &Path, uid: u32, gid: u32, follow: bool) -> SysResult<()> {
    let c = cstr(p);
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    // SAFETY: a valid C string.
    check(unsafe { libc::fchownat(libc::AT_FDCWD, c.as_ptr(), uid, gid, flags) })
}

/// A time for [`utimens`]: seconds and nanoseconds, or `UTIME_OMIT` / `UTIME_NOW` in the
/// nanoseconds.
pub fn timespec(sec: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: nsec as _,
    }
}

pub fn utimens(p: &Path, times: [libc::timespec; 2], follow: bool) -> SysResult<()> {
    let c = cstr(p);
    let flags = if follow { 0 } else { libc::AT_SYMLINK_NOFOLLOW };
    // SAFETY: a valid C string and a two-element array.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), flags) })
}

pub fn setxattr(p: &Path, name: &[u8], value: &[u8], flags: i32, follow: bool) -> SysResult<()> {
    let (c, n) = (cstr(p), cbytes(name));
    // SAFETY: valid C strings and a value buffer of the given length.
    check(unsafe {
        if follow {
            libc::setxattr(
                c.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        } else {
            libc::lsetxattr(
                c.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        }
    })
}

pub fn removexattr(p: &Path, name: &[u8], follow: bool) -> SysResult<()> {
    let (c, n) = (cstr(p), cbytes(name));
    // SAFETY: valid C strings.
    check(unsafe {
        if follow {
            libc::removexattr(c.as_ptr(), n.as_ptr())
        } else {
            libc::lremovexattr(c.as_ptr(), n.as_ptr())
        }
    })
}

pub fn getxattr(p: &Path, name: &[u8], follow: bool) -> SysResult<Vec<u8>> {
    let (c, n) = (cstr(p), cbytes(name));
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe {
        if follow {
            libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        } else {
            libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        }
    };
    buf.truncate(check_len(r)?);
    Ok(buf)
}

/// The xattr names of `p`, sorted.
pub fn listxattr(p: &Path, follow: bool) -> SysResult<Vec<Vec<u8>>> {
    let c = cstr(p);
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: a valid C string and a buffer of the given length.
    let r = unsafe {
        if follow {
            libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        } else {
            libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
        }
    };
    buf.truncate(check_len(r)?);
    let mut names: Vec<Vec<u8>> = buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    names.sort();
    Ok(names)
}

fn stat_impl(p: &Path, follow: bool) -> SysResult<libc::stat> {
    let c = cstr(p);
    // SAFETY: `st` is plain old data, fully written on success.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let r = unsafe {
        if follow {
            libc::stat(c.as_ptr(), &mut st)
        } else {
            libc::lstat(c.as_ptr(), &mut st)
        }
    };
    check(r)?;
    Ok(st)
}

pub fn fstat(fd: &OwnedFd) -> SysResult<libc::stat> {
    // SAFETY: `st` is plain old data, fully written on success.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

pub fn lstat(p: &Path) -> SysResult<libc::stat> {
    stat_impl(p, false)
}

pub fn stat(p: &Path, follow: bool) -> SysResult<libc::stat> {
    stat_impl(p, follow)
}

pub fn readlink(p: &Path) -> SysResult<Vec<u8>> {
    std::fs::read_link(p)
        .map(|t| t.into_os_string().into_encoded_bytes())
        .map_err(|e| io_errno(&e))
}

/// The names in directory `p` (without `.` and `..`), sorted.
pub fn read_dir(p: &Path) -> SysResult<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(p).map_err(|e| io_errno(&e))? {
        let e = e.map_err(|e| io_errno(&e))?;
        names.push(e.file_name().as_bytes().to_vec());
    }
    names.sort();
    Ok(names)
}

pub fn makedev(major: u32, minor: u32) -> u64 {
    libc::makedev(major, minor)
}

/// Filesystem credentials of the calling thread switched to an unprivileged user until
/// dropped. `setfsuid` is per thread, and a non-zero fsuid drops the capabilities that
/// override file permissions, so the kernel checks modes for this thread only.
pub struct FsCreds(());

impl FsCreds {
    pub fn switch(uid: u32, gid: u32) -> FsCreds {
        // SAFETY: plain syscalls; the test runs as root, so both succeed.
        unsafe {
            libc::setfsgid(gid);
            libc::setfsuid(uid);
        }
        FsCreds(())
    }
}

impl Drop for FsCreds {
    fn drop(&mut self) {
        // SAFETY: plain syscalls back to root.
        unsafe {
            libc::setfsuid(0);
            libc::setfsgid(0);
        }
    }
}

/// Sets the process umask and returns the old one.
pub fn umask(mask: u32) -> u32 {
    // SAFETY: plain syscall.
    unsafe { libc::umask(mask) }
}

/// The name of an errno, for messages.
pub fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ETXTBSY => "ETXTBSY",
        libc::ESPIPE => "ESPIPE",
        libc::ESTALE => "ESTALE",
        libc::EOVERFLOW => "EOVERFLOW",
        libc::E2BIG => "E2BIG",
        _ => return format!("errno {e}"),
    };
    name.to_string()
}
