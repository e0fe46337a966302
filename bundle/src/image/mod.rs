//! Image model: read images from docker-archives, OCI layouts and registries; write them back.
//!
//! An [`ImageSource`] gives an image's metadata ([`Image`]) and opens any layer as its
//! *uncompressed* tar stream, whatever the blob's compression (none, gzip, zstd: detected from
//! the blob's first bytes, not trusted from the media type). Every layer stream hashes what
//! passes through it and fails at end of stream if the bytes do not match the layer's diff_id
//! from the config, so a consumer never accepts a layer that was not checked.
//!
//! Nothing here reads a whole layer into memory; configs and manifests (small, capped at
//! [`MAX_JSON_LEN`]) are the only things held as bytes.
//!
//! # How the parts fit
//!
//! - [`location`]: parses what users type (`docker-archive:PATH[:REF]`, `oci:DIR[:REF]`,
//!   `docker://HOST/REPO:TAG`, a bare path) into an [`ImageLocation`]; [`open_image`] turns
//!   one into a `Box<dyn ImageSource>`.
//! - [`docker_archive`]: a `docker save` tar (classic layout, or the OCI layout Docker ≥ 25
//!   writes inside it), read in place: the tar is scanned once into an index of entry name →
//!   (offset, size), and entries are read with positional reads. Entry names are keys in that
//!   index, never paths on disk.
//! - [`oci_layout`]: an OCI image layout directory. Blob paths are built only from validated
//!   [`Digest`] hex. Also serves the OCI layout found inside a docker-archive, through the
//!   [`oci_layout::BlobStore`] trait.
//! - [`registry`]: pulls manifest, config and layer blobs through `oci-client` into a local OCI
//!   layout (streaming each blob to a file while verifying it), then reads that layout.
//! - [`digest_reader`] and [`compression`]: the stream adapters every layer passes through:
//!   hash-and-check at end of stream, magic-byte detection, capped-window decompression.
//! - [`write`]: [`write::OciLayoutWriter`], [`write::write_docker_archive`] (what `docker load`
//!   accepts) and [`write::write_oci_layout`] (exact bytes: the manifest digest is kept).
//! - [`from_files`]: a deterministic layer builder and a tiny image builder (images from a
//!   directory of files), for tests and demos; not the encoder, which is [`crate::build`].
//!
//! The pure decisions (which manifest of an index, which image of an archive, is a manifest
//! consistent with its config) live in [`spec`] and are tested on JSON values; the readers
//! only fetch bytes.
//!
//! # What this module does not do
//!
//! - It does not verify signatures, and it does not decide whether an image may be applied:
//!   it only guarantees that the bytes it hands out are the bytes the digests name.
//! - It does not extract layers to disk, and never uses a name from an image as a path.
//! - It does not push to registries or load into engines.
//!
//! # Tests
//!
//! Unit tests sit next to the code (`cargo test -p sideload-bundle --lib image`). Integration
//! tests in `bundle/tests/image_*.rs` use real peers: `skopeo` and the distribution registry
//! (`docker-registry`, Debian package `docker-registry`) started on a loopback port.

use std::io::{self, Read};
use std::path::PathBuf;

use sideload_signing::{Digest, InvalidName, Platform};

pub mod compression;
pub mod digest_reader;
pub mod docker_archive;
pub mod from_files;
pub mod location;
pub mod oci_layout;
pub mod registry;
pub mod spec;
pub mod write;

pub use docker_archive::DockerArchiveSource;
pub use location::{open_image, BasicAuth, ImageLocation, OpenOptions};
pub use oci_layout::OciLayoutSource;
pub use registry::RegistrySource;
pub use write::{write_docker_archive, write_oci_layout, OciLayoutWriter};

/// Largest manifest, config, index or `manifest.json` read into memory, in bytes.
pub const MAX_JSON_LEN: u64 = 16 * 1024 * 1024;

/// Compression of a layer blob, detected from its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (`1f 8b`).
    Gzip,
    /// zstd (`28 b5 2f fd`).
    Zstd,
}

/// A manifest or config exactly as the source stored it.
#[derive(Debug, Clone)]
pub struct RawBlob {
    /// Media type as declared by the source.
    pub media_type: String,
    /// The exact bytes.
    pub bytes: Vec<u8>,
    /// sha256 of `bytes`.
    pub digest: Digest,
}

impl RawBlob {
    /// Wraps bytes, computing their digest.
    pub fn new(media_type: impl Into<String>, bytes: Vec<u8>) -> RawBlob {
        let digest = Digest::of_bytes(&bytes);
        RawBlob {
            media_type: media_type.into(),
            bytes,
            digest,
        }
    }
}

/// One layer of an image.
#[derive(Debug, Clone)]
pub struct Layer {
    /// Digest of the uncompressed tar (from the config's `rootfs.diff_ids`).
    pub diff_id: Digest,
    /// Digest of the blob as stored at the source (equals `diff_id` when uncompressed).
    pub blob_digest: Digest,
    /// Media type of the blob as declared by the source manifest (Docker classic archives have
    /// none; they get `application/vnd.docker.image.rootfs.diff.tar`).
    pub media_type: String,
    /// Size of the blob as stored.
    pub blob_size: u64,
}

/// An image's metadata.
#[derive(Debug, Clone)]
pub struct Image {
    /// How the image was named when opened, e.g. `oci:/path:tag`.
    pub reference: String,
    /// Tags the source gives the image (`RepoTags` of a docker-archive, the ref name of an OCI
    /// layout, the tag of a registry reference); may be empty.
    pub repo_tags: Vec<String>,
    /// The manifest as found at the source; `None` for classic docker-archives, which have none.
    pub manifest: Option<RawBlob>,
    /// When the reference named an image index (a multi-platform image), the index's digest;
    /// `manifest` is then the entry chosen from it for the requested platform.
    pub index_digest: Option<Digest>,
    /// The config blob: its digest is the image ID.
    pub config: RawBlob,
    /// Platform from the config.
    pub platform: Platform,
    /// Layers, bottom first, matching the config's diff_ids one to one.
    pub layers: Vec<Layer>,
}

impl Image {
    /// The config's `rootfs.diff_ids`, bottom first.
    pub fn diff_ids(&self) -> Vec<Digest> {
        self.layers.iter().map(|l| l.diff_id.clone()).collect()
    }

    /// The image ID (the config's digest), as `docker images --no-trunc` shows it.
    pub fn id(&self) -> &Digest {
        &self.config.digest
    }

    /// The manifest digest, when the source has a manifest.
    pub fn manifest_digest(&self) -> Option<&Digest> {
        self.manifest.as_ref().map(|m| &m.digest)
    }
}

/// Something an image can be read from.
pub trait ImageSource: Send + Sync {
    /// The image's metadata.
    fn image(&self) -> &Image;

    /// Opens layer `index` (bottom = 0) as its uncompressed tar stream. The stream returns an
    /// `io::Error` (of kind `InvalidData`) at its end if the bytes do not hash to the layer's
    /// diff_id.
    fn open_layer(&self, index: usize) -> Result<Box<dyn Read + Send + '_>, ImageError>;

    /// Opens layer `index` as the blob the source stores (compressed or not), byte for byte.
    /// The stream fails with `InvalidData` at its end if the bytes do not hash to the layer's
    /// `blob_digest` or their count is not `blob_size`.
    fn open_layer_blob(&self, index: usize) -> Result<Box<dyn Read + Send + '_>, ImageError>;
}

/// Errors of the image model. Each names the image or file it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// A file or directory could not be read or written.
    #[error("{image}: cannot {action} {}: {source}", path.display())]
    Io {
        /// The image (or output) being worked on.
        image: String,
        /// What was being done: "open", "read", "write", "rename", ...
        action: &'static str,
        /// The file on disk.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A named entry of an archive or a blob of a layout could not be read.
    #[error("{image}: cannot read {what}: {source}")]
    Read {
        /// The image.
        image: String,
        /// The entry or blob, e.g. `layer 2 (sha256:…)` or `entry "manifest.json"`.
        what: String,
        /// The cause (`InvalidData` for a digest or size mismatch).
        #[source]
        source: io::Error,
    },
    /// The input is not a docker-archive, OCI layout or registry image at all.
    #[error("{image}: not {expected}: {reason}")]
    NotAnImage {
        /// The path or reference.
        image: String,
        /// What it was expected to be, e.g. "a docker-archive".
        expected: &'static str,
        /// What is missing or wrong.
        reason: String,
    },
    /// An entry a manifest refers to is not in the archive.
    #[error("{image}: {referrer} names {entry:?}, which the archive does not contain")]
    MissingEntry {
        /// The archive.
        image: String,
        /// Which document referred to it, e.g. `manifest.json`.
        referrer: String,
        /// The entry name (data, never a path on disk).
        entry: String,
    },
    /// A blob a manifest or index refers to is not in the layout.
    #[error("{image}: blob {digest} ({what}) is missing")]
    MissingBlob {
        /// The layout or archive.
        image: String,
        /// The blob.
        digest: Digest,
        /// What it should have been: "manifest", "config", "layer 3".
        what: String,
    },
    /// A JSON document (manifest, config, index, `manifest.json`) declares or has a size above
    /// the cap.
    #[error("{image}: {what} is {size} bytes, more than the {limit} allowed")]
    TooLarge {
        /// The image.
        image: String,
        /// The document.
        what: String,
        /// Its size.
        size: u64,
        /// The cap.
        limit: u64,
    },
    /// A JSON document could not be parsed.
    #[error("{image}: {what} is not valid: {source}")]
    InvalidJson {
        /// The image.
        image: String,
        /// The document.
        what: String,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// A digest in a document is not a valid sha256 digest.
    #[error("{image}: {what} has an invalid digest: {source}")]
    InvalidDigest {
        /// The image.
        image: String,
        /// Where the digest was found.
        what: String,
        /// The parser's complaint.
        #[source]
        source: InvalidName,
    },
    /// A document does not hash to the digest that names it, or does not have its declared size.
    #[error("{image}: {what} should be {expected} ({expected_size:?} bytes) but is {actual} ({actual_size} bytes)")]
    DigestMismatch {
        /// The image.
        image: String,
        /// The document.
        what: String,
        /// The digest it is named by.
        expected: Digest,
        /// The size it was declared with, if any.
        expected_size: Option<u64>,
        /// What its bytes hash to.
        actual: Digest,
        /// How many bytes it has.
        actual_size: u64,
    },
    /// A manifest or index has a media type this model does not read.
    #[error("{image}: {what} has unsupported media type {media_type:?}")]
    UnsupportedMediaType {
        /// The image.
        image: String,
        /// The document.
        what: String,
        /// Its media type.
        media_type: String,
    },
    /// The manifest and the config disagree (layer count), or the document is inconsistent.
    #[error("{image}: {reason}")]
    Inconsistent {
        /// The image.
        image: String,
        /// What does not fit.
        reason: String,
    },
    /// The requested name is not among the images of the archive or layout.
    #[error(
        "{image}: no image named {wanted:?}; it holds {}",
        list_or_none(available)
    )]
    NoSuchImage {
        /// The archive or layout.
        image: String,
        /// The name asked for.
        wanted: String,
        /// The names it does hold.
        available: Vec<String>,
    },
    /// Several images and no name to choose one.
    #[error("{image}: holds {} images ({}); name the one you want", available.len(), list_or_none(available))]
    Ambiguous {
        /// The archive or layout.
        image: String,
        /// The images it holds (names or digests).
        available: Vec<String>,
    },
    /// A multi-platform image has no entry for the requested platform.
    #[error(
        "{image}: no manifest for platform {wanted}; the index has {}",
        list_or_none(available)
    )]
    NoSuchPlatform {
        /// The image.
        image: String,
        /// `os/arch[/variant]` asked for.
        wanted: String,
        /// Platforms the index lists.
        available: Vec<String>,
    },
    /// A layer index beyond the image's layers.
    #[error("{image}: has {count} layers, there is no layer {index}")]
    NoSuchLayer {
        /// The image.
        image: String,
        /// The index asked for.
        index: usize,
        /// How many layers there are.
        count: usize,
    },
    /// A location string could not be parsed.
    #[error("invalid image location {input:?}: {reason}")]
    InvalidLocation {
        /// What the user typed.
        input: String,
        /// Why it is not valid.
        reason: String,
    },
    /// The registry refused or failed a request.
    #[error("{image}: registry request for {what} failed: {source}")]
    Registry {
        /// The reference.
        image: String,
        /// What was being fetched.
        what: String,
        /// The client's error.
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

impl ImageError {
    /// True when the input is at fault (bad data, mismatched digests, missing pieces), as opposed
    /// to the local machine (disk, I/O) or the network.
    pub fn is_bad_input(&self) -> bool {
        match self {
            ImageError::Io { .. } | ImageError::Registry { .. } => false,
            ImageError::Read { source, .. } => source.kind() == io::ErrorKind::InvalidData,
            _ => true,
        }
    }
}
