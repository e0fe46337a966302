//! The loader's configuration (`/etc/sideload/usb-loader.toml`): every setting defaulted,
//! unknown keys refused. `systemd/usb-loader.toml.example` lists them.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Everything the loader reads from its config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The registry plugin's address on this device (its upload and status API).
    pub plugin_url: String,
    /// The trust policy bundles are checked against on the stick, before any is handed over
    /// (the plugin checks again).
    pub trust_policy: PathBuf,
    /// Name of this device in receipts (default: hostname); receipts go to
    /// `FOLDER/receipts/DEVICE_ID/` on the stick.
    pub device_id: String,
    /// Filesystem types accepted on a stick (udev's `ID_FS_TYPE`).
    pub allowed_filesystems: Vec<String>,
    /// The only folder on the stick the loader looks in (bundles directly inside it).
    pub folder: String,
    /// Where sticks are mounted, each in a private directory.
    pub mount_root: PathBuf,
    /// Most directory entries looked at in the folder.
    pub max_entries: usize,
    /// Most trusted bundles handed over from one stick per visit (junk and untrusted files do
    /// not count); the rest stay on the stick for another visit.
    pub max_bundles: usize,
    /// Most bytes of bundle heads (statement and signatures) read and verified per visit;
    /// heads signed by a key of the trust policy are verified first.
    pub max_head_bytes: u64,
    /// Most seconds the scan of the folder may take (cheap checks of each entry).
    pub scan_secs: u64,
    /// Largest bundle taken, bytes.
    pub max_bundle_bytes: u64,
    /// How long to wait, after hand-over, for the plugin to apply the bundles, so the receipts
    /// can say applied or failed (seconds). The stick may be removed earlier; results then go
    /// onto it at its next visit.
    pub apply_wait_secs: u64,
    /// Run at the end (argv, no shell) with `SIDELOAD_USB_RESULT` = `ok`, `failed`, `partial`
    /// or `nothing`, and `SIDELOAD_USB_SUMMARY`: e.g. to drive an LED or a buzzer.
    pub hook: Option<Vec<String>>,
    /// Where the loader remembers uploads in progress and results still to report, per stick.
    pub state_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            plugin_url: "http://127.0.0.1:5000".into(),
            trust_policy: PathBuf::from("/etc/sideload/trust.toml"),
            device_id: String::new(),
            allowed_filesystems: vec!["vfat".into(), "exfat".into(), "ext4".into()],
            folder: "sideload".into(),
            mount_root: PathBuf::from("/run/sideload-usb"),
            max_entries: 100_000,
            max_bundles: 100,
            max_head_bytes: 1 << 30,
            scan_secs: 300,
            max_bundle_bytes: 16 << 30,
            apply_wait_secs: 900,
            hook: None,
            state_dir: PathBuf::from("/var/lib/sideload/usb"),
        }
    }
}

/// Why the config file cannot be used. A configuration error: the loader exits 64 without
/// touching the stick.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read (or, named explicitly, does not exist).
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
    /// `folder` is empty, has a `/` or starts with a dot: the loader looks in exactly one
    /// plain folder at the top of the stick.
    #[error("config {}: folder {folder:?} must be one plain folder name", path.display())]
    BadFolder {
        /// The config file.
        path: PathBuf,
        /// The refused `folder` setting.
        folder: String,
    },
}

impl Config {
    /// Reads the config file; a missing file at the default path means all defaults.
    pub fn load(path: &Path, must_exist: bool) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => String::new(),
            Err(cause) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    cause,
                })
            }
        };
        let mut config: Config = toml::from_str(&text).map_err(|cause| ConfigError::Invalid {
            path: path.to_owned(),
            cause,
        })?;
        if config.device_id.is_empty() {
            config.device_id = std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "device".into());
        }
        if config.folder.is_empty() || config.folder.contains('/') || config.folder.starts_with('.')
        {
            return Err(ConfigError::BadFolder {
                path: path.to_owned(),
                folder: config.folder,
            });
        }
        Ok(config)
    }
}
