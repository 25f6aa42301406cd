//! Keeping idle CPUs awake while the mount is busy.
//!
//! Every FUSE request wakes a daemon thread and then, with the reply, the caller. Where an
//! idle CPU halts (virtual machines whose guests do not poll before halting, such as the
//! haltpoll driver with `guest_halt_poll_ns=0`), waking a thread on it costs 50 to 150 µs
//! against a few µs when it polls; a serial walk of lookups then spends most of its time
//! waiting for halted CPUs (docs/design.md, "Wake-ups"). So when requests come in a burst,
//! the daemon asks the kernel's PM QoS for a CPU latency of 0 µs, which makes idle CPUs
//! poll, and withdraws the request once requests have slowed down for a while. It costs
//! CPU time on otherwise idle CPUs only while requests keep coming. Root only
//! (`/dev/cpu_dma_latency`); `-o noidlepoll` turns it off.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use log::{debug, info};
use parking_lot::{Condvar, Mutex};

use crate::sys::CpuLatencyRequest;

/// How often the request rate is sampled (the sampler's 20 wake-ups a second are its
/// whole cost while the mount is idle).
const PERIOD: Duration = Duration::from_millis(50);
/// Requests within one period that start polling at once (320 a second or more).
const BURST: u32 = 16;
/// Requests per period that keep it going (1,000 a second).
const BUSY: u32 = 50;
/// Slower periods after which the request is withdrawn.
const QUIET_PERIODS: u32 = 4;

/// Counts the daemon's requests: one relaxed add each, and a wake-up of the sampler at the
/// start of a burst.
#[derive(Debug, Default)]
pub struct RequestMeter {
    /// Requests since the sampler last looked.
    recent: AtomicU32,
    /// Whether idle CPUs are asked to poll now.
    polling: AtomicBool,
    /// Set (under the lock) when a burst begins; also set to stop the sampler.
    woken: Mutex<Wake>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct Wake {
    burst: bool,
    stop: bool,
}

impl RequestMeter {
    /// Notes one request.
    pub fn request(&self) {
        let n = self.recent.fetch_add(1, Ordering::Relaxed) + 1;
        if n == BURST && !self.polling.load(Ordering::Relaxed) {
            self.woken.lock().burst = true;
            self.wake.notify_one();
        }
    }
}

/// The polling decision, apart from the clock and the kernel.
#[derive(Debug, Default)]
struct Hysteresis {
    polling: bool,
    quiet: u32,
}

impl Hysteresis {
    /// Takes the requests seen since the last call, `burst` if they came as one; returns
    /// the new state when it changes.
    fn observe(&mut self, requests: u32, burst: bool) -> Option<bool> {
        if burst || requests >= BUSY {
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

/// The sampling thread; stops (withdrawing any request) when dropped.
pub struct IdlePoll {
    meter: Arc<RequestMeter>,
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
        let meter = Arc::new(RequestMeter::default());
        let m = meter.clone();
        let thread = std::thread::Builder::new()
            .name("idle-poll".into())
            .spawn(move || {
                let mut state = Hysteresis::default();
                loop {
                    let burst = {
                        let mut w = m.woken.lock();
                        if !w.burst && !w.stop {
                            m.wake.wait_for(&mut w, PERIOD);
                        }
                        if w.stop {
                            return;
                        }
                        std::mem::take(&mut w.burst)
                    };
                    let requests = m.recent.swap(0, Ordering::Relaxed);
                    let Some(polling) = state.observe(requests, burst) else {
                        continue;
                    };
                    let micros = if polling { 0 } else { CpuLatencyRequest::NONE };
                    if let Err(e) = request.set(micros) {
                        info!("CPU latency request failed ({e}); no longer made");
                        return;
                    }
                    m.polling.store(polling, Ordering::Relaxed);
                    debug!("idle CPUs {}", if polling { "poll" } else { "may sleep" });
                }
            })
            .ok()?;
        Some(IdlePoll {
            meter,
            thread: Some(thread),
        })
    }

    /// What the FUSE adapter counts its requests with.
    pub fn meter(&self) -> Arc<RequestMeter> {
        self.meter.clone()
    }
}

impl Drop for IdlePoll {
    fn drop(&mut self) {
        self.meter.woken.lock().stop = true;
        self.meter.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_from_a_burst_until_requests_slow_down() {
        let mut h = Hysteresis::default();
        assert_eq!(h.observe(BUSY - 1, false), None, "a trickle does not poll");
        assert_eq!(h.observe(BURST, true), Some(true), "a burst polls at once");
        assert_eq!(h.observe(BUSY * 10, false), None, "busy stays busy");
        for _ in 1..QUIET_PERIODS {
            assert_eq!(
                h.observe(BUSY - 1, false),
                None,
                "a short lull keeps polling"
            );
        }
        assert_eq!(
            h.observe(BUSY, false),
            None,
            "busy again before the release"
        );
        for _ in 1..QUIET_PERIODS {
            assert_eq!(h.observe(0, false), None);
        }
        assert_eq!(h.observe(0, false), Some(false));
        assert_eq!(h.observe(0, false), None);
        assert_eq!(
            h.observe(BUSY, false),
            Some(true),
            "a steady rate polls too"
        );
    }

    #[test]
    fn a_burst_wakes_the_sampler_once() {
        let m = RequestMeter::default();
        for _ in 1..BURST {
            m.request();
        }
        assert!(!m.woken.lock().burst);
        m.request();
        assert!(std::mem::take(&mut m.woken.lock().burst));
        m.request();
        assert!(!m.woken.lock().burst, "one wake-up per burst");
    }
}
