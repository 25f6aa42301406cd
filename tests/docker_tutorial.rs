//! The "Done when" of the images issue: the classic docker-tutorial workflow, end to end,
//! through the real `ufsd` binary on a temporary store. Import a rootfs tarball as
//! `base:latest`; mount it as a container; `touch /HelloWorld`; diff prints exactly
//! `A /HelloWorld`; commit with `-a` and `-m`; history shows two layers with the comment;
//! in a container of the new image remove a lower file: diff prints `D` for it and `C` for
//! its directory; commit again and see the image size grow although a file was removed;
//! export and list the tar; tag; save; skopeo and umoci read the saved layout (and umoci's
//! unpacked tree equals `ufsd export`'s); rmi. Long operations write nothing to stderr
//! when it is not a terminal.
//!
//! Needs root, /dev/fuse, GNU tar, skopeo and umoci (as CI has); nothing skips. Every
//! container is removed (and unmounted) by a guard, even when an assertion fails.

mod common;
#[path = "image_store/fixture.rs"]
#[allow(dead_code)]
mod fixture;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{MountKind, Mounted, assert_same_tree, mkdir, mount_type_at, mounts_under, scratch};
use fixture::ufsd;

/// The stdout of a command that must succeed (panics with its stderr otherwise).
fn ok(what: &str, o: Output) -> String {
    assert!(
        o.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The same, also asserting that nothing went to stderr: long operations show a progress
/// bar only on a terminal and stay quiet otherwise.
fn quiet(what: &str, o: Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let out = ok(what, o);
    assert!(err.is_empty(), "{what} wrote to stderr: {err}");
    out
}

fn run(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    ok(&format!("{cmd} {args:?}"), o)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A container made by `ufsd mount IMAGE MNT`. Dropping it runs `ufsd rm -f` (which
/// unmounts); the inner mount guard then unmounts (lazily if need be) whatever is left.
struct Container {
    root: PathBuf,
    name: String,
    _mount: Mounted,
}

impl Container {
    fn mount(root: &Path, image: &str, mnt: &Path) -> Container {
        let out = ok(
            "ufsd mount",
            ufsd(root, &["mount", image, mnt.to_str().unwrap()]),
        );
        // The guard exists before any assertion can fail.
        let c = Container {
            root: root.to_path_buf(),
            name: out.trim().to_string(),
            _mount: Mounted {
                path: mnt.to_path_buf(),
                kind: MountKind::Ufsd,
            },
        };
        assert_eq!(mount_type_at(mnt).as_deref(), Some("fuse.ufsd"));
        assert!(!c.name.is_empty() && !c.name.contains('\n'), "{out:?}");
        c
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let o = ufsd(&self.root, &["rm", "-f", &self.name]);
        if !o.status.success() {
            eprintln!(
                "warning: ufsd rm -f {} failed: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}

/// A small root filesystem: a few directories and files, an executable, a symlink, and
/// `etc/motd` to remove later.
fn rootfs(dir: &Path) -> PathBuf {
    let r = mkdir(dir, "rootfs");
    for d in ["bin", "etc", "tmp", "usr/share/doc", "var/log"] {
        fs::create_dir_all(r.join(d)).unwrap();
    }
    fs::write(
        r.join("etc/os-release"),
        "NAME=\"Tutorial Linux\"\nID=tutorial\n",
    )
    .unwrap();
    fs::write(r.join("etc/hostname"), "tutorial\n").unwrap();
    fs::write(r.join("etc/motd"), "Welcome! This file is removed later.\n").unwrap();
    fs::write(r.join("bin/sh"), "#!/bin/true\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(r.join("bin/sh"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("sh", r.join("bin/ash")).unwrap();
    fs::write(r.join("usr/share/doc/README"), "docs\n".repeat(100)).unwrap();
    r
}

/// `ufsd images --json` size of one image.
fn image_size(root: &Path, name: &str) -> u64 {
    let (repo, tag) = name.split_once(':').unwrap();
    let list = json(&ok("ufsd images", ufsd(root, &["images", "--json"])));
    let row = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["repository"] == repo && r["tag"] == tag)
        .unwrap_or_else(|| panic!("{name} not listed: {list:#}"));
    row["size"]
        .as_u64()
        .unwrap_or_else(|| panic!("no size: {row}"))
}

fn image_id(root: &Path, name: &str) -> String {
    let v = json(&ok("ufsd inspect", ufsd(root, &["inspect", name])));
    v[0]["Id"].as_str().unwrap().to_string()
}

/// The entries of a tar as `tar -t` lists them, without a leading `./` or trailing `/`.
fn tar_entries(tar: &Path) -> BTreeSet<String> {
    run("tar", &["-tf", tar.to_str().unwrap()])
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
        .filter(|l| !l.is_empty() && l != ".")
        .collect()
}

#[test]
fn docker_tutorial_workflow_end_to_end() {
    let d = scratch();
    let root = d.path().join("store");

    // Import a rootfs tarball as base:latest.
    let src = rootfs(d.path());
    let base_tar = d.path().join("rootfs.tar");
    run(
        "tar",
        &[
            "--numeric-owner",
            "-C",
            src.to_str().unwrap(),
            "-cf",
            base_tar.to_str().unwrap(),
            ".",
        ],
    );
    let base_id = quiet(
        "ufsd import",
        ufsd(
            &root,
            &["import", base_tar.to_str().unwrap(), "base:latest"],
        ),
    );
    assert!(base_id.trim().starts_with("sha256:"), "{base_id}");

    // Mount it as a container and touch /HelloWorld: diff shows exactly that.
    let mnt1 = mkdir(d.path(), "mnt1");
    let c1 = Container::mount(&root, "base:latest", &mnt1);
    assert_eq!(
        fs::read_to_string(mnt1.join("etc/os-release")).unwrap(),
        "NAME=\"Tutorial Linux\"\nID=tutorial\n"
    );
    fs::File::create(mnt1.join("HelloWorld")).unwrap();
    assert_eq!(
        ok("ufsd diff", ufsd(&root, &["diff", &c1.name])),
        "A /HelloWorld\n"
    );
    // The mount point names the same container.
    assert_eq!(
        ok("ufsd diff", ufsd(&root, &["diff", mnt1.to_str().unwrap()])),
        "A /HelloWorld\n"
    );
    let ps = json(&ok("ufsd ps", ufsd(&root, &["ps", "--json"])));
    assert_eq!(ps.as_array().unwrap().len(), 1, "{ps:#}");
    assert_eq!(ps[0]["name"], c1.name.as_str());
    assert_eq!(ps[0]["mounted"], true);

    // Commit with an author and a message; history shows two layers, the comment on top.
    let author = "Tutorial Author <author@example.org>";
    let v1_id = quiet(
        "ufsd commit",
        ufsd(
            &root,
            &[
                "commit",
                "-a",
                author,
                "-m",
                "add HelloWorld",
                &c1.name,
                "hello:v1",
            ],
        ),
    );
    assert!(v1_id.trim().starts_with("sha256:"), "{v1_id}");
    assert_ne!(v1_id, base_id);
    let history = ok("ufsd history", ufsd(&root, &["history", "hello:v1"]));
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two layers:\n{history}");
    assert!(lines[0].contains("COMMENT"), "{history}");
    assert!(
        lines[1].contains("add HelloWorld"),
        "newest first:\n{history}"
    );
    assert!(!lines[2].contains("add HelloWorld"), "{history}");
    let hj = json(&ok(
        "ufsd history --json",
        ufsd(&root, &["history", "--json", "hello:v1"]),
    ));
    let rows = hj.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{hj:#}");
    assert!(
        rows.iter()
            .filter(|r| r["comment"] == "add HelloWorld")
            .count()
            == 1,
        "{hj:#}"
    );
    assert!(rows.iter().all(|r| r["empty_layer"] != true), "{hj:#}");
    let inspect = json(&ok("ufsd inspect", ufsd(&root, &["inspect", "hello:v1"])));
    assert_eq!(inspect[0]["Config"]["author"], author);
    assert_eq!(
        inspect[0]["Config"]["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    drop(c1);
    assert_eq!(mount_type_at(&mnt1), None, "rm -f unmounted the container");

    // A container of hello:v1: remove a lower file. D for it, C for its directory.
    let mnt2 = mkdir(d.path(), "mnt2");
    let c2 = Container::mount(&root, "hello:v1", &mnt2);
    assert!(mnt2.join("HelloWorld").is_file());
    assert_eq!(ok("ufsd diff", ufsd(&root, &["diff", &c2.name])), "");
    fs::remove_file(mnt2.join("etc/motd")).unwrap();
    assert!(!mnt2.join("etc/motd").exists());
    assert_eq!(
        ok("ufsd diff", ufsd(&root, &["diff", &c2.name])),
        "C /etc\nD /etc/motd\n"
    );
    let dj = json(&ok(
        "ufsd diff --json",
        ufsd(&root, &["diff", "--json", &c2.name]),
    ));
    assert_eq!(dj.as_array().unwrap().len(), 2, "{dj:#}");

    // Commit again: the image grows although a file was removed (a layer is added).
    let v1_size = image_size(&root, "hello:v1");
    let base_size = image_size(&root, "base:latest");
    assert!(v1_size > base_size, "{v1_size} <= {base_size}");
    quiet(
        "ufsd commit",
        ufsd(
            &root,
            &[
                "commit",
                "-a",
                author,
                "-m",
                "remove motd",
                &c2.name,
                "hello:v2",
            ],
        ),
    );
    let v2_size = image_size(&root, "hello:v2");
    assert!(v2_size > v1_size, "{v2_size} <= {v1_size}");
    let history = ok("ufsd history", ufsd(&root, &["history", "hello:v2"]));
    assert_eq!(history.lines().count(), 4, "{history}");
    assert!(history.lines().nth(1).unwrap().contains("remove motd"));

    // Export and list the tar: the flattened tree, no whiteouts.
    let export = d.path().join("hello.tar");
    quiet(
        "ufsd export",
        ufsd(
            &root,
            &["export", "hello:v2", "-o", export.to_str().unwrap()],
        ),
    );
    let entries = tar_entries(&export);
    for want in [
        "HelloWorld",
        "bin",
        "bin/sh",
        "bin/ash",
        "etc",
        "etc/os-release",
        "etc/hostname",
        "tmp",
        "usr/share/doc/README",
        "var/log",
    ] {
        assert!(entries.contains(want), "{want} not in {entries:?}");
    }
    assert!(!entries.contains("etc/motd"), "{entries:?}");
    assert!(!entries.iter().any(|e| e.contains(".wh.")), "{entries:?}");
    // Exporting the container (by mount point) gives the same list.
    let export_c = d.path().join("container.tar");
    quiet(
        "ufsd export",
        ufsd(
            &root,
            &[
                "export",
                mnt2.to_str().unwrap(),
                "-o",
                export_c.to_str().unwrap(),
            ],
        ),
    );
    assert_eq!(tar_entries(&export_c), entries);

    // Unmounted, the container still diffs and exports offline, by name.
    ok(
        "ufsd umount",
        ufsd(&root, &["umount", mnt2.to_str().unwrap()]),
    );
    assert_eq!(mount_type_at(&mnt2), None);
    let ps = json(&ok("ufsd ps", ufsd(&root, &["ps", "--json"])));
    assert_eq!(ps[0]["mounted"], false, "{ps:#}");
    assert_eq!(
        ok(
            "ufsd ps --format",
            ufsd(
                &root,
                &["ps", "--format", "{{.Name}} {{.Mounted}} {{.Image}}"]
            )
        ),
        format!("{} false hello:v1\n", c2.name)
    );
    assert_eq!(
        ok("ufsd diff", ufsd(&root, &["diff", &c2.name])),
        "C /etc\nD /etc/motd\n"
    );
    let export_off = d.path().join("offline.tar");
    quiet(
        "ufsd export",
        ufsd(
            &root,
            &["export", &c2.name, "-o", export_off.to_str().unwrap()],
        ),
    );
    assert_eq!(tar_entries(&export_off), entries);
    drop(c2);

    // Tag: the new name is the same image.
    ok(
        "ufsd tag",
        ufsd(&root, &["tag", "hello:v2", "hello:latest"]),
    );
    let v2_id = image_id(&root, "hello:v2");
    assert_eq!(image_id(&root, "hello:latest"), v2_id);
    let listed = ok("ufsd images", ufsd(&root, &["images", "hello"]));
    assert_eq!(
        listed.lines().count(),
        4,
        "header + v1, v2, latest:\n{listed}"
    );
    // --format for scripts, docker style.
    let listed = ok(
        "ufsd images --format",
        ufsd(
            &root,
            &[
                "images",
                "hello",
                "--format",
                "{{.Repository}}:{{.Tag}}\\t{{.ID}}",
            ],
        ),
    );
    let mut lines: Vec<&str> = listed.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            format!("hello:latest\t{v2_id}"),
            format!("hello:v1\t{}", v1_id.trim()),
            format!("hello:v2\t{v2_id}"),
        ],
        "{listed}"
    );
    let steps = ok(
        "ufsd history --format",
        ufsd(
            &root,
            &["history", "hello:v2", "--format", "{{.Comment}}|{{.Size}}"],
        ),
    );
    let steps: Vec<&str> = steps.lines().collect();
    assert_eq!(steps.len(), 3, "{steps:?}");
    assert!(steps[0].starts_with("remove motd|"), "{steps:?}");
    assert!(steps[1].starts_with("add HelloWorld|"), "{steps:?}");
    let bad = ufsd(&root, &["images", "--format", "{{.Nope}}"]);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        err.lines().count() == 1 && err.contains(".Nope") && err.contains(".Repository"),
        "{err}"
    );

    // Save an OCI layout; skopeo and umoci read it.
    let layout = d.path().join("layout");
    quiet(
        "ufsd save",
        ufsd(
            &root,
            &["save", "hello:latest", "-o", layout.to_str().unwrap()],
        ),
    );
    let l = layout.to_str().unwrap();
    let sk = json(&run(
        "skopeo",
        &["inspect", &format!("oci:{l}:hello:latest")],
    ));
    assert_eq!(sk["Layers"].as_array().unwrap().len(), 3, "{sk:#}");
    let skc = json(&run(
        "skopeo",
        &["inspect", "--config", &format!("oci:{l}:hello:latest")],
    ));
    assert_eq!(skc["author"], author);
    assert_eq!(skc["rootfs"]["diff_ids"].as_array().unwrap().len(), 3);
    let bundle = d.path().join("bundle");
    run(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{l}:hello:latest"),
            bundle.to_str().unwrap(),
        ],
    );
    let exported = d.path().join("exported");
    fs::create_dir(&exported).unwrap();
    run(
        "tar",
        &[
            "--numeric-owner",
            "-xpf",
            export.to_str().unwrap(),
            "-C",
            exported.to_str().unwrap(),
        ],
    );
    assert_same_tree(&bundle.join("rootfs"), &exported);
    assert!(bundle.join("rootfs/HelloWorld").is_file());
    assert!(!bundle.join("rootfs/etc/motd").exists());

    // rmi: a second name only untags; the parent of a tagged child is refused (one line,
    // the store unchanged) unless -f.
    assert_eq!(
        ok("ufsd rmi", ufsd(&root, &["rmi", "hello:latest"])),
        "Untagged: hello:latest\n"
    );
    let index = fs::read(root.join("index.json")).unwrap();
    let refused = ufsd(&root, &["rmi", "hello:v1"]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "rmi of a parent succeeded");
    assert!(
        err.lines().count() == 1 && err.starts_with("ufsd: ") && err.contains("hello:v2"),
        "{err}"
    );
    assert_eq!(fs::read(root.join("index.json")).unwrap(), index);
    assert_eq!(image_id(&root, "hello:v2"), v2_id);

    // Nothing is left behind: no containers, no mounts.
    let ps = json(&ok("ufsd ps", ufsd(&root, &["ps", "--json"])));
    assert_eq!(ps.as_array().unwrap().len(), 0, "{ps:#}");
    assert!(mounts_under(d.path()).is_empty());
}
