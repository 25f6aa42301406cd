//! What `explain` and `layers` work on: a stack of layer directories found from what the
//! user named — a path inside a mount, an image, a container, or `--upper`/`--lower`.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::image::layerset::LayerSet;
use crate::image::store::Store;
use crate::mount::{self, mountinfo};

/// Where a stack came from, for the headline.
pub struct Found {
    pub set: LayerSet,
    /// "mount /mnt/x", "image app:v1", ...
    pub source: String,
}

/// The layers of the ufsd or kernel overlayfs mount at `mountpoint` (canonical).
fn mount_layers(mountpoint: &Path, fs_type: &str, super_options: &str) -> Result<LayerSet> {
    match fs_type {
        "fuse.ufsd" => {
            let Some(rec) = mount::mount_record(mountpoint) else {
                bail!(
                    "{}: no ufsd daemon is recorded for this mount point (mounted by another \
                     user?); use --upper and --lower for layer directories",
                    mountpoint.display()
                );
            };
            Ok(LayerSet::from_dirs(rec.upper.as_deref(), &rec.lowers))
        }
        "overlay" => {
            let (upper, lowers) = mountinfo::overlay_dirs(super_options);
            if lowers.is_empty() {
                bail!(
                    "{}: the overlay mount's options name no lower layers",
                    mountpoint.display()
                );
            }
            Ok(LayerSet::from_dirs(upper.as_deref(), &lowers))
        }
        other => bail!(
            "{} is a {other} mount, not a ufsd or overlay mount",
            mountpoint.display()
        ),
    }
}

/// A path inside a union mount.
pub struct MountPath {
    pub mount: mountinfo::MountEntry,
    /// The path inside the mount (`/` for the mount point itself).
    pub inner: Vec<u8>,
}

/// Splits a path into the innermost union mount holding it and the path inside that mount. Symlinks are resolved up to the mount point but
/// never inside it (an absolute symlink in the merged view would lead out of it).
pub fn split_mount_path(path: &Path) -> Result<Option<MountPath>> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .context("the current directory")?
            .join(path)
    };
    let mounts = mountinfo::read();
    let union = |t: &str| t == "fuse.ufsd" || t == "overlay";
    // The union mount we are in and the path inside it so far.
    let mut inside: Option<(mountinfo::MountEntry, Vec<u8>)> = None;
    let mut cur = PathBuf::from("/");
    let enter = |cur: &Path, inside: &mut Option<(mountinfo::MountEntry, Vec<u8>)>| {
        if let Some(m) = mounts.iter().rev().find(|m| m.mount_point == cur) {
            *inside = union(&m.fs_type).then(|| (m.clone(), Vec::new()));
        }
    };
    enter(&cur, &mut inside);
    for c in abs.components() {
        let name = match c {
            Component::Normal(n) => n,
            Component::ParentDir => OsStr::new(".."),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => continue,
        };
        match &mut inside {
            Some((_, rest)) => {
                rest.push(b'/');
                rest.extend_from_slice(name.as_bytes());
                cur.push(name);
            }
            None => {
                let next = cur.join(name);
                cur =
                    std::fs::canonicalize(&next).with_context(|| format!("{}", next.display()))?;
            }
        }
        enter(&cur, &mut inside);
    }
    Ok(inside.map(|(mount, rest)| MountPath {
        mount,
        inner: if rest.is_empty() { b"/".to_vec() } else { rest },
    }))
}

/// The stack of the mount holding `path`, and the path inside it.
pub fn from_mount_path(path: &Path) -> Result<(Found, Vec<u8>)> {
    let Some(MountPath { mount: m, inner }) = split_mount_path(path)? else {
        bail!(
            "{}: not inside a ufsd or overlay mount; name an image or container before the \
             path, or give --upper/--lower",
            path.display()
        );
    };
    let set = mount_layers(&m.mount_point, &m.fs_type, &m.super_options)?;
    Ok((
        Found {
            set,
            source: format!("mount {}", m.mount_point.display()),
        },
        inner,
    ))
}

/// The stack named by `name`: a mount point, a container of the store, or an image.
pub fn from_name(name: &OsStr, root: impl FnOnce() -> Result<PathBuf>) -> Result<Found> {
    let as_path = Path::new(name);
    if as_path.is_dir()
        && let Some(MountPath { mount: m, inner }) = split_mount_path(as_path)?
        && inner == b"/"
    {
        return Ok(Found {
            set: mount_layers(&m.mount_point, &m.fs_type, &m.super_options)?,
            source: format!("mount {}", m.mount_point.display()),
        });
    }
    let Some(name) = name.to_str() else {
        bail!(
            "{}: not a mount point, image or container",
            as_path.display()
        );
    };
    let store = Store::open(&root()?)?;
    if let Some(rec) = store
        .container_records()?
        .into_iter()
        .find(|r| r.name == name)
    {
        // docs/store.md: a container's upper directory sits beside its container.json.
        let upper = store.container_dir(name)?.join("upper");
        if !upper.is_dir() {
            bail!(
                "container {name}: its upper layer is not at {} (explain its mount point \
                 instead: ufsd explain MOUNTPOINT/PATH)",
                upper.display()
            );
        }
        let image = store.resolve(&rec.image)?;
        return Ok(Found {
            set: LayerSet::from_image(&store, &image)?.with_upper(&upper),
            source: format!("container {name}"),
        });
    }
    let image = store.resolve(name)?;
    let shown = image
        .refs
        .first()
        .cloned()
        .unwrap_or_else(|| image.id.short().to_string());
    Ok(Found {
        set: LayerSet::from_image(&store, &image)?,
        source: format!("image {shown}"),
    })
}

/// The stack of `--upper`/`--lower` directories.
pub fn from_dirs(upper: Option<&Path>, lower: Option<&Path>) -> Result<Found> {
    let lowers = lower.map(super::mount::split_lowers).unwrap_or_default();
    if upper.is_none() && lowers.is_empty() {
        bail!("give --lower (and optionally --upper) layer directories");
    }
    Ok(Found {
        set: LayerSet::from_dirs(upper, &lowers),
        source: "layer directories".to_string(),
    })
}
