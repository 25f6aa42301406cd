//! When a directory listing carries attributes.
//!
//! In its auto mode the kernel asks for the first batch of every directory it reads with
//! `READDIRPLUS`, whatever the reader does next. Attributes cost the daemon an `fstatat`
//! per entry (on a cold cache an inode read from disk) that a walk by name and type alone
//! (`find`, `ls` without `-l`) never needs: for `find` over 98k files they were more than
//! half of its time. So a first batch is answered lean, with `.`, `..` and the
//! subdirectories only (a walk enters those next, and needs no lookup for them then), and
//! the kernel asks for the rest with plain `READDIR`; until readers are seen looking up the
//! files just listed (`ls -l`, `du`): a few lookups of non-directories in one directory
//! listed lean make the next directories' listings rich (attributes with every name, one
//! request per batch instead of a lookup per name). After a while a lean listing tests
//! again. `find` looks up no file, so it stays lean.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

/// Directories listed lean that are watched for lookups.
const WATCHED: usize = 16;
/// Lookups of non-directories in one lean directory that turn listings rich.
const LOOKUPS_FOR_RICH: u32 = 4;
/// Directories listed rich before a lean listing tests again.
const RICH_DIRS: u32 = 64;

#[derive(Debug, Default)]
pub struct PlusPolicy {
    state: Mutex<State>,
    /// Whether any lean directory is watched (read on every lookup, without the lock).
    watching: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    /// Directories still to be listed rich.
    rich_left: u32,
    /// Directories listed lean, with the lookups of files in them since.
    lean: VecDeque<(u64, u32)>,
}

impl PlusPolicy {
    /// Whether the first batch of directory `dir` is sent with attributes. A directory
    /// listed lean is watched for lookups.
    pub fn first_batch_rich(&self, dir: u64) -> bool {
        let mut st = self.state.lock();
        if st.rich_left > 0 {
            st.rich_left -= 1;
            return true;
        }
        st.lean.retain(|(d, _)| *d != dir);
        if st.lean.len() >= WATCHED {
            st.lean.pop_front();
        }
        st.lean.push_back((dir, 0));
        self.watching.store(true, Ordering::Relaxed);
        false
    }

    /// Notes that a non-directory in `dir` was looked up.
    pub fn file_looked_up(&self, dir: u64) {
        if !self.watching.load(Ordering::Relaxed) {
            return;
        }
        let mut st = self.state.lock();
        let Some(watched) = st.lean.iter_mut().find(|(d, _)| *d == dir) else {
            return;
        };
        watched.1 += 1;
        if watched.1 >= LOOKUPS_FOR_RICH {
            st.lean.clear();
            st.rich_left = RICH_DIRS;
            self.watching.store(false, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lean_until_files_listed_are_looked_up_then_rich_for_a_while() {
        let p = PlusPolicy::default();
        // A walk that looks nothing up stays lean.
        for dir in 1..100 {
            assert!(!p.first_batch_rich(dir));
        }
        // Lookups in a directory not listed lean lately change nothing.
        for _ in 0..10 {
            p.file_looked_up(1);
        }
        assert!(!p.first_batch_rich(200));
        // Three file lookups in a lean directory are not enough; the fourth is.
        for _ in 0..3 {
            p.file_looked_up(200);
        }
        assert!(!p.first_batch_rich(201));
        p.file_looked_up(200);
        for dir in 300..300 + u64::from(RICH_DIRS) {
            assert!(p.first_batch_rich(dir), "directory {dir}");
        }
        // Then a lean listing tests again.
        assert!(!p.first_batch_rich(1000));
    }
}
