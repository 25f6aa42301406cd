//! The merged view of the lower layers alone (what an image shows before the upper layer's
//! changes), read one directory at a time for the offline tools.
//!
//! A [`LowerDir`] is one directory of that view: the layer directories merged there
//! (top-down, with an open fd each), what each of them holds by name, and the names the
//! merged directory shows. It is built only for directories the upper layer also has, so a
//! walk of the upper layer lists each needed lower directory once and probes names in
//! hash maps instead of with one syscall per name and layer.
//!
//! The rules are those of [`crate::layer`]: [`crate::layer::resolve::Resolver`] decides
//! which layer directories merge, [`crate::layer::merge::merge_listings`] which names are
//! shown; both whiteout formats and both opaque markers are honoured.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::{ImageError, ImageResult, child_rel, join_rel};
use crate::layer::merge::{LayerListing, merge_listings};
use crate::layer::resolve::{Probe, Resolver, Step};
use crate::layer::stack::is_opaque_dir;
use crate::layer::whiteout::{EntryClass, classify};
use crate::layer::{FileKind, LayerStack};
use crate::sys;

/// The lower layers of an image, top-most first.
pub struct LowerView {
    stack: LayerStack,
    paths: Vec<PathBuf>,
}

/// What one layer directory holds under a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    Entry(FileKind),
    Whiteout,
}

/// One layer directory taking part in a merged lower directory.
struct LayerDir {
    layer: usize,
    fd: OwnedFd,
    held: HashMap<OsString, Held>,
}

/// One directory of the lower layers' merged view.
pub struct LowerDir {
    /// Path relative to the layer roots, for error messages.
    rel: Vec<u8>,
    layers: Vec<LayerDir>,
    shown: HashMap<OsString, FileKind>,
}

impl LowerView {
    /// Opens every lower layer root.
    pub fn open(lowers: &[PathBuf]) -> ImageResult<LowerView> {
        for l in lowers {
            sys::open_root(l).map_err(ImageError::io("opening lower layer", l))?;
        }
        let stack = LayerStack::open(None, lowers)
            .map_err(|e| ImageError::Invalid(format!("opening lower layers: {e}")))?;
        Ok(LowerView {
            stack,
            paths: lowers.to_vec(),
        })
    }

    /// The root directory of the merged lower view; `None` without lower layers.
    pub fn root(&self) -> ImageResult<Option<LowerDir>> {
        if self.stack.is_empty() {
            return Ok(None);
        }
        let mut r = Resolver::new(None);
        let mut fds = Vec::new();
        for i in 0..self.stack.len() {
            let root = self.stack.layer(i).root.as_fd();
            let fd = sys::open_dir_at(root, OsStr::new("."))
                .map_err(|e| ImageError::sys("opening lower layer", &self.paths[i], e))?;
            let opaque = is_opaque_dir(fd.as_fd())
                .map_err(|e| ImageError::sys("reading opaque marker", &self.paths[i], e))?;
            fds.push((i, fd));
            let probe = Probe::Entry {
                kind: FileKind::Directory,
                opaque,
            };
            if r.feed(i, probe) == Step::Done {
                break;
            }
        }
        let merged = r.finish().merged;
        let dirs = fds
            .into_iter()
            .filter(|(i, _)| merged.contains(i))
            .collect();
        self.build(Vec::new(), dirs).map(Some)
    }

    /// The directory `name` of `dir` in the merged lower view, if the view shows a
    /// directory there.
    pub fn child(&self, dir: &LowerDir, name: &OsStr) -> ImageResult<Option<LowerDir>> {
        if dir.shown.get(name) != Some(&FileKind::Directory) {
            return Ok(None);
        }
        let rel = child_rel(&dir.rel, name.as_bytes());
        let mut r = Resolver::new(None);
        let mut fds = Vec::new();
        for ld in &dir.layers {
            let probe = match ld.held.get(name) {
                None => Probe::Absent,
                Some(Held::Whiteout) => Probe::Whiteout,
                Some(Held::Entry(kind)) if kind.is_dir() => {
                    let path = || join_rel(&self.paths[ld.layer], &rel);
                    let fd = sys::open_dir_at(ld.fd.as_fd(), name)
                        .map_err(|e| ImageError::sys("opening lower directory", path(), e))?;
                    let opaque = is_opaque_dir(fd.as_fd())
                        .map_err(|e| ImageError::sys("reading opaque marker", path(), e))?;
                    fds.push((ld.layer, fd));
                    Probe::Entry {
                        kind: *kind,
                        opaque,
                    }
                }
                Some(Held::Entry(kind)) => Probe::Entry {
                    kind: *kind,
                    opaque: false,
                },
            };
            if r.feed(ld.layer, probe) == Step::Done {
                break;
            }
        }
        let res = r.finish();
        if !matches!(res.winner, Some((_, FileKind::Directory))) {
            return Ok(None);
        }
        let dirs = fds
            .into_iter()
            .filter(|(i, _)| res.merged.contains(i))
            .collect();
        self.build(rel, dirs).map(Some)
    }

    /// Lists the merged layer directories and merges their listings.
    fn build(&self, rel: Vec<u8>, dirs: Vec<(usize, OwnedFd)>) -> ImageResult<LowerDir> {
        let mut listings = Vec::with_capacity(dirs.len());
        let mut layers = Vec::with_capacity(dirs.len());
        for (layer, fd) in dirs {
            let listing: LayerListing = self.stack.list(layer, fd.as_fd()).map_err(|e| {
                ImageError::sys(
                    "listing lower directory",
                    join_rel(&self.paths[layer], &rel),
                    e,
                )
            })?;
            let mut held = HashMap::with_capacity(listing.entries.len());
            for e in &listing.entries {
                match classify(e.name.as_bytes(), e.kind, e.rdev) {
                    // A layer holding both a name and its whiteout shows the name.
                    EntryClass::Visible => {
                        held.insert(e.name.clone(), Held::Entry(e.kind));
                    }
                    EntryClass::Whiteout(t) => {
                        held.entry(OsStr::from_bytes(t).to_os_string())
                            .or_insert(Held::Whiteout);
                    }
                    EntryClass::OpaqueMarker | EntryClass::Hidden => {}
                }
            }
            listings.push(listing);
            layers.push(LayerDir { layer, fd, held });
        }
        let shown = merge_listings(&listings, None)
            .into_iter()
            .map(|m| (m.name, m.kind))
            .collect();
        Ok(LowerDir { rel, layers, shown })
    }
}

impl LowerDir {
    /// The type of `name` in this directory of the lower view, if it shows it.
    pub fn get(&self, name: &OsStr) -> Option<FileKind> {
        self.shown.get(name).copied()
    }

    /// Every name this directory of the lower view shows.
    pub fn shown(&self) -> &HashMap<OsString, FileKind> {
        &self.shown
    }

    /// The layer whose entry `name` shows here (the top-most holding it; no whiteout is
    /// above it, or it would not show) and that layer's fd of this directory.
    pub fn holder(&self, name: &OsStr) -> Option<(usize, std::os::fd::BorrowedFd<'_>)> {
        if !self.shown.contains_key(name) {
            return None;
        }
        self.layers
            .iter()
            .find(|l| matches!(l.held.get(name), Some(Held::Entry(_))))
            .map(|l| (l.layer, l.fd.as_fd()))
    }
}
