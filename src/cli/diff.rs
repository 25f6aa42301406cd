//! `ufsd diff`: the changes of an upper layer against the layers below it.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::image::diff::{self, Change};
use crate::mount;

/// Show what the upper layer changed, as `docker diff` does.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    ufsd diff /mnt/merged                              # a mounted ufsd mount\n  \
    ufsd diff --upper /srv/up --lower /srv/l2:/srv/l1  # layer directories, no mount needed\n  \
    ufsd diff --json /mnt/merged\n\n\
    One line per change, sorted by path: A (added), C (changed: content, metadata, or\n\
    something below a directory), D (deleted). A path holding a control character such as\n\
    a newline is printed in double quotes with C escapes. --json prints\n\
    [{\"kind\":\"A\",\"path\":\"/x\"}], with \"path_b64\" instead of \"path\" for a path that is\n\
    not UTF-8. Works on any overlayfs-format upper layer (ufsd, kernel overlayfs, overlay2).\n\
    Only these two forms are accepted for now; container names come with the image store.")]
pub struct DiffArgs {
    /// A ufsd mount point: its layers are those the mount's daemon recorded.
    #[arg(
        value_name = "MOUNTPOINT",
        required_unless_present = "upper",
        conflicts_with = "upper"
    )]
    mountpoint: Option<PathBuf>,
    /// The upper layer directory (instead of a mount point).
    #[arg(long, value_name = "DIR")]
    upper: Option<PathBuf>,
    /// The lower layers under --upper, top-most first, separated by ':'.
    #[arg(long, value_name = "DIR[:DIR...]", requires = "upper")]
    lower: Option<PathBuf>,
    /// Print a JSON array instead of lines.
    #[arg(long)]
    json: bool,
}

/// The upper and lower layers of the mount at `mountpoint`, from its daemon's record.
fn layers_of_mount(mountpoint: &Path) -> Result<(PathBuf, Vec<PathBuf>)> {
    let canonical =
        std::fs::canonicalize(mountpoint).with_context(|| format!("{}", mountpoint.display()))?;
    let Some(rec) = mount::mount_record(&canonical) else {
        bail!(
            "{}: no ufsd daemon is recorded for this mount point (not a ufsd mount, or \
             mounted by another user); use --upper and --lower for layer directories",
            canonical.display()
        );
    };
    let Some(upper) = rec.upper else {
        bail!(
            "{}: mounted without an upper layer, so nothing can have changed",
            canonical.display()
        );
    };
    Ok((upper, rec.lowers))
}

fn print(changes: &[Change], json: bool) -> io::Result<()> {
    let mut out = BufWriter::new(io::stdout().lock());
    if json {
        out.write_all(diff::to_json(changes).as_bytes())?;
        out.write_all(b"\n")?;
    } else {
        diff::write_text(changes, &mut out)?;
    }
    out.flush()
}

pub fn run(a: DiffArgs) -> Result<ExitCode> {
    let (upper, lowers) = match (&a.mountpoint, &a.upper) {
        (Some(m), _) => layers_of_mount(m)?,
        (None, Some(u)) => (
            u.clone(),
            a.lower
                .as_deref()
                .map(super::mount::split_lowers)
                .unwrap_or_default(),
        ),
        (None, None) => bail!("give a mount point, or --upper"),
    };
    let changes = diff::diff(&upper, &lowers)?;
    match print(&changes, a.json) {
        // A reader that stopped early (`| head`) is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e).context("writing the diff"),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}
