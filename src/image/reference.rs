//! Image references as people type them — `base`, `base:latest`,
//! `registry.example:5000/ns/app:v1`, `app@sha256:…` — checked by docker's rules
//! (the grammar of distribution/reference):
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] path            (at most 255 characters)
//! domain     := host [ ":" port ]               host: DNS labels joined by "."
//! path       := component ( "/" component )*
//! component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}          (default "latest")
//! digest     := "sha256:" 64 lowercase hex digits
//! ```
//!
//! The first path element is a domain only when it has a `.` or a `:`, is `localhost`, or
//! has an upper-case letter, as in docker. Names are kept in docker's *familiar* form:
//! `docker.io/library/alpine` and `alpine` are the same name, stored as `alpine`. No
//! registry is ever implied: the store is local.
//!
//! Every stored tag is also an OCI `org.opencontainers.image.ref.name` (`name:tag`), whose
//! grammar is narrower than docker's (`a---b` or the tag `_x` are docker-valid but not
//! OCI-valid); such names are refused so that skopeo and umoci can always read the store.

use std::fmt;

use oci_spec::image::Digest;

use super::{ImageError, ImageResult};

/// The tag a name without one means.
pub const DEFAULT_TAG: &str = "latest";

const NAME_MAX: usize = 255;
const TAG_MAX: usize = 128;

/// A parsed image reference: a name with an optional tag and an optional digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    name: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

fn invalid(input: &str, reason: impl Into<String>) -> ImageError {
    ImageError::InvalidReference {
        input: input.to_string(),
        reason: reason.into(),
    }
}

fn is_lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// `[a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_lower_alnum(b[0]) || !is_lower_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_lower_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_lower_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `host [":" port]`, host being DNS labels (letters, digits, inner hyphens) joined by ".".
fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port
        && (p.is_empty() || !p.bytes().all(|c| c.is_ascii_digit()))
    {
        return false;
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        })
}

/// `[\w][\w.-]{0,127}`
fn valid_tag(t: &str) -> bool {
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= TAG_MAX
        && word(b[0])
        && b.iter().all(|c| word(*c) || *c == b'.' || *c == b'-')
}

/// The OCI `org.opencontainers.image.ref.name` grammar:
/// components joined by `/`, each `alnum (separator alnum)*` with `alnum` `[A-Za-z0-9]+`
/// and `separator` one of `- . _ : @ +` or `--`.
pub fn valid_oci_ref_name(r: &str) -> bool {
    r.split('/').all(|comp| {
        let b = comp.as_bytes();
        if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric()
        {
            return false;
        }
        let mut i = 0;
        while i < b.len() {
            if b[i].is_ascii_alphanumeric() {
                i += 1;
                continue;
            }
            let start = i;
            while i < b.len() && !b[i].is_ascii_alphanumeric() {
                i += 1;
            }
            let sep = &comp[start..i];
            let ok = sep == "--" || sep.len() == 1 && "-._:@+".contains(sep);
            if !ok {
                return false;
            }
        }
        true
    })
}

/// Whether `s` is 64 lowercase hex digits (what an image id looks like).
fn is_full_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
}

/// Parses `sha256:<64 hex>`; other algorithms are refused (the store only has sha256).
pub fn parse_sha256(s: &str) -> Option<Digest> {
    let hex = s.strip_prefix("sha256:")?;
    if !is_full_hex(hex) {
        return None;
    }
    s.parse().ok()
}

impl Reference {
    /// Parses and checks a reference; a name without a tag or digest keeps `tag() == None`.
    pub fn parse(input: &str) -> ImageResult<Reference> {
        if input.is_empty() {
            return Err(invalid(input, "empty name"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => {
                let digest = parse_sha256(d).ok_or_else(|| {
                    invalid(input, "a digest is sha256: and 64 lowercase hex digits")
                })?;
                (rest, Some(digest))
            }
            None => (input, None),
        };
        // A ':' after the last '/' starts the tag; one before it belongs to a port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let (n, t) = rest.split_at(last_slash + i);
                (n, Some(&t[1..]))
            }
            None => (rest, None),
        };
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return Err(invalid(
                input,
                format!(
                    "tag {t:?}: a tag is letters, digits, '_', '.' and '-', starts with a letter, digit or '_', and has at most {TAG_MAX} characters"
                ),
            ));
        }
        let name = Self::check_name(input, name)?;
        let r = Reference {
            name,
            tag: tag.map(str::to_string),
            digest,
        };
        if !valid_oci_ref_name(&r.ref_name()) {
            return Err(invalid(
                input,
                "not storable as an OCI ref.name, which allows only one of '.', '_', '-', or \"--\" between letters and digits",
            ));
        }
        Ok(r)
    }

    /// Parses the target of `tag`: a name with an optional tag (default `latest`), no digest.
    pub fn parse_tag_target(input: &str) -> ImageResult<Reference> {
        let r = Self::parse(input)?;
        if r.digest.is_some() {
            return Err(invalid(input, "a tag cannot include a digest"));
        }
        Ok(r.with_default_tag())
    }

    /// Checks the name part and returns it in familiar form.
    fn check_name(input: &str, name: &str) -> ImageResult<String> {
        if name.is_empty() {
            return Err(invalid(input, "empty name"));
        }
        if name.len() > NAME_MAX {
            return Err(invalid(
                input,
                format!("a name has at most {NAME_MAX} characters"),
            ));
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.bytes().any(|c| c.is_ascii_uppercase()) =>
            {
                (Some(first), rest)
            }
            _ => (None, name),
        };
        if let Some(d) = domain
            && !valid_domain(d)
        {
            return Err(invalid(input, format!("registry host {d:?} is not valid")));
        }
        for comp in path.split('/') {
            if comp.bytes().any(|c| c.is_ascii_uppercase()) {
                return Err(invalid(input, "repository name must be lowercase"));
            }
            if !valid_path_component(comp) {
                return Err(invalid(
                    input,
                    format!(
                        "name component {comp:?}: lowercase letters and digits, separated by one '.', one or two '_', or '-'s"
                    ),
                ));
            }
        }
        if domain.is_none() && is_full_hex(path) {
            return Err(invalid(
                input,
                "a 64-digit hexadecimal name would read as an image id",
            ));
        }
        // docker's familiar form: no docker.io, no library/.
        Ok(match domain {
            Some("docker.io" | "index.docker.io") => match path.strip_prefix("library/") {
                Some(p) if !p.contains('/') => p.to_string(),
                _ => path.to_string(),
            },
            Some(d) => format!("{d}/{path}"),
            None => path.to_string(),
        })
    }

    /// The repository name in familiar form (`alpine`, `registry.example/ns/app`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tag as written, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest as written, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same reference with the default tag when it has neither tag nor digest.
    pub fn with_default_tag(mut self) -> Reference {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some(DEFAULT_TAG.to_string());
        }
        self
    }

    /// `name:tag`, the tag defaulting to `latest`: the value of the
    /// `org.opencontainers.image.ref.name` annotation of the tag in index.json.
    pub fn ref_name(&self) -> String {
        format!(
            "{}:{}",
            self.name,
            self.tag.as_deref().unwrap_or(DEFAULT_TAG)
        )
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn valid_references() {
        // input, name, tag, ref.name
        let digest = format!("app@sha256:{HEX}");
        let cases: &[(&str, &str, Option<&str>, &str)] = &[
            ("base", "base", None, "base:latest"),
            ("base:latest", "base", Some("latest"), "base:latest"),
            (
                "base:v1.2-rc_3",
                "base",
                Some("v1.2-rc_3"),
                "base:v1.2-rc_3",
            ),
            ("base:V1", "base", Some("V1"), "base:V1"),
            ("ns/app", "ns/app", None, "ns/app:latest"),
            ("a/b/c/d:1", "a/b/c/d", Some("1"), "a/b/c/d:1"),
            (
                "registry.example/ns/app:v1",
                "registry.example/ns/app",
                Some("v1"),
                "registry.example/ns/app:v1",
            ),
            (
                "registry.example:5000/app",
                "registry.example:5000/app",
                None,
                "registry.example:5000/app:latest",
            ),
            (
                "localhost/app:1",
                "localhost/app",
                Some("1"),
                "localhost/app:1",
            ),
            (
                "Registry.Example/app",
                "Registry.Example/app",
                None,
                "Registry.Example/app:latest",
            ),
            ("a.b_c-d--e", "a.b_c-d--e", None, "a.b_c-d--e:latest"),
            (
                "docker.io/library/alpine:3",
                "alpine",
                Some("3"),
                "alpine:3",
            ),
            ("docker.io/alpine", "alpine", None, "alpine:latest"),
            ("index.docker.io/ns/app", "ns/app", None, "ns/app:latest"),
            ("abcd", "abcd", None, "abcd:latest"),
            (&digest, "app", None, "app:latest"),
        ];
        for (input, name, tag, ref_name) in cases {
            let r = Reference::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.name(), *name, "{input}");
            assert_eq!(r.tag(), *tag, "{input}");
            assert_eq!(r.ref_name(), *ref_name, "{input}");
        }
        let r = Reference::parse(&digest).unwrap();
        assert_eq!(r.digest().unwrap().digest(), HEX);
        assert_eq!(r.to_string(), digest);
    }

    #[test]
    fn invalid_references() {
        let long_tag = format!("a:{}", "t".repeat(129));
        let long_name = "a".repeat(256);
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("Base", "lowercase"),
            ("ns/App", "lowercase"),
            ("base:", "tag"),
            ("base:-x", "tag"),
            ("base:.x", "tag"),
            ("base:a/b", "registry host"), // the ':' is before a '/': "base:a" is a domain
            ("base:a b", "tag"),
            (&long_tag, "tag"),
            (&long_name, "255"),
            ("a..b", "component"),
            ("a___b", "component"),
            ("-a", "component"),
            ("a-", "component"),
            ("a//b", "component"),
            ("/a", "component"),
            ("a/", "component"),
            ("a@sha256:abc", "digest"),
            ("a@md5:0123", "digest"),
            ("host:port/a", "registry host"),
            ("-host.example/a", "registry host"),
            (HEX, "image id"),
            ("a---b", "OCI ref.name"),
            ("a__b", "OCI ref.name"),
            ("base:a..b", "OCI ref.name"),
            ("base:_x", "OCI ref.name"), // docker-valid, but ":_" is two separators
            ("base:a__b", "OCI ref.name"),
            ("base:A_", "OCI ref.name"),
            ("a b", "component"),
        ];
        for (input, why) in cases {
            match Reference::parse(input) {
                Ok(r) => panic!("{input:?} parsed as {r:?}"),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.contains(why), "{input:?}: {msg} (expected {why:?})");
                }
            }
        }
    }

    #[test]
    fn tag_targets_default_the_tag_and_refuse_digests() {
        let r = Reference::parse_tag_target("base").unwrap();
        assert_eq!(r.tag(), Some("latest"));
        assert_eq!(r.to_string(), "base:latest");
        let e = Reference::parse_tag_target(&format!("base@sha256:{HEX}")).unwrap_err();
        assert!(e.to_string().contains("cannot include a digest"), "{e}");
    }

    #[test]
    fn oci_ref_name_grammar() {
        for ok in [
            "latest",
            "base:latest",
            "r.example:5000/ns/app:v1",
            "a--b",
            "a+b@c",
        ] {
            assert!(valid_oci_ref_name(ok), "{ok}");
        }
        for bad in ["", "a//b", "a---b", "a:-b", "a_", "_a", "a b"] {
            assert!(!valid_oci_ref_name(bad), "{bad}");
        }
    }
}
