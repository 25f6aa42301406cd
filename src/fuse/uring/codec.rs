//! Requests and replies in the layout of the kernel's `fuse_kernel.h`, as FUSE over io_uring
//! carries them: the request header in a 128-byte area, the opcode's fixed-size argument
//! struct in a second 128-byte area, and names and data in a separate payload buffer; the
//! reply is the out header in the first area and its arguments in the payload buffer.
//!
//! [`serve`] decodes one request, calls the adapter, and encodes its answer.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use crate::fs::{Attr, Caller, DirItem, NewObject, SetAttr};
use crate::fuse::{EntryOut, FuseAdapter, OpenOut, XattrOut};
use crate::sys::{Errno, SetTime, SysResult};

// Opcodes (`enum fuse_opcode`).
const LOOKUP: u32 = 1;
const GETATTR: u32 = 3;
const SETATTR: u32 = 4;
const READLINK: u32 = 5;
const SYMLINK: u32 = 6;
const MKNOD: u32 = 8;
const MKDIR: u32 = 9;
const UNLINK: u32 = 10;
const RMDIR: u32 = 11;
const RENAME: u32 = 12;
const LINK: u32 = 13;
const OPEN: u32 = 14;
const READ: u32 = 15;
const WRITE: u32 = 16;
const STATFS: u32 = 17;
const RELEASE: u32 = 18;
const FSYNC: u32 = 20;
const SETXATTR: u32 = 21;
const GETXATTR: u32 = 22;
const LISTXATTR: u32 = 23;
const REMOVEXATTR: u32 = 24;
const FLUSH: u32 = 25;
const OPENDIR: u32 = 27;
const READDIR: u32 = 28;
const RELEASEDIR: u32 = 29;
const FSYNCDIR: u32 = 30;
const ACCESS: u32 = 34;
const CREATE: u32 = 35;
const DESTROY: u32 = 38;
const FALLOCATE: u32 = 43;
const READDIRPLUS: u32 = 44;
const RENAME2: u32 = 45;
const LSEEK: u32 = 46;
const COPY_FILE_RANGE: u32 = 47;

// `fuse_setattr_in.valid` bits.
const FATTR_MODE: u32 = 1 << 0;
const FATTR_UID: u32 = 1 << 1;
const FATTR_GID: u32 = 1 << 2;
const FATTR_SIZE: u32 = 1 << 3;
const FATTR_ATIME: u32 = 1 << 4;
const FATTR_MTIME: u32 = 1 << 5;
const FATTR_FH: u32 = 1 << 6;
const FATTR_ATIME_NOW: u32 = 1 << 7;
const FATTR_MTIME_NOW: u32 = 1 << 8;

const GETATTR_FH: u32 = 1;
const FOPEN_PASSTHROUGH: u32 = 1 << 7;

/// Size of `struct fuse_out_header`.
pub const OUT_HEADER: usize = 16;
const ENTRY_OUT: usize = 128;
const ATTR_OUT: usize = 104;
const OPEN_OUT: usize = 16;
const DIRENT: usize = 24;

/// `struct fuse_in_header`, decoded.
#[derive(Debug, Clone, Copy)]
pub struct InHeader {
    pub opcode: u32,
    pub unique: u64,
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
}

impl InHeader {
    pub fn decode(b: &[u8]) -> InHeader {
        InHeader {
            opcode: u32_at(b, 4),
            unique: u64_at(b, 8),
            nodeid: u64_at(b, 16),
            uid: u32_at(b, 24),
            gid: u32_at(b, 28),
        }
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(b[off..off + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_ne_bytes(b[off..off + 8].try_into().unwrap())
}

/// A reply being written into the payload buffer.
pub struct Out<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Out<'a> {
    pub fn new(buf: &'a mut [u8]) -> Out<'a> {
        Out { buf, len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Appends `bytes`; false (and nothing appended) if they do not fit in `limit`.
    fn put(&mut self, bytes: &[u8], limit: usize) -> bool {
        let end = self.len + bytes.len();
        if end > limit.min(self.buf.len()) {
            return false;
        }
        self.buf[self.len..end].copy_from_slice(bytes);
        self.len = end;
        true
    }

    fn push(&mut self, bytes: &[u8]) -> SysResult<()> {
        if self.put(bytes, usize::MAX) {
            Ok(())
        } else {
            Err(Errno::ERANGE)
        }
    }
}

/// Little builder for the fixed-layout reply structs.
struct Bytes(Vec<u8>);

impl Bytes {
    fn with_capacity(n: usize) -> Bytes {
        Bytes(Vec::with_capacity(n))
    }
    fn u32(&mut self, v: u32) -> &mut Bytes {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Bytes {
        self.0.extend_from_slice(&v.to_ne_bytes());
        self
    }
}

/// `struct fuse_attr` (88 bytes).
fn attr(b: &mut Bytes, a: &Attr) {
    let st = &a.st;
    b.u64(a.ino)
        .u64(st.st_size as u64)
        .u64(st.st_blocks as u64)
        .u64(st.st_atime as u64)
        .u64(st.st_mtime as u64)
        .u64(st.st_ctime as u64)
        .u32(st.st_atime_nsec as u32)
        .u32(st.st_mtime_nsec as u32)
        .u32(st.st_ctime_nsec as u32)
        .u32(st.st_mode)
        .u32(st.st_nlink as u32)
        .u32(st.st_uid)
        .u32(st.st_gid)
        // The kernel's 32-bit device encoding, which glibc's matches for every device
        // number that fits.
        .u32(st.st_rdev as u32)
        .u32(st.st_blksize as u32)
        .u32(0);
}

/// `struct fuse_entry_out` (128 bytes).
fn entry_out(b: &mut Bytes, e: &EntryOut) {
    b.u64(e.attr.ino)
        .u64(0)
        .u64(e.entry_ttl.as_secs())
        .u64(e.attr_ttl.as_secs())
        .u32(e.entry_ttl.subsec_nanos())
        .u32(e.attr_ttl.subsec_nanos());
    attr(b, &e.attr);
}

/// `struct fuse_attr_out` (104 bytes).
fn attr_out(b: &mut Bytes, a: &Attr, ttl: Duration) {
    b.u64(ttl.as_secs()).u32(ttl.subsec_nanos()).u32(0);
    attr(b, a);
}

/// `struct fuse_open_out` (16 bytes).
fn open_out(b: &mut Bytes, o: &OpenOut) {
    let mut flags = o.flags.bits();
    if o.backing.is_some() {
        flags |= FOPEN_PASSTHROUGH;
    }
    b.u64(o.fh).u32(flags).u32(o.backing.unwrap_or(0));
}

/// `struct fuse_dirent` and its name, padded to 8 bytes.
fn dirent(b: &mut Bytes, ino: u64, off: u64, kind: u32, name: &[u8]) {
    b.u64(ino).u64(off).u32(name.len() as u32).u32(kind);
    b.0.extend_from_slice(name);
    let pad = (8 - (DIRENT + name.len()) % 8) % 8;
    b.0.extend(std::iter::repeat_n(0, pad));
}

/// The `d_type` of a listing entry.
fn dtype(item: &DirItem) -> u32 {
    u32::from(item.kind.dtype())
}

/// The NUL-terminated strings at the start of `b`.
fn names(b: &[u8]) -> impl Iterator<Item = &OsStr> {
    b.split(|&c| c == 0).map(OsStr::from_bytes)
}

fn first_name(b: &[u8]) -> SysResult<&OsStr> {
    names(b)
        .next()
        .filter(|n| !n.is_empty())
        .ok_or(Errno::EINVAL)
}

fn set_time(valid: u32, set: u32, now: u32, secs: u64, nsecs: u32) -> Option<SetTime> {
    if valid & now != 0 {
        Some(SetTime::Now)
    } else if valid & set != 0 {
        Some(SetTime::At(secs as i64, i64::from(nsecs)))
    } else {
        None
    }
}

/// What a served request sends back.
pub enum Served {
    /// A reply of `len` payload bytes (0 for an error or an empty reply), with `error`.
    Reply { error: i32, len: usize },
    /// The session ends: `DESTROY`, answered with an empty reply.
    Destroyed,
}

/// Serves one request: `op` is its argument struct, `payload` its names and data, and
/// the reply's arguments go into `out`.
pub fn serve(fs: &FuseAdapter, h: &InHeader, op: &[u8], payload: &[u8], out: &mut [u8]) -> Served {
    let mut o = Out::new(out);
    match dispatch(fs, h, op, payload, &mut o) {
        Ok(()) if h.opcode == DESTROY => Served::Destroyed,
        Ok(()) => Served::Reply {
            error: 0,
            len: o.len(),
        },
        Err(e) => Served::Reply {
            error: -(e as i32),
            len: 0,
        },
    }
}

fn dispatch(
    fs: &FuseAdapter,
    h: &InHeader,
    op: &[u8],
    payload: &[u8],
    o: &mut Out,
) -> SysResult<()> {
    let ino = h.nodeid;
    let caller = Caller {
        uid: h.uid,
        gid: h.gid,
    };
    let mut b = Bytes::with_capacity(160);
    match h.opcode {
        LOOKUP => entry_out(&mut b, &fs.lookup(ino, first_name(payload)?)?),
        GETATTR => {
            let fh = (u32_at(op, 0) & GETATTR_FH != 0).then(|| u64_at(op, 8));
            let (a, ttl) = fs.getattr(ino, fh)?;
            attr_out(&mut b, &a, ttl);
        }
        SETATTR => {
            let valid = u32_at(op, 0);
            let has = |bit: u32| valid & bit != 0;
            let set = SetAttr {
                mode: has(FATTR_MODE).then(|| u32_at(op, 68)),
                uid: has(FATTR_UID).then(|| u32_at(op, 76)),
                gid: has(FATTR_GID).then(|| u32_at(op, 80)),
                size: has(FATTR_SIZE).then(|| u64_at(op, 16)),
                atime: set_time(
                    valid,
                    FATTR_ATIME,
                    FATTR_ATIME_NOW,
                    u64_at(op, 32),
                    u32_at(op, 56),
                ),
                mtime: set_time(
                    valid,
                    FATTR_MTIME,
                    FATTR_MTIME_NOW,
                    u64_at(op, 40),
                    u32_at(op, 60),
                ),
                fh: has(FATTR_FH).then(|| u64_at(op, 8)),
            };
            let (a, ttl) = fs.setattr(ino, set)?;
            attr_out(&mut b, &a, ttl);
        }
        READLINK => return o.push(&fs.readlink(ino)?),
        SYMLINK => {
            let mut n = names(payload);
            let name = n.next().ok_or(Errno::EINVAL)?;
            let target = n.next().ok_or(Errno::EINVAL)?;
            let obj = NewObject::Symlink { target };
            entry_out(&mut b, &fs.make(ino, name, obj, 0, caller)?);
        }
        MKNOD => {
            let obj = NewObject::Node {
                mode: u32_at(op, 0),
                rdev: u64::from(u32_at(op, 4)),
            };
            let umask = u32_at(op, 8);
            entry_out(
                &mut b,
                &fs.make(ino, first_name(payload)?, obj, umask, caller)?,
            );
        }
        MKDIR => {
            let obj = NewObject::Dir {
                mode: u32_at(op, 0),
            };
            let umask = u32_at(op, 4);
            entry_out(
                &mut b,
                &fs.make(ino, first_name(payload)?, obj, umask, caller)?,
            );
        }
        UNLINK | RMDIR => return fs.remove(ino, first_name(payload)?, h.opcode == RMDIR),
        RENAME | RENAME2 => {
            let newdir = u64_at(op, 0);
            let flags = if h.opcode == RENAME2 {
                u32_at(op, 8)
            } else {
                0
            };
            let mut n = names(payload);
            let old = n.next().ok_or(Errno::EINVAL)?;
            let new = n.next().ok_or(Errno::EINVAL)?;
            return fs.rename(ino, old, newdir, new, flags);
        }
        LINK => entry_out(&mut b, &fs.link(u64_at(op, 0), ino, first_name(payload)?)?),
        OPEN => open_out(&mut b, &fs.open(ino, u32_at(op, 0) as i32, h.uid)?),
        READ => return o.push(&fs.read(u64_at(op, 0), u64_at(op, 8), u32_at(op, 16))?),
        WRITE => {
            let size = (u32_at(op, 16) as usize).min(payload.len());
            let n = fs.write(u64_at(op, 0), u64_at(op, 8), &payload[..size])?;
            b.u32(n).u32(0);
        }
        STATFS => {
            let s = fs.statfs(ino)?;
            b.u64(s.f_blocks)
                .u64(s.f_bfree)
                .u64(s.f_bavail)
                .u64(s.f_files)
                .u64(s.f_ffree)
                .u32(s.f_bsize as u32)
                .u32(s.f_namemax as u32)
                .u32(s.f_frsize as u32)
                .u32(0);
            b.0.extend_from_slice(&[0; 24]);
        }
        RELEASE => fs.release(ino, u64_at(op, 0)),
        // Not sent for handles opened with NO_FLUSH; nothing to do if it comes anyway.
        FLUSH | RELEASEDIR | DESTROY => {}
        FSYNC => return fs.fsync(u64_at(op, 0), u32_at(op, 8) & 1 != 0),
        FSYNCDIR => return fs.fsyncdir(ino, u32_at(op, 8) & 1 != 0),
        SETXATTR => {
            let (size, flags) = (u32_at(op, 0) as usize, u32_at(op, 4) as i32);
            let name = first_name(payload)?;
            let value = payload
                .get(name.len() + 1..name.len() + 1 + size)
                .ok_or(Errno::EINVAL)?;
            return fs.setxattr(ino, name, value, flags);
        }
        GETXATTR | LISTXATTR => {
            let size = u32_at(op, 0);
            let r = if h.opcode == GETXATTR {
                fs.getxattr(ino, first_name(payload)?, size)?
            } else {
                fs.listxattr(ino, size, h.uid)?
            };
            match r {
                XattrOut::Size(n) => {
                    b.u32(n).u32(0);
                }
                XattrOut::Data(d) => return o.push(&d),
            }
        }
        REMOVEXATTR => return fs.removexattr(ino, first_name(payload)?),
        // As over /dev/fuse (see `DevFuse::opendir`): no OPENDIR or RELEASEDIR from now on.
        OPENDIR => return Err(Errno::ENOSYS),
        READDIR => {
            let size = u32_at(op, 16) as usize;
            return fs.readdir(ino, u64_at(op, 8), |item| {
                let mut e = Bytes::with_capacity(DIRENT + item.name.len() + 8);
                dirent(
                    &mut e,
                    item.ino,
                    item.off,
                    dtype(item),
                    item.name.as_bytes(),
                );
                !o.put(&e.0, size)
            });
        }
        READDIRPLUS => {
            let size = u32_at(op, 16) as usize;
            return fs.readdirplus(ino, u64_at(op, 8), |item, entry| {
                let mut e = Bytes::with_capacity(ENTRY_OUT + DIRENT + item.name.len() + 8);
                entry_out(&mut e, entry);
                dirent(
                    &mut e,
                    entry.attr.ino,
                    item.off,
                    dtype(item),
                    item.name.as_bytes(),
                );
                !o.put(&e.0, size)
            });
        }
        ACCESS => return fs.access(ino, u32_at(op, 0) as i32),
        CREATE => {
            let (flags, mode, umask) = (u32_at(op, 0) as i32, u32_at(op, 4), u32_at(op, 8));
            let (e, opened) = fs.create(ino, first_name(payload)?, mode, umask, flags, caller)?;
            entry_out(&mut b, &e);
            open_out(&mut b, &opened);
        }
        FALLOCATE => {
            return fs.fallocate(
                u64_at(op, 0),
                u64_at(op, 8),
                u64_at(op, 16),
                u32_at(op, 24) as i32,
            );
        }
        LSEEK => {
            let off = fs.lseek(u64_at(op, 0), u64_at(op, 8) as i64, u32_at(op, 16) as i32)?;
            b.u64(off as u64);
        }
        COPY_FILE_RANGE => {
            let n = fs.copy_file_range(
                u64_at(op, 0),
                u64_at(op, 8),
                u64_at(op, 24),
                u64_at(op, 32),
                u64_at(op, 40),
            )?;
            b.u32(n).u32(0);
        }
        _ => return Err(Errno::ENOSYS),
    }
    debug_assert!(matches!(
        b.0.len(),
        0 | 8 | ENTRY_OUT | ATTR_OUT | OPEN_OUT | 80 | 144
    ));
    o.push(&b.0)
}

/// Writes `struct fuse_out_header` for a reply of `len` payload bytes.
pub fn out_header(b: &mut [u8], unique: u64, error: i32, len: usize) {
    b[0..4].copy_from_slice(&((OUT_HEADER + len) as u32).to_ne_bytes());
    b[4..8].copy_from_slice(&error.to_ne_bytes());
    b[8..16].copy_from_slice(&unique.to_ne_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys;

    fn attr_of(ino: u64, mode: u32) -> Attr {
        let mut st = sys::zeroed_stat();
        st.st_mode = mode;
        st.st_size = 4242;
        st.st_nlink = 3;
        Attr {
            ino,
            st,
            volatile: false,
        }
    }

    #[test]
    fn entry_out_has_the_kernel_layout() {
        let e = EntryOut {
            attr: attr_of(77, libc::S_IFREG | 0o640),
            entry_ttl: Duration::new(5, 6),
            attr_ttl: Duration::new(7, 8),
        };
        let mut b = Bytes::with_capacity(ENTRY_OUT);
        entry_out(&mut b, &e);
        let b = b.0;
        assert_eq!(b.len(), ENTRY_OUT);
        assert_eq!(u64_at(&b, 0), 77, "nodeid");
        assert_eq!(
            (u64_at(&b, 16), u64_at(&b, 24)),
            (5, 7),
            "entry and attr valid"
        );
        assert_eq!(
            (u32_at(&b, 32), u32_at(&b, 36)),
            (6, 8),
            "their nanoseconds"
        );
        // struct fuse_attr starts at 40: ino, size, ..., mode at 60, nlink at 64.
        assert_eq!(u64_at(&b, 40), 77);
        assert_eq!(u64_at(&b, 48), 4242);
        assert_eq!(u32_at(&b, 40 + 60), libc::S_IFREG | 0o640);
        assert_eq!(u32_at(&b, 40 + 64), 3);
    }

    #[test]
    fn attr_out_and_open_out_have_the_kernel_layout() {
        let mut b = Bytes::with_capacity(ATTR_OUT);
        attr_out(
            &mut b,
            &attr_of(9, libc::S_IFDIR | 0o755),
            Duration::new(1, 2),
        );
        assert_eq!(b.0.len(), ATTR_OUT);
        assert_eq!((u64_at(&b.0, 0), u32_at(&b.0, 8)), (1, 2));
        assert_eq!(u64_at(&b.0, 16), 9, "fuse_attr follows at 16");

        let mut b = Bytes::with_capacity(OPEN_OUT);
        let o = OpenOut {
            fh: 12,
            flags: fuser::FopenFlags::FOPEN_NOFLUSH,
            backing: Some(3),
        };
        open_out(&mut b, &o);
        assert_eq!(b.0.len(), OPEN_OUT);
        assert_eq!(u64_at(&b.0, 0), 12);
        let flags = u32_at(&b.0, 8);
        assert_ne!(
            flags & FOPEN_PASSTHROUGH,
            0,
            "a backing id asks for passthrough"
        );
        assert_ne!(flags & fuser::FopenFlags::FOPEN_NOFLUSH.bits(), 0);
        assert_eq!(u32_at(&b.0, 12), 3, "backing id");
    }

    #[test]
    fn dirents_are_padded_to_eight_bytes() {
        for (name, len) in [(&b"abc"[..], 32), (b"abcdefgh", 32), (b"abcdefghi", 40)] {
            let mut b = Bytes::with_capacity(64);
            dirent(&mut b, 5, 6, u32::from(libc::DT_REG), name);
            assert_eq!(b.0.len(), len, "{name:?}");
            assert_eq!(u64_at(&b.0, 0), 5);
            assert_eq!(u64_at(&b.0, 8), 6);
            assert_eq!(u32_at(&b.0, 16) as usize, name.len());
            assert_eq!(u32_at(&b.0, 20), u32::from(libc::DT_REG));
            assert_eq!(&b.0[DIRENT..DIRENT + name.len()], name);
        }
    }

    #[test]
    fn names_are_read_up_to_their_nul() {
        let two = b"old\0new\0";
        let got: Vec<_> = names(two).take(2).collect();
        assert_eq!(got, [OsStr::new("old"), OsStr::new("new")]);
        assert_eq!(first_name(b"x\0").unwrap(), OsStr::new("x"));
        assert_eq!(first_name(b"").unwrap_err(), Errno::EINVAL);
        assert_eq!(first_name(b"\0").unwrap_err(), Errno::EINVAL);
    }

    #[test]
    fn a_reply_that_does_not_fit_is_refused_whole() {
        let mut buf = [0u8; 10];
        let mut o = Out::new(&mut buf);
        assert!(o.put(b"12345678", 10));
        assert!(!o.put(b"abc", 10), "past the limit");
        assert_eq!(o.len(), 8, "nothing of the refused bytes was kept");
        assert!(o.push(b"abc").is_err(), "past the buffer");
    }

    #[test]
    fn the_out_header_counts_itself() {
        let mut h = [0u8; 16];
        out_header(&mut h, 99, -2, 104);
        assert_eq!(u32_at(&h, 0), 120);
        assert_eq!(u32_at(&h, 4) as i32, -2);
        assert_eq!(u64_at(&h, 8), 99);
    }
}
