//! `ufsd diff` and `image::diff::diff`: docker diff's rules on hand-built layers in both
//! whiteout formats; a ufsd mount after real operations, diffed live and again after
//! unmounting, against kernel overlayfs doing the same operations; refusals (redirect_dir,
//! not a ufsd mount, no upper); and the speed of a 100k-entry upper layer.
//!
//! Needs root, /dev/fuse and kernel overlayfs, as CI has; nothing here skips.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;
use ufsd::image::diff::{ChangeKind, diff, parse_line};

fn lines(out: &Output) -> Vec<Vec<u8>> {
    assert!(
        out.status.success(),
        "ufsd diff failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

fn show_lines(l: &[Vec<u8>]) -> Vec<String> {
    l.iter().map(|l| l.escape_ascii().to_string()).collect()
}

fn join_lowers(l: &[PathBuf]) -> std::ffi::OsString {
    let parts: Vec<&[u8]> = l.iter().map(|p| p.as_os_str().as_bytes()).collect();
    OsStr::from_bytes(&parts.join(&b':')).to_os_string()
}

fn diff_offline(upper: &Path, lowers: &[PathBuf], json: bool) -> Output {
    let mut args = vec![
        "diff".into(),
        "--upper".into(),
        upper.as_os_str().to_os_string(),
    ];
    if !lowers.is_empty() {
        args.push("--lower".into());
        args.push(join_lowers(lowers));
    }
    if json {
        args.push("--json".into());
    }
    run_ufsd(args)
}

/// Two lower layers and an upper layer exercising every rule, in `format`.
fn rules_fixture(dir: &Path, format: WhiteoutFormat) -> (PathBuf, Vec<PathBuf>) {
    let l2 = LayerBuilder::new(&dir.join("l2"), format);
    l2.file(b"etc/passwd", b"root\n", 0o644)
        .file(b"etc/hosts", b"127.0.0.1\n", 0o644)
        .file(b"usr/bin/ls", b"elf\n", 0o755)
        .file(b"usr/lib/a", b"a\n", 0o644)
        .file(b"usr/lib/b", b"b\n", 0o644)
        .file(b"opq/x", b"x\n", 0o644)
        .file(b"opq/y", b"y\n", 0o644)
        .file(b"opq/sub/old", b"old\n", 0o644)
        .file(b"opq/sub/kept", b"kept\n", 0o644)
        .file(b"gone_dir/inner/f", b"f\n", 0o644)
        .file(b"gone_file", b"g\n", 0o644)
        .file(b"hidden_below", b"h\n", 0o644)
        .file(b"lo/old", b"old\n", 0o644)
        .file(b"deep/a/b/c", b"c\n", 0o644);
    let l1 = LayerBuilder::new(&dir.join("l1"), format);
    l1.whiteout(b"hidden_below")
        .opaque(b"lo")
        .file(b"lo/kept", b"kept\n", 0o644)
        .file(b"usr/lib/c", b"c\n", 0o644);
    let up = LayerBuilder::new(&dir.join("upper"), format);
    up.file(b"etc/passwd", b"root\nuser\n", 0o644)
        .file(b"etc/new", b"new\n", 0o644)
        .whiteout(b"gone_file")
        .whiteout(b"gone_dir")
        .whiteout(b"hidden_below")
        .whiteout(b"never_existed")
        .opaque(b"opq")
        .file(b"opq/x", b"x again\n", 0o644)
        .file(b"opq/z", b"z\n", 0o644)
        .file(b"opq/sub/kept", b"kept again\n", 0o644)
        .file(b"opq/sub/new", b"new\n", 0o644)
        .file(b"deep/a/b/c", b"c\n", 0o600)
        .file(b"newd/sub/f", b"f\n", 0o644)
        .file(b"usr/lib", b"a file over a directory\n", 0o644)
        .dir(b"usr/bin", 0o755)
        .opaque(b"etc/hosts")
        .file(b"etc/hosts/child", b"a directory over a file\n", 0o644)
        .file(b"lo/old", b"hidden by l1's opaque lo\n", 0o644)
        .file(b"names/new\nline", b"nl\n", 0o644)
        .file(b"names/caf\xe9", b"latin-1\n", 0o644);
    (up.root.clone(), vec![l1.root.clone(), l2.root.clone()])
}

const RULES_EXPECTED: &[&[u8]] = &[
    b"C /deep",
    b"C /deep/a",
    b"C /deep/a/b",
    b"C /deep/a/b/c",
    b"C /etc",
    b"C /etc/hosts",
    b"A /etc/hosts/child",
    b"A /etc/new",
    b"C /etc/passwd",
    b"D /gone_dir",
    b"D /gone_file",
    b"C /lo",
    b"A /lo/old",
    b"A /names",
    b"A /names/caf\xe9",
    b"A \"/names/new\\nline\"",
    b"A /newd",
    b"A /newd/sub",
    b"A /newd/sub/f",
    b"C /opq",
    b"C /opq/sub",
    b"C /opq/sub/kept",
    b"A /opq/sub/new",
    b"D /opq/sub/old",
    b"C /opq/x",
    b"D /opq/y",
    b"A /opq/z",
    b"C /usr",
    b"C /usr/bin",
    b"C /usr/lib",
];

#[test]
fn docker_rules_in_both_whiteout_formats() {
    for format in [WhiteoutFormat::Overlay, WhiteoutFormat::Oci] {
        let tmp = scratch();
        let (upper, lowers) = rules_fixture(tmp.path(), format);
        let got = lines(&diff_offline(&upper, &lowers, false));
        let want: Vec<Vec<u8>> = RULES_EXPECTED.iter().map(|l| l.to_vec()).collect();
        assert_eq!(show_lines(&got), show_lines(&want), "{format:?}");
        assert_matches_views(&upper, &lowers, format, &mkdir(tmp.path(), "mnt"));
        // The library gives the same, with raw paths.
        let changes = diff(&upper, &lowers).unwrap();
        let parsed: Vec<_> = got.iter().map(|l| parse_line(l).unwrap()).collect();
        assert_eq!(changes, parsed);
        assert_eq!(changes[14].path.as_os_str().as_bytes(), b"/names/caf\xe9");
        assert_eq!(changes[15].path.as_os_str().as_bytes(), b"/names/new\nline");
        // JSON: same order; the non-UTF-8 path in base64.
        let json: serde_json::Value =
            serde_json::from_slice(&diff_offline(&upper, &lowers, true).stdout).unwrap();
        let arr = json.as_array().unwrap();
        assert_eq!(arr.len(), RULES_EXPECTED.len());
        assert_eq!(arr[0], serde_json::json!({"kind": "C", "path": "/deep"}));
        assert_eq!(
            arr[14],
            serde_json::json!({"kind": "A", "path_b64": "L25hbWVzL2NhZuk="})
        );
        assert_eq!(
            arr[15],
            serde_json::json!({"kind": "A", "path": "/names/new\nline"})
        );
    }
}

#[test]
fn no_lowers_means_everything_is_added() {
    let tmp = scratch();
    let (upper, _) = rules_fixture(tmp.path(), WhiteoutFormat::Overlay);
    let changes = diff(&upper, &[]).unwrap();
    assert!(
        changes.iter().all(|c| c.kind == ChangeKind::Added),
        "{changes:?}"
    );
    assert!(changes.iter().any(|c| c.path == Path::new("/newd/sub/f")));
    assert!(!changes.iter().any(|c| c.path == Path::new("/gone_file")));
}

#[test]
fn redirect_dir_uppers_are_refused() {
    let tmp = scratch();
    let (upper, lowers) = rules_fixture(tmp.path(), WhiteoutFormat::Overlay);
    set_xattr(
        &upper.join("newd/sub"),
        b"trusted.overlay.redirect",
        b"/deep",
    );
    let out = diff_offline(&upper, &lowers, false);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("ufsd: "), "{err}");
    assert!(
        err.contains("redirect_dir uppers are not supported"),
        "{err}"
    );
    assert!(
        err.contains(&upper.join("newd/sub").display().to_string()),
        "{err}"
    );
}

/// The same operations, applied to the merged view at `mnt` (ufsd or kernel overlayfs).
fn operate(mnt: &Path) {
    let p = |s: &str| mnt.join(s);
    let mut hosts = fs::read(p("etc/hosts")).unwrap();
    hosts.extend_from_slice(b"10.0.0.1 db\n");
    fs::write(p("etc/hosts"), hosts).unwrap();
    fs::set_permissions(p("etc/motd"), fs::Permissions::from_mode(0o600)).unwrap();
    set_xattr(&p("shadowed"), b"user.comment", b"changed");
    fs::remove_file(p("etc/conf.d/a.conf")).unwrap();
    fs::remove_dir_all(p("nested/a")).unwrap();
    fs::create_dir_all(p("nested/a/b")).unwrap();
    fs::write(p("nested/a/b/fresh"), b"fresh\n").unwrap();
    fs::remove_dir_all(p("opq")).unwrap();
    fs::create_dir(p("opq")).unwrap();
    fs::write(p("opq/fresh"), b"fresh\n").unwrap();
    fs::create_dir_all(p("newdir/sub")).unwrap();
    fs::write(p("newdir/sub/f"), b"f\n").unwrap();
    fs::hard_link(p("empty"), p("newdir/empty_link")).unwrap();
    std::os::unix::fs::symlink("../etc/hosts", p("newdir/link")).unwrap();
    fs::rename(p("etc/conf.d/b.conf"), p("etc/conf.d/b2.conf")).unwrap();
    fs::write(p("names/new\nfile"), b"nl\n").unwrap();
    fs::remove_file(p("names/caf\u{e9}")).unwrap_or_else(|_| {
        fs::remove_file(mnt.join(OsStr::from_bytes(b"names/caf\xe9"))).unwrap()
    });
    // A file created and removed again leaves no trace but its copied-up parent.
    fs::write(p("special/tmp"), b"tmp\n").unwrap();
    fs::remove_file(p("special/tmp")).unwrap();
    std::os::unix::fs::lchown(p("modes/m0755"), Some(1), Some(1)).unwrap();
}

#[test]
fn live_ufsd_mount_matches_offline_and_kernel_overlayfs() {
    let tmp = scratch();
    let lowers = build_fixture_with(&tmp.path().join("fx"), WhiteoutFormat::Overlay, false);
    let lp = as_paths(&lowers);
    let (upper, work, mnt) = (
        mkdir(tmp.path(), "upper"),
        mkdir(tmp.path(), "work"),
        mkdir(tmp.path(), "mnt"),
    );
    let m = mount_ufsd(&lp, Some((&upper, &work)), &mnt, &[]);
    operate(&mnt);
    let live = lines(&run_ufsd([OsStr::new("diff"), mnt.as_os_str()]));
    let live_json = run_ufsd([OsStr::new("diff"), OsStr::new("--json"), mnt.as_os_str()]);
    assert!(live_json.status.success());
    m.unmount().unwrap();
    let offline = lines(&diff_offline(&upper, &lowers, false));
    assert_eq!(show_lines(&live), show_lines(&offline), "live vs offline");
    let json: serde_json::Value = serde_json::from_slice(&live_json.stdout).unwrap();
    assert_eq!(json.as_array().unwrap().len(), live.len());

    // Kernel overlayfs doing the same operations writes an upper layer with the same diff.
    let (kupper, kwork, kmnt) = (
        mkdir(tmp.path(), "kupper"),
        mkdir(tmp.path(), "kwork"),
        mkdir(tmp.path(), "kmnt"),
    );
    let k = mount_overlay(&lp, Some((&kupper, &kwork)), &kmnt);
    operate(&kmnt);
    k.unmount().unwrap();
    let kernel = lines(&diff_offline(&kupper, &lowers, false));
    assert_eq!(
        show_lines(&live),
        show_lines(&kernel),
        "ufsd vs kernel overlayfs"
    );

    for want in [
        &b"C /etc"[..],
        b"C /etc/hosts",
        b"C /etc/motd",
        b"C /etc/conf.d",
        b"D /etc/conf.d/a.conf",
        b"D /etc/conf.d/b.conf",
        b"A /etc/conf.d/b2.conf",
        b"C /nested",
        b"C /nested/a",
        b"C /nested/a/b",
        b"A /nested/a/b/fresh",
        b"D /nested/a/b/c",
        b"D /nested/a/b/mid",
        b"D /nested/a/top",
        b"C /opq",
        b"A /opq/fresh",
        b"D /opq/new1",
        b"D /opq/top",
        b"A /newdir",
        b"A /newdir/sub/f",
        b"A /newdir/empty_link",
        b"C /empty",
        b"C /shadowed",
        b"C /special",
        b"C /modes/m0755",
        b"A \"/names/new\\nfile\"",
        b"D /names/caf\xe9",
    ] {
        assert!(
            live.iter().any(|l| l == want),
            "missing {:?} in:\n{}",
            want.escape_ascii().to_string(),
            show_lines(&live).join("\n")
        );
    }
    assert!(
        !live.iter().any(|l| l.starts_with(b"D /nested/a/b/c/")),
        "nothing below a D"
    );
    assert!(!live.iter().any(|l| l.ends_with(b"/special/tmp")));
}

/// Paths (relative, as in snapshots) of the real entries of an upper layer: not whiteout
/// devices, not `.wh.` names.
fn upper_entries(root: &Path, rel: &[u8], out: &mut std::collections::BTreeSet<Vec<u8>>) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for e in fs::read_dir(root.join(OsStr::from_bytes(rel))).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        let md = e.metadata().unwrap();
        if name.as_bytes().starts_with(b".wh.") || md.file_type().is_char_device() && md.rdev() == 0
        {
            continue;
        }
        let mut p = rel.to_vec();
        if !p.is_empty() {
            p.push(b'/');
        }
        p.extend_from_slice(name.as_bytes());
        if md.is_dir() {
            upper_entries(root, &p, out);
        }
        out.insert(p);
    }
}

fn parent_of(p: &[u8]) -> &[u8] {
    p.iter()
        .rposition(|b| *b == b'/')
        .map_or(&b""[..], |i| &p[..i])
}

/// docker's `ChangesDirs` on two snapshots of merged views, except that an entry in both
/// is `C` when the upper layer holds it (docs/diff.md): the oracle for the A/D rules,
/// with kernel overlayfs resolving both views.
fn oracle(
    old: &Snapshot,
    new: &Snapshot,
    upper: &std::collections::BTreeSet<Vec<u8>>,
) -> Vec<Vec<u8>> {
    let is_dir = |s: &Snapshot, p: &[u8]| s.get(p).is_some_and(|e| e.kind == Kind::Dir);
    let mut out: Vec<(Vec<u8>, char)> = Vec::new();
    for p in new.keys().filter(|p| !p.is_empty()) {
        if !old.contains_key(p) {
            out.push((p.clone(), 'A'));
        } else if upper.contains(p) {
            out.push((p.clone(), 'C'));
        }
    }
    for p in old
        .keys()
        .filter(|p| !p.is_empty() && !new.contains_key(*p))
    {
        let par = parent_of(p);
        if is_dir(old, par) && is_dir(new, par) {
            out.push((p.clone(), 'D'));
        }
    }
    out.sort();
    out.into_iter()
        .map(|(p, k)| {
            let mut abs = b"/".to_vec();
            abs.extend_from_slice(&p);
            let mut line = vec![k as u8, b' '];
            line.extend_from_slice(&ufsd::image::diff::output::quote_path(&abs));
            line
        })
        .collect()
}

#[test]
fn diff_agrees_with_kernel_overlayfs_views() {
    for format in [WhiteoutFormat::Overlay, WhiteoutFormat::Oci] {
        let tmp = scratch();
        let lowers = build_fixture_with(&tmp.path().join("fx"), format, false);
        let lp = as_paths(&lowers);
        let upper = mkdir(tmp.path(), "upper");
        let mnt = mkdir(tmp.path(), "mnt");
        if format == WhiteoutFormat::Overlay {
            let work = mkdir(tmp.path(), "work");
            let k = mount_overlay(&lp, Some((&upper, &work)), &mnt);
            operate(&mnt);
            k.unmount().unwrap();
        } else {
            // Kernel overlayfs cannot read OCI whiteouts: write the upper with ufsd.
            let work = mkdir(tmp.path(), "work");
            let m = mount_ufsd(&lp, Some((&upper, &work)), &mnt, &["-o", "whiteout=oci"]);
            operate(&mnt);
            m.unmount().unwrap();
            assert!(upper.join("etc/conf.d/.wh.a.conf").is_file());
        }
        assert_matches_views(&upper, &lowers, format, &mnt);
    }
}

/// Asserts that `ufsd diff` of `upper` over `lowers` is what [`oracle`] finds comparing the
/// merged views with and without the upper layer, mounted read-only at `mnt` by kernel
/// overlayfs (ufsd for the OCI format, which the kernel cannot read).
fn assert_matches_views(upper: &Path, lowers: &[PathBuf], format: WhiteoutFormat, mnt: &Path) {
    let lp = as_paths(lowers);
    let mut with_upper = vec![upper];
    with_upper.extend(&lp);
    let view = |layers: &[&Path]| {
        let _m = match format {
            WhiteoutFormat::Overlay if layers.len() > 1 => mount_overlay(layers, None, mnt),
            _ => mount_ufsd(layers, None, mnt, &[]),
        };
        snapshot(mnt)
    };
    let (old, new) = (view(&lp), view(&with_upper));
    let mut real = std::collections::BTreeSet::new();
    upper_entries(upper, b"", &mut real);
    let want = oracle(&old, &new, &real);
    assert!(want.len() > 10, "a trivial comparison: {want:?}");
    let got = lines(&diff_offline(upper, lowers, false));
    assert_eq!(show_lines(&got), show_lines(&want), "{format:?}");
}

#[test]
fn a_directory_renamed_on_ufsd_is_deleted_and_added() {
    let tmp = scratch();
    let l = LayerBuilder::new(&tmp.path().join("l"), WhiteoutFormat::Overlay);
    l.file(b"a/x", b"x\n", 0o644)
        .file(b"a/sub/y", b"y\n", 0o644);
    let (upper, work, mnt) = (
        mkdir(tmp.path(), "upper"),
        mkdir(tmp.path(), "work"),
        mkdir(tmp.path(), "mnt"),
    );
    let _m = mount_ufsd(&[&l.root], Some((&upper, &work)), &mnt, &[]);
    fs::rename(mnt.join("a"), mnt.join("b")).unwrap();
    let got = lines(&run_ufsd([OsStr::new("diff"), mnt.as_os_str()]));
    let want = ["D /a", "A /b", "A /b/sub", "A /b/sub/y", "A /b/x"];
    assert_eq!(show_lines(&got), want);
}

#[test]
fn refusals_are_one_line() {
    let tmp = scratch();
    let not_mounted = mkdir(tmp.path(), "plain");
    for args in [
        vec![OsStr::new("diff"), not_mounted.as_os_str()],
        vec![OsStr::new("diff"), OsStr::new("/no/such/dir")],
        vec![
            OsStr::new("diff"),
            OsStr::new("--upper"),
            OsStr::new("/no/such/dir"),
        ],
    ] {
        let out = run_ufsd(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            err.lines().count() == 1 && err.starts_with("ufsd: "),
            "{args:?}: {err}"
        );
    }
    // A ufsd mount without an upper layer has nothing to diff.
    let l = LayerBuilder::new(&tmp.path().join("l"), WhiteoutFormat::Overlay);
    l.file(b"f", b"x", 0o644);
    let mnt = mkdir(tmp.path(), "mnt");
    let _m = mount_ufsd(&[&l.root], None, &mnt, &[]);
    let out = run_ufsd([OsStr::new("diff"), mnt.as_os_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("without an upper layer"), "{err}");
    // Both forms at once, or --lower alone, are usage errors.
    let out = run_ufsd([
        OsStr::new("diff"),
        mnt.as_os_str(),
        OsStr::new("--upper"),
        OsStr::new("/x"),
    ]);
    assert!(!out.status.success());
    let out = run_ufsd(["diff", "--lower", "/x"]);
    assert!(!out.status.success());
    // --lower beside a container or mount point would be ignored: refused instead.
    let out = run_ufsd([
        OsStr::new("diff"),
        OsStr::new("--lower"),
        OsStr::new("/x"),
        mnt.as_os_str(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--lower"),
        "{out:?}"
    );
    let help = run_ufsd(["diff", "--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("Example"));
}

/// 1000 directories of 100 entries each in the upper layer (100k entries); the lower layer
/// has half of the directories with 50 files each, so there are C, A and D lines.
fn big_upper(dir: &Path) -> (PathBuf, Vec<PathBuf>) {
    let upper = mkdir(dir, "upper");
    let lower = mkdir(dir, "lower");
    for d in 0..1000 {
        let ud = upper.join(format!("d{d:04}"));
        fs::create_dir(&ud).unwrap();
        for f in 0..99 {
            fs::write(ud.join(format!("f{f:03}")), b"").unwrap();
        }
        if d % 2 == 0 {
            let ld = lower.join(format!("d{d:04}"));
            fs::create_dir(&ld).unwrap();
            for f in 0..50 {
                fs::write(ld.join(format!("f{f:03}")), b"").unwrap();
            }
            fs::write(ld.join("old"), b"").unwrap();
            mknod(&ud.join("old"), libc::S_IFCHR, 0, 0);
        }
    }
    (upper, vec![lower])
}

#[test]
fn a_100k_entry_upper_diffs_well_under_a_second() {
    let tmp = scratch();
    let (upper, lowers) = big_upper(tmp.path());
    let mut best = Duration::MAX;
    let mut n = 0;
    for _ in 0..3 {
        let t = Instant::now();
        let changes = diff(&upper, &lowers).unwrap();
        best = best.min(t.elapsed());
        n = changes.len();
    }
    // 1000 directories, 99k files, 500 deletions.
    assert_eq!(n, 1000 + 99_000 + 500);
    eprintln!("diff of a 100k-entry upper layer: {best:?} (best of 3)");
    let limit = if cfg!(debug_assertions) {
        Duration::from_secs(5)
    } else {
        Duration::from_millis(700)
    };
    assert!(best < limit, "diff took {best:?}");
}
