//! An OCI layer tar extracted into an empty directory in overlayfs format (docs/layers.md,
//! "Extracting").
//!
//! Confinement: every path is checked by [`super::path`] (`..` refused, leading `/`
//! stripped), and every file is created relative to a directory fd opened beneath the
//! destination with `O_NOFOLLOW`, one component at a time: a path whose intermediate
//! component is a symlink (or any non-directory) is refused, so a symlink the archive
//! created is never followed; an existing entry at the final name is removed and replaced,
//! never written through. A hard link's target is resolved the same way, must already be
//! in the destination, and is linked with `linkat` without following it.
//!
//! Formats: as root (`ExtractOptions::privileged`), `.wh.NAME` becomes a 0/0 character
//! device and `.wh..wh..opq` the xattr `trusted.overlay.opaque=y` on its directory; a name
//! and its whiteout in the same layer leave the name (a directory then opaque). Without
//! privilege both stay as the files they are (ufsd reads that format), device nodes are
//! skipped, set-id bits dropped, ownership and `trusted.*`/`security.*` xattrs not set.
//! Overlay-private xattrs in an archive are never set.
//!
//! Duplicate paths: the later entry wins, as with tar: it replaces what is there, except
//! that a directory over a directory updates its metadata and keeps its contents.
//!
//! Atomicity: a truncated or corrupt archive is an error, but what was extracted before it
//! stays; the caller extracts into a fresh temporary directory and renames it into place
//! only on success. An archive must end with its end-of-archive block: one cut exactly at
//! an entry boundary would otherwise look complete.
//!
//! Speed: small files at new names are written by worker threads ([`pool`]) while the
//! archive is read on; entries whose order matters wait for them, so the tree is the one
//! a single thread makes. Regular files are in [`files`], filesystem steps in [`fsops`].

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tar::EntryType;

use super::path::components;
use crate::image::{ImageError, ImageResult, child_rel, join_rel};
use crate::layer::whiteout::{OPAQUE_MARKER, OPAQUE_XATTRS, WHITEOUT_PREFIX};
use crate::sys::{self, Errno};

mod files;
mod fsops;
mod pool;

use fsops::{Born, Cursor, DirMeta, Meta, Room, open_existing};
use pool::FilePool;

/// How to extract a layer.
#[derive(Clone, Debug)]
pub struct ExtractOptions {
    /// Write whiteout devices, the opaque xattr, device nodes, owners, set-id bits and
    /// `trusted.*`/`security.*` xattrs. Defaults to whether the process runs as root.
    pub privileged: bool,
    /// Threads writing small files while the archive is read on: `None` for one per core
    /// (at most 4, none on one core), `Some(0)` to write every file on the reading thread.
    pub writers: Option<usize>,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            privileged: sys::euid() == 0,
            writers: None,
        }
    }
}

/// An entry of the archive that was not extracted, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// Path within the layer, as the archive names it.
    pub path: PathBuf,
    pub reason: &'static str,
}

/// What [`extract_layer`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtractStats {
    pub entries: u64,
    pub files: u64,
    pub data_bytes: u64,
    /// Whiteouts written (as devices, or kept as `.wh.` files without privilege).
    pub whiteouts: u64,
    /// Opaque markers applied (as the xattr, or kept as files without privilege).
    pub opaque_dirs: u64,
    pub hardlinks: u64,
    /// xattrs of the archive that could not or may not be set.
    pub xattrs_dropped: u64,
    pub skipped: Vec<Skipped>,
}

/// Reads through to the archive and notes whether it ran into its end.
struct EofWatch<R> {
    inner: R,
    eof: bool,
}

impl<R: Read> Read for EofWatch<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof = true;
        }
        Ok(n)
    }
}

/// Extracts the OCI layer tar `tar` (uncompressed) into `dest`, which must be an empty
/// directory.
pub fn extract_layer(
    tar: impl Read,
    dest: &Path,
    opts: &ExtractOptions,
) -> ImageResult<ExtractStats> {
    extract_layer_limited(tar, dest, opts, None)
}

/// [`extract_layer`], refusing an archive whose files hold more than `max_data_bytes` of
/// data in all. The check is made before a file is written, from its header, so a sparse
/// entry claiming a huge size cannot fill the disk with the zeros of its holes.
pub fn extract_layer_limited(
    tar: impl Read,
    dest: &Path,
    opts: &ExtractOptions,
    max_data_bytes: Option<u64>,
) -> ImageResult<ExtractStats> {
    let root = sys::open_root(dest).map_err(ImageError::io("opening", dest))?;
    let existing = sys::read_dir(root.as_fd()).map_err(|e| ImageError::sys("listing", dest, e))?;
    if !existing.is_empty() {
        return Err(ImageError::Invalid(format!(
            "{}: not empty: a layer is extracted into an empty directory",
            dest.display()
        )));
    }
    let root = Arc::new(root);
    let born = Born::probe(root.as_fd());
    let ar = tar::Archive::new(EofWatch {
        inner: BufReader::with_capacity(1 << 16, tar),
        eof: false,
    });
    std::thread::scope(|scope| {
        let pool = match opts.writers.unwrap_or_else(pool::workers) {
            0 => None,
            n => Some(FilePool::start(scope, n, dest, opts.privileged, born)),
        };
        let mut x = Extractor {
            dest,
            opts,
            dirs: HashMap::new(),
            names: HashSet::new(),
            buf: vec![0u8; 1 << 20],
            stats: ExtractStats::default(),
            max_data_bytes,
            born,
            pool: pool.as_ref(),
            seq: 0,
        };
        let read = x.read_all(ar, &root);
        // A writer's failure is of an earlier entry than any the reader stopped at.
        x.barrier()?;
        read?;
        x.finish_dirs(root.as_fd())?;
        Ok(x.stats)
    })
}

/// Turns a read error of the archive into the error naming where it happened.
fn corrupt(last: &Option<Vec<u8>>, e: std::io::Error) -> ImageError {
    let at = match last {
        Some(p) => format!("after entry `{}`", p.escape_ascii()),
        None => "at its first entry".to_string(),
    };
    ImageError::Invalid(format!("layer tar: corrupt or truncated {at}: {e}"))
}

struct Extractor<'a> {
    dest: &'a Path,
    opts: &'a ExtractOptions,
    /// Modes and times of directories, set last (children change a directory's mtime, and
    /// a read-only mode would stop an unprivileged extraction from filling it).
    dirs: HashMap<Vec<u8>, DirMeta>,
    /// Hashes of every non-directory name the archive made: a later entry there, or
    /// beneath it, waits for the file writers first. A hash (8 bytes, not the path) keeps
    /// a layer of millions of files small; a collision only costs a needless wait.
    names: HashSet<u64>,
    buf: Vec<u8>,
    stats: ExtractStats,
    max_data_bytes: Option<u64>,
    born: Born,
    /// Writers of small new files, when there is more than one core.
    pool: Option<&'a FilePool>,
    /// The current entry's place in the archive.
    seq: u64,
}

/// The hash [`Extractor::names`] keeps of a path.
fn name_hash(rel: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    rel.hash(&mut h);
    h.finish()
}

/// The layer-relative path of components, joined by `/`.
fn rel_of(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

impl Extractor<'_> {
    /// Extracts every entry, then checks that the archive ended with its end block.
    fn read_all<R: Read>(
        &mut self,
        mut ar: tar::Archive<EofWatch<R>>,
        root: &Arc<OwnedFd>,
    ) -> ImageResult<()> {
        let mut cursor = Cursor::default();
        let mut last: Option<Vec<u8>> = None;
        let entries = ar.entries().map_err(|e| corrupt(&None, e))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| corrupt(&last, e))?;
            let raw = entry.path_bytes().into_owned();
            self.seq += 1;
            self.entry(&mut cursor, root, &mut entry, &raw)?;
            last = Some(raw);
        }
        if ar.into_inner().eof {
            return Err(ImageError::Invalid(format!(
                "layer tar: truncated after entry `{}`: the archive ends without its \
                 end-of-archive block",
                last.unwrap_or_default().escape_ascii()
            )));
        }
        Ok(())
    }

    /// Waits for the file writers (see [`pool`]).
    fn barrier(&mut self) -> ImageResult<()> {
        if let Some(pool) = self.pool {
            self.stats.xattrs_dropped += pool.barrier()?;
        }
        Ok(())
    }

    /// Whether an earlier entry made `rel` (a directory made for a parent included).
    fn known(&self, rel: &[u8]) -> bool {
        self.dirs.contains_key(rel) || self.names.contains(&name_hash(rel))
    }

    /// Whether a parent of `rel` is (or may be) a non-directory the archive made.
    fn parent_is_named(&self, rel: &[u8]) -> bool {
        rel.iter()
            .enumerate()
            .any(|(i, &b)| b == b'/' && self.names.contains(&name_hash(&rel[..i])))
    }

    fn invalid(&self, raw: &[u8], why: &str) -> ImageError {
        ImageError::Invalid(format!("layer entry `{}`: {why}", raw.escape_ascii()))
    }

    fn skip(&mut self, rel: &[u8], reason: &'static str) {
        self.stats.skipped.push(Skipped {
            path: PathBuf::from(OsStr::from_bytes(rel)),
            reason,
        });
    }

    fn entry<R: Read>(
        &mut self,
        cursor: &mut Cursor,
        root_arc: &Arc<OwnedFd>,
        e: &mut tar::Entry<'_, R>,
        raw: &[u8],
    ) -> ImageResult<()> {
        let root = root_arc.as_fd();
        let kind = e.header().entry_type();
        if kind == EntryType::XGlobalHeader {
            return Ok(());
        }
        let comps = components(raw).map_err(|why| self.invalid(raw, why))?;
        let meta = Meta::read(e, self.opts.privileged)
            .map_err(|err| self.invalid(raw, &format!("unreadable header: {err}")))?;
        self.stats.entries += 1;
        let Some((&name, parents)) = comps.split_last() else {
            if kind != EntryType::Directory {
                return Err(self.invalid(raw, "names the layer root but is not a directory"));
            }
            return self.dir_meta(root, Vec::new(), &meta, raw);
        };
        let rel = rel_of(&comps);
        let aufs = |c: &[u8]| c.starts_with(b".wh..wh.") && c != OPAQUE_MARKER || c == b".wh.";
        if comps.iter().any(|c| aufs(c)) {
            // AUFS bookkeeping (`.wh..wh.plnk/...` and the like): never part of a layer.
            self.skip(&rel, "AUFS metadata");
            return Ok(());
        }
        if parents.iter().any(|c| c.starts_with(WHITEOUT_PREFIX)) {
            return Err(self.invalid(raw, "a whiteout or opaque marker used as a directory"));
        }
        if matches!(name, b".wh.." | b".wh...") {
            return Err(self.invalid(raw, "a whiteout of `.` or `..`"));
        }
        // The order of the archive matters from here on: wait for the file writers unless
        // this entry is a new name beneath directories only.
        let known = self.known(&rel);
        if self.pool.is_some()
            && (known
                || kind == EntryType::Link
                || name.starts_with(WHITEOUT_PREFIX)
                || self.parent_is_named(&rel))
        {
            self.barrier()?;
        }
        if kind != EntryType::Directory {
            self.names.insert(name_hash(&rel));
            if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
                self.names
                    .insert(name_hash(&child_rel(&rel_of(parents), target)));
            }
        }
        let parent = cursor
            .walk(root, parents, &mut self.dirs)
            .map_err(|why| self.invalid(raw, &why.to_string()))?;
        let name = OsStr::from_bytes(name);
        if let Some(target) = name.as_bytes().strip_prefix(WHITEOUT_PREFIX)
            && self.opts.privileged
        {
            return if name.as_bytes() == OPAQUE_MARKER {
                self.stats.opaque_dirs += 1;
                let value = b"y";
                sys::set_xattr(parent, None, OsStr::new(OPAQUE_XATTRS[0]), value, 0)
                    .map_err(|err| ImageError::sys("marking opaque", self.path(parents), err))
            } else {
                self.stats.whiteouts += 1;
                self.whiteout(parent, OsStr::from_bytes(target), &rel)
            };
        }
        if name.as_bytes().starts_with(WHITEOUT_PREFIX) {
            // Kept as the file it is; ufsd reads this format.
            if name.as_bytes() == OPAQUE_MARKER {
                self.stats.opaque_dirs += 1;
            } else {
                self.stats.whiteouts += 1;
            }
        }
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => match self.pool {
                Some(pool) if !known && e.size() <= pool::SMALL_FILE => {
                    let parent = cursor.current(root_arc);
                    self.send_file(pool, parent, name, rel, e, meta)
                }
                _ => self.file(parent, name, &rel, e, &meta),
            },
            EntryType::Directory => {
                let room = fsops::make_room(parent, name, true, &rel, &mut self.dirs)
                    .map_err(|err| ImageError::sys("replacing", self.path(&comps), err))?;
                if room != Room::Dir {
                    sys::mkdir_at(parent, name, 0o700)
                        .map_err(|err| ImageError::sys("mkdir", self.path(&comps), err))?;
                }
                let fd = sys::open_at(parent, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                    .map_err(|err| ImageError::sys("opening", self.path(&comps), err))?;
                if room == Room::Whiteout {
                    // A name and its whiteout in one layer: a new directory hiding the
                    // one below.
                    self.set_opaque(fd.as_fd(), &comps)?;
                }
                self.dir_meta(fd.as_fd(), rel, &meta, raw)
            }
            EntryType::Symlink => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| self.invalid(raw, "a symlink without a target"))?;
                self.replace(parent, name, &rel)?;
                sys::symlink_at(OsStr::from_bytes(&target), parent, name)
                    .map_err(|err| ImageError::sys("symlink", self.path(&comps), err))?;
                self.meta_at(parent, name, &meta, true, &rel)
            }
            EntryType::Link => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| self.invalid(raw, "a hard link without a target"))?
                    .into_owned();
                self.hardlink(root, parent, name, &comps, &target, raw)
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let fmt = match kind {
                    EntryType::Char => libc::S_IFCHR,
                    EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                if fmt != libc::S_IFIFO && !self.opts.privileged {
                    self.skip(&rel, "device node (needs privilege)");
                    return Ok(());
                }
                let dev = match (e.header().device_major(), e.header().device_minor()) {
                    (Ok(Some(ma)), Ok(Some(mi))) => libc::makedev(ma, mi),
                    _ if fmt == libc::S_IFIFO => 0,
                    _ => return Err(self.invalid(raw, "a device without device numbers")),
                };
                self.replace(parent, name, &rel)?;
                sys::mknod_at(parent, name, fmt | 0o600, dev)
                    .map_err(|err| ImageError::sys("mknod", self.path(&comps), err))?;
                self.meta_at(parent, name, &meta, false, &rel)
            }
            other => Err(self.invalid(raw, &format!("unsupported entry type {other:?}"))),
        }
    }

    fn path(&self, comps: &[&[u8]]) -> PathBuf {
        join_rel(self.dest, &rel_of(comps))
    }

    /// Removes whatever is at `name` (a later entry wins).
    fn replace(&mut self, parent: BorrowedFd<'_>, name: &OsStr, rel: &[u8]) -> ImageResult<Room> {
        fsops::make_room(parent, name, false, rel, &mut self.dirs)
            .map_err(|err| ImageError::sys("replacing", join_rel(self.dest, rel), err))
    }

    fn set_opaque(&mut self, dir: BorrowedFd<'_>, comps: &[&[u8]]) -> ImageResult<()> {
        sys::set_xattr(dir, None, OsStr::new(OPAQUE_XATTRS[0]), b"y", 0)
            .map_err(|err| ImageError::sys("marking opaque", self.path(comps), err))
    }

    /// A whiteout for `target` in `parent`. If this layer already holds the name, the name
    /// stays (a directory of this layer becomes opaque, hiding the one below).
    fn whiteout(&mut self, parent: BorrowedFd<'_>, target: &OsStr, rel: &[u8]) -> ImageResult<()> {
        let err = |op, e| ImageError::sys(op, join_rel(self.dest, rel), e);
        match sys::stat_at(parent, target) {
            Err(Errno::ENOENT) => sys::mknod_at(parent, target, libc::S_IFCHR, 0)
                .map_err(|e| err("creating whiteout", e)),
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                let fd = sys::open_at(parent, target, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                    .map_err(|e| err("opening", e))?;
                sys::set_xattr(fd.as_fd(), None, OsStr::new(OPAQUE_XATTRS[0]), b"y", 0)
                    .map_err(|e| err("marking opaque", e))
            }
            Ok(_) => Ok(()),
            Err(e) => Err(err("stat", e)),
        }
    }

    /// Owner and xattrs of a directory now, mode and times at the end.
    fn dir_meta(
        &mut self,
        fd: BorrowedFd<'_>,
        rel: Vec<u8>,
        meta: &Meta,
        raw: &[u8],
    ) -> ImageResult<()> {
        let dropped = fsops::apply_owner_xattrs(fd, None, meta, self.opts.privileged)
            .map_err(|(op, err)| ImageError::sys(op, join_rel(self.dest, raw), err))?;
        self.stats.xattrs_dropped += dropped;
        self.dirs.insert(rel, DirMeta::from(meta));
        Ok(())
    }

    fn meta_at(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        meta: &Meta,
        symlink: bool,
        rel: &[u8],
    ) -> ImageResult<()> {
        let dropped = fsops::apply_meta(parent, Some(name), meta, self.opts.privileged, symlink)
            .map_err(|(op, err)| ImageError::sys(op, join_rel(self.dest, rel), err))?;
        self.stats.xattrs_dropped += dropped;
        Ok(())
    }

    fn hardlink(
        &mut self,
        root: BorrowedFd<'_>,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        comps: &[&[u8]],
        target: &[u8],
        raw: &[u8],
    ) -> ImageResult<()> {
        let tcomps = components(target).map_err(|why| self.invalid(raw, why))?;
        let Some((&tname, tparents)) = tcomps.split_last() else {
            return Err(self.invalid(raw, "a hard link to the layer root"));
        };
        if tcomps == comps {
            // A link to itself: nothing to do.
            return Ok(());
        }
        let missing = || {
            let why = format!(
                "hard link target `{}` is not in the layer",
                target.escape_ascii()
            );
            self.invalid(raw, &why)
        };
        let tdir: OwnedFd = open_existing(root, tparents).map_err(|why| match why.errno {
            Errno::ENOENT => missing(),
            _ => self.invalid(raw, &format!("hard link target: {why}")),
        })?;
        let tname = OsStr::from_bytes(tname);
        match sys::stat_at(tdir.as_fd(), tname) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                return Err(self.invalid(raw, "a hard link to a directory"));
            }
            Ok(_) => {}
            Err(Errno::ENOENT) => return Err(missing()),
            Err(e) => return Err(ImageError::sys("stat", join_rel(self.dest, target), e)),
        }
        let rel = rel_of(comps);
        self.replace(parent, name, &rel)?;
        sys::link_at(tdir.as_fd(), tname, parent, name)
            .map_err(|e| ImageError::sys("link", join_rel(self.dest, &rel), e))?;
        self.stats.hardlinks += 1;
        Ok(())
    }

    /// Sets the deferred modes and times of directories, children before parents.
    fn finish_dirs(&mut self, root: BorrowedFd<'_>) -> ImageResult<()> {
        let mut dirs: Vec<(Vec<u8>, DirMeta)> = self.dirs.drain().collect();
        dirs.sort_by(|a, b| b.0.cmp(&a.0));
        for (rel, meta) in dirs {
            let comps: Vec<&[u8]> = if rel.is_empty() {
                Vec::new()
            } else {
                rel.split(|b| *b == b'/').collect()
            };
            // Replaced by a non-directory since: nothing to do.
            let Ok(fd) = open_existing(root, &comps) else {
                continue;
            };
            fsops::apply_dir_meta(fd.as_fd(), &meta)
                .map_err(|(op, e)| ImageError::sys(op, join_rel(self.dest, &rel), e))?;
        }
        Ok(())
    }
}
