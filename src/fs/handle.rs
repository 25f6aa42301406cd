//! Open file and directory handles, keyed by the `fh` the kernel passes back.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use parking_lot::Mutex;

use super::DirItem;
use super::inode::Node;

/// An open directory: the node and its merged listing, built on the first `readdir` at
/// offset 0 and kept until the next one, so offsets stay valid across calls (and
/// `seekdir`/`telldir` work) however large the directory.
#[derive(Debug)]
pub struct DirHandle {
    pub node: Arc<Node>,
    pub listing: Mutex<Option<Arc<Vec<DirItem>>>>,
}

#[derive(Debug, Default)]
pub struct HandleTable {
    next: AtomicU64,
    files: DashMap<u64, Arc<File>>,
    dirs: DashMap<u64, Arc<DirHandle>>,
}

impl HandleTable {
    fn next_fh(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn add_file(&self, file: Arc<File>) -> u64 {
        let fh = self.next_fh();
        self.files.insert(fh, file);
        fh
    }

    pub fn file(&self, fh: u64) -> Option<Arc<File>> {
        self.files.get(&fh).map(|f| f.clone())
    }

    pub fn remove_file(&self, fh: u64) -> Option<Arc<File>> {
        self.files.remove(&fh).map(|(_, f)| f)
    }

    pub fn add_dir(&self, node: Arc<Node>) -> u64 {
        let fh = self.next_fh();
        self.dirs.insert(
            fh,
            Arc::new(DirHandle {
                node,
                listing: Mutex::new(None),
            }),
        );
        fh
    }

    pub fn dir(&self, fh: u64) -> Option<Arc<DirHandle>> {
        self.dirs.get(&fh).map(|d| d.clone())
    }

    pub fn remove_dir(&self, fh: u64) {
        self.dirs.remove(&fh);
    }
}
