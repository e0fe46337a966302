//! Trust decisions on a bundle. One decision, [`judge_head`]: a head, the receiver's policy,
//! limits and time, and what the receiver holds (looked up by the head's unverified
//! [`Claims`]) give a [`Verdict`]: trusted, already here, or refused (the error). It is pure;
//! every receiver (the daemon at arrival and at apply, the USB loader, `sideload apply` and
//! `verify`) reads the head once, looks its holdings up, and asks it. Around it, the file
//! steps: [`open_trusted`] (read the head from a file, judge it, check the file's length) and
//! [`check_payload_digest`] (one sequential read of the payload against the statement).

use std::convert::Infallible;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use sideload_signing::{verify_statement, Digest, Statement, TrustPolicy, VerifyContext};

use crate::container::{bundle_name, check_limit, read_head, BundleHead};
use crate::error::Error;
use crate::image::digest_reader::{digest_of_reader, Sha256};
use crate::limits::Limits;
use crate::manifest::check_statement_manifest;

/// The receiver's side of every trust decision: whose signatures it accepts, the limits it
/// holds bundles to, and the time (Unix seconds) expiry is judged at.
#[derive(Clone, Copy)]
pub struct Trust<'a> {
    /// Keys, threshold and repositories accepted.
    pub policy: &'a TrustPolicy,
    /// Sizes and counts a bundle may declare.
    pub limits: &'a Limits,
    /// Now, in Unix seconds.
    pub now: u64,
}

/// What a head says about itself before it is trusted: read only to look up what the
/// receiver holds. The verification that follows covers both fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The statement's digest (`sha256:...`): the bundle's identity on the device.
    pub statement_digest: String,
    /// The repository the statement names: where its sequence floor is kept.
    pub repository: String,
}

impl Claims {
    /// The claims of a head, or `None` when its statement does not even parse (the judgement
    /// refuses it with the precise reason).
    pub fn of(head: &BundleHead) -> Option<Claims> {
        let unverified = Statement::from_canonical_json(&head.statement_bytes).ok()?;
        Some(Claims {
            statement_digest: unverified.digest().to_string(),
            repository: unverified.target.repository.to_string(),
        })
    }
}

/// What the receiver holds that bears on a head, found by its [`Claims`].
#[derive(Debug)]
pub struct Holdings<K> {
    /// The receiver's own record of this very statement, when that settles the matter (queued,
    /// applying, applied: a second copy is a duplicate, not a rollback).
    pub known: Option<K>,
    /// The highest sequence applied for the repository.
    pub sequence_floor: Option<u64>,
}

impl<K> Holdings<K> {
    /// Nothing known and no floor: a receiver that keeps no state.
    pub fn none() -> Holdings<K> {
        Holdings {
            known: None,
            sequence_floor: None,
        }
    }

    /// Only a sequence floor.
    pub fn floor(sequence_floor: Option<u64>) -> Holdings<K> {
        Holdings {
            known: None,
            sequence_floor,
        }
    }
}

/// The decision on a head that was not refused.
#[derive(Debug)]
pub enum Verdict<K> {
    /// The policy accepted it: the head and its verified statement.
    Trusted(BundleHead, Box<Statement>),
    /// The receiver already holds this statement; the copy need not be checked further.
    AlreadyHere(K),
}

/// The one trust decision. A statement the receiver already holds is [`Verdict::AlreadyHere`]
/// before anything else; otherwise signatures, threshold, repository, expiry and the sequence
/// floor (against the policy), then the statement's own limits and consistency. A refusal is
/// the error, with its reason and advice. Pure.
pub fn judge_head<K>(
    head: BundleHead,
    trust: &Trust,
    holdings: Holdings<K>,
) -> Result<Verdict<K>, Error> {
    if let Some(known) = holdings.known {
        return Ok(Verdict::AlreadyHere(known));
    }
    let ctx = VerifyContext {
        now: trust.now,
        recorded_sequence: holdings.sequence_floor,
    };
    let statement = verify_statement(&head.statement_bytes, &head.signatures, trust.policy, &ctx)
        .map_err(|refusal| Error::Refused {
        bundle: head.name.clone(),
        refusal,
    })?;
    check_statement(&head.name, &statement, trust.limits)?;
    Ok(Verdict::Trusted(head, Box::new(statement)))
}

/// A bundle whose statement and signatures the trust policy accepted, with the file positioned
/// at the start of the payload. The payload itself is not checked yet.
pub struct TrustedHead {
    /// Header, statement bytes and signatures.
    pub head: BundleHead,
    /// The accepted statement.
    pub statement: Statement,
    /// The open bundle file.
    pub file: File,
}

/// Opens a bundle file, reads its head once, looks up the sequence floor of the repository
/// it claims (`floor`), judges it, and checks that the file has exactly the length the head
/// declares. For receivers that keep no record of bundles by statement (`sideload apply`, the
/// daemon's apply, which only ever sees bundles its intake took).
pub fn open_trusted(
    path: &Path,
    trust: &Trust,
    floor: impl FnOnce(&str) -> Result<Option<u64>, Error>,
) -> Result<TrustedHead, Error> {
    let mut file = File::open(path).map_err(Error::io("opening bundle", path))?;
    let head = read_head(&mut file, &bundle_name(path), trust.limits)?;
    let sequence_floor = match Claims::of(&head) {
        Some(claims) => floor(&claims.repository)?,
        None => None,
    };
    let holdings = Holdings::<Infallible>::floor(sequence_floor);
    let (head, statement) = match judge_head(head, trust, holdings)? {
        Verdict::Trusted(head, statement) => (head, *statement),
        Verdict::AlreadyHere(never) => match never {},
    };
    let actual = file
        .metadata()
        .map_err(Error::io("reading metadata of bundle", path))?
        .len();
    check_file_length(
        &head.name,
        head.payload_offset(),
        statement.payload.size,
        actual,
    )?;
    Ok(TrustedHead {
        head,
        statement,
        file,
    })
}

/// Whether a whole bundle file of `actual` bytes has the length its head declares: shorter is
/// truncated, longer has bytes nobody signed. Pure.
pub fn check_file_length(
    name: &str,
    payload_offset: u64,
    payload_size: u64,
    actual: u64,
) -> Result<(), Error> {
    let expected = payload_offset + payload_size;
    if actual < expected {
        return Err(Error::Truncated {
            bundle: name.to_owned(),
            part: "payload",
            expected: payload_size,
            available: actual.saturating_sub(payload_offset),
        });
    }
    if actual > expected {
        return Err(Error::SizeMismatch {
            bundle: name.to_owned(),
            expected,
            actual,
        });
    }
    Ok(())
}

/// The last step of [`judge_head`]: the statement's limits and internal consistency (a signed
/// statement can still come from a buggy builder; the device must not act on one that
/// contradicts itself). Public for the statement fuzz body.
pub fn check_statement(name: &str, statement: &Statement, limits: &Limits) -> Result<(), Error> {
    let p = &statement.payload;
    check_limit(name, "payload", p.size, limits.max_payload)?;
    check_limit(name, "decoded payload", p.decoded_size, limits.max_decoded)?;
    check_limit(name, "scratch store", p.scratch_bytes, limits.max_scratch)?;
    check_limit(
        name,
        "payload window log",
        p.window_log.into(),
        limits.max_window_log.into(),
    )?;
    check_limit(
        name,
        "layer count",
        statement.target.layers.len() as u64,
        limits.max_layers as u64,
    )?;
    check_statement_manifest(&statement.target).map_err(|reason| Error::CorruptPayload {
        bundle: name.to_owned(),
        reason: format!("statement is inconsistent: {reason}"),
    })
}

/// Hashes the payload from the file and compares it with the statement (one sequential read).
pub fn check_payload_digest(
    file: &mut File,
    head: &BundleHead,
    statement: &Statement,
    path: &Path,
) -> Result<(), Error> {
    file.seek(SeekFrom::Start(head.payload_offset()))
        .map_err(Error::io("reading bundle", path))?;
    let (payload, payload_len) = digest_of_reader(file.take(statement.payload.size))
        .map_err(Error::io("reading bundle", path))?;
    check_payload(&head.name, statement, &payload, payload_len)
}

/// The sha256 of a whole bundle file and of its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleDigests {
    /// The whole file's: what a client declares as `Bundle-Digest`.
    pub file: Digest,
    /// The payload's, for [`check_payload`].
    pub payload: Digest,
    /// Payload bytes hashed.
    pub payload_len: u64,
}

/// Hashes a whole bundle file and, in the same sequential read, its payload: a receiver that
/// records the file's digest (what clients declare) and checks the payload reads the bundle
/// once.
pub fn digest_bundle_file(
    file: &mut File,
    head: &BundleHead,
    path: &Path,
) -> Result<BundleDigests, Error> {
    file.seek(SeekFrom::Start(0))
        .map_err(Error::io("reading bundle", path))?;
    let offset = head.payload_offset();
    let (mut whole, mut payload) = (Sha256::new(), Sha256::new());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("reading bundle", path)(e)),
        };
        let at = whole.count();
        whole.update(&buf[..n]);
        if at + n as u64 > offset {
            let start = offset.saturating_sub(at) as usize;
            payload.update(&buf[start..n]);
        }
    }
    Ok(BundleDigests {
        file: whole.finish(),
        payload_len: payload.count(),
        payload: payload.finish(),
    })
}

/// Whether `payload_len` bytes of payload hashing to `payload` are the payload the statement
/// signs: all of it, and the same bytes. Pure.
pub fn check_payload(
    name: &str,
    statement: &Statement,
    payload: &Digest,
    payload_len: u64,
) -> Result<(), Error> {
    if payload_len != statement.payload.size {
        return Err(Error::Truncated {
            bundle: name.to_owned(),
            part: "payload",
            expected: statement.payload.size,
            available: payload_len,
        });
    }
    if *payload != statement.payload.sha256 {
        return Err(Error::PayloadDigestMismatch {
            bundle: name.to_owned(),
            expected: statement.payload.sha256.clone(),
            actual: payload.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sideload_signing::statement::{PayloadCodec, PayloadInfo, Platform, SourceRef, Target};
    use sideload_signing::{Digest, SigningKey};

    const NOW: u64 = 1_000_000;

    /// A signed head whose statement is consistent (a manifest with no layers) and a policy
    /// trusting its key for `edge/*`.
    fn signed_head(sequence: u64) -> (BundleHead, TrustPolicy) {
        let (key, _) = SigningKey::generate().unwrap();
        let config = Digest::of_bytes(b"config");
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":6}},"layers":[]}}"#
        );
        let statement = Statement {
            format_version: 1,
            target: Target {
                repository: "edge/app".parse().unwrap(),
                tags: vec!["v2".parse().unwrap()],
                platform: Platform {
                    os: "linux".into(),
                    architecture: "amd64".into(),
                    variant: String::new(),
                },
                config_digest: config,
                layers: Vec::new(),
                manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                manifest_digest: Digest::of_bytes(manifest.as_bytes()),
                manifest,
                source: SourceRef {
                    reference: "oci:app".into(),
                    manifest_digest: None,
                },
            },
            requires: Vec::new(),
            payload: PayloadInfo {
                size: 10,
                sha256: Digest::of_bytes(b"payload"),
                codec: PayloadCodec::Lzma2,
                window_log: 20,
                decoded_size: 100,
                scratch_bytes: 0,
            },
            sequence,
            allow_downgrade: false,
            created_at: NOW - 10,
            expires_at: NOW + 3600,
            ordered_by: String::new(),
            contact: String::new(),
        };
        let bytes = statement.to_canonical_json();
        let head = BundleHead {
            name: "app.bundle".into(),
            signatures: vec![key.sign_statement(&bytes)],
            statement_bytes: bytes,
            statement_stored_len: 0,
            signature_slot: 0,
        };
        let entry =
            sideload_signing::key_entry_toml(&key.public_key(), &["edge/*".parse().unwrap()], None);
        let policy =
            TrustPolicy::from_toml(&format!("threshold = 1\n{entry}"), Path::new("p.toml"))
                .unwrap();
        (head, policy)
    }

    fn judge(
        head: BundleHead,
        policy: &TrustPolicy,
        limits: &Limits,
        holdings: Holdings<&'static str>,
    ) -> Result<Verdict<&'static str>, Error> {
        let trust = Trust {
            policy,
            limits,
            now: NOW,
        };
        judge_head(head, &trust, holdings)
    }

    #[test]
    fn a_signed_consistent_head_is_trusted() {
        let (head, policy) = signed_head(7);
        let verdict = judge(head, &policy, &Limits::default(), Holdings::floor(Some(6))).unwrap();
        match verdict {
            Verdict::Trusted(head, statement) => {
                assert_eq!(head.name, "app.bundle");
                assert_eq!(statement.sequence, 7);
            }
            Verdict::AlreadyHere(_) => panic!("nothing was held"),
        }
    }

    #[test]
    fn a_statement_already_held_is_already_here_before_the_floor_is_looked_at() {
        // The very bundle that set the floor would fail it: a second copy is a duplicate.
        let (head, policy) = signed_head(7);
        let holdings = Holdings {
            known: Some("applied"),
            sequence_floor: Some(7),
        };
        let verdict = judge(head, &policy, &Limits::default(), holdings).unwrap();
        assert!(matches!(verdict, Verdict::AlreadyHere("applied")));
    }

    #[test]
    fn a_sequence_at_or_below_the_floor_is_refused_as_a_rollback() {
        let (head, policy) = signed_head(7);
        let err = judge(head, &policy, &Limits::default(), Holdings::floor(Some(7))).unwrap_err();
        assert!(err.is_refusal(), "{err}");
        assert!(matches!(err, Error::Refused { ref bundle, .. } if bundle == "app.bundle"));
    }

    #[test]
    fn a_head_signed_by_another_key_is_refused() {
        let (head, _) = signed_head(7);
        let (_, other_policy) = signed_head(7);
        let err = judge(head, &other_policy, &Limits::default(), Holdings::none()).unwrap_err();
        assert!(matches!(err, Error::Refused { .. }), "{err:?}");
    }

    #[test]
    fn a_trusted_statement_over_the_limits_is_refused_after_its_signatures() {
        let (head, policy) = signed_head(7);
        let limits = Limits {
            max_payload: 9,
            ..Limits::default()
        };
        let err = judge(head, &policy, &limits, Holdings::none()).unwrap_err();
        assert!(err.is_refusal(), "{err}");
        assert!(!matches!(err, Error::Refused { .. }), "{err:?}");
    }

    #[test]
    fn claims_name_the_statement_and_its_repository_and_garbage_claims_nothing() {
        let (head, _) = signed_head(7);
        let claims = Claims::of(&head).unwrap();
        assert_eq!(claims.repository, "edge/app");
        let statement = Statement::from_canonical_json(&head.statement_bytes).unwrap();
        assert_eq!(claims.statement_digest, statement.digest().to_string());
        let garbage = BundleHead {
            statement_bytes: b"{not json".to_vec(),
            ..head
        };
        assert_eq!(Claims::of(&garbage), None);
    }

    #[test]
    fn a_whole_bundle_is_exactly_as_long_as_its_head_declares() {
        assert!(check_file_length("a.bundle", 100, 900, 1000).is_ok());
        assert!(matches!(
            check_file_length("a.bundle", 100, 900, 999),
            Err(Error::Truncated {
                expected: 900,
                available: 899,
                ..
            })
        ));
        assert!(matches!(
            check_file_length("a.bundle", 100, 900, 1001),
            Err(Error::SizeMismatch {
                expected: 1000,
                actual: 1001,
                ..
            })
        ));
    }

    #[test]
    fn one_read_gives_the_file_digest_and_the_payload_digest() {
        let (head, _) = signed_head(7);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.bundle");
        let offset = head.payload_offset() as usize;
        let mut bytes = vec![7u8; offset];
        bytes.extend((0..3_000_000u32).map(|i| (i % 251) as u8));
        std::fs::write(&path, &bytes).unwrap();
        let mut file = File::open(&path).unwrap();
        let digests = digest_bundle_file(&mut file, &head, &path).unwrap();
        assert_eq!(digests.file, Digest::of_bytes(&bytes));
        assert_eq!(digests.payload, Digest::of_bytes(&bytes[offset..]));
        assert_eq!(digests.payload_len, 3_000_000);
    }

    #[test]
    fn a_payload_is_checked_for_its_length_then_its_digest() {
        let (head, _) = signed_head(7);
        let statement = Statement::from_canonical_json(&head.statement_bytes).unwrap();
        let right = statement.payload.sha256.clone();
        assert!(check_payload("b", &statement, &right, 10).is_ok());
        assert!(matches!(
            check_payload("b", &statement, &right, 9),
            Err(Error::Truncated {
                expected: 10,
                available: 9,
                ..
            })
        ));
        let wrong = Digest::of_bytes(b"other");
        assert!(matches!(
            check_payload("b", &statement, &wrong, 10),
            Err(Error::PayloadDigestMismatch { .. })
        ));
    }
}
