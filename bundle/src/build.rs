//! The encoder: target image + images on the device → unsigned bundle.
//!
//! 1. A target layer the device already holds (same diff_id in any base image) becomes a
//!    `PRESENT` record and costs nothing.
//! 2. Every base layer is scanned once for its files ([`crate::delta`]); every other target layer
//!    is scanned once (and spooled to a temporary file).
//! 3. Each file of a target layer is planned: identical content anywhere on the device is a
//!    `COPY`; a similar file (same path, same path with versions changed, same name and size
//!    class) is patched, with bsdiff, with [`crate::covers`] (both in bsdiff's layout) or with
//!    zstd using the old file as prefix, whichever is smallest, and only if that beats sending
//!    it; files over 16 MiB piece by piece. Tar metadata before a copied or patched file goes as
//!    its difference to the base file's; a stretch of such differences and the copies between
//!    them that continues in scratch is one run-coded `MIX_RUNS` (a rebuild that stamps every
//!    file with a new mtime: a few bytes a file). New files and the rest are literals (x86
//!    executables through the BCJ filter).
//! 4. The base ranges the plan needs become the payload's extents; the encoder gathers them
//!    exactly as the device will (one pass per base layer) to compute patches against them.
//! 5. Everything goes through one LZMA2 (or zstd) stream with a long window, so literal data
//!    repeated across files and layers is sent once.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sideload_signing::{
    Digest, LayerStorage, PayloadInfo, RepositoryName, SourceRef, Statement, Tag, Target,
    TargetLayer,
};

use crate::codec::{CodecSettings, FrameEncoder, PayloadCodec};
use crate::container::{write_bundle, DEFAULT_SIGNATURE_SLOT};
use crate::delta::{plan_region, scan_layer, BaseIndex, BaseRef, LayerScan, Region, RegionPlan};
use crate::error::Error;
use crate::exact::{ExactOptions, RecipeCache};
use crate::image::digest_reader::HashingWriter;
use crate::image::spec::media_types::OCI_MANIFEST;
use crate::image::spec::Descriptor;
use crate::image::ImageSource;
use crate::manifest::build_manifest;
use crate::payload::{Extent, PatchKind, PayloadWriter};
use crate::progress::Progress;
use crate::scratch::{gather_extents, BaseStore, Scratch, ZSTD_DICT_MAGIC};

/// Size of one literal record; also the read buffer of the encoder.
const LITERAL_CHUNK: usize = 1 << 20;

/// Everything about a bundle that is not derived from the images.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Repository the device stores the image under.
    pub repository: RepositoryName,
    /// Tags that move to the image on the device.
    pub tags: Vec<Tag>,
    /// Anti-rollback sequence for the repository.
    pub sequence: u64,
    /// Whether the bundle may go to a device that has applied a higher sequence.
    pub allow_downgrade: bool,
    /// Creation time, Unix seconds.
    pub created_at: u64,
    /// Expiry, Unix seconds.
    pub expires_at: u64,
    /// Who ordered it.
    pub ordered_by: String,
    /// Whom to contact.
    pub contact: String,
    /// How the payload is compressed. Its window is further capped to what the payload can
    /// use, so small bundles need little memory on the device.
    pub codec: CodecSettings,
    /// zstd level for patches (old file as prefix) and for the size estimates that pick
    /// between patch and literal.
    pub patch_level: i32,
    /// Bytes reserved for signatures.
    pub signature_slot: u32,
    /// Layers up to this size (uncompressed, and their closest base layer too) are also tried
    /// as one bsdiff/zstd patch of the whole layer, kept if smaller than the file-level ops.
    /// The device holds both in memory while applying such a patch; 0 turns this off.
    pub whole_layer_patch_limit: u64,
    /// Time the encoder may spend on bsdiff candidates (the slow part of a build); after it,
    /// files are patched with zstd only, and whole layers are not tried.
    pub patch_time_budget: std::time::Duration,
    /// Layers the device is known to hold beyond those of `bases` (by diff_id, from its
    /// inventory): target layers among them cost nothing, even when the image that holds them
    /// is not at hand to diff against.
    pub device_layers: Vec<Digest>,
    /// Compressed layer blobs the device is known to hold (from its inventory): a target
    /// layer stored as one of them needs no recipe.
    pub device_blobs: Vec<Digest>,
    /// Whether the device gets the source's exact compressed blobs (and so its manifest
    /// digest), and what that may cost.
    pub exact: ExactOptions,
}

impl BuildOptions {
    /// Defaults for everything but the names: LZMA2 level 9 with a 64 MiB dictionary, zstd
    /// level 19 for patches, 1 KiB signature slot.
    pub fn new(repository: RepositoryName, tags: Vec<Tag>, now: u64) -> Self {
        BuildOptions {
            repository,
            tags,
            sequence: now,
            allow_downgrade: false,
            created_at: now,
            expires_at: now + 90 * 24 * 3600,
            ordered_by: String::new(),
            contact: String::new(),
            codec: CodecSettings {
                codec: PayloadCodec::Lzma2,
                level: CodecSettings::default_level(PayloadCodec::Lzma2),
                window_log: 26,
                threads: 2,
            },
            patch_level: 19,
            signature_slot: DEFAULT_SIGNATURE_SLOT,
            whole_layer_patch_limit: MAX_WHOLE_LAYER,
            patch_time_budget: std::time::Duration::from_secs(600),
            device_layers: Vec::new(),
            device_blobs: Vec::new(),
            exact: ExactOptions::default(),
        }
    }
}

/// How one target layer was encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerEncoding {
    /// Already on the device, in the named base image.
    Present {
        /// Reference of the base image that holds it.
        base: String,
    },
    /// Rebuilt from copies, patches and literals.
    Delta(DeltaStats),
    /// The source's compressed blob itself (`--exact required`, no recipe possible).
    SourceBlob,
}

/// What a rebuilt layer is made of (uncompressed bytes of the layer tar).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeltaStats {
    /// Files copied from identical content on the device, and their bytes.
    pub copied_files: u64,
    /// Bytes copied.
    pub copied_bytes: u64,
    /// Files patched with zstd (old file as dictionary).
    pub zstd_patched_files: u64,
    /// Files patched in the bsdiff layout (with bsdiff's covers or [`crate::covers`]).
    pub bsdiff_patched_files: u64,
    /// Bytes of the patched files (their new size).
    pub patched_bytes: u64,
    /// Bytes of the patches themselves.
    pub patch_bytes: u64,
    /// Bytes sent as literals: tar headers, new files, files no patch made smaller.
    pub literal_bytes: u64,
    /// Tar metadata (headers, padding) sent as its bytewise difference to the metadata of the
    /// base file it draws from (MIX_RUNS records): typically a new mtime and checksum.
    pub mixed_bytes: u64,
    /// References of the base images the copies and patches came from.
    pub bases: Vec<String>,
    /// Set when the layer went as one patch against a whole base layer (small layers whose
    /// files mostly changed names), instead of file by file.
    pub whole_layer_patch: Option<PatchKind>,
}

/// What one target layer cost.
#[derive(Debug, Clone)]
pub struct LayerReport {
    /// Uncompressed layer digest.
    pub diff_id: Digest,
    /// Uncompressed size.
    pub size: u64,
    /// Size of the layer blob at the source (usually gzip).
    pub source_blob_size: u64,
    /// How it was encoded.
    pub encoding: LayerEncoding,
    /// Compressed payload bytes spent on it (its recipe included).
    pub payload_bytes: u64,
    /// How the device stores it.
    pub storage: LayerStorage,
    /// Bytes of its gzip recipe (before the payload codec), 0 if it has none.
    pub recipe_bytes: u64,
    /// Its recipe in words ("zlib level 6", "preflate corrections, 2 chunks"), if it has one.
    pub recipe: Option<String>,
}

/// Result of a build.
#[derive(Debug, Clone)]
pub struct BuildReport {
    /// The bundle written.
    pub bundle: PathBuf,
    /// Its total size.
    pub bundle_size: u64,
    /// The statement (unsigned so far).
    pub statement: Statement,
    /// Per target layer.
    pub layers: Vec<LayerReport>,
    /// Why the device will not hold the source's manifest digest; `None` when it will.
    pub not_exact: Option<String>,
}

impl BuildReport {
    /// Bytes of the target image as the source stores it (config + layer blobs): what a plain
    /// transfer of the whole image would move.
    pub fn source_image_size(&self) -> u64 {
        self.layers.iter().map(|l| l.source_blob_size).sum()
    }
}

/// Builds an unsigned bundle at `out` (written aside and renamed into place, so `out` is either
/// complete or absent).
pub fn build_bundle(
    target: &dyn ImageSource,
    bases: &[&dyn ImageSource],
    options: &BuildOptions,
    out: &Path,
    progress: &dyn Progress,
) -> Result<BuildReport, Error> {
    build_with_cache(
        target,
        bases,
        options,
        out,
        progress,
        &RecipeCache::default(),
    )
}

/// [`build_bundle`] with recipes shared between builds of one target.
fn build_with_cache(
    target: &dyn ImageSource,
    bases: &[&dyn ImageSource],
    options: &BuildOptions,
    out: &Path,
    progress: &dyn Progress,
    recipes: &RecipeCache,
) -> Result<BuildReport, Error> {
    let image = target.image();
    if options.expires_at <= options.created_at {
        return Err(Error::InvalidBuild("expiry must be after creation".into()));
    }
    let levels = CodecSettings::levels(options.codec.codec);
    if !levels.contains(&options.codec.level) {
        return Err(Error::InvalidBuild(format!(
            "{} level must be {}-{}",
            options.codec.codec,
            levels.start(),
            levels.end()
        )));
    }
    if !(1..=22).contains(&options.patch_level) || !(12..=27).contains(&options.codec.window_log) {
        return Err(Error::InvalidBuild(
            "patch level must be 1-22 and window log 12-27".into(),
        ));
    }
    let config_diff_ids = crate::manifest::config_diff_ids(&image.config.bytes)
        .map_err(|e| Error::InvalidBuild(format!("{}: {e}", image.reference)))?;
    if config_diff_ids != image.diff_ids() {
        return Err(Error::InvalidBuild(format!(
            "{}: config diff_ids do not match the image's layers",
            image.reference
        )));
    }

    // Every layer any base image holds, by diff_id.
    let mut on_device: HashMap<&Digest, &str> = HashMap::new();
    for base in bases {
        for layer in &base.image().layers {
            on_device
                .entry(&layer.diff_id)
                .or_insert(&base.image().reference);
        }
    }
    for diff_id in &options.device_layers {
        on_device.entry(diff_id).or_insert("the device's inventory");
    }

    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let io_err = |what| Error::io(what, out);
    let deadline = std::time::Instant::now() + options.patch_time_budget;

    // Exact blobs: which layers the device recreates from a recipe, which it already holds,
    // which go whole.
    let held_blobs: HashSet<Digest> = bases
        .iter()
        .filter(|_| options.exact.trust_base_blobs)
        .flat_map(|b| b.image().layers.iter())
        .filter(|l| l.blob_digest != l.diff_id)
        .map(|l| l.blob_digest.clone())
        .chain(options.device_blobs.iter().cloned())
        .collect();
    let exact = crate::exact::plan(target, &held_blobs, options.exact, recipes, progress)?;
    if let Some(why) = &exact.not_exact {
        tracing::info!("{}: layers stored uncompressed: {why}", image.reference);
    }

    // Which target layers need sending, and what the device holds to build them from.
    let to_send: Vec<usize> = (0..image.layers.len())
        .filter(|&i| !on_device.contains_key(&image.layers[i].diff_id) && !exact.sends_blob(i))
        .collect();
    let base_layers = BaseLayers::new(bases);
    let mut index = BaseIndex::default();
    let mut base_scans: Vec<LayerScan> = Vec::new();
    if !to_send.is_empty() {
        for (i, (diff_id, source, layer)) in base_layers.list.iter().enumerate() {
            progress.start(
                &format!("scan base {}/{}", i + 1, base_layers.list.len()),
                0,
            );
            let scan = scan_layer(source.open_layer(*layer)?).map_err(|e| {
                Error::InvalidBuild(format!(
                    "{}: reading base layer {diff_id}: {e}",
                    source.image().reference
                ))
            })?;
            index.add_layer(i, &scan);
            base_scans.push(scan);
            progress.finish();
        }
    }
    let mut scans: HashMap<usize, (LayerScan, File)> = HashMap::new();
    for &i in &to_send {
        progress.start(&format!("scan layer {}/{}", i + 1, image.layers.len()), 0);
        let mut spool =
            tempfile::tempfile_in(dir).map_err(Error::io("creating spool file in", dir))?;
        let scan = scan_layer(Tee {
            inner: target.open_layer(i)?,
            copy: BufWriter::new(&mut spool),
        })
        .map_err(|e| layer_read_error(image, i, e))?;
        scans.insert(i, (scan, spool));
        progress.finish();
    }

    // The plan, and the base ranges it needs.
    let mut requires: Vec<Digest> = Vec::new();
    for layer in &image.layers {
        if on_device.contains_key(&layer.diff_id) && !requires.contains(&layer.diff_id) {
            requires.push(layer.diff_id.clone());
        }
    }
    let mut plans: HashMap<usize, Vec<RegionPlan>> = HashMap::new();
    let mut dictionaries: HashMap<usize, Vec<BaseRef>> = HashMap::new();
    let mut whole_layers: HashMap<usize, BaseRef> = HashMap::new();
    let mut wanted: Vec<BaseRef> = Vec::new();
    for &i in &to_send {
        let plan: Vec<RegionPlan> = scans[&i]
            .0
            .regions
            .iter()
            .map(|r| plan_region(&index, r))
            .collect();
        for (region, p) in scans[&i].0.regions.iter().zip(&plan) {
            if let RegionPlan::CopyWithHeaders(at) | RegionPlan::Copy(at) | RegionPlan::Patch(at) =
                p
            {
                wanted.push(*at);
            }
            wanted.extend(mix_base(p, region, &base_scans));
        }
        // What the target sends as literals: metadata that is neither copied with its file
        // nor sent as a difference to the base's headers (MIX), and files with nothing
        // similar on the device. The dictionary (the base layer's metadata) pays off only if
        // there is enough of that to compress against it: listing its ranges costs a few KB
        // (app-update, whose headers all go as MIX: 49.5 -> 45.7 KB without it).
        let literal_metadata: u64 = scans[&i]
            .0
            .regions
            .iter()
            .zip(&plan)
            .map(|(r, p)| {
                let metadata = if matches!(p, RegionPlan::CopyWithHeaders(_))
                    || mix_base(p, r, &base_scans).is_some()
                {
                    0
                } else {
                    r.offset - r.gap_offset
                };
                let data = if matches!(p, RegionPlan::Literal) {
                    r.len
                } else {
                    0
                };
                metadata + data
            })
            .sum();
        let dictionary = if literal_metadata >= MIN_LITERAL_METADATA_FOR_DICTIONARY {
            frame_dictionary(&plan, &base_scans, crate::Limits::default().max_dictionary)
        } else {
            Vec::new()
        };
        // A small layer may also go as one patch against its closest base layer, whole.
        if let Some(closest) = closest_base_layer(&plan) {
            let base_len = base_scans[closest].len;
            let limit = options.whole_layer_patch_limit.min(MAX_WHOLE_LAYER);
            if scans[&i].0.len <= limit && base_len <= limit {
                let whole = BaseRef {
                    layer: closest,
                    offset: 0,
                    len: base_len,
                };
                wanted.push(whole);
                whole_layers.insert(i, whole);
            }
        }
        wanted.extend(&dictionary);
        dictionaries.insert(i, dictionary);
        plans.insert(i, plan);
    }
    let layout = ScratchLayout::new(&wanted, &base_layers, &mut requires);
    let scratch_dir =
        tempfile::tempdir_in(dir).map_err(Error::io("creating scratch directory in", dir))?;
    let scratch = gather_extents(
        &out.display().to_string(),
        &requires,
        layout.total,
        &layout.extents,
        &base_layers,
        scratch_dir.path(),
    )?;

    let mut payload_file =
        tempfile::tempfile_in(dir).map_err(Error::io("creating temporary payload in", dir))?;
    let hashed = HashingWriter::new(BufWriter::new(&mut payload_file));
    let largest_dictionary = dictionaries
        .values()
        .map(|d| d.iter().map(|at| at.len).sum::<u64>())
        .max()
        .unwrap_or(0);
    let codec = payload_codec(options, &image.config.bytes, &scans, largest_dictionary);
    let frames = FrameEncoder::new(hashed, codec, &[]).map_err(io_err("starting the codec for"))?;
    let mut writer =
        PayloadWriter::new(HashingWriter::new(frames)).map_err(io_err("writing payload of"))?;
    writer
        .config(&image.config.bytes)
        .map_err(io_err("writing payload of"))?;
    writer
        .extents(&layout.extents)
        .map_err(io_err("writing payload of"))?;
    // Flush so the config's bytes are not counted against the first layer.
    writer
        .get_mut()
        .flush()
        .map_err(io_err("writing payload of"))?;

    let mut layers = Vec::with_capacity(image.layers.len());
    let mut reports = Vec::with_capacity(image.layers.len());
    for (index, layer) in image.layers.iter().enumerate() {
        let index32 =
            u32::try_from(index).map_err(|_| Error::InvalidBuild("too many layers".into()))?;
        let before = compressed_so_far(&mut writer);
        let (encoding, size) = if exact.sends_blob(index) {
            let mut blob = target.open_layer_blob(index)?;
            writer
                .blob(index32, layer.blob_size, &mut blob)
                .map_err(|e| layer_read_error(image, index, e))?;
            // The manifest needs the uncompressed size; counting also checks the diff_id.
            let size = std::io::copy(&mut target.open_layer(index)?, &mut std::io::sink())
                .map_err(|e| layer_read_error(image, index, e))?;
            (LayerEncoding::SourceBlob, size)
        } else if let Some(base) = on_device.get(&layer.diff_id) {
            writer
                .present(index32)
                .map_err(io_err("writing payload of"))?;
            // The manifest needs the uncompressed size; counting also checks the diff_id.
            let size = std::io::copy(&mut target.open_layer(index)?, &mut std::io::sink())
                .map_err(|e| layer_read_error(image, index, e))?;
            (
                LayerEncoding::Present {
                    base: base.to_string(),
                },
                size,
            )
        } else {
            let (scan, spool) = scans.get_mut(&index).expect("scanned");
            progress.start(
                &format!("encode layer {}/{}", index + 1, image.layers.len()),
                scan.len,
            );
            let name = out.display().to_string();
            let ranges: Vec<(u64, u64)> = dictionaries[&index]
                .iter()
                .map(|at| (layout.scratch_offset(at), at.len))
                .collect();
            let mut dictionary = Vec::new();
            for &(offset, len) in &ranges {
                scratch
                    .range(&name, offset, len)?
                    .read_to_end(&mut dictionary)
                    .map_err(io_err("reading scratch of"))?;
            }
            let mut encoder = LayerEncoder {
                deadline,
                pending: None,
                scratch: &scratch,
                layout: &layout,
                base_scans: &base_scans,
                level: options.patch_level,
                stats: DeltaStats::default(),
                progress,
                name: name.clone(),
            };
            let plan = &plans[&index];
            // For a small layer, one patch of the whole layer may beat the file-level ops
            // (e.g. a renamed directory changes every header). Measure both; keep the smaller.
            let whole = match whole_layers.get(&index) {
                Some(at) if std::time::Instant::now() < deadline => {
                    let (whole_at, patch) = whole_layer_patch(
                        spool,
                        at,
                        &scratch,
                        &layout,
                        options.patch_level,
                        &name,
                    )?;
                    let mut trial = PayloadWriter::new(
                        FrameEncoder::new(Vec::new(), codec, &dictionary)
                            .map_err(io_err("starting the codec for"))?,
                    )
                    .map_err(io_err("writing payload of"))?;
                    let mut quiet = LayerEncoder {
                        progress: &crate::progress::NoProgress,
                        ..encoder.clone()
                    };
                    rewind(spool).map_err(io_err("reading spool of"))?;
                    let file: &File = spool;
                    quiet.encode(
                        &mut trial,
                        file,
                        &mut std::io::BufReader::new(file),
                        scan,
                        plan,
                        &base_layers,
                    )?;
                    let file_level = trial
                        .finish()
                        .and_then(|z| z.finish())
                        .map_err(io_err("writing payload of"))?
                        .len();
                    (patch.2 < file_level).then_some((whole_at, patch))
                }
                _ => None,
            };
            let mut ranges = ranges;
            if dictionary.starts_with(&ZSTD_DICT_MAGIC) {
                // zstd would take it as a formatted dictionary: start it one byte later.
                dictionary.remove(0);
                ranges[0].0 += 1;
                ranges[0].1 -= 1;
            }
            if !ranges.is_empty() && whole.is_none() {
                // Tar headers of the target are mostly those of a base layer with a few bytes
                // changed: a frame whose dictionary is that layer's headers sends them cheaply.
                writer
                    .frame(&ranges)
                    .map_err(io_err("writing payload of"))?;
                writer
                    .get_mut()
                    .get_mut()
                    .next_frame(&dictionary)
                    .map_err(io_err("writing payload of"))?;
            }
            writer
                .begin_layer(index32)
                .map_err(io_err("writing payload of"))?;
            if let Some((at, (kind, patch, _))) = whole {
                writer
                    .patch(kind, layout.scratch_offset(&at), at.len, scan.len, &patch)
                    .map_err(io_err("writing payload of"))?;
                encoder.stats.whole_layer_patch = Some(kind);
                encoder.stats.patched_bytes = scan.len;
                encoder.stats.patch_bytes = patch.len() as u64;
                encoder
                    .stats
                    .bases
                    .push(base_layers.list[at.layer].1.image().reference.clone());
                progress.advance(scan.len);
            } else {
                rewind(spool).map_err(io_err("reading spool of"))?;
                let file: &File = spool;
                encoder.encode(
                    &mut writer,
                    file,
                    &mut std::io::BufReader::new(file),
                    scan,
                    plan,
                    &base_layers,
                )?;
            }
            let mut stats = encoder.stats;
            writer.end_layer().map_err(io_err("writing payload of"))?;
            stats.bases.sort();
            stats.bases.dedup();
            progress.finish();
            (LayerEncoding::Delta(stats), scan.len)
        };
        let recipe = exact.recipes.get(&index);
        if let Some(recipe) = recipe {
            writer
                .recipe(index32, recipe)
                .map_err(io_err("writing payload of"))?;
        }
        writer
            .get_mut()
            .flush()
            .map_err(io_err("writing payload of"))?;
        let payload_bytes = compressed_so_far(&mut writer) - before;
        let storage = exact.storages[index].clone();
        layers.push(TargetLayer {
            diff_id: layer.diff_id.clone(),
            size,
            storage: storage.clone(),
        });
        reports.push(LayerReport {
            diff_id: layer.diff_id.clone(),
            size,
            source_blob_size: layer.blob_size,
            encoding,
            payload_bytes,
            storage,
            recipe_bytes: recipe.map_or(0, |r| r.len() as u64),
            recipe: recipe.map(|r| {
                crate::gzip_recipe::GzipRecipe::from_bytes(r, u64::MAX)
                    .expect("the encoder's own recipe parses")
                    .describe()
            }),
        });
    }

    let records_version = writer.format_version();
    let counted = writer.finish().map_err(io_err("writing payload of"))?;
    let (frames, _, decoded_size) = counted.finish();
    let hashed = frames.finish().map_err(io_err("finishing the codec for"))?;
    let (buffered, payload_digest, payload_size) = hashed.finish();
    buffered
        .into_inner()
        .map_err(|e| Error::io("writing payload of", out)(e.into_error()))?;

    let (manifest_media_type, manifest) = match &exact.manifest {
        Some((media_type, bytes)) => (media_type.clone(), bytes.clone()),
        None => (
            OCI_MANIFEST.to_owned(),
            build_manifest(
                &image.config.digest,
                image.config.bytes.len() as u64,
                layers
                    .iter()
                    .map(|l| {
                        let (digest, size) = l.storage.blob(l);
                        Descriptor::new(l.storage.media_type(), digest, size)
                    })
                    .collect(),
            ),
        ),
    };
    let statement = Statement {
        // The lowest version that describes the bundle: devices that predate a version still
        // apply what does not need it.
        format_version: records_version.max(if layers.iter().any(|l| l.storage.is_exact_blob()) {
            2
        } else {
            1
        }),
        target: Target {
            repository: options.repository.clone(),
            tags: options.tags.clone(),
            platform: image.platform.clone(),
            config_digest: image.config.digest.clone(),
            layers,
            manifest_media_type,
            manifest_digest: Digest::of_bytes(&manifest),
            manifest: String::from_utf8(manifest).expect("serde_json writes UTF-8"),
            source: SourceRef {
                reference: image.reference.clone(),
                manifest_digest: image.manifest.as_ref().map(|m| m.digest.clone()),
            },
        },
        requires,
        payload: PayloadInfo {
            size: payload_size,
            sha256: payload_digest,
            codec: codec.codec,
            window_log: codec.window_log,
            decoded_size,
            scratch_bytes: layout.total,
        },
        sequence: options.sequence,
        allow_downgrade: options.allow_downgrade,
        created_at: options.created_at,
        expires_at: options.expires_at,
        ordered_by: options.ordered_by.clone(),
        contact: options.contact.clone(),
    };

    drop(scratch);
    payload_file
        .seek(SeekFrom::Start(0))
        .map_err(io_err("reading back payload of"))?;
    // Bundles are not secret: readable by all, as a file cp would make.
    let mut bundle_size = 0;
    crate::fsutil::replace_file(out, 0o644, |file| {
        let mut w = BufWriter::new(file);
        bundle_size = write_bundle(
            &mut w,
            &statement.to_canonical_json(),
            &[],
            options.signature_slot,
            &mut payload_file,
        )?;
        w.flush()
    })
    .map_err(io_err("writing"))?;

    Ok(BuildReport {
        bundle: out.to_owned(),
        bundle_size,
        statement,
        layers: reports,
        not_exact: exact.not_exact,
    })
}

/// How small a bundle each base image alone would give: the case study's "rank the images on
/// the device" step, for reports. (The encoder itself uses all bases together, which is never
/// worse than the best one alone.) Returns (base reference, bundle size), smallest first; each
/// trial bundle is built in a temporary directory beside `dir` and removed.
pub fn rank_bases(
    target: &dyn ImageSource,
    bases: &[&dyn ImageSource],
    options: &BuildOptions,
    dir: &Path,
) -> Result<Vec<(String, u64)>, Error> {
    let scratch = tempfile::tempdir_in(dir).map_err(Error::io("creating a directory in", dir))?;
    // A recipe depends only on the target layer: made once, shared by every trial.
    let recipes = RecipeCache::default();
    let mut ranking = Vec::with_capacity(bases.len());
    for (i, base) in bases.iter().enumerate() {
        let out = scratch.path().join(format!("trial-{i}.bundle"));
        let report = build_with_cache(
            target,
            &[*base],
            options,
            &out,
            &crate::progress::NoProgress,
            &recipes,
        )?;
        ranking.push((base.image().reference.clone(), report.bundle_size));
        std::fs::remove_file(&out).map_err(Error::io("removing", &out))?;
    }
    ranking.sort_by_key(|(_, size)| *size);
    Ok(ranking)
}

/// The distinct layers of the base images, in a fixed order, as a [`BaseStore`] for gathering.
struct BaseLayers<'a> {
    list: Vec<(Digest, &'a dyn ImageSource, usize)>,
}

impl<'a> BaseLayers<'a> {
    fn new(bases: &[&'a dyn ImageSource]) -> Self {
        let mut list: Vec<(Digest, &'a dyn ImageSource, usize)> = Vec::new();
        for base in bases {
            for (i, layer) in base.image().layers.iter().enumerate() {
                if !list.iter().any(|(d, _, _)| d == &layer.diff_id) {
                    list.push((layer.diff_id.clone(), *base, i));
                }
            }
        }
        BaseLayers { list }
    }
}

impl BaseStore for BaseLayers<'_> {
    fn contains(&self, diff_id: &Digest) -> bool {
        self.list.iter().any(|(d, _, _)| d == diff_id)
    }

    fn open_layer(
        &self,
        diff_id: &Digest,
    ) -> Result<Option<Box<dyn Read + Send + '_>>, crate::image::ImageError> {
        match self.list.iter().find(|(d, _, _)| d == diff_id) {
            Some((_, source, i)) => source.open_layer(*i).map(Some),
            None => Ok(None),
        }
    }
}

/// Where each needed base range lands in the scratch store: the merged, sorted extents and a
/// lookup from (base layer, offset) to scratch offset.
struct ScratchLayout {
    extents: Vec<Extent>,
    /// Per base layer (index in `BaseLayers::list`): its extents as (offset, len, scratch
    /// offset), sorted by offset.
    by_layer: HashMap<usize, Vec<(u64, u64, u64)>>,
    total: u64,
}

impl ScratchLayout {
    /// Merges the wanted ranges per base layer; adds the base layers to `requires`.
    fn new(wanted: &[BaseRef], bases: &BaseLayers<'_>, requires: &mut Vec<Digest>) -> Self {
        let mut by_layer: Vec<(usize, u64, u64)> = wanted
            .iter()
            .map(|w| (w.layer, w.offset, w.offset + w.len))
            .collect();
        by_layer.sort_unstable();
        let mut merged: Vec<(usize, u64, u64)> = Vec::new();
        for (layer, start, end) in by_layer {
            match merged.last_mut() {
                Some(last) if last.0 == layer && start <= last.2 => last.2 = last.2.max(end),
                _ => merged.push((layer, start, end)),
            }
        }
        // requires_index must grow with the extents' order: number base layers as they come.
        let mut extents = Vec::with_capacity(merged.len());
        let mut starts = Vec::with_capacity(merged.len());
        let mut total = 0u64;
        for (layer, start, end) in merged {
            let diff_id = &bases.list[layer].0;
            let requires_index = match requires.iter().position(|d| d == diff_id) {
                Some(i) => i,
                None => {
                    requires.push(diff_id.clone());
                    requires.len() - 1
                }
            };
            extents.push(Extent {
                requires_index: requires_index as u32,
                offset: start,
                len: end - start,
            });
            starts.push((layer, total));
            total += end - start;
        }
        // The format wants extents sorted by (requires_index, offset).
        let mut order: Vec<usize> = (0..extents.len()).collect();
        order.sort_by_key(|&i| (extents[i].requires_index, extents[i].offset));
        let mut sorted_extents = Vec::with_capacity(extents.len());
        let mut by_layer: HashMap<usize, Vec<(u64, u64, u64)>> = HashMap::new();
        let mut offset = 0u64;
        for i in order {
            let e = extents[i];
            sorted_extents.push(e);
            by_layer
                .entry(starts[i].0)
                .or_default()
                .push((e.offset, e.len, offset));
            offset += e.len;
        }
        // Within one base layer, extents are already in offset order.
        ScratchLayout {
            extents: sorted_extents,
            by_layer,
            total,
        }
    }

    /// Scratch offset of a wanted base range.
    fn scratch_offset(&self, at: &BaseRef) -> u64 {
        let list = &self.by_layer[&at.layer];
        let i = list.partition_point(|&(offset, _, _)| offset <= at.offset) - 1;
        let (offset, len, start) = list[i];
        debug_assert!(
            at.offset + at.len <= offset + len,
            "wanted range inside its extent"
        );
        start + (at.offset - offset)
    }
}

/// Copies what is read into `copy` (the target layer's spool file).
struct Tee<R, W> {
    inner: R,
    copy: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        if n == 0 {
            self.copy.flush()?;
        }
        Ok(n)
    }
}

/// Largest patch base (old side; the new side is at most a [`PATCH_PIECE`]) also tried with
/// bsdiff's layout. Its suffix array needs 4 bytes per old byte (192 MiB per worker at 48 MiB)
/// and seconds of sorting, and its match search tens of seconds on the largest, but on
/// executables and shared libraries these patches are 2-3x smaller than zstd's (libjvm.so
/// update: 0.8 MB against 2.0 MB); the patch time budget bounds it.
const MAX_BSDIFF_FILE: usize = 48 << 20;

/// Largest piece of a file patched as one operation (new side). A larger file is patched piece
/// by piece, each against the part of the old file around the same relative position, so the
/// device never holds more than [`PATCH_WINDOW`] + this in memory for one patch, whatever the
/// file's size (JDK `modules` images are 130 MB).
pub const PATCH_PIECE: u64 = 16 << 20;

/// Largest base range one piece is patched against (within the decoder's patch-base limit).
pub const PATCH_WINDOW: u64 = 48 << 20;

/// One piece of a file planned as a patch: its length and its patch, or `None` when sending the
/// piece literally is smaller.
#[derive(Default)]
struct Piece {
    len: u64,
    patch: Option<(PatchKind, Vec<u8>, BaseRef)>,
}

/// Per region planned as a patch: its pieces, in file order.
type PatchDecisions = HashMap<usize, Vec<Piece>>;

/// How a file of `new_len` bytes planned as a patch against `base` is cut into pieces: per
/// piece, its range in the new file and the base range it is patched against. A base that fits
/// the window is used whole for every piece; a larger one contributes the window centred on
/// the piece's relative position (updated packages mostly change files in place, so content
/// stays near its proportional offset).
fn patch_pieces(base: &BaseRef, new_len: u64) -> Vec<(u64, u64, BaseRef)> {
    let count = new_len.div_ceil(PATCH_PIECE).max(1);
    (0..count)
        .map(|k| {
            let start = k * PATCH_PIECE;
            let len = PATCH_PIECE.min(new_len - start);
            let window = if base.len <= PATCH_WINDOW {
                *base
            } else {
                let centre =
                    ((start + len / 2) as u128 * base.len as u128 / new_len.max(1) as u128) as u64;
                let from = centre
                    .saturating_sub(PATCH_WINDOW / 2)
                    .min(base.len - PATCH_WINDOW);
                BaseRef {
                    offset: base.offset + from,
                    len: PATCH_WINDOW,
                    ..*base
                }
            };
            (start, len, window)
        })
        .collect()
}

/// Emits one target layer's operations from its spooled bytes and its plan.
#[derive(Clone)]
struct LayerEncoder<'a> {
    /// After this instant, patches are made with zstd only (bsdiff is the slow one).
    deadline: std::time::Instant,
    /// Copies and header differences not yet written, so that the next one can extend them
    /// when it continues in scratch: (scratch offset, what they make). Written as one COPY if
    /// nothing differs, else as one MIX_RUNS.
    pending: Option<(u64, crate::payload::MixRuns)>,
    scratch: &'a Scratch,
    layout: &'a ScratchLayout,
    base_scans: &'a [LayerScan],
    level: i32,
    stats: DeltaStats,
    progress: &'a dyn Progress,
    name: String,
}

impl LayerEncoder<'_> {
    fn encode<W: Write>(
        &mut self,
        writer: &mut PayloadWriter<W>,
        spool_file: &File,
        spool: &mut impl Read,
        scan: &LayerScan,
        plan: &[RegionPlan],
        bases: &BaseLayers<'_>,
    ) -> Result<(), Error> {
        let mut patches = self.compute_patches(spool_file, scan, plan)?;
        let mut pos = 0u64;
        for (i, (region, plan)) in scan.regions.iter().zip(plan).enumerate() {
            if let RegionPlan::CopyWithHeaders(at) = plan {
                if region.gap_offset == pos {
                    // Headers and content as the base has them: one copy, merged with the
                    // previous one when the base bytes follow on.
                    skip(spool, region.offset + region.len - pos).map_err(self.io_err())?;
                    pos = region.offset + region.len;
                    self.copy(writer, self.layout.scratch_offset(at), at.len)?;
                    self.stats.copied_files += 1;
                    self.stats.copied_bytes += region.len;
                    self.stats
                        .bases
                        .push(bases.list[at.layer].1.image().reference.clone());
                    self.progress.advance(at.len);
                    continue;
                }
            }
            let base_gap = mix_base(plan, region, self.base_scans);
            self.gap(writer, spool, region.offset - pos, base_gap)?;
            pos = region.offset + region.len;
            match plan {
                RegionPlan::CopyWithHeaders(at) | RegionPlan::Copy(at) => {
                    // (With headers, but not where the gap starts: copy the content only.)
                    let content = at.offset + at.len - region.len;
                    let at = BaseRef {
                        offset: content,
                        len: region.len,
                        ..*at
                    };
                    skip(spool, region.len).map_err(self.io_err())?;
                    self.copy(writer, self.layout.scratch_offset(&at), region.len)?;
                    self.stats.copied_files += 1;
                    self.stats.copied_bytes += region.len;
                    self.stats
                        .bases
                        .push(bases.list[at.layer].1.image().reference.clone());
                    self.progress.advance(region.len);
                }
                RegionPlan::Patch(at) => {
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
                        Some(PatchKind::Bsdiff | PatchKind::BsdiffX86) => {
                            self.stats.bsdiff_patched_files += 1
                        }
                        None => {}
                    }
                    if kind.is_some() {
                        self.stats
                            .bases
                            .push(bases.list[at.layer].1.image().reference.clone());
                    }
                    self.progress.advance(region.len);
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
    ) -> Result<&mut crate::payload::MixRuns, Error> {
        let continues = self.pending.as_ref().is_some_and(|(start, runs)| {
            start + runs.len() == offset && runs.body_len() < MAX_QUEUED_RUNS
        });
        if !continues {
            self.flush_copy(writer)?;
            self.pending = Some((offset, crate::payload::MixRuns::default()));
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

    /// Works out, on every core, the best patch of each piece of each region planned as a
    /// patch (see [`patch_pieces`]): `None` for a piece whose patch is not smaller than sending
    /// it.
    fn compute_patches(
        &self,
        spool: &File,
        scan: &LayerScan,
        plan: &[RegionPlan],
    ) -> Result<PatchDecisions, Error> {
        use std::os::unix::fs::FileExt;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Mutex;
        // (region, piece number, offset in the file, length, base range), largest first so
        // the two cores finish together.
        let mut work: Vec<(usize, usize, u64, u64, BaseRef)> = plan
            .iter()
            .enumerate()
            .filter_map(|(i, p)| match p {
                RegionPlan::Patch(at) => Some((i, at)),
                _ => None,
            })
            .flat_map(|(i, at)| {
                patch_pieces(at, scan.regions[i].len)
                    .into_iter()
                    .enumerate()
                    .map(move |(k, (start, len, base))| (i, k, start, len, base))
            })
            .collect();
        work.sort_by_key(|w| std::cmp::Reverse(w.3));
        let next = AtomicUsize::new(0);
        let results = Mutex::new(HashMap::with_capacity(work.len()));
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let one = |i: usize,
                   start: u64,
                   len: u64,
                   at: BaseRef|
         -> Result<Option<(PatchKind, Vec<u8>, BaseRef)>, Error> {
            let region = &scan.regions[i];
            let mut new = vec![0u8; len as usize];
            spool
                .read_exact_at(&mut new, region.offset + start)
                .map_err(Error::io("reading spool of", &self.name))?;
            let (at, old) = patch_base(self.scratch, self.layout, &at, &self.name)?;
            if new.is_empty() || old.is_empty() {
                return Ok(None);
            }
            let started = std::time::Instant::now();
            let literal_cost = zstd::bulk::compress(&new, self.level)
                .map_err(|e| Error::InvalidBuild(format!("compressing: {e}")))?
                .len();
            // Past the time budget, only the fast zstd patch is tried.
            let max_bsdiff = if started < self.deadline {
                MAX_BSDIFF_FILE
            } else {
                0
            };
            let (kind, patch, cost) = best_patch(&old, &new, self.level, max_bsdiff)?;
            // Where a build's time and bytes go (SIDELOAD_LOG=sideload_bundle=debug).
            tracing::debug!(
                path = %String::from_utf8_lossy(&region.path),
                piece_at = start,
                new = len,
                old = old.len(),
                ?kind,
                cost,
                literal_cost,
                past_budget = max_bsdiff == 0,
                ms = started.elapsed().as_millis() as u64,
                "patch piece"
            );
            Ok((cost < literal_cost).then_some((kind, patch, at)))
        };
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads.min(work.len()).max(1))
                .map(|_| {
                    s.spawn(|| -> Result<(), Error> {
                        loop {
                            let n = next.fetch_add(1, Ordering::Relaxed);
                            let Some(&(i, k, start, len, at)) = work.get(n) else {
                                return Ok(());
                            };
                            let patch = one(i, start, len, at)?;
                            results
                                .lock()
                                .expect("no worker panicked")
                                .insert((i, k), Piece { len, patch });
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .try_for_each(|w| w.join().expect("patch worker panicked"))
        })?;
        let mut pieces: Vec<((usize, usize), Piece)> = results
            .into_inner()
            .expect("no worker panicked")
            .into_iter()
            .collect();
        pieces.sort_by_key(|(key, _)| *key);
        let mut decisions: PatchDecisions = HashMap::new();
        for ((i, _), piece) in pieces {
            decisions.entry(i).or_default().push(piece);
        }
        Ok(decisions)
    }

    /// Sends `new` as its patch, or literally when there is none. Returns the kind of patch
    /// used.
    fn patch<W: Write>(
        &mut self,
        writer: &mut PayloadWriter<W>,
        new: &[u8],
        decided: Option<(PatchKind, Vec<u8>, BaseRef)>,
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
                self.layout.scratch_offset(&at),
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
        let offset = self.layout.scratch_offset(&at);
        let old = self.scratch.read_at(&self.name, offset, len)?;
        let same = new.iter().zip(&old).filter(|(n, o)| n == o).count();
        if same * 2 < new.len() {
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
            path: self.name.clone().into(),
            source,
        }
    }
}

/// Largest layer (and base layer) ever tried as one whole-layer patch (the default of
/// [`BuildOptions::whole_layer_patch_limit`]); both are held in memory on the device while that
/// patch is applied, within [`crate::Limits`]' patch caps.
pub const MAX_WHOLE_LAYER: u64 = 32 << 20;

fn rewind(file: &mut File) -> std::io::Result<()> {
    file.seek(SeekFrom::Start(0)).map(|_| ())
}

fn read_scratch(
    scratch: &Scratch,
    layout: &ScratchLayout,
    at: &BaseRef,
    name: &str,
) -> Result<Vec<u8>, Error> {
    scratch.read_at(name, layout.scratch_offset(at), at.len)
}

/// A patch candidate: its kind, its bytes, and what it costs in the payload.
type CandidatePatch = (PatchKind, Vec<u8>, usize);

/// The smallest of a zstd patch (old as prefix) and, when both sides are at most `max_bsdiff`
/// bytes, the bsdiff-layout patches of bsdiff and of [`crate::covers`]: (kind, patch bytes,
/// what it costs in the payload).
fn best_patch(
    old: &[u8],
    new: &[u8],
    level: i32,
    max_bsdiff: usize,
) -> Result<CandidatePatch, Error> {
    let compress_err = |e: std::io::Error| Error::InvalidBuild(format!("compressing a patch: {e}"));
    let zstd_patch = zstd_patch(old, new, level)?;
    let mut best = (PatchKind::Zstd, zstd_patch.len(), zstd_patch);
    // bsdiff's match search degrades towards quadratic time on long runs of repeated bytes
    // (zero-filled images, sparse files written out): skip it for data that compresses more
    // than 16:1, where the zstd patch is small anyway.
    let repetitive =
        |data: &[u8]| zstd::bulk::compress(data, 1).map_or(true, |c| c.len() * 16 < data.len());
    if old.len() <= max_bsdiff && new.len() <= max_bsdiff && !repetitive(old) && !repetitive(new) {
        // All lay out their covers the same way and the device applies any with one decoder.
        // Neither encoder wins everywhere: on the corpus's recompiled binary the cost-chosen
        // covers are 38 % smaller (19.4 KB against 31.3 KB after LZMA), on most shared
        // libraries of a Debian security update bsdiff's are 1-10 % smaller. They are tried
        // on x86 executables only (where moved code is the change), and an executable's
        // patches again with its address fields as 32-bit differences (the recompiled binary:
        // 19.4 -> 18.2 KB; libapt-pkg's update: 52.8 -> 47.4 KB). Candidates are ranked with
        // a fast zstd level and only the winner is compressed at `level`: the time budget
        // goes to more files patched, which matters more (the 1.24 GB image's update: 29.3
        // against 26.1 MB when every candidate was compressed at level 19).
        let x86 = crate::payload::is_x86_elf(old) || crate::payload::is_x86_elf(new);
        let mut layouts: Vec<_> = crate::covers::diffs(old, new, x86)
            .into_iter()
            .map(|p| (PatchKind::Bsdiff, p))
            .collect();
        if x86 {
            let with_fields: Vec<_> = layouts
                .iter()
                .map(|(_, p)| crate::bspatch::to_x86(old, p).map(|x| (PatchKind::BsdiffX86, x)))
                .collect::<Option<_>>()
                .ok_or_else(|| Error::InvalidBuild("a bsdiff-layout patch is malformed".into()))?;
            layouts.extend(with_fields);
        }
        let rank = |patch: &[u8]| zstd::bulk::compress(patch, RANK_LEVEL).map(|c| c.len());
        let mut ranked = Vec::with_capacity(layouts.len());
        for (kind, patch) in layouts {
            ranked.push((rank(&patch).map_err(compress_err)?, kind, patch));
        }
        let (_, kind, patch) = ranked
            .into_iter()
            .min_by_key(|(size, ..)| *size)
            .expect("bsdiff's patch at least");
        // The patch is mostly zeros; the payload's stream compresses it.
        let cost = zstd::bulk::compress(&patch, level)
            .map_err(compress_err)?
            .len();
        tracing::trace!(?kind, cost, "best bsdiff-layout patch");
        if cost < best.1 {
            best = (kind, cost, patch);
        }
    }
    Ok((best.0, best.2, best.1))
}

/// zstd level that ranks bsdiff-layout patches against each other (a fraction of level 19's
/// time; the ranking is what matters, not the size).
const RANK_LEVEL: i32 = 6;

/// A zstd patch as `zstd --patch-from` makes it: the old bytes are the frame's prefix (decoded
/// as a raw-content dictionary: the same bytes before the frame's window), with long-distance
/// matching and a window spanning old and new, so matches anywhere in a 48 MiB base are found
/// (a dictionary loaded into the regular match finder's hash tables loses most of them).
fn zstd_patch(old: &[u8], new: &[u8], level: i32) -> Result<Vec<u8>, Error> {
    use zstd::zstd_safe::{CCtx, CParameter};
    let fail = |code: usize| {
        Error::InvalidBuild(format!(
            "compressing a patch: {}",
            zstd::zstd_safe::get_error_name(code)
        ))
    };
    let window = (usize::BITS - (old.len() + new.len()).leading_zeros()).clamp(10, 27);
    let mut cctx = CCtx::create();
    cctx.set_parameter(CParameter::CompressionLevel(level))
        .map_err(fail)?;
    cctx.set_parameter(CParameter::WindowLog(window))
        .map_err(fail)?;
    cctx.set_parameter(CParameter::EnableLongDistanceMatching(true))
        .map_err(fail)?;
    cctx.set_parameter(CParameter::ChecksumFlag(false))
        .map_err(fail)?;
    cctx.ref_prefix(old).map_err(fail)?;
    let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(new.len()));
    cctx.compress2(&mut out, new).map_err(fail)?;
    Ok(out)
}

/// One patch of a whole target layer (from its spool) against a whole base layer.
fn whole_layer_patch(
    spool: &mut File,
    at: &BaseRef,
    scratch: &Scratch,
    layout: &ScratchLayout,
    level: i32,
    name: &str,
) -> Result<(BaseRef, CandidatePatch), Error> {
    let (at, old) = patch_base(scratch, layout, at, name)?;
    let mut new = Vec::new();
    rewind(spool)
        .and_then(|_| spool.read_to_end(&mut new))
        .map_err(Error::io("reading spool of", name))?;
    Ok((at, best_patch(&old, &new, level, MAX_WHOLE_LAYER as usize)?))
}

/// The bytes of a patch base, and the range they come from. zstd would take a dictionary that
/// starts with its dictionary magic as a formatted one (decoders refuse such bases), so such a
/// base starts one byte later.
fn patch_base(
    scratch: &Scratch,
    layout: &ScratchLayout,
    at: &BaseRef,
    name: &str,
) -> Result<(BaseRef, Vec<u8>), Error> {
    let mut old = read_scratch(scratch, layout, at, name)?;
    let mut at = *at;
    if old.starts_with(&ZSTD_DICT_MAGIC) {
        old.remove(0);
        at.offset += 1;
        at.len -= 1;
    }
    Ok((at, old))
}

fn skip(reader: &mut impl Read, len: u64) -> std::io::Result<()> {
    let copied = std::io::copy(&mut reader.take(len), &mut std::io::sink())?;
    if copied != len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Compressed bytes written so far (after a flush, exact).
fn compressed_so_far<W: Write>(
    writer: &mut PayloadWriter<HashingWriter<FrameEncoder<HashingWriter<W>>>>,
) -> u64 {
    writer.get_mut().get_mut().get_ref().count()
}

/// The dictionary for a target layer's frame: the metadata (everything but file contents:
/// headers, PAX records, padding) of the base layer the layer draws most from, in archive
/// order, up to `cap` bytes. Empty when the layer draws from no base.
fn frame_dictionary(plan: &[RegionPlan], base_scans: &[LayerScan], cap: u64) -> Vec<BaseRef> {
    let Some(layer) = closest_base_layer(plan) else {
        return Vec::new();
    };
    let scan = &base_scans[layer];
    let mut gaps = Vec::new();
    let mut pos = 0u64;
    let mut total = 0u64;
    let ends = scan
        .regions
        .iter()
        .map(|r| (r.offset, r.offset + r.len))
        .chain(std::iter::once((scan.len, scan.len)));
    for (start, end) in ends {
        let len = (start - pos).min(cap - total);
        if len > 0 {
            gaps.push(BaseRef {
                layer,
                offset: pos,
                len,
            });
            total += len;
        }
        pos = end;
        if total == cap {
            break;
        }
    }
    gaps
}

/// Run bytes (differences and their lengths) queued before a MIX_RUNS record is written: the
/// encoder's memory for them, and a bound on one record.
const MAX_QUEUED_RUNS: usize = 1 << 20;

/// Largest metadata gap sent as a MIX (a gap is usually one or two 512-byte headers; a long
/// run of directory entries is sent literally instead of held in memory).
const MAX_MIX: u64 = 1 << 20;

/// The base metadata a target region's metadata gap is mixed against: the gap before the base
/// file the region is copied or patched from, when it has the same length. (Headers identical
/// to the base's are copied together with the content instead.)
fn mix_base(plan: &RegionPlan, region: &Region, base_scans: &[LayerScan]) -> Option<BaseRef> {
    let (RegionPlan::Copy(at) | RegionPlan::Patch(at)) = plan else {
        return None;
    };
    let scan = &base_scans[at.layer];
    let i = scan
        .regions
        .binary_search_by_key(&at.offset, |r| r.offset)
        .ok()?;
    let base = &scan.regions[i];
    let len = base.offset - base.gap_offset;
    (len > 0 && len == region.offset - region.gap_offset).then_some(BaseRef {
        layer: at.layer,
        offset: base.gap_offset,
        len,
    })
}

/// Below this many bytes of literal tar metadata, a layer's frame gets no dictionary (listing
/// the dictionary's ranges would cost more than it saves).
const MIN_LITERAL_METADATA_FOR_DICTIONARY: u64 = 64 << 10;

/// The base layer a target layer's plan draws from most (ties: the lowest index).
fn closest_base_layer(plan: &[RegionPlan]) -> Option<usize> {
    let mut uses: HashMap<usize, usize> = HashMap::new();
    for p in plan {
        if let RegionPlan::CopyWithHeaders(at) | RegionPlan::Copy(at) | RegionPlan::Patch(at) = p {
            *uses.entry(at.layer).or_default() += 1;
        }
    }
    uses.into_iter()
        .max_by_key(|&(layer, n)| (n, std::cmp::Reverse(layer)))
        .map(|(layer, _)| layer)
}

/// The payload's codec settings, with the window capped to the smallest power of two that
/// holds everything the payload could carry (config and every layer sent) and the largest frame
/// dictionary before it: a small bundle then needs little memory on the device, and the
/// encoder does not allocate for a window it cannot fill.
fn payload_codec(
    options: &BuildOptions,
    config: &[u8],
    scans: &HashMap<usize, (LayerScan, File)>,
    largest_dictionary: u64,
) -> CodecSettings {
    let most = scans.values().map(|(scan, _)| scan.len).sum::<u64>()
        + config.len() as u64
        + largest_dictionary;
    let needed = (u64::BITS - most.max(1).leading_zeros()).max(16);
    CodecSettings {
        window_log: options.codec.window_log.min(needed),
        ..options.codec
    }
}

fn layer_read_error(image: &crate::image::Image, index: usize, e: std::io::Error) -> Error {
    Error::InvalidBuild(format!(
        "{}: reading layer {index} ({}): {e}",
        image.reference, image.layers[index].diff_id
    ))
}
