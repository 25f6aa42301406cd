//! Crashes of the image store's writers: SIGKILL of `ufsd import` (while it extracts the
//! tarball, and while it writes the layer blob), of `ufsd load` (while it unpacks the
//! archive, and while it copies blobs into the store), of `ufsd mount IMAGE MNT` while it
//! extracts the image's layers or creates the container, of `ufsd commit` of a live mount
//! while it writes the layer blob, of the daemon of the mount being committed, and of
//! `ufsd rmi` while it deletes an extracted layer.
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

#[path = "store_crashes/commit.rs"]
mod commit;
mod common;
#[path = "store_crashes/kit.rs"]
mod kit;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Mounted, mkdir, mount_type_at, scratch, snapshot};
use kit::*;

#[test]
fn kill_during_import_records_nothing_and_the_rerun_gives_the_same_id() {
    let dir = scratch();
    let input = dir.path().join("input.tar");
    write_tar(&input, 1);
    let reference = dir.path().join("reference");
    let mut cmd = ufsd(&reference);
    cmd.arg("import").arg(&input).arg("crash:1");
    let want = ok(&mut cmd).trim().to_string();

    let root = dir.path().join("store");
    ok(ufsd(&root).arg("images"));
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
    let got = ok(&mut cmd).trim().to_string();
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
    ok(ufsd(&source).arg("import").arg(&input).arg("crash:1"));
    let want = image_id(&source, "crash:1");
    let saved = dir.path().join("saved.tar");
    ok(ufsd(&source).args(["save", "crash:1", "-o"]).arg(&saved));

    let root = dir.path().join("store");
    ok(ufsd(&root).arg("images"));
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
    let out = ok(ufsd(&root).arg("load").arg(&saved));
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
    ok(ufsd(&root).args(["mount", "--container", &name]).arg(&mnt));
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

/// Kills `ufsd mount IMAGE MNT` (its layers already extracted) as soon as the container's
/// directory appears, many times over: every container recorded must have its upper and
/// work directories (a record without them would be a container that can never mount and
/// that check calls healthy); what a kill leaves is at most a directory without a record,
/// which check lists and `--repair` removes.
#[test]
fn kill_while_a_container_is_created_leaves_a_whole_container_or_none() {
    let dir = scratch();
    let root = dir.path().join("store");
    import_one_file(&root, dir.path(), "hello", "small:1");
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
            ok(ufsd(&root).args(["mount", "--container", c.name()]).arg(&m));
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

/// Files in the layer that `rmi` is killed while deleting.
const FILES_OF_RMI: usize = 5000;

/// `ufsd rmi` killed while it deletes an extracted layer of 5,000 files (caught once the
/// layer has been moved out of `layers/` into `tmp/`): the image is gone from index.json,
/// no half-deleted tree is left in `layers/`, and check lists the rest for `--repair`.
#[test]
fn kill_during_rmi_leaves_no_half_deleted_layer() {
    let dir = scratch();
    let root = dir.path().join("store");
    let input = dir.path().join("many.tar");
    let mut b = tar::Builder::new(fs::File::create(&input).unwrap());
    for d in 0..FILES_OF_RMI / 1000 {
        for f in 0..1000 {
            let data = format!("{d}/{f}\n");
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            b.append_data(&mut h, format!("d{d:02}/f{f:04}"), data.as_bytes())
                .unwrap();
        }
    }
    b.into_inner().unwrap().sync_all().unwrap();
    let mut cmd = ufsd(&root);
    cmd.arg("import").arg(&input).arg("many:1");
    ok(&mut cmd);
    // Extract the layer.
    let store = ufsd::image::store::Store::open(&root).unwrap();
    let image = store.resolve("many:1").unwrap();
    store
        .ensure_image_layers(&image, |tar, dir| {
            ufsd::image::layer::extract_layer(tar, dir, &Default::default()).map(drop)
        })
        .unwrap();
    assert_eq!(layers(&root).len(), 1);

    let mut cmd = ufsd(&root);
    cmd.args(["rmi", "many:1"]);
    let phase = "rmi killed while deleting an extracted layer";
    kill_when(cmd, phase, || !temps(&root, "rm-layer").is_empty());
    let v = check_json(&root, false);
    assert_eq!(v["store"]["layers_present"], 0, "{v:#}");
    assert!(layers(&root).is_empty(), "a layer left in layers/");
    assert!(store.resolve("many:1").is_err(), "the image is still there");
    let found = check_and_repair(&root);
    assert!(
        found.iter().any(|l| l.contains("rm-layer")),
        "check did not list the half-deleted layer: {found:?}"
    );
    println!(
        "conformance: fault=kill-during-rmi faults=1 leftovers_repaired={} lost=0",
        found.len()
    );
}
