//! Who hides whom at one name, as a pure function: for each layer that still reaches the
//! parent directory, whether the merged view shows its entry, merges it, or which layer
//! hides it and how.
//!
//! The rules are those of [`super::resolve`] (a test checks both agree on the winner and the
//! merged layers for every short probe sequence), but where the resolver stops as soon as
//! the merged view is decided, this goes on to the bottom, so `ufsd explain` and `ufsd
//! layers` can name the layer responsible for every hidden entry.

use serde::Serialize;

use super::kind::FileKind;
use super::resolve::Probe;

/// Why an entry is hidden.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// A layer above holds an entry of the same name that does not merge with it (a
    /// non-directory, or a directory over a non-directory).
    Shadowed,
    /// A layer above holds a whiteout of the name.
    WhitedOut,
    /// A layer above holds an opaque directory of that name.
    Opaque,
}

/// The layer that hides an entry, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Cut {
    pub by: usize,
    pub cause: Cause,
}

/// What one layer's entry is in the merged view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The layer holds nothing of that name.
    Absent,
    /// Its entry is the one shown (the top-most).
    Shown,
    /// Its directory is merged into the directory shown.
    Merged,
    /// It holds a whiteout that hides the name below (or would: see the layers below).
    Whiteout,
    /// Its entry (or whiteout) is hidden.
    Hidden(Cut),
}

/// The roles of `probes`, given top-down as (layer, what the layer holds). Layers that hold
/// nothing stay [`Role::Absent`] even below a cut.
pub fn blame(probes: &[(usize, Probe)]) -> Vec<Role> {
    let mut winner: Option<usize> = None;
    let mut cut: Option<Cut> = None;
    let mut out = Vec::with_capacity(probes.len());
    for &(layer, probe) in probes {
        let role = match (cut, probe) {
            (_, Probe::Absent) => Role::Absent,
            (Some(c), _) => Role::Hidden(c),
            (None, Probe::Whiteout) => {
                cut = Some(Cut {
                    by: layer,
                    cause: Cause::WhitedOut,
                });
                Role::Whiteout
            }
            (None, Probe::Entry { kind, opaque }) => {
                let opaque_cut = Cut {
                    by: layer,
                    cause: Cause::Opaque,
                };
                match winner {
                    None => {
                        winner = Some(layer);
                        if !kind.is_dir() {
                            cut = Some(Cut {
                                by: layer,
                                cause: Cause::Shadowed,
                            });
                        } else if opaque {
                            cut = Some(opaque_cut);
                        }
                        Role::Shown
                    }
                    // The winner is a directory (a non-directory winner cuts at once).
                    Some(w) if kind != FileKind::Directory => {
                        let c = Cut {
                            by: w,
                            cause: Cause::Shadowed,
                        };
                        cut = Some(c);
                        Role::Hidden(c)
                    }
                    Some(_) => {
                        if opaque {
                            cut = Some(opaque_cut);
                        }
                        Role::Merged
                    }
                }
            }
        };
        out.push(role);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::resolve::{Resolver, Step};
    use FileKind::*;

    fn e(kind: FileKind) -> Probe {
        Probe::Entry {
            kind,
            opaque: false,
        }
    }

    const OPAQUE: Probe = Probe::Entry {
        kind: Directory,
        opaque: true,
    };

    fn roles(p: &[Probe]) -> Vec<Role> {
        let v: Vec<(usize, Probe)> = p.iter().copied().enumerate().collect();
        blame(&v)
    }

    fn hidden(by: usize, cause: Cause) -> Role {
        Role::Hidden(Cut { by, cause })
    }

    #[test]
    fn blame_table() {
        use Cause::*;
        use Role::*;
        let cases: Vec<(Vec<Probe>, Vec<Role>)> = vec![
            // A file shadows the files below it.
            (
                vec![e(Regular), Probe::Absent, e(Regular)],
                vec![Shown, Absent, hidden(0, Shadowed)],
            ),
            // A whiteout hides everything below it, including another whiteout.
            (
                vec![Probe::Whiteout, e(Regular), Probe::Whiteout],
                vec![Whiteout, hidden(0, WhitedOut), hidden(0, WhitedOut)],
            ),
            // Directories merge until an opaque one, which still merges itself.
            (
                vec![e(Directory), OPAQUE, e(Directory)],
                vec![Shown, Merged, hidden(1, Opaque)],
            ),
            // A directory over a file: the file is shadowed by the directory shown, and so
            // is everything below the file.
            (
                vec![e(Directory), e(Regular), e(Directory)],
                vec![Shown, hidden(0, Shadowed), hidden(0, Shadowed)],
            ),
            // A directory re-created over a whiteout: merged with nothing below it.
            (
                vec![e(Directory), Probe::Whiteout, e(Directory)],
                vec![Shown, Whiteout, hidden(1, WhitedOut)],
            ),
        ];
        for (i, (p, want)) in cases.into_iter().enumerate() {
            assert_eq!(roles(&p), want, "case {i}");
        }
    }

    /// Every probe sequence of up to four layers: blame shows and merges exactly what the
    /// resolver does.
    #[test]
    fn agrees_with_the_resolver() {
        let alphabet = [
            Probe::Absent,
            Probe::Whiteout,
            e(Regular),
            e(Symlink),
            e(Directory),
            OPAQUE,
        ];
        let mut count = 0;
        for len in 1..=4u32 {
            for code in 0..alphabet.len().pow(len) {
                let mut c = code;
                let probes: Vec<Probe> = (0..len)
                    .map(|_| {
                        let p = alphabet[c % alphabet.len()];
                        c /= alphabet.len();
                        p
                    })
                    .collect();
                let mut r = Resolver::new(None);
                for (i, p) in probes.iter().enumerate() {
                    if r.feed(i, *p) == Step::Done {
                        break;
                    }
                }
                let res = r.finish();
                let got = roles(&probes);
                let shown = got.iter().position(|r| *r == Role::Shown);
                assert_eq!(shown, res.winner.map(|w| w.0), "{probes:?}");
                let merged: Vec<usize> = got
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| matches!(r, Role::Merged))
                    .map(|(i, _)| i)
                    .collect();
                let want: Vec<usize> = res.merged.iter().skip(1).copied().collect();
                assert_eq!(merged, want, "{probes:?}");
                count += 1;
            }
        }
        assert_eq!(count, 6 + 36 + 216 + 1296);
    }
}
