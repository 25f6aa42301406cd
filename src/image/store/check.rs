//! The deeper half of `ufsd check`: every extracted layer is extracted again from its
//! (verified) blob into `tmp/` and compared with `layers/<hex>/` entry by entry, and
//! `--repair` removes what interrupted commands left and layers that do not match.
//!
//! An extracted layer is derived data: removing a damaged one loses nothing, the next
//! command that needs it extracts it again. Blobs are the originals: a corrupt blob is
//! reported, never removed.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::Store;
use super::remove::remove_tree;
use crate::image::{ImageError, ImageResult, child_rel};
use crate::sys::lock::LockKind;
use crate::sys::{self, Stat};

/// What [`Store::verify_layers`] found.
#[derive(Debug, Default, Serialize)]
pub struct LayerCheck {
    /// Extracted layers compared with a fresh extraction of their blob.
    pub verified: usize,
    /// Bytes of file content compared.
    pub bytes_compared: u64,
    /// Layers that differ from their blob: (diff_id, first differences).
    pub differ: Vec<(String, Vec<String>)>,
    /// Layers that could not be extracted again to compare: (diff_id, why).
    pub unverifiable: Vec<(String, String)>,
}

/// What [`Store::repair`] removed.
#[derive(Debug, Default, Serialize)]
pub struct RepairReport {
    pub temp_removed: usize,
    pub blobs_removed: usize,
    pub layers_removed: usize,
    pub bytes_freed: u64,
    pub orphan_containers_removed: usize,
    pub damaged_layers_removed: usize,
    /// Why garbage collection did not run, if it did not.
    pub deferred: Option<String>,
}

impl Store {
    /// Extracts every extracted layer again from its blob (through `extract`, as for
    /// [`Store::ensure_image_layers`]) and compares the two trees: type, mode, owner, size,
    /// content, link target, device number and xattrs of every entry.
    pub fn verify_layers(
        &self,
        mut extract: impl FnMut(&mut dyn Read, &Path) -> ImageResult<()>,
    ) -> ImageResult<LayerCheck> {
        let _pin = self.pin()?;
        let mut check = LayerCheck::default();
        let mut seen = BTreeSet::new();
        let images = {
            let _lock = self.lock(LockKind::Shared)?;
            let index = self.load_index()?;
            index
                .manifests()
                .iter()
                .filter_map(|d| self.load_image(&index, d).ok())
                .collect::<Vec<_>>()
        };
        for image in images {
            for layer in &image.layers {
                let id = layer.diff_id.to_string();
                let dir = self.layer_dir(&layer.diff_id)?;
                if !dir.is_dir() || !seen.insert(id.clone()) {
                    continue;
                }
                let tmp = self.temp_path("check");
                fs::create_dir(&tmp).map_err(ImageError::io("create", &tmp))?;
                let fresh = self.open_layer(layer).and_then(|mut tar| {
                    extract(&mut tar, &tmp)?;
                    tar.finish()
                });
                let result = match fresh {
                    Err(e) => {
                        check.unverifiable.push((id, e.to_string()));
                        Ok(())
                    }
                    Ok(()) => compare_trees(&tmp, &dir).map(|(diffs, bytes)| {
                        check.verified += 1;
                        check.bytes_compared += bytes;
                        if !diffs.is_empty() {
                            check.differ.push((id, diffs));
                        }
                    }),
                };
                remove_tree(&tmp)?;
                result?;
            }
        }
        Ok(check)
    }

    /// Removes leftovers of interrupted commands: temp files and trees, blobs and layers
    /// nothing references (garbage collection), container directories without a record,
    /// and the extracted layers named in `damaged_layers` (diff_ids that
    /// [`Store::verify_layers`] found different from their blob).
    pub fn repair(&self, damaged_layers: &[String]) -> ImageResult<RepairReport> {
        let mut report = RepairReport::default();
        {
            let _lock = self.lock(LockKind::Exclusive)?;
            for id in damaged_layers {
                let Some(digest) = crate::image::reference::parse_sha256(id) else {
                    continue;
                };
                let dir = self.layer_dir(&digest)?;
                if dir.is_dir() && self.discard_layer(&dir)? {
                    report.damaged_layers_removed += 1;
                }
            }
            let containers = self.root.join("containers");
            if let Ok(entries) = fs::read_dir(&containers) {
                for e in entries {
                    let e = e.map_err(ImageError::io("read", &containers))?;
                    if !e.path().join("container.json").exists()
                        && e.file_type().is_ok_and(|t| t.is_dir())
                    {
                        remove_tree(&e.path())?;
                        report.orphan_containers_removed += 1;
                    }
                }
            }
        }
        let gc = self.collect_garbage()?;
        report.temp_removed = gc.temp_removed;
        report.blobs_removed = gc.blobs_removed;
        report.layers_removed = gc.layers_removed;
        report.bytes_freed = gc.bytes_freed;
        report.deferred = gc.deferred;
        Ok(report)
    }
}

/// What is compared of one entry.
#[derive(Debug, PartialEq, Eq)]
struct EntryFacts {
    kind: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    size: Option<u64>,
    content: Option<[u8; 32]>,
    target: Option<Vec<u8>>,
    rdev: Option<u64>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// At most this many differences are reported per layer.
const MAX_DIFFS: usize = 5;

/// Compares two trees without following symlinks; returns the first differences (as
/// lines naming the path) and the bytes of content compared.
pub fn compare_trees(expected: &Path, actual: &Path) -> ImageResult<(Vec<String>, u64)> {
    let a = sys::open_root(expected).map_err(ImageError::io("open", expected))?;
    let b = sys::open_root(actual).map_err(ImageError::io("open", actual))?;
    let mut diffs = Vec::new();
    let mut bytes = 0;
    compare_dirs(a.as_fd(), b.as_fd(), b"", actual, &mut diffs, &mut bytes)?;
    Ok((diffs, bytes))
}

fn compare_dirs(
    a: BorrowedFd<'_>,
    b: BorrowedFd<'_>,
    rel: &[u8],
    root: &Path,
    diffs: &mut Vec<String>,
    bytes: &mut u64,
) -> ImageResult<()> {
    let err = |e| ImageError::sys("read", crate::image::join_rel(root, rel), e);
    let names = |fd| -> ImageResult<BTreeSet<OsString>> {
        Ok(sys::read_dir(fd)
            .map_err(err)?
            .into_iter()
            .map(|e| e.name)
            .collect())
    };
    let (na, nb) = (names(a)?, names(b)?);
    for name in na.union(&nb) {
        if diffs.len() >= MAX_DIFFS {
            return Ok(());
        }
        let path = child_rel(rel, name.as_bytes());
        let show = || String::from_utf8_lossy(&path).into_owned();
        let (fa, fb) = match (na.contains(name), nb.contains(name)) {
            (true, false) => {
                diffs.push(format!("{}: missing", show()));
                continue;
            }
            (false, true) => {
                diffs.push(format!("{}: not in the layer's blob", show()));
                continue;
            }
            _ => (facts(a, name, bytes)?, facts(b, name, bytes)?),
        };
        if fa != fb {
            diffs.push(format!("{}: {}", show(), describe_difference(&fa, &fb)));
            continue;
        }
        if fa.kind == libc::S_IFDIR {
            let open = |d, what: &[u8]| {
                sys::open_dir_at(d, name)
                    .map_err(|e| ImageError::sys("open", crate::image::join_rel(root, what), e))
            };
            let (ca, cb) = (open(a, &path)?, open(b, &path)?);
            compare_dirs(ca.as_fd(), cb.as_fd(), &path, root, diffs, bytes)?;
        }
    }
    Ok(())
}

fn describe_difference(a: &EntryFacts, b: &EntryFacts) -> String {
    if a.kind != b.kind {
        return format!("type {:o} instead of {:o}", b.kind, a.kind);
    }
    let mut what = Vec::new();
    if a.mode != b.mode {
        what.push(format!("mode {:o} instead of {:o}", b.mode, a.mode));
    }
    if (a.uid, a.gid) != (b.uid, b.gid) {
        what.push(format!(
            "owner {}:{} instead of {}:{}",
            b.uid, b.gid, a.uid, a.gid
        ));
    }
    if a.size != b.size {
        let n = |s: Option<u64>| s.unwrap_or(0);
        what.push(format!("size {} instead of {}", n(b.size), n(a.size)));
    } else if a.content != b.content {
        what.push("content differs".to_string());
    }
    if a.target != b.target {
        what.push("link target differs".to_string());
    }
    if a.rdev != b.rdev {
        what.push("device number differs".to_string());
    }
    if a.xattrs != b.xattrs {
        what.push("xattrs differ".to_string());
    }
    what.join(", ")
}

fn facts(dir: BorrowedFd<'_>, name: &OsStr, bytes: &mut u64) -> ImageResult<EntryFacts> {
    let err = |op, e| ImageError::sys(op, PathBuf::from(name), e);
    let st: Stat = sys::stat_at(dir, name).map_err(|e| err("stat", e))?;
    let kind = st.st_mode & libc::S_IFMT;
    let mut f = EntryFacts {
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: None,
        content: None,
        target: None,
        rdev: None,
        xattrs: BTreeMap::new(),
    };
    match kind {
        libc::S_IFREG => {
            f.size = Some(st.st_size as u64);
            let fd = sys::open_at(dir, name, libc::O_RDONLY, 0).map_err(|e| err("open", e))?;
            let mut file = fs::File::from(fd);
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = file
                    .read(&mut buf)
                    .map_err(ImageError::io("read", PathBuf::from(name)))?;
                if n == 0 {
                    break;
                }
                *bytes += n as u64;
                h.update(&buf[..n]);
            }
            f.content = Some(h.finalize().into());
        }
        libc::S_IFLNK => {
            f.target = Some(sys::readlink_at(dir, name).map_err(|e| err("readlink", e))?);
        }
        libc::S_IFCHR | libc::S_IFBLK => f.rdev = Some(st.st_rdev),
        _ => {}
    }
    let list = sys::list_xattr(dir, Some(name)).unwrap_or_default();
    for attr in list.split(|b| *b == 0).filter(|a| !a.is_empty()) {
        let value = sys::get_xattr(dir, Some(name), OsStr::from_bytes(attr))
            .map_err(|e| err("getxattr", e))?
            .unwrap_or_default();
        f.xattrs.insert(attr.to_vec(), value);
    }
    Ok(f)
}
