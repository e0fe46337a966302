//! Rough speed of the Go gzip port: `goflate_speed FILE [LEVEL]` compresses FILE in memory
//! and prints MB/s (compare with `time tests/goflate/gogzip -level LEVEL < FILE`).

use std::io::Write;
use std::time::Instant;

use sideload_bundle::goflate::{GoGzipHeader, GoGzipWriter, Level};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: goflate_speed FILE [LEVEL]");
    let level: i32 = args.next().map_or(-1, |l| l.parse().expect("a level"));
    let data = std::fs::read(&path).expect("reading the input");
    let level = Level::new(level).expect("a Go level");
    let start = Instant::now();
    let mut w = GoGzipWriter::new(std::io::sink(), level, &GoGzipHeader::default())
        .expect("default header");
    for chunk in data.chunks(32 << 10) {
        w.write_all(chunk).expect("writing to a sink");
    }
    w.finish().expect("finishing");
    let secs = start.elapsed().as_secs_f64();
    println!(
        "level {}: {} bytes in {secs:.3} s, {:.1} MB/s",
        level.get(),
        data.len(),
        data.len() as f64 / secs / 1e6
    );
}
