//! Whether a deployment may go out: every image its manifest uses must be there on every
//! device it targets, as the ledger knows them. Pure; the CLI prints and exits on the answer.
//!
//! "There" means what the edge agent will find. A device whose plugin feeds a container engine
//! reports what the engine resolves (its inventory's `engine`), and the agent looks the image
//! up there by the exact reference its manifest writes, so each reference must be among the
//! engine's names (both sides normalised as Docker and containerd do: `edge/app:v2` is
//! `docker.io/edge/app:v2`, a reference with tag and digest is looked up by digest). moby
//! holds a digest reference only under the registry it pulled from, so an upstream
//! `registry.example/edge/app@sha256:…` can be missing there while the tag form resolves: the
//! gate says so instead of hoping. A device without an engine sink is checked against its
//! registry: same repository, and the digest when the reference pins one, else the tag.

use serde::Serialize;

use crate::deployment::{image_name, ImageName};
use crate::reports::{EngineInventory, HeldImage};

/// What one device lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Missing {
    /// The device.
    pub device: String,
    /// The references it does not hold, verbatim from the manifest.
    pub images: Vec<String>,
    /// Where they were looked for: `"docker engine"`, `"containerd engine"` or `"registry"`.
    pub checked: String,
    /// Why the engine could not be asked, when that is why nothing resolves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_error: Option<String>,
}

/// What one device holds, as far as a deployment is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Holdings {
    /// The images in its registry.
    pub images: Vec<HeldImage>,
    /// What its engine resolves, when its plugin feeds one.
    pub engine: Option<EngineInventory>,
}

/// Whether `image` is what the manifest's `name` refers to: the same repository, and the
/// digest when the reference pins one, else the tag (`latest` when none).
pub fn holds(image: &HeldImage, name: &ImageName) -> bool {
    if image.repository != name.repository {
        return false;
    }
    match (&name.digest, &name.tag) {
        (Some(d), _) => &image.manifest_digest == d,
        (None, Some(t)) => image.tags.contains(t),
        (None, None) => image.tags.iter().any(|t| t == "latest"),
    }
}

/// `reference` as Docker and containerd resolve it: `HOST/PATH@DIGEST` when it pins a digest
/// (a tag beside it is ignored), else `HOST/PATH:TAG` (`latest` when none), with Docker Hub's
/// implicit `docker.io/` and `library/` written out. None for a template or a malformed one.
pub fn normalize(reference: &str) -> Option<String> {
    let name = image_name(reference)?;
    let without_digest = reference.split('@').next().unwrap_or(reference);
    let first = without_digest.split('/').next().unwrap_or("");
    let has_host = without_digest.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost");
    let host = match has_host {
        true if first != "index.docker.io" => first,
        _ => "docker.io",
    };
    let repository = &name.repository;
    Some(match (&name.digest, &name.tag) {
        (Some(digest), _) => format!("{host}/{repository}@{digest}"),
        (None, Some(tag)) => format!("{host}/{repository}:{tag}"),
        (None, None) => format!("{host}/{repository}:latest"),
    })
}

/// Whether the device will give the agent `reference`: its engine resolves it, or, without
/// an engine sink, its registry holds it.
pub fn resolves(holdings: &Holdings, reference: &str) -> bool {
    match &holdings.engine {
        Some(engine) => {
            let Some(wanted) = normalize(reference) else {
                return false;
            };
            engine.error.is_none()
                && engine.images.iter().any(|image| {
                    image
                        .references
                        .iter()
                        .any(|r| normalize(r).as_deref() == Some(wanted.as_str()))
                })
        }
        None => image_name(reference)
            .is_some_and(|name| holdings.images.iter().any(|i| holds(i, &name))),
    }
}

/// Per device (in the order given), the manifest's references it does not resolve. Empty:
/// the deployment may go out. References that are templates (`$VARIABLE`) or not image
/// names cannot be checked and count as missing everywhere, so a manifest is gated on its
/// final, expanded form.
pub fn gate(references: &[String], devices: &[(String, Holdings)]) -> Vec<Missing> {
    devices
        .iter()
        .filter_map(|(device, holdings)| {
            let images: Vec<String> = references
                .iter()
                .filter(|r| !resolves(holdings, r))
                .cloned()
                .collect();
            (!images.is_empty()).then(|| Missing {
                device: device.clone(),
                images,
                checked: match &holdings.engine {
                    Some(engine) => format!("{} engine", engine.kind),
                    None => "registry".to_owned(),
                },
                engine_error: holdings.engine.as_ref().and_then(|e| e.error.clone()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(repo: &str, tag: &str, digest: &str) -> HeldImage {
        HeldImage {
            repository: repo.into(),
            tags: vec![tag.into()],
            manifest_digest: digest.into(),
            config_digest: "sha256:c".into(),
            diff_ids: vec![],
        }
    }

    #[test]
    fn a_deployment_waits_for_every_device_and_image() {
        let refs = vec![
            "myacr.azurecr.io/edge/app:v2".to_owned(),
            format!("edge/agent@sha256:{}", "a".repeat(64)),
        ];
        let agent = held("edge/agent", "1", &format!("sha256:{}", "a".repeat(64)));
        let registry = |images: Vec<HeldImage>| Holdings {
            images,
            engine: None,
        };
        let devices = vec![
            (
                "ready".to_owned(),
                registry(vec![held("edge/app", "v2", "sha256:x"), agent.clone()]),
            ),
            (
                "old".to_owned(),
                registry(vec![held("edge/app", "v1", "sha256:y"), agent.clone()]),
            ),
            ("empty".to_owned(), registry(vec![])),
        ];
        let missing = gate(&refs, &devices);
        assert_eq!(missing.len(), 2);
        assert_eq!(missing[0].device, "old");
        assert_eq!(missing[0].images, vec![refs[0].clone()]);
        assert_eq!(missing[1].images, refs);
        assert!(gate(&refs, &devices[..1]).is_empty());
        // A template cannot be checked: it holds the deployment back.
        let t = gate(&["${MODULES.app}".to_owned()], &devices[..1]);
        assert_eq!(t[0].images, vec!["${MODULES.app}".to_owned()]);
    }

    fn engine(kind: &str, references: &[&str]) -> Option<EngineInventory> {
        Some(EngineInventory {
            kind: kind.into(),
            images: vec![crate::reports::EngineHeld {
                id: "sha256:c".into(),
                references: references.iter().map(|r| r.to_string()).collect(),
            }],
            error: None,
        })
    }

    #[test]
    fn references_are_normalised_as_the_engines_do() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(normalize("edge/app:v2").unwrap(), "docker.io/edge/app:v2");
        assert_eq!(
            normalize("nginx").unwrap(),
            "docker.io/library/nginx:latest"
        );
        assert_eq!(
            normalize("index.docker.io/library/nginx:1").unwrap(),
            "docker.io/library/nginx:1"
        );
        assert_eq!(
            normalize(&format!("registry.example/edge/app:v2@{d}")).unwrap(),
            format!("registry.example/edge/app@{d}")
        );
        assert_eq!(
            normalize("127.0.0.1:5000/edge/app:v2").unwrap(),
            "127.0.0.1:5000/edge/app:v2"
        );
        assert_eq!(normalize("localhost/app").unwrap(), "localhost/app:latest");
        assert!(normalize("${MODULES.app}").is_none());
    }

    #[test]
    fn a_device_with_an_engine_is_gated_on_what_the_engine_resolves() {
        let d = format!("sha256:{}", "a".repeat(64));
        // The registry holds v2 by this digest, but moby has it only under the local name.
        let holdings = Holdings {
            images: vec![held("edge/app", "v2", &d)],
            engine: engine(
                "docker",
                &[
                    "edge/app:v2",
                    "registry.example/edge/app:v2",
                    &format!("127.0.0.1:5000/edge/app@{d}"),
                ],
            ),
        };
        let pinned_local = format!("127.0.0.1:5000/edge/app:v2@{d}");
        let pinned_upstream = format!("registry.example/edge/app:v2@{d}");
        assert!(resolves(&holdings, "registry.example/edge/app:v2"));
        assert!(resolves(&holdings, "docker.io/edge/app:v2"));
        assert!(resolves(&holdings, &pinned_local));
        assert!(!resolves(&holdings, &pinned_upstream));
        let missing = gate(
            &[pinned_upstream.clone(), pinned_local],
            &[("ship".into(), holdings.clone())],
        );
        assert_eq!(missing[0].images, vec![pinned_upstream.clone()]);
        assert_eq!(missing[0].checked, "docker engine");
        // Taken out of the engine: held back though the registry still has it.
        let emptied = Holdings {
            engine: engine("docker", &[]),
            ..holdings.clone()
        };
        assert!(!resolves(&emptied, "registry.example/edge/app:v2"));
        // An engine that could not be asked resolves nothing, and the gate says why.
        let broken = Holdings {
            engine: Some(EngineInventory {
                error: Some("cannot connect".into()),
                ..holdings.engine.clone().unwrap()
            }),
            ..holdings
        };
        let missing = gate(&["edge/app:v2".into()], &[("ship".into(), broken)]);
        assert_eq!(missing[0].engine_error.as_deref(), Some("cannot connect"));
    }
}
