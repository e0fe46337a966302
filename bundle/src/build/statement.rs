//! The statement a build ends with: the image the device will produce (its manifest, the
//! source's own when every blob is exact, else one built from the layers as stored), what the
//! device must hold, the payload, and the options' names and times. Pure.
//!
//! The source's manifest travels as a template when it can ([`derive_blobs`]): the digests
//! and sizes of the blobs the device recreates or holds are left out, for the device to fill.

use sideload_signing::template;
use sideload_signing::{
    BlobFrom, Digest, LayerStorage, PayloadInfo, SourceRef, Statement, Target, TargetLayer,
};

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
    mut layers: Vec<TargetLayer>,
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
    let manifest_digest = Digest::of_bytes(&manifest);
    let manifest = String::from_utf8(manifest).expect("manifests are checked UTF-8 JSON");
    let manifest = match source_manifest {
        Some(_) => derive_blobs(&mut layers, manifest),
        None => manifest,
    };
    let target = Target {
        repository: options.repository.clone(),
        tags: options.tags.clone(),
        platform: image.platform.clone(),
        config_digest: image.config.digest.clone(),
        layers,
        manifest_media_type,
        manifest_digest,
        manifest,
        source: SourceRef {
            reference: image.reference.clone(),
            manifest_digest: image.manifest.as_ref().map(|m| m.digest.clone()),
        },
    };
    Statement {
        // The lowest version that describes the bundle, so devices that predate a version
        // still apply what does not need it.
        format_version: records_version.max(target.format_version()),
        target,
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

/// Leaves to the device the digest and size of every blob it recreates from a recipe or holds
/// (format version 9): returns `manifest` as a template with holes for them and marks them
/// derived in `layers`. An exact bundle then carries no digest the device can find itself:
/// 32 bytes of entropy per layer, most of what it cost over `--exact never`. Leaves `layers`
/// and `manifest` as they are when the manifest does not name each such blob plainly.
fn derive_blobs(layers: &mut [TargetLayer], manifest: String) -> String {
    let derivable: Vec<(usize, &Digest, u64)> = layers
        .iter()
        .enumerate()
        .filter_map(|(index, layer)| match &layer.storage {
            LayerStorage::SourceBlob {
                digest: Some(digest),
                size: Some(size),
                from: BlobFrom::Recipe | BlobFrom::Device,
                ..
            } => Some((index, digest, *size)),
            _ => None,
        })
        .collect();
    if derivable.is_empty() {
        return manifest;
    }
    let Some(template) = template::make(&manifest, &derivable) else {
        return manifest;
    };
    let filled = template::fill(&template, |hole| {
        let &(_, digest, size) = derivable.iter().find(|(i, _, _)| *i == hole.layer())?;
        Some(match hole {
            template::Hole::Digest(_) => digest.to_string(),
            template::Hole::Size(_) => size.to_string(),
        })
    });
    if filled.as_deref() != Ok(manifest.as_str()) {
        return manifest;
    }
    let derived: Vec<usize> = derivable.iter().map(|(i, _, _)| *i).collect();
    for index in derived {
        if let LayerStorage::SourceBlob { digest, size, .. } = &mut layers[index].storage {
            (*digest, *size) = (None, None);
        }
    }
    template
}

/// An OCI manifest of the config and the layers as the device stores them.
fn manifest_of(config: &Digest, config_len: u64, layers: &[TargetLayer]) -> Vec<u8> {
    build_manifest(
        config,
        config_len,
        layers
            .iter()
            .map(|l| {
                let (digest, size) = l
                    .storage
                    .blob(l)
                    .expect("a build names every blob before it derives any");
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
            digest: Some(Digest::of_bytes(b"blob")),
            size: Some(40),
            from: BlobFrom::Recipe,
        }
    }

    #[test]
    fn the_blobs_a_device_recreates_or_holds_are_left_to_it() {
        let blob = Digest::of_bytes(b"blob");
        let mut layers = vec![layer("a", uncompressed()), layer("b", exact())];
        let source = format!(
            "{{\"layers\":[{{\"digest\":\"{}\",\"size\":100}},{{\"digest\":\"{blob}\",\"size\":40}}]}}",
            layers[0].diff_id
        );
        let template = derive_blobs(&mut layers, source.clone());
        assert!(layers[1].storage.is_derived() && !layers[0].storage.is_derived());
        assert!(!template.contains(blob.as_str()) && !template.contains(":40"));
        let target = Target {
            repository: "edge/app".parse().unwrap(),
            tags: vec![],
            platform: sideload_signing::Platform {
                os: "linux".into(),
                architecture: "amd64".into(),
                variant: String::new(),
            },
            config_digest: Digest::of_bytes(b"config"),
            layers,
            manifest_media_type: OCI_MANIFEST.into(),
            manifest_digest: Digest::of_bytes(source.as_bytes()),
            manifest: template,
            source: SourceRef {
                reference: "oci:/src".into(),
                manifest_digest: None,
            },
        };
        target.check_derived_blobs().unwrap();
        assert_eq!(target.format_version(), 9);

        // A manifest that does not name the blob plainly keeps every digest.
        let mut layers = vec![layer("b", exact())];
        let other = "{\"layers\":[]}".to_owned();
        assert_eq!(derive_blobs(&mut layers, other.clone()), other);
        assert!(!layers[0].storage.is_derived());
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
