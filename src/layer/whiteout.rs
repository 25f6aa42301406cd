//! Whiteouts and opaque markers, in both on-disk formats, as pure functions.
//!
//! - overlayfs: a whiteout is a character device 0/0 with the hidden name; an opaque
//!   directory carries the xattr `trusted.overlay.opaque` (or `user.overlay.opaque`) = `y`.
//! - OCI / AUFS: a whiteout is any file named `.wh.NAME`; an opaque directory contains the
//!   marker `.wh..wh..opq`. Other `.wh..wh.*` names are AUFS bookkeeping and are hidden.
//!
//! Every layer is read in both formats. Markers never appear in the merged view, so a name
//! beginning with `.wh.` cannot exist in it (see docs/design.md, "Reserved names").

use super::kind::FileKind;

/// Prefix of an OCI whiteout name.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Name of the OCI opaque-directory marker.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Prefix of AUFS bookkeeping entries.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

/// overlayfs xattrs that mark an opaque directory, in the order they are consulted.
pub const OPAQUE_XATTRS: [&str; 2] = ["trusted.overlay.opaque", "user.overlay.opaque"];

/// What one entry of a layer directory means for the merged view.
#[derive(Debug, PartialEq, Eq)]
pub enum EntryClass<'a> {
    /// A real file, directory, link or node that can be shown.
    Visible,
    /// Hides the given name in lower layers.
    Whiteout(&'a [u8]),
    /// Marks the containing directory opaque.
    OpaqueMarker,
    /// AUFS bookkeeping (`.wh..wh.plnk` and the like): never shown, hides nothing.
    Hidden,
}

/// Classifies an entry by name, type and (for devices) `st_rdev`.
pub fn classify(name: &[u8], kind: FileKind, rdev: u64) -> EntryClass<'_> {
    if name == OPAQUE_MARKER {
        return EntryClass::OpaqueMarker;
    }
    if name.starts_with(AUFS_META_PREFIX) {
        return EntryClass::Hidden;
    }
    if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
        if target.is_empty() {
            return EntryClass::Hidden;
        }
        return EntryClass::Whiteout(target);
    }
    if is_whiteout_device(kind, rdev) {
        return EntryClass::Whiteout(name);
    }
    EntryClass::Visible
}

/// The overlayfs whiteout: a character device with device number 0/0.
pub fn is_whiteout_device(kind: FileKind, rdev: u64) -> bool {
    kind == FileKind::CharDevice && rdev == 0
}

/// Whether a name is reserved for markers and so can never name a merged-view entry.
pub fn is_reserved_name(name: &[u8]) -> bool {
    name.starts_with(WHITEOUT_PREFIX)
}

/// The OCI whiteout name for `name`: `.wh.NAME`.
pub fn whiteout_name(name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(WHITEOUT_PREFIX.len() + name.len());
    v.extend_from_slice(WHITEOUT_PREFIX);
    v.extend_from_slice(name);
    v
}

/// Whether an overlayfs opaque xattr value means "opaque". (`x` means "has xattr
/// whiteouts inside", which does not hide the layers below.)
pub fn is_opaque_value(value: &[u8]) -> bool {
    value == b"y"
}

/// Whether an xattr name is private to overlayfs and must be hidden from the merged view.
pub fn is_private_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        use EntryClass::*;
        use FileKind::*;
        let cases: &[(&[u8], FileKind, u64, EntryClass)] = &[
            (b"file", Regular, 0, Visible),
            (b"dir", Directory, 0, Visible),
            (b"gone", CharDevice, 0, Whiteout(b"gone")),
            (b"tty", CharDevice, libc::makedev(4, 1), Visible),
            (b"null", CharDevice, libc::makedev(1, 3), Visible),
            (b"blk0", BlockDevice, 0, Visible),
            (b".wh.gone", Regular, 0, Whiteout(b"gone")),
            (b".wh.gone", CharDevice, 0, Whiteout(b"gone")),
            (b".wh.dir", Directory, 0, Whiteout(b"dir")),
            (b".wh..wh..opq", Regular, 0, OpaqueMarker),
            (b".wh..wh.plnk", Directory, 0, Hidden),
            (b".wh..wh.aufs", Regular, 0, Hidden),
            (b".wh.", Regular, 0, Hidden),
            (b".whfoo", Regular, 0, Visible),
            (b"a.wh.b", Regular, 0, Visible),
            (b".wh.\n\xff", Regular, 0, Whiteout(b"\n\xff")),
        ];
        for (name, kind, rdev, want) in cases {
            assert_eq!(&classify(name, *kind, *rdev), want, "name {name:?}");
        }
    }

    #[test]
    fn opaque_values_and_private_xattrs() {
        assert!(is_opaque_value(b"y"));
        assert!(!is_opaque_value(b"x"));
        assert!(!is_opaque_value(b"n"));
        assert!(!is_opaque_value(b""));
        assert!(is_private_xattr(b"trusted.overlay.opaque"));
        assert!(is_private_xattr(b"user.overlay.redirect"));
        assert!(!is_private_xattr(b"user.overlayfoo"));
        assert!(!is_private_xattr(b"user.comment"));
        assert!(!is_private_xattr(b"security.capability"));
        assert_eq!(whiteout_name(b"x"), b".wh.x");
        assert!(is_reserved_name(b".wh.x"));
        assert!(!is_reserved_name(b"x.wh."));
    }
}
