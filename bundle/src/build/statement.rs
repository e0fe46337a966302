//! The statement a build ends with: the image the device will produce (its manifest, the
//! source's own when every blob is exact, else one built from the layers as stored), what the
//! device must hold, the payload, and the options' names and times. Pure.

use sideload_signing::{Digest, PayloadInfo, SourceRef, Statement, Target, TargetLayer};

use crate::image::spec::media_types::OCI_MANIFEST;
use crate::image::spec::Descriptor;
use crate::image::Image;
use crate::manifest::build_manifest;

use super::BuildOptions;

/// The unsigned statement of a build of `image`: `source_manifest` is the source's exact
/// manifest (media type, bytes) when the device will reproduce it.
pub(super) fn assemble(
    image: &Image,
    options: &BuildOptions,
    source_manifest: Option<&(String, Vec<u8>)>,
    layers: Vec<TargetLayer>,
    records_version: u32,
    requires: Vec<Digest>,
    payload: PayloadInfo,
) -> Statement {
    let (manifest_media_type, manifest) = match source_manifest {
        Some((media_type, bytes)) => (media_type.clone(), bytes.clone()),
        None => (
            OCI_MANIFEST.to_owned(),
            manifest_of(
                &image.config.digest,
                image.config.bytes.len() as u64,
                &layers,
            ),
        ),
    };
    Statement {
        format_version: format_version(records_version, &layers),
        target: Target {
            repository: options.repository.clone(),
            tags: options.tags.clone(),
            platform: image.platform.clone(),
            config_digest: image.config.digest.clone(),
            layers,
            manifest_media_type,
            manifest_digest: Digest::of_bytes(&manifest),
            manifest: String::from_utf8(manifest).expect("serde_json writes UTF-8"),
            source: SourceRef {
                reference: image.reference.clone(),
                manifest_digest: image.manifest.as_ref().map(|m| m.digest.clone()),
            },
        },
        requires,
        payload,
        sequence: options.sequence,
        allow_downgrade: options.allow_downgrade,
        created_at: options.created_at,
        expires_at: options.expires_at,
        ordered_by: options.ordered_by.clone(),
        contact: options.contact.clone(),
    }
}

/// The lowest statement version that describes the bundle, so devices that predate a version
/// still apply what does not need it: the payload records' version, and 2 when a layer is
/// stored as an exact blob.
fn format_version(records_version: u32, layers: &[TargetLayer]) -> u32 {
    records_version.max(if layers.iter().any(|l| l.storage.is_exact_blob()) {
        2
    } else {
        1
    })
}

/// An OCI manifest of the config and the layers as the device stores them.
fn manifest_of(config: &Digest, config_len: u64, layers: &[TargetLayer]) -> Vec<u8> {
    build_manifest(
        config,
        config_len,
        layers
            .iter()
            .map(|l| {
                let (digest, size) = l.storage.blob(l);
                Descriptor::new(l.storage.media_type(), digest, size)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sideload_signing::{BlobFrom, LayerStorage};

    fn layer(name: &str, storage: LayerStorage) -> TargetLayer {
        TargetLayer {
            diff_id: Digest::of_bytes(name.as_bytes()),
            size: 100,
            storage,
        }
    }

    fn uncompressed() -> LayerStorage {
        LayerStorage::Uncompressed {
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        }
    }

    fn exact() -> LayerStorage {
        LayerStorage::SourceBlob {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: Digest::of_bytes(b"blob"),
            size: 40,
            from: BlobFrom::Recipe,
        }
    }

    #[test]
    fn exact_blobs_need_version_2_and_records_may_need_more() {
        let plain = [layer("a", uncompressed())];
        let with_exact = [layer("a", uncompressed()), layer("b", exact())];
        assert_eq!(format_version(1, &plain), 1);
        assert_eq!(format_version(1, &with_exact), 2);
        assert_eq!(format_version(3, &with_exact), 3);
        assert_eq!(format_version(3, &plain), 3);
    }

    #[test]
    fn the_built_manifest_names_each_layer_as_the_device_stores_it() {
        let layers = [layer("a", uncompressed()), layer("b", exact())];
        let config = Digest::of_bytes(b"config");
        let manifest: serde_json::Value =
            serde_json::from_slice(&manifest_of(&config, 6, &layers)).unwrap();
        assert_eq!(manifest["config"]["digest"], config.to_string());
        let listed = manifest["layers"].as_array().unwrap();
        assert_eq!(listed[0]["digest"], layers[0].diff_id.to_string());
        assert_eq!(listed[0]["size"], 100);
        assert_eq!(listed[1]["digest"], Digest::of_bytes(b"blob").to_string());
        assert_eq!(listed[1]["size"], 40);
        assert_eq!(
            listed[1]["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
    }
}
