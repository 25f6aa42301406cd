//! `ufsd mount`, and the `mount.fuse3` helper form `ufsd SOURCE MOUNTPOINT -o OPTIONS`.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::mount::options::MountOptions;
use crate::mount::{self, MountConfig};
use crate::sys::process::{self, Forked};

/// Mount a union of layer directories.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    ufsd mount --lower /srv/l2:/srv/l1 /mnt/ro              # read-only view of two layers\n  \
    ufsd mount --lower /srv/l1 --upper /srv/u --work /srv/w /mnt/rw\n  \
    ufsd umount /mnt/rw\n\n\
    The leftmost lower layer is the top-most, as in overlayfs lowerdir=.\n\
    Mounting needs root (or fusermount3 for a user mount); a root mount is open to every\n\
    user with modes enforced by the kernel.")]
pub struct MountArgs {
    /// Lower layers, top-most first, separated by ':'.
    #[arg(long, value_name = "DIR[:DIR...]")]
    lower: Option<PathBuf>,
    /// Writable upper layer (overlayfs format); without it the mount is read-only.
    #[arg(long, value_name = "DIR", requires = "work")]
    upper: Option<PathBuf>,
    /// Work directory for atomic copy-up, on the upper's filesystem.
    #[arg(long, value_name = "DIR", requires = "upper")]
    work: Option<PathBuf>,
    /// Mount options, comma-separated: allow_other, ro, nodev, timeout=SECS, threads=N,
    /// nopassthrough, whiteout=overlay|oci|auto, and overlay-style
    /// lowerdir=,upperdir=,workdir=.
    #[arg(short = 'o', value_name = "OPTS")]
    options: Vec<String>,
    /// Stay in the foreground instead of returning once the mount is live.
    #[arg(short, long)]
    foreground: bool,
    /// Where the background daemon writes its log (otherwise it is discarded).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// Where to mount.
    mountpoint: PathBuf,
}

/// Splits a `--lower` value on ':'.
pub(super) fn split_lowers(v: &std::path::Path) -> Vec<PathBuf> {
    v.as_os_str()
        .as_bytes()
        .split(|b| *b == b':')
        .filter(|s| !s.is_empty())
        .map(|s| PathBuf::from(OsString::from_vec(s.to_vec())))
        .collect()
}

fn config_from(
    lowers: Vec<PathBuf>,
    upper: Option<PathBuf>,
    work: Option<PathBuf>,
    options: &[String],
    mountpoint: PathBuf,
) -> Result<MountConfig> {
    let o = MountOptions::parse(options)?;
    if !o.ignored.is_empty() {
        log::debug!("accepted without effect: {}", o.ignored.join(","));
    }
    if !lowers.is_empty() && !o.lowerdir.is_empty() {
        bail!("lower layers given twice (--lower and -o lowerdir=)");
    }
    let mut cfg = MountConfig::new(
        if lowers.is_empty() {
            o.lowerdir
        } else {
            lowers
        },
        mountpoint,
    );
    cfg.upper = upper.or(o.upperdir);
    cfg.work = work.or(o.workdir);
    cfg.read_only = o.read_only;
    cfg.allow_other = o.allow_other;
    cfg.flags = o.flags;
    cfg.fsname = o.fsname;
    if let Some(t) = o.timeout {
        cfg.ttl = t;
    }
    if let Some(n) = o.threads {
        cfg.threads = n;
    }
    cfg.passthrough = !o.no_passthrough;
    cfg.whiteout = o.whiteout;
    Ok(cfg)
}

pub fn run(a: MountArgs) -> Result<ExitCode> {
    let lowers = a.lower.as_deref().map(split_lowers).unwrap_or_default();
    let mut cfg = config_from(lowers, a.upper, a.work, &a.options, a.mountpoint)?;
    cfg.foreground = a.foreground;
    cfg.log_file = a.log_file;
    start(cfg)
}

/// Checks the request, then mounts in the foreground or in a forked daemon.
fn start(cfg: MountConfig) -> Result<ExitCode> {
    let cfg = mount::validate(&cfg)?;
    if cfg.foreground {
        mount::serve(&cfg, None)?;
        return Ok(ExitCode::SUCCESS);
    }
    let log = match &cfg.log_file {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("log file {}", p.display()))?,
        ),
        None => None,
    };
    match process::fork_daemon().context("starting the daemon")? {
        Forked::Parent(waiter) => match waiter.wait() {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(msg) => bail!("{msg}"),
        },
        Forked::Child(notifier) => {
            let _ = process::detach_stdio(log.as_ref());
            let code = match mount::serve(&cfg, Some(notifier)) {
                Ok(()) => 0,
                Err(e) => {
                    log::error!("{e}");
                    1
                }
            };
            std::process::exit(code);
        }
    }
}

/// The arguments of the helper form, parsed by hand: clap cannot express "two positionals
/// then options in any order" together with subcommands.
#[derive(Debug, Default)]
pub struct HelperArgs {
    positionals: Vec<PathBuf>,
    options: Vec<String>,
    foreground: bool,
    pub verbose: u8,
}

impl HelperArgs {
    pub fn parse(args: &[OsString]) -> Result<HelperArgs> {
        let mut h = HelperArgs::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let bytes = a.as_bytes();
            if bytes == b"-o" {
                let v = it.next().context("-o needs a value")?;
                h.options.push(utf8(v)?);
            } else if let Some(rest) = bytes.strip_prefix(b"-o") {
                h.options.push(utf8(&OsString::from_vec(rest.to_vec()))?);
            } else if bytes == b"-f" || bytes == b"--foreground" {
                h.foreground = true;
            } else if bytes == b"-v" || bytes == b"--verbose" {
                h.verbose += 1;
            } else if bytes == b"-vv" {
                h.verbose += 2;
            } else if bytes.starts_with(b"-") {
                bail!(
                    "unknown argument '{}' (see ufsd mount --help)",
                    a.to_string_lossy()
                );
            } else {
                h.positionals.push(PathBuf::from(a));
            }
        }
        Ok(h)
    }
}

fn utf8(v: &OsString) -> Result<String> {
    v.to_str()
        .map(str::to_string)
        .with_context(|| format!("mount options are not UTF-8: {}", v.to_string_lossy()))
}

pub fn run_helper(h: HelperArgs) -> Result<ExitCode> {
    // `ufsd SOURCE MOUNTPOINT` (the source is ignored) or `ufsd MOUNTPOINT`.
    let mountpoint = match h.positionals.as_slice() {
        [_, mnt] | [mnt] => mnt.clone(),
        _ => bail!(
            "usage: ufsd [SOURCE] MOUNTPOINT -o lowerdir=DIR[:DIR...][,upperdir=DIR,workdir=DIR]"
        ),
    };
    let mut cfg = config_from(Vec::new(), None, None, &h.options, mountpoint)?;
    cfg.foreground = h.foreground;
    start(cfg)
}
