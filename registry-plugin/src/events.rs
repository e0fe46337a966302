//! Outbound announcements of bundle state changes: a durable, ordered spool.
//!
//! Every state change of a bundle on the device (queued, applying, applied, failed, refused,
//! engine-loaded, engine-failed) is handed to [`EventSpool::emit`], which writes it to disk before it
//! returns. [`EventSpool::run`] then delivers the spooled events, oldest first, to the configured
//! targets: an HTTP POST of the event JSON and/or a local command that gets the JSON on stdin. An
//! IoT Edge module or a telemetry agent forwards them to the cloud from there.
//!
//! What this module deliberately does not do: it is not the daemon's journal (that is the record
//! of what happened; this is only the outbox), it does not batch, and it does not promise
//! exactly-once delivery across a crash. Delivery is at-least-once: an event is removed only
//! after every target took it, so a crash between "target answered" and "spool updated" sends it
//! again. Receivers dedupe on [`Event::seq`], which only ever increases, even across restarts.
//!
//! # On disk
//!
//! One directory, one file per event, named by its zero-padded seq:
//!
//! ```text
//! 00000000000000000007.json          the event (written aside, fsynced, renamed, dir fsynced)
//! 00000000000000000007.url-done      the URL took it (only when a command is configured too)
//! 00000000000000000007.command-done  the command took it (only when a URL is configured too)
//! last-seq                           highest seq ever assigned, kept when the spool empties
//! .tmp-*                             a half-written event from a crash inside `emit`; removed
//! ```
//!
//! The markers make the two targets independent: a restart after the URL took an event but the
//! command did not runs only the command again. `last-seq` keeps seq increasing when every event
//! has been delivered and removed.
//!
//! # Order and retries
//!
//! The sender works on the lowest pending seq until every target took it, retrying with
//! exponential backoff and jitter, so nothing later overtakes it.
//!
//! # What is kept, and what is only counted
//!
//! Events about trusted bundles ([`EventSpool::emit`]: a statement that verified, so only a
//! signer can cause them) are **never dropped**. Refusals of untrusted deliveries
//! ([`EventSpool::emit_untrusted`]: not a bundle, unknown key, bad signature; anyone who
//! reaches the port can cause them) live in a small ring of their own (`max_untrusted_events`,
//! files `SEQ.untrusted.json`): when it is full, the oldest of them is dropped and counted, and
//! each untrusted event carries the count so far in `details.earlier_refusals_dropped`. When
//! the whole spool holds `max_events`, untrusted events make room, never trusted ones. So a
//! receiver that is gone for weeks while junk arrives costs the disk at most the ring, and
//! every real bundle's events still arrive, in order.
//!
//! The tests in `tests/events.rs` run real loopback HTTP receivers and shell scripts:
//! `cargo test -p sideload-registry-plugin --test events`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::future::Future;
use std::hash::BuildHasher;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use sideload_bundle::fsutil::{replace_file_with, sync_dir, TEMPORARY_PREFIX};

/// Where and how events are announced; the `[events]` section of the daemon's config.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// POST every event here as JSON (http or https); none = no HTTP delivery
    pub url: Option<String>,
    /// Extra headers for the POST (e.g. an Authorization token)
    pub headers: BTreeMap<String, String>,
    /// Run this program (argv, no shell) once per event with the event JSON on stdin and
    /// SIDELOAD_EVENT_STATE, SIDELOAD_EVENT_BUNDLE, SIDELOAD_EVENT_REPOSITORY (and
    /// SIDELOAD_EVENT_SEQ, for deduping) env vars; none = no command
    pub command: Option<Vec<String>>,
    /// Seconds before the first retry of a failed delivery; doubles per failure (default 2)
    pub retry_initial_secs: f64,
    /// Longest wait between retries, in seconds, so a receiver that comes back is reached soon
    /// (default 300)
    pub retry_max_secs: f64,
    /// Seconds one POST or one command run may take before it counts as failed (default 30)
    pub timeout_secs: f64,
    /// Most events kept in the spool; beyond it the oldest refusals of untrusted deliveries make
    /// room. Events about trusted bundles are never dropped (default 10000)
    pub max_events: usize,
    /// Most refusals of untrusted deliveries kept undelivered; beyond it the oldest of them are
    /// dropped and counted (`details.earlier_refusals_dropped` of the next one) (default 100)
    pub max_untrusted_events: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            url: None,
            headers: BTreeMap::new(),
            command: None,
            retry_initial_secs: 2.0,
            retry_max_secs: 300.0,
            timeout_secs: 30.0,
            max_events: 10_000,
            max_untrusted_events: 100,
        }
    }
}

impl EventsConfig {
    /// Checks the config without touching disk or network, so the daemon can refuse a bad config
    /// before it binds a port. Errors are `InvalidInput` with a message naming the field.
    pub fn check(&self) -> io::Result<()> {
        self.validated().map(drop)
    }

    fn validated(&self) -> io::Result<Checked> {
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
        let url = match &self.url {
            None => None,
            Some(raw) => {
                let url = reqwest::Url::parse(raw)
                    .map_err(|e| invalid(format!("events.url {raw:?}: {e}")))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(invalid(format!("events.url {raw:?}: only http and https")));
                }
                Some(url)
            }
        };
        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| invalid(format!("events.headers: name {name:?}: {e}")))?;
            // The value may be a secret: say which header is bad, never what it holds.
            let mut value = HeaderValue::from_str(value)
                .map_err(|e| invalid(format!("events.headers: value of {name}: {e}")))?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        if let Some(argv) = &self.command {
            if argv.first().is_none_or(|program| program.is_empty()) {
                return Err(invalid("events.command: needs a program".into()));
            }
        }
        let secs = |field: &str, value: f64| {
            Duration::try_from_secs_f64(value)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| invalid(format!("events.{field}: {value} is not a positive number")))
        };
        let retry_initial = secs("retry_initial_secs", self.retry_initial_secs)?;
        let retry_max = secs("retry_max_secs", self.retry_max_secs)?;
        let timeout = secs("timeout_secs", self.timeout_secs)?;
        if retry_max < retry_initial {
            return Err(invalid(
                "events.retry_max_secs: smaller than retry_initial_secs".into(),
            ));
        }
        if self.max_events == 0 {
            return Err(invalid("events.max_events: must be at least 1".into()));
        }
        if self.max_untrusted_events == 0 {
            return Err(invalid(
                "events.max_untrusted_events: must be at least 1".into(),
            ));
        }
        Ok(Checked {
            url,
            headers,
            command: self.command.clone(),
            retry_initial,
            retry_max,
            timeout,
            max_events: self.max_events,
            max_untrusted_events: self.max_untrusted_events,
        })
    }
}

/// The config after [`EventsConfig::check`]: parsed once, so the sender never fails on it.
#[derive(Debug)]
struct Checked {
    url: Option<reqwest::Url>,
    headers: HeaderMap,
    command: Option<Vec<String>>,
    retry_initial: Duration,
    retry_max: Duration,
    timeout: Duration,
    max_events: usize,
    max_untrusted_events: usize,
}

/// One announcement. `seq` is assigned by the spool, increasing, so receivers can dedupe and order.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Event {
    /// Assigned by [`EventSpool::emit`]; increases across restarts, so receivers can dedupe
    pub seq: u64,
    /// Unix seconds, set by [`EventSpool::emit`], so receivers see when it happened, not when a
    /// late delivery got through
    pub at: u64,
    /// Which device this is, so the cloud can tell many devices' events apart
    pub device: String,
    /// The bundle whose state changed
    pub bundle: String,
    /// The repository the bundle rebuilds an image in
    pub repository: String,
    /// The new state: queued, applying, applied, failed, refused, engine-loaded, engine-failed
    pub state: String,
    /// Why, for refusals and failures, in words a person at the other end can act on
    pub reason: Option<String>,
    /// What to do about it, when the daemon knows
    pub advice: Option<String>,
    /// Anything else worth forwarding (digests, sizes, durations); null when there is nothing
    #[serde(default)]
    pub details: serde_json::Value,
}

impl Event {
    /// An event with no reason, advice or details, ready for [`EventSpool::emit`] (which fills
    /// `seq` and `at`).
    pub fn new(
        device: impl Into<String>,
        bundle: impl Into<String>,
        repository: impl Into<String>,
        state: impl Into<String>,
    ) -> Event {
        Event {
            seq: 0,
            at: 0,
            device: device.into(),
            bundle: bundle.into(),
            repository: repository.into(),
            state: state.into(),
            reason: None,
            advice: None,
            details: serde_json::Value::Null,
        }
    }
}

/// The durable outbox of [`Event`]s and its sender. Cheap to clone: every clone is a handle to
/// the same spool, so request handlers can emit while one task runs [`EventSpool::run`].
#[derive(Debug, Clone)]
pub struct EventSpool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    config: Checked,
    http: reqwest::Client,
    state: Mutex<State>,
    wake: Notify,
}

#[derive(Debug)]
struct State {
    /// The seq the next emitted event gets
    next_seq: u64,
    /// Seqs whose event file is in the directory and not yet taken by every target
    pending: BTreeSet<u64>,
    /// Those of `pending` that are refusals of untrusted deliveries (droppable)
    untrusted: BTreeSet<u64>,
    /// Untrusted events dropped for room since the spool was opened
    untrusted_dropped: u64,
}

/// How many of the oldest untrusted events to drop before one more event is added, so that
/// the untrusted ring stays within `max_untrusted` and the spool within `max_events`. Trusted
/// events are never counted out: when only they are left, nothing is dropped. Pure.
fn room_to_make(
    untrusted: usize,
    total: usize,
    adding_untrusted: bool,
    max_untrusted: usize,
    max_events: usize,
) -> usize {
    let over_total = (total + 1).saturating_sub(max_events);
    let over_ring = if adding_untrusted {
        (untrusted + 1).saturating_sub(max_untrusted)
    } else {
        0
    };
    over_total.max(over_ring).min(untrusted)
}

/// The delivery targets; each has its own marker so neither is sent twice.
#[derive(Debug, Clone, Copy)]
enum Target {
    Url,
    Command,
}

impl Target {
    fn marker_suffix(self) -> &'static str {
        match self {
            Target::Url => "url-done",
            Target::Command => "command-done",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Target::Url => "url",
            Target::Command => "command",
        }
    }
}

/// Why one delivery attempt failed; logged, then retried.
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("POST failed: {0}")]
    Http(String),
    #[error("POST answered {0}")]
    Status(reqwest::StatusCode),
    #[error("cannot start {program:?}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("{program:?} {status}{}", stderr_suffix(.stderr))]
    Exit {
        program: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("{program:?}: waiting for it: {source}")]
    Wait { program: String, source: io::Error },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; stderr: {stderr}")
    }
}

/// How much of a failing command's stderr goes into the log line.
const STDERR_KEPT: usize = 1024;
const LAST_SEQ: &str = "last-seq";
/// Enough digits for any u64, so names sort like numbers.
const SEQ_DIGITS: usize = 20;

impl EventSpool {
    /// Opens (creating) the spool directory; finds the next seq from what is there.
    ///
    /// Also removes what a crash can leave behind: half-written events (never promised to
    /// anyone, since `emit` had not returned) and markers whose event is gone.
    pub fn open(dir: &Path, config: EventsConfig) -> io::Result<EventSpool> {
        let config = config.validated()?;
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            // A redirected POST turns into a GET; a receiver that moved must be reconfigured.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| io::Error::other(format!("events: HTTP client: {e}")))?;
        fs::create_dir_all(dir).map_err(at(dir))?;

        let mut pending = BTreeSet::new();
        let mut untrusted = BTreeSet::new();
        let mut markers = Vec::new();
        let mut highest = 0;
        for entry in fs::read_dir(dir).map_err(at(dir))? {
            let entry = entry.map_err(at(dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with(TEMPORARY_PREFIX) {
                // A file half-written by a crash inside `replace_file`: the old one stands.
                remove_if_present(&entry.path())?;
            } else if name == LAST_SEQ {
                // Written atomically, so unreadable only after a disk fault; the event files still
                // count, and a device that cannot start is worse than a seq that may repeat.
                let path = entry.path();
                let read = fs::read_to_string(&path).map_err(|e| e.to_string());
                match read.and_then(|text| text.trim().parse::<u64>().map_err(|e| e.to_string())) {
                    Ok(seq) => highest = highest.max(seq),
                    Err(error) => tracing::warn!(
                        file = %path.display(),
                        %error,
                        "events: last-seq unreadable; seq may restart lower"
                    ),
                }
            } else if let Some((seq, kind)) = parse_name(name) {
                highest = highest.max(seq);
                match kind {
                    "json" => {
                        pending.insert(seq);
                    }
                    "untrusted.json" => {
                        pending.insert(seq);
                        untrusted.insert(seq);
                    }
                    "url-done" | "command-done" => markers.push((seq, entry.path())),
                    // e.g. ".corrupt": set aside for a person, but its seq stays used
                    _ => {}
                }
            }
        }
        for (seq, path) in markers {
            if !pending.contains(&seq) {
                remove_if_present(&path)?;
            }
        }
        let next_seq = highest.checked_add(1).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "events: seq space exhausted")
        })?;
        if !pending.is_empty() {
            tracing::info!(dir = %dir.display(), pending = pending.len(), "events waiting from before");
        }
        Ok(EventSpool {
            inner: Arc::new(Inner {
                dir: dir.to_owned(),
                config,
                http,
                state: Mutex::new(State {
                    next_seq,
                    pending,
                    untrusted,
                    untrusted_dropped: 0,
                }),
                wake: Notify::new(),
            }),
        })
    }

    /// Durably records an event about a trusted bundle (write temp file, fsync, rename, fsync
    /// dir) before returning, then wakes the sender. Fills `seq` and `at`; returns the stored
    /// event. It is never dropped for room.
    ///
    /// Blocks for the fsyncs (milliseconds on flash). A failure (say, a full disk) loses only this
    /// announcement: callers should log it and carry on with the state change.
    pub fn emit(&self, event: Event) -> io::Result<Event> {
        self.store(event, false)
    }

    /// Records a refusal of an untrusted delivery (no statement that verified) in the small
    /// ring of such events: the oldest of them is dropped when it is full, and the event
    /// carries how many were dropped so far in `details.earlier_refusals_dropped`.
    pub fn emit_untrusted(&self, event: Event) -> io::Result<Event> {
        self.store(event, true)
    }

    fn store(&self, mut event: Event, untrusted: bool) -> io::Result<Event> {
        let inner = &self.inner;
        let mut state = inner.lock();
        let drop_count = room_to_make(
            state.untrusted.len(),
            state.pending.len(),
            untrusted,
            inner.config.max_untrusted_events,
            inner.config.max_events,
        );
        for _ in 0..drop_count {
            let Some(oldest) = state.untrusted.pop_first() else {
                break;
            };
            state.pending.remove(&oldest);
            state.untrusted_dropped += 1;
            tracing::debug!(
                seq = oldest,
                "events: oldest refusal of an untrusted delivery dropped for room"
            );
            if let Err(e) = inner.remove_files(oldest) {
                tracing::warn!(seq = oldest, error = %e, "events: cannot remove dropped event");
            }
        }
        if untrusted {
            let dropped = serde_json::Value::from(state.untrusted_dropped);
            match &mut event.details {
                serde_json::Value::Object(map) => {
                    map.insert("earlier_refusals_dropped".into(), dropped);
                }
                details => {
                    *details = serde_json::json!({ "earlier_refusals_dropped": dropped });
                }
            }
        }
        // Taken before writing, so a failed write leaves a gap rather than a reused seq.
        event.seq = state.next_seq;
        state.next_seq += 1;
        event.at = unix_now();
        let body = serde_json::to_vec(&event).map_err(io::Error::other)?;
        inner
            .write_event(event.seq, untrusted, &body)
            .map_err(at(&inner.dir))?;
        state.pending.insert(event.seq);
        if untrusted {
            state.untrusted.insert(event.seq);
        } else if state.pending.len() > inner.config.max_events {
            tracing::warn!(
                pending = state.pending.len(),
                max_events = inner.config.max_events,
                "events spool over max_events with events about trusted bundles only; none is dropped"
            );
        }
        drop(state);
        inner.wake.notify_one();
        Ok(event)
    }

    /// Refusals of untrusted deliveries dropped for room since the spool was opened.
    pub fn untrusted_dropped(&self) -> u64 {
        self.inner.lock().untrusted_dropped
    }

    /// Delivers spooled events in seq order until `shutdown` resolves: each to the URL (2xx =
    /// done; else exponential backoff with jitter, max delay, and retry; the same event is retried
    /// before any later one, so order holds) and to the command (exit 0 = done; else retried the
    /// same way). An event is removed from the spool only when every configured target took it.
    /// With nothing configured, events are just dropped after being logged. Logs (tracing) each
    /// failure once per backoff step with the reason.
    ///
    /// Run it once per spool: two senders would deliver everything twice. Stopping it mid-delivery
    /// is safe; that event is sent again by the next `run`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::select! {
            () = shutdown => {}
            () = self.deliver_forever() => {}
        }
    }

    /// Events still waiting (for the status API / metrics).
    pub fn pending(&self) -> usize {
        self.inner.lock().pending.len()
    }

    async fn deliver_forever(&self) {
        loop {
            let first = self.inner.lock().pending.first().copied();
            match first {
                // A permit left by an emit since the check makes this return at once.
                None => self.inner.wake.notified().await,
                Some(seq) => self.deliver(seq).await,
            }
        }
    }

    /// Takes event `seq` to every target that has not had it yet, then retires it.
    async fn deliver(&self, seq: u64) {
        let config = &self.inner.config;
        let mut failures = 0;
        let event = loop {
            let inner = Arc::clone(&self.inner);
            match blocking(move || inner.read_event(seq)).await {
                Ok(Some(event)) => break event,
                // Dropped for room, or set aside as corrupt, meanwhile.
                Ok(None) => return self.retire(seq).await,
                Err(e) => {
                    failures += 1;
                    let delay = self.delay(failures);
                    tracing::warn!(seq, error = %e, retry_in = ?delay, "events: cannot read spooled event");
                    tokio::time::sleep(delay).await;
                }
            }
        };
        if config.url.is_none() && config.command.is_none() {
            tracing::info!(
                seq,
                bundle = %event.bundle,
                repository = %event.repository,
                state = %event.state,
                reason = event.reason.as_deref(),
                "event (no events url or command configured)"
            );
            return self.retire(seq).await;
        }
        let body = match serde_json::to_vec(&event) {
            Ok(body) => body,
            Err(e) => {
                tracing::error!(seq, error = %e, "events: cannot encode event; dropping it");
                return self.retire(seq).await;
            }
        };
        let both = config.url.is_some() && config.command.is_some();
        for target in [Target::Url, Target::Command] {
            let configured = match target {
                Target::Url => config.url.is_some(),
                Target::Command => config.command.is_some(),
            };
            if !configured || self.inner.marker_path(seq, target).exists() {
                continue;
            }
            if !self.deliver_to(target, &event, &body).await {
                // Dropped for room while we retried.
                return self.retire(seq).await;
            }
            if both {
                let inner = Arc::clone(&self.inner);
                if let Err(e) = blocking(move || inner.write_marker(seq, target)).await {
                    // Delivery goes on; only a restart before retiring would repeat this target.
                    tracing::warn!(seq, target = target.name(), error = %e, "events: cannot record delivery");
                }
            }
        }
        self.retire(seq).await
    }

    /// Retries one target until it takes the event; false if the event left the spool meanwhile.
    async fn deliver_to(&self, target: Target, event: &Event, body: &[u8]) -> bool {
        let mut failures = 0;
        loop {
            if !self.inner.lock().pending.contains(&event.seq) {
                return false;
            }
            let attempt = match target {
                Target::Url => self.post(body).await,
                Target::Command => self.run_command(event, body).await,
            };
            match attempt {
                Ok(()) => {
                    tracing::debug!(seq = event.seq, target = target.name(), "event delivered");
                    return true;
                }
                Err(e) => {
                    failures += 1;
                    let delay = self.delay(failures);
                    tracing::warn!(
                        seq = event.seq,
                        target = target.name(),
                        attempt = failures,
                        retry_in = ?delay,
                        error = %e,
                        "event not delivered"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn post(&self, body: &[u8]) -> Result<(), DeliveryError> {
        let config = &self.inner.config;
        let Some(url) = &config.url else {
            return Ok(());
        };
        let response = self
            .inner
            .http
            .post(url.clone())
            .headers(config.headers.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    DeliveryError::Timeout(config.timeout)
                } else {
                    // Without the URL: its query may hold a token.
                    DeliveryError::Http(error_chain(&e.without_url()))
                }
            })?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Status(status))
        }
    }

    async fn run_command(&self, event: &Event, body: &[u8]) -> Result<(), DeliveryError> {
        let config = &self.inner.config;
        let Some((program, args)) = config.command.as_deref().and_then(|a| a.split_first()) else {
            return Ok(());
        };
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .env("SIDELOAD_EVENT_STATE", &event.state)
            .env("SIDELOAD_EVENT_BUNDLE", &event.bundle)
            .env("SIDELOAD_EVENT_REPOSITORY", &event.repository)
            .env("SIDELOAD_EVENT_SEQ", event.seq.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| DeliveryError::Spawn {
                program: program.clone(),
                source,
            })?;
        let stdin = child.stdin.take();
        let stderr = child.stderr.take();
        let finished = async {
            let feed = async {
                if let Some(mut stdin) = stdin {
                    // A command that ignores stdin closes the pipe early; its exit status decides.
                    let _ = stdin.write_all(body).await;
                }
            };
            let ((), stderr) = tokio::join!(feed, read_bounded(stderr));
            (child.wait().await, stderr)
        };
        let (status, stderr) = match tokio::time::timeout(config.timeout, finished).await {
            Ok(done) => done,
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(DeliveryError::Timeout(config.timeout));
            }
        };
        let status = status.map_err(|source| DeliveryError::Wait {
            program: program.clone(),
            source,
        })?;
        if status.success() {
            Ok(())
        } else {
            Err(DeliveryError::Exit {
                program: program.clone(),
                status,
                stderr,
            })
        }
    }

    /// Removes a delivered (or vanished) event from the spool.
    async fn retire(&self, seq: u64) {
        let inner = Arc::clone(&self.inner);
        if let Err(e) = blocking(move || inner.retire(seq)).await {
            tracing::warn!(seq, error = %e, "events: cannot remove delivered event");
        }
    }

    fn delay(&self, failures: u32) -> Duration {
        let config = &self.inner.config;
        retry_delay(failures, config.retry_initial, config.retry_max, jitter())
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a counter and a set, each updated in one step: still sound after a panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn event_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:0SEQ_DIGITS$}.json"))
    }

    /// Where a refusal of an untrusted delivery is kept: its own name, so a restart knows it
    /// may be dropped for room.
    fn untrusted_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:0SEQ_DIGITS$}.untrusted.json"))
    }

    fn marker_path(&self, seq: u64, target: Target) -> PathBuf {
        self.dir
            .join(format!("{seq:0SEQ_DIGITS$}.{}", target.marker_suffix()))
    }

    /// Write aside, fsync, rename, fsync the directory: the event is there whole or not at all.
    fn write_event(&self, seq: u64, untrusted: bool, body: &[u8]) -> io::Result<()> {
        let path = if untrusted {
            self.untrusted_path(seq)
        } else {
            self.event_path(seq)
        };
        replace_file_with(&path, 0o600, body)
    }

    /// The event, or `None` when its file is gone. A file that does not parse (a disk fault, or a
    /// hand edit) is renamed to `.corrupt` and logged, so it neither blocks the spool nor vanishes.
    fn read_event(&self, seq: u64) -> io::Result<Option<Event>> {
        let mut path = self.event_path(seq);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                path = self.untrusted_path(seq);
                match fs::read(&path) {
                    Ok(bytes) => bytes,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        match serde_json::from_slice::<Event>(&bytes) {
            Ok(event) if event.seq == seq => Ok(Some(event)),
            parsed => {
                let why = match parsed {
                    Ok(event) => format!("holds seq {}", event.seq),
                    Err(e) => e.to_string(),
                };
                let aside = path.with_extension("json.corrupt");
                tracing::error!(seq, file = %path.display(), error = %why, "events: unreadable event set aside");
                fs::rename(&path, aside)?;
                Ok(None)
            }
        }
    }

    fn write_marker(&self, seq: u64, target: Target) -> io::Result<()> {
        File::create(self.marker_path(seq, target))?.sync_all()?;
        sync_dir(&self.dir)
    }

    /// Takes `seq` out of the spool. When it is the newest event, `last-seq` is written first, so
    /// an empty spool still knows which seq comes next after a restart.
    fn retire(&self, seq: u64) -> io::Result<()> {
        let mut state = self.lock();
        state.pending.remove(&seq);
        state.untrusted.remove(&seq);
        if state.pending.range(seq..).next().is_none() {
            let last = state.next_seq - 1;
            replace_file_with(
                &self.dir.join(LAST_SEQ),
                0o600,
                format!("{last}\n").as_bytes(),
            )?;
        }
        // Under the lock, so `pending()` never counts an event whose files are still there.
        self.remove_files(seq)?;
        drop(state);
        sync_dir(&self.dir)
    }

    /// Removes the event file first: a crash in between leaves only markers, which `open` sweeps.
    fn remove_files(&self, seq: u64) -> io::Result<()> {
        remove_if_present(&self.event_path(seq))?;
        remove_if_present(&self.untrusted_path(seq))?;
        remove_if_present(&self.marker_path(seq, Target::Url))?;
        remove_if_present(&self.marker_path(seq, Target::Command))
    }
}

/// The wait before retry number `failures` (1-based): `initial` doubled per failure, capped at
/// `max`, then scaled into its upper half by `jitter` (in 0..1) so many devices that lost the
/// same receiver do not all come back in the same second.
fn retry_delay(failures: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let doubling = 2u32.saturating_pow(failures.saturating_sub(1));
    let base = initial.saturating_mul(doubling).min(max);
    base.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

/// A number in 0..1 that differs between calls and processes; no crate needed for this.
fn jitter() -> f64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let bits = std::collections::hash_map::RandomState::new().hash_one(nanos);
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// Splits `00000000000000000007.url-done` into `(7, "url-done")`; `None` for other names.
fn parse_name(name: &str) -> Option<(u64, &str)> {
    let (digits, kind) = name.split_once('.')?;
    if digits.len() != SEQ_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, kind))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Puts the path into an error's message, keeping its kind.
fn at(path: &Path) -> impl FnOnce(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Runs blocking file work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(io::Error::other)?
}

/// Reads a child's stderr to the end, keeping only the first [`STDERR_KEPT`] bytes.
async fn read_bounded(stderr: Option<tokio::process::ChildStderr>) -> String {
    let Some(mut stderr) = stderr else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = stderr.read(&mut buf).await {
        let room = STDERR_KEPT - kept.len();
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    String::from_utf8_lossy(&kept).trim().to_owned()
}

/// "error sending request: client error (Connect): tcp connect error: Connection refused": the
/// top-level reqwest message alone hides the reason.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_up_to_the_cap_and_jitters_in_the_upper_half() {
        let ms = Duration::from_millis;
        let (initial, max) = (ms(100), ms(1000));
        assert_eq!(retry_delay(1, initial, max, 0.0), ms(50));
        assert_eq!(retry_delay(1, initial, max, 1.0), ms(100));
        assert_eq!(retry_delay(2, initial, max, 1.0), ms(200));
        assert_eq!(retry_delay(4, initial, max, 1.0), ms(800));
        assert_eq!(retry_delay(5, initial, max, 1.0), ms(1000));
        assert_eq!(retry_delay(u32::MAX, initial, max, 1.0), ms(1000));
        assert_eq!(retry_delay(u32::MAX, initial, max, 0.0), ms(500));
    }

    #[test]
    fn only_untrusted_events_make_room() {
        // The ring is full: adding an untrusted event drops its oldest.
        assert_eq!(room_to_make(3, 10, true, 3, 100), 1);
        assert_eq!(room_to_make(2, 10, true, 3, 100), 0);
        // The spool is full: trusted and untrusted both make room from the untrusted ones.
        assert_eq!(room_to_make(2, 5, false, 3, 5), 1);
        assert_eq!(room_to_make(2, 5, true, 3, 5), 1);
        // Only trusted events left: nothing is dropped, however full.
        assert_eq!(room_to_make(0, 50, false, 3, 5), 0);
        assert_eq!(room_to_make(1, 50, false, 3, 5), 1);
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j), "{j}");
        }
    }

    #[test]
    fn names_parse_only_when_fully_padded_digits() {
        assert_eq!(parse_name("00000000000000000007.json"), Some((7, "json")));
        assert_eq!(
            parse_name("00000000000000000007.url-done"),
            Some((7, "url-done"))
        );
        assert_eq!(
            parse_name("00000000000000000007.untrusted.json"),
            Some((7, "untrusted.json"))
        );
        assert_eq!(parse_name("7.json"), None);
        assert_eq!(parse_name("0000000000000000000x.json"), None);
        assert_eq!(parse_name("last-seq"), None);
        assert_eq!(parse_name(".tmp-00000000000000000007.json"), None);
    }
}
