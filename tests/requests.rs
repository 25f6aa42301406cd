//! The round trips ufsd saves stay saved: the FUSE requests the kernel sends for common
//! operations, counted from the kernel's own `fuse:fuse_request_send` tracepoint on a real
//! mount. Each test names a request that a choice in the FUSE adapter keeps away, and shows
//! that tracing saw the operation's other requests, so a silent trace cannot pass.
//!
//! These tests mount: they need root, /dev/fuse, and tracefs at /sys/kernel/tracing on
//! Linux 6.14 or later (for the tracepoint). Nothing here skips.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::process::Command;

use common::requests::RequestTrace;
use common::*;

/// Opening, reading, writing and closing files, lower and upper, with and without
/// passthrough: handles are opened with `FOPEN_NOFLUSH`, so `close` sends no `FLUSH`.
#[test]
fn closing_files_sends_no_flush() {
    for extra in [&[][..], &["-o", "nopassthrough"][..]] {
        let s = stack();
        fs::write(s.lower.join("lower.txt"), b"from below\n").unwrap();
        let _m = s.mount(extra);
        let trace = RequestTrace::start(&s.mnt);

        let mut text = String::new();
        fs::File::open(s.m("lower.txt"))
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "from below\n");
        let mut f = fs::File::create(s.m("new.txt")).unwrap();
        f.write_all(b"fresh\n").unwrap();
        drop(f);
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(s.m("lower.txt"))
            .unwrap();
        f.write_all(b"and more\n").unwrap();
        drop(f);

        let sent = trace.stop();
        assert!(
            sent.of("OPEN") >= 2 && sent.of("CREATE") == 1,
            "{extra:?}: the trace missed the opens: {sent:?}"
        );
        assert_eq!(sent.of("FLUSH"), 0, "{extra:?}: close sent FLUSH: {sent:?}");
        assert_eq!(
            fs::read(s.upper.join("lower.txt")).unwrap(),
            b"from below\nand more\n",
            "{extra:?}"
        );
        assert_eq!(fs::read(s.upper.join("new.txt")).unwrap(), b"fresh\n");
    }
}

/// Directory reads send no `OPENDIR` or `RELEASEDIR` (the daemon answers `OPENDIR` with
/// ENOSYS once), and a second listing of an unchanged directory is served by the kernel.
#[test]
fn listing_a_directory_twice_sends_one_listing() {
    let s = stack();
    for i in 0..50 {
        fs::write(s.lower.join(format!("f{i}")), b"x").unwrap();
    }
    let _m = s.mount(&[]);
    let names = || fs::read_dir(&s.mnt).unwrap().count();
    // The first OPENDIR is where the daemon says ENOSYS; the traces start after it.
    assert_eq!(names(), 50);
    fs::write(s.m("f50"), b"y").unwrap();

    let trace = RequestTrace::start(&s.mnt);
    assert_eq!(names(), 51);
    let first = trace.stop();
    assert!(
        first.of("READDIR") + first.of("READDIRPLUS") >= 1,
        "the listing after a change did not reach the daemon: {first:?}"
    );
    assert_eq!(first.of("OPENDIR") + first.of("RELEASEDIR"), 0, "{first:?}");

    let trace = RequestTrace::start(&s.mnt);
    assert_eq!(names(), 51);
    let second = trace.stop();
    assert_eq!(
        second.of("READDIR") + second.of("READDIRPLUS") + second.of("OPENDIR"),
        0,
        "the second listing went to the daemon again: {second:?}"
    );
}

/// `find` over a fresh mount of a tree of directories sends no `LOOKUP`: the first listing
/// batch of each directory carries its subdirectories with their attributes.
#[test]
fn find_on_a_fresh_mount_sends_no_lookup() {
    let s = stack();
    for a in 0..4 {
        for b in 0..4 {
            let d = s.lower.join(format!("a{a}/b{b}"));
            fs::create_dir_all(&d).unwrap();
            for f in 0..10 {
                fs::write(d.join(format!("f{f}")), b"z").unwrap();
            }
        }
    }
    let _m = s.mount(&[]);
    let trace = RequestTrace::start(&s.mnt);
    let out = Command::new("find").arg(&s.mnt).output().unwrap();
    let sent = trace.stop();
    assert!(out.status.success());
    assert_eq!(
        out.stdout.iter().filter(|&&c| c == b'\n').count(),
        1 + 4 + 16 + 160
    );
    assert!(
        sent.of("READDIRPLUS") >= 21,
        "the trace missed the listings: {sent:?}"
    );
    assert_eq!(sent.of("LOOKUP"), 0, "{sent:?}");
}

/// Names looked up once, present or absent, are not looked up again: the kernel caches
/// entries, negative ones included, for the entry timeout (the layers below change only
/// through the daemon).
#[test]
fn a_second_lookup_of_a_name_present_or_absent_sends_nothing() {
    let s = stack();
    fs::write(s.lower.join("here"), b"x").unwrap();
    let _m = s.mount(&[]);
    let look = || {
        assert!(fs::symlink_metadata(s.m("here")).is_ok());
        assert!(fs::symlink_metadata(s.m("absent")).is_err());
    };
    let trace = RequestTrace::start(&s.mnt);
    look();
    let first = trace.stop();
    assert_eq!(first.of("LOOKUP"), 2, "the first lookups: {first:?}");
    let trace = RequestTrace::start(&s.mnt);
    look();
    look();
    let again = trace.stop();
    assert_eq!(
        again.of("LOOKUP"),
        0,
        "names were looked up again: {again:?}"
    );
}
