//! Error messages a new user meets first: each names the path, the argument it came from and
//! the fix exactly once, gives every cause on a line of its own and never twice, and `--json`
//! answers with JSON on stdout even when it fails.

use std::process::{Command, Output};

fn sideload(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sideload"))
        .args(args)
        .output()
        .expect("sideload runs")
}

/// `needle` occurs exactly once in `text`.
fn once(text: &str, needle: &str) {
    assert_eq!(
        text.matches(needle).count(),
        1,
        "{needle:?} once in:\n{text}"
    );
}

/// No part of a message (the pieces between ": ") is said twice, on one line or across lines.
fn no_repeats(text: &str) {
    let mut seen: Vec<&str> = Vec::new();
    for line in text.lines() {
        for part in line.trim().trim_start_matches("caused by:").split(": ") {
            let part = part.trim();
            if part.len() < 12 {
                continue;
            }
            assert!(!seen.contains(&part), "{part:?} said twice:\n{text}");
            seen.push(part);
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_missing_oci_target_names_the_argument_the_path_and_how_to_make_one() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nonexistent");
    let reference = format!("oci:{}", missing.display());
    let out = sideload(&["build", &reference, "-o", "x.bundle"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    once(&err, &missing.display().to_string());
    once(&err, "TARGET");
    once(&err, "no such file or directory");
    once(&err, "skopeo copy SOURCE oci:DIR:TAG");
    assert!(!err.contains("oci-layout"), "{err}");
    no_repeats(&err);
}

#[test]
fn a_missing_base_is_named_as_the_base() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target.tar");
    std::fs::write(&target, b"").unwrap();
    let missing = dir.path().join("device-has.tar");
    let base = format!("docker-archive:{}", missing.display());
    let out = sideload(&[
        "build",
        target.to_str().unwrap(),
        "--base",
        &base,
        "-o",
        "x.bundle",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    once(&err, &missing.display().to_string());
    once(&err, "--base");
    once(&err, "give the path of a `docker save` archive");
    no_repeats(&err);
}

#[test]
fn a_missing_bundle_names_its_path_once_and_each_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("app.bundle");
    let out = sideload(&["inspect", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    once(&err, "app.bundle");
    once(&err, "No such file or directory");
    once(&err, "what to do:");
    no_repeats(&err);
}

#[test]
fn inspect_json_on_a_bad_file_answers_json_on_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("not-a.bundle");
    std::fs::write(&bad, b"this is not a bundle").unwrap();
    let out = sideload(&["inspect", "--json", bad.to_str().unwrap()]);
    assert_ne!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", out.stdout));
    assert_eq!(v["ok"], false);
    let error = v["error"].as_str().unwrap();
    assert!(error.contains("not-a.bundle"), "{v}");
    assert!(v["advice"].as_str().is_some_and(|a| !a.is_empty()), "{v}");
    // And the person at the terminal still reads it on stderr, without colour codes.
    let err = stderr(&out);
    once(&err, "not-a.bundle");
    assert!(!err.contains('\u{1b}'), "{err}");
}
