//! `ufsd import FILE|- NAME[:TAG]`: a rootfs tarball as a one-layer image.

use std::fs::File;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use super::progress;
use crate::image::layer::{ExtractOptions, LayerOptions};
use crate::image::reference::Reference;
use crate::image::store::Store;
use crate::image::transfer::import::{ImportOptions, import};

/// Create an image from a tarball (like docker import).
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    ufsd import rootfs.tar.gz base:latest\n  \
    tar -C /srv/rootfs -c . | ufsd import - base:v1 -m 'from /srv/rootfs'\n\n\
    The tarball (plain or gzip, detected) is extracted safely into scratch space (no\n\
    `..`, no writing through symlinks, links must stay inside, device nodes and set-id\n\
    bits only as root; see docs/transfer.md), then stored as one normalised gzip layer.\n\
    Prints the new image id. The store is unchanged if anything fails.\n\
    SOURCE_DATE_EPOCH clamps file times and sets the created time (a reproducible id).")]
pub struct ImportArgs {
    /// The tarball, or - for standard input.
    file: PathBuf,
    /// The image's name, NAME[:TAG] (tag default latest).
    name: String,
    /// A Dockerfile instruction to apply to the config (ENV, CMD, ...); repeatable.
    #[arg(short = 'c', long = "change", value_name = "INSTRUCTION")]
    changes: Vec<String>,
    /// A comment for the history entry.
    #[arg(short, long)]
    message: Option<String>,
    /// Refuse input that expands to more than this many bytes (suffixes K, M, G, T);
    /// default: half the free space of the store's filesystem.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_size: Option<u64>,
}

/// `123`, `10K`, `5M`, `2G`, `1T` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("{s:?}: unknown size suffix {c:?} (K, M, G, T)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?}: not a size"))
}

pub fn run(root: &Path, a: ImportArgs) -> Result<ExitCode> {
    let tag = Reference::parse_tag_target(&a.name)?;
    let (input, total): (Box<dyn Read>, Option<u64>) = if a.file.as_os_str() == "-" {
        if std::io::stdin().is_terminal() {
            anyhow::bail!("refusing to read a tar from a terminal: pipe one in or give FILE");
        }
        (Box::new(std::io::stdin().lock()), None)
    } else {
        let f = File::open(&a.file).with_context(|| format!("opening {}", a.file.display()))?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(f), len)
    };
    let store = Store::open(root)?;
    let opts = ImportOptions {
        changes: a.changes,
        message: a.message,
        max_bytes: a.max_size,
        extract: ExtractOptions::default(),
        layer: LayerOptions::from_env()?,
    };
    let bar = progress::for_stderr();
    let report = import(&store, input, total, &tag, &opts, bar.as_ref())?;
    for s in &report.extracted.skipped {
        eprintln!("ufsd: warning: skipped {}: {}", s.path.display(), s.reason);
    }
    println!("{}", report.id);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
