//! The payload's record stream (after decoding its LZMA2 or zstd frames).
//!
//! ```text
//! "SLPAYLD1"
//! 0x01 CONFIG   u32 len, len bytes (the image config blob, exact bytes)
//! 0x02 EXTENTS  u32 count, count x (u32 requires_index, u64 offset, u64 len)
//! then for every target layer, bottom first, one of:
//! 0x05 FRAME    varint count, count x (varint offset - previous range's end, varint len)
//!               (between layers: the frame ends here; the next one is compressed with
//!                those scratch ranges, concatenated, as its dictionary)
//! 0x03 PRESENT  u32 layer_index                     (the device holds it: statement.requires)
//! 0x04 LAYER    u32 layer_index, then operations, then 0x1F END_LAYER
//!        0x10 LITERAL      varint len, len bytes
//!        0x11 COPY         varint zigzag(scratch_offset - cursor), varint len
//!                          (cursor: end of the previous COPY, MIX or MIX_RUNS, 0 at first)
//!        0x12 PATCH_ZSTD   u64 scratch_offset, u64 base_len, u64 out_len, u64 patch_len, patch bytes
//!        0x13 PATCH_BSDIFF u64 scratch_offset, u64 base_len, u64 out_len, u64 patch_len, patch bytes
//!        0x17 PATCH_BSDIFF_X86  the same, with x86 address fields as 32-bit differences
//!                          (`bspatch::to_x86`: executables and shared libraries)
//!        0x14 MIX          varint zigzag(scratch_offset - cursor), varint len, len bytes
//!                          (output byte i = scratch[scratch_offset + i] + body[i] mod 256;
//!                          moves the cursor like COPY; today's encoder writes MIX_RUNS
//!                          instead, devices still read MIX from bundles built before)
//!        0x16 MIX_RUNS     varint zigzag(scratch_offset - cursor), varint len, varint body_len,
//!                          body_len bytes: runs (varint zeros, varint n, n bytes) making len
//!                          bytes: `zeros` scratch bytes as they are, then n scratch bytes
//!                          plus the n body bytes (mod 256); moves the cursor like COPY
//!                          (files copied with their changed headers between them: one record)
//!        0x15 LITERAL_X86  varint len, len bytes
//!                          (output: the body with the x86 BCJ filter of xz undone, from
//!                          position 0: an x86 executable's call and jump targets made
//!                          absolute, which compresses better)
//! 0x07 BLOB     u32 layer_index, u64 len, len bytes (the source's compressed blob itself, for
//!               a layer no recipe can recreate when exactness is required)
//! and after PRESENT or LAYER, for a layer whose source gzip blob the device recreates:
//! 0x08 LAYER_RECIPE varint len, len bytes (a `gzip_recipe` in its own encoding, for the layer
//!               whose PRESENT or END_LAYER came just before; format version 9, what builds
//!               write: 2 bytes of framing where RECIPE took 13)
//! 0x06 RECIPE   u32 layer_index, u64 len, len bytes (the same, as bundles of versions 2-8
//!               write it; still read)
//! 0xFF END
//! ```
//! Integers are little-endian; a varint is LEB128 (7 bits a byte, low first, at most 10 bytes),
//! zigzag maps signed to unsigned (0, -1, 1, -2, ... → 0, 1, 2, 3, ...). Copies are the most
//! frequent record (one per unchanged file), so they are relative and short. The stream is pull-parsed like tar-rs reads a tar: a record
//! header, then its body as a bounded reader; nothing a record declares sizes a buffer before
//! it is checked against [`Limits`](crate::Limits). This module only encodes and decodes
//! records; what they mean is the decoder's business ([`crate::apply`]).
//!
//! Writing by hand: the format is a handful of fixed-width records and no serialization crate
//! gives a streaming, length-checked reader for it.

use std::io::{self, Read, Write};

/// First bytes of the decoded payload.
pub const PAYLOAD_MAGIC: [u8; 8] = *b"SLPAYLD1";

const TAG_CONFIG: u8 = 0x01;
const TAG_EXTENTS: u8 = 0x02;
const TAG_PRESENT: u8 = 0x03;
const TAG_LAYER: u8 = 0x04;
const TAG_FRAME: u8 = 0x05;
const TAG_RECIPE: u8 = 0x06;
const TAG_BLOB: u8 = 0x07;
const TAG_LAYER_RECIPE: u8 = 0x08;
const TAG_LITERAL: u8 = 0x10;
const TAG_COPY: u8 = 0x11;
const TAG_PATCH_ZSTD: u8 = 0x12;
const TAG_PATCH_BSDIFF: u8 = 0x13;
const TAG_MIX: u8 = 0x14;
const TAG_LITERAL_X86: u8 = 0x15;
const TAG_MIX_RUNS: u8 = 0x16;
const TAG_PATCH_BSDIFF_X86: u8 = 0x17;
const TAG_END_LAYER: u8 = 0x1F;
const TAG_END: u8 = 0xFF;

/// A range of a base layer's uncompressed content that the decoder gathers into scratch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Index into `statement.requires`: which base layer.
    pub requires_index: u32,
    /// Offset in that layer's uncompressed tar.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Which patch algorithm a patch operation uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// A zstd frame compressed with the base range as a raw-content dictionary.
    Zstd,
    /// A patch in the split bsdiff layout ([`crate::bspatch`]) against the base range.
    Bsdiff,
    /// The same, with x86 address fields as 32-bit differences ([`crate::bspatch::to_x86`]).
    BsdiffX86,
}

/// One record of the payload, as the reader yields it. Records with a body (`Config`,
/// `Literal`, `Patch`) are followed by that many bytes, read with [`PayloadReader::body`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The image config; `len` bytes follow.
    Config {
        /// Body length.
        len: u32,
    },
    /// The extents table.
    Extents(Vec<Extent>),
    /// The current frame ends; the next is compressed with these scratch ranges
    /// (offset, length), concatenated, as its dictionary.
    Frame(Vec<(u64, u64)>),
    /// Target layer `index` is already on the device.
    Present {
        /// Layer index.
        index: u32,
    },
    /// Target layer `index` is rebuilt by the operations that follow, up to `EndLayer`.
    Layer {
        /// Layer index.
        index: u32,
    },
    /// Target layer `index` is the source's compressed blob, whose `len` bytes follow.
    Blob {
        /// Layer index.
        index: u32,
        /// Body length.
        len: u64,
    },
    /// The gzip recipe of target layer `index`; `len` bytes follow.
    Recipe {
        /// Layer index.
        index: u32,
        /// Body length.
        len: u64,
    },
    /// The gzip recipe of the layer whose records just ended; `len` bytes follow.
    LayerRecipe {
        /// Body length.
        len: u64,
    },
    /// `len` literal bytes follow.
    Literal {
        /// Body length.
        len: u64,
    },
    /// `len` bytes follow, x86-BCJ-filtered: an x86 executable sent literally.
    LiteralX86 {
        /// Body length (and output length).
        len: u64,
    },
    /// Copy `len` bytes from the scratch store at `scratch_offset`.
    Copy {
        /// Offset in scratch.
        scratch_offset: u64,
        /// Length.
        len: u64,
    },
    /// Add (mod 256) the `len` bytes that follow to the scratch bytes at `scratch_offset`: a
    /// tar header that differs from its base file's header in a few fields (a new mtime, its
    /// checksum) becomes mostly zeros, and the same few non-zero bytes header after header.
    Mix {
        /// Offset in scratch.
        scratch_offset: u64,
        /// Length, of the scratch range and of the body that follows.
        len: u64,
    },
    /// `len` scratch bytes from `scratch_offset`, with the run-coded differences of the
    /// `body_len` bytes that follow added: a stretch of files copied from one base layer whose
    /// tar headers changed (a rebuild stamps every file with a new mtime) costs a few bytes a
    /// file instead of a COPY and a MIX of mostly zeros each.
    MixRuns {
        /// Offset in scratch.
        scratch_offset: u64,
        /// Length of the scratch range and of the output.
        len: u64,
        /// Length of the runs that follow.
        body_len: u64,
    },
    /// Apply a patch to a scratch range; `patch_len` patch bytes follow.
    Patch {
        /// Algorithm.
        kind: PatchKind,
        /// Offset of the base range in scratch.
        scratch_offset: u64,
        /// Length of the base range.
        base_len: u64,
        /// Length of the patched output.
        out_len: u64,
        /// Body length.
        patch_len: u64,
    },
    /// End of the current layer's operations.
    EndLayer,
    /// End of the payload.
    End,
}

/// Why a record stream could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Underlying read failed (including a digest or size check of an adapter below).
    #[error(transparent)]
    Io(#[from] io::Error),
    /// Bytes that are not a valid record.
    #[error("{0}")]
    Invalid(String),
}

/// Pull parser over a decoded payload stream.
pub struct PayloadReader<R> {
    inner: R,
    max_extents: u32,
    started: bool,
    copy_cursor: u64,
}

impl<R: Read> PayloadReader<R> {
    /// Wraps a decoded payload stream. `max_extents` caps the extents table.
    pub fn new(inner: R, max_extents: u32) -> Self {
        PayloadReader {
            inner,
            max_extents,
            started: false,
            copy_cursor: 0,
        }
    }

    /// Reads the next record header (and the extents table, which is small and checked).
    pub fn next_record(&mut self) -> Result<Record, RecordError> {
        if !self.started {
            self.magic()?;
        }
        let tag = self.u8()?;
        Ok(match tag {
            TAG_CONFIG => Record::Config { len: self.u32()? },
            TAG_EXTENTS => Record::Extents(self.extents()?),
            TAG_FRAME => Record::Frame(self.frame_ranges()?),
            TAG_PRESENT => Record::Present { index: self.u32()? },
            TAG_LAYER => Record::Layer { index: self.u32()? },
            TAG_BLOB => Record::Blob {
                index: self.u32()?,
                len: self.u64()?,
            },
            TAG_RECIPE => Record::Recipe {
                index: self.u32()?,
                len: self.u64()?,
            },
            TAG_LAYER_RECIPE => Record::LayerRecipe {
                len: self.varint()?,
            },
            TAG_LITERAL => Record::Literal {
                len: self.varint()?,
            },
            TAG_LITERAL_X86 => Record::LiteralX86 {
                len: self.varint()?,
            },
            TAG_COPY => {
                let (scratch_offset, len) = self.relative_range()?;
                Record::Copy {
                    scratch_offset,
                    len,
                }
            }
            TAG_MIX => {
                let (scratch_offset, len) = self.relative_range()?;
                Record::Mix {
                    scratch_offset,
                    len,
                }
            }
            TAG_MIX_RUNS => {
                let (scratch_offset, len) = self.relative_range()?;
                let body_len = self.varint()?;
                Record::MixRuns {
                    scratch_offset,
                    len,
                    body_len,
                }
            }
            TAG_PATCH_ZSTD | TAG_PATCH_BSDIFF | TAG_PATCH_BSDIFF_X86 => self.patch(tag)?,
            TAG_END_LAYER => Record::EndLayer,
            TAG_END => Record::End,
            other => {
                return Err(RecordError::Invalid(format!(
                    "unknown record type 0x{other:02x}"
                )))
            }
        })
    }

    /// Reads the payload's magic, which comes before the first record.
    fn magic(&mut self) -> Result<(), RecordError> {
        let mut magic = [0u8; 8];
        self.inner.read_exact(&mut magic).map_err(eof_as_invalid)?;
        if magic != PAYLOAD_MAGIC {
            return Err(RecordError::Invalid(
                "payload does not start with SLPAYLD1".into(),
            ));
        }
        self.started = true;
        Ok(())
    }

    /// The EXTENTS table, its count capped.
    fn extents(&mut self) -> Result<Vec<Extent>, RecordError> {
        let count = self.u32()?;
        if count > self.max_extents {
            return Err(RecordError::Invalid(format!(
                "{count} extents, more than the {} allowed",
                self.max_extents
            )));
        }
        let mut extents = Vec::with_capacity(count.min(1 << 16) as usize);
        for _ in 0..count {
            extents.push(Extent {
                requires_index: self.u32()?,
                offset: self.u64()?,
                len: self.u64()?,
            });
        }
        Ok(extents)
    }

    /// A FRAME record's scratch ranges (each offset relative to the previous range's end), their
    /// count capped like the extents'.
    fn frame_ranges(&mut self) -> Result<Vec<(u64, u64)>, RecordError> {
        let count = self.varint()?;
        if count > u64::from(self.max_extents) {
            return Err(RecordError::Invalid(format!(
                "frame dictionary of {count} ranges, more than the {} allowed",
                self.max_extents
            )));
        }
        let mut ranges = Vec::with_capacity(count.min(1 << 16) as usize);
        let mut end = 0u64;
        for _ in 0..count {
            let offset = end.checked_add(self.varint()?);
            let len = self.varint()?;
            let (Some(offset), Some(next)) = (offset, offset.and_then(|o| o.checked_add(len)))
            else {
                return Err(RecordError::Invalid("frame range out of bounds".into()));
            };
            ranges.push((offset, len));
            end = next;
        }
        Ok(ranges)
    }

    /// A PATCH record of the kind `tag` names.
    fn patch(&mut self, tag: u8) -> Result<Record, RecordError> {
        Ok(Record::Patch {
            kind: match tag {
                TAG_PATCH_ZSTD => PatchKind::Zstd,
                TAG_PATCH_BSDIFF => PatchKind::Bsdiff,
                _ => PatchKind::BsdiffX86,
            },
            scratch_offset: self.u64()?,
            base_len: self.u64()?,
            out_len: self.u64()?,
            patch_len: self.u64()?,
        })
    }

    /// The body of the last record, as a reader bounded to `len` bytes. The caller must read it
    /// to the end before asking for the next record.
    pub fn body(&mut self, len: u64) -> io::Take<&mut R> {
        (&mut self.inner).take(len)
    }

    /// Checks that nothing follows the `End` record.
    pub fn expect_eof(&mut self) -> Result<(), RecordError> {
        let mut byte = [0u8; 1];
        match self.inner.read(&mut byte)? {
            0 => Ok(()),
            _ => Err(RecordError::Invalid("data after the END record".into())),
        }
    }

    /// The underlying stream.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The underlying stream (to switch frames at a FRAME record).
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// A scratch range given relative to the cursor (COPY, MIX, MIX_RUNS), which moves to its
    /// end: (scratch offset, length).
    fn relative_range(&mut self) -> Result<(u64, u64), RecordError> {
        let delta = unzigzag(self.varint()?);
        let len = self.varint()?;
        let scratch_offset = self
            .copy_cursor
            .checked_add_signed(delta)
            .ok_or_else(|| RecordError::Invalid("copy offset out of range".into()))?;
        self.copy_cursor = scratch_offset.saturating_add(len);
        Ok((scratch_offset, len))
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        let mut b = [0u8; 1];
        self.inner.read_exact(&mut b).map_err(eof_as_invalid)?;
        Ok(b[0])
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        let mut b = [0u8; 4];
        self.inner.read_exact(&mut b).map_err(eof_as_invalid)?;
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        let mut b = [0u8; 8];
        self.inner.read_exact(&mut b).map_err(eof_as_invalid)?;
        Ok(u64::from_le_bytes(b))
    }
    fn varint(&mut self) -> Result<u64, RecordError> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = self.u8()?;
            let bits = u64::from(b & 0x7f);
            if i == 9 && b > 1 {
                return Err(RecordError::Invalid("varint overflows 64 bits".into()));
            }
            value |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(RecordError::Invalid("varint longer than 10 bytes".into()))
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn write_varint(w: &mut impl Write, mut v: u64) -> io::Result<()> {
    let mut buf = [0u8; 10];
    let mut n = 0;
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            buf[n] = b;
            n += 1;
            break;
        }
        buf[n] = b | 0x80;
        n += 1;
    }
    w.write_all(&buf[..n])
}

fn eof_as_invalid(e: io::Error) -> RecordError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        RecordError::Invalid("payload ends in the middle of a record".into())
    } else {
        RecordError::Io(e)
    }
}

/// Writes a record stream. The caller is responsible for the order the format requires; the
/// decoder checks it.
pub struct PayloadWriter<W: Write> {
    inner: W,
    copy_cursor: u64,
    format_version: u32,
}

impl<W: Write> PayloadWriter<W> {
    /// Starts a payload: writes the magic.
    pub fn new(mut inner: W) -> io::Result<Self> {
        inner.write_all(&PAYLOAD_MAGIC)?;
        Ok(PayloadWriter {
            inner,
            copy_cursor: 0,
            format_version: 1,
        })
    }

    /// The lowest bundle format version that has every record written so far (4 once a
    /// RECIPE of the Go kind is written, 3 once a MIX_RUNS or PATCH_BSDIFF_X86 is, else 1):
    /// what the statement must declare.
    pub fn format_version(&self) -> u32 {
        self.format_version
    }

    /// The config record with its bytes.
    pub fn config(&mut self, bytes: &[u8]) -> io::Result<()> {
        let len = u32::try_from(bytes.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "config over 4 GiB"))?;
        self.inner.write_all(&[TAG_CONFIG])?;
        self.inner.write_all(&len.to_le_bytes())?;
        self.inner.write_all(bytes)
    }

    /// The extents table.
    pub fn extents(&mut self, extents: &[Extent]) -> io::Result<()> {
        let count = u32::try_from(extents.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many extents"))?;
        self.inner.write_all(&[TAG_EXTENTS])?;
        self.inner.write_all(&count.to_le_bytes())?;
        for e in extents {
            self.inner.write_all(&e.requires_index.to_le_bytes())?;
            self.inner.write_all(&e.offset.to_le_bytes())?;
            self.inner.write_all(&e.len.to_le_bytes())?;
        }
        Ok(())
    }

    /// Ends the current frame; the caller then starts the next frame with the
    /// dictionary made of these scratch ranges.
    /// Ranges must be in increasing, non-overlapping order.
    pub fn frame(&mut self, ranges: &[(u64, u64)]) -> io::Result<()> {
        self.inner.write_all(&[TAG_FRAME])?;
        write_varint(&mut self.inner, ranges.len() as u64)?;
        let mut end = 0u64;
        for &(offset, len) in ranges {
            let delta = offset.checked_sub(end).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "frame ranges out of order")
            })?;
            write_varint(&mut self.inner, delta)?;
            write_varint(&mut self.inner, len)?;
            end = offset + len;
        }
        Ok(())
    }

    /// Target layer `index` is already on the device.
    pub fn present(&mut self, index: u32) -> io::Result<()> {
        self.inner.write_all(&[TAG_PRESENT])?;
        self.inner.write_all(&index.to_le_bytes())
    }

    /// Starts the operations of target layer `index`.
    pub fn begin_layer(&mut self, index: u32) -> io::Result<()> {
        self.inner.write_all(&[TAG_LAYER])?;
        self.inner.write_all(&index.to_le_bytes())
    }

    /// The gzip recipe of the layer whose PRESENT or END_LAYER record was written last, as a
    /// LAYER_RECIPE record (format version 9).
    pub fn layer_recipe(&mut self, recipe: &[u8]) -> io::Result<()> {
        self.format_version = self.format_version.max(9);
        self.inner.write_all(&[TAG_LAYER_RECIPE])?;
        write_varint(&mut self.inner, recipe.len() as u64)?;
        self.inner.write_all(recipe)
    }

    /// The gzip recipe of target layer `index` (after its PRESENT or END_LAYER record) as a
    /// RECIPE record, as bundles of format versions 2 to 8 carry it.
    pub fn recipe(&mut self, index: u32, recipe: &[u8]) -> io::Result<()> {
        match recipe.first() {
            Some(&crate::gzip_recipe::RECIPE_GO) => {
                self.format_version = self.format_version.max(4);
            }
            Some(&crate::gzip_recipe::RECIPE_PGZIP) => {
                self.format_version = self.format_version.max(5);
            }
            Some(&crate::gzip_recipe::RECIPE_GO_FLUSHED) => {
                self.format_version = self.format_version.max(6);
            }
            Some(&crate::gzip_recipe::RECIPE_PREFLATE_VERBATIM) => {
                self.format_version = self.format_version.max(7);
            }
            Some(&crate::gzip_recipe::RECIPE_COMPACT) => {
                let version = match crate::gzip_recipe::needs_layer_size(recipe) {
                    true => 9,
                    false => 8,
                };
                self.format_version = self.format_version.max(version);
            }
            Some(&crate::gzip_recipe::RECIPE_TINY) => {
                self.format_version = self.format_version.max(9);
            }
            _ => {}
        }
        self.inner.write_all(&[TAG_RECIPE])?;
        self.inner.write_all(&index.to_le_bytes())?;
        self.inner.write_all(&(recipe.len() as u64).to_le_bytes())?;
        self.inner.write_all(recipe)
    }

    /// Target layer `index` as the source's compressed blob: exactly `len` bytes of `blob`.
    pub fn blob(&mut self, index: u32, len: u64, blob: &mut impl Read) -> io::Result<()> {
        self.inner.write_all(&[TAG_BLOB])?;
        self.inner.write_all(&index.to_le_bytes())?;
        self.inner.write_all(&len.to_le_bytes())?;
        let copied = io::copy(&mut blob.take(len), &mut self.inner)?;
        if copied != len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    /// Literal bytes.
    pub fn literal(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_all(&[TAG_LITERAL])?;
        write_varint(&mut self.inner, bytes.len() as u64)?;
        self.inner.write_all(bytes)
    }

    /// An x86 executable's bytes, exactly `len` of them read from `data`, sent through xz's
    /// x86 BCJ filter: relative call and jump targets become absolute, so the many calls to
    /// one function look alike to the compressor (about 7 % smaller compressed).
    pub fn literal_x86(&mut self, len: u64, data: &mut impl Read) -> io::Result<()> {
        self.inner.write_all(&[TAG_LITERAL_X86])?;
        write_varint(&mut self.inner, len)?;
        let mut filter = lzma_rust2::filter::bcj::BcjWriter::new_x86(NoFlush(&mut self.inner), 0);
        let copied = io::copy(&mut data.take(len), &mut filter)?;
        filter.finish()?;
        if copied != len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    /// Copy from scratch.
    pub fn copy(&mut self, scratch_offset: u64, len: u64) -> io::Result<()> {
        self.inner.write_all(&[TAG_COPY])?;
        // Offsets stay far below 2^63 (they are bounded by the scratch store).
        let delta = scratch_offset.wrapping_sub(self.copy_cursor) as i64;
        write_varint(&mut self.inner, zigzag(delta))?;
        write_varint(&mut self.inner, len)?;
        self.copy_cursor = scratch_offset + len;
        Ok(())
    }

    /// The scratch bytes at `scratch_offset` plus `diff` (bytewise, mod 256).
    pub fn mix(&mut self, scratch_offset: u64, diff: &[u8]) -> io::Result<()> {
        self.inner.write_all(&[TAG_MIX])?;
        let delta = scratch_offset.wrapping_sub(self.copy_cursor) as i64;
        write_varint(&mut self.inner, zigzag(delta))?;
        write_varint(&mut self.inner, diff.len() as u64)?;
        self.copy_cursor = scratch_offset + diff.len() as u64;
        self.inner.write_all(diff)
    }

    /// The scratch bytes from `scratch_offset` with `runs` added (see [`MixRuns`]).
    pub fn mix_runs(&mut self, scratch_offset: u64, runs: MixRuns) -> io::Result<()> {
        self.inner.write_all(&[TAG_MIX_RUNS])?;
        self.format_version = self.format_version.max(3);
        let delta = scratch_offset.wrapping_sub(self.copy_cursor) as i64;
        write_varint(&mut self.inner, zigzag(delta))?;
        let len = runs.len;
        write_varint(&mut self.inner, len)?;
        let body = runs.into_body();
        write_varint(&mut self.inner, body.len() as u64)?;
        self.copy_cursor = scratch_offset + len;
        self.inner.write_all(&body)
    }

    /// A patch against a scratch range.
    pub fn patch(
        &mut self,
        kind: PatchKind,
        scratch_offset: u64,
        base_len: u64,
        out_len: u64,
        patch: &[u8],
    ) -> io::Result<()> {
        let tag = match kind {
            PatchKind::Zstd => TAG_PATCH_ZSTD,
            PatchKind::Bsdiff => TAG_PATCH_BSDIFF,
            PatchKind::BsdiffX86 => TAG_PATCH_BSDIFF_X86,
        };
        if kind == PatchKind::BsdiffX86 {
            self.format_version = self.format_version.max(3);
        }
        self.inner.write_all(&[tag])?;
        for v in [scratch_offset, base_len, out_len, patch.len() as u64] {
            self.inner.write_all(&v.to_le_bytes())?;
        }
        self.inner.write_all(patch)
    }

    /// Ends the current layer.
    pub fn end_layer(&mut self) -> io::Result<()> {
        self.inner.write_all(&[TAG_END_LAYER])
    }

    /// Ends the payload and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.inner.write_all(&[TAG_END])?;
        Ok(self.inner)
    }

    /// The underlying writer (e.g. to flush a compressor at a layer boundary).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

/// Passes writes through and ignores flushes: a filter's flush at its end must not end the
/// compressor's current chunk.
struct NoFlush<W>(W);

impl<W: Write> Write for NoFlush<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether bytes start like an x86 or x86-64 ELF file (what the x86 BCJ filter helps).
pub fn is_x86_elf(head: &[u8]) -> bool {
    head.len() >= 20
        && head.starts_with(b"\x7fELF")
        && head[5] == 1 // little-endian
        && matches!(u16::from_le_bytes([head[18], head[19]]), 0x03 | 0x3E)
}

/// The body of a MIX_RUNS record, built a piece at a time: stretches equal to the scratch
/// bytes ([`MixRuns::same`]) and byte-wise differences ([`MixRuns::diff`]).
#[derive(Debug, Default, Clone)]
pub struct MixRuns {
    /// Output length so far.
    len: u64,
    /// Finished runs.
    runs: Vec<u8>,
    /// Equal bytes not yet written into a run.
    zeros: u64,
    /// Differences of the run being built (after `zeros`).
    literal: Vec<u8>,
}

/// Shortest stretch of equal bytes (given in one piece) that ends a run of differences: a
/// changed tar header differs in a few fields (mtime, checksum, a PAX record's digits) a few
/// bytes apart, and a shorter stretch inside the run costs less than a new run.
const MIN_EQUAL_RUN: usize = 8;

impl MixRuns {
    /// Output bytes so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether any byte differs from the scratch bytes (if not, a COPY says the same).
    pub fn has_differences(&self) -> bool {
        !self.runs.is_empty() || !self.literal.is_empty()
    }

    /// Bytes of runs so far (to bound the record).
    pub fn body_len(&self) -> usize {
        self.runs.len() + self.literal.len()
    }

    /// `len` bytes equal to the scratch bytes.
    pub fn same(&mut self, len: u64) {
        self.len += len;
        if self.literal.is_empty() {
            self.zeros += len;
        } else if len >= MIN_EQUAL_RUN as u64 {
            self.close();
            self.zeros += len;
        } else {
            self.literal.extend(std::iter::repeat_n(0, len as usize));
        }
    }

    /// Bytes given as their differences (new minus scratch, mod 256).
    pub fn diff(&mut self, diff: &[u8]) {
        let mut at = 0;
        while at < diff.len() {
            let equal = diff[at..].iter().take_while(|&&b| b == 0).count();
            if equal > 0 {
                self.same(equal as u64);
                at += equal;
                continue;
            }
            let n = diff[at..]
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(diff.len() - at);
            self.literal.extend_from_slice(&diff[at..at + n]);
            self.len += n as u64;
            at += n;
        }
    }

    fn close(&mut self) {
        // Trailing zeros of a literal run belong to the next run's equal stretch.
        let trailing = self.literal.iter().rev().take_while(|&&b| b == 0).count();
        self.literal.truncate(self.literal.len() - trailing);
        put_varint(&mut self.runs, self.zeros);
        put_varint(&mut self.runs, self.literal.len() as u64);
        self.runs.append(&mut self.literal);
        self.zeros = trailing as u64;
    }

    /// The record body: the runs, the last one closed.
    fn into_body(mut self) -> Vec<u8> {
        if !self.literal.is_empty() {
            self.close();
        }
        if self.zeros > 0 {
            put_varint(&mut self.runs, self.zeros);
            put_varint(&mut self.runs, 0);
        }
        self.runs
    }
}

fn put_varint(out: &mut Vec<u8>, v: u64) {
    write_varint(out, v).expect("writing to a Vec does not fail");
}

/// Reads one varint from a record body; `None` at a clean end of the body.
pub fn read_body_varint(body: &mut impl Read) -> Result<Option<u64>, RecordError> {
    let mut value = 0u64;
    for i in 0..10 {
        let mut b = [0u8; 1];
        let n = loop {
            match body.read(&mut b) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        if n == 0 {
            return if i == 0 {
                Ok(None)
            } else {
                Err(RecordError::Invalid(
                    "record body ends inside a varint".into(),
                ))
            };
        }
        if i == 9 && b[0] > 1 {
            return Err(RecordError::Invalid("varint overflows 64 bits".into()));
        }
        value |= u64::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            return Ok(Some(value));
        }
    }
    Err(RecordError::Invalid("varint longer than 10 bytes".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_go_recipe_raises_the_format_version_to_4() {
        let mut w = PayloadWriter::new(Vec::new()).unwrap();
        w.recipe(0, &[crate::gzip_recipe::RECIPE_ZLIB]).unwrap();
        assert_eq!(w.format_version(), 1);
        w.recipe(1, &[crate::gzip_recipe::RECIPE_GO]).unwrap();
        assert_eq!(w.format_version(), 4);
    }

    #[test]
    fn a_pgzip_recipe_raises_the_format_version_to_5() {
        let mut w = PayloadWriter::new(Vec::new()).unwrap();
        w.recipe(0, &[crate::gzip_recipe::RECIPE_GO]).unwrap();
        assert_eq!(w.format_version(), 4);
        w.recipe(1, &[crate::gzip_recipe::RECIPE_PGZIP]).unwrap();
        assert_eq!(w.format_version(), 5);
        w.recipe(2, &[crate::gzip_recipe::RECIPE_GO]).unwrap();
        assert_eq!(w.format_version(), 5);
    }

    #[test]
    fn a_flushed_go_recipe_raises_the_format_version_to_6() {
        let mut w = PayloadWriter::new(Vec::new()).unwrap();
        w.recipe(0, &[crate::gzip_recipe::RECIPE_PGZIP]).unwrap();
        assert_eq!(w.format_version(), 5);
        w.recipe(1, &[crate::gzip_recipe::RECIPE_GO_FLUSHED])
            .unwrap();
        assert_eq!(w.format_version(), 6);
        w.recipe(2, &[crate::gzip_recipe::RECIPE_GO]).unwrap();
        assert_eq!(w.format_version(), 6);
    }

    #[test]
    fn a_preflate_recipe_with_verbatim_blocks_raises_the_format_version_to_7() {
        let mut w = PayloadWriter::new(Vec::new()).unwrap();
        w.recipe(0, &[crate::gzip_recipe::RECIPE_PREFLATE]).unwrap();
        assert_eq!(w.format_version(), 1);
        w.recipe(1, &[crate::gzip_recipe::RECIPE_PREFLATE_VERBATIM])
            .unwrap();
        assert_eq!(w.format_version(), 7);
        w.recipe(2, &[crate::gzip_recipe::RECIPE_GO_FLUSHED])
            .unwrap();
        assert_eq!(w.format_version(), 7);
    }

    #[test]
    fn a_layer_recipe_is_two_bytes_of_framing_and_version_9() {
        let mut w = PayloadWriter::new(Vec::new()).unwrap();
        w.present(0).unwrap();
        w.layer_recipe(&[7, 12, 4, 6, 0]).unwrap();
        assert_eq!(w.format_version(), 9);
        let bytes = w.finish().unwrap();
        let mut r = PayloadReader::new(&bytes[..], 10);
        assert_eq!(r.next_record().unwrap(), Record::Present { index: 0 });
        assert_eq!(r.next_record().unwrap(), Record::LayerRecipe { len: 5 });
        let mut body = Vec::new();
        r.body(5).read_to_end(&mut body).unwrap();
        assert_eq!(body, [7, 12, 4, 6, 0]);
        let end = bytes.len() - 1;
        assert_eq!(&bytes[end - 7..end], &[TAG_LAYER_RECIPE, 5, 7, 12, 4, 6, 0]);
    }

    #[test]
    fn a_compact_recipe_raises_the_format_version_to_8_or_9() {
        let mut w = PayloadWriter::new(Vec::new()).unwrap();
        w.recipe(0, &[crate::gzip_recipe::RECIPE_PREFLATE_VERBATIM])
            .unwrap();
        assert_eq!(w.format_version(), 7);
        w.recipe(1, &[crate::gzip_recipe::RECIPE_COMPACT]).unwrap();
        assert_eq!(w.format_version(), 8);
        // Leaving the plain length to the layer's size is version 9.
        let mut short = vec![crate::gzip_recipe::RECIPE_COMPACT, 8];
        short.extend_from_slice(&[4, 6, 0]);
        w.recipe(2, &short).unwrap();
        assert_eq!(w.format_version(), 9);
        assert_eq!(
            w.format_version(),
            sideload_signing::FORMAT_VERSION,
            "devices read what builds write"
        );
    }

    #[test]
    fn round_trip() {
        let mut w = PayloadWriter::new(Vec::new()).unwrap();
        w.config(b"{}").unwrap();
        let extents = [Extent {
            requires_index: 0,
            offset: 512,
            len: 100,
        }];
        w.extents(&extents).unwrap();
        w.frame(&[(0, 10), (20, 5)]).unwrap();
        w.present(0).unwrap();
        w.recipe(0, b"rcp").unwrap();
        w.blob(2, 4, &mut &b"gzip"[..]).unwrap();
        w.begin_layer(1).unwrap();
        w.literal(b"hello").unwrap();
        let call = [
            0xE8, 0x10, 0, 0, 0, 0x90, 0x90, 0x90, 0x90, 0xE8, 0xF0, 0xFF, 0xFF, 0xFF,
        ];
        w.literal_x86(call.len() as u64, &mut &call[..]).unwrap();
        w.copy(0, 100).unwrap();
        w.mix(90, b"ab").unwrap();
        w.patch(PatchKind::Zstd, 0, 100, 7, b"xyz").unwrap();
        w.end_layer().unwrap();
        let bytes = w.finish().unwrap();

        let mut r = PayloadReader::new(&bytes[..], 10);
        assert_eq!(r.next_record().unwrap(), Record::Config { len: 2 });
        let mut body = Vec::new();
        r.body(2).read_to_end(&mut body).unwrap();
        assert_eq!(body, b"{}");
        assert_eq!(r.next_record().unwrap(), Record::Extents(extents.to_vec()));
        assert_eq!(
            r.next_record().unwrap(),
            Record::Frame(vec![(0, 10), (20, 5)])
        );
        assert_eq!(r.next_record().unwrap(), Record::Present { index: 0 });
        assert_eq!(
            r.next_record().unwrap(),
            Record::Recipe { index: 0, len: 3 }
        );
        io::copy(&mut r.body(3), &mut io::sink()).unwrap();
        assert_eq!(r.next_record().unwrap(), Record::Blob { index: 2, len: 4 });
        io::copy(&mut r.body(4), &mut io::sink()).unwrap();
        assert_eq!(r.next_record().unwrap(), Record::Layer { index: 1 });
        assert_eq!(r.next_record().unwrap(), Record::Literal { len: 5 });
        io::copy(&mut r.body(5), &mut io::sink()).unwrap();
        assert_eq!(r.next_record().unwrap(), Record::LiteralX86 { len: 14 });
        let mut filtered = Vec::new();
        r.body(14).read_to_end(&mut filtered).unwrap();
        assert_ne!(filtered[..], call[..], "call targets made absolute");
        let mut restored = Vec::new();
        lzma_rust2::filter::bcj::BcjReader::new_x86(&filtered[..], 0)
            .read_to_end(&mut restored)
            .unwrap();
        assert_eq!(restored, call);
        assert_eq!(
            r.next_record().unwrap(),
            Record::Copy {
                scratch_offset: 0,
                len: 100
            }
        );
        assert_eq!(
            r.next_record().unwrap(),
            Record::Mix {
                scratch_offset: 90,
                len: 2
            }
        );
        io::copy(&mut r.body(2), &mut io::sink()).unwrap();
        assert!(matches!(
            r.next_record().unwrap(),
            Record::Patch {
                kind: PatchKind::Zstd,
                patch_len: 3,
                ..
            }
        ));
        io::copy(&mut r.body(3), &mut io::sink()).unwrap();
        assert_eq!(r.next_record().unwrap(), Record::EndLayer);
        assert_eq!(r.next_record().unwrap(), Record::End);
        r.expect_eof().unwrap();
    }

    /// Random record streams: the reader returns records or errors, never panics, and never
    /// allocates more than the extents cap allows.
    #[test]
    fn random_streams_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut bytes = PAYLOAD_MAGIC.to_vec();
            // Bias towards valid tags so parsing gets past the first record.
            for i in 0..len {
                let r = next();
                bytes.push(if i % 9 == 0 {
                    [
                        TAG_CONFIG,
                        TAG_EXTENTS,
                        TAG_LAYER,
                        TAG_LITERAL,
                        TAG_COPY,
                        TAG_PATCH_BSDIFF,
                        TAG_END,
                    ][(r % 7) as usize]
                } else {
                    r as u8
                });
            }
            let mut reader = PayloadReader::new(&bytes[..], 4);
            for _ in 0..16 {
                match reader.next_record() {
                    Ok(Record::Literal { len }) | Ok(Record::Patch { patch_len: len, .. }) => {
                        let _ = io::copy(&mut reader.body(len), &mut io::sink());
                    }
                    Ok(Record::Config { len }) => {
                        let _ = io::copy(&mut reader.body(len.into()), &mut io::sink());
                    }
                    Ok(Record::End) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
    }

    #[test]
    fn varints_and_relative_copies() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            write_varint(&mut b, v).unwrap();
            let mut r = PayloadReader::new(&b[..], 0);
            assert_eq!(r.varint().unwrap(), v);
        }
        for v in [0i64, -1, 1, -1000, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        let mut w = PayloadWriter::new(Vec::new()).unwrap();
        w.copy(1000, 10).unwrap();
        w.copy(500, 20).unwrap();
        w.copy(1 << 40, 1).unwrap();
        let bytes = w.finish().unwrap();
        assert!(
            bytes.len() < 8 + 3 * 12,
            "copies are short: {}",
            bytes.len()
        );
        let mut r = PayloadReader::new(&bytes[..], 0);
        for (scratch_offset, len) in [(1000, 10), (500, 20), (1 << 40, 1)] {
            assert_eq!(
                r.next_record().unwrap(),
                Record::Copy {
                    scratch_offset,
                    len
                }
            );
        }
        // An overlong varint and a copy before offset 0 are refused.
        let mut bad = PAYLOAD_MAGIC.to_vec();
        bad.push(TAG_COPY);
        bad.extend_from_slice(&[0xff; 11]);
        assert!(PayloadReader::new(&bad[..], 0).next_record().is_err());
        let mut bad = PAYLOAD_MAGIC.to_vec();
        bad.push(TAG_COPY);
        bad.extend_from_slice(&[0x03, 0x01]);
        let err = PayloadReader::new(&bad[..], 0).next_record().unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
    }

    #[test]
    fn hostile_counts_and_tags() {
        // An extents count over the cap is refused before anything is allocated for it.
        let mut bytes = PAYLOAD_MAGIC.to_vec();
        bytes.push(TAG_EXTENTS);
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        let err = PayloadReader::new(&bytes[..], 1000)
            .next_record()
            .unwrap_err();
        assert!(
            err.to_string().contains("more than the 1000 allowed"),
            "{err}"
        );

        let mut bytes = PAYLOAD_MAGIC.to_vec();
        bytes.push(0x77);
        let err = PayloadReader::new(&bytes[..], 10)
            .next_record()
            .unwrap_err();
        assert!(err.to_string().contains("unknown record type 0x77"));

        let err = PayloadReader::new(&b"SLPAYLD"[..], 10)
            .next_record()
            .unwrap_err();
        assert!(err.to_string().contains("middle of a record"));
    }

    #[test]
    fn mix_runs_keep_short_equal_stretches_inside_a_run() {
        let mut runs = MixRuns::default();
        runs.same(1000);
        runs.diff(&[1, 2, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4]);
        runs.same(3);
        runs.diff(&[5, 0, 0]);
        runs.same(20);
        assert_eq!(runs.len(), 1000 + 15 + 3 + 3 + 20);
        assert!(runs.has_differences());
        // (1000 equal, 5 differing: "1 2 0 0 3"), then 9 equal, then "4 0 0 0 5" (the short
        // equal stretches inside), then the 22 equal bytes at the end as a last run of none.
        let mut expect = Vec::new();
        for v in [1000u64, 5] {
            put_varint(&mut expect, v);
        }
        expect.extend_from_slice(&[1, 2, 0, 0, 3]);
        put_varint(&mut expect, 9);
        put_varint(&mut expect, 5);
        expect.extend_from_slice(&[4, 0, 0, 0, 5]);
        put_varint(&mut expect, 22);
        put_varint(&mut expect, 0);
        assert_eq!(runs.into_body(), expect);
        let mut copy_only = MixRuns::default();
        copy_only.same(7);
        copy_only.diff(&[0; 9]);
        assert!(!copy_only.has_differences());
        assert_eq!(copy_only.len(), 16);
    }
}
