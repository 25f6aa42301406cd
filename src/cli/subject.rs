//! What `diff`, `commit` and `rm` accept as their subject: a container name (or unique
//! prefix), a mount point, or `--upper DIR --lower A:B`.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;

use crate::container::{self, Target};
use crate::image::store::Store;

/// The store, if `root` already holds one (commands that only read never create one).
pub(super) fn existing_store(root: &Path) -> Result<Option<Store>> {
    if root.join("oci-layout").is_file() {
        Ok(Some(Store::open(root)?))
    } else {
        Ok(None)
    }
}

/// Resolves a positional CONTAINER|MOUNTPOINT: a word without '/' that names a container
/// is the container; anything else must be a ufsd mount point.
pub(super) fn resolve(arg: &str, store: Option<&Store>) -> Result<Target> {
    if !container::looks_like_path(arg)
        && let Some(s) = store
    {
        match container::find(s, arg) {
            Ok(c) => return Ok(Target::container(s, c)?),
            Err(container::ContainerError::NoSuchContainer(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !Path::new(arg).is_dir() {
        bail!("{arg}: no such container, and not a directory (a ufsd mount point)");
    }
    Ok(Target::mount(Path::new(arg), store)?)
}

/// The `--upper DIR --lower A:B` form of `diff`, `commit` and `export`: offline layer
/// directories instead of a container, mount point or image.
#[derive(Debug, Args)]
pub struct LayerDirArgs {
    /// An upper layer directory, read over --lower (instead of a container, mount point
    /// or image).
    #[arg(long, value_name = "DIR")]
    pub upper: Option<PathBuf>,
    /// The lower layers under --upper, top-most first, separated by ':'.
    #[arg(long, value_name = "DIR[:DIR...]", requires = "upper")]
    pub lower: Option<PathBuf>,
}

impl LayerDirArgs {
    /// The layers named, upper first; `None` without `--upper`.
    pub fn target(&self) -> Option<Target> {
        Some(Target {
            upper: self.upper.clone()?,
            lowers: self
                .lower
                .as_deref()
                .map(super::mount::split_lowers)
                .unwrap_or_default(),
            live: None,
            container: None,
        })
    }
}
