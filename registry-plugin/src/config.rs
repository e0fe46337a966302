//! The daemon's configuration: one TOML file, every setting defaulted, unknown keys refused
//! (a typo must not silently turn a limit off). `systemd/registry-plugin.toml.example` lists
//! every key with its default and meaning.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::events::EventsConfig;
use crate::sink::SinkConfig;

/// Everything the daemon reads from its config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address clients use: pulls (`/v2/`), bundle uploads and status (`/sideload/v1/`).
    pub listen: SocketAddr,
    /// Name the device reports in its inventory, receipts and events (default: hostname).
    pub device_id: String,
    /// Where uploads, stored bundles, staging, the journal and the event spool live.
    pub data_dir: PathBuf,
    /// The trust policy (threshold and keys) bundles are checked against.
    pub trust_policy: PathBuf,
    /// The local distribution registry the daemon fronts and is the only writer of.
    pub registry: RegistryConfig,
    /// Limits on what uploads may take.
    pub uploads: UploadLimits,
    /// Folder watched for bundles delivered by a file transfer tool.
    pub inbox: InboxConfig,
    /// Also put applied images into the container engine (Docker Engine API or containerd's
    /// CRI), under every name a deployment may use; off when absent.
    pub engine: Option<SinkConfig>,
    /// Where bundle state changes are announced.
    pub events: EventsConfig,
    /// A second listener with TLS for clients off the device; off when absent.
    pub tls: Option<TlsConfig>,
    /// Who may upload (and read status) without the upload token.
    pub auth: AuthConfig,
    /// What the journal keeps.
    pub journal: JournalConfig,
}

/// Bounds on the journal.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Refusals of untrusted deliveries (no statement that verified: not a bundle, unknown
    /// key, bad signature) kept in the history; older ones are deleted and only counted
    /// (`sideload_untrusted_refusals_total` in `/metrics`). Everything about trusted bundles
    /// is kept.
    pub max_untrusted_refusals: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            max_untrusted_refusals: 1000,
        }
    }
}

/// TLS on a second listener: the plain `listen` stays for local clients (USB loader,
/// container engine), remote clients use this one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Address of the TLS listener.
    pub listen: SocketAddr,
    /// Certificate chain, PEM, leaf first (default `DATA_DIR/tls/cert.pem`).
    pub cert_file: Option<PathBuf>,
    /// Private key of the leaf, PEM: PKCS#8, RSA or SEC1 (default `DATA_DIR/tls/key.pem`).
    pub key_file: Option<PathBuf>,
    /// When both files are missing, make a self-signed certificate at the first start (clients
    /// pin it by its digest, which the daemon logs) instead of refusing to start.
    pub self_signed: bool,
    /// Names (DNS or IP) a generated certificate is valid for besides the device id and
    /// `localhost`.
    pub subject_alt_names: Vec<String>,
}

/// The optional upload token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// File holding the token (surrounding whitespace ignored); absent = no token needed.
    /// A file, not a value, so the config can stay world-readable and systemd's
    /// `LoadCredential=` can supply it.
    pub upload_token_file: Option<PathBuf>,
    /// Requests from a loopback address need no token: the USB loader on the same host has
    /// no token to send.
    pub exempt_loopback: bool,
    /// The status API (`bundles`, `journal`, `inventory`) needs the token too.
    pub protect_status: bool,
}

/// The upstream registry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Base URL of the distribution registry, on loopback (`docker-registry serve` with
    /// `http.addr: 127.0.0.1:5001`).
    pub url: String,
    /// Seconds to wait for the registry to answer at start before giving up.
    pub startup_timeout_secs: u64,
}

/// Limits on uploads, enforced with clear 4xx answers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadLimits {
    /// Largest bundle accepted, bytes.
    pub max_bundle_bytes: u64,
    /// Most unfinished uploads whose head is trusted (signatures verified) at once. A head that
    /// arrives while this many are open answers 429 and keeps its bytes (resume later).
    /// Uploads whose head has not been checked yet never count here.
    pub max_concurrent_uploads: usize,
    /// Most uploads whose head has not been checked yet (anyone who reaches the port can make
    /// one). When the budget is full, a new upload evicts the stalest of them: they are cheap
    /// (a head is small) and can never crowd out a trusted one.
    pub max_unchecked_uploads: usize,
    /// Most unchecked uploads one client address may hold; its next upload evicts its own
    /// stalest one, so one client cannot take the whole unchecked budget.
    pub max_unchecked_per_client: usize,
    /// Unchecked uploads untouched this long are removed (seconds). A real client sends the
    /// head right after creating the upload, so minutes are plenty.
    pub unchecked_idle_expiry_secs: u64,
    /// Free space the data directory must keep after a bundle is stored and applied, bytes.
    pub free_disk_reserve_bytes: u64,
    /// Uploads with a trusted head (and finished upload records) untouched this long are
    /// removed (seconds). Slow links resume over days, so the default is long.
    pub idle_expiry_secs: u64,
    /// A request that sends no byte for this long counts as cut (seconds): a dead link must
    /// not hold an upload that its client wants to resume on a new connection.
    pub read_timeout_secs: u64,
}

/// The inbox folder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InboxConfig {
    /// Watch the folder at all.
    pub enabled: bool,
    /// The folder (default `DATA_DIR/inbox`).
    pub dir: Option<PathBuf>,
    /// Where refused files go, each with a `.reason.json` beside it (default
    /// `DATA_DIR/quarantine`).
    pub quarantine_dir: Option<PathBuf>,
    /// How often the folder is scanned, seconds.
    pub poll_secs: u64,
    /// A file whose size and mtime did not change for this long counts as stable, seconds.
    pub settle_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:5000".parse().expect("valid address"),
            device_id: String::new(),
            data_dir: PathBuf::from("/var/lib/sideload"),
            trust_policy: PathBuf::from("/etc/sideload/trust.toml"),
            registry: RegistryConfig::default(),
            uploads: UploadLimits::default(),
            inbox: InboxConfig::default(),
            engine: None,
            events: EventsConfig::default(),
            tls: None,
            auth: AuthConfig::default(),
            journal: JournalConfig::default(),
        }
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            listen: "0.0.0.0:5443".parse().expect("valid address"),
            cert_file: None,
            key_file: None,
            self_signed: false,
            subject_alt_names: Vec::new(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            upload_token_file: None,
            exempt_loopback: true,
            protect_status: false,
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            url: "http://127.0.0.1:5001".into(),
            startup_timeout_secs: 60,
        }
    }
}

impl Default for UploadLimits {
    fn default() -> Self {
        UploadLimits {
            max_bundle_bytes: 16 << 30,
            max_concurrent_uploads: 8,
            max_unchecked_uploads: 16,
            max_unchecked_per_client: 4,
            unchecked_idle_expiry_secs: 300,
            free_disk_reserve_bytes: 1 << 30,
            idle_expiry_secs: 30 * 24 * 3600,
            read_timeout_secs: 120,
        }
    }
}

impl Default for InboxConfig {
    fn default() -> Self {
        InboxConfig {
            enabled: true,
            dir: None,
            quarantine_dir: None,
            poll_secs: 5,
            settle_secs: 10,
        }
    }
}

/// Why the config file cannot be used. A configuration error: the daemon does not start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config {}: {cause}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why it cannot be read (quoted in the message, so not a source).
        cause: std::io::Error,
    },
    /// The file is not TOML, or holds a setting that is unknown or of the wrong type.
    #[error("config {} is not valid: {cause}", path.display())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The parser's complaint, with the line and column (quoted in the message).
        cause: toml::de::Error,
    },
}

impl Config {
    /// Reads and checks the config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
            path: path.to_owned(),
            cause,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|cause| ConfigError::Invalid {
            path: path.to_owned(),
            cause,
        })?;
        config.fill_defaults();
        Ok(config)
    }

    /// Fills the settings whose defaults depend on others.
    pub fn fill_defaults(&mut self) {
        if self.device_id.is_empty() {
            self.device_id = hostname();
        }
    }

    /// The uploads folder (records and part files of resumable uploads).
    pub fn uploads_dir(&self) -> PathBuf {
        self.data_dir.join("uploads")
    }

    /// The inbox folder.
    pub fn inbox_dir(&self) -> PathBuf {
        self.inbox
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("inbox"))
    }

    /// The TLS certificate chain file (`tls.cert_file`, default `DATA_DIR/tls/cert.pem`).
    pub fn tls_cert_file(&self) -> PathBuf {
        self.tls
            .as_ref()
            .and_then(|t| t.cert_file.clone())
            .unwrap_or_else(|| self.data_dir.join("tls").join("cert.pem"))
    }

    /// The TLS private key file (`tls.key_file`, default `DATA_DIR/tls/key.pem`).
    pub fn tls_key_file(&self) -> PathBuf {
        self.tls
            .as_ref()
            .and_then(|t| t.key_file.clone())
            .unwrap_or_else(|| self.data_dir.join("tls").join("key.pem"))
    }

    /// The quarantine folder.
    pub fn quarantine_dir(&self) -> PathBuf {
        self.inbox
            .quarantine_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("quarantine"))
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "device".into())
}
