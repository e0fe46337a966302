//! The bundle engine's error type.
//!
//! Every variant names the bundle (or the file) it is about and carries what a user needs to act.
//! [`Error::is_refusal`] separates "this bundle must not be applied" (untrusted, tampered,
//! truncated, inconsistent) from "the machine could not do it" (I/O, disk, missing base), because
//! callers react differently: a refused bundle is quarantined, a failed one may be retried.

use std::path::PathBuf;

use sideload_signing::{Digest, Refusal};

use crate::image::ImageError;

/// Errors of the bundle engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done, e.g. "reading bundle".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The path is not a regular file (a FIFO, a device, a directory): nothing is read from it.
    #[error("{path}: is a {kind}, not a regular file; a bundle is read only from a file")]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// The file does not start with the bundle magic.
    #[error("{bundle}: not a sideload bundle (bad magic bytes)")]
    NotABundle {
        /// The bundle.
        bundle: String,
    },
    /// The header names a format version this build does not read.
    #[error("{bundle}: bundle format version {found} is not supported (this build reads versions 1 to {supported})")]
    UnsupportedVersion {
        /// The bundle.
        bundle: String,
        /// Version in the header.
        found: u16,
        /// Version this build reads.
        supported: u16,
    },
    /// The file ends before a part it declares.
    #[error("{bundle}: truncated: {part} needs {expected} bytes, the file has {available}")]
    Truncated {
        /// The bundle.
        bundle: String,
        /// Which part is cut short.
        part: &'static str,
        /// Bytes the header or statement declares.
        expected: u64,
        /// Bytes actually there.
        available: u64,
    },
    /// A length field is larger than its documented cap.
    #[error("{bundle}: {field} is {value} bytes, over the limit of {limit}")]
    OverLimit {
        /// The bundle.
        bundle: String,
        /// Which field.
        field: &'static str,
        /// Value found.
        value: u64,
        /// The cap from [`crate::Limits`].
        limit: u64,
    },
    /// The stored statement does not decompress to a bounded statement (container version 2).
    #[error("{bundle}: statement cannot be read: {reason}")]
    UndecodableStatement {
        /// The bundle.
        bundle: String,
        /// What is wrong.
        reason: String,
    },
    /// The signature slot does not hold a valid signature list.
    #[error("{bundle}: signature slot is malformed: {reason}")]
    MalformedSignatures {
        /// The bundle.
        bundle: String,
        /// What is wrong.
        reason: String,
    },
    /// The trust policy refused the statement (see [`Refusal`]).
    #[error("{bundle}: refused: {refusal}")]
    Refused {
        /// The bundle.
        bundle: String,
        /// Why.
        refusal: Refusal,
    },
    /// The payload is not the one the statement signs.
    #[error("{bundle}: payload digest {actual} does not match the signed statement's {expected}")]
    PayloadDigestMismatch {
        /// The bundle.
        bundle: String,
        /// Digest in the statement.
        expected: Digest,
        /// Digest of the bytes found.
        actual: Digest,
    },
    /// The file is longer or shorter than header + statement + signatures + payload.
    #[error("{bundle}: file is {actual} bytes, but its header and statement declare {expected}")]
    SizeMismatch {
        /// The bundle.
        bundle: String,
        /// Declared total.
        expected: u64,
        /// Actual file length.
        actual: u64,
    },
    /// The payload's content is inconsistent with the statement or with itself.
    #[error("{bundle}: corrupt payload: {reason}")]
    CorruptPayload {
        /// The bundle.
        bundle: String,
        /// What is wrong, with offsets or indices.
        reason: String,
    },
    /// A rebuilt layer does not hash to its diff_id.
    #[error("{bundle}: rebuilt layer {index} is {actual}, the statement says {expected}")]
    LayerMismatch {
        /// The bundle.
        bundle: String,
        /// Layer index, bottom = 0.
        index: usize,
        /// diff_id in the statement.
        expected: Digest,
        /// Digest of what was rebuilt.
        actual: Digest,
    },
    /// A layer's compressed blob, recreated from its recipe, is not the source's blob the
    /// statement names: the device cannot serve the source's manifest digest.
    #[error("{bundle}: layer {index}: recreated the gzip blob as {actual}, the statement says {expected} (the source's manifest digest cannot be reproduced here; nothing was tagged)")]
    ExactBlobMismatch {
        /// The bundle.
        bundle: String,
        /// Layer index, bottom = 0.
        index: usize,
        /// Blob digest in the statement.
        expected: Digest,
        /// Digest of what was recreated.
        actual: Digest,
    },
    /// The statement says the device holds a layer's exact compressed blob, and it does not.
    #[error("{bundle}: layer {index} needs the compressed blob {digest}, which is not on this device (it may hold the layer's content, stored another way)")]
    MissingBaseBlob {
        /// The bundle.
        bundle: String,
        /// Layer index, bottom = 0.
        index: usize,
        /// The blob.
        digest: Digest,
    },
    /// The statement leaves a held layer blob's digest to the device (format 9), and none of
    /// the blobs the device holds of that layer makes the signed manifest.
    #[error("{bundle}: layer {index} reuses the source's compressed blob of layer {diff_id}, and {} (it may hold the layer's content, stored another way)", held_blobs(*.held))]
    HeldBlobNotFound {
        /// The bundle.
        bundle: String,
        /// Layer index, bottom = 0 (the first such layer, when several are).
        index: usize,
        /// The layer's diff_id.
        diff_id: Digest,
        /// How many compressed blobs of the layer the device holds.
        held: usize,
    },
    /// The manifest filled with the digests of the blobs recreated on the device (format 9)
    /// is not the one the statement signs.
    #[error("{bundle}: the manifest filled with the digests of the blobs recreated here hashes to {actual}, the statement signs {expected} (the source's manifest digest cannot be reproduced here; nothing was tagged)")]
    DerivedManifestMismatch {
        /// The bundle.
        bundle: String,
        /// The manifest digest in the statement.
        expected: Digest,
        /// The digest of the filled manifest.
        actual: Digest,
    },
    /// The statement requires content the device does not hold.
    #[error("{bundle}: needs base layer {diff_id}, which is not among the images on this device")]
    MissingBase {
        /// The bundle.
        bundle: String,
        /// The missing layer.
        diff_id: Digest,
    },
    /// Not enough free disk to apply.
    #[error("{path}: needs {needed} bytes free for the rebuilt image and scratch data, only {available} available")]
    InsufficientDisk {
        /// Where the space is needed.
        path: PathBuf,
        /// Bytes needed.
        needed: u64,
        /// Bytes free.
        available: u64,
    },
    /// The signature slot has no room for another signature.
    #[error("{bundle}: the signature slot ({slot} bytes) has no room for another signature")]
    SignatureSlotFull {
        /// The bundle.
        bundle: String,
        /// Slot size.
        slot: u32,
    },
    /// The output path already exists; apply never overwrites.
    #[error("{0}: already exists; apply writes a new image and never overwrites")]
    OutputExists(PathBuf),
    /// The input given to the builder cannot make a bundle.
    #[error("cannot build: {0}")]
    InvalidBuild(String),
    /// Reading or writing an image failed.
    #[error(transparent)]
    Image(#[from] ImageError),
}

impl Error {
    /// True when the bundle itself is at fault (untrusted, tampered, truncated, inconsistent):
    /// it must not be retried as is.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Error::NotABundle { .. }
                | Error::UnsupportedVersion { .. }
                | Error::Truncated { .. }
                | Error::OverLimit { .. }
                | Error::MalformedSignatures { .. }
                | Error::UndecodableStatement { .. }
                | Error::Refused { .. }
                | Error::PayloadDigestMismatch { .. }
                | Error::SizeMismatch { .. }
                | Error::CorruptPayload { .. }
                | Error::LayerMismatch { .. }
                | Error::ExactBlobMismatch { .. }
                | Error::DerivedManifestMismatch { .. }
        )
    }

    /// A stable identifier per kind of failure, for JSON output, journals and receipts.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Io { .. } => "io",
            Error::NotAFile { .. } => "not_a_file",
            Error::NotABundle { .. } => "not_a_bundle",
            Error::UnsupportedVersion { .. } => "unsupported_version",
            Error::Truncated { .. } => "truncated",
            Error::OverLimit { .. } => "over_limit",
            Error::MalformedSignatures { .. } => "malformed_signatures",
            Error::UndecodableStatement { .. } => "undecodable_statement",
            Error::Refused { refusal, .. } => refusal.code(),
            Error::PayloadDigestMismatch { .. } => "payload_digest_mismatch",
            Error::SizeMismatch { .. } => "size_mismatch",
            Error::CorruptPayload { .. } => "corrupt_payload",
            Error::LayerMismatch { .. } => "layer_mismatch",
            Error::MissingBase { .. } => "missing_base",
            Error::ExactBlobMismatch { .. } | Error::DerivedManifestMismatch { .. } => {
                "exact_blob_mismatch"
            }
            Error::MissingBaseBlob { .. } | Error::HeldBlobNotFound { .. } => "missing_base_blob",
            Error::InsufficientDisk { .. } => "insufficient_disk",
            Error::SignatureSlotFull { .. } => "signature_slot_full",
            Error::OutputExists(_) => "output_exists",
            Error::InvalidBuild(_) => "invalid_build",
            Error::Image(_) => "image",
        }
    }

    /// What the user should do about it.
    pub fn advice(&self) -> &'static str {
        match self {
            Error::Io { .. } | Error::Image(_) => {
                "check that the path exists and is readable/writable, then retry"
            }
            Error::NotAFile { .. } => {
                "give the path of the bundle file itself; to read from a pipe or a device, copy it to a file first"
            }
            Error::NotABundle { .. } => "check that the file is a bundle written by `sideload build`",
            Error::UnsupportedVersion { .. } => {
                "update sideload on this device, or rebuild the bundle with the version it runs"
            }
            Error::Truncated { .. } | Error::SizeMismatch { .. } => {
                "the copy is incomplete or damaged: transfer the bundle again"
            }
            Error::OverLimit { .. }
            | Error::MalformedSignatures { .. }
            | Error::UndecodableStatement { .. }
            | Error::CorruptPayload { .. }
            | Error::PayloadDigestMismatch { .. }
            | Error::LayerMismatch { .. } => {
                "the bundle was damaged or tampered with: transfer it again from the release source, and report it if it repeats"
            }
            Error::Refused { refusal, .. } => refusal.advice(),
            Error::MissingBase { .. } => {
                "build the bundle against the images this device really holds (see its inventory), or deliver the base image first"
            }
            Error::ExactBlobMismatch { .. } | Error::DerivedManifestMismatch { .. } => {
                "this device cannot reproduce the source's exact layer (its sideload differs from the builder's, or the statement is wrong): rebuild the bundle with `--exact never`, or update sideload on the device"
            }
            Error::MissingBaseBlob { .. } | Error::HeldBlobNotFound { .. } => {
                "the device holds this layer's content but not the source's compressed blob (its copy was compressed again, or stored by an older sideload): rebuild with `--inventory` (the device's own report) or `--resend-base-blobs`, or with `--exact never`"
            }
            Error::InsufficientDisk { .. } => "free disk space on the device, then apply again",
            Error::SignatureSlotFull { .. } => {
                "rebuild the bundle with a larger --signature-slot"
            }
            Error::OutputExists(_) => "choose a new output path or remove the old one",
            Error::InvalidBuild(_) => "check the build arguments",
        }
    }

    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }
}

/// "none of its N blobs of that layer makes…", for [`Error::HeldBlobNotFound`].
fn held_blobs(held: usize) -> String {
    match held {
        0 => "this device holds no compressed blob of that layer".into(),
        1 => {
            "the one blob of that layer this device holds does not make the signed manifest".into()
        }
        n => format!(
            "none of the {n} blobs of that layer this device holds makes the signed manifest"
        ),
    }
}
