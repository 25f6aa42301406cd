//! The union filesystem core: merged-view operations as methods that return values
//! (`Result<T, Errno>`), independent of FUSE, so every rule can be exercised without a
//! mount. The FUSE adapter in [`crate::fuse`] only converts and replies.

mod acl;
mod copyup;
mod discard;
pub mod gate;
pub mod handle;
mod index;
pub mod inode;
mod prefetch;
pub mod trace;
mod write;

pub use copyup::{WhiteoutFormat, remove_tree};
pub use write::{Caller, NewObject, SetAttr};

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64};

use dashmap::DashMap;

use crate::layer::merge::MergedEntry;
use crate::layer::merge::merge_listings;
use crate::layer::resolve::{Probe, Resolver, Step};
use crate::layer::stack::is_opaque_dir;
use crate::layer::whiteout::{is_private_xattr, is_reserved_name};
use crate::layer::{FileKind, LayerStack};
use crate::sys::{self, Errno, Stat, SysResult};
use handle::HandleTable;
use index::DirIndex;
use inode::{Name, Node, NodeState, NodeTable, ROOT_ID};

/// Attributes of a merged-view object: the backing `stat` with the merged-view inode number.
#[derive(Clone, Copy, Debug)]
pub struct Attr {
    pub ino: u64,
    pub st: Stat,
    /// The kernel must not cache this entry: a lower file with several links, whose
    /// names part ways when one of them is copied up (see docs/write-path.md).
    pub volatile: bool,
}

/// One entry of a merged directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirItem {
    pub name: OsString,
    pub kind: FileKind,
    pub ino: u64,
    /// The readdir offset just past this entry: derived from the name (see
    /// [`dir_offset`]), so that it means the same in every listing of the directory.
    pub off: u64,
}

/// An opened regular file.
#[derive(Debug)]
pub struct OpenedFile {
    pub fh: u64,
    pub file: Arc<File>,
    /// Whether the file is the upper layer's (writable) instance.
    pub upper: bool,
}

/// The merged view of one layer stack.
#[derive(Debug)]
pub struct UnionFs {
    stack: LayerStack,
    nodes: NodeTable,
    handles: HandleTable,
    /// The staging directory inside the work dir (absent on read-only stacks).
    work: Option<OwnedFd>,
    whiteout: WhiteoutFormat,
    temp_counter: AtomicU64,
    /// The ids of files copied up during this mount, by the upper copy's (device, inode):
    /// a copied-up file keeps the number it had in the lower layer, whatever names it is
    /// reached by later (renames, hard links).
    copied: DashMap<(u64, u64), u64>,
    /// Bumped when a directory tree is copied up, which leaves the cached layer
    /// instances of nodes inside it out of date; nodes of an older generation are
    /// resolved again before use.
    tree_gen: AtomicU32,
    /// Merged listings of recently listed directories, for lookups right after a readdir.
    indexes: index::IndexCache,
    /// The listing each directory being read is read from, by node id, until a reader
    /// reaches its end (see [`UnionFs::readdir`]).
    listings: DashMap<u64, Arc<Vec<DirItem>>>,
    /// Where copy-up and whiteout events go when someone listens.
    tracer: Arc<trace::Tracer>,
    /// The name in the work directory of the whiteout that new whiteouts are hard links
    /// of (overlay format), as kernel overlayfs shares one: a link is far cheaper than a
    /// new inode.
    shared_whiteout: parking_lot::Mutex<Option<OsString>>,
    /// Deletes removed directories' trees from the work directory after the reply.
    discarder: discard::Discarder,
    /// Reads ahead the inodes of directories being walked.
    prefetcher: prefetch::Prefetcher,
}

/// A name as found in the merged view by a fresh probe.
pub(super) struct Found {
    pub layer: usize,
    pub kind: FileKind,
    pub dirs: Vec<(usize, std::os::fd::OwnedFd)>,
    pub id: u64,
    /// The shown instance's stat.
    pub stat: Stat,
}

/// Where to reach a node's backing instance: a directory fd and, for non-directories, the
/// name inside it.
pub(super) enum Place<'a> {
    Dir(BorrowedFd<'a>),
    Entry(BorrowedFd<'a>, &'a OsStr),
}

impl UnionFs {
    /// Builds the merged view of `stack`; `work` is the staging directory for a writable
    /// stack. Fails if a layer root is unusable.
    pub fn new(
        stack: LayerStack,
        work: Option<OwnedFd>,
        whiteout: WhiteoutFormat,
    ) -> SysResult<UnionFs> {
        let nodes = NodeTable::default();
        let mut resolver = Resolver::new(stack.upper());
        let mut dirs = Vec::new();
        for i in 0..stack.len() {
            let root = stack.layer(i).root.try_clone().map_err(|_| Errno::EMFILE)?;
            let opaque = is_opaque_dir(root.as_fd())?;
            dirs.push((i, root));
            let probe = Probe::Entry {
                kind: FileKind::Directory,
                opaque,
            };
            if resolver.feed(i, probe) == Step::Done {
                break;
            }
        }
        let merged = resolver.finish().merged;
        dirs.retain(|(l, _)| merged.contains(l));
        nodes.insert_root(NodeState::new(
            None,
            Name::default(),
            FileKind::Directory,
            0,
            dirs,
            0,
        ));
        Ok(UnionFs {
            stack,
            nodes,
            handles: HandleTable::default(),
            listings: DashMap::new(),
            work,
            whiteout,
            temp_counter: AtomicU64::new(0),
            copied: DashMap::new(),
            tree_gen: AtomicU32::new(0),
            indexes: index::IndexCache::default(),
            tracer: Arc::default(),
            shared_whiteout: parking_lot::Mutex::new(None),
            discarder: discard::Discarder::default(),
            prefetcher: prefetch::Prefetcher::default(),
        })
    }

    /// At unmount: stops reading ahead, and waits until the trees of removed directories
    /// are deleted from the work directory.
    pub fn finish_background(&self) {
        self.prefetcher.finish();
        self.discarder.finish();
    }

    pub fn stack(&self) -> &LayerStack {
        &self.stack
    }

    /// The tracer of this mount's copy-ups and whiteouts (shared with its control socket).
    pub fn tracer(&self) -> Arc<trace::Tracer> {
        self.tracer.clone()
    }

    /// The merged-view path of `node` (`/` for the root; directories end with `/`), for
    /// trace lines. Takes each ancestor's lock in turn, never two at once.
    pub(super) fn path_of(&self, node: &Arc<Node>) -> String {
        let (mut names, dir) = {
            let st = node.state.read();
            (vec![st.name.clone()], st.kind.is_dir())
        };
        let mut parent = node.state.read().parent.clone();
        while let Some(p) = parent {
            let st = p.state.read();
            names.push(st.name.clone());
            parent = st.parent.clone();
        }
        let mut path = String::new();
        for n in names.iter().rev().filter(|n| !n.is_empty()) {
            path.push('/');
            path.push_str(&n.to_string_lossy());
        }
        if dir || path.is_empty() {
            path.push('/');
        }
        path
    }

    /// `parent_path` (as [`Self::path_of`] gives it) joined with `name`.
    pub(super) fn child_path(parent_path: &str, name: &OsStr, dir: bool) -> String {
        format!(
            "{parent_path}{}{}",
            name.to_string_lossy(),
            if dir { "/" } else { "" }
        )
    }

    /// A stack index as `ufsd explain` numbers lower layers: 1 is the bottom.
    pub(super) fn layer_number(&self, index: usize) -> Option<usize> {
        (index > 0 && index < self.stack.len()).then(|| self.stack.len() - index)
    }

    /// True when there is no upper layer: every change is refused with EROFS.
    pub fn read_only(&self) -> bool {
        self.stack.upper().is_none()
    }

    /// Number of nodes the kernel holds (for memory accounting and tests).
    pub fn live_nodes(&self) -> usize {
        self.nodes.len()
    }

    /// A live node, resolved again first if a tree copy-up made its state stale.
    pub(super) fn node(&self, id: u64) -> SysResult<Arc<Node>> {
        let node = self.nodes.get(id).ok_or(Errno::ESTALE)?;
        self.fresh(&node)?;
        Ok(node)
    }

    pub(super) fn generation(&self) -> u32 {
        self.tree_gen.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Brings the node's layer instances up to date with the current tree generation.
    pub(super) fn fresh(&self, node: &Arc<Node>) -> SysResult<()> {
        let now = self.generation();
        let parent = {
            let st = node.state.read();
            if st.generation == now {
                return Ok(());
            }
            st.parent.clone()
        };
        let Some(parent) = parent else {
            node.state.write().generation = now;
            return Ok(());
        };
        self.fresh(&parent)?;
        let name = node.state.read().name.clone();
        let found = self.find(&parent.state.read(), &name)?;
        let mut st = node.state.write();
        if let Some(f) = found {
            st.set_layer(f.layer);
            st.kind = f.kind;
            st.dirs = f.dirs.into_boxed_slice();
        }
        st.generation = now;
        Ok(())
    }

    /// Calls `f` with the place of the node's shown instance.
    pub(super) fn with_place<T>(
        &self,
        node: &Node,
        f: impl FnOnce(Place<'_>) -> SysResult<T>,
    ) -> SysResult<T> {
        let st = node.state.read();
        if st.kind.is_dir() {
            let fd = st
                .dirs
                .first()
                .map(|(_, fd)| fd.as_fd())
                .ok_or(Errno::ESTALE)?;
            return f(Place::Dir(fd));
        }
        let parent = st.parent.as_ref().ok_or(Errno::ESTALE)?;
        let pst = parent.state.read();
        let dir = pst.dir_in(st.layer()).ok_or(Errno::ESTALE)?;
        f(Place::Entry(dir, &st.name))
    }

    pub(super) fn stat_node(&self, node: &Node) -> SysResult<Attr> {
        if node.state.read().unlinked {
            // Removed while open: what an open upper file says, else what it was when its
            // last name went (a lower descriptor would show the lower file).
            let removed = node.state.read().removed();
            let st = match (self.handles.upper_file_of(node.id), removed) {
                (Some(file), _) => sys::stat_fd(file.as_fd())?,
                (None, Some(st)) => st,
                (None, None) => {
                    let file = self.handles.file_of(node.id).ok_or(Errno::ENOENT)?;
                    sys::stat_fd(file.as_fd())?
                }
            };
            return Ok(Attr {
                ino: node.id,
                st,
                volatile: false,
            });
        }
        let mut st = self.with_place(node, |p| match p {
            Place::Dir(fd) => sys::stat_fd(fd),
            Place::Entry(dir, name) => sys::stat_at(dir, name),
        })?;
        // As overlayfs: a directory merged from several layers has no meaningful link
        // count, and reports 1.
        let layer = {
            let ns = node.state.read();
            if ns.dirs.len() > 1 {
                st.st_nlink = 1;
            }
            ns.layer()
        };
        Ok(Attr {
            ino: node.id,
            st,
            volatile: self.is_volatile(layer, &st),
        })
    }

    /// Whether names of this object may start to mean different files: a lower regular
    /// file with several links, on a writable stack.
    fn is_volatile(&self, layer: usize, st: &Stat) -> bool {
        !self.read_only()
            && layer != 0
            && st.st_mode & libc::S_IFMT == libc::S_IFREG
            && st.st_nlink > 1
    }

    /// Looks `name` up in the directory `parent`, top-down through its merged layers,
    /// and counts one kernel reference to what it finds.
    pub fn lookup(&self, parent: u64, name: &OsStr) -> SysResult<Attr> {
        if name.len() > 255 {
            return Err(Errno::ENAMETOOLONG);
        }
        let parent = self.node(parent)?;
        let found = {
            let pst = parent.state.read();
            if !pst.kind.is_dir() {
                return Err(Errno::ENOTDIR);
            }
            self.find_indexed(&parent, &pst, name)?
                .ok_or(Errno::ENOENT)?
        };
        Ok(self.remember(parent, name, found))
    }

    /// Counts one kernel reference to `found`, the entry `name` of `parent`, and gives
    /// its attributes.
    pub(super) fn remember(&self, parent: Arc<Node>, name: &OsStr, found: Found) -> Attr {
        let (id, layer) = (found.id, found.layer);
        let attr = Attr {
            ino: id,
            st: found.stat,
            volatile: self.is_volatile(layer, &found.stat),
        };
        self.nodes.lookup(
            id,
            NodeState::new(
                Some(parent),
                name.into(),
                found.kind,
                layer,
                found.dirs,
                self.generation(),
            ),
        );
        attr
    }

    /// The id of a non-directory found in `layer`: a file copied up during this mount keeps
    /// its lower number.
    fn file_id(&self, layer: usize, st: &Stat) -> u64 {
        if layer == 0
            && let Some(id) = self.copied.get(&(st.st_dev, st.st_ino))
        {
            return *id;
        }
        self.id_of(st)
    }

    /// [`Self::find`], answered from the directory's cached merged listing where one is at
    /// hand (after a readdir): an absent name costs no syscall, a file one `fstatat`.
    /// Directories are always probed, for their merged layers.
    fn find_indexed(
        &self,
        parent: &Node,
        pst: &NodeState,
        name: &OsStr,
    ) -> SysResult<Option<Found>> {
        let mut index = self.indexes.get(parent.id, self.generation());
        if index.is_none()
            && pst.dirs.len() > 1
            && (pst.dirs.len() >= INDEX_MIN_LAYERS
                || self.indexes.note_miss(parent.id) >= INDEX_AFTER_LOOKUPS)
        {
            index = Some(self.build_index(parent.id, pst)?);
        }
        if let Some(index) = index {
            match index.get(name) {
                None => return Ok(None),
                Some(&(layer, kind)) if !kind.is_dir() => {
                    if self.prefetcher.file_looked_up(parent.id, self.generation()) {
                        self.read_ahead(pst, &index);
                    }
                    if let Some(fd) = pst.dir_in(layer)
                        && let Ok(st) = sys::stat_at(fd, name)
                        && FileKind::from_mode(st.st_mode) == Some(kind)
                    {
                        let id = self.file_id(layer, &st);
                        return Ok(Some(Found {
                            layer,
                            kind,
                            dirs: Vec::new(),
                            id,
                            stat: st,
                        }));
                    }
                }
                Some(_) => {}
            }
        }
        self.find(pst, name)
    }

    /// Lists every layer of the directory `pst` (node `id`) once and caches which layer
    /// shows each name: in a directory merged from many layers that is cheaper than
    /// probing them all for each name looked up.
    fn build_index(&self, id: u64, pst: &NodeState) -> SysResult<Arc<DirIndex>> {
        let generation = self.generation();
        let token = self.indexes.begin();
        let merged = self.merged_entries(&pst.dirs)?;
        let index = Arc::new(index_of(&merged));
        self.indexes.put(id, generation, token, index.clone());
        Ok(index)
    }

    /// Has the inodes of the names of an indexed directory read in the background: the
    /// lookups of its files are likely to go on (see `prefetch`).
    fn read_ahead(&self, pst: &NodeState, index: &DirIndex) {
        let mut by_layer: Vec<(usize, Vec<OsString>)> = Vec::new();
        for (name, &(layer, _)) in index.iter().take(prefetch::MAX_NAMES) {
            match by_layer.iter_mut().find(|(l, _)| *l == layer) {
                Some((_, names)) => names.push(name.clone()),
                None => by_layer.push((layer, vec![name.clone()])),
            }
        }
        for (layer, mut names) in by_layer {
            let Some(dir) = pst
                .dir_in(layer)
                .and_then(|fd| fd.try_clone_to_owned().ok())
            else {
                continue;
            };
            names.sort_unstable();
            self.prefetcher.ahead(prefetch::Job { dir, names });
        }
    }

    /// Probes `name` in the directory state `pst` without touching the node table.
    pub(super) fn find(&self, pst: &NodeState, name: &OsStr) -> SysResult<Option<Found>> {
        if is_reserved_name(name.as_bytes()) {
            return Ok(None);
        }
        let mut resolver = Resolver::new(self.stack.upper());
        let mut stats: Vec<(usize, Stat)> = Vec::new();
        let mut dirs = Vec::new();
        for (i, (layer, fd)) in pst.dirs.iter().enumerate() {
            let bottom = i + 1 == pst.dirs.len();
            let p = self.stack.probe_in(fd.as_fd(), name, bottom)?;
            let step = resolver.feed(*layer, p.probe);
            if let Some(s) = p.stat {
                stats.push((*layer, s));
            }
            if let Some(d) = p.dir {
                dirs.push((*layer, d));
            }
            if step == Step::Done {
                break;
            }
        }
        let res = resolver.finish();
        let Some((layer, kind)) = res.winner else {
            return Ok(None);
        };
        dirs.retain(|(l, _)| res.merged.contains(l));
        let stat_of = |l: usize| stats.iter().find(|(sl, _)| *sl == l).map(|(_, s)| s);
        let st = stat_of(layer).ok_or(Errno::EIO)?;
        let id = if kind.is_dir() {
            // A directory copied up during this mount keeps its number wherever it moves;
            // otherwise a merged directory shows the number of the lower directory it was
            // copied up from, so it is the same before and after a copy-up.
            let copied = (layer == 0).then(|| self.copied.get(&(st.st_dev, st.st_ino)).map(|i| *i));
            match (copied.flatten(), res.origin.and_then(stat_of)) {
                (Some(id), _) => id,
                (None, Some(ost)) => self.id_of(ost),
                (None, None) => self.id_of(st),
            }
        } else {
            self.file_id(layer, st)
        };
        Ok(Some(Found {
            layer,
            kind,
            dirs,
            id,
            stat: *st,
        }))
    }

    /// The merged-view id of the backing file `st`.
    pub(super) fn id_of(&self, st: &Stat) -> u64 {
        self.nodes
            .id_for(self.stack.dev_index(st.st_dev), st.st_ino)
    }

    pub fn forget(&self, id: u64, n: u64) {
        self.nodes.forget(id, n);
    }

    /// Attributes of a node; through the open handle `fh` when given, so that a file
    /// unlinked while open still answers.
    pub fn getattr(&self, id: u64, fh: Option<u64>) -> SysResult<Attr> {
        if let Some(fh) = fh {
            if let Some((parent, name)) = self.handles.place(fh) {
                self.fresh(&parent)?;
                let found = self.find(&parent.state.read(), &name)?;
                if let Some(f) = found.filter(|f| !f.kind.is_dir()) {
                    return Ok(Attr {
                        ino: id,
                        st: f.stat,
                        volatile: false,
                    });
                }
            }
            if let Some(file) = self.handles.file(fh) {
                let st = sys::stat_fd(file.as_fd())?;
                return Ok(Attr {
                    ino: id,
                    st,
                    volatile: false,
                });
            }
        }
        let node = self.node(id)?;
        self.stat_node(&node)
    }

    pub fn readlink(&self, id: u64) -> SysResult<Vec<u8>> {
        let node = self.node(id)?;
        self.with_place(&node, |p| match p {
            Place::Entry(dir, name) => sys::readlink_at(dir, name),
            Place::Dir(_) => Err(Errno::EINVAL),
        })
    }

    /// Opens a regular file: for writing, copied up first; for reading, where it is.
    pub fn open(&self, id: u64, flags: i32) -> SysResult<OpenedFile> {
        let writes = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if writes {
            return self.open_for_write(id, flags);
        }
        let node = self.node(id)?;
        if node.state.read().layer() == 0 && !self.read_only() {
            return self.open_upper(&node, flags);
        }
        let fd = self.with_place(&node, |p| match p {
            Place::Entry(dir, name) => {
                sys::open_at(dir, name, libc::O_RDONLY | (flags & libc::O_NONBLOCK), 0)
            }
            Place::Dir(_) => Err(Errno::EISDIR),
        })?;
        let file = Arc::new(File::from(fd));
        let place = {
            let st = node.state.read();
            st.parent.clone().map(|p| (p, st.name.to_os_string()))
        };
        let fh = self.handles.add_file(handle::OpenFile {
            file: file.clone(),
            upper: false,
            place,
            ino: node.id,
        });
        Ok(OpenedFile {
            fh,
            file,
            upper: false,
        })
    }

    /// Reads through the daemon (no passthrough). A file opened read-only in a lower
    /// layer and copied up since reads the copy from then on, as on overlayfs.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> SysResult<Vec<u8>> {
        let file = match self.handles.lower_ino(fh) {
            Some(ino) => self.follow_copy_up(fh, ino)?,
            None => self.handles.file(fh).ok_or(Errno::EBADF)?,
        };
        let mut buf = vec![0u8; size as usize];
        let n = sys::pread_full(file.as_fd(), &mut buf, offset)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// The file to read for the lower-layer handle `fh` of node `ino`: the upper copy once
    /// there is one (the handle is switched to it).
    fn follow_copy_up(&self, fh: u64, ino: u64) -> SysResult<Arc<File>> {
        let copied = self.nodes.get(ino).filter(|n| {
            let st = n.state.read();
            st.layer() == 0 && !st.unlinked
        });
        if let Some(node) = copied {
            let fd = self.with_place(&node, |p| match p {
                Place::Entry(dir, name) => sys::open_at(dir, name, libc::O_RDONLY, 0),
                Place::Dir(_) => Err(Errno::EISDIR),
            });
            if let Ok(fd) = fd {
                let file = Arc::new(File::from(fd));
                self.handles.switch_to_upper(fh, file.clone());
                return Ok(file);
            }
        }
        self.handles.file(fh).ok_or(Errno::EBADF)
    }

    pub fn release(&self, fh: u64) {
        self.handles.remove_file(fh);
    }

    /// The merged listing of directory `id`, `.` and `..` first, then in offset order:
    /// directories, then the other names.
    /// Offset 0 (a fresh read or a rewind) reads the layers again; a later offset goes on
    /// in the listing the last fresh read of that directory made, whoever made it. There
    /// are no directory handles: the kernel is told that opening a directory needs no
    /// request (docs/design.md, "Caching"), and offsets name entries ([`dir_offset`]), so
    /// any listing of the directory resumes at the right place.
    pub fn readdir(&self, id: u64, offset: u64) -> SysResult<Arc<Vec<DirItem>>> {
        let node = self.node(id)?;
        if !node.state.read().kind.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        self.fresh(&node)?;
        if offset != 0
            && let Some(cached) = self.listings.get(&id).map(|l| l.clone())
        {
            if cached.last().is_none_or(|d| d.off <= offset) {
                // Past the end: the reader is done with it.
                self.listings.remove(&id);
            }
            return Ok(cached);
        }
        let listing = Arc::new(self.list_merged(&node)?);
        if self.listings.len() >= MAX_LISTINGS {
            // Readers that stopped half-way: dropping theirs only makes them list again.
            self.listings.clear();
        }
        self.listings.insert(id, listing.clone());
        Ok(listing)
    }

    /// The merged listing of a directory made of `dirs` (its layer directories, top-down).
    pub(super) fn merged_entries(&self, dirs: &[(usize, OwnedFd)]) -> SysResult<Vec<MergedEntry>> {
        let mut listings = Vec::with_capacity(dirs.len());
        for (layer, fd) in dirs {
            listings.push(self.stack.list(*layer, fd.as_fd())?);
        }
        Ok(merge_listings(&listings, self.stack.upper()))
    }

    fn list_merged(&self, node: &Node) -> SysResult<Vec<DirItem>> {
        let (generation, token) = (self.generation(), self.indexes.begin());
        let st = node.state.read();
        let parent_id = st.parent.as_ref().map(|p| p.id).unwrap_or(ROOT_ID);
        let merged = self.merged_entries(&st.dirs)?;
        self.indexes
            .put(node.id, generation, token, Arc::new(index_of(&merged)));
        let mut out = Vec::with_capacity(merged.len() + 2);
        out.push(DirItem {
            name: ".".into(),
            kind: FileKind::Directory,
            ino: node.id,
            off: 1,
        });
        out.push(DirItem {
            name: "..".into(),
            kind: FileKind::Directory,
            ino: parent_id,
            off: 2,
        });
        let upper_dev = self.stack.upper().map(|u| self.stack.layer(u).dev);
        for e in merged {
            // The same numbers as lookup gives (see `find`).
            let (layer, ino) = match e.origin {
                Some(origin) if e.kind.is_dir() => origin,
                _ => (e.layer, e.ino),
            };
            let copied = match upper_dev {
                Some(dev) if layer == 0 && !e.kind.is_dir() => {
                    self.copied.get(&(dev, ino)).map(|id| *id)
                }
                _ => None,
            };
            let ino = copied.unwrap_or_else(|| {
                let dev = self.stack.dev_index(self.stack.layer(layer).dev);
                self.nodes.id_for(dev, ino)
            });
            out.push(DirItem {
                off: dir_offset(e.name.as_bytes(), e.kind.is_dir()),
                name: e.name,
                kind: e.kind,
                ino,
            });
        }
        // In offset order (directories first), so that a listing resumes after any offset
        // it handed out.
        out[2..].sort_unstable_by_key(|d| d.off);
        Ok(out)
    }

    pub fn statfs(&self, id: u64) -> SysResult<libc::statvfs> {
        let _ = self.node(id)?;
        sys::statvfs(self.stack.layer(0).root.as_fd())
    }

    pub fn getxattr(&self, id: u64, name: &OsStr) -> SysResult<Vec<u8>> {
        if is_private_xattr(name.as_bytes()) {
            return Err(Errno::ENODATA);
        }
        let node = self.node(id)?;
        let v = self.with_place(&node, |p| match p {
            Place::Dir(fd) => sys::get_xattr(fd, None, name),
            Place::Entry(dir, n) => sys::get_xattr(dir, Some(n), name),
        })?;
        v.ok_or(Errno::ENODATA)
    }

    /// The xattr names of a node, NUL-separated, overlay-private ones left out, and
    /// `trusted.*` ones unless the caller is `privileged` (root): local filesystems list
    /// them only to CAP_SYS_ADMIN, and the kernel leaves that filtering to the filesystem.
    pub fn listxattr(&self, id: u64, privileged: bool) -> SysResult<Vec<u8>> {
        let node = self.node(id)?;
        let raw = self.with_place(&node, |p| match p {
            Place::Dir(fd) => sys::list_xattr(fd, None),
            Place::Entry(dir, n) => sys::list_xattr(dir, Some(n)),
        })?;
        let mut out = Vec::with_capacity(raw.len());
        for name in raw.split(|b| *b == 0).filter(|n| !n.is_empty()) {
            if !is_private_xattr(name) && (privileged || !name.starts_with(b"trusted.")) {
                out.extend_from_slice(name);
                out.push(0);
            }
        }
        Ok(out)
    }

    /// `access(2)`: modes are enforced by the kernel (`default_permissions`); this only
    /// refuses writes to a read-only stack.
    pub fn access(&self, id: u64, mask: i32) -> SysResult<()> {
        let _ = self.node(id)?;
        if mask & libc::W_OK != 0 && self.read_only() {
            return Err(Errno::EROFS);
        }
        Ok(())
    }
}

/// Directories merged from at least this many layers get a name index on their first
/// lookup: probing each layer for each name costs more than listing them all once.
const INDEX_MIN_LAYERS: usize = 8;

/// Other merged directories get one after this many lookups (a walk that stats every
/// name, say): one listing per layer instead of a probe per layer for every name.
const INDEX_AFTER_LOOKUPS: u32 = 4;

/// Listings kept for directories being read; more means readers that stopped half-way.
const MAX_LISTINGS: usize = 256;

/// Which layer shows each name of a merged listing, and as what.
fn index_of(merged: &[MergedEntry]) -> DirIndex {
    merged
        .iter()
        .map(|e| (e.name.clone(), (e.layer, e.kind)))
        .collect()
}

/// The readdir offset of the entry `name`: a hash of the name, above the offsets of `.`
/// and `..`, with directories' offsets below all others, so that a listing in offset
/// order has its directories first (a lean first batch carries them: see
/// `FuseAdapter::readdirplus`). The kernel may resume a listing from a page it cached, or
/// from another open handle's listing, after the directory changed: an offset that names
/// the same entry in every listing resumes at the right place (entries created meanwhile
/// may or may not be seen, as POSIX allows), where a position would skip or repeat names.
/// Two names with one hash (a chance of about n²/2⁶²) could lose the second at a chunk
/// boundary.
fn dir_offset(name: &[u8], is_dir: bool) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in name {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Below 2⁶³: the kernel keeps offsets as signed positions.
    let base = if is_dir { 3 } else { FIRST_NON_DIR_OFFSET };
    base + (h >> 3)
}

/// Offsets from here up name entries that are not directories.
pub const FIRST_NON_DIR_OFFSET: u64 = 3 + (1 << 61);
