//! The encoder: target image + images on the device → unsigned bundle.
//!
//! Today it emits the two simplest operations: a target layer the device already holds (same
//! diff_id in any base image) becomes a `PRESENT` record and costs nothing; every other layer is
//! sent as literal bytes. All literals go through one zstd stream with long-distance matching,
//! so data repeated across layers is sent once. The format already carries copy and patch
//! operations (see [`crate::payload`]) for the file-level delta encoder.

use std::collections::{HashMap, HashSet};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sideload_signing::{
    Digest, LayerStorage, PayloadInfo, RepositoryName, SourceRef, Statement, Tag, Target,
    TargetLayer, FORMAT_VERSION,
};

use crate::container::{write_bundle, DEFAULT_SIGNATURE_SLOT};
use crate::error::Error;
use crate::image::digest_reader::HashingWriter;
use crate::image::spec::media_types::{OCI_LAYER_TAR, OCI_MANIFEST};
use crate::image::spec::Descriptor;
use crate::image::ImageSource;
use crate::manifest::build_manifest;
use crate::payload::PayloadWriter;
use crate::progress::Progress;

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
    /// zstd level for the payload (1-22).
    pub zstd_level: i32,
    /// zstd window log (long-distance matching window); the device needs `1 << window_log`
    /// bytes of memory to decode.
    pub window_log: u32,
    /// Bytes reserved for signatures.
    pub signature_slot: u32,
    /// Compression threads (0 = single-threaded).
    pub threads: u32,
}

impl BuildOptions {
    /// Defaults for everything but the names: level 19, 128 MiB window, 1 KiB signature slot.
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
            zstd_level: 19,
            window_log: 27,
            signature_slot: DEFAULT_SIGNATURE_SLOT,
            threads: 2,
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
    /// Sent as literal bytes.
    Literal,
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
    /// Compressed payload bytes spent on it.
    pub payload_bytes: u64,
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
    let image = target.image();
    if options.expires_at <= options.created_at {
        return Err(Error::InvalidBuild("expiry must be after creation".into()));
    }
    if !(1..=22).contains(&options.zstd_level) || !(10..=31).contains(&options.window_log) {
        return Err(Error::InvalidBuild(
            "zstd level must be 1-22 and window log 10-31".into(),
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

    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut payload_file =
        tempfile::tempfile_in(dir).map_err(Error::io("creating temporary payload in", dir))?;
    let io_err = |what| Error::io(what, out);

    let hashed = HashingWriter::new(BufWriter::new(&mut payload_file));
    let mut zstd = zstd::stream::write::Encoder::new(hashed, options.zstd_level)
        .map_err(io_err("starting zstd for"))?;
    zstd.long_distance_matching(true)
        .and_then(|_| zstd.window_log(options.window_log))
        .and_then(|_| zstd.include_checksum(false))
        .and_then(|_| zstd.multithread(options.threads))
        .map_err(io_err("configuring zstd for"))?;
    let mut writer =
        PayloadWriter::new(HashingWriter::new(zstd)).map_err(io_err("writing payload of"))?;
    writer
        .config(&image.config.bytes)
        .map_err(io_err("writing payload of"))?;
    writer.extents(&[]).map_err(io_err("writing payload of"))?;
    // Flush so the config's bytes are not counted against the first layer.
    writer
        .get_mut()
        .flush()
        .map_err(io_err("writing payload of"))?;

    let mut requires: Vec<Digest> = Vec::new();
    let mut seen_required: HashSet<Digest> = HashSet::new();
    let mut layers = Vec::with_capacity(image.layers.len());
    let mut reports = Vec::with_capacity(image.layers.len());
    let mut buf = vec![0u8; LITERAL_CHUNK];
    for (index, layer) in image.layers.iter().enumerate() {
        let index32 =
            u32::try_from(index).map_err(|_| Error::InvalidBuild("too many layers".into()))?;
        progress.start(
            &format!("layer {}/{}", index + 1, image.layers.len()),
            layer.blob_size,
        );
        let before = compressed_so_far(&mut writer);
        let mut stream = target.open_layer(index)?;
        let (encoding, size) = if let Some(base) = on_device.get(&layer.diff_id) {
            writer
                .present(index32)
                .map_err(io_err("writing payload of"))?;
            if seen_required.insert(layer.diff_id.clone()) {
                requires.push(layer.diff_id.clone());
            }
            // The manifest needs the uncompressed size; counting also checks the diff_id.
            let size = std::io::copy(&mut stream, &mut std::io::sink())
                .map_err(|e| layer_read_error(image, index, e))?;
            (
                LayerEncoding::Present {
                    base: base.to_string(),
                },
                size,
            )
        } else {
            writer
                .begin_layer(index32)
                .map_err(io_err("writing payload of"))?;
            let mut size = 0u64;
            loop {
                let n = read_full(&mut stream, &mut buf)
                    .map_err(|e| layer_read_error(image, index, e))?;
                if n == 0 {
                    break;
                }
                writer
                    .literal(&buf[..n])
                    .map_err(io_err("writing payload of"))?;
                size += n as u64;
                progress.advance(n as u64);
            }
            writer.end_layer().map_err(io_err("writing payload of"))?;
            (LayerEncoding::Literal, size)
        };
        drop(stream);
        writer
            .get_mut()
            .flush()
            .map_err(io_err("writing payload of"))?;
        let payload_bytes = compressed_so_far(&mut writer) - before;
        progress.finish();
        layers.push(TargetLayer {
            diff_id: layer.diff_id.clone(),
            size,
            storage: LayerStorage::Uncompressed {
                media_type: OCI_LAYER_TAR.to_owned(),
            },
        });
        reports.push(LayerReport {
            diff_id: layer.diff_id.clone(),
            size,
            source_blob_size: layer.blob_size,
            encoding,
            payload_bytes,
        });
    }

    let counted = writer.finish().map_err(io_err("writing payload of"))?;
    let (zstd, _, decoded_size) = counted.finish();
    let hashed = zstd.finish().map_err(io_err("finishing zstd for"))?;
    let (buffered, payload_digest, payload_size) = hashed.finish();
    buffered
        .into_inner()
        .map_err(|e| Error::io("writing payload of", out)(e.into_error()))?;

    let manifest = build_manifest(
        &image.config.digest,
        image.config.bytes.len() as u64,
        layers
            .iter()
            .map(|l| {
                let (digest, size) = l.storage.blob(l);
                Descriptor::new(OCI_LAYER_TAR, digest, size)
            })
            .collect(),
    );
    let statement = Statement {
        format_version: FORMAT_VERSION,
        target: Target {
            repository: options.repository.clone(),
            tags: options.tags.clone(),
            platform: image.platform.clone(),
            config_digest: image.config.digest.clone(),
            layers,
            manifest_media_type: OCI_MANIFEST.to_owned(),
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
            window_log: options.window_log,
            decoded_size,
            scratch_bytes: 0,
        },
        sequence: options.sequence,
        allow_downgrade: options.allow_downgrade,
        created_at: options.created_at,
        expires_at: options.expires_at,
        ordered_by: options.ordered_by.clone(),
        contact: options.contact.clone(),
    };

    let mut bundle =
        tempfile::NamedTempFile::new_in(dir).map_err(Error::io("creating bundle in", dir))?;
    payload_file
        .seek(SeekFrom::Start(0))
        .map_err(io_err("reading back payload of"))?;
    let bundle_size = {
        let mut w = BufWriter::new(bundle.as_file_mut());
        let n = write_bundle(
            &mut w,
            &statement.to_canonical_json(),
            &[],
            options.signature_slot,
            &mut payload_file,
        )
        .map_err(io_err("writing"))?;
        w.flush().map_err(io_err("writing"))?;
        n
    };
    bundle.as_file().sync_all().map_err(io_err("syncing"))?;
    bundle
        .persist(out)
        .map_err(|e| Error::io("renaming bundle into place at", out)(e.error))?;
    crate::fsutil::sync_parent(out)?;

    Ok(BuildReport {
        bundle: out.to_owned(),
        bundle_size,
        statement,
        layers: reports,
    })
}

/// Compressed bytes written so far (after a flush, exact).
fn compressed_so_far<W: Write>(
    writer: &mut PayloadWriter<HashingWriter<zstd::stream::write::Encoder<'_, HashingWriter<W>>>>,
) -> u64 {
    writer.get_mut().get_mut().get_ref().count()
}

fn layer_read_error(image: &crate::image::Image, index: usize, e: std::io::Error) -> Error {
    Error::InvalidBuild(format!(
        "{}: reading layer {index} ({}): {e}",
        image.reference, image.layers[index].diff_id
    ))
}

/// Reads until `buf` is full or the stream ends.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
