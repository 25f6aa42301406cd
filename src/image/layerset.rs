//! A stack of layer directories described for people: what `ufsd explain` and `ufsd layers`
//! work on, whatever the stack came from (a mount's record, an image of the store, a
//! container, or directories given by hand).
//!
//! Layers are kept top-down (index 0 is the top-most, the writable upper layer when there
//! is one), as everywhere in ufsd. People see them numbered the other way, as docker and
//! dive do: the bottom-most layer is "layer 1", and the upper layer is "upper".

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use oci_spec::image::ImageConfiguration;
use serde::Serialize;

use super::ImageResult;
use super::layer::{ExtractOptions, extract_layer};
use super::store::{Image, Store};

/// One layer of a [`LayerSet`].
#[derive(Clone, Debug, Serialize)]
pub struct NamedLayer {
    /// What people call it: `upper`, or `layer N` counted from the bottom (1-based).
    pub name: String,
    /// The layer directory.
    pub path: PathBuf,
    /// The writable upper layer of a mount or container.
    pub writable: bool,
    /// The digest of the layer's tar (`sha256:...`), when known: an image layer, or a
    /// directory under a store's `layers/`.
    pub diff_id: Option<String>,
    /// Size of the layer's blob as stored (compressed), for an image layer.
    pub blob_size: Option<u64>,
    /// The image history entry that made this layer.
    pub created_by: Option<String>,
    pub comment: Option<String>,
}

impl NamedLayer {
    /// The name with the short id when there is one: `layer 2 (1a2b3c4d5e6f)`.
    pub fn title(&self) -> String {
        match self.short_id() {
            Some(id) => format!("{} ({id})", self.name),
            None => self.name.clone(),
        }
    }

    /// The first 12 hex digits of the diff_id.
    pub fn short_id(&self) -> Option<&str> {
        let hex = self.diff_id.as_deref()?.trim_start_matches("sha256:");
        Some(&hex[..hex.len().min(12)])
    }
}

/// Layers top-down; at most the first one is writable.
#[derive(Clone, Debug, Serialize)]
pub struct LayerSet {
    pub layers: Vec<NamedLayer>,
}

impl LayerSet {
    /// An upper layer (optional) over lower layers given top-most first.
    pub fn from_dirs(upper: Option<&Path>, lowers: &[PathBuf]) -> LayerSet {
        let n = lowers.len();
        let mut layers: Vec<NamedLayer> = upper.into_iter().map(upper_layer).collect();
        layers.extend(lowers.iter().enumerate().map(|(i, p)| NamedLayer {
            name: format!("layer {}", n - i),
            path: p.clone(),
            writable: false,
            diff_id: store_layer_id(p),
            blob_size: None,
            created_by: None,
            comment: None,
        }));
        LayerSet { layers }
    }

    /// The layers of a store image (extracted first if they are not yet), described with
    /// their diff_ids, blob sizes and history entries.
    pub fn from_image(store: &Store, image: &Image) -> ImageResult<LayerSet> {
        let opts = ExtractOptions::default();
        let dirs = store
            .ensure_image_layers(image, |tar, dir| extract_layer(tar, dir, &opts).map(|_| ()))?;
        let history = layer_history(&image.config, image.layers.len());
        let mut layers: Vec<NamedLayer> = image
            .layers
            .iter()
            .zip(dirs)
            .zip(history)
            .enumerate()
            .map(|(i, ((l, dir), h))| NamedLayer {
                name: format!("layer {}", i + 1),
                path: dir,
                writable: false,
                diff_id: Some(l.diff_id.to_string()),
                blob_size: Some(l.blob.size()),
                created_by: h.as_ref().and_then(|h| h.0.clone()),
                comment: h.and_then(|h| h.1),
            })
            .collect();
        layers.reverse();
        Ok(LayerSet { layers })
    }

    /// This set with a writable upper layer on top (a container's).
    pub fn with_upper(mut self, upper: &Path) -> LayerSet {
        self.layers.insert(0, upper_layer(upper));
        self
    }

    /// The index of the writable layer, if there is one.
    pub fn upper(&self) -> Option<usize> {
        self.layers.first().filter(|l| l.writable).map(|_| 0)
    }

    /// The directories top-down without the upper layer.
    pub fn lower_paths(&self) -> Vec<PathBuf> {
        self.layers
            .iter()
            .filter(|l| !l.writable)
            .map(|l| l.path.clone())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.layers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }
}

fn upper_layer(upper: &Path) -> NamedLayer {
    NamedLayer {
        name: "upper".to_string(),
        path: upper.to_path_buf(),
        writable: true,
        diff_id: None,
        blob_size: None,
        created_by: None,
        comment: None,
    }
}

/// `sha256:HEX` when `dir` is a store's extracted layer (`.../layers/<64 hex>`).
fn store_layer_id(dir: &Path) -> Option<String> {
    let name = dir.file_name()?.to_str()?;
    let parent = dir.parent()?.file_name()?;
    let hex = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
    (hex && parent == OsStr::new("layers")).then(|| format!("sha256:{name}"))
}

/// The (created_by, comment) of the history entry that made each layer, bottom first.
/// History entries marked `empty_layer` (ENV, CMD, ...) made no layer and are skipped;
/// layers the history does not reach get `None`.
pub fn layer_history(
    config: &ImageConfiguration,
    layers: usize,
) -> Vec<Option<(Option<String>, Option<String>)>> {
    let mut out: Vec<_> = config
        .history()
        .iter()
        .flatten()
        .filter(|h| !h.empty_layer().unwrap_or(false))
        .map(|h| Some((h.created_by().clone(), h.comment().clone())))
        .take(layers)
        .collect();
    out.resize(layers, None);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::{HistoryBuilder, ImageConfigurationBuilder};

    #[test]
    fn history_skips_empty_layers() {
        let h = |by: &str, empty: bool| {
            HistoryBuilder::default()
                .created_by(by.to_string())
                .empty_layer(empty)
                .build()
                .unwrap()
        };
        let cfg = ImageConfigurationBuilder::default()
            .history(vec![
                h("ADD rootfs", false),
                h("ENV A=1", true),
                h("RUN install", false),
                h("CMD sh", true),
            ])
            .build()
            .unwrap();
        let got = layer_history(&cfg, 3);
        let by: Vec<Option<String>> = got.iter().map(|e| e.clone().and_then(|e| e.0)).collect();
        assert_eq!(
            by,
            vec![Some("ADD rootfs".into()), Some("RUN install".into()), None]
        );
        assert_eq!(layer_history(&cfg, 1).len(), 1);
    }

    #[test]
    fn names_count_from_the_bottom() {
        let hex = "a".repeat(64);
        let set = LayerSet::from_dirs(
            Some(Path::new("/u")),
            &[
                PathBuf::from(format!("/s/layers/{hex}")),
                PathBuf::from("/l1"),
            ],
        );
        let names: Vec<&str> = set.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, vec!["upper", "layer 2", "layer 1"]);
        assert_eq!(set.upper(), Some(0));
        assert_eq!(set.layers[1].short_id(), Some("aaaaaaaaaaaa"));
        assert_eq!(set.layers[2].diff_id, None);
        assert_eq!(set.lower_paths().len(), 2);
    }
}
