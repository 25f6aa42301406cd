//! Property tests over hostile input, bounded in time: random tar archives (paths with
//! `..`, absolute paths, whiteouts, symlinks and hard links pointing anywhere, devices,
//! truncation and flipped bytes) through the layer extractor, and random JSON in place of
//! index.json, manifests and configs through the image store. Neither may panic, and the
//! extractor may write nothing outside its target directory.
//!
//! `PROPTEST_CASES` sets the number of cases per property (default 256 here, a few
//! seconds each); failures print the minimal input proptest shrank them to.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use proptest::prelude::*;
use sha2::{Digest as _, Sha256};
use ufsd::image::layer::{ExtractOptions, extract_layer};
use ufsd::image::store::Store;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Path pieces that hostile archives use.
fn piece() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "a",
        "b",
        "..",
        ".",
        "",
        "etc",
        ".wh.a",
        ".wh..wh..opq",
        "outside",
        "x/../..",
        "/",
        "dev",
        "\u{e9}",
    ])
}

fn path() -> impl Strategy<Value = String> {
    (any::<bool>(), prop::collection::vec(piece(), 1..5)).prop_map(|(abs, parts)| {
        let p = parts.join("/");
        if abs { format!("/{p}") } else { p }
    })
}

#[derive(Debug, Clone)]
struct Entry {
    path: String,
    kind: u8,
    link: String,
    mode: u32,
    uid: u64,
    data: Vec<u8>,
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        path(),
        prop::sample::select(vec![b'0', b'5', b'2', b'1', b'3', b'4', b'6', b'x', b'Z']),
        prop_oneof![
            path(),
            Just("/tmp".to_string()),
            Just("../outside".to_string())
        ],
        prop_oneof![
            Just(0o644u32),
            Just(0o4755),
            Just(0o7777),
            Just(0o000),
            any::<u32>()
        ],
        prop_oneof![Just(0u64), Just(1000), any::<u64>()],
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(path, kind, link, mode, uid, data)| Entry {
            path,
            kind,
            link,
            mode,
            uid,
            data,
        })
}

/// A raw ustar archive: names written byte for byte (the tar crate's own setters refuse
/// `..`), checksums right, so the extractor's checks are what is tested.
fn archive(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_ustar();
        {
            let raw = h.as_old_mut();
            let n = e.path.len().min(100);
            raw.name[..n].copy_from_slice(&e.path.as_bytes()[..n]);
            let l = e.link.len().min(100);
            raw.linkname[..l].copy_from_slice(&e.link.as_bytes()[..l]);
        }
        h.set_mode(e.mode & 0o7777);
        h.set_uid(e.uid % 0o7777777);
        h.set_gid(e.uid % 0o7777777);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::new(e.kind));
        let body = if e.kind == b'0' { &e.data[..] } else { &[][..] };
        h.set_size(body.len() as u64);
        if e.kind == b'3' || e.kind == b'4' {
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
        }
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(body);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// What a write outside the target would change: every entry under `dir`, with its ctime.
fn fingerprint(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = fs::symlink_metadata(&p).unwrap();
        out.push(format!(
            "{} {:o} {} {} {}",
            p.display(),
            md.mode(),
            md.len(),
            md.ctime(),
            md.ctime_nsec()
        ));
        if md.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_extractor_never_panics_or_writes_outside(
        entries in prop::collection::vec(entry(), 1..12),
        cut in prop::option::of(any::<prop::sample::Index>()),
        flip in prop::option::of((any::<prop::sample::Index>(), 1u8..=255)),
    ) {
        let jail = tempfile::tempdir().unwrap();
        let outside = jail.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("canary"), "canary\n").unwrap();
        let dest = jail.path().join("dest");
        fs::create_dir(&dest).unwrap();
        let mut bytes = archive(&entries);
        if let Some((i, x)) = flip {
            let i = i.index(bytes.len());
            bytes[i] ^= x;
        }
        if let Some(c) = cut {
            bytes.truncate(c.index(bytes.len()));
        }
        let before = fingerprint(&outside);
        let names = |d: &Path| -> Vec<std::ffi::OsString> {
            let mut v: Vec<_> = fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
            v.sort();
            v
        };
        let top = names(jail.path());
        let opts = ExtractOptions { privileged: true, ..Default::default() };
        let _ = extract_layer(&bytes[..], &dest, &opts);
        prop_assert_eq!(fingerprint(&outside), before);
        prop_assert_eq!(names(jail.path()), top);
    }
}

fn json() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let key = prop::sample::select(vec![
        "schemaVersion",
        "mediaType",
        "manifests",
        "digest",
        "size",
        "config",
        "layers",
        "annotations",
        "rootfs",
        "diff_ids",
        "type",
        "org.opencontainers.image.ref.name",
        "history",
        "created",
        "platform",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        Just(Value::from(
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        )),
        Just(Value::from("application/vnd.oci.image.manifest.v1+json")),
        Just(Value::from("application/vnd.oci.image.index.v1+json")),
        Just(Value::from("application/vnd.oci.image.layer.v1.tar+gzip")),
        Just(Value::from("sha256:../../etc/passwd")),
        "[a-z:/.]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6).prop_map(|kv| {
                Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

/// Stores `bytes` as a blob under its real digest (written directly, as a hostile store
/// or another tool would) and returns the digest.
fn raw_blob(root: &Path, bytes: &[u8]) -> String {
    let hex = hex::encode(Sha256::digest(bytes));
    fs::write(root.join("blobs/sha256").join(&hex), bytes).unwrap();
    format!("sha256:{hex}")
}

fn exercise(store: &Store) {
    let _ = store.list();
    let _ = store.resolve("x");
    let _ = store.resolve("latest");
    let _ = store.verify();
    let _ = store.collect_garbage();
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_store_never_panics_on_hostile_json(index in json(), manifest in json(), cfg in json(), garbage in prop::collection::vec(any::<u8>(), 0..64)) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        let store = Store::open(&root).unwrap();
        // 1. index.json itself replaced.
        fs::write(root.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        exercise(&store);
        fs::write(root.join("index.json"), &garbage).unwrap();
        exercise(&store);
        // 2. A well-formed index naming a hostile manifest, and a manifest naming a
        //    hostile config.
        let m = serde_json::to_vec(&manifest).unwrap();
        let c = serde_json::to_vec(&cfg).unwrap();
        let cd = raw_blob(&root, &c);
        let md = raw_blob(&root, &m);
        let good_manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": c.len()},
            "layers": [],
        });
        let gm = serde_json::to_vec(&good_manifest).unwrap();
        let gd = raw_blob(&root, &gm);
        let idx = serde_json::json!({
            "schemaVersion": 2,
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": m.len(),
                 "annotations": {"org.opencontainers.image.ref.name": "x:latest"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": gd, "size": gm.len(),
                 "annotations": {"org.opencontainers.image.ref.name": "y:latest"}},
                {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": md, "size": m.len()},
            ],
        });
        fs::write(root.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
        exercise(&store);
        let _ = store.resolve("y");
    }
}
