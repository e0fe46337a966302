//! OCI layouts: images built from real files, read back, cross-checked with skopeo, copied.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;

use serde_json::json;
use sideload_bundle::image::spec::{media_types, Descriptor, ManifestSpec, PlatformSpec};
use sideload_bundle::image::{
    open_image, write_oci_layout, ImageError, ImageLocation, ImageSource, OciLayoutWriter,
    OpenOptions,
};
use sideload_signing::{Digest, Platform};
use support::{build_sample_image, drain, skopeo};

fn open(location: &str) -> Box<dyn ImageSource> {
    open_image(
        &location.parse::<ImageLocation>().unwrap(),
        &OpenOptions::default(),
    )
    .unwrap()
}

fn open_err(location: &str, options: &OpenOptions) -> ImageError {
    open_image(&location.parse::<ImageLocation>().unwrap(), options)
        .err()
        .expect("should fail")
}

/// Files of a layer tar, path → content (regular files only).
fn tar_files(r: impl Read) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut ar = tar::Archive::new(r);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type().is_file() {
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            out.insert(path, data);
        }
    }
    out
}

#[test]
fn built_image_reads_back_with_its_files() {
    let layout = tempfile::tempdir().unwrap();
    let (manifest_digest, _files, dirs) = build_sample_image(layout.path(), "v1");
    let src = open(&format!("oci:{}:v1", layout.path().display()));
    let image = src.image();
    assert_eq!(image.manifest_digest(), Some(&manifest_digest));
    assert_eq!(image.layers.len(), 2);
    assert_eq!(image.repo_tags, vec!["v1".to_owned()]);
    assert_eq!(image.platform.architecture, "amd64");
    assert_eq!(image.platform.os, "linux");
    for layer in &image.layers {
        assert_eq!(layer.media_type, media_types::OCI_LAYER_GZIP);
        assert_ne!(layer.blob_digest, layer.diff_id);
    }
    // Every file of every layer dir is in its layer, byte for byte.
    for (i, dir) in dirs.iter().enumerate() {
        let files = tar_files(src.open_layer(i).unwrap());
        let mut expected = 0;
        for entry in walk(dir) {
            let rel = entry
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if fs::symlink_metadata(&entry).unwrap().is_file() {
                assert_eq!(files.get(&rel), Some(&fs::read(&entry).unwrap()), "{rel}");
                expected += 1;
            }
        }
        assert_eq!(files.len(), expected);
    }
    // The bare directory path opens the same image.
    let bare = open(&layout.path().display().to_string());
    assert_eq!(bare.image().id(), image.id());
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn skopeo_agrees_on_the_built_image() {
    let layout = tempfile::tempdir().unwrap();
    let (manifest_digest, _files, _) = build_sample_image(layout.path(), "v1");
    let inspect: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        &format!("oci:{}:v1", layout.path().display()),
    ]))
    .unwrap();
    assert_eq!(inspect["Digest"], manifest_digest.as_str());
    assert_eq!(inspect["Architecture"], "amd64");
    let src = open(&format!("oci:{}:v1", layout.path().display()));
    let blob_digests: Vec<String> = src
        .image()
        .layers
        .iter()
        .map(|l| l.blob_digest.to_string())
        .collect();
    assert_eq!(inspect["Layers"], json!(blob_digests));

    // skopeo copies it to another layout; we read the copy: same manifest, same layers.
    let copy = tempfile::tempdir().unwrap();
    skopeo(&[
        "copy",
        &format!("oci:{}:v1", layout.path().display()),
        &format!("oci:{}:copied", copy.path().display()),
    ]);
    let copied = open(&format!("oci:{}:copied", copy.path().display()));
    assert_eq!(copied.image().manifest_digest(), Some(&manifest_digest));
    for i in 0..copied.image().layers.len() {
        drain(copied.open_layer(i).unwrap()).unwrap();
    }
}

#[test]
fn write_oci_layout_keeps_the_manifest_digest() {
    let layout = tempfile::tempdir().unwrap();
    let (manifest_digest, _files, _) = build_sample_image(layout.path(), "v1");
    let src = open(&format!("oci:{}:v1", layout.path().display()));
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("copy");
    let written = write_oci_layout(src.as_ref(), &dest, Some("again")).unwrap();
    assert_eq!(written, manifest_digest);
    let again = open(&format!("oci:{}:again", dest.display()));
    assert_eq!(again.image().manifest_digest(), Some(&manifest_digest));
    assert_eq!(again.image().config.bytes, src.image().config.bytes);
    for i in 0..again.image().layers.len() {
        drain(again.open_layer(i).unwrap()).unwrap();
        drain(again.open_layer_blob(i).unwrap()).unwrap();
    }
    let inspect: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        &format!("oci:{}:again", dest.display()),
    ]))
    .unwrap();
    assert_eq!(inspect["Digest"], manifest_digest.as_str());
}

fn arm64() -> Platform {
    Platform {
        os: "linux".into(),
        architecture: "arm64".into(),
        variant: "v8".into(),
    }
}

/// A layout holding an index with an amd64 and an arm64 manifest (sharing layers), named
/// `multi`. Returns (amd64 manifest digest, arm64 manifest digest, index digest).
fn multi_platform_layout(dir: &Path) -> (Digest, Digest, Digest, tempfile::TempDir) {
    let (amd, files, _) = build_sample_image(dir, "amd");
    let amd_src = open(&format!("oci:{}:amd", dir.display()));
    let amd_image = amd_src.image().clone();
    let mut config: serde_json::Value = serde_json::from_slice(&amd_image.config.bytes).unwrap();
    config["architecture"] = json!("arm64");
    config["variant"] = json!("v8");
    let config = serde_json::to_vec(&config).unwrap();

    let mut writer = OciLayoutWriter::create(dir).unwrap();
    let (config_digest, config_size) = writer.put_blob_bytes(&config).unwrap();
    let manifest = ManifestSpec {
        schema_version: 2,
        media_type: Some(media_types::OCI_MANIFEST.into()),
        config: Descriptor::new(media_types::OCI_CONFIG, config_digest, config_size),
        layers: amd_image
            .layers
            .iter()
            .map(|l| Descriptor::new(l.media_type.clone(), l.blob_digest.clone(), l.blob_size))
            .collect(),
        annotations: None,
    };
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let (arm, arm_size) = writer.put_blob_bytes(&manifest).unwrap();
    let amd_manifest = amd_image.manifest.as_ref().unwrap();
    let mut entries = vec![
        Descriptor::new(
            media_types::OCI_MANIFEST,
            amd.clone(),
            amd_manifest.bytes.len() as u64,
        ),
        Descriptor::new(media_types::OCI_MANIFEST, arm.clone(), arm_size),
    ];
    entries[0].platform = Some(PlatformSpec::from_platform(&amd_image.platform));
    entries[1].platform = Some(PlatformSpec::from_platform(&arm64()));
    let index = json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_INDEX,
        "manifests": entries,
    });
    let index = serde_json::to_vec(&index).unwrap();
    let index_digest = writer
        .add_manifest(&index, media_types::OCI_INDEX, Some("multi"), None)
        .unwrap();
    writer.finish().unwrap();
    (amd, arm, index_digest, files)
}

#[test]
fn multi_platform_index_picks_the_platform() {
    let layout = tempfile::tempdir().unwrap();
    let (amd, arm, index, _files) = multi_platform_layout(layout.path());
    let loc = format!("oci:{}:multi", layout.path().display());

    let default = open(&loc);
    assert_eq!(default.image().manifest_digest(), Some(&amd));
    assert_eq!(default.image().index_digest.as_ref(), Some(&index));

    let options = OpenOptions {
        platform: arm64(),
        ..OpenOptions::default()
    };
    let arm_src = open_image(&loc.parse().unwrap(), &options).unwrap();
    assert_eq!(arm_src.image().manifest_digest(), Some(&arm));
    assert_eq!(arm_src.image().platform, arm64());
    assert_eq!(arm_src.image().diff_ids(), default.image().diff_ids());

    let s390x = OpenOptions {
        platform: Platform {
            os: "linux".into(),
            architecture: "s390x".into(),
            variant: String::new(),
        },
        ..OpenOptions::default()
    };
    let err = open_err(&loc, &s390x);
    assert!(matches!(err, ImageError::NoSuchPlatform { .. }), "{err}");
    assert!(err.to_string().contains("linux/arm64/v8"), "{err}");
}

#[test]
fn several_images_need_a_name() {
    let layout = tempfile::tempdir().unwrap();
    let (_, _files, _) = build_sample_image(layout.path(), "one");
    let (_, _files2, _) = build_sample_image(layout.path(), "two");
    let loc = format!("oci:{}", layout.path().display());
    let err = open_err(&loc, &OpenOptions::default());
    assert!(matches!(err, ImageError::Ambiguous { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("one") && msg.contains("two"), "{msg}");
    let err = open_err(&format!("{loc}:three"), &OpenOptions::default());
    assert!(matches!(err, ImageError::NoSuchImage { .. }), "{err}");
    open(&format!("{loc}:two"));
}

#[test]
fn missing_and_tampered_blobs_are_caught() {
    let layout = tempfile::tempdir().unwrap();
    let (_, _files, _) = build_sample_image(layout.path(), "v1");
    let loc = format!("oci:{}:v1", layout.path().display());
    let src = open(&loc);
    let layer = src.image().layers[1].clone();
    let blob = layout
        .path()
        .join("blobs/sha256")
        .join(layer.blob_digest.hex());
    drop(src);

    // Same size, different bytes: the stream fails at its end with InvalidData.
    let mut bytes = fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    fs::write(&blob, &bytes).unwrap();
    let src = open(&loc);
    let err = drain(src.open_layer_blob(1).unwrap()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    // Decompressing the damaged gzip fails too (how depends on where the damage is).
    assert!(drain(src.open_layer(1).unwrap()).is_err());

    fs::remove_file(&blob).unwrap();
    let err = src.open_layer(1).err().unwrap();
    assert!(matches!(err, ImageError::MissingBlob { .. }), "{err}");

    // A tampered config is refused when the image is opened.
    let config = layout
        .path()
        .join("blobs/sha256")
        .join(src.image().config.digest.hex());
    fs::write(&config, b"{}").unwrap();
    let err = open_err(&loc, &OpenOptions::default());
    assert!(matches!(err, ImageError::DigestMismatch { .. }), "{err}");
}

#[test]
fn a_directory_that_is_not_a_layout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = open_err(
        &format!("oci:{}", dir.path().display()),
        &OpenOptions::default(),
    );
    assert!(matches!(err, ImageError::NotAnImage { .. }), "{err}");
}
