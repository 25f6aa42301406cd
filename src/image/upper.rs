//! Reading an upper layer directory for the offline tools: its entries with their types
//! (and full `stat` when asked), its xattrs, and the overlayfs features ufsd does not
//! support in an upper layer.
//!
//! An upper layer may come from ufsd, from kernel overlayfs or from a container engine's
//! overlay2 driver; whiteouts and opaque directories are read in both formats, as
//! [`crate::layer::whiteout`] classifies them. Two kernel features change what an upper
//! entry means and are refused with an error naming the path:
//! - `redirect_dir` (`*.overlay.redirect`): a directory renamed in the merged view is stored
//!   under its new name with a pointer to its old lower path;
//! - `metacopy` (`*.overlay.metacopy`): a file holds only metadata and takes its data from a
//!   lower layer.

use std::ffi::{OsStr, OsString};
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::{ImageError, ImageResult};
use crate::layer::FileKind;
use crate::layer::stack::kind_of;
use crate::layer::whiteout::{OPAQUE_XATTRS, is_opaque_value};
use crate::sys::{self, Errno, Stat};

/// xattrs of a redirected directory (`redirect_dir=on`).
const REDIRECT_XATTRS: [&[u8]; 2] = [b"trusted.overlay.redirect", b"user.overlay.redirect"];
/// xattrs of a metadata-only copy-up (`metacopy=on`).
const METACOPY_XATTRS: [&[u8]; 2] = [b"trusted.overlay.metacopy", b"user.overlay.metacopy"];

/// xattrs as (name, value) pairs, sorted by name.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// One entry of an upper layer directory.
pub struct UpperEntry {
    pub name: OsString,
    pub kind: FileKind,
    /// `st_rdev` (only meaningful for devices).
    pub rdev: u64,
    /// The entry's `stat`, when the reader asked for it.
    pub stat: Option<Stat>,
}

/// Lists the upper directory `dir`. With `full_stat` every entry is `stat`ed; otherwise
/// only those whose `d_type` does not tell enough (unknown types, and character devices,
/// whose device number tells a whiteout). Entries removed while listing are left out, so a
/// live upper layer can be read.
pub fn read_dir(
    dir: BorrowedFd<'_>,
    full_stat: bool,
    path: impl Fn() -> PathBuf,
) -> ImageResult<Vec<UpperEntry>> {
    let raw = sys::read_dir(dir).map_err(|e| ImageError::sys("listing", path(), e))?;
    let mut out = Vec::with_capacity(raw.len());
    for r in raw {
        let kind = FileKind::from_dtype(r.d_type);
        let need_stat = full_stat || matches!(kind, None | Some(FileKind::CharDevice));
        let (kind, rdev, stat) = if need_stat {
            let st = match sys::stat_at(dir, &r.name) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => {
                    let p = path().join(&r.name);
                    return Err(ImageError::sys("stat", p, e));
                }
            };
            let kind =
                kind_of(&st).map_err(|e| ImageError::sys("stat", path().join(&r.name), e))?;
            (kind, st.st_rdev, Some(st))
        } else {
            (kind.unwrap_or(FileKind::Regular), 0, None)
        };
        out.push(UpperEntry {
            name: r.name,
            kind,
            rdev,
            stat,
        });
    }
    Ok(out)
}

/// The xattr names of `name` in `dir` (or of `dir` itself). An entry removed meanwhile, or
/// a filesystem without xattrs, has none.
pub fn xattr_names(
    dir: BorrowedFd<'_>,
    name: Option<&OsStr>,
    path: impl Fn() -> PathBuf,
) -> ImageResult<Vec<Vec<u8>>> {
    match sys::list_xattr(dir, name) {
        Ok(l) => Ok(l
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(<[u8]>::to_vec)
            .collect()),
        Err(Errno::ENOTSUP) | Err(Errno::ENOENT) => Ok(Vec::new()),
        Err(e) => Err(ImageError::sys("listing xattrs of", path(), e)),
    }
}

/// Every xattr of `name` in `dir` (or of `dir` itself), sorted by name.
pub fn xattrs(
    dir: BorrowedFd<'_>,
    name: Option<&OsStr>,
    path: impl Fn() -> PathBuf,
) -> ImageResult<Xattrs> {
    let mut out = Vec::new();
    for attr in xattr_names(dir, name, &path)? {
        match sys::get_xattr(dir, name, OsStr::from_bytes(&attr)) {
            Ok(Some(v)) => out.push((attr, v)),
            // Removed meanwhile.
            Ok(None) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(ImageError::sys("reading xattrs of", path(), e)),
        }
    }
    out.sort();
    Ok(out)
}

/// Whether the upper directory `dir` is opaque by xattr (reading only the xattr names,
/// and values only of the opaque ones); an error for a redirected directory.
pub fn dir_opaque_by_xattr(dir: BorrowedFd<'_>, path: impl Fn() -> PathBuf) -> ImageResult<bool> {
    let names = xattr_names(dir, None, &path)?;
    check_feature_xattrs(names.iter().map(Vec::as_slice), &path)?;
    for attr in OPAQUE_XATTRS {
        if !names.iter().any(|n| n == attr.as_bytes()) {
            continue;
        }
        match sys::get_xattr(dir, None, OsStr::new(attr)) {
            Ok(Some(v)) if is_opaque_value(&v) => return Ok(true),
            Ok(_) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(ImageError::sys("reading xattrs of", path(), e)),
        }
    }
    Ok(false)
}

/// Whether the xattrs `attrs` (sorted, as [`xattrs`] returns them) make a directory opaque.
pub fn opaque_in(attrs: &[(Vec<u8>, Vec<u8>)]) -> bool {
    attrs
        .iter()
        .any(|(n, v)| OPAQUE_XATTRS.iter().any(|o| o.as_bytes() == n) && is_opaque_value(v))
}

/// An error when the xattr names `names` carry an overlayfs feature ufsd does not support
/// in an upper layer.
pub fn check_feature_xattrs<'a>(
    names: impl IntoIterator<Item = &'a [u8]>,
    path: impl Fn() -> PathBuf,
) -> ImageResult<()> {
    for n in names {
        let what = if REDIRECT_XATTRS.contains(&n) {
            "redirect_dir uppers are not supported"
        } else if METACOPY_XATTRS.contains(&n) {
            "metacopy uppers are not supported (the data is in a lower layer)"
        } else {
            continue;
        };
        return Err(ImageError::Invalid(format!(
            "{}: has {}: {what}",
            path().display(),
            String::from_utf8_lossy(n)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(list: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        list.iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn opaque_redirect_and_metacopy_xattrs() {
        let p = || PathBuf::from("/u/d");
        assert!(!opaque_in(&attrs(&[])));
        assert!(opaque_in(&attrs(&[("trusted.overlay.opaque", "y")])));
        assert!(opaque_in(&attrs(&[("user.overlay.opaque", "y")])));
        assert!(!opaque_in(&attrs(&[("trusted.overlay.opaque", "x")])));
        assert!(!opaque_in(&attrs(&[("user.other", "y")])));
        let names = |l: &[&'static str]| l.iter().map(|n| n.as_bytes()).collect::<Vec<_>>();
        assert!(check_feature_xattrs(names(&["user.x", "trusted.overlay.origin"]), p).is_ok());
        let e = check_feature_xattrs(names(&["trusted.overlay.redirect"]), p).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("/u/d") && msg.contains("redirect_dir"),
            "{msg}"
        );
        let e = check_feature_xattrs(names(&["user.overlay.metacopy"]), p).unwrap_err();
        assert!(e.to_string().contains("metacopy"), "{e}");
    }
}
