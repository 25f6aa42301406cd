//! The seeded operation generator.
//!
//! Paths come from a pool: every name any lower layer holds (whited-out and hidden ones
//! too), every name the reference mount has shown so far, fresh names, and random
//! compositions of known names, at most three components deep for new names. The generator
//! looks at the reference mount (the kernel's, which is deterministic) to aim offsets and
//! sizes at the current file size and to prefer entries that exist, so most operations do
//! something; the stale and random names produce the ENOENT / ENOTDIR / EEXIST cases.
//! Nothing here ever makes a name beginning with `.wh.`.

use std::collections::BTreeSet;
use std::path::Path;

use super::ops::{Data, Mode, Op, Rel, RenameFlags, SLOTS, Target, TimeArg, kind_char};
use super::sys;

const FILE_MODES: &[u32] = &[
    0o644, 0o600, 0o640, 0o755, 0o700, 0o666, 0o444, 0o4755, 0o2755, 0o1755, 0o000,
];
const DIR_MODES: &[u32] = &[0o755, 0o700, 0o775, 0o1777, 0o2755, 0o555, 0o000];
const UIDS: &[u32] = &[0, 1000, 1234, u32::MAX];
const GIDS: &[u32] = &[0, 100, 1234, u32::MAX];
/// Unprivileged users operations run as: the owner of some fixture files, and a stranger.
const USERS: &[(u32, u32)] = &[(1000, 1000), (1000, 100), (4321, 4321)];
const XATTRS: &[&str] = &["user.a", "user.b", "user.foo", "user.empty", "user.dirattr"];
/// Deepest level the pool collects from the reference mount.
const WALK_DEPTH: usize = 4;
/// Deepest level of a new name.
const NEW_DEPTH: usize = 3;

pub struct Gen {
    rng: fastrand::Rng,
    /// Every path seen or used so far.
    known: BTreeSet<Rel>,
    /// The reference mount's entries at the last refresh, with their kind.
    live: Vec<(Rel, char)>,
    /// Directories among `live`, plus the root.
    dirs: Vec<Rel>,
    /// Name components to compose random paths from.
    vocab: Vec<Vec<u8>>,
    fresh: u64,
    /// Names never to use (nor anything under them).
    avoid: Vec<Vec<u8>>,
    /// Whether descriptors may be held open read-only (see `with_ro_holds`).
    ro_holds: bool,
}

impl Gen {
    /// A generator for `seed` that never names a path with a component in `avoid`.
    pub fn new(seed: u64, lower_names: &[Vec<u8>], avoid: &[Vec<u8>]) -> Gen {
        let avoided = |r: &Rel| {
            r.0.split(|b| *b == b'/')
                .any(|c| avoid.iter().any(|a| a == c))
        };
        let known: BTreeSet<Rel> = lower_names
            .iter()
            .map(|n| Rel(n.clone()))
            .filter(|r| !avoided(r))
            .collect();
        let mut vocab: BTreeSet<Vec<u8>> = known.iter().map(|r| r.name().to_vec()).collect();
        vocab.extend([b"x".to_vec(), b"y".to_vec()]);
        Gen {
            rng: fastrand::Rng::with_seed(seed),
            known,
            live: Vec::new(),
            dirs: vec![Rel(Vec::new())],
            vocab: vocab.into_iter().collect(),
            fresh: 0,
            avoid: avoid.to_vec(),
            ro_holds: true,
        }
    }

    /// Without read-only holds every held descriptor is opened for writing (so its file
    /// is in the upper layer from the start). Used with FUSE passthrough, where a
    /// descriptor opened read-only before a copy-up keeps the lower file by design
    /// (docs/write-path.md) while overlayfs moves it to the copy.
    pub fn with_ro_holds(mut self, ro_holds: bool) -> Gen {
        self.ro_holds = ro_holds;
        self
    }

    /// Re-reads the reference mount's tree (sorted, so deterministic).
    pub fn refresh(&mut self, root: &Path) {
        self.live.clear();
        self.dirs = vec![Rel(Vec::new())];
        let mut stack = vec![Rel(Vec::new())];
        while let Some(dir) = stack.pop() {
            let Ok(names) = sys::read_dir(&dir.under(root)) else {
                continue;
            };
            for name in names {
                let rel = dir.join(&name);
                if self.avoid.contains(&name) {
                    continue;
                }
                let Ok(st) = sys::lstat(&rel.under(root)) else {
                    continue;
                };
                let kind = kind_char(st.st_mode);
                if kind == 'd' {
                    self.dirs.push(rel.clone());
                    if rel.depth() < WALK_DEPTH {
                        stack.push(rel.clone());
                    }
                }
                if self.known.insert(rel.clone()) {
                    self.vocab_add(rel.name());
                }
                self.live.push((rel, kind));
            }
        }
        self.live.sort();
        self.dirs.sort();
    }

    fn vocab_add(&mut self, name: &[u8]) {
        if let Err(i) = self.vocab.binary_search_by(|v| v.as_slice().cmp(name)) {
            self.vocab.insert(i, name.to_vec());
        }
    }

    fn pick<T: Clone>(&mut self, v: &[T]) -> T {
        v[self.rng.usize(..v.len())].clone()
    }

    fn chance(&mut self, percent: u32) -> bool {
        self.rng.u32(..100) < percent
    }

    /// A live entry, preferably of one of `kinds`.
    fn existing(&mut self, kinds: &str) -> Rel {
        if self.live.is_empty() {
            return self.composed();
        }
        let matching: Vec<Rel> = self
            .live
            .iter()
            .filter(|(_, k)| kinds.contains(*k))
            .map(|(r, _)| r.clone())
            .collect();
        if !matching.is_empty() && self.chance(85) {
            return self.pick(&matching);
        }
        let i = self.rng.usize(..self.live.len());
        self.live[i].0.clone()
    }

    /// Any path ever seen (it may be gone now).
    fn known_path(&mut self) -> Rel {
        let n = self.rng.usize(..self.known.len());
        self.known.iter().nth(n).cloned().unwrap_or(Rel(Vec::new()))
    }

    /// A fresh name inside a live directory shallow enough for it.
    fn fresh_path(&mut self) -> Rel {
        let shallow: Vec<Rel> = self
            .dirs
            .iter()
            .filter(|d| d.depth() < NEW_DEPTH)
            .cloned()
            .collect();
        let parent = self.pick(&shallow);
        self.fresh += 1;
        let name = format!("n{}", self.fresh).into_bytes();
        self.vocab_add(&name);
        parent.join(&name)
    }

    /// One to three components from the vocabulary.
    fn composed(&mut self) -> Rel {
        let depth = 1 + self.rng.usize(..NEW_DEPTH);
        let mut r = Rel(Vec::new());
        for _ in 0..depth {
            let c = self.pick(&self.vocab.clone());
            r = r.join(&c);
        }
        r
    }

    /// A path to operate on: mostly existing entries of `kinds`.
    fn target(&mut self, kinds: &str) -> Rel {
        match self.rng.u32(..100) {
            0..70 => self.existing(kinds),
            70..85 => self.known_path(),
            85..92 => self.fresh_path(),
            _ => self.composed(),
        }
    }

    /// A path to create: mostly fresh, sometimes a name that exists or existed (EEXIST, or
    /// re-creation over a whiteout).
    fn new_path(&mut self) -> Rel {
        let r = match self.rng.u32(..100) {
            0..55 => self.fresh_path(),
            55..80 => self.known_path(),
            80..90 => self.existing(""),
            _ => self.composed(),
        };
        self.known.insert(r.clone());
        r
    }

    fn data(&mut self) -> Data {
        let len = match self.rng.u32(..100) {
            0..3 => 0,
            3..70 => self.rng.usize(1..=4096),
            70..92 => self.rng.usize(4097..=70_000),
            _ => self.rng.usize(130_000..=300_000),
        };
        Data {
            seed: self.rng.u64(..),
            len,
        }
    }

    fn size_of(&self, root: &Path, path: &Rel) -> u64 {
        sys::stat(&path.under(root), true)
            .map(|st| st.st_size as u64)
            .unwrap_or(0)
    }

    fn offset(&mut self, size: u64) -> u64 {
        match self.rng.u32(..100) {
            0..15 => 0,
            15..55 => self.rng.u64(..=size),
            55..75 => size,
            75..90 => size + self.rng.u64(1..100_000),
            _ => 4096 * self.rng.u64(..64),
        }
    }

    fn size(&mut self, cur: u64) -> u64 {
        match self.rng.u32(..10) {
            0 => 0,
            1 => 1,
            2 => cur / 2,
            3 => cur,
            4 => cur + 1,
            5 => 4096,
            6 => 65_536,
            7 => 200 * 1024 + 7,
            8 => (1 << 20) + 13,
            _ => self.rng.u64(..300_000),
        }
    }

    fn time(&mut self) -> TimeArg {
        match self.rng.u32(..10) {
            0..2 => TimeArg::Omit,
            2 => TimeArg::Now,
            // Between 2001 and 2020, with and without nanoseconds.
            _ => TimeArg::At(
                self.rng.i64(1_000_000_000..1_600_000_000),
                if self.rng.bool() {
                    0
                } else {
                    self.rng.i64(0..1_000_000_000)
                },
            ),
        }
    }

    fn symlink_target(&mut self, link: &Rel) -> Vec<u8> {
        match self.rng.u32(..10) {
            // A sibling (resolves when it exists).
            0..5 => {
                let sib = self.existing("fdlp");
                if sib.parent() == link.parent() {
                    sib.name().to_vec()
                } else {
                    sib.0
                }
            }
            5..8 => self.known_path().0,
            8 => b"/nonexistent-ufsd-oracle/x".to_vec(),
            _ => {
                self.fresh += 1;
                format!("t{}", self.fresh).into_bytes()
            }
        }
    }

    /// The next operation; `root` is the reference mount. Some run as an unprivileged
    /// user.
    pub fn next(&mut self, root: &Path) -> Op {
        let op = self.next_op(root);
        if self.chance(15) {
            let (uid, gid) = self.pick(USERS);
            Op::As {
                uid,
                gid,
                op: Box::new(op),
            }
        } else {
            op
        }
    }

    fn next_op(&mut self, root: &Path) -> Op {
        let w = self.rng.u32(..132);
        match w {
            0..10 => Op::Create {
                path: self.new_path(),
                mode: Mode(self.pick(FILE_MODES)),
                data: self.data(),
            },
            10..22 => {
                let path = self.target("f");
                let size = self.size_of(root, &path);
                Op::Pwrite {
                    off: self.offset(size),
                    data: self.data(),
                    creat: self.chance(10),
                    path,
                }
            }
            22..27 => Op::Append {
                path: self.target("f"),
                data: self.data(),
            },
            27..31 => Op::OpenTrunc {
                path: self.target("f"),
                data: if self.chance(50) {
                    Data { seed: 0, len: 0 }
                } else {
                    self.data()
                },
            },
            31..35 => {
                let path = self.target("f");
                let size = self.size_of(root, &path);
                Op::Truncate {
                    size: self.size(size),
                    path,
                }
            }
            35..38 => {
                let path = self.target("f");
                let size = self.size_of(root, &path);
                Op::Ftruncate {
                    size: self.size(size),
                    path,
                }
            }
            38..45 => Op::Unlink {
                path: self.target("flpc"),
            },
            45..52 => Op::Mkdir {
                path: self.new_path(),
                mode: Mode(self.pick(DIR_MODES)),
            },
            52..56 => Op::Rmdir {
                path: self.target("d"),
            },
            56..66 => {
                let kinds = if self.chance(40) { "d" } else { "flp" };
                let from = self.target(kinds);
                let to = if self.chance(60) {
                    self.new_path()
                } else {
                    self.target("fdlp")
                };
                let flags = match self.rng.u32(..100) {
                    0..70 => 0,
                    70..85 => libc::RENAME_NOREPLACE,
                    _ => libc::RENAME_EXCHANGE,
                };
                self.known.insert(to.clone());
                Op::Rename {
                    from,
                    to,
                    flags: RenameFlags(flags),
                }
            }
            66..69 => {
                let path = self.new_path();
                Op::Symlink {
                    target: Target(self.symlink_target(&path)),
                    path,
                }
            }
            69..73 => Op::Link {
                from: self.target("flp"),
                to: self.new_path(),
            },
            73..75 => Op::Mkfifo {
                path: self.new_path(),
                mode: Mode(self.pick(FILE_MODES) & 0o777),
            },
            75..79 => {
                let path = self.target("fdp");
                let modes = if self.chance(50) {
                    FILE_MODES
                } else {
                    DIR_MODES
                };
                Op::Chmod {
                    path,
                    mode: Mode(self.pick(modes)),
                }
            }
            79..83 => Op::Chown {
                path: self.target("fdlp"),
                uid: self.pick(UIDS),
                gid: self.pick(GIDS),
                follow: self.chance(70),
            },
            83..87 => Op::Utimens {
                path: self.target("fdlp"),
                atime: self.time(),
                mtime: self.time(),
                follow: self.chance(70),
            },
            87..91 => Op::Setxattr {
                path: self.target("fd"),
                name: self.pick(XATTRS),
                value: Data {
                    seed: self.rng.u64(..),
                    len: if self.chance(10) {
                        3000
                    } else {
                        self.rng.usize(..64)
                    },
                },
                flags: match self.rng.u32(..4) {
                    0 => libc::XATTR_CREATE,
                    1 => libc::XATTR_REPLACE,
                    _ => 0,
                },
                follow: self.chance(80),
            },
            91..94 => Op::Removexattr {
                path: self.target("fd"),
                name: self.pick(XATTRS),
                follow: self.chance(80),
            },
            94..101 => Op::Read {
                path: self.target("f"),
            },
            101..103 => {
                let path = self.target("f");
                let size = self.size_of(root, &path);
                Op::ReadAt {
                    off: self.offset(size),
                    len: self.rng.usize(1..200_000),
                    path,
                }
            }
            103..109 => Op::Stat {
                path: self.target("fdlp"),
                follow: self.chance(30),
            },
            109..113 => Op::Readdir {
                path: if self.chance(85) {
                    let d = self.dirs.clone();
                    self.pick(&d)
                } else {
                    self.target("d")
                },
            },
            113..114 => Op::Readlink {
                path: self.target("l"),
            },
            114..116 => Op::Getxattr {
                path: self.target("fd"),
                name: self.pick(XATTRS),
            },
            116..118 => Op::Listxattr {
                path: self.target("fdl"),
            },
            118..121 => Op::Hold {
                slot: self.rng.usize(..SLOTS),
                path: self.target("f"),
                rw: !self.ro_holds || self.chance(30),
            },
            121..126 => Op::ReadHeld {
                slot: self.rng.usize(..SLOTS),
                off: self.offset(4096),
                len: self.rng.usize(1..300_000),
            },
            126..128 => Op::WriteHeld {
                slot: self.rng.usize(..SLOTS),
                off: self.offset(4096),
                data: self.data(),
            },
            128..130 => Op::FstatHeld {
                slot: self.rng.usize(..SLOTS),
            },
            130 => Op::FtruncateHeld {
                slot: self.rng.usize(..SLOTS),
                size: self.size(4096),
            },
            _ => Op::Close {
                slot: self.rng.usize(..SLOTS),
            },
        }
    }
}

/// Whether a component of `rel` is reserved by ufsd (`.wh.*`): the generator never makes
/// one, and the runner checks that.
pub fn is_reserved(rel: &Rel) -> bool {
    rel.0.split(|b| *b == b'/').any(|c| c.starts_with(b".wh."))
}
