//! `sideload-registry-plugin`: the device daemon. Thin: parse arguments, set up logging, run.

use std::path::PathBuf;

use clap::Parser;
use sideload_registry_plugin::config::Config;

/// The sideload device daemon: fronts the local registry, takes signed bundle uploads and inbox
/// deliveries, rebuilds images into the registry, and reports what the device holds.
#[derive(Parser)]
#[command(
    version,
    after_help = "Settings: systemd/registry-plugin.toml.example. Logs: SIDELOAD_LOG=debug. API: docs/upload-api.md."
)]
struct Args {
    /// Configuration file (TOML); every setting has a default.
    #[arg(long, default_value = "/etc/sideload/registry-plugin.toml")]
    config: PathBuf,
    /// Check the configuration, the trust policy, the TLS certificate and key and the upload
    /// token file, print a summary, and exit (nothing is written, not even a self-signed
    /// certificate).
    #[arg(long)]
    check_config: bool,
}

/// Exit status for a configuration the daemon cannot run with (sysexits' EX_USAGE); the
/// systemd unit does not restart on it (`RestartPreventExitStatus=64`).
const EXIT_CONFIG: u8 = 64;

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    init_logging();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::from(EXIT_CONFIG);
        }
    };
    // Settings that cannot work are refused here, before anything binds or writes.
    if let Err(e) = config.events.check() {
        eprintln!("error: {}: [events]: {e}", args.config.display());
        return std::process::ExitCode::from(EXIT_CONFIG);
    }
    if let Some(Err(e)) = config.engine.as_ref().map(|e| e.check()) {
        eprintln!("error: {}: [engine]: {e}", args.config.display());
        return std::process::ExitCode::from(EXIT_CONFIG);
    }
    if let Err(e) = sideload_signing::TrustPolicy::load(&config.trust_policy) {
        eprintln!("error: trust policy: {e}; make one with `sideload-sign pubkey KEY.pub`");
        return std::process::ExitCode::from(EXIT_CONFIG);
    }
    let auth = match sideload_registry_plugin::auth::Auth::load(&config.auth) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {}: [auth]: {e:#}", args.config.display());
            return std::process::ExitCode::from(EXIT_CONFIG);
        }
    };
    if args.check_config {
        let tls = match sideload_registry_plugin::tls::check(&config) {
            Ok(None) => "off".to_owned(),
            Ok(Some(checked)) => {
                let listen = config.tls.as_ref().map(|t| t.listen.to_string());
                match checked {
                    sideload_registry_plugin::tls::Checked::Ready { pin } => {
                        format!("{} (pin {pin})", listen.unwrap_or_default())
                    }
                    sideload_registry_plugin::tls::Checked::WillGenerate => format!(
                        "{} (self-signed certificate made at the first start in {})",
                        listen.unwrap_or_default(),
                        config.tls_cert_file().display()
                    ),
                }
            }
            Err(e) => {
                eprintln!("error: {}: [tls]: {e:#}", args.config.display());
                return std::process::ExitCode::from(EXIT_CONFIG);
            }
        };
        // A summary, not the whole config: event headers may carry tokens.
        println!(
            "config OK: listen {}, tls {tls}, upload token {}, registry {}, data {}, inbox {}, engine {}, events {}",
            config.listen,
            match (auth.enabled(), config.auth.exempt_loopback) {
                (false, _) => "off",
                (true, true) => "required (not from loopback)",
                (true, false) => "required",
            },
            config.registry.url,
            config.data_dir.display(),
            if config.inbox.enabled {
                config.inbox_dir().display().to_string()
            } else {
                "off".into()
            },
            config
                .engine
                .as_ref()
                .map(|e| e.summary())
                .unwrap_or_else(|| "off".into()),
            if config.events.url.is_some() || config.events.command.is_some() {
                "on"
            } else {
                "off"
            },
        );
        return std::process::ExitCode::SUCCESS;
    }
    // Before the runtime: a certificate that does not load is a configuration error.
    let tls = match sideload_registry_plugin::tls::prepare(&config) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {}: [tls]: {e:#}", args.config.display());
            return std::process::ExitCode::from(EXIT_CONFIG);
        }
    };
    let prepared = sideload_registry_plugin::Prepared { tls, auth };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(sideload_registry_plugin::run(config, prepared)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr; under systemd (JOURNAL_STREAM set) without timestamps or colours, which
/// journald adds and would garble.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SIDELOAD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // systemd sets it when stderr goes to the journal, which stamps the time itself.
    #[allow(clippy::disallowed_methods)]
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    if journald {
        builder.without_time().with_ansi(false).init();
    } else {
        builder.init();
    }
}
