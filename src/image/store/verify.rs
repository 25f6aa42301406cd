//! Checking a store without changing it, for `ufsd check`: every blob hashed, every
//! reference followed, leftovers listed.

use std::collections::HashSet;
use std::fs;
use std::path::PathBuf;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use serde::Serialize;

use super::index::ref_name;
use super::{ContainerRecord, Store};
use crate::image::reference::parse_sha256;
use crate::image::{ImageError, ImageResult};
use crate::sys::lock::LockKind;

/// What [`Store::verify`] found. Empty lists mean a healthy store.
#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Blobs whose content does not hash to their name: (name, actual digest).
    pub corrupt: Vec<(String, String)>,
    /// Blobs referenced but absent: (digest, who refers to it).
    pub missing: Vec<(String, String)>,
    /// Files under blobs/sha256 or layers/ that are not named like a digest.
    pub foreign: Vec<PathBuf>,
    /// Blobs nothing references (garbage collection would delete them).
    pub unreferenced_blobs: Vec<String>,
    /// Extracted layers no image uses.
    pub unreferenced_layers: Vec<String>,
    /// Temp files and trees left by interrupted commands (only listed when no writer is
    /// active, since a running writer's files look the same).
    pub leftovers: Vec<PathBuf>,
    /// Index entries, images, extracted layers or container records that cannot be
    /// followed or are not what they should be: (what, why).
    pub damaged: Vec<(String, String)>,
    /// `containers/<name>/` directories without a `container.json`: left by an interrupted
    /// create or remove (only listed when no writer is active).
    pub orphan_containers: Vec<PathBuf>,
    /// How many blobs were hashed, and their bytes.
    pub blobs_checked: usize,
    pub bytes_hashed: u64,
    /// How many extracted layers and container records were looked at.
    pub layers_present: usize,
    pub containers_checked: usize,
}

impl VerifyReport {
    /// Whether anything is wrong (unreferenced data and leftovers are not wrong).
    pub fn is_healthy(&self) -> bool {
        self.corrupt.is_empty()
            && self.missing.is_empty()
            && self.damaged.is_empty()
            && self.foreign.is_empty()
    }
}

impl Store {
    /// Hashes every blob and follows every reference of index.json; changes nothing.
    pub fn verify(&self) -> ImageResult<VerifyReport> {
        let _lock = self.lock(LockKind::Shared)?;
        let index = self.load_index()?;
        let mut report = VerifyReport::default();
        let mut corrupt = HashSet::new();

        let blob_dir = self.root.join("blobs/sha256");
        let mut present = Vec::new();
        for e in fs::read_dir(&blob_dir).map_err(ImageError::io("read", &blob_dir))? {
            let e = e.map_err(ImageError::io("read", &blob_dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(digest) = parse_sha256(&format!("sha256:{name}")) else {
                report.foreign.push(e.path());
                continue;
            };
            let actual = Self::hash_blob_file(&e.path())?;
            report.blobs_checked += 1;
            report.bytes_hashed += e.metadata().map_or(0, |m| m.len());
            if actual != digest {
                corrupt.insert(name.clone());
                report
                    .corrupt
                    .push((digest.to_string(), actual.to_string()));
            }
            present.push(name);
        }

        let mut blobs = HashSet::new();
        let mut diff_ids = HashSet::new();
        let mut image_ids = HashSet::new();
        let mut todo: Vec<(Descriptor, String)> = index
            .manifests()
            .iter()
            .map(|d| (d.clone(), ref_name(d).unwrap_or("<untagged>").to_string()))
            .collect();
        while let Some((d, who)) = todo.pop() {
            let hex = d.digest().digest().to_string();
            if !blobs.insert(hex.clone()) {
                continue;
            }
            if !self.has_blob(d.digest()) {
                report.missing.push((d.digest().to_string(), who));
                continue;
            }
            if corrupt.contains(&hex) {
                continue;
            }
            let children: ImageResult<Vec<(Descriptor, String)>> = match d.media_type() {
                MediaType::ImageManifest => self.read_json::<ImageManifest>(&d).and_then(|m| {
                    image_ids.insert(m.config().digest().to_string());
                    let cfg: oci_spec::image::ImageConfiguration =
                        match self.has_blob(m.config().digest()) {
                            true if !corrupt.contains(m.config().digest().digest()) => {
                                self.read_json(m.config())?
                            }
                            _ => oci_spec::image::ImageConfiguration::default(),
                        };
                    for id in cfg.rootfs().diff_ids() {
                        if let Some(id) = parse_sha256(id) {
                            diff_ids.insert(id.digest().to_string());
                        }
                    }
                    let mut c = vec![(m.config().clone(), format!("config of {who}"))];
                    c.extend(
                        m.layers()
                            .iter()
                            .map(|l| (l.clone(), format!("layer of {who}"))),
                    );
                    Ok(c)
                }),
                MediaType::ImageIndex => self.read_json::<ImageIndex>(&d).map(|i| {
                    i.manifests()
                        .iter()
                        .map(|m| (m.clone(), format!("manifest in {who}")))
                        .collect()
                }),
                _ => Ok(Vec::new()),
            };
            match children {
                Ok(c) => todo.extend(c),
                Err(e) => report.damaged.push((who, e.to_string())),
            }
        }
        report.unreferenced_blobs = present.into_iter().filter(|b| !blobs.contains(b)).collect();
        report.unreferenced_blobs.sort();

        let layer_dir = self.root.join("layers");
        for e in fs::read_dir(&layer_dir).map_err(ImageError::io("read", &layer_dir))? {
            let e = e.map_err(ImageError::io("read", &layer_dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if parse_sha256(&format!("sha256:{name}")).is_none() {
                report.foreign.push(e.path());
                continue;
            }
            report.layers_present += 1;
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                report.damaged.push((
                    format!("layer sha256:{name}"),
                    "not a directory".to_string(),
                ));
            } else if !diff_ids.contains(&name) {
                report.unreferenced_layers.push(name);
            }
        }
        report.unreferenced_layers.sort();
        self.verify_containers(&image_ids, &mut report)?;

        if let Some(_ingest) = self.try_lock_ingest()? {
            let tmp = self.root.join("tmp");
            for e in fs::read_dir(&tmp).map_err(ImageError::io("read", &tmp))? {
                report
                    .leftovers
                    .push(e.map_err(ImageError::io("read", &tmp))?.path());
            }
            report.leftovers.sort();
        }
        Ok(report)
    }

    /// Every container record must parse, be named like its directory and name an image
    /// of the store; a container directory without a record is a leftover.
    fn verify_containers(
        &self,
        image_ids: &HashSet<String>,
        report: &mut VerifyReport,
    ) -> ImageResult<()> {
        let dir = self.root.join("containers");
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(ImageError::io("read", &dir)(e)),
        };
        for e in entries {
            let e = e.map_err(ImageError::io("read", &dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let record = e.path().join("container.json");
            let bytes = match fs::read(&record) {
                Ok(b) => b,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    report.orphan_containers.push(e.path());
                    continue;
                }
                Err(err) => {
                    report
                        .damaged
                        .push((format!("container {name}"), err.to_string()));
                    continue;
                }
            };
            report.containers_checked += 1;
            let why = match serde_json::from_slice::<ContainerRecord>(&bytes) {
                Err(err) => Some(format!("container.json does not parse: {err}")),
                Ok(r) if r.name != name => Some(format!("its record names {:?}", r.name)),
                Ok(r) if !image_ids.contains(&r.image) => {
                    Some(format!("its image {} is not in the store", r.image))
                }
                Ok(_) => None,
            };
            if let Some(why) = why {
                report.damaged.push((format!("container {name}"), why));
            }
        }
        report.orphan_containers.sort();
        Ok(())
    }
}
