//! Helpers of the image store tests: running ufsd on a store, asserting one-line
//! refusals, snapshots of a store's tree, and a fixture of two images built through the
//! library API (gzip layers made with the tar crate).

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use oci_spec::image::{
    Descriptor, Digest, HistoryBuilder, ImageConfiguration, ImageConfigurationBuilder, MediaType,
};
use sha2::{Digest as _, Sha256};
use ufsd::image::reference::Reference;
use ufsd::image::rfc3339;
use ufsd::image::store::{ImageId, Store};

// ---------------------------------------------------------------------------------------

pub fn ufsd(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ufsd"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .expect("running ufsd")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn ok(o: Output) -> String {
    assert!(o.status.success(), "ufsd failed: {}", stderr(&o));
    stdout(&o)
}

/// Asserts one `ufsd:` line on stderr, mentioning each of `words`, and a non-zero exit.
pub fn refused(o: &Output, words: &[&str]) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected a failure; stdout: {}",
        stdout(o)
    );
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("ufsd: "),
        "expected one 'ufsd: ' line on stderr, got:\n{err}"
    );
    for w in words {
        assert!(
            lines[0].contains(w),
            "the error does not mention {w:?}: {}",
            lines[0]
        );
    }
}

/// Every path under the store with a hash of its content (directories as "dir").
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                out.insert(rel, "dir".into());
                walk(&p, root, out);
            } else {
                out.insert(rel, hex::encode(Sha256::digest(fs::read(&p).unwrap())));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

pub fn sha256(bytes: &[u8]) -> Digest {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
        .parse()
        .unwrap()
}

pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Stores a gzip layer holding `files`; returns its blob descriptor and diff_id.
pub fn layer(store: &Store, files: &[(&str, &[u8])]) -> (Descriptor, Digest) {
    let tar = tar_of(files);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    let blob = store
        .put_blob_bytes(&gz.finish().unwrap(), MediaType::ImageLayerGzip)
        .unwrap();
    (blob, sha256(&tar))
}

/// A config created `age` seconds ago with one history entry per `created_by`.
pub fn config(age: i64, created_by: &[&str]) -> ImageConfiguration {
    let when = rfc3339::format(rfc3339::now() - age);
    let history: Vec<_> = created_by
        .iter()
        .map(|c| {
            HistoryBuilder::default()
                .created(when.clone())
                .created_by(c.to_string())
                .comment("test")
                .build()
                .unwrap()
        })
        .collect();
    ImageConfigurationBuilder::default()
        .created(when)
        .history(history)
        .build()
        .unwrap()
}

pub fn add(
    store: &Store,
    cfg: ImageConfiguration,
    layers: Vec<(Descriptor, Digest)>,
    tag: &str,
) -> ImageId {
    let t = Reference::parse_tag_target(tag).unwrap();
    store.add_image(cfg, layers, Some(&t)).unwrap()
}

/// A store with `base` (one layer, 3 minutes old) and `app` (base's layer plus one).
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub store: Store,
    pub base: ImageId,
    pub app: ImageId,
    pub base_layer: (Descriptor, Digest),
    pub app_layer: (Descriptor, Digest),
}

pub fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = Store::open(&root).unwrap();
    let base_layer = layer(
        &store,
        &[("etc/os-release", b"NAME=test\n"), ("bin/sh", b"#!\n")],
    );
    let app_layer = layer(&store, &[("app/run", b"echo hi\n")]);
    let base = add(
        &store,
        config(180, &["/bin/sh -c #(nop) ADD rootfs /"]),
        vec![base_layer.clone()],
        "base",
    );
    let long = "/bin/sh -c apt-get install -y a-package-with-a-really-long-name another-one";
    let app = add(
        &store,
        config(7200, &["/bin/sh -c #(nop) ADD rootfs /", long]),
        vec![base_layer.clone(), app_layer.clone()],
        "registry.example/ns/app:v1",
    );
    Fixture {
        dir,
        root,
        store,
        base,
        app,
        base_layer,
        app_layer,
    }
}
