//! What the daemon leaves behind in the registry and in its own process: blob uploads a crash
//! left open in the registry are purged within hours (the shipped `registry.yml`), and the
//! pools of connections to the registry close idle ones even while traffic goes on.

use sideload_test_support::registry as support;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

/// A Go duration as registry.yml writes it (`1h`, `30m`, `168h`), in seconds.
fn go_duration(text: &str) -> u64 {
    let (number, unit) = text.split_at(text.len() - 1);
    let n: u64 = number.parse().unwrap_or_else(|_| panic!("duration {text}"));
    match unit {
        "h" => n * 3600,
        "m" => n * 60,
        "s" => n,
        _ => panic!("duration {text}"),
    }
}

#[test]
fn the_shipped_registry_config_purges_abandoned_uploads_within_hours() {
    require_tool("docker-registry", "docker-registry");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd/registry.yml");
    let yaml = std::fs::read_to_string(&shipped).unwrap();
    // The `uploadpurging:` block's own keys (no YAML crate in this workspace).
    let block: Vec<(String, String)> = yaml
        .lines()
        .skip_while(|l| l.trim() != "uploadpurging:")
        .skip(1)
        .take_while(|l| l.starts_with("      ") || l.trim().is_empty())
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect();
    let get = |key: &str| {
        block
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("uploadpurging.{key} missing in {}", shipped.display()))
    };
    assert_eq!(get("enabled"), "true");
    assert_eq!(get("dryrun"), "false");
    let (age, interval) = (go_duration(&get("age")), go_duration(&get("interval")));
    assert!(
        age + interval <= 3 * 3600,
        "abandoned blob uploads stay up to {} h (age {age} s + interval {interval} s)",
        (age + interval) / 3600
    );
    // An upload the plugin is still sending is never that old: the largest layer takes
    // minutes over loopback.
    assert!(age >= 3600, "age {age} s could purge a push still running");

    // The registry itself takes the file as shipped (storage and port moved for the test)
    // and starts its purger with it.
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let config = yaml
        .replace(
            "rootdirectory: /var/lib/docker-registry",
            &format!("rootdirectory: {}", dir.path().join("data").display()),
        )
        .replace("addr: 127.0.0.1:5001", &format!("addr: 127.0.0.1:{port}"));
    assert_ne!(config, yaml);
    let path = dir.path().join("registry.yml");
    std::fs::write(&path, config).unwrap();
    let log = dir.path().join("log");
    let mut child = std::process::Command::new("docker-registry")
        .arg("serve")
        .arg(&path)
        .env_remove("REGISTRY_HTTP_ADDR")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("err")).unwrap())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut text = String::new();
    while start.elapsed() < Duration::from_secs(20) && !text.contains("Starting upload purge in") {
        std::thread::sleep(Duration::from_millis(100));
        text = std::fs::read_to_string(&log).unwrap_or_default()
            + &std::fs::read_to_string(dir.path().join("err")).unwrap_or_default();
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        text.contains("Starting upload purge in"),
        "the registry did not start its upload purger with {}:\n{text}",
        shipped.display()
    );
}

/// Established TCP connections of process `pid` to `127.0.0.1:port`.
fn sockets_to(pid: u32, port: u16) -> usize {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')
                .map(str::to_owned)
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap();
    let remote = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 9 && f[2] == remote && f[3] == "01" && inodes.contains(f[9]))
        .count()
}

/// Puts a blob of `len` pseudo-random bytes into `repository` of the registry itself (not
/// through the daemon, which is read-only); returns its digest.
fn put_blob(registry: &Registry, repository: &str, len: usize) -> String {
    let mut bytes = Vec::with_capacity(len);
    let mut x = 0x9e3779b97f4a7c15u64;
    while bytes.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    bytes.truncate(len);
    let digest = sideload_signing::Digest::of_bytes(&bytes).to_string();
    let r = http(
        &registry.host,
        "POST",
        &format!("/v2/{repository}/blobs/uploads/"),
        &[],
        b"",
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let location = r.header("location").unwrap().to_owned();
    let path = location
        .split_once("://")
        .map(|(_, rest)| &rest[rest.find('/').unwrap()..])
        .unwrap_or(&location)
        .to_owned();
    let r = http(
        &registry.host,
        "PUT",
        &format!("{path}&digest={digest}"),
        &[("Content-Type", "application/octet-stream".into())],
        &bytes,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    digest
}

#[test]
fn idle_connections_to_the_registry_are_closed_while_traffic_goes_on() {
    let registry = Registry::start();
    let daemon = Daemon::start(&registry, DaemonOptions::default());
    let port: u16 = registry.host.rsplit(':').next().unwrap().parse().unwrap();
    let digest = put_blob(&registry, "burst/test", 16 << 20);
    // A burst of 40 pulls at once through /v2/, each held open until all have started, so
    // the daemon needs 40 connections to the registry at the same time.
    const BURST: usize = 40;
    let barrier = Arc::new(std::sync::Barrier::new(BURST + 1));
    let threads: Vec<_> = (0..BURST)
        .map(|_| {
            let (addr, barrier) = (daemon.addr.clone(), barrier.clone());
            let path = format!("/v2/burst/test/blobs/{digest}");
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).unwrap();
                write!(
                    s,
                    "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
                )
                .unwrap();
                barrier.wait();
                let mut all = Vec::new();
                s.read_to_end(&mut all).unwrap();
                all.len()
            })
        })
        .collect();
    barrier.wait();
    // Every pull has its request in and its answer waiting: the connections are all open.
    let start = Instant::now();
    let mut peak = 0;
    while start.elapsed() < Duration::from_secs(10) {
        peak = peak.max(sockets_to(daemon.pid(), port));
        if peak >= BURST {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        peak >= BURST / 2,
        "the burst opened only {peak} connections"
    );
    std::thread::sleep(Duration::from_millis(500));
    // Readers go now; each answer is the whole blob.
    for t in threads {
        assert!(t.join().unwrap() > 16 << 20);
    }
    // Traffic goes on, one pull at a time.
    let pull = || {
        let r = daemon.request("GET", "/v2/", &[], b"");
        assert_eq!(r.status, 200);
    };
    for _ in 0..10 {
        pull();
        std::thread::sleep(Duration::from_millis(100));
    }
    let after_burst = sockets_to(daemon.pid(), port);
    assert!(
        after_burst <= 10,
        "{after_burst} connections to the registry stay open after a burst of {BURST} (peak {peak})"
    );
    // Idle ones are closed after the idle timeout (15 s; checked every 15 s), although pulls
    // go on.
    let until = Instant::now() + Duration::from_secs(40);
    let mut later = after_burst;
    while Instant::now() < until && later > 2 {
        pull();
        std::thread::sleep(Duration::from_millis(500));
        later = sockets_to(daemon.pid(), port);
    }
    assert!(
        later <= 2,
        "{later} connections to the registry open 40 s after the burst (peak {peak}, {after_burst} right after)"
    );
}
