//! The Go toolchains the byte-equality tests (`goflate_equal.rs`, `pgzip_equal.rs`) build their
//! reference programs with: every toolchain in [`SUPPORTED`], each required (a missing one fails
//! the test, naming its Debian package, since a skipped proof proves nothing), plus `go` on
//! `PATH` when it is another toolchain of a release the port claims ([`CLAIMED_MINORS`]).
//!
//! Docker, BuildKit and containerd are built with recent Go releases, so a port proven equal to
//! one release alone would prove little about real layers. Debian bookworm ships Go 1.19;
//! bookworm-backports ships 1.21, 1.22 and 1.23, which install side by side under
//! `/usr/lib/go-1.NN` (`scripts/install-deps.sh` installs them all).
//!
//! Builds share one Go build cache under Cargo's target directory, so only the first run after
//! a toolchain is installed compiles its standard library (Go 1.20 and later ship none
//! prebuilt: about 15 s each); later builds take a fraction of a second.

#![allow(clippy::disallowed_methods)] // a test harness reads its environment
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// What `command` (a Go reference program) writes to stdout for `data` on its stdin (fed from
/// a thread, so a large input cannot deadlock against a full stdout pipe); `what` names it
/// in the failure.
pub fn filter_output(mut command: Command, data: &[u8], what: &str) -> Vec<u8> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    assert!(out.status.success(), "{what} failed");
    out.stdout
}

/// A real tar of this machine's files (about 5.7 MB): license texts and Perl modules, the input
/// of every Go writer test.
pub fn system_tar() -> &'static [u8] {
    static TAR: OnceLock<Vec<u8>> = OnceLock::new();
    TAR.get_or_init(|| {
        let out = Command::new("tar")
            .args(["-cf", "-", "-C", "/"])
            .args([
                "usr/share/common-licenses",
                "usr/lib/x86_64-linux-gnu/perl-base",
            ])
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success(), "tar failed");
        assert!(out.stdout.len() > 1 << 20, "the system tar is too small");
        out.stdout
    })
}

/// The toolchains every equality test must run against: the `go` binary and the Debian package
/// that installs it.
pub const SUPPORTED: &[(&str, &str)] = &[
    (
        "/usr/lib/go-1.19/bin/go",
        "golang-1.19-go (bookworm's golang-go)",
    ),
    (
        "/usr/lib/go-1.21/bin/go",
        "golang-1.21-go (bookworm-backports)",
    ),
    (
        "/usr/lib/go-1.22/bin/go",
        "golang-1.22-go (bookworm-backports)",
    ),
    (
        "/usr/lib/go-1.23/bin/go",
        "golang-1.23-go (bookworm-backports)",
    ),
];

/// The Go 1.x releases whose writer `goflate` claims to reproduce: a `go` on `PATH` outside
/// them is not compared (Go 1.27 replaced the encoder; before 1.19 nothing is claimed).
pub const CLAIMED_MINORS: std::ops::RangeInclusive<u32> = 19..=26;

/// `21` for `go1.21.13`.
fn minor(version: &str) -> u32 {
    version
        .strip_prefix("go1.")
        .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the Go version {version:?}"))
}

/// One installed Go toolchain.
#[derive(Debug, Clone)]
pub struct Toolchain {
    /// As `go version` names it, e.g. `go1.21.13`.
    pub version: String,
    /// The `go` command.
    pub go: PathBuf,
}

impl Toolchain {
    /// A `go` command of this toolchain that uses it and nothing else: no switch to another
    /// toolchain (`GOTOOLCHAIN=local`), no network, the shared build cache.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.go);
        cmd.env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "")
            .env("GOPROXY", "off")
            .env("GOCACHE", build_cache());
        cmd
    }
}

/// The Go build cache all toolchains share (Go keys its entries by toolchain and inputs).
fn build_cache() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go-build-cache")
}

fn version_of(go: &Path) -> String {
    let out = Command::new(go)
        .arg("version")
        .env("GOTOOLCHAIN", "local")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} ({e})", go.display()));
    assert!(out.status.success(), "{} version failed", go.display());
    let said = String::from_utf8_lossy(&out.stdout);
    said.split_whitespace()
        .nth(2)
        .filter(|v| v.starts_with("go1."))
        .unwrap_or_else(|| panic!("{} version said {said:?}", go.display()))
        .to_string()
}

/// Every toolchain to test against, in [`SUPPORTED`] order, then `go` on `PATH` if it is none
/// of those and of a release in [`CLAIMED_MINORS`]. Panics, naming the package to install, when
/// a supported toolchain is missing.
pub fn toolchains() -> &'static [Toolchain] {
    static ALL: OnceLock<Vec<Toolchain>> = OnceLock::new();
    ALL.get_or_init(|| {
        let mut all = Vec::new();
        let mut seen = Vec::new();
        for (go, package) in SUPPORTED {
            let go = Path::new(go);
            assert!(
                go.is_file(),
                "{} is missing: install the Debian package {package} (scripts/install-deps.sh \
                 installs every Go the equality tests need)",
                go.display()
            );
            seen.push(go.canonicalize().unwrap());
            all.push(Toolchain {
                version: version_of(go),
                go: go.to_path_buf(),
            });
        }
        let on_path = std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("go"))
                .find(|go| go.is_file())
        });
        if let Some(go) = on_path {
            if !seen.contains(&go.canonicalize().unwrap()) {
                let version = version_of(&go);
                if CLAIMED_MINORS.contains(&minor(&version)) {
                    all.push(Toolchain { version, go });
                } else {
                    eprintln!(
                        "gotoolchains: not comparing with {} ({version}): the port claims Go \
                         1.{}..1.{} only",
                        go.display(),
                        CLAIMED_MINORS.start(),
                        CLAIMED_MINORS.end()
                    );
                }
            }
        }
        all
    })
}

/// The versions of [`toolchains`], for messages: `go1.19.8, go1.21.13, ...`.
pub fn versions() -> String {
    toolchains()
        .iter()
        .map(|t| t.version.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Builds the Go program `src` once with every toolchain, in parallel, into `dir`; `setup`
/// adds what a build needs beyond [`Toolchain::command`] (environment, working directory).
/// Returns each toolchain with its binary, in [`toolchains`] order.
pub fn build_all(
    src: &Path,
    dir: &Path,
    setup: impl Fn(&mut Command) + Sync,
) -> Vec<(Toolchain, PathBuf)> {
    let name = src.file_stem().unwrap().to_string_lossy().into_owned();
    std::thread::scope(|scope| {
        let builds: Vec<_> = toolchains()
            .iter()
            .enumerate()
            .map(|(i, tc)| {
                // Two `go` commands may be one release (a `go` on PATH of its own).
                let bin = dir.join(format!("{name}-{i}-{}", tc.version));
                let setup = &setup;
                scope.spawn(move || {
                    let mut cmd = tc.command();
                    cmd.arg("build").arg("-o").arg(&bin).arg(src);
                    setup(&mut cmd);
                    let status = cmd
                        .status()
                        .unwrap_or_else(|e| panic!("cannot run {} ({e})", tc.go.display()));
                    assert!(
                        status.success(),
                        "{} build {} failed",
                        tc.version,
                        src.display()
                    );
                    (tc.clone(), bin)
                })
            })
            .collect();
        builds.into_iter().map(|b| b.join().unwrap()).collect()
    })
}
