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
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::Scope;

use super::fsops::{self, Born, Meta};
use crate::image::{ImageError, ImageResult, join_rel};
use crate::sys;

/// Largest file sent to a worker (its data is held in memory meanwhile).
pub const SMALL_FILE: u64 = 64 << 10;
/// Files queued for one worker, at most (so at most 8 MiB of data per worker).
const QUEUE: usize = 128;

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
    outstanding: u64,
    /// The earliest failure: entry order and error.
    failed: Option<(u64, ImageError)>,
    xattrs_dropped: u64,
}

struct Shared {
    state: Mutex<State>,
    done: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Worker threads creating small files; dropped, it lets them finish and stop.
pub struct FilePool {
    /// One queue per worker.
    txs: Vec<SyncSender<FileJob>>,
    /// The directory of the last file sent and its worker; the next directory goes to
    /// the next worker.
    last: Mutex<(Vec<u8>, usize)>,
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
        });
        let txs = (0..n.max(1))
            .map(|_| {
                let (tx, rx) = sync_channel::<FileJob>(QUEUE);
                let shared = shared.clone();
                scope.spawn(move || work(rx, &shared, dest, privileged, &born));
                tx
            })
            .collect();
        FilePool {
            txs,
            last: Mutex::new((Vec::new(), 0)),
            shared,
        }
    }

    /// Sends a file to the worker of its directory (`dir`, the parent's path in the
    /// layer); fails (after waiting for the others) if one failed.
    pub fn submit(&self, dir: &[u8], job: FileJob) -> ImageResult<()> {
        if self.shared.lock().failed.is_some() {
            return self.barrier().map(drop);
        }
        let tx = {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if last.0 != dir {
                last.0 = dir.to_vec();
                last.1 = (last.1 + 1) % self.txs.len();
            }
            &self.txs[last.1]
        };
        self.shared.lock().outstanding += 1;
        if tx.send(job).is_err() {
            // Workers gone: only after a panic.
            self.shared.lock().outstanding -= 1;
            return Err(ImageError::Invalid("a file writer stopped".to_string()));
        }
        Ok(())
    }

    /// Waits until every file sent is written; returns the xattrs the workers could not
    /// set (counted once), or the earliest failure.
    pub fn barrier(&self) -> ImageResult<u64> {
        let mut st = self.shared.lock();
        while st.outstanding > 0 {
            st = self.shared.done.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if let Some((_, e)) = st.failed.take() {
            return Err(e);
        }
        Ok(std::mem::take(&mut st.xattrs_dropped))
    }
}

/// Writes the files of one queue until the pool is dropped (which closes the queue).
fn work(rx: Receiver<FileJob>, shared: &Shared, dest: &Path, privileged: bool, born: &Born) {
    while let Ok(job) = rx.recv() {
        let finished = Finished(shared, job.seq);
        if shared.lock().failed.is_some() {
            continue;
        }
        let result = write_file(&job, dest, privileged, born);
        let mut st = finished.0.lock();
        match result {
            Ok(dropped) => st.xattrs_dropped += dropped,
            Err(e) => {
                if st.failed.as_ref().is_none_or(|(seq, _)| job.seq < *seq) {
                    st.failed = Some((job.seq, e));
                }
            }
        }
    }
}

/// Counts a job finished when dropped, even by a panic (then a failure), so that a
/// barrier can neither hang nor miss a file.
struct Finished<'a>(&'a Shared, u64);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        if std::thread::panicking() && st.failed.as_ref().is_none_or(|(seq, _)| self.1 < *seq) {
            st.failed = Some((self.1, ImageError::Invalid("a file writer panicked".into())));
        }
        st.outstanding -= 1;
        if st.outstanding == 0 {
            self.0.done.notify_all();
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
