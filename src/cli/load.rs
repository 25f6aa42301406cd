//! `ufsd load DIR|FILE|-`: images from an OCI layout or a `docker save` archive.

use std::fs::File;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::import::parse_size;
use super::progress;
use crate::image::store::Store;
use crate::image::transfer::load::{LoadOptions, LoadSource, load};

/// Load images from an OCI image layout or a docker save archive.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    ufsd load /tmp/base-oci                 # an OCI layout directory\n  \
    ufsd load images.tar                    # a tar of one, or a docker save archive\n  \
    docker save busybox | ufsd load -\n\n\
    Tars may be gzip-compressed. Every manifest, config and layer is checked against its\n\
    digest (and every layer against its diff_id) before anything is written; on any error\n\
    the store is unchanged. Images keep their ids; index.json ref.names (or RepoTags)\n\
    become tags.")]
pub struct LoadArgs {
    /// An OCI layout directory, a tar file, or - for standard input (the default when
    /// standard input is not a terminal).
    input: Option<PathBuf>,
    /// Refuse a tar that expands to more than this many bytes (suffixes K, M, G, T);
    /// default: half the free space of the store's filesystem.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_size: Option<u64>,
}

pub fn run(root: &Path, a: LoadArgs) -> Result<ExitCode> {
    let source = match &a.input {
        Some(p) if p.as_os_str() != "-" && p.is_dir() => LoadSource::Dir(p.clone()),
        Some(p) if p.as_os_str() != "-" => {
            let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
            let len = f.metadata().ok().map(|m| m.len());
            LoadSource::Tar(Box::new(f), len)
        }
        _ => {
            if a.input.is_none() && std::io::stdin().is_terminal() {
                bail!("no input: give DIR, FILE or - (standard input is a terminal)");
            }
            LoadSource::Tar(Box::new(std::io::stdin().lock()), None)
        }
    };
    let store = Store::open(root)?;
    let bar = progress::for_stderr();
    let loaded = load(
        &store,
        source,
        &LoadOptions {
            max_bytes: a.max_size,
        },
        bar.as_ref(),
    )?;
    for l in loaded {
        if l.tags.is_empty() {
            println!("Loaded image ID: {}", l.id);
        }
        for t in l.tags {
            println!("Loaded image: {t}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
