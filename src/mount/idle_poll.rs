//! Keeping idle CPUs awake while the mount is busy.
//!
//! Every FUSE request wakes a daemon thread and then, with the reply, the caller. Where an
//! idle CPU halts (virtual machines whose guests do not poll before halting, such as the
//! haltpoll driver with `guest_halt_poll_ns=0`), waking a thread on it costs 50 to 150 µs
//! against a few µs when it polls; a serial walk of lookups then spends most of its time
//! waiting for halted CPUs (docs/benchmarks.md, the notes on wake-ups). So while the daemon
//! is busy, it asks the kernel's PM QoS for a CPU latency of 0 µs, which makes idle CPUs
//! poll, and withdraws the request once it has been quiet for a while. It costs CPU time on
//! otherwise idle CPUs only while requests keep coming. Busy is measured by how often the
//! daemon's threads block, which is what each request makes them do. Root only
//! (`/dev/cpu_dma_latency`); `-o noidlepoll` turns it off.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use log::{debug, info};

use crate::sys::{self, CpuLatencyRequest};

/// How often the daemon's activity is sampled.
const PERIOD: Duration = Duration::from_millis(50);
/// Blocking waits per period that mean busy (1,000 a second); the sampling thread's own
/// sleep is one.
const BUSY_SWITCHES: u64 = 50;
/// Quiet periods after which the request is withdrawn.
const QUIET_PERIODS: u32 = 4;

/// The busy/quiet decision, apart from the clock and the kernel.
#[derive(Debug, Default)]
struct Hysteresis {
    polling: bool,
    quiet: u32,
}

impl Hysteresis {
    /// Takes one period's count of blocking waits; returns the new state when it changes.
    fn observe(&mut self, switches: u64) -> Option<bool> {
        if switches >= BUSY_SWITCHES {
            self.quiet = 0;
            if !self.polling {
                self.polling = true;
                return Some(true);
            }
        } else if self.polling {
            self.quiet += 1;
            if self.quiet >= QUIET_PERIODS {
                self.polling = false;
                self.quiet = 0;
                return Some(false);
            }
        }
        None
    }
}

/// The sampling thread; stops when dropped.
pub struct IdlePoll {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl IdlePoll {
    /// Starts sampling, or `None` where no CPU latency request can be made (not root).
    pub fn start() -> Option<IdlePoll> {
        let mut request = match CpuLatencyRequest::open() {
            Ok(r) => r,
            Err(e) => {
                debug!("no CPU latency requests ({e}): idle CPUs keep their sleep states");
                return None;
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("idle-poll".into())
            .spawn(move || {
                let mut state = Hysteresis::default();
                let mut last = sys::voluntary_switches();
                while !stopping.load(Ordering::Relaxed) {
                    std::thread::sleep(PERIOD);
                    let now = sys::voluntary_switches();
                    let change = state.observe(now.saturating_sub(last));
                    last = now;
                    if let Some(polling) = change {
                        let micros = if polling { 0 } else { CpuLatencyRequest::NONE };
                        if let Err(e) = request.set(micros) {
                            info!("CPU latency request failed ({e}); no longer made");
                            return;
                        }
                        debug!("idle CPUs {}", if polling { "poll" } else { "may sleep" });
                    }
                }
            })
            .ok()?;
        Some(IdlePoll {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for IdlePoll {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_when_busy_and_stops_after_quiet_periods() {
        let mut h = Hysteresis::default();
        assert_eq!(h.observe(1), None, "idle stays idle");
        assert_eq!(h.observe(BUSY_SWITCHES), Some(true));
        assert_eq!(h.observe(BUSY_SWITCHES * 10), None, "busy stays busy");
        for _ in 1..QUIET_PERIODS {
            assert_eq!(h.observe(1), None, "a short lull keeps polling");
        }
        assert_eq!(
            h.observe(BUSY_SWITCHES),
            None,
            "busy again before the release"
        );
        for _ in 1..QUIET_PERIODS {
            assert_eq!(h.observe(0), None);
        }
        assert_eq!(h.observe(0), Some(false));
        assert_eq!(h.observe(0), None);
    }
}
