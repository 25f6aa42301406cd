//! The control socket of a mount: a unix socket beside the daemon's pid file
//! (`/run/ufsd/<hash>.sock` for root) through which `ufsd commit` pauses the mount's writes.
//!
//! Protocol: one command per line, one reply line per command, `ok ...` or `error ...`.
//!
//! ```text
//! pause     -> ok paused           mutating requests wait; those in flight have finished
//! resume    -> ok resumed          undoes this connection's pause
//! status    -> ok paused=no in_flight=0 waiting=0 pid=1234
//! ```
//!
//! Only root and the user who mounted may connect usefully: the peer's uid is read with
//! `SO_PEERCRED` and anyone else gets one `error permission denied` line. A pause belongs
//! to its connection: when the connection closes (the committing process exits or dies),
//! the pause is undone, so a crashed commit never leaves a mount frozen. New commands (such
//! as `trace on|off`) are added in [`Session::handle`].

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use log::{debug, warn};
use thiserror::Error;

use crate::fs::gate::WriteGate;
use crate::sys;

/// The control socket of the daemon serving `mountpoint` (canonical).
pub fn socket_path(mountpoint: &Path) -> PathBuf {
    super::pid_file(mountpoint).with_extension("sock")
}

/// Why talking to a mount's control socket failed.
#[derive(Debug, Error)]
pub enum ControlError {
    #[error("{0}: no control socket (not a ufsd mount, or its daemon is older or gone)")]
    NoSocket(PathBuf),
    #[error("control socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the daemon of {mountpoint} refused {command:?}: {reason}")]
    Refused {
        mountpoint: PathBuf,
        command: String,
        reason: String,
    },
}

/// The server side, run by the daemon. Dropping it removes the socket file.
pub struct ControlServer {
    path: PathBuf,
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl ControlServer {
    /// Binds the socket for `mountpoint` and serves it on a background thread. `owner` is
    /// the uid allowed besides root.
    pub fn start(mountpoint: &Path, gate: Arc<WriteGate>, owner: u32) -> io::Result<ControlServer> {
        let path = socket_path(mountpoint);
        // A socket left by a daemon that died; a live daemon on this mount point was
        // refused earlier (already mounted).
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        // Anyone may connect; SO_PEERCRED decides who is obeyed.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
        std::thread::Builder::new()
            .name("ufsd-control".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    match conn {
                        Ok(stream) => {
                            let gate = gate.clone();
                            let _ = std::thread::Builder::new()
                                .name("ufsd-control-conn".into())
                                .spawn(move || serve_connection(stream, gate, owner));
                        }
                        Err(e) => warn!("control socket: accept: {e}"),
                    }
                }
            })?;
        Ok(ControlServer { path })
    }
}

/// One connection's state: whether it holds a pause.
struct Session {
    gate: Arc<WriteGate>,
    paused: bool,
}

impl Session {
    /// The reply line (without newline) to one command line.
    fn handle(&mut self, line: &str) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["pause"] => {
                if !self.paused {
                    self.gate.pause();
                    self.paused = true;
                }
                "ok paused".to_string()
            }
            ["resume"] => {
                if self.paused {
                    self.gate.resume();
                    self.paused = false;
                    "ok resumed".to_string()
                } else {
                    "error this connection holds no pause".to_string()
                }
            }
            ["status"] => {
                let s = self.gate.status();
                format!(
                    "ok paused={} in_flight={} waiting={} pid={}",
                    if s.paused { "yes" } else { "no" },
                    s.in_flight,
                    s.waiting,
                    sys::process::pid()
                )
            }
            [] => "error empty command".to_string(),
            _ => format!("error unknown command {line:?} (pause, resume, status)"),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.paused {
            debug!("control connection closed while paused: resuming");
            self.gate.resume();
        }
    }
}

fn serve_connection(stream: UnixStream, gate: Arc<WriteGate>, owner: u32) {
    let mut out = match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    };
    match sys::peer_uid(stream.as_fd()) {
        Ok(uid) if uid == 0 || uid == owner => {}
        Ok(uid) => {
            let _ = writeln!(
                out,
                "error permission denied: uid {uid} may not control this mount (only root or uid {owner})"
            );
            return;
        }
        Err(e) => {
            let _ = writeln!(out, "error cannot tell who is connecting: {e}");
            return;
        }
    }
    let mut session = Session {
        gate,
        paused: false,
    };
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        let reply = session.handle(line.trim());
        if writeln!(out, "{reply}").is_err() {
            break;
        }
    }
}

/// A connection to a mount's control socket.
pub struct ControlClient {
    mountpoint: PathBuf,
    path: PathBuf,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl ControlClient {
    /// Connects to the daemon serving `mountpoint` (canonical).
    pub fn connect(mountpoint: &Path) -> Result<ControlClient, ControlError> {
        // Another user's daemon (root's, say) keeps its socket in its own runtime directory.
        let mut path = socket_path(mountpoint);
        if !path.exists() {
            let root_path = PathBuf::from("/run/ufsd").join(path.file_name().unwrap_or_default());
            if root_path.exists() {
                path = root_path;
            }
        }
        let io_err = |source| ControlError::Io {
            path: path.clone(),
            source,
        };
        let writer = match UnixStream::connect(&path) {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(ControlError::NoSocket(mountpoint.to_path_buf()));
            }
            Err(e) => return Err(io_err(e)),
        };
        let reader = BufReader::new(writer.try_clone().map_err(io_err)?);
        Ok(ControlClient {
            mountpoint: mountpoint.to_path_buf(),
            path,
            writer,
            reader,
        })
    }

    /// Sends one command and returns what follows `ok ` in the reply.
    pub fn request(&mut self, command: &str) -> Result<String, ControlError> {
        let io_err = |source| ControlError::Io {
            path: self.path.clone(),
            source,
        };
        // The daemon may already have answered (a refusal) and closed: read that reply.
        let sent = writeln!(self.writer, "{command}");
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).map_err(io_err)?;
        if n == 0 {
            sent.map_err(io_err)?;
            return Err(io_err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the daemon closed the connection",
            )));
        }
        let line = line.trim_end();
        match line.strip_prefix("ok") {
            Some(rest) => Ok(rest.trim_start().to_string()),
            None => Err(ControlError::Refused {
                mountpoint: self.mountpoint.clone(),
                command: command.to_string(),
                reason: line.strip_prefix("error ").unwrap_or(line).to_string(),
            }),
        }
    }

    /// Pauses the mount's writes until the returned guard is dropped (or this process
    /// exits: the daemon resumes when the connection closes).
    pub fn pause(mut self) -> Result<Paused, ControlError> {
        self.request("pause")?;
        Ok(Paused { client: self })
    }
}

/// A mount paused through its control socket; resumes on drop.
pub struct Paused {
    client: ControlClient,
}

impl Paused {
    /// Resumes now and reports a failure (dropping resumes too, silently).
    pub fn resume(mut self) -> Result<(), ControlError> {
        self.client.request("resume").map(drop)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = self.client.writer.shutdown(std::net::Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protocol_and_a_pause_ending_with_its_connection() {
        let gate = Arc::new(WriteGate::new());
        let mut s = Session {
            gate: gate.clone(),
            paused: false,
        };
        assert!(
            s.handle("status")
                .starts_with("ok paused=no in_flight=0 waiting=0 pid=")
        );
        assert_eq!(s.handle("resume"), "error this connection holds no pause");
        assert_eq!(s.handle("pause"), "ok paused");
        // A second pause on one connection is the same pause.
        assert_eq!(s.handle("pause"), "ok paused");
        assert!(gate.status().paused);
        assert!(s.handle("status").starts_with("ok paused=yes"));
        assert_eq!(s.handle("resume"), "ok resumed");
        assert!(!gate.status().paused);
        assert!(s.handle("trace on").starts_with("error unknown command"));
        assert_eq!(s.handle(""), "error empty command");
        s.handle("pause");
        drop(s);
        assert!(!gate.status().paused, "a closed connection keeps its pause");
    }
}
