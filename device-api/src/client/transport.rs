//! The HTTP transport under the device client: hyper on sockets set for bad links.
//!
//! `TCP_USER_TIMEOUT` ends a connection whose data stays unacknowledged for the stall
//! timeout (instead of ~15 minutes of retransmissions); keepalive notices a dead link while
//! waiting for an answer, when nothing is in flight; `SO_LINGER` 0 resets a connection the
//! client gives up on, so the kernel does not go on sending its queue into a device that has
//! moved on to the next connection. reqwest exposes the first two but not the third, hence
//! hyper here. (Measured on the test link: no bytes arrived on an abandoned connection after
//! its successor started, with or without `SO_LINGER` 0; it is a guard, not a measured gain.)

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// A request body: a stream of the file, or nothing.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A body from a stream of chunks.
pub fn streaming(
    stream: impl futures_util::Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
) -> Body {
    use futures_util::TryStreamExt;
    BodyExt::boxed(StreamBody::new(stream.map_ok(Frame::data)))
}

/// How the client checks the device's certificate on `https://`.
pub enum Trust {
    /// The platform's roots (a device with a certificate from a public or company CA).
    Platform,
    /// Only these CA certificates (DER).
    Roots(Vec<rustls::pki_types::CertificateDer<'static>>),
    /// Only certificates with these sha256 digests.
    Pins(Vec<[u8; 32]>),
}

/// The connection settings.
pub struct Options {
    /// Unacknowledged data for this long ends the connection; also the connect timeout
    /// (at most 30 s) unless `connect_timeout` says otherwise.
    pub stall_timeout: Duration,
    /// How long a connection may take to open; `None`: the stall timeout, at most 30 s.
    pub connect_timeout: Option<Duration>,
    /// TLS trust.
    pub trust: Trust,
}

/// Makes TCP connections with the options above, then sets them to reset when dropped.
#[derive(Clone)]
pub struct ResettingConnector {
    inner: HttpConnector,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for ResettingConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            socket2::SockRef::from(io.inner()).set_linger(Some(Duration::ZERO))?;
            Ok(io)
        })
    }
}

/// The client.
pub type HttpClient = Client<hyper_rustls::HttpsConnector<ResettingConnector>, Body>;

/// Builds the client.
pub fn client(options: &Options) -> Result<HttpClient, rustls::Error> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(
        options
            .connect_timeout
            .unwrap_or(options.stall_timeout.min(Duration::from_secs(30))),
    ));
    http.set_tcp_user_timeout(Some(options.stall_timeout));
    http.set_keepalive(Some(Duration::from_secs(10)));
    http.set_keepalive_interval(Some(Duration::from_secs(5)));
    http.set_keepalive_retries(Some(3));
    http.set_nodelay(true);
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    // hyper-rustls sets ALPN (http/1.1) itself.
    let tls = match &options.trust {
        Trust::Platform => {
            use rustls_platform_verifier::BuilderVerifierExt;
            builder.with_platform_verifier()?.with_no_client_auth()
        }
        Trust::Roots(certs) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs {
                roots.add(c.clone())?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Pins(pins) => super::tls::pinned_config(pins.clone(), provider)?,
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(ResettingConnector { inner: http });
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(20))
        .build(https))
}
