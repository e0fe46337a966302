//! The event spool against real targets: an HTTP receiver on loopback (port 0, no mocks) that can
//! be down, answer 503 or hang, and shell scripts as the command target. Every test checks that
//! each event arrives exactly once and in seq order.

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sideload_registry_plugin::events::{Event, EventSpool, EventsConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// Long enough for a slow CI machine, short enough that a hang fails the test, not the job.
const DEADLINE: Duration = Duration::from_secs(20);

/// What the receiver saw and how it should answer; shared with its connection tasks.
#[derive(Default)]
struct Behaviour {
    /// Bodies answered 200, in arrival order
    accepted: Mutex<Vec<Event>>,
    /// Every request, answered or not
    requests: AtomicUsize,
    /// Answer 503 to this many requests before accepting again
    refuse_next: AtomicUsize,
    /// Never answer this many requests (the client's timeout must fire)
    hang_next: AtomicUsize,
    /// The Authorization header of the last request
    authorization: Mutex<Option<String>>,
}

/// A tiny HTTP event receiver on a loopback port that stays the same while it is stopped and
/// started, so the spool's URL keeps pointing at it. Stops on drop.
struct Receiver {
    port: u16,
    behaviour: Arc<Behaviour>,
    server: Option<JoinHandle<()>>,
}

impl Receiver {
    /// A receiver that is not listening yet: its port is free (connections are refused).
    async fn down() -> Receiver {
        let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        Receiver {
            port,
            behaviour: Arc::default(),
            server: None,
        }
    }

    async fn up() -> Receiver {
        let mut receiver = Receiver::down().await;
        receiver.start().await;
        receiver
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/events", self.port)
    }

    async fn start(&mut self) {
        assert!(self.server.is_none(), "already listening");
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        let behaviour = Arc::clone(&self.behaviour);
        self.server = Some(tokio::spawn(async move {
            // Owned here, so stopping the server also drops every open connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let behaviour = Arc::clone(&behaviour);
                let service = hyper::service::service_fn(move |request| {
                    answer(Arc::clone(&behaviour), request)
                });
                connections.spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }));
    }

    /// Closes the port; returns once nothing listens any more.
    async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }

    fn accepted(&self) -> Vec<Event> {
        self.behaviour.accepted.lock().unwrap().clone()
    }

    fn requests(&self) -> usize {
        self.behaviour.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

async fn answer(
    behaviour: Arc<Behaviour>,
    request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    behaviour.requests.fetch_add(1, Ordering::SeqCst);
    *behaviour.authorization.lock().unwrap() = request
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap().to_owned());
    let json = request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .is_some_and(|v| v == "application/json");
    let body = request.into_body().collect().await.unwrap().to_bytes();
    let reply = |status| {
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = status;
        Ok(response)
    };
    if take_one(&behaviour.hang_next) {
        std::future::pending::<()>().await;
    }
    if take_one(&behaviour.refuse_next) {
        return reply(StatusCode::SERVICE_UNAVAILABLE);
    }
    assert!(json, "events are posted as application/json");
    let event: Event = serde_json::from_slice(&body).unwrap();
    behaviour.accepted.lock().unwrap().push(event);
    reply(StatusCode::OK)
}

/// Decrements `counter` if it is above zero; true when it did.
fn take_one(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// Retries within milliseconds, so tests spend their time on behaviour, not on waiting.
fn fast(url: Option<String>, command: Option<Vec<String>>) -> EventsConfig {
    EventsConfig {
        url,
        command,
        retry_initial_secs: 0.02,
        retry_max_secs: 0.1,
        timeout_secs: 5.0,
        ..EventsConfig::default()
    }
}

/// Runs the sender on its own task; dropping or firing the returned sender stops it.
fn start_sender(spool: &EventSpool) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let run = spool.clone().run(async {
        let _ = stopped.await;
    });
    (stop, tokio::spawn(run))
}

/// Shows the spool's log lines with a failing test's output (RUST_LOG, default info).
fn log_to_test_output() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

fn emit(spool: &EventSpool, bundle: &str, state: &str) -> Event {
    spool
        .emit(Event::new("device-1", bundle, "library/app", state))
        .unwrap()
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn wait_for<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn seqs(events: &[Event]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

/// Writes a script that appends "STATE SEQ JSON" to `out` for every event; it exits 1 without
/// appending on the first `failures` runs. Run through `sh`, so the test never executes a file it
/// just wrote (ETXTBSY when another test thread forks meanwhile).
fn recording_script(dir: &Path, failures: usize) -> (Vec<String>, std::path::PathBuf) {
    let script = dir.join("record.sh");
    let out = dir.join("out");
    let runs = dir.join("runs");
    std::fs::write(
        &script,
        format!(
            r#"set -e
echo run >> '{runs}'
if [ "$(wc -l < '{runs}')" -le {failures} ]; then echo "refusing on purpose" >&2; exit 1; fi
printf '%s %s %s\n' "$SIDELOAD_EVENT_STATE" "$SIDELOAD_EVENT_SEQ" "$(cat)" >> '{out}'
"#,
            runs = runs.display(),
            out = out.display(),
        ),
    )
    .unwrap();
    (vec!["/bin/sh".into(), script.display().to_string()], out)
}

/// The events the script recorded, checking that the env vars match the JSON on stdin.
fn recorded(out: &Path) -> Vec<Event> {
    let text = std::fs::read_to_string(out).unwrap_or_default();
    text.lines()
        .map(|line| {
            let mut parts = line.splitn(3, ' ');
            let (state, seq, json) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap(),
            );
            let event: Event = serde_json::from_str(json).unwrap();
            assert_eq!(event.state, state);
            assert_eq!(event.seq.to_string(), seq);
            event
        })
        .collect()
}

#[tokio::test]
async fn events_emitted_while_the_receiver_is_down_arrive_once_in_order() {
    log_to_test_output();
    let dir = tempfile::tempdir().unwrap();
    let mut receiver = Receiver::down().await;
    let spool = EventSpool::open(dir.path(), fast(Some(receiver.url()), None)).unwrap();
    let (_stop, _sender) = start_sender(&spool);

    let states = ["received", "verified", "queued", "applying", "applied"];
    let emitted: Vec<Event> = states.iter().map(|s| emit(&spool, "b1", s)).collect();
    assert_eq!(seqs(&emitted), [1, 2, 3, 4, 5]);
    // Long enough for several refused connections and backoff steps.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(spool.pending(), 5);

    receiver.start().await;
    wait_until("the spool to drain", || spool.pending() == 0).await;
    assert_eq!(receiver.accepted(), emitted);
    assert_eq!(receiver.requests(), 5);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "only last-seq is left"
    );

    // Down again after it was reached: the sender's kept-alive connection is dead too.
    receiver.stop().await;
    let later = vec![
        emit(&spool, "b2", "received"),
        emit(&spool, "b2", "refused"),
    ];
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(spool.pending(), 2);
    receiver.start().await;
    wait_until("the spool to drain", || spool.pending() == 0).await;
    assert_eq!(receiver.accepted(), [emitted, later].concat());
    assert_eq!(receiver.requests(), 7);
}

#[tokio::test]
async fn events_refused_with_503_are_retried_in_order() {
    log_to_test_output();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::up().await;
    receiver.behaviour.refuse_next.store(4, Ordering::SeqCst);
    let spool = EventSpool::open(dir.path(), fast(Some(receiver.url()), None)).unwrap();
    let (_stop, _sender) = start_sender(&spool);

    let first: Vec<Event> = (0..3)
        .map(|i| emit(&spool, &format!("b{i}"), "received"))
        .collect();
    wait_until("the receiver to accept again", || {
        !receiver.accepted().is_empty()
    })
    .await;
    receiver.behaviour.refuse_next.store(3, Ordering::SeqCst);
    let second: Vec<Event> = (3..6)
        .map(|i| emit(&spool, &format!("b{i}"), "failed"))
        .collect();
    wait_until("the spool to drain", || spool.pending() == 0).await;

    assert_eq!(receiver.accepted(), [first, second].concat());
    assert_eq!(receiver.requests(), 6 + 4 + 3);
}

#[tokio::test]
async fn an_unanswered_post_times_out_and_is_retried() {
    log_to_test_output();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::up().await;
    receiver.behaviour.hang_next.store(1, Ordering::SeqCst);
    let config = EventsConfig {
        timeout_secs: 0.2,
        ..fast(Some(receiver.url()), None)
    };
    let spool = EventSpool::open(dir.path(), config).unwrap();
    let (_stop, _sender) = start_sender(&spool);

    let emitted = vec![emit(&spool, "b1", "applied"), emit(&spool, "b2", "applied")];
    wait_until("the spool to drain", || spool.pending() == 0).await;
    assert_eq!(receiver.accepted(), emitted);
    assert_eq!(receiver.requests(), 3);
}

#[tokio::test]
async fn configured_headers_are_sent() {
    log_to_test_output();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::up().await;
    let mut config = fast(Some(receiver.url()), None);
    config
        .headers
        .insert("Authorization".into(), "Bearer edge-token".into());
    let spool = EventSpool::open(dir.path(), config).unwrap();
    let (_stop, _sender) = start_sender(&spool);

    emit(&spool, "b1", "applied");
    wait_until("the spool to drain", || spool.pending() == 0).await;
    let authorization = receiver.behaviour.authorization.lock().unwrap().clone();
    assert_eq!(authorization.as_deref(), Some("Bearer edge-token"));
}

#[tokio::test]
async fn the_spool_survives_a_restart_and_seq_keeps_increasing() {
    log_to_test_output();
    let dir = tempfile::tempdir().unwrap();
    let mut receiver = Receiver::down().await;
    let config = fast(Some(receiver.url()), None);

    let spool = EventSpool::open(dir.path(), config.clone()).unwrap();
    let (_stop, sender) = start_sender(&spool);
    let before: Vec<Event> = (0..3)
        .map(|i| emit(&spool, &format!("b{i}"), "queued"))
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // As abrupt as a crash: the sender is dropped wherever it was.
    sender.abort();
    let _ = sender.await;
    drop(spool);

    let spool = EventSpool::open(dir.path(), config.clone()).unwrap();
    assert_eq!(spool.pending(), 3);
    let after = emit(&spool, "b3", "queued");
    assert_eq!(after.seq, 4);
    let (stop, sender) = start_sender(&spool);
    receiver.start().await;
    wait_until("the spool to drain", || spool.pending() == 0).await;
    assert_eq!(receiver.accepted(), [before, vec![after]].concat());

    // A clean stop with an empty spool: seq still goes on, not back to 1.
    stop.send(()).unwrap();
    wait_for("the sender to stop", sender).await.unwrap();
    drop(spool);
    let spool = EventSpool::open(dir.path(), config).unwrap();
    assert_eq!(spool.pending(), 0);
    assert_eq!(emit(&spool, "b4", "queued").seq, 5);
}

#[tokio::test]
async fn a_failing_command_is_retried_and_gets_every_event_once_in_order() {
    log_to_test_output();
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let (command, out) = recording_script(scratch.path(), 1);
    let spool = EventSpool::open(dir.path(), fast(None, Some(command))).unwrap();
    let (_stop, _sender) = start_sender(&spool);

    let mut refused = Event::new("device-1", "b2", "library/app", "refused");
    refused.reason = Some("signature by an unknown key".into());
    refused.advice = Some("add the signer's key to trusted-keys/".into());
    refused.details = serde_json::json!({"key_id": "ab12"});
    let emitted = vec![
        emit(&spool, "b1", "received"),
        spool.emit(refused).unwrap(),
        emit(&spool, "b3", "applied"),
    ];
    wait_until("the spool to drain", || spool.pending() == 0).await;
    assert_eq!(recorded(&out), emitted);
    let runs = std::fs::read_to_string(scratch.path().join("runs")).unwrap();
    assert_eq!(
        runs.lines().count(),
        4,
        "one failed run, then one per event"
    );
}

#[tokio::test]
async fn a_restart_after_the_url_took_an_event_runs_only_the_command_again() {
    log_to_test_output();
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let receiver = Receiver::up().await;
    let (always_failing, _) = recording_script(scratch.path(), 1_000_000);
    let spool =
        EventSpool::open(dir.path(), fast(Some(receiver.url()), Some(always_failing))).unwrap();
    let (stop, sender) = start_sender(&spool);
    let emitted: Vec<Event> = (0..3)
        .map(|i| emit(&spool, &format!("b{i}"), "applied"))
        .collect();
    wait_until("the URL to take the first event", || {
        receiver.accepted().len() == 1
    })
    .await;
    let runs = scratch.path().join("runs");
    wait_until("the command to fail twice", || {
        std::fs::read_to_string(&runs)
            .unwrap_or_default()
            .lines()
            .count()
            >= 2
    })
    .await;
    // The command holds event 1 back, so the URL has not seen the later ones.
    assert_eq!(receiver.accepted(), emitted[..1]);
    stop.send(()).unwrap();
    wait_for("the sender to stop", sender).await.unwrap();
    drop(spool);

    let (working, out) = recording_script(scratch.path(), 0);
    let spool = EventSpool::open(dir.path(), fast(Some(receiver.url()), Some(working))).unwrap();
    assert_eq!(spool.pending(), 3);
    let (_stop, _sender) = start_sender(&spool);
    wait_until("the spool to drain", || spool.pending() == 0).await;
    assert_eq!(receiver.accepted(), emitted, "event 1 was not posted twice");
    assert_eq!(recorded(&out), emitted);
}

#[tokio::test]
async fn a_full_ring_drops_the_oldest_untrusted_refusals_and_never_a_trusted_event() {
    log_to_test_output();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::up().await;
    let config = EventsConfig {
        max_events: 4,
        max_untrusted_events: 2,
        ..fast(Some(receiver.url()), None)
    };
    let spool = EventSpool::open(dir.path(), config.clone()).unwrap();
    let refusal = |i: usize| {
        spool
            .emit_untrusted(Event::new("device-1", format!("junk{i}"), "", "refused"))
            .unwrap()
    };
    let queued = emit(&spool, "real", "queued");
    let junk: Vec<Event> = (0..5).map(refusal).collect();
    assert_eq!(spool.pending(), 3, "the trusted event and the ring of 2");
    assert_eq!(junk[4].details["earlier_refusals_dropped"], 3);
    // Trusted events beyond max_events push refusals out, never each other.
    let trusted: Vec<Event> = (0..4)
        .map(|i| emit(&spool, "real", &format!("state{i}")))
        .collect();
    assert_eq!(spool.pending(), 5, "5 trusted, no refusal left");
    drop(spool);
    // A restart still knows which ones are refusals (their own file name).
    let spool = EventSpool::open(dir.path(), config).unwrap();
    let later = spool
        .emit_untrusted(Event::new("device-1", "junk5", "", "refused"))
        .unwrap();
    let (_stop, _sender) = start_sender(&spool);
    wait_until("the spool to drain", || spool.pending() == 0).await;
    let mut expected = vec![queued];
    expected.extend(trusted);
    expected.push(later);
    assert_eq!(receiver.accepted(), expected);
}

#[tokio::test]
async fn crash_leftovers_are_swept_and_a_corrupt_event_is_set_aside() {
    log_to_test_output();
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::up().await;
    let config = fast(Some(receiver.url()), None);
    let spool = EventSpool::open(dir.path(), config.clone()).unwrap();
    let emitted: Vec<Event> = (0..3)
        .map(|i| emit(&spool, &format!("b{i}"), "queued"))
        .collect();
    drop(spool);
    let file = |name: &str| dir.path().join(name);
    std::fs::write(file("00000000000000000002.json"), b"{\"seq\": 2, trunc").unwrap();
    std::fs::write(file(".tmp-00000000000000000004.json"), b"{").unwrap();
    std::fs::write(file("00000000000000000009.url-done"), b"").unwrap();

    let spool = EventSpool::open(dir.path(), config).unwrap();
    assert!(!file(".tmp-00000000000000000004.json").exists());
    assert!(
        !file("00000000000000000009.url-done").exists(),
        "its event is gone"
    );
    assert_eq!(spool.pending(), 3);
    let (_stop, _sender) = start_sender(&spool);
    wait_until("the spool to drain", || spool.pending() == 0).await;
    assert_eq!(
        receiver.accepted(),
        [emitted[0].clone(), emitted[2].clone()]
    );
    assert!(file("00000000000000000002.json.corrupt").exists());
    // The orphan marker's seq was already handed out once: it is not handed out again.
    assert_eq!(emit(&spool, "b3", "queued").seq, 10);
}

#[tokio::test]
async fn with_no_target_events_are_logged_and_dropped() {
    log_to_test_output();
    let dir = tempfile::tempdir().unwrap();
    let spool = EventSpool::open(dir.path(), fast(None, None)).unwrap();
    let (_stop, _sender) = start_sender(&spool);
    emit(&spool, "b1", "applied");
    emit(&spool, "b2", "failed");
    wait_until("the spool to drain", || spool.pending() == 0).await;
}

#[test]
fn config_defaults_and_refusals() {
    let config: EventsConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(
        (
            config.retry_initial_secs,
            config.retry_max_secs,
            config.timeout_secs,
            config.max_events,
            config.max_untrusted_events
        ),
        (2.0, 300.0, 30.0, 10_000, 100)
    );
    config.check().unwrap();
    assert!(serde_json::from_str::<EventsConfig>(r#"{"urll": "http://x"}"#).is_err());

    let refused = |config: EventsConfig| {
        let error = config.check().unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput, "{error}");
        error.to_string()
    };
    let url = |u: &str| EventsConfig {
        url: Some(u.into()),
        ..EventsConfig::default()
    };
    assert!(refused(url("ftp://host/x")).contains("http"));
    assert!(refused(url("not a url")).contains("events.url"));
    assert!(refused(EventsConfig {
        command: Some(vec![]),
        ..EventsConfig::default()
    })
    .contains("events.command"));
    let mut bad_header = url("https://host/x");
    bad_header
        .headers
        .insert("Authorization".into(), "secret\nvalue".into());
    let message = refused(bad_header);
    assert!(
        !message.contains("secret"),
        "a header value is never echoed: {message}"
    );
    assert!(refused(EventsConfig {
        retry_initial_secs: 0.0,
        ..EventsConfig::default()
    })
    .contains("retry_initial_secs"));
    assert!(refused(EventsConfig {
        retry_max_secs: 1.0,
        ..EventsConfig::default()
    })
    .contains("retry_max_secs"));
    assert!(refused(EventsConfig {
        max_events: 0,
        ..EventsConfig::default()
    })
    .contains("max_events"));

    log_to_test_output();
    let dir = tempfile::tempdir().unwrap();
    assert!(EventSpool::open(dir.path(), url("ftp://host/x")).is_err());
}
