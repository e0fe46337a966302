//! `sideload`: the cloud-side command line. Parses arguments, wires the library crates, maps
//! outcomes to exit codes. Everything else lives in `sideload-bundle` and `sideload-signing`.

mod commands;
mod docs;
mod progress;
mod push;
mod state;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

/// Exit code: the bundle was refused (untrusted, tampered, truncated, expired, replayed).
pub const EXIT_REFUSED: u8 = 3;
/// Exit code: something failed that is not the bundle's fault (I/O, disk, missing base).
pub const EXIT_ERROR: u8 = 1;

/// Build, attach signatures to, inspect, verify and apply signed image delta bundles.
#[derive(Parser)]
#[command(
    name = "sideload",
    version,
    about,
    after_help = "Exit codes: 0 success, 1 error, 2 usage, 3 bundle refused (untrusted, tampered, \
                  truncated, expired, replayed).\nSigning keys and signatures: the offline tool \
                  `sideload-sign`.\nLogs: SIDELOAD_LOG=debug."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build an unsigned bundle that turns the base images on a device into the target image.
    Build(commands::build::BuildArgs),
    /// Show what a bundle contains, without trusting it.
    Inspect(commands::inspect::InspectArgs),
    /// Write a bundle's statement to a file, for signing on the offline machine.
    Statement(commands::inspect::StatementArgs),
    /// Attach signature files (made by `sideload-sign sign`) to a bundle, after checking each
    /// against the bundle's statement with the signer's public key.
    Attach(commands::attach::AttachArgs),
    /// Check a bundle against a trust policy: signatures, expiry, sequence, payload digest.
    Verify(commands::apply::VerifyArgs),
    /// Verify a bundle and rebuild its image from base images into a new archive or layout.
    Apply(commands::apply::ApplyArgs),
    /// Send bundles to a device's daemon over a link that drops: resumes, retries, paces.
    #[command(
        after_help = "Exit codes: 0 every bundle taken (and applied, with --wait); 3 one was refused \
                      or failed to apply (do not resend that file); 1 anything else (deadline, \
                      token, TLS, disk, unreachable). A refused bundle stops the list.\nThe token \
                      may also come from SIDELOAD_DEVICE_TOKEN."
    )]
    Push(commands::push::PushArgs),
    /// The fleet ledger: which images are on which device, which bundles are on their way,
    /// rollout plans, IoT Edge manifests rewritten and gated.
    #[command(
        after_help = "Exit codes: 0 success, 1 error, 2 usage; `fleet gate` exits 4 when some \
                      device lacks an image of the manifest (the deployment must wait).\nThe \
                      ledger: --database (or SIDELOAD_FLEET_DATABASE), an SQLite file by \
                      default, postgres://USER@HOST/DB to share one."
    )]
    Fleet(commands::fleet::FleetArgs),
    /// Write man pages and shell completions into DIR (for packagers; see scripts/deb.sh).
    #[command(hide = true)]
    GenerateDocs {
        /// Directory to write `man/` and `completions/` into.
        dir: PathBuf,
    },
}

/// Options shared by commands that read images from registries.
#[derive(Args, Clone)]
pub struct RegistryArgs {
    /// Registry user name for basic auth (`docker://` references).
    #[arg(long, env = "SIDELOAD_REGISTRY_USER")]
    registry_user: Option<String>,
    /// Environment variable holding the registry password (never pass a password as an argument).
    #[arg(long, default_value = "SIDELOAD_REGISTRY_PASSWORD")]
    registry_password_env: String,
    /// Registry host[:port] to reach over plain HTTP (a loopback test registry); repeatable.
    #[arg(long = "insecure-registry")]
    insecure_registries: Vec<String>,
    /// Directory to cache pulled blobs in (default: a temporary directory).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Platform to pick from multi-platform images: `os/arch[/variant]`.
    #[arg(long, default_value = "linux/amd64")]
    platform: String,
}

/// Longest error message shown, in characters; the rest is counted, not printed.
pub const MAX_MESSAGE: usize = 1000;

/// A message built from input, as the terminal may show it (see
/// [`sideload_bundle::text::printable`]).
pub fn shown(text: &str) -> String {
    sideload_bundle::text::printable(text, MAX_MESSAGE)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SIDELOAD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, never into a file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let json = cli.command.json();
    let result = match cli.command {
        Command::Build(args) => commands::build::run(args),
        Command::Inspect(args) => commands::inspect::run_inspect(args),
        Command::Statement(args) => commands::inspect::run_statement(args),
        Command::Attach(args) => commands::attach::run(args),
        Command::Verify(args) => commands::apply::run_verify(args),
        Command::Apply(args) => commands::apply::run_apply(args),
        Command::Push(args) => commands::push::run(args),
        Command::Fleet(args) => commands::fleet::run(args),
        Command::GenerateDocs { dir } => {
            docs::generate(Cli::command(), &dir).map(|()| ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(err) if json => {
            print_json_error(&err);
            report_error(&err)
        }
        Err(err) => report_error(&err),
    }
}

impl Command {
    /// Whether the command was asked for JSON on stdout (`--json`): then its errors are JSON
    /// there too, besides the message on stderr.
    fn json(&self) -> bool {
        match self {
            Command::Build(a) => a.json,
            Command::Inspect(a) => a.json,
            Command::Verify(a) => a.json,
            Command::Apply(a) => a.json,
            Command::Push(a) => a.json,
            _ => false,
        }
    }
}

/// An error as JSON on stdout: `{"ok": false, "error", "causes", "code", "advice"}` (the last
/// two for bundle errors only).
fn print_json_error(err: &anyhow::Error) {
    let mut lines = sideload_signing::report::cause_lines(err.as_ref());
    let message = if lines.is_empty() {
        String::new()
    } else {
        lines.remove(0)
    };
    let mut value = serde_json::json!({ "ok": false, "error": message, "causes": lines });
    if let Some(e) = err.downcast_ref::<sideload_bundle::Error>() {
        value["refused"] = e.is_refusal().into();
        value["code"] = e.code().into();
        value["advice"] = e.advice().into();
    }
    commands::print_json(&value);
}

/// Prints an error on stderr, its message and each cause on a line of its own, each said once,
/// then what to do; returns the exit code it maps to.
fn report_error(err: &anyhow::Error) -> ExitCode {
    // Errors quote their input (tar headers, names, a device's answer): shown escaped and cut,
    // never as raw bytes a terminal would act on.
    let mut lines = sideload_signing::report::cause_lines(err.as_ref()).into_iter();
    eprintln!("error: {}", shown(&lines.next().unwrap_or_default()));
    for cause in lines {
        eprintln!("  caused by: {}", shown(&cause));
    }
    match err.downcast_ref::<sideload_bundle::Error>() {
        Some(e) => {
            eprintln!("what to do: {}", e.advice());
            ExitCode::from(if e.is_refusal() {
                EXIT_REFUSED
            } else {
                EXIT_ERROR
            })
        }
        None => ExitCode::from(EXIT_ERROR),
    }
}
