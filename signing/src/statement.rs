//! The statement: the small, signed description of a bundle.
//!
//! A statement is what release engineers sign. It names the image the device will produce (down
//! to the exact manifest bytes), what the device must already hold, and the payload's size and
//! digest, so signing the statement signs the payload too without the signer ever seeing it.
//!
//! It is signed as *canonical JSON* (a bundle stores it zstd-compressed, and the device acts on
//! the decompressed JSON, which is what was signed): object keys sorted by byte value, no
//! insignificant whitespace, integers only (no floats anywhere in the schema), strings escaped
//! as `serde_json` escapes them. [`Statement::to_canonical_json`] produces that form and
//! [`Statement::from_canonical_json`] refuses anything else, so one statement has exactly one
//! byte encoding and a signature can never be moved onto a differently-parsed twin.

use serde::{Deserialize, Serialize};

use crate::names::{Digest, RepositoryName, Tag};

/// The newest bundle format version this code writes and reads. Version 2 added
/// [`LayerStorage::SourceBlob`] (and the payload records it uses); version 3 the payload
/// records MIX_RUNS and PATCH_BSDIFF_X86; version 4 the Go kind of gzip recipe; version 5 the
/// pgzip kind; version 6 the kind for Go writers flushed before they were closed; version 7
/// the preflate kind that keeps some deflate blocks verbatim; version 8 the compact recipe (the
/// gzip trailer computed on the device, the writer as a code: 11-14 B where kinds 2-5 took
/// 37-68 B), which builds now write for every recipe. A bundle is written with the lowest
/// version that describes it, so devices that predate a version still apply what does not
/// need it, and refuse the rest from its head, before its payload travels. Version 9 lets a
/// [`LayerStorage::SourceBlob`] leave its digest and size to the device, with the manifest as a
/// template ([`crate::template`]): an exact bundle then costs no digest per layer.
pub const FORMAT_VERSION: u32 = 9;

/// The oldest format version this code reads.
pub const OLDEST_FORMAT_VERSION: u32 = 1;

/// Largest statement accepted, in bytes. Real statements are a few KiB (one digest per layer);
/// the cap keeps a hostile header from making a reader allocate.
pub const MAX_STATEMENT_LEN: u32 = 1024 * 1024;

/// What a bundle claims, and what its signatures cover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    /// Bundle format version; readers refuse versions they do not know.
    pub format_version: u32,
    /// The image the device will hold once the bundle is applied.
    pub target: Target,
    /// Content the device must already hold, by uncompressed layer digest (diff_id). Layers the
    /// target shares with the device are listed here and cost nothing in the payload.
    pub requires: Vec<Digest>,
    /// Size and digest of everything after the bundle's header.
    pub payload: PayloadInfo,
    /// Per-repository sequence number: a device refuses a bundle whose sequence is not greater
    /// than the last one it applied for the repository (anti-rollback).
    pub sequence: u64,
    /// Lets this bundle go to a device that already applied a higher sequence. Only for
    /// deliberate downgrades; signed like everything else.
    pub allow_downgrade: bool,
    /// Creation time, seconds since the Unix epoch (UTC).
    pub created_at: u64,
    /// Expiry, seconds since the Unix epoch (UTC). A device refuses the bundle after this time.
    pub expires_at: u64,
    /// Who ordered this bundle (free text, e.g. a ticket or a person).
    pub ordered_by: String,
    /// Whom to contact about it (free text).
    pub contact: String,
}

/// The image a bundle produces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Repository the device stores the image under.
    pub repository: RepositoryName,
    /// Tags that move to the image once it is complete and checked.
    pub tags: Vec<Tag>,
    /// Platform from the image config.
    pub platform: Platform,
    /// Digest of the image config blob: the image ID.
    pub config_digest: Digest,
    /// Per layer, bottom first: how to rebuild and store it.
    pub layers: Vec<TargetLayer>,
    /// Media type of the manifest the device produces.
    pub manifest_media_type: String,
    /// The exact manifest bytes (UTF-8 JSON) the device produces, embedded as a string so that
    /// canonicalising the statement never touches them. When a layer's blob is derived (its
    /// digest and size left to the device), a template whose holes the device fills
    /// ([`crate::template`]).
    pub manifest: String,
    /// sha256 of the manifest the device produces (of `manifest`, filled when it is a
    /// template); the device checks it produced exactly this.
    pub manifest_digest: Digest,
    /// Where the image came from, for humans and audit.
    pub source: SourceRef,
}

/// Platform triple from the image config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Platform {
    /// e.g. `linux`, `windows`.
    pub os: String,
    /// e.g. `amd64`, `arm64`.
    pub architecture: String,
    /// e.g. `v8`; empty when the config has none.
    pub variant: String,
}

/// One layer of the target image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetLayer {
    /// Digest of the uncompressed layer tar.
    pub diff_id: Digest,
    /// Size of the uncompressed layer tar in bytes.
    pub size: u64,
    /// How the device stores the layer blob.
    pub storage: LayerStorage,
}

/// How a rebuilt layer is stored as a blob on the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LayerStorage {
    /// The blob is the uncompressed tar; its digest is the diff_id.
    Uncompressed {
        /// Layer media type in the produced manifest.
        media_type: String,
    },
    /// The blob is the source's own compressed blob, byte for byte, so the device can serve
    /// the upstream manifest digest (what deployments pin and image signatures cover).
    /// Compressor output depends on the compressor, so the device does not compress the tar
    /// again by itself: see [`BlobFrom`].
    SourceBlob {
        /// Layer media type in the produced (upstream) manifest.
        media_type: String,
        /// Digest of the compressed blob; the device checks what it produced against it.
        /// `None` (format version 9) when the device derives it: by hashing the blob it
        /// recreates, or by finding the blob it holds for the layer's diff_id. The manifest is
        /// then a template with a hole for it, and the manifest digest checks the result.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<Digest>,
        /// Size of the compressed blob in bytes; `None` exactly when `digest` is.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
        /// Where the blob comes from on the device.
        from: BlobFrom,
    },
}

/// Where the device gets the compressed blob of a [`LayerStorage::SourceBlob`] layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlobFrom {
    /// A gzip blob recreated from the layer's tar and a recipe record in the payload (the
    /// source compressor's decisions, replayed): a few hundredths of the blob.
    Recipe,
    /// Already on the device (a base image holds this exact blob); nothing is sent for it.
    Device,
    /// The blob itself is in the payload: for compressors no recipe models, when exactness
    /// is required. Costs the whole compressed blob.
    Payload,
}

impl Target {
    /// The lowest format version that can describe this target: 9 once a layer's blob is
    /// derived on the device, 2 once any layer is stored as the source's blob, 1 otherwise.
    pub fn format_version(&self) -> u32 {
        if self.layers.iter().any(|l| l.storage.is_derived()) {
            9
        } else if self.layers.iter().any(|l| l.storage.is_exact_blob()) {
            2
        } else {
            1
        }
    }

    /// True when the manifest is a template the device fills ([`crate::template`]).
    pub fn has_manifest_template(&self) -> bool {
        self.layers.iter().any(|l| l.storage.is_derived())
    }

    /// Checks what the schema cannot: a blob's digest and size are named together or left to
    /// the device together, only blobs the device produces (recreated or held) are left to it,
    /// and the manifest is a template exactly when some are, with a digest and a size hole for
    /// each such layer and no hole for any other.
    pub fn check_derived_blobs(&self) -> Result<(), StatementError> {
        let bad = |why: String| Err(StatementError::Inconsistent(why));
        for (index, layer) in self.layers.iter().enumerate() {
            if let LayerStorage::SourceBlob {
                digest, size, from, ..
            } = &layer.storage
            {
                if digest.is_some() != size.is_some() {
                    return bad(format!(
                        "layer {index} names its blob's digest or size but not both"
                    ));
                }
                if digest.is_none() && *from == BlobFrom::Payload {
                    return bad(format!(
                        "layer {index}'s blob travels in the payload but its digest is not named"
                    ));
                }
            }
        }
        let pieces = crate::template::pieces(&self.manifest)
            .map_err(|e| StatementError::Inconsistent(e.to_string()))?;
        let mut seen = vec![(false, false); self.layers.len()];
        for piece in pieces {
            let crate::template::Piece::Hole(hole) = piece else {
                continue;
            };
            let index = hole.layer();
            if !self
                .layers
                .get(index)
                .is_some_and(|l| l.storage.is_derived())
            {
                return bad(format!(
                    "the manifest has a hole for layer {index}, whose blob the statement names or which does not exist"
                ));
            }
            match hole {
                crate::template::Hole::Digest(_) => seen[index].0 = true,
                crate::template::Hole::Size(_) => seen[index].1 = true,
            }
        }
        for (index, layer) in self.layers.iter().enumerate() {
            if layer.storage.is_derived() && seen[index] != (true, true) {
                return bad(format!(
                    "layer {index}'s blob is left to the device but the manifest has no hole for its digest and size"
                ));
            }
        }
        Ok(())
    }
}

impl LayerStorage {
    /// Digest and size of the blob the device stores for a layer; `None` when the statement
    /// leaves them to the device ([`LayerStorage::is_derived`]).
    pub fn blob(&self, layer: &TargetLayer) -> Option<(Digest, u64)> {
        match self {
            LayerStorage::Uncompressed { .. } => Some((layer.diff_id.clone(), layer.size)),
            LayerStorage::SourceBlob {
                digest: Some(digest),
                size: Some(size),
                ..
            } => Some((digest.clone(), *size)),
            LayerStorage::SourceBlob { .. } => None,
        }
    }

    /// True when the device derives the blob's digest and size (format version 9).
    pub fn is_derived(&self) -> bool {
        matches!(self, LayerStorage::SourceBlob { digest: None, .. })
    }

    /// Media type of the layer in the produced manifest.
    pub fn media_type(&self) -> &str {
        match self {
            LayerStorage::Uncompressed { media_type }
            | LayerStorage::SourceBlob { media_type, .. } => media_type,
        }
    }

    /// True when the device stores the source's own compressed blob.
    pub fn is_exact_blob(&self) -> bool {
        matches!(self, LayerStorage::SourceBlob { .. })
    }
}

/// Where the target image was read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRef {
    /// The reference the builder was given (registry reference, archive path, layout path).
    pub reference: String,
    /// Manifest digest at the source, when it had one (registries and OCI layouts do;
    /// classic `docker save` archives do not).
    pub manifest_digest: Option<Digest>,
}

/// Size and digest of the bundle payload, plus what it takes to decode it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadInfo {
    /// Payload length in bytes (the bundle is exactly header + this).
    pub size: u64,
    /// sha256 of the payload bytes.
    pub sha256: Digest,
    /// How the payload stream is compressed.
    pub codec: PayloadCodec,
    /// Window (zstd) or dictionary (LZMA2) size log the payload was compressed with; the
    /// decoder caps its window to this, so a device knows the memory it needs before it starts.
    pub window_log: u32,
    /// Decoded length of the payload stream; the decoder stops with an error past it.
    pub decoded_size: u64,
    /// Temporary disk the decoder needs for base data it gathers before rebuilding layers.
    pub scratch_bytes: u64,
}

/// The payload's compression. LZMA2 is the smaller (what a slow link wants); zstd decodes
/// several times faster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadCodec {
    /// zstd frames with long-distance matching.
    Zstd,
    /// Raw LZMA2 streams (no xz container), as `xz --format=raw` writes them.
    Lzma2,
}

impl std::fmt::Display for PayloadCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PayloadCodec::Zstd => "zstd",
            PayloadCodec::Lzma2 => "lzma2",
        })
    }
}

/// Why statement bytes could not be read as a statement.
#[derive(Debug, thiserror::Error)]
pub enum StatementError {
    /// Not valid JSON for the schema (including unknown fields and bad names).
    #[error("statement is not valid: {0}")]
    Malformed(#[source] serde_json::Error),
    /// Valid, but not in canonical form: someone re-encoded it.
    #[error("statement is not in canonical JSON form")]
    NotCanonical,
    /// Larger than [`MAX_STATEMENT_LEN`].
    #[error("statement is {0} bytes, more than the {MAX_STATEMENT_LEN} allowed")]
    TooLarge(usize),
    /// Valid JSON for the schema, but its parts contradict each other.
    #[error("statement is not consistent: {0}")]
    Inconsistent(String),
}

impl Statement {
    /// Canonical JSON bytes: what signatures cover (a bundle stores them zstd-compressed).
    pub fn to_canonical_json(&self) -> Vec<u8> {
        let value = serde_json::to_value(self).expect("statement serializes");
        let mut out = Vec::with_capacity(4096);
        write_canonical(&value, &mut out);
        out
    }

    /// Parses statement bytes, refusing anything that is not exactly canonical.
    pub fn from_canonical_json(bytes: &[u8]) -> Result<Statement, StatementError> {
        if bytes.len() > MAX_STATEMENT_LEN as usize {
            return Err(StatementError::TooLarge(bytes.len()));
        }
        let statement: Statement =
            serde_json::from_slice(bytes).map_err(StatementError::Malformed)?;
        if statement.to_canonical_json() != bytes {
            return Err(StatementError::NotCanonical);
        }
        statement.target.check_derived_blobs()?;
        Ok(statement)
    }

    /// Digest of the canonical bytes; identifies the bundle.
    pub fn digest(&self) -> Digest {
        Digest::of_bytes(&self.to_canonical_json())
    }
}

/// Writes `value` as canonical JSON. Keys are sorted here explicitly rather than relying on
/// serde_json's map type, whose order changes if any crate in the build enables its
/// `preserve_order` feature.
fn write_canonical(value: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key).expect("string serializes");
                out.push(b':');
                write_canonical(item, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar).expect("scalar serializes"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small, valid statement for tests across the crate.
    pub fn sample() -> Statement {
        let d = |b: &[u8]| Digest::of_bytes(b);
        Statement {
            format_version: FORMAT_VERSION,
            target: Target {
                repository: "edge/app".parse().unwrap(),
                tags: vec!["v2".parse().unwrap()],
                platform: Platform {
                    os: "linux".into(),
                    architecture: "amd64".into(),
                    variant: String::new(),
                },
                config_digest: d(b"config"),
                layers: vec![TargetLayer {
                    diff_id: d(b"layer"),
                    size: 10240,
                    storage: LayerStorage::Uncompressed {
                        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                    },
                }],
                manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                manifest: "{\"schemaVersion\":2}".into(),
                manifest_digest: d(b"{\"schemaVersion\":2}"),
                source: SourceRef {
                    reference: "oci:/tmp/app:v2".into(),
                    manifest_digest: None,
                },
            },
            requires: vec![d(b"base")],
            payload: PayloadInfo {
                size: 100,
                sha256: d(b"payload"),
                codec: PayloadCodec::Lzma2,
                window_log: 27,
                decoded_size: 200,
                scratch_bytes: 0,
            },
            sequence: 7,
            allow_downgrade: false,
            created_at: 1_790_000_000,
            expires_at: 1_800_000_000,
            ordered_by: "ticket OPS-1".into(),
            contact: "ops@example.com".into(),
        }
    }

    #[test]
    fn canonical_round_trip() {
        let s = sample();
        let bytes = s.to_canonical_json();
        assert_eq!(Statement::from_canonical_json(&bytes).unwrap(), s);
        // Keys sorted, no whitespace.
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with("{\"allow_downgrade\":false,\"contact\":"));
        assert!(!text.contains(": "));
    }

    /// `sample()` with its one layer's blob left to the device and the manifest a template.
    fn derived(from: BlobFrom) -> Statement {
        let mut s = sample();
        s.format_version = 9;
        s.target.layers[0].storage = LayerStorage::SourceBlob {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: None,
            size: None,
            from,
        };
        s.target.manifest =
            "{\"layers\":[{\"digest\":\"\u{1}d0\u{1}\",\"size\":\u{1}s0\u{1}}]}".into();
        s
    }

    #[test]
    fn a_derived_blob_needs_version_9_and_a_hole_for_its_digest_and_size() {
        let s = derived(BlobFrom::Recipe);
        assert_eq!(s.target.format_version(), 9);
        let bytes = s.to_canonical_json();
        assert_eq!(Statement::from_canonical_json(&bytes).unwrap(), s);
        // A derived blob has no digest or size key at all (named blobs serialize as before).
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains("{\"from\":\"recipe\",\"kind\":\"source_blob\",\"media_type\""));

        let refused = |s: Statement, why: &str| match Statement::from_canonical_json(
            &s.to_canonical_json(),
        ) {
            Err(StatementError::Inconsistent(reason)) => {
                assert!(reason.contains(why), "{reason}")
            }
            other => panic!("{why}: {other:?}"),
        };
        refused(derived(BlobFrom::Payload), "travels in the payload");
        let mut no_size_hole = derived(BlobFrom::Device);
        no_size_hole.target.manifest = "{\"d\":\"\u{1}d0\u{1}\"}".into();
        refused(no_size_hole, "no hole for its digest and size");
        let mut hole_of_named = sample();
        hole_of_named.target.manifest = "{\"d\":\"\u{1}d0\u{1}\"}".into();
        refused(hole_of_named, "whose blob the statement names");
        let mut half = derived(BlobFrom::Recipe);
        if let LayerStorage::SourceBlob { size, .. } = &mut half.target.layers[0].storage {
            *size = Some(7);
        }
        refused(half, "but not both");
        let mut unclosed = derived(BlobFrom::Recipe);
        unclosed.target.manifest.push('\u{1}');
        refused(unclosed, "never closed");
    }

    #[test]
    fn non_canonical_refused() {
        let s = sample();
        let pretty = serde_json::to_vec_pretty(&s).unwrap();
        assert!(matches!(
            Statement::from_canonical_json(&pretty),
            Err(StatementError::NotCanonical)
        ));
        let mut unknown: serde_json::Value = serde_json::to_value(&s).unwrap();
        unknown["extra"] = 1.into();
        assert!(matches!(
            Statement::from_canonical_json(&serde_json::to_vec(&unknown).unwrap()),
            Err(StatementError::Malformed(_))
        ));
    }
}
