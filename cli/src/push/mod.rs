//! `sideload push`: sends bundles to a device's daemon over its resumable upload API
//! (`docs/upload-api.md`) across links that drop every few minutes.
//!
//! The device stores every byte it receives, so the client never decides what arrived: after
//! any failure it asks the device (`HEAD`) and goes on from there. Retries back off
//! exponentially with jitter, reset after progress; a dead link is noticed by the kernel
//! (`TCP_USER_TIMEOUT`, keepalive) rather than by a fixed request timeout that a slow link
//! would trip. Pure decisions (`classify`, `backoff`, `throttle`) are separate from the I/O.

pub mod backoff;
pub mod http;
pub mod throttle;
pub mod tls;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, StatusCode};
use serde::Serialize;
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
    pub state: Option<String>,
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
            Answer::Refused {
                code,
                reason,
                advice,
            } => self.fail(Outcome::Refused, code, reason.clone(), advice.clone()),
            Answer::Fatal {
                code,
                reason,
                advice,
            } => self.fail(Outcome::Error, code, reason.clone(), advice.clone()),
            _ => return false,
        }
        true
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

/// What an answer from the device means for the client. Pure, so every status is tested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `POST`: the device already has this bundle.
    Known {
        /// The bundle id.
        bundle: String,
        /// Its state.
        state: String,
    },
    /// `POST`: an upload to send to.
    Upload {
        /// Its URL path.
        location: String,
        /// Bytes the device holds.
        offset: u64,
    },
    /// The last byte arrived and the device took the bundle (`queued` or `duplicate`).
    Taken {
        /// The bundle id.
        bundle: String,
        /// `queued` or `duplicate`.
        intake: String,
    },
    /// Go on from this offset (`204`, `409`, `400 overflow`).
    Offset(u64),
    /// Refused for good.
    Refused {
        /// Stable code.
        code: String,
        /// Why.
        reason: String,
        /// What to do.
        advice: String,
    },
    /// The upload no longer exists (expired, cancelled): create a new one.
    Gone,
    /// A passing problem (busy, device-side I/O): retry later.
    Retry(String),
    /// A problem retrying does not fix.
    Fatal {
        /// Stable code.
        code: String,
        /// Why.
        reason: String,
        /// What to do.
        advice: String,
    },
}

/// Interprets a device answer (`status`, its `Upload-Offset`, its JSON body).
pub fn classify(status: u16, upload_offset: Option<u64>, body: &[u8]) -> Answer {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let err = &json["error"];
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let code = text(&err["code"]);
    let reason = match text(&err["reason"]) {
        r if r.is_empty() => format!("the device answered HTTP {status}"),
        r => r,
    };
    let advice = text(&err["advice"]);
    match status {
        200..=202 => match json["outcome"].as_str() {
            Some("known") => Answer::Known {
                bundle: text(&json["bundle"]["id"]),
                state: text(&json["bundle"]["state"]),
            },
            Some("queued") | Some("duplicate") => Answer::Taken {
                bundle: text(&json["bundle"]),
                intake: text(&json["outcome"]),
            },
            _ => match (json["location"].as_str(), json["offset"].as_u64()) {
                (Some(location), Some(offset)) => Answer::Upload {
                    location: location.to_owned(),
                    offset,
                },
                _ => Answer::Fatal {
                    code: "unexpected_answer".into(),
                    reason: format!(
                        "the device answered HTTP {status} with {}",
                        String::from_utf8_lossy(&body[..body.len().min(200)])
                    ),
                    advice: "check that --to points at a sideload device daemon".into(),
                },
            },
        },
        409 if code == "upload_busy" => Answer::Retry(reason),
        204 | 409 => match upload_offset {
            Some(o) => Answer::Offset(o),
            None => Answer::Retry(format!("HTTP {status} without Upload-Offset: {reason}")),
        },
        400 if code == "overflow" => match upload_offset {
            Some(o) => Answer::Offset(o),
            None => Answer::Retry(reason),
        },
        403 => Answer::Refused {
            code: if code.is_empty() {
                "forbidden".into()
            } else {
                code
            },
            reason,
            advice,
        },
        404 => Answer::Gone,
        401 => Answer::Fatal {
            code: "unauthorized".into(),
            reason,
            advice: "pass the device's upload token with --token-file (or SIDELOAD_DEVICE_TOKEN)"
                .into(),
        },
        408 | 429 | 500 | 502 | 503 | 504 => Answer::Retry(reason),
        _ => Answer::Fatal {
            code: if code.is_empty() {
                format!("http_{status}")
            } else {
                code
            },
            reason,
            advice: if advice.is_empty() {
                "check --to and the device's logs".into()
            } else {
                advice
            },
        },
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

/// What one push carries from request to request.
struct PushState {
    backoff: Backoff,
    /// Times the device lost the upload.
    recreated: u32,
    /// Answers in a row that moved nothing: a device that never progresses must not keep the
    /// client busy until the deadline (or forever).
    stuck: u32,
}

impl PushState {
    /// The device lost the upload: create a new one, unless that happened too often.
    fn lost(&mut self, report: &mut Report, obs: &dyn Observer) -> Next {
        if report.upload_lost(&mut self.recreated, obs) {
            Next::Create
        } else {
            Next::Done
        }
    }
}

/// Where a push goes after the device lost its upload, or gave its last word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// The push is over; the report says how.
    Done,
    /// Start a new upload.
    Create,
}

/// What an offset answer means to a push that sent from `before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OffsetStep {
    /// The device holds more: back off less, and the no-progress count starts over.
    Advanced,
    /// It took nothing, for the `stuck`th time in a row: wait, then go on.
    Unchanged { stuck: u32 },
    /// It took nothing [`MAX_STUCK`] times in a row: give up.
    GiveUp { stuck: u32 },
    /// It holds less than before (it lost bytes): go on from there.
    Behind,
}

/// Decides what the device's answer that it holds `held` bytes means, after `stuck` answers in
/// a row without progress, for a request sent from `before`.
fn offset_step(before: u64, held: u64, stuck: u32) -> OffsetStep {
    match held.cmp(&before) {
        std::cmp::Ordering::Greater => OffsetStep::Advanced,
        std::cmp::Ordering::Less => OffsetStep::Behind,
        std::cmp::Ordering::Equal if stuck + 1 >= MAX_STUCK => {
            OffsetStep::GiveUp { stuck: stuck + 1 }
        }
        std::cmp::Ordering::Equal => OffsetStep::Unchanged { stuck: stuck + 1 },
    }
}

/// A device daemon reached over HTTP(S).
pub struct Device {
    client: http::HttpClient,
    base: String,
    token: Option<HeaderValue>,
    throttle: Option<Arc<Mutex<TokenBucket>>>,
    settings_retry: (Duration, Duration),
    deadline: Option<tokio::time::Instant>,
}

/// No-progress answers in a row before the client gives up on a bundle.
const MAX_STUCK: u32 = 8;
/// Times the device may lose an upload (expiry, cancel) before the client gives up.
const MAX_RECREATED: u32 = 3;

/// Upper bound on a device answer's body; answers are small JSON documents.
const MAX_ANSWER: usize = 1 << 20;

/// A request ready to send, or why it could not be made.
type Prepared = Result<Request<http::Body>, hyper::http::Error>;

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
        let client = http::client(&http::Options {
            stall_timeout: settings.stall_timeout,
            trust,
        })
        .context("cannot set up TLS")?;
        let token = match &settings.token {
            Some(t) => Some(
                HeaderValue::from_str(&format!("Bearer {t}"))
                    .context("the upload token has characters a header cannot carry")?,
            ),
            None => None,
        };
        let now = Instant::now();
        Ok(Device {
            client,
            base: settings.base.trim_end_matches('/').to_owned(),
            token,
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
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(
                USER_AGENT,
                concat!("sideload-push/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(t) = &self.token {
            b = b.header(AUTHORIZATION, t.clone());
        }
        b
    }

    /// Sends a request; the status, `Upload-Offset` and the (small) body of the answer.
    async fn fetch(&self, req: Prepared) -> Result<(StatusCode, Option<u64>, Vec<u8>), Failure> {
        let req = req.map_err(|e| Failure::Local(format!("cannot make the request: {e}")))?;
        let fetch = async {
            let resp = self.client.request(req).await.map_err(|e| transport(&e))?;
            let status = resp.status();
            let offset = resp
                .headers()
                .get("upload-offset")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let body = read_small(resp.into_body())
                .await
                .map_err(|e| transport(&e))?;
            Ok((status, offset, body))
        };
        self.within(fetch).await?
    }

    /// Sends a request and says what its answer means.
    async fn exchange(&self, req: Prepared) -> Result<Answer, Failure> {
        let (status, offset, body) = self.fetch(req).await?;
        Ok(classify(status.as_u16(), offset, &body))
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
        let mut state = PushState {
            backoff: Backoff::new(self.settings_retry.0, self.settings_retry.1),
            recreated: 0,
            stuck: 0,
        };
        let mut first = true;
        loop {
            // Create (or find) the upload.
            let Some((location, offset)) = self.create(local, report, &mut state, obs).await?
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
                .upload(local, report, &location, offset, &mut state, obs)
                .await?
            {
                Next::Done => return Ok(()),
                Next::Create => {}
            }
        }
    }

    /// Creates (or finds) the upload, retrying until the device answers: its location and the
    /// bytes it holds, or `None` when the push is over (the device knows the bundle, or
    /// refused it).
    async fn create(
        &self,
        local: &LocalBundle,
        report: &mut Report,
        state: &mut PushState,
        obs: &dyn Observer,
    ) -> Result<Option<(String, u64)>, Failure> {
        loop {
            report.requests += 1;
            let create = self
                .request(Method::POST, "/sideload/v1/uploads")
                .header("Bundle-Digest", &local.file_digest)
                .header("Upload-Length", local.size)
                // Percent-encoded UTF-8, so any file name reaches the device's journal as it is.
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
            self.retry(&mut state.backoff, report, &why, obs).await?;
        }
    }

    /// Sends the file from `offset` until the device takes it, refuses it or loses the upload.
    async fn upload(
        &self,
        local: &LocalBundle,
        report: &mut Report,
        location: &str,
        mut offset: u64,
        state: &mut PushState,
        obs: &dyn Observer,
    ) -> Result<Next, Failure> {
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
                return Ok(Next::Done);
            }
            report.requests += 1;
            let before = offset;
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
                    self.retry(&mut state.backoff, report, &why, obs).await?;
                    Answer::Retry(String::new())
                }
                Err(f) => return Err(f),
            };
            match answer {
                Answer::Taken { bundle, intake } => {
                    report.held = local.size;
                    report.outcome = if intake == "duplicate" {
                        Outcome::Duplicate
                    } else {
                        Outcome::Queued
                    };
                    if !bundle.is_empty() {
                        report.bundle = bundle;
                    }
                    return Ok(Next::Done);
                }
                Answer::Offset(o) => {
                    if self
                        .offset_answer(local, report, location, before, o, state, obs)
                        .await?
                    {
                        return Ok(Next::Done);
                    }
                    offset = o;
                }
                Answer::Refused { .. } | Answer::Fatal { .. } => {
                    report.verdict(&answer);
                    return Ok(Next::Done);
                }
                Answer::Gone => return Ok(state.lost(report, obs)),
                Answer::Retry(why) => {
                    if !why.is_empty() {
                        let why = format!("device busy: {why}");
                        self.retry(&mut state.backoff, report, &why, obs).await?;
                    }
                    match self
                        .resume_at(local, report, location, before, state, obs)
                        .await?
                    {
                        Ok(o) => offset = o,
                        Err(next) => return Ok(next),
                    }
                }
                Answer::Known { .. } | Answer::Upload { .. } => {
                    let why = "unexpected answer to an upload request";
                    self.retry(&mut state.backoff, report, why, obs).await?;
                }
            }
        }
    }

    /// Takes the device's answer that it holds `held` bytes after a request sent from
    /// `before`; true if the push gives up (no progress too often).
    #[allow(clippy::too_many_arguments)]
    async fn offset_answer(
        &self,
        local: &LocalBundle,
        report: &mut Report,
        location: &str,
        before: u64,
        held: u64,
        state: &mut PushState,
        obs: &dyn Observer,
    ) -> Result<bool, Failure> {
        match offset_step(before, held, state.stuck) {
            OffsetStep::Advanced => {
                state.backoff.reset();
                state.stuck = 0;
            }
            OffsetStep::Unchanged { stuck } => {
                state.stuck = stuck;
                self.retry(&mut state.backoff, report, "the device took no bytes", obs)
                    .await?;
            }
            OffsetStep::GiveUp { stuck } => {
                state.stuck = stuck;
                report.fail(
                    Outcome::Error,
                    "upload_stuck",
                    format!(
                        "the device answered {stuck} times in a row that it holds {held} of {} bytes without taking more",
                        local.size
                    ),
                    format!("check the device's logs; to start over, DELETE {location} and push again"),
                );
                return Ok(true);
            }
            OffsetStep::Behind => {}
        }
        Ok(false)
    }

    /// Asks where to go on (HEAD), retrying until the device answers: the bytes it holds, or
    /// where the push goes instead (the upload lost, or a verdict).
    async fn resume_at(
        &self,
        local: &LocalBundle,
        report: &mut Report,
        location: &str,
        before: u64,
        state: &mut PushState,
        obs: &dyn Observer,
    ) -> Result<Result<u64, Next>, Failure> {
        loop {
            report.requests += 1;
            let why = match self
                .exchange(self.request(Method::HEAD, location).body(http::empty()))
                .await
            {
                Ok(Answer::Offset(o)) => {
                    if o > before {
                        state.backoff.reset();
                    }
                    if o != before {
                        obs.note(&format!("resuming at byte {o} of {}", local.size));
                    }
                    return Ok(Ok(o));
                }
                Ok(Answer::Gone) => return Ok(Err(state.lost(report, obs))),
                Ok(answer) if report.verdict(&answer) => return Ok(Err(Next::Done)),
                Ok(a) => format!("unexpected answer to HEAD: {a:?}"),
                Err(Failure::Transport(e)) => format!("cannot reach the device: {e}"),
                Err(f) => return Err(f),
            };
            self.retry(&mut state.backoff, report, &why, obs).await?;
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
        let path = format!("/sideload/v1/bundles/{}", report.bundle);
        let mut poll = Duration::from_millis(500);
        let mut unknown = 0;
        // Until a status answer says otherwise: the upload's answer does not tell.
        let mut engine_pending = true;
        loop {
            if let Some(state) = &report.state {
                if state == "failed" || (state == "applied" && !engine_pending) {
                    return;
                }
            }
            report.status_requests += 1;
            let result = self
                .fetch(self.request(Method::GET, &path).body(http::empty()))
                .await;
            match result {
                Ok((StatusCode::OK, _, body)) => {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                    let record = &v["bundle"];
                    let state = record["state"].as_str().unwrap_or("unknown").to_owned();
                    if report.state.as_deref() != Some(&state) {
                        obs.note(&format!("device: {state}"));
                    }
                    // A waiting bundle (the device keeps it until a full disk or a down
                    // registry passes) is followed on; its reason goes into the report.
                    if state == "failed" || state == "waiting" {
                        report.reason = record["reason"].as_str().map(str::to_owned);
                        report.advice = record["advice"].as_str().map(str::to_owned);
                    }
                    let engine = record["engine"].as_str();
                    engine_pending = engine_pending_after(&v, &state);
                    if let Some(engine) = engine {
                        if report.engine.as_deref() != Some(engine) {
                            obs.note(&format!("device engine: {engine}"));
                        }
                        report.engine = Some(engine.to_owned());
                    }
                    let done = state == "failed" || (state == "applied" && !engine_pending);
                    report.state = Some(state);
                    if done {
                        return;
                    }
                    backoff.reset();
                    if self.within(tokio::time::sleep(poll)).await.is_err() {
                        return self.wait_deadline(report);
                    }
                    poll = (poll * 2).min(Duration::from_secs(5));
                }
                Ok((status, _, body)) => {
                    let answer = classify(status.as_u16(), None, &body);
                    unknown += u32::from(status == StatusCode::NOT_FOUND);
                    if let Answer::Fatal {
                        code,
                        reason,
                        advice,
                    } = &answer
                    {
                        report.fail(Outcome::Error, code, reason.clone(), advice.clone());
                        return;
                    }
                    if unknown >= MAX_STUCK {
                        report.fail(
                            Outcome::Error,
                            "unknown_bundle",
                            format!("the device does not know bundle {}", report.bundle),
                            "check the device's journal (GET /sideload/v1/journal)".into(),
                        );
                        return;
                    }
                    let why = format!("bundle status: {answer:?}");
                    if self
                        .retry_status(&mut backoff, report, &why, obs)
                        .await
                        .is_err()
                    {
                        return self.wait_deadline(report);
                    }
                }
                Err(Failure::Deadline) => return self.wait_deadline(report),
                Err(e) => {
                    let why = format!("cannot reach the device: {e:?}");
                    if self
                        .retry_status(&mut backoff, report, &why, obs)
                        .await
                        .is_err()
                    {
                        return self.wait_deadline(report);
                    }
                }
            }
        }
    }

    fn wait_deadline(&self, report: &mut Report) {
        if report.state.as_deref() == Some("applied") {
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
                report.state.as_deref().unwrap_or("unknown")
            ),
            format!("follow it with GET /sideload/v1/bundles/{}", report.bundle),
        );
    }
}

fn transport(e: &(dyn std::error::Error + 'static)) -> Failure {
    match tls::tls_failure(e) {
        Some(t) => Failure::Tls(t),
        None => {
            // The chain says what happened (refused, reset, timed out); the top says where.
            let mut text = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            Failure::Transport(text)
        }
    }
}

async fn read_small(mut body: hyper::body::Incoming) -> Result<Vec<u8>, hyper::Error> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if out.len() < MAX_ANSWER {
                out.extend_from_slice(&data[..data.len().min(MAX_ANSWER - out.len())]);
            }
        }
    }
    Ok(out)
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

/// Whether an applied bundle still waits for the device's engine: the device says it feeds one
/// (`engine_configured`, absent on older devices) and the record has no `engine` outcome yet.
fn engine_pending_after(status: &serde_json::Value, state: &str) -> bool {
    state == "applied"
        && status["engine_configured"].as_bool() == Some(true)
        && !status["bundle"]["engine"].is_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_that_move_reset_and_eight_that_do_not_give_up() {
        assert_eq!(offset_step(100, 200, 5), OffsetStep::Advanced);
        assert_eq!(offset_step(100, 50, 5), OffsetStep::Behind);
        assert_eq!(offset_step(100, 100, 0), OffsetStep::Unchanged { stuck: 1 });
        assert_eq!(
            offset_step(100, 100, MAX_STUCK - 2),
            OffsetStep::Unchanged {
                stuck: MAX_STUCK - 1
            }
        );
        assert_eq!(
            offset_step(100, 100, MAX_STUCK - 1),
            OffsetStep::GiveUp { stuck: MAX_STUCK }
        );
    }

    #[test]
    fn answers_map_to_what_the_client_does() {
        let created = br#"{"location":"/sideload/v1/uploads/ab","offset":0,"upload":"ab"}"#;
        assert_eq!(
            classify(201, Some(0), created),
            Answer::Upload {
                location: "/sideload/v1/uploads/ab".into(),
                offset: 0
            }
        );
        let known = br#"{"outcome":"known","bundle":{"id":"sha256:1","state":"applied"}}"#;
        assert_eq!(
            classify(200, None, known),
            Answer::Known {
                bundle: "sha256:1".into(),
                state: "applied".into()
            }
        );
        let queued = br#"{"outcome":"queued","bundle":"sha256:1","status":"/x"}"#;
        assert_eq!(
            classify(202, Some(9), queued),
            Answer::Taken {
                bundle: "sha256:1".into(),
                intake: "queued".into()
            }
        );
        assert_eq!(classify(204, Some(7), b""), Answer::Offset(7));
        let mismatch = br#"{"error":{"code":"offset_mismatch","reason":"r","advice":"a"}}"#;
        assert_eq!(classify(409, Some(5), mismatch), Answer::Offset(5));
        let overflow = br#"{"error":{"code":"overflow","reason":"r","advice":"a"}}"#;
        assert_eq!(classify(400, Some(5), overflow), Answer::Offset(5));
        let refused = br#"{"error":{"code":"unknown_key","reason":"why","advice":"fix"}}"#;
        assert_eq!(
            classify(403, None, refused),
            Answer::Refused {
                code: "unknown_key".into(),
                reason: "why".into(),
                advice: "fix".into()
            }
        );
        assert_eq!(classify(404, None, b""), Answer::Gone);
        assert!(matches!(classify(429, None, b""), Answer::Retry(_)));
        assert!(matches!(classify(503, None, b"{}"), Answer::Retry(_)));
        assert!(
            matches!(classify(401, None, b""), Answer::Fatal { code, .. } if code == "unauthorized")
        );
        let full = br#"{"error":{"code":"insufficient_storage","reason":"full","advice":"free"}}"#;
        assert!(
            matches!(classify(507, None, full), Answer::Fatal { code, .. } if code == "insufficient_storage")
        );
        assert!(
            matches!(classify(200, None, b"<html>"), Answer::Fatal { code, .. } if code == "unexpected_answer")
        );
    }

    #[test]
    fn wait_holds_for_the_engine_only_where_the_device_feeds_one() {
        let status = |configured: Option<bool>, engine: serde_json::Value| {
            let mut v = serde_json::json!({"bundle": {"state": "applied", "engine": engine}});
            if let Some(c) = configured {
                v["engine_configured"] = c.into();
            }
            v
        };
        let null = serde_json::Value::Null;
        assert!(engine_pending_after(
            &status(Some(true), null.clone()),
            "applied"
        ));
        assert!(!engine_pending_after(
            &status(Some(true), "loaded as sha256:c".into()),
            "applied"
        ));
        assert!(!engine_pending_after(
            &status(Some(false), null.clone()),
            "applied"
        ));
        assert!(
            !engine_pending_after(&status(None, null.clone()), "applied"),
            "older devices"
        );
        assert!(!engine_pending_after(&status(Some(true), null), "applying"));
    }
}
