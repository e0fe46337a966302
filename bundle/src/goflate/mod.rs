//! A port of Go's `compress/flate` and `compress/gzip` writers that produces their output bit
//! for bit.
//!
//! # What it is for
//!
//! Docker, BuildKit and containerd compress image layers with Go's standard library
//! (`gzip.NewWriter`, level 6, or `gzip.NewWriterLevel`). Go's encoder is deterministic: the
//! same bytes written at the same level give the same gzip stream. A device that holds a
//! layer's tar can therefore recreate the registry's exact blob by running this port over it,
//! if it knows the level (and the flush points, if the writer flushed).
//!
//! # Design overview
//!
//! The port keeps Go's algorithm, constants and decisions, since every one of them changes
//! output bits: the window of 2 × 32 KiB and when it slides, the 17-bit `hash4` chains and the
//! `compressionLevel` table (greedy matching with skipped hashing at levels 2 and 3, lazy
//! matching at 4 to 9), the 16 384-token blocks, the BestSpeed matcher of `deflatefast.go`
//! with its history across blocks and its table rebasing, Go's length-limited Huffman code
//! builder and its choice between stored, fixed and dynamic blocks (including where Go
//! compares sizes computed with stale frequencies). Modules, one per Go file:
//!
//! - `deflate` — `deflate.go`: [`Level`] to matcher, window, `Write`/`Flush`/`Close` steps;
//! - `fast` — `deflatefast.go` (level 1);
//! - `bitwriter` — `huffman_bit_writer.go`: block type choice and bit output;
//! - `huffman` — `huffman_code.go`;
//! - `token` — `token.go`.
//!
//! [`GoFlateWriter`] (raw deflate, Go's `flate.Writer`) and [`GoGzipWriter`] (Go's
//! `gzip.Writer`) are the public face: streaming `std::io::Write` adapters over any writer.
//! The core is sans-I/O: each call processes at most one window and hands its bytes on, so
//! memory is Go's own buffers whatever the input's size: at levels 2 to 9 about 770 KiB (window
//! 64 KiB, hash heads 512 KiB, chain links 128 KiB, 16 K tokens), at level 1 about 520 KiB
//! (64 KiB window, 64 KiB history, 128 KiB table, 64 K tokens of 4 bytes), at levels 0 and -2
//! the 64 KiB window; plus one block of output (at most ~70 KiB) before it is written on.
//! Dropping a writer without `finish` leaves the stream unterminated (no final block), as in
//! Go without `Close`.
//!
//! Chunking: Go buffers input into its window, so how the input is split into `Write` calls
//! does not change the output (the tests prove it for several chunkings). Flushes do: Go's
//! `Flush` ends the current block and writes an empty stored block (a sync flush), which is
//! [`GoFlateWriter::sync_flush`] here. `std::io::Write::flush` does **not** do that: it only
//! flushes the inner writer, so that a caller that flushes out of habit cannot change the
//! bits.
//!
//! # What it deliberately does not do
//!
//! - No dictionaries (`NewWriterDict`), no `Reset`: not used by image builders.
//! - No decoding: inflate with any decoder.
//! - Nothing about which level or flush points a blob was written with: that is
//!   [`analyse_go`](crate::gzip_recipe::analyse_go)'s job (the level and the flush points). Its
//!   finding becomes a Go recipe ([`DeflateRecipe::Go`](crate::gzip_recipe::DeflateRecipe::Go),
//!   recipe kind 3, bundle format version 4; kind 5 and version 6 with flush points), which
//!   names [`GO_WRITER`] and which a device recreates with [`GoFlateWriter`] between the
//!   blob's verbatim header and trailer.
//!
//! # Which Go versions
//!
//! Ported from **Go 1.19.8** (Debian bookworm's `golang-1.19`). The tests
//! (`tests/goflate_equal.rs`) build a small Go program with every supported toolchain and
//! compare bytes at every level (-2 to 9), with and without `Flush`, over several chunkings,
//! block and window boundaries, BestSpeed's table rebase and the 16 MiB hash-chain rebase. They
//! prove that these releases all write the same bytes, the port's:
//!
//! | Go | Debian package | proven |
//! |---|---|---|
//! | 1.19.8 | `golang-1.19-go` (bookworm) | by the tests |
//! | 1.21.13 | `golang-1.21-go` (bookworm-backports) | by the tests |
//! | 1.22.12 | `golang-1.22-go` (bookworm-backports) | by the tests |
//! | 1.23.5 | `golang-1.23-go` (bookworm-backports) | by the tests |
//! | 1.24 to 1.26 | none installable here | read, not run |
//!
//! Between 1.19 and 1.23 the writer's sources (`compress/flate`'s `deflate.go`,
//! `deflatefast.go`, `huffman_bit_writer.go`, `huffman_code.go`, `token.go`, and
//! `compress/gzip`'s `gzip.go`) changed only in struct field order, doc links and no-op
//! `break`s. For 1.24 to 1.26 the release notes name no `compress/flate` or `compress/gzip`
//! change, the one later revision of `deflate.go` read reorders struct fields and uses `clear`
//! in `Reset` (which this port does not have), and the bisection in golang/go#81024 found Go
//! 1.26.7's output reproduced by the tree just before the 1.27 rewrite; so they very likely
//! write the same bytes, unproven by a run.
//!
//! **Go 1.27 writes other bytes.** It replaced the encoder with a cleaned-up port of
//! klauspost/compress's (golang/go#75532, CL 707355, "compress/flate: improve compression
//! speed"; its release notes say the output may differ from 1.26's): levels 1 to 6 became
//! klauspost's fast encoders (`level1.go` to `level6.go`), 7 to 9 were retuned, tokens are
//! indexed as they are added and a block may go on with the previous block's Huffman tables.
//! This port does not reproduce it. The encoder's race compares every byte, so a layer Go 1.27
//! wrote is never given a wrong Go recipe; it is left to preflate, whose model pgzip's
//! klauspost streams defeat (README, "Exact upstream digests"): expect the same of these
//! (unmeasured, no 1.27 toolchain here), and `--exact` to decide.
//!
//! Before 1.19 nothing is proven: Go 1.7 rewrote the encoder (a new BestSpeed algorithm,
//! `HuffmanOnly`, the block writer choosing between stored, fixed and dynamic codes) and Go
//! 1.8 let BestSpeed match across blocks; streams written by Go before 1.7 or 1.8 at the
//! affected levels differ.
//!
//! A recipe names the writer *algorithm* it recreates, by the release it was ported from
//! ([`GO_WRITER`], `go1.19.8`), not the release that happened to write a layer: a layer Go 1.23
//! wrote gets the same id, and devices that read `go1.19.8` keep reading new bundles of the
//! same algorithm. A port of 1.27's encoder will need an id of its own (and a device refuses
//! an id it does not implement).

mod bitwriter;
mod deflate;
mod fast;
mod huffman;
mod token;

pub mod klauspost;
pub mod pgzip;

use std::io::{self, Write};

use deflate::Compressor;

/// The id of the Go writer this module reproduces: the release it was ported from. Go 1.19.8,
/// 1.21.13, 1.22.12 and 1.23.5 are proven to write the same bytes (see "Which Go versions"
/// above), so a layer any of them wrote carries this id too. A recipe naming this encoder must
/// carry it.
pub const GO_WRITER: &str = "go1.19.8";

/// The largest match length.
const MAX_MATCH_LENGTH: usize = 258;
/// The largest match offset (the window).
const MAX_MATCH_OFFSET: usize = 1 << 15;

/// Errors of the Go writer port.
#[derive(Debug, thiserror::Error)]
pub enum GoFlateError {
    /// Go accepts levels -2 (HuffmanOnly) to 9; -1 is the default (6).
    #[error("invalid Go compression level {0}: want a value in -2..=9")]
    InvalidLevel(i32),
    /// The gzip extra field is longer than its 16-bit length can say.
    #[error("gzip extra field of {0} bytes is too large (at most 65535)")]
    ExtraTooLarge(usize),
    /// A gzip name or comment holds a NUL byte, which would end it early.
    #[error("gzip header {field} holds a NUL byte")]
    NulInHeader {
        /// "name" or "comment".
        field: &'static str,
    },
    /// A gzip name or comment has a character Latin-1 cannot hold (Go refuses it too).
    #[error("gzip header {field} is not Latin-1")]
    NotLatin1 {
        /// "name" or "comment".
        field: &'static str,
    },
}

/// A compression level as Go spells it: -2 HuffmanOnly, -1 default (6), 0 stored, 1 BestSpeed,
/// 2 to 9. -1 and 6 compress alike; both are kept because the gzip header's XFL byte is
/// computed from the level as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Level(i8);

impl Level {
    /// `flate.HuffmanOnly`.
    pub const HUFFMAN_ONLY: Level = Level(-2);
    /// `flate.DefaultCompression` (level 6; what `gzip.NewWriter` uses).
    pub const DEFAULT: Level = Level(-1);
    /// `flate.NoCompression`.
    pub const NO_COMPRESSION: Level = Level(0);
    /// `flate.BestSpeed`.
    pub const BEST_SPEED: Level = Level(1);
    /// `flate.BestCompression`.
    pub const BEST_COMPRESSION: Level = Level(9);

    /// A level from its Go number.
    pub fn new(level: i32) -> Result<Level, GoFlateError> {
        match level {
            -2..=9 => Ok(Level(level as i8)),
            _ => Err(GoFlateError::InvalidLevel(level)),
        }
    }

    /// The number as given to Go.
    pub fn get(self) -> i32 {
        i32::from(self.0)
    }

    /// The level `compress/flate` runs (-1 is 6).
    fn flate_level(self) -> i32 {
        if self.0 == -1 {
            6
        } else {
            i32::from(self.0)
        }
    }
}

/// A raw deflate stream as Go's `flate.NewWriter(w, level)` writes it.
///
/// Write the input with `write_all` (any chunking), [`Self::sync_flush`] where Go's writer
/// was flushed, then [`Self::finish`]. A clone (of a writer over a clonable `inner`) goes on
/// from the same state: the encoder's race forks a writer to try a flush at a point.
#[derive(Clone)]
pub struct GoFlateWriter<W: Write> {
    inner: W,
    d: Compressor,
    /// Go's `errWriterClosed`, or a failed write: the stream is no longer usable.
    done: bool,
}

impl<W: Write> GoFlateWriter<W> {
    /// A writer at `level` writing to `inner`.
    pub fn new(inner: W, level: Level) -> Self {
        GoFlateWriter {
            inner,
            d: Compressor::new(level),
            done: false,
        }
    }

    /// The inner writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The inner writer (writing to it directly corrupts the stream).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Go's `Flush`: compress everything written so far, end the block and write an empty
    /// stored block (`00 00 ff ff` after alignment), then flush `inner`.
    pub fn sync_flush(&mut self) -> io::Result<()> {
        self.check()?;
        self.d.sync_flush();
        self.drain()?;
        self.inner.flush()
    }

    /// Go's `Close`: compress the rest and write the final (empty, stored) block. Returns the
    /// inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.close()?;
        Ok(self.inner)
    }

    fn close(&mut self) -> io::Result<()> {
        self.check()?;
        self.d.close();
        self.done = true;
        self.drain()
    }

    fn check(&self) -> io::Result<()> {
        if self.done {
            return Err(io::Error::other(
                "the Go flate writer is closed or failed earlier",
            ));
        }
        Ok(())
    }

    /// Hand the compressed bytes made so far to `inner`.
    fn drain(&mut self) -> io::Result<()> {
        let out = self.d.w.output();
        if out.is_empty() {
            return Ok(());
        }
        let result = self.inner.write_all(out);
        out.clear();
        if result.is_err() {
            // The compressor has moved on; the stream cannot be continued.
            self.done = true;
        }
        result
    }
}

impl<W: Write> Write for GoFlateWriter<W> {
    /// One round of Go's `Write` loop; `write_all` repeats it like Go does.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check()?;
        let n = self.d.write_round(buf);
        self.drain()?;
        Ok(n)
    }

    /// Flushes `inner` only; see [`GoFlateWriter::sync_flush`] for Go's `Flush`.
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The gzip header fields Go's `gzip.Writer` writes (`gzip.Header`).
///
/// Go writes FLG from which fields are set, MTIME only when the time is after the epoch, XFL
/// from the level (2 for BestCompression, 4 for BestSpeed, else 0) and never a header CRC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoGzipHeader {
    /// FNAME as Latin-1 bytes; empty means none (Go's `Name == ""`).
    pub name: Vec<u8>,
    /// FCOMMENT as Latin-1 bytes; empty means none.
    pub comment: Vec<u8>,
    /// FEXTRA; `Some(vec![])` is an empty extra field, which Go writes too.
    pub extra: Option<Vec<u8>>,
    /// MTIME in seconds; 0 means unset (Go writes 0 for times not after the epoch).
    pub mtime: u32,
    /// OS; Go's default is 255, "unknown".
    pub os: u8,
}

impl Default for GoGzipHeader {
    /// What `gzip.NewWriter` writes unless the caller sets fields: `1f 8b 08 00 00000000 xx ff`.
    fn default() -> Self {
        GoGzipHeader {
            name: Vec::new(),
            comment: Vec::new(),
            extra: None,
            mtime: 0,
            os: 255,
        }
    }
}

impl GoGzipHeader {
    /// Latin-1 bytes of a Go header string, refused where Go refuses it.
    pub fn latin1(field: &'static str, s: &str) -> Result<Vec<u8>, GoFlateError> {
        s.chars()
            .map(|ch| match u32::from(ch) {
                0 => Err(GoFlateError::NulInHeader { field }),
                v if v > 0xff => Err(GoFlateError::NotLatin1 { field }),
                v => Ok(v as u8),
            })
            .collect()
    }

    /// The header bytes Go writes for this header and `level`.
    pub fn to_bytes(&self, level: Level) -> Result<Vec<u8>, GoFlateError> {
        if self.name.contains(&0) {
            return Err(GoFlateError::NulInHeader { field: "name" });
        }
        if self.comment.contains(&0) {
            return Err(GoFlateError::NulInHeader { field: "comment" });
        }
        let mut flags = 0u8;
        if self.extra.is_some() {
            flags |= 0x04;
        }
        if !self.name.is_empty() {
            flags |= 0x08;
        }
        if !self.comment.is_empty() {
            flags |= 0x10;
        }
        let xfl = match level {
            Level::BEST_COMPRESSION => 2,
            Level::BEST_SPEED => 4,
            _ => 0,
        };
        let mut out = vec![0x1f, 0x8b, 8, flags];
        out.extend_from_slice(&self.mtime.to_le_bytes());
        out.extend_from_slice(&[xfl, self.os]);
        if let Some(extra) = &self.extra {
            let len =
                u16::try_from(extra.len()).map_err(|_| GoFlateError::ExtraTooLarge(extra.len()))?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(extra);
        }
        for field in [&self.name, &self.comment] {
            if !field.is_empty() {
                out.extend_from_slice(field);
                out.push(0);
            }
        }
        Ok(out)
    }
}

/// A gzip member as Go's `gzip.NewWriterLevel(w, level)` writes it, with `header` set before
/// the first write: header, Go's deflate stream, CRC-32 and ISIZE.
///
/// As in Go, the header is written at the first write, flush or finish.
pub struct GoGzipWriter<W: Write> {
    flate: GoFlateWriter<W>,
    header: Option<Vec<u8>>,
    crc: flate2::Crc,
}

impl<W: Write> GoGzipWriter<W> {
    /// A gzip writer at `level` with `header` (checked now, written at the first write).
    pub fn new(inner: W, level: Level, header: &GoGzipHeader) -> Result<Self, GoFlateError> {
        Ok(GoGzipWriter {
            header: Some(header.to_bytes(level)?),
            flate: GoFlateWriter::new(inner, level),
            crc: flate2::Crc::new(),
        })
    }

    /// Go's `Flush`: the header if not yet written, then a sync flush of the deflate stream.
    pub fn sync_flush(&mut self) -> io::Result<()> {
        self.write_header()?;
        self.flate.sync_flush()
    }

    /// Go's `Close`: the header if not yet written, the final block, CRC-32 and ISIZE.
    /// Returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.write_header()?;
        self.flate.close()?;
        let mut trailer = [0u8; 8];
        trailer[..4].copy_from_slice(&self.crc.sum().to_le_bytes());
        trailer[4..].copy_from_slice(&self.crc.amount().to_le_bytes());
        let mut inner = self.flate.inner;
        inner.write_all(&trailer)?;
        Ok(inner)
    }

    fn write_header(&mut self) -> io::Result<()> {
        if let Some(header) = self.header.take() {
            self.flate.check()?;
            self.flate.inner.write_all(&header)?;
        }
        Ok(())
    }
}

impl<W: Write> Write for GoGzipWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_header()?;
        let n = self.flate.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    /// Flushes the inner writer only; see [`GoGzipWriter::sync_flush`] for Go's `Flush`.
    fn flush(&mut self) -> io::Result<()> {
        self.flate.flush()
    }
}

/// Go's gzip of `data` at `level` with the default header, in memory (for tests and small
/// inputs).
pub fn gzip_to_vec(data: &[u8], level: Level) -> Vec<u8> {
    let mut w = GoGzipWriter::new(Vec::new(), level, &GoGzipHeader::default())
        .expect("the default header is valid");
    w.write_all(data).expect("writing to a Vec");
    w.finish().expect("writing to a Vec")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goflate_default_header() {
        let h = GoGzipHeader::default();
        assert_eq!(
            h.to_bytes(Level::DEFAULT).unwrap(),
            [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]
        );
        assert_eq!(h.to_bytes(Level::BEST_SPEED).unwrap()[8], 4);
        assert_eq!(h.to_bytes(Level::BEST_COMPRESSION).unwrap()[8], 2);
    }

    #[test]
    fn goflate_levels_are_checked() {
        assert!(Level::new(-3).is_err());
        assert!(Level::new(10).is_err());
        assert_eq!(Level::new(-1).unwrap(), Level::DEFAULT);
    }

    #[test]
    fn goflate_empty_input_is_go_empty_gzip() {
        // `gzip.NewWriter(&b).Close()` in Go 1.19.
        let expect = [
            0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff, 1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(gzip_to_vec(b"", Level::DEFAULT), expect);
    }
}
