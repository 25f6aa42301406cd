//! `ufsd ps` and `ufsd rm`: listing and removing containers.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;

use super::table::{ago, format_rows, render};
use crate::container::{self, Container, Target};
use crate::image::rfc3339;
use crate::image::store::Store;

/// List containers.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    ufsd ps                          # CONTAINER  IMAGE  CREATED  STATUS  MOUNTPOINT\n  \
    ufsd ps --json | jq -r '.[] | select(.mounted) | .name'\n  \
    ufsd ps --format '{{.Name}} {{.Mountpoint}}'\n\n\
    Every container of the store is listed, mounted or not (docker's ps -a). STATUS is\n\
    \"mounted\" while a daemon serves the container; MOUNTPOINT is where it is or was\n\
    last mounted.")]
pub struct PsArgs {
    /// JSON for scripts: an array of {name, image, image_id, created, mounted, mountpoint}.
    #[arg(long)]
    json: bool,
    /// Only container names, one per line.
    #[arg(short, long)]
    quiet: bool,
    /// One line per container from a template: {{.Name}}, {{.Image}}, {{.ImageID}},
    /// {{.Created}}, {{.Mounted}}, {{.Mountpoint}}; \t is a tab.
    #[arg(long, value_name = "TEMPLATE", conflicts_with_all = ["json", "quiet"])]
    format: Option<String>,
}

/// Remove containers.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    ufsd rm 3f2a9c1b5e7d\n  \
    ufsd rm -f /mnt/c                # unmount first, then remove\n\n\
    Removes the container's record and its upper and work directories; its image may be\n\
    removed afterwards. A mounted container is refused unless -f, which unmounts it first\n\
    (and fails if the mount is busy).")]
pub struct RmArgs {
    /// Unmount a mounted container first.
    #[arg(short, long)]
    force: bool,
    /// The containers: names, unique prefixes, or their mount points.
    #[arg(required = true, value_name = "CONTAINER|MOUNTPOINT")]
    containers: Vec<String>,
}

fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("write to stdout")
}

pub fn ps(root: &Path, a: PsArgs) -> Result<ExitCode> {
    let store = Store::open(root)?;
    let list = container::list(&store)?;
    if a.quiet {
        let names: String = list.iter().map(|c| format!("{}\n", c.name())).collect();
        return print(&names).map(|()| ExitCode::SUCCESS);
    }
    let image_of = |c: &Container| {
        c.record.image_name.clone().unwrap_or_else(|| {
            let hex = c.record.image.trim_start_matches("sha256:");
            hex[..hex.len().min(12)].to_string()
        })
    };
    if a.json || a.format.is_some() {
        let rows: Vec<_> = list
            .iter()
            .map(|c| {
                json!({
                    "name": c.name(),
                    "image": image_of(c),
                    "image_id": c.record.image,
                    "created": c.record.created,
                    "mounted": c.is_mounted(),
                    "mountpoint": c.record.mountpoint,
                })
            })
            .collect();
        let text = match &a.format {
            Some(t) => format_rows(t, &rows).map_err(anyhow::Error::msg)?,
            None => format!("{}\n", serde_json::to_string_pretty(&rows)?),
        };
        return print(&text).map(|()| ExitCode::SUCCESS);
    }
    let now = rfc3339::now();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            vec![
                c.name().to_string(),
                image_of(c),
                ago(c.record.created.as_deref(), now),
                if c.is_mounted() {
                    "mounted"
                } else {
                    "not mounted"
                }
                .to_string(),
                c.record.mountpoint.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print(&render(
        &["CONTAINER", "IMAGE", "CREATED", "STATUS", "MOUNTPOINT"],
        &rows,
    ))
    .map(|()| ExitCode::SUCCESS)
}

/// The container an `rm` argument names: a name or prefix, or the mount point of one.
fn find(store: &Store, arg: &str) -> Result<Container> {
    if !container::looks_like_path(arg) {
        match container::find(store, arg) {
            Ok(c) => return Ok(c),
            Err(container::ContainerError::NoSuchContainer(_)) if Path::new(arg).is_dir() => {}
            Err(e) => return Err(e.into()),
        }
    }
    match Target::mount(Path::new(arg), Some(store))?.container {
        Some(c) => Ok(c),
        None => bail!("{arg} is a ufsd mount but not of a container of this store"),
    }
}

pub fn rm(root: &Path, a: RmArgs) -> Result<ExitCode> {
    let store = Store::open(root)?;
    let mut failed = false;
    for arg in &a.containers {
        let removed = find(&store, arg).and_then(|c| {
            container::remove(&store, &c, a.force)?;
            Ok(c)
        });
        match removed {
            Ok(c) => println!("{}", c.name()),
            Err(e) => {
                eprintln!("ufsd: {}", super::one_line(&e));
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
