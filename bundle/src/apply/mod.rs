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
//!
//! # Layout
//!
//! [`apply_trusted`] wires the parts: `preflight` (pure: every base layer and blob the
//! statement needs is held, recipes mean the payload digest is checked first, the disk the
//! apply needs), `decode` (the record loop: config, extents gathered into scratch, each layer's
//! record, whose meaning `layer_action` decides, the end of the payload checked), `ops` (one
//! layer's operations, each claimed against the layer's declared size), `derive` (pure: when
//! the statement leaves blob digests to the device, the manifest template filled with the blobs
//! recreated and held here, the first fill that hashes to the signed digest), `commit` (the
//! signed manifest checked, the image moved into place).

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sideload_signing::{Digest, LayerStorage, Statement, TrustPolicy, VerifyContext};

use crate::error::Error;
use crate::image::write::OciLayoutWriter;
use crate::image::{ImageError, ImageSource};
use crate::limits::Limits;
use crate::progress::Progress;
use crate::verify::{check_payload_digest, open_trusted, Trust, TrustedHead};

pub use crate::scratch::BaseStore;

mod commit;
mod decode;
mod derive;
mod ops;
mod preflight;

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

    fn blobs_of(&self, diff_id: &Digest) -> Vec<(Digest, u64)> {
        let mut blobs: Vec<(Digest, u64)> = self
            .images
            .iter()
            .flat_map(|i| i.image().layers.iter())
            .filter(|l| &l.diff_id == diff_id && l.blob_digest != l.diff_id)
            .map(|l| (l.blob_digest.clone(), l.blob_size))
            .collect();
        blobs.sort();
        blobs.dedup();
        blobs
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
    let trust = Trust {
        policy,
        limits,
        now: ctx.now,
    };
    let trusted = open_trusted(path, &trust, |_| Ok(ctx.recorded_sequence))?;
    apply_trusted(path, trusted, bases, output, limits, progress)
}

/// Applies a bundle whose head was already verified by [`open_trusted`]: preflight (nothing
/// missing, room on disk), the payload decoded into a staging directory beside the output, then
/// the commit (the signed manifest checked and the image moved into place).
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
    preflight::check_bases(&name, &statement, bases)?;
    // Recipes run preflate's recompressor, which trusts its corrections: a damaged recipe can
    // make it panic or loop. The payload's digest is checked before any recipe runs (one
    // sequential read of a local file, cheap next to recreating blobs); after that, only a
    // trusted signer could hand the device a bad recipe.
    if preflight::has_recipes(&statement) {
        check_payload_digest(&mut file, &head, &statement, path)?;
    }
    let parent = out_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let needed = preflight::disk_needed(&name, &statement, output)?;
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
    let decoded = decode::Decoder {
        name: &name,
        statement: &statement,
        bases,
        writer: &writer,
        limits,
        progress,
    }
    .decode(&mut file, staging.path());
    let decoded = match decoded {
        Ok(decoded) => decoded,
        Err(e) if e.is_refusal() => {
            // A damaged payload usually breaks decoding before its digest can be compared;
            // say so plainly when that is the cause.
            check_payload_digest(&mut file, &head, &statement, path)?;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let statement = resolve_derived(&name, statement, &decoded.recreated, bases, &writer)?;
    commit::add_manifest(&name, &statement, &mut writer)?;
    writer.finish()?;
    commit::place(output, &layout, staging.path(), &statement.target)?;
    crate::fsutil::sync_parent(out_path)?;
    Ok(ApplyReport {
        statement,
        rebuilt_layers: decoded.rebuilt,
        reused_layers: decoded.reused,
        output: out_path.to_owned(),
    })
}

/// The statement as the device produced it: when it left blob digests to the device, the
/// manifest filled with the blobs recreated and held here (the held ones staged), checked
/// against the signed manifest digest; otherwise as it is.
fn resolve_derived(
    name: &str,
    mut statement: Statement,
    recreated: &[Option<(Digest, u64)>],
    bases: &dyn BaseStore,
    writer: &OciLayoutWriter,
) -> Result<Statement, Error> {
    if !statement.target.has_manifest_template() {
        return Ok(statement);
    }
    let found = derive::found(&statement.target, recreated, bases);
    let resolved = derive::resolve(&statement.target, &found)
        .map_err(|why| derive::unresolved_error(name, &statement.target, why))?;
    derive::stage_held(name, &statement.target, &resolved, bases, writer)?;
    statement.target = resolved;
    Ok(statement)
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
    // Exact layers are held twice while staged: the tar and the recreated blob. A blob whose
    // size the device derives is counted as deflate's worst case over its tar (stored blocks,
    // 5 bytes per 64 KiB, plus header and trailer), which every layer writer keeps to; a
    // stream that grows its data more fails on a full disk, with nothing tagged.
    let image = target
        .layers
        .iter()
        .try_fold(image, |acc, l| match &l.storage {
            LayerStorage::SourceBlob {
                size: Some(size), ..
            } => acc.checked_add(*size),
            LayerStorage::SourceBlob { size: None, .. } => {
                acc.checked_add(l.size.checked_add(l.size / 13_000 + 1024)?)
            }
            LayerStorage::Uncompressed { .. } => Some(acc),
        })?;
    image
        .checked_mul(copies)?
        .checked_add(statement.payload.scratch_bytes)
}
