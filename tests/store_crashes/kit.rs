//! Helpers of the store crash tests: running ufsd on a store with `SOURCE_DATE_EPOCH`,
//! big reproducible inputs, temp files of the store's `tmp/` as kill points, killing a
//! command mid-way, and the checks made after every kill.

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    self, Mounted, assert_same_snapshots, mkdir, mount_overlay, snapshot, ufsd_bin,
};

/// Fixed file times and created dates: the same input gives the same image id.
pub const EPOCH: &str = "1000000000";

/// Files of random data in the big inputs, and the size of each: 64 MiB in all, enough
/// for the operation to run well past the kill point (a few MiB in).
pub const FILES: usize = 32;
pub const FILE_SIZE: usize = 2 << 20;

/// The kill point: a temp file of the store holding this much, or a temp tree this many
/// entries.
pub const KILL_BYTES: u64 = 1 << 20;
pub const KILL_ENTRIES: usize = 3;

pub fn ufsd(root: &Path) -> Command {
    let mut c = Command::new(ufsd_bin());
    c.arg("--root").arg(root).env("SOURCE_DATE_EPOCH", EPOCH);
    c
}

pub fn ok(cmd: &mut Command) -> String {
    let out: Output = cmd.output().expect("running ufsd");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The same pseudo-random content for a given `seed`, incompressible (gzip must work).
pub fn random_data(seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; FILE_SIZE];
    rng.fill(&mut v);
    v
}

/// Writes the big tree (plus a small directory and a symlink) under `dir`.
pub fn write_tree(dir: &Path, seed: u64) {
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::write(dir.join("etc/os-release"), "NAME=crash\n").unwrap();
    std::os::unix::fs::symlink("etc/os-release", dir.join("os-release")).unwrap();
    for i in 0..FILES {
        fs::write(dir.join(format!("f{i:03}")), random_data(seed + i as u64)).unwrap();
    }
}

/// A plain tar of the big tree, as `ufsd import` takes it.
pub fn write_tar(path: &Path, seed: u64) {
    let mut b = tar::Builder::new(fs::File::create(path).unwrap());
    let mut add = |name: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        match link {
            Some(l) => b.append_link(&mut h, name, l).unwrap(),
            None => b.append_data(&mut h, name, data).unwrap(),
        }
    };
    add("etc/", tar::EntryType::Directory, b"", None);
    add(
        "etc/os-release",
        tar::EntryType::Regular,
        b"NAME=crash\n",
        None,
    );
    add(
        "os-release",
        tar::EntryType::Symlink,
        b"",
        Some("etc/os-release"),
    );
    for i in 0..FILES {
        let name = format!("f{i:03}");
        add(
            &name,
            tar::EntryType::Regular,
            &random_data(seed + i as u64),
            None,
        );
    }
    b.into_inner().unwrap().sync_all().unwrap();
}

/// The entries of the store's `tmp/` whose names start with `prefix-`.
pub fn temps(root: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(root.join("tmp")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&format!("{prefix}-")))
        })
        .map(|e| e.path())
        .collect()
}

/// A temp file `prefix-*` holding at least `bytes`.
pub fn temp_file_grown(root: &Path, prefix: &str, bytes: u64) -> bool {
    temps(root, prefix)
        .iter()
        .any(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() >= bytes))
}

/// A temp tree `prefix-*` whose directory `sub` holds at least `n` entries.
pub fn temp_tree_grown(root: &Path, prefix: &str, sub: &str, n: usize) -> bool {
    temps(root, prefix)
        .iter()
        .any(|p| fs::read_dir(p.join(sub)).is_ok_and(|d| d.count() >= n))
}

/// Runs `cmd` and kills it with SIGKILL as soon as `landed()` holds. Fails unless the
/// command was still running then: the kill must land mid-way, not after the end.
pub fn kill_when(mut cmd: Command, what: &str, mut landed: impl FnMut() -> bool) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting ufsd");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !landed() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("{what}: the command ended ({st}) before the kill point");
        }
        assert!(Instant::now() < deadline, "{what}: no kill point in 120 s");
        std::thread::sleep(Duration::from_micros(500));
    }
    child.kill().unwrap();
    let st = child.wait().unwrap();
    assert_eq!(
        st.signal(),
        Some(libc::SIGKILL),
        "{what}: the command finished ({st}) before the kill landed"
    );
}

pub fn check_json(root: &Path, repair: bool) -> serde_json::Value {
    let mut cmd = ufsd(root);
    cmd.args(["check", "--json"]);
    if repair {
        cmd.arg("--repair");
    }
    let out = cmd.output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ufsd check --json: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        v["healthy"] == true && out.status.success(),
        "ufsd check{} finds the store damaged: {v:#}",
        if repair { " --repair" } else { "" }
    );
    v
}

/// The store's leftovers in a check report (runtime records of other mounts left out).
pub fn leftovers(v: &serde_json::Value) -> Vec<String> {
    [
        "leftovers",
        "orphan_containers",
        "unreferenced_blobs",
        "unreferenced_layers",
    ]
    .iter()
    .flat_map(|k| v["store"][k].as_array().cloned().unwrap_or_default())
    .map(|x| x.to_string())
    .collect()
}

/// `ufsd check` must find the store healthy; the leftovers it lists must be gone after
/// `--repair`, with the store still healthy. Returns the leftovers found.
pub fn check_and_repair(root: &Path) -> Vec<String> {
    let found = leftovers(&check_json(root, false));
    if !found.is_empty() {
        let after = check_json(root, true);
        assert_eq!(
            leftovers(&after),
            Vec::<String>::new(),
            "leftovers after --repair"
        );
        assert!(
            fs::read_dir(root.join("tmp")).unwrap().next().is_none(),
            "tmp/ not empty after --repair"
        );
    }
    found
}

pub fn index(root: &Path) -> Vec<u8> {
    fs::read(root.join("index.json")).unwrap()
}

pub fn layers(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(root.join("layers"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

pub fn image_id(root: &Path, name: &str) -> String {
    let store = ufsd::image::store::Store::open(root).unwrap();
    store.resolve(name).unwrap().id.to_string()
}

/// The asserts after every kill: index.json and `layers/` as before, and `ufsd check`
/// healthy with leftovers that `--repair` removes. Returns the leftovers found.
pub fn after_kill(root: &Path, index_before: &[u8], layers_before: &[String], what: &str) -> usize {
    assert_eq!(
        index(root),
        index_before,
        "{what}: index.json changed by a killed command"
    );
    assert_eq!(
        layers(root),
        layers_before,
        "{what}: layers/ changed by a killed command"
    );
    let found = check_and_repair(root);
    assert!(
        !found.is_empty(),
        "{what}: the kill left nothing for check to report (did it land mid-way?)"
    );
    println!("{what}: check listed {} leftovers: {found:?}", found.len());
    found.len()
}

/// Mounts `image` as a new container with ufsd and its layers with kernel overlayfs (over
/// the container's upper), and requires the same tree; returns the container's name.
pub fn mount_image_both_ways(root: &Path, image: &str, dir: &Path) -> String {
    let mnt = mkdir(dir, &format!("c-{}", fastrand::u32(..)));
    let mut cmd = ufsd(root);
    cmd.args(["mount", image]).arg(&mnt);
    let name = ok(&mut cmd).trim().to_string();
    let m = Mounted {
        path: fs::canonicalize(&mnt).unwrap(),
        kind: common::MountKind::Ufsd,
    };
    let ours = snapshot(&m.path);
    drop(m);
    container_cross_check(root, &name, &ours, dir);
    name
}

/// Kernel overlayfs over container `name`'s upper and its image's layers must show `ours`.
pub fn container_cross_check(root: &Path, name: &str, ours: &common::Snapshot, dir: &Path) {
    let store = ufsd::image::store::Store::open(root).unwrap();
    let c = ufsd::container::find(&store, name).unwrap();
    let image = store.resolve(&c.record.image).unwrap();
    let mut lowers: Vec<PathBuf> = image
        .layers
        .iter()
        .map(|l| store.layer_dir(&l.diff_id).unwrap())
        .collect();
    lowers.reverse();
    let lowers: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
    let kmnt = mkdir(dir, &format!("k-{}", fastrand::u32(..)));
    let k = mount_overlay(&lowers, Some((&c.upper(), &c.work())), &kmnt);
    assert_same_snapshots(ours, &snapshot(&k.path), "ufsd", "kernel overlayfs");
}

/// Runs `f` in a thread; fails if it does not return within `secs` (a mount left paused).
pub fn within<T: Send + 'static>(
    secs: u64,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what} did not return within {secs} s"))
}

/// Imports, as `tag`, a tarball (made by GNU tar under `dir`) holding one file `name`
/// whose content is `name` and a newline.
pub fn import_one_file(root: &Path, dir: &Path, name: &str, tag: &str) {
    let src = mkdir(dir, &format!("src-{}", fastrand::u32(..)));
    fs::write(src.join(name), format!("{name}\n")).unwrap();
    let input = src.with_extension("tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&src)
        .arg("-cf")
        .arg(&input)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let mut cmd = ufsd(root);
    cmd.arg("import").arg(&input).arg(tag);
    ok(&mut cmd);
}
