//! Reading ahead the inodes of a directory that is being walked.
//!
//! When files of one directory keep being looked up (`ls -l`, `du`, a walk that stats
//! everything), the other names are likely to be looked up next, each needing an
//! `fstatat` in the layer that shows it; on a cold cache each is a read of the layer's
//! inode from disk, made while the caller waits. After a few file lookups answered from
//! the directory's index (`index.rs`), a background thread stats its names, so that the
//! reads overlap the round trips of the lookups before them. `lstat` of the 98k paths of
//! the bench's stack on a fresh mount with a cold cache took 2.1-2.2 s, and 1.2-1.3 s with
//! the layers' inodes already in memory (docs/benchmarks.md). Lookups of directories do
//! not count: `find` looks up only those, and reading the files' inodes would only slow
//! its own reads down.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::thread::JoinHandle;

use parking_lot::Mutex;

use crate::sys;

/// Names read ahead per directory at most: of a huge directory, any 2,048 of its names
/// (the index is a hash map) are read, in name order.
pub(super) const MAX_NAMES: usize = 2048;
/// File lookups in one directory from which its names are read ahead.
const FILE_LOOKUPS: u32 = 4;
/// Directories whose file lookups are counted.
const WATCHED: usize = 64;

/// One directory of one layer and the names in it to stat.
pub(super) struct Job {
    pub dir: OwnedFd,
    pub names: Vec<OsString>,
}

/// The background reader of one mount, started on first use.
#[derive(Debug, Default)]
pub(super) struct Prefetcher {
    running: Mutex<Option<(Sender<Job>, JoinHandle<()>)>>,
    stop: Arc<AtomicBool>,
    /// File lookups per directory (id, tree generation), `u32::MAX` once read ahead.
    counts: Mutex<VecDeque<(u64, u32, u32)>>,
}

impl Prefetcher {
    /// Counts a file lookup in directory `dir`; true when its names should be read
    /// ahead now (once per directory and tree generation).
    pub fn file_looked_up(&self, dir: u64, generation: u32) -> bool {
        let mut counts = self.counts.lock();
        if let Some(c) = counts
            .iter_mut()
            .find(|(d, g, _)| *d == dir && *g == generation)
        {
            if c.2 == u32::MAX {
                return false;
            }
            c.2 += 1;
            if c.2 >= FILE_LOOKUPS {
                c.2 = u32::MAX;
                return true;
            }
            return false;
        }
        if counts.len() >= WATCHED {
            counts.pop_front();
        }
        counts.push_back((dir, generation, 1));
        false
    }

    /// Stats `job`'s names in the background; dropped if no thread can be started.
    pub fn ahead(&self, job: Job) {
        let mut running = self.running.lock();
        if running.is_none() {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            *running = start(self.stop.clone());
        }
        if let Some((tx, _)) = running.as_ref() {
            let _ = tx.send(job);
        }
    }

    /// Abandons what is queued and stops the thread (at unmount: the layers must be let
    /// go of at once).
    pub fn finish(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let running = self.running.lock().take();
        if let Some((tx, thread)) = running {
            drop(tx);
            let _ = thread.join();
        }
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        self.finish();
    }
}

fn start(stop: Arc<AtomicBool>) -> Option<(Sender<Job>, JoinHandle<()>)> {
    let (tx, rx) = channel::<Job>();
    let thread = std::thread::Builder::new()
        .name("ufsd-prefetch".into())
        .spawn(move || {
            for job in rx {
                for name in &job.names {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    // Only the inode read matters; a name gone meanwhile is no error.
                    let _ = sys::stat_at(job.dir.as_fd(), name);
                }
            }
        })
        .ok()?;
    Some((tx, thread))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_read_ahead_once_after_a_few_file_lookups() {
        let p = Prefetcher::default();
        let fired: Vec<bool> = (0..8).map(|_| p.file_looked_up(7, 1)).collect();
        assert_eq!(fired.iter().filter(|&&f| f).count(), 1, "{fired:?}");
        assert!(fired[FILE_LOOKUPS as usize - 1], "{fired:?}");
        // Another generation (the directory changed) counts afresh.
        let again: Vec<bool> = (0..FILE_LOOKUPS).map(|_| p.file_looked_up(7, 2)).collect();
        assert_eq!(again.last(), Some(&true));
    }

    #[test]
    fn the_thread_stats_the_names_and_stops_at_finish() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"x").unwrap();
        let p = Prefetcher::default();
        let fd = sys::open_root(dir.path()).unwrap();
        p.ahead(Job {
            dir: fd,
            names: vec!["a".into(), "gone".into()],
        });
        assert!(p.running.lock().is_some(), "a thread was started");
        p.finish();
        assert!(p.running.lock().is_none());
        // After finish nothing starts again.
        let fd = sys::open_root(dir.path()).unwrap();
        p.ahead(Job {
            dir: fd,
            names: vec!["a".into()],
        });
        assert!(p.running.lock().is_none());
    }
}
