//! `ufsd load`: an OCI image layout (a directory, or a tar of one) or a `docker save`
//! tarball into the store, with every digest checked before the store is touched.
//!
//! 1. A tar (plain or gzip) is unpacked into a scratch directory under the store's `tmp/`
//!    ([`stage`]): only regular files and directories are written, paths with `..` are
//!    refused, a leading `/` is dropped, duplicate entries are refused, and symlinks and
//!    hard links are not created but remembered as aliases inside the archive (old
//!    `docker save` links shared `layer.tar` files that way). What it may expand to is
//!    bounded like an import.
//! 2. The format is recognised: `index.json` makes an OCI layout, else `manifest.json` a
//!    `docker save` archive (legacy format: a config file and one `layer.tar` per layer).
//! 3. Every image is checked: manifest and config against their digests and sizes, each
//!    layer blob against its digest and size and, decompressed, against its diff_id; tags
//!    are parsed. Nothing is written to the store before all of it holds.
//! 4. Blobs are copied into the store, then each image is recorded from its manifest. An
//!    OCI manifest is kept byte for byte (so the image keeps its manifest digest and id);
//!    a docker manifest or a `docker save` archive gets a new OCI manifest over the same
//!    config and layer bytes, so the image id (the config digest) is kept in every case.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::{
    Descriptor, Digest, ImageConfiguration, ImageIndex, ImageManifest, ImageManifestBuilder,
    MediaType,
};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::{Counted, Limited, MaybeGzip, Progress, available_bytes};
use crate::image::reference::{Reference, parse_sha256};
use crate::image::store::{ImageId, REF_NAME, Store, canonical_json};
use crate::image::{ImageError, ImageResult};

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// The annotation docker and containerd give the full image name in an OCI layout.
const CONTAINERD_NAME: &str = "io.containerd.image.name";

/// How to load.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Most bytes a (decompressed) tar input may hold; default: half the space free on
    /// the store's filesystem.
    pub max_bytes: Option<u64>,
}

/// Where the images come from.
pub enum LoadSource<'a> {
    /// A directory holding an OCI layout (or an unpacked `docker save` archive).
    Dir(PathBuf),
    /// A tar of either, plain or gzip, with its size when known.
    Tar(Box<dyn Read + 'a>, Option<u64>),
}

/// One image loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    pub id: ImageId,
    /// The `name:tag`s given to it (none: it is listed untagged).
    pub tags: Vec<String>,
}

/// An image checked and ready to be stored.
struct Checked {
    /// The manifest to record, as bytes.
    manifest: Vec<u8>,
    /// Blobs to copy: where in the layout, and the descriptor.
    blobs: Vec<(PathBuf, Descriptor)>,
    tags: Vec<Reference>,
    id: ImageId,
}

/// A layout being read: a root directory and the aliases (links) of a staged archive.
struct Layout {
    root: PathBuf,
    aliases: HashMap<String, String>,
    /// Whether paths were staged by us (a user's directory is checked for symlinks).
    staged: bool,
}

/// The components of an archive or layout path, without `.` and empty ones; `None` for
/// a `..`.
fn clean(path: &str) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

impl Layout {
    /// The file at layout path `rel`, following archive aliases (a few levels deep).
    fn path(&self, rel: &str) -> ImageResult<PathBuf> {
        let mut rel = clean(rel)
            .ok_or_else(|| ImageError::Invalid(format!("path {rel:?} leaves the archive")))?
            .join("/");
        for _ in 0..16 {
            match self.aliases.get(&rel) {
                Some(target) => rel = target.clone(),
                None => break,
            }
        }
        let path = self.root.join(&rel);
        if !self.staged {
            // A user's directory: refuse symlinks on the way, so a crafted manifest.json
            // cannot read files outside it.
            let mut p = self.root.clone();
            for c in rel.split('/').filter(|c| !c.is_empty()) {
                p.push(c);
                if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
                    return Err(ImageError::Invalid(format!(
                        "{}: a symlink inside the layout; refusing to follow it",
                        p.display()
                    )));
                }
            }
        }
        Ok(path)
    }

    fn exists(&self, rel: &str) -> bool {
        self.path(rel).is_ok_and(|p| p.is_file())
    }

    fn read(&self, rel: &str) -> ImageResult<Vec<u8>> {
        let p = self.path(rel)?;
        fs::read(&p).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ImageError::Invalid(format!("{rel} is missing")),
            _ => ImageError::io("reading", &p)(e),
        })
    }

    fn blob_rel(d: &Digest) -> ImageResult<String> {
        match d.algorithm() {
            oci_spec::image::DigestAlgorithm::Sha256 => Ok(format!("blobs/sha256/{}", d.digest())),
            a => Err(ImageError::Invalid(format!(
                "digest {d}: algorithm {a} is not supported (only sha256)"
            ))),
        }
    }

    /// A small blob, read whole and checked against its descriptor.
    fn read_blob(&self, d: &Descriptor, what: &str) -> ImageResult<Vec<u8>> {
        let rel = Self::blob_rel(d.digest())?;
        let bytes = self.read(&rel).map_err(|e| match e {
            ImageError::Invalid(_) => ImageError::Invalid(format!(
                "{what} blob {} is missing from the layout",
                d.digest()
            )),
            other => other,
        })?;
        let actual = sha256(&bytes);
        if actual != *d.digest() {
            return Err(ImageError::Invalid(format!(
                "{what} blob {} is corrupt: its content hashes to {actual}",
                d.digest()
            )));
        }
        if bytes.len() as u64 != d.size() {
            return Err(ImageError::Invalid(format!(
                "{what} blob {} has {} bytes, its descriptor says {}",
                d.digest(),
                bytes.len(),
                d.size()
            )));
        }
        Ok(bytes)
    }
}

fn sha256(bytes: &[u8]) -> Digest {
    digest_of(Sha256::new_with_prefix(bytes))
}

fn digest_of(h: Sha256) -> Digest {
    parse_sha256(&format!("sha256:{}", hex::encode(h.finalize())))
        .unwrap_or_else(|| unreachable!("64 hex digits"))
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// What a layer file is: its digest and size, whether it is gzip, and the digest of its
/// tar (the diff_id), in one pass.
struct Measured {
    digest: Digest,
    size: u64,
    gzip: bool,
    diff_id: Digest,
}

fn measure_layer(path: &Path, name: &str, progress: &dyn Progress) -> ImageResult<Measured> {
    let f = File::open(path).map_err(ImageError::io("opening", path))?;
    let mut outer = Hashing {
        inner: Counted::new(f, progress),
        hasher: Sha256::new(),
        bytes: 0,
    };
    let decoded = MaybeGzip::detect(BufReader::with_capacity(1 << 20, &mut outer))
        .map_err(ImageError::io("reading", path))?;
    let gzip = decoded.is_gzip();
    let mut inner = EofWatch {
        inner: Hashing {
            inner: decoded,
            hasher: Sha256::new(),
            bytes: 0,
        },
        eof: false,
    };
    let bad = |e: String| ImageError::Invalid(format!("{name} is corrupt: {e}"));
    // Walk the tar: a layer the extractor would refuse later is refused now.
    {
        let mut ar = tar::Archive::new(&mut inner);
        for entry in ar.entries().map_err(|e| bad(e.to_string()))? {
            entry.map_err(|e| bad(format!("not a valid tar: {e}")))?;
        }
    }
    if inner.eof {
        return Err(bad(
            "its tar ends without the end-of-archive block (truncated)".to_string(),
        ));
    }
    io::copy(&mut inner, &mut io::sink()).map_err(|e| bad(e.to_string()))?;
    let diff_id = digest_of(inner.inner.hasher);
    // The decoder may stop before trailing bytes; the blob digest covers them all.
    drop(inner.inner.inner);
    io::copy(&mut outer, &mut io::sink()).map_err(ImageError::io("reading", path))?;
    Ok(Measured {
        digest: digest_of(outer.hasher),
        size: outer.bytes,
        gzip,
        diff_id,
    })
}

/// Loads every image of `source` into `store`. On any error the store is unchanged
/// (except for blobs already copied when a write fails midway, which the next garbage
/// collection removes).
pub fn load(
    store: &Store,
    source: LoadSource<'_>,
    opts: &LoadOptions,
    progress: &dyn Progress,
) -> ImageResult<Vec<Loaded>> {
    // Held throughout: garbage collection would empty tmp/, our scratch space included.
    let pin = store.pin()?;
    let scratch;
    let layout = match source {
        LoadSource::Dir(root) => {
            if !root.is_dir() {
                return Err(ImageError::Invalid(format!(
                    "{}: not a directory",
                    root.display()
                )));
            }
            Layout {
                root,
                aliases: HashMap::new(),
                staged: false,
            }
        }
        LoadSource::Tar(input, total) => {
            scratch = store.scratch_dir("load")?;
            let max = match opts.max_bytes {
                Some(m) => m,
                None => available_bytes(store.root())? / 2,
            };
            progress.begin("reading", total);
            let aliases = stage(input, scratch.path(), max, progress)?;
            progress.end();
            Layout {
                root: scratch.path().to_path_buf(),
                aliases,
                staged: true,
            }
        }
    };
    progress.begin("verifying", None);
    let checked = if layout.exists("index.json") {
        check_oci(&layout, progress)?
    } else if layout.exists("manifest.json") {
        check_docker(&layout, progress)?
    } else {
        return Err(ImageError::Invalid(
            "not an OCI image layout (no index.json) nor a docker save archive (no \
             manifest.json)"
                .to_string(),
        ));
    };
    progress.end();
    if checked.is_empty() {
        return Err(ImageError::Invalid("the input holds no image".to_string()));
    }
    // Everything holds: write.
    let mut written = BTreeSet::new();
    let total = checked
        .iter()
        .flat_map(|c| &c.blobs)
        .map(|(_, d)| d.size())
        .sum();
    progress.begin("storing", Some(total));
    for c in &checked {
        for (path, d) in &c.blobs {
            if !written.insert(d.digest().to_string()) || store.has_blob(d.digest()) {
                continue;
            }
            let f = File::open(path).map_err(ImageError::io("opening", path))?;
            let stored = store.put_blob(Counted::new(f, progress), d.media_type().clone())?;
            if stored.digest() != d.digest() {
                return Err(ImageError::Invalid(format!(
                    "{} changed while being loaded",
                    path.display()
                )));
            }
        }
    }
    progress.end();
    let mut out = Vec::new();
    for c in checked {
        let id = store.add_manifest(&c.manifest, &c.tags)?;
        debug_assert_eq!(id, c.id);
        out.push(Loaded {
            id,
            tags: c.tags.iter().map(Reference::ref_name).collect(),
        });
    }
    drop(pin);
    Ok(out)
}

/// Unpacks the archive `input` into `dir` (see the module doc); returns the aliases its
/// links make.
fn stage(
    input: Box<dyn Read + '_>,
    dir: &Path,
    max: u64,
    progress: &dyn Progress,
) -> ImageResult<HashMap<String, String>> {
    let input = BufReader::with_capacity(1 << 20, Counted::new(input, progress));
    let tar = MaybeGzip::detect(input).map_err(ImageError::io("reading", "the input"))?;
    let watch = EofWatch {
        inner: Limited::new(tar, max),
        eof: false,
    };
    let mut ar = tar::Archive::new(watch);
    let mut aliases = HashMap::new();
    let mut seen = BTreeSet::new();
    let corrupt =
        |e: io::Error| ImageError::Invalid(format!("input tar: corrupt or truncated: {e}"));
    let mut last = String::new();
    for entry in ar.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(|e| {
            ImageError::Invalid(format!(
                "input tar: corrupt or truncated after `{last}`: {e}"
            ))
        })?;
        let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if matches!(kind, tar::EntryType::XGlobalHeader) {
            continue;
        }
        let comps = clean(&raw).ok_or_else(|| {
            ImageError::Invalid(format!("input tar: entry `{raw}` has a `..` component"))
        })?;
        let rel = comps.join("/");
        if !seen.insert(rel.clone()) && kind != tar::EntryType::Directory {
            return Err(ImageError::Invalid(format!(
                "input tar: duplicate entry `{raw}`"
            )));
        }
        let path = dir.join(&rel);
        match kind {
            tar::EntryType::Directory => {
                fs::create_dir_all(&path).map_err(ImageError::io("creating", &path))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).map_err(ImageError::io("creating", parent))?;
                }
                let mut f = File::options()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(ImageError::io("creating", &path))?;
                let size = entry.size();
                let n = io::copy(&mut entry, &mut f).map_err(|e| {
                    ImageError::Invalid(format!("input tar: corrupt or truncated in `{raw}`: {e}"))
                })?;
                if n != size {
                    return Err(ImageError::Invalid(format!(
                        "input tar: truncated in `{raw}`: {n} of {size} bytes"
                    )));
                }
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                let base = if kind == tar::EntryType::Symlink && !target.starts_with('/') {
                    comps[..comps.len().saturating_sub(1)].join("/")
                } else {
                    String::new()
                };
                let joined = resolve_within(&base, &target).ok_or_else(|| {
                    ImageError::Invalid(format!(
                        "input tar: link `{raw}` -> `{target}` leads outside the archive"
                    ))
                })?;
                aliases.insert(rel, joined);
            }
            other => {
                return Err(ImageError::Invalid(format!(
                    "input tar: entry `{raw}` has type {other:?}, which an image archive \
                     does not hold"
                )));
            }
        }
        last = raw;
    }
    if ar.into_inner().eof {
        return Err(ImageError::Invalid(format!(
            "input tar: truncated after `{last}`: the archive ends without its \
             end-of-archive block"
        )));
    }
    Ok(aliases)
}

/// `base/target` with `.` and `..` resolved, or `None` if it climbs above the root.
fn resolve_within(base: &str, target: &str) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for c in base.split('/').chain(target.split('/')) {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out.join("/"))
}

/// Notes whether the archive reader ran into the end of its input.
struct EofWatch<R> {
    inner: R,
    eof: bool,
}

impl<R: Read> Read for EofWatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof = true;
        }
        Ok(n)
    }
}

/// A tag from a layout annotation: a full reference, `latest` defaulted.
fn parse_tag(r: &str) -> ImageResult<Reference> {
    Reference::parse_tag_target(r).map_err(|e| match e {
        ImageError::InvalidReference { input, reason } => ImageError::InvalidReference {
            input,
            reason: format!("{reason} (an image name in the input)"),
        },
        other => other,
    })
}

/// The layer media type the store records for a layer's bytes.
fn oci_layer_type(t: &MediaType) -> ImageResult<MediaType> {
    Ok(match t {
        MediaType::ImageLayer | MediaType::ImageLayerGzip => t.clone(),
        MediaType::ImageLayerNonDistributable | MediaType::ImageLayerNonDistributableGzip => {
            t.clone()
        }
        MediaType::Other(s) if s == DOCKER_LAYER_GZIP => MediaType::ImageLayerGzip,
        MediaType::Other(s) if s == DOCKER_LAYER_TAR => MediaType::ImageLayer,
        other => {
            return Err(ImageError::Invalid(format!(
                "layer media type {other} is not supported (tar or tar+gzip)"
            )));
        }
    })
}

fn is_gzip_type(t: &MediaType) -> bool {
    matches!(
        t,
        MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip
    )
}

/// Checks the layers of an image against their descriptors and the config's diff_ids.
fn check_layers(
    layout: &Layout,
    layers: &[Descriptor],
    config: &ImageConfiguration,
    progress: &dyn Progress,
) -> ImageResult<Vec<(PathBuf, Descriptor)>> {
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != layers.len() {
        return Err(ImageError::Invalid(format!(
            "the config lists {} layers, the manifest {}",
            diff_ids.len(),
            layers.len()
        )));
    }
    let mut out = Vec::new();
    for (d, diff_id) in layers.iter().zip(diff_ids) {
        let media_type = oci_layer_type(d.media_type())?;
        let rel = Layout::blob_rel(d.digest())?;
        let path = layout.path(&rel)?;
        if !path.is_file() {
            return Err(ImageError::Invalid(format!(
                "layer blob {} is missing from the layout",
                d.digest()
            )));
        }
        let m = measure_layer(&path, &format!("layer blob {}", d.digest()), progress)?;
        if m.digest != *d.digest() {
            return Err(ImageError::Invalid(format!(
                "layer blob {} is corrupt: its content hashes to {}",
                d.digest(),
                m.digest
            )));
        }
        if m.size != d.size() {
            return Err(ImageError::Invalid(format!(
                "layer blob {} has {} bytes, its descriptor says {}",
                d.digest(),
                m.size,
                d.size()
            )));
        }
        if m.gzip != is_gzip_type(&media_type) {
            return Err(ImageError::Invalid(format!(
                "layer blob {}: its media type says {} but it is {}",
                d.digest(),
                d.media_type(),
                if m.gzip { "gzip" } else { "not gzip" }
            )));
        }
        if m.diff_id.to_string() != *diff_id {
            return Err(ImageError::Invalid(format!(
                "layer blob {}: its tar hashes to {}, the config's diff_id is {diff_id}",
                d.digest(),
                m.diff_id
            )));
        }
        let mut stored = d.clone();
        stored.set_media_type(media_type);
        out.push((path, stored));
    }
    Ok(out)
}

/// Checks every image an OCI layout's index.json names.
fn check_oci(layout: &Layout, progress: &dyn Progress) -> ImageResult<Vec<Checked>> {
    if layout.exists("oci-layout") {
        let v: serde_json::Value = serde_json::from_slice(&layout.read("oci-layout")?)
            .map_err(|e| ImageError::Invalid(format!("oci-layout: {e}")))?;
        let version = v["imageLayoutVersion"].as_str().unwrap_or("");
        if !version.starts_with("1.") {
            return Err(ImageError::Invalid(format!(
                "oci-layout: image layout version {version:?} is not supported (1.x is)"
            )));
        }
    }
    let index: ImageIndex = serde_json::from_slice(&layout.read("index.json")?)
        .map_err(|e| ImageError::Invalid(format!("index.json: not a valid image index: {e}")))?;
    // Manifests by digest, with the tags that name them.
    let mut images: Vec<(Descriptor, Vec<Reference>)> = Vec::new();
    for d in index.manifests() {
        let tag = d
            .annotations()
            .as_ref()
            .and_then(|a| a.get(CONTAINERD_NAME).or_else(|| a.get(REF_NAME)))
            .map(|r| parse_tag(r))
            .transpose()?;
        let manifest = match d.media_type() {
            MediaType::ImageIndex => pick_from_index(layout, d)?,
            MediaType::Other(t) if t == DOCKER_MANIFEST_LIST => pick_from_index(layout, d)?,
            _ => d.clone(),
        };
        match images
            .iter_mut()
            .find(|(m, _)| m.digest() == manifest.digest())
        {
            Some((_, tags)) => tags.extend(tag),
            None => images.push((manifest, tag.into_iter().collect())),
        }
    }
    let mut out = Vec::new();
    for (desc, tags) in images {
        out.push(
            check_oci_image(layout, &desc, tags, progress)
                .map_err(|e| ImageError::Invalid(format!("image {}: {}", desc.digest(), e)))?,
        );
    }
    Ok(out)
}

/// The manifest for this platform in a nested index (or its only one).
fn pick_from_index(layout: &Layout, d: &Descriptor) -> ImageResult<Descriptor> {
    let nested: ImageIndex = serde_json::from_slice(&layout.read_blob(d, "index")?)
        .map_err(|e| ImageError::Invalid(format!("index {}: {e}", d.digest())))?;
    let here = oci_spec::image::Arch::default();
    let os = oci_spec::image::Os::default();
    let all = nested.manifests();
    let found = all
        .iter()
        .find(|m| {
            m.platform()
                .as_ref()
                .is_some_and(|p| *p.architecture() == here && *p.os() == os)
        })
        .or(if all.len() == 1 { all.first() } else { None });
    found.cloned().ok_or_else(|| {
        ImageError::Invalid(format!("index {}: no manifest for {os}/{here}", d.digest()))
    })
}

fn check_oci_image(
    layout: &Layout,
    desc: &Descriptor,
    tags: Vec<Reference>,
    progress: &dyn Progress,
) -> ImageResult<Checked> {
    let bytes = layout.read_blob(desc, "manifest")?;
    let manifest: ImageManifest = serde_json::from_slice(&bytes)
        .map_err(|e| ImageError::Invalid(format!("not a valid image manifest: {e}")))?;
    let config_bytes = layout.read_blob(manifest.config(), "config")?;
    let config: ImageConfiguration = serde_json::from_slice(&config_bytes)
        .map_err(|e| ImageError::Invalid(format!("not a valid image config: {e}")))?;
    let layers = check_layers(layout, manifest.layers(), &config, progress)?;
    let docker_typed = matches!(manifest.media_type(), Some(MediaType::Other(t)) if t == DOCKER_MANIFEST)
        || layers
            .iter()
            .zip(manifest.layers())
            .any(|((_, stored), orig)| stored.media_type() != orig.media_type())
        || matches!(manifest.config().media_type(), MediaType::Other(t) if t == DOCKER_CONFIG);
    let mut config_desc = manifest.config().clone();
    config_desc.set_media_type(MediaType::ImageConfig);
    let manifest_bytes = if docker_typed {
        new_manifest(&config_desc, &layers)?
    } else {
        bytes
    };
    let mut blobs = layers;
    blobs.push((
        layout.path(&Layout::blob_rel(config_desc.digest())?)?,
        config_desc.clone(),
    ));
    Ok(Checked {
        manifest: manifest_bytes,
        blobs,
        tags,
        id: ImageId::new(config_desc.digest().clone()),
    })
}

/// An OCI manifest over a config and layers (sorted-key JSON: the same input always
/// gives the same manifest digest).
fn new_manifest(config: &Descriptor, layers: &[(PathBuf, Descriptor)]) -> ImageResult<Vec<u8>> {
    let m = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config.clone())
        .layers(layers.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>())
        .build()
        .map_err(|e| ImageError::Invalid(format!("build manifest: {e}")))?;
    canonical_json(&m)
}

/// One image of a `docker save` manifest.json.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Checks every image of a `docker save` archive.
fn check_docker(layout: &Layout, progress: &dyn Progress) -> ImageResult<Vec<Checked>> {
    let entries: Vec<DockerEntry> = serde_json::from_slice(&layout.read("manifest.json")?)
        .map_err(|e| ImageError::Invalid(format!("manifest.json: {e}")))?;
    let mut out = Vec::new();
    for e in entries {
        let tags = e
            .repo_tags
            .iter()
            .flatten()
            .map(|t| parse_tag(t))
            .collect::<ImageResult<Vec<_>>>()?;
        let config_bytes = layout.read(&e.config)?;
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes).map_err(|err| {
            ImageError::Invalid(format!("{}: not a valid image config: {err}", e.config))
        })?;
        let config_desc = Descriptor::new(
            MediaType::ImageConfig,
            config_bytes.len() as u64,
            sha256(&config_bytes),
        );
        let diff_ids = config.rootfs().diff_ids();
        if diff_ids.len() != e.layers.len() {
            return Err(ImageError::Invalid(format!(
                "{}: the config lists {} layers, manifest.json {}",
                e.config,
                diff_ids.len(),
                e.layers.len()
            )));
        }
        let mut blobs = Vec::new();
        for (rel, diff_id) in e.layers.iter().zip(diff_ids) {
            let path = layout.path(rel)?;
            if !path.is_file() {
                return Err(ImageError::Invalid(format!(
                    "layer {rel} is missing from the archive"
                )));
            }
            let m = measure_layer(&path, &format!("layer {rel}"), progress)?;
            if m.diff_id.to_string() != *diff_id {
                return Err(ImageError::Invalid(format!(
                    "layer {rel}: its tar hashes to {}, the config's diff_id is {diff_id}",
                    m.diff_id
                )));
            }
            let media_type = if m.gzip {
                MediaType::ImageLayerGzip
            } else {
                MediaType::ImageLayer
            };
            blobs.push((path, Descriptor::new(media_type, m.size, m.digest)));
        }
        let manifest = new_manifest(&config_desc, &blobs)?;
        blobs.push((layout.path(&e.config)?, config_desc.clone()));
        out.push(Checked {
            manifest,
            blobs,
            tags,
            id: ImageId::new(config_desc.digest().clone()),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_paths_and_links_stay_inside() {
        assert_eq!(clean("./a//b/"), Some(vec!["a", "b"]));
        assert_eq!(clean("/abs/x"), Some(vec!["abs", "x"]));
        assert_eq!(clean("a/../b"), None);
        assert_eq!(
            resolve_within("bbb", "../aaa/layer.tar").as_deref(),
            Some("aaa/layer.tar")
        );
        assert_eq!(resolve_within("", "/aaa/x").as_deref(), Some("aaa/x"));
        assert_eq!(resolve_within("a/b", "../../c").as_deref(), Some("c"));
        assert_eq!(resolve_within("a", "../../etc/passwd"), None);
        assert_eq!(resolve_within("", ".."), None);
    }

    #[test]
    fn docker_media_types_map_to_oci_ones() {
        let t = |s: &str| MediaType::Other(s.to_string());
        assert_eq!(
            oci_layer_type(&t(DOCKER_LAYER_GZIP)).unwrap(),
            MediaType::ImageLayerGzip
        );
        assert_eq!(
            oci_layer_type(&t(DOCKER_LAYER_TAR)).unwrap(),
            MediaType::ImageLayer
        );
        assert_eq!(
            oci_layer_type(&MediaType::ImageLayerZstd)
                .unwrap_err()
                .to_string(),
            "layer media type application/vnd.oci.image.layer.v1.tar+zstd is not supported (tar or tar+gzip)"
        );
    }
}
