//! index.json and the images it names: resolving what a person typed to an image,
//! listing, tagging, and recording a new image.
//!
//! Each tag is one manifest descriptor in index.json whose `org.opencontainers.image.ref.name`
//! annotation is the full `name:tag` (so `skopeo inspect oci:ROOT:name:tag` and
//! `umoci ls --layout ROOT` see it). An image that lost its last tag but must stay (a
//! container uses it, or it was added untagged) has one entry without that annotation.
//! Entries are kept sorted so the same set of tags always gives the same file.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use oci_spec::image::{
    Descriptor, Digest, ImageConfiguration, ImageIndex, ImageManifest, ImageManifestBuilder,
    MediaType,
};
use serde::Serialize;

use super::{REF_NAME, Store, canonical_json, is_id_prefix};
use crate::image::reference::{Reference, parse_sha256};
use crate::image::{ImageError, ImageResult};
use crate::sys::lock::LockKind;

/// An image id: the digest of the image's config, as in docker.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ImageId(Digest);

impl ImageId {
    pub fn new(config_digest: Digest) -> ImageId {
        ImageId(config_digest)
    }

    /// The config digest.
    pub fn digest(&self) -> &Digest {
        &self.0
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        self.0.digest()
    }

    /// The first 12 hex digits, as `docker images` shows ids.
    pub fn short(&self) -> &str {
        let h = self.hex();
        &h[..h.len().min(12)]
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One layer of an image: its (usually compressed) blob and the digest of its tar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    pub blob: Descriptor,
    pub diff_id: Digest,
}

/// An image read from the store, its blobs checked.
#[derive(Clone, Debug)]
pub struct Image {
    pub id: ImageId,
    /// The descriptor of the manifest (its digest is what `name@sha256:…` names).
    pub manifest_descriptor: Descriptor,
    pub manifest: ImageManifest,
    pub config: ImageConfiguration,
    /// Layers bottom first, as in the manifest.
    pub layers: Vec<Layer>,
    /// The `name:tag`s naming this image, sorted.
    pub refs: Vec<String>,
}

impl Image {
    /// The sum of the layer blob sizes (compressed, as stored).
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.blob.size()).sum()
    }

    /// The diff_ids, bottom first.
    pub fn diff_ids(&self) -> Vec<&Digest> {
        self.layers.iter().map(|l| &l.diff_id).collect()
    }
}

/// One row of `ufsd images`: a tag (or an untagged image) and what it points to.
#[derive(Clone, Debug, Serialize)]
pub struct ImageSummary {
    /// `None` for an untagged image.
    pub repository: Option<String>,
    pub tag: Option<String>,
    /// `None` when the image's manifest or config cannot be read (see `error`).
    pub id: Option<ImageId>,
    pub manifest_digest: Digest,
    /// RFC 3339, from the config.
    pub created: Option<String>,
    /// Sum of the layer blob sizes, as for [`Image::size`].
    pub size: u64,
    /// Why the image could not be read, if it could not.
    pub error: Option<String>,
}

/// How an input named an image (rmi untags only when a tag was named).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Named {
    Tag(String),
    Digest,
    Id,
}

/// The ref.name of an index entry.
pub(super) fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations()
        .as_ref()
        .and_then(|a| a.get(REF_NAME))
        .map(String::as_str)
}

fn is_manifest(d: &Descriptor) -> bool {
    *d.media_type() == MediaType::ImageManifest
}

/// Splits a stored ref.name into repository and tag. A name written by another tool that
/// is not `name:tag` is shown whole as the repository.
pub fn split_ref_name(r: &str) -> (String, Option<String>) {
    match Reference::parse(r) {
        Ok(p) if p.tag().is_some() && p.digest().is_none() => {
            (p.name().to_string(), p.tag().map(str::to_string))
        }
        _ => (r.to_string(), None),
    }
}

/// A manifest descriptor for index.json, with or without a ref.name.
fn entry(manifest: &Descriptor, ref_name: Option<String>) -> Descriptor {
    let mut d = Descriptor::new(
        MediaType::ImageManifest,
        manifest.size(),
        manifest.digest().clone(),
    );
    if let Some(r) = ref_name {
        d.set_annotations(Some(HashMap::from([(REF_NAME.to_string(), r)])));
    }
    d
}

/// Points `ref_name` at `manifest` (or adds an untagged entry for it when `ref_name` is
/// `None` and it has no entry yet). An image that loses its last tag keeps an untagged
/// entry: only `rmi` removes images.
pub(super) fn set_tag(index: &mut ImageIndex, manifest: &Descriptor, tag: Option<String>) {
    edit_entries(index, |entries| set_tag_in(entries, manifest, tag));
}

/// Applies `f` to index.json's entries (oci-spec has no mutable accessor for them).
pub(super) fn edit_entries(index: &mut ImageIndex, f: impl FnOnce(&mut Vec<Descriptor>)) {
    let mut entries = index.manifests().clone();
    f(&mut entries);
    index.set_manifests(entries);
}

fn set_tag_in(entries: &mut Vec<Descriptor>, manifest: &Descriptor, tag: Option<String>) {
    match tag {
        Some(r) => {
            let mut orphaned = Vec::new();
            entries.retain(|d| {
                if ref_name_is(d, &r) {
                    orphaned.push(d.clone());
                    return false;
                }
                // The untagged entry of the image being tagged is no longer needed.
                !(d.digest() == manifest.digest() && ref_name(d).is_none())
            });
            for old in orphaned {
                if old.digest() != manifest.digest()
                    && !entries.iter().any(|d| d.digest() == old.digest())
                {
                    entries.push(entry(&old, None));
                }
            }
            entries.push(entry(manifest, Some(r)));
        }
        None => {
            if !entries.iter().any(|d| d.digest() == manifest.digest()) {
                entries.push(entry(manifest, None));
            }
        }
    }
    sort_entries(entries);
}

fn ref_name_is(d: &Descriptor, r: &str) -> bool {
    ref_name(d) == Some(r)
}

/// Tagged entries by name, then untagged ones by digest.
pub(super) fn sort_entries(entries: &mut [Descriptor]) {
    entries.sort_by(|a, b| {
        (ref_name(a).is_none(), ref_name(a), a.digest().as_ref()).cmp(&(
            ref_name(b).is_none(),
            ref_name(b),
            b.digest().as_ref(),
        ))
    });
}

impl Store {
    /// Reads index.json (the caller holds the index lock).
    pub(super) fn load_index(&self) -> ImageResult<ImageIndex> {
        let path = self.root.join("index.json");
        let bytes = std::fs::read(&path).map_err(ImageError::io("read", &path))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            ImageError::Invalid(format!("{}: not a valid image index: {e}", path.display()))
        })
    }

    /// Replaces index.json (the caller holds the index lock exclusively).
    pub(super) fn save_index(&self, index: &ImageIndex) -> ImageResult<()> {
        self.write_atomic(&self.root.join("index.json"), &canonical_json(index)?)
    }

    /// Reads a manifest and its config, checks that every layer blob is present, and
    /// pairs layers with diff_ids.
    pub(super) fn load_image(
        &self,
        index: &ImageIndex,
        manifest_desc: &Descriptor,
    ) -> ImageResult<Image> {
        let manifest: ImageManifest = self.read_json(manifest_desc)?;
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
        let mut layers = Vec::with_capacity(diff_ids.len());
        for (blob, diff_id) in manifest.layers().iter().zip(diff_ids) {
            self.check_blob_present(blob)?;
            let diff_id = parse_sha256(diff_id).ok_or_else(|| {
                ImageError::Invalid(format!(
                    "image {}: diff_id {diff_id:?} is not a sha256 digest",
                    manifest.config().digest()
                ))
            })?;
            layers.push(Layer {
                blob: blob.clone(),
                diff_id,
            });
        }
        let refs: BTreeSet<String> = index
            .manifests()
            .iter()
            .filter(|d| d.digest() == manifest_desc.digest())
            .filter_map(|d| ref_name(d).map(str::to_string))
            .collect();
        Ok(Image {
            id: ImageId(manifest.config().digest().clone()),
            manifest_descriptor: entry(manifest_desc, None),
            manifest,
            config,
            layers,
            refs: refs.into_iter().collect(),
        })
    }

    /// Finds the index entry `input` names: `name[:tag]`, `name@sha256:…` (a manifest
    /// digest), or an image id (`sha256:…`, or a unique prefix of at least 4 hex digits).
    pub(super) fn find(&self, index: &ImageIndex, input: &str) -> ImageResult<(Descriptor, Named)> {
        if let Some(hex) = input.strip_prefix("sha256:") {
            if !is_id_prefix(hex) {
                return Err(ImageError::InvalidReference {
                    input: input.to_string(),
                    reason: "an image id is 4 to 64 lowercase hex digits".to_string(),
                });
            }
            return self.find_by_id(index, input, hex);
        }
        let manifests = || index.manifests().iter().filter(|d| is_manifest(d));
        let parsed = Reference::parse(input);
        match &parsed {
            Ok(r) if r.digest().is_some() => {
                let found = manifests().find(|d| {
                    Some(d.digest()) == r.digest()
                        && ref_name(d).is_some_and(|n| split_ref_name(n).0 == r.name())
                });
                if let Some(d) = found {
                    return Ok((d.clone(), Named::Digest));
                }
            }
            Ok(r) => {
                let wanted = r.clone().with_default_tag().ref_name();
                if let Some(d) = manifests().find(|d| ref_name_is(d, &wanted)) {
                    return Ok((d.clone(), Named::Tag(wanted)));
                }
            }
            Err(_) => {}
        }
        // A ref.name written by another tool, as it is (`latest`, `v1`).
        if let Some(d) = manifests().find(|d| ref_name_is(d, input)) {
            return Ok((d.clone(), Named::Tag(input.to_string())));
        }
        if is_id_prefix(input) {
            return self.find_by_id(index, input, input);
        }
        match parsed {
            Err(e) => Err(e),
            Ok(_) => Err(ImageError::NoSuchImage(input.to_string())),
        }
    }

    fn find_by_id(
        &self,
        index: &ImageIndex,
        input: &str,
        hex: &str,
    ) -> ImageResult<(Descriptor, Named)> {
        let mut matches: BTreeMap<String, Descriptor> = BTreeMap::new();
        let mut first_error = None;
        for d in index.manifests().iter().filter(|d| is_manifest(d)) {
            match self.read_json::<ImageManifest>(d) {
                Ok(m) => {
                    let id = m.config().digest().digest().to_string();
                    if id.starts_with(hex) {
                        matches.entry(id).or_insert_with(|| d.clone());
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match matches.len() {
            1 => Ok((
                matches
                    .into_values()
                    .next()
                    .unwrap_or_else(|| unreachable!()),
                Named::Id,
            )),
            0 => Err(first_error.unwrap_or_else(|| ImageError::NoSuchImage(input.to_string()))),
            n => Err(ImageError::Conflict(format!(
                "image id prefix {hex} is ambiguous: it matches {n} images"
            ))),
        }
    }

    /// The image `input` names, with its manifest and config read and checked, and every
    /// layer blob present. Errors: [`ImageError::NoSuchImage`], an invalid reference, a
    /// missing or corrupt blob (named).
    pub fn resolve(&self, input: &str) -> ImageResult<Image> {
        let _lock = self.lock(LockKind::Shared)?;
        let index = self.load_index()?;
        let (desc, _) = self.find(&index, input)?;
        self.load_image(&index, &desc)
    }

    /// Every tag, and every untagged image, in index order (tags by name, then untagged).
    pub fn list(&self) -> ImageResult<Vec<ImageSummary>> {
        let _lock = self.lock(LockKind::Shared)?;
        let index = self.load_index()?;
        let mut cache: HashMap<String, Result<Image, String>> = HashMap::new();
        let mut out = Vec::new();
        for d in index.manifests().iter().filter(|d| is_manifest(d)) {
            let key = d.digest().to_string();
            let loaded = cache
                .entry(key)
                .or_insert_with(|| self.load_image(&index, d).map_err(|e| e.to_string()));
            let (repository, tag) = match ref_name(d) {
                Some(r) => {
                    let (repo, tag) = split_ref_name(r);
                    (Some(repo), tag)
                }
                None => (None, None),
            };
            let (id, created, size, error) = match loaded {
                Ok(img) => (
                    Some(img.id.clone()),
                    img.config.created().clone(),
                    img.size(),
                    None,
                ),
                Err(e) => (None, None, 0, Some(e.clone())),
            };
            out.push(ImageSummary {
                repository,
                tag,
                id,
                manifest_digest: d.digest().clone(),
                created,
                size,
                error,
            });
        }
        Ok(out)
    }

    /// Gives the image `src` names the tag `target` (`name:tag`), moving the tag if another
    /// image had it. The source image must be readable.
    pub fn tag(&self, src: &str, target: &Reference) -> ImageResult<Image> {
        if target.digest().is_some() || target.tag().is_none() {
            return Err(ImageError::InvalidReference {
                input: target.to_string(),
                reason: "a tag target is name:tag without a digest".to_string(),
            });
        }
        let _lock = self.lock(LockKind::Exclusive)?;
        let mut index = self.load_index()?;
        let (desc, _) = self.find(&index, src)?;
        let image = self.load_image(&index, &desc)?;
        set_tag(&mut index, &desc, Some(target.ref_name()));
        self.save_index(&index)?;
        Ok(image)
    }

    /// Removes the tag `target`; the image stays (untagged if that was its last tag).
    pub fn untag(&self, target: &Reference) -> ImageResult<()> {
        let _lock = self.lock(LockKind::Exclusive)?;
        let mut index = self.load_index()?;
        let wanted = target.clone().with_default_tag().ref_name();
        let Some(old) = index
            .manifests()
            .iter()
            .find(|d| ref_name_is(d, &wanted))
            .cloned()
        else {
            return Err(ImageError::NoSuchImage(target.to_string()));
        };
        edit_entries(&mut index, |e| e.retain(|d| !ref_name_is(d, &wanted)));
        set_tag(&mut index, &old, None);
        self.save_index(&index)
    }

    /// Records a new image from layer blobs already in the store (bottom first, each with
    /// its diff_id) and a config: writes the config and manifest blobs, then index.json,
    /// tagging it `tag` if given (else it is listed untagged). The config's
    /// `rootfs.diff_ids` are filled in if empty and must match `layers` otherwise.
    /// Returns the image id. Hold a [`Pin`](super::Pin) from before the layer blobs were
    /// written until this returns.
    pub fn add_image(
        &self,
        mut config: ImageConfiguration,
        layers: Vec<(Descriptor, Digest)>,
        tag: Option<&Reference>,
    ) -> ImageResult<ImageId> {
        let _pin = self.pin()?;
        let diff_ids: Vec<String> = layers.iter().map(|(_, d)| d.to_string()).collect();
        if config.rootfs().diff_ids().is_empty() {
            config.rootfs_mut().set_diff_ids(diff_ids);
        } else if *config.rootfs().diff_ids() != diff_ids {
            return Err(ImageError::Invalid(
                "the config's rootfs.diff_ids do not match the layers given".to_string(),
            ));
        }
        for (blob, diff_id) in &layers {
            crate::image::store::sha256_hex(diff_id)?;
            self.check_blob_present(blob)?;
        }
        let config_desc = self.put_blob_bytes(&canonical_json(&config)?, MediaType::ImageConfig)?;
        let manifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(config_desc.clone())
            .layers(layers.into_iter().map(|(d, _)| d).collect::<Vec<_>>())
            .build()
            .map_err(|e| ImageError::Invalid(format!("build manifest: {e}")))?;
        let manifest_desc =
            self.put_blob_bytes(&canonical_json(&manifest)?, MediaType::ImageManifest)?;
        let _lock = self.lock(LockKind::Exclusive)?;
        let mut index = self.load_index()?;
        set_tag(
            &mut index,
            &manifest_desc,
            tag.map(|t| t.clone().with_default_tag().ref_name()),
        );
        self.save_index(&index)?;
        Ok(ImageId(config_desc.digest().clone()))
    }
}
