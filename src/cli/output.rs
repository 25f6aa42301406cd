//! Where a command writes a tar: a file, written to a temporary name beside it and renamed
//! into place once complete (so a failed command leaves no half-written file), or standard
//! output when it is not a terminal. An existing path that is not a regular file (a device
//! such as `/dev/null`, a fifo) is written to directly: renaming over it would replace it.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// An output being written.
pub struct Output {
    sink: Sink,
    /// Where writes go once the file was committed.
    done: std::io::Sink,
}

enum Sink {
    File {
        tmp: PathBuf,
        dest: PathBuf,
        file: Option<BufWriter<File>>,
    },
    Stdout(BufWriter<std::io::Stdout>),
    /// A device or fifo named by the user.
    Direct(PathBuf, BufWriter<File>),
}

impl Output {
    /// `path`, or standard output when `path` is `None` or `-`; refuses a terminal.
    pub fn open(path: Option<&Path>) -> Result<Output> {
        match path.filter(|p| p.as_os_str() != "-") {
            None => {
                if std::io::stdout().is_terminal() {
                    bail!(
                        "refusing to write a tar to a terminal: give -o FILE or redirect standard output"
                    );
                }
                Ok(Output {
                    sink: Sink::Stdout(BufWriter::with_capacity(1 << 20, std::io::stdout())),
                    done: std::io::sink(),
                })
            }
            Some(dest) if dest.metadata().is_ok_and(|m| !m.is_file() && !m.is_dir()) => {
                let file = File::options()
                    .write(true)
                    .open(dest)
                    .with_context(|| format!("opening {}", dest.display()))?;
                Ok(Output {
                    sink: Sink::Direct(dest.to_path_buf(), BufWriter::with_capacity(1 << 20, file)),
                    done: std::io::sink(),
                })
            }
            Some(dest) => {
                let name = dest
                    .file_name()
                    .with_context(|| format!("{}: not a file name", dest.display()))?;
                let tmp = dest.with_file_name(format!(
                    ".{}.ufsd-tmp-{}",
                    name.to_string_lossy(),
                    std::process::id()
                ));
                let file = File::options()
                    .write(true)
                    .create_new(true)
                    .open(&tmp)
                    .with_context(|| format!("creating {}", tmp.display()))?;
                Ok(Output {
                    sink: Sink::File {
                        tmp,
                        dest: dest.to_path_buf(),
                        file: Some(BufWriter::with_capacity(1 << 20, file)),
                    },
                    done: std::io::sink(),
                })
            }
        }
    }

    /// The writer.
    pub fn writer(&mut self) -> &mut dyn Write {
        match &mut self.sink {
            Sink::File { file: Some(f), .. } => f,
            Sink::File { file: None, .. } => &mut self.done,
            Sink::Stdout(w) => w,
            Sink::Direct(_, w) => w,
        }
    }

    /// Flushes, syncs and renames the file into place.
    pub fn commit(mut self) -> Result<()> {
        match &mut self.sink {
            Sink::Stdout(w) => w.flush().context("writing to standard output"),
            Sink::Direct(path, w) => w
                .flush()
                .with_context(|| format!("writing {}", path.display())),
            Sink::File { tmp, dest, file } => {
                let Some(w) = file.take() else {
                    return Ok(());
                };
                let f = w
                    .into_inner()
                    .map_err(|e| e.into_error())
                    .with_context(|| format!("writing {}", tmp.display()))?;
                f.sync_all()
                    .with_context(|| format!("syncing {}", tmp.display()))?;
                std::fs::rename(&*tmp, &*dest)
                    .with_context(|| format!("renaming into place {}", dest.display()))?;
                tmp.clear();
                Ok(())
            }
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if let Sink::File { tmp, .. } = &self.sink
            && !tmp.as_os_str().is_empty()
        {
            let _ = std::fs::remove_file(tmp);
        }
    }
}
