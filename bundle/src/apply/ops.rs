//! The operations of one rebuilt layer, up to its `END_LAYER`: literals, copies and
//! differences from scratch, patches against scratch ranges. Each is checked against what the
//! layer may still grow by ([`LayerBudget`]) and the patch limits before anything is allocated.

use std::io::{self, BufReader, Read, Write};

use crate::error::Error;
use crate::limits::Limits;
use crate::payload::{PatchKind, PayloadReader, Record};
use crate::progress::Progress;
use crate::scratch::{Scratch, ZSTD_DICT_MAGIC};
use crate::stream::CappedReader;

/// Bytes of a MIX or MIX_RUNS record handled at a time.
const MIX_CHUNK: usize = 64 << 10;

/// What a layer has written of the `size` bytes the statement declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LayerBudget {
    size: u64,
    written: u64,
}

impl LayerBudget {
    /// Counts `len` more bytes; refuses if the layer would grow past its size.
    fn claim(&mut self, len: u64) -> Result<(), String> {
        match self.written.checked_add(len) {
            Some(total) if total <= self.size => {
                self.written = total;
                Ok(())
            }
            _ => Err(format!(
                "layer would grow past its declared {} bytes",
                self.size
            )),
        }
    }

    /// At `END_LAYER`: refuses a layer shorter than declared.
    fn end(&self) -> Result<(), String> {
        if self.written != self.size {
            return Err(format!(
                "layer ends after {} bytes, the statement declares {}",
                self.written, self.size
            ));
        }
        Ok(())
    }
}

/// One MIX_RUNS run of `zeros` unchanged bytes then `n` changed ones, out of `left` bytes the
/// record has still to make: the bytes left after it, or why the run is refused.
fn take_run(left: u64, zeros: u64, n: u64) -> Result<u64, &'static str> {
    match zeros.checked_add(n) {
        Some(0) => Err("an empty mix run"),
        Some(total) if total <= left => Ok(left - total),
        _ => Err("mix runs go past their length"),
    }
}

/// Applies one layer's operations from `reader` up to `END_LAYER`.
pub(super) struct LayerOps<'a> {
    /// The bundle, for errors.
    pub name: &'a str,
    /// The gathered base ranges.
    pub scratch: &'a Scratch,
    /// Largest window a zstd patch may use.
    pub window_log: u32,
    /// Caps on patches.
    pub limits: &'a Limits,
    /// Told of every byte written.
    pub progress: &'a dyn Progress,
}

impl LayerOps<'_> {
    /// Applies one layer's operations up to `END_LAYER`, writing exactly `size` bytes.
    pub fn apply<R: Read>(
        &self,
        reader: &mut PayloadReader<R>,
        size: u64,
        out: &mut impl Write,
    ) -> Result<(), Error> {
        let mut budget = LayerBudget { size, written: 0 };
        loop {
            let record = reader
                .next_record()
                .map_err(|e| self.corrupt(e.to_string()))?;
            let len = match record {
                Record::Literal { len } | Record::LiteralX86 { len } => len,
                Record::Copy { len, .. }
                | Record::Mix { len, .. }
                | Record::MixRuns { len, .. } => len,
                Record::Patch { out_len, .. } => out_len,
                Record::EndLayer => return budget.end().map_err(|e| self.corrupt(e)),
                other => return Err(self.corrupt(format!("unexpected {other:?} inside a layer"))),
            };
            budget.claim(len).map_err(|e| self.corrupt(e))?;
            self.operation(reader, record, out)?;
            self.progress.advance(len);
        }
    }

    /// Carries out one operation whose length was claimed.
    fn operation<R: Read>(
        &self,
        reader: &mut PayloadReader<R>,
        record: Record,
        out: &mut impl Write,
    ) -> Result<(), Error> {
        match record {
            Record::Literal { len } => {
                let copied = self.copy_split(&mut reader.body(len), out, &|e| self.corrupt(e))?;
                if copied != len {
                    return Err(self.corrupt("payload ends inside a literal".into()));
                }
            }
            Record::Copy {
                scratch_offset,
                len,
            } => {
                io::copy(
                    &mut self.scratch.range(self.name, scratch_offset, len)?,
                    out,
                )
                .map_err(|e| self.write_err(e))?;
            }
            Record::LiteralX86 { len } => {
                let mut unfiltered =
                    lzma_rust2::filter::bcj::BcjReader::new_x86(reader.body(len), 0);
                let n = self.copy_split(&mut unfiltered, out, &|e| self.corrupt(e))?;
                if n != len {
                    return Err(self.corrupt("payload ends inside an x86 literal".into()));
                }
            }
            Record::Mix {
                scratch_offset,
                len,
            } => {
                let mut base = self.scratch.range(self.name, scratch_offset, len)?;
                let mut body = reader.body(len);
                add_differences(&mut base, &mut body, len, &mut Vec::new(), out)
                    .map_err(|e| self.mix_error(e, "mix"))?;
            }
            Record::MixRuns {
                scratch_offset,
                len,
                body_len,
            } => self.mix_runs(reader, scratch_offset, len, body_len, out)?,
            Record::Patch {
                kind,
                scratch_offset,
                base_len,
                out_len,
                patch_len,
            } => self.patch(
                reader,
                kind,
                scratch_offset,
                base_len,
                out_len,
                patch_len,
                out,
            )?,
            other => return Err(self.corrupt(format!("unexpected {other:?} inside a layer"))),
        }
        Ok(())
    }

    /// A MIX_RUNS record: runs of scratch bytes copied as they are and runs with differences
    /// added, which must make exactly `len` bytes from exactly `body_len` body bytes.
    fn mix_runs<R: Read>(
        &self,
        reader: &mut PayloadReader<R>,
        scratch_offset: u64,
        len: u64,
        body_len: u64,
        out: &mut impl Write,
    ) -> Result<(), Error> {
        let mut base = self.scratch.range(self.name, scratch_offset, len)?;
        let mut body = reader.body(body_len);
        let mut chunk = Vec::new();
        let mut left = len;
        while left > 0 {
            let runs = crate::payload::read_body_varint(&mut body)
                .and_then(|zeros| {
                    let n = crate::payload::read_body_varint(&mut body)?;
                    Ok(zeros.zip(n))
                })
                .map_err(|e| self.corrupt(format!("mix runs: {e}")))?;
            let Some((zeros, n)) = runs else {
                return Err(self.corrupt("mix runs end before their length".into()));
            };
            left = take_run(left, zeros, n).map_err(|e| self.corrupt(e.into()))?;
            let copied =
                io::copy(&mut (&mut base).take(zeros), out).map_err(|e| self.write_err(e))?;
            if copied != zeros {
                return Err(self.corrupt("scratch ends inside a mix run".into()));
            }
            add_differences(&mut base, &mut body, n, &mut chunk, out)
                .map_err(|e| self.mix_error(e, "mix runs"))?;
        }
        let mut rest = [0u8; 1];
        if body
            .read(&mut rest)
            .map_err(|e| self.corrupt(format!("mix runs: {e}")))?
            != 0
        {
            return Err(self.corrupt("mix runs longer than their length".into()));
        }
        Ok(())
    }

    /// A PATCH record: `patch_len` body bytes applied to `base_len` scratch bytes at
    /// `scratch_offset`, which must make exactly `out_len` bytes and be read to their end.
    #[allow(clippy::too_many_arguments)]
    fn patch<R: Read>(
        &self,
        reader: &mut PayloadReader<R>,
        kind: PatchKind,
        scratch_offset: u64,
        base_len: u64,
        out_len: u64,
        patch_len: u64,
        out: &mut impl Write,
    ) -> Result<(), Error> {
        if out_len == 0 {
            return Err(self.corrupt("a patch that outputs nothing".into()));
        }
        check_patch_limits(self.name, base_len, out_len, patch_len, self.limits)?;
        // Checks the range before allocating for it.
        let base = self.scratch.read_at(self.name, scratch_offset, base_len)?;
        if base.starts_with(&ZSTD_DICT_MAGIC) {
            return Err(self.corrupt("a patch base starts with the zstd dictionary magic".into()));
        }
        let mut body = reader.body(patch_len);
        let produced = match kind {
            PatchKind::Zstd => self.zstd_patch(&mut body, &base, out_len, out)?,
            PatchKind::Bsdiff | PatchKind::BsdiffX86 => {
                self.bsdiff_patch(&mut body, kind, &base, patch_len, out_len, out)?
            }
        };
        // Both decoders must have consumed the whole patch body.
        let rest = io::copy(&mut body, &mut io::sink()).map_err(|e| self.corrupt(e.to_string()))?;
        if produced != out_len || rest != 0 {
            return Err(self.corrupt(format!(
                "patch produced {produced} bytes (declared {out_len}) and left {rest} patch bytes unread"
            )));
        }
        Ok(())
    }

    /// Applies a zstd patch (the base as its prefix); returns the bytes it made.
    fn zstd_patch(
        &self,
        body: &mut impl Read,
        base: &[u8],
        out_len: u64,
        out: &mut impl Write,
    ) -> Result<u64, Error> {
        // The base by reference, as a prefix (decodes like a raw-content dictionary, without
        // zstd taking a second copy of up to 64 MiB).
        let mut dec = zstd::stream::read::Decoder::with_ref_prefix(BufReader::new(body), base)
            .map_err(|e| self.corrupt(format!("zstd patch: {e}")))?;
        dec.window_log_max(self.window_log)
            .map_err(|e| self.corrupt(format!("zstd patch: {e}")))?;
        let mut dec = dec.single_frame();
        let mut capped = CappedReader::new(&mut dec, out_len, "patch output");
        let n = self.copy_split(&mut capped, out, &|e| {
            self.corrupt(format!("zstd patch: {e}"))
        })?;
        // Nothing may follow the one frame, not even in zstd's read buffer.
        if !dec.finish().buffer().is_empty() {
            return Err(self.corrupt("data after the zstd patch's frame".into()));
        }
        Ok(n)
    }

    /// Applies a bsdiff-layout patch; returns the bytes it made.
    fn bsdiff_patch(
        &self,
        body: &mut impl Read,
        kind: PatchKind,
        base: &[u8],
        patch_len: u64,
        out_len: u64,
        out: &mut impl Write,
    ) -> Result<u64, Error> {
        let mut patch = Vec::with_capacity(patch_len.min(1 << 20) as usize);
        body.read_to_end(&mut patch)
            .map_err(|e| self.corrupt(format!("bsdiff patch: {e}")))?;
        let apply = if kind == PatchKind::Bsdiff {
            crate::bspatch::apply
        } else {
            crate::bspatch::apply_x86
        };
        let new = apply(base, &patch, out_len as usize)
            .map_err(|e| self.corrupt(format!("bsdiff patch: {e}")))?;
        out.write_all(&new).map_err(|e| self.write_err(e))?;
        Ok(new.len() as u64)
    }

    /// Copies `reader` to `writer`, telling read errors (the bundle's) from write errors (the
    /// device's) apart.
    fn copy_split(
        &self,
        reader: &mut impl Read,
        writer: &mut impl Write,
        read_err: &dyn Fn(String) -> Error,
    ) -> Result<u64, Error> {
        let mut buf = [0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_err(e.to_string())),
            };
            writer.write_all(&buf[..n]).map_err(|e| self.write_err(e))?;
            total += n as u64;
        }
    }

    fn mix_error(&self, failure: MixFailure, record: &str) -> Error {
        match failure {
            MixFailure::Scratch(e) => Error::io("reading scratch", "scratch")(e),
            MixFailure::Body(e) => self.corrupt(format!("{record}: {e}")),
            MixFailure::Write(e) => self.write_err(e),
        }
    }

    fn corrupt(&self, reason: String) -> Error {
        Error::CorruptPayload {
            bundle: self.name.to_owned(),
            reason,
        }
    }

    /// A failed write is the device's problem (full disk), not the bundle's.
    fn write_err(&self, e: io::Error) -> Error {
        Error::Io {
            what: "writing a rebuilt layer of",
            path: self.name.into(),
            source: e,
        }
    }
}

/// The caps on one patch: its base, its output, and the patch itself (never much larger than
/// its output: bsdiff's raw form is about output + 24 bytes per control triple).
fn check_patch_limits(
    name: &str,
    base_len: u64,
    out_len: u64,
    patch_len: u64,
    limits: &Limits,
) -> Result<(), Error> {
    crate::container::check_limit(name, "patch base", base_len, limits.max_patch_base)?;
    crate::container::check_limit(name, "patch output", out_len, limits.max_patch_output)?;
    crate::container::check_limit(
        name,
        "patch",
        patch_len,
        limits.max_patch_output.saturating_mul(2),
    )
}

/// Where adding a record's differences to scratch bytes failed.
enum MixFailure {
    Scratch(io::Error),
    Body(io::Error),
    Write(io::Error),
}

/// Writes the next `n` bytes of `base` plus (mod 256) the next `n` bytes of `body`, a chunk
/// at a time in `buf` (MIX and MIX_RUNS).
fn add_differences(
    base: &mut impl Read,
    body: &mut impl Read,
    mut n: u64,
    buf: &mut Vec<u8>,
    out: &mut impl Write,
) -> Result<(), MixFailure> {
    while n > 0 {
        let k = n.min(MIX_CHUNK as u64) as usize;
        buf.resize(2 * k, 0);
        let (old, diff) = buf.split_at_mut(k);
        base.read_exact(old).map_err(MixFailure::Scratch)?;
        body.read_exact(diff).map_err(MixFailure::Body)?;
        for (d, o) in diff.iter_mut().zip(old.iter()) {
            *d = d.wrapping_add(*o);
        }
        out.write_all(diff).map_err(MixFailure::Write)?;
        n -= k as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_may_not_grow_past_its_size_nor_end_short_of_it() {
        let mut budget = LayerBudget {
            size: 10,
            written: 0,
        };
        budget.claim(4).unwrap();
        assert_eq!(
            budget.end().unwrap_err(),
            "layer ends after 4 bytes, the statement declares 10"
        );
        assert!(budget.claim(7).is_err());
        assert_eq!(budget.written, 4, "a refused claim counts nothing");
        budget.claim(6).unwrap();
        budget.end().unwrap();
        assert!(budget.claim(u64::MAX).is_err());
    }

    #[test]
    fn mix_runs_must_make_progress_and_stay_inside_their_length() {
        assert_eq!(take_run(10, 3, 4), Ok(3));
        assert_eq!(take_run(10, 0, 10), Ok(0));
        assert_eq!(take_run(10, 0, 0), Err("an empty mix run"));
        assert_eq!(take_run(10, 6, 5), Err("mix runs go past their length"));
        assert_eq!(
            take_run(10, u64::MAX, 1),
            Err("mix runs go past their length")
        );
    }

    #[test]
    fn differences_add_to_the_base_bytes_modulo_256() {
        let base = [1u8, 2, 250, 0];
        let diff = [1u8, 0, 10, 255];
        let mut out = Vec::new();
        add_differences(&mut &base[..], &mut &diff[..], 4, &mut Vec::new(), &mut out)
            .ok()
            .unwrap();
        assert_eq!(out, [2, 2, 4, 255]);
        // A body shorter than the run is the bundle's fault, a short base the scratch's.
        let short = add_differences(
            &mut &base[..],
            &mut &diff[..2],
            4,
            &mut Vec::new(),
            &mut out,
        );
        assert!(matches!(short, Err(MixFailure::Body(_))));
        let short = add_differences(
            &mut &base[..2],
            &mut &diff[..],
            4,
            &mut Vec::new(),
            &mut out,
        );
        assert!(matches!(short, Err(MixFailure::Scratch(_))));
    }

    #[test]
    fn patches_over_the_limits_are_refused_before_anything_is_read() {
        let limits = Limits::default();
        check_patch_limits("b", 1, 1, 1, &limits).unwrap();
        for (base, out, patch) in [
            (limits.max_patch_base + 1, 1, 1),
            (1, limits.max_patch_output + 1, 1),
            (1, 1, limits.max_patch_output * 2 + 1),
        ] {
            assert!(check_patch_limits("b", base, out, patch, &limits).is_err());
        }
    }
}
