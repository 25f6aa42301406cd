//! `ufsd commit` killed while it writes the layer blob of a live mount, and the daemon of
//! a mount or a container killed while it is being committed.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{
    self, Mounted, assert_same_snapshots, daemon_pid, mkdir, mount_overlay, mount_type_at, scratch,
    snapshot, stack, wait_process_gone,
};
use crate::kit::*;

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
        ok(&mut cmd).trim().to_string()
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

/// Runs `ufsd commit ARGS` and kills the daemon of `m` with SIGKILL once the commit is
/// writing its blob (failing unless the commit was still running then). The commit reads
/// the upper directory itself: it may finish (its id is returned) or fail with one line.
fn commit_killing_the_daemon(
    root: &Path,
    args: &[&std::ffi::OsStr],
    m: &Mounted,
) -> Option<String> {
    let pid = daemon_pid(&m.path).expect("daemon pid");
    let mut child = ufsd(root)
        .arg("commit")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !temp_file_grown(root, "blob", KILL_BYTES) {
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
    if out.status.success() {
        return Some(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("ufsd: ") && err.trim().lines().count() == 1,
        "{err}"
    );
    None
}

#[test]
fn kill_during_commit_of_a_live_mount_records_nothing_and_the_mount_resumes() {
    let mut live = live_mount();
    let dir = scratch();
    let root = dir.path().join("store");
    ok(ufsd(&root).arg("images"));
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
    let got = ok(&mut cmd).trim().to_string();
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
    let first = commit_killing_the_daemon(&root, &[m.path.as_os_str(), "crash:1".as_ref()], &m);
    let committed = first.is_some();
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
    if let Some(id) = first {
        assert_eq!(id, want, "the commit that outlived the daemon");
    }
    let found = check_and_repair(&root);
    live.remount_and_cross_check();
    let mut cmd = ufsd(&root);
    cmd.arg("commit").arg(live.mnt()).arg("crash:2");
    assert_eq!(ok(&mut cmd).trim(), want);
    assert!(check_and_repair(&root).is_empty());
    println!(
        "conformance: fault=kill-daemon-during-commit faults=1 commit_finished={committed} \
         leftovers_repaired={} lost=0",
        found.len()
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
    import_one_file(&root, dir.path(), "base-file", "base:1");
    let mnt = mkdir(dir.path(), "mnt");
    let name = ok(ufsd(&root).args(["mount", "base:1"]).arg(&mnt))
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

    let first = commit_killing_the_daemon(&root, &[name.as_ref(), "crash:1".as_ref()], &m);
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
    ok(ufsd(&root).args(["mount", "--container", &name]).arg(&mnt));
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
    let id = ok(ufsd(&root).args(["commit", &name, "crash:2"]))
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
