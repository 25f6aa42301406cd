//! The local image store: an OCI image layout that skopeo and umoci can read, plus the
//! extracted layer directories that serve as overlay lowers.
//!
//! ```text
//! ROOT/                            /var/lib/ufsd for root, else $XDG_DATA_HOME/ufsd
//! ├── oci-layout                   {"imageLayoutVersion":"1.0.0"}; written last on creation
//! ├── index.json                   OCI image index: one manifest descriptor per tag, with
//! │                                org.opencontainers.image.ref.name = "NAME:TAG"; an
//! │                                untagged (dangling) image has one entry without it
//! ├── blobs/sha256/<hex>           layer tarballs, image configs, manifests; named by the
//! │                                sha256 of their bytes, checked on every read
//! ├── layers/<diff_id hex>/        an extracted layer (the root of its tree), published by
//! │                                an atomic rename once complete; shared by every image
//! │                                with that diff_id; never written after that
//! ├── unsynced/<diff_id hex>        the boot id a layer was extracted in, until it is synced;
//! │                                naming an earlier boot, the layer is extracted again
//! ├── containers/<name>/container.json
//! │                                {"name":..,"image":"sha256:<config>",..}: pins an image
//! ├── tmp/                         temporary files and trees, same filesystem as the rest
//! ├── lock                         flock: exclusive to change index.json, shared to read
//! └── ingest.lock                  flock: shared while blobs or layers are being written;
//!                                  garbage collection runs only if it can take it exclusive
//! ```
//!
//! Invariants:
//! - Every file that must survive a crash is written to `tmp/`, fsynced, renamed into
//!   place and its directory fsynced. An extracted layer is renamed into place without a
//!   sync, after a marker naming this boot is on disk; a layer whose marker names another
//!   boot is not used. So index.json always names blobs that were complete before it was
//!   written, and a `layers/<hex>` directory in use is always a whole layer.
//! - index.json only grows references to blobs that exist; removal first rewrites
//!   index.json, then deletes what nothing references any more.
//! - Lock order: `ingest.lock` (shared) before `lock`. Nobody blocks on `ingest.lock`
//!   while holding `lock`, so there is no deadlock.
//! - An image's id is the digest of its config, as in docker.

mod blob;
mod check;
mod containers;
mod index;
mod ingest;
mod layers;
mod remove;
mod verify;

use std::fs::{self, DirBuilder, File};
use std::io::{self, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use oci_spec::image::{Digest, OciLayout, OciLayoutBuilder};
use serde::Serialize;

use super::{ImageError, ImageResult};
use crate::sys::lock::{FileLock, LockKind};

pub use blob::{BlobReader, Verify, digest_from_hasher, sha256_digest};
pub use check::{LayerCheck, RepairReport, compare_trees};
pub use containers::ContainerRecord;
pub use index::{Image, ImageId, ImageSummary, Layer, split_ref_name};
pub use ingest::ScratchDir;
pub use layers::LayerReader;
pub use remove::{GcReport, RemoveReport};
pub use verify::VerifyReport;

/// The annotation that names a tag in index.json.
pub const REF_NAME: &str = oci_spec::image::ANNOTATION_REF_NAME;

const LAYOUT_VERSION: &str = "1.0.0";

/// An open image store. Cheap to hold: it keeps no file or lock open between calls.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// While held, nothing in the store is garbage collected: hold one from the first
/// [`Store::put_blob`] of an image until [`Store::add_image`] has recorded it.
#[derive(Debug)]
pub struct Pin {
    _lock: FileLock,
}

/// Creates a directory (not its parents) with `mode`; an existing directory is fine.
fn mkdir(path: &Path, mode: u32) -> ImageResult<()> {
    match DirBuilder::new().mode(mode).create(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(ImageError::io("create directory", path)(e)),
    }
}

/// fsyncs a directory so that the renames and unlinks in it are durable.
fn sync_dir(dir: &Path) -> ImageResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ImageError::io("sync directory", dir))
}

/// JSON with object keys sorted, so that the same value always has the same digest
/// (oci-spec keeps labels and annotations in `HashMap`s).
pub fn canonical_json<T: Serialize>(value: &T) -> ImageResult<Vec<u8>> {
    serde_json::to_value(value)
        .and_then(|v| serde_json::to_vec(&v))
        .map_err(|e| ImageError::Invalid(format!("serialise JSON: {e}")))
}

impl Store {
    /// Opens the store at `root`, creating an empty one if `root` is absent or empty.
    /// A directory that holds other things and no `oci-layout` is refused.
    pub fn open(root: &Path) -> ImageResult<Store> {
        if !root.is_dir() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root)
                .map_err(ImageError::io("create store", root))?;
        }
        let store = Store {
            root: root.to_path_buf(),
        };
        if !store.is_complete() {
            // Before the lock file is created in a directory that is not ours.
            store.check_not_foreign()?;
            let _lock = store.lock(LockKind::Exclusive)?;
            if !store.is_complete() {
                store.create_layout()?;
            }
        }
        store.check_layout_version()?;
        // Stores made by another tool (or an older ufsd) may lack ufsd's own directories.
        for (dir, mode) in [
            ("layers", 0o700),
            ("containers", 0o700),
            ("tmp", 0o700),
            (layers::UNSYNCED, 0o700),
        ] {
            let p = store.root.join(dir);
            if !p.is_dir() {
                mkdir(&p, mode)?;
            }
        }
        if let Err(e) = store.settle_unsynced() {
            log::warn!("could not sync recently extracted layers: {e}");
        }
        Ok(store)
    }

    fn is_complete(&self) -> bool {
        self.root.join("oci-layout").is_file()
            && self.root.join("index.json").is_file()
            && self.root.join("blobs/sha256").is_dir()
    }

    /// Refuses a directory without `oci-layout` that holds anything but what a store
    /// being created would (so `--root ~` cannot scatter a store among a user's files).
    fn check_not_foreign(&self) -> ImageResult<()> {
        let ours = [
            "lock",
            "ingest.lock",
            "tmp",
            "blobs",
            "layers",
            "containers",
            "index.json",
            layers::UNSYNCED,
        ];
        if self.root.join("oci-layout").is_file() {
            return Ok(());
        }
        let entries = fs::read_dir(&self.root).map_err(ImageError::io("read store", &self.root))?;
        for e in entries {
            let e = e.map_err(ImageError::io("read store", &self.root))?;
            if !ours.iter().any(|o| e.file_name() == *o) {
                return Err(ImageError::Invalid(format!(
                    "{} is not an image store (no oci-layout) and is not empty",
                    self.root.display()
                )));
            }
        }
        Ok(())
    }

    /// Writes the skeleton: directories, then index.json, then `oci-layout` as the marker.
    fn create_layout(&self) -> ImageResult<()> {
        self.check_not_foreign()?;
        let has_layout = self.root.join("oci-layout").is_file();
        mkdir(&self.root.join("tmp"), 0o700)?;
        mkdir(&self.root.join("blobs"), 0o755)?;
        mkdir(&self.root.join("blobs/sha256"), 0o755)?;
        mkdir(&self.root.join("layers"), 0o700)?;
        mkdir(&self.root.join("containers"), 0o700)?;
        mkdir(&self.root.join(layers::UNSYNCED), 0o700)?;
        if !self.root.join("index.json").is_file() {
            let empty = oci_spec::image::ImageIndex::default();
            self.write_atomic(&self.root.join("index.json"), &canonical_json(&empty)?)?;
        }
        if !has_layout {
            let layout = OciLayoutBuilder::default()
                .image_layout_version(LAYOUT_VERSION)
                .build()
                .map_err(|e| ImageError::Invalid(format!("oci-layout: {e}")))?;
            self.write_atomic(&self.root.join("oci-layout"), &canonical_json(&layout)?)?;
        }
        Ok(())
    }

    fn check_layout_version(&self) -> ImageResult<()> {
        let path = self.root.join("oci-layout");
        let bytes = fs::read(&path).map_err(ImageError::io("read", &path))?;
        let layout: OciLayout = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::Invalid(format!("{}: {e}", path.display())))?;
        let v = layout.image_layout_version();
        if !v.starts_with("1.") {
            return Err(ImageError::Invalid(format!(
                "{}: image layout version {v} is not supported (1.x is)",
                path.display()
            )));
        }
        Ok(())
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the index lock: exclusive to change index.json, shared to read it.
    fn lock(&self, kind: LockKind) -> ImageResult<FileLock> {
        let path = self.root.join("lock");
        FileLock::lock(&path, kind).map_err(ImageError::io("lock", path))
    }

    /// Pins the store's contents against garbage collection (see [`Pin`]).
    pub fn pin(&self) -> ImageResult<Pin> {
        let path = self.root.join("ingest.lock");
        let lock = FileLock::lock(&path, LockKind::Shared).map_err(ImageError::io("lock", path))?;
        Ok(Pin { _lock: lock })
    }

    /// The exclusive ingest lock if no writer holds a [`Pin`]; `None` otherwise.
    fn try_lock_ingest(&self) -> ImageResult<Option<FileLock>> {
        let path = self.root.join("ingest.lock");
        FileLock::try_lock(&path, LockKind::Exclusive).map_err(ImageError::io("lock", path))
    }

    /// A fresh path under `tmp/` (nothing is created).
    fn temp_path(&self, prefix: &str) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        self.root
            .join("tmp")
            .join(format!("{prefix}-{}-{n}-{nanos}", std::process::id()))
    }

    /// Replaces `dest` with `bytes` durably: temp file, fsync, rename, fsync the directory.
    fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> ImageResult<()> {
        let tmp = self.temp_path("write");
        let result = (|| {
            let mut f = File::options()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(ImageError::io("create", &tmp))?;
            f.write_all(bytes).map_err(ImageError::io("write", &tmp))?;
            f.sync_all().map_err(ImageError::io("sync", &tmp))?;
            fs::rename(&tmp, dest).map_err(ImageError::io("rename into place", dest))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result?;
        sync_dir(dest.parent().unwrap_or(&self.root))
    }
}

/// The hex part of a sha256 digest, or an error for other algorithms.
fn sha256_hex(d: &Digest) -> ImageResult<&str> {
    match d.algorithm() {
        oci_spec::image::DigestAlgorithm::Sha256 => Ok(d.digest()),
        a => Err(ImageError::Invalid(format!(
            "digest {d}: algorithm {a} is not supported (only sha256)"
        ))),
    }
}

/// Lower-case hex of 4 to 64 digits: what an image id prefix looks like.
fn is_id_prefix(s: &str) -> bool {
    (4..=64).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

#[cfg(test)]
mod tests;
