//! Writes the binary patches the encoder weighs for one pair of files, for measuring:
//! `patch-sizes OLD NEW OUTDIR` writes OUTDIR/bsdiff.patch (the `bsdiff` crate, for reference),
//! OUTDIR/classic.patch (bsdiff's cover selection as the encoder makes it, over divsufsort),
//! OUTDIR/covers.patch (the smallest cost-chosen one; all in the split layout a bundle uses) and
//! OUTDIR/covers-x86.patch (that one with x86 address fields as 32-bit differences), and prints
//! their sizes raw and after zstd -19 and the time each took. COVERS_ONLY=1 skips the crate.

#![allow(clippy::disallowed_methods)] // a test harness reads its environment
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, old, new, out] = args.as_slice() else {
        eprintln!("usage: patch-sizes OLD NEW OUTDIR");
        std::process::exit(2);
    };
    let old = std::fs::read(old).expect("read OLD");
    let new = std::fs::read(new).expect("read NEW");
    std::fs::create_dir_all(out).expect("create OUTDIR");
    let t = Instant::now();
    let mut raw = Vec::new();
    if std::env::var_os("COVERS_ONLY").is_none() {
        bsdiff::diff(&old, &new, &mut raw).expect("bsdiff");
    }
    let bs = sideload_bundle::bspatch::split(&raw).expect("split");
    let bs_time = t.elapsed();
    let t = Instant::now();
    let classic = sideload_bundle::covers::diffs(&old, &new, false).remove(0);
    let classic_time = t.elapsed();
    let t = Instant::now();
    let cv = sideload_bundle::covers::diffs(&old, &new, true)
        .into_iter()
        .skip(1)
        .min_by_key(|p| zstd::bulk::compress(p, 19).map_or(usize::MAX, |c| c.len()))
        .expect("one setting at least");
    let cv_time = t.elapsed();
    let x86 = sideload_bundle::bspatch::to_x86(&old, &cv).expect("covers patch applies");
    let candidates = [
        ("bsdiff", &bs, bs_time, false),
        ("classic", &classic, classic_time, false),
        ("covers", &cv, cv_time, false),
        ("covers-x86", &x86, cv_time, true),
    ];
    for (name, patch, time, is_x86) in candidates {
        if patch.len() <= 1 {
            continue;
        }
        let back = if is_x86 {
            sideload_bundle::bspatch::apply_x86(&old, patch, new.len()).expect("apply")
        } else {
            sideload_bundle::bspatch::apply(&old, patch, new.len()).expect("apply")
        };
        assert!(back == new, "{name} patch does not rebuild NEW");
        let z = zstd::bulk::compress(patch, 19).expect("zstd").len();
        println!(
            "{name}: {} B raw, {z} B zstd-19, {:.2} s",
            patch.len(),
            time.as_secs_f64()
        );
        std::fs::write(format!("{out}/{name}.patch"), patch).expect("write");
    }
}
