//! The device daemon: the single writer of the local registry.
//!
//! It fronts the distribution registry (pulls pass through `/v2/`, writes are refused), takes
//! signed bundles from resumable uploads ([`uploads`]; each request's route and headers are
//! checked by [`request`] before a byte of its body is read) and an inbox folder ([`inbox`])
//! through one intake ([`daemon::Daemon::intake`]; the files it holds meanwhile are named by
//! [`incoming`]) into one queue, rebuilds each image into the registry ([`rebuild`], which sees
//! only what the daemon lends it in a [`rebuild::ApplyContext`]) and optionally the container engine ([`sink`]: under every name a
//! deployment may use, [`names`]; clients [`engine`] for the Docker Engine API and [`cri`] for
//! containerd's CRI image service), and keeps a durable [`journal`]. State changes go out as
//! [`events`]. Every step of intake and apply is named ([`crash`]) and a crash at any of them is
//! finished at the next start ([`recover`]); an apply that fails for a passing cause (a full
//! disk, the registry down) keeps its bundle in the state `waiting` and is retried once the
//! cause is gone. Protocol: `docs/upload-api.md`.

#![warn(missing_docs)]
pub mod auth;
pub mod ballast;
pub mod config;
pub mod crash;
pub mod cri;
pub mod daemon;
pub mod engine;
pub mod events;
pub mod inbox;
pub mod incoming;
pub mod journal;
pub mod listen;
pub mod names;
pub mod rebuild;
pub mod reconcile;
pub mod recover;
pub mod request;
pub mod server;
pub mod sink;
pub mod status;
pub mod tls;
pub mod uploads;
pub mod upstream;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sideload_signing::{PolicyError, TrustPolicy};

use crate::auth::Auth;
use crate::config::Config;
use crate::daemon::{Daemon, Metrics};
use crate::listen::{ListenError, Listener};
use crate::recover::RecoverError;
use crate::server::Server;
use crate::upstream::UpstreamError;

/// What start-up reads besides the config file: the TLS certificate and key
/// ([`tls::prepare`]) and the upload token ([`Auth::load`]). The binary loads them before the
/// daemon starts so that a bad file is a configuration error (exit 64), not a failure after
/// the listener is up.
pub struct Prepared {
    /// The TLS listener's certificate, with `[tls]`.
    pub tls: Option<tls::Tls>,
    /// The upload token settings.
    pub auth: Auth,
}

/// Why the daemon could not start, or stopped with an error. Each is a runtime failure (the
/// binary exits 1 and systemd restarts it); settings it cannot run with are refused before
/// [`run`] by the binary (exit 64, no restart).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The data directory cannot be created.
    #[error("cannot create data directory {}", path.display())]
    DataDir {
        /// `data_dir`.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The `[events]` section names a receiver that cannot work.
    #[error("the [events] section of the config is not valid")]
    Events(#[source] std::io::Error),
    /// The trust policy cannot be read or is not valid.
    #[error("cannot load the trust policy {} (make one with `sideload-sign pubkey KEY.pub`)", path.display())]
    TrustPolicy {
        /// `trust_policy`.
        path: PathBuf,
        /// Why (boxed: the policy's error is large, and every other variant is small).
        #[source]
        source: Box<PolicyError>,
    },
    /// The journal cannot be opened, created or migrated.
    #[error("cannot open the journal in {}", dir.display())]
    Journal {
        /// The data directory that holds it.
        dir: PathBuf,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
    /// The event spool (`DATA_DIR/events`) cannot be opened.
    #[error("cannot open the event spool")]
    EventSpool(#[source] std::io::Error),
    /// The upload directory (`DATA_DIR/uploads`) cannot be opened.
    #[error("cannot open the upload directory")]
    Uploads(#[source] std::io::Error),
    /// The local registry did not answer within `registry.startup_timeout_secs`.
    #[error("the local registry does not answer after {timeout_secs} s: {cause}; start it (systemctl start docker-registry) and check registry.url")]
    RegistryDown {
        /// `registry.startup_timeout_secs`.
        timeout_secs: u64,
        /// The last ping's failure (quoted in the message, so not a source).
        cause: UpstreamError,
    },
    /// What a crash left could not be recovered.
    #[error("cannot recover the journal's interrupted work")]
    Recover(#[source] RecoverError),
    /// An inbox folder (`inbox.dir`, `inbox.quarantine_dir`) cannot be created.
    #[error("cannot create inbox folder {} (inbox.dir, inbox.quarantine_dir)", path.display())]
    InboxDir {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A listener (`listen`, `tls.listen`) cannot be opened.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The SIGTERM handler cannot be installed.
    #[error(transparent)]
    Signals(std::io::Error),
}

/// Runs the daemon until SIGTERM or SIGINT: checks the registry, recovers what a crash left,
/// listens, tells systemd it is ready, and on a stop request stops taking connections, lets
/// requests and the current apply finish, and returns.
pub async fn run(config: Config, prepared: Prepared) -> Result<(), RunError> {
    let (daemon, uploads, events) = start(config).await?;
    let Prepared { tls, auth } = prepared;
    if auth.enabled() && !daemon.config.listen.ip().to_canonical().is_loopback() {
        tracing::warn!(listen = %daemon.config.listen,
            "the upload token crosses the plain listener unencrypted; bind listen to 127.0.0.1 and let remote clients use [tls]");
    }
    let listener = Listener::bind(daemon.config.listen, None, "listen").await?;
    let local = listener.local_addr();
    let tls_listener = match (&tls, &daemon.config.tls) {
        (Some(tls), Some(settings)) => {
            Some(Listener::bind(settings.listen, Some(tls.acceptor.clone()), "tls.listen").await?)
        }
        _ => None,
    };
    tracing::info!(listen = %local, tls = ?tls_listener.as_ref().map(Listener::local_addr),
        upload_token = auth.enabled(), registry = %daemon.upstream.base(),
        data = %daemon.config.data_dir.display(), "sideload registry plugin ready");
    // Tests and scripts that bind port 0 learn the real ports from these lines on stdout; the
    // plain one comes last, so a reader that waits for it knows both listen.
    if let (Some(l), Some(tls)) = (&tls_listener, &tls) {
        tracing::info!(listen = %l.local_addr(), cert = %tls.cert_file.display(), pin = %tls.pin,
            "TLS certificate; clients without its CA pin it with `sideload push --pin {}`", tls.pin);
        println!("listening (tls) on {}", l.local_addr());
    }
    println!("listening on {local}");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let queue = tokio::spawn(daemon.clone().run_queue(stop_rx.clone()));
    let inbox = daemon
        .config
        .inbox
        .enabled
        .then(|| tokio::spawn(inbox::run(daemon.clone(), stop_rx.clone())));
    let events_task = {
        let mut rx = stop_rx.clone();
        tokio::spawn(events.run(async move {
            let _ = rx.wait_for(|s| *s).await;
        }))
    };
    let server = Arc::new(Server::new(daemon.clone(), uploads, auth));
    let expiry = spawn_expiry(&server, &daemon, stop_rx.clone());
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(RunError::Signals)?;
    loop {
        tokio::select! {
            _ = listener.accept_one(&server, &graceful, &stop_rx) => {}
            _ = listen::accept_one_opt(tls_listener.as_ref(), &server, &graceful, &stop_rx) => {}
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("stopping: finishing requests and the current apply");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    drop(listener);
    drop(tls_listener);
    // Also ends TLS handshakes still in progress.
    let _ = stop_tx.send(true);
    if tokio::time::timeout(Duration::from_secs(20), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not finish in 20 s; closing them");
    }
    let _ = queue.await;
    if let Some(inbox) = inbox {
        let _ = inbox.await;
    }
    let _ = expiry.await;
    let _ = tokio::time::timeout(Duration::from_secs(5), events_task).await;
    tracing::info!("stopped");
    Ok(())
}

/// Opens the daemon's state (journal, event spool, uploads), waits for the registry,
/// recovers what a crash left and makes the inbox folders: everything before a port is bound.
async fn start(
    config: Config,
) -> Result<(Arc<Daemon>, uploads::Uploads, events::EventSpool), RunError> {
    let data = &config.data_dir;
    std::fs::create_dir_all(data).map_err(|source| RunError::DataDir {
        path: data.clone(),
        source,
    })?;
    config.events.check().map_err(RunError::Events)?;
    let policy =
        TrustPolicy::load(&config.trust_policy).map_err(|source| RunError::TrustPolicy {
            path: config.trust_policy.clone(),
            source: Box::new(source),
        })?;
    let journal = journal::Journal::open(&data.join("journal.sqlite")).map_err(|source| {
        RunError::Journal {
            dir: data.clone(),
            source,
        }
    })?;
    let events = events::EventSpool::open(&data.join("events"), config.events.clone())
        .map_err(RunError::EventSpool)?;
    let uploads = uploads::Uploads::open(config.uploads_dir()).map_err(RunError::Uploads)?;
    let upstream = upstream::Upstream::new(&config.registry.url);
    wait_for_registry(&upstream, config.registry.startup_timeout_secs).await?;
    let engine = config.engine.as_ref().map(sink::Sink::new);
    let daemon = Arc::new(Daemon {
        journal: Arc::new(journal),
        policy: Arc::new(policy),
        limits: sideload_bundle::Limits::default(),
        upstream,
        events: events.clone(),
        queue: tokio::sync::Notify::new(),
        engine,
        metrics: Metrics::default(),
        intake_lock: std::sync::Mutex::new(()),
        ballast: ballast::Ballast::new(data),
        config,
    });
    daemon.recover().map_err(RunError::Recover)?;
    uploads.settle(&daemon);
    daemon.ballast.ensure();
    make_inbox_dirs(&daemon)?;
    Ok((daemon, uploads, events))
}

/// The inbox and quarantine folders, made before the daemon reports ready, so a delivery
/// right after start has a place.
fn make_inbox_dirs(daemon: &Daemon) -> Result<(), RunError> {
    if daemon.config.inbox.enabled {
        for dir in [daemon.config.inbox_dir(), daemon.config.quarantine_dir()] {
            std::fs::create_dir_all(&dir)
                .map_err(|source| RunError::InboxDir { path: dir, source })?;
        }
    }
    Ok(())
}

/// Expires idle uploads until the stop signal.
fn spawn_expiry(
    server: &Arc<Server>,
    daemon: &Daemon,
    mut rx: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let server = server.clone();
    let idle = daemon.config.uploads.idle_expiry_secs;
    let unchecked_idle = daemon.config.uploads.unchecked_idle_expiry_secs;
    // Often enough that an unchecked upload lives at most about 1.5 times its expiry.
    let every = Duration::from_secs((unchecked_idle / 2).clamp(1, 60));
    tokio::spawn(async move {
        loop {
            server.uploads.expire(idle, unchecked_idle).await;
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = rx.changed() => return,
            }
        }
    })
}

/// Pings the local registry every 200 ms until it answers, for at most `timeout_secs`.
async fn wait_for_registry(
    upstream: &upstream::Upstream,
    timeout_secs: u64,
) -> Result<(), RunError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout_secs);
    loop {
        match upstream.ping().await {
            Ok(()) => return Ok(()),
            Err(cause) if tokio::time::Instant::now() >= deadline => {
                return Err(RunError::RegistryDown {
                    timeout_secs,
                    cause,
                })
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `main` prints: the message, then each cause not yet said.
    fn lines(e: &RunError) -> Vec<String> {
        sideload_signing::report::cause_lines(e)
    }

    #[test]
    fn a_wrapped_cause_gets_a_line_of_its_own_and_a_quoted_one_does_not() {
        let missing = std::path::Path::new("/nonexistent/sideload/trust.toml");
        let policy = TrustPolicy::load(missing).err().unwrap();
        let policy_text = policy.to_string();
        let e = RunError::TrustPolicy {
            path: missing.to_owned(),
            source: Box::new(policy),
        };
        let said = lines(&e);
        assert_eq!(
            said[0],
            "cannot load the trust policy /nonexistent/sideload/trust.toml (make one with `sideload-sign pubkey KEY.pub`)"
        );
        assert_eq!(said[1], policy_text);

        let e = RunError::RegistryDown {
            timeout_secs: 1,
            cause: UpstreamError {
                url: "http://127.0.0.1:9/v2/".into(),
                what: "ping".into(),
                detail: "refused".into(),
            },
        };
        assert_eq!(
            lines(&e),
            ["the local registry does not answer after 1 s: local registry http://127.0.0.1:9/v2/: ping: refused; start it (systemctl start docker-registry) and check registry.url"]
        );
    }
}
