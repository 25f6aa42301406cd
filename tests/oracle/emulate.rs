//! The one deliberate difference between ufsd and the kernel: renaming a directory that
//! has a lower instance.
//!
//! Kernel overlayfs without `redirect_dir` refuses that rename with EXDEV (it will not
//! copy a directory tree up inside rename(2)); userspace such as `mv` then falls back to
//! copying the tree and removing the source. ufsd performs the rename itself. So when the
//! kernel says EXDEV to a directory rename, the oracle does on the kernel mount what that
//! fallback does, and compares ufsd's result with the fallback's:
//!
//! - a plain rename onto an existing directory that is not empty is ENOTEMPTY (the kernel
//!   checks emptiness only after its EXDEV check); an empty target is removed first;
//! - the source directory is re-created at the target with the same mode, owner, user
//!   xattrs and times; every non-directory child is *renamed* across (the kernel does that
//!   itself, copying lower files up), which keeps upper hard links intact, exactly as a
//!   real rename would; child directories recurse the same way (or are renamed outright
//!   when the kernel allows it); then the source is removed;
//! - RENAME_EXCHANGE goes through a temporary name in the source's directory.
//!
//! `mv` itself copies file data instead of renaming children, which would split hard
//! links; renaming children is the closer model of what a directory rename means.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::ops::Rel;
use super::sys::{self, SysResult};

fn is_dir(p: &Path) -> bool {
    sys::lstat(p).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

/// Whether an EXDEV from the kernel for this rename is the directory case the oracle
/// emulates.
pub fn applies(root: &Path, from: &Rel, to: &Rel, flags: u32) -> bool {
    let exchange = flags & libc::RENAME_EXCHANGE != 0;
    is_dir(&from.under(root)) || exchange && is_dir(&to.under(root))
}

/// Performs the userspace fallback of `rename(from, to, flags)` on the kernel mount.
/// `temp` is a name (in `from`'s directory) that does not exist.
pub fn rename(root: &Path, from: &Rel, to: &Rel, flags: u32, temp: &[u8]) -> SysResult<()> {
    let (src, dst) = (from.under(root), to.under(root));
    if flags & libc::RENAME_EXCHANGE != 0 {
        let tmp = from.parent().join(temp).under(root);
        move_any(&src, &tmp)?;
        move_any(&dst, &src)?;
        return move_any(&tmp, &dst);
    }
    match sys::lstat(&dst) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
            if !sys::read_dir(&dst)?.is_empty() {
                return Err(libc::ENOTEMPTY);
            }
            sys::rmdir(&dst)?;
        }
        // The VFS rejects a directory onto a non-directory before the filesystem is asked.
        Ok(_) => return Err(libc::ENOTDIR),
        Err(libc::ENOENT) => {}
        Err(e) => return Err(e),
    }
    move_any(&src, &dst)
}

/// Renames `a` to `b` (which does not exist), moving a directory tree entry by entry when
/// the kernel refuses.
fn move_any(a: &Path, b: &Path) -> SysResult<()> {
    match sys::rename(a, b, 0) {
        Err(libc::EXDEV) if is_dir(a) => move_tree(a, b),
        r => r,
    }
}

fn move_tree(a: &Path, b: &Path) -> SysResult<()> {
    let st = sys::lstat(a)?;
    sys::mkdir(b, 0o700)?;
    sys::chown(b, st.st_uid, st.st_gid, false)?;
    for name in sys::listxattr(a, false)? {
        let value = sys::getxattr(a, &name, false)?;
        sys::setxattr(b, &name, &value, 0, false)?;
    }
    for name in sys::read_dir(a)? {
        let n = std::ffi::OsStr::from_bytes(&name);
        move_any(&a.join(n), &b.join(n))?;
    }
    sys::rmdir(a)?;
    sys::chmod(b, st.st_mode & 0o7777)?;
    let times = [
        sys::timespec(st.st_atime, st.st_atime_nsec),
        sys::timespec(st.st_mtime, st.st_mtime_nsec),
    ];
    sys::utimens(b, times, false)
}
