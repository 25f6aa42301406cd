//! The write gate: lets a mount's writes be paused (for a consistent `ufsd commit` of a
//! live mount) while reads go on.
//!
//! Every request that changes the upper layer holds a [`WritePass`] while it runs. A pause
//! stops new passes from being handed out (their requests wait) and then waits until the
//! passes already out are returned, so once [`WriteGate::pause`] returns, nothing is being
//! changed through the daemon. Pauses nest: each holder resumes once, and requests go on
//! when the last one has. Only what goes through the daemon is gated; writes on files opened
//! with FUSE passthrough go straight to the upper file (see docs/containers.md).

use std::sync::{Condvar, Mutex, MutexGuard};

/// Counts the mutating requests in flight and the pauses held.
#[derive(Debug, Default)]
pub struct WriteGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    in_flight: u64,
    pauses: u64,
    /// Requests waiting for a resume.
    waiting: u64,
}

/// What [`WriteGate::status`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GateStatus {
    pub paused: bool,
    pub in_flight: u64,
    pub waiting: u64,
}

/// Held by one mutating request while it runs; returned on drop.
#[must_use]
pub struct WritePass<'a> {
    gate: &'a WriteGate,
}

impl Drop for WritePass<'_> {
    fn drop(&mut self) {
        let mut s = self.gate.lock();
        s.in_flight -= 1;
        // Only a pause waits for the last one out (and a notify is a syscall even when
        // nobody waits).
        if s.in_flight == 0 && s.pauses > 0 {
            self.gate.changed.notify_all();
        }
    }
}

impl WriteGate {
    pub fn new() -> WriteGate {
        WriteGate::default()
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        // A panic while holding this tiny lock leaves consistent counters behind.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits while the gate is paused, then lets one mutating request in.
    pub fn enter(&self) -> WritePass<'_> {
        self.enter_with(|| {})
    }

    /// [`enter`](Self::enter), calling `before_wait` first if it has to wait.
    pub fn enter_with(&self, before_wait: impl FnOnce()) -> WritePass<'_> {
        let mut s = self.lock();
        if s.pauses > 0 {
            drop(s);
            before_wait();
            s = self.lock();
        }
        if s.pauses > 0 {
            s.waiting += 1;
            while s.pauses > 0 {
                s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            s.waiting -= 1;
        }
        s.in_flight += 1;
        WritePass { gate: self }
    }

    /// Stops new mutating requests and waits for those in flight to finish.
    pub fn pause(&self) {
        let mut s = self.lock();
        s.pauses += 1;
        while s.in_flight > 0 {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Undoes one [`pause`](Self::pause); requests go on when no pause is left.
    pub fn resume(&self) {
        let mut s = self.lock();
        s.pauses = s.pauses.saturating_sub(1);
        if s.pauses == 0 {
            self.changed.notify_all();
        }
    }

    pub fn status(&self) -> GateStatus {
        let s = self.lock();
        GateStatus {
            paused: s.pauses > 0,
            in_flight: s.in_flight,
            waiting: s.waiting,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    #[test]
    fn pause_waits_for_requests_in_flight_and_holds_new_ones() {
        let gate = Arc::new(WriteGate::new());
        let done = Arc::new(AtomicU64::new(0));
        let pass = gate.enter();
        let (g, d) = (gate.clone(), done.clone());
        let pauser = std::thread::spawn(move || {
            g.pause();
            d.store(1, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(done.load(Ordering::SeqCst), 0, "pause returned early");
        drop(pass);
        pauser.join().unwrap();
        assert!(gate.status().paused);
        let (g, d) = (gate.clone(), done.clone());
        let writer = std::thread::spawn(move || {
            let _p = g.enter();
            d.store(2, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            done.load(Ordering::SeqCst),
            1,
            "a write got through a pause"
        );
        assert_eq!(gate.status().waiting, 1);
        gate.resume();
        writer.join().unwrap();
        assert_eq!(done.load(Ordering::SeqCst), 2);
        assert!(!gate.status().paused);
    }

    #[test]
    fn pauses_nest() {
        let gate = WriteGate::new();
        gate.pause();
        gate.pause();
        gate.resume();
        assert!(gate.status().paused);
        gate.resume();
        assert!(!gate.status().paused);
        drop(gate.enter());
    }
}
