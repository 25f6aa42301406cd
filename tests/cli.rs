//! The ufsd command line, run as a real binary: refusals of bad requests (one `ufsd:` line,
//! non-zero exit, nothing mounted), help texts, unmounting in its three ways with the
//! daemon gone afterwards, the `mount -t fuse.ufsd` helper path, and the permissions of a
//! root mount.
//!
//! These tests mount: they need root, /dev/fuse and the fuse3 package (fusermount3,
//! mount.fuse3), as CI has.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

use common::*;

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts that a command failed with exactly one `ufsd:` line on stderr containing every
/// one of `words`, and that nothing is mounted under `dir`.
fn assert_refused(out: &Output, words: &[&str], dir: &Path) {
    let err = stderr_of(out);
    assert!(
        !out.status.success(),
        "expected a failure, got success; stderr: {err}"
    );
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("ufsd: "),
        "expected exactly one line starting with 'ufsd: ' on stderr, got:\n{err}"
    );
    for w in words {
        assert!(
            lines[0].contains(w),
            "the error line does not mention {w:?}: {}",
            lines[0]
        );
    }
    let left = mounts_under(dir);
    assert!(
        left.is_empty(),
        "a failed mount left mounts behind: {left:?}"
    );
}

/// A scratch directory with two small lower layers, an upper, a work dir and a mount point.
struct Setup {
    dir: tempfile::TempDir,
    lower1: PathBuf,
    lower2: PathBuf,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let dir = scratch();
        let l1 = LayerBuilder::new(&dir.path().join("lower1"), WhiteoutFormat::Overlay);
        l1.file(b"top", b"from lower1\n", 0o644)
            .file(b"both", b"lower1 wins\n", 0o644);
        let l2 = LayerBuilder::new(&dir.path().join("lower2"), WhiteoutFormat::Overlay);
        l2.file(b"bottom", b"from lower2\n", 0o644)
            .file(b"both", b"lower2 loses\n", 0o644);
        let upper = mkdir(dir.path(), "upper");
        fs::write(upper.join("up"), b"from upper\n").unwrap();
        Setup {
            lower1: l1.root,
            lower2: l2.root,
            work: mkdir(dir.path(), "work"),
            mnt: mkdir(dir.path(), "mnt"),
            upper,
            dir,
        }
    }

    fn lowers(&self) -> String {
        format!("{}:{}", self.lower1.display(), self.lower2.display())
    }

    fn mount(&self) -> Mounted {
        mount_ufsd(&[&self.lower1, &self.lower2], None, &self.mnt, &[])
    }

    /// Checks the merged view of the two lowers (and the upper's file when `with_upper`).
    fn check_view(&self, with_upper: bool) {
        let read = |n: &str| fs::read_to_string(self.mnt.join(n)).unwrap();
        assert_eq!(read("top"), "from lower1\n");
        assert_eq!(read("bottom"), "from lower2\n");
        assert_eq!(read("both"), "lower1 wins\n");
        let mut names: Vec<String> = fs::read_dir(&self.mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut want = vec!["both", "bottom", "top"];
        if with_upper {
            assert_eq!(read("up"), "from upper\n");
            want.push("up");
        }
        assert_eq!(names, want);
    }
}

fn mount_cmd(args: &[&str]) -> Output {
    run_ufsd(std::iter::once("mount").chain(args.iter().copied()))
}

fn p(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

#[test]
fn refuses_a_missing_lower() {
    let s = Setup::new();
    let missing = s.dir.path().join("no-such-layer");
    let out = mount_cmd(&["--lower", p(&missing), p(&s.mnt)]);
    assert_refused(
        &out,
        &["lower", "no-such-layer", "does not exist"],
        s.dir.path(),
    );
}

#[test]
fn refuses_a_lower_that_is_a_file() {
    let s = Setup::new();
    let file = s.lower1.join("top");
    let out = mount_cmd(&["--lower", p(&file), p(&s.mnt)]);
    assert_refused(&out, &["lower", "not a directory"], s.dir.path());
}

#[test]
fn refuses_a_missing_mountpoint() {
    let s = Setup::new();
    let missing = s.dir.path().join("no-such-mnt");
    let out = mount_cmd(&["--lower", &s.lowers(), p(&missing)]);
    assert_refused(
        &out,
        &["mountpoint", "no-such-mnt", "does not exist"],
        s.dir.path(),
    );
}

#[test]
fn refuses_an_upper_inside_a_lower() {
    let s = Setup::new();
    let inner = mkdir(&s.lower1, "inner");
    let out = mount_cmd(&[
        "--lower",
        &s.lowers(),
        "--upper",
        p(&inner),
        "--work",
        p(&s.work),
        p(&s.mnt),
    ]);
    assert_refused(&out, &["upper", "lower", "overlap"], s.dir.path());
}

#[test]
fn refuses_a_lower_inside_the_upper() {
    let s = Setup::new();
    let inner = mkdir(&s.upper, "inner-lower");
    let out = mount_cmd(&[
        "--lower",
        p(&inner),
        "--upper",
        p(&s.upper),
        "--work",
        p(&s.work),
        p(&s.mnt),
    ]);
    assert_refused(&out, &["upper", "lower", "overlap"], s.dir.path());
}

#[test]
fn refuses_work_equal_to_upper() {
    let s = Setup::new();
    let out = mount_cmd(&[
        "--lower",
        &s.lowers(),
        "--upper",
        p(&s.upper),
        "--work",
        p(&s.upper),
        p(&s.mnt),
    ]);
    assert_refused(&out, &["upper", "work", "same directory"], s.dir.path());
}

#[test]
fn refuses_upper_and_work_on_different_filesystems() {
    let s = Setup::new();
    let shm = tempfile::tempdir_in("/dev/shm").expect("a temporary directory in /dev/shm");
    let dev = |p: &Path| std::os::unix::fs::MetadataExt::dev(&fs::metadata(p).unwrap());
    assert_ne!(
        dev(&s.upper),
        dev(shm.path()),
        "the test needs /dev/shm on another filesystem than {}",
        s.upper.display()
    );
    let out = mount_cmd(&[
        "--lower",
        &s.lowers(),
        "--upper",
        p(&s.upper),
        "--work",
        p(shm.path()),
        p(&s.mnt),
    ]);
    assert_refused(&out, &["different filesystems"], s.dir.path());
    assert!(mounts_under(shm.path()).is_empty());
}

#[test]
fn refuses_metacopy() {
    let s = Setup::new();
    let out = mount_cmd(&["--lower", &s.lowers(), "-o", "metacopy=on", p(&s.mnt)]);
    assert_refused(&out, &["metacopy=on", "not supported"], s.dir.path());
    // The helper form too.
    let opts = format!("lowerdir={},metacopy=on", s.lowers());
    let out = run_ufsd(["ufsd", p(&s.mnt), "-o", &opts]);
    assert_refused(&out, &["metacopy=on"], s.dir.path());
}

#[test]
fn refuses_an_unknown_option() {
    let s = Setup::new();
    let out = mount_cmd(&["--lower", &s.lowers(), "-o", "frobnicate", p(&s.mnt)]);
    assert_refused(&out, &["unknown mount option", "frobnicate"], s.dir.path());
}

#[test]
fn refuses_a_missing_lower_in_the_helper_form() {
    let s = Setup::new();
    let opts = format!("lowerdir={}", s.dir.path().join("nope").display());
    let out = run_ufsd(["ufsd", p(&s.mnt), "-o", &opts]);
    assert_refused(&out, &["nope", "does not exist"], s.dir.path());
}

#[test]
fn refuses_mounting_the_same_mountpoint_twice() {
    let s = Setup::new();
    let first = s.mount();
    let out = mount_cmd(&["--lower", &s.lowers(), p(&s.mnt)]);
    let err = stderr_of(&out);
    assert!(!out.status.success(), "the second mount succeeded");
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("ufsd: ") && lines[0].contains("already"),
        "expected one 'ufsd: ... already ...' line, got:\n{err}"
    );
    let at_mnt = mount_table()
        .into_iter()
        .filter(|(m, _)| *m == first.path)
        .count();
    assert_eq!(at_mnt, 1, "mounts stacked at {}", first.path.display());
    s.check_view(false);
    drop(first);
    assert!(mounts_under(s.dir.path()).is_empty());
}

#[test]
fn help_texts_have_examples() {
    for args in [
        &["--help"][..],
        &["mount", "--help"],
        &["umount", "--help"],
        &["help", "mount"],
    ] {
        let out = run_ufsd(args);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "ufsd {args:?} failed: {}",
            stderr_of(&out)
        );
        assert!(
            text.contains("Example"),
            "ufsd {args:?} shows no example:\n{text}"
        );
    }
}

#[test]
fn umount_of_something_not_mounted_is_one_line() {
    let s = Setup::new();
    let out = run_ufsd(["umount", p(&s.mnt)]);
    assert_refused(&out, &["not a ufsd mount"], s.dir.path());
}

#[test]
fn ufsd_umount_returns_after_the_daemon_exited() {
    let s = Setup::new();
    let m = s.mount();
    s.check_view(false);
    let pid = daemon_pid(&m.path).expect("the daemon's pid");
    assert!(process_running(pid), "daemon {pid} is not running");
    let out = run_ufsd(["umount", p(&m.path)]);
    assert!(out.status.success(), "ufsd umount: {}", stderr_of(&out));
    // No polling: the command returns only once the daemon is gone.
    assert!(
        !process_running(pid),
        "ufsd umount returned while daemon {pid} still runs"
    );
    assert_eq!(mount_type_at(&m.path), None);
    assert!(
        daemon_pid(&m.path).is_none(),
        "the pid file or a daemon for {} is left",
        m.path.display()
    );
}

fn require_tool(name: &str) {
    let found =
        std::env::split_paths("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .any(|d| d.join(name).is_file());
    assert!(
        found,
        "{name} is missing: install the fuse3 package (apt-get install fuse3); these tests must not be skipped"
    );
}

fn external_unmount_leaves_no_daemon(program: &str, args: &[&str]) {
    let s = Setup::new();
    let m = s.mount();
    let pid = daemon_pid(&m.path).expect("the daemon's pid");
    let out = Command::new(program)
        .args(args)
        .arg(&m.path)
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        stderr_of(&out)
    );
    assert_eq!(mount_type_at(&m.path), None);
    assert!(
        wait_process_gone(pid, Duration::from_secs(5)),
        "daemon {pid} still runs 5 s after {program}"
    );
}

#[test]
fn plain_umount_leaves_no_daemon() {
    external_unmount_leaves_no_daemon("umount", &[]);
}

#[test]
fn fusermount3_leaves_no_daemon() {
    require_tool("fusermount3");
    external_unmount_leaves_no_daemon("fusermount3", &["-u"]);
}

/// Serialises the tests that (re)point /usr/local/bin/ufsd.
static HELPER_LINK: Mutex<()> = Mutex::new(());

/// Makes /usr/local/bin/ufsd a symlink to the binary under test, so that mount.fuse3 runs
/// it; refuses to replace a real installed binary.
fn link_ufsd_into_path() {
    let link = Path::new("/usr/local/bin/ufsd");
    match fs::symlink_metadata(link) {
        Ok(md) if md.file_type().is_symlink() => {
            if fs::read_link(link).ok().as_deref() == Some(ufsd_bin().as_path()) {
                return;
            }
        }
        Ok(_) => panic!(
            "/usr/local/bin/ufsd is an installed file, not a symlink; remove it (or make it a \
             symlink) so that the mount.fuse3 tests can point it at {}",
            ufsd_bin().display()
        ),
        Err(_) => {}
    }
    let tmp = PathBuf::from(format!("/usr/local/bin/.ufsd-test-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(ufsd_bin(), &tmp).expect("creating a symlink in /usr/local/bin");
    fs::rename(&tmp, link).expect("installing /usr/local/bin/ufsd");
}

fn mount_fuse_ufsd(mnt: &Path, opts: &str) -> Mounted {
    require_tool("mount.fuse3");
    let out = Command::new("mount")
        .args(["-t", "fuse.ufsd", "ufsd"])
        .arg(mnt)
        .args(["-o", opts])
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .output()
        .expect("running mount(8)");
    assert!(
        out.status.success(),
        "mount -t fuse.ufsd ufsd {} -o {opts} failed: {}{}",
        mnt.display(),
        String::from_utf8_lossy(&out.stdout),
        stderr_of(&out)
    );
    let m = Mounted {
        path: fs::canonicalize(mnt).unwrap(),
        kind: MountKind::Ufsd,
    };
    assert_eq!(
        mount_type_at(&m.path).as_deref(),
        Some("fuse.ufsd"),
        "/proc/self/mountinfo shows no fuse.ufsd mount at {}",
        m.path.display()
    );
    m
}

#[test]
fn mount_t_fuse_ufsd_runs_the_helper() {
    let _serial = HELPER_LINK.lock().unwrap_or_else(|e| e.into_inner());
    link_ufsd_into_path();
    let s = Setup::new();

    let m = mount_fuse_ufsd(&s.mnt, &format!("lowerdir={}", s.lowers()));
    s.check_view(false);
    drop(m);
    assert_eq!(mount_type_at(&s.mnt), None);

    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        s.lowers(),
        s.upper.display(),
        s.work.display()
    );
    let m = mount_fuse_ufsd(&s.mnt, &opts);
    s.check_view(true);
    drop(m);
    assert!(mounts_under(s.dir.path()).is_empty());
}

/// Runs `cmd args...` as uid 1, gid 1, without supplementary groups.
fn as_uid_1(cmd: &str, args: &[&Path]) -> Output {
    require_setpriv();
    Command::new("setpriv")
        .args(["--reuid=1", "--regid=1", "--clear-groups", cmd])
        .args(args)
        .output()
        .expect("running setpriv")
}

fn require_setpriv() {
    let found = ["/usr/bin/setpriv", "/bin/setpriv", "/usr/sbin/setpriv"]
        .iter()
        .any(|p| Path::new(p).is_file());
    assert!(
        found,
        "setpriv is missing: install util-linux (these tests must not be skipped)"
    );
}

#[test]
fn a_root_mount_is_open_to_other_users_with_modes_enforced() {
    let s = Setup::new();
    let secret = s.lower1.join("secret");
    fs::write(&secret, b"root only\n").unwrap();
    std::os::unix::fs::chown(&secret, Some(1234), Some(5678)).unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let m = s.mount();

    let out = as_uid_1("ls", &[&m.path]);
    assert!(
        out.status.success(),
        "uid 1 cannot list a root mount (allow_other missing?): {}",
        stderr_of(&out)
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    for name in ["both", "bottom", "secret", "top"] {
        assert!(
            listing.lines().any(|l| l == name),
            "uid 1 does not see {name}: {listing}"
        );
    }
    let out = as_uid_1("cat", &[&m.path.join("top")]);
    assert!(
        out.status.success(),
        "uid 1 cannot read a 0644 file: {}",
        stderr_of(&out)
    );
    assert_eq!(out.stdout, b"from lower1\n");

    let out = as_uid_1("cat", &[&m.path.join("secret")]);
    assert!(
        !out.status.success() && stderr_of(&out).contains("Permission denied"),
        "uid 1 read a 0600 file of uid 1234 (default_permissions not enforced?): status {}, \
         stdout {:?}, stderr {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        stderr_of(&out)
    );
    // Root still can.
    assert_eq!(fs::read(m.path.join("secret")).unwrap(), b"root only\n");
}
