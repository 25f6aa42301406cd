//! Parsing of `-o` mount options, in the overlayfs style that `mount -t fuse.ufsd` and
//! container tools' `mount_program` pass, and FUSE's own options.
//!
//! Options that do not change what the merged view means are accepted (overlayfs tuning
//! knobs are logged at debug level and otherwise ignored); options that would change it and
//! that ufsd does not implement are refused with an error naming them.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum OptionError {
    #[error("unknown mount option '{0}'")]
    Unknown(String),
    #[error("mount option '{0}' changes overlay semantics and is not supported by ufsd")]
    Unsupported(String),
    #[error("mount option '{0}' needs a value")]
    MissingValue(String),
    #[error("mount option '{0}' has an invalid value")]
    BadValue(String),
}

/// What the `-o` options asked for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub lowerdir: Vec<PathBuf>,
    pub upperdir: Option<PathBuf>,
    pub workdir: Option<PathBuf>,
    pub read_only: bool,
    pub allow_other: bool,
    /// Kernel mount flags passed through as they are (`nodev`, `noexec`, ...).
    pub flags: Vec<String>,
    pub fsname: Option<String>,
    /// Entry/attribute cache timeout.
    pub timeout: Option<Duration>,
    pub threads: Option<usize>,
    pub no_passthrough: bool,
    /// `noidlepoll`: never ask for idle CPUs to poll.
    pub no_idle_poll: bool,
    /// `uring`: ask for FUSE over io_uring.
    pub uring: bool,
    /// `trace`: log each copy-up and whiteout.
    pub trace: bool,
    /// `whiteout=overlay|oci` forces the whiteout format; `auto` (default) probes.
    pub whiteout: Option<crate::fs::WhiteoutFormat>,
    /// Overlayfs options accepted without effect, for the debug log.
    pub ignored: Vec<String>,
}

/// Splits `s` on unescaped `sep`; a backslash escapes the next character.
pub fn split_escaped(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                if next != sep {
                    cur.push('\\');
                }
                cur.push(next);
            }
        } else if c == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// Removes the backslash escapes left in one path.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl MountOptions {
    /// Adds one comma-separated `-o` argument.
    pub fn parse_into(&mut self, arg: &str) -> Result<(), OptionError> {
        for opt in split_escaped(arg, ',') {
            if !opt.is_empty() {
                self.parse_one(&opt)?;
            }
        }
        Ok(())
    }

    /// Parses any number of `-o` arguments.
    pub fn parse(args: &[String]) -> Result<MountOptions, OptionError> {
        let mut o = MountOptions::default();
        for a in args {
            o.parse_into(a)?;
        }
        Ok(o)
    }

    fn parse_one<'a>(&mut self, opt: &'a str) -> Result<(), OptionError> {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        let missing = || OptionError::MissingValue(key.to_string());
        let need = |v: Option<&'a str>| v.ok_or_else(missing);
        match key {
            "lowerdir" => {
                self.lowerdir = split_escaped(need(value)?, ':')
                    .into_iter()
                    .filter(|s| !s.is_empty())
                    .map(|s| PathBuf::from(unescape(&s)))
                    .collect();
            }
            "upperdir" => self.upperdir = Some(PathBuf::from(unescape(need(value)?))),
            "workdir" => self.workdir = Some(PathBuf::from(unescape(need(value)?))),
            "ro" => self.read_only = true,
            "rw" => self.read_only = false,
            "allow_other" | "allow_root" => self.allow_other = true,
            // Always on: the kernel enforces modes.
            "default_permissions" => {}
            "dev" | "nodev" | "suid" | "nosuid" | "exec" | "noexec" | "atime" | "noatime"
            | "sync" | "async" | "dirsync" => self.flags.push(key.to_string()),
            "relatime" | "norelatime" | "strictatime" | "nostrictatime" | "lazytime"
            | "nolazytime" | "auto" | "noauto" | "user" | "nouser" | "users" | "nofail"
            | "_netdev" | "defaults" => self.ignored.push(opt.to_string()),
            "fsname" => self.fsname = Some(need(value)?.to_string()),
            "subtype" => self.ignored.push(opt.to_string()),
            "timeout" => {
                let secs: f64 = need(value)?
                    .parse()
                    .map_err(|_| OptionError::BadValue(opt.to_string()))?;
                if !(0.0..=1e9).contains(&secs) {
                    return Err(OptionError::BadValue(opt.to_string()));
                }
                self.timeout = Some(Duration::from_secs_f64(secs));
            }
            "threads" => {
                let n: usize = need(value)?
                    .parse()
                    .map_err(|_| OptionError::BadValue(opt.to_string()))?;
                if n == 0 || n > 256 {
                    return Err(OptionError::BadValue(opt.to_string()));
                }
                self.threads = Some(n);
            }
            "nopassthrough" => self.no_passthrough = true,
            "noidlepoll" => self.no_idle_poll = true,
            "uring" => self.uring = true,
            "trace" => self.trace = true,
            "whiteout" => {
                self.whiteout = match need(value)? {
                    "overlay" => Some(crate::fs::WhiteoutFormat::Overlay),
                    "oci" => Some(crate::fs::WhiteoutFormat::Oci),
                    "auto" => None,
                    _ => return Err(OptionError::BadValue(opt.to_string())),
                }
            }
            // overlayfs options that leave the merged view as ufsd already shows it.
            "index" | "metacopy" | "nfs_export" => match value {
                Some("off") => self.ignored.push(opt.to_string()),
                _ => return Err(OptionError::Unsupported(opt.to_string())),
            },
            "redirect_dir" => match value {
                Some("off") | Some("nofollow") => self.ignored.push(opt.to_string()),
                _ => return Err(OptionError::Unsupported(opt.to_string())),
            },
            "verity" => match value {
                Some("off") => self.ignored.push(opt.to_string()),
                _ => return Err(OptionError::Unsupported(opt.to_string())),
            },
            "xino" | "uuid" | "userxattr" | "volatile" => self.ignored.push(opt.to_string()),
            "datadir+" | "lowerdir+" => return Err(OptionError::Unsupported(opt.to_string())),
            _ => return Err(OptionError::Unknown(opt.to_string())),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_style_options() {
        let o = MountOptions::parse(&[
            "rw,lowerdir=/a:/b\\:c:/d,upperdir=/u,workdir=/w,dev,suid".to_string()
        ])
        .unwrap();
        assert_eq!(
            o.lowerdir,
            vec![
                PathBuf::from("/a"),
                PathBuf::from("/b:c"),
                PathBuf::from("/d")
            ]
        );
        assert_eq!(o.upperdir, Some(PathBuf::from("/u")));
        assert_eq!(o.workdir, Some(PathBuf::from("/w")));
        assert_eq!(o.flags, vec!["dev".to_string(), "suid".to_string()]);
        assert!(!o.read_only);
    }

    #[test]
    fn several_o_arguments_merge() {
        let o = MountOptions::parse(&[
            "rw".to_string(),
            "lowerdir=/lower,upperdir=/upper/0/u,workdir=/upper/0/w".to_string(),
            "ro,allow_other".to_string(),
        ])
        .unwrap();
        assert_eq!(o.lowerdir, vec![PathBuf::from("/lower")]);
        assert!(o.read_only);
        assert!(o.allow_other);
    }

    #[test]
    fn escaped_comma_in_path() {
        let o = MountOptions::parse(&["lowerdir=/x\\,y".to_string()]).unwrap();
        assert_eq!(o.lowerdir, vec![PathBuf::from("/x,y")]);
    }

    #[test]
    fn semantic_options_are_refused() {
        for bad in [
            "metacopy=on",
            "index=on",
            "redirect_dir=on",
            "nfs_export=on",
            "verity=require",
        ] {
            assert_eq!(
                MountOptions::parse(&[bad.to_string()]),
                Err(OptionError::Unsupported(bad.to_string())),
                "{bad}"
            );
        }
        for ok in [
            "metacopy=off",
            "index=off",
            "redirect_dir=off",
            "xino=auto",
            "userxattr",
        ] {
            let o = MountOptions::parse(&[ok.to_string()]).unwrap();
            assert_eq!(o.ignored, vec![ok.to_string()]);
        }
    }

    #[test]
    fn bad_options() {
        assert_eq!(
            MountOptions::parse(&["frobnicate".to_string()]),
            Err(OptionError::Unknown("frobnicate".to_string()))
        );
        assert_eq!(
            MountOptions::parse(&["lowerdir".to_string()]),
            Err(OptionError::MissingValue("lowerdir".to_string()))
        );
        assert_eq!(
            MountOptions::parse(&["threads=0".to_string()]),
            Err(OptionError::BadValue("threads=0".to_string()))
        );
        let o = MountOptions::parse(&["timeout=2.5,threads=8".to_string()]).unwrap();
        assert_eq!(o.timeout, Some(Duration::from_millis(2500)));
        assert_eq!(o.threads, Some(8));
    }
}
