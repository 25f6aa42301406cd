//! A stack of layer directories on disk and the probes that read them.
//!
//! Layer 0 is the writable upper layer when there is one; the lower layers follow top-down
//! (the leftmost `lowerdir=` entry first). Every access is relative to a directory fd held
//! open for the layer root or a directory inside it, and never follows a symlink stored in a
//! layer.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::kind::FileKind;
use super::merge::{LayerEntry, LayerListing};
use super::resolve::Probe;
use super::whiteout::{self, OPAQUE_MARKER, OPAQUE_XATTRS};
use crate::sys::{self, Errno, Stat, SysResult};

/// One layer directory.
#[derive(Debug)]
pub struct Layer {
    pub path: PathBuf,
    pub root: OwnedFd,
    /// `st_dev` of the layer root.
    pub dev: u64,
    pub writable: bool,
}

/// The most layers one stack may have (nodes keep a layer index in 16 bits; kernel
/// overlayfs allows 500).
pub const MAX_LAYERS: usize = u16::MAX as usize;

/// The layers of one mount, top-down.
#[derive(Debug)]
pub struct LayerStack {
    layers: Vec<Layer>,
    has_upper: bool,
    /// Distinct `st_dev` values seen, in first-seen order: the index is the high part of
    /// inode numbers shown in the merged view.
    devs: parking_lot::Mutex<Vec<u64>>,
}

/// What a probe found in one layer, with the handles the caller may keep.
#[derive(Debug)]
pub struct Probed {
    pub probe: Probe,
    pub stat: Option<Stat>,
    /// For a directory: an open fd on it.
    pub dir: Option<OwnedFd>,
}

impl LayerStack {
    /// Opens every layer root. `upper` becomes layer 0.
    pub fn open(upper: Option<&Path>, lowers: &[PathBuf]) -> io::Result<LayerStack> {
        if lowers.len() + usize::from(upper.is_some()) > MAX_LAYERS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("too many layers: {} (at most {MAX_LAYERS})", lowers.len()),
            ));
        }
        let mut layers = Vec::new();
        let named = upper
            .map(|u| (u, true))
            .into_iter()
            .chain(lowers.iter().map(|l| (l.as_path(), false)));
        for (path, writable) in named {
            let root = sys::open_root(path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
            let st = sys::stat_fd(root.as_fd()).map_err(io::Error::from)?;
            layers.push(Layer {
                path: path.to_path_buf(),
                root,
                dev: st.st_dev,
                writable,
            });
        }
        let mut devs = Vec::new();
        for l in &layers {
            if !devs.contains(&l.dev) {
                devs.push(l.dev);
            }
        }
        Ok(LayerStack {
            layers,
            has_upper: upper.is_some(),
            devs: parking_lot::Mutex::new(devs),
        })
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    pub fn layer(&self, i: usize) -> &Layer {
        &self.layers[i]
    }

    /// The writable layer's index, if the stack has one.
    pub fn upper(&self) -> Option<usize> {
        self.has_upper.then_some(0)
    }

    /// Index of a device among the devices of the stack (new devices, such as a
    /// filesystem mounted inside a layer, are added on first sight).
    pub fn dev_index(&self, dev: u64) -> usize {
        let mut devs = self.devs.lock();
        match devs.iter().position(|d| *d == dev) {
            Some(i) => i,
            None => {
                devs.push(dev);
                devs.len() - 1
            }
        }
    }

    /// Probes `name` inside the layer directory `dir`.
    pub fn probe(&self, dir: BorrowedFd<'_>, name: &OsStr) -> SysResult<Probed> {
        self.probe_in(dir, name, false)
    }

    /// [`Self::probe`] in `dir`, with `bottom` when no layer below it takes part in the
    /// merge: a whiteout there hides nothing, so an absent name needs no `.wh.` probe.
    pub fn probe_in(&self, dir: BorrowedFd<'_>, name: &OsStr, bottom: bool) -> SysResult<Probed> {
        match sys::stat_at(dir, name) {
            Ok(st) => {
                let kind = kind_of(&st)?;
                if whiteout::is_whiteout_device(kind, st.st_rdev) {
                    return Ok(Probed {
                        probe: Probe::Whiteout,
                        stat: None,
                        dir: None,
                    });
                }
                if kind.is_dir() {
                    let fd = sys::open_dir_at(dir, name)?;
                    let opaque = is_opaque_dir(fd.as_fd())?;
                    Ok(Probed {
                        probe: Probe::Entry { kind, opaque },
                        stat: Some(st),
                        dir: Some(fd),
                    })
                } else {
                    Ok(Probed {
                        probe: Probe::Entry {
                            kind,
                            opaque: false,
                        },
                        stat: Some(st),
                        dir: None,
                    })
                }
            }
            Err(Errno::ENOENT) if bottom => Ok(Probed {
                probe: Probe::Absent,
                stat: None,
                dir: None,
            }),
            Err(Errno::ENOENT) => {
                let wh = whiteout::whiteout_name(name.as_bytes());
                match sys::stat_at(dir, OsStr::from_bytes(&wh)) {
                    Ok(_) => Ok(Probed {
                        probe: Probe::Whiteout,
                        stat: None,
                        dir: None,
                    }),
                    Err(Errno::ENOENT) | Err(Errno::ENAMETOOLONG) => Ok(Probed {
                        probe: Probe::Absent,
                        stat: None,
                        dir: None,
                    }),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Lists one layer directory, with the type of every entry (stat where `d_type` is
    /// unknown, and for character devices, whose device number tells a whiteout).
    pub fn list(&self, layer: usize, dir: BorrowedFd<'_>) -> SysResult<LayerListing> {
        list_layer_dir(layer, dir)
    }
}

/// Lists one layer directory as [`LayerStack::list`] does, for callers without a stack.
pub fn list_layer_dir(layer: usize, dir: BorrowedFd<'_>) -> SysResult<LayerListing> {
    let raw = sys::read_dir(dir)?;
    let mut entries = Vec::with_capacity(raw.len());
    for r in raw {
        let (kind, rdev) = match FileKind::from_dtype(r.d_type) {
            Some(k) if k != FileKind::CharDevice => (k, 0),
            _ => match sys::stat_at(dir, &r.name) {
                Ok(st) => (kind_of(&st)?, st.st_rdev),
                // Removed between readdir and stat: skip it.
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(e),
            },
        };
        entries.push(LayerEntry {
            name: r.name,
            kind,
            rdev,
            ino: r.ino,
        });
    }
    Ok(LayerListing { layer, entries })
}

/// The type of a stat result; EIO for a type Linux does not have.
pub fn kind_of(st: &Stat) -> SysResult<FileKind> {
    FileKind::from_mode(st.st_mode).ok_or(Errno::EIO)
}

/// Whether the directory open at `dir` is opaque in either format.
pub fn is_opaque_dir(dir: BorrowedFd<'_>) -> SysResult<bool> {
    for attr in OPAQUE_XATTRS {
        match sys::get_xattr(dir, None, OsStr::new(attr)) {
            Ok(Some(v)) if whiteout::is_opaque_value(&v) => return Ok(true),
            Ok(_) => {}
            // No xattr support, or not permitted to read trusted.*: not marked that way.
            Err(Errno::ENOTSUP) | Err(Errno::EPERM) | Err(Errno::EACCES) => {}
            Err(e) => return Err(e),
        }
    }
    match sys::stat_at(dir, OsStr::from_bytes(OPAQUE_MARKER)) {
        Ok(_) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}
