//! The record loop: one sequential read of the payload (hashed and counted raw, decoded with
//! the declared window, capped at the declared size), the config, the extents gathered into
//! scratch, then each layer's records in order, and the end of the payload checked against the
//! statement. What a layer's record means for it is decided by [`layer_action`] (pure).

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Take};
use std::thread::{Scope, ScopedJoinHandle};

use sideload_signing::{BlobFrom, Digest, LayerStorage, Statement, TargetLayer};

use crate::codec::Frames;
use crate::error::Error;
use crate::gzip_recipe::{max_chunks, recreate, GzipRecipe, RecipeError};
use crate::image::write::{BlobWriter, OciLayoutWriter};
use crate::image::ImageError;
use crate::limits::Limits;
use crate::manifest::config_diff_ids;
use crate::payload::{PayloadReader, Record};
use crate::progress::Progress;
use crate::scratch::{gather_extents, BaseStore, Scratch, ZSTD_DICT_MAGIC};
use crate::stream::{CappedReader, HashingReader};

use super::ops::LayerOps;

/// The payload as the decoder reads it: raw bytes hashed and counted, decoded, capped.
type Reader<'f> = PayloadReader<CappedReader<Frames<BufReader<HashingReader<Take<&'f mut File>>>>>>;

/// What a layer's record makes of the layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LayerAction {
    /// The device holds it: copy it from the base store.
    Present,
    /// Its source blob, `len` bytes, follows.
    Blob { len: u64 },
    /// Its operations follow, up to `END_LAYER`.
    Ops,
}

/// What `record`, read where layer `index` (`layer`) is due, makes of it; or why the bundle is
/// corrupt. `requires` are the base layers the statement says the device holds.
pub(super) fn layer_action(
    index: usize,
    layer: &TargetLayer,
    requires: &[Digest],
    record: &Record,
) -> Result<LayerAction, String> {
    let blob_in_payload = matches!(
        layer.storage,
        LayerStorage::SourceBlob {
            from: BlobFrom::Payload,
            ..
        }
    );
    match *record {
        Record::Present { index: i } | Record::Layer { index: i }
            if i as usize == index && blob_in_payload =>
        {
            Err(format!(
                "layer {index} must come as its blob (BLOB record), found {record:?}"
            ))
        }
        Record::Present { index: i } if i as usize == index => {
            if !requires.contains(&layer.diff_id) {
                return Err(format!(
                    "layer {index} is marked present but the statement does not require it"
                ));
            }
            Ok(LayerAction::Present)
        }
        Record::Blob { index: i, len } if i as usize == index => {
            let LayerStorage::SourceBlob {
                size: Some(size),
                from: BlobFrom::Payload,
                ..
            } = &layer.storage
            else {
                return Err(format!(
                    "layer {index} comes as a blob, the statement stores it otherwise"
                ));
            };
            if len != *size {
                return Err(format!(
                    "layer {index}'s blob is {len} bytes, the statement says {size}"
                ));
            }
            Ok(LayerAction::Blob { len })
        }
        Record::Layer { index: i } if i as usize == index => Ok(LayerAction::Ops),
        ref other => Err(format!(
            "expected the record of layer {index}, found {other:?}"
        )),
    }
}

/// A blob being recreated on the second thread: its layer index, digest and size when done.
type Recreating<'s> = ScopedJoinHandle<'s, Result<(usize, (Digest, u64)), Error>>;

/// What decoding a payload produced.
#[derive(Debug)]
pub(super) struct Decoded {
    /// Layers rebuilt from the payload.
    pub rebuilt: usize,
    /// Layers copied from images on the device.
    pub reused: usize,
    /// Per layer, the blob recreated from its recipe (digest, size), if any.
    pub recreated: Vec<Option<(Digest, u64)>>,
}

/// Decodes a payload into a staged layout.
pub(super) struct Decoder<'a> {
    /// The bundle, for errors.
    pub name: &'a str,
    /// Its statement.
    pub statement: &'a Statement,
    /// The device's layers.
    pub bases: &'a dyn BaseStore,
    /// The staged layout.
    pub writer: &'a OciLayoutWriter,
    /// Caps on what the payload may ask for.
    pub limits: &'a Limits,
    /// Told of every layer.
    pub progress: &'a dyn Progress,
}

impl Decoder<'_> {
    /// Walks the payload records (read from `file`, at the payload's start) and writes config
    /// and layer blobs into the staged layout; `staging` holds the scratch store. Returns the
    /// layer counts and the blobs recreated from recipes.
    pub fn decode(&self, file: &mut File, staging: &std::path::Path) -> Result<Decoded, Error> {
        let payload = &self.statement.payload;
        let raw = BufReader::new(HashingReader::new(file.take(payload.size)));
        let frames = Frames::new(raw, payload.codec, payload.window_log)
            .map_err(|e| self.corrupt(e.to_string()))?;
        let decoded = CappedReader::new(frames, payload.decoded_size, "decoded payload");
        let mut reader = PayloadReader::new(decoded, self.limits.max_extents);
        self.config(&mut reader)?;
        // Extents, gathered into scratch.
        let extents = match self.next(&mut reader)? {
            Record::Extents(e) => e,
            other => {
                return Err(self.corrupt(format!("expected the extents record, found {other:?}")))
            }
        };
        let scratch = gather_extents(
            self.name,
            &self.statement.requires,
            payload.scratch_bytes,
            &extents,
            self.bases,
            staging,
        )?;
        let decoded = self.layers(&mut reader, &scratch)?;
        self.remove_exact_tars(&decoded.recreated)?;
        self.end(reader)?;
        Ok(decoded)
    }

    /// The config record, first: checked against the statement's config digest and layers,
    /// then staged.
    fn config(&self, reader: &mut Reader<'_>) -> Result<(), Error> {
        let config_len = match self.next(reader)? {
            Record::Config { len } => len,
            other => {
                return Err(
                    self.corrupt(format!("expected the config record first, found {other:?}"))
                )
            }
        };
        crate::container::check_limit(
            self.name,
            "image config",
            config_len.into(),
            self.limits.max_config.into(),
        )?;
        let mut config = Vec::with_capacity(config_len as usize);
        reader
            .body(config_len.into())
            .read_to_end(&mut config)
            .map_err(|e| self.corrupt(e.to_string()))?;
        if config.len() != config_len as usize {
            return Err(self.corrupt("payload ends inside the config".into()));
        }
        let target = &self.statement.target;
        let config_digest = Digest::of_bytes(&config);
        if config_digest != target.config_digest {
            return Err(self.corrupt(format!(
                "config is {config_digest}, the statement says {}",
                target.config_digest
            )));
        }
        let diff_ids = config_diff_ids(&config).map_err(|e| self.corrupt(e))?;
        let expected: Vec<&Digest> = target.layers.iter().map(|l| &l.diff_id).collect();
        if diff_ids.iter().collect::<Vec<_>>() != expected {
            return Err(self.corrupt(
                "the config's rootfs.diff_ids differ from the statement's layers".into(),
            ));
        }
        self.writer.put_blob_bytes(&config)?;
        Ok(())
    }

    /// Every layer's records, in order. A layer's exact blob is recreated from its staged tar
    /// on a second thread while the next layer decodes, whatever its recipe's kind (per core:
    /// preflate about 20 MB/s, zlib and Go level 6 20-35, pgzip 80-100; decoding is often
    /// faster). A pgzip blob's blocks are spread over every core besides (see `gzip_recipe`,
    /// "What runs where").
    fn layers(&self, reader: &mut Reader<'_>, scratch: &Scratch) -> Result<Decoded, Error> {
        std::thread::scope(|s| -> Result<Decoded, Error> {
            let (mut rebuilt, mut reused) = (0, 0);
            let mut recreated = vec![None; self.statement.target.layers.len()];
            let mut recreating: Option<Recreating<'_>> = None;
            for (index, layer) in self.statement.target.layers.iter().enumerate() {
                let count = self.statement.target.layers.len();
                self.progress
                    .start(&format!("layer {}/{count}", index + 1), layer.size);
                match self.layer(reader, scratch, index, layer)? {
                    LayerAction::Present => reused += 1,
                    LayerAction::Blob { .. } | LayerAction::Ops => rebuilt += 1,
                }
                self.blob(s, reader, index, layer, &mut recreating, &mut recreated)?;
                self.progress.finish();
            }
            if let Some(last) = recreating.take() {
                let (index, blob) = last.join().expect("recreating a blob does not panic")?;
                recreated[index] = Some(blob);
            }
            Ok(Decoded {
                rebuilt,
                reused,
                recreated,
            })
        })
    }

    /// Layer `index`'s record (after at most one FRAME) and what it brings.
    fn layer(
        &self,
        reader: &mut Reader<'_>,
        scratch: &Scratch,
        index: usize,
        layer: &TargetLayer,
    ) -> Result<LayerAction, Error> {
        let mut frames = 0;
        let record = loop {
            match self.next(reader)? {
                // One per layer at most: each may load a large dictionary.
                Record::Frame(_) if frames == 1 => {
                    return Err(self.corrupt("two FRAME records before one layer".into()))
                }
                Record::Frame(ranges) => {
                    frames += 1;
                    self.next_frame(reader, scratch, &ranges)?
                }
                other => break other,
            }
        };
        let action = layer_action(index, layer, &self.statement.requires, &record)
            .map_err(|e| self.corrupt(e))?;
        match action {
            LayerAction::Present => self.present(layer)?,
            LayerAction::Blob { len } => self.source_blob(reader, index, layer, len)?,
            LayerAction::Ops => self.rebuild(reader, scratch, index, layer)?,
        }
        Ok(action)
    }

    /// A layer the device holds: staged from the base store unless its blob is the device's
    /// or already staged.
    fn present(&self, layer: &TargetLayer) -> Result<(), Error> {
        let blob_held = matches!(
            layer.storage,
            LayerStorage::SourceBlob {
                from: BlobFrom::Device,
                ..
            }
        );
        if !blob_held && !self.writer.has_blob(&layer.diff_id) {
            let stream =
                self.bases
                    .open_layer(&layer.diff_id)?
                    .ok_or_else(|| Error::MissingBase {
                        bundle: self.name.to_owned(),
                        diff_id: layer.diff_id.clone(),
                    })?;
            self.writer
                .put_blob_verified(stream, &layer.diff_id, Some(layer.size))?;
        }
        Ok(())
    }

    /// A layer whose source blob comes in the payload (`len` bytes, checked by
    /// [`layer_action`]).
    fn source_blob(
        &self,
        reader: &mut Reader<'_>,
        index: usize,
        layer: &TargetLayer,
        len: u64,
    ) -> Result<(), Error> {
        let LayerStorage::SourceBlob {
            digest: Some(digest),
            size: Some(size),
            ..
        } = &layer.storage
        else {
            return Err(self.corrupt(format!(
                "layer {index} comes as a blob, the statement stores it otherwise"
            )));
        };
        let mut blob = self.writer.blob_writer()?;
        let copied =
            io::copy(&mut reader.body(len), &mut blob).map_err(|e| self.corrupt(e.to_string()))?;
        if copied != len {
            return Err(self.corrupt(format!("payload ends inside layer {index}'s blob")));
        }
        self.progress.advance(layer.size);
        commit_source_blob(self.name, index, blob, Some((digest, *size))).map(|_| ())
    }

    /// A layer rebuilt from its operations, checked against its diff_id.
    fn rebuild(
        &self,
        reader: &mut Reader<'_>,
        scratch: &Scratch,
        index: usize,
        layer: &TargetLayer,
    ) -> Result<(), Error> {
        let mut blob = self.writer.blob_writer()?;
        LayerOps {
            name: self.name,
            scratch,
            // A zstd patch's window is bounded by its output (itself capped), not by the
            // payload codec's window.
            window_log: self.limits.max_window_log,
            limits: self.limits,
            progress: self.progress,
        }
        .apply(reader, layer.size, &mut blob)?;
        blob.commit(Some((&layer.diff_id, Some(layer.size))))
            .map_err(|e| match e {
                ImageError::DigestMismatch { actual, .. } => Error::LayerMismatch {
                    bundle: self.name.to_owned(),
                    index,
                    expected: layer.diff_id.clone(),
                    actual,
                },
                other => Error::Image(other),
            })?;
        Ok(())
    }

    /// After a layer's tar: its compressed blob as the statement stores it, from the device
    /// or recreated from its recipe (on a second thread, after the previous one is done, whose
    /// blob goes into `recreated`). A held blob whose digest the statement leaves to the device
    /// is staged once the manifest is resolved (see `derive`).
    fn blob<'s>(
        &'s self,
        s: &'s Scope<'s, '_>,
        reader: &mut Reader<'_>,
        index: usize,
        layer: &'s TargetLayer,
        recreating: &mut Option<Recreating<'s>>,
        recreated: &mut [Option<(Digest, u64)>],
    ) -> Result<(), Error> {
        match &layer.storage {
            LayerStorage::Uncompressed { .. }
            | LayerStorage::SourceBlob {
                from: BlobFrom::Payload,
                ..
            }
            | LayerStorage::SourceBlob {
                digest: None,
                from: BlobFrom::Device,
                ..
            } => {}
            LayerStorage::SourceBlob {
                digest: Some(digest),
                size: Some(size),
                from: BlobFrom::Device,
                ..
            } => {
                if !self.writer.has_blob(digest) {
                    let stream =
                        self.bases
                            .open_blob(digest)?
                            .ok_or_else(|| Error::MissingBaseBlob {
                                bundle: self.name.to_owned(),
                                index,
                                digest: digest.clone(),
                            })?;
                    self.writer.put_blob_verified(stream, digest, Some(*size))?;
                }
            }
            LayerStorage::SourceBlob {
                from: BlobFrom::Device,
                ..
            } => {
                return Err(self.corrupt(format!(
                    "layer {index} names its blob's digest or size but not both"
                )))
            }
            LayerStorage::SourceBlob {
                digest,
                size,
                from: BlobFrom::Recipe,
                ..
            } => {
                let recipe = read_recipe(self.name, reader, index, layer.size, self.limits)?;
                if let Some(previous) = recreating.take() {
                    let (done, blob) =
                        previous.join().expect("recreating a blob does not panic")?;
                    recreated[done] = Some(blob);
                }
                let (name, writer) = (self.name, self.writer);
                let diff_id = &layer.diff_id;
                let expected = digest.clone().zip(*size);
                *recreating = Some(s.spawn(move || {
                    let expected = expected.as_ref().map(|(d, s)| (d, *s));
                    recreate_blob(name, index, &recipe, writer, diff_id, expected)
                        .map(|blob| (index, blob))
                }));
            }
        }
        Ok(())
    }

    /// The tars of exact layers were only the material for their blobs; keep any blob the
    /// manifest names (the config, or a layer stored as that very digest, named or
    /// `recreated`).
    fn remove_exact_tars(&self, recreated: &[Option<(Digest, u64)>]) -> Result<(), Error> {
        let target = &self.statement.target;
        let referenced: Vec<Digest> = target
            .layers
            .iter()
            .filter_map(|l| l.storage.blob(l).map(|(d, _)| d))
            .chain(recreated.iter().flatten().map(|(d, _)| d.clone()))
            .chain(std::iter::once(target.config_digest.clone()))
            .collect();
        for layer in &target.layers {
            if layer.storage.is_exact_blob() && !referenced.contains(&layer.diff_id) {
                let tar = crate::image::oci_layout::blob_path(self.writer.dir(), &layer.diff_id);
                match fs::remove_file(&tar) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(Error::io("removing staged layer", tar)(e))
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// After the last layer: END, nothing after it, exactly the declared decoded size, and
    /// the raw payload's size and digest as the statement declares.
    fn end(&self, mut reader: Reader<'_>) -> Result<(), Error> {
        let payload = &self.statement.payload;
        match self.next(&mut reader)? {
            Record::End => {}
            other => return Err(self.corrupt(format!("expected END, found {other:?}"))),
        }
        reader
            .expect_eof()
            .map_err(|e| self.corrupt(e.to_string()))?;
        if reader.get_mut().remaining() != 0 {
            return Err(self.corrupt(format!(
                "the payload decodes to less than the {} bytes the statement declares",
                payload.decoded_size
            )));
        }
        // Drain what the decoder has not asked for (a frame epilogue) so the digest covers
        // every byte.
        let frames = reader.into_inner().into_inner();
        // Bytes buffered but not decoded were hashed when they were read.
        let mut raw = frames.into_inner().into_inner();
        io::copy(&mut raw, &mut io::sink()).map_err(Error::io("reading bundle", self.name))?;
        let (digest, count) = raw.finish();
        if count != payload.size {
            return Err(Error::Truncated {
                bundle: self.name.to_owned(),
                part: "payload",
                expected: payload.size,
                available: count,
            });
        }
        if digest != payload.sha256 {
            return Err(Error::PayloadDigestMismatch {
                bundle: self.name.to_owned(),
                expected: payload.sha256.clone(),
                actual: digest,
            });
        }
        Ok(())
    }

    /// Handles a FRAME record: builds the next frame's dictionary from scratch ranges (capped
    /// by [`Limits::max_dictionary`]) and switches the decoder to it.
    fn next_frame<R: BufRead>(
        &self,
        reader: &mut PayloadReader<CappedReader<Frames<R>>>,
        scratch: &Scratch,
        ranges: &[(u64, u64)],
    ) -> Result<(), Error> {
        let total = ranges
            .iter()
            .try_fold(0u64, |acc, (_, len)| acc.checked_add(*len))
            .unwrap_or(u64::MAX);
        crate::container::check_limit(
            self.name,
            "frame dictionary",
            total,
            self.limits.max_dictionary,
        )?;
        let mut dictionary = Vec::with_capacity(total as usize);
        for &(offset, len) in ranges {
            scratch
                .range(self.name, offset, len)?
                .read_to_end(&mut dictionary)
                .map_err(Error::io("reading scratch", "scratch"))?;
        }
        if dictionary.starts_with(&ZSTD_DICT_MAGIC) {
            return Err(
                self.corrupt("a frame dictionary starts with the zstd dictionary magic".into())
            );
        }
        reader
            .get_mut()
            .get_mut()
            .next_frame(&dictionary)
            .map_err(|e| self.corrupt(format!("starting the next frame: {e}")))
    }

    fn next(&self, reader: &mut Reader<'_>) -> Result<Record, Error> {
        reader
            .next_record()
            .map_err(|e| self.corrupt(e.to_string()))
    }

    fn corrupt(&self, reason: String) -> Error {
        Error::CorruptPayload {
            bundle: self.name.to_owned(),
            reason,
        }
    }
}

/// Reads the RECIPE record of layer `index`, which must come next.
fn read_recipe<R: Read>(
    name: &str,
    reader: &mut PayloadReader<R>,
    index: usize,
    layer_size: u64,
    limits: &Limits,
) -> Result<GzipRecipe, Error> {
    let corrupt = |reason: String| Error::CorruptPayload {
        bundle: name.to_owned(),
        reason,
    };
    let len = match reader.next_record().map_err(|e| corrupt(e.to_string()))? {
        Record::Recipe { index: i, len } if i as usize == index => len,
        Record::LayerRecipe { len } => len,
        other => {
            return Err(corrupt(format!(
                "expected the gzip recipe of layer {index}, found {other:?}"
            )))
        }
    };
    crate::container::check_limit(name, "gzip recipe", len, limits.max_recipe)?;
    let mut bytes = Vec::with_capacity(len as usize);
    reader
        .body(len)
        .read_to_end(&mut bytes)
        .map_err(|e| corrupt(e.to_string()))?;
    if bytes.len() as u64 != len {
        return Err(corrupt(format!(
            "payload ends inside the gzip recipe of layer {index}"
        )));
    }
    let recipe = GzipRecipe::from_bytes_in_layer(&bytes, layer_size, max_chunks(layer_size))
        .map_err(|e| corrupt(format!("layer {index}: {e}")))?;
    if recipe.plain_len() != layer_size {
        return Err(corrupt(format!(
            "the gzip recipe of layer {index} covers {} bytes, the layer has {layer_size}",
            recipe.plain_len()
        )));
    }
    Ok(recipe)
}

/// Recreates layer `index`'s exact gzip blob from its staged tar and stores it, checked
/// against the statement's digest and size when it names them (`expected`); returns its digest
/// and size.
fn recreate_blob(
    name: &str,
    index: usize,
    recipe: &GzipRecipe,
    writer: &OciLayoutWriter,
    diff_id: &Digest,
    expected: Option<(&Digest, u64)>,
) -> Result<(Digest, u64), Error> {
    let tar_path = crate::image::oci_layout::blob_path(writer.dir(), diff_id);
    let tar = File::open(&tar_path).map_err(Error::io("reading staged layer", &tar_path))?;
    let mut blob = writer.blob_writer()?;
    recreate(
        recipe,
        &mut BufReader::with_capacity(1 << 20, tar),
        &mut blob,
    )
    .map_err(|e| match e {
        RecipeError::Io(e) => Error::io("recreating the blob of a layer from", &tar_path)(e),
        other => Error::CorruptPayload {
            bundle: name.to_owned(),
            reason: format!("layer {index}: {other}"),
        },
    })?;
    commit_source_blob(name, index, blob, expected)
}

/// Stores layer `index`'s compressed blob if it is the one the statement names (`expected`,
/// when it names one); returns its digest and size.
fn commit_source_blob(
    name: &str,
    index: usize,
    blob: BlobWriter,
    expected: Option<(&Digest, u64)>,
) -> Result<(Digest, u64), Error> {
    blob.commit(expected.map(|(digest, size)| (digest, Some(size))))
        .map_err(|e| match e {
            ImageError::DigestMismatch { actual, .. } => Error::ExactBlobMismatch {
                bundle: name.to_owned(),
                index,
                expected: expected
                    .map(|(d, _)| d.clone())
                    .expect("only a named blob mismatches"),
                actual,
            },
            other => Error::Image(other),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(storage: LayerStorage) -> TargetLayer {
        TargetLayer {
            diff_id: Digest::of_bytes(b"layer"),
            size: 100,
            storage,
        }
    }

    fn plain() -> TargetLayer {
        layer(LayerStorage::Uncompressed {
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        })
    }

    fn blob(from: BlobFrom) -> TargetLayer {
        layer(LayerStorage::SourceBlob {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: Some(Digest::of_bytes(b"blob")),
            size: Some(40),
            from,
        })
    }

    #[test]
    fn a_layer_record_for_the_due_layer_rebuilds_it_and_any_other_is_corrupt() {
        let l = plain();
        assert_eq!(
            layer_action(2, &l, &[], &Record::Layer { index: 2 }),
            Ok(LayerAction::Ops)
        );
        assert_eq!(
            layer_action(2, &l, &[], &Record::Layer { index: 3 }).unwrap_err(),
            "expected the record of layer 2, found Layer { index: 3 }"
        );
        assert!(layer_action(2, &l, &[], &Record::End).is_err());
        assert!(layer_action(2, &l, &[], &Record::EndLayer).is_err());
    }

    #[test]
    fn a_present_layer_must_be_one_the_statement_requires() {
        let l = plain();
        let present = Record::Present { index: 0 };
        assert_eq!(
            layer_action(0, &l, std::slice::from_ref(&l.diff_id), &present),
            Ok(LayerAction::Present)
        );
        assert_eq!(
            layer_action(0, &l, &[], &present).unwrap_err(),
            "layer 0 is marked present but the statement does not require it"
        );
        // A layer whose blob comes from the device is still present as a tar.
        let device = blob(BlobFrom::Device);
        assert_eq!(
            layer_action(0, &device, std::slice::from_ref(&device.diff_id), &present),
            Ok(LayerAction::Present)
        );
    }

    #[test]
    fn a_blob_comes_only_where_the_statement_sends_it_and_at_its_size() {
        let sent = blob(BlobFrom::Payload);
        assert_eq!(
            layer_action(1, &sent, &[], &Record::Blob { index: 1, len: 40 }),
            Ok(LayerAction::Blob { len: 40 })
        );
        assert_eq!(
            layer_action(1, &sent, &[], &Record::Blob { index: 1, len: 41 }).unwrap_err(),
            "layer 1's blob is 41 bytes, the statement says 40"
        );
        for record in [Record::Layer { index: 1 }, Record::Present { index: 1 }] {
            assert!(
                layer_action(1, &sent, std::slice::from_ref(&sent.diff_id), &record)
                    .unwrap_err()
                    .starts_with("layer 1 must come as its blob (BLOB record)")
            );
        }
        for other in [plain(), blob(BlobFrom::Recipe), blob(BlobFrom::Device)] {
            assert_eq!(
                layer_action(1, &other, &[], &Record::Blob { index: 1, len: 40 }).unwrap_err(),
                "layer 1 comes as a blob, the statement stores it otherwise"
            );
        }
    }
}
