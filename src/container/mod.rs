//! Containers: an image's extracted layers as lowers, plus an upper and a work directory of
//! the container's own inside the store (docs/containers.md).
//!
//! ```text
//! ROOT/containers/<name>/
//! ├── container.json   the record: name, image id, image name, created, last mount point
//! ├── upper/           the container's writable layer (overlayfs format)
//! ├── work/            the mount's work directory
//! └── lock             held (flock) by the daemon serving the container while it runs
//! ```
//!
//! The record is written after the upper and work directories (so a recorded container
//! always has them) and before the image's layers are extracted, so no `rmi` can delete
//! the image in between. "Mounted" means a daemon holds `lock`; the daemon takes it before
//! mounting, so one upper layer is never served by two daemons.
//!
//! Commands that take a container also take a mount point (any ufsd mount, found through
//! its daemon's record) or explicit layer directories: [`Target`] resolves all three.

pub mod commit;

use std::fs;
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::image::layer::{ExtractOptions, extract_layer};
use crate::image::store::{ContainerRecord, Image, Store};
use crate::image::{ImageError, rfc3339};
use crate::mount::{self, MountError, MountRecord};
use crate::sys::lock::{FileLock, LockKind};

/// Why a container operation failed.
#[derive(Debug, Error)]
pub enum ContainerError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error(transparent)]
    Control(#[from] mount::control::ControlError),
    #[error("no such container: {0}")]
    NoSuchContainer(String),
    #[error("container name prefix {0} is ambiguous: it matches {1}")]
    Ambiguous(String, String),
    #[error("{0}")]
    Refused(String),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

pub type ContainerResult<T> = Result<T, ContainerError>;

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ContainerError {
    let path = path.to_path_buf();
    move |source| ContainerError::Io { op, path, source }
}

/// A container of the store.
#[derive(Clone, Debug)]
pub struct Container {
    pub record: ContainerRecord,
    pub dir: PathBuf,
}

impl Container {
    pub fn name(&self) -> &str {
        &self.record.name
    }

    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }

    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }

    /// The lock a daemon holds while it serves the container.
    pub fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }

    /// Where it was last mounted.
    pub fn mountpoint(&self) -> Option<PathBuf> {
        self.record.mountpoint.as_ref().map(PathBuf::from)
    }

    /// Whether a daemon serves it now.
    pub fn is_mounted(&self) -> bool {
        matches!(
            FileLock::try_lock(&self.lock_path(), LockKind::Shared),
            Ok(None)
        )
    }

    /// The mount point it is mounted on now, if it is.
    pub fn live_mountpoint(&self) -> Option<PathBuf> {
        if self.is_mounted() {
            self.mountpoint()
        } else {
            None
        }
    }
}

/// A fresh container name: 12 random hex digits, like a short docker id.
fn new_name() -> String {
    let mut bytes = [0u8; 6];
    let random = fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        // Not random, but unique enough for one store: time and pid.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes.copy_from_slice(&(t ^ u64::from(std::process::id()) << 40).to_le_bytes()[..6]);
    }
    hex::encode(bytes)
}

/// Creates a container of `image` (as the user named it): its directories, then the
/// record. The layers are not extracted here (see [`image_lowers`]).
pub fn create(
    store: &Store,
    image: &Image,
    image_name: &str,
    name: Option<&str>,
) -> ContainerResult<Container> {
    let name = name.map_or_else(new_name, str::to_string);
    let record = ContainerRecord {
        name: name.clone(),
        image: image.id.to_string(),
        created: Some(rfc3339::format(rfc3339::now())),
        image_name: Some(image_name.to_string()),
        mountpoint: None,
    };
    // The directories are made before the record is written, so that a crash never
    // leaves a recorded container without them.
    store.create_container_record_with(&record, |dir| {
        // The upper's root is the merged root's upper copy; 0755 as a fresh rootfs has.
        for (d, mode) in [("upper", 0o755), ("work", 0o700)] {
            let d = dir.join(d);
            fs::DirBuilder::new()
                .mode(mode)
                .create(&d)
                .and_then(|()| {
                    fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(mode))
                })
                .map_err(ImageError::io("create", &d))?;
        }
        Ok(())
    })?;
    let dir = store.container_dir(&name)?;
    Ok(Container { record, dir })
}

/// The image's layer directories, top-most first (as `lowerdir=` lists them), extracting
/// any that are not yet. An image without layers gets the container's empty directory.
pub fn image_lowers(store: &Store, image: &Image, c: &Container) -> ContainerResult<Vec<PathBuf>> {
    image_lowers_with_progress(store, image, c, &|_| {})
}

/// [`image_lowers`], calling `progress` with the tar bytes extracted so far.
pub fn image_lowers_with_progress(
    store: &Store,
    image: &Image,
    c: &Container,
    progress: &dyn Fn(u64),
) -> ContainerResult<Vec<PathBuf>> {
    let opts = ExtractOptions::default();
    let mut total = 0u64;
    let mut lowers = store.ensure_image_layers(image, |tar, dir| {
        let counted = Counting {
            inner: tar,
            total: &mut total,
            progress,
        };
        extract_layer(counted, dir, &opts).map(drop)
    })?;
    lowers.reverse();
    if lowers.is_empty() {
        let empty = c.dir.join("empty");
        if !empty.is_dir() {
            fs::create_dir(&empty).map_err(io_err("create", &empty))?;
        }
        lowers.push(empty);
    }
    Ok(lowers)
}

/// A reader that reports how much has passed through it.
struct Counting<'a, R> {
    inner: R,
    total: &'a mut u64,
    progress: &'a dyn Fn(u64),
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        *self.total += n as u64;
        (self.progress)(*self.total);
        Ok(n)
    }
}

/// The container `input` names: its full name, or a unique prefix of one.
pub fn find(store: &Store, input: &str) -> ContainerResult<Container> {
    let all = list(store)?;
    if let Some(c) = all.iter().find(|c| c.name() == input) {
        return Ok(c.clone());
    }
    let matches: Vec<&Container> = all.iter().filter(|c| c.name().starts_with(input)).collect();
    match matches.as_slice() {
        [one] if !input.is_empty() => Ok((*one).clone()),
        [] | [_] => Err(ContainerError::NoSuchContainer(input.to_string())),
        many => Err(ContainerError::Ambiguous(
            input.to_string(),
            many.iter().map(|c| c.name()).collect::<Vec<_>>().join(", "),
        )),
    }
}

/// Every container, sorted by name.
pub fn list(store: &Store) -> ContainerResult<Vec<Container>> {
    store
        .container_records()?
        .into_iter()
        .map(|record| {
            let dir = store.container_dir(&record.name)?;
            Ok(Container { record, dir })
        })
        .collect()
}

/// Records where the container is mounted now.
pub fn set_mountpoint(store: &Store, c: &mut Container, mountpoint: &Path) -> ContainerResult<()> {
    let Some(m) = mountpoint.to_str() else {
        return Err(ContainerError::Refused(format!(
            "mount point {} is not UTF-8; a container's mount point must be",
            mountpoint.display()
        )));
    };
    c.record.mountpoint = Some(m.to_string());
    store.update_container_record(&c.record)?;
    Ok(())
}

/// Removes a container: refused while it is mounted unless `force`, which unmounts it first.
pub fn remove(store: &Store, c: &Container, force: bool) -> ContainerResult<()> {
    if c.is_mounted() {
        let at = c.mountpoint().unwrap_or_default();
        if !force {
            return Err(ContainerError::Refused(format!(
                "container {} is mounted at {}; unmount it first (ufsd umount {}) or use rm -f",
                c.name(),
                at.display(),
                at.display()
            )));
        }
        match mount::unmount(&at, false) {
            Ok(()) => {}
            // Unmounted already (umount(8) does not wait for the daemon): it is on its way
            // out and releases the lock as it exits.
            Err(MountError::NotMounted(_)) => wait_for_daemon_exit(c),
            Err(e) => return Err(e.into()),
        }
        if c.is_mounted() {
            return Err(ContainerError::Refused(format!(
                "container {}: its daemon still runs after the unmount of {}",
                c.name(),
                at.display()
            )));
        }
    }
    store.remove_container_record(c.name())?;
    Ok(())
}

/// Gives the daemon of a container whose mount is gone a few seconds to exit.
fn wait_for_daemon_exit(c: &Container) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while c.is_mounted() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// What a command works on: an upper layer over lower layers, and where it came from.
#[derive(Clone, Debug)]
pub struct Target {
    pub upper: PathBuf,
    /// Top-most first.
    pub lowers: Vec<PathBuf>,
    /// A mount point whose daemon serves this upper now.
    pub live: Option<PathBuf>,
    /// The container, when the upper is one.
    pub container: Option<Container>,
}

/// Whether a command-line argument should be read as a path rather than a container name.
pub fn looks_like_path(arg: &str) -> bool {
    arg.contains('/') || arg == "." || arg == ".."
}

impl Target {
    /// A container of the store, with its image's layers as lowers.
    pub fn container(store: &Store, c: Container) -> ContainerResult<Target> {
        let image = store.resolve(&c.record.image)?;
        let lowers = image_lowers(store, &image, &c)?;
        Ok(Target {
            upper: c.upper(),
            lowers,
            live: c.live_mountpoint(),
            container: Some(c),
        })
    }

    /// The ufsd mount at `mountpoint`, from its daemon's record; also finds the container
    /// it serves, if `store` is given and one of its containers has that upper layer.
    pub fn mount(mountpoint: &Path, store: Option<&Store>) -> ContainerResult<Target> {
        let canonical = fs::canonicalize(mountpoint).map_err(io_err("mount point", mountpoint))?;
        let rec: MountRecord = mount::mount_record(&canonical).ok_or_else(|| {
            ContainerError::Refused(format!(
                "{}: no ufsd daemon is recorded for this mount point (not a ufsd mount, or \
                 mounted by another user); use --upper and --lower for layer directories",
                canonical.display()
            ))
        })?;
        let Some(upper) = rec.upper else {
            return Err(ContainerError::Refused(format!(
                "{}: mounted without an upper layer, so nothing can have changed",
                canonical.display()
            )));
        };
        let container = match store {
            Some(s) => list(s)?
                .into_iter()
                .find(|c| fs::canonicalize(c.upper()).is_ok_and(|u| u == upper)),
            None => None,
        };
        Ok(Target {
            upper,
            lowers: rec.lowers,
            live: Some(canonical),
            container,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_fresh_hex() {
        let (a, b) = (new_name(), new_name());
        assert_eq!(a.len(), 12);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn paths_and_names() {
        assert!(looks_like_path("/mnt"));
        assert!(looks_like_path("./x"));
        assert!(looks_like_path("."));
        assert!(!looks_like_path("3f2a9c1b5e7d"));
        assert!(!looks_like_path("web"));
    }
}
