//! import, export, save and load through the real binary: round trips (import -> export
//! gives the tree back; save -> load keeps image ids; a `docker save` archive built here
//! loads), export of an image equals export of a ufsd mount of its layers, interop with
//! skopeo and umoci in both directions (`transfer/interop.rs`), and hostile or broken
//! input, each refused with one line and the store unchanged (`transfer/hostile.rs`).
//!
//! Needs root (owners, device nodes, FUSE), GNU tar, skopeo and umoci; nothing skips.

mod common;
#[path = "image_store/fixture.rs"]
#[allow(dead_code)]
mod fixture;
#[path = "transfer/hostile.rs"]
mod hostile;
#[path = "transfer/interop.rs"]
mod interop;

use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{LayerBuilder, WhiteoutFormat, assert_same_tree, mkdir, mount_ufsd, scratch};
use fixture::{ok, sha256, stderr, ufsd};

/// Runs a command and panics with its stderr unless it succeeds.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tree with every kind of entry a rootfs has: files with modes and owners, a set-id
/// binary, directories with odd modes, symlinks, hard links, a fifo, a device, xattrs.
pub fn rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    let b = LayerBuilder::new(&root, WhiteoutFormat::Overlay);
    b.dir(b"etc", 0o755)
        .file(b"etc/os-release", b"NAME=test\n", 0o644)
        .file(b"etc/shadow", b"root:*:1::::::\n", 0o640)
        .owner(b"etc/shadow", 0, 42)
        .dir(b"bin", 0o755)
        .file(b"bin/sh", b"#!/bin/true\n", 0o755)
        .file(b"bin/su", b"setuid\n", 0o4755)
        .hardlink(b"bin/sh", b"bin/bash")
        .symlink(b"bin/ash", b"sh")
        .symlink(b"lib64", b"/lib")
        .dir(b"tmp", 0o1777)
        .dir(b"home/user", 0o700)
        .owner(b"home/user", 1000, 1000)
        .file(b"home/user/.profile", b"export A=1\n", 0o600)
        .owner(b"home/user/.profile", 1000, 1000)
        .fifo(b"run/initctl", 0o600)
        .chardev(b"dev/null", 1, 3)
        .xattr(b"bin/sh", b"user.mime", b"text/x-sh")
        .xattr(
            b"bin/su",
            b"security.capability",
            b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
        );
    root
}

/// GNU tar of `dir` with owners and xattrs (an independent writer).
pub fn gnu_tar(dir: &Path, out: &Path, gzip: bool) {
    let mut args = vec![
        "--xattrs",
        "--xattrs-include=*",
        "--numeric-owner",
        "-C",
        dir.to_str().unwrap(),
    ];
    args.push(if gzip { "-czpf" } else { "-cpf" });
    args.push(out.to_str().unwrap());
    args.push(".");
    run("tar", &args);
}

/// The sample rootfs under `dir`, imported from a GNU tar of it (gzipped with `gzip`) as
/// `base:latest` into a new store at `dir/store`; returns the rootfs and the store.
pub fn imported_rootfs(dir: &Path, gzip: bool) -> (PathBuf, PathBuf) {
    let src = rootfs(dir);
    let root = dir.join("store");
    let tar = dir.join("in.tar");
    gnu_tar(&src, &tar, gzip);
    ok(ufsd(
        &root,
        &["import", tar.to_str().unwrap(), "base:latest"],
    ));
    (src, root)
}

/// GNU tar extraction of `tar` into a new directory `dest`, keeping owners and xattrs.
pub fn gnu_untar(tar: &Path, dest: &Path) {
    fs::create_dir_all(dest).unwrap();
    run(
        "tar",
        &[
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-xpf",
            tar.to_str().unwrap(),
            "-C",
            dest.to_str().unwrap(),
        ],
    );
}

/// The store's id of an image.
pub fn image_id(root: &Path, name: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(&ok(ufsd(root, &["inspect", name]))).unwrap();
    v[0]["Id"].as_str().unwrap().to_string()
}

/// `ufsd export IMAGE` unpacked with GNU tar into `dest`.
pub fn export_tree(root: &Path, source: &str, dest: &Path) {
    let tar = dest.with_extension("tar");
    ok(ufsd(root, &["export", source, "-o", tar.to_str().unwrap()]));
    gnu_untar(&tar, dest);
}

#[test]
fn import_then_export_gives_the_same_tree() {
    let d = scratch();
    let src = rootfs(d.path());
    let root = d.path().join("store");
    for gzip in [false, true] {
        let tar = d.path().join(if gzip { "in.tar.gz" } else { "in.tar" });
        gnu_tar(&src, &tar, gzip);
        let tag = if gzip { "base:gz" } else { "base:plain" };
        let id = ok(ufsd(
            &root,
            &["import", tar.to_str().unwrap(), tag, "-m", "first"],
        ));
        assert!(id.trim().starts_with("sha256:"), "{id}");
        let out = d.path().join(if gzip { "out-gz" } else { "out-plain" });
        export_tree(&root, tag, &out);
        assert_same_tree(&src, &out);
    }
    // The same tree gives the same layer, compressed input or not.
    let v: serde_json::Value =
        serde_json::from_str(&ok(ufsd(&root, &["inspect", "base:gz", "base:plain"]))).unwrap();
    assert_eq!(v[0]["Layers"][0]["DiffID"], v[1]["Layers"][0]["DiffID"]);
    let history = ok(ufsd(&root, &["history", "base:gz"]));
    assert!(
        history.contains("ufsd import") && history.contains("first"),
        "{history}"
    );
    // Standard input works too.
    let tar = fs::read(d.path().join("in.tar")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ufsd"))
        .args([
            "--root",
            root.to_str().unwrap(),
            "import",
            "-",
            "base:stdin",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&tar).unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    export_tree(&root, "base:stdin", &d.path().join("out-stdin"));
    assert_same_tree(&src, &d.path().join("out-stdin"));
}

/// `-o` naming a device (a null device made for the test, as `/dev/null` would be) writes
/// to it: the temp-file-and-rename path must never replace a device with a file.
#[test]
fn export_to_a_device_writes_to_it_and_keeps_it() {
    let d = scratch();
    let (_, root) = imported_rootfs(d.path(), false);
    let null = d.path().join("null");
    nix::sys::stat::mknod(
        &null,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .unwrap();
    ok(ufsd(
        &root,
        &["export", "base:latest", "-o", null.to_str().unwrap()],
    ));
    // save -o takes a name ending in .tar as a tar, else a layout directory: a device is
    // neither, and whatever save says, the device stays.
    let _ = ufsd(
        &root,
        &["save", "base:latest", "-o", null.to_str().unwrap()],
    );
    {
        let st = fs::symlink_metadata(&null).unwrap();
        assert!(
            std::os::unix::fs::FileTypeExt::is_char_device(&st.file_type()),
            "the device was replaced"
        );
    }
}

#[test]
fn export_of_an_image_equals_export_of_a_mount_of_its_layers() {
    let d = scratch();
    let root = d.path().join("store");
    // Two layers: the second deletes a file, replaces a directory opaquely, adds one.
    let low = LayerBuilder::new(&d.path().join("l1"), WhiteoutFormat::Oci);
    low.file(b"etc/gone", b"bye\n", 0o644)
        .file(b"etc/kept", b"kept\n", 0o644)
        .file(b"opq/old", b"old\n", 0o644);
    let up = LayerBuilder::new(&d.path().join("l2"), WhiteoutFormat::Oci);
    up.dir(b"etc", 0o755)
        .whiteout(b"etc/gone")
        .file(b"etc/new", b"new\n", 0o600)
        .dir(b"opq", 0o755)
        .opaque(b"opq")
        .file(b"opq/fresh", b"fresh\n", 0o644);
    for (dir, tag) in [(&low.root, "t:l1"), (&up.root, "t:l2")] {
        let tar = d.path().join(format!("{}.tar", tag.replace(':', "-")));
        run(
            "tar",
            &[
                "-C",
                dir.to_str().unwrap(),
                "-cf",
                tar.to_str().unwrap(),
                ".",
            ],
        );
        let _ = tag;
    }
    // Build the two-layer image through the library API from the tars.
    let store = ufsd::image::store::Store::open(&root).unwrap();
    let mut layers = Vec::new();
    for name in ["t-l1.tar", "t-l2.tar"] {
        let bytes = fs::read(d.path().join(name)).unwrap();
        let blob = store
            .put_blob_bytes(&bytes, oci_spec::image::MediaType::ImageLayer)
            .unwrap();
        layers.push((blob, sha256(&bytes)));
    }
    fixture::add(
        &store,
        fixture::config(10, &["a", "b"]),
        layers,
        "two:layers",
    );
    let by_image = d.path().join("by-image");
    export_tree(&root, "two:layers", &by_image);
    assert_eq!(fs::read(by_image.join("etc/new")).unwrap(), b"new\n");
    assert!(!by_image.join("etc/gone").exists());
    assert!(!by_image.join("opq/old").exists());
    assert!(!by_image.join("opq/.wh..wh..opq").exists());
    assert!(by_image.join("etc/kept").exists() && by_image.join("opq/fresh").exists());

    // The same layers, extracted by the store, mounted with ufsd and exported.
    let image = store.resolve("two:layers").unwrap();
    let lowers: Vec<PathBuf> = image
        .layers
        .iter()
        .rev()
        .map(|l| store.layer_dir(&l.diff_id).unwrap())
        .collect();
    let mnt = mkdir(d.path(), "mnt");
    let m = mount_ufsd(&[&lowers[0], &lowers[1]], None, &mnt, &[]);
    let by_mount = d.path().join("by-mount");
    export_tree(&root, mnt.to_str().unwrap(), &by_mount);
    drop(m);
    assert_same_tree(&by_image, &by_mount);

    // The same layers named as --upper and --lower: merged offline, same tree, and no
    // store is needed (none is created).
    let by_dirs_tar = d.path().join("by-dirs.tar");
    let no_store = d.path().join("no-store");
    ok(ufsd(
        &no_store,
        &[
            "export",
            "--upper",
            lowers[0].to_str().unwrap(),
            "--lower",
            lowers[1].to_str().unwrap(),
            "-o",
            by_dirs_tar.to_str().unwrap(),
        ],
    ));
    assert!(!no_store.exists());
    let by_dirs = d.path().join("by-dirs");
    gnu_untar(&by_dirs_tar, &by_dirs);
    assert_same_tree(&by_image, &by_dirs);
    // A missing layer directory is one clear line, and no tar is left behind.
    let missing = d.path().join("missing");
    let bad_tar = d.path().join("bad.tar");
    fixture::refused(
        &ufsd(
            &no_store,
            &[
                "export",
                "--upper",
                lowers[0].to_str().unwrap(),
                "--lower",
                missing.to_str().unwrap(),
                "-o",
                bad_tar.to_str().unwrap(),
            ],
        ),
        &["missing", "not a directory"],
    );
    assert!(!bad_tar.exists());
    // --lower beside a source would be ignored: a usage error instead.
    let out = ufsd(&root, &["export", "--lower", "/x", "two:layers"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--lower"), "{}", stderr(&out));
}

#[test]
fn save_then_load_keeps_image_ids() {
    let d = scratch();
    let (src, root) = imported_rootfs(d.path(), false);
    ok(ufsd(&root, &["tag", "base", "registry.example/ns/base:v1"]));
    let id = image_id(&root, "base");

    let layout = d.path().join("layout");
    ok(ufsd(
        &root,
        &[
            "save",
            "base",
            "registry.example/ns/base:v1",
            "-o",
            layout.to_str().unwrap(),
        ],
    ));
    let archive = d.path().join("images.tar");
    ok(ufsd(
        &root,
        &["save", "base", "-o", archive.to_str().unwrap()],
    ));
    // A second save of the same image gives the same bytes.
    let again = d.path().join("again.tar");
    ok(ufsd(
        &root,
        &["save", "base", "-o", again.to_str().unwrap()],
    ));
    assert_eq!(fs::read(&archive).unwrap(), fs::read(&again).unwrap());

    for (n, input) in [&layout, &archive].iter().enumerate() {
        let fresh = d.path().join(format!("fresh{n}"));
        let out = ok(ufsd(&fresh, &["load", input.to_str().unwrap()]));
        assert!(out.contains("Loaded image: base:latest"), "{out}");
        assert_eq!(image_id(&fresh, "base:latest"), id);
        let exported = d.path().join(format!("exported{n}"));
        export_tree(&fresh, "base", &exported);
        assert_same_tree(&src, &exported);
    }
    assert_eq!(
        image_id(&d.path().join("fresh0"), "registry.example/ns/base:v1"),
        id
    );
    // From standard input, gzip-compressed.
    let gz = d.path().join("images.tar.gz");
    run(
        "sh",
        &[
            "-c",
            &format!("gzip -c {} > {}", archive.display(), gz.display()),
        ],
    );
    let fresh = d.path().join("fresh-stdin");
    let out = Command::new(env!("CARGO_BIN_EXE_ufsd"))
        .args(["--root", fresh.to_str().unwrap(), "load"])
        .stdin(fs::File::open(&gz).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(image_id(&fresh, "base:latest"), id);
    // Loading again changes nothing.
    let before = fixture::snapshot(&fresh);
    ok(ufsd(&fresh, &["load", archive.to_str().unwrap()]));
    assert_eq!(fixture::snapshot(&fresh), before);
}

/// A tar of regular files with every header field set.
pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A `docker save` archive in the legacy format: `<id>/layer.tar`, `<config hex>.json`,
/// manifest.json, with the second image's shared layer a symlink as docker writes it.
pub fn docker_archive(dir: &Path) -> (PathBuf, Vec<u8>, Vec<u8>) {
    let stage = dir.join("docker");
    let layer1 = tar_of(&[("etc/os-release", b"NAME=docker\n"), ("bin/sh", b"#!\n")]);
    let layer2 = tar_of(&[("app/run", b"echo hi\n")]);
    let (d1, d2) = (sha256(&layer1), sha256(&layer2));
    let config = |diff_ids: &[&oci_spec::image::Digest]| {
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/bin"]},
            "container_config": {"Hostname": "x"},
            "docker_version": "24.0.7",
            "created": "2024-01-01T00:00:00Z",
            "rootfs": {"type": "layers", "diff_ids": diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>()},
        }))
        .unwrap()
    };
    let (c1, c2) = (config(&[&d1]), config(&[&d1, &d2]));
    fs::create_dir_all(stage.join("aaa")).unwrap();
    fs::create_dir_all(stage.join("bbb")).unwrap();
    fs::create_dir_all(stage.join("ccc")).unwrap();
    fs::write(stage.join("aaa/layer.tar"), &layer1).unwrap();
    symlink("../aaa/layer.tar", stage.join("bbb/layer.tar")).unwrap();
    fs::write(stage.join("ccc/layer.tar"), &layer2).unwrap();
    let name = |c: &[u8]| format!("{}.json", sha256(c).digest());
    fs::write(stage.join(name(&c1)), &c1).unwrap();
    fs::write(stage.join(name(&c2)), &c2).unwrap();
    let manifest = serde_json::json!([
        {"Config": name(&c1), "RepoTags": ["docker.io/library/dbase:1"], "Layers": ["aaa/layer.tar"]},
        {"Config": name(&c2), "RepoTags": ["dapp:latest", "dapp:2"], "Layers": ["bbb/layer.tar", "ccc/layer.tar"]},
    ]);
    fs::write(
        stage.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
    let tar = dir.join("docker.tar");
    run(
        "tar",
        &[
            "-C",
            stage.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            ".",
        ],
    );
    (tar, c1, c2)
}

#[test]
fn a_docker_save_archive_loads() {
    let d = scratch();
    let (tar, c1, c2) = docker_archive(d.path());
    let root = d.path().join("store");
    let out = ok(ufsd(&root, &["load", tar.to_str().unwrap()]));
    for t in ["dbase:1", "dapp:latest", "dapp:2"] {
        assert!(out.contains(&format!("Loaded image: {t}")), "{out}");
    }
    // Docker's image ids: the digests of the configs, kept byte for byte.
    assert_eq!(image_id(&root, "dbase:1"), sha256(&c1).to_string());
    assert_eq!(image_id(&root, "dapp:2"), sha256(&c2).to_string());
    let tree = d.path().join("tree");
    export_tree(&root, "dapp", &tree);
    assert_eq!(fs::read(tree.join("app/run")).unwrap(), b"echo hi\n");
    assert_eq!(
        fs::read(tree.join("etc/os-release")).unwrap(),
        b"NAME=docker\n"
    );
    // The store stays readable by the OCI tools.
    run("umoci", &["ls", "--layout", root.to_str().unwrap()]);
}

#[test]
fn export_of_a_container_is_its_upper_over_its_image() {
    let d = scratch();
    let src = rootfs(d.path());
    let root = d.path().join("store");
    let tar = d.path().join("in.tar");
    gnu_tar(&src, &tar, false);
    ok(ufsd(&root, &["import", tar.to_str().unwrap(), "base"]));
    let store = ufsd::image::store::Store::open(&root).unwrap();
    store
        .create_container_record(&ufsd::image::store::ContainerRecord {
            name: "web".into(),
            image: image_id(&root, "base"),
            created: None,
            ..Default::default()
        })
        .unwrap();
    let dir = store.container_dir("web").unwrap();
    // Without an upper layer yet: a clear refusal.
    let out = d.path().join("web.tar");
    fixture::refused(
        &ufsd(&root, &["export", "web", "-o", out.to_str().unwrap()]),
        &["container web", "upper"],
    );
    assert!(!out.exists());
    // An overlayfs-format upper: one file deleted (0/0 device), one added.
    let up = LayerBuilder::new(&dir.join("upper"), WhiteoutFormat::Overlay);
    up.whiteout(b"etc/os-release")
        .file(b"app/log", b"started\n", 0o644);
    let tree = d.path().join("web");
    export_tree(&root, "web", &tree);
    assert_eq!(fs::read(tree.join("app/log")).unwrap(), b"started\n");
    assert!(!tree.join("etc/os-release").exists());
    assert_eq!(fs::read(tree.join("bin/sh")).unwrap(), b"#!/bin/true\n");
}
