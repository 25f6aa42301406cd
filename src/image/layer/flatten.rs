//! The merged view of a stack of layer directories as one plain tar: what `docker export`
//! writes (docs/transfer.md, "export").
//!
//! The layers are read offline with the union rules of [`crate::layer`] through
//! [`LowerView`]: both whiteout formats and both opaque markers hide what they hide, and
//! no whiteout, opaque marker or overlay-private xattr reaches the archive. A single
//! directory (a mountpoint, or any tree) is a stack of one.
//!
//! Order and headers are those of [`super::write_layer`]: depth-first, each directory's
//! names sorted bytewise, the root written as `./`, normalised ustar headers with PAX
//! records for long names and xattrs, hard links (inodes shown under several paths)
//! written as links to the first path. Sockets cannot be stored and are skipped.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use tar::EntryType;

use super::LayerOptions;
use super::header::{BLOCK, EntryHeader, padding, write_entry_header};
use crate::image::lower::{LowerDir, LowerView};
use crate::image::upper::{self, Xattrs};
use crate::image::{ImageError, ImageResult, child_rel, join_rel};
use crate::layer::FileKind;
use crate::layer::stack::kind_of;
use crate::layer::whiteout::is_private_xattr;
use crate::sys::{self, Stat};

/// What [`write_flattened`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlattenStats {
    /// Tar entries, not counting PAX headers.
    pub entries: u64,
    pub files: u64,
    pub data_bytes: u64,
    pub tar_bytes: u64,
    pub hardlinks: u64,
    /// Sockets, which a tar cannot hold.
    pub skipped_sockets: Vec<PathBuf>,
}

/// One directory being written: its merged listing and the names still to write.
struct Frame {
    rel: Vec<u8>,
    dir: LowerDir,
    names: Vec<OsString>,
    next: usize,
}

struct Flattener<'a, W: Write> {
    layers: &'a [PathBuf],
    opts: &'a LayerOptions,
    out: BufWriter<W>,
    buf: Vec<u8>,
    /// First archive path of each inode shown under several paths, by (dev, ino).
    links: HashMap<(u64, u64), Vec<u8>>,
    stats: FlattenStats,
}

/// Writes the merged tree of `layers` (top-most first) as one tar to `out`.
pub fn write_flattened(
    layers: &[PathBuf],
    out: impl Write,
    opts: &LayerOptions,
) -> ImageResult<FlattenStats> {
    let view = LowerView::open(layers)?;
    let mut f = Flattener {
        layers,
        opts,
        out: BufWriter::with_capacity(1 << 18, out),
        buf: vec![0u8; 1 << 20],
        links: HashMap::new(),
        stats: FlattenStats::default(),
    };
    let root_stat = match layers.first() {
        Some(top) => {
            let fd = sys::open_root(top).map_err(ImageError::io("opening", top))?;
            sys::stat_fd(fd.as_fd()).map_err(|e| ImageError::sys("stat", top, e))?
        }
        None => {
            let mut st = sys::zeroed_stat();
            st.st_mode = libc::S_IFDIR | 0o755;
            st
        }
    };
    let root_xattrs = match layers.first() {
        Some(top) => {
            let fd = sys::open_root(top).map_err(ImageError::io("opening", top))?;
            f.xattrs(fd.as_fd(), None, 0, b"")?
        }
        None => Vec::new(),
    };
    f.dir_header(b"", &root_stat, &root_xattrs)?;
    let mut stack: Vec<Frame> = view
        .root()?
        .map(|d| Frame::new(Vec::new(), d))
        .into_iter()
        .collect();
    while let Some(top) = stack.last_mut() {
        let Some(name) = top.names.get(top.next).cloned() else {
            stack.pop();
            continue;
        };
        top.next += 1;
        let rel = child_rel(&top.rel, name.as_bytes());
        let Some((layer, fd)) = top.dir.holder(&name) else {
            continue;
        };
        let path = || join_rel(&layers[layer], &rel);
        let st = match sys::stat_at(fd, &name) {
            Ok(st) => st,
            // Gone meanwhile (a live mountpoint).
            Err(sys::Errno::ENOENT) => continue,
            Err(e) => return Err(ImageError::sys("stat", path(), e)),
        };
        let kind = kind_of(&st).map_err(|e| ImageError::sys("stat", path(), e))?;
        let xattrs = f.xattrs(fd, Some(&name), layer, &rel)?;
        if kind == FileKind::Directory {
            f.dir_header(&rel, &st, &xattrs)?;
            if let Some(child) = view.child(&top.dir, &name)? {
                stack.push(Frame::new(rel, child));
            }
        } else {
            f.entry(fd, &name, &rel, layer, kind, &st, &xattrs)?;
        }
    }
    f.write(&[0u8; 2 * BLOCK])?;
    f.out
        .flush()
        .map_err(ImageError::io("writing tar of", top_path(layers)))?;
    Ok(f.stats)
}

fn top_path(layers: &[PathBuf]) -> &Path {
    layers.first().map_or(Path::new("/"), PathBuf::as_path)
}

impl Frame {
    fn new(rel: Vec<u8>, dir: LowerDir) -> Frame {
        let mut names: Vec<OsString> = dir.shown().keys().cloned().collect();
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        Frame {
            rel,
            dir,
            names,
            next: 0,
        }
    }
}

impl<W: Write> Flattener<'_, W> {
    fn write(&mut self, data: &[u8]) -> ImageResult<()> {
        self.out
            .write_all(data)
            .map_err(ImageError::io("writing tar of", top_path(self.layers)))?;
        self.stats.tar_bytes += data.len() as u64;
        Ok(())
    }

    fn header(&mut self, h: &EntryHeader<'_>) -> ImageResult<()> {
        let n = write_entry_header(&mut self.out, h)
            .map_err(ImageError::io("writing tar of", top_path(self.layers)))?;
        self.stats.tar_bytes += n;
        self.stats.entries += 1;
        Ok(())
    }

    fn mtime(&self, st: &Stat) -> u64 {
        self.opts.mtime_of(st)
    }

    /// The xattrs to record: all but overlayfs's own (opaque markers included).
    fn xattrs(
        &self,
        dir: BorrowedFd<'_>,
        name: Option<&OsStr>,
        layer: usize,
        rel: &[u8],
    ) -> ImageResult<Xattrs> {
        let base = self
            .layers
            .get(layer)
            .map_or(Path::new("/"), PathBuf::as_path);
        let all = upper::xattrs(dir, name, || join_rel(base, rel))?;
        Ok(all
            .into_iter()
            .filter(|(n, _)| !is_private_xattr(n))
            .collect())
    }

    fn dir_header(&mut self, rel: &[u8], st: &Stat, xattrs: &Xattrs) -> ImageResult<()> {
        let path = if rel.is_empty() {
            b"./".to_vec()
        } else {
            [rel, b"/"].concat()
        };
        self.header(&EntryHeader {
            path: &path,
            kind: EntryType::Directory,
            mode: st.st_mode & 0o7777,
            uid: u64::from(st.st_uid),
            gid: u64::from(st.st_gid),
            mtime: self.mtime(st),
            size: 0,
            link: None,
            dev: None,
            xattrs,
        })
    }

    /// Writes one non-directory entry.
    #[allow(clippy::too_many_arguments)]
    fn entry(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        rel: &[u8],
        layer: usize,
        kind: FileKind,
        st: &Stat,
        xattrs: &Xattrs,
    ) -> ImageResult<()> {
        let path = || join_rel(&self.layers[layer], rel);
        let tar_kind = match kind {
            FileKind::Regular => EntryType::Regular,
            FileKind::Symlink => EntryType::Symlink,
            FileKind::Fifo => EntryType::Fifo,
            FileKind::CharDevice => EntryType::Char,
            FileKind::BlockDevice => EntryType::Block,
            FileKind::Socket => {
                self.stats.skipped_sockets.push(path());
                return Ok(());
            }
            FileKind::Directory => return Ok(()),
        };
        let mut h = EntryHeader {
            path: rel,
            kind: tar_kind,
            mode: st.st_mode & 0o7777,
            uid: u64::from(st.st_uid),
            gid: u64::from(st.st_gid),
            mtime: self.mtime(st),
            size: 0,
            link: None,
            dev: None,
            xattrs,
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
        match kind {
            FileKind::Symlink => {
                let target = sys::readlink_at(dir, name)
                    .map_err(|e| ImageError::sys("readlink", path(), e))?;
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
                self.data(dir, name, &path(), h.size)
            }
            _ => self.header(&h),
        }
    }

    /// Copies `size` bytes of a regular file, then the padding.
    fn data(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        path: &Path,
        size: u64,
    ) -> ImageResult<()> {
        let fd = sys::open_at(dir, name, libc::O_RDONLY, 0)
            .map_err(|e| ImageError::sys("opening", path, e))?;
        let mut file = File::from(fd);
        let mut left = size;
        let mut buf = std::mem::take(&mut self.buf);
        let result = (|| {
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                let n = match file.read(&mut buf[..want]) {
                    Ok(0) => {
                        return Err(ImageError::Invalid(format!(
                            "{}: shrank while being read ({size} bytes expected)",
                            path.display()
                        )));
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(ImageError::io("reading", path)(e)),
                };
                self.write(&buf[..n])?;
                left -= n as u64;
            }
            Ok(())
        })();
        self.buf = buf;
        result?;
        self.stats.files += 1;
        self.stats.data_bytes += size;
        self.write(&[0u8; BLOCK][..padding(size)])
    }
}
