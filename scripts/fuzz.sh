#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/libfuzzer/ (libFuzzer, with AddressSanitizer via cargo-fuzz, or
# without a sanitizer via plain cargo) for a given time each, and fails if any of them finds a
# crash, a hang over 1 s or an allocation over the limits.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      (default: 60 s, every target)
#   scripts/fuzz.sh --build-only                           (builds every target, runs none:
#                                                           CI builds them at idle priority
#                                                           while the tests run)
#
# Environment:
#   FUZZ_SANITIZER   address (default): cargo-fuzz's build (AddressSanitizer, one codegen unit;
#                    needs `cargo install cargo-fuzz`). none: `cargo build` with the same
#                    coverage instrumentation, --cfg fuzzing, debug assertions and overflow
#                    checks, but no sanitizer and no cargo-fuzz: what CI's smoke run uses (a
#                    cargo-fuzz install and an ASan build cost more than CI's budget). Safe
#                    Rust needs no ASan to find a panic, a hang or an oversized allocation;
#                    the C in zstd and zlib is what ASan adds.
#   FUZZ_JOBS        targets run at once (default 1; each uses one core)
#   FUZZ_RSS_MB      -rss_limit_mb (default 2048)
#   FUZZ_MALLOC_MB   -malloc_limit_mb, the largest single allocation (default 512: every body
#                    runs with small Limits, so anything near it is a cap that is missing)
#   FUZZ_TARGET_DIR  the build's target dir (default: $CARGO_TARGET_DIR-fuzz, else
#                    fuzz/libfuzzer/target; with -none after it for FUZZ_SANITIZER=none)
#
# New inputs go to fuzz/corpus/TARGET, crashes to fuzz/artifacts/TARGET/, logs to
# fuzz/artifacts/TARGET.log (all three are ignored by git); the committed seeds in
# fuzz/seeds/TARGET are read, never written. It prints, per target, executions, coverage
# (libFuzzer's cov: edges, ft: features) and peak RSS. A crash is minimized with
#   RUSTC_BOOTSTRAP=1 cargo fuzz tmin --fuzz-dir libfuzzer -a --target-dir DIR TARGET \
#       artifacts/TARGET/crash-...            (in fuzz/)
# and kept as fuzz/seeds/TARGET/crash-NAME (run by `cargo test --workspace`, see fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

build_only=false
if [ "${1:-}" = --build-only ]; then
    build_only=true
    shift
fi
seconds=${1:-60}
shift || true
jobs=${FUZZ_JOBS:-1}
rss=${FUZZ_RSS_MB:-2048}
malloc=${FUZZ_MALLOC_MB:-512}
sanitizer=${FUZZ_SANITIZER:-address}
# The two builds differ in every flag, so each keeps its own directory.
suffix=$([ "$sanitizer" = address ] || echo "-$sanitizer")
target_dir=${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR-fuzz$suffix}}
target_dir=${target_dir:-$PWD/libfuzzer/target$suffix}

host=$(rustc -vV | sed -n 's/^host: //p')
if [ $# -eq 0 ]; then
    set -- $(sed -n 's/^name = "\(.*\)"$/\1/p' libfuzzer/Cargo.toml | grep -v '^sideload-fuzz')
fi

echo "fuzz: building the fuzz targets ($sanitizer) into $target_dir"
case "$sanitizer" in
address)
    if ! cargo fuzz --version >/dev/null 2>&1; then
        echo "fuzz: cargo-fuzz is not installed: cargo install cargo-fuzz --locked" \
            "(or FUZZ_SANITIZER=none)" >&2
        exit 2
    fi
    # cargo-fuzz runs on the stable toolchain with RUSTC_BOOTSTRAP (it needs -Zsanitizer); -a
    # keeps debug assertions and overflow checks on, so an arithmetic overflow is a finding too.
    RUSTC_BOOTSTRAP=1 cargo fuzz build --fuzz-dir libfuzzer -a --target-dir "$target_dir"
    ;;
none)
    # cargo-fuzz's coverage flags (see its project.rs), all stable. --target keeps them off
    # build scripts and proc macros, which are not linked with libFuzzer.
    flags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
    flags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters"
    flags+=" -Cllvm-args=-sanitizer-coverage-pc-table"
    flags+=" -Cllvm-args=-sanitizer-coverage-trace-compares"
    flags+=" -Cllvm-args=-sanitizer-coverage-stack-depth"
    flags+=" -Cllvm-args=-simplifycfg-branch-fold-threshold=0"
    flags+=" --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
    RUSTFLAGS="$flags" cargo build --manifest-path libfuzzer/Cargo.toml --locked --release \
        --target "$host" --target-dir "$target_dir" --bins
    ;;
*)
    echo "fuzz: FUZZ_SANITIZER must be address or none, not $sanitizer" >&2
    exit 2
    ;;
esac
bin_dir="$target_dir/$host/release"
if $build_only; then
    echo "fuzz: built; nothing run (--build-only)"
    exit 0
fi

run_one() {
    local t=$1
    mkdir -p "corpus/$t" "artifacts/$t"
    "$bin_dir/$t" "corpus/$t" "seeds/$t" \
        -max_total_time="$seconds" -timeout=1 -rss_limit_mb="$rss" -malloc_limit_mb="$malloc" \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 \
        >"artifacts/$t.log" 2>&1
}

summary() {
    local t=$1 rc=$2 log="artifacts/$1.log" execs cov ft rss_mb
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rss_mb=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -o 'ft: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    printf 'fuzz: %-20s %5ss  execs %10s  cov %6s  ft %6s  rss %5s MB  %s\n' "$t" "$seconds" \
        "${execs:-?}" "${cov:-?}" "${ft:-?}" "${rss_mb:-?}" \
        "$([ "$rc" -eq 0 ] && echo ok || echo "FAILED (exit $rc, see fuzz/$log)")"
}

failed=0
pids=()
names=()
wait_first() {
    local rc=0
    wait "${pids[0]}" || rc=$?
    summary "${names[0]}" "$rc"
    [ "$rc" -eq 0 ] || failed=1
    pids=("${pids[@]:1}")
    names=("${names[@]:1}")
}
for t in "$@"; do
    [ -x "$bin_dir/$t" ] || { echo "fuzz: no target $t" >&2; exit 2; }
    run_one "$t" &
    pids+=($!)
    names+=("$t")
    [ "${#pids[@]}" -lt "$jobs" ] || wait_first
done
while [ "${#pids[@]}" -gt 0 ]; do wait_first; done

if [ "$failed" -ne 0 ]; then
    echo "fuzz: FAILED; the crashing inputs are in fuzz/artifacts/" >&2
    exit 1
fi
echo "fuzz: every target ran ${seconds}s without a crash"
