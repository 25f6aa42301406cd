//! Output for people: aligned tables like docker's (columns at least 20 wide, 3 spaces
//! apart), sizes in decimal units ("72.8MB"), and ages ("3 minutes ago"); and `--format`
//! templates for scripts.

/// Renders rows under headers; every column but the last is padded.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let n = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate().take(n) {
            line.push_str(cell);
            if i + 1 < n {
                let width = (widths[i] + 3).max(20);
                line.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A size with three significant digits in decimal units, as docker prints it.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 999.5 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    let s = if v >= 99.95 {
        format!("{v:.0}")
    } else if v >= 9.995 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s}{}", UNITS[unit])
}

/// How long ago, in docker's words ("About a minute", "3 hours", "2 weeks").
pub fn human_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    let (m, h) = (s / 60, s / 3600);
    match () {
        _ if s < 1 => "Less than a second".to_string(),
        _ if s == 1 => "1 second".to_string(),
        _ if s < 60 => format!("{s} seconds"),
        _ if m == 1 => "About a minute".to_string(),
        _ if m < 60 => format!("{m} minutes"),
        _ if h == 1 => "About an hour".to_string(),
        _ if h < 48 => format!("{h} hours"),
        _ if h < 24 * 7 * 2 => format!("{} days", h / 24),
        _ if h < 24 * 30 * 2 => format!("{} weeks", h / 24 / 7),
        _ if h < 24 * 365 * 2 => format!("{} months", h / 24 / 30),
        _ => format!("{} years", h / 24 / 365),
    }
}

/// "3 minutes ago" for an RFC 3339 time, "N/A" if there is none or it does not parse.
pub fn ago(created: Option<&str>, now: i64) -> String {
    match created.and_then(crate::image::rfc3339::parse) {
        Some(t) => format!("{} ago", human_duration(now - t)),
        None => "N/A".to_string(),
    }
}

/// `s` cut to `max` characters, ending in "…" when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// One line per row from a `--format` template, docker style: `{{.Field}}` is the row's
/// JSON field of that name (case and `_` ignored, so `{{.ID}}` and `{{.CreatedBy}}` work),
/// `\t` and `\n` are a tab and a newline. Strings print bare, null as nothing, anything
/// else as JSON. An unknown field or an unclosed `{{` is an error naming the fields.
pub fn format_rows(template: &str, rows: &[serde_json::Value]) -> Result<String, String> {
    let template = template.replace("\\t", "\t").replace("\\n", "\n");
    let key = |k: &str| k.replace('_', "").to_ascii_lowercase();
    let mut out = String::new();
    for row in rows {
        let fields = row.as_object().ok_or("a row that is not an object")?;
        let names = || {
            let v: Vec<String> = fields.keys().map(|k| format!(".{}", camel(k))).collect();
            v.join(", ")
        };
        let mut rest = template.as_str();
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find("}}")
                .ok_or_else(|| format!("--format: '{{{{' without '}}}}' in {template:?}"))?;
            let name = after[..end].trim();
            let Some(field) = name.strip_prefix('.').filter(|f| !f.is_empty()) else {
                return Err(format!(
                    "--format: {{{{{name}}}}} is not a field; use one of {}",
                    names()
                ));
            };
            let value = fields
                .iter()
                .find(|(k, _)| key(k) == key(field))
                .map(|(_, v)| v)
                .ok_or_else(|| format!("--format: no field .{field}; use one of {}", names()))?;
            match value {
                serde_json::Value::String(s) => out.push_str(s),
                serde_json::Value::Null => {}
                other => out.push_str(&other.to_string()),
            }
            rest = &after[end + 2..];
        }
        out.push_str(rest);
        out.push('\n');
    }
    Ok(out)
}

/// `created_by` as `CreatedBy`, the spelling docker's templates use.
fn camel(k: &str) -> String {
    k.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_docker() {
        for (n, want) in [
            (0, "0B"),
            (999, "999B"),
            (1000, "1kB"),
            (1234, "1.23kB"),
            (72_800_000, "72.8MB"),
            (5_580_000, "5.58MB"),
            (125_000, "125kB"),
            (1_000_000_000, "1GB"),
        ] {
            assert_eq!(human_size(n), want, "{n}");
        }
    }

    #[test]
    fn durations_like_docker() {
        for (s, want) in [
            (0, "Less than a second"),
            (1, "1 second"),
            (59, "59 seconds"),
            (60, "About a minute"),
            (180, "3 minutes"),
            (3600, "About an hour"),
            (47 * 3600, "47 hours"),
            (48 * 3600, "2 days"),
            (15 * 86400, "2 weeks"),
            (90 * 86400, "3 months"),
            (800 * 86400, "2 years"),
        ] {
            assert_eq!(human_duration(s), want, "{s}");
        }
    }

    #[test]
    fn tables_align() {
        let t = render(
            &["A", "B", "C"],
            &[vec![
                "x".into(),
                "a-rather-long-cell-value".into(),
                "z".into(),
            ]],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], format!("A{}B{}C", " ".repeat(19), " ".repeat(26)));
        assert_eq!(lines[1].find('z'), lines[0].find('C'));
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }

    #[test]
    fn format_templates() {
        let rows = vec![
            serde_json::json!({"repository": "base", "tag": "v1", "size": 12, "created_by": null}),
            serde_json::json!({"repository": "app", "tag": "latest", "size": 3, "created_by": "x"}),
        ];
        assert_eq!(
            format_rows(
                "{{.Repository}}:{{ .tag }}\\t{{.Size}}{{.CreatedBy}}",
                &rows
            )
            .unwrap(),
            "base:v1\t12\napp:latest\t3x\n"
        );
        let e = format_rows("{{.Nope}}", &rows).unwrap_err();
        assert!(e.contains(".Nope") && e.contains(".CreatedBy"), "{e}");
        assert!(format_rows("{{.Tag", &rows).is_err());
        assert!(format_rows("{{json .}}", &rows).is_err());
        assert_eq!(format_rows("x", &[]).unwrap(), "");
    }
}
