//! The operations the oracle applies to both mounts, and their comparable outcomes.
//!
//! An operation carries only relative paths and small parameters (file data is a seed and a
//! length), so it prints in one line and replays exactly. An outcome is the value the
//! caller would see, reduced to what both implementations must agree on: times are exact
//! when they are older than the run (a preserved or explicitly set time) and only "recent"
//! otherwise; directory sizes and link counts are left out (they depend on the upper
//! filesystem's history, and overlayfs reports 1 for merged directories).

use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::fixture::pattern;
use super::sys::{self, SysResult};

/// A path relative to the mount root, as bytes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rel(pub Vec<u8>);

impl Rel {
    pub fn under(&self, root: &Path) -> PathBuf {
        if self.0.is_empty() {
            root.to_path_buf()
        } else {
            root.join(std::ffi::OsStr::from_bytes(&self.0))
        }
    }
    pub fn depth(&self) -> usize {
        if self.0.is_empty() {
            0
        } else {
            self.0.iter().filter(|b| **b == b'/').count() + 1
        }
    }
    pub fn parent(&self) -> Rel {
        match self.0.iter().rposition(|b| *b == b'/') {
            Some(i) => Rel(self.0[..i].to_vec()),
            None => Rel(Vec::new()),
        }
    }
    pub fn name(&self) -> &[u8] {
        match self.0.iter().rposition(|b| *b == b'/') {
            Some(i) => &self.0[i + 1..],
            None => &self.0,
        }
    }
    pub fn join(&self, name: &[u8]) -> Rel {
        let mut v = self.0.clone();
        if !v.is_empty() {
            v.push(b'/');
        }
        v.extend_from_slice(name);
        Rel(v)
    }
}

impl fmt::Debug for Rel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

/// File data: deterministic bytes from a seed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Data {
    pub seed: u64,
    pub len: usize,
}

impl Data {
    pub fn bytes(&self) -> Vec<u8> {
        pattern(self.seed, self.len)
    }
}

impl fmt::Debug for Data {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}B#{}", self.len, self.seed)
    }
}

/// Permission bits, printed in octal.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl fmt::Debug for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0o{:o}", self.0)
    }
}

/// A symlink target, printed as text.
#[derive(Clone, PartialEq, Eq)]
pub struct Target(pub Vec<u8>);

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

/// A time argument of `utimensat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeArg {
    At(i64, i64),
    Now,
    Omit,
}

impl TimeArg {
    fn timespec(self) -> libc::timespec {
        match self {
            TimeArg::At(s, ns) => sys::timespec(s, ns),
            TimeArg::Now => sys::timespec(0, libc::UTIME_NOW),
            TimeArg::Omit => sys::timespec(0, libc::UTIME_OMIT),
        }
    }
}

/// `renameat2` flags, printed by name.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RenameFlags(pub u32);

impl fmt::Debug for RenameFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => write!(f, "0"),
            libc::RENAME_NOREPLACE => write!(f, "NOREPLACE"),
            libc::RENAME_EXCHANGE => write!(f, "EXCHANGE"),
            x => write!(f, "{x:#x}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `open(O_CREAT|O_EXCL|O_WRONLY, mode)` and write `data`.
    Create {
        path: Rel,
        mode: Mode,
        data: Data,
    },
    /// `open(O_WRONLY [|O_CREAT])` and `pwrite` at `off`.
    Pwrite {
        path: Rel,
        off: u64,
        data: Data,
        creat: bool,
    },
    /// `open(O_WRONLY|O_APPEND)` and write.
    Append {
        path: Rel,
        data: Data,
    },
    /// `open(O_WRONLY|O_TRUNC)` and write (maybe nothing).
    OpenTrunc {
        path: Rel,
        data: Data,
    },
    /// `truncate(2)` (follows symlinks).
    Truncate {
        path: Rel,
        size: u64,
    },
    /// `open(O_WRONLY)` and `ftruncate(2)`.
    Ftruncate {
        path: Rel,
        size: u64,
    },
    Unlink {
        path: Rel,
    },
    Mkdir {
        path: Rel,
        mode: Mode,
    },
    Rmdir {
        path: Rel,
    },
    Rename {
        from: Rel,
        to: Rel,
        flags: RenameFlags,
    },
    Symlink {
        target: Target,
        path: Rel,
    },
    Link {
        from: Rel,
        to: Rel,
    },
    Mkfifo {
        path: Rel,
        mode: Mode,
    },
    /// `chmod(2)` (follows symlinks).
    Chmod {
        path: Rel,
        mode: Mode,
    },
    /// `fchownat`; `u32::MAX` leaves an id unchanged.
    Chown {
        path: Rel,
        uid: u32,
        gid: u32,
        follow: bool,
    },
    Utimens {
        path: Rel,
        atime: TimeArg,
        mtime: TimeArg,
        follow: bool,
    },
    Setxattr {
        path: Rel,
        name: &'static str,
        value: Data,
        flags: i32,
        follow: bool,
    },
    Removexattr {
        path: Rel,
        name: &'static str,
        follow: bool,
    },
    /// Read the whole file (follows symlinks).
    Read {
        path: Rel,
    },
    /// Read `len` bytes at `off` through a fresh descriptor.
    ReadAt {
        path: Rel,
        off: u64,
        len: usize,
    },
    Stat {
        path: Rel,
        follow: bool,
    },
    Readdir {
        path: Rel,
    },
    Readlink {
        path: Rel,
    },
    Getxattr {
        path: Rel,
        name: &'static str,
    },
    Listxattr {
        path: Rel,
    },
    /// Open `path` read-only (or read-write) and keep the descriptor in `slot`, closing
    /// what was there: later operations change the file under it.
    Hold {
        slot: usize,
        path: Rel,
        rw: bool,
    },
    /// `pread` through a held descriptor.
    ReadHeld {
        slot: usize,
        off: u64,
        len: usize,
    },
    /// `pwrite` through a held descriptor.
    WriteHeld {
        slot: usize,
        off: u64,
        data: Data,
    },
    /// `fstat` of a held descriptor.
    FstatHeld {
        slot: usize,
    },
    /// `ftruncate` through a held descriptor.
    FtruncateHeld {
        slot: usize,
        size: u64,
    },
    Close {
        slot: usize,
    },
    /// `op` with the filesystem uid and gid of an unprivileged user (and so without the
    /// capabilities that override permissions).
    As {
        uid: u32,
        gid: u32,
        op: Box<Op>,
    },
}

/// Descriptors held by [`Op::Hold`]; an empty slot answers EBADF.
pub const SLOTS: usize = 4;

#[derive(Default)]
pub struct Held {
    fds: [Option<std::os::fd::OwnedFd>; SLOTS],
}

impl Held {
    fn get(&self, slot: usize) -> SysResult<&std::os::fd::OwnedFd> {
        self.fds[slot].as_ref().ok_or(libc::EBADF)
    }

    /// Closes every held descriptor (before unmounting).
    pub fn clear(&mut self) {
        self.fds = Default::default();
    }

    /// The slots holding a directory.
    pub fn dir_slots(&self) -> Vec<usize> {
        (0..SLOTS)
            .filter(|&i| {
                self.fds[i].as_ref().is_some_and(|fd| {
                    nix::sys::stat::fstat(fd)
                        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
                })
            })
            .collect()
    }

    pub fn close(&mut self, slot: usize) {
        self.fds[slot] = None;
    }
}

impl Op {
    /// The operation itself, whoever runs it.
    pub fn inner(&self) -> &Op {
        match self {
            Op::As { op, .. } => op.inner(),
            op => op,
        }
    }

    /// The paths the operation names (a symlink's target is not one).
    pub fn paths(&self) -> Vec<&Rel> {
        match self {
            Op::As { op, .. } => op.paths(),
            Op::Rename { from, to, .. } | Op::Link { from, to } => vec![from, to],
            Op::Create { path, .. }
            | Op::Pwrite { path, .. }
            | Op::Append { path, .. }
            | Op::OpenTrunc { path, .. }
            | Op::Truncate { path, .. }
            | Op::Ftruncate { path, .. }
            | Op::Unlink { path }
            | Op::Mkdir { path, .. }
            | Op::Rmdir { path }
            | Op::Symlink { path, .. }
            | Op::Mkfifo { path, .. }
            | Op::Chmod { path, .. }
            | Op::Chown { path, .. }
            | Op::Utimens { path, .. }
            | Op::Setxattr { path, .. }
            | Op::Removexattr { path, .. }
            | Op::Read { path }
            | Op::ReadAt { path, .. }
            | Op::Stat { path, .. }
            | Op::Readdir { path }
            | Op::Readlink { path }
            | Op::Getxattr { path, .. }
            | Op::Listxattr { path }
            | Op::Hold { path, .. } => vec![path],
            Op::ReadHeld { .. }
            | Op::WriteHeld { .. }
            | Op::FstatHeld { .. }
            | Op::FtruncateHeld { .. }
            | Op::Close { .. } => Vec::new(),
        }
    }

    /// Whether the operation may change the tree: after a mismatch in one of these the two
    /// mounts have diverged and the run stops.
    pub fn mutates(&self) -> bool {
        if let Op::As { op, .. } = self {
            return op.mutates();
        }
        !matches!(
            self,
            Op::Read { .. }
                | Op::ReadAt { .. }
                | Op::Stat { .. }
                | Op::Readdir { .. }
                | Op::Readlink { .. }
                | Op::Getxattr { .. }
                | Op::Listxattr { .. }
                | Op::ReadHeld { .. }
                | Op::FstatHeld { .. }
        )
    }
}

/// A timestamp as compared: exact if older than the run, else only "recent".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Time {
    Fixed(i64, i64),
    Recent,
}

impl Time {
    pub fn classify(sec: i64, nsec: i64, cutoff: i64) -> Time {
        if sec < cutoff {
            Time::Fixed(sec, nsec)
        } else {
            Time::Recent
        }
    }
}

/// The comparable part of a `stat`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatView {
    pub kind: char,
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    /// Not for directories.
    pub size: Option<u64>,
    /// Regular files only.
    pub nlink: Option<u64>,
    pub mtime: Time,
}

pub fn kind_char(mode: u32) -> char {
    match mode & libc::S_IFMT {
        libc::S_IFREG => 'f',
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFIFO => 'p',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFSOCK => 's',
        _ => '?',
    }
}

pub fn stat_view(st: &libc::stat, cutoff: i64) -> StatView {
    let kind = kind_char(st.st_mode);
    StatView {
        kind,
        mode: format!("{:04o}", st.st_mode & 0o7777),
        uid: st.st_uid,
        gid: st.st_gid,
        size: (kind != 'd').then_some(st.st_size as u64),
        nlink: (kind == 'f').then_some(st.st_nlink),
        mtime: Time::classify(st.st_mtime, st.st_mtime_nsec, cutoff),
    }
}

/// What a successful operation returned.
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    Unit,
    /// Bytes written.
    Count(usize),
    Bytes(Vec<u8>),
    Stat(StatView),
    /// Directory entries: name and type.
    Entries(Vec<(Vec<u8>, char)>),
    Names(Vec<Vec<u8>>),
    /// Times after `utimensat`, for the fields that were not omitted.
    Times(Option<Time>, Option<Time>),
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Unit => write!(f, "()"),
            Value::Count(n) => write!(f, "{n} bytes"),
            Value::Bytes(b) => write!(f, "{} bytes, fnv {:016x}", b.len(), fnv(b)),
            Value::Stat(s) => write!(f, "{s:?}"),
            Value::Entries(e) => {
                let v: Vec<String> = e
                    .iter()
                    .map(|(n, k)| format!("{}:{k}", String::from_utf8_lossy(n)))
                    .collect();
                write!(f, "{v:?}")
            }
            Value::Names(n) => {
                let v: Vec<_> = n.iter().map(|n| String::from_utf8_lossy(n)).collect();
                write!(f, "{v:?}")
            }
            Value::Times(a, m) => write!(f, "atime {a:?} mtime {m:?}"),
        }
    }
}

/// FNV-1a, to print contents compactly.
pub fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// An operation's result on one mount.
#[derive(Clone, PartialEq, Eq)]
pub struct Outcome(pub SysResult<Value>);

impl fmt::Debug for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Ok(v) => write!(f, "Ok({v:?})"),
            Err(e) => write!(f, "Err({})", sys::errno_name(*e)),
        }
    }
}

/// Describes where two outcomes differ, beyond their one-line forms.
pub fn explain(a: &Outcome, b: &Outcome) -> Option<String> {
    if let (Ok(Value::Bytes(x)), Ok(Value::Bytes(y))) = (&a.0, &b.0) {
        let first = x.iter().zip(y.iter()).position(|(p, q)| p != q);
        return Some(match first {
            Some(i) => format!("contents first differ at byte {i}"),
            None => format!("one is a prefix of the other ({} vs {})", x.len(), y.len()),
        });
    }
    None
}

/// Opening for writing never blocks, even on a FIFO (which then fails with ENXIO).
const WR: i32 = libc::O_WRONLY | libc::O_NONBLOCK;

/// Applies `op` to the mount at `root`, whose held descriptors are `held`.
pub fn apply(op: &Op, root: &Path, cutoff: i64, held: &mut Held) -> Outcome {
    Outcome(apply_inner(op, root, cutoff, held))
}

fn apply_inner(op: &Op, root: &Path, cutoff: i64, held: &mut Held) -> SysResult<Value> {
    match op {
        Op::As { uid, gid, op } => {
            let _creds = sys::FsCreds::switch(*uid, *gid);
            apply_inner(op, root, cutoff, held)
        }
        Op::Hold { slot, path, rw } => {
            held.fds[*slot] = None;
            let flags = if *rw { libc::O_RDWR } else { libc::O_RDONLY };
            held.fds[*slot] = Some(sys::open(&path.under(root), flags | libc::O_NONBLOCK, 0)?);
            Ok(Value::Unit)
        }
        Op::ReadHeld { slot, off, len } => {
            sys::pread_all(held.get(*slot)?, *off, *len).map(Value::Bytes)
        }
        Op::WriteHeld { slot, off, data } => {
            sys::pwrite(held.get(*slot)?, &data.bytes(), *off).map(Value::Count)
        }
        Op::FstatHeld { slot } => {
            let st = sys::fstat(held.get(*slot)?)?;
            Ok(Value::Stat(stat_view(&st, cutoff)))
        }
        Op::FtruncateHeld { slot, size } => sys::ftruncate(held.get(*slot)?, *size).map(unit),
        Op::Close { slot } => {
            held.get(*slot)?;
            held.fds[*slot] = None;
            Ok(Value::Unit)
        }
        Op::Create { path, mode, data } => {
            let fd = sys::open(&path.under(root), WR | libc::O_CREAT | libc::O_EXCL, mode.0)?;
            write_data(&fd, data)
        }
        Op::Pwrite {
            path,
            off,
            data,
            creat,
        } => {
            let flags = if *creat { WR | libc::O_CREAT } else { WR };
            let fd = sys::open(&path.under(root), flags, 0o644)?;
            sys::pwrite(&fd, &data.bytes(), *off).map(Value::Count)
        }
        Op::Append { path, data } => {
            let fd = sys::open(&path.under(root), WR | libc::O_APPEND, 0)?;
            write_data(&fd, data)
        }
        Op::OpenTrunc { path, data } => {
            let fd = sys::open(&path.under(root), WR | libc::O_TRUNC, 0)?;
            write_data(&fd, data)
        }
        Op::Truncate { path, size } => sys::truncate(&path.under(root), *size).map(unit),
        Op::Ftruncate { path, size } => {
            let fd = sys::open(&path.under(root), WR, 0)?;
            sys::ftruncate(&fd, *size).map(unit)
        }
        Op::Unlink { path } => sys::unlink(&path.under(root)).map(unit),
        Op::Mkdir { path, mode } => sys::mkdir(&path.under(root), mode.0).map(unit),
        Op::Rmdir { path } => sys::rmdir(&path.under(root)).map(unit),
        Op::Rename { from, to, flags } => {
            sys::rename(&from.under(root), &to.under(root), flags.0).map(unit)
        }
        Op::Symlink { target, path } => sys::symlink(&target.0, &path.under(root)).map(unit),
        Op::Link { from, to } => sys::link(&from.under(root), &to.under(root)).map(unit),
        Op::Mkfifo { path, mode } => {
            sys::mknod(&path.under(root), libc::S_IFIFO | mode.0, 0).map(unit)
        }
        Op::Chmod { path, mode } => sys::chmod(&path.under(root), mode.0).map(unit),
        Op::Chown {
            path,
            uid,
            gid,
            follow,
        } => sys::chown(&path.under(root), *uid, *gid, *follow).map(unit),
        Op::Utimens {
            path,
            atime,
            mtime,
            follow,
        } => {
            let p = path.under(root);
            sys::utimens(&p, [atime.timespec(), mtime.timespec()], *follow)?;
            let st = sys::stat(&p, *follow)?;
            let shown = |arg: &TimeArg, sec: i64, nsec: i64| {
                (*arg != TimeArg::Omit).then(|| Time::classify(sec, nsec, cutoff))
            };
            Ok(Value::Times(
                shown(atime, st.st_atime, st.st_atime_nsec),
                shown(mtime, st.st_mtime, st.st_mtime_nsec),
            ))
        }
        Op::Setxattr {
            path,
            name,
            value,
            flags,
            follow,
        } => sys::setxattr(
            &path.under(root),
            name.as_bytes(),
            &value.bytes(),
            *flags,
            *follow,
        )
        .map(unit),
        Op::Removexattr { path, name, follow } => {
            sys::removexattr(&path.under(root), name.as_bytes(), *follow).map(unit)
        }
        Op::Read { path } => {
            let fd = sys::open(&path.under(root), libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
            sys::pread_all(&fd, 0, usize::MAX).map(Value::Bytes)
        }
        Op::ReadAt { path, off, len } => {
            let fd = sys::open(&path.under(root), libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
            sys::pread_all(&fd, *off, *len).map(Value::Bytes)
        }
        Op::Stat { path, follow } => {
            let st = sys::stat(&path.under(root), *follow)?;
            Ok(Value::Stat(stat_view(&st, cutoff)))
        }
        Op::Readdir { path } => {
            let p = path.under(root);
            let mut out = Vec::new();
            for name in sys::read_dir(&p)? {
                let st = sys::lstat(&p.join(std::ffi::OsStr::from_bytes(&name)))?;
                out.push((name, kind_char(st.st_mode)));
            }
            Ok(Value::Entries(out))
        }
        Op::Readlink { path } => sys::readlink(&path.under(root)).map(Value::Bytes),
        Op::Getxattr { path, name } => {
            sys::getxattr(&path.under(root), name.as_bytes(), false).map(Value::Bytes)
        }
        Op::Listxattr { path } => sys::listxattr(&path.under(root), false).map(Value::Names),
    }
}

fn unit(_: ()) -> Value {
    Value::Unit
}

fn write_data(fd: &std::os::fd::OwnedFd, data: &Data) -> SysResult<Value> {
    if data.len == 0 {
        return Ok(Value::Count(0));
    }
    sys::write(fd, &data.bytes()).map(Value::Count)
}
