//! Recipes of kinds 1 to 6 (format versions 1 to 7), which bundles made before the compact
//! recipe ([`super::compact`]) carry: read, never written.
//!
//! ```text
//! u8 kind | u32 header length, header | deflate part | u32 trailer length, trailer
//! ```
//!
//! The deflate part: for zlib (kind 2) the level (u8), the ending (u8: 0 finish, 1 sync flush
//! then finish) and the plain length (u64); for Go (3) the writer id (u8 length, then its ASCII
//! bytes), the level (i8) and the plain length (u64), and for a flushed Go writer (5) then the
//! flush points (u32 count, then each as the LEB128 varint of its distance from the one before,
//! the first from 0); for pgzip (4) the writer id (likewise), the level (i8), the block size
//! (u32) and the plain length (u64); for preflate (1, 6) the chunks. Every number
//! little-endian.

use std::io::Cursor;

use super::{
    has_verbatim, preflate, take, take_bytes, take_flushes, DeflateRecipe, GoWriter, GzipRecipe,
    Level, PgzipLevel, PgzipWriterId, RecipeError, Trailer, ZlibEnding, MAX_FRAME_BYTES,
    PGZIP_MIN_BLOCK, RECIPE_GO, RECIPE_GO_FLUSHED, RECIPE_PGZIP, RECIPE_PREFLATE_VERBATIM,
    RECIPE_ZLIB,
};

/// Longest Go (or pgzip) writer id a recipe may carry (`go1.19.8`,
/// `pgzip1.2.5+klauspost1.15.12`).
const MAX_WRITER_ID: usize = 32;

/// Parses a recipe of kind `kind` (1 to 6) after its kind byte.
pub(super) fn take_recipe(
    r: &mut Cursor<&[u8]>,
    kind: u8,
    max_chunks: u64,
) -> Result<GzipRecipe, RecipeError> {
    let header = take_bytes(r, MAX_FRAME_BYTES as u64)?;
    let deflate = match kind {
        RECIPE_PGZIP => take_pgzip(r)?,
        RECIPE_GO | RECIPE_GO_FLUSHED => take_go(r, kind == RECIPE_GO_FLUSHED)?,
        RECIPE_ZLIB => take_zlib(r)?,
        _ => take_preflate(r, kind == RECIPE_PREFLATE_VERBATIM, max_chunks)?,
    };
    let trailer = Trailer::Verbatim(take_bytes(r, MAX_FRAME_BYTES as u64)?);
    Ok(GzipRecipe {
        header,
        deflate,
        trailer,
    })
}

/// A writer id: u8 length, then its bytes.
fn take_writer_id<'a>(r: &mut Cursor<&'a [u8]>, what: &str) -> Result<&'a [u8], RecipeError> {
    let id_len = take(r, 1)?[0] as usize;
    if id_len > MAX_WRITER_ID {
        return Err(RecipeError::Invalid(format!(
            "a {what} writer id of {id_len} bytes (at most {MAX_WRITER_ID})"
        )));
    }
    take(r, id_len)
}

fn take_u64(r: &mut Cursor<&[u8]>) -> Result<u64, RecipeError> {
    Ok(u64::from_le_bytes(take(r, 8)?.try_into().expect("8 bytes")))
}

fn take_pgzip(r: &mut Cursor<&[u8]>) -> Result<DeflateRecipe, RecipeError> {
    let writer = PgzipWriterId::from_id(take_writer_id(r, "pgzip")?)?;
    let level = take(r, 1)?[0] as i8;
    let block_size = u32::from_le_bytes(take(r, 4)?.try_into().expect("4 bytes"));
    let unsupported = RecipeError::UnsupportedPgzip { level, block_size };
    let level = PgzipLevel::new(i32::from(level)).map_err(|_| unsupported)?;
    if block_size as usize <= PGZIP_MIN_BLOCK {
        return Err(RecipeError::UnsupportedPgzip {
            level: level.get() as i8,
            block_size,
        });
    }
    Ok(DeflateRecipe::Pgzip {
        level,
        block_size,
        plain_len: take_u64(r)?,
        writer,
    })
}

fn take_go(r: &mut Cursor<&[u8]>, flushed: bool) -> Result<DeflateRecipe, RecipeError> {
    let writer = GoWriter::from_id(take_writer_id(r, "Go")?)?;
    let level = take(r, 1)?[0] as i8;
    let level = Level::new(i32::from(level)).map_err(|_| RecipeError::InvalidGoLevel { level })?;
    let plain_len = take_u64(r)?;
    let flushes = match flushed {
        true => take_flushes(r, plain_len)?,
        false => Vec::new(),
    };
    Ok(DeflateRecipe::Go {
        level,
        plain_len,
        writer,
        flushes,
    })
}

fn take_zlib(r: &mut Cursor<&[u8]>) -> Result<DeflateRecipe, RecipeError> {
    let level = take(r, 1)?[0];
    if !(1..=9).contains(&level) {
        return Err(RecipeError::Invalid(format!(
            "zlib level {level}, this device knows levels 1-9; update sideload on the device"
        )));
    }
    let ending = match take(r, 1)?[0] {
        0 => ZlibEnding::Finish,
        1 => ZlibEnding::SyncThenFinish,
        other => {
            return Err(RecipeError::Invalid(format!(
                "zlib stream ending {other}; update sideload on the device"
            )))
        }
    };
    Ok(DeflateRecipe::Zlib {
        level,
        ending,
        plain_len: take_u64(r)?,
    })
}

fn take_preflate(
    r: &mut Cursor<&[u8]>,
    verbatim: bool,
    max_chunks: u64,
) -> Result<DeflateRecipe, RecipeError> {
    let total = r.get_ref().len();
    let chunks = preflate::take_chunks(r, total, max_chunks, verbatim)?;
    if verbatim && !has_verbatim(&chunks) {
        // Such a recipe is kind 1: one encoding per recipe.
        return Err(RecipeError::Invalid(
            "a kind 6 recipe without a verbatim or restart chunk".into(),
        ));
    }
    Ok(DeflateRecipe::Preflate(chunks))
}
