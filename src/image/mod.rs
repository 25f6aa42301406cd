//! Images: what the upper layer changed (`diff`), OCI layer tarballs (`layer`), and the
//! content-addressed image store (`store`). Everything here works on directories and
//! files; nothing needs a mount.

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
