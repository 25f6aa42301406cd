//! `ufsd tour`: a guided walk through the layer rules on a throw-away sandbox.
//!
//! The tour makes a temporary directory with its own image store, builds a two-layer image
//! there, mounts containers of it and shows lookup, shadowing, whiteouts, opaque directories,
//! copy-up, diff and commit. Every step is a shell line printed as `$ ...` and then run
//! exactly as printed (`sh -c`, with this binary first on `PATH` and `UFSD_ROOT` pointing at
//! the sandbox's store), so a reader can repeat it. The sandbox is unmounted and removed at
//! the end, on error and on Ctrl-C, unless `--keep` is given.

use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::mount::{self, mountinfo};
use crate::sys;

/// A guided tour of union filesystem rules on a sample image (nothing outside a temporary
/// directory is touched).
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    ufsd tour             # runs straight through and cleans up\n  \
    ufsd tour --pause     # waits for Enter between chapters\n  \
    ufsd tour --keep      # leaves the sandbox (and the last container mounted) to explore\n\n\
    Every step is printed as a '$ ...' line, then run exactly as printed.")]
pub struct TourArgs {
    /// Leave the sandbox and its last container mounted, and print how to remove them.
    #[arg(long)]
    keep: bool,
    /// Wait for Enter between chapters (only when standard input is a terminal).
    #[arg(long)]
    pause: bool,
    /// Where to make the sandbox [default: $TMPDIR or /tmp].
    #[arg(long, value_name = "DIR")]
    tmpdir: Option<PathBuf>,
}

/// The sandbox: its directory and the mount points the tour may have mounted.
struct Sandbox {
    dir: PathBuf,
    mountpoints: Vec<PathBuf>,
    cleaned: bool,
}

impl Sandbox {
    /// Unmounts what is still mounted, then removes the directory (never through a live
    /// mount). Returns a problem to report, if any.
    fn clean(&mut self) -> Option<String> {
        if self.cleaned {
            return None;
        }
        self.cleaned = true;
        for m in &self.mountpoints {
            if mountinfo::mount_at(m).is_some()
                && mount::unmount(m, false).is_err()
                && let Err(e) = mount::unmount(m, true)
            {
                return Some(format!(
                    "cannot unmount {}: {e}; leaving {}",
                    m.display(),
                    self.dir.display()
                ));
            }
        }
        let under: Vec<_> = mountinfo::read()
            .into_iter()
            .filter(|e| e.mount_point.starts_with(&self.dir))
            .collect();
        if !under.is_empty() {
            return Some(format!(
                "{} still has mounts under it; leaving it in place",
                self.dir.display()
            ));
        }
        std::fs::remove_dir_all(&self.dir)
            .err()
            .map(|e| format!("removing {}: {e}", self.dir.display()))
    }
}

/// Makes a fresh private directory `ufsd-tour.N` under `parent`.
fn make_sandbox_dir(parent: &Path) -> Result<PathBuf> {
    let seed = (std::process::id() as u64 * 1_000_003)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
    for i in 0..100u64 {
        let name = format!(
            "ufsd-tour.{:06x}",
            (seed.wrapping_add(i * 7919)) & 0xff_ffff
        );
        let dir = parent.join(name);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => bail!("cannot make a sandbox in {}: {e}", parent.display()),
        }
    }
    bail!("cannot make a sandbox in {}: names taken", parent.display())
}

/// Runs the printed steps.
struct Guide {
    dir: PathBuf,
    root: PathBuf,
    path_env: std::ffi::OsString,
    pause: bool,
}

impl Guide {
    fn chapter(&self, title: &str, words: &str) {
        if self.pause {
            print!("\n[Enter to go on] ");
            let _ = std::io::stdout().flush();
            let _ = std::io::stdin().lock().read_line(&mut String::new());
        }
        println!("\n== {title}\n");
        self.say(words);
    }

    /// Plain words, wrapped as given.
    fn say(&self, words: &str) {
        for line in words.lines() {
            println!("   {}", line.trim());
        }
        println!();
    }

    /// Prints `$ line` for a step the tour applies itself (the working directory and
    /// environment of the steps that follow).
    fn show(&self, line: &str) {
        println!("$ {line}");
    }

    /// Prints `$ line` and runs it with `sh -c` in the sandbox; fails if it fails.
    fn run(&self, line: &str) -> Result<()> {
        println!("$ {line}");
        let _ = std::io::stdout().flush();
        let status = Command::new("sh")
            .arg("-c")
            .arg(line)
            .current_dir(&self.dir)
            .env("PATH", &self.path_env)
            .env("UFSD_ROOT", &self.root)
            .env_remove("RUST_LOG")
            .status()
            .context("running sh")?;
        if !status.success() {
            bail!("the tour's step `{line}` failed ({status})");
        }
        println!();
        Ok(())
    }
}

pub fn run(a: TourArgs) -> Result<ExitCode> {
    let exe = std::env::current_exe().context("finding the ufsd binary")?;
    let bin_dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    let parent = a.tmpdir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = make_sandbox_dir(&parent)?;
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let sandbox = Arc::new(Mutex::new(Sandbox {
        dir: dir.clone(),
        mountpoints: vec![dir.join("c1"), dir.join("c2")],
        cleaned: false,
    }));
    {
        let sandbox = sandbox.clone();
        sys::process::stop_on_signals(move || {
            // The guard is held until exit so that the main thread, whose
            // current step fails once the sandbox is gone, cannot report
            // that failure and exit 1 first.
            let mut guard = sandbox.lock().unwrap_or_else(|e| e.into_inner());
            let problem = guard.clean();
            eprintln!("\nufsd tour: interrupted; sandbox removed");
            if let Some(p) = problem {
                eprintln!("ufsd tour: {p}");
            }
            std::process::exit(130);
        });
    }
    let mut path_env = bin_dir.into_os_string();
    if let Some(p) = std::env::var_os("PATH") {
        path_env.push(":");
        path_env.push(p);
    }
    let guide = Guide {
        dir: dir.clone(),
        root: dir.join("store"),
        path_env,
        pause: a.pause && std::io::stdin().is_terminal(),
    };
    println!("ufsd tour: sandbox {}", dir.display());
    let result = tour(&guide);
    let mut s = sandbox.lock().unwrap_or_else(|e| e.into_inner());
    if a.keep && result.is_ok() {
        s.cleaned = true;
        println!(
            "\nThe sandbox stays at {} (--keep). Explore, then clean up with:",
            dir.display()
        );
        println!("  cd {} && export UFSD_ROOT=$PWD/store", dir.display());
        println!("  ufsd umount c2 && cd / && rm -rf {}", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let problem = s.clean();
    if let Some(p) = &problem {
        eprintln!("ufsd tour: {p}");
    }
    result?;
    println!(
        "\nSandbox {} unmounted and removed. That was the tour.",
        dir.display()
    );
    Ok(if problem.is_some() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The tour itself: every shell line below is printed and run as is.
fn tour(g: &Guide) -> Result<()> {
    g.chapter(
        "A sandbox",
        "Everything happens in this temporary directory, with an image store of its own
        (UFSD_ROOT), so your real store is never touched.",
    );
    // The state the following steps share, as the reader would set it in a shell.
    g.show(&format!("cd {}", shell_quote(&g.dir)));
    g.show("export UFSD_ROOT=\"$PWD/store\"");
    println!();

    g.chapter(
        "Layer 1: a base image",
        "An image is a stack of layers; each layer is a tree of files. We start with a tiny
        root filesystem and import it as a one-layer image, tour:base.",
    );
    g.run(
        "mkdir -p rootfs/etc rootfs/var/cache/app && \
         echo 'VERSION=1' > rootfs/etc/os-release && \
         echo 'base-host' > rootfs/etc/hostname && \
         echo 'Welcome (from layer 1)' > rootfs/etc/motd && \
         echo 'stale' > rootfs/var/cache/app/old.cache && find rootfs -type f | sort",
    )?;
    g.run("tar -C rootfs -c . | ufsd import - tour:base -m 'the base layer'")?;

    g.chapter(
        "A container: a writable layer on top",
        "Mounting an image as a container puts an empty writable (upper) layer over the
        image's layers. The merged view at c1/ shows the union of all of them.",
    );
    g.run("mkdir c1 && ufsd mount tour:base c1 && cat c1/etc/os-release")?;

    g.chapter(
        "Copy-up",
        "Layers below the top are read-only. Writing to a file that lives in layer 1 first
        copies it up into the writable layer, then changes the copy. Layer 1 keeps its
        original.",
    );
    g.run("echo 'VERSION=2' > c1/etc/os-release && cat c1/etc/os-release")?;
    g.run("ufsd explain c1/etc/os-release")?;

    g.chapter(
        "Whiteouts",
        "Deleting a file of a lower layer cannot remove it there. Instead the writable layer
        records a whiteout: a marker that hides the name in every layer below.",
    );
    g.run("rm c1/etc/motd && ls c1/etc")?;
    g.run("ufsd explain c1/etc/motd")?;

    g.chapter(
        "Opaque directories",
        "Removing a whole directory and making it again gives an opaque directory: it starts
        empty, and nothing of the same directory in lower layers shows through.",
    );
    g.run(
        "rm -r c1/var/cache/app && mkdir c1/var/cache/app && \
         echo 'fresh' > c1/var/cache/app/new.cache && ls c1/var/cache/app",
    )?;
    g.run("ufsd explain c1/var/cache/app")?;

    g.chapter(
        "Diff and commit",
        "What the container changed is what its writable layer holds: A added, C changed,
        D deleted (docker diff's rules). Committing turns that layer into layer 2 of a new
        image, tour:v2; whiteouts and opaque directories go into the layer as markers.",
    );
    g.run("echo 'hello' > c1/etc/issue && ufsd diff c1")?;
    g.run("ufsd commit -m 'update: os-release, motd removed, fresh cache' c1 tour:v2")?;
    g.run("ufsd umount c1")?;

    g.chapter(
        "Lookup: the top layer wins",
        "Now mount tour:v2 (two read-only layers, a fresh writable layer on top). For each
        name, ufsd looks from the top layer down and shows the first layer that holds it.
        /etc/os-release is in both layers: layer 2's copy wins and shadows layer 1's.",
    );
    g.run("mkdir c2 && ufsd mount tour:v2 c2 && cat c2/etc/os-release")?;
    g.run("ufsd explain c2/etc/os-release")?;

    g.chapter(
        "Merged directories, whiteouts and opaque directories in an image",
        "Directories of the same name merge: /etc lists names from both layers, minus what
        layer 2's whiteout hides. /var/cache/app is opaque in layer 2, so layer 1's old.cache
        is gone from view.",
    );
    g.run("ls c2/etc && ufsd explain c2/etc")?;
    g.run("ufsd explain c2/etc/motd")?;
    g.run("ls c2/var/cache/app && ufsd explain c2/var/cache/app")?;

    g.chapter(
        "What each layer costs",
        "Deleting or overwriting a file in a later layer does not make an image smaller:
        layer 1 still ships the old bytes, they are just never seen. ufsd layers counts them.",
    );
    g.run("ufsd layers tour:v2")?;
    g.say(
        "More: ufsd explain --help, ufsd layers --help, docs/semantics.md. To watch copy-ups
        and whiteouts as they happen, run `ufsd trace MOUNTPOINT` in a second terminal while
        you change files (try it with --keep: the tour leaves c2 mounted).",
    );
    Ok(())
}

/// `path` quoted for sh when it needs it.
fn shell_quote(path: &Path) -> String {
    let s = path.to_string_lossy();
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+,:@".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
