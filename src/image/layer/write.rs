//! An upper layer as a deterministic OCI layer tar (docs/layers.md, "Writing").
//!
//! Order: depth-first, parents before children, each directory's names sorted bytewise
//! (the order of `tar --sort=name`). Within a directory the opaque marker comes first,
//! then entries and whiteouts sorted together by the name they stand for (a whiteout
//! `.wh.x` sorts as `x`). The root is written as `./`.
//!
//! Content: every entry of the upper layer (it holds only changes), with whiteouts and
//! opaque markers only where they hide something in the lower layers given, which makes
//! the layer hold exactly what `ufsd diff` reports. Whiteouts and markers are empty files
//! with mode 0, owner 0:0 and mtime 0, whatever format the upper layer wrote them in.
//! Hard links within the upper layer are tar hard links to the first path of the group;
//! overlay-private xattrs are dropped, others kept as `SCHILY.xattr.*` PAX records;
//! sockets cannot be stored in a tar and are skipped (listed in [`LayerStats`]).
//!
//! Refused with an error: a real entry named `.wh.*` (every such path is listed), and the
//! overlayfs features `redirect_dir` and `metacopy`.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tar::EntryType;

use super::header::{BLOCK, EntryHeader, padding, write_entry_header};
use crate::image::lower::{LowerDir, LowerView};
use crate::image::upper::{self, UpperEntry, Xattrs};
use crate::image::{ImageError, ImageResult, child_rel, join_rel};
use crate::layer::FileKind;
use crate::layer::whiteout::{
    EntryClass, OPAQUE_MARKER, classify, is_private_xattr, whiteout_name,
};
use crate::sys::{self, Stat};

/// How to write a layer.
#[derive(Clone, Debug, Default)]
pub struct LayerOptions {
    /// Clamp every mtime to this many seconds since the epoch (`SOURCE_DATE_EPOCH`).
    pub source_date_epoch: Option<i64>,
}

impl LayerOptions {
    /// Options from the environment: `SOURCE_DATE_EPOCH`, when set, must be an integer.
    pub fn from_env() -> ImageResult<LayerOptions> {
        let source_date_epoch =
            match std::env::var_os("SOURCE_DATE_EPOCH") {
                None => None,
                Some(v) => Some(v.to_str().and_then(|s| s.trim().parse().ok()).ok_or_else(
                    || {
                        ImageError::Invalid(format!(
                            "SOURCE_DATE_EPOCH={}: not a number of seconds",
                            v.to_string_lossy()
                        ))
                    },
                )?),
            };
        Ok(LayerOptions { source_date_epoch })
    }

    /// The mtime recorded for `st`: clamped to `SOURCE_DATE_EPOCH` when set, never negative.
    pub fn mtime_of(&self, st: &Stat) -> u64 {
        let t = match self.source_date_epoch {
            Some(e) => st.st_mtime.min(e),
            None => st.st_mtime,
        };
        t.max(0) as u64
    }
}

/// What [`write_layer`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Tar entries, not counting PAX headers.
    pub entries: u64,
    /// Regular files written with their data.
    pub files: u64,
    /// Bytes of file data.
    pub data_bytes: u64,
    /// Bytes of the whole tar stream.
    pub tar_bytes: u64,
    pub whiteouts: u64,
    pub opaque_dirs: u64,
    pub hardlinks: u64,
    /// Sockets of the upper layer, which a tar cannot hold.
    pub skipped_sockets: Vec<PathBuf>,
}

/// Writes the upper layer `upper` as an OCI layer tar to `out`; `lowers` (top-most first)
/// decide which whiteouts and opaque markers hide something.
pub fn write_layer(
    upper: &Path,
    lowers: &[PathBuf],
    out: impl Write,
    opts: &LayerOptions,
) -> ImageResult<LayerStats> {
    let view = LowerView::open(lowers)?;
    let root = sys::open_root(upper).map_err(ImageError::io("opening upper layer", upper))?;
    let mut w = Writer {
        upper,
        opts,
        out: BufWriter::with_capacity(1 << 18, out),
        buf: vec![0u8; 1 << 20],
        links: HashMap::new(),
        refused: Vec::new(),
        stats: LayerStats::default(),
    };
    let st = sys::stat_fd(root.as_fd()).map_err(|e| ImageError::sys("stat", upper, e))?;
    let first = w.enter_dir(Vec::new(), root, st, view.root()?)?;
    let mut stack = vec![first];
    while let Some(top) = stack.last_mut() {
        let Some(item) = top.items.get(top.next) else {
            stack.pop();
            continue;
        };
        top.next += 1;
        let (dir, rel) = (top.fd.as_fd(), child_rel(&top.rel, item.name().as_bytes()));
        match item {
            Item::Whiteout(target) => {
                let wh = child_rel(&top.rel, &whiteout_name(target.as_bytes()));
                w.marker(&wh)?;
                w.stats.whiteouts += 1;
            }
            Item::Entry(e) if e.kind == FileKind::Directory => {
                let fd = sys::open_dir_at(dir, &e.name)
                    .map_err(|err| ImageError::sys("opening", join_rel(upper, &rel), err))?;
                let lower = match &top.lower {
                    Some(l) => view.child(l, &e.name)?,
                    None => None,
                };
                let st = e.stat.unwrap_or_else(sys::zeroed_stat);
                let frame = w.enter_dir(rel, fd, st, lower)?;
                stack.push(frame);
            }
            Item::Entry(e) => w.entry(dir, &rel, e)?,
        }
    }
    if !w.refused.is_empty() {
        let list: Vec<String> = w.refused.iter().map(|p| p.display().to_string()).collect();
        return Err(ImageError::Invalid(format!(
            "{}: {} entr{} named `.wh.*` cannot be stored in an OCI layer (the name is \
             reserved for whiteouts): {}",
            upper.display(),
            list.len(),
            if list.len() == 1 { "y" } else { "ies" },
            list.join(", ")
        )));
    }
    w.write(&[0u8; 2 * BLOCK])?;
    w.out
        .flush()
        .map_err(ImageError::io("writing layer tar of", upper))?;
    Ok(w.stats)
}

/// One item of a directory, in archive order.
enum Item {
    Entry(UpperEntry),
    /// A whiteout to write, for the name it hides.
    Whiteout(OsString),
}

impl Item {
    fn name(&self) -> &OsStr {
        match self {
            Item::Entry(e) => &e.name,
            Item::Whiteout(t) => t,
        }
    }
}

/// A directory being written, with its items still to write.
struct Frame {
    rel: Vec<u8>,
    fd: OwnedFd,
    lower: Option<LowerDir>,
    items: Vec<Item>,
    next: usize,
}

struct Writer<'a, W: Write> {
    upper: &'a Path,
    opts: &'a LayerOptions,
    out: BufWriter<W>,
    buf: Vec<u8>,
    /// First archive path of each inode with more than one link, by (dev, ino).
    links: HashMap<(u64, u64), Vec<u8>>,
    /// Real entries named `.wh.*`; once one is found nothing more is written.
    refused: Vec<PathBuf>,
    stats: LayerStats,
}

/// Whether an upper entry named like a whiteout or opaque marker is one: an empty regular
/// file (what ufsd and OCI extraction write), or for whiteouts an overlayfs 0/0 device.
fn is_marker_file(e: &UpperEntry) -> bool {
    e.kind == FileKind::Regular && e.stat.is_some_and(|st| st.st_size == 0)
}

impl<W: Write> Writer<'_, W> {
    fn path(&self, rel: &[u8]) -> PathBuf {
        join_rel(self.upper, rel)
    }

    fn write(&mut self, data: &[u8]) -> ImageResult<()> {
        if !self.refused.is_empty() {
            return Ok(());
        }
        self.out
            .write_all(data)
            .map_err(ImageError::io("writing layer tar of", self.upper))?;
        self.stats.tar_bytes += data.len() as u64;
        Ok(())
    }

    fn header(&mut self, h: &EntryHeader<'_>) -> ImageResult<()> {
        if !self.refused.is_empty() {
            return Ok(());
        }
        let n = write_entry_header(&mut self.out, h)
            .map_err(ImageError::io("writing layer tar of", self.upper))?;
        self.stats.tar_bytes += n;
        self.stats.entries += 1;
        Ok(())
    }

    fn mtime(&self, st: &Stat) -> u64 {
        self.opts.mtime_of(st)
    }

    /// A whiteout or opaque marker entry: an empty file, fully normalised.
    fn marker(&mut self, rel: &[u8]) -> ImageResult<()> {
        self.header(&EntryHeader {
            path: rel,
            kind: EntryType::Regular,
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: 0,
            link: None,
            dev: None,
            xattrs: &[],
        })
    }

    /// The xattrs of an entry to record: all but overlayfs's own, after checking for the
    /// overlayfs features ufsd does not support.
    fn xattrs(
        &self,
        dir: BorrowedFd<'_>,
        name: Option<&OsStr>,
        rel: &[u8],
    ) -> ImageResult<(Xattrs, bool)> {
        let path = || self.path(rel);
        let all = upper::xattrs(dir, name, path)?;
        upper::check_feature_xattrs(all.iter().map(|(n, _)| n.as_slice()), path)?;
        let opaque = upper::opaque_in(&all);
        Ok((
            all.into_iter()
                .filter(|(n, _)| !is_private_xattr(n))
                .collect(),
            opaque,
        ))
    }

    /// Writes a directory's own entry (and its opaque marker), reads its items, and returns
    /// its frame.
    fn enter_dir(
        &mut self,
        rel: Vec<u8>,
        fd: OwnedFd,
        st: Stat,
        lower: Option<LowerDir>,
    ) -> ImageResult<Frame> {
        let (xattrs, mut opaque) = self.xattrs(fd.as_fd(), None, &rel)?;
        let path = || self.path(&rel);
        let entries = upper::read_dir(fd.as_fd(), true, path)?;
        let mut items = Vec::with_capacity(entries.len());
        let mut whiteouts = Vec::new();
        for e in entries {
            let class = classify(e.name.as_bytes(), e.kind, e.rdev);
            let prefixed = e.name.as_bytes().starts_with(b".wh.");
            match class {
                EntryClass::Visible => items.push(Item::Entry(e)),
                EntryClass::Whiteout(t) if !prefixed || is_marker_file(&e) => {
                    whiteouts.push(OsStr::from_bytes(t).to_os_string());
                }
                EntryClass::OpaqueMarker if is_marker_file(&e) => opaque = true,
                _ => self
                    .refused
                    .push(self.path(&child_rel(&rel, e.name.as_bytes()))),
            }
        }
        // A whiteout is written where it hides something below and the upper directory
        // does not also hold the name (then the name is shown, and the whiteout would turn
        // a merged directory into an opaque one).
        let shown = |n: &OsStr| lower.as_ref().is_some_and(|l| l.get(n).is_some());
        whiteouts.sort();
        whiteouts.dedup();
        let held: HashSet<&OsStr> = items.iter().map(Item::name).collect();
        whiteouts.retain(|t| shown(t) && !held.contains(t.as_os_str()));
        items.extend(whiteouts.into_iter().map(Item::Whiteout));
        // Whiteouts before an entry of the same name (rank 0 before 1).
        items.sort_by(|a, b| {
            let rank = |i: &Item| matches!(i, Item::Entry(_)) as u8;
            (a.name().as_bytes(), rank(a)).cmp(&(b.name().as_bytes(), rank(b)))
        });
        let mut tar_path = if rel.is_empty() {
            b"./".to_vec()
        } else {
            let mut p = rel.clone();
            p.push(b'/');
            p
        };
        self.header(&EntryHeader {
            path: &tar_path,
            kind: EntryType::Directory,
            mode: st.st_mode & 0o7777,
            uid: u64::from(st.st_uid),
            gid: u64::from(st.st_gid),
            mtime: self.mtime(&st),
            size: 0,
            link: None,
            dev: None,
            xattrs: &xattrs,
        })?;
        if opaque && lower.is_some() {
            if rel.is_empty() {
                tar_path.clear();
            }
            tar_path.extend_from_slice(OPAQUE_MARKER);
            self.marker(&tar_path)?;
            self.stats.opaque_dirs += 1;
        }
        Ok(Frame {
            rel,
            fd,
            lower,
            items,
            next: 0,
        })
    }

    /// Writes one non-directory entry.
    fn entry(&mut self, dir: BorrowedFd<'_>, rel: &[u8], e: &UpperEntry) -> ImageResult<()> {
        let st = e.stat.unwrap_or_else(sys::zeroed_stat);
        let kind = match e.kind {
            FileKind::Regular => EntryType::Regular,
            FileKind::Symlink => EntryType::Symlink,
            FileKind::Fifo => EntryType::Fifo,
            FileKind::CharDevice => EntryType::Char,
            FileKind::BlockDevice => EntryType::Block,
            FileKind::Socket => {
                self.stats.skipped_sockets.push(self.path(rel));
                return Ok(());
            }
            FileKind::Directory => return Ok(()),
        };
        let (xattrs, _) = self.xattrs(dir, Some(&e.name), rel)?;
        let mut h = EntryHeader {
            path: rel,
            kind,
            mode: st.st_mode & 0o7777,
            uid: u64::from(st.st_uid),
            gid: u64::from(st.st_gid),
            mtime: self.mtime(&st),
            size: 0,
            link: None,
            dev: None,
            xattrs: &xattrs,
        };
        if st.st_nlink > 1 {
            if let Some(first) = self.links.get(&(st.st_dev, st.st_ino)).cloned() {
                h.kind = EntryType::Link;
                h.link = Some(&first);
                h.xattrs = &[];
                self.stats.hardlinks += 1;
                return self.header(&h);
            }
            self.links.insert((st.st_dev, st.st_ino), rel.to_vec());
        }
        match e.kind {
            FileKind::Symlink => {
                let target = sys::readlink_at(dir, &e.name)
                    .map_err(|err| ImageError::sys("readlink", self.path(rel), err))?;
                h.link = Some(&target);
                self.header(&h)
            }
            FileKind::CharDevice | FileKind::BlockDevice => {
                h.dev = Some((libc::major(st.st_rdev), libc::minor(st.st_rdev)));
                self.header(&h)
            }
            FileKind::Regular => {
                h.size = st.st_size.max(0) as u64;
                self.header(&h)?;
                self.data(dir, rel, &e.name, &st)
            }
            _ => self.header(&h),
        }
    }

    /// Copies the data of a regular file listed with `listed`, then the padding. A file
    /// that is not the same unchanged file after the read is
    /// [`ImageError::ChangedWhileRead`].
    fn data(
        &mut self,
        dir: BorrowedFd<'_>,
        rel: &[u8],
        name: &OsStr,
        listed: &Stat,
    ) -> ImageResult<()> {
        let size = listed.st_size.max(0) as u64;
        self.stats.files += 1;
        if !self.refused.is_empty() {
            return Ok(());
        }
        let fd = sys::open_at(dir, name, libc::O_RDONLY, 0)
            .map_err(|e| ImageError::sys("opening", self.path(rel), e))?;
        let mut file = File::from(fd);
        let mut left = size;
        let mut buf = std::mem::take(&mut self.buf);
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = match file.read(&mut buf[..want]) {
                Ok(0) => {
                    self.buf = buf;
                    return Err(ImageError::ChangedWhileRead(self.path(rel)));
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf = buf;
                    return Err(ImageError::io("reading", self.path(rel))(e));
                }
            };
            let r = self.write(&buf[..n]);
            if r.is_err() {
                self.buf = buf;
                return r;
            }
            left -= n as u64;
        }
        self.buf = buf;
        let after =
            sys::stat_fd(file.as_fd()).map_err(|e| ImageError::sys("stat", self.path(rel), e))?;
        let same = |a: &Stat, b: &Stat| {
            (
                a.st_ino,
                a.st_size,
                a.st_mtime,
                a.st_mtime_nsec,
                a.st_ctime,
                a.st_ctime_nsec,
            ) == (
                b.st_ino,
                b.st_size,
                b.st_mtime,
                b.st_mtime_nsec,
                b.st_ctime,
                b.st_ctime_nsec,
            )
        };
        if !same(listed, &after) {
            return Err(ImageError::ChangedWhileRead(self.path(rel)));
        }
        self.stats.data_bytes += size;
        self.write(&[0u8; BLOCK][..padding(size)])
    }
}
