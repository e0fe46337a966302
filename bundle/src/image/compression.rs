//! Layer compression: detection by magic bytes, decompression with a capped zstd window, and
//! the verified layer stream every [`ImageSource`](super::ImageSource) hands out.
//!
//! The media type a manifest declares is not trusted for the compression: the first bytes of
//! the blob decide. Detection peeks at a small prefix and gives it back, so nothing is consumed.

use std::fmt;
use std::io::{self, BufReader, Read};

use flate2::read::MultiGzDecoder;

use super::digest_reader::DigestReader;
use super::{Compression, Layer};

/// Largest zstd window a layer may need: `2^27` bytes (128 MiB), what `zstd --long=27` uses.
/// A frame that asks for more is refused instead of allocating it.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 27;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The compression `prefix` (the first bytes of a blob, at least 4 when the blob has them)
/// announces.
pub fn detect(prefix: &[u8]) -> Compression {
    if prefix.starts_with(&ZSTD_MAGIC) {
        Compression::Zstd
    } else if prefix.starts_with(&GZIP_MAGIC) {
        Compression::Gzip
    } else {
        Compression::None
    }
}

/// A reader whose first bytes were looked at and are given back before the rest.
pub type Sniffed<R> = io::Chain<io::Cursor<Vec<u8>>, R>;

/// Reads up to 4 bytes of `r` to detect its compression and returns a reader that yields all
/// of `r`'s bytes, those 4 included.
pub fn sniff<R: Read>(mut r: R) -> io::Result<(Compression, Sniffed<R>)> {
    let mut prefix = [0u8; 4];
    let mut have = 0;
    while have < prefix.len() {
        match r.read(&mut prefix[have..]) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    let prefix = prefix[..have].to_vec();
    let compression = detect(&prefix);
    Ok((compression, io::Cursor::new(prefix).chain(r)))
}

enum Decoder<R: Read> {
    Plain(R),
    Gzip(MultiGzDecoder<R>),
    Zstd(zstd::stream::read::Decoder<'static, BufReader<R>>),
}

/// The uncompressed stream of a blob. At the decompressor's end it reads what is left of the
/// compressed input (trailing bytes after the last frame), so an adapter below it, such as a
/// [`DigestReader`] on the blob, always sees the whole blob and gets to check it.
pub struct Decompressed<R: Read> {
    decoder: Decoder<R>,
    drained: bool,
}

impl<R: Read> fmt::Debug for Decompressed<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.decoder {
            Decoder::Plain(_) => "plain",
            Decoder::Gzip(_) => "gzip",
            Decoder::Zstd(_) => "zstd",
        };
        f.debug_struct("Decompressed")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

impl<R: Read> Decompressed<R> {
    /// Decompresses `r` as `compression` says (the zstd window is capped at
    /// [`ZSTD_WINDOW_LOG_MAX`]).
    pub fn new(r: R, compression: Compression) -> io::Result<Self> {
        let decoder = match compression {
            Compression::None => Decoder::Plain(r),
            Compression::Gzip => Decoder::Gzip(MultiGzDecoder::new(r)),
            Compression::Zstd => {
                let mut d = zstd::stream::read::Decoder::new(r)?;
                d.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
                Decoder::Zstd(d)
            }
        };
        Ok(Decompressed {
            decoder,
            drained: false,
        })
    }

    fn drain_input(&mut self) -> io::Result<()> {
        let sink = &mut io::sink();
        match &mut self.decoder {
            Decoder::Plain(r) => io::copy(r, sink)?,
            Decoder::Gzip(d) => io::copy(d.get_mut(), sink)?,
            Decoder::Zstd(d) => io::copy(d.get_mut(), sink)?,
        };
        Ok(())
    }
}

impl<R: Read> Read for Decompressed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match &mut self.decoder {
            Decoder::Plain(r) => r.read(buf)?,
            Decoder::Gzip(d) => d.read(buf)?,
            Decoder::Zstd(d) => d.read(buf)?,
        };
        if n == 0 && !buf.is_empty() && !self.drained {
            self.drained = true;
            self.drain_input()?;
        }
        Ok(n)
    }
}

/// Detects the compression of `r` and returns it with its uncompressed stream.
pub fn decompress<'a, R: Read + Send + 'a>(
    r: R,
) -> io::Result<(Compression, Box<dyn Read + Send + 'a>)> {
    let (compression, r) = sniff(r)?;
    Ok((compression, Box::new(Decompressed::new(r, compression)?)))
}

/// The stream a consumer of `layer` gets from the stored `blob`: the blob is checked against
/// `blob_digest` and `blob_size`, decompressed (whatever its compression), and the result is
/// checked against `diff_id`. Both checks fail with `InvalidData` at end of stream. `what` names
/// the layer in errors.
pub fn verified_layer<'a, R: Read + Send + 'a>(
    blob: R,
    layer: &Layer,
    what: &str,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    let blob = DigestReader::new(
        blob,
        layer.blob_digest.clone(),
        Some(layer.blob_size),
        format!("{what} blob"),
    );
    let (compression, blob) = sniff(blob)?;
    if compression == Compression::None && layer.blob_digest == layer.diff_id {
        // The blob is the tar: its check is the diff_id check.
        return Ok(Box::new(blob));
    }
    let tar = Decompressed::new(blob, compression)?;
    Ok(Box::new(DigestReader::new(
        tar,
        layer.diff_id.clone(),
        None,
        format!("{what} (uncompressed)"),
    )))
}

/// The stored blob of `layer`, checked against `blob_digest` and `blob_size` at end of stream.
pub fn verified_blob<'a, R: Read + Send + 'a>(
    blob: R,
    layer: &Layer,
    what: &str,
) -> Box<dyn Read + Send + 'a> {
    Box::new(DigestReader::new(
        blob,
        layer.blob_digest.clone(),
        Some(layer.blob_size),
        format!("{what} blob"),
    ))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use sideload_signing::Digest;

    use super::super::digest_reader::{as_mismatch, DigestMismatch};
    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn layer(blob: &[u8], tar: &[u8]) -> Layer {
        Layer {
            diff_id: Digest::of_bytes(tar),
            blob_digest: Digest::of_bytes(blob),
            media_type: "x".into(),
            blob_size: blob.len() as u64,
        }
    }

    fn read_all(mut r: impl Read) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        r.read_to_end(&mut v)?;
        Ok(v)
    }

    #[test]
    fn detects_by_magic() {
        assert_eq!(detect(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Compression::Zstd);
        assert_eq!(detect(b"usr/"), Compression::None);
        assert_eq!(detect(&[]), Compression::None);
        assert_eq!(detect(&[0x28, 0xb5]), Compression::None);
        assert_eq!(detect(&gzip(b"x")), Compression::Gzip);
        assert_eq!(
            detect(&zstd::encode_all(&b"x"[..], 3).unwrap()),
            Compression::Zstd
        );
    }

    #[test]
    fn sniff_gives_back_the_prefix() {
        for data in [&b""[..], b"ab", b"abcd", b"abcdefgh"] {
            let (c, r) = sniff(data).unwrap();
            assert_eq!(c, Compression::None);
            assert_eq!(read_all(r).unwrap(), data);
        }
        let z = zstd::encode_all(&b"hello"[..], 3).unwrap();
        let (c, r) = sniff(&z[..]).unwrap();
        assert_eq!(c, Compression::Zstd);
        assert_eq!(read_all(r).unwrap(), z);
    }

    #[test]
    fn decompresses_all_three() {
        let tar = b"pretend this is a tar".repeat(100);
        for blob in [
            tar.clone(),
            gzip(&tar),
            zstd::encode_all(&tar[..], 3).unwrap(),
        ] {
            let (_, r) = decompress(&blob[..]).unwrap();
            assert_eq!(read_all(r).unwrap(), tar);
            let l = layer(&blob, &tar);
            assert_eq!(
                read_all(verified_layer(&blob[..], &l, "layer 0").unwrap()).unwrap(),
                tar
            );
        }
    }

    #[test]
    fn multi_member_gzip_is_read_whole() {
        let mut blob = gzip(b"first ");
        blob.extend(gzip(b"second"));
        let (_, r) = decompress(&blob[..]).unwrap();
        assert_eq!(read_all(r).unwrap(), b"first second");
    }

    #[test]
    fn wrong_diff_id_fails_at_end() {
        let tar = b"the real bytes".to_vec();
        let blob = gzip(&tar);
        let mut l = layer(&blob, &tar);
        l.diff_id = Digest::of_bytes(b"other bytes");
        let err = read_all(verified_layer(&blob[..], &l, "layer 3").unwrap()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(matches!(
            as_mismatch(&err),
            Some(DigestMismatch::Digest { .. })
        ));
        assert!(err.to_string().contains("layer 3"), "{err}");
    }

    fn skippable_frame(content: &[u8]) -> Vec<u8> {
        let mut f = vec![0x50, 0x2a, 0x4d, 0x18];
        f.extend((content.len() as u32).to_le_bytes());
        f.extend(content);
        f
    }

    #[test]
    fn blob_check_sees_bytes_the_decompressor_skips() {
        let tar = b"the real bytes".to_vec();
        let mut blob = zstd::encode_all(&tar[..], 3).unwrap();
        blob.extend(skippable_frame(b"metadata"));
        let l = layer(&blob, &tar);
        assert_eq!(
            read_all(verified_layer(&blob[..], &l, "layer 1").unwrap()).unwrap(),
            tar
        );

        // Same length, same uncompressed content, different blob bytes: the blob digest fails.
        let mut tampered = zstd::encode_all(&tar[..], 3).unwrap();
        tampered.extend(skippable_frame(b"METADATA"));
        assert_eq!(tampered.len(), blob.len());
        let err = read_all(verified_layer(&tampered[..], &l, "layer 1").unwrap()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("layer 1 blob"), "{err}");
    }

    #[test]
    fn zstd_window_above_cap_is_refused() {
        let data = vec![0u8; 1024];
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
        enc.long_distance_matching(true).unwrap();
        enc.window_log(28).unwrap();
        // Declare the big window in the frame header by not pledging a small content size.
        enc.include_contentsize(false).unwrap();
        enc.write_all(&data).unwrap();
        let blob = enc.finish().unwrap();
        let (_, r) = decompress(&blob[..]).unwrap();
        assert!(read_all(r).is_err());
    }
}
