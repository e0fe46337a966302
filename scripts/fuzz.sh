#!/usr/bin/env bash
# Runs the fuzz targets of fuzz/libfuzzer/ (libFuzzer with AddressSanitizer, via cargo-fuzz) for a given
# time each, and fails if any of them finds a crash, a hang over 1 s or an allocation over the
# limits.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      (default: 60 s, every target)
#
# Environment:
#   FUZZ_JOBS        targets run at once (default 1; each uses one core)
#   FUZZ_RSS_MB      -rss_limit_mb (default 2048)
#   FUZZ_MALLOC_MB   -malloc_limit_mb, the largest single allocation (default 512: every body
#                    runs with small Limits, so anything near it is a cap that is missing)
#   FUZZ_TARGET_DIR  cargo-fuzz's target dir (default: $CARGO_TARGET_DIR-fuzz, else
#                    fuzz/libfuzzer/target)
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

seconds=${1:-60}
shift || true
jobs=${FUZZ_JOBS:-1}
rss=${FUZZ_RSS_MB:-2048}
malloc=${FUZZ_MALLOC_MB:-512}
target_dir=${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR-fuzz}}
target_dir=${target_dir:-$PWD/libfuzzer/target}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz is not installed: cargo install cargo-fuzz --locked" >&2
    exit 2
fi
if [ $# -eq 0 ]; then
    set -- $(sed -n 's/^name = "\(.*\)"$/\1/p' libfuzzer/Cargo.toml | grep -v '^sideload-fuzz')
fi

# cargo-fuzz runs on the stable toolchain with RUSTC_BOOTSTRAP (it needs -Zsanitizer); -a keeps
# debug assertions and overflow checks on, so an arithmetic overflow is a finding too.
echo "fuzz: building the fuzz targets into $target_dir"
RUSTC_BOOTSTRAP=1 cargo fuzz build --fuzz-dir libfuzzer -a --target-dir "$target_dir"
bin_dir="$target_dir/$(rustc -vV | sed -n 's/^host: //p')/release"

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
