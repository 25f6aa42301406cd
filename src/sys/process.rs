//! Process plumbing for the mount daemon: fork into the background with a readiness pipe,
//! so that `ufsd mount` returns only once the mount is live (and reports the daemon's error
//! when it is not), and detach from the terminal.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

/// Which side of the fork we are on.
pub enum Forked {
    /// The foreground process: wait on the pipe, then exit with the daemon's verdict.
    Parent(ReadyWaiter),
    /// The daemon: mount, then say ready (or failed).
    Child(ReadyNotifier),
}

/// Read end of the readiness pipe, in the process the user started.
pub struct ReadyWaiter {
    pipe: File,
}

/// Write end of the readiness pipe, in the daemon.
pub struct ReadyNotifier {
    pipe: File,
}

impl ReadyWaiter {
    /// Blocks until the daemon reports. `Ok(())` once the mount is live, otherwise the
    /// daemon's one-line error.
    pub fn wait(mut self) -> Result<(), String> {
        let mut msg = String::new();
        let _ = self.pipe.read_to_string(&mut msg);
        match msg.strip_prefix("OK") {
            Some(_) => Ok(()),
            None => match msg.strip_prefix("ERR ") {
                Some(err) => Err(err.trim_end().to_string()),
                None => Err("the daemon exited before the mount was ready".to_string()),
            },
        }
    }
}

impl ReadyNotifier {
    /// Tells the waiting parent that the mount is live.
    pub fn ready(mut self) {
        let _ = self.pipe.write_all(b"OK\n");
    }

    /// Tells the waiting parent why the mount failed.
    pub fn failed(mut self, err: &str) {
        let line = err.replace('\n', " ");
        let _ = self.pipe.write_all(format!("ERR {line}\n").as_bytes());
    }
}

/// Forks; the child starts a new session so that it outlives the terminal and the
/// `mount.fuse3` helper that may have started it. Must be called before any thread exists.
pub fn fork_daemon() -> io::Result<Forked> {
    let (read, write): (OwnedFd, OwnedFd) = nix::unistd::pipe().map_err(io::Error::from)?;
    // SAFETY: called while the process is single-threaded (before the FUSE session starts),
    // so the child may run arbitrary code.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(write);
            Ok(Forked::Parent(ReadyWaiter {
                pipe: File::from(read),
            }))
        }
        nix::unistd::ForkResult::Child => {
            drop(read);
            let _ = nix::unistd::setsid();
            Ok(Forked::Child(ReadyNotifier {
                pipe: File::from(write),
            }))
        }
    }
}

/// Points stdin, stdout and stderr at /dev/null, or stdout and stderr at `log` when given, so
/// that the daemon holds no terminal and no pipe of whoever started it.
pub fn detach_stdio(log: Option<&File>) -> io::Result<()> {
    let null = File::options().read(true).write(true).open("/dev/null")?;
    let out = log.map(|f| f.as_raw_fd()).unwrap_or(null.as_raw_fd());
    for (src, dst) in [(null.as_raw_fd(), 0), (out, 1), (out, 2)] {
        // SAFETY: dup2 onto the standard descriptors, which this process owns.
        if unsafe { libc::dup2(src, dst) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether a process with this pid still exists (zombies count as gone).
pub fn process_alive(pid: i32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/stat"));
    match status {
        // The state is the field after the parenthesised command name.
        Ok(s) => s
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// This process's id.
pub fn pid() -> i32 {
    std::process::id() as i32
}

/// Runs `stop` on a dedicated thread when SIGTERM, SIGINT or SIGHUP arrives. The signals are
/// blocked in the calling thread first, so every thread started after this inherits the
/// block and only the waiting thread receives them.
pub fn stop_on_signals(stop: impl FnOnce() + Send + 'static) {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    if set.thread_block().is_err() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("ufsd-signals".into())
        .spawn(move || {
            if set.wait().is_ok() {
                stop();
            }
        });
}
