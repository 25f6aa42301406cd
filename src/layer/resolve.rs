//! Name resolution down a layer stack, as a pure state machine.
//!
//! The caller probes one layer at a time, top-down, and feeds what it found; the resolver
//! says whether to go on. This keeps the union rules free of I/O (and table-tested) while
//! the caller stops probing as early as the rules allow.
//!
//! Rules (those of overlayfs):
//! - the first layer holding the name wins;
//! - a whiteout hides the name in every layer below;
//! - a non-directory hides everything of that name below;
//! - a directory merges with directories of the same name below, until a layer holds a
//!   whiteout or a non-directory there, or a merged directory is opaque;
//! - when the winner is in the writable upper layer, its *origin* is what the lower layers
//!   alone would show, if that is of the same type: the file it was copied up from. The
//!   origin gives copied-up files the inode number they had before the copy.

use super::kind::FileKind;

/// What probing one layer for a name found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Nothing of that name in this layer.
    Absent,
    /// A whiteout for the name in this layer (either format).
    Whiteout,
    /// A real entry. `opaque` is only meaningful for directories.
    Entry { kind: FileKind, opaque: bool },
}

/// Whether to probe the next layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Continue,
    Done,
}

/// The outcome of a resolution; layers are given as the caller's layer indexes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolution {
    /// Layer of the entry the merged view shows, with its type.
    pub winner: Option<(usize, FileKind)>,
    /// For a directory: every layer whose directory is merged, top-down (winner first).
    pub merged: Vec<usize>,
    /// For a winner in the upper layer: the lower layer of the entry it shadows, if that
    /// has the same type.
    pub origin: Option<usize>,
}

#[derive(Debug)]
enum State {
    Searching,
    Merging,
    SeekingOrigin(FileKind),
    Finished,
}

/// Feeds probes top-down and collects the [`Resolution`].
#[derive(Debug)]
pub struct Resolver {
    upper: Option<usize>,
    state: State,
    res: Resolution,
}

impl Resolver {
    /// `upper` is the layer index of the writable upper layer, if the stack has one.
    pub fn new(upper: Option<usize>) -> Self {
        Resolver {
            upper,
            state: State::Searching,
            res: Resolution::default(),
        }
    }

    /// Records what layer `layer` holds; layers must come top-down.
    pub fn feed(&mut self, layer: usize, probe: Probe) -> Step {
        self.state = match (&self.state, probe) {
            (State::Finished, _) => State::Finished,
            (State::Searching, Probe::Absent) => State::Searching,
            (State::Searching, Probe::Whiteout) => State::Finished,
            (State::Searching, Probe::Entry { kind, opaque }) => {
                self.res.winner = Some((layer, kind));
                let in_upper = self.upper == Some(layer);
                if kind.is_dir() {
                    self.res.merged.push(layer);
                    if opaque {
                        State::Finished
                    } else {
                        State::Merging
                    }
                } else if in_upper {
                    State::SeekingOrigin(kind)
                } else {
                    State::Finished
                }
            }
            (State::Merging, Probe::Absent) => State::Merging,
            (State::Merging, Probe::Entry { kind, opaque }) if kind.is_dir() => {
                if self.res.merged.len() == 1 && self.upper == self.res.winner.map(|w| w.0) {
                    self.res.origin = Some(layer);
                }
                self.res.merged.push(layer);
                if opaque {
                    State::Finished
                } else {
                    State::Merging
                }
            }
            (State::Merging, _) => State::Finished,
            (State::SeekingOrigin(_), Probe::Absent) => State::SeekingOrigin(self.seeking()),
            (State::SeekingOrigin(want), Probe::Entry { kind, .. }) => {
                if *want == kind {
                    self.res.origin = Some(layer);
                }
                State::Finished
            }
            (State::SeekingOrigin(_), Probe::Whiteout) => State::Finished,
        };
        match self.state {
            State::Finished => Step::Done,
            _ => Step::Continue,
        }
    }

    fn seeking(&self) -> FileKind {
        match self.state {
            State::SeekingOrigin(k) => k,
            _ => FileKind::Regular,
        }
    }

    pub fn finish(self) -> Resolution {
        self.res
    }
}

/// Resolves a whole column of probes at once (top-down); for tests and offline tools.
pub fn resolve_all(upper: Option<usize>, probes: &[Probe]) -> (Resolution, usize) {
    let mut r = Resolver::new(upper);
    let mut used = 0;
    for (layer, p) in probes.iter().enumerate() {
        used += 1;
        if r.feed(layer, *p) == Step::Done {
            break;
        }
    }
    (r.finish(), used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use FileKind::*;
    use Probe::*;

    const fn e(kind: FileKind) -> Probe {
        Entry {
            kind,
            opaque: false,
        }
    }
    const fn opaque_dir() -> Probe {
        Entry {
            kind: Directory,
            opaque: true,
        }
    }

    struct Case {
        upper: Option<usize>,
        probes: Vec<Probe>,
        winner: Option<(usize, FileKind)>,
        merged: &'static [usize],
        origin: Option<usize>,
        probed: usize,
    }

    #[test]
    fn resolution_table() {
        let cases = [
            // Nothing anywhere.
            Case {
                upper: None,
                probes: vec![Absent, Absent],
                winner: None,
                merged: &[],
                origin: None,
                probed: 2,
            },
            // First layer wins, lower ones are not probed.
            Case {
                upper: None,
                probes: vec![e(Regular), e(Regular)],
                winner: Some((0, Regular)),
                merged: &[],
                origin: None,
                probed: 1,
            },
            // Found in the bottom layer.
            Case {
                upper: None,
                probes: vec![Absent, Absent, e(Symlink)],
                winner: Some((2, Symlink)),
                merged: &[],
                origin: None,
                probed: 3,
            },
            // A whiteout hides the lower file.
            Case {
                upper: None,
                probes: vec![Whiteout, e(Regular)],
                winner: None,
                merged: &[],
                origin: None,
                probed: 1,
            },
            // Directories merge across layers.
            Case {
                upper: None,
                probes: vec![e(Directory), Absent, e(Directory)],
                winner: Some((0, Directory)),
                merged: &[0, 2],
                origin: None,
                probed: 3,
            },
            // An opaque directory stops the merge.
            Case {
                upper: None,
                probes: vec![e(Directory), opaque_dir(), e(Directory)],
                winner: Some((0, Directory)),
                merged: &[0, 1],
                origin: None,
                probed: 2,
            },
            Case {
                upper: None,
                probes: vec![opaque_dir(), e(Directory)],
                winner: Some((0, Directory)),
                merged: &[0],
                origin: None,
                probed: 1,
            },
            // A whiteout below a directory stops the merge.
            Case {
                upper: None,
                probes: vec![e(Directory), Whiteout, e(Directory)],
                winner: Some((0, Directory)),
                merged: &[0],
                origin: None,
                probed: 2,
            },
            // A non-directory below a directory is hidden and stops the merge.
            Case {
                upper: None,
                probes: vec![e(Directory), e(Regular), e(Directory)],
                winner: Some((0, Directory)),
                merged: &[0],
                origin: None,
                probed: 2,
            },
            // A non-directory on top hides a directory below.
            Case {
                upper: None,
                probes: vec![e(Regular), e(Directory)],
                winner: Some((0, Regular)),
                merged: &[],
                origin: None,
                probed: 1,
            },
            // Upper file copied up from a lower file: origin found.
            Case {
                upper: Some(0),
                probes: vec![e(Regular), Absent, e(Regular)],
                winner: Some((0, Regular)),
                merged: &[],
                origin: Some(2),
                probed: 3,
            },
            // Upper file over a lower whiteout: a new file, no origin.
            Case {
                upper: Some(0),
                probes: vec![e(Regular), Whiteout, e(Regular)],
                winner: Some((0, Regular)),
                merged: &[],
                origin: None,
                probed: 2,
            },
            // Upper file over a lower symlink: different type, no origin.
            Case {
                upper: Some(0),
                probes: vec![e(Regular), e(Symlink)],
                winner: Some((0, Regular)),
                merged: &[],
                origin: None,
                probed: 2,
            },
            // Upper merged directory: origin is the first lower directory.
            Case {
                upper: Some(0),
                probes: vec![e(Directory), e(Directory), e(Directory)],
                winner: Some((0, Directory)),
                merged: &[0, 1, 2],
                origin: Some(1),
                probed: 3,
            },
            // Upper opaque directory: no origin.
            Case {
                upper: Some(0),
                probes: vec![opaque_dir(), e(Directory)],
                winner: Some((0, Directory)),
                merged: &[0],
                origin: None,
                probed: 1,
            },
            // Winner in a lower layer of a stack with an upper: no origin.
            Case {
                upper: Some(0),
                probes: vec![Absent, e(Regular), e(Regular)],
                winner: Some((1, Regular)),
                merged: &[],
                origin: None,
                probed: 2,
            },
        ];
        for (i, c) in cases.iter().enumerate() {
            let (res, probed) = resolve_all(c.upper, &c.probes);
            assert_eq!(res.winner, c.winner, "case {i}: winner");
            assert_eq!(res.merged, c.merged, "case {i}: merged");
            assert_eq!(res.origin, c.origin, "case {i}: origin");
            assert_eq!(probed, c.probed, "case {i}: layers probed");
        }
    }
}
