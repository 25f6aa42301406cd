//! Checking a store without changing it, for `ufsd check`: every blob hashed, every
//! reference followed, leftovers listed.

use std::collections::HashSet;
use std::fs;
use std::path::PathBuf;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest, MediaType};
use serde::Serialize;

use super::Store;
use super::index::ref_name;
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
    /// Index entries or images that cannot be followed: (what, why).
    pub damaged: Vec<(String, String)>,
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
            } else if !diff_ids.contains(&name) {
                report.unreferenced_layers.push(name);
            }
        }
        report.unreferenced_layers.sort();

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
}
