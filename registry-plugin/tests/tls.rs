//! TLS on the daemon's second listener and the optional upload token, with real clients:
//! `curl` (OpenSSL) and `skopeo` (Go's TLS) against certificates made here with rcgen, a real
//! `docker-registry` behind the daemon, and real bundles.

use sideload_test_support::registry as support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use support::*;
use tempfile::TempDir;

const TOKEN: &str = "0123456789abcdef-test-token";

/// A test CA and a server certificate it signed for `localhost` and `127.0.0.1`.
struct Pki {
    dir: TempDir,
    /// The CA certificate (what clients trust).
    ca: PathBuf,
    /// Server chain: leaf, then the CA.
    cert: PathBuf,
    /// The leaf's key (PKCS#8).
    key: PathBuf,
    /// DER of the leaf.
    leaf_der: Vec<u8>,
}

fn make_pki(name: &str) -> Pki {
    let dir = tempfile::Builder::new().prefix("pki-").tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "test device");
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.use_authority_key_identifier_extension = true;
    let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
    let pki = Pki {
        ca: dir.path().join("ca.pem"),
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
        leaf_der: leaf.der().to_vec(),
        dir,
    };
    std::fs::write(&pki.ca, ca.pem()).unwrap();
    std::fs::write(&pki.cert, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
    std::fs::write(&pki.key, leaf_key.serialize_pem()).unwrap();
    std::fs::set_permissions(&pki.key, std::fs::Permissions::from_mode(0o600)).unwrap();
    pki
}

/// `sha256:HEX` of DER bytes, computed here independently of the daemon.
fn sha256_pin(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn tls_section(pki: &Pki) -> String {
    format!(
        "[tls]\nlisten = \"127.0.0.1:0\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        pki.cert.display(),
        pki.key.display()
    )
}

fn token_file(dir: &Path) -> PathBuf {
    let path = dir.join("upload-token");
    std::fs::write(&path, format!("  {TOKEN}\n")).unwrap();
    path
}

fn port(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// What curl did.
#[derive(Debug)]
struct Curl {
    /// curl's exit code (0 = the transfer worked, whatever the HTTP status).
    exit: i32,
    /// HTTP status of the final answer (0 when there was none).
    status: u16,
    /// Bytes of request body curl sent.
    uploaded: u64,
    /// Response headers (all blocks), as received.
    headers: String,
    body: Vec<u8>,
    stderr: String,
}

impl Curl {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().rev().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

fn curl(args: &[String]) -> Curl {
    require_tool("curl", "curl");
    let dir = tempfile::tempdir().unwrap();
    let (headers, body) = (dir.path().join("headers"), dir.path().join("body"));
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "120",
            "-w",
            "%{http_code} %{size_upload}",
        ])
        .arg("-D")
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    let written = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut parts = written.split_whitespace();
    Curl {
        exit: out.status.code().unwrap_or(-1),
        status: parts.next().and_then(|s| s.parse().ok()).unwrap_or(0),
        uploaded: parts.next().and_then(|s| s.parse().ok()).unwrap_or(0),
        headers: std::fs::read_to_string(&headers).unwrap_or_default(),
        body: std::fs::read(&body).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// curl against the daemon's TLS listener as `https://HOST:PORT`, trusting `ca`.
fn tls_curl(d: &Daemon, host: &str, ca: &Path, args: &[&str], path: &str) -> Curl {
    let addr = d
        .tls_addr
        .as_deref()
        .expect("the daemon has a TLS listener");
    let port = port(addr);
    let mut all = vec![
        "--resolve".to_owned(),
        format!("{host}:{port}:127.0.0.1"),
        "--cacert".to_owned(),
        ca.display().to_string(),
    ];
    all.extend(args.iter().map(|s| s.to_string()));
    all.push(format!("https://{host}:{port}{path}"));
    curl(&all)
}

fn bearer() -> String {
    format!("Authorization: Bearer {TOKEN}")
}

/// Files (not directories) under the daemon's upload directory.
fn stored_uploads(d: &Daemon) -> Vec<String> {
    std::fs::read_dir(d.data_dir.join("uploads"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn assert_unauthorized(r: &Curl, challenge_error: Option<&str>) {
    assert_eq!(r.exit, 0, "{r:?}");
    assert_eq!(r.status, 401, "{r:?}");
    let challenge = r.header("www-authenticate").expect("WWW-Authenticate");
    match challenge_error {
        None => assert_eq!(challenge, "Bearer realm=\"sideload\""),
        Some(e) => assert_eq!(
            challenge,
            format!("Bearer realm=\"sideload\", error=\"{e}\"")
        ),
    }
    let v = r.json();
    assert_eq!(v["error"]["code"], "unauthorized", "{v}");
    assert!(
        v["error"]["reason"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("token"),
        "{v}"
    );
    assert!(
        v["error"]["advice"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer"),
        "{v}"
    );
}

#[test]
fn a_bundle_uploaded_over_tls_with_the_token_is_applied_and_pulls_over_tls() {
    let registry = Registry::start();
    seed_v1(&registry);
    let pki = make_pki("upload");
    let token = token_file(pki.dir.path());
    let daemon = Daemon::start(
        &registry,
        DaemonOptions {
            extra: format!(
                "{}[auth]\nupload_token_file = \"{}\"\nexempt_loopback = false\n",
                tls_section(&pki),
                token.display()
            ),
            ..Default::default()
        },
    );
    let log = daemon.log();
    assert!(
        log.contains(&sha256_pin(&pki.leaf_der)),
        "pin not logged:\n{log}"
    );
    assert!(!log.contains(TOKEN), "the token is in the log:\n{log}");

    let path = bundle(BundleSpec::default());
    let id = bundle_id(&path);
    let name = format!(
        "Bundle-Name: {}",
        path.file_name().unwrap().to_string_lossy()
    );
    let created = tls_curl(
        &daemon,
        "localhost",
        &pki.ca,
        &["-X", "POST", "-H", &name, "-H", &bearer()],
        "/sideload/v1/uploads",
    );
    assert_eq!((created.exit, created.status), (0, 201), "{created:?}");
    let upload = created.json()["upload"].as_str().unwrap().to_owned();
    // Resumable as over plain HTTP: send the head first, then the rest from the offset.
    let bytes = std::fs::read(&path).unwrap();
    let split = head_len(&path) as usize + 10;
    let part = tempfile::tempdir().unwrap();
    let (first, rest) = (part.path().join("first"), part.path().join("rest"));
    std::fs::write(&first, &bytes[..split]).unwrap();
    std::fs::write(&rest, &bytes[split..]).unwrap();
    let upload_path = format!("/sideload/v1/uploads/{upload}");
    let r = tls_curl(
        &daemon,
        "localhost",
        &pki.ca,
        &[
            "-X",
            "PATCH",
            "-H",
            "Upload-Offset: 0",
            "-H",
            &bearer(),
            "--data-binary",
            &format!("@{}", first.display()),
        ],
        &upload_path,
    );
    assert_eq!((r.exit, r.status), (0, 204), "{r:?}");
    assert_eq!(r.header("upload-offset"), Some(split.to_string()));
    let r = tls_curl(
        &daemon,
        "localhost",
        &pki.ca,
        &["-I", "-H", &bearer()],
        &upload_path,
    );
    assert_eq!(r.header("upload-offset"), Some(split.to_string()), "{r:?}");
    let r = tls_curl(
        &daemon,
        "localhost",
        &pki.ca,
        &[
            "-X",
            "PATCH",
            "-H",
            &format!("Upload-Offset: {split}"),
            "-H",
            &bearer(),
            "--data-binary",
            &format!("@{}", rest.display()),
        ],
        &upload_path,
    );
    assert_eq!((r.exit, r.status), (0, 202), "{r:?}");
    assert_eq!(r.json()["bundle"], id.as_str());
    let status = daemon.wait_state(&id, &["applied", "failed"], Duration::from_secs(120));
    assert_eq!(status["bundle"]["state"], "applied", "{status:#}");
    assert_eq!(status["bundle"]["source"], "upload");

    // Pulls over TLS need no token; skopeo (Go's TLS stack) trusts the CA from a cert dir.
    let certs = tempfile::tempdir().unwrap();
    std::fs::copy(&pki.ca, certs.path().join("ca.crt")).unwrap();
    let tls_port = port(daemon.tls_addr.as_deref().unwrap());
    let inspected: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--cert-dir",
        certs.path().to_str().unwrap(),
        &format!("docker://localhost:{tls_port}/edge/app:v2"),
    ]))
    .unwrap();
    assert_eq!(inspected["Digest"], status["bundle"]["manifest_digest"]);
    let r = tls_curl(
        &daemon,
        "127.0.0.1",
        &pki.ca,
        &[
            "-I",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
        ],
        "/v2/edge/app/manifests/v2",
    );
    assert_eq!((r.exit, r.status), (0, 200), "{r:?}");
    assert_eq!(
        r.header("docker-content-digest").as_deref(),
        status["bundle"]["manifest_digest"].as_str()
    );
    assert!(!daemon.log().contains(TOKEN), "the token is in the log");
}

#[test]
fn without_the_token_uploads_get_401_and_nothing_is_stored() {
    let registry = Registry::start();
    let pki = make_pki("refuse");
    let token = token_file(pki.dir.path());
    let daemon = Daemon::start(
        &registry,
        DaemonOptions {
            extra: format!(
                "{}[auth]\nupload_token_file = \"{}\"\nexempt_loopback = false\n",
                tls_section(&pki),
                token.display()
            ),
            ..Default::default()
        },
    );
    let path = bundle(BundleSpec::default());
    let name = format!(
        "Bundle-Name: {}",
        path.file_name().unwrap().to_string_lossy()
    );

    // No token, a wrong one, and another scheme: refused with the challenge, over TLS.
    let r = tls_curl(
        &daemon,
        "localhost",
        &pki.ca,
        &["-X", "POST", "-H", &name],
        "/sideload/v1/uploads",
    );
    assert_unauthorized(&r, None);
    let r = tls_curl(
        &daemon,
        "localhost",
        &pki.ca,
        &[
            "-X",
            "POST",
            "-H",
            &name,
            "-H",
            &format!("Authorization: Bearer {TOKEN}x"),
        ],
        "/sideload/v1/uploads",
    );
    assert_unauthorized(&r, Some("invalid_token"));
    let r = tls_curl(
        &daemon,
        "localhost",
        &pki.ca,
        &["-X", "POST", "-u", &format!("user:{TOKEN}")],
        "/sideload/v1/uploads",
    );
    assert_unauthorized(&r, Some("invalid_request"));
    // Every method on every upload URL, however the path is spelled.
    for (method, path) in [
        ("HEAD", "/sideload/v1/uploads/some-id"),
        ("GET", "/sideload/v1/uploads/some-id"),
        ("DELETE", "/sideload/v1/uploads/some-id"),
        ("PUT", "/sideload/v1/uploads/some-id"),
        ("POST", "/sideload/v1//uploads/"),
    ] {
        let r = daemon.request(method, path, &[], b"");
        assert_eq!(r.status, 401, "{method} {path} on the plain listener");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Bearer realm=\"sideload\"")
        );
    }

    // A refused PATCH does not read its body: curl waits for 100 Continue, gets the 401
    // instead, and sends nothing.
    let r = tls_curl(
        &daemon,
        "localhost",
        &pki.ca,
        &[
            "-X",
            "PATCH",
            "-H",
            "Upload-Offset: 0",
            "-H",
            "Expect: 100-continue",
            "--expect100-timeout",
            "30",
            "--data-binary",
            &format!("@{}", path.display()),
        ],
        "/sideload/v1/uploads/some-id",
    );
    assert_unauthorized(&r, None);
    assert_eq!(r.uploaded, 0, "curl sent the body of a refused upload");
    // A whole bundle sent in one go on the plain listener (loopback is not exempt here).
    let bytes = std::fs::read(&path).unwrap();
    let r = daemon.request(
        "POST",
        "/sideload/v1/uploads",
        &[("Bundle-Name", "app-v2.bundle".into())],
        b"",
    );
    assert_eq!(r.status, 401);
    let r = daemon.request(
        "PATCH",
        "/sideload/v1/uploads/some-id",
        &[("Upload-Offset", "0".into())],
        &bytes[..4096.min(bytes.len())],
    );
    assert_eq!(r.status, 401);

    assert_eq!(stored_uploads(&daemon), Vec::<String>::new());
    assert_eq!(
        daemon.get_json("/sideload/v1/bundles")["bundles"],
        serde_json::json!([])
    );
    let metrics = daemon.request("GET", "/metrics", &[], b"");
    assert_eq!(metrics.status, 200);
    assert!(metrics.text().contains("\nsideload_upload_bytes_total 0\n"));
    // Never needing the token: health, metrics, pulls, and (without protect_status) status.
    let r = tls_curl(&daemon, "localhost", &pki.ca, &[], "/sideload/v1/health");
    assert_eq!(r.status, 200, "{r:?}");
    let r = tls_curl(&daemon, "localhost", &pki.ca, &[], "/v2/");
    assert_eq!(r.status, 200, "{r:?}");
    let r = tls_curl(&daemon, "localhost", &pki.ca, &[], "/sideload/v1/journal");
    assert_eq!(r.status, 200, "{r:?}");

    // With the token the same upload works, over TLS.
    let created = tls_curl(
        &daemon,
        "localhost",
        &pki.ca,
        &["-X", "POST", "-H", &name, "-H", &bearer()],
        "/sideload/v1/uploads",
    );
    assert_eq!(created.status, 201, "{created:?}");
    assert!(!stored_uploads(&daemon).is_empty());
    let log = daemon.log();
    assert!(log.contains("request refused: upload token"), "{log}");
    assert!(!log.contains(TOKEN), "the token is in the log:\n{log}");
}

#[test]
fn protect_status_covers_the_status_api_but_not_health_metrics_or_pulls() {
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path());
    let daemon = Daemon::start(
        &registry,
        DaemonOptions {
            extra: format!(
                "[auth]\nupload_token_file = \"{}\"\nexempt_loopback = false\nprotect_status = true\n",
                token.display()
            ),
            ..Default::default()
        },
    );
    let auth = [("Authorization", format!("Bearer {TOKEN}"))];
    for path in [
        "/sideload/v1/bundles",
        "/sideload/v1/bundles/sha256:00",
        "/sideload/v1/journal",
        "/sideload/v1/inventory",
    ] {
        let r = daemon.request("GET", path, &[], b"");
        assert_eq!(r.status, 401, "{path}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "unauthorized");
        let r = daemon.request("GET", path, &auth, b"");
        assert_ne!(r.status, 401, "{path} with the token: {}", r.text());
    }
    for path in ["/sideload/v1/health", "/metrics", "/v2/"] {
        let r = daemon.request("GET", path, &[], b"");
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
}

#[test]
fn loopback_clients_need_no_token_by_default() {
    let registry = Registry::start();
    seed_v1(&registry);
    let pki = make_pki("loopback");
    let token = token_file(pki.dir.path());
    let daemon = Daemon::start(
        &registry,
        DaemonOptions {
            extra: format!(
                "{}[auth]\nupload_token_file = \"{}\"\n",
                tls_section(&pki),
                token.display()
            ),
            ..Default::default()
        },
    );
    // The plain listener, no token, as the USB loader on the device uploads.
    let path = bundle(BundleSpec::default());
    let id = bundle_id(&path);
    let r = daemon.upload(&path);
    assert_eq!(r.status, 202, "{}", r.text());
    let status = daemon.wait_state(&id, &["applied", "failed"], Duration::from_secs(120));
    assert_eq!(status["bundle"]["state"], "applied", "{status:#}");
    // The exemption is about the peer, not the listener: loopback over TLS is exempt too.
    let r = tls_curl(
        &daemon,
        "localhost",
        &pki.ca,
        &["-X", "POST"],
        "/sideload/v1/uploads",
    );
    assert_eq!(r.status, 201, "{r:?}");
}

#[test]
fn the_tls_port_refuses_plain_http_and_clients_that_do_not_trust_the_certificate() {
    let registry = Registry::start();
    let pki = make_pki("refuse-plain");
    let other = make_pki("other");
    let daemon = Daemon::start(
        &registry,
        DaemonOptions {
            extra: tls_section(&pki),
            ..Default::default()
        },
    );
    let tls_addr = daemon.tls_addr.clone().expect("TLS listener");
    assert_ne!(tls_addr, daemon.addr);

    // Plain HTTP to the TLS port: no HTTP answer, the connection just ends.
    let mut s = TcpStream::connect(&tls_addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"GET /sideload/v1/health HTTP/1.1\r\nHost: device\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP got an HTTP answer on the TLS port: {}",
        String::from_utf8_lossy(&answer)
    );
    let r = curl(&[format!("http://{tls_addr}/sideload/v1/health")]);
    assert_ne!(r.exit, 0, "{r:?}");
    assert_eq!(r.status, 0, "{r:?}");

    // A client that trusts another CA refuses the certificate (curl: 60), and so does one that
    // trusts the CA but asks for a name the certificate does not have.
    let r = tls_curl(&daemon, "localhost", &other.ca, &[], "/sideload/v1/health");
    assert_eq!((r.exit, r.status), (60, 0), "{r:?}");
    assert!(r.stderr.contains("certificate"), "{r:?}");
    let r = tls_curl(
        &daemon,
        "device.invalid",
        &pki.ca,
        &[],
        "/sideload/v1/health",
    );
    assert_eq!((r.exit, r.status), (60, 0), "{r:?}");

    // The right CA works, by name and by address, and the daemon is not worse for the above.
    let r = tls_curl(&daemon, "localhost", &pki.ca, &[], "/sideload/v1/health");
    assert_eq!((r.exit, r.status), (0, 200), "{r:?}");
    assert_eq!(r.json()["status"], "ok");
    let r = tls_curl(
        &daemon,
        "127.0.0.1",
        &pki.ca,
        &["--http1.1"],
        "/sideload/v1/health",
    );
    assert_eq!((r.exit, r.status), (0, 200), "{r:?}");
    // The plain listener serves the same routes.
    assert_eq!(
        daemon
            .request("GET", "/sideload/v1/health", &[], b"")
            .status,
        200
    );
    let log = daemon.log();
    assert!(log.contains("TLS handshake failed"), "{log}");
    assert!(log.contains(&sha256_pin(&pki.leaf_der)), "{log}");
}

#[test]
fn a_stop_is_not_held_by_a_client_that_never_finishes_its_handshake() {
    let registry = Registry::start();
    let pki = make_pki("stop");
    let mut daemon = Daemon::start(
        &registry,
        DaemonOptions {
            extra: tls_section(&pki),
            ..Default::default()
        },
    );
    // Connected, but not a byte of TLS: the handshake waits for this client (30 s).
    let mut silent = TcpStream::connect(daemon.tls_addr.as_deref().unwrap()).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    assert_eq!(
        daemon
            .request("GET", "/sideload/v1/health", &[], b"")
            .status,
        200
    );
    let started = Instant::now();
    let status = daemon.stop();
    assert!(status.success(), "{status:?}\n{}", daemon.log());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stop took {:?}\n{}",
        started.elapsed(),
        daemon.log()
    );
    // The daemon had taken the connection and closed it (a connection still in the listen
    // queue would be reset instead).
    let mut buf = [0u8; 16];
    assert!(
        matches!(silent.read(&mut buf), Ok(0)),
        "connection not closed cleanly"
    );
}

#[test]
fn self_signed_makes_a_certificate_once_and_logs_its_pin() {
    let registry = Registry::start();
    let mut daemon = Daemon::start(
        &registry,
        DaemonOptions {
            extra: "[tls]\nlisten = \"127.0.0.1:0\"\nself_signed = true\nsubject_alt_names = [\"sideload.test\", \"10.9.8.7\"]\n"
                .into(),
            ..Default::default()
        },
    );
    let cert = daemon.data_dir.join("tls/cert.pem");
    let key = daemon.data_dir.join("tls/key.pem");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key mode {mode:o}");
    let cert_pem = std::fs::read(&cert).unwrap();
    let key_pem = std::fs::read(&key).unwrap();
    use rustls_pki_types::pem::PemObject;
    let chain: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(chain.len(), 1);
    let pin = sha256_pin(&chain[0]);
    let log = daemon.log();
    assert_eq!(
        log.matches("made a self-signed TLS certificate").count(),
        1,
        "{log}"
    );
    assert!(log.contains(&format!("sideload push --pin {pin}")), "{log}");

    // The served certificate is that file: curl trusting exactly it gets through, under every
    // name the certificate was made for (device id, localhost, the extra names).
    for host in ["localhost", "test-device", "sideload.test"] {
        let r = tls_curl(&daemon, host, &cert, &[], "/sideload/v1/health");
        assert_eq!((r.exit, r.status), (0, 200), "{host}: {r:?}");
    }
    let r = tls_curl(&daemon, "not-named.test", &cert, &[], "/sideload/v1/health");
    assert_eq!(r.exit, 60, "{r:?}");

    // A restart loads the same files: same certificate, same pin, nothing made again.
    daemon.restart();
    assert_eq!(std::fs::read(&cert).unwrap(), cert_pem);
    assert_eq!(std::fs::read(&key).unwrap(), key_pem);
    let log = daemon.log();
    assert_eq!(
        log.matches("made a self-signed TLS certificate").count(),
        1,
        "{log}"
    );
    let pin_lines = log
        .lines()
        .filter(|l| l.contains("TLS certificate;") && l.contains(&pin))
        .count();
    assert_eq!(pin_lines, 2, "the pin is logged at both starts:\n{log}");
    let r = tls_curl(&daemon, "localhost", &cert, &[], "/sideload/v1/health");
    assert_eq!((r.exit, r.status), (0, 200), "{r:?}");
}

/// Runs the binary on a config that must be refused; returns (exit code, stderr, stdout).
fn run_config(extra: &str, check_only: bool) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("trust.toml");
    std::fs::write(&policy, &fixture().policy_toml).unwrap();
    let config = dir.path().join("plugin.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndevice_id = \"test-device\"\ndata_dir = \"{}\"\ntrust_policy = \"{}\"\n\
             [registry]\nurl = \"http://127.0.0.1:9\"\nstartup_timeout_secs = 1\n{extra}",
            dir.path().join("data").display(),
            policy.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(daemon_binary());
    cmd.arg("--config").arg(&config);
    if check_only {
        cmd.arg("--check-config");
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn bad_certificates_keys_and_token_files_are_config_errors() {
    let pki = make_pki("config");
    let other = make_pki("config-other");
    let absent = pki.dir.path().join("absent/cert.pem");
    let missing_cert = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        absent.display(),
        pki.key.display()
    );
    for check_only in [false, true] {
        let (code, stderr, _) = run_config(&missing_cert, check_only);
        assert_eq!(code, Some(64), "{stderr}");
        assert!(
            stderr.contains(&format!(
                "tls.cert_file {} does not exist",
                absent.display()
            )),
            "{stderr}"
        );
        assert!(stderr.contains("self_signed"), "{stderr}");
    }

    // A key that is not the certificate's.
    let mismatched = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        pki.cert.display(),
        other.key.display()
    );
    let (code, stderr, _) = run_config(&mismatched, false);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains(&other.key.display().to_string())
            && stderr.contains(&pki.cert.display().to_string()),
        "{stderr}"
    );
    // A key file where the certificate should be.
    let swapped = format!(
        "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        pki.key.display(),
        pki.key.display()
    );
    let (code, stderr, _) = run_config(&swapped, true);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("holds no certificate"), "{stderr}");
    // Unknown keys are refused like everywhere else in the config.
    let (code, stderr, _) = run_config("[tls]\ncert = \"x\"\n", true);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("unknown field"), "{stderr}");

    // Token files: missing, empty.
    let token = pki.dir.path().join("token");
    let auth = format!("[auth]\nupload_token_file = \"{}\"\n", token.display());
    let (code, stderr, _) = run_config(&auth, false);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot read auth.upload_token_file {}",
            token.display()
        )),
        "{stderr}"
    );
    std::fs::write(&token, "\n  \n").unwrap();
    let (code, stderr, _) = run_config(&auth, true);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("is empty"), "{stderr}");

    // A good setup passes --check-config, which names the pin and never the token.
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let (code, stderr, stdout) = run_config(&format!("{}{auth}", tls_section(&pki)), true);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.contains(&format!("pin {}", sha256_pin(&pki.leaf_der))),
        "{stdout}"
    );
    assert!(stdout.contains("upload token required"), "{stdout}");
    assert!(!stdout.contains(TOKEN) && !stderr.contains(TOKEN));
    // --check-config with self_signed writes nothing.
    let (code, stderr, stdout) = run_config(
        "[tls]\nlisten = \"127.0.0.1:0\"\nself_signed = true\n",
        true,
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("made at the first start"), "{stdout}");
}
