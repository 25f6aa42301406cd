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
    /// The filesystem's own options (for overlayfs: `lowerdir=...,upperdir=...`), still
    /// octal-escaped as the kernel writes them.
    pub super_options: String,
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
            super_options: rfields.get(2).map(|o| o.to_string()).unwrap_or_default(),
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

/// The layers of a kernel overlayfs mount from its super options: (upperdir, lowerdirs
/// top-most first). `lowerdir+=` (kernel 6.7 and later) adds one lower layer at a time.
pub fn overlay_dirs(super_options: &str) -> (Option<PathBuf>, Vec<PathBuf>) {
    let mut upper = None;
    let mut lowers = Vec::new();
    for opt in super_options.split(',') {
        let Some((key, value)) = opt.split_once('=') else {
            continue;
        };
        let raw = unescape_octal(value);
        match key {
            "upperdir" => upper = Some(PathBuf::from(OsString::from_vec(raw))),
            "lowerdir" | "lowerdir+" => {
                // `\:` escapes a colon inside one path.
                let mut cur = Vec::new();
                let mut i = 0;
                while i < raw.len() {
                    match raw[i] {
                        b'\\' if i + 1 < raw.len() => {
                            cur.push(raw[i + 1]);
                            i += 2;
                            continue;
                        }
                        b':' if key == "lowerdir" => {
                            lowers
                                .push(PathBuf::from(OsString::from_vec(std::mem::take(&mut cur))));
                        }
                        b => cur.push(b),
                    }
                    i += 1;
                }
                if !cur.is_empty() {
                    lowers.push(PathBuf::from(OsString::from_vec(cur)));
                }
            }
            _ => {}
        }
    }
    (upper, lowers)
}

#[cfg(test)]
mod tests {
    #[test]
    fn overlay_layers_from_options() {
        let (u, l) =
            overlay_dirs("rw,lowerdir=/l/a:/l/b\\:c:/l/with\\040sp,upperdir=/u,workdir=/w");
        assert_eq!(u, Some(PathBuf::from("/u")));
        assert_eq!(
            l,
            vec![
                PathBuf::from("/l/a"),
                PathBuf::from("/l/b:c"),
                PathBuf::from("/l/with sp")
            ]
        );
        let (u, l) = overlay_dirs("ro,lowerdir+=/x,lowerdir+=/y");
        assert_eq!(u, None);
        assert_eq!(l, vec![PathBuf::from("/x"), PathBuf::from("/y")]);
    }

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
