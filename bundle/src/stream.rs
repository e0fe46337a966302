//! Stream adapters of the decoder: hash-and-count a stream whose digest is compared later, and a
//! hard cap on how much a stream may yield. (Digest-checking readers and hashing writers for
//! blobs are in [`crate::image::digest_reader`].)

use std::io::{self, Read};

use sideload_signing::Digest;

use crate::image::digest_reader::Sha256;

/// Passes bytes through from `inner`, hashing and counting them; the caller compares the
/// digest when it chooses (the payload's digest is compared after decoding, so that a damaged
/// payload can be reported as such rather than as whatever decoding error it caused first).
pub struct HashingReader<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`.
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hash: Sha256::new(),
        }
    }

    /// Digest and count of everything read.
    pub fn finish(self) -> (Digest, u64) {
        let count = self.hash.count();
        (self.hash.finish(), count)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Fails with `InvalidData` as soon as more than `cap` bytes come out of `inner`: a payload that
/// decompresses past its declared size is stopped there, not after filling the disk.
pub struct CappedReader<R> {
    inner: R,
    remaining: u64,
    what: &'static str,
}

impl<R> CappedReader<R> {
    /// Wraps `inner`, allowing at most `cap` bytes.
    pub fn new(inner: R, cap: u64, what: &'static str) -> Self {
        CappedReader {
            inner,
            remaining: cap,
            what,
        }
    }

    /// The wrapped reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// The wrapped reader, in place.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Bytes still allowed.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // Ask for one byte more than allowed so an overrun is seen, not silently cut.
        let allowed = usize::try_from(self.remaining.saturating_add(1)).unwrap_or(usize::MAX);
        let want = buf.len().min(allowed);
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.remaining {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is larger than declared", self.what),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_reader_stops_overrun() {
        let data = [7u8; 100];
        let mut ok = CappedReader::new(&data[..], 100, "x");
        assert_eq!(io::copy(&mut ok, &mut io::sink()).unwrap(), 100);
        let mut over = CappedReader::new(&data[..], 99, "payload");
        let err = io::copy(&mut over, &mut io::sink()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("payload is larger than declared"));
    }

    #[test]
    fn hashing_reader() {
        let mut r = HashingReader::new(&b"abc"[..]);
        io::copy(&mut r, &mut io::sink()).unwrap();
        assert_eq!(r.finish(), (Digest::of_bytes(b"abc"), 3));
    }
}
