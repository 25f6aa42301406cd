//! The merged listing of a directory, as a pure function of the listings of the layer
//! directories it is made of.
//!
//! Input: the directories that [`super::resolve`] found merged, top-down, each with its
//! classified entries. Output: every visible name once, taken from the top-most layer that
//! holds it, in a stable order (layer by layer, each layer in the order its directory
//! listed), so the same directory lists the same way every time.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;

use super::kind::FileKind;
use super::whiteout::{EntryClass, classify};

/// One raw entry of one layer directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerEntry {
    pub name: OsString,
    pub kind: FileKind,
    /// `st_rdev`, needed only to recognise a 0/0 whiteout device.
    pub rdev: u64,
    pub ino: u64,
}

/// The entries of one layer directory.
#[derive(Clone, Debug)]
pub struct LayerListing {
    pub layer: usize,
    pub entries: Vec<LayerEntry>,
}

/// One name of the merged listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergedEntry {
    pub name: OsString,
    pub kind: FileKind,
    /// The layer the entry is taken from, and its inode number there.
    pub layer: usize,
    pub ino: u64,
    /// For an entry in the upper layer: the lower entry it shadows when of the same type
    /// (see [`super::resolve`]), as (layer, inode number).
    pub origin: Option<(usize, u64)>,
}

enum Seen {
    /// Shown; the index into the output and whether its origin is still being sought.
    Shown { index: usize, seeking_origin: bool },
    /// Hidden by a whiteout.
    WhitedOut,
}

/// Merges the listings of a directory's layers (top-down). `upper` is the layer index of the
/// writable layer, if any.
pub fn merge_listings(listings: &[LayerListing], upper: Option<usize>) -> Vec<MergedEntry> {
    let mut out: Vec<MergedEntry> = Vec::new();
    let mut seen: HashMap<OsString, Seen> = HashMap::new();
    for listing in listings {
        let mut whiteouts: Vec<OsString> = Vec::new();
        // Entries first, whiteouts after: a whiteout hides the layers *below* its own.
        for e in &listing.entries {
            match classify(e.name.as_bytes(), e.kind, e.rdev) {
                EntryClass::Visible => {}
                EntryClass::Whiteout(target) => {
                    whiteouts.push(OsString::from(std::ffi::OsStr::from_bytes(target)));
                    continue;
                }
                EntryClass::OpaqueMarker | EntryClass::Hidden => continue,
            }
            match seen.get_mut(&e.name) {
                None => {
                    seen.insert(
                        e.name.clone(),
                        Seen::Shown {
                            index: out.len(),
                            seeking_origin: upper == Some(listing.layer),
                        },
                    );
                    out.push(MergedEntry {
                        name: e.name.clone(),
                        kind: e.kind,
                        layer: listing.layer,
                        ino: e.ino,
                        origin: None,
                    });
                }
                Some(Seen::Shown {
                    index,
                    seeking_origin,
                }) if *seeking_origin => {
                    *seeking_origin = false;
                    if out[*index].kind == e.kind {
                        out[*index].origin = Some((listing.layer, e.ino));
                    }
                }
                Some(_) => {}
            }
        }
        for name in whiteouts {
            match seen.get_mut(&name) {
                None => {
                    seen.insert(name, Seen::WhitedOut);
                }
                Some(Seen::Shown { seeking_origin, .. }) => *seeking_origin = false,
                Some(Seen::WhitedOut) => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use FileKind::*;

    fn entry(name: &str, kind: FileKind, ino: u64) -> LayerEntry {
        LayerEntry {
            name: name.into(),
            kind,
            rdev: 0,
            ino,
        }
    }

    fn listing(layer: usize, entries: Vec<LayerEntry>) -> LayerListing {
        LayerListing { layer, entries }
    }

    fn names(m: &[MergedEntry]) -> Vec<(String, usize)> {
        m.iter()
            .map(|e| (e.name.to_string_lossy().into_owned(), e.layer))
            .collect()
    }

    #[test]
    fn dedup_and_top_wins() {
        let m = merge_listings(
            &[
                listing(0, vec![entry("a", Regular, 10), entry("b", Directory, 11)]),
                listing(1, vec![entry("a", Regular, 20), entry("c", Symlink, 21)]),
            ],
            None,
        );
        assert_eq!(
            names(&m),
            vec![("a".into(), 0), ("b".into(), 0), ("c".into(), 1)]
        );
        assert_eq!(m[0].ino, 10);
    }

    #[test]
    fn whiteouts_in_both_formats_hide_lower_names() {
        let m = merge_listings(
            &[
                listing(
                    0,
                    vec![
                        entry("x", CharDevice, 1),
                        entry(".wh.y", Regular, 2),
                        entry(".wh..wh..opq", Regular, 3),
                        entry("keep", Regular, 4),
                    ],
                ),
                listing(
                    1,
                    vec![
                        entry("x", Regular, 5),
                        entry("y", Directory, 6),
                        entry("z", Fifo, 7),
                    ],
                ),
            ],
            None,
        );
        assert_eq!(names(&m), vec![("keep".into(), 0), ("z".into(), 1)]);
    }

    #[test]
    fn whiteout_hides_only_below_its_own_layer() {
        let m = merge_listings(
            &[
                listing(0, vec![entry(".wh.a", Regular, 1)]),
                listing(1, vec![entry("a", Regular, 2), entry(".wh.b", Regular, 3)]),
                listing(2, vec![entry("a", Regular, 4), entry("b", Regular, 5)]),
            ],
            None,
        );
        assert!(m.is_empty(), "{m:?}");
        // A layer that holds both a name and its whiteout shows the name.
        let m = merge_listings(
            &[listing(
                0,
                vec![entry(".wh.a", Regular, 1), entry("a", Regular, 2)],
            )],
            None,
        );
        assert_eq!(names(&m), vec![("a".into(), 0)]);
    }

    #[test]
    fn aufs_bookkeeping_is_hidden() {
        let m = merge_listings(
            &[listing(
                0,
                vec![
                    entry(".wh..wh.plnk", Directory, 1),
                    entry(".wh..wh.aufs", Regular, 2),
                ],
            )],
            None,
        );
        assert!(m.is_empty());
    }

    #[test]
    fn real_devices_are_shown() {
        let mut dev = entry("null", CharDevice, 1);
        dev.rdev = libc::makedev(1, 3);
        let m = merge_listings(&[listing(0, vec![dev])], None);
        assert_eq!(names(&m), vec![("null".into(), 0)]);
    }

    #[test]
    fn origin_of_upper_entries() {
        let m = merge_listings(
            &[
                listing(
                    0,
                    vec![
                        entry("f", Regular, 100),
                        entry("g", Regular, 101),
                        entry("h", Regular, 102),
                        entry("d", Directory, 103),
                    ],
                ),
                listing(
                    1,
                    vec![
                        entry("f", Regular, 200),
                        entry("g", Symlink, 201),
                        entry(".wh.h", Regular, 202),
                        entry("d", Directory, 203),
                    ],
                ),
                listing(2, vec![entry("h", Regular, 300)]),
            ],
            Some(0),
        );
        let origin = |n: &str| m.iter().find(|e| e.name == n).and_then(|e| e.origin);
        assert_eq!(origin("f"), Some((1, 200)));
        assert_eq!(origin("g"), None, "different type is no origin");
        assert_eq!(origin("h"), None, "whited out below: a new file");
        assert_eq!(origin("d"), Some((1, 203)));
    }

    #[test]
    fn non_utf8_names_survive() {
        let name = OsString::from(std::ffi::OsStr::from_bytes(b"caf\xe9\n x"));
        let m = merge_listings(
            &[listing(
                0,
                vec![LayerEntry {
                    name: name.clone(),
                    kind: Regular,
                    rdev: 0,
                    ino: 1,
                }],
            )],
            None,
        );
        assert_eq!(m[0].name, name);
    }
}
