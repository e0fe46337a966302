//! The manifest a device produces, and the checks that what it wrote matches it.

use sideload_signing::template::{self, Hole};
use sideload_signing::{Digest, Target};

use crate::image::spec::media_types::{OCI_CONFIG, OCI_MANIFEST};
use crate::image::spec::{ConfigSpec, Descriptor, ManifestSpec};

/// The OCI manifest for an image whose layers are stored as given. Deterministic bytes: the
/// statement carries them and the device must reproduce their digest.
pub fn build_manifest(
    config_digest: &Digest,
    config_size: u64,
    layers: Vec<Descriptor>,
) -> Vec<u8> {
    let manifest = ManifestSpec {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.to_owned()),
        config: Descriptor::new(OCI_CONFIG, config_digest.clone(), config_size),
        layers,
        annotations: None,
    };
    serde_json::to_vec(&manifest).expect("manifest serializes")
}

/// Checks that a statement's embedded manifest is consistent with the rest of the statement:
/// its digest, its config, and one layer descriptor per target layer with the blob digest and
/// size the layer's storage gives. Returns a description of the first inconsistency.
///
/// A template (format version 9) is checked with a stand-in digest in each hole: each layer
/// whose blob the device derives must be described by its own holes. Its digest can only be
/// checked once the device has filled it (`apply`).
pub fn check_statement_manifest(target: &Target) -> Result<(), String> {
    let text = if target.has_manifest_template() {
        template::fill(&target.manifest, |hole| {
            Some(match hole {
                Hole::Digest(i) => stand_in(i).to_string(),
                Hole::Size(_) => "0".into(),
            })
        })
        .map_err(|e| format!("embedded manifest template: {e}"))?
    } else {
        let actual = Digest::of_bytes(target.manifest.as_bytes());
        if actual != target.manifest_digest {
            return Err(format!(
                "embedded manifest hashes to {actual}, the statement says {}",
                target.manifest_digest
            ));
        }
        target.manifest.clone()
    };
    let manifest: ManifestSpec = serde_json::from_str(&text)
        .map_err(|e| format!("embedded manifest is not an image manifest: {e}"))?;
    if manifest.config.digest != target.config_digest {
        return Err(format!(
            "manifest names config {}, the statement says {}",
            manifest.config.digest, target.config_digest
        ));
    }
    if manifest.layers.len() != target.layers.len() {
        return Err(format!(
            "manifest has {} layers, the statement {}",
            manifest.layers.len(),
            target.layers.len()
        ));
    }
    for (i, (desc, layer)) in manifest.layers.iter().zip(&target.layers).enumerate() {
        let (digest, size) = layer.storage.blob(layer).unwrap_or((stand_in(i), 0));
        if desc.digest != digest || desc.size != size {
            return Err(format!(
                "manifest layer {i} is {} ({} bytes), the statement's layer stores {digest} ({size} bytes)",
                desc.digest, desc.size
            ));
        }
    }
    Ok(())
}

/// What a template's digest hole of layer `index` holds while its structure is checked.
fn stand_in(index: usize) -> Digest {
    Digest::of_bytes(
        format!("sideload: the blob of layer {index}, derived on the device").as_bytes(),
    )
}

/// Reads `rootfs.diff_ids` from config bytes.
pub fn config_diff_ids(config: &[u8]) -> Result<Vec<Digest>, String> {
    serde_json::from_slice::<ConfigSpec>(config)
        .map(|c| c.rootfs.diff_ids)
        .map_err(|e| format!("image config has no valid rootfs.diff_ids: {e}"))
}
