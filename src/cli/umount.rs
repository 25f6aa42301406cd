//! `ufsd umount`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::mount;

/// Unmount a ufsd mount and wait for its daemon to exit.
#[derive(Debug, Args)]
#[command(after_help = "Example:\n  ufsd umount /mnt/merged\n\n\
    Plain umount(8) and fusermount3 -u work too; the daemon exits on its own.")]
pub struct UmountArgs {
    /// Detach now even if busy; the daemon exits once the last user leaves.
    #[arg(short = 'l', long)]
    lazy: bool,
    /// The mount point.
    mountpoint: PathBuf,
}

pub fn run(a: UmountArgs) -> Result<ExitCode> {
    mount::unmount(&a.mountpoint, a.lazy)?;
    Ok(ExitCode::SUCCESS)
}
