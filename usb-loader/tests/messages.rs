//! The loader's answer to a target that is not there: it names the path and the argument, says
//! what to give instead, once each, and exits 64 as its `--help` says.

use std::process::Command;

#[test]
fn dry_run_on_a_missing_folder_names_it_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nonexistent");
    let out = Command::new(env!("CARGO_BIN_EXE_sideload-usb-loader"))
        .args(["--dry-run", "--config"])
        .arg(dir.path().join("no-config.toml"))
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    let path = missing.display().to_string();
    for needle in [path.as_str(), "TARGET", "a folder laid out like a stick"] {
        assert_eq!(err.matches(needle).count(), 1, "{needle:?} once in:\n{err}");
    }
    assert!(
        !err.contains("trust"),
        "the path comes first, not the trust policy:\n{err}"
    );
    assert!(!err.contains('\u{1b}'), "{err}");
}

#[test]
fn help_promises_64_for_a_bad_target() {
    let out = Command::new(env!("CARGO_BIN_EXE_sideload-usb-loader"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("64 bad configuration or TARGET"), "{help}");
}
