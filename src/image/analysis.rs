//! What each layer of a stack adds, changes, removes and wastes (`ufsd layers`).
//!
//! Works on the layer directories themselves (extracted image layers, an upper layer), so
//! it never needs a mount.
//!
//! Counting rules (docs/semantics.md, "Wasted bytes"):
//! - Bytes are apparent file sizes (`st_size`) of regular files: what a layer tar carries
//!   as data, as docker and dive count. Directories, symlinks, devices, whiteouts and
//!   markers count 0 bytes. Holes in sparse files count (a tar stores them as data).
//! - A layer's *size* is the bytes of its regular files, each inode once (hard links share
//!   their data, as in a tar).
//! - A file of a layer is *seen* when the merged view of the whole stack shows it (by any
//!   of its names in that layer); otherwise its bytes are *wasted*: still shipped, never
//!   seen. Every file of every layer is one or the other, so nothing is counted twice: a
//!   file overwritten twice is wasted once in each of the two layers overwritten.
//! - Whether a file is seen follows the union rules through [`crate::layer::blame`]: a
//!   higher layer's entry of the same name shadows it, a whiteout deletes it, a whiteout or
//!   non-directory at an ancestor hides the whole tree, and an opaque directory hides every
//!   lower layer's contents of that directory.
//! - Efficiency = bytes seen / bytes stored in all layers (1 for a stack with no data).
//! - Added / changed / removed are the layer's changes against the layers below it,
//!   exactly as `ufsd diff` lists them ([`super::diff`]): *added* is every `A` path,
//!   *removed* every `D` path (a deleted tree counts once), *changed* every `C` path that
//!   is not a directory (a directory is `C` whenever something inside it changes).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use serde::Serialize;

use super::diff::{ChangeKind, diff};
use super::explain::ViewPath;
use super::layerset::LayerSet;
use super::{ImageError, ImageResult, child_rel, join_rel};
use crate::layer::FileKind;
use crate::layer::blame::{Cause, Cut, Role, blame};
use crate::layer::resolve::Probe;
use crate::layer::stack::{is_opaque_dir, list_layer_dir};
use crate::layer::whiteout::{EntryClass, classify};
use crate::sys::{self, Errno};

/// One layer's numbers.
#[derive(Clone, Debug, Serialize)]
pub struct LayerReport {
    /// Index top-down into the layer set.
    pub layer: usize,
    pub name: String,
    pub diff_id: Option<String>,
    pub blob_size: Option<u64>,
    pub created_by: Option<String>,
    pub comment: Option<String>,
    /// Bytes of regular-file data stored in the layer.
    pub size: u64,
    /// Regular files (inodes) in the layer.
    pub files: u64,
    pub added: u64,
    pub changed: u64,
    pub removed: u64,
    /// Bytes of this layer's files that the merged view never shows.
    pub wasted: u64,
    pub wasted_files: u64,
}

/// A file whose bytes are wasted, and what hides it.
#[derive(Clone, Debug, Serialize)]
pub struct Waste {
    pub path: ViewPath,
    /// The layer storing it.
    pub layer: usize,
    pub size: u64,
    /// The layer that hides it, how, and where (the path itself or an ancestor).
    pub by: usize,
    pub cause: Cause,
    pub at: ViewPath,
}

/// The analysis of a whole stack.
#[derive(Clone, Debug, Serialize)]
pub struct Analysis {
    /// One report per layer, top-down.
    pub layers: Vec<LayerReport>,
    /// Bytes stored in all layers.
    pub total_bytes: u64,
    /// Bytes the merged view shows.
    pub seen_bytes: u64,
    pub wasted_bytes: u64,
    /// seen / total (1 when nothing is stored).
    pub efficiency: f64,
    /// The largest wasted files, largest first.
    pub top_wasted: Vec<Waste>,
}

/// Analyses `set`, listing the `top` largest wasted files.
pub fn analyze(set: &LayerSet, top: usize) -> ImageResult<Analysis> {
    let mut acc = Acc::new(set.len());
    walk(set, &mut acc)?;
    let mut layers = Vec::with_capacity(set.len());
    for (i, l) in set.layers.iter().enumerate() {
        let (added, changed, removed) = change_counts(set, i)?;
        layers.push(LayerReport {
            layer: i,
            name: l.name.clone(),
            diff_id: l.diff_id.clone(),
            blob_size: l.blob_size,
            created_by: l.created_by.clone(),
            comment: l.comment.clone(),
            size: acc.stored[i],
            files: acc.files[i],
            added,
            changed,
            removed,
            wasted: acc.stored[i] - acc.seen[i],
            wasted_files: acc.wasted_files[i],
        });
    }
    let total_bytes: u64 = acc.stored.iter().sum();
    let seen_bytes: u64 = acc.seen.iter().sum();
    let mut wastes = acc.wastes;
    wastes.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.path.0.cmp(&b.path.0)));
    wastes.truncate(top);
    Ok(Analysis {
        layers,
        total_bytes,
        seen_bytes,
        wasted_bytes: total_bytes - seen_bytes,
        efficiency: if total_bytes == 0 {
            1.0
        } else {
            seen_bytes as f64 / total_bytes as f64
        },
        top_wasted: wastes,
    })
}

/// One change of a layer against the layers below it, for `--tree`.
#[derive(Clone, Debug, Serialize)]
pub struct LayerChange {
    pub kind: char,
    pub path: ViewPath,
    /// Whether the layer holds a directory there (`false` for a deletion).
    pub dir: bool,
    /// For an added or changed regular file: its size.
    pub size: Option<u64>,
}

/// The changes layer `index` makes to the layers below it, sorted bytewise by path.
pub fn layer_changes(set: &LayerSet, index: usize) -> ImageResult<Vec<LayerChange>> {
    let lowers: Vec<PathBuf> = set.layers[index + 1..]
        .iter()
        .map(|l| l.path.clone())
        .collect();
    let layer = &set.layers[index].path;
    let root = sys::open_root(layer).map_err(ImageError::io("opening layer", layer))?;
    let mut out = Vec::new();
    for c in diff(layer, &lowers)? {
        let bytes = c.path.as_os_str().as_bytes().to_vec();
        let (dir, size) = if c.kind == ChangeKind::Deleted {
            (false, None)
        } else {
            let rel = OsStr::from_bytes(bytes.strip_prefix(b"/").unwrap_or(&bytes));
            match sys::stat_at(root.as_fd(), rel) {
                Ok(st) => match FileKind::from_mode(st.st_mode) {
                    Some(FileKind::Directory) => (true, None),
                    Some(FileKind::Regular) => (false, Some(st.st_size as u64)),
                    _ => (false, None),
                },
                Err(e) => return Err(ImageError::sys("stat", join_rel(layer, &bytes), e)),
            }
        };
        out.push(LayerChange {
            kind: c.kind.letter(),
            path: ViewPath(bytes),
            dir,
            size,
        });
    }
    Ok(out)
}

/// (added, changed, removed) of layer `index`, as the module header defines them.
fn change_counts(set: &LayerSet, index: usize) -> ImageResult<(u64, u64, u64)> {
    let mut n = (0, 0, 0);
    for c in layer_changes(set, index)? {
        match c.kind {
            'A' => n.0 += 1,
            'C' if !c.dir => n.1 += 1,
            'D' => n.2 += 1,
            _ => {}
        }
    }
    Ok(n)
}

/// Totals gathered by the walk, per layer.
struct Acc {
    stored: Vec<u64>,
    seen: Vec<u64>,
    files: Vec<u64>,
    wasted_files: Vec<u64>,
    wastes: Vec<Waste>,
    /// Hard-linked inodes per layer, decided once every name has been seen.
    linked: Vec<HashMap<(u64, u64), Linked>>,
}

struct Linked {
    size: u64,
    seen: bool,
    /// The first hidden name, reported if no name is seen.
    waste: Option<Waste>,
}

impl Acc {
    fn new(n: usize) -> Acc {
        Acc {
            stored: vec![0; n],
            seen: vec![0; n],
            files: vec![0; n],
            wasted_files: vec![0; n],
            wastes: Vec::new(),
            linked: (0..n).map(|_| HashMap::new()).collect(),
        }
    }

    /// Counts one name of a regular file: `hidden` is what hides it, if anything.
    fn file(&mut self, layer: usize, f: &FileMeta, path: &[u8], hidden: Option<(Cut, &[u8])>) {
        let waste = hidden.map(|(c, at)| Waste {
            path: ViewPath(path.to_vec()),
            layer,
            size: f.size,
            by: c.by,
            cause: c.cause,
            at: ViewPath(at.to_vec()),
        });
        if f.nlink > 1 {
            let e = self.linked[layer]
                .entry((f.dev, f.ino))
                .or_insert_with(|| Linked {
                    size: f.size,
                    seen: false,
                    waste: None,
                });
            match waste {
                None => e.seen = true,
                Some(w) if e.waste.is_none() => e.waste = Some(w),
                Some(_) => {}
            }
            return;
        }
        self.count(layer, f.size, waste);
    }

    fn count(&mut self, layer: usize, size: u64, waste: Option<Waste>) {
        self.stored[layer] += size;
        self.files[layer] += 1;
        match waste {
            None => self.seen[layer] += size,
            Some(w) => {
                self.wasted_files[layer] += 1;
                self.wastes.push(w);
            }
        }
    }

    /// Counts the hard-linked inodes.
    fn finish_links(&mut self) {
        for layer in 0..self.linked.len() {
            let linked = std::mem::take(&mut self.linked[layer]);
            for (_, l) in linked {
                let waste = if l.seen { None } else { l.waste };
                self.count(layer, l.size, waste);
            }
        }
    }
}

/// What the walk needs of a regular file.
struct FileMeta {
    size: u64,
    dev: u64,
    ino: u64,
    nlink: u64,
}

/// What one layer directory holds under one name.
enum Held {
    Whiteout,
    File(FileMeta),
    Dir { opaque: bool },
    Other(FileKind),
}

impl Held {
    fn probe(&self) -> Probe {
        match self {
            Held::Whiteout => Probe::Whiteout,
            Held::File(_) => Probe::Entry {
                kind: FileKind::Regular,
                opaque: false,
            },
            Held::Dir { opaque } => Probe::Entry {
                kind: FileKind::Directory,
                opaque: *opaque,
            },
            Held::Other(kind) => Probe::Entry {
                kind: *kind,
                opaque: false,
            },
        }
    }
}

/// A directory of the union tree: every layer holding a directory at `rel` (top-down),
/// each with what hides it, if anything (a cut and where it was made), and the
/// subdirectories still to visit. Only the directories on the current path are open.
struct Frame {
    rel: Vec<u8>,
    dirs: Vec<(usize, OwnedFd, Hidden)>,
    subdirs: Vec<Subdir>,
    next: usize,
}

/// What hides a layer's entry, and where the cut was made.
type Hidden = Option<(Cut, Vec<u8>)>;

/// A subdirectory: its name and, per layer holding a directory there (as positions in the
/// parent frame's `dirs`), what hides it.
struct Subdir {
    name: OsString,
    layers: Vec<(usize, Hidden)>,
}

/// Walks the union of all layers' trees, judging every name with [`blame`].
fn walk(set: &LayerSet, acc: &mut Acc) -> ImageResult<()> {
    let mut roots = Vec::with_capacity(set.len());
    let mut probes = Vec::with_capacity(set.len());
    for (i, l) in set.layers.iter().enumerate() {
        let fd = sys::open_root(&l.path).map_err(ImageError::io("opening layer", &l.path))?;
        let opaque = is_opaque_dir(fd.as_fd())
            .map_err(|e| ImageError::sys("reading opaque marker", &l.path, e))?;
        probes.push((
            i,
            Probe::Entry {
                kind: FileKind::Directory,
                opaque,
            },
        ));
        roots.push((i, fd));
    }
    let roles = blame(&probes);
    let dirs: Vec<_> = roots
        .into_iter()
        .zip(roles)
        .map(|((i, fd), role)| (i, fd, hidden_by(role, b"/")))
        .collect();
    let subdirs = visit(set, &[], &dirs, acc)?;
    let mut stack = vec![Frame {
        rel: Vec::new(),
        dirs,
        subdirs,
        next: 0,
    }];
    while let Some(top) = stack.last_mut() {
        let Some(sub) = top.subdirs.get(top.next) else {
            stack.pop();
            continue;
        };
        top.next += 1;
        let rel = child_rel(&top.rel, sub.name.as_bytes());
        let mut dirs = Vec::with_capacity(sub.layers.len());
        for (pos, hidden) in &sub.layers {
            let (layer, parent, _) = &top.dirs[*pos];
            let fd = sys::open_dir_at(parent.as_fd(), &sub.name).map_err(|e| {
                ImageError::sys("opening", join_rel(&set.layers[*layer].path, &rel), e)
            })?;
            dirs.push((*layer, fd, hidden.clone()));
        }
        let subdirs = visit(set, &rel, &dirs, acc)?;
        stack.push(Frame {
            rel,
            dirs,
            subdirs,
            next: 0,
        });
    }
    acc.finish_links();
    Ok(())
}

fn hidden_by(role: Role, at: &[u8]) -> Hidden {
    match role {
        Role::Hidden(c) => Some((c, at.to_vec())),
        _ => None,
    }
}

/// Lists one union directory (`dirs`: the layers holding it, top-down), counts its files
/// and returns its subdirectories in name order.
fn visit(
    set: &LayerSet,
    rel: &[u8],
    dirs: &[(usize, OwnedFd, Hidden)],
    acc: &mut Acc,
) -> ImageResult<Vec<Subdir>> {
    let err = |op: &'static str, layer: usize, rel: &[u8]| {
        let p = join_rel(&set.layers[layer].path, rel);
        move |e: Errno| ImageError::sys(op, p, e)
    };
    // name -> what each layer (as a position in `dirs`) holds there.
    let mut names: BTreeMap<OsString, Vec<(usize, Held)>> = BTreeMap::new();
    for (pos, (layer, fd, _)) in dirs.iter().enumerate() {
        let listing = list_layer_dir(*layer, fd.as_fd()).map_err(err("listing", *layer, rel))?;
        let mut whiteouts = Vec::new();
        for e in listing.entries {
            let held = match classify(e.name.as_bytes(), e.kind, e.rdev) {
                EntryClass::Visible => match e.kind {
                    FileKind::Regular => {
                        let st = sys::stat_at(fd.as_fd(), &e.name).map_err(err(
                            "stat",
                            *layer,
                            &child_rel(rel, e.name.as_bytes()),
                        ))?;
                        Held::File(FileMeta {
                            size: st.st_size as u64,
                            dev: st.st_dev,
                            ino: st.st_ino,
                            nlink: st.st_nlink,
                        })
                    }
                    FileKind::Directory => {
                        let r = child_rel(rel, e.name.as_bytes());
                        let d = sys::open_dir_at(fd.as_fd(), &e.name)
                            .map_err(err("opening", *layer, &r))?;
                        let opaque =
                            is_opaque_dir(d.as_fd()).map_err(err("reading", *layer, &r))?;
                        Held::Dir { opaque }
                    }
                    k => Held::Other(k),
                },
                EntryClass::Whiteout(t) => {
                    whiteouts.push(OsStr::from_bytes(t).to_os_string());
                    continue;
                }
                EntryClass::OpaqueMarker | EntryClass::Hidden => continue,
            };
            names.entry(e.name).or_default().push((pos, held));
        }
        // A layer holding both a name and its whiteout shows the name.
        for t in whiteouts {
            let v = names.entry(t).or_default();
            if !v.iter().any(|(p, _)| *p == pos) {
                v.push((pos, Held::Whiteout));
            }
        }
    }
    let mut subdirs = Vec::new();
    for (name, mut held) in names {
        held.sort_by_key(|(pos, _)| *pos);
        let child = child_rel(rel, name.as_bytes());
        let mut path = Vec::with_capacity(child.len() + 1);
        path.push(b'/');
        path.extend_from_slice(&child);
        // Only the layers not hidden at the parent take part in the rules here.
        let live: Vec<(usize, Probe)> = held
            .iter()
            .filter(|(pos, _)| dirs[*pos].2.is_none())
            .map(|(pos, h)| (*pos, h.probe()))
            .collect();
        let by_layer: Vec<(usize, Probe)> =
            live.iter().map(|(pos, p)| (dirs[*pos].0, *p)).collect();
        let roles: HashMap<usize, Role> = live
            .iter()
            .map(|(pos, _)| *pos)
            .zip(blame(&by_layer))
            .collect();
        let mut layers = Vec::new();
        for (pos, h) in held {
            let hidden = match &dirs[pos].2 {
                Some(c) => Some(c.clone()),
                None => hidden_by(roles.get(&pos).copied().unwrap_or(Role::Absent), &path),
            };
            match h {
                Held::File(f) => acc.file(
                    dirs[pos].0,
                    &f,
                    &path,
                    hidden.as_ref().map(|(c, at)| (*c, at.as_slice())),
                ),
                Held::Dir { .. } => layers.push((pos, hidden)),
                Held::Whiteout | Held::Other(_) => {}
            }
        }
        if !layers.is_empty() {
            subdirs.push(Subdir { name, layers });
        }
    }
    Ok(subdirs)
}
