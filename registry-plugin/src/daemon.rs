//! The daemon's shared state and its single intake path: uploads, the inbox and the USB loader
//! all hand a whole bundle file to [`Daemon::intake`], which checks it and queues it; the
//! queue worker ([`Daemon::run_queue`]) applies queued bundles one at a time.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;
use sideload_bundle::{Error as BundleError, Limits};
use sideload_signing::{Statement, TrustPolicy};
use tokio::sync::Notify;

use crate::config::Config;
use crate::events::{Event, EventSpool};
use crate::journal::{BundleRecord, Journal, NewBundle, State};
use crate::sink::Sink;
use crate::upstream::Upstream;

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
        if let Ok(unverified) = Statement::from_canonical_json(&head.statement_bytes) {
            let id = unverified.digest().to_string();
            if let Some(known) = self.journal.live(&id) {
                return Ok(HeadCheck::Known(Box::new(known)));
            }
        }
        let mut journal_error = None;
        let ctx = sideload_bundle::floor_context(&head, crate::journal::now(), |repo| {
            self.journal.sequence(repo).unwrap_or_else(|e| {
                journal_error = Some(e);
                None
            })
        });
        if let Some(e) = journal_error {
            return Err(BundleError::Io {
                what: "reading the journal",
                path: self.journal_path(),
                source: std::io::Error::other(e),
            });
        }
        let (head, statement) =
            sideload_bundle::trust_head(head, &self.policy, &ctx, &self.limits)?;
        Ok(HeadCheck::Trusted(head, Box::new(statement)))
    }

    /// The one intake path. `path` is a whole bundle file already in [`bundles_dir`]
    /// (moved there by the caller, so it is the daemon's own copy). Checks the head and the
    /// payload digest, drops duplicates, and queues the rest. On a permanent refusal the file
    /// is removed (quarantining an inbox file is the inbox's job); after a device-side error
    /// it stays at `path` for the caller to put back and retry.
    /// Blocking: hashes the whole payload; call from a blocking thread.
    pub fn intake(
        &self,
        path: &Path,
        name: &str,
        source: &str,
        file_digest: Option<String>,
    ) -> Result<Intake, Refused> {
        let result = self.intake_inner(path, name, source, file_digest);
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
        file_digest: Option<String>,
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
        let id = statement.digest().to_string();
        let expected = head.payload_offset() + statement.payload.size;
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
        if actual != expected {
            return Err(refuse(if actual < expected {
                BundleError::Truncated {
                    bundle: name.to_owned(),
                    part: "payload",
                    expected: statement.payload.size,
                    available: actual.saturating_sub(head.payload_offset()),
                }
            } else {
                BundleError::SizeMismatch {
                    bundle: name.to_owned(),
                    expected,
                    actual,
                }
            }));
        }
        sideload_bundle::check_payload_digest(&mut file, &head, &statement, path)
            .map_err(refuse)?;
        let new = NewBundle {
            id: id.clone(),
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
        };
        // One delivery at a time from here: two copies of one bundle arriving together must
        // not both move into the single place the queue reads it from.
        let _serial = self.intake_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = self.journal.live(&id) {
            return Ok(Intake::Duplicate { bundle: existing });
        }
        // The file is kept under its statement digest, so the queue finds it by id.
        let stored = self.stored_bundle(&id);
        if path != stored {
            std::fs::rename(path, &stored).map_err(|e| {
                refuse(BundleError::Io {
                    what: "storing bundle as",
                    path: stored.clone(),
                    source: e,
                })
            })?;
        }
        match self.journal.enqueue(&new) {
            Ok(None) => Ok(Intake::Queued {
                bundle: self.journal.get(&id).ok().flatten().expect("just inserted"),
            }),
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
        if let Err(e) = self
            .journal
            .record_refusal(bundle, name, &refused.reason, keep)
        {
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
        let stored = if refused.verified {
            self.events.emit(event)
        } else {
            self.events.emit_untrusted(event)
        };
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
        if let Err(e) = self.events.emit(event) {
            tracing::warn!(error = %e, "cannot spool event");
        }
    }

    /// On start: bundles caught mid-apply by a crash go back to the queue (apply is
    /// idempotent: blobs are content-addressed and the tag moves last); queued bundles whose
    /// file is gone fail with a reason; leftover staging is removed.
    pub fn recover(&self) -> anyhow::Result<()> {
        let staging = self.config.data_dir.join("staging");
        if staging.exists() {
            std::fs::remove_dir_all(&staging)?;
        }
        self.recover_incoming()?;
        for b in self.journal.in_state(State::Applying)? {
            tracing::warn!(bundle = %b.name, id = %b.id, "apply was interrupted; queued again");
            self.journal.set_state(
                &b.id,
                State::Queued,
                Some("apply interrupted by a restart; retried"),
                None,
            )?;
        }
        for b in self.journal.in_state(State::Queued)? {
            if !self.stored_bundle(&b.id).exists() {
                let reason = format!("{}: the stored bundle file is missing", b.name);
                let advice = "deliver the bundle again";
                self.journal
                    .set_state(&b.id, State::Failed, Some(&reason), Some(advice))?;
                self.announce(&b, "failed", Some(&reason), Some(advice));
            }
        }
        Ok(())
    }

    /// Files caught between their delivery and the queue (`bundles/*.incoming`) go back where
    /// they came from: an upload's bytes to its upload (whose client finishes it with a PUT),
    /// an inbox file to the inbox (taken again at the next scan).
    fn recover_incoming(&self) -> std::io::Result<()> {
        let Ok(entries) = std::fs::read_dir(self.bundles_dir()) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".incoming") else {
                continue;
            };
            let back = match stem.strip_prefix("inbox-") {
                Some(file) => self.config.inbox_dir().join(file),
                None => self
                    .config
                    .data_dir
                    .join("uploads")
                    .join(format!("{stem}.part")),
            };
            let has_owner = back.parent().map(|d| d.exists()).unwrap_or(false)
                && (stem.starts_with("inbox-")
                    || self
                        .config
                        .data_dir
                        .join("uploads")
                        .join(format!("{stem}.json"))
                        .exists());
            if has_owner {
                tracing::warn!(file = %name, to = %back.display(), "delivery interrupted by a restart; put back");
                std::fs::rename(entry.path(), &back)?;
            } else {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// Applies queued bundles one at a time, oldest first, until `shutdown` fires. A stop
    /// request waits for the current apply to finish (systemd's TimeoutStopSec bounds it;
    /// a kill mid-apply is recovered at the next start).
    pub async fn run_queue(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut engine_checked: Option<std::time::Instant> = None;
        let mut engine_backoff = crate::reconcile::Backoff::default();
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
                        _ = tokio::time::sleep(retry.min(std::time::Duration::from_secs(60))) => {}
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
        tracing::info!(bundle = %b.name, id = %b.id, repository = %b.repository, "applying");
        let path = self.stored_bundle(&b.id);
        let result = crate::rebuild::rebuild(self, &path, &b.name).await;
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
                // The tag has moved: the sequence floor must follow before anything else is
                // applied, or an older bundle queued earlier could move the tag back.
                let mut delay = 1;
                while let Err(e) =
                    self.journal
                        .mark_applied(&b.id, &b.repository, statement.sequence)
                {
                    tracing::error!(error = %e, "image applied but the journal cannot record it; the queue waits until it can");
                    tokio::time::sleep(std::time::Duration::from_secs(delay)).await;
                    delay = (delay * 2).min(60);
                }
                let _ = std::fs::remove_file(&path);
                tracing::info!(bundle = %b.name, repository = %b.repository, tags = ?b.tags,
                    manifest = %b.manifest_digest, millis, "applied");
                self.announce(&b, "applied", None, None);
                if let (Some(engine), Some(settings)) = (&self.engine, &self.config.engine) {
                    let outcome = match load_into_engine(engine, settings, &statement).await {
                        Ok(loaded) => {
                            self.announce(&b, "engine-loaded", None, None);
                            engine_outcome(&loaded)
                        }
                        Err(e) => {
                            tracing::warn!(bundle = %b.name, error = %e, "container engine did not take the image");
                            self.announce(
                                &b,
                                "engine-failed",
                                Some(&e.to_string()),
                                Some(e.advice()),
                            );
                            format!("failed: {e}")
                        }
                    };
                    let _ = self.journal.set_engine(&b.id, &outcome);
                }
            }
            Err(failure) => {
                tracing::warn!(bundle = %b.name, reason = %failure.reason, advice = %failure.advice, "apply failed");
                let _ = self.journal.set_state(
                    &b.id,
                    State::Failed,
                    Some(&failure.reason),
                    Some(&failure.advice),
                );
                let _ = std::fs::remove_file(&path);
                self.announce(&b, "failed", Some(&failure.reason), Some(&failure.advice));
            }
        }
    }
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
