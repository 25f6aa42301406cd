//! Hostile and broken input to import and load: each is refused with one `ufsd:` line and
//! a non-zero exit, nothing is written outside the store, and the store is unchanged.
//! Absolute paths are confined (they land inside the image) rather than refused, and a
//! duplicate entry in an imported tar follows tar's "later wins"; both are checked too.

use std::fs;
use std::io::Write;
use std::path::Path;

use flate2::Compression;
use flate2::write::GzEncoder;
use tar::{EntryType, Header};

use super::common::scratch;
use super::fixture::{fixture, ok, refused, snapshot, ufsd};
use super::{docker_archive, export_tree, run};

/// One raw archive entry; names and link targets are written verbatim (the tar crate's
/// high-level API would refuse the hostile ones).
struct Raw<'a> {
    name: &'a [u8],
    kind: EntryType,
    data: &'a [u8],
    link: &'a [u8],
}

fn file<'a>(name: &'a [u8], data: &'a [u8]) -> Raw<'a> {
    Raw {
        name,
        kind: EntryType::Regular,
        data,
        link: b"",
    }
}

fn link<'a>(name: &'a [u8], kind: EntryType, target: &'a [u8]) -> Raw<'a> {
    Raw {
        name,
        kind,
        data: b"",
        link: target,
    }
}

fn build(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = Header::new_ustar();
        h.as_old_mut().name[..e.name.len()].copy_from_slice(e.name);
        h.as_old_mut().linkname[..e.link.len()].copy_from_slice(e.link);
        h.set_entry_type(e.kind);
        h.set_size(e.data.len() as u64);
        h.set_mode(if e.kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_mtime(1_600_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        b.append(&h, e.data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// `ufsd import` of `bytes` is refused with a line naming each of `words`, and the
/// store is unchanged.
fn import_refused(bytes: &[u8], tag: &str, extra: &[&str], words: &[&str]) {
    let f = fixture();
    let input = f.dir.path().join("input");
    fs::write(&input, bytes).unwrap();
    let before = snapshot(&f.root);
    let mut args = vec!["import", input.to_str().unwrap(), tag];
    args.extend_from_slice(extra);
    refused(&ufsd(&f.root, &args), words);
    assert_eq!(
        snapshot(&f.root),
        before,
        "import {words:?} changed the store"
    );
}

/// The same for `ufsd load` of a path.
fn load_refused(input: &Path, words: &[&str]) {
    let f = fixture();
    let before = snapshot(&f.root);
    refused(&ufsd(&f.root, &["load", input.to_str().unwrap()]), words);
    assert_eq!(
        snapshot(&f.root),
        before,
        "load {words:?} changed the store"
    );
}

fn big_tar() -> Vec<u8> {
    let data = vec![7u8; 64 * 1024];
    build(&[file(b"a", &data), file(b"b", &data)])
}

#[test]
fn import_refuses_broken_archives() {
    let t = big_tar();
    // Cut in the middle of a file's data.
    import_refused(&t[..t.len() / 3], "x", &[], &["truncated"]);
    // Cut exactly after an entry, without the end-of-archive blocks.
    import_refused(&t[..512 + 64 * 1024], "x", &[], &["end-of-archive"]);
    // A gzip stream with damage inside, and one cut short.
    let mut gz = gzip(&t);
    let n = gz.len();
    gz[n / 2] ^= 0xff;
    gz[n / 2 + 1] ^= 0xff;
    import_refused(&gz, "x", &[], &["gzip"]);
    let gz = gzip(&t);
    import_refused(&gz[..gz.len() / 2], "x", &[], &["gzip"]);
    // Not a tar at all.
    import_refused(&[b'x'; 2048], "x", &[], &["input tar"]);
    // A bad name, before any work.
    import_refused(&t, "Bad:x", &[], &["invalid reference", "lowercase"]);
    import_refused(&t, "x:", &[], &["invalid reference"]);
}

#[test]
fn import_never_writes_outside_its_scratch_space() {
    let victim = scratch();
    let v = victim.path().to_str().unwrap().as_bytes().to_vec();
    // `..` anywhere.
    import_refused(&build(&[file(b"../../escape", b"x")]), "x", &[], &["`..`"]);
    import_refused(&build(&[file(b"a/../../b", b"x")]), "x", &[], &["`..`"]);
    // A symlink out, then a write through it.
    let escape = build(&[
        link(b"esc", EntryType::Symlink, &v),
        file(b"esc/pwned", b"x"),
    ]);
    import_refused(&escape, "x", &[], &["esc", "symlink"]);
    let escape = build(&[
        link(b"up", EntryType::Symlink, b"../../../../../../.."),
        file(b"up/tmp/pwned", b"x"),
    ]);
    import_refused(&escape, "x", &[], &["symlink"]);
    // Hard links to outside.
    let outside = [v.as_slice(), b"/secret"].concat();
    fs::write(victim.path().join("secret"), b"s").unwrap();
    import_refused(
        &build(&[link(b"h", EntryType::Link, &outside)]),
        "x",
        &[],
        &["not in the layer"],
    );
    import_refused(
        &build(&[link(b"h", EntryType::Link, b"../../etc/passwd")]),
        "x",
        &[],
        &["`..`"],
    );
    assert_eq!(
        fs::read_dir(victim.path()).unwrap().count(),
        1,
        "something was written outside"
    );
    assert_eq!(fs::read(victim.path().join("secret")).unwrap(), b"s");
}

#[test]
fn absolute_paths_are_confined_and_duplicates_follow_later_wins() {
    let victim = scratch();
    let target = victim.path().join("owned");
    let name = target.to_str().unwrap().as_bytes().to_vec();
    let t = build(&[
        file(&name, b"confined\n"),
        file(b"dup", b"first\n"),
        file(b"dup", b"second\n"),
    ]);
    let f = fixture();
    let input = f.dir.path().join("abs.tar");
    fs::write(&input, &t).unwrap();
    ok(ufsd(&f.root, &["import", input.to_str().unwrap(), "abs"]));
    assert!(!target.exists(), "an absolute path was written on the host");
    let tree = f.dir.path().join("tree");
    export_tree(&f.root, "abs", &tree);
    let rel = target.strip_prefix("/").unwrap();
    assert_eq!(fs::read(tree.join(rel)).unwrap(), b"confined\n");
    assert_eq!(fs::read(tree.join("dup")).unwrap(), b"second\n");
}

#[test]
fn a_gzip_bomb_is_bounded() {
    // 256 MiB of zeros in a few hundred kilobytes.
    let mut gz = GzEncoder::new(Vec::new(), Compression::best());
    {
        let mut b = tar::Builder::new(&mut gz);
        let mut h = Header::new_ustar();
        h.set_path("zeros").unwrap();
        h.set_size(256 << 20);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append(&h, std::io::repeat(0).take_bytes(256 << 20))
            .unwrap();
        b.finish().unwrap();
    }
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 1 << 20);
    import_refused(&bomb, "x", &["--max-size", "16M"], &["limit"]);
    // load's tar input is bounded the same way.
    let d = scratch();
    let p = d.path().join("bomb.tar.gz");
    fs::write(&p, &bomb).unwrap();
    let f = fixture();
    let before = snapshot(&f.root);
    refused(
        &ufsd(&f.root, &["load", "--max-size", "16M", p.to_str().unwrap()]),
        &["limit"],
    );
    assert_eq!(snapshot(&f.root), before);
}

trait TakeBytes: std::io::Read + Sized {
    fn take_bytes(self, n: u64) -> std::io::Take<Self> {
        std::io::Read::take(self, n)
    }
}
impl<R: std::io::Read> TakeBytes for R {}

/// A saved layout of the fixture's app image, to damage.
fn saved_layout(dir: &Path) -> std::path::PathBuf {
    let f = fixture();
    let out = dir.join("layout");
    ok(ufsd(
        &f.root,
        &[
            "save",
            "registry.example/ns/app:v1",
            "-o",
            out.to_str().unwrap(),
        ],
    ));
    out
}

/// The config digest of the one image of a layout.
fn config_of(layout: &Path) -> oci_spec::image::Digest {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m = index["manifests"][0]["digest"].as_str().unwrap();
    let m = m.strip_prefix("sha256:").unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("blobs/sha256").join(m)).unwrap()).unwrap();
    manifest["config"]["digest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

fn blob_of(layout: &Path, digest: &oci_spec::image::Digest) -> std::path::PathBuf {
    layout.join("blobs/sha256").join(digest.digest())
}

#[test]
fn load_refuses_missing_and_corrupt_blobs() {
    let d = scratch();
    let f = fixture();
    let layer = f.app_layer.0.digest().clone();

    let l = saved_layout(&d.path().join("missing"));
    fs::remove_file(blob_of(&l, &layer)).unwrap();
    load_refused(&l, &["missing", layer.as_ref()]);

    let l = saved_layout(&d.path().join("corrupt"));
    let p = blob_of(&l, &layer);
    let mut b = fs::read(&p).unwrap();
    let n = b.len();
    b[n - 10] ^= 0x01;
    fs::write(&p, b).unwrap();
    load_refused(&l, &["corrupt", layer.as_ref()]);

    let l = saved_layout(&d.path().join("config"));
    let config = config_of(&l);
    let p = blob_of(&l, &config);
    let mut b = fs::read(&p).unwrap();
    b[5] ^= 0x01;
    fs::write(&p, b).unwrap();
    load_refused(&l, &["corrupt", config.as_ref()]);

    // The same damage inside a tar of the layout.
    let tar = d.path().join("corrupt.tar");
    run(
        "tar",
        &[
            "-C",
            d.path().join("corrupt/layout").to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            ".",
        ],
    );
    load_refused(&tar, &["corrupt", layer.as_ref()]);

    // An invalid tag in index.json.
    let l = saved_layout(&d.path().join("badtag"));
    let index = fs::read_to_string(l.join("index.json")).unwrap();
    fs::write(
        l.join("index.json"),
        index.replace("registry.example/ns/app:v1", "Bad Name"),
    )
    .unwrap();
    load_refused(&l, &["invalid reference", "Bad Name"]);
}

#[test]
fn load_refuses_hostile_and_broken_archives() {
    let d = scratch();
    let (docker, _, _) = docker_archive(d.path());
    let bytes = fs::read(&docker).unwrap();
    let write = |name: &str, b: &[u8]| {
        let p = d.path().join(name);
        fs::write(&p, b).unwrap();
        p
    };
    load_refused(
        &write("trunc.tar", &bytes[..bytes.len() / 2]),
        &["truncated"],
    );
    let gz = gzip(&bytes);
    load_refused(&write("trunc.tar.gz", &gz[..gz.len() / 2]), &["gzip"]);
    load_refused(&write("notar", &[b'x'; 4096]), &["input tar"]);
    load_refused(
        &write("dotdot.tar", &build(&[file(b"../x", b"x")])),
        &["`..`"],
    );
    load_refused(
        &write(
            "dup.tar",
            &build(&[file(b"manifest.json", b"[]"), file(b"manifest.json", b"[]")]),
        ),
        &["duplicate", "manifest.json"],
    );
    load_refused(
        &write(
            "linkout.tar",
            &build(&[link(
                b"manifest.json",
                EntryType::Symlink,
                b"../../../etc/passwd",
            )]),
        ),
        &["outside the archive"],
    );
    load_refused(
        &write(
            "escape.tar",
            &build(&[file(
                b"manifest.json",
                br#"[{"Config":"../../../../etc/passwd","Layers":[]}]"#,
            )]),
        ),
        &["leaves the archive"],
    );
    load_refused(
        &write("empty.tar", &build(&[file(b"x", b"x")])),
        &["no index.json"],
    );
    // A docker archive whose layer is not what the config says.
    let stage = d.path().join("docker");
    fs::remove_file(stage.join("ccc/layer.tar")).unwrap();
    fs::write(
        stage.join("ccc/layer.tar"),
        super::tar_of(&[("evil", b"x")]),
    )
    .unwrap();
    let bad = d.path().join("bad-diff.tar");
    run(
        "tar",
        &[
            "-C",
            stage.to_str().unwrap(),
            "-cf",
            bad.to_str().unwrap(),
            ".",
        ],
    );
    load_refused(&bad, &["diff_id", "ccc/layer.tar"]);
}

#[test]
fn unknown_images_are_one_line_errors() {
    let f = fixture();
    let before = snapshot(&f.root);
    let out = f.dir.path().join("x.tar");
    refused(
        &ufsd(&f.root, &["export", "nosuch", "-o", out.to_str().unwrap()]),
        &["no such image: nosuch"],
    );
    assert!(
        !out.exists()
            && fs::read_dir(f.dir.path()).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("ufsd-tmp"))
    );
    refused(
        &ufsd(
            &f.root,
            &["save", "base", "nosuch:v2", "-o", out.to_str().unwrap()],
        ),
        &["no such image: nosuch:v2"],
    );
    refused(
        &ufsd(&f.root, &["save", "Base", "-o", out.to_str().unwrap()]),
        &["invalid reference"],
    );
    assert!(!out.exists());
    assert_eq!(snapshot(&f.root), before);
}
