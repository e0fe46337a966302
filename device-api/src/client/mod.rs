//! The one client of the device API: `sideload push`, `sideload fleet` and the USB loader speak
//! to the daemon through it.
//!
//! [`Client`] sends requests and reads the (small) answers; the typed calls read them only
//! through the crate's types ([`classify`](crate::classify), [`BundleStatus`],
//! [`Inventory`]). Retries, deadlines and pacing are the callers' own.

pub mod tls;
pub mod transport;

use std::time::Duration;

use http_body_util::BodyExt;
use hyper::header::{HeaderValue, AUTHORIZATION, USER_AGENT};
use hyper::{Method, Request};

use crate::answers::{BundleStatus, ErrorBody};
use crate::inventory::{Inventory, InventoryError};
use crate::refusal::Refusal;

pub use transport::{Body, Options, Trust};

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request could not be made (a bad URL or header).
    #[error("cannot make the request: {0}")]
    Request(String),
    /// The link or the device went away; a retry may get through.
    #[error("{0}")]
    Transport(String),
    /// The device's certificate is not trusted: retrying does not help.
    #[error("{0}")]
    Tls(String),
    /// TLS could not be set up on this side.
    #[error("cannot set up TLS: {0}")]
    Setup(#[from] rustls::Error),
    /// The device answered with an error.
    #[error("{path}: HTTP {status}: {refusal}")]
    Status {
        /// The request's path.
        path: String,
        /// The HTTP status.
        status: u16,
        /// What the device said.
        refusal: Box<Refusal>,
    },
    /// The answer is not the document the API promises.
    #[error("{path}: unexpected answer: {message}")]
    Unexpected {
        /// The request's path.
        path: String,
        /// What was wrong with it.
        message: String,
    },
    /// The inventory is not one this build reads.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
}

/// An answer as it came: status, the upload headers and the body (capped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// `Upload-Offset`, when given.
    pub upload_offset: Option<u64>,
    /// The body, cut at the cap given to [`Client::send`].
    pub body: Vec<u8>,
}

impl Reply {
    /// The error the body carries (or one made from the status), marked retryable by status.
    pub fn refusal(&self) -> Refusal {
        serde_json::from_slice::<ErrorBody>(&self.body)
            .map(|b| b.error)
            .unwrap_or_else(|_| Refusal::new("", &format!("HTTP {}", self.status), ""))
            .with_status(self.status)
    }
}

/// Upper bound on an upload answer's body: they are small JSON documents.
pub const MAX_ANSWER: usize = 1 << 20;
/// Upper bound on an inventory (thousands of images are a few MiB).
pub const MAX_INVENTORY: usize = 64 << 20;

/// A device daemon reached over HTTP(S).
pub struct Client {
    http: transport::HttpClient,
    base: String,
    token: Option<HeaderValue>,
    user_agent: &'static str,
}

impl Client {
    /// A client for the daemon at `base` (`https://device:5443`, no path), sending `token` as
    /// `Authorization: Bearer` when given. Needs a tokio runtime.
    pub fn new(
        base: &str,
        token: Option<&str>,
        user_agent: &'static str,
        options: &Options,
    ) -> Result<Client, ClientError> {
        let token = match token {
            Some(t) => Some(HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                ClientError::Request("the upload token has characters a header cannot carry".into())
            })?),
            None => None,
        };
        Ok(Client {
            http: transport::client(options)?,
            base: base.trim_end_matches('/').to_owned(),
            token,
            user_agent,
        })
    }

    /// The daemon's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// A request to `path` with the client's agent and token.
    pub fn request(&self, method: Method, path: &str) -> hyper::http::request::Builder {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(USER_AGENT, self.user_agent);
        if let Some(t) = &self.token {
            b = b.header(AUTHORIZATION, t.clone());
        }
        b
    }

    /// Sends a request; the status, `Upload-Offset` and the body, cut at `cap` bytes.
    pub async fn send(
        &self,
        req: Result<Request<Body>, hyper::http::Error>,
        cap: usize,
    ) -> Result<Reply, ClientError> {
        let req = req.map_err(|e| ClientError::Request(e.to_string()))?;
        let resp = self.http.request(req).await.map_err(|e| failure(&e))?;
        let status = resp.status().as_u16();
        let upload_offset = resp
            .headers()
            .get("upload-offset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let body = read_capped(resp.into_body(), cap)
            .await
            .map_err(|e| failure(&e))?;
        Ok(Reply {
            status,
            upload_offset,
            body,
        })
    }

    /// A GET whose answer must be a success; its body.
    async fn get(&self, path: &str, cap: usize) -> Result<Option<Vec<u8>>, ClientError> {
        let reply = self
            .send(
                self.request(Method::GET, path).body(transport::empty()),
                cap,
            )
            .await?;
        match reply.status {
            200..=299 => Ok(Some(reply.body)),
            404 => Ok(None),
            status => Err(ClientError::Status {
                path: path.to_owned(),
                status,
                refusal: Box::new(reply.refusal()),
            }),
        }
    }

    /// `GET /sideload/v1/bundles/ID`; `None` if the device does not know the bundle.
    pub async fn bundle(&self, id: &str) -> Result<Option<BundleStatus>, ClientError> {
        let path = crate::answers::bundle_path(id);
        let Some(body) = self.get(&path, MAX_ANSWER).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| ClientError::Unexpected {
                path,
                message: e.to_string(),
            })
    }

    /// `GET /sideload/v1/inventory`, checked ([`Inventory::parse`]).
    pub async fn inventory(&self) -> Result<Inventory, ClientError> {
        let path = format!("{}/inventory", crate::API);
        match self.get(&path, MAX_INVENTORY).await? {
            Some(body) => Ok(Inventory::parse(&body)?),
            None => Err(ClientError::Unexpected {
                path,
                message: "the device has no inventory endpoint".into(),
            }),
        }
    }

    /// `HEAD` of an upload: the bytes the device holds; `None` if the upload is gone.
    pub async fn offset(&self, location: &str) -> Result<Option<u64>, ClientError> {
        let reply = self
            .send(
                self.request(Method::HEAD, location)
                    .body(transport::empty()),
                MAX_ANSWER,
            )
            .await?;
        Ok(match reply.status {
            404 => None,
            _ => reply.upload_offset,
        })
    }
}

/// A transport failure as the caller acts on it: a certificate problem is not retried.
pub fn failure(e: &(dyn std::error::Error + 'static)) -> ClientError {
    match tls::tls_failure(e) {
        Some(t) => ClientError::Tls(t),
        None => {
            // The chain says what happened (refused, reset, timed out); the top says where.
            let mut text = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            ClientError::Transport(text)
        }
    }
}

/// A body read to its end, kept up to `cap` bytes.
async fn read_capped(mut body: hyper::body::Incoming, cap: usize) -> Result<Vec<u8>, hyper::Error> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if out.len() < cap {
                out.extend_from_slice(&data[..data.len().min(cap - out.len())]);
            }
        }
    }
    Ok(out)
}

/// Options for a client of the daemon on this host (the USB loader): plain HTTP on loopback,
/// connections opened within 10 s.
pub fn local_options() -> Options {
    Options {
        stall_timeout: Duration::from_secs(60),
        connect_timeout: Some(Duration::from_secs(10)),
        trust: Trust::Platform,
    }
}
