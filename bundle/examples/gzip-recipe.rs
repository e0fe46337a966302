//! Prints the recipe `sideload build --exact` would make for gzip blobs, for measuring:
//! `gzip-recipe BLOB...` finds, per blob, the zlib level that wrote it or else preflate's
//! corrections, then recreates the blob from its plain text (streamed, as the device does) and checks every
//! byte, and prints
//! the recipe's kind and size, the analysis and recreation times and the blob's size.
//! `gzip-recipe --preflate BLOB...` skips the zlib search (what the recipe would cost without
//! it).
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::time::Instant;

use sideload_bundle::gzip_recipe::{analyse, analyse_zlib, recreate, Analysis};

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let preflate_only = args.first().is_some_and(|a| a == "--preflate");
    if preflate_only {
        args.remove(0);
    }
    if args.is_empty() {
        eprintln!("usage: gzip-recipe [--preflate] BLOB...");
        std::process::exit(2);
    }
    let open = |path: &str| File::open(path).map(|f| BufReader::with_capacity(1 << 20, f));
    for path in &args {
        let t = Instant::now();
        let zlib = if preflate_only {
            None
        } else {
            analyse_zlib(|| open(path)).expect("readable")
        };
        let analysis: Analysis = match zlib {
            Some(a) => a,
            None => analyse(open(path).expect("open")).expect("recreatable"),
        };
        let analysed = t.elapsed();
        let t = Instant::now();
        let mut plain = flate2::read::GzDecoder::new(open(path).expect("open"));
        let mut check = Compare(open(path).expect("open"), 0);
        recreate(&analysis.recipe, &mut plain, &mut check).expect("recreates the same bytes");
        let recreated = t.elapsed();
        let mut rest = [0u8; 1];
        assert_eq!(
            check.0.read(&mut rest).unwrap(),
            0,
            "{path}: recreated a prefix"
        );
        println!(
            "{path}: blob {} B, tar {} B; recipe {} B ({}); analysis {:.2} s, recreation {:.2} s (gunzip included)",
            check.1,
            analysis.plain_len,
            analysis.recipe.to_bytes().len(),
            analysis.recipe.describe(),
            analysed.as_secs_f64(),
            recreated.as_secs_f64()
        );
    }
}

/// A writer that checks it is given exactly the bytes of its reader, and counts them.
struct Compare<R>(R, u64);

impl<R: Read> Write for Compare<R> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut want = vec![0u8; buf.len()];
        self.0.read_exact(&mut want)?;
        if want != buf {
            return Err(io::Error::other(format!("differs after byte {}", self.1)));
        }
        self.1 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
