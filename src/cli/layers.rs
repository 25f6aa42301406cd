//! `ufsd layers`: what each layer of an image (or container, mount, layer directories)
//! adds, changes, removes and wastes, the image's efficiency, and one layer's changes as a
//! tree. The numbers come from `image::analysis`; this file only renders them.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use serde_json::json;

use super::table::human_size;
use super::target::{self, Found};
use crate::image::analysis::{self, Analysis, LayerChange, Waste};
use crate::image::layerset::LayerSet;
use crate::layer::blame::Cause;

/// Exit status when the --max-waste threshold is exceeded (errors exit 1).
const EXIT_TOO_WASTEFUL: u8 = 3;

/// Show each layer's size, changes and wasted bytes, and the image's efficiency.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    ufsd layers app:v1                           # an image of the store\n  \
    ufsd layers web                              # a container (its upper layer on top)\n  \
    ufsd layers /mnt/merged                      # the layers of a mount\n  \
    ufsd layers --upper /srv/up --lower /srv/l2:/srv/l1\n  \
    ufsd layers app:v1 --tree 3                  # layer 3's changes as a tree (A/C/D)\n  \
    ufsd layers app:v1 --max-waste 10%           # exit 3 when over 10% of bytes are wasted\n  \
    ufsd layers app:v1 --svg stack.svg           # also draw the stack\n\n\
    Layers are numbered from the bottom (layer 1); `upper` is a container's or mount's\n\
    writable layer. Sizes are apparent bytes of regular files, as docker and dive count.\n\
    Wasted: bytes a layer stores that a later layer overwrites or deletes, so shipped but\n\
    never seen. Efficiency: bytes seen in the merged view / bytes stored in all layers.\n\
    Added/changed/removed count the layer's changes against the layers below it, as\n\
    `ufsd diff` lists them (directories that are C only because of their contents are not\n\
    counted). See docs/semantics.md.")]
pub struct LayersArgs {
    /// An image or container of the store, or a mount point.
    #[arg(value_name = "TARGET", required_unless_present_any = ["lower", "upper"])]
    target: Option<OsString>,
    /// An upper layer directory (with --lower).
    #[arg(long, value_name = "DIR", conflicts_with = "target")]
    upper: Option<PathBuf>,
    /// Lower layer directories, top-most first, separated by ':'.
    #[arg(long, value_name = "DIR[:DIR...]", conflicts_with = "target")]
    lower: Option<PathBuf>,
    /// Print one layer's changes as a tree: its number (1 is the bottom), `upper`, or a
    /// diff_id prefix.
    #[arg(long, value_name = "LAYER")]
    tree: Option<String>,
    /// Fail (exit 3) when the wasted bytes exceed this: bytes (`52428800`, `50MB`, `1.5GiB`)
    /// or a share of the stored bytes (`10%`).
    #[arg(long, value_name = "BYTES|PERCENT%")]
    max_waste: Option<String>,
    /// How many of the largest wasted files to list.
    #[arg(long, value_name = "N", default_value_t = 10)]
    top: usize,
    /// Also draw the stack as an SVG picture into FILE (seen and wasted bytes per layer).
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// A --max-waste threshold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    Bytes(u64),
    Percent(f64),
}

/// Parses `52428800`, `50MB`, `50M`, `1.5GiB`, `10%`. Decimal units are powers of 1000 (as
/// sizes are printed), `KiB`/`MiB`/`GiB`/`TiB` powers of 1024.
pub fn parse_threshold(s: &str) -> Result<Threshold> {
    let t = s.trim();
    let bad =
        || anyhow::anyhow!("--max-waste {s:?}: give bytes (50MB, 52428800) or a percentage (10%)");
    if let Some(p) = t.strip_suffix('%') {
        let v: f64 = p.trim().parse().map_err(|_| bad())?;
        if !(0.0..=100.0).contains(&v) {
            bail!("--max-waste {s:?}: a percentage is between 0 and 100");
        }
        return Ok(Threshold::Percent(v));
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num.parse().map_err(|_| bad())?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    Ok(Threshold::Bytes((v * mult).round() as u64))
}

/// Whether `a` wastes more than the threshold allows.
pub fn exceeds(a: &Analysis, t: Threshold) -> bool {
    match t {
        Threshold::Bytes(b) => a.wasted_bytes > b,
        Threshold::Percent(p) => {
            a.total_bytes > 0 && a.wasted_bytes as f64 * 100.0 / a.total_bytes as f64 > p
        }
    }
}

/// The index of the layer `spec` names: its number, `upper`, `layer N`, or a diff_id prefix.
pub fn pick_layer(set: &LayerSet, spec: &str) -> Result<usize> {
    let s = spec.trim();
    let by_name = |name: &str| set.layers.iter().position(|l| l.name == name);
    if let Some(i) = by_name(s).or_else(|| by_name(&format!("layer {s}"))) {
        return Ok(i);
    }
    let hex = s.trim_start_matches("sha256:");
    if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        let hits: Vec<usize> = (0..set.len())
            .filter(|i| {
                set.layers[*i]
                    .diff_id
                    .as_deref()
                    .is_some_and(|d| d.trim_start_matches("sha256:").starts_with(hex))
            })
            .collect();
        match hits.as_slice() {
            [i] => return Ok(*i),
            [] => {}
            _ => bail!("--tree {spec}: the prefix matches several layers"),
        }
    }
    let names: Vec<&str> = set.layers.iter().rev().map(|l| l.name.as_str()).collect();
    bail!(
        "--tree {spec}: no such layer (the layers are {}; or give a diff_id prefix)",
        names.join(", ")
    )
}

fn cause_words(w: &Waste, set: &LayerSet) -> String {
    let by = &set.layers[w.by].name;
    let at = w.at.display();
    let same = w.at == w.path;
    match w.cause {
        Cause::Shadowed if same => format!("overwritten in {by}"),
        Cause::Shadowed => format!("{at} replaced by a non-directory in {by}"),
        Cause::WhitedOut if same => format!("deleted in {by}"),
        Cause::WhitedOut => format!("{at} deleted in {by}"),
        Cause::Opaque => format!("{at} made opaque in {by}"),
    }
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "0%".to_string();
    }
    pct(part as f64 / whole as f64)
}

/// A ratio as a percentage with one decimal, or with two significant digits of what sets
/// it apart from 0% or 100% where one decimal would round it to 0.0% or 100.0%.
pub(super) fn pct(ratio: f64) -> String {
    let v = ratio * 100.0;
    let gap = v.min(100.0 - v);
    let decimals = if gap > 0.0 && gap < 0.05 {
        (-gap.log10()).ceil() as usize + 1
    } else {
        1
    };
    format!("{v:.decimals$}%")
}

/// Rows aligned on columns two spaces apart; the last column is not padded.
fn align(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; cols];
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            line.push_str(c);
            if i + 1 < r.len() {
                line.extend(std::iter::repeat_n(' ', widths[i] + 2 - c.chars().count()));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The analysis as text: the layer table (top-most first), the totals and the top wasted
/// files.
pub fn render_text(a: &Analysis, set: &LayerSet, source: &str) -> String {
    let mut rows = vec![
        [
            "LAYER",
            "ID",
            "SIZE",
            "FILES",
            "ADDED",
            "CHANGED",
            "REMOVED",
            "WASTED",
            "CREATED BY",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for l in &a.layers {
        let nl = &set.layers[l.layer];
        let by = l
            .created_by
            .clone()
            .or_else(|| l.comment.clone())
            .unwrap_or_default()
            .replace('\n', " ");
        let by: String = if by.chars().count() > 60 {
            by.chars().take(57).chain("...".chars()).collect()
        } else {
            by
        };
        rows.push(vec![
            l.name.clone(),
            nl.short_id().unwrap_or("-").to_string(),
            human_size(l.size),
            l.files.to_string(),
            l.added.to_string(),
            l.changed.to_string(),
            l.removed.to_string(),
            human_size(l.wasted),
            by,
        ]);
    }
    let mut out = format!(
        "{source}: {} layer{}\n\n",
        a.layers.len(),
        if a.layers.len() == 1 { "" } else { "s" }
    );
    out.push_str(&align(&rows));
    out.push('\n');
    let summary = vec![
        vec![
            "Stored:".to_string(),
            human_size(a.total_bytes),
            format!("{} bytes in all layers", a.total_bytes),
        ],
        vec![
            "Seen:".to_string(),
            human_size(a.seen_bytes),
            format!("{} bytes in the merged view", a.seen_bytes),
        ],
        vec![
            "Wasted:".to_string(),
            human_size(a.wasted_bytes),
            format!(
                "{} bytes ({} of what is stored): shipped but never seen",
                a.wasted_bytes,
                percent(a.wasted_bytes, a.total_bytes)
            ),
        ],
        vec![
            "Efficiency:".to_string(),
            pct(a.efficiency),
            "seen / stored".to_string(),
        ],
    ];
    out.push_str(&align(&summary));
    if !a.top_wasted.is_empty() {
        out.push_str("\nLargest wasted files:\n");
        let rows: Vec<Vec<String>> = a
            .top_wasted
            .iter()
            .map(|w| {
                vec![
                    format!("  {}", human_size(w.size)),
                    set.layers[w.layer].name.clone(),
                    w.path.display(),
                    cause_words(w, set),
                ]
            })
            .collect();
        out.push_str(&align(&rows));
    }
    out
}

/// A tree node of `--tree`: the change at this path, if any, and the children by name.
#[derive(Default)]
struct Node {
    change: Option<LayerChange>,
    children: BTreeMap<Vec<u8>, Node>,
}

/// One layer's changes as an indented tree, each line marked A, C or D.
pub fn render_tree(changes: &[LayerChange]) -> String {
    let mut root = Node::default();
    for c in changes {
        let mut n = &mut root;
        for comp in c.path.0.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            n = n.children.entry(comp.to_vec()).or_default();
        }
        n.change = Some(c.clone());
    }
    let mut out = String::new();
    fn walk(n: &Node, depth: usize, out: &mut String) {
        for (name, child) in &n.children {
            let (mark, dir, size) = match &child.change {
                Some(c) => (c.kind, c.dir, c.size),
                None => (' ', true, None),
            };
            let shown = crate::image::explain::ViewPath(name.clone()).display();
            let mut line = format!("{mark} {}{shown}", "  ".repeat(depth));
            if dir || !child.children.is_empty() {
                line.push('/');
            }
            if let Some(s) = size {
                line.push_str(&format!("  ({})", human_size(s)));
            }
            out.push_str(&line);
            out.push('\n');
            walk(child, depth + 1, out);
        }
    }
    walk(&root, 0, &mut out);
    out
}

pub fn run(a: LayersArgs, root: impl FnOnce() -> Result<PathBuf>) -> Result<ExitCode> {
    let threshold = a.max_waste.as_deref().map(parse_threshold).transpose()?;
    let found: Found = match &a.target {
        Some(t) => target::from_name(t, root)?,
        None => target::from_dirs(a.upper.as_deref(), a.lower.as_deref())?,
    };
    let set = &found.set;
    if let Some(spec) = &a.tree {
        let i = pick_layer(set, spec)?;
        let changes = analysis::layer_changes(set, i)?;
        let text = if a.json {
            format!(
                "{}\n",
                serde_json::to_string_pretty(&json!({
                    "layer": set.layers[i], "changes": changes,
                }))?
            )
        } else {
            let l = &set.layers[i];
            let by = l.created_by.clone().unwrap_or_default();
            let mut t = format!(
                "{}{}{by}\n",
                l.title(),
                if by.is_empty() { "" } else { ": " }
            );
            if changes.is_empty() {
                t.push_str("(no changes)\n");
            }
            t.push_str(&render_tree(&changes));
            t
        };
        print(&text)?;
        return Ok(ExitCode::SUCCESS);
    }
    let analysis = analysis::analyze(set, a.top)?;
    let text = if a.json {
        format!(
            "{}\n",
            serde_json::to_string_pretty(&json!({
                "source": found.source, "stack": set.layers, "analysis": analysis,
            }))?
        )
    } else {
        render_text(&analysis, set, &found.source)
    };
    print(&text)?;
    if let Some(path) = &a.svg {
        super::svg::write(path, &super::svg::render(&analysis, set, &found.source))?;
    }
    if let Some(t) = threshold
        && exceeds(&analysis, t)
    {
        eprintln!(
            "ufsd: wasted {} ({} bytes, {} of {}) exceeds --max-waste {}",
            human_size(analysis.wasted_bytes),
            analysis.wasted_bytes,
            percent(analysis.wasted_bytes, analysis.total_bytes),
            human_size(analysis.total_bytes),
            a.max_waste.as_deref().unwrap_or("")
        );
        return Ok(ExitCode::from(EXIT_TOO_WASTEFUL));
    }
    Ok(ExitCode::SUCCESS)
}

fn print(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        assert_eq!(
            parse_threshold("52428800").unwrap(),
            Threshold::Bytes(52_428_800)
        );
        assert_eq!(
            parse_threshold("50MB").unwrap(),
            Threshold::Bytes(50_000_000)
        );
        assert_eq!(
            parse_threshold("50M").unwrap(),
            Threshold::Bytes(50_000_000)
        );
        assert_eq!(parse_threshold("1.5kB").unwrap(), Threshold::Bytes(1500));
        assert_eq!(
            parse_threshold("2MiB").unwrap(),
            Threshold::Bytes(2 * 1024 * 1024)
        );
        assert_eq!(parse_threshold("10%").unwrap(), Threshold::Percent(10.0));
        assert_eq!(parse_threshold(" 0 ").unwrap(), Threshold::Bytes(0));
        assert_eq!(pct(0.5), "50.0%");
        assert_eq!(pct(810.0 / 50_006_030.0), "0.0016%");
        assert_eq!(pct(50_005_220.0 / 50_006_030.0), "99.9984%");
        assert_eq!(pct(1.0), "100.0%");
        assert_eq!(pct(0.0), "0.0%");
        for bad in ["", "abc", "10 parsecs", "150%", "-1", "%"] {
            assert!(parse_threshold(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tree_nests_and_marks() {
        let c = |k: char, p: &str, dir: bool, size: Option<u64>| LayerChange {
            kind: k,
            path: crate::image::explain::ViewPath(p.as_bytes().to_vec()),
            dir,
            size,
        };
        let t = render_tree(&[
            c('C', "/opt", true, None),
            c('A', "/opt-x", false, Some(5)),
            c('D', "/opt/tool", false, None),
            c('A', "/opt/new", false, Some(1200)),
        ]);
        assert_eq!(t, "C opt/\nA   new  (1.2kB)\nD   tool\nA opt-x  (5B)\n");
    }
}
