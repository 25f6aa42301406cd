//! An [`Explanation`] as text for people: a headline, a compact picture of the stack (one
//! line per layer, top-most first) and the same in plain sentences.
//!
//! Marks in the picture: `>` the entry shown, `+` a directory merged into it, `x` a
//! whiteout, `-` an entry hidden, blank for a layer holding nothing there.

use std::fmt::Write;

use super::{Explanation, Holds, OpaqueFormat, Role, WhiteoutFormat};
use crate::image::layerset::LayerSet;
use crate::layer::blame::Cause;

fn whiteout_words(f: WhiteoutFormat, name: &str) -> String {
    match f {
        WhiteoutFormat::Device => "a character device 0/0, overlayfs format".to_string(),
        WhiteoutFormat::WhFile => format!("a .wh.{name} file, OCI format"),
    }
}

fn opaque_words(f: OpaqueFormat) -> &'static str {
    match f {
        OpaqueFormat::TrustedXattr => "xattr trusted.overlay.opaque=y, overlayfs format",
        OpaqueFormat::UserXattr => "xattr user.overlay.opaque=y, overlayfs format",
        OpaqueFormat::Marker => "a .wh..wh..opq file inside, OCI format",
    }
}

fn holds_words(h: &Holds) -> String {
    match h {
        Holds::Nothing => "-".to_string(),
        Holds::Entry {
            kind,
            size,
            opaque,
            target,
        } => {
            let mut s = kind.to_string();
            if *kind == "file" {
                let _ = write!(s, ", {size} B");
            }
            if let Some(t) = target {
                let _ = write!(s, " -> {}", t.display());
            }
            if opaque.is_some() {
                s.push_str(", opaque");
            }
            s
        }
        Holds::Whiteout { format } => match format {
            WhiteoutFormat::Device => "whiteout (device 0/0)".to_string(),
            WhiteoutFormat::WhFile => "whiteout (.wh. file)".to_string(),
        },
    }
}

/// The role in a few words, for the picture.
fn role_short(e: &Explanation, set: &LayerSet, role: &Role) -> String {
    let path = e.path.display();
    match role {
        Role::Absent => String::new(),
        Role::Shown => "shown".to_string(),
        Role::Merged => "merged".to_string(),
        Role::Whiteout { hides } if hides.is_empty() => "whiteout, hides nothing".to_string(),
        Role::Whiteout { hides } => format!("hides {}", names(set, hides)),
        Role::Hidden { by, cause, at, .. } => {
            let by = &set.layers[*by].name;
            let at = at.display();
            match cause {
                Cause::Shadowed if at == path => format!("shadowed by {by}"),
                Cause::Shadowed => format!("hidden: {at} is not a directory in {by}"),
                Cause::WhitedOut if at == path => format!("whited out in {by}"),
                Cause::WhitedOut => format!("hidden: {at} whited out in {by}"),
                Cause::Opaque => format!("hidden: {at} opaque in {by}"),
            }
        }
    }
}

fn names(set: &LayerSet, layers: &[usize]) -> String {
    let v: Vec<&str> = layers
        .iter()
        .map(|i| set.layers[*i].name.as_str())
        .collect();
    v.join(", ")
}

/// The whole explanation as text.
pub fn to_text(e: &Explanation, set: &LayerSet) -> String {
    let mut out = String::new();
    let path = e.path.display();
    let last = path.rsplit('/').next().unwrap_or("").to_string();
    // Headline.
    match (&e.shown, &e.blocked) {
        (Some(s), _) => {
            let _ = writeln!(
                out,
                "{path}: {} from {}",
                s.kind,
                set.layers[s.layer].title()
            );
        }
        (None, Some(b)) => {
            let _ = writeln!(
                out,
                "{path}: does not exist: {} is a {} in {}",
                b.at.display(),
                b.kind,
                set.layers[b.layer].name
            );
        }
        (None, None) => {
            let _ = writeln!(out, "{path}: not in the merged view");
        }
    }
    // Picture.
    out.push('\n');
    let titles: Vec<String> = set
        .layers
        .iter()
        .map(|l| {
            if l.writable {
                format!("{} (writable)", l.name)
            } else {
                l.title()
            }
        })
        .collect();
    let holds: Vec<String> = e.layers.iter().map(|r| holds_words(&r.holds)).collect();
    let w1 = titles.iter().map(String::len).max().unwrap_or(0).max(5);
    let w2 = holds.iter().map(String::len).max().unwrap_or(0).max(5);
    let _ = writeln!(out, "    {:w1$}   {:w2$}   MERGED VIEW", "LAYER", "HOLDS");
    for (i, r) in e.layers.iter().enumerate() {
        let mark = match r.role {
            Role::Shown => '>',
            Role::Merged => '+',
            Role::Whiteout { .. } => 'x',
            Role::Hidden { .. } => '-',
            Role::Absent => ' ',
        };
        let line = format!(
            "  {mark} {:w1$}   {:w2$}   {}",
            titles[i],
            holds[i],
            role_short(e, set, &r.role)
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
    // Plain words.
    out.push('\n');
    for line in sentences(e, set, &last) {
        let mut c = line.chars();
        let first: String = c
            .next()
            .map(|f| f.to_uppercase().collect())
            .unwrap_or_default();
        let _ = writeln!(out, "  - {first}{}", c.as_str());
    }
    out
}

/// The explanation in sentences, one per fact.
pub fn sentences(e: &Explanation, set: &LayerSet, last: &str) -> Vec<String> {
    let path = e.path.display();
    let name = |i: usize| {
        let l = &set.layers[i];
        if l.writable {
            "the upper layer".to_string()
        } else {
            l.name.clone()
        }
    };
    let mut out = Vec::new();
    if let Some(s) = &e.shown {
        out.push(format!(
            "The merged view shows the {} of {}: the top-most layer holding {path} wins.",
            s.kind,
            name(s.layer)
        ));
    } else if let Some(b) = &e.blocked {
        let target = b
            .target
            .as_ref()
            .map(|t| format!(" (to {})", t.display()))
            .unwrap_or_default();
        out.push(format!(
            "{} is a {}{target} in {}, so nothing can be below it; explain follows no \
             symlinks: ask about the path it points to.",
            b.at.display(),
            b.kind,
            name(b.layer)
        ));
    } else if e.layers.iter().all(|r| matches!(r.holds, Holds::Nothing)) {
        out.push(format!("No layer holds {path}."));
    } else {
        out.push(format!("The merged view shows nothing at {path}."));
    }
    for r in &e.layers {
        let who = name(r.layer);
        let what = match &r.holds {
            Holds::Entry { kind, .. } => format!("{who}'s {kind}"),
            Holds::Whiteout { .. } => format!("The whiteout in {who}"),
            Holds::Nothing => continue,
        };
        match &r.role {
            Role::Shown | Role::Absent => {}
            Role::Merged => out.push(format!(
                "{what} is merged into it: directories of the same name merge."
            )),
            Role::Whiteout { hides } => {
                let Holds::Whiteout { format } = r.holds else {
                    continue;
                };
                let f = whiteout_words(format, last);
                if hides.is_empty() {
                    out.push(format!(
                        "{who} holds a whiteout ({f}); no layer below it holds {path}."
                    ));
                } else {
                    out.push(format!(
                        "{who} holds a whiteout ({f}): it deletes {path} of {}.",
                        names(set, hides)
                    ));
                }
            }
            Role::Hidden {
                by,
                cause,
                at,
                whiteout,
                opaque,
            } => {
                let at_s = at.display();
                let by_n = name(*by);
                let s = match cause {
                    Cause::Shadowed if at_s == path => format!(
                        "{what} is shadowed: {by_n} above holds the same name, and only \
                         directories merge."
                    ),
                    Cause::Shadowed => format!(
                        "{what} is hidden: {at_s} is not a directory in {by_n}, so nothing \
                         below it shows."
                    ),
                    Cause::WhitedOut => {
                        let f = whiteout
                            .map(|f| {
                                let n = at_s.rsplit('/').next().unwrap_or("");
                                format!(" ({})", whiteout_words(f, n))
                            })
                            .unwrap_or_default();
                        if at_s == path {
                            format!("{what} is deleted by the whiteout in {by_n}{f}.")
                        } else {
                            format!(
                                "{what} is hidden: {at_s} is deleted by a whiteout in {by_n}{f}."
                            )
                        }
                    }
                    Cause::Opaque => {
                        let f = opaque
                            .map(|f| format!(" ({})", opaque_words(f)))
                            .unwrap_or_default();
                        format!(
                            "{what} is hidden: {at_s} is an opaque directory in {by_n}{f}, \
                             so the layers below it do not show through."
                        )
                    }
                };
                out.push(s);
            }
        }
    }
    if let Some(s) = &e.shown
        && let Holds::Entry {
            opaque: Some(f), ..
        } = e.layers[s.layer].holds
    {
        out.push(format!(
            "{path} is opaque in {} ({}): its listing ignores the layers below.",
            name(s.layer),
            opaque_words(f)
        ));
    }
    if let Some(c) = &e.copy_up {
        let when = match (&c.time, c.time_source) {
            (Some(t), "birth") => format!(" It was made at {t} (birth time of the upper copy)."),
            (Some(t), _) => format!(
                " Its last status change was at {t} (ctime: the filesystem records no birth \
                 time)."
            ),
            (None, _) => String::new(),
        };
        let kind = e.shown.as_ref().map(|s| s.kind).unwrap_or("");
        if kind == "directory" {
            out.push(format!(
                "The upper layer's directory merges with {}'s: it was copied up (created in \
                 the upper layer) when something inside it changed.{when}",
                name(c.from)
            ));
        } else {
            out.push(format!(
                "Copied up: the upper layer holds its own copy of the {kind} of {} (a copy-up \
                 on the first change, or deleted and created again: the upper layer does not \
                 record which).{when}",
                name(c.from)
            ));
        }
    }
    if let (Some(shares), Some(total)) = (&e.listing, e.listing_total) {
        let parts: Vec<String> = shares
            .iter()
            .map(|s| {
                let mut p = format!("{} from {} ({} held", s.shown, name(s.layer), s.held);
                if s.whiteouts > 0 {
                    let _ = write!(p, ", {} whiteout{}", s.whiteouts, plural(s.whiteouts));
                }
                p.push(')');
                p
            })
            .collect();
        out.push(format!(
            "Its listing has {total} name{}: {}.",
            plural(total),
            parts.join(", ")
        ));
    }
    out
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}
