//! A small cache of merged directory listings, so that the lookups that follow a readdir
//! (`ls -l`, `find`, `du`: list, then stat every name) are answered without probing every
//! layer for every name.
//!
//! Invariants: an entry describes the directory as it was at the tree generation it was
//! built in; the write path drops a directory's entry whenever it changes the directory
//! (lower layers never change), and a tree copy-up moves to a new generation, which
//! retires every entry. The cache holds a bounded number of directories.

use std::collections::{HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::layer::FileKind;

/// Visible names of one merged directory: the layer shown and the type.
pub type DirIndex = HashMap<OsString, (usize, FileKind)>;

/// How many directories are kept: enough for a depth-first walk's working set.
const CAPACITY: usize = 64;

#[derive(Debug, Default)]
pub struct IndexCache {
    entries: Mutex<VecDeque<(u64, u32, Arc<DirIndex>)>>,
    /// Lookups answered without an index, per directory (bounded like `entries`).
    misses: Mutex<VecDeque<(u64, u32)>>,
    /// Counts `drop_dir` calls, so that an index listed while a directory changed is not
    /// stored afterwards (the change's drop would come before the stale put).
    drops: AtomicU64,
}

impl IndexCache {
    /// The index of directory `id`, if cached in generation `generation`.
    pub fn get(&self, id: u64, generation: u32) -> Option<Arc<DirIndex>> {
        let entries = self.entries.lock();
        entries
            .iter()
            .find(|(i, g, _)| *i == id && *g == generation)
            .map(|(_, _, idx)| idx.clone())
    }

    /// Counts one more lookup in directory `id` that found no index, and returns how
    /// many there have been lately.
    pub fn note_miss(&self, id: u64) -> u32 {
        let mut misses = self.misses.lock();
        if let Some(m) = misses.iter_mut().find(|(i, _)| *i == id) {
            m.1 += 1;
            return m.1;
        }
        if misses.len() >= CAPACITY {
            misses.pop_front();
        }
        misses.push_back((id, 1));
        1
    }

    /// A token to pass to [`Self::put`]: take it before listing the directory.
    pub fn begin(&self) -> u64 {
        self.drops.load(Ordering::Acquire)
    }

    /// Stores the index of directory `id`, listed after `begin` returned `token`, unless
    /// some directory changed since.
    pub fn put(&self, id: u64, generation: u32, token: u64, index: Arc<DirIndex>) {
        let mut entries = self.entries.lock();
        if self.drops.load(Ordering::Acquire) != token {
            return;
        }
        entries.retain(|(i, _, _)| *i != id);
        if entries.len() >= CAPACITY {
            entries.pop_front();
        }
        entries.push_back((id, generation, index));
    }

    /// Takes `name` out of directory `id`'s index, once it is gone from the merged view
    /// (a removal that needs no other change to the listing).
    pub fn forget_name(&self, id: u64, name: &OsStr) {
        let mut entries = self.entries.lock();
        self.drops.fetch_add(1, Ordering::AcqRel);
        if let Some((_, _, index)) = entries.iter_mut().find(|(i, _, _)| *i == id) {
            Arc::make_mut(index).remove(name);
        }
    }

    /// Forgets directory `id` (it changed).
    pub fn drop_dir(&self, id: u64) {
        let mut entries = self.entries.lock();
        self.drops.fetch_add(1, Ordering::AcqRel);
        entries.retain(|(i, _, _)| *i != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_generational() {
        let c = IndexCache::default();
        let mut idx = DirIndex::new();
        idx.insert("a".into(), (1, FileKind::Regular));
        c.put(7, 0, c.begin(), Arc::new(idx.clone()));
        assert!(c.get(7, 0).is_some());
        assert!(c.get(7, 1).is_none(), "another generation");
        c.forget_name(7, OsStr::new("a"));
        assert!(
            c.get(7, 0).unwrap().is_empty(),
            "a removed name is forgotten"
        );
        c.drop_dir(7);
        assert!(c.get(7, 0).is_none());
        for i in 0..(CAPACITY as u64 + 5) {
            c.put(i, 0, c.begin(), Arc::new(idx.clone()));
        }
        assert!(c.get(0, 0).is_none(), "oldest evicted");
        assert!(c.get(CAPACITY as u64 + 4, 0).is_some());
    }

    #[test]
    fn misses_are_counted_per_directory() {
        let c = IndexCache::default();
        assert_eq!(c.note_miss(3), 1);
        assert_eq!(c.note_miss(3), 2);
        assert_eq!(c.note_miss(4), 1);
    }

    #[test]
    fn a_listing_taken_across_a_change_is_not_kept() {
        let c = IndexCache::default();
        let token = c.begin();
        c.drop_dir(9);
        c.put(7, 0, token, Arc::default());
        assert!(c.get(7, 0).is_none());
        let token = c.begin();
        c.forget_name(9, OsStr::new("x"));
        c.put(7, 0, token, Arc::default());
        assert!(
            c.get(7, 0).is_none(),
            "a removal also retires listings taken before it"
        );
    }
}
