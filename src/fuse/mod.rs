//! The FUSE adapter: the only module that knows fuser. Each method converts the request,
//! calls the core ([`crate::fs::UnionFs`]) and replies. The only state kept here is what
//! belongs to the FUSE session itself: passthrough backing ids.

use std::ffi::OsStr;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use fuser::{
    AccessFlags, BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
};
use log::{debug, info, warn};

use crate::fs::{Attr, UnionFs};
use crate::layer::FileKind;
use crate::sys;

/// How the kernel may cache what the daemon tells it.
#[derive(Clone, Copy, Debug)]
pub struct CachePolicy {
    /// Entry and attribute timeout. Lower layers are immutable and the upper changes only
    /// through this daemon, so this can be long.
    pub ttl: Duration,
}

/// A FUSE filesystem serving a [`UnionFs`].
pub struct FuseAdapter {
    fs: UnionFs,
    cache: CachePolicy,
    /// Whether passthrough was asked for (root only) and granted by the kernel.
    want_passthrough: bool,
    passthrough: AtomicBool,
    /// One backing id per inode while it has open handles: the kernel allows a single
    /// backing file per inode at a time.
    backing: DashMap<u64, (BackingId, u32)>,
}

impl FuseAdapter {
    pub fn new(fs: UnionFs, cache: CachePolicy, want_passthrough: bool) -> FuseAdapter {
        FuseAdapter {
            fs,
            cache,
            want_passthrough,
            passthrough: AtomicBool::new(false),
            backing: DashMap::new(),
        }
    }

    fn attr(&self, a: &Attr) -> FileAttr {
        to_file_attr(a)
    }

    /// Registers `file` as the backing file of `ino` (or reuses the id it has) and replies.
    fn reply_passthrough(&self, ino: u64, fh: u64, file: &std::fs::File, reply: ReplyOpen) {
        let mut entry = match self.backing.entry(ino) {
            dashmap::mapref::entry::Entry::Occupied(o) => o.into_ref(),
            dashmap::mapref::entry::Entry::Vacant(v) => match reply.open_backing(file) {
                Ok(id) => v.insert((id, 0)),
                Err(e) => {
                    warn!("passthrough refused for inode {ino} ({e}); reading through the daemon");
                    reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
                    return;
                }
            },
        };
        entry.1 += 1;
        reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &entry.0);
    }

    fn drop_backing(&self, ino: u64) {
        if let dashmap::mapref::entry::Entry::Occupied(mut o) = self.backing.entry(ino) {
            o.get_mut().1 = o.get().1.saturating_sub(1);
            if o.get().1 == 0 {
                o.remove();
            }
        }
    }
}

fn errno(e: sys::Errno) -> Errno {
    Errno::from_i32(e as i32)
}

fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsecs as u32)
    } else {
        UNIX_EPOCH - Duration::new(secs.unsigned_abs(), 0) + Duration::new(0, nsecs as u32)
    }
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::Regular => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::BlockDevice => FileType::BlockDevice,
    }
}

/// Converts a core [`Attr`] into fuser's attribute struct.
pub fn to_file_attr(a: &Attr) -> FileAttr {
    let st = &a.st;
    let kind = FileKind::from_mode(st.st_mode).unwrap_or(FileKind::Regular);
    FileAttr {
        ino: INodeNo(a.ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: system_time(st.st_atime, st.st_atime_nsec),
        mtime: system_time(st.st_mtime, st.st_mtime_nsec),
        ctime: system_time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind: file_type(kind),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        // The FUSE protocol carries the kernel's 32-bit device encoding, which glibc's
        // encoding matches for every device number that fits.
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

/// Sends an xattr value or name list with the size protocol of getxattr/listxattr.
fn reply_xattr(data: &[u8], size: u32, reply: ReplyXattr) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if data.len() > size as usize {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let caps = config.capabilities();
        let wanted = [
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_ASYNC_DIO,
        ];
        for flag in wanted {
            if caps.contains(flag) {
                let _ = config.add_capabilities(flag);
            }
        }
        let _ = config.set_max_readahead(1 << 20);
        if self.want_passthrough && caps.contains(InitFlags::FUSE_PASSTHROUGH) {
            // Backing files may sit on one stacking filesystem (an overlay) themselves.
            if config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(2).is_ok()
            {
                self.passthrough.store(true, Ordering::Relaxed);
            }
        }
        if self.passthrough.load(Ordering::Relaxed) {
            info!("file reads and writes use FUSE passthrough");
        } else if self.want_passthrough {
            info!("the kernel offers no FUSE passthrough; file data goes through the daemon");
        } else {
            info!("FUSE passthrough needs root; file data goes through the daemon");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.fs.lookup(parent.0, name) {
            Ok(a) => reply.entry(&self.cache.ttl, &self.attr(&a), Generation(0)),
            Err(sys::Errno::ENOENT) => {
                // A negative entry: the kernel remembers the name is absent for the TTL.
                let neg = to_file_attr(&Attr {
                    ino: 0,
                    st: sys::zeroed_stat(),
                });
                reply.entry_with_ttls(&Duration::ZERO, &self.cache.ttl, &neg, Generation(0));
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(a) => reply.attr(&self.cache.ttl, &self.attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.open(ino.0, flags.0) {
            Ok(opened) => {
                let pt = self.passthrough.load(Ordering::Relaxed);
                debug!("open ino={} fh={} passthrough={pt}", ino.0, opened.fh);
                if pt {
                    self.reply_passthrough(ino.0, opened.fh, &opened.file, reply);
                } else {
                    reply.opened(FileHandle(opened.fh), FopenFlags::FOPEN_KEEP_CACHE);
                }
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        debug!("read through the daemon: fh={} offset={offset} size={size}", fh.0);
        match self.fs.read(fh.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        self.drop_backing(ino.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let items = match self.fs.readdir(fh.0, offset) {
            Ok(items) => items,
            Err(e) => return reply.error(errno(e)),
        };
        for (i, item) in items.iter().enumerate().skip(offset as usize) {
            let kind = file_type(item.kind);
            if reply.add(INodeNo(item.ino), i as u64 + 1, kind, &item.name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.releasedir(fh.0);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs(ino.0) {
            Ok(s) => reply.statfs(
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_bsize as u32,
                s.f_namemax as u32,
                s.f_frsize as u32,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.fs.getxattr(ino.0, name) {
            Ok(v) => reply_xattr(&v, size, reply),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.fs.listxattr(ino.0) {
            Ok(v) => reply_xattr(&v, size, reply),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.fs.access(ino.0, mask.bits()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn destroy(&mut self) {
        debug!(
            "filesystem destroyed; {} nodes were live",
            self.fs.live_nodes()
        );
    }
}
