//! Blobs: content-addressed files under `blobs/sha256/`. Written by hashing into a temp
//! file that is fsynced and renamed into place; read through [`Verify`], which checks the
//! digest when the reader reaches the end, so a corrupt blob is an error naming it.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, Digest, MediaType};
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};

use super::{Store, sha256_hex, sync_dir};
use crate::image::{ImageError, ImageResult};

/// `sha256:<hex>` of a finished hasher.
pub(super) fn digest_of(hasher: Sha256) -> Digest {
    let hex = hex::encode(hasher.finalize());
    // 64 lowercase hex digits always parse.
    Digest::try_from(format!("sha256:{hex}")).unwrap_or_else(|_| unreachable!())
}

/// `sha256:<hex>` of a finished hasher (for callers that hash a stream themselves).
pub fn digest_from_hasher(hasher: Sha256) -> Digest {
    digest_of(hasher)
}

/// The digest of a byte string.
pub fn sha256_digest(bytes: &[u8]) -> Digest {
    let mut h = Sha256::new();
    h.update(bytes);
    digest_of(h)
}

/// Turns an io error back into the [`ImageError`] it carries (a digest mismatch found
/// inside a `Read`), or wraps it with the operation and path.
pub(crate) fn unwrap_io(op: &'static str, path: &Path, e: io::Error) -> ImageError {
    if e.get_ref().is_some_and(|inner| inner.is::<ImageError>()) {
        match e.into_inner().map(|inner| inner.downcast::<ImageError>()) {
            Some(Ok(image_error)) => return *image_error,
            Some(Err(other)) => return ImageError::io(op, path)(io::Error::other(other)),
            None => unreachable!("get_ref was Some"),
        }
    }
    ImageError::io(op, path)(e)
}

/// A reader that hashes what passes through it and, at the end, fails with
/// [`ImageError::DigestMismatch`] (inside an `io::Error` of kind `InvalidData`) unless the
/// content hashed to the expected digest.
pub struct Verify<R> {
    inner: R,
    hasher: Option<Sha256>,
    expected: Digest,
    what: &'static str,
    path: PathBuf,
}

impl<R: Read> Verify<R> {
    /// Verifies `inner` against `expected`; `what` and `path` name it in the error.
    pub fn new(inner: R, expected: Digest, what: &'static str, path: PathBuf) -> Verify<R> {
        Verify {
            inner,
            hasher: Some(Sha256::new()),
            expected,
            what,
            path,
        }
    }

    fn check(&mut self) -> io::Result<()> {
        let Some(hasher) = self.hasher.take() else {
            return Ok(());
        };
        let actual = digest_of(hasher);
        if actual == self.expected {
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            ImageError::DigestMismatch {
                what: self.what,
                digest: self.expected.to_string(),
                actual: actual.to_string(),
                path: self.path.clone(),
            },
        ))
    }

    /// A reader of `inner` that checks nothing: for content whose digest a reader inside
    /// `inner` already checks (a layer whose blob is its uncompressed tar).
    pub fn unchecked(inner: R, path: PathBuf) -> Verify<R> {
        Verify {
            inner,
            hasher: None,
            // Never compared: there is no hasher.
            expected: sha256_digest(b""),
            what: "",
            path,
        }
    }

    /// Reads whatever the consumer left (a tar reader stops at its end marker) and checks
    /// the digest. Call this before trusting anything read.
    pub fn finish(mut self) -> ImageResult<R> {
        io::copy(&mut self, &mut io::sink()).map_err(|e| unwrap_io("read", &self.path, e))?;
        self.check()
            .map_err(|e| unwrap_io("read", &self.path.clone(), e))?;
        Ok(self.inner)
    }

    /// The reader inside.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

impl<R: Read> Read for Verify<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.check()?;
        } else if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// A blob opened for reading, verified at its end.
pub type BlobReader = Verify<BufReader<File>>;

impl Store {
    /// Where the blob with `digest` lives (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> ImageResult<PathBuf> {
        Ok(self.root.join("blobs/sha256").join(sha256_hex(digest)?))
    }

    /// Whether the blob exists (its content is not checked).
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// Stores the bytes of `reader` as a blob and returns its descriptor. Hashes while
    /// writing to a temp file, fsyncs, renames into `blobs/sha256/`, fsyncs the directory.
    /// Storing a blob that exists replaces it with the same bytes, which repairs a corrupt
    /// copy. Holds a [`Pin`](super::Pin) meanwhile; hold one yourself until the blob is
    /// referenced from index.json.
    pub fn put_blob(
        &self,
        mut reader: impl Read,
        media_type: MediaType,
    ) -> ImageResult<Descriptor> {
        let _pin = self.pin()?;
        let tmp = self.temp_path("blob");
        let result = (|| {
            let file = File::options()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(ImageError::io("create", &tmp))?;
            let mut out = BufWriter::with_capacity(1 << 20, file);
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(unwrap_io("read blob content for", &tmp, e)),
                };
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n])
                    .map_err(ImageError::io("write", &tmp))?;
                size += n as u64;
            }
            let file = out
                .into_inner()
                .map_err(|e| ImageError::io("write", &tmp)(e.into_error()))?;
            file.sync_all().map_err(ImageError::io("sync", &tmp))?;
            let digest = digest_of(hasher);
            let dest = self.blob_path(&digest)?;
            fs::rename(&tmp, &dest).map_err(ImageError::io("rename into place", &dest))?;
            Ok(Descriptor::new(media_type, size, digest))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        let desc = result?;
        sync_dir(&self.root.join("blobs/sha256"))?;
        Ok(desc)
    }

    /// [`put_blob`](Self::put_blob) for bytes in memory.
    pub fn put_blob_bytes(&self, bytes: &[u8], media_type: MediaType) -> ImageResult<Descriptor> {
        self.put_blob(bytes, media_type)
    }

    /// Opens a blob for reading. The reader fails at its end if the content does not match
    /// `digest`; call [`Verify::finish`] if you may stop before the end.
    pub fn open_blob(&self, digest: &Digest) -> ImageResult<BlobReader> {
        let path = self.blob_path(digest)?;
        let file = File::open(&path).map_err(|e| missing_or_io(digest, &path, e))?;
        Ok(Verify::new(
            BufReader::with_capacity(1 << 20, file),
            digest.clone(),
            "blob",
            path,
        ))
    }

    /// Reads a whole (small) blob and checks its digest.
    pub fn read_blob_verified(&self, digest: &Digest) -> ImageResult<Vec<u8>> {
        let mut r = self.open_blob(digest)?;
        let mut bytes = Vec::new();
        r.read_to_end(&mut bytes)
            .map_err(|e| unwrap_io("read", &self.blob_path(digest).unwrap_or_default(), e))?;
        Ok(bytes)
    }

    /// Reads the JSON blob a descriptor points to, checking its digest and size.
    pub fn read_json<T: DeserializeOwned>(&self, desc: &Descriptor) -> ImageResult<T> {
        let bytes = self.read_blob_verified(desc.digest())?;
        if bytes.len() as u64 != desc.size() {
            return Err(ImageError::Invalid(format!(
                "blob {} has {} bytes, its descriptor says {}",
                desc.digest(),
                bytes.len(),
                desc.size()
            )));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            ImageError::Invalid(format!(
                "blob {} is not a valid {}: {e}",
                desc.digest(),
                desc.media_type()
            ))
        })
    }

    /// Checks that a blob exists with the size its descriptor gives (content not hashed).
    pub(super) fn check_blob_present(&self, desc: &Descriptor) -> ImageResult<()> {
        let path = self.blob_path(desc.digest())?;
        let meta = fs::metadata(&path).map_err(|e| missing_or_io(desc.digest(), &path, e))?;
        if meta.len() != desc.size() {
            return Err(ImageError::Invalid(format!(
                "blob {} has {} bytes, its descriptor says {} ({})",
                desc.digest(),
                meta.len(),
                desc.size(),
                path.display()
            )));
        }
        Ok(())
    }

    /// Hashes a stored blob and returns its actual digest.
    pub(super) fn hash_blob_file(path: &Path) -> ImageResult<Digest> {
        let mut f = File::open(path).map_err(ImageError::io("open", path))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match f.read(&mut buf) {
                Ok(0) => return Ok(digest_of(h)),
                Ok(n) => h.update(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ImageError::io("read", path)(e)),
            }
        }
    }
}

/// A missing file is [`ImageError::MissingBlob`]; anything else an io error.
pub(super) fn missing_or_io(digest: &Digest, path: &Path, e: io::Error) -> ImageError {
    if e.kind() == io::ErrorKind::NotFound {
        ImageError::MissingBlob {
            digest: digest.to_string(),
            path: path.to_path_buf(),
        }
    } else {
        ImageError::io("open", path)(e)
    }
}
