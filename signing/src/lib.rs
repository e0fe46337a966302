//! Keys, trust policy, statements and signatures for sideload bundles.
//!
//! # What this crate does
//!
//! A sideload bundle starts with a *statement*: a few KiB of canonical JSON that names the image
//! the device will produce, what it must already hold, the payload's size and digest, a
//! per-repository sequence number and an expiry. Release engineers sign the statement, never the
//! payload, on an air-gapped machine with the `sideload-sign` tool built from this crate. A device
//! checks the signatures against its trust policy before it reads a single payload byte.
//!
//! This crate holds everything about that trust decision:
//!
//! - [`names`]: newtypes for untrusted names (digests, repositories, tags) that validate on
//!   construction;
//! - [`statement`]: the [`Statement`] and its one canonical byte encoding;
//! - [`keys`]: Ed25519 keys ([`SigningKey`], [`PublicKey`], [`KeyId`]), their openssl-compatible
//!   PEM files, and [`Signature`];
//! - [`policy`]: the [`TrustPolicy`] (k-of-n trusted keys, each limited to repository patterns),
//!   loaded from TOML and checked on load;
//! - [`verify`]: [`verify_statement`], the pure decision, and [`Refusal`], every reason to say no;
//! - [`template`]: manifest templates, whose blob digests and sizes the device fills in;
//! - [`summary`]: what a signer sees before signing;
//! - [`report`]: how the binaries print an error, each cause once.
//!
//! # What it deliberately does not do
//!
//! - **No payload handling.** It never reads, decodes or hashes a bundle payload; the statement
//!   carries the payload digest and the bundle crate checks it after [`verify_statement`] said yes.
//! - **No network.** Not in the library, not in `sideload-sign`. Only statements and signatures
//!   cross the air gap, as small files.
//! - **No clock, no state in the decision.** [`verify_statement`] takes the time and the last
//!   applied sequence as arguments ([`VerifyContext`]); recording sequences is the caller's job.
//! - **No key management beyond files.** No key encryption, no HSMs, no revocation lists: a key is
//!   revoked by removing it from the trust policy.
//!
//! # How the types fit
//!
//! ```text
//! signing machine:  Statement --to_canonical_json--> bytes
//!                   SigningKey::sign_statement(bytes) --> Signature {key_id, signature}
//!                     (signs keys::SIGNING_DOMAIN || bytes)
//!
//! device:           TrustPolicy::load(policy.toml)
//!                   verify_statement(bytes, &[Signature], &TrustPolicy, &VerifyContext{now, recorded_sequence})
//!                     --> Ok(Statement)  or  Err(Refusal)  (code(), Display, advice())
//! ```
//!
//! # Tests
//!
//! ```text
//! CARGO_TARGET_DIR=/work/target-signing cargo test -p sideload-signing
//! ```
//!
//! Unit tests sit next to the code (one per refusal, per policy load error, per key format);
//! `tests/sideload_sign.rs` drives the built `sideload-sign` binary end to end.

#![warn(missing_docs)]

pub mod keys;
pub mod names;
pub mod policy;
pub mod report;
pub mod statement;
pub mod summary;
pub mod template;
pub mod verify;

pub use keys::{
    signed_message, write_keypair, KeyError, KeyId, PublicKey, Signature, SigningKey,
    SIGNING_DOMAIN,
};
pub use names::{Digest, InvalidName, RepositoryName, Tag};
pub use policy::{key_entry_toml, PolicyError, RepositoryPattern, TrustPolicy, TrustedKey};
pub use statement::{
    BlobFrom, LayerStorage, PayloadCodec, PayloadInfo, Platform, SourceRef, Statement,
    StatementError, Target, TargetLayer, FORMAT_VERSION, MAX_STATEMENT_LEN,
};
pub use verify::{parse_statement, verify_statement, Refusal, VerifyContext};
