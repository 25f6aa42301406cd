//! Counting the FUSE requests the kernel sends to one mount, from its own
//! `fuse:fuse_request_send` tracepoint (Linux 6.14 and later), in a private tracing
//! instance filtered on the mount's connection, as `scripts/benchlib/trace.py` does.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const TRACEFS: &str = "/sys/kernel/tracing";
const EVENT: &str = "events/fuse/fuse_request_send";

/// A running count of the requests sent to one mount.
pub struct RequestTrace {
    instance: PathBuf,
}

impl RequestTrace {
    /// Starts counting the requests sent to the FUSE mount at `mnt`. Panics, naming what
    /// is missing, on a kernel without the tracepoint.
    pub fn start(mnt: &Path) -> RequestTrace {
        let root = Path::new(TRACEFS);
        assert!(
            root.join(EVENT).is_dir(),
            "{TRACEFS}/{EVENT} is missing: these tests need tracefs mounted there and Linux 6.14 or later"
        );
        let instance =
            root.join("instances")
                .join(format!("ufsd-test-{}-{}", std::process::id(), unique()));
        fs::create_dir(&instance).expect("creating a tracing instance");
        let trace = RequestTrace { instance };
        let dev = fs::metadata(mnt).expect("stat of the mount point").dev();
        // The kernel's dev_t layout: major above 20 bits of minor.
        let kdev = (libc::major(dev) << 20) | libc::minor(dev);
        trace.write(
            &format!("{EVENT}/filter"),
            &format!("connection == {kdev}\n"),
        );
        trace.write(&format!("{EVENT}/enable"), "1\n");
        trace
    }

    /// Stops counting and returns the requests seen.
    pub fn stop(self) -> Requests {
        self.write(&format!("{EVENT}/enable"), "0\n");
        let text = fs::read_to_string(self.instance.join("trace")).expect("reading the trace");
        let mut counts = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            // "... opcode 35 (FUSE_CREATE) len 60"
            if let Some(rest) = line.split(" (FUSE_").nth(1)
                && let Some(name) = rest.split(')').next()
            {
                *counts.entry(name.to_string()).or_insert(0) += 1;
            }
        }
        Requests(counts)
    }

    fn write(&self, rel: &str, value: &str) {
        fs::write(self.instance.join(rel), value)
            .unwrap_or_else(|e| panic!("writing {value:?} to {rel} of the tracing instance: {e}"));
    }
}

/// Requests by opcode name without `FUSE_`.
#[derive(Debug)]
pub struct Requests(pub BTreeMap<String, usize>);

impl Requests {
    /// How many `op` requests were sent (`"FLUSH"` for `FUSE_FLUSH`).
    pub fn of(&self, op: &str) -> usize {
        self.0.get(op).copied().unwrap_or(0)
    }
}

impl Drop for RequestTrace {
    fn drop(&mut self) {
        let _ = fs::write(self.instance.join(EVENT).join("enable"), "0\n");
        let _ = fs::remove_dir(&self.instance);
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
