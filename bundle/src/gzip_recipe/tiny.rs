//! Kind 8, the *tiny* recipe (format version 9): the layers registries hold most, in one byte
//! after the kind.
//!
//! A compact recipe (kind 7) of a layer Docker, containerd, BuildKit or skopeo wrote is 4-7
//! bytes, nearly all of it fixed by the writer: the frame says "the writer's own header, the
//! trailer computed, the plain length the layer's", the Go writer says "never flushed". On a
//! small update that is still more than a thousandth of the bundle. So a recipe that is exactly
//! one of these defaults is `u8 8 | u8 code`:
//!
//! - `1`-`9`: zlib at that level, ended by `Z_FINISH` (Python's `gzip`), `0x41`-`0x49`: ended
//!   by a sync flush, then `Z_FINISH` (Rust's `flate2`), each behind the header both write with
//!   no name and mtime 0 (`1f 8b 08 00`, mtime 0, XFL 2 at level 9, 4 at level 1, else 0,
//!   OS 255);
//! - `0x10 + level + 2`: Go's `compress/flate` of `go1.19.8` at `level` (-2 to 9), never
//!   flushed, behind `gzip.NewWriter`'s header;
//! - `0x20 + level + 2`: pgzip 1.2.5 over klauspost/compress 1.15.12 at `level` with 1 MiB
//!   blocks (skopeo's and podman's), behind pgzip's header.
//!
//! In every case the trailer is computed and the plain length is the layer's size, so a tiny
//! recipe is read only where the layer is known. Anything else is a compact recipe.

use std::io::Cursor;

use crate::goflate::pgzip::pgzip_header;
use crate::goflate::GoGzipHeader;

use super::{
    take, DeflateRecipe, GoWriter, GzipRecipe, Level, PgzipLevel, PgzipWriterId, RecipeError,
    Trailer, ZlibEnding, RECIPE_TINY,
};

/// The block size of pgzip's default writer, the only one a tiny recipe names.
const PGZIP_DEFAULT_BLOCK: u32 = 1 << 20;

/// First code of the Go levels (level -2).
const GO_BASE: u8 = 0x10;
/// First code of the pgzip levels (level -2).
const PGZIP_BASE: u8 = 0x20;
/// Added to a zlib level for a stream ended by a sync flush, then `Z_FINISH`.
const ZLIB_SYNC: u8 = 0x40;

/// The tiny form of `recipe` for a layer of `layer_size` bytes, when it has one.
pub(super) fn encode(recipe: &GzipRecipe, layer_size: u64) -> Option<[u8; 2]> {
    if recipe.trailer != Trailer::Computed {
        return None;
    }
    let code = match &recipe.deflate {
        DeflateRecipe::Zlib {
            level,
            ending,
            plain_len,
        } if *plain_len == layer_size => match ending {
            ZlibEnding::Finish => *level,
            ZlibEnding::SyncThenFinish => ZLIB_SYNC + *level,
        },
        DeflateRecipe::Go {
            level,
            plain_len,
            writer: GoWriter::Go1_19_8,
            flushes,
        } if *plain_len == layer_size && flushes.is_empty() => offset(GO_BASE, level.get())?,
        DeflateRecipe::Pgzip {
            level,
            block_size: PGZIP_DEFAULT_BLOCK,
            plain_len,
            writer: PgzipWriterId::Pgzip1_2_5Klauspost1_15_12,
        } if *plain_len == layer_size => offset(PGZIP_BASE, level.get())?,
        _ => return None,
    };
    let decoded = decode(code, layer_size).ok()?;
    (decoded == *recipe).then_some([RECIPE_TINY, code])
}

/// `base + level + 2` for a level from -2 to 9.
fn offset(base: u8, level: i32) -> Option<u8> {
    u8::try_from(level + 2)
        .ok()
        .filter(|&l| l <= 11)
        .map(|l| base + l)
}

/// Parses a kind 8 recipe after its kind byte, for a layer of `layer_size` bytes (`None`:
/// unknown, and the recipe is refused).
pub(super) fn take_recipe(
    r: &mut Cursor<&[u8]>,
    layer_size: Option<u64>,
) -> Result<GzipRecipe, RecipeError> {
    let code = take(r, 1)?[0];
    let layer_size = layer_size.ok_or_else(|| {
        RecipeError::Invalid("a tiny recipe, read without the layer it belongs to".into())
    })?;
    decode(code, layer_size)
}

/// The recipe a tiny `code` stands for.
fn decode(code: u8, plain_len: u64) -> Result<GzipRecipe, RecipeError> {
    let unknown = || {
        RecipeError::Invalid(format!(
            "tiny recipe code {code:#04x}; update sideload on the device"
        ))
    };
    let (header, deflate) = match code {
        1..=9 | 0x41..=0x49 => {
            let level = code & !ZLIB_SYNC;
            let ending = match code & ZLIB_SYNC {
                0 => ZlibEnding::Finish,
                _ => ZlibEnding::SyncThenFinish,
            };
            let deflate = DeflateRecipe::Zlib {
                level,
                ending,
                plain_len,
            };
            (zlib_header(level), deflate)
        }
        GO_BASE..=0x1b => {
            let level = Level::new(i32::from(code - GO_BASE) - 2).map_err(|_| unknown())?;
            let header = GoGzipHeader::default()
                .to_bytes(level)
                .map_err(|_| unknown())?;
            let deflate = DeflateRecipe::Go {
                level,
                plain_len,
                writer: GoWriter::Go1_19_8,
                flushes: Vec::new(),
            };
            (header, deflate)
        }
        PGZIP_BASE..=0x2b => {
            let level = PgzipLevel::new(i32::from(code - PGZIP_BASE) - 2).map_err(|_| unknown())?;
            let deflate = DeflateRecipe::Pgzip {
                level,
                block_size: PGZIP_DEFAULT_BLOCK,
                plain_len,
                writer: PgzipWriterId::Pgzip1_2_5Klauspost1_15_12,
            };
            (pgzip_header(level).to_vec(), deflate)
        }
        _ => return Err(unknown()),
    };
    Ok(GzipRecipe {
        header,
        deflate,
        trailer: Trailer::Computed,
    })
}

/// The header Python's `gzip` (mtime 0) and `flate2`'s `GzBuilder` write at zlib `level`.
fn zlib_header(level: u8) -> Vec<u8> {
    let xfl = match level {
        9 => 2,
        1 => 4,
        _ => 0,
    };
    vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 255]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_default_writer_is_two_bytes_and_parses_back() {
        for code in (1..=9)
            .chain(0x41..=0x49)
            .chain(GO_BASE..=0x1b)
            .chain([0x21, 0x27])
        {
            let recipe = decode(code, 5000).unwrap_or_else(|e| panic!("{code:#x}: {e}"));
            assert_eq!(
                encode(&recipe, 5000),
                Some([RECIPE_TINY, code]),
                "{code:#x}"
            );
            let bytes = [RECIPE_TINY, code];
            assert_eq!(
                GzipRecipe::from_bytes_in_layer(&bytes, 5000, 10).unwrap(),
                recipe
            );
            assert_eq!(recipe.to_bytes_in_layer(5000), bytes);
            // Not the layer's length: the compact form, which names it.
            assert_ne!(recipe.to_bytes_in_layer(4999)[0], RECIPE_TINY);
        }
    }

    #[test]
    fn what_a_tiny_recipe_cannot_say_is_not_tiny() {
        let go = decode(GO_BASE + 8, 100).unwrap();
        let mut flushed = go.clone();
        if let DeflateRecipe::Go { flushes, .. } = &mut flushed.deflate {
            flushes.push(50);
        }
        assert_eq!(encode(&flushed, 100), None);
        let mut named = go.clone();
        named.header[9] = 3;
        assert_eq!(encode(&named, 100), None);
        let mut verbatim = go;
        verbatim.trailer = Trailer::Verbatim(vec![0; 8]);
        assert_eq!(encode(&verbatim, 100), None);
        // A pgzip level this build does not port, unknown codes, no layer.
        for code in [0, 10, 0x1c, 0x20, 0x2c, 0x40, 0x4a, 0xff] {
            let e = GzipRecipe::from_bytes_in_layer(&[RECIPE_TINY, code], 100, 10).unwrap_err();
            assert!(e.to_string().contains("update sideload"), "{code:#x}: {e}");
        }
        let e = GzipRecipe::from_bytes(&[RECIPE_TINY, 6], 10).unwrap_err();
        assert!(e.to_string().contains("without the layer"), "{e}");
    }
}
