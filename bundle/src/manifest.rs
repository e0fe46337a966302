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

/// How a statement's embedded manifest contradicts the rest of the statement.
#[derive(Debug, thiserror::Error)]
pub enum ManifestInconsistency {
    /// The template's holes cannot be filled.
    #[error("embedded manifest template: {0}")]
    Template(template::FillError),
    /// The manifest does not hash to the statement's manifest digest.
    #[error("embedded manifest hashes to {actual}, the statement says {stated}")]
    Digest {
        /// What it hashes to.
        actual: Digest,
        /// What the statement says.
        stated: Digest,
    },
    /// The manifest is not an image manifest.
    #[error("embedded manifest is not an image manifest: {0}")]
    NotAManifest(serde_json::Error),
    /// The manifest names another config.
    #[error("manifest names config {named}, the statement says {stated}")]
    Config {
        /// The config the manifest names.
        named: Digest,
        /// The statement's config.
        stated: Digest,
    },
    /// Layer counts differ.
    #[error("manifest has {manifest} layers, the statement {statement}")]
    LayerCount {
        /// Layers in the manifest.
        manifest: usize,
        /// Layers in the statement.
        statement: usize,
    },
    /// A layer descriptor is not the blob the statement's layer stores.
    #[error("manifest layer {index} is {named} ({named_size} bytes), the statement's layer stores {stored} ({stored_size} bytes)")]
    Layer {
        /// The layer's index.
        index: usize,
        /// The manifest's blob digest.
        named: Digest,
        /// The manifest's blob size.
        named_size: u64,
        /// The statement's blob digest.
        stored: Digest,
        /// The statement's blob size.
        stored_size: u64,
    },
}

/// Checks that a statement's embedded manifest is consistent with the rest of the statement:
/// its digest, its config, and one layer descriptor per target layer with the blob digest and
/// size the layer's storage gives. Returns the first inconsistency.
///
/// A template (format version 9) is checked with a stand-in digest in each hole: each layer
/// whose blob the device derives must be described by its own holes. Its digest can only be
/// checked once the device has filled it (`apply`).
pub fn check_statement_manifest(target: &Target) -> Result<(), ManifestInconsistency> {
    let text = if target.has_manifest_template() {
        template::fill(&target.manifest, |hole| {
            Some(match hole {
                Hole::Digest(i) => stand_in(i).to_string(),
                Hole::Size(_) => "0".into(),
            })
        })
        .map_err(ManifestInconsistency::Template)?
    } else {
        let actual = Digest::of_bytes(target.manifest.as_bytes());
        if actual != target.manifest_digest {
            return Err(ManifestInconsistency::Digest {
                actual,
                stated: target.manifest_digest.clone(),
            });
        }
        target.manifest.clone()
    };
    let manifest: ManifestSpec =
        serde_json::from_str(&text).map_err(ManifestInconsistency::NotAManifest)?;
    if manifest.config.digest != target.config_digest {
        return Err(ManifestInconsistency::Config {
            named: manifest.config.digest,
            stated: target.config_digest.clone(),
        });
    }
    if manifest.layers.len() != target.layers.len() {
        return Err(ManifestInconsistency::LayerCount {
            manifest: manifest.layers.len(),
            statement: target.layers.len(),
        });
    }
    for (index, (desc, layer)) in manifest.layers.iter().zip(&target.layers).enumerate() {
        let (stored, stored_size) = layer.storage.blob(layer).unwrap_or((stand_in(index), 0));
        if desc.digest != stored || desc.size != stored_size {
            return Err(ManifestInconsistency::Layer {
                index,
                named: desc.digest.clone(),
                named_size: desc.size,
                stored,
                stored_size,
            });
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
