//! Rebuilding a queued bundle into the local registry.
//!
//! 1. Verify the head again (the policy or the sequence floor may have moved since intake).
//! 2. Index the layers the registry holds by diff_id and decode the bundle with them as bases
//!    (read over HTTP from the registry, decompressed whatever their compression, each checked
//!    against its digest as it streams) into a staging OCI layout in the data directory. The
//!    decoder checks every rebuilt layer's diff_id and the manifest digest the statement signs.
//! 3. Push every blob the repository lacks (mounting from another repository when the
//!    registry has it), then the config, then the manifest by digest, and only then move the
//!    tags. A crash before the tag moves leaves unreferenced blobs, never a half image.
//! 4. Read the manifest back by tag: it must be the statement's digest.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sideload_bundle::apply::{apply_trusted, BaseStore, Output};
use sideload_bundle::image::compression::{verified_blob, verified_layer};
use sideload_bundle::image::spec::{self, Parsed};
use sideload_bundle::image::{ImageError, Layer};
use sideload_bundle::{open_trusted, Limits, NoProgress, Trust};
use sideload_signing::{Digest, Statement, Tag, TrustPolicy};
use tokio::runtime::Handle;

use crate::journal::Journal;
use crate::upstream::{StoredImage, Upstream, UpstreamError};

/// What an apply needs of the device, lent by the daemon: its registry, where to stage, whom
/// to trust with which limits, and the journal (for the anti-rollback floor). Nothing else of
/// the daemon reaches the apply, and this module does not know the daemon.
pub struct ApplyContext<'a> {
    /// The local registry the image goes into (and whose images are the bases).
    pub upstream: &'a Upstream,
    /// Where decoding stages its files (one temporary directory per apply inside).
    pub staging_root: PathBuf,
    /// The trust policy the head is verified against again before decoding.
    pub policy: &'a Arc<TrustPolicy>,
    /// The device's limits for every length in the bundle.
    pub limits: &'a Limits,
    /// The journal, for the repository's applied sequence.
    pub journal: &'a Arc<Journal>,
}

/// Why an apply failed. Its message (the journal's reason) names the bundle;
/// [`advice`](Self::advice) says what to do, [`transient`](Self::transient) whether the cause
/// passes (then the bundle is kept and applied again once it is gone).
#[derive(Debug, thiserror::Error)]
pub enum ApplyFailure {
    /// The local registry could not list its images (the bases).
    #[error("{bundle}: cannot list the images of the local registry: {source}")]
    ListImages {
        /// The bundle's name.
        bundle: String,
        /// The registry's error.
        source: crate::upstream::UpstreamError,
    },
    /// The staging folder could not be made.
    #[error("{bundle}: cannot create {}: {source}", path.display())]
    StagingRoot {
        /// The bundle's name.
        bundle: String,
        /// The folder.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// A staging directory for this apply could not be made.
    #[error("{bundle}: cannot create a staging directory: {source}")]
    StagingDir {
        /// The bundle's name.
        bundle: String,
        /// The failure.
        source: io::Error,
    },
    /// The decoder's thread ended without an answer.
    #[error("{bundle}: the decoder stopped: {source}")]
    DecoderStopped {
        /// The bundle's name.
        bundle: String,
        /// The failure.
        source: tokio::task::JoinError,
    },
    /// The bundle engine refused or failed the decode.
    #[error("{}", named(bundle, source))]
    Decode {
        /// The bundle's name.
        bundle: String,
        /// The engine's error.
        source: sideload_bundle::Error,
        /// The registry did not answer after the failure: a base read from it may have
        /// failed because it went away.
        registry_down: bool,
    },
    /// The registry refused or failed to store the rebuilt image.
    #[error("{bundle}: cannot store the rebuilt image in the local registry: {cause}")]
    Store {
        /// The bundle's name.
        bundle: String,
        /// What went wrong.
        cause: StoreError,
    },
}

/// Why the rebuilt image could not be stored in the registry (blobs, manifest, then tags).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A registry call failed.
    #[error(transparent)]
    Registry(#[from] UpstreamError),
    /// The statement's manifest does not parse as an image manifest.
    #[error("the statement's manifest: {0}")]
    Manifest(ImageError),
    /// The statement's manifest is an index.
    #[error("the statement's manifest is an index")]
    NotAnImage,
    /// The registry stored the manifest under another digest.
    #[error("the manifest hashes to {stored}, the statement says {want}")]
    ManifestDigest {
        /// What the registry reported.
        stored: Digest,
        /// The statement's manifest digest.
        want: Digest,
    },
    /// A tag just set reads back as absent.
    #[error("tag {tag} is missing right after it was set")]
    TagMissing {
        /// The tag.
        tag: Tag,
    },
    /// A tag just set reads back as another manifest.
    #[error("tag {tag} points at {found} instead of {want}")]
    TagElsewhere {
        /// The tag.
        tag: Tag,
        /// What it points at.
        found: Digest,
        /// The statement's manifest digest.
        want: Digest,
    },
}

impl StoreError {
    /// True when the registry's storage is full (it says so in its answer).
    fn is_no_space(&self) -> bool {
        matches!(self, StoreError::Registry(e) if e.to_string().to_ascii_lowercase().contains("no space left"))
    }
}

/// An engine error's text, naming the bundle (disk and I/O errors name only a path).
fn named(bundle: &str, e: &sideload_bundle::Error) -> String {
    let text = e.to_string();
    if text.contains(bundle) {
        text
    } else {
        format!("{bundle}: {text}")
    }
}

impl ApplyFailure {
    /// The journal's reason: the message, naming the bundle.
    pub fn reason(&self) -> String {
        self.to_string()
    }

    /// What to do about it.
    pub fn advice(&self) -> &str {
        match self {
            ApplyFailure::ListImages { .. } => "check that the registry service runs (systemctl status docker-registry); the bundle is kept and applied once the registry answers",
            ApplyFailure::StagingRoot { .. } | ApplyFailure::StagingDir { .. } => {
                "check the data directory's permissions and free space"
            }
            ApplyFailure::DecoderStopped { .. } => "report this as a bug",
            ApplyFailure::Decode { source, .. } => source.advice(),
            ApplyFailure::Store { .. } => "check that the registry service runs and its storage has free space; the old tags are unchanged; the bundle is kept and applied again once the registry takes it",
        }
    }

    /// The passing cause, when the cause passes (a full disk, the registry down); `None`: the
    /// bundle itself cannot be applied here (a missing base, a damaged payload).
    pub fn transient(&self) -> Option<Transient> {
        let no_space =
            |e: &(dyn std::error::Error + 'static)| is_no_space(e).then_some(Transient::NoSpace);
        match self {
            ApplyFailure::ListImages { .. } => Some(Transient::Registry),
            ApplyFailure::StagingRoot { source, .. } | ApplyFailure::StagingDir { source, .. } => {
                no_space(source)
            }
            ApplyFailure::DecoderStopped { .. } => None,
            ApplyFailure::Decode {
                source,
                registry_down,
                ..
            } => no_space(source).or(registry_down.then_some(Transient::Registry)),
            // The registry refused or failed to store a manifest and blobs whose digests the
            // decoder checked: its storage is full or it is down, both of which pass.
            ApplyFailure::Store { cause, .. } => Some(if cause.is_no_space() {
                Transient::NoSpace
            } else {
                Transient::Registry
            }),
        }
    }
}

/// A cause of a failed apply that goes away by itself or by an operator's hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transient {
    /// A disk (the data directory's, or the registry's storage) is full.
    NoSpace,
    /// The local registry did not answer or could not store the image.
    Registry,
}

/// Whether an error, or any error it was caused by, is a full disk or quota. Pure.
pub fn is_no_space(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            // ENOSPC, EDQUOT
            if io.kind() == io::ErrorKind::StorageFull
                || io.kind() == io::ErrorKind::QuotaExceeded
                || matches!(io.raw_os_error(), Some(28 | 122))
            {
                return true;
            }
        }
        if let Some(sideload_bundle::Error::InsufficientDisk { .. }) =
            e.downcast_ref::<sideload_bundle::Error>()
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// Layers the registry holds, found by diff_id, read as verified uncompressed streams.
pub struct RegistryBases {
    upstream: Upstream,
    handle: Handle,
    by_diff_id: HashMap<Digest, (String, Layer)>,
    /// Every stored layer blob: several images may hold one diff_id as different blobs (one
    /// uncompressed, one the source's exact gzip blob).
    by_blob: HashMap<Digest, (String, Layer)>,
}

impl RegistryBases {
    /// Indexes the layers of `images`.
    pub fn new(upstream: Upstream, handle: Handle, images: &[StoredImage]) -> RegistryBases {
        let mut by_diff_id = HashMap::new();
        let mut by_blob = HashMap::new();
        for image in images {
            for (i, diff_id) in image.diff_ids.iter().enumerate() {
                let (Ok(diff_id), Some(Ok(blob_digest))) = (
                    diff_id.parse::<Digest>(),
                    image.layer_blobs.get(i).map(|b| b.parse::<Digest>()),
                ) else {
                    continue;
                };
                let layer = Layer {
                    diff_id: diff_id.clone(),
                    blob_digest: blob_digest.clone(),
                    media_type: image.layer_media_types[i].clone(),
                    blob_size: image.layer_sizes[i],
                };
                by_blob
                    .entry(blob_digest)
                    .or_insert_with(|| (image.repository.clone(), layer.clone()));
                by_diff_id
                    .entry(diff_id)
                    .or_insert_with(|| (image.repository.clone(), layer));
            }
        }
        RegistryBases {
            upstream,
            handle,
            by_diff_id,
            by_blob,
        }
    }

    /// A repository that holds the blob `digest`, for cross-repository mounts.
    fn repository_with_blob(&self, digest: &Digest) -> Option<&str> {
        self.by_blob.get(digest).map(|(repo, _)| repo.as_str())
    }

    /// Opens blob `digest` of `repository` from the registry, streamed.
    fn open_stored(&self, repository: &str, digest: &Digest) -> Result<BlockingBody, ImageError> {
        let resp = self
            .handle
            .block_on(self.upstream.open_blob(repository, digest))
            .map_err(|e| ImageError::Io {
                image: format!("local registry {repository}"),
                action: "read layer",
                path: PathBuf::from(digest.as_str()),
                source: io::Error::other(e.to_string()),
            })?;
        Ok(BlockingBody {
            handle: self.handle.clone(),
            resp,
            chunk: bytes::Bytes::new(),
        })
    }
}

impl BaseStore for RegistryBases {
    fn contains(&self, diff_id: &Digest) -> bool {
        self.by_diff_id.contains_key(diff_id)
    }

    fn open_layer(
        &self,
        diff_id: &Digest,
    ) -> Result<Option<Box<dyn Read + Send + '_>>, ImageError> {
        let Some((repository, layer)) = self.by_diff_id.get(diff_id) else {
            return Ok(None);
        };
        let label = format!("local registry {repository}");
        let body = self.open_stored(repository, &layer.blob_digest)?;
        let what = format!("{label} layer {}", diff_id.short());
        verified_layer(body, layer, &what)
            .map(Some)
            .map_err(|source| ImageError::Io {
                image: label,
                action: "read layer",
                path: PathBuf::from(layer.blob_digest.as_str()),
                source,
            })
    }

    fn contains_blob(&self, digest: &Digest) -> bool {
        self.by_blob.contains_key(digest)
    }

    fn blobs_of(&self, diff_id: &Digest) -> Vec<(Digest, u64)> {
        let mut blobs: Vec<(Digest, u64)> = self
            .by_blob
            .values()
            .map(|(_, layer)| layer)
            .filter(|l| &l.diff_id == diff_id && l.blob_digest != l.diff_id)
            .map(|l| (l.blob_digest.clone(), l.blob_size))
            .collect();
        blobs.sort();
        blobs
    }

    fn open_blob(&self, digest: &Digest) -> Result<Option<Box<dyn Read + Send + '_>>, ImageError> {
        let Some((repository, layer)) = self.by_blob.get(digest) else {
            return Ok(None);
        };
        let body = self.open_stored(repository, digest)?;
        let what = format!(
            "local registry {repository} layer {}",
            layer.diff_id.short()
        );
        Ok(Some(verified_blob(body, layer, &what)))
    }
}

/// An HTTP response body read synchronously, chunk by chunk, from a blocking thread (the
/// decoder is synchronous; it runs under `spawn_blocking`).
struct BlockingBody {
    handle: Handle,
    resp: reqwest::Response,
    chunk: bytes::Bytes,
}

impl Read for BlockingBody {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.handle.block_on(self.resp.chunk()) {
                Ok(Some(c)) => self.chunk = c,
                Ok(None) => return Ok(0),
                Err(e) => return Err(io::Error::other(e)),
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk[..n]);
        bytes::Buf::advance(&mut self.chunk, n);
        Ok(n)
    }
}

/// Applies the bundle stored at `path` (delivered as `name`) into the registry. Returns the
/// statement applied.
pub async fn rebuild(
    device: &ApplyContext<'_>,
    path: &Path,
    name: &str,
) -> Result<Statement, ApplyFailure> {
    let name = name.to_owned();
    // 1-2: decode into staging, on a blocking thread.
    let mut configs = HashMap::new();
    let images = device
        .upstream
        .images(&mut configs)
        .await
        .map_err(|source| ApplyFailure::ListImages {
            bundle: name.clone(),
            source,
        })?;
    let bases = RegistryBases::new(device.upstream.clone(), Handle::current(), &images);
    let staging_root = &device.staging_root;
    std::fs::create_dir_all(staging_root).map_err(|source| ApplyFailure::StagingRoot {
        bundle: name.clone(),
        path: staging_root.clone(),
        source,
    })?;
    let staging = tempfile::Builder::new()
        .prefix("apply-")
        .tempdir_in(staging_root)
        .map_err(|source| ApplyFailure::StagingDir {
            bundle: name.clone(),
            source,
        })?;
    let layout = staging.path().join("image");
    let (statement, bases) = {
        let path = path.to_owned();
        let layout = layout.clone();
        let policy = device.policy.clone();
        let limits = device.limits.clone();
        let journal = device.journal.clone();
        let decoded = tokio::task::spawn_blocking(move || {
            let trust = Trust {
                policy: &policy,
                limits: &limits,
                now: crate::journal::now(),
            };
            let trusted = open_trusted(&path, &trust, |repository| {
                journal
                    .sequence(repository)
                    .map_err(|e| sideload_bundle::Error::Io {
                        what: "reading the journal for",
                        path: path.clone(),
                        source: io::Error::other(e),
                    })
            })?;
            let report = apply_trusted(
                &path,
                trusted,
                &bases,
                &Output::OciLayout(layout),
                &limits,
                &NoProgress,
            )?;
            Ok::<_, sideload_bundle::Error>((report.statement, bases))
        })
        .await;
        let decoded = decoded.map_err(|source| ApplyFailure::DecoderStopped {
            bundle: name.clone(),
            source,
        })?;
        match decoded {
            Ok(done) => done,
            // A base read from the registry can fail because the registry went away.
            Err(source) => {
                let registry_down = !is_no_space(&source) && device.upstream.ping().await.is_err();
                return Err(ApplyFailure::Decode {
                    bundle: name.clone(),
                    source,
                    registry_down,
                });
            }
        }
    };
    crate::crash::reached(crate::crash::Step::ApplyStaged);
    // 3: push blobs, config, manifest, tags.
    push_layout(device.upstream, &bases, &statement, &layout)
        .await
        .map_err(|cause| ApplyFailure::Store {
            bundle: name.clone(),
            cause,
        })?;
    drop(staging);
    Ok(statement)
}

async fn push_layout(
    up: &Upstream,
    bases: &RegistryBases,
    statement: &Statement,
    layout: &Path,
) -> Result<(), StoreError> {
    let repo = statement.target.repository.as_str();
    let label = format!("{repo}@{}", statement.target.manifest_digest);
    let manifest = match spec::parse_manifest(
        statement.target.manifest.as_bytes(),
        Some(&statement.target.manifest_media_type),
        &label,
        "manifest",
    )
    .map_err(StoreError::Manifest)?
    {
        Parsed::Manifest(m) => m,
        Parsed::Index(_) => return Err(StoreError::NotAnImage),
    };
    let blobs = manifest
        .layers
        .iter()
        .map(|l| &l.digest)
        .chain(std::iter::once(&manifest.config.digest));
    for digest in blobs {
        if up.has_blob(repo, digest).await? {
            continue;
        }
        if let Some(from) = bases.repository_with_blob(digest) {
            if from != repo && up.mount_blob(repo, digest, from).await? {
                continue;
            }
        }
        let path = layout.join("blobs").join("sha256").join(digest.hex());
        up.push_blob_file(repo, digest, &path).await?;
    }
    let manifest_bytes = statement.target.manifest.as_bytes();
    let media_type = &statement.target.manifest_media_type;
    let want = &statement.target.manifest_digest;
    let stored = up
        .put_manifest(repo, want.as_str(), media_type, manifest_bytes)
        .await?;
    if &stored != want {
        return Err(StoreError::ManifestDigest {
            stored,
            want: want.clone(),
        });
    }
    crate::crash::reached(crate::crash::Step::ApplyManifestStored);
    // Fault injection for the crash tests (test builds only): hold here, with every blob and
    // the manifest stored but no tag moved, so a test can kill the process at the worst moment.
    #[cfg(feature = "fault-injection")]
    #[allow(clippy::disallowed_methods)]
    if let Some(ms) = std::env::var("SIDELOAD_FAULT_PAUSE_BEFORE_TAG_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        tracing::warn!(ms, "fault injection: pausing before the tag moves");
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    // Tags move last: only now is every blob and the manifest in place.
    for tag in &statement.target.tags {
        up.put_manifest(repo, tag.as_str(), media_type, manifest_bytes)
            .await?;
        let back = up
            .manifest(repo, tag.as_str())
            .await?
            .ok_or_else(|| StoreError::TagMissing { tag: tag.clone() })?;
        if &back.digest != want {
            return Err(StoreError::TagElsewhere {
                tag: tag.clone(),
                found: back.digest,
                want: want.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_found_through_the_error_chain_and_nothing_else_is() {
        let full = io::Error::from_raw_os_error(28);
        assert!(is_no_space(&full));
        let quota = io::Error::from_raw_os_error(122);
        assert!(is_no_space(&quota));
        let wrapped = sideload_bundle::Error::Io {
            what: "writing",
            path: PathBuf::from("/x"),
            source: io::Error::from_raw_os_error(28),
        };
        assert!(is_no_space(&wrapped));
        let disk = sideload_bundle::Error::InsufficientDisk {
            path: PathBuf::from("/x"),
            needed: 2,
            available: 1,
        };
        assert!(is_no_space(&disk));
        let denied = io::Error::from_raw_os_error(13);
        assert!(!is_no_space(&denied));
        let missing = sideload_bundle::Error::NotABundle { bundle: "b".into() };
        assert!(!is_no_space(&missing));
    }
}
