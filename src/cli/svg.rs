//! `ufsd layers --svg FILE`: the layer stack as a picture. One bar per layer, the top-most
//! layer at the top as in a stack; each bar's length is the layer's stored bytes (relative
//! to the largest layer), split into the part the merged view shows (green) and the part
//! that is wasted (red), with the layer's name, size, waste and history entry beside it.

use std::fmt::Write;
use std::path::Path;

use anyhow::{Context, Result};

use super::table::human_size;
use crate::image::analysis::Analysis;
use crate::image::layerset::LayerSet;

const BAR_X: f64 = 20.0;
const BAR_W: f64 = 360.0;
const ROW_H: f64 = 44.0;
const TOP: f64 = 56.0;

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The SVG text of the stack.
pub fn render(a: &Analysis, set: &LayerSet, title: &str) -> String {
    let max = a.layers.iter().map(|l| l.size).max().unwrap_or(0).max(1) as f64;
    let height = TOP + ROW_H * a.layers.len() as f64 + 40.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="900" height="{height}" viewBox="0 0 900 {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r##"<rect width="900" height="{height}" fill="#ffffff"/>
<text x="{BAR_X}" y="24" font-size="16" font-weight="bold">{}</text>
<text x="{BAR_X}" y="42" fill="#444">stored {}, seen {}, wasted {} (efficiency {}); top-most layer first</text>"##,
        escape(title),
        human_size(a.total_bytes),
        human_size(a.seen_bytes),
        human_size(a.wasted_bytes),
        super::layers::pct(a.efficiency)
    );
    for (row, l) in a.layers.iter().enumerate() {
        let y = TOP + ROW_H * row as f64;
        let w = (l.size as f64 / max * BAR_W).max(if l.size > 0 { 2.0 } else { 0.0 });
        let wasted_w = if l.size == 0 {
            0.0
        } else {
            w * l.wasted as f64 / l.size as f64
        };
        let _ = writeln!(
            s,
            r##"<rect x="{BAR_X}" y="{y}" width="{BAR_W}" height="28" fill="#f2f2f2" stroke="#cccccc"/>
<rect x="{BAR_X}" y="{y}" width="{:.2}" height="28" fill="#4caf50"/>
<rect x="{:.2}" y="{y}" width="{wasted_w:.2}" height="28" fill="#e53935"/>"##,
            w - wasted_w,
            BAR_X + w - wasted_w,
        );
        let nl = &set.layers[l.layer];
        let by = l.created_by.clone().unwrap_or_default();
        let by: String = by.chars().take(70).collect();
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" font-weight="bold">{}</text>
<text x="{}" y="{}">{} stored, {} wasted; +{} ~{} -{}</text>
<text x="{}" y="{}" fill="#666">{}</text>"##,
            BAR_X + BAR_W + 12.0,
            y + 11.0,
            escape(&nl.title()),
            BAR_X + BAR_W + 12.0,
            y + 24.0,
            human_size(l.size),
            human_size(l.wasted),
            l.added,
            l.changed,
            l.removed,
            BAR_X + BAR_W + 12.0,
            y + 37.0,
            escape(&by),
        );
    }
    let y = TOP + ROW_H * a.layers.len() as f64 + 16.0;
    let _ = writeln!(
        s,
        r##"<rect x="{BAR_X}" y="{y}" width="12" height="12" fill="#4caf50"/><text x="{}" y="{}">seen in the merged view</text>
<rect x="{}" y="{y}" width="12" height="12" fill="#e53935"/><text x="{}" y="{}">wasted: overwritten or deleted by a later layer</text>
</svg>"##,
        BAR_X + 16.0,
        y + 10.0,
        BAR_X + 190.0,
        BAR_X + 206.0,
        y + 10.0
    );
    s
}

/// Writes the picture to `path` (a temporary file beside it, renamed into place).
pub fn write(path: &Path, svg: &str) -> Result<()> {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, svg).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::Error::new(e).context(format!("writing {}", path.display()))
    })
}
