//! `ufsd export`: the flattened tree of an image, a container or a directory as one tar,
//! as `docker export` writes it.
//!
//! - An image is exported offline: its layers are extracted into the store if they are
//!   not yet (verified, shared with mounts), then merged with the union rules by
//!   [`write_flattened`]. No mount is made.
//! - A container (a record under `containers/NAME/`) is its upper layer,
//!   `containers/NAME/upper`, over its image's layers.
//! - A directory (a ufsd mountpoint, or any tree) is written as it is seen, as a stack of
//!   one; entries that look like whiteouts (`.wh.*` files, 0/0 character devices) are
//!   left out, since a tar would carry them as whiteouts.

use std::io::Write;
use std::path::PathBuf;

use super::{Counted, Progress};
use crate::image::layer::{
    ExtractOptions, FlattenStats, LayerOptions, extract_layer, write_flattened,
};
use crate::image::store::{Image, Store};
use crate::image::{ImageError, ImageResult};

/// What to export.
#[derive(Clone, Debug)]
pub enum Source {
    Image(Image),
    /// A container's name and its image.
    Container(String, Image),
    Directory(PathBuf),
    /// Layer directories, top-most first (an upper over its lowers), merged offline.
    Layers(Vec<PathBuf>),
}

/// Makes sure every layer of `image` is extracted (reporting progress) and returns their
/// directories, top-most first.
pub fn image_lowers(
    store: &Store,
    image: &Image,
    progress: &dyn Progress,
) -> ImageResult<Vec<PathBuf>> {
    let opts = ExtractOptions::default();
    let mut dirs = Vec::with_capacity(image.layers.len());
    for (i, layer) in image.layers.iter().enumerate() {
        if store.layer_usable(&layer.diff_id)? {
            dirs.push(store.layer_dir(&layer.diff_id)?);
            continue;
        }
        // Counted in uncompressed bytes, whose total the manifest does not give.
        progress.begin(&format!("layer {}/{}", i + 1, image.layers.len()), None);
        let dir = store.ensure_layer_extracted(&layer.diff_id, |tmp| {
            let mut tar = store.open_layer(layer)?;
            let r = extract_layer(Counted::new(&mut tar, progress), tmp, &opts);
            match r {
                Ok(_) => tar.finish(),
                Err(e) => match tar.finish() {
                    Err(mismatch @ ImageError::DigestMismatch { .. }) => Err(mismatch),
                    _ => Err(e),
                },
            }
        });
        progress.end();
        dirs.push(dir?);
    }
    dirs.reverse();
    Ok(dirs)
}

/// The directory of a container's upper layer.
pub fn container_upper(store: &Store, name: &str) -> ImageResult<PathBuf> {
    Ok(store.container_dir(name)?.join("upper"))
}

/// Writes the flattened tree of `source` as a tar to `out`.
pub fn export(
    store: Option<&Store>,
    source: &Source,
    out: impl Write,
    opts: &LayerOptions,
    progress: &dyn Progress,
) -> ImageResult<FlattenStats> {
    let need_store =
        || store.ok_or_else(|| ImageError::Invalid("exporting an image needs the store".into()));
    let layers = match source {
        Source::Image(image) => image_lowers(need_store()?, image, progress)?,
        Source::Container(name, image) => {
            let store = need_store()?;
            let upper = container_upper(store, name)?;
            if !upper.is_dir() {
                return Err(ImageError::Invalid(format!(
                    "container {name}: no upper layer at {}; export its mountpoint instead",
                    upper.display()
                )));
            }
            let mut layers = vec![upper];
            layers.extend(image_lowers(store, image, progress)?);
            layers
        }
        Source::Directory(dir) => {
            if !dir.is_dir() {
                return Err(ImageError::Invalid(format!(
                    "{}: not a directory",
                    dir.display()
                )));
            }
            vec![dir.clone()]
        }
        Source::Layers(dirs) => {
            if dirs.is_empty() {
                return Err(ImageError::Invalid("no layer directories to export".into()));
            }
            if let Some(bad) = dirs.iter().find(|d| !d.is_dir()) {
                return Err(ImageError::Invalid(format!(
                    "{}: not a directory",
                    bad.display()
                )));
            }
            dirs.clone()
        }
    };
    progress.begin("exporting", None);
    let stats = write_flattened(&layers, Counted::new(out, progress), opts);
    progress.end();
    stats
}
