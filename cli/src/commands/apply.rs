//! `sideload verify` and `sideload apply`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;
use sideload_bundle::{
    apply_trusted, check_payload_digest, open_trusted, ImageSet, Limits, Output, Trust, TrustedHead,
};
use sideload_signing::{Statement, TrustPolicy};

use super::{now, open_images, print_json};
use crate::progress::TermProgress;
use crate::state::SequenceState;
use crate::RegistryArgs;

/// Arguments of `sideload verify`.
#[derive(Args)]
pub struct VerifyArgs {
    /// The bundle file.
    bundle: PathBuf,
    /// Trust policy (TOML): trusted keys, threshold, repositories per key.
    #[arg(long)]
    policy: PathBuf,
    /// Anti-rollback state written by `sideload apply --state`; without it, no sequence is
    /// recorded and any sequence passes.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Print the outcome as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
}

/// Arguments of `sideload apply`.
#[derive(Args)]
pub struct ApplyArgs {
    /// The bundle file.
    bundle: PathBuf,
    /// Trust policy (TOML).
    #[arg(long)]
    policy: PathBuf,
    /// An image on this machine the bundle may need (same syntax as `build`); repeatable.
    #[arg(long = "base", short = 'b')]
    bases: Vec<String>,
    /// A directory of images: every `*.tar` in it (docker-archive) and every subdirectory that
    /// is an OCI layout.
    #[arg(long)]
    base_dir: Option<PathBuf>,
    /// Where to write the rebuilt image: `oci:DIR` or `docker-archive:PATH` (must not exist).
    #[arg(long, short = 'o')]
    output: String,
    /// Anti-rollback state: read before, updated after a successful apply.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Print the outcome as JSON on stdout.
    #[arg(long)]
    pub(crate) json: bool,
    #[command(flatten)]
    registry: RegistryArgs,
}

/// Runs `sideload verify`: no side effects.
pub fn run_verify(args: VerifyArgs) -> Result<ExitCode> {
    let policy = TrustPolicy::load(&args.policy)?;
    let state = load_state(args.state.as_deref())?;
    let outcome = verify_whole(&args.bundle, &policy, state.as_ref());
    report(
        &args.bundle,
        args.json,
        outcome.map(|s| {
            format!(
                "{} → {}:{} ({}), sequence {}",
                args.bundle.display(),
                s.target.repository,
                s.target.tags.first().map(|t| t.as_str()).unwrap_or(""),
                s.target.manifest_digest,
                s.sequence
            )
        }),
    )
}

/// Runs `sideload apply`.
pub fn run_apply(args: ApplyArgs) -> Result<ExitCode> {
    let policy = TrustPolicy::load(&args.policy)?;
    let output = parse_output(&args.output)?;
    let mut state = load_state(args.state.as_deref())?;
    let limits = Limits::default();
    let trust = Trust {
        policy: &policy,
        limits: &limits,
        now: now(),
    };
    // Trust first: no base image is opened and no byte of payload read for an untrusted bundle.
    let trusted = match open_trusted(&args.bundle, &trust, floor_in(state.as_ref())) {
        Ok(t) => t,
        Err(e) => return report(&args.bundle, args.json, Err(e)),
    };
    let mut bases = open_images("--base", &args.bases, &args.registry)?;
    if let Some(dir) = &args.base_dir {
        bases.extend(open_images(
            "--base-dir",
            &images_in_dir(dir)?,
            &args.registry,
        )?);
    }
    let bases = ImageSet::new(bases);
    let progress = TermProgress::new(args.json);
    let outcome = apply_trusted(&args.bundle, trusted, &bases, &output, &limits, &progress);
    if let (Ok(applied), Some(state), Some(path)) = (&outcome, state.as_mut(), &args.state) {
        let s = &applied.statement;
        state.record(path, s.target.repository.as_str(), s.sequence)?;
    }
    report(
        &args.bundle,
        args.json,
        outcome.map(|r| {
            format!(
                "{} → {} ({}:{}, manifest {}, config {}); {} layer(s) rebuilt, {} reused",
                args.bundle.display(),
                r.output.display(),
                r.statement.target.repository,
                r.statement
                    .target
                    .tags
                    .first()
                    .map(|t| t.as_str())
                    .unwrap_or(""),
                r.statement.target.manifest_digest,
                r.statement.target.config_digest,
                r.rebuilt_layers,
                r.reused_layers
            )
        }),
    )
}

/// Prints the outcome and chooses the exit code: 0 ok, 3 refused, 1 error.
fn report(
    bundle: &Path,
    json: bool,
    outcome: Result<String, sideload_bundle::Error>,
) -> Result<ExitCode> {
    match outcome {
        Ok(message) => {
            if json {
                print_json(
                    &serde_json::json!({ "bundle": bundle, "ok": true, "message": message }),
                );
            } else {
                println!("OK: {message}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let refused = e.is_refusal();
            if json {
                print_json(&serde_json::json!({
                    "bundle": bundle,
                    "ok": false,
                    "refused": refused,
                    "code": e.code(),
                    "reason": e.to_string(),
                    "advice": e.advice(),
                }));
            } else {
                eprintln!("{}: {e}", if refused { "REFUSED" } else { "FAILED" });
                eprintln!("what to do: {}", e.advice());
            }
            Ok(ExitCode::from(if refused {
                crate::EXIT_REFUSED
            } else {
                crate::EXIT_ERROR
            }))
        }
    }
}

/// The anti-rollback state of `--state`, when given.
fn load_state(path: Option<&Path>) -> Result<Option<SequenceState>> {
    path.map(SequenceState::load).transpose()
}

/// The sequence floor of a repository as `--state` records it (none without `--state`).
fn floor_in(
    state: Option<&SequenceState>,
) -> impl FnOnce(&str) -> Result<Option<u64>, sideload_bundle::Error> + '_ {
    move |repository| Ok(state.and_then(|s| s.get(repository)))
}

/// `verify`'s check without side effects: the head judged, then one read of the payload
/// against the statement's digest.
fn verify_whole(
    bundle: &Path,
    policy: &TrustPolicy,
    state: Option<&SequenceState>,
) -> Result<Statement, sideload_bundle::Error> {
    let limits = Limits::default();
    let trust = Trust {
        policy,
        limits: &limits,
        now: now(),
    };
    let TrustedHead {
        head,
        statement,
        mut file,
    } = open_trusted(bundle, &trust, floor_in(state))?;
    check_payload_digest(&mut file, &head, &statement, bundle)?;
    Ok(statement)
}

fn parse_output(spec: &str) -> Result<Output> {
    if let Some(dir) = spec.strip_prefix("oci:") {
        Ok(Output::OciLayout(dir.into()))
    } else if let Some(path) = spec.strip_prefix("docker-archive:") {
        Ok(Output::DockerArchive(path.into()))
    } else {
        bail!("--output must be oci:DIR or docker-archive:PATH, not {spec:?}")
    }
}

/// Image references for every docker-archive (`*.tar`) and OCI layout directory in `dir`.
fn images_in_dir(dir: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_file() && path.extension().is_some_and(|e| e == "tar") {
            found.push(format!("docker-archive:{}", path.display()));
        } else if meta.is_dir() && path.join("oci-layout").is_file() {
            found.push(format!("oci:{}", path.display()));
        }
    }
    found.sort();
    Ok(found)
}
