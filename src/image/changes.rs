//! Dockerfile-style config changes (`-c 'ENV A=b'`) applied to an image config.
//!
//! Placeholder on the transfer branch: the real parser comes from the containers work and
//! replaces this file at merge. Until then any change is refused with a clear error, so
//! `ufsd import -c ...` never silently ignores one.

use oci_spec::image::ImageConfiguration;

use super::ImageError;

/// Applies `changes` (Dockerfile instructions) to `config`.
pub fn apply_changes(
    config: &mut ImageConfiguration,
    changes: &[String],
) -> Result<(), ImageError> {
    let _ = config;
    match changes.first() {
        None => Ok(()),
        Some(c) => Err(ImageError::Invalid(format!(
            "-c {c:?}: config changes are not supported yet"
        ))),
    }
}
