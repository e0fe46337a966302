//! The daemon's shared state and its single intake path: uploads, the inbox and the USB loader
//! all hand a whole bundle file to [`Daemon::intake`], which checks it and queues it; the
//! queue worker ([`Daemon::run_queue`]) applies queued bundles one at a time.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sideload_bundle::{judge_head, Claims, Error as BundleError, Holdings, Limits, Trust, Verdict};
use sideload_signing::{Statement, TrustPolicy};
use tokio::sync::Notify;

use crate::config::Config;
use crate::crash::{self, Step};
use crate::events::{Event, EventSpool};
use crate::journal::{BundleRecord, Journal, NewBundle, State};
use crate::sink::Sink;
use crate::upstream::Upstream;

/// How often the queue worker looks whether the cause of a waiting bundle is gone.
const WAIT_CHECK: Duration = Duration::from_secs(5);

/// Counters for `/metrics` that the journal does not hold.
#[derive(Default)]
pub struct Metrics {
    /// Bundle bytes received through the upload API.
    pub upload_bytes: AtomicU64,
    /// Applies finished (either way) and the seconds they took.
    pub applies: AtomicU64,
    /// Sum of apply durations, milliseconds.
    pub apply_millis: AtomicU64,
    /// Duration of the last apply, milliseconds.
    pub last_apply_millis: AtomicU64,
}

/// Everything the daemon's tasks share.
pub struct Daemon {
    /// The configuration as loaded.
    pub config: Config,
    /// Durable record of bundles and sequences.
    pub journal: Arc<Journal>,
    /// Who may sign what.
    pub policy: Arc<TrustPolicy>,
    /// Caps on what a bundle may declare.
    pub limits: Limits,
    /// The local registry.
    pub upstream: Upstream,
    /// Outbound announcements of state changes.
    pub events: EventSpool,
    /// Wakes the queue worker.
    pub queue: Notify,
    /// The container engine, when configured (`config.engine` holds its settings).
    pub engine: Option<Sink>,
    /// Counters.
    pub metrics: Metrics,
    /// Serializes the end of intake (duplicate check, move into the store, enqueue).
    pub intake_lock: std::sync::Mutex<()>,
    /// The disk reserve freed to record a full disk.
    pub ballast: crate::ballast::Ballast,
}

/// How a delivery ended at intake.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Intake {
    /// Trusted, whole and new: queued for apply.
    Queued {
        /// The journal record.
        bundle: BundleRecord,
    },
    /// The same statement is already queued, applying or applied; the copy was dropped.
    Duplicate {
        /// The existing record.
        bundle: BundleRecord,
    },
}

/// What a head check found.
#[derive(Debug)]
pub enum HeadCheck {
    /// Trusted: the head and its statement.
    Trusted(sideload_bundle::BundleHead, Box<Statement>),
    /// The same statement is already queued, applying or applied: a duplicate delivery.
    Known(Box<BundleRecord>),
}

impl Refused {
    /// As the API answers it: the refusal of this delivery, to be retried when not permanent.
    pub fn refusal(&self) -> sideload_device_api::Refusal {
        sideload_device_api::Refusal::new(&self.code, &self.reason, &self.advice)
            .of_bundle(&self.bundle)
            .retryable(!self.permanent)
    }
}

/// A delivery that was not taken: the reason and what to do. The file was not queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Refused {
    /// The bundle's name.
    pub bundle: String,
    /// Stable code (`untrusted_key`, `expired`, `truncated`, ...).
    pub code: String,
    /// What is wrong.
    pub reason: String,
    /// What to do.
    pub advice: String,
    /// True if the bundle itself is bad (untrusted, damaged); false if the device could not
    /// take it now (I/O error), which a retry may fix.
    pub permanent: bool,
    /// The statement's signatures verified (an expired or rolled-back bundle, a damaged
    /// payload): only a signer can cause such a refusal, so its event is never dropped and
    /// its journal entry is kept. False for untrusted deliveries, which anyone can send.
    #[serde(default)]
    pub verified: bool,
}

impl Refused {
    /// A refusal from an engine error.
    pub fn from_error(bundle: &str, e: &BundleError) -> Refused {
        Refused {
            bundle: bundle.to_owned(),
            code: e.code().to_owned(),
            reason: e.to_string(),
            advice: e.advice().to_owned(),
            permanent: e.is_refusal(),
            verified: statement_verified(e),
        }
    }

    /// The same refusal, of a bundle whose statement is known to have verified.
    pub fn verified(mut self) -> Refused {
        self.verified = true;
        self
    }
}

/// Whether an error from checking a head means the statement's signatures verified: the
/// trust policy checks signatures first and expiry and the sequence floor after, so only
/// those refusals come from a signed statement. Pure.
pub fn statement_verified(e: &BundleError) -> bool {
    use sideload_signing::Refusal;
    matches!(
        e,
        BundleError::Refused {
            refusal: Refusal::Expired { .. } | Refusal::Rollback { .. },
            ..
        }
    )
}

impl Daemon {
    /// Where the journal lives.
    pub fn journal_path(&self) -> PathBuf {
        self.config.data_dir.join("journal.sqlite")
    }

    /// Where whole, trusted bundles wait for apply.
    pub fn bundles_dir(&self) -> PathBuf {
        self.config.data_dir.join("bundles")
    }

    /// Most bytes a head may take before its limits are known to be broken: a receiver that
    /// holds this many bytes and still has no whole head refuses the bundle.
    pub fn head_cap(&self) -> u64 {
        sideload_bundle::container::HEADER_LEN
            + u64::from(self.limits.max_statement)
            + u64::from(self.limits.max_signature_slot)
    }

    /// Checks the head of a bundle from its first bytes (the payload may still be missing).
    /// A statement already queued, applying or applied is [`HeadCheck::Known`] before anything
    /// else (a second copy of an applied bundle is a duplicate, not a rollback); otherwise
    /// signatures, expiry, sequence floor and limits decide.
    pub fn check_head(&self, reader: &mut impl Read, name: &str) -> Result<HeadCheck, BundleError> {
        // read_head checks each declared length against the limits before reading it.
        let head = sideload_bundle::read_head(reader, name, &self.limits)?;
        let holdings = match Claims::of(&head) {
            Some(claims) => self.holdings(&claims)?,
            None => Holdings::none(),
        };
        let trust = Trust {
            policy: &self.policy,
            limits: &self.limits,
            now: crate::journal::now(),
        };
        Ok(match judge_head(head, &trust, holdings)? {
            Verdict::Trusted(head, statement) => HeadCheck::Trusted(head, statement),
            Verdict::AlreadyHere(known) => HeadCheck::Known(Box::new(known)),
        })
    }

    /// What the journal holds for a head's claims: the live record of its statement, else the
    /// sequence floor of its repository.
    fn holdings(&self, claims: &Claims) -> Result<Holdings<BundleRecord>, BundleError> {
        if let Some(known) = self.journal.live(&claims.statement_digest) {
            return Ok(Holdings {
                known: Some(known),
                sequence_floor: None,
            });
        }
        let floor = self
            .journal
            .sequence(&claims.repository)
            .map_err(|e| BundleError::Io {
                what: "reading the journal",
                path: self.journal_path(),
                source: std::io::Error::other(e),
            })?;
        Ok(Holdings::floor(floor))
    }

    /// The one intake path. `path` is a whole bundle file already in [`bundles_dir`]
    /// (moved there by the caller, so it is the daemon's own copy). Checks the head, then in
    /// one read of the file its digest against `declared` (the `Bundle-Digest` a client
    /// declared, `file_digest_mismatch` otherwise) and the payload's against the statement;
    /// drops duplicates, and queues the rest with its file digest. On a permanent refusal the
    /// file is removed (quarantining an inbox file is the inbox's job); after a device-side
    /// error it stays at `path` for the caller to put back and retry.
    /// Blocking: hashes the whole file; call from a blocking thread.
    pub fn intake(
        &self,
        path: &Path,
        name: &str,
        source: &str,
        declared: Option<&str>,
    ) -> Result<Intake, Refused> {
        let result = self.intake_inner(path, name, source, declared);
        match &result {
            Ok(Intake::Queued { bundle }) => {
                self.announce(bundle, "queued", None, None);
                self.queue.notify_one();
            }
            Ok(Intake::Duplicate { bundle }) => {
                let _ = std::fs::remove_file(path);
                tracing::info!(bundle = %name, id = %bundle.id, state = bundle.state.as_str(),
                    "duplicate delivery dropped");
            }
            // A bundle that can never be taken loses its bytes; after a device-side problem
            // (I/O, journal) the file stays where the caller put it, for the caller to retry.
            Err(refused) if refused.permanent => {
                let _ = std::fs::remove_file(path);
                self.refusal(&refused.bundle, name, refused);
            }
            Err(refused) => {
                tracing::warn!(bundle = %name, reason = %refused.reason, "delivery could not be taken now; kept for a retry");
            }
        }
        result
    }

    fn intake_inner(
        &self,
        path: &Path,
        name: &str,
        source: &str,
        declared: Option<&str>,
    ) -> Result<Intake, Refused> {
        let refuse = |e: BundleError| Refused::from_error(name, &e);
        let mut file = std::fs::File::open(path).map_err(|e| {
            refuse(BundleError::Io {
                what: "opening bundle",
                path: path.into(),
                source: e,
            })
        })?;
        let (head, statement) = match self.check_head(&mut file, name).map_err(refuse)? {
            HeadCheck::Trusted(head, statement) => (head, statement),
            HeadCheck::Known(existing) => return Ok(Intake::Duplicate { bundle: *existing }),
        };
        // From here on the statement verified: a refusal is about a signed bundle.
        let refuse = |e: BundleError| refuse(e).verified();
        let actual = file
            .metadata()
            .map_err(|e| {
                refuse(BundleError::Io {
                    what: "reading bundle",
                    path: path.into(),
                    source: e,
                })
            })?
            .len();
        sideload_bundle::check_file_length(
            name,
            head.payload_offset(),
            statement.payload.size,
            actual,
        )
        .map_err(refuse)?;
        let digests =
            sideload_bundle::digest_bundle_file(&mut file, &head, path).map_err(refuse)?;
        if let Some(declared) = declared.filter(|d| *d != digests.file.as_str()) {
            return Err(file_digest_mismatch(name, declared, &digests.file));
        }
        sideload_bundle::check_payload(name, &statement, &digests.payload, digests.payload_len)
            .map_err(refuse)?;
        crash::reached(Step::IntakeChecked);
        let new = new_bundle(&statement, name, source, Some(digests.file.to_string()));
        self.store_and_enqueue(path, &new, refuse)
    }

    /// Keeps a checked bundle under its statement digest and queues it, unless the same
    /// statement became live meanwhile.
    fn store_and_enqueue(
        &self,
        path: &Path,
        new: &NewBundle,
        refuse: impl Fn(BundleError) -> Refused,
    ) -> Result<Intake, Refused> {
        let id = &new.id;
        // One delivery at a time from here: two copies of one bundle arriving together must
        // not both move into the single place the queue reads it from.
        let _serial = self.intake_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = self.journal.live(id) {
            return Ok(Intake::Duplicate { bundle: existing });
        }
        // The file is kept under its statement digest, so the queue finds it by id.
        let stored = self.stored_bundle(id);
        if path != stored {
            std::fs::rename(path, &stored).map_err(|e| {
                refuse(BundleError::Io {
                    what: "storing bundle as",
                    path: stored.clone(),
                    source: e,
                })
            })?;
            // Best effort: the rename stands either way; a power cut may undo it, which
            // recovery handles.
            let _ = sideload_bundle::fsutil::sync_dir(&self.bundles_dir());
        }
        crash::reached(Step::IntakeStored);
        match self.journal.enqueue(new) {
            Ok(None) => {
                crash::reached(Step::IntakeJournaled);
                Ok(Intake::Queued {
                    bundle: self.journal.get(id).ok().flatten().expect("just inserted"),
                })
            }
            Ok(Some(existing)) => {
                // Cannot happen under the lock (checked above); the stored file is the
                // live bundle's, so it stays.
                Ok(Intake::Duplicate { bundle: existing })
            }
            Err(e) => {
                // Back where it came from, for a retry.
                let _ = std::fs::rename(&stored, path);
                Err(refuse(BundleError::Io {
                    what: "writing the journal",
                    path: self.journal_path(),
                    source: std::io::Error::other(e),
                }))
            }
        }
    }
}

/// The refusal of a whole file that does not hash to the `Bundle-Digest` its client
/// declared. Pure.
fn file_digest_mismatch(name: &str, declared: &str, actual: &sideload_signing::Digest) -> Refused {
    Refused {
        bundle: name.to_owned(),
        code: "file_digest_mismatch".into(),
        reason: format!(
            "{name}: the uploaded bytes hash to {actual}, the client declared {declared}"
        ),
        advice: "the copy was damaged on the way: upload the bundle again".into(),
        permanent: true,
        // Only a bundle whose head was trusted gets this far.
        verified: true,
    }
}

/// The journal's new record for a checked bundle. Pure.
fn new_bundle(
    statement: &Statement,
    name: &str,
    source: &str,
    file_digest: Option<String>,
) -> NewBundle {
    NewBundle {
        id: statement.digest().to_string(),
        name: name.to_owned(),
        file_digest,
        repository: statement.target.repository.to_string(),
        tags: statement
            .target
            .tags
            .iter()
            .map(|t| t.to_string())
            .collect(),
        sequence: statement.sequence,
        manifest_digest: statement.target.manifest_digest.to_string(),
        ordered_by: statement.ordered_by.clone(),
        contact: statement.contact.clone(),
        source: source.to_owned(),
    }
}

impl Daemon {
    /// Where the bundle with statement digest `id` is kept until applied.
    pub fn stored_bundle(&self, id: &str) -> PathBuf {
        let hex = id.strip_prefix("sha256:").unwrap_or(id);
        self.bundles_dir().join(format!("{hex}.bundle"))
    }

    /// Records and announces a refusal. A refusal of an untrusted delivery (anyone can cause
    /// one) goes into the journal's bounded set of such refusals and the event spool's small
    /// ring; one of a bundle whose statement verified is kept like any state change.
    pub fn refusal(&self, bundle: &str, name: &str, refused: &Refused) {
        tracing::warn!(bundle = %name, code = %refused.code, reason = %refused.reason,
            advice = %refused.advice, verified = refused.verified, "bundle refused");
        let keep = (!refused.verified).then_some(self.config.journal.max_untrusted_refusals);
        if let Err(e) = self.ballast.released_retry(|| {
            self.journal
                .record_refusal(bundle, name, &refused.reason, keep)
        }) {
            tracing::warn!(error = %e, "cannot record the refusal in the journal");
        }
        let event = Event {
            seq: 0,
            at: 0,
            device: self.config.device_id.clone(),
            bundle: name.to_owned(),
            repository: String::new(),
            state: "refused".into(),
            reason: Some(refused.reason.clone()),
            advice: Some(refused.advice.clone()),
            details: serde_json::json!({ "code": refused.code }),
        };
        let stored = self.ballast.released_retry(|| {
            if refused.verified {
                self.events.emit(event.clone())
            } else {
                self.events.emit_untrusted(event.clone())
            }
        });
        if let Err(e) = stored {
            tracing::warn!(error = %e, "cannot spool event");
        }
    }

    /// Announces a state change of a journaled bundle.
    pub fn announce(
        &self,
        b: &BundleRecord,
        state: &str,
        reason: Option<&str>,
        advice: Option<&str>,
    ) {
        self.emit(Event {
            seq: 0,
            at: 0,
            device: self.config.device_id.clone(),
            bundle: b.id.clone(),
            repository: b.repository.clone(),
            state: state.to_owned(),
            reason: reason.map(str::to_owned),
            advice: advice.map(str::to_owned),
            details: serde_json::json!({
                "name": b.name,
                "tags": b.tags,
                "sequence": b.sequence,
                "manifest_digest": b.manifest_digest,
                "ordered_by": b.ordered_by,
                "source": b.source,
            }),
        });
    }

    fn emit(&self, event: Event) {
        if let Err(e) = self
            .ballast
            .released_retry(|| self.events.emit(event.clone()))
        {
            tracing::warn!(error = %e, "cannot spool event");
        }
    }

    /// Applies queued bundles one at a time, oldest first, until `shutdown` fires. A stop
    /// request waits for the current apply to finish (systemd's TimeoutStopSec bounds it;
    /// a kill mid-apply is recovered at the next start).
    pub async fn run_queue(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut engine_checked: Option<std::time::Instant> = None;
        let mut engine_backoff = crate::reconcile::Backoff::default();
        let mut wait_backoff = HashMap::new();
        loop {
            if *shutdown.borrow() {
                return;
            }
            // Between applies, every `[engine] retry_secs`: images the engine did not take.
            let retry = std::time::Duration::from_secs(
                self.config
                    .engine
                    .as_ref()
                    .map_or(60, |e| e.retry_secs.max(1)),
            );
            if engine_checked.is_none_or(|t| t.elapsed() >= retry) {
                self.retry_engine_loads(&mut engine_backoff).await;
                engine_checked = Some(std::time::Instant::now());
            }
            self.ballast.ensure();
            let waiting = self.retry_waiting(&mut wait_backoff).await;
            let next = match self.journal.in_state(State::Queued) {
                Ok(q) => q.into_iter().next(),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the queue from the journal");
                    None
                }
            };
            match next {
                Some(b) => self.apply_one(b).await,
                None => {
                    tokio::select! {
                        _ = self.queue.notified() => {}
                        _ = shutdown.changed() => {}
                        _ = tokio::time::sleep(if waiting { WAIT_CHECK } else { retry.min(Duration::from_secs(60)) }) => {}
                    }
                }
            }
        }
    }

    async fn apply_one(&self, b: BundleRecord) {
        let started = std::time::Instant::now();
        if let Err(e) = self.journal.set_state(&b.id, State::Applying, None, None) {
            tracing::error!(error = %e, "cannot write the journal; apply postponed");
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            return;
        }
        self.announce(&b, "applying", None, None);
        crash::reached(Step::ApplyStarted);
        tracing::info!(bundle = %b.name, id = %b.id, repository = %b.repository, "applying");
        let path = self.stored_bundle(&b.id);
        let device = crate::rebuild::ApplyContext {
            upstream: &self.upstream,
            staging_root: self.config.data_dir.join("staging"),
            policy: &self.policy,
            limits: &self.limits,
            journal: &self.journal,
        };
        let result = crate::rebuild::rebuild(&device, &path, &b.name).await;
        let millis = started.elapsed().as_millis() as u64;
        self.metrics.applies.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .apply_millis
            .fetch_add(millis, Ordering::Relaxed);
        self.metrics
            .last_apply_millis
            .store(millis, Ordering::Relaxed);
        match result {
            Ok(statement) => {
                crash::reached(Step::ApplyTagged);
                self.finish_applied(&b, &path, &statement, millis).await;
            }
            Err(failure) => self.apply_failed(&b, &path, failure),
        }
    }

    /// After the tags moved: journal, announce, remove the stored file, load the engine, in
    /// that order (recovery finishes the same order from any point, see [`crate::recover`]).
    async fn finish_applied(
        &self,
        b: &BundleRecord,
        path: &Path,
        statement: &Statement,
        millis: u64,
    ) {
        // The tag has moved: the sequence floor must follow before anything else is
        // applied, or an older bundle queued earlier could move the tag back.
        let mut delay = 1;
        while let Err(e) = self.ballast.released_retry(|| {
            self.journal
                .mark_applied(&b.id, &b.repository, statement.sequence)
        }) {
            tracing::error!(error = %e, "image applied but the journal cannot record it; the queue waits until it can");
            tokio::time::sleep(std::time::Duration::from_secs(delay)).await;
            delay = (delay * 2).min(60);
        }
        crash::reached(Step::ApplyJournaled);
        tracing::info!(bundle = %b.name, repository = %b.repository, tags = ?b.tags,
            manifest = %b.manifest_digest, millis, "applied");
        self.announce(b, "applied", None, None);
        crash::reached(Step::ApplyAnnounced);
        self.remove_stored(path);
        crash::reached(Step::ApplyCleaned);
        if let (Some(engine), Some(settings)) = (&self.engine, &self.config.engine) {
            let outcome = match load_into_engine(engine, settings, statement).await {
                Ok(loaded) => {
                    self.announce(b, "engine-loaded", None, None);
                    engine_outcome(&loaded)
                }
                Err(e) => {
                    tracing::warn!(bundle = %b.name, error = %e, "container engine did not take the image");
                    self.announce(b, "engine-failed", Some(&e.to_string()), Some(e.advice()));
                    format!("failed: {e}")
                }
            };
            let _ = self.journal.set_engine(&b.id, &outcome);
        }
    }

    /// A failed apply: one whose cause passes keeps its stored file and waits
    /// ([`State::Waiting`], retried by [`Daemon::retry_waiting`]); any other fails and its file
    /// is removed (after the journal says so: a crash between is finished by recovery).
    fn apply_failed(&self, b: &BundleRecord, path: &Path, failure: crate::rebuild::ApplyFailure) {
        let (reason, transient) = (failure.reason(), failure.transient());
        tracing::warn!(bundle = %b.name, %reason, advice = %failure.advice(),
            ?transient, "apply failed");
        if transient.is_some() {
            let advice = format!(
                "{}; the bundle is kept on the device and applied again once the cause is gone (or delete it: DELETE /sideload/v1/admin/bundles/{})",
                failure.advice(),
                b.id
            );
            let recorded = self.ballast.released_retry(|| {
                self.journal
                    .set_state(&b.id, State::Waiting, Some(&reason), Some(&advice))
            });
            if let Err(e) = recorded {
                tracing::error!(error = %e, "cannot record the wait in the journal");
            }
            self.announce(b, "waiting", Some(&reason), Some(&advice));
            return;
        }
        let recorded = self.ballast.released_retry(|| {
            self.journal
                .set_state(&b.id, State::Failed, Some(&reason), Some(failure.advice()))
        });
        if let Err(e) = recorded {
            tracing::error!(error = %e, "cannot record the failure in the journal");
        }
        self.remove_stored(path);
        self.announce(b, "failed", Some(&reason), Some(failure.advice()));
    }

    /// Puts waiting bundles back into the queue once their cause looks gone (the registry
    /// answers, the data directory has the room the apply needs). A bundle that fails again
    /// waits longer before its next try (`backoff`, doubling from 5 s to 30 min), so a cause
    /// the device cannot see (the registry's own disk) costs a try now and then, not a loop.
    /// Returns true while bundles wait, so the worker looks again in [`WAIT_CHECK`].
    pub(crate) async fn retry_waiting(
        &self,
        backoff: &mut HashMap<String, (Instant, Duration)>,
    ) -> bool {
        let Ok(waiting) = self.journal.in_state(State::Waiting) else {
            return false;
        };
        let any = !waiting.is_empty();
        backoff.retain(|id, _| waiting.iter().any(|b| &b.id == id));
        for b in waiting {
            let now = Instant::now();
            if backoff.get(&b.id).is_some_and(|(at, _)| now < *at) {
                continue;
            }
            if let Some(blocker) = self.apply_blocker(&b).await {
                tracing::debug!(bundle = %b.name, %blocker, "waiting bundle still blocked");
                continue;
            }
            let delay = backoff.get(&b.id).map_or(Duration::from_secs(5), |(_, d)| {
                (*d * 2).min(Duration::from_secs(1800))
            });
            backoff.insert(b.id.clone(), (now + delay, delay));
            tracing::info!(bundle = %b.name, id = %b.id, "the cause of the wait looks gone; applied again");
            if self
                .journal
                .set_state(
                    &b.id,
                    State::Queued,
                    Some("retried: the cause of the wait is gone"),
                    None,
                )
                .is_ok()
            {
                self.announce(&b, "queued", None, None);
            }
        }
        any
    }

    /// What still keeps a waiting bundle from applying, if anything the device can see.
    async fn apply_blocker(&self, b: &BundleRecord) -> Option<String> {
        if let Err(e) = self.upstream.ping().await {
            return Some(e.to_string());
        }
        let needed = apply_space(&self.stored_bundle(&b.id))?;
        let free = fs4::available_space(&self.config.data_dir).ok()?;
        (free < needed).then(|| format!("the apply needs {needed} bytes free, {free} are"))
    }

    /// The operator's removal of a bundle the device holds but has not applied (queued or
    /// waiting): its stored file is deleted and it is marked failed.
    pub fn delete_bundle(&self, id: &str) -> Result<BundleRecord, DeleteError> {
        let _serial = self.intake_lock.lock().unwrap_or_else(|p| p.into_inner());
        let b = self
            .journal
            .get(id)
            .map_err(|e| DeleteError::Journal(e.to_string()))?
            .ok_or_else(|| DeleteError::Unknown(id.to_owned()))?;
        if !matches!(b.state, State::Queued | State::Waiting) {
            return Err(DeleteError::NotHeld(Box::new(b)));
        }
        let reason = format!("{}: deleted by the operator", b.name);
        let advice = "deliver the bundle again to apply it";
        self.journal
            .set_state(&b.id, State::Failed, Some(&reason), Some(advice))
            .map_err(|e| DeleteError::Journal(e.to_string()))?;
        self.remove_stored(&self.stored_bundle(&b.id));
        self.announce(&b, "failed", Some(&reason), Some(advice));
        tracing::info!(bundle = %b.name, id = %b.id, "bundle deleted by the operator");
        Ok(b)
    }
}

/// Why the operator's delete of a bundle did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    /// No such bundle in the journal.
    #[error("no bundle {0} in the journal")]
    Unknown(String),
    /// The bundle is applying, applied, failed or refused: the device holds no copy to delete.
    #[error("bundle {} is {}: the device holds no copy of it to delete", .0.id, .0.state.as_str())]
    NotHeld(Box<BundleRecord>),
    /// The journal could not be read or written.
    #[error("the journal: {0}")]
    Journal(String),
}

/// Disk bytes applying the stored bundle at `path` needs, from its statement.
pub fn apply_space(path: &Path) -> Option<u64> {
    let (head, _) = sideload_bundle::open_bundle(path, &Limits::default()).ok()?;
    let statement = Statement::from_canonical_json(&head.statement_bytes).ok()?;
    sideload_bundle::apply::space_needed(&statement, 1)
}

/// Loads an applied bundle's image into the engine under every name a deployment may use.
pub(crate) async fn load_into_engine(
    engine: &Sink,
    settings: &crate::sink::SinkConfig,
    statement: &Statement,
) -> Result<crate::sink::Loaded, crate::sink::SinkError> {
    let target = &statement.target;
    let applied = crate::names::Applied {
        repository: &target.repository,
        tags: &target.tags,
        manifest_digest: &target.manifest_digest,
    };
    engine.load(settings, &applied, &target.config_digest).await
}

/// The journal's one-line engine outcome: the ID, the names it resolves under, and the names a
/// deployment might use that this engine cannot hold.
pub(crate) fn engine_outcome(loaded: &crate::sink::Loaded) -> String {
    let mut outcome = format!(
        "loaded as {} under {}",
        loaded.id,
        loaded.references.join(", ")
    );
    if !loaded.unreachable.is_empty() {
        outcome.push_str(&format!(
            "; not resolvable in this engine: {} (pin deployments to the device-local name)",
            loaded.unreachable.join(", ")
        ));
    }
    outcome
}
