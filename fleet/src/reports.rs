//! What devices tell the cloud, in the forms it arrives: the registry plugin's inventory and
//! bundle list (from its status API or a file), and the USB loader's receipts (a folder a
//! stick brought back). Parsing only; [`crate::Ledger`] decides what they change.
//!
//! The documents are read through the device API's types (`sideload-device-api`: the
//! inventory, the bundle list with its strict bundle states, the receipt), then taken into the
//! ledger's own records ([`Inventory`], [`HeldImage`], [`BundleReport`]).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::LedgerError;

use sideload_device_api::{BundleList, BundleState, Receipt, ReceiptState};
pub use sideload_device_api::{EngineHeld, EngineInventory, INVENTORY_FORMAT};

/// A device's inventory as the ledger keeps it (from `GET /sideload/v1/inventory`, or
/// `inventory.json` on a stick: [`sideload_device_api::Inventory`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Inventory {
    /// Document format.
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

/// One image a device holds, as the ledger keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct HeldImage {
    /// Repository in the device's registry.
    pub repository: String,
    /// Tags pointing at it.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Manifest digest as the device serves it.
    pub manifest_digest: String,
    /// Config digest (the image ID).
    pub config_digest: String,
    /// Uncompressed layer digests, bottom first.
    pub diff_ids: Vec<String>,
}

/// What happened to one bundle on one device, from whichever report said so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BundleReport {
    /// The device.
    pub device: String,
    /// Statement digest, when the device could read the bundle's head.
    pub bundle_id: Option<String>,
    /// The bundle's file name as delivered.
    pub bundle_name: String,
    /// Target repository, when known.
    pub repository: Option<String>,
    /// The state it reports.
    pub state: TransferState,
    /// Why (refusals, failures).
    pub reason: Option<String>,
    /// What to do about it.
    pub advice: Option<String>,
    /// When the device said so (Unix seconds): an older report never overwrites a newer one.
    pub at: u64,
}

/// Where a bundle stands on its way to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum TransferState {
    /// Written to the device's outbox; nothing heard back yet.
    InTransit,
    /// The device has it and has not finished applying it.
    Received,
    /// The image is on the device.
    Applied,
    /// The device tried and failed (the reason says why; may be retried).
    Failed,
    /// The device refused it (signature, expiry, rollback): it will not apply as it is.
    Refused,
}

impl TransferState {
    /// As stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            TransferState::InTransit => "in_transit",
            TransferState::Received => "received",
            TransferState::Applied => "applied",
            TransferState::Failed => "failed",
            TransferState::Refused => "refused",
        }
    }

    /// The inverse of [`as_str`](Self::as_str).
    pub fn parse(text: &str) -> Option<TransferState> {
        Some(match text {
            "in_transit" => TransferState::InTransit,
            "received" => TransferState::Received,
            "applied" => TransferState::Applied,
            "failed" => TransferState::Failed,
            "refused" => TransferState::Refused,
            _ => return None,
        })
    }

    /// How far along: of two reports of the same moment, the further one stands (applied
    /// over refused over failed over received over in transit).
    pub fn rank(self) -> u8 {
        match self {
            TransferState::InTransit => 0,
            TransferState::Received => 1,
            TransferState::Failed => 2,
            TransferState::Refused => 3,
            TransferState::Applied => 4,
        }
    }
}

impl From<sideload_device_api::Inventory> for Inventory {
    fn from(inv: sideload_device_api::Inventory) -> Inventory {
        Inventory {
            format: inv.format,
            device: inv.device,
            generated_at: inv.generated_at,
            images: inv.images.into_iter().map(HeldImage::from).collect(),
            sequences: inv.sequences,
            free_bytes: inv.free_bytes,
            engine: inv.engine,
        }
    }
}

impl From<sideload_device_api::HeldImage> for HeldImage {
    fn from(image: sideload_device_api::HeldImage) -> HeldImage {
        HeldImage {
            repository: image.repository,
            tags: image.tags,
            manifest_digest: image.manifest_digest,
            config_digest: image.config_digest,
            diff_ids: image.diff_ids,
        }
    }
}

impl TransferState {
    /// Where a bundle stands from the device's own state of it; `None` for a state that says
    /// nothing new to the ledger (`waiting`: on the device, neither applied nor failed).
    pub fn from_device(state: BundleState) -> Option<TransferState> {
        match state {
            BundleState::Queued | BundleState::Applying => Some(TransferState::Received),
            BundleState::Applied => Some(TransferState::Applied),
            BundleState::Failed => Some(TransferState::Failed),
            BundleState::Refused => Some(TransferState::Refused),
            BundleState::Waiting => None,
        }
    }

    /// Where a bundle stands from a USB receipt; `None` for one that says nothing about the
    /// bundle's fate (`skipped`: the loader did not hand it over; `waiting`).
    pub fn from_receipt(state: ReceiptState) -> Option<TransferState> {
        match state {
            ReceiptState::Applied | ReceiptState::AlreadyApplied => Some(TransferState::Applied),
            ReceiptState::Failed => Some(TransferState::Failed),
            ReceiptState::Refused => Some(TransferState::Refused),
            ReceiptState::Received | ReceiptState::Applying => Some(TransferState::Received),
            ReceiptState::Skipped | ReceiptState::Waiting => None,
        }
    }
}

/// Reads an inventory document.
pub fn parse_inventory(origin: &str, bytes: &[u8]) -> Result<Inventory, LedgerError> {
    sideload_device_api::Inventory::parse(bytes)
        .map(Inventory::from)
        .map_err(|e| LedgerError::BadReport {
            origin: origin.to_owned(),
            message: e.to_string(),
        })
}

/// Reads one USB receipt of `device`. `Ok(None)`: a receipt that says nothing about the
/// bundle's fate (`skipped`: the loader did not hand it over).
pub fn parse_receipt(
    origin: &str,
    device: &str,
    bytes: &[u8],
) -> Result<Option<BundleReport>, LedgerError> {
    let r: Receipt = serde_json::from_slice(bytes).map_err(|e| LedgerError::BadReport {
        origin: origin.to_owned(),
        message: format!("not a USB receipt: {e}"),
    })?;
    let Some(state) = TransferState::from_receipt(r.state) else {
        return Ok(None);
    };
    Ok(Some(BundleReport {
        device: device.to_owned(),
        bundle_id: r.id,
        bundle_name: r.bundle,
        repository: r.repository,
        state,
        reason: r.reason,
        advice: r.advice,
        at: r.at,
    }))
}

/// Reads the plugin's bundle list (`{"bundles": [...]}`) of `device`.
pub fn parse_plugin_bundles(
    origin: &str,
    device: &str,
    bytes: &[u8],
) -> Result<Vec<BundleReport>, LedgerError> {
    let list: BundleList = serde_json::from_slice(bytes).map_err(|e| LedgerError::BadReport {
        origin: origin.to_owned(),
        message: format!("not the plugin's bundle list (GET /sideload/v1/bundles): {e}"),
    })?;
    Ok(list
        .bundles
        .into_iter()
        .filter_map(|b| {
            Some(BundleReport {
                device: device.to_owned(),
                state: TransferState::from_device(b.state)?,
                bundle_id: Some(b.id),
                bundle_name: b.name,
                repository: Some(b.repository),
                reason: b.reason,
                advice: b.advice,
                at: b.updated_at,
            })
        })
        .collect())
}

/// Everything in a folder of receipts a stick brought back: `DIR/DEVICE/inventory.json` and
/// `DIR/DEVICE/*.json` (the loader's `receipts/` folder, or a copy of it; `DIR` may also be
/// one device's folder). Symlinks are not followed; `visit.json` is the loader's summary.
pub fn read_receipt_folder(dir: &Path) -> Result<(Vec<Inventory>, Vec<BundleReport>), LedgerError> {
    let io = |e: std::io::Error, p: &Path| LedgerError::BadReport {
        origin: p.display().to_string(),
        message: e.to_string(),
    };
    let mut device_dirs = Vec::new();
    if dir.join("inventory.json").is_file() {
        device_dirs.push(dir.to_path_buf());
    } else {
        for entry in std::fs::read_dir(dir).map_err(|e| io(e, dir))? {
            let entry = entry.map_err(|e| io(e, dir))?;
            if entry.file_type().map_err(|e| io(e, dir))?.is_dir() {
                device_dirs.push(entry.path());
            }
        }
    }
    device_dirs.sort();
    let mut inventories = Vec::new();
    let mut reports = Vec::new();
    for d in device_dirs {
        let inv_path = d.join("inventory.json");
        let folder_name = d
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let device = if inv_path.is_file() {
            let bytes = std::fs::read(&inv_path).map_err(|e| io(e, &inv_path))?;
            let inv = parse_inventory(&inv_path.display().to_string(), &bytes)?;
            let device = inv.device.clone();
            inventories.push(inv);
            device
        } else {
            folder_name
        };
        let mut files: Vec<_> = std::fs::read_dir(&d)
            .map_err(|e| io(e, &d))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|x| x == "json")
                    && !matches!(
                        p.file_name().and_then(|n| n.to_str()),
                        Some("inventory.json" | "visit.json")
                    )
            })
            .collect();
        files.sort();
        for f in files {
            let bytes = std::fs::read(&f).map_err(|e| io(e, &f))?;
            if let Some(r) = parse_receipt(&f.display().to_string(), &device, &bytes)? {
                reports.push(r);
            }
        }
    }
    Ok((inventories, reports))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_map_to_transfer_states() {
        let r = |state: &str| {
            parse_receipt(
                "r.json",
                "dev-1",
                format!(r#"{{"bundle":"a.bundle","id":"sha256:ab","repository":"edge/app","tags":["v2"],"sequence":3,"state":"{state}","reason":null,"advice":null,"at":100}}"#).as_bytes(),
            )
        };
        assert_eq!(
            r("already-applied").unwrap().unwrap().state,
            TransferState::Applied
        );
        assert_eq!(r("refused").unwrap().unwrap().state, TransferState::Refused);
        assert_eq!(
            r("applying").unwrap().unwrap().state,
            TransferState::Received
        );
        assert!(r("skipped").unwrap().is_none());
        assert!(r("exploded").is_err());
        assert!(parse_receipt("x", "d", b"{").is_err());
    }

    #[test]
    fn inventories_are_checked() {
        assert!(parse_inventory(
            "i",
            br#"{"format":2,"device":"d","generated_at":1,"images":[]}"#
        )
        .is_err());
        assert!(parse_inventory(
            "i",
            br#"{"format":1,"device":"","generated_at":1,"images":[]}"#
        )
        .is_err());
        let inv = parse_inventory(
            "i",
            br#"{"format":1,"device":"d","generated_at":1,"images":[{"repository":"edge/app","tags":["v1"],"manifest_digest":"sha256:m","config_digest":"sha256:c","diff_ids":["sha256:l"],"layer_blobs":["sha256:b"]}],"sequences":{"edge/app":4},"free_bytes":9}"#,
        )
        .unwrap();
        assert_eq!(inv.images[0].tags, ["v1"]);
        assert_eq!(inv.sequences["edge/app"], 4);
    }
}
