//! End-to-end tests of the `sideload-sign` binary: keygen, sign, pubkey, check, exit codes.

use std::path::Path;
use std::process::{Command, Output};

use sideload_signing::{
    Digest, LayerStorage, PayloadInfo, Platform, SourceRef, Statement, Target, TargetLayer,
    FORMAT_VERSION,
};

fn tool(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sideload-sign"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run sideload-sign")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited normally")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A statement that is valid for a year from now.
fn statement() -> Statement {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let d = |b: &[u8]| Digest::of_bytes(b);
    Statement {
        format_version: FORMAT_VERSION,
        target: Target {
            repository: "edge/app".parse().unwrap(),
            tags: vec!["v2".parse().unwrap(), "stable".parse().unwrap()],
            platform: Platform {
                os: "linux".into(),
                architecture: "arm64".into(),
                variant: "v8".into(),
            },
            config_digest: d(b"config"),
            layers: vec![TargetLayer {
                diff_id: d(b"layer"),
                size: 10240,
                storage: LayerStorage::Uncompressed {
                    media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                },
            }],
            manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            manifest: "{\"schemaVersion\":2}".into(),
            manifest_digest: d(b"{\"schemaVersion\":2}"),
            source: SourceRef {
                reference: "registry.example/edge/app:v2".into(),
                manifest_digest: None,
            },
        },
        requires: vec![],
        payload: PayloadInfo {
            size: 4242,
            sha256: d(b"payload"),
            codec: sideload_signing::PayloadCodec::Lzma2,
            window_log: 27,
            decoded_size: 9000,
            scratch_bytes: 0,
        },
        sequence: 12,
        allow_downgrade: false,
        created_at: now,
        expires_at: now + 365 * 86400,
        ordered_by: "ticket OPS-7".into(),
        contact: "ops@example.com".into(),
    }
}

/// Runs keygen for `name` in `dir`; returns (key id, printed policy entry).
fn keygen(dir: &Path, name: &str) -> (String, String) {
    let out = tool(&["keygen", "--name", name, "--repositories", "edge/*"], dir);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("key id: "))
        .expect("key id printed")
        .to_owned();
    let entry = stdout[stdout.find("[[keys]]").expect("entry printed")..].to_owned();
    assert!(entry.contains(&format!("id = \"{id}\"")), "{entry}");
    assert!(entry.contains("repositories = [\"edge/*\"]"), "{entry}");
    (id, entry)
}

#[test]
fn keygen_sign_check() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (alice, alice_entry) = keygen(d, "alice");
    let (bob, bob_entry) = keygen(d, "bob");
    let (_carol, carol_entry) = keygen(d, "carol");
    assert_ne!(alice, bob);

    // keygen never overwrites.
    let again = tool(&["keygen", "--name", "alice"], d);
    assert_eq!(code(&again), 1);
    assert!(text(&again.stderr).contains("already exists"));

    // pubkey prints the same entry from either file.
    for file in ["alice.key", "alice.pub"] {
        let out = tool(&["pubkey", file, "--repositories", "edge/*"], d);
        assert_eq!(code(&out), 0);
        assert_eq!(text(&out.stdout), alice_entry);
    }

    std::fs::write(d.join("app.statement"), statement().to_canonical_json()).unwrap();
    for name in ["alice", "bob"] {
        let out = tool(
            &["sign", "--key", &format!("{name}.key"), "app.statement"],
            d,
        );
        assert_eq!(code(&out), 0, "{}", text(&out.stderr));
        let summary = text(&out.stderr);
        for needle in [
            "edge/app",
            "v2, stable",
            "sequence",
            "12",
            "4242 bytes",
            "ticket OPS-7",
        ] {
            assert!(summary.contains(needle), "{needle:?} not in\n{summary}");
        }
    }
    let alice_sig = format!("app.statement.{alice}.sig");
    let bob_sig = format!("app.statement.{bob}.sig");
    assert!(d.join(&alice_sig).exists());

    // 2 of 3: accepted.
    std::fs::write(
        d.join("two-of-three.toml"),
        format!("threshold = 2\n\n{alice_entry}\n{bob_entry}\n{carol_entry}"),
    )
    .unwrap();
    let out = tool(
        &[
            "check",
            "--policy",
            "two-of-three.toml",
            "app.statement",
            &alice_sig,
            &bob_sig,
        ],
        d,
    );
    assert_eq!(code(&out), 0, "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).starts_with("OK"));

    // Threshold 2, but the policy trusts only one of the two signers: refused (exit 3).
    std::fs::write(
        d.join("one-trusted.toml"),
        format!("threshold = 2\n\n{alice_entry}\n{carol_entry}"),
    )
    .unwrap();
    let out = tool(
        &[
            "check",
            "--policy",
            "one-trusted.toml",
            "app.statement",
            &alice_sig,
            &bob_sig,
        ],
        d,
    );
    assert_eq!(code(&out), 3, "{}{}", text(&out.stdout), text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("REFUSED [unknown_key]"), "{stdout}");
    assert!(stdout.contains("trust policy"), "{stdout}");

    // A one-key policy with threshold 2 cannot be met by anyone: it does not even load (exit 1).
    std::fs::write(
        d.join("one-key.toml"),
        format!("threshold = 2\n\n{alice_entry}"),
    )
    .unwrap();
    let out = tool(
        &[
            "check",
            "--policy",
            "one-key.toml",
            "app.statement",
            &alice_sig,
            &bob_sig,
        ],
        d,
    );
    assert_eq!(code(&out), 1);
    assert!(text(&out.stderr).contains("one-key.toml"));

    // Usage errors exit 2.
    let out = tool(
        &["check", "--policy", "two-of-three.toml", "app.statement"],
        d,
    );
    assert_eq!(code(&out), 2);
    let out = tool(&["frobnicate"], d);
    assert_eq!(code(&out), 2);
}

#[test]
fn sign_refuses_what_a_device_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    keygen(d, "k");

    let pretty = serde_json::to_vec_pretty(&statement()).unwrap();
    std::fs::write(d.join("pretty.json"), pretty).unwrap();
    let out = tool(&["sign", "--key", "k.key", "pretty.json"], d);
    assert_eq!(code(&out), 1);
    assert!(
        text(&out.stderr).contains("canonical"),
        "{}",
        text(&out.stderr)
    );

    let mut future = serde_json::to_value(statement()).unwrap();
    future["format_version"] = (sideload_signing::FORMAT_VERSION + 1).into();
    std::fs::write(d.join("future.json"), serde_json::to_vec(&future).unwrap()).unwrap();
    let out = tool(&["sign", "--key", "k.key", "future.json"], d);
    assert_eq!(code(&out), 1);
    assert!(
        text(&out.stderr).contains(&format!(
            "format version {}",
            sideload_signing::FORMAT_VERSION + 1
        )),
        "{}",
        text(&out.stderr)
    );

    // Nothing was written for refused statements.
    let sigs = std::fs::read_dir(d)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "sig")
        })
        .count();
    assert_eq!(sigs, 0);

    // Explicit output, and stdout.
    std::fs::write(d.join("s.json"), statement().to_canonical_json()).unwrap();
    let out = tool(&["sign", "--key", "k.key", "s.json", "-o", "out.sig"], d);
    assert_eq!(code(&out), 0);
    let out_stdout = tool(&["sign", "--key", "k.key", "s.json", "-o", "-"], d);
    assert_eq!(code(&out_stdout), 0);
    // Ed25519 is deterministic: both are the same signature.
    assert_eq!(
        std::fs::read_to_string(d.join("out.sig")).unwrap(),
        text(&out_stdout.stdout)
    );
}

#[test]
fn help_mentions_exit_codes_and_no_network() {
    let dir = tempfile::tempdir().unwrap();
    let out = tool(&["--help"], dir.path());
    assert_eq!(code(&out), 0);
    let help = text(&out.stdout);
    for needle in ["keygen", "sign", "pubkey", "check", "Exit codes", "network"] {
        assert!(help.contains(needle), "{needle:?} not in\n{help}");
    }
}

#[test]
fn a_missing_policy_is_named_once_and_its_cause_is_not_repeated() {
    let dir = tempfile::tempdir().unwrap();
    let statement = dir.path().join("s.json");
    std::fs::write(&statement, b"{}").unwrap();
    let out = tool(
        &[
            "check",
            "--policy",
            "missing-trust.toml",
            "s.json",
            "s.json",
        ],
        dir.path(),
    );
    assert_eq!(code(&out), 1);
    let err = text(&out.stderr);
    assert_eq!(err.matches("missing-trust.toml").count(), 1, "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert!(!err.contains('\u{1b}'), "{err}");
}
