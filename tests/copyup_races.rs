//! Copy-ups racing lookups: six writers open a file of a lower-only directory for writing
//! at once (copying the directory up, then the file), while other threads keep looking
//! the directory up (`timeout=0`, so every stat is a FUSE lookup). A lookup resolved
//! before the directory's copy-up finished must not send the directory's node back to
//! the lower layer: the writers would then find no upper directory (EIO) and a write
//! would be lost. Seen once in `tests/load.rs` (shared copy-up, "open-rw EIO"); this
//! repeats the race over many fresh directories.
//!
//! Needs root (mounts); CI runs as root.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};

use common::stack;

const ROUNDS: usize = 300;
const WRITERS: u64 = 6;
const BLOCK: u64 = 4096;

#[test]
fn racing_lookups_never_lose_a_directory_being_copied_up() {
    let s = stack();
    for r in 0..ROUNDS {
        let d = s.lower.join(format!("d{r:03}"));
        fs::create_dir(&d).unwrap();
        fs::write(d.join("f"), vec![0u8; (WRITERS * BLOCK) as usize]).unwrap();
    }
    let m = s.mount(&["-o", "timeout=0"]);
    let mut failures = Vec::new();
    for r in 0..ROUNDS {
        let dir = m.path.join(format!("d{r:03}"));
        let file = dir.join("f");
        let barrier = Barrier::new(WRITERS as usize + 2);
        let finished = AtomicU64::new(0);
        let errors = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|sc| {
            for w in 0..WRITERS {
                let (file, barrier, errors, finished) = (&file, &barrier, &errors, &finished);
                sc.spawn(move || {
                    barrier.wait();
                    let r = fs::OpenOptions::new()
                        .write(true)
                        .open(file)
                        .and_then(|f| f.write_all_at(&[w as u8 + 1; BLOCK as usize], w * BLOCK));
                    if let Err(e) = r {
                        errors.lock().unwrap().push(format!("writer {w}: {e}"));
                    }
                    finished.fetch_add(1, Ordering::Release);
                });
            }
            // Lookups of the directory (and of its parent's listing) during the copy-up.
            for _ in 0..2 {
                let (dir, barrier, finished) = (&dir, &barrier, &finished);
                sc.spawn(move || {
                    barrier.wait();
                    while finished.load(Ordering::Acquire) < WRITERS {
                        let _ = fs::symlink_metadata(dir);
                    }
                });
            }
        });
        let data = fs::read(&file).unwrap();
        for w in 0..WRITERS {
            let at = (w * BLOCK) as usize;
            if data[at..at + BLOCK as usize] != [w as u8 + 1; BLOCK as usize] {
                errors
                    .lock()
                    .unwrap()
                    .push(format!("writer {w}'s block is missing"));
            }
        }
        let errors = errors.into_inner().unwrap();
        if !errors.is_empty() {
            failures.push(format!("round {r}: {errors:?}"));
        }
    }
    drop(m);
    let lost: usize = failures.iter().map(|f| f.matches("missing").count()).sum();
    println!(
        "conformance: copyup-races rounds={ROUNDS} writes={} lost={lost}",
        ROUNDS as u64 * WRITERS
    );
    assert!(
        failures.is_empty(),
        "{} rounds failed: {failures:#?}",
        failures.len()
    );
}
