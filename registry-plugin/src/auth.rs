//! The optional upload token (`[auth]`). Signatures decide what gets applied; the token
//! decides who may spend the device's disk and link on uploads (and, with
//! `protect_status`, who may read what it holds). Pulls, `/health` and `/metrics` never need
//! it, and by default neither do clients on the device itself (loopback).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use hyper::header::HeaderValue;

use crate::config::AuthConfig;

/// What a request touches, for deciding whether it needs the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `/sideload/v1/uploads...`: always needs the token when one is set.
    Upload,
    /// `/sideload/v1/bundles...`, `/journal`, `/inventory`: needs it with `protect_status`.
    Status,
    /// `/sideload/v1/admin/...` (list and delete anyone's uploads): always needs the token
    /// when one is set; without a token, only loopback clients may use it, since an upload's
    /// id is what lets a client write to or delete it.
    Operator,
    /// Everything else (`/v2/`, `/health`, `/metrics`, unknown routes).
    Open,
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No `Authorization` header.
    Missing,
    /// An `Authorization` header that is not `Bearer TOKEN`.
    Malformed,
    /// A bearer token that is not this device's.
    Wrong,
    /// The operator API from another host while no token is configured.
    NotLocal,
}

/// Why the upload token file (`auth.upload_token_file`) cannot be used. A configuration error:
/// the daemon does not start. Each message names the file and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file cannot be read.
    #[error("cannot read auth.upload_token_file {}: {cause}; create it with the token (e.g. `openssl rand -hex 32 > FILE; chmod 600 FILE`) or remove the setting", path.display())]
    Read {
        /// The token file.
        path: PathBuf,
        /// Why it cannot be read (quoted in the message, so not a source).
        cause: std::io::Error,
    },
    /// The file holds nothing but white space.
    #[error("auth.upload_token_file {} is empty; put the token in it (e.g. `openssl rand -hex 32 > FILE`)", path.display())]
    Empty {
        /// The token file.
        path: PathBuf,
    },
    /// The token has spaces or bytes outside printable ASCII, which a `Bearer` header cannot
    /// carry.
    #[error("the token in auth.upload_token_file {} has spaces or characters an HTTP header cannot carry; use printable ASCII only (e.g. `openssl rand -hex 32`)", path.display())]
    NotHeaderSafe {
        /// The token file.
        path: PathBuf,
    },
}

/// The loaded `[auth]` settings. Holds only the token's SHA-256, never the token, so it
/// cannot end up in a log or a debug dump.
pub struct Auth {
    token_digest: Option<[u8; 32]>,
    exempt_loopback: bool,
    protect_status: bool,
}

impl Auth {
    /// No token: every request is let through (the daemon's behaviour without `[auth]`).
    pub fn open() -> Auth {
        Auth {
            token_digest: None,
            exempt_loopback: true,
            protect_status: false,
        }
    }

    /// Reads the token file, if one is configured. An unreadable or empty file, or one whose
    /// token an HTTP header cannot carry, is a configuration error naming the file.
    pub fn load(config: &AuthConfig) -> Result<Auth, TokenFileError> {
        let token_digest = match &config.upload_token_file {
            None => None,
            Some(path) => Some(digest(&read_token(path)?)),
        };
        Ok(Auth {
            token_digest,
            exempt_loopback: config.exempt_loopback,
            protect_status: config.protect_status,
        })
    }

    /// True if a token is configured.
    pub fn enabled(&self) -> bool {
        self.token_digest.is_some()
    }

    /// Decides whether a request from `peer` to `scope` may go on.
    pub fn check(
        &self,
        scope: Scope,
        peer: IpAddr,
        authorization: Option<&HeaderValue>,
    ) -> Result<(), Denied> {
        let loopback = peer.to_canonical().is_loopback();
        let Some(expected) = &self.token_digest else {
            return match scope {
                Scope::Operator if !loopback => Err(Denied::NotLocal),
                _ => Ok(()),
            };
        };
        let needs = match scope {
            Scope::Upload | Scope::Operator => true,
            Scope::Status => self.protect_status,
            Scope::Open => false,
        };
        // `::ffff:127.0.0.1` (a v4 client on a dual-stack listener) counts as loopback too.
        if !needs || (self.exempt_loopback && loopback) {
            return Ok(());
        }
        let value = authorization.ok_or(Denied::Missing)?;
        let token = bearer(value.as_bytes()).ok_or(Denied::Malformed)?;
        // Digests of both sides, compared without an early exit: the time taken says
        // nothing about how much of the token was right.
        let given = digest(token);
        let diff = given
            .iter()
            .zip(expected.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if std::hint::black_box(diff) == 0 {
            Ok(())
        } else {
            Err(Denied::Wrong)
        }
    }
}

/// The token of `Bearer TOKEN` (scheme case-insensitive, RFC 7235).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = value.trim_ascii();
    let space = value.iter().position(|b| *b == b' ')?;
    let (scheme, token) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = token.trim_ascii();
    (!token.is_empty()).then_some(token)
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn read_token(path: &Path) -> Result<Vec<u8>, TokenFileError> {
    let bytes = std::fs::read(path).map_err(|cause| TokenFileError::Read {
        path: path.to_owned(),
        cause,
    })?;
    let token = bytes.trim_ascii();
    if token.is_empty() {
        return Err(TokenFileError::Empty {
            path: path.to_owned(),
        });
    }
    if !token.iter().all(|b| b.is_ascii_graphic()) {
        return Err(TokenFileError::NotHeaderSafe {
            path: path.to_owned(),
        });
    }
    if token.len() < 16 {
        tracing::warn!(file = %path.display(), "the upload token is shorter than 16 characters; a longer one is harder to guess");
    }
    Ok(token.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(token: &str, exempt_loopback: bool, protect_status: bool) -> Auth {
        Auth {
            token_digest: Some(digest(token.as_bytes())),
            exempt_loopback,
            protect_status,
        }
    }

    fn header(v: &str) -> HeaderValue {
        HeaderValue::from_str(v).unwrap()
    }

    #[test]
    fn bearer_tokens_are_checked_where_needed() {
        let remote: IpAddr = "192.0.2.7".parse().unwrap();
        let a = auth("s3cret-token", true, false);
        assert_eq!(a.check(Scope::Upload, remote, None), Err(Denied::Missing));
        assert_eq!(
            a.check(Scope::Upload, remote, Some(&header("Basic czNjcmV0"))),
            Err(Denied::Malformed)
        );
        assert_eq!(
            a.check(Scope::Upload, remote, Some(&header("Bearer s3cret-tokeN"))),
            Err(Denied::Wrong)
        );
        assert_eq!(
            a.check(
                Scope::Upload,
                remote,
                Some(&header("bearer  s3cret-token "))
            ),
            Ok(())
        );
        assert_eq!(a.check(Scope::Status, remote, None), Ok(()));
        assert_eq!(a.check(Scope::Open, remote, None), Ok(()));
        let strict = auth("s3cret-token", true, true);
        assert_eq!(
            strict.check(Scope::Status, remote, None),
            Err(Denied::Missing)
        );
        assert_eq!(strict.check(Scope::Open, remote, None), Ok(()));
    }

    #[test]
    fn loopback_is_exempt_only_when_configured() {
        let a = auth("t", true, true);
        for peer in ["127.0.0.1", "127.3.4.5", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(
                a.check(Scope::Upload, peer.parse().unwrap(), None),
                Ok(()),
                "{peer}"
            );
        }
        assert_eq!(
            a.check(Scope::Upload, "::ffff:10.0.0.1".parse().unwrap(), None),
            Err(Denied::Missing)
        );
        let b = auth("t", false, false);
        assert_eq!(
            b.check(Scope::Upload, "127.0.0.1".parse().unwrap(), None),
            Err(Denied::Missing)
        );
    }

    #[test]
    fn the_operator_api_needs_the_token_or_loopback() {
        let remote: IpAddr = "192.0.2.7".parse().unwrap();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let open = Auth::open();
        assert_eq!(open.check(Scope::Operator, local, None), Ok(()));
        assert_eq!(
            open.check(Scope::Operator, remote, None),
            Err(Denied::NotLocal)
        );
        let a = auth("s3cret-token", true, false);
        assert_eq!(a.check(Scope::Operator, remote, None), Err(Denied::Missing));
        assert_eq!(
            a.check(
                Scope::Operator,
                remote,
                Some(&header("Bearer s3cret-token"))
            ),
            Ok(())
        );
        assert_eq!(a.check(Scope::Operator, local, None), Ok(()));
    }

    #[test]
    fn no_token_means_open() {
        let a = Auth::open();
        assert!(!a.enabled());
        assert_eq!(
            a.check(Scope::Upload, "192.0.2.1".parse().unwrap(), None),
            Ok(())
        );
    }

    #[test]
    fn token_files_are_trimmed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let load = |content: &str| {
            std::fs::write(&path, content).unwrap();
            Auth::load(&AuthConfig {
                upload_token_file: Some(path.clone()),
                ..AuthConfig::default()
            })
        };
        let a = load("  abcdefghijklmnopq\n").unwrap();
        assert!(a.enabled());
        let remote: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            a.check(
                Scope::Upload,
                remote,
                Some(&header("Bearer abcdefghijklmnopq"))
            ),
            Ok(())
        );
        let e = load(" \n").err().unwrap().to_string();
        assert!(
            e.contains("is empty") && e.contains(&path.display().to_string()),
            "{e}"
        );
        let e = load("two words").err().unwrap().to_string();
        assert!(e.contains("printable ASCII"), "{e}");
        let e = Auth::load(&AuthConfig {
            upload_token_file: Some(dir.path().join("absent")),
            ..AuthConfig::default()
        })
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("cannot read auth.upload_token_file"), "{e}");
    }
}
