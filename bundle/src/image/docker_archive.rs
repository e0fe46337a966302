//! `docker save` archives, read in place.
//!
//! The tar is scanned once, recording each entry's name → (data offset, size); nothing is
//! extracted and nothing is held in memory but that index and the small JSON documents.
//! Entries are then read with positional reads on the one open file, so several layers can be
//! read at once.
//!
//! Two layouts are understood:
//!
//! - the classic one: `manifest.json` = `[{"Config": "<hex>.json", "RepoTags": [...],
//!   "Layers": ["<id>/layer.tar", ...]}]`, layers usually uncompressed, sometimes symlinks to
//!   another image's identical layer;
//! - what Docker ≥ 25 writes: an OCI layout inside the tar (`oci-layout`, `index.json`,
//!   `blobs/sha256/<hex>`) with a `manifest.json` whose paths point into `blobs/`. The OCI
//!   manifest is used when one matches the selected config, so the manifest digest is known.
//!   Without `manifest.json`, the tar is read as a plain OCI layout.
//!
//! Entry names are data: they are keys of the index, compared as strings. Symlinks between
//! entries are resolved lexically inside the index and never leave it; nothing is ever joined
//! onto a filesystem path.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sideload_signing::{Digest, Platform};

use super::compression::{self, verified_blob, verified_layer};
use super::digest_reader::digest_of_reader;
use super::oci_layout::{self, BlobStore, INDEX_FILE, OCI_LAYOUT_FILE};
use super::spec::{self, media_types, ArchiveSelector};
use super::{Compression, Image, ImageError, ImageSource, Layer, RawBlob, MAX_JSON_LEN};

/// Most entries an archive may have (a `docker save` of many images has a few per layer).
pub const MAX_ENTRIES: usize = 200_000;
/// Longest entry name kept in the index (longer ones are skipped: no document names them).
pub const MAX_NAME_LEN: usize = 4096;
/// Most bytes of entry names the index holds in all.
pub const MAX_NAME_BYTES: usize = 16 * 1024 * 1024;
/// Most symlink hops followed when an entry is a link to another entry.
const MAX_LINK_HOPS: usize = 16;

/// The name of the archive's image list.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Where an entry's data sits in the archive file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntrySpan {
    /// Byte offset of the data.
    pub offset: u64,
    /// Data size.
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Indexed {
    File(EntrySpan),
    /// A symlink, with its target resolved lexically to an entry name (None: escapes the root).
    Link(Option<String>),
}

/// Normalizes an entry name as written in a tar or a `manifest.json`: `./` prefixes and
/// repeated or trailing slashes go, `.` components go, `..` pops a component. A name that
/// climbs above the root is kept as is (it then names nothing but itself). Pure string work.
pub fn normalize_name(name: &str) -> String {
    let absolute = name.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return name.to_owned();
                }
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    if absolute {
        format!("/{joined}")
    } else {
        joined
    }
}

/// Resolves symlink `target` found at entry `link_name`, inside the archive: relative to the
/// link's directory; `None` when it climbs out of the archive root or is absolute.
fn resolve_link_target(link_name: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = link_name.split('/').filter(|p| !p.is_empty()).collect();
    parts.pop(); // the link itself
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            p => parts.push(p),
        }
    }
    Some(parts.join("/"))
}

/// The archive's entries by name, built by one pass over the tar.
#[derive(Debug, Default)]
pub struct TarIndex {
    entries: HashMap<String, Indexed>,
}

impl TarIndex {
    /// Scans a tar (seeking over file data), recording regular files and symlinks. An entry
    /// whose data runs past the end of the archive (a file cut short in a copy) is refused
    /// here, naming it, rather than when a reader of that entry reaches the end.
    pub fn scan<R: Read + io::Seek>(mut reader: R) -> io::Result<TarIndex> {
        let archive_len = reader.seek(io::SeekFrom::End(0))?;
        reader.seek(io::SeekFrom::Start(0))?;
        let mut archive = tar::Archive::new(reader);
        let mut entries = HashMap::new();
        let mut name_bytes = 0usize;
        for entry in archive.entries_with_seek()? {
            let entry = entry?;
            if entries.len() >= MAX_ENTRIES {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("more than {MAX_ENTRIES} entries"),
                ));
            }
            let raw = entry.path_bytes();
            if raw.len() > MAX_NAME_LEN {
                continue;
            }
            // Names that are not UTF-8 cannot be named by a JSON document: skip them.
            let Ok(raw) = std::str::from_utf8(&raw) else {
                continue;
            };
            let name = normalize_name(raw);
            name_bytes += name.len();
            if name_bytes > MAX_NAME_BYTES {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("entry names exceed {MAX_NAME_BYTES} bytes in all"),
                ));
            }
            let kind = entry.header().entry_type();
            let value = if kind.is_file() || kind.is_contiguous() {
                let span = EntrySpan {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                };
                if span
                    .offset
                    .checked_add(span.size)
                    .is_none_or(|end| end > archive_len)
                {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "entry {name} declares {} bytes but the archive ends {} bytes into \
                             it (truncated file?)",
                            span.size,
                            archive_len.saturating_sub(span.offset)
                        ),
                    ));
                }
                Indexed::File(span)
            } else if kind.is_symlink() || kind.is_hard_link() {
                let target = entry.link_name_bytes().and_then(|t| {
                    let t = std::str::from_utf8(&t).ok()?.to_owned();
                    if kind.is_hard_link() {
                        // Hard link targets are archive names.
                        Some(normalize_name(&t))
                            .filter(|n| !n.starts_with('/') && !n.starts_with(".."))
                    } else {
                        resolve_link_target(&name, &t)
                    }
                });
                Indexed::Link(target)
            } else {
                continue;
            };
            entries.insert(name, value);
        }
        Ok(TarIndex { entries })
    }

    /// The data of entry `name` (normalized first), following symlinks inside the archive.
    pub fn lookup(&self, name: &str) -> Option<EntrySpan> {
        let mut name = normalize_name(name);
        for _ in 0..MAX_LINK_HOPS {
            match self.entries.get(&name)? {
                Indexed::File(span) => return Some(*span),
                Indexed::Link(Some(target)) => name = target.clone(),
                Indexed::Link(None) => return None,
            }
        }
        None
    }

    /// Number of entries indexed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no entry was indexed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Reads one entry's data with positional reads on a shared file.
#[derive(Debug)]
pub struct EntryReader {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl Read for EntryReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end - self.pos;
        if left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "archive ends inside an entry (truncated file?)",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// An open `docker save` archive: the file and its entry index.
#[derive(Debug)]
pub struct DockerArchive {
    path: PathBuf,
    label: String,
    file: Arc<File>,
    index: TarIndex,
}

impl DockerArchive {
    /// Opens and scans the archive at `path`; `label` names it in errors.
    pub fn open(path: &Path, label: &str) -> Result<DockerArchive, ImageError> {
        let io_err = |action, source| ImageError::Io {
            image: label.to_owned(),
            action,
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(|e| io_err("open", e))?;
        let index = TarIndex::scan(BufReader::new(&file)).map_err(|e| io_err("read the tar", e))?;
        Ok(DockerArchive {
            path: path.to_owned(),
            label: label.to_owned(),
            file: Arc::new(file),
            index,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The entry index.
    pub fn index(&self) -> &TarIndex {
        &self.index
    }

    /// Opens the data of `span`.
    pub fn open_span(&self, span: EntrySpan) -> EntryReader {
        EntryReader {
            file: Arc::clone(&self.file),
            pos: span.offset,
            end: span.offset.saturating_add(span.size),
        }
    }

    /// Opens entry `name`, when the archive has it.
    pub fn open_entry(&self, name: &str) -> Option<(EntryReader, u64)> {
        self.index.lookup(name).map(|s| (self.open_span(s), s.size))
    }

    fn read_json_entry(&self, name: &str, referrer: &str) -> Result<Vec<u8>, ImageError> {
        let span = self
            .index
            .lookup(name)
            .ok_or_else(|| ImageError::MissingEntry {
                image: self.label.clone(),
                referrer: referrer.to_owned(),
                entry: name.to_owned(),
            })?;
        oci_layout::read_capped(
            self.open_span(span),
            span.size,
            MAX_JSON_LEN,
            &self.label,
            &format!("entry {name:?}"),
        )
    }
}

impl BlobStore for DockerArchive {
    fn name(&self) -> &str {
        &self.label
    }

    fn open_blob(
        &self,
        digest: &Digest,
    ) -> Result<Option<(Box<dyn Read + Send + '_>, u64)>, ImageError> {
        Ok(self
            .open_entry(&blob_entry_name(digest))
            .map(|(r, size)| (Box::new(r) as Box<dyn Read + Send>, size)))
    }

    fn read_file(&self, name: &'static str, limit: u64) -> Result<Option<Vec<u8>>, ImageError> {
        let Some((r, size)) = self.open_entry(name) else {
            return Ok(None);
        };
        oci_layout::read_capped(r, size, limit, &self.label, name).map(Some)
    }
}

/// `blobs/sha256/<hex>`.
fn blob_entry_name(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// The digest an entry name carries: `blobs/sha256/<hex>`, `<hex>.json` or `<hex>/layer.tar`
/// (the last is a v1 layer ID, not a content digest, so it is not returned).
fn digest_in_name(name: &str) -> Option<Digest> {
    let name = normalize_name(name);
    let hex = name
        .strip_prefix("blobs/sha256/")
        .or_else(|| name.strip_suffix(".json"))?;
    format!("sha256:{hex}").parse().ok()
}

/// An image read from a `docker save` archive.
#[derive(Debug)]
pub struct DockerArchiveSource {
    archive: DockerArchive,
    image: Image,
    spans: Vec<EntrySpan>,
}

impl DockerArchiveSource {
    /// Opens the archive at `path` and selects an image: by `repo:tag` (or `@N`, the n-th
    /// image) when `name` is given, else the only one. `platform` applies when the archive
    /// holds a multi-platform OCI index. `reference` labels the image in errors.
    pub fn open(
        path: &Path,
        name: Option<&str>,
        platform: &Platform,
        reference: &str,
    ) -> Result<DockerArchiveSource, ImageError> {
        let archive = DockerArchive::open(path, reference)?;
        let (image, spans) = if archive.index.lookup(MANIFEST_FILE).is_some() {
            read_with_manifest_json(&archive, name, platform, reference)?
        } else if archive.index.lookup(INDEX_FILE).is_some() {
            let store: &dyn BlobStore = &archive;
            oci_layout::check_layout_marker(store)?;
            let index = oci_layout::read_layout_index(store)?;
            let descriptor = spec::select_by_name(&index, name, reference)?;
            let image = oci_layout::resolve_image(
                store,
                reference,
                descriptor,
                platform,
                oci_layout::names_of(descriptor),
            )?;
            let spans = blob_spans(&archive, &image)?;
            (image, spans)
        } else {
            return Err(ImageError::NotAnImage {
                image: reference.to_owned(),
                expected: "a docker-archive",
                reason: format!(
                    "the tar has neither {MANIFEST_FILE} nor {INDEX_FILE} ({} entries)",
                    archive.index.len()
                ),
            });
        };
        Ok(DockerArchiveSource {
            archive,
            image,
            spans,
        })
    }

    /// The archive.
    pub fn archive(&self) -> &DockerArchive {
        &self.archive
    }

    fn span(&self, index: usize) -> Result<(EntrySpan, &Layer), ImageError> {
        match (self.spans.get(index), self.image.layers.get(index)) {
            (Some(span), Some(layer)) => Ok((*span, layer)),
            _ => Err(ImageError::NoSuchLayer {
                image: self.image.reference.clone(),
                index,
                count: self.image.layers.len(),
            }),
        }
    }
}

/// Where each layer's blob is in an archive read as an OCI layout: `blobs/sha256/<hex>`.
fn blob_spans(archive: &DockerArchive, image: &Image) -> Result<Vec<EntrySpan>, ImageError> {
    image
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            archive
                .index
                .lookup(&blob_entry_name(&l.blob_digest))
                .ok_or_else(|| ImageError::MissingBlob {
                    image: image.reference.clone(),
                    digest: l.blob_digest.clone(),
                    what: format!("layer {i}"),
                })
        })
        .collect()
}

/// Reads the image `manifest.json` selects, with the span of each layer's blob.
fn read_with_manifest_json(
    archive: &DockerArchive,
    name: Option<&str>,
    platform: &Platform,
    reference: &str,
) -> Result<(Image, Vec<EntrySpan>), ImageError> {
    let bytes = archive.read_json_entry(MANIFEST_FILE, "the archive")?;
    let entries = spec::parse_archive_manifest(&bytes, reference)?;
    let entry =
        spec::select_archive_entry(&entries, &ArchiveSelector::from_reference(name), reference)?;
    let repo_tags = entry.repo_tags.clone().unwrap_or_default();

    let config_bytes = archive.read_json_entry(&entry.config, MANIFEST_FILE)?;
    let config = RawBlob::new(media_types::DOCKER_CONFIG, config_bytes);
    if let Some(named) = digest_in_name(&entry.config) {
        spec::verify_bytes(
            &config.bytes,
            &named,
            None,
            reference,
            &format!("config {:?}", entry.config),
        )?;
    }

    // Docker ≥ 25: find the OCI manifest of this config in the embedded layout.
    if archive.index.lookup(INDEX_FILE).is_some() && archive.index.lookup(OCI_LAYOUT_FILE).is_some()
    {
        if let Some(image) =
            find_oci_manifest(archive, &config.digest, platform, reference, &repo_tags)?
        {
            let spans = blob_spans(archive, &image)?;
            return Ok((image, spans));
        }
    }

    let spec = spec::parse_config(&config.bytes, reference)?;
    if spec.rootfs.diff_ids.len() != entry.layers.len() {
        return Err(ImageError::Inconsistent {
            image: reference.to_owned(),
            reason: format!(
                "{MANIFEST_FILE} lists {} layers but config {} has {} diff_ids",
                entry.layers.len(),
                config.digest,
                spec.rootfs.diff_ids.len()
            ),
        });
    }
    let mut layers = Vec::with_capacity(entry.layers.len());
    let mut spans = Vec::with_capacity(entry.layers.len());
    for (i, (layer_name, diff_id)) in entry.layers.iter().zip(&spec.rootfs.diff_ids).enumerate() {
        let (layer, span) = manifest_json_layer(archive, i, layer_name, diff_id, reference)?;
        spans.push(span);
        layers.push(layer);
    }
    let image = Image {
        reference: reference.to_owned(),
        repo_tags,
        manifest: None,
        index_digest: None,
        platform: spec.platform(),
        config,
        layers,
    };
    Ok((image, spans))
}

/// Layer `i` of a `manifest.json` image, the archive entry `layer_name` with `diff_id`, and
/// its span: the media type from its sniffed compression, the blob digest from its name
/// (Docker ≥ 25 names blobs by digest), from `diff_id` when uncompressed, else hashed.
fn manifest_json_layer(
    archive: &DockerArchive,
    i: usize,
    layer_name: &str,
    diff_id: &Digest,
    reference: &str,
) -> Result<(Layer, EntrySpan), ImageError> {
    let span = archive
        .index
        .lookup(layer_name)
        .ok_or_else(|| ImageError::MissingEntry {
            image: reference.to_owned(),
            referrer: MANIFEST_FILE.to_owned(),
            entry: layer_name.to_owned(),
        })?;
    let read_err = |source| ImageError::Read {
        image: reference.to_owned(),
        what: format!("layer {i} (entry {layer_name:?})"),
        source,
    };
    let (kind, _) = compression::sniff(archive.open_span(span)).map_err(read_err)?;
    let media_type = match kind {
        Compression::None => media_types::DOCKER_LAYER_TAR,
        Compression::Gzip => media_types::DOCKER_LAYER_GZIP,
        Compression::Zstd => media_types::OCI_LAYER_ZSTD,
    };
    let blob_digest = match (digest_in_name(layer_name), kind) {
        (Some(d), _) => d,
        (None, Compression::None) => diff_id.clone(),
        // A compressed layer under a name that carries no digest: hash it (streaming).
        (None, _) => {
            digest_of_reader(archive.open_span(span))
                .map_err(read_err)?
                .0
        }
    };
    let layer = Layer {
        diff_id: diff_id.clone(),
        blob_digest,
        media_type: media_type.to_owned(),
        blob_size: span.size,
    };
    Ok((layer, span))
}

/// The image of the embedded OCI layout whose config is `config_digest`, if any.
fn find_oci_manifest(
    archive: &DockerArchive,
    config_digest: &Digest,
    platform: &Platform,
    reference: &str,
    repo_tags: &[String],
) -> Result<Option<Image>, ImageError> {
    let index = oci_layout::read_layout_index(archive)?;
    for descriptor in &index.manifests {
        match oci_layout::resolve_image(
            archive,
            reference,
            descriptor,
            platform,
            repo_tags.to_vec(),
        ) {
            Ok(image) if &image.config.digest == config_digest => return Ok(Some(image)),
            Ok(_) => {}
            // Another entry that does not fit (other platform, missing blob): not ours.
            Err(e) => tracing::debug!(error = %e, "skipping index entry {}", descriptor.digest),
        }
    }
    Ok(None)
}

impl ImageSource for DockerArchiveSource {
    fn image(&self) -> &Image {
        &self.image
    }

    fn open_layer(&self, index: usize) -> Result<Box<dyn Read + Send + '_>, ImageError> {
        let (span, layer) = self.span(index)?;
        let what = format!("layer {index} ({})", layer.diff_id);
        let reader = BufReader::with_capacity(128 * 1024, self.archive.open_span(span));
        verified_layer(reader, layer, &what).map_err(|source| ImageError::Read {
            image: self.image.reference.clone(),
            what,
            source,
        })
    }

    fn open_layer_blob(&self, index: usize) -> Result<Box<dyn Read + Send + '_>, ImageError> {
        let (span, layer) = self.span(index)?;
        let what = format!("layer {index} ({})", layer.blob_digest);
        let reader = BufReader::with_capacity(128 * 1024, self.archive.open_span(span));
        Ok(verified_blob(reader, layer, &what))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use serde_json::json;

    use super::*;

    /// Appends an entry whose name is written raw into the header, so names the tar crate
    /// would refuse to build (`../x`, `/etc/passwd`) can be made.
    fn raw_entry(
        b: &mut tar::Builder<Vec<u8>>,
        kind: tar::EntryType,
        name: &str,
        link: &str,
        data: &[u8],
    ) {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
        raw_entry(b, tar::EntryType::Regular, name, "", data);
    }

    /// Found by the `tar_scan` fuzz target: an archive cut inside an entry's data was indexed
    /// with a span past its end (and a huge declared size could overflow the span's end).
    #[test]
    fn a_tar_cut_inside_an_entry_is_refused_when_scanned() {
        let mut b = tar::Builder::new(Vec::new());
        file(&mut b, "manifest.json", b"[]");
        file(&mut b, "layer.tar", &[7u8; 2000]);
        let tar = b.into_inner().unwrap();
        // Headers (512 + 512 + 512) and the manifest's padded data (512), then 600 of 2000 bytes.
        let cut = &tar[..3 * 512 + 512 + 600];
        let err = TarIndex::scan(io::Cursor::new(cut)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
        let text = err.to_string();
        assert!(
            text.contains("layer.tar") && text.contains("truncated"),
            "{text}"
        );
        // The whole archive still scans, and every span lies inside it.
        let index = TarIndex::scan(io::Cursor::new(&tar[..])).unwrap();
        let span = index.lookup("layer.tar").unwrap();
        assert!(span.offset + span.size <= tar.len() as u64);
    }

    fn config_for(layers: &[&[u8]]) -> (String, Vec<u8>) {
        let diff_ids: Vec<Digest> = layers.iter().map(|l| Digest::of_bytes(l)).collect();
        let bytes = json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
        })
        .to_string()
        .into_bytes();
        (format!("{}.json", Digest::of_bytes(&bytes).hex()), bytes)
    }

    fn write_tar(b: tar::Builder<Vec<u8>>) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&b.into_inner().unwrap()).unwrap();
        f
    }

    fn read_layer(src: &DockerArchiveSource, i: usize) -> io::Result<Vec<u8>> {
        let mut v = Vec::new();
        src.open_layer(i).unwrap().read_to_end(&mut v)?;
        Ok(v)
    }

    #[test]
    fn normalizes_names_as_strings() {
        assert_eq!(normalize_name("./manifest.json"), "manifest.json");
        assert_eq!(normalize_name("a//b/./c"), "a/b/c");
        assert_eq!(normalize_name("a/../b"), "b");
        assert_eq!(normalize_name("../x"), "../x");
        assert_eq!(normalize_name("/etc/passwd"), "/etc/passwd");
        assert_eq!(
            resolve_link_target("a/layer.tar", "../b/layer.tar").as_deref(),
            Some("b/layer.tar")
        );
        assert_eq!(resolve_link_target("a/layer.tar", "../../etc/passwd"), None);
        assert_eq!(resolve_link_target("a/layer.tar", "/etc/passwd"), None);
    }

    #[test]
    fn hostile_entry_names_are_only_keys() {
        let mut b = tar::Builder::new(Vec::new());
        file(&mut b, "../x", b"up one");
        file(&mut b, "/etc/passwd", b"not the real passwd");
        let f = write_tar(b);
        let archive = DockerArchive::open(f.path(), "test.tar").unwrap();
        let read = |name: &str| {
            let (mut r, _) = archive.open_entry(name)?;
            let mut s = String::new();
            r.read_to_string(&mut s).unwrap();
            Some(s)
        };
        assert_eq!(read("../x").as_deref(), Some("up one"));
        assert_eq!(read("/etc/passwd").as_deref(), Some("not the real passwd"));
        // Other spellings name nothing: there is no filesystem behind the index.
        assert_eq!(read("etc/passwd"), None);
        assert_eq!(read("x"), None);
    }

    #[test]
    fn layers_named_like_host_paths_come_from_the_archive() {
        let layer: &[u8] = b"root:x:0:0:fake layer content";
        let (config_name, config) = config_for(&[layer]);
        let manifest =
            json!([{ "Config": config_name, "RepoTags": ["evil:1"], "Layers": ["/etc/passwd"] }]);
        let mut b = tar::Builder::new(Vec::new());
        file(&mut b, "manifest.json", manifest.to_string().as_bytes());
        file(&mut b, &config_name, &config);
        file(&mut b, "/etc/passwd", layer);
        let f = write_tar(b);
        let src =
            DockerArchiveSource::open(f.path(), None, &spec::linux_amd64(), "evil.tar").unwrap();
        assert_eq!(read_layer(&src, 0).unwrap(), layer);
        assert_eq!(src.image().repo_tags, vec!["evil:1".to_owned()]);
        assert!(src.image().manifest.is_none());
        assert_eq!(
            src.image().layers[0].media_type,
            media_types::DOCKER_LAYER_TAR
        );
    }

    #[test]
    fn missing_and_escaping_layer_names_are_refused() {
        let layer: &[u8] = b"some layer";
        let (config_name, config) = config_for(&[layer]);
        for layer_name in ["../../../../etc/hostname", "escape/layer.tar"] {
            let manifest =
                json!([{ "Config": config_name, "RepoTags": null, "Layers": [layer_name] }]);
            let mut b = tar::Builder::new(Vec::new());
            file(&mut b, "manifest.json", manifest.to_string().as_bytes());
            file(&mut b, &config_name, &config);
            // A symlink that climbs out of the archive resolves to nothing.
            raw_entry(
                &mut b,
                tar::EntryType::Symlink,
                "escape/layer.tar",
                "../../../etc/hostname",
                b"",
            );
            let f = write_tar(b);
            let err = DockerArchiveSource::open(f.path(), None, &spec::linux_amd64(), "evil.tar")
                .unwrap_err();
            match &err {
                ImageError::MissingEntry { entry, .. } => assert_eq!(entry, layer_name),
                other => panic!("{layer_name}: unexpected {other}"),
            }
        }
    }

    #[test]
    fn symlinked_layers_resolve_inside_the_archive() {
        let layer: &[u8] = b"shared layer";
        let (config_name, config) = config_for(&[layer, layer]);
        let manifest = json!([{ "Config": config_name, "RepoTags": [], "Layers": ["a/layer.tar", "b/layer.tar"] }]);
        let mut b = tar::Builder::new(Vec::new());
        file(&mut b, "manifest.json", manifest.to_string().as_bytes());
        file(&mut b, &config_name, &config);
        file(&mut b, "a/layer.tar", layer);
        raw_entry(
            &mut b,
            tar::EntryType::Symlink,
            "b/layer.tar",
            "../a/layer.tar",
            b"",
        );
        let f = write_tar(b);
        let src = DockerArchiveSource::open(f.path(), None, &spec::linux_amd64(), "x.tar").unwrap();
        assert_eq!(read_layer(&src, 1).unwrap(), layer);
    }

    #[test]
    fn config_not_matching_its_name_is_refused() {
        let (_, config) = config_for(&[]);
        let wrong_name = format!("{}.json", Digest::of_bytes(b"other").hex());
        let manifest = json!([{ "Config": wrong_name, "Layers": [] }]);
        let mut b = tar::Builder::new(Vec::new());
        file(&mut b, "manifest.json", manifest.to_string().as_bytes());
        file(&mut b, &wrong_name, &config);
        let f = write_tar(b);
        let err =
            DockerArchiveSource::open(f.path(), None, &spec::linux_amd64(), "x.tar").unwrap_err();
        assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
    }

    #[test]
    fn tampered_layer_fails_at_end_of_stream() {
        let layer: &[u8] = b"original layer";
        let (config_name, config) = config_for(&[layer]);
        let manifest = json!([{ "Config": config_name, "Layers": ["l/layer.tar"] }]);
        let mut b = tar::Builder::new(Vec::new());
        file(&mut b, "manifest.json", manifest.to_string().as_bytes());
        file(&mut b, &config_name, &config);
        file(&mut b, "l/layer.tar", b"tampered layer");
        let f = write_tar(b);
        let src = DockerArchiveSource::open(f.path(), None, &spec::linux_amd64(), "x.tar").unwrap();
        let err = read_layer(&src, 0).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn oversized_manifest_json_is_refused_before_reading() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(MAX_JSON_LEN + 1);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(
            &mut h,
            "manifest.json",
            io::repeat(b' ').take(MAX_JSON_LEN + 1),
        )
        .unwrap();
        let f = write_tar(b);
        let err =
            DockerArchiveSource::open(f.path(), None, &spec::linux_amd64(), "big.tar").unwrap_err();
        assert!(matches!(err, ImageError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn not_an_archive() {
        let mut b = tar::Builder::new(Vec::new());
        file(&mut b, "hello.txt", b"hi");
        let f = write_tar(b);
        let err =
            DockerArchiveSource::open(f.path(), None, &spec::linux_amd64(), "x.tar").unwrap_err();
        assert!(matches!(err, ImageError::NotAnImage { .. }), "{err}");
    }
}
