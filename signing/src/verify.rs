//! The decision whether a statement is acceptable: signatures, expiry, anti-rollback.
//!
//! [`verify_statement`] is a pure function: no clock, no files, no journal. The caller passes the
//! current time and the sequence it last applied for the repository in a [`VerifyContext`], and
//! gets back either the parsed [`Statement`] or a [`Refusal`] saying why not and what to do.
//! That keeps invariants 1 (nothing unsigned gets in) and 6 (no rollback, no replay) testable on
//! plain data.
//!
//! Checks run in a fixed order, so the same input always gives the same refusal:
//!
//! 1. the statement parses, in canonical form, with a format version this code knows;
//! 2. every signature by a trusted key verifies (one that does not means tampering, and is
//!    refused at once, even if enough other signatures are good);
//! 3. enough distinct trusted keys, each allowed for the statement's repository, signed;
//! 4. the statement has not expired;
//! 5. its sequence is above what the device already applied, unless it allows a downgrade.
//!
//! Payload checks (size, digest) are not here: they belong to the bundle reader, which only reads
//! the payload after this function said yes.

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::keys::{KeyId, Signature};
use crate::names::RepositoryName;
use crate::policy::TrustPolicy;
use crate::statement::{
    Statement, StatementError, FORMAT_VERSION, MAX_STATEMENT_LEN, OLDEST_FORMAT_VERSION,
};
use crate::summary::rfc3339;

/// What the device knows that the statement cannot tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyContext {
    /// Current time, seconds since the Unix epoch (UTC).
    pub now: u64,
    /// Highest sequence already applied for the statement's repository, if any.
    pub recorded_sequence: Option<u64>,
}

impl VerifyContext {
    /// A context at the system clock's current time. For the edges of a program; tests and
    /// replays pass an explicit `now`.
    pub fn at_system_time(recorded_sequence: Option<u64>) -> VerifyContext {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        VerifyContext {
            now,
            recorded_sequence,
        }
    }
}

/// Why a statement was refused. Each variant is one reason; [`Refusal::code`] names it for
/// machines, `Display` explains it, [`Refusal::advice`] says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The statement declares a format version this code does not know.
    #[error("the statement has format version {found}; this device understands versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}")]
    UnknownFormatVersion {
        /// The version found.
        found: u64,
    },
    /// The statement bytes are not a valid canonical statement.
    #[error("the statement cannot be read: {0}")]
    MalformedStatement(#[source] StatementError),
    /// A trusted key's signature does not verify: the statement or the signature was altered.
    #[error("the signature by trusted key {key_id} does not match the statement; the statement or signature was altered")]
    BadSignature {
        /// The trusted key whose signature failed.
        key_id: KeyId,
    },
    /// No signatures at all.
    #[error("the statement is not signed")]
    Unsigned,
    /// Not enough trusted signatures, and some signatures came from keys the policy does not know.
    #[error("signed by key(s) not in the trust policy ({}); {valid} trusted signature(s), {required} required", join(key_ids))]
    UnknownKey {
        /// The unknown keys.
        key_ids: Vec<KeyId>,
        /// Distinct trusted, allowed keys that signed.
        valid: usize,
        /// The policy's threshold.
        required: usize,
    },
    /// Not enough trusted signatures, and some trusted signers may not sign for this repository.
    #[error(
        "key(s) {} are trusted but not for repository {repository}",
        join(key_ids)
    )]
    RepositoryNotAllowed {
        /// The statement's repository.
        repository: RepositoryName,
        /// Trusted keys that signed but are not allowed for it.
        key_ids: Vec<KeyId>,
    },
    /// Every signature is good and trusted, there are just not enough of them.
    #[error("only {valid} trusted signature(s), the trust policy requires {required}")]
    TooFewSignatures {
        /// Distinct trusted, allowed keys that signed.
        valid: usize,
        /// The policy's threshold.
        required: usize,
    },
    /// Past its expiry time.
    #[error("the statement expired at {}; it is now {}", rfc3339(*expires_at), rfc3339(*now))]
    Expired {
        /// The statement's expiry (Unix seconds).
        expires_at: u64,
        /// The time of the check (Unix seconds).
        now: u64,
    },
    /// Not newer than what the device already applied for the repository.
    #[error("a rollback: {repository} is already at sequence {recorded}, this statement has sequence {sequence} and does not allow a downgrade")]
    Rollback {
        /// The statement's repository.
        repository: RepositoryName,
        /// The statement's sequence.
        sequence: u64,
        /// The sequence the device recorded.
        recorded: u64,
    },
}

fn join(ids: &[KeyId]) -> String {
    ids.iter().map(KeyId::as_str).collect::<Vec<_>>().join(", ")
}

impl Refusal {
    /// A stable snake_case identifier, for JSON output, journals and receipts. Never changes
    /// once released; new reasons get new codes.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::UnknownFormatVersion { .. } => "unknown_format_version",
            Refusal::MalformedStatement(_) => "malformed_statement",
            Refusal::BadSignature { .. } => "bad_signature",
            Refusal::Unsigned => "unsigned",
            Refusal::UnknownKey { .. } => "unknown_key",
            Refusal::RepositoryNotAllowed { .. } => "repository_not_allowed",
            Refusal::TooFewSignatures { .. } => "too_few_signatures",
            Refusal::Expired { .. } => "expired",
            Refusal::Rollback { .. } => "rollback",
        }
    }

    /// What the user should do about it, in one sentence.
    pub fn advice(&self) -> &'static str {
        match self {
            Refusal::UnknownFormatVersion { .. } => {
                "update sideload on this device, or build the bundle with the version the device runs"
            }
            Refusal::MalformedStatement(_) => {
                "rebuild the bundle; the statement was damaged or re-encoded after it was built"
            }
            Refusal::BadSignature { .. } => {
                "do not use this bundle; get a fresh copy from the release engineer and report the tampering"
            }
            Refusal::Unsigned => "have the bundle's statement signed with sideload-sign before shipping it",
            Refusal::UnknownKey { .. } => {
                "add the signer's public key to the trust policy, or have the bundle signed by a trusted key"
            }
            Refusal::RepositoryNotAllowed { .. } => {
                "have the bundle signed by keys allowed for this repository, or extend the keys' repositories in the trust policy"
            }
            Refusal::TooFewSignatures { .. } => {
                "collect signatures from more trusted keys until the policy's threshold is met"
            }
            Refusal::Expired { .. } => {
                "ask the release engineer for a freshly signed bundle (and check this device's clock)"
            }
            Refusal::Rollback { .. } => {
                "send a bundle with a higher sequence; to downgrade on purpose, sign a statement with allow_downgrade = true"
            }
        }
    }
}

/// Step 1 alone: parses statement bytes, telling an unknown format version apart from damage.
///
/// Used by the verifier and by the signer, which must refuse to sign what a device would refuse
/// to read.
pub fn parse_statement(statement_bytes: &[u8]) -> Result<Statement, Refusal> {
    if statement_bytes.len() > MAX_STATEMENT_LEN as usize {
        return Err(Refusal::MalformedStatement(StatementError::TooLarge(
            statement_bytes.len(),
        )));
    }
    // Peek at the version before the strict parse: a newer statement may have fields this code
    // does not know, and "unknown version" is the useful thing to say about it.
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(statement_bytes) {
        if let Some(found) = value.get("format_version").and_then(|v| v.as_u64()) {
            if !(u64::from(OLDEST_FORMAT_VERSION)..=u64::from(FORMAT_VERSION)).contains(&found) {
                return Err(Refusal::UnknownFormatVersion { found });
            }
        }
    }
    let statement =
        Statement::from_canonical_json(statement_bytes).map_err(Refusal::MalformedStatement)?;
    // A version-1 statement cannot use what version 2 added: a device that predates it would
    // read the same bytes differently.
    if statement.format_version < statement.target.format_version() {
        return Err(Refusal::UnknownFormatVersion {
            found: statement.format_version.into(),
        });
    }
    Ok(statement)
}

/// Decides whether `statement_bytes`, signed by `signatures`, may be applied under `policy` in
/// `ctx`. Returns the parsed statement if so.
///
/// A key counts at most once however many signatures it made. Signatures by keys the policy does
/// not know are ignored (and named in the refusal if the threshold is not met); a signature by a
/// known key that does not verify refuses the statement outright.
pub fn verify_statement(
    statement_bytes: &[u8],
    signatures: &[Signature],
    policy: &TrustPolicy,
    ctx: &VerifyContext,
) -> Result<Statement, Refusal> {
    let statement = parse_statement(statement_bytes)?;
    let repository = &statement.target.repository;

    let mut valid = BTreeSet::new();
    let mut unknown = BTreeSet::new();
    let mut not_allowed = BTreeSet::new();
    for signature in signatures {
        let Some(key) = policy.key(&signature.key_id) else {
            unknown.insert(signature.key_id.clone());
            continue;
        };
        let verifies = signature
            .raw()
            .is_ok_and(|raw| key.public_key.verify_statement(statement_bytes, &raw));
        if !verifies {
            return Err(Refusal::BadSignature {
                key_id: key.id.clone(),
            });
        }
        if key.allows(repository) {
            valid.insert(key.id.clone());
        } else {
            not_allowed.insert(key.id.clone());
        }
    }

    let required = policy.threshold();
    if valid.len() < required {
        return Err(if signatures.is_empty() {
            Refusal::Unsigned
        } else if !unknown.is_empty() {
            Refusal::UnknownKey {
                key_ids: unknown.into_iter().collect(),
                valid: valid.len(),
                required,
            }
        } else if !not_allowed.is_empty() {
            Refusal::RepositoryNotAllowed {
                repository: repository.clone(),
                key_ids: not_allowed.into_iter().collect(),
            }
        } else {
            Refusal::TooFewSignatures {
                valid: valid.len(),
                required,
            }
        });
    }

    if ctx.now > statement.expires_at {
        return Err(Refusal::Expired {
            expires_at: statement.expires_at,
            now: ctx.now,
        });
    }

    if let Some(recorded) = ctx.recorded_sequence {
        if statement.sequence <= recorded && !statement.allow_downgrade {
            return Err(Refusal::Rollback {
                repository: repository.clone(),
                sequence: statement.sequence,
                recorded,
            });
        }
    }

    Ok(statement)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::tests::{key, policy};
    use crate::statement::tests::sample;

    const A: u8 = 1;
    const B: u8 = 2;
    const C: u8 = 3;
    const OUTSIDER: u8 = 9;

    /// Before the sample's expiry, with no recorded sequence.
    const CTX: VerifyContext = VerifyContext {
        now: 1_790_000_100,
        recorded_sequence: None,
    };

    fn signed(statement: &Statement, seeds: &[u8]) -> (Vec<u8>, Vec<Signature>) {
        let bytes = statement.to_canonical_json();
        let sigs = seeds
            .iter()
            .map(|s| key(*s).sign_statement(&bytes))
            .collect();
        (bytes, sigs)
    }

    fn two_of_three() -> TrustPolicy {
        policy(2, &[(A, &["edge/*"]), (B, &["*"]), (C, &["edge/app"])])
    }

    #[test]
    fn two_of_three_accepts() {
        let (bytes, sigs) = signed(&sample(), &[A, B]);
        let statement = verify_statement(&bytes, &sigs, &two_of_three(), &CTX).unwrap();
        assert_eq!(statement, sample());
        // Extra signatures from unknown keys do not hurt once the threshold is met.
        let (bytes, sigs) = signed(&sample(), &[OUTSIDER, C, A]);
        assert!(verify_statement(&bytes, &sigs, &two_of_three(), &CTX).is_ok());
    }

    #[test]
    fn policy_trusting_one_signer_refuses() {
        let (bytes, sigs) = signed(&sample(), &[A, B]);
        // B is unknown to this policy: only A counts.
        let only_a = policy(2, &[(A, &["*"]), (C, &["*"])]);
        match verify_statement(&bytes, &sigs, &only_a, &CTX) {
            Err(Refusal::UnknownKey {
                key_ids,
                valid: 1,
                required: 2,
            }) => assert_eq!(key_ids, vec![key(B).key_id()]),
            other => panic!("{other:?}"),
        }
        // With only A's signature, nothing unknown: too few.
        let (bytes, sigs) = signed(&sample(), &[A]);
        assert!(matches!(
            verify_statement(&bytes, &sigs, &only_a, &CTX),
            Err(Refusal::TooFewSignatures {
                valid: 1,
                required: 2
            })
        ));
    }

    #[test]
    fn unsigned() {
        let (bytes, _) = signed(&sample(), &[]);
        let err = verify_statement(&bytes, &[], &two_of_three(), &CTX).unwrap_err();
        assert!(matches!(err, Refusal::Unsigned));
        assert_eq!(err.code(), "unsigned");
    }

    #[test]
    fn repository_not_allowed() {
        let mut s = sample();
        s.target.repository = "tools/agent".parse().unwrap();
        // A and C are trusted, but only for edge repositories.
        let (bytes, sigs) = signed(&s, &[A, C, B]);
        match verify_statement(&bytes, &sigs, &two_of_three(), &CTX) {
            Err(Refusal::RepositoryNotAllowed {
                repository,
                key_ids,
            }) => {
                assert_eq!(repository.as_str(), "tools/agent");
                let mut expected = vec![key(A).key_id(), key(C).key_id()];
                expected.sort();
                assert_eq!(key_ids, expected);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn prefix_pattern_is_not_a_string_prefix() {
        let p = policy(1, &[(A, &["edge/*"])]);
        for (repo, ok) in [("edge/app", true), ("edgex/app", false), ("edge", false)] {
            let mut s = sample();
            s.target.repository = repo.parse().unwrap();
            let (bytes, sigs) = signed(&s, &[A]);
            let result = verify_statement(&bytes, &sigs, &p, &CTX);
            assert_eq!(result.is_ok(), ok, "{repo}: {result:?}");
            if !ok {
                assert!(matches!(result, Err(Refusal::RepositoryNotAllowed { .. })));
            }
        }
    }

    #[test]
    fn duplicate_signature_counts_once() {
        let (bytes, sigs) = signed(&sample(), &[A, A, A]);
        assert!(matches!(
            verify_statement(&bytes, &sigs, &two_of_three(), &CTX),
            Err(Refusal::TooFewSignatures {
                valid: 1,
                required: 2
            })
        ));
    }

    #[test]
    fn flipped_statement_byte() {
        let (bytes, sigs) = signed(&sample(), &[A, B]);
        // A byte inside a string value: still canonical JSON, so the signature check catches it.
        let text = String::from_utf8(bytes.clone()).unwrap();
        let at = text.find("ticket OPS-1").unwrap();
        let mut tampered = bytes.clone();
        tampered[at] ^= 0x01;
        assert!(matches!(
            verify_statement(&tampered, &sigs, &two_of_three(), &CTX),
            Err(Refusal::BadSignature { key_id }) if key_id == key(A).key_id()
        ));
        // Every single-byte flip anywhere is refused, one way or the other.
        for i in 0..bytes.len() {
            let mut tampered = bytes.clone();
            tampered[i] ^= 0x20;
            let err = verify_statement(&tampered, &sigs, &two_of_three(), &CTX).unwrap_err();
            assert!(
                matches!(
                    err,
                    Refusal::BadSignature { .. }
                        | Refusal::MalformedStatement(_)
                        | Refusal::UnknownFormatVersion { .. }
                ),
                "byte {i}: {err:?}"
            );
        }
    }

    #[test]
    fn flipped_signature_byte() {
        let (bytes, mut sigs) = signed(&sample(), &[A, B]);
        let mut raw = sigs[1].raw().unwrap();
        raw[10] ^= 0x01;
        sigs[1].signature = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(raw)
        };
        let err = verify_statement(&bytes, &sigs, &two_of_three(), &CTX).unwrap_err();
        assert!(matches!(&err, Refusal::BadSignature { key_id } if *key_id == key(B).key_id()));
        assert_eq!(err.code(), "bad_signature");

        // Not even base64, or the wrong length: also a bad signature by that trusted key.
        for junk in ["%%%", "AAAA"] {
            let (bytes, mut sigs) = signed(&sample(), &[A, B]);
            sigs[0].signature = junk.into();
            assert!(matches!(
                verify_statement(&bytes, &sigs, &two_of_three(), &CTX),
                Err(Refusal::BadSignature { .. })
            ));
        }
    }

    #[test]
    fn bad_signature_wins_over_enough_good_ones() {
        let (bytes, mut sigs) = signed(&sample(), &[A, B, C]);
        sigs[2] = key(C).sign_statement(b"something else");
        assert!(matches!(
            verify_statement(&bytes, &sigs, &two_of_three(), &CTX),
            Err(Refusal::BadSignature { .. })
        ));
    }

    #[test]
    fn signature_under_wrong_key_id() {
        // A's signature relabelled as B's: B's key does not verify it.
        let (bytes, mut sigs) = signed(&sample(), &[A, B]);
        sigs[0].key_id = key(B).key_id();
        assert!(matches!(
            verify_statement(&bytes, &sigs, &two_of_three(), &CTX),
            Err(Refusal::BadSignature { .. })
        ));
    }

    #[test]
    fn malformed_and_not_canonical() {
        let s = sample();
        let (_, sigs) = signed(&s, &[A, B]);
        let pretty = serde_json::to_vec_pretty(&s).unwrap();
        let err = verify_statement(&pretty, &sigs, &two_of_three(), &CTX).unwrap_err();
        assert!(matches!(
            err,
            Refusal::MalformedStatement(StatementError::NotCanonical)
        ));
        assert_eq!(err.code(), "malformed_statement");
        for junk in [
            &b""[..],
            b"not json",
            b"{}",
            b"{\"format_version\":1}",
            b"[1]",
        ] {
            assert!(matches!(
                verify_statement(junk, &sigs, &two_of_three(), &CTX),
                Err(Refusal::MalformedStatement(StatementError::Malformed(_)))
            ));
        }
        let huge = vec![b' '; MAX_STATEMENT_LEN as usize + 1];
        assert!(matches!(
            verify_statement(&huge, &sigs, &two_of_three(), &CTX),
            Err(Refusal::MalformedStatement(StatementError::TooLarge(_)))
        ));
    }

    #[test]
    fn unknown_format_version() {
        let mut value = serde_json::to_value(sample()).unwrap();
        // One past the newest this build knows, whatever that is now.
        let future = crate::statement::FORMAT_VERSION + 1;
        value["format_version"] = future.into();
        value["new_field_from_the_future"] = true.into();
        let bytes = serde_json::to_vec(&value).unwrap();
        let sigs: Vec<_> = [A, B]
            .iter()
            .map(|s| key(*s).sign_statement(&bytes))
            .collect();
        let err = verify_statement(&bytes, &sigs, &two_of_three(), &CTX).unwrap_err();
        assert!(
            matches!(err, Refusal::UnknownFormatVersion { found } if found == u64::from(future))
        );
        assert_eq!(err.code(), "unknown_format_version");
    }

    #[test]
    fn expiry_boundary() {
        let s = sample();
        let (bytes, sigs) = signed(&s, &[A, B]);
        let at = |now| VerifyContext {
            now,
            recorded_sequence: None,
        };
        assert!(verify_statement(&bytes, &sigs, &two_of_three(), &at(s.expires_at)).is_ok());
        match verify_statement(&bytes, &sigs, &two_of_three(), &at(s.expires_at + 1)) {
            Err(err @ Refusal::Expired { .. }) => {
                assert_eq!(err.code(), "expired");
                let text = err.to_string();
                assert!(text.contains("2027-01-15T08:00:00Z"), "{text}");
                assert!(text.contains("2027-01-15T08:00:01Z"), "{text}");
                assert!(err.advice().contains("freshly signed bundle"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rollback() {
        let at = |recorded| VerifyContext {
            now: CTX.now,
            recorded_sequence: Some(recorded),
        };
        let s = sample(); // sequence 7
        let (bytes, sigs) = signed(&s, &[A, B]);
        assert!(verify_statement(&bytes, &sigs, &two_of_three(), &at(6)).is_ok());
        for recorded in [7, 8, 100] {
            match verify_statement(&bytes, &sigs, &two_of_three(), &at(recorded)) {
                Err(Refusal::Rollback {
                    repository,
                    sequence: 7,
                    recorded: r,
                }) => {
                    assert_eq!(repository.as_str(), "edge/app");
                    assert_eq!(r, recorded);
                }
                other => panic!("{other:?}"),
            }
        }

        let mut downgrade = sample();
        downgrade.allow_downgrade = true;
        let (bytes, sigs) = signed(&downgrade, &[A, B]);
        assert!(verify_statement(&bytes, &sigs, &two_of_three(), &at(100)).is_ok());
    }

    #[test]
    fn expiry_checked_after_signatures() {
        // An expired and unsigned statement is reported as unsigned: trust comes first.
        let (bytes, _) = signed(&sample(), &[]);
        let late = VerifyContext {
            now: u64::MAX,
            recorded_sequence: Some(u64::MAX),
        };
        assert!(matches!(
            verify_statement(&bytes, &[], &two_of_three(), &late),
            Err(Refusal::Unsigned)
        ));
    }

    #[test]
    fn every_refusal_explains_itself() {
        let repo: RepositoryName = "edge/app".parse().unwrap();
        let id = key(A).key_id();
        let all = [
            Refusal::UnknownFormatVersion { found: 2 },
            Refusal::MalformedStatement(StatementError::NotCanonical),
            Refusal::BadSignature { key_id: id.clone() },
            Refusal::Unsigned,
            Refusal::UnknownKey {
                key_ids: vec![id.clone()],
                valid: 0,
                required: 1,
            },
            Refusal::RepositoryNotAllowed {
                repository: repo.clone(),
                key_ids: vec![id.clone()],
            },
            Refusal::TooFewSignatures {
                valid: 1,
                required: 2,
            },
            Refusal::Expired {
                expires_at: 0,
                now: u64::MAX,
            },
            Refusal::Rollback {
                repository: repo,
                sequence: 1,
                recorded: 2,
            },
        ];
        let mut codes = BTreeSet::new();
        for r in &all {
            assert!(codes.insert(r.code()), "duplicate code {}", r.code());
            assert!(r
                .code()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
            assert!(!r.to_string().is_empty());
            assert!(r.advice().len() > 20);
        }
        assert!(all[4].advice().contains("trust policy"));
    }
}
