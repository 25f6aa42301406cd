//! `extract_layer` with file writer threads (`ExtractOptions::writers`) gives exactly what
//! one thread gives: the same tree, times included, and the same statistics, on an
//! archive whose order matters (names written twice, a file over a directory and the
//! reverse, hard links to files a writer made, whiteouts, a read-only directory); and a
//! failing file is reported as it would be by one thread: the earliest one.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use tar::{EntryType, Header};
use ufsd::image::layer::{ExtractOptions, ExtractStats, extract_layer};

use super::common::{assert_same_snapshots, scratch, snapshot};

struct Archive(tar::Builder<Vec<u8>>);

impl Archive {
    fn new() -> Archive {
        Archive(tar::Builder::new(Vec::new()))
    }

    fn add(&mut self, name: &str, kind: EntryType, mode: u32, owner: u32, data: &[u8]) {
        self.add_with(name, kind, mode, owner, data, None, &[]);
    }

    #[allow(clippy::too_many_arguments)]
    fn add_with(
        &mut self,
        name: &str,
        kind: EntryType,
        mode: u32,
        owner: u32,
        data: &[u8],
        link: Option<&str>,
        pax: &[(&str, &[u8])],
    ) {
        if !pax.is_empty() {
            self.0.append_pax_extensions(pax.iter().copied()).unwrap();
        }
        let mut h = Header::new_ustar();
        h.set_path(name).unwrap();
        if let Some(l) = link {
            h.set_link_name(l).unwrap();
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(owner.into());
        h.set_gid(owner.into());
        h.set_mtime(1_600_000_000 + u64::from(mode));
        h.set_cksum();
        self.0.append(&h, data).unwrap();
    }

    fn file(&mut self, name: &str, mode: u32, owner: u32, data: &[u8]) {
        self.add(name, EntryType::Regular, mode, owner, data);
    }

    fn dir(&mut self, name: &str, mode: u32) {
        self.add(name, EntryType::Directory, mode, 0, b"");
    }

    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// An archive where order matters, with plenty of small files for the writers.
fn ordered_archive() -> Vec<u8> {
    let modes = [0o644, 0o600, 0o755, 0o640, 0o4755, 0o777, 0o1644, 0o2750];
    let mut a = Archive::new();
    a.dir("a/", 0o755);
    for i in 0..300u32 {
        let data = format!("file {i}\n").repeat(i as usize % 7);
        a.file(
            &format!("a/f{i:03}"),
            modes[i as usize % 8],
            (i % 3) * 500,
            data.as_bytes(),
        );
    }
    // Names written again: the later entry wins.
    a.file("a/f005", 0o600, 0, b"second");
    a.file("b", 0o644, 0, b"a file, then a directory");
    a.dir("b/", 0o750);
    a.file("b/c", 0o644, 0, b"in the directory that replaced a file");
    a.dir("d/", 0o755);
    a.file("d/x", 0o644, 0, b"goes with its directory");
    a.file("d", 0o644, 0, b"a file over a directory");
    // Hard links to files a writer made, one of them replaced first.
    a.add_with("h", EntryType::Link, 0o644, 0, b"", Some("a/f007"), &[]);
    a.add_with("h2", EntryType::Link, 0o644, 0, b"", Some("a/f005"), &[]);
    a.add_with("s", EntryType::Symlink, 0o777, 0, b"", Some("a"), &[]);
    // A whiteout next to a name of the same layer, and one of a name below.
    a.file("a/.wh.f009", 0, 0, b"");
    a.file("a/.wh.gone", 0, 0, b"");
    // Larger than what is sent to a writer.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    a.file("big", 0o644, 0, &big);
    // Parents made for an entry, one of them then replaced by a file.
    a.file("p/q/r/file", 0o644, 0, b"deep");
    a.file("p/q2/file", 0o644, 0, b"deep too");
    a.file("p/q", 0o644, 0, b"over a made directory");
    a.add_with(
        "x/attrs",
        EntryType::Regular,
        0o644,
        0,
        b"xattrs",
        None,
        &[
            ("SCHILY.xattr.user.k", b"v"),
            ("mtime", b"1700000000.123456789"),
        ],
    );
    a.dir("ro/", 0o555);
    a.file("ro/f", 0o444, 0, b"in a read-only directory");
    a.add("fifo", EntryType::Fifo, 0o644, 0, b"");
    a.bytes()
}

/// Times of every path (a snapshot leaves them out) but those the extraction made
/// without an entry of their own (parents, a whiteout), which are as old as it.
fn times(root: &Path) -> BTreeMap<String, (i64, i64)> {
    let made = ["p", "p/q2", "x", "a/gone"];
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if !made.contains(&rel.as_str()) {
                out.insert(rel, (m.mtime(), m.mtime_nsec()));
            }
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

fn extract(
    tar: &[u8],
    dest: &Path,
    privileged: bool,
    writers: usize,
) -> Result<ExtractStats, String> {
    std::fs::create_dir(dest).unwrap();
    let opts = ExtractOptions {
        privileged,
        writers: Some(writers),
    };
    extract_layer(tar, dest, &opts).map_err(|e| e.to_string())
}

#[test]
fn writer_threads_give_what_one_thread_gives() {
    let tar = ordered_archive();
    let tmp = scratch();
    for privileged in [true, false] {
        let one = tmp.path().join(format!("one-{privileged}"));
        let stats = extract(&tar, &one, privileged, 0).unwrap();
        assert_eq!(std::fs::read(one.join("a/f005")).unwrap(), b"second");
        assert_eq!(std::fs::read(one.join("h2")).unwrap(), b"second");
        assert_eq!(
            std::fs::read(one.join("d")).unwrap(),
            b"a file over a directory"
        );
        for writers in [1, 3] {
            let many = tmp.path().join(format!("many-{privileged}-{writers}"));
            let got = extract(&tar, &many, privileged, writers).unwrap();
            assert_eq!(got, stats, "privileged {privileged}, {writers} writers");
            assert_same_snapshots(&snapshot(&one), &snapshot(&many), "one thread", "writers");
            assert_eq!(
                times(&one),
                times(&many),
                "privileged {privileged}, {writers} writers"
            );
        }
    }
}

#[test]
fn the_earliest_failing_file_is_reported() {
    // An xattr value over 64 KiB: setxattr(2) refuses it (E2BIG) whatever the filesystem.
    let huge = vec![b'v'; (64 << 10) + 1];
    let mut a = Archive::new();
    for i in 0..100 {
        a.file(&format!("ok{i}"), 0o644, 0, b"fine");
    }
    for name in ["bad1", "bad2"] {
        let pax: &[(&str, &[u8])] = &[("SCHILY.xattr.user.big", &huge)];
        a.add_with(name, EntryType::Regular, 0o644, 0, b"x", None, pax);
        for i in 0..50 {
            a.file(&format!("{name}-after{i}"), 0o644, 0, b"fine");
        }
    }
    let tar = a.bytes();
    let tmp = scratch();
    for writers in [0, 1, 3] {
        let e = extract(&tar, &tmp.path().join(format!("w{writers}")), true, writers).unwrap_err();
        assert!(
            e.contains("bad1") && !e.contains("bad2"),
            "{writers} writers: {e}"
        );
    }
}

#[test]
fn a_cut_archive_fails_with_writers_too() {
    let tar = ordered_archive();
    let tmp = scratch();
    // Cut inside the small files, at a block boundary and off one.
    for cut in [tar.len() / 3 / 512 * 512, tar.len() / 3 + 100] {
        for writers in [0, 3] {
            let dest = tmp.path().join(format!("cut-{cut}-{writers}"));
            let e = extract(&tar[..cut], &dest, true, writers).unwrap_err();
            assert!(
                e.contains("truncated"),
                "{writers} writers, cut at {cut}: {e}"
            );
        }
    }
}
