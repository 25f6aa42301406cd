//! Bounded-time load: parallel writers and readers checking every byte, parallel untar and
//! rm -rf in separate and shared directories, a rename storm between directories, readdir
//! while entries come and go, and the copy-up of one lower file by several writers at once.
//!
//! Every workload runs on kernel overlayfs and on ufsd over the same lower layer. Each
//! failed operation is recorded as (operation, errno); ufsd may show no class of error that
//! the kernel did not also show, and the invariants (bytes read back, files counted after
//! the storm, each writer's block after the shared copy-up) must hold. A watchdog calls
//! statfs on the mount root every 200 ms and fails the test when an answer takes over 10 s (a hang). The
//! daemon's peak RSS (VmHWM) is printed and bounded.
//!
//! Each workload runs `UFSD_LOAD_SECS` seconds per filesystem (default 3);
//! `UFSD_LOAD_ONLY=NAME[,NAME...]` runs only the workloads named (e.g. `shared-copy-up`).
//!
//! Needs root (mounts); CI runs as root.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use common::daemon_pid;
use common::posix::{Pair, errno_name};

fn secs() -> Duration {
    let s = std::env::var("UFSD_LOAD_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(s)
}

/// Error classes seen by a workload: "op ERRNO" -> count.
#[derive(Default)]
struct Errors(Mutex<BTreeMap<String, u64>>);

impl Errors {
    fn record(&self, op: &str, e: &std::io::Error) {
        let name = match e.raw_os_error() {
            Some(n) => errno_name(n),
            None => format!("{:?}", e.kind()),
        };
        *self
            .0
            .lock()
            .unwrap()
            .entry(format!("{op} {name}"))
            .or_default() += 1;
    }

    fn note(&self, class: &str) {
        *self.0.lock().unwrap().entry(class.to_string()).or_default() += 1;
    }

    fn classes(&self) -> BTreeSet<String> {
        self.0.lock().unwrap().keys().cloned().collect()
    }
}

/// Stats `root` every 200 ms from a helper thread; `stop` returns whether any answer took
/// longer than 10 s.
struct Watchdog {
    stop: Arc<AtomicBool>,
    hung: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(root: &Path) -> Watchdog {
        let stop = Arc::new(AtomicBool::new(false));
        let hung = Arc::new(AtomicBool::new(false));
        let (s, h, root) = (stop.clone(), hung.clone(), root.to_path_buf());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Acquire) {
                let (tx, rx) = std::sync::mpsc::channel();
                let r = root.clone();
                std::thread::spawn(move || {
                    // statfs always goes to the daemon (a stat may be answered from the
                    // kernel's attribute cache while every daemon thread is stuck).
                    let c = common::posix::cpath(&r);
                    // SAFETY: a valid C string and a zeroed out-parameter.
                    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
                    // SAFETY: as above.
                    let ok = unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0;
                    let _ = tx.send(ok);
                });
                if rx.recv_timeout(Duration::from_secs(10)).is_err() {
                    h.store(true, Ordering::Release);
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Watchdog {
            stop,
            hung,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> bool {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.hung.load(Ordering::Acquire)
    }
}

/// A workload: runs on the mount until the deadline, records errors, returns operations.
type Work = fn(&Path, Instant, &Errors) -> u64;

/// Runs `work(mount, deadline, errors)` on the kernel mount, then on ufsd, each under a
/// watchdog; requires ufsd's error classes to be a subset of the kernel's, apart from the
/// errnos in `races`. Returns ufsd's error classes with their counts, and its operations.
fn on_both(pair: &Pair, name: &str, races: &[&str], work: Work) -> (BTreeMap<String, u64>, u64) {
    let mut out = Vec::new();
    let mut ops = 0;
    let mut ufsd_errors = BTreeMap::new();
    for (fs_name, mnt) in [("kernel", &pair.kernel), ("ufsd", &pair.ufsd)] {
        let errors = Arc::new(Errors::default());
        let dog = Watchdog::start(mnt);
        // The workload runs in its own thread so that a hang on one path (which statfs
        // of the root would not notice) is caught too: it must end soon after its time.
        let (tx, rx) = std::sync::mpsc::channel();
        let (m, e) = (mnt.to_path_buf(), errors.clone());
        let deadline = Instant::now() + secs();
        std::thread::spawn(move || {
            let _ = tx.send(work(&m, deadline, &e));
        });
        let finished = rx.recv_timeout(secs() + Duration::from_secs(60));
        let hung = dog.stop() || finished.is_err();
        if hung {
            if let Some(pid) = daemon_pid(&pair.ufsd) {
                // Unblock whatever waits on a hung daemon before failing.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::SIGKILL,
                );
            }
            panic!("{name}: {fs_name} stopped answering (hang); the daemon was killed");
        }
        let n = finished.unwrap_or(0);
        println!(
            "load: {name} on {fs_name}: {n} operations, errors {:?}",
            errors.0.lock().unwrap()
        );
        if fs_name == "ufsd" {
            ops = n;
        }
        if fs_name == "ufsd" {
            ufsd_errors = errors.0.lock().unwrap().clone();
        }
        out.push(errors.classes());
    }
    let (k, u) = (out.remove(0), out.remove(0));
    // Errors that the workload's own races produce on any filesystem (a name another
    // thread just removed, say) come and go from run to run: they are reported, not
    // compared.
    let extra: Vec<&String> = u
        .difference(&k)
        .filter(|c| !races.iter().any(|r| c.ends_with(&format!(" {r}"))))
        .collect();
    assert!(
        extra.is_empty(),
        "{name}: ufsd had errors the kernel did not: {extra:?} (kernel: {k:?})"
    );
    (ufsd_errors, ops)
}

fn pattern(seed: u64, off: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((off + i) as u8) ^ (seed as u8).wrapping_mul(31) ^ (((off + i) >> 12) as u8))
        .collect()
}

/// Parallel writers each own a file and check every block they read back; readers stream
/// lower files and check them.
fn writers_and_readers(m: &Path, deadline: Instant, errs: &Errors) -> u64 {
    const FILE: u64 = 8 << 20;
    const BLOCK: usize = 64 << 10;
    let ops = AtomicU64::new(0);
    let root = m.join(format!("wr-{}", fastrand::u32(..)));
    fs::create_dir(&root).unwrap();
    std::thread::scope(|s| {
        for w in 0..4u64 {
            let (root, ops) = (&root, &ops);
            s.spawn(move || {
                let p = root.join(format!("w{w}"));
                let f = match fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .read(true)
                    .write(true)
                    .open(&p)
                {
                    Ok(f) => f,
                    Err(e) => return errs.record("open", &e),
                };
                let mut rng = fastrand::Rng::with_seed(w);
                let mut written: HashSet<u64> = HashSet::new();
                while Instant::now() < deadline {
                    let blk = rng.u64(..FILE / BLOCK as u64);
                    let off = blk * BLOCK as u64;
                    if let Err(e) = f.write_all_at(&pattern(w, off, BLOCK), off) {
                        errs.record("pwrite", &e);
                        continue;
                    }
                    written.insert(blk);
                    let check = *written.iter().next().unwrap();
                    let mut buf = vec![0u8; BLOCK];
                    match f.read_exact_at(&mut buf, check * BLOCK as u64) {
                        Ok(()) if buf == pattern(w, check * BLOCK as u64, BLOCK) => {}
                        Ok(()) => errs.note("pread wrong-data"),
                        Err(e) => errs.record("pread", &e),
                    }
                    ops.fetch_add(2, Ordering::Relaxed);
                }
                // Everything written is there at the end.
                for blk in written {
                    let mut buf = vec![0u8; BLOCK];
                    let off = blk * BLOCK as u64;
                    match f.read_exact_at(&mut buf, off) {
                        Ok(()) if buf == pattern(w, off, BLOCK) => {}
                        _ => errs.note("final-read wrong-data"),
                    }
                }
            });
        }
        for r in 0..2u64 {
            let ops = &ops;
            s.spawn(move || {
                while Instant::now() < deadline {
                    let p = m.join(format!("lower-data/f{r}"));
                    match fs::read(&p) {
                        Ok(d) if d == pattern(100 + r, 0, 1 << 20) => {}
                        Ok(_) => errs.note("read-lower wrong-data"),
                        Err(e) => errs.record("read-lower", &e),
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    ops.into_inner()
}

/// The paths of a small source tree: 8 directories of 40 files.
fn tree_files() -> Vec<(PathBuf, Vec<u8>)> {
    let mut v = Vec::new();
    for d in 0..8 {
        for f in 0..40 {
            v.push((
                PathBuf::from(format!("src/d{d}/f{f}.c")),
                format!("/* {d}/{f} */\n").repeat(f + 1).into_bytes(),
            ));
        }
    }
    v
}

/// Like `tar -x`: parents created as needed, files written whole.
fn untar(dest: &Path, files: &[(PathBuf, Vec<u8>)], errs: &Errors) -> u64 {
    let mut n = 0;
    for (rel, data) in files {
        let p = dest.join(rel);
        if let Err(e) = fs::create_dir_all(p.parent().unwrap()) {
            errs.record("mkdir", &e);
            continue;
        }
        if let Err(e) = fs::write(&p, data) {
            errs.record("create", &e);
        }
        n += 2;
    }
    n
}

/// Like `rm -rf`: a vanished entry is not an error (as with rm -f).
fn rm_rf(p: &Path, errs: &Errors) -> u64 {
    let mut n = 1;
    let rd = match fs::read_dir(p) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
            if let Err(e) = fs::remove_file(p)
                && e.kind() != ErrorKind::NotFound
            {
                errs.record("unlink", &e);
            }
            return n;
        }
        Err(e) => {
            errs.record("opendir", &e);
            return n;
        }
    };
    for e in rd {
        let e = match e {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => {
                errs.record("readdir", &e);
                continue;
            }
        };
        let ft = e.file_type();
        if ft.as_ref().is_ok_and(|t| t.is_dir()) {
            n += rm_rf(&e.path(), errs);
        } else {
            n += 1;
            if let Err(err) = fs::remove_file(e.path())
                && err.kind() != ErrorKind::NotFound
            {
                errs.record("unlink", &err);
            }
        }
    }
    match fs::remove_dir(p) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        // Another remover's untar raced in (shared directories): rm -rf would say so too.
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => errs.record("rmdir", &e),
        Err(e) => errs.record("rmdir", &e),
    }
    n
}

fn untar_and_rm(m: &Path, deadline: Instant, errs: &Errors) -> u64 {
    let files = tree_files();
    let ops = AtomicU64::new(0);
    let base = m.join(format!("untar-{}", fastrand::u32(..)));
    fs::create_dir(&base).unwrap();
    std::thread::scope(|s| {
        // Separate directories: each worker untars and removes its own tree, and checks it.
        for w in 0..3 {
            let (base, files, ops) = (&base, &files, &ops);
            s.spawn(move || {
                let dir = base.join(format!("own{w}"));
                while Instant::now() < deadline {
                    let mut n = untar(&dir, files, errs);
                    for (rel, data) in files.iter().step_by(37) {
                        match fs::read(dir.join(rel)) {
                            Ok(d) if d == *data => {}
                            // Names re-created over and over get recycled inode numbers:
                            // the kernel must not take a new file for the removed one.
                            Ok(_) => errs.note("read-own wrong-data"),
                            Err(e) => errs.record("read-own", &e),
                        }
                    }
                    n += rm_rf(&dir, errs);
                    if dir.exists() {
                        errs.note("rm-own left the tree");
                    }
                    ops.fetch_add(n, Ordering::Relaxed);
                }
            });
        }
        // One shared directory: two untar and two rm -rf at once.
        for w in 0..4 {
            let (base, files, ops) = (&base, &files, &ops);
            s.spawn(move || {
                let dir = base.join("shared");
                while Instant::now() < deadline {
                    let n = if w % 2 == 0 {
                        untar(&dir, files, errs)
                    } else {
                        rm_rf(&dir, errs)
                    };
                    ops.fetch_add(n, Ordering::Relaxed);
                }
            });
        }
    });
    // Whatever the race left, it can be removed whole.
    let quiet = Errors::default();
    rm_rf(&base, &quiet);
    assert!(
        quiet.classes().is_empty(),
        "final rm -rf: {:?}",
        quiet.classes()
    );
    ops.into_inner()
}

/// Four threads move files between four directories (lower ones included, so renames copy
/// up); afterwards every file is in exactly one place with its content.
fn rename_storm(m: &Path, deadline: Instant, errs: &Errors) -> u64 {
    const FILES: usize = 200;
    let ops = AtomicU64::new(0);
    let dirs: Vec<PathBuf> = (0..4).map(|d| m.join(format!("storm/d{d}"))).collect();
    // Files still in their lower place from an earlier run are part of the count.
    std::thread::scope(|s| {
        for w in 0..4u64 {
            let (dirs, ops) = (&dirs, &ops);
            s.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(w + 7);
                while Instant::now() < deadline {
                    let f = rng.usize(..FILES);
                    let (a, b) = (rng.usize(..4), rng.usize(..4));
                    let name = format!("f{f:03}");
                    if let Err(e) = fs::rename(dirs[a].join(&name), dirs[b].join(&name)) {
                        errs.record("rename", &e);
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let mut seen = BTreeMap::new();
    for d in &dirs {
        for e in fs::read_dir(d).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            let data = fs::read_to_string(d.join(&name)).unwrap();
            assert_eq!(data, format!("{name}\n"), "content of {name} changed");
            *seen.entry(name).or_insert(0) += 1;
        }
    }
    assert_eq!(seen.len(), FILES, "files lost in the rename storm");
    assert!(seen.values().all(|n| *n == 1), "duplicated files: {seen:?}");
    ops.into_inner()
}

/// Two threads create and remove names in a merged directory; two list it and stat what
/// they see. A listing must not show one name twice.
fn readdir_churn(m: &Path, deadline: Instant, errs: &Errors) -> u64 {
    let dir = m.join("churn");
    let ops = AtomicU64::new(0);
    std::thread::scope(|s| {
        for w in 0..2u64 {
            let (dir, ops) = (&dir, &ops);
            s.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(w);
                while Instant::now() < deadline {
                    let p = dir.join(format!("n{}", rng.u32(..300)));
                    let r = if rng.bool() {
                        fs::write(&p, "x")
                    } else {
                        fs::remove_file(&p)
                    };
                    if let Err(e) = r {
                        errs.record("create-or-unlink", &e);
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        for _ in 0..2 {
            let (dir, ops) = (&dir, &ops);
            s.spawn(move || {
                while Instant::now() < deadline {
                    let rd = match fs::read_dir(dir) {
                        Ok(rd) => rd,
                        Err(e) => {
                            errs.record("opendir", &e);
                            continue;
                        }
                    };
                    let mut names = HashSet::new();
                    for e in rd {
                        match e {
                            Ok(e) => {
                                if !names.insert(e.file_name()) {
                                    errs.note("readdir duplicate-name");
                                }
                                if let Err(err) = fs::symlink_metadata(e.path()) {
                                    errs.record("stat-listed", &err);
                                }
                            }
                            Err(e) => errs.record("readdir", &e),
                        }
                    }
                    // The lower names nobody touches are always listed.
                    for i in 0..20 {
                        if !names.contains(std::ffi::OsStr::new(&format!("lower{i}"))) {
                            errs.note("readdir lost-lower-name");
                        }
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    ops.into_inner()
}

/// Six writers open the same lower file for writing at the same moment (all racing to
/// copy it up) and each writes its own block; every block and the rest of the lower data
/// must be there afterwards. Repeated over fresh lower files until the time is up.
fn shared_copy_up(m: &Path, deadline: Instant, errs: &Errors) -> u64 {
    const SIZE: u64 = 4 << 20;
    let mut rounds = 0;
    for i in 0..40u64 {
        if Instant::now() > deadline {
            break;
        }
        let p = m.join(format!("shared/f{i}"));
        let barrier = Barrier::new(6);
        std::thread::scope(|s| {
            for w in 0..6u64 {
                let (p, barrier) = (&p, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let f = match fs::OpenOptions::new().write(true).open(p) {
                        Ok(f) => f,
                        Err(e) => return errs.record("open-rw", &e),
                    };
                    if let Err(e) = f.write_all_at(&[w as u8 + 1; 4096], w * (512 << 10)) {
                        errs.record("pwrite", &e);
                    }
                });
            }
        });
        let data = match fs::read(&p) {
            Ok(d) => d,
            Err(e) => {
                errs.record("read-back", &e);
                continue;
            }
        };
        let mut want = pattern(200 + i, 0, SIZE as usize);
        for w in 0..6usize {
            want[w * (512 << 10)..w * (512 << 10) + 4096].fill(w as u8 + 1);
        }
        // Nothing may ever write to a lower layer (both mounts share it).
        let lower = m
            .parent()
            .unwrap()
            .join("lower")
            .join(format!("shared/f{i}"));
        if fs::read(&lower).map_or(true, |d| d != pattern(200 + i, 0, SIZE as usize)) {
            errs.note("shared-copy-up lower-modified");
        }
        if data != want {
            errs.note("shared-copy-up lost-write");
        }
        rounds += 7;
    }
    rounds
}

fn build_lower(l: &Path) {
    fs::create_dir_all(l.join("lower-data")).unwrap();
    for r in 0..2u64 {
        fs::write(
            l.join(format!("lower-data/f{r}")),
            pattern(100 + r, 0, 1 << 20),
        )
        .unwrap();
    }
    for d in 0..4 {
        fs::create_dir_all(l.join(format!("storm/d{d}"))).unwrap();
    }
    // Half the storm's files start in the lower layer.
    for f in (0..200).step_by(2) {
        fs::write(
            l.join(format!("storm/d{}/f{f:03}", f % 4)),
            format!("f{f:03}\n"),
        )
        .unwrap();
    }
    fs::create_dir_all(l.join("churn")).unwrap();
    for i in 0..20 {
        fs::write(l.join(format!("churn/lower{i}")), "lower").unwrap();
    }
    fs::create_dir_all(l.join("shared")).unwrap();
    for i in 0..40u64 {
        fs::write(l.join(format!("shared/f{i}")), pattern(200 + i, 0, 4 << 20)).unwrap();
    }
}

fn vm_hwm_kib(pid: i32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[test]
fn parallel_load_matches_kernel_overlayfs_without_hangs() {
    let pair = Pair::new(build_lower, &["-o", "threads=8"]);
    // The storm needs its upper-only files too, on both mounts.
    for m in [&pair.kernel, &pair.ufsd] {
        for f in (1..200).step_by(2) {
            fs::write(
                m.join(format!("storm/d{}/f{f:03}", f % 4)),
                format!("f{f:03}\n"),
            )
            .unwrap();
        }
    }
    let pid = daemon_pid(&pair.ufsd).expect("daemon pid");
    let mut total = 0;
    let mut lost = 0;
    let workloads: [(&str, &[&str], Work); 5] = [
        ("writers+readers", &[], writers_and_readers),
        (
            "untar+rm-rf",
            &["ENOENT", "EEXIST", "ENOTEMPTY"],
            untar_and_rm,
        ),
        ("rename-storm", &["ENOENT"], rename_storm),
        ("readdir-churn", &["ENOENT"], readdir_churn),
        ("shared-copy-up", &[], shared_copy_up),
    ];
    // UFSD_LOAD_ONLY=NAME[,NAME...] runs only those workloads (to repeat one many times).
    let only = std::env::var("UFSD_LOAD_ONLY").ok();
    let picked = |name: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|n| n == name))
    };
    let mut failures = Vec::new();
    let mut run = 0;
    for (name, races, work) in workloads.into_iter().filter(|(n, _, _)| picked(n)) {
        let (u, ops) = on_both(&pair, name, races, work);
        // Data lost or wrong: counted for the report, then fatal.
        for (class, n) in &u {
            let bad = ["wrong-data", "lost", "duplicate", "left the tree"];
            if bad.iter().any(|b| class.contains(b)) {
                lost += n;
                failures.push(format!("{name}: {class} x{n}"));
            }
        }
        total += ops;
        run += 1;
    }
    let hwm = vm_hwm_kib(pid);
    println!(
        "conformance: load workloads={run} seconds_each={} ufsd_operations={total} peak_rss_kib={hwm} lost={lost}",
        secs().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "ufsd lost or mixed up data: {failures:?}"
    );
    assert!(
        hwm < 512 * 1024,
        "daemon peak RSS {hwm} KiB is over 512 MiB"
    );
}
