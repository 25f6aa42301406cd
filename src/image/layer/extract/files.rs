//! Regular files of an archive: written here on the reading thread (with whatever is in
//! the way removed first), or read into memory and handed to a file writer
//! ([`super::pool`]) when the name is new and the file small.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;

use super::fsops;
use super::pool::{FileJob, FilePool};
use super::{Extractor, Meta};
use crate::image::{ImageError, ImageResult, join_rel};
use crate::sys::{self, Errno};

impl Extractor<'_> {
    /// Refuses a file that would bring the data extracted over the limit.
    pub(super) fn check_limit(&self, rel: &[u8], size: u64) -> ImageResult<()> {
        match self.max_data_bytes {
            Some(max) if self.stats.data_bytes.saturating_add(size) > max => {
                Err(ImageError::Invalid(format!(
                    "layer tar: `{}` would bring the data extracted to more than {max} bytes, \
                     the limit",
                    rel.escape_ascii()
                )))
            }
            _ => Ok(()),
        }
    }

    /// Reads the data of a file entry into `self.buf[..n]` and hands each piece to `sink`;
    /// checks that the entry had all its bytes.
    fn copy_data<R: Read>(
        &mut self,
        e: &mut tar::Entry<'_, R>,
        rel: &[u8],
        mut sink: impl FnMut(&[u8]) -> ImageResult<()>,
    ) -> ImageResult<()> {
        let size = e.size();
        let mut done: u64 = 0;
        loop {
            let n = match e.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    return Err(ImageError::Invalid(format!(
                        "layer tar: corrupt or truncated in the data of `{}`: {err}",
                        rel.escape_ascii()
                    )));
                }
            };
            sink(&self.buf[..n])?;
            done += n as u64;
        }
        if done != size {
            return Err(ImageError::Invalid(format!(
                "layer tar: truncated in the data of `{}`: {done} of {size} bytes",
                rel.escape_ascii()
            )));
        }
        self.stats.files += 1;
        self.stats.data_bytes += size;
        Ok(())
    }

    /// A small file at a new name: its data read here, the file written by the pool.
    pub(super) fn send_file<R: Read>(
        &mut self,
        pool: &FilePool,
        parent: Arc<OwnedFd>,
        name: &OsStr,
        rel: Vec<u8>,
        e: &mut tar::Entry<'_, R>,
        meta: Meta,
    ) -> ImageResult<()> {
        self.check_limit(&rel, e.size())?;
        let mut data = Vec::with_capacity(e.size() as usize);
        self.copy_data(e, &rel, |piece| {
            data.extend_from_slice(piece);
            Ok(())
        })?;
        let dir = rel.iter().rposition(|&b| b == b'/').unwrap_or(0);
        let dir = rel[..dir].to_vec();
        pool.submit(
            &dir,
            FileJob {
                seq: self.seq,
                parent,
                name: name.to_owned(),
                rel,
                data,
                meta,
            },
        )
    }

    pub(super) fn file<R: Read>(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        rel: &[u8],
        e: &mut tar::Entry<'_, R>,
        meta: &Meta,
    ) -> ImageResult<()> {
        let (mode, _) = self.born.create_mode(meta, self.opts.privileged);
        let create = || {
            let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY;
            sys::open_at(parent, name, flags, mode)
        };
        // Create first, and make room only when something is in the way: most names are
        // new.
        let fd = match create() {
            Err(Errno::EEXIST) => {
                self.replace(parent, name, rel)?;
                create()
            }
            other => other,
        }
        .map_err(|err| ImageError::sys("creating", join_rel(self.dest, rel), err))?;
        let path = || join_rel(self.dest, rel);
        let mut file = File::from(fd);
        self.check_limit(rel, e.size())?;
        self.copy_data(e, rel, |piece| {
            file.write_all(piece)
                .map_err(ImageError::io("writing", path()))
        })?;
        fsops::apply_file_meta(&file, meta, self.opts.privileged, &self.born)
            .map_err(|(op, err)| ImageError::sys(op, path(), err))
            .map(|dropped| self.stats.xattrs_dropped += dropped)
    }
}
