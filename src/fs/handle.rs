//! Open file handles, keyed by the `fh` the kernel passes back.

use std::ffi::OsString;
use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

use super::inode::Node;

/// An open regular file.
#[derive(Debug)]
pub struct OpenFile {
    pub file: Arc<File>,
    /// An upper-layer instance, which may be changed through its handle.
    pub upper: bool,
    /// For a lower instance: the name it was opened by, whose current attributes `fstat`
    /// shows (after a copy-up, those of the copy, as on overlayfs).
    pub place: Option<(Arc<Node>, OsString)>,
    /// The node it was opened on.
    pub ino: u64,
}

#[derive(Debug, Default)]
pub struct HandleTable {
    next: AtomicU64,
    files: DashMap<u64, OpenFile>,
}

impl HandleTable {
    fn next_fh(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn add_file(&self, open: OpenFile) -> u64 {
        let fh = self.next_fh();
        self.files.insert(fh, open);
        fh
    }

    pub fn file(&self, fh: u64) -> Option<Arc<File>> {
        self.files.get(&fh).map(|f| f.file.clone())
    }

    /// The open file `fh` if it is an upper-layer instance.
    pub fn upper_file(&self, fh: u64) -> Option<Arc<File>> {
        self.files
            .get(&fh)
            .filter(|f| f.upper)
            .map(|f| f.file.clone())
    }

    /// Any open file of node `ino` (a scan: only for files that lost every name).
    pub fn file_of(&self, ino: u64) -> Option<Arc<File>> {
        self.files
            .iter()
            .find(|f| f.ino == ino)
            .map(|f| f.file.clone())
    }

    /// Any open upper-layer file of node `ino` (a scan, like `file_of`).
    pub fn upper_file_of(&self, ino: u64) -> Option<Arc<File>> {
        self.files
            .iter()
            .find(|f| f.ino == ino && f.upper)
            .map(|f| f.file.clone())
    }

    /// The node of `fh` if it is a lower-layer instance.
    pub fn lower_ino(&self, fh: u64) -> Option<u64> {
        self.files
            .get(&fh)
            .filter(|f| !f.upper && f.place.is_some())
            .map(|f| f.ino)
    }

    /// The lower-layer handles open on node `ino` (a scan: only after a copy-up).
    pub fn lower_handles_of(&self, ino: u64) -> Vec<u64> {
        self.files
            .iter()
            .filter(|f| f.ino == ino && !f.upper && f.place.is_some())
            .map(|f| *f.key())
            .collect()
    }

    /// Points the lower-layer handle `fh` at the upper copy of its file (read-only).
    pub fn switch_to_upper(&self, fh: u64, file: Arc<File>) {
        if let Some(mut f) = self.files.get_mut(&fh) {
            f.file = file;
            f.place = None;
        }
    }

    /// The name a lower-layer file `fh` was opened by.
    pub fn place(&self, fh: u64) -> Option<(Arc<Node>, OsString)> {
        self.files.get(&fh).and_then(|f| f.place.clone())
    }

    pub fn remove_file(&self, fh: u64) {
        self.files.remove(&fh);
    }
}
