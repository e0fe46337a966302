//! The daemon's listeners: the plain one (`listen`) and, with `[tls]`, the TLS one. Both serve
//! the same routes through one connection path ([`serve`]); TLS only adds a handshake, with
//! its own timeout, in front of it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::server::{Peer, Server};

/// A client that opens a connection and sends no request head within this time is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a listener could not be opened. A runtime failure (the daemon exits 1): the address may
/// be free at the next start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The address cannot be bound (in use, not on this host, a privileged port).
    #[error("cannot listen on {addr} ({setting})")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The config key that names it (`listen`, `tls.listen`).
        setting: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The bound socket cannot tell its own address.
    #[error(transparent)]
    LocalAddr(std::io::Error),
}

/// One bound listener; with an acceptor, its connections speak TLS.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    local: SocketAddr,
}

impl Listener {
    /// Binds `addr`; `setting` names the config key in the error.
    pub async fn bind(
        addr: SocketAddr,
        tls: Option<TlsAcceptor>,
        setting: &str,
    ) -> Result<Listener, ListenError> {
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| ListenError::Bind {
                addr,
                setting: setting.to_owned(),
                source,
            })?;
        let local = tcp.local_addr().map_err(ListenError::LocalAddr)?;
        Ok(Listener { tcp, tls, local })
    }

    /// The address it is bound to (the real port when the config said 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Waits for one connection and hands it to its own task. Cancel-safe (the only wait is
    /// `accept`), so it can sit in a `select!` beside the other listener and the signals.
    /// `stop` turning true ends TLS handshakes still in progress; requests in progress end
    /// through `graceful`.
    pub async fn accept_one(
        &self,
        server: &Arc<Server>,
        graceful: &GracefulShutdown,
        stop: &watch::Receiver<bool>,
    ) {
        let (stream, peer) = match self.tcp.accept().await {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listen = %self.local, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                return;
            }
        };
        tokio::spawn(connection(
            stream,
            peer,
            self.tls.clone(),
            server.clone(),
            graceful.watcher(),
            stop.clone(),
        ));
    }
}

/// [`Listener::accept_one`] on a listener that may be absent: never returns when it is.
pub async fn accept_one_opt(
    listener: Option<&Listener>,
    server: &Arc<Server>,
    graceful: &GracefulShutdown,
    stop: &watch::Receiver<bool>,
) {
    match listener {
        Some(l) => l.accept_one(server, graceful, stop).await,
        None => std::future::pending().await,
    }
}

/// One connection: the TLS handshake when the listener has TLS, then HTTP.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    server: Arc<Server>,
    watcher: Watcher,
    mut stop: watch::Receiver<bool>,
) {
    let Some(acceptor) = tls else {
        let peer = Peer {
            addr: peer,
            tls: false,
        };
        return serve(stream, peer, server, watcher).await;
    };
    let stopping = async {
        if stop.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let handshake = tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, acceptor.accept(stream));
    let stream = tokio::select! {
        done = handshake => match done {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::info!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, timeout_secs = crate::tls::HANDSHAKE_TIMEOUT.as_secs(),
                    "TLS handshake timed out");
                return;
            }
        },
        _ = stopping => return,
    };
    let peer = Peer {
        addr: peer,
        tls: true,
    };
    serve(stream, peer, server, watcher).await
}

/// HTTP/1.1 on an established connection, plain or TLS: the one place the daemon's
/// connection settings live.
async fn serve<I>(io: I, peer: Peer, server: Arc<Server>, watcher: Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| server.clone().handle(req, peer));
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(peer = %peer.addr, error = %e, "connection ended");
    }
}
