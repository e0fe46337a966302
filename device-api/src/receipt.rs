//! The USB receipt: what the loader wrote onto a stick about one bundle
//! (`receipts/DEVICE/NAME.json`), for the cloud to read back.

use serde::{Deserialize, Serialize};

use crate::state::ReceiptState;

/// What happened to one bundle of a stick, as its receipt reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Receipt {
    /// The bundle's file name on the stick.
    pub bundle: String,
    /// Its statement digest (the id the plugin knows it by), when its head could be read.
    pub id: Option<String>,
    /// Target repository.
    pub repository: Option<String>,
    /// Target tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Anti-rollback sequence.
    #[serde(default)]
    pub sequence: Option<u64>,
    /// What became of it.
    pub state: ReceiptState,
    /// Why (refusals and failures).
    pub reason: Option<String>,
    /// What to do about it.
    pub advice: Option<String>,
    /// The stick visit this receipt was written on (Unix seconds).
    pub at: u64,
}
