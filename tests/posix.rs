//! POSIX behaviour beyond the union rules, as a local filesystem gives it: modes under a
//! umask, name and path length limits, sticky directories, set-id bits cleared on write and
//! chown, files used after unlink or rename, O_APPEND, offsets past 4 GiB, sparse files,
//! many hard links and shared mmap.
//!
//! Every scenario runs on a ufsd mount and on a kernel overlayfs mount of the same lower
//! layer (`Pair::same`), and the two lists of observations (values and errnos, as text)
//! must be equal; each test then asserts the values POSIX requires. Unprivileged steps run
//! in forked children that really drop to another uid and gid (`in_child`).
//!
//! Needs root (mounts, chown, setuid); CI runs as root.

mod common;

use std::ffi::CString;
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use common::posix::{
    Pair, cpath, describe, errno_name, fstat, fstatat, in_child, last_errno, lseek, lstat, open,
    openat, pread, pwrite, rc, res, write,
};

/// Writes a lower file with an exact mode and owner.
fn lower_file(lower: &Path, rel: &str, content: &[u8], mode: u32, uid: u32, gid: u32) {
    let p = lower.join(rel);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).unwrap();
    }
    fs::write(&p, content).unwrap();
    std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

fn lower_dir(lower: &Path, rel: &str, mode: u32, uid: u32, gid: u32) {
    let p = lower.join(rel);
    fs::create_dir_all(&p).unwrap();
    std::os::unix::fs::chown(&p, Some(uid), Some(gid)).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

fn mode_of(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn new_objects_get_the_requested_mode_under_the_umask() {
    let pair = Pair::new(
        |l| {
            lower_dir(l, "pub", 0o777, 0, 0);
            lower_dir(l, "sgid", 0o2777, 0, 5678);
        },
        &[],
    );
    let obs = pair.same(|m| {
        let m = m.to_path_buf();
        in_child(1000, 1000, 0o027, move || {
            let mut o = Vec::new();
            for dir in ["pub", "sgid"] {
                let d = m.join(dir);
                let f = cpath(&d.join("file"));
                // SAFETY: valid C strings; fds are closed at once.
                unsafe {
                    let fd = libc::open(f.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o666);
                    o.push(rc(&format!("{dir} create"), fd as i64));
                    libc::close(fd);
                    let r = libc::mkdir(cpath(&d.join("sub")).as_ptr(), 0o777);
                    o.push(rc(&format!("{dir} mkdir"), r as i64));
                    let r = libc::mkfifo(cpath(&d.join("fifo")).as_ptr(), 0o666);
                    o.push(rc(&format!("{dir} mkfifo"), r as i64));
                    let r = libc::mknod(cpath(&d.join("node")).as_ptr(), libc::S_IFIFO | 0o777, 0);
                    o.push(rc(&format!("{dir} mknod fifo"), r as i64));
                    let r = libc::mknod(cpath(&d.join("reg")).as_ptr(), libc::S_IFREG | 0o604, 0);
                    o.push(rc(&format!("{dir} mknod reg"), r as i64));
                }
                for n in ["file", "sub", "fifo", "node", "reg"] {
                    o.push(format!("{dir}/{n} {}", describe(&d.join(n))));
                }
            }
            o
        })
    });
    let expect = [
        "pub/file 100640 1000:1000",
        "pub/sub 040750 1000:1000",
        "pub/fifo 010640 1000:1000",
        "pub/node 010750 1000:1000",
        "pub/reg 100600 1000:1000",
        // A set-gid directory passes its group on, and its set-gid bit to subdirectories.
        "sgid/file 100640 1000:5678",
        "sgid/sub 042750 1000:5678",
    ];
    for e in expect {
        assert!(obs.iter().any(|l| l == e), "missing {e:?} in {obs:#?}");
    }
    // Root with umask 0 gets exactly what it asks, set-id bits included.
    pair.same(|m| {
        let m = m.to_path_buf();
        in_child(0, 0, 0, move || {
            let p = m.join("pub/suid");
            let fd = open(&p, libc::O_CREAT | libc::O_WRONLY, 0o6755);
            vec![res("create", fd.map(|_| ())), describe(&p)]
        })
    });
    assert_eq!(mode_of(&pair.ufsd.join("pub/suid")), 0o6755);
}

#[test]
fn names_over_255_bytes_get_enametoolong() {
    let pair = Pair::new(|l| lower_dir(l, "d", 0o755, 0, 0), &[]);
    let obs = pair.same(|m| {
        let d = m.join("d");
        let ok = "a".repeat(255);
        let long = "b".repeat(256);
        let dir255 = "c".repeat(255);
        vec![
            res("create 255", fs::write(d.join(&ok), "x").map_err(e)),
            res("stat 255", lstat(&d.join(&ok)).map(|s| s.st_size)),
            res("create 256", fs::write(d.join(&long), "x").map_err(e)),
            res("stat 256", lstat(&d.join(&long)).map(|s| s.st_size)),
            res("mkdir 256", fs::create_dir(d.join(&long)).map_err(e)),
            res(
                "symlink 256",
                std::os::unix::fs::symlink("t", d.join(&long)).map_err(e),
            ),
            res(
                "link 256",
                fs::hard_link(d.join(&ok), d.join(&long)).map_err(e),
            ),
            res(
                "rename to 256",
                fs::rename(d.join(&ok), d.join(&long)).map_err(e),
            ),
            res("mkdir 255", fs::create_dir(d.join(&dir255)).map_err(e)),
            res(
                "rename 255",
                fs::rename(d.join(&ok), d.join(&dir255).join(&ok)).map_err(e),
            ),
            res("read 255", fs::read(d.join(&dir255).join(&ok)).map_err(e)),
        ]
    });
    assert_eq!(obs[0], "create 255: ()");
    assert_eq!(obs[2], "create 256: ENAMETOOLONG");
    assert!(
        obs[3..8].iter().all(|l| l.ends_with("ENAMETOOLONG")),
        "{obs:#?}"
    );
}

fn e(err: std::io::Error) -> i32 {
    err.raw_os_error().unwrap_or(-1)
}

/// Opens `root`, then each name of `chain` in turn relative to the last, creating missing
/// directories when `create` is set. Never builds a path string longer than one name.
fn walk_at(root: &Path, chain: &[String], create: bool) -> Result<std::os::fd::OwnedFd, i32> {
    let mut fd = open(root, libc::O_DIRECTORY | libc::O_RDONLY, 0)?;
    for name in chain {
        if create {
            let c = CString::new(name.as_bytes()).unwrap();
            // SAFETY: valid fd and C string.
            let r = unsafe { libc::mkdirat(fd.as_raw_fd(), c.as_ptr(), 0o755) };
            if r < 0 && last_errno() != libc::EEXIST {
                return Err(last_errno());
            }
        }
        fd = openat(&fd, name.as_bytes(), libc::O_DIRECTORY | libc::O_RDONLY, 0)?;
    }
    Ok(fd)
}

#[test]
fn paths_deeper_than_path_max_work_through_relative_operations() {
    // 24 levels of 200-byte names: about 4,800 bytes, past PATH_MAX (4096).
    let chain: Vec<String> = (0..24)
        .map(|i| format!("{i:02}{}", "d".repeat(198)))
        .collect();
    let more: Vec<String> = (0..24)
        .map(|i| format!("{i:02}{}", "e".repeat(198)))
        .collect();
    let pair = Pair::new(
        |l| {
            let fd = walk_at(l, &chain, true).unwrap();
            let f = openat(&fd, b"bottom", libc::O_CREAT | libc::O_WRONLY, 0o644).unwrap();
            write(&f, b"lower bottom\n").unwrap();
        },
        &[],
    );
    let obs = pair.same(|m| {
        let mut o = Vec::new();
        let fd = walk_at(m, &chain, false).unwrap();
        let f = openat(&fd, b"bottom", libc::O_RDONLY, 0).unwrap();
        o.push(res("read lower", pread(&f, 64, 0).map(String::from_utf8)));
        // A write copies up the file and all 24 parents.
        let f = openat(&fd, b"bottom", libc::O_WRONLY | libc::O_APPEND, 0).unwrap();
        o.push(res("append", write(&f, b"appended\n")));
        // Deeper still, a new chain, a file at its end, renamed and read back.
        let deep = walk_at(m, &[chain.clone(), more.clone()].concat(), true).unwrap();
        let g = openat(&deep, b"new", libc::O_CREAT | libc::O_WRONLY, 0o600).unwrap();
        o.push(res("write deep", write(&g, b"deep data\n")));
        let (a, b) = (
            CString::new("new").unwrap(),
            CString::new("renamed").unwrap(),
        );
        // SAFETY: valid fds and C strings.
        let r = unsafe { libc::renameat(deep.as_raw_fd(), a.as_ptr(), fd.as_raw_fd(), b.as_ptr()) };
        o.push(rc("renameat up 24 levels", r as i64));
        let g = openat(&fd, b"renamed", libc::O_RDONLY, 0).unwrap();
        o.push(res("read renamed", pread(&g, 64, 0).map(String::from_utf8)));
        o.push(res(
            "stat bottom",
            fstatat(&fd, b"bottom").map(|s| (s.st_size, s.st_mode)),
        ));
        // The kernel refuses the full path string itself.
        let mut full = m.to_path_buf();
        for c in &chain {
            full.push(c);
        }
        o.push(res(
            "stat by full path",
            lstat(&full.join("bottom")).map(|_| ()),
        ));
        o
    });
    assert_eq!(obs[0], r#"read lower: Ok("lower bottom\n")"#);
    assert_eq!(obs[4], r#"read renamed: Ok("deep data\n")"#);
    assert_eq!(obs[6], "stat by full path: ENAMETOOLONG");
    // The copy-up really reached the upper layer, 24 levels down.
    let fd = walk_at(&pair.ufsd_upper, &chain, false).unwrap();
    let f = openat(&fd, b"bottom", libc::O_RDONLY, 0).unwrap();
    assert_eq!(pread(&f, 64, 0).unwrap(), b"lower bottom\nappended\n");
}

#[test]
fn sticky_directories_protect_other_users_entries() {
    let pair = Pair::new(
        |l| {
            lower_dir(l, "tmp", 0o1777, 0, 0);
            lower_file(l, "tmp/of_1001", b"1001\n", 0o666, 1001, 1001);
            lower_file(l, "tmp/of_1002", b"1002\n", 0o666, 1002, 1002);
            lower_file(l, "tmp/other_1001", b"1001 again\n", 0o666, 1001, 1001);
            lower_dir(l, "mine", 0o1777, 1003, 1003);
            lower_file(l, "mine/of_1001", b"1001\n", 0o666, 1001, 1001);
        },
        &[],
    );
    let obs = pair.same(|m| {
        let m = m.to_path_buf();
        let mut o = in_child(1002, 1002, 0o022, {
            let m = m.clone();
            move || {
                let t = m.join("tmp");
                vec![
                    res(
                        "1002 unlink 1001's",
                        fs::remove_file(t.join("of_1001")).map_err(e),
                    ),
                    res(
                        "1002 rename 1001's",
                        fs::rename(t.join("of_1001"), t.join("x")).map_err(e),
                    ),
                    res(
                        "1002 rename own over 1001's",
                        fs::rename(t.join("of_1002"), t.join("other_1001")).map_err(e),
                    ),
                    res(
                        "1002 write 1001's (mode 0666)",
                        fs::write(t.join("of_1001"), "w").map_err(e),
                    ),
                    res(
                        "1002 rename own",
                        fs::rename(t.join("of_1002"), t.join("y")).map_err(e),
                    ),
                    res("1002 unlink own", fs::remove_file(t.join("y")).map_err(e)),
                ]
            }
        });
        o.extend(in_child(1003, 1003, 0o022, {
            let m = m.clone();
            move || {
                vec![res(
                    "dir owner unlinks 1001's",
                    fs::remove_file(m.join("mine/of_1001")).map_err(e),
                )]
            }
        }));
        o.extend(in_child(1001, 1001, 0o022, move || {
            vec![res(
                "owner renames own",
                fs::rename(m.join("tmp/other_1001"), m.join("tmp/z")).map_err(e),
            )]
        }));
        o
    });
    assert_eq!(
        obs,
        [
            "1002 unlink 1001's: EPERM",
            "1002 rename 1001's: EPERM",
            "1002 rename own over 1001's: EPERM",
            "1002 write 1001's (mode 0666): ()",
            "1002 rename own: ()",
            "1002 unlink own: ()",
            "dir owner unlinks 1001's: ()",
            "owner renames own: ()",
        ]
    );
}

#[test]
fn set_id_bits_are_cleared_on_write_truncate_and_chown() {
    let pair = Pair::new(
        |l| {
            for n in ["w", "t", "c", "root_w"] {
                lower_file(l, n, b"payload\n", 0o6775, 1001, 1001);
            }
            // Set-gid without group execute is not a privilege: the kernel keeps it.
            lower_file(l, "g_noexec", b"payload\n", 0o2764, 1001, 1001);
        },
        &[],
    );
    let obs = pair.same(|m| {
        let m = m.to_path_buf();
        let mut o = in_child(1001, 1001, 0o022, {
            let m = m.clone();
            move || {
                let mut o = Vec::new();
                let f = open(&m.join("w"), libc::O_WRONLY, 0).unwrap();
                o.push(res("write", pwrite(&f, b"X", 0)));
                drop(f);
                let f = open(&m.join("g_noexec"), libc::O_WRONLY, 0).unwrap();
                o.push(res("write g_noexec", pwrite(&f, b"X", 0)));
                drop(f);
                let c = cpath(&m.join("t"));
                // SAFETY: a valid C string.
                o.push(rc("truncate", unsafe { libc::truncate(c.as_ptr(), 3) } as i64));
                let c = cpath(&m.join("c"));
                // SAFETY: a valid C string.
                o.push(rc(
                    "chown own gid",
                    unsafe { libc::chown(c.as_ptr(), u32::MAX, 1001) } as i64,
                ));
                // SAFETY: a valid C string.
                o.push(rc(
                    "chown to root",
                    unsafe { libc::chown(c.as_ptr(), 0, 0) } as i64,
                ));
                o
            }
        });
        // Root (CAP_FSETID) keeps the bits when it writes.
        let f = open(&m.join("root_w"), libc::O_WRONLY, 0).unwrap();
        o.push(res("root write", pwrite(&f, b"X", 0)));
        drop(f);
        for n in ["w", "g_noexec", "t", "c", "root_w"] {
            o.push(format!("{n} {}", describe(&m.join(n))));
        }
        o
    });
    let expect = [
        "w 100775 1001:1001",
        "g_noexec 102764 1001:1001",
        "t 100775 1001:1001",
        "c 100775 1001:1001",
        "root_w 106775 1001:1001",
        "chown to root: EPERM",
    ];
    for x in expect {
        assert!(obs.iter().any(|l| l == x), "missing {x:?} in {obs:#?}");
    }
}

#[test]
fn open_files_survive_unlink_and_rename_over_them() {
    let pair = Pair::new(
        |l| {
            lower_file(l, "lower_a", b"lower a\n", 0o644, 0, 0);
            lower_file(l, "lower_target", b"old target\n", 0o644, 0, 0);
        },
        &[],
    );
    let obs = pair.same(|m| {
        let mut o = Vec::new();
        fs::write(m.join("upper_b"), "upper b\n").unwrap();
        let a = open(&m.join("lower_a"), libc::O_RDWR, 0).unwrap();
        let b = open(&m.join("upper_b"), libc::O_RDWR, 0).unwrap();
        o.push(res(
            "unlink a",
            fs::remove_file(m.join("lower_a")).map_err(e),
        ));
        o.push(res(
            "unlink b",
            fs::remove_file(m.join("upper_b")).map_err(e),
        ));
        o.push(res("stat a", lstat(&m.join("lower_a")).map(|_| ())));
        o.push(res("write a", pwrite(&a, b"A", 0)));
        o.push(res("write b", pwrite(&b, b"B", 0)));
        o.push(res("read a", pread(&a, 64, 0).map(String::from_utf8)));
        o.push(res("read b", pread(&b, 64, 0).map(String::from_utf8)));
        o.push(res("nlink a", fstat(&a).map(|s| s.st_nlink)));
        o.push(res("nlink b", fstat(&b).map(|s| s.st_nlink)));
        // Rename over a file held open: the descriptor keeps the old file.
        let t = open(&m.join("lower_target"), libc::O_RDONLY, 0).unwrap();
        fs::write(m.join("src"), "new target\n").unwrap();
        o.push(res(
            "rename over",
            fs::rename(m.join("src"), m.join("lower_target")).map_err(e),
        ));
        o.push(res("old fd", pread(&t, 64, 0).map(String::from_utf8)));
        o.push(res(
            "path",
            fs::read_to_string(m.join("lower_target")).map_err(e),
        ));
        o
    });
    assert_eq!(obs[2], "stat a: ENOENT");
    assert_eq!(obs[5], r#"read a: Ok("Aower a\n")"#);
    assert_eq!(obs[6], r#"read b: Ok("Bpper b\n")"#);
    assert_eq!(obs[10], r#"old fd: Ok("old target\n")"#);
    assert_eq!(obs[11], r#"path: "new target\n""#);
}

#[test]
fn o_append_writes_always_land_at_the_end() {
    let pair = Pair::new(|l| lower_file(l, "log", b"base\n", 0o644, 0, 0), &[]);
    let obs = pair.same(|m| {
        let a = open(&m.join("log"), libc::O_WRONLY | libc::O_APPEND, 0).unwrap();
        let b = open(&m.join("log"), libc::O_WRONLY | libc::O_APPEND, 0).unwrap();
        let mut o = Vec::new();
        for i in 0..20 {
            let fd = if i % 2 == 0 { &a } else { &b };
            // pwrite on an O_APPEND descriptor appends too (Linux ignores the offset).
            o.push(res(
                "pwrite",
                pwrite(fd, format!("line {i}\n").as_bytes(), 0),
            ));
        }
        o.push(res("size", lstat(&m.join("log")).map(|s| s.st_size)));
        o.push(format!("{:?}", fs::read_to_string(m.join("log")).unwrap()));
        o
    });
    let mut want = "base\n".to_string();
    for i in 0..20 {
        want.push_str(&format!("line {i}\n"));
    }
    assert_eq!(obs.last().unwrap(), &format!("{want:?}"));
}

const GIB: u64 = 1 << 30;

#[test]
fn offsets_past_4_gib_and_sparse_files() {
    let pair = Pair::new(
        |l| {
            let f = fs::File::create(l.join("sparse5g")).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&f, b"at five GiB", 5 * GIB).unwrap();
        },
        &["-o", "nopassthrough"],
    );
    let obs = pair.same(|m| {
        let mut o = Vec::new();
        let f = open(&m.join("sparse5g"), libc::O_RDONLY, 0).unwrap();
        o.push(res("size", fstat(&f).map(|s| s.st_size)));
        o.push(res("SEEK_DATA 0", lseek(&f, 0, libc::SEEK_DATA)));
        o.push(res("SEEK_HOLE 0", lseek(&f, 0, libc::SEEK_HOLE)));
        o.push(res(
            "read 5G",
            pread(&f, 11, 5 * GIB).map(String::from_utf8),
        ));
        o.push(res("read hole", pread(&f, 4, GIB).map(|v| v == [0; 4])));
        // Copy-up of the 5 GiB sparse file by a write past 6 GiB.
        let w = open(&m.join("sparse5g"), libc::O_RDWR, 0).unwrap();
        o.push(res("pwrite 6G", pwrite(&w, b"six", 6 * GIB)));
        o.push(res("size after", fstat(&w).map(|s| s.st_size)));
        o.push(res(
            "read 5G after",
            pread(&w, 11, 5 * GIB).map(String::from_utf8),
        ));
        o.push(res("read 6G", pread(&w, 3, 6 * GIB).map(String::from_utf8)));
        o.push(res(
            "SEEK_DATA 5G-1",
            lseek(&w, 5 * GIB as i64 - 1, libc::SEEK_DATA).map(|x| x / 4096 * 4096),
        ));
        // A new file with data only past 4 GiB.
        let n = open(&m.join("new"), libc::O_CREAT | libc::O_RDWR, 0o644).unwrap();
        o.push(res("pwrite 4G+1", pwrite(&n, b"past4g", 4 * GIB + 1)));
        o.push(res(
            "read 4G+1",
            pread(&n, 6, 4 * GIB + 1).map(String::from_utf8),
        ));
        o.push(res("SEEK_HOLE 0 new", lseek(&n, 0, libc::SEEK_HOLE)));
        o
    });
    assert_eq!(obs[3], r#"read 5G: Ok("at five GiB")"#);
    assert_eq!(obs[8], r#"read 6G: Ok("six")"#);
    // The copy-up kept the holes: a few blocks, not 6 GiB.
    let up = fs::metadata(pair.ufsd_upper.join("sparse5g")).unwrap();
    assert_eq!(up.len(), 6 * GIB + 3);
    assert!(
        up.blocks() * 512 < (1 << 20),
        "copy-up filled holes: {} blocks",
        up.blocks()
    );
}

#[test]
fn a_thousand_hard_links() {
    let pair = Pair::new(
        |l| lower_file(l, "lowerfile", b"shared\n", 0o644, 0, 0),
        &[],
    );
    let obs = pair.same(|m| {
        let mut o = Vec::new();
        fs::write(m.join("upperfile"), "upper\n").unwrap();
        fs::create_dir(m.join("links")).unwrap();
        for src in ["upperfile", "lowerfile"] {
            let mut fails = 0;
            for i in 0..1000 {
                if fs::hard_link(m.join(src), m.join(format!("links/{src}.{i}"))).is_err() {
                    fails += 1;
                }
            }
            o.push(format!("{src}: {fails} failed links"));
            let st = lstat(&m.join(src)).unwrap();
            o.push(format!("{src}: nlink {}", st.st_nlink));
            let same = (0..1000)
                .filter(|i| lstat(&m.join(format!("links/{src}.{i}"))).unwrap().st_ino == st.st_ino)
                .count();
            o.push(format!("{src}: {same} links share the inode"));
            for i in 0..500 {
                fs::remove_file(m.join(format!("links/{src}.{i}"))).unwrap();
            }
            o.push(res(
                &format!("{src}: nlink after 500 unlinks"),
                lstat(&m.join(src)).map(|s| s.st_nlink),
            ));
            o.push(res(
                &format!("{src}: write link 999"),
                fs::write(m.join(format!("links/{src}.999")), "rewritten\n").map_err(e),
            ));
            o.push(res(src, fs::read_to_string(m.join(src)).map_err(e)));
        }
        o
    });
    assert!(
        obs.contains(&"upperfile: nlink 1001".to_string()),
        "{obs:#?}"
    );
    assert!(
        obs.contains(&"lowerfile: 1000 links share the inode".to_string()),
        "{obs:#?}"
    );
    assert!(
        obs.contains(&"lowerfile: \"rewritten\\n\"".to_string()),
        "{obs:#?}"
    );
}

fn mmap_scenario(m: &Path) -> Vec<String> {
    let mut o = Vec::new();
    fs::write(m.join("upper"), vec![b'.'; 8192]).unwrap();
    for name in ["lower", "upper"] {
        let p = m.join(name);
        let f = open(&p, libc::O_RDWR, 0).unwrap();
        let reader = open(&p, libc::O_RDONLY, 0).unwrap();
        // SAFETY: a fresh shared mapping of 8 KiB of a file that long, unmapped below.
        unsafe {
            let addr = libc::mmap(
                std::ptr::null_mut(),
                8192,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(
                addr,
                libc::MAP_FAILED,
                "mmap {}: {}",
                name,
                errno_name(last_errno())
            );
            let s = std::slice::from_raw_parts_mut(addr.cast::<u8>(), 8192);
            s[..6].copy_from_slice(b"mapped");
            s[4096..4101].copy_from_slice(b"page2");
            o.push(res(
                &format!("{name} read before msync"),
                pread(&reader, 6, 0).map(String::from_utf8),
            ));
            o.push(rc(
                &format!("{name} msync"),
                libc::msync(addr, 8192, libc::MS_SYNC) as i64,
            ));
            libc::munmap(addr, 8192);
        }
        drop(f);
        drop(reader);
        let all = fs::read(&p).unwrap();
        o.push(format!(
            "{name} after reopen: {:?} {:?} len {}",
            String::from_utf8_lossy(&all[..6]),
            String::from_utf8_lossy(&all[4096..4101]),
            all.len()
        ));
    }
    o
}

#[test]
fn shared_mmap_writes_are_seen_by_read() {
    for args in [&[][..], &["-o", "nopassthrough"][..]] {
        let pair = Pair::new(
            |l| lower_file(l, "lower", &vec![b'-'; 8192], 0o644, 0, 0),
            args,
        );
        let obs = pair.same(mmap_scenario);
        assert!(obs.iter().all(|l| !l.contains(": E")), "{args:?}: {obs:#?}");
        assert_eq!(
            obs[0], r#"lower read before msync: Ok("mapped")"#,
            "{args:?}"
        );
        assert_eq!(
            obs[2], r#"lower after reopen: "mapped" "page2" len 8192"#,
            "{args:?}"
        );
        // On disk in the upper layer, and the lower layer untouched.
        let up = fs::read(pair.ufsd_upper.join("lower")).unwrap();
        assert_eq!(&up[..6], b"mapped");
        assert_eq!(
            fs::read(pair.lower.join("lower")).unwrap(),
            vec![b'-'; 8192]
        );
    }
}

/// A `system.posix_acl_access` value (version 2, then tag, permissions and id per entry)
/// of five entries: the owner, user 1002, the owning group, the mask and others, with the
/// permissions given in that order.
fn acl_naming_1002(perms: [u16; 5]) -> Vec<u8> {
    const TAGS: [u16; 5] = [0x01, 0x02, 0x04, 0x10, 0x20];
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm) in TAGS.into_iter().zip(perms) {
        let id = if tag == 0x02 { 1002 } else { u32::MAX };
        v.extend(tag.to_le_bytes());
        v.extend(perm.to_le_bytes());
        v.extend(id.to_le_bytes());
    }
    v
}

#[test]
fn posix_acls_decide_access_as_the_modes_do() {
    let access = b"system.posix_acl_access";
    let pair = Pair::new(
        |l| {
            // 1002 may read a file its mode keeps from everyone but the owner...
            lower_file(l, "granted", b"granted\n", 0o640, 1001, 1001);
            let grant = acl_naming_1002([6, 4, 0, 4, 0]);
            common::set_xattr(&l.join("granted"), access, &grant);
            // ...and the same after a chmod narrows the mask (on the copied-up file).
            lower_file(l, "narrowed", b"narrowed\n", 0o640, 1001, 1001);
            common::set_xattr(&l.join("narrowed"), access, &grant);
            // 1002 may not read a file its mode lets everyone read.
            lower_file(l, "denied", b"denied\n", 0o644, 1001, 1001);
            let deny = acl_naming_1002([6, 0, 4, 4, 4]);
            common::set_xattr(&l.join("denied"), access, &deny);
            // 1002 may list a directory only its owner may by mode.
            lower_dir(l, "dir", 0o750, 1001, 1001);
            lower_file(l, "dir/inside", b"inside\n", 0o644, 1001, 1001);
            let list = acl_naming_1002([7, 5, 0, 5, 0]);
            common::set_xattr(&l.join("dir"), access, &list);
        },
        &[],
    );
    let obs = pair.same(|m| {
        let m = m.to_path_buf();
        let mut o = vec![res(
            "granted's ACL",
            common::get_xattr(&m.join("granted"), access).map(|v| v.len()),
        )];
        fs::set_permissions(m.join("narrowed"), fs::Permissions::from_mode(0o600)).unwrap();
        o.push(format!("narrowed {}", describe(&m.join("narrowed"))));
        let read_as = |uid: u32| {
            let m = m.clone();
            in_child(uid, uid, 0o022, move || {
                ["granted", "narrowed", "denied", "dir/inside"]
                    .iter()
                    .map(|n| {
                        res(
                            &format!("{uid} reads {n}"),
                            fs::read_to_string(m.join(n)).map_err(e),
                        )
                    })
                    .chain([
                        res(
                            &format!("{uid} writes granted"),
                            fs::write(m.join("granted"), "x").map_err(e),
                        ),
                        res(
                            &format!("{uid} lists dir"),
                            fs::read_dir(m.join("dir")).map(|d| d.count()).map_err(e),
                        ),
                    ])
                    .collect()
            })
        };
        o.extend(read_as(1002));
        o.extend(read_as(1003));
        o
    });
    assert_eq!(
        obs,
        [
            "granted's ACL: 44",
            "narrowed 100600 1001:1001",
            r#"1002 reads granted: "granted\n""#,
            "1002 reads narrowed: EACCES",
            "1002 reads denied: EACCES",
            r#"1002 reads dir/inside: "inside\n""#,
            "1002 writes granted: EACCES",
            "1002 lists dir: 1",
            "1003 reads granted: EACCES",
            "1003 reads narrowed: EACCES",
            r#"1003 reads denied: "denied\n""#,
            "1003 reads dir/inside: EACCES",
            "1003 writes granted: EACCES",
            "1003 lists dir: EACCES",
        ]
    );
}

#[test]
fn new_objects_inherit_a_default_acl_instead_of_the_umask() {
    let default = b"system.posix_acl_default";
    let pair = Pair::new(
        |l| {
            lower_dir(l, "dd", 0o755, 0, 0);
            // Names that exist below: created again over their whiteouts, in the work dir.
            lower_file(l, "dd/old", b"old\n", 0o644, 0, 0);
            lower_dir(l, "dd/olddir", 0o755, 0, 0);
            common::set_xattr(&l.join("dd"), default, &acl_naming_1002([7, 6, 5, 7, 5]));
        },
        &[],
    );
    let obs = pair.same(|m| {
        let d = m.join("dd");
        let mut o = vec![
            res("unlink old", fs::remove_file(d.join("old")).map_err(e)),
            res("rmdir olddir", fs::remove_dir(d.join("olddir")).map_err(e)),
        ];
        o.extend(in_child(0, 0, 0o077, {
            let d = d.clone();
            move || {
                let mut o = Vec::new();
                for (n, mode) in [("new", 0o666), ("old", 0o640)] {
                    let f = open(&d.join(n), libc::O_CREAT | libc::O_WRONLY, mode);
                    o.push(res(&format!("create {n}"), f.map(drop)));
                }
                for (n, mode) in [("sub", 0o777), ("olddir", 0o755), ("sub/deeper", 0o777)] {
                    let c = cpath(&d.join(n));
                    // SAFETY: a valid C string.
                    o.push(rc(
                        &format!("mkdir {n}"),
                        unsafe { libc::mkdir(c.as_ptr(), mode) } as i64,
                    ));
                }
                let c = cpath(&d.join("fifo"));
                // SAFETY: a valid C string.
                o.push(rc("mkfifo", unsafe { libc::mkfifo(c.as_ptr(), 0o666) } as i64));
                o
            }
        }));
        for n in ["new", "old", "sub", "olddir", "sub/deeper", "fifo"] {
            let p = d.join(n);
            let acls = [b"system.posix_acl_access".as_slice(), default]
                .map(|x| format!("{:?}", common::get_xattr(&p, x).map(|v| v.len())));
            o.push(format!("{n} {} {}", describe(&p), acls.join(" ")));
        }
        o
    });
    // The umask (077) would have left 0600 and 0700; the ACL's mask takes the group bits.
    for x in [
        "new 100664 0:0 Ok(44) Err(61)",
        "old 100640 0:0 Ok(44) Err(61)",
        "sub 040775 0:0 Ok(44) Ok(44)",
        "olddir 040755 0:0 Ok(44) Ok(44)",
        "sub/deeper 040775 0:0 Ok(44) Ok(44)",
        "fifo 010664 0:0 Ok(44) Err(61)",
    ] {
        assert!(obs.iter().any(|l| l == x), "missing {x:?} in {obs:#?}");
    }
}
