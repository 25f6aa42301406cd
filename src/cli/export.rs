//! `ufsd export IMAGE|CONTAINER|DIR [-o FILE]`: a flattened tree as one tar.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::output::Output;
use super::progress;
use super::subject::LayerDirArgs;
use crate::image::layer::LayerOptions;
use crate::image::store::Store;
use crate::image::transfer::export::{Source, export};

/// Export a flattened tree as a tar (like docker export).
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    ufsd export base:latest -o base.tar\n  \
    ufsd export /mnt/rw | tar -t\n  \
    ufsd export web > web.tar         # a container: its upper layer over its image\n  \
    ufsd export --upper /srv/up --lower /srv/l2:/srv/l1 -o merged.tar   # no mount needed\n\n\
    An argument that contains '/' and is a directory is read as it is (a ufsd mount or\n\
    any tree); otherwise a container of that name, then an image, then a directory.\n\
    Images are exported offline from their extracted layers; no mount is made. The tar\n\
    goes to FILE (written whole, then renamed into place) or to standard output, never\n\
    to a terminal.")]
pub struct ExportArgs {
    /// An image (NAME[:TAG], id), a container name, or a directory.
    #[arg(
        value_name = "IMAGE|CONTAINER|DIR",
        required_unless_present = "upper",
        conflicts_with_all = ["upper", "lower"]
    )]
    source: Option<String>,
    #[command(flatten)]
    dirs: LayerDirArgs,
    /// Write to FILE instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

/// What `arg` names: a path with '/' that is a directory, else a container, else an
/// image, else a directory of that name.
fn source_of(store: &Store, arg: &str) -> Result<Source> {
    let as_dir = Path::new(arg);
    if (arg.contains('/') || arg == ".") && as_dir.is_dir() {
        return Ok(Source::Directory(as_dir.to_path_buf()));
    }
    if let Ok(records) = store.container_records()
        && let Some(r) = records.into_iter().find(|r| r.name == arg)
    {
        let image = store.resolve(&r.image)?;
        return Ok(Source::Container(r.name, image));
    }
    match store.resolve(arg) {
        Ok(image) => Ok(Source::Image(image)),
        Err(_) if as_dir.is_dir() => Ok(Source::Directory(as_dir.to_path_buf())),
        Err(e) => Err(e.into()),
    }
}

pub fn run(root: &Path, a: ExportArgs) -> Result<ExitCode> {
    // Layer directories need no store (and must not create one).
    let (store, source) = match (&a.source, a.dirs.target()) {
        (Some(s), _) => {
            let store = Store::open(root)?;
            let source = source_of(&store, s)?;
            (Some(store), source)
        }
        (None, Some(dirs)) => {
            let layers = std::iter::once(dirs.upper).chain(dirs.lowers).collect();
            (None, Source::Layers(layers))
        }
        (None, None) => anyhow::bail!("give an image, a container, a directory or --upper"),
    };
    let mut out = Output::open(a.output.as_deref())?;
    let bar = progress::for_stderr();
    let stats = export(
        store.as_ref(),
        &source,
        out.writer(),
        &LayerOptions::from_env()?,
        bar.as_ref(),
    )?;
    out.commit()?;
    for s in &stats.skipped_sockets {
        eprintln!(
            "ufsd: warning: skipped socket {} (a tar cannot hold one)",
            s.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
