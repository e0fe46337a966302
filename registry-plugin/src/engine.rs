//! A small client for the Docker Engine API, spoken over a unix socket, that puts an image from
//! the local registry into the container engine (dockerd/moby, or podman's service).
//!
//! After the daemon has stored an image in the local registry, an edge agent that may not pull
//! (IoT Edge's edgeAgent with `imagePullPolicy: never`) still cannot start it: it looks in the
//! engine's image store, not in the registry. [`Engine::pull`] has the engine pull the image by
//! manifest digest from the plugin's own listen address ([`EngineConfig::pull_from`]),
//! [`Engine::tag`] adds the names the deployment manifest uses, [`Engine::inspect`] checks a
//! name resolves and [`Engine::list`] reports every name for the inventory. Which names:
//! [`crate::names`]; the whole load: [`crate::sink`]. [`Engine::load`] is the plain form (local
//! digest, then `REPOSITORY:TAG`), kept for the podman tests.
//!
//! # Why it is hand-written
//!
//! Four endpoints and a ping are all we need. No well-kept crate both speaks the API over a unix
//! socket with hyper 1 and stays small: bollard does, but it is a large dependency tree (the full
//! generated API model, its own TLS and SSH stacks) for four requests. Here each request opens
//! one connection with `hyper::client::conn::http1` over a `tokio::net::UnixStream`, which also
//! means no connection pool to go stale when the engine restarts.
//!
//! # What it deliberately does not do
//!
//! - No TCP or TLS engines, no registry credentials (`X-Registry-Auth`): the engine pulls from
//!   the plugin on the same device, over loopback.
//! - No API version negotiation: paths are unversioned, so the engine answers in its current
//!   version. The endpoints used (`/_ping`, `/images/create`, `/images/{name}/tag`,
//!   `/images/{name}/json`, `/images/json`) have kept their shape since API 1.24, and both dockerd and podman's
//!   Docker-compatible service (`podman system service`) serve them.
//! - Nothing is read whole from the socket: JSON answers are capped at [`MAX_JSON_BYTES`], and
//!   the image list at [`MAX_LIST_BYTES`], and
//!   the pull's progress stream is read line by line, each line capped at
//!   [`MAX_PROGRESS_LINE_BYTES`].
//!
//! # How the parts fit
//!
//! [`EngineConfig`] comes from the daemon's config file; [`Engine::new`] keeps it. Every request
//! goes through one private `send`, which connects, sends and returns the response head; the body
//! is then read either bounded (`read_bounded`) or as progress lines (`ProgressLines`). Every
//! failure is an [`EngineError`] that names what was tried and what the engine answered, and
//! [`EngineError::advice`] turns it into one line an operator can act on.
//!
//! # Tests
//!
//! Unit tests below cover the pure parts (query encoding, reference checks, progress lines) and
//! the timeout on a socket that never answers. `tests/engine_podman.rs` runs [`Engine`] against
//! podman's Docker-compatible service and a real distribution registry:
//! `cargo test -p sideload-registry-plugin --test engine_podman` (needs `podman`, `skopeo` and
//! `docker-registry` installed).

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::Value;
use sideload_signing::{Digest, RepositoryName, Tag};
use tokio::net::UnixStream;

/// Largest JSON answer read into memory (image inspect, error bodies, ping). An image inspect is
/// a few KiB; anything near this cap is not a Docker Engine API talking.
pub const MAX_JSON_BYTES: usize = 1 << 20;

/// Largest single line of the pull progress stream. Lines are a few hundred bytes; the stream
/// itself may be long, so it is never held whole.
pub const MAX_PROGRESS_LINE_BYTES: usize = 64 << 10;

/// Largest image list read into memory (`GET /images/json`, for the inventory): a few hundred
/// bytes per image, so thousands of images fit.
pub const MAX_LIST_BYTES: usize = 16 << 20;

/// Longest engine message kept in an error, so a confused engine cannot flood the journal.
const MAX_MESSAGE_CHARS: usize = 1000;

/// Upper bound for the quick calls (`ping`, `inspect`): a status page must not hang for the whole
/// pull timeout when the engine is wedged.
const QUICK_TIMEOUT: Duration = Duration::from_secs(30);

fn default_timeout_secs() -> u64 {
    600
}

/// Where the container engine listens and how it reaches our registry: the `[engine]` section of
/// the daemon's config. Without it the daemon only fills the registry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Docker Engine API socket, e.g. `/run/docker.sock` or podman's `/run/podman/podman.sock`.
    pub socket: PathBuf,
    /// Registry `host:port` the engine pulls from: the plugin's own listen address as the engine
    /// reaches it, e.g. `"127.0.0.1:5000"`. The engine must treat it as insecure (plain HTTP).
    pub pull_from: String,
    /// Seconds for the whole pull and tagging of one image (default 600): a big image on a slow
    /// disk takes minutes, a wedged engine must not hold the apply queue forever.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u64,
}

/// What the engine knows about one image: enough for the tests and the status API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineImage {
    /// The engine's image ID (`sha256:` and the config digest, for both dockerd and podman).
    pub id: String,
    /// Names the engine lists for the image, as the engine normalises them: podman and dockerd
    /// both store `edge/app:v1` as `docker.io/edge/app:v1`; older dockerd shows `edge/app:v1`.
    pub repo_tags: Vec<String>,
    /// `repository@digest` references the image was pulled by.
    pub repo_digests: Vec<String>,
}

/// A Docker Engine API client bound to one socket; cheap to clone, holds no connection.
#[derive(Debug, Clone)]
pub struct Engine {
    config: EngineConfig,
}

/// One request's context, kept so every error can say what was tried.
struct Call {
    /// What we were doing, in words: "pulling 127.0.0.1:5000/edge/app@sha256:…".
    action: String,
    method: Method,
    /// Path and query, e.g. `/images/create?fromImage=…`.
    path: String,
}

impl Call {
    fn endpoint(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

impl Engine {
    /// Keeps the config; nothing is checked or connected until the first request, so the daemon
    /// can start before the engine does.
    pub fn new(config: EngineConfig) -> Engine {
        Engine { config }
    }

    /// The config this engine was built from (for the status API and log lines).
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// `GET /_ping`: tells whether the engine is up and answers on the configured socket, so the
    /// daemon can log a clear warning at start instead of failing on the first image.
    pub async fn ping(&self) -> Result<(), EngineError> {
        let call = Call {
            action: "pinging the engine".to_owned(),
            method: Method::GET,
            path: "/_ping".to_owned(),
        };
        let limit = self.quick_timeout();
        self.within(limit, &call.action, async {
            let response = self.send(&call).await?;
            if !response.status().is_success() {
                return Err(self.refusal(&call, response).await);
            }
            self.read_bounded(&call, response.into_body(), MAX_JSON_BYTES)
                .await
                .map(drop)
        })
        .await
    }

    /// Makes `{repository}:{tag}` for every tag resolve in the engine to the image whose
    /// manifest is `manifest_digest`, and returns the engine's image ID.
    ///
    /// The engine pulls `{pull_from}/{repository}@{manifest_digest}` through
    /// `POST /images/create` (by digest, so what it gets is exactly what the bundle verified),
    /// reading the progress stream to its end: a line with `error`/`errorDetail` is a failure,
    /// even though the HTTP status was 200. Then each tag is set with `POST /images/{name}/tag`.
    /// The whole of it is bounded by [`EngineConfig::timeout_secs`]; on timeout the connection
    /// is dropped, which cancels the engine's pull. The daemon uses [`crate::sink`], which also
    /// names the image under its upstream hosts; this is the plain form.
    pub async fn load(
        &self,
        repository: &RepositoryName,
        manifest_digest: &Digest,
        tags: &[Tag],
    ) -> Result<String, EngineError> {
        let image = format!(
            "{}/{}@{}",
            self.config.pull_from, repository, manifest_digest
        );
        let limit = Duration::from_secs(self.config.timeout_secs);
        let action = format!("loading {image}");
        self.within(limit, &action, async {
            let id = self.pull_unbounded(&image).await?;
            for tag in tags {
                self.tag_unbounded(&image, repository.as_str(), tag.as_str())
                    .await?;
            }
            tracing::info!(%image, %id, tags = tags.len(), "image loaded into the engine");
            Ok(id)
        })
        .await
    }

    /// Pulls `reference` (`host/repository@sha256:…` or `host/repository:tag`) through
    /// `POST /images/create` and returns the image ID the engine then has under it. Bounded by
    /// [`EngineConfig::timeout_secs`].
    pub async fn pull(&self, reference: &str) -> Result<String, EngineError> {
        let limit = Duration::from_secs(self.config.timeout_secs);
        self.within(
            limit,
            &format!("pulling {reference}"),
            self.pull_unbounded(reference),
        )
        .await
    }

    /// Adds the name `repository:tag` to the image `image` resolves to
    /// (`POST /images/{image}/tag`). `repository` may carry a registry host.
    pub async fn tag(&self, image: &str, repository: &str, tag: &str) -> Result<(), EngineError> {
        let limit = self.quick_timeout();
        self.within(
            limit,
            &format!("tagging {image} as {repository}:{tag}"),
            self.tag_unbounded(image, repository, tag),
        )
        .await
    }

    /// `GET /images/json`: every image the engine holds with its names, as the engine spells
    /// them. For the inventory; the answer is capped at [`MAX_LIST_BYTES`].
    pub async fn list(&self) -> Result<Vec<EngineImage>, EngineError> {
        let call = Call {
            action: "listing the engine's images".to_owned(),
            method: Method::GET,
            path: "/images/json".to_owned(),
        };
        let limit = self.quick_timeout();
        self.within(limit, &call.action, async {
            let response = self.send(&call).await?;
            if !response.status().is_success() {
                return Err(self.refusal(&call, response).await);
            }
            let body = self
                .read_bounded(&call, response.into_body(), MAX_LIST_BYTES)
                .await?;
            let listed: Vec<ListedImage> =
                serde_json::from_slice(&body).map_err(|source| EngineError::BadAnswer {
                    socket: self.config.socket.clone(),
                    action: call.action.clone(),
                    endpoint: call.endpoint(),
                    source,
                })?;
            Ok(listed
                .into_iter()
                .map(|i| EngineImage {
                    id: i.id,
                    repo_tags: clean_names(i.repo_tags),
                    repo_digests: clean_names(i.repo_digests),
                })
                .collect())
        })
        .await
    }

    /// `GET /images/{name}/json`: the image's ID and names, or `None` when the engine does not
    /// know `name`. For tests and the status API ("is v1 really in the engine?").
    ///
    /// `name` is anything the engine resolves: `edge/app:v1`, `host:port/repo@sha256:…`, an ID.
    pub async fn inspect(&self, name: &str) -> Result<Option<EngineImage>, EngineError> {
        check_reference(name)?;
        let limit = self.quick_timeout();
        self.within(
            limit,
            &format!("inspecting {name}"),
            self.inspect_unbounded(name),
        )
        .await
    }

    fn quick_timeout(&self) -> Duration {
        QUICK_TIMEOUT.min(Duration::from_secs(self.config.timeout_secs))
    }

    /// Runs `work` under `limit`, turning the elapsed timer into [`EngineError::Timeout`].
    async fn within<T>(
        &self,
        limit: Duration,
        action: &str,
        work: impl Future<Output = Result<T, EngineError>>,
    ) -> Result<T, EngineError> {
        match tokio::time::timeout(limit, work).await {
            Ok(result) => result,
            Err(_) => Err(EngineError::Timeout {
                socket: self.config.socket.clone(),
                action: action.to_owned(),
                secs: limit.as_secs(),
            }),
        }
    }

    /// Pulls `image` and returns the ID the engine has under that name afterwards.
    async fn pull_unbounded(&self, image: &str) -> Result<String, EngineError> {
        check_reference(image)?;
        let (from, tag) = split_reference(image);
        // `tag` may hold a digest: the engine then pulls `fromImage@tag`.
        let call = Call {
            action: format!("pulling {image}"),
            method: Method::POST,
            path: format!(
                "/images/create?fromImage={}&tag={}",
                encode_query(from),
                encode_query(tag)
            ),
        };
        let response = self.send(&call).await?;
        let status = response.status();
        if !status.is_success() {
            // dockerd refuses an unknown manifest up front (404), podman reports it in the stream.
            let message = match self.refusal(&call, response).await {
                EngineError::Refused { message, .. } => message,
                other => return Err(other),
            };
            return Err(self.pull_failed(image, status, message));
        }
        let mut body = response.into_body();
        let mut lines = ProgressLines::new(MAX_PROGRESS_LINE_BYTES);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.request_error(&call, e))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            for line in lines
                .push(&data)
                .map_err(|_| self.too_large(&call, lines.max))?
            {
                self.check_progress(&call, image, status, &line)?;
            }
        }
        if let Some(line) = lines.finish() {
            self.check_progress(&call, image, status, &line)?;
        }
        match self.inspect_unbounded(image).await? {
            Some(found) => Ok(found.id),
            None => Err(EngineError::NotThere {
                socket: self.config.socket.clone(),
                image: image.to_owned(),
            }),
        }
    }

    fn check_progress(
        &self,
        call: &Call,
        image: &str,
        status: StatusCode,
        line: &[u8],
    ) -> Result<(), EngineError> {
        match progress_error(line) {
            Ok(None) => Ok(()),
            Ok(Some(message)) => Err(self.pull_failed(image, status, message)),
            Err(source) => Err(EngineError::BadAnswer {
                socket: self.config.socket.clone(),
                action: call.action.clone(),
                endpoint: call.endpoint(),
                source,
            }),
        }
    }

    async fn tag_unbounded(
        &self,
        image: &str,
        repository: &str,
        tag: &str,
    ) -> Result<(), EngineError> {
        check_reference(image)?;
        check_reference(&format!("{repository}:{tag}"))?;
        let call = Call {
            action: format!("tagging {image} as {repository}:{tag}"),
            method: Method::POST,
            // `image` passed check_reference: only characters that are literal in a path.
            path: format!(
                "/images/{image}/tag?repo={}&tag={}",
                encode_query(repository),
                encode_query(tag)
            ),
        };
        let response = self.send(&call).await?;
        if !response.status().is_success() {
            return Err(self.refusal(&call, response).await);
        }
        self.read_bounded(&call, response.into_body(), MAX_JSON_BYTES)
            .await
            .map(drop)
    }

    /// `inspect` without its own timeout, for use inside `load`'s.
    async fn inspect_unbounded(&self, name: &str) -> Result<Option<EngineImage>, EngineError> {
        let call = Call {
            action: format!("inspecting {name}"),
            method: Method::GET,
            // `name` passed check_reference: only characters that are literal in a path.
            path: format!("/images/{name}/json"),
        };
        let response = self.send(&call).await?;
        match response.status() {
            StatusCode::NOT_FOUND => return Ok(None),
            status if status.is_success() => {}
            _ => return Err(self.refusal(&call, response).await),
        }
        let body = self
            .read_bounded(&call, response.into_body(), MAX_JSON_BYTES)
            .await?;
        let inspect: InspectBody =
            serde_json::from_slice(&body).map_err(|source| EngineError::BadAnswer {
                socket: self.config.socket.clone(),
                action: call.action.clone(),
                endpoint: call.endpoint(),
                source,
            })?;
        Ok(Some(EngineImage {
            id: inspect.id,
            repo_tags: inspect.repo_tags.unwrap_or_default(),
            repo_digests: inspect.repo_digests.unwrap_or_default(),
        }))
    }

    /// Opens a connection, sends `call` with an empty body, returns the response head. The
    /// connection task ends when the response body is dropped or read to its end.
    async fn send(&self, call: &Call) -> Result<Response<Incoming>, EngineError> {
        let socket = &self.config.socket;
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|source| EngineError::Connect {
                socket: socket.clone(),
                source,
            })?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|e| self.request_error(call, e))?;
        let endpoint = call.endpoint();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%endpoint, %error, "engine connection ended with an error");
            }
        });
        let request = Request::builder()
            .method(call.method.clone())
            .uri(call.path.as_str())
            // HTTP/1.1 needs a Host; over a unix socket any name does.
            .header(hyper::header::HOST, "docker")
            .header(hyper::header::CONTENT_LENGTH, "0")
            .body(Empty::new())
            .map_err(|_| EngineError::BadReference {
                reference: call.path.clone(),
                reason: "does not make a valid request path",
            })?;
        sender
            .send_request(request)
            .await
            .map_err(|e| self.request_error(call, e))
    }

    /// Reads a whole body, failing as soon as it passes `limit` bytes.
    async fn read_bounded(
        &self,
        call: &Call,
        mut body: Incoming,
        limit: usize,
    ) -> Result<Vec<u8>, EngineError> {
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.request_error(call, e))?;
            if let Ok(data) = frame.into_data() {
                if out.len() + data.len() > limit {
                    return Err(self.too_large(call, limit));
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(out)
    }

    /// Turns a non-success answer into [`EngineError::Refused`], with the engine's `message`.
    async fn refusal(&self, call: &Call, response: Response<Incoming>) -> EngineError {
        let status = response.status();
        let message = match self
            .read_bounded(call, response.into_body(), MAX_JSON_BYTES)
            .await
        {
            Ok(body) => engine_message(&body),
            Err(e) => format!("(the error answer could not be read: {e})"),
        };
        EngineError::Refused {
            socket: self.config.socket.clone(),
            action: call.action.clone(),
            endpoint: call.endpoint(),
            status: status.as_u16(),
            message,
        }
    }

    fn pull_failed(&self, image: &str, status: StatusCode, message: String) -> EngineError {
        EngineError::PullFailed {
            socket: self.config.socket.clone(),
            image: image.to_owned(),
            status: status.as_u16(),
            message,
        }
    }

    fn request_error(&self, call: &Call, source: hyper::Error) -> EngineError {
        EngineError::Request {
            socket: self.config.socket.clone(),
            action: call.action.clone(),
            endpoint: call.endpoint(),
            source,
        }
    }

    fn too_large(&self, call: &Call, limit: usize) -> EngineError {
        EngineError::TooLarge {
            socket: self.config.socket.clone(),
            action: call.action.clone(),
            endpoint: call.endpoint(),
            limit,
        }
    }
}

/// One entry of `GET /images/json`; the rest of its fields are ignored.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListedImage {
    id: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    repo_digests: Option<Vec<String>>,
}

/// Names as the engine lists them, without the placeholders dockerd uses for an image that
/// has none (`<none>:<none>`, `<none>@<none>`).
fn clean_names(names: Option<Vec<String>>) -> Vec<String> {
    names
        .unwrap_or_default()
        .into_iter()
        .filter(|n| !n.contains("<none>"))
        .collect()
}

/// Splits `name@sha256:…` or `name:tag` into the `fromImage` and `tag` of a pull (`latest` when
/// neither is written).
fn split_reference(reference: &str) -> (&str, &str) {
    if let Some((name, digest)) = reference.split_once('@') {
        return (name, digest);
    }
    let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[last_slash..].rfind(':') {
        Some(colon) => (
            &reference[..last_slash + colon],
            &reference[last_slash + colon + 1..],
        ),
        None => (reference, "latest"),
    }
}

/// The fields of `GET /images/{name}/json` we use; the rest is ignored.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectBody {
    id: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    repo_digests: Option<Vec<String>>,
}

/// Why talking to the container engine failed. Each variant names the socket, what was being
/// done (and the endpoint or image), and what the engine answered; [`EngineError::advice`] adds
/// what to check.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The socket could not be opened: no engine, wrong path, or no permission.
    #[error("cannot connect to the container engine at {}: {source}", socket.display())]
    Connect {
        /// The configured socket.
        socket: PathBuf,
        /// The connect error; its kind picks the advice.
        source: io::Error,
    },
    /// The HTTP exchange broke: the engine hung up, or the socket does not speak HTTP.
    #[error("{action}: {endpoint} on {} failed: {source}", socket.display())]
    Request {
        /// The configured socket.
        socket: PathBuf,
        /// What we were doing.
        action: String,
        /// Method and path.
        endpoint: String,
        /// hyper's error.
        source: hyper::Error,
    },
    /// The engine answered with an error status.
    #[error("{action}: the engine at {} answered {endpoint} with {status}: {message}", socket.display())]
    Refused {
        /// The configured socket.
        socket: PathBuf,
        /// What we were doing.
        action: String,
        /// Method and path.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// The engine's `message`, or the start of its answer when that was not JSON.
        message: String,
    },
    /// The engine could not pull the image, in the progress stream (podman; dockerd for most
    /// errors) or up front (dockerd for an unknown manifest).
    #[error("pulling {image} through the engine at {}: {message}", socket.display())]
    PullFailed {
        /// The configured socket.
        socket: PathBuf,
        /// `pull_from/repository@digest`.
        image: String,
        /// HTTP status of the pull answer: 200 when the error came in the progress stream.
        status: u16,
        /// The engine's `errorDetail.message` / `error`, or its `message`.
        message: String,
    },
    /// The pull reported success but the engine does not know the image afterwards.
    #[error("pulling {image} through the engine at {}: the pull reported success, but the engine does not have the image", socket.display())]
    NotThere {
        /// The configured socket.
        socket: PathBuf,
        /// `pull_from/repository@digest`.
        image: String,
    },
    /// An answer (or one progress line) was larger than we read into memory.
    #[error("{action}: the answer of the engine at {} to {endpoint} is over {limit} bytes", socket.display())]
    TooLarge {
        /// The configured socket.
        socket: PathBuf,
        /// What we were doing.
        action: String,
        /// Method and path.
        endpoint: String,
        /// The cap that was passed.
        limit: usize,
    },
    /// An answer was not the JSON the Docker Engine API defines.
    #[error("{action}: the answer of the engine at {} to {endpoint} is not the expected JSON: {source}", socket.display())]
    BadAnswer {
        /// The configured socket.
        socket: PathBuf,
        /// What we were doing.
        action: String,
        /// Method and path.
        endpoint: String,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The engine did not finish in time; the connection was dropped, which cancels a pull.
    #[error("{action}: the engine at {} did not finish within {secs} s", socket.display())]
    Timeout {
        /// The configured socket.
        socket: PathBuf,
        /// What we were doing.
        action: String,
        /// The limit that passed.
        secs: u64,
    },
    /// A name was refused before asking the engine: it holds characters an image reference
    /// may not (and that could change which endpoint a path reaches).
    #[error("refusing image reference {reference:?}: {reason}")]
    BadReference {
        /// The name, cut to 100 characters.
        reference: String,
        /// The rule it broke.
        reason: &'static str,
    },
}

impl EngineError {
    /// One line telling the operator what to check, for logs and the status API.
    pub fn advice(&self) -> &'static str {
        match self {
            EngineError::Connect { source, .. } => match source.kind() {
                io::ErrorKind::PermissionDenied => {
                    "the daemon may not open the engine socket: run it as root or add its user to the socket's group"
                }
                io::ErrorKind::ConnectionRefused => {
                    "the socket exists but nothing listens on it: is the engine (dockerd, or podman.socket / podman system service) running?"
                }
                _ => "is the engine running and is the socket path right? (podman serves the API only through podman.socket or `podman system service`)",
            },
            EngineError::Request { .. } | EngineError::TooLarge { .. } | EngineError::BadAnswer { .. } => {
                "is the socket really a Docker Engine API (dockerd, or podman's podman.sock)? see the engine's log"
            }
            EngineError::Refused { status, .. } => match status {
                400 => "the engine refused the request: check the repository, tags and pull_from",
                401 | 403 => "the engine refused access: check its authorization plugin and the socket's permissions",
                404 => "the engine does not know that image or endpoint: is it a Docker Engine API, and did the pull succeed?",
                500..=599 => "the engine failed: see its log (journalctl -u docker or -u podman)",
                _ => "see the engine's log (journalctl -u docker or -u podman)",
            },
            EngineError::PullFailed { message, .. } => pull_advice(message),
            EngineError::NotThere { .. } => {
                "the engine lost the image right after pulling it (removed concurrently?): retry, and see the engine's log"
            }
            EngineError::Timeout { .. } => {
                "raise engine.timeout_secs for large images or slow disks, or check that the engine can reach pull_from"
            }
            EngineError::BadReference { .. } => {
                "check the repository, tags and engine.pull_from: only letters, digits and . _ - / : @ belong in an image reference"
            }
        }
    }
}

/// Picks the advice for a failed pull from the engine's message; podman and dockerd word the
/// common causes alike because both quote the registry's error code or Go's TLS error.
fn pull_advice(message: &str) -> &'static str {
    let m = message.to_ascii_lowercase();
    if m.contains("manifest unknown") || m.contains("not found") {
        "the registry at pull_from does not hold that manifest: was the image stored in the local registry first, and is pull_from this plugin's listen address?"
    } else if m.contains("http response to https client") || m.contains("tls") || m.contains("x509")
    {
        "the engine tries HTTPS: list pull_from as insecure (podman: `insecure = true` in registries.conf; dockerd: insecure-registries in daemon.json; 127.0.0.0/8 is insecure by default)"
    } else if m.contains("connection refused")
        || m.contains("no such host")
        || m.contains("timeout")
    {
        "the engine cannot reach pull_from: is the plugin running, and is pull_from its listen address as the engine sees it?"
    } else {
        "can the engine reach the registry at pull_from? podman needs it listed as insecure in registries.conf"
    }
}

/// The engine's `message` from an error body (`{"message": "..."}`), or the start of the body
/// when it is not that JSON; cut to [`MAX_MESSAGE_CHARS`].
fn engine_message(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    match parsed
        .as_ref()
        .and_then(|v| v.get("message"))
        .and_then(Value::as_str)
    {
        Some(message) => cut(message),
        None => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.is_empty() {
                "(no message)".to_owned()
            } else {
                cut(text)
            }
        }
    }
}

fn cut(text: &str) -> String {
    let mut out: String = text.chars().take(MAX_MESSAGE_CHARS).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// Reads one progress line of `POST /images/create`: `Ok(Some(message))` when it reports an
/// error (`error` or `errorDetail`), `Ok(None)` for progress. A line may hold several JSON
/// objects back to back, and blank lines are allowed.
fn progress_error(line: &[u8]) -> Result<Option<String>, serde_json::Error> {
    for value in serde_json::Deserializer::from_slice(line).into_iter::<Value>() {
        let value = value?;
        let present = |key| value.get(key).filter(|v| !v.is_null());
        let error = present("error");
        let detail = present("errorDetail");
        if error.is_none() && detail.is_none() {
            continue;
        }
        let message = detail
            .and_then(|d| d.get("message"))
            .and_then(Value::as_str)
            .or_else(|| error.and_then(Value::as_str))
            .unwrap_or("the engine reported an error without a message");
        return Ok(Some(cut(message)));
    }
    Ok(None)
}

/// Splits a byte stream into lines without ever holding more than `max` bytes of one line.
struct ProgressLines {
    partial: Vec<u8>,
    max: usize,
}

/// A line grew past [`ProgressLines::max`].
#[derive(Debug)]
struct LineTooLong;

impl ProgressLines {
    fn new(max: usize) -> Self {
        ProgressLines {
            partial: Vec::new(),
            max,
        }
    }

    /// Adds `data`, returning the lines it completed (without their `\n`).
    fn push(&mut self, mut data: &[u8]) -> Result<Vec<Vec<u8>>, LineTooLong> {
        let mut lines = Vec::new();
        while let Some(end) = data.iter().position(|&b| b == b'\n') {
            if self.partial.len() + end > self.max {
                return Err(LineTooLong);
            }
            self.partial.extend_from_slice(&data[..end]);
            lines.push(std::mem::take(&mut self.partial));
            data = &data[end + 1..];
        }
        if self.partial.len() + data.len() > self.max {
            return Err(LineTooLong);
        }
        self.partial.extend_from_slice(data);
        Ok(lines)
    }

    /// The last line, when the stream did not end with `\n`.
    fn finish(self) -> Option<Vec<u8>> {
        (!self.partial.is_empty()).then_some(self.partial)
    }
}

/// Percent-encodes a query value: everything but RFC 3986 unreserved characters.
fn encode_query(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Checks a name before it goes into a request path (`/images/{name}/json`): only characters an
/// image reference or ID may hold, all literal in a path, and no `.`/`..` segment, which the
/// engine's router would clean away and so reach another endpoint.
fn check_reference(reference: &str) -> Result<(), EngineError> {
    let refuse = |reason| {
        Err(EngineError::BadReference {
            reference: reference.chars().take(100).collect(),
            reason,
        })
    };
    match crate::names::reference_problem(reference) {
        Some(reason) => refuse(reason),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            encode_query("127.0.0.1:5000/edge/app"),
            "127.0.0.1%3A5000%2Fedge%2Fapp"
        );
        assert_eq!(encode_query("sha256:ab"), "sha256%3Aab");
        assert_eq!(encode_query("a&b=c d#é"), "a%26b%3Dc%20d%23%C3%A9");
        assert_eq!(encode_query("v1.0-rc_1~x"), "v1.0-rc_1~x");
    }

    #[test]
    fn references_that_could_leave_the_images_endpoint_are_refused() {
        for ok in [
            "edge/app:v1",
            "127.0.0.1:5000/edge/app@sha256:0123abcd",
            "sha256:0123abcd",
            "localhost/edge/app",
        ] {
            assert!(check_reference(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "../containers/x",
            "edge/../../containers",
            "edge/./app",
            "/edge/app",
            "edge//app",
            "edge/app/",
            "edge/app?all=1",
            "edge/app#x",
            "edge app",
            "edge/%2e%2e",
            "edge/app\n",
        ] {
            let e = check_reference(bad).expect_err(bad);
            assert!(matches!(e, EngineError::BadReference { .. }), "{bad:?}");
        }
        assert!(check_reference(&"a".repeat(513)).is_err());
    }

    #[test]
    fn progress_lines_report_errors_and_pass_progress() {
        // What podman 4.3 sends (one object per line, no trailing status line).
        assert_eq!(
            progress_error(
                br#"{"status":"Pulling fs layer","progressDetail":{},"id":"137412062665"}"#
            )
            .unwrap(),
            None
        );
        // dockerd's success trailer.
        assert_eq!(
            progress_error(br#"{"status":"Digest: sha256:00"}"#).unwrap(),
            None
        );
        assert_eq!(progress_error(b"  \r").unwrap(), None);
        let podman_failure = br#"{"progressDetail":{},"errorDetail":{"message":"reading manifest sha256:00 in 127.0.0.1:5000/edge/app: manifest unknown"},"error":"same, longer"}"#;
        assert_eq!(
            progress_error(podman_failure).unwrap().as_deref(),
            Some("reading manifest sha256:00 in 127.0.0.1:5000/edge/app: manifest unknown")
        );
        assert_eq!(
            progress_error(br#"{"error":"only error"}"#)
                .unwrap()
                .as_deref(),
            Some("only error")
        );
        assert_eq!(
            progress_error(br#"{"errorDetail":{"code":1}}"#)
                .unwrap()
                .as_deref(),
            Some("the engine reported an error without a message")
        );
        // Two objects on one line, the second failing.
        assert_eq!(
            progress_error(br#"{"status":"x"}{"error":"late"}"#)
                .unwrap()
                .as_deref(),
            Some("late")
        );
        assert_eq!(
            progress_error(br#"{"status":"x","error":null}"#).unwrap(),
            None
        );
        assert!(progress_error(b"<html>").is_err());
    }

    #[test]
    fn progress_lines_are_split_across_chunks_and_capped() {
        let mut lines = ProgressLines::new(10);
        assert!(lines.push(b"abc").unwrap().is_empty());
        assert_eq!(
            lines.push(b"de\nfg\nh").unwrap(),
            vec![b"abcde".to_vec(), b"fg".to_vec()]
        );
        assert_eq!(lines.finish(), Some(b"h".to_vec()));

        let mut lines = ProgressLines::new(10);
        assert!(lines.push(b"0123456789\n").is_ok());
        assert!(lines.push(b"01234").is_ok());
        assert!(lines.push(b"567890").is_err());
        let mut lines = ProgressLines::new(10);
        assert!(lines.push(b"0123456789x\n").is_err());
    }

    #[test]
    fn error_bodies_give_the_engine_message() {
        assert_eq!(
            engine_message(br#"{"cause":"c","message":"No such image: x","response":404}"#),
            "No such image: x"
        );
        assert_eq!(engine_message(b"  page not found\n"), "page not found");
        assert_eq!(engine_message(b""), "(no message)");
        let long = engine_message("x".repeat(5000).as_bytes());
        assert_eq!(long.chars().count(), MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn pull_advice_follows_the_cause() {
        assert!(
            pull_advice("reading manifest sha256:00 in x: manifest unknown: manifest unknown")
                .contains("does not hold")
        );
        assert!(
            pull_advice("http: server gave HTTP response to HTTPS client").contains("insecure")
        );
        assert!(pull_advice("dial tcp 127.0.0.1:9: connect: connection refused").contains("reach"));
        assert!(pull_advice("something else").contains("registries.conf"));
    }

    #[test]
    fn config_defaults_and_refuses_unknown_fields() {
        let config: EngineConfig =
            serde_json::from_str(r#"{"socket":"/run/docker.sock","pull_from":"127.0.0.1:5000"}"#)
                .unwrap();
        assert_eq!(config.timeout_secs, 600);
        assert!(serde_json::from_str::<EngineConfig>(
            r#"{"socket":"/s","pull_from":"h:1","timeout":5}"#
        )
        .is_err());
    }

    #[tokio::test]
    async fn a_silent_engine_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("silent.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        // Accepts, then never answers.
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let engine = Engine::new(EngineConfig {
            socket: socket.clone(),
            pull_from: "127.0.0.1:5000".into(),
            timeout_secs: 1,
        });
        let e = engine.ping().await.unwrap_err();
        assert!(matches!(e, EngineError::Timeout { secs: 1, .. }), "{e:?}");
        assert!(e.to_string().contains(&socket.display().to_string()), "{e}");
        let repository: RepositoryName = "edge/app".parse().unwrap();
        let digest = Digest::of_bytes(b"x");
        let e = engine.load(&repository, &digest, &[]).await.unwrap_err();
        assert!(
            e.to_string()
                .contains("loading 127.0.0.1:5000/edge/app@sha256:"),
            "{e}"
        );
        hold.abort();
    }

    #[tokio::test]
    async fn a_socket_that_is_not_http_is_a_request_error() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("garbage.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let serve = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").await.unwrap();
        });
        let engine = Engine::new(EngineConfig {
            socket,
            pull_from: "127.0.0.1:5000".into(),
            timeout_secs: 5,
        });
        let e = engine.ping().await.unwrap_err();
        assert!(matches!(e, EngineError::Request { .. }), "{e:?}");
        assert!(e.advice().contains("Docker Engine API"));
        serve.await.unwrap();
    }
}
