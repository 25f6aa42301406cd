//! The read path of a ufsd mount, against kernel overlayfs as the oracle: the merged view of
//! the 3-layer fixture in both whiteout formats, large directories and seekdir, FUSE
//! passthrough, hidden overlay xattrs, read-only refusals, inode numbers and deep stacks.
//!
//! These tests mount: they need root and /dev/fuse, as CI has.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::ffi::{CStr, CString, OsStr};
use std::fs;
use std::hash::Hasher;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::*;

/// Checks that a snapshot of the fixture's merged view means what the fixture was built to
/// mean, so that a mistake in the fixture cannot make the oracle comparison vacuous.
fn check_fixture_meaning(snap: &Snapshot, who: &str, with_big: bool) {
    let mut problems = Vec::new();
    for (path, content) in FIXTURE_PRESENT {
        let Some(e) = snap.get(*path) else {
            problems.push(format!("{} is missing", show(path)));
            continue;
        };
        if let Some(c) = content {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            h.write(c);
            if e.content != Some(h.finish()) {
                problems.push(format!("{} has the wrong content: {e}", show(path)));
            }
        }
    }
    for path in FIXTURE_ABSENT {
        if let Some(e) = snap.get(*path) {
            problems.push(format!("{} should be hidden: {e}", show(path)));
        }
    }
    for path in snap.keys() {
        if path.split(|b| *b == b'/').any(|c| c.starts_with(b".wh.")) {
            problems.push(format!("a whiteout marker is visible: {}", show(path)));
        }
    }
    let mut expect = |path: &[u8], ok: fn(&Entry) -> bool, what: &str| match snap.get(path) {
        Some(e) if ok(e) => {}
        other => problems.push(format!("{}: expected {what}, got {other:?}", show(path))),
    };
    expect(
        b"modes/m4755",
        |e| (e.mode, e.uid, e.gid) == (0o4755, FIXTURE_UID, FIXTURE_GID),
        "mode 04755 owned by 1234:5678",
    );
    expect(b"links/hl_a", |e| e.nlink == Some(3), "nlink 3");
    expect(
        b"symlinks/abs",
        |e| e.target.as_deref() == Some(&b"/etc/passwd"[..]),
        "a symlink to /etc/passwd",
    );
    expect(
        b"sparse",
        |e| e.size.is_some_and(|s| s > SPARSE_HOLE),
        "a size past the hole",
    );
    if with_big {
        let prefix = format!("{BIG_DIR}/").into_bytes();
        let listed: BTreeSet<Vec<u8>> = snap
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix[..]).map(<[u8]>::to_vec))
            .collect();
        if listed != big_dir_expected() {
            problems.push(format!(
                "the big directory lists {} names, expected {}",
                listed.len(),
                big_dir_expected().len()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{who} does not show what the fixture means:\n{}",
        problems.join("\n")
    );
}

/// Kernel overlayfs in its default (trusted xattr) mode treats `user.overlay.*` as ordinary
/// xattrs, while ufsd reads both namespaces and hides both. Drops them from the oracle's
/// snapshot after checking that the oracle does show the one the fixture holds.
fn strip_user_overlay_xattrs(snap: &mut Snapshot) {
    let hosts = &snap[&b"etc/hosts"[..]];
    assert!(
        hosts.xattrs.iter().any(|(n, _)| n == b"user.overlay.foo"),
        "kernel overlayfs was expected to show user.overlay.foo: {hosts}"
    );
    for e in snap.values_mut() {
        e.xattrs.retain(|(n, _)| !n.starts_with(b"user.overlay."));
    }
}

fn merged_view_equals_kernel_overlay(ufsd_format: WhiteoutFormat) {
    let t = scratch();
    let ovl = build_fixture(&t.path().join("overlay-format"), WhiteoutFormat::Overlay);
    let layers = match ufsd_format {
        WhiteoutFormat::Overlay => ovl.clone(),
        WhiteoutFormat::Oci => build_fixture(&t.path().join("oci-format"), WhiteoutFormat::Oci),
    };
    let kmnt = mkdir(t.path(), "kernel");
    let umnt = mkdir(t.path(), "ufsd");
    let _kernel = mount_overlay(&as_paths(&ovl), None, &kmnt);
    let _ufsd = mount_ufsd(&as_paths(&layers), None, &umnt, &[]);

    let mut want = snapshot(&kmnt);
    check_fixture_meaning(&want, "kernel overlayfs", true);
    strip_user_overlay_xattrs(&mut want);
    let got = snapshot(&umnt);
    check_fixture_meaning(&got, "ufsd", true);
    assert_same_snapshots(&want, &got, "kernel overlayfs", "ufsd");
}

#[test]
fn merged_view_equals_kernel_overlay_overlay_format() {
    merged_view_equals_kernel_overlay(WhiteoutFormat::Overlay);
}

#[test]
fn merged_view_equals_kernel_overlay_oci_format() {
    merged_view_equals_kernel_overlay(WhiteoutFormat::Oci);
}

/// A `DIR*` that is closed on drop.
struct Dir(*mut libc::DIR);

impl Dir {
    fn open(path: &Path) -> Dir {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string.
        let d = unsafe { libc::opendir(c.as_ptr()) };
        assert!(
            !d.is_null(),
            "opendir {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        Dir(d)
    }

    /// Reads up to `max` names (all when None), `.` and `..` left out.
    fn read(&mut self, max: Option<usize>) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while max.is_none_or(|m| out.len() < m) {
            // SAFETY: errno is thread-local; reset it to tell the end from an error.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: self.0 is an open DIR*.
            let ent = unsafe { libc::readdir(self.0) };
            if ent.is_null() {
                let e = std::io::Error::last_os_error();
                assert_eq!(e.raw_os_error(), Some(0), "readdir failed: {e}");
                break;
            }
            // SAFETY: readdir returned a valid dirent whose d_name is NUL-terminated.
            let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) }
                .to_bytes()
                .to_vec();
            if name != b"." && name != b".." {
                out.push(name);
            }
        }
        out
    }

    fn tell(&mut self) -> libc::c_long {
        // SAFETY: self.0 is an open DIR*.
        let pos = unsafe { libc::telldir(self.0) };
        assert!(pos >= 0, "telldir: {}", std::io::Error::last_os_error());
        pos
    }

    fn seek(&mut self, pos: libc::c_long) {
        // SAFETY: self.0 is an open DIR*; pos came from telldir on it.
        unsafe { libc::seekdir(self.0, pos) }
    }

    fn rewind(&mut self) {
        // SAFETY: self.0 is an open DIR*.
        unsafe { libc::rewinddir(self.0) }
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        // SAFETY: self.0 is an open DIR*, closed once.
        unsafe { libc::closedir(self.0) };
    }
}

fn assert_each_once(names: &[Vec<u8>], want: &BTreeSet<Vec<u8>>, what: &str) {
    let mut seen = BTreeSet::new();
    for n in names {
        assert!(seen.insert(n.clone()), "{what}: {} listed twice", show(n));
    }
    let missing: Vec<String> = want.difference(&seen).take(10).map(|n| show(n)).collect();
    let extra: Vec<String> = seen.difference(want).take(10).map(|n| show(n)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: {} names listed, {} expected; missing (first 10) {missing:?}, unexpected {extra:?}",
        seen.len(),
        want.len()
    );
}

#[test]
fn big_directory_lists_each_name_once_and_seekdir_works() {
    let t = scratch();
    let layers = build_fixture(&t.path().join("layers"), WhiteoutFormat::Overlay);
    let mnt = mkdir(t.path(), "mnt");
    let _m = mount_ufsd(&as_paths(&layers), None, &mnt, &[]);
    let want = big_dir_expected();
    let big = mnt.join(BIG_DIR);

    let mut d = Dir::open(&big);
    let first = d.read(Some(want.len() / 2));
    assert_eq!(first.len(), want.len() / 2);
    let pos = d.tell();
    let rest = d.read(None);
    let all: Vec<Vec<u8>> = first.iter().chain(&rest).cloned().collect();
    assert_each_once(&all, &want, "readdir");

    d.seek(pos);
    let again = d.read(None);
    assert!(
        again == rest,
        "after seekdir back to the middle, {} names came back instead of the same {}",
        again.len(),
        rest.len()
    );

    d.rewind();
    let rewound = d.read(None);
    assert_each_once(&rewound, &want, "readdir after rewinddir");

    // std's iterator too (getdents64 with its own buffer size).
    let names: Vec<Vec<u8>> = fs::read_dir(&big)
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .collect();
    assert_each_once(&names, &want, "std::fs::read_dir");
}

/// Directories have no handles in the daemon (the kernel is told opening one needs no
/// request): readers that interleave, or whose directory changes under them, must still
/// each see every name once.
#[test]
fn interleaved_readers_of_a_changing_directory_each_see_every_name_once() {
    let t = scratch();
    let layers = build_fixture(&t.path().join("layers"), WhiteoutFormat::Overlay);
    let (upper, work) = (mkdir(t.path(), "upper"), mkdir(t.path(), "work"));
    let mnt = mkdir(t.path(), "mnt");
    let _m = mount_ufsd(&as_paths(&layers), Some((&upper, &work)), &mnt, &[]);
    let want = big_dir_expected();
    let big = mnt.join(BIG_DIR);

    let mut a = Dir::open(&big);
    let a_first = a.read(Some(want.len() / 3));
    let mut b = Dir::open(&big);
    let b_first = b.read(Some(want.len() / 2));
    // A change between reads drops the kernel's cached listing: the readers go on
    // against a new one.
    fs::write(big.join("created-while-listing"), b"new\n").unwrap();
    let a_all: Vec<Vec<u8>> = a_first.into_iter().chain(a.read(None)).collect();
    let b_all: Vec<Vec<u8>> = b_first.into_iter().chain(b.read(None)).collect();
    for (names, what) in [(&a_all, "first reader"), (&b_all, "second reader")] {
        // The new name may or may not be seen (POSIX leaves it open).
        let old: Vec<Vec<u8>> = names
            .iter()
            .filter(|n| n.as_slice() != b"created-while-listing")
            .cloned()
            .collect();
        assert_each_once(&old, &want, what);
    }
    let mut fresh = Dir::open(&big);
    let mut with_new = want.clone();
    with_new.insert(b"created-while-listing".to_vec());
    assert_each_once(
        &fresh.read(None),
        &with_new,
        "a reader opened after the change",
    );
}

/// Pseudo-random bytes, so that a wrong offset cannot read back the same data.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn reads_use_fuse_passthrough() {
    let t = scratch();
    let l0 = LayerBuilder::new(&t.path().join("l0"), WhiteoutFormat::Overlay);
    let l1 = LayerBuilder::new(&t.path().join("l1"), WhiteoutFormat::Overlay);
    l0.file(b"small", b"top layer\n", 0o644)
        .file(b"dir/shadow", b"the top copy\n", 0o644);
    l1.file(b"big", &noise(3 << 20, 7), 0o644)
        .file(b"dir/shadow", b"the bottom copy\n", 0o644)
        .file(b"dir/odd", &noise(12_345, 9), 0o600)
        .sparse(b"sparse", 1 << 20, b"tail");
    let mnt = mkdir(t.path(), "mnt");
    let log = t.path().join("daemon.log");
    let log_arg = log.to_str().unwrap();
    let m = mount_ufsd(
        &[&l0.root, &l1.root],
        None,
        &mnt,
        &["-vv", "--log-file", log_arg],
    );
    for (merged, layer) in [
        ("small", l0.path(b"small")),
        ("big", l1.path(b"big")),
        ("dir/shadow", l0.path(b"dir/shadow")),
        ("dir/odd", l1.path(b"dir/odd")),
        ("sparse", l1.path(b"sparse")),
    ] {
        let got = fs::read(mnt.join(merged)).unwrap();
        let want = fs::read(&layer).unwrap();
        assert!(
            got == want,
            "{merged}: {} bytes read through the mount differ from the layer's {}",
            got.len(),
            want.len()
        );
    }
    // Positioned reads inside the big file.
    let f = fs::File::open(mnt.join("big")).unwrap();
    let want = fs::read(l1.path(b"big")).unwrap();
    let mut buf = vec![0u8; 4096];
    for off in [0usize, 1, 4095, 1 << 20, (3 << 20) - 4096] {
        let n = std::os::unix::fs::FileExt::read_at(&f, &mut buf, off as u64).unwrap();
        assert_eq!(&buf[..n], &want[off..off + n], "pread at {off}");
    }
    drop(f);
    m.unmount().expect("unmounting");

    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("passthrough=true"),
        "the daemon log shows no passthrough open:\n{text}"
    );
    assert!(
        !text.contains("passthrough=false"),
        "some opens were not passed through:\n{text}"
    );
    assert!(
        !text.contains("read through the daemon"),
        "the daemon served reads itself although passthrough was on"
    );
}

#[test]
fn overlay_private_xattrs_are_hidden() {
    let t = scratch();
    let layers = build_fixture_with(&t.path().join("layers"), WhiteoutFormat::Overlay, false);
    // The layers really hold what the mount must hide.
    assert_eq!(
        get_xattr(&layers[0].join("opq_top"), b"trusted.overlay.opaque"),
        Ok(b"y".to_vec())
    );
    assert!(get_xattr(&layers[2].join("etc/hosts"), b"trusted.overlay.origin").is_ok());
    let mnt = mkdir(t.path(), "mnt");
    let _m = mount_ufsd(&as_paths(&layers), None, &mnt, &[]);

    let opq = mnt.join("opq_top");
    assert_eq!(
        get_xattr(&opq, b"trusted.overlay.opaque"),
        Err(libc::ENODATA)
    );
    assert_eq!(get_xattr(&opq, b"user.note"), Ok(b"opaque in L0".to_vec()));
    let names = list_xattrs(&opq).unwrap();
    assert!(
        names.iter().any(|n| n == b"user.note")
            && !names.iter().any(|n| n.starts_with(b"trusted.overlay.")),
        "listxattr of an opaque dir: {:?}",
        names.iter().map(|n| show(n)).collect::<Vec<_>>()
    );

    let hosts = mnt.join("etc/hosts");
    for private in [&b"trusted.overlay.origin"[..], b"user.overlay.foo"] {
        assert_eq!(
            get_xattr(&hosts, private),
            Err(libc::ENODATA),
            "{}",
            show(private)
        );
    }
    assert_eq!(
        get_xattr(&hosts, b"user.comment"),
        Ok(b"hosts file".to_vec())
    );
    assert_eq!(
        get_xattr(&hosts, b"trusted.test"),
        Ok(b"a trusted xattr".to_vec())
    );
    let mut names = list_xattrs(&hosts).unwrap();
    names.sort();
    assert_eq!(
        names,
        vec![b"trusted.test".to_vec(), b"user.comment".to_vec()],
        "listxattr of etc/hosts"
    );
    // The size protocol: a zero-size query gives the length, a short buffer ERANGE.
    let c = CString::new(hosts.as_os_str().as_bytes()).unwrap();
    let attr = c"user.comment";
    // SAFETY: size query with a null buffer on valid C strings.
    let n = unsafe { libc::lgetxattr(c.as_ptr(), attr.as_ptr(), std::ptr::null_mut(), 0) };
    assert_eq!(n, b"hosts file".len() as isize);
    let mut small = [0u8; 3];
    // SAFETY: small is writable for its length.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            attr.as_ptr(),
            small.as_mut_ptr().cast(),
            small.len(),
        )
    };
    assert_eq!(n, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ERANGE)
    );
    // The root shows the top layer root's xattrs.
    assert_eq!(get_xattr(&mnt, b"user.root"), Ok(b"top root".to_vec()));
}

#[test]
fn read_only_mount_refuses_changes_with_erofs() {
    let t = scratch();
    let layers = build_fixture_with(&t.path().join("layers"), WhiteoutFormat::Overlay, false);
    let mnt = mkdir(t.path(), "mnt");
    let _m = mount_ufsd(&as_paths(&layers), None, &mnt, &[]);
    let existing = mnt.join("shadowed");
    let erofs = Some(libc::EROFS);

    let attempts: Vec<(&str, Option<i32>)> = vec![
        ("create", errno_of(fs::File::create(mnt.join("new-file")))),
        (
            "create in a subdirectory",
            errno_of(fs::File::create(mnt.join("etc/new-file"))),
        ),
        ("mkdir", errno_of(fs::create_dir(mnt.join("new-dir")))),
        ("unlink", errno_of(fs::remove_file(&existing))),
        ("rmdir", errno_of(fs::remove_dir(mnt.join("wdir")))),
        (
            "chmod",
            errno_of(fs::set_permissions(
                &existing,
                fs::Permissions::from_mode(0o777),
            )),
        ),
        (
            "chown",
            errno_of(std::os::unix::fs::chown(&existing, Some(1), Some(1))),
        ),
        (
            "open for writing",
            errno_of(fs::OpenOptions::new().write(true).open(&existing)),
        ),
        (
            "open for appending",
            errno_of(fs::OpenOptions::new().append(true).open(&existing)),
        ),
        (
            "open with O_TRUNC",
            errno_of(
                fs::OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(&existing),
            ),
        ),
        (
            "rename",
            errno_of(fs::rename(&existing, mnt.join("renamed"))),
        ),
        (
            "symlink",
            errno_of(std::os::unix::fs::symlink("x", mnt.join("new-link"))),
        ),
        (
            "link",
            errno_of(fs::hard_link(&existing, mnt.join("new-hardlink"))),
        ),
        ("setxattr", {
            let c = CString::new(existing.as_os_str().as_bytes()).unwrap();
            // SAFETY: valid C strings and value buffer.
            let r = unsafe {
                libc::lsetxattr(c.as_ptr(), c"user.x".as_ptr(), c"v".as_ptr().cast(), 1, 0)
            };
            (r != 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap())
        }),
    ];
    let wrong: Vec<String> = attempts
        .iter()
        .filter(|(_, e)| *e != erofs)
        .map(|(what, e)| format!("{what}: {:?}", e.map(std::io::Error::from_raw_os_error)))
        .collect();
    assert!(
        wrong.is_empty(),
        "expected EROFS from each of these:\n{}",
        wrong.join("\n")
    );
    // Nothing changed underneath.
    assert_eq!(fs::read(layers[0].join("shadowed")).unwrap(), b"top\n");
    assert!(!layers[0].join("new-file").exists());
    assert_eq!(fs::read(&existing).unwrap(), b"top\n");
    // access(W_OK) says the same.
    let c = CString::new(existing.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string.
    let r = unsafe { libc::access(c.as_ptr(), libc::W_OK) };
    assert_eq!(
        (r, std::io::Error::last_os_error().raw_os_error()),
        (-1, Some(libc::EROFS)),
        "access(W_OK)"
    );
}

/// Every path under `root` with its lstat, symlinks not followed.
fn walk_inodes(root: &Path) -> Vec<(Vec<u8>, fs::Metadata)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p.clone());
            }
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            out.push((rel, md));
        }
    }
    out
}

fn drop_kernel_caches() -> bool {
    // Dentries and inodes: makes the kernel forget the mount's nodes.
    match fs::write("/proc/sys/vm/drop_caches", "2") {
        Ok(()) => true,
        Err(e) => {
            eprintln!("note: cannot drop kernel caches ({e}); checking across a remount only");
            false
        }
    }
}

#[test]
fn inode_numbers_are_stable_shared_by_hard_links_and_distinct() {
    let t = scratch();
    let layers = build_fixture(&t.path().join("layers"), WhiteoutFormat::Overlay);
    let mnt = mkdir(t.path(), "mnt");
    let m = mount_ufsd(&as_paths(&layers), None, &mnt, &[]);

    let paths = [
        "shadowed",
        "etc/conf.d/b.conf",
        "opq",
        "links/hl_a",
        "symlinks/rel",
    ];
    let ino = |p: &str| fs::symlink_metadata(mnt.join(p)).unwrap().ino();
    let first: Vec<u64> = paths.iter().map(|p| ino(p)).collect();
    let second: Vec<u64> = paths.iter().map(|p| ino(p)).collect();
    assert_eq!(
        first, second,
        "st_ino changed between two stats of {paths:?}"
    );
    let big_before = ino("big/f00042");
    if drop_kernel_caches() {
        let third: Vec<u64> = paths.iter().map(|p| ino(p)).collect();
        assert_eq!(
            first, third,
            "st_ino changed after the kernel forgot the nodes"
        );
    }

    // Hard links inside one layer: one st_ino, the layer's nlink.
    for group in FIXTURE_HARDLINKS {
        let mds: Vec<fs::Metadata> = group
            .iter()
            .map(|p| fs::symlink_metadata(mnt.join(OsStr::from_bytes(p))).unwrap())
            .collect();
        let lower_nlink = {
            let p = OsStr::from_bytes(group[0]);
            layers
                .iter()
                .find_map(|l| fs::symlink_metadata(l.join(p)).ok())
                .unwrap()
                .nlink()
        };
        for (p, md) in group.iter().zip(&mds) {
            assert_eq!(
                md.ino(),
                mds[0].ino(),
                "{} is a hard link of {}",
                show(p),
                show(group[0])
            );
            assert_eq!(md.nlink(), lower_nlink, "nlink of {}", show(p));
        }
    }

    // No two paths share an st_ino unless they are hard links of each other.
    let all = walk_inodes(&mnt);
    let mut by_ino: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
    for (p, md) in &all {
        by_ino.entry(md.ino()).or_default().push(p.clone());
    }
    let root_ino = fs::metadata(&mnt).unwrap().ino();
    assert!(
        !by_ino.contains_key(&root_ino),
        "a path shares the root's st_ino"
    );
    let known: Vec<BTreeSet<Vec<u8>>> = FIXTURE_HARDLINKS
        .iter()
        .map(|g| g.iter().map(|p| p.to_vec()).collect())
        .collect();
    let clashes: Vec<String> = by_ino
        .values()
        .filter(|ps| ps.len() > 1)
        .filter(|ps| !known.contains(&ps.iter().cloned().collect()))
        .map(|ps| ps.iter().map(|p| show(p)).collect::<Vec<_>>().join(", "))
        .collect();
    assert!(
        clashes.is_empty(),
        "unrelated paths share an st_ino:\n{}",
        clashes.join("\n")
    );

    // The numbers derive from the layers, so a new mount shows the same ones.
    m.unmount().unwrap();
    let _m = mount_ufsd(&as_paths(&layers), None, &mnt, &[]);
    let after: Vec<u64> = paths.iter().map(|p| ino(p)).collect();
    assert_eq!(first, after, "st_ino differs after a remount");
    assert_eq!(ino("big/f00042"), big_before);
}

#[test]
fn hundred_layer_stack() {
    const N: usize = 100;
    let t = scratch();
    let mut roots = Vec::new();
    for i in 0..N {
        let l = LayerBuilder::new(
            &t.path().join(format!("layer{i:03}")),
            WhiteoutFormat::Overlay,
        );
        l.file(
            format!("f_{i}").as_bytes(),
            format!("file of layer {i}\n").as_bytes(),
            0o644,
        )
        .file(format!("shared/s_{i}").as_bytes(), b"s\n", 0o644)
        .file(b"shared/same", format!("layer {i}\n").as_bytes(), 0o644);
        roots.push(l.root);
    }
    let mnt = mkdir(t.path(), "mnt");
    let _m = mount_ufsd(&as_paths(&roots), None, &mnt, &[]);

    let bottom = format!("f_{}", N - 1);
    assert_eq!(
        fs::read_to_string(mnt.join(&bottom)).unwrap(),
        format!("file of layer {}\n", N - 1)
    );
    assert_eq!(
        fs::read_to_string(mnt.join("shared/same")).unwrap(),
        "layer 0\n"
    );
    let names: BTreeSet<String> = fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut want: BTreeSet<String> = (0..N).map(|i| format!("f_{i}")).collect();
    want.insert("shared".to_string());
    assert_eq!(names, want);
    let shared = fs::read_dir(mnt.join("shared")).unwrap().count();
    assert_eq!(shared, N + 1);

    // Kernel overlayfs agrees on the whole tree.
    let kmnt = mkdir(t.path(), "kernel");
    let _k = mount_overlay(&as_paths(&roots), None, &kmnt);
    assert_same_tree(&kmnt, &mnt);
}
