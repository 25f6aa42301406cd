//! `ufsd layers` and `ufsd explain` through the real binary, on a fixture image whose sizes
//! are known in advance (built with the library: layer directories -> `write_layer` ->
//! store blobs -> `add_image`), on the same layers given as directories, on a live ufsd
//! mount with an upper layer (copy-up, whiteout), and on a kernel overlayfs mount.
//!
//! The fixture, bottom first (sizes are apparent bytes):
//!
//! ```text
//! layer 1  ADD rootfs     /etc/config 100, /etc/motd 50, /usr/lib/{a 1000, b 2000},
//!                         /usr/share/doc/{x 300, y 700}, /keep 10, /bin/x 200 = /bin/y (hard link)
//!          (ENV PATH=..., an empty_layer history entry)
//! layer 2  RUN install    /opt/tool/bin/tool 50,000,000 (sparse), /opt/tool/README 1000,
//!                         /etc/config 120
//! layer 3  RUN remove     whiteout /opt/tool (a directory tree), /etc/config 130, /bin/x 20
//! layer 4  RUN relib      /usr/lib opaque with /usr/lib/c 400; whiteout /usr/share/doc
//! ```

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{LayerBuilder, WhiteoutFormat, mount_overlay, mount_ufsd, run_ufsd, scratch};
use oci_spec::image::{HistoryBuilder, ImageConfigurationBuilder, MediaType};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use ufsd::image::layer::{LayerOptions, write_layer};
use ufsd::image::reference::Reference;
use ufsd::image::store::Store;

const TOOL: u64 = 50_000_000;

/// The four fixture layer directories, top-most first (as `--lower` takes them).
fn build_layers(dir: &Path) -> Vec<PathBuf> {
    let l1 = LayerBuilder::new(&dir.join("l1"), WhiteoutFormat::Overlay);
    l1.file(b"etc/config", &[b'1'; 100], 0o644)
        .file(b"etc/motd", &[b'm'; 50], 0o644)
        .file(b"usr/lib/a", &[b'a'; 1000], 0o644)
        .file(b"usr/lib/b", &[b'b'; 2000], 0o644)
        .file(b"usr/share/doc/x", &[b'x'; 300], 0o644)
        .file(b"usr/share/doc/y", &[b'y'; 700], 0o644)
        .file(b"keep", &[b'k'; 10], 0o644)
        .file(b"bin/x", &[b'X'; 200], 0o755)
        .hardlink(b"bin/x", b"bin/y");
    let l2 = LayerBuilder::new(&dir.join("l2"), WhiteoutFormat::Oci);
    l2.sparse(b"opt/tool/bin/tool", TOOL - 1, b"!")
        .file(b"opt/tool/README", &[b'r'; 1000], 0o644)
        .file(b"etc/config", &[b'2'; 120], 0o644);
    let l3 = LayerBuilder::new(&dir.join("l3"), WhiteoutFormat::Overlay);
    l3.dir(b"opt", 0o755)
        .whiteout(b"opt/tool")
        .file(b"etc/config", &[b'3'; 130], 0o644)
        .file(b"bin/x", &[b'x'; 20], 0o755);
    let l4 = LayerBuilder::new(&dir.join("l4"), WhiteoutFormat::Oci);
    l4.opaque(b"usr/lib")
        .file(b"usr/lib/c", &[b'c'; 400], 0o644)
        .whiteout(b"usr/share/doc");
    vec![l4.root, l3.root, l2.root, l1.root]
}

/// A store holding the fixture as image `fixture:v1` (uncompressed layers, so the 50 MB
/// really is in the image).
fn build_image(dir: &Path, layers: &[PathBuf]) -> PathBuf {
    let root = dir.join("store");
    let store = Store::open(&root).unwrap();
    let mut descs = Vec::new();
    for i in (0..layers.len()).rev() {
        let mut tar = Vec::new();
        write_layer(
            &layers[i],
            &layers[i + 1..],
            &mut tar,
            &LayerOptions::default(),
        )
        .unwrap();
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
        let blob = store.put_blob_bytes(&tar, MediaType::ImageLayer).unwrap();
        descs.push((blob, diff_id.parse().unwrap()));
    }
    let h = |by: &str, empty: bool| {
        HistoryBuilder::default()
            .created_by(by.to_string())
            .comment("fixture")
            .empty_layer(empty)
            .build()
            .unwrap()
    };
    let cfg = ImageConfigurationBuilder::default()
        .history(vec![
            h("ADD rootfs /", false),
            h("ENV PATH=/bin", true),
            h("RUN install tool", false),
            h("RUN rm -rf /opt/tool", false),
            h("RUN relib", false),
            h("CMD [\"sh\"]", true),
        ])
        .build()
        .unwrap();
    let tag = Reference::parse_tag_target("fixture:v1").unwrap();
    store.add_image(cfg, descs, Some(&tag)).unwrap();
    root
}

/// A container `web` of the fixture image, its upper layer beside its record.
fn add_container(root: &Path) -> PathBuf {
    let store = Store::open(root).unwrap();
    let image = store.resolve("fixture:v1").unwrap();
    store
        .create_container_record(&ufsd::image::store::ContainerRecord {
            name: "web".into(),
            image: image.id.to_string(),
            created: None,
            ..Default::default()
        })
        .unwrap();
    store.container_dir("web").unwrap().join("upper")
}

fn ufsd_in(root: &Path, args: &[&str]) -> Output {
    let mut a: Vec<String> = vec!["--root".into(), root.display().to_string()];
    a.extend(args.iter().map(|s| s.to_string()));
    run_ufsd(a)
}

fn json_of(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "ufsd failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("JSON output")
}

fn text_of(o: &Output) -> String {
    assert!(
        o.status.success(),
        "ufsd failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// The row of layer `name` in an analysis.
fn layer<'a>(a: &'a Value, name: &str) -> &'a Value {
    a["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {a}"))
}

const STORED: u64 = 4360 + TOOL + 1120 + 150 + 400;
const SEEN: u64 = 260 + 150 + 400;

fn check_numbers(a: &Value, from_image: bool) {
    // name, then size, files, added, changed, removed, wasted, wasted files
    let want: [(&str, [u64; 7]); 4] = [
        ("layer 4", [400, 1, 1, 0, 3, 0, 0]),
        ("layer 3", [150, 2, 0, 2, 1, 0, 0]),
        ("layer 2", [TOOL + 1120, 3, 5, 1, 0, TOOL + 1120, 3]),
        ("layer 1", [4360, 8, 15, 0, 0, 4100, 5]),
    ];
    for (name, numbers) in want {
        let l = layer(a, name);
        let got: Vec<u64> = [
            "size",
            "files",
            "added",
            "changed",
            "removed",
            "wasted",
            "wasted_files",
        ]
        .iter()
        .map(|k| l[k].as_u64().unwrap_or_else(|| panic!("{k} of {l}")))
        .collect();
        assert_eq!(got, numbers, "{name}: {l}");
    }
    assert_eq!(a["total_bytes"], STORED);
    assert_eq!(a["seen_bytes"], SEEN);
    assert_eq!(a["wasted_bytes"], STORED - SEEN);
    let eff = a["efficiency"].as_f64().unwrap();
    assert!((eff - SEEN as f64 / STORED as f64).abs() < 1e-12, "{eff}");
    // The largest wasted files, with who hides them.
    let top: Vec<(String, String, u64, String, String)> = a["top_wasted"]
        .as_array()
        .unwrap()
        .iter()
        .take(4)
        .map(|w| {
            let name = |i: &Value| {
                let i = i.as_u64().unwrap() as usize;
                format!("layer {}", 4 - i)
            };
            (
                w["path"].as_str().unwrap().to_string(),
                name(&w["layer"]),
                w["size"].as_u64().unwrap(),
                format!("{} {}", name(&w["by"]), w["cause"].as_str().unwrap()),
                w["at"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let row = |p: &str, l: &str, s: u64, by: &str, at: &str| {
        (
            p.to_string(),
            l.to_string(),
            s,
            by.to_string(),
            at.to_string(),
        )
    };
    assert_eq!(
        top,
        vec![
            row(
                "/opt/tool/bin/tool",
                "layer 2",
                TOOL,
                "layer 3 whited_out",
                "/opt/tool"
            ),
            row("/usr/lib/b", "layer 1", 2000, "layer 4 opaque", "/usr/lib"),
            row(
                "/opt/tool/README",
                "layer 2",
                1000,
                "layer 3 whited_out",
                "/opt/tool"
            ),
            row("/usr/lib/a", "layer 1", 1000, "layer 4 opaque", "/usr/lib"),
        ]
    );
    if from_image {
        let created: Vec<&str> = ["layer 1", "layer 2", "layer 3", "layer 4"]
            .iter()
            .map(|n| layer(a, n)["created_by"].as_str().unwrap())
            .collect();
        assert_eq!(
            created,
            vec![
                "ADD rootfs /",
                "RUN install tool",
                "RUN rm -rf /opt/tool",
                "RUN relib"
            ],
            "empty_layer history entries take no layer"
        );
    }
}

#[test]
fn layers_counts_exact_bytes_on_an_image_and_on_directories() {
    let tmp = scratch();
    let layers = build_layers(tmp.path());
    let root = build_image(tmp.path(), &layers);

    let a = json_of(&ufsd_in(&root, &["layers", "--json", "fixture:v1"]));
    check_numbers(&a["analysis"], true);
    // Removing a file makes the image bigger: the 50 MB are in the image's blobs.
    let blobs: u64 = a["stack"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["blob_size"].as_u64().unwrap())
        .sum();
    assert!(blobs > TOOL, "{blobs}");

    // The same layers given as directories give the same numbers.
    let lower = std::env::join_paths(&layers).unwrap();
    let a = json_of(&run_ufsd([
        "layers".as_ref(),
        "--json".as_ref(),
        "--lower".as_ref(),
        lower.as_os_str(),
    ]));
    check_numbers(&a["analysis"], false);

    // The text form names the lesson.
    let t = text_of(&ufsd_in(&root, &["layers", "fixture:v1"]));
    println!("{t}");
    assert!(
        t.contains("50005220 bytes (99.9984% of what is stored)"),
        "{t}"
    );
    assert!(t.contains("Efficiency:  0.0016%"), "{t}");
    assert!(
        t.lines().any(|l| l.contains("50MB")
            && l.contains("layer 2")
            && l.contains("/opt/tool/bin/tool")
            && l.contains("/opt/tool deleted in layer 3")),
        "{t}"
    );
}

#[test]
fn max_waste_sets_the_exit_status() {
    let tmp = scratch();
    let layers = build_layers(tmp.path());
    let lower = std::env::join_paths(&layers).unwrap();
    let run = |t: &str| {
        run_ufsd([
            "layers".as_ref(),
            "--lower".as_ref(),
            lower.as_os_str(),
            "--max-waste".as_ref(),
            t.as_ref(),
        ])
    };
    // Wasted: 50,005,220 bytes of 50,006,030 (99.9984%).
    for (t, code) in [
        ("50MB", 3),
        ("50005219", 3),
        ("50005220", 0),
        ("51MB", 0),
        ("99%", 3),
        ("100%", 0),
    ] {
        let o = run(t);
        assert_eq!(o.status.code(), Some(code), "--max-waste {t}");
        let err = String::from_utf8_lossy(&o.stderr);
        if code == 3 {
            assert!(
                err.starts_with("ufsd: wasted 50MB") && err.lines().count() == 1,
                "{err}"
            );
        } else {
            assert!(err.is_empty(), "{err}");
        }
    }
    // --svg draws the stack (and does not change the exit status).
    let svg = tmp.path().join("stack.svg");
    let o = run_ufsd([
        "layers".as_ref(),
        "--lower".as_ref(),
        lower.as_os_str(),
        "--svg".as_ref(),
        svg.as_os_str(),
    ]);
    assert!(o.status.success());
    let text = fs::read_to_string(&svg).unwrap();
    assert!(
        text.starts_with("<svg ") && text.ends_with("</svg>\n"),
        "{text}"
    );
    assert!(
        text.contains(r##"width="360.00" height="28" fill="#e53935""##),
        "{text}"
    );
    assert!(
        text.contains("50MB stored, 50MB wasted; +5 ~1 -0"),
        "{text}"
    );
    let o = run("lots");
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--max-waste"));
}

#[test]
fn tree_shows_one_layers_changes() {
    let tmp = scratch();
    let layers = build_layers(tmp.path());
    let root = build_image(tmp.path(), &layers);
    let t = text_of(&ufsd_in(&root, &["layers", "fixture:v1", "--tree", "3"]));
    let body: Vec<&str> = t.lines().skip(1).collect();
    assert!(
        t.lines()
            .next()
            .unwrap()
            .ends_with(": RUN rm -rf /opt/tool"),
        "{t}"
    );
    assert_eq!(
        body,
        vec![
            "C bin/",
            "C   x  (20B)",
            "C etc/",
            "C   config  (130B)",
            "C opt/",
            "D   tool",
        ],
        "{t}"
    );
    let t = text_of(&ufsd_in(&root, &["layers", "fixture:v1", "--tree", "4"]));
    assert!(
        t.contains("C   lib/\nD     a\nD     b\nA     c  (400B)\n"),
        "{t}"
    );
    assert!(t.contains("C   share/\nD     doc\n"), "{t}");
    let o = ufsd_in(&root, &["layers", "fixture:v1", "--tree", "9"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no such layer"));
}

/// The rows of an explanation as (layer name, holds, role, by, cause, at).
fn rows(e: &Value) -> Vec<String> {
    e["explanation"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let mut s = format!(
                "{}: {} {}",
                r["name"].as_str().unwrap(),
                r["holds"].as_str().unwrap(),
                r["role"].as_str().unwrap()
            );
            if let Some(by) = r["by"].as_u64() {
                let names = e["stack"].as_array().unwrap();
                s.push_str(&format!(
                    " by {} ({} at {})",
                    names[by as usize]["name"].as_str().unwrap(),
                    r["cause"].as_str().unwrap(),
                    r["at"].as_str().unwrap()
                ));
            }
            s
        })
        .collect()
}

fn explain_json(args: &[&std::ffi::OsStr]) -> Value {
    let mut a: Vec<&std::ffi::OsStr> = vec!["explain".as_ref(), "--json".as_ref()];
    a.extend_from_slice(args);
    json_of(&run_ufsd(a))
}

/// Each case of the issue, offline: on the image and on the same directories.
#[test]
fn explain_each_case_offline() {
    let tmp = scratch();
    let layers = build_layers(tmp.path());
    let root = build_image(tmp.path(), &layers);
    let lower = std::env::join_paths(&layers).unwrap();
    let on_image = |p: &str| {
        let o = ufsd_in(&root, &["explain", "--json", "fixture:v1", p]);
        json_of(&o)
    };
    let on_dirs = |p: &str| explain_json(&["--lower".as_ref(), lower.as_os_str(), p.as_ref()]);
    let cases: Vec<(&str, Vec<&str>)> = vec![
        // Top layer wins, shadowing two lower copies.
        (
            "/etc/config",
            vec![
                "layer 4: nothing absent",
                "layer 3: entry shown",
                "layer 2: entry hidden by layer 3 (shadowed at /etc/config)",
                "layer 1: entry hidden by layer 3 (shadowed at /etc/config)",
            ],
        ),
        // Whited out: the whole tree under /opt/tool.
        (
            "opt/tool/bin/tool",
            vec![
                "layer 4: nothing absent",
                "layer 3: nothing absent",
                "layer 2: entry hidden by layer 3 (whited_out at /opt/tool)",
                "layer 1: nothing absent",
            ],
        ),
        (
            "/opt/tool",
            vec![
                "layer 4: nothing absent",
                "layer 3: whiteout whiteout",
                "layer 2: entry hidden by layer 3 (whited_out at /opt/tool)",
                "layer 1: nothing absent",
            ],
        ),
        // Under an opaque directory.
        (
            "/usr/lib/a",
            vec![
                "layer 4: nothing absent",
                "layer 3: nothing absent",
                "layer 2: nothing absent",
                "layer 1: entry hidden by layer 4 (opaque at /usr/lib)",
            ],
        ),
        // A merged directory.
        (
            "/etc",
            vec![
                "layer 4: nothing absent",
                "layer 3: entry shown",
                "layer 2: entry merged",
                "layer 1: entry merged",
            ],
        ),
    ];
    for (path, want) in cases {
        for e in [on_image(path), on_dirs(path)] {
            assert_eq!(rows(&e), want, "{path}: {e}");
        }
    }
    let e = on_image("/opt/tool");
    let wh = &e["explanation"]["layers"][1];
    assert_eq!(wh["format"], "device", "{wh}");
    assert_eq!(wh["hides"], serde_json::json!([2]), "{wh}");
    // The merged listing of /etc: config from layer 3, motd from layer 1.
    let e = on_dirs("/etc");
    let x = &e["explanation"];
    assert_eq!(x["listing_total"], 2);
    let shares: Vec<(u64, u64, u64)> = x["listing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["layer"].as_u64().unwrap(),
                s["shown"].as_u64().unwrap(),
                s["held"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(shares, vec![(1, 1, 1), (2, 0, 1), (3, 1, 2)]);
    // The opaque directory itself: shown from layer 4, its listing only its own.
    let e = on_image("/usr/lib");
    assert_eq!(
        rows(&e),
        vec![
            "layer 4: entry shown",
            "layer 3: nothing absent",
            "layer 2: nothing absent",
            "layer 1: entry hidden by layer 4 (opaque at /usr/lib)",
        ]
    );
    assert_eq!(e["explanation"]["listing_total"], 1);
    // The text form says the same in words.
    let t = text_of(&ufsd_in(&root, &["explain", "fixture:v1", "/usr/lib/b"]));
    assert!(t.starts_with("/usr/lib/b: not in the merged view\n"), "{t}");
    assert!(
        t.contains("Layer 1's file is hidden: /usr/lib is an opaque directory in layer 4"),
        "{t}"
    );
    // Refusals: one line, non-zero.
    for bad in ["/etc/.wh.config", "/etc/../etc"] {
        let o = run_ufsd([
            "explain".as_ref(),
            "--lower".as_ref(),
            lower.as_os_str(),
            bad.as_ref(),
        ]);
        assert_eq!(o.status.code(), Some(1), "{bad}");
        assert_eq!(String::from_utf8_lossy(&o.stderr).lines().count(), 1);
    }
    let o = run_ufsd(["explain", tmp.path().join("store").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not inside a ufsd or overlay mount"));
}

/// Copy-up and a whiteout made through a live ufsd mount, explained by mount path.
#[test]
fn explain_on_a_live_mount_shows_copy_up_and_whiteouts() {
    let tmp = scratch();
    let layers = build_layers(tmp.path());
    let (up, work, mnt) = (
        tmp.path().join("up"),
        tmp.path().join("work"),
        tmp.path().join("mnt"),
    );
    for d in [&up, &work, &mnt] {
        fs::create_dir(d).unwrap();
    }
    let lowers: Vec<&Path> = layers.iter().map(PathBuf::as_path).collect();
    let m = mount_ufsd(&lowers, Some((&up, &work)), &mnt, &[]);
    let before = ufsd::image::rfc3339::now();
    fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("etc/motd"))
        .unwrap()
        .write_all(b"!")
        .unwrap();
    fs::remove_file(mnt.join("keep")).unwrap();

    let e = explain_json(&[mnt.join("etc/motd").as_os_str()]);
    assert_eq!(
        rows(&e),
        vec![
            "upper: entry shown",
            "layer 4: nothing absent",
            "layer 3: nothing absent",
            "layer 2: nothing absent",
            "layer 1: entry hidden by upper (shadowed at /etc/motd)",
        ]
    );
    let c = &e["explanation"]["copy_up"];
    assert_eq!(c["from"], 4, "{e}");
    let source = c["time_source"].as_str().unwrap();
    assert!(source == "birth" || source == "ctime", "{c}");
    let t = ufsd::image::rfc3339::parse(c["time"].as_str().unwrap()).unwrap();
    assert!(t >= before - 1 && t <= before + 60, "{c}");
    assert!(e["source"].as_str().unwrap().starts_with("mount "));

    // The deletion is a whiteout in the upper layer.
    let e = explain_json(&[mnt.join("keep").as_os_str()]);
    assert_eq!(rows(&e)[0], "upper: whiteout whiteout", "{e}");
    assert_eq!(
        rows(&e)[4],
        "layer 1: entry hidden by upper (whited_out at /keep)"
    );
    // A merged directory of the mount: the upper /etc merges with layers 3, 2 and 1.
    let e = explain_json(&[mnt.join("etc").as_os_str()]);
    assert_eq!(e["explanation"]["shown"]["layer"], 0);
    assert_eq!(e["explanation"]["copy_up"]["from"], 2);
    assert_eq!(e["explanation"]["listing_total"], 2);
    // The text form, through a relative path with a symlinked prefix resolved outside.
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&mnt, &link).unwrap();
    let o = run_ufsd(["explain".as_ref(), link.join("etc/motd").as_os_str()]);
    let t = text_of(&o);
    assert!(t.starts_with("/etc/motd: file from upper\n"), "{t}");
    assert!(
        t.contains("Copied up: the upper layer holds its own copy of the file of layer 1"),
        "{t}"
    );
    m.unmount().unwrap();
}

/// A kernel overlayfs mount is explained from its mount options.
#[test]
fn explain_on_a_kernel_overlay_mount() {
    let tmp = scratch();
    let layers = build_layers(tmp.path());
    let mnt = tmp.path().join("ovl");
    fs::create_dir(&mnt).unwrap();
    let lowers: Vec<&Path> = layers.iter().map(PathBuf::as_path).collect();
    let m = mount_overlay(&lowers, None, &mnt);
    let e = explain_json(&[mnt.join("etc/config").as_os_str()]);
    assert_eq!(rows(&e)[1], "layer 3: entry shown", "{e}");
    assert!(e["source"].as_str().unwrap().starts_with("mount "));
    m.unmount().unwrap();
}

/// A container of the store: its upper layer on top of its image's layers.
#[test]
fn explain_and_layers_of_a_container() {
    let tmp = scratch();
    let layers = build_layers(tmp.path());
    let root = build_image(tmp.path(), &layers);
    let upper = add_container(&root);
    let o = ufsd_in(&root, &["explain", "web", "/etc/motd"]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("container web: its upper layer is not at"),
        "{err}"
    );
    LayerBuilder::new(&upper, WhiteoutFormat::Overlay).file(b"etc/motd", &[b'u'; 7], 0o644);
    let e = json_of(&ufsd_in(&root, &["explain", "--json", "web", "/etc/motd"]));
    assert_eq!(e["source"], "container web");
    assert_eq!(
        rows(&e),
        vec![
            "upper: entry shown",
            "layer 4: nothing absent",
            "layer 3: nothing absent",
            "layer 2: nothing absent",
            "layer 1: entry hidden by upper (shadowed at /etc/motd)",
        ]
    );
    let a = json_of(&ufsd_in(&root, &["layers", "--json", "web"]));
    let up = layer(&a["analysis"], "upper");
    assert_eq!(
        (up["size"].as_u64(), up["changed"].as_u64()),
        (Some(7), Some(1))
    );
    assert_eq!(layer(&a["analysis"], "layer 1")["wasted"], 4100 + 50);
}
