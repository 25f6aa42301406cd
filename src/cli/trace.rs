//! `ufsd trace`: watch a mount's copy-ups and whiteouts as they happen.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};

use crate::mount::control::ControlClient;

/// Print each copy-up and whiteout of a mount as it happens, until Ctrl-C or unmount.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    ufsd trace /mnt/c                # in one terminal; then change files in /mnt/c\n  \
    copy-up /etc/ from layer 1 (open for write)\n  \
    copy-up /etc/passwd from layer 1 (open for write)\n  \
    whiteout /usr/bin/foo hides layer 2 (unlink)\n  \
    ufsd trace /mnt/c --log on       # also write them to the daemon's log (as -o trace)\n\n\
    Layers are numbered as ufsd explain numbers them: layer 1 is the bottom. Directories\n\
    end with '/'. Only root and the user who mounted may trace a mount.")]
pub struct TraceArgs {
    /// The ufsd mount point.
    mountpoint: PathBuf,
    /// Turn the daemon-log trace on or off and exit, instead of following.
    #[arg(long, value_name = "on|off")]
    log: Option<Switch>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Switch {
    On,
    Off,
}

pub fn run(a: TraceArgs) -> Result<ExitCode> {
    let mnt = std::fs::canonicalize(&a.mountpoint)
        .with_context(|| format!("mount point {}", a.mountpoint.display()))?;
    let mut client = ControlClient::connect(&mnt)?;
    if let Some(s) = a.log {
        let on = matches!(s, Switch::On);
        println!(
            "{}",
            client.request(if on { "trace log on" } else { "trace log off" })?
        );
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("tracing {} (Ctrl-C to stop)", mnt.display());
    let mut out = std::io::stdout().lock();
    // A closed pipe (`| head`) ends the trace quietly.
    client.follow_trace(|line| writeln!(out, "{line}").is_ok() && out.flush().is_ok())?;
    Ok(ExitCode::SUCCESS)
}
