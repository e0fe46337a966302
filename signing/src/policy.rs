//! The trust policy: which keys a device trusts, for which repositories, and how many must sign.
//!
//! A policy is a TOML file the operator writes once per fleet and installs on each device:
//!
//! ```toml
//! # k of n: at least `threshold` distinct trusted keys, each allowed for the repository, must sign
//! threshold = 2
//!
//! [[keys]]
//! id = "0123456789abcdef"            # key id; must match public_key (checked on load)
//! public_key = "base64 of the raw 32-byte Ed25519 key"
//! repositories = ["edge/*", "tools/agent"]
//! comment = "release key 2026 (alice)"  # optional
//! ```
//!
//! Repository patterns are deliberately simple: `*` is any repository, `PREFIX/*` is any
//! repository under `PREFIX/` (at any depth, but not `PREFIX` itself), anything else is one exact
//! repository name. Everything that looks like a mistake (unknown fields, a key id that does not
//! match its key, the same key twice, a threshold no set of keys can meet, a key allowed for
//! nothing) is refused on load, with the file name in the message: a policy that loads is one
//! whose meaning is the one its author intended.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

use crate::keys::{KeyError, KeyId, PublicKey};
use crate::names::RepositoryName;

/// Largest policy file read; real ones are a few KiB.
const MAX_POLICY_LEN: u64 = 1024 * 1024;

/// Why a trust policy could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("trust policy {}: {source}", path.display())]
    Read {
        /// The policy file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// Larger than any real policy.
    #[error("trust policy {}: larger than {MAX_POLICY_LEN} bytes", path.display())]
    TooLarge {
        /// The policy file.
        path: PathBuf,
    },
    /// Not TOML, or not the policy schema (including unknown fields and malformed key ids).
    #[error("trust policy {}: {source}", path.display())]
    Toml {
        /// The policy file.
        path: PathBuf,
        /// The parser's message, with line and column.
        #[source]
        source: toml::de::Error,
    },
    /// A `public_key` that is not base64 of 32 bytes.
    #[error("trust policy {}: key {id}: {source}", path.display())]
    BadPublicKey {
        /// The policy file.
        path: PathBuf,
        /// The id the entry claims.
        id: KeyId,
        /// What is wrong with the key.
        #[source]
        source: KeyError,
    },
    /// An entry's `id` is not the id of its `public_key`: probably a key pasted under the wrong
    /// entry.
    #[error("trust policy {}: key entry says id {stated} but its public_key has id {computed}", path.display())]
    IdMismatch {
        /// The policy file.
        path: PathBuf,
        /// The id written in the entry.
        stated: KeyId,
        /// The id computed from the public key.
        computed: KeyId,
    },
    /// The same key listed twice; merge the entries' repositories instead.
    #[error("trust policy {}: key {id} is listed more than once; merge its entries", path.display())]
    DuplicateKey {
        /// The policy file.
        path: PathBuf,
        /// The repeated key.
        id: KeyId,
    },
    /// A threshold of 0 (anything would pass) or larger than the number of keys (nothing could).
    #[error("trust policy {}: threshold {threshold} is impossible with {keys} key(s); it must be between 1 and the number of keys", path.display())]
    BadThreshold {
        /// The policy file.
        path: PathBuf,
        /// The threshold written.
        threshold: u32,
        /// How many keys the policy lists.
        keys: usize,
    },
    /// A repository pattern that is not `*`, `PREFIX/*` or a repository name.
    #[error("trust policy {}: key {id}: bad repository pattern {pattern:?}: {reason}", path.display())]
    BadPattern {
        /// The policy file.
        path: PathBuf,
        /// The key whose entry holds the pattern.
        id: KeyId,
        /// The pattern (cut to 100 characters).
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A key with an empty `repositories` list could never count; remove the key instead.
    #[error("trust policy {}: key {id} has no repositories; list what it may sign for, or remove the key", path.display())]
    NoRepositories {
        /// The policy file.
        path: PathBuf,
        /// The key.
        id: KeyId,
    },
}

/// Which repositories a key may sign for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepositoryPattern {
    /// `*`: every repository.
    Any,
    /// `PREFIX/*`: every repository whose name starts with `PREFIX/`. Holds `PREFIX/`.
    Prefix(String),
    /// One repository.
    Exact(RepositoryName),
}

impl RepositoryPattern {
    /// Whether a statement for `repository` may count this key's signature.
    pub fn matches(&self, repository: &RepositoryName) -> bool {
        match self {
            RepositoryPattern::Any => true,
            RepositoryPattern::Prefix(prefix) => repository.as_str().starts_with(prefix.as_str()),
            RepositoryPattern::Exact(name) => name == repository,
        }
    }
}

impl FromStr for RepositoryPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<RepositoryPattern, String> {
        if s == "*" {
            return Ok(RepositoryPattern::Any);
        }
        if let Some(prefix) = s.strip_suffix("/*") {
            if prefix.contains('*') {
                return Err(
                    "'*' may only appear once, as the whole pattern or after the last '/'".into(),
                );
            }
            prefix
                .parse::<RepositoryName>()
                .map_err(|e| format!("prefix: {e}"))?;
            return Ok(RepositoryPattern::Prefix(format!("{prefix}/")));
        }
        if s.contains('*') {
            return Err(
                "'*' may only be the whole pattern or follow the last '/' (\"edge/*\")".into(),
            );
        }
        s.parse::<RepositoryName>()
            .map(RepositoryPattern::Exact)
            .map_err(|e| e.to_string())
    }
}

impl fmt::Display for RepositoryPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepositoryPattern::Any => f.write_str("*"),
            RepositoryPattern::Prefix(prefix) => write!(f, "{prefix}*"),
            RepositoryPattern::Exact(name) => f.write_str(name.as_str()),
        }
    }
}

/// One key the device trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    /// Its id (checked against `public_key` on load).
    pub id: KeyId,
    /// The key itself.
    pub public_key: PublicKey,
    /// What it may sign for.
    pub repositories: Vec<RepositoryPattern>,
    /// Whose key this is, for humans.
    pub comment: Option<String>,
}

impl TrustedKey {
    /// Whether this key's signature counts for `repository`.
    pub fn allows(&self, repository: &RepositoryName) -> bool {
        self.repositories.iter().any(|p| p.matches(repository))
    }
}

/// A loaded, checked trust policy. Only [`TrustPolicy::load`] and [`TrustPolicy::from_toml`]
/// make one, so every value has passed the load-time checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustPolicy {
    threshold: usize,
    keys: Vec<TrustedKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    threshold: u32,
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: KeyId,
    public_key: String,
    repositories: Vec<String>,
    #[serde(default)]
    comment: Option<String>,
}

impl TrustPolicy {
    /// Reads and checks a policy file.
    pub fn load(path: &Path) -> Result<TrustPolicy, PolicyError> {
        use std::io::Read;
        let read_err = |source| PolicyError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut text = String::new();
        file.take(MAX_POLICY_LEN + 1)
            .read_to_string(&mut text)
            .map_err(read_err)?;
        if text.len() as u64 > MAX_POLICY_LEN {
            return Err(PolicyError::TooLarge {
                path: path.to_owned(),
            });
        }
        TrustPolicy::from_toml(&text, path)
    }

    /// Parses and checks policy text; `path` is only used in error messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<TrustPolicy, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|source| PolicyError::Toml {
            path: path.to_owned(),
            source,
        })?;
        let mut seen = BTreeSet::new();
        let mut keys = Vec::with_capacity(file.keys.len());
        for entry in file.keys {
            let public_key = PublicKey::from_base64(&entry.public_key).map_err(|source| {
                PolicyError::BadPublicKey {
                    path: path.to_owned(),
                    id: entry.id.clone(),
                    source,
                }
            })?;
            let computed = public_key.key_id();
            if computed != entry.id {
                return Err(PolicyError::IdMismatch {
                    path: path.to_owned(),
                    stated: entry.id,
                    computed,
                });
            }
            if !seen.insert(computed.clone()) {
                return Err(PolicyError::DuplicateKey {
                    path: path.to_owned(),
                    id: computed,
                });
            }
            if entry.repositories.is_empty() {
                return Err(PolicyError::NoRepositories {
                    path: path.to_owned(),
                    id: computed,
                });
            }
            let repositories = entry
                .repositories
                .iter()
                .map(|p| {
                    p.parse().map_err(|reason| PolicyError::BadPattern {
                        path: path.to_owned(),
                        id: computed.clone(),
                        pattern: p.chars().take(100).collect(),
                        reason,
                    })
                })
                .collect::<Result<_, _>>()?;
            keys.push(TrustedKey {
                id: computed,
                public_key,
                repositories,
                comment: entry.comment,
            });
        }
        if file.threshold == 0 || file.threshold as usize > keys.len() {
            return Err(PolicyError::BadThreshold {
                path: path.to_owned(),
                threshold: file.threshold,
                keys: keys.len(),
            });
        }
        Ok(TrustPolicy {
            threshold: file.threshold as usize,
            keys,
        })
    }

    /// How many distinct allowed keys must sign.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// The trusted keys, in file order.
    pub fn keys(&self) -> &[TrustedKey] {
        &self.keys
    }

    /// The trusted key with this id, if any.
    pub fn key(&self, id: &KeyId) -> Option<&TrustedKey> {
        self.keys.iter().find(|k| &k.id == id)
    }
}

/// A `[[keys]]` entry for `public_key`, ready to paste into a policy file.
///
/// Strings are written with TOML escaping, so a comment with quotes cannot break the file.
pub fn key_entry_toml(
    public_key: &PublicKey,
    repositories: &[RepositoryPattern],
    comment: Option<&str>,
) -> String {
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let patterns: Vec<String> = repositories.iter().map(|p| quote(&p.to_string())).collect();
    let mut out = String::from("[[keys]]\n");
    out.push_str(&format!("id = {}\n", quote(public_key.key_id().as_str())));
    out.push_str(&format!(
        "public_key = {}\n",
        quote(&public_key.to_base64())
    ));
    out.push_str(&format!("repositories = [{}]\n", patterns.join(", ")));
    if let Some(comment) = comment {
        out.push_str(&format!("comment = {}\n", quote(comment)));
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::keys::SigningKey;

    pub(crate) fn key(seed: u8) -> SigningKey {
        let seed = [seed; 32];
        // PKCS#8 v1 as openssl writes it.
        let mut der = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        der.extend_from_slice(&seed);
        SigningKey::from_pkcs8_der(&der).unwrap()
    }

    /// Policy text trusting `keys` (seed, patterns) with `threshold`.
    pub(crate) fn policy_toml(threshold: u32, keys: &[(u8, &[&str])]) -> String {
        let mut text = format!("threshold = {threshold}\n");
        for (seed, patterns) in keys {
            let patterns: Vec<RepositoryPattern> =
                patterns.iter().map(|p| p.parse().unwrap()).collect();
            text.push('\n');
            text.push_str(&key_entry_toml(
                &key(*seed).public_key(),
                &patterns,
                Some("test"),
            ));
        }
        text
    }

    pub(crate) fn policy(threshold: u32, keys: &[(u8, &[&str])]) -> TrustPolicy {
        TrustPolicy::from_toml(&policy_toml(threshold, keys), Path::new("test.toml")).unwrap()
    }

    fn load_err(text: &str) -> PolicyError {
        let err = TrustPolicy::from_toml(text, Path::new("/etc/sideload/policy.toml")).unwrap_err();
        assert!(
            err.to_string().contains("/etc/sideload/policy.toml"),
            "message must name the file: {err}"
        );
        err
    }

    #[test]
    fn loads_a_policy() {
        let p = policy(2, &[(1, &["edge/*"]), (2, &["*"]), (3, &["tools/agent"])]);
        assert_eq!(p.threshold(), 2);
        assert_eq!(p.keys().len(), 3);
        let k1 = key(1).key_id();
        assert_eq!(p.key(&k1).unwrap().comment.as_deref(), Some("test"));
        assert_eq!(p.key(&k1).unwrap().public_key, key(1).public_key());
        assert!(p.key(&"0000000000000000".parse().unwrap()).is_none());
    }

    #[test]
    fn load_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, policy_toml(1, &[(1, &["*"])])).unwrap();
        assert_eq!(TrustPolicy::load(&path).unwrap().threshold(), 1);
        let missing = dir.path().join("missing.toml");
        let err = TrustPolicy::load(&missing).unwrap_err();
        assert!(matches!(err, PolicyError::Read { .. }));
        assert!(err.to_string().contains("missing.toml"));
    }

    #[test]
    fn comment_is_optional_and_escaped() {
        let text = format!(
            "threshold = 1\n{}",
            key_entry_toml(&key(1).public_key(), &[RepositoryPattern::Any], None)
        );
        assert!(TrustPolicy::from_toml(&text, Path::new("p")).is_ok());
        let text = format!(
            "threshold = 1\n{}",
            key_entry_toml(
                &key(1).public_key(),
                &[RepositoryPattern::Any],
                Some("bob \"the signer\"\n")
            )
        );
        let p = TrustPolicy::from_toml(&text, Path::new("p")).unwrap();
        assert_eq!(p.keys()[0].comment.as_deref(), Some("bob \"the signer\"\n"));
    }

    #[test]
    fn bad_toml() {
        assert!(matches!(load_err("threshold = "), PolicyError::Toml { .. }));
        assert!(matches!(
            load_err("threshold = -1"),
            PolicyError::Toml { .. }
        ));
        let unknown = policy_toml(1, &[(1, &["*"])])
            .replace("threshold = 1", "threshold = 1\nthreshhold = 1");
        assert!(matches!(load_err(&unknown), PolicyError::Toml { .. }));
        let unknown_in_key = policy_toml(1, &[(1, &["*"])]) + "role = \"root\"\n";
        assert!(matches!(
            load_err(&unknown_in_key),
            PolicyError::Toml { .. }
        ));
        let bad_id = policy_toml(1, &[(1, &["*"])]).replace(key(1).key_id().as_str(), "ABC");
        assert!(matches!(load_err(&bad_id), PolicyError::Toml { .. }));
    }

    #[test]
    fn id_mismatch() {
        let text = policy_toml(1, &[(1, &["*"])])
            .replace(key(1).key_id().as_str(), key(2).key_id().as_str());
        assert!(matches!(load_err(&text), PolicyError::IdMismatch { .. }));
    }

    #[test]
    fn bad_public_key() {
        let text = policy_toml(1, &[(1, &["*"])]).replace(&key(1).public_key().to_base64(), "AAAA");
        assert!(matches!(load_err(&text), PolicyError::BadPublicKey { .. }));
    }

    #[test]
    fn thresholds() {
        assert!(matches!(
            load_err(&policy_toml(0, &[(1, &["*"])])),
            PolicyError::BadThreshold {
                threshold: 0,
                keys: 1,
                ..
            }
        ));
        assert!(matches!(
            load_err(&policy_toml(3, &[(1, &["*"]), (2, &["*"])])),
            PolicyError::BadThreshold {
                threshold: 3,
                keys: 2,
                ..
            }
        ));
        assert!(matches!(
            load_err("threshold = 1\n"),
            PolicyError::BadThreshold { keys: 0, .. }
        ));
    }

    #[test]
    fn duplicate_key() {
        assert!(matches!(
            load_err(&policy_toml(1, &[(1, &["edge/*"]), (1, &["tools/*"])])),
            PolicyError::DuplicateKey { .. }
        ));
    }

    #[test]
    fn bad_patterns() {
        for bad in [
            "edge*", "*/app", "edge/*/x", "Edge/*", "/*", "edge/", "", "**", "edge/**",
        ] {
            let text = policy_toml(1, &[(1, &["*"])]).replace("[\"*\"]", &format!("[{bad:?}]"));
            assert!(
                matches!(load_err(&text), PolicyError::BadPattern { .. }),
                "{bad:?}"
            );
        }
        let none = policy_toml(1, &[(1, &["*"])]).replace("[\"*\"]", "[]");
        assert!(matches!(
            load_err(&none),
            PolicyError::NoRepositories { .. }
        ));
    }

    #[test]
    fn pattern_matching() {
        let repo = |s: &str| s.parse::<RepositoryName>().unwrap();
        let edge: RepositoryPattern = "edge/*".parse().unwrap();
        assert!(edge.matches(&repo("edge/app")));
        assert!(edge.matches(&repo("edge/a/b")));
        assert!(!edge.matches(&repo("edgex/app")));
        assert!(!edge.matches(&repo("edge")));
        assert!(!edge.matches(&repo("x/edge/app")));

        let exact: RepositoryPattern = "tools/agent".parse().unwrap();
        assert!(exact.matches(&repo("tools/agent")));
        assert!(!exact.matches(&repo("tools/agent2")));
        assert!(!exact.matches(&repo("tools/agent/x")));

        let any: RepositoryPattern = "*".parse().unwrap();
        assert!(any.matches(&repo("anything/at/all")));

        for p in ["*", "edge/*", "a/b/*", "tools/agent"] {
            assert_eq!(p.parse::<RepositoryPattern>().unwrap().to_string(), p);
        }
    }
}
