//! Every fuzz body over every committed seed, as a plain test (no libFuzzer, no sanitizer):
//! the regression inputs (`seeds/*/crash-*`) of every crash found stay fixed, and a body that
//! no longer builds or runs on real inputs shows up in `cargo test`.

use std::fs;
use std::path::Path;

#[test]
fn every_body_runs_over_its_seeds() {
    let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    for (target, body) in sideload_fuzz::TARGETS {
        let dir = seeds.join(target);
        let mut count = 0;
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let bytes = fs::read(&path).unwrap();
            eprintln!("{target}: {}", path.display());
            body(&bytes);
            count += 1;
        }
        assert!(count > 0, "no seeds for {target} in {}", dir.display());
    }
}
