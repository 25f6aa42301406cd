//! `ufsd images`, `tag`, `rmi`, `history`, `inspect`: listing and managing the images of
//! the store. Each calls one [`Store`] method and formats its answer: an aligned table for
//! people, `--json` or `--format` for scripts.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::json;

use super::table::{ago, format_rows, human_size, render, truncate};
use crate::image::reference::Reference;
use crate::image::rfc3339;
use crate::image::store::{Image, Store};

/// List images.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    ufsd images                      # REPOSITORY  TAG  IMAGE ID  CREATED  SIZE\n  \
    ufsd images base                 # only the tags of the repository base\n  \
    ufsd images --json | jq -r '.[].id'\n  \
    ufsd images --format '{{.Repository}}:{{.Tag}} {{.Size}}'\n\n\
    SIZE is the sum of the image's layer blobs as stored (compressed), not the\n\
    unpacked size docker shows. Images without a tag are listed as <none>.")]
pub struct ImagesArgs {
    /// Only this repository (NAME or NAME:TAG).
    repository: Option<String>,
    /// JSON for scripts: an array of {repository, tag, id, manifest_digest, created, size}.
    #[arg(long)]
    json: bool,
    /// One line per image from a template: {{.Repository}}, {{.Tag}}, {{.ID}},
    /// {{.ManifestDigest}}, {{.Created}}, {{.Size}} (bytes); \t is a tab.
    #[arg(long, value_name = "TEMPLATE", conflicts_with_all = ["json", "quiet"])]
    format: Option<String>,
    /// Full image ids.
    #[arg(long)]
    no_trunc: bool,
    /// Only image ids, one per line.
    #[arg(short, long)]
    quiet: bool,
}

/// Give an image another name.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    ufsd tag base base:v1\n  \
    ufsd tag 3f2a9c1b registry.example/ns/app:v1\n\n\
    SOURCE is NAME[:TAG], NAME@sha256:DIGEST or an image id (a unique prefix of at least\n\
    4 hex digits). TARGET is NAME[:TAG]; the tag defaults to latest and moves if another\n\
    image had it.")]
pub struct TagArgs {
    /// The image to name.
    source: String,
    /// The new name, NAME[:TAG].
    target: String,
}

/// Remove images.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    ufsd rmi base:v1                 # only the tag, if base has other tags\n  \
    ufsd rmi -f 3f2a9c1b5e7d         # the image and all its tags\n\n\
    Removing an image's last tag removes the image and then every blob and extracted\n\
    layer that no other image uses. Refused, unless -f, while a container uses the image\n\
    (with -f its tags go but the image stays until the container is gone), while a\n\
    tagged image is built on it, or for an id with several tags.")]
pub struct RmiArgs {
    /// Remove even if in use or tagged several times (see below).
    #[arg(short, long)]
    force: bool,
    /// The images: NAME[:TAG], NAME@sha256:DIGEST or id.
    #[arg(required = true)]
    images: Vec<String>,
}

/// Show the history of an image.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    ufsd history base\n  \
    ufsd history --no-trunc --json base:v1\n\n\
    Newest first. LAYER is the layer's diff_id (<none> for a step that made no layer);\n\
    SIZE is the layer blob as stored.")]
pub struct HistoryArgs {
    /// The image.
    image: String,
    /// Full layer digests and commands.
    #[arg(long)]
    no_trunc: bool,
    /// JSON for scripts: an array of {layer, created, created_by, size, comment, empty_layer}.
    #[arg(long)]
    json: bool,
    /// One line per step from a template: {{.Layer}}, {{.Created}}, {{.CreatedBy}},
    /// {{.Size}} (bytes), {{.Comment}}, {{.EmptyLayer}}; \t is a tab.
    #[arg(long, value_name = "TEMPLATE", conflicts_with = "json")]
    format: Option<String>,
}

/// Show an image's config and layers as JSON.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    ufsd inspect base\n  \
    ufsd inspect base | jq '.[0].Config.config.Env'\n\n\
    Prints a JSON array with one object per image: Id, RepoTags, RepoDigests, Created,\n\
    Size, Manifest (its digest), Config (the OCI image config) and Layers (blob digest,\n\
    diff_id, size and media type, bottom first).")]
pub struct InspectArgs {
    /// The images.
    #[arg(required = true)]
    images: Vec<String>,
}

fn open(root: &Path) -> Result<Store> {
    Ok(Store::open(root)?)
}

fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("write to stdout")
}

pub fn images(root: &Path, a: ImagesArgs) -> Result<ExitCode> {
    let store = open(root)?;
    let mut list = store.list()?;
    if let Some(filter) = &a.repository {
        let r = Reference::parse(filter)?;
        list.retain(|s| {
            s.repository.as_deref() == Some(r.name())
                && r.tag().is_none_or(|t| s.tag.as_deref() == Some(t))
        });
    }
    for s in &list {
        if let Some(e) = &s.error {
            let name = match (&s.repository, &s.tag) {
                (Some(r), Some(t)) => format!("{r}:{t}"),
                (Some(r), None) => r.clone(),
                _ => s.manifest_digest.to_string(),
            };
            eprintln!("ufsd: warning: image {name} is damaged: {e}");
        }
    }
    if a.json {
        return print(&format!("{}\n", serde_json::to_string_pretty(&list)?))
            .map(|()| ExitCode::SUCCESS);
    }
    if let Some(t) = &a.format {
        let rows = serde_json::to_value(&list)?;
        let text =
            format_rows(t, rows.as_array().map_or(&[][..], |v| v)).map_err(anyhow::Error::msg)?;
        return print(&text).map(|()| ExitCode::SUCCESS);
    }
    let id_of = |s: &crate::image::store::ImageSummary| match &s.id {
        Some(id) if a.no_trunc => id.to_string(),
        Some(id) => id.short().to_string(),
        None => "<damaged>".to_string(),
    };
    if a.quiet {
        let mut seen = std::collections::BTreeSet::new();
        let mut text = String::new();
        for s in &list {
            let id = id_of(s);
            if seen.insert(id.clone()) {
                text.push_str(&id);
                text.push('\n');
            }
        }
        return print(&text).map(|()| ExitCode::SUCCESS);
    }
    let now = rfc3339::now();
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            vec![
                s.repository.clone().unwrap_or_else(|| "<none>".into()),
                s.tag.clone().unwrap_or_else(|| "<none>".into()),
                id_of(s),
                ago(s.created.as_deref(), now),
                human_size(s.size),
            ]
        })
        .collect();
    print(&render(
        &["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"],
        &rows,
    ))?;
    Ok(ExitCode::SUCCESS)
}

pub fn tag(root: &Path, a: TagArgs) -> Result<ExitCode> {
    let target = Reference::parse_tag_target(&a.target)?;
    open(root)?.tag(&a.source, &target)?;
    Ok(ExitCode::SUCCESS)
}

pub fn rmi(root: &Path, a: RmiArgs) -> Result<ExitCode> {
    let store = open(root)?;
    let mut code = ExitCode::SUCCESS;
    for name in &a.images {
        match store.remove_image(name, a.force) {
            Ok(r) => {
                let mut text = String::new();
                for t in &r.untagged {
                    text.push_str(&format!("Untagged: {t}\n"));
                }
                for d in &r.deleted {
                    text.push_str(&format!("Deleted: {d}\n"));
                }
                print(&text)?;
                if let Some(why) = &r.gc.deferred {
                    eprintln!("ufsd: note: space not reclaimed yet ({why})");
                }
            }
            Err(e) => {
                eprintln!("ufsd: {e}");
                code = ExitCode::FAILURE;
            }
        }
    }
    Ok(code)
}

/// One row of `history`, newest last until reversed.
struct Step {
    layer: Option<String>,
    created: Option<String>,
    created_by: String,
    size: u64,
    comment: String,
    empty_layer: bool,
}

/// Pairs the config's history with the layers: each history entry that is not an
/// `empty_layer` takes the next layer; layers the history does not cover get a bare row.
fn steps(image: &Image) -> Vec<Step> {
    let mut layers = image.layers.iter();
    let mut out = Vec::new();
    for h in image.config.history().iter().flatten() {
        let empty = h.empty_layer().unwrap_or(false);
        let layer = if empty { None } else { layers.next() };
        out.push(Step {
            layer: layer.map(|l| l.diff_id.to_string()),
            created: h.created().clone(),
            created_by: h.created_by().clone().unwrap_or_default(),
            size: layer.map_or(0, |l| l.blob.size()),
            comment: h.comment().clone().unwrap_or_default(),
            empty_layer: empty,
        });
    }
    for l in layers {
        out.push(Step {
            layer: Some(l.diff_id.to_string()),
            created: None,
            created_by: String::new(),
            size: l.blob.size(),
            comment: String::new(),
            empty_layer: false,
        });
    }
    out.reverse();
    out
}

pub fn history(root: &Path, a: HistoryArgs) -> Result<ExitCode> {
    let image = open(root)?.resolve(&a.image)?;
    let steps = steps(&image);
    if a.json || a.format.is_some() {
        let v: Vec<_> = steps
            .iter()
            .map(|s| {
                json!({
                    "layer": s.layer, "created": s.created, "created_by": s.created_by,
                    "size": s.size, "comment": s.comment, "empty_layer": s.empty_layer,
                })
            })
            .collect();
        let text = match &a.format {
            Some(t) => format_rows(t, &v).map_err(anyhow::Error::msg)?,
            None => format!("{}\n", serde_json::to_string_pretty(&v)?),
        };
        return print(&text).map(|()| ExitCode::SUCCESS);
    }
    let now = rfc3339::now();
    let rows: Vec<Vec<String>> = steps
        .iter()
        .map(|s| {
            let layer = match &s.layer {
                Some(l) if a.no_trunc => l.clone(),
                Some(l) => l.trim_start_matches("sha256:").chars().take(12).collect(),
                None => "<none>".to_string(),
            };
            let by = s.created_by.replace('\n', " ");
            vec![
                layer,
                ago(s.created.as_deref(), now),
                if a.no_trunc { by } else { truncate(&by, 45) },
                human_size(s.size),
                s.comment.clone(),
            ]
        })
        .collect();
    print(&render(
        &["LAYER", "CREATED", "CREATED BY", "SIZE", "COMMENT"],
        &rows,
    ))?;
    Ok(ExitCode::SUCCESS)
}

pub fn inspect(root: &Path, a: InspectArgs) -> Result<ExitCode> {
    let store = open(root)?;
    let mut out = Vec::new();
    for name in &a.images {
        let img = store.resolve(name)?;
        let repo_digests: Vec<String> = img
            .refs
            .iter()
            .map(|r| crate::image::store::split_ref_name(r).0)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|repo| format!("{repo}@{}", img.manifest_descriptor.digest()))
            .collect();
        let layers: Vec<_> = img
            .layers
            .iter()
            .map(|l| {
                json!({
                    "Digest": l.blob.digest(), "DiffID": l.diff_id, "Size": l.blob.size(),
                    "MediaType": l.blob.media_type().to_string(),
                })
            })
            .collect();
        out.push(json!({
            "Id": img.id,
            "RepoTags": img.refs,
            "RepoDigests": repo_digests,
            "Created": img.config.created(),
            "Size": img.size(),
            "Manifest": img.manifest_descriptor.digest(),
            "Config": img.config,
            "Layers": layers,
        }));
    }
    print(&format!("{}\n", serde_json::to_string_pretty(&out)?))?;
    Ok(ExitCode::SUCCESS)
}
