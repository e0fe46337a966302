//! Shared helpers for integration tests: real peers, no mocks.
//!
//! - [`Registry`]: the distribution registry (`docker-registry`, Debian package
//!   `docker-registry`) on 127.0.0.1 and a free port, optionally with htpasswd basic auth;
//!   killed when dropped.
//! - [`skopeo`]: runs `skopeo` (Debian package `skopeo`) and fails the test with its output.
//! - [`sample_layers`] / [`build_sample_image`]: small images made from real files.
//! - [`image_from_tar`]: a one-layer image whose layer blob is exactly the given tar.
//!
//! Nothing here talks to anything but 127.0.0.1, and no port is fixed.

#![allow(clippy::disallowed_methods)] // a test harness reads its environment
#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sideload_bundle::image::from_files::{build_image, ConfigExtras};
use sideload_signing::Digest;
use tempfile::TempDir;

/// Fails the test with a clear message when `tool` is not installed.
pub fn require_tool(tool: &str, debian_package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "this test needs `{tool}`: install the Debian package `{debian_package}` (apt-get install {debian_package})"
    );
}

/// Runs `skopeo --insecure-policy ARGS...` and returns its stdout; fails the test on error.
pub fn skopeo(args: &[&str]) -> String {
    require_tool("skopeo", "skopeo");
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Like [`skopeo`], but returns the failure instead of failing the test.
pub fn try_skopeo(args: &[&str]) -> Result<String, String> {
    require_tool("skopeo", "skopeo");
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run skopeo");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A distribution registry on 127.0.0.1, stopped (killed) on drop.
pub struct Registry {
    child: Child,
    dir: TempDir,
    /// `127.0.0.1:PORT`: the registry part of references, and what to list as insecure.
    pub host: String,
    /// The port.
    pub port: u16,
}

/// Credentials a [`Registry`] accepts.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free loopback port")
}

/// Asks `GET /v2/` and returns the HTTP status, if something answers.
fn probe(port: u16) -> Option<u16> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
            .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let line = std::str::from_utf8(&buf[..n]).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl Registry {
    /// Starts an anonymous registry.
    pub fn start() -> Registry {
        Registry::start_inner(None)
    }

    /// Starts a registry that requires basic auth with `credentials` (htpasswd, bcrypt).
    pub fn start_with_basic_auth(credentials: &Credentials) -> Registry {
        Registry::start_inner(Some(credentials))
    }

    fn start_inner(credentials: Option<&Credentials>) -> Registry {
        require_tool("docker-registry", "docker-registry");
        let mut last_log = String::new();
        // The port is free when probed but could be taken before the registry binds it: retry.
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("registry-")
                .tempdir()
                .expect("tempdir");
            let port = free_port();
            let mut config = format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: sideload-test-secret\n",
                data = dir.path().join("data").display(),
            );
            if let Some(c) = credentials {
                let hash = bcrypt::hash_with_result(&c.password, 4)
                    .expect("bcrypt")
                    .format_for_version(bcrypt::Version::TwoY);
                let htpasswd = dir.path().join("htpasswd");
                fs::write(&htpasswd, format!("{}:{hash}\n", c.username)).expect("write htpasswd");
                config.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: sideload-test\n    path: {}\n",
                    htpasswd.display()
                ));
            }
            let config_path = dir.path().join("config.yml");
            fs::write(&config_path, config).expect("write registry config");
            let log = fs::File::create(dir.path().join("registry.log")).expect("log file");
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .env_remove("REGISTRY_HTTP_ADDR")
                .spawn()
                .expect("start docker-registry");
            let mut registry = Registry {
                child,
                host: format!("127.0.0.1:{port}"),
                port,
                dir,
            };
            if registry.wait_ready(Duration::from_secs(30)) {
                return registry;
            }
            last_log = registry.log();
            // Dropping kills it; try another port.
        }
        panic!("docker-registry did not start; last log:\n{last_log}");
    }

    fn wait_ready(&mut self, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if matches!(probe(self.port), Some(200 | 401)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// What the registry logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `docker://127.0.0.1:PORT/{repo_and_tag}`.
    pub fn docker_ref(&self, repo_and_tag: &str) -> String {
        format!("docker://{}/{repo_and_tag}", self.host)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies the first `n` readable files of `from` into `to` (flat), returning their new paths.
fn copy_some(from: &Path, to: &Path, n: usize) -> Vec<PathBuf> {
    fs::create_dir_all(to).unwrap();
    let mut names: Vec<_> = fs::read_dir(from)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    names.sort();
    let mut copied = Vec::new();
    for src in names {
        if copied.len() == n {
            break;
        }
        let Ok(meta) = fs::metadata(&src) else {
            continue;
        };
        if !meta.is_file() || meta.len() > 256 * 1024 {
            continue;
        }
        let dst = to.join(src.file_name().unwrap());
        if fs::copy(&src, &dst).is_ok() {
            copied.push(dst);
        }
    }
    copied
}

/// Two layer directories of real files: licenses from `/usr/share/common-licenses`, and a
/// few files from `/etc` with a symlink and an executable. Returns `(tempdir, [layer dirs])`.
pub fn sample_layers() -> (TempDir, Vec<PathBuf>) {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::Builder::new()
        .prefix("layers-")
        .tempdir()
        .unwrap();
    let base = root.path().join("base");
    let licenses = copy_some(
        Path::new("/usr/share/common-licenses"),
        &base.join("usr/share/common-licenses"),
        4,
    );
    assert!(
        !licenses.is_empty(),
        "no files in /usr/share/common-licenses to build a test image from"
    );
    fs::create_dir_all(base.join("bin")).unwrap();
    fs::write(
        base.join("bin/hello"),
        b"#!/bin/sh\necho hello from sideload\n",
    )
    .unwrap();
    fs::set_permissions(base.join("bin/hello"), fs::Permissions::from_mode(0o755)).unwrap();

    let app = root.path().join("app");
    let etc = app.join("etc");
    fs::create_dir_all(&etc).unwrap();
    for name in ["services", "protocols", "debian_version", "hostname"] {
        let _ = fs::copy(Path::new("/etc").join(name), etc.join(name));
    }
    fs::write(etc.join("app.conf"), b"greeting = hello\n").unwrap();
    std::os::unix::fs::symlink("app.conf", etc.join("app.conf.link")).unwrap();
    (root, vec![base, app])
}

/// Builds the sample image into the OCI layout `layout` under `ref_name`; returns the manifest
/// digest and the layer directories' owner (keep it alive while comparing files).
pub fn build_sample_image(layout: &Path, ref_name: &str) -> (Digest, TempDir, Vec<PathBuf>) {
    let (root, dirs) = sample_layers();
    let refs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
    let extras = ConfigExtras {
        cmd: vec!["/bin/hello".into()],
        ..ConfigExtras::default()
    };
    let digest = build_image(layout, ref_name, &refs, &extras).expect("build sample image");
    (digest, root, dirs)
}

/// Reads a layer stream to its end, returning the number of bytes (the stream verifies itself).
pub fn drain(mut r: impl Read) -> std::io::Result<u64> {
    std::io::copy(&mut r, &mut std::io::sink())
}

/// Writes a one-layer OCI image at `layout` whose layer blob is exactly `tar` (uncompressed,
/// so its digest is the diff_id), tagged `latest`. Returns the diff_id.
pub fn image_from_tar(layout: &Path, tar: &[u8]) -> Digest {
    use sideload_bundle::image::spec::Descriptor;
    use sideload_bundle::image::write::OciLayoutWriter;
    let mut w = OciLayoutWriter::create(layout).unwrap();
    let (diff_id, size) = w.put_blob_bytes(tar).unwrap();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))
    .unwrap();
    let (config_digest, config_size) = w.put_blob_bytes(&config).unwrap();
    let manifest = sideload_bundle::manifest::build_manifest(
        &config_digest,
        config_size,
        vec![Descriptor::new(
            "application/vnd.oci.image.layer.v1.tar",
            diff_id.clone(),
            size,
        )],
    );
    w.add_manifest(
        &manifest,
        "application/vnd.oci.image.manifest.v1+json",
        Some("latest"),
        None,
    )
    .unwrap();
    w.finish().unwrap();
    diff_id
}
