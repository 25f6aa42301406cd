//! Removing images and collecting garbage.
//!
//! `rmi NAME:TAG` of an image with other tags only removes that tag. Removing an image's
//! last name (or naming it by id) deletes it, unless
//! - a container record uses it: refused; with `force` its tags go but the image stays,
//!   untagged, because its layers are a running container's lowers;
//! - a tagged image extends it (its `rootfs.diff_ids` start with this image's and are
//!   longer): refused; with `force` it is deleted, and the child keeps the shared layers;
//! - it is named by id and has several tags: refused; with `force` all tags go.
//!
//! Garbage collection then deletes every blob, extracted layer and temp file that index.json
//! no longer reaches. It runs under the exclusive index lock and only if no writer holds a
//! [`Pin`](super::Pin) (otherwise it is deferred to the next removal); if any image in
//! the index cannot be read, nothing is swept, since what it references is unknown.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::Path;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use serde::Serialize;

use super::index::{Named, edit_entries, ref_name, set_tag};
use super::{Image, Store, sync_dir};
use crate::image::{ImageError, ImageResult};
use crate::sys::lock::LockKind;

/// What `remove_image` did.
#[derive(Debug, Default, Serialize)]
pub struct RemoveReport {
    /// The `name:tag`s removed.
    pub untagged: Vec<String>,
    /// The image ids deleted.
    pub deleted: Vec<String>,
    pub gc: GcReport,
}

/// What a garbage collection freed.
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    pub blobs_removed: usize,
    pub layers_removed: usize,
    pub temp_removed: usize,
    pub bytes_freed: u64,
    /// Why nothing was swept, if it was not.
    pub deferred: Option<String>,
}

/// Removes a directory tree that may hold read-only directories (as extracted layers do).
pub(super) fn remove_tree(path: &Path) -> ImageResult<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            make_dirs_writable(path);
            fs::remove_dir_all(path).map_err(ImageError::io("remove", path))
        }
        Err(e) => Err(ImageError::io("remove", path)(e)),
    }
}

fn make_dirs_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            make_dirs_writable(&e.path());
        }
    }
}

/// Whether `child`'s layers extend `parent`'s.
fn extends(child: &Image, parent: &Image) -> bool {
    let (c, p) = (child.diff_ids(), parent.diff_ids());
    !p.is_empty() && c.len() > p.len() && c[..p.len()] == p[..]
}

impl Store {
    /// Removes the image (or tag) `input` names, following the rules in the module doc,
    /// then collects garbage.
    pub fn remove_image(&self, input: &str, force: bool) -> ImageResult<RemoveReport> {
        let _lock = self.lock(LockKind::Exclusive)?;
        let mut index = self.load_index()?;
        let (desc, named) = self.find(&index, input)?;
        let tags: Vec<String> = index
            .manifests()
            .iter()
            .filter(|d| d.digest() == desc.digest())
            .filter_map(|d| ref_name(d).map(str::to_string))
            .collect();
        let mut report = RemoveReport::default();

        if let Named::Tag(t) = &named
            && tags.len() > 1
        {
            edit_entries(&mut index, |e| {
                e.retain(|d| ref_name(d) != Some(t.as_str()))
            });
            self.save_index(&index)?;
            report.untagged.push(t.clone());
            return Ok(report);
        }
        if !matches!(named, Named::Tag(_)) && tags.len() > 1 && !force {
            return Err(ImageError::Conflict(format!(
                "image {input} has several tags ({}): remove them one by one, or use -f to remove them all",
                tags.join(", ")
            )));
        }

        // The image itself goes, if nothing needs it.
        let image = self.load_image(&index, &desc);
        let id = match &image {
            Ok(img) => Some(img.id.clone()),
            Err(_) => self
                .read_json::<ImageManifest>(&desc)
                .ok()
                .map(|m| super::ImageId::new(m.config().digest().clone())),
        };
        if let Some(id) = &id {
            let users = self.image_in_use(id)?;
            if !users.is_empty() {
                if !force {
                    return Err(ImageError::Conflict(format!(
                        "image {input} ({}) is used by container {}: remove the container first, or use -f to untag it (the image stays while a container uses it)",
                        id.short(),
                        users.join(", ")
                    )));
                }
                edit_entries(&mut index, |e| e.retain(|d| d.digest() != desc.digest()));
                set_tag(&mut index, &desc, None);
                self.save_index(&index)?;
                report.untagged = tags;
                return Ok(report);
            }
        }
        if let Ok(parent) = &image {
            let children = self.tagged_children(&index, parent);
            if !children.is_empty() && !force {
                return Err(ImageError::Conflict(format!(
                    "image {input} ({}) has tagged child images ({}): remove them first, or use -f",
                    parent.id.short(),
                    children.join(", ")
                )));
            }
        }
        edit_entries(&mut index, |e| e.retain(|d| d.digest() != desc.digest()));
        self.save_index(&index)?;
        report.untagged = tags;
        report.deleted.push(match &id {
            Some(id) => id.to_string(),
            None => desc.digest().to_string(),
        });
        report.gc = self.sweep(&index)?;
        Ok(report)
    }

    /// The `name:tag`s of tagged images whose layers extend `parent`'s.
    fn tagged_children(&self, index: &ImageIndex, parent: &Image) -> Vec<String> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for d in index.manifests() {
            let Some(name) = ref_name(d) else { continue };
            if d.digest() == parent.manifest_descriptor.digest() || !seen.insert(d.digest().clone())
            {
                continue;
            }
            match self.load_image(index, d) {
                Ok(child) if extends(&child, parent) => out.extend(child.refs.iter().cloned()),
                Ok(_) => {}
                Err(e) => log::warn!("image {name} cannot be read ({e}); not checked as a child"),
            }
        }
        out
    }

    /// Collects garbage now (the lock is taken here).
    pub fn collect_garbage(&self) -> ImageResult<GcReport> {
        let _lock = self.lock(LockKind::Exclusive)?;
        let index = self.load_index()?;
        self.sweep(&index)
    }

    /// Deletes what `index` does not reach. The caller holds the index lock exclusively.
    fn sweep(&self, index: &ImageIndex) -> ImageResult<GcReport> {
        let mut report = GcReport::default();
        let Some(_ingest) = self.try_lock_ingest()? else {
            report.deferred = Some("another command is writing to the store".to_string());
            return Ok(report);
        };
        let (blobs, diff_ids) = match self.reachable(index) {
            Ok(r) => r,
            Err(e) => {
                report.deferred = Some(format!("an image cannot be read: {e}"));
                return Ok(report);
            }
        };
        let blob_dir = self.root.join("blobs/sha256");
        for e in fs::read_dir(&blob_dir).map_err(ImageError::io("read", &blob_dir))? {
            let e = e.map_err(ImageError::io("read", &blob_dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.len() != 64 || blobs.contains(&name) {
                continue;
            }
            let size = e.metadata().map_or(0, |m| m.len());
            fs::remove_file(e.path()).map_err(ImageError::io("remove", e.path()))?;
            report.blobs_removed += 1;
            report.bytes_freed += size;
        }
        sync_dir(&blob_dir)?;
        let layer_dir = self.root.join("layers");
        for e in fs::read_dir(&layer_dir).map_err(ImageError::io("read", &layer_dir))? {
            let e = e.map_err(ImageError::io("read", &layer_dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if diff_ids.contains(&name) {
                continue;
            }
            // Out of layers/ first, so a half-removed tree is never taken for a layer.
            let doomed = self.temp_path("rm-layer");
            fs::rename(e.path(), &doomed).map_err(ImageError::io("move away", e.path()))?;
            remove_tree(&doomed)?;
            report.layers_removed += 1;
        }
        let tmp = self.root.join("tmp");
        for e in fs::read_dir(&tmp).map_err(ImageError::io("read", &tmp))? {
            let e = e.map_err(ImageError::io("read", &tmp))?;
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&p)?;
            } else {
                fs::remove_file(&p).map_err(ImageError::io("remove", &p))?;
            }
            report.temp_removed += 1;
        }
        Ok(report)
    }

    /// The blob hexes and diff_id hexes that index.json reaches.
    fn reachable(&self, index: &ImageIndex) -> ImageResult<(HashSet<String>, HashSet<String>)> {
        let mut blobs = HashSet::new();
        let mut diff_ids = HashSet::new();
        let mut todo: Vec<Descriptor> = index.manifests().clone();
        while let Some(d) = todo.pop() {
            let hex = super::sha256_hex(d.digest())?.to_string();
            if !blobs.insert(hex) {
                continue;
            }
            match d.media_type() {
                MediaType::ImageManifest => {
                    let image = self.load_image(index, &d)?;
                    blobs.insert(super::sha256_hex(image.manifest.config().digest())?.to_string());
                    for l in &image.layers {
                        blobs.insert(super::sha256_hex(l.blob.digest())?.to_string());
                        diff_ids.insert(l.diff_id.digest().to_string());
                    }
                }
                MediaType::ImageIndex => {
                    let nested: ImageIndex = self.read_json(&d)?;
                    todo.extend(nested.manifests().iter().cloned());
                }
                other => {
                    return Err(ImageError::Invalid(format!(
                        "index.json entry {} has media type {other}, which ufsd cannot follow",
                        d.digest()
                    )));
                }
            }
        }
        Ok((blobs, diff_ids))
    }
}
