//! What an apply checks before it writes anything: every base layer and blob the statement
//! needs is on the device, whether a payload digest check must come first (recipes), and how
//! much disk the apply needs. Pure over the statement and what the [`BaseStore`] holds.

use sideload_signing::{BlobFrom, LayerStorage, Statement};

use crate::error::Error;
use crate::scratch::BaseStore;

use super::{space_needed, Output};

/// Refuses a bundle whose required base layers, or layer blobs it takes from the device, the
/// device does not hold.
pub(super) fn check_bases(
    name: &str,
    statement: &Statement,
    bases: &dyn BaseStore,
) -> Result<(), Error> {
    for diff_id in &statement.requires {
        if !bases.contains(diff_id) {
            return Err(Error::MissingBase {
                bundle: name.to_owned(),
                diff_id: diff_id.clone(),
            });
        }
    }
    for (index, layer) in statement.target.layers.iter().enumerate() {
        let LayerStorage::SourceBlob {
            digest,
            from: BlobFrom::Device,
            ..
        } = &layer.storage
        else {
            continue;
        };
        match digest {
            Some(digest) if !bases.contains_blob(digest) => {
                return Err(Error::MissingBaseBlob {
                    bundle: name.to_owned(),
                    index,
                    digest: digest.clone(),
                })
            }
            None if bases.blobs_of(&layer.diff_id).is_empty() => {
                return Err(Error::HeldBlobNotFound {
                    bundle: name.to_owned(),
                    index,
                    diff_id: layer.diff_id.clone(),
                    held: 0,
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether any layer's blob is recreated from a recipe in the payload.
pub(super) fn has_recipes(statement: &Statement) -> bool {
    statement.target.layers.iter().any(|l| {
        matches!(
            l.storage,
            LayerStorage::SourceBlob {
                from: BlobFrom::Recipe,
                ..
            }
        )
    })
}

/// Disk bytes the apply needs for `output`. The output holds every layer uncompressed, plus
/// scratch data while decoding; a docker archive is written from the staged layout, so it
/// needs the image twice.
pub(super) fn disk_needed(
    name: &str,
    statement: &Statement,
    output: &Output,
) -> Result<u64, Error> {
    let copies: u64 = if matches!(output, Output::DockerArchive(_)) {
        2
    } else {
        1
    };
    space_needed(statement, copies).ok_or_else(|| Error::CorruptPayload {
        bundle: name.to_owned(),
        reason: "declared sizes overflow".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    use sideload_signing::{
        Digest, PayloadCodec, PayloadInfo, Platform, SourceRef, Target, TargetLayer,
    };

    use crate::image::ImageError;

    /// Holds the layers and blobs it names, and opens none.
    struct Holds(Vec<Digest>);

    impl BaseStore for Holds {
        fn contains(&self, diff_id: &Digest) -> bool {
            self.0.contains(diff_id)
        }
        fn open_layer(&self, _: &Digest) -> Result<Option<Box<dyn Read + Send + '_>>, ImageError> {
            Ok(None)
        }
        fn contains_blob(&self, digest: &Digest) -> bool {
            self.0.contains(digest)
        }
    }

    fn statement(requires: Vec<Digest>, layers: Vec<TargetLayer>) -> Statement {
        let d = |b: &[u8]| Digest::of_bytes(b);
        Statement {
            format_version: 1,
            target: Target {
                repository: "edge/app".parse().unwrap(),
                tags: vec!["v2".parse().unwrap()],
                platform: Platform {
                    os: "linux".into(),
                    architecture: "amd64".into(),
                    variant: String::new(),
                },
                config_digest: d(b"config"),
                layers,
                manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                manifest: "{}".into(),
                manifest_digest: d(b"{}"),
                source: SourceRef {
                    reference: "oci:app".into(),
                    manifest_digest: None,
                },
            },
            requires,
            payload: PayloadInfo {
                size: 10,
                sha256: d(b"payload"),
                codec: PayloadCodec::Lzma2,
                window_log: 20,
                decoded_size: 100,
                scratch_bytes: 5000,
            },
            sequence: 1,
            allow_downgrade: false,
            created_at: 1,
            expires_at: 2,
            ordered_by: String::new(),
            contact: String::new(),
        }
    }

    fn layer(name: &str, from: Option<BlobFrom>) -> TargetLayer {
        TargetLayer {
            diff_id: Digest::of_bytes(name.as_bytes()),
            size: 1000,
            storage: match from {
                None => LayerStorage::Uncompressed {
                    media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                },
                Some(from) => LayerStorage::SourceBlob {
                    media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                    digest: Some(Digest::of_bytes(format!("{name}.gz").as_bytes())),
                    size: Some(400),
                    from,
                },
            },
        }
    }

    #[test]
    fn a_missing_base_layer_or_device_blob_is_refused_by_name() {
        let (base, held) = (
            Digest::of_bytes(b"base"),
            layer("held", Some(BlobFrom::Device)),
        );
        let s = statement(vec![base.clone()], vec![held.clone()]);
        let blob = held.storage.blob(&held).unwrap().0;
        check_bases("b", &s, &Holds(vec![base.clone(), blob.clone()])).unwrap();
        let e = check_bases("b", &s, &Holds(vec![blob])).unwrap_err();
        assert!(matches!(e, Error::MissingBase { diff_id, .. } if diff_id == base));
        let e = check_bases("b", &s, &Holds(vec![base])).unwrap_err();
        assert!(matches!(e, Error::MissingBaseBlob { index: 0, .. }));
    }

    #[test]
    fn recipes_and_docker_archives_change_what_an_apply_needs() {
        let plain = statement(vec![], vec![layer("a", None)]);
        let exact = statement(
            vec![],
            vec![layer("a", None), layer("b", Some(BlobFrom::Recipe))],
        );
        assert!(!has_recipes(&plain));
        assert!(has_recipes(&exact));
        let oci = disk_needed("b", &plain, &Output::OciLayout("x".into())).unwrap();
        let archive = disk_needed("b", &plain, &Output::DockerArchive("x".into())).unwrap();
        assert_eq!(archive - oci, oci - plain.payload.scratch_bytes);
        let mut huge = plain.clone();
        huge.target.layers[0].size = u64::MAX;
        assert!(matches!(
            disk_needed("b", &huge, &Output::OciLayout("x".into())),
            Err(Error::CorruptPayload { .. })
        ));
    }
}
