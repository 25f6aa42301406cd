//! Extracted layers: `layers/<diff_id hex>/` is the root of one layer's tree, extracted
//! once from its blob and shared by every image that has that diff_id.
//!
//! A layer is extracted into a fresh directory under `tmp/` and renamed into `layers/` with
//! `RENAME_NOREPLACE`; if another command published the same layer first, ours is thrown
//! away. So `layers/<hex>` exists only when complete. It is not synced first: a marker
//! naming the boot, `unsynced/<hex>`, goes to disk before the rename, and a layer whose
//! marker names an earlier boot is extracted again ([`Store::layer_usable`]). Nothing
//! writes there afterwards: mounts use it only as a read-only lower. The modes inside,
//! the top directory's included, are the layer's own (they are what the merged view
//! shows), so read-only is not enforced with chmod; `layers/` itself is 0700.

use std::ffi::OsStr;
use std::fs::DirBuilder;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use oci_spec::image::{Digest, MediaType};

use super::blob::{BlobReader, unwrap_io};
use super::remove::remove_tree;
use super::{Image, Layer, Store, Verify, sha256_hex, sync_dir};
use crate::image::{ImageError, ImageResult};
use crate::sys::{self, Errno};

/// The directory of the markers of layers published before they were synced.
pub(super) const UNSYNCED: &str = "unsynced";

/// How old a marker must be before [`Store::settle_unsynced`] syncs and drops it: the
/// kernel writes dirty data out after 30 s by default.
const SETTLE_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// This boot's id: a marker naming another boot was written before a restart.
fn boot_id() -> ImageResult<String> {
    const PATH: &str = "/proc/sys/kernel/random/boot_id";
    std::fs::read_to_string(PATH)
        .map(|s| s.trim().to_string())
        .map_err(ImageError::io("read", Path::new(PATH)))
}

/// Media types of gzip-compressed layers (OCI and docker).
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

enum Decoder {
    Plain(Box<BlobReader>),
    Gzip(Box<MultiGzDecoder<BlobReader>>),
}

impl Read for Decoder {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Plain(r) => r.read(buf),
            Decoder::Gzip(r) => r.read(buf),
        }
    }
}

/// A layer's tar stream, decompressed, checking both the blob digest and the diff_id.
/// When a read fails (a corrupt gzip stream, say), the blob is hashed so that the error
/// names the corrupt blob rather than the decoder's complaint.
pub struct LayerReader {
    inner: Verify<Decoder>,
    blob_path: PathBuf,
    blob_digest: Digest,
}

impl LayerReader {
    fn better_error(&self, e: io::Error) -> io::Error {
        if e.kind() == io::ErrorKind::InvalidData
            && e.get_ref().is_some_and(|i| i.is::<ImageError>())
        {
            return e;
        }
        match Store::hash_blob_file(&self.blob_path) {
            Ok(actual) if actual != self.blob_digest => io::Error::new(
                io::ErrorKind::InvalidData,
                ImageError::DigestMismatch {
                    what: "blob",
                    digest: self.blob_digest.to_string(),
                    actual: actual.to_string(),
                    path: self.blob_path.clone(),
                },
            ),
            _ => e,
        }
    }

    /// Reads what the consumer left and checks both digests.
    pub fn finish(self) -> ImageResult<()> {
        let path = self.blob_path.clone();
        let digest = self.blob_digest.clone();
        let mut me = self;
        io::copy(&mut me, &mut io::sink()).map_err(|e| unwrap_io("read layer", &path, e))?;
        match me.inner.finish()? {
            Decoder::Plain(r) => r.finish().map(drop),
            Decoder::Gzip(r) => r.into_inner().finish().map(drop),
        }
        .map_err(|e| match e {
            ImageError::Io { .. } => ImageError::Invalid(format!("layer blob {digest}: {e}")),
            other => other,
        })
    }
}

impl Read for LayerReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| self.better_error(e))
    }
}

impl Store {
    /// Where the layer with `diff_id` is (or would be) extracted.
    pub fn layer_dir(&self, diff_id: &Digest) -> ImageResult<PathBuf> {
        Ok(self.root.join("layers").join(sha256_hex(diff_id)?))
    }

    /// Opens a layer's tar stream: decompressed (gzip or plain, by media type) and
    /// verified against the blob digest and the diff_id.
    pub fn open_layer(&self, layer: &Layer) -> ImageResult<LayerReader> {
        let blob = self.open_blob(layer.blob.digest())?;
        let decoder = match layer.blob.media_type() {
            MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => {
                Decoder::Gzip(Box::new(MultiGzDecoder::new(blob)))
            }
            MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => {
                Decoder::Plain(Box::new(blob))
            }
            MediaType::Other(t) if t == DOCKER_LAYER_GZIP => {
                Decoder::Gzip(Box::new(MultiGzDecoder::new(blob)))
            }
            MediaType::Other(t) if t == DOCKER_LAYER_TAR => Decoder::Plain(Box::new(blob)),
            other => {
                return Err(ImageError::Invalid(format!(
                    "layer {}: media type {other} is not supported (tar or tar+gzip)",
                    layer.blob.digest()
                )));
            }
        };
        let blob_path = self.blob_path(layer.blob.digest())?;
        let inner = match decoder {
            // An uncompressed blob is the layer tar: its digest is the diff_id, which the
            // blob's own check covers; hashing it twice would only cost time.
            Decoder::Plain(_) if layer.blob.digest() == &layer.diff_id => {
                Verify::unchecked(decoder, blob_path.clone())
            }
            _ => Verify::new(
                decoder,
                layer.diff_id.clone(),
                "layer (uncompressed)",
                blob_path.clone(),
            ),
        };
        Ok(LayerReader {
            inner,
            blob_path,
            blob_digest: layer.blob.digest().clone(),
        })
    }

    /// The directory of the layer `diff_id`, extracting it first if it is not there yet:
    /// `extract` fills an empty directory (mode 0755; set the layer root's own mode there
    /// if the tar has one), which is then published atomically. Concurrent callers may
    /// both extract; one result wins and the other is discarded.
    ///
    /// The layer is published before its files reach the disk, with a marker naming this
    /// boot (see [`Store::layer_usable`]): waiting for `syncfs` would make every first
    /// mount pay for a sync that `tar -x` does not do, while the kernel writes the files
    /// out within half a minute anyway.
    pub fn ensure_layer_extracted(
        &self,
        diff_id: &Digest,
        extract: impl FnOnce(&Path) -> ImageResult<()>,
    ) -> ImageResult<PathBuf> {
        let dest = self.layer_dir(diff_id)?;
        if self.layer_usable(diff_id)? {
            return Ok(dest);
        }
        let _pin = self.pin()?;
        let tmp = self.temp_path("layer");
        DirBuilder::new()
            .mode(0o755)
            .create(&tmp)
            .map_err(ImageError::io("create", &tmp))?;
        // The umask must not decide the layer root's mode.
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .map_err(ImageError::io("chmod", &tmp))?;
        let published = extract(&tmp).and_then(|()| {
            // The marker is on disk before the rename can be.
            self.write_atomic(&self.unsynced_marker(diff_id)?, boot_id()?.as_bytes())?;
            self.publish_layer(&tmp, &dest)
        });
        match published {
            // The rename is not synced either: lost in a crash, the layer is extracted
            // again; kept, its marker (on disk before it) sends it to be extracted again.
            Ok(true) => Ok(dest),
            Ok(false) => {
                remove_tree(&tmp)?;
                Ok(dest)
            }
            Err(e) => {
                let _ = remove_tree(&tmp);
                Err(e)
            }
        }
    }

    /// Where the marker of a layer published but maybe not yet on disk is.
    fn unsynced_marker(&self, diff_id: &Digest) -> ImageResult<PathBuf> {
        Ok(self.root.join(UNSYNCED).join(sha256_hex(diff_id)?))
    }

    /// Whether `layers/<diff_id>` holds the whole layer. A layer is extracted without
    /// waiting for the disk and published with a marker, `unsynced/<hex>`, that names the
    /// boot it was extracted in (written and synced before the layer's rename). While the
    /// machine runs, the layer is whole whether or not its files reached the disk. A
    /// marker from another boot means the machine went down before they were known to be
    /// on disk, and a crash may have lost some: the layer is moved out of `layers/` (and
    /// removed) so that it is extracted again. [`Store::settle_unsynced`] syncs and drops
    /// the markers once the kernel has had time to write the files out.
    pub fn layer_usable(&self, diff_id: &Digest) -> ImageResult<bool> {
        let dest = self.layer_dir(diff_id)?;
        if !dest.is_dir() {
            return Ok(false);
        }
        let marker = self.unsynced_marker(diff_id)?;
        let extracted_in = match std::fs::read_to_string(&marker) {
            Ok(boot) => boot,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(ImageError::io("read", &marker)(e)),
        };
        if extracted_in.trim() == boot_id()? {
            return Ok(true);
        }
        log::warn!(
            "layer {diff_id} was extracted before the last restart and never synced; extracting it again"
        );
        // Its marker stays: the new extraction rewrites it before publishing, and
        // `settle_unsynced` drops the marker of a layer that is not there.
        self.discard_layer(&dest)?;
        Ok(false)
    }

    /// Removes the extracted layer at `dir` (moved out of `layers/` first, so a
    /// half-removed tree is never taken for a layer); `false` if it was not there (another
    /// command got there first).
    pub(super) fn discard_layer(&self, dir: &Path) -> ImageResult<bool> {
        let doomed = self.temp_path("rm-layer");
        match std::fs::rename(dir, &doomed) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(ImageError::io("move away", dir)(e)),
        }
        sync_dir(&self.root.join("layers"))?;
        remove_tree(&doomed)?;
        Ok(true)
    }

    /// Syncs the store's filesystem and drops the markers of layers extracted in this
    /// boot more than [`SETTLE_AFTER`] ago (by then the kernel has written most of their
    /// files, so the sync is short), and the markers of layers no longer there. Run when a
    /// store is opened; failing leaves the markers for next time.
    pub(super) fn settle_unsynced(&self) -> ImageResult<()> {
        let dir = self.root.join(UNSYNCED);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        let boot = boot_id()?;
        let mut settled = Vec::new();
        for e in entries {
            let e = e.map_err(ImageError::io("read", &dir))?;
            let path = e.path();
            if !self.root.join("layers").join(e.file_name()).exists() {
                settled.push(path);
                continue;
            }
            let old_enough = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= SETTLE_AFTER));
            let this_boot = std::fs::read_to_string(&path).is_ok_and(|b| b.trim() == boot);
            if old_enough && this_boot {
                settled.push(path);
            }
        }
        if settled.is_empty() {
            return Ok(());
        }
        sys::lock::syncfs(&self.root).map_err(ImageError::io("sync", &self.root))?;
        for path in &settled {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(ImageError::io("remove", path)(e)),
            }
        }
        sync_dir(&dir)
    }

    /// Renames `tmp` to `dest` unless `dest` exists; `false` if it did.
    fn publish_layer(&self, tmp: &Path, dest: &Path) -> ImageResult<bool> {
        let open = |p: &Path| sys::open_root(p).map_err(ImageError::io("open", p));
        let (from_dir, to_dir) = (
            open(&self.root.join("tmp"))?,
            open(&self.root.join("layers"))?,
        );
        let name = |p: &Path| p.file_name().unwrap_or(OsStr::new("")).to_os_string();
        match sys::rename_at(
            std::os::fd::AsFd::as_fd(&from_dir),
            &name(tmp),
            std::os::fd::AsFd::as_fd(&to_dir),
            &name(dest),
            sys::RENAME_NOREPLACE,
        ) {
            Ok(()) => Ok(true),
            Err(Errno::EEXIST | Errno::ENOTEMPTY) => Ok(false),
            Err(e) => Err(ImageError::io("rename into place", dest)(io::Error::from(
                e,
            ))),
        }
    }

    /// Makes sure every layer of `image` is extracted and returns their directories,
    /// bottom first (reverse it for an overlay `lowerdir`, which lists the top first).
    /// `extract(tar, dir)` unpacks one layer's verified tar stream into an empty `dir`; the
    /// stream is drained and both digests are checked before the layer is published.
    pub fn ensure_image_layers(
        &self,
        image: &Image,
        mut extract: impl FnMut(&mut dyn Read, &Path) -> ImageResult<()>,
    ) -> ImageResult<Vec<PathBuf>> {
        let mut dirs = Vec::with_capacity(image.layers.len());
        for layer in &image.layers {
            let dir = self.ensure_layer_extracted(&layer.diff_id, |tmp| {
                let mut tar = self.open_layer(layer)?;
                if let Err(e) = extract(&mut tar, tmp) {
                    // A tar reader hides the cause of a failed read; if it was a corrupt
                    // blob or layer, say that instead.
                    return match tar.finish() {
                        Err(mismatch @ ImageError::DigestMismatch { .. }) => Err(mismatch),
                        _ => Err(e),
                    };
                }
                tar.finish()
            })?;
            dirs.push(dir);
        }
        Ok(dirs)
    }
}
