//! FUSE over io_uring (`-o uring`): with the `fuse` module's `enable_uring` parameter on,
//! a mount's requests come over the kernel's rings and the merged tree ends as kernel
//! overlayfs' does; with it off, the mount says so and serves over `/dev/fuse`.
//!
//! CI also runs the whole suite over io_uring (`UFSD_URING=1`, see `.ci/run`); these tests
//! check that the transport is the one asked for. They need root and Linux 6.14+.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Mutex;

use common::*;

const PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// The module parameter is global: one test at a time changes it.
static PARAM_LOCK: Mutex<()> = Mutex::new(());

/// Sets the parameter for the life of the guard, then puts back what it was.
struct Param(String);

impl Param {
    fn set(on: bool) -> Param {
        let old = fs::read_to_string(PARAM)
            .unwrap_or_else(|e| panic!("{PARAM}: {e} (FUSE over io_uring needs Linux 6.14+)"));
        fs::write(PARAM, if on { "Y" } else { "N" }).expect("setting enable_uring (root)");
        Param(old.trim().to_string())
    }
}

impl Drop for Param {
    fn drop(&mut self) {
        let _ = fs::write(PARAM, &self.0);
    }
}

/// The same changes, on ufsd and on kernel overlayfs.
fn change(root: &Path) {
    fs::write(root.join("new"), b"a new file\n").unwrap();
    fs::write(root.join("dir/lower"), b"rewritten\n").unwrap();
    fs::create_dir(root.join("made")).unwrap();
    fs::rename(root.join("new"), root.join("made/moved")).unwrap();
    fs::remove_file(root.join("gone")).unwrap();
    symlink("made/moved", root.join("link")).unwrap();
    let mut names: Vec<_> = fs::read_dir(root.join("dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["lower", "other"], "listing of dir");
    assert_eq!(fs::read(root.join("link")).unwrap(), b"a new file\n");
    set_xattr(&root.join("made"), b"user.note", b"kept");
    assert_eq!(
        get_xattr(&root.join("made"), b"user.note").unwrap(),
        b"kept"
    );
}

fn lower(dir: &Path) -> LayerBuilder {
    let l = LayerBuilder::new(dir, WhiteoutFormat::Overlay);
    l.file(b"dir/lower", b"from the lower layer\n", 0o644)
        .file(b"dir/other", b"untouched\n", 0o644)
        .file(b"gone", b"to be deleted\n", 0o644);
    l
}

/// A lower layer, an upper, and ufsd mounted with `-o uring` and a log, with the module
/// parameter set to `on` (and the lock held) until it is dropped.
struct Setup {
    // Fields drop in order: the mount goes before its directories.
    ufsd: Option<Mounted>,
    t: tempfile::TempDir,
    mnt: std::path::PathBuf,
    log: std::path::PathBuf,
    layer: LayerBuilder,
    _param: Param,
    _lock: std::sync::MutexGuard<'static, ()>,
}

impl Setup {
    fn new(on: bool) -> Setup {
        let lock = PARAM_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let param = Param::set(on);
        let t = scratch();
        let layer = lower(&t.path().join("l"));
        let (u, w, mnt) = (
            mkdir(t.path(), "u"),
            mkdir(t.path(), "w"),
            mkdir(t.path(), "m"),
        );
        let log = t.path().join("daemon.log");
        let args = ["-o", "uring", "-v", "--log-file", log.to_str().unwrap()];
        let ufsd = mount_ufsd(&[&layer.root], Some((&u, &w)), &mnt, &args);
        Setup {
            t,
            mnt,
            log,
            layer,
            ufsd: Some(ufsd),
            _param: param,
            _lock: lock,
        }
    }

    /// Unmounts and returns the daemon's log.
    fn finish(&mut self) -> String {
        let m = self.ufsd.take().expect("mounted");
        m.unmount().expect("unmounting ufsd");
        fs::read_to_string(&self.log).unwrap()
    }
}

#[test]
fn with_the_module_parameter_on_requests_arrive_over_io_uring() {
    let mut s = Setup::new(true);
    let (ku, kw, km) = (
        mkdir(s.t.path(), "ku"),
        mkdir(s.t.path(), "kw"),
        mkdir(s.t.path(), "km"),
    );
    let kernel = mount_overlay(&[&s.layer.root], Some((&ku, &kw)), &km);
    change(&s.mnt);
    change(&km);
    assert_same_tree(&s.mnt, &km);
    kernel.unmount().expect("unmounting overlayfs");
    let text = s.finish();
    assert!(
        text.contains("requests arrive over io_uring"),
        "the daemon never served a request over io_uring; its log:\n{text}"
    );
}

#[test]
fn with_the_module_parameter_off_the_mount_serves_over_dev_fuse() {
    let mut s = Setup::new(false);
    change(&s.mnt);
    let text = s.finish();
    assert!(
        text.contains("does not offer FUSE over io_uring"),
        "the daemon did not say io_uring was refused; its log:\n{text}"
    );
    assert!(
        !text.contains("requests arrive over io_uring"),
        "requests came over io_uring with the parameter off; log:\n{text}"
    );
}
