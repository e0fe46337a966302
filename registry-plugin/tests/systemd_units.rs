//! Checks the systemd units and the registry configuration shipped in `systemd/`.
//!
//! - `systemd-analyze verify` accepts `sideload-registry-plugin.service` and Debian's
//!   `docker-registry.service` together with our drop-in `10-sideload-loopback.conf`, with no
//!   warning about any of them. A canary run on deliberately broken copies proves that the
//!   check can fail at all, so the test never passes vacuously.
//! - The plugin unit keeps its type and hardening options (nobody removes them silently).
//! - The drop-in replaces Debian's `ExecStart=` with one that serves `/etc/sideload/registry.yml`.
//! - `registry.yml` binds the registry to loopback only.
//!
//! Needs `systemd-analyze` (Debian package `systemd`) and Debian's `docker-registry` package
//! (for its unit file and `/usr/bin/docker-registry`, which `verify` checks). Neither needs
//! systemd running as PID 1: `verify` loads the units offline. When either is missing, the
//! test fails and says what to install; it does not skip.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

const PLUGIN_UNIT: &str = "sideload-registry-plugin.service";
const REGISTRY_UNIT: &str = "docker-registry.service";
const DROP_IN_DIR: &str = "docker-registry.service.d";
const DROP_IN: &str = "10-sideload-loopback.conf";
const REGISTRY_CONFIG: &str = "registry.yml";

/// The command line the plugin unit runs on a device: program, then arguments.
const PLUGIN_BIN: &str = "/usr/bin/sideload-registry-plugin";
const PLUGIN_ARGS: &str = "--config /etc/sideload/registry-plugin.toml";
const PLUGIN_EXEC_START: &str =
    "/usr/bin/sideload-registry-plugin --config /etc/sideload/registry-plugin.toml";
/// The command line the drop-in gives Debian's registry unit.
const REGISTRY_EXEC_START: &str = "/usr/bin/docker-registry serve /etc/sideload/registry.yml";

/// Where Debian's `docker-registry` package installs its unit (`/lib` is `/usr/lib` on
/// merged-/usr systems; both are tried).
const DEBIAN_REGISTRY_UNIT_PATHS: [&str; 2] = [
    "/lib/systemd/system/docker-registry.service",
    "/usr/lib/systemd/system/docker-registry.service",
];

/// Vendor unit directories. `verify` needs the units ours refer to (`network-online.target`,
/// `multi-user.target`, and the `sysinit.target`/`shutdown.target` of default dependencies);
/// taking them from here, and not from `/etc/systemd/system` or `/run/systemd/system`, keeps
/// the host's own overrides and drop-ins out of the check.
const VENDOR_UNIT_DIRS: [&str; 2] = ["/lib/systemd/system", "/usr/lib/systemd/system"];

/// Options the plugin unit must keep, as `(key, value)` in `[Service]`. The last assignment of
/// a key is the one systemd uses, so that is the one compared.
const REQUIRED_PLUGIN_SERVICE_OPTIONS: &[(&str, &str)] = &[
    ("Type", "notify"),
    ("ExecStart", PLUGIN_EXEC_START),
    ("Restart", "on-failure"),
    ("StateDirectory", "sideload"),
    ("ConfigurationDirectory", "sideload"),
    ("UMask", "0077"),
    ("ProtectSystem", "strict"),
    ("NoNewPrivileges", "yes"),
    ("PrivateTmp", "yes"),
    ("ProtectHome", "yes"),
    ("PrivateDevices", "yes"),
    ("ProtectKernelTunables", "yes"),
    ("ProtectKernelModules", "yes"),
    ("ProtectKernelLogs", "yes"),
    ("ProtectControlGroups", "yes"),
    ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
    ("RestrictNamespaces", "yes"),
    ("LockPersonality", "yes"),
    ("MemoryDenyWriteExecute", "yes"),
    ("RestrictRealtime", "yes"),
    ("SystemCallArchitectures", "native"),
    ("SystemCallFilter", "@system-service"),
    ("CapabilityBoundingSet", ""),
];

fn systemd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("systemd")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// One `Key=value` assignment of a unit file.
#[derive(Debug)]
struct Assignment {
    section: String,
    key: String,
    value: String,
}

/// Reads a unit file the way systemd does, as far as these tests need: `[Section]` headers,
/// `Key=value` lines with surrounding whitespace trimmed, `#`/`;` comment lines, and lines
/// continued with a trailing backslash.
fn parse_unit(text: &str) -> Vec<Assignment> {
    let mut out = Vec::new();
    let mut section = String::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with(';'))
        {
            continue;
        }
        if let Some(continued) = line.strip_suffix('\\') {
            pending.push_str(continued);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let full = std::mem::take(&mut pending);
        if let Some(name) = full.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = name.to_owned();
        } else if let Some((key, value)) = full.split_once('=') {
            out.push(Assignment {
                section: section.clone(),
                key: key.trim().to_owned(),
                value: value.trim().to_owned(),
            });
        } else {
            panic!("not a unit file line: {full:?}");
        }
    }
    out
}

/// The value systemd uses for a single-valued key: the last assignment in the section.
fn last_value<'a>(unit: &'a [Assignment], section: &str, key: &str) -> Option<&'a str> {
    unit.iter()
        .rev()
        .find(|a| a.section == section && a.key == key)
        .map(|a| a.value.as_str())
}

fn values<'a>(unit: &'a [Assignment], section: &str, key: &str) -> Vec<&'a str> {
    unit.iter()
        .filter(|a| a.section == section && a.key == key)
        .map(|a| a.value.as_str())
        .collect()
}

#[test]
fn plugin_unit_keeps_type_and_hardening() {
    let unit = parse_unit(&read(&systemd_dir().join(PLUGIN_UNIT)));
    let mut missing = Vec::new();
    for (key, want) in REQUIRED_PLUGIN_SERVICE_OPTIONS {
        match last_value(&unit, "Service", key) {
            Some(got) if got == *want => {}
            got => missing.push(format!("{key}={want} (found {got:?})")),
        }
    }
    assert!(
        missing.is_empty(),
        "{PLUGIN_UNIT} lost required [Service] options:\n  {}",
        missing.join("\n  ")
    );
    // StateDirectory= already makes /var/lib/sideload writable under ProtectSystem=strict; any
    // ReadWritePaths= would widen the sandbox beyond the data directory.
    let rw = values(&unit, "Service", "ReadWritePaths");
    assert!(
        rw.is_empty(),
        "{PLUGIN_UNIT} must not widen ProtectSystem=strict with ReadWritePaths= (found {rw:?}); \
         StateDirectory=sideload already makes the data directory writable"
    );
    for dep in ["docker-registry.service", "network-online.target"] {
        for key in ["After", "Wants"] {
            let listed = values(&unit, "Unit", key)
                .iter()
                .any(|v| v.split_whitespace().any(|u| u == dep));
            assert!(listed, "{PLUGIN_UNIT}: [Unit] {key}= must list {dep}");
        }
    }
}

#[test]
fn drop_in_serves_the_sideload_registry_config() {
    let drop_in = parse_unit(&read(&systemd_dir().join(DROP_IN_DIR).join(DROP_IN)));
    // A drop-in adds to a list of ExecStart= lines unless an empty assignment clears it first;
    // systemd refuses a simple service with two.
    assert_eq!(
        values(&drop_in, "Service", "ExecStart"),
        ["", REGISTRY_EXEC_START],
        "{DROP_IN} must clear ExecStart= and then set it once"
    );
    // The registry reads REGISTRY_HTTP_ADDR and friends from its environment, overriding the
    // file; the loopback address must come from registry.yml alone.
    let env = values(&drop_in, "Service", "Environment");
    assert!(
        env.iter().all(|v| !v.contains("REGISTRY_")),
        "{DROP_IN} must not override the registry configuration through Environment= ({env:?})"
    );
    let files = values(&drop_in, "Service", "EnvironmentFile");
    assert!(
        files.is_empty(),
        "{DROP_IN} must not read an EnvironmentFile= ({files:?}): it could override http.addr"
    );
}

/// `http.addr` of a distribution registry configuration. A small reader for the block layout
/// `registry.yml` uses (no YAML crate in this workspace): the top-level `http:` key, then its
/// indented child `addr:`.
fn registry_http_addr(yaml: &str) -> Option<String> {
    let strip = |line: &str| -> String {
        // A `#` after whitespace starts a comment; the values we read hold no `#`.
        let cut = line.find(" #").unwrap_or(line.len());
        let line = if line.trim_start().starts_with('#') {
            ""
        } else {
            &line[..cut]
        };
        line.trim_end().to_owned()
    };
    let mut in_http = false;
    let mut child_indent = None;
    for raw in yaml.lines() {
        let line = strip(raw);
        if line.trim().is_empty() {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if indent == 0 {
            in_http = line == "http:";
            child_indent = None;
            continue;
        }
        if !in_http {
            continue;
        }
        let child = *child_indent.get_or_insert(indent);
        if indent != child {
            continue;
        }
        if let Some(value) = line.trim_start().strip_prefix("addr:") {
            return Some(value.trim().trim_matches(['"', '\'']).to_owned());
        }
    }
    None
}

#[test]
fn registry_config_listens_on_loopback_only() {
    let path = systemd_dir().join(REGISTRY_CONFIG);
    let addr = registry_http_addr(&read(&path))
        .unwrap_or_else(|| panic!("{} has no http.addr", path.display()));
    // A SocketAddr needs an explicit IP: ":5001" (all interfaces), "0.0.0.0:5001" or a host
    // name such as "localhost" (whatever it resolves to) are refused here.
    let parsed: std::net::SocketAddr = addr.parse().unwrap_or_else(|e| {
        panic!(
            "{REGISTRY_CONFIG}: http.addr {addr:?} is not IP:port ({e}); it must be 127.0.0.1:PORT"
        )
    });
    assert_eq!(
        parsed.ip(),
        std::net::IpAddr::from([127, 0, 0, 1]),
        "{REGISTRY_CONFIG}: the registry must listen on 127.0.0.1 only, not {addr}"
    );
    assert_ne!(
        parsed.port(),
        5000,
        "{REGISTRY_CONFIG}: port 5000 belongs to the plugin"
    );
}

#[test]
fn registry_addr_reader_reads_only_http_addr() {
    let cfg = |addr: &str| {
        format!("version: 0.1\nlog:\n  addr: 1.2.3.4:1\nhttp:\n  # c\n  addr: {addr}\n  headers:\n    addr: x\n")
    };
    assert_eq!(
        registry_http_addr(&cfg("127.0.0.1:5001")).as_deref(),
        Some("127.0.0.1:5001")
    );
    assert_eq!(
        registry_http_addr(&cfg("\":5001\"  # all")).as_deref(),
        Some(":5001")
    );
    assert_eq!(registry_http_addr("http:\n  net: tcp\n"), None);
    assert!(":5001".parse::<std::net::SocketAddr>().is_err());
}

/// The unit files as installed on a device, with ExecStart= of the plugin pointed at the binary
/// cargo built for this test (`verify` checks that the program exists and is executable).
struct UnitSet {
    dir: tempfile::TempDir,
}

impl UnitSet {
    fn new(debian_registry_unit: &str) -> UnitSet {
        assert_eq!(PLUGIN_EXEC_START, format!("{PLUGIN_BIN} {PLUGIN_ARGS}"));
        let dir = tempfile::tempdir().expect("temporary directory");
        let src = systemd_dir();
        let plugin = read(&src.join(PLUGIN_UNIT));
        let wanted = format!("ExecStart={PLUGIN_EXEC_START}");
        let count = plugin.lines().filter(|l| l.trim() == wanted).count();
        assert_eq!(
            count, 1,
            "{PLUGIN_UNIT} must contain the line {wanted:?} exactly once"
        );
        let plugin = plugin
            .lines()
            .map(|l| {
                if l.trim() == wanted {
                    format!("ExecStart={} {PLUGIN_ARGS}", test_binary())
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        write(&dir.path().join(PLUGIN_UNIT), &(plugin + "\n"));
        write(&dir.path().join(REGISTRY_UNIT), debian_registry_unit);
        write(
            &dir.path().join(DROP_IN_DIR).join(DROP_IN),
            &read(&src.join(DROP_IN_DIR).join(DROP_IN)),
        );
        UnitSet { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn append(&self, relative: &str, text: &str) {
        let path = self.path().join(relative);
        write(&path, &(read(&path) + text));
    }
}

/// The built plugin binary, quoted for ExecStart= (systemd splits on whitespace and expands
/// `%` specifiers).
fn test_binary() -> String {
    let bin = env!("CARGO_BIN_EXE_sideload-registry-plugin");
    assert!(
        !bin.contains(['"', '\\', '\n']),
        "cannot quote the test binary path {bin:?} for ExecStart="
    );
    format!("\"{}\"", bin.replace('%', "%%"))
}

fn debian_registry_unit() -> String {
    for path in DEBIAN_REGISTRY_UNIT_PATHS {
        if let Ok(text) = std::fs::read_to_string(path) {
            return text;
        }
    }
    panic!(
        "Debian's docker-registry.service is not installed (looked in {DEBIAN_REGISTRY_UNIT_PATHS:?}). \
         Install the Debian package `docker-registry`: the drop-in is verified together with its \
         unit, and `verify` checks that /usr/bin/docker-registry exists."
    );
}

/// Output of `systemd-analyze verify` on the units in `set`.
struct Verify {
    success: bool,
    /// Every line printed, stdout then stderr.
    lines: Vec<String>,
}

fn systemd_analyze_verify(set: &UnitSet) -> Verify {
    // Our directory first, then the vendor directories that exist, deduplicated (`/lib` is a
    // symlink to `/usr/lib` on merged-/usr systems). A path list without a trailing `:` replaces
    // systemd's default search path instead of extending it.
    let mut dirs: Vec<PathBuf> = vec![set.path().to_owned()];
    for d in VENDOR_UNIT_DIRS {
        if let Ok(canonical) = std::fs::canonicalize(d) {
            if !dirs.contains(&canonical) {
                dirs.push(canonical);
            }
        }
    }
    let unit_path: OsString = std::env::join_paths(&dirs).expect("unit path");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        // Documentation=man: links would need man-db; generators need root and read the host.
        .arg("--man=no")
        .arg("--generators=no")
        .arg(set.path().join(PLUGIN_UNIT))
        .arg(set.path().join(REGISTRY_UNIT))
        .env("SYSTEMD_UNIT_PATH", unit_path)
        // Pin the level: a CI-wide SYSTEMD_LOG_LEVEL=debug would print harmless lines that
        // name our units. Warnings and errors are what we look for.
        .env("SYSTEMD_LOG_LEVEL", "info")
        .env("SYSTEMD_LOG_COLOR", "0")
        .env("SYSTEMD_LOG_LOCATION", "0")
        .env("SYSTEMD_PAGER", "cat")
        .output()
        .unwrap_or_else(|e| missing_systemd_analyze(&e));
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
        .map(str::to_owned)
        .collect();
    Verify {
        success: out.status.success(),
        lines,
    }
}

fn missing_systemd_analyze(e: &std::io::Error) -> ! {
    panic!(
        "cannot run `systemd-analyze` ({e}). Install the Debian package `systemd`, which ships \
         /usr/bin/systemd-analyze; systemd need not be PID 1, `verify` works offline."
    )
}

/// The lines of `verify` output that concern the units under test. `verify` also loads the
/// vendor units ours depend on and looks at the host (container detection, SELinux, the
/// manager's environment); on some hosts that prints warnings that have nothing to do with us,
/// so only lines that name one of our units or files (systemd prefixes its messages with the
/// unit name, or with `PATH:LINE:` for parse errors) count.
fn lines_about_our_units<'a>(set: &UnitSet, verify: &'a Verify) -> Vec<&'a str> {
    let dir = set.path().to_string_lossy().into_owned();
    let needles = [dir.as_str(), PLUGIN_UNIT, REGISTRY_UNIT, DROP_IN];
    verify
        .lines
        .iter()
        .map(String::as_str)
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .collect()
}

#[test]
fn systemd_analyze_verify_accepts_the_units() {
    let debian_unit = debian_registry_unit();
    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`systemd-analyze --version` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => missing_systemd_analyze(&e),
    }

    // Canary: broken copies must be reported, through the same filter. Otherwise a changed
    // output format, an ignored SYSTEMD_UNIT_PATH or a drop-in that is not picked up would make
    // the real check below pass without checking anything.
    let canary = UnitSet::new(&debian_unit);
    canary.append(PLUGIN_UNIT, "[Service]\nSideloadCanaryPlugin=1\n");
    canary.append(
        &format!("{DROP_IN_DIR}/{DROP_IN}"),
        "SideloadCanaryDropIn=1\n",
    );
    let verify = systemd_analyze_verify(&canary);
    let reported = lines_about_our_units(&canary, &verify);
    for key in ["SideloadCanaryPlugin", "SideloadCanaryDropIn"] {
        assert!(
            reported.iter().any(|l| l.contains(key)),
            "systemd-analyze verify did not report the unknown key {key} planted in a copy of \
             our units, so it cannot be trusted to check them. It printed (success={}):\n{}",
            verify.success,
            verify.lines.join("\n")
        );
    }

    let set = UnitSet::new(&debian_unit);
    let verify = systemd_analyze_verify(&set);
    let ours = lines_about_our_units(&set, &verify);
    assert!(
        verify.success && ours.is_empty(),
        "systemd-analyze verify complained about our units (success={}):\n{}\n\nfull output:\n{}",
        verify.success,
        ours.join("\n"),
        verify.lines.join("\n")
    );
}
