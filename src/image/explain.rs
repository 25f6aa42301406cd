//! Why the merged view shows what it shows at one path (`ufsd explain`).
//!
//! The path is walked one component at a time down every layer of a [`LayerSet`], reading
//! the layer directories themselves (never a mount, never following a symlink stored in a
//! layer). At each component the layers that still reach the parent directory are judged
//! by [`crate::layer::blame`] (the union rules, going on past the winner to name who hides
//! whom); a layer hidden at an ancestor stays hidden below it, with that ancestor named as
//! the cause. Layers hidden higher up are still read down to the path, so the explanation
//! can say "layer 1 has a copy, but /etc was made opaque in layer 3".
//!
//! The result is plain data (serialisable as JSON); [`render`] turns it into text.

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use serde::{Serialize, Serializer};

use super::layerset::LayerSet;
use super::rfc3339;
use super::{ImageError, ImageResult, join_rel};
use crate::layer::FileKind;
use crate::layer::blame::{Cause, Role as LevelRole, blame};
use crate::layer::merge::merge_listings;
use crate::layer::resolve::{Probe, Resolver, Step};
use crate::layer::stack::list_layer_dir;
use crate::layer::whiteout::{EntryClass, classify, is_reserved_name};
use crate::sys::{self, Errno};

mod probe;
pub mod render;

use probe::{Found, find, nothing, opaque_format};

/// A path inside the merged view, as raw bytes (`/etc/passwd`). In JSON a UTF-8 path is a
/// string; any other is `{"b64": "..."}` (standard base64), so no name is altered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewPath(pub Vec<u8>);

impl Serialize for ViewPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(p) => s.serialize_str(p),
            Err(_) => {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("b64", &super::diff::output::base64(&self.0))?;
                m.end()
            }
        }
    }
}

impl ViewPath {
    /// The path as text for people (control bytes quoted as `ufsd diff` does).
    pub fn display(&self) -> String {
        String::from_utf8_lossy(&super::diff::output::quote_path(&self.0)).into_owned()
    }
}

/// How a whiteout is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WhiteoutFormat {
    /// overlayfs: a character device 0/0 with the hidden name.
    Device,
    /// OCI: an empty file `.wh.NAME` beside it.
    WhFile,
}

/// How a directory is marked opaque.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OpaqueFormat {
    /// overlayfs: `trusted.overlay.opaque=y`.
    TrustedXattr,
    /// overlayfs (user namespaces, `userxattr`): `user.overlay.opaque=y`.
    UserXattr,
    /// OCI: a `.wh..wh..opq` file inside.
    Marker,
}

/// What one layer directory holds at the path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "holds", rename_all = "snake_case")]
pub enum Holds {
    Nothing,
    Entry {
        kind: &'static str,
        /// File size (apparent bytes); 0 for anything but a regular file.
        size: u64,
        /// For an opaque directory, how it is marked.
        opaque: Option<OpaqueFormat>,
        /// For a symlink, its target.
        target: Option<ViewPath>,
    },
    Whiteout {
        format: WhiteoutFormat,
    },
}

/// What the layer's entry is in the merged view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Role {
    /// The layer holds nothing there.
    Absent,
    /// Its entry is the one the merged view shows.
    Shown,
    /// Its directory is merged into the directory shown.
    Merged,
    /// It holds a whiteout that hides the name in `hides` (the layers below holding it).
    Whiteout { hides: Vec<usize> },
    /// Its entry is hidden by layer `by`, at `at` (the path itself or an ancestor).
    Hidden {
        by: usize,
        cause: Cause,
        at: ViewPath,
        /// How the hiding whiteout or opaque directory is written, when that is the cause.
        whiteout: Option<WhiteoutFormat>,
        opaque: Option<OpaqueFormat>,
    },
}

/// One layer's line of the explanation.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Index top-down into the layer set.
    pub layer: usize,
    pub name: String,
    pub diff_id: Option<String>,
    #[serde(flatten)]
    pub holds: Holds,
    #[serde(flatten)]
    pub role: Role,
}

/// What the merged view shows at the path.
#[derive(Clone, Debug, Serialize)]
pub struct Shown {
    pub layer: usize,
    pub kind: &'static str,
}

/// An entry of the upper layer that also exists below: copied up (or deleted and
/// created again: an upper layer does not record which).
#[derive(Clone, Debug, Serialize)]
pub struct CopyUp {
    /// The layer of the lower entry it covers.
    pub from: usize,
    /// When the upper copy was made (RFC 3339), if known.
    pub time: Option<String>,
    /// `birth` (statx birth time of the upper copy) or `ctime` (last status change: where
    /// the filesystem records no birth time; a later chmod or write moves it).
    pub time_source: &'static str,
}

/// One layer's share of a merged directory's listing.
#[derive(Clone, Debug, Serialize)]
pub struct ListingShare {
    pub layer: usize,
    /// Names the merged listing takes from this layer.
    pub shown: u64,
    /// Names this layer's directory holds (whiteouts and markers not counted).
    pub held: u64,
    /// Whiteouts in this layer's directory.
    pub whiteouts: u64,
    pub opaque: Option<OpaqueFormat>,
}

/// An ancestor that the merged view shows as something other than a directory, so the
/// path does not exist (explain follows no symlinks, not even the merged view's).
#[derive(Clone, Debug, Serialize)]
pub struct Blocked {
    pub at: ViewPath,
    pub layer: usize,
    pub kind: &'static str,
    pub target: Option<ViewPath>,
}

/// The full answer for one path.
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    pub path: ViewPath,
    /// What the merged view shows, if anything.
    pub shown: Option<Shown>,
    /// One row per layer, top-down.
    pub layers: Vec<Row>,
    pub copy_up: Option<CopyUp>,
    /// For a directory: the layers its listing is merged from, top-down.
    pub listing: Option<Vec<ListingShare>>,
    /// Names in the merged listing.
    pub listing_total: Option<u64>,
    pub blocked: Option<Blocked>,
}

/// A cut as the explanation records it, with the formats of the responsible marker.
#[derive(Clone, Debug)]
struct CutAt {
    by: usize,
    cause: Cause,
    at: Vec<u8>,
    whiteout: Option<WhiteoutFormat>,
    opaque: Option<OpaqueFormat>,
}

/// The path's components; `..`, and names the merged view can never show, are refused.
fn components(path: &[u8]) -> ImageResult<Vec<&[u8]>> {
    let mut out = Vec::new();
    for c in path.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                return Err(ImageError::Invalid(format!(
                    "{}: `..` is not allowed: give the path as the merged view shows it",
                    String::from_utf8_lossy(path)
                )));
            }
            c if is_reserved_name(c) => {
                return Err(ImageError::Invalid(format!(
                    "{}: names beginning with `.wh.` never appear in the merged view: they \
                     are whiteouts and opaque markers; explain the name they stand for",
                    String::from_utf8_lossy(path)
                )));
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Explains `path` (absolute within the merged view; a leading `/` is optional) in the
/// layers of `set`.
pub fn explain(set: &LayerSet, path: &[u8]) -> ImageResult<Explanation> {
    let comps = components(path)?;
    let n = set.len();
    let upper = set.upper();
    let err = |op: &'static str, i: usize, rel: &[u8]| {
        let p = join_rel(&set.layers[i].path, rel);
        move |e: Errno| ImageError::sys(op, p, e)
    };
    // Per layer: what it holds at the current prefix (the root first).
    let mut found: Vec<Found> = Vec::with_capacity(n);
    for (i, l) in set.layers.iter().enumerate() {
        let root = sys::open_root(&l.path).map_err(ImageError::io("opening layer", &l.path))?;
        let opaque = opaque_format(root.as_fd()).map_err(err("reading", i, b""))?;
        let st = sys::stat_fd(root.as_fd()).map_err(err("stat", i, b""))?;
        found.push(Found {
            holds: Holds::Entry {
                kind: FileKind::Directory.name(),
                size: 0,
                opaque,
                target: None,
            },
            probe: Probe::Entry {
                kind: FileKind::Directory,
                opaque: opaque.is_some(),
            },
            dir: Some(root),
            ctime: Some((st.st_ctime, st.st_ctime_nsec as u32)),
        });
    }
    let mut cuts: Vec<Option<CutAt>> = vec![None; n];
    let mut roles = judge(&found, &mut cuts, b"/");
    let mut parents: Vec<Option<OwnedFd>> = Vec::new();
    let mut rel: Vec<u8> = Vec::new();
    let mut blocked = None;
    for (depth, comp) in comps.iter().enumerate() {
        // The merged view must show a directory at the parent for the path to exist.
        if blocked.is_none()
            && let Some(w) = roles.iter().position(|r| *r == LevelRole::Shown)
            && let Probe::Entry { kind, .. } = found[w].probe
            && !kind.is_dir()
        {
            let target = match &found[w].holds {
                Holds::Entry { target, .. } => target.clone(),
                _ => None,
            };
            blocked = Some(Blocked {
                at: ViewPath(abs(&rel)),
                layer: w,
                kind: kind.name(),
                target,
            });
        }
        if depth > 0 {
            rel.push(b'/');
        }
        rel.extend_from_slice(comp);
        let name = OsStr::from_bytes(comp);
        let mut next = Vec::with_capacity(n);
        parents = Vec::with_capacity(n);
        for (i, f) in found.into_iter().enumerate() {
            let here = match &f.dir {
                Some(d) => find(d.as_fd(), name).map_err(err("reading", i, &rel))?,
                None => nothing(),
            };
            next.push(here);
            parents.push(f.dir);
        }
        found = next;
        roles = judge(&found, &mut cuts, &abs(&rel));
    }
    // What the merged view shows, and the rows.
    let shown = roles
        .iter()
        .position(|r| *r == LevelRole::Shown)
        .filter(|_| blocked.is_none())
        .map(|w| Shown {
            layer: w,
            kind: match found[w].probe {
                Probe::Entry { kind, .. } => kind.name(),
                _ => "?",
            },
        });
    let mut rows = Vec::with_capacity(n);
    for (i, f) in found.iter().enumerate() {
        let role = match (&f.holds, &cuts[i], roles[i]) {
            (Holds::Nothing, _, _) => Role::Absent,
            (_, Some(c), _) => Role::Hidden {
                by: c.by,
                cause: c.cause,
                at: ViewPath(c.at.clone()),
                whiteout: c.whiteout,
                opaque: c.opaque,
            },
            (_, None, LevelRole::Shown) if blocked.is_none() => Role::Shown,
            (_, None, LevelRole::Merged) if blocked.is_none() => Role::Merged,
            (_, None, LevelRole::Whiteout) => Role::Whiteout {
                hides: (i + 1..n)
                    .filter(|j| {
                        matches!(&cuts[*j], Some(c) if c.by == i && c.at == abs(&rel))
                            && !matches!(found[*j].holds, Holds::Nothing)
                    })
                    .collect(),
            },
            _ => Role::Absent,
        };
        let l = &set.layers[i];
        rows.push(Row {
            layer: i,
            name: l.name.clone(),
            diff_id: l.diff_id.clone(),
            holds: f.holds.clone(),
            role,
        });
    }
    let final_path = abs(&rel);
    let reached: Vec<usize> = (0..n)
        .filter(|i| cuts[*i].as_ref().is_none_or(|c| c.at == final_path))
        .collect();
    let copy_up = match (&shown, upper, comps.last()) {
        (Some(s), Some(u), Some(last)) if s.layer == u => {
            copy_up_of(&found, &reached, &parents, u, last).map_err(err("stat", u, &rel))?
        }
        _ => None,
    };
    let (listing, listing_total) = match &shown {
        Some(s) if s.kind == FileKind::Directory.name() => {
            let (shares, total) = listing_shares(&found, &rows).map_err(err("listing", 0, &rel))?;
            (Some(shares), Some(total))
        }
        _ => (None, None),
    };
    Ok(Explanation {
        path: ViewPath(abs(&rel)),
        shown,
        layers: rows,
        copy_up,
        listing,
        listing_total,
        blocked,
    })
}

fn abs(rel: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(rel.len() + 1);
    p.push(b'/');
    p.extend_from_slice(rel);
    p
}

/// Judges one level: the layers that still reach it (not cut above, and holding a
/// directory at the parent, which is what `found` holds when its parent had a `dir`) are
/// fed to [`blame`]; new cuts are recorded with `at` and the marker's format.
fn judge(found: &[Found], cuts: &mut [Option<CutAt>], at: &[u8]) -> Vec<LevelRole> {
    let live: Vec<usize> = (0..found.len()).filter(|i| cuts[*i].is_none()).collect();
    let probes: Vec<(usize, Probe)> = live.iter().map(|i| (*i, found[*i].probe)).collect();
    let mut roles = vec![LevelRole::Absent; found.len()];
    for (&i, role) in live.iter().zip(blame(&probes)) {
        roles[i] = role;
        if let LevelRole::Hidden(c) = role {
            let marker = &found[c.by].holds;
            cuts[i] = Some(CutAt {
                by: c.by,
                cause: c.cause,
                at: at.to_vec(),
                whiteout: match marker {
                    Holds::Whiteout { format } if c.cause == Cause::WhitedOut => Some(*format),
                    _ => None,
                },
                opaque: match marker {
                    Holds::Entry { opaque, .. } if c.cause == Cause::Opaque => *opaque,
                    _ => None,
                },
            });
        }
    }
    roles
}

/// The copy-up record of the upper layer's winning entry, from the resolver's origin.
/// `reached` are the layers that reach the entry's parent directory in the merged view.
fn copy_up_of(
    found: &[Found],
    reached: &[usize],
    parents: &[Option<OwnedFd>],
    u: usize,
    name: &[u8],
) -> Result<Option<CopyUp>, Errno> {
    let mut r = Resolver::new(Some(u));
    for &i in reached {
        if r.feed(i, found[i].probe) == Step::Done {
            break;
        }
    }
    let Some(from) = r.finish().origin else {
        return Ok(None);
    };
    let Some(parent) = &parents[u] else {
        return Ok(None);
    };
    let (time, time_source) = match sys::birth_time_at(parent.as_fd(), OsStr::from_bytes(name)) {
        Ok(Some(t)) => (Some(t), "birth"),
        Ok(None) | Err(Errno::ENOSYS) | Err(Errno::EINVAL) => (found[u].ctime, "ctime"),
        Err(e) => return Err(e),
    };
    Ok(Some(CopyUp {
        from,
        time: time.map(|(s, _)| rfc3339::format(s)),
        time_source,
    }))
}

/// Each merged layer's share of a directory's listing.
fn listing_shares(found: &[Found], rows: &[Row]) -> Result<(Vec<ListingShare>, u64), Errno> {
    let mut listings = Vec::new();
    let mut shares = Vec::new();
    for row in rows {
        if !matches!(row.role, Role::Shown | Role::Merged) {
            continue;
        }
        let Some(dir) = &found[row.layer].dir else {
            continue;
        };
        let listing = list_layer_dir(row.layer, dir.as_fd())?;
        let (mut held, mut whiteouts) = (0, 0);
        for e in &listing.entries {
            match classify(e.name.as_bytes(), e.kind, e.rdev) {
                EntryClass::Visible => held += 1,
                EntryClass::Whiteout(_) => whiteouts += 1,
                EntryClass::OpaqueMarker | EntryClass::Hidden => {}
            }
        }
        let opaque = match &row.holds {
            Holds::Entry { opaque, .. } => *opaque,
            _ => None,
        };
        shares.push(ListingShare {
            layer: row.layer,
            shown: 0,
            held,
            whiteouts,
            opaque,
        });
        listings.push(listing);
    }
    let merged = merge_listings(&listings, None);
    for m in &merged {
        if let Some(s) = shares.iter_mut().find(|s| s.layer == m.layer) {
            s.shown += 1;
        }
    }
    Ok((shares, merged.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_refuse_dotdot_and_markers() {
        assert_eq!(
            components(b"/etc//./passwd/").unwrap(),
            vec![&b"etc"[..], &b"passwd"[..]]
        );
        assert!(components(b"/").unwrap().is_empty());
        assert!(components(b"etc/../x").is_err());
        let e = components(b"/etc/.wh.passwd").unwrap_err().to_string();
        assert!(e.contains("never appear in the merged view"), "{e}");
        assert!(components(b"/.wh..wh..opq").is_err());
    }

    #[test]
    fn view_paths_serialise_raw_bytes() {
        let p = serde_json::to_string(&ViewPath(b"/etc".to_vec())).unwrap();
        assert_eq!(p, "\"/etc\"");
        let p = serde_json::to_string(&ViewPath(b"/\xff".to_vec())).unwrap();
        assert_eq!(p, r#"{"b64":"L/8="}"#);
        assert_eq!(ViewPath(b"/a\nb".to_vec()).display(), "\"/a\\nb\"");
    }
}
