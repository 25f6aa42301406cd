//! Reading what one layer directory holds under one name, with the formats of its markers
//! (as the daemon's probe reads it: a real entry wins over a `.wh.` file of the same name).

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use super::{Holds, OpaqueFormat, ViewPath, WhiteoutFormat};
use crate::layer::FileKind;
use crate::layer::resolve::Probe;
use crate::layer::stack::kind_of;
use crate::layer::whiteout::{
    EntryClass, OPAQUE_MARKER, OPAQUE_XATTRS, classify, is_opaque_value, whiteout_name,
};
use crate::sys::{self, Errno};

/// What one layer holds at one name, with the fds and formats the explanation needs.
pub(super) struct Found {
    pub holds: Holds,
    pub probe: Probe,
    pub dir: Option<OwnedFd>,
    pub ctime: Option<sys::Timestamp>,
}

pub(super) fn nothing() -> Found {
    Found {
        holds: Holds::Nothing,
        probe: Probe::Absent,
        dir: None,
        ctime: None,
    }
}

/// The opaque marking of the directory open at `dir`, in the order overlayfs reads it.
pub(super) fn opaque_format(dir: BorrowedFd<'_>) -> Result<Option<OpaqueFormat>, Errno> {
    for (attr, f) in OPAQUE_XATTRS
        .iter()
        .zip([OpaqueFormat::TrustedXattr, OpaqueFormat::UserXattr])
    {
        match sys::get_xattr(dir, None, OsStr::new(attr)) {
            Ok(Some(v)) if is_opaque_value(&v) => return Ok(Some(f)),
            Ok(_) | Err(Errno::ENOTSUP) | Err(Errno::EPERM) | Err(Errno::EACCES) => {}
            Err(e) => return Err(e),
        }
    }
    match sys::stat_at(dir, OsStr::from_bytes(OPAQUE_MARKER)) {
        Ok(_) => Ok(Some(OpaqueFormat::Marker)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads what the layer directory `dir` holds under `name` (as the daemon's probe does: a
/// real entry wins over a `.wh.` file of the same name).
pub(super) fn find(dir: BorrowedFd<'_>, name: &OsStr) -> Result<Found, Errno> {
    match sys::stat_at(dir, name) {
        Ok(st) => {
            let kind = kind_of(&st)?;
            if matches!(
                classify(name.as_bytes(), kind, st.st_rdev),
                EntryClass::Whiteout(_)
            ) {
                return Ok(Found {
                    holds: Holds::Whiteout {
                        format: WhiteoutFormat::Device,
                    },
                    probe: Probe::Whiteout,
                    dir: None,
                    ctime: None,
                });
            }
            let (fd, opaque) = if kind.is_dir() {
                let fd = sys::open_dir_at(dir, name)?;
                let opaque = opaque_format(fd.as_fd())?;
                (Some(fd), opaque)
            } else {
                (None, None)
            };
            let target = if kind == FileKind::Symlink {
                Some(ViewPath(sys::readlink_at(dir, name)?))
            } else {
                None
            };
            Ok(Found {
                holds: Holds::Entry {
                    kind: kind.name(),
                    size: if kind == FileKind::Regular {
                        st.st_size as u64
                    } else {
                        0
                    },
                    opaque,
                    target,
                },
                probe: Probe::Entry {
                    kind,
                    opaque: opaque.is_some(),
                },
                dir: fd,
                ctime: Some((st.st_ctime, st.st_ctime_nsec as u32)),
            })
        }
        Err(Errno::ENOENT) => {
            match sys::stat_at(dir, OsStr::from_bytes(&whiteout_name(name.as_bytes()))) {
                Ok(_) => Ok(Found {
                    holds: Holds::Whiteout {
                        format: WhiteoutFormat::WhFile,
                    },
                    probe: Probe::Whiteout,
                    dir: None,
                    ctime: None,
                }),
                Err(Errno::ENOENT) | Err(Errno::ENAMETOOLONG) => Ok(nothing()),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}
