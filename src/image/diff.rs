//! What an upper layer changed against the lower layers below it, with `docker diff`'s
//! rules (docs/diff.md has the full account and why).
//!
//! The old view is the lower layers' merged view alone; the new view adds the upper layer.
//! Every entry of the upper layer is a change, so a walk of the upper layer finds them all:
//! - an upper entry the old view shows at its path is `C` (content, metadata or a copy-up:
//!   the upper layer holds nothing unchanged), otherwise `A`; this also makes every
//!   directory holding a change `C` (or `A`), as docker reports the parent of each change;
//! - a whiteout (character device 0/0 or `.wh.NAME`) is `D` when the old view shows the
//!   name, and is ignored otherwise;
//! - an opaque upper directory over a directory of the old view is `C`, with `D` for each
//!   name the old directory showed that the upper directory does not hold, and `A`/`C` for
//!   its own entries, as docker's `ChangesDirs` reports it for overlay2; the same holds for
//!   every directory below it (the new view no longer reaches the lower layers there);
//! - below a deleted or replaced directory nothing more is reported.
//!
//! Paths are absolute within the image (`/etc/passwd`), raw bytes, sorted bytewise. The
//! walk is fd-relative and never follows a symlink; the lower directories are listed once
//! each, and only where the upper layer has a directory (see [`super::lower`]).
//! Output formats (text lines, JSON) are in [`output`].

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::lower::{LowerDir, LowerView};
use super::{ImageError, ImageResult, child_rel, join_rel, upper};
use crate::layer::FileKind;
use crate::layer::whiteout::{EntryClass, classify};
use crate::sys::{self, Errno};

pub mod output;

pub use output::{parse_line, to_json, write_text};

/// The kind of a change, as `docker diff` prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// `A`: the path is new.
    Added,
    /// `C`: the path existed and was changed (content, metadata, or what is below it).
    Changed,
    /// `D`: the path was removed.
    Deleted,
}

impl ChangeKind {
    /// `A`, `C` or `D`.
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Changed => 'C',
            ChangeKind::Deleted => 'D',
        }
    }

    /// The kind a letter stands for.
    pub fn from_letter(c: u8) -> Option<ChangeKind> {
        match c {
            b'A' => Some(ChangeKind::Added),
            b'C' => Some(ChangeKind::Changed),
            b'D' => Some(ChangeKind::Deleted),
            _ => None,
        }
    }
}

/// One change: its kind and its absolute path within the image (bytes preserved).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Change {
    pub kind: ChangeKind,
    pub path: PathBuf,
}

/// What one name of an upper directory means for the diff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UpperName<'a> {
    /// A real entry of that name.
    Entry(&'a OsStr),
    /// A whiteout hiding that name.
    Whiteout(&'a OsStr),
}

/// The changes among the children of one upper directory (the directory itself is reported
/// by its parent). `rel` is the directory's path relative to the root; `opaque` whether the
/// upper directory is opaque; `lower` the names the old view shows in that directory, or
/// `None` when the old view has no directory there. Pure, so the rules are table-tested.
fn dir_changes(
    rel: &[u8],
    names: &[UpperName<'_>],
    opaque: bool,
    lower: Option<&HashMap<OsString, FileKind>>,
    out: &mut Vec<(ChangeKind, Vec<u8>)>,
) {
    let shows = |n: &OsStr| lower.is_some_and(|l| l.contains_key(n));
    let abs = |n: &OsStr| {
        let mut p = Vec::with_capacity(rel.len() + n.len() + 2);
        p.push(b'/');
        p.extend_from_slice(&child_rel(rel, n.as_bytes()));
        p
    };
    let entries: HashSet<&OsStr> = names
        .iter()
        .filter_map(|n| match n {
            UpperName::Entry(e) => Some(*e),
            UpperName::Whiteout(_) => None,
        })
        .collect();
    let mut deleted: HashSet<&OsStr> = HashSet::new();
    for n in names {
        match *n {
            UpperName::Entry(e) => {
                let kind = if shows(e) {
                    ChangeKind::Changed
                } else {
                    ChangeKind::Added
                };
                out.push((kind, abs(e)));
            }
            // A layer holding both a name and its whiteout shows the name: not a deletion.
            UpperName::Whiteout(t) if shows(t) && !entries.contains(t) => {
                if deleted.insert(t) {
                    out.push((ChangeKind::Deleted, abs(t)));
                }
            }
            UpperName::Whiteout(_) => {}
        }
    }
    if let (true, Some(lower)) = (opaque, lower) {
        for name in lower.keys() {
            let name = name.as_os_str();
            if !entries.contains(name) && deleted.insert(name) {
                out.push((ChangeKind::Deleted, abs(name)));
            }
        }
    }
}

/// One upper directory being walked, with its subdirectories still to visit.
struct Frame {
    rel: Vec<u8>,
    fd: OwnedFd,
    lower: Option<LowerDir>,
    /// Whether the new view shows nothing of the lower layers here: the directory or one
    /// of its ancestors in the upper layer is opaque.
    opaque: bool,
    subdirs: Vec<OsString>,
    next: usize,
}

/// The changes of the upper layer `upper` against the lower layers `lowers` (top-most
/// first), sorted bytewise by path.
pub fn diff(upper: &Path, lowers: &[PathBuf]) -> ImageResult<Vec<Change>> {
    let view = LowerView::open(lowers)?;
    let root = sys::open_root(upper).map_err(ImageError::io("opening upper layer", upper))?;
    let mut raw = Vec::new();
    let first = visit(upper, Vec::new(), root, view.root()?, false, &mut raw)?;
    // Heap-allocated depth-first walk: only the directories on the current path are open.
    let mut stack = vec![first];
    while let Some(top) = stack.last_mut() {
        let Some(name) = top.subdirs.get(top.next).cloned() else {
            stack.pop();
            continue;
        };
        top.next += 1;
        let rel = child_rel(&top.rel, name.as_bytes());
        let fd = match sys::open_dir_at(top.fd.as_fd(), &name) {
            Ok(fd) => fd,
            // Removed since it was listed (a live upper layer).
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(ImageError::sys("opening", join_rel(upper, &rel), e)),
        };
        let lower = match &top.lower {
            Some(l) => view.child(l, &name)?,
            None => None,
        };
        let frame = visit(upper, rel, fd, lower, top.opaque, &mut raw)?;
        stack.push(frame);
    }
    raw.sort_unstable_by(|a, b| a.1.cmp(&b.1));
    Ok(raw
        .into_iter()
        .map(|(kind, p)| Change {
            kind,
            path: PathBuf::from(OsString::from_vec(p)),
        })
        .collect())
}

/// Reads one upper directory, records the changes among its children, and returns its
/// frame with the subdirectories to visit. Below an opaque upper directory every
/// directory is opaque in effect: the new view no longer reaches the lower layers there.
fn visit(
    upper: &Path,
    rel: Vec<u8>,
    fd: OwnedFd,
    lower: Option<LowerDir>,
    parent_opaque: bool,
    out: &mut Vec<(ChangeKind, Vec<u8>)>,
) -> ImageResult<Frame> {
    let path = || join_rel(upper, &rel);
    let mut opaque = parent_opaque || upper::dir_opaque_by_xattr(fd.as_fd(), path)?;
    let entries = upper::read_dir(fd.as_fd(), false, path)?;
    let mut names = Vec::with_capacity(entries.len());
    let mut subdirs = Vec::new();
    for e in &entries {
        match classify(e.name.as_bytes(), e.kind, e.rdev) {
            EntryClass::Visible => {
                names.push(UpperName::Entry(&e.name));
                if e.kind == FileKind::Directory {
                    subdirs.push(e.name.clone());
                }
            }
            EntryClass::Whiteout(t) => names.push(UpperName::Whiteout(OsStr::from_bytes(t))),
            EntryClass::OpaqueMarker => opaque = true,
            EntryClass::Hidden => {}
        }
    }
    dir_changes(
        &rel,
        &names,
        opaque,
        lower.as_ref().map(LowerDir::shown),
        out,
    );
    Ok(Frame {
        rel,
        fd,
        lower,
        opaque,
        subdirs,
        next: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lower(names: &[(&str, FileKind)]) -> HashMap<OsString, FileKind> {
        names.iter().map(|(n, k)| (OsString::from(n), *k)).collect()
    }

    fn run(
        rel: &str,
        upper: &[(&'static str, bool)],
        opaque: bool,
        low: Option<&HashMap<OsString, FileKind>>,
    ) -> Vec<String> {
        let names: Vec<UpperName> = upper
            .iter()
            .map(|(n, wh)| {
                if *wh {
                    UpperName::Whiteout(OsStr::new(n))
                } else {
                    UpperName::Entry(OsStr::new(n))
                }
            })
            .collect();
        let mut out = Vec::new();
        dir_changes(rel.as_bytes(), &names, opaque, low, &mut out);
        let mut lines: Vec<String> = out
            .into_iter()
            .map(|(k, p)| format!("{} {}", k.letter(), String::from_utf8(p).unwrap()))
            .collect();
        lines.sort();
        lines
    }

    const E: bool = false;
    const WH: bool = true;

    #[test]
    fn docker_rules_table() {
        use FileKind::*;
        let low = lower(&[("a", Regular), ("d", Directory), ("s", Symlink)]);
        // (dir, upper names, opaque, lower listing, expected lines)
        type Case<'a> = (
            &'a str,
            Vec<(&'static str, bool)>,
            bool,
            Option<&'a HashMap<OsString, FileKind>>,
            Vec<&'a str>,
        );
        let cases: Vec<Case> = vec![
            // New name: A. Name the lowers show: C (even a copy-up with nothing else changed).
            (
                "",
                vec![("new", E), ("a", E)],
                false,
                Some(&low),
                vec!["A /new", "C /a"],
            ),
            // A directory present below is C; one the lowers do not have is A.
            (
                "etc",
                vec![("d", E), ("e", E)],
                false,
                Some(&low),
                vec!["A /etc/e", "C /etc/d"],
            ),
            // Whiteout of a shown name: D; of a name the lowers do not show: ignored.
            (
                "",
                vec![("a", WH), ("zz", WH)],
                false,
                Some(&low),
                vec!["D /a"],
            ),
            // A layer holding both a name and its whiteout shows the name: C, not D.
            (
                "",
                vec![("a", WH), ("a", E)],
                false,
                Some(&low),
                vec!["C /a"],
            ),
            // No lower directory here: everything is A, whiteouts hide nothing.
            ("x", vec![("a", E), ("b", WH)], false, None, vec!["A /x/a"]),
            // Opaque over a lower directory: D for each lower name not held, A/C for own.
            (
                "o",
                vec![("a", E), ("n", E)],
                true,
                Some(&low),
                vec!["A /o/n", "C /o/a", "D /o/d", "D /o/s"],
            ),
            // Opaque with a redundant whiteout: one D per name.
            (
                "o",
                vec![("d", WH)],
                true,
                Some(&low),
                vec!["D /o/a", "D /o/d", "D /o/s"],
            ),
            // Opaque over nothing: only additions.
            ("o", vec![("a", E)], true, None, vec!["A /o/a"]),
        ];
        for (i, (rel, upper, opaque, low, want)) in cases.into_iter().enumerate() {
            assert_eq!(run(rel, &upper, opaque, low), want, "case {i}");
        }
    }
}
