//! A bit-exact port of `github.com/klauspost/pgzip` **1.2.5**'s writer over klauspost's
//! `compress/flate` 1.15.12 ([`klauspost`](super::klauspost)), as Debian bookworm packages
//! them and as podman, buildah and skopeo (through containers/image's
//! `pkg/compression.gzipCompressor`) write gzip layers.
//!
//! # The format pgzip writes
//!
//! pgzip cuts the input into blocks of `block_size` bytes (default 1 MiB) and compresses each
//! with a fresh `flate.Writer` (`ResetDict`) whose dictionary is the previous block's last
//! **16 KiB** (`tailSize`; none when that block was not longer than 16 KiB), ending each block
//! with a sync flush (`00 00 ff ff`). Close compresses the rest — possibly nothing, after an
//! input of whole blocks — flushes it and writes the final empty block (`03 00`). The gzip
//! header is always written with `ModTime` unset, which pgzip (unlike Go's `compress/gzip`)
//! stores as `uint32(time.Time{}.Unix())` = `00 09 6e 88`; XFL is 2 at level 9, 4 at level 1,
//! else 0; OS is 255. The trailer is the CRC-32 and the size modulo 2³².
//!
//! Blocks are compressed in parallel in Go, but each from its own reset state, so the output
//! does not depend on the concurrency; this writer compresses them one after the other.
//!
//! # Memory
//!
//! Input streams straight into the encoder (which buffers one 64 KiB window); the writer keeps
//! only the current block's last 16 KiB for the next block's dictionary. With the encoder's
//! tables and history (~1.1 MiB for level 5) and one window of output, the bound is about
//! 1.3 MiB whatever the block size or input.
//!
//! # What it does not do
//!
//! Header names, comments and extra fields (containers/image sets none), Go's `Flush` in the
//! middle of a stream, and the levels the encoder port does not have yet.

use std::io::{self, Write};

use super::klauspost::Compressor;

/// The writer this module is proven to reproduce, as a recipe names it.
pub const PGZIP_WRITER: &str = "pgzip1.2.5+klauspost1.15.12";

/// pgzip's default block size (`defaultBlockSize`).
pub const PGZIP_DEFAULT_BLOCK_SIZE: usize = 1 << 20;

/// `tailSize`: how much of a block becomes the next block's dictionary.
const TAIL_SIZE: usize = 16384;

/// The gzip header's MTIME as pgzip writes an unset time: `uint32(time.Time{}.Unix())`.
const UNSET_MTIME: u32 = (-62_135_596_800i64) as u32;

/// Why a pgzip writer cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PgzipError {
    /// A level pgzip accepts but this port does not reproduce (yet), or one pgzip refuses.
    #[error("pgzip level {0} is not reproduced (supported: -1 and 5)")]
    UnsupportedLevel(i32),
    /// pgzip's `SetConcurrency` refuses blocks of at most 16 KiB.
    #[error("pgzip block size {0} must be more than 16384 bytes")]
    BlockSizeTooSmall(usize),
}

/// A pgzip level that this port reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgzipLevel(i8);

impl PgzipLevel {
    /// `pgzip.DefaultCompression` (-1), what `pgzip.NewWriter` uses: klauspost's level 5.
    pub const DEFAULT: PgzipLevel = PgzipLevel(-1);

    /// The levels ported so far.
    pub const SUPPORTED: [i32; 2] = [-1, 5];

    /// A level from its Go number, refused when not reproduced.
    pub fn new(level: i32) -> Result<Self, PgzipError> {
        if Self::SUPPORTED.contains(&level) {
            Ok(PgzipLevel(level as i8))
        } else {
            Err(PgzipError::UnsupportedLevel(level))
        }
    }

    /// The number as given to pgzip.
    pub fn get(self) -> i32 {
        i32::from(self.0)
    }

    /// The gzip header's XFL byte for this level.
    fn xfl(self) -> u8 {
        match self.0 {
            9 => 2,
            1 => 4,
            _ => 0,
        }
    }
}

/// pgzip's gzip header for `level`.
pub fn pgzip_header(level: PgzipLevel) -> [u8; 10] {
    let m = UNSET_MTIME.to_le_bytes();
    [0x1f, 0x8b, 8, 0, m[0], m[1], m[2], m[3], level.xfl(), 255]
}

/// The deflate stream pgzip writes between its header and trailer (blocks, dictionaries, sync
/// flushes, final block). Write the input with `write_all` (any chunking), then
/// [`Self::finish`].
pub struct PgzipDeflateWriter<W: Write> {
    inner: W,
    block_size: usize,
    d: Compressor,
    /// Bytes of the current block given to the encoder; `None` before the block started.
    in_block: Option<usize>,
    /// The last (up to) 16 KiB of the current block.
    tail: Vec<u8>,
    /// The dictionary of the next block.
    prev_tail: Vec<u8>,
    /// A write to `inner` failed: the stream is no longer usable.
    failed: bool,
}

impl<W: Write> PgzipDeflateWriter<W> {
    /// A writer with `block_size`-byte blocks (pgzip's `SetConcurrency`; default
    /// [`PGZIP_DEFAULT_BLOCK_SIZE`]).
    pub fn new(inner: W, level: PgzipLevel, block_size: usize) -> Result<Self, PgzipError> {
        if block_size <= TAIL_SIZE {
            return Err(PgzipError::BlockSizeTooSmall(block_size));
        }
        let d = Compressor::new(level.get()).ok_or(PgzipError::UnsupportedLevel(level.get()))?;
        Ok(PgzipDeflateWriter {
            inner,
            block_size,
            d,
            in_block: None,
            tail: Vec::with_capacity(2 * TAIL_SIZE),
            prev_tail: Vec::with_capacity(TAIL_SIZE),
            failed: false,
        })
    }

    /// The inner writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The inner writer (writing to it directly corrupts the stream).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    fn check(&self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("pgzip writer failed earlier"));
        }
        Ok(())
    }

    fn emit_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner
            .write_all(bytes)
            .inspect_err(|_| self.failed = true)
    }

    /// Hand the encoder's output on.
    fn drain(&mut self) -> io::Result<()> {
        let mut out = std::mem::take(self.d.output());
        let res = self.emit_raw(&out);
        // Keep the buffer's allocation.
        out.clear();
        *self.d.output() = out;
        res
    }

    fn start_block(&mut self) {
        if self.in_block.is_none() {
            self.d.reset_dict(&self.prev_tail);
            self.tail.clear();
            self.in_block = Some(0);
        }
    }

    /// Compress everything given to the current block and end it with a sync flush.
    fn end_block(&mut self) {
        let n = self.in_block.take().unwrap_or(0);
        self.d.sync_flush();
        self.prev_tail.clear();
        if n > TAIL_SIZE {
            self.prev_tail
                .extend_from_slice(&self.tail[self.tail.len() - TAIL_SIZE..]);
        }
    }

    fn remember_tail(&mut self, chunk: &[u8]) {
        if chunk.len() >= TAIL_SIZE {
            self.tail.clear();
            self.tail
                .extend_from_slice(&chunk[chunk.len() - TAIL_SIZE..]);
        } else {
            if self.tail.len() + chunk.len() > 2 * TAIL_SIZE {
                let cut = self.tail.len() - (TAIL_SIZE - chunk.len());
                self.tail.drain(..cut);
            }
            self.tail.extend_from_slice(chunk);
        }
    }

    /// What pgzip's `Close` writes of the deflate stream: the rest, its sync flush and the
    /// final block. Returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.check()?;
        self.start_block();
        self.end_block();
        self.d.close();
        self.drain()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for PgzipDeflateWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check()?;
        let mut q = buf;
        while !q.is_empty() {
            self.start_block();
            let have = self.in_block.unwrap_or(0);
            let n = q.len().min(self.block_size - have);
            let chunk = &q[..n];
            self.d.write(chunk);
            self.remember_tail(chunk);
            self.in_block = Some(have + n);
            if have + n == self.block_size {
                self.end_block();
            }
            self.drain()?;
            q = &q[n..];
        }
        Ok(buf.len())
    }

    /// Flushes the inner writer only: pgzip's `Flush` would end a block and change the bytes.
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A gzip stream as `pgzip.NewWriterLevel(w, level)` (with `SetConcurrency(block_size, _)`)
/// writes it. Write the input with `write_all` (any chunking), then [`Self::finish`].
pub struct PgzipWriter<W: Write> {
    deflate: PgzipDeflateWriter<W>,
    level: PgzipLevel,
    wrote_header: bool,
    crc: flate2::Crc,
}

impl<W: Write> PgzipWriter<W> {
    /// A writer with pgzip's default 1 MiB blocks.
    pub fn new(inner: W, level: PgzipLevel) -> Self {
        Self::with_block_size(inner, level, PGZIP_DEFAULT_BLOCK_SIZE)
            .expect("the default block size is valid")
    }

    /// A writer with `block_size`-byte blocks (pgzip's `SetConcurrency`).
    pub fn with_block_size(
        inner: W,
        level: PgzipLevel,
        block_size: usize,
    ) -> Result<Self, PgzipError> {
        Ok(PgzipWriter {
            deflate: PgzipDeflateWriter::new(inner, level, block_size)?,
            level,
            wrote_header: false,
            crc: flate2::Crc::new(),
        })
    }

    /// The inner writer.
    pub fn get_ref(&self) -> &W {
        self.deflate.get_ref()
    }

    fn write_header(&mut self) -> io::Result<()> {
        if !self.wrote_header {
            self.deflate.check()?;
            self.wrote_header = true;
            let header = pgzip_header(self.level);
            self.deflate.emit_raw(&header)?;
        }
        Ok(())
    }

    /// pgzip's `Close`: compress the rest, write the final block and the trailer. Returns the
    /// inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.write_header()?;
        let mut inner = self.deflate.finish()?;
        let mut trailer = [0u8; 8];
        trailer[..4].copy_from_slice(&self.crc.sum().to_le_bytes());
        trailer[4..].copy_from_slice(&self.crc.amount().to_le_bytes());
        inner.write_all(&trailer)?;
        inner.flush()?;
        Ok(inner)
    }
}

impl<W: Write> Write for PgzipWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_header()?;
        let n = self.deflate.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    /// Flushes the inner writer only: pgzip's `Flush` would end a block and change the bytes.
    fn flush(&mut self) -> io::Result<()> {
        self.deflate.flush()
    }
}

/// `data` compressed as pgzip does at `level` with default blocks.
pub fn pgzip_to_vec(data: &[u8], level: PgzipLevel) -> Vec<u8> {
    let mut w = PgzipWriter::new(Vec::new(), level);
    w.write_all(data).expect("writing to a Vec cannot fail");
    w.finish().expect("writing to a Vec cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgzip_empty_input_is_pgzip_empty_gzip() {
        // `printf '' | gopgzip` with Debian's pgzip 1.2.5.
        let want = [
            0x1f, 0x8b, 0x08, 0x00, 0x00, 0x09, 0x6e, 0x88, 0x00, 0xff, 0x00, 0x00, 0x00, 0xff,
            0xff, 0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        assert_eq!(pgzip_to_vec(b"", PgzipLevel::DEFAULT), want);
    }

    #[test]
    fn pgzip_small_input_is_pgzip_bytes() {
        // `echo hi | gopgzip`.
        let want = [
            0x1f, 0x8b, 0x08, 0x00, 0x00, 0x09, 0x6e, 0x88, 0x00, 0xff, 0x00, 0x03, 0x00, 0xfc,
            0xff, 0x68, 0x69, 0x0a, 0x00, 0x00, 0x00, 0xff, 0xff, 0x03, 0x00, 0x7a, 0x7a, 0x6f,
            0xed, 0x03, 0x00, 0x00, 0x00,
        ];
        assert_eq!(pgzip_to_vec(b"hi\n", PgzipLevel::DEFAULT), want);
    }

    #[test]
    fn pgzip_levels_and_block_sizes_are_checked() {
        assert_eq!(PgzipLevel::new(5).map(PgzipLevel::get), Ok(5));
        assert_eq!(PgzipLevel::new(6), Err(PgzipError::UnsupportedLevel(6)));
        assert_eq!(PgzipLevel::new(42), Err(PgzipError::UnsupportedLevel(42)));
        assert!(matches!(
            PgzipWriter::with_block_size(Vec::new(), PgzipLevel::DEFAULT, TAIL_SIZE),
            Err(PgzipError::BlockSizeTooSmall(16384))
        ));
    }

    #[test]
    fn pgzip_output_round_trips_and_ignores_chunking() {
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 27) as u8 ^ (i / 977) as u8)
            .collect();
        let whole = pgzip_to_vec(&data, PgzipLevel::DEFAULT);
        let mut w = PgzipWriter::new(Vec::new(), PgzipLevel::DEFAULT);
        for c in data.chunks(7777) {
            w.write_all(c).unwrap();
        }
        assert_eq!(w.finish().unwrap(), whole);
        let mut back = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&whole[..]), &mut back)
            .unwrap();
        assert_eq!(back, data);
    }
}
