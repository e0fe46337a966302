//! Writing images: an OCI layout writer, a `docker save`-style archive writer, and a copier
//! that keeps the exact manifest bytes.
//!
//! Everything streams: blobs go to a temporary file next to their final place while being
//! hashed, and are renamed into place only when their digest is known (and, when one was
//! expected, checked). Files that others read as a whole (`index.json`, the archive) are
//! written aside, synced and renamed, so a crash leaves either the old file or the new one.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sideload_signing::{Digest, Platform};
use tempfile::NamedTempFile;

use super::digest_reader::HashingWriter;
use super::oci_layout::{self, DirStore, INDEX_FILE, LAYOUT_VERSION, OCI_LAYOUT_FILE};
use super::spec::{self, Descriptor, IndexSpec, PlatformSpec, ANNOTATION_REF_NAME};
use super::{ImageError, ImageSource, MAX_JSON_LEN};

fn io_error(image: &Path, action: &'static str, path: &Path, source: io::Error) -> ImageError {
    ImageError::Io {
        image: image.display().to_string(),
        action,
        path: path.to_owned(),
        source,
    }
}

/// Copies `reader` into `writer`, telling read failures (the source: bad data, a digest
/// mismatch) from write failures (the local disk).
fn copy_into(
    mut reader: impl Read,
    writer: &mut impl Write,
    label: &Path,
    path: &Path,
    what: &str,
) -> Result<u64, ImageError> {
    let mut buf = vec![0u8; 128 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                return Err(ImageError::Read {
                    image: label.display().to_string(),
                    what: what.to_owned(),
                    source,
                })
            }
        };
        writer
            .write_all(&buf[..n])
            .map_err(|e| io_error(label, "write", path, e))?;
        total += n as u64;
    }
}

/// Writes an OCI image layout: blobs, then manifests recorded in `index.json` on
/// [`finish`](OciLayoutWriter::finish).
///
/// Opening an existing layout keeps its `index.json` entries; a manifest added under a ref
/// name replaces the entry that had that name.
#[derive(Debug)]
pub struct OciLayoutWriter {
    dir: PathBuf,
    blobs: PathBuf,
    index: IndexSpec,
}

impl OciLayoutWriter {
    /// Creates the layout at `dir` (or opens it, if it already is one), writing `oci-layout`.
    pub fn create(dir: &Path) -> Result<OciLayoutWriter, ImageError> {
        let blobs = dir.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).map_err(|e| io_error(dir, "create", &blobs, e))?;
        let store = DirStore::new(dir, dir.display().to_string());
        let index = match oci_layout::read_layout_index(&store) {
            Ok(index) => {
                oci_layout::check_layout_marker(&store)?;
                index
            }
            Err(ImageError::NotAnImage { .. }) => IndexSpec {
                schema_version: 2,
                media_type: Some(spec::media_types::OCI_INDEX.to_owned()),
                manifests: Vec::new(),
                annotations: None,
            },
            Err(e) => return Err(e),
        };
        let marker = dir.join(OCI_LAYOUT_FILE);
        if !marker.exists() {
            let bytes = format!("{{\"imageLayoutVersion\":\"{LAYOUT_VERSION}\"}}");
            write_atomically(dir, &marker, bytes.as_bytes())?;
        }
        Ok(OciLayoutWriter {
            dir: dir.to_owned(),
            blobs,
            index,
        })
    }

    /// The layout directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True when blob `digest` is already stored.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        oci_layout::blob_path(&self.dir, digest).is_file()
    }

    /// Starts writing a blob of not yet known digest.
    pub fn blob_writer(&self) -> Result<BlobWriter, ImageError> {
        let tmp = tempfile::Builder::new()
            .prefix(".partial-")
            .tempfile_in(&self.blobs)
            .map_err(|e| io_error(&self.dir, "create a temporary file in", &self.blobs, e))?;
        Ok(BlobWriter {
            out: HashingWriter::new(BufWriter::with_capacity(256 * 1024, tmp)),
            layout: self.dir.clone(),
        })
    }

    /// Streams `reader` into a blob; returns its digest and size.
    pub fn put_blob(&self, reader: impl Read) -> Result<(Digest, u64), ImageError> {
        let mut w = self.blob_writer()?;
        copy_into(reader, &mut w, &self.dir, &self.blobs, "blob")?;
        w.commit(None)
    }

    /// Streams `reader` into a blob that must have digest `expected` (and `size`, when given);
    /// nothing is stored otherwise. Skips reading when the blob is already there.
    pub fn put_blob_verified(
        &self,
        reader: impl Read,
        expected: &Digest,
        size: Option<u64>,
    ) -> Result<u64, ImageError> {
        if self.has_blob(expected) {
            let len = fs::metadata(oci_layout::blob_path(&self.dir, expected))
                .map_err(|e| io_error(&self.dir, "stat", &self.blobs, e))?
                .len();
            return Ok(len);
        }
        let mut w = self.blob_writer()?;
        copy_into(
            reader,
            &mut w,
            &self.dir,
            &self.blobs,
            &format!("blob {expected}"),
        )?;
        Ok(w.commit(Some((expected, size)))?.1)
    }

    /// Stores `bytes` as a blob.
    pub fn put_blob_bytes(&self, bytes: &[u8]) -> Result<(Digest, u64), ImageError> {
        self.put_blob(bytes)
    }

    /// Stores a manifest (or index) and records it in `index.json`, under `ref_name` when given
    /// (replacing an entry of that name) and with `platform` when given.
    pub fn add_manifest(
        &mut self,
        bytes: &[u8],
        media_type: &str,
        ref_name: Option<&str>,
        platform: Option<&Platform>,
    ) -> Result<Digest, ImageError> {
        let (digest, size) = self.put_blob_bytes(bytes)?;
        let mut descriptor = Descriptor::new(media_type, digest.clone(), size);
        if let Some(name) = ref_name {
            descriptor.annotations = Some(BTreeMap::from([(
                ANNOTATION_REF_NAME.to_owned(),
                name.to_owned(),
            )]));
        }
        descriptor.platform = platform.map(PlatformSpec::from_platform);
        self.add_descriptor(descriptor);
        Ok(digest)
    }

    /// Records a descriptor in `index.json` (its blob must be stored already). An entry with the
    /// same ref name, or an unnamed entry with the same digest, is replaced.
    pub fn add_descriptor(&mut self, descriptor: Descriptor) {
        let name = descriptor
            .annotation(ANNOTATION_REF_NAME)
            .map(str::to_owned);
        self.index.manifests.retain(|d| match &name {
            Some(n) => d.annotation(ANNOTATION_REF_NAME) != Some(n.as_str()),
            None => d.digest != descriptor.digest || d.annotation(ANNOTATION_REF_NAME).is_some(),
        });
        self.index.manifests.push(descriptor);
    }

    /// Writes `index.json` (aside, synced, renamed) and syncs the blob directory.
    pub fn finish(self) -> Result<(), ImageError> {
        let bytes = serde_json::to_vec(&self.index).map_err(|e| {
            io_error(
                &self.dir,
                "encode",
                &self.dir.join(INDEX_FILE),
                io::Error::other(e),
            )
        })?;
        crate::fsutil::sync_dir(&self.blobs)
            .map_err(|e| io_error(&self.dir, "sync", &self.blobs, e))?;
        write_atomically(&self.dir, &self.dir.join(INDEX_FILE), &bytes)
    }
}

/// Writes `bytes` to `path` atomically ([`crate::fsutil::replace_file`]; owner-only, as the
/// layout's blobs).
fn write_atomically(label: &Path, path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    crate::fsutil::replace_file_with(path, 0o600, bytes)
        .map_err(|e| io_error(label, "write", path, e))
}

/// A blob being written: bytes are hashed as they go to a temporary file in the blob
/// directory; [`commit`](BlobWriter::commit) renames it to its digest.
#[derive(Debug)]
pub struct BlobWriter {
    out: HashingWriter<BufWriter<NamedTempFile>>,
    layout: PathBuf,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn count(&self) -> u64 {
        self.out.count()
    }

    /// Finishes the blob: checks it against `expected` (digest and optional size) when given,
    /// syncs it and moves it into place (dropping it if an identical blob is there already).
    /// On a mismatch nothing is stored.
    pub fn commit(
        self,
        expected: Option<(&Digest, Option<u64>)>,
    ) -> Result<(Digest, u64), ImageError> {
        let (buffered, digest, size) = self.out.finish();
        let layout = self.layout;
        let tmp = buffered
            .into_inner()
            .map_err(|e| io_error(&layout, "write", &layout, e.into_error()))?;
        if let Some((want, want_size)) = expected {
            if &digest != want || want_size.is_some_and(|s| s != size) {
                return Err(ImageError::DigestMismatch {
                    image: layout.display().to_string(),
                    what: format!("blob {want}"),
                    expected: want.clone(),
                    expected_size: want_size,
                    actual: digest,
                    actual_size: size,
                });
            }
        }
        tmp.as_file()
            .sync_all()
            .map_err(|e| io_error(&layout, "sync", tmp.path(), e))?;
        let target = oci_layout::blob_path(&layout, &digest);
        match tmp.persist_noclobber(&target) {
            Ok(_) => {}
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_error(&layout, "rename into", &target, e.error)),
        }
        Ok((digest, size))
    }
}

/// Copies `source` into the OCI layout at `dir` (created if needed): layer blobs, config and
/// manifest byte for byte, so the manifest digest is kept. A source without a manifest (a
/// classic docker-archive) gets a Docker schema 2 manifest made from its blobs. When the source
/// chose the manifest from a multi-platform index, only that manifest is written. Returns the
/// manifest digest.
pub fn write_oci_layout(
    source: &dyn ImageSource,
    dir: &Path,
    ref_name: Option<&str>,
) -> Result<Digest, ImageError> {
    let image = source.image();
    let mut writer = OciLayoutWriter::create(dir)?;
    for (i, layer) in image.layers.iter().enumerate() {
        if writer.has_blob(&layer.blob_digest) {
            continue;
        }
        let blob = source.open_layer_blob(i)?;
        writer
            .put_blob_verified(blob, &layer.blob_digest, Some(layer.blob_size))
            .map_err(|e| match e {
                // Name the image and layer rather than the layout when the source is at fault.
                ImageError::Read { source, .. } => ImageError::Read {
                    image: image.reference.clone(),
                    what: format!("layer {i} ({})", layer.blob_digest),
                    source,
                },
                other => other,
            })?;
    }
    writer.put_blob_verified(&image.config.bytes[..], &image.config.digest, None)?;
    let manifest = match &image.manifest {
        Some(m) => m.clone(),
        None => spec::synthesize_manifest(image),
    };
    let digest = writer.add_manifest(
        &manifest.bytes,
        &manifest.media_type,
        ref_name,
        Some(&image.platform),
    )?;
    writer.finish()?;
    Ok(digest)
}

/// Fails at end of stream unless exactly `len` bytes passed, and fails as soon as more do.
struct ExactLength<R> {
    inner: R,
    left: u64,
    what: String,
}

impl<R: Read> Read for ExactLength<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            // Everything measured has passed: the stream must end here.
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: longer than when it was measured", self.what),
                )),
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: {} bytes shorter than when it was measured",
                    self.what, self.left
                ),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// `out` with `.partial` appended to its file name.
fn partial_path(out: &Path) -> PathBuf {
    let mut name = out
        .file_name()
        .map(OsString::from)
        .unwrap_or_else(|| OsString::from("archive"));
    name.push(".partial");
    out.with_file_name(name)
}

/// Writes `source` as a classic `docker save` archive at `out` (what `docker load` and
/// `skopeo copy docker-archive:` read): `manifest.json`, `<config hex>.json` and
/// `<diff_id hex>/layer.tar` per layer, uncompressed.
///
/// Streams: a tar header needs the entry size first, so a layer stored compressed is
/// decompressed once to count its bytes, then again to write them; no layer is held in memory
/// or spilled to disk. Every layer is checked against its diff_id as it is written. The archive
/// is written to `out.partial`, synced and renamed; on error the partial file is removed.
pub fn write_docker_archive(
    source: &dyn ImageSource,
    out: &Path,
    repo_tags: &[String],
) -> Result<(), ImageError> {
    let partial = partial_path(out);
    let result = write_docker_archive_to(source, out, &partial, repo_tags);
    if result.is_err() {
        let _ = fs::remove_file(&partial);
    }
    result
}

fn write_docker_archive_to(
    source: &dyn ImageSource,
    out: &Path,
    partial: &Path,
    repo_tags: &[String],
) -> Result<(), ImageError> {
    let image = source.image();
    let label = &image.reference;
    let write_err = |source| io_error(out, "write", partial, source);
    let file = File::create(partial).map_err(|e| io_error(out, "create", partial, e))?;
    let mut tar = tar::Builder::new(BufWriter::with_capacity(256 * 1024, file));

    let mut layer_names = Vec::with_capacity(image.layers.len());
    let mut written = std::collections::HashSet::new();
    for (i, layer) in image.layers.iter().enumerate() {
        let dir_name = format!("{}/", layer.diff_id.hex());
        let name = format!("{}/layer.tar", layer.diff_id.hex());
        layer_names.push(name.clone());
        if !written.insert(layer.diff_id.clone()) {
            continue; // the same layer twice: one entry, named twice
        }
        let what = format!("layer {i} ({})", layer.diff_id);
        let read_err = |source| ImageError::Read {
            image: label.clone(),
            what: what.clone(),
            source,
        };
        // A blob that hashes to the diff_id is the tar itself: its size is the blob size.
        let size = if layer.blob_digest == layer.diff_id {
            layer.blob_size
        } else {
            io::copy(&mut source.open_layer(i)?, &mut io::sink()).map_err(read_err)?
        };
        let mut dir = entry_header(tar::EntryType::Directory, 0o755, 0);
        tar.append_data(&mut dir, &dir_name, io::empty())
            .map_err(write_err)?;
        let mut header = entry_header(tar::EntryType::Regular, 0o644, size);
        let data = ExactLength {
            inner: source.open_layer(i)?,
            left: size,
            what: what.clone(),
        };
        tar.append_data(&mut header, &name, data).map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidData {
                read_err(e)
            } else {
                write_err(e)
            }
        })?;
    }

    let config_name = format!("{}.json", image.config.digest.hex());
    let mut header = entry_header(
        tar::EntryType::Regular,
        0o644,
        image.config.bytes.len() as u64,
    );
    tar.append_data(&mut header, &config_name, &image.config.bytes[..])
        .map_err(write_err)?;

    let manifest = vec![spec::ArchiveManifestEntry {
        config: config_name,
        repo_tags: Some(repo_tags.to_vec()),
        layers: layer_names,
    }];
    let manifest = serde_json::to_vec(&manifest).map_err(|e| write_err(io::Error::other(e)))?;
    debug_assert!((manifest.len() as u64) < MAX_JSON_LEN);
    let mut header = entry_header(tar::EntryType::Regular, 0o644, manifest.len() as u64);
    tar.append_data(
        &mut header,
        super::docker_archive::MANIFEST_FILE,
        &manifest[..],
    )
    .map_err(write_err)?;

    let buffered = tar.into_inner().map_err(write_err)?;
    let file = buffered
        .into_inner()
        .map_err(|e| write_err(e.into_error()))?;
    file.sync_all()
        .map_err(|e| io_error(out, "sync", partial, e))?;
    drop(file);
    fs::rename(partial, out).map_err(|e| io_error(out, "rename into", out, e))?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    crate::fsutil::sync_dir(parent).map_err(|e| io_error(out, "sync", parent, e))
}

/// A deterministic tar header: owner 0:0, mtime 0, so the same content gives the same bytes.
pub(crate) fn entry_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}
