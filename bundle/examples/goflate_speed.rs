//! Rough speed and memory of the device's blob recreation: `goflate_speed FILE WRITER [LEVEL]`
//! streams FILE (1 MiB reads, as `apply` does) through [`recreate`] with a recipe for WRITER
//! and prints MB/s of plain text and the process's peak RSS.
//!
//! - `zlib LEVEL` (default 6): zlib, the recipe the other writers are measured against;
//! - `go LEVEL` (default -1, Go's 6): the Go `compress/flate` port;
//! - `pgzip [BLOCK [THREADS]]` (default 1 MiB): the pgzip port at its default level, on the
//!   threads `recreate` picks (the cores) or on THREADS (1: the serial writer).
//!
//! Compare with `time tests/goflate/gogzip -level LEVEL < FILE`.

use std::fs::File;
use std::io::{self, BufReader};
use std::time::Instant;

use sideload_bundle::goflate::pgzip::{PgzipBlocks, PgzipLevel, PGZIP_DEFAULT_BLOCK_SIZE};
use sideload_bundle::goflate::Level;
use sideload_bundle::gzip_recipe::{
    recreate, DeflateRecipe, GoWriter, GzipRecipe, PgzipWriterId, Trailer, ZlibEnding,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: goflate_speed FILE zlib|go LEVEL | pgzip [BLOCK [THREADS]]";
    let path = args.next().expect(usage);
    let writer = args.next().expect(usage);
    let arg: Option<i64> = args.next().map(|a| a.parse().expect("a number"));
    let threads: Option<usize> = args.next().map(|a| a.parse().expect("a number"));
    let plain_len = std::fs::metadata(&path).expect("the input").len();
    let deflate = match writer.as_str() {
        "zlib" => DeflateRecipe::Zlib {
            level: arg.unwrap_or(6) as u8,
            ending: ZlibEnding::Finish,
            plain_len,
        },
        "go" => DeflateRecipe::Go {
            level: Level::new(arg.unwrap_or(-1) as i32).expect("a Go level"),
            plain_len,
            writer: GoWriter::Go1_19_8,
            flushes: Vec::new(),
        },
        "pgzip" => DeflateRecipe::Pgzip {
            level: PgzipLevel::DEFAULT,
            block_size: arg.unwrap_or(PGZIP_DEFAULT_BLOCK_SIZE as i64) as u32,
            plain_len,
            writer: PgzipWriterId::CURRENT,
        },
        other => panic!("unknown writer {other}: {usage}"),
    };
    let recipe = GzipRecipe {
        header: vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255],
        deflate,
        trailer: Trailer::Computed,
    };
    let mut plain = BufReader::with_capacity(1 << 20, File::open(&path).expect("the input"));
    let mut out = Counter(0);
    let start = Instant::now();
    match (&recipe.deflate, threads) {
        (DeflateRecipe::Pgzip { block_size, .. }, Some(threads)) => {
            let blocks = PgzipBlocks::new(PgzipLevel::DEFAULT, *block_size as usize, threads)
                .expect("a valid block size");
            blocks
                .write_deflate(&mut plain, &mut out)
                .expect("compressing");
        }
        _ => recreate(&recipe, &mut plain, &mut out).expect("recreating"),
    }
    let secs = start.elapsed().as_secs_f64();
    let on = threads.map_or(String::new(), |t| format!(" on {t} threads"));
    println!(
        "{}{on}: {plain_len} bytes -> {} in {secs:.3} s, {:.1} MB/s, peak RSS {} KiB",
        recipe.describe(),
        out.0,
        plain_len as f64 / secs / 1e6,
        peak_rss_kib()
    );
}

/// A sink that counts.
struct Counter(u64);

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `VmHWM` of this process.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
