//! The lower stack the oracle runs on: three deterministic layers in overlayfs format.
//!
//! ```text
//! l0 (top)     d1/sub/top.txt  d1/gone (whiteout)  shadow.txt  replaced (file over l1's dir)
//!              dovf/ (dir over l2's file)  f0640  exe  dgone2 (whiteout of a dir)
//! l1 (middle)  d1/a.txt d1/c.txt  op/ (opaque) op/visible  shadow.txt  replaced/…  hl3=hl4
//!              dgone (whiteout)  dlink -> d1  dangling -> nowhere/x  sym_fifo -> fifo1
//!              xdir/ (user xattr)
//! l2 (bottom)  d1/a.txt d1/b.txt d1/gone d1/sub/deep.txt  op/hidden1  dgone/…  dgone2/…
//!              shadow.txt big.bin sparse.bin empty own/… l2only/n1/n2/f fifo1 xa lnk hl1=hl2
//! ```
//!
//! Hard links sit only at layer roots: a root is never renamed, so the oracle's emulation
//! of a directory rename on the kernel side (see `emulate.rs`) never has to split a lower
//! hard-link pair. Symlink targets never contain `..` and are never absolute unless they
//! dangle, so following one can never leave the mount.
//! Every entry gets a fixed timestamp from 2001, so any time in the merged view that is
//! older than the start of a run is one that must have been preserved exactly.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use super::sys;

/// The first fixed timestamp (2001-09-09).
pub const FIXED_TIME: i64 = 1_000_000_000;

struct Layer<'a> {
    root: &'a Path,
}

impl Layer<'_> {
    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
    fn dir(&self, rel: &str, mode: u32) {
        let p = self.p(rel);
        fs::create_dir_all(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }
    fn file(&self, rel: &str, data: &[u8], mode: u32) {
        let p = self.p(rel);
        fs::write(&p, data).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }
    fn owner(&self, rel: &str, uid: u32, gid: u32) {
        sys::chown(&self.p(rel), uid, gid, false).unwrap();
    }
    fn symlink(&self, rel: &str, target: &str) {
        symlink(target, self.p(rel)).unwrap();
    }
    fn whiteout(&self, rel: &str) {
        sys::mknod(&self.p(rel), libc::S_IFCHR, sys::makedev(0, 0)).unwrap();
    }
    fn opaque(&self, rel: &str) {
        sys::setxattr(&self.p(rel), b"trusted.overlay.opaque", b"y", 0, false).unwrap();
    }
    fn xattr(&self, rel: &str, name: &str, value: &[u8]) {
        sys::setxattr(&self.p(rel), name.as_bytes(), value, 0, false).unwrap();
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

/// Builds the three lower layers under `base` and returns them top-most first.
pub fn build(base: &Path) -> Vec<PathBuf> {
    let roots: Vec<PathBuf> = (0..3).map(|i| base.join(format!("l{i}"))).collect();
    for r in &roots {
        fs::create_dir_all(r).unwrap();
    }
    let l0 = Layer { root: &roots[0] };
    let l1 = Layer { root: &roots[1] };
    let l2 = Layer { root: &roots[2] };

    // l2: the bottom layer.
    l2.dir("d1", 0o755);
    l2.file("d1/a.txt", b"a from l2\n", 0o644);
    l2.file("d1/b.txt", b"b from l2\n", 0o644);
    l2.file("d1/gone", b"whited out by l0\n", 0o644);
    l2.dir("d1/sub", 0o755);
    l2.file("d1/sub/deep.txt", b"deep\n", 0o600);
    l2.dir("op", 0o755);
    l2.file("op/hidden1", b"hidden by opaque l1/op\n", 0o644);
    l2.dir("dgone", 0o755);
    l2.file("dgone/f", b"whited out dir\n", 0o644);
    l2.dir("dgone2/inner", 0o755);
    l2.file("dgone2/inner/f", b"whited out dir\n", 0o644);
    l2.file(
        "shadow.txt",
        b"shadow from l2, the longest version of all\n",
        0o644,
    );
    l2.file("big.bin", &pattern(1, 200 * 1024), 0o644);
    {
        let f = fs::File::create(l2.p("sparse.bin")).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"head", 0).unwrap();
        f.write_all_at(&pattern(2, 5000), 1 << 20).unwrap();
        f.write_all_at(b"tail", (3 << 20) - 4).unwrap();
        f.set_len(4 << 20).unwrap();
    }
    l2.file("empty", b"", 0o644);
    l2.dir("own", 0o750);
    l2.file("own/f", b"owned by 1000\n", 0o640);
    l2.owner("own/f", 1000, 1000);
    l2.file("own/x", b"#!/bin/sh\n", 0o755);
    l2.owner("own/x", 1001, 1002);
    l2.owner("own", 1000, 1000);
    l2.dir("l2only/n1/n2", 0o755);
    l2.file("l2only/n1/n2/f", b"deep lower-only\n", 0o644);
    l2.file("l2only/n1/g", b"g\n", 0o664);
    sys::mknod(&l2.p("fifo1"), libc::S_IFIFO | 0o644, 0).unwrap();
    l2.file("xa", b"has xattrs\n", 0o644);
    l2.xattr("xa", "user.foo", b"bar");
    l2.xattr("xa", "user.empty", b"");
    l2.symlink("lnk", "d1/a.txt");
    l2.file("hl1", b"hard link pair in l2\n", 0o644);
    fs::hard_link(l2.p("hl1"), l2.p("hl2")).unwrap();
    l2.file("dovf", b"file under l0's dir\n", 0o644);

    // l1: the middle layer.
    l1.dir("d1", 0o775);
    l1.file("d1/a.txt", b"a from l1 (shadows l2)\n", 0o644);
    l1.file("d1/c.txt", b"c from l1\n", 0o644);
    l1.dir("op", 0o755);
    l1.opaque("op");
    l1.file("op/visible", b"in the opaque dir\n", 0o644);
    l1.file("shadow.txt", b"shadow from l1\n", 0o600);
    l1.dir("replaced/inner", 0o755);
    l1.file("replaced/inner/f", b"under l0's file\n", 0o644);
    l1.file("hl3", b"hard link pair in l1\n", 0o644);
    fs::hard_link(l1.p("hl3"), l1.p("hl4")).unwrap();
    l1.whiteout("dgone");
    l1.symlink("dlink", "d1");
    l1.symlink("dangling", "nowhere/x");
    l1.symlink("sym_fifo", "fifo1");
    l1.dir("xdir", 0o755);
    l1.xattr("xdir", "user.dirattr", b"on a dir");
    l1.file("xdir/f", b"in xdir\n", 0o644);

    // l0: the top layer.
    l0.dir("d1/sub", 0o755);
    l0.file("d1/sub/top.txt", b"top\n", 0o644);
    l0.whiteout("d1/gone");
    l0.file("shadow.txt", b"shadow from l0\n", 0o600);
    l0.owner("shadow.txt", 1000, 1000);
    l0.file("replaced", b"file over l1's directory\n", 0o644);
    l0.dir("dovf", 0o700);
    l0.file("dovf/inside", b"inside\n", 0o644);
    l0.file("f0640", b"mode 0640, uid 1234\n", 0o640);
    l0.owner("f0640", 1234, 1234);
    l0.file("exe", b"#!/bin/sh\necho hi\n", 0o755);
    l0.owner("exe", 1000, 100);
    l0.whiteout("dgone2");

    let mut stamp = FIXED_TIME;
    for r in &roots {
        fix_times(r, &mut stamp);
    }
    roots
}

/// Sets every entry under `dir` (children first, then `dir`) to a fixed, distinct time.
fn fix_times(dir: &Path, stamp: &mut i64) {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for n in names {
        let p = dir.join(n);
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            fix_times(&p, stamp);
        } else {
            set_time(&p, stamp);
        }
    }
    set_time(dir, stamp);
}

fn set_time(p: &Path, stamp: &mut i64) {
    *stamp += 1000;
    let t = sys::timespec(*stamp, 123_000_000);
    sys::utimens(p, [t, t], false).unwrap();
}

/// Every relative path in any layer (whiteouts and hidden entries included), sorted: the
/// names the oracle's operations start from.
pub fn lower_names(roots: &[PathBuf]) -> Vec<Vec<u8>> {
    let mut out = std::collections::BTreeSet::new();
    for r in roots {
        walk(r, b"", &mut out);
    }
    out.into_iter().collect()
}

fn walk(dir: &Path, prefix: &[u8], out: &mut std::collections::BTreeSet<Vec<u8>>) {
    use std::os::unix::ffi::OsStrExt;
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let mut rel = prefix.to_vec();
        if !rel.is_empty() {
            rel.push(b'/');
        }
        rel.extend_from_slice(e.file_name().as_bytes());
        if e.file_type().unwrap().is_dir() {
            walk(&e.path(), &rel, out);
        }
        out.insert(rel);
    }
}

/// Everything about the layers that a write would change (ctime catches metadata changes
/// and new hard links), one line per entry, to check that no mount wrote to a lower layer.
pub fn fingerprint(roots: &[PathBuf]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, r) in roots.iter().enumerate() {
        let mut all = std::collections::BTreeSet::new();
        all.insert(Vec::new());
        walk(r, b"", &mut all);
        for rel in all {
            use std::os::unix::ffi::OsStrExt;
            let p = r.join(std::ffi::OsStr::from_bytes(&rel));
            let st = sys::lstat(&p).unwrap();
            let xattrs = sys::listxattr(&p, false).unwrap_or_default();
            out.push(format!(
                "l{i}/{} ino={} mode={:o} uid={} gid={} size={} nlink={} mtime={}.{} ctime={}.{} xattrs={}",
                String::from_utf8_lossy(&rel),
                st.st_ino,
                st.st_mode,
                st.st_uid,
                st.st_gid,
                st.st_size,
                st.st_nlink,
                st.st_mtime,
                st.st_mtime_nsec,
                st.st_ctime,
                st.st_ctime_nsec,
                xattrs.len(),
            ));
        }
    }
    out
}
