//! The shrinker: reduces a failing seed's operations to a minimal sequence that still
//! fails the same way on fresh mounts (ddmin, then removing one operation at a time), so
//! the report is a reproduction of a few lines.

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::Instant;

use super::generate::Gen;
use super::ops::{Op, Outcome, Value};
use super::run::{REFRESH_EVERY, Run, Step};

/// What a shrunk sequence must still show.
pub enum Want {
    /// Its last operation differs the way this one did.
    Op(Step),
    /// Every operation agrees, but the trees differ afterwards, live or remounted.
    Trees,
}

/// The comparable kind of an outcome: the errno, or which kind of value.
fn shape(o: &Outcome) -> Result<std::mem::Discriminant<Value>, i32> {
    o.0.as_ref().map(std::mem::discriminant).map_err(|e| *e)
}

impl Run<'_> {
    /// Replays `ops` on fresh mounts under `dir` and says whether they fail as `want`
    /// says, with every operation before that agreeing.
    pub fn reproduces(&self, dir: &Path, ops: &[Op], want: &Want) -> bool {
        // A panic (a mount that fails, say) after an agreeing sequence is a tree failure.
        let r = catch_unwind(AssertUnwindSafe(|| self.replay_check(dir, ops, want)));
        let _ = fs::remove_dir_all(dir);
        r.unwrap_or(matches!(want, Want::Trees))
    }

    fn replay_check(&self, dir: &Path, ops: &[Op], want: &Want) -> bool {
        let _ = fs::remove_dir_all(dir);
        let mut pair = self.mount_pair(dir);
        let mut agreed = true;
        let mut last_differs = false;
        for (i, op) in ops.iter().enumerate() {
            // The seed's run walked the reference mount every few operations to pick
            // paths; doing the same keeps the timing between operations alike, which
            // matters to failures that depend on when the kernel forgets or releases.
            if i % REFRESH_EVERY == 0 {
                Gen::new(0, &[], &[]).refresh(&pair.b.path);
            }
            let s = self.step(&mut pair, op);
            match want {
                Want::Op(w) if i + 1 == ops.len() => {
                    last_differs =
                        !s.same() && shape(&s.ra) == shape(&w.ra) && shape(&s.rb) == shape(&w.rb);
                }
                _ if !s.same() => {
                    agreed = false;
                    break;
                }
                _ => {}
            }
        }
        let ok = match want {
            Want::Op(_) => {
                let _ = pair.close();
                agreed && last_differs
            }
            Want::Trees if !agreed => {
                let _ = pair.close();
                false
            }
            Want::Trees => !self.finish(0, dir, pair, false).is_empty(),
        };
        let _ = fs::remove_dir_all(dir);
        ok
    }

    /// Minimises the operations that lead to a failure (ddmin, then one at a time) and
    /// replays the result with its outcomes.
    pub fn shrink(&self, seed: u64, mut ops: Vec<Op>, want: &Want) -> String {
        let dir = self.base.join(format!("shrink-{seed}"));
        // A differing operation stays last; a tree difference may need any of them.
        let last = match want {
            Want::Op(_) => ops.pop(),
            Want::Trees => None,
        };
        let started = Instant::now();
        let mut trials = 0;
        let mut test = |prefix: &[Op]| {
            trials += 1;
            let mut v = prefix.to_vec();
            v.extend(last.clone());
            self.reproduces(&dir, &v, want)
        };
        if !test(&ops) {
            return format!("seed {seed}: the failure does not reproduce on fresh mounts");
        }
        let mut n = 2;
        while ops.len() >= 2 {
            let chunk = ops.len().div_ceil(n);
            let mut reduced = None;
            for c in 0..n {
                let lo = c * chunk;
                if lo >= ops.len() {
                    break;
                }
                let hi = (lo + chunk).min(ops.len());
                let cand: Vec<Op> = ops[..lo].iter().chain(&ops[hi..]).cloned().collect();
                if test(&cand) {
                    reduced = Some(cand);
                    break;
                }
            }
            match reduced {
                Some(cand) => {
                    ops = cand;
                    n = (n - 1).max(2);
                }
                None if n >= ops.len() => break,
                None => n = (2 * n).min(ops.len()),
            }
        }
        let mut i = 0;
        while i < ops.len() {
            let cand: Vec<Op> = ops[..i].iter().chain(&ops[i + 1..]).cloned().collect();
            if test(&cand) {
                ops = cand;
            } else {
                i += 1;
            }
        }
        let marked = last.is_some();
        ops.extend(last);
        // One more replay to show the outcomes of the minimal sequence.
        let _ = fs::remove_dir_all(&dir);
        let mut pair = self.mount_pair(&dir);
        let mut msg = format!(
            "seed {seed}: minimal reproduction, {} operation(s) ({trials} trials, {:.1?}):\n",
            ops.len(),
            started.elapsed()
        );
        for (i, op) in ops.iter().enumerate() {
            if i % REFRESH_EVERY == 0 {
                Gen::new(0, &[], &[]).refresh(&pair.b.path);
            }
            let s = self.step(&mut pair, op);
            let mark = if i + 1 == ops.len() && marked {
                ">>> "
            } else {
                ""
            };
            msg.push_str(&format!("  {mark}{}\n", self.line(i, op, &s)));
        }
        if let Want::Trees = want {
            for f in self.finish(seed, &dir, pair, false) {
                msg.push_str(&format!("  then: {f}"));
            }
        } else {
            let _ = pair.close();
        }
        let _ = fs::remove_dir_all(&dir);
        msg
    }
}
