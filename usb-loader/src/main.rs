//! `sideload-usb-loader`: started by udev through `sideload-usb@DEVICE.service` when a USB
//! stick is inserted. Thin: arguments, logging, one visit, the final line and the hook.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sideload_usb_loader::config::Config;
use sideload_usb_loader::loader::{self, Target};

/// Applies signed bundles from a USB stick: checks the device, mounts it read-only, hands
/// trusted bundles to the registry plugin, writes receipts back, unmounts.
#[derive(Parser)]
#[command(
    version,
    after_help = "Bundles go in the folder `sideload/` at the top of the stick; receipts come back in `sideload/receipts/DEVICE_ID/`.\nExit codes: 0 every bundle taken (or nothing to do), 1 the visit failed, 3 some bundles refused or failed, 64 bad configuration or TARGET.\nLogs: SIDELOAD_LOG=debug."
)]
struct Args {
    /// The stick's block device (e.g. /dev/sdb1), or with --dry-run also a folder laid out
    /// like a stick.
    target: PathBuf,
    /// Configuration file (TOML); every setting has a default.
    #[arg(long, default_value = "/etc/sideload/usb-loader.toml")]
    config: PathBuf,
    /// Say what would be done (which bundles are trusted, in which order, what is skipped and
    /// why) without sending or writing anything.
    #[arg(long)]
    dry_run: bool,
    /// Take the device's udev properties from this file (`udevadm info --query=property
    /// --name=DEV` output) instead of udev's database; the same checks run on them.
    #[arg(long)]
    properties: Option<PathBuf>,
    /// Print the outcome as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// Exit status for a bad configuration or target (sysexits' EX_USAGE).
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("SIDELOAD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // systemd sets it when stderr goes to the journal, which stamps the time itself.
    #[allow(clippy::disallowed_methods)]
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Colour only for a person at a terminal, never into the journal, a file or a pipe.
    let builder =
        builder.with_ansi(!journald && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if journald {
        builder.without_time().init();
    } else {
        builder.init();
    }
    if !args.target.exists() {
        eprintln!(
            "error: TARGET {}: no such file or directory; give the stick's block device (e.g. \
             /dev/sdb1) or, with --dry-run, a folder laid out like a stick",
            args.target.display()
        );
        return ExitCode::from(EXIT_USAGE);
    }
    let explicit = args.config != std::path::Path::new("/etc/sideload/usb-loader.toml");
    let config = match Config::load(&args.config, explicit) {
        Ok(c) => c,
        Err(e) => {
            print_error(&anyhow::Error::from(e));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let target = if args.target.is_dir() {
        Target::Dir(args.target.clone())
    } else {
        Target::Device {
            // udev may hand over a link (/dev/disk/by-label/...); the checks compare DEVNAME.
            devnode: std::fs::canonicalize(&args.target).unwrap_or_else(|_| args.target.clone()),
            properties: args.properties.clone(),
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a single-threaded runtime starts");
    // SIGTERM (systemd stopping the unit, the stick pulled and the device gone) ends the
    // visit; the mount guard unmounts on the way out.
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = loader::run(&config, target, args.dry_run) => r.map_err(anyhow::Error::from),
            _ = terminate() => Err(anyhow::anyhow!("stopped by a signal; nothing is half-applied, insert the stick again to go on")),
        }
    });
    // Stopped after every bundle was handed over (the stick pulled at SAFE TO REMOVE): the
    // receipts were already written, applying goes on; that is not a failure.
    let outcome = match outcome {
        Err(_) if loader::HANDED_OVER.load(std::sync::atomic::Ordering::SeqCst) => {
            Ok(loader::Outcome::removed_after_hand_over(args.dry_run))
        }
        other => other,
    };

    let (code, result, summary) = match &outcome {
        Ok(o) if o.result.is_success() => (ExitCode::SUCCESS, o.result, o.summary.clone()),
        Ok(o) => (ExitCode::from(3), o.result, o.summary.clone()),
        Err(e) => (
            ExitCode::FAILURE,
            loader::VisitResult::Failed,
            // Each cause once (a wrapper often quotes its source already).
            sideload_signing::report::cause_lines(e.as_ref()).join(": "),
        ),
    };
    // The line a technician's supervisor finds in the journal.
    let result = result.as_str();
    tracing::info!("sideload-usb DONE: {result}: {summary}");
    if args.json {
        if let Ok(o) = &outcome {
            println!("{}", serde_json::to_string_pretty(o).expect("serializes"));
        }
    } else if args.dry_run {
        println!("{summary}");
    }
    if let (Some(hook), false) = (&config.hook, args.dry_run) {
        run_hook(hook, result, &summary);
    }
    code
}

/// An error on stderr: its message and each cause on a line of its own, each said once.
fn print_error(err: &anyhow::Error) {
    let mut lines = sideload_signing::report::cause_lines(err.as_ref()).into_iter();
    eprintln!("error: {}", lines.next().unwrap_or_default());
    for cause in lines {
        eprintln!("  caused by: {cause}");
    }
}

async fn terminate() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Runs the configured hook (LED, buzzer) with the result; its failure is logged only.
fn run_hook(hook: &[String], result: &str, summary: &str) {
    let Some((program, args)) = hook.split_first() else {
        return;
    };
    match std::process::Command::new(program)
        .args(args)
        .env("SIDELOAD_USB_RESULT", result)
        .env("SIDELOAD_USB_SUMMARY", summary)
        .stdin(std::process::Stdio::null())
        .status()
    {
        Ok(s) if s.success() => {}
        Ok(s) => tracing::warn!(?hook, status = %s, "hook failed"),
        Err(e) => tracing::warn!(?hook, error = %e, "cannot run the hook"),
    }
}
