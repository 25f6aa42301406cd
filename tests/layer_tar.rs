//! OCI layer tars: `write_layer` on fixed fixtures (exact entry list and order, normalised
//! headers, a golden sha256, the same bytes from either whiteout format, SOURCE_DATE_EPOCH,
//! refusals), and the round trip `write_layer` -> `extract_layer` -> kernel overlayfs
//! showing the same tree as the original upper layer did. Hostile and broken archives are
//! in `layer_tar/hostile.rs`; extraction with writer threads against one thread in
//! `layer_tar/writers.rs`.
//!
//! Needs root (device nodes, owners, trusted.* xattrs, kernel overlayfs mounts); nothing
//! here skips.

mod common;
#[path = "layer_tar/hostile.rs"]
mod hostile;
#[path = "layer_tar/writers.rs"]
mod writers;

use std::ffi::{CString, OsStr};
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::{LayerBuilder, WhiteoutFormat, get_xattr, mkdir, mount_overlay, scratch, snapshot};
use sha2::{Digest, Sha256};
use tar::EntryType;
use ufsd::image::layer::{ExtractOptions, LayerOptions, LayerStats, extract_layer, write_layer};

/// The mtime every entry of the golden fixture gets.
const T: i64 = 1_600_000_000;

/// sha256 of the golden fixture's layer (either whiteout format).
const GOLDEN: &str = "fd354e35b4a4a47bbd3ef6dfcd30c3268d0b1809a896160a1fd32a1d43cd82b2";

/// Sets atime and mtime of `path` (not following a symlink).
pub fn set_mtime(path: &Path, t: i64) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let ts = [
        libc::timespec {
            tv_sec: t,
            tv_nsec: 0,
        },
        libc::timespec {
            tv_sec: t,
            tv_nsec: 0,
        },
    ];
    // SAFETY: a valid C string and a two-element timespec array.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(r, 0, "utimensat {}", path.display());
}

/// Sets the mtime of every entry under `root` (and `root`), children first.
pub fn set_tree_mtime(root: &Path, t: i64) {
    if fs::symlink_metadata(root).unwrap().is_dir() {
        for e in fs::read_dir(root).unwrap() {
            set_tree_mtime(&e.unwrap().path(), t);
        }
    }
    set_mtime(root, t);
}

/// A path longer than the 100 bytes of a ustar name field.
fn long_path() -> Vec<u8> {
    [b"a/".as_slice(), &[b'd'; 60], b"/", &[b'e'; 60]].concat()
}

/// The golden fixture: a lower layer and an upper layer in `format`, every mtime `T`.
fn golden_fixture(dir: &Path, format: WhiteoutFormat) -> (PathBuf, Vec<PathBuf>) {
    let low = LayerBuilder::new(&dir.join("lower"), format);
    low.file(b"etc/passwd", b"root:x:0:0\n", 0o644)
        .file(b"etc/gone", b"bye\n", 0o644)
        .file(b"opq/old", b"old\n", 0o644)
        .file(b"keep/f", b"f\n", 0o644);
    let up = LayerBuilder::new(&dir.join("upper"), format);
    up.dir(b"etc", 0o755)
        .file(b"etc/passwd", b"root:x:0:0\nuser:x:1000:1000\n", 0o644)
        .whiteout(b"etc/gone")
        .whiteout(b"never_there")
        .opaque(b"opq")
        .file(b"opq/new", b"new\n", 0o600)
        .file(b"a/h1", b"linked\n", 0o644)
        .hardlink(b"a/h1", b"a/h2")
        .xattr(b"a/h1", b"user.comment", b"hi")
        .xattr(b"a/h1", b"trusted.overlay.origin", b"\x00x")
        .symlink(b"a/s", b"../etc/passwd")
        .symlink(b"a/long", &[b'x'; 150])
        .fifo(b"a/fifo", 0o644)
        .chardev(b"a/null", 1, 3)
        .file(b"a/suid", b"#!/bin/sh\n", 0o4755)
        .owner(b"a/suid", 1234, 5678)
        .socket(b"a/sock")
        .file(&long_path(), b"deep\n", 0o644)
        .file(b"a/caf\xe9", b"latin-1\n", 0o644)
        .file(b"a/new\nline", b"nl\n", 0o640);
    set_tree_mtime(&up.root, T);
    (up.root.clone(), vec![low.root.clone()])
}

fn layer(upper: &Path, lowers: &[PathBuf], opts: &LayerOptions) -> (Vec<u8>, LayerStats) {
    let mut out = Vec::new();
    let stats = write_layer(upper, lowers, &mut out, opts).expect("write_layer");
    (out, stats)
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// One entry of a tar as the tests look at it.
#[derive(Debug)]
pub struct TarEntry {
    pub path: Vec<u8>,
    pub kind: EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub link: Option<Vec<u8>>,
    pub data: Vec<u8>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub header: Vec<u8>,
}

pub fn tar_entries(tar: &[u8]) -> Vec<TarEntry> {
    let mut ar = tar::Archive::new(tar);
    let mut out = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        let mut xattrs = Vec::new();
        if let Some(pax) = e.pax_extensions().unwrap() {
            for r in pax {
                let r = r.unwrap();
                if let Some(n) = r.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((n.to_vec(), r.value_bytes().to_vec()));
                }
            }
        }
        let path = e.path_bytes().into_owned();
        let link = e.link_name_bytes().map(|l| l.into_owned());
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push(TarEntry {
            path,
            kind: h.entry_type(),
            mode: h.mode().unwrap(),
            uid: h.uid().unwrap(),
            gid: h.gid().unwrap(),
            mtime: h.mtime().unwrap(),
            link,
            data,
            xattrs,
            header: h.as_bytes().to_vec(),
        });
    }
    out
}

#[test]
fn golden_layer_entries_order_and_headers() {
    let tmp = scratch();
    let (upper, lowers) = golden_fixture(tmp.path(), WhiteoutFormat::Overlay);
    let (bytes, stats) = layer(&upper, &lowers, &LayerOptions::default());
    let entries = tar_entries(&bytes);
    let lp = long_path();
    let mut long_dir = lp[..lp.len() - 61].to_vec();
    long_dir.push(b'/');
    use EntryType::*;
    let want: Vec<(&[u8], EntryType)> = vec![
        (b"./", Directory),
        (b"a/", Directory),
        (b"a/caf\xe9", Regular),
        (&long_dir, Directory),
        (&lp, Regular),
        (b"a/fifo", Fifo),
        (b"a/h1", Regular),
        (b"a/h2", Link),
        (b"a/long", Symlink),
        (b"a/new\nline", Regular),
        (b"a/null", Char),
        (b"a/s", Symlink),
        (b"a/suid", Regular),
        (b"etc/", Directory),
        (b"etc/.wh.gone", Regular),
        (b"etc/passwd", Regular),
        (b"opq/", Directory),
        (b"opq/.wh..wh..opq", Regular),
        (b"opq/new", Regular),
    ];
    let got: Vec<(&[u8], EntryType)> = entries
        .iter()
        .map(|e| (e.path.as_slice(), e.kind))
        .collect();
    assert_eq!(
        got.iter()
            .map(|(p, k)| format!("{} {k:?}", p.escape_ascii()))
            .collect::<Vec<_>>(),
        want.iter()
            .map(|(p, k)| format!("{} {k:?}", p.escape_ascii()))
            .collect::<Vec<_>>()
    );
    let by = |p: &[u8]| entries.iter().find(|e| e.path == p).unwrap();
    for e in &entries {
        // No user or group names; device numbers only for devices.
        assert!(
            e.header[265..329].iter().all(|b| *b == 0),
            "names in {:?}",
            e.path
        );
        if e.kind != Char {
            assert!(
                e.header[329..345].iter().all(|b| *b == 0),
                "dev in {:?}",
                e.path
            );
        }
        let marker = e
            .path
            .rsplit(|b| *b == b'/')
            .next()
            .unwrap()
            .starts_with(b".wh.");
        if marker {
            assert_eq!(
                (e.mode, e.uid, e.gid, e.mtime, e.data.len()),
                (0, 0, 0, 0, 0)
            );
        } else {
            assert_eq!(e.mtime, T as u64, "mtime of {:?}", e.path);
        }
    }
    let suid = by(b"a/suid");
    assert_eq!((suid.mode, suid.uid, suid.gid), (0o4755, 1234, 5678));
    assert_eq!(by(b"a/h2").link.as_deref(), Some(&b"a/h1"[..]));
    assert_eq!(by(b"a/h1").data, b"linked\n");
    assert_eq!(
        by(b"a/h1").xattrs,
        vec![(b"user.comment".to_vec(), b"hi".to_vec())]
    );
    assert_eq!(by(b"a/long").link.as_deref(), Some(&[b'x'; 150][..]));
    assert_eq!(by(b"a/null").header[329..337], *b"0000001\0");
    assert_eq!(by(b"opq/new").mode, 0o600);
    assert_eq!(by(b"etc/passwd").data, b"root:x:0:0\nuser:x:1000:1000\n");
    assert_eq!(stats.skipped_sockets, vec![upper.join("a/sock")]);
    assert_eq!(
        (stats.whiteouts, stats.opaque_dirs, stats.hardlinks),
        (1, 1, 1)
    );
    assert_eq!(stats.tar_bytes, bytes.len() as u64);
    assert_eq!(bytes.len() % 512, 0);
    assert!(bytes[bytes.len() - 1024..].iter().all(|b| *b == 0));
}

#[test]
fn golden_digest_is_stable_across_runs_and_whiteout_formats() {
    let mut digests = Vec::new();
    for format in [WhiteoutFormat::Overlay, WhiteoutFormat::Oci] {
        let tmp = scratch();
        let (upper, lowers) = golden_fixture(tmp.path(), format);
        let (a, _) = layer(&upper, &lowers, &LayerOptions::default());
        let (b, _) = layer(&upper, &lowers, &LayerOptions::default());
        assert!(a == b, "two runs on the same upper differ ({format:?})");
        digests.push(sha256_hex(&a));
    }
    assert_eq!(
        digests[0], digests[1],
        "the whiteout format changed the layer"
    );
    assert_eq!(digests[0], GOLDEN, "golden digest");
}

#[test]
fn source_date_epoch_clamps_mtimes() {
    let tmp = scratch();
    let (upper, lowers) = golden_fixture(tmp.path(), WhiteoutFormat::Overlay);
    let epoch = T - 1000;
    let opts = LayerOptions {
        source_date_epoch: Some(epoch),
    };
    let (bytes, _) = layer(&upper, &lowers, &opts);
    for e in tar_entries(&bytes) {
        assert!(e.mtime <= epoch as u64, "{:?} mtime {}", e.path, e.mtime);
    }
    // A later epoch changes nothing.
    let late = LayerOptions {
        source_date_epoch: Some(T + 1000),
    };
    let (a, _) = layer(&upper, &lowers, &late);
    let (b, _) = layer(&upper, &lowers, &LayerOptions::default());
    assert!(a == b);
}

#[test]
fn without_lowers_no_whiteouts_or_markers_are_written() {
    let tmp = scratch();
    let (upper, _) = golden_fixture(tmp.path(), WhiteoutFormat::Overlay);
    let (bytes, stats) = layer(&upper, &[], &LayerOptions::default());
    let names: Vec<Vec<u8>> = tar_entries(&bytes).into_iter().map(|e| e.path).collect();
    assert!(
        !names.iter().any(|p| p.windows(4).any(|w| w == b".wh.")),
        "{names:?}"
    );
    assert_eq!((stats.whiteouts, stats.opaque_dirs), (0, 0));
}

#[test]
fn real_files_named_like_whiteouts_are_refused_and_listed() {
    let tmp = scratch();
    // As kernel overlayfs lets a user create them: a file with data and a directory.
    let up = LayerBuilder::new(&tmp.path().join("upper"), WhiteoutFormat::Overlay);
    up.file(b"ok", b"fine\n", 0o644)
        .file(b".wh.data", b"not empty\n", 0o644)
        .dir(b"sub/.wh.dir", 0o755)
        .file(b"sub/.wh..wh.aufs", b"", 0o644);
    let err = write_layer(&up.root, &[], &mut Vec::new(), &LayerOptions::default())
        .expect_err("a real .wh. file must be refused")
        .to_string();
    for p in [".wh.data", "sub/.wh.dir", "sub/.wh..wh.aufs"] {
        assert!(
            err.contains(&up.root.join(p).display().to_string()),
            "{p} in {err}"
        );
    }
    assert!(err.contains("3 entries"), "{err}");
}

#[test]
fn redirect_and_metacopy_uppers_are_refused() {
    for (attr, what) in [
        (&b"trusted.overlay.redirect"[..], "redirect_dir"),
        (b"trusted.overlay.metacopy", "metacopy"),
    ] {
        let tmp = scratch();
        let up = LayerBuilder::new(&tmp.path().join("upper"), WhiteoutFormat::Overlay);
        up.file(b"d/f", b"x", 0o644);
        let target: &[u8] = if what == "metacopy" { b"d/f" } else { b"d" };
        up.xattr(target, attr, b"/old");
        let err = write_layer(&up.root, &[], &mut Vec::new(), &LayerOptions::default())
            .expect_err("must be refused")
            .to_string();
        assert!(err.contains(what), "{err}");
        assert!(
            err.contains(&up.path(target).display().to_string()),
            "{err}"
        );
    }
}

/// Applies changes to the fixture's merged view through a kernel overlayfs mount.
fn change_through_overlay(mnt: &Path) {
    let p = |s: &str| mnt.join(s);
    let mut hosts = fs::read(p("etc/hosts")).unwrap();
    hosts.extend_from_slice(b"10.0.0.1 db\n");
    fs::write(p("etc/hosts"), hosts).unwrap();
    fs::set_permissions(p("etc/motd"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::remove_file(p("etc/conf.d/a.conf")).unwrap();
    fs::remove_dir_all(p("nested/a")).unwrap();
    fs::create_dir_all(p("nested/a/b")).unwrap();
    fs::write(p("nested/a/b/fresh"), b"fresh\n").unwrap();
    fs::remove_dir_all(p("opq")).unwrap();
    fs::create_dir(p("opq")).unwrap();
    fs::write(p("opq/fresh"), b"fresh\n").unwrap();
    fs::create_dir_all(p("newdir/sub")).unwrap();
    fs::write(p("newdir/sub/f"), b"f\n").unwrap();
    fs::hard_link(p("newdir/sub/f"), p("newdir/g")).unwrap();
    common::set_xattr(&p("newdir/sub/f"), b"user.comment", b"new file");
    std::os::unix::fs::symlink("../etc/hosts", p("newdir/link")).unwrap();
    common::mknod(&p("newdir/fifo"), libc::S_IFIFO | 0o640, 0, 0);
    common::mknod(&p("newdir/null"), libc::S_IFCHR | 0o666, 1, 3);
    fs::write(p("newdir/suid"), b"#!/bin/sh\n").unwrap();
    std::os::unix::fs::lchown(p("newdir/suid"), Some(1234), Some(5678)).unwrap();
    fs::set_permissions(p("newdir/suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    let long = mnt.join(OsStr::from_bytes(&long_path()));
    fs::create_dir_all(long.parent().unwrap()).unwrap();
    fs::write(&long, b"deep\n").unwrap();
    fs::write(p("names/caf\u{e9}-2"), b"utf-8\n").unwrap();
    fs::rename(p("etc/conf.d/b.conf"), p("etc/conf.d/b2.conf")).unwrap();
    fs::write(p("shadowed"), b"rewritten\n").unwrap();
    common::set_xattr(&p("etc"), b"user.layer", b"upper");
}

use std::os::unix::fs::PermissionsExt;

fn without_user_overlay(mut s: common::Snapshot) -> common::Snapshot {
    for e in s.values_mut() {
        e.xattrs.retain(|(n, _)| !n.starts_with(b"user.overlay."));
    }
    s
}

#[test]
fn round_trip_through_kernel_overlayfs() {
    let tmp = scratch();
    let lowers = common::build_fixture_with(&tmp.path().join("fx"), WhiteoutFormat::Overlay, false);
    let (upper, work, mnt) = (
        mkdir(tmp.path(), "upper"),
        mkdir(tmp.path(), "work"),
        mkdir(tmp.path(), "mnt"),
    );
    let lp = common::as_paths(&lowers);
    {
        let m = mount_overlay(&lp, Some((&upper, &work)), &mnt);
        change_through_overlay(&mnt);
        m.unmount().unwrap();
    }
    // The original: the upper layer as the top of a read-only stack.
    let mut with_upper = vec![upper.as_path()];
    with_upper.extend(&lp);
    let want = {
        let _m = mount_overlay(&with_upper, None, &mnt);
        snapshot(&mnt)
    };
    let (bytes, stats) = layer(&upper, &lowers, &LayerOptions::default());
    assert_eq!((stats.whiteouts, stats.opaque_dirs), (2, 2), "{stats:?}");
    let dest = mkdir(tmp.path(), "extracted");
    let xs = extract_layer(bytes.as_slice(), &dest, &ExtractOptions::default()).unwrap();
    assert_eq!(xs.whiteouts, stats.whiteouts);
    assert_eq!(xs.opaque_dirs, stats.opaque_dirs);
    assert!(xs.skipped.is_empty(), "{:?}", xs.skipped);
    // Whiteouts as overlayfs devices, the opaque marker as the xattr.
    let md = fs::symlink_metadata(dest.join("etc/conf.d/a.conf")).unwrap();
    assert!(md.file_type().is_char_device() && md.rdev() == 0);
    assert_eq!(
        get_xattr(&dest.join("opq"), b"trusted.overlay.opaque"),
        Ok(b"y".to_vec())
    );
    assert!(!dest.join("opq/.wh..wh..opq").exists());
    let mut with_extracted = vec![dest.as_path()];
    with_extracted.extend(&lp);
    let got = {
        let _m = mount_overlay(&with_extracted, None, &mnt);
        snapshot(&mnt)
    };
    // Kernel overlayfs (without userxattr) shows `user.overlay.*` xattrs of the fixture; a
    // layer drops them as overlay-private, as ufsd's merged view hides them.
    let (want, got) = (without_user_overlay(want), without_user_overlay(got));
    common::assert_same_snapshots(&want, &got, "upper", "extracted layer");
    // Writing the extracted layer again gives the same tar.
    let (again, _) = layer(&dest, &lowers, &LayerOptions::default());
    assert!(
        again == bytes,
        "extracted layer does not write back to the same bytes"
    );
}

#[test]
fn unprivileged_extraction_keeps_oci_markers_and_drops_privileged_bits() {
    let tmp = scratch();
    let (upper, lowers) = golden_fixture(tmp.path(), WhiteoutFormat::Overlay);
    let (bytes, _) = layer(&upper, &lowers, &LayerOptions::default());
    let dest = mkdir(tmp.path(), "x");
    let opts = ExtractOptions {
        privileged: false,
        ..Default::default()
    };
    let xs = extract_layer(bytes.as_slice(), &dest, &opts).unwrap();
    // Whiteouts and the opaque marker stay as files, which ufsd reads.
    assert!(
        fs::symlink_metadata(dest.join("etc/.wh.gone"))
            .unwrap()
            .is_file()
    );
    assert!(!dest.join("etc/gone").exists());
    assert!(dest.join("opq/.wh..wh..opq").is_file());
    assert_eq!(
        get_xattr(&dest.join("opq"), b"trusted.overlay.opaque"),
        Err(libc::ENODATA)
    );
    // No device node; set-id bits and owners not applied.
    assert!(!dest.join("a/null").exists());
    assert_eq!(
        xs.skipped
            .iter()
            .map(|s| s.path.clone())
            .collect::<Vec<_>>(),
        vec![PathBuf::from("a/null")]
    );
    let suid = fs::metadata(dest.join("a/suid")).unwrap();
    assert_eq!((suid.mode() & 0o7777, suid.uid()), (0o755, 0));
    // Everything else is there, with its mtime.
    assert!(
        fs::symlink_metadata(dest.join("a/fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert_eq!(
        fs::metadata(dest.join("a/h2")).unwrap().ino(),
        fs::metadata(dest.join("a/h1")).unwrap().ino()
    );
    assert_eq!(
        get_xattr(&dest.join("a/h1"), b"user.comment"),
        Ok(b"hi".to_vec())
    );
    assert_eq!(fs::symlink_metadata(dest.join("a/s")).unwrap().mtime(), T);
    assert_eq!(fs::metadata(dest.join("etc")).unwrap().mtime(), T);
    assert_eq!(fs::metadata(&dest).unwrap().mtime(), T);
}
