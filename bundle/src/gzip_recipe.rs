//! Exact gzip blobs: recreate a source's compressed layer byte for byte from its tar.
//!
//! Registries hold layers gzip-compressed by whatever tool built the image, and deflate output
//! depends on the compressor (its hash chains, lazy matching, block splitting), so compressing
//! the tar again gives other bytes and another digest. Four kinds of *recipe* recreate a blob:
//!
//! - **zlib.** Many tools compress with zlib itself at a standard level (Python's `gzip`,
//!   Java's `GZIPOutputStream`, zlib's own `gzip` functions). zlib is deterministic, so the
//!   recipe is the level: the encoder finds the level whose output is the blob, byte for byte,
//!   and the device runs the same zlib (built in, pinned) over the tar. A few bytes per layer,
//!   whatever its size. [`analyse_zlib`] tries every level in one pass and gives up on a level
//!   at its first differing byte, which for a foreign compressor is its first block.
//! - **pgzip.** podman, buildah and skopeo (containers/image) and umoci compress with
//!   klauspost's `pgzip`, deterministic as well; [`crate::goflate::pgzip`] ports it. The recipe
//!   is the level, the block size and the pgzip and klauspost/compress releases
//!   ([`PgzipWriterId`]); [`analyse_pgzip`] races the default level at those tools' block
//!   sizes (1 MiB and 256 KiB).
//! - **Go.** Docker, BuildKit and containerd compress layers with Go's `compress/gzip`, which
//!   is deterministic too; [`crate::goflate`] is a bit-exact port of its writer. The recipe is
//!   the level and the Go release the port is proven for ([`GoWriter`]); [`analyse_go`] races
//!   every Go level like [`analyse_zlib`] races zlib's. A writer flushed before it was closed
//!   (Go's `Flush`) is found too: the race stops where the stream holds the empty stored
//!   block a flush writes and tries a flushed copy of each level there; the recipe then lists
//!   the flush points (kind 5, a few bytes per point).
//! - **preflate.** For any other compressor, `preflate-rs` models it from the deflate stream
//!   itself, replays the model over the plain text and records where the real stream differs
//!   from the prediction. Those corrections cost a floor of about 0.2 % of the blob even where
//!   the prediction is always right (their arithmetic coder spends a fraction of a bit on
//!   every token), which is why zlib and Go streams get their own kinds. The deflate stream
//!   is cut into chunks of whole deflate blocks (a few MiB of plain text each) so neither side
//!   ever holds more than one chunk: `preflate-rs` carries its 32 KiB window from one chunk to
//!   the next. preflate's parser refuses some valid blocks (Go's and klauspost's single
//!   one-bit distance code, [`crate::deflate_scan`]); those go in *raw* chunks, each block
//!   re-encoded from its header, plain text and matches (about a hundred bytes for the
//!   literal blocks these writers refuse on) or kept verbatim, and preflate restarts after them
//!   on a synthetic prefix that holds its window (kind 6; `gzip_recipe/preflate.rs`). So any
//!   valid deflate stream gets a preflate recipe, unless preflate fails to model 16 blocks in
//!   a row.
//!
//! A recipe travels *compact* ([`compact`], kind 7, format version 8): the gzip trailer is the
//! plain text's CRC-32 and length, which the device computes (the analysers check that the
//! blob's trailer is exactly that, [`Trailer`]); a header that is the writer's own default
//! (Go's, pgzip's) costs nothing and a bare one its mtime, XFL and OS; the writer is a code
//! and numbers are varints. A Go or pgzip level recipe is 7-11 bytes. Recipes of kinds 1 to 6
//! (header and trailer verbatim, 37-68 bytes for a level recipe) are still read
//! (`gzip_recipe/legacy.rs`).
//!
//! A recipe means the same bytes only to the zlib, the Go writer and the `preflate-rs` version
//! that made it (zlib and preflate pinned by Cargo.lock and in `Cargo.toml`, the Go and pgzip
//! writers named in the recipe itself); a device refuses a kind or a writer it does not know
//! ([`RecipeError::UnknownKind`], [`RecipeError::UnknownWriterCode`]) instead of producing
//! wrong bytes.
//!
//! # What runs where
//!
//! The encoder analyses a blob on the thread that calls [`analyse`] (one pass, the levels
//! raced in it; `exact::plan` analyses two layers at a time). On the device, `apply` recreates
//! each exact layer's blob from its staged tar on a second thread while its own thread decodes
//! the next layer, whatever the recipe's kind, one blob at a time. zlib, Go and preflate
//! recipes run on that thread alone. A pgzip blob's blocks are independent (each starts from a
//! reset encoder, its dictionary the previous block's last 16 KiB, which the input holds), so
//! [`recreate`] compresses them on as many worker threads as the device has cores (at most
//! 8) with [`PgzipBlocks`](crate::goflate::pgzip::PgzipBlocks), writing them in order: the
//! workers share the cores with the decoder while it runs, and have them to themselves once
//! the last layer is decoded.

use std::io::{self, Cursor, Read, Write};

use crate::goflate::pgzip::{
    PgzipBlocks, PgzipDeflateWriter, PgzipLevel, PGZIP_DEFAULT_BLOCK_SIZE,
};
use crate::goflate::{GoFlateWriter, Level};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use sideload_signing::Digest;

pub mod compact;
mod legacy;
mod preflate;
mod tiny;

/// Kind byte of a preflate recipe (the correction model of `preflate-rs` 0.7). Kept from the
/// first recipe format, in which it was the version byte.
pub const RECIPE_PREFLATE: u8 = 1;

/// Kind byte of a zlib recipe.
pub const RECIPE_ZLIB: u8 = 2;

/// Kind byte of a Go recipe (Go's `compress/flate` writer, see [`GoWriter`]).
pub const RECIPE_GO: u8 = 3;

/// Kind byte of a pgzip recipe (klauspost's `pgzip` over klauspost's `compress/flate`, see
/// [`PgzipWriterId`]).
pub const RECIPE_PGZIP: u8 = 4;

/// Kind byte of a Go recipe whose writer was flushed (Go's `Flush`) before it was closed: a
/// kind 3 recipe followed by the flush points. A kind of its own, so a device that predates
/// flushes refuses the recipe by its kind instead of misreading it.
pub const RECIPE_GO_FLUSHED: u8 = 5;

/// Kind byte of a preflate recipe that writes some deflate blocks without preflate (blocks
/// preflate cannot parse or model; see [`ChunkBody`]): a kind 1 recipe whose chunks have a
/// type. A kind of its own, so a device that predates such chunks refuses the recipe by its
/// kind.
pub const RECIPE_PREFLATE_VERBATIM: u8 = 6;

/// Kind byte of a compact recipe (format version 8, what this build writes): any of the
/// above, with the gzip trailer computed on the device and the header, writer and numbers
/// packed ([`compact`]).
pub const RECIPE_COMPACT: u8 = 7;

/// Kind byte of a tiny recipe (format version 9): a zlib, Go or pgzip writer at its defaults,
/// for a layer whose size is its plain length, in one byte ([`tiny`]).
pub const RECIPE_TINY: u8 = 8;

/// The recipe kinds this build reads.
const KNOWN_KINDS: [u8; 8] = [
    RECIPE_PREFLATE,
    RECIPE_ZLIB,
    RECIPE_GO,
    RECIPE_PGZIP,
    RECIPE_GO_FLUSHED,
    RECIPE_PREFLATE_VERBATIM,
    RECIPE_COMPACT,
    RECIPE_TINY,
];

/// pgzip refuses blocks of this size or smaller (its `tailSize`).
const PGZIP_MIN_BLOCK: usize = 16384;

/// zlib levels tried, most common first (a tie keeps the first). Not level 0: zlib sizes its
/// stored blocks by how the input and output buffers arrive, so its output is not a function
/// of the plain text alone (preflate recreates such blobs).
const ZLIB_LEVELS: [u32; 9] = [6, 9, 1, 5, 4, 3, 2, 7, 8];

/// Output buffer of every zlib call, on both sides: the same size, so the same calls (see
/// [`deflate_end`]).
const ZLIB_BUF: usize = 256 << 10;

/// Compressed bytes a level's output may lag behind the blob read so far before the level is
/// dropped (bounds the comparison window; the matching level lags by at most one block).
const MAX_ZLIB_LAG: usize = 16 << 20;

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
    /// How the deflate stream is recreated.
    pub deflate: DeflateRecipe,
    /// What follows the deflate stream: the plain text's CRC-32 and size.
    pub trailer: Trailer,
}

/// The 8-byte gzip trailer of a recipe's blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trailer {
    /// The plain text's CRC-32 and length (mod 2^32), little-endian, as every gzip writer
    /// ends a member: the device computes them while it recreates the blob.
    Computed,
    /// The bytes as the blob has them (a CRC that does not match its text; and every recipe
    /// of kinds 1 to 6, which carried the trailer verbatim).
    Verbatim(Vec<u8>),
}

impl Trailer {
    /// How a recipe carries `bytes`, the trailer a blob whose plain text has CRC-32 `crc` and
    /// is `plain_len` bytes long ends with.
    fn of(bytes: Vec<u8>, crc: u32, plain_len: u64) -> Trailer {
        let mut computed = crc.to_le_bytes().to_vec();
        computed.extend_from_slice(&(plain_len as u32).to_le_bytes());
        match bytes == computed {
            true => Trailer::Computed,
            false => Trailer::Verbatim(bytes),
        }
    }
}

/// sha256 and CRC-32 of a plain text, fed as the analyser inflates it.
struct PlainSums {
    sha256: ring::digest::Context,
    crc: flate2::Crc,
}

impl PlainSums {
    fn new() -> PlainSums {
        PlainSums {
            sha256: ring::digest::Context::new(&ring::digest::SHA256),
            crc: flate2::Crc::new(),
        }
    }

    fn update(&mut self, text: &[u8]) {
        self.sha256.update(text);
        self.crc.update(text);
    }

    /// The text's digest, and how a recipe carries `trailer`, the bytes its blob ends with.
    fn finish(self, trailer: Vec<u8>, plain_len: u64) -> (Digest, Trailer) {
        let digest = Digest::from_sha256(self.sha256.finish().as_ref());
        (digest, Trailer::of(trailer, self.crc.sum(), plain_len))
    }
}

/// How a zlib stream was ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZlibEnding {
    /// `Z_FINISH` right after the last input (Python's gzip, Java, zlib's own gzip functions).
    Finish,
    /// `Z_SYNC_FLUSH` after the last input, then `Z_FINISH`: the writer was flushed before it
    /// was closed (Rust's flate2 under a `flush()`, for one).
    SyncThenFinish,
}

/// The deflate stream's part of a recipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeflateRecipe {
    /// zlib at `level` (raw deflate, 32 KiB window, memLevel 8, default strategy: zlib's
    /// defaults, which the tools that use it keep) writes the stream from the plain text.
    Zlib {
        /// 1-9.
        level: u8,
        /// How the stream ends.
        ending: ZlibEnding,
        /// Plain-text bytes.
        plain_len: u64,
    },
    /// Go's `compress/flate` writer of release `writer` at `level`, flushed (Go's `Flush`)
    /// after the plain-text offsets `flushes` and then closed, writes the stream from the plain
    /// text (what `gzip.NewWriterLevel` writes between its header and trailer; Docker,
    /// BuildKit and containerd never flush, so `flushes` is mostly empty).
    Go {
        /// The `compress/flate` level (-2 to 9).
        level: Level,
        /// Plain-text bytes.
        plain_len: u64,
        /// The Go release whose writer the recipe was proven with.
        writer: GoWriter,
        /// Plain-text offsets after which the writer was flushed, in order (an offset repeats
        /// when the writer was flushed twice in a row), each at most `plain_len`.
        flushes: Vec<u64>,
    },
    /// klauspost's `pgzip` writer `writer` at `level` with `block_size`-byte blocks, closed
    /// without earlier flushes, writes the stream from the plain text (what podman, buildah
    /// and skopeo write through containers/image, and umoci with 256 KiB blocks).
    Pgzip {
        /// The pgzip level as given to pgzip (-1 is klauspost's level 5).
        level: PgzipLevel,
        /// pgzip's block size (`SetConcurrency`; 1 MiB by default).
        block_size: u32,
        /// Plain-text bytes.
        plain_len: u64,
        /// The pgzip and klauspost/compress releases the recipe was proven with.
        writer: PgzipWriterId,
    },
    /// preflate's corrections, chunk by chunk, and blocks kept verbatim (recipe kind 1, or 6
    /// once a chunk is not [`ChunkBody::Preflate`]).
    Preflate(Vec<RecipeChunk>),
}

/// A pgzip writer a recipe may name: the `klauspost/pgzip` + `klauspost/compress` releases
/// whose output this build reproduces bit for bit ([`crate::goflate::pgzip`]). A device
/// refuses an id it does not implement ([`RecipeError::UnknownPgzipWriter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgzipWriterId {
    /// pgzip 1.2.5 over klauspost/compress 1.15.12 (Debian bookworm;
    /// [`crate::goflate::pgzip::PGZIP_WRITER`]).
    Pgzip1_2_5Klauspost1_15_12,
}

impl PgzipWriterId {
    /// The writer this build's [`crate::goflate::pgzip`] implements.
    pub const CURRENT: PgzipWriterId = PgzipWriterId::Pgzip1_2_5Klauspost1_15_12;

    /// The id a recipe carries.
    pub fn id(self) -> &'static str {
        match self {
            PgzipWriterId::Pgzip1_2_5Klauspost1_15_12 => crate::goflate::pgzip::PGZIP_WRITER,
        }
    }

    /// The writer a recipe names, refused unless this build implements it.
    pub fn from_id(id: &[u8]) -> Result<PgzipWriterId, RecipeError> {
        if id == Self::CURRENT.id().as_bytes() {
            return Ok(Self::CURRENT);
        }
        Err(RecipeError::UnknownPgzipWriter {
            writer: String::from_utf8_lossy(id).into_owned(),
        })
    }
}

/// A Go writer a recipe may name: a `compress/flate` encoder this build reproduces bit for bit
/// ([`crate::goflate`]), named by the Go release it was ported from. Go's encoder has changed
/// over releases (Go 1.27 replaced it), so a recipe names the encoder and a device refuses one
/// it does not implement ([`RecipeError::UnknownGoWriter`]) rather than write other bytes. The
/// id names the algorithm, not the release that wrote a layer: releases proven to write the
/// same bytes share it, and it never changes for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoWriter {
    /// `go1.19.8` ([`crate::goflate::GO_WRITER`]): the encoder Go 1.19.8, 1.21.13, 1.22.12
    /// and 1.23.5 are proven to share, very likely 1.24 to 1.26 too (sources and release notes
    /// read, not run; [`crate::goflate`], "Which Go versions").
    Go1_19_8,
}

impl GoWriter {
    /// The writer this build's [`crate::goflate`] implements.
    pub const CURRENT: GoWriter = GoWriter::Go1_19_8;

    /// The id a recipe carries: the Go release name.
    pub fn id(self) -> &'static str {
        match self {
            GoWriter::Go1_19_8 => crate::goflate::GO_WRITER,
        }
    }

    /// The writer a recipe names, refused unless this build implements it.
    pub fn from_id(id: &[u8]) -> Result<GoWriter, RecipeError> {
        if id == GoWriter::Go1_19_8.id().as_bytes() {
            return Ok(GoWriter::Go1_19_8);
        }
        Err(RecipeError::UnknownGoWriter {
            writer: String::from_utf8_lossy(id).into_owned(),
        })
    }
}

/// One run of whole deflate blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeChunk {
    /// Plain-text bytes these blocks decode to.
    pub plain_len: u64,
    /// How the blocks are recreated.
    pub body: ChunkBody,
}

/// How a chunk's deflate blocks are recreated. preflate works in *runs* of chunks that share
/// its model and window: the recipe's first chunk starts one, a [`ChunkBody::Restart`] starts
/// another, and a [`ChunkBody::Raw`] chunk ends the run before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkBody {
    /// preflate corrections for the blocks, in the current run (the recipe's first chunk's
    /// also carry the model's parameters).
    Preflate(Vec<u8>),
    /// preflate corrections for blocks that start a new run, after a raw chunk or where
    /// preflate failed: preflate recompresses a synthetic prefix made from the 32 KiB of
    /// plain text before the chunk (see `gzip_recipe/preflate.rs`), then the blocks; the
    /// prefix's bytes are dropped.
    Restart {
        /// preflate corrections for the prefix and the blocks (with the model's parameters).
        corrections: Vec<u8>,
        /// The bit of its byte the chunk's first block starts at (0-7).
        align: u8,
        /// The `align` low bits of that byte (the end of the block before).
        lead: u8,
    },
    /// Blocks preflate cannot parse or model, written without it, one by one.
    Raw {
        /// The bit of its byte the first block starts at (0-7).
        align: u8,
        /// The `align` low bits of that byte (the end of the block before).
        lead: u8,
        /// The blocks (their plain lengths add up to the chunk's).
        blocks: Vec<RawBlock>,
    },
}

/// A deflate block of a [`ChunkBody::Raw`] chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawBlock {
    /// The block's bits as they are (a final block's with its padding).
    Verbatim {
        /// Plain-text bytes the block decodes to.
        plain_len: u64,
        /// Its length in bits.
        bits: u64,
        /// The bits, least significant first, the last byte zero-padded.
        bytes: Vec<u8>,
    },
    /// A dynamic block written again from its plain text: its header as it is (BFINAL to the
    /// last code length), then the plain text coded with that header's codes as literals but
    /// for `matches`, then end-of-block. Most blocks preflate refuses have few matches or none
    /// (Go and klauspost write them for incompressible data), so this costs a few hundred
    /// bytes where the block costs nearly its plain length.
    Reencoded {
        /// Plain-text bytes the block decodes to.
        plain_len: u64,
        /// The header's length in bits.
        header_bits: u64,
        /// The header's bits, the last byte zero-padded.
        header: Vec<u8>,
        /// The block's back-references, in order.
        matches: Vec<BlockMatch>,
    },
}

impl RawBlock {
    /// Plain-text bytes the block decodes to.
    pub fn plain_len(&self) -> u64 {
        match self {
            RawBlock::Verbatim { plain_len, .. } | RawBlock::Reencoded { plain_len, .. } => {
                *plain_len
            }
        }
    }
}

pub use crate::deflate_scan::Match as BlockMatch;

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
    /// The blob is not one gzip member that zlib wrote or whose compressor preflate can
    /// model; the caller falls back (stores the layer another way).
    #[error("cannot be recreated exactly: {0}")]
    NotRecreatable(String),
    /// The recipe record is malformed or does not fit the content.
    #[error("invalid recipe: {0}")]
    Invalid(String),
    /// The recipe is of a kind this build does not know (made by a newer sideload).
    #[error(
        "recipe kind {kind}, this device knows kinds {RECIPE_PREFLATE} and \
         {RECIPE_PREFLATE_VERBATIM} (preflate), {RECIPE_ZLIB} (zlib), {RECIPE_GO} and \
         {RECIPE_GO_FLUSHED} (Go), {RECIPE_PGZIP} (pgzip), {RECIPE_COMPACT} (compact) and \
         {RECIPE_TINY} (tiny); update \
         sideload on the device or \
         build the bundle with --exact never"
    )]
    UnknownKind {
        /// The kind byte.
        kind: u8,
    },
    /// A Go recipe names a Go writer this build does not implement.
    #[error(
        "the recipe needs Go's compress/gzip writer {writer:?}, this device recreates {} only; \
         update sideload on the device or build the bundle with --exact never",
        GoWriter::CURRENT.id()
    )]
    UnknownGoWriter {
        /// The writer id the recipe carries (lossily decoded).
        writer: String,
    },
    /// A pgzip recipe names a pgzip writer this build does not implement.
    #[error(
        "the recipe needs the pgzip writer {writer:?}, this device recreates {} only; update \
         sideload on the device or build the bundle with --exact never",
        PgzipWriterId::CURRENT.id()
    )]
    UnknownPgzipWriter {
        /// The writer id the recipe carries (lossily decoded).
        writer: String,
    },
    /// A compact recipe names a deflate writer this build does not know.
    #[error(
        "the recipe needs deflate writer {code}, this device knows writers 1-6 (preflate, zlib, \
         Go go1.19.8, pgzip 1.2.5); update sideload on the device or build the bundle with \
         --exact never"
    )]
    UnknownWriterCode {
        /// The writer code.
        code: u8,
    },
    /// A pgzip recipe's level or block size is not one this build reproduces.
    #[error(
        "pgzip level {level} with {block_size}-byte blocks: this device reproduces levels {:?} \
         with blocks of more than 16384 bytes; update sideload on the device",
        PgzipLevel::SUPPORTED
    )]
    UnsupportedPgzip {
        /// The level, as a signed number.
        level: i8,
        /// The block size.
        block_size: u32,
    },
    /// A Go recipe's flush points are out of order or past the plain text.
    #[error("Go recipe flush point {index} at plain offset {offset} is before the one before it or past the plain text's {limit} bytes")]
    GoFlushOutOfRange {
        /// Which flush point (0-based).
        index: usize,
        /// Its plain-text offset.
        offset: u64,
        /// The plain-text length it may not pass.
        limit: u64,
    },
    /// A Go recipe's level is not one of Go's (-2 to 9).
    #[error("Go compression level {level}, Go's levels are -2 to 9")]
    InvalidGoLevel {
        /// The level byte, as a signed number.
        level: i8,
    },
    /// Reading or writing failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl GzipRecipe {
    /// Plain-text bytes the recipe covers.
    pub fn plain_len(&self) -> u64 {
        match &self.deflate {
            DeflateRecipe::Zlib { plain_len, .. }
            | DeflateRecipe::Go { plain_len, .. }
            | DeflateRecipe::Pgzip { plain_len, .. } => *plain_len,
            DeflateRecipe::Preflate(chunks) => chunks.iter().map(|c| c.plain_len).sum(),
        }
    }

    /// The recipe in words, for build reports and `--explain`.
    pub fn describe(&self) -> String {
        match &self.deflate {
            DeflateRecipe::Zlib {
                level,
                ending: ZlibEnding::Finish,
                ..
            } => format!("zlib level {level}"),
            DeflateRecipe::Zlib { level, .. } => format!("zlib level {level}, flushed at the end"),
            DeflateRecipe::Go {
                level,
                writer,
                flushes,
                ..
            } => match flushes.len() {
                0 => format!("Go compress/gzip level {} ({})", level.get(), writer.id()),
                n => format!(
                    "Go compress/gzip level {}, flushed {n} time{} ({})",
                    level.get(),
                    if n == 1 { "" } else { "s" },
                    writer.id()
                ),
            },
            DeflateRecipe::Pgzip {
                level,
                block_size,
                writer,
                ..
            } => format!(
                "pgzip level {}, {} KiB blocks ({})",
                level.get(),
                block_size >> 10,
                writer.id()
            ),
            DeflateRecipe::Preflate(chunks) => {
                let n = chunks.len();
                let plural = |n: usize| if n == 1 { "" } else { "s" };
                let raw = chunks.iter().flat_map(|c| match &c.body {
                    ChunkBody::Raw { blocks, .. } => &blocks[..],
                    _ => &[],
                });
                let (mut reencoded, mut verbatim, mut bytes) = (0, 0, 0);
                for block in raw {
                    match block {
                        RawBlock::Reencoded { .. } => reencoded += 1,
                        RawBlock::Verbatim { bytes: b, .. } => {
                            verbatim += 1;
                            bytes += b.len();
                        }
                    }
                }
                match reencoded + verbatim {
                    0 => format!("preflate corrections, {n} chunk{}", plural(n)),
                    k => format!(
                        "preflate corrections, {n} chunk{}; {k} block{} without preflate \
                         ({reencoded} re-encoded, {verbatim} verbatim: {bytes} bytes)",
                        plural(n),
                        plural(k)
                    ),
                }
            }
        }
    }

    /// Length of [`GzipRecipe::to_bytes`] without building it.
    pub fn encoded_len(&self) -> u64 {
        compact::encoded_len(self)
    }

    /// The recipe as a compact recipe (kind 7, [`compact`]) that names its plain length.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len() as usize);
        compact::put(&mut out, self, None);
        out
    }

    /// The recipe as the payload carries it for a layer of `layer_size` bytes: a tiny recipe
    /// (2 bytes) for a writer at its defaults, else a compact recipe that leaves out its plain
    /// length when it is the layer's (format version 9; see [`needs_layer_size`]).
    pub fn to_bytes_in_layer(&self, layer_size: u64) -> Vec<u8> {
        if let Some(tiny) = tiny::encode(self, layer_size) {
            return tiny.to_vec();
        }
        let mut out = Vec::with_capacity(self.encoded_len() as usize);
        compact::put(&mut out, self, Some(layer_size));
        out
    }

    /// [`GzipRecipe::from_bytes`] for the recipe of a layer of `layer_size` bytes, which
    /// may leave out its plain length.
    pub fn from_bytes_in_layer(
        bytes: &[u8],
        layer_size: u64,
        max_chunks: u64,
    ) -> Result<GzipRecipe, RecipeError> {
        Self::parse(bytes, max_chunks, Some(layer_size))
    }

    /// Parses a recipe of any kind this build reads ([`GzipRecipe::to_bytes`]'s kind 7, and
    /// kinds 1 to 6 of bundles made before it); every length is checked before it sizes
    /// anything, and at most `max_chunks` chunks are accepted (see [`max_chunks`]).
    pub fn from_bytes(bytes: &[u8], max_chunks: u64) -> Result<GzipRecipe, RecipeError> {
        Self::parse(bytes, max_chunks, None)
    }

    fn parse(
        bytes: &[u8],
        max_chunks: u64,
        layer_size: Option<u64>,
    ) -> Result<GzipRecipe, RecipeError> {
        let mut r = Cursor::new(bytes);
        let kind = take(&mut r, 1)?[0];
        if !KNOWN_KINDS.contains(&kind) {
            return Err(RecipeError::UnknownKind { kind });
        }
        let recipe = match kind {
            RECIPE_COMPACT => compact::take_recipe(&mut r, max_chunks, layer_size)?,
            RECIPE_TINY => tiny::take_recipe(&mut r, layer_size)?,
            kind => legacy::take_recipe(&mut r, kind, max_chunks)?,
        };
        if r.position() != bytes.len() as u64 {
            return Err(RecipeError::Invalid(
                "bytes after the end of the recipe".into(),
            ));
        }
        Ok(recipe)
    }
}

/// True when encoded recipe `bytes` leaves its plain length to its layer's size: format
/// version 9 (the payload writer raises the bundle's version by it).
pub fn needs_layer_size(bytes: &[u8]) -> bool {
    match bytes.first() {
        Some(&RECIPE_TINY) => true,
        Some(&RECIPE_COMPACT) => bytes
            .get(1)
            .is_some_and(|frame| frame & compact::FRAME_PLAIN_IS_LAYER != 0),
        _ => false,
    }
}

/// Each flush point's distance from the one before (the first's from 0).
fn flush_deltas(flushes: &[u64]) -> impl Iterator<Item = u64> + '_ {
    let before = std::iter::once(0).chain(flushes.iter().copied());
    flushes.iter().zip(before).map(|(at, prev)| at - prev)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn take_varint(r: &mut Cursor<&[u8]>) -> Result<u64, RecipeError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = take(r, 1)?[0];
        let bits = u64::from(byte & 0x7f);
        if shift == 63 && bits > 1 {
            break;
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(RecipeError::Invalid("a varint longer than 64 bits".into()))
}

/// The flush points of a flushed Go recipe (kind 5): at least one, in order, none past
/// `plain_len`.
fn take_flushes(r: &mut Cursor<&[u8]>, plain_len: u64) -> Result<Vec<u64>, RecipeError> {
    let count = u32::from_le_bytes(take(r, 4)?.try_into().expect("4 bytes")) as u64;
    if count == 0 {
        return Err(RecipeError::Invalid(
            "a flushed Go recipe with no flush point".into(),
        ));
    }
    take_flush_points(r, count, plain_len)
}

/// `count` flush points of a Go recipe, in order, none past `plain_len`. The count is checked
/// against the bytes left (each point takes at least one) before anything is sized by it.
fn take_flush_points(
    r: &mut Cursor<&[u8]>,
    count: u64,
    plain_len: u64,
) -> Result<Vec<u64>, RecipeError> {
    let left = r.get_ref().len() as u64 - r.position();
    if count > left {
        return Err(RecipeError::Invalid(format!(
            "a flushed Go recipe with {count} flush points in {left} bytes"
        )));
    }
    let mut flushes = Vec::with_capacity(count as usize);
    let mut at = 0u64;
    for index in 0..count as usize {
        let delta = take_varint(r)?;
        let offset = at.checked_add(delta).filter(|&o| o <= plain_len);
        let Some(offset) = offset else {
            return Err(RecipeError::GoFlushOutOfRange {
                index,
                offset: at.saturating_add(delta),
                limit: plain_len,
            });
        };
        flushes.push(offset);
        at = offset;
    }
    Ok(flushes)
}

/// True when a preflate recipe needs kind 6: a chunk that is not plain corrections.
fn has_verbatim(chunks: &[RecipeChunk]) -> bool {
    chunks
        .iter()
        .any(|c| !matches!(c.body, ChunkBody::Preflate(_)))
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

/// Reads the gzip member header at the start of `blob` into `pending` and splits it off:
/// returns the header, leaves in `pending` what was read past it.
fn read_header(blob: &mut impl Read, pending: &mut Vec<u8>) -> Result<Vec<u8>, RecipeError> {
    let header_len = loop {
        if let Some(n) = gzip_header_len(pending)? {
            break n;
        }
        let want = pending.len() + 512;
        if want > MAX_FRAME_BYTES {
            return Err(RecipeError::NotRecreatable(
                "gzip header is too long".into(),
            ));
        }
        // A short blob ends before `want`: what was read may still hold the whole header.
        if !fill(blob, pending, want)? && gzip_header_len(pending)?.is_none() {
            return Err(RecipeError::NotRecreatable(
                "gzip header is truncated".into(),
            ));
        }
    };
    let header = pending[..header_len].to_vec();
    pending.drain(..header_len);
    Ok(header)
}

/// Reads what follows the deflate stream (after `pending`, its first bytes) and checks that it
/// is a gzip trailer: CRC32 and size, and nothing else (a second gzip member would need its own
/// recipe; no layer tool writes one).
fn read_trailer(blob: &mut impl Read, mut pending: Vec<u8>) -> Result<Vec<u8>, RecipeError> {
    blob.take(MAX_FRAME_BYTES as u64 + 1)
        .read_to_end(&mut pending)?;
    if pending.len() != 8 {
        return Err(RecipeError::NotRecreatable(format!(
            "{} bytes follow the deflate stream (a gzip trailer is 8; several gzip members?)",
            pending.len()
        )));
    }
    Ok(pending)
}

/// Runs zlib's `deflate` over all of `input` (`FlushCompress::None`), handing each piece of
/// output to `sink`, which stops it early by returning false.
fn deflate_all(
    deflate: &mut Compress,
    mut input: &[u8],
    buf: &mut [u8],
    sink: &mut dyn FnMut(&[u8]) -> io::Result<bool>,
) -> io::Result<bool> {
    loop {
        let (in0, out0) = (deflate.total_in(), deflate.total_out());
        deflate
            .compress(input, buf, FlushCompress::None)
            .map_err(io::Error::other)?;
        input = &input[(deflate.total_in() - in0) as usize..];
        let wrote = (deflate.total_out() - out0) as usize;
        if !sink(&buf[..wrote])? {
            return Ok(false);
        }
        if input.is_empty() && wrote < buf.len() {
            return Ok(true);
        }
    }
}

/// Ends a zlib stream the way `ending` says, after all the input went in.
fn deflate_end(
    deflate: &mut Compress,
    ending: ZlibEnding,
    buf: &mut [u8],
    sink: &mut dyn FnMut(&[u8]) -> io::Result<bool>,
) -> io::Result<bool> {
    if ending == ZlibEnding::SyncThenFinish {
        // One Z_SYNC_FLUSH call, whose output must fit in `buf` (it holds at most zlib's
        // pending block and the empty stored block, far less than ZLIB_BUF): had it filled
        // `buf`, zlib could still owe the stored block, and finishing it with a second sync
        // call or with no-flush calls writes different bytes. Such a stream is not matched,
        // and a device never meets one.
        let out0 = deflate.total_out();
        deflate
            .compress(&[], buf, FlushCompress::Sync)
            .map_err(io::Error::other)?;
        let wrote = (deflate.total_out() - out0) as usize;
        if wrote == buf.len() || !sink(&buf[..wrote])? {
            return Ok(false);
        }
    }
    loop {
        let out0 = deflate.total_out();
        let status = deflate
            .compress(&[], buf, FlushCompress::Finish)
            .map_err(io::Error::other)?;
        let wrote = (deflate.total_out() - out0) as usize;
        if !sink(&buf[..wrote])? {
            return Ok(false);
        }
        if status == Status::StreamEnd {
            return Ok(true);
        }
    }
}

/// One zlib level under test: its compressor and how far its output matched the blob.
struct ZlibCandidate {
    level: u32,
    deflate: Compress,
    matcher: Matcher,
}

/// How far a compressor's output matched the blob.
#[derive(Default)]
struct Matcher {
    /// Compressed bytes of the blob's deflate stream the output matched.
    matched: u64,
    /// Output past the blob bytes read so far, compared when they arrive.
    ahead: Vec<u8>,
}

impl Matcher {
    /// Compares `out` (the next output) with the blob's deflate bytes `window` (starting at
    /// stream offset `window_at`); false at the first differing byte.
    fn compare(&mut self, out: &[u8], window: &[u8], window_at: u64) -> bool {
        self.ahead.extend_from_slice(out);
        let from = (self.matched - window_at) as usize;
        let n = self.ahead.len().min(window.len() - from);
        if self.ahead[..n] != window[from..from + n] {
            return false;
        }
        self.ahead.drain(..n);
        self.matched += n as u64;
        true
    }
}

impl ZlibCandidate {
    /// Feeds plain text and compares what comes out; with `ending`, then ends the stream.
    fn feed(
        &mut self,
        plain: &[u8],
        ending: Option<ZlibEnding>,
        buf: &mut [u8],
        window: &[u8],
        window_at: u64,
    ) -> bool {
        let matcher = &mut self.matcher;
        let mut sink = |out: &[u8]| Ok(matcher.compare(out, window, window_at));
        // zlib refuses nothing here (a valid stream, no dictionary): an error is a bug.
        deflate_all(&mut self.deflate, plain, buf, &mut sink).expect("zlib deflates")
            && match ending {
                None => true,
                Some(e) => deflate_end(&mut self.deflate, e, buf, &mut sink).expect("zlib ends"),
            }
    }
}

/// What one pass over a blob found.
enum ZlibPass {
    /// This level (and ending) wrote the stream.
    Found(Analysis),
    /// These levels wrote all of it but its end: another ending may fit.
    EndDiffers(Vec<u32>),
    /// No level wrote it.
    NoLevel,
}

/// Streams a gzip blob and finds the zlib level that wrote its deflate stream, if one did:
/// every level compresses the plain text as it is inflated, and a level drops out at its first
/// byte that differs from the blob's. `Ok(None)` when no level reproduces the stream (another
/// compressor: [`analyse`] models it instead); reading stops as soon as every level is out.
/// `open` opens the blob; a second time only when a level matched all but the stream's end,
/// to try the other ending.
pub fn analyse_zlib<R: Read>(
    mut open: impl FnMut() -> io::Result<R>,
) -> Result<Option<Analysis>, RecipeError> {
    match zlib_pass(open()?, &ZLIB_LEVELS, ZlibEnding::Finish)? {
        ZlibPass::Found(analysis) => Ok(Some(analysis)),
        ZlibPass::NoLevel => Ok(None),
        ZlibPass::EndDiffers(levels) => {
            match zlib_pass(open()?, &levels, ZlibEnding::SyncThenFinish)? {
                ZlibPass::Found(analysis) => Ok(Some(analysis)),
                _ => Ok(None),
            }
        }
    }
}

/// One pass of [`analyse_zlib`] over a blob: races `levels`, each ending its stream with
/// `ending`.
fn zlib_pass(blob: impl Read, levels: &[u32], ending: ZlibEnding) -> Result<ZlibPass, RecipeError> {
    let (header, mut race) = RaceInput::open(blob)?;
    let mut candidates: Vec<ZlibCandidate> = levels
        .iter()
        .map(|&level| ZlibCandidate {
            level,
            deflate: Compress::new(Compression::new(level), false),
            matcher: Matcher::default(),
        })
        .collect();
    let mut buf = vec![0u8; ZLIB_BUF];
    loop {
        race.refill()?;
        let (made, end) = race.inflate_step(None)?;
        let plain = &race.plain[..made];
        candidates.retain_mut(|c| c.feed(plain, None, &mut buf, &race.window, race.window_at));
        if end {
            return zlib_pass_end(race, candidates, &mut buf, header, ending);
        }
        // A level whose output lags far behind the blob is not the one (zlib holds back at
        // most one block), and keeping the blob's bytes for it would grow the window.
        if !race.drop_laggards(&mut candidates, |c| c.matcher.matched) {
            return Ok(ZlibPass::NoLevel);
        }
    }
}

/// The end of a [`zlib_pass`], once the blob's stream is inflated: each level still in the
/// race ends its stream with `ending`, and the first whose stream is the blob's, to its last
/// byte, wins. Those that wrote all of it but its end are kept for the other ending.
fn zlib_pass_end<R: Read>(
    race: RaceInput<R>,
    mut candidates: Vec<ZlibCandidate>,
    buf: &mut [u8],
    header: Vec<u8>,
    ending: ZlibEnding,
) -> Result<ZlibPass, RecipeError> {
    let stream_len = race.inflate.total_in();
    let mut end_differs = Vec::new();
    candidates.retain_mut(|c| {
        let fits = c.feed(&[], Some(ending), buf, &race.window, race.window_at)
            && c.matcher.matched == stream_len
            && c.matcher.ahead.is_empty();
        if !fits {
            end_differs.push(c.level);
        }
        fits
    });
    let Some(found) = candidates.first() else {
        return Ok(if end_differs.is_empty() {
            ZlibPass::NoLevel
        } else {
            ZlibPass::EndDiffers(end_differs)
        });
    };
    let (plain_digest, trailer, plain_len) = race.finish()?;
    Ok(ZlibPass::Found(Analysis {
        recipe: GzipRecipe {
            header,
            deflate: DeflateRecipe::Zlib {
                level: found.level as u8,
                ending,
                plain_len,
            },
            trailer,
        },
        plain_digest,
        plain_len,
    }))
}

/// The inflating side of a race over a gzip blob ([`zlib_pass`], [`race_writers`]): the
/// blob read a step at a time, its deflate stream inflated and the plain text hashed, and
/// the window of stream bytes the racers compare their output with.
struct RaceInput<R> {
    blob: R,
    /// The blob's bytes read but not yet inflated, from `at` on.
    input: Vec<u8>,
    at: usize,
    inflate: Decompress,
    sums: PlainSums,
    /// The blob's deflate bytes from stream offset `window_at` on: what the racers still in
    /// the race have not all matched yet.
    window: Vec<u8>,
    window_at: u64,
    /// The plain text of the last [`RaceInput::inflate_step`].
    plain: Vec<u8>,
}

impl<R: Read> RaceInput<R> {
    /// Reads the blob's gzip header; returns it and the race's input, holding what was read
    /// past the header.
    fn open(mut blob: R) -> Result<(Vec<u8>, Self), RecipeError> {
        let mut input = Vec::with_capacity(ANALYSE_STEP);
        let header = read_header(&mut blob, &mut input)?;
        let race = RaceInput {
            blob,
            input,
            at: 0,
            inflate: Decompress::new(false),
            sums: PlainSums::new(),
            window: Vec::new(),
            window_at: 0,
            plain: vec![0u8; 256 << 10],
        };
        Ok((header, race))
    }

    /// Reads the next step of the blob once all that was read is inflated; whether it did.
    fn refill(&mut self) -> Result<bool, RecipeError> {
        if self.at != self.input.len() {
            return Ok(false);
        }
        self.input.clear();
        self.at = 0;
        if !fill(&mut self.blob, &mut self.input, ANALYSE_STEP)? && self.input.is_empty() {
            return Err(RecipeError::NotRecreatable(
                "the deflate stream is truncated".into(),
            ));
        }
        Ok(true)
    }

    /// Inflates what was read (no more than `limit` bytes of it) into `plain`; the bytes
    /// inflated join the window, the plain text the sums. Returns how much plain text was
    /// made and whether the stream ended.
    fn inflate_step(&mut self, limit: Option<u64>) -> Result<(usize, bool), RecipeError> {
        let stop = limit.map_or(self.input.len(), |n| {
            self.input.len().min(self.at + n as usize)
        });
        let in0 = self.inflate.total_in();
        let out0 = self.inflate.total_out();
        let status = self
            .inflate
            .decompress(
                &self.input[self.at..stop],
                &mut self.plain,
                FlushDecompress::None,
            )
            .map_err(|e| RecipeError::NotRecreatable(format!("not a deflate stream: {e}")))?;
        let used = (self.inflate.total_in() - in0) as usize;
        let made = (self.inflate.total_out() - out0) as usize;
        if used == 0 && made == 0 && status != Status::StreamEnd && self.at < stop {
            return Err(RecipeError::NotRecreatable(
                "the deflate stream does not decode".into(),
            ));
        }
        self.window
            .extend_from_slice(&self.input[self.at..self.at + used]);
        self.at += used;
        self.sums.update(&self.plain[..made]);
        Ok((made, status == Status::StreamEnd))
    }

    /// After a step: drops the racers whose output (`matched` bytes of the stream) lags too
    /// far behind what was read, then the window's bytes every racer left has matched.
    /// Whether any racer is left.
    fn drop_laggards<C>(&mut self, racers: &mut Vec<C>, matched: impl Fn(&C) -> u64) -> bool {
        let read_so_far = self.window_at + self.window.len() as u64;
        racers.retain(|c| read_so_far - matched(c) <= MAX_ZLIB_LAG as u64);
        let Some(slowest) = racers.iter().map(&matched).min() else {
            return false;
        };
        self.window.drain(..(slowest - self.window_at) as usize);
        self.window_at = slowest;
        true
    }

    /// After the stream's end: reads the gzip trailer. Returns the plain text's digest, the
    /// trailer and the plain text's length.
    fn finish(mut self) -> Result<(Digest, Trailer, u64), RecipeError> {
        let trailer = read_trailer(&mut self.blob, self.input[self.at..].to_vec())?;
        let plain_len = self.inflate.total_out();
        let (plain_digest, trailer) = self.sums.finish(trailer, plain_len);
        Ok((plain_digest, trailer, plain_len))
    }
}

/// Go `compress/flate` levels [`analyse_go`] races, most common first (6 is Go's default).
const GO_LEVELS: [i32; 11] = [6, 9, 1, 5, 4, 3, 2, 7, 8, 0, -2];

/// A blob that Go's `compress/gzip` wrote, as [`analyse_go`] found it: Go's writer at `level`
/// (the [`goflate`](crate::goflate) port, proven for [`GO_WRITER`](crate::goflate::GO_WRITER)),
/// flushed after the plain offsets `flushes` and closed, writes its deflate stream from the
/// plain text.
/// [`GoAnalysis::into_analysis`] makes it a [`DeflateRecipe::Go`] recipe.
#[derive(Debug)]
pub struct GoAnalysis {
    /// The `compress/flate` level (-2 to 9; Go's default -1 is found as 6).
    pub level: Level,
    /// Plain-text offsets after which the writer was flushed (mostly none).
    pub flushes: Vec<u64>,
    /// The gzip member header, verbatim.
    pub header: Vec<u8>,
    /// The gzip trailer (CRC32 and size).
    pub trailer: Trailer,
    /// sha256 of the plain text.
    pub plain_digest: Digest,
    /// Plain-text length.
    pub plain_len: u64,
}

impl GoAnalysis {
    /// The recipe that recreates the blob: the verbatim header and trailer around the deflate
    /// stream of this build's Go writer ([`GoWriter::CURRENT`]) at the level found.
    pub fn into_analysis(self) -> Analysis {
        Analysis {
            recipe: GzipRecipe {
                header: self.header,
                deflate: DeflateRecipe::Go {
                    level: self.level,
                    plain_len: self.plain_len,
                    writer: GoWriter::CURRENT,
                    flushes: self.flushes,
                },
                trailer: self.trailer,
            },
            plain_digest: self.plain_digest,
            plain_len: self.plain_len,
        }
    }
}

/// Streams a gzip blob once and finds the Go `compress/flate` level whose output is the blob's
/// deflate stream, byte for byte: written in one go and closed, as `docker`, BuildKit and
/// containerd write layers, or flushed on the way (Go's `Flush`, found where the stream holds
/// an empty stored block; see [`FlushMarks`]). Like [`analyse_zlib`], every level runs over
/// the inflated text and drops out at its first differing byte, so a foreign blob costs about
/// one block per level. `None`: no Go level wrote it.
pub fn analyse_go(blob: impl Read) -> Result<Option<GoAnalysis>, RecipeError> {
    let candidates = GO_LEVELS.iter().map(|&level| {
        let level = Level::new(level).expect("a Go level");
        (level, GoFlateWriter::new(Vec::new(), level))
    });
    Ok(
        race_writers(blob, candidates.collect())?.map(|won| GoAnalysis {
            level: won.key,
            flushes: won.flushes,
            header: won.header,
            trailer: won.trailer,
            plain_digest: won.plain_digest,
            plain_len: won.plain_len,
        }),
    )
}

/// A deflate writer in a race ([`race_writers`]): it writes into a `Vec` that the race
/// empties after each comparison, and is closed once the blob's stream ends.
trait RacingWriter: Write + Sized {
    /// Whether the writer can be flushed by its user ([`RacingWriter::flushed_copy`]).
    const FLUSHABLE: bool;
    /// The output written so far and not yet compared.
    fn output(&mut self) -> &mut Vec<u8>;
    /// Closes the stream; the rest of the output.
    fn close(self) -> Vec<u8>;
    /// A copy of the writer that was then flushed as its user would flush it (a sync flush).
    fn flushed_copy(&self) -> Option<Self>;
}

impl RacingWriter for GoFlateWriter<Vec<u8>> {
    const FLUSHABLE: bool = true;
    fn output(&mut self) -> &mut Vec<u8> {
        self.get_mut()
    }
    fn close(self) -> Vec<u8> {
        self.finish().expect("writing to a Vec")
    }
    fn flushed_copy(&self) -> Option<Self> {
        let mut copy = self.clone();
        copy.sync_flush().expect("writing to a Vec");
        Some(copy)
    }
}

impl RacingWriter for PgzipDeflateWriter<Vec<u8>> {
    // pgzip flushes each block itself; nobody flushes it from outside.
    const FLUSHABLE: bool = false;
    fn output(&mut self) -> &mut Vec<u8> {
        self.get_mut()
    }
    fn close(self) -> Vec<u8> {
        self.finish().expect("writing to a Vec")
    }
    fn flushed_copy(&self) -> Option<Self> {
        None
    }
}

/// Most writers a race keeps at once: a flush mark forks each (see [`fork_flushed`]), and
/// the forks that were not flushed there die within a block, so a stream of real Go output
/// never comes near it; a crafted one full of marks is kept from growing the race.
const MAX_RACERS: usize = 32;

/// Where a sync flush may have put an empty stored block in a deflate stream: the aligned
/// bytes `00 00 ff ff` (LEN 0, NLEN 0xffff) after a byte whose top three bits are zero (the
/// stored block's header and alignment are zero bits, written from the low bit up). Data in
/// stored blocks can hold the same bytes, so a mark is a place to try a flush, not proof of
/// one.
#[derive(Default)]
struct FlushMarks {
    /// The last five bytes scanned, the newest in the low byte.
    last: u64,
    /// Stream bytes scanned.
    scanned: u64,
    /// Stream offsets just past each mark not yet reached by the inflater, in order.
    ahead: std::collections::VecDeque<u64>,
}

impl FlushMarks {
    /// Scans the next bytes of the stream.
    fn scan(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.last = (self.last << 8 | u64::from(b)) & 0xff_ffff_ffff;
            self.scanned += 1;
            if self.scanned >= 5 && self.last & 0xffff_ffff == 0xffff && self.last >> 37 == 0 {
                self.ahead.push_back(self.scanned);
            }
        }
    }
}

/// One writer in the race, named by `key` (a level, or a level and block size).
struct Candidate<K, W> {
    key: K,
    /// `None` once closed.
    writer: Option<W>,
    matcher: Matcher,
    /// Plain offsets after which this writer was flushed.
    flushes: Vec<u64>,
}

impl<K: Copy, W: RacingWriter> Candidate<K, W> {
    /// A copy flushed after plain offset `plain_at`, if its output still matches the blob.
    fn fork_flushed(&self, plain_at: u64, window: &[u8], window_at: u64) -> Option<Self> {
        let mut writer = self.writer.as_ref()?.flushed_copy()?;
        let mut matcher = Matcher {
            matched: self.matcher.matched,
            ahead: self.matcher.ahead.clone(),
        };
        let out = writer.output();
        if !matcher.compare(out, window, window_at) {
            return None;
        }
        out.clear();
        let mut flushes = self.flushes.clone();
        flushes.push(plain_at);
        Some(Candidate {
            key: self.key,
            writer: Some(writer),
            matcher,
            flushes,
        })
    }

    /// Feeds plain text and compares what comes out; with `end`, then closes the stream.
    fn feed(&mut self, plain: &[u8], end: bool, window: &[u8], window_at: u64) -> bool {
        let Some(writer) = self.writer.as_mut() else {
            return false;
        };
        writer.write_all(plain).expect("writing to a Vec");
        let out = writer.output();
        let same = self.matcher.compare(out, window, window_at);
        out.clear();
        if !same || !end {
            return same;
        }
        let last = self.writer.take().expect("still open").close();
        self.matcher.compare(&last, window, window_at)
    }
}

/// The candidate whose output was the blob's whole deflate stream, with the blob's frame.
struct RaceWin<K> {
    key: K,
    flushes: Vec<u64>,
    header: Vec<u8>,
    trailer: Trailer,
    plain_digest: Digest,
    plain_len: u64,
}

/// Streams a gzip blob once: inflates it and feeds the plain text to every candidate writer,
/// each dropping out at its first byte that differs from the blob's (so a foreign blob costs
/// about one block per candidate). The one whose output is the whole stream, byte for byte,
/// wins; `None` when none is. The Go and pgzip passes share it. For writers a user can flush,
/// the inflater stops at every [`FlushMarks`] mark, and each candidate gets a copy flushed
/// there ([`fork_flushed`]).
fn race_writers<K: Copy, W: RacingWriter>(
    blob: impl Read,
    writers: Vec<(K, W)>,
) -> Result<Option<RaceWin<K>>, RecipeError> {
    let (header, mut race) = RaceInput::open(blob)?;
    let mut candidates: Vec<Candidate<K, W>> = writers
        .into_iter()
        .map(|(key, writer)| Candidate {
            key,
            writer: Some(writer),
            matcher: Matcher::default(),
            flushes: Vec::new(),
        })
        .collect();
    let mut marks = FlushMarks::default();
    if W::FLUSHABLE {
        marks.scan(&race.input);
    }
    loop {
        if race.refill()? && W::FLUSHABLE {
            marks.scan(&race.input);
        }
        // Inflate no further than the next mark, so the plain text there is known.
        let next_mark = marks.ahead.front().map(|&m| m - race.inflate.total_in());
        let (made, end) = race.inflate_step(next_mark)?;
        let plain = &race.plain[..made];
        candidates.retain_mut(|c| c.feed(plain, end, &race.window, race.window_at));
        if end {
            let stream_len = race.inflate.total_in();
            let Some(found) = candidates
                .into_iter()
                .find(|c| c.matcher.matched == stream_len && c.matcher.ahead.is_empty())
            else {
                return Ok(None);
            };
            let (plain_digest, trailer, plain_len) = race.finish()?;
            return Ok(Some(RaceWin {
                key: found.key,
                flushes: found.flushes,
                header,
                trailer,
                plain_digest,
                plain_len,
            }));
        }
        // At a mark, once everything before it is inflated (the output did not fill `plain`).
        if marks.ahead.front() == Some(&race.inflate.total_in()) && made < race.plain.len() {
            marks.ahead.pop_front();
            let plain_at = race.inflate.total_out();
            fork_flushed(&mut candidates, plain_at, &race.window, race.window_at);
        }
        // Go holds back at most one window of input and pgzip one block, so a candidate far
        // behind is not the one.
        if !race.drop_laggards(&mut candidates, |c| c.matcher.matched) {
            return Ok(None);
        }
    }
}

/// At a flush mark after plain offset `plain_at`: adds, for each candidate, a copy flushed
/// there whose output still matches, while the race holds fewer than [`MAX_RACERS`]. The
/// candidates themselves go on unflushed (the mark may be data in a stored block).
fn fork_flushed<K: Copy, W: RacingWriter>(
    candidates: &mut Vec<Candidate<K, W>>,
    plain_at: u64,
    window: &[u8],
    window_at: u64,
) {
    let room = MAX_RACERS.saturating_sub(candidates.len());
    let forks: Vec<_> = candidates
        .iter()
        .filter_map(|c| c.fork_flushed(plain_at, window, window_at))
        .take(room)
        .collect();
    candidates.extend(forks);
}

/// Streams a gzip blob once and returns the preflate recipe that recreates it from its plain
/// text, checked (preflate recompresses every chunk from the recipe and compares) as it goes.
/// Deflate blocks preflate cannot parse or model are kept verbatim (`gzip_recipe/preflate.rs`),
/// so any valid deflate stream gets a recipe unless preflate models almost none of it.
/// `NotRecreatable` when the blob is not one gzip member holding a valid deflate stream, or
/// preflate fails on too many blocks in a row; the caller then stores the layer another way.
pub fn analyse(blob: impl Read) -> Result<Analysis, RecipeError> {
    preflate::analyse(blob)
}

/// pgzip (level, block size) pairs [`analyse_pgzip`] races: the default level (what
/// containers/image uses unless configured; -1 and 5 write the same stream) with pgzip's
/// default 1 MiB blocks (podman, buildah, skopeo) and umoci's 256 KiB.
const PGZIP_CANDIDATES: [(i32, usize); 2] = [(-1, PGZIP_DEFAULT_BLOCK_SIZE), (-1, 256 << 10)];

/// A blob that klauspost's pgzip wrote, as [`analyse_pgzip`] found it.
/// [`PgzipAnalysis::into_analysis`] makes it a [`DeflateRecipe::Pgzip`] recipe.
#[derive(Debug)]
pub struct PgzipAnalysis {
    /// The pgzip level.
    pub level: PgzipLevel,
    /// pgzip's block size.
    pub block_size: u32,
    /// The gzip member header, verbatim.
    pub header: Vec<u8>,
    /// The gzip trailer (CRC32 and size).
    pub trailer: Trailer,
    /// sha256 of the plain text.
    pub plain_digest: Digest,
    /// Plain-text length.
    pub plain_len: u64,
}

impl PgzipAnalysis {
    /// The recipe that recreates the blob with this build's pgzip port
    /// ([`PgzipWriterId::CURRENT`]).
    pub fn into_analysis(self) -> Analysis {
        Analysis {
            recipe: GzipRecipe {
                header: self.header,
                deflate: DeflateRecipe::Pgzip {
                    level: self.level,
                    block_size: self.block_size,
                    plain_len: self.plain_len,
                    writer: PgzipWriterId::CURRENT,
                },
                trailer: self.trailer,
            },
            plain_digest: self.plain_digest,
            plain_len: self.plain_len,
        }
    }
}

/// Streams a gzip blob once and finds the pgzip level and block size whose output is the
/// blob's deflate stream, byte for byte (the race of [`analyse_go`]: every candidate runs over
/// the inflated text and drops out at its first differing byte). `None`: pgzip (as ported) did
/// not write it.
pub fn analyse_pgzip(blob: impl Read) -> Result<Option<PgzipAnalysis>, RecipeError> {
    let candidates = PGZIP_CANDIDATES.iter().map(|&(level, block_size)| {
        let level = PgzipLevel::new(level).expect("a ported pgzip level");
        let writer = PgzipDeflateWriter::new(Vec::new(), level, block_size)
            .expect("a valid pgzip block size");
        ((level, block_size), writer)
    });
    Ok(
        race_writers(blob, candidates.collect())?.map(|won| PgzipAnalysis {
            level: won.key.0,
            block_size: won.key.1 as u32,
            header: won.header,
            trailer: won.trailer,
            plain_digest: won.plain_digest,
            plain_len: won.plain_len,
        }),
    )
}

/// Writes the gzip blob `recipe` describes, reading the plain text from `plain` (a chunk at a
/// time for preflate, 256 KiB at a time for zlib and Go, a block at a time for pgzip, whose
/// blocks are compressed on up to [`recreate_threads`] threads). Fails if `plain` is longer
/// or shorter than the recipe says; the caller checks the written blob's digest.
pub fn recreate(
    recipe: &GzipRecipe,
    plain: &mut impl Read,
    out: &mut impl Write,
) -> Result<(), RecipeError> {
    out.write_all(&recipe.header)?;
    // Counts the plain text's CRC-32 and length for a computed trailer.
    let plain = &mut flate2::CrcReader::new(plain);
    match &recipe.deflate {
        DeflateRecipe::Zlib {
            level,
            ending,
            plain_len,
        } => recreate_zlib(u32::from(*level), *ending, *plain_len, plain, out)?,
        DeflateRecipe::Go {
            level,
            plain_len,
            writer: GoWriter::Go1_19_8,
            flushes,
        } => recreate_go(*level, *plain_len, flushes, plain, out)?,
        DeflateRecipe::Pgzip {
            level,
            block_size,
            plain_len,
            writer: PgzipWriterId::Pgzip1_2_5Klauspost1_15_12,
        } => recreate_pgzip(*level, *block_size, *plain_len, plain, out)?,
        DeflateRecipe::Preflate(chunks) => preflate::recreate(chunks, plain, out)?,
    }
    let mut extra = [0u8; 1];
    if plain.read(&mut extra)? != 0 {
        return Err(RecipeError::Invalid(format!(
            "the layer is longer than the {} bytes the recipe covers",
            recipe.plain_len()
        )));
    }
    match &recipe.trailer {
        Trailer::Computed => {
            out.write_all(&plain.crc().sum().to_le_bytes())?;
            out.write_all(&plain.crc().amount().to_le_bytes())?;
        }
        Trailer::Verbatim(bytes) => out.write_all(bytes)?,
    }
    Ok(())
}

/// zlib's raw deflate at `level` over exactly `plain_len` bytes of `plain`, ended as the
/// encoder's analysis ended it (the same calls, so the same bytes).
fn recreate_zlib(
    level: u32,
    ending: ZlibEnding,
    plain_len: u64,
    plain: &mut impl Read,
    out: &mut impl Write,
) -> Result<(), RecipeError> {
    let mut deflate = Compress::new(Compression::new(level), false);
    let mut text = Vec::with_capacity(256 << 10);
    let mut buf = vec![0u8; ZLIB_BUF];
    let mut sink = |bytes: &[u8]| out.write_all(bytes).map(|()| true);
    let mut left = plain_len;
    while left > 0 {
        let want = left.min(256 << 10);
        text.clear();
        plain.by_ref().take(want).read_to_end(&mut text)?;
        if (text.len() as u64) < want {
            return Err(RecipeError::Invalid(format!(
                "the layer ends after {} bytes: the recipe covers {plain_len}",
                plain_len - left + text.len() as u64
            )));
        }
        left -= want;
        deflate_all(&mut deflate, &text, &mut buf, &mut sink)?;
    }
    if !deflate_end(&mut deflate, ending, &mut buf, &mut sink)? {
        // The encoder never accepts such a stream (see `deflate_end`).
        return Err(RecipeError::Invalid(
            "zlib's sync flush did not fit its buffer".into(),
        ));
    }
    Ok(())
}

/// The Go writer port at `level` over exactly `plain_len` bytes of `plain`, flushed after each
/// offset in `flushes` as Go's `Flush` flushes, then closed as Go's `Close` closes it. Memory:
/// Go's own buffers (under 1 MiB) and one piece of input.
fn recreate_go(
    level: Level,
    plain_len: u64,
    flushes: &[u64],
    plain: &mut impl Read,
    out: &mut impl Write,
) -> Result<(), RecipeError> {
    let mut before = 0;
    for (index, &offset) in flushes.iter().enumerate() {
        if offset < before || offset > plain_len {
            let limit = plain_len;
            return Err(RecipeError::GoFlushOutOfRange {
                index,
                offset,
                limit,
            });
        }
        before = offset;
    }
    let mut writer = GoFlateWriter::new(out, level);
    let mut text = Vec::with_capacity(256 << 10);
    let mut done = 0u64;
    let mut flushes = flushes.iter().peekable();
    loop {
        while flushes.next_if_eq(&&done).is_some() {
            writer.sync_flush()?;
        }
        if done == plain_len {
            break;
        }
        let until = flushes.peek().map_or(plain_len, |&&f| f);
        let want = (until - done).min(256 << 10);
        text.clear();
        plain.by_ref().take(want).read_to_end(&mut text)?;
        if (text.len() as u64) < want {
            return Err(RecipeError::Invalid(format!(
                "the layer ends after {} bytes: the recipe covers {plain_len}",
                done + text.len() as u64
            )));
        }
        done += want;
        writer.write_all(&text)?;
    }
    writer.finish()?;
    Ok(())
}

/// pgzip's blocks of exactly `plain_len` bytes of `plain`, compressed on up to
/// [`recreate_threads`] threads and written in order.
fn recreate_pgzip(
    level: PgzipLevel,
    block_size: u32,
    plain_len: u64,
    plain: &mut impl Read,
    out: &mut impl Write,
) -> Result<(), RecipeError> {
    let blocks =
        PgzipBlocks::new(level, block_size as usize, recreate_threads()).map_err(|_| {
            RecipeError::UnsupportedPgzip {
                level: level.get() as i8,
                block_size,
            }
        })?;
    let read = blocks.write_deflate(&mut plain.by_ref().take(plain_len), out)?;
    if read < plain_len {
        return Err(RecipeError::Invalid(format!(
            "the layer ends after {read} bytes: the recipe covers {plain_len}"
        )));
    }
    Ok(())
}

/// Most threads one recreation uses.
const MAX_RECREATE_THREADS: usize = 8;

/// Threads a pgzip recreation compresses blocks on: the machine's cores, at most
/// [`MAX_RECREATE_THREADS`] (each holds ~4 MiB with pgzip's default 1 MiB blocks).
fn recreate_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(MAX_RECREATE_THREADS)
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

    /// Gives `bytes` out a few at a time, as a pipe or a socket may.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1 = self.1 % 4093 + 7;
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn gzip(plain: &[u8], level: u32) -> Vec<u8> {
        let mut enc = flate2::GzBuilder::new()
            .filename("layer.tar")
            .mtime(1_700_000_000)
            .write(Vec::new(), flate2::Compression::new(level));
        enc.write_all(plain).unwrap();
        enc.finish().unwrap()
    }

    /// Checks an analysis and returns its recipe after a trip through its bytes and back to
    /// the blob.
    fn round_trip_analysis(analysis: Analysis, gz: &[u8], plain: &[u8]) -> GzipRecipe {
        assert_eq!(analysis.plain_len, plain.len() as u64);
        assert_eq!(analysis.plain_digest, Digest::of_bytes(plain));
        let recipe =
            GzipRecipe::from_bytes(&analysis.recipe.to_bytes(), max_chunks(plain.len() as u64))
                .expect("parses");
        assert_eq!(recipe, analysis.recipe);
        // Every analyser checks the trailer against the text, and the device computes it.
        assert_eq!(recipe.trailer, Trailer::Computed);
        assert_eq!(recipe.encoded_len(), recipe.to_bytes().len() as u64);
        assert_eq!(recipe.plain_len(), plain.len() as u64);
        let mut out = Vec::new();
        recreate(&recipe, &mut Trickle(plain, 0), &mut out).expect("recreates");
        assert!(out == gz, "recreated blob differs");
        recipe
    }

    pub(super) fn round_trip(gz: &[u8], plain: &[u8]) -> GzipRecipe {
        round_trip_analysis(analyse(gz).expect("analysable"), gz, plain)
    }

    fn round_trip_zlib(gz: &[u8], plain: &[u8]) -> GzipRecipe {
        let analysis = analyse_zlib(|| Ok(Trickle(gz, 0)))
            .expect("readable")
            .expect("a zlib level matches");
        round_trip_analysis(analysis, gz, plain)
    }

    #[test]
    fn preflate_recreates_zlib_levels_through_several_chunks() {
        // Not level 9: on this text, preflate 0.7.6 finds no model for it (MatchNotFound), one
        // more reason zlib streams take the zlib recipe.
        let plain = sample(9 << 20);
        for level in [1, 6] {
            let gz = gzip(&plain, level);
            let recipe = round_trip(&gz, &plain);
            let DeflateRecipe::Preflate(chunks) = &recipe.deflate else {
                panic!("{recipe:?}")
            };
            assert!(chunks.len() > 1, "level {level}: one chunk");
            assert!(
                recipe.encoded_len() < gz.len() as u64 / 20,
                "level {level}: recipe of {} bytes for a {}-byte blob",
                recipe.encoded_len(),
                gz.len()
            );
        }
    }

    #[test]
    fn zlib_streams_are_recreated_from_their_level_alone() {
        // Whatever the size, the recipe is the header, the level and the trailer.
        let plain = sample(3 << 20);
        for level in 1..=9 {
            let gz = gzip(&plain, level);
            let recipe = round_trip_zlib(&gz, &plain);
            assert_eq!(
                recipe.deflate,
                DeflateRecipe::Zlib {
                    level: level as u8,
                    ending: ZlibEnding::Finish,
                    plain_len: plain.len() as u64
                }
            );
            // Kind, frame, header (varint length, 20 B with the name), code, level, length
            // (3 MiB: 4 B); the trailer is computed.
            assert_eq!(
                recipe.encoded_len(),
                1 + 1 + 1 + 20 + 1 + 1 + 4,
                "level {level}"
            );
            assert_eq!(recipe.describe(), format!("zlib level {level}"));
        }
    }

    #[test]
    fn the_built_in_zlib_writes_the_bytes_recipes_were_made_with() {
        // A zlib recipe means the bytes this zlib writes: a libz-sys update that changed them
        // would make devices fail exact applies of bundles from older builds. Update this only
        // with a new recipe kind.
        let plain = sample(1 << 20);
        let got: Vec<String> = [1, 6, 9]
            .iter()
            .map(|&level| {
                let mut out = Vec::new();
                recreate_zlib(
                    level,
                    ZlibEnding::Finish,
                    plain.len() as u64,
                    &mut &plain[..],
                    &mut out,
                )
                .unwrap();
                Digest::of_bytes(&out).to_string()
            })
            .collect();
        assert_eq!(
            got,
            [
                "sha256:c9b10326e2b32b0fd8101c6489f69cce90a0e850d2c5b9c8f0d585605dbeb4d6",
                "sha256:2f57b80a45fff74e4017201a8915d31f239fe7b295b70d2cab826087db74f670",
                "sha256:e83855cf222e97703b1cd1ee1cdaaac1d5bd62e0a6331cbfb96485c80ff789fc",
            ]
        );
    }

    #[test]
    fn a_zlib_stream_flushed_before_it_was_closed_keeps_its_level_recipe() {
        // flate2 under `flush()` then `finish()` (how sideload's own image builder and many
        // Rust tools end a layer): a sync flush, then the final block.
        let plain = sample(1 << 20);
        for level in [1, 6, 9] {
            let mut enc = flate2::GzBuilder::new()
                .mtime(0)
                .write(Vec::new(), flate2::Compression::new(level));
            enc.write_all(&plain).unwrap();
            enc.flush().unwrap();
            let gz = enc.finish().unwrap();
            let recipe = round_trip_zlib(&gz, &plain);
            assert_eq!(
                recipe.deflate,
                DeflateRecipe::Zlib {
                    level: level as u8,
                    ending: ZlibEnding::SyncThenFinish,
                    plain_len: plain.len() as u64
                }
            );
            assert_eq!(
                recipe.describe(),
                format!("zlib level {level}, flushed at the end")
            );
        }
    }

    #[test]
    fn a_stream_no_zlib_level_wrote_is_left_to_preflate() {
        // zlib at level 6, but flushed in the middle (as a tool writing in pieces would):
        // no level writes that stream from the plain text alone.
        let plain = sample(2 << 20);
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        enc.write_all(&plain[..700_000]).unwrap();
        enc.flush().unwrap();
        enc.write_all(&plain[700_000..]).unwrap();
        let gz = enc.finish().unwrap();
        assert!(analyse_zlib(|| Ok(&gz[..])).unwrap().is_none());
        let recipe = round_trip(&gz, &plain);
        assert!(matches!(recipe.deflate, DeflateRecipe::Preflate(_)));
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
                round_trip_zlib(&gz, &plain);
            }
        }
    }

    #[test]
    fn recreate_refuses_content_of_the_wrong_length() {
        let plain = sample(300_000);
        let gz = gzip(&plain, 6);
        let preflate = analyse(&gz[..]).unwrap().recipe;
        let zlib = analyse_zlib(|| Ok(&gz[..])).unwrap().unwrap().recipe;
        for (recipe, short_says) in [(preflate, "ends inside"), (zlib, "ends after 1000")] {
            let short = recreate(&recipe, &mut Cursor::new(&plain[..1000]), &mut Vec::new());
            assert!(
                matches!(&short, Err(RecipeError::Invalid(m)) if m.contains(short_says)),
                "{short:?}"
            );
            let mut longer = plain.clone();
            longer.push(0);
            let long = recreate(&recipe, &mut Cursor::new(&longer), &mut Vec::new());
            assert!(matches!(long, Err(RecipeError::Invalid(m)) if m.contains("longer")));
        }
    }

    #[test]
    fn what_cannot_be_recreated_says_why() {
        let plain = sample(100_000);
        let not_gzip = analyse(&plain[..]);
        assert!(
            matches!(not_gzip, Err(RecipeError::NotRecreatable(m)) if m.contains("not a gzip"))
        );
        let not_gzip = analyse_zlib(|| Ok(&plain[..]));
        assert!(
            matches!(not_gzip, Err(RecipeError::NotRecreatable(m)) if m.contains("not a gzip"))
        );
        let mut two = Vec::new();
        for _ in 0..2 {
            two.extend(gzip(&plain, 6));
        }
        let members = analyse(&two[..]);
        assert!(matches!(members, Err(RecipeError::NotRecreatable(m)) if m.contains("members")));
        let members = analyse_zlib(|| Ok(&two[..]));
        assert!(matches!(members, Err(RecipeError::NotRecreatable(m)) if m.contains("members")));
        let gz = gzip(&plain, 6);
        let truncated = analyse(&gz[..gz.len() / 2]);
        assert!(
            matches!(truncated, Err(RecipeError::NotRecreatable(_))),
            "{truncated:?}"
        );
        let truncated = analyse_zlib(|| Ok(&gz[..gz.len() / 2]));
        assert!(
            matches!(&truncated, Err(RecipeError::NotRecreatable(m)) if m.contains("truncated")),
            "{truncated:?}"
        );
        let mut damaged = gz.clone();
        damaged[40] ^= 0xff;
        assert!(!matches!(analyse_zlib(|| Ok(&damaged[..])), Ok(Some(_))));
    }

    #[test]
    fn hostile_recipes_are_refused_before_they_size_anything() {
        let mut bytes = vec![RECIPE_PREFLATE];
        bytes.extend(0u32.to_le_bytes());
        bytes.extend(u32::MAX.to_le_bytes());
        assert!(matches!(
            GzipRecipe::from_bytes(&bytes, u64::MAX),
            Err(RecipeError::Invalid(_))
        ));
        let mut unknown_kind = GzipRecipe {
            header: vec![],
            deflate: DeflateRecipe::Preflate(vec![]),
            trailer: Trailer::Verbatim(vec![]),
        }
        .to_bytes();
        unknown_kind[0] = 99;
        let e = GzipRecipe::from_bytes(&unknown_kind, 10)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("kind 99") && e.contains("update sideload"),
            "{e}"
        );
        let huge_chunk = GzipRecipe {
            header: vec![],
            deflate: DeflateRecipe::Preflate(vec![RecipeChunk {
                plain_len: u32::MAX as u64,
                body: ChunkBody::Preflate(vec![]),
            }]),
            trailer: Trailer::Verbatim(vec![]),
        }
        .to_bytes();
        assert!(GzipRecipe::from_bytes(&huge_chunk, 10).is_err());
        let zlib = GzipRecipe {
            header: vec![0x1f, 0x8b],
            deflate: DeflateRecipe::Zlib {
                level: 6,
                ending: ZlibEnding::SyncThenFinish,
                plain_len: 5,
            },
            trailer: Trailer::Verbatim(vec![0; 8]),
        }
        .to_bytes();
        assert_eq!(GzipRecipe::from_bytes(&zlib, 10).unwrap().to_bytes(), zlib);
        // kind, frame, then the deflate code
        let code_at = 2;
        assert_eq!(zlib[code_at], compact::CODE_ZLIB_SYNC_FINISH);
        let mut level_10 = zlib.clone();
        level_10[code_at + 1] = 10;
        let e = GzipRecipe::from_bytes(&level_10, 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("zlib level 10"), "{e}");
        let mut writer_42 = zlib.clone();
        writer_42[code_at] = 42;
        let e = GzipRecipe::from_bytes(&writer_42, 10)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("writer 42") && e.contains("update sideload"),
            "{e}"
        );
        let mut frame_bit = zlib.clone();
        frame_bit[1] |= 0x40;
        let e = GzipRecipe::from_bytes(&frame_bit, 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("frame bits 0x42"), "{e}");
        // The code, level 6, plain length 5, then the header's length.
        let mut huge_header = zlib.clone();
        huge_header[code_at + 3] = 0xff;
        assert!(GzipRecipe::from_bytes(&huge_header, 10).is_err());
        let mut longer = zlib.clone();
        longer.push(0);
        assert!(GzipRecipe::from_bytes(&longer, 10).is_err());
        for bytes in [&unknown_kind, &zlib] {
            for cut in 0..bytes.len() {
                assert!(GzipRecipe::from_bytes(&bytes[..cut], 10).is_err());
            }
        }
    }

    /// Recipes of kinds 1 to 6, as bundles of format versions 1 to 7 carry them, built here
    /// byte by byte from their documented layout (`gzip_recipe/legacy.rs`).
    fn legacy_recipe(kind: u8, deflate: &[u8]) -> Vec<u8> {
        let mut bytes = vec![kind];
        bytes.extend(10u32.to_le_bytes());
        bytes.extend([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
        bytes.extend(deflate);
        bytes.extend(8u32.to_le_bytes());
        bytes.extend([1, 2, 3, 4, 5, 0, 0, 0]);
        bytes
    }

    #[test]
    fn recipes_of_earlier_bundles_are_still_read() {
        let pgzip_id = b"pgzip1.2.5+klauspost1.15.12";
        let cases: [(u8, Vec<u8>, DeflateRecipe); 6] = [
            (
                RECIPE_ZLIB,
                [&[9u8, 1][..], &5u64.to_le_bytes()].concat(),
                DeflateRecipe::Zlib {
                    level: 9,
                    ending: ZlibEnding::SyncThenFinish,
                    plain_len: 5,
                },
            ),
            (
                RECIPE_GO,
                [&[8u8][..], b"go1.19.8", &[1], &1000u64.to_le_bytes()].concat(),
                go_recipe(1, 1000).deflate,
            ),
            (
                RECIPE_GO_FLUSHED,
                [
                    &[8u8][..],
                    b"go1.19.8",
                    &[6],
                    &1000u64.to_le_bytes(),
                    &2u32.to_le_bytes(),
                    &[100, 0],
                ]
                .concat(),
                go_recipe_flushed(6, 1000, &[100, 100]).deflate,
            ),
            (
                RECIPE_PGZIP,
                [
                    &[pgzip_id.len() as u8][..],
                    pgzip_id,
                    &[0xff],
                    &(1u32 << 20).to_le_bytes(),
                    &7u64.to_le_bytes(),
                ]
                .concat(),
                DeflateRecipe::Pgzip {
                    level: PgzipLevel::DEFAULT,
                    block_size: 1 << 20,
                    plain_len: 7,
                    writer: PgzipWriterId::CURRENT,
                },
            ),
            (
                RECIPE_PREFLATE,
                [
                    &1u32.to_le_bytes()[..],
                    &9u32.to_le_bytes(),
                    &2u32.to_le_bytes(),
                    &[7, 7],
                ]
                .concat(),
                DeflateRecipe::Preflate(vec![RecipeChunk {
                    plain_len: 9,
                    body: ChunkBody::Preflate(vec![7, 7]),
                }]),
            ),
            (
                RECIPE_PREFLATE_VERBATIM,
                [
                    &1u32.to_le_bytes()[..],
                    &[1], // a restart chunk
                    &9u32.to_le_bytes(),
                    &[3, 0b101],
                    &1u32.to_le_bytes(),
                    &[7],
                ]
                .concat(),
                DeflateRecipe::Preflate(vec![RecipeChunk {
                    plain_len: 9,
                    body: ChunkBody::Restart {
                        corrections: vec![7],
                        align: 3,
                        lead: 0b101,
                    },
                }]),
            ),
        ];
        for (kind, deflate, want) in cases {
            let bytes = legacy_recipe(kind, &deflate);
            let recipe =
                GzipRecipe::from_bytes(&bytes, 10).unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!(
                recipe.header,
                [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff],
                "{kind}"
            );
            assert_eq!(recipe.deflate, want, "{kind}");
            assert_eq!(
                recipe.trailer,
                Trailer::Verbatim(vec![1, 2, 3, 4, 5, 0, 0, 0])
            );
            // Written again, it is a compact recipe that reads back the same.
            let compact = recipe.to_bytes();
            assert_eq!(compact[0], RECIPE_COMPACT);
            assert_eq!(
                GzipRecipe::from_bytes(&compact, 10).unwrap(),
                recipe,
                "{kind}"
            );
            for cut in 0..bytes.len() {
                assert!(
                    GzipRecipe::from_bytes(&bytes[..cut], 10).is_err(),
                    "{kind} cut {cut}"
                );
            }
        }
    }

    /// Go's `gzip.Writer` at `level` with a name in its header, as a layer tool may set.
    fn go_gzip(plain: &[u8], level: i32) -> Vec<u8> {
        use crate::goflate::{GoGzipHeader, GoGzipWriter};
        let header = GoGzipHeader {
            name: b"layer.tar".to_vec(),
            ..GoGzipHeader::default()
        };
        let mut w =
            GoGzipWriter::new(Vec::new(), Level::new(level).unwrap(), &header).expect("valid");
        w.write_all(plain).unwrap();
        w.finish().unwrap()
    }

    /// Go's `gzip.Writer` at `level`, flushed (Go's `Flush`) after each offset in `flushes`.
    fn go_gzip_flushed(plain: &[u8], level: i32, flushes: &[usize]) -> Vec<u8> {
        use crate::goflate::{GoGzipHeader, GoGzipWriter};
        let level = Level::new(level).unwrap();
        let mut w = GoGzipWriter::new(Vec::new(), level, &GoGzipHeader::default()).unwrap();
        let mut done = 0;
        for &at in flushes {
            w.write_all(&plain[done..at]).unwrap();
            w.sync_flush().unwrap();
            done = at;
        }
        w.write_all(&plain[done..]).unwrap();
        w.finish().unwrap()
    }

    fn go_recipe(level: i32, plain_len: u64) -> GzipRecipe {
        go_recipe_flushed(level, plain_len, &[])
    }

    fn go_recipe_flushed(level: i32, plain_len: u64, flushes: &[u64]) -> GzipRecipe {
        GzipRecipe {
            header: vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff],
            deflate: DeflateRecipe::Go {
                level: Level::new(level).unwrap(),
                plain_len,
                writer: GoWriter::CURRENT,
                flushes: flushes.to_vec(),
            },
            trailer: Trailer::Verbatim(vec![0; 8]),
        }
    }

    #[test]
    fn flushed_go_streams_are_recreated_from_their_level_and_flush_points() {
        // A Go writer flushed on the way (a server streaming a layer, a tool flushing after
        // each file): the race finds the level and every flush, including one before any
        // data, two in a row, one in the middle of a long match and one right before Close.
        let plain = sample(1_200_000);
        let len = plain.len();
        let every: &[usize] = &[0, 1, 70_000, 70_000, 1 << 20, len];
        let patterns: [&[usize]; 4] = [&[100_000], every, &[65_536, 131_072, 1_000_001], &[len]];
        let runs = [1, 6]
            .iter()
            .flat_map(|&level| patterns.map(|p| (level, p)));
        for (level, flushes) in runs.chain([9, 0, -2].map(|level| (level, every))) {
            let gz = go_gzip_flushed(&plain, level, flushes);
            let what = format!("level {level}, flushes {flushes:?}");
            let found = analyse_go(&gz[..])
                .unwrap()
                .unwrap_or_else(|| panic!("{what}"));
            let want: Vec<u64> = flushes.iter().map(|&f| f as u64).collect();
            assert_eq!(found.flushes, want, "{what}");
            let recipe = round_trip_analysis(found.into_analysis(), &gz, &plain);
            assert_eq!(recipe.to_bytes()[0], RECIPE_COMPACT, "{what}");
            let n = flushes.len();
            assert!(
                recipe.describe().contains(&format!("flushed {n} time")),
                "{what}"
            );
            // The points cost a few bytes each, not a stream.
            assert!(recipe.encoded_len() < 30 + 4 * n as u64, "{what}");
        }
    }

    #[test]
    fn stored_data_that_looks_like_a_flush_does_not_hide_the_writer() {
        // Incompressible data holding the bytes of an empty stored block (`00 00 ff ff` after
        // a zero byte) lands in Go's stored blocks, where the race sees a possible flush: the
        // unflushed writer must still win, and a real flush nearby must still be found.
        let mut plain = Vec::new();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        while plain.len() < 600_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            plain.extend_from_slice(&x.to_le_bytes());
            if plain.len() % 4096 == 0 {
                plain.extend_from_slice(&[0, 0, 0, 0xff, 0xff]);
            }
        }
        for flushes in [&[][..], &[300_000][..]] {
            for level in [6, 1, 0] {
                let gz = go_gzip_flushed(&plain, level, flushes);
                assert!(
                    gz.windows(5).any(|w| w == [0, 0, 0, 0xff, 0xff]),
                    "the blob shows the marks"
                );
                let found = analyse_go(&gz[..]).unwrap().expect("found");
                let want: Vec<u64> = flushes.iter().map(|&f| f as u64).collect();
                assert_eq!(found.flushes, want, "level {level}");
                round_trip_analysis(found.into_analysis(), &gz, &plain);
            }
        }
    }

    #[test]
    fn flushed_go_recipes_are_refused_when_their_points_do_not_fit() {
        let recipe = go_recipe_flushed(6, 1000, &[0, 10, 10, 1000]);
        let bytes = recipe.to_bytes();
        assert_eq!(bytes[0], RECIPE_COMPACT);
        assert_eq!(bytes.len() as u64, recipe.encoded_len());
        assert_eq!(GzipRecipe::from_bytes(&bytes, 10).unwrap(), recipe);
        // Kind, frame (Go's own header, a verbatim trailer), then the code, the level, the
        // plain length (2 B), the count of points, the points and the trailer (9 B).
        assert_eq!(bytes[1], 4 | 2);
        let code_at = 2;
        assert_eq!(bytes[code_at], compact::CODE_GO);
        let at_count = code_at + 1 + 1 + 2;
        assert_eq!(bytes[at_count], 4);
        // Without points the count is 0 and the trailer follows.
        let plain = go_recipe(6, 1000).to_bytes();
        assert_eq!(plain[..at_count], bytes[..at_count]);
        assert_eq!(plain[at_count], 0);
        assert_eq!(plain[at_count + 1..], bytes[bytes.len() - 9..]);

        // A point past the plain text, by its own delta or by the sum of deltas.
        let past = go_recipe_flushed(6, 1000, &[1001]).to_bytes();
        let e = GzipRecipe::from_bytes(&past, 10).unwrap_err();
        assert!(
            matches!(
                e,
                RecipeError::GoFlushOutOfRange {
                    index: 0,
                    offset: 1001,
                    limit: 1000
                }
            ),
            "{e:?}"
        );
        let mut summed = bytes.clone();
        summed[at_count + 2] = 0x7f; // the second delta: 10 becomes 127
        assert!(matches!(
            GzipRecipe::from_bytes(&summed, 10),
            Err(RecipeError::GoFlushOutOfRange { .. })
        ));
        // A count the bytes cannot hold is refused before anything is sized by it; one point
        // more than written reads the trailer's length as a point.
        for count in [&[18u8][..], &[0xff, 0xff, 0xff, 0xff, 0x0f], &[5]] {
            let mut bad = bytes[..at_count].to_vec();
            bad.extend_from_slice(count);
            bad.extend_from_slice(&bytes[at_count + 1..]);
            let e = GzipRecipe::from_bytes(&bad, 10).unwrap_err();
            assert!(
                matches!(
                    e,
                    RecipeError::Invalid(_) | RecipeError::GoFlushOutOfRange { .. }
                ),
                "{count:?}: {e:?}"
            );
        }
        // A varint that never ends, or overflows 64 bits.
        let mut endless = bytes[..at_count].to_vec();
        endless.push(1);
        endless.extend_from_slice(&[0xff; 11]);
        assert!(GzipRecipe::from_bytes(&endless, 10).is_err());
        for cut in 0..bytes.len() {
            assert!(
                GzipRecipe::from_bytes(&bytes[..cut], 10).is_err(),
                "cut {cut}"
            );
        }
        // Points out of order never come from the parser; built by hand, recreate refuses them.
        let unordered = go_recipe_flushed(6, 1000, &[20, 10]);
        let e = recreate(&unordered, &mut &[0u8; 1000][..], &mut Vec::new()).unwrap_err();
        assert!(
            matches!(e, RecipeError::GoFlushOutOfRange { index: 1, .. }),
            "{e:?}"
        );
    }

    #[test]
    fn varints_round_trip_at_their_edges() {
        for v in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len() as u64, preflate::varint_len(v), "{v}");
            assert_eq!(take_varint(&mut Cursor::new(&out[..])).unwrap(), v);
        }
        let too_big = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(take_varint(&mut Cursor::new(&too_big[..])).is_err());
    }

    #[test]
    fn go_streams_are_recreated_from_their_level_alone() {
        // What Docker, BuildKit and containerd write: no zlib level matches, a Go level does,
        // and the recipe is the header, the writer, the level and the trailer.
        let plain = sample(1 << 20);
        for level in [1, -1, 9] {
            let gz = go_gzip(&plain, level);
            assert!(analyse_zlib(|| Ok(&gz[..])).unwrap().is_none(), "{level}");
            let analysis = analyse_go(&gz[..])
                .unwrap()
                .unwrap_or_else(|| panic!("level {level} not found"))
                .into_analysis();
            let recipe = round_trip_analysis(analysis, &gz, &plain);
            let found = if level == -1 { 6 } else { level };
            assert_eq!(
                recipe.deflate,
                DeflateRecipe::Go {
                    level: Level::new(found).unwrap(),
                    plain_len: plain.len() as u64,
                    writer: GoWriter::Go1_19_8,
                    flushes: Vec::new(),
                }
            );
            // Kind, frame, writer code, level, length (1 MiB: 3 B), no flush point, header
            // (varint length, 10 B and "layer.tar\0"); the trailer is computed.
            assert_eq!(
                recipe.encoded_len(),
                1 + 1 + 1 + 20 + 1 + 1 + 3 + 1,
                "level {level}"
            );
            assert_eq!(
                recipe.describe(),
                format!("Go compress/gzip level {found} (go1.19.8)")
            );
        }
    }

    #[test]
    fn the_go_writer_port_writes_the_bytes_recipes_were_made_with() {
        // A Go recipe names go1.19.8 and means the bytes its writer writes; they are proven
        // equal to Go's own by tests/goflate_equal.rs (which needs the Go toolchain). This
        // pins them where Go is not installed: a change to the port that changed them would
        // make devices fail exact applies. Update this only with a new Go writer id.
        let plain = sample(1 << 20);
        let got: Vec<String> = [1, 6, 9]
            .iter()
            .map(|&level| {
                let mut out = Vec::new();
                recreate_go(
                    Level::new(level).unwrap(),
                    plain.len() as u64,
                    &[],
                    &mut &plain[..],
                    &mut out,
                )
                .unwrap();
                Digest::of_bytes(&out).to_string()
            })
            .collect();
        // These are also the sha256 of `gogzip -raw -level N` (tests/goflate/gogzip.go) built
        // with go1.19.8 over the same sample.
        assert_eq!(
            got,
            [
                "sha256:d952ea95f39f4c6ce28ee3e0f05f878c9ce6338112f368bcc150410d072a436d",
                "sha256:68e786468bb2c822bd791365d82762ce57464a36da2c56cc3ad12f626996e16e",
                "sha256:5fc7735c616dcd34b9e9080befe4ae35771b3cc1e5e32fca312fc18f1031b3b1",
            ]
        );
    }

    #[test]
    fn go_recipes_naming_another_writer_or_level_are_refused() {
        // Writer ids are kinds 3-5's (a compact recipe names the writer by its code).
        let go = legacy_recipe(
            RECIPE_GO,
            &[&[8u8][..], b"go1.19.8", &[6], &5u64.to_le_bytes()].concat(),
        );
        assert_eq!(
            GzipRecipe::from_bytes(&go, 10).unwrap().deflate,
            go_recipe(6, 5).deflate
        );
        let at_writer = 1 + 4 + 10;
        assert_eq!(go[at_writer] as usize, "go1.19.8".len());
        let at_level = at_writer + 1 + "go1.19.8".len();

        // A writer this build does not implement: refused, named, with the way out.
        let mut newer = go.clone();
        newer[at_writer + 1..at_level].copy_from_slice(b"go1.22.0");
        let e = GzipRecipe::from_bytes(&newer, 10).unwrap_err();
        assert!(
            matches!(&e, RecipeError::UnknownGoWriter { writer } if writer == "go1.22.0"),
            "{e:?}"
        );
        let said = e.to_string();
        assert!(
            said.contains("\"go1.22.0\"") && said.contains("go1.19.8") && said.contains("update"),
            "{said}"
        );
        let mut shorter = go[..at_writer].to_vec();
        shorter.push(4);
        shorter.extend_from_slice(b"go1.");
        shorter.extend_from_slice(&go[at_level..]);
        assert!(matches!(
            GzipRecipe::from_bytes(&shorter, 10),
            Err(RecipeError::UnknownGoWriter { .. })
        ));
        let mut long_id = go[..at_writer].to_vec();
        long_id.push(200);
        long_id.extend(vec![b'g'; 200]);
        long_id.extend_from_slice(&go[at_level..]);
        let e = GzipRecipe::from_bytes(&long_id, 10).unwrap_err();
        assert!(
            matches!(&e, RecipeError::Invalid(m) if m.contains("200 bytes")),
            "{e:?}"
        );

        // Levels: Go's -2 to 9 (-1 is the default), nothing else.
        for level in [-2i8, -1, 0, 1, 9] {
            let mut ok = go.clone();
            ok[at_level] = level as u8;
            let parsed = GzipRecipe::from_bytes(&ok, 10).unwrap();
            assert_eq!(
                parsed.deflate,
                go_recipe(level.into(), 5).deflate,
                "level {level}"
            );
        }
        for level in [-3i8, 10, 127, -128] {
            let mut bad = go.clone();
            bad[at_level] = level as u8;
            let e = GzipRecipe::from_bytes(&bad, 10).unwrap_err();
            assert!(
                matches!(e, RecipeError::InvalidGoLevel { level: l } if l == level),
                "{level}: {e:?}"
            );
        }

        // An unknown kind is its own refusal; every cut is refused.
        let mut kind_9 = go.clone();
        kind_9[0] = 9;
        assert!(matches!(
            GzipRecipe::from_bytes(&kind_9, 10),
            Err(RecipeError::UnknownKind { kind: 9 })
        ));
        for cut in 0..go.len() {
            assert!(GzipRecipe::from_bytes(&go[..cut], 10).is_err(), "cut {cut}");
        }
        let mut longer = go.clone();
        longer.push(0);
        assert!(GzipRecipe::from_bytes(&longer, 10).is_err());
    }

    #[test]
    fn a_go_recipe_refuses_content_of_the_wrong_length() {
        let plain = sample(300_000);
        let recipe = go_recipe(6, plain.len() as u64);
        let short = recreate(&recipe, &mut Cursor::new(&plain[..1000]), &mut Vec::new());
        assert!(
            matches!(&short, Err(RecipeError::Invalid(m)) if m.contains("ends after 1000")),
            "{short:?}"
        );
        let mut longer = plain.clone();
        longer.push(0);
        let long = recreate(&recipe, &mut Cursor::new(&longer), &mut Vec::new());
        assert!(matches!(long, Err(RecipeError::Invalid(m)) if m.contains("longer")));
    }

    fn pgzip_gzip(plain: &[u8], block_size: usize) -> Vec<u8> {
        use crate::goflate::pgzip::PgzipWriter;
        let mut w = PgzipWriter::with_block_size(Vec::new(), PgzipLevel::DEFAULT, block_size)
            .expect("valid");
        w.write_all(plain).unwrap();
        w.finish().unwrap()
    }

    fn pgzip_recipe(level: i32, block_size: u32, plain_len: u64) -> GzipRecipe {
        GzipRecipe {
            header: crate::goflate::pgzip::pgzip_header(PgzipLevel::DEFAULT).to_vec(),
            deflate: DeflateRecipe::Pgzip {
                level: PgzipLevel::new(level).unwrap(),
                block_size,
                plain_len,
                writer: PgzipWriterId::CURRENT,
            },
            trailer: Trailer::Verbatim(vec![0; 8]),
        }
    }

    #[test]
    fn pgzip_streams_are_recreated_from_their_level_and_block_size() {
        // What podman, buildah and skopeo (1 MiB blocks) and umoci (256 KiB) write: neither
        // zlib nor Go wrote it, pgzip does, and the recipe is a few dozen bytes.
        let plain = sample(2 * (1 << 20) + 12345);
        for block_size in [1usize << 20, 256 << 10] {
            let gz = pgzip_gzip(&plain, block_size);
            assert!(analyse_zlib(|| Ok(&gz[..])).unwrap().is_none());
            assert!(analyse_go(&gz[..]).unwrap().is_none());
            let analysis = analyse_pgzip(Trickle(&gz, 0))
                .unwrap()
                .unwrap_or_else(|| panic!("{block_size}-byte blocks not found"))
                .into_analysis();
            let recipe = round_trip_analysis(analysis, &gz, &plain);
            assert_eq!(
                recipe.deflate,
                DeflateRecipe::Pgzip {
                    level: PgzipLevel::DEFAULT,
                    block_size: block_size as u32,
                    plain_len: plain.len() as u64,
                    writer: PgzipWriterId::Pgzip1_2_5Klauspost1_15_12,
                }
            );
            // Kind, frame, writer code, level, block size (3 B), length (2 MiB + 12345: 4 B);
            // the header is pgzip's own and the trailer computed.
            assert_eq!(recipe.encoded_len(), 1 + 1 + 1 + 1 + 3 + 4);
            assert_eq!(
                recipe.describe(),
                format!(
                    "pgzip level -1, {} KiB blocks (pgzip1.2.5+klauspost1.15.12)",
                    block_size >> 10
                )
            );
        }
        // Go's and zlib's streams are not pgzip's.
        assert!(analyse_pgzip(&go_gzip(&plain, -1)[..]).unwrap().is_none());
        assert!(analyse_pgzip(&gzip(&plain, 6)[..]).unwrap().is_none());
        // Empty content too.
        let gz = pgzip_gzip(b"", 1 << 20);
        let analysis = analyse_pgzip(&gz[..]).unwrap().unwrap().into_analysis();
        round_trip_analysis(analysis, &gz, b"");
    }

    #[test]
    fn pgzip_recipes_naming_another_writer_level_or_block_size_are_refused() {
        // Writer ids are kind 4's (a compact recipe names the writer by its code).
        let id = "pgzip1.2.5+klauspost1.15.12";
        let rec = legacy_recipe(
            RECIPE_PGZIP,
            &[
                &[id.len() as u8][..],
                id.as_bytes(),
                &[0xff],
                &(1u32 << 20).to_le_bytes(),
                &5u64.to_le_bytes(),
            ]
            .concat(),
        );
        assert_eq!(
            GzipRecipe::from_bytes(&rec, 10).unwrap().deflate,
            pgzip_recipe(-1, 1 << 20, 5).deflate
        );
        let at_writer = 1 + 4 + 10;
        assert_eq!(rec[at_writer] as usize, id.len());
        let at_level = at_writer + 1 + id.len();
        let at_block = at_level + 1;

        let mut newer = rec.clone();
        newer[at_writer + 1..at_level].copy_from_slice(b"pgzip1.2.6+klauspost1.17.11");
        let e = GzipRecipe::from_bytes(&newer, 10).unwrap_err();
        assert!(
            matches!(&e, RecipeError::UnknownPgzipWriter { writer } if writer == "pgzip1.2.6+klauspost1.17.11"),
            "{e:?}"
        );
        let said = e.to_string();
        assert!(said.contains(id) && said.contains("update"), "{said}");

        // Level 5 is the default's twin; other levels are not ported yet.
        let mut five = rec.clone();
        five[at_level] = 5;
        assert_eq!(
            GzipRecipe::from_bytes(&five, 10).unwrap().deflate,
            pgzip_recipe(5, 1 << 20, 5).deflate
        );
        for level in [-2i8, 0, 1, 6, 9, 10, -128] {
            let mut bad = rec.clone();
            bad[at_level] = level as u8;
            let e = GzipRecipe::from_bytes(&bad, 10).unwrap_err();
            assert!(
                matches!(e, RecipeError::UnsupportedPgzip { level: l, .. } if l == level),
                "{level}: {e:?}"
            );
        }
        for block in [0u32, 16384] {
            let mut bad = rec.clone();
            bad[at_block..at_block + 4].copy_from_slice(&block.to_le_bytes());
            let e = GzipRecipe::from_bytes(&bad, 10).unwrap_err();
            assert!(
                matches!(e, RecipeError::UnsupportedPgzip { block_size, .. } if block_size == block),
                "{block}: {e:?}"
            );
        }
        for cut in 0..rec.len() {
            assert!(
                GzipRecipe::from_bytes(&rec[..cut], 10).is_err(),
                "cut {cut}"
            );
        }
        let mut longer = rec.clone();
        longer.push(0);
        assert!(GzipRecipe::from_bytes(&longer, 10).is_err());

        // Content of the wrong length.
        let plain = sample(300_000);
        let recipe = pgzip_recipe(-1, 1 << 20, plain.len() as u64);
        let short = recreate(&recipe, &mut Cursor::new(&plain[..1000]), &mut Vec::new());
        assert!(
            matches!(&short, Err(RecipeError::Invalid(m)) if m.contains("ends after 1000")),
            "{short:?}"
        );
        let mut longer = plain.clone();
        longer.push(0);
        let long = recreate(&recipe, &mut Cursor::new(&longer), &mut Vec::new());
        assert!(matches!(long, Err(RecipeError::Invalid(m)) if m.contains("longer")));
    }
}
