//! The decoder: a trusted bundle + the images on the device → the rebuilt image.
//!
//! One sequential read of the payload: hash-and-count the raw bytes, zstd-decode with the window
//! capped to what the statement declares, cap the decoded stream at its declared size, and walk
//! the records. Base data referenced by copy/patch operations is gathered first, with one
//! sequential pass over each needed base layer, into a scratch file whose size the statement
//! declares. Each rebuilt layer is streamed to a staging file while hashed, and is accepted only
//! if its size and diff_id match the statement.
//!
//! Everything is written into a staging directory beside the output; the output appears (by
//! rename) only when every blob is checked, the manifest digest is the one the statement signs,
//! and the payload hashed to the statement's digest. Any failure removes the staging directory.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sideload_signing::{BlobFrom, Digest, LayerStorage, Statement, TrustPolicy, VerifyContext};

use crate::codec::Frames;
use crate::error::Error;
use crate::gzip_recipe::{max_chunks, recreate, GzipRecipe, RecipeError};
use crate::image::oci_layout::OciLayoutSource;
use crate::image::write::{write_docker_archive, OciLayoutWriter};
use crate::image::{ImageError, ImageSource};
use crate::limits::Limits;
use crate::manifest::config_diff_ids;
use crate::payload::{PatchKind, PayloadReader, Record, RecordError};
use crate::progress::Progress;
use crate::stream::{CappedReader, HashingReader};
use crate::verify::{check_payload_digest, verify_head, TrustedHead};

pub use crate::scratch::BaseStore;
use crate::scratch::{gather_extents, Scratch, ZSTD_DICT_MAGIC};

/// A [`BaseStore`] over a set of images (archives, layouts) on disk.
pub struct ImageSet {
    images: Vec<Box<dyn ImageSource>>,
    by_diff_id: HashMap<Digest, (usize, usize)>,
}

impl ImageSet {
    /// Indexes the layers of `images`.
    pub fn new(images: Vec<Box<dyn ImageSource>>) -> Self {
        let mut by_diff_id = HashMap::new();
        for (i, image) in images.iter().enumerate() {
            for (j, layer) in image.image().layers.iter().enumerate() {
                by_diff_id.entry(layer.diff_id.clone()).or_insert((i, j));
            }
        }
        ImageSet { images, by_diff_id }
    }

    /// The images in the set.
    pub fn images(&self) -> &[Box<dyn ImageSource>] {
        &self.images
    }
}

impl BaseStore for ImageSet {
    fn contains(&self, diff_id: &Digest) -> bool {
        self.by_diff_id.contains_key(diff_id)
    }

    fn open_layer(
        &self,
        diff_id: &Digest,
    ) -> Result<Option<Box<dyn Read + Send + '_>>, ImageError> {
        match self.by_diff_id.get(diff_id) {
            Some(&(i, j)) => self.images[i].open_layer(j).map(Some),
            None => Ok(None),
        }
    }

    fn open_blob(&self, digest: &Digest) -> Result<Option<Box<dyn Read + Send + '_>>, ImageError> {
        for image in &self.images {
            if let Some(j) = image
                .image()
                .layers
                .iter()
                .position(|l| &l.blob_digest == digest)
            {
                return image.open_layer_blob(j).map(Some);
            }
        }
        Ok(None)
    }

    fn contains_blob(&self, digest: &Digest) -> bool {
        self.images
            .iter()
            .any(|i| i.image().layers.iter().any(|l| &l.blob_digest == digest))
    }
}

/// What form the rebuilt image is written in.
#[derive(Debug, Clone)]
pub enum Output {
    /// A new OCI image layout directory; the image is tagged with the statement's first tag.
    OciLayout(PathBuf),
    /// A new `docker save`-style archive (what `docker load` takes), tagged
    /// `repository:tag` for every tag of the statement.
    DockerArchive(PathBuf),
}

impl Output {
    fn path(&self) -> &Path {
        match self {
            Output::OciLayout(p) | Output::DockerArchive(p) => p,
        }
    }
}

/// What an apply produced.
#[derive(Debug, Clone)]
pub struct ApplyReport {
    /// The statement that was applied.
    pub statement: Statement,
    /// Layers rebuilt from the payload.
    pub rebuilt_layers: usize,
    /// Layers copied from images already on the device.
    pub reused_layers: usize,
    /// Where the image was written.
    pub output: PathBuf,
}

/// Verifies and applies a bundle, writing the rebuilt image to `output`, which must not exist.
pub fn apply_bundle(
    path: &Path,
    policy: &TrustPolicy,
    ctx: &VerifyContext,
    bases: &dyn BaseStore,
    output: &Output,
    limits: &Limits,
    progress: &dyn Progress,
) -> Result<ApplyReport, Error> {
    let trusted = verify_head(path, policy, ctx, limits)?;
    apply_trusted(path, trusted, bases, output, limits, progress)
}

/// Applies a bundle whose head was already verified by [`verify_head`].
pub fn apply_trusted(
    path: &Path,
    trusted: TrustedHead,
    bases: &dyn BaseStore,
    output: &Output,
    limits: &Limits,
    progress: &dyn Progress,
) -> Result<ApplyReport, Error> {
    let TrustedHead {
        head,
        statement,
        mut file,
    } = trusted;
    let name = head.name.clone();
    let out_path = output.path();
    if out_path.exists() {
        return Err(Error::OutputExists(out_path.to_owned()));
    }
    for diff_id in &statement.requires {
        if !bases.contains(diff_id) {
            return Err(Error::MissingBase {
                bundle: name,
                diff_id: diff_id.clone(),
            });
        }
    }
    for (index, layer) in statement.target.layers.iter().enumerate() {
        if let LayerStorage::SourceBlob {
            digest,
            from: BlobFrom::Device,
            ..
        } = &layer.storage
        {
            if !bases.contains_blob(digest) {
                return Err(Error::MissingBaseBlob {
                    bundle: name,
                    index,
                    digest: digest.clone(),
                });
            }
        }
    }
    // Recipes run preflate's recompressor, which trusts its corrections: a damaged recipe can
    // make it panic or loop. The payload's digest is checked before any recipe runs (one
    // sequential read of a local file, cheap next to recreating blobs); after that, only a
    // trusted signer could hand the device a bad recipe.
    let has_recipes = statement.target.layers.iter().any(|l| {
        matches!(
            l.storage,
            LayerStorage::SourceBlob {
                from: BlobFrom::Recipe,
                ..
            }
        )
    });
    if has_recipes {
        check_payload_digest(&mut file, &head, &statement, path)?;
    }
    let parent = out_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // The output holds every layer uncompressed, plus scratch data while decoding; a docker
    // archive is written from the staged layout, so it needs the image twice.
    let copies: u64 = if matches!(output, Output::DockerArchive(_)) {
        2
    } else {
        1
    };
    let needed = space_needed(&statement, copies).ok_or_else(|| Error::CorruptPayload {
        bundle: name.clone(),
        reason: "declared sizes overflow".into(),
    })?;
    let available = crate::fsutil::available_space(parent)?;
    if available < needed {
        return Err(Error::InsufficientDisk {
            path: parent.to_owned(),
            needed,
            available,
        });
    }

    let staging = tempfile::Builder::new()
        .prefix(".sideload-apply-")
        .tempdir_in(parent)
        .map_err(Error::io("creating staging directory in", parent))?;
    let layout = staging.path().join("image");
    let mut writer = OciLayoutWriter::create(&layout)?;

    file.seek(SeekFrom::Start(head.payload_offset()))
        .map_err(Error::io("reading bundle", path))?;
    let decoded = decode_payload(
        &name,
        &statement,
        &mut file,
        bases,
        &writer,
        staging.path(),
        limits,
        progress,
    );
    let counts = match decoded {
        Ok(counts) => counts,
        Err(e) if e.is_refusal() => {
            // A damaged payload usually breaks decoding before its digest can be compared;
            // say so plainly when that is the cause.
            check_payload_digest(&mut file, &head, &statement, path)?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };

    // The manifest: exactly the signed bytes, whose digest the statement names.
    let target = &statement.target;
    let manifest_digest = writer.add_manifest(
        target.manifest.as_bytes(),
        &target.manifest_media_type,
        target.tags.first().map(|t| t.as_str()),
        Some(&target.platform),
    )?;
    if manifest_digest != target.manifest_digest {
        return Err(Error::CorruptPayload {
            bundle: name,
            reason: format!(
                "produced manifest {manifest_digest}, the statement says {}",
                target.manifest_digest
            ),
        });
    }
    writer.finish()?;

    match output {
        Output::OciLayout(dir) => {
            fs::rename(&layout, dir).map_err(Error::io("moving rebuilt image to", dir))?;
        }
        Output::DockerArchive(archive) => {
            let reference = format!("oci:{}", layout.display());
            let source = OciLayoutSource::open(&layout, None, &target.platform, &reference)?;
            let tags: Vec<String> = target
                .tags
                .iter()
                .map(|t| format!("{}:{t}", target.repository))
                .collect();
            // Written inside staging, then linked into place: a link never replaces an
            // existing file, and a crash leaves nothing half-written beside the output.
            let staged = staging.path().join("image.tar");
            write_docker_archive(&source, &staged, &tags)?;
            fs::hard_link(&staged, archive).map_err(|e| {
                if e.kind() == io::ErrorKind::AlreadyExists {
                    Error::OutputExists(archive.clone())
                } else {
                    Error::io("moving rebuilt image to", archive)(e)
                }
            })?;
        }
    }
    crate::fsutil::sync_parent(out_path)?;
    Ok(ApplyReport {
        statement,
        rebuilt_layers: counts.0,
        reused_layers: counts.1,
        output: out_path.to_owned(),
    })
}

/// Walks the payload records and writes config and layer blobs into the staged layout.
/// Returns (rebuilt, reused) layer counts.
#[allow(clippy::too_many_arguments)]
fn decode_payload(
    name: &str,
    statement: &Statement,
    file: &mut File,
    bases: &dyn BaseStore,
    writer: &OciLayoutWriter,
    staging: &Path,
    limits: &Limits,
    progress: &dyn Progress,
) -> Result<(usize, usize), Error> {
    let corrupt = |reason: String| Error::CorruptPayload {
        bundle: name.to_owned(),
        reason,
    };
    let record_err = |e: RecordError| corrupt(e.to_string());
    let payload = &statement.payload;
    let raw = BufReader::new(HashingReader::new(file.take(payload.size)));
    let frames =
        Frames::new(raw, payload.codec, payload.window_log).map_err(|e| corrupt(e.to_string()))?;
    let decoded = CappedReader::new(frames, payload.decoded_size, "decoded payload");
    let mut reader = PayloadReader::new(decoded, limits.max_extents);

    // Config first.
    let config_len = match reader.next_record().map_err(record_err)? {
        Record::Config { len } => len,
        other => {
            return Err(corrupt(format!(
                "expected the config record first, found {other:?}"
            )))
        }
    };
    crate::container::check_limit(
        name,
        "image config",
        config_len.into(),
        limits.max_config.into(),
    )?;
    let mut config = Vec::with_capacity(config_len as usize);
    reader
        .body(config_len.into())
        .read_to_end(&mut config)
        .map_err(|e| corrupt(e.to_string()))?;
    if config.len() != config_len as usize {
        return Err(corrupt("payload ends inside the config".into()));
    }
    let config_digest = Digest::of_bytes(&config);
    if config_digest != statement.target.config_digest {
        return Err(corrupt(format!(
            "config is {config_digest}, the statement says {}",
            statement.target.config_digest
        )));
    }
    let diff_ids = config_diff_ids(&config).map_err(corrupt)?;
    let expected: Vec<&Digest> = statement.target.layers.iter().map(|l| &l.diff_id).collect();
    if diff_ids.iter().collect::<Vec<_>>() != expected {
        return Err(corrupt(
            "the config's rootfs.diff_ids differ from the statement's layers".into(),
        ));
    }
    writer.put_blob_bytes(&config)?;

    // Extents, gathered into scratch.
    let extents = match reader.next_record().map_err(record_err)? {
        Record::Extents(e) => e,
        other => {
            return Err(corrupt(format!(
                "expected the extents record, found {other:?}"
            )))
        }
    };
    let scratch = gather_extents(
        name,
        &statement.requires,
        statement.payload.scratch_bytes,
        &extents,
        bases,
        staging,
    )?;

    // A layer's exact blob is recreated from its staged tar on a second thread while the
    // next layer decodes, whatever its recipe's kind (per core: preflate about 20 MB/s, zlib
    // and Go level 6 20-35, pgzip 80-100; decoding is often faster). A pgzip blob's blocks
    // are spread over every core besides (see `gzip_recipe`, "What runs where").
    let (rebuilt, reused) = std::thread::scope(|s| -> Result<(usize, usize), Error> {
        let mut rebuilt = 0;
        let mut reused = 0;
        let mut recreating: Option<std::thread::ScopedJoinHandle<'_, Result<(), Error>>> = None;
        for (index, layer) in statement.target.layers.iter().enumerate() {
            progress.start(
                &format!("layer {}/{}", index + 1, statement.target.layers.len()),
                layer.size,
            );
            let mut frames = 0;
            let record = loop {
                match reader.next_record().map_err(record_err)? {
                    // One per layer at most: each may load a large dictionary.
                    Record::Frame(_) if frames == 1 => {
                        return Err(corrupt("two FRAME records before one layer".into()))
                    }
                    Record::Frame(ranges) => {
                        frames += 1;
                        next_frame(name, &mut reader, &scratch, &ranges, limits)?
                    }
                    other => break other,
                }
            };
            match record {
                Record::Present { index: i } | Record::Layer { index: i }
                    if i as usize == index
                        && matches!(
                            layer.storage,
                            LayerStorage::SourceBlob {
                                from: BlobFrom::Payload,
                                ..
                            }
                        ) =>
                {
                    return Err(corrupt(format!(
                        "layer {index} must come as its blob (BLOB record), found {record:?}"
                    )))
                }
                Record::Present { index: i } if i as usize == index => {
                    if !statement.requires.contains(&layer.diff_id) {
                        return Err(corrupt(format!(
                            "layer {index} is marked present but the statement does not require it"
                        )));
                    }
                    let blob_held = matches!(
                        layer.storage,
                        LayerStorage::SourceBlob {
                            from: BlobFrom::Device,
                            ..
                        }
                    );
                    if !blob_held && !writer.has_blob(&layer.diff_id) {
                        let stream = bases.open_layer(&layer.diff_id)?.ok_or_else(|| {
                            Error::MissingBase {
                                bundle: name.to_owned(),
                                diff_id: layer.diff_id.clone(),
                            }
                        })?;
                        writer.put_blob_verified(stream, &layer.diff_id, Some(layer.size))?;
                    }
                    reused += 1;
                }
                Record::Blob { index: i, len } if i as usize == index => {
                    let LayerStorage::SourceBlob {
                        digest,
                        size,
                        from: BlobFrom::Payload,
                        ..
                    } = &layer.storage
                    else {
                        return Err(corrupt(format!(
                            "layer {index} comes as a blob, the statement stores it otherwise"
                        )));
                    };
                    if len != *size {
                        return Err(corrupt(format!(
                            "layer {index}'s blob is {len} bytes, the statement says {size}"
                        )));
                    }
                    let mut blob = writer.blob_writer()?;
                    let copied = io::copy(&mut reader.body(len), &mut blob)
                        .map_err(|e| corrupt(e.to_string()))?;
                    if copied != len {
                        return Err(corrupt(format!("payload ends inside layer {index}'s blob")));
                    }
                    progress.advance(layer.size);
                    commit_source_blob(name, index, blob, digest, *size)?;
                    rebuilt += 1;
                }
                Record::Layer { index: i } if i as usize == index => {
                    let mut blob = writer.blob_writer()?;
                    apply_ops(
                        name,
                        &mut reader,
                        &scratch,
                        layer.size,
                        // A zstd patch's window is bounded by its output (itself capped), not by
                        // the payload codec's window.
                        limits.max_window_log,
                        limits,
                        &mut blob,
                        progress,
                    )?;
                    blob.commit(Some((&layer.diff_id, Some(layer.size))))
                        .map_err(|e| match e {
                            ImageError::DigestMismatch { actual, .. } => Error::LayerMismatch {
                                bundle: name.to_owned(),
                                index,
                                expected: layer.diff_id.clone(),
                                actual,
                            },
                            other => Error::Image(other),
                        })?;
                    rebuilt += 1;
                }
                other => {
                    return Err(corrupt(format!(
                        "expected the record of layer {index}, found {other:?}"
                    )))
                }
            }
            match &layer.storage {
                LayerStorage::Uncompressed { .. }
                | LayerStorage::SourceBlob {
                    from: BlobFrom::Payload,
                    ..
                } => {}
                LayerStorage::SourceBlob {
                    digest,
                    size,
                    from: BlobFrom::Device,
                    ..
                } => {
                    if !writer.has_blob(digest) {
                        let stream =
                            bases
                                .open_blob(digest)?
                                .ok_or_else(|| Error::MissingBaseBlob {
                                    bundle: name.to_owned(),
                                    index,
                                    digest: digest.clone(),
                                })?;
                        writer.put_blob_verified(stream, digest, Some(*size))?;
                    }
                }
                LayerStorage::SourceBlob {
                    digest,
                    size,
                    from: BlobFrom::Recipe,
                    ..
                } => {
                    let recipe = read_recipe(name, &mut reader, index, layer.size, limits)?;
                    if let Some(previous) = recreating.take() {
                        previous.join().expect("recreating a blob does not panic")?;
                    }
                    let (diff_id, digest, size) = (&layer.diff_id, digest.clone(), *size);
                    recreating = Some(s.spawn(move || {
                        recreate_blob(name, index, &recipe, writer, diff_id, &digest, size)
                    }));
                }
            }
            progress.finish();
        }
        if let Some(last) = recreating.take() {
            last.join().expect("recreating a blob does not panic")?;
        }
        Ok((rebuilt, reused))
    })?;
    // The tars of exact layers were only the material for their blobs; keep any blob the
    // manifest names (the config, or a layer stored as that very digest).
    let referenced: Vec<Digest> = statement
        .target
        .layers
        .iter()
        .map(|l| l.storage.blob(l).0)
        .chain(std::iter::once(statement.target.config_digest.clone()))
        .collect();
    for layer in &statement.target.layers {
        if layer.storage.is_exact_blob() && !referenced.contains(&layer.diff_id) {
            let tar = crate::image::oci_layout::blob_path(writer.dir(), &layer.diff_id);
            match fs::remove_file(&tar) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(Error::io("removing staged layer", tar)(e))
                }
                _ => {}
            }
        }
    }
    match reader.next_record().map_err(record_err)? {
        Record::End => {}
        other => return Err(corrupt(format!("expected END, found {other:?}"))),
    }
    reader.expect_eof().map_err(record_err)?;
    if reader.get_mut().remaining() != 0 {
        return Err(corrupt(format!(
            "the payload decodes to less than the {} bytes the statement declares",
            payload.decoded_size
        )));
    }
    // Drain what the decoder has not asked for (a frame epilogue) so the digest covers every
    // byte.
    let frames = reader.into_inner().into_inner();
    // Bytes buffered but not decoded were hashed when they were read.
    let mut raw = frames.into_inner().into_inner();
    io::copy(&mut raw, &mut io::sink()).map_err(Error::io("reading bundle", name))?;
    let (digest, count) = raw.finish();
    if count != payload.size {
        return Err(Error::Truncated {
            bundle: name.to_owned(),
            part: "payload",
            expected: payload.size,
            available: count,
        });
    }
    if digest != payload.sha256 {
        return Err(Error::PayloadDigestMismatch {
            bundle: name.to_owned(),
            expected: payload.sha256.clone(),
            actual: digest,
        });
    }
    Ok((rebuilt, reused))
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
    let recipe = GzipRecipe::from_bytes(&bytes, max_chunks(layer_size))
        .map_err(|e| corrupt(format!("layer {index}: {e}")))?;
    if recipe.plain_len() != layer_size {
        return Err(corrupt(format!(
            "the gzip recipe of layer {index} covers {} bytes, the layer has {layer_size}",
            recipe.plain_len()
        )));
    }
    Ok(recipe)
}

/// Recreates layer `index`'s exact gzip blob from its staged tar and checks it against the
/// statement's digest before it is stored.
fn recreate_blob(
    name: &str,
    index: usize,
    recipe: &GzipRecipe,
    writer: &OciLayoutWriter,
    diff_id: &Digest,
    digest: &Digest,
    size: u64,
) -> Result<(), Error> {
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
    commit_source_blob(name, index, blob, digest, size)
}

/// Stores layer `index`'s compressed blob if it is the one the statement names.
fn commit_source_blob(
    name: &str,
    index: usize,
    blob: crate::image::write::BlobWriter,
    digest: &Digest,
    size: u64,
) -> Result<(), Error> {
    blob.commit(Some((digest, Some(size))))
        .map_err(|e| match e {
            ImageError::DigestMismatch { actual, .. } => Error::ExactBlobMismatch {
                bundle: name.to_owned(),
                index,
                expected: digest.clone(),
                actual,
            },
            other => Error::Image(other),
        })?;
    Ok(())
}

/// Handles a FRAME record: builds the next frame's dictionary from scratch ranges (capped by
/// [`Limits::max_dictionary`]) and switches the decoder to it.
fn next_frame<R: BufRead>(
    name: &str,
    reader: &mut PayloadReader<CappedReader<Frames<R>>>,
    scratch: &Scratch,
    ranges: &[(u64, u64)],
    limits: &Limits,
) -> Result<(), Error> {
    let total = ranges
        .iter()
        .try_fold(0u64, |acc, (_, len)| acc.checked_add(*len))
        .unwrap_or(u64::MAX);
    crate::container::check_limit(name, "frame dictionary", total, limits.max_dictionary)?;
    let mut dictionary = Vec::with_capacity(total as usize);
    for &(offset, len) in ranges {
        scratch
            .range(name, offset, len)?
            .read_to_end(&mut dictionary)
            .map_err(Error::io("reading scratch", "scratch"))?;
    }
    if dictionary.starts_with(&ZSTD_DICT_MAGIC) {
        return Err(Error::CorruptPayload {
            bundle: name.to_owned(),
            reason: "a frame dictionary starts with the zstd dictionary magic".into(),
        });
    }
    reader
        .get_mut()
        .get_mut()
        .next_frame(&dictionary)
        .map_err(|e| Error::CorruptPayload {
            bundle: name.to_owned(),
            reason: format!("starting the next frame: {e}"),
        })
}

/// Copies `reader` to `writer`, telling read errors (the bundle's) from write errors (the
/// device's) apart.
fn copy_split(
    reader: &mut impl Read,
    writer: &mut impl Write,
    read_err: &dyn Fn(String) -> Error,
    write_err: &dyn Fn(io::Error) -> Error,
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
        writer.write_all(&buf[..n]).map_err(write_err)?;
        total += n as u64;
    }
}

/// Bytes of a MIX or MIX_RUNS record handled at a time.
const MIX_CHUNK: usize = 64 << 10;

/// Where adding a record's differences to scratch bytes failed.
enum MixFailure {
    Scratch(io::Error),
    Body(io::Error),
    Write(io::Error),
}

impl MixFailure {
    fn into_error(
        self,
        corrupt: &impl Fn(String) -> Error,
        record: &str,
        write_err: impl Fn(io::Error) -> Error,
    ) -> Error {
        match self {
            MixFailure::Scratch(e) => Error::io("reading scratch", "scratch")(e),
            MixFailure::Body(e) => corrupt(format!("{record}: {e}")),
            MixFailure::Write(e) => write_err(e),
        }
    }
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

/// Applies one layer's operations up to `END_LAYER`, writing at most `size` bytes.
#[allow(clippy::too_many_arguments)]
fn apply_ops<R: Read>(
    name: &str,
    reader: &mut PayloadReader<R>,
    scratch: &Scratch,
    size: u64,
    window_log: u32,
    limits: &Limits,
    out: &mut impl Write,
    progress: &dyn Progress,
) -> Result<(), Error> {
    let corrupt = |reason: String| Error::CorruptPayload {
        bundle: name.to_owned(),
        reason,
    };
    let mut written = 0u64;
    let claim = |len: u64, written: &mut u64| -> Result<(), Error> {
        match written.checked_add(len) {
            Some(total) if total <= size => {
                *written = total;
                Ok(())
            }
            _ => Err(corrupt(format!(
                "layer would grow past its declared {size} bytes"
            ))),
        }
    };
    // A failed write is the device's problem (full disk), not the bundle's.
    let write_err = |e: io::Error| Error::Io {
        what: "writing a rebuilt layer of",
        path: name.into(),
        source: e,
    };
    loop {
        match reader.next_record().map_err(|e| corrupt(e.to_string()))? {
            Record::Literal { len } => {
                claim(len, &mut written)?;
                let copied = copy_split(&mut reader.body(len), out, &corrupt, &write_err)?;
                if copied != len {
                    return Err(corrupt("payload ends inside a literal".into()));
                }
                progress.advance(len);
            }
            Record::Copy {
                scratch_offset,
                len,
            } => {
                claim(len, &mut written)?;
                io::copy(&mut scratch.range(name, scratch_offset, len)?, out).map_err(write_err)?;
                progress.advance(len);
            }
            Record::LiteralX86 { len } => {
                claim(len, &mut written)?;
                let mut unfiltered =
                    lzma_rust2::filter::bcj::BcjReader::new_x86(reader.body(len), 0);
                let n = copy_split(&mut unfiltered, out, &corrupt, &write_err)?;
                if n != len {
                    return Err(corrupt("payload ends inside an x86 literal".into()));
                }
                progress.advance(len);
            }
            Record::Mix {
                scratch_offset,
                len,
            } => {
                claim(len, &mut written)?;
                let mut base = scratch.range(name, scratch_offset, len)?;
                let mut body = reader.body(len);
                add_differences(&mut base, &mut body, len, &mut Vec::new(), out)
                    .map_err(|e| e.into_error(&corrupt, "mix", write_err))?;
                progress.advance(len);
            }
            Record::MixRuns {
                scratch_offset,
                len,
                body_len,
            } => {
                claim(len, &mut written)?;
                let mut base = scratch.range(name, scratch_offset, len)?;
                let mut body = reader.body(body_len);
                let mut chunk = Vec::new();
                let mut left = len;
                while left > 0 {
                    let runs = crate::payload::read_body_varint(&mut body)
                        .and_then(|zeros| {
                            let n = crate::payload::read_body_varint(&mut body)?;
                            Ok(zeros.zip(n))
                        })
                        .map_err(|e| corrupt(format!("mix runs: {e}")))?;
                    let Some((zeros, n)) = runs else {
                        return Err(corrupt("mix runs end before their length".into()));
                    };
                    match zeros.checked_add(n) {
                        Some(0) => return Err(corrupt("an empty mix run".into())),
                        Some(total) if total <= left => left -= total,
                        _ => return Err(corrupt("mix runs go past their length".into())),
                    }
                    let copied = io::copy(&mut (&mut base).take(zeros), out).map_err(write_err)?;
                    if copied != zeros {
                        return Err(corrupt("scratch ends inside a mix run".into()));
                    }
                    add_differences(&mut base, &mut body, n, &mut chunk, out)
                        .map_err(|e| e.into_error(&corrupt, "mix runs", write_err))?;
                }
                let mut rest = [0u8; 1];
                if body
                    .read(&mut rest)
                    .map_err(|e| corrupt(format!("mix runs: {e}")))?
                    != 0
                {
                    return Err(corrupt("mix runs longer than their length".into()));
                }
                progress.advance(len);
            }
            Record::Patch {
                kind,
                scratch_offset,
                base_len,
                out_len,
                patch_len,
            } => {
                claim(out_len, &mut written)?;
                if out_len == 0 {
                    return Err(corrupt("a patch that outputs nothing".into()));
                }
                crate::container::check_limit(name, "patch base", base_len, limits.max_patch_base)?;
                crate::container::check_limit(
                    name,
                    "patch output",
                    out_len,
                    limits.max_patch_output,
                )?;
                // A patch is never much larger than its output (bsdiff's raw form is about
                // output + 24 bytes per control triple).
                crate::container::check_limit(
                    name,
                    "patch",
                    patch_len,
                    limits.max_patch_output.saturating_mul(2),
                )?;
                // Checks the range before allocating for it.
                let base = scratch.read_at(name, scratch_offset, base_len)?;
                if base.starts_with(&ZSTD_DICT_MAGIC) {
                    return Err(corrupt(
                        "a patch base starts with the zstd dictionary magic".into(),
                    ));
                }
                let mut body = reader.body(patch_len);
                let produced = match kind {
                    PatchKind::Zstd => {
                        // The base by reference, as a prefix (decodes like a raw-content
                        // dictionary, without zstd taking a second copy of up to 64 MiB).
                        let mut dec = zstd::stream::read::Decoder::with_ref_prefix(
                            BufReader::new(&mut body),
                            &base,
                        )
                        .map_err(|e| corrupt(format!("zstd patch: {e}")))?;
                        dec.window_log_max(window_log)
                            .map_err(|e| corrupt(format!("zstd patch: {e}")))?;
                        let mut dec = dec.single_frame();
                        let mut capped = CappedReader::new(&mut dec, out_len, "patch output");
                        let n = copy_split(
                            &mut capped,
                            out,
                            &|e| corrupt(format!("zstd patch: {e}")),
                            &write_err,
                        )?;
                        // Nothing may follow the one frame, not even in zstd's read buffer.
                        if !dec.finish().buffer().is_empty() {
                            return Err(corrupt("data after the zstd patch's frame".into()));
                        }
                        n
                    }
                    PatchKind::Bsdiff | PatchKind::BsdiffX86 => {
                        let mut patch = Vec::with_capacity(patch_len.min(1 << 20) as usize);
                        body.read_to_end(&mut patch)
                            .map_err(|e| corrupt(format!("bsdiff patch: {e}")))?;
                        let apply = if kind == PatchKind::Bsdiff {
                            crate::bspatch::apply
                        } else {
                            crate::bspatch::apply_x86
                        };
                        let new = apply(&base, &patch, out_len as usize)
                            .map_err(|e| corrupt(format!("bsdiff patch: {e}")))?;
                        out.write_all(&new).map_err(write_err)?;
                        new.len() as u64
                    }
                };
                // Both decoders must have consumed the whole patch body.
                let rest =
                    io::copy(&mut body, &mut io::sink()).map_err(|e| corrupt(e.to_string()))?;
                if produced != out_len || rest != 0 {
                    return Err(corrupt(format!(
                        "patch produced {produced} bytes (declared {out_len}) and left {rest} patch bytes unread"
                    )));
                }
                progress.advance(out_len);
            }
            Record::EndLayer => {
                if written != size {
                    return Err(corrupt(format!(
                        "layer ends after {written} bytes, the statement declares {size}"
                    )));
                }
                return Ok(());
            }
            other => return Err(corrupt(format!("unexpected {other:?} inside a layer"))),
        }
    }
}

/// Disk bytes an apply of `statement` needs beside the bundle file: every layer uncompressed,
/// exact layers a second time as their recreated blob, the manifest, 1 MiB of slack, the
/// payload's declared scratch, all `copies` times (2 for a docker archive, which is written
/// from the staged layout). `None` when the declared sizes overflow. Pure: a receiver checks
/// it before it takes a bundle, from the statement alone.
pub fn space_needed(statement: &Statement, copies: u64) -> Option<u64> {
    let target = &statement.target;
    let image = target
        .layers
        .iter()
        .try_fold(target.manifest.len() as u64 + (1 << 20), |acc, l| {
            acc.checked_add(l.size)
        })?;
    // Exact layers are held twice while staged: the tar and the recreated blob.
    let image = target
        .layers
        .iter()
        .try_fold(image, |acc, l| match &l.storage {
            LayerStorage::SourceBlob { size, .. } => acc.checked_add(*size),
            LayerStorage::Uncompressed { .. } => Some(acc),
        })?;
    image
        .checked_mul(copies)?
        .checked_add(statement.payload.scratch_bytes)
}
