//! Trust decisions on a bundle file: the head first (before any payload byte is read), then the
//! payload's size and digest.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use sideload_signing::{verify_statement, Statement, TrustPolicy, VerifyContext};

use crate::container::{bundle_name, check_limit, read_head, BundleHead};
use crate::error::Error;
use crate::image::digest_reader::digest_of_reader;
use crate::limits::Limits;
use crate::manifest::check_statement_manifest;

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

/// Checks a head read from the front of a bundle whose payload may not have arrived yet (an
/// upload in progress, a file still being copied): header, signatures against the policy,
/// expiry, sequence and the statement's own consistency and limits. Lets a receiver refuse an
/// untrusted bundle before it stores a byte of its payload.
pub fn verify_head_from(
    reader: &mut impl Read,
    name: &str,
    policy: &TrustPolicy,
    ctx: &VerifyContext,
    limits: &Limits,
) -> Result<(BundleHead, Statement), Error> {
    trust_head(read_head(reader, name, limits)?, policy, ctx, limits)
}

/// [`verify_head_from`] for a receiver that keeps a sequence floor per repository (see
/// [`floor_context`]).
pub fn verify_head_with_floor(
    reader: &mut impl Read,
    name: &str,
    policy: &TrustPolicy,
    now: u64,
    limits: &Limits,
    floor: impl FnOnce(&str) -> Option<u64>,
) -> Result<(BundleHead, Statement), Error> {
    let head = read_head(reader, name, limits)?;
    let ctx = floor_context(&head, now, floor);
    trust_head(head, policy, &ctx, limits)
}

/// The context to verify `head` in, with the sequence floor looked up for the repository its
/// statement names: read before it is trusted, only to pick the floor; the verification that
/// follows covers it.
pub fn floor_context(
    head: &BundleHead,
    now: u64,
    floor: impl FnOnce(&str) -> Option<u64>,
) -> VerifyContext {
    let repository = Statement::from_canonical_json(&head.statement_bytes)
        .map(|s| s.target.repository.to_string())
        .unwrap_or_default();
    VerifyContext {
        now,
        recorded_sequence: floor(&repository),
    }
}

/// Decides on a head already read: signatures, expiry and sequence against the policy, then
/// the statement's limits and consistency. Returns the trusted statement.
pub fn trust_head(
    head: BundleHead,
    policy: &TrustPolicy,
    ctx: &VerifyContext,
    limits: &Limits,
) -> Result<(BundleHead, Statement), Error> {
    let statement = verify_statement(&head.statement_bytes, &head.signatures, policy, ctx)
        .map_err(|refusal| Error::Refused {
            bundle: head.name.clone(),
            refusal,
        })?;
    check_statement(&head.name, &statement, limits)?;
    Ok((head, statement))
}

/// Opens a bundle and checks everything that can be checked without reading the payload:
/// header, signatures against the policy, expiry, sequence, the statement's own consistency and
/// limits, and that the file has exactly the length it declares.
pub fn verify_head(
    path: &Path,
    policy: &TrustPolicy,
    ctx: &VerifyContext,
    limits: &Limits,
) -> Result<TrustedHead, Error> {
    let mut file = File::open(path).map_err(Error::io("opening bundle", path))?;
    let (head, statement) = verify_head_from(&mut file, &bundle_name(path), policy, ctx, limits)?;
    let expected = head.payload_offset() + statement.payload.size;
    let actual = file
        .metadata()
        .map_err(Error::io("reading metadata of bundle", path))?
        .len();
    if actual < expected {
        return Err(Error::Truncated {
            bundle: head.name.clone(),
            part: "payload",
            expected: statement.payload.size,
            available: actual.saturating_sub(head.payload_offset()),
        });
    }
    if actual > expected {
        return Err(Error::SizeMismatch {
            bundle: head.name.clone(),
            expected,
            actual,
        });
    }
    Ok(TrustedHead {
        head,
        statement,
        file,
    })
}

/// Checks the statement's limits and internal consistency (a signed statement can still come
/// from a buggy builder; the device must not act on one that contradicts itself).
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

/// Full verification without side effects: [`verify_head`], then one sequential read of the
/// payload to check its sha256 against the statement.
pub fn verify_bundle(
    path: &Path,
    policy: &TrustPolicy,
    ctx: &VerifyContext,
    limits: &Limits,
) -> Result<Statement, Error> {
    let TrustedHead {
        head,
        statement,
        mut file,
    } = verify_head(path, policy, ctx, limits)?;
    check_payload_digest(&mut file, &head, &statement, path)?;
    Ok(statement)
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
    let (actual, len) = digest_of_reader(file.take(statement.payload.size))
        .map_err(Error::io("reading bundle", path))?;
    if len != statement.payload.size {
        return Err(Error::Truncated {
            bundle: head.name.clone(),
            part: "payload",
            expected: statement.payload.size,
            available: len,
        });
    }
    if actual != statement.payload.sha256 {
        return Err(Error::PayloadDigestMismatch {
            bundle: head.name.clone(),
            expected: statement.payload.sha256.clone(),
            actual,
        });
    }
    Ok(())
}
