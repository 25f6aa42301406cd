//! The inode table: every merged-view object the kernel holds a reference to.
//!
//! A node's id is both the FUSE node id and the `st_ino` shown to users (fuser ties the
//! two). It is derived from the backing file's device and inode number — of its *origin*
//! for a copied-up file — so it is stable for the life of the mount, hard links inside one
//! layer share one node, and a file keeps its number across copy-up.
//!
//! Invariants:
//! - a node is in the table while the kernel's lookup count for it is above zero (the root
//!   always is);
//! - a node holds its parent (an `Arc`), so the parent's directory fds outlive every child
//!   that is reached through them;
//! - a directory node holds one open fd per merged layer directory, top-down; other nodes
//!   hold only the layer index of the entry, found again by name in the parent's fd.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use parking_lot::RwLock;

use crate::layer::FileKind;

/// The FUSE root node id.
pub const ROOT_ID: u64 = 1;

/// Bits of an id that carry the backing inode number; the device index sits above.
const INO_BITS: u32 = 56;
/// Device index reserved for ids that had to be synthesised.
const SYNTHETIC_DEV: u64 = 0xff;

/// A name inside a directory, kept inline when short (most names are), so that a node
/// needs no second allocation for it: the node table is the daemon's main memory cost.
#[derive(Clone)]
pub struct Name(NameRepr);

#[derive(Clone)]
enum NameRepr {
    Inline { len: u8, bytes: [u8; INLINE_NAME] },
    Heap(Box<[u8]>),
}

/// The longest name stored inline (a `Name` is then as big as a `Box<[u8]>` and a tag).
const INLINE_NAME: usize = 22;

impl Name {
    pub fn new(name: &OsStr) -> Name {
        let b = name.as_bytes();
        if b.len() <= INLINE_NAME {
            let mut bytes = [0; INLINE_NAME];
            bytes[..b.len()].copy_from_slice(b);
            Name(NameRepr::Inline {
                len: b.len() as u8,
                bytes,
            })
        } else {
            Name(NameRepr::Heap(b.into()))
        }
    }
}

impl Default for Name {
    fn default() -> Name {
        Name::new(OsStr::new(""))
    }
}

impl std::ops::Deref for Name {
    type Target = OsStr;
    fn deref(&self) -> &OsStr {
        match &self.0 {
            NameRepr::Inline { len, bytes } => OsStr::from_bytes(&bytes[..usize::from(*len)]),
            NameRepr::Heap(b) => OsStr::from_bytes(b),
        }
    }
}

impl From<&OsStr> for Name {
    fn from(name: &OsStr) -> Name {
        Name::new(name)
    }
}

impl From<&str> for Name {
    fn from(name: &str) -> Name {
        Name::new(OsStr::new(name))
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        **self == **other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

/// What few nodes need: the other names of a hard-linked file, and the attributes of a
/// file whose last name went.
#[derive(Debug, Default)]
struct NodeExtra {
    aliases: Vec<(Arc<Node>, Name)>,
    removed: Option<crate::sys::Stat>,
}

/// Where a node lives: its name in its parent and its instances in the layers.
#[derive(Debug)]
pub struct NodeState {
    pub parent: Option<Arc<Node>>,
    pub name: Name,
    /// For directories: open fds of every merged layer directory, top-down.
    pub dirs: Box<[(usize, OwnedFd)]>,
    extra: Option<Box<NodeExtra>>,
    /// The tree generation this state was resolved in (see `UnionFs::fresh`).
    pub generation: u32,
    /// Layer of the instance the merged view shows.
    layer: u16,
    pub kind: FileKind,
    /// No known name is left: only open handles reach the file.
    pub unlinked: bool,
}

/// A layer index as a node keeps it: stacks are far below 65,536 layers (the kernel's
/// overlayfs allows 500), which `LayerStack::open` checks.
fn layer_u16(layer: usize) -> u16 {
    u16::try_from(layer).expect("layer index fits u16 (checked at mount)")
}

/// How many other names of one file are remembered.
const MAX_ALIASES: usize = 8;

/// Directories are compared by id: a directory forgotten and looked up again is a new
/// `Node` with the same id, and still the same place.
fn same_place(a: &Arc<Node>, an: &OsStr, b: &Arc<Node>, bn: &OsStr) -> bool {
    a.id == b.id && an == bn
}

impl NodeState {
    /// A node state with no other names known.
    pub fn new(
        parent: Option<Arc<Node>>,
        name: Name,
        kind: FileKind,
        layer: usize,
        dirs: Vec<(usize, OwnedFd)>,
        generation: u32,
    ) -> NodeState {
        NodeState {
            parent,
            name,
            dirs: dirs.into_boxed_slice(),
            extra: None,
            generation,
            layer: layer_u16(layer),
            kind,
            unlinked: false,
        }
    }

    /// Layer of the instance the merged view shows.
    pub fn layer(&self) -> usize {
        usize::from(self.layer)
    }

    pub fn set_layer(&mut self, layer: usize) {
        self.layer = layer_u16(layer);
    }

    /// The other known names of the node.
    fn aliases(&mut self) -> &mut Vec<(Arc<Node>, Name)> {
        &mut self.extra.get_or_insert_with(Box::default).aliases
    }

    fn retain_aliases(&mut self, keep: impl FnMut(&(Arc<Node>, Name)) -> bool) {
        if let Some(e) = &mut self.extra {
            e.aliases.retain(keep);
            self.shrink_extra();
        }
    }

    /// Frees the extra record once it holds nothing.
    fn shrink_extra(&mut self) {
        if self
            .extra
            .as_ref()
            .is_some_and(|e| e.aliases.is_empty() && e.removed.is_none())
        {
            self.extra = None;
        }
    }

    /// Its attributes when its last name went, for descriptors the daemon has no handle
    /// of (fifos and devices are opened by the kernel alone).
    pub fn removed(&self) -> Option<crate::sys::Stat> {
        self.extra.as_ref().and_then(|e| e.removed)
    }

    pub fn set_removed(&mut self, st: crate::sys::Stat) {
        self.extra.get_or_insert_with(Box::default).removed = Some(st);
    }

    /// Makes (`parent`, `name`) the name the node is reached by, remembering the previous
    /// one as an alias (a hard link).
    pub fn set_primary(&mut self, parent: Arc<Node>, name: Name) {
        self.unlinked = false;
        if let Some(old) = &self.parent {
            if same_place(old, &self.name, &parent, &name) {
                return;
            }
            if !self.kind.is_dir() {
                let old = (old.clone(), std::mem::take(&mut self.name));
                self.aliases().push(old);
            }
        }
        self.retain_aliases(|(p, n)| !same_place(p, n, &parent, &name));
        if let Some(e) = &mut self.extra
            && e.aliases.len() > MAX_ALIASES
        {
            e.aliases.remove(0);
        }
        self.parent = Some(parent);
        self.name = name;
    }

    /// Records that (`parent`, `name`) no longer names the node; another known name takes
    /// its place.
    pub fn forget_name(&mut self, parent: &Arc<Node>, name: &OsStr) {
        self.retain_aliases(|(p, n)| !same_place(p, n, parent, name));
        let is_primary = self
            .parent
            .as_ref()
            .is_some_and(|p| same_place(p, &self.name, parent, name));
        if is_primary {
            match self.extra.as_mut().and_then(|e| e.aliases.pop()) {
                Some((p, n)) => {
                    self.parent = Some(p);
                    self.name = n;
                    self.shrink_extra();
                }
                None => self.unlinked = true,
            }
        }
    }

    /// Records that the name (`from`) moved to (`parent`, `name`): the node's name if it
    /// was that, else an alias.
    pub fn rename_name(&mut self, from: (&Arc<Node>, &OsStr), parent: Arc<Node>, name: Name) {
        self.retain_aliases(|(p, n)| !same_place(p, n, from.0, from.1));
        let was_primary = self
            .parent
            .as_ref()
            .is_some_and(|p| same_place(p, &self.name, from.0, from.1));
        if was_primary || self.parent.is_none() {
            self.retain_aliases(|(p, n)| !same_place(p, n, &parent, &name));
            self.parent = Some(parent);
            self.name = name;
            self.unlinked = false;
        } else {
            self.add_alias(parent, name);
        }
    }

    /// Records another name of the node.
    pub fn add_alias(&mut self, parent: Arc<Node>, name: Name) {
        self.retain_aliases(|(p, n)| !same_place(p, n, &parent, &name));
        let aliases = self.aliases();
        aliases.push((parent, name));
        if aliases.len() > MAX_ALIASES {
            aliases.remove(0);
        }
    }

    /// The open directory of this (directory) node in `layer`, if merged from there.
    pub fn dir_in(&self, layer: usize) -> Option<BorrowedFd<'_>> {
        self.dirs
            .iter()
            .find(|(l, _)| *l == layer)
            .map(|(_, fd)| fd.as_fd())
    }
}

/// One merged-view object.
#[derive(Debug)]
pub struct Node {
    pub id: u64,
    lookups: AtomicU64,
    pub state: RwLock<NodeState>,
}

impl Node {
    pub fn new(id: u64, state: NodeState) -> Node {
        Node {
            id,
            lookups: AtomicU64::new(0),
            state: RwLock::new(state),
        }
    }
}

/// The table of live nodes and the id allocator.
#[derive(Debug, Default)]
pub struct NodeTable {
    nodes: DashMap<u64, Arc<Node>>,
    /// Ids handed out for (device index, inode) pairs that do not fit the id layout.
    synthetic: DashMap<(usize, u64), u64>,
    next_synthetic: AtomicU64,
}

impl NodeTable {
    /// Inserts the root node, which is never forgotten.
    pub fn insert_root(&self, state: NodeState) -> Arc<Node> {
        let root = Arc::new(Node::new(ROOT_ID, state));
        root.lookups.store(1, Ordering::Relaxed);
        self.nodes.insert(ROOT_ID, root.clone());
        root
    }

    pub fn get(&self, id: u64) -> Option<Arc<Node>> {
        self.nodes.get(&id).map(|n| n.clone())
    }

    /// Counts one kernel lookup of the node `id`, creating it in `state` if it is not
    /// live, or moving it to `state` (the place it was just found) if it is.
    pub fn lookup(&self, id: u64, state: NodeState) -> Arc<Node> {
        // The table's shard lock is released before the node's state lock is taken:
        // callers hold node state locks while they call `get`, so taking them in the
        // other order here deadlocked the daemon under load. The lookup is counted while
        // the shard is still locked, so a concurrent `forget` cannot drop the node in
        // between.
        let (node, update) = match self.nodes.entry(id) {
            dashmap::mapref::entry::Entry::Occupied(o) => {
                let node = o.get().clone();
                node.lookups.fetch_add(1, Ordering::Relaxed);
                (node, Some(state))
            }
            dashmap::mapref::entry::Entry::Vacant(v) => {
                let node = Arc::new(Node::new(id, state));
                node.lookups.fetch_add(1, Ordering::Relaxed);
                v.insert(node.clone());
                (node, None)
            }
        };
        if let Some(state) = update
            && id != ROOT_ID
        {
            let mut cur = node.state.write();
            // A file or directory copied up keeps its lower id, so a lookup resolved before
            // a concurrent copy-up finished finds the lower instance under the same id:
            // that result is stale and must not send the node back down (opens for writing
            // would then reach the lower file; a directory would lose its upper instance,
            // and copy-ups into it would fail with EIO).
            let stale = cur.layer == 0 && state.layer != 0;
            if !stale {
                cur.kind = state.kind;
                cur.layer = state.layer;
                cur.dirs = state.dirs;
                cur.generation = state.generation;
            }
            if let Some(p) = state.parent {
                cur.set_primary(p, state.name);
            }
        }
        node
    }

    /// Drops `n` kernel references to `id`; the node leaves the table at zero (and this
    /// returns true).
    pub fn forget(&self, id: u64, n: u64) -> bool {
        if id == ROOT_ID {
            return false;
        }
        if let dashmap::mapref::entry::Entry::Occupied(o) = self.nodes.entry(id) {
            let prev = o.get().lookups.fetch_sub(n, Ordering::Relaxed);
            if prev <= n {
                o.remove();
                return true;
            }
        }
        false
    }

    /// Number of live nodes (the root included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// An id no backing inode maps to, for an object whose own number is taken.
    pub fn fresh_id(&self) -> u64 {
        (SYNTHETIC_DEV << INO_BITS) | self.next_synthetic.fetch_add(1, Ordering::Relaxed)
    }

    /// The id for a backing inode on the device with index `dev_index`.
    pub fn id_for(&self, dev_index: usize, ino: u64) -> u64 {
        let dev = dev_index as u64;
        if dev < SYNTHETIC_DEV && ino < (1 << INO_BITS) && !(dev == 0 && ino <= ROOT_ID) {
            return (dev << INO_BITS) | ino;
        }
        *self.synthetic.entry((dev_index, ino)).or_insert_with(|| {
            let n = self.next_synthetic.fetch_add(1, Ordering::Relaxed);
            (SYNTHETIC_DEV << INO_BITS) | n
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> NodeState {
        NodeState::new(None, "x".into(), FileKind::Regular, 0, Vec::new(), 0)
    }

    #[test]
    fn names_short_and_long() {
        for n in [
            "",
            "f1",
            "exactly-22-bytes-long!",
            "twenty-three-bytes-long",
            &"x".repeat(255),
        ] {
            let name = Name::new(OsStr::new(n));
            assert_eq!(&*name, OsStr::new(n));
        }
        // A node is one allocation of at most 112 bytes with its Arc counts.
        assert!(
            std::mem::size_of::<Node>() <= 88,
            "{}",
            std::mem::size_of::<Node>()
        );
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let t = NodeTable::default();
        assert_eq!(t.id_for(0, 1234), 1234);
        assert_eq!(t.id_for(1, 1234), (1 << 56) | 1234);
        // Ids that would collide with the root or overflow are synthesised, stably.
        let a = t.id_for(0, 1);
        let b = t.id_for(0, u64::MAX);
        assert_ne!(a, ROOT_ID);
        assert_ne!(a, b);
        assert_eq!(t.id_for(0, 1), a);
        assert_eq!(t.id_for(0, u64::MAX), b);
    }

    #[test]
    fn a_hard_linked_file_stays_reachable_when_a_name_goes() {
        let dir = Arc::new(Node::new(2, state()));
        let mut st = state();
        st.parent = Some(dir.clone());
        st.name = "t".into();
        st.add_alias(dir.clone(), "f".into());
        // Removing the name it is reached by promotes the other one.
        st.forget_name(&dir, OsStr::new("t"));
        assert_eq!(st.name, "f");
        assert!(st.extra.is_none());
        // Looking it up under a new name keeps the old one as an alias, once.
        st.set_primary(dir.clone(), "g".into());
        st.set_primary(dir.clone(), "g".into());
        assert_eq!(st.name, "g");
        assert_eq!(st.aliases().len(), 1);
        st.forget_name(&dir, OsStr::new("f"));
        assert_eq!(st.name, "g");
        assert!(st.extra.is_none());
    }

    #[test]
    fn lookup_counts_and_forget() {
        let t = NodeTable::default();
        t.insert_root(state());
        t.lookup(7, state());
        t.lookup(7, state());
        assert_eq!(t.len(), 2);
        t.forget(7, 1);
        assert!(t.get(7).is_some());
        t.forget(7, 1);
        assert!(t.get(7).is_none());
        t.forget(ROOT_ID, 10);
        assert!(t.get(ROOT_ID).is_some());
    }

    #[test]
    fn a_stale_lookup_does_not_send_a_copied_up_node_back_down() {
        let open = || crate::sys::open_root(std::path::Path::new("/")).unwrap();
        for kind in [FileKind::Regular, FileKind::Directory] {
            let t = NodeTable::default();
            let mut up = state();
            up.kind = kind;
            up.dirs = [(0, open()), (1, open())].into_iter().collect();
            t.lookup(7, up);
            // Resolved before the copy-up finished: only the lower instance.
            let mut stale = state();
            stale.kind = kind;
            stale.layer = 1;
            stale.dirs = [(1, open())].into_iter().collect();
            let node = t.lookup(7, stale);
            let st = node.state.read();
            assert_eq!(st.layer, 0, "{kind:?}");
            assert_eq!(
                st.dirs.first().map(|d| d.0),
                Some(0),
                "{kind:?}: upper lost"
            );
        }
    }
}
