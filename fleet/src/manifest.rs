//! Manifests of either kind, IoT Edge deployments ([`deployment`](crate::deployment)) and
//! Kubernetes workloads ([`kubernetes`](crate::kubernetes)), behind one entry point.
//!
//! The commands that read a manifest (register a deployment set, plan a rollout, rewrite for
//! release, gate) do not care which runtime it is written for: they need its images, and a copy
//! that never pulls and names the digests the devices hold. So [`images`] and [`rewrite`] decide
//! the kind from the text ([`ManifestKind::detect`]) and answer in the same types for both:
//! [`ModuleImage`], [`Change`], [`Rewritten`]. What to pin an image to is the caller's
//! [`Pin`]; how a pinned reference is spelled, and renamed for a device-local registry
//! ([`with_registry`]), is decided here once for both kinds.

use std::fmt;
use std::str::FromStr;

use crate::deployment::{self, image_name, valid_digest, valid_host, DeploymentError};
use crate::kubernetes::{self, KubernetesError};

/// Which runtime a manifest is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ManifestKind {
    /// An Azure IoT Edge deployment manifest (JSON with comments).
    IotEdge,
    /// Kubernetes workload YAML (k3s and other kubelets on edge nodes).
    Kubernetes,
}

impl ManifestKind {
    /// Decides by content, the file name only breaking a tie: a text that reads as an IoT Edge
    /// deployment is one; else YAML (JSON included) whose documents carry `apiVersion` and
    /// `kind` is Kubernetes; else other JSON is IoT Edge. A text that is neither JSON nor such
    /// YAML goes by its name (`.json`: IoT Edge, `.yaml`/`.yml`: Kubernetes), else by its first
    /// character (`{` or a comment: IoT Edge), so that a broken file gets the error of the reader
    /// its author meant.
    pub fn detect(file: &str, text: &str) -> Self {
        let json = match deployment::images(file, text) {
            Ok(_) => return ManifestKind::IotEdge,
            Err(DeploymentError::NotADeployment { .. }) => true,
            Err(DeploymentError::Parse { .. }) => false,
        };
        if kubernetes::looks_like(text) {
            return ManifestKind::Kubernetes;
        }
        let lower = file.to_ascii_lowercase();
        let start = text.trim_start_matches(['\u{feff}', ' ', '\t', '\r', '\n']);
        if json || lower.ends_with(".json") {
            ManifestKind::IotEdge
        } else if lower.ends_with(".yaml") || lower.ends_with(".yml") {
            ManifestKind::Kubernetes
        } else if start.starts_with('{') || start.starts_with("//") || start.starts_with("/*") {
            ManifestKind::IotEdge
        } else {
            ManifestKind::Kubernetes
        }
    }
}

impl fmt::Display for ManifestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ManifestKind::IotEdge => "IoT Edge deployment manifest",
            ManifestKind::Kubernetes => "Kubernetes workload manifest",
        })
    }
}

/// Why a manifest could not be read or rewritten: the reader's own error, by kind.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// As an IoT Edge deployment manifest.
    #[error(transparent)]
    Deployment(#[from] DeploymentError),
    /// As Kubernetes workload YAML.
    #[error(transparent)]
    Kubernetes(#[from] KubernetesError),
}

/// One image as the manifest writes it: an IoT Edge module's, or a Kubernetes container's.
///
/// Reported as written (not normalised) so that a planner can match it against what a device
/// holds and an operator can find it in the file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ModuleImage {
    /// `"edgeAgent"`, `"edgeHub"` or the module's name; a Kubernetes container's name.
    pub module: String,
    /// Whether this is one of the IoT Edge runtime's own modules
    /// (`systemModules.edgeAgent`/`edgeHub`); always false for Kubernetes.
    pub system: bool,
    /// The image reference, verbatim (the string's value).
    pub image: String,
    /// `imagePullPolicy` as written, if any (a non-string JSON value in its JSON spelling).
    pub pull_policy: Option<String>,
    /// The Kubernetes workload the container belongs to, `KIND/NAME` (e.g. `Deployment/web`);
    /// none for IoT Edge, where the module name says it all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
}

/// What `rewrite` changed, for the report.
///
/// Also carries what it deliberately left alone (a template reference it may not pin), because a
/// release engineer has to know that such a module is not covered by the pinning.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    /// The module or container concerned, named as in [`ModuleImage::module`].
    pub module: String,
    /// One line for a human, e.g. `imagePullPolicy on-create -> never`, `imagePullPolicy set to
    /// Never`, `image edge/app:v2 -> edge/app:v2@sha256:…`, `image ${MODULES.x} not pinned:
    /// template variable`.
    pub what: String,
    /// The Kubernetes workload, as in [`ModuleImage::workload`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.workload {
            Some(workload) => write!(f, "{workload} {}: {}", self.module, self.what),
            None => write!(f, "{}: {}", self.module, self.what),
        }
    }
}

/// The rewritten text and what changed.
///
/// The text is returned rather than written so that the caller decides where it goes (a release
/// artefact, a review diff, stdout) and can show the changes before anything is replaced.
#[derive(Debug, Clone)]
pub struct Rewritten {
    /// The whole manifest, byte-identical to the input outside the changed spots.
    pub text: String,
    /// Each change in image order (as `images` lists them), then within a module or container
    /// the pull policy before the image.
    pub changes: Vec<Change>,
}

/// What an image is pinned to: the digest the device will hold, and optionally the registry
/// host the pinned reference must name (see [`with_registry`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// `sha256:…`; an answer that is not a well-formed digest is reported and not written.
    pub digest: String,
    /// The device-local registry to name in the pinned reference instead of the upstream one.
    pub registry: Option<RegistryHost>,
}

/// A registry host as an image reference names it: `HOST[:PORT]`, DNS labels or an IPv4
/// address or a bracketed IPv6 address, checked when made so that it can be put in front of a
/// repository path as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryHost(String);

/// A `--device-registry` value that is not `HOST[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a registry host: expected HOST[:PORT], e.g. 127.0.0.1:5000 or localhost:5000"
)]
pub struct InvalidRegistryHost(pub String);

impl FromStr for RegistryHost {
    type Err = InvalidRegistryHost;

    fn from_str(host: &str) -> Result<Self, Self::Err> {
        if valid_host(host) {
            Ok(RegistryHost(host.to_string()))
        } else {
            Err(InvalidRegistryHost(host.to_string()))
        }
    }
}

impl RegistryHost {
    /// The host as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RegistryHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `reference` with its registry host replaced by `registry`: `registry.example/edge/app:v2`
/// and `edge/app:v2` both become `HOST/edge/app:v2`, Docker Hub's `nginx` becomes
/// `HOST/library/nginx` (the path the registry stores it under); tag and digest are kept. None
/// when `reference` is not an image reference (a template, say).
///
/// Why: Docker (moby, which IoT Edge's agent drives) records a digest reference only under the
/// registry name it pulled or loaded the image from, so on such a device a pinned reference
/// resolves only when it names the device-local registry; containerd resolves either.
pub fn with_registry(reference: &str, registry: &RegistryHost) -> Option<String> {
    let name = image_name(reference)?;
    let mut renamed = format!("{registry}/{}", name.repository);
    if let Some(tag) = &name.tag {
        renamed.push(':');
        renamed.push_str(tag);
    }
    if let Some(digest) = &name.digest {
        renamed.push('@');
        renamed.push_str(digest);
    }
    Some(renamed)
}

/// Whether `image` is a template reference (`${VAR}`, `$VAR`, `{{ .Values.x }}`) whose value
/// is only known once the template is expanded.
pub(crate) fn is_template(image: &str) -> bool {
    image.contains('$') || image.contains("{{")
}

/// What a rewrite does with one image reference.
pub(crate) enum Pinning {
    /// Leave it as written (no pin known, or already pinned the same way).
    Keep,
    /// Write this reference instead.
    Pinned(String),
    /// Leave it, and say why (a [`Change`] line): a template, not a reference, a bad digest.
    Notice(String),
}

/// Decides how `image` is pinned, the same for both kinds of manifest: `NAME:TAG@DIGEST` (an
/// existing `@digest` replaced, no tag: `NAME@DIGEST`), with the registry host replaced when the
/// pin names one. `pin` is not asked about a template reference nor about one that is not an
/// image reference at all; both are reported on every run, because the manifest still holds them.
pub(crate) fn pinning(image: &str, pin: &dyn Fn(&str) -> Option<Pin>) -> Pinning {
    if is_template(image) {
        return Pinning::Notice(format!("image {image} not pinned: template variable"));
    }
    if image_name(image).is_none() {
        return Pinning::Notice(format!(
            "image {image:?} not pinned: not an image reference"
        ));
    }
    let Some(Pin { digest, registry }) = pin(image) else {
        return Pinning::Keep;
    };
    if !valid_digest(&digest) {
        return Pinning::Notice(format!(
            "image {image} not pinned: {digest:?} is not a digest"
        ));
    }
    let name = image.split_once('@').map_or(image, |(name, _)| name);
    let name = match &registry {
        // A valid reference stays one with a valid host in front of it.
        Some(registry) => with_registry(name, registry).unwrap_or_else(|| name.to_string()),
        None => name.to_string(),
    };
    let pinned = format!("{name}@{digest}");
    if pinned == image {
        Pinning::Keep
    } else {
        Pinning::Pinned(pinned)
    }
}

/// Lists every image of the manifest `text` (named `file` in messages), of either kind, and
/// the kind it was read as.
pub fn images(file: &str, text: &str) -> Result<(ManifestKind, Vec<ModuleImage>), ManifestError> {
    let kind = ManifestKind::detect(file, text);
    let images = match kind {
        ManifestKind::IotEdge => deployment::images(file, text)?,
        ManifestKind::Kubernetes => kubernetes::images(file, text)?,
    };
    Ok((kind, images))
}

/// Rewrites the manifest `text` of either kind so that no device pulls (`imagePullPolicy`
/// `never` for IoT Edge, `Never` for Kubernetes) and, where `pin` knows the digest, every image
/// is pinned; see [`deployment::rewrite`] and [`kubernetes::rewrite`].
pub fn rewrite(
    file: &str,
    text: &str,
    pin: &dyn Fn(&str) -> Option<Pin>,
) -> Result<(ManifestKind, Rewritten), ManifestError> {
    let kind = ManifestKind::detect(file, text);
    let rewritten = match kind {
        ManifestKind::IotEdge => deployment::rewrite(file, text, pin)?,
        ManifestKind::Kubernetes => kubernetes::rewrite(file, text, pin)?,
    };
    Ok((kind, rewritten))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET_MODULES: &str = include_str!("../tests/data/deployments/set-modules.json");
    const K8S: &str = include_str!("../tests/data/kubernetes/multi-document.yaml");
    const POD_JSON: &str = include_str!("../tests/data/kubernetes/pod.json");

    fn host(host: &str) -> RegistryHost {
        host.parse().unwrap()
    }

    #[test]
    fn with_registry_replaces_the_host_and_keeps_the_path() {
        let local = host("127.0.0.1:5000");
        let digest = format!("sha256:{}", "a".repeat(64));
        for (reference, renamed) in [
            ("registry.example/edge/app:v2", "127.0.0.1:5000/edge/app:v2"),
            ("edge/app:v2", "127.0.0.1:5000/edge/app:v2"),
            ("nginx", "127.0.0.1:5000/library/nginx"),
            ("nginx:1.27", "127.0.0.1:5000/library/nginx:1.27"),
            (
                "docker.io/library/nginx:1",
                "127.0.0.1:5000/library/nginx:1",
            ),
            ("localhost:5000/edge/app", "127.0.0.1:5000/edge/app"),
            ("127.0.0.1:5000/edge/app:v2", "127.0.0.1:5000/edge/app:v2"),
            ("[::1]:5000/a/b:c", "127.0.0.1:5000/a/b:c"),
        ] {
            assert_eq!(
                with_registry(reference, &local).as_deref(),
                Some(renamed),
                "{reference}"
            );
        }
        assert_eq!(
            with_registry(
                &format!("myacr.azurecr.io/edge/app:v2@{digest}"),
                &host("localhost")
            ),
            Some(format!("localhost/edge/app:v2@{digest}"))
        );
        assert_eq!(with_registry("${REGISTRY}/edge/app", &local), None);
        assert_eq!(with_registry("Edge/App", &local), None);
    }

    #[test]
    fn registry_hosts_are_checked_when_made() {
        for good in [
            "127.0.0.1:5000",
            "localhost",
            "registry.local:443",
            "[::1]:5000",
        ] {
            assert_eq!(host(good).as_str(), good);
        }
        for bad in ["", "http://x", "a/b", "host:port", "-x", "host:123456"] {
            assert_eq!(
                bad.parse::<RegistryHost>(),
                Err(InvalidRegistryHost(bad.to_string())),
                "{bad}"
            );
        }
    }

    #[test]
    fn pinning_renames_only_what_it_pins() {
        let digest = format!("sha256:{}", "b".repeat(64));
        let pin = |_: &str| {
            Some(Pin {
                digest: digest.clone(),
                registry: Some(host("127.0.0.1:5000")),
            })
        };
        assert!(matches!(
            pinning("registry.example/edge/app:v2@sha256:00", &pin),
            Pinning::Notice(_)
        ));
        match pinning("registry.example/edge/app:v2", &pin) {
            Pinning::Pinned(p) => assert_eq!(p, format!("127.0.0.1:5000/edge/app:v2@{digest}")),
            _ => panic!("not pinned"),
        }
        assert!(matches!(
            pinning(&format!("127.0.0.1:5000/edge/app:v2@{digest}"), &pin),
            Pinning::Keep
        ));
        assert!(matches!(pinning("edge/app:v2", &|_| None), Pinning::Keep));
        assert!(matches!(
            pinning("{{ .Values.image }}", &pin),
            Pinning::Notice(_)
        ));
    }

    #[test]
    fn the_kind_is_decided_by_content() {
        let kind = ManifestKind::detect;
        assert_eq!(kind("deployment.json", SET_MODULES), ManifestKind::IotEdge);
        assert_eq!(kind("no-extension", SET_MODULES), ManifestKind::IotEdge);
        assert_eq!(kind("misnamed.yaml", SET_MODULES), ManifestKind::IotEdge);
        assert_eq!(kind("app.yaml", K8S), ManifestKind::Kubernetes);
        assert_eq!(kind("misnamed.json", K8S), ManifestKind::Kubernetes);
        assert_eq!(kind("pod.json", POD_JSON), ManifestKind::Kubernetes);
        // Neither: the name, then the first character, choose whose error it gets.
        assert_eq!(kind("x.json", "{\"a\": 1}"), ManifestKind::IotEdge);
        assert_eq!(kind("x.yaml", "{broken"), ManifestKind::Kubernetes);
        assert_eq!(kind("x", "// comment\n{broken"), ManifestKind::IotEdge);
        assert_eq!(kind("x", "kind: [broken"), ManifestKind::Kubernetes);
    }

    #[test]
    fn images_and_rewrite_dispatch_on_the_kind() {
        let (kind, listed) = images("set-modules.json", SET_MODULES).unwrap();
        assert_eq!(kind, ManifestKind::IotEdge);
        assert!(listed.iter().all(|image| image.workload.is_none()));
        let (kind, listed) = images("k8s", K8S).unwrap();
        assert_eq!(kind, ManifestKind::Kubernetes);
        assert_eq!(listed[0].workload.as_deref(), Some("Deployment/gateway"));
        let (_, out) = rewrite("k8s", K8S, &|_| None).unwrap();
        assert_eq!(out.text.matches("imagePullPolicy: Never").count(), 4);
        assert!(matches!(
            images("svc.yaml", "apiVersion: v1\nkind: Service\n"),
            Err(ManifestError::Kubernetes(
                KubernetesError::NoWorkload { .. }
            ))
        ));
        assert!(matches!(
            images("x.json", "{\"a\": 1}"),
            Err(ManifestError::Deployment(
                DeploymentError::NotADeployment { .. }
            ))
        ));
        // The JSON of existing reports is unchanged for IoT Edge.
        let change = Change {
            module: "m".into(),
            what: "w".into(),
            workload: None,
        };
        assert_eq!(
            serde_json::to_string(&change).unwrap(),
            r#"{"module":"m","what":"w"}"#
        );
    }
}
