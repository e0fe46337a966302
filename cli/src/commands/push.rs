//! `sideload push`: bundles to a device over a link that drops (see `crate::push`).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::push::{self, Device, LocalBundle, Observer, Outcome, Report, Settings};
use sideload_device_api::BundleState;

/// Arguments of `sideload push`.
#[derive(Args)]
pub struct PushArgs {
    /// Bundle files, sent in this order (a later one may need an earlier one's image).
    #[arg(required = true)]
    bundles: Vec<PathBuf>,
    /// The device daemon: `https://DEVICE:5443` (or `http://127.0.0.1:5000` on the device).
    #[arg(long, value_name = "URL")]
    to: String,
    /// File holding the device's upload token (sent as `Authorization: Bearer`).
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Trust only the CA certificates in this PEM file (the device's self-signed certificate
    /// works as its own CA).
    #[arg(long, value_name = "PEM")]
    ca_file: Option<PathBuf>,
    /// Accept only a device certificate with this digest (`sha256:HEX`, as the daemon logs it
    /// at start); repeatable, for a certificate change.
    #[arg(long = "pin", value_name = "sha256:HEX")]
    pins: Vec<String>,
    /// Cap the upload rate: bytes per second like curl (`100k`, `1.5m`) or bits per second
    /// like tc (`800kbit`), so telemetry keeps room on the link.
    #[arg(long, value_name = "RATE")]
    limit_rate: Option<String>,
    /// Give up after this long (`90m`, `2h`, `3days`); pushing again resumes. Default: never.
    #[arg(long, value_name = "DURATION")]
    deadline: Option<humantime::Duration>,
    /// Sent data unacknowledged for this long means the link is dead: reconnect and resume.
    /// Shorter gives up connections TCP would have recovered, and the bytes the device held
    /// out of order on them are sent again.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    stall_timeout: humantime::Duration,
    /// First delay after a failure; doubles (with jitter) up to --retry-max.
    #[arg(long, value_name = "DURATION", default_value = "1s")]
    retry_initial: humantime::Duration,
    /// Longest delay between retries.
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    retry_max: humantime::Duration,
    /// After sending, follow each bundle until the device applied it or failed (and, where the
    /// device feeds a container engine, until the engine took it or failed to), and print that.
    #[arg(long)]
    wait: bool,
    /// Print a JSON report on stdout (progress and notes still go to stderr).
    #[arg(long)]
    pub(crate) json: bool,
}

/// The environment variable that may hold the upload token instead of `--token-file`.
pub const TOKEN_ENV: &str = "SIDELOAD_DEVICE_TOKEN";

/// Runs `sideload push`.
pub fn run(args: PushArgs) -> Result<ExitCode> {
    let settings = settings(&args)?;
    let mut locals = Vec::new();
    for path in &args.bundles {
        locals.push(
            LocalBundle::open(path)
                .with_context(|| format!("{} cannot be pushed", path.display()))?,
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let device = runtime.block_on(async { Device::new(&settings) })?;
    let observer = TermObserver::new();
    let reports = runtime.block_on(async {
        let mut reports: Vec<Report> = Vec::new();
        for local in &locals {
            if let Some(blocker) = reports.iter().find(|r| !taken(r.outcome)) {
                let skipped = Report::skipped(
                    local,
                    &format!("not sent: {} did not go through", blocker.name),
                );
                observer.line(&format!(
                    "{}: {}",
                    skipped.name,
                    skipped.reason.as_deref().unwrap_or_default()
                ));
                reports.push(skipped);
                continue;
            }
            let report = device.push(local, &observer).await;
            observer.line(&summary(&report));
            reports.push(report);
        }
        if args.wait {
            for report in reports.iter_mut().filter(|r| taken(r.outcome)) {
                observer.start_wait(&report.name);
                device.wait(report, &observer).await;
                observer.line(&format!(
                    "{}: {}{}{} ({} status requests, {} retried)",
                    report.name,
                    report.state.map_or("unknown", |s| s.as_str()),
                    report
                        .reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default(),
                    report
                        .engine
                        .as_deref()
                        .map(|e| format!("; container engine: {e}"))
                        .unwrap_or_default(),
                    report.status_requests,
                    report.status_retries,
                ));
            }
        }
        reports
    });
    if args.json {
        let text = serde_json::to_string_pretty(&serde_json::json!({ "bundles": reports }))?;
        // A closed pipe (`| head`) is not worth a panic.
        let _ = writeln!(std::io::stdout(), "{text}");
    }
    for r in reports.iter().filter(|r| r.outcome != Outcome::Skipped) {
        if let (Some(reason), Some(advice)) = (&r.reason, &r.advice) {
            if !taken(r.outcome) || r.state == Some(BundleState::Failed) {
                // The device wrote these: shown escaped.
                eprintln!(
                    "error: {}\nwhat to do: {}",
                    crate::shown(reason),
                    crate::shown(advice)
                );
            }
        }
    }
    Ok(exit_code(&reports, args.wait))
}

fn settings(args: &PushArgs) -> Result<Settings> {
    let base = parse_device_url(&args.to)?;
    let token = match &args.token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("cannot read the token file {}", f.display()))?
                .trim()
                .to_owned(),
        ),
        // The documented way to pass the token without a file.
        #[allow(clippy::disallowed_methods)]
        None => std::env::var(TOKEN_ENV).ok().map(|t| t.trim().to_owned()),
    }
    .filter(|t| !t.is_empty());
    let pins = args
        .pins
        .iter()
        .map(|p| push::tls::parse_pin(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    if !pins.is_empty() && args.ca_file.is_some() {
        anyhow::bail!("give --pin or --ca-file, not both: a pin accepts exactly one certificate whatever its issuer");
    }
    let plain = base.scheme_str() == Some("http");
    if plain && (!pins.is_empty() || args.ca_file.is_some()) {
        anyhow::bail!("--pin and --ca-file need an https:// --to URL");
    }
    if plain && token.is_some() && !is_loopback(&base) {
        eprintln!(
            "warning: the upload token crosses the link in clear over http://; use the device's https:// listener"
        );
    }
    Ok(Settings {
        base: format!(
            "{}://{}",
            base.scheme_str().unwrap_or("http"),
            base.authority().map(|a| a.as_str()).unwrap_or_default()
        ),
        token,
        rate: args
            .limit_rate
            .as_deref()
            .map(push::throttle::parse_rate)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        stall_timeout: (*args.stall_timeout).max(Duration::from_secs(1)),
        retry_initial: (*args.retry_initial).max(Duration::from_millis(10)),
        retry_max: *args.retry_max,
        deadline: args.deadline.map(|d| Instant::now() + *d),
        ca_file: args.ca_file.clone(),
        pins,
    })
}

/// `http(s)://HOST[:PORT]` (a trailing `/` allowed): the daemon's routes are at its root.
fn parse_device_url(text: &str) -> Result<hyper::Uri> {
    let bad = || {
        anyhow::anyhow!(
            "--to {text:?} is not a device URL: write https://DEVICE:5443 or http://127.0.0.1:5000"
        )
    };
    let uri: hyper::Uri = text.parse().map_err(|_| bad())?;
    let path_ok = matches!(uri.path(), "" | "/") && uri.query().is_none();
    match (uri.scheme_str(), uri.authority()) {
        (Some("http" | "https"), Some(_)) if path_ok => Ok(uri),
        _ => Err(bad()),
    }
}

fn is_loopback(uri: &hyper::Uri) -> bool {
    let host = uri.host().unwrap_or_default();
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

/// The device has (or had) the bundle.
fn taken(o: Outcome) -> bool {
    matches!(o, Outcome::Known | Outcome::Queued | Outcome::Duplicate)
}

/// 0: every bundle taken (and applied, with `--wait`); 3: one was refused or failed to apply;
/// 1: anything else (deadline, token, disk, TLS, unreachable).
fn exit_code(reports: &[Report], wait: bool) -> ExitCode {
    if reports.iter().any(|r| r.outcome == Outcome::Refused)
        || (wait && reports.iter().any(|r| r.state == Some(BundleState::Failed)))
    {
        return ExitCode::from(crate::EXIT_REFUSED);
    }
    let all = reports
        .iter()
        .all(|r| taken(r.outcome) && (!wait || r.state == Some(BundleState::Applied)));
    if all {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::EXIT_ERROR)
    }
}

fn summary(r: &Report) -> String {
    let how = match r.outcome {
        Outcome::Known => format!(
            "the device already has it ({})",
            r.state.map_or("known", |s| s.as_str())
        ),
        Outcome::Queued => "queued for apply".into(),
        Outcome::Duplicate => "already queued on the device".into(),
        Outcome::Refused => "refused".into(),
        Outcome::Error => "failed".into(),
        Outcome::Deadline => "deadline passed".into(),
        Outcome::Skipped => "not sent".into(),
    };
    format!(
        "{}: {how}; the device took {} of its {} bytes ({} were there before), {} upload requests, \
         {} retries, {:.1} s ({} bytes handed to connections, counting those lost with them)",
        r.name,
        r.held.saturating_sub(r.held_at_start),
        r.size,
        r.held_at_start,
        r.requests,
        r.retries,
        r.seconds,
        r.bytes_sent,
    )
}

/// A progress bar with rate and ETA on a terminal; on a log, a line per note and one every
/// 30 s with the position.
struct TermObserver {
    terminal: bool,
    state: Mutex<ObserverState>,
}

struct ObserverState {
    bar: Option<ProgressBar>,
    name: String,
    size: u64,
    position: u64,
    last_line: Instant,
    started: Instant,
}

impl TermObserver {
    fn new() -> TermObserver {
        TermObserver {
            terminal: std::io::stderr().is_terminal(),
            state: Mutex::new(ObserverState {
                bar: None,
                name: String::new(),
                size: 0,
                position: 0,
                last_line: Instant::now(),
                started: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ObserverState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn line(&self, text: &str) {
        // Lines carry the device's words (reasons, states): shown escaped.
        let text = crate::shown(text);
        match &self.lock().bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn start_wait(&self, name: &str) {
        let mut s = self.lock();
        s.name = name.to_owned();
    }

    fn log_position(&self, s: &mut ObserverState, force: bool) {
        if self.terminal || (!force && s.last_line.elapsed() < Duration::from_secs(30)) {
            return;
        }
        s.last_line = Instant::now();
        let secs = s.started.elapsed().as_secs_f64().max(0.001);
        eprintln!(
            "{}: {} of {} bytes ({:.0}%), {:.0} s",
            s.name,
            s.position.min(s.size),
            s.size,
            100.0 * s.position.min(s.size) as f64 / s.size.max(1) as f64,
            secs
        );
    }
}

impl Observer for TermObserver {
    fn start(&self, name: &str, size: u64) {
        let mut s = self.lock();
        s.name = name.to_owned();
        s.size = size;
        s.position = 0;
        s.started = Instant::now();
        s.last_line = Instant::now();
        if self.terminal {
            let bar = ProgressBar::new(size);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_message(name.to_owned());
            s.bar = Some(bar);
        }
    }

    fn held(&self, held: u64) {
        let mut s = self.lock();
        s.position = held;
        if let Some(bar) = &s.bar {
            bar.set_position(held);
        }
    }

    fn sent(&self, n: u64) {
        let mut s = self.lock();
        s.position += n;
        if let Some(bar) = &s.bar {
            bar.set_position(s.position.min(s.size));
        }
        self.log_position(&mut s, false);
    }

    fn note(&self, line: &str) {
        let s = self.lock();
        let text = crate::shown(&format!("{}: {line}", s.name));
        match &s.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn finish(&self) {
        let mut s = self.lock();
        if let Some(bar) = s.bar.take() {
            bar.finish_and_clear();
        }
    }
}
