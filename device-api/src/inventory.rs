//! The device's inventory (`GET /sideload/v1/inventory`, `inventory.json` on a stick): what
//! it holds, in its registry and, with `[engine]`, under which names its container engine
//! resolves them. Written in field order ([`crate::answers::ordered_body`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the inventory document this build writes and reads.
pub const INVENTORY_FORMAT: u32 = 1;

/// A device's inventory.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Inventory {
    /// Document format ([`INVENTORY_FORMAT`]).
    pub format: u32,
    /// The device's id.
    pub device: String,
    /// When the device made it (Unix seconds): a newer inventory replaces an older one.
    pub generated_at: u64,
    /// Every image in the device's registry.
    pub images: Vec<HeldImage>,
    /// Highest applied anti-rollback sequence per repository.
    #[serde(default)]
    pub sequences: BTreeMap<String, u64>,
    /// Free bytes in the plugin's data directory.
    #[serde(default)]
    pub free_bytes: u64,
    /// What the device's container engine resolves, when the plugin feeds one (`[engine]`).
    /// Absent: the device has no engine sink, and its registry is what counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineInventory>,
}

/// One image the device's registry holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct HeldImage {
    /// Repository in the device's registry.
    pub repository: String,
    /// Tags pointing at this manifest.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Manifest digest as the device serves it.
    pub manifest_digest: String,
    /// Manifest media type.
    #[serde(default)]
    pub media_type: String,
    /// Config digest (the image ID).
    pub config_digest: String,
    /// Uncompressed layer digests, bottom first.
    pub diff_ids: Vec<String>,
    /// Layer blob digests as stored, bottom first (may be compressed).
    #[serde(default)]
    pub layer_blobs: Vec<String>,
    /// Layer blob sizes as stored.
    #[serde(default)]
    pub layer_sizes: Vec<u64>,
    /// Layer media types as stored.
    #[serde(default)]
    pub layer_media_types: Vec<String>,
    /// `os/architecture[/variant]`.
    #[serde(default)]
    pub platform: String,
}

/// The container engine's images and names: what the edge agent will look its images up in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EngineInventory {
    /// `docker` (moby, podman) or `containerd`.
    pub kind: String,
    /// Every image with every reference it resolves under, as the engine spells them
    /// (moby: `edge/app:v2`; containerd: `docker.io/edge/app:v2`).
    #[serde(default)]
    pub images: Vec<EngineHeld>,
    /// Why the engine could not be asked, when it could not: then nothing counts as resolving.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One image in a device's engine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct EngineHeld {
    /// The image ID (`sha256:` + config digest).
    pub id: String,
    /// Its tag and digest references.
    #[serde(default)]
    pub references: Vec<String>,
}

/// Why a document is not an inventory this build can use.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// Not JSON of the inventory's shape.
    #[error("not a device inventory (GET /sideload/v1/inventory): {0}")]
    Shape(#[from] serde_json::Error),
    /// Another format version.
    #[error("inventory format {0} is not supported (this build reads format {INVENTORY_FORMAT})")]
    Format(u32),
    /// No device id.
    #[error("the inventory names no device")]
    NoDevice,
}

impl Inventory {
    /// Reads an inventory document, checking its format and device id.
    pub fn parse(bytes: &[u8]) -> Result<Inventory, InventoryError> {
        let inv: Inventory = serde_json::from_slice(bytes)?;
        if inv.format != INVENTORY_FORMAT {
            return Err(InventoryError::Format(inv.format));
        }
        if inv.device.is_empty() {
            return Err(InventoryError::NoDevice);
        }
        Ok(inv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventories_are_checked() {
        assert!(matches!(
            Inventory::parse(br#"{"format":2,"device":"d","generated_at":1,"images":[]}"#),
            Err(InventoryError::Format(2))
        ));
        assert!(matches!(
            Inventory::parse(br#"{"format":1,"device":"","generated_at":1,"images":[]}"#),
            Err(InventoryError::NoDevice)
        ));
        let inv = Inventory::parse(
            br#"{"format":1,"device":"d","generated_at":1,"images":[{"repository":"edge/app","tags":["v1"],"manifest_digest":"sha256:m","config_digest":"sha256:c","diff_ids":["sha256:l"],"layer_blobs":["sha256:b"]}],"sequences":{"edge/app":4},"free_bytes":9}"#,
        )
        .unwrap();
        assert_eq!(inv.images[0].layer_blobs, ["sha256:b"]);
        assert_eq!(inv.sequences["edge/app"], 4);
    }
}
