//! Resumable bundle uploads (protocol: `docs/upload-api.md`).
//!
//! Each upload is two files in `DATA_DIR/uploads`: `ID.part` (the bytes received, appended in
//! order, fsynced at the end of every request and every few MiB) and `ID.json` (what the client
//! declared and what the daemon learned). The offset a client resumes from is the length of
//! `ID.part`, so an upload survives dropped connections and daemon restarts and no byte the
//! device stored is asked for again. As soon as the head (header, statement, signatures) is
//! in, it is checked; an untrusted bundle is refused and its bytes deleted before any payload
//! is stored. When the last byte arrives the file goes through the daemon's intake.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use sideload_device_api::Intake as ApiIntake;
use tokio::io::AsyncWriteExt;

use crate::daemon::{Daemon, HeadCheck, Intake, Refused};
use crate::journal::now;

/// How far behind the device's offset a `PATCH` may start: the overlap is checked and skipped.
const MAX_OVERLAP: u64 = 256 << 10;

/// fsync the data at least this often during a long request.
const SYNC_EVERY: u64 = 8 << 20;

/// What is known about one upload; stored as `ID.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadMeta {
    /// Random id (hex).
    pub id: String,
    /// Name for messages (`Bundle-Name` header, else the id).
    pub name: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Unix seconds of the last byte or request.
    pub updated_at: u64,
    /// sha256 of the whole file, if the client declared it.
    pub expected_digest: Option<String>,
    /// Length the client declared, if any.
    pub declared_length: Option<u64>,
    /// Length from the bundle's own head, once it is in and trusted.
    pub total_length: Option<u64>,
    /// The statement digest, once the head is in.
    pub bundle_id: Option<String>,
    /// Set when the upload ended: what intake said.
    pub result: Option<UploadResult>,
    /// The address of the client that created it (absent in records of older versions).
    #[serde(default)]
    pub client: Option<String>,
}

/// One open upload as the operator API lists it (the device API's type).
pub use sideload_device_api::answers::UploadInfo;

/// An unchecked upload (head not verified yet) as the admission decision sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unchecked {
    /// The upload's id.
    pub id: String,
    /// The client address that created it.
    pub client: Option<String>,
    /// Unix seconds of its last activity.
    pub last_activity: u64,
}

/// What to do before a new unchecked upload from a client is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Make it.
    Admit,
    /// Evict this unchecked upload first, then decide again.
    Evict(String),
}

/// Whether a client may open one more unchecked upload, or which one to evict first: the
/// client's own stalest when it is at `per_client`, else the stalest of all when `total`
/// are open. Trusted uploads are not in `open` and are never evicted. Pure, so it is tested
/// without a socket.
pub fn admit_unchecked(
    open: &[Unchecked],
    client: &str,
    total: usize,
    per_client: usize,
) -> Admission {
    let stalest = |it: &mut dyn Iterator<Item = &Unchecked>| {
        it.min_by(|a, b| (a.last_activity, &a.id).cmp(&(b.last_activity, &b.id)))
            .map(|u| Admission::Evict(u.id.clone()))
    };
    let mine = open
        .iter()
        .filter(|u| u.client.as_deref() == Some(client))
        .count();
    if mine >= per_client {
        if let Some(evict) =
            stalest(&mut open.iter().filter(|u| u.client.as_deref() == Some(client)))
        {
            return evict;
        }
    }
    if open.len() >= total {
        if let Some(evict) = stalest(&mut open.iter()) {
            return evict;
        }
    }
    Admission::Admit
}

/// Whether an upload has been idle too long: unchecked ones after `unchecked_idle` seconds,
/// trusted and finished ones after `idle`.
pub fn is_expired(
    trusted_or_finished: bool,
    idle_secs: u64,
    idle: u64,
    unchecked_idle: u64,
) -> bool {
    idle_secs
        > if trusted_or_finished {
            idle
        } else {
            unchecked_idle
        }
}

/// Bytes needed when `available` cannot hold `receive` + `apply` + `reserve`, else `None`. Pure.
pub fn space_shortfall(available: u64, receive: u64, apply: u64, reserve: u64) -> Option<u64> {
    let needed = receive.saturating_add(apply).saturating_add(reserve);
    (available < needed).then_some(needed)
}

/// Bytes an upload takes on disk before its head says more: its record and the head itself.
const UPLOAD_FLOOR: u64 = 64 << 10;

/// How a finished upload ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum UploadResult {
    /// Queued for apply (or already there: duplicate).
    Accepted {
        /// The statement digest.
        bundle: String,
        /// `queued` or `duplicate`.
        intake: ApiIntake,
    },
    /// Refused; its bytes were deleted.
    Refused(Refused),
}

/// Why an upload request failed. Each variant has its stable [`code`](Self::code), its
/// [`advice`](Self::advice) and the HTTP [`status`](Self::status) the API answers it with.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// No such upload (never created, expired, or removed after a refusal).
    #[error("no upload {id} on this device")]
    NotFound {
        /// The upload ID asked for.
        id: String,
    },
    /// The client's offset is not what the device holds; resume from `held`.
    #[error("the device holds {held} bytes of this upload")]
    OffsetMismatch {
        /// Bytes the device holds.
        held: u64,
    },
    /// The request is malformed.
    #[error(transparent)]
    BadRequest(#[from] BadRequest),
    /// More bytes than the bundle's head declares; the excess was dropped and the upload
    /// holds `held` bytes (finish it with PUT).
    #[error("{bundle}: more bytes than the bundle's head declares ({held})")]
    Overflow {
        /// The bundle's name.
        bundle: String,
        /// Bytes held: the whole bundle.
        held: u64,
    },
    /// Bigger than `uploads.max_bundle_bytes`.
    #[error("{}the bundle is {size} bytes; this device takes at most {max} (uploads.max_bundle_bytes)", named(.bundle))]
    TooLarge {
        /// The bundle's name, once its head was read.
        bundle: Option<String>,
        /// Its size, declared or read from its head.
        size: u64,
        /// `uploads.max_bundle_bytes`.
        max: u64,
    },
    /// Too many unfinished uploads of trusted bundles.
    #[error("{bundle}: {max} uploads of trusted bundles are already open (uploads.max_concurrent_uploads); the head is kept: resume after one of them finished")]
    TooMany {
        /// The bundle's name.
        bundle: String,
        /// `uploads.max_concurrent_uploads`.
        max: usize,
    },
    /// Not enough free disk for the rest of the bundle plus the reserve.
    #[error("{0}; {NO_SPACE_ADVICE}")]
    NoSpace(Shortfall),
    /// The bundle was refused (untrusted, damaged); its bytes are gone.
    #[error("{}", .0.reason)]
    Refused(Refused),
    /// The device's disk failed this request; a retry may work.
    #[error("{what}: {source}{hint}")]
    Io {
        /// What the device was doing (`cannot store upload ID`).
        what: String,
        /// The failure.
        source: std::io::Error,
        /// More to say after the failure (`; free disk space on the device`), or nothing.
        hint: &'static str,
    },
    /// The intake of a whole upload stopped before it decided (its task panicked or was
    /// cancelled).
    #[error("intake stopped: {0}")]
    IntakeStopped(tokio::task::JoinError),
    /// The intake could not take the bundle now, for a device-side reason; the bytes went
    /// back to the upload.
    #[error("{reason}; the upload is kept: finish it again with PUT")]
    IntakeDeferred {
        /// The intake's reason.
        reason: String,
    },
    /// The head could be neither judged nor refused at its boundary (a bug; refused rather
    /// than looped on).
    #[error("upload {id}: the head could not be judged at byte {held}")]
    HeadUnjudged {
        /// The upload.
        id: String,
        /// Bytes held.
        held: u64,
    },
    /// Another request is writing this upload and still receiving bytes.
    #[error("another request is sending bytes of this upload right now")]
    Busy,
}

/// How a request to the upload API is malformed.
#[derive(Debug, thiserror::Error)]
pub enum BadRequest {
    /// `Bundle-Digest` is not a sha256 digest.
    #[error("Bundle-Digest {0:?} is not sha256:<64 lowercase hex digits>")]
    BundleDigest(String),
    /// `Upload-Length` contradicts the bundle's head.
    #[error("{bundle}: Upload-Length said {declared} bytes but the bundle's head says {total}")]
    LengthMismatch {
        /// The bundle's name.
        bundle: String,
        /// What `Upload-Length` said.
        declared: u64,
        /// What the head declares.
        total: u64,
    },
    /// Bytes sent again over what the device holds are not the same bytes.
    #[error("{bundle}: the bytes sent from offset {at} differ from those the device holds; the upload belongs to another file")]
    OtherFile {
        /// The bundle's name.
        bundle: String,
        /// Where the resent bytes start.
        at: u64,
    },
    /// A PATCH without `Upload-Offset`.
    #[error("PATCH needs an Upload-Offset header (ask HEAD for the current one)")]
    NoOffset,
}

/// What the API advises, in its message, when the disk cannot hold a bundle.
const NO_SPACE_ADVICE: &str = "free disk space on the device (waiting bundles: DELETE /sideload/v1/admin/bundles/ID), then resume the upload; or send a smaller bundle";

/// Why the disk cannot take a bundle: what it needs and what it has.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{bundle}: the device needs {needed} bytes free to take this bundle ({receive} still to receive, {apply} to apply it, {reserve} kept free by uploads.free_disk_reserve_bytes) and has {available}")]
pub struct Shortfall {
    /// The bundle's name.
    pub bundle: String,
    /// Bytes free it needs.
    pub needed: u64,
    /// Bytes still to receive.
    pub receive: u64,
    /// Bytes its apply needs.
    pub apply: u64,
    /// `uploads.free_disk_reserve_bytes`.
    pub reserve: u64,
    /// Bytes free.
    pub available: u64,
}

/// `NAME: ` when the bundle's name is known, else nothing.
fn named(bundle: &Option<String>) -> String {
    bundle
        .as_ref()
        .map(|b| format!("{b}: "))
        .unwrap_or_default()
}

impl UploadError {
    /// A disk failure while doing `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> UploadError {
        UploadError::Io {
            what: what.into(),
            source,
            hint: "",
        }
    }

    /// The stable code the API answers with.
    pub fn code(&self) -> &str {
        match self {
            UploadError::NotFound { .. } => "unknown_upload",
            UploadError::OffsetMismatch { .. } => "offset_mismatch",
            UploadError::BadRequest(_) => "bad_request",
            UploadError::Overflow { .. } => "overflow",
            UploadError::TooLarge { .. } => "too_large",
            UploadError::TooMany { .. } => "too_many_uploads",
            UploadError::NoSpace(_) => "insufficient_storage",
            UploadError::Refused(r) => &r.code,
            UploadError::Io { .. }
            | UploadError::IntakeStopped(_)
            | UploadError::IntakeDeferred { .. }
            | UploadError::HeadUnjudged { .. } => "internal",
            UploadError::Busy => "upload_busy",
        }
    }

    /// What the client should do.
    pub fn advice(&self) -> &str {
        match self {
            UploadError::NotFound { .. } => "start a new upload with POST /sideload/v1/uploads",
            UploadError::OffsetMismatch { .. } => "resume from the Upload-Offset this answer carries",
            UploadError::BadRequest(_) => "see docs/upload-api.md",
            UploadError::Overflow { .. } => "the excess was dropped; finish the upload with PUT, and check the client: it sent more than the bundle",
            UploadError::TooLarge { .. } => "raise uploads.max_bundle_bytes on the device or send a smaller bundle",
            UploadError::TooMany { .. } => "retry later",
            UploadError::NoSpace(_) => "free disk space on the device",
            UploadError::Refused(r) => &r.advice,
            UploadError::Io { .. }
            | UploadError::IntakeStopped(_)
            | UploadError::IntakeDeferred { .. }
            | UploadError::HeadUnjudged { .. } => {
                "retry; if it repeats, check the device's disk and logs"
            }
            UploadError::Busy => "retry after Retry-After seconds; a request that stops receiving bytes gives the upload up",
        }
    }

    /// The HTTP status the API answers with.
    pub fn status(&self) -> u16 {
        match self {
            UploadError::NotFound { .. } => 404,
            UploadError::OffsetMismatch { .. } | UploadError::Busy => 409,
            UploadError::BadRequest(_) | UploadError::Overflow { .. } => 400,
            UploadError::TooLarge { .. } => 413,
            UploadError::TooMany { .. } => 429,
            UploadError::NoSpace(_) => 507,
            UploadError::Refused(r) => r.refusal().status(),
            UploadError::Io { .. }
            | UploadError::IntakeStopped(_)
            | UploadError::IntakeDeferred { .. }
            | UploadError::HeadUnjudged { .. } => 500,
        }
    }

    /// Bytes the device holds, when the answer carries them (`Upload-Offset`).
    pub fn held(&self) -> Option<u64> {
        match self {
            UploadError::OffsetMismatch { held } | UploadError::Overflow { held, .. } => {
                Some(*held)
            }
            _ => None,
        }
    }
}

/// What an append ended with.
#[derive(Debug)]
pub enum Appended {
    /// More bytes are needed.
    Partial {
        /// Bytes held now.
        held: u64,
        /// Total, once known.
        total: Option<u64>,
    },
    /// The last byte arrived and intake took the bundle.
    Done {
        /// Bytes held (the whole file).
        held: u64,
        /// Intake's answer.
        result: UploadResult,
    },
}

/// One upload in memory.
///
/// `meta` is held for the whole of a request that writes, so bytes are appended by one request
/// at a time. Everything that must answer while a write runs (the offset for a resuming
/// client, the duplicate lookup of a second `POST`) reads `snapshot` instead of waiting.
struct Session {
    meta: tokio::sync::Mutex<UploadMeta>,
    /// The last saved record.
    snapshot: Mutex<UploadMeta>,
    /// The newest claim of a request that wants to write. After a dropped link the old
    /// request may still be waiting for bytes that will never come (until
    /// `read_timeout_secs`); the client's new request claims the upload and the old one, idle
    /// for `TAKEOVER_IDLE`, stops and keeps what it stored. A request still receiving bytes
    /// keeps the upload: two live clients do not cut each other off in turn.
    takeover: tokio::sync::watch::Sender<Claim>,
    /// When the running writer last received bytes: a writer that is still receiving is
    /// waited for by `HEAD`, so the offset it reports is not overtaken a moment later.
    receiving_at: Mutex<Option<std::time::Instant>>,
}

/// A request's claim on an upload.
#[derive(Debug, Clone, Copy, Default)]
struct Claim {
    generation: u64,
    /// A `DELETE`: wins even over a request still receiving bytes.
    force: bool,
}

/// How long a request's body is still read (and thrown away) after the device has answered
/// early: nginx's `lingering_time`, which exists for the same reason (see [`LingeringBody`]).
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(30);
/// How long that reading may go without a byte (nginx's `lingering_timeout`).
const LINGER_IDLE: std::time::Duration = std::time::Duration::from_secs(5);
/// At most this much is thrown away: on a metered link the client should stop, not us read.
const LINGER_MAX_BYTES: usize = 4 << 20;

/// An upload request's body that, when the device answers before the client has stopped
/// sending (a refused head, bytes past the bundle's end, a take-over), goes on being read and
/// thrown away in the background for a while ("lingering close"). Closing a socket with
/// unread bytes makes the kernel reset the connection, and the reset can destroy the answer,
/// with the refusal's reason, before the client reads it; the client then sees a dropped link
/// and sends the head again to learn what it missed.
pub(crate) struct LingeringBody {
    body: Option<hyper::body::Incoming>,
    /// The client sent its last byte: nothing left to read.
    ended: bool,
}

impl LingeringBody {
    pub(crate) fn new(body: hyper::body::Incoming) -> Self {
        LingeringBody {
            body: Some(body),
            ended: false,
        }
    }

    /// The next frame; `None` at the end of the body.
    async fn frame(&mut self) -> Option<Result<hyper::body::Frame<bytes::Bytes>, hyper::Error>> {
        let frame = self.body.as_mut()?.frame().await;
        if frame.is_none() {
            self.ended = true;
        }
        frame
    }
}

impl Drop for LingeringBody {
    fn drop(&mut self) {
        let Some(mut body) = self.body.take().filter(|_| !self.ended) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let until = tokio::time::Instant::now() + LINGER_TIME;
            let mut thrown = 0usize;
            while thrown < LINGER_MAX_BYTES {
                let idle = (tokio::time::Instant::now() + LINGER_IDLE).min(until);
                match tokio::time::timeout_at(idle, body.frame()).await {
                    Ok(Some(Ok(frame))) => {
                        thrown += frame.data_ref().map_or(0, |d| d.len());
                    }
                    _ => break,
                }
            }
        });
    }
}

/// A writing request that received nothing for this long gives the upload to a newer one.
const TAKEOVER_IDLE: std::time::Duration = std::time::Duration::from_secs(2);
/// How long a newer request waits for the upload before it is told the upload is busy.
const TAKEOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Session {
    fn new(meta: UploadMeta) -> Arc<Session> {
        Arc::new(Session {
            snapshot: Mutex::new(meta.clone()),
            meta: tokio::sync::Mutex::new(meta),
            takeover: tokio::sync::watch::Sender::new(Claim::default()),
            receiving_at: Mutex::new(None),
        })
    }

    fn snapshot(&self) -> UploadMeta {
        self.snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Claims the upload, waits for a request still running on it to give it up, then holds
    /// it. Returns the lock, a receiver of later claims and this claim's generation.
    async fn take(
        &self,
        force: bool,
    ) -> Result<
        (
            tokio::sync::MutexGuard<'_, UploadMeta>,
            tokio::sync::watch::Receiver<Claim>,
            u64,
        ),
        UploadError,
    > {
        let mut claims = self.takeover.subscribe();
        let mut mine = 0;
        self.takeover.send_modify(|c| {
            c.generation = c.generation.wrapping_add(1);
            c.force = force;
            mine = c.generation;
        });
        claims.borrow_and_update();
        let guard = if force {
            self.meta.lock().await
        } else {
            tokio::time::timeout(TAKEOVER_WAIT, self.meta.lock())
                .await
                .map_err(|_| UploadError::Busy)?
        };
        Ok((guard, claims, mine))
    }
}

/// All uploads.
pub struct Uploads {
    dir: PathBuf,
    open: Mutex<HashMap<String, Arc<Session>>>,
}

impl Uploads {
    /// Loads the uploads left in `dir` by an earlier run.
    pub fn open(dir: PathBuf) -> std::io::Result<Uploads> {
        std::fs::create_dir_all(&dir)?;
        let mut open = HashMap::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) == Some("tmp") {
                // A record half-written by a crash inside `save`; the old record stands.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<UploadMeta>(&b).ok())
            {
                Some(meta) => {
                    open.insert(meta.id.clone(), Session::new(meta));
                }
                None => tracing::warn!(path = %path.display(), "unreadable upload record ignored"),
            }
        }
        Ok(Uploads {
            dir,
            open: Mutex::new(open),
        })
    }

    fn part(&self, id: &str) -> PathBuf {
        crate::incoming::upload_part(&self.dir, id)
    }

    fn meta_path(&self, id: &str) -> PathBuf {
        crate::incoming::upload_record(&self.dir, id)
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, id: &str) -> Result<Arc<Session>, UploadError> {
        self.table()
            .get(id)
            .cloned()
            .ok_or_else(|| UploadError::NotFound { id: id.to_owned() })
    }

    /// Unix seconds of an upload's last activity: its last saved change, or now while a
    /// request is still receiving its bytes.
    fn last_activity(session: &Session, meta: &UploadMeta) -> u64 {
        let receiving = session
            .receiving_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map(|t| now().saturating_sub(t.elapsed().as_secs()));
        receiving.map_or(meta.updated_at, |r| r.max(meta.updated_at))
    }

    /// Every unfinished upload, oldest first, for the operator.
    pub fn list(&self) -> Vec<UploadInfo> {
        let sessions: Vec<Arc<Session>> = self.table().values().cloned().collect();
        let mut out: Vec<UploadInfo> = sessions
            .iter()
            .map(|s| (s, s.snapshot()))
            .filter(|(_, m)| m.result.is_none())
            .map(|(s, m)| UploadInfo {
                held: self.held_for(&m),
                trusted: m.total_length.is_some(),
                last_activity: Self::last_activity(s, &m),
                id: m.id,
                name: m.name,
                bundle_id: m.bundle_id,
                client: m.client,
                created_at: m.created_at,
            })
            .collect();
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        out
    }

    /// Unfinished uploads whose head is not trusted yet.
    fn unchecked(&self) -> Vec<Unchecked> {
        self.table()
            .values()
            .map(|s| (s, s.snapshot()))
            .filter(|(_, m)| m.result.is_none() && m.total_length.is_none())
            .map(|(s, m)| Unchecked {
                last_activity: Self::last_activity(s, &m),
                id: m.id,
                client: m.client,
            })
            .collect()
    }

    /// Unfinished uploads whose head is trusted, other than `except`.
    fn trusted_active(&self, except: &str) -> usize {
        self.table()
            .values()
            .map(|s| s.snapshot())
            .filter(|m| m.result.is_none() && m.total_length.is_some() && m.id != except)
            .count()
    }

    /// Unfinished uploads.
    pub fn active(&self) -> usize {
        self.table()
            .values()
            .filter(|s| s.snapshot().result.is_none())
            .count()
    }

    fn save(&self, meta: &UploadMeta) -> Result<(), UploadError> {
        let path = self.meta_path(&meta.id);
        let body = serde_json::to_vec(meta).expect("serializes");
        sideload_bundle::fsutil::replace_file_with(&path, 0o600, &body)
            .map_err(|e| UploadError::io(format!("cannot record upload {}", meta.id), e))?;
        if let Some(session) = self.table().get(&meta.id) {
            *session.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = meta.clone();
        }
        Ok(())
    }

    /// What the device holds of an upload: the file's length, or the whole bundle once it
    /// is finished or being finished (its file then moved into the queue).
    fn held_for(&self, meta: &UploadMeta) -> u64 {
        match (meta.result.is_some(), meta.total_length) {
            (true, total) => total.unwrap_or(0),
            (false, Some(total)) if !self.part(&meta.id).exists() => total,
            _ => self.held(&meta.id),
        }
    }

    fn held(&self, id: &str) -> u64 {
        std::fs::metadata(self.part(id))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    fn remove(&self, id: &str) {
        self.table().remove(id);
        let _ = std::fs::remove_file(self.part(id));
        let _ = std::fs::remove_file(self.meta_path(id));
    }

    /// Starts an upload, or points at what already exists: an unfinished upload of the same
    /// file (so two clients share one), or a bundle already taken (nothing to send).
    pub async fn create(
        &self,
        daemon: &Daemon,
        name: Option<String>,
        digest: Option<String>,
        length: Option<u64>,
        client: std::net::IpAddr,
    ) -> Result<Created, UploadError> {
        if let Some(d) = &digest {
            let hex = d.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64
                || !hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(BadRequest::BundleDigest(d.clone()).into());
            }
            if let Ok(Some(b)) = daemon.journal.by_file_digest(d) {
                if b.state.is_live() {
                    return Ok(Created::Known(Box::new(b)));
                }
            }
            // The snapshot, not the lock: the upload to resume is likely the one a request from
            // a dropped connection is still holding.
            let same = self.table().values().find_map(|s| {
                let m = s.snapshot();
                (m.result.is_none() && m.expected_digest.as_deref() == Some(d)).then_some(m)
            });
            if let Some(m) = same {
                return Ok(Created::Existing {
                    held: self.held_for(&m),
                    id: m.id,
                });
            }
        }
        let limits = &daemon.config.uploads;
        if let Some(len) = length {
            if len > limits.max_bundle_bytes {
                return Err(UploadError::TooLarge {
                    bundle: None,
                    size: len,
                    max: limits.max_bundle_bytes,
                });
            }
        }
        // A declared length must fit with the reserve. Without one, a disk with no room for
        // even the upload's own record refuses it here, with a reason, rather than failing to
        // write the record (the reserve is checked once the head tells the size).
        let label = name.as_deref().unwrap_or("upload");
        let (receive, reserve) = match length {
            Some(len) => (len, limits.free_disk_reserve_bytes),
            None => (UPLOAD_FLOOR, 0),
        };
        self.check_space(daemon, label, receive, 0, reserve, false)?;
        // Until its head is checked an upload is anyone's: it takes a place in the small
        // unchecked budget, evicting the stalest unchecked one (the client's own first) when
        // the budget is full. Trusted uploads have their own limit, checked with the head.
        let client = client.to_canonical().to_string();
        while let Admission::Evict(victim) = admit_unchecked(
            &self.unchecked(),
            &client,
            limits.max_unchecked_uploads,
            limits.max_unchecked_per_client,
        ) {
            tracing::info!(upload = %victim, %client, "unchecked upload evicted to make room for a new one");
            match self.delete(&victim).await {
                Ok(()) | Err(UploadError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let id = random_id();
        let now = now();
        let meta = UploadMeta {
            id: id.clone(),
            name: name
                .filter(|n| !n.is_empty() && n.len() <= 255)
                .unwrap_or_else(|| format!("upload-{id}")),
            created_at: now,
            updated_at: now,
            expected_digest: digest,
            declared_length: length,
            total_length: None,
            bundle_id: None,
            result: None,
            client: Some(client.clone()),
        };
        std::fs::File::create(self.part(&id))
            .map_err(|e| UploadError::io("cannot create upload file", e))?;
        self.table().insert(id.clone(), Session::new(meta.clone()));
        if let Err(e) = self.save(&meta) {
            self.remove(&id);
            return Err(e);
        }
        tracing::info!(upload = %id, %client, "upload created");
        Ok(Created::New { id })
    }

    /// Refuses an upload the disk cannot hold and apply: `receive` more bytes of the bundle,
    /// `apply` for its rebuilt image, and `reserve` kept free. The refusal is recorded and
    /// announced (through the disk reserve when the disk is full); `verified`: the bundle's
    /// head was trusted, so the refusal concerns a signed bundle.
    fn check_space(
        &self,
        daemon: &Daemon,
        name: &str,
        receive: u64,
        apply: u64,
        reserve: u64,
        verified: bool,
    ) -> Result<(), UploadError> {
        let available = fs4::available_space(&self.dir)
            .map_err(|e| UploadError::io("cannot read free space", e))?;
        let Some(needed) = space_shortfall(available, receive, apply, reserve) else {
            return Ok(());
        };
        let shortfall = Shortfall {
            bundle: name.to_owned(),
            needed,
            receive,
            apply,
            reserve,
            available,
        };
        let refused = Refused {
            bundle: name.to_owned(),
            code: "insufficient_storage".into(),
            reason: shortfall.to_string(),
            advice: NO_SPACE_ADVICE.into(),
            permanent: false,
            verified,
        };
        daemon.refusal(name, name, &refused);
        Err(UploadError::NoSpace(shortfall))
    }

    /// Status of one upload: bytes held, total once known, result once finished. Answers at
    /// once, also while a request is writing (a client resuming after a drop asks while its
    /// old request may still be open here).
    pub async fn status(&self, id: &str) -> Result<(UploadMeta, u64), UploadError> {
        let session = self.get(id)?;
        let receiving = session
            .receiving_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| t.elapsed() < TAKEOVER_IDLE);
        let meta = match session.meta.try_lock() {
            Ok(m) => m.clone(),
            // A writer still receiving bytes (an old connection draining what it holds, or
            // another client): wait a little for the exact offset. A dead one is not waited
            // for: its bytes are all stored.
            Err(_) if receiving => {
                match tokio::time::timeout(TAKEOVER_WAIT, session.meta.lock()).await {
                    Ok(m) => m.clone(),
                    Err(_) => session.snapshot(),
                }
            }
            Err(_) => session.snapshot(),
        };
        // The length on disk is what the device holds; make it durable before reporting it.
        if let Ok(f) = std::fs::File::open(self.part(id)) {
            let _ = f.sync_data();
        }
        Ok((meta.clone(), self.held_for(&meta)))
    }

    /// Cancels an upload and deletes its bytes.
    pub async fn delete(&self, id: &str) -> Result<(), UploadError> {
        let session = self.get(id)?;
        let _guard = session.take(true).await?;
        self.remove(id);
        Ok(())
    }

    /// Appends `body` at `offset` (which must equal what the device holds, or be a little
    /// behind it: see [`overlap_at`]). Bytes are stored as they arrive, so a request cut
    /// halfway keeps what came.
    pub async fn append(
        &self,
        daemon: &Arc<Daemon>,
        id: &str,
        offset: u64,
        body: hyper::body::Incoming,
    ) -> Result<Appended, UploadError> {
        let mut body = LingeringBody::new(body);
        let session = self.get(id)?;
        let (mut meta, claims, mine) = session.take(false).await?;
        if let Some(result) = self.settle_one(daemon, &mut meta)? {
            return Ok(Appended::Done {
                held: meta.total_length.unwrap_or(0),
                result,
            });
        }
        let held = self.held(id);
        let overlap = overlap_at(offset, held)?;
        let mut rx = Receiving::open(self, daemon, id, held, overlap).await?;
        // Every byte may already be here with the head never checked (a 507 or a crash at the
        // check, a request whose answer was lost): check it now, so the upload can finish.
        if meta.total_length.is_none() {
            if let Some(duplicate) = self.settle_head(daemon, &mut meta, held).await? {
                return Ok(Appended::Done {
                    held,
                    result: duplicate,
                });
            }
        }
        let mut listen = Listening {
            claims,
            mine,
            claimed: false,
            last_frame: tokio::time::Instant::now(),
            read_timeout: std::time::Duration::from_secs(
                daemon.config.uploads.read_timeout_secs.max(1),
            ),
        };
        let mut outcome = Ok(());
        while let Some(data) = listen.next(&mut body, &session, id, rx.held).await {
            match rx.take(&mut meta, &data).await {
                Took::More => rx.sync_now_and_then().await,
                Took::Stop(e) => {
                    outcome = Err(e);
                    break;
                }
                Took::Return(r) => return r,
            }
        }
        rx.close().await;
        let (held, skipped) = (rx.held, rx.skipped);
        drop(rx);
        *session
            .receiving_at
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        tracing::debug!(upload = %id, offset, held, skipped, "append request ended");
        meta.updated_at = now();
        self.save(&meta)?;
        outcome?;
        match after_request(held, meta.total_length) {
            RequestEnd::Whole => {
                let result = self.finish(daemon, &mut meta).await?;
                Ok(Appended::Done { held, result })
            }
            RequestEnd::Partial => Ok(Appended::Partial {
                held,
                total: meta.total_length,
            }),
        }
    }

    /// The byte at which the part of the head that is still missing ends: the fixed header
    /// first, then the whole head as that header declares it. A stored prefix that is not a
    /// bundle gives `held` (nothing more is stored; the head check refuses it).
    fn head_boundary(&self, id: &str, held: u64) -> u64 {
        let header_len = sideload_bundle::container::HEADER_LEN;
        if held < header_len {
            return header_len;
        }
        let mut header = [0u8; sideload_bundle::container::HEADER_LEN as usize];
        let read = std::fs::File::open(self.part(id)).and_then(|mut f| f.read_exact(&mut header));
        match read {
            Ok(()) => sideload_bundle::head_len(&header).unwrap_or(held),
            Err(_) => held,
        }
    }

    /// Checks the head if enough of it is in, and settles what that means for the upload: a
    /// duplicate ends it (its bytes deleted, the result recorded); a bundle that can never be
    /// taken loses its bytes; after a device-side problem (disk, I/O) the upload stays for a
    /// retry.
    async fn settle_head(
        &self,
        daemon: &Arc<Daemon>,
        meta: &mut UploadMeta,
        held: u64,
    ) -> Result<Option<UploadResult>, UploadError> {
        match self.check_head(daemon, meta, held).await {
            Ok(None) => Ok(None),
            Ok(Some(duplicate)) => {
                // Already on the device: nothing more to store.
                let _ = std::fs::remove_file(self.part(&meta.id));
                meta.result = Some(duplicate.clone());
                meta.updated_at = now();
                self.save(meta)?;
                Ok(Some(duplicate))
            }
            Err(e) => {
                if matches!(
                    &e,
                    UploadError::Refused(Refused {
                        permanent: true,
                        ..
                    }) | UploadError::TooLarge { .. }
                        | UploadError::BadRequest(_)
                ) {
                    self.remove(&meta.id);
                }
                Err(e)
            }
        }
    }

    /// Once enough bytes are in, checks the head; records the total length and bundle id.
    /// `Some(result)` when the bundle is already on the device (a duplicate).
    async fn check_head(
        &self,
        daemon: &Arc<Daemon>,
        meta: &mut UploadMeta,
        held: u64,
    ) -> Result<Option<UploadResult>, UploadError> {
        let part = self.part(&meta.id);
        let mut header = [0u8; 32];
        if held < header.len() as u64 {
            return Ok(None);
        }
        let mut read = || -> std::io::Result<std::fs::File> {
            let mut f = std::fs::File::open(&part)?;
            f.read_exact(&mut header)?;
            f.rewind()?;
            Ok(f)
        };
        let mut f = read().map_err(|e| UploadError::io("cannot read upload", e))?;
        let refuse = |r: Refused| {
            daemon.refusal(&r.bundle.clone(), &meta.name, &r);
            UploadError::Refused(r)
        };
        // The fixed header alone says whether this is a bundle and whether each length it
        // declares is within the limits: refused at byte 32, before the head is stored.
        let head_len = sideload_bundle::check_header(&header, &meta.name, &daemon.limits)
            .map_err(|e| refuse(Refused::from_error(&meta.name, &e)))?
            .head_len();
        if held < head_len {
            return Ok(None);
        }
        let (head, statement) = match daemon
            .check_head(&mut f, &meta.name)
            .map_err(|e| refuse(Refused::from_error(&meta.name, &e)))?
        {
            HeadCheck::Trusted(head, statement) => (head, statement),
            HeadCheck::Known(known) => {
                tracing::info!(upload = %meta.id, bundle = %meta.name, id = %known.id,
                    state = known.state.as_str(), "upload of a bundle the device already has; stopped");
                return Ok(Some(UploadResult::Accepted {
                    bundle: known.id,
                    intake: ApiIntake::Duplicate,
                }));
            }
        };
        let total = head.payload_offset() + statement.payload.size;
        let max = daemon.config.uploads.max_bundle_bytes;
        if total > max {
            return Err(UploadError::TooLarge {
                bundle: Some(meta.name.clone()),
                size: total,
                max,
            });
        }
        if let Some(declared) = meta.declared_length.filter(|&d| d != total) {
            return Err(BadRequest::LengthMismatch {
                bundle: meta.name.clone(),
                declared,
                total,
            }
            .into());
        }
        let max = daemon.config.uploads.max_concurrent_uploads;
        if self.trusted_active(&meta.id) >= max {
            return Err(UploadError::TooMany {
                bundle: meta.name.clone(),
                max,
            });
        }
        let apply = sideload_bundle::apply::space_needed(&statement, 1).unwrap_or(u64::MAX);
        let reserve = daemon.config.uploads.free_disk_reserve_bytes;
        self.check_space(
            daemon,
            &meta.name,
            total.saturating_sub(held),
            apply,
            reserve,
            true,
        )?;
        let id = statement.digest().to_string();
        tracing::info!(upload = %meta.id, bundle = %meta.name, id = %id, total, "bundle head trusted");
        meta.total_length = Some(total);
        meta.bundle_id = Some(id);
        self.save(meta).map(|_| None)
    }

    /// Hands a complete upload to intake.
    async fn finish(
        &self,
        daemon: &Arc<Daemon>,
        meta: &mut UploadMeta,
    ) -> Result<UploadResult, UploadError> {
        let incoming = daemon.bundles_dir().join(
            crate::incoming::Incoming::Upload {
                id: meta.id.clone(),
            }
            .file_name(),
        );
        std::fs::create_dir_all(daemon.bundles_dir())
            .and_then(|_| std::fs::rename(self.part(&meta.id), &incoming))
            .map_err(|e| UploadError::io("cannot move upload into the queue", e))?;
        crate::crash::reached(crate::crash::Step::UploadMoved);
        let d = daemon.clone();
        let name = meta.name.clone();
        let expected = meta.expected_digest.clone();
        let result = tokio::task::spawn_blocking(move || {
            match d.intake(&incoming, &name, "upload", expected.as_deref()) {
                Ok(Intake::Queued { bundle }) => UploadResult::Accepted {
                    bundle: bundle.id,
                    intake: ApiIntake::Queued,
                },
                Ok(Intake::Duplicate { bundle }) => UploadResult::Accepted {
                    bundle: bundle.id,
                    intake: ApiIntake::Duplicate,
                },
                Err(r) => UploadResult::Refused(r),
            }
        })
        .await
        .map_err(UploadError::IntakeStopped)?;
        if let UploadResult::Refused(r) = &result {
            if !r.permanent {
                // A device-side problem: the bytes go back to the upload, which a later PUT
                // (or the client's resume) finishes; no result is recorded.
                let incoming = daemon.bundles_dir().join(
                    crate::incoming::Incoming::Upload {
                        id: meta.id.clone(),
                    }
                    .file_name(),
                );
                if std::fs::rename(&incoming, self.part(&meta.id)).is_ok() {
                    return Err(UploadError::IntakeDeferred {
                        reason: r.reason.clone(),
                    });
                }
            }
        }
        meta.result = Some(result.clone());
        meta.updated_at = now();
        self.save(meta)?;
        crate::crash::reached(crate::crash::Step::UploadRecorded);
        Ok(result)
    }

    /// After start-up recovery: settles every upload a crash left between its last byte and
    /// its result (see [`Uploads::settle_one`]).
    pub fn settle(&self, daemon: &Daemon) {
        let sessions: Vec<Arc<Session>> = self.table().values().cloned().collect();
        for session in sessions {
            let Ok(mut meta) = session.meta.try_lock() else {
                continue;
            };
            if let Err(e) = self.settle_one(daemon, &mut meta) {
                tracing::warn!(upload = %meta.id, error = ?e, "cannot settle the upload");
            }
        }
    }

    /// The upload's result, settling it first when its bytes are no longer in `ID.part`: the
    /// bundle went into the journal (a crash or a lost answer after intake) gives that result;
    /// bytes that are gone altogether restart the upload at 0, head unchecked.
    fn settle_one(
        &self,
        daemon: &Daemon,
        meta: &mut UploadMeta,
    ) -> Result<Option<UploadResult>, UploadError> {
        if meta.result.is_some() || self.part(&meta.id).exists() {
            return Ok(meta.result.clone());
        }
        let live = meta
            .bundle_id
            .as_deref()
            .and_then(|b| daemon.journal.live(b));
        if let Some(b) = live {
            tracing::info!(upload = %meta.id, bundle = %meta.name, id = %b.id, state = b.state.as_str(),
                "upload settled from the journal");
            // At least once: the crash may have come after intake announced it.
            if b.state == crate::journal::State::Queued {
                daemon.announce(&b, "queued", None, None);
            }
            meta.result = Some(UploadResult::Accepted {
                bundle: b.id,
                intake: ApiIntake::Queued,
            });
        } else {
            tracing::warn!(upload = %meta.id, bundle = %meta.name, "the upload's bytes are gone; it starts again at 0");
            std::fs::File::create(self.part(&meta.id))
                .map_err(|e| UploadError::io("cannot create upload file", e))?;
            meta.total_length = None;
            meta.bundle_id = None;
        }
        meta.updated_at = now();
        self.save(meta)?;
        Ok(meta.result.clone())
    }

    /// Removes uploads idle too long: unchecked ones after `unchecked_idle_secs`, trusted and
    /// finished ones after `idle_secs` (see [`is_expired`]).
    pub async fn expire(&self, idle_secs: u64, unchecked_idle_secs: u64) {
        let now = now();
        let sessions: Vec<Arc<Session>> = self.table().values().cloned().collect();
        for session in sessions {
            let meta = session.snapshot();
            let settled = meta.result.is_some() || meta.total_length.is_some();
            let idle = now.saturating_sub(Self::last_activity(&session, &meta));
            if is_expired(settled, idle, idle_secs, unchecked_idle_secs) {
                tracing::info!(upload = %meta.id, bundle = %meta.name, trusted = settled, "idle upload expired");
                let _ = self.delete(&meta.id).await;
            }
        }
    }
}

/// What `create` found or made.
#[derive(Debug)]
pub enum Created {
    /// A new upload.
    New {
        /// Its id.
        id: String,
    },
    /// An unfinished upload of the same file: resume it.
    Existing {
        /// Its id.
        id: String,
        /// Bytes held.
        held: u64,
    },
    /// The bundle is already queued, applying or applied.
    Known(Box<crate::journal::BundleRecord>),
}

fn random_id() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random source works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How many bytes a request sent at `offset` repeats of the `held` the device has: a client a
/// little behind is not sent back (after a drop, bytes still queued on the old connection can
/// land after the client asked for the offset; the overlap is compared with what is stored and
/// skipped, which costs less than a 409 after the body has started to flow). Ahead of `held`,
/// or more than [`MAX_OVERLAP`] behind, is an offset mismatch. Pure.
pub fn overlap_at(offset: u64, held: u64) -> Result<u64, UploadError> {
    if offset > held || held - offset > MAX_OVERLAP {
        return Err(UploadError::OffsetMismatch { held });
    }
    Ok(held - offset)
}

/// The bytes of a frame to store now, decided before any is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Bytes from the front of the frame.
    pub take: usize,
    /// The frame goes past the bundle's declared length: the rest is refused.
    pub overflow: bool,
}

/// Which of `len` bytes arriving at `held` to store now. Until the head is checked (`total`
/// unknown) no byte past it is stored, however the client framed its bytes, so a bundle the
/// device refuses never has a payload byte on its disk (invariant 1): the piece ends at
/// `boundary`, the end of the part of the head still missing. Once the head is checked,
/// everything up to `total`; bytes past it overflow. Pure.
pub fn next_piece(len: usize, held: u64, total: Option<u64>, boundary: u64) -> Piece {
    match total {
        Some(total) if held + len as u64 > total => Piece {
            take: total.saturating_sub(held) as usize,
            overflow: true,
        },
        Some(_) => Piece {
            take: len,
            overflow: false,
        },
        None => Piece {
            take: boundary.saturating_sub(held).min(len as u64) as usize,
            overflow: false,
        },
    }
}

/// What the end of a request that stored bytes means for the upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestEnd {
    /// Every byte the head declares is in: intake takes the bundle.
    Whole,
    /// More to come (or the total is not known yet).
    Partial,
}

/// The upload's next state after a request: whole when it holds exactly the declared length.
/// Pure.
pub fn after_request(held: u64, total: Option<u64>) -> RequestEnd {
    match total {
        Some(total) if held == total => RequestEnd::Whole,
        _ => RequestEnd::Partial,
    }
}

/// What a frame's bytes did to the request.
enum Took {
    /// Stored; read on.
    More,
    /// The request ends here with this error; what was stored stays and the record is saved.
    Stop(UploadError),
    /// The request is answered now (a duplicate found at the head, or an error settling it).
    Return(Result<Appended, UploadError>),
}

/// Where a request reads its body from, and when it stops listening: the end, a cut, no byte
/// for the read timeout, a `DELETE`, or a newer request taking the upload over.
struct Listening {
    claims: tokio::sync::watch::Receiver<Claim>,
    mine: u64,
    claimed: bool,
    last_frame: tokio::time::Instant,
    read_timeout: std::time::Duration,
}

impl Listening {
    /// The next data of the body; `None` when the request ends.
    async fn next(
        &mut self,
        body: &mut LingeringBody,
        session: &Session,
        id: &str,
        held: u64,
    ) -> Option<bytes::Bytes> {
        loop {
            let read_timeout = self.read_timeout;
            // A client that vanishes without closing (a dead link) must not hold the upload:
            // no byte for `read_timeout` counts as a cut, and the lock is released.
            let frame = tokio::select! {
                frame = tokio::time::timeout(read_timeout, body.frame()) => match frame {
                    Ok(Some(frame)) => frame,
                    Ok(None) => return None,
                    Err(_) => {
                        tracing::info!(upload = %id, held, "no data for {read_timeout:?}; request treated as cut");
                        return None;
                    }
                },
                changed = self.claims.changed() => {
                    let claim = *self.claims.borrow_and_update();
                    if changed.is_err() || claim.force {
                        tracing::info!(upload = %id, held, "the upload is being deleted; this request ends here");
                        return None;
                    }
                    self.claimed = claim.generation != self.mine;
                    continue;
                }
                // A newer request wants the upload and this one has been idle: its link is
                // most likely dead, and the client has moved to a new connection.
                _ = tokio::time::sleep_until(self.last_frame + TAKEOVER_IDLE), if self.claimed => {
                    tracing::info!(upload = %id, held, "a newer request took the upload over; this one ends here");
                    return None;
                }
            };
            self.last_frame = tokio::time::Instant::now();
            *session
                .receiving_at
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
            match frame {
                Ok(f) => {
                    if let Ok(d) = f.into_data() {
                        return Some(d);
                    }
                }
                Err(e) => {
                    // The link dropped mid-request: keep what arrived.
                    tracing::info!(upload = %id, held, error = %e, "upload request cut short");
                    return None;
                }
            }
        }
    }
}

/// The upload's file while a request stores into it.
struct Receiving<'a> {
    uploads: &'a Uploads,
    daemon: &'a Arc<Daemon>,
    id: &'a str,
    file: tokio::fs::File,
    /// The stored file, to compare a repeated overlap with.
    stored: Option<std::fs::File>,
    held: u64,
    overlap: u64,
    skipped: u64,
    unsynced: u64,
}

impl<'a> Receiving<'a> {
    async fn open(
        uploads: &'a Uploads,
        daemon: &'a Arc<Daemon>,
        id: &'a str,
        held: u64,
        overlap: u64,
    ) -> Result<Receiving<'a>, UploadError> {
        let part = uploads.part(id);
        let stored = if overlap > 0 {
            Some(
                std::fs::File::open(&part)
                    .map_err(|e| UploadError::io(format!("cannot read upload {id}"), e))?,
            )
        } else {
            None
        };
        let file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(&part)
            .await
            .map_err(|e| UploadError::io(format!("cannot open upload {id}"), e))?;
        Ok(Receiving {
            uploads,
            daemon,
            id,
            file,
            stored,
            held,
            overlap,
            skipped: 0,
            unsynced: 0,
        })
    }

    /// Skips the front of `data` that repeats stored bytes, checking they are the same; the
    /// rest.
    fn skip_overlap<'d>(&mut self, name: &str, data: &'d [u8]) -> Result<&'d [u8], UploadError> {
        let n = self.overlap.min(data.len() as u64) as usize;
        let mut have = vec![0u8; n];
        let at = self.held - self.overlap;
        let same = self
            .stored
            .as_ref()
            .map(|f| std::os::unix::fs::FileExt::read_exact_at(f, &mut have, at))
            .is_some_and(|r| r.is_ok() && have == data[..n]);
        if !same {
            return Err(BadRequest::OtherFile {
                bundle: name.to_owned(),
                at,
            }
            .into());
        }
        self.overlap -= n as u64;
        self.skipped += n as u64;
        Ok(&data[n..])
    }

    /// Stores one frame's data, in pieces that end at the head's boundary until the head is
    /// checked; checks the head as soon as it is in.
    async fn take(&mut self, meta: &mut UploadMeta, data: &[u8]) -> Took {
        let mut data = data;
        if self.overlap > 0 {
            data = match self.skip_overlap(&meta.name, data) {
                Ok(rest) => rest,
                Err(e) => return Took::Stop(e),
            };
        }
        while !data.is_empty() {
            let boundary = match meta.total_length {
                Some(_) => 0,
                None => self.uploads.head_boundary(self.id, self.held),
            };
            let piece = next_piece(data.len(), self.held, meta.total_length, boundary);
            let now = &data[..piece.take];
            data = if piece.overflow {
                &[]
            } else {
                &data[piece.take..]
            };
            if let Err(e) = self.store(now).await {
                return Took::Stop(e);
            }
            if piece.overflow {
                let total = meta.total_length.unwrap_or(self.held);
                return Took::Stop(UploadError::Overflow {
                    bundle: meta.name.clone(),
                    held: total,
                });
            }
            if meta.total_length.is_none() {
                if let Some(took) = self.judge_head(meta, piece.take).await {
                    return took;
                }
            }
        }
        Took::More
    }

    /// Checks the head once its piece is stored; `None` to read on.
    async fn judge_head(&mut self, meta: &mut UploadMeta, piece: usize) -> Option<Took> {
        // tokio's File writes in the background: flush before reading the head back.
        if let Err(e) = self.file.flush().await {
            return Some(Took::Stop(UploadError::io(
                format!("cannot store upload {}", self.id),
                e,
            )));
        }
        match self.uploads.settle_head(self.daemon, meta, self.held).await {
            Err(e) => return Some(Took::Return(Err(e))),
            Ok(Some(duplicate)) => {
                return Some(Took::Return(Ok(Appended::Done {
                    held: self.held,
                    result: duplicate,
                })))
            }
            Ok(None) => {}
        }
        if piece == 0 && meta.total_length.is_none() {
            // Cannot happen (at its boundary the head is either judged or refused); refuse
            // rather than loop.
            return Some(Took::Stop(UploadError::HeadUnjudged {
                id: self.id.to_owned(),
                held: self.held,
            }));
        }
        None
    }

    /// Appends bytes to the file.
    async fn store(&mut self, now: &[u8]) -> Result<(), UploadError> {
        self.file
            .write_all(now)
            .await
            .map_err(|source| UploadError::Io {
                what: format!("cannot store upload {}", self.id),
                source,
                hint: "; free disk space on the device",
            })?;
        self.held += now.len() as u64;
        self.unsynced += now.len() as u64;
        self.daemon
            .metrics
            .upload_bytes
            .fetch_add(now.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Syncs every [`SYNC_EVERY`] bytes, so a power cut loses little of a long upload.
    async fn sync_now_and_then(&mut self) {
        if self.unsynced >= SYNC_EVERY {
            let _ = self.file.sync_data().await;
            self.unsynced = 0;
        }
    }

    async fn close(&mut self) {
        let _ = self.file.flush().await;
        let _ = self.file.sync_data().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_a_little_behind_resumes_and_one_ahead_is_sent_back() {
        assert_eq!(overlap_at(100, 100).unwrap(), 0);
        assert_eq!(overlap_at(90, 100).unwrap(), 10);
        assert_eq!(overlap_at(0, MAX_OVERLAP).unwrap(), MAX_OVERLAP);
        assert!(matches!(
            overlap_at(0, MAX_OVERLAP + 1),
            Err(UploadError::OffsetMismatch { held }) if held == MAX_OVERLAP + 1
        ));
        assert!(matches!(
            overlap_at(101, 100),
            Err(UploadError::OffsetMismatch { held: 100 })
        ));
    }

    #[test]
    fn no_byte_past_the_head_is_stored_before_the_head_is_judged() {
        // Head unknown, 40 of a 64-byte boundary held: a 100-byte frame stores 24 now.
        assert_eq!(
            next_piece(100, 40, None, 64),
            Piece {
                take: 24,
                overflow: false
            }
        );
        // At the boundary (a prefix that is not a bundle): nothing.
        assert_eq!(next_piece(100, 64, None, 64).take, 0);
        // Head judged: everything up to the declared total, the rest overflows.
        assert_eq!(
            next_piece(100, 40, Some(1000), 0),
            Piece {
                take: 100,
                overflow: false
            }
        );
        assert_eq!(
            next_piece(100, 950, Some(1000), 0),
            Piece {
                take: 50,
                overflow: true
            }
        );
        assert_eq!(
            next_piece(50, 950, Some(1000), 0),
            Piece {
                take: 50,
                overflow: false
            }
        );
    }

    #[test]
    fn an_upload_is_whole_exactly_at_its_declared_length() {
        assert_eq!(after_request(1000, Some(1000)), RequestEnd::Whole);
        assert_eq!(after_request(999, Some(1000)), RequestEnd::Partial);
        assert_eq!(after_request(64, None), RequestEnd::Partial);
    }

    fn u(id: &str, client: &str, last: u64) -> Unchecked {
        Unchecked {
            id: id.into(),
            client: Some(client.into()),
            last_activity: last,
        }
    }

    #[test]
    fn a_client_at_its_cap_evicts_its_own_stalest_upload_only() {
        let open = [
            u("a", "10.0.0.1", 5),
            u("b", "10.0.0.2", 1),
            u("c", "10.0.0.1", 3),
        ];
        assert_eq!(
            admit_unchecked(&open, "10.0.0.1", 16, 2),
            Admission::Evict("c".into())
        );
        assert_eq!(admit_unchecked(&open, "10.0.0.3", 16, 2), Admission::Admit);
    }

    #[test]
    fn a_full_budget_evicts_the_stalest_of_all() {
        let open = [
            u("a", "10.0.0.1", 5),
            u("b", "10.0.0.2", 1),
            u("c", "10.0.0.3", 3),
        ];
        assert_eq!(
            admit_unchecked(&open, "10.0.0.4", 3, 2),
            Admission::Evict("b".into())
        );
        assert_eq!(admit_unchecked(&open, "10.0.0.4", 4, 2), Admission::Admit);
        // Ties go by id, so the choice is stable.
        let tied = [u("y", "10.0.0.1", 1), u("x", "10.0.0.2", 1)];
        assert_eq!(
            admit_unchecked(&tied, "10.0.0.3", 2, 2),
            Admission::Evict("x".into())
        );
        // A zero budget never loops: nothing to evict means admit.
        assert_eq!(admit_unchecked(&[], "10.0.0.1", 0, 0), Admission::Admit);
    }

    #[test]
    fn an_upload_needs_room_for_its_rest_its_apply_and_the_reserve() {
        assert_eq!(space_shortfall(100, 40, 50, 10), None);
        assert_eq!(space_shortfall(99, 40, 50, 10), Some(100));
        // A full disk refuses even an upload's record.
        assert_eq!(space_shortfall(0, UPLOAD_FLOOR, 0, 0), Some(UPLOAD_FLOOR));
        // Declared sizes that overflow never pass.
        assert_eq!(
            space_shortfall(u64::MAX - 1, u64::MAX, 1, 0),
            Some(u64::MAX)
        );
    }

    #[test]
    fn unchecked_uploads_expire_in_minutes_trusted_ones_in_days() {
        let (idle, unchecked) = (30 * 24 * 3600, 300);
        assert!(!is_expired(false, 300, idle, unchecked));
        assert!(is_expired(false, 301, idle, unchecked));
        assert!(!is_expired(true, 301, idle, unchecked));
        assert!(is_expired(true, idle + 1, idle, unchecked));
    }
}
