//! ufsd: a userspace union filesystem.
//!
//! - [`layer`]: union rules as pure functions, and the layer stack on disk;
//! - [`fs`]: the merged view as methods returning values (no FUSE);
//! - [`fuse`]: the thin adapter from fuser to [`fs`];
//! - [`image`]: diff, layer tarballs, the image store, commit;
//! - [`container`]: containers (an image's layers plus an upper of their own), commit of a
//!   container or live mount;
//! - [`mount`]: checking a mount request, the daemon's life, unmounting;
//! - [`cli`]: the command line;
//! - [`sys`]: every syscall and `unsafe` block.

pub mod cli;
pub mod container;
pub mod fs;
pub mod fuse;
pub mod image;
pub mod layer;
pub mod mount;
pub mod sys;
