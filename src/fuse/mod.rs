//! The FUSE adapter: serves the kernel's requests from the core ([`crate::fs::UnionFs`]).
//!
//! The requests reach the daemon by one of two transports: `/dev/fuse`, through fuser
//! ([`dev`]), or FUSE over io_uring ([`uring`]), which fuser does not speak. Both call the
//! same methods here, which take decoded arguments and return what the reply carries; the
//! transports only decode and encode. The only state kept here is what belongs to the FUSE
//! session itself: passthrough backing ids, and what `INIT` settled.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dashmap::DashMap;
use fuser::FopenFlags;
use log::{debug, warn};

mod dev;
pub mod idle_poll;
mod plus;
mod turns;
pub mod uring;
pub use dev::DevFuse;
use idle_poll::RequestMeter;
use plus::PlusPolicy;
use turns::{Turn, Turns};

use crate::fs::gate::{WriteGate, WritePass};
use crate::fs::{Attr, Caller, DirItem, FIRST_NON_DIR_OFFSET, NewObject, SetAttr, UnionFs};
use crate::sys::{self, Errno, SysResult};

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

/// Serves a [`UnionFs`] to the kernel's FUSE requests.
pub struct FuseAdapter {
    fs: UnionFs,
    cache: CachePolicy,
    /// Whether passthrough was asked for (root only) and granted by the kernel.
    want_passthrough: bool,
    passthrough: AtomicBool,
    /// The FUSE device, for registering backing files; set before the first request.
    dev: OnceLock<OwnedFd>,
    /// One backing id per inode while it has open handles: the kernel allows a single
    /// backing file per inode at a time.
    backing: DashMap<u64, Backing>,
    /// Held by every request that changes the upper layer, so that writes can be paused.
    gate: Arc<WriteGate>,
    /// Whether listings carry attributes.
    plus: PlusPolicy,
    /// Counts requests for idle polling, where it is on.
    meter: Option<Arc<RequestMeter>>,
    /// Which `/dev/fuse` thread reads the next request.
    turns: Turns,
    /// Whether FUSE over io_uring was asked for, and what `INIT` settled.
    uring: uring::Negotiation,
}

/// A passthrough backing file registered with the kernel for one inode.
struct Backing {
    id: u32,
    opens: u32,
    /// Whether it is the upper (writable) instance.
    upper: bool,
}

/// The reply to a request that names an entry (lookup, mkdir, ...). A negative entry (the
/// name is absent, and the kernel may remember that for `entry_ttl`) has inode 0.
pub struct EntryOut {
    pub attr: Attr,
    pub entry_ttl: Duration,
    pub attr_ttl: Duration,
}

/// The reply to `OPEN` (and the open half of `CREATE`).
pub struct OpenOut {
    pub fh: u64,
    pub flags: FopenFlags,
    /// The passthrough backing id, if the kernel does the reads and writes itself.
    pub backing: Option<u32>,
}

/// The reply to `GETXATTR` and `LISTXATTR`: the size asked about, or the bytes.
pub enum XattrOut {
    Size(u32),
    Data(Vec<u8>),
}

/// What `INIT` offers and what the adapter takes: the transports turn this into their own
/// flags.
pub struct InitChoice {
    /// Capabilities to take if the kernel offers them.
    pub wanted: Vec<fuser::InitFlags>,
    /// Passthrough, if offered (it also needs a stacking depth of 2).
    pub passthrough: bool,
    /// FUSE over io_uring, if offered.
    pub uring: bool,
}

impl FuseAdapter {
    pub fn new(fs: UnionFs, cache: CachePolicy, want_passthrough: bool) -> FuseAdapter {
        FuseAdapter {
            fs,
            cache,
            want_passthrough,
            passthrough: AtomicBool::new(false),
            dev: OnceLock::new(),
            backing: DashMap::new(),
            gate: Arc::new(WriteGate::new()),
            plus: PlusPolicy::default(),
            meter: None,
            turns: Turns::default(),
            uring: uring::Negotiation::default(),
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

    /// Asks the kernel for FUSE over io_uring at `INIT` (see [`uring`]).
    pub fn with_uring(mut self, want: bool) -> FuseAdapter {
        self.uring = uring::Negotiation::new(want);
        self
    }

    /// Gives the adapter the FUSE device, before the first request.
    pub fn set_device(&self, dev: OwnedFd) {
        let _ = self.dev.set(dev);
    }

    /// Called by the `/dev/fuse` transport first for every request a caller waits for,
    /// and kept until its reply is sent: see [`turns`].
    fn begin_request(&self) -> Turn<'_> {
        self.count_request();
        self.turns.begin()
    }

    /// Tells idle polling that a caller waits for a request.
    fn count_request(&self) {
        if let Some(m) = &self.meter {
            m.request();
        }
    }

    /// Lets one mutating request through the write gate; if it has to wait (a pause),
    /// another thread reads requests meanwhile.
    fn enter_gate(&self) -> WritePass<'_> {
        self.gate.enter_with(|| self.turns.step_aside())
    }

    /// The backing id of `ino` for one more open: the one it has, or `file` registered
    /// anew. `None` when the kernel refuses it (the open then goes through the daemon).
    fn acquire_backing(&self, ino: u64, upper: bool, file: &std::fs::File) -> Option<u32> {
        let dev = self.dev.get()?;
        let mut entry = match self.backing.entry(ino) {
            dashmap::mapref::entry::Entry::Occupied(o) => o.into_ref(),
            dashmap::mapref::entry::Entry::Vacant(v) => {
                match sys::fuse_backing_open(dev.as_fd(), file.as_fd()) {
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
                }
            }
        };
        entry.opens += 1;
        Some(entry.id)
    }

    /// Whether a write open of `ino` would need a second backing file while a lower one is
    /// in use (see `UnionFs::split_for_write`).
    fn lower_backing_in_use(&self, ino: u64) -> bool {
        self.backing.get(&ino).is_some_and(|b| !b.upper)
    }

    fn passthrough(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    fn drop_backing(&self, ino: u64) {
        if let dashmap::mapref::entry::Entry::Occupied(mut o) = self.backing.entry(ino) {
            o.get_mut().opens = o.get().opens.saturating_sub(1);
            if o.get().opens == 0 {
                let (_, b) = o.remove_entry();
                if let Some(dev) = self.dev.get()
                    && let Err(e) = sys::fuse_backing_close(dev.as_fd(), b.id)
                {
                    debug!("closing backing id {} of inode {ino}: {e}", b.id);
                }
            }
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

    fn entry(&self, r: SysResult<Attr>) -> SysResult<EntryOut> {
        r.map(|attr| EntryOut {
            entry_ttl: self.ttl(&attr),
            attr_ttl: self.ttl(&attr),
            attr,
        })
    }

    // --- INIT and the end of the session ---

    /// What to ask for at `INIT`.
    pub fn init_choice(&self) -> InitChoice {
        use fuser::InitFlags as F;
        InitChoice {
            wanted: vec![
                F::FUSE_CACHE_SYMLINKS,
                F::FUSE_PARALLEL_DIROPS,
                F::FUSE_ASYNC_DIO,
                // O_TRUNC reaches open, so a copy-up for it can skip the data.
                F::FUSE_ATOMIC_O_TRUNC,
                // A listing followed by lookups (`ls -l`, `find -printf %s`, `du`) gets the
                // attributes with the names, one request per batch instead of one per name;
                // AUTO keeps plain readdir for walks that never look names up.
                F::FUSE_DO_READDIRPLUS,
                F::FUSE_READDIRPLUS_AUTO,
                // The kernel checks permissions against POSIX ACLs as well as modes, as
                // overlayfs does with the layers' ACLs, and caches them.
                F::FUSE_POSIX_ACL,
                // The umask reaches the daemon unapplied: under a default ACL it does not
                // apply.
                F::FUSE_DONT_MASK,
            ],
            passthrough: self.want_passthrough,
            uring: self.uring.wanted(),
        }
    }

    /// Records what `INIT` settled.
    pub fn initialized(&self, passthrough: bool, uring: bool) {
        self.passthrough.store(passthrough, Ordering::Relaxed);
        if passthrough {
            log::info!("file reads and writes use FUSE passthrough");
        } else if self.want_passthrough {
            log::info!("the kernel offers no FUSE passthrough; file data goes through the daemon");
        } else {
            log::info!("FUSE passthrough needs root; file data goes through the daemon");
        }
        self.uring.settle(uring);
    }

    /// The session ended (`DESTROY`, or the device closed).
    pub fn destroy(&self) {
        self.fs.finish_background();
        debug!(
            "filesystem destroyed; {} nodes were live",
            self.fs.live_nodes()
        );
    }

    // --- requests ---

    pub fn lookup(&self, parent: u64, name: &OsStr) -> SysResult<EntryOut> {
        match self.fs.lookup(parent, name) {
            Ok(a) => {
                if a.st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                    self.plus.file_looked_up(parent);
                }
                self.entry(Ok(a))
            }
            // A negative entry: the kernel remembers the name is absent for the TTL.
            Err(Errno::ENOENT) => Ok(EntryOut {
                attr: Attr {
                    volatile: false,
                    ino: 0,
                    st: sys::zeroed_stat(),
                },
                entry_ttl: self.cache.ttl,
                attr_ttl: Duration::ZERO,
            }),
            Err(e) => Err(e),
        }
    }

    pub fn forget(&self, ino: u64, nlookup: u64) {
        self.fs.forget(ino, nlookup);
    }

    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> SysResult<(Attr, Duration)> {
        self.fs.getattr(ino, fh).map(|a| (a, self.ttl(&a)))
    }

    pub fn readlink(&self, ino: u64) -> SysResult<Vec<u8>> {
        self.fs.readlink(ino)
    }

    /// `uid` is the caller's: a truncating open by another user drops setuid bits.
    pub fn open(&self, ino: u64, flags: i32, uid: u32) -> SysResult<OpenOut> {
        let writes = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if writes && !self.fs.is_copied_up(ino) {
            // A copy-up may take a while.
            self.turns.step_aside();
        }
        let _pass = writes.then(|| self.enter_gate());
        let needs_upper = writes || self.fs.is_copied_up(ino);
        if needs_upper && self.passthrough() && self.lower_backing_in_use(ino) {
            // The kernel allows one backing file per inode, and this one is the lower file,
            // held by earlier readers. Copy up and show the copy as a new inode; ESTALE makes
            // the kernel look the name up again and retry the open on the new inode, while
            // the earlier readers keep the lower file.
            debug!("open of ino={ino} needs its upper copy while its lower file is open: split");
            let r = self.fs.split_for_write(ino);
            return Err(r.err().unwrap_or(Errno::ESTALE));
        }
        let opened = self.fs.open(ino, flags)?;
        if flags & libc::O_TRUNC != 0
            && uid != 0
            && let Err(e) = self.fs.drop_privileges_on_truncate(opened.fh)
        {
            self.fs.release(opened.fh);
            return Err(e);
        }
        debug!(
            "open ino={ino} fh={} passthrough={}",
            opened.fh,
            self.passthrough()
        );
        let backing = if self.passthrough() {
            self.acquire_backing(ino, opened.upper, &opened.file)
        } else {
            None
        };
        let flags = if opened.upper || backing.is_some() {
            NO_FLUSH
        } else {
            NO_FLUSH | FopenFlags::FOPEN_KEEP_CACHE
        };
        Ok(OpenOut {
            fh: opened.fh,
            flags,
            backing,
        })
    }

    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        caller: Caller,
    ) -> SysResult<(EntryOut, OpenOut)> {
        let _pass = self.enter_gate();
        let (attr, opened) = self.fs.create(parent, name, mode, umask, flags, caller)?;
        let backing = if self.passthrough() {
            self.acquire_backing(attr.ino, true, &opened.file)
        } else {
            None
        };
        let entry = EntryOut {
            attr,
            entry_ttl: self.cache.ttl,
            attr_ttl: self.cache.ttl,
        };
        let open = OpenOut {
            fh: opened.fh,
            flags: NO_FLUSH,
            backing,
        };
        Ok((entry, open))
    }

    /// `MKNOD`, `MKDIR` and `SYMLINK`.
    pub fn make(
        &self,
        parent: u64,
        name: &OsStr,
        obj: NewObject,
        umask: u32,
        caller: Caller,
    ) -> SysResult<EntryOut> {
        let _pass = self.enter_gate();
        self.entry(self.fs.create_object(parent, name, obj, umask, caller))
    }

    pub fn link(&self, ino: u64, newparent: u64, newname: &OsStr) -> SysResult<EntryOut> {
        self.turns.step_aside();
        let _pass = self.enter_gate();
        let r = self.fs.link(ino, newparent, newname);
        debug!(
            "link ino={ino} as {newname:?}: {:?}",
            r.as_ref().map(|a| a.ino)
        );
        self.entry(r)
    }

    /// `UNLINK` and `RMDIR`.
    pub fn remove(&self, parent: u64, name: &OsStr, dir: bool) -> SysResult<()> {
        let _pass = self.enter_gate();
        self.fs.remove(parent, name, dir)
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
    ) -> SysResult<()> {
        self.turns.step_aside();
        let _pass = self.enter_gate();
        self.fs.rename(parent, name, newparent, newname, flags)
    }

    pub fn setattr(&self, ino: u64, set: SetAttr) -> SysResult<(Attr, Duration)> {
        if set.size.is_some() || !self.fs.is_copied_up(ino) {
            // A copy-up or a truncation may take a while.
            self.turns.step_aside();
        }
        let _pass = self.enter_gate();
        self.fs.setattr(ino, set).map(|a| (a, self.ttl(&a)))
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> SysResult<u32> {
        self.turns.step_aside();
        let _pass = self.enter_gate();
        self.fs.write(fh, offset, data).map(|n| n as u32)
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> SysResult<()> {
        self.turns.step_aside();
        self.fs.fsync(fh, datasync)
    }

    pub fn fsyncdir(&self, ino: u64, datasync: bool) -> SysResult<()> {
        self.turns.step_aside();
        self.fs.fsyncdir(ino, datasync)
    }

    pub fn setxattr(&self, ino: u64, name: &OsStr, value: &[u8], flags: i32) -> SysResult<()> {
        let _pass = self.enter_gate();
        self.fs.setxattr(ino, name, value, flags)
    }

    pub fn removexattr(&self, ino: u64, name: &OsStr) -> SysResult<()> {
        let _pass = self.enter_gate();
        self.fs.removexattr(ino, name)
    }

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> SysResult<()> {
        self.turns.step_aside();
        let _pass = self.enter_gate();
        self.fs.fallocate(fh, offset, length, mode)
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> SysResult<i64> {
        self.fs.lseek(fh, offset, whence)
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        offset_in: u64,
        fh_out: u64,
        offset_out: u64,
        len: u64,
    ) -> SysResult<u32> {
        self.turns.step_aside();
        let _pass = self.enter_gate();
        self.fs
            .copy_file_range(fh_in, offset_in, fh_out, offset_out, len)
            .map(|n| n as u32)
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> SysResult<Vec<u8>> {
        self.turns.step_aside();
        debug!("read through the daemon: fh={fh} offset={offset} size={size}");
        self.fs.read(fh, offset, size)
    }

    pub fn release(&self, ino: u64, fh: u64) {
        self.fs.release(fh);
        self.drop_backing(ino);
    }

    /// Lists directory `ino` after `offset`, handing each entry to `add` until it says its
    /// buffer is full.
    pub fn readdir(
        &self,
        ino: u64,
        offset: u64,
        mut add: impl FnMut(&DirItem) -> bool,
    ) -> SysResult<()> {
        let items = self.fs.readdir(ino, offset)?;
        // Offsets name entries (see `fs::DirItem::off`): resume after the one given.
        let start = items.partition_point(|d| d.off <= offset);
        for item in &items[start..] {
            if add(item) {
                break;
            }
        }
        Ok(())
    }

    /// [`readdir`](Self::readdir) with attributes: `add` gets each entry with its entry
    /// reply, and says whether its buffer was full (the entry was not taken).
    pub fn readdirplus(
        &self,
        ino: u64,
        offset: u64,
        mut add: impl FnMut(&DirItem, &EntryOut) -> bool,
    ) -> SysResult<()> {
        let items = self.fs.readdir(ino, offset)?;
        let start = items.partition_point(|d| d.off <= offset);
        // A lean first batch is `.`, `..` and the subdirectories (listed first), whose
        // attributes save the lookup a walk sends for each directory it enters; the kernel
        // reads the other names on with READDIR.
        let lean = offset == 0
            && items.len() > 2
            && items[..2].iter().all(|d| d.name == "." || d.name == "..")
            && !self.plus.first_batch_rich(ino);
        let end = if lean {
            items.partition_point(|d| d.off < FIRST_NON_DIR_OFFSET)
        } else {
            items.len()
        };
        for item in &items[start..end] {
            if item.name == "." || item.name == ".." {
                // The kernel links neither, so they cost no lookup count.
                let mut st = sys::zeroed_stat();
                st.st_mode = libc::S_IFDIR | 0o755;
                st.st_nlink = 1;
                let dots = EntryOut {
                    attr: Attr {
                        ino: item.ino,
                        st,
                        volatile: true,
                    },
                    entry_ttl: Duration::ZERO,
                    attr_ttl: Duration::ZERO,
                };
                if add(item, &dots) {
                    break;
                }
                continue;
            }
            // Each entry sent counts as a lookup; one that does not fit is given back.
            // A name gone since the listing was taken is left out, as a later readdir
            // would.
            let Ok(entry) = self.entry(self.fs.lookup(ino, &item.name)) else {
                continue;
            };
            if add(item, &entry) {
                self.fs.forget(entry.attr.ino, 1);
                break;
            }
        }
        Ok(())
    }

    pub fn statfs(&self, ino: u64) -> SysResult<libc::statvfs> {
        self.fs.statfs(ino)
    }

    /// `size` is the caller's buffer size; 0 asks for the size only.
    pub fn getxattr(&self, ino: u64, name: &OsStr, size: u32) -> SysResult<XattrOut> {
        xattr_out(self.fs.getxattr(ino, name)?, size)
    }

    pub fn listxattr(&self, ino: u64, size: u32, uid: u32) -> SysResult<XattrOut> {
        xattr_out(self.fs.listxattr(ino, uid == 0)?, size)
    }

    pub fn access(&self, ino: u64, mask: i32) -> SysResult<()> {
        self.fs.access(ino, mask)
    }
}

/// An xattr value or name list with the size protocol of getxattr/listxattr.
fn xattr_out(data: Vec<u8>, size: u32) -> SysResult<XattrOut> {
    if size == 0 {
        Ok(XattrOut::Size(data.len() as u32))
    } else if data.len() > size as usize {
        Err(Errno::ERANGE)
    } else {
        Ok(XattrOut::Data(data))
    }
}
