//! Whether a deployment may go out: every image its manifest uses must be on every device it
//! targets, as the ledger knows them. Pure; the CLI prints and exits on the answer.

use serde::Serialize;

use crate::deployment::{image_name, ImageName};
use crate::reports::HeldImage;

/// What one device lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Missing {
    /// The device.
    pub device: String,
    /// The references it does not hold, verbatim from the manifest.
    pub images: Vec<String>,
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

/// Per device (in the order given), the manifest's references it does not hold. Empty:
/// the deployment may go out. References that are templates (`$VARIABLE`) or not image
/// names cannot be checked and count as missing everywhere, so a manifest is gated on its
/// final, expanded form.
pub fn gate(references: &[String], devices: &[(String, Vec<HeldImage>)]) -> Vec<Missing> {
    let names: Vec<(String, Option<ImageName>)> = references
        .iter()
        .map(|r| (r.clone(), image_name(r)))
        .collect();
    devices
        .iter()
        .filter_map(|(device, held)| {
            let images: Vec<String> = names
                .iter()
                .filter(|(_, name)| match name {
                    Some(n) => !held.iter().any(|i| holds(i, n)),
                    None => true,
                })
                .map(|(r, _)| r.clone())
                .collect();
            (!images.is_empty()).then(|| Missing {
                device: device.clone(),
                images,
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
        let devices = vec![
            (
                "ready".to_owned(),
                vec![held("edge/app", "v2", "sha256:x"), agent.clone()],
            ),
            (
                "old".to_owned(),
                vec![held("edge/app", "v1", "sha256:y"), agent.clone()],
            ),
            ("empty".to_owned(), vec![]),
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
}
