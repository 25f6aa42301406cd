//! Container records: `containers/<name>/container.json`, one per container, naming the
//! image whose layers are its lowers. The directory is the container's own (its upper and
//! work directories will live beside the record). While a record names an image, `rmi`
//! will not delete that image (see [`Store::image_in_use`]).
//!
//! ```json
//! {"name": "web", "image": "sha256:<config digest>", "created": "2024-05-01T12:00:00Z"}
//! ```

use std::fs;
use std::io;
use std::path::PathBuf;

use oci_spec::image::ImageManifest;
use serde::{Deserialize, Serialize};

use super::{ImageId, Store, canonical_json, mkdir};
use crate::image::{ImageError, ImageResult};
use crate::sys::lock::LockKind;

/// What `containers/<name>/container.json` holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// The container's name, also its directory's name.
    pub name: String,
    /// The image id (config digest, `sha256:…`).
    pub image: String,
    /// When the container was created (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The image as the user named it (`base:latest`), for display.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_name: Option<String>,
    /// Where the container was last mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mountpoint: Option<String>,
}

/// A container name: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, as docker allows.
fn valid_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"_.-".contains(c))
}

impl Store {
    /// The directory of container `name`.
    pub fn container_dir(&self, name: &str) -> ImageResult<PathBuf> {
        if !valid_name(name) {
            return Err(ImageError::Invalid(format!(
                "invalid container name {name:?}: letters, digits, '_', '.', '-', starting with a letter or digit"
            )));
        }
        Ok(self.root.join("containers").join(name))
    }

    /// Records a new container of an image, under the index lock, so that no `rmi` can
    /// delete the image between the check and the record. Refuses an existing name and an
    /// image id that is not in the store. Returns the record's path.
    pub fn create_container_record(&self, record: &ContainerRecord) -> ImageResult<PathBuf> {
        self.create_container_record_with(record, |_| Ok(()))
    }

    /// [`create_container_record`](Self::create_container_record), calling `prepare` with
    /// the container's new, empty directory before the record is written: what `prepare`
    /// makes there (the upper and work directories) exists whenever the record does. A
    /// crash before the record leaves a directory without one, which `ufsd check` lists
    /// and `--repair` removes; a failed `prepare` removes the directory.
    pub fn create_container_record_with(
        &self,
        record: &ContainerRecord,
        prepare: impl FnOnce(&std::path::Path) -> ImageResult<()>,
    ) -> ImageResult<PathBuf> {
        let dir = self.container_dir(&record.name)?;
        let _lock = self.lock(LockKind::Exclusive)?;
        let index = self.load_index()?;
        let known = index.manifests().iter().any(|d| {
            self.read_json::<ImageManifest>(d)
                .is_ok_and(|m| m.config().digest().to_string() == record.image)
        });
        if !known {
            return Err(ImageError::NoSuchImage(record.image.clone()));
        }
        let path = dir.join("container.json");
        if path.exists() {
            return Err(ImageError::Conflict(format!(
                "a container named {} exists ({})",
                record.name,
                path.display()
            )));
        }
        // Without a record, under the lock, the directory is what an interrupted create
        // or remove left: start afresh.
        super::remove::remove_tree(&dir)?;
        mkdir(&dir, 0o700)?;
        let written = prepare(&dir)
            .and_then(|()| canonical_json(record))
            .and_then(|json| self.write_atomic(&path, &json));
        if let Err(e) = written {
            let _ = super::remove::remove_tree(&dir);
            return Err(e);
        }
        Ok(path)
    }

    /// Rewrites the record of an existing container (its mount point changed, say).
    pub fn update_container_record(&self, record: &ContainerRecord) -> ImageResult<()> {
        let dir = self.container_dir(&record.name)?;
        let _lock = self.lock(LockKind::Exclusive)?;
        let path = dir.join("container.json");
        if !path.exists() {
            return Err(ImageError::Invalid(format!(
                "no such container: {}",
                record.name
            )));
        }
        self.write_atomic(&path, &canonical_json(record)?)
    }

    /// Removes a container's record and directory; its image may then be removed.
    pub fn remove_container_record(&self, name: &str) -> ImageResult<()> {
        let dir = self.container_dir(name)?;
        let _lock = self.lock(LockKind::Exclusive)?;
        let path = dir.join("container.json");
        if !path.exists() {
            return Err(ImageError::Invalid(format!("no such container: {name}")));
        }
        // The record goes first: a container without one pins nothing.
        std::fs::remove_file(&path).map_err(ImageError::io("remove", &path))?;
        super::remove::remove_tree(&dir)
    }

    /// Every container record. A record that cannot be read is an error naming it: the
    /// image it pins is unknown, so nothing may be deleted on its account.
    pub fn container_records(&self) -> ImageResult<Vec<ContainerRecord>> {
        let dir = self.root.join("containers");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ImageError::io("read", &dir)(e)),
        };
        let mut out = Vec::new();
        for e in entries {
            let e = e.map_err(ImageError::io("read", &dir))?;
            let path = e.path().join("container.json");
            let bytes = match fs::read(&path) {
                Ok(b) => b,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(err) => return Err(ImageError::io("read", &path)(err)),
            };
            let rec: ContainerRecord = serde_json::from_slice(&bytes).map_err(|err| {
                ImageError::Invalid(format!("container record {}: {err}", path.display()))
            })?;
            out.push(rec);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The names of the containers whose record names image `id`.
    pub fn image_in_use(&self, id: &ImageId) -> ImageResult<Vec<String>> {
        let id = id.to_string();
        Ok(self
            .container_records()?
            .into_iter()
            .filter(|r| r.image == id)
            .map(|r| r.name)
            .collect())
    }
}
