//! TLS for the device client (`sideload push`, `sideload fleet`): trust a CA file (the device's own self-signed certificate works as
//! one), or pin the device's certificate by its sha256, which suits devices without a PKI:
//! the pin is printed by the daemon at start and carried to the release engineer once.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};

/// Text that is not a certificate pin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a certificate pin: write sha256:<64 hex digits>, as the device logs it at start"
)]
pub struct BadPin(pub String);

/// Parses `sha256:<64 hex>` (the form the daemon logs) into the digest bytes.
pub fn parse_pin(text: &str) -> Result<[u8; 32], BadPin> {
    let hex = text.trim().strip_prefix("sha256:").unwrap_or(text.trim());
    let bad = || BadPin(text.to_owned());
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// The `sha256:<hex>` pin of a DER certificate.
pub fn pin_of(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    format!("sha256:{}", hex(digest.as_ref()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Accepts exactly the pinned end-entity certificates, whatever their issuer or names; the
/// handshake signatures are still verified, so only the holder of the pinned key gets in.
#[derive(Debug)]
struct PinVerifier {
    pins: Vec<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

/// The certificate the device showed is not one of the pins.
#[derive(Debug)]
struct PinMismatch(String);

impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the device's certificate is {}, not the pinned one",
            self.0
        )
    }
}

impl std::error::Error for PinMismatch {}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let digest = ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref());
        if self.pins.iter().any(|p| p[..] == *digest.as_ref()) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(PinMismatch(pin_of(end_entity.as_ref())))),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A rustls client config that trusts only the pinned certificates.
pub fn pinned_config(
    pins: Vec<[u8; 32]>,
    provider: Arc<CryptoProvider>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    Ok(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier { pins, provider }))
            .with_no_client_auth(),
    )
}

/// The TLS failure inside a request error, if that is what failed: certificate problems are
/// not link drops and must not be retried.
pub fn tls_failure(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        // Only what retrying cannot fix: the certificate. A corrupted record or a reset
        // handshake on a bad link is a drop like any other.
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            match r {
                rustls::Error::InvalidCertificate(CertificateError::Other(o)) => {
                    return Some(o.0.to_string())
                }
                rustls::Error::InvalidCertificate(c) => {
                    return Some(format!("invalid certificate ({c:?})"))
                }
                rustls::Error::NoCertificatesPresented | rustls::Error::PeerIncompatible(_) => {
                    return Some(r.to_string())
                }
                _ => {}
            }
        }
        // Wrappers whose `source` skips the error they hold: io::Error, and boxed errors
        // that connectors pass on as they are.
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|i| i as &(dyn std::error::Error + 'static));
        if let Some(found) = inner.and_then(tls_failure) {
            return Some(found);
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_with_or_without_prefix() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_pin(&format!("sha256:{hex}")), Ok([0xab; 32]));
        assert_eq!(parse_pin(&hex), Ok([0xab; 32]));
        assert!(parse_pin("sha256:abcd").is_err());
        assert!(parse_pin(&"zz".repeat(32)).is_err());
        assert!(parse_pin(&format!("€{}", "a".repeat(61))).is_err());
        assert_eq!(pin_of(b"").len(), 7 + 64);
    }

    #[test]
    fn tls_failures_are_found_inside_io_errors() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        assert!(tls_failure(&io).unwrap().contains("UnknownIssuer"));
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert_eq!(tls_failure(&plain), None);
        // A record damaged on the way is a drop, retried, not a trust problem.
        let damaged =
            std::io::Error::new(std::io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert_eq!(tls_failure(&damaged), None);
    }
}
