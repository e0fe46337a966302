//! `sideload push`: sends bundles to a device's daemon over its resumable upload API
//! (`docs/upload-api.md`) across links that drop every few minutes.
//!
//! The device stores every byte it receives, so the client never decides what arrived: after
//! any failure it asks the device (`HEAD`) and goes on from there. Retries back off
//! exponentially with jitter, reset after progress; a dead link is noticed by the kernel
//! (`TCP_USER_TIMEOUT`, keepalive) rather than by a fixed request timeout that a slow link
//! would trip. Pure decisions (`classify`, `backoff`, `throttle`) are separate from the I/O.

pub mod backoff;
pub mod throttle;

// The transport and TLS pins live with the device API's client; `sideload fleet` reaches the
// status API through them too.
pub use sideload_device_api::client::{tls, transport as http};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request};
use serde::Serialize;
use sideload_device_api::client::{Client, ClientError, MAX_ANSWER};
use sideload_device_api::{classify, Answer, BundleState, Intake, Refusal};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use backoff::{random_unit, Backoff};
use throttle::TokenBucket;

/// How to reach the device and how patient to be.
pub struct Settings {
    /// The daemon's base URL without a path (`https://device:5443`).
    pub base: String,
    /// The device's upload token, sent as `Authorization: Bearer`.
    pub token: Option<String>,
    /// Upload rate cap, bytes per second.
    pub rate: Option<u64>,
    /// Unacknowledged data for this long means the link is dead: reconnect.
    pub stall_timeout: Duration,
    /// First retry delay.
    pub retry_initial: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Give up at this moment.
    pub deadline: Option<Instant>,
    /// Trust only the CA certificates in this PEM file.
    pub ca_file: Option<PathBuf>,
    /// Accept only device certificates with these sha256 digests.
    pub pins: Vec<[u8; 32]>,
}

/// What the user sees: progress and notes. A bar on a terminal, lines in logs.
pub trait Observer: Send + Sync {
    /// A bundle starts (`size` bytes).
    fn start(&self, name: &str, size: u64);
    /// The device holds `held` bytes.
    fn held(&self, held: u64);
    /// `n` more bytes were handed to the connection.
    fn sent(&self, n: u64);
    /// Something worth a line: a drop, a retry, a resume.
    fn note(&self, line: &str);
    /// The bundle's push ended.
    fn finish(&self);
}

/// A bundle file as the client knows it: nothing in it is trusted here, the device checks.
#[derive(Debug, Clone)]
pub struct LocalBundle {
    /// The file.
    pub path: PathBuf,
    /// Its name, as sent in `Bundle-Name`.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// `sha256:` of the whole file, as sent in `Bundle-Digest`.
    pub file_digest: String,
    /// The statement digest: the bundle's id on the device.
    pub id: String,
    /// The repository the statement names.
    pub repository: String,
    /// The tags the statement names.
    pub tags: Vec<String>,
}

impl LocalBundle {
    /// Reads the head (untrusted) and hashes the file, streaming.
    pub fn open(path: &Path) -> anyhow::Result<LocalBundle> {
        use anyhow::Context;
        let (head, file) = sideload_bundle::open_bundle(path, &sideload_bundle::Limits::default())?;
        let statement =
            sideload_signing::parse_statement(&head.statement_bytes).map_err(|refusal| {
                sideload_bundle::Error::Refused {
                    bundle: head.name.clone(),
                    refusal,
                }
            })?;
        let size = file.metadata()?.len();
        let (digest, _) = std::fs::File::open(path)
            .and_then(sideload_bundle::image::digest_reader::digest_of_reader)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Ok(LocalBundle {
            path: path.to_owned(),
            name: head.name.clone(),
            size,
            file_digest: digest.to_string(),
            id: statement.digest().to_string(),
            repository: statement.target.repository.to_string(),
            tags: statement
                .target
                .tags
                .iter()
                .map(|t| t.to_string())
                .collect(),
        })
    }
}

/// How a bundle's push ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The device already had it (queued, applying or applied): one request.
    Known,
    /// Uploaded and queued for apply.
    Queued,
    /// Uploaded, but the same statement was already queued.
    Duplicate,
    /// The device refused it (untrusted, expired, replayed, damaged): do not retry this file.
    Refused,
    /// A problem the device or the client cannot retry past (token, size, disk, TLS).
    Error,
    /// `--deadline` passed first; pushing again resumes.
    Deadline,
    /// Not sent, because an earlier bundle in the list did not make it.
    Skipped,
}

/// One bundle's push, as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The file.
    pub file: PathBuf,
    /// Its name.
    pub name: String,
    /// The statement digest (the device's id for it).
    pub bundle: String,
    /// Repository and tags it sets.
    pub repository: String,
    /// Tags.
    pub tags: Vec<String>,
    /// File size, bytes.
    pub size: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// The device's state of the bundle when last seen (`applied`, `failed`, ...).
    pub state: Option<BundleState>,
    /// With `--wait` on a device that feeds a container engine: the engine's outcome
    /// (`loaded as …`, `failed: …`), so the edge agent's side is known too.
    pub engine: Option<String>,
    /// Why it did not go through.
    pub reason: Option<String>,
    /// What to do about it.
    pub advice: Option<String>,
    /// The device's error code, when it gave one.
    pub code: Option<String>,
    /// Bytes the device already held when this push began.
    pub held_at_start: u64,
    /// Bytes the device held at the end.
    pub held: u64,
    /// Bytes handed to connections (an upper bound of what crossed the link).
    pub bytes_sent: u64,
    /// Requests of the upload itself: create, offset, send and finish (`POST`, `HEAD`,
    /// `PATCH`, `PUT`). The summary line counts the same.
    pub requests: u32,
    /// Failures of the upload retried (drops, timeouts, busy device).
    pub retries: u32,
    /// With `--wait`: status requests while following the bundle to its end (`GET
    /// /sideload/v1/bundles/ID`); the line printed after the wait counts the same.
    pub status_requests: u32,
    /// With `--wait`: failed status requests retried.
    pub status_retries: u32,
    /// Wall time, seconds.
    pub seconds: f64,
}

impl Report {
    fn new(local: &LocalBundle) -> Report {
        Report {
            file: local.path.clone(),
            name: local.name.clone(),
            bundle: local.id.clone(),
            repository: local.repository.clone(),
            tags: local.tags.clone(),
            size: local.size,
            outcome: Outcome::Skipped,
            state: None,
            engine: None,
            reason: None,
            advice: None,
            code: None,
            held_at_start: 0,
            held: 0,
            bytes_sent: 0,
            requests: 0,
            retries: 0,
            status_requests: 0,
            status_retries: 0,
            seconds: 0.0,
        }
    }

    /// A report for a bundle that was not sent.
    pub fn skipped(local: &LocalBundle, why: &str) -> Report {
        let mut r = Report::new(local);
        r.reason = Some(why.to_owned());
        r
    }

    /// Ends the push if the answer is the device's last word on it (refused, or a problem
    /// retrying does not fix); true if it was.
    fn verdict(&mut self, answer: &Answer) -> bool {
        match answer {
            Answer::Refused(r) => self.refused(Outcome::Refused, r),
            Answer::Fatal(r) => self.refused(Outcome::Error, r),
            _ => return false,
        }
        true
    }

    fn refused(&mut self, outcome: Outcome, r: &Refusal) {
        self.fail(outcome, &r.code, r.reason.clone(), r.advice.clone())
    }

    /// The device lost the upload (expired, cancelled): true to start a new one, false
    /// (and the push failed) when that happened too often.
    fn upload_lost(&mut self, recreated: &mut u32, obs: &dyn Observer) -> bool {
        *recreated += 1;
        if *recreated > MAX_RECREATED {
            self.fail(
                Outcome::Error,
                "upload_lost",
                format!("the device dropped the upload {recreated} times"),
                "check the device's uploads.idle_expiry_secs and its logs".into(),
            );
            return false;
        }
        obs.note("the device no longer knows the upload; starting a new one");
        true
    }

    fn fail(&mut self, outcome: Outcome, code: &str, reason: String, advice: String) {
        self.outcome = outcome;
        self.code = Some(code.to_owned());
        // The device's reasons do not always name the bundle; every message here does.
        self.reason = Some(if reason.starts_with(&self.name) {
            reason
        } else {
            format!("{}: {reason}", self.name)
        });
        self.advice = Some(advice);
    }
}

/// Why a request did not get an answer.
#[derive(Debug)]
enum Failure {
    /// The link or the device went away: retry.
    Transport(String),
    /// The device's certificate is not trusted: retrying does not help.
    Tls(String),
    /// The deadline passed.
    Deadline,
    /// The local file could not be read.
    Local(String),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        match e {
            ClientError::Tls(t) => Failure::Tls(t),
            ClientError::Transport(t) => Failure::Transport(t),
            other => Failure::Local(other.to_string()),
        }
    }
}

/// A device daemon reached over HTTP(S).
pub struct Device {
    client: Client,
    throttle: Option<Arc<Mutex<TokenBucket>>>,
    settings_retry: (Duration, Duration),
    deadline: Option<tokio::time::Instant>,
}

/// No-progress answers in a row before the client gives up on a bundle.
const MAX_STUCK: u32 = 8;
/// Times the device may lose an upload (expiry, cancel) before the client gives up.
const MAX_RECREATED: u32 = 3;

/// A request ready to send, or why it could not be made.
type Prepared = Result<Request<http::Body>, hyper::http::Error>;

/// Where one bundle's upload stands between requests.
struct Progress {
    backoff: Backoff,
    /// Times the device lost the upload.
    recreated: u32,
    /// Answers in a row that moved nothing: a device that never progresses must not keep the
    /// client busy until the deadline (or forever).
    stuck: u32,
}

/// What the upload loop does next.
enum Flow {
    /// The push ended (the report says how).
    Done,
    /// The device lost the upload: create a new one.
    Recreate,
    /// Go on sending from this offset.
    At(u64),
}

impl Device {
    /// A client for the device at `settings.base`. Needs a tokio runtime.
    pub fn new(settings: &Settings) -> anyhow::Result<Device> {
        use anyhow::Context;
        let trust = if !settings.pins.is_empty() {
            http::Trust::Pins(settings.pins.clone())
        } else if let Some(ca) = &settings.ca_file {
            use rustls::pki_types::{pem::PemObject, CertificateDer};
            let certs = CertificateDer::pem_file_iter(ca)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("cannot read PEM certificates from {}", ca.display()))?;
            if certs.is_empty() {
                anyhow::bail!("{} holds no PEM certificate", ca.display());
            }
            http::Trust::Roots(certs)
        } else {
            http::Trust::Platform
        };
        let options = http::Options {
            stall_timeout: settings.stall_timeout,
            connect_timeout: None,
            trust,
        };
        let client = Client::new(
            &settings.base,
            settings.token.as_deref(),
            concat!("sideload-push/", env!("CARGO_PKG_VERSION")),
            &options,
        )?;
        let now = Instant::now();
        Ok(Device {
            client,
            throttle: settings
                .rate
                .map(|r| Arc::new(Mutex::new(TokenBucket::new(r, now)))),
            settings_retry: (settings.retry_initial, settings.retry_max),
            deadline: settings
                .deadline
                .map(|d| tokio::time::Instant::now() + d.saturating_duration_since(now)),
        })
    }

    fn request(&self, method: Method, path: &str) -> hyper::http::request::Builder {
        self.client.request(method, path)
    }

    /// Sends a request; the device's answer (status, `Upload-Offset`, the small body).
    async fn fetch(&self, req: Prepared) -> Result<sideload_device_api::client::Reply, Failure> {
        Ok(self.within(self.client.send(req, MAX_ANSWER)).await??)
    }

    /// Sends a request and says what its answer means.
    async fn exchange(&self, req: Prepared) -> Result<Answer, Failure> {
        let reply = self.fetch(req).await?;
        Ok(classify(reply.status, reply.upload_offset, &reply.body))
    }

    /// Runs `fut` unless the deadline passes first.
    async fn within<T>(&self, fut: impl std::future::Future<Output = T>) -> Result<T, Failure> {
        match self.deadline {
            Some(d) => tokio::time::timeout_at(d, fut)
                .await
                .map_err(|_| Failure::Deadline),
            None => Ok(fut.await),
        }
    }

    async fn pause(
        &self,
        backoff: &mut Backoff,
        why: &str,
        obs: &dyn Observer,
    ) -> Result<(), Failure> {
        let delay = backoff.next_delay(random_unit());
        obs.note(&format!("{why}; retrying in {:.1} s", delay.as_secs_f64()));
        self.within(tokio::time::sleep(delay)).await
    }

    /// Counts a failure and waits before the next attempt.
    async fn retry(
        &self,
        backoff: &mut Backoff,
        report: &mut Report,
        why: &str,
        obs: &dyn Observer,
    ) -> Result<(), Failure> {
        report.retries += 1;
        self.pause(backoff, why, obs).await
    }

    /// Waits before asking for a bundle's status again, counted apart from the upload's
    /// retries.
    async fn retry_status(
        &self,
        backoff: &mut Backoff,
        report: &mut Report,
        why: &str,
        obs: &dyn Observer,
    ) -> Result<(), Failure> {
        report.status_retries += 1;
        self.pause(backoff, why, obs).await
    }

    /// Pushes one bundle until the device takes or refuses it, or the deadline passes.
    pub async fn push(&self, local: &LocalBundle, obs: &dyn Observer) -> Report {
        let started = Instant::now();
        let mut report = Report::new(local);
        obs.start(&local.name, local.size);
        let result = self.push_inner(local, &mut report, obs).await;
        match result {
            Ok(()) => {}
            Err(Failure::Deadline) => report.fail(
                Outcome::Deadline,
                "deadline",
                format!(
                    "{}: the deadline passed with {} of {} bytes on the device",
                    local.name, report.held, local.size
                ),
                "push again (or with a later --deadline): the device keeps what it has and the upload resumes".into(),
            ),
            Err(Failure::Tls(e)) => report.fail(
                Outcome::Error,
                "tls",
                format!("{}: the device's TLS certificate is not trusted: {e}", local.name),
                "pass the device's CA or its own certificate with --ca-file, or its pin with --pin sha256:HEX (the daemon logs it at start)".into(),
            ),
            Err(Failure::Local(e)) => report.fail(
                Outcome::Error,
                "local_io",
                format!("{}: {e}", local.name),
                "check the bundle file".into(),
            ),
            Err(Failure::Transport(e)) => report.fail(
                Outcome::Error,
                "transport",
                format!("{}: {e}", local.name),
                "check --to and the link, then push again".into(),
            ),
        }
        report.seconds = started.elapsed().as_secs_f64();
        obs.finish();
        report
    }

    async fn push_inner(
        &self,
        local: &LocalBundle,
        report: &mut Report,
        obs: &dyn Observer,
    ) -> Result<(), Failure> {
        let mut progress = Progress {
            backoff: Backoff::new(self.settings_retry.0, self.settings_retry.1),
            recreated: 0,
            stuck: 0,
        };
        let mut first = true;
        loop {
            let Some((location, offset)) = self.create(local, report, &mut progress, obs).await?
            else {
                return Ok(());
            };
            if first {
                report.held_at_start = offset;
                first = false;
                if offset > 0 {
                    obs.note(&format!(
                        "the device already holds {offset} of {} bytes; resuming",
                        local.size
                    ));
                }
            }
            match self
                .upload(&location, offset, local, report, &mut progress, obs)
                .await?
            {
                Flow::Recreate => continue,
                Flow::Done | Flow::At(_) => return Ok(()),
            }
        }
    }

    /// Creates (or finds) the upload, retrying until the device answers: its location and
    /// the bytes it holds, or `None` when the push ended there (known, refused).
    async fn create(
        &self,
        local: &LocalBundle,
        report: &mut Report,
        progress: &mut Progress,
        obs: &dyn Observer,
    ) -> Result<Option<(String, u64)>, Failure> {
        loop {
            report.requests += 1;
            // Percent-encoded UTF-8, so any file name reaches the device's journal as it is.
            let create = self
                .request(Method::POST, "/sideload/v1/uploads")
                .header("Bundle-Digest", &local.file_digest)
                .header("Upload-Length", local.size)
                .header(
                    "Bundle-Name",
                    sideload_bundle::text::bundle_name_header(&local.name),
                )
                .body(http::empty());
            let why = match self.exchange(create).await {
                Ok(Answer::Known { state, .. }) => {
                    report.outcome = Outcome::Known;
                    report.state = Some(state);
                    report.held = local.size;
                    report.held_at_start = local.size;
                    return Ok(None);
                }
                Ok(Answer::Upload { location, offset }) => return Ok(Some((location, offset))),
                Ok(answer) if report.verdict(&answer) => return Ok(None),
                Ok(Answer::Retry(r)) => format!("device busy: {r}"),
                Ok(a) => format!("unexpected answer to create: {a:?}"),
                Err(Failure::Transport(e)) => format!("cannot reach the device: {e}"),
                Err(f) => return Err(f),
            };
            self.retry(&mut progress.backoff, report, &why, obs).await?;
        }
    }

    /// Sends the file to the upload at `location` from `offset` until the device takes it,
    /// refuses it or loses the upload.
    async fn upload(
        &self,
        location: &str,
        mut offset: u64,
        local: &LocalBundle,
        report: &mut Report,
        progress: &mut Progress,
        obs: &dyn Observer,
    ) -> Result<Flow, Failure> {
        loop {
            report.held = offset;
            obs.held(offset);
            if offset > local.size {
                report.fail(
                    Outcome::Error,
                    "offset_beyond_file",
                    format!(
                        "{}: the device holds {offset} bytes of a {}-byte file",
                        local.name, local.size
                    ),
                    "delete the upload on the device (DELETE its URL) and push again".into(),
                );
                return Ok(Flow::Done);
            }
            report.requests += 1;
            let answer = if offset == local.size {
                // Everything is there: ask for the outcome (a lost final answer).
                self.exchange(self.request(Method::PUT, location).body(http::empty()))
                    .await
            } else {
                self.send(location, offset, local, report, obs).await
            };
            let answer = match answer {
                Ok(a) => a,
                Err(Failure::Transport(e)) => {
                    let why = format!("link lost: {e}");
                    self.retry(&mut progress.backoff, report, &why, obs).await?;
                    Answer::Retry(String::new())
                }
                Err(f) => return Err(f),
            };
            match self
                .next(answer, location, offset, local, report, progress, obs)
                .await?
            {
                Flow::At(o) => offset = o,
                flow => return Ok(flow),
            }
        }
    }

    /// What an answer to a `PATCH` or `PUT` sent at `before` means for the upload.
    #[allow(clippy::too_many_arguments)]
    async fn next(
        &self,
        answer: Answer,
        location: &str,
        before: u64,
        local: &LocalBundle,
        report: &mut Report,
        progress: &mut Progress,
        obs: &dyn Observer,
    ) -> Result<Flow, Failure> {
        match answer {
            Answer::Taken { bundle, intake } => {
                report.held = local.size;
                report.outcome = match intake {
                    Intake::Duplicate => Outcome::Duplicate,
                    Intake::Queued => Outcome::Queued,
                };
                if !bundle.is_empty() {
                    report.bundle = bundle;
                }
                Ok(Flow::Done)
            }
            Answer::Offset(o) => {
                self.moved(o, location, before, local, report, progress, obs)
                    .await
            }
            Answer::Refused(_) | Answer::Fatal(_) => {
                report.verdict(&answer);
                Ok(Flow::Done)
            }
            Answer::Gone => Ok(lost(report, progress, obs)),
            Answer::Retry(why) => {
                if !why.is_empty() {
                    let why = format!("device busy: {why}");
                    self.retry(&mut progress.backoff, report, &why, obs).await?;
                }
                self.resume(location, before, local, report, progress, obs)
                    .await
            }
            Answer::Known { .. } | Answer::Upload { .. } => {
                let why = "unexpected answer to an upload request";
                self.retry(&mut progress.backoff, report, why, obs).await?;
                Ok(Flow::At(before))
            }
        }
    }

    /// The device holds `o` bytes after a request sent at `before`: progress resets the
    /// backoff; none, too often in a row, ends the push.
    #[allow(clippy::too_many_arguments)]
    async fn moved(
        &self,
        o: u64,
        location: &str,
        before: u64,
        local: &LocalBundle,
        report: &mut Report,
        progress: &mut Progress,
        obs: &dyn Observer,
    ) -> Result<Flow, Failure> {
        if o > before {
            progress.backoff.reset();
            progress.stuck = 0;
        } else if o == before {
            // An answer without progress (a take-over, a 409 race): do not spin.
            progress.stuck += 1;
            if progress.stuck >= MAX_STUCK {
                report.fail(
                    Outcome::Error,
                    "upload_stuck",
                    format!(
                        "the device answered {} times in a row that it holds {o} of {} bytes without taking more",
                        progress.stuck, local.size
                    ),
                    format!("check the device's logs; to start over, DELETE {location} and push again"),
                );
                return Ok(Flow::Done);
            }
            self.retry(
                &mut progress.backoff,
                report,
                "the device took no bytes",
                obs,
            )
            .await?;
        }
        Ok(Flow::At(o))
    }

    /// Asks the device where to go on (`HEAD`), retrying until it answers.
    async fn resume(
        &self,
        location: &str,
        before: u64,
        local: &LocalBundle,
        report: &mut Report,
        progress: &mut Progress,
        obs: &dyn Observer,
    ) -> Result<Flow, Failure> {
        loop {
            report.requests += 1;
            let why = match self
                .exchange(self.request(Method::HEAD, location).body(http::empty()))
                .await
            {
                Ok(Answer::Offset(o)) => {
                    if o > before {
                        progress.backoff.reset();
                    }
                    if o != before {
                        obs.note(&format!("resuming at byte {o} of {}", local.size));
                    }
                    return Ok(Flow::At(o));
                }
                Ok(Answer::Gone) => return Ok(lost(report, progress, obs)),
                Ok(answer) if report.verdict(&answer) => return Ok(Flow::Done),
                Ok(a) => format!("unexpected answer to HEAD: {a:?}"),
                Err(Failure::Transport(e)) => format!("cannot reach the device: {e}"),
                Err(f) => return Err(f),
            };
            self.retry(&mut progress.backoff, report, &why, obs).await?;
        }
    }

    /// One `PATCH` with the file from `offset` to its end, paced by `--limit-rate`.
    async fn send(
        &self,
        location: &str,
        offset: u64,
        local: &LocalBundle,
        report: &mut Report,
        obs: &dyn Observer,
    ) -> Result<Answer, Failure> {
        let mut file = tokio::fs::File::open(&local.path)
            .await
            .map_err(|e| Failure::Local(format!("cannot open {}: {e}", local.path.display())))?;
        match file.metadata().await {
            Ok(m) if m.len() == local.size => {}
            Ok(m) => {
                return Err(Failure::Local(format!(
                    "{} changed while it was being pushed ({} bytes, was {})",
                    local.path.display(),
                    m.len(),
                    local.size
                )))
            }
            Err(e) => {
                return Err(Failure::Local(format!(
                    "cannot read {}: {e}",
                    local.path.display()
                )))
            }
        }
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| Failure::Local(format!("cannot read {}: {e}", local.path.display())))?;
        let remaining = local.size - offset;
        let sent = Arc::new(AtomicU64::new(0));
        let stream = body_stream(file, remaining, self.throttle.clone(), sent.clone());
        let req = self
            .request(Method::PATCH, location)
            .header("Upload-Offset", offset)
            .header(CONTENT_TYPE, "application/octet-stream")
            .header(CONTENT_LENGTH, remaining)
            .body(http::streaming(stream));
        // Progress comes from the counter while the request runs.
        let watch = async {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let now = sent.load(Ordering::Relaxed);
                obs.sent(now - last);
                last = now;
            }
        };
        let result = tokio::select! {
            r = self.exchange(req) => r,
            _ = watch => unreachable!("the progress loop never ends"),
        };
        report.bytes_sent += sent.load(Ordering::Relaxed);
        result
    }

    /// Follows a bundle on the device until it is applied or failed, and, on a device that
    /// feeds a container engine, until the engine's outcome is in (what the edge agent needs).
    pub async fn wait(&self, report: &mut Report, obs: &dyn Observer) {
        let mut backoff = Backoff::new(self.settings_retry.0, self.settings_retry.1);
        let path = sideload_device_api::answers::bundle_path(&report.bundle);
        let mut poll = Duration::from_millis(500);
        let mut unknown = 0;
        // Until a status answer says otherwise: the upload's answer does not tell.
        let mut engine_pending = true;
        loop {
            if report
                .state
                .is_some_and(|s| followed_to_end(s, engine_pending))
            {
                return;
            }
            report.status_requests += 1;
            let result = self
                .fetch(self.request(Method::GET, &path).body(http::empty()))
                .await;
            let why = match result {
                Ok(reply) if reply.status == 200 => {
                    match serde_json::from_slice::<sideload_device_api::BundleStatus>(&reply.body) {
                        Ok(status) => {
                            engine_pending = status.engine_pending();
                            if note_status(report, &status, engine_pending, obs) {
                                return;
                            }
                            backoff.reset();
                            if self.within(tokio::time::sleep(poll)).await.is_err() {
                                return self.wait_deadline(report);
                            }
                            poll = (poll * 2).min(Duration::from_secs(5));
                            continue;
                        }
                        Err(e) => format!("bundle status: unexpected answer: {e}"),
                    }
                }
                Ok(reply) => {
                    let answer = classify(reply.status, None, &reply.body);
                    unknown += u32::from(reply.status == 404);
                    if let Answer::Fatal(r) = &answer {
                        return report.refused(Outcome::Error, r);
                    }
                    if unknown >= MAX_STUCK {
                        return report.fail(
                            Outcome::Error,
                            "unknown_bundle",
                            format!("the device does not know bundle {}", report.bundle),
                            "check the device's journal (GET /sideload/v1/journal)".into(),
                        );
                    }
                    format!("bundle status: {answer:?}")
                }
                Err(Failure::Deadline) => return self.wait_deadline(report),
                Err(e) => format!("cannot reach the device: {e:?}"),
            };
            if self
                .retry_status(&mut backoff, report, &why, obs)
                .await
                .is_err()
            {
                return self.wait_deadline(report);
            }
        }
    }

    fn wait_deadline(&self, report: &mut Report) {
        if report.state == Some(BundleState::Applied) {
            return report.fail(
                Outcome::Deadline,
                "deadline",
                format!(
                    "{}: applied, but the deadline passed before the device's container engine took it",
                    report.name
                ),
                format!(
                    "the device offers it to the engine again; follow it with GET /sideload/v1/bundles/{}",
                    report.bundle
                ),
            );
        }
        report.fail(
            Outcome::Deadline,
            "deadline",
            format!(
                "{}: the deadline passed before the device applied it (last state: {})",
                report.name,
                report.state.map_or("unknown", BundleState::as_str)
            ),
            format!("follow it with GET /sideload/v1/bundles/{}", report.bundle),
        );
    }
}

/// Whether following a bundle ends at `state`: failed, or applied with no engine outcome
/// still to come.
fn followed_to_end(state: BundleState, engine_pending: bool) -> bool {
    state == BundleState::Failed || (state == BundleState::Applied && !engine_pending)
}

/// Takes a status answer into the report, noting what changed; true when following ends.
fn note_status(
    report: &mut Report,
    status: &sideload_device_api::BundleStatus,
    engine_pending: bool,
    obs: &dyn Observer,
) -> bool {
    let record = &status.bundle;
    let state = record.state;
    if report.state != Some(state) {
        obs.note(&format!("device: {state}"));
    }
    // A waiting bundle (the device keeps it until a full disk or a down registry passes) is
    // followed on; its reason goes into the report.
    if matches!(state, BundleState::Failed | BundleState::Waiting) {
        report.reason = record.reason.clone();
        report.advice = record.advice.clone();
    }
    if let Some(engine) = &record.engine {
        if report.engine.as_ref() != Some(engine) {
            obs.note(&format!("device engine: {engine}"));
        }
        report.engine = Some(engine.clone());
    }
    report.state = Some(state);
    followed_to_end(state, engine_pending)
}

/// The device lost the upload: create a new one, unless that happened too often.
fn lost(report: &mut Report, progress: &mut Progress, obs: &dyn Observer) -> Flow {
    if report.upload_lost(&mut progress.recreated, obs) {
        Flow::Recreate
    } else {
        Flow::Done
    }
}

/// The file from its current position, `remaining` bytes, in chunks paced by the bucket.
fn body_stream(
    file: tokio::fs::File,
    remaining: u64,
    throttle: Option<Arc<Mutex<TokenBucket>>>,
    sent: Arc<AtomicU64>,
) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures_util::stream::unfold(
        (file, remaining, throttle, sent),
        |(mut file, remaining, throttle, sent)| async move {
            if remaining == 0 {
                return None;
            }
            let chunk = throttle
                .as_ref()
                .map(|t| t.lock().unwrap_or_else(|p| p.into_inner()).chunk())
                .unwrap_or(64 << 10)
                .min(remaining as usize);
            let mut buf = vec![0u8; chunk];
            if let Err(e) = file.read_exact(&mut buf).await {
                return Some((Err(e), (file, 0, throttle, sent)));
            }
            if let Some(t) = &throttle {
                let wait = t
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take(chunk as u64, Instant::now());
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
            sent.fetch_add(chunk as u64, Ordering::Relaxed);
            Some((
                Ok(Bytes::from(buf)),
                (file, remaining - chunk as u64, throttle, sent),
            ))
        },
    )
}
