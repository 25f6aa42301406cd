//! `ufsd save`: images as an OCI image layout, in a directory or as a tar of one.
//!
//! The layout holds `oci-layout`, `index.json` (one manifest descriptor per tag, annotated
//! `org.opencontainers.image.ref.name = NAME:TAG`, the form the store uses, so
//! `skopeo inspect oci:DIR:NAME:TAG` finds it; an image saved without a tag gets one entry
//! without the annotation) and `blobs/sha256/` with every manifest, config and layer blob
//! as stored, byte for byte, so digests and image ids stay the same. Blobs are checked
//! against their digests while they are copied.
//!
//! The tar form also carries a `manifest.json` in `docker save`'s format, so `docker load`
//! of older engines reads it too. Its entries are written in a fixed order with
//! normalised headers: `oci-layout`, `index.json`, `manifest.json`, `blobs/`,
//! `blobs/sha256/`, then the blobs sorted by digest.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, Digest, ImageIndex, MediaType};
use serde_json::json;

use super::{Counted, Progress};
use crate::image::reference::Reference;
use crate::image::store::{Image, REF_NAME, Store, canonical_json};
use crate::image::{ImageError, ImageResult};

/// One image to save and the ref.names to give it in the layout.
#[derive(Clone, Debug)]
pub struct SaveItem {
    pub image: Image,
    pub refs: Vec<String>,
}

/// Resolves the names given to `save`: a tag saves that tag; an id or digest saves every
/// tag of the image (or none). The same image named twice is saved once, with all the
/// tags asked for.
pub fn plan(store: &Store, names: &[String]) -> ImageResult<Vec<SaveItem>> {
    let mut items: Vec<SaveItem> = Vec::new();
    for name in names {
        let image = store.resolve(name)?;
        let asked = match Reference::parse(name) {
            Ok(r) if r.digest().is_none() => Some(r.with_default_tag().ref_name()),
            _ => None,
        };
        let refs = match asked {
            Some(r) if image.refs.contains(&r) => vec![r],
            _ if image.refs.iter().any(|r| r == name) => vec![name.clone()],
            _ => image.refs.clone(),
        };
        match items
            .iter_mut()
            .find(|i| i.image.manifest_descriptor.digest() == image.manifest_descriptor.digest())
        {
            Some(existing) => {
                for r in refs {
                    if !existing.refs.contains(&r) {
                        existing.refs.push(r);
                    }
                }
            }
            None => items.push(SaveItem { image, refs }),
        }
    }
    Ok(items)
}

/// index.json of the layout: one entry per ref, an unannotated one for an image without.
fn layout_index(items: &[SaveItem]) -> ImageResult<Vec<u8>> {
    let mut entries = Vec::new();
    for item in items {
        let m = &item.image.manifest_descriptor;
        let plain = || Descriptor::new(MediaType::ImageManifest, m.size(), m.digest().clone());
        if item.refs.is_empty() {
            entries.push(plain());
        }
        for r in &item.refs {
            let mut d = plain();
            d.set_annotations(Some(HashMap::from([(REF_NAME.to_string(), r.clone())])));
            entries.push(d);
        }
    }
    let mut index = ImageIndex::default();
    index.set_manifests(entries);
    canonical_json(&index)
}

/// `docker save`'s manifest.json for the same images.
fn docker_manifest(items: &[SaveItem]) -> ImageResult<Vec<u8>> {
    let blob = |d: &Digest| format!("blobs/sha256/{}", d.digest());
    let list: Vec<_> = items
        .iter()
        .map(|i| {
            json!({
                "Config": blob(i.image.manifest.config().digest()),
                "RepoTags": i.refs,
                "Layers": i.image.layers.iter().map(|l| blob(l.blob.digest())).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::to_vec(&list).map_err(|e| ImageError::Invalid(format!("manifest.json: {e}")))
}

/// Every blob of the images, each once, by digest.
fn blobs(items: &[SaveItem]) -> BTreeMap<String, Descriptor> {
    let mut out = BTreeMap::new();
    for i in items {
        let img = &i.image;
        let mut add = |d: &Descriptor| {
            out.entry(d.digest().to_string())
                .or_insert_with(|| d.clone());
        };
        add(&img.manifest_descriptor);
        add(img.manifest.config());
        for l in &img.layers {
            add(&l.blob);
        }
    }
    out
}

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Copies a blob, checking its size and digest, into `out`.
fn copy_blob(
    store: &Store,
    d: &Descriptor,
    out: &mut dyn Write,
    progress: &dyn Progress,
) -> ImageResult<()> {
    let mut r = store.open_blob(d.digest())?;
    let path = store.blob_path(d.digest())?;
    let n = io::copy(
        &mut (&mut r).take(d.size()),
        &mut Counted::new(out, progress),
    )
    .map_err(
        |e| match e.get_ref().is_some_and(|i| i.is::<ImageError>()) {
            true => ImageError::Invalid(format!("blob {}: {e}", d.digest())),
            false => ImageError::io("copying blob", &path)(e),
        },
    )?;
    if n != d.size() {
        return Err(ImageError::Invalid(format!(
            "blob {} has {n} bytes, its descriptor says {}",
            d.digest(),
            d.size()
        )));
    }
    r.finish()?;
    Ok(())
}

/// Writes the layout into the new directory `dest` (absent or empty): built in a
/// temporary directory beside it and renamed into place when complete.
pub fn save_dir(
    store: &Store,
    items: &[SaveItem],
    dest: &Path,
    progress: &dyn Progress,
) -> ImageResult<()> {
    if dest.exists() {
        let empty = fs::read_dir(dest)
            .map_err(ImageError::io("reading", dest))?
            .next()
            .is_none();
        if !empty {
            return Err(ImageError::Invalid(format!(
                "{}: exists and is not empty; save writes a new layout",
                dest.display()
            )));
        }
    }
    let name = dest
        .file_name()
        .ok_or_else(|| ImageError::Invalid(format!("{}: not a directory name", dest.display())))?;
    let tmp = dest.with_file_name(format!(
        ".{}.ufsd-tmp-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = write_dir(store, items, &tmp, progress)
        .and_then(|()| fs::rename(&tmp, dest).map_err(ImageError::io("renaming into place", dest)));
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

fn write_dir(
    store: &Store,
    items: &[SaveItem],
    dir: &Path,
    progress: &dyn Progress,
) -> ImageResult<()> {
    let blob_dir = dir.join("blobs/sha256");
    fs::create_dir_all(&blob_dir).map_err(ImageError::io("creating", &blob_dir))?;
    let write = |p: PathBuf, bytes: &[u8]| -> ImageResult<()> {
        fs::write(&p, bytes).map_err(ImageError::io("writing", &p))
    };
    write(dir.join("oci-layout"), OCI_LAYOUT)?;
    let all = blobs(items);
    progress.begin("saving", Some(all.values().map(Descriptor::size).sum()));
    for d in all.values() {
        let p = blob_dir.join(d.digest().digest());
        let mut f = BufWriter::new(File::create(&p).map_err(ImageError::io("creating", &p))?);
        copy_blob(store, d, &mut f, progress)?;
        f.into_inner()
            .map_err(|e| ImageError::io("writing", &p)(e.into_error()))?
            .sync_all()
            .map_err(ImageError::io("syncing", &p))?;
    }
    progress.end();
    write(dir.join("index.json"), &layout_index(items)?)
}

/// A tar entry header: fixed owner, mode and time.
fn header(path: &str, kind: tar::EntryType, size: u64) -> ImageResult<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)
        .map_err(|e| ImageError::Invalid(format!("tar path {path}: {e}")))?;
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(if kind == tar::EntryType::Directory {
        0o755
    } else {
        0o644
    });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    Ok(h)
}

/// Writes the layout as a tar stream to `out`.
pub fn save_tar(
    store: &Store,
    items: &[SaveItem],
    out: &mut dyn Write,
    progress: &dyn Progress,
) -> ImageResult<()> {
    let werr = |e: io::Error| ImageError::io("writing", "the output")(e);
    let mut b = tar::Builder::new(out);
    let small = |b: &mut tar::Builder<&mut dyn Write>, path: &str, bytes: &[u8]| {
        let h = header(path, tar::EntryType::Regular, bytes.len() as u64)?;
        b.append(&h, bytes).map_err(werr)
    };
    small(&mut b, "oci-layout", OCI_LAYOUT)?;
    small(&mut b, "index.json", &layout_index(items)?)?;
    small(&mut b, "manifest.json", &docker_manifest(items)?)?;
    for d in ["blobs/", "blobs/sha256/"] {
        b.append(&header(d, tar::EntryType::Directory, 0)?, io::empty())
            .map_err(werr)?;
    }
    let all = blobs(items);
    progress.begin("saving", Some(all.values().map(Descriptor::size).sum()));
    for d in all.values() {
        let path = format!("blobs/sha256/{}", d.digest().digest());
        let h = header(&path, tar::EntryType::Regular, d.size())?;
        b.get_mut().write_all(h.as_bytes()).map_err(werr)?;
        copy_blob(store, d, b.get_mut(), progress)?;
        let pad = (512 - d.size() % 512) % 512;
        b.get_mut()
            .write_all(&vec![0u8; pad as usize])
            .map_err(werr)?;
    }
    progress.end();
    b.finish().map_err(werr)?;
    b.into_inner().map_err(werr)?.flush().map_err(werr)
}
