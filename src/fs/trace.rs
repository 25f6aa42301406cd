//! Tracing the write path: one line per copy-up, whiteout and opaque directory as it
//! happens, for a learner watching what a command does to the layers.
//!
//! The [`Tracer`] costs one atomic load per copy-up or whiteout while nobody listens. When
//! on, each event becomes a line such as `copy-up /etc/passwd from layer 2 (open for
//! write)` that goes to the daemon log (target `ufsd::trace`, with `-o trace` or `trace
//! log on`) and to every control connection that asked for it (`trace on`, as `ufsd trace
//! MNT` does). Layers are numbered as `ufsd explain` numbers them: layer 1 is the bottom.
//!
//! The reason ("open for write", "unlink", ...) is the operation the FUSE request asked
//! for: each public write-path entry point names itself with [`reason`] for the duration
//! of the call, so the copy-up code deep below need not be told.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};

use parking_lot::Mutex;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceKind {
    /// An object was copied from a lower layer into the upper one.
    CopyUp,
    /// A whole directory tree was copied up (before a directory rename).
    CopyUpTree,
    /// A whiteout now hides the name in the layers below.
    Whiteout,
    /// A directory was made opaque: the layers below no longer show through it.
    Opaque,
}

/// One copy-up or whiteout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceEvent {
    pub kind: TraceKind,
    /// The path in the merged view; directories end with `/`.
    pub path: String,
    /// The lower layer concerned (numbered from the bottom, as `explain` does), if known.
    pub layer: Option<usize>,
    /// The operation that caused it.
    pub reason: &'static str,
}

impl fmt::Display for TraceEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let layer = |f: &mut fmt::Formatter<'_>| match self.layer {
            Some(n) => write!(f, "layer {n}"),
            None => write!(f, "the layers below"),
        };
        match self.kind {
            TraceKind::CopyUp => {
                write!(f, "copy-up {} from ", self.path)?;
                layer(f)?;
            }
            TraceKind::CopyUpTree => write!(f, "copy-up {} whole tree", self.path)?,
            TraceKind::Whiteout => {
                write!(f, "whiteout {} hides ", self.path)?;
                layer(f)?;
            }
            TraceKind::Opaque => {
                write!(f, "opaque {} hides ", self.path)?;
                layer(f)?;
            }
        }
        write!(f, " ({})", self.reason)
    }
}

/// Where trace events go: the log and any number of listeners.
#[derive(Debug, Default)]
pub struct Tracer {
    /// Listeners plus one if logging: zero means tracing is off.
    active: AtomicUsize,
    log: AtomicBool,
    listeners: Mutex<Vec<(u64, Sender<String>)>>,
    next_id: AtomicU64,
}

impl Tracer {
    /// Whether anyone wants events (the only cost while tracing is off).
    pub fn enabled(&self) -> bool {
        self.active.load(Ordering::Relaxed) != 0
    }

    /// Turns writing events to the daemon log on or off.
    pub fn set_log(&self, on: bool) {
        if self.log.swap(on, Ordering::AcqRel) != on {
            if on {
                self.active.fetch_add(1, Ordering::AcqRel);
            } else {
                self.active.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    pub fn logging(&self) -> bool {
        self.log.load(Ordering::Acquire)
    }

    /// A new listener: its id (for [`Self::unsubscribe`]) and the lines it receives.
    pub fn subscribe(&self) -> (u64, Receiver<String>) {
        let (tx, rx) = channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.listeners.lock().push((id, tx));
        self.active.fetch_add(1, Ordering::AcqRel);
        (id, rx)
    }

    pub fn unsubscribe(&self, id: u64) {
        let mut l = self.listeners.lock();
        let before = l.len();
        l.retain(|(i, _)| *i != id);
        let gone = before - l.len();
        self.active.fetch_sub(gone, Ordering::AcqRel);
    }

    /// Number of listeners.
    pub fn listeners(&self) -> usize {
        self.listeners.lock().len()
    }

    /// Sends `event` to the log and the listeners (call only when [`Self::enabled`]).
    pub fn emit(&self, event: TraceEvent) {
        let line = event.to_string();
        if self.logging() {
            log::info!(target: "ufsd::trace", "{line}");
        }
        let mut l = self.listeners.lock();
        let before = l.len();
        l.retain(|(_, tx)| tx.send(line.clone()).is_ok());
        let gone = before - l.len();
        if gone > 0 {
            self.active.fetch_sub(gone, Ordering::AcqRel);
        }
    }
}

thread_local! {
    static REASON: Cell<&'static str> = const { Cell::new("write") };
}

/// Names the operation running on this thread until the guard is dropped.
pub fn reason(r: &'static str) -> ReasonGuard {
    ReasonGuard(REASON.with(|c| c.replace(r)))
}

/// The operation running on this thread.
pub fn current_reason() -> &'static str {
    REASON.with(Cell::get)
}

/// Restores the previous reason on drop.
pub struct ReasonGuard(&'static str);

impl Drop for ReasonGuard {
    fn drop(&mut self) {
        REASON.with(|c| c.set(self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_listeners_and_the_off_switch() {
        let t = Tracer::default();
        assert!(!t.enabled());
        let (id, rx) = t.subscribe();
        assert!(t.enabled());
        let _r = reason("open for write");
        t.emit(TraceEvent {
            kind: TraceKind::CopyUp,
            path: "/etc/passwd".into(),
            layer: Some(2),
            reason: current_reason(),
        });
        assert_eq!(
            rx.recv().unwrap(),
            "copy-up /etc/passwd from layer 2 (open for write)"
        );
        t.unsubscribe(id);
        assert!(!t.enabled());
        t.set_log(true);
        t.set_log(true);
        assert!(t.enabled());
        t.set_log(false);
        assert!(!t.enabled());
        // A listener that went away is dropped at the next event.
        let (_, rx) = t.subscribe();
        drop(rx);
        t.emit(TraceEvent {
            kind: TraceKind::Whiteout,
            path: "/usr/bin/foo".into(),
            layer: None,
            reason: "unlink",
        });
        assert!(!t.enabled());
        drop(_r);
        assert_eq!(current_reason(), "write");
    }
}
