//! Committing an upper layer as a new image (docs/containers.md, "commit"): the upper
//! layer becomes one gzip layer blob written through [`Store::put_blob`] while it is
//! produced, on top of the parent image's layers, with a config inheriting the parent's.
//!
//! Nothing is recorded until everything is written: the blob goes through the store's
//! temp file and rename; the config, manifest and index.json come after. A failure at any
//! point (a `.wh.*` name, a read error, a bad `-c` change) leaves index.json as it was
//! and no blob behind. Works on directories only; pausing a live mount is the caller's
//! business ([`crate::container`]).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use oci_spec::image::{Descriptor, Digest, HistoryBuilder, ImageConfiguration, MediaType};
use sha2::{Digest as _, Sha256};

use super::layer::{LayerGzEncoder, LayerOptions, LayerStats, write_layer};
use super::reference::Reference;
use super::store::{Image, ImageId, Store};
use super::{ImageError, ImageResult, changes, diff, rfc3339};

/// How the layer blob is compressed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compress {
    /// gzip (`tar+gzip`), level 1 where the data compresses, stored where it does not
    /// ([`LayerGzEncoder`]): every tool reads it.
    #[default]
    Gzip,
    /// No compression (`tar`): the blob digest is the diff_id, the fastest commit.
    None,
}

/// What to commit and how to describe it.
#[derive(Default)]
pub struct CommitOptions<'a> {
    pub author: Option<String>,
    pub message: Option<String>,
    /// Dockerfile instructions for the config (see [`changes`]).
    pub changes: Vec<String>,
    /// The history's `created_by`.
    pub created_by: Option<String>,
    /// The tag to give the new image.
    pub tag: Option<Reference>,
    pub layer: LayerOptions,
    pub compress: Compress,
    /// Called with the number of uncompressed tar bytes written so far.
    pub progress: Option<&'a (dyn Fn(u64) + Sync)>,
}

/// What a commit made.
#[derive(Debug)]
pub struct Committed {
    pub id: ImageId,
    /// The new layer, `None` when the upper layer changed nothing (`empty_layer`).
    pub layer: Option<(Descriptor, Digest)>,
    pub stats: LayerStats,
}

/// Commits `upper` (over `lowers`, top-most first) as a new image on top of `parent`.
pub fn commit(
    store: &Store,
    upper: &Path,
    lowers: &[PathBuf],
    parent: Option<&Image>,
    opts: &CommitOptions<'_>,
) -> ImageResult<Committed> {
    let mut config = match parent {
        Some(p) => p.config.clone(),
        None => ImageConfiguration::default(),
    };
    // Changes are checked before anything is written.
    changes::apply_changes(&mut config, &opts.changes)?;
    let changed = !diff::diff(upper, lowers)?.is_empty();
    let _pin = store.pin()?;
    let (layer, stats) = if changed {
        let (desc, diff_id, stats) = write_layer_blob(store, upper, lowers, opts)?;
        (Some((desc, diff_id)), stats)
    } else {
        (None, LayerStats::default())
    };
    let created = rfc3339::format(opts.layer.source_date_epoch.unwrap_or_else(rfc3339::now));
    config.set_created(Some(created.clone()));
    if opts.author.is_some() {
        config.set_author(opts.author.clone());
    }
    let mut history = config.history().clone().unwrap_or_default();
    let mut entry = HistoryBuilder::default()
        .created(created)
        .created_by(
            opts.created_by
                .clone()
                .unwrap_or_else(|| "ufsd commit".to_string()),
        )
        .build()
        .map_err(|e| ImageError::Invalid(format!("history entry: {e}")))?;
    entry.set_author(opts.author.clone());
    entry.set_comment(opts.message.clone());
    if layer.is_none() {
        entry.set_empty_layer(Some(true));
    }
    history.push(entry);
    config.set_history(Some(history));
    let mut layers: Vec<(Descriptor, Digest)> = parent
        .map(|p| {
            p.layers
                .iter()
                .map(|l| (l.blob.clone(), l.diff_id.clone()))
                .collect()
        })
        .unwrap_or_default();
    layers.extend(layer.clone());
    let diff_ids = layers.iter().map(|(_, d)| d.to_string()).collect();
    config.rootfs_mut().set_diff_ids(diff_ids);
    let id = store.add_image(config, layers, opts.tag.as_ref())?;
    Ok(Committed { id, layer, stats })
}

/// A writer that hashes what it passes on and reports progress.
struct HashingWriter<'a, W> {
    inner: W,
    hasher: Sha256,
    written: u64,
    progress: Option<&'a (dyn Fn(u64) + Sync)>,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        if let Some(p) = self.progress {
            p(self.written);
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The sending half of an in-process pipe of byte chunks.
struct ChunkWriter {
    tx: mpsc::SyncSender<Result<Vec<u8>, String>>,
}

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tx
            .send(Ok(buf.to_vec()))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "blob writer stopped"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The receiving half: a `Read` of the chunks, failing if the producer failed.
struct ChunkReader {
    rx: mpsc::Receiver<Result<Vec<u8>, String>>,
    chunk: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(c)) if c.is_empty() => self.done = true,
                Ok(Ok(c)) => {
                    self.chunk = c;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(io::Error::other(e)),
                // The producer went away without saying it finished: it failed.
                Err(_) => return Err(io::Error::other("the layer writer stopped")),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Writes the layer of `upper` into a new blob; returns its descriptor and diff_id. The
/// tar is produced (and gzipped) on one thread while the store hashes and writes the
/// compressed stream on this one.
fn write_layer_blob(
    store: &Store,
    upper: &Path,
    lowers: &[PathBuf],
    opts: &CommitOptions<'_>,
) -> ImageResult<(Descriptor, Digest, LayerStats)> {
    let (tx, rx) = mpsc::sync_channel::<Result<Vec<u8>, String>>(16);
    let media_type = match opts.compress {
        Compress::Gzip => MediaType::ImageLayerGzip,
        Compress::None => MediaType::ImageLayer,
    };
    std::thread::scope(|scope| {
        let producer = scope.spawn(|| -> ImageResult<(Digest, LayerStats)> {
            let sink = ChunkWriter { tx: tx.clone() };
            let result = (|| -> ImageResult<(Digest, LayerStats)> {
                let mut chunked = io::BufWriter::with_capacity(1 << 20, sink);
                let (hash, stats) = match opts.compress {
                    Compress::Gzip => {
                        let gz = LayerGzEncoder::new(&mut chunked);
                        let mut w = hashing(gz, opts.progress);
                        let stats = write_layer(upper, lowers, &mut w, &opts.layer)?;
                        w.inner
                            .finish()
                            .map_err(ImageError::io("compressing layer of", upper))?;
                        (w.hasher, stats)
                    }
                    Compress::None => {
                        let mut w = hashing(&mut chunked, opts.progress);
                        let stats = write_layer(upper, lowers, &mut w, &opts.layer)?;
                        (w.hasher, stats)
                    }
                };
                chunked
                    .flush()
                    .map_err(ImageError::io("writing layer of", upper))?;
                Ok((super::store::digest_from_hasher(hash), stats))
            })();
            let _ = match &result {
                Ok(_) => tx.send(Ok(Vec::new())),
                Err(e) => tx.send(Err(e.to_string())),
            };
            result
        });
        let reader = ChunkReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
            done: false,
        };
        let stored = store.put_blob(reader, media_type);
        let produced = producer
            .join()
            .unwrap_or_else(|_| Err(ImageError::Invalid("the layer writer panicked".into())));
        match (produced, stored) {
            (Ok((diff_id, stats)), Ok(desc)) => Ok((desc, diff_id, stats)),
            // The store stopped reading (disk full, say): its error is the cause.
            (Err(ImageError::Io { source, .. }), Err(s))
                if source.kind() == io::ErrorKind::BrokenPipe =>
            {
                Err(s)
            }
            // Otherwise the producer's error is the cause; the store only saw the
            // stream fail.
            (Err(p), _) => Err(p),
            (Ok(_), Err(s)) => Err(s),
        }
    })
}

fn hashing<W: Write>(inner: W, progress: Option<&(dyn Fn(u64) + Sync)>) -> HashingWriter<'_, W> {
    HashingWriter {
        inner,
        hasher: Sha256::new(),
        written: 0,
        progress,
    }
}
