//! The paths of an archive being extracted, checked before anything is written.
//!
//! A path is split into components; empty components and `.` are dropped, so `./a//b/`
//! is `a/b`; leading `/` are stripped, so an absolute path lands inside the destination
//! (`/etc/passwd` is `etc/passwd`) as every OCI extractor does; a `..` component anywhere is
//! refused, since no layer needs one and resolving it would mean reasoning about symlinks.
//! An empty result names the destination itself.

/// The components of an archive path, or why it is refused.
pub fn components(raw: &[u8]) -> Result<Vec<&[u8]>, &'static str> {
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("a `..` component would leave the destination"),
            c => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_table() {
        let ok: &[(&[u8], &[&[u8]])] = &[
            (b"a/b", &[b"a", b"b"]),
            (b"./a//b/", &[b"a", b"b"]),
            (b"/etc/passwd", &[b"etc", b"passwd"]),
            (b"///x", &[b"x"]),
            (b"./", &[]),
            (b".", &[]),
            (b"", &[]),
            (b"a/.../b", &[b"a", b"...", b"b"]),
            (b"..a/b..", &[b"..a", b"b.."]),
            (b"caf\xe9/\n", &[b"caf\xe9", b"\n"]),
        ];
        for (raw, want) in ok {
            assert_eq!(components(raw).unwrap(), *want, "{}", raw.escape_ascii());
        }
        for bad in [&b".."[..], b"../x", b"a/../../x", b"/..", b"a/.."] {
            assert!(components(bad).is_err(), "{}", bad.escape_ascii());
        }
    }
}
