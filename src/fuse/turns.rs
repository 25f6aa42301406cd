//! Which of the daemon's threads reads the next request.
//!
//! All worker threads wait in `read` on `/dev/fuse`, and the kernel wakes the one that has
//! waited longest: while one caller sends requests one after another, each request, and
//! each `FORGET` the kernel queues meanwhile, wakes a different thread, often on another
//! CPU. For `rm -rf` of 10k files one thread took 297-345 ms against 426-458 ms for four
//! (docs/benchmarks.md). But one thread alone would make every caller wait for another's
//! disk reads, and a write held by a paused commit would stall them all.
//!
//! So while requests are quick, one thread at a time is the reader: the others park
//! after the request they were serving, and the reader serves request after request
//! without a wake-up of anyone else. When the average request gets slow (disk reads),
//! every thread reads again, and a reader about to block (a paused write gate, a
//! copy-up, a sync) steps aside first so that another takes over. A parked thread also
//! goes back to reading after 10 ms in which no request ended, and at once when a
//! thread ends: threads end when the session does, and the daemon must let go of its
//! layers as soon as it is unmounted.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

/// Average request time from which every thread reads.
const SLOW: Duration = Duration::from_micros(50);
/// How long without a request ending before parked threads read too: the caller went
/// quiet, or the reader is held up in a request that turned out slow (a cold directory),
/// and other callers must not wait for it much longer.
const QUIET: Duration = Duration::from_millis(10);

thread_local! {
    /// Whether this thread is the reader.
    static READER: Cell<bool> = const { Cell::new(false) };
    /// Tells the turns this thread served when it ends.
    static SERVED: RefCell<Option<ThreadEnd>> = const { RefCell::new(None) };
}

#[derive(Debug, Default)]
pub struct Turns {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Whether some thread is the reader.
    taken: Mutex<bool>,
    wake: Condvar,
    /// Set when a thread that served requests ended: nobody parks any more.
    ended: AtomicBool,
    /// Moving average of request times, in ns.
    average_ns: AtomicU64,
    /// When the last request ended, in ns since `epoch`.
    last_end_ns: AtomicU64,
    epoch: Instant,
    /// [`QUIET`], or longer in tests that must not depend on the machine's timing.
    quiet: Duration,
}

impl Default for Shared {
    fn default() -> Shared {
        Shared {
            taken: Mutex::new(false),
            wake: Condvar::new(),
            ended: AtomicBool::new(false),
            average_ns: AtomicU64::new(0),
            last_end_ns: AtomicU64::new(0),
            epoch: Instant::now(),
            quiet: QUIET,
        }
    }
}

/// Dropped with a thread's locals when the thread ends.
struct ThreadEnd(Arc<Shared>);

impl Drop for ThreadEnd {
    fn drop(&mut self) {
        let s = &self.0;
        s.ended.store(true, Ordering::Relaxed);
        // Taken under the lock so that no thread is between its check and its wait.
        let _taken = s.taken.lock();
        s.wake.notify_all();
    }
}

/// One request being served; dropped after its reply was sent, it decides whether this
/// thread reads the next one.
#[must_use]
pub struct Turn<'a> {
    turns: &'a Turns,
    start: Instant,
}

impl Turns {
    /// Marks the start of a request.
    pub fn begin(&self) -> Turn<'_> {
        SERVED.with_borrow_mut(|served| {
            served.get_or_insert_with(|| ThreadEnd(self.shared.clone()));
        });
        Turn {
            turns: self,
            start: Instant::now(),
        }
    }

    /// Before work that may block for long: another thread becomes the reader meanwhile.
    pub fn step_aside(&self) {
        if READER.get() {
            READER.set(false);
            *self.shared.taken.lock() = false;
            self.shared.wake.notify_one();
        }
    }

    /// After a request: stays the reader, becomes it, or parks until it may read.
    fn end(&self, took: Duration) {
        let s = &*self.shared;
        let took = took.as_nanos() as u64;
        let avg = s.average_ns.load(Ordering::Relaxed);
        s.average_ns
            .store(avg - avg / 16 + took / 16, Ordering::Relaxed);
        s.last_end_ns.store(s.since_epoch_ns(), Ordering::Relaxed);
        if s.slow() {
            if READER.get() {
                READER.set(false);
                *s.taken.lock() = false;
            }
            // Parked threads read again.
            s.wake.notify_all();
            return;
        }
        if READER.get() {
            return;
        }
        let mut taken = s.taken.lock();
        loop {
            if !*taken {
                *taken = true;
                READER.set(true);
                return;
            }
            if s.slow() || s.ended.load(Ordering::Relaxed) {
                return;
            }
            let timed_out = s.wake.wait_for(&mut taken, s.quiet).timed_out();
            let quiet_for = s
                .since_epoch_ns()
                .saturating_sub(s.last_end_ns.load(Ordering::Relaxed));
            if timed_out && quiet_for >= s.quiet.as_nanos() as u64 {
                // Nothing served for a while: read too.
                return;
            }
        }
    }
}

impl Shared {
    fn slow(&self) -> bool {
        self.average_ns.load(Ordering::Relaxed) >= SLOW.as_nanos() as u64
    }

    fn since_epoch_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.turns.end(self.start.elapsed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Turns whose parked threads never tire of waiting, so that the tests do not depend
    /// on how promptly this machine runs them.
    fn patient_turns() -> Arc<Turns> {
        Arc::new(Turns {
            shared: Arc::new(Shared {
                quiet: Duration::from_secs(3600),
                ..Shared::default()
            }),
        })
    }

    #[test]
    fn one_reader_while_quick_and_everyone_when_slow() {
        let turns = patient_turns();
        // This thread serves a quick request and becomes the reader.
        drop(turns.begin());
        assert!(READER.get());
        // Another thread finishing a quick request parks: it is still parked after 30 ms.
        let t = turns.clone();
        let other = std::thread::spawn(move || {
            drop(t.begin());
            READER.get()
        });
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            !other.is_finished(),
            "a second reader while requests are quick"
        );
        // Stepping aside hands the reader's role over.
        turns.step_aside();
        assert!(!READER.get());
        assert!(other.join().unwrap(), "the parked thread became the reader");
    }

    #[test]
    fn slow_requests_release_parked_threads() {
        let turns = patient_turns();
        drop(turns.begin());
        let t = turns.clone();
        let other = std::thread::spawn(move || drop(t.begin()));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!other.is_finished());
        // Requests of 1 ms bring the average over the line.
        for _ in 0..16 {
            turns.end(Duration::from_millis(1));
        }
        other.join().unwrap();
        assert!(!READER.get(), "no single reader while requests are slow");
    }

    #[test]
    fn a_parked_thread_reads_again_when_quiet() {
        let turns = Arc::new(Turns::default());
        drop(turns.begin());
        let t = turns.clone();
        let started = Instant::now();
        std::thread::spawn(move || drop(t.begin())).join().unwrap();
        assert!(started.elapsed() >= QUIET);
    }

    #[test]
    fn a_thread_ending_releases_parked_threads() {
        let turns = patient_turns();
        // A thread becomes the reader and ends when told to, as at the session's end.
        let (end_tx, end_rx) = std::sync::mpsc::channel::<()>();
        let t = turns.clone();
        let reader = std::thread::spawn(move || {
            drop(t.begin());
            assert!(READER.get());
            end_rx.recv().unwrap();
        });
        std::thread::sleep(Duration::from_millis(30));
        let t = turns.clone();
        let parked = std::thread::spawn(move || drop(t.begin()));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!parked.is_finished());
        end_tx.send(()).unwrap();
        reader.join().unwrap();
        for _ in 0..2000 {
            if parked.is_finished() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(parked.is_finished(), "still parked after the reader ended");
    }
}
