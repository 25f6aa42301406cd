//! The two output forms of a diff (docs/diff.md, "Output").
//!
//! Text: one `K PATH` line per change, `K` one of `A`, `C`, `D`. The path is written as
//! its raw bytes unless it holds a control byte (below 0x20, or 0x7f) such as a newline,
//! which would break the line format; such a path is written in double quotes with C
//! escapes (`\n`, `\t`, `\r`, `\"`, `\\`, and `\ooo` octal for other control bytes). A raw
//! path always begins with `/`, so a path beginning with `"` is always a quoted one.
//!
//! JSON: an array of `{"kind":"A","path":"/x"}` objects in the same order. A path that is
//! not valid UTF-8 has no `path` member but `path_b64`: its raw bytes in standard base64
//! with padding, so no name is ever altered.

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use serde::Serialize;

use super::{Change, ChangeKind};

fn needs_quoting(p: &[u8]) -> bool {
    p.iter().any(|b| *b < 0x20 || *b == 0x7f)
}

/// A path as the text form writes it.
pub fn quote_path(p: &[u8]) -> Vec<u8> {
    if !needs_quoting(p) {
        return p.to_vec();
    }
    let mut out = Vec::with_capacity(p.len() + 8);
    out.push(b'"');
    for &b in p {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b if b < 0x20 || b == 0x7f => {
                out.extend_from_slice(format!("\\{b:03o}").as_bytes());
            }
            b => out.push(b),
        }
    }
    out.push(b'"');
    out
}

/// The path a quoted or raw path of the text form stands for; `None` if malformed.
pub fn unquote_path(q: &[u8]) -> Option<Vec<u8>> {
    let Some(inner) = q.strip_prefix(b"\"") else {
        return Some(q.to_vec());
    };
    let inner = inner.strip_suffix(b"\"")?;
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        let b = inner[i];
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let e = *inner.get(i + 1)?;
        i += 2;
        match e {
            b'"' => out.push(b'"'),
            b'\\' => out.push(b'\\'),
            b'n' => out.push(b'\n'),
            b't' => out.push(b'\t'),
            b'r' => out.push(b'\r'),
            b'0'..=b'7' => {
                let digits = inner.get(i - 1..i + 2)?;
                let mut v: u32 = 0;
                for d in digits {
                    if !(b'0'..=b'7').contains(d) {
                        return None;
                    }
                    v = v * 8 + u32::from(d - b'0');
                }
                out.push(u8::try_from(v).ok()?);
                i += 2;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Writes the changes as text lines.
pub fn write_text(changes: &[Change], out: &mut impl Write) -> io::Result<()> {
    for c in changes {
        out.write_all(&[c.kind.letter() as u8, b' '])?;
        out.write_all(&quote_path(c.path.as_os_str().as_bytes()))?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Parses one line of the text form (without its newline).
pub fn parse_line(line: &[u8]) -> Option<Change> {
    let (&k, rest) = line.split_first()?;
    let kind = ChangeKind::from_letter(k)?;
    let path = unquote_path(rest.strip_prefix(b" ")?)?;
    Some(Change {
        kind,
        path: PathBuf::from(OsString::from_vec(path)),
    })
}

#[derive(Serialize)]
struct JsonChange<'a> {
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path_b64: Option<String>,
}

/// The changes as a JSON array (one line, no trailing newline).
pub fn to_json(changes: &[Change]) -> String {
    let items: Vec<JsonChange> = changes
        .iter()
        .map(|c| {
            let bytes = c.path.as_os_str().as_bytes();
            let (path, path_b64) = match std::str::from_utf8(bytes) {
                Ok(s) => (Some(s), None),
                Err(_) => (None, Some(base64(bytes))),
            };
            JsonChange {
                kind: c.kind.letter().to_string(),
                path,
                path_b64,
            }
        })
        .collect();
    // Serialising strings and options cannot fail.
    serde_json::to_string(&items).unwrap_or_else(|_| "[]".to_string())
}

/// Standard base64 (RFC 4648, with padding).
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(kind: ChangeKind, p: &[u8]) -> Change {
        Change {
            kind,
            path: PathBuf::from(OsString::from_vec(p.to_vec())),
        }
    }

    #[test]
    fn text_lines_quote_only_control_bytes() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"/etc/passwd", b"/etc/passwd"),
            (b"/with space", b"/with space"),
            (b"/caf\xe9", b"/caf\xe9"),
            (b"/back\\slash \"q\"", b"/back\\slash \"q\""),
            (b"/new\nline", b"\"/new\\nline\""),
            (b"/t\tr\r\"\\", b"\"/t\\tr\\r\\\"\\\\\""),
            (b"/bell\x07del\x7f", b"\"/bell\\007del\\177\""),
        ];
        for (raw, want) in cases {
            assert_eq!(quote_path(raw), *want, "{}", raw.escape_ascii());
            assert_eq!(unquote_path(want).as_deref(), Some(*raw));
        }
        assert_eq!(unquote_path(b"\"/bad\\q\""), None);
        assert_eq!(unquote_path(b"\"/open"), None);
        assert_eq!(unquote_path(b"\"/short\\07\""), None);
    }

    #[test]
    fn text_round_trip() {
        let changes = vec![
            change(ChangeKind::Added, b"/a"),
            change(ChangeKind::Changed, b"/x\ny"),
            change(ChangeKind::Deleted, b"/\xff\xfe"),
        ];
        let mut buf = Vec::new();
        write_text(&changes, &mut buf).unwrap();
        assert_eq!(buf, b"A /a\nC \"/x\\ny\"\nD /\xff\xfe\n");
        let back: Vec<Change> = buf
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| parse_line(l).unwrap())
            .collect();
        assert_eq!(back, changes);
        assert!(parse_line(b"X /a").is_none());
        assert!(parse_line(b"A/a").is_none());
    }

    #[test]
    fn json_form() {
        let changes = vec![
            change(ChangeKind::Added, b"/x"),
            change(ChangeKind::Deleted, b"/caf\xe9"),
            change(ChangeKind::Changed, b"/\"q\"\n"),
        ];
        assert_eq!(
            to_json(&changes),
            r#"[{"kind":"A","path":"/x"},{"kind":"D","path_b64":"L2NhZuk="},{"kind":"C","path":"/\"q\"\n"}]"#
        );
        assert_eq!(to_json(&[]), "[]");
    }

    #[test]
    fn base64_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (i, o) in cases {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }
}
