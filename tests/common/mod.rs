//! Shared helpers of the integration tests: mounting ufsd and kernel overlayfs behind
//! guards that always unmount, a tree snapshot that compares two mounts without following
//! symlinks or comparing raw inode numbers, and the deterministic 3-layer fixture written in
//! either whiteout format.
//!
//! Every test builds its own fixture in its own temporary directories, so tests can run in
//! parallel threads. Nothing here skips: a missing tool or a failing mount panics with a
//! message that says what to install or what went wrong.

// Each test crate uses a different part of this module.
#![allow(dead_code)]

pub mod posix;
pub mod requests;

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{CString, OsStr, OsString};
use std::fmt;
use std::fs;
use std::hash::Hasher;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tempfile::TempDir;

// ---------------------------------------------------------------------------------------
// Binaries, paths, mount table
// ---------------------------------------------------------------------------------------

/// The ufsd binary built for these tests.
pub fn ufsd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ufsd"))
}

/// Runs `ufsd ARGS...` and returns its output.
pub fn run_ufsd<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(ufsd_bin())
        .args(args)
        .output()
        .expect("running the ufsd binary")
}

/// A temporary directory that every user may traverse (tempfile makes them 0700), so that
/// mount points inside it are reachable by the unprivileged processes of the permission
/// tests.
pub fn scratch() -> TempDir {
    let d = tempfile::Builder::new()
        .prefix("ufsd-test-")
        .tempdir()
        .expect("creating a temporary directory");
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).expect("chmod scratch");
    d
}

/// Creates `parent/name` as an empty directory (mode 0755) and returns its path.
pub fn mkdir(parent: &Path, name: &str) -> PathBuf {
    let p = parent.join(name);
    fs::DirBuilder::new()
        .mode(0o755)
        .create(&p)
        .unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
    p
}

/// Undoes the octal escapes (`\040`) of paths in /proc/self/mountinfo.
fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Every mount of this process's namespace as (mount point, filesystem type), in order.
pub fn mount_table() -> Vec<(PathBuf, String)> {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("reading /proc/self/mountinfo");
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mnt = left.split(' ').nth(4)?;
            let fstype = right.split(' ').next()?;
            Some((
                PathBuf::from(OsString::from_vec(unescape_mountinfo(mnt))),
                fstype.to_string(),
            ))
        })
        .collect()
}

/// The filesystem type of the top-most mount exactly at `path`, if `path` is a mount point.
pub fn mount_type_at(path: &Path) -> Option<String> {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    mount_table()
        .into_iter()
        .rev()
        .find(|(m, _)| *m == path)
        .map(|(_, t)| t)
}

/// Mounts at or below `dir`, for checking that a failed command left nothing behind.
pub fn mounts_under(dir: &Path) -> Vec<(PathBuf, String)> {
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    mount_table()
        .into_iter()
        .filter(|(m, _)| m.starts_with(&dir))
        .collect()
}

/// FNV-1a, as ufsd uses it to name the pid file of a mount.
fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The pid of the daemon serving `mnt`, from its pid file under /run/ufsd (ufsd running as
/// root), falling back to a scan of /proc/*/cmdline for a ufsd process naming `mnt`.
pub fn daemon_pid(mnt: &Path) -> Option<i32> {
    let mnt = fs::canonicalize(mnt).unwrap_or_else(|_| mnt.to_path_buf());
    let file =
        PathBuf::from("/run/ufsd").join(format!("{:016x}.pid", fnv64(mnt.as_os_str().as_bytes())));
    if let Ok(text) = fs::read_to_string(&file)
        && let Some(pid) = text.lines().next().and_then(|l| l.trim().parse().ok())
    {
        return Some(pid);
    }
    let me = std::process::id() as i32;
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_ufsd = args
            .first()
            .is_some_and(|a| Path::new(OsStr::from_bytes(a)).file_name() == Some("ufsd".as_ref()));
        if is_ufsd && args.contains(&mnt.as_os_str().as_bytes()) {
            return Some(pid);
        }
    }
    None
}

/// Whether process `pid` still runs (a zombie has exited: only its parent has not reaped it).
pub fn process_running(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        // The state is the first field after the parenthesised command name.
        Ok(stat) => match stat.rsplit_once(')') {
            Some((_, rest)) => !matches!(rest.trim_start().chars().next(), Some('Z') | Some('X')),
            None => true,
        },
    }
}

/// Polls until `pid` stops running or `timeout` passes; true if it stopped.
pub fn wait_process_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while process_running(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

// ---------------------------------------------------------------------------------------
// Mount guards
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    Ufsd,
    KernelOverlay,
}

/// A live mount, unmounted when dropped. Drop never panics: a failed unmount falls back to
/// a lazy one and is reported on stderr.
#[derive(Debug)]
pub struct Mounted {
    pub path: PathBuf,
    pub kind: MountKind,
}

impl Mounted {
    /// Unmounts now and says whether it worked (the guard then does nothing).
    pub fn unmount(mut self) -> Result<(), String> {
        let r = self.try_unmount();
        // Mark as done so Drop does not try again.
        self.path = PathBuf::new();
        r
    }

    fn try_unmount(&self) -> Result<(), String> {
        if self.path.as_os_str().is_empty() {
            return Ok(());
        }
        let want = match self.kind {
            MountKind::Ufsd => "fuse.ufsd",
            MountKind::KernelOverlay => "overlay",
        };
        if mount_type_at(&self.path).as_deref() != Some(want) {
            // Already unmounted by the test itself.
            return Ok(());
        }
        let first = match self.kind {
            MountKind::Ufsd => {
                // A file the test just closed may still be released asynchronously: retry
                // briefly on "busy".
                let mut last = String::new();
                for _ in 0..10 {
                    let out = Command::new(ufsd_bin())
                        .arg("umount")
                        .arg(&self.path)
                        .output();
                    match out {
                        Ok(o) if o.status.success() => {
                            last.clear();
                            break;
                        }
                        Ok(o) => last = String::from_utf8_lossy(&o.stderr).trim().to_string(),
                        Err(e) => last = e.to_string(),
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                if last.is_empty() { Ok(()) } else { Err(last) }
            }
            MountKind::KernelOverlay => nix::mount::umount(&self.path).map_err(|e| e.to_string()),
        };
        if let Err(e) = first {
            let lazy = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
            return Err(format!(
                "unmounting {} failed ({e}); lazy unmount: {lazy:?}",
                self.path.display()
            ));
        }
        Ok(())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = self.try_unmount() {
            eprintln!("warning: {e}");
        }
    }
}

fn join_lowers(lowers: &[&Path]) -> OsString {
    let mut s = OsString::new();
    for (i, l) in lowers.iter().enumerate() {
        if i > 0 {
            s.push(":");
        }
        s.push(l.as_os_str());
    }
    s
}

/// Mounts ufsd over `lowers` (top-most first) with an optional (upper, work) at `mnt`, with
/// `extra_args` placed before the mount point. Panics with ufsd's stderr if it fails, or if
/// the mount is not in the mount table once the command returned.
pub fn mount_ufsd(
    lowers: &[&Path],
    upper: Option<(&Path, &Path)>,
    mnt: &Path,
    extra_args: &[&str],
) -> Mounted {
    let mut cmd = Command::new(ufsd_bin());
    cmd.arg("mount").arg("--lower").arg(join_lowers(lowers));
    if let Some((u, w)) = upper {
        cmd.arg("--upper").arg(u).arg("--work").arg(w);
    }
    cmd.args(extra_args).arg(mnt);
    let out = cmd.output().expect("running ufsd mount");
    assert!(
        out.status.success(),
        "ufsd mount {} failed ({}): {}",
        mnt.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let path = fs::canonicalize(mnt).expect("canonical mount point");
    let guard = Mounted {
        path,
        kind: MountKind::Ufsd,
    };
    assert_eq!(
        mount_type_at(&guard.path).as_deref(),
        Some("fuse.ufsd"),
        "ufsd mount returned success but {} is not a fuse.ufsd mount",
        guard.path.display()
    );
    guard
}

/// Escapes a path for overlayfs' option string: `\`, `:` and `,` get a backslash.
fn overlay_escape(p: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in p.as_os_str().as_bytes() {
        if matches!(b, b'\\' | b':' | b',') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

/// Mounts kernel overlayfs over `lowers` (top-most first). Without an upper the overlay is
/// read-only and needs at least two lowers.
pub fn mount_overlay(lowers: &[&Path], upper: Option<(&Path, &Path)>, mnt: &Path) -> Mounted {
    let mut data = b"lowerdir=".to_vec();
    for (i, l) in lowers.iter().enumerate() {
        if i > 0 {
            data.push(b':');
        }
        data.extend(overlay_escape(l));
    }
    if let Some((u, w)) = upper {
        data.extend_from_slice(b",upperdir=");
        data.extend(overlay_escape(u));
        data.extend_from_slice(b",workdir=");
        data.extend(overlay_escape(w));
    }
    let flags = if upper.is_none() {
        nix::mount::MsFlags::MS_RDONLY
    } else {
        nix::mount::MsFlags::empty()
    };
    nix::mount::mount(
        Some("overlay"),
        mnt,
        Some("overlay"),
        flags,
        Some(OsStr::from_bytes(&data)),
    )
    .unwrap_or_else(|e| {
        panic!(
            "mount -t overlay at {} with {:?}: {e} (see dmesg)",
            mnt.display(),
            String::from_utf8_lossy(&data)
        )
    });
    Mounted {
        path: fs::canonicalize(mnt).expect("canonical mount point"),
        kind: MountKind::KernelOverlay,
    }
}

// ---------------------------------------------------------------------------------------
// Syscall helpers
// ---------------------------------------------------------------------------------------

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

fn cname(n: &[u8]) -> CString {
    CString::new(n).expect("name without NUL")
}

/// The errno of a failed io::Result, or None on success.
pub fn errno_of<T>(r: io::Result<T>) -> Option<i32> {
    r.err().map(|e| e.raw_os_error().unwrap_or(-1))
}

/// `lgetxattr(path, name)`: the value, or the errno.
pub fn get_xattr(path: &Path, name: &[u8]) -> Result<Vec<u8>, i32> {
    let p = cpath(path);
    let n = cname(name);
    loop {
        // SAFETY: size query with a null buffer on valid C strings.
        let size = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(io::Error::last_os_error().raw_os_error().unwrap_or(-1));
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: buf is writable for buf.len() bytes.
        let got =
            unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let e = io::Error::last_os_error().raw_os_error().unwrap_or(-1);
        if e != libc::ERANGE {
            return Err(e);
        }
    }
}

/// `llistxattr(path)`: the names, or the errno.
pub fn list_xattrs(path: &Path) -> Result<Vec<Vec<u8>>, i32> {
    let p = cpath(path);
    loop {
        // SAFETY: size query with a null buffer.
        let size = unsafe { libc::llistxattr(p.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(io::Error::last_os_error().raw_os_error().unwrap_or(-1));
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: buf is writable for buf.len() bytes.
        let got = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf
                .split(|b| *b == 0)
                .filter(|n| !n.is_empty())
                .map(<[u8]>::to_vec)
                .collect());
        }
        let e = io::Error::last_os_error().raw_os_error().unwrap_or(-1);
        if e != libc::ERANGE {
            return Err(e);
        }
    }
}

/// `lsetxattr(path, name, value)`; panics on failure.
pub fn set_xattr(path: &Path, name: &[u8], value: &[u8]) {
    let p = cpath(path);
    let n = cname(name);
    // SAFETY: valid C strings and a readable value buffer.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert!(
        r == 0,
        "setxattr {} {}: {}",
        path.display(),
        String::from_utf8_lossy(name),
        io::Error::last_os_error()
    );
}

/// `mknod(path, mode, makedev(major, minor))`; panics on failure.
pub fn mknod(path: &Path, mode: u32, major: u32, minor: u32) {
    let p = cpath(path);
    // SAFETY: a valid C string.
    let r = unsafe { libc::mknod(p.as_ptr(), mode, libc::makedev(major, minor)) };
    assert!(
        r == 0,
        "mknod {}: {}",
        path.display(),
        io::Error::last_os_error()
    );
}

// ---------------------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------------------

/// File type as recorded in a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

/// What a snapshot records of one path. Raw inode numbers, times and directory sizes and
/// link counts are left out: they legitimately differ between two filesystems showing the
/// same tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    /// Permission bits, 07777.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Regular files and symlinks only.
    pub size: Option<u64>,
    /// Hash of the content of a regular file.
    pub content: Option<u64>,
    pub target: Option<Vec<u8>>,
    /// Device number of character and block devices.
    pub rdev: Option<(u32, u32)>,
    /// Regular files only.
    pub nlink: Option<u64>,
    /// For a non-directory whose inode number other paths of the tree share: the bytewise
    /// smallest path of that group.
    pub link_group: Option<Vec<u8>>,
    /// All xattrs, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A tree: relative path bytes (the root is the empty path) to what is recorded there.
pub type Snapshot = BTreeMap<Vec<u8>, Entry>;

/// Renders path bytes for a person: escapes for anything that is not printable ASCII.
pub fn show(path: &[u8]) -> String {
    if path.is_empty() {
        "/".to_string()
    } else {
        path.escape_ascii().to_string()
    }
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} mode={:04o} uid={} gid={}",
            self.kind, self.mode, self.uid, self.gid
        )?;
        if let Some(s) = self.size {
            write!(f, " size={s}")?;
        }
        if let Some(h) = self.content {
            write!(f, " content={h:016x}")?;
        }
        if let Some(t) = &self.target {
            write!(f, " -> \"{}\"", t.escape_ascii())?;
        }
        if let Some((ma, mi)) = self.rdev {
            write!(f, " rdev={ma}:{mi}")?;
        }
        if let Some(n) = self.nlink {
            write!(f, " nlink={n}")?;
        }
        if let Some(g) = &self.link_group {
            write!(f, " linked-with={}", show(g))?;
        }
        if !self.xattrs.is_empty() {
            let xs: Vec<String> = self
                .xattrs
                .iter()
                .map(|(n, v)| format!("{}=\"{}\"", n.escape_ascii(), v.escape_ascii()))
                .collect();
            write!(f, " xattrs={{{}}}", xs.join(", "))?;
        }
        Ok(())
    }
}

fn join_rel(rel: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = rel.to_vec();
    if !v.is_empty() {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

fn content_hash(path: &Path) -> u64 {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut h = DefaultHasher::new();
    h.write(&bytes);
    h.finish()
}

fn xattrs_of(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let names = match list_xattrs(path) {
        Ok(n) => n,
        Err(libc::ENOTSUP) => return Vec::new(),
        Err(e) => panic!(
            "listxattr {}: {}",
            path.display(),
            io::Error::from_raw_os_error(e)
        ),
    };
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = names
        .into_iter()
        .map(|n| {
            let v = get_xattr(path, &n).unwrap_or_else(|e| {
                panic!(
                    "getxattr {} {} (listed by listxattr): {}",
                    path.display(),
                    n.escape_ascii(),
                    io::Error::from_raw_os_error(e)
                )
            });
            (n, v)
        })
        .collect();
    out.sort();
    out
}

fn walk(root: &Path, rel: &[u8], out: &mut Snapshot, inos: &mut HashMap<u64, Vec<Vec<u8>>>) {
    let path = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    };
    let md =
        fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    let ft = md.file_type();
    let kind = if ft.is_file() {
        Kind::File
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_socket() {
        Kind::Socket
    } else if ft.is_char_device() {
        Kind::CharDev
    } else {
        Kind::BlockDev
    };
    let mut e = Entry {
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        size: None,
        content: None,
        target: None,
        rdev: None,
        nlink: None,
        link_group: None,
        xattrs: xattrs_of(&path),
    };
    match kind {
        Kind::File => {
            e.size = Some(md.size());
            e.nlink = Some(md.nlink());
            e.content = Some(content_hash(&path));
        }
        Kind::Symlink => {
            e.size = Some(md.size());
            let t = fs::read_link(&path)
                .unwrap_or_else(|err| panic!("readlink {}: {err}", path.display()));
            e.target = Some(t.into_os_string().into_vec());
        }
        Kind::CharDev | Kind::BlockDev => {
            let rdev = md.rdev();
            e.rdev = Some((libc::major(rdev), libc::minor(rdev)));
        }
        _ => {}
    }
    if kind != Kind::Dir {
        inos.entry(md.ino()).or_default().push(rel.to_vec());
    }
    out.insert(rel.to_vec(), e);
    if kind == Kind::Dir {
        let mut names: Vec<OsString> = fs::read_dir(&path)
            .unwrap_or_else(|err| panic!("readdir {}: {err}", path.display()))
            .map(|d| {
                d.unwrap_or_else(|err| panic!("readdir {}: {err}", path.display()))
                    .file_name()
            })
            .collect();
        names.sort();
        for n in names {
            walk(root, &join_rel(rel, n.as_bytes()), out, inos);
        }
    }
}

/// Walks `root` with lstat, never following symlinks, and records every path.
pub fn snapshot(root: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    let mut inos: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
    walk(root, b"", &mut out, &mut inos);
    for paths in inos.into_values().filter(|p| p.len() > 1) {
        let first = paths.iter().min().cloned();
        for p in &paths {
            if let Some(e) = out.get_mut(p) {
                e.link_group = first.clone();
            }
        }
    }
    out
}

/// The differences between two snapshots as lines (`-` only or different in `a`, `+` in
/// `b`); empty when they are equal.
pub fn diff_snapshots(a: &Snapshot, b: &Snapshot) -> Vec<String> {
    let keys: BTreeSet<&Vec<u8>> = a.keys().chain(b.keys()).collect();
    let mut lines = Vec::new();
    for k in keys {
        match (a.get(k), b.get(k)) {
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) => {
                lines.push(format!("- {}: {x}", show(k)));
                lines.push(format!("+ {}: {y}", show(k)));
            }
            (Some(x), None) => lines.push(format!("- {}: {x}", show(k))),
            (None, Some(y)) => lines.push(format!("+ {}: {y}", show(k))),
            (None, None) => {}
        }
    }
    lines
}

/// Panics with a readable diff (at most ~50 lines) unless the snapshots are equal.
pub fn assert_same_snapshots(a: &Snapshot, b: &Snapshot, a_name: &str, b_name: &str) {
    let lines = diff_snapshots(a, b);
    if lines.is_empty() {
        return;
    }
    const MAX: usize = 50;
    let mut msg = format!(
        "trees differ: {} line(s) of difference (- {a_name}, + {b_name})\n",
        lines.len()
    );
    for l in lines.iter().take(MAX) {
        msg.push_str(l);
        msg.push('\n');
    }
    if lines.len() > MAX {
        msg.push_str(&format!("... and {} more\n", lines.len() - MAX));
    }
    panic!("{msg}");
}

/// Snapshots both trees and panics with a readable diff unless they are equal.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (sa, sb) = (snapshot(a), snapshot(b));
    assert_same_snapshots(&sa, &sb, &a.display().to_string(), &b.display().to_string());
}

// ---------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------

/// How whiteouts and opaque directories are written in a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutFormat {
    /// Kernel overlayfs: a 0/0 character device, `trusted.overlay.opaque=y`.
    Overlay,
    /// OCI image layers: an empty `.wh.NAME` file, a `.wh..wh..opq` marker.
    Oci,
}

/// Writes one layer directory. Paths are relative byte strings; missing parents are created
/// with mode 0755; every mode is set exactly (the umask does not apply).
pub struct LayerBuilder {
    pub root: PathBuf,
    pub format: WhiteoutFormat,
}

impl LayerBuilder {
    pub fn new(root: &Path, format: WhiteoutFormat) -> LayerBuilder {
        fs::create_dir_all(root).expect("creating a layer root");
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).expect("chmod layer root");
        LayerBuilder {
            root: root.to_path_buf(),
            format,
        }
    }

    pub fn path(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(OsStr::from_bytes(rel))
        }
    }

    fn parents(&self, rel: &[u8]) {
        if let Some(pos) = rel.iter().rposition(|b| *b == b'/') {
            let parent = &rel[..pos];
            if !self.path(parent).exists() {
                self.dir(parent, 0o755);
            }
        }
    }

    pub fn dir(&self, rel: &[u8], mode: u32) -> &Self {
        self.parents(rel);
        let p = self.path(rel);
        if !p.is_dir() {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&p)
                .unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod dir");
        self
    }

    pub fn file(&self, rel: &[u8], content: &[u8], mode: u32) -> &Self {
        self.parents(rel);
        let p = self.path(rel);
        fs::write(&p, content).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod file");
        self
    }

    /// A file of `hole` zero bytes never written (a hole), then `data`.
    pub fn sparse(&self, rel: &[u8], hole: u64, data: &[u8]) -> &Self {
        self.parents(rel);
        let p = self.path(rel);
        let mut f = fs::File::create(&p).expect("creating a sparse file");
        f.seek(SeekFrom::Start(hole)).expect("seek");
        f.write_all(data).expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).expect("chmod");
        self
    }

    pub fn symlink(&self, rel: &[u8], target: &[u8]) -> &Self {
        self.parents(rel);
        std::os::unix::fs::symlink(OsStr::from_bytes(target), self.path(rel)).expect("symlink");
        self
    }

    pub fn hardlink(&self, existing: &[u8], rel: &[u8]) -> &Self {
        self.parents(rel);
        fs::hard_link(self.path(existing), self.path(rel)).expect("hard link");
        self
    }

    pub fn fifo(&self, rel: &[u8], mode: u32) -> &Self {
        self.parents(rel);
        mknod(&self.path(rel), libc::S_IFIFO | 0o600, 0, 0);
        fs::set_permissions(self.path(rel), fs::Permissions::from_mode(mode)).expect("chmod");
        self
    }

    pub fn socket(&self, rel: &[u8]) -> &Self {
        self.parents(rel);
        let l = std::os::unix::net::UnixListener::bind(self.path(rel)).expect("bind socket");
        drop(l);
        fs::set_permissions(self.path(rel), fs::Permissions::from_mode(0o755)).expect("chmod");
        self
    }

    pub fn chardev(&self, rel: &[u8], major: u32, minor: u32) -> &Self {
        self.parents(rel);
        mknod(&self.path(rel), libc::S_IFCHR | 0o666, major, minor);
        fs::set_permissions(self.path(rel), fs::Permissions::from_mode(0o666)).expect("chmod");
        self
    }

    /// Hides `rel` in the layers below.
    pub fn whiteout(&self, rel: &[u8]) -> &Self {
        self.parents(rel);
        match self.format {
            WhiteoutFormat::Overlay => mknod(&self.path(rel), libc::S_IFCHR, 0, 0),
            WhiteoutFormat::Oci => {
                let (dir, name) = match rel.iter().rposition(|b| *b == b'/') {
                    Some(pos) => (&rel[..pos], &rel[pos + 1..]),
                    None => (&b""[..], rel),
                };
                let mut wh = b".wh.".to_vec();
                wh.extend_from_slice(name);
                let p = self.path(&join_rel(dir, &wh));
                fs::write(&p, b"").expect("writing a .wh. file");
            }
        }
        self
    }

    /// Makes the directory `rel` (created if needed) hide everything below it.
    pub fn opaque(&self, rel: &[u8]) -> &Self {
        if !self.path(rel).is_dir() {
            self.dir(rel, 0o755);
        }
        match self.format {
            WhiteoutFormat::Overlay => set_xattr(&self.path(rel), b"trusted.overlay.opaque", b"y"),
            WhiteoutFormat::Oci => fs::write(self.path(&join_rel(rel, b".wh..wh..opq")), b"")
                .expect("writing the opaque marker"),
        }
        self
    }

    pub fn xattr(&self, rel: &[u8], name: &[u8], value: &[u8]) -> &Self {
        set_xattr(&self.path(rel), name, value);
        self
    }

    /// chown, then the mode again (chown clears set-id bits).
    pub fn owner(&self, rel: &[u8], uid: u32, gid: u32) -> &Self {
        let p = self.path(rel);
        let mode = fs::symlink_metadata(&p).expect("lstat").mode() & 0o7777;
        std::os::unix::fs::lchown(&p, Some(uid), Some(gid)).expect("lchown");
        if !fs::symlink_metadata(&p).expect("lstat").is_symlink() {
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
        }
        self
    }
}

/// The directory of the fixture whose entries are spread over the three layers.
pub const BIG_DIR: &str = "big";
/// How many names the big directory's layers hold in all (before whiteouts).
pub const BIG_N: usize = 10_600;

pub fn big_name(i: usize) -> Vec<u8> {
    format!("f{i:05}").into_bytes()
}

/// Whether entry `i` of the big directory is whited out (hidden in the merged view).
fn big_whited_out(i: usize) -> bool {
    (i % 3 == 2 && i.is_multiple_of(11)) || (i % 3 == 1 && i.is_multiple_of(13))
}

/// The names the merged big directory must list, each once.
pub fn big_dir_expected() -> BTreeSet<Vec<u8>> {
    (0..BIG_N)
        .filter(|i| !big_whited_out(*i))
        .map(big_name)
        .collect()
}

/// Owner for the files of the fixture that are not root's.
pub const FIXTURE_UID: u32 = 1234;
pub const FIXTURE_GID: u32 = 5678;

/// Paths (relative to the merged root) that the fixture's merged view must show, with
/// their content for regular files (None: present, content not checked here).
pub const FIXTURE_PRESENT: &[(&[u8], Option<&[u8]>)] = &[
    (b"etc/hosts", Some(b"127.0.0.1 localhost\n")),
    (b"etc/conf.d/a.conf", Some(b"a from L2\n")),
    (b"etc/conf.d/b.conf", Some(b"b from L1\n")),
    (b"etc/conf.d/c.conf", Some(b"c from L1\n")),
    (b"etc/conf.d/d.conf", Some(b"d from L0\n")),
    (b"etc/motd", Some(b"motd from L1\n")),
    (b"shadowed", Some(b"top\n")),
    (b"dir_then_file", Some(b"a file in L1 over a dir in L2\n")),
    (b"file_then_dir/child", Some(b"child in L0\n")),
    (b"recreated", Some(b"new in L0\n")),
    (b"wdir/c", Some(b"c in L0\n")),
    (b"opq/new1", Some(b"new1 in L1\n")),
    (b"opq/top", Some(b"top in L0\n")),
    (b"opq_top/kept", Some(b"kept in L0\n")),
    (b"nested/a/b/c/deep", Some(b"deep in L2\n")),
    (b"nested/a/b/mid", Some(b"mid in L1\n")),
    (b"nested/a/top", Some(b"top in L0\n")),
    (b"links/hl_a", Some(b"three links\n")),
    (b"links/hl_b", Some(b"three links\n")),
    (b"links/pair1", Some(b"two links\n")),
    (b"links/pair2", Some(b"two links\n")),
    (b"modes/m0600", Some(b"secret\n")),
    (b"modes/m0755", Some(b"#!/bin/sh\n")),
    (b"modes/m4755", Some(b"setuid\n")),
    (b"empty", Some(b"")),
    (b"names/with space", Some(b"space\n")),
    (b"names/new\nline", Some(b"newline\n")),
    (b"names/caf\xe9", Some(b"latin-1\n")),
    (b"symlinks/rel", None),
    (b"symlinks/abs", None),
    (b"symlinks/up", None),
    (b"symlinks/dangling", None),
    (b"special/fifo", None),
    (b"special/socket", None),
    (b"special/null", None),
    (b"sparse", None),
];

/// Paths the fixture's merged view must not show.
pub const FIXTURE_ABSENT: &[&[u8]] = &[
    b"gone_file",
    b"gone_dir",
    b"gone_dir/inner",
    b"dir_then_file/inner",
    b"opq/old1",
    b"opq/old2",
    b"opq_top/hidden_below",
    b"wdir/a",
    b"wdir/b",
    b"links/hl_c",
    b"ghost",
    b"etc/conf.d/z.conf",
    b".wh..wh..opq",
    b"opq/.wh..wh..opq",
];

/// Regular files of the fixture that are hard links of each other inside one layer.
pub const FIXTURE_HARDLINKS: &[&[&[u8]]] = &[
    &[b"links/hl_a", b"links/hl_b"],
    &[b"links/pair1", b"links/pair2"],
    &[b"etc/motd", b"links/motd_link"],
];

/// Size of the hole at the start of `sparse`.
pub const SPARSE_HOLE: u64 = 1 << 20;

/// Builds the three layers of the fixture under `dir` (`dir/l0` top-most, `dir/l1`,
/// `dir/l2` bottom) in the given whiteout format and returns them top-most first, ready for
/// `lowerdir=`. The result is the same in both formats except for how whiteouts and opaque
/// directories are written.
pub fn build_fixture(dir: &Path, format: WhiteoutFormat) -> Vec<PathBuf> {
    build_fixture_with(dir, format, true)
}

/// [`build_fixture`], with or without the big directory (its ~10k files take a moment to
/// write and to walk; tests that do not look at it leave it out).
pub fn build_fixture_with(dir: &Path, format: WhiteoutFormat, with_big: bool) -> Vec<PathBuf> {
    let l0 = LayerBuilder::new(&dir.join("l0"), format);
    let l1 = LayerBuilder::new(&dir.join("l1"), format);
    let l2 = LayerBuilder::new(&dir.join("l2"), format);
    let (uid, gid) = (FIXTURE_UID, FIXTURE_GID);

    // ---- L2, the bottom layer.
    l2.dir(b"etc", 0o755)
        .file(b"etc/hosts", b"127.0.0.1 localhost\n", 0o644)
        .xattr(b"etc/hosts", b"user.comment", b"hosts file")
        // Overlay-private xattrs: never shown by the merged view.
        .xattr(
            b"etc/hosts",
            b"trusted.overlay.origin",
            b"\x00\xfbnot-a-handle",
        )
        .xattr(b"etc/hosts", b"user.overlay.foo", b"bar")
        .xattr(b"etc/hosts", b"trusted.test", b"a trusted xattr")
        .file(b"etc/conf.d/a.conf", b"a from L2\n", 0o644)
        .file(b"etc/conf.d/b.conf", b"b from L2\n", 0o644)
        .file(b"etc/conf.d/z.conf", b"z from L2\n", 0o644)
        .xattr(b"etc", b"user.layer", b"2")
        .file(b"shadowed", b"bottom\n", 0o644)
        .dir(b"dir_then_file", 0o755)
        .file(b"dir_then_file/inner", b"hidden by a file\n", 0o644)
        .file(b"file_then_dir", b"hidden by a dir\n", 0o644)
        .file(b"gone_file", b"whited out in L1\n", 0o644)
        .file(b"gone_dir/inner", b"whited out with its dir\n", 0o644)
        .file(b"gone_dir/sub/deeper", b"also\n", 0o644)
        .file(b"opq/old1", b"hidden by opaque L1\n", 0o644)
        .file(b"opq/old2", b"hidden by opaque L1\n", 0o644)
        .file(b"recreated", b"old in L2\n", 0o644)
        .file(b"wdir/a", b"a\n", 0o644)
        .file(b"wdir/b", b"b\n", 0o644)
        .file(b"nested/a/b/c/deep", b"deep in L2\n", 0o644)
        .xattr(b"nested/a/b", b"user.from", b"L2")
        .file(b"links/hl_a", b"three links\n", 0o644)
        .hardlink(b"links/hl_a", b"links/hl_b")
        .hardlink(b"links/hl_a", b"links/hl_c")
        .file(b"empty", b"", 0o644)
        .sparse(b"sparse", SPARSE_HOLE, b"data after a 1 MiB hole\n")
        .socket(b"special/socket")
        .chardev(b"special/null", 1, 3);
    l2.file(b"modes/m4755", b"setuid\n", 0o4755)
        .owner(b"modes/m4755", uid, gid)
        .file(b"modes/m0755", b"#!/bin/sh\n", 0o755)
        .owner(b"modes/m0755", uid, gid)
        .file(b"names/with space", b"space\n", 0o644);

    // ---- L1, the middle layer.
    l1.file(b"etc/conf.d/b.conf", b"b from L1\n", 0o640)
        .file(b"etc/conf.d/c.conf", b"c from L1\n", 0o644)
        .whiteout(b"etc/conf.d/z.conf")
        .file(b"etc/motd", b"motd from L1\n", 0o644)
        .hardlink(b"etc/motd", b"links/motd_link")
        .xattr(b"etc", b"user.layer", b"1")
        .file(b"dir_then_file", b"a file in L1 over a dir in L2\n", 0o600)
        .whiteout(b"gone_file")
        .whiteout(b"gone_dir")
        .whiteout(b"recreated")
        .whiteout(b"wdir")
        .opaque(b"opq")
        .file(b"opq/new1", b"new1 in L1\n", 0o644)
        .xattr(b"opq", b"user.opq", b"L1")
        .file(b"opq_top/hidden_below", b"hidden by opaque L0\n", 0o644)
        .file(b"nested/a/b/mid", b"mid in L1\n", 0o644)
        .file(b"links/pair1", b"two links\n", 0o644)
        .hardlink(b"links/pair1", b"links/pair2")
        .whiteout(b"links/hl_c")
        .symlink(b"symlinks/rel", b"../etc/hosts")
        .symlink(b"symlinks/abs", b"/etc/passwd")
        .symlink(b"symlinks/up", b"..")
        .symlink(b"symlinks/dangling", b"no/such/target")
        .xattr(b"symlinks/rel", b"trusted.link", b"on a symlink")
        .file(b"modes/m0600", b"secret\n", 0o600)
        .owner(b"modes/m0600", uid, gid)
        .owner(b"modes", uid, gid)
        .file(b"names/new\nline", b"newline\n", 0o644)
        .file(b"names/caf\xe9", b"latin-1\n", 0o644);
    // A name at the length limit.
    let long = vec![b'L'; 255];
    l1.file(&join_rel(b"names", &long), b"255 bytes\n", 0o644);

    // ---- L0, the top layer.
    l0.xattr(b"", b"user.root", b"top root")
        .file(b"etc/conf.d/d.conf", b"d from L0\n", 0o644)
        .xattr(b"etc", b"user.layer", b"0")
        .dir(b"etc/conf.d", 0o750)
        .file(b"shadowed", b"top\n", 0o644)
        .xattr(b"shadowed", b"user.comment", b"top copy")
        .file(b"file_then_dir/child", b"child in L0\n", 0o644)
        .file(b"recreated", b"new in L0\n", 0o644)
        .file(b"wdir/c", b"c in L0\n", 0o644)
        .file(b"opq/top", b"top in L0\n", 0o644)
        .opaque(b"opq_top")
        .xattr(b"opq_top", b"user.note", b"opaque in L0")
        .file(b"opq_top/kept", b"kept in L0\n", 0o644)
        .file(b"nested/a/top", b"top in L0\n", 0o644)
        .whiteout(b"ghost")
        .fifo(b"special/fifo", 0o640)
        .file(b"names/tab\there", b"tab\n", 0o644)
        .file(b"names/.whfoo", b"not a whiteout\n", 0o644)
        .file(b"names/a.wh.b", b"not a whiteout either\n", 0o644);

    // ---- The big directory, spread over the three layers.
    let layers = [&l0, &l1, &l2];
    if !with_big {
        return vec![l0.root, l1.root, l2.root];
    }
    for l in layers {
        l.dir(BIG_DIR.as_bytes(), 0o755);
    }
    for i in 0..BIG_N {
        let name = join_rel(BIG_DIR.as_bytes(), &big_name(i));
        let owner = i % 3;
        layers[owner].file(&name, format!("{i} in L{owner}\n").as_bytes(), 0o644);
        // Some names are shadowed copies one layer further down.
        if i.is_multiple_of(7) && owner < 2 {
            layers[owner + 1].file(&name, b"shadowed duplicate\n", 0o644);
        }
        // Some names of the lower layers are whited out one layer up.
        if big_whited_out(i) {
            layers[owner - 1].whiteout(&name);
        }
    }
    vec![l0.root, l1.root, l2.root]
}

/// Borrows a list of paths as `&Path`s for the mount helpers.
pub fn as_paths(v: &[PathBuf]) -> Vec<&Path> {
    v.iter().map(PathBuf::as_path).collect()
}

/// A lower layer, an upper and a work dir, and a mount point, in one scratch dir.
pub struct Stack {
    _dir: TempDir,
    pub root: PathBuf,
    pub lower: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub mnt: PathBuf,
}

/// A fresh [`Stack`].
pub fn stack() -> Stack {
    let dir = scratch();
    let root = dir.path().to_path_buf();
    Stack {
        lower: mkdir(&root, "lower"),
        upper: mkdir(&root, "upper"),
        work: mkdir(&root, "work"),
        mnt: mkdir(&root, "mnt"),
        root,
        _dir: dir,
    }
}

impl Stack {
    /// ufsd over the lower layer with the upper, with extra `ufsd mount` arguments.
    pub fn mount(&self, extra: &[&str]) -> Mounted {
        mount_ufsd(
            &[&self.lower],
            Some((&self.upper, &self.work)),
            &self.mnt,
            extra,
        )
    }

    /// `rel` inside the mount point.
    pub fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }
}
