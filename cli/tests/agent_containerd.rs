//! The product's last promise on a Kubernetes edge node: after a bundle is applied, the image
//! reference of the released Deployment resolves in containerd's `k8s.io` namespace as the
//! kubelet looks it up with `imagePullPolicy: Never`, and the image runs.
//!
//! Everything is real: `docker-registry` and the registry plugin on loopback, Debian's
//! containerd (own root, state and socket) as the plugin's `[engine] kind = "containerd"`, with
//! a `hosts.toml` that names the plugin as the only mirror of the made-up upstream
//! `registry.example` (which does not resolve: nothing but the plugin is reachable), the fleet
//! ledger fed by the device's inventory API, and `sideload fleet rewrite` / `gate` on a
//! Kubernetes manifest as a release pipeline runs them. The kubelet's part is the CRI
//! `ImageStatus` of the reference exactly as the pod spec writes it; then `ctr run` starts the
//! image in namespace `k8s.io` by its upstream digest name.
//!
//! Needs root, `containerd`, `runc`, `docker-registry` and `skopeo`; a missing tool fails.

mod agent_support;
use sideload_test_support::containerd as containerd_support;
use sideload_test_support::registry as support;

use std::path::{Path, PathBuf};

use agent_support::{apply, free_port, gate, ingest, ok, UPSTREAM};
use containerd_support::{require, start_containerd, Containerd};
use serde_json::Value;
use support::{bundle, BundleSpec, Daemon, DaemonOptions, Registry};

/// A Deployment as a team writes it: comments, a Service beside it, the image by its upstream
/// name and tag.
fn deployment(tag: &str) -> String {
    format!(
        "# Telemetry collector for the k3s edge nodes.\n\
         apiVersion: v1\n\
         kind: Service\n\
         metadata:\n  name: telemetry\n\
         spec:\n  selector:\n    app: telemetry\n  ports:\n    - port: 8080\n\
         ---\n\
         apiVersion: apps/v1\n\
         kind: Deployment\n\
         metadata:\n  name: telemetry\n\
         spec:\n\
         \x20 replicas: 1\n\
         \x20 selector:\n    matchLabels:\n      app: telemetry\n\
         \x20 template:\n\
         \x20   metadata:\n      labels:\n        app: telemetry\n\
         \x20   spec:\n\
         \x20     containers:\n\
         \x20       - name: telemetry\n\
         \x20         image: {UPSTREAM}/edge/app:{tag}  # bumped by CI\n\
         \x20         env:\n\
         \x20           - name: SITE\n\
         \x20             value: ship-17\n"
    )
}

/// The `image:` of the released file's container, as written.
fn image_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.contains("imagePullPolicy: Never"),
        "{path:?} is not released for a device that may not pull:\n{text}"
    );
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("image:"))
        .unwrap();
    let value = line.trim_start().trim_start_matches("image:").trim();
    value
        .split('#')
        .next()
        .unwrap()
        .trim()
        .trim_matches('"')
        .to_owned()
}

/// `fleet rewrite --pin` of `NAME.yaml` (upstream names kept: containerd holds them) and the
/// gate's exit code and report on the result.
fn release(db: &str, work: &Path, name: &str) -> (PathBuf, i32, Value) {
    let source = work.join(format!("{name}.yaml"));
    let released = work.join(format!("{name}.release.yaml"));
    ok(
        db,
        &[
            "fleet",
            "rewrite",
            source.to_str().unwrap(),
            "--pin",
            "-o",
            released.to_str().unwrap(),
        ],
    );
    let (code, report) = gate(db, &released);
    (released, code, report)
}

/// What the kubelet does with `imagePullPolicy: Never`: asks CRI for the image exactly as the
/// pod spec writes it; then the image runs in `k8s.io` by its `repo@digest` record.
async fn kubelet_runs(containerd: &Containerd, image: &str, name: &str) -> String {
    let cri = containerd.cri(60);
    let found = cri
        .status(image)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("CRI does not resolve {image}"));
    let by_digest = found
        .repo_digests
        .iter()
        .find(|r| r.starts_with(UPSTREAM))
        .unwrap_or_else(|| panic!("{found:?} has no {UPSTREAM} digest name"))
        .clone();
    let out = containerd.ctr(&[
        "-n",
        "k8s.io",
        "run",
        "--rm",
        "--net-host",
        &by_digest,
        name,
    ]);
    assert!(
        out.status.success(),
        "ctr run {by_digest}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        containerd.log_tail()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_on_containerd_finds_and_runs_the_released_image_with_pull_never() {
    require("runc", "runc");
    require("ctr", "containerd");
    let registry = Registry::start();
    let port = free_port();
    let scratch = tempfile::Builder::new()
        .prefix("agent-ctd-")
        .tempdir_in("/tmp")
        .unwrap();
    // containerd's only way to registry.example is the plugin.
    let plugin_url = format!("http://127.0.0.1:{port}");
    let containerd = start_containerd(scratch.path(), &[(UPSTREAM, &plugin_url)]).await;
    // The hosts.toml we ship, with the plugin's test port: it points `server` at the plugin
    // too, so containerd never tries the upstream. containerd reads it at every pull.
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../systemd/engines/containerd-certs.d/registry.example/hosts.toml"
    ))
    .unwrap()
    .replace("127.0.0.1:5000", &format!("127.0.0.1:{port}"));
    std::fs::write(
        containerd
            .dir
            .join("certs.d")
            .join(UPSTREAM)
            .join("hosts.toml"),
        shipped,
    )
    .unwrap();
    let daemon = Daemon::start(
        &registry,
        DaemonOptions {
            extra: format!(
                "[engine]\nkind = \"containerd\"\nsocket = \"{}\"\n\
                 upstream_hosts = [\"{UPSTREAM}\"]\ntimeout_secs = 120\n",
                containerd.socket.display()
            ),
            listen_port: Some(port),
            ..Default::default()
        },
    );
    let work = tempfile::tempdir().unwrap();
    let db = work.path().join("fleet.db");
    let db = db.to_str().unwrap();
    std::fs::write(work.path().join("v1.yaml"), deployment("v1")).unwrap();
    std::fs::write(work.path().join("v2.yaml"), deployment("v2")).unwrap();

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
    ingest(db, &daemon);
    let (released, code, report) = release(db, work.path(), "v1");
    assert_eq!(code, 0, "{report:#}");
    let image = image_of(&released);
    assert_eq!(image, format!("{UPSTREAM}/edge/app:v1@{v1_digest}"));
    let out = kubelet_runs(&containerd, &image, "telemetry-v1").await;
    assert_eq!(out.trim(), "edge app 1.0: telemetry collector");

    let (_, code, _) = release(db, work.path(), "v2");
    assert_eq!(code, 4, "v2 is not on the device yet");
    let v2 = apply(&daemon, &bundle(BundleSpec::default()));
    let v2_digest = v2["manifest_digest"].as_str().unwrap().to_owned();
    ingest(db, &daemon);
    let (released, code, report) = release(db, work.path(), "v2");
    assert_eq!(code, 0, "{report:#}");
    let image = image_of(&released);
    assert_eq!(image, format!("{UPSTREAM}/edge/app:v2@{v2_digest}"));
    let out = kubelet_runs(&containerd, &image, "telemetry-v2").await;
    assert_eq!(out.trim(), "edge app 1.1: telemetry collector");
    // The tag form the unpinned manifest writes resolves too.
    let cri = containerd.cri(60);
    assert!(cri
        .status(&format!("{UPSTREAM}/edge/app:v2"))
        .await
        .unwrap()
        .is_some());

    // Taken out of containerd, the release is held though the registry still has it.
    cri.remove(&format!("{UPSTREAM}/edge/app@{v2_digest}"))
        .await
        .unwrap();
    ingest(db, &daemon);
    let (code, report) = gate(db, &released);
    assert_eq!(code, 4, "{report:#}");
    assert_eq!(
        report["missing"][0]["checked"], "containerd engine",
        "{report:#}"
    );
}
