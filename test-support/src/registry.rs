//! Shared fixtures for the daemon's end-to-end tests: real demo images and signed bundles, a
//! real `docker-registry` on a free loopback port, the daemon as a child process (so tests can
//! kill it), and a tiny HTTP/1.1 client on raw sockets (so tests can cut a request halfway).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sideload_bundle::image::{open_image, ImageSource, OpenOptions};
use sideload_bundle::{BuildOptions, Limits, NoProgress};
use sideload_signing::{key_entry_toml, SigningKey, Statement};
use tempfile::TempDir;

/// Fails the test with the package to install when a tool is missing.
pub fn require_tool(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "{tool} is needed: install the Debian package {package} (.ci/run does)"
    );
}

/// Runs skopeo; panics with its stderr on failure.
/// The tags of `edge/app` at `host` (a registry or the plugin), as `skopeo list-tags` gives them.
pub fn app_tags(host: &str) -> serde_json::Value {
    let listed: serde_json::Value = serde_json::from_str(&skopeo(&[
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{host}/edge/app"),
    ]))
    .expect("skopeo list-tags prints JSON");
    listed["Tags"].clone()
}

/// Runs `skopeo` with `args` and returns its stdout; fails the test if it fails.
pub fn skopeo(args: &[&str]) -> String {
    require_tool("skopeo", "skopeo");
    let out = Command::new("skopeo")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run skopeo");
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs skopeo and returns its stderr on failure.
pub fn try_skopeo(args: &[&str]) -> Result<String, String> {
    let out = Command::new("skopeo")
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn probe(port: u16) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf), Ok(n) if n > 0)
}

/// A distribution registry on 127.0.0.1, killed on drop.
pub struct Registry {
    child: Child,
    _dir: TempDir,
    /// `127.0.0.1:PORT`.
    pub host: String,
}

impl Registry {
    /// Starts an anonymous registry with its storage in a temporary directory.
    pub fn start() -> Registry {
        require_tool("docker-registry", "docker-registry");
        for _ in 0..5 {
            let dir = tempfile::Builder::new()
                .prefix("registry-")
                .tempdir()
                .unwrap();
            let port = free_port();
            let config = format!(
                "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: sideload-test\n",
                dir.path().join("data").display()
            );
            let path = dir.path().join("config.yml");
            std::fs::write(&path, config).unwrap();
            let log = std::fs::File::create(dir.path().join("log")).unwrap();
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .env_remove("REGISTRY_HTTP_ADDR")
                .spawn()
                .expect("start docker-registry");
            let mut r = Registry {
                child,
                _dir: dir,
                host: format!("127.0.0.1:{port}"),
            };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = r.child.try_wait() {
                    break;
                }
                if probe(port) {
                    return r;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = r.child.kill();
        }
        panic!("docker-registry did not start");
    }
}

impl Registry {
    /// Stops the registry (SIGKILL), keeping its storage and port for [`Registry::resume`].
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the stopped registry again on the same port and storage.
    pub fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self._dir.path().join("log"))
            .unwrap();
        self.child = Command::new("docker-registry")
            .arg("serve")
            .arg(self._dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .env_remove("REGISTRY_HTTP_ADDR")
            .spawn()
            .expect("start docker-registry");
        let port: u16 = self.host.rsplit(':').next().unwrap().parse().unwrap();
        let start = Instant::now();
        while !probe(port) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "docker-registry did not start again"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The demo images and the keys, made once per test binary.
pub struct Fixture {
    _dir: TempDir,
    /// OCI layout of edge/app:v1.
    pub v1: PathBuf,
    /// OCI layout of edge/app:v2.
    pub v2: PathBuf,
    /// The trusted key.
    pub key: SigningKey,
    /// A key the device does not trust.
    pub stranger: SigningKey,
    /// The policy file content trusting `key` for everything.
    pub policy_toml: String,
    /// Work directory for bundles.
    pub work: PathBuf,
}

/// The shared fixture.
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("plugin-fixture-")
            .tempdir()
            .unwrap();
        let images = sideload_bundle::demo::make_demo_images(dir.path()).expect("demo images");
        let key = SigningKey::generate().unwrap().0;
        let stranger = SigningKey::generate().unwrap().0;
        let policy_toml = format!(
            "threshold = 1\n{}",
            key_entry_toml(&key.public_key(), &["*".parse().unwrap()], Some("test key"))
        );
        let work = dir.path().join("bundles");
        std::fs::create_dir_all(&work).unwrap();
        Fixture {
            v1: images.v1,
            v2: images.v2,
            key,
            stranger,
            policy_toml,
            work,
            _dir: dir,
        }
    })
}

fn open(layout: &Path, tag: &str) -> Box<dyn ImageSource> {
    let loc = format!("oci:{}:{tag}", layout.display()).parse().unwrap();
    open_image(&loc, &OpenOptions::default()).unwrap()
}

/// How to make a test bundle.
pub struct BundleSpec {
    /// File name.
    pub name: &'static str,
    /// Anti-rollback sequence.
    pub sequence: u64,
    /// Seconds since creation until expiry; negative = already expired.
    pub expires_in: i64,
    /// Sign with the trusted key, the stranger's, or not at all.
    pub signer: Signer,
    /// Base image: v1 (delta) or none (whole image).
    pub with_base: bool,
    /// Keep the source's manifest digest (gzip recipes in the payload), as `sideload build`
    /// does by default; false = layers stored uncompressed (smaller).
    pub exact: bool,
    /// The image the bundle makes: `"v2"` (default) or `"v1"` (then `with_base` must be
    /// false: v1 is the first version).
    pub target: &'static str,
}

/// Who signs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    /// The trusted key.
    Trusted,
    /// An untrusted key.
    Stranger,
    /// Nobody.
    Unsigned,
}

impl Default for BundleSpec {
    fn default() -> Self {
        BundleSpec {
            name: "app-v2.bundle",
            sequence: 100,
            expires_in: 3600,
            signer: Signer::Trusted,
            with_base: true,
            exact: true,
            target: "v2",
        }
    }
}

/// Builds (once per name) a v1 → v2 bundle for repository edge/app, tag v2 (or as `spec`
/// says: whole image, edge/app:v1).
pub fn bundle(spec: BundleSpec) -> PathBuf {
    // Tests run in parallel and share bundle files by name: build each one once, under a lock.
    static BUILDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
    let f = fixture();
    let path = f.work.join(spec.name);
    if path.exists() {
        return path;
    }
    assert!(
        spec.target == "v2" || !spec.with_base,
        "v1 has no base to be a delta against"
    );
    let target = match spec.target {
        "v1" => open(&f.v1, "v1"),
        _ => open(&f.v2, "v2"),
    };
    let base = open(&f.v1, "v1");
    let now = sideload_signing::VerifyContext::at_system_time(None).now;
    let created = if spec.expires_in < 0 { now - 7200 } else { now };
    let mut options = BuildOptions::new(
        "edge/app".parse().unwrap(),
        vec![spec.target.parse().unwrap()],
        created,
    );
    options.sequence = spec.sequence;
    options.expires_at = (created as i64
        + if spec.expires_in < 0 {
            3600
        } else {
            spec.expires_in
        }) as u64;
    options.ordered_by = "plugin test".into();
    if !spec.exact {
        options.exact.mode = sideload_bundle::Exactness::Never;
    }
    let bases: Vec<&dyn ImageSource> = if spec.with_base {
        vec![base.as_ref()]
    } else {
        vec![]
    };
    let tmp = path.with_extension("tmp");
    sideload_bundle::build_bundle(target.as_ref(), &bases, &options, &tmp, &NoProgress)
        .expect("build");
    let key = match spec.signer {
        Signer::Trusted => Some(&f.key),
        Signer::Stranger => Some(&f.stranger),
        Signer::Unsigned => None,
    };
    if let Some(key) = key {
        let (head, _) = sideload_bundle::open_bundle(&tmp, &Limits::default()).unwrap();
        sideload_bundle::attach_signatures(
            &tmp,
            &[key.sign_statement(&head.statement_bytes)],
            &Limits::default(),
        )
        .unwrap();
    }
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// edge/app:v2 as a whole image (no base): ~3.7 MB, for tests that need a transfer to take
/// a while.
pub fn whole_image_bundle() -> PathBuf {
    bundle(BundleSpec {
        name: "app-v2-whole.bundle",
        with_base: false,
        ..Default::default()
    })
}

/// A command's stdout as JSON; panics with both streams when it is not.
pub fn stdout_json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON on stdout ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The statement digest of a bundle: its id on the device.
pub fn bundle_id(path: &Path) -> String {
    let (head, _) = sideload_bundle::open_bundle(path, &Limits::default()).unwrap();
    Statement::from_canonical_json(&head.statement_bytes)
        .unwrap()
        .digest()
        .to_string()
}

/// Length of a bundle's head (header, statement, signature slot).
pub fn head_len(path: &Path) -> u64 {
    let mut header = [0u8; 32];
    std::fs::File::open(path)
        .unwrap()
        .read_exact(&mut header)
        .unwrap();
    sideload_bundle::head_len(&header).unwrap()
}

/// Pushes v1 into the registry as edge/app:v1 with its gzip blobs unchanged: a device that
/// got v1 exactly (an exact bundle, or a pull), as bundles built against v1 assume.
pub fn seed_v1(registry: &Registry) {
    let f = fixture();
    skopeo(&[
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", f.v1.display()),
        &format!("docker://{}/edge/app:v1", registry.host),
    ]);
}

/// The daemon's binary: the one beside the test binary in `target/`, which `cargo test`
/// builds for the plugin's own tests and `cargo test --workspace` for every crate's (cargo
/// sets `CARGO_BIN_EXE_*` only for a package's own tests, not for this shared crate).
pub fn daemon_binary() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_sideload-registry-plugin") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let path = dir.join("sideload-registry-plugin");
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo test --workspace or cargo build -p sideload-registry-plugin)",
        path.display()
    );
    path
}

/// Options for a daemon under test.
#[derive(Default, Clone)]
pub struct DaemonOptions {
    /// Extra TOML appended to the config.
    pub extra: String,
    /// Use this data directory instead of a new one (restarts).
    pub data_dir: Option<PathBuf>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// Listen on this loopback port instead of one the OS picks, for configs that must name the
    /// daemon's own address before it starts (e.g. `[engine] pull_from`).
    pub listen_port: Option<u16>,
    /// Listen on this address instead of 127.0.0.1 (e.g. the device end of a test veth link).
    pub listen_host: Option<String>,
}

/// The daemon as a child process.
pub struct Daemon {
    child: Option<Child>,
    /// `127.0.0.1:PORT` it listens on.
    pub addr: String,
    /// `127.0.0.1:PORT` of its TLS listener, when the config has `[tls]`.
    pub tls_addr: Option<String>,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its config file.
    pub config: PathBuf,
    _dir: Option<TempDir>,
    log: PathBuf,
    options: DaemonOptions,
    registry_url: String,
}

impl Daemon {
    /// Starts a daemon in front of `registry`.
    pub fn start(registry: &Registry, options: DaemonOptions) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("plugin-")
            .tempdir()
            .unwrap();
        let data_dir = options
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        let mut d = Daemon {
            child: None,
            addr: String::new(),
            tls_addr: None,
            config: dir.path().join("plugin.toml"),
            log: dir.path().join("plugin.log"),
            data_dir,
            _dir: Some(dir),
            options,
            registry_url: format!("http://{}", registry.host),
        };
        d.spawn(d.options.listen_port);
        d
    }

    /// (Re)starts the process, on `port` if given (a restart keeps its address).
    fn spawn(&mut self, port: Option<u16>) {
        let f = fixture();
        let policy = self.config.with_file_name("trust.toml");
        std::fs::write(&policy, &f.policy_toml).unwrap();
        let host = self.options.listen_host.as_deref().unwrap_or("127.0.0.1");
        let listen = format!("{host}:{}", port.unwrap_or(0));
        let config = format!(
            "listen = \"{listen}\"\ndevice_id = \"test-device\"\ndata_dir = \"{}\"\ntrust_policy = \"{}\"\n\
             [registry]\nurl = \"{}\"\nstartup_timeout_secs = 20\n\
             [inbox]\npoll_secs = 1\nsettle_secs = 1\n{}\n",
            self.data_dir.display(),
            policy.display(),
            self.registry_url,
            self.options.extra
        );
        std::fs::write(&self.config, config).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new(daemon_binary())
            .arg("--config")
            .arg(&self.config)
            .envs(
                self.options
                    .env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .env("SIDELOAD_LOG", "info,sideload_registry_plugin=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start the daemon");
        let stdout = child.stdout.take().unwrap();
        // (is the TLS listener, address); the daemon prints the TLS line before the plain one.
        let (tx, rx) = std::sync::mpsc::channel::<(bool, String)>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening (tls) on ") {
                    let _ = tx.send((true, addr.to_owned()));
                } else if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send((false, addr.to_owned()));
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        self.tls_addr = None;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((true, addr)) => self.tls_addr = Some(addr),
                Ok((false, addr)) => {
                    self.addr = addr;
                    break;
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("the daemon did not start; log:\n{}", self.log());
                }
            }
        }
        self.child = Some(child);
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id of the running daemon.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn port(&self) -> u16 {
        self.addr.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// SIGKILL, like a power cut for the process.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: a graceful stop, as systemd does.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        unsafe_kill_term(c.id());
        c.wait().unwrap()
    }

    /// Replaces the extra TOML for the next start.
    pub fn set_extra(&mut self, extra: &str) {
        self.options.extra = extra.to_owned();
    }

    /// Drops the extra environment (e.g. fault injection) for the next start.
    pub fn clear_env(&mut self) {
        self.options.env.clear();
    }

    /// Starts the process again on the same address and data directory.
    pub fn restart(&mut self) {
        let port = self.port();
        self.kill9();
        self.spawn(Some(port));
    }

    /// A request to the daemon.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> HttpResponse {
        http(&self.addr, method, path, headers, body)
    }

    /// GET a JSON document.
    /// Asserts the journal has an entry in `state` under the delivery name `name`.
    pub fn assert_journaled(&self, state: &str, name: &str) {
        let journal = self.get_json("/sideload/v1/journal");
        let found = journal["entries"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["state"] == state && e["name"] == name));
        assert!(found, "no {state} entry named {name:?}: {journal:#}");
    }

    /// `GET path` from the daemon, which must answer 200 with JSON.
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let r = self.request("GET", path, &[], b"");
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        serde_json::from_slice(&r.body).unwrap()
    }

    /// Polls a bundle's state until it is one of `states` (or the deadline passes).
    pub fn wait_state(&self, id: &str, states: &[&str], timeout: Duration) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let r = self.request("GET", &format!("/sideload/v1/bundles/{id}"), &[], b"");
            if r.status == 200 {
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                if states.iter().any(|s| v["bundle"]["state"] == *s) {
                    return v;
                }
                if start.elapsed() > timeout {
                    panic!(
                        "bundle {id} stayed {}; log:\n{}",
                        v["bundle"]["state"],
                        self.log()
                    );
                }
            } else if start.elapsed() > timeout {
                panic!(
                    "bundle {id} unknown ({}): {}\nlog:\n{}",
                    r.status,
                    r.text(),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Uploads a whole bundle in one PATCH; returns the final response.
    pub fn upload(&self, path: &Path) -> HttpResponse {
        let id = self.create_upload(path, &[]);
        let bytes = std::fs::read(path).unwrap();
        self.request(
            "PATCH",
            &format!("/sideload/v1/uploads/{id}"),
            &[("Upload-Offset", "0".into())],
            &bytes,
        )
    }

    /// Creates an upload; returns its id.
    pub fn create_upload(&self, path: &Path, extra: &[(&str, String)]) -> String {
        let mut headers = vec![(
            "Bundle-Name",
            path.file_name().unwrap().to_string_lossy().into_owned(),
        )];
        headers.extend(extra.iter().cloned());
        let r = self.request("POST", "/sideload/v1/uploads", &headers, b"");
        assert!(
            r.status == 201 || r.status == 200,
            "create upload: {} {}",
            r.status,
            r.text()
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        v["upload"].as_str().expect("upload id").to_owned()
    }

    /// Upload bytes the daemon received and stored since it started (`/metrics`).
    pub fn upload_bytes_total(&self) -> u64 {
        self.request("GET", "/metrics", &[], b"")
            .text()
            .lines()
            .find_map(|l| l.strip_prefix("sideload_upload_bytes_total "))
            .and_then(|v| v.trim().parse().ok())
            .expect("upload byte counter in /metrics")
    }

    /// The HEAD offset of an upload.
    pub fn offset(&self, id: &str) -> Option<u64> {
        let r = self.request("HEAD", &format!("/sideload/v1/uploads/{id}"), &[], b"");
        (r.status == 204).then(|| r.header("upload-offset").unwrap().parse().unwrap())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn unsafe_kill_term(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}

/// An HTTP answer.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// One HTTP/1.1 request on a new connection (`Connection: close`), body sent whole.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> HttpResponse {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write_head(&mut s, addr, method, path, headers, body.len() as u64);
    s.write_all(body).unwrap();
    read_response(&mut s, method == "HEAD")
}

/// Sends the request head declaring `declared` body bytes, then only `body`, then closes:
/// a link that drops mid-upload.
pub fn http_cut(addr: &str, path: &str, headers: &[(&str, String)], body: &[u8], declared: u64) {
    let mut s = TcpStream::connect(addr).expect("connect");
    write_head(&mut s, addr, "PATCH", path, headers, declared);
    s.write_all(body).unwrap();
    s.flush().unwrap();
    let _ = s.shutdown(std::net::Shutdown::Both);
}

fn write_head(
    s: &mut TcpStream,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    len: u64,
) {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if method != "GET" && method != "HEAD" {
        head.push_str(&format!("Content-Length: {len}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
}

fn read_response(s: &mut TcpStream, head_only: bool) -> HttpResponse {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let mut body = Vec::new();
    if !head_only {
        let len = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok());
        match len {
            Some(n) => {
                body.resize(n, 0);
                r.read_exact(&mut body).unwrap();
            }
            None => {
                let _ = r.read_to_end(&mut body);
            }
        }
    }
    HttpResponse {
        status,
        headers,
        body,
    }
}
