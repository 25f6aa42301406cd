//! What `diff`, `commit` and `rm` accept as their subject: a container name (or unique
//! prefix), a mount point, or `--upper DIR --lower A:B`.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

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

/// The `--upper DIR --lower A:B` form: offline layer directories.
pub(super) fn from_dirs(upper: PathBuf, lower: Option<&Path>) -> Target {
    Target {
        upper,
        lowers: lower.map(super::mount::split_lowers).unwrap_or_default(),
        live: None,
        container: None,
    }
}
