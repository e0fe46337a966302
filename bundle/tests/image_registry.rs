//! Registry reads against a real distribution registry on 127.0.0.1, filled by skopeo.

mod support;

use std::fs;
use std::path::Path;

use sideload_bundle::image::{
    open_image, BasicAuth, ImageError, ImageLocation, ImageSource, OpenOptions, RegistrySource,
};
use sideload_signing::{Digest, Platform};
use support::{build_sample_image, drain, skopeo, try_skopeo, Credentials, Registry};

fn insecure(registry: &Registry) -> OpenOptions {
    OpenOptions {
        insecure_registries: vec![registry.host.clone()],
        ..OpenOptions::default()
    }
}

fn push(layout: &Path, tag: &str, registry: &Registry, repo_tag: &str, extra: &[&str]) {
    let src = format!("oci:{}:{tag}", layout.display());
    let dst = registry.docker_ref(repo_tag);
    let mut args = vec!["copy", "--dest-tls-verify=false"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[&src, &dst]);
    skopeo(&args);
}

fn verify_layers(src: &dyn ImageSource) {
    for i in 0..src.image().layers.len() {
        drain(src.open_layer(i).unwrap()).unwrap_or_else(|e| panic!("layer {i}: {e}"));
    }
}

#[test]
fn anonymous_pull_from_local_registry() {
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let (manifest_digest, _files, _) = build_sample_image(&layout, "v1");
    let local = open_image(
        &format!("oci:{}:v1", layout.display()).parse().unwrap(),
        &OpenOptions::default(),
    )
    .unwrap();
    push(&layout, "v1", &registry, "sideload/app:v1", &[]);

    let location: ImageLocation = registry.docker_ref("sideload/app:v1").parse().unwrap();
    let src = open_image(&location, &insecure(&registry)).unwrap();
    let image = src.image();
    assert_eq!(image.config.digest, local.image().config.digest);
    assert_eq!(image.diff_ids(), local.image().diff_ids());
    // skopeo pushed the OCI manifest unchanged: same digest.
    assert_eq!(image.manifest_digest(), Some(&manifest_digest));
    assert_eq!(image.reference, location.to_string());
    verify_layers(src.as_ref());

    // By digest, into a cache directory that a second pull reuses.
    let cache = work.path().join("cache");
    let options = OpenOptions {
        cache_dir: Some(cache.clone()),
        ..insecure(&registry)
    };
    let pinned = format!("{}/sideload/app@{manifest_digest}", registry.host);
    let first = RegistrySource::pull(&pinned, &options).unwrap();
    assert_eq!(first.source_digest(), &manifest_digest);
    assert_eq!(first.layout_dir(), cache.as_path());
    verify_layers(&first);
    let blobs = fs::read_dir(cache.join("blobs/sha256")).unwrap().count();
    assert_eq!(blobs, 4, "manifest, config and two layers");
    let second =
        RegistrySource::pull(&format!("{}/sideload/app:v1", registry.host), &options).unwrap();
    assert_eq!(second.image().config.digest, local.image().config.digest);

    // The cache is an OCI layout skopeo can read, each pull named by its reference.
    let inspect = skopeo(&[
        "inspect",
        &format!("oci:{}:{}/sideload/app:v1", cache.display(), registry.host),
    ]);
    assert!(inspect.contains(manifest_digest.as_str()), "{inspect}");
}

#[test]
fn missing_tag_and_plain_https_fail_clearly() {
    let registry = Registry::start();
    let location: ImageLocation = registry.docker_ref("sideload/none:v1").parse().unwrap();
    let err = open_image(&location, &insecure(&registry)).err().unwrap();
    assert!(matches!(err, ImageError::Registry { .. }), "{err}");
    assert!(err.to_string().contains("sideload/none"), "{err}");
    // Without the insecure exception the client speaks TLS to a plain-HTTP registry.
    let err = open_image(&location, &OpenOptions::default())
        .err()
        .unwrap();
    assert!(matches!(err, ImageError::Registry { .. }), "{err}");
}

#[test]
fn multi_platform_image_picks_linux_amd64_by_default() {
    let registry = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let (amd, _files, _) = build_sample_image(&layout, "amd");
    // An arm64 image sharing the layers, and an index over both.
    let amd_src = open_image(
        &format!("oci:{}:amd", layout.display()).parse().unwrap(),
        &OpenOptions::default(),
    )
    .unwrap();
    let (arm, index) = add_arm64_and_index(&layout, amd_src.image(), &amd);
    push(&layout, "multi", &registry, "sideload/multi:1", &["--all"]);

    let reference = format!("{}/sideload/multi:1", registry.host);
    let src = RegistrySource::pull(&reference, &insecure(&registry)).unwrap();
    assert_eq!(src.source_digest(), &index);
    assert_eq!(src.image().index_digest.as_ref(), Some(&index));
    assert_eq!(src.image().manifest_digest(), Some(&amd));
    assert_eq!(src.image().platform.architecture, "amd64");
    verify_layers(&src);

    let arm_options = OpenOptions {
        platform: Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: String::new(),
        },
        ..insecure(&registry)
    };
    let src = RegistrySource::pull(&reference, &arm_options).unwrap();
    assert_eq!(src.image().manifest_digest(), Some(&arm));
    assert_eq!(src.image().platform.architecture, "arm64");
}

/// Writes an arm64 variant of `amd` and an index `multi` over both into `layout`.
fn add_arm64_and_index(
    layout: &Path,
    amd: &sideload_bundle::image::Image,
    amd_digest: &Digest,
) -> (Digest, Digest) {
    use serde_json::json;
    use sideload_bundle::image::spec::{media_types, Descriptor, ManifestSpec};
    use sideload_bundle::image::OciLayoutWriter;

    let mut config: serde_json::Value = serde_json::from_slice(&amd.config.bytes).unwrap();
    config["architecture"] = json!("arm64");
    let config = serde_json::to_vec(&config).unwrap();
    let mut writer = OciLayoutWriter::create(layout).unwrap();
    let (config_digest, config_size) = writer.put_blob_bytes(&config).unwrap();
    let manifest = ManifestSpec {
        schema_version: 2,
        media_type: Some(media_types::OCI_MANIFEST.into()),
        config: Descriptor::new(media_types::OCI_CONFIG, config_digest, config_size),
        layers: amd
            .layers
            .iter()
            .map(|l| Descriptor::new(l.media_type.clone(), l.blob_digest.clone(), l.blob_size))
            .collect(),
        annotations: None,
    };
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let (arm, arm_size) = writer.put_blob_bytes(&manifest).unwrap();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": media_types::OCI_INDEX,
        "manifests": [
            { "mediaType": media_types::OCI_MANIFEST, "digest": arm, "size": arm_size,
              "platform": { "os": "linux", "architecture": "arm64" } },
            { "mediaType": media_types::OCI_MANIFEST, "digest": amd_digest,
              "size": amd.manifest.as_ref().unwrap().bytes.len(),
              "platform": { "os": "linux", "architecture": "amd64" } },
        ],
    });
    let index = writer
        .add_manifest(
            &serde_json::to_vec(&index).unwrap(),
            media_types::OCI_INDEX,
            Some("multi"),
            None,
        )
        .unwrap();
    writer.finish().unwrap();
    (arm, index)
}

#[test]
fn basic_auth_pull() {
    let credentials = Credentials {
        username: "sideload".into(),
        password: "correct horse".into(),
    };
    let registry = Registry::start_with_basic_auth(&credentials);
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let (manifest_digest, _files, _) = build_sample_image(&layout, "v1");

    // The registry refuses anonymous pushes...
    let anonymous = try_skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", layout.display()),
        &registry.docker_ref("private/app:v1"),
    ]);
    assert!(anonymous.is_err(), "anonymous push was accepted");
    let creds = format!("{}:{}", credentials.username, credentials.password);
    push(
        &layout,
        "v1",
        &registry,
        "private/app:v1",
        &["--dest-creds", &creds],
    );

    let location: ImageLocation = registry.docker_ref("private/app:v1").parse().unwrap();
    let with = |username: &str, password: &str| OpenOptions {
        auth: Some(BasicAuth {
            username: username.into(),
            password: password.into(),
        }),
        ..insecure(&registry)
    };
    let src = open_image(&location, &with("sideload", "correct horse")).unwrap();
    assert_eq!(src.image().manifest_digest(), Some(&manifest_digest));
    verify_layers(src.as_ref());

    for options in [
        insecure(&registry),
        with("sideload", "wrong"),
        with("intruder", "correct horse"),
    ] {
        let err = open_image(&location, &options)
            .err()
            .expect("pull without valid credentials");
        assert!(matches!(err, ImageError::Registry { .. }), "{err}");
        assert!(!err.to_string().contains("correct horse"));
    }
}
