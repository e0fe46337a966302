//! `goflate::pgzip` against the real thing: Debian bookworm's `klauspost/pgzip` 1.2.5 over
//! `klauspost/compress` 1.15.12, run through `tests/goflate/pgzip/gopgzip.go`, must write the
//! same bytes as the port (streaming, and with its blocks on threads) for every input, level,
//! block size and chunking tried here; and when `skopeo` is installed, a layer that skopeo
//! itself compressed must come out byte for byte.
//!
//! pgzip's output is klauspost's code, not Go's standard library, so the Go release that compiles
//! it should not matter; the test builds the program with every supported toolchain
//! (`gotoolchains`: Go 1.19, 1.21, 1.22, 1.23) and proves that too.
//!
//! Needs those toolchains (`scripts/install-deps.sh`) and the Go sources of
//! `golang-github-klauspost-pgzip-dev` and `golang-github-klauspost-compress-dev` under
//! `/usr/share/gocode` (the program is built in GOPATH mode, offline). A machine without them
//! fails these tests, naming the package, instead of skipping them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sideload_bundle::goflate::pgzip::{
    PgzipBlocks, PgzipLevel, PgzipWriter, PGZIP_DEFAULT_BLOCK_SIZE,
};

mod gotoolchains;

const GOCODE: &str = "/usr/share/gocode";

/// A reference program: gopgzip.go built by one toolchain.
struct Gopgzip {
    version: String,
    bin: PathBuf,
}

/// The reference program, built once per test run with every toolchain (`gotoolchains`): the
/// port must equal what pgzip writes whichever Go compiled it.
fn gopgzips() -> &'static [Gopgzip] {
    static BINS: OnceLock<(tempfile::TempDir, Vec<Gopgzip>)> = OnceLock::new();
    &BINS
        .get_or_init(|| {
            for (dir, package) in [
                (
                    "src/github.com/klauspost/pgzip",
                    "golang-github-klauspost-pgzip-dev",
                ),
                (
                    "src/github.com/klauspost/compress/flate",
                    "golang-github-klauspost-compress-dev",
                ),
            ] {
                assert!(
                    Path::new(GOCODE).join(dir).is_dir(),
                    "{GOCODE}/{dir} is missing: install the Debian package {package}"
                );
            }
            let dir = tempfile::tempdir().unwrap();
            let src =
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/goflate/pgzip/gopgzip.go");
            let bins = gotoolchains::build_all(&src, dir.path(), |cmd| {
                cmd.current_dir(dir.path())
                    .env("GO111MODULE", "off")
                    .env("GOPATH", GOCODE);
            })
            .into_iter()
            .map(|(tc, bin)| Gopgzip {
                version: tc.version,
                bin,
            })
            .collect();
            (dir, bins)
        })
        .1
}

/// What the real pgzip, built by `gopgzip`'s toolchain, writes for `data`.
fn go_output(gopgzip: &Gopgzip, data: &[u8], level: i32, block: usize, chunk: usize) -> Vec<u8> {
    let mut cmd = Command::new(&gopgzip.bin);
    if level == -1 {
        cmd.arg("-default");
    } else {
        cmd.arg("-level").arg(level.to_string());
    }
    if block != 0 {
        cmd.arg("-block").arg(block.to_string());
    }
    cmd.arg("-chunk").arg(chunk.to_string());
    gotoolchains::filter_output(cmd, data, &format!("gopgzip ({})", gopgzip.version))
}

fn port_output(data: &[u8], level: i32, block: usize, chunk: usize) -> Vec<u8> {
    let level = PgzipLevel::new(level).unwrap();
    let mut w = if block == 0 {
        PgzipWriter::new(Vec::new(), level)
    } else {
        PgzipWriter::with_block_size(Vec::new(), level, block).unwrap()
    };
    if chunk == 0 {
        w.write_all(data).unwrap();
    } else {
        for c in data.chunks(chunk) {
            w.write_all(c).unwrap();
        }
    }
    w.finish().unwrap()
}

/// The port with its blocks compressed on three threads (how a device recreates a blob).
fn parallel_output(data: &[u8], level: i32, block: usize) -> Vec<u8> {
    let block = if block == 0 {
        PGZIP_DEFAULT_BLOCK_SIZE
    } else {
        block
    };
    let blocks = PgzipBlocks::new(PgzipLevel::new(level).unwrap(), block, 3).unwrap();
    let mut out = Vec::new();
    blocks.write_gzip(&mut &data[..], &mut out).unwrap();
    out
}

/// Asserts that pgzip, built by every toolchain, writes what the port writes. The Go programs
/// run while the port encodes.
fn assert_same(name: &str, data: &[u8], level: i32, block: usize, chunk: usize) {
    let (got, wants) = std::thread::scope(|scope| {
        let runs: Vec<_> = gopgzips()
            .iter()
            .map(|g| scope.spawn(move || (g, go_output(g, data, level, block, chunk))))
            .collect();
        let got = port_output(data, level, block, chunk);
        (
            got,
            runs.into_iter()
                .map(|r| r.join().unwrap())
                .collect::<Vec<_>>(),
        )
    });
    if chunk == 0 {
        let parallel = parallel_output(data, level, block);
        assert!(
            parallel == got,
            "{name} ({} bytes, level {level}, block {block}): the threaded port differs",
            data.len()
        );
    }
    for (g, want) in wants {
        if got != want {
            let at = got.iter().zip(&want).position(|(a, b)| a != b);
            panic!(
                "{name} ({} bytes, level {level}, block {block}, chunk {chunk}): port wrote {} bytes, pgzip built by {} {}; first difference at {at:?}",
                data.len(),
                got.len(),
                g.version,
                want.len()
            );
        }
    }
}

/// Deterministic pseudo-random bytes.
fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Text-like data with repeats at all distances.
fn texty(len: usize, seed: u64) -> Vec<u8> {
    const VOCAB: [&str; 12] = [
        "layer",
        "sha256:",
        "usr/lib/",
        "\n",
        " ",
        "the ",
        "0000644",
        "ustar",
        "{\"a\":1}",
        "\0\0\0\0",
        "config",
        "ab",
    ];
    let r = random(len / 3 + 16, seed);
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0;
    while out.len() < len {
        let v = r[i % r.len()] as usize;
        if v < 40 {
            out.push(r[(i * 7) % r.len()]);
        } else {
            out.extend_from_slice(VOCAB[v % VOCAB.len()].as_bytes());
        }
        i += 1;
    }
    out.truncate(len);
    out
}

/// Each level the port reproduces.
const LEVELS: [i32; 2] = [-1, 5];
const MIB: usize = 1 << 20;

#[test]
fn pgzip_small_inputs_match() {
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("one byte", b"x".to_vec()),
        ("12 bytes", b"hello world\n".to_vec()),
        ("zeros 100", vec![0; 100]),
        ("random 33", random(33, 1)),
        ("random 127", random(127, 2)),
        ("random 128", random(128, 3)),
        ("random 4000", random(4000, 4)),
        ("text 5000", texty(5000, 5)),
        ("zeros 70000", vec![0; 70000]),
    ];
    cases.push(("text 65535", texty(65535, 6)));
    cases.push(("text 65536", texty(65536, 7)));
    cases.push(("text 200000", texty(200_000, 8)));
    for level in LEVELS {
        for (name, data) in &cases {
            assert_same(name, data, level, 0, 0);
        }
    }
}

#[test]
fn pgzip_block_boundaries_match() {
    let text = texty(3 * MIB + 40_000, 9);
    for len in [
        MIB - 1,
        MIB,
        MIB + 1,
        MIB + 16,
        MIB + 16384,
        MIB + 16385,
        2 * MIB,
        2 * MIB + 100,
        3 * MIB + 40_000,
    ] {
        assert_same("text", &text[..len], -1, 0, 0);
    }
    assert_same("random 2.5 MiB", &random(5 * MIB / 2, 10), -1, 0, 0);
    assert_same("zeros 2 MiB + 7", &vec![0; 2 * MIB + 7], -1, 0, 0);
    // Other block sizes (SetConcurrency), including one no longer than the tail.
    assert_same("text 40k blocks", &text[..300_000], 5, 40_000, 0);
    assert_same("text 16385 blocks", &text[..100_000], 5, 16_385, 0);
    // umoci 0.4.7 calls SetConcurrency(256 << 10, _).
    assert_same("text umoci blocks", &text, -1, 256 << 10, 0);
}

#[test]
fn pgzip_system_tar_matches_any_chunking() {
    let tar = gotoolchains::system_tar();
    for level in LEVELS {
        assert_same("system tar", tar, level, 0, 0);
    }
    assert_same("system tar", tar, -1, 0, 10_240);
    assert_same("system tar", tar, -1, 0, 1_000_003);
}

fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Put `data` in `layout` (an OCI image layout) as a blob; its digest hex.
fn put_blob(layout: &Path, data: &[u8]) -> String {
    let hex = sha256_hex(data);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(&hex), data).unwrap();
    hex
}

/// An OCI layout holding one image, tagged `t`, whose only layer is `tar`, uncompressed.
fn uncompressed_layout(layout: &Path, tar: &[u8]) {
    let layer = put_blob(layout, tar);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["sha256:{layer}"]}},"config":{{}}}}"#
    );
    let config_hex = put_blob(layout, config.as_bytes());
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{config_hex}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:{layer}","size":{}}}]}}"#,
        config.len(),
        tar.len()
    );
    let manifest_hex = put_blob(layout, manifest.as_bytes());
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{manifest_hex}","size":{},"annotations":{{"org.opencontainers.image.ref.name":"t"}}}}]}}"#,
        manifest.len()
    );
    std::fs::write(layout.join("index.json"), index).unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
}

/// The blob of the first layer of the image tagged in `layout`.
fn first_layer(layout: &Path) -> Vec<u8> {
    let blob = |digest: &str| {
        let hex = digest.strip_prefix("sha256:").unwrap();
        std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap();
    blob(manifest["layers"][0]["digest"].as_str().unwrap())
}

/// skopeo (Debian's, built against the same pgzip and compress packages) compresses an
/// uncompressed layer the way podman and buildah push one; the port must write that blob.
#[test]
fn pgzip_reproduces_a_layer_skopeo_compressed() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let dst = dir.path().join("dst");
    let tar = gotoolchains::system_tar();
    uncompressed_layout(&src, tar);
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--dest-compress",
            "--dest-compress-format",
            "gzip",
        ])
        .arg(format!("oci:{}:t", src.display()))
        .arg(format!("oci:{}:t", dst.display()))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `skopeo` ({e}): install the Debian package skopeo to run this test")
        });
    assert!(
        out.status.success(),
        "skopeo copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let blob = first_layer(&dst);
    assert_eq!(&blob[..2], &[0x1f, 0x8b], "skopeo did not gzip the layer");
    let started = std::time::Instant::now();
    let ours = port_output(tar, -1, 0, 0);
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "port: {} bytes to {} in {secs:.3} s ({:.0} MB/s of plain text)",
        tar.len(),
        ours.len(),
        tar.len() as f64 / secs / 1e6
    );
    assert_eq!(
        sha256_hex(&ours),
        sha256_hex(&blob),
        "the port differs from skopeo's blob ({} vs {} bytes)",
        ours.len(),
        blob.len()
    );
    assert!(
        parallel_output(tar, -1, 0) == blob,
        "the threaded port differs from skopeo's blob"
    );
}
