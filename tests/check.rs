//! `ufsd check [--repair]` through the real binary, on stores built with the library API:
//! a healthy store passes; each kind of damage (a flipped byte in a blob, a missing blob,
//! an extracted layer changed on disk, a broken container record) is named and fails the
//! check; each kind of leftover (temp files, a half-extracted layer, an unreferenced blob,
//! a container directory without a record, the pid file of a daemon that is gone) is listed
//! and removed by `--repair`, which keeps everything that is referenced.
//!
//! No mounts; root only for the runtime records under /run/ufsd.

#[path = "image_store/fixture.rs"]
#[allow(dead_code)]
mod fixture;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use fixture::{add, config, ok, refused, sha256, snapshot, stderr, stdout, ufsd};
use ufsd::image::layer::{ExtractOptions, extract_layer};

fn check(root: &Path, args: &[&str]) -> (bool, String) {
    let mut all = vec!["check"];
    all.extend_from_slice(args);
    let out: Output = ufsd(root, &all);
    assert!(
        stderr(&out).is_empty() || !out.status.success(),
        "stderr on success: {}",
        stderr(&out)
    );
    println!("{}", stdout(&out));
    (out.status.success(), stdout(&out))
}

/// A store with `base` and `app` (base's layer plus one), built as the image store
/// tests build theirs, with complete tar headers (owner, mode, times) as real layers have.
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: ufsd::image::store::Store,
    app_layer: (oci_spec::image::Descriptor, oci_spec::image::Digest),
}

fn full_layer(
    store: &ufsd::image::store::Store,
    files: &[(&str, &[u8])],
) -> (oci_spec::image::Descriptor, oci_spec::image::Digest) {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let blob = store
        .put_blob_bytes(&tar, oci_spec::image::MediaType::ImageLayer)
        .unwrap();
    (blob, sha256(&tar))
}

fn layer(
    store: &ufsd::image::store::Store,
    files: &[(&str, &[u8])],
) -> (oci_spec::image::Descriptor, oci_spec::image::Digest) {
    full_layer(store, files)
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = ufsd::image::store::Store::open(&root).unwrap();
    let base_layer = full_layer(
        &store,
        &[("etc/os-release", b"NAME=test\n"), ("bin/sh", b"#!\n")],
    );
    let app_layer = full_layer(&store, &[("app/run", b"echo hi\n")]);
    add(
        &store,
        config(180, &["ADD"]),
        vec![base_layer.clone()],
        "base",
    );
    add(
        &store,
        config(60, &["ADD", "RUN"]),
        vec![base_layer, app_layer.clone()],
        "registry.example/ns/app:v1",
    );
    Fixture {
        _dir: dir,
        root,
        store,
        app_layer,
    }
}

/// The fixture with both images' layers extracted into the store.
fn extracted() -> (Fixture, Vec<PathBuf>) {
    let f = fixture();
    let app = f.store.resolve("registry.example/ns/app:v1").unwrap();
    let dirs = f
        .store
        .ensure_image_layers(&app, |tar, dir| {
            extract_layer(tar, dir, &ExtractOptions::default()).map(drop)
        })
        .unwrap();
    (f, dirs)
}

fn blob_path(root: &Path, d: &oci_spec::image::Digest) -> PathBuf {
    root.join("blobs/sha256").join(d.digest())
}

#[test]
fn a_healthy_store_passes() {
    let (f, _) = extracted();
    let (ok, out) = check(&f.root, &[]);
    assert!(ok, "{out}");
    assert!(out.contains("0 corrupt, 0 missing"), "{out}");
    assert!(out.contains("layers: 2 extracted, 2 compared"), "{out}");
    // Stale daemon records under /run/ufsd are machine-wide (other tests kill daemons):
    // only the store's own leftovers are asserted here.
    for bad in [
        "temporary:",
        "unreferenced blob:",
        "unreferenced layer:",
        "container directory without",
    ] {
        assert!(!out.contains(bad), "{out}");
    }
    let (ok, json) = check(&f.root, &["--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["healthy"], true);
    assert!(v["store"]["blobs_checked"].as_u64().unwrap() >= 6);
}

#[test]
fn a_flipped_byte_in_a_blob_is_named_and_not_repaired_away() {
    let (f, _) = extracted();
    let p = blob_path(&f.root, f.app_layer.0.digest());
    let mut bytes = fs::read(&p).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&p, &bytes).unwrap();
    let (ok, out) = check(&f.root, &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("corrupt blob {}", f.app_layer.0.digest())),
        "{out}"
    );
    assert!(out.contains("DAMAGED"), "{out}");
    // The layer cannot be extracted again from a corrupt blob: said so, not hidden.
    assert!(out.contains("cannot be checked"), "{out}");
    let (ok, out) = check(&f.root, &["--repair"]);
    assert!(!ok, "repair must not hide a corrupt blob: {out}");
    assert!(p.exists(), "repair removed an original blob");
}

#[test]
fn a_missing_blob_is_named() {
    let (f, _) = extracted();
    let base = f.store.resolve("base").unwrap();
    fs::remove_file(blob_path(&f.root, base.manifest.config().digest())).unwrap();
    let (ok, out) = check(&f.root, &["--no-layers"]);
    assert!(!ok);
    assert!(
        out.contains(&format!("missing blob {}", base.manifest.config().digest())),
        "{out}"
    );
}

#[test]
fn an_extracted_layer_changed_on_disk_is_found_and_repaired() {
    let (f, dirs) = extracted();
    // Same size, one byte changed: only a content comparison finds it.
    fs::write(dirs[0].join("etc/os-release"), "NAME=tEst\n").unwrap();
    fs::write(dirs[1].join("extra"), "not in the blob\n").unwrap();
    let (ok, out) = check(&f.root, &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("etc/os-release: content differs"), "{out}");
    assert!(out.contains("extra: not in the layer's blob"), "{out}");
    let (ok, out) = check(&f.root, &["--repair"]);
    assert!(ok, "{out}");
    assert!(out.contains("2 damaged layers"), "{out}");
    assert!(!dirs[0].exists() && !dirs[1].exists());
    // Needed again, they are extracted again, whole.
    let app = f.store.resolve("registry.example/ns/app:v1").unwrap();
    f.store
        .ensure_image_layers(&app, |tar, dir| {
            extract_layer(tar, dir, &ExtractOptions::default()).map(drop)
        })
        .unwrap();
    assert_eq!(
        fs::read_to_string(dirs[0].join("etc/os-release")).unwrap(),
        "NAME=test\n"
    );
    assert!(check(&f.root, &[]).0);
}

#[test]
fn broken_container_records_are_damage() {
    let (f, _) = extracted();
    let c = f.root.join("containers");
    fs::create_dir_all(c.join("garbled")).unwrap();
    fs::write(c.join("garbled/container.json"), "{not json").unwrap();
    fs::create_dir_all(c.join("gone")).unwrap();
    fs::write(
        c.join("gone/container.json"),
        format!(r#"{{"name":"gone","image":"sha256:{}"}}"#, "0".repeat(64)),
    )
    .unwrap();
    let (ok, out) = check(&f.root, &["--no-layers"]);
    assert!(!ok);
    assert!(
        out.contains("damaged: container garbled: container.json does not parse"),
        "{out}"
    );
    assert!(out.contains("damaged: container gone: its image"), "{out}");
}

#[test]
fn leftovers_are_listed_and_repair_removes_only_them() {
    let (f, dirs) = extracted();
    let tmp = f.root.join("tmp");
    // A half-extracted layer and a half-written blob, as a killed import leaves them.
    fs::create_dir_all(tmp.join("layer-4242-0-1/usr/bin")).unwrap();
    fs::write(tmp.join("layer-4242-0-1/usr/bin/half"), "partial").unwrap();
    fs::write(tmp.join("blob-4242-1-2"), vec![7u8; 4096]).unwrap();
    // A blob that no image references (import killed before the index was written).
    let (stray, _) = layer(&f.store, &[("stray", b"stray\n")]);
    // A container directory whose record was never written.
    fs::create_dir_all(f.root.join("containers/half/upper")).unwrap();
    // The pid file of a daemon that is gone.
    let run = if ufsd::sys::euid() == 0 {
        Some(PathBuf::from("/run/ufsd/00000000deadbeef.pid"))
    } else {
        None
    };
    if let Some(r) = &run {
        fs::create_dir_all(r.parent().unwrap()).unwrap();
        fs::write(r, "2147483646\n/nowhere/at/all\n").unwrap();
    }
    let before = snapshot(&f.root);

    let (ok, out) = check(&f.root, &[]);
    assert!(ok, "leftovers are not damage: {out}");
    for want in [
        "temporary: ",
        "layer-4242-0-1",
        "blob-4242-1-2",
        &format!("unreferenced blob: {}", stray.digest()),
        "container directory without a record",
        "(ufsd check --repair removes them)",
    ] {
        assert!(out.contains(want), "missing {want:?} in {out}");
    }
    if let Some(r) = &run {
        assert!(out.contains(&r.display().to_string()), "{out}");
    }
    assert_eq!(
        snapshot(&f.root),
        before,
        "a check without --repair changed the store"
    );

    let (ok, out) = check(&f.root, &["--repair"]);
    assert!(ok, "{out}");
    for bad in [
        "temporary:",
        "unreferenced blob:",
        "unreferenced layer:",
        "container directory without",
    ] {
        assert!(!out.contains(bad), "{out}");
    }
    assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
    assert!(!blob_path(&f.root, stray.digest()).exists());
    assert!(!f.root.join("containers/half").exists());
    if let Some(r) = &run {
        assert!(!r.exists());
    }
    // Everything referenced is still there and whole.
    assert!(dirs.iter().all(|d| d.is_dir()));
    assert!(blob_path(&f.root, f.app_layer.0.digest()).exists());
    assert_eq!(ok_images(&f.root), 2);
}

fn ok_images(root: &Path) -> usize {
    ok(ufsd(root, &["images", "-q"])).lines().count()
}

#[test]
fn not_a_store_is_one_line() {
    let d = tempfile::tempdir().unwrap();
    let out = ufsd(d.path(), &["check"]);
    refused(&out, &["no image store"]);
}
