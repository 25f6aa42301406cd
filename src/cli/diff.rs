//! `ufsd diff`: the changes of an upper layer against the layers below it.

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::subject;
use crate::image::diff::{self, Change};
use crate::mount::control::ControlClient;

/// Show what the upper layer changed, as `docker diff` does.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    ufsd diff 3f2a9c1b5e7d                             # a container\n  \
    ufsd diff /mnt/merged                              # a mounted ufsd mount\n  \
    ufsd diff --upper /srv/up --lower /srv/l2:/srv/l1  # layer directories, no mount needed\n  \
    ufsd diff --json /mnt/merged\n\n\
    One line per change, sorted by path: A (added), C (changed: content, metadata, or\n\
    something below a directory), D (deleted). A path holding a control character such as\n\
    a newline is printed in double quotes with C escapes. --json prints\n\
    [{\"kind\":\"A\",\"path\":\"/x\"}], with \"path_b64\" instead of \"path\" for a path that is\n\
    not UTF-8. Works on any overlayfs-format upper layer (ufsd, kernel overlayfs, overlay2).\n\
    An argument without '/' is a container name if one matches, else a directory.\n\
    A live mount's writes are paused while its upper layer is read (--no-pause: not).")]
pub struct DiffArgs {
    /// A container (name or unique prefix) or a ufsd mount point: its layers are those of
    /// the container or the mount's daemon.
    #[arg(
        value_name = "CONTAINER|MOUNTPOINT",
        required_unless_present = "upper",
        conflicts_with_all = ["upper", "lower"]
    )]
    target: Option<String>,
    #[command(flatten)]
    dirs: subject::LayerDirArgs,
    /// Print a JSON array instead of lines.
    #[arg(long)]
    json: bool,
    /// Do not pause a live mount's writes while its upper layer is read.
    #[arg(long)]
    no_pause: bool,
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

pub fn run(a: DiffArgs, root: Result<PathBuf>) -> Result<ExitCode> {
    let target = match (&a.target, a.dirs.target()) {
        (Some(t), _) => {
            let store = match root {
                Ok(r) if !crate::container::looks_like_path(t) => subject::existing_store(&r)?,
                _ => None,
            };
            subject::resolve(t, store.as_ref())?
        }
        (None, Some(dirs)) => dirs,
        (None, None) => bail!("give a container, a mount point, or --upper"),
    };
    // A live mount's writes are held while the upper layer is read (as commit does), so
    // the list is the state of one moment; a mount whose control socket does not answer
    // is read as it goes.
    let paused = match &target.live {
        Some(m) if !a.no_pause => match ControlClient::connect(m).and_then(|c| c.pause()) {
            Ok(p) => Some(p),
            Err(e) => {
                log::info!("diff without pausing {}: {e}", m.display());
                None
            }
        },
        _ => None,
    };
    let changes = diff::diff(&target.upper, &target.lowers);
    if let Some(p) = paused
        && let Err(e) = p.resume()
    {
        log::warn!("resuming the mount: {e}");
    }
    let changes = changes?;
    match print(&changes, a.json) {
        // A reader that stopped early (`| head`) is not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e).context("writing the diff"),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}
