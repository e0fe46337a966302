//! Shared by the tests that need a real container engine (`engine_podman.rs`,
//! `plugin_engine.rs`): podman's Docker-compatible API (`podman system service`) started fully
//! isolated in a temp dir, and the server/temp-dir guards that stop and clean up after it.
//!
//! podman gets its own storage (`vfs`, so no overlay mounts), its own run, tmp, network and
//! volume dirs, and its own `containers.conf`, `registries.conf` and `storage.conf` passed
//! through the child's environment, so the machine's podman config and images are neither read
//! nor touched. Each server leads its own process group and is stopped through it (SIGTERM, then
//! SIGKILL) when its [`Service`] is dropped, also when a test panics.
//!
//! Runs as root (as CI does) or as an unprivileged user: rootless podman works here with a single
//! uid mapping because the test images' files all belong to root; its pause process
//! (`catatonit -P`) is stopped too.
#![allow(dead_code)]

use std::fs;
use std::io::ErrorKind;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sideload_registry_plugin::engine::{Engine, EngineConfig};

/// How long a server may take to start answering.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A server we started; stopped by PID on drop.
pub struct Service {
    name: &'static str,
    child: Child,
    log: PathBuf,
    /// A PID file of a helper the server leaves behind: rootless podman starts a pause process
    /// (`catatonit -P`) that outlives `podman system service`; it is stopped too.
    helper_pid_file: Option<PathBuf>,
}

impl Drop for Service {
    fn drop(&mut self) {
        // The server leads its own process group (its PID is the group's ID): rootless podman
        // re-executes itself inside a user namespace as a child, which SIGTERM to the outer
        // process alone would leave running. SIGTERM first so podman shuts down cleanly; SIGKILL
        // if it does not within 5 s.
        let group = format!("-{}", self.child.id());
        signal("-TERM", &group);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && !matches!(self.child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(50));
        }
        signal("-KILL", &group);
        let _ = self.child.wait();
        let helper = self
            .helper_pid_file
            .as_ref()
            .and_then(|f| fs::read_to_string(f).ok());
        if let Some(pid) = helper.and_then(|text| text.trim().parse::<u32>().ok()) {
            signal("-TERM", &pid.to_string());
        }
    }
}

/// Sends `signal` to one process (`PID`) or one process group (`-PGID`) with kill(1).
fn signal(signal: &str, target: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", target])
        .stderr(Stdio::null())
        .status();
}

impl Service {
    pub fn spawn(name: &'static str, command: &mut Command, log: PathBuf) -> Service {
        let out = fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Service {
            name,
            child,
            log,
            helper_pid_file: None,
        }
    }

    /// The end of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let skip = text.chars().count().saturating_sub(4000);
        text.chars().skip(skip).collect()
    }

    /// Panics with the log when the server has already exited.
    pub fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited during start-up ({status}); its log:\n{}",
                self.name,
                self.log_tail()
            );
        }
    }
}

/// The test's temp dir. Rootless podman leaves read-only directories from image layers in its
/// vfs storage, which the unprivileged owner cannot empty; they are made writable first.
pub struct Scratch(pub tempfile::TempDir);

impl Drop for Scratch {
    fn drop(&mut self) {
        fn make_writable(dir: &Path) {
            let Ok(meta) = fs::symlink_metadata(dir) else {
                return;
            };
            if !meta.is_dir() {
                return;
            }
            let mut permissions = meta.permissions();
            permissions.set_mode(permissions.mode() | 0o700);
            let _ = fs::set_permissions(dir, permissions);
            for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
                make_writable(&entry.path());
            }
        }
        make_writable(self.0.path());
    }
}

/// Fails (never skips) when a tool the test needs is not installed.
///
/// `scratch` is the tool's home and runtime dir: rootless podman creates
/// `/tmp/podman-run-UID` even for `--version` when `XDG_RUNTIME_DIR` is unset.
pub fn require(tool: &str, package: &str, scratch: &Path) {
    let mut command = Command::new(tool);
    command
        .arg("--version")
        .env("HOME", scratch)
        .env("XDG_RUNTIME_DIR", scratch)
        .env("XDG_CONFIG_HOME", scratch)
        .env("XDG_DATA_HOME", scratch);
    match command.output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`{tool} --version` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            panic!("{tool} is not installed; these tests need it: apt-get install {package}")
        }
        Err(e) => panic!("running {tool}: {e}"),
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `podman system service` on a socket in `dir`, isolated from the machine's podman
/// config and storage, with `insecure` registries; waits until `/_ping` answers.
pub async fn start_podman(dir: &Path, insecure: &[&str]) -> (Service, PathBuf) {
    let p = dir.join("podman");
    let sub = |name: &str| -> PathBuf {
        let path = p.join(name);
        fs::create_dir_all(&path).unwrap();
        path
    };
    let (root, runroot, tmp, libpod_tmp, networks, volumes, home) = (
        sub("root"),
        sub("runroot"),
        sub("tmp"),
        sub("libpod-tmp"),
        sub("networks"),
        sub("volumes"),
        sub("home"),
    );
    let (xdg_config, xdg_data, xdg_runtime) =
        (sub("xdg-config"), sub("xdg-data"), sub("xdg-runtime"));
    let mut registries = String::from("unqualified-search-registries = []\n");
    for location in insecure {
        registries.push_str(&format!(
            "\n[[registry]]\nlocation = \"{location}\"\ninsecure = true\n"
        ));
    }
    let registries_conf = p.join("registries.conf");
    fs::write(&registries_conf, registries).unwrap();
    let containers_conf = p.join("containers.conf");
    // File locks in this service's own tmp dir: with the default shm locks every podman on
    // the host shares /dev/shm/libpod_lock, and services started at once by parallel tests
    // race creating it ("failed to open 2048 locks in /libpod_lock: bad file descriptor").
    fs::write(&containers_conf, "[engine]\nlock_type = \"file\"\n").unwrap();
    let storage_conf = p.join("storage.conf");
    fs::write(
        &storage_conf,
        format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            root.display(),
            runroot.display()
        ),
    )
    .unwrap();
    let socket = p.join("podman.sock");

    let mut command = Command::new("podman");
    command
        .env("CONTAINERS_CONF", &containers_conf)
        .env("CONTAINERS_REGISTRIES_CONF", &registries_conf)
        .env("CONTAINERS_STORAGE_CONF", &storage_conf)
        .env("XDG_CONFIG_HOME", &xdg_config)
        .env("XDG_DATA_HOME", &xdg_data)
        .env("XDG_RUNTIME_DIR", &xdg_runtime)
        .env("HOME", &home)
        .env("TMPDIR", &tmp)
        .arg("--root")
        .arg(&root)
        .arg("--runroot")
        .arg(&runroot)
        .args(["--storage-driver", "vfs"])
        .arg("--tmpdir")
        .arg(&libpod_tmp)
        .arg("--network-config-dir")
        .arg(&networks)
        .arg("--volumepath")
        .arg(&volumes)
        .args(["--events-backend", "none", "--cgroup-manager", "cgroupfs"])
        .args(["--log-level", "info", "system", "service", "--time", "0"])
        .arg(format!("unix://{}", socket.display()));
    let mut service = Service::spawn(
        "podman system service",
        &mut command,
        dir.join("podman.log"),
    );
    service.helper_pid_file = Some(libpod_tmp.join("pause.pid"));

    let engine = Engine::new(EngineConfig {
        socket: socket.clone(),
        pull_from: "unused:1".to_owned(),
        timeout_secs: 5,
    });
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        service.check_alive();
        let last = match engine.ping().await {
            Ok(()) => return (service, socket),
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "podman's API did not answer within {START_TIMEOUT:?}: {last}\nadvice: {}\npodman log:\n{}",
            last.advice(),
            service.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether `repo_tags` lists `name` in a form an engine normalises it to: podman's compat API
/// and dockerd with the containerd store say `docker.io/edge/app:v1`, classic dockerd says
/// `edge/app:v1`. Both resolve `edge/app:v1` in a pod spec.
pub fn lists(repo_tags: &[String], name: &str) -> bool {
    repo_tags
        .iter()
        .any(|t| t == name || *t == format!("docker.io/{name}"))
}
