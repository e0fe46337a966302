//! Image model: read images from docker-archives, OCI layouts and registries; write them back.
//!
//! An [`ImageSource`] gives an image's metadata ([`Image`]) and opens any layer as its
//! *uncompressed* tar stream, whatever the blob's compression (none, gzip, zstd: detected from
//! the blob's first bytes, not trusted from the media type). Every layer stream hashes what
//! passes through it and fails at end of stream if the bytes do not match the layer's diff_id
//! from the config, so a consumer never accepts a layer that was not checked.
//!
//! Nothing here reads a whole layer into memory; configs and manifests (small, capped) are the
//! only things held as bytes.

use std::io::Read;

use sideload_signing::{Digest, Platform};

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
}

/// Something an image can be read from.
pub trait ImageSource: Send + Sync {
    /// The image's metadata.
    fn image(&self) -> &Image;

    /// Opens layer `index` (bottom = 0) as its uncompressed tar stream. The stream returns an
    /// `io::Error` (of kind `InvalidData`) at its end if the bytes do not hash to the layer's
    /// diff_id.
    fn open_layer(&self, index: usize) -> Result<Box<dyn Read + Send + '_>, ImageError>;
}

/// Errors of the image model. Each names the image or file it is about.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// Placeholder until the image model lands.
    #[error("{0}")]
    Other(String),
}
