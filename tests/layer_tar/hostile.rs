//! `extract_layer` against hostile and broken archives, built with the tar crate's
//! low-level header API (no path checks of its own): nothing may be written outside the
//! destination, refusals are clear errors, duplicates follow "later wins", and truncated or
//! corrupt archives fail.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use tar::{EntryType, Header};
use ufsd::image::layer::{ExtractOptions, ExtractStats, extract_layer};

use super::common::{get_xattr, mkdir, scratch};

/// One raw entry of a test archive.
#[derive(Clone)]
pub struct Raw {
    name: Vec<u8>,
    kind: EntryType,
    data: Vec<u8>,
    link: Option<Vec<u8>>,
    mode: u32,
    dev: Option<(u32, u32)>,
    pax: Vec<(String, Vec<u8>)>,
}

fn raw(name: &[u8], kind: EntryType) -> Raw {
    Raw {
        name: name.to_vec(),
        kind,
        data: Vec::new(),
        link: None,
        mode: if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        },
        dev: None,
        pax: Vec::new(),
    }
}

fn file(name: &[u8], data: &[u8]) -> Raw {
    Raw {
        data: data.to_vec(),
        ..raw(name, EntryType::Regular)
    }
}

fn dir(name: &[u8]) -> Raw {
    raw(name, EntryType::Directory)
}

fn link(name: &[u8], kind: EntryType, target: &[u8]) -> Raw {
    Raw {
        link: Some(target.to_vec()),
        ..raw(name, kind)
    }
}

/// The archive of `entries`, names and link targets written verbatim.
fn build(entries: Vec<Raw>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        if !e.pax.is_empty() {
            b.append_pax_extensions(e.pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .unwrap();
        }
        let mut h = Header::new_ustar();
        let n = e.name.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&e.name[..n]);
        if let Some(l) = &e.link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
        }
        h.set_entry_type(e.kind);
        h.set_size(e.data.len() as u64);
        h.set_mode(e.mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        if let Some((ma, mi)) = e.dev {
            h.set_device_major(ma).unwrap();
            h.set_device_minor(mi).unwrap();
        }
        h.set_cksum();
        b.append(&h, e.data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

fn extract(tar: &[u8], dest: &Path, privileged: bool) -> Result<ExtractStats, String> {
    extract_layer(
        tar,
        dest,
        &ExtractOptions {
            privileged,
            ..Default::default()
        },
    )
    .map_err(|e| e.to_string())
}

/// A scratch directory with `dest` (empty) and `outside` (a directory an attack aims at).
fn setup() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let tmp = scratch();
    let dest = mkdir(tmp.path(), "dest");
    let outside = mkdir(tmp.path(), "outside");
    fs::write(outside.join("passwd"), b"original\n").unwrap();
    (tmp, dest, outside)
}

fn assert_outside_untouched(outside: &Path) {
    let mut names: Vec<_> = fs::read_dir(outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, vec!["passwd"], "something was written outside");
    assert_eq!(fs::read(outside.join("passwd")).unwrap(), b"original\n");
}

#[test]
fn dotdot_paths_are_refused() {
    for name in [&b"../x"[..], b"a/../../x", b"./../x"] {
        let (tmp, dest, outside) = setup();
        let err = extract(&build(vec![file(name, b"evil")]), &dest, true).unwrap_err();
        assert!(
            err.contains("..") && err.contains("leave the destination"),
            "{err}"
        );
        assert!(!tmp.path().join("x").exists());
        assert_outside_untouched(&outside);
    }
}

#[test]
fn absolute_paths_are_confined() {
    let (_tmp, dest, outside) = setup();
    let target = format!("{}/passwd", outside.display());
    extract(&build(vec![file(target.as_bytes(), b"evil")]), &dest, true).unwrap();
    let inside = dest.join(target.trim_start_matches('/'));
    assert_eq!(fs::read(inside).unwrap(), b"evil");
    assert_outside_untouched(&outside);
}

#[test]
fn symlinks_are_never_followed() {
    let (_tmp, dest, outside) = setup();
    let out = outside.as_os_str().as_encoded_bytes();
    // A file through a symlinked directory.
    let tar = build(vec![
        link(b"a", EntryType::Symlink, out),
        file(b"a/passwd", b"evil"),
    ]);
    let err = extract(&tar, &dest, true).unwrap_err();
    assert!(err.contains("symlink") && err.contains("a/passwd"), "{err}");
    // A directory entry through it.
    let (_tmp2, dest2, _) = setup();
    let tar = build(vec![link(b"a", EntryType::Symlink, out), dir(b"a/sub/")]);
    assert!(extract(&tar, &dest2, true).unwrap_err().contains("symlink"));
    // A file replacing a symlink to an outside file: the symlink is replaced, not written
    // through.
    let (_tmp3, dest3, _) = setup();
    let victim = outside.join("passwd");
    let tar = build(vec![
        link(
            b"p",
            EntryType::Symlink,
            victim.as_os_str().as_encoded_bytes(),
        ),
        file(b"p", b"evil"),
    ]);
    extract(&tar, &dest3, true).unwrap();
    assert_eq!(fs::read(dest3.join("p")).unwrap(), b"evil");
    // A directory replacing the symlink, then a file in it.
    let (_tmp4, dest4, _) = setup();
    let tar = build(vec![
        link(b"a", EntryType::Symlink, out),
        dir(b"a/"),
        file(b"a/passwd", b"inside"),
    ]);
    extract(&tar, &dest4, true).unwrap();
    assert_eq!(fs::read(dest4.join("a/passwd")).unwrap(), b"inside");
    assert!(fs::symlink_metadata(dest4.join("a")).unwrap().is_dir());
    assert_outside_untouched(&outside);
}

#[test]
fn hard_links_stay_inside() {
    let (_tmp, dest, outside) = setup();
    let out_passwd = outside.join("passwd");
    let out_passwd = out_passwd.as_os_str().as_encoded_bytes();
    let cases: Vec<(Vec<Raw>, &str)> = vec![
        (vec![link(b"l", EntryType::Link, b"../../etc/passwd")], ".."),
        // Absolute: confined to the destination, where it does not exist.
        (
            vec![link(b"l", EntryType::Link, out_passwd)],
            "not in the layer",
        ),
        (
            vec![
                link(
                    b"s",
                    EntryType::Symlink,
                    outside.as_os_str().as_encoded_bytes(),
                ),
                link(b"l", EntryType::Link, b"s/passwd"),
            ],
            "symlink",
        ),
        // A hard link to a symlink links the symlink itself, never its target.
        (
            vec![dir(b"d/"), link(b"l", EntryType::Link, b"d")],
            "directory",
        ),
    ];
    for (entries, want) in cases {
        let d = mkdir(&dest, "case");
        let err = extract(&build(entries), &d, true).unwrap_err();
        assert!(err.contains(want), "want {want:?}: {err}");
        fs::remove_dir_all(&d).unwrap();
    }
    let tar = build(vec![
        link(b"s", EntryType::Symlink, out_passwd),
        link(b"l", EntryType::Link, b"s"),
        file(b"f", b"data"),
        link(b"sub/g", EntryType::Link, b"/f"),
    ]);
    extract(&tar, &dest, true).unwrap();
    let (s, l) = (dest.join("s"), dest.join("l"));
    assert_eq!(
        fs::symlink_metadata(&s).unwrap().ino(),
        fs::symlink_metadata(&l).unwrap().ino()
    );
    assert!(fs::symlink_metadata(&l).unwrap().file_type().is_symlink());
    assert_eq!(
        fs::metadata(dest.join("sub/g")).unwrap().ino(),
        fs::metadata(dest.join("f")).unwrap().ino()
    );
    assert_outside_untouched(&outside);
}

#[test]
fn duplicate_entries_later_wins() {
    let (_tmp, dest, _) = setup();
    let mut second_dir = dir(b"d/");
    second_dir.mode = 0o700;
    let tar = build(vec![
        file(b"f", b"one"),
        file(b"f", b"two"),
        dir(b"d/"),
        file(b"d/kept", b"kept"),
        second_dir,
        dir(b"r/"),
        file(b"r/lost", b"lost"),
        file(b"r", b"now a file"),
        file(b"g", b"a file"),
        dir(b"g/"),
    ]);
    extract(&tar, &dest, true).unwrap();
    assert_eq!(fs::read(dest.join("f")).unwrap(), b"two");
    // A directory over a directory merges and takes the later metadata.
    assert_eq!(fs::read(dest.join("d/kept")).unwrap(), b"kept");
    assert_eq!(fs::metadata(dest.join("d")).unwrap().mode() & 0o7777, 0o700);
    assert_eq!(fs::read(dest.join("r")).unwrap(), b"now a file");
    assert!(fs::metadata(dest.join("g")).unwrap().is_dir());
}

#[test]
fn whiteouts_and_opaque_markers_in_overlay_format() {
    let (_tmp, dest, _) = setup();
    let tar = build(vec![
        dir(b"a/"),
        file(b"a/.wh..wh..opq", b""),
        file(b"a/new", b"new"),
        file(b".wh.gone", b""),
        // A name and its whiteout in one layer: the name stays; a directory becomes opaque.
        file(b".wh.both", b""),
        file(b"both", b"kept"),
        dir(b"d/"),
        file(b".wh.d", b""),
        // AUFS bookkeeping is not extracted.
        dir(b".wh..wh.plnk/"),
        file(b".wh..wh.plnk/123", b"x"),
    ]);
    let stats = extract(&tar, &dest, true).unwrap();
    assert_eq!(
        get_xattr(&dest.join("a"), b"trusted.overlay.opaque"),
        Ok(b"y".to_vec())
    );
    assert!(!dest.join("a/.wh..wh..opq").exists());
    let gone = fs::symlink_metadata(dest.join("gone")).unwrap();
    assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
    assert_eq!(fs::read(dest.join("both")).unwrap(), b"kept");
    assert_eq!(
        get_xattr(&dest.join("d"), b"trusted.overlay.opaque"),
        Ok(b"y".to_vec())
    );
    assert!(!dest.join(".wh..wh.plnk").exists());
    assert_eq!((stats.whiteouts, stats.opaque_dirs), (3, 1));
    assert_eq!(stats.skipped.len(), 2, "{:?}", stats.skipped);
}

#[test]
fn privileged_bits_only_with_privilege() {
    let mut dev = raw(b"dev/null", EntryType::Char);
    dev.dev = Some((1, 3));
    let mut suid = file(b"suid", b"x");
    suid.mode = 0o6755;
    let mut x = file(b"x", b"x");
    x.pax = vec![
        ("SCHILY.xattr.user.ok".into(), b"1".to_vec()),
        ("SCHILY.xattr.trusted.t".into(), b"2".to_vec()),
        (
            "SCHILY.xattr.trusted.overlay.redirect".into(),
            b"/etc".to_vec(),
        ),
        ("SCHILY.xattr.user.overlay.opaque".into(), b"y".to_vec()),
    ];
    let tar = || build(vec![dir(b"dev/"), dev.clone(), suid.clone(), x.clone()]);
    // Without privilege (the option, since the tests run as root).
    let (_tmp, dest, _) = setup();
    let stats = extract(&tar(), &dest, false).unwrap();
    assert!(!dest.join("dev/null").exists());
    assert_eq!(stats.skipped.len(), 1);
    assert_eq!(
        fs::metadata(dest.join("suid")).unwrap().mode() & 0o7777,
        0o755
    );
    assert_eq!(get_xattr(&dest.join("x"), b"user.ok"), Ok(b"1".to_vec()));
    assert_eq!(get_xattr(&dest.join("x"), b"trusted.t"), Err(libc::ENODATA));
    assert_eq!(stats.xattrs_dropped, 3);
    // With privilege.
    let (_tmp, dest, _) = setup();
    let stats = extract(&tar(), &dest, true).unwrap();
    let md = fs::symlink_metadata(dest.join("dev/null")).unwrap();
    assert!(md.file_type().is_char_device());
    assert_eq!((libc::major(md.rdev()), libc::minor(md.rdev())), (1, 3));
    assert_eq!(
        fs::metadata(dest.join("suid")).unwrap().mode() & 0o7777,
        0o6755
    );
    assert_eq!(get_xattr(&dest.join("x"), b"trusted.t"), Ok(b"2".to_vec()));
    // Overlay-private xattrs are never set from an archive.
    assert_eq!(
        get_xattr(&dest.join("x"), b"trusted.overlay.redirect"),
        Err(libc::ENODATA)
    );
    assert_eq!(
        get_xattr(&dest.join("x"), b"user.overlay.opaque"),
        Err(libc::ENODATA)
    );
    assert_eq!(stats.xattrs_dropped, 2);
}

#[test]
fn truncated_and_corrupt_archives_fail() {
    let good = build(vec![
        dir(b"d/"),
        file(b"d/f", &[7u8; 3000]),
        file(b"g", b"g"),
    ]);
    let (_tmp, dest, _) = setup();
    extract(&good, &dest, true).unwrap();
    // Cut inside the data of d/f, inside a header, and exactly at an entry boundary (the
    // end-of-archive blocks missing).
    let data_start = 512 * 2;
    let end_of_g = good.len() - 1024;
    for (cut, want) in [
        (data_start + 1000, "truncated"),
        (data_start + 512 * 6 + 100, "truncated"),
        (end_of_g, "end-of-archive"),
        (0, "end-of-archive"),
    ] {
        let (_tmp, dest, _) = setup();
        let err = extract(&good[..cut], &dest, true).unwrap_err();
        assert!(err.contains(want), "cut at {cut}: {err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
    let mut bad = good.clone();
    bad[512 + 5] ^= 0x55; // the name in d/f's header: checksum mismatch
    let (_tmp, dest, _) = setup();
    let err = extract(&bad, &dest, true).unwrap_err();
    assert!(err.contains("corrupt") && err.contains("checksum"), "{err}");
}

#[test]
fn destination_must_be_empty() {
    let (_tmp, dest, _) = setup();
    fs::write(dest.join("stale"), b"x").unwrap();
    let err = extract(&build(vec![file(b"f", b"x")]), &dest, true).unwrap_err();
    assert!(err.contains("not empty"), "{err}");
}

#[test]
fn missing_parents_are_created_and_modes_applied_last() {
    let (_tmp, dest, _) = setup();
    let mut ro = dir(b"ro/");
    ro.mode = 0o555;
    let tar = build(vec![ro, file(b"ro/inner/f", b"x")]);
    extract(&tar, &dest, false).unwrap();
    assert_eq!(fs::read(dest.join("ro/inner/f")).unwrap(), b"x");
    assert_eq!(
        fs::metadata(dest.join("ro")).unwrap().mode() & 0o7777,
        0o555
    );
    assert_eq!(
        fs::metadata(dest.join("ro/inner")).unwrap().mode() & 0o7777,
        0o755
    );
    assert_eq!(
        fs::metadata(dest.join("ro")).unwrap().mtime(),
        1_600_000_000
    );
    fs::set_permissions(dest.join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
}
