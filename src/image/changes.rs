//! Dockerfile instructions applied to an image config, as `docker commit -c` and
//! `docker import -c` apply them: `ENV`, `WORKDIR`, `ENTRYPOINT`, `CMD`, `EXPOSE`,
//! `VOLUME`, `LABEL`, `USER`, `STOPSIGNAL`.
//!
//! Rules (docker's where it has one):
//! - The keyword is case-insensitive; the rest is Dockerfile syntax. Words may be quoted
//!   with `"..."` (backslash escapes `"`, `\` and `$`) or `'...'` (literal), and a
//!   backslash outside quotes escapes the next character. No `$VAR` expansion.
//! - `ENTRYPOINT`, `CMD`: exec form `["a", "b"]` (a JSON array of strings) or shell form
//!   `a b`, stored as `["/bin/sh", "-c", "a b"]`. As in a Dockerfile, `ENTRYPOINT` clears
//!   an inherited `CMD` unless a `CMD` comes earlier in the same list of changes.
//! - `VOLUME`: a JSON array or words. `ENV` and `LABEL`: `k=v k2="v 2"`, or the legacy
//!   `ENV k the rest of the line`. A key set again replaces the earlier value in place.
//! - `EXPOSE 80 53/udp 8000-8002`: each port (ranges expanded) as `PORT/PROTO`, tcp by
//!   default.
//! - `WORKDIR rel` is joined to the current working directory (`/` when none).
//! - `STOPSIGNAL`: a signal name (`SIGTERM`, `TERM`, `SIGRTMIN+3`) or number.
//!
//! Every change is checked before any is applied, so a bad one leaves the config as it was.

use oci_spec::image::{Config, ImageConfiguration};

use super::ImageError;

const KNOWN: &str = "ENV, WORKDIR, ENTRYPOINT, CMD, EXPOSE, VOLUME, LABEL, USER, STOPSIGNAL";

/// Applies Dockerfile-syntax `changes`, in order, to `config`'s runtime config.
pub fn apply_changes(
    config: &mut ImageConfiguration,
    changes: &[String],
) -> Result<(), ImageError> {
    let mut c = config.config().clone().unwrap_or_default();
    let mut cmd_set = false;
    for change in changes {
        apply_one(&mut c, change, &mut cmd_set).map_err(|reason| {
            ImageError::Invalid(format!("invalid change {change:?}: {reason}"))
        })?;
    }
    config.set_config(Some(c));
    Ok(())
}

fn apply_one(c: &mut Config, change: &str, cmd_set: &mut bool) -> Result<(), String> {
    let line = change.trim();
    let (keyword, rest) = match line.find(char::is_whitespace) {
        Some(i) => (&line[..i], line[i..].trim()),
        None => (line, ""),
    };
    if keyword.is_empty() {
        return Err(format!("empty instruction (one of {KNOWN})"));
    }
    let keyword = keyword.to_ascii_uppercase();
    let need_args = || {
        if rest.is_empty() {
            Err(format!("{keyword} needs an argument"))
        } else {
            Ok(())
        }
    };
    match keyword.as_str() {
        "ENV" => {
            need_args()?;
            let mut env = c.env().clone().unwrap_or_default();
            for (k, v) in key_values(rest, "ENV")? {
                let prefix = format!("{k}=");
                let entry = format!("{k}={v}");
                match env.iter_mut().find(|e| e.starts_with(&prefix) || **e == k) {
                    Some(e) => *e = entry,
                    None => env.push(entry),
                }
            }
            c.set_env(Some(env));
        }
        "LABEL" => {
            need_args()?;
            let mut labels = c.labels().clone().unwrap_or_default();
            for (k, v) in key_values(rest, "LABEL")? {
                labels.insert(k, v);
            }
            c.set_labels(Some(labels));
        }
        "WORKDIR" => {
            need_args()?;
            let dir = single_word(rest, "WORKDIR")?;
            let dir = if dir.starts_with('/') {
                dir
            } else {
                let base = c.working_dir().clone().unwrap_or_else(|| "/".to_string());
                format!("{}/{dir}", base.trim_end_matches('/'))
            };
            c.set_working_dir(Some(dir));
        }
        "USER" => {
            need_args()?;
            c.set_user(Some(single_word(rest, "USER")?));
        }
        "STOPSIGNAL" => {
            need_args()?;
            let sig = single_word(rest, "STOPSIGNAL")?;
            check_signal(&sig)?;
            c.set_stop_signal(Some(sig));
        }
        "CMD" => {
            need_args()?;
            c.set_cmd(Some(command(rest)?));
            *cmd_set = true;
        }
        "ENTRYPOINT" => {
            need_args()?;
            c.set_entrypoint(Some(command(rest)?));
            if !*cmd_set {
                c.set_cmd(None);
            }
        }
        "EXPOSE" => {
            need_args()?;
            let mut ports = c.exposed_ports().clone().unwrap_or_default();
            for word in words(rest)? {
                for p in expand_port(&word)? {
                    if !ports.contains(&p) {
                        ports.push(p);
                    }
                }
            }
            c.set_exposed_ports(Some(ports));
        }
        "VOLUME" => {
            need_args()?;
            let list = match json_array(rest) {
                Some(v) => v,
                None => words(rest)?,
            };
            if list.iter().any(|v| v.is_empty()) {
                return Err("VOLUME paths must not be empty".to_string());
            }
            let mut vols = c.volumes().clone().unwrap_or_default();
            for v in list {
                if !vols.contains(&v) {
                    vols.push(v);
                }
            }
            c.set_volumes(Some(vols));
        }
        other => {
            return Err(format!(
                "{other} is not supported here (supported: {KNOWN})"
            ));
        }
    }
    Ok(())
}

/// A JSON array of strings (the exec form), or `None` when `s` is not one.
fn json_array(s: &str) -> Option<Vec<String>> {
    if !s.starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(s).ok()
}

/// Exec form as is; shell form wrapped in `/bin/sh -c`.
fn command(rest: &str) -> Result<Vec<String>, String> {
    Ok(match json_array(rest) {
        Some(v) => v,
        None => vec!["/bin/sh".to_string(), "-c".to_string(), rest.to_string()],
    })
}

/// Splits shell-like words: quotes and backslash escapes as in a Dockerfile.
fn words(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(ch) = chars.next() {
        match ch {
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(n) => cur.push(n),
                    None => cur.push('\\'),
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(n) => cur.push(n),
                        None => return Err("unterminated single quote".to_string()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(n @ ('"' | '\\' | '$')) => cur.push(n),
                            Some(n) => {
                                cur.push('\\');
                                cur.push(n);
                            }
                            None => return Err("unterminated double quote".to_string()),
                        },
                        Some(n) => cur.push(n),
                        None => return Err("unterminated double quote".to_string()),
                    }
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

fn single_word(rest: &str, what: &str) -> Result<String, String> {
    let w = words(rest)?;
    match w.as_slice() {
        [one] if !one.is_empty() => Ok(one.clone()),
        _ => Err(format!("{what} takes one value, got {rest:?}")),
    }
}

/// `k=v ...` pairs, or the legacy `k value with spaces` form.
fn key_values(rest: &str, what: &str) -> Result<Vec<(String, String)>, String> {
    let first_raw = rest.split_whitespace().next().unwrap_or_default();
    if !first_raw.contains('=') {
        // Legacy form: the first word is the key, the rest of the line the value.
        let key = first_raw.to_string();
        let value = rest[first_raw.len()..].trim();
        if value.is_empty() {
            return Err(format!("{what} {key} needs a value (or use {key}=VALUE)"));
        }
        let value = words(value)?.join(" ");
        return Ok(vec![(key, value)]);
    }
    let mut out = Vec::new();
    for w in words(rest)? {
        let Some((k, v)) = w.split_once('=') else {
            return Err(format!("{what}: {w:?} is not KEY=VALUE"));
        };
        if k.is_empty() {
            return Err(format!("{what}: {w:?} has an empty key"));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// `80`, `80/udp`, `8000-8002/tcp` as `PORT/PROTO` entries.
fn expand_port(word: &str) -> Result<Vec<String>, String> {
    let (ports, proto) = match word.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (word, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!(
            "EXPOSE {word}: protocol {proto} is not tcp, udp or sctp"
        ));
    }
    let port = |s: &str| {
        s.parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("EXPOSE {word}: {s:?} is not a port number (1-65535)"))
    };
    let (lo, hi) = match ports.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(ports)?;
            (p, p)
        }
    };
    if hi < lo {
        return Err(format!("EXPOSE {word}: the range ends before it starts"));
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
}

/// Accepts what docker's signal parser accepts on Linux: a number, or a name with or
/// without `SIG`, including `RTMIN+n` / `RTMAX-n`.
fn check_signal(sig: &str) -> Result<(), String> {
    if let Ok(n) = sig.parse::<u32>() {
        return if (1..=64).contains(&n) {
            Ok(())
        } else {
            Err(format!("STOPSIGNAL {sig}: not a signal number (1-64)"))
        };
    }
    let name = sig.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    const NAMES: &[&str] = &[
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
        "RTMIN", "RTMAX",
    ];
    let rt = |base: &str, sep: char| {
        name.strip_prefix(base)
            .and_then(|r| r.strip_prefix(sep))
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n <= 30)
    };
    if NAMES.contains(&name) || rt("RTMIN", '+') || rt("RTMAX", '-') {
        Ok(())
    } else {
        Err(format!("STOPSIGNAL {sig}: unknown signal"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::image::ConfigBuilder;

    fn base() -> ImageConfiguration {
        let mut cfg = ImageConfiguration::default();
        cfg.set_config(Some(
            ConfigBuilder::default()
                .env(vec!["PATH=/usr/bin:/bin".to_string(), "A=1".to_string()])
                .cmd(vec!["sh".to_string()])
                .working_dir("/srv".to_string())
                .build()
                .unwrap(),
        ));
        cfg
    }

    fn applied(changes: &[&str]) -> Config {
        let mut cfg = base();
        let changes: Vec<String> = changes.iter().map(|s| s.to_string()).collect();
        apply_changes(&mut cfg, &changes).unwrap();
        cfg.config().clone().unwrap()
    }

    fn v(items: &[&str]) -> Option<Vec<String>> {
        Some(items.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn env_forms() {
        let table: &[(&str, &[&str])] = &[
            ("ENV B=2", &["PATH=/usr/bin:/bin", "A=1", "B=2"]),
            ("env A=x", &["PATH=/usr/bin:/bin", "A=x"]),
            (
                "ENV B=\"two words\" C='$lit'",
                &["PATH=/usr/bin:/bin", "A=1", "B=two words", "C=$lit"],
            ),
            (
                "ENV B two words",
                &["PATH=/usr/bin:/bin", "A=1", "B=two words"],
            ),
            ("ENV B=a\\ b", &["PATH=/usr/bin:/bin", "A=1", "B=a b"]),
            ("ENV E=", &["PATH=/usr/bin:/bin", "A=1", "E="]),
        ];
        for (change, want) in table {
            assert_eq!(applied(&[change]).env(), &v(want), "{change}");
        }
    }

    #[test]
    fn commands_exec_and_shell_forms() {
        let c = applied(&["CMD [\"nginx\", \"-g\", \"daemon off;\"]"]);
        assert_eq!(c.cmd(), &v(&["nginx", "-g", "daemon off;"]));
        let c = applied(&["CMD echo hi there"]);
        assert_eq!(c.cmd(), &v(&["/bin/sh", "-c", "echo hi there"]));
        // A broken JSON array is the shell form, as in docker.
        let c = applied(&["CMD [not json"]);
        assert_eq!(c.cmd(), &v(&["/bin/sh", "-c", "[not json"]));
        // ENTRYPOINT clears an inherited CMD ...
        let c = applied(&["ENTRYPOINT [\"/app\"]"]);
        assert_eq!(c.entrypoint(), &v(&["/app"]));
        assert_eq!(c.cmd(), &None);
        // ... but not one set earlier in the same changes.
        let c = applied(&["CMD [\"--help\"]", "ENTRYPOINT /app run"]);
        assert_eq!(c.entrypoint(), &v(&["/bin/sh", "-c", "/app run"]));
        assert_eq!(c.cmd(), &v(&["--help"]));
    }

    #[test]
    fn other_instructions() {
        let c = applied(&[
            "WORKDIR app",
            "WORKDIR sub",
            "USER www-data:www-data",
            "STOPSIGNAL SIGQUIT",
            "EXPOSE 80 53/udp 8000-8002",
            "EXPOSE 80/tcp",
            "VOLUME [\"/data\", \"/logs\"]",
            "VOLUME /cache /data",
            "LABEL a=1 \"b c\"=\"d e\"",
            "LABEL legacy some value",
        ]);
        assert_eq!(c.working_dir(), &Some("/srv/app/sub".to_string()));
        assert_eq!(c.user(), &Some("www-data:www-data".to_string()));
        assert_eq!(c.stop_signal(), &Some("SIGQUIT".to_string()));
        assert_eq!(
            c.exposed_ports(),
            &v(&["80/tcp", "53/udp", "8000/tcp", "8001/tcp", "8002/tcp"])
        );
        assert_eq!(c.volumes(), &v(&["/data", "/logs", "/cache"]));
        let labels = c.labels().clone().unwrap();
        assert_eq!(labels["a"], "1");
        assert_eq!(labels["b c"], "d e");
        assert_eq!(labels["legacy"], "some value");
        assert_eq!(
            applied(&["WORKDIR /abs"]).working_dir(),
            &Some("/abs".into())
        );
        assert_eq!(applied(&["STOPSIGNAL 9"]).stop_signal(), &Some("9".into()));
    }

    #[test]
    fn bad_changes_are_refused_and_change_nothing() {
        let table: &[(&str, &str)] = &[
            ("RUN make", "not supported"),
            ("", "empty instruction"),
            ("ENV", "needs an argument"),
            ("ENV A", "needs a value"),
            ("ENV A=1 B", "is not KEY=VALUE"),
            ("ENV =x", "empty key"),
            ("ENV A=\"open", "unterminated"),
            ("EXPOSE 0", "not a port number"),
            ("EXPOSE 70000", "not a port number"),
            ("EXPOSE 80/icmp", "protocol"),
            ("EXPOSE 90-80", "ends before"),
            ("STOPSIGNAL SIGNOPE", "unknown signal"),
            ("STOPSIGNAL 99", "not a signal number"),
            ("USER a b", "takes one value"),
            ("VOLUME [\"\"]", "must not be empty"),
        ];
        for (change, why) in table {
            let mut cfg = base();
            let before = serde_json::to_string(&cfg).unwrap();
            let changes = vec!["ENV OK=1".to_string(), change.to_string()];
            let e = apply_changes(&mut cfg, &changes).unwrap_err().to_string();
            assert!(e.contains(why), "{change:?}: {e}");
            assert!(e.contains("invalid change"), "{e}");
            assert_eq!(serde_json::to_string(&cfg).unwrap(), before, "{change:?}");
        }
    }

    #[test]
    fn a_config_without_runtime_section_gets_one() {
        let mut cfg = ImageConfiguration::default();
        cfg.set_config(None);
        apply_changes(&mut cfg, &["USER 1000".to_string()]).unwrap();
        assert_eq!(
            cfg.config().as_ref().unwrap().user(),
            &Some("1000".to_string())
        );
    }
}
