//! What the edge-agent tests (`agent_docker.rs`, `agent_containerd.rs`) share: the `sideload`
//! CLI against a ledger file, a bundle applied through the real plugin until its engine outcome
//! is in, `fleet ingest` of the device, and `fleet gate` on one manifest.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{bundle_id, stdout_json, Daemon};

/// Upper bound for an upload, its apply and the engine's load.
pub const DEADLINE: Duration = Duration::from_secs(180);

/// The made-up upstream registry the deployments name; it does not resolve.
pub const UPSTREAM: &str = "registry.example";

/// The device id `support::Daemon` configures.
pub const DEVICE: &str = "test-device";

/// `sideload ARGS` with the ledger at `db`.
pub fn sideload(db: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sideload"))
        .args(args)
        .env("SIDELOAD_FLEET_DATABASE", db)
        .output()
        .unwrap()
}

/// [`sideload`] that must succeed.
pub fn ok(db: &str, args: &[&str]) -> Output {
    let out = sideload(db, args);
    assert!(
        out.status.success(),
        "sideload {args:?} failed ({:?}):\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Uploads `path` and waits until it is applied and the engine took it; the bundle record.
pub fn apply(daemon: &Daemon, path: &Path) -> Value {
    let id = bundle_id(path);
    let r = daemon.upload(path);
    assert_eq!(r.status, 202, "upload: {}", r.text());
    let v = daemon.wait_state(&id, &["applied", "failed"], DEADLINE);
    assert_eq!(v["bundle"]["state"], "applied", "{v:#}\n{}", daemon.log());
    let outcome = engine_outcome(daemon, &id);
    assert!(
        outcome["engine"]
            .as_str()
            .is_some_and(|o| o.starts_with("loaded as sha256:")),
        "{outcome:#}\n{}",
        daemon.log()
    );
    outcome
}

/// The bundle record once it has an engine outcome (the daemon records it after the apply).
pub fn engine_outcome(daemon: &Daemon, id: &str) -> Value {
    let started = Instant::now();
    loop {
        let v = daemon.get_json(&format!("/sideload/v1/bundles/{id}"));
        if v["bundle"]["engine"].is_string() {
            return v["bundle"].clone();
        }
        assert!(started.elapsed() < DEADLINE, "no engine outcome: {v:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `fleet ingest` of the device's inventory. Seconds apart: the ledger orders inventories by
/// the device's clock in whole seconds, and the plugin reuses its engine list for 2 s.
pub fn ingest(db: &str, daemon: &Daemon) {
    std::thread::sleep(Duration::from_millis(2100));
    let url = format!("http://{}", daemon.addr);
    ok(db, &["fleet", "ingest", "--device-url", &url]);
}

/// `fleet gate MANIFEST --device test-device --json`: exit code and report.
pub fn gate(db: &str, manifest: &Path) -> (i32, Value) {
    let manifest = manifest.to_str().unwrap();
    let out = sideload(
        db,
        &["fleet", "gate", manifest, "--device", DEVICE, "--json"],
    );
    (out.status.code().unwrap_or(-1), stdout_json(&out))
}
