//! `ufsd explain`: why the merged view shows what it shows at one path.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use serde_json::json;

use super::target::{self, Found};
use crate::image::explain::{self, render};

/// Explain one path of a merged view: which layer it comes from, what it shadows, which
/// whiteout or opaque directory hides what, copy-ups, and merged listings.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    ufsd explain /mnt/merged/etc/passwd          # a path inside a ufsd (or overlay) mount\n  \
    ufsd explain app:v1 /etc/passwd              # an image of the store\n  \
    ufsd explain web /etc/nginx                  # a container of the store\n  \
    ufsd explain --upper /srv/up --lower /srv/l2:/srv/l1 /etc/passwd\n  \
    ufsd explain --json /mnt/merged/etc\n\n\
    The picture lists the layers top-most first (layer 1 is the bottom one): > the entry\n\
    shown, + a directory merged into it, x a whiteout, - an entry hidden.\n\
    Symlinks are not followed inside the merged view: ask about the path they point to.\n\
    See docs/semantics.md.")]
pub struct ExplainArgs {
    /// A path inside a mount; or an image, container or mount point followed by PATH.
    #[arg(value_name = "TARGET", required = true)]
    target: OsString,
    /// The path inside the image or container named first.
    #[arg(value_name = "PATH")]
    path: Option<OsString>,
    /// An upper layer directory (with --lower; TARGET is then the path).
    #[arg(long, value_name = "DIR")]
    upper: Option<PathBuf>,
    /// Lower layer directories, top-most first, separated by ':'.
    #[arg(long, value_name = "DIR[:DIR...]")]
    lower: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: ExplainArgs, root: impl FnOnce() -> Result<PathBuf>) -> Result<ExitCode> {
    let (found, path): (Found, Vec<u8>) = match (&a.upper, &a.lower, &a.path) {
        (None, None, None) => target::from_mount_path(Path::new(&a.target))?,
        (None, None, Some(p)) => (
            target::from_name(&a.target, root)?,
            p.as_encoded_bytes().to_vec(),
        ),
        (_, _, None) => (
            target::from_dirs(a.upper.as_deref(), a.lower.as_deref())?,
            a.target.as_encoded_bytes().to_vec(),
        ),
        (_, _, Some(_)) => bail!("with --upper/--lower give only the path"),
    };
    let e = explain::explain(&found.set, &path)?;
    let text = if a.json {
        let v = json!({
            "source": found.source,
            "stack": found.set.layers,
            "explanation": e,
        });
        format!("{}\n", serde_json::to_string_pretty(&v)?)
    } else {
        format!(
            "{}\n({}; {} layer{})\n",
            render::to_text(&e, &found.set).trim_end(),
            found.source,
            found.set.len(),
            if found.set.len() == 1 { "" } else { "s" }
        )
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}
