//! Moving images in and out of the store (docs/transfer.md):
//!
//! - [`import`]: a rootfs tarball (plain or gzip) becomes a one-layer image, through the
//!   safe extractor and the deterministic layer writer;
//! - [`export`]: the flattened tree of an image, a container or any directory as one tar;
//! - [`save`]: images as an OCI image layout, a directory or a tar of one;
//! - [`load`]: an OCI image layout (directory or tar) or a `docker save` tarball into the
//!   store, every digest checked before the store is touched.
//!
//! The store is never left half-changed: everything is checked (and extracted, hashed)
//! in scratch space first, blobs are written only once it all holds, and index.json last.
//! Long steps report bytes to a [`Progress`], which the CLI shows as a bar on a terminal.

pub mod export;
pub mod import;
pub mod load;
pub mod save;

use std::io::{self, BufRead, Read, Write};

use flate2::read::MultiGzDecoder;

use super::{ImageError, ImageResult};

/// Where long operations report how far they are. Implementations must be cheap to call
/// often; [`Quiet`] does nothing.
pub trait Progress: Sync {
    /// A new step: what it is, and how many bytes it will take when known.
    fn begin(&self, what: &str, total: Option<u64>);
    /// `bytes` more done in the current step.
    fn advance(&self, bytes: u64);
    /// The current step is done.
    fn end(&self);
}

/// No progress output.
pub struct Quiet;

impl Progress for Quiet {
    fn begin(&self, _: &str, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
    fn end(&self) {}
}

/// A reader or writer that reports the bytes passing through it.
pub struct Counted<'a, T> {
    inner: T,
    progress: &'a dyn Progress,
}

impl<'a, T> Counted<'a, T> {
    pub fn new(inner: T, progress: &'a dyn Progress) -> Self {
        Counted { inner, progress }
    }
}

impl<T: Read> Read for Counted<'_, T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

impl<T: Write> Write for Counted<'_, T> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that fails once more than `max` bytes came through it: the bound on what a
/// compressed input may expand to.
pub struct Limited<R> {
    inner: R,
    left: u64,
    max: u64,
}

impl<R> Limited<R> {
    pub fn new(inner: R, max: u64) -> Self {
        Limited {
            inner,
            left: max,
            max,
        }
    }
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the input expands to more than {} bytes, the limit (see --max-size)",
                    self.max
                ),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// gzip's magic number.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// A stream decompressed if it starts with gzip's magic number, else as it is.
pub enum MaybeGzip<R: BufRead> {
    Plain(R),
    Gzip(Box<MultiGzDecoder<R>>),
}

impl<R: BufRead> MaybeGzip<R> {
    /// Looks at the first bytes of `r` (without consuming them) to choose.
    pub fn detect(mut r: R) -> io::Result<MaybeGzip<R>> {
        let head = loop {
            match r.fill_buf() {
                Ok(b) => break b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        Ok(if head.starts_with(&GZIP_MAGIC) {
            MaybeGzip::Gzip(Box::new(MultiGzDecoder::new(r)))
        } else {
            MaybeGzip::Plain(r)
        })
    }

    pub fn is_gzip(&self) -> bool {
        matches!(self, MaybeGzip::Gzip(_))
    }
}

impl<R: BufRead> Read for MaybeGzip<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            MaybeGzip::Plain(r) => r.read(buf),
            MaybeGzip::Gzip(r) => r
                .read(buf)
                .map_err(|e| io::Error::new(e.kind(), format!("bad gzip stream: {e}"))),
        }
    }
}

/// The bytes free for unprivileged use on the filesystem holding `path`.
pub fn available_bytes(path: &std::path::Path) -> ImageResult<u64> {
    let fd = crate::sys::open_root(path).map_err(ImageError::io("opening", path))?;
    let st = crate::sys::statvfs(std::os::fd::AsFd::as_fd(&fd))
        .map_err(|e| ImageError::sys("statvfs", path, e))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(mut r: impl Read) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        r.read_to_end(&mut v).map(|_| v)
    }

    #[test]
    fn gzip_is_told_by_its_magic() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"hello").unwrap();
        let gz = gz.finish().unwrap();
        let d = MaybeGzip::detect(&gz[..]).unwrap();
        assert!(d.is_gzip());
        assert_eq!(read_all(d).unwrap(), b"hello");
        let d = MaybeGzip::detect(&b"plain"[..]).unwrap();
        assert!(!d.is_gzip());
        assert_eq!(read_all(d).unwrap(), b"plain");
        let bad = MaybeGzip::detect(&gz[..gz.len() - 4]).unwrap();
        assert!(
            read_all(bad)
                .unwrap_err()
                .to_string()
                .contains("bad gzip stream")
        );
    }

    #[test]
    fn limited_stops_past_its_limit() {
        assert_eq!(
            read_all(Limited::new(&[1u8; 10][..], 10)).unwrap().len(),
            10
        );
        let e = read_all(Limited::new(&[1u8; 11][..], 10)).unwrap_err();
        assert!(e.to_string().contains("more than 10 bytes"), "{e}");
    }
}
