//! `ufsd save IMAGE... -o DIR|FILE.tar`: images as an OCI image layout.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::output::Output;
use super::progress;
use crate::image::store::Store;
use crate::image::transfer::save::{plan, save_dir, save_tar};

/// Save images as an OCI image layout (a directory, or a tar of one).
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    ufsd save base:latest -o /tmp/base-oci          # a directory\n  \
    ufsd save base:latest app:v1 -o images.tar      # a tar of the layout\n  \
    skopeo inspect oci:/tmp/base-oci:base:latest\n\n\
    index.json names each image by its full NAME:TAG (org.opencontainers.image.ref.name);\n\
    a tag saves that tag, an id saves all the image's tags. Blobs are copied as stored and\n\
    checked on the way, so image ids stay the same. A directory must be new or empty; a\n\
    FILE ending in .tar (or standard output, never a terminal) gets the layout as a tar,\n\
    with a docker-style manifest.json too.")]
pub struct SaveArgs {
    /// The images: NAME[:TAG], NAME@sha256:DIGEST or id.
    #[arg(required = true)]
    images: Vec<String>,
    /// A new directory, or FILE.tar; standard output (as a tar) when absent.
    #[arg(short, long, value_name = "DIR|FILE.tar")]
    output: Option<PathBuf>,
}

pub fn run(root: &Path, a: SaveArgs) -> Result<ExitCode> {
    let store = Store::open(root)?;
    let items = plan(&store, &a.images)?;
    let bar = progress::for_stderr();
    let as_tar = match &a.output {
        None => true,
        Some(p) => p.as_os_str() == "-" || p.extension().is_some_and(|e| e == "tar"),
    };
    if as_tar {
        let mut out = Output::open(a.output.as_deref())?;
        save_tar(&store, &items, out.writer(), bar.as_ref())?;
        out.commit()?;
    } else if let Some(dir) = &a.output {
        save_dir(&store, &items, dir, bar.as_ref())?;
    }
    Ok(ExitCode::SUCCESS)
}
