//! preflate recipes (kinds 1 and 6): `preflate-rs` 0.7.6's corrections, chunk by chunk, and
//! the deflate blocks preflate cannot take written without it.
//!
//! # Blocks preflate refuses
//!
//! preflate's parser refuses some valid deflate blocks (see [`crate::deflate_scan`]: mostly
//! the single one-bit distance code Go and klauspost write in a block with at most one distance
//! code in use), and one refused block used to cost the whole blob. The analyser now walks the
//! stream itself ([`scan_block`]) ahead of preflate, feeds preflate only runs of blocks it can
//! parse, and writes the others in a *raw* chunk, each block the cheaper way of two:
//!
//! - **re-encoded**: its header (BFINAL to the last code length) as it is, and its matches;
//!   the device codes the plain text with the header's codes as literals but for those
//!   matches ([`encode_block`]). The blocks preflate refuses are nearly all literals (Go and
//!   klauspost write them for data that Huffman codes compress but matches do not), so a
//!   block of 16-64 KiB costs about a hundred bytes;
//! - **verbatim**: its bits as they are (a block of many matches, a fixed block, one with odd
//!   padding).
//!
//! Blocks preflate parses but cannot model (any other preflate error) go the same way, found by
//! halving the run preflate failed on; after 16 such blocks in a row the analyser gives up
//! (preflate does not model that compressor). A short stretch of good blocks between two
//! refused ones goes into the raw chunk too: restarting preflate costs more.
//!
//! # Restarting preflate after a raw chunk
//!
//! `preflate-rs` has no way to start a stream in the middle: its processors begin with an empty
//! window at bit 0 of a byte, and the public API takes no dictionary. The blocks after a raw
//! chunk start at any bit and copy from the 32 KiB of plain text before them. So a new
//! preflate *run* starts on a synthetic stream: a prefix made from that window
//! ([`run_prefix`]: a stored block holding it, then an empty dynamic block whose length puts
//! the prefix's end on the same bit of a byte as the real block's start), then the real
//! blocks. preflate parses the prefix's blocks with the real ones (so its model is estimated
//! on real blocks), and the device, which knows the window and the bit, makes the same prefix,
//! drops its bytes from preflate's output and puts back the low bits of the first real byte
//! (`lead`: the end of the block before, which preflate never saw). A restart costs from
//! nothing to about a kilobyte of corrections (measured by restarting at every chunk: -5 % to
//! +5 % on three blobs).
//!
//! Chunks, in stream order ([`ChunkBody`]): a run starts with the recipe's first chunk or with
//! a restart chunk and goes on with plain preflate chunks; a raw chunk ends the run before it.
//! Restart and raw chunks start with the lead bits of their first byte; every chunk writes the
//! whole bytes it ends, and leaves a last partial byte to the chunk after it (but for the
//! stream's last byte).
//!
//! Streams preflate takes whole keep kind 1 and the chunking they had before (a step of 2 MiB
//! of compressed bytes per call), so their recipes are unchanged.

use std::collections::VecDeque;
use std::io::{self, Cursor, Read, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};

use preflate_rs::{
    PreflateConfig, PreflateError, PreflateStreamProcessor, RecreateStreamProcessor,
};

use super::{
    fill, read_header, read_trailer, take, take_bytes, Analysis, BlockMatch, ChunkBody,
    DeflateRecipe, GzipRecipe, PlainSums, RawBlock, RecipeChunk, RecipeError, ANALYSE_STEP,
    CHUNK_PLAIN_LIMIT, MAX_CHUNK_PLAIN, MAX_PENDING,
};
use crate::deflate_scan::{encode_block, scan_block, scan_block_matches, BitWriter, ScannedBlock};

/// preflate's window: what a restarted run's prefix holds.
const WINDOW: usize = 32 << 10;

/// A stretch of blocks preflate could take between two refused ones that is shorter than this
/// (compressed bytes) goes verbatim with them: restarting preflate costs more.
const MIN_RUN_BYTES: u64 = 4 << 10;

/// Blocks in a row that preflate parses but cannot model (kept verbatim one by one) before the
/// analyser gives up on the stream: preflate does not model that compressor.
const MAX_UNMODELLED: u32 = 16;

/// Chunk type bytes of a kind 6 recipe.
const CHUNK_PREFLATE: u8 = 0;
const CHUNK_RESTART: u8 = 1;
const CHUNK_RAW: u8 = 2;

/// Block forms of a raw chunk.
const BLOCK_VERBATIM: u8 = 0;
const BLOCK_REENCODED: u8 = 1;

/// Longest dynamic block header, in bits (3 + 14 + 19 × 3 + 316 codes of at most 7 + 7 bits).
const MAX_HEADER_BITS: u64 = 3 + 14 + 19 * 3 + 316 * 14;

pub(super) fn varint_len(mut v: u64) -> u64 {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

/// A match list as [`put_raw_block`] writes it: per match, the LEB128 varints of its
/// literals, its length less 3 and its distance less 1.
fn matches_len(matches: &[BlockMatch]) -> u64 {
    matches
        .iter()
        .map(|m| {
            varint_len(u64::from(m.literals))
                + varint_len(u64::from(m.len - 3))
                + varint_len(u64::from(m.dist - 1))
        })
        .sum()
}

fn raw_block_len(block: &RawBlock) -> u64 {
    1 + 4
        + match block {
            RawBlock::Verbatim { bytes, .. } => 4 + bytes.len() as u64,
            RawBlock::Reencoded {
                header, matches, ..
            } => 4 + header.len() as u64 + 4 + 4 + matches_len(matches),
        }
}

/// Bytes [`put_chunks`] writes for `chunks` (`typed`: in kind 6's layout).
pub(super) fn chunks_len(chunks: &[RecipeChunk], typed: bool) -> u64 {
    4 + chunks
        .iter()
        .map(|c| {
            let body = match &c.body {
                ChunkBody::Preflate(b) => 4 + b.len() as u64,
                ChunkBody::Restart { corrections, .. } => 2 + 4 + corrections.len() as u64,
                ChunkBody::Raw { blocks, .. } => {
                    2 + 4 + blocks.iter().map(raw_block_len).sum::<u64>()
                }
            };
            u64::from(typed) + 4 + body
        })
        .sum::<u64>()
}

fn put_raw_block(out: &mut Vec<u8>, block: &RawBlock) {
    match block {
        RawBlock::Verbatim {
            plain_len,
            bits,
            bytes,
        } => {
            out.push(BLOCK_VERBATIM);
            out.extend_from_slice(&(*plain_len as u32).to_le_bytes());
            out.extend_from_slice(&(*bits as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        RawBlock::Reencoded {
            plain_len,
            header_bits,
            header,
            matches,
        } => {
            out.push(BLOCK_REENCODED);
            out.extend_from_slice(&(*plain_len as u32).to_le_bytes());
            out.extend_from_slice(&(*header_bits as u32).to_le_bytes());
            out.extend_from_slice(header);
            out.extend_from_slice(&(matches.len() as u32).to_le_bytes());
            out.extend_from_slice(&(matches_len(matches) as u32).to_le_bytes());
            for m in matches {
                super::put_varint(out, u64::from(m.literals));
                super::put_varint(out, u64::from(m.len - 3));
                super::put_varint(out, u64::from(m.dist - 1));
            }
        }
    }
}

/// Writes the chunks: a u32 count, then per chunk (kind 6 only: a type byte,) the u32 plain
/// length, and then: plain chunks the u32-prefixed corrections; restart chunks the u8
/// alignment, the u8 lead and the u32-prefixed corrections; raw chunks the u8 alignment, the
/// u8 lead, a u32 block count and the blocks (a form byte, the u32 plain length, then a
/// verbatim block's u32 bit count and bytes, or a re-encoded block's u32 header bit count,
/// header bytes, u32 match count, u32 byte length of the matches and the matches).
pub(super) fn put_chunks(out: &mut Vec<u8>, chunks: &[RecipeChunk], typed: bool) {
    out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    for c in chunks {
        if typed {
            out.push(match c.body {
                ChunkBody::Preflate(_) => CHUNK_PREFLATE,
                ChunkBody::Restart { .. } => CHUNK_RESTART,
                ChunkBody::Raw { .. } => CHUNK_RAW,
            });
        }
        out.extend_from_slice(&(c.plain_len as u32).to_le_bytes());
        match &c.body {
            ChunkBody::Preflate(b) => super::put_bytes(out, b),
            ChunkBody::Restart {
                corrections,
                align,
                lead,
            } => {
                out.push(*align);
                out.push(*lead);
                super::put_bytes(out, corrections);
            }
            ChunkBody::Raw {
                align,
                lead,
                blocks,
            } => {
                out.push(*align);
                out.push(*lead);
                out.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
                blocks.iter().for_each(|b| put_raw_block(out, b));
            }
        }
    }
}

fn take_u32(r: &mut Cursor<&[u8]>) -> Result<u32, RecipeError> {
    Ok(u32::from_le_bytes(take(r, 4)?.try_into().expect("4 bytes")))
}

/// A restart's or raw chunk's alignment and lead bits.
fn take_align(r: &mut Cursor<&[u8]>, i: u32) -> Result<(u8, u8), RecipeError> {
    let (align, lead) = (take(r, 1)?[0], take(r, 1)?[0]);
    if align > 7 || u32::from(lead) >> align != 0 {
        return Err(RecipeError::Invalid(format!(
            "chunk {i} starts at bit {align} with lead bits {lead:#x}"
        )));
    }
    Ok((align, lead))
}

/// `bits` bits' bytes, bits past the last bit zero.
fn take_bits(r: &mut Cursor<&[u8]>, bits: u64) -> Result<Vec<u8>, RecipeError> {
    let bytes = take(r, bits.div_ceil(8) as usize)?.to_vec();
    if !bits.is_multiple_of(8) && bytes[bytes.len() - 1] >> (bits % 8) != 0 {
        return Err(RecipeError::Invalid("bits set past a block's end".into()));
    }
    Ok(bytes)
}

fn take_raw_block(r: &mut Cursor<&[u8]>, total: usize) -> Result<RawBlock, RecipeError> {
    let form = take(r, 1)?[0];
    let plain_len = u64::from(take_u32(r)?);
    let bits = u64::from(take_u32(r)?);
    match form {
        BLOCK_VERBATIM => {
            // A block has at least 10 bits.
            if !(10..=total as u64 * 8).contains(&bits) {
                return Err(RecipeError::Invalid(format!(
                    "a verbatim block of {bits} bits"
                )));
            }
            Ok(RawBlock::Verbatim {
                plain_len,
                bits,
                bytes: take_bits(r, bits)?,
            })
        }
        BLOCK_REENCODED => {
            if !(17..=MAX_HEADER_BITS).contains(&bits) {
                return Err(RecipeError::Invalid(format!(
                    "a block header of {bits} bits"
                )));
            }
            let header = take_bits(r, bits)?;
            let count = take_u32(r)?;
            let len = take_u32(r)? as usize;
            // Each match takes at least 3 bytes and 3 bytes of plain text.
            if u64::from(count) * 3 > plain_len || count as usize * 3 > len {
                return Err(RecipeError::Invalid(format!(
                    "{count} matches in {len} bytes for {plain_len} plain bytes"
                )));
            }
            let body = take(r, len)?;
            let mut m = Cursor::new(body);
            let mut matches = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let (literals, len, dist) = (
                    super::take_varint(&mut m)?,
                    super::take_varint(&mut m)?,
                    super::take_varint(&mut m)?,
                );
                if literals > plain_len || len > 255 || dist > 32767 {
                    return Err(RecipeError::Invalid("a match out of range".into()));
                }
                matches.push(BlockMatch {
                    literals: literals as u32,
                    len: len as u16 + 3,
                    dist: dist as u16 + 1,
                });
            }
            if m.position() != body.len() as u64 {
                return Err(RecipeError::Invalid("bytes after a block's matches".into()));
            }
            Ok(RawBlock::Reencoded {
                plain_len,
                header_bits: bits,
                header,
                matches,
            })
        }
        other => Err(RecipeError::Invalid(format!(
            "a raw block of form {other}; update sideload on the device"
        ))),
    }
}

/// Parses what [`put_chunks`] wrote, at most `max_chunks` chunks; checks each field and the
/// order (a chunk continues a run only after one of its run).
pub(super) fn take_chunks(
    r: &mut Cursor<&[u8]>,
    total: usize,
    max_chunks: u64,
    typed: bool,
) -> Result<Vec<RecipeChunk>, RecipeError> {
    let count = take_u32(r)?;
    // Each chunk takes at least 8 bytes: a count the rest cannot hold is a lie; and a layer
    // has only so many chunks (an empty chunk costs the decoder more than its 8 bytes).
    if u64::from(count) * 8 > total as u64 || u64::from(count) > max_chunks {
        return Err(RecipeError::Invalid(format!(
            "{count} chunks declared in {total} bytes"
        )));
    }
    let mut chunks: Vec<RecipeChunk> = Vec::with_capacity(count as usize);
    for i in 0..count {
        let kind = match typed {
            true => take(r, 1)?[0],
            false => CHUNK_PREFLATE,
        };
        let plain_len = u64::from(take_u32(r)?);
        if plain_len > MAX_CHUNK_PLAIN {
            return Err(RecipeError::Invalid(format!(
                "a chunk of {plain_len} plain bytes (at most {MAX_CHUNK_PLAIN})"
            )));
        }
        let body = match kind {
            CHUNK_PREFLATE => {
                if i > 0 && matches!(chunks[i as usize - 1].body, ChunkBody::Raw { .. }) {
                    return Err(RecipeError::Invalid(format!(
                        "chunk {i} continues a preflate run after a raw chunk"
                    )));
                }
                ChunkBody::Preflate(take_bytes(r, total as u64)?)
            }
            CHUNK_RESTART => {
                let (align, lead) = take_align(r, i)?;
                ChunkBody::Restart {
                    corrections: take_bytes(r, total as u64)?,
                    align,
                    lead,
                }
            }
            CHUNK_RAW => {
                let (align, lead) = take_align(r, i)?;
                let n = take_u32(r)?;
                // A raw block takes at least 11 bytes.
                if n == 0 || u64::from(n) * 11 > total as u64 {
                    return Err(RecipeError::Invalid(format!(
                        "chunk {i} has {n} raw blocks"
                    )));
                }
                let blocks = (0..n)
                    .map(|_| take_raw_block(r, total))
                    .collect::<Result<Vec<_>, _>>()?;
                if blocks.iter().map(RawBlock::plain_len).sum::<u64>() != plain_len {
                    return Err(RecipeError::Invalid(format!(
                        "chunk {i}'s blocks do not add up to its plain length"
                    )));
                }
                ChunkBody::Raw {
                    align,
                    lead,
                    blocks,
                }
            }
            other => {
                return Err(RecipeError::Invalid(format!(
                    "chunk {i} of type {other}; update sideload on the device"
                )))
            }
        };
        chunks.push(RecipeChunk { plain_len, body });
    }
    Ok(chunks)
}

/// Writes a raw chunk's bits: the lead bits, then each block. The bytes are the stream's from
/// the byte holding the chunk's first bit, the last one partial unless the chunk ends on a
/// byte.
fn raw_bits(
    align: u8,
    lead: u8,
    blocks: &[RawBlock],
    text: &[u8],
) -> Result<BitWriter, RecipeError> {
    let mut w = BitWriter::default();
    w.put(u32::from(lead), u32::from(align));
    let mut at = 0usize;
    for block in blocks {
        let len = block.plain_len() as usize;
        let block_text = text
            .get(at..at + len)
            .ok_or_else(|| RecipeError::Invalid("raw blocks past the chunk's text".into()))?;
        at += len;
        match block {
            RawBlock::Verbatim { bits, bytes, .. } => w.append(bytes, *bits),
            RawBlock::Reencoded {
                header_bits,
                header,
                matches,
                ..
            } => encode_block(&mut w, header, *header_bits, block_text, matches)
                .map_err(|e| RecipeError::Invalid(format!("a re-encoded block: {e}")))?,
        }
    }
    Ok(w)
}

/// The synthetic start of a restarted run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Prefix {
    /// The prefix's deflate bytes; the last one partial unless `bits` is a multiple of 8.
    bytes: Vec<u8>,
    /// Its length in bits: `bits % 8` is the run's alignment.
    bits: u64,
    /// The plain text it decodes to (the window).
    text_len: usize,
}

/// The deflate blocks a run that starts at bit `align` of a byte, after the plain text whose
/// last 32 KiB (or all, if less) is `window`, is prefixed with: a stored block holding the
/// window, then an empty dynamic block (non-final both) whose code length code count (HCLEN)
/// makes the prefix `align` bits past a byte boundary. The empty block codes literals 0-14 and
/// end-of-block with 4 bits each, distance codes 0-15 with 4 bits each: code length codes 4 and
/// 18 with one bit each, so 69 + 3 × HCLEN bits, and the eight HCLEN from 12 to 19 reach every
/// alignment. Part of the recipe format: analyser and device must make the same bytes.
pub(super) fn run_prefix(window: &[u8], align: u8) -> Prefix {
    let window = &window[window.len().saturating_sub(WINDOW)..];
    let mut w = BitWriter::default();
    // Stored block: BFINAL 0, BTYPE 00, padding to the byte, LEN, NLEN, the bytes.
    w.put(0, 3);
    w.put(0, 5);
    w.put(window.len() as u32, 16);
    w.put(!(window.len() as u32) & 0xffff, 16);
    for &b in window {
        w.put(u32::from(b), 8);
    }
    // Dynamic block: BFINAL 0, BTYPE 10.
    let hclen = (12..=19u32)
        .find(|h| (69 + 3 * h) % 8 == u32::from(align))
        .expect("HCLEN 12-19 reach every alignment");
    w.put(0b100, 3);
    w.put(0, 5); // HLIT: 257 literal/length codes
    w.put(15, 5); // HDIST: 16 distance codes
    w.put(hclen - 4, 4);
    // Code length code lengths in RFC 1951's order (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4,
    // ...): 18 (third) and 4 (twelfth) get one bit, the others none.
    for i in 0..hclen {
        w.put(u32::from(i == 2 || i == 11), 3);
    }
    // Canonical codes: length code 4 is 0, 18 is 1.
    let four = |w: &mut BitWriter| w.put(0, 1);
    let zeros = |w: &mut BitWriter, n: u32| {
        w.put(1, 1);
        w.put(n - 11, 7);
    };
    (0..15).for_each(|_| four(&mut w)); // literals 0-14
    zeros(&mut w, 138); // literals 15-152
    zeros(&mut w, 103); // literals 153-255
    four(&mut w); // end of block
    (0..16).for_each(|_| four(&mut w)); // distance codes 0-15
                                        // End of block: literals 0-14 take codes 0000-1110, so it is 1111.
    w.put(0b1111, 4);
    let bits = w.bits();
    debug_assert_eq!(bits % 8, u64::from(align));
    Prefix {
        bytes: w.finish(),
        bits,
        text_len: window.len(),
    }
}

/// The blob's deflate bytes, read as the scan needs them.
struct Input<R> {
    blob: R,
    /// Stream bytes from byte `base` on.
    buf: Vec<u8>,
    base: u64,
    at_end: bool,
}

impl<R: Read> Input<R> {
    /// Reads `ANALYSE_STEP` more bytes (fewer at the end); false when there were none.
    fn more(&mut self) -> io::Result<bool> {
        let want = self.buf.len() + ANALYSE_STEP;
        if !fill(&mut self.blob, &mut self.buf, want)? {
            self.at_end = true;
        }
        Ok(!self.at_end || self.buf.len() < want)
    }

    /// Forgets the bytes before stream byte `byte`.
    fn drop_before(&mut self, byte: u64) {
        let n = (byte - self.base) as usize;
        // In steps, so the buffer is not shifted for every chunk.
        if n >= ANALYSE_STEP {
            self.buf.drain(..n);
            self.base = byte;
        }
    }

    /// Stream bytes `[from, to)`.
    fn bytes(&self, from: u64, to: u64) -> &[u8] {
        &self.buf[(from - self.base) as usize..(to - self.base) as usize]
    }
}

/// Blocks scanned ahead of preflate, with their plain text.
#[derive(Default)]
struct Scan {
    /// The plain text before `blocks` (its last 32 KiB at least, or all of it), then theirs.
    text: Vec<u8>,
    /// Where `blocks`' text starts in `text`.
    text_at: usize,
    /// Scanned blocks not yet in a chunk; bit positions in the stream.
    blocks: VecDeque<ScannedBlock>,
    /// Where the next block to scan starts.
    next: u64,
    /// The final block is scanned.
    done: bool,
}

impl Scan {
    /// Scans ahead of the first waiting block until a block ends more than a step
    /// (`ANALYSE_STEP` compressed bytes) past its start, `CHUNK_PLAIN_LIMIT` bytes of plain
    /// text wait, or the final block is scanned.
    fn fill<R: Read>(&mut self, input: &mut Input<R>) -> Result<(), RecipeError> {
        let step_end = |s: &Scan| match s.blocks.front() {
            Some(first) => s.next >= first.start + ANALYSE_STEP as u64 * 8,
            None => false,
        };
        while !self.done && self.text.len() - self.text_at <= CHUNK_PLAIN_LIMIT && !step_end(self) {
            let from = self.next - input.base * 8;
            match scan_block(&input.buf, from, &mut self.text, CHUNK_PLAIN_LIMIT) {
                Ok(Some(b)) => {
                    let block = ScannedBlock {
                        start: self.next,
                        end: b.end + input.base * 8,
                        header_end: b.header_end + input.base * 8,
                        ..b
                    };
                    self.next = block.end;
                    self.done = block.last;
                    self.blocks.push_back(block);
                }
                Ok(None) => {
                    if input.at_end {
                        return Err(RecipeError::NotRecreatable(
                            "the deflate stream is truncated".into(),
                        ));
                    }
                    if input.buf.len() as u64 - from / 8 > MAX_PENDING as u64 {
                        return Err(RecipeError::NotRecreatable(
                            "a deflate block spans more than 64 MiB".into(),
                        ));
                    }
                    input.more()?;
                }
                Err(e) => return Err(RecipeError::NotRecreatable(format!("deflate stream: {e}"))),
            }
        }
        Ok(())
    }

    /// The plain text before the first waiting block (at most its last 32 KiB).
    fn window(&self) -> &[u8] {
        &self.text[self.text_at.saturating_sub(WINDOW)..self.text_at]
    }

    /// The first `n` waiting blocks' plain text.
    fn text_of(&self, n: usize) -> &[u8] {
        let len: usize = self.blocks.iter().take(n).map(|b| b.plain_len).sum();
        &self.text[self.text_at..self.text_at + len]
    }

    /// Takes the first `n` waiting blocks; hashes their text.
    fn pop(&mut self, n: usize, hasher: &mut PlainSums) -> u64 {
        let text = self.text_of(n);
        hasher.update(text);
        let len = text.len();
        self.blocks.drain(..n);
        self.text_at += len;
        if self.text_at > 2 * WINDOW + (1 << 20) {
            self.text.drain(..self.text_at - WINDOW);
            self.text_at = WINDOW;
        }
        len as u64
    }
}

/// Keeps preflate's debugging prints off stdout while it analyses. preflate-rs 0.7.6 prints
/// what its hash chain holds (`println!` in `assert_dictionary_valid`, src/hash_chain.rs:263)
/// each time it cannot find a match the stream made: the error this analyser provokes on
/// purpose on streams preflate cannot model (and then halves the run). stdout is the report
/// of `sideload build --json`, and a few lines of preflate's made it unparsable. While a
/// guard lives the process's stdout (fd 1) is /dev/null; the last guard dropped puts it back.
/// Nothing in sideload writes stdout while it analyses a blob (reports come after the build).
/// By hand: no crate silences a dependency's prints; rustix does the dup and dup2.
struct QuietStdout {
    /// Whether this guard counted itself in (stdout could be saved and silenced).
    counted: bool,
}

/// Guards alive, and the real stdout while any is.
static QUIET_STDOUT: std::sync::Mutex<(usize, Option<std::os::fd::OwnedFd>)> =
    std::sync::Mutex::new((0, None));

impl QuietStdout {
    fn new() -> QuietStdout {
        let mut quiet = QUIET_STDOUT.lock().unwrap_or_else(|e| e.into_inner());
        if quiet.0 == 0 {
            let _ = io::stdout().flush();
            let saved = rustix::io::dup(io::stdout());
            let null = std::fs::OpenOptions::new().write(true).open("/dev/null");
            match (saved, null) {
                (Ok(saved), Ok(null)) if rustix::stdio::dup2_stdout(&null).is_ok() => {
                    quiet.1 = Some(saved);
                }
                // Cannot silence: preflate may then print, which costs a report, not a blob.
                _ => return QuietStdout { counted: false },
            }
        }
        quiet.0 += 1;
        QuietStdout { counted: true }
    }
}

impl Drop for QuietStdout {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        let mut quiet = QUIET_STDOUT.lock().unwrap_or_else(|e| e.into_inner());
        quiet.0 -= 1;
        if quiet.0 == 0 {
            let _ = io::stdout().flush();
            if let Some(saved) = quiet.1.take() {
                let _ = rustix::stdio::dup2_stdout(&saved);
            }
        }
    }
}

/// A live preflate processor and where its run started.
struct Run {
    processor: PreflateStreamProcessor,
    /// The prefix of a restarted run, until its first chunk is made.
    prefix: Option<Prefix>,
    /// Whether the run restarted (its first chunk is a restart chunk).
    restarted: bool,
    /// Chunks made.
    chunks: usize,
}

/// What one call to preflate made.
struct Made {
    corrections: Vec<u8>,
    /// Blocks it covered.
    blocks: usize,
}

impl Run {
    fn new(prefix: Option<Prefix>) -> Run {
        let config = PreflateConfig {
            plain_text_limit: CHUNK_PLAIN_LIMIT,
            verify_compression: true,
            ..PreflateConfig::default()
        };
        Run {
            processor: PreflateStreamProcessor::new(&config),
            restarted: prefix.is_some(),
            prefix,
            chunks: 0,
        }
    }

    /// Gives preflate the first `n` waiting blocks (and, on a restarted run's first call, its
    /// prefix); `Err` (the run is then dead) when preflate fails or covers something else.
    fn feed<R: Read>(&mut self, input: &Input<R>, scan: &Scan, n: usize) -> Result<Made, String> {
        let start = scan.blocks[0].start;
        let end = scan.blocks[n - 1].end;
        let mut data = Vec::new();
        let mut first_real = start / 8;
        if let Some(prefix) = &self.prefix {
            data.extend_from_slice(&prefix.bytes);
            if prefix.bits % 8 != 0 {
                // The prefix's last byte holds the real stream's first bits above its own.
                let mask = (1u8 << (prefix.bits % 8)) - 1;
                let last = data.last_mut().expect("a prefix has bytes");
                *last = (*last & mask) | (input.bytes(start / 8, start / 8 + 1)[0] & !mask);
                first_real += 1;
            }
        }
        data.extend_from_slice(input.bytes(first_real, end.div_ceil(8)));
        if !end.is_multiple_of(8) {
            // Hide the next block's first bits: preflate must stop at `end`, and sees a stored
            // block header there that it cannot read to its end.
            *data.last_mut().expect("not empty") &= (1u8 << (end % 8)) - 1;
        }
        let processor = &mut self.processor;
        let quiet = QuietStdout::new();
        let result = catch_unwind(AssertUnwindSafe(|| processor.decompress(&data)));
        drop(quiet);
        let result = result
            .map_err(|_| "preflate panicked".to_string())?
            .map_err(|e: PreflateError| format!("{:?}: {}", e.exit_code(), e.message()))?;
        let prefix_blocks = if self.prefix.is_some() { 2 } else { 0 };
        let blocks = result.blocks.len().saturating_sub(prefix_blocks);
        if blocks == 0 || blocks > n {
            return Err(format!(
                "preflate covered {} of {n} blocks",
                result.blocks.len()
            ));
        }
        // Where preflate stopped, in the real stream; it must be after the block it says.
        let consumed = match &self.prefix {
            Some(p) => (start / 8 + result.compressed_size as u64).checked_sub(p.bits / 8),
            None => Some(start / 8 + result.compressed_size as u64),
        };
        // (The final block's padding is preflate's too.)
        let last = scan.blocks[blocks - 1];
        let expected = match last.last {
            true => last.end.div_ceil(8),
            false => last.end / 8,
        };
        if consumed != Some(expected) {
            return Err("preflate stopped off a block boundary".into());
        }
        let text = self.processor.plain_text().text();
        let skip = self.prefix.as_ref().map_or(0, |p| p.text_len);
        if text.get(skip..) != Some(scan.text_of(blocks)) {
            return Err("preflate decoded other text".into());
        }
        self.processor.shrink_to_dictionary();
        self.prefix = None;
        self.chunks += 1;
        Ok(Made {
            corrections: result.corrections,
            blocks,
        })
    }
}

/// How many waiting blocks go into a raw chunk, the first being one preflate refuses: it and
/// the refused blocks after it, with short stretches of good blocks between them.
fn raw_extent(blocks: &VecDeque<ScannedBlock>) -> usize {
    let mut n = 1;
    let mut plain = blocks[0].plain_len;
    while n < blocks.len() {
        let next_refused = blocks.iter().skip(n).position(|b| b.refusal.is_some());
        let take = match next_refused {
            Some(0) => 1,
            Some(k) if blocks[n + k].start - blocks[n].start < MIN_RUN_BYTES * 8 => k + 1,
            _ => break,
        };
        let more: usize = blocks.iter().skip(n).take(take).map(|b| b.plain_len).sum();
        if plain + more > CHUNK_PLAIN_LIMIT {
            break;
        }
        plain += more;
        n += take;
    }
    n
}

/// Streams a gzip blob once and returns the preflate recipe that recreates it from its plain
/// text, checked (preflate recompresses every chunk from the recipe and compares) as it goes.
/// Blocks preflate cannot take are kept verbatim (module doc). `NotRecreatable` when the blob
/// is not one gzip member holding a valid deflate stream, or preflate models too little of it.
pub(super) fn analyse(blob: impl Read) -> Result<Analysis, RecipeError> {
    let mut input = Input {
        blob,
        buf: Vec::with_capacity(ANALYSE_STEP),
        base: 0,
        at_end: false,
    };
    // What is read past the header is the stream's first bytes.
    let header = read_header(&mut input.blob, &mut input.buf)?;
    let mut a = Analyser {
        input,
        scan: Scan::default(),
        hasher: PlainSums::new(),
        plain_len: 0,
        chunks: Vec::new(),
        run: None,
        limit: None,
        unmodelled: 0,
        last_end: 0,
    };
    loop {
        a.scan.fill(&mut a.input)?;
        let Some(first) = a.scan.blocks.front().copied() else {
            break;
        };
        if first.refusal.is_none() {
            if !a.preflate_chunk(first)? {
                // Narrowing a failure down: try again with fewer blocks.
                continue;
            }
        } else {
            a.run = None;
            let n = raw_extent(&a.scan.blocks);
            a.raw_chunk(n)?;
        }
        a.input.drop_before(a.last_end / 8);
    }
    debug_assert!(a.scan.done, "the scan stops only at the final block");
    a.finish(header)
}

/// [`analyse`]'s state between chunks.
struct Analyser<R> {
    input: Input<R>,
    scan: Scan,
    hasher: PlainSums,
    /// Plain text in `chunks`.
    plain_len: u64,
    chunks: Vec<RecipeChunk>,
    /// The live preflate run, if any.
    run: Option<Run>,
    /// Blocks the next call may cover, while a failure is being narrowed down.
    limit: Option<usize>,
    /// Blocks in a row preflate failed on alone, kept verbatim.
    unmodelled: u32,
    /// Where the last chunk ends (a bit position in the stream).
    last_end: u64,
}

impl<R: Read> Analyser<R> {
    /// Gives preflate the waiting blocks from `first` on (one that preflate can parse), up to
    /// a step of compressed bytes and the narrowing `limit`, and makes what it covered a chunk.
    /// When preflate fails, the run is dropped and the failure narrowed down (halving the
    /// blocks, `Ok(false)`: nothing was made) until a single block fails, which is then kept
    /// verbatim, unless too many did in a row. `Ok(true)`: a chunk was made.
    fn preflate_chunk(&mut self, first: ScannedBlock) -> Result<bool, RecipeError> {
        // As before verbatim chunks, preflate gets a step of compressed bytes at a time.
        let step_end = first.start / 8 + ANALYSE_STEP as u64;
        let good = self
            .scan
            .blocks
            .iter()
            .take_while(|b| b.refusal.is_none() && b.end.div_ceil(8) <= step_end)
            .count()
            .max(1);
        let n = self.limit.map_or(good, |l| l.min(good));
        let scan = &self.scan;
        let live = self.run.get_or_insert_with(|| match first.start {
            0 => Run::new(None),
            at => Run::new(Some(run_prefix(scan.window(), (at % 8) as u8))),
        });
        match live.feed(&self.input, &self.scan, n) {
            Ok(made) => {
                let restart = live.restarted && live.chunks == 1;
                self.push_preflate_chunk(first, made, restart);
                self.unmodelled = 0;
                self.limit = self.limit.map(|l| l * 2).filter(|&l| l < 1 << 16);
            }
            Err(why) if n > 1 => {
                tracing::debug!(blocks = n, why, "preflate failed; narrowing down");
                self.run = None;
                self.limit = Some(n / 2);
                return Ok(false);
            }
            Err(why) => {
                self.unmodelled += 1;
                if self.unmodelled > MAX_UNMODELLED {
                    return Err(RecipeError::NotRecreatable(format!("preflate: {why}")));
                }
                tracing::debug!(why, "preflate failed on one block; kept verbatim");
                self.run = None;
                self.limit = Some(1);
                self.raw_chunk(1)?;
            }
        }
        Ok(true)
    }

    /// Makes the blocks preflate covered (from `first` on) a chunk of its corrections: a
    /// restart chunk (with the first block's bit alignment and the bits before it in its
    /// byte) when it is a restarted run's first.
    fn push_preflate_chunk(&mut self, first: ScannedBlock, made: Made, restart: bool) {
        let body = if restart {
            let align = (first.start % 8) as u8;
            let byte = self.input.bytes(first.start / 8, first.start / 8 + 1)[0];
            ChunkBody::Restart {
                corrections: made.corrections,
                align,
                lead: byte & ((1u16 << align) - 1) as u8,
            }
        } else {
            ChunkBody::Preflate(made.corrections)
        };
        self.last_end = self.scan.blocks[made.blocks - 1].end;
        let len = self.scan.pop(made.blocks, &mut self.hasher);
        self.plain_len += len;
        self.chunks.push(RecipeChunk {
            plain_len: len,
            body,
        });
    }

    /// Makes the first `n` waiting blocks a raw chunk ([`raw`]).
    fn raw_chunk(&mut self, n: usize) -> Result<(), RecipeError> {
        self.last_end = raw(
            &mut self.scan,
            &self.input,
            n,
            &mut self.chunks,
            &mut self.hasher,
            &mut self.plain_len,
        )?;
        Ok(())
    }

    /// After the final block: reads the gzip trailer (what follows the stream's last byte)
    /// and completes the recipe.
    fn finish(mut self, header: Vec<u8>) -> Result<Analysis, RecipeError> {
        let stream_end = self.last_end.div_ceil(8);
        let rest = self
            .input
            .bytes(stream_end, self.input.base + self.input.buf.len() as u64)
            .to_vec();
        let trailer = read_trailer(&mut self.input.blob, rest)?;
        let (plain_digest, trailer) = self.hasher.finish(trailer, self.plain_len);
        Ok(Analysis {
            recipe: GzipRecipe {
                header,
                deflate: DeflateRecipe::Preflate(self.chunks),
                trailer,
            },
            plain_digest,
            plain_len: self.plain_len,
        })
    }
}

/// `bits` bits of `bytes` from bit `from` on, as bytes (the last one zero-padded).
fn bit_slice(bytes: &[u8], from: u64, bits: u64) -> Vec<u8> {
    let mut w = BitWriter::default();
    let first = (from / 8) as usize;
    let skip = (from % 8) as u32;
    if skip == 0 {
        w.append(&bytes[first..], bits);
    } else {
        let head = (8 - skip).min(bits as u32);
        w.put(u32::from(bytes[first] >> skip) & ((1 << head) - 1), head);
        w.append(&bytes[first + 1..], bits - u64::from(head));
    }
    w.finish()
}

/// Makes the first `n` waiting blocks a raw chunk, each re-encoded where that is smaller
/// than its bits, and checks that the chunk writes them; returns where they end.
fn raw<R: Read>(
    scan: &mut Scan,
    input: &Input<R>,
    n: usize,
    chunks: &mut Vec<RecipeChunk>,
    hasher: &mut PlainSums,
    plain_len: &mut u64,
) -> Result<u64, RecipeError> {
    let first = scan.blocks[0];
    let base = input.base * 8;
    let align = (first.start % 8) as u8;
    let lead = input.bytes(first.start / 8, first.start / 8 + 1)[0] & ((1u16 << align) - 1) as u8;
    let mut blocks = Vec::with_capacity(n);
    let (mut text_at, mut again, mut matches) = (scan.text_at, Vec::new(), Vec::new());
    for b in scan.blocks.iter().take(n) {
        // A final block with its padding.
        let end = if b.last { b.end.div_ceil(8) * 8 } else { b.end };
        let bits = end - b.start;
        let mut block = None;
        if b.reencodable {
            again.clear();
            again.extend_from_slice(&scan.text[text_at.saturating_sub(WINDOW)..text_at]);
            let rescanned = scan_block_matches(
                &input.buf,
                b.start - base,
                &mut again,
                CHUNK_PLAIN_LIMIT,
                Some(&mut matches),
            );
            let header_bits = b.header_end - b.start;
            let cost = header_bits.div_ceil(8) + 8 + matches_len(&matches);
            if matches!(rescanned, Ok(Some(r)) if r.end + base == b.end) && cost < bits / 8 {
                block = Some(RawBlock::Reencoded {
                    plain_len: b.plain_len as u64,
                    header_bits,
                    header: bit_slice(&input.buf, b.start - base, header_bits),
                    matches: matches.clone(),
                });
            }
        }
        blocks.push(block.unwrap_or_else(|| RawBlock::Verbatim {
            plain_len: b.plain_len as u64,
            bits,
            bytes: bit_slice(&input.buf, b.start - base, bits),
        }));
        text_at += b.plain_len;
    }
    let last = scan.blocks[n - 1];
    let end = if last.last {
        last.end.div_ceil(8) * 8
    } else {
        last.end
    };
    let from = first.start / 8 * 8;
    let written = raw_bits(align, lead, &blocks, scan.text_of(n))?;
    // A re-encoded final block leaves its (zero) padding to the device's last byte.
    let bits = match last.last {
        true => written.bits().div_ceil(8) * 8,
        false => written.bits(),
    };
    if bits != end - from || written.finish() != bit_slice(&input.buf, from - base, end - from) {
        return Err(RecipeError::NotRecreatable(
            "a raw chunk does not write its blocks back (a bug)".into(),
        ));
    }
    let len = scan.pop(n, hasher);
    *plain_len += len;
    chunks.push(RecipeChunk {
        plain_len: len,
        body: ChunkBody::Raw {
            align,
            lead,
            blocks,
        },
    });
    Ok(last.end)
}

/// A preflate run on the device.
struct DeviceRun {
    recreator: RecreateStreamProcessor,
    /// A restarted run's prefix and lead bits, until its output passed them.
    prefix: Option<(Prefix, u8)>,
    /// Bytes the recreator wrote so far.
    written: u64,
}

impl DeviceRun {
    /// Recompresses one chunk; writes its real bytes.
    fn chunk(
        &mut self,
        i: usize,
        text: &[u8],
        corrections: &[u8],
        out: &mut impl Write,
    ) -> Result<(), RecipeError> {
        // preflate trusts its corrections and panics on some damaged ones (an index out of
        // bounds): a recipe that does not fit its content is an invalid recipe, not a crash.
        let recreator = &mut self.recreator;
        let recompressed = catch_unwind(AssertUnwindSafe(|| {
            recreator.recompress(&mut Cursor::new(text), corrections)
        }))
        .map_err(|_| RecipeError::Invalid(format!("chunk {i}: the corrections do not fit")))?;
        let (mut deflate, _) = recompressed.map_err(|e| {
            RecipeError::Invalid(format!(
                "chunk {i}: preflate: {:?}: {}",
                e.exit_code(),
                e.message()
            ))
        })?;
        // `deflate` starts at byte `at` of the run's output.
        let at = self.written;
        self.written += deflate.len() as u64;
        let Some((prefix, lead)) = &self.prefix else {
            out.write_all(&deflate)?;
            return Ok(());
        };
        // The prefix's whole bytes are the device's own, not the stream's: check and drop them.
        let whole = prefix.bits / 8;
        let ours = whole.saturating_sub(at).min(deflate.len() as u64) as usize;
        let expected = prefix.bytes.get(at as usize..at as usize + ours);
        if expected != Some(&deflate[..ours]) {
            return Err(RecipeError::Invalid(format!(
                "chunk {i}: preflate did not write the run's prefix"
            )));
        }
        let mut real = deflate.split_off(ours);
        if prefix.bits % 8 != 0 && at <= whole && whole < self.written {
            // The byte the prefix shares with the first real block: its low bits are the end
            // of the block before, which the restart chunk carries.
            let mask = (1u8 << (prefix.bits % 8)) - 1;
            if real[0] & mask != prefix.bytes[whole as usize] & mask {
                return Err(RecipeError::Invalid(format!(
                    "chunk {i}: preflate did not write the run's prefix"
                )));
            }
            real[0] = (real[0] & !mask) | lead;
        }
        if self.written > whole {
            self.prefix = None;
        }
        out.write_all(&real)?;
        Ok(())
    }
}

/// preflate's recompressor, chunk by chunk; verbatim chunks as they are.
pub(super) fn recreate(
    chunks: &[RecipeChunk],
    plain: &mut impl Read,
    out: &mut impl Write,
) -> Result<(), RecipeError> {
    let mut run: Option<DeviceRun> = None;
    // The last 32 KiB of plain text before the chunk, for a restart's prefix.
    let mut window: Vec<u8> = Vec::new();
    let mut text = Vec::new();
    let covered: u64 = chunks.iter().map(|c| c.plain_len).sum();
    for (i, chunk) in chunks.iter().enumerate() {
        if chunk.plain_len > MAX_CHUNK_PLAIN {
            return Err(RecipeError::Invalid(format!(
                "chunk {i} has {} plain bytes (at most {MAX_CHUNK_PLAIN})",
                chunk.plain_len
            )));
        }
        text.clear();
        let restart = match &chunk.body {
            ChunkBody::Restart { align, .. } => Some(run_prefix(&window, *align)),
            _ => None,
        };
        if let Some(p) = &restart {
            // preflate recompresses the prefix's text before the chunk's.
            text.extend_from_slice(&window[window.len() - p.text_len..]);
        }
        let prefix_len = text.len();
        plain
            .by_ref()
            .take(chunk.plain_len)
            .read_to_end(&mut text)?;
        if (text.len() - prefix_len) as u64 != chunk.plain_len {
            return Err(RecipeError::Invalid(format!(
                "the layer ends inside chunk {i}: the recipe covers {covered} bytes"
            )));
        }
        match &chunk.body {
            ChunkBody::Raw {
                align,
                lead,
                blocks,
            } => {
                run = None;
                let (bytes, partial, bits) = raw_bits(*align, *lead, blocks, &text)?.into_parts();
                out.write_all(&bytes)?;
                // The stream's last byte, padded; any other partial byte the next chunk
                // completes (its lead bits).
                if i + 1 == chunks.len() && bits > 0 {
                    out.write_all(&[partial])?;
                }
            }
            ChunkBody::Preflate(corrections) => {
                if i == 0 {
                    run = Some(DeviceRun {
                        recreator: RecreateStreamProcessor::new(),
                        prefix: None,
                        written: 0,
                    });
                }
                let Some(run) = run.as_mut() else {
                    return Err(RecipeError::Invalid(format!(
                        "chunk {i} continues no preflate run"
                    )));
                };
                run.chunk(i, &text, corrections, out)?;
            }
            ChunkBody::Restart {
                corrections, lead, ..
            } => {
                let prefix = restart.expect("made above");
                run.insert(DeviceRun {
                    recreator: RecreateStreamProcessor::new(),
                    prefix: Some((prefix, *lead)),
                    written: 0,
                })
                .chunk(i, &text, corrections, out)?;
            }
        }
        let new = &text[prefix_len..];
        if new.len() >= WINDOW {
            window.clear();
            window.extend_from_slice(&new[new.len() - WINDOW..]);
        } else {
            window.extend_from_slice(new);
            let excess = window.len().saturating_sub(WINDOW);
            window.drain(..excess);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gzip_recipe::compact::{CODE_PREFLATE, CODE_PREFLATE_RAW};
    use crate::gzip_recipe::tests::{round_trip, sample};
    use crate::gzip_recipe::{Trailer, RECIPE_COMPACT};

    /// zlib's blocks for `text` (level 6, no stored block), `last` or not: the stream's bits
    /// up to its final block's end, with that block's BFINAL bit cleared unless `last`.
    fn zlib_blocks(text: &[u8], last: bool) -> (Vec<u8>, u64) {
        let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(6));
        enc.write_all(text).unwrap();
        let mut stream = enc.finish().unwrap();
        let (mut at, mut scanned) = (0, Vec::new());
        let final_block = loop {
            let b = scan_block(&stream, at, &mut scanned, usize::MAX / 2)
                .unwrap()
                .unwrap();
            assert!(b.refusal.is_none());
            if b.last {
                break b;
            }
            at = b.end;
        };
        if !last {
            stream[(final_block.start / 8) as usize] &= !(1 << (final_block.start % 8));
        }
        (stream, final_block.end)
    }

    /// Writes `code` (`len` bits, most significant first, as Huffman codes go).
    fn code(w: &mut BitWriter, code: u32, len: u32) {
        w.put(code.reverse_bits() >> (32 - len), len);
    }

    /// A dynamic block as Go writes one with at most one distance code in use: a distance
    /// code of a single one-bit code (distance 1), which preflate refuses. `text` goes as
    /// literals, then `matches` matches of length 3 at distance 1 (the text must end with
    /// three equal bytes less 1 for them to copy it). Literals 0-253 get 8 bits; 254, 255,
    /// end-of-block and length code 257 (length 3) get 9, so 0xff bytes shift the block's end.
    fn go_block(w: &mut BitWriter, text: &[u8], matches: usize, last: bool) {
        w.put(u32::from(last), 1);
        w.put(2, 2);
        w.put(1, 5); // HLIT: 258
        w.put(0, 5); // HDIST: 1
        w.put(18 - 4, 4); // HCLEN: through code length code 1
                          // Code length codes 8 (one bit), 9 and 1 (two bits each): 8 = 0, 1 = 10, 9 = 11.
        const ORDER: [usize; 18] = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1];
        for sym in ORDER {
            let len = match sym {
                8 => 1,
                9 | 1 => 2,
                _ => 0,
            };
            w.put(len, 3);
        }
        (0..254).for_each(|_| code(w, 0, 1)); // literals 0-253: 8
        (0..4).for_each(|_| code(w, 0b11, 2)); // 254, 255, end-of-block, 257: 9
        code(w, 0b10, 2); // distance code 0: 1
                          // Literal codes: 0-253 are 0..=253 in 8 bits, 254 on are 508.. in 9 bits.
        for &b in text {
            match b {
                0..=253 => code(w, u32::from(b), 8),
                _ => code(w, 508 + u32::from(b - 254), 9),
            }
        }
        for _ in 0..matches {
            code(w, 511, 9); // length 3
            code(w, 0, 1); // distance 1
        }
        code(w, 510, 9);
    }

    /// A fixed block with 'a' and then length 258 at distance 1 coded as code 284 with all
    /// extra bits set, which preflate refuses ("Non-standard 258 length code").
    fn long_258_block(w: &mut BitWriter, last: bool) {
        w.put(u32::from(last), 1);
        w.put(1, 2);
        code(w, 0x30 + u32::from(b'a'), 8);
        code(w, 0xc0 + (284 - 280), 8);
        w.put(31, 5);
        code(w, 0, 5);
        code(w, 0, 7); // end of block
    }

    /// A gzip member around a raw deflate stream.
    fn gzip_member(stream: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut gz = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        gz.extend_from_slice(stream);
        let mut crc = flate2::Crc::new();
        crc.update(plain);
        gz.extend_from_slice(&crc.sum().to_le_bytes());
        gz.extend_from_slice(&(plain.len() as u32).to_le_bytes());
        gz
    }

    /// What a recipe wrote without preflate.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct Raw {
        chunks: usize,
        reencoded: usize,
        verbatim: usize,
        /// The raw blocks' bytes in the recipe.
        bytes: u64,
    }

    fn raw_of(recipe: &GzipRecipe) -> Raw {
        let DeflateRecipe::Preflate(chunks) = &recipe.deflate else {
            panic!("{recipe:?}")
        };
        let mut raw = Raw::default();
        for c in chunks {
            if let ChunkBody::Raw { blocks, .. } = &c.body {
                raw.chunks += 1;
                for b in blocks {
                    raw.bytes += raw_block_len(b);
                    match b {
                        RawBlock::Reencoded { .. } => raw.reencoded += 1,
                        RawBlock::Verbatim { .. } => raw.verbatim += 1,
                    }
                }
            }
        }
        raw
    }

    /// Pieces of a test stream.
    enum Piece<'a> {
        /// zlib's blocks.
        Z(&'a [u8]),
        /// A Go-style block of literals.
        G(&'a [u8]),
        /// A Go-style block of these literals and this many 3-byte matches.
        M(&'a [u8], usize),
        /// A fixed block of 259 'a' with the long 258.
        L,
    }

    fn stream(pieces: &[Piece]) -> (Vec<u8>, Vec<u8>) {
        let mut w = BitWriter::default();
        let mut plain = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let last = i + 1 == pieces.len();
            match piece {
                Piece::Z(text) => {
                    let (bytes, bits) = zlib_blocks(text, last);
                    w.append(&bytes, bits);
                    plain.extend_from_slice(text);
                }
                Piece::G(text) => {
                    go_block(&mut w, text, 0, last);
                    plain.extend_from_slice(text);
                }
                Piece::M(text, n) => {
                    go_block(&mut w, text, *n, last);
                    plain.extend_from_slice(text);
                    plain.extend(std::iter::repeat_n(text[text.len() - 1], 3 * n));
                }
                Piece::L => {
                    long_258_block(&mut w, last);
                    plain.extend([b'a'; 259]);
                }
            }
        }
        (gzip_member(&w.finish(), &plain), plain)
    }

    /// Literal text for a Go-style block (bytes below 254).
    fn literals(text: &[u8]) -> Vec<u8> {
        text.iter().map(|&b| b % 254).collect()
    }

    #[test]
    fn a_block_preflate_refuses_is_re_encoded_at_every_bit_alignment() {
        // Before raw chunks, such a stream had no recipe ("Invalid Huffman code lengths"): the
        // blob went whole.
        let text = sample(900_000);
        let refused = literals(&text[300_000..320_000]);
        let mut aligns = std::collections::BTreeSet::new();
        for shift in 0..8 {
            // Each 0xff adds one bit to the refused block: the blocks after it start at every
            // bit of a byte.
            let mut go = refused.clone();
            go.extend(std::iter::repeat_n(0xff, shift));
            let (gz, plain) = stream(&[
                Piece::Z(&text[..300_000]),
                Piece::G(&go),
                Piece::Z(&text[320_000..]),
            ]);
            let recipe = round_trip(&gz, &plain);
            assert_eq!(recipe.to_bytes()[2], CODE_PREFLATE_RAW);
            let raw = raw_of(&recipe);
            assert_eq!(
                (raw.chunks, raw.reencoded, raw.verbatim),
                (1, 1, 0),
                "shift {shift}"
            );
            // The header (about 90 bytes) and a few fields, for 20 KB of deflate bytes.
            assert!(raw.bytes < 120, "shift {shift}: {raw:?}");
            assert!(
                recipe.describe().contains("1 re-encoded, 0 verbatim"),
                "{}",
                recipe.describe()
            );
            let DeflateRecipe::Preflate(chunks) = &recipe.deflate else {
                unreachable!()
            };
            let restart = chunks.iter().find_map(|c| match c.body {
                ChunkBody::Restart { align, .. } => Some(align),
                _ => None,
            });
            aligns.insert(restart.expect("preflate restarts after the raw chunk"));
        }
        assert_eq!(aligns.len(), 8, "restarts at every alignment: {aligns:?}");
    }

    #[test]
    fn refused_blocks_first_last_close_together_and_verbatim() {
        let text = sample(700_000);
        let (g1, g2) = (
            literals(&text[100_000..110_000]),
            literals(&text[110_500..120_000]),
        );
        let raw = |pieces: &[Piece]| {
            let (gz, plain) = stream(pieces);
            raw_of(&round_trip(&gz, &plain))
        };
        let one = |reencoded, verbatim| (1, reencoded, verbatim);
        let summary = |r: Raw| (r.chunks, r.reencoded, r.verbatim);
        // First block refused, then preflate from a restart.
        assert_eq!(
            summary(raw(&[Piece::G(&g1), Piece::Z(&text[200_000..])])),
            one(1, 0)
        );
        // The final block refused: the raw chunk runs through the stream's end.
        assert_eq!(
            summary(raw(&[Piece::Z(&text[..100_000]), Piece::G(&g1)])),
            one(1, 0)
        );
        // Two refused blocks with a few hundred bytes between: one raw chunk, the zlib
        // blocks between verbatim (or re-encoded, whichever is smaller).
        let close = raw(&[
            Piece::Z(&text[..100_000]),
            Piece::G(&g1),
            Piece::Z(&text[110_000..110_500]),
            Piece::G(&g2),
            Piece::Z(&text[120_000..]),
        ]);
        assert_eq!((close.chunks, close.reencoded + close.verbatim), (1, 3));
        // With a long stretch between: two, and preflate restarts after each.
        let far = raw(&[
            Piece::Z(&text[..100_000]),
            Piece::G(&g1),
            Piece::Z(&text[200_000..400_000]),
            Piece::G(&g2),
            Piece::Z(&text[400_000..]),
        ]);
        assert_eq!(summary(far), (2, 2, 0));
        // Nothing but refused blocks.
        assert_eq!(summary(raw(&[Piece::G(&g1), Piece::G(&g2)])), one(2, 0));
        // A block of many matches costs less verbatim than as a match list; a fixed block
        // with the long 258 is kept verbatim.
        assert_eq!(
            summary(raw(&[
                Piece::Z(&text[..100_000]),
                Piece::M(b"x", 3000),
                Piece::Z(&text[200_000..300_000])
            ])),
            one(0, 1)
        );
        assert_eq!(
            summary(raw(&[
                Piece::Z(&text[..100_000]),
                Piece::L,
                Piece::Z(&text[200_000..300_000])
            ])),
            one(0, 1)
        );
        // A few matches are re-encoded.
        let few = raw(&[
            Piece::Z(&text[..100_000]),
            Piece::M(&g1, 5),
            Piece::Z(&text[200_000..300_000]),
        ]);
        assert_eq!(summary(few), one(1, 0));
    }

    #[test]
    fn refused_blocks_deep_in_the_stream() {
        // Past the analyser's first steps of compressed bytes (positions then count from a
        // later buffer start).
        let text = sample(12 << 20);
        let go = literals(&text[..30_000]);
        let (gz, plain) = stream(&[
            Piece::Z(&text[..9 << 20]),
            Piece::G(&go),
            Piece::Z(&text[9 << 20..]),
            Piece::M(&go, 20),
        ]);
        assert!(gz.len() > 2 * ANALYSE_STEP, "{}", gz.len());
        let raw = raw_of(&round_trip(&gz, &plain));
        assert_eq!((raw.chunks, raw.reencoded, raw.verbatim), (2, 2, 0));
        assert!(raw.bytes < 400, "{raw:?}");
    }

    #[test]
    fn the_run_prefix_is_pinned_and_parses_at_every_alignment() {
        // Part of the recipe format: a device must make the prefix the analyser made.
        let text = sample(50_000);
        let mut all = Vec::new();
        for window in [&text[..0], &text[..1000], &text[..]] {
            for align in 0..8 {
                let p = run_prefix(window, align);
                assert_eq!(p.bits % 8, u64::from(align));
                assert_eq!(p.text_len, window.len().min(WINDOW));
                // Two non-final blocks preflate can parse, decoding to the window's tail.
                let mut decoded = Vec::new();
                let a = scan_block(&p.bytes, 0, &mut decoded, 1 << 20)
                    .unwrap()
                    .unwrap();
                let b = scan_block(&p.bytes, a.end, &mut decoded, 1 << 20)
                    .unwrap()
                    .unwrap();
                assert_eq!(b.end, p.bits);
                assert!(!a.last && !b.last && a.refusal.is_none() && b.refusal.is_none());
                assert_eq!(decoded, window[window.len() - p.text_len..]);
                all.extend_from_slice(&p.bytes);
            }
        }
        assert_eq!(
            sideload_signing::Digest::of_bytes(&all).to_string(),
            "sha256:16a86a52e465b689a47000186de06593c6911c4f7db3b5a5ea7a18619500f08c"
        );
    }

    #[test]
    fn kind_6_recipes_are_checked_chunk_by_chunk() {
        let chunk = |plain_len, body| RecipeChunk { plain_len, body };
        let restart = |align, lead| {
            chunk(
                10,
                ChunkBody::Restart {
                    corrections: vec![1, 2],
                    align,
                    lead,
                },
            )
        };
        let raw = |align, lead, blocks: Vec<RawBlock>| {
            let plain = blocks.iter().map(RawBlock::plain_len).sum();
            chunk(
                plain,
                ChunkBody::Raw {
                    align,
                    lead,
                    blocks,
                },
            )
        };
        let verbatim = |bits: u64| {
            let mut bytes = vec![0x55; bits.div_ceil(8) as usize];
            *bytes.last_mut().unwrap() &= ((1u16 << ((bits - 1) % 8 + 1)) - 1) as u8;
            RawBlock::Verbatim {
                plain_len: 7,
                bits,
                bytes,
            }
        };
        let m = |literals, len, dist| BlockMatch {
            literals,
            len,
            dist,
        };
        let reencoded = |matches| RawBlock::Reencoded {
            plain_len: 300,
            header_bits: 20,
            header: vec![1, 2, 3],
            matches,
        };
        let recipe = |chunks| GzipRecipe {
            header: vec![0x1f, 0x8b],
            deflate: DeflateRecipe::Preflate(chunks),
            trailer: Trailer::Verbatim(vec![0; 8]),
        };
        let good = recipe(vec![
            chunk(10, ChunkBody::Preflate(vec![9])),
            raw(
                3,
                0b101,
                vec![
                    verbatim(16),
                    reencoded(vec![m(0, 3, 1), m(200, 258, 32768)]),
                ],
            ),
            restart(5, 0b10101),
            chunk(10, ChunkBody::Preflate(vec![7])),
            raw(0, 0, vec![verbatim(10)]),
        ]);
        let bytes = good.to_bytes();
        assert_eq!(bytes[..3], [RECIPE_COMPACT, 2, CODE_PREFLATE_RAW]);
        assert_eq!(bytes.len() as u64, good.encoded_len());
        assert_eq!(GzipRecipe::from_bytes(&bytes, 10).unwrap(), good);
        for cut in 0..bytes.len() {
            assert!(
                GzipRecipe::from_bytes(&bytes[..cut], 10).is_err(),
                "cut {cut}"
            );
        }
        let refused = |chunks| {
            let e = GzipRecipe::from_bytes(&recipe(chunks).to_bytes(), 10).unwrap_err();
            assert!(matches!(e, RecipeError::Invalid(_)), "{e:?}");
        };
        // Lead bits above the alignment, an alignment past the byte, a raw chunk without
        // blocks, a run continued after a raw chunk, a block shorter than any, bits set past
        // a block's end, a header too long, more matches than the text holds.
        refused(vec![restart(3, 0b1000)]);
        refused(vec![restart(8, 0)]);
        refused(vec![raw(1, 0, vec![verbatim(9)])]);
        refused(vec![raw(0, 0, vec![])]);
        refused(vec![
            raw(0, 0, vec![verbatim(12)]),
            chunk(0, ChunkBody::Preflate(vec![])),
        ]);
        refused(vec![raw(
            0,
            0,
            vec![RawBlock::Verbatim {
                plain_len: 1,
                bits: 12,
                bytes: vec![0, 0x10],
            }],
        )]);
        refused(vec![raw(
            0,
            0,
            vec![RawBlock::Reencoded {
                plain_len: 300,
                header_bits: MAX_HEADER_BITS + 1,
                header: vec![0; MAX_HEADER_BITS.div_ceil(8) as usize + 1],
                matches: vec![],
            }],
        )]);
        refused(vec![raw(
            0,
            0,
            vec![RawBlock::Reencoded {
                plain_len: 5,
                header_bits: 20,
                header: vec![1, 2, 3],
                matches: vec![m(0, 3, 1), m(0, 3, 1)],
            }],
        )]);
        // A chunk whose blocks do not add up to its length.
        let mut uneven = raw(0, 0, vec![verbatim(12)]);
        uneven.plain_len += 1;
        refused(vec![uneven]);
        // An unknown chunk type or block form; kind 6 without a chunk that needs it.
        // Kind, frame, code, the chunk count, then the first chunk's type.
        let first_type = 1 + 1 + 1 + 4;
        let mut unknown = bytes.clone();
        unknown[first_type] = 3;
        assert!(GzipRecipe::from_bytes(&unknown, 10).is_err());
        let first_form = first_type + 1 + 4 + 4 + 1 + 4 + 1 + 1 + 4;
        let mut unknown = bytes.clone();
        assert_eq!(unknown[first_form], BLOCK_VERBATIM);
        unknown[first_form] = 2;
        assert!(GzipRecipe::from_bytes(&unknown, 10).is_err());
        let mut plain = recipe(vec![chunk(10, ChunkBody::Preflate(vec![9]))]).to_bytes();
        assert_eq!(plain[2], CODE_PREFLATE);
        plain[2] = CODE_PREFLATE_RAW;
        assert!(GzipRecipe::from_bytes(&plain, 10).is_err());
    }

    #[test]
    fn a_raw_chunk_that_does_not_fit_its_text_is_an_invalid_recipe() {
        // A re-encoded block whose header is no dynamic block header, or whose matches run
        // past its text: refused when recreating, not a panic.
        let text = sample(200_000);
        let go = literals(&text[50_000..60_000]);
        let (gz, plain) = stream(&[
            Piece::Z(&text[..100_000]),
            Piece::M(&go, 5),
            Piece::Z(&text[100_000..]),
        ]);
        let recipe = round_trip(&gz, &plain);
        let broken = |change: &dyn Fn(&mut Vec<u8>, &mut Vec<BlockMatch>)| {
            let mut broken = recipe.clone();
            let DeflateRecipe::Preflate(chunks) = &mut broken.deflate else {
                unreachable!()
            };
            for c in chunks {
                if let ChunkBody::Raw { blocks, .. } = &mut c.body {
                    let RawBlock::Reencoded {
                        header, matches, ..
                    } = &mut blocks[0]
                    else {
                        panic!("{blocks:?}")
                    };
                    change(header, matches);
                }
            }
            crate::gzip_recipe::recreate(&broken, &mut &plain[..], &mut Vec::new())
        };
        let e = broken(&|header, _| header[0] ^= 0b110); // block type 1 or 3
        assert!(
            matches!(&e, Err(RecipeError::Invalid(m)) if m.contains("re-encoded")),
            "{e:?}"
        );
        let e = broken(&|_, matches| matches[4].literals = 1000);
        assert!(
            matches!(&e, Err(RecipeError::Invalid(m)) if m.contains("past")),
            "{e:?}"
        );
    }
}
