//! The daemon's runtime record: a pid file named after the mount point, under
//! `/run/ufsd` for root (else `$XDG_RUNTIME_DIR/ufsd`), holding the pid, the mount point
//! and the layers, so that other commands (`umount`, `diff`, `commit`) find the daemon
//! and the layers of a mount point. The control socket sits beside it.

use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::MountConfig;
use crate::sys::{self, process};

/// The runtime directory holding daemon pid files.
fn runtime_dir() -> PathBuf {
    if sys::euid() == 0 {
        PathBuf::from("/run/ufsd")
    } else if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        PathBuf::from(d).join("ufsd")
    } else {
        std::env::temp_dir().join(format!("ufsd-{}", sys::euid()))
    }
}

/// FNV-1a, to name a pid file after a mount point of any length.
fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// The pid file of the daemon serving `mountpoint` (canonical).
pub fn pid_file(mountpoint: &Path) -> PathBuf {
    runtime_dir().join(format!(
        "{:016x}.pid",
        fnv64(mountpoint.as_os_str().as_bytes())
    ))
}

/// What a running daemon serves, as recorded in its pid file, so that other commands
/// (`ufsd diff MOUNTPOINT`, `ufsd umount`) find the layers and the daemon from a mount point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountRecord {
    pub pid: i32,
    pub mountpoint: PathBuf,
    pub upper: Option<PathBuf>,
    pub work: Option<PathBuf>,
    /// Lower layers, top-most first.
    pub lowers: Vec<PathBuf>,
}

/// The pid file: the pid on the first line, the mount point on the second (what older
/// readers and the tests parse), then `key=path` fields each ended by a NUL.
pub(super) fn write_pid_file(cfg: &MountConfig) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let path = pid_file(&cfg.mountpoint);
    // Explicit modes: the daemon runs with umask 0, and nobody else may rewrite what
    // other commands trust to find a mount's layers.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(runtime_dir())?;
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&tmp)?;
    writeln!(f, "{}", process::pid())?;
    f.write_all(cfg.mountpoint.as_os_str().as_bytes())?;
    f.write_all(b"\n")?;
    let fields = cfg
        .upper
        .iter()
        .map(|u| ("upper", u))
        .chain(cfg.work.iter().map(|w| ("work", w)))
        .chain(cfg.lowers.iter().map(|l| ("lower", l)));
    for (key, p) in fields {
        f.write_all(key.as_bytes())?;
        f.write_all(b"=")?;
        f.write_all(p.as_os_str().as_bytes())?;
        f.write_all(b"\0")?;
    }
    drop(f);
    fs::rename(&tmp, &path)?;
    Ok(path)
}

/// The record of the daemon serving `mountpoint` (canonical), if its pid file names it.
pub fn mount_record(mountpoint: &Path) -> Option<MountRecord> {
    use std::os::unix::ffi::OsStringExt;
    let text = fs::read(pid_file(mountpoint)).ok()?;
    let mut lines = text.splitn(3, |b| *b == b'\n');
    let pid = std::str::from_utf8(lines.next()?)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if lines.next()? != mountpoint.as_os_str().as_bytes() {
        return None;
    }
    let mut rec = MountRecord {
        pid,
        mountpoint: mountpoint.to_path_buf(),
        upper: None,
        work: None,
        lowers: Vec::new(),
    };
    for field in lines.next().unwrap_or_default().split(|b| *b == 0) {
        let Some(eq) = field.iter().position(|b| *b == b'=') else {
            continue;
        };
        let p = PathBuf::from(std::ffi::OsString::from_vec(field[eq + 1..].to_vec()));
        match &field[..eq] {
            b"upper" => rec.upper = Some(p),
            b"work" => rec.work = Some(p),
            b"lower" => rec.lowers.push(p),
            _ => {}
        }
    }
    Some(rec)
}

/// Runtime records left by daemons that are gone (killed, or crashed before cleaning
/// up): pid files whose process is not running, their control sockets, and temp files
/// of an interrupted write. A daemon whose mount was lazily detached still runs, so its
/// record is not stale.
pub fn stale_records() -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(runtime_dir()) else {
        return Vec::new();
    };
    let pid_is_stale = |path: &Path| {
        fs::read_to_string(path)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
            .is_none_or(|pid| !is_ufsd_process(pid))
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let stale = match path.extension().and_then(|x| x.to_str()) {
            // A daemon renames its temp file at once; an old one was left by a crash.
            Some("tmp") => e.metadata().and_then(|m| m.modified()).is_ok_and(|t| {
                t.elapsed()
                    .is_ok_and(|age| age > std::time::Duration::from_secs(10))
            }),
            Some("pid") => pid_is_stale(&path),
            Some("sock") => pid_is_stale(&path.with_extension("pid")),
            _ => false,
        };
        if stale {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Whether `pid` runs and is a ufsd (a dead daemon's pid may have been reused).
fn is_ufsd_process(pid: i32) -> bool {
    process::process_alive(pid)
        && fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "ufsd")
}

/// The daemon pid recorded for `mountpoint`.
pub fn daemon_pid(mountpoint: &Path) -> Option<i32> {
    mount_record(mountpoint).map(|r| r.pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = MountConfig::new(
            vec![PathBuf::from("/l/top"), PathBuf::from("/l/with\nnewline")],
            dir.path().join("mnt"),
        );
        cfg.upper = Some(PathBuf::from("/u"));
        cfg.work = Some(PathBuf::from("/w"));
        let written = write_pid_file(&cfg).unwrap();
        let rec = mount_record(&cfg.mountpoint).unwrap();
        let _ = fs::remove_file(written);
        assert_eq!(rec.pid, process::pid());
        assert_eq!(rec.upper, cfg.upper);
        assert_eq!(rec.work, cfg.work);
        assert_eq!(rec.lowers, cfg.lowers);
        assert!(mount_record(Path::new("/nowhere")).is_none());
    }
}
