//! Hostile layers and unprivileged callers: symlinks in a lower layer that point at `/etc`,
//! `..` and absolute paths outside the mount are never followed by the daemon (operations
//! on the link itself, and the copy-up of a directory holding such links, leave their
//! targets untouched); a mount without `allow_other` keeps every other user out, root
//! included; through a root daemon an unprivileged caller cannot make device nodes, give
//! files away or set `trusted.`/`security.` xattrs, exactly as kernel overlayfs refuses.
//!
//! Needs root (mounts, setuid to other users, fusermount3 for the user mount).

mod common;

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::posix::{Pair, cpath, describe, in_child, lstat, rc};
use common::{errno_of, mkdir, mount_type_at, scratch};

/// Everything about the files under `dir` that a write through a symlink would change,
/// ctime included (chown, chmod and xattr changes all move it).
fn fingerprint(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p).unwrap();
        let content = if md.is_file() {
            fs::read(&p).unwrap()
        } else {
            Vec::new()
        };
        out.push(format!(
            "{} {:o} {}:{} size={} mtime={}.{} ctime={}.{} {:?}",
            p.display(),
            md.mode(),
            md.uid(),
            md.gid(),
            md.len(),
            md.mtime(),
            md.mtime_nsec(),
            md.ctime(),
            md.ctime_nsec(),
            String::from_utf8_lossy(&content)
        ));
        if md.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn symlinks_in_a_lower_layer_are_never_followed_by_the_daemon() {
    let outside_dir = scratch();
    let outside = outside_dir.path().to_path_buf();
    fs::write(outside.join("victim"), "do not touch\n").unwrap();
    fs::create_dir(outside.join("victim-dir")).unwrap();
    fs::write(outside.join("victim-dir/inner"), "inner\n").unwrap();
    let victim = outside.join("victim");
    let pair = Pair::new(
        |l| {
            let ln = |t: &Path, n: &str| std::os::unix::fs::symlink(t, l.join(n)).unwrap();
            ln(Path::new("/etc"), "etc");
            ln(Path::new(".."), "up");
            ln(&victim, "abs");
            ln(&outside.join("victim-dir"), "dirlink");
            fs::create_dir(l.join("d")).unwrap();
            std::os::unix::fs::symlink(&victim, l.join("d/link")).unwrap();
            std::os::unix::fs::symlink("../../../../..", l.join("d/dotdot")).unwrap();
            std::os::unix::fs::symlink("/etc/passwd", l.join("d/passwd")).unwrap();
            fs::write(l.join("d/file"), "plain\n").unwrap();
        },
        &[],
    );
    let etc_before = fingerprint(Path::new("/etc/passwd"));
    let before = fingerprint(&outside);
    let obs = pair.same(|m| {
        let mut o = Vec::new();
        for n in ["etc", "up", "abs", "dirlink"] {
            o.push(format!(
                "{n}: {} -> {:?}",
                describe(&m.join(n)),
                fs::read_link(m.join(n)).unwrap()
            ));
        }
        let c = |n: &str| cpath(&m.join(n));
        // SAFETY: valid C strings; each call acts on the link itself.
        unsafe {
            o.push(rc(
                "lchown abs",
                libc::lchown(c("abs").as_ptr(), 4321, 4321) as i64,
            ));
            o.push(rc(
                "lchown etc",
                libc::lchown(c("etc").as_ptr(), 4321, 4321) as i64,
            ));
            let times = [
                libc::timespec {
                    tv_sec: 1000,
                    tv_nsec: 0,
                },
                libc::timespec {
                    tv_sec: 1000,
                    tv_nsec: 0,
                },
            ];
            o.push(rc(
                "utimensat nofollow dirlink",
                libc::utimensat(
                    libc::AT_FDCWD,
                    c("dirlink").as_ptr(),
                    times.as_ptr(),
                    libc::AT_SYMLINK_NOFOLLOW,
                ) as i64,
            ));
            let name = CString::new("trusted.hostile").unwrap();
            o.push(rc(
                "lsetxattr trusted on abs",
                libc::lsetxattr(c("abs").as_ptr(), name.as_ptr(), b"x".as_ptr().cast(), 1, 0)
                    as i64,
            ));
            let fd = libc::open(c("abs").as_ptr(), libc::O_RDONLY | libc::O_NOFOLLOW);
            o.push(rc("open abs O_NOFOLLOW", fd as i64));
            if fd >= 0 {
                libc::close(fd);
            }
        }
        o.push(format!(
            "{:?}",
            errno_of(fs::rename(m.join("abs"), m.join("abs2")))
        ));
        o.push(format!(
            "{:?}",
            errno_of(fs::rename(m.join("up"), m.join("up2")))
        ));
        o.push(format!("{:?}", errno_of(fs::remove_file(m.join("etc")))));
        o.push(format!(
            "{:?}",
            errno_of(fs::remove_file(m.join("dirlink")))
        ));
        o.push(describe(&m.join("abs2")));
        o
    });
    // A tree copy-up of a directory holding links out of the mount (ufsd only: kernel
    // overlayfs without redirect_dir refuses to move a lower directory with EXDEV).
    fs::rename(pair.ufsd.join("d"), pair.ufsd.join("d2")).unwrap();
    assert_eq!(fs::read_link(pair.ufsd.join("d2/link")).unwrap(), victim);
    assert_eq!(
        fs::read_link(pair.ufsd.join("d2/dotdot")).unwrap(),
        Path::new("../../../../..")
    );
    assert_eq!(
        fs::read_to_string(pair.ufsd.join("d2/file")).unwrap(),
        "plain\n"
    );
    assert!(obs.iter().any(|l| l == "lchown abs: ok"), "{obs:#?}");
    assert!(
        obs.iter().any(|l| l == "open abs O_NOFOLLOW: ELOOP"),
        "{obs:#?}"
    );
    assert!(obs.iter().any(|l| l == "120777 4321:4321"), "{obs:#?}");
    assert_eq!(
        fingerprint(&outside),
        before,
        "a target outside the mount changed"
    );
    assert_eq!(fingerprint(Path::new("/etc/passwd")), etc_before);
    // The links are links in the upper layer, with their targets unchanged.
    let up = &pair.ufsd_upper;
    assert_eq!(fs::read_link(up.join("abs2")).unwrap(), victim);
    assert_eq!(
        fs::read_link(up.join("d2/link")).unwrap(),
        outside.join("victim")
    );
    assert!(lstat(&up.join("d2/passwd")).is_ok_and(|s| s.st_mode & libc::S_IFMT == libc::S_IFLNK));
    // The lower layer was not written either.
    assert_eq!(fs::read_link(pair.lower.join("abs")).unwrap(), victim);
    assert_eq!(lstat(&pair.lower.join("abs")).unwrap().st_uid, 0);
}

#[test]
fn an_unprivileged_caller_cannot_gain_privilege_through_a_root_daemon() {
    let pair = Pair::new(
        |l| {
            fs::create_dir(l.join("pub")).unwrap();
            fs::set_permissions(l.join("pub"), fs::Permissions::from_mode(0o777)).unwrap();
            fs::write(l.join("pub/roots"), "root's\n").unwrap();
            fs::set_permissions(l.join("pub/roots"), fs::Permissions::from_mode(0o666)).unwrap();
            let p = l.join("pub/roots");
            let name = CString::new("trusted.secret").unwrap();
            // SAFETY: valid C strings and buffer.
            let r = unsafe {
                libc::lsetxattr(
                    cpath(&p).as_ptr(),
                    name.as_ptr(),
                    b"v".as_ptr().cast(),
                    1,
                    0,
                )
            };
            assert_eq!(r, 0);
        },
        &[],
    );
    let obs = pair.same(|m| {
        let m = m.to_path_buf();
        in_child(1000, 1000, 0o022, move || {
            let p = |n: &str| cpath(&m.join(n));
            let x = |n: &str| CString::new(n).unwrap();
            let mut o = Vec::new();
            // SAFETY: valid C strings and buffers throughout.
            unsafe {
                o.push(rc(
                    "mknod char 1:3",
                    libc::mknod(
                        p("pub/null").as_ptr(),
                        libc::S_IFCHR | 0o666,
                        libc::makedev(1, 3),
                    ) as i64,
                ));
                o.push(rc(
                    "mknod block",
                    libc::mknod(
                        p("pub/blk").as_ptr(),
                        libc::S_IFBLK | 0o666,
                        libc::makedev(7, 0),
                    ) as i64,
                ));
                o.push(rc(
                    "mknod whiteout 0:0",
                    libc::mknod(p("pub/wh").as_ptr(), libc::S_IFCHR, 0) as i64,
                ));
                let fd = libc::open(
                    p("pub/mine").as_ptr(),
                    libc::O_CREAT | libc::O_WRONLY,
                    0o6755,
                );
                o.push(rc("create 06755", fd as i64));
                libc::close(fd);
                o.push(rc(
                    "chown mine to root",
                    libc::chown(p("pub/mine").as_ptr(), 0, 0) as i64,
                ));
                o.push(rc(
                    "chmod u+s root's file",
                    libc::chmod(p("pub/roots").as_ptr(), 0o4777) as i64,
                ));
                o.push(rc(
                    "chown root's file",
                    libc::chown(p("pub/roots").as_ptr(), 1000, 1000) as i64,
                ));
                for attr in ["trusted.mine", "security.mine", "user.mine"] {
                    o.push(rc(
                        &format!("setxattr {attr} on own file"),
                        libc::setxattr(
                            p("pub/mine").as_ptr(),
                            x(attr).as_ptr(),
                            b"1".as_ptr().cast(),
                            1,
                            0,
                        ) as i64,
                    ));
                }
                o.push(rc(
                    "setxattr user. on root's 0666 file",
                    libc::setxattr(
                        p("pub/roots").as_ptr(),
                        x("user.x").as_ptr(),
                        b"1".as_ptr().cast(),
                        1,
                        0,
                    ) as i64,
                ));
                let mut buf = [0u8; 64];
                o.push(rc(
                    "getxattr trusted. of root's file",
                    libc::getxattr(
                        p("pub/roots").as_ptr(),
                        x("trusted.secret").as_ptr(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                    ) as i64,
                ));
                let n =
                    libc::listxattr(p("pub/roots").as_ptr(), buf.as_mut_ptr().cast(), buf.len());
                o.push(format!(
                    "listxattr root's file: {:?}",
                    String::from_utf8_lossy(&buf[..n.max(0) as usize])
                ));
            }
            o.push(format!("mine {}", describe(&m.join("pub/mine"))));
            o.push(format!("roots {}", describe(&m.join("pub/roots"))));
            o
        })
    });
    for want in [
        "mknod char 1:3: EPERM",
        "mknod block: EPERM",
        "mknod whiteout 0:0: EPERM",
        "chown mine to root: EPERM",
        "chmod u+s root's file: EPERM",
        "setxattr trusted.mine on own file: EPERM",
        "setxattr security.mine on own file: EPERM",
        "setxattr user.mine on own file: ok",
        "getxattr trusted. of root's file: ENODATA",
        "listxattr root's file: \"user.x\\0\"",
        // Set-uid to oneself is allowed; the file belongs to the caller, not to root.
        "mine 106755 1000:1000",
        "roots 100666 0:0",
    ] {
        assert!(
            obs.iter().any(|l| l == want),
            "missing {want:?} in {obs:#?}"
        );
    }
    assert!(!pair.ufsd_upper.join("pub/null").exists());
}

/// Runs `ufsd ARGS` as uid 1000 with its own runtime directory.
fn ufsd_as_1000(args: &[&std::ffi::OsStr], runtime: &Path) -> std::process::Output {
    Command::new("setpriv")
        .args(["--reuid=1000", "--regid=1000", "--clear-groups"])
        .arg(common::ufsd_bin())
        .args(args)
        .env("XDG_RUNTIME_DIR", runtime)
        .env("HOME", runtime)
        .output()
        .unwrap()
}

#[test]
fn without_allow_other_nobody_else_enters_not_even_root() {
    let dir = scratch();
    let root = dir.path();
    let chown = |p: &PathBuf| std::os::unix::fs::chown(p, Some(1000), Some(1000)).unwrap();
    let (lower, upper, work, mnt, run) = (
        mkdir(root, "lower"),
        mkdir(root, "upper"),
        mkdir(root, "work"),
        mkdir(root, "mnt"),
        mkdir(root, "run"),
    );
    fs::write(lower.join("f"), "user mount\n").unwrap();
    for p in [&upper, &work, &mnt, &run] {
        chown(p);
    }
    // Distributions make /dev/fuse 0666 (a user mount opens it, fusermount3 mounts);
    // a VM may have it 0600. Open it to users for this test, as the fuse3 package does.
    struct DevFuseMode(u32);
    impl Drop for DevFuseMode {
        fn drop(&mut self) {
            let _ = fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(self.0));
        }
    }
    let old = fs::metadata("/dev/fuse").unwrap().mode() & 0o7777;
    let _dev_fuse = (old & 0o006 != 0o006).then(|| {
        fs::set_permissions("/dev/fuse", fs::Permissions::from_mode(0o666)).unwrap();
        DevFuseMode(old)
    });
    let o = |p: &PathBuf| p.as_os_str().to_owned();
    let out = ufsd_as_1000(
        &[
            "mount".as_ref(),
            "--lower".as_ref(),
            &o(&lower),
            "--upper".as_ref(),
            &o(&upper),
            "--work".as_ref(),
            &o(&work),
            &o(&mnt),
        ],
        &run,
    );
    assert!(
        out.status.success(),
        "user mount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    struct Lazy(PathBuf);
    impl Drop for Lazy {
        fn drop(&mut self) {
            if mount_type_at(&self.0).is_some() {
                let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
    let guard = Lazy(mnt.clone());
    assert_eq!(mount_type_at(&mnt).as_deref(), Some("fuse.ufsd"));
    // The owner gets in.
    let owner = in_child(1000, 1000, 0o022, {
        let m = mnt.clone();
        move || {
            vec![format!(
                "{:?}",
                fs::read_to_string(m.join("f")).map_err(|e| e.raw_os_error())
            )]
        }
    });
    assert_eq!(owner, [r#"Ok("user mount\n")"#]);
    // Another user does not, and neither does root.
    let other = in_child(1001, 1001, 0o022, {
        let m = mnt.clone();
        move || vec![format!("{:?}", errno_of(fs::read_dir(&m)))]
    });
    assert_eq!(other, [format!("{:?}", Some(libc::EACCES))]);
    assert_eq!(errno_of(fs::read(mnt.join("f"))), Some(libc::EACCES));
    // The owner unmounts it (through fusermount3).
    let out = ufsd_as_1000(&["umount".as_ref(), &o(&mnt)], &run);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mount_type_at(&mnt), None);
    drop(guard);
}
