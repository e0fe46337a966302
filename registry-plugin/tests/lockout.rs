//! Invariant 10, "no one locks the device", end to end against a real `docker-registry`: a
//! client without a token or a valid signature cannot block real uploads (empty `POST`s only
//! ever cost a small, short-lived budget of unchecked uploads), and cannot push a real
//! bundle's events out of the spool (refusals of untrusted deliveries live in their own small
//! ring, and the journal keeps only the newest of them).

use sideload_test_support::registry as support;

use std::time::{Duration, Instant};

use support::*;

/// edge/app:v2 as a whole image with a higher sequence: a second real bundle that applies
/// after the delta one.
fn later_bundle() -> std::path::PathBuf {
    bundle(BundleSpec {
        name: "app-v2-whole-seq200.bundle",
        with_base: false,
        sequence: 200,
        ..Default::default()
    })
}

fn post_empty(daemon: &Daemon) -> HttpResponse {
    daemon.request("POST", "/sideload/v1/uploads", &[], b"")
}

#[test]
fn empty_posts_cannot_block_a_real_upload_and_operators_see_and_delete_uploads() {
    let registry = Registry::start();
    seed_v1(&registry);
    // The default budgets, except a short unchecked expiry so the sweep is seen in the test.
    let options = DaemonOptions {
        extra: "[uploads]\nunchecked_idle_expiry_secs = 3\n".into(),
        ..Default::default()
    };
    let daemon = Daemon::start(&registry, options);
    let path = bundle(BundleSpec::default());
    let bytes = std::fs::read(&path).unwrap();
    let head = head_len(&path) as usize;

    // A real upload gets its head (and some payload) in: trusted from now on.
    let real = daemon.create_upload(&path, &[]);
    let r = daemon.request(
        "PATCH",
        &format!("/sideload/v1/uploads/{real}"),
        &[("Upload-Offset", "0".into())],
        &bytes[..head + 100],
    );
    assert_eq!(r.status, 204, "{}", r.text());

    // Far more junk than max_concurrent_uploads (8): every POST is taken, none is refused.
    let mut junk = Vec::new();
    for i in 0..40 {
        let r = post_empty(&daemon);
        assert_eq!(r.status, 201, "junk POST {i}: {}", r.text());
        junk.push(r.json()["upload"].as_str().unwrap().to_owned());
    }

    // The operator sees what is open: the trusted upload and at most the per-client cap of
    // junk from this address, each with its client address and bytes held.
    let list = daemon.get_json("/sideload/v1/admin/uploads");
    let uploads = list["uploads"].as_array().unwrap();
    let trusted: Vec<_> = uploads.iter().filter(|u| u["trusted"] == true).collect();
    assert_eq!(trusted.len(), 1, "{list:#}");
    assert_eq!(trusted[0]["id"], real.as_str());
    assert_eq!(trusted[0]["held"], (head + 100) as u64);
    assert_eq!(trusted[0]["client"], "127.0.0.1");
    assert_eq!(trusted[0]["name"], "app-v2.bundle");
    let unchecked = uploads.len() - 1;
    assert!(
        (1..=4).contains(&unchecked),
        "per-client cap on unchecked uploads: {list:#}"
    );

    // The operator deletes an upload by id.
    let victim = uploads.iter().find(|u| u["trusted"] == false).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(junk.contains(&victim), "{list:#}");
    let r = daemon.request(
        "DELETE",
        &format!("/sideload/v1/admin/uploads/{victim}"),
        &[],
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let r = daemon.request("HEAD", &format!("/sideload/v1/uploads/{victim}"), &[], b"");
    assert_eq!(r.status, 404);

    // The first one resumes where it was: the junk never touched it.
    let r = daemon.request(
        "PATCH",
        &format!("/sideload/v1/uploads/{real}"),
        &[("Upload-Offset", (head + 100).to_string())],
        &bytes[head + 100..],
    );
    assert_eq!(r.status, 202, "{}", r.text());
    // A second real bundle still gets in, from the same address, right after the junk.
    let whole = later_bundle();
    let r = daemon.upload(&whole);
    assert_eq!(r.status, 202, "{}", r.text());
    for p in [&path, &whole] {
        let s = daemon.wait_state(
            &bundle_id(p),
            &["applied", "failed"],
            Duration::from_secs(120),
        );
        assert_eq!(s["bundle"]["state"], "applied", "{s:#}");
    }

    // Unchecked uploads expire within seconds here (minutes by default).
    let start = Instant::now();
    loop {
        let list = daemon.get_json("/sideload/v1/admin/uploads");
        if list["uploads"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "unchecked uploads did not expire: {list:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn the_trusted_budget_is_separate_and_a_full_unchecked_budget_evicts_the_stalest() {
    let registry = Registry::start();
    seed_v1(&registry);
    let options = DaemonOptions {
        extra: "[uploads]\nmax_concurrent_uploads = 1\nmax_unchecked_uploads = 3\nmax_unchecked_per_client = 100\n".into(),
        ..Default::default()
    };
    let daemon = Daemon::start(&registry, options);
    let path = bundle(BundleSpec::default());
    let bytes = std::fs::read(&path).unwrap();
    let head = head_len(&path) as usize;
    let real = daemon.create_upload(&path, &[]);
    let r = daemon.request(
        "PATCH",
        &format!("/sideload/v1/uploads/{real}"),
        &[("Upload-Offset", "0".into())],
        &bytes[..head],
    );
    assert_eq!(r.status, 204, "{}", r.text());

    // Three unchecked fill the budget; a fourth evicts the stalest of them, never the trusted one.
    let first = post_empty(&daemon).json()["upload"]
        .as_str()
        .unwrap()
        .to_owned();
    std::thread::sleep(Duration::from_millis(1100));
    for _ in 0..3 {
        assert_eq!(post_empty(&daemon).status, 201);
    }
    let r = daemon.request("HEAD", &format!("/sideload/v1/uploads/{first}"), &[], b"");
    assert_eq!(r.status, 404, "the stalest unchecked upload was evicted");
    assert_eq!(daemon.offset(&real), Some(head as u64));
    let list = daemon.get_json("/sideload/v1/admin/uploads");
    assert_eq!(list["uploads"].as_array().unwrap().len(), 4, "{list:#}");

    // A second trusted head while the trusted budget (1) is full: 429, and its bytes stay.
    let whole = later_bundle();
    let wbytes = std::fs::read(&whole).unwrap();
    let whead = head_len(&whole) as usize;
    let second = daemon.create_upload(&whole, &[]);
    let r = daemon.request(
        "PATCH",
        &format!("/sideload/v1/uploads/{second}"),
        &[("Upload-Offset", "0".into())],
        &wbytes[..whead],
    );
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "too_many_uploads");
    // The first finishes; then the second is taken.
    let r = daemon.request(
        "PATCH",
        &format!("/sideload/v1/uploads/{real}"),
        &[("Upload-Offset", head.to_string())],
        &bytes[head..],
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let r = daemon.request(
        "PATCH",
        &format!("/sideload/v1/uploads/{second}"),
        &[("Upload-Offset", whead.to_string())],
        &wbytes[whead..],
    );
    assert_eq!(r.status, 202, "{}", r.text());
}

/// An event receiver on `port` in a thread: accepts POSTs (keep-alive) and records each body.
fn start_receiver(port: u16) -> std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>> {
    use std::io::{BufRead, BufReader, Read, Write};
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let sink = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let sink = sink.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(stream);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut len = 0usize;
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        let h = h.trim_end();
                        if h.is_empty() {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0u8; len];
                    if r.read_exact(&mut body).is_err() {
                        return;
                    }
                    sink.lock()
                        .unwrap()
                        .push(serde_json::from_slice(&body).unwrap());
                    if r.get_mut()
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    got
}

#[test]
fn junk_refusals_never_push_a_real_bundles_events_out_and_the_journal_stays_bounded() {
    const JUNK: usize = 1500;
    let registry = Registry::start();
    seed_v1(&registry);
    // The receiver is down (nothing listens on its port) until the junk is in.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = DaemonOptions {
        extra: format!(
            "[events]\nurl = \"http://127.0.0.1:{port}/events\"\nretry_initial_secs = 0.2\nretry_max_secs = 0.5\nmax_events = 50\n"
        ),
        ..Default::default()
    };
    let daemon = Daemon::start(&registry, options);
    let path = bundle(BundleSpec::default());
    let id = bundle_id(&path);
    let r = daemon.upload(&path);
    assert_eq!(r.status, 202, "{}", r.text());
    let s = daemon.wait_state(&id, &["applied", "failed"], Duration::from_secs(120));
    assert_eq!(s["bundle"]["state"], "applied", "{s:#}");

    // Junk: 32 bytes that are not a bundle, refused as soon as they are in.
    let started = Instant::now();
    for i in 0..JUNK {
        let u = post_empty(&daemon);
        assert_eq!(u.status, 201, "junk {i}: {}", u.text());
        let u = u.json()["upload"].as_str().unwrap().to_owned();
        let r = daemon.request(
            "PATCH",
            &format!("/sideload/v1/uploads/{u}"),
            &[("Upload-Offset", "0".into())],
            &[b'x'; 32],
        );
        assert_eq!(r.status, 403, "junk {i}: {}", r.text());
    }
    eprintln!("{JUNK} junk refusals took {:?}", started.elapsed());

    // The journal keeps the newest refusals of untrusted deliveries, not every one.
    let journal = daemon.get_json("/sideload/v1/journal?limit=100000");
    let refused = journal["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["state"] == "refused")
        .count();
    assert!(refused <= 1000, "{refused} refusals kept in the journal");
    let metrics = daemon.request("GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains(&format!("sideload_untrusted_refusals_total {JUNK}")),
        "{metrics}"
    );

    // The receiver comes up: every event of the real bundle arrives, in order, first.
    let got = start_receiver(port);
    let start = Instant::now();
    while daemon.get_json("/sideload/v1/health")["events_pending"] != 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "events still pending; log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let got = got.lock().unwrap().clone();
    let real: Vec<&str> = got
        .iter()
        .filter(|e| e["bundle"] == id.as_str())
        .map(|e| e["state"].as_str().unwrap())
        .collect();
    assert_eq!(real, ["queued", "applying", "applied"], "{got:#?}");
    let seqs: Vec<u64> = got.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(got.len() <= 50, "{} events delivered", got.len());
    // What was not announced one by one is counted in the newest refusal event.
    let last = got.last().unwrap();
    assert_eq!(last["state"], "refused", "{last:#}");
    let dropped = last["details"]["earlier_refusals_dropped"]
        .as_u64()
        .unwrap();
    let refusals = got.iter().filter(|e| e["state"] == "refused").count();
    assert_eq!(dropped as usize + refusals, JUNK, "{last:#}");
}
