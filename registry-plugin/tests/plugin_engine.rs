//! The daemon's `[engine]` section end to end: a signed bundle is uploaded, applied into a real
//! `docker-registry`, and the daemon then has podman's Docker-compatible API pull the image
//! *through the daemon itself* (`pull_from` = the daemon's own listen address, the deployment
//! path: the engine only ever talks to the plugin) and tag it under the bundle's tags. Nothing is
//! mocked: the daemon runs as a child process (`support`), podman runs isolated in a temp dir
//! (`podman_support`).
//!
//! Checked from the outside only: the bundle record's `engine` outcome (GET
//! /sideload/v1/bundles/{id}), the events the daemon emits (through an `[events]` command that
//! appends each event's state to a file), and what the engine lists.
//!
//! Needs `podman`, `skopeo` and `docker-registry`; a missing tool fails the test, never skips.

mod podman_support;
use sideload_test_support::registry as support;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use podman_support::{free_port, lists, require, start_podman, Scratch};
use sideload_registry_plugin::engine::{Engine, EngineConfig};
use support::{bundle, bundle_id, seed_v1, BundleSpec, Daemon, DaemonOptions, Registry};

/// Upper bound for upload, apply and the engine's pull and tag (about 2 s here).
const DEADLINE: Duration = Duration::from_secs(180);

/// Config for a daemon that loads into the engine at `socket`, pulling from `pull_from`, and
/// records every event's state as one line of `events`.
fn engine_options(
    dir: &Path,
    socket: &Path,
    pull_from: &str,
    listen_port: Option<u16>,
) -> DaemonOptions {
    let script = dir.join("record-event.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$SIDELOAD_EVENT_STATE\" >> '{}'\n",
            dir.join("events").display()
        ),
    )
    .unwrap();
    DaemonOptions {
        extra: format!(
            "[engine]\nsocket = \"{}\"\npull_from = \"{pull_from}\"\ntimeout_secs = 120\n\
             [events]\ncommand = [\"sh\", \"{}\"]\nretry_initial_secs = 0.2\nretry_max_secs = 1.0\n",
            socket.display(),
            script.display()
        ),
        listen_port,
        ..Default::default()
    }
}

/// The demo bundle (edge/app v1 → v2, tag v2). `support::bundle` builds it on first use through
/// one fixed temp file, so the tests here, which run in parallel, take turns.
fn demo_bundle() -> PathBuf {
    static BUILD: Mutex<()> = Mutex::new(());
    let _turn = BUILD.lock().unwrap_or_else(PoisonError::into_inner);
    bundle(BundleSpec::default())
}

/// Uploads the demo bundle and waits until it is applied and its record has an engine outcome:
/// the daemon marks the bundle applied first and records the engine's outcome after the pull,
/// so `applied` alone does not mean the engine is done.
fn upload_and_wait_for_engine(daemon: &Daemon) -> serde_json::Value {
    let path = demo_bundle();
    let id = bundle_id(&path);
    let started = Instant::now();
    let r = daemon.upload(&path);
    assert_eq!(r.status, 202, "upload: {}", r.text());
    let v = daemon.wait_state(&id, &["applied", "failed"], DEADLINE);
    assert_eq!(
        v["bundle"]["state"],
        "applied",
        "{v:#}\nlog:\n{}",
        daemon.log()
    );
    let applied = started.elapsed();
    loop {
        let v = daemon.get_json(&format!("/sideload/v1/bundles/{id}"));
        if !v["bundle"]["engine"].is_null() {
            eprintln!(
                "upload and apply took {applied:?}, the engine outcome came {:?} later",
                started.elapsed() - applied
            );
            return v["bundle"].clone();
        }
        assert!(
            started.elapsed() < DEADLINE,
            "bundle {id} is applied but has no engine outcome after {DEADLINE:?}: {v:#}\nlog:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The states the events command recorded, once `last` is among them.
fn recorded_states(dir: &Path, last: &str) -> Vec<String> {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(dir.join("events")).unwrap_or_default();
        let states: Vec<String> = text.lines().map(str::to_owned).collect();
        if states.iter().any(|s| s == last) {
            return states;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no {last:?} event within 30 s; recorded: {states:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The position of `state` in `states`, or a panic naming what was recorded.
fn position(states: &[String], state: &str) -> usize {
    states
        .iter()
        .position(|s| s == state)
        .unwrap_or_else(|| panic!("no {state:?} event; recorded: {states:?}"))
}

#[tokio::test]
async fn an_applied_bundle_is_pulled_by_the_engine_through_the_plugin_and_tagged() {
    let dir = Scratch(tempfile::tempdir().unwrap());
    let dir_path = dir.0.path().to_owned();
    require("podman", "podman", &dir_path);
    // The engine pulls from the daemon, so podman must list the daemon's address as insecure
    // before either starts: the daemon gets a port chosen here.
    let port = free_port();
    let plugin = format!("127.0.0.1:{port}");
    let (podman, socket) = start_podman(&dir_path, &[&plugin]).await;
    let registry = Registry::start();
    seed_v1(&registry);
    let daemon = Daemon::start(
        &registry,
        engine_options(&dir_path, &socket, &plugin, Some(port)),
    );
    assert_eq!(
        daemon.addr, plugin,
        "the daemon listens where pull_from says"
    );

    let record = upload_and_wait_for_engine(&daemon);
    let outcome = record["engine"].as_str().unwrap();
    // "loaded as ID under NAME, NAME…"
    let id = outcome
        .strip_prefix("loaded as ")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| {
            panic!(
                "engine outcome {outcome:?}\ndaemon log:\n{}\npodman log:\n{}",
                daemon.log(),
                podman.log_tail()
            )
        });
    assert!(id.starts_with("sha256:"), "{outcome}");
    for name in [format!("{plugin}/edge/app:v2"), "edge/app:v2".to_owned()] {
        assert!(outcome.contains(&name), "{outcome}");
    }

    let engine = Engine::new(EngineConfig {
        socket: socket.clone(),
        pull_from: plugin.clone(),
        timeout_secs: 30,
    });
    let image = engine
        .inspect("edge/app:v2")
        .await
        .unwrap()
        .expect("the engine holds edge/app:v2");
    assert_eq!(image.id, id);
    assert!(lists(&image.repo_tags, "edge/app:v2"), "{image:?}");
    // Pulled from the plugin's address, by the digest the bundle produced.
    let manifest = record["manifest_digest"].as_str().unwrap();
    let pulled_as = format!("{plugin}/edge/app@{manifest}");
    assert!(image.repo_digests.contains(&pulled_as), "{image:?}");
    // Only the bundle's tags are loaded, not the base the registry was seeded with.
    assert_eq!(engine.inspect("edge/app:v1").await.unwrap(), None);

    let states = recorded_states(&dir_path, "engine-loaded");
    assert!(
        position(&states, "applied") < position(&states, "engine-loaded"),
        "{states:?}"
    );
    assert!(!states.iter().any(|s| s == "engine-failed"), "{states:?}");
}

#[tokio::test]
async fn a_missing_engine_socket_leaves_the_bundle_applied_and_says_which_socket() {
    let dir = Scratch(tempfile::tempdir().unwrap());
    let dir_path = dir.0.path().to_owned();
    let socket = dir_path.join("no-engine.sock");
    let registry = Registry::start();
    seed_v1(&registry);
    let daemon = Daemon::start(
        &registry,
        engine_options(&dir_path, &socket, "127.0.0.1:5000", None),
    );

    let record = upload_and_wait_for_engine(&daemon);
    let outcome = record["engine"].as_str().unwrap();
    assert!(outcome.starts_with("failed:"), "{outcome}");
    assert!(outcome.contains(&socket.display().to_string()), "{outcome}");
    assert_eq!(record["state"], "applied", "{record:#}");

    // The registry has the image all the same: the daemon serves it under the bundle's tag.
    let r = daemon.request(
        "GET",
        "/v2/edge/app/manifests/v2",
        &[(
            "Accept",
            "application/vnd.oci.image.manifest.v1+json, \
             application/vnd.docker.distribution.manifest.v2+json"
                .into(),
        )],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("docker-content-digest"),
        record["manifest_digest"].as_str()
    );

    let states = recorded_states(&dir_path, "engine-failed");
    assert!(
        position(&states, "applied") < position(&states, "engine-failed"),
        "{states:?}"
    );
    assert!(!states.iter().any(|s| s == "engine-loaded"), "{states:?}");
}
