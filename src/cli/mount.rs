//! `ufsd mount`: a directory stack (`--lower`), a new container of an image
//! (`ufsd mount IMAGE MOUNTPOINT`) or an existing container (`--container NAME`); and the
//! `mount.fuse3` helper form `ufsd SOURCE MOUNTPOINT -o OPTIONS`.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::container::{self, Container};
use crate::image::store::{Image, Store};
use crate::mount::options::MountOptions;
use crate::mount::{self, MountConfig};
use crate::sys::process::{self, Forked};

/// Mount a union of layer directories, or an image as a new container.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    ufsd mount --lower /srv/l2:/srv/l1 /mnt/ro              # read-only view of two layers\n  \
    ufsd mount --lower /srv/l1 --upper /srv/u --work /srv/w /mnt/rw\n  \
    ufsd mount base:latest /mnt/c                           # a new container; prints its name\n  \
    ufsd mount --container 3f2a9c1b5e7d /mnt/c              # mount an existing container again\n  \
    ufsd umount /mnt/rw\n\n\
    The leftmost lower layer is the top-most, as in overlayfs lowerdir=.\n\
    A container's upper and work directories live in the image store (--root).\n\
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
    /// nopassthrough, uring, whiteout=overlay|oci|auto, trace, and overlay-style
    /// lowerdir=,upperdir=,workdir=.
    #[arg(short = 'o', value_name = "OPTS")]
    options: Vec<String>,
    /// Stay in the foreground instead of returning once the mount is live.
    #[arg(short, long)]
    foreground: bool,
    /// Log each copy-up and whiteout to the daemon log (as -o trace; see also ufsd trace).
    #[arg(long)]
    trace: bool,
    /// Where the background daemon writes its log (otherwise it is discarded).
    #[arg(long, value_name = "FILE")]
    log_file: Option<PathBuf>,
    /// An existing container to mount again (name or unique prefix); the mount point
    /// defaults to where it was last mounted.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["lower", "upper", "work", "name"])]
    container: Option<String>,
    /// The name of the new container (default: 12 random hex digits).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// IMAGE MOUNTPOINT for a new container of an image, or MOUNTPOINT alone.
    #[arg(value_name = "[IMAGE] MOUNTPOINT", num_args = 0..=2)]
    positionals: Vec<PathBuf>,
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
    cfg.idle_poll = !o.no_idle_poll;
    // The environment variable runs a whole test suite over io_uring.
    cfg.uring = o.uring || std::env::var_os("UFSD_URING").is_some_and(|v| v == "1");
    cfg.trace = o.trace;
    cfg.whiteout = o.whiteout;
    Ok(cfg)
}

pub fn run(mut a: MountArgs, root: impl FnOnce() -> Result<PathBuf>) -> Result<ExitCode> {
    if a.trace {
        a.options.push("trace".into());
    }
    let mut pos = a.positionals.clone();
    if let Some(c) = &a.container {
        let mnt = match pos.as_slice() {
            [] => None,
            [m] => Some(m.clone()),
            _ => bail!("--container takes one MOUNTPOINT"),
        };
        return mount_container(a.clone_flags(), &root()?, c, mnt);
    }
    let mountpoint = pos.pop().context("give a MOUNTPOINT")?;
    if let Some(image) = pos.pop() {
        if a.lower.is_some() || a.upper.is_some() || a.work.is_some() {
            bail!(
                "ufsd mount IMAGE MOUNTPOINT makes a container: --lower, --upper and --work do not apply"
            );
        }
        if image.is_absolute() && image.is_dir() {
            bail!(
                "{} is a directory, not an image: layer directories go in --lower (ufsd mount --lower {} MOUNTPOINT)",
                image.display(),
                image.display()
            );
        }
        let image = image
            .to_str()
            .with_context(|| format!("image name {} is not UTF-8", image.display()))?
            .to_string();
        return create_container(
            a.clone_flags(),
            &root()?,
            &image,
            a.name.as_deref(),
            mountpoint,
        );
    }
    if a.name.is_some() {
        bail!("--name names a new container: ufsd mount --name NAME IMAGE MOUNTPOINT");
    }
    let lowers = a.lower.as_deref().map(split_lowers).unwrap_or_default();
    let mut cfg = config_from(lowers, a.upper, a.work, &a.options, mountpoint)?;
    cfg.foreground = a.foreground;
    cfg.log_file = a.log_file;
    start(cfg)
}

/// The options of a container mount.
struct Flags {
    options: Vec<String>,
    foreground: bool,
    log_file: Option<PathBuf>,
}

impl MountArgs {
    fn clone_flags(&self) -> Flags {
        Flags {
            options: self.options.clone(),
            foreground: self.foreground,
            log_file: self.log_file.clone(),
        }
    }
}

/// The mount configuration of container `c` at `mountpoint`.
fn container_config(
    store: &Store,
    c: &mut Container,
    image: &Image,
    flags: &Flags,
    mountpoint: PathBuf,
) -> Result<MountConfig> {
    let layered = ["lowerdir=", "upperdir=", "workdir="];
    if let Some(o) = flags
        .options
        .iter()
        .flat_map(|o| o.split(','))
        .find(|o| layered.iter().any(|l| o.starts_with(l)))
    {
        bail!("-o {o}: a container's layers come from its image and the store");
    }
    let lowers = {
        // A spinner on a terminal while layers are extracted (the first mount of an image).
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} extracting layers {bytes} ({bytes_per_sec})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar
        });
        let lowers = container::image_lowers_with_progress(store, image, c, &|n| {
            if let Some(b) = &bar {
                b.set_position(n);
            }
        });
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        lowers?
    };
    let mut cfg = config_from(
        lowers,
        Some(c.upper()),
        Some(c.work()),
        &flags.options,
        mountpoint,
    )?;
    if cfg.read_only {
        bail!(
            "a container mount is writable; mount its image's layers with --lower for a read-only view"
        );
    }
    cfg.foreground = flags.foreground;
    cfg.log_file = flags.log_file.clone();
    cfg.hold_lock = Some(c.lock_path());
    let cfg = mount::validate(&cfg)?;
    container::set_mountpoint(store, c, &cfg.mountpoint)?;
    Ok(cfg)
}

/// `ufsd mount IMAGE MOUNTPOINT`: a new container, removed again if it cannot be mounted.
fn create_container(
    flags: Flags,
    root: &std::path::Path,
    image_name: &str,
    name: Option<&str>,
    mountpoint: PathBuf,
) -> Result<ExitCode> {
    let store = Store::open(root)?;
    let image = store.resolve(image_name)?;
    let mut c = container::create(&store, &image, image_name, name)?;
    let cfg = container_config(&store, &mut c, &image, &flags, mountpoint);
    let result = cfg.and_then(|cfg| start_announced(cfg, c.name()));
    if result.is_err() {
        let _ = store.remove_container_record(c.name());
    }
    result
}

/// `ufsd mount --container NAME [MOUNTPOINT]`.
fn mount_container(
    flags: Flags,
    root: &std::path::Path,
    input: &str,
    mountpoint: Option<PathBuf>,
) -> Result<ExitCode> {
    let store = Store::open(root)?;
    let mut c = container::find(&store, input)?;
    if c.is_mounted() {
        bail!(
            "container {} is mounted already at {}",
            c.name(),
            c.mountpoint().unwrap_or_default().display()
        );
    }
    let Some(mountpoint) = mountpoint.or_else(|| c.mountpoint()) else {
        bail!(
            "container {} has never been mounted: give a MOUNTPOINT",
            c.name()
        );
    };
    let image = store.resolve(&c.record.image)?;
    let cfg = container_config(&store, &mut c, &image, &flags, mountpoint)?;
    let name = c.name().to_string();
    start_announced(cfg, &name)
}

/// Mounts and prints the container's name once the mount is live (before serving, in the
/// foreground).
fn start_announced(cfg: MountConfig, name: &str) -> Result<ExitCode> {
    if cfg.foreground {
        println!("{name}");
        return start(cfg);
    }
    let code = start(cfg)?;
    println!("{name}");
    Ok(code)
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
