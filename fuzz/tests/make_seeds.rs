//! Writes the seed corpora in `fuzz/seeds/TARGET/` from the test fixtures and from a tiny real
//! bundle built here (two images of a few small files). Run it when a format changes:
//!
//! ```text
//! cargo test --manifest-path fuzz/Cargo.toml --test make_seeds -- --ignored
//! ```
//!
//! Seeds named `crash-*` are regression inputs kept by hand; this never removes them.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use sideload_bundle::container::read_head;
use sideload_bundle::image::from_files::{build_image, layer_tar_from_dir, ConfigExtras};
use sideload_bundle::image::oci_layout::OciLayoutSource;
use sideload_bundle::image::spec::linux_amd64;
use sideload_bundle::image::write::write_docker_archive;
use sideload_bundle::payload::{Extent, MixRuns, PatchKind, PayloadWriter};
use sideload_bundle::{attach_signatures, build_bundle, BuildOptions, NoProgress};
use sideload_signing::PayloadCodec;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_owned()
}

fn seed(target: &str, name: &str, bytes: &[u8]) {
    let dir = root().join("seeds").join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn copy_fixtures(target: &str, dir: &str) {
    for entry in fs::read_dir(root().join("..").join(dir)).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        seed(target, &name, &fs::read(&path).unwrap());
    }
}

/// Two small layer folders: a base of text files and a script, an app with a config.
fn layer_dirs(root: &Path, version: &str) -> Vec<PathBuf> {
    let base = root.join("base");
    if !base.exists() {
        fs::create_dir_all(base.join("etc")).unwrap();
        fs::create_dir_all(base.join("bin")).unwrap();
        fs::write(base.join("etc/os-release"), b"NAME=tiny\nVERSION=1\n").unwrap();
        let text: String = (0..200)
            .map(|i| format!("line {i} of the base\n"))
            .collect();
        fs::write(base.join("etc/notes.txt"), text).unwrap();
        fs::write(base.join("bin/hello"), b"#!/bin/sh\necho hello\n").unwrap();
    }
    let app = root.join(format!("app-{version}"));
    fs::create_dir_all(app.join("opt/app")).unwrap();
    let text: String = (0..200)
        .map(|i| format!("setting_{i} = {}\n", if i == 7 { version } else { "x" }))
        .collect();
    fs::write(app.join("opt/app/app.conf"), text).unwrap();
    fs::write(app.join(format!("opt/app/VERSION-{version}")), version).unwrap();
    vec![base, app]
}

fn bundle_seeds(work: &Path) {
    let extras = ConfigExtras {
        cmd: vec!["/bin/hello".into()],
        ..ConfigExtras::default()
    };
    let v1 = work.join("v1");
    let v2 = work.join("v2");
    let d1 = layer_dirs(work, "1.0");
    let d2 = layer_dirs(work, "1.1");
    let r1: Vec<&Path> = d1.iter().map(PathBuf::as_path).collect();
    let r2: Vec<&Path> = d2.iter().map(PathBuf::as_path).collect();
    build_image(&v1, "v1", &r1, &extras).unwrap();
    build_image(&v2, "v2", &r2, &extras).unwrap();
    let platform = linux_amd64();
    let s1 = OciLayoutSource::open(&v1, Some("v1"), &platform, "v1").unwrap();
    let s2 = OciLayoutSource::open(&v2, Some("v2"), &platform, "v2").unwrap();

    // A delta bundle v1 -> v2, signed with the fuzz key.
    let mut options = BuildOptions::new(
        "edge/app".parse().unwrap(),
        vec!["v2".parse().unwrap()],
        1_700_000_000,
    );
    options.codec.codec = PayloadCodec::Zstd;
    options.codec.level = 3;
    options.codec.window_log = 20;
    let bundle = work.join("app.bundle");
    build_bundle(&s2, &[&s1], &options, &bundle, &NoProgress).unwrap();
    let limits = sideload_fuzz::limits();
    let head = read_head(&mut fs::File::open(&bundle).unwrap(), "app.bundle", &limits).unwrap();
    let signature = sideload_fuzz::key().sign_statement(&head.statement_bytes);
    attach_signatures(&bundle, &[signature], &limits).unwrap();
    let bytes = fs::read(&bundle).unwrap();
    let slot_at = head.signature_slot_offset() as usize;
    let payload_at = head.payload_offset() as usize;
    seed("bundle_head", "built.bundle", &bytes[..payload_at]);
    seed("statement", "built.json", &head.statement_bytes);
    seed("signature_slot", "built.slot", &bytes[slot_at..payload_at]);
    seed("signature_slot", "empty.slot", b"[]");
    // The same head as container version 1 (plain statement).
    let mut v1_head = bytes[..32].to_vec();
    v1_head[9] = 1;
    v1_head[12..16].copy_from_slice(&(head.statement_bytes.len() as u32).to_be_bytes());
    v1_head.extend_from_slice(&head.statement_bytes);
    v1_head.extend_from_slice(&bytes[slot_at..payload_at]);
    seed("bundle_head", "plain-statement.bundle", &v1_head);
    seed(
        "upload_headers",
        "bundle-header",
        &[&[0u8][..], &bytes[..32]].concat(),
    );

    // Layer tars, a docker archive, the layout's small files.
    let mut tar = Vec::new();
    layer_tar_from_dir(&d2[1], &mut tar).unwrap();
    seed("tar_scan", "layer.tar", &tar);
    let archive = work.join("v2.tar");
    write_docker_archive(&s2, &archive, &["edge/app:v2".into()]).unwrap();
    let archive = fs::read(&archive).unwrap();
    seed("tar_scan", "docker-archive.tar", &archive);
    seed("docker_archive", "v2.tar", &archive);
    let index = fs::read(v2.join("index.json")).unwrap();
    let mut layout = fs::read(v2.join("oci-layout")).unwrap();
    layout.push(0);
    layout.extend_from_slice(&index);
    let index_json: serde_json::Value = serde_json::from_slice(&index).unwrap();
    let manifest_digest = index_json["manifests"][0]["digest"].as_str().unwrap();
    let blob = |d: &str| fs::read(v2.join("blobs/sha256").join(&d["sha256:".len()..])).unwrap();
    let manifest = blob(manifest_digest);
    let manifest_json: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let config = blob(manifest_json["config"]["digest"].as_str().unwrap());
    for part in [&manifest, &config] {
        layout.push(0);
        layout.extend_from_slice(part);
    }
    seed("oci_layout", "v2-layout", &layout);
    seed("oci_layout", "config.json", &config);

    // A gzip recipe of a real layer blob (zlib-compressed, as build_image writes them).
    let layer_digest = manifest_json["layers"][1]["digest"].as_str().unwrap();
    let analysis = sideload_bundle::gzip_recipe::analyse(&blob(layer_digest)[..]).unwrap();
    seed(
        "gzip_recipe",
        "zlib-layer.recipe",
        &analysis.recipe.to_bytes(),
    );
}

fn patch_seeds() {
    let old: Vec<u8> = (0..2000u32).flat_map(|i| (i * 7).to_le_bytes()).collect();
    let mut new = old.clone();
    new[100..120].copy_from_slice(&[9; 20]);
    new.extend_from_slice(b"appended tail");
    let mut raw = Vec::new();
    bsdiff::diff(&old[..4000], &new[..4100], &mut raw).unwrap();
    let split = sideload_bundle::bspatch::split(&raw).unwrap();
    let frame = |flags: u8, base: &[u8], patch: &[u8]| {
        let mut v = vec![flags];
        v.extend_from_slice(&(base.len() as u16).to_le_bytes());
        v.extend_from_slice(base);
        v.extend_from_slice(patch);
        v
    };
    seed("patch_bsdiff", "plain", &frame(0, &old[..4000], &split));
    let x86 = sideload_bundle::bspatch::to_x86(&old[..4000], &split).unwrap();
    seed("patch_bsdiff", "x86", &frame(1, &old[..4000], &x86));
    let mut enc =
        zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), 3, &old[..4000]).unwrap();
    enc.include_contentsize(true).unwrap();
    enc.write_all(&new[..4100]).unwrap();
    seed(
        "patch_zstd",
        "prefix",
        &frame(0, &old[..4000], &enc.finish().unwrap()),
    );
}

fn payload_seeds() {
    let mut w = PayloadWriter::new(Vec::new()).unwrap();
    w.config(br#"{"architecture":"amd64","os":"linux"}"#)
        .unwrap();
    w.extents(&[Extent {
        requires_index: 0,
        offset: 512,
        len: 4096,
    }])
    .unwrap();
    w.frame(&[(0, 100), (200, 50)]).unwrap();
    w.present(0).unwrap();
    w.begin_layer(1).unwrap();
    w.literal(b"literal bytes").unwrap();
    w.literal_x86(5, &mut &[0xe8, 1, 2, 3, 4][..]).unwrap();
    w.copy(0, 100).unwrap();
    w.copy(50, 10).unwrap();
    w.mix(10, &[0, 0, 1, 0, 2]).unwrap();
    let mut runs = MixRuns::default();
    runs.same(10);
    runs.diff(&[1, 0, 3]);
    runs.same(4);
    w.mix_runs(20, runs).unwrap();
    w.patch(PatchKind::Zstd, 0, 100, 20, b"zstd patch bytes")
        .unwrap();
    w.patch(PatchKind::Bsdiff, 0, 100, 20, b"bsdiff bytes")
        .unwrap();
    w.end_layer().unwrap();
    w.recipe(1, b"\x01recipe").unwrap();
    w.blob(2, 4, &mut &b"blob"[..]).unwrap();
    seed("payload_records", "all-records", &w.finish().unwrap());
}

fn text_seeds() {
    copy_fixtures("iotedge_manifest", "fleet/tests/data/deployments");
    copy_fixtures("kubernetes_manifest", "fleet/tests/data/kubernetes");
    let mut plugin = vec![0u8];
    plugin.extend(fs::read(root().join("../systemd/registry-plugin.toml.example")).unwrap());
    seed("config_files", "registry-plugin.toml", &plugin);
    let mut usb = vec![1u8];
    usb.extend(fs::read(root().join("../systemd/usb-loader.toml.example")).unwrap());
    seed("config_files", "usb-loader.toml", &usb);
    let key = sideload_signing::key_entry_toml(
        &sideload_fuzz::key().public_key(),
        &["edge/*".parse().unwrap(), "tools/agent".parse().unwrap()],
        Some("release key \"2026\""),
    );
    seed(
        "trust_policy",
        "one-key.toml",
        format!("threshold = 1\n{key}").as_bytes(),
    );
    seed("upload_headers", "bearer", b"\x00Bearer fuzz-upload-token");
    seed("upload_headers", "wrong", b"\x02bearer   other-token  ");
    seed("upload_headers", "offset", b"\x01184467440737095516150");
    seed(
        "stick_scan",
        "mixed",
        b"f a.bundle 100\nf UPPER.BUNDLE 3\nf big.bundle 250\nd dir.bundle\nl link.bundle a.bundle\nf .hidden.bundle 1\nf notes.txt 4\nf b b.bundle 9\n",
    );
}

#[test]
#[ignore = "writes fuzz/seeds; run by hand when a format changes"]
fn make_seeds() {
    let work = tempfile::tempdir().unwrap();
    bundle_seeds(work.path());
    patch_seeds();
    payload_seeds();
    text_seeds();
}
