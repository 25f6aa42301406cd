//! Images: what the upper layer changed (`diff`), OCI layer tarballs (`layer`), and the
//! content-addressed image store (`store`) with its image names (`reference`). Everything
//! here works on directories and files; nothing needs a mount.

pub mod reference;
pub mod rfc3339;
pub mod store;

use std::path::PathBuf;

use thiserror::Error;

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
}

pub type ImageResult<T> = Result<T, ImageError>;
