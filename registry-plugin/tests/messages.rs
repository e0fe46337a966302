//! The daemon's answers to a configuration that is not there: `--config` naming a missing file
//! is named with the argument and the fix, once each (exit 64); no `--config` and no default
//! file means every setting at its default, so the check goes on to the trust policy.

use std::path::Path;
use std::process::{Command, Output};

fn daemon(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sideload-registry-plugin"))
        .args(args)
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap()
}

fn once(text: &str, needle: &str) {
    assert_eq!(
        text.matches(needle).count(),
        1,
        "{needle:?} once in:\n{text}"
    );
}

#[test]
fn a_missing_config_file_given_with_config_is_named_with_its_fix() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("plugin.toml");
    let out = daemon(&["--check-config", "--config", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    once(&err, &missing.display().to_string());
    once(&err, "--config");
    once(&err, "registry-plugin.toml.example");
    assert!(!err.contains('\u{1b}'), "{err}");
}

#[test]
fn check_config_without_a_config_file_runs_on_the_defaults() {
    if Path::new("/etc/sideload/registry-plugin.toml").exists() {
        eprintln!("skipped: this machine has /etc/sideload/registry-plugin.toml");
        return;
    }
    let out = daemon(&["--check-config"]);
    let err = String::from_utf8_lossy(&out.stderr);
    if Path::new("/etc/sideload/trust.toml").exists() {
        assert_eq!(out.status.code(), Some(0), "{err}");
        return;
    }
    // Past the config: the default trust policy is what is missing, said once, with its fix.
    assert_eq!(out.status.code(), Some(64), "{err}");
    once(&err, "/etc/sideload/trust.toml");
    once(&err, "sideload-sign pubkey");
    assert!(!err.contains("registry-plugin.toml:"), "{err}");
}
