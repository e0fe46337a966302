//! Ed25519 keys, key ids, key files and signatures.
//!
//! Keys are Ed25519 because it has no parameters to get wrong, deterministic signatures (signing
//! the same statement twice gives the same bytes) and small keys that fit inline in a trust
//! policy. Key files are the formats `openssl` reads and writes, so an operator can inspect or
//! generate them with tools they already trust:
//!
//! - private key: PEM `PRIVATE KEY`, unencrypted PKCS#8 v1 as `openssl genpkey -algorithm
//!   ed25519` writes it (v2 with the public key, as other tools write, is read too);
//! - public key: PEM `PUBLIC KEY`, the 44-byte SubjectPublicKeyInfo `openssl pkey -pubout` writes.
//!
//! What is signed is never the statement bytes alone but [`SIGNING_DOMAIN`] followed by them (see
//! [`signed_message`]), so a signature made for a sideload statement can never be replayed as a
//! signature over anything else, nor the reverse.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Domain-separation prefix of every signed message.
///
/// A signature covers `SIGNING_DOMAIN || canonical statement bytes`. This constant is part of the
/// bundle format: changing it invalidates every signature ever made, so a new statement format
/// that needs a different prefix gets a new version (`v2`), never an edit of this one.
pub const SIGNING_DOMAIN: &[u8] = b"sideload statement v1\n";

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (0 unused bits) }, followed by the 32 raw key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// DER prefix of an unencrypted Ed25519 PKCS#8 v1 private key (RFC 8410): SEQUENCE { INTEGER 0,
/// SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING (32 bytes) } }, followed by the
/// 32-byte seed.
const ED25519_PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Largest key file read. Real ones are about 120 bytes; the cap stops a wrong path (a disk
/// image, `/dev/zero`) from being read whole.
const MAX_KEY_FILE_LEN: u64 = 16 * 1024;

const PEM_PRIVATE: &str = "PRIVATE KEY";
const PEM_PUBLIC: &str = "PUBLIC KEY";

/// Why a key, key file, key id or signature could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A file could not be read, created or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// Key files are never overwritten: the old key may be the only copy of a trusted key.
    #[error("{} already exists; refusing to overwrite a key file (choose another name or move it away)", path.display())]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },
    /// A key name (the `NAME` of `NAME.key`) that is not a plain file name.
    #[error("invalid key name {name:?}: {reason}")]
    InvalidKeyName {
        /// The name given.
        name: String,
        /// What rule it broke.
        reason: &'static str,
    },
    /// Bytes that are not the key or signature they claim to be.
    #[error("{}invalid {what}: {reason}", in_file(path))]
    Encoding {
        /// The file the bytes came from, when they came from one.
        path: Option<PathBuf>,
        /// "public key", "private key", "signature", "key id".
        what: &'static str,
        /// What is wrong with them.
        reason: String,
    },
    /// The system random number generator failed; no key was made.
    #[error("the system random number generator failed")]
    Random,
}

fn in_file(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!("{}: ", p.display()),
        None => String::new(),
    }
}

impl KeyError {
    fn encoding(what: &'static str, reason: impl Into<String>) -> KeyError {
        KeyError::Encoding {
            path: None,
            what,
            reason: reason.into(),
        }
    }

    /// Attaches the file name to an encoding error, so the message says which file is bad.
    fn in_file(self, file: &Path) -> KeyError {
        match self {
            KeyError::Encoding {
                path: None,
                what,
                reason,
            } => KeyError::Encoding {
                path: Some(file.to_owned()),
                what,
                reason,
            },
            other => other,
        }
    }
}

/// Short identifier of a public key: the first 8 bytes of sha256(raw 32-byte key), as 16
/// lower-case hex digits.
///
/// Signatures name their key by id so a verifier picks the key without trying all of them. The
/// id is a hint, never trusted on its own: the signature is always checked with the key the
/// policy holds for that id, and the policy checks on load that each id matches its key.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct KeyId(String);

impl KeyId {
    /// The 16 hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for KeyId {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<KeyId, KeyError> {
        if s.len() != 16 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            let shown: String = s.chars().take(40).collect();
            return Err(KeyError::encoding(
                "key id",
                format!("{shown:?} is not 16 lower-case hex digits"),
            ));
        }
        Ok(KeyId(s.to_owned()))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for KeyId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for KeyId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An Ed25519 public key (the raw 32 bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

impl PublicKey {
    /// Wraps raw key bytes; they must be exactly 32.
    pub fn from_raw(bytes: &[u8]) -> Result<PublicKey, KeyError> {
        let raw: [u8; 32] = bytes.try_into().map_err(|_| {
            KeyError::encoding(
                "public key",
                format!("expected 32 bytes, found {}", bytes.len()),
            )
        })?;
        Ok(PublicKey(raw))
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The id signatures use to name this key.
    pub fn key_id(&self) -> KeyId {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.0);
        KeyId(
            digest.as_ref()[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        )
    }

    /// Standard base64 of the raw 32 bytes: the form a trust policy holds inline.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }

    /// Parses the inline form of [`PublicKey::to_base64`].
    pub fn from_base64(text: &str) -> Result<PublicKey, KeyError> {
        let bytes = BASE64
            .decode(text.trim())
            .map_err(|e| KeyError::encoding("public key", format!("not base64: {e}")))?;
        PublicKey::from_raw(&bytes)
    }

    /// The DER SubjectPublicKeyInfo `openssl pkey -pubout -outform DER` writes.
    pub fn to_spki_der(&self) -> Vec<u8> {
        let mut der = ED25519_SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.0);
        der
    }

    /// Parses a DER SubjectPublicKeyInfo; only Ed25519 is accepted.
    pub fn from_spki_der(der: &[u8]) -> Result<PublicKey, KeyError> {
        match der.strip_prefix(&ED25519_SPKI_PREFIX[..]) {
            Some(raw) if raw.len() == 32 => PublicKey::from_raw(raw),
            _ => Err(KeyError::encoding(
                "public key",
                "not an Ed25519 SubjectPublicKeyInfo (expected 44 bytes starting 302a300506032b6570032100)",
            )),
        }
    }

    /// PEM `PUBLIC KEY` text, as `openssl pkey -pubout` writes it.
    pub fn to_pem(&self) -> String {
        pem_encode(PEM_PUBLIC, &self.to_spki_der())
    }

    /// Parses PEM `PUBLIC KEY` text.
    pub fn from_pem(text: &str) -> Result<PublicKey, KeyError> {
        let der = pem_decode(text, PEM_PUBLIC, "public key")?;
        PublicKey::from_spki_der(&der)
    }

    /// Reads a `.pub` file.
    pub fn read_pem_file(path: &Path) -> Result<PublicKey, KeyError> {
        let text = read_small_text(path)?;
        PublicKey::from_pem(&text).map_err(|e| e.in_file(path))
    }

    /// Reads the public key from either a `.pub` file or a private `.key` file (whichever the
    /// PEM label says), so tools can take whichever the operator has at hand.
    pub fn read_from_either_file(path: &Path) -> Result<PublicKey, KeyError> {
        let text = read_small_text(path)?;
        if text.contains(&format!("-----BEGIN {PEM_PRIVATE}-----")) {
            let key = SigningKey::from_pem(&text).map_err(|e| e.in_file(path))?;
            Ok(key.public_key())
        } else {
            PublicKey::from_pem(&text).map_err(|e| e.in_file(path))
        }
    }

    /// Checks a raw 64-byte Ed25519 signature over `SIGNING_DOMAIN || statement_bytes`.
    pub fn verify_statement(&self, statement_bytes: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(&signed_message(statement_bytes), signature)
            .is_ok()
    }
}

/// The exact bytes a signature covers: [`SIGNING_DOMAIN`] followed by the canonical statement.
pub fn signed_message(statement_bytes: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNING_DOMAIN.len() + statement_bytes.len());
    message.extend_from_slice(SIGNING_DOMAIN);
    message.extend_from_slice(statement_bytes);
    message
}

/// An Ed25519 private key, able to sign statements.
///
/// It deliberately has no way to export the private key again: the only copy is the file it was
/// generated into (see [`write_keypair`]).
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.key_id())
    }
}

impl SigningKey {
    /// Makes a new key from the system random number generator. Returns it together with its
    /// PKCS#8 DER encoding, the only form in which the private key can be stored.
    ///
    /// The encoding is PKCS#8 v1, byte for byte what `openssl genpkey -algorithm ed25519` writes:
    /// OpenSSL 3 cannot read the v2 form that *ring* generates, and operators must be able to
    /// inspect keys with openssl.
    pub fn generate() -> Result<(SigningKey, Vec<u8>), KeyError> {
        use ring::rand::SecureRandom as _;
        let mut seed = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| KeyError::Random)?;
        let mut pkcs8 = ED25519_PKCS8_V1_PREFIX.to_vec();
        pkcs8.extend_from_slice(&seed);
        seed.fill(0);
        let key = SigningKey::from_pkcs8_der(&pkcs8)?;
        Ok((key, pkcs8))
    }

    /// Parses unencrypted PKCS#8 DER (v1 as openssl writes it, or v2 with the public key; a v2
    /// public key that does not match the private key is refused).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<SigningKey, KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|e| {
            KeyError::encoding(
                "private key",
                format!("not an unencrypted Ed25519 PKCS#8 key ({e})"),
            )
        })?;
        Ok(SigningKey { pair })
    }

    /// Parses PEM `PRIVATE KEY` text.
    pub fn from_pem(text: &str) -> Result<SigningKey, KeyError> {
        let der = pem_decode(text, PEM_PRIVATE, "private key")?;
        SigningKey::from_pkcs8_der(&der)
    }

    /// Reads a `.key` file.
    pub fn read_pem_file(path: &Path) -> Result<SigningKey, KeyError> {
        let text = read_small_text(path)?;
        SigningKey::from_pem(&text).map_err(|e| e.in_file(path))
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        let raw: [u8; 32] = self
            .pair
            .public_key()
            .as_ref()
            .try_into()
            .expect("Ed25519 public keys are 32 bytes");
        PublicKey(raw)
    }

    /// Id of the matching public key.
    pub fn key_id(&self) -> KeyId {
        self.public_key().key_id()
    }

    /// Signs canonical statement bytes (with the domain prefix, see [`signed_message`]).
    ///
    /// The bytes are signed as given; callers check they are a canonical statement first, so a
    /// signer never signs something a device would refuse to parse.
    pub fn sign_statement(&self, statement_bytes: &[u8]) -> Signature {
        let sig = self.pair.sign(&signed_message(statement_bytes));
        Signature {
            key_id: self.key_id(),
            signature: BASE64.encode(sig.as_ref()),
        }
    }
}

/// One signature over a statement, as stored in a `.sig` file and in a bundle.
///
/// JSON: `{"key_id":"<16 hex>","signature":"<base64 of 64 bytes>"}`. The base64 is kept as text
/// here and decoded only when verified, so a malformed signature from a trusted key is reported
/// as a bad signature (tampering) rather than as an unreadable file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// Which key made it.
    pub key_id: KeyId,
    /// Standard base64 of the 64-byte Ed25519 signature.
    pub signature: String,
}

impl Signature {
    /// The raw 64 signature bytes, if the base64 is well formed.
    pub fn raw(&self) -> Result<[u8; 64], KeyError> {
        let bytes = BASE64
            .decode(&self.signature)
            .map_err(|e| KeyError::encoding("signature", format!("not base64: {e}")))?;
        bytes.as_slice().try_into().map_err(|_| {
            KeyError::encoding(
                "signature",
                format!("expected 64 bytes, found {}", bytes.len()),
            )
        })
    }

    /// The `.sig` file form: one JSON object and a newline.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string(self).expect("signature serializes");
        text.push('\n');
        text
    }

    /// Parses the `.sig` file form.
    pub fn from_json(text: &str) -> Result<Signature, KeyError> {
        serde_json::from_str(text).map_err(|e| KeyError::encoding("signature file", e.to_string()))
    }

    /// Reads a `.sig` file.
    pub fn read_file(path: &Path) -> Result<Signature, KeyError> {
        let text = read_small_text(path)?;
        Signature::from_json(&text).map_err(|e| e.in_file(path))
    }
}

/// Generates a key pair and writes `DIR/NAME.key` (PEM PKCS#8, mode 0600) and `DIR/NAME.pub`
/// (PEM SPKI). Returns the new key's id.
///
/// Neither file may exist already: a key is never overwritten. The private key file is created
/// with mode 0600 in the same system call that creates it, so it is never readable by others,
/// not even for a moment.
pub fn write_keypair(dir: &Path, name: &str) -> Result<KeyId, KeyError> {
    check_key_name(name)?;
    let key_path = dir.join(format!("{name}.key"));
    let pub_path = dir.join(format!("{name}.pub"));
    for path in [&key_path, &pub_path] {
        if path.symlink_metadata().is_ok() {
            return Err(KeyError::AlreadyExists { path: path.clone() });
        }
    }
    let (key, pkcs8) = SigningKey::generate()?;
    write_new_file(&key_path, 0o600, pem_encode(PEM_PRIVATE, &pkcs8).as_bytes())?;
    write_new_file(&pub_path, 0o644, key.public_key().to_pem().as_bytes())?;
    Ok(key.key_id())
}

/// Key names become file names, so they are restricted to plain, visible names.
fn check_key_name(name: &str) -> Result<(), KeyError> {
    let reason = if name.is_empty() || name.len() > 100 {
        Some("must be 1 to 100 characters")
    } else if name.starts_with('.') || name.starts_with('-') {
        Some("must not start with '.' or '-'")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("only letters, digits, '.', '_' and '-' are allowed (no path separators)")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(KeyError::InvalidKeyName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Creates `path` (which must not exist) with `mode`, writes `data` and syncs it to disk.
fn write_new_file(path: &Path, mode: u32, data: &[u8]) -> Result<(), KeyError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::AlreadyExists {
                    path: path.to_owned(),
                }
            } else {
                KeyError::Io {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(|source| KeyError::Io {
            path: path.to_owned(),
            source,
        })
}

/// Reads a small text file (key or signature), refusing anything over [`MAX_KEY_FILE_LEN`].
fn read_small_text(path: &Path) -> Result<String, KeyError> {
    let io_err = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > MAX_KEY_FILE_LEN {
        return Err(KeyError::Encoding {
            path: Some(path.to_owned()),
            what: "key or signature file",
            reason: format!("larger than {MAX_KEY_FILE_LEN} bytes"),
        });
    }
    String::from_utf8(bytes).map_err(|_| KeyError::Encoding {
        path: Some(path.to_owned()),
        what: "key or signature file",
        reason: "not UTF-8 text".into(),
    })
}

/// PEM with 64-character lines, as openssl writes it.
fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = BASE64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Extracts the DER of the first PEM block, which must carry `label`. Text around the block
/// (openssl's "explanatory text") is ignored; headers inside it (encrypted PEM) are refused.
fn pem_decode(text: &str, label: &str, what: &'static str) -> Result<Vec<u8>, KeyError> {
    let mut lines = text.lines().map(str::trim);
    let begin = lines
        .by_ref()
        .find(|l| l.starts_with("-----BEGIN "))
        .ok_or_else(|| KeyError::encoding(what, "no PEM block (-----BEGIN ...-----) found"))?;
    let found = begin
        .strip_prefix("-----BEGIN ")
        .and_then(|l| l.strip_suffix("-----"))
        .unwrap_or(begin);
    if found != label {
        let hint = match found {
            "ENCRYPTED PRIVATE KEY" => {
                "; encrypted keys are not supported, decrypt with `openssl pkey -in KEY -out PLAIN.key`"
            }
            "OPENSSH PRIVATE KEY" => "; OpenSSH key files are not supported, use PKCS#8 PEM",
            _ => "",
        };
        return Err(KeyError::encoding(
            what,
            format!("PEM block is {found:?}, expected {label:?}{hint}"),
        ));
    }
    let end = format!("-----END {label}-----");
    let mut b64 = String::new();
    for line in lines {
        if line == end {
            return BASE64
                .decode(b64.as_bytes())
                .map_err(|e| KeyError::encoding(what, format!("PEM body is not base64: {e}")));
        }
        if line.contains(':') {
            return Err(KeyError::encoding(
                what,
                "PEM headers are not supported (is the key encrypted?)",
            ));
        }
        b64.push_str(line);
    }
    Err(KeyError::encoding(what, format!("missing {end:?} line")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A fixed key, so ids and signatures in tests are stable.
    pub(crate) fn fixed_key(seed_byte: u8) -> SigningKey {
        SigningKey {
            pair: Ed25519KeyPair::from_seed_unchecked(&[seed_byte; 32]).unwrap(),
        }
    }

    /// PKCS#8 v1 DER exactly as `openssl genpkey -algorithm ed25519 -outform DER` writes it.
    fn openssl_pkcs8_v1(seed: &[u8; 32]) -> Vec<u8> {
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(seed);
        der
    }

    #[test]
    fn keypair_files_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let id = write_keypair(dir.path(), "release-2026").unwrap();
        let key_path = dir.path().join("release-2026.key");
        let pub_path = dir.path().join("release-2026.pub");

        let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "private key must be 0600, is {mode:o}");

        let key = SigningKey::read_pem_file(&key_path).unwrap();
        let public = PublicKey::read_pem_file(&pub_path).unwrap();
        assert_eq!(key.public_key(), public);
        assert_eq!(key.key_id(), id);
        assert_eq!(PublicKey::read_from_either_file(&key_path).unwrap(), public);
        assert_eq!(PublicKey::read_from_either_file(&pub_path).unwrap(), public);

        let pem = std::fs::read_to_string(&key_path).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(pem.ends_with("-----END PRIVATE KEY-----\n"));
        let pem = std::fs::read_to_string(&pub_path).unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));

        let sig = key.sign_statement(b"statement");
        assert!(public.verify_statement(b"statement", &sig.raw().unwrap()));
    }

    #[test]
    fn keypair_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        write_keypair(dir.path(), "k").unwrap();
        let before = std::fs::read(dir.path().join("k.key")).unwrap();
        assert!(matches!(
            write_keypair(dir.path(), "k"),
            Err(KeyError::AlreadyExists { .. })
        ));
        assert_eq!(std::fs::read(dir.path().join("k.key")).unwrap(), before);

        // A stray .pub alone also blocks, and no .key is left behind.
        std::fs::write(dir.path().join("other.pub"), "x").unwrap();
        assert!(matches!(
            write_keypair(dir.path(), "other"),
            Err(KeyError::AlreadyExists { .. })
        ));
        assert!(!dir.path().join("other.key").exists());
    }

    #[test]
    fn key_names_are_plain_file_names() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "../x", "a/b", ".hidden", "-x", "a b", "a\0b"] {
            assert!(
                matches!(
                    write_keypair(dir.path(), bad),
                    Err(KeyError::InvalidKeyName { .. })
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn key_id_is_stable() {
        // The id derivation is pinned: changing it would orphan every trust policy.
        let key = fixed_key(1);
        let public = key.public_key();
        let expected: String = ring::digest::digest(&ring::digest::SHA256, public.as_bytes())
            .as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(public.key_id().as_str(), expected);
        assert_eq!(public.key_id(), fixed_key(1).key_id());
        assert_ne!(public.key_id(), fixed_key(2).key_id());
        assert_eq!(public.key_id().as_str().len(), 16);
        assert_eq!(
            PublicKey::from_raw(&[0u8; 32]).unwrap().key_id().as_str(),
            "66687aadf862bd77"
        );
    }

    #[test]
    fn key_id_parsing() {
        assert!("0123456789abcdef".parse::<KeyId>().is_ok());
        for bad in [
            "",
            "0123456789ABCDEF",
            "0123456789abcde",
            "0123456789abcdef0",
            "g123456789abcdef",
        ] {
            assert!(bad.parse::<KeyId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn public_pem_as_openssl_writes_it() {
        let public = fixed_key(3).public_key();
        let mut der = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        der.extend_from_slice(public.as_bytes());
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\r\n{}\r\n-----END PUBLIC KEY-----\r\n",
            BASE64.encode(&der)
        );
        assert_eq!(PublicKey::from_pem(&pem).unwrap(), public);
        assert_eq!(public.to_pem().replace('\n', "\r\n"), pem);
        assert_eq!(PublicKey::from_base64(&public.to_base64()).unwrap(), public);
    }

    #[test]
    fn private_pem_as_openssl_writes_it() {
        let seed = [7u8; 32];
        let pem = pem_encode(PEM_PRIVATE, &openssl_pkcs8_v1(&seed));
        let key = SigningKey::from_pem(&pem).unwrap();
        assert_eq!(key.public_key(), fixed_key(7).public_key());
        // openssl's "explanatory text" around the block is ignored.
        let noisy = format!("ED25519 Private-Key:\n{pem}trailing\n");
        assert!(SigningKey::from_pem(&noisy).is_ok());
    }

    #[test]
    fn generated_key_is_what_openssl_writes() {
        let (key, der) = SigningKey::generate().unwrap();
        assert_eq!(der.len(), 48);
        let seed: [u8; 32] = der[16..].try_into().unwrap();
        assert_eq!(der, openssl_pkcs8_v1(&seed));
        assert_eq!(
            SigningKey::from_pkcs8_der(&der).unwrap().key_id(),
            key.key_id()
        );
    }

    #[test]
    fn reads_pkcs8_v2() {
        let rng = ring::rand::SystemRandom::new();
        let v2 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(v2.as_ref()).unwrap();
        let key = SigningKey::from_pem(&pem_encode(PEM_PRIVATE, v2.as_ref())).unwrap();
        assert_eq!(key.public_key().as_bytes(), pair.public_key().as_ref());
    }

    #[test]
    fn wrong_pem_refused() {
        let public_pem = fixed_key(1).public_key().to_pem();
        let err = SigningKey::from_pem(&public_pem).unwrap_err();
        assert!(
            err.to_string().contains("expected \"PRIVATE KEY\""),
            "{err}"
        );
        let err = SigningKey::from_pem(
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("encrypted"), "{err}");
        assert!(PublicKey::from_pem("garbage").is_err());
        assert!(PublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n").is_err());
        // An RSA/EC SPKI is not an Ed25519 key.
        let pem = pem_encode(
            PEM_PUBLIC,
            &[0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x71],
        );
        assert!(PublicKey::from_pem(&pem).is_err());
        assert!(PublicKey::from_base64("AAAA").is_err());
    }

    #[test]
    fn signature_json_and_domain_separation() {
        let key = fixed_key(1);
        let sig = key.sign_statement(b"{}");
        let json = sig.to_json();
        assert!(json.starts_with("{\"key_id\":\""), "{json}");
        assert_eq!(Signature::from_json(&json).unwrap(), sig);
        assert!(Signature::from_json(&json.replacen('{', "{\"extra\":1,", 1)).is_err());

        let raw = sig.raw().unwrap();
        let public = key.public_key();
        assert!(public.verify_statement(b"{}", &raw));
        // The signature covers the domain prefix: verifying the bare bytes fails.
        assert!(UnparsedPublicKey::new(&ED25519, public.as_bytes())
            .verify(b"{}", &raw)
            .is_err());
        assert!(!public.verify_statement(b"{ }", &raw));
        assert!(!fixed_key(2).public_key().verify_statement(b"{}", &raw));
    }
}
