//! The command line: the only place that knows clap. Each subcommand lives in its own file
//! and calls one library function; `main` turns errors into one line on stderr and a
//! non-zero exit.

mod check;
mod commit;
mod containers;
mod control;
mod diff;
mod explain;
mod export;
mod images;
mod import;
mod layers;
mod load;
mod mount;
mod output;
mod progress;
mod save;
mod subject;
mod svg;
mod table;
mod target;
mod tour;
mod trace;
mod umount;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::{CommandFactory, Parser, Subcommand};

use crate::sys;

#[derive(Debug, Parser)]
#[command(
    name = "ufsd",
    version,
    about = "A userspace union filesystem: stack read-only layers under one writable layer",
    after_help = "Examples:\n  ufsd tour                           # a guided tour of the layer rules (start here)\n  ufsd mount --lower /srv/layers/2:/srv/layers/1 --upper /srv/up --work /srv/work /mnt/merged\n  \
                  ufsd mount base:latest /mnt/c       # a container of an image; ufsd commit, ps, rm\n  \
                  ufsd images                         # the images of the store (--root DIR or UFSD_ROOT)\n  \
                  ufsd explain /mnt/merged/etc/passwd # which layer a path comes from, and why\n  \
                  ufsd layers app:v1                  # what each layer adds, removes and wastes\n\n\
                  Also run by mount(8) as: mount -t fuse.ufsd ufsd /mnt -o lowerdir=/l1:/l2,upperdir=/u,workdir=/w\n\
                  Logging: -v (info), -vv (debug), or RUST_LOG=ufsd=debug."
)]
struct Cli {
    /// More log output (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// The image store [env: UFSD_ROOT; default /var/lib/ufsd for root, else
    /// $XDG_DATA_HOME/ufsd or ~/.local/share/ufsd].
    #[arg(long, global = true, value_name = "DIR")]
    root: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Mount(mount::MountArgs),
    Umount(umount::UmountArgs),
    Diff(diff::DiffArgs),
    Commit(commit::CommitArgs),
    Ps(containers::PsArgs),
    Rm(containers::RmArgs),
    Control(control::ControlArgs),
    Images(images::ImagesArgs),
    Tag(images::TagArgs),
    Rmi(images::RmiArgs),
    History(images::HistoryArgs),
    Inspect(images::InspectArgs),
    Explain(explain::ExplainArgs),
    Layers(layers::LayersArgs),
    Import(import::ImportArgs),
    Export(export::ExportArgs),
    Save(save::SaveArgs),
    Load(load::LoadArgs),
    Check(check::CheckArgs),
    Tour(tour::TourArgs),
    Trace(trace::TraceArgs),
}

/// Whether `name` is one of the subcommands (or `help`).
fn is_subcommand(name: &str) -> bool {
    name == "help"
        || Cli::command()
            .get_subcommands()
            .any(|s| s.get_name() == name)
}

/// The image store's directory: `--root`, else `UFSD_ROOT`, else `/var/lib/ufsd` for root,
/// else `$XDG_DATA_HOME/ufsd`, else `~/.local/share/ufsd`.
fn store_root(arg: Option<PathBuf>) -> Result<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(r) = arg.or_else(|| env("UFSD_ROOT")) {
        return Ok(r);
    }
    if sys::euid() == 0 {
        return Ok(PathBuf::from("/var/lib/ufsd"));
    }
    if let Some(x) = env("XDG_DATA_HOME").filter(|p| p.is_absolute()) {
        return Ok(x.join("ufsd"));
    }
    match env("HOME") {
        Some(h) => Ok(h.join(".local/share/ufsd")),
        None => bail!("no image store: give --root DIR or set UFSD_ROOT (HOME is not set)"),
    }
}

/// A panic is logged as well as printed: the background daemon's stderr goes nowhere, and
/// its log file is the only trace of why a mount ended.
fn log_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        log::error!("panic: {info}");
        default(info);
    }));
}

fn init_logging(verbose: u8) {
    // fuser warns that its own unmount failed after the kernel already unmounted (the
    // normal way a mount ends): not worth a line below -vv.
    let default = match verbose {
        // Trace lines (-o trace) are info-level but asked for: always shown.
        0 => "warn,fuser::session=error,ufsd::trace=info",
        1 => "info,fuser::session=error",
        _ => "debug",
    };
    let env = env_logger::Env::default().default_filter_or(default);
    let _ = env_logger::Builder::from_env(env)
        .format_timestamp_millis()
        .try_init();
}

/// Whether argv is the mount helper's form (`ufsd SOURCE MNT -o ...` or `ufsd -o ... MNT`)
/// rather than a subcommand.
fn is_helper_form(args: &[OsString]) -> bool {
    match args.get(1).and_then(|a| a.to_str()) {
        None => args.len() > 1,
        Some(first) => {
            first == "-o" || first.starts_with("-o") && first.len() > 2 || {
                !first.starts_with('-') && !is_subcommand(first)
            }
        }
    }
}

/// An error and its causes on one line, as `{:#}` prints them, but leaving out a cause
/// that the message before it already ends with: errors that both show their source in
/// their own message and expose it as `source()` would otherwise print it twice.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    sys::ensure_default_path();
    log_panics();
    let args: Vec<OsString> = std::env::args_os().collect();
    let result = if is_helper_form(&args) {
        match mount::HelperArgs::parse(&args[1..]) {
            Ok(h) => {
                init_logging(h.verbose);
                mount::run_helper(h)
            }
            Err(e) => Err(e),
        }
    } else {
        let cli = Cli::parse_from(&args);
        init_logging(cli.verbose);
        let root = || store_root(cli.root.clone());
        match cli.command {
            Command::Mount(a) => mount::run(a, root),
            Command::Umount(a) => umount::run(a),
            Command::Diff(a) => diff::run(a, root()),
            Command::Commit(a) => root().and_then(|r| commit::run(&r, a)),
            Command::Ps(a) => root().and_then(|r| containers::ps(&r, a)),
            Command::Rm(a) => root().and_then(|r| containers::rm(&r, a)),
            Command::Control(a) => control::run(a),
            Command::Images(a) => root().and_then(|r| images::images(&r, a)),
            Command::Tag(a) => root().and_then(|r| images::tag(&r, a)),
            Command::Rmi(a) => root().and_then(|r| images::rmi(&r, a)),
            Command::History(a) => root().and_then(|r| images::history(&r, a)),
            Command::Inspect(a) => root().and_then(|r| images::inspect(&r, a)),
            Command::Explain(a) => explain::run(a, root),
            Command::Layers(a) => layers::run(a, root),
            Command::Import(a) => root().and_then(|r| import::run(&r, a)),
            Command::Export(a) => root().and_then(|r| export::run(&r, a)),
            Command::Save(a) => root().and_then(|r| save::run(&r, a)),
            Command::Load(a) => root().and_then(|r| load::run(&r, a)),
            Command::Check(a) => root().and_then(|r| check::run(&r, a)),
            Command::Tour(a) => tour::run(a),
            Command::Trace(a) => trace::run(a),
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ufsd: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn causes_shown_in_the_message_are_not_repeated() {
        let io = || std::io::Error::from_raw_os_error(libc::ENOENT);
        let e = anyhow::Error::from(crate::image::ImageError::io("opening", "/x")(io()));
        assert_eq!(
            one_line(&e),
            "opening /x: No such file or directory (os error 2)"
        );
        let e = anyhow::Error::new(io()).context("reading /y");
        assert_eq!(
            one_line(&e),
            "reading /y: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn helper_form_is_recognised() {
        assert!(is_helper_form(&args(&[
            "ufsd",
            "ufsd",
            "/mnt",
            "-o",
            "lowerdir=/l"
        ])));
        assert!(is_helper_form(&args(&[
            "ufsd",
            "-o",
            "lowerdir=/l",
            "/mnt"
        ])));
        assert!(is_helper_form(&args(&["ufsd", "-olowerdir=/l", "/mnt"])));
        assert!(!is_helper_form(&args(&[
            "ufsd", "mount", "--lower", "/l", "/mnt"
        ])));
        assert!(!is_helper_form(&args(&["ufsd", "--help"])));
        assert!(!is_helper_form(&args(&["ufsd", "images"])));
        assert!(!is_helper_form(&args(&["ufsd", "rmi", "base"])));
        assert!(!is_helper_form(&args(&["ufsd", "diff", "/mnt"])));
        assert!(!is_helper_form(&args(&["ufsd"])));
    }
}
