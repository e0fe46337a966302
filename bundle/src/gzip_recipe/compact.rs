//! The recipe's wire form since format version 8: kind 7, the *compact* recipe.
//!
//! Kinds 1 to 6 carry the gzip header and trailer verbatim with 4-byte lengths, the plain
//! length as 8 bytes and a Go or pgzip writer as its ASCII id: 37 B for a zlib level, 45 B for
//! a Go level, 68 B for pgzip, whatever the layer. Most of that is known on the device: the
//! trailer is the plain text's CRC-32 and length (every writer ends a member so), the header of
//! every layer writer is the bare 10 bytes with no name, and a writer is one of a handful this
//! build implements. So a compact recipe is
//!
//! ```text
//! u8 7 | u8 frame | u8 deflate code, the code's fields | header | trailer
//! ```
//!
//! - `frame`: bit 2 set: the header is the one the recipe's writer writes when its user sets
//!   no field (Go's `gzip.NewWriter`, pgzip's), and nothing of it is sent; bit 0 set: the
//!   header is the bare 10-byte one (flags 0), sent as its mtime (varint), XFL (u8) and OS
//!   (u8); neither: the header verbatim (varint length, bytes). Bit 1 set: the trailer
//!   verbatim (varint length, bytes: a CRC that does not match the text); clear: the device
//!   computes it from the plain text. Bit 3 set (format version 9): the plain length is the
//!   layer's size, which the statement gives, and the zlib, Go and pgzip codes leave it out.
//!   Other bits, or bits 0 and 2 together, are refused.
//! - deflate codes, each naming the writer *and* the release whose bytes it reproduces (a new
//!   release that writes other bytes gets a new code, which an older device refuses):
//!   - [`CODE_PREFLATE`] and [`CODE_PREFLATE_RAW`]: kind 1's and kind 6's chunks, as they are
//!     (`preflate-rs` 0.7.6);
//!   - [`CODE_ZLIB`], [`CODE_ZLIB_SYNC_FINISH`]: zlib (as built in) at a level (u8), ended by
//!     `Z_FINISH` alone or after a sync flush; plain length (varint);
//!   - [`CODE_GO`]: the `go1.19.8` `compress/flate` writer ([`GoWriter`]) at a level (i8);
//!     plain length (varint); flush points (varint count, then each as a varint distance from
//!     the one before);
//!   - [`CODE_PGZIP`]: pgzip 1.2.5 over klauspost/compress 1.15.12 ([`PgzipWriterId`]) at a
//!     level (i8); block size (varint); plain length (varint).
//!
//! A Go or pgzip level recipe as Docker, BuildKit, containerd or skopeo write them is then 7-11
//! bytes, a zlib one 10-14. Kinds 1 to 6 are still read (bundles made before).

use std::io::Cursor;

use crate::goflate::pgzip::pgzip_header;
use crate::goflate::GoGzipHeader;

use super::{
    preflate, put_varint, take, take_varint, DeflateRecipe, GoWriter, GzipRecipe, Level,
    PgzipLevel, PgzipWriterId, RecipeError, Trailer, ZlibEnding, MAX_FRAME_BYTES, PGZIP_MIN_BLOCK,
    RECIPE_COMPACT,
};

/// Deflate code of preflate corrections (kind 1's chunks).
pub const CODE_PREFLATE: u8 = 1;
/// Deflate code of zlib ended by `Z_FINISH`.
pub const CODE_ZLIB: u8 = 2;
/// Deflate code of zlib ended by a sync flush, then `Z_FINISH`.
pub const CODE_ZLIB_SYNC_FINISH: u8 = 3;
/// Deflate code of Go's `compress/flate` as `go1.19.8` writes it (flushed or not).
pub const CODE_GO: u8 = 4;
/// Deflate code of pgzip 1.2.5 over klauspost/compress 1.15.12.
pub const CODE_PGZIP: u8 = 5;
/// Deflate code of preflate corrections with raw chunks (kind 6's typed chunks).
pub const CODE_PREFLATE_RAW: u8 = 6;

/// Frame bit: the header is the bare 10-byte header, sent as mtime, XFL and OS.
const FRAME_BARE_HEADER: u8 = 1;
/// Frame bit: the trailer is sent verbatim.
const FRAME_VERBATIM_TRAILER: u8 = 2;
/// Frame bit: the header is what the recipe's writer writes by default; nothing is sent.
const FRAME_WRITERS_HEADER: u8 = 4;

/// Frame bit (format version 9): the plain length is the layer's size; not sent.
pub(super) const FRAME_PLAIN_IS_LAYER: u8 = 8;

/// The gzip header every layer writer writes: magic, deflate, no flags, then mtime, XFL, OS.
const BARE_HEADER_LEN: usize = 10;

/// Appends `recipe` as a kind 7 recipe, leaving out its plain length when it is
/// `layer_size` (the size of the layer the recipe belongs to, which the reader knows).
pub(super) fn put(out: &mut Vec<u8>, recipe: &GzipRecipe, layer_size: Option<u64>) {
    let header = header_form(recipe);
    let plain_is_layer = plain_is_layer(&recipe.deflate, layer_size);
    out.push(RECIPE_COMPACT);
    out.push(
        frame_byte(recipe, header)
            | if plain_is_layer {
                FRAME_PLAIN_IS_LAYER
            } else {
                0
            },
    );
    put_deflate(out, &recipe.deflate, plain_is_layer);
    put_header_and_trailer(out, recipe, header);
}

/// True when `deflate` has a plain length field and it is `layer_size`.
fn plain_is_layer(deflate: &DeflateRecipe, layer_size: Option<u64>) -> bool {
    match deflate {
        DeflateRecipe::Zlib { plain_len, .. }
        | DeflateRecipe::Go { plain_len, .. }
        | DeflateRecipe::Pgzip { plain_len, .. } => Some(*plain_len) == layer_size,
        DeflateRecipe::Preflate(_) => false,
    }
}

/// Length of what [`put`] writes (with no layer size), without writing a preflate recipe's
/// chunks.
pub(super) fn encoded_len(recipe: &GzipRecipe) -> u64 {
    let mut out = Vec::new();
    put_header_and_trailer(&mut out, recipe, header_form(recipe));
    let deflate = match &recipe.deflate {
        DeflateRecipe::Preflate(chunks) => {
            1 + preflate::chunks_len(chunks, super::has_verbatim(chunks))
        }
        deflate => {
            let mut bytes = Vec::new();
            put_deflate(&mut bytes, deflate, false);
            bytes.len() as u64
        }
    };
    2 + deflate + out.len() as u64
}

/// How a recipe's header travels.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HeaderForm {
    /// Exactly what the recipe's writer writes when its user sets no field: nothing.
    Writers,
    /// The bare 10-byte header: its mtime, XFL and OS.
    Bare,
    /// Anything else: its length and bytes.
    Verbatim,
}

fn header_form(recipe: &GzipRecipe) -> HeaderForm {
    let header = &recipe.header[..];
    if writer_header(&recipe.deflate).is_some_and(|h| h == header) {
        HeaderForm::Writers
    } else if header.len() == BARE_HEADER_LEN && header[..4] == [0x1f, 0x8b, 8, 0] {
        HeaderForm::Bare
    } else {
        HeaderForm::Verbatim
    }
}

/// The header the recipe's writer writes when its user sets no field (Go's `gzip.NewWriter`
/// and pgzip's: no name, no time), if the writer is one whose header is known.
fn writer_header(deflate: &DeflateRecipe) -> Option<Vec<u8>> {
    match deflate {
        DeflateRecipe::Go { level, .. } => GoGzipHeader::default().to_bytes(*level).ok(),
        DeflateRecipe::Pgzip { level, .. } => Some(pgzip_header(*level).to_vec()),
        DeflateRecipe::Zlib { .. } | DeflateRecipe::Preflate(_) => None,
    }
}

fn frame_byte(recipe: &GzipRecipe, header: HeaderForm) -> u8 {
    let mut frame = match header {
        HeaderForm::Writers => FRAME_WRITERS_HEADER,
        HeaderForm::Bare => FRAME_BARE_HEADER,
        HeaderForm::Verbatim => 0,
    };
    if let Trailer::Verbatim(_) = recipe.trailer {
        frame |= FRAME_VERBATIM_TRAILER;
    }
    frame
}

fn put_header_and_trailer(out: &mut Vec<u8>, recipe: &GzipRecipe, header: HeaderForm) {
    match header {
        HeaderForm::Writers => {}
        HeaderForm::Bare => {
            let mtime = u32::from_le_bytes(recipe.header[4..8].try_into().expect("4 bytes"));
            put_varint(out, u64::from(mtime));
            out.extend_from_slice(&recipe.header[8..10]);
        }
        HeaderForm::Verbatim => {
            put_varint(out, recipe.header.len() as u64);
            out.extend_from_slice(&recipe.header);
        }
    }
    if let Trailer::Verbatim(bytes) = &recipe.trailer {
        put_varint(out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
}

/// The deflate code and its fields; the plain length only when it is not the layer's.
fn put_deflate(out: &mut Vec<u8>, deflate: &DeflateRecipe, plain_is_layer: bool) {
    let put_plain_len = |out: &mut Vec<u8>, len: u64| {
        if !plain_is_layer {
            put_varint(out, len)
        }
    };
    match deflate {
        DeflateRecipe::Zlib {
            level,
            ending,
            plain_len,
        } => {
            out.push(match ending {
                ZlibEnding::Finish => CODE_ZLIB,
                ZlibEnding::SyncThenFinish => CODE_ZLIB_SYNC_FINISH,
            });
            out.push(*level);
            put_plain_len(out, *plain_len);
        }
        DeflateRecipe::Go {
            level,
            plain_len,
            writer: GoWriter::Go1_19_8,
            flushes,
        } => {
            out.push(CODE_GO);
            out.push(level.get() as i8 as u8);
            put_plain_len(out, *plain_len);
            put_varint(out, flushes.len() as u64);
            super::flush_deltas(flushes).for_each(|d| put_varint(out, d));
        }
        DeflateRecipe::Pgzip {
            level,
            block_size,
            plain_len,
            writer: PgzipWriterId::Pgzip1_2_5Klauspost1_15_12,
        } => {
            out.push(CODE_PGZIP);
            out.push(level.get() as i8 as u8);
            put_varint(out, u64::from(*block_size));
            put_plain_len(out, *plain_len);
        }
        DeflateRecipe::Preflate(chunks) => {
            let raw = super::has_verbatim(chunks);
            out.push(if raw {
                CODE_PREFLATE_RAW
            } else {
                CODE_PREFLATE
            });
            preflate::put_chunks(out, chunks, raw);
        }
    }
}

/// Parses a kind 7 recipe after its kind byte; the caller checks that nothing follows.
/// `layer_size` is the size of the layer the recipe belongs to, for a recipe that leaves its
/// plain length out (`None` where it is unknown: such a recipe is then refused).
pub(super) fn take_recipe(
    r: &mut Cursor<&[u8]>,
    max_chunks: u64,
    layer_size: Option<u64>,
) -> Result<GzipRecipe, RecipeError> {
    let frame = take(r, 1)?[0];
    let header_bits = frame & (FRAME_BARE_HEADER | FRAME_WRITERS_HEADER);
    let known =
        FRAME_BARE_HEADER | FRAME_WRITERS_HEADER | FRAME_VERBATIM_TRAILER | FRAME_PLAIN_IS_LAYER;
    if frame & !known != 0 || header_bits == FRAME_BARE_HEADER | FRAME_WRITERS_HEADER {
        return Err(RecipeError::Invalid(format!(
            "compact recipe frame bits {frame:#04x}; update sideload on the device"
        )));
    }
    let plain_len = match (frame & FRAME_PLAIN_IS_LAYER != 0, layer_size) {
        (false, _) => None,
        (true, Some(size)) => Some(size),
        (true, None) => {
            return Err(RecipeError::Invalid(
                "a recipe whose plain length is its layer's, read without the layer".into(),
            ))
        }
    };
    let deflate = take_deflate(r, max_chunks, plain_len)?;
    let header = match header_bits {
        FRAME_WRITERS_HEADER => writer_header(&deflate).ok_or_else(|| {
            RecipeError::Invalid("the writer's own header, for a writer that has none".into())
        })?,
        FRAME_BARE_HEADER => take_bare_header(r)?,
        _ => take_framed(r, "gzip header")?,
    };
    let trailer = match frame & FRAME_VERBATIM_TRAILER != 0 {
        true => Trailer::Verbatim(take_framed(r, "gzip trailer")?),
        false => Trailer::Computed,
    };
    Ok(GzipRecipe {
        header,
        deflate,
        trailer,
    })
}

/// The bare 10-byte header from its mtime (varint), XFL and OS.
fn take_bare_header(r: &mut Cursor<&[u8]>) -> Result<Vec<u8>, RecipeError> {
    let mtime = u32::try_from(take_varint(r)?)
        .map_err(|_| RecipeError::Invalid("a gzip mtime over 32 bits".into()))?;
    let mut header = vec![0x1f, 0x8b, 8, 0];
    header.extend_from_slice(&mtime.to_le_bytes());
    header.extend_from_slice(take(r, 2)?);
    Ok(header)
}

/// A varint length (at most [`MAX_FRAME_BYTES`]), then that many bytes.
fn take_framed(r: &mut Cursor<&[u8]>, what: &str) -> Result<Vec<u8>, RecipeError> {
    let len = take_varint(r)?;
    if len > MAX_FRAME_BYTES as u64 {
        return Err(RecipeError::Invalid(format!(
            "a {what} of {len} bytes (at most {MAX_FRAME_BYTES})"
        )));
    }
    Ok(take(r, len as usize)?.to_vec())
}

/// The deflate code and its fields; `plain_len` when the frame says the plain length is the
/// layer's (then not read).
fn take_deflate(
    r: &mut Cursor<&[u8]>,
    max_chunks: u64,
    plain_len: Option<u64>,
) -> Result<DeflateRecipe, RecipeError> {
    let code = take(r, 1)?[0];
    let take_plain_len = |r: &mut Cursor<&[u8]>| match plain_len {
        Some(len) => Ok(len),
        None => take_varint(r),
    };
    Ok(match code {
        CODE_ZLIB | CODE_ZLIB_SYNC_FINISH => {
            let level = take(r, 1)?[0];
            if !(1..=9).contains(&level) {
                return Err(RecipeError::Invalid(format!(
                    "zlib level {level}, this device knows levels 1-9; update sideload on the device"
                )));
            }
            DeflateRecipe::Zlib {
                level,
                ending: match code {
                    CODE_ZLIB => ZlibEnding::Finish,
                    _ => ZlibEnding::SyncThenFinish,
                },
                plain_len: take_plain_len(r)?,
            }
        }
        CODE_GO => {
            let level = take(r, 1)?[0] as i8;
            let level =
                Level::new(i32::from(level)).map_err(|_| RecipeError::InvalidGoLevel { level })?;
            let plain_len = take_plain_len(r)?;
            let count = take_varint(r)?;
            DeflateRecipe::Go {
                level,
                plain_len,
                writer: GoWriter::Go1_19_8,
                flushes: super::take_flush_points(r, count, plain_len)?,
            }
        }
        CODE_PGZIP => {
            let level = take(r, 1)?[0] as i8;
            let block_size = u32::try_from(take_varint(r)?)
                .map_err(|_| RecipeError::Invalid("a pgzip block size over 32 bits".into()))?;
            let unsupported = RecipeError::UnsupportedPgzip { level, block_size };
            let level = PgzipLevel::new(i32::from(level)).map_err(|_| unsupported)?;
            if block_size as usize <= PGZIP_MIN_BLOCK {
                return Err(RecipeError::UnsupportedPgzip {
                    level: level.get() as i8,
                    block_size,
                });
            }
            DeflateRecipe::Pgzip {
                level,
                block_size,
                plain_len: take_plain_len(r)?,
                writer: PgzipWriterId::Pgzip1_2_5Klauspost1_15_12,
            }
        }
        CODE_PREFLATE | CODE_PREFLATE_RAW if plain_len.is_some() => {
            return Err(RecipeError::Invalid(
                "a preflate recipe has no plain length to leave out".into(),
            ))
        }
        CODE_PREFLATE | CODE_PREFLATE_RAW => {
            let raw = code == CODE_PREFLATE_RAW;
            let total = r.get_ref().len();
            let chunks = preflate::take_chunks(r, total, max_chunks, raw)?;
            if raw && !super::has_verbatim(&chunks) {
                return Err(RecipeError::Invalid(
                    "a preflate recipe with raw chunks but none that is raw or a restart".into(),
                ));
            }
            DeflateRecipe::Preflate(chunks)
        }
        code => return Err(RecipeError::UnknownWriterCode { code }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Go's `gzip.NewWriter` at its default level over 1,000 bytes (the seed
    /// fuzz/seeds/gzip_recipe/go-compact).
    const GO: [u8; 7] = [7, FRAME_WRITERS_HEADER, CODE_GO, 6, 0xe8, 0x07, 0];

    /// pgzip as skopeo writes it, 1 MiB blocks, over 7 bytes (pgzip-compact).
    const PGZIP: [u8; 8] = [
        7,
        FRAME_WRITERS_HEADER,
        CODE_PGZIP,
        0xff,
        0x80,
        0x80,
        0x40,
        7,
    ];

    fn parse(bytes: &[u8]) -> GzipRecipe {
        GzipRecipe::from_bytes(bytes, 10).expect("parses")
    }

    #[test]
    fn a_layer_docker_or_skopeo_wrote_costs_a_few_bytes() {
        // Go's gzip.NewWriter at its default level over 1,000 bytes (the seed
        // fuzz/seeds/gzip_recipe/go-compact): kind, frame (the writer's header), code, level,
        // length (2 B), no flush point.
        let go = GO;
        let level = Level::new(6).unwrap();
        let recipe = parse(&go);
        assert_eq!(
            recipe.header,
            GoGzipHeader::default().to_bytes(level).unwrap()
        );
        assert_eq!(recipe.trailer, Trailer::Computed);
        assert_eq!(recipe.plain_len(), 1000);
        assert_eq!(recipe.to_bytes(), go);
        // pgzip as skopeo writes it, 1 MiB blocks, over 7 bytes (pgzip-compact).
        let pgzip = PGZIP;
        let recipe = parse(&pgzip);
        assert_eq!(recipe.header, pgzip_header(PgzipLevel::DEFAULT));
        assert_eq!(recipe.to_bytes(), pgzip);
        // zlib at level 6 with a bare header whose OS is 3 (zlib-compact-bare).
        let zlib = [7, FRAME_BARE_HEADER, CODE_ZLIB, 6, 5, 0, 0, 3];
        let recipe = parse(&zlib);
        assert_eq!(recipe.header, [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]);
        assert_eq!(recipe.to_bytes(), zlib);
        for seed in ["go-compact", "pgzip-compact", "zlib-compact-bare"] {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/seeds/gzip_recipe/");
            let bytes = std::fs::read(format!("{path}{seed}")).expect("the seed");
            parse(&bytes);
        }
    }

    #[test]
    fn frames_this_build_does_not_know_are_refused() {
        let go = GO;
        for frame in [FRAME_WRITERS_HEADER | FRAME_BARE_HEADER, 0x10, 0x80] {
            let mut bad = go;
            bad[1] = frame;
            let e = GzipRecipe::from_bytes(&bad, 10).unwrap_err().to_string();
            assert!(e.contains("frame bits") && e.contains("update"), "{e}");
        }
        // The writer's own header for a writer whose header is not known (zlib).
        let zlib = [7, FRAME_WRITERS_HEADER, CODE_ZLIB, 6, 5];
        let e = GzipRecipe::from_bytes(&zlib, 10).unwrap_err().to_string();
        assert!(e.contains("writer's own header"), "{e}");
        // A block size past 32 bits.
        let huge = [7, 4, CODE_PGZIP, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 7];
        let e = GzipRecipe::from_bytes(&huge, 10).unwrap_err().to_string();
        assert!(e.contains("over 32 bits"), "{e}");
    }

    #[test]
    fn a_recipe_leaves_out_a_plain_length_that_is_its_layers() {
        let go = parse(&GO);
        // Kind, frame, code, level, no flush point: the 1,000 bytes are the layer's size.
        // (Builds write such a recipe as a tiny one; a compact one is still read.)
        let in_layer = |recipe: &GzipRecipe, size: u64| {
            let mut out = Vec::new();
            put(&mut out, recipe, Some(size));
            out
        };
        let short = in_layer(&go, 1000);
        assert_eq!(
            short,
            [
                7,
                FRAME_WRITERS_HEADER | FRAME_PLAIN_IS_LAYER,
                CODE_GO,
                6,
                0
            ]
        );
        assert!(crate::gzip_recipe::needs_layer_size(&short));
        assert_eq!(
            GzipRecipe::from_bytes_in_layer(&short, 1000, 10).unwrap(),
            go
        );
        // Read where the layer is unknown, it is refused; another layer size reads as that.
        let e = GzipRecipe::from_bytes(&short, 10).unwrap_err().to_string();
        assert!(e.contains("without the layer"), "{e}");
        assert_eq!(
            GzipRecipe::from_bytes_in_layer(&short, 999, 10)
                .unwrap()
                .plain_len(),
            999
        );
        // A layer of another size keeps the length, and the version-8 form.
        let named = in_layer(&go, 1001);
        assert_eq!(named, go.to_bytes());
        assert!(!crate::gzip_recipe::needs_layer_size(&named));
        // pgzip and zlib leave it out too; preflate has none to leave out.
        let pgzip = parse(&PGZIP);
        assert_eq!(
            in_layer(&pgzip, 7),
            [
                7,
                FRAME_WRITERS_HEADER | FRAME_PLAIN_IS_LAYER,
                CODE_PGZIP,
                0xff,
                0x80,
                0x80,
                0x40
            ]
        );
        let zlib = parse(&[7, FRAME_BARE_HEADER, CODE_ZLIB, 6, 5, 0, 0, 3]);
        assert_eq!(
            in_layer(&zlib, 5),
            [
                7,
                FRAME_BARE_HEADER | FRAME_PLAIN_IS_LAYER,
                CODE_ZLIB,
                6,
                0,
                0,
                3
            ]
        );
        let preflate = [7, FRAME_PLAIN_IS_LAYER, CODE_PREFLATE, 0];
        let e = GzipRecipe::from_bytes_in_layer(&preflate, 5, 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no plain length"), "{e}");
    }
}
