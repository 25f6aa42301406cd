//! Images: what the upper layer changed (`diff`), OCI layer tarballs (`layer`), and the
//! content-addressed image store (`store`) with its image names (`reference`). Everything
//! here works on directories and files; nothing needs a mount.
//!
//! - [`diff`]: `docker diff`'s A/C/D list of an upper layer against its lower layers;
//! - [`layer`]: an upper layer as a deterministic OCI layer tar, and an OCI layer tar
//!   extracted into an empty directory in overlayfs format;
//! - `lower` and `upper` (private): reading the lower layers' merged view one directory at
//!   a time, and reading an upper layer directory, both fd-relative through [`crate::sys`];
//! - [`layerset`], [`explain`], [`analysis`]: a stack of layers described for people, why
//!   the merged view shows what it shows at one path, and what each layer adds, changes,
//!   removes and wastes (`ufsd explain`, `ufsd layers`);
//! - [`store`]: the OCI image layout on disk, with [`reference`] names and [`rfc3339`] times.

pub mod changes;
pub mod commit;
pub mod reference;
pub mod rfc3339;
pub mod store;

use std::path::PathBuf;

use thiserror::Error;

use crate::sys::Errno;

pub mod analysis;
pub mod diff;
pub mod explain;
pub mod layer;
pub mod layerset;
mod lower;
pub mod transfer;
mod upper;

/// An error of an offline image operation, naming what it was doing and on which path.
#[derive(Debug, Error)]
pub enum ImageError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    /// A name the user typed that is not a valid image reference.
    #[error("invalid reference {input:?}: {reason}")]
    InvalidReference { input: String, reason: String },
    /// A name, tag, digest or id that matches no image in the store.
    #[error("no such image: {0}")]
    NoSuchImage(String),
    /// A blob the store refers to is absent.
    #[error("blob {digest} is missing ({path})")]
    MissingBlob { digest: String, path: PathBuf },
    /// A blob (or a layer's uncompressed content) that does not hash to its digest.
    #[error("{what} {digest} is corrupt: its content hashes to {actual} ({path})")]
    DigestMismatch {
        what: &'static str,
        digest: String,
        actual: String,
        path: PathBuf,
    },
    /// A request refused because of the store's state (in use, ambiguous, ...).
    #[error("{0}")]
    Conflict(String),
    /// A file of an upper layer changed while it was being read into a layer (a live
    /// mount writing through FUSE passthrough); reading again may succeed.
    #[error("{0}: changed while it was being read")]
    ChangedWhileRead(PathBuf),
}

impl ImageError {
    /// Wraps an io error with the operation and path it happened on.
    pub fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io { op, path, source }
    }

    /// An errno from [`crate::sys`], with the operation and path it happened on.
    pub fn sys(op: &'static str, path: impl Into<PathBuf>, errno: Errno) -> ImageError {
        ImageError::Io {
            op,
            path: path.into(),
            source: std::io::Error::from(errno),
        }
    }
}

pub type ImageResult<T> = Result<T, ImageError>;

/// `base` joined with a relative path given as bytes (the empty path is `base` itself),
/// for error messages.
pub(crate) fn join_rel(base: &std::path::Path, rel: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    if rel.is_empty() {
        base.to_path_buf()
    } else {
        base.join(std::ffi::OsStr::from_bytes(rel))
    }
}

/// `parent/name` as relative path bytes (`name` alone when `parent` is the root).
pub(crate) fn child_rel(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(parent.len() + 1 + name.len());
    v.extend_from_slice(parent);
    if !parent.is_empty() {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}
