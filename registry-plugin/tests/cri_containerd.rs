//! `cri::Cri` against real parts: the distribution registry (`docker-registry`) holding the demo
//! image `edge/app:v1` (copied in with `skopeo`), and a real containerd whose CRI registry
//! config mirrors the made-up upstream host `registry.example` to that registry. Nothing is
//! mocked: this is the path a Kubernetes node takes, where the kubelet asks containerd's CRI
//! image service for `registry.example/edge/app:v1` and containerd fetches from the mirror.
//!
//! Everything runs from temp dirs: the registry on a free loopback port (`support::Registry`),
//! containerd with its own root, state and socket (`containerd_support`). Both are stopped on
//! drop, also when a test panics.
//!
//! Needs root (containerd's overlayfs snapshotter, runc), and `containerd`, `runc`, `skopeo`,
//! `docker-registry` (Debian packages of the same names). A missing tool fails the test with
//! the package to install; it never skips.

use sideload_test_support::containerd as containerd_support;
use sideload_test_support::registry as support;

use std::time::{Duration, Instant};

use containerd_support::{require, start_containerd};
use sideload_registry_plugin::cri::{Cri, CriConfig, CriError};
use support::{seed_v1, skopeo, Registry};

/// The upstream host the pod specs name; it does not exist, so only the mirror can serve it.
const UPSTREAM: &str = "registry.example";

/// A port-qualified upstream: its `hosts.toml` lives in `registry.example_5000_/`.
const UPSTREAM_WITH_PORT: &str = "registry.example:5000";

/// The manifest digest and the config digest (= containerd's image ID) of `edge/app:v1` in
/// `registry`, as skopeo reads them from the registry.
fn digests(registry: &Registry) -> (String, String) {
    let image = format!("docker://{}/edge/app:v1", registry.host);
    let inspect: serde_json::Value =
        serde_json::from_str(&skopeo(&["inspect", "--tls-verify=false", &image])).unwrap();
    let manifest_digest = inspect["Digest"].as_str().expect("Digest").to_owned();
    let raw: serde_json::Value =
        serde_json::from_str(&skopeo(&["inspect", "--tls-verify=false", "--raw", &image])).unwrap();
    let config_digest = raw["config"]["digest"]
        .as_str()
        .expect("config digest")
        .to_owned();
    (manifest_digest, config_digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_pulls_through_the_mirror_and_records_the_upstream_names() {
    require("runc", "runc");
    require("ctr", "containerd");
    let registry = Registry::start();
    seed_v1(&registry);
    let (manifest_digest, image_id) = digests(&registry);
    let scratch = tempfile::Builder::new()
        .prefix("cri-containerd-")
        .tempdir()
        .unwrap();
    let mirror = format!("http://{}", registry.host);
    let containerd = start_containerd(
        scratch.path(),
        &[(UPSTREAM, &mirror), (UPSTREAM_WITH_PORT, &mirror)],
    )
    .await;
    let cri = containerd.cri(120);
    let context = || format!("containerd log:\n{}", containerd.log_tail());

    let version = cri.version().await.unwrap();
    assert!(version.starts_with("containerd "), "{version}");
    eprintln!("runtime: {version}");

    let tag = format!("{UPSTREAM}/edge/app:v1");
    let by_digest = format!("{UPSTREAM}/edge/app@{manifest_digest}");
    assert_eq!(cri.status(&tag).await.unwrap(), None, "nothing pulled yet");

    let started = Instant::now();
    let pulled = cri
        .pull(&tag)
        .await
        .unwrap_or_else(|e| panic!("{e}\nadvice: {}\n{}", e.advice(), context()));
    eprintln!("pull of {tag} took {:?}", started.elapsed());
    assert_eq!(pulled, image_id, "PullImage answers the image ID");

    // The kubelet's three ways to name the image all resolve to it.
    for reference in [tag.as_str(), by_digest.as_str(), image_id.as_str()] {
        let image = cri
            .status(reference)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("containerd does not know {reference}\n{}", context()));
        assert_eq!(image.id, image_id, "{reference}");
        assert_eq!(image.repo_tags, vec![tag.clone()], "{reference}");
        assert_eq!(image.repo_digests, vec![by_digest.clone()], "{reference}");
    }
    // `name:tag@digest` (what some manifests pin): containerd resolves it by the digest.
    let pinned = format!("{UPSTREAM}/edge/app:v1@{manifest_digest}");
    let image = cri.status(&pinned).await.unwrap();
    eprintln!("status of {pinned}: {image:?}");
    assert_eq!(image.map(|i| i.id), Some(image_id.clone()), "{pinned}");

    // Names containerd does not know.
    for unknown in [
        format!("{UPSTREAM}/edge/app:v2"),
        "registry.example/edge/other:v1".to_owned(),
        format!("sha256:{}", "0".repeat(64)),
    ] {
        assert_eq!(cri.status(&unknown).await.unwrap(), None, "{unknown}");
    }

    // A tag the mirror lacks: a clear error naming the reference. containerd asks the mirror,
    // gets 404, falls back to the upstream itself (`server` in hosts.toml), which does not
    // resolve here, and reports that last failure.
    let missing = format!("{UPSTREAM}/edge/app:v9");
    let e = cri.pull(&missing).await.unwrap_err();
    eprintln!("pull of a missing tag: {e}\nadvice: {}", e.advice());
    assert!(matches!(e, CriError::Rpc { .. }), "{e:?}");
    assert!(e.to_string().contains(&missing), "{e}");
    assert!(
        e.advice()
            .contains("is the image stored in the local registry"),
        "{}",
        e.advice()
    );

    let listed = cri.list().await.unwrap();
    assert!(
        listed
            .iter()
            .any(|i| i.id == image_id && i.repo_tags.contains(&tag)),
        "{listed:?}"
    );

    // containerd fetched from the mirror, telling it the upstream host in `ns=` (so a mirror
    // serving several upstreams could tell them apart; the distribution registry ignores it).
    let log = containerd.log();
    for tag in ["v1", "v9"] {
        let url = format!(
            "{}/v2/edge/app/manifests/{tag}?ns={UPSTREAM}",
            registry.host
        );
        assert!(
            log.contains(&url),
            "containerd's log shows no request for {url}\n{}",
            context()
        );
    }

    // The image runs in namespace k8s.io, by its upstream digest reference, as a pod would
    // start it (host network: the test has no CNI), with its own entrypoint.
    let out = containerd.ctr(&[
        "-n",
        "k8s.io",
        "run",
        "--rm",
        "--net-host",
        &by_digest,
        "cri-containerd-test",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == "edge app 1.0: telemetry collector",
        "ctr run {by_digest} failed ({}): {stdout}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        context()
    );

    // The same image through the port-qualified upstream: one image, a second name.
    let with_port = format!("{UPSTREAM_WITH_PORT}/edge/app:v1");
    let pulled = cri
        .pull(&with_port)
        .await
        .unwrap_or_else(|e| panic!("{e}\nadvice: {}\n{}", e.advice(), context()));
    assert_eq!(pulled, image_id);
    let mut names = cri.status(&tag).await.unwrap().unwrap().repo_tags;
    names.sort();
    assert_eq!(names, vec![tag.clone(), with_port.clone()]);

    // Removal takes every name; removing again is no error (CRI's RemoveImage is idempotent).
    cri.remove(&tag).await.unwrap();
    for reference in [&tag, &by_digest, &image_id, &with_port] {
        assert_eq!(cri.status(reference).await.unwrap(), None, "{reference}");
    }
    cri.remove(&tag).await.unwrap();
}

#[tokio::test]
async fn a_containerd_that_is_not_there_is_named_quickly() {
    let scratch = tempfile::tempdir().unwrap();
    // No socket at all, and a socket file nobody listens on (containerd crashed).
    let missing = scratch.path().join("containerd.sock");
    let stale = scratch.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    for socket in [missing, stale] {
        let cri = Cri::new(CriConfig {
            socket: socket.clone(),
            timeout_secs: 600,
        });
        let started = Instant::now();
        let e = cri.pull("registry.example/edge/app:v1").await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "{e}");
        assert!(matches!(e, CriError::Connect { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains(&socket.display().to_string()), "{text}");
        assert!(text.contains("registry.example/edge/app:v1"), "{text}");
        assert!(e.advice().contains("containerd"), "{}", e.advice());
        let e = cri.version().await.unwrap_err();
        assert!(e.to_string().contains(&socket.display().to_string()), "{e}");
    }
}
