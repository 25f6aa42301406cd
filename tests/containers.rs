//! Containers and commit: `ufsd mount IMAGE MNT`, diff and commit of a container, the
//! committed image mounting with the change; commit of a live mount under a continuous
//! writer (a consistent snapshot, the mount keeps working); the control socket (pause
//! holds writes, resumes when its holder dies, refuses other users); ps and rm; refusals
//! that leave the store unchanged; and the golden diff_id of a fixed upper layer.
//!
//! Images are built with the library (`image::commit::commit` of a fixture directory), so
//! these tests do not depend on `ufsd import`. Needs root and /dev/fuse, as CI has.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{MountKind, Mounted, mkdir, mount_type_at, scratch, ufsd_bin};
use ufsd::image::commit::{CommitOptions, commit};
use ufsd::image::layer::LayerOptions;
use ufsd::image::reference::Reference;
use ufsd::image::store::Store;

fn ufsd(root: &Path, args: &[&str]) -> Output {
    Command::new(ufsd_bin())
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .expect("running ufsd")
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "ufsd failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts a failure with one `ufsd:` line on stderr mentioning each of `words`.
fn refused(o: &Output, words: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected a failure");
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("ufsd: "),
        "expected one 'ufsd: ' line, got:\n{err}"
    );
    for w in words {
        assert!(lines[0].contains(w), "{w:?} not in: {}", lines[0]);
    }
}

/// Every path under `dir` with its content (files) or kind; `lock` files left out.
fn tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(d: &Path, root: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for e in fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                out.insert(rel, "dir".into());
                walk(&p, root, out);
            } else if m.is_file() {
                out.insert(rel, format!("{:?}", fs::read(&p).unwrap()));
            } else {
                out.insert(rel, format!("{:?}", m.file_type()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// A store at `dir/store` holding `base:latest`, one layer made from a small tree.
fn store_with_base(dir: &Path) -> PathBuf {
    let src = mkdir(dir, "base-src");
    mkdir(&src, "etc");
    fs::write(src.join("etc/hostname"), "base\n").unwrap();
    fs::write(src.join("a"), "a\n").unwrap();
    mkdir(&src, "data");
    fs::write(src.join("data/keep"), "keep\n").unwrap();
    let root = dir.join("store");
    let store = Store::open(&root).unwrap();
    let opts = CommitOptions {
        tag: Some(Reference::parse_tag_target("base:latest").unwrap()),
        ..Default::default()
    };
    commit(&store, &src, &[], None, &opts).unwrap();
    root
}

/// `ufsd mount IMAGE MNT`: the container's name and an unmounting guard.
fn mount_image(root: &Path, image: &str, mnt: &Path) -> (String, Mounted) {
    let out = ok(ufsd(root, &["mount", image, mnt.to_str().unwrap()]));
    let name = out.trim().to_string();
    assert_eq!(mount_type_at(mnt).as_deref(), Some("fuse.ufsd"));
    (
        name,
        Mounted {
            path: mnt.to_path_buf(),
            kind: MountKind::Ufsd,
        },
    )
}

fn ps_json(root: &Path) -> Vec<serde_json::Value> {
    serde_json::from_str(&ok(ufsd(root, &["ps", "--json"]))).unwrap()
}

#[test]
fn mount_change_diff_commit_and_mount_the_result() {
    let d = scratch();
    let root = store_with_base(d.path());
    let mnt = mkdir(d.path(), "mnt");
    let (name, guard) = mount_image(&root, "base:latest", &mnt);
    assert_eq!(
        fs::read_to_string(mnt.join("etc/hostname")).unwrap(),
        "base\n"
    );

    fs::write(mnt.join("HelloWorld"), "hi\n").unwrap();
    fs::write(mnt.join("etc/hostname"), "changed\n").unwrap();
    fs::remove_file(mnt.join("a")).unwrap();
    let want = "A /HelloWorld\nD /a\nC /etc\nC /etc/hostname\n";
    let sorted = |s: String| {
        let mut l: Vec<String> = s.lines().map(str::to_string).collect();
        l.sort();
        l
    };
    assert_eq!(
        sorted(ok(ufsd(&root, &["diff", &name]))),
        sorted(want.to_string())
    );
    assert_eq!(
        ok(ufsd(&root, &["diff", mnt.to_str().unwrap()])),
        ok(ufsd(&root, &["diff", &name]))
    );

    let id = ok(ufsd(
        &root,
        &[
            "commit",
            "-a",
            "Ann <ann@example.org>",
            "-m",
            "say hello",
            "-c",
            "ENV GREETING=hi",
            "-c",
            "CMD [\"cat\", \"/HelloWorld\"]",
            &name,
            "hello:v1",
        ],
    ));
    assert!(id.trim().starts_with("sha256:"), "{id}");
    let history = ok(ufsd(&root, &["history", "hello:v1"]));
    assert!(history.contains("say hello"), "{history}");
    assert_eq!(history.lines().count(), 3, "{history}");
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(ufsd(&root, &["inspect", "hello:v1"]))).unwrap();
    let config = &inspect[0]["Config"];
    assert_eq!(config["author"], "Ann <ann@example.org>");
    assert_eq!(
        config["config"]["Cmd"],
        serde_json::json!(["cat", "/HelloWorld"])
    );
    assert_eq!(config["config"]["Env"], serde_json::json!(["GREETING=hi"]));
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
    assert_eq!(config["history"][1]["comment"], "say hello");

    // The mount kept working after the commit.
    fs::write(mnt.join("after"), "x").unwrap();
    drop(guard);

    // The new image mounts with the change.
    let mnt2 = mkdir(d.path(), "mnt2");
    let (name2, guard2) = mount_image(&root, "hello:v1", &mnt2);
    assert_eq!(fs::read_to_string(mnt2.join("HelloWorld")).unwrap(), "hi\n");
    assert_eq!(
        fs::read_to_string(mnt2.join("etc/hostname")).unwrap(),
        "changed\n"
    );
    assert!(!mnt2.join("a").exists());
    assert!(!mnt2.join("after").exists());
    assert_eq!(
        fs::read_to_string(mnt2.join("data/keep")).unwrap(),
        "keep\n"
    );
    assert_eq!(ok(ufsd(&root, &["diff", &name2])), "");
    // Nothing changed: the commit adds a history entry and no layer.
    ok(ufsd(
        &root,
        &["commit", "-m", "nothing", &name2, "hello:v2"],
    ));
    let inspect: serde_json::Value =
        serde_json::from_str(&ok(ufsd(&root, &["inspect", "hello:v2"]))).unwrap();
    assert_eq!(
        inspect[0]["Config"]["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(inspect[0]["Config"]["history"][2]["empty_layer"], true);
    drop(guard2);

    // The first container mounts again (--container) with its changes.
    let (_, guard3) = {
        let out = ok(ufsd(
            &root,
            &["mount", "--container", &name, mnt.to_str().unwrap()],
        ));
        assert_eq!(out.trim(), name);
        (
            name.clone(),
            Mounted {
                path: mnt.clone(),
                kind: MountKind::Ufsd,
            },
        )
    };
    assert_eq!(fs::read_to_string(mnt.join("after")).unwrap(), "x");
    drop(guard3);
}

#[test]
fn ps_and_rm() {
    let d = scratch();
    let root = store_with_base(d.path());
    let mnt = mkdir(d.path(), "mnt");
    let (name, guard) = mount_image(&root, "base:latest", &mnt);
    let ps = ps_json(&root);
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0]["name"], name.as_str());
    assert_eq!(ps[0]["image"], "base:latest");
    assert_eq!(ps[0]["mounted"], true);
    assert_eq!(ps[0]["mountpoint"], mnt.to_str().unwrap());
    let table = ok(ufsd(&root, &["ps"]));
    assert!(table.starts_with("CONTAINER"), "{table}");
    assert!(
        table.contains(&name) && table.contains(" mounted"),
        "{table}"
    );

    // Refused while mounted, by name and by mount point; the container stays.
    refused(&ufsd(&root, &["rm", &name]), &["mounted", "rm -f"]);
    refused(&ufsd(&root, &["rm", mnt.to_str().unwrap()]), &["mounted"]);
    assert_eq!(ps_json(&root).len(), 1);
    // The image is in use.
    refused(&ufsd(&root, &["rmi", "base:latest"]), &[&name]);
    // Mounting it twice is refused.
    let other = mkdir(d.path(), "other");
    refused(
        &ufsd(
            &root,
            &["mount", "--container", &name, other.to_str().unwrap()],
        ),
        &["mounted already"],
    );

    // -f unmounts, then removes the record and the directories.
    assert_eq!(ok(ufsd(&root, &["rm", "-f", &name[..6]])).trim(), name);
    assert_eq!(mount_type_at(&mnt), None);
    assert!(ps_json(&root).is_empty());
    assert!(!root.join("containers").join(&name).exists());
    refused(&ufsd(&root, &["rm", &name]), &["no such container"]);
    drop(guard);

    // umount(8) returns before the daemon exits; rm -f right after it waits for the
    // daemon instead of failing on the mount that is gone.
    for _ in 0..3 {
        let (name, guard) = mount_image(&root, "base:latest", &mnt);
        let st = Command::new("umount").arg(&mnt).status().unwrap();
        assert!(st.success());
        assert_eq!(ok(ufsd(&root, &["rm", "-f", &name])).trim(), name);
        assert!(ps_json(&root).is_empty());
        drop(guard);
    }

    // Unmounted containers are listed and removed without -f.
    let (name, guard) = mount_image(&root, "base:latest", &mnt);
    ok(ufsd(&root, &["umount", mnt.to_str().unwrap()]));
    drop(guard);
    let ps = ps_json(&root);
    assert_eq!(ps[0]["mounted"], false);
    ok(ufsd(&root, &["rm", &name]));
    ok(ufsd(&root, &["rmi", "base:latest"]));

    // A failed container mount leaves no container behind.
    let root = store_with_base(&mkdir(d.path(), "again"));
    refused(
        &ufsd(&root, &["mount", "base:latest", "/nonexistent/mnt"]),
        &["/nonexistent/mnt"],
    );
    assert!(ps_json(&root).is_empty());
    refused(
        &ufsd(&root, &["mount", "nope:latest", mnt.to_str().unwrap()]),
        &["no such image"],
    );
    refused(
        &ufsd(
            &root,
            &[
                "mount",
                "-o",
                "upperdir=/x",
                "base:latest",
                mnt.to_str().unwrap(),
            ],
        ),
        &["upperdir=/x"],
    );
    // A layer directory given where an image goes gets a hint.
    let src = d.path().join("base-src");
    refused(
        &ufsd(
            &root,
            &["mount", src.to_str().unwrap(), mnt.to_str().unwrap()],
        ),
        &["not an image", "--lower"],
    );
    assert!(ps_json(&root).is_empty());
}

/// The writer's protocol: file `d/fNNNNN` holding N is created, then `d/last` is renamed
/// into place holding N. A snapshot taken at one instant has `last` = n with f0..=n all
/// present and correct, and at most f(n+1) beyond them.
fn check_snapshot(dir: &Path) -> u64 {
    let last: u64 = fs::read_to_string(dir.join("last"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut max = None;
    for e in fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if let Some(n) = name.strip_prefix('f') {
            let n: u64 = n.parse().unwrap();
            max = max.max(Some(n));
            let content = fs::read_to_string(dir.join(&name)).unwrap();
            assert!(
                content == n.to_string() || (n == last + 1 && content.is_empty()),
                "{name} holds {content:?}"
            );
        }
    }
    for n in 0..=last {
        assert!(
            dir.join(format!("f{n:05}")).exists(),
            "f{n:05} missing, last={last}"
        );
    }
    assert!(
        max.unwrap_or(0) <= last + 1,
        "snapshot mixes times: last={last} but f{:05} exists",
        max.unwrap_or(0)
    );
    last
}

#[test]
fn live_commit_and_diff_while_writing_are_consistent_snapshots() {
    let d = scratch();
    let root = store_with_base(d.path());
    let mnt = mkdir(d.path(), "mnt");
    let (name, guard) = mount_image(&root, "base:latest", &mnt);
    // Enough data that reading the upper layer takes a while.
    let bulk = mnt.join("bulk");
    fs::create_dir(&bulk).unwrap();
    for i in 0..200 {
        fs::write(bulk.join(format!("b{i:03}")), vec![b'x'; 64 * 1024]).unwrap();
    }
    let dir = mnt.join("d");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("last"), "0").unwrap();
    fs::write(dir.join("f00000"), "0").unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written, dir) = (stop.clone(), written.clone(), dir.clone());
        std::thread::spawn(move || {
            let mut n = 1u64;
            while !stop.load(Ordering::SeqCst) && n < 99_999 {
                fs::write(dir.join(format!("f{n:05}")), n.to_string()).unwrap();
                fs::write(dir.join("last.tmp"), n.to_string()).unwrap();
                fs::rename(dir.join("last.tmp"), dir.join("last")).unwrap();
                written.store(n, Ordering::SeqCst);
                n += 1;
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while written.load(Ordering::SeqCst) < 50 {
        assert!(Instant::now() < deadline, "the writer does not get going");
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = ufsd(&root, &["commit", mnt.to_str().unwrap(), "snap:1"]);
    let at_commit = written.load(Ordering::SeqCst);
    ok(out);
    // The mount keeps working: the writer goes on after the commit.
    let deadline = Instant::now() + Duration::from_secs(10);
    while written.load(Ordering::SeqCst) < at_commit + 50 {
        assert!(Instant::now() < deadline, "writes stalled after the commit");
        std::thread::sleep(Duration::from_millis(5));
    }
    // A live diff, paused too, lists the writer's files of one moment: f00000..=fN
    // without a gap (files are created in order), and the writer goes on afterwards.
    let listed = ok(ufsd(&root, &["diff", &name]));
    let mut seen: Vec<u64> = listed
        .lines()
        .filter_map(|l| l.strip_prefix("A /d/f"))
        .map(|n| n.parse().unwrap())
        .collect();
    seen.sort();
    assert!(seen.len() > 50, "{listed}");
    assert!(
        seen.iter().enumerate().all(|(i, n)| *n == i as u64),
        "the live diff has gaps: {seen:?}"
    );
    let at_diff = written.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    while written.load(Ordering::SeqCst) < at_diff + 50 {
        assert!(Instant::now() < deadline, "writes stalled after the diff");
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().expect("the writer failed");
    let status = ok(ufsd(&root, &["control", mnt.to_str().unwrap(), "status"]));
    assert!(status.contains("paused=no"), "{status}");
    assert_eq!(ps_json(&root)[0]["name"], name.as_str());
    drop(guard);

    let mnt2 = mkdir(d.path(), "mnt2");
    let (_, guard2) = mount_image(&root, "snap:1", &mnt2);
    let last = check_snapshot(&mnt2.join("d"));
    assert!(last >= 50, "last={last}");
    assert_eq!(fs::read_dir(mnt2.join("bulk")).unwrap().count(), 200);
    drop(guard2);
}

#[test]
fn pause_holds_writes_resumes_when_its_holder_dies_and_refuses_other_users() {
    let d = scratch();
    let root = store_with_base(d.path());
    let mnt = mkdir(d.path(), "mnt");
    let (_, guard) = mount_image(&root, "base:latest", &mnt);
    let m = mnt.to_str().unwrap();

    // Another user may not pause or even ask.
    for cmd in ["status", "pause"] {
        let out = Command::new(ufsd_bin())
            .args(["control", m, cmd])
            .uid(65534)
            .gid(65534)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        refused(&out, &["permission denied", "uid 65534"]);
    }

    let mut holder = Command::new(ufsd_bin())
        .args(["control", m, "pause"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("paused"), "{line}");
    let status = ok(ufsd(&root, &["control", m, "status"]));
    assert!(status.contains("paused=yes"), "{status}");

    // Reads go on; a write waits.
    assert_eq!(
        fs::read_to_string(mnt.join("etc/hostname")).unwrap(),
        "base\n"
    );
    let done = Arc::new(AtomicBool::new(false));
    let w = {
        let (done, p) = (done.clone(), mnt.join("made-while-paused"));
        std::thread::spawn(move || {
            fs::create_dir(p).unwrap();
            done.store(true, Ordering::SeqCst);
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok(ufsd(&root, &["control", m, "status"])).contains("waiting=1") {
        assert!(!done.load(Ordering::SeqCst), "a mkdir went through a pause");
        assert!(
            Instant::now() < deadline,
            "the mkdir never reached the daemon"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(!done.load(Ordering::SeqCst), "a mkdir went through a pause");

    // The holder dies without resuming: the daemon resumes by itself.
    holder.kill().unwrap();
    holder.wait().unwrap();
    w.join().unwrap();
    assert!(done.load(Ordering::SeqCst));
    assert!(mnt.join("made-while-paused").is_dir());
    assert!(ok(ufsd(&root, &["control", m, "status"])).contains("paused=no"));
    drop(guard);
}

#[test]
fn whiteout_names_and_bad_changes_leave_the_store_unchanged() {
    let d = scratch();
    let root = store_with_base(d.path());
    let before = tree(&root);
    let up = mkdir(d.path(), "up");
    fs::write(up.join("fine"), "ok").unwrap();
    fs::write(up.join(".wh.notes"), "real data").unwrap();
    mkdir(&up, "sub");
    fs::write(up.join("sub/.wh..wh.weird"), "more").unwrap();
    let out = ufsd(&root, &["commit", "--upper", up.to_str().unwrap(), "bad:1"]);
    refused(&out, &[".wh.notes", "sub/.wh..wh.weird", "2 entries"]);
    assert_eq!(tree(&root), before);

    // A bad change is refused before anything is written.
    fs::remove_file(up.join(".wh.notes")).unwrap();
    fs::remove_file(up.join("sub/.wh..wh.weird")).unwrap();
    let out = ufsd(
        &root,
        &[
            "commit",
            "-c",
            "RUN make",
            "--upper",
            up.to_str().unwrap(),
            "bad:1",
        ],
    );
    refused(&out, &["RUN", "not supported"]);
    let out = ufsd(
        &root,
        &["commit", "--upper", up.to_str().unwrap(), "Bad Name"],
    );
    refused(&out, &["Bad Name"]);
    assert_eq!(tree(&root), before);
    ok(ufsd(
        &root,
        &["commit", "--upper", up.to_str().unwrap(), "good:1"],
    ));
    assert_ne!(tree(&root), before);
}

/// Sets a path's mtime without following symlinks.
fn set_mtime(p: &Path, secs: i64) {
    let st = Command::new("touch")
        .args(["-h", "-d"])
        .arg(format!("@{secs}"))
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn the_same_upper_always_commits_to_the_same_diff_id() {
    let d = scratch();
    let build = |dir: &Path| {
        fs::create_dir(dir).unwrap();
        fs::create_dir(dir.join("etc")).unwrap();
        fs::write(dir.join("etc/conf"), "x=1\n").unwrap();
        fs::write(dir.join("bin"), vec![7u8; 10_000]).unwrap();
        std::os::unix::fs::symlink("etc/conf", dir.join("link")).unwrap();
        fs::hard_link(dir.join("bin"), dir.join("bin2")).unwrap();
        for (p, mode) in [
            ("", 0o755),
            ("etc", 0o750),
            ("etc/conf", 0o644),
            ("bin", 0o4755),
        ] {
            fs::set_permissions(dir.join(p), fs::Permissions::from_mode(mode)).unwrap();
        }
        for p in ["link", "etc/conf", "bin", "etc", ""] {
            set_mtime(&dir.join(p), 1_600_000_000);
        }
    };
    let store = Store::open(&d.path().join("store")).unwrap();
    let mut ids = Vec::new();
    for (i, epoch) in [(0, None), (1, None), (2, Some(1_700_000_000))] {
        let up = d.path().join(format!("up{i}"));
        build(&up);
        let opts = CommitOptions {
            layer: LayerOptions {
                source_date_epoch: epoch,
            },
            ..Default::default()
        };
        let c = commit(&store, &up, &[], None, &opts).unwrap();
        ids.push(c.layer.unwrap().1.to_string());
    }
    assert_eq!(ids[0], ids[1]);
    // SOURCE_DATE_EPOCH after every mtime changes nothing.
    assert_eq!(ids[0], ids[2]);
    assert_eq!(
        ids[0], "sha256:7c5d7ad000e80583ca959301c3411ca77c0ead19adbfcb5a947bd4ea0fddb176",
        "the layer format changed; if on purpose, update the golden digest and docs/layers.md"
    );
}
