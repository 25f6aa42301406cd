//! Interop with skopeo and umoci: they read what `ufsd save` wrote (and umoci unpacks the
//! same tree `ufsd export` writes), and images they wrote load into ufsd with the same
//! tree.

use std::fs;

use super::common::{assert_same_tree, scratch};
use super::fixture::{ok, ufsd};
use super::{export_tree, image_id, imported_rootfs, rootfs, run};

#[test]
fn skopeo_inspects_and_copies_what_save_wrote() {
    let d = scratch();
    let (src, root) = imported_rootfs(d.path(), true);
    let id = image_id(&root, "base");
    let layout = d.path().join("layout");
    ok(ufsd(
        &root,
        &["save", "base", "-o", layout.to_str().unwrap()],
    ));
    let l = layout.to_str().unwrap();

    let v: serde_json::Value = serde_json::from_str(&run(
        "skopeo",
        &["inspect", &format!("oci:{l}:base:latest")],
    ))
    .unwrap();
    assert_eq!(v["Layers"].as_array().unwrap().len(), 1);
    let cfg: serde_json::Value = serde_json::from_str(&run(
        "skopeo",
        &["inspect", "--config", &format!("oci:{l}:base:latest")],
    ))
    .unwrap();
    assert_eq!(cfg["rootfs"]["type"], "layers");

    // The tar form, as an oci-archive.
    let archive = d.path().join("base.tar");
    ok(ufsd(
        &root,
        &["save", "base", "-o", archive.to_str().unwrap()],
    ));
    run(
        "skopeo",
        &[
            "inspect",
            &format!("oci-archive:{}:base:latest", archive.display()),
        ],
    );

    // skopeo copies it (reading and checking every blob) ...
    let copy = d.path().join("copy");
    run(
        "skopeo",
        &[
            "copy",
            &format!("oci:{l}:base:latest"),
            &format!("oci:{}:base:copied", copy.display()),
        ],
    );
    // ... and its copy loads into a fresh store with the same id and tree.
    let fresh = d.path().join("fresh");
    let out = ok(ufsd(&fresh, &["load", copy.to_str().unwrap()]));
    assert!(out.contains("Loaded image: base:copied"), "{out}");
    assert_eq!(image_id(&fresh, "base:copied"), id);
    let tree = d.path().join("from-skopeo");
    export_tree(&fresh, "base:copied", &tree);
    assert_same_tree(&src, &tree);
}

#[test]
fn umoci_unpacks_the_tree_export_writes() {
    let d = scratch();
    let (_, root) = imported_rootfs(d.path(), false);
    let layout = d.path().join("layout");
    ok(ufsd(
        &root,
        &["save", "base", "-o", layout.to_str().unwrap()],
    ));
    let bundle = d.path().join("bundle");
    run(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:base:latest", layout.display()),
            bundle.to_str().unwrap(),
        ],
    );
    let exported = d.path().join("exported");
    export_tree(&root, "base", &exported);
    assert_same_tree(&bundle.join("rootfs"), &exported);
}

#[test]
fn an_image_umoci_wrote_loads_with_the_same_tree() {
    let d = scratch();
    let layout = d.path().join("umoci");
    let l = layout.to_str().unwrap();
    run("umoci", &["init", "--layout", l]);
    run("umoci", &["new", "--image", &format!("{l}:base")]);
    let bundle = d.path().join("bundle");
    run(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{l}:base"),
            bundle.to_str().unwrap(),
        ],
    );
    // Fill the rootfs and repack: one layer, written by umoci.
    let src = rootfs(d.path());
    run(
        "sh",
        &[
            "-c",
            &format!(
                "tar --xattrs --xattrs-include='*' -C {} -cpf - . | tar --xattrs --xattrs-include='*' -C {} -xpf -",
                src.display(),
                bundle.join("rootfs").display()
            ),
        ],
    );
    run(
        "umoci",
        &[
            "repack",
            "--image",
            &format!("{l}:base"),
            bundle.to_str().unwrap(),
        ],
    );
    // A second layer by a second repack: a file deleted (umoci writes a whiteout), one
    // changed, one added. (Not `umoci insert`: umoci 0.4.7 writes its layer without the
    // tar's padding and end blocks, which ufsd and GNU tar both refuse.)
    run(
        "umoci",
        &["tag", "--image", &format!("{l}:base"), "base:first"],
    );
    let r = bundle.join("rootfs");
    fs::remove_file(r.join("etc/os-release")).unwrap();
    fs::write(r.join("bin/sh"), b"changed\n").unwrap();
    fs::write(r.join("etc/extra.txt"), b"added\n").unwrap();
    run(
        "umoci",
        &[
            "repack",
            "--image",
            &format!("{l}:base:more"),
            bundle.to_str().unwrap(),
        ],
    );
    let root = d.path().join("store");
    let out = ok(ufsd(&root, &["load", l]));
    assert!(out.contains("Loaded image: base:latest"), "{out}");
    let first = d.path().join("from-umoci-first");
    export_tree(&root, "base:first", &first);
    assert_same_tree(&src, &first);
    let more = d.path().join("from-umoci-more");
    export_tree(&root, "base:more", &more);
    assert_same_tree(&bundle.join("rootfs"), &more);
    assert!(!more.join("etc/os-release").exists());
}
