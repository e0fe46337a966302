//! `sideload-registry-plugin`: the device daemon. Thin: parse arguments, set up logging, run.

use std::path::{Path, PathBuf};

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
    /// Configuration file (TOML); every setting has a default, so a missing
    /// /etc/sideload/registry-plugin.toml (the default) means all defaults. [default:
    /// /etc/sideload/registry-plugin.toml]
    #[arg(long)]
    config: Option<PathBuf>,
    /// Check the configuration, the trust policy, the TLS certificate and key and the upload
    /// token file, print a summary, and exit (nothing is written, not even a self-signed
    /// certificate).
    #[arg(long)]
    check_config: bool,
}

/// Exit status for a configuration the daemon cannot run with (sysexits' EX_USAGE); the
/// systemd unit does not restart on it (`RestartPreventExitStatus=64`).
const EXIT_CONFIG: u8 = 64;

/// The configuration file read when `--config` is not given.
const DEFAULT_CONFIG: &str = "/etc/sideload/registry-plugin.toml";

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    init_logging();
    let (config, config_path) = match load_config(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            print_error(&e);
            return std::process::ExitCode::from(EXIT_CONFIG);
        }
    };
    let auth = match check_settings(&config, &config_path) {
        Ok(auth) => auth,
        Err(code) => return code,
    };
    if args.check_config {
        return print_check(&config, &auth, &config_path);
    }
    // Before the runtime: a certificate that does not load is a configuration error.
    let tls = match sideload_registry_plugin::tls::prepare(&config) {
        Ok(t) => t,
        Err(e) => {
            print_error(
                &anyhow::Error::from(e).context(format!("{}: [tls]", config_path.display())),
            );
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
            // Through anyhow for `{:#}`: the message and its causes on one log line.
            let e = anyhow::Error::from(e);
            tracing::error!("{e:#}");
            print_error(&e);
            std::process::ExitCode::FAILURE
        }
    }
}

/// Refuses settings that cannot work, before anything binds or writes: the event receiver,
/// the engine, the trust policy and the upload token. Returns the loaded upload token setting,
/// or the exit status after the error is printed.
fn check_settings(
    config: &Config,
    config_path: &Path,
) -> Result<sideload_registry_plugin::auth::Auth, std::process::ExitCode> {
    let refuse = || std::process::ExitCode::from(EXIT_CONFIG);
    if let Err(e) = config.events.check() {
        eprintln!("error: {}: [events]: {e}", config_path.display());
        return Err(refuse());
    }
    if let Some(Err(e)) = config.engine.as_ref().map(|e| e.check()) {
        eprintln!("error: {}: [engine]: {e}", config_path.display());
        return Err(refuse());
    }
    if let Err(e) = sideload_signing::TrustPolicy::load(&config.trust_policy) {
        // The policy's own error names it and its path ("trust policy /etc/...: ...").
        eprintln!(
            "error: {e}\nwhat to do: write it with `sideload-sign pubkey KEY.pub` (one [[keys]] \
             entry per release key, `threshold = N` on top), or set trust_policy in {}",
            config_path.display()
        );
        return Err(refuse());
    }
    sideload_registry_plugin::auth::Auth::load(&config.auth).map_err(|e| {
        print_error(&anyhow::Error::from(e).context(format!("{}: [auth]", config_path.display())));
        refuse()
    })
}

/// `--check-config`: the TLS setup checked, then a one-line summary (not the whole config:
/// event headers may carry tokens).
fn print_check(
    config: &Config,
    auth: &sideload_registry_plugin::auth::Auth,
    config_path: &Path,
) -> std::process::ExitCode {
    let tls = match sideload_registry_plugin::tls::check(config) {
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
            print_error(
                &anyhow::Error::from(e).context(format!("{}: [tls]", config_path.display())),
            );
            return std::process::ExitCode::from(EXIT_CONFIG);
        }
    };
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
    std::process::ExitCode::SUCCESS
}

/// The configuration from `--config`, or from the default file, or, when that file does not
/// exist, all defaults; and the path it names in messages.
fn load_config(explicit: Option<&Path>) -> anyhow::Result<(Config, PathBuf)> {
    if let Some(path) = explicit {
        if !path.exists() {
            anyhow::bail!(
                "--config {}: no such file; give the daemon's TOML configuration (example: \
                 /usr/share/doc/sideload-device/examples/registry-plugin.toml.example), or no \
                 option at all for {DEFAULT_CONFIG} or, without that file, the defaults",
                path.display()
            );
        }
        return Ok((Config::load(path)?, path.to_owned()));
    }
    let path = PathBuf::from(DEFAULT_CONFIG);
    if path.exists() {
        return Ok((Config::load(&path)?, path));
    }
    let mut config: Config = toml::from_str("")?;
    config.fill_defaults();
    Ok((config, path))
}

/// An error on stderr: its message and each cause on a line of its own, each said once.
fn print_error(err: &anyhow::Error) {
    let mut lines = sideload_signing::report::cause_lines(err.as_ref()).into_iter();
    eprintln!("error: {}", lines.next().unwrap_or_default());
    for cause in lines {
        eprintln!("  caused by: {cause}");
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
    // Colour only for a person at a terminal, never into the journal, a file or a pipe.
    let builder =
        builder.with_ansi(!journald && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if journald {
        builder.without_time().init();
    } else {
        builder.init();
    }
}
