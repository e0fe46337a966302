//! The daemon's answers (`docs/upload-api.md`), as the daemon writes them and as clients read
//! them. Clients read leniently where older daemons wrote less (`#[serde(default)]`), and
//! strictly where a guess would mislead (the bundle state).

use serde::{Deserialize, Serialize};

use crate::refusal::Refusal;
use crate::state::BundleState;

/// The API's path prefix.
pub const API: &str = "/sideload/v1";

/// The status path of a bundle (`/sideload/v1/bundles/ID`).
pub fn bundle_path(id: &str) -> String {
    format!("{API}/bundles/{id}")
}

/// One bundle as the device's journal knows it (`bundle` in `GET /sideload/v1/bundles/ID`,
/// an entry of `GET /sideload/v1/bundles`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleRecord {
    /// The statement's digest: the bundle's id.
    #[serde(default)]
    pub id: String,
    /// File name as delivered.
    #[serde(default)]
    pub name: String,
    /// sha256 of the bundle file.
    #[serde(default)]
    pub file_digest: Option<String>,
    /// Target repository.
    #[serde(default)]
    pub repository: String,
    /// Target tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Anti-rollback sequence.
    #[serde(default)]
    pub sequence: u64,
    /// Manifest digest the device will produce.
    #[serde(default)]
    pub manifest_digest: String,
    /// Who ordered it (from the signed statement).
    #[serde(default)]
    pub ordered_by: String,
    /// Whom to contact (from the signed statement).
    #[serde(default)]
    pub contact: String,
    /// How it arrived (`upload`, `inbox`).
    #[serde(default)]
    pub source: String,
    /// Current state.
    pub state: BundleState,
    /// Why it failed or waits.
    #[serde(default)]
    pub reason: Option<String>,
    /// What to do about it.
    #[serde(default)]
    pub advice: Option<String>,
    /// Outcome of putting the image into the container engine, when configured.
    #[serde(default)]
    pub engine: Option<String>,
    /// Unix seconds.
    #[serde(default)]
    pub received_at: u64,
    /// Unix seconds.
    #[serde(default)]
    pub updated_at: u64,
}

/// One state change in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Increasing.
    pub id: i64,
    /// Bundle id (or the delivery name when refused before its statement could be read).
    pub bundle: String,
    /// File name as delivered.
    pub name: String,
    /// The new state.
    pub state: BundleState,
    /// Why, for failures and refusals.
    pub reason: Option<String>,
    /// Unix seconds.
    pub at: u64,
}

/// `POST /sideload/v1/uploads` (201, or 200 for an upload of the same file already open) and
/// its `Location`: where to send the bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadCreated {
    /// The upload's URL path.
    pub location: String,
    /// Bytes the device holds of it.
    pub offset: u64,
    /// The upload's id.
    pub upload: String,
}

/// How intake took a whole bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Intake {
    /// Trusted, whole and new: queued for apply (HTTP 202).
    Queued,
    /// The same statement was already queued, applying or applied (HTTP 200).
    Duplicate,
}

impl Intake {
    /// The word on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Intake::Queued => "queued",
            Intake::Duplicate => "duplicate",
        }
    }
}

/// The answer to the upload's last byte (`PATCH`, or `PUT` to repeat it): the bundle taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Taken {
    /// The statement digest.
    pub bundle: String,
    /// `queued` or `duplicate`.
    pub outcome: Intake,
    /// Its status path.
    pub status: String,
}

impl Taken {
    /// The answer for `bundle` taken as `outcome`.
    pub fn new(bundle: &str, outcome: Intake) -> Taken {
        Taken {
            bundle: bundle.to_owned(),
            outcome,
            status: bundle_path(bundle),
        }
    }
}

/// `outcome` of [`Known`]: always `known`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KnownTag {
    /// The only value.
    Known,
}

/// The answer to a `POST` whose `Bundle-Digest` names a bundle the device already has
/// (queued, applying or applied): nothing to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Known {
    /// The bundle's record.
    pub bundle: BundleRecord,
    /// `known`.
    pub outcome: KnownTag,
    /// Its status path.
    #[serde(default)]
    pub status: String,
}

impl Known {
    /// The answer for `bundle`.
    pub fn new(bundle: BundleRecord) -> Known {
        let status = bundle_path(&bundle.id);
        Known {
            bundle,
            outcome: KnownTag::Known,
            status,
        }
    }
}

/// `GET /sideload/v1/bundles/ID`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleStatus {
    /// The bundle.
    pub bundle: BundleRecord,
    /// Whether the device feeds a container engine: then an applied bundle is done only once
    /// its `engine` outcome is in. Absent from older devices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_configured: Option<bool>,
    /// Its state changes, oldest first.
    #[serde(default)]
    pub history: Vec<HistoryEntry>,
}

impl BundleStatus {
    /// Whether an applied bundle still waits for the device's engine: the device says it feeds
    /// one and the record has no `engine` outcome yet.
    pub fn engine_pending(&self) -> bool {
        self.bundle.state == BundleState::Applied
            && self.engine_configured == Some(true)
            && self.bundle.engine.is_none()
    }
}

/// `GET /sideload/v1/bundles`: the most recent bundles, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleList {
    /// The bundles.
    pub bundles: Vec<BundleRecord>,
}

/// `GET /sideload/v1/journal`: state changes, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalPage {
    /// The entries.
    pub entries: Vec<HistoryEntry>,
}

/// `GET /sideload/v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Events not delivered yet.
    pub events_pending: usize,
    /// `ok`, or why the registry did not answer.
    pub registry: String,
    /// `ok` or `degraded`.
    pub status: String,
    /// Unfinished uploads.
    pub uploads_active: usize,
}

/// One open upload as the operator API lists it (`GET /sideload/v1/admin/uploads`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadInfo {
    /// The upload's id.
    pub id: String,
    /// Its name (`Bundle-Name`, else `upload-ID`).
    pub name: String,
    /// Bytes the device holds.
    pub held: u64,
    /// The head's signatures verified: the upload has the long resume window and counts
    /// against `max_concurrent_uploads`; otherwise it is one of the cheap, evictable ones.
    pub trusted: bool,
    /// The statement digest, once trusted.
    pub bundle_id: Option<String>,
    /// The client address that created it.
    pub client: Option<String>,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds of the last byte or request.
    pub last_activity: u64,
}

/// `GET /sideload/v1/admin/uploads`: the open uploads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadList {
    /// The uploads.
    pub uploads: Vec<UploadInfo>,
}

/// Every error answer of the API: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The refusal or error.
    pub error: Refusal,
}

/// An answer's JSON body as the daemon writes it: pretty, keys in sorted order (as
/// `serde_json`'s map orders them), and a final newline.
pub fn body(answer: &impl Serialize) -> Vec<u8> {
    let value = serde_json::to_value(answer).expect("answers serialize");
    let mut out = serde_json::to_vec_pretty(&value).expect("values serialize");
    out.push(b'\n');
    out
}

/// A document's JSON body with its fields in declaration order (the inventory's layout),
/// pretty and with a final newline.
pub fn ordered_body(document: &impl Serialize) -> Vec<u8> {
    let mut out = serde_json::to_vec_pretty(document).expect("documents serialize");
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_keep_the_documented_layout() {
        let created = UploadCreated {
            location: "/sideload/v1/uploads/e5".into(),
            offset: 0,
            upload: "e5".into(),
        };
        assert_eq!(
            String::from_utf8(body(&created)).unwrap(),
            "{\n  \"location\": \"/sideload/v1/uploads/e5\",\n  \"offset\": 0,\n  \"upload\": \"e5\"\n}\n"
        );
        let taken = Taken::new("sha256:2f", Intake::Queued);
        assert_eq!(
            String::from_utf8(body(&taken)).unwrap(),
            "{\n  \"bundle\": \"sha256:2f\",\n  \"outcome\": \"queued\",\n  \"status\": \"/sideload/v1/bundles/sha256:2f\"\n}\n"
        );
    }

    #[test]
    fn engine_pending_only_where_the_device_feeds_one() {
        let status = |configured: Option<bool>, engine: Option<&str>, state| BundleStatus {
            bundle: BundleRecord {
                engine: engine.map(str::to_owned),
                ..serde_json::from_str(&format!(r#"{{"state":"{state}"}}"#)).unwrap()
            },
            engine_configured: configured,
            history: Vec::new(),
        };
        assert!(status(Some(true), None, "applied").engine_pending());
        assert!(!status(Some(true), Some("loaded"), "applied").engine_pending());
        assert!(!status(Some(false), None, "applied").engine_pending());
        assert!(!status(None, None, "applied").engine_pending());
        assert!(!status(Some(true), None, "applying").engine_pending());
    }
}
