#!/usr/bin/env bash
# Checks that the release packages are reproducible: builds both with scripts/deb.sh twice, from
# two checkouts of HEAD in different directories into different target directories (so neither
# paths nor leftovers can hide in the bytes), and compares the .deb files byte for byte.
# Two cold release builds: ~30 minutes on a 2-core machine. Not part of CI.
#
#   scripts/deb-repro.sh            fresh target directories under a temporary directory
#   REPRO_TARGETS="DIR1 DIR2" scripts/deb-repro.sh   reuse these two target directories
# Exit status: 0 identical, 1 different (the differing packages are named), 2 usage.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# The first build is of this working tree, the second of HEAD: they must be the same sources.
git diff --quiet HEAD || { echo "uncommitted changes: commit them first (the second build is of HEAD)" >&2; exit 2; }
read -r -a targets <<<"${REPRO_TARGETS:-}"
[ "${#targets[@]}" -eq 0 ] || [ "${#targets[@]}" -eq 2 ] || { echo "REPRO_TARGETS needs two directories" >&2; exit 2; }
work=$(mktemp -d /tmp/sideload-deb-repro.XXXXXX)
# The second checkout goes; so do the temporary target directories (gigabytes), not given ones.
trap 'git -C "$root" worktree remove --force "$work/checkout" 2>/dev/null || true; rm -rf "$work"' EXIT
[ "${#targets[@]}" -eq 2 ] || targets=("$work/target-a" "$work/target-b")
# Both builds stamp the files with the commit's time (scripts/deb.sh's SOURCE_DATE_EPOCH).
git worktree add --detach "$work/checkout" HEAD >/dev/null
echo "== build 1: $root -> ${targets[0]}" >&2
CARGO_TARGET_DIR=${targets[0]} scripts/deb.sh
echo "== build 2: $work/checkout -> ${targets[1]}" >&2
(cd "$work/checkout" && CARGO_TARGET_DIR=${targets[1]} scripts/deb.sh)
status=0
for deb in "${targets[0]}"/debian/*.deb; do
  other=${targets[1]}/debian/$(basename "$deb")
  if cmp -s "$deb" "$other"; then
    echo "reproducible: $(basename "$deb") $(sha256sum <"$deb" | cut -d' ' -f1)"
  else
    echo "DIFFERENT: $(basename "$deb") ($deb against $other)" >&2
    status=1
  fi
done
exit $status
