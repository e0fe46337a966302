//! Checks the USB loader's udev rule and systemd unit in `systemd/`, and reads the udev
//! properties of a real loop device.
//!
//! - `systemd-analyze verify` accepts the template instantiated as `sideload-usb@sdb1.service`
//!   with no warning about it (same approach as `registry-plugin/tests/systemd_units.rs`: our
//!   directory first on `SYSTEMD_UNIT_PATH`, then the vendor units; ExecStart= pointed at the
//!   binary cargo built; a canary run on a broken copy proves the check can fail).
//! - The unit keeps the options the loader relies on (mount namespace, device access).
//! - The udev rule matches what the issue asks for, wants our template and runs nothing
//!   itself. systemd 252's `udevadm` has no `verify`, so the rule is parsed here.
//! - [`properties_from_udev`] on a loop device with an ext4 image: never accepted (a loop
//!   device is on no bus), and without udevd (containers, most CI) a clear "not processed by
//!   udev" error.
//!
//! Needs `systemd-analyze` (Debian package `systemd`; systemd need not run), and for the loop
//! device root, `losetup` and `mkfs.ext4`. A missing tool fails the test, it does not skip.

mod support;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sideload_usb_loader::device::{check, properties_from_udev, DeviceError};

const TEMPLATE: &str = "sideload-usb@.service";
const INSTANCE: &str = "sideload-usb@sdb1.service";
const RULES: &str = "90-sideload-usb.rules";
const EXEC_START: &str =
    "ExecStart=/usr/bin/sideload-usb-loader --config /etc/sideload/usb-loader.toml /dev/%I";
/// See `registry-plugin/tests/systemd_units.rs`: vendor units that ours depend on, without
/// the host's `/etc` and `/run` overrides.
const VENDOR_UNIT_DIRS: [&str; 2] = ["/lib/systemd/system", "/usr/lib/systemd/system"];

fn systemd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The template in a fresh directory, with ExecStart= pointed at the built loader (`verify`
/// checks that the program exists and is executable) and `extra` appended.
fn unit_dir(extra: &str) -> tempfile::TempDir {
    let text = read(&systemd_dir().join(TEMPLATE));
    let count = text.lines().filter(|l| l.trim() == EXEC_START).count();
    assert_eq!(count, 1, "{TEMPLATE} must contain {EXEC_START:?} once");
    let bin = env!("CARGO_BIN_EXE_sideload-usb-loader");
    assert!(!bin.contains(['"', '\\', '\n']), "cannot quote {bin:?}");
    let args = EXEC_START.split_once("loader ").expect("arguments").1;
    let exec = format!("ExecStart=\"{}\" {args}", bin.replace('%', "%%"));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(TEMPLATE);
    std::fs::write(&path, text.replace(EXEC_START, &exec) + extra).expect("write unit");
    dir
}

/// Runs `systemd-analyze verify` on the instance; returns success, the lines that name our
/// unit or directory, and the whole output.
fn verify(dir: &Path) -> (bool, Vec<String>, String) {
    let mut dirs = vec![dir.to_owned()];
    for d in VENDOR_UNIT_DIRS {
        if let Ok(c) = std::fs::canonicalize(d) {
            if !dirs.contains(&c) {
                dirs.push(c);
            }
        }
    }
    let unit_path: OsString = std::env::join_paths(&dirs).expect("unit path");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--generators=no"])
        .arg(dir.join(INSTANCE))
        .env("SYSTEMD_UNIT_PATH", unit_path)
        .env("SYSTEMD_LOG_LEVEL", "info")
        .env("SYSTEMD_LOG_COLOR", "0")
        .env("SYSTEMD_LOG_LOCATION", "0")
        .env("SYSTEMD_PAGER", "cat")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run systemd-analyze ({e}); install the Debian package `systemd`")
        });
    let all =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let dir_text = dir.to_string_lossy();
    let ours = all
        .lines()
        .filter(|l| l.contains(&*dir_text) || l.contains("sideload-usb@"))
        .map(str::to_owned)
        .collect();
    (out.status.success(), ours, all)
}

#[test]
fn systemd_analyze_verify_accepts_the_template_instance() {
    // Canary: a planted unknown key must be reported through the same filter; otherwise the
    // instance was not loaded from our directory and the real check would prove nothing.
    let canary = unit_dir("[Service]\nSideloadCanaryUsb=1\n");
    let (success, ours, all) = verify(canary.path());
    assert!(
        ours.iter().any(|l| l.contains("SideloadCanaryUsb")),
        "systemd-analyze verify did not report the key planted in a copy of {TEMPLATE} \
         (success={success}):\n{all}"
    );

    let dir = unit_dir("");
    let (success, ours, all) = verify(dir.path());
    assert!(
        success && ours.is_empty(),
        "systemd-analyze verify complained about {INSTANCE} (success={success}):\n{}\n\n\
         full output:\n{all}",
        ours.join("\n")
    );
}

/// `Key=value` assignments of a unit file, in order (no continuation lines in ours).
fn assignments(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(['#', ';', '[']))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect()
}

#[test]
fn unit_keeps_what_the_loader_relies_on() {
    let unit = assignments(&read(&systemd_dir().join(TEMPLATE)));
    let last = |key: &str| {
        unit.iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    let required = [
        ("Type", "oneshot"),
        ("BindsTo", "dev-%i.device"),
        // The stick's mount stays inside the unit and vanishes with it.
        ("PrivateMounts", "yes"),
        ("ProtectSystem", "strict"),
        // The mount root (config default), a tmpfs of the unit's own; /run is read-only.
        (
            "TemporaryFileSystem",
            "/run/sideload-usb:mode=0700,nosuid,nodev,noexec",
        ),
        // The config's default state_dir, writable.
        ("StateDirectory", "sideload/usb"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", "CAP_SYS_ADMIN CAP_DAC_OVERRIDE"),
        // Only the stick's own partition; PrivateDevices=yes would hide it.
        ("DevicePolicy", "closed"),
        ("DeviceAllow", "/dev/%I rw"),
        ("SystemCallFilter", "@system-service @mount"),
        ("IPAddressDeny", "any"),
        ("IPAddressAllow", "localhost"),
    ];
    let wrong: Vec<String> = required
        .iter()
        .filter(|(k, v)| last(k) != Some(v))
        .map(|(k, v)| format!("{k}={v} (found {:?})", last(k)))
        .collect();
    assert!(wrong.is_empty(), "{TEMPLATE}:\n  {}", wrong.join("\n  "));
    assert_ne!(last("PrivateDevices"), Some("yes"), "it would hide /dev/%I");
    let after = last("After").unwrap_or_default();
    assert!(after.split_whitespace().any(|u| u == "dev-%i.device"));
}

/// One `KEY{ATTR}OP"VALUE"` of a udev rule, e.g. `("ENV{ID_BUS}", "==", "usb")`.
type Token = (String, String, String);

/// Parses udev rules: one rule per line (`\` continues a line), `#` comments, comma-separated
/// `KEY[{ATTR}]OP"VALUE"` tokens. Panics on anything else, so a malformed file fails.
fn parse_rules(text: &str) -> Vec<Vec<Token>> {
    let joined = text.replace("\\\n", "");
    let rules = joined.lines().map(str::trim);
    rules
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let mut rest = line;
            let mut tokens = Vec::new();
            while !rest.is_empty() {
                let key_end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or_else(|| panic!("no operator in {rest:?}"));
                let key_end = match rest[key_end..].strip_prefix('{') {
                    Some(attr) => key_end + 2 + attr.find('}').expect("closing }"),
                    None => key_end,
                };
                let (key, after) = rest.split_at(key_end);
                let op_len = ["==", "!=", "+=", "-=", ":="]
                    .iter()
                    .find(|op| after.starts_with(**op))
                    .map_or(1, |op| op.len());
                let (op, after) = after.split_at(op_len);
                assert!(["==", "!=", "+=", "-=", ":=", "="].contains(&op), "{line}");
                let value = after.strip_prefix('"').expect("quoted value");
                let end = value.find('"').expect("closing quote");
                tokens.push((key.to_owned(), op.to_owned(), value[..end].to_owned()));
                rest = value[end + 1..].trim_start_matches([',', ' ', '\t']);
            }
            tokens
        })
        .collect()
}

/// Tokens that make udev run a program itself (long work belongs in the unit).
fn runs_programs(rules: &[Vec<Token>]) -> Vec<String> {
    rules
        .iter()
        .flatten()
        .filter(|(k, _, v)| {
            k.starts_with("RUN") || k == "PROGRAM" || (k == "IMPORT{program}" && !v.is_empty())
        })
        .map(|(k, op, v)| format!("{k}{op}\"{v}\""))
        .collect()
}

#[test]
fn udev_rule_wants_the_template_and_runs_nothing() {
    let rules = parse_rules(&read(&systemd_dir().join(RULES)));
    assert_eq!(rules.len(), 1, "{RULES}: expected one rule, got {rules:?}");
    let has = |key: &str, op: &str, value: &str| {
        rules[0]
            .iter()
            .any(|(k, o, v)| k == key && o == op && v == value)
    };
    for (key, op, value) in [
        ("ACTION", "==", "add"),
        ("SUBSYSTEM", "==", "block"),
        ("ENV{ID_BUS}", "==", "usb"),
        ("ENV{ID_FS_USAGE}", "==", "filesystem"),
        ("TAG", "+=", "systemd"),
        ("ENV{SYSTEMD_WANTS}", "+=", "sideload-usb@%k.service"),
    ] {
        assert!(has(key, op, value), "{RULES} lacks {key}{op}\"{value}\"");
    }
    assert!(systemd_dir().join(TEMPLATE).exists());
    assert_eq!(runs_programs(&rules), Vec::<String>::new(), "{RULES}");

    // The checks above can fail: a rule that runs a program is found.
    let bad = parse_rules("# c\nACTION==\"add\", \\\n  RUN+=\"/usr/bin/x %k\", PROGRAM=\"y\"\n");
    assert_eq!(
        runs_programs(&bad),
        ["RUN+=\"/usr/bin/x %k\"", "PROGRAM=\"y\""]
    );
}

#[test]
fn loop_device_is_never_a_usb_stick() {
    let src = tempfile::tempdir().expect("tempdir");
    let stick = support::Image::ext4(src.path()).attach();
    let dev = stick.device();
    let stat = rustix::fs::stat(dev).expect("stat loop device");
    let (major, minor) = (
        rustix::fs::major(stat.st_rdev),
        rustix::fs::minor(stat.st_rdev),
    );
    let db = PathBuf::from(format!("/run/udev/data/b{major}:{minor}"));
    // With udevd running, give it time to process the new loop device.
    let udevd = Path::new("/run/udev/control").exists();
    let start = Instant::now();
    let result = loop {
        match properties_from_udev(dev) {
            Err(DeviceError::NotInitialized { .. })
                if udevd && start.elapsed() < Duration::from_secs(10) =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            result => break result,
        }
    };
    let allowed = ["vfat", "exfat", "ext4"].map(String::from);
    match result {
        // No udevd (this container, most CI): libudev finds the device in sysfs but it has no
        // entry in udev's database, so bus and filesystem are unknown. The loader says so
        // instead of reporting a device with no ID_BUS.
        Err(err @ DeviceError::NotInitialized { .. }) => {
            assert!(!db.exists(), "{} exists but: {err}", db.display());
            assert!(err.to_string().contains(&*dev.to_string_lossy()), "{err}");
            assert!(!err.is_refusal());
        }
        // udevd runs: it identified the device, which is on no bus.
        Ok(props) => {
            assert_eq!(props.get("SUBSYSTEM").map(String::as_str), Some("block"));
            assert_eq!(
                props.get("DEVNAME").map(PathBuf::from).as_deref(),
                Some(dev)
            );
            let err = check(dev, &props, &allowed).expect_err("a loop device is not USB");
            assert!(
                matches!(
                    err,
                    DeviceError::MissingProperty {
                        property: "ID_BUS",
                        ..
                    }
                ),
                "{err:?}"
            );
        }
        Err(err) => panic!("unexpected error for {}: {err}", dev.display()),
    }
}
