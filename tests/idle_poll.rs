//! A busy mount asks the kernel for idle CPUs that poll (PM QoS CPU latency 0) and withdraws
//! the request once quiet; `-o noidlepoll` never asks. The kernel's aggregate request is
//! read back from `/dev/cpu_dma_latency`. Needs root and /dev/fuse, as CI has. One test in
//! its own binary: another busy mount at the same time would hold the request too.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{mkdir, mount_ufsd, scratch};

/// The CPU latency all requests together ask for, in µs.
fn cpu_latency_limit() -> i32 {
    let bytes = std::fs::read("/dev/cpu_dma_latency").expect("reading /dev/cpu_dma_latency");
    i32::from_ne_bytes(bytes[..4].try_into().unwrap())
}

/// Looks up fresh absent names in `mnt` (each one a request) for `how_long`, and returns
/// the lowest limit seen meanwhile.
fn lowest_limit_while_busy(mnt: &Path, how_long: Duration) -> i32 {
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut lowest = i32::MAX;
            while !done.load(Ordering::Relaxed) {
                lowest = lowest.min(cpu_latency_limit());
                std::thread::sleep(Duration::from_millis(10));
            }
            lowest
        })
    };
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed() < how_long {
        assert!(std::fs::symlink_metadata(mnt.join(format!("absent-{i}"))).is_err());
        i += 1;
    }
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap()
}

#[test]
fn busy_mount_keeps_idle_cpus_polling_until_quiet() {
    if !Path::new("/dev/cpu_dma_latency").exists() {
        eprintln!("skipped: this kernel has no /dev/cpu_dma_latency (PM QoS)");
        return;
    }
    let baseline = cpu_latency_limit();
    if baseline == 0 {
        eprintln!("skipped: another process already holds a CPU latency request of 0");
        return;
    }
    let t = scratch();
    let lower = mkdir(t.path(), "lower");
    std::fs::write(lower.join("present"), b"x").unwrap();

    let mnt = mkdir(t.path(), "mnt");
    let m = mount_ufsd(&[&lower], None, &mnt, &[]);
    assert_eq!(
        lowest_limit_while_busy(&mnt, Duration::from_millis(600)),
        0,
        "a busy mount asks for a CPU latency of 0"
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    while cpu_latency_limit() != baseline {
        assert!(
            Instant::now() < deadline,
            "the request is still held 3 s after the mount went quiet: {} µs",
            cpu_latency_limit()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    m.unmount().unwrap();

    let mnt = mkdir(t.path(), "mnt-off");
    let m = mount_ufsd(&[&lower], None, &mnt, &["-o", "noidlepoll"]);
    assert_eq!(
        lowest_limit_while_busy(&mnt, Duration::from_millis(600)),
        baseline,
        "-o noidlepoll makes no request"
    );
    m.unmount().unwrap();
}
