//! Mounting and unmounting: checking a mount request, running the daemon, and finding and
//! stopping it again.
//!
//! `ufsd mount` forks before anything else; the child (the daemon) mounts and tells the
//! parent through a pipe whether the mount is live, so the command returns only once the
//! mount serves requests, and fails with the daemon's own error line when it does not. The
//! daemon records its pid in a runtime file named after the mount point, which is how
//! `ufsd umount` waits for it to exit.

pub mod control;
pub mod mountinfo;
pub mod options;
mod record;

use record::write_pid_file;
pub use record::{MountRecord, daemon_pid, mount_record, pid_file, stale_records};

use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fuser::{Config, MountOption, Session, SessionACL};
use log::{debug, info};
use thiserror::Error;

use crate::fs::{UnionFs, WhiteoutFormat};
use crate::fuse::idle_poll::IdlePoll;
use crate::fuse::uring::Rings;
use crate::fuse::{CachePolicy, DevFuse, FuseAdapter};
use crate::layer::LayerStack;
use crate::sys::{self, process};

/// The filesystem type shown in mount tables: `fuse.ufsd`.
pub const FS_SUBTYPE: &str = "ufsd";

/// Everything a mount needs, as the CLI collected it.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// Lower layers, top-most first.
    pub lowers: Vec<PathBuf>,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    pub mountpoint: PathBuf,
    pub read_only: bool,
    pub allow_other: bool,
    /// Kernel flags such as `nodev` passed through.
    pub flags: Vec<String>,
    pub fsname: Option<String>,
    pub ttl: Duration,
    pub threads: usize,
    pub passthrough: bool,
    /// Keep idle CPUs polling while the mount is busy (see [`crate::fuse::idle_poll`]).
    pub idle_poll: bool,
    /// Serve requests over FUSE over io_uring where the kernel offers it (see
    /// [`crate::fuse::uring`]).
    pub uring: bool,
    /// Log each copy-up and whiteout from the start (`-o trace`).
    pub trace: bool,
    pub foreground: bool,
    pub log_file: Option<PathBuf>,
    /// Forced whiteout format; `None` picks overlayfs format where mknod is permitted.
    pub whiteout: Option<WhiteoutFormat>,
    /// A lock file the daemon holds exclusively while it serves (a container's), so that
    /// one upper layer is never served by two daemons and others can tell it is mounted.
    pub hold_lock: Option<PathBuf>,
}

impl MountConfig {
    /// A configuration with the defaults for everything but the layers and mount point.
    pub fn new(lowers: Vec<PathBuf>, mountpoint: PathBuf) -> MountConfig {
        MountConfig {
            lowers,
            upper: None,
            work: None,
            mountpoint,
            read_only: false,
            allow_other: false,
            flags: Vec::new(),
            fsname: None,
            ttl: Duration::from_secs(86400),
            threads: 4,
            passthrough: true,
            idle_poll: true,
            uring: false,
            trace: false,
            foreground: false,
            log_file: None,
            whiteout: None,
            hold_lock: None,
        }
    }
}

/// Why a mount or unmount was refused; each is one line for a person.
#[derive(Debug, Error)]
pub enum MountError {
    #[error("at least one lower layer is needed (--lower DIR or -o lowerdir=DIR)")]
    NoLower,
    #[error("{role} {path}: does not exist")]
    Missing { role: &'static str, path: PathBuf },
    #[error("{role} {path}: is not a directory")]
    NotDirectory { role: &'static str, path: PathBuf },
    #[error(
        "{role} {path}: a FUSE mount whose daemon is gone is there (killed?); unmount it first: ufsd umount {path}"
    )]
    DeadMount { role: &'static str, path: PathBuf },
    #[error("{role} {path}: {source}")]
    Unreadable {
        role: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--upper needs --work (an empty directory on the same filesystem as the upper)")]
    UpperWithoutWork,
    #[error("--work needs --upper")]
    WorkWithoutUpper,
    #[error("{a} {pa} and {b} {pb} overlap: {reason}")]
    Overlap {
        a: &'static str,
        pa: PathBuf,
        b: &'static str,
        pb: PathBuf,
        reason: &'static str,
    },
    #[error("upper {upper} and work {work} are on different filesystems; they must share one")]
    DifferentFilesystems { upper: PathBuf, work: PathBuf },
    #[error(
        "no /dev/fuse: load the fuse kernel module (modprobe fuse) or run where FUSE is available"
    )]
    NoFuseDevice,
    #[error(
        "mounting needs root, or the setuid helper fusermount3 (apt-get install fuse3) for a user mount"
    )]
    NoPermission,
    #[error("{0} is already a ufsd mount; unmount it first (ufsd umount {0})")]
    AlreadyMounted(PathBuf),
    #[error("{0} is not a ufsd mount")]
    NotMounted(PathBuf),
    #[error(
        "{0} is busy: a file is open or a process is inside it (ufsd umount --lazy detaches it now)"
    )]
    Busy(PathBuf),
    #[error("unmounting {path}: {source}")]
    Unmount { path: PathBuf, source: sys::Errno },
    #[error("the daemon of {0} did not exit within 30 s after the unmount")]
    DaemonStuck(PathBuf),
    #[error("mounting {path}: {source}")]
    Mount {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn check_dir(role: &'static str, path: &Path) -> Result<PathBuf, MountError> {
    match fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(MountError::Missing {
            role,
            path: path.to_path_buf(),
        }),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Err(MountError::DeadMount {
            role,
            path: path.to_path_buf(),
        }),
        Err(source) => Err(MountError::Unreadable {
            role,
            path: path.to_path_buf(),
            source,
        }),
        Ok(m) if !m.is_dir() => Err(MountError::NotDirectory {
            role,
            path: path.to_path_buf(),
        }),
        Ok(_) => fs::canonicalize(path).map_err(|source| MountError::Unreadable {
            role,
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Whether `a` is `b` or lies inside it (both canonical).
fn within(a: &Path, b: &Path) -> bool {
    a.starts_with(b)
}

fn overlap(
    (a, pa): (&'static str, &Path),
    (b, pb): (&'static str, &Path),
) -> Result<(), MountError> {
    let err = |reason| MountError::Overlap {
        a,
        pa: pa.to_path_buf(),
        b,
        pb: pb.to_path_buf(),
        reason,
    };
    if pa == pb {
        Err(err("they are the same directory"))
    } else if within(pa, pb) {
        Err(err("the first is inside the second"))
    } else if within(pb, pa) {
        Err(err("the second is inside the first"))
    } else {
        Ok(())
    }
}

/// Checks a mount request and makes every path canonical. Nothing is mounted or written.
pub fn validate(cfg: &MountConfig) -> Result<MountConfig, MountError> {
    let mut out = cfg.clone();
    if cfg.lowers.is_empty() {
        return Err(MountError::NoLower);
    }
    out.lowers = cfg
        .lowers
        .iter()
        .map(|l| check_dir("lower layer", l))
        .collect::<Result<_, _>>()?;
    match (&cfg.upper, &cfg.work) {
        (Some(_), None) => return Err(MountError::UpperWithoutWork),
        (None, Some(_)) => return Err(MountError::WorkWithoutUpper),
        _ => {}
    }
    out.upper = cfg
        .upper
        .as_deref()
        .map(|u| check_dir("upper", u))
        .transpose()?;
    out.work = cfg
        .work
        .as_deref()
        .map(|w| check_dir("work", w))
        .transpose()?;
    out.mountpoint = check_dir("mountpoint", &cfg.mountpoint)?;
    let writable = [("upper", &out.upper), ("work", &out.work)];
    for (role, dir) in writable {
        let Some(dir) = dir else { continue };
        for lower in &out.lowers {
            overlap((role, dir), ("lower layer", lower))?;
        }
    }
    if let (Some(u), Some(w)) = (&out.upper, &out.work) {
        overlap(("upper", u), ("work", w))?;
        let (du, dw) = (dev_of(u)?, dev_of(w)?);
        if du != dw {
            return Err(MountError::DifferentFilesystems {
                upper: u.clone(),
                work: w.clone(),
            });
        }
    }
    if !Path::new("/dev/fuse").exists() {
        return Err(MountError::NoFuseDevice);
    }
    if sys::euid() != 0
        && find_in_path("fusermount3").is_none()
        && find_in_path("fusermount").is_none()
    {
        return Err(MountError::NoPermission);
    }
    if let Some(m) = mountinfo::mount_at(&out.mountpoint)
        && m.fs_type == format!("fuse.{FS_SUBTYPE}")
    {
        return Err(MountError::AlreadyMounted(out.mountpoint));
    }
    Ok(out)
}

fn dev_of(p: &Path) -> Result<u64, MountError> {
    fs::metadata(p)
        .map(|m| m.dev())
        .map_err(|source| MountError::Unreadable {
            role: "directory",
            path: p.to_path_buf(),
            source,
        })
}

fn find_in_path(bin: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

fn fuse_config(cfg: &MountConfig) -> Config {
    let mut opts = vec![
        MountOption::FSName(cfg.fsname.clone().unwrap_or_else(|| FS_SUBTYPE.to_string())),
        // As a kernel option, so that mount tables show the type `fuse.ufsd`.
        MountOption::CUSTOM(format!("subtype={FS_SUBTYPE}")),
        MountOption::DefaultPermissions,
    ];
    // Like mount(8) for root: devices and setuid work unless nodev/nosuid say otherwise,
    // as a container rootfs needs.
    if sys::euid() == 0 {
        for (on, off) in [("dev", "nodev"), ("suid", "nosuid")] {
            if !cfg.flags.iter().any(|f| f == on || f == off) {
                opts.push(if on == "dev" {
                    MountOption::Dev
                } else {
                    MountOption::Suid
                });
            }
        }
    }
    if cfg.read_only || cfg.upper.is_none() {
        opts.push(MountOption::RO);
    }
    for f in &cfg.flags {
        opts.push(match f.as_str() {
            "dev" => MountOption::Dev,
            "nodev" => MountOption::NoDev,
            "suid" => MountOption::Suid,
            "nosuid" => MountOption::NoSuid,
            "exec" => MountOption::Exec,
            "noexec" => MountOption::NoExec,
            "atime" => MountOption::Atime,
            "noatime" => MountOption::NoAtime,
            "sync" => MountOption::Sync,
            "async" => MountOption::Async,
            "dirsync" => MountOption::DirSync,
            other => MountOption::CUSTOM(other.to_string()),
        });
    }
    let mut config = Config::default();
    config.mount_options = opts;
    // A root mount serves a container rootfs: every user may enter, modes enforced by the
    // kernel (default_permissions).
    config.acl = if cfg.allow_other || sys::euid() == 0 {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(cfg.threads);
    config.clone_fd = true;
    config
}

/// Mounts and serves until unmounted. With `notify`, reports readiness (or the error) to
/// the waiting parent once the mount is live.
pub fn serve(cfg: &MountConfig, notify: Option<process::ReadyNotifier>) -> Result<(), MountError> {
    let mount_err = |source: std::io::Error| MountError::Mount {
        path: cfg.mountpoint.clone(),
        source,
    };
    let gate = std::sync::Arc::new(crate::fs::gate::WriteGate::new());
    // Dropped (withdrawing its request) only after the session ends.
    let idle_poll = if cfg.idle_poll {
        IdlePoll::start()
    } else {
        None
    };
    let started = (|| {
        let held = match &cfg.hold_lock {
            Some(p) => match sys::lock::FileLock::try_lock(p, sys::lock::LockKind::Exclusive)? {
                Some(l) => Some(l),
                None => {
                    return Err(std::io::Error::other(format!(
                        "{} is in use: another daemon serves this container",
                        p.display()
                    )));
                }
            },
            None => None,
        };
        sys::raise_nofile_limit();
        sys::set_umask(0);
        let stack = LayerStack::open(cfg.upper.as_deref(), &cfg.lowers)?;
        let (work, whiteout) = match &cfg.work {
            Some(w) if !cfg.read_only => {
                let (fd, format) = prepare_work(w, cfg.whiteout)?;
                (Some(fd), format)
            }
            _ => (None, WhiteoutFormat::Overlay),
        };
        info!("whiteouts are written as {whiteout:?} format");
        let fs = UnionFs::new(stack, work, whiteout).map_err(std::io::Error::from)?;
        let tracer = fs.tracer();
        tracer.set_log(cfg.trace);
        let adapter = FuseAdapter::new(
            fs,
            CachePolicy { ttl: cfg.ttl },
            cfg.passthrough && sys::may_passthrough(),
        )
        .with_gate(gate.clone())
        .with_meter(idle_poll.as_ref().map(IdlePoll::meter))
        .with_uring(cfg.uring);
        let adapter = std::sync::Arc::new(adapter);
        let session = Session::new(DevFuse(adapter.clone()), &cfg.mountpoint, &fuse_config(cfg))?;
        // Before the session reads INIT: the adapter registers passthrough backing files
        // with the device, and the ring threads wait for INIT.
        adapter.set_device(session.as_fd().try_clone_to_owned()?);
        let rings = if cfg.uring {
            Some(Rings::start(
                adapter,
                session.as_fd().try_clone_to_owned()?,
            )?)
        } else {
            None
        };
        Ok::<_, std::io::Error>((session, held, tracer, rings))
    })();
    let (mut session, _held, tracer, rings) = match started {
        Ok(s) => s,
        Err(e) => {
            let err = mount_err(e);
            if let Some(n) = notify {
                n.failed(&err.to_string());
            }
            return Err(err);
        }
    };
    let pid_path = write_pid_file(cfg).ok();
    info!(
        "mounted {} ({} lower layer(s), {})",
        cfg.mountpoint.display(),
        cfg.lowers.len(),
        if cfg.upper.is_some() {
            "writable"
        } else {
            "read-only"
        }
    );
    let mut unmounter = session.unmount_callable();
    process::stop_on_signals(move || {
        let _ = unmounter.unmount();
    });
    // After the signal mask is set, so that its threads inherit it.
    let _control = match control::ControlServer::start(&cfg.mountpoint, gate, tracer, sys::euid()) {
        Ok(c) => Some(c),
        Err(e) => {
            log::warn!("no control socket (commit cannot pause this mount): {e}");
            None
        }
    };
    if let Some(n) = notify {
        n.ready();
    }
    let result = session.run().map_err(mount_err);
    if let Some(r) = rings {
        r.join();
    }
    if let Some(p) = pid_path {
        let _ = fs::remove_file(p);
    }
    debug!("daemon for {} exits", cfg.mountpoint.display());
    result
}

/// Opens (creating it if needed) the staging directory `WORK/work`, clears what an
/// interrupted run left there, and picks the whiteout format: overlayfs's character device
/// where mknod is permitted, else `.wh.` files.
fn prepare_work(
    workdir: &Path,
    forced: Option<WhiteoutFormat>,
) -> std::io::Result<(std::os::fd::OwnedFd, WhiteoutFormat)> {
    let staging = workdir.join("work");
    match fs::create_dir(&staging) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let fd = sys::open_root(&staging)?;
    for e in sys::read_dir(fd.as_fd()).map_err(std::io::Error::from)? {
        crate::fs::remove_tree(fd.as_fd(), &e.name).map_err(std::io::Error::from)?;
    }
    let format = match forced {
        Some(f) => f,
        None => {
            let probe = std::ffi::OsStr::new("#ufsd.whiteout-probe");
            match sys::mknod_at(fd.as_fd(), probe, libc::S_IFCHR, 0) {
                Ok(()) => {
                    let _ = sys::unlink_at(fd.as_fd(), probe, false);
                    WhiteoutFormat::Overlay
                }
                Err(_) => WhiteoutFormat::Oci,
            }
        }
    };
    Ok((fd, format))
}

/// Unmounts `mountpoint` and waits for its daemon to exit.
pub fn unmount(mountpoint: &Path, lazy: bool) -> Result<(), MountError> {
    let mnt = fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_path_buf());
    match mountinfo::mount_at(&mnt) {
        Some(m) if m.fs_type == format!("fuse.{FS_SUBTYPE}") => {}
        _ => return Err(MountError::NotMounted(mnt)),
    }
    let pid = daemon_pid(&mnt);
    match sys::unmount(&mnt, lazy) {
        Ok(()) => {}
        Err(sys::Errno::EBUSY) => return Err(MountError::Busy(mnt)),
        Err(sys::Errno::EPERM) => {
            let status = std::process::Command::new("fusermount3")
                .arg("-u")
                .args(lazy.then_some("-z"))
                .arg(&mnt)
                .status();
            if !matches!(status, Ok(s) if s.success()) {
                return Err(MountError::Unmount {
                    path: mnt,
                    source: sys::Errno::EPERM,
                });
            }
        }
        Err(source) => return Err(MountError::Unmount { path: mnt, source }),
    }
    if let Some(pid) = pid {
        let deadline = Instant::now() + Duration::from_secs(30);
        while process::process_alive(pid) {
            if lazy {
                // A lazily detached mount lives on until its last user goes.
                break;
            }
            if Instant::now() > deadline {
                return Err(MountError::DaemonStuck(mnt));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}
