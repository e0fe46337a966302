//! docker-archives: written by skopeo, written the way Docker ≥ 25 does, written by us and
//! read by skopeo; tampering is caught at end of stream.

mod support;

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde_json::json;
use sideload_bundle::image::digest_reader::{as_mismatch, DigestMismatch};
use sideload_bundle::image::docker_archive::DockerArchive;
use sideload_bundle::image::spec::{media_types, ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME};
use sideload_bundle::image::{
    open_image, write_docker_archive, Image, ImageError, ImageLocation, ImageSource, OpenOptions,
};
use sideload_signing::Digest;
use support::{build_sample_image, drain, skopeo};

fn open(location: &str) -> Box<dyn ImageSource> {
    open_image(
        &location.parse::<ImageLocation>().unwrap(),
        &OpenOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{location}: {e}"))
}

fn open_err(location: &str) -> ImageError {
    open_image(
        &location.parse::<ImageLocation>().unwrap(),
        &OpenOptions::default(),
    )
    .err()
    .expect("should fail")
}

/// Reads every layer to its end (each stream checks its diff_id) and recomputes the diff_id
/// independently.
fn check_all_layers(src: &dyn ImageSource) {
    for (i, layer) in src.image().layers.iter().enumerate() {
        let mut r = src.open_layer(i).unwrap();
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = r
                .read(&mut buf)
                .unwrap_or_else(|e| panic!("layer {i}: {e}"));
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
        }
        assert_eq!(
            Digest::from_sha256(hash.finish().as_ref()),
            layer.diff_id,
            "layer {i}"
        );
    }
}

fn same_image(a: &Image, b: &Image) {
    assert_eq!(a.config.digest, b.config.digest);
    assert_eq!(a.diff_ids(), b.diff_ids());
}

#[test]
fn skopeo_docker_archive_reads_back() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let (_, _files, _) = build_sample_image(&layout, "v1");
    let oci = open(&format!("oci:{}:v1", layout.display()));

    let archive = work.path().join("image.tar");
    skopeo(&[
        "copy",
        &format!("oci:{}:v1", layout.display()),
        &format!("docker-archive:{}:repo/name:tag", archive.display()),
    ]);

    let src = open(&format!("docker-archive:{}", archive.display()));
    same_image(src.image(), oci.image());
    assert!(
        src.image()
            .repo_tags
            .iter()
            .any(|t| t.ends_with("repo/name:tag")),
        "{:?}",
        src.image().repo_tags
    );
    for layer in &src.image().layers {
        // skopeo stores layers uncompressed: the blob is the tar.
        assert_eq!(layer.blob_digest, layer.diff_id);
    }
    check_all_layers(src.as_ref());

    // Selecting by its tag works, in both spellings; another tag does not exist.
    open(&format!(
        "docker-archive:{}:repo/name:tag",
        archive.display()
    ));
    open(&format!(
        "docker-archive:{}:docker.io/repo/name:tag",
        archive.display()
    ));
    let err = open_err(&format!(
        "docker-archive:{}:repo/name:other",
        archive.display()
    ));
    assert!(matches!(err, ImageError::NoSuchImage { .. }), "{err}");
    assert!(err.to_string().contains("repo/name:tag"), "{err}");

    // A bare file path is a docker-archive.
    same_image(open(&archive.display().to_string()).image(), oci.image());
}

/// Writes the Docker ≥ 25 `docker save` layout: the OCI layout at `layout` inside a tar,
/// `index.json` annotated the way Docker does it, and (optionally) a `manifest.json` whose
/// paths point into `blobs/`. Several `(name, manifest digest)` images may go in.
fn docker25_archive(
    layout: &Path,
    images: &[(&str, &Digest)],
    with_manifest_json: bool,
    out: &Path,
) {
    let mut tar = tar::Builder::new(fs::File::create(out).unwrap());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, data).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let mut blobs: Vec<_> = fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    blobs.sort();
    for blob in blobs {
        let name = format!(
            "blobs/sha256/{}",
            blob.file_name().unwrap().to_str().unwrap()
        );
        add(&name, &fs::read(&blob).unwrap());
    }
    let mut index_entries = Vec::new();
    let mut manifest_json = Vec::new();
    for (name, digest) in images {
        let manifest_bytes = fs::read(layout.join("blobs/sha256").join(digest.hex())).unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
        let tag = name.rsplit(':').next().unwrap();
        index_entries.push(json!({
            "mediaType": media_types::OCI_MANIFEST,
            "digest": digest,
            "size": manifest_bytes.len(),
            "annotations": {
                ANNOTATION_IMAGE_NAME: format!("docker.io/library/{name}"),
                ANNOTATION_REF_NAME: tag,
            },
        }));
        let config = manifest["config"]["digest"]
            .as_str()
            .unwrap()
            .strip_prefix("sha256:")
            .unwrap();
        let layers: Vec<String> = manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                format!(
                    "blobs/sha256/{}",
                    l["digest"]
                        .as_str()
                        .unwrap()
                        .strip_prefix("sha256:")
                        .unwrap()
                )
            })
            .collect();
        manifest_json.push(json!({
            "Config": format!("blobs/sha256/{config}"),
            "RepoTags": [name],
            "Layers": layers,
        }));
    }
    let index = json!({ "schemaVersion": 2, "mediaType": media_types::OCI_INDEX, "manifests": index_entries });
    add("index.json", index.to_string().as_bytes());
    if with_manifest_json {
        add("manifest.json", json!(manifest_json).to_string().as_bytes());
    }
    tar.into_inner().unwrap().flush().unwrap();
}

#[test]
fn docker25_oci_layout_inside_tar_is_read() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let (digest, _files, _) = build_sample_image(&layout, "v1");
    let oci = open(&format!("oci:{}:v1", layout.display()));

    for with_manifest_json in [true, false] {
        let archive = work
            .path()
            .join(format!("docker25-{with_manifest_json}.tar"));
        docker25_archive(&layout, &[("app:1", &digest)], with_manifest_json, &archive);
        let src = open(&format!("docker-archive:{}", archive.display()));
        same_image(src.image(), oci.image());
        // The OCI manifest is found, so the manifest digest is known and layers stay gzip.
        assert_eq!(
            src.image().manifest_digest(),
            Some(&digest),
            "manifest.json: {with_manifest_json}"
        );
        for layer in &src.image().layers {
            assert_eq!(layer.media_type, media_types::OCI_LAYER_GZIP);
        }
        check_all_layers(src.as_ref());
        for i in 0..src.image().layers.len() {
            drain(src.open_layer_blob(i).unwrap()).unwrap();
        }
        let named = open(&format!("docker-archive:{}:app:1", archive.display()));
        assert_eq!(named.image().manifest_digest(), Some(&digest));
        assert!(named.image().repo_tags.iter().any(|t| t.ends_with("app:1")));
    }
}

#[test]
fn several_images_in_one_archive_need_a_name() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let (one, _f1, _) = build_sample_image(&layout, "one");
    // A second, different image: another command.
    let (two, _f2, _) = {
        let (root, dirs) = support::sample_layers();
        let refs: Vec<&Path> = dirs.iter().map(|d| d.as_path()).collect();
        let extras = sideload_bundle::image::from_files::ConfigExtras {
            cmd: vec!["/bin/true".into()],
            ..Default::default()
        };
        let d =
            sideload_bundle::image::from_files::build_image(&layout, "two", &refs[..1], &extras)
                .unwrap();
        (d, root, dirs)
    };
    let archive = work.path().join("two-images.tar");
    docker25_archive(
        &layout,
        &[("app:one", &one), ("app:two", &two)],
        true,
        &archive,
    );

    let err = open_err(&format!("docker-archive:{}", archive.display()));
    assert!(matches!(err, ImageError::Ambiguous { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("app:one") && msg.contains("app:two"), "{msg}");

    let picked = open(&format!("docker-archive:{}:app:two", archive.display()));
    assert_eq!(picked.image().manifest_digest(), Some(&two));
    assert_eq!(picked.image().layers.len(), 1);
    let picked = open(&format!("docker-archive:{}:@0", archive.display()));
    assert_eq!(picked.image().manifest_digest(), Some(&one));
}

#[test]
fn written_docker_archive_is_accepted_by_skopeo_and_reads_back() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let (_, _files, _) = build_sample_image(&layout, "v1");
    let oci = open(&format!("oci:{}:v1", layout.display()));

    let archive = work.path().join("out.tar");
    write_docker_archive(oci.as_ref(), &archive, &["sideload/test:1".to_owned()]).unwrap();
    assert!(!work.path().join("out.tar.partial").exists());

    let inspect: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        &format!("docker-archive:{}", archive.display()),
    ]))
    .unwrap();
    let diff_ids: Vec<String> = oci
        .image()
        .diff_ids()
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert_eq!(inspect["Layers"], json!(diff_ids));
    assert_eq!(inspect["Architecture"], "amd64");

    let config: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--config",
        &format!("docker-archive:{}", archive.display()),
    ]))
    .unwrap();
    assert_eq!(config["rootfs"]["diff_ids"], json!(diff_ids));

    // skopeo can copy it on (what `docker load` would do with it), and we read it back.
    let copy = work.path().join("copy");
    skopeo(&[
        "copy",
        &format!("docker-archive:{}", archive.display()),
        &format!("oci:{}:c", copy.display()),
    ]);
    // (Converting to OCI, skopeo re-encodes the config: same content, other key order.)
    let copied = open(&format!("oci:{}:c", copy.display()));
    assert_eq!(copied.image().diff_ids(), oci.image().diff_ids());
    let as_value = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap();
    assert_eq!(
        as_value(&copied.image().config.bytes),
        as_value(&oci.image().config.bytes)
    );

    let back = open(&format!(
        "docker-archive:{}:sideload/test:1",
        archive.display()
    ));
    same_image(back.image(), oci.image());
    assert_eq!(back.image().repo_tags, vec!["sideload/test:1".to_owned()]);
    check_all_layers(back.as_ref());

    // And a classic archive can be written again from a classic archive.
    let again = work.path().join("again.tar");
    write_docker_archive(back.as_ref(), &again, &[]).unwrap();
    same_image(
        open(&format!("docker-archive:{}", again.display())).image(),
        oci.image(),
    );
}

#[test]
fn tampered_layer_fails_with_invalid_data_at_end_of_stream() {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    let (_, _files, _) = build_sample_image(&layout, "v1");
    let oci = open(&format!("oci:{}:v1", layout.display()));
    let archive = work.path().join("out.tar");
    write_docker_archive(oci.as_ref(), &archive, &[]).unwrap();

    // Flip one byte inside layer 0's data, keeping every size.
    let diff_id = oci.image().layers[0].diff_id.clone();
    let span = DockerArchive::open(&archive, "t")
        .unwrap()
        .index()
        .lookup(&format!("{}/layer.tar", diff_id.hex()))
        .unwrap();
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&archive)
        .unwrap();
    let at = span.offset + span.size / 2;
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x01]).unwrap();
    drop(f);

    let src = open(&format!("docker-archive:{}", archive.display()));
    let mut stream = src.open_layer(0).unwrap();
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let err = loop {
        match stream.read(&mut buf) {
            Ok(0) => panic!("tampered layer read to its end without error"),
            Ok(n) => total += n as u64,
            Err(e) => break e,
        }
    };
    // All bytes came through first: the check is at the end of the stream.
    assert_eq!(total, span.size);
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    match as_mismatch(&err) {
        Some(DigestMismatch::Digest { expected, .. }) => assert_eq!(expected, &diff_id),
        other => panic!("unexpected {other:?}: {err}"),
    }
    // The other layer is fine.
    check_all_layers_but_first(src.as_ref());

    // Copying it into a new archive fails, and leaves nothing behind.
    let out = work.path().join("copy.tar");
    let err = write_docker_archive(src.as_ref(), &out, &[]).unwrap_err();
    assert!(matches!(err, ImageError::Read { .. }), "{err}");
    assert!(!out.exists());
    assert!(!work.path().join("copy.tar.partial").exists());
}

fn check_all_layers_but_first(src: &dyn ImageSource) {
    for i in 1..src.image().layers.len() {
        drain(src.open_layer(i).unwrap()).unwrap();
    }
}
