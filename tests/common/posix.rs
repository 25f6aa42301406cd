//! Helpers of the POSIX, fault, load and access suites: a pair of mounts (ufsd and kernel
//! overlayfs over the same lower layer, each with its own upper), raw syscalls that return
//! an errno instead of panicking, observations written as text so two mounts can be compared
//! line by line, and running a closure in a forked child with another uid, gid and umask.

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{Mounted, mkdir, mount_overlay, mount_ufsd, scratch};

/// One lower layer mounted twice: by ufsd and by kernel overlayfs, each with its own upper.
pub struct Pair {
    pub dir: tempfile::TempDir,
    pub lower: PathBuf,
    pub ufsd_upper: PathBuf,
    pub kernel_upper: PathBuf,
    pub ufsd: PathBuf,
    pub kernel: PathBuf,
    // Dropped (unmounted) before `dir` is removed: fields drop in declaration order, so
    // these are declared last and taken out explicitly in Drop.
    guards: Vec<Mounted>,
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.guards.clear();
    }
}

impl Pair {
    /// Builds the lower layer with `build` and mounts it both ways; `ufsd_args` go to
    /// `ufsd mount` (for example `-o nopassthrough`).
    pub fn new(build: impl FnOnce(&Path), ufsd_args: &[&str]) -> Pair {
        let dir = scratch();
        let root = dir.path();
        let lower = mkdir(root, "lower");
        build(&lower);
        let (uu, uw, um) = (
            mkdir(root, "ufsd-upper"),
            mkdir(root, "ufsd-work"),
            mkdir(root, "ufsd-mnt"),
        );
        let (ku, kw, km) = (
            mkdir(root, "kernel-upper"),
            mkdir(root, "kernel-work"),
            mkdir(root, "kernel-mnt"),
        );
        let g1 = mount_ufsd(&[&lower], Some((&uu, &uw)), &um, ufsd_args);
        let g2 = mount_overlay(&[&lower], Some((&ku, &kw)), &km);
        Pair {
            ufsd: g1.path.clone(),
            kernel: g2.path.clone(),
            guards: vec![g1, g2],
            lower,
            ufsd_upper: uu,
            kernel_upper: ku,
            dir,
        }
    }

    /// Runs `scenario` on both mounts and asserts that the two observation lists agree;
    /// returns the ufsd observations for further asserts.
    pub fn same(&self, scenario: impl Fn(&Path) -> Vec<String>) -> Vec<String> {
        let k = scenario(&self.kernel);
        let u = scenario(&self.ufsd);
        let diff: Vec<String> = u
            .iter()
            .zip(k.iter())
            .filter(|(a, b)| a != b)
            .map(|(a, b)| format!("  ufsd:   {a}\n  kernel: {b}"))
            .collect();
        assert!(
            diff.is_empty() && u.len() == k.len(),
            "ufsd and kernel overlayfs differ:\n{}\n(ufsd {} lines, kernel {})\nufsd:\n{}\nkernel:\n{}",
            diff.join("\n"),
            u.len(),
            k.len(),
            u.join("\n"),
            k.join("\n")
        );
        u
    }
}

pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

pub fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
}

/// The symbolic name of an errno for observations (`E123` for the rare ones).
pub fn errno_name(e: i32) -> String {
    let n = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::ENOTSUP => "ENOTSUP",
        libc::ENXIO => "ENXIO",
        libc::ENOTCONN => "ENOTCONN",
        libc::ESTALE => "ESTALE",
        libc::EFBIG => "EFBIG",
        libc::ETXTBSY => "ETXTBSY",
        _ => return format!("E{e}"),
    };
    n.to_string()
}

/// `label: ok` or `label: ERRNO` for a C return value (negative means failure).
pub fn rc(label: &str, r: i64) -> String {
    if r < 0 {
        format!("{label}: {}", errno_name(last_errno()))
    } else {
        format!("{label}: ok")
    }
}

/// `label: VALUE` or `label: ERRNO`.
pub fn res<T: std::fmt::Debug>(label: &str, r: Result<T, i32>) -> String {
    match r {
        Ok(v) => format!("{label}: {v:?}"),
        Err(e) => format!("{label}: {}", errno_name(e)),
    }
}

/// `lstat`: the stat or the errno.
pub fn lstat(p: &Path) -> Result<libc::stat, i32> {
    let c = cpath(p);
    // SAFETY: a valid C string and a zeroed out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::lstat(c.as_ptr(), &mut st) } < 0 {
        Err(last_errno())
    } else {
        Ok(st)
    }
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`.
pub fn fstatat(dir: &OwnedFd, name: &[u8]) -> Result<libc::stat, i32> {
    let c = CString::new(name).expect("name");
    // SAFETY: a zeroed out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and C string.
    let r = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r < 0 { Err(last_errno()) } else { Ok(st) }
}

pub fn fstat(fd: &OwnedFd) -> Result<libc::stat, i32> {
    // SAFETY: a zeroed out-parameter.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        Err(last_errno())
    } else {
        Ok(st)
    }
}

/// `mode uid:gid` of a path, or its errno, for observations.
pub fn describe(p: &Path) -> String {
    match lstat(p) {
        Ok(st) => format!("{:06o} {}:{}", st.st_mode, st.st_uid, st.st_gid),
        Err(e) => errno_name(e),
    }
}

pub fn open(p: &Path, flags: i32, mode: u32) -> Result<OwnedFd, i32> {
    let c = cpath(p);
    // SAFETY: a valid C string; the fd is owned by the result.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    if fd < 0 {
        Err(last_errno())
    } else {
        // SAFETY: a fresh fd we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

pub fn openat(dir: &OwnedFd, name: &[u8], flags: i32, mode: u32) -> Result<OwnedFd, i32> {
    let c = CString::new(name).expect("name");
    // SAFETY: valid fd and C string; the fd is owned by the result.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    if fd < 0 {
        Err(last_errno())
    } else {
        // SAFETY: a fresh fd we own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

pub fn pwrite(fd: &OwnedFd, buf: &[u8], off: u64) -> Result<usize, i32> {
    // SAFETY: buf is readable for its length.
    let n = unsafe { libc::pwrite(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), off as i64) };
    if n < 0 {
        Err(last_errno())
    } else {
        Ok(n as usize)
    }
}

pub fn write(fd: &OwnedFd, buf: &[u8]) -> Result<usize, i32> {
    // SAFETY: buf is readable for its length.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(last_errno())
    } else {
        Ok(n as usize)
    }
}

pub fn pread(fd: &OwnedFd, len: usize, off: u64) -> Result<Vec<u8>, i32> {
    let mut buf = vec![0u8; len];
    // SAFETY: buf is writable for its length.
    let n = unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), len, off as i64) };
    if n < 0 {
        return Err(last_errno());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

pub fn lseek(fd: &OwnedFd, off: i64, whence: i32) -> Result<i64, i32> {
    // SAFETY: plain syscall.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), off, whence) };
    if r < 0 { Err(last_errno()) } else { Ok(r) }
}

/// Runs `f` in a forked child that first drops to `uid`/`gid` (no supplementary groups,
/// unless uid is 0) and sets `umask`, and returns the lines it produced. A panic in the
/// child fails the caller with the child's message.
///
/// Forking a threaded test process is safe enough here: the child only makes syscalls and
/// small allocations (glibc's malloc is fork-safe) and ends with `_exit`.
pub fn in_child(uid: u32, gid: u32, umask: u32, f: impl FnOnce() -> Vec<String>) -> Vec<String> {
    let mut fds = [0i32; 2];
    // SAFETY: fds is a 2-int array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fork; the child below only runs `f` and exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: child side: plain syscalls, then _exit without unwinding into the harness.
        unsafe {
            libc::close(fds[0]);
            let ok = (uid == 0 || libc::setgroups(0, std::ptr::null()) == 0)
                && libc::setgid(gid) == 0
                && libc::setuid(uid) == 0;
            libc::umask(umask);
            let (code, text) = if !ok {
                (
                    2,
                    format!("dropping to {uid}:{gid}: errno {}", last_errno()),
                )
            } else {
                match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                    Ok(lines) => (0, lines.join("\n")),
                    Err(e) => (
                        1,
                        e.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "panic".into()),
                    ),
                }
            };
            let b = text.as_bytes();
            let mut off = 0;
            while off < b.len() {
                let n = libc::write(fds[1], b[off..].as_ptr().cast(), b.len() - off);
                if n <= 0 {
                    break;
                }
                off += n as usize;
            }
            libc::_exit(code);
        }
    }
    // SAFETY: parent side: we own the read end; close the write end.
    unsafe { libc::close(fds[1]) };
    // SAFETY: the read end is ours.
    let mut r = unsafe { std::fs::File::from_raw_fd(fds[0]) };
    let mut out = String::new();
    r.read_to_string(&mut out)
        .expect("reading the child's output");
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child as uid {uid} failed (status {status:#x}): {out}"
    );
    if out.is_empty() {
        Vec::new()
    } else {
        out.split('\n').map(str::to_string).collect()
    }
}
