#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need, then cargo test.
#
# The three longest test binaries (exact digests, a bad link, USB sticks: ~8 of the ~16
# minutes the tests take one after the other) run beside all the others: most of their time is
# spent waiting on registries, engines, links and filesystems, and one test binary at a time
# keeps a 2-core machine half idle. Their output is printed when both runs are done.
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-deps.sh
cargo test --workspace --locked --no-run
# The test targets the second run takes: every one but the first run's and those that need a
# feature (the crash points, below). Both runs name the whole workspace, so cargo unifies the
# same features and neither rebuilds what the other runs.
beside=(exact push_link usb_e2e)
mapfile -t others < <(cargo metadata --no-deps --format-version 1 --locked | python3 -c '
import json, sys
beside = set(sys.argv[1:])
names = {t["name"] for p in json.load(sys.stdin)["packages"] for t in p["targets"]
         if "test" in t["kind"] and not t.get("required-features") and t["name"] not in beside}
print("\n".join(f"--test={n}" for n in sorted(names)))' "${beside[@]}")
log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "== ${beside[*]} run beside the other tests; their output follows"
cargo test --workspace --locked "${beside[@]/#/--test=}" >"$log" 2>&1 &
first=$!
second=0
cargo test --workspace --locked --lib --bins "${others[@]}" || second=$?
cargo test --workspace --locked --doc || second=$?
first_status=0
wait "$first" || first_status=$?
echo "== ${beside[*]}"
cat "$log"
if [ "$first_status" -ne 0 ] || [ "$second" -ne 0 ]; then
  echo "test.sh: tests failed (${beside[*]}: exit $first_status; the others: exit $second)" >&2
  exit 1
fi
# The crash-point harness needs a daemon built to abort at a named step (a test-only feature),
# so it runs once the others are done with the daemon they share.
cargo test --locked -p sideload-registry-plugin --features crash-points --test crash_points
