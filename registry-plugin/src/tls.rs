//! TLS for the daemon's second listener (`[tls]`): loading the certificate and key, or, with
//! `tls.self_signed`, making a pair at the first start, and the acceptor the connection code
//! uses. Clients that cannot get a certificate from a CA onto the device pin the leaf
//! certificate by its digest ([`pin`]), which the daemon logs at every start.

use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, TlsConfig};

/// How long a client may take for the TLS handshake: a dead link or a client that never
/// speaks must not hold a task and a file descriptor.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// A certificate and key that load, ready to accept connections.
pub struct Tls {
    /// Wraps accepted TCP streams.
    pub acceptor: TlsAcceptor,
    /// `sha256:HEX` of the leaf certificate: what `sideload push --pin` takes.
    pub pin: String,
    /// The certificate chain file it came from.
    pub cert_file: PathBuf,
    /// This start made the certificate (`tls.self_signed`).
    pub generated: bool,
}

/// What `--check-config` found in `[tls]`, without writing anything.
pub enum Checked {
    /// The files load and belong together; the leaf's pin.
    Ready {
        /// `sha256:HEX` of the leaf certificate.
        pin: String,
    },
    /// Both files are missing and `self_signed` is on: the first start makes them.
    WillGenerate,
}

/// What a certificate file must hold, said after every complaint about one.
const CHAIN_FORMAT: &str =
    "it must hold the certificate chain as `-----BEGIN CERTIFICATE-----` blocks, leaf first";

/// What a key file must hold, said after every complaint about one.
const KEY_FORMAT: &str = "it must hold the leaf certificate's key as PEM (`BEGIN PRIVATE KEY`, `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY`)";

/// Said after a missing certificate or key file when the daemon would not make one.
const GENERATE_HINT: &str = "; point tls.cert_file and tls.key_file at your certificate and key (PEM), or set tls.self_signed = true to have the daemon make a pair";

/// Said after every failure to write a self-signed pair.
const WRITE_ADVICE: &str = "make the directory writable, or point tls.cert_file and tls.key_file into the data directory (the default, DATA_DIR/tls/), which the systemd unit can write";

/// Why `[tls]` cannot be used. Every one is a configuration error (the daemon does not start)
/// and names the file or setting.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `tls.listen` is the plain listener's address.
    #[error("tls.listen {listen} is also the plain listen address; give the TLS listener its own port (e.g. 5443)")]
    SameListen {
        /// The address both name.
        listen: SocketAddr,
    },
    /// With `tls.self_signed`, one file of the pair exists and the other does not: neither is
    /// made, so a certificate clients pinned is never replaced by accident.
    #[error("tls.self_signed: {} exists but {} does not, and a pair is made only when both are missing; restore {}, or remove {} to have a new pair made (clients then need the new pin)", there.display(), gone.display(), gone.display(), there.display())]
    HalfPair {
        /// The file that exists.
        there: PathBuf,
        /// The file that does not.
        gone: PathBuf,
    },
    /// Whether a file exists cannot be told (permissions and the like); it is not taken as
    /// missing, so a file the daemon cannot see is never overwritten.
    #[error("cannot look at {}: {cause}", path.display())]
    LookAt {
        /// The file.
        path: PathBuf,
        /// Why (quoted in the message, so not a source).
        cause: std::io::Error,
    },
    /// The certificate or key file does not exist.
    #[error("{setting} {} does not exist{}", path.display(), if *self_signed { "" } else { GENERATE_HINT })]
    Missing {
        /// `tls.cert_file` or `tls.key_file`.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// `tls.self_signed` is on (then the hint to turn it on is left out).
        self_signed: bool,
    },
    /// The certificate or key file cannot be read.
    #[error("cannot read {setting} {}: {cause}", path.display())]
    Read {
        /// `tls.cert_file` or `tls.key_file`.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// Why (quoted in the message, so not a source).
        cause: std::io::Error,
    },
    /// The certificate file is not PEM.
    #[error("tls.cert_file {} is not valid PEM: {cause}; {CHAIN_FORMAT}", path.display())]
    CertificatePem {
        /// The file.
        path: PathBuf,
        /// The PEM parser's complaint (quoted in the message).
        cause: pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("tls.cert_file {} holds no certificate; {CHAIN_FORMAT}", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no private key.
    #[error("tls.key_file {}: it holds no private key; {KEY_FORMAT}", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The key file is not PEM.
    #[error("tls.key_file {}: it is not valid PEM ({cause}); {KEY_FORMAT}", path.display())]
    KeyPem {
        /// The file.
        path: PathBuf,
        /// The PEM parser's complaint (quoted in the message).
        cause: pem::Error,
    },
    /// The TLS library offers no protocol version this daemon accepts (a build problem).
    #[error("the TLS library has no usable protocol version")]
    NoProtocolVersion(#[source] rustls::Error),
    /// The key does not go with the leaf certificate, or the pair is of a kind the TLS library
    /// does not take.
    #[error("cannot use tls.key_file {} with tls.cert_file {}: {cause}; the key must be the private key of the first (leaf) certificate in the chain", key.display(), cert.display())]
    KeyNotForCertificate {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
        /// The TLS library's complaint (quoted in the message).
        cause: rustls::Error,
    },
    /// A `tls.subject_alt_names` entry is neither a host name nor an IP address.
    #[error("tls.subject_alt_names: {name:?} is neither a host name nor an IP address; list names clients use to reach the device, e.g. [\"device.example\", \"192.168.1.20\"]")]
    BadSubjectAltName {
        /// The entry.
        name: String,
    },
    /// The certificate maker refused the names for a self-signed certificate.
    #[error("tls.subject_alt_names: {cause}")]
    SubjectAltNames {
        /// Its complaint (quoted in the message).
        cause: rcgen::Error,
    },
    /// No key could be made for a self-signed certificate.
    #[error("cannot make a key for the self-signed certificate: {cause}")]
    MakeKey {
        /// Why (quoted in the message).
        cause: rcgen::Error,
    },
    /// The self-signed certificate could not be made.
    #[error("cannot make the self-signed certificate: {cause}")]
    MakeCertificate {
        /// Why (quoted in the message).
        cause: rcgen::Error,
    },
    /// The folder of a file to make for `tls.self_signed` cannot be created.
    #[error("cannot create {} for tls.self_signed: {cause}; {WRITE_ADVICE}", dir.display())]
    CreateDir {
        /// The folder.
        dir: PathBuf,
        /// Why (quoted in the message, so not a source).
        cause: std::io::Error,
    },
    /// The made key cannot be written.
    #[error("cannot write tls.key_file {}: {cause}; {WRITE_ADVICE}", path.display())]
    WriteKey {
        /// The key file.
        path: PathBuf,
        /// Why (quoted in the message, so not a source).
        cause: std::io::Error,
    },
    /// The made certificate cannot be written (the key written before it is taken back).
    #[error("cannot write tls.cert_file {}: {cause}; {WRITE_ADVICE}", path.display())]
    WriteCertificate {
        /// The certificate file.
        path: PathBuf,
        /// Why (quoted in the message, so not a source).
        cause: std::io::Error,
    },
}

/// `sha256:HEX` over a certificate's DER: a pin that survives nothing but the same
/// certificate, so a client pinning it needs no CA.
pub fn pin(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Checks `[tls]` for `--check-config`: the files load and match, or will be generated.
/// `None` when there is no `[tls]` section.
pub fn check(config: &Config) -> Result<Option<Checked>, TlsError> {
    let Some(tls) = &config.tls else {
        return Ok(None);
    };
    check_listen(config, tls)?;
    let (cert, key) = (config.tls_cert_file(), config.tls_key_file());
    if tls.self_signed && to_generate(&cert, &key)? {
        names(config, tls)?;
        return Ok(Some(Checked::WillGenerate));
    }
    let (_, pin) = load(tls, &cert, &key)?;
    Ok(Some(Checked::Ready { pin }))
}

/// Loads the certificate and key of `[tls]`, first making a self-signed pair when
/// `self_signed` is on and both files are missing. `None` when there is no `[tls]` section.
/// Every error names the file or setting and is a configuration error.
pub fn prepare(config: &Config) -> Result<Option<Tls>, TlsError> {
    let Some(tls) = &config.tls else {
        return Ok(None);
    };
    check_listen(config, tls)?;
    let (cert, key) = (config.tls_cert_file(), config.tls_key_file());
    let mut generated = false;
    if tls.self_signed && to_generate(&cert, &key)? {
        generate(config, tls, &cert, &key)?;
        generated = true;
    }
    let (server_config, pin) = load(tls, &cert, &key)?;
    if generated {
        tracing::info!(cert = %cert.display(), key = %key.display(), %pin,
            "made a self-signed TLS certificate (tls.self_signed); clients pin it with `sideload push --pin {pin}`");
    }
    Ok(Some(Tls {
        acceptor: TlsAcceptor::from(Arc::new(server_config)),
        pin,
        cert_file: cert,
        generated,
    }))
}

fn check_listen(config: &Config, tls: &TlsConfig) -> Result<(), TlsError> {
    // Port 0 (the OS picks) on both is two different ports.
    if tls.listen == config.listen && tls.listen.port() != 0 {
        return Err(TlsError::SameListen { listen: tls.listen });
    }
    Ok(())
}

/// With `self_signed`: true if both files are missing (make a pair), false if both exist
/// (load them); half a pair is an error, never overwritten.
fn to_generate(cert: &Path, key: &Path) -> Result<bool, TlsError> {
    match (missing(cert)?, missing(key)?) {
        (true, true) => Ok(true),
        (false, false) => Ok(false),
        (cert_missing, _) => {
            let (gone, there) = if cert_missing {
                (cert, key)
            } else {
                (key, cert)
            };
            Err(TlsError::HalfPair {
                there: there.to_owned(),
                gone: gone.to_owned(),
            })
        }
    }
}

/// True if `path` does not exist; other errors (permissions) are reported, not taken as
/// "missing", so a file the daemon cannot see is never overwritten.
fn missing(path: &Path) -> Result<bool, TlsError> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(cause) => Err(TlsError::LookAt {
            path: path.to_owned(),
            cause,
        }),
    }
}

/// Reads the chain and key, checks they belong together, and builds the server config.
fn load(
    tls: &TlsConfig,
    cert: &Path,
    key: &Path,
) -> Result<(rustls::ServerConfig, String), TlsError> {
    // With self_signed, missing files were dealt with before (made, or half a pair refused).
    let read = |path: &Path, setting: &'static str| {
        std::fs::read(path).map_err(|cause| match cause.kind() {
            std::io::ErrorKind::NotFound => TlsError::Missing {
                setting,
                path: path.to_owned(),
                self_signed: tls.self_signed,
            },
            _ => TlsError::Read {
                setting,
                path: path.to_owned(),
                cause,
            },
        })
    };
    let cert_pem = read(cert, "tls.cert_file")?;
    let key_pem = read(key, "tls.key_file")?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|cause| TlsError::CertificatePem {
            path: cert.to_owned(),
            cause,
        })?;
    let Some(leaf) = chain.first() else {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
        });
    };
    let pin = pin(leaf);
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: key.to_owned(),
        },
        cause => TlsError::KeyPem {
            path: key.to_owned(),
            cause,
        },
    })?;
    if let Ok(meta) = std::fs::metadata(key) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(key = %key.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "the TLS private key is readable by other users; chmod 600 it");
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::NoProtocolVersion)?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|cause| TlsError::KeyNotForCertificate {
            key: key.to_owned(),
            cert: cert.to_owned(),
            cause,
        })?;
    // The daemon speaks HTTP/1.1 only; a client offering just h2 is refused in the handshake.
    server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((server_config, pin))
}

/// The names a generated certificate is valid for: the device id (when it is a valid host
/// name or address), `localhost`, and `tls.subject_alt_names`.
fn names(config: &Config, tls: &TlsConfig) -> Result<Vec<String>, TlsError> {
    let mut names = Vec::new();
    if ServerName::try_from(config.device_id.as_str()).is_ok() {
        names.push(config.device_id.clone());
    } else {
        tracing::warn!(device_id = %config.device_id,
            "the device id is not a valid host name; the self-signed certificate does not name it (clients pin the certificate anyway)");
    }
    names.push("localhost".to_owned());
    for name in &tls.subject_alt_names {
        if ServerName::try_from(name.as_str()).is_err() {
            return Err(TlsError::BadSubjectAltName { name: name.clone() });
        }
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    Ok(names)
}

/// Makes a self-signed certificate and key; the key is written 0600, both through a
/// temporary file so a crash never leaves half a file behind.
fn generate(config: &Config, tls: &TlsConfig, cert: &Path, key: &Path) -> Result<(), TlsError> {
    let names = names(config, tls)?;
    let mut params = rcgen::CertificateParams::new(names.clone())
        .map_err(|cause| TlsError::SubjectAltNames { cause })?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(
        rcgen::DnType::CommonName,
        format!("sideload device {}", config.device_id),
    );
    params.distinguished_name = dn;
    let key_pair = rcgen::KeyPair::generate().map_err(|cause| TlsError::MakeKey { cause })?;
    let certificate = params
        .self_signed(&key_pair)
        .map_err(|cause| TlsError::MakeCertificate { cause })?;
    for path in [cert, key] {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|cause| TlsError::CreateDir {
                    dir: dir.to_owned(),
                    cause,
                })?;
        }
    }
    write_new(key, key_pair.serialize_pem().as_bytes(), 0o600).map_err(|cause| {
        TlsError::WriteKey {
            path: key.to_owned(),
            cause,
        }
    })?;
    if let Err(cause) = write_new(cert, certificate.pem().as_bytes(), 0o644) {
        // A key without its certificate would stop the next start; take it back.
        let _ = std::fs::remove_file(key);
        return Err(TlsError::WriteCertificate {
            path: cert.to_owned(),
            cause,
        });
    }
    tracing::debug!(names = ?names, "self-signed certificate names");
    Ok(())
}

/// Writes `bytes` to `path` (which must not exist) with `mode`, atomically
/// ([`sideload_bundle::fsutil::replace_file`]: a temporary file beside it, synced, renamed).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    // The mode is what was asked for, never more (the umask does not count).
    sideload_bundle::fsutil::replace_file_with(path, mode, bytes)
}

#[cfg(test)]
mod tests {
    use super::pin;

    #[test]
    fn pin_is_sha256_of_the_der_in_lowercase_hex() {
        assert_eq!(
            pin(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
