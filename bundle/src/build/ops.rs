//! The operations of one target layer: its spooled bytes walked with its plan, each region
//! written as a copy, a patch (decided in [`super::patch`]) or literal records, and the tar
//! metadata between them as literals or as differences to the base's (MIX_RUNS).

use std::fs::File;
use std::io::{Read, Write};

use crate::delta::{BaseRef, LayerScan, Region, RegionPlan};
use crate::error::Error;
use crate::payload::{MixRuns, PatchKind, PayloadWriter};
use crate::progress::Progress;

use super::patch::{compute_patches, DecidedPatch, PatchContext, PatchDecisions, Piece};
use super::plan::mix_base;
use super::scan::BaseLayers;
use super::DeltaStats;

/// Size of one literal record; also the read buffer of the encoder.
const LITERAL_CHUNK: usize = 1 << 20;

/// Run bytes (differences and their lengths) queued before a MIX_RUNS record is written: the
/// encoder's memory for them, and a bound on one record.
const MAX_QUEUED_RUNS: usize = 1 << 20;

/// Largest metadata gap sent as a MIX (a gap is usually one or two 512-byte headers; a long
/// run of directory entries is sent literally instead of held in memory).
const MAX_MIX: u64 = 1 << 20;

/// Whether metadata goes as its difference to the base's (most bytes equal) rather than
/// literally.
fn worth_mixing(new: &[u8], old: &[u8]) -> bool {
    let same = new.iter().zip(old).filter(|(n, o)| n == o).count();
    same * 2 >= new.len()
}

/// Emits one target layer's operations from its spooled bytes and its plan.
#[derive(Clone)]
pub(super) struct LayerEncoder<'a> {
    /// Scratch, its layout, the patch level and time budget, the bundle's name.
    pub ctx: PatchContext<'a>,
    /// Copies and header differences not yet written, so that the next one can extend them
    /// when it continues in scratch: (scratch offset, what they make). Written as one COPY if
    /// nothing differs, else as one MIX_RUNS.
    pub pending: Option<(u64, MixRuns)>,
    /// The base layers' scans (for the metadata a gap is mixed against).
    pub base_scans: &'a [LayerScan],
    /// The base layers (for the names of the images copies and patches draw from).
    pub bases: &'a BaseLayers<'a>,
    /// What the layer is made of so far.
    pub stats: DeltaStats,
    /// Told of every byte of the layer written.
    pub progress: &'a dyn Progress,
}

impl<'a> LayerEncoder<'a> {
    /// A fresh encoder for one layer.
    pub fn new(
        ctx: PatchContext<'a>,
        base_scans: &'a [LayerScan],
        bases: &'a BaseLayers<'a>,
        progress: &'a dyn Progress,
    ) -> Self {
        LayerEncoder {
            ctx,
            pending: None,
            base_scans,
            bases,
            stats: DeltaStats::default(),
            progress,
        }
    }

    /// Writes the layer's operations: its patches worked out first (from `spool_file`), then
    /// its bytes read in order from `spool`.
    pub fn encode<W: Write>(
        &mut self,
        writer: &mut PayloadWriter<W>,
        spool_file: &File,
        spool: &mut impl Read,
        scan: &LayerScan,
        plan: &[RegionPlan],
    ) -> Result<(), Error> {
        let mut patches = compute_patches(&self.ctx, spool_file, scan, plan)?;
        let mut pos = 0u64;
        for (i, (region, plan)) in scan.regions.iter().zip(plan).enumerate() {
            if let RegionPlan::CopyWithHeaders(at) = plan {
                if region.gap_offset == pos {
                    // Headers and content as the base has them: one copy, merged with the
                    // previous one when the base bytes follow on.
                    skip(spool, region.offset + region.len - pos).map_err(self.io_err())?;
                    pos = region.offset + region.len;
                    self.copy(writer, self.ctx.layout.scratch_offset(at), at.len)?;
                    self.copied(region.len, at);
                    self.progress.advance(at.len);
                    continue;
                }
            }
            let base_gap = mix_base(plan, region, self.base_scans);
            self.gap(writer, spool, region.offset - pos, base_gap)?;
            pos = region.offset + region.len;
            match plan {
                RegionPlan::CopyWithHeaders(at) | RegionPlan::Copy(at) => {
                    self.copy_content(writer, spool, region, at)?
                }
                RegionPlan::Patch(at) => {
                    self.patched_file(writer, spool, region, at, &mut patches, i)?
                }
                RegionPlan::Literal => {
                    tracing::debug!(
                        path = %String::from_utf8_lossy(&region.path),
                        len = region.len,
                        "literal file (no base file like it)"
                    );
                    self.file_literal(writer, spool, region.len)?
                }
            }
        }
        self.literal(writer, spool, scan.len - pos)?;
        self.flush_copy(writer)
    }

    /// Counts a copied file of `len` bytes drawn from `at`.
    fn copied(&mut self, len: u64, at: &BaseRef) {
        self.stats.copied_files += 1;
        self.stats.copied_bytes += len;
        self.stats.bases.push(self.bases.reference(at.layer));
    }

    /// Copies a region's content (the end of `at`, which may also cover the base's headers:
    /// those are not where the gap starts, so the content is copied alone).
    fn copy_content<W: Write>(
        &mut self,
        writer: &mut PayloadWriter<W>,
        spool: &mut impl Read,
        region: &Region,
        at: &BaseRef,
    ) -> Result<(), Error> {
        let content = at.offset + at.len - region.len;
        let at = BaseRef {
            offset: content,
            len: region.len,
            ..*at
        };
        skip(spool, region.len).map_err(self.io_err())?;
        self.copy(writer, self.ctx.layout.scratch_offset(&at), region.len)?;
        self.copied(region.len, &at);
        self.progress.advance(region.len);
        Ok(())
    }

    /// Sends region `i`, planned as a patch against `at`, piece by piece as decided in
    /// `patches` (literally where no patch was smaller).
    fn patched_file<W: Write>(
        &mut self,
        writer: &mut PayloadWriter<W>,
        spool: &mut impl Read,
        region: &Region,
        at: &BaseRef,
        patches: &mut PatchDecisions,
        i: usize,
    ) -> Result<(), Error> {
        let pieces = patches.remove(&i).unwrap_or_else(|| {
            vec![Piece {
                len: region.len,
                patch: None,
            }]
        });
        let mut kind = None;
        let (count, patch_bytes) = (pieces.len(), self.stats.patch_bytes);
        for piece in pieces {
            let mut new = vec![0u8; piece.len as usize];
            spool.read_exact(&mut new).map_err(self.io_err())?;
            kind = kind.or(self.patch(writer, &new, piece.patch)?);
        }
        tracing::debug!(
            path = %String::from_utf8_lossy(&region.path),
            len = region.len,
            pieces = count,
            ?kind,
            patch_bytes = self.stats.patch_bytes - patch_bytes,
            "patched file"
        );
        match kind {
            Some(PatchKind::Zstd) => self.stats.zstd_patched_files += 1,
            Some(PatchKind::Bsdiff | PatchKind::BsdiffX86) => self.stats.bsdiff_patched_files += 1,
            None => {}
        }
        if kind.is_some() {
            self.stats.bases.push(self.bases.reference(at.layer));
        }
        self.progress.advance(region.len);
        Ok(())
    }

    /// Queues a copy, merging it into the queued operations when it continues them.
    fn copy<W: Write>(
        &mut self,
        writer: &mut PayloadWriter<W>,
        offset: u64,
        len: u64,
    ) -> Result<(), Error> {
        self.queued(writer, offset)?.same(len);
        Ok(())
    }

    /// Queues metadata sent as its difference to scratch bytes at `offset`.
    fn mix<W: Write>(
        &mut self,
        writer: &mut PayloadWriter<W>,
        offset: u64,
        diff: &[u8],
    ) -> Result<(), Error> {
        self.queued(writer, offset)?.diff(diff);
        Ok(())
    }

    /// The queued operations if they end at scratch `offset` (and are not too long to keep
    /// in memory), else a fresh queue after writing them.
    fn queued<W: Write>(
        &mut self,
        writer: &mut PayloadWriter<W>,
        offset: u64,
    ) -> Result<&mut MixRuns, Error> {
        let continues = self.pending.as_ref().is_some_and(|(start, runs)| {
            start + runs.len() == offset && runs.body_len() < MAX_QUEUED_RUNS
        });
        if !continues {
            self.flush_copy(writer)?;
            self.pending = Some((offset, MixRuns::default()));
        }
        Ok(&mut self.pending.as_mut().expect("just queued").1)
    }

    /// Writes the queued operations, if any; every other operation calls this first.
    fn flush_copy<W: Write>(&mut self, writer: &mut PayloadWriter<W>) -> Result<(), Error> {
        match self.pending.take() {
            Some((offset, runs)) if runs.has_differences() => {
                writer.mix_runs(offset, runs).map_err(self.io_err())?
            }
            Some((offset, runs)) if !runs.is_empty() => {
                writer.copy(offset, runs.len()).map_err(self.io_err())?
            }
            _ => {}
        }
        Ok(())
    }

    /// Sends `new` as its patch, or literally when there is none. Returns the kind of patch
    /// used.
    fn patch<W: Write>(
        &mut self,
        writer: &mut PayloadWriter<W>,
        new: &[u8],
        decided: Option<DecidedPatch>,
    ) -> Result<Option<PatchKind>, Error> {
        self.flush_copy(writer)?;
        let Some((kind, patch, at)) = decided else {
            if crate::payload::is_x86_elf(new) {
                writer
                    .literal_x86(new.len() as u64, &mut &new[..])
                    .map_err(self.io_err())?;
            } else {
                writer.literal(new).map_err(self.io_err())?;
            }
            self.stats.literal_bytes += new.len() as u64;
            return Ok(None);
        };
        writer
            .patch(
                kind,
                self.ctx.layout.scratch_offset(&at),
                at.len,
                new.len() as u64,
                &patch,
            )
            .map_err(self.io_err())?;
        self.stats.patched_bytes += new.len() as u64;
        self.stats.patch_bytes += patch.len() as u64;
        Ok(Some(kind))
    }

    /// Sends the next `len` spool bytes, tar metadata before a file, as their difference to
    /// `base` (the same-length metadata before the base file it draws from) when most bytes
    /// are equal, else literally.
    fn gap<W: Write>(
        &mut self,
        writer: &mut PayloadWriter<W>,
        spool: &mut impl Read,
        len: u64,
        base: Option<BaseRef>,
    ) -> Result<(), Error> {
        let Some(at) = base.filter(|at| at.len == len && len <= MAX_MIX) else {
            return self.literal(writer, spool, len);
        };
        let mut new = vec![0u8; len as usize];
        spool.read_exact(&mut new).map_err(self.io_err())?;
        let offset = self.ctx.layout.scratch_offset(&at);
        let old = self.ctx.scratch.read_at(self.ctx.name, offset, len)?;
        if !worth_mixing(&new, &old) {
            self.flush_copy(writer)?;
            writer.literal(&new).map_err(self.io_err())?;
            self.stats.literal_bytes += len;
        } else {
            for (n, o) in new.iter_mut().zip(&old) {
                *n = n.wrapping_sub(*o);
            }
            self.mix(writer, offset, &new)?;
            self.stats.mixed_bytes += len;
        }
        self.progress.advance(len);
        Ok(())
    }

    /// Sends the next `len` spool bytes, a whole file's content, literally: through the x86
    /// filter when they are an x86 executable.
    fn file_literal<W: Write>(
        &mut self,
        writer: &mut PayloadWriter<W>,
        spool: &mut impl Read,
        len: u64,
    ) -> Result<(), Error> {
        let mut head = [0u8; 64];
        let n = (len as usize).min(head.len());
        spool.read_exact(&mut head[..n]).map_err(self.io_err())?;
        if !crate::payload::is_x86_elf(&head[..n]) {
            return self.literal(writer, &mut (&head[..n]).chain(spool), len);
        }
        self.flush_copy(writer)?;
        writer
            .literal_x86(len, &mut (&head[..n]).chain(spool))
            .map_err(self.io_err())?;
        self.stats.literal_bytes += len;
        self.progress.advance(len);
        Ok(())
    }

    /// Sends the next `len` spool bytes as literal records.
    fn literal<W: Write>(
        &mut self,
        writer: &mut PayloadWriter<W>,
        spool: &mut impl Read,
        len: u64,
    ) -> Result<(), Error> {
        if len == 0 {
            return Ok(());
        }
        self.flush_copy(writer)?;
        let mut left = len;
        let mut buf = vec![0u8; LITERAL_CHUNK.min(len as usize)];
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            spool.read_exact(&mut buf[..n]).map_err(self.io_err())?;
            writer.literal(&buf[..n]).map_err(self.io_err())?;
            left -= n as u64;
            self.progress.advance(n as u64);
        }
        self.stats.literal_bytes += len;
        Ok(())
    }

    fn io_err(&self) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            what: "encoding a layer for",
            path: self.ctx.name.into(),
            source,
        }
    }
}

fn skip(reader: &mut impl Read, len: u64) -> std::io::Result<()> {
    let copied = std::io::copy(&mut reader.take(len), &mut std::io::sink())?;
    if copied != len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_mixed_when_at_least_half_its_bytes_are_the_bases() {
        assert!(worth_mixing(b"abcd", b"abxy"));
        assert!(!worth_mixing(b"abcd", b"axyz"));
        assert!(worth_mixing(b"", b""));
    }
}
