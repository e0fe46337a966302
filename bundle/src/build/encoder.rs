//! Carries a [`BuildPlan`] out: the payload's records, layer by layer, through one codec
//! stream, into a temporary file whose digest and size the statement will name.
//!
//! Per target layer, in order: its source blob (`BLOB`), `PRESENT` when the device holds it, or
//! its operations ([`LayerEncoder`]), after a `FRAME` whose dictionary is the closest base
//! layer's metadata when the plan gives it one; a small layer is also patched whole and the
//! smaller of the two kept. Then the layer's gzip recipe, if it has one.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Instant;

use sideload_signing::{Digest, PayloadInfo, TargetLayer};

use crate::codec::{CodecSettings, FrameEncoder};
use crate::delta::{BaseRef, LayerScan};
use crate::error::Error;
use crate::exact::ExactPlan;
use crate::image::digest_reader::HashingWriter;
use crate::image::ImageSource;
use crate::payload::PayloadWriter;
use crate::progress::{NoProgress, Progress};
use crate::scratch::{Scratch, ZSTD_DICT_MAGIC};

use super::ops::LayerEncoder;
use super::patch::{whole_layer_patch, CandidatePatch, PatchContext};
use super::plan::{BuildPlan, LayerPlan};
use super::scan::{layer_read_error, BaseLayers, SpooledLayer};
use super::{DeltaStats, LayerEncoding, LayerReport};

/// The payload writer: records, counted after the codec, hashed and counted raw.
type Writer<'f> =
    PayloadWriter<HashingWriter<FrameEncoder<HashingWriter<BufWriter<&'f mut File>>>>>;

/// What the payload came to.
pub(super) struct EncodedPayload {
    /// The statement's layers.
    pub layers: Vec<TargetLayer>,
    /// What each layer cost.
    pub reports: Vec<LayerReport>,
    /// The lowest record format version the payload needs.
    pub records_version: u32,
    /// Bytes of the payload.
    pub size: u64,
    /// Its sha256.
    pub sha256: Digest,
    /// Bytes it decodes to.
    pub decoded_size: u64,
}

impl EncodedPayload {
    /// The statement's description of the payload, written with `codec` and needing
    /// `scratch_bytes` of scratch.
    pub fn info(&self, codec: CodecSettings, scratch_bytes: u64) -> PayloadInfo {
        PayloadInfo {
            size: self.size,
            sha256: self.sha256.clone(),
            codec: codec.codec,
            window_log: codec.window_log,
            decoded_size: self.decoded_size,
            scratch_bytes,
        }
    }
}

/// Everything encoding the payload reads.
pub(super) struct Encoder<'a> {
    /// The target image.
    pub target: &'a dyn ImageSource,
    /// Layers the device holds, and what holds them.
    pub on_device: &'a HashMap<&'a Digest, &'a str>,
    /// How each layer is stored, its recipes.
    pub exact: &'a ExactPlan,
    /// What each sent layer becomes, and the scratch layout.
    pub plan: &'a BuildPlan,
    /// The base layers.
    pub bases: &'a BaseLayers<'a>,
    /// Their scans.
    pub base_scans: &'a [LayerScan],
    /// The gathered base ranges.
    pub scratch: &'a Scratch,
    /// The payload's codec.
    pub codec: CodecSettings,
    /// zstd level of patches.
    pub level: i32,
    /// After this instant, no bsdiff and no whole-layer trials.
    pub deadline: Instant,
    /// Told of progress.
    pub progress: &'a dyn Progress,
    /// The bundle being built (for errors).
    pub out: &'a Path,
    /// Its name in messages.
    pub name: String,
}

impl Encoder<'_> {
    /// Writes the whole payload into `payload_file`.
    pub fn encode(
        &self,
        scans: &mut HashMap<usize, SpooledLayer>,
        payload_file: &mut File,
    ) -> Result<EncodedPayload, Error> {
        let image = self.target.image();
        let hashed = HashingWriter::new(BufWriter::new(payload_file));
        let frames = FrameEncoder::new(hashed, self.codec, &[])
            .map_err(self.io_err("starting the codec for"))?;
        let mut writer =
            PayloadWriter::new(HashingWriter::new(frames)).map_err(self.io_err(WRITING))?;
        writer
            .config(&image.config.bytes)
            .map_err(self.io_err(WRITING))?;
        writer
            .extents(&self.plan.layout.extents)
            .map_err(self.io_err(WRITING))?;
        // Flush so the config's bytes are not counted against the first layer.
        writer.get_mut().flush().map_err(self.io_err(WRITING))?;

        let mut layers = Vec::with_capacity(image.layers.len());
        let mut reports = Vec::with_capacity(image.layers.len());
        for index in 0..image.layers.len() {
            let (layer, report) = self.layer(&mut writer, index, scans)?;
            layers.push(layer);
            reports.push(report);
        }

        let records_version = writer.format_version();
        let counted = writer.finish().map_err(self.io_err(WRITING))?;
        let (frames, _, decoded_size) = counted.finish();
        let hashed = frames
            .finish()
            .map_err(self.io_err("finishing the codec for"))?;
        let (buffered, sha256, size) = hashed.finish();
        buffered
            .into_inner()
            .map_err(|e| Error::io(WRITING, self.out)(e.into_error()))?;
        Ok(EncodedPayload {
            layers,
            reports,
            records_version,
            size,
            sha256,
            decoded_size,
        })
    }

    /// Writes target layer `index` (and its recipe): the statement's layer and its report.
    fn layer(
        &self,
        writer: &mut Writer<'_>,
        index: usize,
        scans: &mut HashMap<usize, SpooledLayer>,
    ) -> Result<(TargetLayer, LayerReport), Error> {
        let image = self.target.image();
        let layer = &image.layers[index];
        let index32 =
            u32::try_from(index).map_err(|_| Error::InvalidBuild("too many layers".into()))?;
        let before = compressed_so_far(writer);
        let (encoding, size) = if self.exact.sends_blob(index) {
            let mut blob = self.target.open_layer_blob(index)?;
            writer
                .blob(index32, layer.blob_size, &mut blob)
                .map_err(|e| layer_read_error(image, index, e))?;
            (LayerEncoding::SourceBlob, self.layer_size(index)?)
        } else if let Some(base) = self.on_device.get(&layer.diff_id) {
            writer.present(index32).map_err(self.io_err(WRITING))?;
            let base = base.to_string();
            (LayerEncoding::Present { base }, self.layer_size(index)?)
        } else {
            let spooled = scans.get_mut(&index).expect("scanned");
            let stats = self.delta_layer(writer, index, spooled, &self.plan.layers[&index])?;
            (LayerEncoding::Delta(stats), spooled.scan.len)
        };
        let recipe = self.exact.recipes.get(&index);
        if let Some(recipe) = recipe {
            writer.layer_recipe(recipe).map_err(self.io_err(WRITING))?;
        }
        writer.get_mut().flush().map_err(self.io_err(WRITING))?;
        let payload_bytes = compressed_so_far(writer) - before;
        let storage = self.exact.storages[index].clone();
        let target_layer = TargetLayer {
            diff_id: layer.diff_id.clone(),
            size,
            storage: storage.clone(),
        };
        let report = LayerReport {
            diff_id: layer.diff_id.clone(),
            size,
            source_blob_size: layer.blob_size,
            encoding,
            payload_bytes,
            storage,
            recipe_bytes: recipe.map_or(0, |r| r.len() as u64),
            recipe: recipe.map(|r| {
                crate::gzip_recipe::GzipRecipe::from_bytes_in_layer(r, size, u64::MAX)
                    .expect("the encoder's own recipe parses")
                    .describe()
            }),
        };
        Ok((target_layer, report))
    }

    /// The uncompressed size of a layer that is not sent as operations (the manifest needs it);
    /// counting also checks the diff_id.
    fn layer_size(&self, index: usize) -> Result<u64, Error> {
        std::io::copy(&mut self.target.open_layer(index)?, &mut std::io::sink())
            .map_err(|e| layer_read_error(self.target.image(), index, e))
    }

    /// Writes a sent layer's records: its frame, its operations (or one patch of the whole
    /// layer, when that is smaller).
    fn delta_layer(
        &self,
        writer: &mut Writer<'_>,
        index: usize,
        spooled: &mut SpooledLayer,
        plan: &LayerPlan,
    ) -> Result<DeltaStats, Error> {
        let count = self.target.image().layers.len();
        let len = spooled.scan.len;
        self.progress
            .start(&format!("encode layer {}/{count}", index + 1), len);
        let (mut ranges, mut dictionary) = self.dictionary(plan)?;
        let mut encoder = self.layer_encoder(self.progress);
        // For a small layer, one patch of the whole layer may beat the file-level ops
        // (e.g. a renamed directory changes every header). Measure both; keep the smaller.
        let whole = match plan.whole_layer {
            Some(at) if Instant::now() < self.deadline => {
                self.whole_layer_trial(spooled, &at, plan, &dictionary)?
            }
            _ => None,
        };
        if dictionary.starts_with(&ZSTD_DICT_MAGIC) {
            // zstd would take it as a formatted dictionary: start it one byte later.
            dictionary.remove(0);
            ranges[0].0 += 1;
            ranges[0].1 -= 1;
        }
        if !ranges.is_empty() && whole.is_none() {
            // Tar headers of the target are mostly those of a base layer with a few bytes
            // changed: a frame whose dictionary is that layer's headers sends them cheaply.
            writer.frame(&ranges).map_err(self.io_err(WRITING))?;
            writer
                .get_mut()
                .get_mut()
                .next_frame(&dictionary)
                .map_err(self.io_err(WRITING))?;
        }
        let index32 = index as u32;
        writer.begin_layer(index32).map_err(self.io_err(WRITING))?;
        if let Some((at, (kind, patch, _))) = whole {
            writer
                .patch(
                    kind,
                    self.plan.layout.scratch_offset(&at),
                    at.len,
                    len,
                    &patch,
                )
                .map_err(self.io_err(WRITING))?;
            encoder.stats.whole_layer_patch = Some(kind);
            encoder.stats.patched_bytes = len;
            encoder.stats.patch_bytes = patch.len() as u64;
            encoder.stats.bases.push(self.bases.reference(at.layer));
            self.progress.advance(len);
        } else {
            encode_ops(&mut encoder, writer, spooled, &plan.regions)?;
        }
        let mut stats = encoder.stats;
        writer.end_layer().map_err(self.io_err(WRITING))?;
        stats.bases.sort();
        stats.bases.dedup();
        self.progress.finish();
        Ok(stats)
    }

    /// The layer's frame dictionary: its scratch ranges and their bytes.
    #[allow(clippy::type_complexity)]
    fn dictionary(&self, plan: &LayerPlan) -> Result<(Vec<(u64, u64)>, Vec<u8>), Error> {
        let ranges: Vec<(u64, u64)> = plan
            .dictionary
            .iter()
            .map(|at| (self.plan.layout.scratch_offset(at), at.len))
            .collect();
        let mut dictionary = Vec::new();
        for &(offset, len) in &ranges {
            self.scratch
                .range(&self.name, offset, len)?
                .read_to_end(&mut dictionary)
                .map_err(self.io_err("reading scratch of"))?;
        }
        Ok((ranges, dictionary))
    }

    /// The patch of the whole layer against `at`, if it is smaller than the layer's file-level
    /// operations (encoded on trial, in a frame with `dictionary`).
    fn whole_layer_trial(
        &self,
        spooled: &mut SpooledLayer,
        at: &BaseRef,
        plan: &LayerPlan,
        dictionary: &[u8],
    ) -> Result<Option<(BaseRef, CandidatePatch)>, Error> {
        let (whole_at, patch) = whole_layer_patch(
            &mut spooled.spool,
            at,
            self.scratch,
            &self.plan.layout,
            self.level,
            &self.name,
        )?;
        let mut trial = PayloadWriter::new(
            FrameEncoder::new(Vec::new(), self.codec, dictionary)
                .map_err(self.io_err("starting the codec for"))?,
        )
        .map_err(self.io_err(WRITING))?;
        let mut quiet = self.layer_encoder(&NoProgress);
        encode_ops(&mut quiet, &mut trial, spooled, &plan.regions)?;
        let file_level = trial
            .finish()
            .and_then(|z| z.finish())
            .map_err(self.io_err(WRITING))?
            .len();
        Ok((patch.2 < file_level).then_some((whole_at, patch)))
    }

    /// A fresh encoder for one layer's operations.
    fn layer_encoder<'p>(&'p self, progress: &'p dyn Progress) -> LayerEncoder<'p> {
        let ctx = PatchContext {
            scratch: self.scratch,
            layout: &self.plan.layout,
            level: self.level,
            deadline: self.deadline,
            name: &self.name,
        };
        LayerEncoder::new(ctx, self.base_scans, self.bases, progress)
    }

    fn io_err(&self, what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        Error::io(what, self.out.to_path_buf())
    }
}

const WRITING: &str = "writing payload of";

/// Encodes a spooled layer's operations from its start.
fn encode_ops<W: Write>(
    encoder: &mut LayerEncoder<'_>,
    writer: &mut PayloadWriter<W>,
    spooled: &mut SpooledLayer,
    regions: &[crate::delta::RegionPlan],
) -> Result<(), Error> {
    spooled
        .spool
        .seek(SeekFrom::Start(0))
        .map_err(Error::io("reading spool of", encoder.ctx.name))?;
    let file: &File = &spooled.spool;
    encoder.encode(
        writer,
        file,
        &mut BufReader::new(file),
        &spooled.scan,
        regions,
    )
}

/// Compressed bytes written so far (after a flush, exact).
fn compressed_so_far(writer: &mut Writer<'_>) -> u64 {
    writer.get_mut().get_mut().get_ref().count()
}
