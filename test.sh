#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what the tests need, then cargo test.
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-deps.sh
cargo test --workspace --locked
# The crash-point harness needs a daemon built to abort at a named step (a test-only feature).
cargo test --locked -p sideload-registry-plugin --features crash-points --test crash_points
