//! The write path's own rules, checked on disk as well as in the merged view: whiteout
//! formats, opaque directories, reserved `.wh.` names, copy-up fidelity and atomicity,
//! directory renames, readers across copy-up, and errors of the upper filesystem.
//!
//! Needs root (mknod of whiteouts, trusted.* xattrs, mounts); CI runs as root.

mod common;

use std::ffi::CString;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{errno_of, get_xattr, mkdir, mount_overlay, mount_ufsd, scratch, set_xattr, stack};

fn renameat2(from: &Path, to: &Path, flags: u32) -> std::io::Result<()> {
    let (a, b) = (
        CString::new(from.as_os_str().as_bytes()).unwrap(),
        CString::new(to.as_os_str().as_bytes()).unwrap(),
    );
    // SAFETY: two valid C strings.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn reserved_wh_names_are_refused_and_never_shown() {
    let s = stack();
    fs::write(s.lower.join("keep"), "k").unwrap();
    // In the OCI format this lower file is a whiteout for "gone": never shown.
    fs::write(s.lower.join(".wh.gone"), "").unwrap();
    let _m = s.mount(&[]);
    assert_eq!(names(&s.mnt), vec!["keep"]);
    assert_eq!(errno_of(fs::metadata(s.m(".wh.gone"))), Some(libc::ENOENT));
    assert_eq!(errno_of(fs::write(s.m(".wh.new"), "x")), Some(libc::EINVAL));
    assert_eq!(errno_of(fs::create_dir(s.m(".wh.dir"))), Some(libc::EINVAL));
    assert_eq!(
        errno_of(fs::rename(s.m("keep"), s.m(".wh.keep"))),
        Some(libc::EINVAL)
    );
    assert_eq!(
        errno_of(fs::hard_link(s.m("keep"), s.m(".wh.link"))),
        Some(libc::EINVAL)
    );
    assert_eq!(
        errno_of(std::os::unix::fs::symlink("keep", s.m(".wh..wh..opq"))),
        Some(libc::EINVAL)
    );
    assert_eq!(names(&s.mnt), vec!["keep"]);
}

#[test]
fn unlink_of_lower_file_leaves_overlay_whiteout_that_the_kernel_reads() {
    let s = stack();
    fs::write(s.lower.join("f"), "lower").unwrap();
    fs::write(s.lower.join("g"), "lower").unwrap();
    fs::create_dir(s.lower.join("d")).unwrap();
    {
        let _m = s.mount(&[]);
        // A lower file, and a lower file first copied up: both need whiteouts.
        fs::remove_file(s.m("f")).unwrap();
        fs::write(s.m("g"), "upper").unwrap();
        fs::remove_file(s.m("g")).unwrap();
        fs::remove_dir(s.m("d")).unwrap();
        // A new file removed again needs none.
        fs::write(s.m("new"), "x").unwrap();
        fs::remove_file(s.m("new")).unwrap();
        assert!(names(&s.mnt).is_empty());
    }
    for n in ["f", "g", "d"] {
        let md = fs::symlink_metadata(s.upper.join(n)).unwrap();
        assert!(md.file_type().is_char_device(), "{n} is not a whiteout");
        assert_eq!(md.rdev(), 0, "{n}: whiteout is 0/0");
    }
    assert!(!s.upper.join("new").exists());
    // Like kernel overlayfs, the whiteouts are hard links of one shared inode.
    let ino = |n: &str| fs::symlink_metadata(s.upper.join(n)).unwrap().ino();
    assert_eq!(
        (ino("f"), ino("f")),
        (ino("g"), ino("d")),
        "whiteouts not shared"
    );
    assert!(fs::symlink_metadata(s.upper.join("f")).unwrap().nlink() >= 3);
    // Shared whiteouts are deletions, not hard links, for diff.
    let changes = ufsd::image::diff::diff(&s.upper, std::slice::from_ref(&s.lower)).unwrap();
    let mut deleted: Vec<String> = changes
        .iter()
        .filter(|c| c.kind == ufsd::image::diff::ChangeKind::Deleted)
        .map(|c| c.path.to_string_lossy().into_owned())
        .collect();
    deleted.sort();
    assert_eq!(deleted, ["/d", "/f", "/g"], "{changes:?}");
    let kmnt = mkdir(&s.root, "kmnt");
    let kwork = mkdir(&s.root, "kwork");
    let _k = mount_overlay(&[&s.lower], Some((&s.upper, &kwork)), &kmnt);
    assert!(
        names(&kmnt).is_empty(),
        "kernel overlayfs sees {:?}",
        names(&kmnt)
    );
}

#[test]
fn forced_oci_whiteouts_and_opaque_markers() {
    let s = stack();
    fs::write(s.lower.join("f"), "lower").unwrap();
    fs::create_dir(s.lower.join("d")).unwrap();
    fs::write(s.lower.join("d/old"), "old").unwrap();
    {
        let _m = s.mount(&["-o", "whiteout=oci"]);
        fs::remove_file(s.m("f")).unwrap();
        fs::remove_file(s.m("d/old")).unwrap();
        fs::remove_dir(s.m("d")).unwrap();
        fs::create_dir(s.m("d")).unwrap();
        assert_eq!(names(&s.mnt), vec!["d"]);
        assert!(
            names(&s.m("d")).is_empty(),
            "lower contents leak: {:?}",
            names(&s.m("d"))
        );
        // Recreating a whited-out file removes its .wh. file.
        fs::write(s.m("f"), "again").unwrap();
        assert_eq!(fs::read_to_string(s.m("f")).unwrap(), "again");
    }
    assert!(s.upper.join("d/.wh..wh..opq").exists(), "no opaque marker");
    assert!(
        !s.upper.join(".wh.f").exists(),
        "stale whiteout for a recreated file"
    );
    assert!(
        !s.upper.join(".wh.d").exists(),
        "stale whiteout for a recreated dir"
    );
    assert!(
        !s.upper
            .join("f")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_char_device()
    );
    // And ufsd reads its own format back.
    let _m = s.mount(&[]);
    assert_eq!(names(&s.mnt), vec!["d", "f"]);
    assert!(names(&s.m("d")).is_empty());
}

#[test]
fn mkdir_over_a_whiteout_makes_an_opaque_directory() {
    let s = stack();
    fs::create_dir(s.lower.join("d")).unwrap();
    fs::write(s.lower.join("d/x"), "x").unwrap();
    {
        let _m = s.mount(&[]);
        fs::remove_dir_all(s.m("d")).unwrap();
        fs::create_dir(s.m("d")).unwrap();
        fs::write(s.m("d/y"), "y").unwrap();
        assert_eq!(names(&s.m("d")), vec!["y"]);
    }
    assert_eq!(
        get_xattr(&s.upper.join("d"), b"trusted.overlay.opaque"),
        Ok(b"y".to_vec())
    );
    let kmnt = mkdir(&s.root, "kmnt");
    let kwork = mkdir(&s.root, "kwork");
    let _k = mount_overlay(&[&s.lower], Some((&s.upper, &kwork)), &kmnt);
    assert_eq!(names(&kmnt.join("d")), vec!["y"]);
}

#[test]
fn rmdir_checks_the_merged_view() {
    let s = stack();
    fs::create_dir(s.lower.join("d")).unwrap();
    fs::write(s.lower.join("d/x"), "x").unwrap();
    let _m = s.mount(&[]);
    assert_eq!(errno_of(fs::remove_dir(s.m("d"))), Some(libc::ENOTEMPTY));
    fs::remove_file(s.m("d/x")).unwrap();
    fs::remove_dir(s.m("d")).unwrap();
    assert!(!s.m("d").exists());
}

#[test]
fn copy_up_keeps_metadata_sparseness_and_leaves_no_temporaries() {
    let s = stack();
    let lf = s.lower.join("sparse");
    {
        let mut f = fs::File::create(&lf).unwrap();
        f.seek(SeekFrom::Start(32 << 20)).unwrap();
        f.write_all(&[7u8; 4096]).unwrap();
        f.set_len(64 << 20).unwrap();
    }
    fs::set_permissions(&lf, fs::Permissions::from_mode(0o754)).unwrap();
    std::os::unix::fs::lchown(&lf, Some(1234), Some(5678)).unwrap();
    set_xattr(&lf, b"user.keep", b"v");
    set_xattr(&lf, b"trusted.overlay.origin", b"private");
    let times = fs::FileTimes::new()
        .set_accessed(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(2_000_000));
    fs::File::options()
        .write(true)
        .open(&lf)
        .unwrap()
        .set_times(times)
        .unwrap();
    let before = fs::metadata(&lf).unwrap();
    {
        let _m = s.mount(&[]);
        // setxattr is a metadata change: it copies up without touching the data.
        set_xattr(&s.m("sparse"), b"user.new", b"1");
    }
    let up = s.upper.join("sparse");
    let after = fs::metadata(&up).unwrap();
    assert_eq!(after.len(), before.len());
    assert_eq!(after.mode() & 0o7777, 0o754);
    assert_eq!((after.uid(), after.gid()), (1234, 5678));
    assert_eq!(after.mtime(), before.mtime());
    assert!(
        after.blocks() * 512 < (4 << 20),
        "holes were filled: {} blocks",
        after.blocks()
    );
    assert_eq!(get_xattr(&up, b"user.keep"), Ok(b"v".to_vec()));
    assert_eq!(get_xattr(&up, b"user.new"), Ok(b"1".to_vec()));
    assert_eq!(
        get_xattr(&up, b"trusted.overlay.origin"),
        Err(libc::ENODATA)
    );
    let mut a = Vec::new();
    fs::File::open(&up).unwrap().read_to_end(&mut a).unwrap();
    assert_eq!(a, fs::read(&lf).unwrap());
    assert!(
        names(&s.work.join("work")).is_empty(),
        "temporaries left in the work dir"
    );
}

/// Without passthrough the daemon serves reads, and a reader follows the file to its
/// upper copy, as on overlayfs since Linux 4.19.
#[test]
fn without_passthrough_a_reader_follows_the_copy_up() {
    let s = stack();
    fs::write(s.lower.join("f"), "before\n").unwrap();
    let _m = s.mount(&["-o", "nopassthrough"]);
    let mut reader = fs::File::open(s.m("f")).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(s.m("f"))
        .unwrap()
        .write_all(b"after\n")
        .unwrap();
    let mut got = String::new();
    reader.read_to_string(&mut got).unwrap();
    assert_eq!(got, "before\nafter\n");
    assert_eq!(
        fs::read_to_string(s.lower.join("f")).unwrap(),
        "before\n",
        "lower changed"
    );
}

/// With passthrough (root, the default) the kernel reads the lower file directly and
/// cannot be switched to the copy: the reader keeps a consistent view of the data it
/// opened (see docs/write-path.md).
#[test]
fn a_reader_keeps_the_lower_data_across_copy_up() {
    let s = stack();
    fs::write(s.lower.join("f"), "before\n").unwrap();
    let _m = s.mount(&[]);
    let mut reader = fs::File::open(s.m("f")).unwrap();
    let mut w = fs::OpenOptions::new().append(true).open(s.m("f")).unwrap();
    w.write_all(b"after\n").unwrap();
    drop(w);
    let mut got = String::new();
    reader.read_to_string(&mut got).unwrap();
    assert_eq!(got, "before\n");
    assert_eq!(fs::read_to_string(s.m("f")).unwrap(), "before\nafter\n");
    assert_eq!(
        fs::read_to_string(s.lower.join("f")).unwrap(),
        "before\n",
        "lower changed"
    );
}

#[test]
fn renaming_a_deep_lower_directory_keeps_the_tree() {
    let dir = scratch();
    let root = dir.path();
    let (l1, l2) = (mkdir(root, "l1"), mkdir(root, "l2"));
    let (upper, work, mnt) = (mkdir(root, "u"), mkdir(root, "w"), mkdir(root, "m"));
    let mut rel = PathBuf::from("top");
    for depth in 0..6 {
        for (i, l) in [&l1, &l2].into_iter().enumerate() {
            fs::create_dir_all(l.join(&rel)).unwrap();
            fs::write(
                l.join(&rel).join(format!("f{depth}-{i}")),
                format!("{depth}{i}"),
            )
            .unwrap();
        }
        rel.push(format!("d{depth}"));
    }
    let expected = {
        let k = mkdir(root, "k0");
        let _k = mount_overlay(&[&l1, &l2], None, &k);
        common::snapshot(&k.join("top"))
    };
    {
        let _m = mount_ufsd(&[&l1, &l2], Some((&upper, &work)), &mnt, &[]);
        fs::create_dir(mnt.join("dest")).unwrap();
        fs::rename(mnt.join("top"), mnt.join("dest/moved")).unwrap();
        assert!(!mnt.join("top").exists());
        common::assert_same_snapshots(
            &common::snapshot(&mnt.join("dest/moved")),
            &expected,
            "ufsd after mv",
            "lower tree",
        );
        // The moved tree is writable everywhere, deep down too.
        fs::write(mnt.join("dest/moved/d0/d1/d2/f3-1"), "changed").unwrap();
        fs::rename(mnt.join("dest/moved"), mnt.join("top")).unwrap();
        assert_eq!(
            fs::read_to_string(mnt.join("top/d0/d1/d2/f3-1")).unwrap(),
            "changed"
        );
    }
    assert_eq!(
        get_xattr(&upper.join("top"), b"trusted.overlay.opaque"),
        Ok(b"y".to_vec())
    );
    // Kernel overlayfs reads the result the same way.
    let (km, kw) = (mkdir(root, "km"), mkdir(root, "kw"));
    let ufsd_view = {
        let _m = mount_ufsd(&[&l1, &l2], Some((&upper, &work)), &mnt, &[]);
        common::snapshot(&mnt)
    };
    let _k = mount_overlay(&[&l1, &l2], Some((&upper, &kw)), &km);
    common::assert_same_snapshots(&ufsd_view, &common::snapshot(&km), "ufsd", "kernel");
}

#[test]
fn rename_noreplace_and_exchange() {
    let s = stack();
    fs::write(s.lower.join("a"), "A").unwrap();
    fs::create_dir(s.lower.join("d")).unwrap();
    fs::write(s.lower.join("d/inner"), "I").unwrap();
    let _m = s.mount(&[]);
    fs::write(s.m("b"), "B").unwrap();
    let noreplace = renameat2(&s.m("a"), &s.m("b"), libc::RENAME_NOREPLACE);
    assert_eq!(errno_of(noreplace), Some(libc::EEXIST));
    renameat2(&s.m("a"), &s.m("b"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read_to_string(s.m("a")).unwrap(), "B");
    assert_eq!(fs::read_to_string(s.m("b")).unwrap(), "A");
    renameat2(&s.m("a"), &s.m("d"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read_to_string(s.m("a/inner")).unwrap(), "I");
    assert_eq!(fs::read_to_string(s.m("d")).unwrap(), "B");
    let whiteout = renameat2(&s.m("d"), &s.m("e"), libc::RENAME_WHITEOUT);
    assert!(
        errno_of(whiteout).is_some(),
        "RENAME_WHITEOUT from a caller must be refused"
    );
}

#[test]
fn a_full_upper_gives_enospc_and_the_lower_file_stays() {
    let s = stack();
    fs::write(s.lower.join("big"), vec![1u8; 3 << 20]).unwrap();
    // Upper and work on a 2 MiB tmpfs.
    let small = mkdir(&s.root, "small");
    nix::mount::mount(
        Some("tmpfs"),
        &small,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=2m"),
    )
    .unwrap();
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _tmpfs = Unmount(small.clone());
    let (u, w) = (mkdir(&small, "u"), mkdir(&small, "w"));
    let m = mount_ufsd(&[&s.lower], Some((&u, &w)), &s.mnt, &[]);
    // Copy-up of a file that does not fit fails cleanly.
    let r = fs::OpenOptions::new().append(true).open(s.m("big"));
    assert_eq!(errno_of(r), Some(libc::ENOSPC));
    assert_eq!(
        fs::read(s.m("big")).unwrap().len(),
        3 << 20,
        "lower version not visible"
    );
    assert!(names(&w.join("work")).is_empty(), "half copy left behind");
    // Writing past the space fails with ENOSPC; the daemon keeps serving.
    let mut f = fs::File::create(s.m("new")).unwrap();
    let err = (0..64).find_map(|_| {
        f.write_all(&[0u8; 64 << 10])
            .and_then(|_| f.sync_all())
            .err()
    });
    assert_eq!(err.and_then(|e| e.raw_os_error()), Some(libc::ENOSPC));
    drop(f);
    fs::remove_file(s.m("new")).unwrap();
    // With the space back, writing works again.
    fs::write(s.m("small-file"), "ok").unwrap();
    assert_eq!(fs::read_to_string(s.m("small-file")).unwrap(), "ok");
    drop(m);
}

/// `rm -rf` of lower directories: each one's upper instance, full of the whiteouts just
/// made, is moved into the work directory and deleted after the reply. The merged view and
/// the upper are right at once, and once `ufsd umount` has returned (the daemon has
/// exited) the work directory holds nothing but the shared whiteout.
#[test]
fn removed_directories_are_gone_from_the_work_dir_by_unmount() {
    let s = stack();
    for d in 0..20 {
        let dir = s.lower.join(format!("tree/d{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..30 {
            fs::write(dir.join(format!("f{f}")), b"x").unwrap();
        }
    }
    let m = s.mount(&[]);
    let out = std::process::Command::new("rm")
        .arg("-rf")
        .arg(s.m("tree"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!s.m("tree").exists());
    let wh = fs::symlink_metadata(s.upper.join("tree")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "upper/tree: {wh:?}"
    );
    m.unmount().unwrap();

    let left: Vec<String> = fs::read_dir(s.work.join("work"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| !e.file_type().unwrap().is_char_device())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "left in the work directory: {left:?}");
}
