//! `ufsd import`: a tarball of a root filesystem becomes a one-layer image, as with
//! `docker import`.
//!
//! 1. The config is built (and `-c` changes applied) first, so a bad change fails before
//!    any work.
//! 2. The input (gzip detected by its magic number) is extracted with the safe extractor
//!    into a scratch directory under the store's `tmp/`: nothing is written outside it
//!    (docs/layers.md, "Extracting", has the rules), and what it may expand to is bounded.
//! 3. That tree is written back as a normalised layer by [`write_layer`] (sorted,
//!    deterministic: the same tree always gives the same diff_id), gzip-compressed and
//!    hashed on the way into the store as one blob.
//! 4. The image is recorded and tagged. The scratch directory is removed in every case.
//!
//! Any error before step 3 leaves the store as it was; the tag is checked by the caller
//! before anything starts.

use std::io::{self, BufReader, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use oci_spec::image::{
    Arch, ConfigBuilder, HistoryBuilder, ImageConfiguration, ImageConfigurationBuilder, MediaType,
    Os, RootFsBuilder,
};
use sha2::{Digest as _, Sha256};

use super::{Limited, MaybeGzip, Progress, available_bytes};
use crate::image::changes::apply_changes;
use crate::image::layer::{
    ExtractOptions, ExtractStats, LayerGzEncoder, LayerOptions, LayerStats, extract_layer_limited,
    write_layer,
};
use crate::image::reference::Reference;
use crate::image::rfc3339;
use crate::image::store::{ImageId, Store, sha256_digest};
use crate::image::{ImageError, ImageResult};

/// How to import.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Dockerfile instructions applied to the new config (`-c`).
    pub changes: Vec<String>,
    /// The history entry's comment (`-m`).
    pub message: Option<String>,
    /// Most bytes the (decompressed) input may hold; default: half the space free on the
    /// store's filesystem, since the tree is written once extracted and once as a blob.
    pub max_bytes: Option<u64>,
    pub extract: ExtractOptions,
    pub layer: LayerOptions,
}

/// What [`import`] did.
#[derive(Clone, Debug)]
pub struct ImportReport {
    pub id: ImageId,
    pub diff_id: oci_spec::image::Digest,
    pub gzip_input: bool,
    pub extracted: ExtractStats,
    pub layer: LayerStats,
}

/// The config of an imported image: this platform, created now (or at
/// `SOURCE_DATE_EPOCH`, so that importing the same tarball gives the same id), one history
/// entry.
fn new_config(opts: &ImportOptions) -> ImageResult<ImageConfiguration> {
    let now = rfc3339::format(opts.layer.source_date_epoch.unwrap_or_else(rfc3339::now));
    let mut history = HistoryBuilder::default()
        .created(now.clone())
        .created_by("ufsd import".to_string());
    if let Some(m) = &opts.message {
        history = history.comment(m.clone());
    }
    let history = history
        .build()
        .map_err(|e| ImageError::Invalid(format!("history: {e}")))?;
    let mut config = ImageConfigurationBuilder::default()
        .created(now)
        .architecture(Arch::default())
        .os(Os::default())
        .config(
            ConfigBuilder::default()
                .build()
                .map_err(|e| ImageError::Invalid(format!("config: {e}")))?,
        )
        .rootfs(
            RootFsBuilder::default()
                .typ("layers".to_string())
                .diff_ids(Vec::<String>::new())
                .build()
                .map_err(|e| ImageError::Invalid(format!("rootfs: {e}")))?,
        )
        .history(vec![history])
        .build()
        .map_err(|e| ImageError::Invalid(format!("config: {e}")))?;
    apply_changes(&mut config, &opts.changes)?;
    Ok(config)
}

/// Imports the tarball `input` as a one-layer image tagged `tag`. `total` is the input's
/// size when known (for progress).
pub fn import(
    store: &Store,
    input: impl Read,
    total: Option<u64>,
    tag: &Reference,
    opts: &ImportOptions,
    progress: &dyn Progress,
) -> ImageResult<ImportReport> {
    let config = new_config(opts)?;
    // Held throughout: garbage collection would empty tmp/, our scratch space included.
    let _pin = store.pin()?;
    let scratch = store.scratch_dir("import")?;
    let max = match opts.max_bytes {
        Some(m) => m,
        None => available_bytes(store.root())? / 2,
    };
    progress.begin("extracting", total);
    let input = BufReader::with_capacity(1 << 20, super::Counted::new(input, progress));
    let tar = MaybeGzip::detect(input).map_err(ImageError::io("reading", "the input"))?;
    let gzip_input = tar.is_gzip();
    let extracted = extract_layer_limited(
        Limited::new(tar, max.saturating_add(1 << 20)),
        scratch.path(),
        &opts.extract,
        Some(max),
    )
    .map_err(|e| match e {
        ImageError::Invalid(m) => ImageError::Invalid(m.replacen("layer tar", "input tar", 1)),
        other => other,
    })?;
    progress.end();

    progress.begin("writing layer", None);
    let (blob, layer, diff_id) = store_layer(store, scratch.path(), &opts.layer, progress)?;
    progress.end();
    let id = store.add_image(config, vec![(blob, diff_id.clone())], Some(tag))?;
    Ok(ImportReport {
        id,
        diff_id,
        gzip_input,
        extracted,
        layer,
    })
}

/// A writer that hashes the uncompressed tar on its way to the compressor.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The reading end of the pipe from the layer writer: at the end of the stream it fails
/// unless the writer said it finished, so a failed writer never leaves a truncated blob.
struct Finished<R> {
    inner: R,
    ok: Arc<AtomicBool>,
}

impl<R: Read> Read for Finished<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() && !self.ok.load(Ordering::Acquire) {
            return Err(io::Error::other("the layer writer stopped"));
        }
        Ok(n)
    }
}

/// Writes the tree `dir` as a gzip layer blob: the layer writer runs in a thread, piping
/// into [`Store::put_blob`]. Returns the blob, the writer's stats and the diff_id.
pub(crate) fn store_layer(
    store: &Store,
    dir: &std::path::Path,
    opts: &LayerOptions,
    progress: &dyn Progress,
) -> ImageResult<(
    oci_spec::image::Descriptor,
    LayerStats,
    oci_spec::image::Digest,
)> {
    let (reader, writer) = io::pipe().map_err(ImageError::io("pipe", dir))?;
    let ok = Arc::new(AtomicBool::new(false));
    let ok_w = ok.clone();
    std::thread::scope(|s| {
        let worker = s.spawn(
            move || -> ImageResult<(LayerStats, oci_spec::image::Digest)> {
                let gz = LayerGzEncoder::new(io::BufWriter::with_capacity(1 << 20, writer));
                let mut hw = HashingWriter {
                    inner: gz,
                    hasher: Sha256::new(),
                };
                let stats = write_layer(dir, &[], super::Counted::new(&mut hw, progress), opts)?;
                let HashingWriter { inner, hasher } = hw;
                let pipe = inner
                    .finish()
                    .map_err(ImageError::io("compressing layer of", dir))?
                    .into_inner()
                    .map_err(|e| ImageError::io("compressing layer of", dir)(e.into_error()))?;
                let hex = hex::encode(hasher.finalize());
                let diff_id = crate::image::reference::parse_sha256(&format!("sha256:{hex}"))
                    .unwrap_or_else(|| sha256_digest(b""));
                // Before the pipe closes: the reader takes its end as success only then.
                ok_w.store(true, Ordering::Release);
                drop(pipe);
                Ok((stats, diff_id))
            },
        );
        let stored = store.put_blob(
            Finished {
                inner: reader,
                ok: ok.clone(),
            },
            MediaType::ImageLayerGzip,
        );
        let written = worker
            .join()
            .map_err(|_| ImageError::Invalid("the layer writer panicked".to_string()))?;
        // The writer's own error says more than the reader's "stopped".
        let (stats, diff_id) = written?;
        Ok((stored?, stats, diff_id))
    })
}
