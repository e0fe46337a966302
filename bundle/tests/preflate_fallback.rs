//! preflate is the recipe for gzip streams no writer recipe reproduces (a Go writer of another
//! release, pgzip at a level its recipe does not cover, any other compressor). `preflate-rs`
//! 0.7.6 refuses blocks that Go's `compress/flate` and klauspost's flate write for
//! incompressible data (a distance code of a single one-bit code: "Invalid Huffman code
//! lengths"), which used to cost the whole blob. These tests compress with the real Go programs
//! (`tests/goflate/gogzip.go`, `tests/goflate/pgzip/gopgzip.go`, built with the installed Go
//! 1.19 toolchain; pgzip from Debian's Go sources under /usr/share/gocode) and check that such
//! streams get a preflate recipe that recreates them byte for byte, for a small share of the
//! blob.
//!
//! Needs Go 1.19 (Debian: golang-1.19-go) and golang-github-klauspost-{compress,pgzip}-dev;
//! a machine without them fails these tests instead of skipping them.

mod gotoolchains;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use sideload_bundle::gzip_recipe::{analyse, max_chunks, recreate, GzipRecipe};

const GOCODE: &str = "/usr/share/gocode";

/// `tests/goflate/<src>` built with Go 1.19 (pgzip's in GOPATH mode against Debian's sources).
fn program(src: &str) -> PathBuf {
    static BUILT: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = BUILT.get_or_init(|| tempfile::tempdir().unwrap()).path();
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/goflate")
        .join(src);
    let bin = dir.join(src.file_stem().unwrap());
    if bin.exists() {
        return bin;
    }
    let go = gotoolchains::toolchains()
        .iter()
        .find(|t| t.version.starts_with("go1.19"))
        .expect("Go 1.19 (golang-1.19-go)");
    assert!(
        Path::new(GOCODE)
            .join("src/github.com/klauspost/pgzip")
            .is_dir(),
        "install golang-github-klauspost-pgzip-dev"
    );
    let status = go
        .command()
        .args(["build", "-o"])
        .arg(&bin)
        .arg(&src)
        .current_dir(dir)
        .env("GO111MODULE", "off")
        .env("GOPATH", GOCODE)
        .status()
        .unwrap();
    assert!(status.success(), "go build {} failed", src.display());
    bin
}

fn compress(program: &Path, args: &[&str], data: &[u8]) -> Vec<u8> {
    let mut command = Command::new(program);
    command.args(args);
    gotoolchains::filter_output(command, data, &program.display().to_string())
}

/// A layer-like tar: this machine's license texts and Perl modules (about 4 MB), then a
/// megabyte of bytes with 7.6 bits of entropy (random low bits, the top bit set one time in
/// four) and one with 7 (the top bit never set): what Huffman codes compress but matches do
/// not, so Go and klauspost write blocks of literals with a single one-bit distance code.
fn layer() -> &'static [u8] {
    static LAYER: OnceLock<Vec<u8>> = OnceLock::new();
    LAYER.get_or_init(|| {
        let mut layer = gotoolchains::system_tar().to_vec();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..1 << 20 {
            let r = next();
            layer.push((r as u8 & 0x7f) | if (r >> 8) & 3 == 0 { 0x80 } else { 0 });
        }
        for _ in 0..1 << 20 {
            layer.push(next() as u8 & 0x7f);
        }
        layer
    })
}

/// Analyses `gz` with preflate, recreates it from the recipe's bytes and checks every byte;
/// returns the recipe's size and how it describes itself.
fn preflate_recipe(name: &str, gz: &[u8], plain: &[u8]) -> (usize, String) {
    let analysis = analyse(gz).unwrap_or_else(|e| panic!("{name}: no recipe: {e}"));
    let bytes = analysis.recipe.to_bytes();
    let recipe = GzipRecipe::from_bytes(&bytes, max_chunks(plain.len() as u64)).unwrap();
    let mut out = Vec::new();
    recreate(&recipe, &mut &plain[..], &mut out).unwrap();
    assert!(out == gz, "{name}: the recreated blob differs");
    let described = recipe.describe();
    println!(
        "{name}: blob {} B, recipe {} B ({:.2} %): {described}",
        gz.len(),
        bytes.len(),
        bytes.len() as f64 * 100.0 / gz.len() as f64
    );
    (bytes.len(), described)
}

#[test]
fn go_streams_with_blocks_preflate_refuses_get_a_small_recipe() {
    // Measured: level -2 6.3 KB of a 4.5 MB blob (0.14 %), 1 100 KB of 3.2 MB (3.1 %, most of
    // it preflate's model of level 1's matching), 6 36 KB of 3.0 MB (1.2 %), 9 33 KB (1.1 %);
    // before, no recipe at all ("Invalid Huffman code lengths").
    let layer = layer();
    for level in [-2, 1, 6, 9] {
        let gz = compress(
            &program("gogzip.go"),
            &["-level", &level.to_string()],
            layer,
        );
        let name = format!("Go level {level}");
        let (size, described) = preflate_recipe(&name, &gz, layer);
        assert!(
            described.contains("re-encoded"),
            "{name}: no block preflate refuses: {described}"
        );
        // Under exact.rs's default limit (5 % of the blob).
        assert!(size * 20 < gz.len(), "{name}: {size} bytes");
    }
}

#[test]
fn pgzip_huffman_only_streams_get_a_small_recipe() {
    // pgzip's HuffmanOnly (klauspost's flate) writes every block with a one-bit distance
    // code: all are re-encoded from the plain text. Measured: 12.5 KB of a 4.5 MB blob
    // (0.28 %); before, no recipe.
    let layer = layer();
    let gz = compress(&program("pgzip/gopgzip.go"), &["-level", "-2"], layer);
    let (size, described) = preflate_recipe("pgzip level -2", &gz, layer);
    assert!(described.contains("re-encoded"), "{described}");
    assert!(size * 100 < gz.len(), "{size} bytes");
}
