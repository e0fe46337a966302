//! Stream adapters that hash bytes as they pass: [`DigestReader`] checks a digest (and
//! optionally a length) at end of stream, [`HashingWriter`] computes one while writing.
//!
//! A mismatch is reported as an `io::Error` of kind `InvalidData` whose inner error is a
//! [`DigestMismatch`] (downcast it to get the digests), so the adapter can sit inside any chain
//! of readers (decompressors, tar parsers, `io::copy`).

use std::fmt;
use std::io::{self, Read, Write};

use ring::digest::{Context, SHA256};
use sideload_signing::Digest;

/// A streaming sha256 that yields a [`Digest`].
#[derive(Clone)]
pub struct Sha256 {
    context: Context,
    count: u64,
}

impl Default for Sha256 {
    fn default() -> Self {
        Sha256::new()
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sha256")
            .field("count", &self.count)
            .finish()
    }
}

impl Sha256 {
    /// A fresh hash.
    pub fn new() -> Sha256 {
        Sha256 {
            context: Context::new(&SHA256),
            count: 0,
        }
    }

    /// Adds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.context.update(bytes);
        self.count += bytes.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The digest of everything added.
    pub fn finish(self) -> Digest {
        Digest::from_sha256(self.context.finish().as_ref())
    }
}

/// What a [`DigestReader`] found wrong at end of stream (or, for a length cap, on the way).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestMismatch {
    /// The bytes hash to something else.
    #[error("{what}: expected {expected}, got {actual} ({count} bytes)")]
    Digest {
        /// What the stream is.
        what: String,
        /// The digest the stream should have.
        expected: Digest,
        /// The digest it has.
        actual: Digest,
        /// Bytes read.
        count: u64,
    },
    /// More or fewer bytes than declared.
    #[error("{what}: expected {expected} bytes, got {}{actual}", if *.over { "more than " } else { "" })]
    Length {
        /// What the stream is.
        what: String,
        /// Declared length.
        expected: u64,
        /// Bytes read (when `over`, the count at which reading stopped).
        actual: u64,
        /// True when the stream went past the declared length (reading stopped there).
        over: bool,
    },
}

impl DigestMismatch {
    fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }
}

/// Passes bytes through, hashing them; at end of stream fails with `InvalidData` unless they
/// hash to `expected` (and, when given, number exactly `expected_len`).
///
/// With an expected length, reading past it fails at once, so a hostile source cannot make the
/// reader consume more than declared. The check runs once, on the first end-of-stream read;
/// later reads return 0 (or the same error again).
pub struct DigestReader<R> {
    inner: R,
    hash: Option<Sha256>,
    count: u64,
    expected: Digest,
    expected_len: Option<u64>,
    what: String,
    failed: Option<DigestMismatch>,
}

impl<R> fmt::Debug for DigestReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestReader")
            .field("what", &self.what)
            .field("expected", &self.expected)
            .field("expected_len", &self.expected_len)
            .finish_non_exhaustive()
    }
}

impl<R: Read> DigestReader<R> {
    /// Checks `inner` against `expected`; `what` names the stream in errors.
    pub fn new(
        inner: R,
        expected: Digest,
        expected_len: Option<u64>,
        what: impl Into<String>,
    ) -> Self {
        DigestReader {
            inner,
            hash: Some(Sha256::new()),
            count: 0,
            expected,
            expected_len,
            what: what.into(),
            failed: None,
        }
    }

    /// Bytes passed so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The wrapped reader.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    fn fail(&mut self, m: DigestMismatch) -> io::Error {
        self.failed = Some(m.clone());
        m.into_io()
    }

    fn check_end(&mut self) -> io::Result<()> {
        let Some(hash) = self.hash.take() else {
            return Ok(());
        };
        let count = hash.count();
        if let Some(len) = self.expected_len {
            if count != len {
                return Err(self.fail(DigestMismatch::Length {
                    what: self.what.clone(),
                    expected: len,
                    actual: count,
                    over: false,
                }));
            }
        }
        let actual = hash.finish();
        if actual != self.expected {
            return Err(self.fail(DigestMismatch::Digest {
                what: self.what.clone(),
                expected: self.expected.clone(),
                actual,
                count,
            }));
        }
        Ok(())
    }
}

impl<R: Read> Read for DigestReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(m) = &self.failed {
            return Err(m.clone().into_io());
        }
        if buf.is_empty() {
            return Ok(0);
        }
        if self.hash.is_none() {
            return Ok(0);
        }
        let before = self.count;
        // With a declared length, never ask for more than what is left, and once nothing is
        // left, for one byte only: enough to notice an overlong stream without consuming it.
        let want = match self.expected_len {
            Some(len) => match len.saturating_sub(before) {
                0 => 1,
                left => buf.len().min(usize::try_from(left).unwrap_or(usize::MAX)),
            },
            None => buf.len(),
        };
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            self.check_end()?;
            return Ok(0);
        }
        let after = before + n as u64;
        self.count = after;
        if let Some(hash) = self.hash.as_mut() {
            hash.update(&buf[..n]);
        }
        if let Some(len) = self.expected_len {
            if after > len {
                return Err(self.fail(DigestMismatch::Length {
                    what: self.what.clone(),
                    expected: len,
                    actual: after,
                    over: true,
                }));
            }
        }
        Ok(n)
    }
}

/// Passes bytes through to `inner`, hashing and counting them.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hash: Sha256::new(),
        }
    }

    /// Bytes written so far.
    pub fn count(&self) -> u64 {
        self.hash.count()
    }

    /// The inner writer (writing to it directly bypasses the hash).
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The inner writer, the digest and the count of what was written.
    pub fn finish(self) -> (W, Digest, u64) {
        let count = self.hash.count();
        (self.inner, self.hash.finish(), count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes and counts everything `reader` yields, without keeping it.
pub fn digest_of_reader(mut reader: impl Read) -> io::Result<(Digest, u64)> {
    let mut w = HashingWriter::new(io::sink());
    io::copy(&mut reader, &mut w)?;
    let (_, digest, count) = w.finish();
    Ok((digest, count))
}

/// The [`DigestMismatch`] inside an `io::Error`, if that is what it is.
pub fn as_mismatch(e: &io::Error) -> Option<&DigestMismatch> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<DigestMismatch>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(r: &mut impl Read) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn matching_digest_passes_all_bytes() {
        let data = b"hello layer".to_vec();
        let mut r = DigestReader::new(&data[..], Digest::of_bytes(&data), Some(11), "test");
        assert_eq!(read_all(&mut r).unwrap(), data);
        assert_eq!(r.count(), 11);
        // Further reads after a good end stay at end.
        assert_eq!(r.read(&mut [0u8; 4]).unwrap(), 0);
    }

    #[test]
    fn digest_mismatch_fails_at_eof_with_invalid_data() {
        let data = b"tampered".to_vec();
        let expected = Digest::of_bytes(b"original");
        let mut r = DigestReader::new(&data[..], expected.clone(), None, "layer 0");
        let mut buf = [0u8; 64];
        // The bytes pass first: the check is at end of stream.
        assert_eq!(r.read(&mut buf).unwrap(), 8);
        let err = r.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        match as_mismatch(&err).unwrap() {
            DigestMismatch::Digest {
                expected: e,
                actual,
                count,
                what,
            } => {
                assert_eq!(e, &expected);
                assert_eq!(actual, &Digest::of_bytes(&data));
                assert_eq!(*count, 8);
                assert_eq!(what, "layer 0");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains(expected.as_str()));
        // And it keeps failing.
        assert_eq!(
            r.read(&mut buf).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn short_stream_fails_length_check() {
        let data = b"abc".to_vec();
        let mut r = DigestReader::new(&data[..], Digest::of_bytes(&data), Some(4), "blob");
        let err = read_all(&mut r).unwrap_err();
        assert!(matches!(
            as_mismatch(&err),
            Some(DigestMismatch::Length {
                expected: 4,
                actual: 3,
                over: false,
                ..
            })
        ));
    }

    #[test]
    fn long_stream_fails_as_soon_as_it_passes_the_length() {
        let data = vec![7u8; 10_000];
        let mut r = DigestReader::new(&data[..], Digest::of_bytes(&data), Some(100), "blob");
        let mut buf = vec![0u8; 8192];
        // The declared bytes pass; the first byte past them fails.
        assert_eq!(r.read(&mut buf).unwrap(), 100);
        let err = r.read(&mut buf).unwrap_err();
        assert!(matches!(
            as_mismatch(&err),
            Some(DigestMismatch::Length {
                expected: 100,
                actual: 101,
                over: true,
                ..
            })
        ));
    }

    #[test]
    fn hashing_writer_matches_of_bytes() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"abc").unwrap();
        w.write_all(b"def").unwrap();
        let (inner, digest, count) = w.finish();
        assert_eq!(inner, b"abcdef");
        assert_eq!(digest, Digest::of_bytes(b"abcdef"));
        assert_eq!(count, 6);
        assert_eq!(
            digest_of_reader(&b"abcdef"[..]).unwrap(),
            (Digest::of_bytes(b"abcdef"), 6)
        );
    }
}
