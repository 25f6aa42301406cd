//! Crashes and faults: the daemon killed with SIGKILL in the middle of a large write, of the
//! copy-up of a 256 MiB lower file and of a directory rename (a tree copy-up); an upper
//! layer on a 16 MiB tmpfs that fills up; lower layers that vanish while mounted; unmounting
//! a busy mount.
//!
//! After each crash the dead mount is unmounted, ufsd mounts the same layers again and must
//! show no half-copied file, every byte written before the kill (and acknowledged) or
//! fsync'ed must be there, and kernel overlayfs mounting the same upper must show the same
//! tree as ufsd. Each test prints one `conformance:` line with what it injected and checked,
//! for scripts/conformance-report.
//!
//! Needs root (mounts, tmpfs, SIGKILL of the daemon); CI runs as root.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{
    Mounted, assert_same_snapshots, daemon_pid, errno_of, mkdir, mount_overlay, mount_type_at,
    mount_ufsd, process_running, run_ufsd, snapshot, stack, wait_process_gone,
};

/// The byte at `offset` of the test pattern: position-dependent, so a misplaced or
/// zero-filled block is caught.
fn pattern(offset: u64) -> u8 {
    ((offset / 4096).wrapping_mul(7) ^ (offset % 251)) as u8
}

fn pattern_block(start: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pattern(start + i)).collect()
}

/// Checks that `path` holds the pattern from 0 to its end; returns the bytes checked.
fn verify_pattern(path: &Path) -> u64 {
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return off;
        }
        let want = pattern_block(off, n);
        if buf[..n] != want[..] {
            let i = (0..n).find(|i| buf[*i] != want[*i]).unwrap();
            panic!(
                "{}: byte {} is {:#x}, expected {:#x}",
                path.display(),
                off + i as u64,
                buf[i],
                want[i]
            );
        }
        off += n as u64;
    }
}

fn write_pattern(path: &Path, len: u64) {
    let mut f = fs::File::create(path).unwrap();
    let mut off = 0;
    while off < len {
        let n = (len - off).min(1 << 20) as usize;
        f.write_all(&pattern_block(off, n)).unwrap();
        off += n as u64;
    }
}

impl common::Stack {
    fn staging(&self) -> PathBuf {
        self.work.join("work")
    }

    fn staged(&self) -> usize {
        fs::read_dir(self.staging()).map(|d| d.count()).unwrap_or(0)
    }

    /// Remounts with ufsd (which must clear the staging directory), snapshots, unmounts,
    /// mounts the same upper with kernel overlayfs and requires the same tree. Returns the
    /// ufsd snapshot.
    fn remount_and_cross_check(&self) -> common::Snapshot {
        let m = self.mount(&[]);
        assert_eq!(self.staged(), 0, "ufsd left staging files after mounting");
        let ours = snapshot(&m.path);
        m.unmount().expect("unmount after the check");
        let kmnt = mkdir(&self.root, &format!("kernel-{}", fastrand::u32(..)));
        let k = mount_overlay(&[&self.lower], Some((&self.upper, &self.work)), &kmnt);
        let theirs = snapshot(&k.path);
        drop(k);
        assert_same_snapshots(&ours, &theirs, "ufsd after the crash", "kernel overlayfs");
        ours
    }
}

/// Kills the daemon of `m` with SIGKILL, waits for it to go, and unmounts the dead mount
/// with `fusermount3 -u` (falling back to a lazy unmount). The guard is disarmed.
fn kill_daemon(m: Mounted) {
    let pid = daemon_pid(&m.path).expect("daemon pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    assert!(
        wait_process_gone(pid, Duration::from_secs(10)),
        "daemon survived SIGKILL"
    );
    let st = Command::new("fusermount3")
        .arg("-u")
        .arg(&m.path)
        .status()
        .unwrap();
    if !st.success() {
        nix::mount::umount2(&m.path, nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
    assert_eq!(
        mount_type_at(&m.path),
        None,
        "dead mount still in the mount table"
    );
    m.unmount().unwrap();
}

/// Polls until `cond` holds or `timeout` passes; true if it held.
fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    true
}

#[test]
fn kill_during_a_large_write_keeps_fsynced_and_acknowledged_data() {
    let s = stack();
    write_pattern(&s.lower.join("journal"), 1 << 20);
    let m = s.mount(&["-o", "nopassthrough"]);
    // fsync'ed data: a new file and an appended lower file (copy-up + fsync).
    let durable = m.path.join("durable");
    let mut f = fs::File::create(&durable).unwrap();
    f.write_all(&pattern_block(0, 4 << 20)).unwrap();
    f.sync_all().unwrap();
    let mut j = fs::OpenOptions::new()
        .append(true)
        .open(m.path.join("journal"))
        .unwrap();
    j.write_all(&pattern_block(1 << 20, 1 << 20)).unwrap();
    j.sync_all().unwrap();

    let acked = Arc::new(AtomicU64::new(0));
    let writer = {
        let (acked, path) = (acked.clone(), m.path.join("big"));
        std::thread::spawn(move || {
            let f = fs::File::create(path).unwrap();
            let mut off = 0u64;
            while off < 2 << 30 {
                if f.write_all_at(&pattern_block(off, 1 << 20), off).is_err() {
                    return;
                }
                off += 1 << 20;
                acked.store(off, Ordering::Release);
            }
        })
    };
    assert!(wait_for(Duration::from_secs(30), || acked
        .load(Ordering::Acquire)
        >= 64 << 20));
    kill_daemon(m);
    writer.join().unwrap();
    drop((f, j));
    let acked = acked.load(Ordering::Acquire);

    // Everything acknowledged is in the upper layer, and nothing but the pattern.
    let big = s.upper.join("big");
    let size = fs::metadata(&big).unwrap().len();
    assert!(
        size >= acked,
        "upper has {size} bytes, {acked} were acknowledged"
    );
    let mut verified = verify_pattern(&big);
    verified += verify_pattern(&s.upper.join("durable"));
    verified += verify_pattern(&s.upper.join("journal"));
    assert_eq!(
        fs::metadata(s.upper.join("journal")).unwrap().len(),
        2 << 20
    );
    let view = s.remount_and_cross_check();
    assert!(view.contains_key(b"big".as_slice()) && view.contains_key(b"durable".as_slice()));
    println!(
        "conformance: fault=kill-during-write faults=1 written={acked} verified={verified} lost=0"
    );
}

#[test]
fn kill_during_the_copy_up_of_a_256_mib_file_shows_no_half_copy() {
    let s = stack();
    const SIZE: u64 = 256 << 20;
    write_pattern(&s.lower.join("huge"), SIZE);
    let m = s.mount(&["-o", "nopassthrough"]);
    let opener = {
        let p = m.path.join("huge");
        std::thread::spawn(move || errno_of(fs::OpenOptions::new().write(true).open(p)))
    };
    let caught = wait_for(Duration::from_secs(20), || s.staged() > 0);
    kill_daemon(m);
    let _ = opener.join().unwrap();
    // Either no copy in the upper layer, or a complete one.
    let up = s.upper.join("huge");
    if let Ok(md) = fs::metadata(&up) {
        assert_eq!(md.len(), SIZE, "a half copy is visible in the upper layer");
        verify_pattern(&up);
    }
    let view = s.remount_and_cross_check();
    assert_eq!(view[b"huge".as_slice()].size, Some(SIZE));
    // The merged file is whole, and the copy-up works now.
    let m = s.mount(&[]);
    let verified = verify_pattern(&m.path.join("huge"));
    assert_eq!(verified, SIZE);
    let f = fs::OpenOptions::new()
        .append(true)
        .open(m.path.join("huge"))
        .unwrap();
    f.write_all_at(&pattern_block(SIZE, 4096), SIZE).unwrap();
    drop(f);
    assert_eq!(verify_pattern(&m.path.join("huge")), SIZE + 4096);
    drop(m);
    println!(
        "conformance: fault=kill-during-copy-up faults=1 mid_copy={caught} written=4096 \
         verified={} lost=0",
        2 * SIZE + 4096
    );
}

#[test]
fn kill_during_a_directory_rename_leaves_one_whole_tree() {
    let s = stack();
    let mut files = 0u64;
    for d in 0..100 {
        let dir = s.lower.join(format!("tree/d{d:03}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..30 {
            fs::write(dir.join(format!("f{f:02}")), format!("{d}/{f}\n")).unwrap();
            files += 1;
        }
    }
    let before = {
        let m = s.mount(&[]);
        let snap = snapshot(&m.path.join("tree"));
        m.unmount().unwrap();
        snap
    };
    let m = s.mount(&[]);
    let renamer = {
        let (a, b) = (m.path.join("tree"), m.path.join("moved"));
        std::thread::spawn(move || errno_of(fs::rename(a, b)))
    };
    let caught = wait_for(Duration::from_secs(20), || {
        fs::read_dir(s.upper.join("tree"))
            .map(|d| d.count() > 5)
            .unwrap_or(false)
    });
    kill_daemon(m);
    let _ = renamer.join().unwrap();
    s.remount_and_cross_check();
    let m = s.mount(&[]);
    let (tree, moved) = (m.path.join("tree"), m.path.join("moved"));
    let whole = match (tree.exists(), moved.exists()) {
        (true, false) => snapshot(&tree),
        (false, true) => snapshot(&moved),
        other => panic!("after the crash tree/moved exist: {other:?}"),
    };
    assert_same_snapshots(&before, &whole, "before", "after the crash");
    // The rename can be done now.
    if tree.exists() {
        fs::rename(&tree, &moved).unwrap();
    }
    assert_same_snapshots(&before, &snapshot(&moved), "before", "renamed");
    drop(m);
    println!(
        "conformance: fault=kill-during-dir-rename faults=1 mid_copy={caught} files={files} \
         verified={files} lost=0"
    );
}

/// A tmpfs mounted at `dir` with `size`, lazily unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn new(dir: &Path, size: &str) -> Tmpfs {
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=0755").as_str()),
        )
        .unwrap();
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn a_full_16_mib_upper_fails_cleanly_and_recovers() {
    let s = stack();
    write_pattern(&s.lower.join("big"), 20 << 20);
    write_pattern(&s.lower.join("medium"), 6 << 20);
    let small = mkdir(&s.root, "small");
    let tmpfs = Tmpfs::new(&small, "16m");
    let (u, w) = (mkdir(&small, "u"), mkdir(&small, "w"));
    let m = mount_ufsd(&[&s.lower], Some((&u, &w)), &s.mnt, &[]);
    let mp = |n: &str| m.path.join(n);

    // A copy-up that cannot fit: ENOSPC, the lower version still whole, no half copy.
    let r = fs::OpenOptions::new().append(true).open(mp("big"));
    assert_eq!(errno_of(r), Some(libc::ENOSPC));
    assert_eq!(verify_pattern(&mp("big")), 20 << 20);
    assert_eq!(
        fs::read_dir(w.join("work")).unwrap().count(),
        0,
        "half copy left"
    );
    assert!(!u.join("big").exists());

    // Fill the rest: writes end in ENOSPC, and a copy-up that fitted before fails now.
    let mut filler = fs::File::create(mp("filler")).unwrap();
    let mut written = 0u64;
    let err = loop {
        match filler.write_all(&pattern_block(written, 1 << 20)) {
            Ok(()) => written += 1 << 20,
            Err(e) => break e,
        }
        assert!(written < 64 << 20, "wrote past the tmpfs size");
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    let _ = filler.sync_all();
    drop(filler);
    let r = fs::OpenOptions::new().append(true).open(mp("medium"));
    assert_eq!(errno_of(r), Some(libc::ENOSPC));
    assert_eq!(verify_pattern(&mp("medium")), 6 << 20);
    assert!(process_running(daemon_pid(&m.path).unwrap()));

    // Free the space: everything works again.
    fs::remove_file(mp("filler")).unwrap();
    let f = fs::OpenOptions::new()
        .append(true)
        .open(mp("medium"))
        .unwrap();
    f.write_all_at(&pattern_block(6 << 20, 4096), 6 << 20)
        .unwrap();
    drop(f);
    assert_eq!(verify_pattern(&mp("medium")), (6 << 20) + 4096);
    assert_eq!(verify_pattern(&u.join("medium")), (6 << 20) + 4096);
    fs::write(mp("after"), "ok").unwrap();
    let ours = snapshot(&m.path);
    drop(m);
    let k = mount_overlay(&[&s.lower], Some((&u, &w)), &s.mnt);
    assert_same_snapshots(&ours, &snapshot(&k.path), "ufsd", "kernel overlayfs");
    drop(k);
    drop(tmpfs);
    println!(
        "conformance: fault=enospc faults=3 written={} verified={} lost=0",
        written + 4096,
        (20u64 << 20) + 2 * (6 << 20) + 4096
    );
}

#[test]
fn vanishing_lower_layers_give_errors_not_a_crash() {
    let s = stack();
    // A lower on its own tmpfs (unmounted while in use) above a plain directory lower.
    let tl = mkdir(&s.root, "tmpfs-lower");
    let tmpfs = Tmpfs::new(&tl, "8m");
    fs::create_dir_all(tl.join("fromtmpfs")).unwrap();
    fs::write(tl.join("fromtmpfs/file"), "on tmpfs\n").unwrap();
    fs::write(tl.join("top"), "tmpfs top\n").unwrap();
    for d in ["gone", "kept"] {
        fs::create_dir_all(s.lower.join(d)).unwrap();
        fs::write(s.lower.join(d).join("f"), "x\n").unwrap();
    }
    let m = mount_ufsd(
        &[&tl, &s.lower],
        Some((&s.upper, &s.work)),
        &s.mnt,
        &["-o", "timeout=0"],
    );
    let pid = daemon_pid(&m.path).unwrap();
    let mp = |n: &str| m.path.join(n);
    assert_eq!(fs::read_to_string(mp("gone/f")).unwrap(), "x\n");
    assert_eq!(
        fs::read_to_string(mp("fromtmpfs/file")).unwrap(),
        "on tmpfs\n"
    );
    let held = fs::File::open(mp("top")).unwrap();

    // A lower directory removed behind the mount's back.
    fs::remove_dir_all(s.lower.join("gone")).unwrap();
    let allowed = [libc::ENOENT, libc::EIO, libc::ESTALE];
    let e = errno_of(fs::read(mp("gone/f")));
    assert!(
        e.is_some_and(|e| allowed.contains(&e)),
        "read gone/f: {e:?}"
    );
    let e = errno_of(fs::write(mp("gone/new"), "n"));
    assert!(
        e.is_some_and(|e| allowed.contains(&e)),
        "create in gone: {e:?}"
    );
    assert!(process_running(pid), "daemon died");

    // The whole tmpfs lower unmounted (lazily: the daemon's descriptors keep it alive
    // for what is already open, new lookups see the empty mount point).
    drop(tmpfs);
    let mut buf = String::new();
    let r = (&held).read_to_string(&mut buf);
    assert!(r.is_ok() || errno_of(r).is_some_and(|e| allowed.contains(&e)));
    for p in ["fromtmpfs/file", "top"] {
        match fs::read(mp(p)) {
            Ok(_) => {}
            Err(e) => assert!(allowed.contains(&e.raw_os_error().unwrap_or(0)), "{p}: {e}"),
        }
    }
    // The rest of the mount still works, reads and writes.
    assert!(process_running(pid), "daemon died");
    assert_eq!(fs::read_to_string(mp("kept/f")).unwrap(), "x\n");
    fs::write(mp("kept/new"), "still writable\n").unwrap();
    assert_eq!(
        fs::read_to_string(s.upper.join("kept/new")).unwrap(),
        "still writable\n"
    );
    let _ = fs::read_dir(&m.path).unwrap().count();
    drop(held);
    m.unmount().unwrap();
    assert!(wait_process_gone(pid, Duration::from_secs(10)));
    println!("conformance: fault=vanishing-lower faults=2 lost=0");
}

#[test]
fn unmounting_a_busy_mount_fails_clearly_and_lazy_unmount_leaves_no_daemon() {
    let s = stack();
    fs::create_dir(s.lower.join("dir")).unwrap();
    fs::write(s.lower.join("dir/file"), "busy\n").unwrap();
    let m = s.mount(&[]);
    let pid = daemon_pid(&m.path).unwrap();
    let open_file = fs::File::open(m.path.join("dir/file")).unwrap();
    let sleeper = Command::new("sleep")
        .arg("60")
        .current_dir(m.path.join("dir"))
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut sleeper = Kill(sleeper);

    let out = run_ufsd([std::ffi::OsStr::new("umount"), m.path.as_os_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "unmounting a busy mount succeeded");
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("ufsd:") && err.contains("busy"), "{err}");
    assert_eq!(mount_type_at(&m.path).as_deref(), Some("fuse.ufsd"));
    assert!(process_running(pid));

    let out = run_ufsd([
        std::ffi::OsStr::new("umount"),
        std::ffi::OsStr::new("--lazy"),
        m.path.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mount_type_at(&m.path), None, "still mounted after --lazy");
    // Users of the detached mount are still served.
    let mut buf = String::new();
    (&open_file).read_to_string(&mut buf).unwrap();
    assert_eq!(buf, "busy\n");
    assert!(
        process_running(pid),
        "daemon left while the mount was in use"
    );
    drop(open_file);
    let _ = sleeper.0.kill();
    let _ = sleeper.0.wait();
    assert!(
        wait_process_gone(pid, Duration::from_secs(10)),
        "daemon still running after the last user left"
    );
    m.unmount().unwrap();
    println!("conformance: fault=busy-unmount faults=2 lost=0");
}
