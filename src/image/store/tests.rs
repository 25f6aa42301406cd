//! Unit tests of the store through its API: layout creation, digest verification, name
//! resolution, tagging, removal rules, garbage collection, layer extraction.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use oci_spec::image::{
    ConfigBuilder, Descriptor, Digest, ImageConfiguration, ImageConfigurationBuilder, MediaType,
};

use super::*;
use crate::image::reference::Reference;

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Stores a gzip layer with the given files; returns (blob descriptor, diff_id).
fn layer(store: &Store, files: &[(&str, &[u8])]) -> (Descriptor, Digest) {
    let tar = tar_of(files);
    let desc = store
        .put_blob_bytes(&gzip(&tar), MediaType::ImageLayerGzip)
        .unwrap();
    (desc, sha256_digest(&tar))
}

fn config(labels: &[(&str, &str)]) -> ImageConfiguration {
    let labels: HashMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    ImageConfigurationBuilder::default()
        .created("2024-01-02T03:04:05Z")
        .config(ConfigBuilder::default().labels(labels).build().unwrap())
        .build()
        .unwrap()
}

fn add(store: &Store, layers: Vec<(Descriptor, Digest)>, tag: &str) -> ImageId {
    let r = Reference::parse_tag_target(tag).unwrap();
    store
        .add_image(config(&[("t", tag)]), layers, Some(&r))
        .unwrap()
}

fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if p.is_dir() {
                walk(&p, root, out);
            }
        }
    }
    walk(root, root, &mut out);
    out.sort();
    out
}

fn blob_count(store: &Store) -> usize {
    fs::read_dir(store.root().join("blobs/sha256"))
        .unwrap()
        .count()
}

#[test]
fn open_creates_an_oci_layout() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("store");
    let store = Store::open(&root).unwrap();
    let layout = fs::read_to_string(root.join("oci-layout")).unwrap();
    assert_eq!(layout, r#"{"imageLayoutVersion":"1.0.0"}"#);
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(root.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["manifests"], serde_json::json!([]));
    for dir in ["blobs/sha256", "layers", "containers", "tmp"] {
        assert!(root.join(dir).is_dir(), "{dir}");
    }
    assert!(store.list().unwrap().is_empty());
    // Opening again changes nothing.
    let before = tree(&root);
    Store::open(&root).unwrap();
    assert_eq!(tree(&root), before);
}

#[test]
fn open_refuses_a_directory_that_is_not_a_store() {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("precious"), b"x").unwrap();
    let e = Store::open(d.path()).unwrap_err().to_string();
    assert!(e.contains("not an image store"), "{e}");
    assert!(!d.path().join("index.json").exists());
}

#[test]
fn blobs_are_named_by_digest_and_verified_on_read() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let desc = store
        .put_blob_bytes(b"hello", MediaType::ImageConfig)
        .unwrap();
    assert_eq!(
        desc.digest().to_string(),
        "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );
    assert_eq!(desc.size(), 5);
    assert_eq!(store.read_blob_verified(desc.digest()).unwrap(), b"hello");
    // Storing it again is harmless and leaves no temp file.
    store
        .put_blob_bytes(b"hello", MediaType::ImageConfig)
        .unwrap();
    assert_eq!(fs::read_dir(d.path().join("tmp")).unwrap().count(), 0);

    let path = store.blob_path(desc.digest()).unwrap();
    fs::write(&path, b"hellO").unwrap();
    let e = store.read_blob_verified(desc.digest()).unwrap_err();
    assert!(matches!(e, ImageError::DigestMismatch { .. }), "{e}");
    assert!(e.to_string().contains(&desc.digest().to_string()), "{e}");
    let mut r = store.open_blob(desc.digest()).unwrap();
    let mut buf = [0u8; 2];
    r.read_exact(&mut buf).unwrap();
    let e = r.finish().unwrap_err();
    assert!(e.to_string().contains("is corrupt"), "{e}");
    // Putting the right bytes again repairs it.
    store
        .put_blob_bytes(b"hello", MediaType::ImageConfig)
        .unwrap();
    store.read_blob_verified(desc.digest()).unwrap();

    fs::remove_file(&path).unwrap();
    let e = store.read_blob_verified(desc.digest()).unwrap_err();
    assert!(matches!(e, ImageError::MissingBlob { .. }), "{e}");
}

#[test]
fn images_resolve_by_name_tag_id_and_digest() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let l = layer(&store, &[("a", b"1")]);
    let id = add(&store, vec![l.clone()], "base");
    let img = store.resolve("base").unwrap();
    assert_eq!(img.id, id);
    assert_eq!(img.refs, vec!["base:latest".to_string()]);
    assert_eq!(img.layers.len(), 1);
    assert_eq!(img.size(), l.0.size());
    for name in [
        "base:latest".to_string(),
        "docker.io/library/base".to_string(),
        id.to_string(),
        id.hex().to_string(),
        id.short().to_string(),
        id.hex()[..4].to_string(),
        format!("sha256:{}", &id.hex()[..8]),
        format!("base@{}", img.manifest_descriptor.digest()),
    ] {
        assert_eq!(store.resolve(&name).unwrap().id, id, "{name}");
    }
    for (name, want) in [
        ("base:v2", "no such image"),
        ("other", "no such image"),
        ("Base", "lowercase"),
        ("sha256:abc", "4 to 64"),
    ] {
        let e = store.resolve(name).unwrap_err().to_string();
        assert!(e.contains(want), "{name}: {e}");
    }
    let index = fs::read_to_string(d.path().join("index.json")).unwrap();
    assert!(
        index.contains(r#""org.opencontainers.image.ref.name":"base:latest""#),
        "{index}"
    );
}

#[test]
fn the_same_content_gives_the_same_id() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let l = layer(&store, &[("a", b"1")]);
    let labels = [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5")];
    let a = store
        .add_image(config(&labels), vec![l.clone()], None)
        .unwrap();
    let b = store.add_image(config(&labels), vec![l], None).unwrap();
    assert_eq!(a, b);
    // One untagged entry, not two.
    let list = store.list().unwrap();
    assert_eq!(list.len(), 1);
    assert!(list[0].repository.is_none());
}

#[test]
fn add_image_checks_its_inputs() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let (blob, diff_id) = layer(&store, &[("a", b"1")]);
    let mut cfg = config(&[]);
    cfg.rootfs_mut().set_diff_ids(vec!["sha256:0000".into()]);
    let e = store
        .add_image(cfg, vec![(blob.clone(), diff_id.clone())], None)
        .unwrap_err();
    assert!(e.to_string().contains("do not match"), "{e}");
    fs::remove_file(store.blob_path(blob.digest()).unwrap()).unwrap();
    let e = store
        .add_image(config(&[]), vec![(blob, diff_id)], None)
        .unwrap_err();
    assert!(matches!(e, ImageError::MissingBlob { .. }), "{e}");
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn tags_move_and_untagged_images_stay() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let a = add(&store, vec![layer(&store, &[("a", b"1")])], "app:1");
    let b = add(&store, vec![layer(&store, &[("b", b"2")])], "app:2");
    store
        .tag("app:1", &Reference::parse_tag_target("app").unwrap())
        .unwrap();
    assert_eq!(store.resolve("app").unwrap().id, a);
    // Moving app:1 to b leaves a with app:latest only.
    store
        .tag(
            &b.to_string(),
            &Reference::parse_tag_target("app:1").unwrap(),
        )
        .unwrap();
    assert_eq!(store.resolve("app:1").unwrap().id, b);
    assert_eq!(
        store.resolve("app").unwrap().refs,
        vec!["app:latest".to_string()]
    );
    // Untagging the last tag keeps the image, untagged.
    store.untag(&Reference::parse("app").unwrap()).unwrap();
    let list = store.list().unwrap();
    let untagged: Vec<_> = list.iter().filter(|s| s.repository.is_none()).collect();
    assert_eq!(untagged.len(), 1);
    assert_eq!(untagged[0].id.as_ref(), Some(&a));
    assert_eq!(store.resolve(a.short()).unwrap().refs, Vec::<String>::new());
}

#[test]
fn removal_follows_the_rules_and_collects_garbage() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let base_layer = layer(&store, &[("a", b"1")]);
    let base = add(&store, vec![base_layer.clone()], "base");
    let child = add(
        &store,
        vec![base_layer.clone(), layer(&store, &[("b", b"2")])],
        "child",
    );
    store
        .tag("base", &Reference::parse_tag_target("base:v1").unwrap())
        .unwrap();

    // A tag of an image with two tags: only the tag goes.
    let r = store.remove_image("base:v1", false).unwrap();
    assert_eq!(r.untagged, vec!["base:v1".to_string()]);
    assert!(r.deleted.is_empty());

    // The last tag of an image with a tagged child: refused, store unchanged.
    let before = tree(d.path());
    let e = store.remove_image("base", false).unwrap_err().to_string();
    assert!(e.contains("child") && e.contains("child:latest"), "{e}");
    assert_eq!(tree(d.path()), before);

    // A container uses the child: refused; with -f untagged but kept.
    store
        .create_container_record(&ContainerRecord {
            name: "web".into(),
            image: child.to_string(),
            created: None,
            ..Default::default()
        })
        .unwrap();
    let e = store.remove_image("child", false).unwrap_err().to_string();
    assert!(e.contains("container web"), "{e}");
    let r = store.remove_image("child", true).unwrap();
    assert_eq!(r.untagged, vec!["child:latest".to_string()]);
    assert!(r.deleted.is_empty());
    assert!(store.resolve(child.short()).is_ok());

    // Now base has no tagged child: it goes; the child's layers stay.
    let blobs = blob_count(&store);
    let r = store.remove_image("base", false).unwrap();
    assert_eq!(r.deleted, vec![base.to_string()]);
    assert_eq!(r.gc.blobs_removed, 2, "{r:?}"); // base's config and manifest
    assert_eq!(blob_count(&store), blobs - 2);
    assert!(store.has_blob(base_layer.0.digest()));

    // With the container gone, the child goes, and every blob with it.
    store.remove_container_record("web").unwrap();
    store.remove_image(child.short(), false).unwrap();
    assert_eq!(blob_count(&store), 0);
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn removal_by_id_of_a_multiply_tagged_image_needs_force() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let id = add(&store, vec![layer(&store, &[("a", b"1")])], "x:1");
    store
        .tag("x:1", &Reference::parse_tag_target("x:2").unwrap())
        .unwrap();
    let e = store
        .remove_image(id.short(), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("several tags") && e.contains("x:1, x:2"), "{e}");
    let r = store.remove_image(id.short(), true).unwrap();
    assert_eq!(r.untagged, vec!["x:1".to_string(), "x:2".to_string()]);
    assert_eq!(blob_count(&store), 0);
}

fn untar(tar: &mut dyn Read, dir: &Path) -> ImageResult<()> {
    tar::Archive::new(tar)
        .unpack(dir)
        .map_err(|e| crate::image::store::blob::unwrap_io("unpack", dir, e))
}

/// The marker of a layer published before it was synced, as `ensure_layer_extracted`
/// leaves it.
fn unsynced_marker(d: &Path, diff_id: &oci_spec::image::Digest) -> std::path::PathBuf {
    d.join("unsynced").join(diff_id.digest())
}

#[test]
fn a_layer_extracted_before_a_restart_and_never_synced_is_extracted_again() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let l = layer(&store, &[("etc/hostname", b"box\n"), ("etc/motd", b"hi\n")]);
    add(&store, vec![l.clone()], "base");
    let img = store.resolve("base").unwrap();
    let dirs = store.ensure_image_layers(&img, untar).unwrap();
    let marker = unsynced_marker(d.path(), &l.1);
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(fs::read_to_string(&marker).unwrap().trim(), boot.trim());

    // The machine went down before the files reached the disk: one of them is lost, and
    // the marker names the boot before.
    fs::remove_file(dirs[0].join("etc/motd")).unwrap();
    fs::write(&marker, b"00000000-0000-0000-0000-000000000000\n").unwrap();
    let mut extracted = 0;
    let again = store
        .ensure_image_layers(&img, |tar, dir| {
            extracted += 1;
            untar(tar, dir)
        })
        .unwrap();
    assert_eq!(extracted, 1, "the layer was not extracted again");
    assert_eq!(fs::read(again[0].join("etc/motd")).unwrap(), b"hi\n");
    assert_eq!(fs::read_to_string(&marker).unwrap().trim(), boot.trim());
    // Nothing left behind in tmp/.
    assert_eq!(fs::read_dir(d.path().join("tmp")).unwrap().count(), 0);
}

#[test]
fn markers_are_dropped_once_the_kernel_had_time_to_write_the_layer_out() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let (old, new) = (layer(&store, &[("a", b"1")]), layer(&store, &[("b", b"2")]));
    add(&store, vec![old.clone()], "old");
    add(&store, vec![new.clone()], "new");
    for name in ["old", "new"] {
        let img = store.resolve(name).unwrap();
        store.ensure_image_layers(&img, untar).unwrap();
    }
    let minute_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    fs::File::options()
        .write(true)
        .open(unsynced_marker(d.path(), &old.1))
        .unwrap()
        .set_modified(minute_ago)
        .unwrap();
    // A marker whose layer is gone goes too.
    fs::write(d.path().join("unsynced").join("ab".repeat(32)), b"x").unwrap();

    let reopened = Store::open(d.path()).unwrap();
    assert!(!unsynced_marker(d.path(), &old.1).exists());
    assert!(!d.path().join("unsynced").join("ab".repeat(32)).exists());
    assert!(
        unsynced_marker(d.path(), &new.1).exists(),
        "a marker younger than the kernel's writeback delay was dropped"
    );
    // The settled layer is used as it is.
    let img = reopened.resolve("old").unwrap();
    reopened
        .ensure_image_layers(&img, |_, _| panic!("extracted again"))
        .unwrap();
}

#[test]
fn layers_are_extracted_once_verified_and_collected() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let l = layer(&store, &[("etc/hostname", b"box\n")]);
    add(&store, vec![l.clone()], "base");
    let img = store.resolve("base").unwrap();
    let dirs = store.ensure_image_layers(&img, untar).unwrap();
    assert_eq!(dirs, vec![store.layer_dir(&l.1).unwrap()]);
    assert_eq!(fs::read(dirs[0].join("etc/hostname")).unwrap(), b"box\n");
    // A second call does not extract again.
    let again = store
        .ensure_image_layers(&img, |_, _| panic!("extracted twice"))
        .unwrap();
    assert_eq!(again, dirs);
    assert_eq!(fs::read_dir(d.path().join("tmp")).unwrap().count(), 0);

    // Leftovers of a crashed writer go with the next collection.
    fs::write(d.path().join("tmp/blob-1-2-3"), b"partial").unwrap();
    fs::create_dir_all(d.path().join("tmp/layer-1-2-3/usr")).unwrap();
    let r = store.remove_image("base", false).unwrap();
    assert_eq!((r.gc.layers_removed, r.gc.temp_removed), (1, 2), "{r:?}");
    assert_eq!(fs::read_dir(d.path().join("tmp")).unwrap().count(), 0);
    assert!(!dirs[0].exists());
    assert_eq!(fs::read_dir(d.path().join("layers")).unwrap().count(), 0);
}

#[test]
fn a_layer_whose_content_does_not_match_its_diff_id_is_not_published() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let (blob, _) = layer(&store, &[("a", b"1")]);
    let wrong = sha256_digest(b"something else");
    store
        .add_image(
            config(&[]),
            vec![(blob.clone(), wrong.clone())],
            Some(&Reference::parse_tag_target("w").unwrap()),
        )
        .unwrap();
    let img = store.resolve("w").unwrap();
    let e = store
        .ensure_image_layers(&img, untar)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("layer (uncompressed)") && e.contains(&wrong.to_string()),
        "{e}"
    );
    assert!(!store.layer_dir(&wrong).unwrap().exists());
    assert_eq!(fs::read_dir(d.path().join("tmp")).unwrap().count(), 0);

    // A corrupt gzip blob is reported as the corrupt blob, not as a gzip error.
    let (good, good_id) = layer(&store, &[("b", b"2")]);
    store
        .add_image(
            config(&[("n", "2")]),
            vec![(good.clone(), good_id)],
            Some(&Reference::parse_tag_target("g").unwrap()),
        )
        .unwrap();
    let path = store.blob_path(good.digest()).unwrap();
    let mut bytes = fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&path, bytes).unwrap();
    let img = store.resolve("g").unwrap();
    let e = store
        .ensure_image_layers(&img, untar)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("blob {} is corrupt", good.digest())),
        "{e}"
    );
}

#[test]
fn a_pin_defers_garbage_collection() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    add(&store, vec![layer(&store, &[("a", b"1")])], "base");
    let pin = store.pin().unwrap();
    let r = store.remove_image("base", false).unwrap();
    assert!(r.gc.deferred.is_some(), "{r:?}");
    assert_eq!(blob_count(&store), 3);
    drop(pin);
    let gc = store.collect_garbage().unwrap();
    assert_eq!(gc.blobs_removed, 3);
}

#[test]
fn verify_reports_corrupt_missing_and_leftovers() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let (blob, diff) = layer(&store, &[("a", b"1")]);
    let (blob2, diff2) = layer(&store, &[("b", b"2")]);
    add(
        &store,
        vec![(blob.clone(), diff), (blob2.clone(), diff2)],
        "base",
    );
    assert!(store.verify().unwrap().is_healthy());
    fs::write(store.blob_path(blob.digest()).unwrap(), b"junk").unwrap();
    fs::remove_file(store.blob_path(blob2.digest()).unwrap()).unwrap();
    fs::write(d.path().join("tmp/blob-1-2-3"), b"").unwrap();
    let r = store.verify().unwrap();
    assert!(!r.is_healthy());
    assert_eq!(r.corrupt.len(), 1);
    assert_eq!(r.corrupt[0].0, blob.digest().to_string());
    assert_eq!(
        r.missing,
        vec![(
            blob2.digest().to_string(),
            "layer of base:latest".to_string()
        )]
    );
    assert_eq!(r.leftovers, vec![d.path().join("tmp/blob-1-2-3")]);
}

#[test]
fn container_records_need_a_known_image_and_a_new_name() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let id = add(&store, vec![layer(&store, &[("a", b"1")])], "base");
    let rec = |name: &str, image: String| ContainerRecord {
        name: name.into(),
        image,
        created: None,
        ..Default::default()
    };
    let unknown = format!("sha256:{}", "0".repeat(64));
    let e = store
        .create_container_record(&rec("c1", unknown))
        .unwrap_err();
    assert!(matches!(e, ImageError::NoSuchImage(_)), "{e}");
    let path = store
        .create_container_record(&rec("c1", id.to_string()))
        .unwrap();
    assert_eq!(path, d.path().join("containers/c1/container.json"));
    let e = store
        .create_container_record(&rec("c1", id.to_string()))
        .unwrap_err();
    assert!(e.to_string().contains("exists"), "{e}");
    let e = store
        .create_container_record(&rec("../x", id.to_string()))
        .unwrap_err();
    assert!(e.to_string().contains("invalid container name"), "{e}");
    assert_eq!(store.image_in_use(&id).unwrap(), vec!["c1".to_string()]);
    store.remove_container_record("c1").unwrap();
    assert!(store.image_in_use(&id).unwrap().is_empty());
    assert!(!d.path().join("containers/c1").exists());
}

#[test]
fn an_ambiguous_id_prefix_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let l = layer(&store, &[("a", b"1")]);
    // Find two configs whose ids share their first 4 hex digits (a birthday search).
    let mut seen: HashMap<String, usize> = HashMap::new();
    let with_diff_ids = |n: usize| {
        let mut c = config(&[("n", &n.to_string())]);
        c.rootfs_mut().set_diff_ids(vec![l.1.to_string()]);
        c
    };
    let (a, b) = (0..100_000)
        .find_map(|n| {
            let id = sha256_digest(&canonical_json(&with_diff_ids(n)).unwrap());
            let prefix = id.digest()[..4].to_string();
            seen.insert(prefix, n).map(|m| (m, n))
        })
        .unwrap();
    let ida = store
        .add_image(with_diff_ids(a), vec![l.clone()], None)
        .unwrap();
    let idb = store
        .add_image(with_diff_ids(b), vec![l.clone()], None)
        .unwrap();
    assert_eq!(ida.hex()[..4], idb.hex()[..4]);
    let e = store.resolve(&ida.hex()[..4]).unwrap_err().to_string();
    assert!(e.contains("ambiguous"), "{e}");
    assert_eq!(store.resolve(&ida.hex()[..12]).unwrap().id, ida);
}

/// A tar of files with complete headers (owners too), as `extract_layer` wants them.
fn layer_tar(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

fn extract(tar: &mut dyn Read, dir: &Path) -> ImageResult<()> {
    let opts = crate::image::layer::ExtractOptions::default();
    crate::image::layer::extract_layer(tar, dir, &opts).map(drop)
}

/// An uncompressed layer is hashed once, as its blob; a corrupt one is still refused.
#[test]
fn a_plain_layer_is_checked_by_its_blob_digest() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..200)
        .map(|i| (format!("d{}/f{i}", i % 7), format!("data {i}").into_bytes()))
        .collect();
    let tar = layer_tar(&files);
    let blob = store.put_blob_bytes(&tar, MediaType::ImageLayer).unwrap();
    let diff_id = sha256_digest(&tar);
    assert_eq!(blob.digest(), &diff_id);
    add(&store, vec![(blob.clone(), diff_id.clone())], "plain");
    let img = store.resolve("plain").unwrap();

    let path = store.blob_path(blob.digest()).unwrap();
    let mut bad = tar.clone();
    let at = bad
        .windows(9)
        .position(|w| w == b"data 150\0" || w == b"data 150d")
        .unwrap();
    bad[at] = b'D';
    fs::write(&path, &bad).unwrap();
    let e = store
        .ensure_image_layers(&img, extract)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("blob {} is corrupt", blob.digest())),
        "{e}"
    );
    assert!(!store.layer_dir(&diff_id).unwrap().exists());
    assert_eq!(fs::read_dir(d.path().join("tmp")).unwrap().count(), 0);

    // Storing the blob again repairs it.
    store.put_blob_bytes(&tar, MediaType::ImageLayer).unwrap();
    let dirs = store.ensure_image_layers(&img, extract).unwrap();
    assert_eq!(fs::read(dirs[0].join("d3/f150")).unwrap(), b"data 150");
}

/// A layer whose tar stops short (its digests match: it was stored that way) fails to
/// extract and leaves no layer and no temporary behind.
#[test]
fn a_cut_layer_tar_gives_no_layer() {
    let d = tempfile::tempdir().unwrap();
    let store = Store::open(d.path()).unwrap();
    let files: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| (format!("d{}/f{i}", i % 5), vec![b'x'; i * 3]))
        .collect();
    let tar = layer_tar(&files);
    for cut in [tar.len() / 2 / 512 * 512, tar.len() / 2 + 7] {
        let part = &tar[..cut];
        let blob = store.put_blob_bytes(part, MediaType::ImageLayer).unwrap();
        let diff_id = sha256_digest(part);
        let tag = format!("cut{cut}");
        add(&store, vec![(blob, diff_id.clone())], &tag);
        let img = store.resolve(&tag).unwrap();
        let e = store
            .ensure_image_layers(&img, extract)
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated"), "cut at {cut}: {e}");
        assert!(!store.layer_dir(&diff_id).unwrap().exists());
        assert_eq!(fs::read_dir(d.path().join("tmp")).unwrap().count(), 0);
    }
}
