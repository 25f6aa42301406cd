//! The control socket of a mount: a unix socket beside the daemon's pid file
//! (`/run/ufsd/<hash>.sock` for root) through which `ufsd commit` pauses the mount's writes.
//!
//! Protocol: one command per line, one reply line per command, `ok ...` or `error ...`.
//!
//! ```text
//! pause     -> ok paused           mutating requests wait; those in flight have finished
//! resume    -> ok resumed          undoes this connection's pause
//! status    -> ok paused=no in_flight=0 waiting=0 pid=1234 trace_log=no trace_listeners=0
//! trace on  -> ok tracing          then, as they happen: `trace copy-up /etc/passwd ...`
//! trace off -> ok trace off        this connection stops receiving trace lines
//! trace log on|off -> ok trace log on|off   trace lines to the daemon log (as -o trace)
//! ```
//!
//! Trace lines (see [`crate::fs::trace`]) start with `trace `, so a client tells them from
//! replies; a connection's listening ends with the connection.
//!
//! Only root and the user who mounted may connect usefully: the peer's uid is read with
//! `SO_PEERCRED` and anyone else gets one `error permission denied` line. A pause belongs
//! to its connection: when the connection closes (the committing process exits or dies),
//! the pause is undone, so a crashed commit never leaves a mount frozen. New commands are
//! added in [`Session::handle`].

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::Receiver;

use log::{debug, warn};
use thiserror::Error;

use crate::fs::gate::WriteGate;
use crate::fs::trace::Tracer;
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
    pub fn start(
        mountpoint: &Path,
        gate: Arc<WriteGate>,
        tracer: Arc<Tracer>,
        owner: u32,
    ) -> io::Result<ControlServer> {
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
                            let session = Session::new(gate.clone(), tracer.clone());
                            let _ = std::thread::Builder::new()
                                .name("ufsd-control-conn".into())
                                .spawn(move || serve_connection(stream, session, owner));
                        }
                        Err(e) => warn!("control socket: accept: {e}"),
                    }
                }
            })?;
        Ok(ControlServer { path })
    }
}

/// One connection's state: whether it holds a pause, whether it listens to trace lines.
struct Session {
    gate: Arc<WriteGate>,
    paused: bool,
    tracer: Arc<Tracer>,
    /// This connection's listener id while it listens.
    listening: Option<u64>,
    /// Trace lines of a `trace on` just handled, for the connection to forward.
    new_listener: Option<Receiver<String>>,
}

impl Session {
    fn new(gate: Arc<WriteGate>, tracer: Arc<Tracer>) -> Session {
        Session {
            gate,
            paused: false,
            tracer,
            listening: None,
            new_listener: None,
        }
    }

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
                    "ok paused={} in_flight={} waiting={} pid={} trace_log={} trace_listeners={}",
                    if s.paused { "yes" } else { "no" },
                    s.in_flight,
                    s.waiting,
                    sys::process::pid(),
                    if self.tracer.logging() { "yes" } else { "no" },
                    self.tracer.listeners(),
                )
            }
            ["trace", "on"] => {
                if self.listening.is_none() {
                    let (id, rx) = self.tracer.subscribe();
                    self.listening = Some(id);
                    self.new_listener = Some(rx);
                }
                "ok tracing".to_string()
            }
            ["trace", "off"] => {
                if let Some(id) = self.listening.take() {
                    self.tracer.unsubscribe(id);
                }
                "ok trace off".to_string()
            }
            ["trace", "log", on @ ("on" | "off")] => {
                self.tracer.set_log(*on == "on");
                format!("ok trace log {on}")
            }
            [] => "error empty command".to_string(),
            _ => format!(
                "error unknown command {line:?} (pause, resume, status, trace on|off, trace log on|off)"
            ),
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(id) = self.listening.take() {
            self.tracer.unsubscribe(id);
        }
        if self.paused {
            debug!("control connection closed while paused: resuming");
            self.gate.resume();
        }
    }
}

fn serve_connection(stream: UnixStream, mut session: Session, owner: u32) {
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
    // Replies and forwarded trace lines share the socket: one line at a time.
    let shared = Arc::new(parking_lot::Mutex::new(match out.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    }));
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        let reply = session.handle(line.trim());
        if writeln!(shared.lock(), "{reply}").is_err() {
            break;
        }
        if let Some(rx) = session.new_listener.take() {
            let shared = shared.clone();
            // Ends when the listener is dropped (trace off, connection closed) or the
            // client stops reading.
            let _ = std::thread::Builder::new()
                .name("ufsd-trace".into())
                .spawn(move || {
                    for l in rx {
                        if writeln!(shared.lock(), "trace {l}").is_err() {
                            break;
                        }
                    }
                });
        }
    }
    drop(session);
    let _ = out.shutdown(std::net::Shutdown::Both);
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
        let mut n = self.reader.read_line(&mut line).map_err(io_err)?;
        // Trace lines of this connection may come before the reply.
        while n > 0 && line.starts_with("trace ") {
            line.clear();
            n = self.reader.read_line(&mut line).map_err(io_err)?;
        }
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

    /// Turns tracing on for this connection and calls `each` with every trace line (without
    /// the `trace ` prefix) until it returns false or the daemon closes the connection (the
    /// mount ended).
    pub fn follow_trace(mut self, mut each: impl FnMut(&str) -> bool) -> Result<(), ControlError> {
        self.request("trace on")?;
        let mut line = String::new();
        loop {
            line.clear();
            let n = self
                .reader
                .read_line(&mut line)
                .map_err(|source| ControlError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            if n == 0 {
                return Ok(());
            }
            if let Some(l) = line.trim_end().strip_prefix("trace ")
                && !each(l)
            {
                return Ok(());
            }
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
        let tracer = Arc::new(Tracer::default());
        let mut s = Session::new(gate.clone(), tracer.clone());
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
        assert!(
            s.handle("trace sideways")
                .starts_with("error unknown command")
        );
        assert_eq!(s.handle("trace on"), "ok tracing");
        assert!(tracer.enabled());
        assert!(
            s.handle("status")
                .ends_with("trace_log=no trace_listeners=1")
        );
        assert_eq!(s.handle("trace off"), "ok trace off");
        assert!(!tracer.enabled());
        assert_eq!(s.handle("trace log on"), "ok trace log on");
        assert!(
            s.handle("status")
                .ends_with("trace_log=yes trace_listeners=0")
        );
        assert_eq!(s.handle("trace log off"), "ok trace log off");
        s.handle("trace on");
        assert_eq!(s.handle(""), "error empty command");
        s.handle("pause");
        drop(s);
        assert!(!gate.status().paused, "a closed connection keeps its pause");
        assert!(!tracer.enabled(), "a closed connection keeps listening");
    }
}
