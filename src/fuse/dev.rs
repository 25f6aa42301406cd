//! The `/dev/fuse` transport: fuser reads the requests, decodes them and calls these
//! methods, which call the adapter and encode its answer into fuser's replies. After
//! `INIT` with FUSE over io_uring, only `FORGET` and interrupts still come this way.

use std::ffi::OsStr;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BsdFileFlags, CopyFileRangeFlags, Errno, FileAttr, FileHandle, FileType,
    Filesystem, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::{EntryOut, FuseAdapter, OpenOut, XattrOut};
use crate::fs::{Attr, Caller, NewObject, SetAttr};
use crate::layer::FileKind;
use crate::sys;

/// The adapter as fuser's [`Filesystem`]; the io_uring transport shares the adapter.
pub struct DevFuse(pub Arc<FuseAdapter>);

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
fn to_file_attr(a: &Attr) -> FileAttr {
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

fn reply_entry(r: sys::SysResult<EntryOut>, reply: ReplyEntry) {
    match r {
        // fuser takes the attribute timeout first.
        Ok(e) => reply.entry_with_ttls(
            &e.attr_ttl,
            &e.entry_ttl,
            &to_file_attr(&e.attr),
            Generation(0),
        ),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_attr(r: sys::SysResult<(Attr, Duration)>, reply: ReplyAttr) {
    match r {
        Ok((a, ttl)) => reply.attr(&ttl, &to_file_attr(&a)),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_empty(r: sys::SysResult<()>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_data(r: sys::SysResult<Vec<u8>>, reply: ReplyData) {
    match r {
        Ok(d) => reply.data(&d),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_written(r: sys::SysResult<u32>, reply: ReplyWrite) {
    match r {
        Ok(n) => reply.written(n),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_xattr(r: sys::SysResult<XattrOut>, reply: ReplyXattr) {
    match r {
        Ok(XattrOut::Size(n)) => reply.size(n),
        Ok(XattrOut::Data(d)) => reply.data(&d),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_open(r: sys::SysResult<OpenOut>, reply: ReplyOpen) {
    match r {
        Ok(OpenOut {
            fh,
            flags,
            backing: Some(id),
        }) => {
            // SAFETY: `id` is a live backing id of this connection; `into_raw` below keeps
            // fuser from closing it, as the adapter owns it.
            let bid = unsafe { reply.wrap_backing(id) };
            reply.opened_passthrough(FileHandle(fh), flags, &bid);
            let _ = bid.into_raw();
        }
        Ok(o) => reply.opened(FileHandle(o.fh), o.flags),
        Err(e) => reply.error(errno(e)),
    }
}

impl Filesystem for DevFuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        let caps = config.capabilities();
        let choice = self.0.init_choice();
        for flag in choice.wanted {
            if caps.contains(flag) {
                let _ = config.add_capabilities(flag);
            }
        }
        let _ = config.set_max_readahead(1 << 20);
        // Backing files may sit on one stacking filesystem (an overlay) themselves.
        let passthrough = choice.passthrough
            && caps.contains(InitFlags::FUSE_PASSTHROUGH)
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(2).is_ok();
        let uring = choice.uring
            && caps.contains(InitFlags::FUSE_OVER_IO_URING)
            && config
                .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
                .is_ok()
            // Each ring entry needs a buffer of max_write: 1 MiB, not fuser's 16.
            && config.set_max_write(super::uring::MAX_WRITE).is_ok();
        self.0.initialized(passthrough, uring);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _turn = self.0.begin_request();
        reply_entry(self.0.lookup(parent.0, name), reply);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _turn = self.0.turns.begin();
        self.0.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let _turn = self.0.begin_request();
        reply_attr(self.0.getattr(ino.0, fh.map(|f| f.0)), reply);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _turn = self.0.begin_request();
        reply_data(self.0.readlink(ino.0), reply);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _turn = self.0.begin_request();
        reply_open(self.0.open(ino.0, flags.0, req.uid()), reply);
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
        let _turn = self.0.begin_request();
        match self
            .0
            .create(parent.0, name, mode, umask, flags, caller(req))
        {
            Ok((e, o)) => {
                let fa = to_file_attr(&e.attr);
                match o.backing {
                    Some(id) => {
                        // SAFETY: as in `reply_open`.
                        let bid = unsafe { reply.wrap_backing(id) };
                        reply.created_passthrough(
                            &e.entry_ttl,
                            &fa,
                            Generation(0),
                            FileHandle(o.fh),
                            o.flags,
                            &bid,
                        );
                        let _ = bid.into_raw();
                    }
                    None => {
                        reply.created(&e.entry_ttl, &fa, Generation(0), FileHandle(o.fh), o.flags)
                    }
                }
            }
            Err(e) => reply.error(errno(e)),
        }
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
        let _turn = self.0.begin_request();
        let obj = NewObject::Node {
            mode,
            rdev: u64::from(rdev),
        };
        reply_entry(self.0.make(parent.0, name, obj, umask, caller(req)), reply);
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
        let _turn = self.0.begin_request();
        let obj = NewObject::Dir { mode };
        reply_entry(self.0.make(parent.0, name, obj, umask, caller(req)), reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let _turn = self.0.begin_request();
        let obj = NewObject::Symlink {
            target: target.as_os_str(),
        };
        reply_entry(self.0.make(parent.0, link_name, obj, 0, caller(req)), reply);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _turn = self.0.begin_request();
        reply_entry(self.0.link(ino.0, newparent.0, newname), reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _turn = self.0.begin_request();
        reply_empty(self.0.remove(parent.0, name, false), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _turn = self.0.begin_request();
        reply_empty(self.0.remove(parent.0, name, true), reply);
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
        let _turn = self.0.begin_request();
        let r = self
            .0
            .rename(parent.0, name, newparent.0, newname, flags.bits());
        reply_empty(r, reply);
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
        let _turn = self.0.begin_request();
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            fh: fh.map(|f| f.0),
        };
        reply_attr(self.0.setattr(ino.0, set), reply);
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
        let _turn = self.0.begin_request();
        reply_written(self.0.write(fh.0, offset, data), reply);
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
        let _turn = self.0.begin_request();
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
        let _turn = self.0.begin_request();
        reply_empty(self.0.fsync(fh.0, datasync), reply);
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _turn = self.0.begin_request();
        reply_empty(self.0.fsyncdir(ino.0, datasync), reply);
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
        let _turn = self.0.begin_request();
        reply_empty(self.0.setxattr(ino.0, name, value, flags), reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _turn = self.0.begin_request();
        reply_empty(self.0.removexattr(ino.0, name), reply);
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
        let _turn = self.0.begin_request();
        reply_empty(self.0.fallocate(fh.0, offset, length, mode), reply);
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
        let _turn = self.0.begin_request();
        match self.0.lseek(fh.0, offset, whence) {
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
        let _turn = self.0.begin_request();
        let r = self
            .0
            .copy_file_range(fh_in.0, offset_in, fh_out.0, offset_out, len);
        reply_written(r, reply);
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
        let _turn = self.0.begin_request();
        reply_data(self.0.read(fh.0, offset, size), reply);
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
        let _turn = self.0.turns.begin();
        self.0.release(ino.0, fh.0);
        reply.ok();
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _turn = self.0.begin_request();
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
        let _turn = self.0.begin_request();
        let r = self.0.readdir(ino.0, offset, |item| {
            reply.add(
                INodeNo(item.ino),
                item.off,
                file_type(item.kind),
                &item.name,
            )
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _turn = self.0.begin_request();
        let r = self.0.readdirplus(ino.0, offset, |item, e| {
            reply.add(
                INodeNo(e.attr.ino),
                item.off,
                &item.name,
                &e.entry_ttl,
                &to_file_attr(&e.attr),
                Generation(0),
            )
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let _turn = self.0.begin_request();
        match self.0.statfs(ino.0) {
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
        let _turn = self.0.begin_request();
        reply_xattr(self.0.getxattr(ino.0, name, size), reply);
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _turn = self.0.begin_request();
        reply_xattr(self.0.listxattr(ino.0, size, req.uid()), reply);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let _turn = self.0.begin_request();
        reply_empty(self.0.access(ino.0, mask.bits()), reply);
    }

    fn destroy(&mut self) {
        self.0.destroy();
    }
}
