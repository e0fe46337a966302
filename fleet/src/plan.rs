//! Which bundle each device needs: a pure decision over what the ledger knows.
//!
//! A device needs nothing for a target image it already holds (same config and layers,
//! tagged as the target). Otherwise it gets a delta against the images it holds that can
//! help: those sharing a layer with the target and those of the target's repository (its
//! earlier versions). Devices whose helpful images are the same get the same bundle, so each
//! distinct bundle is built once however many devices take it.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::reports::HeldImage;

/// An image to roll out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// Where the builder reads it (`docker://HOST/REPO:TAG`, `oci:DIR:TAG`, …).
    pub source: String,
    /// Repository on the device.
    pub repository: String,
    /// Tags on the device.
    pub tags: Vec<String>,
    /// The source's manifest digest.
    pub manifest_digest: String,
    /// Config digest (the image ID).
    pub config_digest: String,
    /// Uncompressed layer digests, bottom first.
    pub diff_ids: Vec<String>,
    /// Compressed size of each layer blob, bottom first (what a pull or a saved image moves).
    pub layer_sizes: Vec<u64>,
    /// Size of the config blob.
    pub config_size: u64,
}

impl Target {
    /// Bytes of the whole image as a pull moves it: every layer blob and the config.
    pub fn whole_bytes(&self) -> u64 {
        self.layer_sizes.iter().sum::<u64>() + self.config_size
    }

    /// Bytes of sending only the layers `held` lacks (plain layer transfer) and the config.
    pub fn missing_layer_bytes(&self, held: &BTreeSet<&str>) -> u64 {
        self.diff_ids
            .iter()
            .zip(&self.layer_sizes)
            .filter(|(d, _)| !held.contains(d.as_str()))
            .map(|(_, s)| s)
            .sum::<u64>()
            + self.config_size
    }

    /// Whether `image` is this target, tagged as it should be.
    pub fn is_held_as(&self, image: &HeldImage) -> bool {
        image.repository == self.repository
            && image.config_digest == self.config_digest
            && image.diff_ids == self.diff_ids
            && self.tags.iter().all(|t| image.tags.contains(t))
    }
}

/// A device as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceView {
    /// Its id.
    pub device_id: String,
    /// How bundles reach it.
    pub route: String,
    /// What it holds.
    pub images: Vec<HeldImage>,
}

/// One bundle to build: a target against a set of bases, for the devices that hold them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedBundle {
    /// Index into the plan's targets.
    pub target: usize,
    /// The base images it is built against (empty: a whole-image bundle).
    pub bases: Vec<HeldImage>,
    /// The devices that take it.
    pub devices: Vec<String>,
    /// What plain layer transfer would send one of these devices.
    pub missing_layer_bytes: u64,
}

/// What one device needs for one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "need")]
pub enum Need {
    /// It holds the image already.
    Has,
    /// It needs this bundle (an index into the plan's bundles).
    Bundle {
        /// Index into [`Plan::bundles`].
        bundle: usize,
    },
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The targets, as given.
    pub targets: Vec<Target>,
    /// Distinct bundles, each built once.
    pub bundles: Vec<PlannedBundle>,
    /// Per device (in the order given), per target: what it needs.
    pub devices: Vec<(String, Vec<Need>)>,
}

impl Plan {
    /// Bundles that `device` takes, in target order.
    pub fn bundles_for(&self, device: &str) -> Vec<usize> {
        self.devices
            .iter()
            .filter(|(d, _)| d == device)
            .flat_map(|(_, needs)| needs)
            .filter_map(|n| match n {
                Need::Bundle { bundle } => Some(*bundle),
                Need::Has => None,
            })
            .collect()
    }
}

/// Decides, per device and target, what it needs, and which distinct bundles that makes.
pub fn plan(targets: &[Target], devices: &[DeviceView]) -> Plan {
    let mut keys: BTreeMap<(usize, Vec<String>), usize> = BTreeMap::new();
    let mut bundles: Vec<PlannedBundle> = Vec::new();
    let mut per_device = Vec::new();
    for device in devices {
        let held_layers: BTreeSet<&str> = device
            .images
            .iter()
            .flat_map(|i| i.diff_ids.iter().map(String::as_str))
            .collect();
        let mut needs = Vec::new();
        for (t, target) in targets.iter().enumerate() {
            if device.images.iter().any(|i| target.is_held_as(i)) {
                needs.push(Need::Has);
                continue;
            }
            let mut bases: Vec<HeldImage> = device
                .images
                .iter()
                .filter(|i| {
                    i.repository == target.repository
                        || i.diff_ids.iter().any(|d| target.diff_ids.contains(d))
                })
                .cloned()
                .collect();
            bases.sort_by(|a, b| a.manifest_digest.cmp(&b.manifest_digest));
            bases.dedup_by(|a, b| a.manifest_digest == b.manifest_digest);
            let key = (t, bases.iter().map(|b| b.manifest_digest.clone()).collect());
            let index = *keys.entry(key).or_insert_with(|| {
                bundles.push(PlannedBundle {
                    target: t,
                    bases,
                    devices: Vec::new(),
                    missing_layer_bytes: target.missing_layer_bytes(&held_layers),
                });
                bundles.len() - 1
            });
            let b = &mut bundles[index];
            b.devices.push(device.device_id.clone());
            // Devices sharing a bundle may hold different extra layers: keep the largest.
            b.missing_layer_bytes = b
                .missing_layer_bytes
                .max(target.missing_layer_bytes(&held_layers));
            needs.push(Need::Bundle { bundle: index });
        }
        per_device.push((device.device_id.clone(), needs));
    }
    Plan {
        targets: targets.to_vec(),
        bundles,
        devices: per_device,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(repo: &str, tag: &str, config: &str, layers: &[&str]) -> HeldImage {
        HeldImage {
            repository: repo.into(),
            tags: vec![tag.into()],
            manifest_digest: format!("sha256:m-{config}"),
            config_digest: format!("sha256:{config}"),
            diff_ids: layers.iter().map(|l| format!("sha256:{l}")).collect(),
        }
    }

    fn target() -> Target {
        Target {
            source: "docker://ci/edge/app:v2".into(),
            repository: "edge/app".into(),
            tags: vec!["v2".into()],
            manifest_digest: "sha256:m-c2".into(),
            config_digest: "sha256:c2".into(),
            diff_ids: vec!["sha256:base".into(), "sha256:app2".into()],
            layer_sizes: vec![1000, 300],
            config_size: 10,
        }
    }

    fn device(id: &str, images: Vec<HeldImage>) -> DeviceView {
        DeviceView {
            device_id: id.into(),
            route: "usb".into(),
            images,
        }
    }

    #[test]
    fn devices_with_the_same_bases_share_one_bundle() {
        let v1 = image("edge/app", "v1", "c1", &["base", "app1"]);
        let v2 = image("edge/app", "v2", "c2", &["base", "app2"]);
        let other = image("edge/other", "1", "co", &["base", "other"]);
        let unrelated = image("tools/x", "1", "cx", &["x"]);
        let devices = vec![
            device("a", vec![v1.clone()]),
            device("b", vec![v1.clone(), unrelated.clone()]),
            device("c", vec![v2.clone()]),
            device("d", vec![]),
            device("e", vec![other.clone()]),
            device("f", vec![]),
        ];
        let p = plan(&[target()], &devices);
        // a and b share (the unrelated image is no base); c has it; d and f share the whole image.
        assert_eq!(p.bundles.len(), 3, "{p:#?}");
        assert_eq!(p.bundles_for("a"), p.bundles_for("b"));
        assert!(p.bundles_for("c").is_empty());
        assert_eq!(p.bundles_for("d"), p.bundles_for("f"));
        let whole = &p.bundles[p.bundles_for("d")[0]];
        assert!(whole.bases.is_empty());
        assert_eq!(whole.missing_layer_bytes, 1310);
        let from_other = &p.bundles[p.bundles_for("e")[0]];
        assert_eq!(from_other.bases, vec![other]);
        assert_eq!(from_other.missing_layer_bytes, 310);
    }

    #[test]
    fn a_held_image_without_the_tag_still_needs_a_bundle() {
        let mut v2 = image("edge/app", "v2", "c2", &["base", "app2"]);
        v2.tags = vec!["old".into()];
        let p = plan(&[target()], &[device("a", vec![v2])]);
        assert_eq!(p.bundles.len(), 1);
        assert_eq!(p.bundles[0].missing_layer_bytes, 10);
    }
}
