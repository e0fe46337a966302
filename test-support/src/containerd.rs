//! For tests that need a real containerd with its CRI plugin (`cri_containerd.rs`): containerd
//! started fully isolated in a temp dir, with registry mirrors in its `hosts.toml` config, and
//! stopped and cleaned up when its [`Containerd`] is dropped, also when a test panics.
//!
//! containerd gets its own root, state, gRPC and ttrpc sockets, all under the test's dir, and
//! its debug and metrics listeners off, so the machine's containerd (if any) and its images are
//! neither read nor touched. Plugins that need more than a temp dir (btrfs, zfs, devmapper,
//! aufs snapshotters, tracing) are disabled; overlayfs stays, so it needs root, as CI runs.
//!
//! `[plugins."io.containerd.grpc.v1.cri".registry] config_path` points at our `certs.d`, where
//! each mirrored upstream host gets `HOST/hosts.toml`. containerd 1.6 looks for a port-qualified
//! host `HOST:PORT` first in `HOST_PORT_/`, then in `HOST:PORT/`; we write the first.
#![allow(dead_code)]

use std::fs;
use std::io::ErrorKind;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sideload_registry_plugin::cri::{Cri, CriConfig};

/// How long containerd may take to start answering CRI calls.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long containerd gets to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A containerd we started; stopped by PID, its mounts and dir removed, on drop.
pub struct Containerd {
    child: Child,
    /// Everything of this containerd: config, root, state, sockets, log.
    pub dir: PathBuf,
    /// The gRPC socket (for [`Cri`] and `ctr --address`).
    pub socket: PathBuf,
    log: PathBuf,
}

impl Containerd {
    /// A CRI client on this containerd's socket with pull timeout `timeout_secs`.
    pub fn cri(&self, timeout_secs: u64) -> Cri {
        Cri::new(CriConfig {
            socket: self.socket.clone(),
            timeout_secs,
        })
    }

    /// The end of containerd's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let skip = text.chars().count().saturating_sub(6000);
        text.chars().skip(skip).collect()
    }

    /// containerd's whole log (to read what it did, e.g. which URLs it fetched).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `ctr --address SOCKET ARGS…`; returns its output whatever the exit status.
    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running ctr: {e}"))
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // containerd leads its own process group; SIGTERM lets it close its stores cleanly.
        signal("-TERM", &format!("-{}", self.child.id()));
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline && !matches!(self.child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(50));
        }
        signal("-KILL", &format!("-{}", self.child.id()));
        let _ = self.child.wait();
        // A shim of a container a failed test left running outlives containerd (it re-parents
        // itself on purpose); ours name our socket on their command line.
        for pid in shims_of(&self.socket) {
            signal("-KILL", &pid.to_string());
        }
        // overlayfs mounts of running containers, and the snapshotter's own, under our dir.
        for mount in mounts_under(&self.dir) {
            let _ = Command::new("umount")
                .arg("--lazy")
                .arg(&mount)
                .stderr(Stdio::null())
                .status();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Sends `signal` to one process (`PID`) or one process group (`-PGID`) with kill(1).
fn signal(signal: &str, target: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", target])
        .stderr(Stdio::null())
        .status();
}

/// PIDs of processes whose command line names `socket` (containerd-shim-runc-v2 gets
/// `-address SOCKET`).
fn shims_of(socket: &Path) -> Vec<u32> {
    let wanted = socket.as_os_str().as_encoded_bytes();
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if cmdline.split(|&b| b == 0).any(|arg| arg == wanted) && pid != std::process::id() {
            pids.push(pid);
        }
    }
    pids
}

/// Mount points under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = text
        .lines()
        // Field 5 is the mount point (octal escapes for spaces; our paths have none).
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|point| point.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// Fails (never skips) when a tool the test needs is not installed.
pub fn require(tool: &str, package: &str) {
    match Command::new(tool).arg("--version").output() {
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

/// The folder under `certs.d` containerd 1.6 reads for `host` (`HOST` or `HOST:PORT`).
pub fn hosts_dir_name(host: &str) -> String {
    match host.rsplit_once(':') {
        Some((name, port)) if !name.is_empty() => format!("{name}_{port}_"),
        _ => host.to_owned(),
    }
}

/// `hosts.toml` for `upstream_host` that sends pulls to `mirror_url` (`http://127.0.0.1:PORT`)
/// and lets containerd fall back to the upstream itself (`server`) when the mirror lacks it.
pub fn hosts_toml(upstream_host: &str, mirror_url: &str) -> String {
    format!(
        "server = \"https://{upstream_host}\"\n\n[host.\"{mirror_url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
    )
}

/// Starts containerd in `scratch/containerd`, its CRI registry config mirroring each
/// `(upstream_host, mirror_url)`; waits until its CRI service answers `Version`.
pub async fn start_containerd(scratch: &Path, mirrors: &[(&str, &str)]) -> Containerd {
    require("containerd", "containerd");
    let dir = scratch.join("containerd");
    let certs = dir.join("certs.d");
    fs::create_dir_all(&certs).unwrap();
    for (upstream, mirror) in mirrors {
        let host_dir = certs.join(hosts_dir_name(upstream));
        fs::create_dir_all(&host_dir).unwrap();
        fs::write(host_dir.join("hosts.toml"), hosts_toml(upstream, mirror)).unwrap();
    }
    let socket = dir.join("containerd.sock");
    let config = format!(
        r#"version = 2
root = "{root}"
state = "{state}"
# Plugins that need a disk, a kernel module or a collector the test does not have.
disabled_plugins = [
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[debug]
  address = ""
  level = "debug"

[metrics]
  address = ""

[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "{certs}"
"#,
        root = dir.join("root").display(),
        state = dir.join("state").display(),
        socket = socket.display(),
        certs = certs.display(),
    );
    let config_path = dir.join("config.toml");
    fs::write(&config_path, config).unwrap();
    let log = dir.join("containerd.log");
    let out = fs::File::create(&log).unwrap();
    let err = out.try_clone().unwrap();
    let child = Command::new("containerd")
        .arg("--config")
        .arg(&config_path)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("starting containerd: {e}"));
    let mut containerd = Containerd {
        child,
        dir,
        socket,
        log,
    };
    let cri = containerd.cri(5);
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(Some(status)) = containerd.child.try_wait() {
            panic!(
                "containerd exited during start-up ({status}); its log:\n{}",
                containerd.log_tail()
            );
        }
        let last = match cri.version().await {
            Ok(_) => return containerd,
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "containerd's CRI service did not answer within {START_TIMEOUT:?}: {last}\nadvice: {}\ncontainerd log:\n{}",
            last.advice(),
            containerd.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
