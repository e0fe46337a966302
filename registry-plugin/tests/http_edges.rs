//! The upload API at its edges, as a hostile or careless client meets it: malformed offsets,
//! coded bodies, a head that declares more than the limits, methods a path does not take,
//! and bundle names that are too long, unsafe or not ASCII. Every refusal comes before a
//! byte of the body is stored.

use sideload_test_support::registry as support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::*;

fn start() -> (Registry, Daemon) {
    let registry = Registry::start();
    seed_v1(&registry);
    let daemon = Daemon::start(&registry, DaemonOptions::default());
    (registry, daemon)
}

fn post(daemon: &Daemon, headers: &[(&str, String)]) -> HttpResponse {
    daemon.request("POST", "/sideload/v1/uploads", headers, b"")
}

fn new_upload(daemon: &Daemon) -> String {
    let r = post(daemon, &[]);
    assert_eq!(r.status, 201, "{}", r.text());
    format!(
        "/sideload/v1/uploads/{}",
        r.json()["upload"].as_str().unwrap()
    )
}

#[test]
fn malformed_upload_offsets_are_refused_and_nothing_is_appended() {
    let (_registry, daemon) = start();
    let bundle = std::fs::read(bundle(BundleSpec::default())).unwrap();
    let url = new_upload(&daemon);
    for method in ["PUT", "PATCH"] {
        for bad in ["-1", "banana", "+0", "0x0", "1e3", "18446744073709551616"] {
            let r = daemon.request(
                method,
                &url,
                &[("Upload-Offset", bad.into())],
                &bundle[..64],
            );
            assert_eq!(r.status, 400, "{method} Upload-Offset {bad}: {}", r.text());
            assert_eq!(r.json()["error"]["code"], "bad_request");
            assert!(
                r.json()["error"]["reason"]
                    .as_str()
                    .unwrap()
                    .contains("Upload-Offset"),
                "{}",
                r.text()
            );
            assert_eq!(daemon.offset(url.rsplit('/').next().unwrap()), Some(0));
        }
    }
    // The upload is unharmed: the real bytes still go in from 0.
    let r = daemon.request("PATCH", &url, &[("Upload-Offset", "0".into())], &bundle);
    assert_eq!(r.status, 202, "{}", r.text());
}

/// Sends a request head and a chunked body of `body` on a raw connection; returns the status
/// and the body of the answer.
fn chunked(addr: &str, path: &str, head: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req =
        format!("PATCH {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{head}\r\n")
            .into_bytes();
    for chunk in body.chunks(4096) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    // The device may answer before reading the body; a write error then is fine.
    let _ = s.write_all(&req);
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let mut rest = String::new();
    let _ = r.read_to_string(&mut rest);
    let code = status.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, rest)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = std::process::Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = gz.stdin.take().unwrap();
    let data = bytes.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let out = gz.wait_with_output().unwrap();
    feeder.join().unwrap();
    out.stdout
}

#[test]
fn coded_bodies_are_refused_not_stored_coded() {
    let (_registry, daemon) = start();
    let bundle = std::fs::read(bundle(BundleSpec::default())).unwrap();
    let coded = gzip(&bundle);
    let url = new_upload(&daemon);
    let id = url.rsplit('/').next().unwrap().to_owned();
    for te in ["gzip, chunked", "deflate, chunked", "chunked, chunked"] {
        let (status, answer) = chunked(
            &daemon.addr,
            &url,
            &format!("Upload-Offset: 0\r\nTransfer-Encoding: {te}\r\n"),
            &coded,
        );
        assert_eq!(status, 501, "Transfer-Encoding {te}: {answer}");
        assert!(answer.contains("unsupported_transfer_coding"), "{answer}");
        assert_eq!(daemon.offset(&id), Some(0), "{te}");
    }
    // A content coding on the bundle's bytes: 415, and which coding is taken.
    let r = daemon.request(
        "PATCH",
        &url,
        &[
            ("Upload-Offset", "0".into()),
            ("Content-Encoding", "gzip".into()),
        ],
        &coded,
    );
    assert_eq!(r.status, 415, "{}", r.text());
    assert_eq!(r.header("accept-encoding"), Some("identity"));
    assert_eq!(daemon.offset(&id), Some(0));
    // Plain chunked is the bundle's bytes, as before.
    let (status, answer) = chunked(
        &daemon.addr,
        &url,
        "Upload-Offset: 0\r\nTransfer-Encoding: chunked\r\n",
        &bundle,
    );
    assert_eq!(status, 202, "{answer}");
}

/// A bundle's fixed 32-byte header declaring these lengths (nothing behind it).
fn declaring(version: u16, statement: u32, slot: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(b"SIDELOAD");
    h.extend_from_slice(&version.to_be_bytes());
    h.extend_from_slice(&0u16.to_be_bytes());
    h.extend_from_slice(&statement.to_be_bytes());
    h.extend_from_slice(&slot.to_be_bytes());
    h.extend_from_slice(&[0u8; 12]);
    h
}

#[test]
fn a_head_declaring_more_than_the_limits_is_refused_at_byte_32() {
    let (_registry, daemon) = start();
    // A header that declares a statement one byte over the 1 MiB limit and a small slot:
    // the whole head would still fit under statement + slot limits together.
    let header = declaring(2, (1 << 20) + 1, 401);
    assert_eq!(header.len(), 32);
    let mut body = header.clone();
    body.resize(32 + (1 << 20) + 4096, b'x');
    let before = daemon.upload_bytes_total();
    let r = daemon.create_upload(std::path::Path::new("declares-too-much.bundle"), &[]);
    let answer = daemon.request(
        "PATCH",
        &format!("/sideload/v1/uploads/{r}"),
        &[("Upload-Offset", "0".into())],
        &body,
    );
    assert_eq!(answer.status, 403, "{}", answer.text());
    assert_eq!(answer.json()["error"]["code"], "over_limit");
    let stored = daemon.upload_bytes_total() - before;
    assert!(
        stored <= 32,
        "{stored} bytes were stored before the header's lengths were checked"
    );
    // The same for a signature slot over its limit, and for an unknown version.
    for (version, statement, slot, code) in [
        (2u16, 100u32, (64u32 << 10) + 1, "over_limit"),
        (9, 100, 100, "unsupported_version"),
    ] {
        let mut h = declaring(version, statement, slot);
        h.resize(4096, b'x');
        let before = daemon.upload_bytes_total();
        let id = daemon.create_upload(std::path::Path::new("declares.bundle"), &[]);
        let answer = daemon.request(
            "PATCH",
            &format!("/sideload/v1/uploads/{id}"),
            &[("Upload-Offset", "0".into())],
            &h,
        );
        assert_eq!(answer.status, 403, "{}", answer.text());
        assert_eq!(answer.json()["error"]["code"], code);
        assert!(daemon.upload_bytes_total() - before <= 32);
    }
}

/// The inbox (a folder another program copies into) judges a file's header as the upload API
/// does: a head that declares more than the limits goes to quarantine as soon as its 32 bytes
/// are there, not after a megabyte was copied, even while the file still grows.
#[test]
fn an_inbox_file_declaring_more_than_the_limits_is_quarantined_at_byte_32() {
    let (_registry, daemon) = start();
    let header = declaring(2, (1 << 20) + 1, 401);
    let path = daemon
        .data_dir
        .join("inbox")
        .join("declares-too-much.bundle");
    std::fs::write(&path, &header).unwrap();
    let reason = daemon
        .data_dir
        .join("quarantine")
        .join("declares-too-much.bundle.reason.json");
    // Keep the file growing, as a slow copy would, so it never looks finished.
    let start = std::time::Instant::now();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    while !reason.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not quarantined while growing; log:\n{}",
            daemon.log()
        );
        if file.write_all(&[b'x'; 1000]).is_err() {
            // Moved to quarantine between the check and the write.
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    while !reason.exists() {
        assert!(start.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(100));
    }
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&reason).unwrap()).unwrap();
    assert!(v.to_string().contains("statement"), "{v}");
}

#[test]
fn every_path_answers_405_with_allow_to_a_method_it_does_not_take() {
    let (_registry, daemon) = start();
    let id = daemon.create_upload(std::path::Path::new("x.bundle"), &[]);
    let upload = format!("/sideload/v1/uploads/{id}");
    let cases: &[(&str, &str, &str)] = &[
        ("GET", "/sideload/v1/uploads", "POST"),
        ("PUT", "/sideload/v1/uploads", "POST"),
        ("PATCH", "/sideload/v1/uploads", "POST"),
        ("DELETE", "/sideload/v1/uploads", "POST"),
        ("OPTIONS", "/sideload/v1/uploads", "POST"),
        ("POST", &upload, "GET, HEAD, PATCH, PUT, DELETE"),
        ("POST", "/sideload/v1/bundles", "GET, HEAD"),
        ("DELETE", "/sideload/v1/bundles/sha256:00", "GET, HEAD"),
        ("PUT", "/sideload/v1/journal", "GET, HEAD"),
        ("POST", "/sideload/v1/inventory", "GET, HEAD"),
        ("POST", "/sideload/v1/health", "GET, HEAD"),
        ("POST", "/sideload/v1/admin/uploads", "GET, HEAD"),
        ("GET", &format!("/sideload/v1/admin/uploads/{id}"), "DELETE"),
        ("POST", "/metrics", "GET, HEAD"),
    ];
    for (method, path, allow) in cases {
        let r = daemon.request(method, path, &[], b"");
        assert_eq!(r.status, 405, "{method} {path}: {}", r.text());
        assert_eq!(r.header("allow"), Some(*allow), "{method} {path}");
        assert_eq!(r.json()["error"]["code"], "method_not_allowed");
    }
    // HEAD goes wherever GET does; unknown paths stay 404.
    assert_eq!(
        daemon
            .request("HEAD", "/sideload/v1/health", &[], b"")
            .status,
        200
    );
    assert_eq!(daemon.request("HEAD", "/metrics", &[], b"").status, 200);
    assert_eq!(
        daemon
            .request("GET", "/sideload/v1/nothing", &[], b"")
            .status,
        404
    );
    assert_eq!(daemon.request("GET", "/nothing", &[], b"").status, 404);
    // Nothing above touched the upload.
    assert_eq!(daemon.offset(&id), Some(0));
}

#[test]
fn bundle_names_are_checked_and_utf8_names_reach_the_journal() {
    let (_registry, daemon) = start();
    let name_of = |value: String| post(&daemon, &[("Bundle-Name", value)]);
    // 256 bytes: refused, naming the limit, and no upload is made.
    let active = daemon.get_json("/sideload/v1/health")["uploads_active"].clone();
    for value in [
        "n".repeat(256),
        format!("{}xy", "%C3%BC".repeat(127)),
        "a%2Fb.bundle".into(),
        "a/b.bundle".into(),
        "a%0Ab.bundle".into(),
        "%FF.bundle".into(),
    ] {
        let r = name_of(value.clone());
        assert_eq!(r.status, 400, "{value}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "bad_bundle_name", "{value}");
    }
    let long = name_of("n".repeat(256));
    assert!(long.text().contains("255"), "{}", long.text());
    assert_eq!(
        daemon.get_json("/sideload/v1/health")["uploads_active"],
        active
    );
    // 255 bytes is taken as it is.
    let r = name_of("n".repeat(255));
    assert_eq!(r.status, 201, "{}", r.text());

    // A percent-encoded UTF-8 name is the delivery's name in the journal and the records.
    let path = bundle(BundleSpec::default());
    let id = bundle_id(&path);
    let r = post(&daemon, &[("Bundle-Name", "%C3%BC-app%20v2.bundle".into())]);
    assert_eq!(r.status, 201, "{}", r.text());
    let url = r.json()["location"].as_str().unwrap().to_owned();
    let r = daemon.request(
        "PATCH",
        &url,
        &[("Upload-Offset", "0".into())],
        &std::fs::read(&path).unwrap(),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let v = daemon.wait_state(&id, &["applied", "failed"], Duration::from_secs(60));
    assert_eq!(v["bundle"]["name"], "\u{fc}-app v2.bundle", "{v}");
    assert_eq!(v["history"][0]["name"], "\u{fc}-app v2.bundle", "{v}");

    // A refusal is journaled under the decoded name too.
    let stranger = bundle(BundleSpec {
        name: "stranger.bundle",
        signer: Signer::Stranger,
        ..Default::default()
    });
    let r = post(&daemon, &[("Bundle-Name", "%C3%A9tranger.bundle".into())]);
    let url = r.json()["location"].as_str().unwrap().to_owned();
    let r = daemon.request(
        "PATCH",
        &url,
        &[("Upload-Offset", "0".into())],
        &std::fs::read(&stranger).unwrap(),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"]["bundle"], "\u{e9}tranger.bundle");
    daemon.assert_journaled("refused", "\u{e9}tranger.bundle");
}
