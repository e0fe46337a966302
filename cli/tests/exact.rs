//! Exact upstream digests end to end: images whose layers were gzip-compressed by GNU gzip
//! (levels 1, 6, 9), pigz, Go's compress/gzip (levels 1, 6, 9) and zlib (Python's gzip, levels
//! 6 and 9), read from OCI layouts and from a registry, and images whose layers skopeo
//! (compressing while it pushes: klauspost's pgzip, which has a recipe of its own) and umoci
//! compressed with a parallel gzip, are built into bundles with `sideload build`, pushed to a real registry
//! plugin with `sideload push --wait`, and pulled back *by the source's manifest digest* with
//! skopeo through the plugin. Plus the failures: a device without the base blob a
//! bundle counts on, and a signed statement naming a blob the device cannot reproduce.

use sideload_test_support::registry as support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sideload_bundle::image::{open_image, OpenOptions};
use sideload_bundle::Limits;
use sideload_signing::{Digest, Statement};
use support::{fixture, require_tool, skopeo, stdout_json, Daemon, DaemonOptions, Registry};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Python's gzip module (zlib at the level given as the argument, mtime 0), stdin to stdout.
const PYTHON_GZIP: &str = "import gzip, shutil, sys\n\
    with gzip.GzipFile('', 'wb', fileobj=sys.stdout.buffer, compresslevel=int(sys.argv[1]), mtime=0) as out:\n\
    \x20   shutil.copyfileobj(sys.stdin.buffer, out)";

fn sideload(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sideload"))
        .args(args)
        .output()
        .expect("sideload runs")
}

fn sha256_hex(bytes: &[u8]) -> String {
    Digest::of_bytes(bytes).hex().to_owned()
}

/// The demo image `layout:tag` as its config bytes and uncompressed layer tars.
fn image_parts(layout: &Path, tag: &str, out: &Path) -> (Vec<u8>, Vec<PathBuf>) {
    let loc = format!("oci:{}:{tag}", layout.display()).parse().unwrap();
    let source = open_image(&loc, &OpenOptions::default()).unwrap();
    let mut tars = Vec::new();
    for i in 0..source.image().layers.len() {
        let path = out.join(format!("{tag}-layer{i}.tar"));
        let mut file = std::fs::File::create(&path).unwrap();
        std::io::copy(&mut source.open_layer(i).unwrap(), &mut file).unwrap();
        tars.push(path);
    }
    (source.image().config.bytes.clone(), tars)
}

fn put_blob(layout: &Path, bytes: &[u8]) -> (String, u64) {
    let hex = sha256_hex(bytes);
    std::fs::write(layout.join("blobs/sha256").join(&hex), bytes).unwrap();
    (format!("sha256:{hex}"), bytes.len() as u64)
}

/// Writes an OCI layout holding one image whose layers are `tars` compressed by `compressor`
/// (a command reading stdin, writing stdout; `None` = uncompressed). Returns the manifest
/// digest.
fn layout_with(
    layout: &Path,
    tag: &str,
    config: &[u8],
    tars: &[PathBuf],
    compressor: Option<&[&str]>,
) -> String {
    std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let mut layers = Vec::new();
    for tar in tars {
        let bytes = match compressor {
            None => std::fs::read(tar).unwrap(),
            Some(cmd) => {
                let out = Command::new(cmd[0])
                    .args(&cmd[1..])
                    .stdin(std::fs::File::open(tar).unwrap())
                    .stderr(Stdio::inherit())
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{cmd:?} failed");
                out.stdout
            }
        };
        let (digest, size) = put_blob(layout, &bytes);
        let media_type = if compressor.is_some() {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar"
        };
        layers.push(serde_json::json!({"mediaType": media_type, "digest": digest, "size": size}));
    }
    let (config_digest, config_size) = put_blob(layout, config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": layers,
    }))
    .unwrap();
    let (digest, size) = put_blob(layout, &manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": OCI_MANIFEST,
            "digest": digest,
            "size": size,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(layout.join("index.json"), index.to_string()).unwrap();
    digest
}

/// Builds a bundle with `sideload build --json` (tag from the source's ref), signs it with
/// the fixture's trusted key.
fn build_signed(source: &str, out: &Path, repo: &str, extra: &[&str]) -> serde_json::Value {
    let tag = source.rsplit(':').next().unwrap();
    let mut args = vec![
        "build",
        source,
        "-o",
        out.to_str().unwrap(),
        "--repository",
        repo,
        "--tag",
        tag,
        "--json",
        // Faster to encode than the default LZMA2; what is tested here does not depend on it.
        "--codec",
        "zstd",
    ];
    args.extend_from_slice(extra);
    let built = sideload(&args);
    assert!(
        built.status.success(),
        "build {source}: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let report = stdout_json(&built);
    let (head, _) = sideload_bundle::open_bundle(out, &Limits::default()).unwrap();
    sideload_bundle::attach_signatures(
        out,
        &[fixture().key.sign_statement(&head.statement_bytes)],
        &Limits::default(),
    )
    .unwrap();
    report
}

/// Pushes and waits; returns the push report of the one bundle.
fn push(daemon: &Daemon, bundle: &Path) -> serde_json::Value {
    let out = sideload(&[
        "push",
        bundle.to_str().unwrap(),
        "--to",
        &format!("http://{}", daemon.addr),
        "--wait",
        "--json",
    ]);
    let report = stdout_json(&out);
    report["bundles"][0].clone()
}

/// Pushes `bundle` and waits; it must apply, and the plugin must then serve `repo@upstream`
/// by that digest (pulled into `into`, every blob checked). `name` labels the failures.
fn push_and_pull_exact(
    daemon: &Daemon,
    bundle: &Path,
    repo: &str,
    upstream: &str,
    into: &Path,
    name: &str,
) {
    let pushed = push(daemon, bundle);
    assert_eq!(
        pushed["state"],
        "applied",
        "{name}: {pushed}\n{}",
        daemon.log()
    );
    let served = pull_by_digest(daemon, repo, upstream, into);
    assert_eq!(served, upstream, "{name}");
}

/// Pulls `repo@digest` through the plugin by digest (every blob checked by skopeo) and
/// returns the digest of the manifest it served.
fn pull_by_digest(daemon: &Daemon, repo: &str, digest: &str, into: &Path) -> String {
    let reference = format!("docker://{}/{repo}@{digest}", daemon.addr);
    skopeo(&[
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &reference,
        &format!("oci:{}:pulled", into.display()),
    ]);
    let raw = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", &reference])
        .output()
        .unwrap();
    assert!(raw.status.success());
    format!("sha256:{}", sha256_hex(&raw.stdout))
}

fn inventory_image(daemon: &Daemon, repo: &str) -> serde_json::Value {
    let inventory = daemon.get_json("/sideload/v1/inventory");
    inventory["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["repository"] == repo)
        .unwrap_or_else(|| panic!("{repo} not in the inventory: {inventory}"))
        .clone()
}

#[test]
fn every_compressor_gives_the_devices_registry_the_upstream_manifest_digest() {
    for (tool, package) in [
        ("gzip", "gzip"),
        ("pigz", "pigz"),
        ("umoci", "umoci"),
        ("go", "golang-go"),
    ] {
        require_tool(tool, package);
    }
    let f = fixture();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (config, tars) = image_parts(&f.v1, "v1", w);
    let cloud = Registry::start();
    let device_registry = Registry::start();
    let daemon = Daemon::start(&device_registry, DaemonOptions::default());

    let go_gzip = go_gzip(w);
    let go_gzip = go_gzip.to_str().unwrap();
    let mut sources: Vec<(String, String, String)> = Vec::new();
    for (name, cmd) in [
        ("gzip-1", &["gzip", "-1", "-n"][..]),
        ("gzip-6", &["gzip", "-6", "-n"][..]),
        ("gzip-9", &["gzip", "-9"][..]),
        ("pigz", &["pigz", "-c"][..]),
        // Go's compress/gzip, as Docker, BuildKit and containerd write layers: the default
        // writer (level 6) and levels 1 and 9. The recipe is the level.
        ("go-1", &[go_gzip, "1"][..]),
        ("go-6", &[go_gzip][..]),
        ("go-9", &[go_gzip, "9"][..]),
        // The same writers flushed (Go's Flush) after every 32 KiB written, as a program
        // streaming a layer out does: the recipe adds the flush points.
        ("go-1-flushed", &[go_gzip, "1", "flush"][..]),
        ("go-6-flushed", &[go_gzip, "6", "flush"][..]),
        ("go-9-flushed", &[go_gzip, "9", "flush"][..]),
        // zlib itself, as Python's gzip module (the benchmark corpus) and Java's
        // GZIPOutputStream write: the recipe is the level.
        ("zlib-6", &["python3", "-c", PYTHON_GZIP, "6"][..]),
        ("zlib-9", &["python3", "-c", PYTHON_GZIP, "9"][..]),
    ] {
        let layout = w.join(name);
        let digest = layout_with(&layout, "v1", &config, &tars, Some(cmd));
        sources.push((name.into(), format!("oci:{}:v1", layout.display()), digest));
    }
    // A registry holding those blobs: skopeo copies gzip layers as they are.
    skopeo(&[
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", w.join("gzip-6").display()),
        &format!("docker://{}/cloud/app:v1", cloud.host),
    ]);
    let registry_source = format!("docker://{}/cloud/app:v1", cloud.host);
    sources.push((
        "registry".into(),
        registry_source.clone(),
        manifest_digest_of(&registry_source),
    ));

    for (name, source, upstream) in &sources {
        let bundle = w.join(format!("{name}.bundle"));
        let repo = format!("exact/{name}");
        let mut extra = vec![];
        if name == "registry" {
            extra.extend(["--insecure-registry", cloud.host.as_str()]);
        }
        let report = build_signed(source, &bundle, &repo, &extra);
        assert_eq!(report["exact"], true, "{name}: {report}");
        assert_eq!(report["manifest_digest"], upstream.as_str(), "{name}");
        // Recipes are at most a few hundredths of a blob.
        let recipe = report["recipe_bytes"].as_u64().unwrap();
        let blobs = report["source_image_size"].as_u64().unwrap();
        assert!(
            recipe > 0 && recipe * 100 < blobs,
            "{name}: {recipe} recipe bytes for {blobs} bytes of layer blobs"
        );
        // Every recipe is a compact one (kind 7) that leaves out its plain length, and every
        // blob digest is left to the device: format version 9. Older devices refuse such a
        // bundle from its head.
        let (head, _) = sideload_bundle::open_bundle(&bundle, &Limits::default()).unwrap();
        let version = Statement::from_canonical_json(&head.statement_bytes)
            .unwrap()
            .format_version;
        assert_eq!(version, 9, "{name}");
        for (i, layer) in report["layers"].as_array().unwrap().iter().enumerate() {
            assert_eq!(layer["storage"], "recipe", "{name}: {layer}");
            let kind = layer["recipe"].as_str().unwrap();
            let plain_len = std::fs::metadata(&tars[i]).unwrap().len();
            if let Some(level) = name
                .strip_prefix("go-")
                .and_then(|n| n.strip_suffix("-flushed"))
            {
                // One flush point per 32 KiB piece, each the varint of its distance (3 B).
                let flushes = plain_len.div_ceil(32 << 10);
                assert_eq!(
                    kind,
                    format!("Go compress/gzip level {level}, flushed {flushes} times (go1.19.8)"),
                    "{name}: {layer}"
                );
                // Kind, frame, code, level, count, the points (at most 3 B each 32 KiB apart);
                // the plain length is the layer's size, Go's own header, the trailer computed.
                let recipe_bytes = layer["recipe_bytes"].as_u64().unwrap();
                assert!(
                    recipe_bytes <= 4 + varint_len(flushes) + 3 * flushes,
                    "{name}: {layer}"
                );
            } else if let Some(level) = name.strip_prefix("go-") {
                assert_eq!(
                    kind,
                    format!("Go compress/gzip level {level} (go1.19.8)"),
                    "{name}: {layer}"
                );
                // A tiny recipe: the kind and one code for go1.19.8 at this level, never
                // flushed, Go's own header, the trailer computed, the plain length the
                // layer's size.
                assert_eq!(layer["recipe_bytes"], 2, "{name}: {layer}");
            } else if let Some(level) = name.strip_prefix("zlib-") {
                assert_eq!(kind, format!("zlib level {level}"), "{name}: {layer}");
                // A tiny recipe: the kind and the level (ended by Z_FINISH behind Python's
                // header, mtime 0, OS 255; the trailer computed, the plain length the
                // layer's size).
                assert_eq!(layer["recipe_bytes"], 2, "{name}: {layer}");
            } else {
                assert!(kind.starts_with("preflate"), "{name}: {layer}");
            }
        }
        let into = w.join(format!("{name}-pulled"));
        push_and_pull_exact(&daemon, &bundle, &repo, upstream, &into, name);
        let held = inventory_image(&daemon, &repo);
        assert_eq!(held["manifest_digest"], upstream.as_str(), "{name}");
    }

    // skopeo (compressing while it pushes) and umoci compress with klauspost's parallel gzip
    // (pgzip). skopeo's default writer has a recipe of its own; a pgzip stream no level recipe
    // models gets preflate's.
    let plain = w.join("plain");
    layout_with(&plain, "v1", &config, &tars, None);
    skopeo(&[
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        "--dest-compress",
        "--dest-compress-format=gzip",
        &format!("oci:{}:v1", plain.display()),
        &format!("docker://{}/cloud/pgzip:v1", cloud.host),
    ]);
    // pgzip at level 9 (containers/image with a configured level): a matcher no level recipe
    // models yet, written by the real pgzip built from Debian's Go sources.
    let pgzip = go_pgzip(w);
    let pgzip9 = w.join("pgzip-9");
    layout_with(
        &pgzip9,
        "v1",
        &config,
        &tars,
        Some(&[pgzip.to_str().unwrap(), "-level", "9"]),
    );
    let umoci = w.join("umoci");
    let run = |args: &[&str]| {
        let out = Command::new("umoci").args(args).output().unwrap();
        assert!(out.status.success(), "umoci {args:?}: {out:?}");
    };
    let image = format!("{}:v1", umoci.display());
    run(&["init", "--layout", umoci.to_str().unwrap()]);
    run(&["new", "--image", &image]);
    for tar in &tars {
        run(&["raw", "add-layer", "--image", &image, tar.to_str().unwrap()]);
    }
    for (name, source, blocks) in [
        (
            "skopeo",
            format!("docker://{}/cloud/pgzip:v1", cloud.host),
            Some(1024),
        ),
        ("umoci", format!("oci:{image}"), Some(256)),
        ("pgzip-9", format!("oci:{}:v1", pgzip9.display()), None),
    ] {
        let upstream = manifest_digest_of(&source);
        let repo = format!("exact/{name}");
        let extra = ["--insecure-registry", cloud.host.as_str()];
        let loose = build_signed(
            &source,
            &w.join(format!("{name}-loose.bundle")),
            &repo,
            &extra,
        );
        eprintln!(
            "{name}: exact {}, layers {}",
            loose["exact"], loose["layers"]
        );
        if let Some(blocks) = blocks {
            // pgzip 1.2.5 at its default level (skopeo: 1 MiB blocks, umoci: 256 KiB): the
            // recipe is kind, frame, code, level, block size (and the header, unless it is
            // pgzip's own; the plain length is the layer's size), or a tiny recipe (kind and
            // one code) for skopeo's 1 MiB blocks.
            assert_eq!(loose["exact"], true, "{name}: {loose}");
            for layer in loose["layers"].as_array().unwrap() {
                assert_eq!(layer["storage"], "recipe", "{name}: {layer}");
                let kind = layer["recipe"].as_str().unwrap();
                assert!(
                    kind.starts_with(&format!("pgzip level -1, {blocks} KiB blocks")),
                    "{name}: {kind}"
                );
                assert!(layer["recipe_bytes"].as_u64().unwrap() <= 20, "{layer}");
            }
            let (head, _) = sideload_bundle::open_bundle(
                &w.join(format!("{name}-loose.bundle")),
                &Limits::default(),
            )
            .unwrap();
            let version = Statement::from_canonical_json(&head.statement_bytes)
                .unwrap()
                .format_version;
            assert_eq!(
                version, 9,
                "a compact recipe without its plain length, derived blob digests: version 9"
            );
            let bundle = w.join(format!("{name}-loose.bundle"));
            let into = w.join(format!("{name}-pulled"));
            push_and_pull_exact(&daemon, &bundle, &repo, &upstream, &into, name);
            continue;
        }
        // No level recipe models pgzip -9, and preflate does, but for blocks it refuses (the
        // single one-bit distance code klauspost writes), which go re-encoded beside its
        // corrections (recipe kind 6): 80 and 102 KB for these 7.0 and 7.8 MB tars,
        // under the default 5 % cap of their blobs, so the bundle is exact.
        assert_eq!(loose["exact"], true, "{name}: {loose}");
        for layer in loose["layers"].as_array().unwrap() {
            assert_eq!(layer["storage"], "recipe", "{name}: {layer}");
            let kind = layer["recipe"].as_str().unwrap();
            assert!(kind.starts_with("preflate corrections"), "{name}: {kind}");
        }
        let bundle = w.join(format!("{name}-loose.bundle"));
        let into = w.join(format!("{name}-pulled"));
        push_and_pull_exact(&daemon, &bundle, &repo, &upstream, &into, name);
        // With recipes capped at 1 % of a blob that is too much: not exact by default (the
        // report says why), and `--exact required` sends those blobs whole (to a repository
        // of their own: the device already holds this image in `repo`).
        let repo = format!("{repo}-whole");
        let capped = [extra[0], extra[1], "--exact-max-recipe", "1"];
        let loose = build_signed(
            &source,
            &w.join(format!("{name}-capped.bundle")),
            &repo,
            &capped,
        );
        assert_eq!(loose["exact"], false, "{name}: {loose}");
        let why = loose["not_exact_reason"].as_str().unwrap();
        assert!(why.contains("--exact required"), "{name}: {why}");
        let bundle = w.join(format!("{name}.bundle"));
        let mut args = capped.to_vec();
        args.extend(["--exact", "required"]);
        let report = build_signed(&source, &bundle, &repo, &args);
        assert_eq!(report["exact"], true, "{name}: {report}");
        for layer in report["layers"].as_array().unwrap() {
            assert_eq!(layer["storage"], "blob", "{name}: {layer}");
            assert_eq!(layer["encoding"], "source_blob", "{name}: {layer}");
        }
        let into = w.join(format!("{name}-whole"));
        push_and_pull_exact(&daemon, &bundle, &repo, &upstream, &into, name);
    }
}

/// A gzip filter built with Go's standard library (`compress/gzip`): what containerd and
/// Docker write. With no argument `gzip.NewWriter` (the default level, 6), else
/// `gzip.NewWriterLevel` at the level given. Compiled for the test, offline (no modules).
/// Bytes of `value` as a LEB128 varint (how compact recipes write numbers).
fn varint_len(value: u64) -> u64 {
    u64::from((64 - value.leading_zeros()).max(1).div_ceil(7))
}

fn go_gzip(dir: &Path) -> PathBuf {
    let src = dir.join("gogz.go");
    std::fs::write(
        &src,
        "package main\nimport (\"compress/gzip\"; \"io\"; \"os\"; \"strconv\")\n\
         func main() {\n\
         \tw := gzip.NewWriter(os.Stdout)\n\
         \tif len(os.Args) > 1 {\n\
         \t\tlevel, err := strconv.Atoi(os.Args[1])\n\
         \t\tif err != nil { panic(err) }\n\
         \t\tif w, err = gzip.NewWriterLevel(os.Stdout, level); err != nil { panic(err) }\n\
         \t}\n\
         \tif len(os.Args) > 2 && os.Args[2] == \"flush\" {\n\
         \t\tbuf := make([]byte, 32<<10)\n\
         \t\tfor {\n\
         \t\t\tn, err := io.ReadFull(os.Stdin, buf)\n\
         \t\t\tif n > 0 {\n\
         \t\t\t\tif _, err := w.Write(buf[:n]); err != nil { panic(err) }\n\
         \t\t\t\tif err := w.Flush(); err != nil { panic(err) }\n\
         \t\t\t}\n\
         \t\t\tif err == io.EOF || err == io.ErrUnexpectedEOF { break }\n\
         \t\t\tif err != nil { panic(err) }\n\
         \t\t}\n\
         \t} else if _, err := io.Copy(w, os.Stdin); err != nil { panic(err) }\n\
         \tif err := w.Close(); err != nil { panic(err) }\n\
         }\n",
    )
    .unwrap();
    let bin = dir.join("gogz");
    let out = Command::new("go")
        .args(["build", "-o", bin.to_str().unwrap(), src.to_str().unwrap()])
        .env("GO111MODULE", "off")
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .output()
        .unwrap();
    assert!(out.status.success(), "go build: {out:?}");
    bin
}

/// klauspost's pgzip as Debian packages it (golang-github-klauspost-pgzip-dev), built offline
/// in GOPATH mode from `bundle/tests/goflate/pgzip/gopgzip.go`.
fn go_pgzip(dir: &Path) -> PathBuf {
    let bin = dir.join("gopgzip");
    let src =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../bundle/tests/goflate/pgzip/gopgzip.go");
    let out = Command::new("go")
        .args(["build", "-o", bin.to_str().unwrap(), src.to_str().unwrap()])
        .env("GO111MODULE", "off")
        .env("GOPATH", "/usr/share/gocode")
        .env("GOFLAGS", "")
        .env("GOPROXY", "off")
        .env("GOCACHE", dir.join("gocache"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "go build gopgzip (needs golang-github-klauspost-pgzip-dev): {out:?}"
    );
    bin
}

/// The digest of the manifest a source serves.
fn manifest_digest_of(source: &str) -> String {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false", source])
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo inspect {source}: {out:?}");
    format!("sha256:{}", sha256_hex(&out.stdout))
}

#[test]
fn a_delta_reuses_the_exact_base_blobs_and_a_device_without_them_fails_clearly() {
    require_tool("gzip", "gzip");
    let f = fixture();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (config1, tars1) = image_parts(&f.v1, "v1", w);
    let (config2, tars2) = image_parts(&f.v2, "v2", w);
    let gzip = &["gzip", "-6", "-n"][..];
    let v1 = w.join("v1");
    let v2 = w.join("v2");
    layout_with(&v1, "v1", &config1, &tars1, Some(gzip));
    let upstream = layout_with(&v2, "v2", &config2, &tars2, Some(gzip));
    let v1_ref = format!("oci:{}:v1", v1.display());
    let v2_ref = format!("oci:{}:v2", v2.display());

    // Device A got v1 exactly: the v2 delta costs no recipe for the shared base layer. It also
    // holds the same content as another image, compressed again by skopeo: two blobs of one
    // layer, of which the device must pick the source's (the statement leaves it to it).
    let plain = w.join("v1-plain");
    layout_with(&plain, "v1", &config1, &tars1, None);
    let registry_a = Registry::start();
    skopeo(&[
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", plain.display()),
        &format!("docker://{}/edge/other:v1", registry_a.host),
    ]);
    skopeo(&[
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &v1_ref,
        &format!("docker://{}/edge/app:v1", registry_a.host),
    ]);
    let a = Daemon::start(&registry_a, DaemonOptions::default());
    let delta = w.join("delta.bundle");
    let report = build_signed(&v2_ref, &delta, "edge/app", &["--base", &v1_ref]);
    assert_eq!(report["exact"], true, "{report}");
    assert_eq!(report["layers"][0]["storage"], "held", "{report}");
    assert_eq!(report["layers"][0]["recipe_bytes"], 0);
    assert_eq!(report["layers"][1]["storage"], "recipe", "{report}");
    let pushed = push(&a, &delta);
    assert_eq!(pushed["state"], "applied", "{pushed}\n{}", a.log());
    assert_eq!(
        pull_by_digest(&a, "edge/app", &upstream, &w.join("a-pulled")),
        upstream
    );

    // Device B holds v1's content but only as skopeo compressed it: the same bundle fails
    // with the reason and the fix, and B keeps what it had.
    let registry_b = Registry::start();
    skopeo(&[
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", plain.display()),
        &format!("docker://{}/edge/app:v1", registry_b.host),
    ]);
    let b = Daemon::start(&registry_b, DaemonOptions::default());
    let failed = push(&b, &delta);
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(
        failed["reason"].as_str().unwrap().contains(
            "the one blob of that layer this device holds does not make the signed manifest"
        ),
        "{failed}"
    );
    assert!(
        failed["advice"].as_str().unwrap().contains("inventory"),
        "{failed}"
    );
    let tags = skopeo(&[
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{}/edge/app", registry_b.host),
    ]);
    assert!(
        tags.contains("\"v1\"") && !tags.contains("\"v2\""),
        "{tags}"
    );

    // Built against B's inventory (which lists the blobs B really holds), or against v1 with
    // --resend-base-blobs, the bundle carries the base layer's recipe too, and applies exactly.
    let inventory = w.join("b-inventory.json");
    std::fs::write(&inventory, b.get_json("/sideload/v1/inventory").to_string()).unwrap();
    let report = build_signed(
        &v2_ref,
        &w.join("inventory.bundle"),
        "edge/app",
        &["--inventory", inventory.to_str().unwrap()],
    );
    assert_eq!(report["layers"][0]["encoding"], "present", "{report}");
    assert_eq!(report["layers"][0]["storage"], "recipe", "{report}");
    let resend = w.join("resend.bundle");
    let report = build_signed(
        &v2_ref,
        &resend,
        "edge/app",
        &["--base", &v1_ref, "--resend-base-blobs"],
    );
    assert_eq!(report["layers"][0]["encoding"], "present", "{report}");
    assert_eq!(report["layers"][0]["storage"], "recipe", "{report}");
    let pushed = push(&b, &resend);
    assert_eq!(pushed["state"], "applied", "{pushed}\n{}", b.log());
    assert_eq!(
        pull_by_digest(&b, "edge/app", &upstream, &w.join("b-pulled")),
        upstream
    );
}

#[test]
fn a_signed_statement_whose_manifest_the_device_cannot_reproduce_fails_before_any_output() {
    require_tool("gzip", "gzip");
    let f = fixture();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (config, tars) = image_parts(&f.v1, "v1", w);
    let layout = w.join("v1");
    layout_with(
        &layout,
        "v1",
        &config,
        &tars,
        Some(&["gzip", "-6", "-n"][..]),
    );
    let bundle = w.join("v1.bundle");
    build_signed(
        &format!("oci:{}:v1", layout.display()),
        &bundle,
        "edge/app",
        &[],
    );

    // The release engineer signs a statement whose manifest names another blob for layer 1,
    // over the genuine payload: the statement leaves the blob's digest to the device (format
    // 9), so what is signed is another manifest digest.
    let (head, _) = sideload_bundle::open_bundle(&bundle, &Limits::default()).unwrap();
    let mut statement = Statement::from_canonical_json(&head.statement_bytes).unwrap();
    assert!(
        statement.target.layers[1].storage.is_derived(),
        "layer 1's blob digest is left to the device: {:?}",
        statement.target.layers[1]
    );
    statement.target.manifest_digest = Digest::of_bytes(b"a manifest naming another blob");
    let forged = w.join("forged.bundle");
    {
        let bytes = statement.to_canonical_json();
        let mut original = std::fs::File::open(&bundle).unwrap();
        std::io::Seek::seek(
            &mut original,
            std::io::SeekFrom::Start(head.payload_offset()),
        )
        .unwrap();
        let mut out = std::fs::File::create(&forged).unwrap();
        sideload_bundle::container::write_bundle(
            &mut out,
            &bytes,
            &[f.key.sign_statement(&bytes)],
            head.signature_slot,
            &mut original,
        )
        .unwrap();
    }
    let policy = w.join("trust.toml");
    std::fs::write(&policy, &f.policy_toml).unwrap();
    std::fs::create_dir_all(w.join("device")).unwrap();
    let output = w.join("out");
    let applied = sideload(&[
        "apply",
        forged.to_str().unwrap(),
        "--policy",
        policy.to_str().unwrap(),
        "--base-dir",
        w.join("device").to_str().unwrap(),
        "--output",
        &format!("oci:{}", output.display()),
        "--json",
    ]);
    assert_eq!(applied.status.code(), Some(3), "{applied:?}");
    let report = stdout_json(&applied);
    assert_eq!(report["code"], "exact_blob_mismatch", "{report}");
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains("the statement signs sha256:"),
        "{report}"
    );
    assert!(!output.exists(), "nothing is written for a refused bundle");
}
