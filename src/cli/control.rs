//! `ufsd control`: talk to a mount's control socket by hand (status, pause).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use crate::mount::control::ControlClient;

/// Send a command to a mount's daemon.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    ufsd control /mnt/c status       # paused=no in_flight=0 waiting=0 pid=1234\n  \
    ufsd control /mnt/c pause        # writes wait until Enter (or end of stdin)\n\n\
    Only root and the user who mounted may control a mount. A pause lasts as long as\n\
    the connection: when this command exits, the mount resumes. ufsd commit pauses a\n\
    live mount by itself.")]
pub struct ControlArgs {
    /// The ufsd mount point.
    mountpoint: PathBuf,
    /// What to do.
    command: ControlCommand,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ControlCommand {
    /// Print whether writes are paused and how many requests are in flight or waiting.
    Status,
    /// Pause writes until a line or end of input arrives on stdin.
    Pause,
}

pub fn run(a: ControlArgs) -> Result<ExitCode> {
    let mnt = std::fs::canonicalize(&a.mountpoint)
        .with_context(|| format!("mount point {}", a.mountpoint.display()))?;
    let mut client = ControlClient::connect(&mnt)?;
    match a.command {
        ControlCommand::Status => println!("{}", client.request("status")?),
        ControlCommand::Pause => {
            let paused = client.pause()?;
            println!("paused; press Enter (or close stdin) to resume");
            let mut line = String::new();
            if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
                bail!("reading stdin: {e}");
            }
            paused.resume()?;
            println!("resumed");
        }
    }
    Ok(ExitCode::SUCCESS)
}
