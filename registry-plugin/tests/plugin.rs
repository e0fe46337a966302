//! The daemon end to end, against a real `docker-registry` on loopback, with `skopeo` as the
//! pulling client: upload, resume, refuse, crash, full disk, duplicates, inbox, events.

use sideload_test_support::registry as support;

use std::time::{Duration, Instant};

use support::*;

fn skopeo_inspect(reference: &str, config: bool) -> serde_json::Value {
    let mut args = vec!["inspect", "--tls-verify=false"];
    if config {
        args.push("--config");
    }
    args.push(reference);
    serde_json::from_str(&skopeo(&args)).unwrap()
}

fn v2_config() -> serde_json::Value {
    let f = fixture();
    serde_json::from_str(&skopeo(&[
        "inspect",
        "--config",
        &format!("oci:{}:v2", f.v2.display()),
    ]))
    .unwrap()
}

#[test]
fn upload_applies_and_the_image_pulls_through_the_plugin_exactly() {
    let registry = Registry::start();
    seed_v1(&registry);
    let daemon = Daemon::start(&registry, DaemonOptions::default());
    let path = bundle(BundleSpec::default());
    let id = bundle_id(&path);

    let r = daemon.upload(&path);
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["bundle"], id.as_str());
    let status = daemon.wait_state(&id, &["applied", "failed"], Duration::from_secs(120));
    assert_eq!(
        status["bundle"]["state"],
        "applied",
        "{status:#}\n{}",
        daemon.log()
    );
    let states: Vec<&str> = status["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["queued", "applying", "applied"]);

    // Pull through the plugin: the same config (image ID) and diff_ids as the source.
    let out = tempfile::tempdir().unwrap();
    let archive = out.path().join("v2.tar");
    skopeo(&[
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{}/edge/app:v2", daemon.addr),
        &format!("docker-archive:{}:edge/app:v2", archive.display()),
    ]);
    let pulled: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--config",
        &format!("docker-archive:{}", archive.display()),
    ]))
    .unwrap();
    let source = v2_config();
    assert_eq!(pulled["rootfs"]["diff_ids"], source["rootfs"]["diff_ids"]);
    assert_eq!(pulled, source, "config differs");
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/edge/app:v2", daemon.addr),
    ]);
    let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let f = fixture();
    let digest =
        skopeo_inspect(&format!("docker://{}/edge/app:v2", daemon.addr), false)["Digest"].clone();
    assert_eq!(digest, status["bundle"]["manifest_digest"]);

    // Range and HEAD pass through.
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let blob = format!("/v2/edge/app/blobs/{layer}");
    let r = daemon.request("GET", &blob, &[("Range", "bytes=0-9".into())], b"");
    assert_eq!((r.status, r.body.len()), (206, 10), "{:?}", r.headers);
    let r = daemon.request("HEAD", &blob, &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("docker-content-digest"), Some(layer));

    // Writes through /v2/ are refused registry-style, and skopeo gets the message.
    let r = daemon.request("POST", "/v2/edge/app/blobs/uploads/", &[], b"");
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["errors"][0]["code"], "DENIED");
    let r = daemon.request(
        "DELETE",
        &format!("/v2/edge/app/manifests/{}", digest.as_str().unwrap()),
        &[],
        b"",
    );
    assert_eq!(r.status, 403);
    let err = try_skopeo(&[
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", f.v1.display()),
        &format!("docker://{}/edge/other:v1", daemon.addr),
    ])
    .unwrap_err();
    assert!(err.contains("denied") || err.contains("DENIED"), "{err}");

    // Inventory: both images, sequence recorded; build can take this document.
    let inv = daemon.get_json("/sideload/v1/inventory");
    assert_eq!(inv["device"], "test-device");
    assert_eq!(inv["sequences"]["edge/app"], 100);
    let images = inv["images"].as_array().unwrap();
    let mut tags: Vec<&str> = images
        .iter()
        .flat_map(|i| i["tags"].as_array().unwrap())
        .map(|t| t.as_str().unwrap())
        .collect();
    tags.sort();
    assert_eq!(tags, ["v1", "v2"]);
    assert!(images
        .iter()
        .any(|i| i["diff_ids"] == source["rootfs"]["diff_ids"]));

    // Health and metrics.
    assert_eq!(daemon.get_json("/sideload/v1/health")["status"], "ok");
    let metrics = daemon.request("GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains("sideload_bundles{state=\"applied\"} 1"),
        "{metrics}"
    );

    // The same bundle again without its digest: stopped as a duplicate once the head is in
    // (not refused as a rollback: it is the very bundle the device applied).
    let r = daemon.upload(&path);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["outcome"], "duplicate");
    // And with its file digest: known before a byte is sent.
    let digest = format!("sha256:{}", sha256_hex(&std::fs::read(&path).unwrap()));
    let r = daemon.request(
        "POST",
        "/sideload/v1/uploads",
        &[("Bundle-Digest", digest)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["outcome"], "known");
}

/// A path whose file name names an upload (the file need not exist).
fn path_named(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(name)
}

fn sha256_hex(bytes: &[u8]) -> String {
    sideload_signing::Digest::of_bytes(bytes).hex().to_owned()
}

#[test]
fn cut_uploads_resume_across_a_restart_without_resending_a_byte() {
    let registry = Registry::start();
    seed_v1(&registry);
    let mut daemon = Daemon::start(&registry, DaemonOptions::default());
    let path = bundle(BundleSpec::default());
    let bytes = std::fs::read(&path).unwrap();
    let id = daemon.create_upload(&path, &[("Upload-Length", bytes.len().to_string())]);
    let url = format!("/sideload/v1/uploads/{id}");
    let mut sent = 0usize;
    // Cut inside the header, inside the statement, and in the payload; restart in between.
    let cuts = [
        10,
        head_len(&path) as usize - 100,
        head_len(&path) as usize + 1000,
    ];
    for (i, &cut) in cuts.iter().enumerate() {
        let offset = daemon.offset(&id).expect("upload known");
        assert_eq!(offset as usize, sent, "the device holds what was sent");
        http_cut(
            &daemon.addr,
            &url,
            &[("Upload-Offset", offset.to_string())],
            &bytes[sent..cut],
            bytes.len() as u64 - offset,
        );
        sent = cut;
        // Give the daemon a moment to see the connection end.
        let start = Instant::now();
        while daemon.offset(&id) != Some(sent as u64) && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        if i == 1 {
            daemon.restart();
        }
    }
    assert_eq!(
        daemon.offset(&id),
        Some(sent as u64),
        "offset survives the restart"
    );
    // An offset beyond what the device holds is refused with the right one.
    let r = daemon.request(
        "PATCH",
        &url,
        &[("Upload-Offset", (sent + 10).to_string())],
        &bytes[sent + 10..sent + 20],
    );
    assert_eq!(r.status, 409);
    assert_eq!(r.header("upload-offset"), Some(sent.to_string().as_str()));
    // A client a little behind (bytes of its old connection landed after it asked): the
    // overlap must match what is stored, and is skipped.
    let mut other = bytes[sent - 50..sent + 10].to_vec();
    other[0] ^= 0xff;
    let r = daemon.request(
        "PATCH",
        &url,
        &[("Upload-Offset", (sent - 50).to_string())],
        &other,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("differ"), "{}", r.text());
    assert_eq!(daemon.offset(&id), Some(sent as u64), "nothing stored");
    let r = daemon.request(
        "PATCH",
        &url,
        &[("Upload-Offset", (sent - 50).to_string())],
        &bytes[sent - 50..],
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let status = daemon.wait_state(
        &bundle_id(&path),
        &["applied", "failed"],
        Duration::from_secs(120),
    );
    assert_eq!(status["bundle"]["state"], "applied", "{status:#}");
    // Finishing again (a client that lost the answer) reports the same outcome.
    let r = daemon.request("PUT", &url, &[], b"");
    assert_eq!(r.status, 202, "{}", r.text());
}

#[test]
fn an_upload_that_is_not_the_file_its_client_declared_is_refused_and_nothing_is_queued() {
    let registry = Registry::start();
    seed_v1(&registry);
    let daemon = Daemon::start(&registry, DaemonOptions::default());
    let path = bundle(BundleSpec::default());
    let bytes = std::fs::read(&path).unwrap();
    // A well-formed digest of other bytes: the client's copy was not this file.
    let declared = format!("sha256:{}", sha256_hex(b"another file"));
    let id = daemon.create_upload(&path, &[("Bundle-Digest", declared.clone())]);
    let r = daemon.request(
        "PATCH",
        &format!("/sideload/v1/uploads/{id}"),
        &[("Upload-Offset", "0".to_string())],
        &bytes,
    );
    assert!(r.status >= 400, "{} {}", r.status, r.text());
    assert_eq!(
        r.json()["error"]["code"],
        "file_digest_mismatch",
        "{}",
        r.text()
    );
    let reason = r.json()["error"]["reason"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(reason.contains(&declared), "{reason}");
    let r = daemon.request(
        "GET",
        &format!("/sideload/v1/bundles/{}", bundle_id(&path)),
        &[],
        b"",
    );
    assert_eq!(r.status, 404, "nothing queued: {}", r.text());
    let left: Vec<_> = std::fs::read_dir(daemon.data_dir.join("bundles"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_resuming_client_takes_over_from_its_dead_connection_at_once() {
    // Default read_timeout_secs (120): without take-over the stalled request would hold the
    // upload for two minutes after the link died.
    let registry = Registry::start();
    seed_v1(&registry);
    let daemon = Daemon::start(&registry, DaemonOptions::default());
    let path = bundle(BundleSpec::default());
    let bytes = std::fs::read(&path).unwrap();
    let digest = format!("sha256:{}", sha256_hex(&bytes));
    let id = daemon.create_upload(&path, &[("Bundle-Digest", digest.clone())]);
    let url = format!("/sideload/v1/uploads/{id}");
    let cut = head_len(&path) as usize + 700;
    let start = Instant::now();
    let stalled = stall(&daemon.addr, &url, &bytes[..cut]);
    // The offset is answered while the dead request still holds the upload.
    while daemon.offset(&id) != Some(cut as u64) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "offset not reported"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A restarted client (same file digest) is pointed at the same upload, not a new one.
    let r = daemon.request(
        "POST",
        "/sideload/v1/uploads",
        &[("Bundle-Digest", digest)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["upload"], id.as_str());
    assert_eq!(r.header("upload-offset"), Some(cut.to_string().as_str()));
    // The resume takes the upload over and completes it without waiting for the old request.
    let r = daemon.request(
        "PATCH",
        &url,
        &[("Upload-Offset", cut.to_string())],
        &bytes[cut..],
    );
    assert_eq!(r.status, 202, "{}", r.text());
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "the take-over waited for the dead request ({:?})",
        start.elapsed()
    );
    assert!(daemon.log().contains("took the upload over"));
    drop(stalled);

    // A request still receiving bytes keeps its upload: a second writer is told it is busy
    // instead of cutting it off (two live clients would otherwise cut each other in turn).
    let path2 = support::whole_image_bundle();
    let bytes2 = std::fs::read(&path2).unwrap();
    let id2 = daemon.create_upload(&path2, &[]);
    let url2 = format!("/sideload/v1/uploads/{id2}");
    let mut live = stall(&daemon.addr, &url2, &bytes2[..64]);
    let trickle = std::thread::spawn(move || {
        use std::io::Write;
        // One byte every 100 ms for 8 s: slow, but alive.
        for &b in &bytes2[64..144] {
            if live.write_all(&[b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        live
    });
    std::thread::sleep(Duration::from_millis(500));
    let r = daemon.request("PATCH", &url2, &[("Upload-Offset", "64".into())], b"x");
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "upload_busy", "{}", r.text());
    assert_eq!(r.header("retry-after"), Some("5"));
    // A DELETE ends it at once, live or not.
    let quiet = trickle.join().unwrap();
    let held = daemon.offset(&id2).unwrap();
    assert_eq!(held, 144, "the live request stored every byte it got");
    let r = daemon.request("DELETE", &url2, &[], b"");
    assert_eq!(r.status, 204, "a DELETE wins at once: {}", r.text());
    drop(quiet);
    let status = daemon.wait_state(
        &bundle_id(&path),
        &["applied", "failed"],
        Duration::from_secs(120),
    );
    assert_eq!(status["bundle"]["state"], "applied", "{status:#}");
}

#[test]
fn a_head_check_that_fails_on_the_device_keeps_the_head_and_the_upload_resumes() {
    // The whole bundle is sent in one request, but the head check fails on the device's side
    // (no room for the reserve): the device stores nothing past the head and keeps what it
    // has. Once there is room, the client resumes from the device's offset (the head is
    // checked again first) and the bundle applies.
    let registry = Registry::start();
    seed_v1(&registry);
    let mut daemon = Daemon::start(
        &registry,
        DaemonOptions {
            extra: "[uploads]\nfree_disk_reserve_bytes = 1000000000000000\n".into(),
            ..Default::default()
        },
    );
    let path = bundle(BundleSpec {
        name: "app-v2-uncompressed.bundle",
        exact: false,
        ..Default::default()
    });
    let bytes = std::fs::read(&path).unwrap();
    let head = sideload_bundle::head_len(&bytes[..32]).unwrap();
    assert!(head < bytes.len() as u64);
    let id = daemon.create_upload(&path, &[]);
    let url = format!("/sideload/v1/uploads/{id}");
    let r = daemon.request("PATCH", &url, &[("Upload-Offset", "0".into())], &bytes);
    assert_eq!(r.status, 507, "{}", r.text());
    assert_eq!(
        daemon.offset(&id),
        Some(head),
        "the head is kept, nothing past it"
    );
    daemon.set_extra("");
    daemon.restart();
    let r = daemon.request(
        "PATCH",
        &url,
        &[("Upload-Offset", head.to_string())],
        &bytes[head as usize..],
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let status = daemon.wait_state(
        &bundle_id(&path),
        &["applied", "failed"],
        Duration::from_secs(120),
    );
    assert_eq!(status["bundle"]["state"], "applied", "{status:#}");
}

#[test]
fn untrusted_bundles_are_refused_before_their_payload_is_stored() {
    let registry = Registry::start();
    seed_v1(&registry);
    let daemon = Daemon::start(&registry, DaemonOptions::default());
    let cases = [
        (
            BundleSpec {
                name: "unsigned.bundle",
                signer: Signer::Unsigned,
                ..Default::default()
            },
            "not signed",
        ),
        (
            BundleSpec {
                name: "stranger.bundle",
                signer: Signer::Stranger,
                ..Default::default()
            },
            "key",
        ),
        (
            BundleSpec {
                name: "expired.bundle",
                expires_in: -1,
                ..Default::default()
            },
            "expired",
        ),
    ];
    for (spec, word) in cases {
        let path = bundle(spec);
        let head = head_len(&path) as usize;
        let bytes = std::fs::read(&path).unwrap();
        let id = daemon.create_upload(&path, &[]);
        // Only the head: the refusal comes before any payload byte.
        let r = daemon.request(
            "PATCH",
            &format!("/sideload/v1/uploads/{id}"),
            &[("Upload-Offset", "0".into())],
            &bytes[..head],
        );
        assert_eq!(r.status, 403, "{}: {}", path.display(), r.text());
        let e = &r.json()["error"];
        assert!(
            e["reason"].as_str().unwrap().to_lowercase().contains(word),
            "{e}"
        );
        assert!(!e["advice"].as_str().unwrap().is_empty());
        assert_eq!(
            daemon.offset(&id),
            None,
            "the upload and its bytes are gone"
        );
    }
    assert!(
        std::fs::read_dir(daemon.data_dir.join("uploads"))
            .unwrap()
            .next()
            .is_none(),
        "no bytes kept"
    );

    // A forged header declaring a head over the limits is refused at once, not waited for.
    let mut forged = std::fs::read(bundle(BundleSpec::default())).unwrap()[..32].to_vec();
    forged[12..16].copy_from_slice(&u32::MAX.to_be_bytes());
    let id = daemon.create_upload(&path_named("forged.bundle"), &[]);
    let r = daemon.request(
        "PATCH",
        &format!("/sideload/v1/uploads/{id}"),
        &[("Upload-Offset", "0".into())],
        &forged,
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "over_limit");

    // Bytes past the bundle's end, in the same frame as its head: dropped, 400 with the offset,
    // and PUT finishes the (intact) bundle.
    let extra = bundle(BundleSpec {
        name: "overflow.bundle",
        sequence: 99,
        ..Default::default()
    });
    let mut bytes = std::fs::read(&extra).unwrap();
    let size = bytes.len();
    bytes.extend_from_slice(b"0123456789");
    let id = daemon.create_upload(&extra, &[]);
    let url = format!("/sideload/v1/uploads/{id}");
    let r = daemon.request("PATCH", &url, &[("Upload-Offset", "0".into())], &bytes);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.header("upload-offset"), Some(size.to_string().as_str()));
    let r = daemon.request("PUT", &url, &[], b"");
    assert_eq!(r.status, 202, "{}", r.text());
    daemon.wait_state(&bundle_id(&extra), &["applied"], Duration::from_secs(120));

    // A tampered payload is found when the payload is whole, and refused.
    let good = bundle(BundleSpec::default());
    let mut bytes = std::fs::read(&good).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x55;
    let tampered = good.with_file_name("tampered.bundle");
    std::fs::write(&tampered, &bytes).unwrap();
    let r = daemon.upload(&tampered);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("payload"), "{}", r.text());

    // Apply the good one, then a replay of an older sequence is refused at the head.
    assert_eq!(daemon.upload(&good).status, 202);
    daemon.wait_state(&bundle_id(&good), &["applied"], Duration::from_secs(120));
    let old = bundle(BundleSpec {
        name: "old-sequence.bundle",
        sequence: 50,
        ..Default::default()
    });
    let r = daemon.upload(&old);
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("sequence"), "{}", r.text());
    // Every refusal is in the journal.
    let journal = daemon.get_json("/sideload/v1/journal");
    let refused = journal["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["state"] == "refused")
        .count();
    assert_eq!(refused, 6, "{journal:#}");
}

#[test]
fn a_kill_during_apply_leaves_the_old_image_and_the_bundle_applies_after_restart() {
    let registry = Registry::start();
    seed_v1(&registry);
    let options = DaemonOptions {
        env: vec![("SIDELOAD_FAULT_PAUSE_BEFORE_TAG_MS".into(), "30000".into())],
        ..Default::default()
    };
    let mut daemon = Daemon::start(&registry, options);
    let path = bundle(BundleSpec::default());
    let id = bundle_id(&path);
    let v1_before =
        skopeo_inspect(&format!("docker://{}/edge/app:v1", daemon.addr), false)["Digest"].clone();
    assert_eq!(daemon.upload(&path).status, 202);
    // Wait until the blobs and manifest are stored and the daemon holds before the tag.
    let start = Instant::now();
    while !daemon.log().contains("pausing before the tag moves") {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    daemon.kill9();
    // The registry itself (behind the plugin) has no v2 tag, and v1 is intact.
    assert_eq!(app_tags(&registry.host), serde_json::json!(["v1"]));
    daemon.clear_env();
    daemon.restart();
    let status = daemon.wait_state(&id, &["applied", "failed"], Duration::from_secs(120));
    assert_eq!(status["bundle"]["state"], "applied", "{status:#}");
    let history = status["history"].to_string();
    assert!(history.contains("interrupted"), "{history}");
    let v1_after =
        skopeo_inspect(&format!("docker://{}/edge/app:v1", daemon.addr), false)["Digest"].clone();
    assert_eq!(v1_before, v1_after, "base image untouched");
}

/// A tmpfs of `size` mounted on a new temporary directory, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        assert!(
            is_root(),
            "this test mounts a small tmpfs as the data directory and must run as root (CI does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs");
        SmallDisk { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "remount tmpfs");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Journal entries (oldest first) whose name is `name`.
fn journal_of(daemon: &Daemon, name: &str) -> Vec<serde_json::Value> {
    daemon.get_json("/sideload/v1/journal")["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == name)
        .cloned()
        .collect()
}

#[test]
fn a_full_disk_keeps_the_bundle_until_space_returns_and_uploads_that_cannot_apply_are_refused_first(
) {
    let registry = Registry::start();
    seed_v1(&registry);
    // Room for the bundles (a few KB) but not for the rebuilt 7 MB image.
    let disk = SmallDisk::mount("4m");
    let options = DaemonOptions {
        data_dir: Some(disk.path().join("data")),
        extra: "[uploads]\nfree_disk_reserve_bytes = 0\n".into(),
        ..Default::default()
    };
    let daemon = Daemon::start(&registry, options);
    let inbox = daemon.data_dir.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    // Two bundles through the inbox, which takes what is delivered (no upload to refuse):
    // the apply finds the disk too small.
    let first = bundle(BundleSpec::default());
    let second = bundle(BundleSpec {
        name: "seq-103.bundle",
        sequence: 103,
        ..Default::default()
    });
    for b in [&first, &second] {
        std::fs::copy(b, inbox.join(b.file_name().unwrap())).unwrap();
    }
    for b in [&first, &second] {
        let status = daemon.wait_state(
            &bundle_id(b),
            &["waiting", "failed"],
            Duration::from_secs(120),
        );
        assert_eq!(status["bundle"]["state"], "waiting", "{status:#}");
        let reason = status["bundle"]["reason"].as_str().unwrap();
        let name = b.file_name().unwrap().to_str().unwrap();
        assert!(
            reason.contains(name) && reason.contains("bytes"),
            "{reason}"
        );
        let advice = status["bundle"]["advice"].as_str().unwrap();
        assert!(
            advice.contains("kept") && advice.contains("free disk"),
            "{advice}"
        );
        // The stored bundle is kept.
        let hex = bundle_id(b).trim_start_matches("sha256:").to_owned();
        assert!(daemon
            .data_dir
            .join("bundles")
            .join(format!("{hex}.bundle"))
            .exists());
    }
    // The operator drops one of them.
    let second_id = bundle_id(&second);
    let r = daemon.request(
        "DELETE",
        &format!("/sideload/v1/admin/bundles/{second_id}"),
        &[],
        b"",
    );
    assert_eq!(r.status, 204, "{}", r.text());
    let status = daemon.wait_state(&second_id, &["failed"], Duration::from_secs(5));
    assert!(status["bundle"]["reason"]
        .as_str()
        .unwrap()
        .contains("deleted by the operator"));
    let hex = second_id.trim_start_matches("sha256:");
    assert!(!daemon
        .data_dir
        .join("bundles")
        .join(format!("{hex}.bundle"))
        .exists());
    let r = daemon.request(
        "DELETE",
        &format!("/sideload/v1/admin/bundles/{second_id}"),
        &[],
        b"",
    );
    assert_eq!(r.status, 409, "{}", r.text());

    // An upload the disk could take but not apply is refused before its payload is sent,
    // naming the bundle, the bytes needed and free, and the fix; the refusal is journaled.
    let third = bundle(BundleSpec {
        name: "seq-104.bundle",
        sequence: 104,
        ..Default::default()
    });
    let r = daemon.upload(&third);
    assert_eq!(r.status, 507, "{}", r.text());
    let reason = r.json()["error"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        reason.contains("seq-104.bundle") && reason.contains("needs") && reason.contains("has"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("free disk space"), "{}", r.text());
    assert!(
        journal_of(&daemon, "seq-104.bundle")
            .iter()
            .any(|e| e["state"] == "refused"),
        "the refusal is journaled"
    );

    // A 100 % full disk: the refusal is still journaled (the disk reserve is freed for it).
    let filler = disk.path().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![1u8; 64 << 10];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    let r = daemon.request(
        "POST",
        "/sideload/v1/uploads",
        &[("Bundle-Name", "on-a-full-disk.bundle".into())],
        b"",
    );
    assert_eq!(r.status, 507, "{}", r.text());
    assert!(r.text().contains("on-a-full-disk.bundle"), "{}", r.text());
    assert!(
        journal_of(&daemon, "on-a-full-disk.bundle")
            .iter()
            .any(|e| e["state"] == "refused"),
        "the refusal on a full disk is journaled"
    );
    std::fs::remove_file(&filler).unwrap();

    // Space returns: the waiting bundle applies, once, and its stored file goes.
    disk.resize("64m");
    let id = bundle_id(&first);
    let status = daemon.wait_state(&id, &["applied", "failed"], Duration::from_secs(120));
    assert_eq!(status["bundle"]["state"], "applied", "{status:#}");
    let states: Vec<&str> = status["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states.iter().filter(|s| **s == "applied").count(),
        1,
        "{states:?}"
    );
    assert!(states.contains(&"waiting"), "{states:?}");
    assert_eq!(
        std::fs::read_dir(daemon.data_dir.join("bundles"))
            .unwrap()
            .count(),
        0,
        "no stored bundle left"
    );
    assert_eq!(app_tags(&daemon.addr), serde_json::json!(["v1", "v2"]));
}

#[test]
fn an_apply_while_the_registry_is_down_waits_with_the_bundle_and_applies_when_it_is_back() {
    let mut registry = Registry::start();
    seed_v1(&registry);
    let daemon = Daemon::start(&registry, DaemonOptions::default());
    let path = bundle(BundleSpec::default());
    let id = bundle_id(&path);
    registry.stop();
    assert_eq!(daemon.upload(&path).status, 202);
    let status = daemon.wait_state(&id, &["waiting", "failed"], Duration::from_secs(120));
    assert_eq!(status["bundle"]["state"], "waiting", "{status:#}");
    let reason = status["bundle"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("app-v2.bundle") && reason.contains("local registry"),
        "{reason}"
    );
    let hex = id.trim_start_matches("sha256:");
    assert!(daemon
        .data_dir
        .join("bundles")
        .join(format!("{hex}.bundle"))
        .exists());
    // A second delivery while it waits is a duplicate, not a new transfer.
    let again = daemon.upload(&path);
    assert_eq!(again.status, 200, "{}", again.text());
    registry.resume();
    let status = daemon.wait_state(&id, &["applied", "failed"], Duration::from_secs(120));
    assert_eq!(status["bundle"]["state"], "applied", "{status:#}");
    assert!(!daemon
        .data_dir
        .join("bundles")
        .join(format!("{hex}.bundle"))
        .exists());
    assert_eq!(app_tags(&registry.host), serde_json::json!(["v1", "v2"]));
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

#[test]
fn two_clients_uploading_the_same_bundle_at_once_apply_it_once() {
    let registry = Registry::start();
    seed_v1(&registry);
    let daemon = Daemon::start(&registry, DaemonOptions::default());
    let path = bundle(BundleSpec::default());
    let answers: Vec<u16> = std::thread::scope(|s| {
        let a = s.spawn(|| daemon.upload(&path).status);
        let b = s.spawn(|| daemon.upload(&path).status);
        vec![a.join().unwrap(), b.join().unwrap()]
    });
    let mut sorted = answers.clone();
    sorted.sort();
    assert!(
        sorted == [200, 202] || sorted == [202, 200],
        "one queued, one duplicate: {answers:?}"
    );
    let id = bundle_id(&path);
    daemon.wait_state(&id, &["applied"], Duration::from_secs(120));
    std::thread::sleep(Duration::from_secs(1));
    let journal = daemon.get_json(&format!("/sideload/v1/journal?bundle={id}"));
    let applies = journal["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["state"] == "applying")
        .count();
    assert_eq!(applies, 1, "{journal:#}");
    // With the file digest declared, a second client joins the first's upload.
    let other = bundle(BundleSpec {
        name: "seq-101.bundle",
        sequence: 101,
        ..Default::default()
    });
    let digest = format!("sha256:{}", sha256_hex(&std::fs::read(&other).unwrap()));
    let first = daemon.create_upload(&other, &[("Bundle-Digest", digest.clone())]);
    let second = daemon.create_upload(&other, &[("Bundle-Digest", digest)]);
    assert_eq!(first, second);
}

#[test]
fn inbox_takes_whole_files_only_quarantines_bad_ones_and_events_survive_an_outage() {
    let registry = Registry::start();
    seed_v1(&registry);
    // An event receiver that is down at first.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = DaemonOptions {
        extra: format!("[events]\nurl = \"http://127.0.0.1:{port}/events\"\nretry_initial_secs = 0.5\nretry_max_secs = 1.0\n"),
        ..Default::default()
    };
    let daemon = Daemon::start(&registry, options);
    let inbox = daemon.data_dir.join("inbox");
    let quarantine = daemon.data_dir.join("quarantine");
    let path = bundle(BundleSpec::default());
    let bytes = std::fs::read(&path).unwrap();

    // Copied slowly under its final name: untouched while partial.
    let target = inbox.join("app-v2.bundle");
    std::fs::write(&target, &bytes[..bytes.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(target.exists(), "a partial file is left alone");
    let r = daemon.request(
        "GET",
        &format!("/sideload/v1/bundles/{}", bundle_id(&path)),
        &[],
        b"",
    );
    assert_eq!(r.status, 404);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&target)
            .unwrap();
        f.write_all(&bytes[bytes.len() / 2..]).unwrap();
    }
    let status = daemon.wait_state(
        &bundle_id(&path),
        &["applied", "failed"],
        Duration::from_secs(120),
    );
    assert_eq!(status["bundle"]["state"], "applied");
    assert_eq!(status["bundle"]["source"], "inbox");
    assert!(!target.exists());
    // Intake recorded its file digest, from the same read that checked its payload: an upload
    // of the same file is known before a byte is sent.
    let r = daemon.request(
        "POST",
        "/sideload/v1/uploads",
        &[("Bundle-Digest", format!("sha256:{}", sha256_hex(&bytes)))],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["outcome"], "known");

    // Garbage and an untrusted bundle end in quarantine with their reasons.
    std::fs::write(
        inbox.join("notes.txt"),
        b"not a bundle at all, just some text",
    )
    .unwrap();
    let stranger = bundle(BundleSpec {
        name: "stranger.bundle",
        signer: Signer::Stranger,
        ..Default::default()
    });
    std::fs::copy(&stranger, inbox.join("stranger.bundle")).unwrap();
    let start = Instant::now();
    while !(quarantine.join("notes.txt.reason.json").exists()
        && quarantine.join("stranger.bundle.reason.json").exists())
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not quarantined; log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let reason: serde_json::Value = serde_json::from_slice(
        &std::fs::read(quarantine.join("stranger.bundle.reason.json")).unwrap(),
    )
    .unwrap();
    assert!(
        reason["reason"].as_str().unwrap().contains("key"),
        "{reason}"
    );
    assert!(quarantine.join("stranger.bundle").exists());

    // Now the receiver comes up: every state change arrives, in order.
    let received = receive_events(port, 5, Duration::from_secs(60));
    let states: Vec<String> = received
        .iter()
        .map(|e| e["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states[..3], ["queued", "applying", "applied"], "{states:?}");
    assert_eq!(
        states.iter().filter(|s| *s == "refused").count(),
        2,
        "{states:?}"
    );
    let seqs: Vec<u64> = received
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

/// Accepts POSTs on `port` until `want` event bodies arrived.
fn receive_events(port: u16, want: usize, timeout: Duration) -> Vec<serde_json::Value> {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < want {
        assert!(
            start.elapsed() < timeout,
            "only {} events arrived: {got:?}",
            got.len()
        );
        let Ok((stream, _)) = listener.accept() else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut r = BufReader::new(stream);
        // The sender keeps its connection alive between events: stop reading once enough came.
        while got.len() < want {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).unwrap();
            got.push(serde_json::from_slice(&body).unwrap());
            r.get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .unwrap();
        }
    }
    got
}

#[test]
fn limits_answer_with_clear_4xx_and_systemd_hears_ready_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let registry = Registry::start();
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&socket_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let options = DaemonOptions {
        extra: "[uploads]\nmax_bundle_bytes = 1000\nmax_concurrent_uploads = 1\nfree_disk_reserve_bytes = 0\nread_timeout_secs = 2\n".into(),
        env: vec![("NOTIFY_SOCKET".into(), socket_path.display().to_string())],
        ..Default::default()
    };
    let mut daemon = Daemon::start(&registry, options);
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).expect("READY=1 from the daemon");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));

    // Too large by the declared length, and by the bundle's own head.
    let r = daemon.request(
        "POST",
        "/sideload/v1/uploads",
        &[("Upload-Length", "5000".into())],
        b"",
    );
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.json()["error"]["reason"]
        .as_str()
        .unwrap()
        .contains("max_bundle_bytes"));
    let path = bundle(BundleSpec::default());
    let id = daemon.create_upload(&path, &[]);
    // A client that goes silent mid-request (a dead link that never closes) does not hold the
    // upload: after read_timeout_secs the bytes it sent are kept and the upload answers again.
    let stalled = stall(
        &daemon.addr,
        &format!("/sideload/v1/uploads/{id}"),
        b"SIDELOAD",
    );
    let start = Instant::now();
    assert_eq!(daemon.offset(&id), Some(8));
    assert!(start.elapsed() < Duration::from_secs(20));
    drop(stalled);
    // An upload whose head is not checked yet does not count against max_concurrent_uploads
    // (it is in the unchecked budget, tests/lockout.rs): a second one is taken.
    let r = daemon.request("POST", "/sideload/v1/uploads", &[], b"");
    assert_eq!(r.status, 201, "{}", r.text());
    let head = std::fs::read(&path).unwrap()[..head_len(&path) as usize].to_vec();
    let r = daemon.request(
        "PATCH",
        &format!("/sideload/v1/uploads/{id}"),
        &[("Upload-Offset", "8".into())],
        &head[8..],
    );
    assert_eq!(r.status, 413, "{}", r.text());
    // A missing offset and an unknown upload are clear errors too.
    let r = daemon.request("PATCH", &format!("/sideload/v1/uploads/{id}"), &[], b"x");
    assert!(r.status == 400 || r.status == 404, "{}", r.text());
    let r = daemon.request("HEAD", "/sideload/v1/uploads/0123", &[], b"");
    assert_eq!(r.status, 404);

    // SIGTERM: STOPPING=1, then a clean exit.
    let status = daemon.stop();
    let n = notify.recv(&mut buf).expect("STOPPING=1 from the daemon");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert!(status.success(), "{status:?}");
}

/// Starts a PATCH declaring far more bytes than it sends, sends `body`, and keeps the
/// connection open (returned) without sending more.
fn stall(addr: &str, path: &str, body: &[u8]) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "PATCH {path} HTTP/1.1\r\nHost: {addr}\r\nUpload-Offset: 0\r\nContent-Length: 1000000\r\n\r\n").unwrap();
    s.write_all(body).unwrap();
    s.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    s
}
