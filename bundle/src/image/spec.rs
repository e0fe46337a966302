//! The JSON documents of OCI and Docker images, and the pure decisions made on them: which
//! manifest of an index to use, which image of an archive a name picks, whether a manifest and
//! its config agree. No I/O here; the readers fetch bytes and call these.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sideload_signing::{Digest, Platform};

use super::{Image, ImageError, Layer, RawBlob};

/// Media types this model reads and writes.
pub mod media_types {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// Docker image manifest, schema 2.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list (multi-platform).
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// OCI uncompressed layer.
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    /// OCI gzip layer.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// OCI zstd layer.
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// Docker uncompressed layer (what classic `docker save` archives hold).
    pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
    /// Docker gzip layer.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

    /// Media types accepted when asking a registry for a manifest.
    pub const ACCEPTED_MANIFESTS: &[&str] = &[
        OCI_MANIFEST,
        DOCKER_MANIFEST,
        OCI_INDEX,
        DOCKER_MANIFEST_LIST,
    ];
}

/// Annotation naming a manifest in an OCI layout's `index.json` (usually the tag).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation containerd and Docker ≥ 25 put on `index.json` entries: the full image name.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    #[serde(default)]
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// Annotations (`org.opencontainers.image.ref.name`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Platform, for entries of an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformSpec>,
    /// Other places the content may be fetched from (foreign layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
}

impl Descriptor {
    /// A descriptor with no annotations or platform.
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            annotations: None,
            platform: None,
            urls: None,
        }
    }

    /// The value of annotation `key`.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }

    fn label(&self) -> String {
        match (
            self.annotation(ANNOTATION_IMAGE_NAME),
            self.annotation(ANNOTATION_REF_NAME),
        ) {
            (Some(name), _) => name.to_owned(),
            (None, Some(r)) => r.to_owned(),
            (None, None) => self.digest.to_string(),
        }
    }
}

/// A platform as index entries declare it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformSpec {
    /// CPU architecture, e.g. `amd64`.
    pub architecture: String,
    /// Operating system, e.g. `linux`.
    pub os: String,
    /// CPU variant, e.g. `v8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// OS version (Windows images).
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
}

impl PlatformSpec {
    /// From the shared platform type (an empty variant means none).
    pub fn from_platform(p: &Platform) -> PlatformSpec {
        PlatformSpec {
            architecture: p.architecture.clone(),
            os: p.os.clone(),
            variant: (!p.variant.is_empty()).then(|| p.variant.clone()),
            os_version: None,
        }
    }

    /// True when this entry can serve `wanted`: same OS and architecture, and the same variant
    /// when `wanted` names one.
    pub fn matches(&self, wanted: &Platform) -> bool {
        self.os == wanted.os
            && self.architecture == wanted.architecture
            && (wanted.variant.is_empty() || self.variant.as_deref() == Some(&wanted.variant))
    }
}

/// `os/arch[/variant]`.
pub fn platform_string(p: &Platform) -> String {
    if p.variant.is_empty() {
        format!("{}/{}", p.os, p.architecture)
    } else {
        format!("{}/{}/{}", p.os, p.architecture, p.variant)
    }
}

/// `linux/amd64`: what images are picked for when nothing else is asked.
pub fn linux_amd64() -> Platform {
    Platform {
        os: "linux".into(),
        architecture: "amd64".into(),
        variant: String::new(),
    }
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestSpec {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, when the manifest states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// Layer blobs, bottom first.
    pub layers: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image index (OCI) or manifest list (Docker); also the shape of an OCI layout's
/// `index.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexSpec {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, when the index states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The entries.
    pub manifests: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// The parts of an image config this model uses (the rest is kept as bytes in [`RawBlob`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ConfigSpec {
    /// CPU architecture.
    #[serde(default)]
    pub architecture: String,
    /// Operating system.
    #[serde(default)]
    pub os: String,
    /// CPU variant.
    #[serde(default)]
    pub variant: Option<String>,
    /// The layer digests.
    pub rootfs: RootFs,
}

/// `rootfs` of a config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Uncompressed layer digests, bottom first.
    pub diff_ids: Vec<Digest>,
}

impl ConfigSpec {
    /// The config's platform.
    pub fn platform(&self) -> Platform {
        Platform {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone().unwrap_or_default(),
        }
    }
}

/// One entry of a classic `manifest.json` of a `docker save` archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveManifestEntry {
    /// Entry name of the config (`<hex>.json` or `blobs/sha256/<hex>`).
    #[serde(rename = "Config")]
    pub config: String,
    /// `repo:tag` names.
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
    /// Entry names of the layers, bottom first.
    #[serde(rename = "Layers")]
    pub layers: Vec<String>,
}

/// A parsed manifest-or-index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A single-platform image manifest.
    Manifest(Box<ManifestSpec>),
    /// A multi-platform index.
    Index(IndexSpec),
}

fn invalid_json(image: &str, what: &str) -> impl FnOnce(serde_json::Error) -> ImageError {
    let image = image.to_owned();
    let what = what.to_owned();
    move |source| ImageError::InvalidJson {
        image,
        what,
        source,
    }
}

/// Parses a manifest or an index. The media type comes from the document's `mediaType`, else
/// from `declared` (the descriptor or HTTP header), else from its shape.
pub fn parse_manifest(
    bytes: &[u8],
    declared: Option<&str>,
    image: &str,
    what: &str,
) -> Result<Parsed, ImageError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
        schema_version: Option<u32>,
    }
    let probe: Probe = serde_json::from_slice(bytes).map_err(invalid_json(image, what))?;
    let media_type = probe
        .media_type
        .clone()
        .or_else(|| declared.filter(|d| !d.is_empty()).map(str::to_owned));
    let unsupported = |media_type: String| ImageError::UnsupportedMediaType {
        image: image.to_owned(),
        what: what.to_owned(),
        media_type,
    };
    if probe.schema_version != Some(2) {
        return Err(unsupported(format!(
            "{} (schemaVersion {:?})",
            media_type.unwrap_or_default(),
            probe.schema_version
        )));
    }
    let is_index = match media_type.as_deref() {
        Some(media_types::OCI_INDEX | media_types::DOCKER_MANIFEST_LIST) => true,
        Some(media_types::OCI_MANIFEST | media_types::DOCKER_MANIFEST) => false,
        None if probe.manifests.is_some() => true,
        None if probe.config.is_some() => false,
        other => return Err(unsupported(other.unwrap_or_default().to_owned())),
    };
    if is_index {
        Ok(Parsed::Index(
            serde_json::from_slice(bytes).map_err(invalid_json(image, what))?,
        ))
    } else {
        Ok(Parsed::Manifest(Box::new(
            serde_json::from_slice(bytes).map_err(invalid_json(image, what))?,
        )))
    }
}

/// Parses an image config.
pub fn parse_config(bytes: &[u8], image: &str) -> Result<ConfigSpec, ImageError> {
    let config: ConfigSpec =
        serde_json::from_slice(bytes).map_err(invalid_json(image, "config"))?;
    if config.rootfs.kind != "layers" {
        return Err(ImageError::Inconsistent {
            image: image.to_owned(),
            reason: format!(
                "config rootfs type is {:?}, expected \"layers\"",
                config.rootfs.kind
            ),
        });
    }
    Ok(config)
}

/// Parses a layout's `index.json`.
pub fn parse_index(bytes: &[u8], image: &str, what: &str) -> Result<IndexSpec, ImageError> {
    serde_json::from_slice(bytes).map_err(invalid_json(image, what))
}

/// Parses a docker-archive's `manifest.json`.
pub fn parse_archive_manifest(
    bytes: &[u8],
    image: &str,
) -> Result<Vec<ArchiveManifestEntry>, ImageError> {
    serde_json::from_slice(bytes).map_err(invalid_json(image, "manifest.json"))
}

/// Checks `bytes` against the digest and size that name them.
pub fn verify_bytes(
    bytes: &[u8],
    expected: &Digest,
    expected_size: Option<u64>,
    image: &str,
    what: &str,
) -> Result<(), ImageError> {
    let actual = Digest::of_bytes(bytes);
    let actual_size = bytes.len() as u64;
    if &actual != expected || expected_size.is_some_and(|s| s != actual_size) {
        return Err(ImageError::DigestMismatch {
            image: image.to_owned(),
            what: what.to_owned(),
            expected: expected.clone(),
            expected_size,
            actual,
            actual_size,
        });
    }
    Ok(())
}

/// The entry of a multi-platform index for `wanted`. Entries without a platform (attestations
/// and the like) never match.
pub fn select_platform<'a>(
    index: &'a IndexSpec,
    wanted: &Platform,
    image: &str,
) -> Result<&'a Descriptor, ImageError> {
    index
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| p.matches(wanted)))
        .ok_or_else(|| ImageError::NoSuchPlatform {
            image: image.to_owned(),
            wanted: platform_string(wanted),
            available: index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .map(|p| {
                    platform_string(&Platform {
                        os: p.os.clone(),
                        architecture: p.architecture.clone(),
                        variant: p.variant.clone().unwrap_or_default(),
                    })
                })
                .collect(),
        })
}

/// Docker's normal form of an image name: a registry host (`docker.io` by default), the
/// `library/` namespace for official images on docker.io, and `:latest` when neither tag nor
/// digest is given. Only used to compare names, never to build paths.
pub fn normalize_image_name(name: &str) -> String {
    let (first, rest) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_owned(), rest.to_owned())
        }
        _ => ("docker.io".to_owned(), name.to_owned()),
    };
    let rest = if first == "docker.io" && !rest.contains('/') {
        format!("library/{rest}")
    } else {
        rest
    };
    let last = rest.rsplit('/').next().unwrap_or_default();
    let rest = if last.contains(':') || last.contains('@') {
        rest
    } else {
        format!("{rest}:latest")
    };
    format!("{first}/{rest}")
}

/// True when `candidate` (a name an archive or layout gives an image) is what the user asked
/// for with `wanted`: equal as written, or equal in Docker's normal form.
pub fn name_matches(candidate: &str, wanted: &str) -> bool {
    candidate == wanted || normalize_image_name(candidate) == normalize_image_name(wanted)
}

/// The entry of an OCI layout's `index.json` named `wanted` (matched against the ref-name
/// annotation exactly, and against the full image name containerd and Docker add), or the
/// only entry when `wanted` is `None`.
pub fn select_by_name<'a>(
    index: &'a IndexSpec,
    wanted: Option<&str>,
    image: &str,
) -> Result<&'a Descriptor, ImageError> {
    let available = || {
        index
            .manifests
            .iter()
            .map(Descriptor::label)
            .collect::<Vec<_>>()
    };
    let Some(wanted) = wanted else {
        return match index.manifests.as_slice() {
            [only] => Ok(only),
            _ => Err(ImageError::Ambiguous {
                image: image.to_owned(),
                available: available(),
            }),
        };
    };
    let matching: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| {
            d.annotation(ANNOTATION_REF_NAME) == Some(wanted)
                || d.annotation(ANNOTATION_IMAGE_NAME)
                    .is_some_and(|n| name_matches(n, wanted))
        })
        .collect();
    match matching.as_slice() {
        [one] => Ok(one),
        [] => Err(ImageError::NoSuchImage {
            image: image.to_owned(),
            wanted: wanted.to_owned(),
            available: available(),
        }),
        several => {
            // The same name twice is fine when both entries are the same manifest.
            if several.iter().all(|d| d.digest == several[0].digest) {
                Ok(several[0])
            } else {
                Err(ImageError::Ambiguous {
                    image: image.to_owned(),
                    available: several.iter().map(|d| d.digest.to_string()).collect(),
                })
            }
        }
    }
}

/// How a docker-archive's `manifest.json` entry is picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArchiveSelector<'a> {
    /// The only image there is.
    Only,
    /// The image with this `repo:tag`.
    Name(&'a str),
    /// The n-th image (skopeo's `@N`).
    Index(usize),
}

impl<'a> ArchiveSelector<'a> {
    /// From the `:REF` part of a `docker-archive:PATH:REF` location: `@N` selects by position.
    pub fn from_reference(reference: Option<&'a str>) -> ArchiveSelector<'a> {
        match reference {
            None => ArchiveSelector::Only,
            Some(r) => match r.strip_prefix('@').and_then(|n| n.parse().ok()) {
                Some(n) => ArchiveSelector::Index(n),
                None => ArchiveSelector::Name(r),
            },
        }
    }
}

/// Picks the entry of a docker-archive's `manifest.json`.
pub fn select_archive_entry<'a>(
    entries: &'a [ArchiveManifestEntry],
    selector: &ArchiveSelector<'_>,
    image: &str,
) -> Result<&'a ArchiveManifestEntry, ImageError> {
    let available = || {
        entries
            .iter()
            .enumerate()
            .map(|(i, e)| match e.repo_tags.as_deref() {
                Some(tags) if !tags.is_empty() => tags.join(" "),
                _ => format!("@{i} (untagged, config {})", e.config),
            })
            .collect::<Vec<_>>()
    };
    match selector {
        ArchiveSelector::Only => match entries {
            [only] => Ok(only),
            _ => Err(ImageError::Ambiguous {
                image: image.to_owned(),
                available: available(),
            }),
        },
        ArchiveSelector::Index(n) => entries.get(*n).ok_or_else(|| ImageError::NoSuchImage {
            image: image.to_owned(),
            wanted: format!("@{n}"),
            available: available(),
        }),
        ArchiveSelector::Name(wanted) => entries
            .iter()
            .find(|e| {
                e.repo_tags
                    .as_deref()
                    .unwrap_or_default()
                    .iter()
                    .any(|t| name_matches(t, wanted))
            })
            .ok_or_else(|| ImageError::NoSuchImage {
                image: image.to_owned(),
                wanted: (*wanted).to_owned(),
                available: available(),
            }),
    }
}

/// Builds an [`Image`] from a manifest and its (already verified) config.
pub fn image_from_manifest(
    reference: String,
    repo_tags: Vec<String>,
    manifest_blob: RawBlob,
    manifest: &ManifestSpec,
    index_digest: Option<Digest>,
    config: RawBlob,
) -> Result<Image, ImageError> {
    let spec = parse_config(&config.bytes, &reference)?;
    if spec.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(ImageError::Inconsistent {
            image: reference,
            reason: format!(
                "manifest {} lists {} layers but config {} has {} diff_ids",
                manifest_blob.digest,
                manifest.layers.len(),
                config.digest,
                spec.rootfs.diff_ids.len()
            ),
        });
    }
    let layers = manifest
        .layers
        .iter()
        .zip(&spec.rootfs.diff_ids)
        .map(|(d, diff_id)| Layer {
            diff_id: diff_id.clone(),
            blob_digest: d.digest.clone(),
            media_type: d.media_type.clone(),
            blob_size: d.size,
        })
        .collect();
    Ok(Image {
        reference,
        repo_tags,
        manifest: Some(manifest_blob),
        index_digest,
        platform: spec.platform(),
        config,
        layers,
    })
}

/// A Docker schema 2 manifest for an image that has none (a classic docker-archive): config
/// and layer blobs as the image stores them.
pub fn synthesize_manifest(image: &Image) -> RawBlob {
    let manifest = ManifestSpec {
        schema_version: 2,
        media_type: Some(media_types::DOCKER_MANIFEST.to_owned()),
        config: Descriptor::new(
            media_types::DOCKER_CONFIG,
            image.config.digest.clone(),
            image.config.bytes.len() as u64,
        ),
        layers: image
            .layers
            .iter()
            .map(|l| Descriptor::new(l.media_type.clone(), l.blob_digest.clone(), l.blob_size))
            .collect(),
        annotations: None,
    };
    let bytes = serde_json::to_vec(&manifest).unwrap_or_default();
    RawBlob::new(media_types::DOCKER_MANIFEST, bytes)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::of_bytes(&[n])
    }

    fn entry(n: u8, ref_name: Option<&str>, platform: Option<(&str, &str)>) -> serde_json::Value {
        let mut v = json!({
            "mediaType": media_types::OCI_MANIFEST,
            "digest": digest(n),
            "size": 100 + n as u64,
        });
        if let Some(r) = ref_name {
            v["annotations"] = json!({ ANNOTATION_REF_NAME: r });
        }
        if let Some((os, arch)) = platform {
            v["platform"] = json!({ "os": os, "architecture": arch });
        }
        v
    }

    fn index(entries: Vec<serde_json::Value>) -> IndexSpec {
        serde_json::from_value(json!({ "schemaVersion": 2, "manifests": entries })).unwrap()
    }

    #[test]
    fn parse_recognizes_manifest_and_index() {
        let m = json!({
            "schemaVersion": 2,
            "mediaType": media_types::DOCKER_MANIFEST,
            "config": { "mediaType": media_types::DOCKER_CONFIG, "digest": digest(1), "size": 5 },
            "layers": [],
        });
        let parsed = parse_manifest(m.to_string().as_bytes(), None, "img", "manifest").unwrap();
        assert!(matches!(parsed, Parsed::Manifest(_)));
        // No mediaType: declared type, then shape.
        let idx = json!({ "schemaVersion": 2, "manifests": [entry(1, None, None)] });
        let p = parse_manifest(idx.to_string().as_bytes(), None, "img", "index").unwrap();
        assert!(matches!(p, Parsed::Index(_)));
        let p = parse_manifest(
            idx.to_string().as_bytes(),
            Some(media_types::DOCKER_MANIFEST_LIST),
            "img",
            "index",
        )
        .unwrap();
        assert!(matches!(p, Parsed::Index(_)));
    }

    #[test]
    fn parse_refuses_schema1_and_unknown_types() {
        let v1 = json!({ "schemaVersion": 1, "name": "x", "fsLayers": [] });
        assert!(matches!(
            parse_manifest(v1.to_string().as_bytes(), None, "img", "manifest"),
            Err(ImageError::UnsupportedMediaType { .. })
        ));
        let art = json!({ "schemaVersion": 2, "mediaType": "application/vnd.cncf.helm.chart" });
        assert!(matches!(
            parse_manifest(art.to_string().as_bytes(), None, "img", "manifest"),
            Err(ImageError::UnsupportedMediaType { .. })
        ));
    }

    #[test]
    fn bad_digest_in_manifest_is_invalid_json() {
        let m = json!({
            "schemaVersion": 2,
            "mediaType": media_types::OCI_MANIFEST,
            "config": { "mediaType": "x", "digest": "sha256:../../etc/passwd", "size": 5 },
            "layers": [],
        });
        let err = parse_manifest(m.to_string().as_bytes(), None, "img", "manifest").unwrap_err();
        assert!(matches!(err, ImageError::InvalidJson { .. }), "{err}");
    }

    #[test]
    fn select_platform_picks_matching_entry() {
        let idx = index(vec![
            entry(1, None, Some(("linux", "arm64"))),
            entry(2, None, Some(("linux", "amd64"))),
            entry(3, None, None),
        ]);
        assert_eq!(
            select_platform(&idx, &linux_amd64(), "img").unwrap().digest,
            digest(2)
        );
        let arm = Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: String::new(),
        };
        assert_eq!(
            select_platform(&idx, &arm, "img").unwrap().digest,
            digest(1)
        );
        let s390 = Platform {
            os: "linux".into(),
            architecture: "s390x".into(),
            variant: String::new(),
        };
        let err = select_platform(&idx, &s390, "img").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("linux/s390x") && msg.contains("linux/arm64"),
            "{msg}"
        );
    }

    #[test]
    fn select_by_name_or_only() {
        let one = index(vec![entry(1, Some("v1"), None)]);
        assert_eq!(select_by_name(&one, None, "l").unwrap().digest, digest(1));
        assert_eq!(
            select_by_name(&one, Some("v1"), "l").unwrap().digest,
            digest(1)
        );
        let err = select_by_name(&one, Some("v2"), "l").unwrap_err();
        assert!(matches!(err, ImageError::NoSuchImage { .. }));
        assert!(err.to_string().contains("v1"));

        let two = index(vec![entry(1, Some("v1"), None), entry(2, Some("v2"), None)]);
        assert!(matches!(
            select_by_name(&two, None, "l"),
            Err(ImageError::Ambiguous { .. })
        ));
        assert_eq!(
            select_by_name(&two, Some("v2"), "l").unwrap().digest,
            digest(2)
        );
    }

    #[test]
    fn select_by_full_image_name() {
        let mut e = entry(1, Some("latest"), None);
        e["annotations"][ANNOTATION_IMAGE_NAME] = json!("docker.io/library/busybox:latest");
        let idx = index(vec![e, entry(2, Some("other"), None)]);
        for wanted in [
            "busybox",
            "busybox:latest",
            "docker.io/library/busybox:latest",
            "latest",
        ] {
            assert_eq!(
                select_by_name(&idx, Some(wanted), "l").unwrap().digest,
                digest(1),
                "{wanted}"
            );
        }
    }

    #[test]
    fn normalizes_docker_names() {
        assert_eq!(
            normalize_image_name("busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(normalize_image_name("me/app:1"), "docker.io/me/app:1");
        assert_eq!(
            normalize_image_name("localhost/app"),
            "localhost/app:latest"
        );
        assert_eq!(
            normalize_image_name("127.0.0.1:5000/app:2"),
            "127.0.0.1:5000/app:2"
        );
        assert_eq!(
            normalize_image_name("host:5000/app"),
            "host:5000/app:latest"
        );
    }

    #[test]
    fn archive_selection() {
        let entries: Vec<ArchiveManifestEntry> = serde_json::from_value(json!([
            { "Config": "a.json", "RepoTags": ["app:1", "app:latest"], "Layers": [] },
            { "Config": "b.json", "RepoTags": null, "Layers": [] },
        ]))
        .unwrap();
        let err = select_archive_entry(&entries, &ArchiveSelector::Only, "x.tar").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("app:1") && msg.contains("@1"), "{msg}");
        let pick =
            |s| select_archive_entry(&entries, &ArchiveSelector::from_reference(Some(s)), "x.tar");
        assert_eq!(pick("app").unwrap().config, "a.json");
        assert_eq!(pick("docker.io/library/app:1").unwrap().config, "a.json");
        assert_eq!(pick("@1").unwrap().config, "b.json");
        assert!(matches!(pick("@2"), Err(ImageError::NoSuchImage { .. })));
        assert!(matches!(pick("app:2"), Err(ImageError::NoSuchImage { .. })));
    }

    #[test]
    fn image_from_manifest_checks_layer_count() {
        let config = RawBlob::new(
            media_types::OCI_CONFIG,
            json!({ "architecture": "amd64", "os": "linux",
                    "rootfs": { "type": "layers", "diff_ids": [digest(9)] } })
            .to_string()
            .into_bytes(),
        );
        let manifest = ManifestSpec {
            schema_version: 2,
            media_type: Some(media_types::OCI_MANIFEST.into()),
            config: Descriptor::new(media_types::OCI_CONFIG, config.digest.clone(), 1),
            layers: vec![],
            annotations: None,
        };
        let blob = RawBlob::new(
            media_types::OCI_MANIFEST,
            serde_json::to_vec(&manifest).unwrap(),
        );
        let err = image_from_manifest(
            "r".into(),
            vec![],
            blob.clone(),
            &manifest,
            None,
            config.clone(),
        )
        .unwrap_err();
        assert!(matches!(err, ImageError::Inconsistent { .. }));

        let mut manifest = manifest;
        manifest
            .layers
            .push(Descriptor::new(media_types::OCI_LAYER_GZIP, digest(5), 10));
        let img = image_from_manifest("r".into(), vec![], blob, &manifest, None, config).unwrap();
        assert_eq!(img.diff_ids(), vec![digest(9)]);
        assert_eq!(img.layers[0].blob_digest, digest(5));
        assert_eq!(img.platform, linux_amd64());
    }
}
