//! The gzip writer of layer blobs: deflate at level 1, except that data which does not
//! compress is stored as it is instead of being pushed through the compressor.
//!
//! A layer of random-looking data (already compressed files, binaries, encrypted data)
//! costs a level-1 deflate about 10 s per GiB of CPU and saves nothing; storing it costs
//! a copy. The input is cut into pieces of [`PIECE`] bytes. A piece is compressed (a sync
//! flush after each, so the stream stays byte-aligned between pieces); when the result
//! saves less than 1/16 of it, the raw bytes go out as deflate "stored" blocks instead,
//! and the next pieces are stored without trying, 1, 2, 4 ... up to 16 of them, before the
//! compressor is tried again. Compressible data is compressed as before; random data
//! costs one trial piece in 17.
//!
//! The output is one ordinary gzip member (RFC 1952: header, deflate stream, CRC-32 and
//! size): every gzip reader reads it. It depends only on the input, so the same layer
//! always gives the same blob.
//!
//! The compressor's window must hold what the decompressor's does: a tried piece went
//! through the compressor whichever form it took (stored bytes are the same bytes), but a
//! piece stored without trying did not, so the compressor is reset before the next try.

use std::io::{self, Write};

use flate2::{Compress, Compression, Crc, FlushCompress};

/// Bytes per piece: the unit of the compress-or-store decision.
pub const PIECE: usize = 64 << 10;
/// Most pieces stored without trying after a piece did not compress.
const MAX_SKIP: u32 = 16;
/// The largest deflate stored block.
const STORED_MAX: usize = 0xffff;

/// A gzip encoder writing to `W`; call [`finish`](Self::finish) to end the stream.
pub struct LayerGzEncoder<W: Write> {
    inner: W,
    comp: Compress,
    crc: Crc,
    /// Input not yet encoded (less than a piece).
    pending: Vec<u8>,
    /// Encoded bytes of the current piece.
    out: Vec<u8>,
    /// Pieces still to store without trying.
    skip: u32,
    /// How many to skip after the next piece that does not compress.
    backoff: u32,
    /// The compressor missed a piece (stored untried): reset it before the next try.
    stale: bool,
    header_written: bool,
}

impl<W: Write> LayerGzEncoder<W> {
    pub fn new(inner: W) -> LayerGzEncoder<W> {
        LayerGzEncoder {
            inner,
            comp: Compress::new(Compression::fast(), false),
            crc: Crc::new(),
            pending: Vec::with_capacity(PIECE),
            out: Vec::with_capacity(PIECE + PIECE / 8 + 64),
            skip: 0,
            backoff: 1,
            stale: false,
            header_written: false,
        }
    }

    fn header(&mut self) -> io::Result<()> {
        if !self.header_written {
            // Magic, deflate, no flags, no mtime, "fastest" (XFL 4), OS unknown.
            self.inner
                .write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 255])?;
            self.header_written = true;
        }
        Ok(())
    }

    /// Encodes one piece (at most [`PIECE`] bytes) and writes it out.
    fn piece(&mut self, data: &[u8]) -> io::Result<()> {
        self.header()?;
        self.crc.update(data);
        if self.skip > 0 {
            self.skip -= 1;
            self.stale = true;
            return self.stored(data);
        }
        if self.stale {
            self.comp.reset();
            self.stale = false;
        }
        self.out.clear();
        let mut input = data;
        loop {
            if self.out.capacity() - self.out.len() < 1024 {
                self.out.reserve(PIECE / 4);
            }
            let before = self.comp.total_in();
            self.comp
                .compress_vec(input, &mut self.out, FlushCompress::Sync)
                .map_err(io::Error::other)?;
            input = &input[(self.comp.total_in() - before) as usize..];
            // Done when all input is taken and the flush did not fill the space given.
            if input.is_empty() && self.out.len() < self.out.capacity() {
                break;
            }
        }
        if self.out.len() < data.len() - data.len() / 16 {
            self.backoff = 1;
            return self.inner.write_all(&self.out);
        }
        // Not worth it: the same bytes, stored (the compressor's window stays right).
        self.skip = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_SKIP);
        self.stored(data)
    }

    /// `data` as stored blocks (the stream is byte-aligned between pieces).
    fn stored(&mut self, data: &[u8]) -> io::Result<()> {
        for block in data.chunks(STORED_MAX) {
            let len = block.len() as u16;
            let [l0, l1] = len.to_le_bytes();
            let [n0, n1] = (!len).to_le_bytes();
            // BFINAL 0, BTYPE 00, then padding to the byte.
            self.inner.write_all(&[0, l0, l1, n0, n1])?;
            self.inner.write_all(block)?;
        }
        Ok(())
    }

    /// Encodes what is pending, ends the deflate stream and writes the gzip trailer;
    /// returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        let pending = std::mem::take(&mut self.pending);
        if !pending.is_empty() {
            self.piece(&pending)?;
        }
        self.header()?;
        // An empty final stored block ends the deflate stream.
        self.inner.write_all(&[1, 0, 0, 0xff, 0xff])?;
        self.inner.write_all(&self.crc.sum().to_le_bytes())?;
        self.inner.write_all(&self.crc.amount().to_le_bytes())?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for LayerGzEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.pending.is_empty() && buf.len() >= PIECE {
            // Whole pieces straight from the caller's buffer.
            let n = buf.len() - buf.len() % PIECE;
            for p in buf[..n].chunks(PIECE) {
                self.piece(p)?;
            }
            return Ok(n);
        }
        let n = buf.len().min(PIECE - self.pending.len());
        self.pending.extend_from_slice(&buf[..n]);
        if self.pending.len() == PIECE {
            let pending = std::mem::take(&mut self.pending);
            let result = self.piece(&pending);
            self.pending = pending;
            self.pending.clear();
            result?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Pending input stays pending: a flush must not change the stream's bytes.
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn text(n: usize) -> Vec<u8> {
        let line = b"the quick brown fox jumps over the lazy dog 0123456789\n";
        line.iter().copied().cycle().take(n).collect()
    }

    fn encode(data: &[u8], write_size: usize) -> Vec<u8> {
        let mut e = LayerGzEncoder::new(Vec::new());
        for c in data.chunks(write_size.max(1)) {
            e.write_all(c).unwrap();
        }
        e.finish().unwrap()
    }

    /// Decodes with flate2's reader, which checks the CRC and the size in the trailer.
    fn decode(gz: &[u8]) -> Vec<u8> {
        let mut d = flate2::read::GzDecoder::new(gz);
        let mut out = Vec::new();
        d.read_to_end(&mut out).unwrap();
        // One member: nothing after its trailer.
        assert!(d.into_inner().is_empty());
        out
    }

    #[test]
    fn round_trips_any_mix() {
        let mut mixed = text(200_000);
        mixed.extend(random(300_000, 7));
        mixed.extend(text(100_001));
        mixed.extend(random(3, 9));
        for data in [
            Vec::new(),
            b"x".to_vec(),
            text(PIECE),
            random(PIECE + 1, 3),
            mixed,
        ] {
            for ws in [1 << 20, PIECE, 1000, 7] {
                let gz = encode(&data, ws);
                assert_eq!(decode(&gz), data, "{} bytes, writes of {ws}", data.len());
            }
        }
    }

    #[test]
    fn random_is_stored_and_text_compressed() {
        let data = random(4 << 20, 5);
        let gz = encode(&data, 1 << 20);
        // Stored: 5 bytes per 64 KiB block, plus header and trailer.
        assert!(
            gz.len() < data.len() + data.len() / 1000 + 64,
            "{}",
            gz.len()
        );
        let data = text(4 << 20);
        let gz = encode(&data, 1 << 20);
        assert!(gz.len() < data.len() / 20, "{}", gz.len());
    }

    #[test]
    fn text_after_random_compresses_again() {
        let mut data = random(2 << 20, 11);
        data.extend(text(2 << 20));
        let gz = encode(&data, 1 << 20);
        assert_eq!(decode(&gz), data);
        // At most MAX_SKIP pieces of text go out stored before the compressor is tried.
        let most = (2 << 20) + MAX_SKIP as usize * PIECE + (2 << 20) / 20;
        assert!(gz.len() < most, "{} >= {most}", gz.len());
    }

    #[test]
    fn the_same_input_gives_the_same_bytes_whatever_the_writes() {
        let mut data = text(300_000);
        data.extend(random(300_000, 1));
        let a = encode(&data, 1 << 20);
        assert_eq!(encode(&data, 4096), a);
        assert_eq!(encode(&data, 13), a);
    }

    #[test]
    fn system_gzip_reads_it() {
        let mut data = text(100_000);
        data.extend(random(200_000, 2));
        let gz = encode(&data, 1 << 16);
        let Ok(mut child) = std::process::Command::new("gzip")
            .args(["-dc"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        else {
            return; // no gzip here: flate2's reader has checked it above
        };
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(&gz));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, data);
    }
}
