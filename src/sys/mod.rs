//! The only module that talks to the kernel directly: every `unsafe` block and every raw
//! libc call of ufsd lives here.
//!
//! Invariants:
//! - Everything that touches a layer is relative to a directory fd and never follows a
//!   symlink stored in a layer (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`, xattrs through the
//!   `/proc/self/fd` magic link of the parent with the `l*xattr` calls). Only the kernel
//!   follows symlinks of the merged view.
//! - Errors are a copyable [`Errno`]; callers add context where it helps a person.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

pub use nix::errno::Errno;

pub mod lock;
pub mod process;

/// Result of a syscall wrapper.
pub type SysResult<T> = Result<T, Errno>;

/// `struct stat` as the kernel returns it.
pub type Stat = libc::stat;

fn cstr(name: &OsStr) -> SysResult<CString> {
    CString::new(name.as_bytes()).map_err(|_| Errno::EINVAL)
}

fn check(ret: libc::c_int) -> SysResult<libc::c_int> {
    if ret < 0 { Err(Errno::last()) } else { Ok(ret) }
}

fn check_size(ret: libc::ssize_t) -> SysResult<usize> {
    if ret < 0 {
        Err(Errno::last())
    } else {
        Ok(ret as usize)
    }
}

/// Opens a layer root given by the user. The user's path may go through symlinks; what is
/// inside the layer never does.
pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: plain open(2) with a valid C string; the returned fd is owned by us.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by open(2) and is not owned by anything else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat(dirfd, name, flags | O_NOFOLLOW | O_CLOEXEC, mode)`.
pub fn open_at(dir: BorrowedFd<'_>, name: &OsStr, flags: i32, mode: u32) -> SysResult<OwnedFd> {
    let c = cstr(name)?;
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: valid dirfd and C string; the fd returned is owned by the caller.
    let fd = check(unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags, mode) })?;
    // SAFETY: fd was just returned by openat(2).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a directory inside a layer for reading its entries and xattrs. Falls back to an
/// `O_PATH` handle when the directory is not readable by the daemon (mode 0311 and the like).
pub fn open_dir_at(dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<OwnedFd> {
    match open_at(dir, name, libc::O_RDONLY | libc::O_DIRECTORY, 0) {
        Err(Errno::EACCES) => open_at(dir, name, libc::O_PATH | libc::O_DIRECTORY, 0),
        other => other,
    }
}

/// `fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW)`.
pub fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<Stat> {
    let c = cstr(name)?;
    let mut st = std::mem::MaybeUninit::<Stat>::uninit();
    // SAFETY: st points to writable memory of the right size.
    check(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded and filled st.
    Ok(unsafe { st.assume_init() })
}

/// `fstat(fd)`; works on `O_PATH` fds too.
pub fn stat_fd(fd: BorrowedFd<'_>) -> SysResult<Stat> {
    let mut st = std::mem::MaybeUninit::<Stat>::uninit();
    // SAFETY: st points to writable memory of the right size; "" with AT_EMPTY_PATH is fstat.
    check(unsafe {
        libc::fstatat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            st.as_mut_ptr(),
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: the call succeeded and filled st.
    Ok(unsafe { st.assume_init() })
}

/// A time as seconds and nanoseconds since the epoch.
pub type Timestamp = (i64, u32);

/// The birth time of `name` in `dir` (not followed) from `statx`, or `None` where the
/// filesystem does not record one.
pub fn birth_time_at(dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<Option<Timestamp>> {
    let c = cstr(name)?;
    let mut stx = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: stx points to writable memory of the right size; c is a valid C string.
    check(unsafe {
        libc::statx(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_BTIME,
            stx.as_mut_ptr(),
        )
    })?;
    // SAFETY: statx succeeded and filled stx (it was zeroed before).
    let stx = unsafe { stx.assume_init() };
    if stx.stx_mask & libc::STATX_BTIME == 0 {
        return Ok(None);
    }
    Ok(Some((stx.stx_btime.tv_sec, stx.stx_btime.tv_nsec)))
}

/// `readlinkat(dirfd, name)`.
pub fn readlink_at(dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<Vec<u8>> {
    let c = cstr(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: buf is writable for its whole length.
    let n = check_size(unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            c.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// One raw entry of a layer directory, `.` and `..` left out.
#[derive(Debug, Clone)]
pub struct RawDirEntry {
    pub name: OsString,
    pub ino: u64,
    /// `d_type`; `DT_UNKNOWN` on filesystems that do not fill it.
    pub d_type: u8,
}

/// Reads every entry of the directory `dir` (which is not consumed: a fresh fd is opened on
/// `.` so offsets of the caller's fd are untouched).
pub fn read_dir(dir: BorrowedFd<'_>) -> SysResult<Vec<RawDirEntry>> {
    let fd = open_at(dir, OsStr::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let mut d = nix::dir::Dir::from_fd(fd)?;
    let mut out = Vec::new();
    for entry in d.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let d_type = match entry.file_type() {
            Some(nix::dir::Type::Fifo) => libc::DT_FIFO,
            Some(nix::dir::Type::CharacterDevice) => libc::DT_CHR,
            Some(nix::dir::Type::Directory) => libc::DT_DIR,
            Some(nix::dir::Type::BlockDevice) => libc::DT_BLK,
            Some(nix::dir::Type::File) => libc::DT_REG,
            Some(nix::dir::Type::Symlink) => libc::DT_LNK,
            Some(nix::dir::Type::Socket) => libc::DT_SOCK,
            None => libc::DT_UNKNOWN,
        };
        out.push(RawDirEntry {
            name: OsString::from_vec(name.to_vec()),
            ino: entry.ino(),
            d_type,
        });
    }
    Ok(out)
}

/// The path through which calls without a usable `*at` form (xattrs, chmod) reach `name`
/// inside `dir` (with the `l*` xattr calls, which do not follow a symlink at `name`), or
/// `dir` itself (with the following calls: the magic link leads to the directory).
fn xattr_path(dir: BorrowedFd<'_>, name: Option<&OsStr>) -> SysResult<CString> {
    let mut p = format!("/proc/self/fd/{}", dir.as_raw_fd()).into_bytes();
    if let Some(name) = name {
        p.push(b'/');
        p.extend_from_slice(name.as_bytes());
    }
    CString::new(p).map_err(|_| Errno::EINVAL)
}

/// Reads xattr `attr` of `name` in `dir` (or of `dir` itself when `name` is `None`).
/// `Ok(None)` when the attribute is not set.
pub fn get_xattr(
    dir: BorrowedFd<'_>,
    name: Option<&OsStr>,
    attr: &OsStr,
) -> SysResult<Option<Vec<u8>>> {
    let path = xattr_path(dir, name)?;
    let attr = cstr(attr)?;
    // For the directory itself the magic link must be followed (it leads to the directory);
    // for a name inside it the name must not be.
    let get = if name.is_some() {
        libc::lgetxattr
    } else {
        libc::getxattr
    };
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: buf is writable for its whole length; path and attr are C strings.
        let n = unsafe {
            get(
                path.as_ptr(),
                attr.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        match check_size(n) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(Errno::ENODATA) => return Ok(None),
            Err(Errno::ERANGE) => {
                // SAFETY: a size query with a null buffer.
                let need = check_size(unsafe {
                    get(path.as_ptr(), attr.as_ptr(), std::ptr::null_mut(), 0)
                })?;
                buf.resize(need.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e),
        }
    }
}

/// Lists the xattr names of `name` in `dir` (or of `dir` itself), NUL-separated as the
/// kernel returns them.
pub fn list_xattr(dir: BorrowedFd<'_>, name: Option<&OsStr>) -> SysResult<Vec<u8>> {
    let path = xattr_path(dir, name)?;
    let list = if name.is_some() {
        libc::llistxattr
    } else {
        libc::listxattr
    };
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: buf is writable for its whole length.
        let n = unsafe { list(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        match check_size(n) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(Errno::ERANGE) => {
                // SAFETY: a size query with a null buffer.
                let need = check_size(unsafe { list(path.as_ptr(), std::ptr::null_mut(), 0) })?;
                buf.resize(need.max(buf.len() * 2), 0);
            }
            Err(e) => return Err(e),
        }
    }
}

/// `fstatvfs(fd)`.
pub fn statvfs(fd: BorrowedFd<'_>) -> SysResult<libc::statvfs> {
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: st is writable memory of the right size.
    check(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: the call succeeded and filled st.
    Ok(unsafe { st.assume_init() })
}

/// `pread(fd, buf, offset)`, retried on EINTR, reading until `buf` is full or EOF.
pub fn pread_full(fd: BorrowedFd<'_>, buf: &mut [u8], offset: u64) -> SysResult<usize> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: rest is writable for its whole length.
        let n = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                rest.as_mut_ptr().cast(),
                rest.len(),
                (offset + done as u64) as libc::off_t,
            )
        };
        match check_size(n) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Raises the soft limit on open files to the hard limit: a mount keeps one fd per live
/// directory per layer.
pub fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is valid writable memory.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 && lim.rlim_cur < lim.rlim_max
    {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: lim is a valid rlimit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
}

/// Effective user id of the daemon.
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Effective group id of the process.
pub fn egid() -> u32 {
    nix::unistd::getegid().as_raw()
}

/// The process umask, read from `/proc/self/status` (reading it with umask(2) would change
/// it for a moment under other threads); `None` if the kernel does not say.
pub fn current_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

/// The one-minute load average (runnable and waiting tasks), from `/proc/loadavg`.
pub fn load_average() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// A CPU latency request held with the kernel's PM QoS (`/dev/cpu_dma_latency`, root only):
/// while it asks for 0 µs, idle CPUs poll instead of entering sleep states. Closing it
/// withdraws the request.
#[derive(Debug)]
pub struct CpuLatencyRequest(std::fs::File);

impl CpuLatencyRequest {
    /// No constraint: the kernel's default for the request.
    pub const NONE: i32 = 2_000_000_000;

    /// A request that does not constrain anything yet.
    pub fn open() -> io::Result<CpuLatencyRequest> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/cpu_dma_latency")?;
        io::Write::write_all(&mut f, &Self::NONE.to_ne_bytes())?;
        Ok(CpuLatencyRequest(f))
    }

    /// Asks for wake-ups within `micros`.
    pub fn set(&mut self, micros: i32) -> io::Result<()> {
        io::Write::write_all(&mut self.0, &micros.to_ne_bytes())
    }
}

/// Whether this process may use FUSE passthrough (it needs `CAP_SYS_ADMIN`).
pub fn may_passthrough() -> bool {
    euid() == 0
}

/// How many CPUs this machine may ever have (`/sys/devices/system/cpu/possible`): the
/// kernel's per-CPU queues are numbered by them.
pub fn possible_cpus() -> usize {
    // A list of ranges such as "0-3" or "0,2-5"; the kernel numbers queues up to the last.
    let last = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| {
            let tail = s.trim().rsplit([',', '-']).next()?.to_string();
            tail.parse::<usize>().ok()
        });
    match last {
        Some(n) => n + 1,
        None => {
            // SAFETY: sysconf takes a constant and returns a count.
            let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) };
            n.max(1) as usize
        }
    }
}

/// Binds the calling thread to `cpu`; a CPU that is offline is left alone.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain old data, set up by the CPU_ macros before use.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The argument of the FUSE device's backing-file ioctls (`struct fuse_backing_map`).
#[repr(C)]
struct FuseBackingMap {
    fd: u32,
    flags: u32,
    padding: u64,
}

nix::ioctl_write_ptr!(fuse_backing_open_ioctl, 229, 1, FuseBackingMap);
nix::ioctl_write_ptr!(fuse_backing_close_ioctl, 229, 2, u32);

/// Registers `file` with the FUSE connection `dev` as a passthrough backing file
/// (`FUSE_DEV_IOC_BACKING_OPEN`) and returns its backing id.
pub fn fuse_backing_open(dev: BorrowedFd, file: BorrowedFd) -> SysResult<u32> {
    let map = FuseBackingMap {
        fd: file.as_raw_fd() as u32,
        flags: 0,
        padding: 0,
    };
    // SAFETY: the ioctl reads one fuse_backing_map, which `map` is.
    let id = unsafe { fuse_backing_open_ioctl(dev.as_raw_fd(), &map) }?;
    Ok(id as u32)
}

/// Drops a backing id registered by [`fuse_backing_open`] (`FUSE_DEV_IOC_BACKING_CLOSE`).
pub fn fuse_backing_close(dev: BorrowedFd, id: u32) -> SysResult<()> {
    // SAFETY: the ioctl reads one u32.
    unsafe { fuse_backing_close_ioctl(dev.as_raw_fd(), &id) }?;
    Ok(())
}

/// `umount2(path, flags)`; `lazy` adds `MNT_DETACH`.
pub fn unmount(path: &Path, lazy: bool) -> SysResult<()> {
    let flags = if lazy {
        nix::mount::MntFlags::MNT_DETACH
    } else {
        nix::mount::MntFlags::empty()
    };
    nix::mount::umount2(path, flags)
}

/// An all-zero `struct stat`, for replies that carry no file.
pub fn zeroed_stat() -> Stat {
    // SAFETY: struct stat is plain old data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Sets PATH to the standard system directories when it is missing, as it is when the
/// `mount.fuse3` helper starts us. Must run before any thread exists.
pub fn ensure_default_path() {
    if std::env::var_os("PATH").is_none() {
        // SAFETY: called at start-up while the process is single-threaded.
        unsafe {
            std::env::set_var(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
        };
    }
}

/// `mkdirat(dirfd, name, mode)`.
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> SysResult<()> {
    let c = cstr(name)?;
    // SAFETY: valid dirfd and C string.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode) }).map(drop)
}

/// `mknodat(dirfd, name, mode, rdev)`.
pub fn mknod_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32, rdev: u64) -> SysResult<()> {
    let c = cstr(name)?;
    // SAFETY: valid dirfd and C string.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), c.as_ptr(), mode, rdev) }).map(drop)
}

/// `symlinkat(target, dirfd, name)`.
pub fn symlink_at(target: &OsStr, dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<()> {
    let (t, c) = (cstr(target)?, cstr(name)?);
    // SAFETY: valid dirfd and C strings.
    check(unsafe { libc::symlinkat(t.as_ptr(), dir.as_raw_fd(), c.as_ptr()) }).map(drop)
}

/// `linkat(olddir, oldname, newdir, newname, 0)`: never follows a symlink at `oldname`.
pub fn link_at(
    olddir: BorrowedFd<'_>,
    oldname: &OsStr,
    newdir: BorrowedFd<'_>,
    newname: &OsStr,
) -> SysResult<()> {
    let (o, n) = (cstr(oldname)?, cstr(newname)?);
    // SAFETY: valid dirfds and C strings.
    check(unsafe {
        libc::linkat(
            olddir.as_raw_fd(),
            o.as_ptr(),
            newdir.as_raw_fd(),
            n.as_ptr(),
            0,
        )
    })
    .map(drop)
}

/// `unlinkat(dirfd, name, AT_REMOVEDIR if dir)`.
pub fn unlink_at(dir: BorrowedFd<'_>, name: &OsStr, is_dir: bool) -> SysResult<()> {
    let c = cstr(name)?;
    let flags = if is_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: valid dirfd and C string.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) }).map(drop)
}

/// `renameat2` flags.
pub const RENAME_NOREPLACE: u32 = libc::RENAME_NOREPLACE;
pub const RENAME_EXCHANGE: u32 = libc::RENAME_EXCHANGE;
pub const RENAME_WHITEOUT: u32 = libc::RENAME_WHITEOUT;

/// `renameat2(olddir, oldname, newdir, newname, flags)`.
pub fn rename_at(
    olddir: BorrowedFd<'_>,
    oldname: &OsStr,
    newdir: BorrowedFd<'_>,
    newname: &OsStr,
    flags: u32,
) -> SysResult<()> {
    let (o, n) = (cstr(oldname)?, cstr(newname)?);
    // SAFETY: valid dirfds and C strings.
    check(unsafe {
        libc::renameat2(
            olddir.as_raw_fd(),
            o.as_ptr(),
            newdir.as_raw_fd(),
            n.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// `fchownat(dirfd, name, uid, gid, AT_SYMLINK_NOFOLLOW)`; `None` leaves an id unchanged.
/// With `name` `None`, changes `dir` itself.
pub fn chown_at(
    dir: BorrowedFd<'_>,
    name: Option<&OsStr>,
    uid: Option<u32>,
    gid: Option<u32>,
) -> SysResult<()> {
    let (u, g) = (uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX));
    let c = cstr(name.unwrap_or(OsStr::new("")))?;
    let flags = if name.is_some() {
        libc::AT_SYMLINK_NOFOLLOW
    } else {
        libc::AT_EMPTY_PATH
    };
    // SAFETY: valid dirfd and C string.
    check(unsafe { libc::fchownat(dir.as_raw_fd(), c.as_ptr(), u, g, flags) }).map(drop)
}

/// chmod of `name` in `dir` (or of `dir`), which must not be a symlink.
pub fn chmod_at(dir: BorrowedFd<'_>, name: Option<&OsStr>, mode: u32) -> SysResult<()> {
    let p = xattr_path(dir, name)?;
    // SAFETY: a C string path; the magic link resolves to the object itself.
    check(unsafe { libc::chmod(p.as_ptr(), mode) }).map(drop)
}

/// A timestamp to set: a value, now, or leave alone.
#[derive(Clone, Copy, Debug)]
pub enum SetTime {
    At(i64, i64),
    Now,
    Omit,
}

fn timespec(t: SetTime) -> libc::timespec {
    match t {
        SetTime::At(s, ns) => libc::timespec {
            tv_sec: s,
            tv_nsec: ns,
        },
        SetTime::Now => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        SetTime::Omit => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
    }
}

/// `utimensat` on `name` in `dir` without following it (or on `dir` itself).
pub fn utimens_at(
    dir: BorrowedFd<'_>,
    name: Option<&OsStr>,
    atime: SetTime,
    mtime: SetTime,
) -> SysResult<()> {
    let times = [timespec(atime), timespec(mtime)];
    let c = cstr(name.unwrap_or(OsStr::new("")))?;
    let flags = if name.is_some() {
        libc::AT_SYMLINK_NOFOLLOW
    } else {
        libc::AT_EMPTY_PATH
    };
    // SAFETY: valid dirfd, C string and a two-element timespec array.
    check(unsafe { libc::utimensat(dir.as_raw_fd(), c.as_ptr(), times.as_ptr(), flags) }).map(drop)
}

/// Sets xattr `attr` on `name` in `dir` (or on `dir`), not following symlinks.
pub fn set_xattr(
    dir: BorrowedFd<'_>,
    name: Option<&OsStr>,
    attr: &OsStr,
    value: &[u8],
    flags: i32,
) -> SysResult<()> {
    let (p, a) = (xattr_path(dir, name)?, cstr(attr)?);
    let set = if name.is_some() {
        libc::lsetxattr
    } else {
        libc::setxattr
    };
    // SAFETY: C strings and a readable value buffer.
    check(unsafe {
        set(
            p.as_ptr(),
            a.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

/// Removes xattr `attr` from `name` in `dir` (or from `dir`), not following symlinks.
pub fn remove_xattr(dir: BorrowedFd<'_>, name: Option<&OsStr>, attr: &OsStr) -> SysResult<()> {
    let (p, a) = (xattr_path(dir, name)?, cstr(attr)?);
    let remove = if name.is_some() {
        libc::lremovexattr
    } else {
        libc::removexattr
    };
    // SAFETY: C strings.
    check(unsafe { remove(p.as_ptr(), a.as_ptr()) }).map(drop)
}

/// `ftruncate(fd, size)`.
pub fn truncate_fd(fd: BorrowedFd<'_>, size: u64) -> SysResult<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), size as libc::off_t) }).map(drop)
}

/// `fsync` or `fdatasync`.
pub fn sync_fd(fd: BorrowedFd<'_>, data_only: bool) -> SysResult<()> {
    // SAFETY: plain syscalls on a valid fd.
    check(unsafe {
        if data_only {
            libc::fdatasync(fd.as_raw_fd())
        } else {
            libc::fsync(fd.as_raw_fd())
        }
    })
    .map(drop)
}

/// `fallocate(fd, mode, offset, len)`.
pub fn fallocate(fd: BorrowedFd<'_>, mode: i32, offset: u64, len: u64) -> SysResult<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe {
        libc::fallocate(
            fd.as_raw_fd(),
            mode,
            offset as libc::off_t,
            len as libc::off_t,
        )
    })
    .map(drop)
}

/// `pwrite` of the whole buffer, retried on EINTR and short writes.
pub fn pwrite_all(fd: BorrowedFd<'_>, data: &[u8], offset: u64) -> SysResult<usize> {
    let mut done = 0;
    while done < data.len() {
        let rest = &data[done..];
        // SAFETY: rest is readable for its whole length.
        let n = unsafe {
            libc::pwrite(
                fd.as_raw_fd(),
                rest.as_ptr().cast(),
                rest.len(),
                (offset + done as u64) as libc::off_t,
            )
        };
        match check_size(n) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(Errno::EINTR) => continue,
            // Report what was written; the error recurs on the next call.
            Err(_) if done > 0 => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// `lseek(fd, offset, whence)`.
pub fn lseek(fd: BorrowedFd<'_>, offset: i64, whence: i32) -> SysResult<i64> {
    // SAFETY: plain syscall on a valid fd.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), offset, whence) };
    if r < 0 { Err(Errno::last()) } else { Ok(r) }
}

/// `copy_file_range` between two fds at explicit offsets; returns bytes copied.
pub fn copy_range(
    src: BorrowedFd<'_>,
    src_off: u64,
    dst: BorrowedFd<'_>,
    dst_off: u64,
    len: u64,
) -> SysResult<usize> {
    let mut so = src_off as libc::loff_t;
    let mut d = dst_off as libc::loff_t;
    // SAFETY: valid fds and offset pointers to locals.
    check_size(unsafe {
        libc::copy_file_range(
            src.as_raw_fd(),
            &mut so,
            dst.as_raw_fd(),
            &mut d,
            len as usize,
            0,
        )
    } as libc::ssize_t)
}

/// Starts writing back `len` bytes of `fd` from `off` without waiting for them
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): a later `fsync` has less left to wait for.
pub fn start_writeback(fd: BorrowedFd<'_>, off: u64, len: u64) -> SysResult<()> {
    // SAFETY: plain syscall on a valid fd.
    check(unsafe {
        libc::sync_file_range(
            fd.as_raw_fd(),
            off as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    })
    .map(drop)
}

/// Shares all data of `src` into `dst` (FICLONE), where the filesystem can.
pub fn clone_file(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> SysResult<()> {
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: FICLONE takes the source fd as its argument.
    check(unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE, src.as_raw_fd()) }).map(drop)
}

/// Sets the process umask (the daemon uses 0 so modes come out as asked).
pub fn set_umask(mask: u32) {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(mask) };
}

/// The user id of the process at the other end of a connected unix socket (`SO_PEERCRED`),
/// as the kernel recorded it when the connection was made.
pub fn peer_uid(sock: BorrowedFd<'_>) -> SysResult<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a properly sized ucred.
    check(unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok(cred.uid)
}
