//! The runner: mounts the implementation under test (A) and the reference (B) side by
//! side, applies each generated operation to both and compares, then compares the trees and
//! cross-mounts the uppers.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::panic::catch_unwind;
use std::path::Path;

use super::common::{MountKind, Mounted, Snapshot, diff_snapshots, mount_ufsd, snapshot};
use super::generate::Gen;
use super::ops::{Held, Op, Outcome, Value, apply, explain};
use super::shrink::Want;
use super::{Config, emulate, replay_hint, sys};

/// Mismatches recorded per seed before it stops (a read-only mismatch does not stop it).
const MAX_MISMATCHES: usize = 5;
/// How often (in operations) the generator re-reads the reference tree.
pub const REFRESH_EVERY: usize = 4;
/// Operations shown before a mismatch.
const HISTORY: usize = 8;

/// An implementation of the union filesystem that can be mounted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    /// ufsd, with or without FUSE passthrough.
    Ufsd { passthrough: bool },
    /// Kernel overlayfs with this `redirect_dir=` value.
    Kernel(&'static str),
}

impl Impl {
    pub fn name(self) -> String {
        match self {
            Impl::Ufsd { passthrough: false } => "ufsd(nopassthrough)".to_string(),
            Impl::Ufsd { passthrough: true } => "ufsd".to_string(),
            Impl::Kernel("off") => "kernel".to_string(),
            Impl::Kernel(r) => format!("kernel(redirect_dir={r})"),
        }
    }

    /// Mounts over `lowers` with `upper` and a fresh work directory `work` at `mnt`.
    /// ufsd's log goes next to the work directory, to `WORK.log`.
    pub fn mount(self, lowers: &[&Path], upper: &Path, work: &Path, mnt: &Path) -> Mounted {
        for d in [upper, work, mnt] {
            fs::create_dir_all(d).unwrap();
        }
        match self {
            Impl::Ufsd { passthrough } => {
                let log = work.with_extension("log");
                let log = log.to_str().expect("UTF-8 temporary path");
                let mut args = vec!["--log-file", log];
                if !passthrough {
                    args.extend(["-o", "nopassthrough"]);
                }
                mount_ufsd(lowers, Some((upper, work)), mnt, &args)
            }
            Impl::Kernel(redirect) => mount_kernel(lowers, upper, work, mnt, redirect),
        }
    }
}

/// Kernel overlayfs with every feature that changes the on-disk format pinned, whatever
/// the module defaults are: no index, no metacopy, no xino, the given `redirect_dir`.
fn mount_kernel(
    lowers: &[&Path],
    upper: &Path,
    work: &Path,
    mnt: &Path,
    redirect: &str,
) -> Mounted {
    let lower: Vec<&str> = lowers.iter().map(|l| l.to_str().unwrap()).collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir={redirect},index=off,metacopy=off,xino=off",
        lower.join(":"),
        upper.to_str().unwrap(),
        work.to_str().unwrap(),
    );
    nix::mount::mount(
        Some("overlay"),
        mnt,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(data.as_str()),
    )
    .unwrap_or_else(|e| panic!("mount -t overlay -o {data} {}: {e}", mnt.display()));
    Mounted {
        path: fs::canonicalize(mnt).unwrap(),
        kind: MountKind::KernelOverlay,
    }
}

/// One run's shared state.
pub struct Run<'a> {
    pub cfg: &'a Config,
    pub lowers: Vec<&'a Path>,
    pub lower_names: &'a [Vec<u8>],
    pub base: &'a Path,
    /// The implementation under test and the reference.
    pub a: Impl,
    pub b: Impl,
    /// Times older than this are compared exactly.
    pub cutoff: i64,
    pub stats: std::cell::RefCell<Stats>,
}

/// What the operations did, to show that a passing run exercised something.
#[derive(Debug, Default)]
pub struct Stats {
    pub ops: usize,
    pub both_ok: usize,
    pub both_failed: usize,
    pub differed: usize,
    /// Directory renames the kernel refused and the oracle emulated.
    pub emulated: usize,
    /// Directory renames both refused with EXDEV.
    pub both_exdev: usize,
}

/// The two live mounts of one sequence and the descriptors held on each.
pub struct Pair {
    pub a: Mounted,
    pub b: Mounted,
    pub held_a: Held,
    pub held_b: Held,
    pub temps: u64,
}

/// One operation's results on both mounts.
pub struct Step {
    pub ra: Outcome,
    pub rb: Outcome,
    /// The kernel's EXDEV was replaced by the emulated directory rename.
    pub emulated: bool,
}

impl Step {
    pub fn same(&self) -> bool {
        self.ra == self.rb
    }
}

impl Pair {
    /// Closes the held descriptors and unmounts both, reporting a failed unmount.
    pub fn close(mut self) -> Result<(), String> {
        self.held_a.clear();
        self.held_b.clear();
        let ra = unmount(self.a);
        let rb = unmount(self.b);
        ra.and(rb)
    }
}

/// Unmounts `m`. A kernel overlay can be busy for a moment after the last file in it was
/// closed, while a process another test thread is spawning still holds the inherited
/// descriptor until it execs: retry that briefly before the guard's lazy fallback.
fn unmount(m: Mounted) -> Result<(), String> {
    if m.kind == MountKind::KernelOverlay {
        for _ in 0..50 {
            match nix::mount::umount(&m.path) {
                Err(nix::errno::Errno::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                _ => break,
            }
        }
    }
    m.unmount()
}

impl Run<'_> {
    /// Mounts A and B with fresh uppers under `dir`.
    pub fn mount_pair(&self, dir: &Path) -> Pair {
        let a = self.a.mount(
            &self.lowers,
            &dir.join("a-upper"),
            &dir.join("a-work"),
            &dir.join("a-mnt"),
        );
        let b = self.b.mount(
            &self.lowers,
            &dir.join("b-upper"),
            &dir.join("b-work"),
            &dir.join("b-mnt"),
        );
        Pair {
            a,
            b,
            held_a: Held::default(),
            held_b: Held::default(),
            temps: 0,
        }
    }

    /// Applies `op` to both mounts.
    pub fn step(&self, p: &mut Pair, op: &Op) -> Step {
        let ra = apply(op, &p.a.path, self.cutoff, &mut p.held_a);
        let mut rb = apply(op, &p.b.path, self.cutoff, &mut p.held_b);
        let mut emulated = false;
        // The kernel made its permission checks before its EXDEV, so the emulation of a
        // directory rename runs with the test's own (root) credentials.
        if let Op::Rename { from, to, flags } = op.inner()
            && rb.0 == Err(libc::EXDEV)
            && ra.0 != Err(libc::EXDEV)
            && emulate::applies(&p.b.path, from, to, flags.0)
        {
            p.temps += 1;
            let temp = format!(".oracle-xchg-{}", p.temps).into_bytes();
            rb =
                Outcome(emulate::rename(&p.b.path, from, to, flags.0, &temp).map(|()| Value::Unit));
            emulated = true;
            // A directory held open may be the one moved: renamed on ufsd, but emptied and
            // removed by the emulation, which is no longer the same object. Held
            // directories are not compared from here on.
            for slot in p.held_b.dir_slots() {
                p.held_a.close(slot);
                p.held_b.close(slot);
            }
        }
        Step { ra, rb, emulated }
    }

    fn count(&self, s: &Step) {
        let mut st = self.stats.borrow_mut();
        st.ops += 1;
        st.emulated += usize::from(s.emulated);
        match (&s.ra.0, &s.rb.0) {
            _ if !s.same() => st.differed += 1,
            (Ok(_), _) => st.both_ok += 1,
            (Err(e), _) => {
                st.both_failed += 1;
                st.both_exdev += usize::from(*e == libc::EXDEV);
            }
        }
    }

    pub fn line(&self, i: usize, op: &Op, s: &Step) -> String {
        let note = if s.emulated {
            " (EXDEV; emulated as mv does)"
        } else {
            ""
        };
        format!(
            "#{i} {op:?}\n      {}: {:?}\n      {}: {:?}{note}",
            self.a.name(),
            s.ra,
            self.b.name(),
            s.rb
        )
    }

    /// Runs one seed; returns its failures, each a self-contained message.
    pub fn seed(&self, seed: u64) -> Vec<String> {
        let dir = self.base.join(format!("seed-{seed}"));
        let mut pair = self.mount_pair(&dir);
        let rb_root = pair.b.path.clone();

        let mut failures = Vec::new();
        let mut history: VecDeque<String> = VecDeque::new();
        let mut ops = Vec::new();
        let mut first_mismatch = None;
        let mut generator =
            Gen::new(seed, self.lower_names, &self.cfg.avoid).with_ro_holds(self.cfg.ro_holds);
        let mut diverged = false;
        for i in 0..self.cfg.ops {
            if i % REFRESH_EVERY == 0 {
                generator.refresh(&rb_root);
            }
            let op = generator.next(&rb_root);
            check_no_reserved(&op);
            let s = self.step(&mut pair, &op);
            self.count(&s);
            ops.push(op.clone());
            let line = self.line(i, &op, &s);
            if self.cfg.trace {
                eprintln!("seed {seed} {line}");
            }
            if !s.same() {
                let mut msg = format!("seed {seed}: operation #{i} differs\n");
                if !history.is_empty() {
                    msg.push_str("  preceding operations:\n");
                    for h in &history {
                        msg.push_str(&format!("    {h}\n"));
                    }
                }
                msg.push_str(&format!("  >>> {line}\n"));
                if let Some(x) = explain(&s.ra, &s.rb) {
                    msg.push_str(&format!("      ({x})\n"));
                }
                msg.push_str(&format!("  {}\n", replay_hint(self.cfg, seed, i + 1)));
                failures.push(msg);
                first_mismatch.get_or_insert((ops.clone(), s));
                if op.mutates() || failures.len() >= MAX_MISMATCHES {
                    diverged = op.mutates();
                    break;
                }
            }
            history.push_back(line);
            if history.len() > HISTORY {
                history.pop_front();
            }
        }

        failures.extend(self.finish(seed, &dir, pair, diverged));
        if !failures.is_empty()
            && matches!(self.a, Impl::Ufsd { .. })
            && let Some(tail) = log_tail(&dir.join("a-work.log"))
        {
            failures.push(format!("seed {seed}: ufsd log (tail):\n{tail}"));
        }
        if self.cfg.shrink && !failures.is_empty() {
            let (ops, want) = match first_mismatch {
                Some((ops, s)) => (ops, Want::Op(s)),
                None => (ops, Want::Trees),
            };
            failures.push(self.shrink(seed, ops, &want));
        }
        failures
    }

    /// Ends a sequence: unless it diverged, compares the live trees; unmounts; unless it
    /// diverged, cross-checks the uppers. Returns the differences found.
    pub fn finish(&self, seed: u64, dir: &Path, mut pair: Pair, diverged: bool) -> Vec<String> {
        let mut failures = Vec::new();
        pair.held_a.clear();
        pair.held_b.clear();
        let mut live_a = None;
        if !diverged {
            match (try_snapshot(&pair.a.path), try_snapshot(&pair.b.path)) {
                (Ok(sa), Ok(sb)) => {
                    push_diff(
                        &mut failures,
                        seed,
                        "after the sequence",
                        &sa,
                        &sb,
                        &self.a.name(),
                        &self.b.name(),
                    );
                    live_a = Some(sa);
                }
                (ra, rb) => {
                    for (who, r) in [(self.a.name(), ra), (self.b.name(), rb)] {
                        if let Err(e) = r {
                            failures.push(format!(
                                "seed {seed}: walking {who} after the sequence: {e}\n"
                            ));
                        }
                    }
                }
            }
        }
        if let Err(e) = pair.close() {
            failures.push(format!("seed {seed}: {e}"));
        }
        if let Some(sa) = live_a {
            self.cross_check(seed, dir, &sa, &mut failures);
        }
        failures
    }

    /// Remounts both uppers: each implementation over its own upper (persistence) and over
    /// the other's (on-disk format).
    fn cross_check(&self, seed: u64, dir: &Path, live_a: &Snapshot, failures: &mut Vec<String>) {
        // A reader of a foreign upper follows redirects but never writes one.
        let reader = Impl::Kernel("follow");
        let look = |imp: Impl, upper: &str, tag: &str| -> Result<Snapshot, String> {
            let g = imp.mount(
                &self.lowers,
                &dir.join(upper),
                &dir.join(format!("{tag}-work")),
                &dir.join(format!("{tag}-mnt")),
            );
            let s = try_snapshot(&g.path);
            if let Err(e) = unmount(g) {
                panic!("unmounting {tag}: {e}");
            }
            s.map_err(|e| format!("{} over {upper}: {e}", imp.name()))
        };
        let (an, bn) = (self.a.name(), self.b.name());
        let mut compare = |what: &str,
                           x: &Result<Snapshot, String>,
                           y: &Result<Snapshot, String>,
                           xn: &str,
                           yn: &str| {
            match (x, y) {
                (Ok(x), Ok(y)) => push_diff(failures, seed, what, x, y, xn, yn),
                _ => {
                    for e in [x, y].into_iter().filter_map(|r| r.as_ref().err()) {
                        failures.push(format!("seed {seed}: {what}: walking {e}\n"));
                    }
                }
            }
        };
        let a_again = look(self.a, "a-upper", "x1");
        compare(
            "remounting the upper",
            &Ok(live_a.clone()),
            &a_again,
            &format!("{an} live"),
            &format!("{an} remounted"),
        );
        let k_over_a = look(reader, "a-upper", "x2");
        compare(
            &format!("{an}'s upper"),
            &a_again,
            &k_over_a,
            &an,
            &reader.name(),
        );
        let a_over_b = look(self.a, "b-upper", "x3");
        let k_over_b = look(self.b, "b-upper", "x4");
        compare(&format!("{bn}'s upper"), &a_over_b, &k_over_b, &an, &bn);
    }
}

/// A snapshot, or the first error met walking the tree (a listed name that cannot be
/// looked up, a file that cannot be read) instead of the snapshot's panic.
fn try_snapshot(root: &Path) -> Result<Snapshot, String> {
    fn walk(dir: &Path) -> Result<(), String> {
        let names = sys::read_dir(dir)
            .map_err(|e| format!("readdir {}: {}", dir.display(), sys::errno_name(e)))?;
        for name in names {
            let p = dir.join(OsStr::from_bytes(&name));
            let st = sys::lstat(&p).map_err(|e| {
                format!(
                    "lstat {} (listed by readdir): {}",
                    p.display(),
                    sys::errno_name(e)
                )
            })?;
            match st.st_mode & libc::S_IFMT {
                libc::S_IFDIR => walk(&p)?,
                libc::S_IFREG => {
                    fs::read(&p).map_err(|e| format!("reading {}: {e}", p.display()))?;
                }
                _ => {}
            }
        }
        Ok(())
    }
    walk(root)?;
    catch_unwind(|| snapshot(root)).map_err(|p| panic_text(&*p))
}

pub fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn push_diff(
    failures: &mut Vec<String>,
    seed: u64,
    what: &str,
    a: &Snapshot,
    b: &Snapshot,
    an: &str,
    bn: &str,
) {
    let lines = diff_snapshots(a, b);
    if lines.is_empty() {
        return;
    }
    let mut msg = format!(
        "seed {seed}: trees differ {what}: {} line(s) (- {an}, + {bn})\n",
        lines.len()
    );
    for l in lines.iter().take(40) {
        msg.push_str(&format!("    {}\n", clip(l, 400)));
    }
    if lines.len() > 40 {
        msg.push_str(&format!("    ... and {} more\n", lines.len() - 40));
    }
    failures.push(msg);
}

/// `s` cut to at most `max` bytes (at a character boundary), marked when cut.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

fn log_tail(path: &Path) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return None;
    }
    let from = lines.len().saturating_sub(15);
    Some(lines[from..].iter().map(|l| format!("    {l}\n")).collect())
}

fn check_no_reserved(op: &Op) {
    assert!(
        !op.paths().into_iter().any(super::generate::is_reserved),
        "the generator made a reserved name: {op:?}"
    );
}
