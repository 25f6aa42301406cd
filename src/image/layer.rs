//! OCI layer tarballs (docs/layers.md has the format rules and the reasons for them).
//!
//! - [`write_layer`] turns an upper layer into an uncompressed OCI layer tar: sorted,
//!   normalised, the same bytes for the same upper layer every time; the caller hashes and
//!   compresses the stream.
//! - [`extract_layer`] writes an OCI layer tar into an empty directory in overlayfs
//!   format, confined to that directory; the caller creates the directory as a temporary
//!   and renames it into place, so a failed extraction leaves nothing half-visible.
//!
//! - [`write_flattened`] writes the merged view of a stack of layer directories (or one
//!   plain directory) as a single tar, as `docker export` does.
//!
//! [`LayerGzEncoder`] compresses a layer blob, storing what does not compress.
//!
//! `header` builds tar headers and PAX records; `path` checks the paths of an archive.

mod extract;
mod flatten;
mod gzip;
mod header;
mod path;
mod write;

pub use extract::{ExtractOptions, ExtractStats, Skipped, extract_layer, extract_layer_limited};
pub use flatten::{FlattenStats, write_flattened};
pub use gzip::LayerGzEncoder;
pub use write::{LayerOptions, LayerStats, write_layer};
