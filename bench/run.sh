#!/usr/bin/env bash
# The delta benchmark: sideload against plain layer transfer, bsdiff, xdelta3, zstd --patch-from,
# rdiff and HDiffPatch, on the same inputs (`docker save` archives): the three demo scenarios
# (demo-app-update, demo-same-image, demo-no-base) and five on a realistic corpus built by
# bench/corpus.py and cached in bench/.cache/ (first-image, new-app-same-base, app-update,
# base-update, large). Prints a table per scenario and writes bench/results/latest.md. Exits
# non-zero if any tool's output does not reproduce the target.
#
#   bench/run.sh                      all scenarios (first run builds the corpus: ~15 min)
#   bench/run.sh --quick              the demo scenarios only (~1-2 min, no corpus)
#   bench/run.sh --scenario NAME ...  (repeatable; NAME as above, or `demo`)
#   other options: --zstd-level N (default 22; 20..22 adds --ultra), --tool-timeout S
#   (default 1200), --mem-limit-gib N (default 16), --bsdiff-max-bytes N (default 1e9); see
#   `python3 bench/bench.py --help`.
#   --only METHOD,... runs only those tools (sideload plain bsdiff xdelta3 zstd rdiff hdiffpatch).
#   Wherever sideload runs, its bundle is also built from the gzip OCI layouts with --exact
#   where-possible and applied to an oci: layout whose manifest digest must be the source's, and
#   built again with --exact never from the same layouts: extra bytes and apply time of
#   exactness (issues 7 and 19); --no-exact skips it. That once per gzip writer of the layers,
#   target and base alike: --exact-writers zlib,go,pgzip (default all three; zlib: the layouts
#   as corpus.py / make-demo-images write them; go: every blob written again by Go's
#   compress/gzip at its default level, as Docker and containerd do, a small program built with
#   Debian's go; pgzip: written again by skopeo, as podman/buildah/skopeo do).
#   --exact-apply-runs N applies each of its bundles N times and reports the median time.
#   --plugin also uploads each scenario's bundle to sideload-registry-plugin in front of a
#   docker-registry on loopback: upload -> tag visible, the daemon's peak RSS, pulls through the
#   plugin against straight from the registry (builds the plugin, installs docker-registry).
#   --link (as root) also sends each scenario's bundle over a 1 Mbit/s link with drops (a
#   network namespace sl-bench-cli, a veth pair 10.213.0.0/30 shaped with tc tbf both ways, the
#   device end set down on a seeded schedule: up 30-90 s, down 3-15 s) to the registry plugin,
#   once with `sideload push` and once with plain curl that starts over after every failure,
#   each to a fresh device: wall time, bytes sent, bytes on the wire (TCP payload, checked on
#   the clean link first), attempts, drops. Meant for the large bundle (`large`: the build, then
#   ~12 min when curl gets through at once; curl may use its budget, 3x push's time, >= 20 min):
#     bench/run.sh --scenario large --only sideload --link [--link-seed N] [--link-budget-s S]
#                  [--link-up-s LO,HI] [--link-down-s LO,HI]   (default 30,90 and 3,15 seconds)
#   --link-only: the same with the bundle the last --link run kept (bench/.cache/link/), no build.
#   Writes bench/results/link-SCENARIO.json and the clients' and daemons' logs beside latest.md.
#
# The peers' rows are cached in bench/.cache/peer-results/SCENARIO/METHOD.json and reused while
# their key matches (tool version and binaries, its options, its code in bench.py, CPU and nproc,
# size + mtime + first/last-MiB sha256 of each input file, whole sha256 for the demo ones); a
# reused row's note says `(cached result of DATE)`. --no-peer-cache reruns every peer (see
# bench/README.md). So after the first full run, a run costs about sideload's own time.
#
# Installs what it needs from Debian's archive and PyPI (as root, or through sudo), builds
# sideload in release mode into target/ (or $CARGO_TARGET_DIR), works in a temporary directory
# that it removes. The corpus needs root (debootstrap, chroot).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# --- 1. installs ----------------------------------------------------------------------------
# Debian package -> a command it provides.
declare -A deb=([bsdiff]=bspatch [xdelta3]=xdelta3 [zstd]=zstd [rdiff]=rdiff [time]=/usr/bin/time [skopeo]=skopeo
                [debootstrap]=debootstrap [gcc]=gcc)
# --plugin (the registry plugin measurement) also needs a distribution registry; --link and
# --link-only too, and curl and iproute2 (ip, tc), and root.
plugin=0
link=0
for a in "$@"; do
  case "$a" in
    --plugin) plugin=1 ;;
    --link|--link-only) plugin=1; link=1 ;;
  esac
done
[ "$plugin" -eq 0 ] || deb[docker-registry]=docker-registry
# The exact measurement's Go-gzip layers need Go (unless --no-exact, or --exact-writers without go).
go=1
prev=""
for a in "$@"; do
  case "$a" in
    --no-exact) go=0 ;;
    --exact-writers=*) [[ ",${a#*=}," == *,go,* ]] || go=0 ;;
  esac
  [ "$prev" != "--exact-writers" ] || [[ ",$a," == *,go,* ]] || go=0
  prev=$a
done
[ "$go" -eq 0 ] || deb[golang-go]=go
if [ "$link" -eq 1 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "error: --link needs root (it makes a network namespace, a veth pair and tc qdiscs); run bench/run.sh as root" >&2
    exit 2
  fi
  deb[curl]=curl
  deb[iproute2]=tc
fi
missing=()
for pkg in "${!deb[@]}"; do
  command -v "${deb[$pkg]}" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing from Debian: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! python3 -c 'import hdiffpatch' 2>/dev/null; then
  echo "installing from PyPI: hdiffpatch" >&2
  python3 -m pip install --quiet hdiffpatch
fi

# --- 2. build -------------------------------------------------------------------------------
echo "== building sideload (release)"
pkgs=(-p sideload-cli -p sideload-bundle -p sideload-signing)
[ "$plugin" -eq 0 ] || pkgs+=(-p sideload-registry-plugin)
cargo build --release --locked --quiet "${pkgs[@]}" --examples --bins

# --- 3. run ---------------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/sideload-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p bench/results
start=$(date +%s)
status=0
python3 bench/bench.py --bin "${CARGO_TARGET_DIR:-$ROOT/target}/release" --work "$WORK" \
  --out bench/results/latest.md "$@" || status=$?
echo "benchmark took $(( $(date +%s) - start )) s (build not included)"
exit "$status"
