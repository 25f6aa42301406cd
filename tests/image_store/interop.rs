//! Interop: skopeo and umoci read a store ufsd wrote, by the `name:tag` ref.names.

use std::fs;
use std::process::{Command, Output};

use super::fixture::*;

// ---------------------------------------------------------------------------------------

fn tool(name: &str, args: &[&str]) -> Output {
    Command::new(name)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {name} ({e}): install the {name} package"))
}

#[test]
fn skopeo_reads_the_store() {
    let f = fixture();
    let r = f.root.to_str().unwrap();
    let img = f.store.resolve("registry.example/ns/app:v1").unwrap();
    for reference in ["base:latest", "registry.example/ns/app:v1"] {
        let out = tool("skopeo", &["inspect", &format!("oci:{r}:{reference}")]);
        assert!(
            out.status.success(),
            "skopeo inspect {reference}: {}",
            stderr(&out)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        if reference != "base:latest" {
            assert_eq!(v["Digest"], img.manifest_descriptor.digest().to_string());
            assert_eq!(v["Layers"].as_array().unwrap().len(), 2);
        }
    }
    // A copy reads and checks every blob.
    let dest = f.dir.path().join("copy");
    let out = tool(
        "skopeo",
        &[
            "copy",
            &format!("oci:{r}:registry.example/ns/app:v1"),
            &format!("oci:{}:copied", dest.display()),
        ],
    );
    assert!(out.status.success(), "skopeo copy: {}", stderr(&out));
}

#[test]
fn umoci_reads_the_store() {
    let f = fixture();
    let r = f.root.to_str().unwrap();
    let out = tool("umoci", &["ls", "--layout", r]);
    assert!(out.status.success(), "umoci ls: {}", stderr(&out));
    let mut names: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    names.sort();
    assert_eq!(names, vec!["base:latest", "registry.example/ns/app:v1"]);
    // Unpacking checks blob digests and diff_ids.
    let bundle = f.dir.path().join("bundle");
    let out = tool(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{r}:registry.example/ns/app:v1"),
            bundle.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "umoci unpack: {}", stderr(&out));
    assert_eq!(
        fs::read(bundle.join("rootfs/app/run")).unwrap(),
        b"echo hi\n"
    );
    assert_eq!(
        fs::read(bundle.join("rootfs/etc/os-release")).unwrap(),
        b"NAME=test\n"
    );
}
