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
//!
//! # Layout
//!
//! [`build_bundle`] only wires the parts together: it checks the options, reads (`scan`: the
//! base layers into a [`crate::delta::BaseIndex`], each target layer to send into a spool
//! file), plans (`plan`: pure, unit-tested: which layers the device holds, per file what it
//! becomes, each layer's frame dictionary and whole-layer candidate, the scratch layout, the
//! codec's window), gathers the scratch store exactly as the device will
//! ([`crate::scratch`], shared with the decoder; neither imports the other), carries the plan
//! out (`encoder` per layer, `ops` per file, `patch` choosing and computing patches on every
//! core), assembles the statement (`statement`, pure) and writes the bundle aside and renames
//! it into place.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sideload_signing::{Digest, LayerStorage, RepositoryName, Statement, Tag};

use crate::codec::{CodecSettings, PayloadCodec};
use crate::container::{write_bundle, DEFAULT_SIGNATURE_SLOT};
use crate::delta::BaseIndex;
use crate::error::Error;
use crate::exact::{ExactOptions, ExactPlan, RecipeCache};
use crate::image::ImageSource;
use crate::payload::PatchKind;
use crate::progress::Progress;
use crate::scratch::gather_extents;

mod encoder;
mod ops;
mod patch;
mod plan;
mod scan;
mod statement;

use encoder::Encoder;
use plan::PlanLimits;
pub use plan::{MAX_WHOLE_LAYER, PATCH_PIECE, PATCH_WINDOW};
use scan::BaseLayers;

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
    validate(image, options)?;
    let on_device = on_device(bases, options);
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let deadline = std::time::Instant::now() + options.patch_time_budget;
    let exact = exact_plan(target, bases, options, recipes, progress)?;

    // Which target layers need sending, and what the device holds to build them from.
    let to_send = plan::layers_to_send(&image.diff_ids(), &on_device, |i| exact.sends_blob(i));
    let base_layers = BaseLayers::new(bases);
    let (index, base_scans) = if to_send.is_empty() {
        (BaseIndex::default(), Vec::new())
    } else {
        base_layers.scan(progress)?
    };
    let mut scans = scan::scan_target_layers(target, &to_send, dir, progress)?;
    let plan = plan::plan_build(
        plan::present_layers(&image.diff_ids(), &on_device),
        &to_send
            .iter()
            .map(|&i| (i, &scans[&i].scan))
            .collect::<Vec<_>>(),
        &index,
        &base_scans,
        &base_layers.diff_ids(),
        PlanLimits {
            whole_layer: options.whole_layer_patch_limit.min(MAX_WHOLE_LAYER),
            max_dictionary: crate::Limits::default().max_dictionary,
        },
    );
    let scratch_dir =
        tempfile::tempdir_in(dir).map_err(Error::io("creating scratch directory in", dir))?;
    let scratch = gather_extents(
        &out.display().to_string(),
        &plan.requires,
        plan.layout.total,
        &plan.layout.extents,
        &base_layers,
        scratch_dir.path(),
    )?;

    let mut payload_file =
        tempfile::tempfile_in(dir).map_err(Error::io("creating temporary payload in", dir))?;
    let codec = plan::payload_codec(
        options.codec,
        image.config.bytes.len() as u64,
        scans.values().map(|s| s.scan.len).sum(),
        plan.largest_dictionary(),
    );
    let encoded = Encoder {
        target,
        on_device: &on_device,
        exact: &exact,
        plan: &plan,
        bases: &base_layers,
        base_scans: &base_scans,
        scratch: &scratch,
        codec,
        level: options.patch_level,
        deadline,
        progress,
        out,
        name: out.display().to_string(),
    }
    .encode(&mut scans, &mut payload_file)?;

    let payload = encoded.info(codec, plan.layout.total);
    let statement = statement::assemble(
        image,
        options,
        exact.manifest.as_ref(),
        encoded.layers,
        encoded.records_version,
        plan.requires,
        payload,
    );
    drop(scratch);
    let bundle_size = write_out(out, &statement, options.signature_slot, &mut payload_file)?;
    Ok(BuildReport {
        bundle: out.to_owned(),
        bundle_size,
        statement,
        layers: encoded.reports,
        not_exact: exact.not_exact,
    })
}

/// Every layer the device holds, by diff_id, and what holds it: the bases' layers, then its
/// inventory's.
fn on_device<'a>(
    bases: &[&'a dyn ImageSource],
    options: &'a BuildOptions,
) -> HashMap<&'a Digest, &'a str> {
    plan::layers_on_device(
        bases.iter().flat_map(|b| {
            let image = b.image();
            image
                .layers
                .iter()
                .map(|l| (image.reference.as_str(), &l.diff_id))
        }),
        &options.device_layers,
    )
}

/// Checks the options and the target image before anything is read.
fn validate(image: &crate::image::Image, options: &BuildOptions) -> Result<(), Error> {
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
    Ok(())
}

/// Exact blobs: which layers the device recreates from a recipe, which it already holds,
/// which go whole.
fn exact_plan(
    target: &dyn ImageSource,
    bases: &[&dyn ImageSource],
    options: &BuildOptions,
    recipes: &RecipeCache,
    progress: &dyn Progress,
) -> Result<ExactPlan, Error> {
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
        tracing::info!(
            "{}: layers stored uncompressed: {why}",
            target.image().reference
        );
    }
    Ok(exact)
}

/// Writes the bundle (statement, empty signature slot, the payload from `payload`) at `out`,
/// aside and renamed into place; returns its size.
fn write_out(
    out: &Path,
    statement: &Statement,
    signature_slot: u32,
    payload: &mut File,
) -> Result<u64, Error> {
    payload
        .seek(SeekFrom::Start(0))
        .map_err(Error::io("reading back payload of", out))?;
    // Bundles are not secret: readable by all, as a file cp would make.
    let mut bundle_size = 0;
    crate::fsutil::replace_file(out, 0o644, |file| {
        let mut w = BufWriter::new(file);
        bundle_size = write_bundle(
            &mut w,
            &statement.to_canonical_json(),
            &[],
            signature_slot,
            payload,
        )?;
        w.flush()
    })
    .map_err(Error::io("writing", out))?;
    Ok(bundle_size)
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
