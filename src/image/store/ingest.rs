//! What `import` and `load` need beyond [`Store::add_image`]: scratch directories under
//! `tmp/` that vanish when dropped, and recording an image from a manifest given as bytes,
//! so that a loaded image keeps its manifest and config digests (its id) exactly.

use std::fs::{self, DirBuilder};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use oci_spec::image::{ImageConfiguration, ImageManifest, MediaType};

use super::index::set_tag;
use super::remove::remove_tree;
use super::{ImageId, Store};
use crate::image::reference::Reference;
use crate::image::{ImageError, ImageResult};
use crate::sys::lock::LockKind;

/// A directory under the store's `tmp/`, removed with its contents when dropped.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = remove_tree(&self.path);
    }
}

impl Store {
    /// A new empty directory (mode 0755, whatever the umask) under `tmp/`, on the store's
    /// filesystem, removed when the returned guard is dropped.
    pub fn scratch_dir(&self, prefix: &str) -> ImageResult<ScratchDir> {
        let path = self.temp_path(prefix);
        DirBuilder::new()
            .mode(0o755)
            .create(&path)
            .map_err(ImageError::io("create", &path))?;
        let dir = ScratchDir { path };
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .map_err(ImageError::io("chmod", dir.path()))?;
        Ok(dir)
    }

    /// Records an image whose config and layer blobs are already in the store, from its
    /// manifest's exact bytes (stored as they are, so the manifest digest is kept), and
    /// gives it `tags` (none: listed untagged). The config must be readable and list as
    /// many diff_ids as the manifest has layers. Hold a [`Pin`](super::Pin) from before
    /// the blobs were written until this returns.
    pub fn add_manifest(&self, manifest_bytes: &[u8], tags: &[Reference]) -> ImageResult<ImageId> {
        let _pin = self.pin()?;
        let manifest: ImageManifest = serde_json::from_slice(manifest_bytes)
            .map_err(|e| ImageError::Invalid(format!("not a valid image manifest: {e}")))?;
        let config: ImageConfiguration = self.read_json(manifest.config())?;
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != manifest.layers().len() {
            return Err(ImageError::Invalid(format!(
                "image {}: its config lists {} layers, its manifest {}",
                manifest.config().digest(),
                diff_ids.len(),
                manifest.layers().len()
            )));
        }
        for blob in manifest.layers() {
            self.check_blob_present(blob)?;
        }
        let manifest_desc = self.put_blob_bytes(manifest_bytes, MediaType::ImageManifest)?;
        let _lock = self.lock(LockKind::Exclusive)?;
        let mut index = self.load_index()?;
        if tags.is_empty() {
            set_tag(&mut index, &manifest_desc, None);
        }
        for t in tags {
            set_tag(
                &mut index,
                &manifest_desc,
                Some(t.clone().with_default_tag().ref_name()),
            );
        }
        self.save_index(&index)?;
        Ok(ImageId::new(manifest.config().digest().clone()))
    }
}
