//! End to end through the `sideload` binary, as the demo does it: real images from real files,
//! a `docker save` archive written by skopeo as what the device holds, keys and offline
//! signatures, build → statement → sign → attach → verify → apply, then the rebuilt image
//! compared with the source by skopeo and by the image model. Also the exit codes of refusals.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sideload_bundle::image::{open_image, ImageSource, OpenOptions};
use sideload_signing::{key_entry_toml, write_keypair, SigningKey};

fn sideload(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sideload"))
        .args(args)
        .output()
        .expect("sideload runs")
}

fn ok(args: &[&str]) -> String {
    let out = sideload(args);
    assert!(
        out.status.success(),
        "sideload {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn skopeo_config_digest(reference: &str) -> String {
    let out = Command::new("skopeo")
        .args(["inspect", "--config", "--raw", reference])
        .output()
        .expect("skopeo runs (installed by test.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sideload_signing::Digest::of_bytes(&out.stdout).to_string()
}

fn open(reference: &str) -> Box<dyn ImageSource> {
    open_image(&reference.parse().unwrap(), &OpenOptions::default()).unwrap()
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    policy: PathBuf,
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    sideload_bundle::demo::make_demo_images(&root.join("images")).unwrap();
    fs::create_dir_all(root.join("device")).unwrap();
    let status = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            &format!("oci:{}:v1", root.join("images/app-v1").display()),
            &format!(
                "docker-archive:{}:edge/app:v1",
                root.join("device/app-v1.tar").display()
            ),
        ])
        .status()
        .expect("skopeo runs (installed by test.sh)");
    assert!(status.success());
    let keys = root.join("keys");
    fs::create_dir_all(&keys).unwrap();
    let mut policy = String::from("threshold = 2\n");
    for name in ["alice", "bob", "carol"] {
        write_keypair(&keys, name).unwrap();
        let key = SigningKey::read_pem_file(&keys.join(format!("{name}.key"))).unwrap();
        policy.push_str(&key_entry_toml(
            &key.public_key(),
            &["edge/*".parse().unwrap()],
            None,
        ));
    }
    let policy_path = root.join("device/trust.toml");
    fs::write(&policy_path, policy).unwrap();
    Setup {
        _dir: dir,
        root,
        policy: policy_path,
    }
}

/// Signs the statement file with the named keys as the offline tool does; returns the
/// signature files.
fn sign_offline(s: &Setup, statement: &Path, names: &[&str]) -> Vec<PathBuf> {
    let bytes = fs::read(statement).unwrap();
    names
        .iter()
        .map(|name| {
            let key = SigningKey::read_pem_file(&s.root.join(format!("keys/{name}.key"))).unwrap();
            let sig = s.root.join(format!("{name}.sig"));
            fs::write(&sig, key.sign_statement(&bytes).to_json()).unwrap();
            sig
        })
        .collect()
}

#[test]
fn build_sign_verify_apply_reproduces_the_image() {
    let s = setup();
    let r = &s.root;
    let bundle = r.join("app-v2.bundle");
    let target = format!("oci:{}:v2", r.join("images/app-v2").display());
    let base = format!("docker-archive:{}", r.join("device/app-v1.tar").display());
    let report = json(&sideload(&[
        "build",
        &target,
        "--base",
        &base,
        "-o",
        p(&bundle),
        "--repository",
        "edge/app",
        "--tag",
        "v2",
        "--sequence",
        "5",
        "--ordered-by",
        "e2e test",
        "--contact",
        "ops@example.com",
        "--level",
        "9",
        "--json",
        "--explain",
    ]));
    assert_eq!(report["layers"][0]["encoding"], "present");
    let ranking = report["base_ranking"].as_array().unwrap();
    assert_eq!(ranking.len(), 1);
    assert_eq!(ranking[0]["bundle_size_alone"], report["bundle_size"]);
    assert_eq!(report["layers"][1]["encoding"], "delta");
    // The app layer is small enough to be tried as one patch of the whole layer, but its 600
    // copied files with new headers cost a few bytes each as one MIX_RUNS: file by file wins.
    assert_eq!(
        report["layers"][1]["whole_layer_patch"],
        serde_json::Value::Null
    );
    assert!(report["layers"][1]["copied_files"].as_u64().unwrap() >= 590);
    assert!(
        report["bundle_size"].as_u64().unwrap() < 100_000,
        "a file-level delta, not the layer"
    );
    assert!(
        report["bundle_size"].as_u64().unwrap() < report["source_image_size"].as_u64().unwrap()
    );

    // Unsigned: refused, exit 3, nothing written.
    let out = sideload(&["verify", p(&bundle), "--policy", p(&s.policy), "--json"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(json(&out)["code"], "unsigned");

    let statement = r.join("app-v2.statement.json");
    ok(&["statement", p(&bundle), "-o", p(&statement)]);
    assert!(
        fs::metadata(&statement).unwrap().len() < 8192,
        "statement is a few KiB"
    );
    let sigs = sign_offline(&s, &statement, &["alice", "bob"]);
    let payload_before = fs::read(&bundle).unwrap();
    ok(&[
        "attach",
        p(&bundle),
        p(&sigs[0]),
        p(&sigs[1]),
        "--policy",
        p(&s.policy),
    ]);
    let payload_after = fs::read(&bundle).unwrap();
    assert_eq!(
        payload_before.len(),
        payload_after.len(),
        "attach keeps the file length"
    );
    let tail = payload_before.len() - report["payload_size"].as_u64().unwrap() as usize;
    assert_eq!(
        payload_before[tail..],
        payload_after[tail..],
        "attach leaves the payload alone"
    );

    let inspect = json(&sideload(&["inspect", p(&bundle), "--json"]));
    assert_eq!(inspect["signed_by"].as_array().unwrap().len(), 2);
    assert_eq!(inspect["statement"]["target"]["repository"], "edge/app");
    assert_eq!(inspect["statement"]["ordered_by"], "e2e test");

    let state = r.join("device/state.json");
    ok(&[
        "verify",
        p(&bundle),
        "--policy",
        p(&s.policy),
        "--state",
        p(&state),
    ]);
    let rebuilt = r.join("device/app-v2.tar");
    ok(&[
        "apply",
        p(&bundle),
        "--policy",
        p(&s.policy),
        "--base-dir",
        p(&r.join("device")),
        "--state",
        p(&state),
        "--output",
        &format!("docker-archive:{}", rebuilt.display()),
    ]);

    // The rebuilt image is the source image: skopeo sees the same config, the image model
    // the same diff_ids, and every layer stream verifies against its diff_id.
    let rebuilt_ref = format!("docker-archive:{}", rebuilt.display());
    assert_eq!(
        skopeo_config_digest(&rebuilt_ref),
        skopeo_config_digest(&target)
    );
    let (a, b) = (open(&rebuilt_ref), open(&target));
    assert_eq!(a.image().config.digest, b.image().config.digest);
    assert_eq!(a.image().diff_ids(), b.image().diff_ids());
    assert_eq!(a.image().repo_tags, vec!["edge/app:v2".to_owned()]);
    for i in 0..a.image().layers.len() {
        std::io::copy(&mut a.open_layer(i).unwrap(), &mut std::io::sink()).unwrap();
    }

    // Replay: the state now records sequence 5.
    let out = sideload(&[
        "verify",
        p(&bundle),
        "--policy",
        p(&s.policy),
        "--state",
        p(&state),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(json(&out)["code"], "rollback");

    // A tampered copy: refused with exit 3, and apply writes nothing.
    let tampered = r.join("tampered.bundle");
    let mut bytes = fs::read(&bundle).unwrap();
    let at = bytes.len() - 50;
    bytes[at] ^= 0xff;
    fs::write(&tampered, bytes).unwrap();
    let out = sideload(&["verify", p(&tampered), "--policy", p(&s.policy), "--json"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(json(&out)["code"], "payload_digest_mismatch");
    let never = r.join("never.tar");
    let out = sideload(&[
        "apply",
        p(&tampered),
        "--policy",
        p(&s.policy),
        "--base-dir",
        p(&r.join("device")),
        "--output",
        &format!("docker-archive:{}", never.display()),
    ]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tampered.bundle"));
    assert!(!never.exists());

    // Without the base image: an error (exit 1), not a refusal; nothing written.
    let empty = r.join("empty");
    fs::create_dir_all(&empty).unwrap();
    let out = sideload(&[
        "apply",
        p(&bundle),
        "--policy",
        p(&s.policy),
        "--base-dir",
        p(&empty),
        "--output",
        &format!("oci:{}", never.display()),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs base layer"));
    assert!(!never.exists());
}

#[test]
fn one_signature_is_not_enough_for_two_of_three() {
    let s = setup();
    let r = &s.root;
    let bundle = r.join("one.bundle");
    let statement = r.join("one.statement.json");
    ok(&[
        "build",
        &format!("oci:{}:v2", r.join("images/app-v2").display()),
        "-o",
        p(&bundle),
        "--repository",
        "edge/app",
        "--level",
        "3",
        "--statement-out",
        p(&statement),
    ]);
    let sigs = sign_offline(&s, &statement, &["carol"]);
    ok(&["attach", p(&bundle), p(&sigs[0]), "--policy", p(&s.policy)]);
    let out = sideload(&["verify", p(&bundle), "--policy", p(&s.policy), "--json"]);
    assert_eq!(out.status.code(), Some(3));
    let report = json(&out);
    assert_eq!(report["code"], "too_few_signatures");
    assert!(report["advice"].as_str().unwrap().len() > 10);
}

#[test]
fn every_command_has_help() {
    for cmd in ["build", "inspect", "statement", "attach", "verify", "apply"] {
        let out = ok(&[cmd, "--help"]);
        assert!(out.contains("Usage: sideload"), "{cmd}: {out}");
    }
    let out = ok(&["--help"]);
    assert!(out.contains("3 bundle refused"));
    // Usage errors exit 2.
    assert_eq!(sideload(&["build"]).status.code(), Some(2));
}

/// The registry plugin's test fixtures (registry, daemon, demo images, keys), shared rather
/// than copied.
use sideload_test_support::registry as plugin_support;

/// The loop between device and cloud: the device's inventory (from its registry plugin) goes
/// to `sideload build --inventory`, which takes the device's images as bases from the registry
/// they came from; the bundle goes back to the device and applies.
#[test]
fn build_from_a_device_inventory_and_apply_through_the_plugin() {
    use plugin_support::*;
    let f = fixture();
    let registry = Registry::start();
    seed_v1(&registry);
    let daemon = Daemon::start(&registry, DaemonOptions::default());
    let work = tempfile::tempdir().unwrap();
    let inventory = work.path().join("inventory.json");
    let inv = daemon.get_json("/sideload/v1/inventory");
    fs::write(&inventory, serde_json::to_vec(&inv).unwrap()).unwrap();

    // Only the inventory: the layers the device holds are not sent, the rest goes whole.
    let only_layers = work.path().join("layers-only.bundle");
    let out = sideload(&[
        "build",
        &format!("oci:{}:v2", f.v2.display()),
        "--inventory",
        p(&inventory),
        "-o",
        p(&only_layers),
        "--repository",
        "edge/app",
        "--tag",
        "v2",
        "--json",
    ]);
    let report = json(&out);
    assert_eq!(report["layers"][0]["encoding"], "present", "{report:#}");
    assert_eq!(report["layers"][0]["bases"][0], "the device's inventory");
    assert_eq!(
        report["layers"][1]["literal_bytes"],
        report["layers"][1]["size"]
    );

    // With the registry the images came from: the device's images are bases by digest.
    let bundle = work.path().join("app-v2.bundle");
    let statement = work.path().join("statement.json");
    let out = sideload(&[
        "build",
        &format!("oci:{}:v2", f.v2.display()),
        "--inventory",
        p(&inventory),
        "--inventory-registry",
        &registry.host,
        "--insecure-registry",
        &registry.host,
        "-o",
        p(&bundle),
        "--repository",
        "edge/app",
        "--tag",
        "v2",
        "--sequence",
        "100",
        "--statement-out",
        p(&statement),
        "--json",
    ]);
    let report = json(&out);
    let bases = report["layers"][1]["bases"].to_string();
    let v1_digest = inv["images"][0]["manifest_digest"].as_str().unwrap();
    assert!(bases.contains(v1_digest), "{report:#}");
    assert!(
        report["bundle_size"].as_u64().unwrap() < only_layers.metadata().unwrap().len() / 10,
        "the delta against the device's v1 is far smaller: {report:#}"
    );
    let sig = work.path().join("key.sig");
    let bytes = fs::read(&statement).unwrap();
    fs::write(&sig, f.key.sign_statement(&bytes).to_json()).unwrap();
    let policy = work.path().join("trust.toml");
    fs::write(&policy, &f.policy_toml).unwrap();
    ok(&["attach", p(&bundle), p(&sig), "--policy", p(&policy)]);
    let r = daemon.upload(&bundle);
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["bundle"].as_str().unwrap().to_owned();
    let status = daemon.wait_state(
        &id,
        &["applied", "failed"],
        std::time::Duration::from_secs(120),
    );
    assert_eq!(status["bundle"]["state"], "applied", "{status:#}");
}
