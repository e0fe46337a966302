//! `engine::Engine` against real parts: the distribution registry (`docker-registry`), a small
//! real image pushed into it with `skopeo`, and podman's Docker-compatible API
//! (`podman system service`). Nothing is mocked.
//!
//! Everything runs on loopback from a temp dir: the registry on a free port and podman isolated
//! from the machine's podman config and images, as `podman_support` starts it. Both servers are
//! stopped when the test's `Setup` is dropped, also when a test panics.
//!
//! Needs `podman`, `skopeo` and `docker-registry` (Debian packages of the same names). A missing
//! tool, or a podman that cannot start here, fails the test with the reason; it never skips.

mod podman_support;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use podman_support::{free_port, lists, require, start_podman, Scratch, Service, START_TIMEOUT};
use sideload_bundle::image::from_files::{build_image, ConfigExtras};
use sideload_registry_plugin::engine::{Engine, EngineConfig, EngineError};
use sideload_signing::{Digest, RepositoryName, Tag};

/// A registry holding `edge/app:v1` and a podman API service that may pull from it.
struct Setup {
    // Dropped in this order: servers first, then their files.
    podman: Service,
    _registry: Service,
    _dir: Scratch,
    /// `127.0.0.1:PORT` of the registry.
    registry: String,
    /// Manifest digest of `edge/app:v1` in the registry.
    digest: Digest,
    /// podman's Docker-compatible API socket.
    socket: PathBuf,
    /// A loopback address listed as insecure in podman's registries.conf where nothing listens.
    dead_registry: String,
}

impl Setup {
    async fn start() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        require("podman", "podman", dir.path());
        require("skopeo", "skopeo", dir.path());
        require("/usr/bin/docker-registry", "docker-registry", dir.path());
        let (registry_service, registry) = start_registry(dir.path()).await;
        let digest = push_image(dir.path(), &registry);
        // A second loopback port nobody listens on, listed as insecure too, so a pull from it
        // fails with "connection refused" rather than a TLS error.
        let dead = format!("127.0.0.1:{}", free_port());
        let (podman, socket) = start_podman(dir.path(), &[&registry, &dead]).await;
        Setup {
            podman,
            _registry: registry_service,
            _dir: Scratch(dir),
            registry,
            digest,
            socket,
            dead_registry: dead,
        }
    }

    fn engine(&self, pull_from: &str) -> Engine {
        Engine::new(EngineConfig {
            socket: self.socket.clone(),
            pull_from: pull_from.to_owned(),
            timeout_secs: 120,
        })
    }

    /// `error` with its advice and podman's log, for a failure message.
    fn explain(&self, error: &EngineError) -> String {
        format!(
            "{error}\nadvice: {}\npodman log:\n{}",
            error.advice(),
            self.podman.log_tail()
        )
    }
}

/// Starts the distribution registry on a free loopback port; returns it and `127.0.0.1:PORT`.
async fn start_registry(dir: &Path) -> (Service, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let storage = dir.join("registry-storage");
    fs::create_dir_all(&storage).unwrap();
    let config = dir.join("registry.yml");
    fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            storage.display()
        ),
    )
    .unwrap();
    let mut service = Service::spawn(
        "docker-registry",
        Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config),
        dir.join("registry.log"),
    );
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v2/");
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        service.check_alive();
        if let Ok(response) = client.get(&url).send().await {
            if response.status().is_success() {
                return (service, addr);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the registry did not answer GET {url} within {START_TIMEOUT:?}; its log:\n{}",
            service.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Builds a one-layer image with the project's image builder, copies it into the registry as
/// `edge/app:v1` with skopeo, and returns its manifest digest as the registry reports it.
fn push_image(dir: &Path, registry: &str) -> Digest {
    let layer = dir.join("layer");
    fs::create_dir_all(layer.join("opt/app")).unwrap();
    fs::write(layer.join("opt/app/app.conf"), "version = 1.0\n").unwrap();
    let layout = dir.join("app-v1");
    build_image(&layout, "v1", &[&layer], &ConfigExtras::default()).unwrap();
    let dest = format!("docker://{registry}/edge/app:v1");
    // skopeo's own home, so an unprivileged run leaves no cache in the user's home. (As root it
    // still updates /var/lib/containers/cache/blob-info-cache-v1.boltdb: containers/image
    // hard-codes that path for root.)
    let home = dir.join("skopeo-home");
    fs::create_dir_all(&home).unwrap();
    let skopeo = || {
        let mut command = Command::new("skopeo");
        command
            .env("HOME", &home)
            .env("XDG_DATA_HOME", home.join("data"))
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("XDG_RUNTIME_DIR", &home)
            .env("TMPDIR", &home);
        command
    };
    run(skopeo()
        .args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(&dest));
    let digest = run(skopeo().args([
        "inspect",
        "--tls-verify=false",
        "--format",
        "{{.Digest}}",
        &dest,
    ]));
    digest.trim().parse().unwrap()
}

/// Runs a command to completion; panics with its stderr when it fails.
fn run(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn repository() -> RepositoryName {
    "edge/app".parse().unwrap()
}

fn tags(names: &[&str]) -> Vec<Tag> {
    names.iter().map(|t| t.parse().unwrap()).collect()
}

#[tokio::test]
async fn load_pulls_by_digest_and_tags_under_the_manifest_names() {
    let setup = Setup::start().await;
    let engine = setup.engine(&setup.registry);
    assert_eq!(engine.inspect("edge/app:v1").await.unwrap(), None);

    let started = Instant::now();
    let id = engine
        .load(&repository(), &setup.digest, &tags(&["v1", "v1-copy"]))
        .await
        .unwrap_or_else(|e| panic!("{}", setup.explain(&e)));
    eprintln!("load took {:?}", started.elapsed());
    assert!(id.starts_with("sha256:"), "{id}");

    let copy = engine
        .inspect("edge/app:v1-copy")
        .await
        .unwrap()
        .expect("edge/app:v1-copy is in the engine");
    assert_eq!(copy.id, id);
    assert!(lists(&copy.repo_tags, "edge/app:v1-copy"), "{copy:?}");
    assert!(lists(&copy.repo_tags, "edge/app:v1"), "{copy:?}");
    let pulled_as = format!("{}/edge/app@{}", setup.registry, setup.digest);
    assert!(copy.repo_digests.contains(&pulled_as), "{copy:?}");

    let v1 = engine.inspect("edge/app:v1").await.unwrap().unwrap();
    assert_eq!(v1.id, id);
    let by_digest = engine.inspect(&pulled_as).await.unwrap().unwrap();
    assert_eq!(by_digest.id, id);
    assert_eq!(engine.inspect("edge/app:v2").await.unwrap(), None);

    // Loading again (a retried apply) changes nothing and gives the same ID.
    let again = engine
        .load(&repository(), &setup.digest, &tags(&["v1"]))
        .await
        .unwrap_or_else(|e| panic!("{}", setup.explain(&e)));
    assert_eq!(again, id);
}

#[tokio::test]
async fn a_failed_pull_names_the_image_and_the_engine_message() {
    let setup = Setup::start().await;

    // A digest the registry does not hold.
    let engine = setup.engine(&setup.registry);
    let missing = Digest::of_bytes(b"not in the registry");
    let e = engine
        .load(&repository(), &missing, &tags(&["v1"]))
        .await
        .expect_err("pulling a digest the registry lacks fails");
    let text = e.to_string();
    let image = format!("{}/edge/app@{missing}", setup.registry);
    assert!(
        matches!(&e, EngineError::PullFailed { image: i, .. } if *i == image),
        "{e:?}"
    );
    assert!(text.contains(&image), "{text}");
    assert!(text.contains("manifest unknown"), "{text}");
    assert!(text.contains(&setup.socket.display().to_string()), "{text}");
    assert!(e.advice().contains("does not hold"), "{}", e.advice());
    assert_eq!(engine.inspect("edge/app:v1").await.unwrap(), None);

    // A registry address where nothing listens.
    let dead = setup.dead_registry.clone();
    let engine = setup.engine(&dead);
    let started = Instant::now();
    let e = engine
        .load(&repository(), &setup.digest, &tags(&["v1"]))
        .await
        .expect_err("pulling from a closed port fails");
    eprintln!(
        "failed pull from a closed port took {:?}",
        started.elapsed()
    );
    let text = e.to_string();
    assert!(matches!(e, EngineError::PullFailed { .. }), "{e:?}");
    assert!(text.contains(&format!("{dead}/edge/app@")), "{text}");
    assert!(text.contains("connection refused"), "{text}");
    assert!(
        e.advice().contains("cannot reach pull_from"),
        "{}",
        e.advice()
    );
}

#[tokio::test]
async fn ping_on_a_missing_socket_says_which_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("no-engine.sock");
    let engine = Engine::new(EngineConfig {
        socket: socket.clone(),
        pull_from: "127.0.0.1:5000".to_owned(),
        timeout_secs: 5,
    });
    let e = engine.ping().await.expect_err("nothing listens there");
    assert!(
        matches!(&e, EngineError::Connect { source, .. } if source.kind() == io::ErrorKind::NotFound),
        "{e:?}"
    );
    assert!(e.to_string().contains(&socket.display().to_string()), "{e}");
    assert!(
        e.advice().contains("is the engine running"),
        "{}",
        e.advice()
    );
    let e = engine
        .load(&repository(), &Digest::of_bytes(b"x"), &tags(&["v1"]))
        .await
        .expect_err("nothing listens there");
    assert!(matches!(e, EngineError::Connect { .. }), "{e:?}");
}
