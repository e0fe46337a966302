//! Newtypes for untrusted names that travel inside statements.
//!
//! Every value here comes from a bundle, a registry or a file someone handed us. Each type checks
//! its value when it is constructed (also when deserialized), so code that holds one never has to
//! wonder whether it may contain `/..`, NUL bytes or upper-case hex. None of them is ever joined
//! onto a filesystem path as is; a digest's hex part is safe as a file name, and that is the only
//! such use.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct InvalidName {
    /// What was being parsed: "digest", "repository name", "tag".
    pub kind: &'static str,
    /// The offending value, cut to 100 characters so a hostile value cannot flood logs.
    pub value: String,
    /// What rule it broke.
    pub reason: &'static str,
}

impl InvalidName {
    fn new(kind: &'static str, value: &str, reason: &'static str) -> Self {
        InvalidName {
            kind,
            value: value.chars().take(100).collect(),
            reason,
        }
    }
}

macro_rules! string_newtype {
    ($name:ident) => {
        impl $name {
            /// The validated value.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
        impl TryFrom<String> for $name {
            type Error = InvalidName;
            fn try_from(s: String) -> Result<Self, InvalidName> {
                s.parse()
            }
        }
    };
}

/// A content digest, `sha256:` followed by 64 lower-case hex digits.
///
/// Only sha256 is accepted: it is what Docker and every common registry use, and a second
/// algorithm would be a second way to be wrong. The hex part is safe to use as a file name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Digest(String);
string_newtype!(Digest);

impl Digest {
    /// The 64 hex digits without the algorithm prefix.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// Digest of a byte slice (for small things: configs, manifests, statements).
    pub fn of_bytes(bytes: &[u8]) -> Digest {
        Digest::from_sha256(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
    }

    /// Builds a digest from a raw 32-byte sha256 value.
    pub fn from_sha256(raw: &[u8]) -> Digest {
        assert_eq!(raw.len(), 32, "sha256 output is 32 bytes");
        let mut s = String::with_capacity(71);
        s.push_str("sha256:");
        for b in raw {
            s.push_str(&format!("{b:02x}"));
        }
        Digest(s)
    }

    /// The first 12 hex digits, as `docker images` shows IDs.
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }
}

impl FromStr for Digest {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, InvalidName> {
        let hex = s.strip_prefix("sha256:").ok_or_else(|| {
            InvalidName::new("digest", s, "only sha256:<hex> digests are accepted")
        })?;
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(InvalidName::new(
                "digest",
                s,
                "expected 64 lower-case hex digits after sha256:",
            ));
        }
        Ok(Digest(s.to_owned()))
    }
}

/// A repository name as the OCI distribution spec defines it (`[a-z0-9]+` components joined by
/// `.`, `_`, `__` or `-`, separated by `/`), at most 255 characters.
///
/// A registry host prefix (`registry.example:5000/`) is not part of it: the device stores the
/// image under its own registry.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct RepositoryName(String);
string_newtype!(RepositoryName);

impl FromStr for RepositoryName {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, InvalidName> {
        const KIND: &str = "repository name";
        if s.is_empty() || s.len() > 255 {
            return Err(InvalidName::new(KIND, s, "must be 1 to 255 characters"));
        }
        for component in s.split('/') {
            if !valid_path_component(component) {
                return Err(InvalidName::new(
                    KIND,
                    s,
                    "each /-separated part must be lower-case letters and digits, joined by single '.', '_', '__' or dashes",
                ));
            }
        }
        Ok(RepositoryName(s.to_owned()))
    }
}

fn valid_path_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if alnum(b) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// An image tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`, as the distribution spec defines it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Tag(String);
string_newtype!(Tag);

impl FromStr for Tag {
    type Err = InvalidName;
    fn from_str(s: &str) -> Result<Self, InvalidName> {
        let bytes = s.as_bytes();
        let first_ok = bytes
            .first()
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_');
        let rest_ok = bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !first_ok || !rest_ok || bytes.len() > 128 {
            return Err(InvalidName::new(
                "tag",
                s,
                "must match [A-Za-z0-9_][A-Za-z0-9._-]{0,127}",
            ));
        }
        Ok(Tag(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests() {
        let d = Digest::of_bytes(b"");
        assert_eq!(
            d.as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.short(), "e3b0c44298fc");
        assert!(
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855"
                .parse::<Digest>()
                .is_err()
        );
        assert!("sha512:00".parse::<Digest>().is_err());
        assert!("sha256:../../etc/passwd".parse::<Digest>().is_err());
    }

    #[test]
    fn repository_names() {
        for ok in ["app", "edge/app", "a.b/c_d/e__f/g--h", "library/python3"] {
            assert!(ok.parse::<RepositoryName>().is_ok(), "{ok}");
        }
        for bad in [
            "", "App", "../x", "a//b", "/a", "a/", "a/./b", "a..b", "a___b", "a b", "a\0b",
        ] {
            assert!(bad.parse::<RepositoryName>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tags() {
        for ok in ["latest", "v1.2.3", "_x", "1-2_3.4"] {
            assert!(ok.parse::<Tag>().is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", &"x".repeat(129)] {
            assert!(bad.parse::<Tag>().is_err(), "{bad:?}");
        }
    }
}
