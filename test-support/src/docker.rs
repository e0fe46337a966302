//! A real Docker engine for tests: Debian's `dockerd` (moby, the engine IoT Edge runs) with its
//! own data root, exec root, socket and pidfile in a temp dir, `--iptables=false
//! --bridge=none` (no host networking touched; containers run with `--network none`), and the
//! containerd it starts for itself. Stopped by PID on drop (SIGTERM, which also stops its
//! containerd; SIGKILL after a grace period), then every mount left under its roots is
//! unmounted and the directory removed.
//!
//! Also what edgeAgent does with a module when it may not pull: [`Dockerd::run_module`]
//! creates the container through the Engine API with `Image` exactly as the deployment
//! writes it and the module's `createOptions`, starts it, waits, and returns its output. No
//! pull is ever asked for. Needs root (dockerd does) and `curl` (the Engine API over the unix
//! socket, as the agent speaks it); a missing tool fails the test, naming the package.

#![allow(clippy::disallowed_methods)] // a test harness reads its environment
#![allow(dead_code)]

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How long dockerd may take to answer `/_ping`.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A dockerd we started.
pub struct Dockerd {
    child: Child,
    dir: tempfile::TempDir,
    /// The Engine API socket.
    pub socket: PathBuf,
}

/// Fails the test unless `tool` is on the PATH.
pub fn require(tool: &str, package: &str) {
    let found = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| dir.join(tool).is_file())
            || ["/usr/sbin", "/sbin"]
                .iter()
                .any(|d| Path::new(d).join(tool).is_file())
    });
    assert!(
        found,
        "{tool} is not installed: apt-get install {package} (scripts/install-deps.sh does)"
    );
}

impl Dockerd {
    /// Starts dockerd in a new temp dir and waits until it answers.
    pub fn start() -> Dockerd {
        require("dockerd", "docker.io");
        require("curl", "curl");
        assert!(
            nix_is_root(),
            "dockerd needs root; run the tests as root (CI does)"
        );
        // Short path: the socket path must fit in sun_path (108 bytes) with containerd's own
        // sockets under the exec root.
        let dir = tempfile::Builder::new()
            .prefix("dk-")
            .tempdir_in("/tmp")
            .unwrap();
        let socket = dir.path().join("docker.sock");
        let log = fs::File::create(dir.path().join("dockerd.log")).unwrap();
        let child = Command::new(dockerd_path())
            .arg("--data-root")
            .arg(dir.path().join("data"))
            .arg("--exec-root")
            .arg(dir.path().join("exec"))
            .arg("--pidfile")
            .arg(dir.path().join("docker.pid"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
                "--bridge=none",
                "--userland-proxy=false",
            ])
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        let d = Dockerd { child, dir, socket };
        let deadline = Instant::now() + START_TIMEOUT;
        while d.api("GET", "/_ping", None).0 != 200 {
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer within {START_TIMEOUT:?}; log:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }

    /// dockerd's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// One Engine API call over the socket with curl: (HTTP status, body as JSON or a string).
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "120",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ])
        .arg("--unix-socket")
        .arg(&self.socket);
        if let Some(body) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
                .arg(body.to_string());
        }
        let out = cmd.arg(format!("http://docker{path}")).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        let value = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.into()));
        (code.trim().parse().unwrap_or(0), value)
    }

    /// Whether the engine resolves `reference` (`GET /images/{ref}/json`), and to which ID.
    pub fn image_id(&self, reference: &str) -> Option<String> {
        match self.api("GET", &format!("/images/{reference}/json"), None) {
            (200, v) => v["Id"].as_str().map(str::to_owned),
            _ => None,
        }
    }

    /// Removes one name of an image (`DELETE /images/{ref}`: the image goes when its last
    /// name does). For tests that take an image away from the agent.
    pub fn untag(&self, reference: &str) {
        let (status, body) = self.api("DELETE", &format!("/images/{reference}"), None);
        assert_eq!(status, 200, "removing {reference}: {body}");
    }

    /// Adds a name to an image, as an installer would for the edge runtime's own images.
    pub fn tag(&self, image: &str, repository: &str, tag: &str) {
        let (status, body) = self.api(
            "POST",
            &format!("/images/{image}/tag?repo={repository}&tag={tag}"),
            None,
        );
        assert_eq!(status, 201, "tagging {image}: {body}");
    }

    /// What edgeAgent does for a module with `imagePullPolicy: never`: create the container
    /// with `Image` exactly as written and the module's `createOptions` (a JSON string in the
    /// manifest), with no network (this machine has none to give), start it, wait for it to
    /// end, and return its output. `Err` with the engine's answer when create or start fails,
    /// which is what the agent would report.
    pub fn run_module(
        &self,
        name: &str,
        image: &str,
        create_options: &str,
    ) -> Result<String, String> {
        let mut body: Value = if create_options.is_empty() {
            json!({})
        } else {
            serde_json::from_str(create_options).map_err(|e| format!("createOptions: {e}"))?
        };
        body["Image"] = json!(image);
        body["HostConfig"]["NetworkMode"] = json!("none");
        let (status, created) = self.api(
            "POST",
            &format!("/containers/create?name={name}"),
            Some(&body),
        );
        if status != 201 {
            return Err(format!("create {name} from {image}: {status} {created}"));
        }
        let id = created["Id"].as_str().unwrap().to_owned();
        let result = (|| {
            let (status, started) = self.api("POST", &format!("/containers/{id}/start"), None);
            if status != 204 {
                return Err(format!("start {name}: {status} {started}"));
            }
            let (status, waited) = self.api("POST", &format!("/containers/{id}/wait"), None);
            if status != 200 {
                return Err(format!("wait {name}: {status} {waited}"));
            }
            let logs = Command::new("curl")
                .args(["-sS", "--max-time", "30", "--output", "-"])
                .arg("--unix-socket")
                .arg(&self.socket)
                .arg(format!(
                    "http://docker/containers/{id}/logs?stdout=true&stderr=true"
                ))
                .output()
                .unwrap();
            let text = demux(&logs.stdout);
            match waited["StatusCode"].as_i64() {
                Some(0) => Ok(text),
                code => Err(format!("{name} exited with {code:?}: {text}")),
            }
        })();
        self.api("DELETE", &format!("/containers/{id}?force=true"), None);
        result
    }
}

/// The text of a non-TTY container's log stream: 8-byte frame headers (stream, 0, 0, 0, size
/// as big-endian u32) before each chunk.
fn demux(mut raw: &[u8]) -> String {
    let mut out = Vec::new();
    while raw.len() >= 8 {
        let size = u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]) as usize;
        let end = (8 + size).min(raw.len());
        out.extend_from_slice(&raw[8..end]);
        raw = &raw[end..];
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn dockerd_path() -> PathBuf {
    ["/usr/sbin/dockerd", "/usr/bin/dockerd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("dockerd"))
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline && !matches!(self.child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(100));
        }
        // Whatever is left of its process group (its containerd, shims).
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pid}")])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
        unmount_below(self.dir.path());
    }
}

/// Unmounts every mount point under `dir`, deepest first (overlay layers, the exec root's
/// netns and shm mounts), so the temp dir can be removed.
fn unmount_below(dir: &Path) {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(1))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount").args(["-l", p]).status();
    }
}
