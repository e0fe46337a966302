//! `sideload attach`: puts signatures made offline into a bundle's signature slot, but only
//! signatures that verify against this bundle's own statement with the signer's public key.
//!
//! A signature over another statement (another bundle's, or an older build of this one) would
//! otherwise be attached silently, replace a good signature by the same key, and make every
//! device refuse the bundle as tampered. [`check_signatures`] is the pure decision; [`run`]
//! reads the files, decides, and only then writes (atomically, see
//! [`sideload_bundle::attach_signatures`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use sideload_bundle::{attach_signatures, open_bundle, Limits};
use sideload_signing::{Digest, KeyId, PublicKey, Signature, TrustPolicy};

/// Arguments of `sideload attach`.
#[derive(Args)]
pub struct AttachArgs {
    /// The bundle file; only its signature slot changes.
    bundle: PathBuf,
    /// Signature files written by `sideload-sign sign`.
    #[arg(required = true)]
    signatures: Vec<PathBuf>,
    /// A signer's public key (PEM `.pub` from `sideload-sign keygen`, or its base64); repeatable.
    /// Each signature is checked with the key of its key id before anything is written.
    #[arg(long = "key", value_name = "PUB")]
    keys: Vec<PathBuf>,
    /// A trust policy whose keys are used to check the signatures (the devices' policy).
    #[arg(long, value_name = "TOML")]
    policy: Option<PathBuf>,
}

/// One signature file to attach.
#[derive(Debug, Clone)]
pub struct Offered {
    /// Where it came from, for messages.
    pub file: PathBuf,
    /// The signature.
    pub signature: Signature,
}

/// Why a signature is not attached. Nothing is written when any offered signature is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachRefusal {
    /// No public key with the signature's key id was given.
    UnknownKey {
        bundle: String,
        file: PathBuf,
        key_id: KeyId,
    },
    /// The signature does not verify over this bundle's statement: it was made over another
    /// statement (or damaged).
    OtherStatement {
        bundle: String,
        file: PathBuf,
        key_id: KeyId,
        statement_digest: Digest,
    },
}

impl fmt::Display for AttachRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttachRefusal::UnknownKey {
                bundle,
                file,
                key_id,
            } => write!(
                f,
                "{bundle}: cannot check signature {} by key {key_id}: no public key with that id \
                 was given; nothing was written. Fix: pass the signer's public key with \
                 `--key {key_id}.pub` or the devices' trust policy with `--policy trust.toml`",
                file.display()
            ),
            AttachRefusal::OtherStatement {
                bundle,
                file,
                key_id,
                statement_digest,
            } => write!(
                f,
                "{bundle}: signature {} by key {key_id} covers another statement, not this \
                 bundle's ({statement_digest}); every device would refuse the bundle as tampered, \
                 so nothing was written and the signatures already in the bundle are kept. Fix: \
                 export this bundle's statement with `sideload statement {bundle} -o \
                 FILE.statement.json`, sign that file with `sideload-sign sign`, and attach the \
                 new signature",
                file.display()
            ),
        }
    }
}

impl std::error::Error for AttachRefusal {}

/// Checks every offered signature against `statement_bytes` (the bundle's canonical statement)
/// with the public key of its key id from `keys`. Pure: no files, no clock.
pub fn check_signatures(
    bundle: &str,
    statement_bytes: &[u8],
    offered: &[Offered],
    keys: &[PublicKey],
) -> Result<(), AttachRefusal> {
    for o in offered {
        let key_id = &o.signature.key_id;
        let Some(key) = keys.iter().find(|k| &k.key_id() == key_id) else {
            return Err(AttachRefusal::UnknownKey {
                bundle: bundle.to_owned(),
                file: o.file.clone(),
                key_id: key_id.clone(),
            });
        };
        let good = o
            .signature
            .raw()
            .is_ok_and(|raw| key.verify_statement(statement_bytes, &raw));
        if !good {
            return Err(AttachRefusal::OtherStatement {
                bundle: bundle.to_owned(),
                file: o.file.clone(),
                key_id: key_id.clone(),
                statement_digest: Digest::of_bytes(statement_bytes),
            });
        }
    }
    Ok(())
}

/// The public keys given with `--key` and `--policy`.
fn load_keys(keys: &[PathBuf], policy: Option<&Path>) -> Result<Vec<PublicKey>> {
    let mut all = Vec::new();
    for path in keys {
        all.push(
            PublicKey::read_from_either_file(path)
                .with_context(|| format!("reading public key {}", path.display()))?,
        );
    }
    if let Some(path) = policy {
        let policy = TrustPolicy::load(path)?;
        all.extend(policy.keys().iter().map(|k| k.public_key));
    }
    Ok(all)
}

/// Runs `sideload attach`.
pub fn run(args: AttachArgs) -> Result<ExitCode> {
    let offered = args
        .signatures
        .iter()
        .map(|p| {
            Signature::read_file(p)
                .map(|signature| Offered {
                    file: p.clone(),
                    signature,
                })
                .with_context(|| format!("reading signature {}", p.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let keys = load_keys(&args.keys, args.policy.as_deref())?;
    let (head, _) = open_bundle(&args.bundle, &Limits::default())?;
    check_signatures(
        &args.bundle.display().to_string(),
        &head.statement_bytes,
        &offered,
        &keys,
    )?;
    let new: Vec<Signature> = offered.into_iter().map(|o| o.signature).collect();
    let all = attach_signatures(&args.bundle, &new, &Limits::default())?;
    let ids: Vec<&str> = all.iter().map(|s| s.key_id.as_str()).collect();
    println!(
        "{}: now signed by {} key(s): {}",
        args.bundle.display(),
        ids.len(),
        ids.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sideload_signing::SigningKey;

    fn key() -> SigningKey {
        SigningKey::generate().unwrap().0
    }

    fn offer(sig: Signature) -> Offered {
        Offered {
            file: PathBuf::from("alice.sig"),
            signature: sig,
        }
    }

    #[test]
    fn a_signature_over_another_statement_is_refused_with_the_key_and_the_fix() {
        let alice = key();
        let ours = br#"{"statement":"ours"}"#;
        let other = br#"{"statement":"other"}"#;
        let keys = [alice.public_key()];
        let good = offer(alice.sign_statement(ours));
        assert_eq!(check_signatures("b.bundle", ours, &[good], &keys), Ok(()));

        let wrong = offer(alice.sign_statement(other));
        let err = check_signatures("b.bundle", ours, &[wrong], &keys).unwrap_err();
        assert!(matches!(err, AttachRefusal::OtherStatement { .. }), "{err}");
        let text = err.to_string();
        for part in [
            "b.bundle",
            alice.key_id().as_str(),
            "covers another statement",
            "alice.sig",
            "sideload statement b.bundle",
        ] {
            assert!(text.contains(part), "{part:?} missing: {text}");
        }

        let mut garbled = alice.sign_statement(ours);
        garbled.signature = "not base64".into();
        let err = check_signatures("b.bundle", ours, &[offer(garbled)], &keys).unwrap_err();
        assert!(matches!(err, AttachRefusal::OtherStatement { .. }), "{err}");
    }

    #[test]
    fn a_signature_by_a_key_not_given_is_refused() {
        let (alice, bob) = (key(), key());
        let ours = b"{}";
        let err = check_signatures(
            "b.bundle",
            ours,
            &[offer(bob.sign_statement(ours))],
            &[alice.public_key()],
        )
        .unwrap_err();
        assert!(matches!(err, AttachRefusal::UnknownKey { .. }), "{err}");
        assert!(err.to_string().contains("--key"), "{err}");
    }
}
