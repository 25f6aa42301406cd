//! `ufsd tour` (runs unattended, shows each step, leaves no mount, daemon or directory
//! behind, also when interrupted) and tracing of copy-ups and whiteouts (`-o trace`,
//! `ufsd trace MNT`). Needs root and /dev/fuse, as CI has.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{mkdir, mount_ufsd, scratch, ufsd_bin};

/// The sandbox directory a tour reports on its first line.
fn sandbox_of(first_line: &str) -> PathBuf {
    PathBuf::from(
        first_line
            .strip_prefix("ufsd tour: sandbox ")
            .unwrap_or_else(|| panic!("no sandbox line: {first_line:?}"))
            .trim(),
    )
}

/// Processes still running with `UFSD_ROOT` inside `dir` (the tour's daemons carry it).
fn processes_using(dir: &Path) -> Vec<i32> {
    let needle = format!("UFSD_ROOT={}", dir.join("store").display());
    let mut pids = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(env) = fs::read(e.path().join("environ"))
            && env.split(|b| *b == 0).any(|v| v == needle.as_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}

/// Nothing of the tour's sandbox is left: no mount, no process, no directory.
fn assert_gone(sandbox: &Path) {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let s = sandbox.to_str().unwrap();
    assert!(
        !mountinfo.contains(s),
        "a mount under {s} is left:\n{mountinfo}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_using(sandbox).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(processes_using(sandbox), Vec::<i32>::new(), "daemons left");
    assert!(!sandbox.exists(), "{s} is left");
}

#[test]
fn the_tour_runs_unattended_and_cleans_up() {
    let tmp = scratch();
    let out = Command::new(ufsd_bin())
        .args(["tour", "--tmpdir"])
        .arg(tmp.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tour failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sandbox = sandbox_of(text.lines().next().unwrap_or(""));
    assert!(sandbox.starts_with(tmp.path()));
    // Each lesson's command, and what it shows.
    for want in [
        "$ tar -C rootfs -c . | ufsd import - tour:base",
        "$ mkdir c1 && ufsd mount tour:base c1",
        "$ ufsd explain c1/etc/os-release",
        "Copied up: the upper layer holds its own copy",
        "$ ufsd explain c1/etc/motd",
        "whiteout (device 0/0)",
        "directory, opaque",
        "$ echo 'hello' > c1/etc/issue && ufsd diff c1",
        "A /etc/issue\nD /etc/motd\nC /etc/os-release",
        "$ ufsd commit -m",
        "$ ufsd explain c2/etc/os-release",
        "shadowed by layer 2",
        "merged",
        "$ ufsd layers tour:v2",
        "deleted in layer 2",
        "unmounted and removed",
    ] {
        assert!(
            text.contains(want),
            "{want:?} not in the tour's output:\n{text}"
        );
    }
    assert_gone(&sandbox);
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn an_interrupted_tour_cleans_up() {
    let tmp = scratch();
    let mut child = Command::new(ufsd_bin())
        .args(["tour", "--tmpdir"])
        .arg(tmp.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let sandbox = sandbox_of(&lines.next().unwrap().unwrap());
    // Interrupt once the second container is mounted.
    for line in lines.by_ref() {
        if line.unwrap().starts_with("$ ufsd explain c2/") {
            break;
        }
    }
    assert!(sandbox.join("c2").exists());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    for _ in lines {}
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status}; stderr:\n{stderr}");
    assert_gone(&sandbox);
}

/// Reads trace lines from `ufsd trace` until `n` have come or `wait` passed.
fn read_lines(rx: &std::sync::mpsc::Receiver<String>, n: usize, wait: Duration) -> Vec<String> {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => got.push(l),
            Err(_) => break,
        }
    }
    got
}

#[test]
fn trace_shows_copy_ups_and_whiteouts_live_and_in_the_log() {
    let tmp = scratch();
    let d = tmp.path();
    let (l1, l2) = (mkdir(d, "l1"), mkdir(d, "l2"));
    mkdir(&l1, "etc");
    fs::write(l1.join("etc/passwd"), "root\n").unwrap();
    mkdir(&l1, "usr");
    mkdir(&l1, "usr/bin");
    fs::write(l1.join("usr/bin/foo"), "foo\n").unwrap();
    mkdir(&l1, "cache");
    fs::write(l1.join("cache/old"), "old\n").unwrap();
    mkdir(&l2, "etc");
    fs::write(l2.join("etc/hosts"), "localhost\n").unwrap();
    let (up, work, mnt) = (mkdir(d, "up"), mkdir(d, "work"), mkdir(d, "mnt"));
    let log = d.join("daemon.log");
    let m = mount_ufsd(
        &[&l2, &l1],
        Some((&up, &work)),
        &mnt,
        &["--trace", "--log-file", log.to_str().unwrap()],
    );

    let mut follower = Command::new(ufsd_bin())
        .arg("trace")
        .arg(&mnt)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = follower.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    // Wait until the follower listens.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = common::run_ufsd(["control", mnt.to_str().unwrap(), "status"]);
        let s = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(s.contains("trace_log=yes"), "-o trace: {s}");
        if s.contains("trace_listeners=1") {
            break;
        }
        assert!(Instant::now() < deadline, "ufsd trace never listened: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }

    fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("etc/passwd"))
        .unwrap();
    fs::remove_file(mnt.join("usr/bin/foo")).unwrap();
    fs::remove_file(mnt.join("etc/hosts")).unwrap();
    fs::remove_dir_all(mnt.join("cache")).unwrap();
    fs::create_dir(mnt.join("cache")).unwrap();
    // Already copied up: no second line.
    fs::write(mnt.join("etc/passwd"), "root2\n").unwrap();
    let want = [
        "copy-up /etc/ from layer 2 (open for write)",
        "copy-up /etc/passwd from layer 1 (open for write)",
        "copy-up /usr/ from layer 1 (unlink)",
        "copy-up /usr/bin/ from layer 1 (unlink)",
        "whiteout /usr/bin/foo hides layer 1 (unlink)",
        "whiteout /etc/hosts hides layer 2 (unlink)",
        "copy-up /cache/ from layer 1 (unlink)",
        "whiteout /cache/old hides layer 1 (unlink)",
        "whiteout /cache/ hides the layers below (rmdir)",
        "opaque /cache/ hides the layers below (mkdir)",
    ];
    let got = read_lines(&rx, want.len(), Duration::from_secs(10));
    assert_eq!(got, want);
    let extra = read_lines(&rx, 1, Duration::from_millis(300));
    assert_eq!(extra, Vec::<String>::new(), "an extra line");

    // Unmounting ends the follower.
    m.unmount().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while follower.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "ufsd trace outlived its mount");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(follower.wait().unwrap().success());
    let logged: Vec<String> = fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once("ufsd::trace] ").map(|(_, t)| t.to_string()))
        .collect();
    assert_eq!(logged, want);
}

#[test]
fn tracing_can_be_turned_on_at_runtime_and_is_refused_on_other_mounts() {
    let tmp = scratch();
    let d = tmp.path();
    let l1 = mkdir(d, "l1");
    fs::write(l1.join("f"), "f\n").unwrap();
    let (up, work, mnt) = (mkdir(d, "up"), mkdir(d, "work"), mkdir(d, "mnt"));
    let log = d.join("daemon.log");
    let _m = mount_ufsd(
        &[&l1],
        Some((&up, &work)),
        &mnt,
        &["--log-file", log.to_str().unwrap()],
    );
    let m = mnt.to_str().unwrap();
    fs::remove_file(mnt.join("f")).unwrap();
    let on = common::run_ufsd(["trace", m, "--log", "on"]);
    assert!(on.status.success());
    fs::write(l1.join("g"), "g\n").unwrap();
    fs::write(mnt.join("g"), "g2\n").unwrap();
    let o = common::run_ufsd(["trace", m, "--log", "off"]);
    assert!(o.status.success());
    fs::write(mnt.join("h"), "h\n").unwrap();
    fs::remove_file(mnt.join("h")).unwrap();
    let text = fs::read_to_string(&log).unwrap();
    let traced: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once("ufsd::trace] ").map(|(_, t)| t))
        .collect();
    assert_eq!(traced, ["copy-up /g from layer 1 (open for write)"]);
    // Not a ufsd mount: one clear line.
    let o = common::run_ufsd(["trace", d.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no control socket"), "{err}");
}
