//! `sideload fleet` end to end, on SQLite and on a real PostgreSQL server: a simulated fleet
//! of 50 devices with mixed inventories of the demo's real images (the benchmark's demo
//! scenarios), an IoT Edge deployment rolled out to it (plan, each distinct bundle built
//! once, outboxes, receipts back, gate, status, rewrite); and one real device (registry
//! plugin in front of docker-registry) that reports over its API and gets its bundle pushed.

use sideload_test_support::databases as pg;
use sideload_test_support::registry as support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};
use sideload_bundle::image::{open_image, OpenOptions};
use support::{fixture, skopeo, stdout_json, Daemon, DaemonOptions, Registry};

fn sideload(db: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sideload"))
        .args(args)
        .env("SIDELOAD_FLEET_DATABASE", db)
        .stdin(Stdio::null())
        .output()
        .expect("run sideload")
}

fn ok(db: &str, args: &[&str]) -> Output {
    let out = sideload(db, args);
    assert!(
        out.status.success(),
        "sideload {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// An inventory entry for an image of an OCI layout, as a device holding it reports it.
fn held(layout: &Path, tag: &str) -> Value {
    let loc = format!("oci:{}:{tag}", layout.display()).parse().unwrap();
    let src = open_image(&loc, &OpenOptions::default()).unwrap();
    let img = src.image();
    json!({
        "repository": "edge/app",
        "tags": [tag],
        "manifest_digest": img.manifest_digest().unwrap().to_string(),
        "media_type": "application/vnd.oci.image.manifest.v1+json",
        "config_digest": img.id().to_string(),
        "diff_ids": img.diff_ids().iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        "layer_blobs": img.layers.iter().map(|l| l.blob_digest.to_string()).collect::<Vec<_>>(),
        "platform": "linux/amd64",
    })
}

/// An image the devices run that the rollout does not touch (edge runtime, tools): made-up
/// digests, sharing no layer with the app.
fn other(repo: &str, tag: &str, n: u8) -> Value {
    let d = |k: u8| {
        format!(
            "sha256:{}",
            format!("{:02x}", n.wrapping_mul(7).wrapping_add(k)).repeat(32)
        )
    };
    json!({
        "repository": repo, "tags": [tag], "manifest_digest": d(1), "config_digest": d(2),
        "diff_ids": [d(3)], "layer_blobs": [d(4)], "platform": "linux/amd64",
    })
}

fn inventory(device: &str, at: u64, images: Vec<Value>) -> Value {
    json!({
        "format": 1, "device": device, "generated_at": at, "images": images,
        "sequences": {}, "free_bytes": 10_000_000_000u64,
    })
}

fn write_json(path: &Path, v: &Value) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

const MANIFEST: &str = r#"{
  "modulesContent": {
    "$edgeAgent": {
      "properties.desired": {
        "schemaVersion": "1.1",
        "runtime": {
          "type": "docker",
          "settings": { "minDockerVersion": "v1.25", "loggingOptions": "" }
        },
        "systemModules": {
          "edgeAgent": {
            "type": "docker",
            "settings": { "image": "mcr.microsoft.com/azureiotedge-agent:1.5", "createOptions": "{}" }
          },
          "edgeHub": {
            "type": "docker",
            "status": "running",
            "restartPolicy": "always",
            "settings": { "image": "mcr.microsoft.com/azureiotedge-hub:1.5", "createOptions": "{\"HostConfig\":{\"PortBindings\":{\"443/tcp\":[{\"HostPort\":\"443\"}]}}}" }
          }
        },
        "modules": {
          "app": {
            "version": "1.0",
            "type": "docker",
            "status": "running",
            "restartPolicy": "always",
            "imagePullPolicy": "on-create",
            "settings": { "image": "CLOUD/edge/app:v2", "createOptions": "{}" }
          }
        }
      }
    },
    "$edgeHub": {
      "properties.desired": {
        "schemaVersion": "1.1",
        "routes": { "upstream": "FROM /messages/* INTO $upstream" },
        "storeAndForwardConfiguration": { "timeToLiveSecs": 7200 }
      }
    }
  }
}
"#;

/// Device groups of the simulated fleet: 0-19 hold v1; 20-29 v1 and a debug image; 30-39 no
/// app; 40-49 v2 already. All run the edge runtime (agent and hub).
fn fleet_inventories(dir: &Path, v1: &Value, v2: &Value, at: u64) -> Vec<PathBuf> {
    (0..50)
        .map(|i| {
            let mut images = vec![
                other("azureiotedge-agent", "1.5", 1),
                other("azureiotedge-hub", "1.5", 2),
            ];
            match i {
                0..=19 => images.push(v1.clone()),
                20..=29 => {
                    images.push(v1.clone());
                    images.push(other("tools/debug", "1", 3 + i as u8));
                }
                30..=39 => {}
                _ => images.push(v2.clone()),
            }
            let path = dir.join(format!("inv/dev-{i:02}.json"));
            write_json(&path, &inventory(&format!("dev-{i:02}"), at, images));
            path
        })
        .collect()
}

fn receipt(dir: &Path, device: &str, bundle: &str, id: &str, state: &str, at: u64) {
    write_json(
        &dir.join(device).join(format!("{bundle}.json")),
        &json!({
            "bundle": bundle, "id": id, "repository": "edge/app", "tags": ["v2"], "sequence": 1,
            "state": state,
            "reason": (state == "failed").then_some("edge/app: cannot store layer: no space left on device"),
            "advice": (state == "failed").then_some("free disk space on the device and insert the stick again"),
            "at": at,
        }),
    );
}

/// `fleet ingest --receipts DIR --json`: what each report did.
fn ingest_receipts(db: &str, dir: &Path) -> Value {
    stdout_json(&ok(
        db,
        &[
            "fleet",
            "ingest",
            "--receipts",
            dir.to_str().unwrap(),
            "--json",
        ],
    ))
}

/// The CI registry: edge/app:v1 and v2 as the demo's OCI layouts hold them (gzip layers,
/// same manifest digests).
fn cloud_registry() -> Registry {
    let f = fixture();
    let cloud = Registry::start();
    for (tag, layout) in [("v1", &f.v1), ("v2", &f.v2)] {
        skopeo(&[
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            &format!("oci:{}:{tag}", layout.display()),
            &format!("docker://{}/edge/app:{tag}", cloud.host),
        ]);
    }
    cloud
}

#[test]
fn a_rollout_to_fifty_devices_on_sqlite_and_postgres() {
    let f = fixture();
    let cloud = cloud_registry();
    let v1 = held(&f.v1, "v1");
    let v2 = held(&f.v2, "v2");
    let dbs = pg::databases();
    for db in &dbs.list {
        let url = match db {
            sideload_fleet::Database::Sqlite(p) => p.display().to_string(),
            sideload_fleet::Database::Postgres(u) => u.clone(),
        };
        let url = url.as_str();
        let work = tempfile::tempdir().unwrap();
        let w = work.path();
        // Device clocks: inventories now, receipts from visits a day and two days later.
        let t0 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();

        // Inventories in, then the deployment set.
        let invs = fleet_inventories(w, &v1, &v2, t0);
        let mut args = vec!["fleet", "ingest", "--json"];
        for p in &invs {
            args.extend(["--inventory", p.to_str().unwrap()]);
        }
        let out = stdout_json(&ok(url, &args));
        assert_eq!(out["ingested"].as_array().unwrap().len(), 50);
        for (i, _) in invs.iter().enumerate().filter(|(i, _)| i % 10 == 0) {
            ok(
                url,
                &[
                    "fleet",
                    "device",
                    &format!("dev-{i:02}"),
                    "--route",
                    "usb",
                    "--contact",
                    "site lead",
                ],
            );
        }
        let manifest = w.join("deployment.json");
        std::fs::write(&manifest, MANIFEST.replace("CLOUD", &cloud.host)).unwrap();
        let mut args = vec![
            "fleet",
            "deployment",
            "rollout-v2",
            "--manifest",
            manifest.to_str().unwrap(),
            "--ordered-by",
            "CHG-1001",
            "--contact",
            "release@example",
        ];
        let ids: Vec<String> = (0..50).map(|i| format!("dev-{i:02}")).collect();
        for id in &ids {
            args.extend(["--device", id.as_str()]);
        }
        ok(url, &args);

        // Held back: 40 devices lack the app.
        let gate = sideload(
            url,
            &["fleet", "gate", "--deployment", "rollout-v2", "--json"],
        );
        assert_eq!(
            gate.status.code(),
            Some(4),
            "{}",
            String::from_utf8_lossy(&gate.stderr)
        );
        let g = stdout_json(&gate);
        assert_eq!(g["missing"].as_array().unwrap().len(), 40, "{g:#}");
        assert_eq!(g["release"], false);

        // The plan, shown before anything is built.
        fn plan_args<'a>(host: &'a str, build: Option<&'a str>) -> Vec<&'a str> {
            let mut a = vec![
                "fleet",
                "plan",
                "--deployment",
                "rollout-v2",
                "--registry",
                host,
                "--ordered-by",
                "CHG-1001",
                "--json",
            ];
            if let Some(b) = build {
                a.extend(["--build", b]);
            }
            a
        }
        let shown = stdout_json(&ok(url, &plan_args(&cloud.host, None)));
        assert_eq!(shown["built"], false);
        assert_eq!(shown["totals"]["distinct_bundles"], 2, "{shown:#}");
        assert_eq!(shown["totals"]["devices_up_to_date"], 10);

        let out_dir = w.join("out");
        let built = stdout_json(&ok(
            url,
            &plan_args(&cloud.host, Some(out_dir.to_str().unwrap())),
        ));
        let totals = &built["totals"];
        let bundle_bytes = totals["bundle_bytes"].as_u64().unwrap();
        let whole = totals["whole_image_bytes"].as_u64().unwrap();
        let layers = totals["missing_layer_bytes"].as_u64().unwrap();
        // 30 deltas against v1 and 10 whole-image bundles, against 40 whole images.
        assert!(
            bundle_bytes * 4 < whole,
            "{bundle_bytes} B of bundles, {whole} B of whole images"
        );
        assert!(
            bundle_bytes < layers,
            "{bundle_bytes} B of bundles, {layers} B of missing layers"
        );
        let files: Vec<_> = std::fs::read_dir(out_dir.join("bundles"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "bundle"))
            .collect();
        assert_eq!(files.len(), 2, "each distinct bundle built once");
        let bundles = built["bundles"].as_array().unwrap();
        let delta = bundles
            .iter()
            .find(|b| !b["bases"].as_array().unwrap().is_empty())
            .unwrap();
        let whole_bundle = bundles
            .iter()
            .find(|b| b["bases"].as_array().unwrap().is_empty())
            .unwrap();
        assert_eq!(delta["devices"].as_array().unwrap().len(), 30);
        assert_eq!(whole_bundle["devices"].as_array().unwrap().len(), 10);
        assert!(delta["size"].as_u64().unwrap() < 50_000, "{delta:#}");
        // Outboxes: one folder per route and device, hard links to the one file.
        let delta_file = PathBuf::from(delta["file"].as_str().unwrap());
        let name = delta_file.file_name().unwrap();
        let linked = out_dir.join("outbox/usb/dev-00").join(name);
        assert_eq!(
            std::fs::metadata(&linked).unwrap().ino(),
            std::fs::metadata(&delta_file).unwrap().ino()
        );
        assert!(out_dir.join("outbox/unrouted/dev-21").join(name).is_file());
        assert!(
            !out_dir.join("outbox/unrouted/dev-45").exists(),
            "dev-45 has v2"
        );
        let outbox: Value = serde_json::from_slice(
            &std::fs::read(out_dir.join("outbox/unrouted/dev-35/outbox.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(outbox["bundles"][0]["id"], whole_bundle["bundle_id"]);
        let status = stdout_json(&ok(url, &["fleet", "status", "--json"]));
        assert_eq!(status["transfers"]["in_transit"], 40, "{status:#}");
        eprintln!("plan totals ({}): {totals}", db.display());
        // The same plan for a person: what it costs against whole images.
        let text = ok(
            url,
            &[
                "fleet",
                "plan",
                "--deployment",
                "rollout-v2",
                "--registry",
                &cloud.host,
            ],
        );
        let text = String::from_utf8_lossy(&text.stdout);
        eprintln!("{text}");
        assert!(
            text.contains("50 devices, 10 already hold everything; 2 distinct bundles"),
            "{text}"
        );

        // Receipts come back: 25 applied, 5 failed (dev-25..29), on sticks.
        let delta_id = delta["bundle_id"].as_str().unwrap();
        let whole_id = whole_bundle["bundle_id"].as_str().unwrap();
        let receipts = w.join("stick/receipts");
        let t1 = t0 + 86_400;
        for i in 0..30 {
            let d = format!("dev-{i:02}");
            let state = if (25..30).contains(&i) {
                "failed"
            } else {
                "applied"
            };
            receipt(&receipts, &d, "edge_app-v2-00.bundle", delta_id, state, t1);
            let mut images = vec![
                other("azureiotedge-agent", "1.5", 1),
                other("azureiotedge-hub", "1.5", 2),
            ];
            images.push(if state == "applied" {
                v2.clone()
            } else {
                v1.clone()
            });
            write_json(
                &receipts.join(&d).join("inventory.json"),
                &inventory(&d, t1, images),
            );
        }
        let first = ingest_receipts(url, &receipts);
        let changed = |v: &Value| {
            v["ingested"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|r| r["outcome"] == "changed")
                .count()
        };
        assert_eq!(changed(&first), 60, "{first:#}");
        // The same receipts again, and an older visit's receipt: nothing changes.
        let again = ingest_receipts(url, &receipts);
        assert_eq!(changed(&again), 0, "{again:#}");
        let old = w.join("old-stick/receipts");
        receipt(
            &old,
            "dev-00",
            "edge_app-v2-00.bundle",
            delta_id,
            "received",
            t1 - 3600,
        );
        write_json(
            &old.join("dev-00/inventory.json"),
            &inventory("dev-00", t1 - 3600, vec![v1.clone()]),
        );
        let stale = ingest_receipts(url, &old);
        assert_eq!(changed(&stale), 0, "{stale:#}");
        let dev0 = stdout_json(&ok(
            url,
            &["fleet", "status", "--device", "dev-00", "--json"],
        ));
        assert_eq!(dev0["transfers"][0]["state"], "applied", "{dev0:#}");
        assert!(dev0["device"]["images"].to_string().contains("\"v2\""));
        let status = stdout_json(&ok(url, &["fleet", "status", "--json"]));
        assert_eq!(status["transfers"]["applied"], 25, "{status:#}");
        assert_eq!(status["transfers"]["failed"], 5);
        assert_eq!(status["transfers"]["in_transit"], 10);
        let set = stdout_json(&ok(
            url,
            &["fleet", "status", "--deployment", "rollout-v2", "--json"],
        ));
        assert_eq!(set["ready"], 35, "{set:#}");

        // Still held back (5 failed, 10 in transit); the last devices report; released.
        let gate = sideload(url, &["fleet", "gate", "--deployment", "rollout-v2"]);
        assert_eq!(gate.status.code(), Some(4));
        let text = String::from_utf8_lossy(&gate.stdout);
        assert!(
            text.contains("dev-27 (checked in its registry): ") && text.contains("/edge/app:v2"),
            "{text}"
        );
        let last = w.join("last/receipts");
        let t2 = t1 + 86_400;
        for i in (25..30).chain(30..40) {
            let d = format!("dev-{i:02}");
            let id = if i < 30 { delta_id } else { whole_id };
            receipt(&last, &d, "b.bundle", id, "applied", t2);
            write_json(
                &last.join(&d).join("inventory.json"),
                &inventory(
                    &d,
                    t2,
                    vec![
                        other("azureiotedge-agent", "1.5", 1),
                        other("azureiotedge-hub", "1.5", 2),
                        v2.clone(),
                    ],
                ),
            );
        }
        ok(
            url,
            &["fleet", "ingest", "--receipts", last.to_str().unwrap()],
        );
        let gate = stdout_json(&ok(
            url,
            &["fleet", "gate", "--deployment", "rollout-v2", "--json"],
        ));
        assert_eq!(gate["release"], true, "{gate:#}");
        assert_eq!(gate["ready"], 50);

        // What the operator asks.
        let image = stdout_json(&ok(
            url,
            &["fleet", "status", "--image", "edge/app:v2", "--json"],
        ));
        assert_eq!(image["devices"].as_array().unwrap().len(), 50);
        let by = stdout_json(&ok(url, &["fleet", "status", "--by-orderer", "--json"]));
        let row = by["orderers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["ordered_by"] == "CHG-1001")
            .unwrap();
        assert_eq!(row["applied"], 40, "{by:#}");
        assert_eq!(row["deployments"], json!(["rollout-v2"]));
        let svg = w.join("transfers.svg");
        let t = stdout_json(&ok(
            url,
            &[
                "fleet",
                "status",
                "--transfers",
                "--svg",
                svg.to_str().unwrap(),
                "--json",
            ],
        ));
        assert_eq!(t["transfers"].as_array().unwrap().len(), 40);
        let picture = std::fs::read_to_string(&svg).unwrap();
        assert!(
            picture.starts_with("<svg") && picture.contains("applied"),
            "{picture}"
        );
        let failed_day = sideload_fleet::chart::date(t1 / 86_400);
        assert!(
            picture.contains(&format!("{failed_day}: 5 failed or refused")),
            "{picture}"
        );

        // The manifest for release: never pull, pinned to what the devices hold.
        let released = w.join("deployment.release.json");
        let r = stdout_json(&ok(
            url,
            &[
                "fleet",
                "rewrite",
                manifest.to_str().unwrap(),
                "--pin",
                "-o",
                released.to_str().unwrap(),
                "--json",
            ],
        ));
        let text = std::fs::read_to_string(&released).unwrap();
        assert_eq!(
            text.matches("\"imagePullPolicy\": \"never\"").count(),
            3,
            "{text}"
        );
        let digest = v2["manifest_digest"].as_str().unwrap();
        assert!(
            text.contains(&format!("{}/edge/app:v2@{digest}", cloud.host)),
            "{text}"
        );
        assert!(text.contains("INTO $upstream"), "routes untouched");
        assert!(!r["changes"].as_array().unwrap().is_empty());
        // The pinned manifest gates the same.
        let gate = sideload(
            url,
            &[
                "fleet",
                "gate",
                released.to_str().unwrap(),
                "--deployment",
                "rollout-v2",
            ],
        );
        assert_eq!(
            gate.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&gate.stdout)
        );
    }
}

/// A Kubernetes workload file, through the same commands as an IoT Edge manifest: rewritten
/// (never pull, pinned to what the nodes hold, renamed for the device-local registry, comments
/// and the Service kept), registered as a deployment set, and gated.
#[test]
fn a_kubernetes_manifest_is_rewritten_and_gated() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let db = w.join("fleet.db");
    let db = db.to_str().unwrap();
    let app = other("edge/app", "v2", 1);
    let digest = app["manifest_digest"].as_str().unwrap().to_string();
    let inv = w.join("node-1.json");
    write_json(&inv, &inventory("node-1", 100, vec![app]));
    let inv2 = w.join("node-2.json");
    write_json(&inv2, &inventory("node-2", 100, vec![]));
    ok(
        db,
        &[
            "fleet",
            "ingest",
            "--inventory",
            inv.to_str().unwrap(),
            "--inventory",
            inv2.to_str().unwrap(),
        ],
    );

    let manifest = w.join("app.yml");
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: app}\n---\n# the app\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app\nspec:\n  template:\n    spec:\n      containers:\n        - name: app\n          image: \"registry.example/edge/app:v2\"  # from CI\n          imagePullPolicy: IfNotPresent\n";
    std::fs::write(&manifest, text).unwrap();
    let released = w.join("app.release.yml");
    let r = stdout_json(&ok(
        db,
        &[
            "fleet",
            "rewrite",
            manifest.to_str().unwrap(),
            "--pin",
            "--device-registry",
            "127.0.0.1:5000",
            "-o",
            released.to_str().unwrap(),
            "--json",
        ],
    ));
    assert_eq!(r["kind"], "kubernetes", "{r:#}");
    assert_eq!(r["changes"][0]["workload"], "Deployment/app", "{r:#}");
    let out = std::fs::read_to_string(&released).unwrap();
    assert_eq!(
        out,
        text.replace("IfNotPresent", "Never").replace(
            "registry.example/edge/app:v2",
            &format!("127.0.0.1:5000/edge/app:v2@{digest}")
        )
    );

    // A device registry without --pin is refused by the arguments.
    let bad = sideload(
        db,
        &[
            "fleet",
            "rewrite",
            manifest.to_str().unwrap(),
            "--device-registry",
            "127.0.0.1:5000",
        ],
    );
    assert!(!bad.status.success());

    ok(
        db,
        &[
            "fleet",
            "deployment",
            "k8s",
            "--manifest",
            released.to_str().unwrap(),
            "--device",
            "node-1",
            "--device",
            "node-2",
        ],
    );
    let gate = sideload(db, &["fleet", "gate", "--deployment", "k8s", "--json"]);
    assert_eq!(gate.status.code(), Some(4));
    let g = stdout_json(&gate);
    assert_eq!(g["missing"][0]["device"], "node-2", "{g:#}");
    let gate = sideload(
        db,
        &[
            "fleet",
            "gate",
            released.to_str().unwrap(),
            "--device",
            "node-1",
        ],
    );
    assert_eq!(
        gate.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&gate.stdout),
        String::from_utf8_lossy(&gate.stderr)
    );
}

#[test]
fn a_real_device_reports_over_its_api_and_takes_its_planned_bundle() {
    let f = fixture();
    let cloud = cloud_registry();
    let device_registry = Registry::start();
    support::seed_v1(&device_registry);
    let daemon = Daemon::start(&device_registry, DaemonOptions::default());
    let work = tempfile::tempdir().unwrap();
    let db = work.path().join("fleet.db");
    let db = db.to_str().unwrap();
    let device_url = format!("http://{}", daemon.addr);
    ok(db, &["fleet", "ingest", "--device-url", &device_url]);
    let overview = stdout_json(&ok(db, &["fleet", "status", "--json"]));
    assert_eq!(overview["devices"], 1);
    let inventory = daemon.get_json("/sideload/v1/inventory");
    let id = inventory["device"].as_str().unwrap();

    let out = work.path().join("out");
    let target = format!("docker://{}/edge/app:v2", cloud.host);
    let plan = stdout_json(&ok(
        db,
        &[
            "fleet",
            "plan",
            &target,
            "--device",
            id,
            "--bases-registry",
            &cloud.host,
            "--insecure-registry",
            &cloud.host,
            "--build",
            out.to_str().unwrap(),
            "--json",
        ],
    ));
    let b = &plan["bundles"][0];
    assert_eq!(b["bases"].as_array().unwrap().len(), 1, "{plan:#}");
    let file = PathBuf::from(b["file"].as_str().unwrap());
    // Signed offline: the statement file next to the bundle is what crosses the air gap.
    let statement = std::fs::read(file.with_extension("statement.json")).unwrap();
    sideload_bundle::attach_signatures(
        &file,
        &[f.key.sign_statement(&statement)],
        &sideload_bundle::Limits::default(),
    )
    .unwrap();
    let pushed = Command::new(env!("CARGO_BIN_EXE_sideload"))
        .args([
            "push",
            file.to_str().unwrap(),
            "--to",
            &device_url,
            "--wait",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    ok(db, &["fleet", "ingest", "--device-url", &device_url]);
    let dev = stdout_json(&ok(db, &["fleet", "status", "--device", id, "--json"]));
    assert_eq!(dev["transfers"][0]["state"], "applied", "{dev:#}");
    assert_eq!(dev["transfers"][0]["bundle_id"], b["bundle_id"]);
    assert!(
        dev["device"]["images"].to_string().contains("\"v2\""),
        "{dev:#}"
    );
    // An unreachable device is a clear error, and the ledger keeps what it had.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gone_url = format!("http://{closed}");
    let gone = sideload(db, &["fleet", "ingest", "--device-url", &gone_url]);
    assert_eq!(gone.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert!(
        stderr.contains(&format!("cannot reach {gone_url}")),
        "{stderr}"
    );
    let dev_after = stdout_json(&ok(db, &["fleet", "status", "--device", id, "--json"]));
    assert_eq!(dev_after, dev);
}
