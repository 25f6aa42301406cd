//! `ufsd commit`: a container, a mount or an upper directory as a new image.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use super::subject;
use crate::container::commit::commit_target;
use crate::image::commit::{CommitOptions, Compress};
use crate::image::layer::LayerOptions;
use crate::image::reference::Reference;
use crate::image::store::Store;

/// Create a new image from a container's changes.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    ufsd commit 3f2a9c1b5e7d app:v2\n  \
    ufsd commit -a 'Ann <ann@example.org>' -m 'add nginx' -c 'CMD [\"nginx\"]' /mnt/c app:v2\n  \
    ufsd commit --upper /srv/up --lower /srv/l2:/srv/l1 layer-only:v1\n\n\
    The upper layer becomes one layer (gzip) on top of the container's image, with a\n\
    config inheriting the image's; -c applies Dockerfile instructions: ENV, WORKDIR,\n\
    ENTRYPOINT, CMD, EXPOSE, VOLUME, LABEL, USER, STOPSIGNAL. When nothing changed, no\n\
    layer is added (history: empty_layer). A live mount is paused while its upper layer\n\
    is read and resumes afterwards. A mount that is not a container, and --upper, give\n\
    an image of that one layer without a parent. Prints the new image id.\n\
    SOURCE_DATE_EPOCH clamps file times and sets the created time.")]
pub struct CommitArgs {
    /// Author (e.g. "Ann <ann@example.org>").
    #[arg(short, long)]
    author: Option<String>,
    /// Commit message (the history comment).
    #[arg(short, long)]
    message: Option<String>,
    /// A Dockerfile instruction to apply to the config (repeatable).
    #[arg(short, long = "change", value_name = "INSTRUCTION")]
    change: Vec<String>,
    #[command(flatten)]
    dirs: subject::LayerDirArgs,
    /// Do not pause a live mount (the layer may then mix states of the files).
    #[arg(long)]
    no_pause: bool,
    /// Layer compression.
    #[arg(long, value_enum, default_value = "gzip")]
    compress: CompressArg,
    /// CONTAINER|MOUNTPOINT, then NAME[:TAG] (with --upper, only NAME[:TAG]).
    #[arg(value_name = "CONTAINER|MOUNTPOINT [NAME[:TAG]]", num_args = 0..=2)]
    args: Vec<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CompressArg {
    Gzip,
    None,
}

pub fn run(root: &Path, a: CommitArgs) -> Result<ExitCode> {
    let dirs = a.dirs.target();
    let (target_arg, name) = match (&dirs, a.args.as_slice()) {
        (Some(_), []) => (None, None),
        (Some(_), [n]) => (None, Some(n.clone())),
        (Some(_), _) => bail!("with --upper, give at most NAME[:TAG]"),
        (None, [t]) => (Some(t.clone()), None),
        (None, [t, n]) => (Some(t.clone()), Some(n.clone())),
        (None, _) => bail!("give a container or mount point (or --upper DIR), then NAME[:TAG]"),
    };
    // The name is checked before anything is read or written.
    let tag = name
        .as_deref()
        .map(Reference::parse_tag_target)
        .transpose()?;
    let store = Store::open(root)?;
    let target = match (target_arg, dirs) {
        (Some(t), _) => subject::resolve(&t, Some(&store))?,
        (None, Some(dirs)) => dirs,
        (None, None) => unreachable!("checked above"),
    };
    let parent = match &target.container {
        Some(c) => Some(store.resolve(&c.record.image)?),
        None => None,
    };
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} committing {bytes} ({bytes_per_sec}) {elapsed}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar
    });
    let progress = |n: u64| {
        if let Some(b) = &bar {
            b.set_position(n);
        }
    };
    let mut created_by = "ufsd commit".to_string();
    for c in &a.change {
        created_by.push_str(&format!(" -c {c:?}"));
    }
    let opts = CommitOptions {
        author: a.author,
        message: a.message,
        changes: a.change,
        created_by: Some(created_by),
        tag,
        layer: LayerOptions::from_env()?,
        compress: match a.compress {
            CompressArg::Gzip => Compress::Gzip,
            CompressArg::None => Compress::None,
        },
        progress: Some(&progress),
    };
    let result = commit_target(&store, &target, parent.as_ref(), &opts, !a.no_pause);
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let committed = result?;
    if !committed.stats.skipped_sockets.is_empty() {
        eprintln!(
            "ufsd: warning: sockets cannot be stored in a layer and were left out: {}",
            committed
                .stats
                .skipped_sockets
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!("{}", committed.id);
    Ok(ExitCode::SUCCESS)
}
