//! The write path of ufsd against kernel overlayfs as the oracle.
//!
//! For each seed, a fresh ufsd mount and a fresh kernel overlay mount are stacked over the
//! same three lower layers (see `oracle/fixture.rs`), each with its own upper and work
//! directory. A seeded generator (`oracle/generate.rs`) produces a few hundred operations
//! (create, write, truncate, unlink, mkdir, rmdir, rename with flags, link, symlink, mkfifo,
//! chmod, chown, utimensat, xattrs, and reads, stats and listings between them; some as an
//! unprivileged user, some through descriptors held open across other operations); each
//! is applied to both mounts and the results must be equal: the same value, or the same
//! errno.
//! The one deliberate difference, a directory rename the kernel refuses with EXDEV, is
//! emulated on the kernel side (`oracle/emulate.rs`). After the sequence the two trees must
//! be equal, and the on-disk formats are cross-checked: the kernel mounted over ufsd's upper
//! must show what a fresh ufsd mount of it shows, and ufsd mounted over the kernel's upper
//! what a fresh kernel mount of it shows.
//!
//! Environment:
//! - `UFSD_ORACLE_SEED=N`     run only seed N (replay);
//! - `UFSD_ORACLE_SEEDS=K`    run seeds 1 to K, or `A-B` for seeds A to B (default: 1 to 16 and the regression seeds);
//! - `UFSD_ORACLE_OPS=M`      operations per seed (default 600);
//! - `UFSD_ORACLE_TRACE=1`    print every operation and both results;
//! - `UFSD_ORACLE_KEEP=1`     keep the temporary directory (layers, uppers, ufsd logs);
//! - `UFSD_ORACLE_SHRINK=1`   minimise each failing seed (its first differing operation, or
//!   else its tree difference) to the fewest operations that still reproduce it on fresh
//!   mounts, and print that sequence;
//! - `UFSD_ORACLE_AVOID=a,b`  never operate on names `a` or `b` (or below them), to get
//!   past a known bug to the next one, e.g. `UFSD_ORACLE_AVOID=hl1,hl2,hl3,hl4`;
//! - `UFSD_ORACLE_SELFTEST=1` replace ufsd by a second kernel overlay mounted with
//!   `redirect_dir=on` (which renames lower directories itself, as ufsd does). That run
//!   must pass: it proves the generator, the comparison and the EXDEV emulation sound and
//!   deterministic. `harness_selftest_kernel_against_kernel` always runs it.
//!
//! A failure prints the seed, the operation's index, the operation and both results, the
//! operations before it and the command that replays it.
//!
//! These tests mount: they need root and /dev/fuse, as CI has.

mod common;
#[path = "oracle/emulate.rs"]
mod emulate;
#[path = "oracle/fixture.rs"]
mod fixture;
#[path = "oracle/generate.rs"]
mod generate;
#[path = "oracle/ops.rs"]
mod ops;
#[path = "oracle/run.rs"]
mod run;
#[path = "oracle/shrink.rs"]
mod shrink;
#[path = "oracle/sys.rs"]
mod sys;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use run::{Impl, Run, panic_text};

struct Config {
    /// The test function, for replay hints.
    test_name: &'static str,
    seeds: Vec<u64>,
    ops: usize,
    selftest: bool,
    trace: bool,
    keep: bool,
    shrink: bool,
    avoid: Vec<Vec<u8>>,
    /// Mount ufsd with FUSE passthrough (the default of a root mount).
    passthrough: bool,
    /// Whether the generator may hold descriptors open read-only.
    ro_holds: bool,
}

/// Names avoided unless `UFSD_ORACLE_AVOID` says otherwise: the lower hard-link pairs.
/// Names of one lower inode are one FUSE inode in ufsd (fuser ties the inode number to
/// the node id), so a copy-up of one name cannot split it from descriptors and attribute
/// caches of the other, while overlayfs without `index` splits them at once: a documented
/// difference (docs/write-path.md, "Hard links"). Hard links are covered by the read-path,
/// write-rule and workload tests.
const DEFAULT_AVOID: &str = "hl1,hl2,hl3,hl4";

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

fn env_num(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v}: not a number"))
    })
}

/// `K` (seeds 1 to K), `A-B` (A to B), or empty (the default: 1 to 16 and the regression seeds).
/// Seeds of wide sweeps that once found a difference, run by default as well (the bugs
/// they found: tree copy-up renumbering directories and leaving lower readers behind,
/// setgid lost when a directory replaces a whiteout, setuid kept on `O_TRUNC` and on a
/// write to a file with no name left).
const REGRESSION_SEEDS: [u64; 8] = [123, 130, 143, 229, 295, 298, 355, 476];

fn seed_range(v: &str) -> Vec<u64> {
    let num = |s: &str| -> u64 {
        s.trim()
            .parse()
            .unwrap_or_else(|_| panic!("UFSD_ORACLE_SEEDS={v}: expected K or A-B"))
    };
    match v.split_once('-') {
        _ if v.trim().is_empty() => (1..=16).chain(REGRESSION_SEEDS.iter().copied()).collect(),
        Some((a, b)) => (num(a)..=num(b)).collect(),
        None => (1..=num(v)).collect(),
    }
}

impl Config {
    fn from_env(test_name: &'static str) -> Config {
        let seeds = match env_num("UFSD_ORACLE_SEED") {
            Some(s) => vec![s],
            None => seed_range(&std::env::var("UFSD_ORACLE_SEEDS").unwrap_or_default()),
        };
        Config {
            test_name,
            seeds,
            ops: env_num("UFSD_ORACLE_OPS").unwrap_or(600) as usize,
            selftest: env_flag("UFSD_ORACLE_SELFTEST"),
            trace: env_flag("UFSD_ORACLE_TRACE"),
            keep: env_flag("UFSD_ORACLE_KEEP"),
            shrink: env_flag("UFSD_ORACLE_SHRINK"),
            passthrough: false,
            ro_holds: true,
            avoid: std::env::var("UFSD_ORACLE_AVOID")
                .unwrap_or_else(|_| DEFAULT_AVOID.to_string())
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.as_bytes().to_vec())
                .collect(),
        }
    }
}

fn replay_hint(cfg: &Config, seed: u64, ops: usize) -> String {
    format!(
        "replay: {}UFSD_ORACLE_SEED={seed} UFSD_ORACLE_OPS={ops} UFSD_ORACLE_TRACE=1 \
         cargo test --release --test oracle {} -- --nocapture  (UFSD_ORACLE_SHRINK=1 to minimise)",
        if cfg.selftest {
            "UFSD_ORACLE_SELFTEST=1 "
        } else {
            ""
        },
        cfg.test_name,
    )
}

/// ufsd daemons whose command line names a path under `base`.
fn daemons_under(base: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let me = std::process::id().to_string();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name();
        if !name.as_bytes().iter().all(u8::is_ascii_digit) || name.as_bytes() == me.as_bytes() {
            continue;
        }
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let is_ufsd = args
            .first()
            .is_some_and(|a| Path::new(OsStr::from_bytes(a)).file_name() == Some("ufsd".as_ref()));
        let names_base = args
            .iter()
            .any(|a| Path::new(OsStr::from_bytes(a)).starts_with(base));
        if is_ufsd && names_base && common::process_running(name.to_str().unwrap().parse().unwrap())
        {
            out.push(String::from_utf8_lossy(&cmd).replace('\0', " "));
        }
    }
    out
}

/// ufsd without passthrough: every result must match the kernel's, descriptors held
/// across a copy-up included.
#[test]
fn write_path_matches_kernel_overlayfs() {
    run_oracle(Config::from_env("write_path_matches_kernel_overlayfs"));
}

/// ufsd with passthrough, as root mounts run by default; descriptors are held only
/// read-write (see `Gen::with_ro_holds`).
#[test]
fn write_path_with_passthrough_matches_kernel_overlayfs() {
    let mut cfg = Config::from_env("write_path_with_passthrough_matches_kernel_overlayfs");
    cfg.passthrough = true;
    cfg.ro_holds = false;
    run_oracle(cfg);
}

/// The harness against itself: kernel overlayfs with `redirect_dir=on` in ufsd's place
/// must agree with the reference on every operation (its directory renames checking the
/// EXDEV emulation). Fails if the generator, the comparison or the emulation is unsound,
/// say on a kernel that behaves differently, independently of ufsd.
#[test]
fn harness_selftest_kernel_against_kernel() {
    let mut cfg = Config::from_env("harness_selftest_kernel_against_kernel");
    cfg.selftest = true;
    run_oracle(cfg);
}

fn run_oracle(cfg: Config) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the oracle test mounts overlayfs and FUSE: run it as root (CI does)"
    );
    // Both mounts see the same umask; a fixed one keeps runs comparable across machines.
    sys::umask(0o022);
    let tmp = common::scratch();
    let base = fs::canonicalize(tmp.path()).unwrap();
    let lowers: Vec<PathBuf> = fixture::build(&base.join("lowers"));
    let lower_names = fixture::lower_names(&lowers);
    let lowers_before = fixture::fingerprint(&lowers);
    let cutoff = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (a, b) = if cfg.selftest {
        (Impl::Kernel("on"), Impl::Kernel("off"))
    } else {
        (
            Impl::Ufsd {
                passthrough: cfg.passthrough,
            },
            Impl::Kernel("off"),
        )
    };
    let run = Run {
        cfg: &cfg,
        lowers: lowers.iter().map(PathBuf::as_path).collect(),
        lower_names: &lower_names,
        base: &base,
        a,
        b,
        cutoff,
        stats: Default::default(),
    };

    let started = Instant::now();
    let mut failures = Vec::new();
    let mut failed_seeds = Vec::new();
    for &seed in &cfg.seeds {
        let r = catch_unwind(AssertUnwindSafe(|| run.seed(seed)));
        let f = r.unwrap_or_else(|p| {
            vec![format!(
                "seed {seed}: panicked: {}\n  {}\n",
                panic_text(&*p),
                replay_hint(&cfg, seed, cfg.ops)
            )]
        });
        if !f.is_empty() {
            failed_seeds.push(seed);
        }
        failures.extend(f);
    }
    eprintln!(
        "oracle: {} vs {}: {} seed(s) x {} operations in {:.1?}; failing seeds: {failed_seeds:?}\n\
         oracle: {:?}",
        a.name(),
        b.name(),
        cfg.seeds.len(),
        cfg.ops,
        started.elapsed(),
        run.stats.borrow(),
    );

    let lowers_after = fixture::fingerprint(&lowers);
    let mounts = common::mounts_under(&base);
    let daemons = daemons_under(&base);
    if cfg.keep {
        eprintln!("oracle: keeping {}", base.display());
        std::mem::forget(tmp);
    }
    if !mounts.is_empty() {
        failures.push(format!("mounts left behind: {mounts:?}"));
    }
    if !daemons.is_empty() {
        failures.push(format!("ufsd daemons left behind: {daemons:?}"));
    }
    if lowers_before != lowers_after {
        let changed: Vec<_> = lowers_after
            .iter()
            .filter(|l| !lowers_before.contains(l))
            .collect();
        failures.push(format!("a lower layer was written to: {changed:#?}"));
    }
    assert!(
        failures.is_empty(),
        "{} vs {}: {} failure(s) in seeds {failed_seeds:?}\n\n{}",
        a.name(),
        b.name(),
        failures.len(),
        failures.join("\n")
    );
}
