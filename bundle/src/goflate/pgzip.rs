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
//! does not depend on the concurrency.
//!
//! # What runs where
//!
//! - [`PgzipWriter`] and [`PgzipDeflateWriter`] are streaming `Write` adapters that compress
//!   the blocks one after the other on the caller's thread. The encoder's level race
//!   (`gzip_recipe::analyse_pgzip`) uses them.
//! - [`PgzipBlocks`] reads the input a block at a time and hands block *i* to worker thread
//!   *i* mod *N* (scoped threads, each with its own encoder), writing each block's bytes in
//!   order as its worker returns them. A worker holds at most two blocks (one compressing,
//!   the next waiting, so it need not wait for the reading thread to be scheduled), and gets
//!   a new one once the one before those is written. The device recreates pgzip blobs with
//!   it (`gzip_recipe::recreate`), on as many threads as it has cores. With one thread, or
//!   blocks over [`MAX_PARALLEL_BLOCK`], it runs the streaming writer instead.
//!
//! # Memory
//!
//! Streaming: input goes straight into the encoder (which buffers one 64 KiB window); the
//! writer keeps only the current block's last 16 KiB for the next block's dictionary. With the
//! encoder's tables and history (~1.1 MiB for level 5) and one window of output, the bound is
//! about 1.3 MiB whatever the block size or input.
//!
//! On *N* threads: each worker's encoder (~1.2 MiB), its two blocks and their output (at most
//! about a block each), plus the block being read: *N* × (1.2 MiB + 2 to 4 blocks) + a block,
//! 8 to 12 MiB for two threads with 1 MiB blocks. Measured (`examples/goflate_speed.rs`, the
//! whole process's peak RSS): 14 MiB on text and 17 MiB on incompressible input against 5 MiB
//! streaming; with umoci's 256 KiB blocks, 8 to 9 MiB.
//!
//! # What it does not do
//!
//! Header names, comments and extra fields (containers/image sets none), Go's `Flush` in the
//! middle of a stream, and the levels the encoder port does not have yet.

use std::io::{self, Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::Scope;

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

/// Largest block [`PgzipBlocks`] compresses on worker threads: it holds whole blocks, so
/// larger ones (a recipe may name any size) go through the streaming [`PgzipDeflateWriter`].
pub const MAX_PARALLEL_BLOCK: usize = 8 << 20;

/// pgzip's stream written with its blocks compressed on worker threads, in the order they
/// come, from a reader: the same bytes as [`PgzipDeflateWriter`] and [`PgzipWriter`] (each
/// block starts from a reset encoder whatever ran before, as in Go). With one thread, or
/// blocks over [`MAX_PARALLEL_BLOCK`], it is the streaming writer on the caller's thread.
///
/// Memory with `threads` workers: each worker's encoder (~1.2 MiB at level 5), the two
/// blocks it holds and their output, plus the block being read: about `threads` × (1.2 MiB +
/// 2 to 4 blocks) + a block (see the module's "Memory").
#[derive(Debug, Clone, Copy)]
pub struct PgzipBlocks {
    level: PgzipLevel,
    block_size: usize,
    threads: usize,
}

/// Blocks a worker holds at a time, compressing or waiting (and so results it may hold).
const QUEUED: usize = 2;

/// One block for a worker: the dictionary it starts from, its text, and whether it ends the
/// stream (Close's final block follows).
struct Job {
    dict: Vec<u8>,
    block: Vec<u8>,
    last: bool,
}

/// A worker thread with its own encoder: one job in, its compressed bytes out.
struct Worker {
    jobs: SyncSender<Job>,
    done: Receiver<Vec<u8>>,
}

impl Worker {
    fn spawn<'s>(scope: &'s Scope<'s, '_>, level: PgzipLevel) -> Worker {
        let (jobs, todo) = sync_channel::<Job>(QUEUED);
        let (finished, done) = sync_channel(QUEUED);
        scope.spawn(move || {
            let mut d = Compressor::new(level.get()).expect("a ported level");
            for job in todo {
                d.reset_dict(&job.dict);
                d.write(&job.block);
                d.sync_flush();
                if job.last {
                    d.close();
                }
                if finished.send(std::mem::take(d.output())).is_err() {
                    break;
                }
            }
        });
        Worker { jobs, done }
    }

    fn send(&self, job: Job) -> io::Result<()> {
        self.jobs.send(job).map_err(|_| worker_gone())
    }

    fn result(&self) -> io::Result<Vec<u8>> {
        self.done.recv().map_err(|_| worker_gone())
    }
}

fn worker_gone() -> io::Error {
    io::Error::other("a pgzip worker thread stopped")
}

/// Up to `size` bytes of `plain` (fewer only at its end).
fn read_block(plain: &mut impl Read, size: usize) -> io::Result<Vec<u8>> {
    let mut block = Vec::with_capacity(size);
    plain.take(size as u64).read_to_end(&mut block)?;
    Ok(block)
}

impl PgzipBlocks {
    /// pgzip at `level` with `block_size`-byte blocks on up to `threads` threads (0 counts
    /// as 1).
    pub fn new(level: PgzipLevel, block_size: usize, threads: usize) -> Result<Self, PgzipError> {
        if block_size <= TAIL_SIZE {
            return Err(PgzipError::BlockSizeTooSmall(block_size));
        }
        Ok(PgzipBlocks {
            level,
            block_size,
            threads: threads.max(1),
        })
    }

    /// Writes the deflate stream (what [`PgzipDeflateWriter`] writes, up to its `finish`) of
    /// everything `plain` holds to `out`. Returns how many bytes of `plain` it compressed.
    pub fn write_deflate(&self, plain: &mut impl Read, out: &mut impl Write) -> io::Result<u64> {
        if self.threads == 1 || self.block_size > MAX_PARALLEL_BLOCK {
            let mut w =
                PgzipDeflateWriter::new(out, self.level, self.block_size).expect("checked in new");
            let n = io::copy(plain, &mut w)?;
            w.finish()?;
            return Ok(n);
        }
        std::thread::scope(|s| self.dispatch(s, plain, out))
    }

    /// Hands block `i` to worker `i % threads`, first writing the block that worker had
    /// [`QUEUED`] blocks before: the output stays in order, and each worker has its next block
    /// waiting when it finishes one (so it does not wait for this thread to be scheduled).
    fn dispatch<'s>(
        &self,
        scope: &'s Scope<'s, '_>,
        plain: &mut impl Read,
        out: &mut impl Write,
    ) -> io::Result<u64> {
        let workers: Vec<Worker> = (0..self.threads)
            .map(|_| Worker::spawn(scope, self.level))
            .collect();
        let (mut dict, mut total, mut sent) = (Vec::new(), 0u64, 0usize);
        loop {
            let block = read_block(plain, self.block_size)?;
            total += block.len() as u64;
            // A short block (maybe empty) is the rest that Close compresses.
            let last = block.len() < self.block_size;
            let worker = &workers[sent % self.threads];
            if sent >= QUEUED * self.threads {
                out.write_all(&worker.result()?)?;
            }
            // Full blocks are longer than the tail, so each passes its last 16 KiB on.
            let next_dict = match last {
                true => Vec::new(),
                false => block[block.len() - TAIL_SIZE..].to_vec(),
            };
            let dict = std::mem::replace(&mut dict, next_dict);
            worker.send(Job { dict, block, last })?;
            sent += 1;
            if last {
                break;
            }
        }
        for i in sent.saturating_sub(QUEUED * self.threads)..sent {
            out.write_all(&workers[i % self.threads].result()?)?;
        }
        Ok(total)
    }

    /// Writes the whole gzip member (what [`PgzipWriter`] writes) of everything `plain` holds.
    /// Returns how many bytes of `plain` it compressed.
    pub fn write_gzip(&self, plain: &mut impl Read, out: &mut impl Write) -> io::Result<u64> {
        out.write_all(&pgzip_header(self.level))?;
        let mut plain = flate2::CrcReader::new(plain);
        let n = self.write_deflate(&mut plain, out)?;
        let crc = plain.crc();
        out.write_all(&crc.sum().to_le_bytes())?;
        out.write_all(&crc.amount().to_le_bytes())?;
        Ok(n)
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

    /// The serial writer's deflate stream of `data`.
    fn serial_deflate(data: &[u8], block_size: usize) -> Vec<u8> {
        let mut w = PgzipDeflateWriter::new(Vec::new(), PgzipLevel::DEFAULT, block_size).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    fn parallel_deflate(data: &[u8], block_size: usize, threads: usize) -> Vec<u8> {
        let blocks = PgzipBlocks::new(PgzipLevel::DEFAULT, block_size, threads).unwrap();
        let mut out = Vec::new();
        let read = blocks.write_deflate(&mut &data[..], &mut out).unwrap();
        assert_eq!(read, data.len() as u64);
        out
    }

    #[test]
    fn pgzip_blocks_on_threads_write_the_serial_bytes() {
        let data: Vec<u8> = (0..1_300_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 29) as u8 ^ (i / 1013) as u8)
            .collect();
        let block = 20_000;
        // Many blocks: none, a part of one, exactly one, whole blocks only, a last partial one.
        for len in [
            0,
            1,
            16_384,
            block - 1,
            block,
            block + 1,
            10 * block,
            data.len(),
        ] {
            let serial = serial_deflate(&data[..len], block);
            for threads in [1, 2, 3, 7] {
                let parallel = parallel_deflate(&data[..len], block, threads);
                assert!(
                    parallel == serial,
                    "{len} bytes on {threads} threads differ"
                );
            }
        }
        // pgzip's default blocks, and a whole gzip member.
        let serial = serial_deflate(&data, PGZIP_DEFAULT_BLOCK_SIZE);
        assert!(parallel_deflate(&data, PGZIP_DEFAULT_BLOCK_SIZE, 2) == serial);
        let blocks = PgzipBlocks::new(PgzipLevel::DEFAULT, PGZIP_DEFAULT_BLOCK_SIZE, 2).unwrap();
        let mut gz = Vec::new();
        blocks.write_gzip(&mut &data[..], &mut gz).unwrap();
        assert!(gz == pgzip_to_vec(&data, PgzipLevel::DEFAULT));
    }

    #[test]
    fn pgzip_blocks_refuse_blocks_no_longer_than_the_tail() {
        assert!(matches!(
            PgzipBlocks::new(PgzipLevel::DEFAULT, TAIL_SIZE, 2),
            Err(PgzipError::BlockSizeTooSmall(16384))
        ));
    }

    #[test]
    fn pgzip_blocks_report_a_failing_output() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let data = vec![7u8; 200_000];
        for threads in [1, 2] {
            let blocks = PgzipBlocks::new(PgzipLevel::DEFAULT, 20_000, threads).unwrap();
            let e = blocks.write_deflate(&mut &data[..], &mut Full).unwrap_err();
            assert_eq!(e.to_string(), "disk full");
        }
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
