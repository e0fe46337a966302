//! The product's last promise, on moby as IoT Edge runs it: after a bundle is applied, the
//! released deployment's modules start from the device's real Docker engine with pulling
//! forbidden, by the references the released manifest writes.
//!
//! Everything is real: `docker-registry` and the registry plugin on loopback, Debian's
//! `dockerd` (own data root, exec root, socket; `--iptables=false --bridge=none`) as the
//! plugin's `[engine]`, the fleet ledger fed by the device's own inventory API, and
//! `sideload fleet rewrite` / `gate` as a release pipeline runs them. The agent's part is done
//! as edgeAgent does it with `imagePullPolicy: never`: Engine API create (with `Image` exactly as
//! written and the module's `createOptions`) and start; no pull is ever asked for.
//!
//! Needs root, `dockerd` (docker.io), `curl`, `docker-registry` and `skopeo`; a missing tool
//! fails the test.

mod agent_support;
use sideload_test_support::docker as docker_support;
use sideload_test_support::registry as support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_support::{apply, engine_outcome, free_port, gate, ingest, ok, DEADLINE, UPSTREAM};
use docker_support::Dockerd;
use serde_json::Value;
use support::{bundle, bundle_id, stdout_json, BundleSpec, Daemon, DaemonOptions, Registry};

/// An IoT Edge `set-modules` manifest: the runtime's two modules (installed with the device's
/// OS image) and the app, by its upstream name, with createOptions as the portal writes them.
fn manifest(app_tag: &str) -> String {
    format!(
        r#"{{
  "modulesContent": {{
    "$edgeAgent": {{
      "properties.desired": {{
        "schemaVersion": "1.1",
        "runtime": {{ "type": "docker", "settings": {{ "minDockerVersion": "v1.25" }} }},
        "systemModules": {{
          "edgeAgent": {{
            "type": "docker",
            "settings": {{ "image": "mcr.microsoft.com/azureiotedge-agent:1.5", "createOptions": "{{}}" }}
          }},
          "edgeHub": {{
            "type": "docker",
            "status": "running",
            "restartPolicy": "always",
            "settings": {{ "image": "mcr.microsoft.com/azureiotedge-hub:1.5", "createOptions": "{{}}" }}
          }}
        }},
        "modules": {{
          "telemetry": {{
            "version": "1.0",
            "type": "docker",
            "status": "running",
            "restartPolicy": "always",
            "settings": {{
              "image": "{UPSTREAM}/edge/app:{app_tag}",
              "createOptions": "{{\"Env\":[\"SITE=ship-17\"],\"Labels\":{{\"net.azure-devices.edge.owner\":\"Microsoft.Azure.Devices.Edge.Agent\"}}}}"
            }}
          }}
        }}
      }}
    }},
    "$edgeHub": {{ "properties.desired": {{ "schemaVersion": "1.1", "routes": {{}} }} }}
  }}
}}
"#
    )
}

/// The custom modules of a manifest: (name, image, createOptions) as written.
fn modules(path: &Path) -> Vec<(String, String, String)> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let modules = &v["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"];
    modules
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, m)| {
            assert_eq!(m["imagePullPolicy"], "never", "{path:?}: {m}");
            (
                name.clone(),
                m["settings"]["image"].as_str().unwrap().to_owned(),
                m["settings"]["createOptions"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            )
        })
        .collect()
}

/// Rewrites `manifest` for release pinned to the device-local registry, gates it, and
/// returns the released file and the gate's exit code and report.
fn release(db: &str, work: &Path, name: &str, local: &str) -> (PathBuf, i32, Value) {
    let source = work.join(format!("{name}.json"));
    let released = work.join(format!("{name}.release.json"));
    ok(
        db,
        &[
            "fleet",
            "rewrite",
            source.to_str().unwrap(),
            "--pin",
            "--device-registry",
            local,
            "-o",
            released.to_str().unwrap(),
        ],
    );
    let (code, report) = gate(db, &released);
    (released, code, report)
}

#[test]
fn edge_agent_on_moby_starts_the_released_modules_with_pulling_forbidden() {
    let dockerd = Dockerd::start();
    let registry = Registry::start();
    let port = free_port();
    let local = format!("127.0.0.1:{port}");
    let daemon = Daemon::start(
        &registry,
        DaemonOptions {
            extra: format!(
                "[engine]\nkind = \"docker\"\nsocket = \"{}\"\npull_from = \"{local}\"\n\
                 upstream_hosts = [\"{UPSTREAM}\"]\ntimeout_secs = 120\n",
                dockerd.socket.display()
            ),
            listen_port: Some(port),
            ..Default::default()
        },
    );
    let work = tempfile::tempdir().unwrap();
    let db = work.path().join("fleet.db");
    let db = db.to_str().unwrap();

    // v1 arrives whole.
    let v1 = apply(
        &daemon,
        &bundle(BundleSpec {
            name: "app-v1-whole.bundle",
            target: "v1",
            with_base: false,
            sequence: 50,
            ..Default::default()
        }),
    );
    let v1_digest = v1["manifest_digest"].as_str().unwrap().to_owned();
    // The edge runtime came with the OS image: its two images are in the engine already.
    let v1_id = dockerd
        .image_id(&format!("{local}/edge/app@{v1_digest}"))
        .expect("v1 under its local digest name");
    dockerd.tag(&v1_id, "mcr.microsoft.com/azureiotedge-agent", "1.5");
    dockerd.tag(&v1_id, "mcr.microsoft.com/azureiotedge-hub", "1.5");

    std::fs::write(work.path().join("v1.json"), manifest("v1")).unwrap();
    std::fs::write(work.path().join("v2.json"), manifest("v2")).unwrap();
    ingest(db, &daemon);
    ok(
        db,
        &[
            "fleet",
            "deployment",
            "rollout-v2",
            "--manifest",
            work.path().join("v2.json").to_str().unwrap(),
            "--device",
            "test-device",
        ],
    );

    // The unpinned manifest (tag form, upstream name) already resolves.
    let (code, report) = gate(db, &work.path().join("v1.json"));
    assert_eq!(code, 0, "{report:#}");
    // Pinned to the device-local registry, as moby needs for a digest reference.
    let (released_v1, code, report) = release(db, work.path(), "v1", &local);
    assert_eq!(code, 0, "{report:#}");
    let mods = modules(&released_v1);
    assert_eq!(
        mods[0].1,
        format!("{local}/edge/app:v1@{v1_digest}"),
        "the release pins the device-local name"
    );
    for (name, image, options) in &mods {
        let out = dockerd
            .run_module(&format!("{name}-v1"), image, options)
            .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()));
        assert_eq!(out.trim(), "edge app 1.0: telemetry collector", "{image}");
    }
    // The tag form by the upstream name starts too.
    let out = dockerd
        .run_module("telemetry-tag", &format!("{UPSTREAM}/edge/app:v1"), "")
        .unwrap();
    assert!(out.contains("edge app 1.0"), "{out}");

    // What moby cannot hold, the gate does not pretend: the upstream digest form.
    let upstream_pin = work.path().join("v1.upstream-pin.json");
    ok(
        db,
        &[
            "fleet",
            "rewrite",
            work.path().join("v1.json").to_str().unwrap(),
            "--pin",
            "-o",
            upstream_pin.to_str().unwrap(),
        ],
    );
    let (code, report) = gate(db, &upstream_pin);
    assert_eq!(code, 4, "{report:#}");
    let missing = report["missing"][0]["images"].to_string();
    assert!(
        missing.contains(&format!("{UPSTREAM}/edge/app:v1@{v1_digest}")),
        "{report:#}"
    );
    let refused = dockerd
        .run_module(
            "telemetry-upstream-pin",
            &format!("{UPSTREAM}/edge/app@{v1_digest}"),
            "",
        )
        .unwrap_err();
    assert!(
        refused.contains("404") && refused.contains("No such image"),
        "{refused}"
    );

    // Before v2 arrives, its deployment is held.
    let (_, code, report) = release(db, work.path(), "v2", &local);
    assert_eq!(code, 4, "{report:#}");

    // The v1 → v2 delta.
    let v2 = apply(&daemon, &bundle(BundleSpec::default()));
    let v2_digest = v2["manifest_digest"].as_str().unwrap().to_owned();
    ingest(db, &daemon);
    let (released_v2, code, report) = release(db, work.path(), "v2", &local);
    assert_eq!(code, 0, "{report:#}");
    for (name, image, options) in modules(&released_v2) {
        assert_eq!(image, format!("{local}/edge/app:v2@{v2_digest}"));
        let out = dockerd
            .run_module(&format!("{name}-v2"), &image, &options)
            .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()));
        assert_eq!(out.trim(), "edge app 1.1: telemetry collector");
    }
    let status = stdout_json(&ok(
        db,
        &["fleet", "status", "--deployment", "rollout-v2", "--json"],
    ));
    assert_eq!(status["ready"], 1, "{status:#}");
    assert_eq!(status["missing"], serde_json::json!([]), "{status:#}");

    // Someone removes the image from the engine (the registry still has it): the agent
    // could not start it, so the gate holds the release again.
    for name in [
        format!("{local}/edge/app@{v2_digest}"),
        format!("{local}/edge/app:v2"),
        format!("{UPSTREAM}/edge/app:v2"),
        "edge/app:v2".to_owned(),
    ] {
        dockerd.untag(&name);
    }
    ingest(db, &daemon);
    let (code, report) = gate(db, &released_v2);
    assert_eq!(code, 4, "{report:#}");
    assert_eq!(
        report["missing"][0]["checked"], "docker engine",
        "{report:#}"
    );
    // The next apply puts it back, and the release goes out.
    // Sent as a pipeline would: `sideload push --wait` returns once the engine took it.
    let again = bundle(BundleSpec {
        name: "app-v2-again.bundle",
        sequence: 101,
        ..Default::default()
    });
    let pushed = ok(
        db,
        &[
            "push",
            again.to_str().unwrap(),
            "--to",
            &format!("http://{}", daemon.addr),
            "--wait",
            "--json",
        ],
    );
    let pushed = stdout_json(&pushed);
    let engine = pushed["bundles"][0]["engine"].as_str().unwrap_or_default();
    assert!(engine.starts_with("loaded as sha256:"), "{pushed:#}");
    assert!(
        engine.contains(&format!("{UPSTREAM}/edge/app:v2")),
        "{pushed:#}"
    );
    ingest(db, &daemon);
    let (code, report) = gate(db, &released_v2);
    assert_eq!(code, 0, "{report:#}");
    let (name, image, options) = &modules(&released_v2)[0];
    let out = dockerd
        .run_module(&format!("{name}-again"), image, options)
        .unwrap();
    assert!(out.contains("edge app 1.1"), "{out}");
}

/// An engine that was not there when the bundle applied (a boot where the plugin starts first,
/// a wrong socket fixed later) still gets the image: the plugin offers it again.
#[test]
fn an_image_the_engine_missed_at_apply_is_loaded_when_the_engine_is_there() {
    let dockerd = Dockerd::start();
    let registry = Registry::start();
    let port = free_port();
    let local = format!("127.0.0.1:{port}");
    let engine = |socket: &Path| {
        format!(
            "[engine]\nsocket = \"{}\"\npull_from = \"{local}\"\nupstream_hosts = [\"{UPSTREAM}\"]\n\
             timeout_secs = 60\nretry_secs = 1\n",
            socket.display()
        )
    };
    let missing = dockerd.socket.with_file_name("not-yet.sock");
    let mut daemon = Daemon::start(
        &registry,
        DaemonOptions {
            extra: engine(&missing),
            listen_port: Some(port),
            ..Default::default()
        },
    );
    let path = bundle(BundleSpec {
        name: "app-v1-whole.bundle",
        target: "v1",
        with_base: false,
        sequence: 50,
        ..Default::default()
    });
    let id = bundle_id(&path);
    assert_eq!(daemon.upload(&path).status, 202);
    let v = daemon.wait_state(&id, &["applied", "failed"], DEADLINE);
    assert_eq!(v["bundle"]["state"], "applied", "{v:#}");
    let failed = engine_outcome(&daemon, &id)["engine"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        failed.starts_with("failed") && failed.contains("not-yet.sock"),
        "{failed}"
    );
    // The operator points the plugin at the engine (or the engine comes up): restart.
    daemon.set_extra(&engine(&dockerd.socket));
    daemon.restart();
    let started = Instant::now();
    let digest = v["bundle"]["manifest_digest"].as_str().unwrap().to_owned();
    loop {
        let v = daemon.get_json(&format!("/sideload/v1/bundles/{id}"));
        let outcome = v["bundle"]["engine"].as_str().unwrap_or("").to_owned();
        if outcome.starts_with("loaded as") {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "still {outcome}\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(dockerd
        .image_id(&format!("{local}/edge/app@{digest}"))
        .is_some());
    let out = dockerd
        .run_module("telemetry-retried", &format!("{UPSTREAM}/edge/app:v1"), "")
        .unwrap();
    assert!(out.contains("edge app 1.0"), "{out}");
}
