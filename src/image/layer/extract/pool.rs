//! Small files written by worker threads while the archive is read on, so that creating
//! files (most of an extraction's time: the filesystem allocating inodes) uses every core.
//! Files go to workers by directory, each new directory to the next worker: creating in
//! a directory takes its lock, so two threads filling the same one would mostly wait for
//! each other; the queues are deep enough for the reader to get ahead into the next.
//!
//! The extractor keeps the archive's order where it matters: it sends a file here only
//! when its name is new (no earlier entry, no directory made for one) and no parent of it
//! is a non-directory the archive named. Anything that may touch what a worker is
//! writing (a name seen before, a hard link, a whiteout, the directories' final modes and
//! times) first waits for every file sent ([`FilePool::barrier`]). Workers create files
//! with `O_EXCL` in a parent directory the extractor already made and holds open, so they
//! never touch each other's names. After a failure no more files are created; the error
//! reported is that of the earliest entry that failed.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::Scope;

use super::fsops::{self, Born, Meta};
use crate::image::{ImageError, ImageResult, join_rel};
use crate::sys;

/// Largest file sent to a worker (its data is held in memory meanwhile).
pub const SMALL_FILE: u64 = 64 << 10;
/// Files handed to a worker at once: one wake-up of the worker (and, with its queue full,
/// of the reader) per batch rather than per file. On a VM whose idle cores halt, a
/// wake-up costs tens of microseconds, as much as creating the file.
const BATCH: usize = 32;
/// Data bytes that also close a batch, so that big files do not wait in it.
const BATCH_BYTES: usize = 256 << 10;
/// Batches queued for one worker, at most (at most 8 MiB of data per worker).
const QUEUE: usize = 4;

/// One file to create: its parent, name, data and metadata.
pub struct FileJob {
    /// Order in the archive: the earliest failure is the one reported.
    pub seq: u64,
    pub parent: Arc<OwnedFd>,
    pub name: OsString,
    /// The path in the layer, for errors.
    pub rel: Vec<u8>,
    pub data: Vec<u8>,
    pub meta: Meta,
}

#[derive(Default)]
struct State {
    /// Files sent and not finished.
    outstanding: usize,
    /// The earliest failure: entry order and error.
    failed: Option<(u64, ImageError)>,
    xattrs_dropped: u64,
}

struct Shared {
    state: Mutex<State>,
    done: Condvar,
    /// Set with `State::failed`, read without the lock on every file.
    failing: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The batch being filled: its directory, worker and files.
#[derive(Default)]
struct Pending {
    dir: Vec<u8>,
    worker: usize,
    jobs: Vec<FileJob>,
    bytes: usize,
}

/// Worker threads creating small files; dropped, it lets them finish and stop.
pub struct FilePool {
    /// One queue per worker.
    txs: Vec<SyncSender<Vec<FileJob>>>,
    /// Files not sent yet; the next directory goes to the next worker.
    pending: Mutex<Pending>,
    shared: Arc<Shared>,
}

/// How many workers an extraction uses: one per core, at most 4; none on one core, nor
/// on a machine oversubscribed twice over (a load average of two per core or more):
/// there the threads only take turns on the filesystem's locks, burning more CPU for the
/// same wall time (docs/layers.md, "Speed", has the measurements).
pub fn workers() -> usize {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    let busy = sys::load_average().is_some_and(|l| l >= 2.0 * n as f64);
    if n < 2 || busy { 0 } else { n.min(4) }
}

impl FilePool {
    /// Starts `n` workers in `scope` writing beneath `dest` (for error paths).
    pub fn start<'scope>(
        scope: &'scope Scope<'scope, '_>,
        n: usize,
        dest: &'scope Path,
        privileged: bool,
        born: Born,
    ) -> FilePool {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            done: Condvar::new(),
            failing: AtomicBool::new(false),
        });
        let txs = (0..n.max(1))
            .map(|_| {
                let (tx, rx) = sync_channel::<Vec<FileJob>>(QUEUE);
                let shared = shared.clone();
                scope.spawn(move || work(rx, &shared, dest, privileged, &born));
                tx
            })
            .collect();
        FilePool {
            txs,
            pending: Mutex::new(Pending::default()),
            shared,
        }
    }

    /// Queues a file for the worker of its directory (`dir`, the parent's path in the
    /// layer); fails (after waiting for the others) if one failed.
    pub fn submit(&self, dir: &[u8], job: FileJob) -> ImageResult<()> {
        if self.shared.failing.load(Ordering::Acquire) {
            return self.barrier().map(drop);
        }
        let mut pending = self.pending();
        if pending.dir != dir {
            self.flush(&mut pending)?;
            pending.dir = dir.to_vec();
            pending.worker = (pending.worker + 1) % self.txs.len();
        }
        pending.bytes += job.data.len();
        pending.jobs.push(job);
        if pending.jobs.len() >= BATCH || pending.bytes >= BATCH_BYTES {
            self.flush(&mut pending)?;
        }
        Ok(())
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends the files queued so far to their worker.
    fn flush(&self, pending: &mut Pending) -> ImageResult<()> {
        if pending.jobs.is_empty() {
            return Ok(());
        }
        let jobs = std::mem::take(&mut pending.jobs);
        pending.bytes = 0;
        let n = jobs.len();
        self.shared.lock().outstanding += n;
        if self.txs[pending.worker].send(jobs).is_err() {
            // Workers gone: only after a panic.
            self.shared.lock().outstanding -= n;
            return Err(ImageError::Invalid("a file writer stopped".to_string()));
        }
        Ok(())
    }

    /// Waits until every file queued is written; returns the xattrs the workers could not
    /// set (counted once), or the earliest failure.
    pub fn barrier(&self) -> ImageResult<u64> {
        self.flush(&mut self.pending())?;
        let mut st = self.shared.lock();
        while st.outstanding > 0 {
            st = self.shared.done.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if let Some((_, e)) = st.failed.take() {
            self.shared.failing.store(false, Ordering::Release);
            return Err(e);
        }
        Ok(std::mem::take(&mut st.xattrs_dropped))
    }
}

/// Writes the batches of one queue until the pool is dropped (which closes the queue).
fn work(rx: Receiver<Vec<FileJob>>, shared: &Shared, dest: &Path, privileged: bool, born: &Born) {
    while let Ok(jobs) = rx.recv() {
        let mut batch = Finished {
            shared,
            left: jobs.len(),
            seq: jobs.first().map_or(0, |j| j.seq),
            dropped: 0,
            failed: None,
        };
        for job in &jobs {
            batch.seq = job.seq;
            if batch.failed.is_some() || shared.failing.load(Ordering::Acquire) {
                break;
            }
            match write_file(job, dest, privileged, born) {
                Ok(dropped) => batch.dropped += dropped,
                Err(e) => batch.failed = Some((job.seq, e)),
            }
        }
    }
}

/// Counts a batch finished when dropped, even by a panic (then a failure of the file
/// being written), so that a barrier can neither hang nor miss a file.
struct Finished<'a> {
    shared: &'a Shared,
    /// Files of the batch (all counted finished at once).
    left: usize,
    /// The file being written.
    seq: u64,
    dropped: u64,
    failed: Option<(u64, ImageError)>,
}

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        let failed = self.failed.take().or_else(|| {
            std::thread::panicking().then(|| {
                (
                    self.seq,
                    ImageError::Invalid("a file writer panicked".into()),
                )
            })
        });
        // The earliest entry's failure is the one kept.
        if let Some((seq, e)) = failed {
            if st.failed.as_ref().is_none_or(|(s, _)| seq < *s) {
                st.failed = Some((seq, e));
            }
            self.shared.failing.store(true, Ordering::Release);
        }
        st.xattrs_dropped += self.dropped;
        st.outstanding -= self.left;
        if st.outstanding == 0 {
            self.shared.done.notify_all();
        }
    }
}

/// Creates one new file with its data and metadata.
fn write_file(job: &FileJob, dest: &Path, privileged: bool, born: &Born) -> ImageResult<u64> {
    let path = || join_rel(dest, &job.rel);
    let (mode, _) = born.create_mode(&job.meta, privileged);
    let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY;
    let fd = sys::open_at(job.parent.as_fd(), &job.name, flags, mode)
        .map_err(|err| ImageError::sys("creating", path(), err))?;
    let mut file = File::from(fd);
    file.write_all(&job.data)
        .map_err(ImageError::io("writing", path()))?;
    fsops::apply_file_meta(&file, &job.meta, privileged, born)
        .map_err(|(op, err)| ImageError::sys(op, path(), err))
}
