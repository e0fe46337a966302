//! OCI image layouts: a directory with `oci-layout`, `index.json` and `blobs/sha256/<hex>`.
//!
//! The reading logic works on any [`BlobStore`]: a directory ([`DirStore`]), the OCI layout
//! Docker ≥ 25 puts inside a `docker save` tar (see
//! [`docker_archive`](super::docker_archive)), or the local cache a registry pull fills. Blob
//! file names are built only from a validated [`Digest`]'s hex, never from other input.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sideload_signing::{Digest, Platform};

use super::compression::{verified_blob, verified_layer};
use super::spec::{self, Descriptor, Parsed, ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME};
use super::{Image, ImageError, ImageSource, RawBlob, MAX_JSON_LEN};

/// Name of the layout marker file.
pub const OCI_LAYOUT_FILE: &str = "oci-layout";
/// Name of the layout's index.
pub const INDEX_FILE: &str = "index.json";
/// The only layout version there is.
pub const LAYOUT_VERSION: &str = "1.0.0";

/// A content-addressed store of blobs plus the two top-level files of an OCI layout.
pub trait BlobStore: Send + Sync {
    /// Names the store in errors (a path, a reference).
    fn name(&self) -> &str;

    /// Opens the blob `digest` as stored, with its stored size; `None` when absent.
    #[allow(clippy::type_complexity)]
    fn open_blob(
        &self,
        digest: &Digest,
    ) -> Result<Option<(Box<dyn Read + Send + '_>, u64)>, ImageError>;

    /// Reads top-level file `name` (only ever [`OCI_LAYOUT_FILE`] or [`INDEX_FILE`]), refusing
    /// more than `limit` bytes; `None` when absent.
    fn read_file(&self, name: &'static str, limit: u64) -> Result<Option<Vec<u8>>, ImageError>;
}

/// Reads all of `r`, refusing more than `limit` bytes. `size` is the size the store reports,
/// checked before anything is read.
pub(crate) fn read_capped(
    mut r: impl Read,
    size: u64,
    limit: u64,
    image: &str,
    what: &str,
) -> Result<Vec<u8>, ImageError> {
    let too_large = |size| ImageError::TooLarge {
        image: image.to_owned(),
        what: what.to_owned(),
        size,
        limit,
    };
    if size > limit {
        return Err(too_large(size));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    (&mut r)
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| ImageError::Read {
            image: image.to_owned(),
            what: what.to_owned(),
            source,
        })?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// An OCI layout directory as a [`BlobStore`].
#[derive(Debug, Clone)]
pub struct DirStore {
    root: PathBuf,
    name: String,
}

impl DirStore {
    /// The layout at `root`; `name` labels it in errors.
    pub fn new(root: impl Into<PathBuf>, name: impl Into<String>) -> DirStore {
        DirStore {
            root: root.into(),
            name: name.into(),
        }
    }

    /// The layout directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where blob `digest` lives: built from the validated hex only.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        blob_path(&self.root, digest)
    }

    fn io_error(&self, action: &'static str, path: PathBuf, source: io::Error) -> ImageError {
        ImageError::Io {
            image: self.name.clone(),
            action,
            path,
            source,
        }
    }
}

/// `root/blobs/sha256/<hex>`.
pub fn blob_path(root: &Path, digest: &Digest) -> PathBuf {
    root.join("blobs").join("sha256").join(digest.hex())
}

impl BlobStore for DirStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn open_blob(
        &self,
        digest: &Digest,
    ) -> Result<Option<(Box<dyn Read + Send + '_>, u64)>, ImageError> {
        let path = self.blob_path(digest);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_error("open", path, e)),
        };
        let meta = file
            .metadata()
            .map_err(|e| self.io_error("stat", path.clone(), e))?;
        if !meta.is_file() {
            return Err(self.io_error(
                "open",
                path,
                io::Error::new(io::ErrorKind::InvalidData, "blob is not a regular file"),
            ));
        }
        Ok(Some((Box::new(io::BufReader::new(file)), meta.len())))
    }

    fn read_file(&self, name: &'static str, limit: u64) -> Result<Option<Vec<u8>>, ImageError> {
        let path = self.root.join(name);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io_error("open", path, e)),
        };
        let size = file
            .metadata()
            .map_err(|e| self.io_error("stat", path.clone(), e))?
            .len();
        read_capped(file, size, limit, &self.name, name).map(Some)
    }
}

/// Reads a small blob (manifest, index, config) named by `digest`, checking its size against
/// `declared_size` and [`MAX_JSON_LEN`] before reading, and its digest after.
pub fn read_small_blob(
    store: &dyn BlobStore,
    digest: &Digest,
    declared_size: Option<u64>,
    what: &str,
) -> Result<Vec<u8>, ImageError> {
    let image = store.name();
    if let Some(size) = declared_size.filter(|s| *s > MAX_JSON_LEN) {
        return Err(ImageError::TooLarge {
            image: image.to_owned(),
            what: what.to_owned(),
            size,
            limit: MAX_JSON_LEN,
        });
    }
    let (reader, size) = store
        .open_blob(digest)?
        .ok_or_else(|| ImageError::MissingBlob {
            image: image.to_owned(),
            digest: digest.clone(),
            what: what.to_owned(),
        })?;
    let bytes = read_capped(reader, size, MAX_JSON_LEN, image, what)?;
    spec::verify_bytes(&bytes, digest, declared_size, image, what)?;
    Ok(bytes)
}

/// Checks the `oci-layout` marker.
pub fn check_layout_marker(store: &dyn BlobStore) -> Result<(), ImageError> {
    #[derive(Deserialize)]
    struct Marker {
        #[serde(rename = "imageLayoutVersion")]
        version: String,
    }
    let not_layout = |reason: String| ImageError::NotAnImage {
        image: store.name().to_owned(),
        expected: "an OCI image layout",
        reason,
    };
    let bytes = store
        .read_file(OCI_LAYOUT_FILE, 64 * 1024)?
        .ok_or_else(|| not_layout(format!("it has no {OCI_LAYOUT_FILE} file")))?;
    let marker: Marker =
        serde_json::from_slice(&bytes).map_err(|source| ImageError::InvalidJson {
            image: store.name().to_owned(),
            what: OCI_LAYOUT_FILE.to_owned(),
            source,
        })?;
    if marker.version != LAYOUT_VERSION {
        return Err(not_layout(format!(
            "{OCI_LAYOUT_FILE} says version {:?}, only {LAYOUT_VERSION} is known",
            marker.version
        )));
    }
    Ok(())
}

/// Reads the layout's `index.json`.
pub fn read_layout_index(store: &dyn BlobStore) -> Result<spec::IndexSpec, ImageError> {
    let bytes =
        store
            .read_file(INDEX_FILE, MAX_JSON_LEN)?
            .ok_or_else(|| ImageError::NotAnImage {
                image: store.name().to_owned(),
                expected: "an OCI image layout",
                reason: format!("it has no {INDEX_FILE}"),
            })?;
    spec::parse_index(&bytes, store.name(), INDEX_FILE)
}

/// How deep indexes may nest (an index entry that is itself an index).
const MAX_INDEX_DEPTH: usize = 4;

/// Builds the [`Image`] a descriptor names: reads the manifest (choosing `platform` from an
/// index, through nested indexes), then the config, checking every digest.
pub fn resolve_image(
    store: &dyn BlobStore,
    reference: &str,
    descriptor: &Descriptor,
    platform: &Platform,
    repo_tags: Vec<String>,
) -> Result<Image, ImageError> {
    let mut descriptor = descriptor.clone();
    let mut index_digest = None;
    for _ in 0..MAX_INDEX_DEPTH {
        let what = format!("manifest {}", descriptor.digest);
        let bytes = read_small_blob(store, &descriptor.digest, Some(descriptor.size), &what)?;
        match spec::parse_manifest(&bytes, Some(&descriptor.media_type), reference, &what)? {
            Parsed::Index(index) => {
                index_digest.get_or_insert_with(|| descriptor.digest.clone());
                descriptor = spec::select_platform(&index, platform, reference)?.clone();
            }
            Parsed::Manifest(manifest) => {
                let media_type = manifest
                    .media_type
                    .clone()
                    .unwrap_or_else(|| descriptor.media_type.clone());
                let manifest_blob = RawBlob {
                    media_type,
                    digest: descriptor.digest.clone(),
                    bytes,
                };
                let config_what = format!("config {}", manifest.config.digest);
                let config_bytes = read_small_blob(
                    store,
                    &manifest.config.digest,
                    Some(manifest.config.size),
                    &config_what,
                )?;
                let config = RawBlob {
                    media_type: manifest.config.media_type.clone(),
                    digest: manifest.config.digest.clone(),
                    bytes: config_bytes,
                };
                return spec::image_from_manifest(
                    reference.to_owned(),
                    repo_tags,
                    manifest_blob,
                    &manifest,
                    index_digest,
                    config,
                );
            }
        }
    }
    Err(ImageError::Inconsistent {
        image: reference.to_owned(),
        reason: format!("image indexes nest deeper than {MAX_INDEX_DEPTH} levels"),
    })
}

/// The names an `index.json` entry gives its image.
pub fn names_of(descriptor: &Descriptor) -> Vec<String> {
    [ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME]
        .iter()
        .filter_map(|k| descriptor.annotation(k))
        .map(str::to_owned)
        .take(1)
        .collect()
}

/// An image read from a [`BlobStore`].
pub struct OciLayoutSource<S> {
    store: S,
    image: Image,
}

impl<S> std::fmt::Debug for OciLayoutSource<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OciLayoutSource")
            .field("image", &self.image.reference)
            .finish_non_exhaustive()
    }
}

impl OciLayoutSource<DirStore> {
    /// Opens the image named `name` (or the only one) in the layout directory `dir`, choosing
    /// `platform` when it is a multi-platform image. `reference` labels it (e.g. `oci:DIR:TAG`).
    pub fn open(
        dir: &Path,
        name: Option<&str>,
        platform: &Platform,
        reference: &str,
    ) -> Result<Self, ImageError> {
        OciLayoutSource::open_in(DirStore::new(dir, reference), name, platform, reference)
    }
}

impl<S: BlobStore> OciLayoutSource<S> {
    /// Opens the image named `name` (or the only one) of the layout `store`.
    pub fn open_in(
        store: S,
        name: Option<&str>,
        platform: &Platform,
        reference: &str,
    ) -> Result<Self, ImageError> {
        check_layout_marker(&store)?;
        let index = read_layout_index(&store)?;
        let descriptor = spec::select_by_name(&index, name, reference)?;
        let image = resolve_image(
            &store,
            reference,
            descriptor,
            platform,
            names_of(descriptor),
        )?;
        Ok(OciLayoutSource { store, image })
    }

    /// Opens the image whose manifest (or index) is `descriptor`, without consulting
    /// `index.json`.
    pub fn open_descriptor(
        store: S,
        descriptor: &Descriptor,
        platform: &Platform,
        reference: &str,
        repo_tags: Vec<String>,
    ) -> Result<Self, ImageError> {
        let image = resolve_image(&store, reference, descriptor, platform, repo_tags)?;
        Ok(OciLayoutSource { store, image })
    }

    /// Wraps an image already resolved against `store`.
    pub fn from_parts(store: S, image: Image) -> Self {
        OciLayoutSource { store, image }
    }

    /// The store the blobs come from.
    pub fn store(&self) -> &S {
        &self.store
    }

    fn open_stored(
        &self,
        index: usize,
    ) -> Result<(Box<dyn Read + Send + '_>, &super::Layer, String), ImageError> {
        let layer = self
            .image
            .layers
            .get(index)
            .ok_or_else(|| ImageError::NoSuchLayer {
                image: self.image.reference.clone(),
                index,
                count: self.image.layers.len(),
            })?;
        let what = format!("layer {index} ({})", layer.blob_digest);
        let (reader, size) =
            self.store
                .open_blob(&layer.blob_digest)?
                .ok_or_else(|| ImageError::MissingBlob {
                    image: self.image.reference.clone(),
                    digest: layer.blob_digest.clone(),
                    what: what.clone(),
                })?;
        if size != layer.blob_size {
            return Err(ImageError::Read {
                image: self.image.reference.clone(),
                what,
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "stored blob is {size} bytes, the manifest says {}",
                        layer.blob_size
                    ),
                ),
            });
        }
        Ok((reader, layer, what))
    }
}

impl<S: BlobStore> ImageSource for OciLayoutSource<S> {
    fn image(&self) -> &Image {
        &self.image
    }

    fn open_layer(&self, index: usize) -> Result<Box<dyn Read + Send + '_>, ImageError> {
        let (reader, layer, what) = self.open_stored(index)?;
        verified_layer(reader, layer, &what).map_err(|source| ImageError::Read {
            image: self.image.reference.clone(),
            what,
            source,
        })
    }

    fn open_layer_blob(&self, index: usize) -> Result<Box<dyn Read + Send + '_>, ImageError> {
        let (reader, layer, what) = self.open_stored(index)?;
        Ok(verified_blob(reader, layer, &what))
    }
}
