//! `sideload attach` through the binary: a signature is attached only if it verifies over the
//! bundle's own statement with the signer's public key; a bad one is refused with nothing
//! written, so a good signature is never replaced by a bad one; the write is atomic (a new file
//! renamed into place) except for hard-linked bundles, which are rewritten in place so every
//! link is signed.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sideload_signing::{key_entry_toml, write_keypair, SigningKey};

fn sideload(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sideload"))
        .args(args)
        .output()
        .expect("sideload runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(args: &[&str]) -> String {
    let out = sideload(args);
    assert!(out.status.success(), "sideload {args:?}: {}", text(&out));
    text(&out)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    policy: PathBuf,
}

/// Keys alice and bob, a 1-of-2 policy, and two bundles of the same image with different
/// sequences (so different statements): `a.bundle` and `b.bundle`, with their statements.
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    sideload_bundle::demo::make_demo_images(&root.join("images")).unwrap();
    let mut policy = String::from("threshold = 1\n");
    for name in ["alice", "bob"] {
        write_keypair(&root, name).unwrap();
        let key = SigningKey::read_pem_file(&root.join(format!("{name}.key"))).unwrap();
        policy.push_str(&key_entry_toml(
            &key.public_key(),
            &["edge/*".parse().unwrap()],
            None,
        ));
    }
    let policy_path = root.join("trust.toml");
    fs::write(&policy_path, policy).unwrap();
    for (name, sequence) in [("a", "6"), ("b", "7")] {
        ok(&[
            "build",
            &format!("oci:{}:v2", root.join("images/app-v2").display()),
            "-o",
            p(&root.join(format!("{name}.bundle"))),
            "--repository",
            "edge/app",
            "--sequence",
            sequence,
            "--level",
            "1",
            "--statement-out",
            p(&root.join(format!("{name}.statement.json"))),
        ]);
    }
    Setup {
        _dir: dir,
        root,
        policy: policy_path,
    }
}

/// `KEY` signs the statement file `STATEMENT` as `sideload-sign sign` does.
fn sign(s: &Setup, key: &str, statement: &str) -> PathBuf {
    let key = SigningKey::read_pem_file(&s.root.join(format!("{key}.key"))).unwrap();
    let bytes = fs::read(s.root.join(format!("{statement}.statement.json"))).unwrap();
    let sig = s.root.join(format!("{statement}-{}.sig", key.key_id()));
    fs::write(&sig, key.sign_statement(&bytes).to_json()).unwrap();
    sig
}

fn key_id(s: &Setup, key: &str) -> String {
    SigningKey::read_pem_file(&s.root.join(format!("{key}.key")))
        .unwrap()
        .key_id()
        .to_string()
}

fn verifies(s: &Setup, bundle: &Path) -> bool {
    sideload(&["verify", p(bundle), "--policy", p(&s.policy)])
        .status
        .success()
}

#[test]
fn a_signature_over_another_statement_is_refused_and_the_good_one_kept() {
    let s = setup();
    let a = s.root.join("a.bundle");
    let good = sign(&s, "alice", "a");
    let other = sign(&s, "alice", "b");

    ok(&["attach", p(&a), p(&good), "--policy", p(&s.policy)]);
    assert!(verifies(&s, &a));
    let signed = fs::read(&a).unwrap();

    // Alice's signature of b's statement, offered for a: refused, nothing written.
    let out = sideload(&["attach", p(&a), p(&other), "--policy", p(&s.policy)]);
    let message = text(&out);
    println!("{message}");
    assert_eq!(out.status.code(), Some(1), "{message}");
    for part in [
        "a.bundle",
        key_id(&s, "alice").as_str(),
        "covers another statement",
        "sideload statement",
        "nothing was written",
    ] {
        assert!(message.contains(part), "{part:?} missing: {message}");
    }
    assert_eq!(fs::read(&a).unwrap(), signed, "the bundle changed");
    assert!(verifies(&s, &a), "the good signature was lost");

    // A good and a bad one together: all or nothing.
    let bob_good = sign(&s, "bob", "a");
    let out = sideload(&[
        "attach",
        p(&a),
        p(&bob_good),
        p(&other),
        "--policy",
        p(&s.policy),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(fs::read(&a).unwrap(), signed);

    // Without a key to check with: refused, saying how to give one.
    let out = sideload(&["attach", p(&a), p(&bob_good)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("--key"), "{}", text(&out));
    assert_eq!(fs::read(&a).unwrap(), signed);
}

#[test]
fn attach_replaces_the_file_atomically_and_signs_every_hard_link_in_place() {
    let s = setup();
    let a = s.root.join("a.bundle");
    let before = fs::metadata(&a).unwrap();
    let bob_pub = s.root.join("bob.pub");
    ok(&[
        "attach",
        p(&a),
        p(&sign(&s, "bob", "a")),
        "--key",
        p(&bob_pub),
    ]);
    let after = fs::metadata(&a).unwrap();
    assert_ne!(before.ino(), after.ino(), "written aside and renamed");
    assert_eq!(before.len(), after.len());
    assert_eq!(before.mode(), after.mode());
    assert!(verifies(&s, &a));
    let leftovers: Vec<_> = fs::read_dir(&s.root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A fleet outbox holds a hard link: one attach signs both names.
    let b = s.root.join("b.bundle");
    let link = s.root.join("outbox-b.bundle");
    fs::hard_link(&b, &link).unwrap();
    ok(&[
        "attach",
        p(&b),
        p(&sign(&s, "alice", "b")),
        "--policy",
        p(&s.policy),
    ]);
    assert_eq!(
        fs::metadata(&b).unwrap().ino(),
        fs::metadata(&link).unwrap().ino()
    );
    assert!(verifies(&s, &link));
}
