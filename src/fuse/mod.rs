//! The FUSE adapter: the only module that knows fuser. Each method converts the request,
//! calls the core ([`crate::fs::UnionFs`]) and replies. The only state kept here is what
//! belongs to the FUSE session itself: passthrough backing ids.

use std::ffi::OsStr;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use fuser::{
    AccessFlags, BackingId, BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle,
    FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus,
    ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request,
    TimeOrNow, WriteFlags,
};
use log::{debug, info, warn};

pub mod idle_poll;
mod plus;
mod turns;
use idle_poll::RequestMeter;
use plus::PlusPolicy;
use turns::{Turn, Turns};

use crate::fs::gate::{WriteGate, WritePass};
use crate::fs::{Attr, Caller, FIRST_NON_DIR_OFFSET, NewObject, SetAttr, UnionFs};
use crate::layer::FileKind;
use crate::sys;

/// Every open file asks the kernel not to send `FLUSH` on close: writes reach the upper
/// file before their reply (through the daemon or by passthrough), so a flush has nothing
/// to do, and skipping it saves one round trip per `close` (untar closes 20k files).
const NO_FLUSH: FopenFlags = FopenFlags::FOPEN_NOFLUSH;

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
    backing: DashMap<u64, Backing>,
    /// Held by every request that changes the upper layer, so that writes can be paused.
    gate: Arc<WriteGate>,
    /// Whether listings carry attributes.
    plus: PlusPolicy,
    /// Counts requests for idle polling, where it is on.
    meter: Option<Arc<RequestMeter>>,
    /// Which thread reads the next request.
    turns: Turns,
}

/// A passthrough backing file registered with the kernel for one inode.
struct Backing {
    id: BackingId,
    opens: u32,
    /// Whether it is the upper (writable) instance.
    upper: bool,
}

impl FuseAdapter {
    pub fn new(fs: UnionFs, cache: CachePolicy, want_passthrough: bool) -> FuseAdapter {
        FuseAdapter {
            fs,
            cache,
            want_passthrough,
            passthrough: AtomicBool::new(false),
            backing: DashMap::new(),
            gate: Arc::new(WriteGate::new()),
            plus: PlusPolicy::default(),
            meter: None,
            turns: Turns::default(),
        }
    }

    /// Uses `gate` (shared with the mount's control socket) for pausing writes.
    pub fn with_gate(mut self, gate: Arc<WriteGate>) -> FuseAdapter {
        self.gate = gate;
        self
    }

    /// Counts every request a caller waits for with `meter`.
    pub fn with_meter(mut self, meter: Option<Arc<RequestMeter>>) -> FuseAdapter {
        self.meter = meter;
        self
    }

    /// Called first by every method whose caller waits for the reply (fuser has no hook
    /// before it dispatches a request), and kept until the method returns, after its
    /// reply: see [`turns`].
    fn begin_request(&self) -> Turn<'_> {
        if let Some(m) = &self.meter {
            m.request();
        }
        self.turns.begin()
    }

    /// [`begin_request`](Self::begin_request) for a request that may block for long (a
    /// copy-up, a sync, data through the daemon): another thread reads meanwhile.
    fn begin_long_request(&self) -> Turn<'_> {
        let turn = self.begin_request();
        self.turns.step_aside();
        turn
    }

    /// Lets one mutating request through the write gate; if it has to wait (a pause),
    /// another thread reads requests meanwhile.
    fn enter_gate(&self) -> WritePass<'_> {
        self.gate.enter_with(|| self.turns.step_aside())
    }

    /// The backing file of `ino` for one more open: the one it has, or `file` registered
    /// through `register`. `None` when the kernel refuses it (the open then goes through
    /// the daemon).
    fn acquire_backing(
        &self,
        ino: u64,
        upper: bool,
        register: impl FnOnce() -> io::Result<BackingId>,
    ) -> Option<dashmap::mapref::one::RefMut<'_, u64, Backing>> {
        let mut entry = match self.backing.entry(ino) {
            dashmap::mapref::entry::Entry::Occupied(o) => o.into_ref(),
            dashmap::mapref::entry::Entry::Vacant(v) => match register() {
                Ok(id) => v.insert(Backing {
                    id,
                    opens: 0,
                    upper,
                }),
                Err(e) => {
                    warn!(
                        "passthrough refused for inode {ino} ({e}); data goes through the daemon"
                    );
                    return None;
                }
            },
        };
        entry.opens += 1;
        Some(entry)
    }

    /// Whether a write open of `ino` would need a second backing file while a lower one is
    /// in use (see `UnionFs::split_for_write`).
    fn lower_backing_in_use(&self, ino: u64) -> bool {
        self.backing.get(&ino).is_some_and(|b| !b.upper)
    }

    fn passthrough(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    fn reply_entry(&self, r: sys::SysResult<Attr>, reply: ReplyEntry) {
        match r {
            Ok(a) => reply.entry(&self.ttl(&a), &to_file_attr(&a), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// How long the kernel may cache `a`.
    fn ttl(&self, a: &Attr) -> Duration {
        if a.volatile {
            Duration::ZERO
        } else {
            self.cache.ttl
        }
    }

    fn reply_empty(r: sys::SysResult<()>, reply: ReplyEmpty) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn drop_backing(&self, ino: u64) {
        if let dashmap::mapref::entry::Entry::Occupied(mut o) = self.backing.entry(ino) {
            o.get_mut().opens = o.get().opens.saturating_sub(1);
            if o.get().opens == 0 {
                o.remove();
            }
        }
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn set_time(t: TimeOrNow) -> sys::SetTime {
    match t {
        TimeOrNow::Now => sys::SetTime::Now,
        TimeOrNow::SpecificTime(st) => match st.duration_since(UNIX_EPOCH) {
            Ok(d) => sys::SetTime::At(d.as_secs() as i64, i64::from(d.subsec_nanos())),
            Err(e) => {
                let d = e.duration();
                let (mut s, mut ns) = (-(d.as_secs() as i64), -i64::from(d.subsec_nanos()));
                if ns < 0 {
                    s -= 1;
                    ns += 1_000_000_000;
                }
                sys::SetTime::At(s, ns)
            }
        },
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
            // O_TRUNC reaches open, so a copy-up for it can skip the data.
            InitFlags::FUSE_ATOMIC_O_TRUNC,
            // A listing followed by lookups (`ls -l`, `find -printf %s`, `du`) gets the
            // attributes with the names, one request per batch instead of one per name;
            // AUTO keeps plain readdir for walks that never look names up.
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            // The kernel checks permissions against POSIX ACLs as well as modes, as
            // overlayfs does with the layers' ACLs, and caches them.
            InitFlags::FUSE_POSIX_ACL,
            // The umask reaches the daemon unapplied: under a default ACL it does not apply.
            InitFlags::FUSE_DONT_MASK,
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
        let _turn = self.begin_request();
        match self.fs.lookup(parent.0, name) {
            Ok(a) => {
                if a.st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                    self.plus.file_looked_up(parent.0);
                }
                reply.entry(&self.ttl(&a), &to_file_attr(&a), Generation(0))
            }
            Err(sys::Errno::ENOENT) => {
                // A negative entry: the kernel remembers the name is absent for the TTL.
                let neg = to_file_attr(&Attr {
                    volatile: false,
                    ino: 0,
                    st: sys::zeroed_stat(),
                });
                reply.entry_with_ttls(&Duration::ZERO, &self.cache.ttl, &neg, Generation(0));
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _turn = self.turns.begin();
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let _turn = self.begin_request();
        match self.fs.getattr(ino.0, fh.map(|f| f.0)) {
            Ok(a) => reply.attr(&self.ttl(&a), &to_file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _turn = self.begin_request();
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _turn = self.begin_request();
        let writes = flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        if writes && !self.fs.is_copied_up(ino.0) {
            // A copy-up may take a while.
            self.turns.step_aside();
        }
        let _pass = writes.then(|| self.enter_gate());
        let needs_upper = writes || self.fs.is_copied_up(ino.0);
        if needs_upper && self.passthrough() && self.lower_backing_in_use(ino.0) {
            // The kernel allows one backing file per inode, and this one is the lower file,
            // held by earlier readers. Copy up and show the copy as a new inode; ESTALE makes
            // the kernel look the name up again and retry the open on the new inode, while
            // the earlier readers keep the lower file.
            debug!(
                "open of ino={} needs its upper copy while its lower file is open: split",
                ino.0
            );
            let r = self.fs.split_for_write(ino.0);
            return reply.error(errno(r.err().unwrap_or(sys::Errno::ESTALE)));
        }
        let opened = match self.fs.open(ino.0, flags.0) {
            Ok(o) => o,
            Err(e) => return reply.error(errno(e)),
        };
        if flags.0 & libc::O_TRUNC != 0
            && req.uid() != 0
            && let Err(e) = self.fs.drop_privileges_on_truncate(opened.fh)
        {
            self.fs.release(opened.fh);
            return reply.error(errno(e));
        }
        let fh = FileHandle(opened.fh);
        debug!(
            "open ino={} fh={} passthrough={}",
            ino.0,
            opened.fh,
            self.passthrough()
        );
        if self.passthrough()
            && let Some(b) =
                self.acquire_backing(ino.0, opened.upper, || reply.open_backing(&*opened.file))
        {
            return reply.opened_passthrough(fh, NO_FLUSH, &b.id);
        }
        reply.opened(
            fh,
            if opened.upper {
                NO_FLUSH
            } else {
                NO_FLUSH | FopenFlags::FOPEN_KEEP_CACHE
            },
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _turn = self.begin_request();
        let _pass = self.enter_gate();
        let caller = caller(req);
        let (attr, opened) = match self.fs.create(parent.0, name, mode, umask, flags, caller) {
            Ok(r) => r,
            Err(e) => return reply.error(errno(e)),
        };
        let fa = to_file_attr(&attr);
        let fh = FileHandle(opened.fh);
        if self.passthrough()
            && let Some(b) =
                self.acquire_backing(attr.ino, true, || reply.open_backing(&*opened.file))
        {
            return reply.created_passthrough(
                &self.cache.ttl,
                &fa,
                Generation(0),
                fh,
                NO_FLUSH,
                &b.id,
            );
        }
        reply.created(&self.cache.ttl, &fa, Generation(0), fh, NO_FLUSH);
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _turn = self.begin_request();
        let _pass = self.enter_gate();
        let obj = NewObject::Node {
            mode,
            rdev: u64::from(rdev),
        };
        self.reply_entry(
            self.fs
                .create_object(parent.0, name, obj, umask, caller(req)),
            reply,
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _turn = self.begin_request();
        let _pass = self.enter_gate();
        let obj = NewObject::Dir { mode };
        self.reply_entry(
            self.fs
                .create_object(parent.0, name, obj, umask, caller(req)),
            reply,
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let _turn = self.begin_request();
        let _pass = self.enter_gate();
        let obj = NewObject::Symlink {
            target: target.as_os_str(),
        };
        self.reply_entry(
            self.fs
                .create_object(parent.0, link_name, obj, 0, caller(req)),
            reply,
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _turn = self.begin_long_request();
        let _pass = self.enter_gate();
        let r = self.fs.link(ino.0, newparent.0, newname);
        debug!(
            "link ino={} as {newname:?}: {:?}",
            ino.0,
            r.as_ref().map(|a| a.ino)
        );
        self.reply_entry(r, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _turn = self.begin_request();
        let _pass = self.enter_gate();
        Self::reply_empty(self.fs.remove(parent.0, name, false), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _turn = self.begin_request();
        let _pass = self.enter_gate();
        Self::reply_empty(self.fs.remove(parent.0, name, true), reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _turn = self.begin_long_request();
        let _pass = self.enter_gate();
        let r = self
            .fs
            .rename(parent.0, name, newparent.0, newname, flags.bits());
        Self::reply_empty(r, reply);
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _turn = self.begin_request();
        if size.is_some() || !self.fs.is_copied_up(ino.0) {
            // A copy-up or a truncation may take a while.
            self.turns.step_aside();
        }
        let _pass = self.enter_gate();
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            fh: fh.map(|f| f.0),
        };
        match self.fs.setattr(ino.0, set) {
            Ok(a) => reply.attr(&self.ttl(&a), &to_file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _turn = self.begin_long_request();
        let _pass = self.enter_gate();
        match self.fs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Not sent for handles opened with NO_FLUSH; nothing to do if it comes anyway.
        let _turn = self.begin_request();
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _turn = self.begin_long_request();
        Self::reply_empty(self.fs.fsync(fh.0, datasync), reply);
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _turn = self.begin_long_request();
        Self::reply_empty(self.fs.fsyncdir(ino.0, datasync), reply);
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _turn = self.begin_request();
        let _pass = self.enter_gate();
        Self::reply_empty(self.fs.setxattr(ino.0, name, value, flags), reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _turn = self.begin_request();
        let _pass = self.enter_gate();
        Self::reply_empty(self.fs.removexattr(ino.0, name), reply);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _turn = self.begin_long_request();
        let _pass = self.enter_gate();
        Self::reply_empty(self.fs.fallocate(fh.0, offset, length, mode), reply);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let _turn = self.begin_request();
        match self.fs.lseek(fh.0, offset, whence) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let _turn = self.begin_long_request();
        let _pass = self.enter_gate();
        match self
            .fs
            .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len)
        {
            Ok(n) => reply.written(n as u32),
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
        let _turn = self.begin_long_request();
        debug!(
            "read through the daemon: fh={} offset={offset} size={size}",
            fh.0
        );
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
        let _turn = self.turns.begin();
        self.fs.release(fh.0);
        self.drop_backing(ino.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _turn = self.begin_request();
        // ENOSYS: the kernel stops sending OPENDIR and RELEASEDIR for this mount (two
        // round trips per directory read saved) and treats every directory open as if it
        // had answered FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE. That caching is right here:
        // every change to a directory goes through this daemon, and the kernel drops its
        // cached listing of a directory on each change it sends us. Listings need no
        // handle either (see `UnionFs::readdir`).
        reply.error(Errno::ENOSYS);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _turn = self.begin_request();
        let items = match self.fs.readdir(ino.0, offset) {
            Ok(items) => items,
            Err(e) => return reply.error(errno(e)),
        };
        // Offsets name entries (see `fs::DirItem::off`): resume after the one given.
        let start = items.partition_point(|d| d.off <= offset);
        for item in &items[start..] {
            let kind = file_type(item.kind);
            if reply.add(INodeNo(item.ino), item.off, kind, &item.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _turn = self.begin_request();
        let items = match self.fs.readdir(ino.0, offset) {
            Ok(items) => items,
            Err(e) => return reply.error(errno(e)),
        };
        let start = items.partition_point(|d| d.off <= offset);
        // A lean first batch is `.`, `..` and the subdirectories (listed first), whose
        // attributes save the lookup a walk sends for each directory it enters; the kernel
        // reads the other names on with READDIR.
        let lean = offset == 0
            && items.len() > 2
            && items[..2].iter().all(|d| d.name == "." || d.name == "..")
            && !self.plus.first_batch_rich(ino.0);
        let end = if lean {
            items.partition_point(|d| d.off < FIRST_NON_DIR_OFFSET)
        } else {
            items.len()
        };
        for item in &items[start..end] {
            let next = item.off;
            if item.name == "." || item.name == ".." {
                // The kernel links neither, so they cost no lookup count.
                let mut st = sys::zeroed_stat();
                st.st_mode = libc::S_IFDIR | 0o755;
                st.st_nlink = 1;
                let attr = to_file_attr(&Attr {
                    ino: item.ino,
                    st,
                    volatile: true,
                });
                if reply.add(
                    INodeNo(item.ino),
                    next,
                    &item.name,
                    &Duration::ZERO,
                    &attr,
                    Generation(0),
                ) {
                    break;
                }
                continue;
            }
            // Each entry sent counts as a lookup; one that does not fit is given back.
            // A name gone since the listing was taken is left out, as a later readdir
            // would.
            let Ok(a) = self.fs.lookup(ino.0, &item.name) else {
                continue;
            };
            let full = reply.add(
                INodeNo(a.ino),
                next,
                &item.name,
                &self.ttl(&a),
                &to_file_attr(&a),
                Generation(0),
            );
            if full {
                self.fs.forget(a.ino, 1);
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let _turn = self.begin_request();
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
        let _turn = self.begin_request();
        match self.fs.getxattr(ino.0, name) {
            Ok(v) => reply_xattr(&v, size, reply),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _turn = self.begin_request();
        match self.fs.listxattr(ino.0, req.uid() == 0) {
            Ok(v) => reply_xattr(&v, size, reply),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let _turn = self.begin_request();
        match self.fs.access(ino.0, mask.bits()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn destroy(&mut self) {
        self.fs.finish_discards();
        debug!(
            "filesystem destroyed; {} nodes were live",
            self.fs.live_nodes()
        );
    }
}
