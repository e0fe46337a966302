//! `goflate` against the real thing: Go's `compress/gzip` and `compress/flate`, run through
//! `tests/goflate/gogzip.go` built with every supported Go toolchain (Go 1.19, 1.21, 1.22 and
//! 1.23 from Debian, see `gotoolchains`), must each write the same bytes as the port, for every
//! level, chunking and flush pattern tried here.
//!
//! Needs those toolchains (`scripts/install-deps.sh`); a machine without one fails these tests,
//! naming the package, instead of skipping them, since a skipped proof proves nothing.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use sideload_bundle::goflate::{GoFlateWriter, GoGzipHeader, GoGzipWriter, Level};

mod gotoolchains;

/// A reference program: gogzip.go built by one toolchain.
struct Gogzip {
    version: String,
    bin: PathBuf,
}

/// The reference program, built once per test run with every toolchain.
fn gogzips() -> &'static [Gogzip] {
    static BINS: OnceLock<(tempfile::TempDir, Vec<Gogzip>)> = OnceLock::new();
    &BINS
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/goflate/gogzip.go");
            let bins = gotoolchains::build_all(&src, dir.path(), |_| {})
                .into_iter()
                .map(|(tc, bin)| Gogzip {
                    version: tc.version,
                    bin,
                })
                .collect();
            (dir, bins)
        })
        .1
}

/// The reference program of the first supported toolchain (Go 1.19), for tests that need
/// some Go-written blob rather than a comparison.
fn gogzip() -> &'static PathBuf {
    &gogzips()[0].bin
}

/// How the input is handed to the writer.
#[derive(Debug, Clone, Default)]
struct Pattern {
    /// Write chunk size (0: one write per stretch between flushes).
    chunk: usize,
    /// Input offsets after which the writer is flushed (Go's `Flush`).
    flushes: Vec<usize>,
    /// Also flush after every `.0` bytes up to offset `.1`.
    every: Option<(usize, usize)>,
    /// Raw deflate instead of gzip.
    raw: bool,
}

impl Pattern {
    /// All flush points, sorted (as gogzip.go computes them).
    fn points(&self) -> Vec<usize> {
        let mut points = self.flushes.clone();
        if let Some((every, until)) = self.every {
            points.extend((1..).map(|i| i * every).take_while(|&p| p <= until));
        }
        points.sort_unstable();
        points
    }
}

fn go_output(data: &[u8], level: i32, p: &Pattern) -> Vec<u8> {
    go_output_with(gogzip(), data, level, p)
}

fn go_output_with(gogzip: &PathBuf, data: &[u8], level: i32, p: &Pattern) -> Vec<u8> {
    let mut cmd = Command::new(gogzip);
    cmd.arg("-level").arg(level.to_string());
    cmd.arg("-chunk").arg(p.chunk.to_string());
    if !p.flushes.is_empty() {
        let list: Vec<String> = p.flushes.iter().map(|f| f.to_string()).collect();
        cmd.arg("-flush").arg(list.join(","));
    }
    if let Some((every, until)) = p.every {
        cmd.arg("-flush-every").arg(every.to_string());
        cmd.arg("-flush-until").arg(until.to_string());
    }
    if p.raw {
        cmd.arg("-raw");
    }
    gotoolchains::filter_output(cmd, data, "gogzip")
}

/// Writes `data` like gogzip.go does: stretches between flush points, each in chunks.
fn feed<W: Write>(w: &mut W, data: &[u8], p: &Pattern, mut flush: impl FnMut(&mut W)) {
    let mut at = 0;
    let write = |w: &mut W, from: usize, to: usize| {
        let mut from = from;
        while from < to {
            let end = if p.chunk > 0 {
                (from + p.chunk).min(to)
            } else {
                to
            };
            w.write_all(&data[from..end]).unwrap();
            from = end;
        }
    };
    for point in p.points() {
        let point = point.min(data.len());
        write(w, at, point);
        at = point;
        flush(w);
    }
    write(w, at, data.len());
}

fn rust_output(data: &[u8], level: i32, p: &Pattern) -> Vec<u8> {
    let level = Level::new(level).unwrap();
    if p.raw {
        let mut w = GoFlateWriter::new(Vec::new(), level);
        feed(&mut w, data, p, |w| w.sync_flush().unwrap());
        w.finish().unwrap()
    } else {
        let mut w = GoGzipWriter::new(Vec::new(), level, &GoGzipHeader::default()).unwrap();
        feed(&mut w, data, p, |w| w.sync_flush().unwrap());
        w.finish().unwrap()
    }
}

/// Asserts that every toolchain's Go writes what the port writes; returns the number of cases
/// checked (1). The Go programs run while the port encodes.
fn check(name: &str, data: &[u8], level: i32, p: &Pattern) -> usize {
    let (rust, gos) = std::thread::scope(|scope| {
        let runs: Vec<_> = gogzips()
            .iter()
            .map(|g| scope.spawn(move || (g, go_output_with(&g.bin, data, level, p))))
            .collect();
        let rust = rust_output(data, level, p);
        (
            rust,
            runs.into_iter()
                .map(|r| r.join().unwrap())
                .collect::<Vec<_>>(),
        )
    });
    for (g, go) in gos {
        if go != rust {
            let at = go.iter().zip(&rust).take_while(|(a, b)| a == b).count();
            panic!(
                "{name} ({} bytes) level {level} {p:?}: {} wrote {} bytes, the port {}; first difference at byte {at}",
                data.len(),
                g.version,
                go.len(),
                rust.len()
            );
        }
    }
    1
}

/// `N cases equal` and the toolchains they were equal on, for the tests' summaries.
fn equal_on(cases: usize) -> String {
    format!(
        "{cases} cases equal on each of {}",
        gotoolchains::versions()
    )
}

/// Deterministic pseudo-random bytes (xorshift64).
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

/// Text-like input: words from a small vocabulary, with skewed frequencies and numbers.
fn words(len: usize, seed: u64) -> Vec<u8> {
    const VOCAB: [&str; 16] = [
        "the ",
        "layer ",
        "image ",
        "registry ",
        "digest ",
        "sha256:",
        "blob ",
        "manifest ",
        "\n",
        "config ",
        "of ",
        "a ",
        "tar ",
        "gzip ",
        "deflate ",
        "window ",
    ];
    let noise = random(len, seed);
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0;
    while out.len() < len {
        let r = noise[i % noise.len()] as usize;
        if r.is_multiple_of(7) {
            out.extend_from_slice(format!("{} ", r * 31 + i).as_bytes());
        } else {
            out.extend_from_slice(VOCAB[(r * r) % VOCAB.len()].as_bytes());
        }
        i += 1;
    }
    out.truncate(len);
    out
}

const LEVELS: [i32; 7] = [-2, 0, 1, 2, 5, 6, 9];

fn whole() -> Pattern {
    Pattern::default()
}

#[test]
fn goflate_small_inputs_every_level() {
    let mut cases = 0;
    let inputs: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("one byte", vec![b'x']),
        ("two bytes", b"ab".to_vec()),
        ("sixteen", b"0123456789abcdef".to_vec()),
        ("seventeen", b"0123456789abcdefg".to_vec()),
        ("short text", b"hello hello hello hello, world".to_vec()),
        ("127 bytes", words(127, 3)),
        ("128 bytes", words(128, 4)),
        ("300 random", random(300, 5)),
        ("4 KiB words", words(4096, 6)),
    ];
    for (name, data) in &inputs {
        for level in -2..=9 {
            cases += check(name, data, level, &whole());
            cases += check(
                name,
                data,
                level,
                &Pattern {
                    raw: true,
                    ..whole()
                },
            );
        }
    }
    eprintln!("goflate small inputs: {}", equal_on(cases));
}

#[test]
fn goflate_boundaries_and_kinds() {
    let mut cases = 0;
    let tar = gotoolchains::system_tar();
    let inputs: Vec<(&str, Vec<u8>)> = vec![
        ("zeros 64K+1", vec![0; 65537]),
        ("abc repeated 200K", b"abc".repeat(70_000)),
        ("random 300K", random(300_000, 7)),
        ("words 200K", words(200_000, 8)),
        ("tar 65535", tar[..65535].to_vec()),
        ("tar 65536", tar[..65536].to_vec()),
        ("tar 65537", tar[..65537].to_vec()),
        ("tar 131071", tar[..131_071].to_vec()),
        ("tar 131073", tar[..131_073].to_vec()),
        ("tar 1MiB+7", tar[..(1 << 20) + 7].to_vec()),
    ];
    for (name, data) in &inputs {
        for level in LEVELS {
            cases += check(name, data, level, &whole());
        }
    }
    eprintln!("goflate boundaries: {}", equal_on(cases));
}

#[test]
fn goflate_chunking_does_not_matter() {
    let mut cases = 0;
    let tar = gotoolchains::system_tar();
    let data = &tar[..300_000];
    for level in LEVELS {
        for chunk in [1, 777, 4096, 65536, 100_003] {
            if chunk == 1 && level != 6 && level != 1 {
                continue; // one-byte writes are slow through a pipe; two levels suffice
            }
            let p = Pattern { chunk, ..whole() };
            cases += check("tar 300K", data, level, &p);
        }
    }
    eprintln!("goflate chunking: {}", equal_on(cases));
}

#[test]
fn goflate_flush_points() {
    let mut cases = 0;
    let tar = gotoolchains::system_tar();
    let data = &tar[..400_000];
    let patterns = [
        vec![0],
        vec![1],
        vec![10],
        vec![100, 100],
        vec![5000, 70_000, 70_010, 200_000],
        vec![65535, 131_070, 196_605],
        (1..40).map(|i| i * 9973).collect(),
        vec![400_000],
    ];
    for level in LEVELS.iter().copied().chain([3, 4, 7, 8]) {
        for flushes in &patterns {
            for chunk in [0, 4096] {
                let p = Pattern {
                    chunk,
                    flushes: flushes.clone(),
                    ..whole()
                };
                cases += check("tar 400K", data, level, &p);
            }
        }
    }
    eprintln!("goflate flushes: {}", equal_on(cases));
}

#[test]
fn goflate_whole_system_tar() {
    let mut cases = 0;
    let tar = gotoolchains::system_tar();
    for level in LEVELS {
        cases += check(
            "system tar",
            tar,
            level,
            &Pattern {
                chunk: 32768,
                ..whole()
            },
        );
    }
    eprintln!(
        "goflate system tar ({} bytes): {}",
        tar.len(),
        equal_on(cases)
    );
}

/// BestSpeed keeps table offsets in an `i32` that grows by 32 KiB at every short flushed
/// block and by the block's size at every other; near `i32::MAX` Go rebases the table
/// (`shiftOffsets`), with and without a previous block to match into. 65 528 flushes every
/// 10 bytes bring the offset just below the rebase point; the full blocks after them cross
/// it with a history, and one more flush run crosses it without.
#[test]
fn goflate_best_speed_rebases_its_table() {
    let tar = gotoolchains::system_tar();
    let mut data = words(655_280, 9);
    data.extend_from_slice(&tar[..400_000]);
    let below = Pattern {
        every: Some((10, 655_280)),
        ..whole()
    };
    let mut cases = check("flushed prefix + tar", &data, 1, &below);
    let across = Pattern {
        every: Some((10, 700_000)),
        ..whole()
    };
    cases += check("flushed across the rebase", &data, 1, &across);
    eprintln!("goflate BestSpeed rebase: {}", equal_on(cases));
}

/// Levels 2 to 9 rebase their hash chains after 16 MiB of input (`maxHashOffset`).
#[test]
fn goflate_hash_chains_rebase_after_16_mib() {
    let tar = gotoolchains::system_tar();
    let mut data = Vec::with_capacity(18 << 20);
    let mut seed = 10;
    while data.len() < 17 << 20 {
        data.extend_from_slice(&tar[..tar.len().min(3 << 20)]);
        data.extend_from_slice(&words(1 << 20, seed));
        seed += 1;
    }
    let mut cases = 0;
    for level in [2, 6] {
        cases += check(
            "17 MiB",
            &data,
            level,
            &Pattern {
                chunk: 1 << 20,
                ..whole()
            },
        );
    }
    eprintln!("goflate 17 MiB ({} bytes): {}", data.len(), equal_on(cases));
}

/// Header fields as Go writes them: FLG, MTIME, XFL by level, Latin-1 strings, the extra
/// field's length.
#[test]
fn goflate_header_fields() {
    let data = words(10_000, 12);
    let header = GoGzipHeader {
        name: GoGzipHeader::latin1("name", "layer.tar").unwrap(),
        comment: GoGzipHeader::latin1("comment", "café au lait").unwrap(),
        extra: Some(b"sl\x01\x02".to_vec()),
        mtime: 1_700_000_000,
        ..GoGzipHeader::default()
    };
    let mut cases = 0;
    for level in [-1, 1, 6, 9] {
        let mut w = GoGzipWriter::new(Vec::new(), Level::new(level).unwrap(), &header).unwrap();
        w.write_all(&data).unwrap();
        let ours = w.finish().unwrap();
        for g in gogzips() {
            let mut cmd = Command::new(&g.bin);
            cmd.args(["-level", &level.to_string(), "-name", "layer.tar"]);
            cmd.args(["-comment", "café au lait", "-extra", "sl\x01\x02"]);
            cmd.args(["-mtime", "1700000000"]);
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(&data).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success());
            assert_eq!(ours, out.stdout, "level {level}, {}", g.version);
        }
        cases += 1;
    }
    assert!(GoGzipHeader::latin1("name", "日本").is_err());
    assert!(GoGzipHeader::latin1("name", "a\0b").is_err());
    eprintln!("goflate header fields: {}", equal_on(cases));
}

/// The gzip trailer of `plain` (its CRC-32 and length), which the analysis found computable.
fn gzip_trailer(trailer: &sideload_bundle::gzip_recipe::Trailer, plain: &[u8]) -> Vec<u8> {
    assert_eq!(*trailer, sideload_bundle::gzip_recipe::Trailer::Computed);
    let mut crc = flate2::Crc::new();
    crc.update(plain);
    let mut bytes = crc.sum().to_le_bytes().to_vec();
    bytes.extend_from_slice(&(plain.len() as u32).to_le_bytes());
    bytes
}

/// `analyse_go` names the level Go wrote a blob with, and the port recreates the blob from the
/// plain text, header and trailer alone (with its flush points, when Go flushed before
/// closing); a blob Go did not write (zlib) is not claimed.
#[test]
fn goflate_analyse_go_finds_the_level() {
    use sideload_bundle::gzip_recipe::analyse_go;
    let data = &gotoolchains::system_tar()[..700_000];
    let mut cases = 0;
    for level in [-2, -1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9] {
        let blob = go_output(data, level, &whole());
        let found = analyse_go(&blob[..])
            .unwrap()
            .unwrap_or_else(|| panic!("level {level} not found"));
        let expect = if level == -1 { 6 } else { level };
        assert_eq!(found.level.get(), expect, "level {level}");
        assert_eq!(found.plain_len, data.len() as u64);
        // Recreate: verbatim header, the port's deflate stream, the trailer from the text.
        let mut again = found.header.clone();
        let mut w = GoFlateWriter::new(again, found.level);
        w.write_all(data).unwrap();
        again = w.finish().unwrap();
        again.extend_from_slice(&gzip_trailer(&found.trailer, data));
        assert!(again == blob, "level {level}: recreated blob differs");
        cases += 1;
    }
    let mut zlib = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    zlib.write_all(data).unwrap();
    assert!(analyse_go(&zlib.finish().unwrap()[..]).unwrap().is_none());
    let flushed = Pattern {
        flushes: vec![100_000],
        ..whole()
    };
    // Flushed before closing (Go's Flush): found too, with the flush point, and recreated.
    let blob = go_output(data, 6, &flushed);
    let found = analyse_go(&blob[..])
        .unwrap()
        .expect("flushed level 6 found");
    assert_eq!(found.level.get(), 6);
    assert_eq!(found.flushes, vec![100_000]);
    let mut w = GoFlateWriter::new(found.header.clone(), found.level);
    w.write_all(&data[..100_000]).unwrap();
    w.sync_flush().unwrap();
    w.write_all(&data[100_000..]).unwrap();
    let mut again = w.finish().unwrap();
    again.extend_from_slice(&gzip_trailer(&found.trailer, data));
    assert!(again == blob, "flushed level 6: recreated blob differs");
    eprintln!("goflate analyse_go: {cases} levels found");
}
