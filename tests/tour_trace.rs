//! `ufsd tour` (runs unattended, shows each step, leaves no mount, daemon or directory
//! behind, also when interrupted) and tracing of copy-ups and whiteouts (`-o trace`,
//! `ufsd trace MNT`). Needs root and /dev/fuse, as CI has.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{scratch, ufsd_bin};

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
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status}");
    assert_gone(&sandbox);
}
