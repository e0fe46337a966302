//! The blob digests a statement leaves to the device (format version 9): once the payload is
//! decoded, each such layer's blob is known (recreated from its recipe and hashed, or one of the
//! blobs held for its diff_id), the manifest template is filled, and the filled manifest must
//! hash to the signed manifest digest. [`resolve`] is the pure decision; [`stage_held`] copies
//! the held blobs it chose into the staged layout.

use sideload_signing::template::{self, Hole};
use sideload_signing::{BlobFrom, Digest, LayerStorage, Target};

use crate::error::Error;
use crate::image::write::OciLayoutWriter;
use crate::scratch::BaseStore;

/// What the device has for a layer whose blob the statement leaves to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Found {
    /// The blob recreated from its recipe: digest and size.
    Recreated(Digest, u64),
    /// The compressed blobs the device holds of the layer (digest, size), any of which may
    /// be the source's.
    Held(Vec<(Digest, u64)>),
}

/// Most combinations of held blobs tried. A device holds one compressed blob of a layer but for
/// rare exceptions; the cap bounds the hashing a device with many does (each try hashes a few
/// KiB of manifest).
pub(super) const MAX_COMBINATIONS: usize = 1024;

/// Why no filling of the template makes the signed manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Unresolved {
    /// Only recreated blobs were derived: their digests make another manifest.
    Recreated {
        /// Digest of the manifest filled with them.
        actual: Digest,
    },
    /// Held blobs were derived too: no combination tried made it.
    Held {
        /// The first layer whose held blob was derived.
        index: usize,
        /// How many blobs the device holds of it.
        held: usize,
    },
}

/// The target as the device produces it: every derived blob named and the manifest filled, the
/// first combination of held blobs (in digest order) whose filled manifest hashes to the signed
/// digest. `found[i]` is what the device has for layer `i`, `None` for layers the statement
/// names.
pub(super) fn resolve(target: &Target, found: &[Option<Found>]) -> Result<Target, Unresolved> {
    let held: Vec<(usize, &[(Digest, u64)])> = found
        .iter()
        .enumerate()
        .filter_map(|(i, f)| match f {
            Some(Found::Held(blobs)) => Some((i, blobs.as_slice())),
            _ => None,
        })
        .collect();
    let mut choice = vec![0usize; held.len()];
    let mut first_actual = None;
    for _ in 0..MAX_COMBINATIONS {
        let blob_of = |index: usize| -> Option<(Digest, u64)> {
            match found.get(index)? {
                Some(Found::Recreated(digest, size)) => Some((digest.clone(), *size)),
                Some(Found::Held(_)) => {
                    let slot = held.iter().position(|(i, _)| *i == index)?;
                    held[slot].1.get(choice[slot]).cloned()
                }
                None => None,
            }
        };
        if held.iter().all(|(_, blobs)| !blobs.is_empty()) {
            if let Ok(manifest) = template::fill(&target.manifest, |hole| match hole {
                Hole::Digest(i) => blob_of(i).map(|(d, _)| d.to_string()),
                Hole::Size(i) => blob_of(i).map(|(_, s)| s.to_string()),
            }) {
                let actual = Digest::of_bytes(manifest.as_bytes());
                if actual == target.manifest_digest {
                    return Ok(named(target, manifest, blob_of));
                }
                first_actual.get_or_insert(actual);
            }
        }
        if !next_choice(&mut choice, &held) {
            break;
        }
    }
    match held.first() {
        Some(&(index, blobs)) => Err(Unresolved::Held {
            index,
            held: blobs.len(),
        }),
        None => Err(Unresolved::Recreated {
            actual: first_actual.unwrap_or_else(|| Digest::of_bytes(b"")),
        }),
    }
}

/// Advances `choice` like an odometer over the held blob lists; false once every combination
/// was visited.
fn next_choice(choice: &mut [usize], held: &[(usize, &[(Digest, u64)])]) -> bool {
    for (slot, (_, blobs)) in choice.iter_mut().zip(held) {
        *slot += 1;
        if *slot < blobs.len() {
            return true;
        }
        *slot = 0;
    }
    false
}

/// `target` with `manifest` and every derived blob named by `blob_of`.
fn named(
    target: &Target,
    manifest: String,
    blob_of: impl Fn(usize) -> Option<(Digest, u64)>,
) -> Target {
    let mut out = target.clone();
    out.manifest = manifest;
    for (index, layer) in out.layers.iter_mut().enumerate() {
        if let LayerStorage::SourceBlob { digest, size, .. } = &mut layer.storage {
            if digest.is_none() {
                if let Some((d, s)) = blob_of(index) {
                    (*digest, *size) = (Some(d), Some(s));
                }
            }
        }
    }
    out
}

/// What the device has for each layer of `target` whose blob is derived: the recreated blob
/// from `recreated`, or the blobs `bases` holds of it.
pub(super) fn found(
    target: &Target,
    recreated: &[Option<(Digest, u64)>],
    bases: &dyn BaseStore,
) -> Vec<Option<Found>> {
    target
        .layers
        .iter()
        .enumerate()
        .map(|(index, layer)| match &layer.storage {
            LayerStorage::SourceBlob {
                digest: None,
                from: BlobFrom::Device,
                ..
            } => Some(Found::Held(bases.blobs_of(&layer.diff_id))),
            LayerStorage::SourceBlob { digest: None, .. } => recreated
                .get(index)
                .cloned()
                .flatten()
                .map(|(d, s)| Found::Recreated(d, s)),
            _ => None,
        })
        .collect()
}

/// The error for an [`Unresolved`] target.
pub(super) fn unresolved_error(name: &str, target: &Target, why: Unresolved) -> Error {
    match why {
        Unresolved::Recreated { actual } => Error::DerivedManifestMismatch {
            bundle: name.to_owned(),
            expected: target.manifest_digest.clone(),
            actual,
        },
        Unresolved::Held { index, held } => Error::HeldBlobNotFound {
            bundle: name.to_owned(),
            index,
            diff_id: target.layers[index].diff_id.clone(),
            held,
        },
    }
}

/// Copies into the staged layout each held blob `resolved` names for a layer whose blob
/// `signed` left to the device.
pub(super) fn stage_held(
    name: &str,
    signed: &Target,
    resolved: &Target,
    bases: &dyn BaseStore,
    writer: &OciLayoutWriter,
) -> Result<(), Error> {
    for (index, (before, after)) in signed.layers.iter().zip(&resolved.layers).enumerate() {
        let (
            LayerStorage::SourceBlob {
                digest: None,
                from: BlobFrom::Device,
                ..
            },
            LayerStorage::SourceBlob {
                digest: Some(digest),
                size: Some(size),
                ..
            },
        ) = (&before.storage, &after.storage)
        else {
            continue;
        };
        if writer.has_blob(digest) {
            continue;
        }
        let stream = bases
            .open_blob(digest)?
            .ok_or_else(|| Error::MissingBaseBlob {
                bundle: name.to_owned(),
                index,
                digest: digest.clone(),
            })?;
        writer.put_blob_verified(stream, digest, Some(*size))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sideload_signing::{Platform, SourceRef, TargetLayer};

    fn d(name: &str) -> Digest {
        Digest::of_bytes(name.as_bytes())
    }

    fn manifest(blobs: &[(Digest, u64)]) -> String {
        let layers: Vec<String> = blobs
            .iter()
            .map(|(d, s)| format!("{{\"digest\":\"{d}\",\"size\":{s}}}"))
            .collect();
        format!("{{\"layers\":[{}]}}", layers.join(","))
    }

    fn derived(from: BlobFrom) -> LayerStorage {
        LayerStorage::SourceBlob {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: None,
            size: None,
            from,
        }
    }

    /// A target whose two layers (held, recreated) are derived, made from the source's blobs.
    fn target(source: &[(Digest, u64)]) -> Target {
        let text = manifest(source);
        let template = template::make(
            &text,
            &[
                (0, &source[0].0, source[0].1),
                (1, &source[1].0, source[1].1),
            ],
        )
        .unwrap();
        let layer = |name: &str, from| TargetLayer {
            diff_id: d(name),
            size: 1000,
            storage: derived(from),
        };
        let target = Target {
            repository: "edge/app".parse().unwrap(),
            tags: vec!["v2".parse().unwrap()],
            platform: Platform {
                os: "linux".into(),
                architecture: "amd64".into(),
                variant: String::new(),
            },
            config_digest: d("config"),
            layers: vec![
                layer("base", BlobFrom::Device),
                layer("app", BlobFrom::Recipe),
            ],
            manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            manifest: template,
            manifest_digest: Digest::of_bytes(text.as_bytes()),
            source: SourceRef {
                reference: "oci:/src:v2".into(),
                manifest_digest: None,
            },
        };
        target.check_derived_blobs().unwrap();
        target
    }

    #[test]
    fn the_held_blob_that_makes_the_signed_manifest_is_chosen() {
        let source = [(d("base.gz"), 400), (d("app.gz"), 300)];
        let target = target(&source);
        let found = [
            Some(Found::Held(vec![(d("base.zst"), 380), source[0].clone()])),
            Some(Found::Recreated(source[1].0.clone(), 300)),
        ];
        let resolved = resolve(&target, &found).unwrap();
        assert_eq!(resolved.manifest, manifest(&source));
        assert_eq!(
            Digest::of_bytes(resolved.manifest.as_bytes()),
            target.manifest_digest
        );
        assert_eq!(
            resolved.layers[0].storage.blob(&resolved.layers[0]),
            Some(source[0].clone())
        );
        assert_eq!(
            resolved.layers[1].storage.blob(&resolved.layers[1]),
            Some(source[1].clone())
        );
        assert!(!resolved.has_manifest_template());
    }

    #[test]
    fn a_wrong_recreated_blob_or_no_right_held_blob_is_not_resolved() {
        let source = [(d("base.gz"), 400), (d("app.gz"), 300)];
        let target = target(&source);
        let wrong_recreated = [
            Some(Found::Held(vec![source[0].clone()])),
            Some(Found::Recreated(d("other.gz"), 300)),
        ];
        assert_eq!(
            resolve(&target, &wrong_recreated),
            Err(Unresolved::Held { index: 0, held: 1 })
        );
        let none_held = [
            Some(Found::Held(vec![])),
            Some(Found::Recreated(source[1].0.clone(), 300)),
        ];
        assert_eq!(
            resolve(&target, &none_held),
            Err(Unresolved::Held { index: 0, held: 0 })
        );
        // With only recreated blobs derived, the mismatch is the recreated blob's.
        let mut only_recreated = target.clone();
        only_recreated.layers[0].storage = LayerStorage::SourceBlob {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: Some(source[0].0.clone()),
            size: Some(400),
            from: BlobFrom::Device,
        };
        only_recreated.manifest =
            template::make(&manifest(&source), &[(1, &source[1].0, 300)]).unwrap();
        let found = [None, Some(Found::Recreated(d("other.gz"), 300))];
        let Err(Unresolved::Recreated { actual }) = resolve(&only_recreated, &found) else {
            panic!("resolved with the wrong blob");
        };
        assert_eq!(
            actual,
            Digest::of_bytes(manifest(&[source[0].clone(), (d("other.gz"), 300)]).as_bytes())
        );
    }

    #[test]
    fn combinations_stop_at_the_cap() {
        let source = [(d("base.gz"), 400), (d("app.gz"), 300)];
        let target = target(&source);
        // The right blob sorts after more wrong ones than the cap allows.
        let mut held: Vec<(Digest, u64)> = (0..MAX_COMBINATIONS)
            .map(|i| (d(&format!("wrong{i}")), 1))
            .collect();
        held.push(source[0].clone());
        let found = [
            Some(Found::Held(held)),
            Some(Found::Recreated(source[1].0.clone(), 300)),
        ];
        assert!(matches!(
            resolve(&target, &found),
            Err(Unresolved::Held { .. })
        ));
    }
}
