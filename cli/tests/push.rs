//! `sideload push` against a real daemon (and docker-registry), through an in-process proxy
//! that cuts connections: the resume logic runs on every machine, with or without network
//! namespaces. `push_link.rs` does the same over a shaped veth link that goes down and up.

use sideload_test_support::registry as support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{
    bundle, bundle_id, seed_v1, stdout_json, whole_image_bundle, BundleSpec, Daemon, DaemonOptions,
    Registry, Signer,
};

fn push(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sideload"))
        .arg("push")
        .args(args)
        .output()
        .expect("sideload runs")
}

/// A TCP relay that cuts every connection once `cut_every` more client bytes have passed,
/// like a link that drops: the client sees a reset, the device sees the request end.
struct CuttingProxy {
    addr: String,
    upstream_bytes: Arc<AtomicU64>,
    cuts: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl CuttingProxy {
    fn start(target: &str, cut_every: u64) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let upstream_bytes = Arc::new(AtomicU64::new(0));
        let cuts = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let target = target.to_owned();
        let (ub, c, s) = (upstream_bytes.clone(), cuts.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(device) = TcpStream::connect(&target) else {
                    continue;
                };
                let (ub, c) = (ub.clone(), c.clone());
                std::thread::spawn(move || relay(client, device, ub, c, cut_every));
            }
        });
        CuttingProxy {
            addr,
            upstream_bytes,
            cuts,
            stop,
        }
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(&self.addr);
    }
}

fn relay(
    mut client: TcpStream,
    mut device: TcpStream,
    upstream: Arc<AtomicU64>,
    cuts: Arc<AtomicU64>,
    cut_every: u64,
) {
    let (mut device_r, mut client_w) = (device.try_clone().unwrap(), client.try_clone().unwrap());
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut device_r, &mut client_w);
        let _ = client_w.shutdown(Shutdown::Both);
    });
    let mut buf = [0u8; 8192];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let before = upstream.fetch_add(n as u64, Ordering::SeqCst);
        let boundary = (before / cut_every + 1) * cut_every;
        if before + n as u64 >= boundary {
            // Forward up to the boundary, then drop the link both ways.
            let keep = (boundary - before) as usize;
            let _ = device.write_all(&buf[..keep]);
            upstream.fetch_sub((n - keep) as u64, Ordering::SeqCst);
            cuts.fetch_add(1, Ordering::SeqCst);
            break;
        }
        if device.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = device.shutdown(Shutdown::Both);
    let _ = client.shutdown(Shutdown::Both);
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

#[test]
fn push_resumes_through_cuts_without_resending_and_waits_for_apply() {
    let registry = Registry::start();
    let daemon = Daemon::start(&registry, DaemonOptions::default());
    let path = whole_image_bundle();
    let total = size(&path);
    // About a dozen cuts over the bundle.
    let proxy = CuttingProxy::start(&daemon.addr, total / 12);
    let out = push(&[
        path.to_str().unwrap(),
        "--to",
        &format!("http://{}", proxy.addr),
        "--retry-initial",
        "50ms",
        "--retry-max",
        "500ms",
        "--wait",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let r = &stdout_json(&out)["bundles"][0];
    assert_eq!(r["outcome"], "queued", "{r:#}");
    assert_eq!(r["state"], "applied", "{r:#}");
    assert_eq!(r["bundle"], bundle_id(&path));
    let cuts = proxy.cuts.load(Ordering::SeqCst);
    assert!(cuts >= 10, "the proxy cut {cuts} times");
    assert!(r["retries"].as_u64().unwrap() >= 10, "{r:#}");
    assert!(stderr.contains("resuming at byte"), "{stderr}");
    // Nothing was sent twice: the device stored exactly the file, and what crossed the
    // proxy (bundle bytes plus HTTP heads of every request) stays within 2 %.
    assert_eq!(daemon.upload_bytes_total(), total);
    let upstream = proxy.upstream_bytes.load(Ordering::SeqCst);
    assert!(
        upstream as f64 <= total as f64 * 1.02,
        "{upstream} bytes crossed for a {total}-byte bundle"
    );
    // The image is there.
    let inventory = daemon.get_json("/sideload/v1/inventory");
    assert!(inventory.to_string().contains("edge/app"), "{inventory:#}");

    // Again: the device has it; one request, nothing sent.
    let out = push(&[
        path.to_str().unwrap(),
        "--to",
        &format!("http://{}", daemon.addr),
        "--json",
    ]);
    assert!(out.status.success());
    let r = &stdout_json(&out)["bundles"][0];
    assert_eq!(r["outcome"], "known", "{r:#}");
    assert_eq!(r["state"], "applied");
    assert_eq!(r["requests"], 1);
    assert_eq!(r["bytes_sent"], 0);
}

#[test]
fn refusals_stop_the_list_with_exit_3_and_the_reason() {
    let registry = Registry::start();
    seed_v1(&registry);
    let daemon = Daemon::start(&registry, DaemonOptions::default());
    let untrusted = bundle(BundleSpec {
        name: "untrusted-whole.bundle",
        signer: Signer::Stranger,
        // A whole image: megabytes of payload behind the head.
        with_base: false,
        ..Default::default()
    });
    // Under a name a header cannot carry as it is: it reaches the device's journal intact.
    let dir = tempfile::tempdir().unwrap();
    let renamed = dir.path().join("ungeprüft whole.bundle");
    std::fs::copy(&untrusted, &renamed).unwrap();
    let untrusted = renamed;
    let good = bundle(BundleSpec::default());
    let out = push(&[
        untrusted.to_str().unwrap(),
        good.to_str().unwrap(),
        "--to",
        &format!("http://{}", daemon.addr),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("what to do:"), "{stderr}");
    assert!(
        stderr.contains("app-v2.bundle: not sent: ungeprüft whole.bundle did not go through"),
        "{stderr}"
    );
    let v = stdout_json(&out);
    assert_eq!(v["bundles"][0]["outcome"], "refused");
    assert_eq!(v["bundles"][0]["code"], "unknown_key");
    assert_eq!(v["bundles"][1]["outcome"], "skipped", "{v:#}");
    daemon.assert_journaled("refused", "ungeprüft whole.bundle");
    // The device stored no payload byte of the refused bundle: at most its head, however the
    // client framed its bytes (one PATCH carries head and payload).
    let mut header = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open(&untrusted).unwrap(), &mut header).unwrap();
    let head = sideload_bundle::head_len(&header).unwrap();
    assert!(size(&untrusted) > head + 65536);
    let stored = daemon.upload_bytes_total();
    assert!(
        stored <= head,
        "{stored} bytes stored, the head is {head}: {v:#}"
    );
}

#[test]
fn limit_rate_paces_the_upload() {
    let registry = Registry::start();
    let daemon = Daemon::start(&registry, DaemonOptions::default());
    let path = whole_image_bundle();
    let total = size(&path);
    let rate = 1_000_000u64;
    let start = Instant::now();
    let out = push(&[
        path.to_str().unwrap(),
        "--to",
        &format!("http://{}", daemon.addr),
        "--limit-rate",
        &rate.to_string(),
        "--json",
    ]);
    let elapsed = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A lower bound only (the limiter cannot be beaten; a loaded machine may be slower).
    let floor = (total as f64 - rate as f64 / 4.0) / rate as f64;
    assert!(
        elapsed >= floor * 0.95,
        "{total} bytes at {rate} B/s took only {elapsed:.2} s"
    );
}

#[test]
fn unreachable_devices_retry_until_the_deadline_then_say_so() {
    let path = whole_image_bundle();
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let start = Instant::now();
    let out = push(&[
        path.to_str().unwrap(),
        "--to",
        &format!("http://127.0.0.1:{port}"),
        "--deadline",
        "3s",
        "--retry-initial",
        "100ms",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(start.elapsed() < Duration::from_secs(30));
    let r = &stdout_json(&out)["bundles"][0];
    assert_eq!(r["outcome"], "deadline", "{r:#}");
    assert!(r["retries"].as_u64().unwrap() >= 3, "{r:#}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach the device"), "{stderr}");
    assert!(stderr.contains("push again"), "{stderr}");
    // Bad arguments are refused before anything is sent.
    let out = push(&[path.to_str().unwrap(), "--to", "device:5000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a device URL"));
    let out = push(&[
        path.to_str().unwrap(),
        "--to",
        "http://127.0.0.1:1",
        "--limit-rate",
        "fast",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a rate"));
}

/// The pin the daemon logged for its certificate.
fn logged_pin(daemon: &Daemon) -> String {
    let log = daemon.log();
    let at = log.find("--pin sha256:").expect("the daemon logs its pin") + "--pin ".len();
    log[at..at + 7 + 64].to_owned()
}

#[test]
fn push_over_tls_with_a_pin_or_the_certificate_and_the_token() {
    let registry = Registry::start();
    seed_v1(&registry);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret-upload-token\n").unwrap();
    let daemon = Daemon::start(
        &registry,
        DaemonOptions {
            extra: format!(
                "[tls]\nlisten = \"127.0.0.1:0\"\nself_signed = true\n\
                 [auth]\nupload_token_file = \"{}\"\nexempt_loopback = false\n",
                token.display()
            ),
            ..Default::default()
        },
    );
    let url = format!(
        "https://{}",
        daemon.tls_addr.as_deref().expect("tls listener")
    );
    let pin = logged_pin(&daemon);
    let path = bundle(BundleSpec::default());
    let p = path.to_str().unwrap();

    // Without the token: 401, a clear message, exit 1, nothing retried.
    let out = push(&[p, "--to", &url, "--pin", &pin, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let r = &stdout_json(&out)["bundles"][0];
    assert_eq!(r["code"], "unauthorized", "{r:#}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token-file"));

    // A wrong pin fails at once as a TLS problem (not retried as a dead link).
    let wrong = format!("sha256:{}", "00".repeat(32));
    let start = Instant::now();
    let out = push(&[
        p,
        "--to",
        &url,
        "--pin",
        &wrong,
        "--token-file",
        token.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let r = &stdout_json(&out)["bundles"][0];
    assert_eq!(r["code"], "tls", "{r:#}");
    assert!(r["reason"].as_str().unwrap().contains(&pin), "{r:#}");
    assert!(start.elapsed() < Duration::from_secs(20));
    // Trusting nothing but the platform's CAs fails the same way.
    let out = push(&[
        p,
        "--to",
        &url,
        "--token-file",
        token.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(stdout_json(&out)["bundles"][0]["code"], "tls");

    assert!(!String::from_utf8_lossy(&out.stderr).contains("s3cret"));
    // The right pin and token: uploaded and applied.
    let out = push(&[
        p,
        "--to",
        &url,
        "--pin",
        &pin,
        "--token-file",
        token.to_str().unwrap(),
        "--wait",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout_json(&out)["bundles"][0]["state"], "applied");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("s3cret"));
    assert!(
        !daemon.log().contains("s3cret"),
        "the token is never logged"
    );
    // --pin and --ca-file together are refused (a pin ignores issuers).
    let both = push(&[p, "--to", &url, "--pin", &pin, "--ca-file", "/dev/null"]);
    assert_eq!(both.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&both.stderr).contains("not both"));
    // The device's own certificate as the CA file works too (known now: one request).
    let cert = daemon.data_dir.join("tls/cert.pem");
    let out = Command::new(env!("CARGO_BIN_EXE_sideload"))
        .args([
            "push",
            p,
            "--to",
            &url.replace("127.0.0.1", "localhost"),
            "--ca-file",
        ])
        .arg(&cert)
        .env("SIDELOAD_DEVICE_TOKEN", "s3cret-upload-token")
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout_json(&out)["bundles"][0]["outcome"], "known");
}
