//! The crash-point harness: for every named step of intake and apply
//! (`sideload_registry_plugin::crash::Step::ALL`), the real daemon in front of a real
//! `docker-registry` takes a bundle (by upload, and for the intake steps also by the inbox),
//! aborts at that step, restarts, and must then apply the bundle exactly once and leave
//! nothing behind. Needs the `crash-points` feature:
//! `cargo test -p sideload-registry-plugin --features crash-points --test crash_points`.

use sideload_test_support::registry as support;

use std::path::Path;
use std::time::{Duration, Instant};

use sideload_registry_plugin::crash::Step;
use support::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Upload,
    Inbox,
}

/// The cases: every step by upload (but the inbox's own), and the intake steps by the inbox.
fn cases() -> Vec<(Step, Source)> {
    let mut cases = Vec::new();
    for &step in Step::ALL {
        if !step.inbox_only() {
            cases.push((step, Source::Upload));
        }
        let intake = matches!(
            step,
            Step::InboxMoved | Step::IntakeChecked | Step::IntakeStored | Step::IntakeJournaled
        );
        if intake {
            cases.push((step, Source::Inbox));
        }
    }
    cases
}

#[test]
fn a_crash_at_every_step_of_intake_and_apply_applies_the_bundle_once_and_leaves_nothing() {
    let path = bundle(BundleSpec::default());
    let mut failures = Vec::new();
    for (step, source) in cases() {
        let started = Instant::now();
        let outcome = std::panic::catch_unwind(|| crash_case(step, source, &path));
        eprintln!(
            "crash at {} via {source:?}: {} in {:.1} s",
            step.name(),
            if outcome.is_ok() { "ok" } else { "FAILED" },
            started.elapsed().as_secs_f64()
        );
        if let Err(panic) = outcome {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            failures.push(format!("{} via {source:?}: {message}", step.name()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn crash_case(step: Step, source: Source, path: &Path) {
    let registry = Registry::start();
    seed_v1(&registry);
    let events = tempfile::tempdir().unwrap();
    let events_file = events.path().join("events.jsonl");
    let extra = format!(
        "[events]\ncommand = [\"/bin/sh\", \"-c\", \"cat >> {0} && echo >> {0}\"]\nretry_initial_secs = 0.2\nretry_max_secs = 1.0\n",
        events_file.display()
    );
    let mut daemon = Daemon::start(
        &registry,
        DaemonOptions {
            env: vec![("SIDELOAD_CRASH_AT".into(), step.name().into())],
            extra,
            ..Default::default()
        },
    );
    let id = bundle_id(path);
    let bytes = std::fs::read(path).unwrap();
    let mut upload = None;
    match source {
        Source::Upload => {
            let u = daemon.create_upload(path, &[]);
            // The daemon may die mid-request: the answer is not looked at.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                daemon.request(
                    "PATCH",
                    &format!("/sideload/v1/uploads/{u}"),
                    &[("Upload-Offset", "0".into())],
                    &bytes,
                )
            }));
            upload = Some(u);
        }
        Source::Inbox => {
            let inbox = daemon.data_dir.join("inbox");
            std::fs::create_dir_all(&inbox).unwrap();
            let tmp = inbox.join(".app-v2.bundle.tmp");
            std::fs::write(&tmp, &bytes).unwrap();
            std::fs::rename(&tmp, inbox.join("app-v2.bundle")).unwrap();
        }
    }
    let marker = format!("crash point {}: aborting", step.name());
    let deadline = Instant::now() + Duration::from_secs(120);
    while !daemon.log().contains(&marker) {
        assert!(
            Instant::now() < deadline,
            "step {} never reached; log:\n{}",
            step.name(),
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon.clear_env();
    daemon.restart();
    if let Some(u) = upload {
        finish_upload(&daemon, &u, path, &bytes);
    }
    let status = daemon.wait_state(&id, &["applied", "failed"], Duration::from_secs(120));
    assert_eq!(status["bundle"]["state"], "applied", "{status:#}");
    // Under the name it was delivered as.
    assert_eq!(status["bundle"]["name"], "app-v2.bundle", "{status:#}");
    // Exactly once in the journal, nothing failed or refused on the way.
    let states: Vec<String> = status["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        states.iter().filter(|s| *s == "applied").count(),
        1,
        "{states:?}"
    );
    assert!(
        !states.iter().any(|s| s == "failed" || s == "refused"),
        "{states:?}"
    );
    // The registry holds the statement's manifest under the tag, and v1 is untouched.
    let manifest = status["bundle"]["manifest_digest"].as_str().unwrap();
    let tagged: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/edge/app:v2", registry.host),
    ]))
    .unwrap();
    let raw = serde_json::to_vec(&tagged).unwrap();
    assert!(!raw.is_empty());
    let digest: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{}/edge/app:v2", registry.host),
    ]))
    .unwrap();
    assert_eq!(digest["Digest"], manifest);
    assert_eq!(app_tags(&registry.host), serde_json::json!(["v1", "v2"]));
    // Events: queued and applied delivered (applied at least once, at most twice: a crash
    // after the event was spooled but before the cleanup announces it again).
    let events = wait_events(&events_file, &id, "applied");
    let count = |state: &str| events.iter().filter(|e| e["state"] == state).count();
    assert!(count("queued") >= 1, "{events:#?}");
    let applied = count("applied");
    if step == Step::ApplyAnnounced {
        assert!((1..=2).contains(&applied), "{events:#?}");
    } else {
        assert_eq!(applied, 1, "{events:#?}");
    }
    assert_eq!(count("failed"), 0, "{events:#?}");
    // Nothing left behind.
    let leftovers = leftovers(&daemon.data_dir);
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    let open = daemon.get_json("/sideload/v1/admin/uploads");
    assert_eq!(open["uploads"], serde_json::json!([]), "stuck uploads");
    // A new delivery of the same bundle is recognised as done.
    let again = daemon.upload(path);
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["outcome"], "duplicate", "{}", again.text());
    daemon.stop();
}

/// Finishes an upload the way `sideload push` does after a lost answer: ask the offset, send
/// what is missing, finish with PUT. Must end within a few rounds.
fn finish_upload(daemon: &Daemon, upload: &str, path: &Path, bytes: &[u8]) {
    let mut upload = upload.to_owned();
    for _ in 0..5 {
        let Some(offset) = daemon.offset(&upload) else {
            // Gone (refused or expired): a new upload.
            upload = daemon.create_upload(path, &[]);
            continue;
        };
        let offset = offset as usize;
        let r = if offset < bytes.len() {
            daemon.request(
                "PATCH",
                &format!("/sideload/v1/uploads/{upload}"),
                &[("Upload-Offset", offset.to_string())],
                &bytes[offset..],
            )
        } else {
            daemon.request("PUT", &format!("/sideload/v1/uploads/{upload}"), &[], b"")
        };
        match r.status {
            200 | 202 => {
                let outcome = r.json()["outcome"].as_str().unwrap_or("").to_owned();
                assert!(
                    outcome == "queued" || outcome == "duplicate",
                    "{}",
                    r.text()
                );
                return;
            }
            204 | 409 => continue,
            other => panic!("upload answered {other}: {}", r.text()),
        }
    }
    panic!(
        "the upload did not finish in 5 rounds; log:\n{}",
        daemon.log()
    );
}

/// The delivered events about `bundle`, once one in `state` is among them.
fn wait_events(file: &Path, bundle: &str, state: &str) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events: Vec<serde_json::Value> = std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|e: &serde_json::Value| e["bundle"] == bundle)
            .collect();
        if events.iter().any(|e| e["state"] == state) || Instant::now() > deadline {
            // Let a duplicate in flight arrive too.
            std::thread::sleep(Duration::from_millis(500));
            return std::fs::read_to_string(file)
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.trim().is_empty())
                .filter_map(|l| serde_json::from_str(l).ok())
                .filter(|e: &serde_json::Value| e["bundle"] == bundle)
                .collect();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Files intake and apply may leave: stored bundles, incoming files, staging, upload bytes
/// and half-written records, quarantine links, inbox files, half-written events.
fn leftovers(data: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for dir in ["bundles", "staging", "quarantine", "inbox"] {
        if let Ok(entries) = std::fs::read_dir(data.join(dir)) {
            found.extend(
                entries
                    .flatten()
                    .map(|e| format!("{dir}/{}", e.file_name().to_string_lossy())),
            );
        }
    }
    if let Ok(entries) = std::fs::read_dir(data.join("events")) {
        found.extend(
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".tmp-"))
                .map(|n| format!("events/{n}")),
        );
    }
    if let Ok(entries) = std::fs::read_dir(data.join("uploads")) {
        found.extend(
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".json"))
                .map(|n| format!("uploads/{n}")),
        );
    }
    found
}
