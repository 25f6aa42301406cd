//! Deleting, after the reply, the trees that `rmdir` moves into the work directory.
//!
//! A directory removed from the merged view was empty there, so its upper instance holds
//! only whiteouts and markers: no data whose space a caller could be waiting for. It is
//! renamed into the work directory at once (the view changes atomically, as before) and
//! deleted by a background thread, so that `rm -rf` does not wait for the hundred
//! `unlink`s of each directory's whiteouts. What is left when the daemon dies is cleared
//! from the work directory at the next mount (`mount::prepare_work`).

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::{Sender, channel};
use std::thread::JoinHandle;

use log::warn;
use parking_lot::Mutex;

use super::copyup::remove_tree;

/// The background deleter of one mount's work directory, started on first use.
#[derive(Debug, Default)]
pub(super) struct Discarder {
    running: Mutex<Option<(Sender<OsString>, JoinHandle<()>)>>,
}

impl Discarder {
    /// Deletes the tree `name` in `work` later; now if no thread can be started.
    pub fn later(&self, work: BorrowedFd<'_>, name: OsString) {
        let mut running = self.running.lock();
        if running.is_none() {
            *running = start(work);
        }
        match running.as_ref() {
            Some((tx, _)) => {
                if let Err(e) = tx.send(name) {
                    delete(work, e.0);
                }
            }
            None => delete(work, name),
        }
    }

    /// Waits until every tree handed over so far is deleted, and stops the thread.
    pub fn finish(&self) {
        let running = self.running.lock().take();
        if let Some((tx, thread)) = running {
            drop(tx);
            let _ = thread.join();
        }
    }
}

impl Drop for Discarder {
    fn drop(&mut self) {
        self.finish();
    }
}

fn start(work: BorrowedFd<'_>) -> Option<(Sender<OsString>, JoinHandle<()>)> {
    let own: OwnedFd = work.try_clone_to_owned().ok()?;
    let (tx, rx) = channel::<OsString>();
    let thread = std::thread::Builder::new()
        .name("ufsd-discard".into())
        .spawn(move || {
            for name in rx {
                delete(own.as_fd(), name);
            }
        })
        .ok()?;
    Some((tx, thread))
}

fn delete(work: BorrowedFd<'_>, name: OsString) {
    if let Err(e) = remove_tree(work, &name) {
        warn!(
            "could not delete {} in the work directory ({e}); the next mount clears it",
            name.to_string_lossy()
        );
    }
}
