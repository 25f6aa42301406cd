//! The image store through the real binary: `images`, `tag`, `rmi`, `history`, `inspect`
//! against stores built with the library API in temporary directories; refusals and
//! corruption (one `ufsd:` line, non-zero exit, store unchanged); concurrent writers;
//! and interop: skopeo and umoci read a store ufsd wrote.
//!
//! Needs the `skopeo` and `umoci` packages (the CI script installs them); no mounts.

mod fixture;
mod interop;

use std::fs;
use std::path::Path;
use std::process::Command;

use fixture::*;
use ufsd::image::store::ContainerRecord;

// ---------------------------------------------------------------------------------------
// images, tag
// ---------------------------------------------------------------------------------------

#[test]
fn images_prints_an_aligned_table() {
    let f = fixture();
    let out = ok(ufsd(&f.root, &["images"]));
    println!("{out}"); // shown with --nocapture
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let header = lines[0];
    for col in ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"] {
        assert!(header.contains(col), "{header}");
    }
    let starts: Vec<usize> = ["TAG", "IMAGE ID", "CREATED", "SIZE"]
        .iter()
        .map(|c| header.find(c).unwrap())
        .collect();
    let base_row = lines
        .iter()
        .find(|l| l.starts_with("base "))
        .expect("a base row");
    let app_row = lines
        .iter()
        .find(|l| l.starts_with("registry.example/ns/app "))
        .expect("an app row");
    for row in [base_row, app_row] {
        for s in &starts {
            assert_eq!(&row[s - 1..*s], " ", "columns misaligned:\n{out}");
            assert_ne!(&row[*s..s + 1], " ", "columns misaligned:\n{out}");
        }
    }
    assert_eq!(&base_row[starts[0]..starts[0] + 6], "latest");
    assert_eq!(&base_row[starts[1]..starts[1] + 12], f.base.short());
    assert!(base_row.contains("3 minutes ago"), "{base_row}");
    assert!(
        app_row.contains("2 hours ago") && app_row.contains("v1"),
        "{app_row}"
    );
    let size = f.base_layer.0.size() + f.app_layer.0.size();
    assert!(
        app_row.trim_end().ends_with(&format!("{size}B")),
        "{app_row}"
    );

    let full = ok(ufsd(&f.root, &["images", "--no-trunc"]));
    assert!(full.contains(&f.base.to_string()), "{full}");
    let quiet = ok(ufsd(&f.root, &["images", "-q"]));
    let mut ids: Vec<&str> = quiet.lines().collect();
    ids.sort();
    let mut want = vec![f.base.short(), f.app.short()];
    want.sort();
    assert_eq!(ids, want);
    let only = ok(ufsd(&f.root, &["images", "base"]));
    assert_eq!(only.lines().count(), 2, "{only}");
}

#[test]
fn images_json_is_for_scripts() {
    let f = fixture();
    let v: serde_json::Value =
        serde_json::from_str(&ok(ufsd(&f.root, &["images", "--json"]))).unwrap();
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let base = rows.iter().find(|r| r["repository"] == "base").unwrap();
    assert_eq!(base["tag"], "latest");
    assert_eq!(base["id"], f.base.to_string());
    assert_eq!(base["size"], f.base_layer.0.size());
    assert!(base["created"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn ufsd_root_env_selects_the_store() {
    let f = fixture();
    let out = Command::new(env!("CARGO_BIN_EXE_ufsd"))
        .arg("images")
        .env("UFSD_ROOT", &f.root)
        .output()
        .unwrap();
    assert!(ok(out).contains("registry.example/ns/app"));
}

#[test]
fn tag_names_an_image_and_refuses_bad_names() {
    let f = fixture();
    ok(ufsd(&f.root, &["tag", "base", "base:v1"]));
    ok(ufsd(&f.root, &["tag", f.app.short(), "localhost:5000/app"]));
    let out = ok(ufsd(&f.root, &["images"]));
    assert!(
        out.lines()
            .any(|l| l.starts_with("base ") && l.contains(" v1 ")),
        "{out}"
    );
    assert!(out.contains("localhost:5000/app"), "{out}");
    assert_eq!(f.store.resolve("base:v1").unwrap().id, f.base);

    let before = snapshot(&f.root);
    for (args, words) in [
        (
            ["tag", "base", "Base:v2"],
            &["invalid reference", "lowercase"][..],
        ),
        (
            ["tag", "base", "base:-v2"],
            &["invalid reference", "tag"][..],
        ),
        (["tag", "base", "base:"], &["invalid reference"][..]),
        (["tag", "base", "a---b"], &["OCI ref.name"][..]),
        (["tag", "nosuch", "x"], &["no such image: nosuch"][..]),
        (["tag", "base:v9", "x"], &["no such image: base:v9"][..]),
        (["tag", "ffff", "x"], &["no such image: ffff"][..]),
    ] {
        refused(&ufsd(&f.root, &args), words);
        assert_eq!(snapshot(&f.root), before, "{args:?} changed the store");
    }
}

#[test]
fn concurrent_taggers_never_corrupt_the_index() {
    let f = fixture();
    let children: Vec<_> = (0..16)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_ufsd"))
                .arg("--root")
                .arg(&f.root)
                .args(["tag", "base", &format!("many:t{i}")])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(f.root.join("index.json")).unwrap()).unwrap();
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .collect();
    assert_eq!(names.len(), 18, "{names:?}");
    for i in 0..16 {
        assert!(
            names.contains(&format!("many:t{i}").as_str()),
            "many:t{i} lost: {names:?}"
        );
    }
    assert_eq!(fs::read_dir(f.root.join("tmp")).unwrap().count(), 0);
}

// ---------------------------------------------------------------------------------------
// rmi
// ---------------------------------------------------------------------------------------

#[test]
fn rmi_untags_refuses_while_used_and_collects_garbage() {
    let f = fixture();
    // Extract the layers, so that their removal is checked too.
    let untar = |r: &mut dyn std::io::Read, d: &Path| {
        tar::Archive::new(r)
            .unpack(d)
            .map_err(|e| ufsd::image::ImageError::io("unpack", d)(e))
    };
    let app_img = f.store.resolve("registry.example/ns/app:v1").unwrap();
    let dirs = f.store.ensure_image_layers(&app_img, untar).unwrap();
    assert_eq!(fs::read(dirs[1].join("app/run")).unwrap(), b"echo hi\n");

    // base has a tagged child: refused, store unchanged.
    let before = snapshot(&f.root);
    refused(
        &ufsd(&f.root, &["rmi", "base"]),
        &["child", "registry.example/ns/app:v1", "-f"],
    );
    assert_eq!(snapshot(&f.root), before);

    // A second tag only goes away.
    ok(ufsd(&f.root, &["tag", "base", "base:v1"]));
    assert_eq!(
        ok(ufsd(&f.root, &["rmi", "base:v1"])),
        "Untagged: base:v1\n"
    );

    // A container uses app: refused; -f untags it but keeps it.
    f.store
        .create_container_record(&ContainerRecord {
            name: "web".into(),
            image: f.app.to_string(),
            created: None,
            ..Default::default()
        })
        .unwrap();
    let before = snapshot(&f.root);
    refused(
        &ufsd(&f.root, &["rmi", "registry.example/ns/app:v1"]),
        &["container web"],
    );
    assert_eq!(snapshot(&f.root), before);
    assert_eq!(
        ok(ufsd(&f.root, &["rmi", "-f", "registry.example/ns/app:v1"])),
        "Untagged: registry.example/ns/app:v1\n"
    );
    let out = ok(ufsd(&f.root, &["images"]));
    assert!(
        out.lines()
            .any(|l| l.starts_with("<none>") && l.contains(f.app.short())),
        "{out}"
    );
    assert!(dirs[1].is_dir());

    // No tagged child now: base goes; its layer stays for app.
    let out = ok(ufsd(&f.root, &["rmi", "base"]));
    assert_eq!(out, format!("Untagged: base:latest\nDeleted: {}\n", f.base));
    assert!(f.store.has_blob(f.base_layer.0.digest()));
    assert!(dirs[0].is_dir());

    // The container gone, app goes by id, and everything with it.
    f.store.remove_container_record("web").unwrap();
    let out = ok(ufsd(&f.root, &["rmi", &f.app.hex()[..6]]));
    assert_eq!(out, format!("Deleted: {}\n", f.app));
    assert_eq!(
        fs::read_dir(f.root.join("blobs/sha256")).unwrap().count(),
        0
    );
    assert_eq!(fs::read_dir(f.root.join("layers")).unwrap().count(), 0);
    assert_eq!(ok(ufsd(&f.root, &["images", "-q"])), "");
    refused(&ufsd(&f.root, &["rmi", "base"]), &["no such image: base"]);
}

#[test]
fn rmi_force_removes_a_parent_and_an_image_with_several_tags() {
    let f = fixture();
    ok(ufsd(&f.root, &["tag", "base", "base:v1"]));
    let before = snapshot(&f.root);
    refused(
        &ufsd(&f.root, &["rmi", f.base.short()]),
        &["several tags", "base:latest, base:v1"],
    );
    assert_eq!(snapshot(&f.root), before);
    let out = ok(ufsd(&f.root, &["rmi", "-f", f.base.short()]));
    assert_eq!(
        out,
        format!(
            "Untagged: base:latest\nUntagged: base:v1\nDeleted: {}\n",
            f.base
        )
    );
    // The child keeps the shared layer and still reads.
    ok(ufsd(&f.root, &["inspect", "registry.example/ns/app:v1"]));
}

// ---------------------------------------------------------------------------------------
// history, inspect
// ---------------------------------------------------------------------------------------

#[test]
fn history_lists_steps_newest_first() {
    let f = fixture();
    let out = ok(ufsd(&f.root, &["history", "registry.example/ns/app:v1"]));
    println!("{out}"); // shown with --nocapture
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    for col in ["LAYER", "CREATED", "CREATED BY", "SIZE", "COMMENT"] {
        assert!(lines[0].contains(col), "{}", lines[0]);
    }
    let app_hex = &f.app_layer.1.digest()[..12];
    assert!(lines[1].starts_with(app_hex), "{out}");
    assert!(
        lines[1].contains("apt-get install") && lines[1].contains('…'),
        "{out}"
    );
    assert!(
        lines[1].contains("2 hours ago") && lines[1].contains("test"),
        "{out}"
    );
    assert!(
        lines[2].starts_with(&f.base_layer.1.digest()[..12]),
        "{out}"
    );

    let full = ok(ufsd(
        &f.root,
        &["history", "--no-trunc", "registry.example/ns/app:v1"],
    ));
    assert!(full.contains(&f.app_layer.1.to_string()), "{full}");
    assert!(full.contains("a-really-long-name another-one"), "{full}");

    let v: serde_json::Value = serde_json::from_str(&ok(ufsd(
        &f.root,
        &["history", "--json", "registry.example/ns/app:v1"],
    )))
    .unwrap();
    assert_eq!(v[0]["layer"], f.app_layer.1.to_string());
    assert_eq!(v[0]["size"], f.app_layer.0.size());
    assert_eq!(v[1]["created_by"], "/bin/sh -c #(nop) ADD rootfs /");
}

#[test]
fn inspect_prints_config_and_layers() {
    let f = fixture();
    let v: serde_json::Value = serde_json::from_str(&ok(ufsd(
        &f.root,
        &["inspect", "registry.example/ns/app:v1", "base"],
    )))
    .unwrap();
    let app = &v[0];
    assert_eq!(app["Id"], f.app.to_string());
    assert_eq!(
        app["RepoTags"],
        serde_json::json!(["registry.example/ns/app:v1"])
    );
    assert!(
        app["RepoDigests"][0]
            .as_str()
            .unwrap()
            .starts_with("registry.example/ns/app@sha256:")
    );
    assert_eq!(app["Layers"].as_array().unwrap().len(), 2);
    assert_eq!(app["Layers"][1]["DiffID"], f.app_layer.1.to_string());
    assert_eq!(
        app["Layers"][1]["MediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    assert_eq!(
        app["Config"]["rootfs"]["diff_ids"],
        serde_json::json!([f.base_layer.1.to_string(), f.app_layer.1.to_string()])
    );
    assert_eq!(v[1]["Id"], f.base.to_string());
}

// ---------------------------------------------------------------------------------------
// Damage
// ---------------------------------------------------------------------------------------

fn flip_a_byte(path: &Path) {
    let mut b = fs::read(path).unwrap();
    let i = b.len() / 2;
    b[i] ^= 0x20;
    fs::write(path, b).unwrap();
}

#[test]
fn a_corrupt_config_or_manifest_is_named() {
    let f = fixture();
    let img = f.store.resolve("base").unwrap();
    let config = f.store.blob_path(img.manifest.config().digest()).unwrap();
    flip_a_byte(&config);
    let before = snapshot(&f.root);
    let name = img.manifest.config().digest().to_string();
    refused(
        &ufsd(&f.root, &["inspect", "base"]),
        &["blob", &name, "corrupt"],
    );
    refused(
        &ufsd(&f.root, &["history", "base"]),
        &["blob", &name, "corrupt"],
    );
    // Removal of the damaged image's tag would work; the store is unchanged by reads.
    assert_eq!(snapshot(&f.root), before);
    // images still lists, with a warning naming the damage.
    let out = ufsd(&f.root, &["images"]);
    assert!(out.status.success());
    assert!(stderr(&out).contains(&name), "{}", stderr(&out));

    let manifest = f
        .store
        .blob_path(
            f.store
                .resolve("registry.example/ns/app:v1")
                .unwrap()
                .manifest_descriptor
                .digest(),
        )
        .unwrap();
    flip_a_byte(&manifest);
    let m = format!("sha256:{}", manifest.file_name().unwrap().to_string_lossy());
    refused(
        &ufsd(&f.root, &["inspect", "registry.example/ns/app:v1"]),
        &["blob", &m, "corrupt"],
    );
}

#[test]
fn a_missing_blob_is_named() {
    let f = fixture();
    fs::remove_file(f.store.blob_path(f.app_layer.0.digest()).unwrap()).unwrap();
    let before = snapshot(&f.root);
    let name = f.app_layer.0.digest().to_string();
    refused(
        &ufsd(&f.root, &["inspect", "registry.example/ns/app:v1"]),
        &["blob", &name, "missing"],
    );
    refused(
        &ufsd(&f.root, &["history", "registry.example/ns/app:v1"]),
        &["blob", &name, "missing"],
    );
    refused(
        &ufsd(&f.root, &["tag", "registry.example/ns/app:v1", "x"]),
        &["blob", &name, "missing"],
    );
    assert_eq!(snapshot(&f.root), before);
    // base, which does not use the blob, still works.
    ok(ufsd(&f.root, &["inspect", "base"]));
}

#[test]
fn unknown_names_and_ambiguous_ids_are_one_line_errors() {
    let f = fixture();
    let before = snapshot(&f.root);
    refused(
        &ufsd(&f.root, &["inspect", "nosuch"]),
        &["no such image: nosuch"],
    );
    refused(
        &ufsd(&f.root, &["history", "Nosuch"]),
        &["invalid reference", "lowercase"],
    );
    refused(
        &ufsd(&f.root, &["rmi", "nosuch:v1"]),
        &["no such image: nosuch:v1"],
    );
    refused(
        &ufsd(&f.root, &["inspect", "sha256:zz"]),
        &["invalid reference"],
    );
    assert_eq!(snapshot(&f.root), before);
}

#[test]
fn a_directory_that_is_not_a_store_is_refused() {
    let d = tempfile::tempdir().unwrap();
    fs::write(d.path().join("notes.txt"), b"mine").unwrap();
    refused(&ufsd(d.path(), &["images"]), &["not an image store"]);
    assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
}

#[test]
fn every_image_command_has_help_with_an_example() {
    let d = tempfile::tempdir().unwrap();
    for cmd in ["images", "tag", "rmi", "history", "inspect"] {
        let out = ok(ufsd(d.path(), &[cmd, "--help"]));
        assert!(
            out.contains("Example"),
            "{cmd} --help has no example:\n{out}"
        );
        assert!(out.contains(&format!("ufsd {cmd} ")), "{cmd} --help: {out}");
    }
    // --help creates no store.
    assert_eq!(fs::read_dir(d.path()).unwrap().count(), 0);
}
