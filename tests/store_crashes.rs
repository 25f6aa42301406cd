//! Crashes of the image store's writers: SIGKILL of `ufsd import` (while it extracts the
//! tarball, and while it writes the layer blob), of `ufsd load` (while it unpacks the
//! archive, and while it copies blobs into the store), of `ufsd mount IMAGE MNT` while it
//! extracts the image's layers, of `ufsd commit` of a live mount while it writes the layer
//! blob, and of the daemon of the mount being committed.
//!
//! Each kill is made to land mid-way: the command is killed as soon as its temp file or
//! tree in the store's `tmp/` has grown past a threshold, and the test fails unless the
//! command was still running then (it must die of the SIGKILL, not finish). After each
//! kill: index.json is what it was (no image recorded half-done), no extracted layer is
//! half there, `ufsd check` finds the store healthy and lists leftovers, `--repair` removes
//! them and check is then clean; the upper layer still mounts with kernel overlayfs and
//! ufsd (same tree, fsync'ed data there); the command run again succeeds and gives the same
//! image id as an uninterrupted run into a fresh store (`SOURCE_DATE_EPOCH` makes ids
//! reproducible). Each test prints one `conformance:` line for scripts/conformance-report.
//!
//! Needs root (mounts, kernel overlayfs); CI runs as root.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{
    Mounted, assert_same_snapshots, daemon_pid, mkdir, mount_overlay, mount_type_at, scratch,
    snapshot, stack, ufsd_bin, wait_process_gone,
};

/// Fixed file times and created dates: the same input gives the same image id.
const EPOCH: &str = "1000000000";

/// Files of random data in the big inputs, and the size of each: 64 MiB in all, enough
/// for the operation to run well past the kill point (a few MiB in).
const FILES: usize = 32;
const FILE_SIZE: usize = 2 << 20;

/// The kill point: a temp file of the store holding this much, or a temp tree this many
/// entries.
const KILL_BYTES: u64 = 1 << 20;
const KILL_ENTRIES: usize = 3;

fn ufsd(root: &Path) -> Command {
    let mut c = Command::new(ufsd_bin());
    c.arg("--root").arg(root).env("SOURCE_DATE_EPOCH", EPOCH);
    c
}

fn ok(mut cmd: Command) -> String {
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
fn random_data(seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; FILE_SIZE];
    rng.fill(&mut v);
    v
}

/// Writes the big tree (plus a small directory and a symlink) under `dir`.
fn write_tree(dir: &Path, seed: u64) {
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::write(dir.join("etc/os-release"), "NAME=crash\n").unwrap();
    std::os::unix::fs::symlink("etc/os-release", dir.join("os-release")).unwrap();
    for i in 0..FILES {
        fs::write(dir.join(format!("f{i:03}")), random_data(seed + i as u64)).unwrap();
    }
}

/// A plain tar of the big tree, as `ufsd import` takes it.
fn write_tar(path: &Path, seed: u64) {
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
fn temps(root: &Path, prefix: &str) -> Vec<PathBuf> {
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
fn temp_file_grown(root: &Path, prefix: &str, bytes: u64) -> bool {
    temps(root, prefix)
        .iter()
        .any(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() >= bytes))
}

/// A temp tree `prefix-*` whose directory `sub` holds at least `n` entries.
fn temp_tree_grown(root: &Path, prefix: &str, sub: &str, n: usize) -> bool {
    temps(root, prefix)
        .iter()
        .any(|p| fs::read_dir(p.join(sub)).is_ok_and(|d| d.count() >= n))
}

/// Runs `cmd` and kills it with SIGKILL as soon as `landed()` holds. Fails unless the
/// command was still running then: the kill must land mid-way, not after the end.
fn kill_when(mut cmd: Command, what: &str, mut landed: impl FnMut() -> bool) {
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

fn check_json(root: &Path, repair: bool) -> serde_json::Value {
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
fn leftovers(v: &serde_json::Value) -> Vec<String> {
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
fn check_and_repair(root: &Path) -> Vec<String> {
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

fn index(root: &Path) -> Vec<u8> {
    fs::read(root.join("index.json")).unwrap()
}

fn layers(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(root.join("layers"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn image_id(root: &Path, name: &str) -> String {
    let store = ufsd::image::store::Store::open(root).unwrap();
    store.resolve(name).unwrap().id.to_string()
}

/// The asserts after every kill: index.json and `layers/` as before, and `ufsd check`
/// healthy with leftovers that `--repair` removes. Returns the leftovers found.
fn after_kill(root: &Path, index_before: &[u8], layers_before: &[String], what: &str) -> usize {
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
fn mount_image_both_ways(root: &Path, image: &str, dir: &Path) -> String {
    let mnt = mkdir(dir, &format!("c-{}", fastrand::u32(..)));
    let mut cmd = ufsd(root);
    cmd.args(["mount", image]).arg(&mnt);
    let name = ok(cmd).trim().to_string();
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
fn container_cross_check(root: &Path, name: &str, ours: &common::Snapshot, dir: &Path) {
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

#[test]
fn kill_during_import_records_nothing_and_the_rerun_gives_the_same_id() {
    let dir = scratch();
    let input = dir.path().join("input.tar");
    write_tar(&input, 1);
    let reference = dir.path().join("reference");
    let mut cmd = ufsd(&reference);
    cmd.arg("import").arg(&input).arg("crash:1");
    let want = ok(cmd).trim().to_string();

    let root = dir.path().join("store");
    ok({
        let mut c = ufsd(&root);
        c.arg("images");
        c
    });
    let (index_before, layers_before) = (index(&root), layers(&root));
    let mut found = 0;
    // While the tarball is extracted into scratch space, then while the blob is written.
    for (phase, landed) in [
        (
            "import killed while extracting",
            Box::new(|r: &Path| temp_tree_grown(r, "import", "", KILL_ENTRIES))
                as Box<dyn Fn(&Path) -> bool>,
        ),
        (
            "import killed while writing the blob",
            Box::new(|r: &Path| temp_file_grown(r, "blob", KILL_BYTES)),
        ),
    ] {
        let mut cmd = ufsd(&root);
        cmd.arg("import").arg(&input).arg("crash:1");
        kill_when(cmd, phase, || landed(&root));
        found += after_kill(&root, &index_before, &layers_before, phase);
    }
    let mut cmd = ufsd(&root);
    cmd.arg("import").arg(&input).arg("crash:1");
    let got = ok(cmd).trim().to_string();
    assert_eq!(got, want, "the import after the crashes gave another id");
    assert!(check_and_repair(&root).is_empty());
    mount_image_both_ways(&root, "crash:1", dir.path());
    println!("conformance: fault=kill-during-import faults=2 leftovers_repaired={found} lost=0");
}

#[test]
fn kill_during_load_records_nothing_and_the_rerun_keeps_the_ids() {
    let dir = scratch();
    let source = dir.path().join("source");
    let input = dir.path().join("input.tar");
    write_tar(&input, 100);
    ok({
        let mut c = ufsd(&source);
        c.arg("import").arg(&input).arg("crash:1");
        c
    });
    let want = image_id(&source, "crash:1");
    let saved = dir.path().join("saved.tar");
    ok({
        let mut c = ufsd(&source);
        c.args(["save", "crash:1", "-o"]).arg(&saved);
        c
    });

    let root = dir.path().join("store");
    ok({
        let mut c = ufsd(&root);
        c.arg("images");
        c
    });
    let (index_before, layers_before) = (index(&root), layers(&root));
    let mut found = 0;
    for (phase, landed) in [
        (
            "load killed while unpacking the archive",
            Box::new(|r: &Path| {
                temps(r, "load").iter().any(|t| {
                    fs::read_dir(t.join("blobs/sha256")).is_ok_and(|d| {
                        d.flatten()
                            .any(|e| e.metadata().is_ok_and(|m| m.len() >= KILL_BYTES))
                    })
                })
            }) as Box<dyn Fn(&Path) -> bool>,
        ),
        (
            "load killed while copying blobs into the store",
            Box::new(|r: &Path| temp_file_grown(r, "blob", KILL_BYTES)),
        ),
    ] {
        let mut cmd = ufsd(&root);
        cmd.arg("load").arg(&saved);
        kill_when(cmd, phase, || landed(&root));
        found += after_kill(&root, &index_before, &layers_before, phase);
    }
    let out = ok({
        let mut c = ufsd(&root);
        c.arg("load").arg(&saved);
        c
    });
    assert!(out.contains("crash:1"), "{out}");
    assert_eq!(image_id(&root, "crash:1"), want);
    assert!(check_and_repair(&root).is_empty());
    mount_image_both_ways(&root, "crash:1", dir.path());
    println!("conformance: fault=kill-during-load faults=2 leftovers_repaired={found} lost=0");
}

#[test]
fn kill_during_layer_extraction_of_a_container_mount_leaves_no_half_layer() {
    use ufsd::image::commit::{CommitOptions, commit};
    use ufsd::image::layer::LayerOptions;
    use ufsd::image::reference::Reference;

    let dir = scratch();
    let root = dir.path().join("store");
    let (base_dir, big_dir) = (mkdir(dir.path(), "base"), mkdir(dir.path(), "big"));
    fs::create_dir(base_dir.join("bin")).unwrap();
    fs::write(base_dir.join("bin/sh"), "#!base\n").unwrap();
    write_tree(&big_dir, 200);
    // Two layers, built with the library, so that nothing is extracted yet.
    let store = ufsd::image::store::Store::open(&root).unwrap();
    let opts = |tag: &str| CommitOptions {
        tag: Some(Reference::parse_tag_target(tag).unwrap()),
        layer: LayerOptions {
            source_date_epoch: Some(EPOCH.parse().unwrap()),
        },
        ..Default::default()
    };
    commit(&store, &base_dir, &[], None, &opts("base:1")).unwrap();
    let base = store.resolve("base:1").unwrap();
    commit(
        &store,
        &big_dir,
        std::slice::from_ref(&base_dir),
        Some(&base),
        &opts("app:1"),
    )
    .unwrap();
    let app = store.resolve("app:1").unwrap();
    let [base_layer, big_layer] = [0, 1].map(|i| {
        store
            .layer_dir(&app.layers[i].diff_id)
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned()
    });
    assert!(layers(&root).is_empty());
    let index_before = index(&root);

    let mnt = mkdir(dir.path(), "mnt");
    let mut cmd = ufsd(&root);
    cmd.args(["mount", "app:1"]).arg(&mnt);
    let phase = "mount IMAGE killed while extracting layers";
    kill_when(cmd, phase, || {
        temp_tree_grown(&root, "layer", "", KILL_ENTRIES + 2)
    });
    assert_eq!(mount_type_at(&mnt), None, "{phase}: something is mounted");
    // The bottom layer was whole before the top one started: it stays; the top one is not
    // in layers/ at all.
    let found = after_kill(
        &root,
        &index_before,
        std::slice::from_ref(&base_layer),
        phase,
    );
    assert!(!layers(&root).contains(&big_layer));
    // The container was recorded before extraction (so that no rmi can take its image
    // away): it is there, never mounted, and mounts now.
    let containers = ufsd::container::list(&store).unwrap();
    assert_eq!(containers.len(), 1, "{containers:?}");
    let name = containers[0].name().to_string();
    ok({
        let mut c = ufsd(&root);
        c.args(["mount", "--container", &name]).arg(&mnt);
        c
    });
    let m = Mounted {
        path: fs::canonicalize(&mnt).unwrap(),
        kind: common::MountKind::Ufsd,
    };
    assert_eq!(layers(&root), {
        let mut v = vec![base_layer, big_layer];
        v.sort();
        v
    });
    assert_eq!(fs::read(m.path.join("f007")).unwrap(), random_data(207));
    assert_eq!(
        fs::read_to_string(m.path.join("bin/sh")).unwrap(),
        "#!base\n"
    );
    fs::write(m.path.join("after"), "written after the crash\n").unwrap();
    let ours = snapshot(&m.path);
    drop(m);
    container_cross_check(&root, &name, &ours, dir.path());
    // Extracted again from their blobs, both layers match (check compares them).
    let v = check_json(&root, false);
    assert_eq!(v["layers"]["verified"], 2, "{v:#}");
    assert!(leftovers(&v).is_empty(), "{v:#}");
    // A second container of the image shares the layers.
    mount_image_both_ways(&root, "app:1", dir.path());
    println!(
        "conformance: fault=kill-during-layer-extraction faults=1 leftovers_repaired={found} lost=0"
    );
}

/// A ufsd mount whose upper holds the big tree (written through the mount) and an
/// fsync'ed file; the lower has a file that the upper deletes and one it changes.
struct LiveMount {
    stack: common::Stack,
    mount: Option<Mounted>,
    durable: Vec<u8>,
}

fn live_mount() -> LiveMount {
    let stack = stack();
    fs::write(stack.lower.join("deleted"), "lower\n").unwrap();
    fs::write(stack.lower.join("changed"), "lower\n").unwrap();
    fs::write(stack.lower.join("kept"), "lower\n").unwrap();
    let m = stack.mount(&[]);
    write_tree(&m.path.join("tree"), 300);
    fs::remove_file(m.path.join("deleted")).unwrap();
    fs::write(m.path.join("changed"), "upper\n").unwrap();
    let durable = random_data(400);
    let mut f = fs::File::create(m.path.join("durable")).unwrap();
    f.write_all(&durable).unwrap();
    f.sync_all().unwrap();
    LiveMount {
        stack,
        mount: Some(m),
        durable,
    }
}

impl LiveMount {
    fn mnt(&self) -> PathBuf {
        self.mount.as_ref().unwrap().path.clone()
    }

    /// The id of the upper layer committed, uninterrupted, into a fresh store.
    fn reference_id(&self, dir: &Path) -> String {
        let reference = dir.join(format!("reference-{}", fastrand::u32(..)));
        let mut cmd = ufsd(&reference);
        cmd.arg("commit")
            .arg("--upper")
            .arg(&self.stack.upper)
            .arg("--lower")
            .arg(&self.stack.lower)
            .arg("ref:1");
        ok(cmd).trim().to_string()
    }

    /// Unmounts (the mount may be dead), remounts with ufsd and requires the fsync'ed file
    /// and the same tree as kernel overlayfs on the same upper.
    fn remount_and_cross_check(&mut self) {
        if let Some(m) = self.mount.take() {
            m.unmount().unwrap();
        }
        let s = &self.stack;
        let m = s.mount(&[]);
        assert_eq!(fs::read(m.path.join("durable")).unwrap(), self.durable);
        assert_eq!(
            fs::read(m.path.join("tree/f005")).unwrap(),
            random_data(305)
        );
        assert!(!m.path.join("deleted").exists());
        let ours = snapshot(&m.path);
        m.unmount().unwrap();
        let kmnt = mkdir(&s.root, &format!("kernel-{}", fastrand::u32(..)));
        let k = mount_overlay(&[&s.lower], Some((&s.upper, &s.work)), &kmnt);
        assert_same_snapshots(&ours, &snapshot(&k.path), "ufsd", "kernel overlayfs");
        drop(k);
        self.mount = Some(s.mount(&[]));
    }
}

/// Runs `f` in a thread; fails if it does not return within `secs` (a mount left paused).
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what} did not return within {secs} s"))
}

#[test]
fn kill_during_commit_of_a_live_mount_records_nothing_and_the_mount_resumes() {
    let mut live = live_mount();
    let dir = scratch();
    let root = dir.path().join("store");
    ok({
        let mut c = ufsd(&root);
        c.arg("images");
        c
    });
    let (index_before, layers_before) = (index(&root), layers(&root));
    let mnt = live.mnt();
    let mut cmd = ufsd(&root);
    cmd.arg("commit").arg(&mnt).arg("crash:1");
    let phase = "commit killed while writing the layer blob";
    kill_when(cmd, phase, || temp_file_grown(&root, "blob", KILL_BYTES));
    // The mount was paused for the commit: it resumes when the committer dies.
    let probe = mnt.join("probe");
    within(
        20,
        "a write to the mount after the committer died",
        move || {
            fs::write(&probe, "resumed\n").unwrap();
            fs::remove_file(&probe).unwrap();
        },
    );
    let found = after_kill(&root, &index_before, &layers_before, phase);
    live.remount_and_cross_check();

    let mut cmd = ufsd(&root);
    cmd.arg("commit").arg(live.mnt()).arg("crash:1");
    let got = ok(cmd).trim().to_string();
    assert_eq!(got, live.reference_id(dir.path()));
    assert!(check_and_repair(&root).is_empty());
    println!("conformance: fault=kill-during-commit faults=1 leftovers_repaired={found} lost=0");
}

#[test]
fn killing_the_daemon_of_a_mount_being_committed_loses_nothing() {
    let mut live = live_mount();
    let dir = scratch();
    let root = dir.path().join("store");
    let m = live.mount.take().unwrap();
    let pid = daemon_pid(&m.path).expect("daemon pid");
    let mut child = ufsd(&root)
        .arg("commit")
        .arg(&m.path)
        .arg("crash:1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !temp_file_grown(&root, "blob", KILL_BYTES) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the commit ended before the kill point"
        );
        assert!(Instant::now() < deadline, "no kill point in 120 s");
        std::thread::sleep(Duration::from_micros(500));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    assert!(wait_process_gone(pid, Duration::from_secs(10)));
    let mid_way = child.try_wait().unwrap().is_none();
    assert!(mid_way, "the commit ended before the daemon was killed");
    // The commit reads the upper directory itself: it may finish, or fail with one line.
    let out = within(120, "the commit after the daemon died", move || {
        child.wait_with_output().unwrap()
    });
    let err = String::from_utf8_lossy(&out.stderr);
    let committed = out.status.success();
    if !committed {
        assert!(
            err.starts_with("ufsd: ") && err.trim().lines().count() == 1,
            "{err}"
        );
    }
    // The dead mount: unmount it (fusermount3, else lazily).
    let st = Command::new("fusermount3")
        .arg("-u")
        .arg(&m.path)
        .status()
        .unwrap();
    if !st.success() {
        nix::mount::umount2(&m.path, nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
    assert_eq!(mount_type_at(&m.path), None);
    m.unmount().unwrap();
    let want = live.reference_id(dir.path());
    if committed {
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert_eq!(id, want, "the commit that outlived the daemon");
    }
    let found = check_and_repair(&root);
    live.remount_and_cross_check();
    let mut cmd = ufsd(&root);
    cmd.arg("commit").arg(live.mnt()).arg("crash:2");
    assert_eq!(ok(cmd).trim(), want);
    assert!(check_and_repair(&root).is_empty());
    println!(
        "conformance: fault=kill-daemon-during-commit faults=1 commit_finished={committed} \
         leftovers_repaired={} lost=0",
        found.len()
    );
}

/// Kills `ufsd mount IMAGE MNT` (its layers already extracted) as soon as the container's
/// directory appears, many times over: every container recorded must have its upper and
/// work directories (a record without them would be a container that can never mount and
/// that check calls healthy); what a kill leaves is at most a directory without a record,
/// which check lists and `--repair` removes.
#[test]
fn kill_while_a_container_is_created_leaves_a_whole_container_or_none() {
    let dir = scratch();
    let root = dir.path().join("store");
    let src = mkdir(dir.path(), "src");
    fs::write(src.join("hello"), "hello\n").unwrap();
    let input = dir.path().join("small.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&src)
        .arg("-cf")
        .arg(&input)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    ok({
        let mut c = ufsd(&root);
        c.arg("import").arg(&input).arg("small:1");
        c
    });
    // Extract the layers once, so that creating the container is what the kill hits.
    mount_image_both_ways(&root, "small:1", dir.path());
    let containers = root.join("containers");
    let mut landed = 0;
    let mut leftovers_found = 0;
    const ROUNDS: usize = 20;
    for round in 0..ROUNDS {
        let known: Vec<std::ffi::OsString> = fs::read_dir(&containers)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        let mnt = mkdir(dir.path(), &format!("round-{round}"));
        let mut child = ufsd(&root)
            .args(["mount", "small:1"])
            .arg(&mnt)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let new_dir = || {
            fs::read_dir(&containers)
                .unwrap()
                .flatten()
                .any(|e| !known.contains(&e.file_name()))
        };
        while !new_dir() && child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "no container directory in 30 s");
            std::hint::spin_loop();
        }
        let _ = child.kill();
        let st = child.wait().unwrap();
        if st.signal() == Some(libc::SIGKILL) {
            landed += 1;
        }
        // A kill after the fork leaves a daemon that mounts by itself: unmount it.
        std::thread::sleep(Duration::from_millis(100));
        if mount_type_at(&mnt).is_some() {
            Mounted {
                path: fs::canonicalize(&mnt).unwrap(),
                kind: common::MountKind::Ufsd,
            }
            .unmount()
            .unwrap();
        }
        for e in fs::read_dir(&containers).unwrap().flatten() {
            let p = e.path();
            if p.join("container.json").exists() {
                assert!(
                    p.join("upper").is_dir() && p.join("work").is_dir(),
                    "round {round}: container {} is recorded without its upper and work \
                     directories: {:?}",
                    p.display(),
                    fs::read_dir(&p)
                        .unwrap()
                        .flatten()
                        .map(|e| e.file_name())
                        .collect::<Vec<_>>()
                );
            }
        }
        let found = check_and_repair(&root);
        println!("round {round}: {found:?}");
        leftovers_found += found.len();
        // Every recorded container mounts.
        for c in ufsd::container::list(&ufsd::image::store::Store::open(&root).unwrap()).unwrap() {
            if c.is_mounted() {
                continue;
            }
            let m = mkdir(dir.path(), &format!("again-{}", fastrand::u32(..)));
            ok({
                let mut cmd = ufsd(&root);
                cmd.args(["mount", "--container", c.name()]).arg(&m);
                cmd
            });
            let g = Mounted {
                path: fs::canonicalize(&m).unwrap(),
                kind: common::MountKind::Ufsd,
            };
            assert_eq!(fs::read_to_string(g.path.join("hello")).unwrap(), "hello\n");
            g.unmount().unwrap();
        }
    }
    assert!(landed > 0, "no kill landed while ufsd mount ran");
    println!(
        "conformance: fault=kill-during-container-create faults={landed} \
         leftovers_repaired={leftovers_found} lost=0"
    );
}

/// A container's daemon killed while the container is committed: the commit finishes (it
/// reads the upper directory itself) or fails with one line; the dead mount is refused as
/// a mount point with a line that says how to clear it; after `ufsd umount` the container
/// mounts again with its fsync'ed data, kernel overlayfs agrees, and committing it again
/// gives the id the interrupted commit gave.
#[test]
fn killing_a_container_daemon_during_its_commit_loses_nothing() {
    let dir = scratch();
    let root = dir.path().join("store");
    let src = mkdir(dir.path(), "src");
    fs::write(src.join("base-file"), "base\n").unwrap();
    let input = dir.path().join("base.tar");
    assert!(
        Command::new("tar")
            .arg("-C")
            .arg(&src)
            .arg("-cf")
            .arg(&input)
            .arg(".")
            .status()
            .unwrap()
            .success()
    );
    ok({
        let mut c = ufsd(&root);
        c.arg("import").arg(&input).arg("base:1");
        c
    });
    let mnt = mkdir(dir.path(), "mnt");
    let name = ok({
        let mut c = ufsd(&root);
        c.args(["mount", "base:1"]).arg(&mnt);
        c
    })
    .trim()
    .to_string();
    let m = Mounted {
        path: fs::canonicalize(&mnt).unwrap(),
        kind: common::MountKind::Ufsd,
    };
    write_tree(&m.path.join("tree"), 500);
    fs::remove_file(m.path.join("base-file")).unwrap();
    let durable = random_data(600);
    let mut f = fs::File::create(m.path.join("durable")).unwrap();
    f.write_all(&durable).unwrap();
    f.sync_all().unwrap();
    drop(f);

    let pid = daemon_pid(&m.path).expect("daemon pid");
    let mut child = ufsd(&root)
        .args(["commit", &name, "crash:1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !temp_file_grown(&root, "blob", KILL_BYTES) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the commit ended before the kill point"
        );
        assert!(Instant::now() < deadline, "no kill point in 120 s");
        std::thread::sleep(Duration::from_micros(500));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    assert!(wait_process_gone(pid, Duration::from_secs(10)));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the commit ended before the daemon was killed"
    );
    let out = within(120, "the commit after the daemon died", move || {
        child.wait_with_output().unwrap()
    });
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let first = out
        .status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string());
    if first.is_none() {
        assert!(
            err.starts_with("ufsd: ") && err.trim().lines().count() == 1,
            "{err}"
        );
    }
    let found = check_and_repair(&root);

    // The dead mount is in the way, and the refusal says what to do.
    let again = ufsd(&root)
        .args(["mount", "--container", &name])
        .arg(&m.path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success());
    assert!(
        err.trim().lines().count() == 1 && err.contains("ufsd umount"),
        "{err}"
    );
    m.unmount().unwrap();
    assert_eq!(mount_type_at(&mnt), None);
    ok({
        let mut c = ufsd(&root);
        c.args(["mount", "--container", &name]).arg(&mnt);
        c
    });
    let m = Mounted {
        path: fs::canonicalize(&mnt).unwrap(),
        kind: common::MountKind::Ufsd,
    };
    assert_eq!(fs::read(m.path.join("durable")).unwrap(), durable);
    assert_eq!(
        fs::read(m.path.join("tree/f003")).unwrap(),
        random_data(503)
    );
    assert!(!m.path.join("base-file").exists());
    let ours = snapshot(&m.path);
    let id = ok({
        let mut c = ufsd(&root);
        c.args(["commit", &name, "crash:2"]);
        c
    })
    .trim()
    .to_string();
    if let Some(first) = &first {
        assert_eq!(&id, first, "the commit that outlived the daemon");
    }
    drop(m);
    container_cross_check(&root, &name, &ours, dir.path());
    assert!(check_and_repair(&root).is_empty());
    println!(
        "conformance: fault=kill-container-daemon-during-commit faults=1 \
         commit_finished={} leftovers_repaired={} lost=0",
        first.is_some(),
        found.len()
    );
}
