//! Exact gzip blobs: recreate a source's compressed layer byte for byte from its tar.
//!
//! Registries hold layers gzip-compressed by whatever tool built the image, and deflate output
//! depends on the compressor (its hash chains, lazy matching, block splitting), so compressing
//! the tar again gives other bytes and another digest. `preflate-rs` models a compressor from
//! the deflate stream itself, replays it over the plain text and records only where the real
//! stream differs from the prediction. Those corrections are the *recipe*: the encoder makes it
//! from the source blob, the payload carries it, and the device runs the same model over the
//! tar it rebuilt to get the source's exact blob back.
//!
//! The deflate stream is cut into chunks of whole deflate blocks (a few MiB of plain text each)
//! so neither side ever holds more than one chunk: `preflate-rs` carries its 32 KiB window
//! from one chunk to the next. The gzip header and everything after the deflate stream (CRC32,
//! size) are kept verbatim: a few bytes, and no guessing at what a tool wrote in them.
//!
//! The corrections are only meaningful to the `preflate-rs` version that made them (pinned
//! exactly in `Cargo.toml`); the recipe starts with a version byte, and a device refuses a
//! recipe whose version it does not know instead of producing wrong bytes.

use std::io::{self, Cursor, Read, Write};

use preflate_rs::{ExitCode, PreflateConfig, PreflateStreamProcessor, RecreateStreamProcessor};
use sideload_signing::Digest;

/// Version of the recipe format and of the correction model (`preflate-rs` 0.7).
pub const RECIPE_VERSION: u8 = 1;

/// Compressed bytes handed to the analyser at a time.
const ANALYSE_STEP: usize = 2 << 20;

/// Plain text one chunk may hold (preflate's own limit; a chunk ends at the first block
/// boundary past it). Bounds the device's memory for one chunk.
const CHUNK_PLAIN_LIMIT: usize = 16 << 20;

/// Largest plain text of one chunk a device accepts (the limit plus one deflate block's
/// overshoot).
pub const MAX_CHUNK_PLAIN: u64 = CHUNK_PLAIN_LIMIT as u64 + (1 << 20);

/// Compressed bytes a single deflate block may span before the analyser gives up on the
/// blob (real compressors write blocks of at most a few hundred KiB).
const MAX_PENDING: usize = 64 << 20;

/// Largest gzip header (with name, comment and extra field) or trailer kept verbatim.
const MAX_FRAME_BYTES: usize = 64 << 10;

/// How to recreate one gzip blob from its uncompressed content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GzipRecipe {
    /// The gzip member header, verbatim.
    pub header: Vec<u8>,
    /// The deflate stream, chunk by chunk.
    pub chunks: Vec<RecipeChunk>,
    /// Everything after the deflate stream (CRC32 and size), verbatim.
    pub trailer: Vec<u8>,
}

/// One run of whole deflate blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeChunk {
    /// Plain-text bytes these blocks decode to.
    pub plain_len: u64,
    /// preflate corrections for these blocks (the first chunk's also carry the model's
    /// parameters).
    pub corrections: Vec<u8>,
}

/// What the analyser found.
#[derive(Debug)]
pub struct Analysis {
    /// The recipe.
    pub recipe: GzipRecipe,
    /// sha256 of the plain text (the layer's diff_id when the blob is a layer).
    pub plain_digest: Digest,
    /// Plain-text length.
    pub plain_len: u64,
}

/// Why a blob cannot be recreated from a recipe, or a recipe not applied.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// The blob is not one gzip member whose compressor preflate can model; the caller falls
    /// back (stores the layer another way).
    #[error("cannot be recreated exactly: {0}")]
    NotRecreatable(String),
    /// The recipe record is malformed or does not fit the content.
    #[error("invalid recipe: {0}")]
    Invalid(String),
    /// Reading or writing failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl GzipRecipe {
    /// Plain-text bytes the recipe covers.
    pub fn plain_len(&self) -> u64 {
        self.chunks.iter().map(|c| c.plain_len).sum()
    }

    /// Length of [`GzipRecipe::to_bytes`] without building it.
    pub fn encoded_len(&self) -> u64 {
        let chunks: u64 = self
            .chunks
            .iter()
            .map(|c| 8 + c.corrections.len() as u64)
            .sum();
        1 + 4 + self.header.len() as u64 + 4 + chunks + 4 + self.trailer.len() as u64
    }

    /// The recipe as the payload carries it: version, header, chunks (plain length and
    /// corrections, each length a little-endian u32), trailer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len() as usize);
        out.push(RECIPE_VERSION);
        put_bytes(&mut out, &self.header);
        out.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        for c in &self.chunks {
            out.extend_from_slice(&(c.plain_len as u32).to_le_bytes());
            put_bytes(&mut out, &c.corrections);
        }
        put_bytes(&mut out, &self.trailer);
        out
    }

    /// Parses [`GzipRecipe::to_bytes`]; every length is checked before it sizes anything, and
    /// at most `max_chunks` chunks are accepted (see [`max_chunks`]).
    pub fn from_bytes(bytes: &[u8], max_chunks: u64) -> Result<GzipRecipe, RecipeError> {
        let mut r = Cursor::new(bytes);
        let version = take(&mut r, 1)?[0];
        if version != RECIPE_VERSION {
            return Err(RecipeError::Invalid(format!(
                "recipe version {version}, this device knows version {RECIPE_VERSION}; \
                 update sideload on the device or build the bundle with --exact never"
            )));
        }
        let header = take_bytes(&mut r, MAX_FRAME_BYTES as u64)?;
        let count = u32::from_le_bytes(take(&mut r, 4)?.try_into().expect("4 bytes"));
        // Each chunk takes at least 8 bytes: a count the rest cannot hold is a lie; and a layer
        // has only so many chunks (an empty chunk costs the decoder more than its 8 bytes).
        if u64::from(count) * 8 > bytes.len() as u64 || u64::from(count) > max_chunks {
            return Err(RecipeError::Invalid(format!(
                "{count} chunks declared in {} bytes",
                bytes.len()
            )));
        }
        let mut chunks = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let plain_len =
                u32::from_le_bytes(take(&mut r, 4)?.try_into().expect("4 bytes")) as u64;
            if plain_len > MAX_CHUNK_PLAIN {
                return Err(RecipeError::Invalid(format!(
                    "a chunk of {plain_len} plain bytes (at most {MAX_CHUNK_PLAIN})"
                )));
            }
            let corrections = take_bytes(&mut r, bytes.len() as u64)?;
            chunks.push(RecipeChunk {
                plain_len,
                corrections,
            });
        }
        let trailer = take_bytes(&mut r, MAX_FRAME_BYTES as u64)?;
        if r.position() != bytes.len() as u64 {
            return Err(RecipeError::Invalid("bytes after the trailer".into()));
        }
        Ok(GzipRecipe {
            header,
            chunks,
            trailer,
        })
    }
}

/// Most chunks a recipe for `plain_len` bytes of plain text can genuinely have: the analyser
/// feeds 2 MiB of compressed data at a time and a chunk ends only at a block boundary, so
/// chunks are large; 4 KiB per chunk on average, plus slack for the last ones, is generous.
pub fn max_chunks(plain_len: u64) -> u64 {
    plain_len / 4096 + 64
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn take<'a>(r: &mut Cursor<&'a [u8]>, n: usize) -> Result<&'a [u8], RecipeError> {
    let all: &'a [u8] = r.get_ref();
    let at = r.position() as usize;
    let end = at
        .checked_add(n)
        .filter(|&e| e <= all.len())
        .ok_or_else(|| RecipeError::Invalid("recipe ends inside a field".into()))?;
    r.set_position(end as u64);
    Ok(&all[at..end])
}

fn take_bytes(r: &mut Cursor<&[u8]>, max: u64) -> Result<Vec<u8>, RecipeError> {
    let len = u32::from_le_bytes(take(r, 4)?.try_into().expect("4 bytes")) as u64;
    if len > max {
        return Err(RecipeError::Invalid(format!(
            "a field of {len} bytes (at most {max})"
        )));
    }
    Ok(take(r, len as usize)?.to_vec())
}

/// Length of the gzip member header at the start of `buf` (RFC 1952: FEXTRA, FNAME,
/// FCOMMENT, FHCRC), or `None` if `buf` does not hold all of it yet.
fn gzip_header_len(buf: &[u8]) -> Result<Option<usize>, RecipeError> {
    if buf.len() < 10 {
        return Ok(None);
    }
    if buf[0] != 0x1f || buf[1] != 0x8b || buf[2] != 8 {
        return Err(RecipeError::NotRecreatable(
            "not a gzip member with deflate compression".into(),
        ));
    }
    let flags = buf[3];
    if flags & 0xe0 != 0 {
        return Err(RecipeError::NotRecreatable(
            "gzip header has reserved flags set".into(),
        ));
    }
    let mut at = 10;
    if flags & 0x04 != 0 {
        let Some(len) = buf.get(at..at + 2) else {
            return Ok(None);
        };
        at += 2 + u16::from_le_bytes([len[0], len[1]]) as usize;
    }
    for flag in [0x08, 0x10] {
        if flags & flag != 0 {
            match buf.get(at..).and_then(|b| b.iter().position(|&c| c == 0)) {
                Some(nul) => at += nul + 1,
                None => return Ok(None),
            }
        }
    }
    if flags & 0x02 != 0 {
        at += 2;
    }
    Ok((at <= buf.len()).then_some(at))
}

/// Reads until `buf` holds at least `want` bytes or the stream ends; returns false at end.
fn fill(r: &mut impl Read, buf: &mut Vec<u8>, want: usize) -> io::Result<bool> {
    while buf.len() < want {
        let before = buf.len();
        r.by_ref().take((want - before) as u64).read_to_end(buf)?;
        if buf.len() == before {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Streams a gzip blob once and returns the recipe that recreates it from its plain text,
/// checked (preflate recompresses every chunk from the recipe and compares) as it goes.
/// `NotRecreatable` when the blob is not one deflate-compressed gzip member that preflate can
/// model; the caller then stores the layer another way.
pub fn analyse(blob: impl Read) -> Result<Analysis, RecipeError> {
    let mut blob = blob;
    let mut pending = Vec::with_capacity(ANALYSE_STEP);
    let header_len = loop {
        if let Some(n) = gzip_header_len(&pending)? {
            break n;
        }
        let want = pending.len() + 512;
        if want > MAX_FRAME_BYTES {
            return Err(RecipeError::NotRecreatable(
                "gzip header is too long".into(),
            ));
        }
        // A short blob ends before `want`: what was read may still hold the whole header.
        if !fill(&mut blob, &mut pending, want)? && gzip_header_len(&pending)?.is_none() {
            return Err(RecipeError::NotRecreatable(
                "gzip header is truncated".into(),
            ));
        }
    };
    let header = pending[..header_len].to_vec();
    pending.drain(..header_len);

    let config = PreflateConfig {
        plain_text_limit: CHUNK_PLAIN_LIMIT,
        verify_compression: true,
        ..PreflateConfig::default()
    };
    let mut processor = PreflateStreamProcessor::new(&config);
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    let mut plain_len = 0u64;
    let mut chunks = Vec::new();
    let mut at_end = false;
    while !processor.is_done() {
        if !at_end && pending.len() < ANALYSE_STEP {
            at_end = !fill(&mut blob, &mut pending, ANALYSE_STEP)?;
        }
        let result = match processor.decompress(&pending) {
            Ok(r) => r,
            // Not one whole block yet: read more, unless there is no more.
            Err(e) if e.exit_code() == ExitCode::ShortRead && !at_end => {
                if pending.len() >= MAX_PENDING {
                    return Err(RecipeError::NotRecreatable(
                        "a deflate block spans more than 64 MiB".into(),
                    ));
                }
                let want = pending.len() + ANALYSE_STEP;
                at_end = !fill(&mut blob, &mut pending, want)?;
                continue;
            }
            Err(e) => {
                return Err(RecipeError::NotRecreatable(format!(
                    "preflate: {:?}: {}",
                    e.exit_code(),
                    e.message()
                )))
            }
        };
        if result.compressed_size == 0 && !processor.is_done() {
            if at_end {
                return Err(RecipeError::NotRecreatable(
                    "the deflate stream is truncated".into(),
                ));
            }
            let want = pending.len() + ANALYSE_STEP;
            at_end = !fill(&mut blob, &mut pending, want)?;
            continue;
        }
        pending.drain(..result.compressed_size);
        let text = processor.plain_text().text();
        hasher.update(text);
        plain_len += text.len() as u64;
        chunks.push(RecipeChunk {
            plain_len: text.len() as u64,
            corrections: result.corrections,
        });
        processor.shrink_to_dictionary();
    }
    // The trailer: CRC32 and size, and nothing else (a second gzip member would need its
    // own recipe; no layer tool writes one).
    blob.by_ref()
        .take(MAX_FRAME_BYTES as u64 + 1)
        .read_to_end(&mut pending)?;
    if pending.len() != 8 {
        return Err(RecipeError::NotRecreatable(format!(
            "{} bytes follow the deflate stream (a gzip trailer is 8; several gzip members?)",
            pending.len()
        )));
    }
    Ok(Analysis {
        recipe: GzipRecipe {
            header,
            chunks,
            trailer: pending,
        },
        plain_digest: Digest::from_sha256(hasher.finish().as_ref()),
        plain_len,
    })
}

/// Writes the gzip blob `recipe` describes, reading the plain text from `plain` one chunk at
/// a time. Fails if `plain` is longer or shorter than the recipe says; the caller checks the
/// written blob's digest.
pub fn recreate(
    recipe: &GzipRecipe,
    plain: &mut impl Read,
    out: &mut impl Write,
) -> Result<(), RecipeError> {
    out.write_all(&recipe.header)?;
    let mut recreator = RecreateStreamProcessor::new();
    let mut text = Vec::new();
    for (i, chunk) in recipe.chunks.iter().enumerate() {
        if chunk.plain_len > MAX_CHUNK_PLAIN {
            return Err(RecipeError::Invalid(format!(
                "chunk {i} has {} plain bytes (at most {MAX_CHUNK_PLAIN})",
                chunk.plain_len
            )));
        }
        text.clear();
        plain
            .by_ref()
            .take(chunk.plain_len)
            .read_to_end(&mut text)?;
        if text.len() as u64 != chunk.plain_len {
            return Err(RecipeError::Invalid(format!(
                "the layer ends inside chunk {i}: the recipe covers {} bytes",
                recipe.plain_len()
            )));
        }
        // preflate trusts its corrections and panics on some damaged ones (an index out of
        // bounds): a recipe that does not fit its content is an invalid recipe, not a crash.
        let recompressed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            recreator.recompress(&mut Cursor::new(&text), &chunk.corrections)
        }))
        .map_err(|_| RecipeError::Invalid(format!("chunk {i}: the corrections do not fit")))?;
        let (deflate, _) = recompressed.map_err(|e| {
            RecipeError::Invalid(format!(
                "chunk {i}: preflate: {:?}: {}",
                e.exit_code(),
                e.message()
            ))
        })?;
        out.write_all(&deflate)?;
    }
    let mut extra = [0u8; 1];
    if plain.read(&mut extra)? != 0 {
        return Err(RecipeError::Invalid(format!(
            "the layer is longer than the {} bytes the recipe covers",
            recipe.plain_len()
        )));
    }
    out.write_all(&recipe.trailer)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain text with the mix of repetition and novelty real layers have.
    pub(crate) fn sample(len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let words: Vec<String> = (0..400)
            .map(|i| format!("word{}_{}", i * 7919 % 1000, i))
            .collect();
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x.is_multiple_of(5) {
                out.extend_from_slice(&x.to_le_bytes());
            } else {
                out.extend_from_slice(words[(x % 400) as usize].as_bytes());
                out.push(b' ');
            }
        }
        out.truncate(len);
        out
    }

    fn round_trip(gz: &[u8], plain: &[u8]) -> GzipRecipe {
        let analysis = analyse(gz).expect("analysable");
        assert_eq!(analysis.plain_len, plain.len() as u64);
        assert_eq!(analysis.plain_digest, Digest::of_bytes(plain));
        let recipe =
            GzipRecipe::from_bytes(&analysis.recipe.to_bytes(), max_chunks(plain.len() as u64))
                .expect("parses");
        assert_eq!(recipe, analysis.recipe);
        assert_eq!(recipe.encoded_len(), recipe.to_bytes().len() as u64);
        let mut out = Vec::new();
        recreate(&recipe, &mut Cursor::new(plain), &mut out).expect("recreates");
        assert!(out == gz, "recreated blob differs");
        recipe
    }

    #[test]
    fn flate2_levels_round_trip_through_several_chunks() {
        let plain = sample(9 << 20);
        for level in [1, 6, 9] {
            let mut enc = flate2::GzBuilder::new()
                .filename("layer.tar")
                .mtime(1_700_000_000)
                .write(Vec::new(), flate2::Compression::new(level));
            enc.write_all(&plain).unwrap();
            let gz = enc.finish().unwrap();
            let recipe = round_trip(&gz, &plain);
            assert!(recipe.chunks.len() > 1, "level {level}: one chunk");
            assert!(
                recipe.encoded_len() < gz.len() as u64 / 20,
                "level {level}: recipe of {} bytes for a {}-byte blob",
                recipe.encoded_len(),
                gz.len()
            );
        }
    }

    #[test]
    fn tiny_and_empty_blobs_round_trip() {
        // Empty layers and one-file layers are common; a blob shorter than the header read
        // must not count as truncated.
        for plain in [Vec::new(), b"hello".to_vec(), sample(300)] {
            for level in [1, 6, 9] {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
                enc.write_all(&plain).unwrap();
                let gz = enc.finish().unwrap();
                assert!(gz.len() < 512);
                round_trip(&gz, &plain);
            }
        }
    }

    #[test]
    fn recreate_refuses_content_of_the_wrong_length() {
        let plain = sample(300_000);
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&plain).unwrap();
        let gz = enc.finish().unwrap();
        let recipe = analyse(&gz[..]).unwrap().recipe;
        let mut out = Vec::new();
        let short = recreate(&recipe, &mut Cursor::new(&plain[..1000]), &mut out);
        assert!(matches!(short, Err(RecipeError::Invalid(m)) if m.contains("ends inside")));
        let mut longer = plain.clone();
        longer.push(0);
        let long = recreate(&recipe, &mut Cursor::new(&longer), &mut Vec::new());
        assert!(matches!(long, Err(RecipeError::Invalid(m)) if m.contains("longer")));
    }

    #[test]
    fn what_cannot_be_recreated_says_why() {
        let plain = sample(100_000);
        let not_gzip = analyse(&plain[..]);
        assert!(
            matches!(not_gzip, Err(RecipeError::NotRecreatable(m)) if m.contains("not a gzip"))
        );
        let mut two = Vec::new();
        for _ in 0..2 {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(&plain).unwrap();
            two.extend(enc.finish().unwrap());
        }
        let members = analyse(&two[..]);
        assert!(matches!(members, Err(RecipeError::NotRecreatable(m)) if m.contains("members")));
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&plain).unwrap();
        let gz = enc.finish().unwrap();
        let truncated = analyse(&gz[..gz.len() / 2]);
        assert!(
            matches!(truncated, Err(RecipeError::NotRecreatable(_))),
            "{truncated:?}"
        );
    }

    #[test]
    fn hostile_recipes_are_refused_before_they_size_anything() {
        let mut bytes = vec![RECIPE_VERSION];
        bytes.extend(0u32.to_le_bytes());
        bytes.extend(u32::MAX.to_le_bytes());
        assert!(matches!(
            GzipRecipe::from_bytes(&bytes, u64::MAX),
            Err(RecipeError::Invalid(_))
        ));
        let mut wrong_version = GzipRecipe {
            header: vec![],
            chunks: vec![],
            trailer: vec![],
        }
        .to_bytes();
        wrong_version[0] = 99;
        let e = GzipRecipe::from_bytes(&wrong_version, 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 99"), "{e}");
        let huge_chunk = GzipRecipe {
            header: vec![],
            chunks: vec![RecipeChunk {
                plain_len: u32::MAX as u64,
                corrections: vec![],
            }],
            trailer: vec![],
        }
        .to_bytes();
        assert!(GzipRecipe::from_bytes(&huge_chunk, 10).is_err());
        for cut in 0..wrong_version.len() {
            let _ = GzipRecipe::from_bytes(&wrong_version[..cut], 10);
        }
    }
}
