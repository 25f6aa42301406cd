//! Reading `/proc/self/mountinfo`: which paths are mount points, and of what type.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One mount: where and what type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
}

/// Undoes the octal escapes (`\040` for a space) the kernel puts in mountinfo paths.
fn unescape_octal(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() + 1 && b[i + 1..].len() >= 3 {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                out.push((oct[0] - b'0') * 64 + (oct[1] - b'0') * 8 + (oct[2] - b'0'));
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Parses the text of a mountinfo file.
pub fn parse(text: &str) -> Vec<MountEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        let rfields: Vec<&str> = right.split(' ').collect();
        if fields.len() < 5 || rfields.len() < 2 {
            continue;
        }
        out.push(MountEntry {
            mount_point: PathBuf::from(OsString::from_vec(unescape_octal(fields[4]))),
            fs_type: rfields[0].to_string(),
            source: rfields[1].to_string(),
        });
    }
    out
}

/// The mounts of this process's namespace.
pub fn read() -> Vec<MountEntry> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse(&t))
        .unwrap_or_default()
}

/// The top-most mount at exactly `path` (already canonical), if any.
pub fn mount_at(path: &Path) -> Option<MountEntry> {
    read().into_iter().rev().find(|m| m.mount_point == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_types_and_escaped_paths() {
        let text = "36 35 98:0 / /mnt/with\\040space rw,noatime master:1 - fuse.ufsd ufsd rw,user_id=0\n\
                    37 35 0:5 / /proc rw - proc proc rw\n";
        let m = parse(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(m[0].fs_type, "fuse.ufsd");
        assert_eq!(m[0].source, "ufsd");
        assert_eq!(m[1].fs_type, "proc");
    }
}
