//! Real programs on the write path: `tar -x`, `cp -a`, `rm -rf`, `mv`, `git` and `sqlite3`
//! run on a ufsd mount and on a kernel overlayfs mount of the same lower layers, each with
//! its own upper and work directory. Every command must succeed on both, anything a
//! workload prints that matters (git history, query results) must be equal, and the two
//! merged trees must be equal (names, types, modes, owners, sizes, contents, symlink
//! targets, device numbers, xattrs, nlink and hard-link groups of regular files; times and
//! raw inode numbers are left out). Then kernel overlayfs mounts ufsd's upper over the same
//! lowers with a fresh work directory and must show the same tree ufsd showed: the upper
//! ufsd writes is a valid overlayfs upper.
//!
//! The kernel side runs first, so a workload that fails only on ufsd is a ufsd bug.
//!
//! These tests mount: they need root, /dev/fuse, kernel overlayfs, and the `tar`, `cp`,
//! `git` and `sqlite3` programs (`apt-get install git sqlite3`). Nothing here skips.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

// ---------------------------------------------------------------------------------------
// Running one workload on both filesystems
// ---------------------------------------------------------------------------------------

/// One of the two mounts a workload runs on.
struct Side {
    /// "kernel" or "ufsd", for messages.
    name: &'static str,
    mnt: PathBuf,
}

impl Side {
    /// `rel` inside the mount.
    fn path(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Runs `cmd` and returns its stdout; panics with the command, its status and its
    /// stderr unless it exits 0.
    fn run(&self, cmd: &mut Command) -> String {
        let out = cmd.output().unwrap_or_else(|e| {
            panic!(
                "[{}] cannot start {cmd:?}: {e} (is it installed? apt-get install git sqlite3)",
                self.name
            )
        });
        assert!(
            out.status.success(),
            "[{}] {cmd:?} failed ({}):\n--- stderr\n{}\n--- stdout\n{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr),
            tail(&String::from_utf8_lossy(&out.stdout), 40),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Appends `text` to the file at `rel` in the mount.
    fn append(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap_or_else(|e| panic!("[{}] open {} for append: {e}", self.name, p.display()));
        f.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("[{}] append to {}: {e}", self.name, p.display()));
    }

    /// Writes (creates or truncates) the file at `rel` in the mount.
    fn write(&self, rel: &str, text: &str) {
        let p = self.path(rel);
        fs::write(&p, text)
            .unwrap_or_else(|e| panic!("[{}] write {}: {e}", self.name, p.display()));
    }

    fn chmod(&self, rel: &str, mode: u32) {
        let p = self.path(rel);
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("[{}] chmod {}: {e}", self.name, p.display()));
    }

    /// The sorted names in the directory `rel` of the mount, one a line.
    fn list(&self, rel: &str) -> String {
        let p = self.path(rel);
        let mut names: Vec<String> = fs::read_dir(&p)
            .unwrap_or_else(|e| panic!("[{}] readdir {}: {e}", self.name, p.display()))
            .map(|d| {
                d.expect("readdir entry")
                    .file_name()
                    .to_string_lossy()
                    .into()
            })
            .collect();
        names.sort();
        names.iter().map(|n| format!("{n}\n")).collect()
    }
}

/// The last `n` lines of `s`.
fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Everything a workload left behind on one side.
struct Outcome {
    /// What the workload printed that must be equal on both sides, labelled.
    record: Vec<(String, String)>,
    snap: Snapshot,
    upper: PathBuf,
}

/// Keeps only the paths `keep` accepts.
fn filtered(snap: Snapshot, keep: fn(&[u8]) -> bool) -> Snapshot {
    snap.into_iter().filter(|(k, _)| keep(k)).collect()
}

fn keep_all(_: &[u8]) -> bool {
    true
}

/// Runs `workload` on a kernel overlayfs mount and then on a ufsd mount of `lowers` (each
/// with its own upper and work under `dir`), compares what they recorded and their merged
/// trees (only the paths `keep` accepts), then mounts ufsd's upper with kernel overlayfs
/// and compares that tree with ufsd's. Returns ufsd's snapshot for workload-specific
/// checks.
fn on_both<F>(dir: &Path, lowers: &[PathBuf], keep: fn(&[u8]) -> bool, workload: F) -> Snapshot
where
    F: Fn(&Side) -> Vec<(String, String)>,
{
    let lower_refs = as_paths(lowers);
    let run_side = |kind: MountKind| -> Outcome {
        let name = match kind {
            MountKind::Ufsd => "ufsd",
            MountKind::KernelOverlay => "kernel",
        };
        let upper = mkdir(dir, &format!("upper-{name}"));
        let work = mkdir(dir, &format!("work-{name}"));
        let mnt = mkdir(dir, &format!("mnt-{name}"));
        let guard = match kind {
            MountKind::Ufsd => mount_ufsd(&lower_refs, Some((&upper, &work)), &mnt, &[]),
            MountKind::KernelOverlay => mount_overlay(&lower_refs, Some((&upper, &work)), &mnt),
        };
        let side = Side {
            name,
            mnt: guard.path.clone(),
        };
        let record = workload(&side);
        let snap = filtered(snapshot(&side.mnt), keep);
        guard
            .unmount()
            .unwrap_or_else(|e| panic!("[{name}] unmount after the workload: {e}"));
        Outcome {
            record,
            snap,
            upper,
        }
    };
    let kernel = run_side(MountKind::KernelOverlay);
    let ufsd = run_side(MountKind::Ufsd);

    assert_same_snapshots(
        &kernel.snap,
        &ufsd.snap,
        "kernel overlayfs",
        "ufsd after the same workload",
    );
    for ((klabel, kout), (ulabel, uout)) in kernel.record.iter().zip(&ufsd.record) {
        assert_eq!(klabel, ulabel, "workload recorded different steps");
        assert!(
            kout == uout,
            "`{klabel}` printed different output\n--- kernel overlayfs\n{kout}\n--- ufsd\n{uout}"
        );
    }
    assert_eq!(kernel.record.len(), ufsd.record.len());

    // ufsd's upper must be an upper kernel overlayfs reads the same way.
    let work = mkdir(dir, "work-recheck");
    let mnt = mkdir(dir, "mnt-recheck");
    let guard = mount_overlay(&lower_refs, Some((&ufsd.upper, &work)), &mnt);
    let again = filtered(snapshot(&guard.path), keep);
    guard
        .unmount()
        .unwrap_or_else(|e| panic!("unmounting kernel overlayfs over ufsd's upper: {e}"));
    assert_same_snapshots(
        &ufsd.snap,
        &again,
        "ufsd",
        "kernel overlayfs over ufsd's upper",
    );
    ufsd.snap
}

/// Deterministic bytes: `len` of them from a generator seeded with `seed`.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fastrand::Rng::with_seed(seed).fill(&mut v);
    v
}

fn layer(root: &Path) -> LayerBuilder {
    LayerBuilder::new(root, WhiteoutFormat::Overlay)
}

/// Whether `rel` is a path in the snapshot (for checks that a workload did what it meant).
fn has(snap: &Snapshot, rel: &str) -> bool {
    snap.contains_key(rel.as_bytes())
}

// ---------------------------------------------------------------------------------------
// 1. tar -x of a large tree over lower files
// ---------------------------------------------------------------------------------------

const TAR_DIRS: usize = 30;
const TAR_SUBDIRS: usize = 4;
const TAR_FILES: usize = 24;

/// Builds `root/tree`: ~3000 files of a few MB in nested directories, with symlinks, hard
/// links (in one directory and across directories), empty directories, varied modes and
/// owners.
fn build_tar_source(root: &Path) {
    let t = layer(root);
    let modes = [0o644, 0o600, 0o755, 0o640, 0o444, 0o4755];
    for d in 0..TAR_DIRS {
        let dd = format!("tree/d{d:02}");
        t.dir(dd.as_bytes(), if d % 7 == 3 { 0o750 } else { 0o755 });
        for s in 0..TAR_SUBDIRS {
            let ss = format!("{dd}/s{s}");
            t.dir(ss.as_bytes(), 0o755);
            for f in 0..TAR_FILES {
                let n = (d * TAR_SUBDIRS + s) * TAR_FILES + f;
                let len = if n.is_multiple_of(97) {
                    100 * 1024
                } else {
                    (n * 7919) % 3000
                };
                let rel = format!("{ss}/f{f:03}");
                t.file(
                    rel.as_bytes(),
                    &bytes(n as u64, len),
                    modes[n % modes.len()],
                );
                if f.is_multiple_of(11) {
                    t.owner(rel.as_bytes(), 1000, 1000);
                }
            }
            t.symlink(format!("{ss}/lnk").as_bytes(), b"f000")
                .symlink(format!("{ss}/dangling").as_bytes(), b"../nope/x")
                .hardlink(
                    format!("{ss}/f001").as_bytes(),
                    format!("{ss}/hl").as_bytes(),
                );
            if s == 0 {
                t.symlink(format!("{ss}/abs").as_bytes(), b"/etc/hostname");
            }
        }
        t.hardlink(
            format!("{dd}/s1/f002").as_bytes(),
            format!("{dd}/xhl").as_bytes(),
        )
        .dir(format!("{dd}/empty").as_bytes(), 0o700);
    }
}

/// Lower layers holding part of the tree the tarball brings: files it replaces, files it
/// must leave alone, a whiteout, an opaque directory, a file where the tarball has a
/// directory and the reverse, a symlink where it has a file and the reverse, and a lower
/// hard link whose other name it replaces.
fn build_tar_lowers(dir: &Path) -> Vec<PathBuf> {
    let l0 = layer(&dir.join("l0"));
    let l1 = layer(&dir.join("l1"));
    for d in 0..10 {
        for f in 0..12 {
            let rel = format!("tree/d{d:02}/s0/f{f:03}");
            l1.file(
                rel.as_bytes(),
                format!("old {rel} in l1\n").as_bytes(),
                0o644,
            );
        }
    }
    l1.file(b"tree/d00/s0/keep_l1", b"stays\n", 0o644)
        .file(
            b"tree/d04/s2",
            b"a file where the tarball has a directory\n",
            0o644,
        )
        .file(
            b"tree/d01/s0/lnk",
            b"a file where the tarball has a symlink\n",
            0o644,
        )
        .dir(b"tree/d02", 0o700)
        .owner(b"tree/d02", 1000, 1000)
        .hardlink(b"tree/d06/s0/f005", b"tree/d06/lower_hl")
        .file(
            b"tree/d09/s3/f000",
            b"hidden by the opaque d09 of l0\n",
            0o644,
        )
        .file(b"elsewhere", b"outside the tree\n", 0o644);
    for d in 5..15 {
        for f in 10..20 {
            let rel = format!("tree/d{d:02}/s1/f{f:03}");
            l0.file(rel.as_bytes(), &bytes(1_000_000 + f as u64, 5000), 0o600);
        }
    }
    l0.file(b"tree/d05/s1/keep_l0", b"stays\n", 0o644)
        .dir(b"tree/d03/s3/f007", 0o755)
        .symlink(b"tree/d07/s2/f003", b"../../../elsewhere")
        .whiteout(b"tree/d08/s0/f004")
        .opaque(b"tree/d09")
        .file(b"tree/d09/only_l0", b"in the opaque dir\n", 0o644)
        .xattr(b"tree/d05", b"user.note", b"lower dir xattr");
    vec![l0.root, l1.root]
}

#[test]
fn tar_extract_over_lower_tree() {
    let t = scratch();
    let src = t.path().join("src");
    build_tar_source(&src);
    let tarball = t.path().join("tree.tar");
    let out = Command::new("tar")
        .args(["--sort=name", "--numeric-owner", "-cf"])
        .arg(&tarball)
        .arg("-C")
        .arg(&src)
        .arg("tree")
        .output()
        .expect("running tar");
    assert!(
        out.status.success(),
        "tar -cf: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lowers = build_tar_lowers(t.path());

    let snap = on_both(t.path(), &lowers, keep_all, |side| {
        side.run(
            Command::new("tar")
                .args(["--numeric-owner", "-xpf"])
                .arg(&tarball)
                .arg("-C")
                .arg(&side.mnt),
        );
        // tar checks what it extracted: contents, modes, owners, mtimes, link targets and
        // that hard links share an inode.
        side.run(
            Command::new("tar")
                .args(["--numeric-owner", "-df"])
                .arg(&tarball)
                .arg("-C")
                .arg(&side.mnt),
        );
        Vec::new()
    });

    // The tarball's tree is all there, over what it did not replace.
    let files = snap
        .iter()
        .filter(|(k, e)| k.starts_with(b"tree/") && e.kind == Kind::File)
        .count();
    assert!(files >= TAR_DIRS * TAR_SUBDIRS * TAR_FILES, "{files} files");
    for rel in [
        "tree/d00/s0/keep_l1",
        "tree/d05/s1/keep_l0",
        "tree/d06/lower_hl",
        "tree/d09/only_l0",
    ] {
        assert!(has(&snap, rel), "{rel} should have survived the extraction");
    }
    assert!(snap[&b"tree/d04/s2"[..]].kind == Kind::Dir);
    assert!(snap[&b"tree/d03/s3/f007"[..]].kind == Kind::File);
    assert!(snap[&b"tree/d01/s0/lnk"[..]].kind == Kind::Symlink);
    assert!(snap[&b"tree/d02"[..]].mode == 0o755 && snap[&b"tree/d02"[..]].uid == 0);
    let hl = &snap[&b"tree/d17/s2/hl"[..]];
    assert_eq!(hl.nlink, Some(2));
    assert_eq!(hl.link_group.as_deref(), Some(&b"tree/d17/s2/f001"[..]));
}

// ---------------------------------------------------------------------------------------
// 2. cp -a inside the mount and from outside into it
// ---------------------------------------------------------------------------------------

/// A package-like tree under `prefix`: executables, a library with version symlinks, docs
/// with an xattr, a hard-link pair, a private file of another owner, a fifo, a setuid
/// file and a data directory.
fn build_package(b: &LayerBuilder, prefix: &str, tag: &str, data_files: usize) {
    let p = |rel: &str| format!("{prefix}/{rel}").into_bytes();
    b.file(
        &p("bin/tool"),
        format!("#!/bin/sh\necho {tag}\n").as_bytes(),
        0o755,
    )
    .file(&p("lib/libx.so.1.2"), &bytes(7, 40_000), 0o644)
    .symlink(&p("lib/libx.so.1"), b"libx.so.1.2")
    .symlink(&p("lib/libx.so"), b"libx.so.1")
    .file(
        &p("doc/README"),
        format!("readme {tag}\n").as_bytes(),
        0o644,
    )
    .xattr(&p("doc/README"), b"user.mime", b"text/plain")
    .file(&p("doc/hl_a"), format!("linked {tag}\n").as_bytes(), 0o644)
    .hardlink(&p("doc/hl_a"), &p("doc/hl_b"))
    .file(&p("secret"), format!("secret {tag}\n").as_bytes(), 0o600)
    .owner(&p("secret"), 1000, 1001)
    .fifo(&p("fifo"), 0o640)
    .file(&p("setuid"), b"#!/bin/true\n", 0o4755)
    .dir(&p("empty"), 0o710);
    for i in 0..data_files {
        b.file(
            &p(&format!("data/f{i:03}")),
            &bytes(i as u64 * 31 + tag.len() as u64, 100 + i * 37),
            0o644,
        );
    }
}

#[test]
fn cp_a_within_and_into_the_mount() {
    let t = scratch();
    let l0 = layer(&t.path().join("l0"));
    let l1 = layer(&t.path().join("l1"));
    build_package(&l1, "usr/share/pkg", "l1", 50);
    l1.file(b"usr/share/pkg/gone", b"whited out in l0\n", 0o644)
        .file(b"usr/share/pkg/opq/old", b"hidden by opaque l0\n", 0o644);
    for i in 0..10 {
        l0.file(
            format!("usr/share/pkg/data/f{i:03}").as_bytes(),
            format!("l0 shadows data {i}\n").as_bytes(),
            0o640,
        );
    }
    l0.file(b"usr/share/pkg/new_in_l0", b"l0\n", 0o644)
        .whiteout(b"usr/share/pkg/gone")
        .opaque(b"usr/share/pkg/opq")
        .file(b"usr/share/pkg/opq/new", b"new in l0\n", 0o644)
        .dir(b"opt", 0o755)
        .xattr(b"usr/share/pkg", b"user.layer", b"l0");
    let lowers = vec![l0.root.clone(), l1.root.clone()];

    // The outside tree shares names with the lower package, so copying it over the lower
    // package replaces lower files (one of them through a lower symlink).
    let ext = t.path().join("ext");
    build_package(&layer(&ext), "pkg", "ext", 20);
    layer(&ext)
        .file(
            b"pkg/lib/libx.so",
            b"a file where the lower has a symlink\n",
            0o644,
        )
        .file(b"pkg/only_ext", b"ext\n", 0o644);
    let ext_pkg = ext.join("pkg");

    let snap = on_both(t.path(), &lowers, keep_all, |side| {
        side.run(
            Command::new("cp")
                .arg("-a")
                .arg(side.path("usr/share/pkg"))
                .arg(side.path("opt/pkg-copy")),
        );
        side.run(
            Command::new("cp")
                .arg("-a")
                .arg(&ext_pkg)
                .arg(side.path("imported")),
        );
        side.run(
            Command::new("cp")
                .arg("-a")
                .arg(ext_pkg.join("."))
                .arg(side.path("usr/share/pkg")),
        );
        // What cp made compares equal to its source, as diff sees it (diff cannot
        // compare fifos).
        side.run(
            Command::new("diff")
                .args(["-r", "--no-dereference", "--exclude=fifo"])
                .arg(&ext_pkg)
                .arg(side.path("imported")),
        );
        Vec::new()
    });

    for rel in [
        "opt/pkg-copy/doc/README",
        "opt/pkg-copy/opq/new",
        "opt/pkg-copy/new_in_l0",
        "imported/only_ext",
        "usr/share/pkg/only_ext",
    ] {
        assert!(has(&snap, rel), "{rel} should exist");
    }
    for rel in ["opt/pkg-copy/gone", "opt/pkg-copy/opq/old"] {
        assert!(!has(&snap, rel), "{rel} should not have been copied");
    }
    let copied = &snap[&b"opt/pkg-copy/doc/hl_b"[..]];
    assert_eq!(
        copied.link_group.as_deref(),
        Some(&b"opt/pkg-copy/doc/hl_a"[..]),
        "cp -a keeps the lower hard-link pair linked"
    );
}

// ---------------------------------------------------------------------------------------
// 3. rm -rf of a large lower tree, then a directory of the same name
// ---------------------------------------------------------------------------------------

#[test]
fn rm_rf_lower_tree_then_recreate() {
    let t = scratch();
    let l0 = layer(&t.path().join("l0"));
    let l1 = layer(&t.path().join("l1"));
    // l1: d00..d19 with f000..f049; l0: d10..d29 with f050..f099, so d10..d19 merge.
    for d in 0..20 {
        for f in 0..50 {
            let rel = format!("var/cache/big/d{d:02}/f{f:03}");
            l1.file(rel.as_bytes(), rel.as_bytes(), 0o644);
        }
    }
    for d in 10..30 {
        for f in 50..100 {
            let rel = format!("var/cache/big/d{d:02}/f{f:03}");
            l0.file(rel.as_bytes(), rel.as_bytes(), 0o644);
        }
    }
    for i in 0..100 {
        let rel = format!("var/cache/big/shared/s{i:03}");
        l1.file(rel.as_bytes(), b"l1", 0o644);
    }
    for i in 50..150 {
        let rel = format!("var/cache/big/shared/s{i:03}");
        l0.file(rel.as_bytes(), b"l0", 0o644);
    }
    l1.symlink(b"var/cache/big/d00/link", b"f000")
        .file(b"var/cache/big/opq/old", b"hidden\n", 0o644)
        .file(b"var/cache/keep", b"sibling that stays\n", 0o644);
    l0.whiteout(b"var/cache/big/d00/f000")
        .opaque(b"var/cache/big/opq")
        .file(b"var/cache/big/opq/new", b"new\n", 0o644)
        .dir(b"var/cache/big/d25/deeper/still", 0o755);
    let lowers = vec![l0.root.clone(), l1.root.clone()];

    let snap = on_both(t.path(), &lowers, keep_all, |side| {
        let entries = walk_count(&side.path("var/cache/big"));
        side.run(
            Command::new("rm")
                .arg("-rf")
                .arg(side.path("var/cache/big")),
        );
        let after_rm = side.list("var/cache");
        fs::create_dir(side.path("var/cache/big"))
            .unwrap_or_else(|e| panic!("[{}] mkdir big again: {e}", side.name));
        side.write("var/cache/big/one", "the only entry\n");
        vec![
            ("entries before rm -rf".into(), entries.to_string()),
            ("ls var/cache after rm -rf".into(), after_rm),
            (
                "ls var/cache/big recreated".into(),
                side.list("var/cache/big"),
            ),
        ]
    });

    let big: Vec<&[u8]> = snap
        .keys()
        .filter(|k| k.starts_with(b"var/cache/big/"))
        .map(Vec::as_slice)
        .collect();
    assert_eq!(big, vec![&b"var/cache/big/one"[..]]);
    assert!(has(&snap, "var/cache/keep"));
}

/// How many entries lie below `dir` (not counting `dir`).
fn walk_count(dir: &Path) -> usize {
    let mut n = 0;
    for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display())) {
        let e = e.expect("readdir entry");
        n += 1;
        if e.file_type().expect("file type").is_dir() {
            n += walk_count(&e.path());
        }
    }
    n
}

// ---------------------------------------------------------------------------------------
// 4. mv of a deep lower directory, edits inside it, mv back
// ---------------------------------------------------------------------------------------

#[test]
fn mv_deep_lower_dir_and_back() {
    let t = scratch();
    let l0 = layer(&t.path().join("l0"));
    let l1 = layer(&t.path().join("l1"));
    // proj/a/b/c/d/e: files at every level, some in each layer, some in both.
    let levels = ["a", "a/b", "a/b/c", "a/b/c/d", "a/b/c/d/e"];
    for (i, lvl) in levels.iter().enumerate() {
        let p = |name: &str| format!("proj/{lvl}/{name}").into_bytes();
        l1.file(&p("from_l1"), format!("l1 level {i}\n").as_bytes(), 0o644)
            .file(&p("shadowed"), b"l1 version\n", 0o644)
            .file(&p("to_delete"), b"deleted after the move\n", 0o644);
        l0.file(&p("from_l0"), format!("l0 level {i}\n").as_bytes(), 0o640)
            .file(
                &p("shadowed"),
                format!("l0 version {i}\n").as_bytes(),
                0o644,
            );
    }
    l1.hardlink(b"proj/a/b/c/from_l1", b"proj/a/b/c/from_l1_link")
        .symlink(b"proj/a/b/link_up", b"../from_l1")
        .file(b"proj/a/b/c/d/whited", b"whited out in l0\n", 0o644)
        .owner(b"proj/a/b/c/d/from_l1", 1000, 1000)
        .xattr(b"proj/a/b/c", b"user.level", b"c in l1")
        .dir(b"elsewhere/sub", 0o755);
    l0.whiteout(b"proj/a/b/c/d/whited").file(
        b"elsewhere/existing",
        b"in the destination dir\n",
        0o644,
    );
    let lowers = vec![l0.root.clone(), l1.root.clone()];

    let snap = on_both(t.path(), &lowers, keep_all, |side| {
        side.run(
            Command::new("mv")
                .arg(side.path("proj/a"))
                .arg(side.path("elsewhere/sub/moved")),
        );
        let m = "elsewhere/sub/moved";
        let moved_listing = side.list(&format!("{m}/b/c/d"));
        side.append(&format!("{m}/from_l1"), "edited after the move\n");
        side.append(&format!("{m}/b/c/from_l1"), "edited through one link\n");
        side.write(&format!("{m}/b/c/d/e/shadowed"), "rewritten\n");
        side.chmod(&format!("{m}/b/c/d/from_l0"), 0o600);
        side.write(&format!("{m}/b/c/d/e/new"), "new at the bottom\n");
        fs::create_dir(side.path(&format!("{m}/b/newdir")))
            .unwrap_or_else(|e| panic!("[{}] mkdir newdir: {e}", side.name));
        side.run(
            Command::new("rm")
                .arg(side.path(&format!("{m}/to_delete")))
                .arg(side.path(&format!("{m}/b/c/d/e/to_delete"))),
        );
        side.run(
            Command::new("mv")
                .arg(side.path(&format!("{m}/b/from_l0")))
                .arg(side.path(&format!("{m}/b/newdir/from_l0"))),
        );
        side.run(
            Command::new("mv")
                .arg(side.path(m))
                .arg(side.path("proj/a")),
        );
        vec![
            ("ls moved/b/c/d".into(), moved_listing),
            ("ls elsewhere/sub".into(), side.list("elsewhere/sub")),
            ("ls proj/a".into(), side.list("proj/a")),
        ]
    });

    assert!(!has(&snap, "proj/a/to_delete"));
    assert!(!has(&snap, "proj/a/b/c/d/whited"));
    assert!(has(&snap, "proj/a/b/c/d/e/new"));
    assert!(has(&snap, "proj/a/b/newdir/from_l0"));
    assert!(!has(&snap, "elsewhere/sub/moved"));
    let link = &snap[&b"proj/a/b/c/from_l1_link"[..]];
    assert_eq!(
        link.link_group.as_deref(),
        Some(&b"proj/a/b/c/from_l1"[..]),
        "the hard-link pair inside the moved tree stays linked"
    );
}

// ---------------------------------------------------------------------------------------
// 5. git
// ---------------------------------------------------------------------------------------

/// A git command with a fixed identity and dates (so commits hash the same on both sides),
/// no system or global configuration, and no automatic gc running in the background.
fn git(home: &Path, dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.current_dir(dir)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Work Load")
        .env("GIT_AUTHOR_EMAIL", "workload@example.com")
        .env("GIT_AUTHOR_DATE", "2024-01-02T03:04:05Z")
        .env("GIT_COMMITTER_NAME", "Work Load")
        .env("GIT_COMMITTER_EMAIL", "workload@example.com")
        .env("GIT_COMMITTER_DATE", "2024-01-02T03:04:05Z")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "gc.auto=0",
            "-c",
            "maintenance.auto=false",
            "-c",
            "advice.detachedHead=false",
        ]);
    c
}

/// Whether `rel` has no `.git` component: worktrees are compared, repositories are not
/// (the index records inode numbers and times).
fn outside_dot_git(rel: &[u8]) -> bool {
    !rel.split(|b| *b == b'/').any(|c| c == b".git")
}

#[test]
fn git_checkout_commit_and_clone() {
    let t = scratch();
    let home = mkdir(t.path(), "home");
    let origin = mkdir(t.path(), "origin");
    let outside = Side {
        name: "setup",
        mnt: t.path().to_path_buf(),
    };
    let g = |args: &[&str]| outside.run(git(&home, &origin).args(args));

    g(&["init", "-q"]);
    let o = layer(&origin);
    o.file(b"README.md", b"# demo\n", 0o644)
        .file(b"src/main.c", b"int main(void) { return 0; }\n", 0o644)
        .file(b"src/util/helpers.c", b"/* helpers */\n", 0o644)
        .file(b"build.sh", b"#!/bin/sh\ncc src/main.c\n", 0o755)
        .symlink(b"docs", b"README.md");
    for i in 0..40 {
        o.file(
            format!("data/part{i:02}.txt").as_bytes(),
            &bytes(i, 2000)
                .iter()
                .map(|b| b'a' + b % 26)
                .collect::<Vec<u8>>(),
            0o644,
        );
    }
    g(&["add", "-A"]);
    g(&["commit", "-q", "-m", "initial"]);
    o.file(b"src/main.c", b"int main(void) { return 1; }\n", 0o644);
    g(&["commit", "-q", "-am", "main: return 1"]);
    g(&["checkout", "-q", "-b", "other"]);
    o.file(b"src/other.c", b"/* only on other */\n", 0o644)
        .file(b"README.md", b"# demo (other branch)\n", 0o644);
    fs::remove_file(origin.join("src/util/helpers.c")).expect("rm helpers.c");
    g(&["add", "-A"]);
    g(&["commit", "-q", "-m", "other: add other.c, drop helpers"]);
    g(&["checkout", "-q", "main"]);
    o.file(b"data/part00.txt", b"changed on main\n", 0o644);
    g(&["commit", "-q", "-am", "main: change part00"]);

    let l0 = layer(&t.path().join("l0"));
    let l1 = layer(&t.path().join("l1"));
    l0.file(b"notes.txt", b"unrelated top layer\n", 0o644);
    outside.run(
        git(&home, t.path())
            .args(["clone", "-q"])
            .arg(&origin)
            .arg(l1.root.join("repo")),
    );
    let lowers = vec![l0.root.clone(), l1.root.clone()];

    on_both(t.path(), &lowers, outside_dot_git, |side| {
        let repo = side.path("repo");
        let in_repo = |args: &[&str]| side.run(git(&home, &repo).args(args));
        let status_before = in_repo(&["status", "--porcelain"]);
        in_repo(&["checkout", "-q", "other"]);
        side.append("repo/src/other.c", "int other(void) { return 2; }\n");
        in_repo(&["commit", "-q", "-am", "edit other.c in the mount"]);
        in_repo(&["checkout", "-q", "-"]);
        let status = in_repo(&["status", "--porcelain"]);
        assert!(status.is_empty(), "[{}] git status: {status}", side.name);
        in_repo(&["fsck", "--full", "--strict"]);
        // Repacking renames, links and deletes across the object store.
        in_repo(&["gc", "-q", "--prune=now"]);
        in_repo(&["fsck", "--full", "--strict"]);

        side.run(
            git(&home, &side.mnt)
                .args(["clone", "-q"])
                .arg(&origin)
                .arg(side.path("clone")),
        );
        let clone = side.path("clone");
        let in_clone = |args: &[&str]| side.run(git(&home, &clone).args(args));
        in_clone(&["fsck", "--full", "--strict"]);
        vec![
            ("git status before (repo)".into(), status_before),
            ("git status (repo)".into(), status),
            ("git branch (repo)".into(), in_repo(&["branch", "-vv"])),
            (
                "git log --oneline --all (repo)".into(),
                in_repo(&["log", "--oneline", "--all"]),
            ),
            (
                "git log --oneline --all (clone)".into(),
                in_clone(&["log", "--oneline", "--all"]),
            ),
            (
                "git status (clone)".into(),
                in_clone(&["status", "--porcelain"]),
            ),
            (
                "git ls-files -s (clone)".into(),
                in_clone(&["ls-files", "-s"]),
            ),
        ]
    });
}

// ---------------------------------------------------------------------------------------
// 6. sqlite3
// ---------------------------------------------------------------------------------------

/// Runs `sql` with the sqlite3 shell on `db`, stopping at the first error.
fn sqlite(side: &Side, db: &Path, sql: &str) -> String {
    side.run(
        Command::new("sqlite3")
            .args(["-bail", "-batch"])
            .arg(db)
            .arg(sql),
    )
}

/// 5000 rows in five transactions (separate processes), updates and deletes, VACUUM, an
/// integrity check; returns what the queries printed.
fn sqlite_workload(side: &Side, db: &Path) -> Vec<(String, String)> {
    for batch in 0..5 {
        let sql = format!(
            "BEGIN;
             WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 1000)
             INSERT INTO t(name, val, pad)
               SELECT 'row-' || ({batch} * 1000 + i), ({batch} * 1000 + i) * 7 % 1009,
                      printf('%0200d', i)
               FROM c;
             COMMIT;"
        );
        sqlite(side, db, &sql);
    }
    sqlite(
        side,
        db,
        "BEGIN;
         UPDATE t SET val = val + 1, name = name || '-u' WHERE id % 3 = 0;
         DELETE FROM t WHERE id % 5 = 0;
         COMMIT;
         BEGIN;
         DELETE FROM t WHERE val < 100;
         ROLLBACK;",
    );
    sqlite(side, db, "VACUUM;");
    let integrity = sqlite(side, db, "PRAGMA integrity_check;");
    assert_eq!(integrity.trim(), "ok", "[{}] integrity_check", side.name);
    let summary = sqlite(
        side,
        db,
        "SELECT count(*), sum(val), min(id), max(id), sum(length(pad)) FROM t;
         SELECT id, name, val FROM t WHERE id % 97 = 0 ORDER BY id;
         SELECT val % 10, count(*) FROM t GROUP BY 1 ORDER BY 1;",
    );
    vec![
        ("integrity_check".into(), integrity),
        ("queries".into(), summary),
    ]
}

const SCHEMA: &str =
    "CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT NOT NULL, val INTEGER, pad TEXT);
                      CREATE INDEX t_val ON t(val);";

#[test]
fn sqlite_lower_db_and_fresh_wal_db() {
    let t = scratch();
    let l0 = layer(&t.path().join("l0"));
    let l1 = layer(&t.path().join("l1"));
    l1.dir(b"db", 0o755)
        .file(b"db/readme", b"databases\n", 0o644);
    l0.dir(b"db", 0o755).dir(b"fresh", 0o755);
    let setup = Side {
        name: "setup",
        mnt: t.path().to_path_buf(),
    };
    let lower_db = l0.root.join("db/app.db");
    sqlite(
        &setup,
        &lower_db,
        &format!(
            "{SCHEMA} INSERT INTO t(name, val, pad) VALUES ('seed-1', 1, 'x'), ('seed-2', 2, 'y');"
        ),
    );
    let lowers = vec![l0.root.clone(), l1.root.clone()];

    let snap = on_both(t.path(), &lowers, keep_all, |side| {
        let mut record = Vec::new();
        let db = side.path("db/app.db");
        for (label, out) in sqlite_workload(side, &db) {
            record.push((format!("app.db: {label}"), out));
        }
        let wal = side.path("fresh/wal.db");
        let mode = sqlite(side, &wal, &format!("PRAGMA journal_mode=WAL; {SCHEMA}"));
        record.push(("wal.db: journal_mode".into(), mode));
        for (label, out) in sqlite_workload(side, &wal) {
            record.push((format!("wal.db: {label}"), out));
        }
        record.push((
            "wal.db: journal_mode after".into(),
            sqlite(side, &wal, "PRAGMA journal_mode;"),
        ));
        record.push(("ls db".into(), side.list("db")));
        record.push(("ls fresh".into(), side.list("fresh")));
        record
    });

    assert!(has(&snap, "db/app.db") && has(&snap, "fresh/wal.db"));
    let lower_size = fs::metadata(&lower_db).expect("lower db").size();
    assert!(
        snap[&b"db/app.db"[..]].size.is_some_and(|s| s > lower_size),
        "the database grew in the upper"
    );
    // The lower layer is never written.
    assert_eq!(
        sqlite(&setup, &lower_db, "SELECT count(*) FROM t;").trim(),
        "2"
    );
}
