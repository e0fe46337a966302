//! The HTTP front: `/v2/` passed through to the registry (reads only), the bundle upload API
//! and the status API under `/sideload/v1/`, and `/metrics`. The same routes serve the plain
//! and the TLS listener; the upload token ([`crate::auth`]) is checked here, per route.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde_json::json;
use sideload_device_api as api;

use crate::auth::{Auth, Denied, Scope};
use crate::daemon::Daemon;
use crate::request::{self, RequestError, Route, Unrouted};
use crate::uploads::{
    Appended, BadRequest, Created, LingeringBody, UploadError, UploadResult, Uploads,
};

/// Response body: streamed from the registry or built here.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// Prefix of the daemon's own API.
pub const API: &str = "/sideload/v1";

/// Where a request came from.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The client's address (the token's loopback exemption looks at it).
    pub addr: SocketAddr,
    /// It came through the TLS listener (redirects keep the scheme the client used).
    pub tls: bool,
}

/// What request handlers share.
pub struct Server {
    /// The daemon.
    pub daemon: Arc<Daemon>,
    /// Upload sessions.
    pub uploads: Uploads,
    /// Client for passing pulls through to the registry.
    pub proxy: Client<HttpConnector, Empty<Bytes>>,
    /// The registry's authority (`127.0.0.1:5001`) and scheme, for rewriting redirects.
    pub upstream_authority: String,
    /// Who needs the upload token for what.
    pub auth: Auth,
}

impl Server {
    /// A server for `daemon`.
    pub fn new(daemon: Arc<Daemon>, uploads: Uploads, auth: Auth) -> Server {
        let upstream_authority = daemon
            .upstream
            .base()
            .trim_start_matches("http://")
            .trim_start_matches("https://")
            .trim_end_matches('/')
            .to_owned();
        Server {
            daemon,
            uploads,
            // Without a timer hyper never closes an idle pooled connection, and it reuses the
            // newest first: after a burst of pulls every connection of the burst stayed open.
            proxy: Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_timer(hyper_util::rt::TokioTimer::new())
                .pool_idle_timeout(crate::upstream::POOL_IDLE_TIMEOUT)
                .pool_max_idle_per_host(crate::upstream::POOL_MAX_IDLE)
                .build_http(),
            upstream_authority,
            auth,
        }
    }

    /// Routes one request from `peer`.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: Peer,
    ) -> Result<Response<Body>, Infallible> {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        let response = if let Err(e) = request::check_body_codings(req.headers(), false) {
            refuse_unread(req, request_error(e))
        } else if path == "/v2" || path.starts_with("/v2/") {
            self.registry(req, peer.tls).await
        } else if path == "/metrics" {
            if method == Method::GET || method == Method::HEAD {
                self.metrics().await
            } else {
                method_not_allowed("GET, HEAD")
            }
        } else if let Some(rest) = path.strip_prefix(API) {
            self.api(req, rest.to_owned(), peer.addr).await
        } else {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no route {path}"),
                "see docs/upload-api.md",
            )
        };
        tracing::debug!(%method, %path, status = response.status().as_u16(), "request");
        Ok(response)
    }

    /// `/v2/`: reads pass through, streamed; writes are refused (the daemon is the only
    /// writer of the local registry).
    async fn registry(&self, req: Request<Incoming>, tls: bool) -> Response<Body> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return registry_error(
                StatusCode::FORBIDDEN,
                "DENIED",
                "this registry is read-only: images arrive as signed sideload bundles (POST /sideload/v1/uploads, the inbox folder, or a USB stick)",
            );
        }
        let path_and_query = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/v2/".into());
        let uri = match format!("http://{}{path_and_query}", self.upstream_authority).parse() {
            Ok(u) => u,
            Err(_) => {
                return registry_error(StatusCode::BAD_REQUEST, "UNSUPPORTED", "bad request URI")
            }
        };
        let mut out = Request::builder()
            .method(req.method())
            .uri::<hyper::Uri>(uri);
        for (name, value) in req.headers() {
            if !is_hop_by_hop(name) {
                out = out.header(name, value);
            }
        }
        let out = match out.body(Empty::new()) {
            Ok(r) => r,
            Err(_) => return registry_error(StatusCode::BAD_REQUEST, "UNSUPPORTED", "bad request"),
        };
        match self.proxy.request(out).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                let headers = std::mem::take(&mut parts.headers);
                let mut last = None;
                for (name, value) in headers {
                    // `None` repeats the previous name (a header with several values).
                    let name = match name {
                        Some(n) => {
                            last = Some(n.clone());
                            n
                        }
                        None => match &last {
                            Some(n) => n.clone(),
                            None => continue,
                        },
                    };
                    if !is_hop_by_hop(&name) {
                        parts.headers.append(name, value);
                    }
                }
                // A redirect to the registry's own address would be unreachable for the
                // client; point it back at the address (and scheme) the client used.
                if let (Some(loc), Some(host)) = (
                    parts
                        .headers
                        .get(header::LOCATION)
                        .and_then(|v| v.to_str().ok()),
                    req.headers()
                        .get(header::HOST)
                        .and_then(|v| v.to_str().ok()),
                ) {
                    let upstream = format!("http://{}", self.upstream_authority);
                    if let Some(rest) = loc.strip_prefix(&upstream) {
                        let scheme = if tls { "https" } else { "http" };
                        if let Ok(v) = HeaderValue::from_str(&format!("{scheme}://{host}{rest}")) {
                            parts.headers.insert(header::LOCATION, v);
                        }
                    }
                }
                Response::from_parts(parts, body.map_err(std::io::Error::other).boxed())
            }
            Err(e) => {
                tracing::warn!(error = %e, "local registry unreachable");
                registry_error(
                    StatusCode::BAD_GATEWAY,
                    "UNAVAILABLE",
                    "the local registry does not answer; check the docker-registry service",
                )
            }
        }
    }

    async fn api(&self, req: Request<Incoming>, rest: String, peer: SocketAddr) -> Response<Body> {
        let method = req.method().clone();
        let segments: Vec<&str> = rest.trim_matches('/').split('/').collect();
        // Decided on the same segments the routes below match, so no spelling of a path
        // (`//uploads/`, a trailing slash) reaches an upload route without the check. Before
        // anything reads the body: a refused upload stores nothing.
        let scope = match segments.first() {
            Some(&"uploads") => Scope::Upload,
            Some(&"admin") => Scope::Operator,
            Some(&("bundles" | "journal" | "inventory")) => Scope::Status,
            _ => Scope::Open,
        };
        if let Err(denied) =
            self.auth
                .check(scope, peer.ip(), req.headers().get(header::AUTHORIZATION))
        {
            tracing::info!(%peer, %method, path = %req.uri().path(), reason = ?denied,
                "request refused: upload token missing or wrong");
            if denied == Denied::NotLocal {
                return error(
                    StatusCode::FORBIDDEN,
                    "operator_only",
                    "the operator API answers only on the device itself (loopback) while no upload token is configured",
                    "call it on the device, or set auth.upload_token_file and send the token",
                );
            }
            return unauthorized(denied);
        }
        let route = match request::route(&method, &segments) {
            Ok(route) => route,
            Err(Unrouted::MethodNotAllowed(allow)) => return method_not_allowed(allow),
            Err(Unrouted::NotFound) => {
                return error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &format!("no route {}{}", API, rest),
                    "see docs/upload-api.md",
                )
            }
        };
        match route {
            Route::CreateUpload => self.create_upload(&req, peer).await,
            Route::ListUploads => json_response(
                StatusCode::OK,
                &api::answers::UploadList {
                    uploads: self.uploads.list(),
                },
            ),
            Route::AdminDeleteUpload(id) => match self.uploads.delete(id).await {
                Ok(()) => {
                    tracing::info!(upload = %id, %peer, "upload deleted by the operator");
                    empty(StatusCode::NO_CONTENT)
                }
                Err(e) => upload_error(e),
            },
            Route::AdminDeleteBundle(id) => self.delete_bundle(id, peer),
            Route::UploadStatus { id, head } => self.upload_status(id, head).await,
            Route::Append { id, put } => {
                let id = id.to_owned();
                self.append(req, &id, put).await
            }
            Route::DeleteUpload(id) => match self.uploads.delete(id).await {
                Ok(()) => empty(StatusCode::NO_CONTENT),
                Err(e) => upload_error(e),
            },
            Route::Bundles => self.bundles(&req),
            Route::Bundle(id) => self.bundle(id),
            Route::Journal => self.journal(&req),
            Route::Inventory => self.inventory().await,
            Route::Health => self.health().await,
        }
    }

    /// `GET /sideload/v1/bundles`: the most recent bundles.
    fn bundles(&self, req: &Request<Incoming>) -> Response<Body> {
        let limit = query(req, "limit")
            .and_then(|v| v.parse().ok())
            .unwrap_or(100);
        match self.daemon.journal.bundles(limit) {
            Ok(bundles) => json_response(StatusCode::OK, &api::BundleList { bundles }),
            Err(e) => internal(e),
        }
    }

    /// `GET /sideload/v1/journal`: state changes after an entry id.
    fn journal(&self, req: &Request<Incoming>) -> Response<Body> {
        let after = query(req, "after")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let limit = query(req, "limit")
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        let bundle = query(req, "bundle");
        match self.daemon.journal.history(bundle.as_deref(), after, limit) {
            Ok(entries) => json_response(StatusCode::OK, &api::JournalPage { entries }),
            Err(e) => internal(e),
        }
    }

    /// `GET /sideload/v1/inventory`, in its fields' order.
    async fn inventory(&self) -> Response<Body> {
        match crate::status::inventory(&self.daemon).await {
            Ok(inv) => json_document(StatusCode::OK, &inv),
            Err(e @ crate::status::InventoryError::Registry(_)) => error(
                StatusCode::BAD_GATEWAY,
                "registry_unavailable",
                &e.to_string(),
                "check the docker-registry service",
            ),
            Err(e) => internal(e),
        }
    }

    /// `GET /sideload/v1/health`.
    async fn health(&self) -> Response<Body> {
        let registry = self.daemon.upstream.ping().await;
        let status = if registry.is_ok() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json_response(
            status,
            &api::Health {
                status: if registry.is_ok() { "ok" } else { "degraded" }.into(),
                registry: registry
                    .map(|_| "ok".to_string())
                    .unwrap_or_else(|e| e.to_string()),
                uploads_active: self.uploads.active(),
                events_pending: self.daemon.events.pending(),
            },
        )
    }

    async fn create_upload(&self, req: &Request<Incoming>, peer: SocketAddr) -> Response<Body> {
        let headers = req.headers();
        let checked = request::upload_length(headers)
            .and_then(|length| Ok((length, request::BundleName::from_headers(headers)?)));
        let (length, name) = match checked {
            Ok(v) => v,
            Err(e) => return request_error(e),
        };
        let digest = headers
            .get("bundle-digest")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        match self
            .uploads
            .create(
                &self.daemon,
                name.map(request::BundleName::into_string),
                digest,
                length,
                peer.ip(),
            )
            .await
        {
            Ok(Created::New { id }) => upload_location(StatusCode::CREATED, &id, 0),
            Ok(Created::Existing { id, held }) => upload_location(StatusCode::OK, &id, held),
            Ok(Created::Known(b)) => json_response(StatusCode::OK, &api::Known::new(*b)),
            Err(e) => upload_error(e),
        }
    }

    async fn upload_status(&self, id: &str, head: bool) -> Response<Body> {
        match self.uploads.status(id).await {
            Ok((meta, held)) => {
                let mut resp = if head {
                    empty(StatusCode::NO_CONTENT)
                } else {
                    json_response(StatusCode::OK, &json!({ "upload": meta, "offset": held }))
                };
                let h = resp.headers_mut();
                h.insert("upload-offset", held.into());
                if let Some(total) = meta.total_length {
                    h.insert("upload-length", total.into());
                }
                h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                resp
            }
            Err(e) => upload_error(e),
        }
    }

    async fn append(&self, req: Request<Incoming>, id: &str, is_put: bool) -> Response<Body> {
        // Checked before a byte of the body is read: a malformed offset or a coded body must
        // not be appended as if it were the bundle's bytes.
        let offset = match request::check_body_codings(req.headers(), true)
            .and_then(|()| request::upload_offset(req.headers()))
        {
            Ok(offset) => offset,
            Err(e) => return refuse_unread(req, request_error(e)),
        };
        let offset = match (offset, is_put) {
            (Some(o), _) => o,
            // PUT without an offset: "finish", i.e. report; the offset is what is held.
            (None, true) => match self.uploads.status(id).await {
                Ok((_, held)) => held,
                Err(e) => return upload_error(e),
            },
            (None, false) => return refuse_unread(req, upload_error(BadRequest::NoOffset.into())),
        };
        match self
            .uploads
            .append(&self.daemon, id, offset, req.into_body())
            .await
        {
            Ok(Appended::Partial { held, total }) => {
                let mut resp = if is_put {
                    error(
                        StatusCode::CONFLICT,
                        "incomplete",
                        &format!(
                            "upload {id} holds {held} bytes of {}",
                            total
                                .map(|t| t.to_string())
                                .unwrap_or_else(|| "an unknown total".into())
                        ),
                        "send the rest with PATCH from Upload-Offset, then finish",
                    )
                } else {
                    empty(StatusCode::NO_CONTENT)
                };
                resp.headers_mut().insert("upload-offset", held.into());
                if let Some(t) = total {
                    resp.headers_mut().insert("upload-length", t.into());
                }
                resp
            }
            Ok(Appended::Done { held, result }) => {
                let mut resp = match &result {
                    UploadResult::Accepted { bundle, intake } => json_response(
                        match intake {
                            api::Intake::Queued => StatusCode::ACCEPTED,
                            api::Intake::Duplicate => StatusCode::OK,
                        },
                        &api::Taken::new(bundle, *intake),
                    ),
                    UploadResult::Refused(r) => refusal_response(r),
                };
                resp.headers_mut().insert("upload-offset", held.into());
                resp
            }
            Err(e) => upload_error(e),
        }
    }

    /// `DELETE /sideload/v1/admin/bundles/ID`: the operator drops a queued or waiting bundle.
    fn delete_bundle(&self, id: &str, peer: SocketAddr) -> Response<Body> {
        use crate::daemon::DeleteError;
        let id = if id.starts_with("sha256:") {
            id.to_owned()
        } else {
            format!("sha256:{id}")
        };
        match self.daemon.delete_bundle(&id) {
            Ok(b) => {
                tracing::info!(bundle = %b.name, %id, %peer, "bundle deleted by the operator");
                empty(StatusCode::NO_CONTENT)
            }
            Err(e @ DeleteError::Unknown(_)) => error(
                StatusCode::NOT_FOUND,
                "unknown_bundle",
                &e.to_string(),
                "bundles are named by their statement digest (GET /sideload/v1/bundles lists them)",
            ),
            Err(e @ DeleteError::NotHeld(_)) => error(
                StatusCode::CONFLICT,
                "not_held",
                &e.to_string(),
                "only queued and waiting bundles can be deleted",
            ),
            Err(e @ DeleteError::Journal(_)) => internal(e),
        }
    }

    fn bundle(&self, id: &str) -> Response<Body> {
        let id = if id.starts_with("sha256:") {
            id.to_owned()
        } else {
            format!("sha256:{id}")
        };
        match self.daemon.journal.get(&id) {
            Ok(Some(b)) => {
                let history = self
                    .daemon
                    .journal
                    .history(Some(&id), 0, 1000)
                    .unwrap_or_default();
                // `engine_configured` tells a waiting client (`sideload push --wait`) that an
                // applied bundle is done only once its `engine` outcome is in.
                let engine_configured = self.daemon.engine.is_some();
                json_response(
                    StatusCode::OK,
                    &api::BundleStatus {
                        bundle: b,
                        history,
                        engine_configured: Some(engine_configured),
                    },
                )
            }
            Ok(None) => error(
                StatusCode::NOT_FOUND,
                "unknown_bundle",
                &format!("no bundle {id} in the journal"),
                "bundles are named by their statement digest (sideload inspect shows it)",
            ),
            Err(e) => internal(e),
        }
    }

    async fn metrics(&self) -> Response<Body> {
        let text = crate::status::metrics(&self.daemon, self.uploads.active());
        let mut resp = Response::new(full(text));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        let _ = self.daemon.metrics.upload_bytes.load(Ordering::Relaxed);
        resp
    }
}

fn is_hop_by_hop(name: &header::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

fn query(req: &Request<Incoming>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| percent_decode(v))
    })
}

/// Decodes `%XX` escapes (and `+` as a space) in a query value, e.g. `sha256%3A...`.
fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut r = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r
}

/// An answer of the API: pretty JSON, keys sorted ([`api::answers::body`]).
fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    json_bytes(status, api::answers::body(value))
}

/// A document in its fields' order (the inventory; [`api::answers::ordered_body`]).
fn json_document(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    json_bytes(status, api::answers::ordered_body(value))
}

fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The daemon's error shape: a stable code, the reason, and what to do.
fn error(status: StatusCode, code: &str, reason: &str, advice: &str) -> Response<Body> {
    json_response(
        status,
        &api::ErrorBody {
            error: api::Refusal::new(code, reason, advice),
        },
    )
}

/// 401 with the challenge (RFC 6750) and the API's error shape.
fn unauthorized(denied: Denied) -> Response<Body> {
    let (reason, challenge) = match denied {
        Denied::Missing => (
            "this device needs an upload token for this request and the request has none",
            "Bearer realm=\"sideload\"",
        ),
        Denied::Malformed => (
            "the Authorization header is not `Bearer TOKEN`",
            "Bearer realm=\"sideload\", error=\"invalid_request\"",
        ),
        Denied::Wrong | Denied::NotLocal => (
            "the upload token is not this device's",
            "Bearer realm=\"sideload\", error=\"invalid_token\"",
        ),
    };
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        reason,
        "send `Authorization: Bearer TOKEN` with the token from the device's auth.upload_token_file (`sideload push --token-file FILE`)",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    r
}

fn refusal_response(r: &crate::daemon::Refused) -> Response<Body> {
    let error = r.refusal();
    let status = StatusCode::from_u16(error.status()).expect("403 or 503");
    json_response(status, &api::ErrorBody { error })
}

/// The distribution spec's error shape, for `/v2/` clients.
fn registry_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json_response(
        status,
        &json!({ "errors": [{ "code": code, "message": message, "detail": null }] }),
    )
}

fn upload_location(status: StatusCode, id: &str, held: u64) -> Response<Body> {
    let location = format!("{API}/uploads/{id}");
    let mut r = json_response(
        status,
        &api::UploadCreated {
            location: location.clone(),
            offset: held,
            upload: id.to_owned(),
        },
    );
    let h = r.headers_mut();
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("ascii"),
    );
    h.insert("upload-offset", held.into());
    r
}

/// An upload error as the API answers it: its status, code, reason and advice
/// ([`UploadError::code`] and the others), the `Upload-Offset` when it carries one, and
/// `Retry-After` for a busy upload.
fn upload_error(e: UploadError) -> Response<Body> {
    if let UploadError::Refused(r) = &e {
        return refusal_response(r);
    }
    let status = StatusCode::from_u16(e.status()).expect("a valid status");
    let mut r = error(status, e.code(), &e.to_string(), e.advice());
    if let Some(held) = e.held() {
        r.headers_mut().insert("upload-offset", held.into());
    }
    if matches!(e, UploadError::Busy) {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    r
}

/// Answers `response` to a request whose body is not read: the body is read and thrown away
/// for a while in the background, so that closing the connection does not reset it before the
/// client has read the answer (see [`LingeringBody`]).
fn refuse_unread(req: Request<Incoming>, response: Response<Body>) -> Response<Body> {
    drop(LingeringBody::new(req.into_body()));
    response
}

/// A request refused from its method, path or headers, before its body is read.
fn request_error(e: RequestError) -> Response<Body> {
    let reason = e.to_string();
    match e {
        RequestError::BadHeader(_) => error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &reason,
            "see docs/upload-api.md",
        ),
        RequestError::BadBundleName(_) => error(
            StatusCode::BAD_REQUEST,
            "bad_bundle_name",
            &reason,
            "send the file's name (at most 255 bytes of UTF-8, no '/' or control characters), percent-encoded where it is not ASCII, or leave Bundle-Name out",
        ),
        RequestError::TransferCoding(_) => error(
            StatusCode::NOT_IMPLEMENTED,
            "unsupported_transfer_coding",
            &reason,
            "send the body with Content-Length or Transfer-Encoding: chunked alone",
        ),
        RequestError::ContentCoding(_) => {
            let mut r = error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_content_coding",
                &reason,
                "send the bundle file's bytes as they are, without Content-Encoding",
            );
            r.headers_mut().insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
            r
        }
    }
}

fn internal(e: impl std::fmt::Display) -> Response<Body> {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "journal",
        &format!("cannot read the journal: {e}"),
        "check the data directory",
    )
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("this resource takes {allow}"),
        "see docs/upload-api.md",
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decode("sha256%3Aab"), "sha256:ab");
        assert_eq!(percent_decode("a+b%2"), "a b%2");
        assert_eq!(percent_decode("%zz%é"), "%zz%é");
    }
}
