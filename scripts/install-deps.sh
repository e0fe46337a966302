#!/usr/bin/env bash
# Installs the system packages sideload's demo and tests use, from Debian's archive:
#   docker-registry  the open-source distribution registry (a real registry on loopback)
#   skopeo           a real registry client and image-format converter
#   umoci            writes image layers with Go's archive/tar, as Docker and buildkit do
#   curl             the demo drives the registry plugin's upload API with it
#   podman           a Docker-compatible engine API (tests of the plugin's engine path)
#   docker.io        dockerd (moby, the engine IoT Edge runs): the edge-agent tests start modules in it
#   containerd, runc containerd with its CRI plugin, and ctr (tests of the plugin's CRI path:
#                    containerd pulls through the plugin as a mirror, as on a k3s node)
#   protobuf-compiler  protoc: the k8s-cri crate's build script generates the CRI client with it
#   systemd          systemd-analyze, to check the units in systemd/
#   e2fsprogs        mkfs.ext4 -d and debugfs: the USB loader's tests build real stick images
#   dosfstools       mkfs.vfat, for the vfat stick test
#   libudev-dev, pkg-config  the USB loader reads udev properties through libudev
#   iproute2         ip netns, veth and tc (tbf): `sideload push` tested over a shaped link that drops
#   postgresql       the fleet ledger's tests run on a real PostgreSQL server as well as SQLite
#                    (started by the tests on loopback, as the postgres user; never as a service)
#   gcc, libc6-dev   the delta engine's test compiles the benchmark's agent statically, twice
#   gzip, pigz, golang-go  compressors whose gzip layers exact bundles must recreate byte for
#                    byte (GNU gzip, pigz, Go's compress/gzip as containerd and Docker write)
#   golang-github-klauspost-compress-dev, golang-github-klauspost-pgzip-dev  the Go sources of
#                    the parallel gzip skopeo, podman and umoci write layers with: the pgzip
#                    tests build the real writer from them (offline) to compare bytes
#   golang-1.21-go, golang-1.22-go, golang-1.23-go (from bookworm-backports)  the later Go
#                    releases Docker, BuildKit and containerd are built with; the goflate
#                    equality tests compare the port with every one of them, beside bookworm's
#                    Go 1.19. They install side by side under /usr/lib/go-1.2X and change no
#                    other package: backports are pinned low (NotAutomatic), so only what is
#                    asked for with -t bookworm-backports comes from there.
#   debootstrap      scripts/deb-test.sh makes a clean bookworm root to install the .deb in
#   python3          Python's gzip writes the zlib layers the exact tests recreate; test.sh
#                    reads cargo's metadata with it
# Idempotent: installs only what is missing. `--demo` installs only what ./demo.sh needs (the
# build, the registry, skopeo, curl, dockerd), none of the test-only packages.
set -euo pipefail
if [ "${1:-}" = --demo ]; then
  packages=(docker-registry skopeo curl docker.io containerd runc protobuf-compiler libudev-dev pkg-config ca-certificates gcc libc6-dev python3)
  backports=()
else
  packages=(docker-registry skopeo umoci curl podman docker.io containerd runc protobuf-compiler systemd e2fsprogs dosfstools libudev-dev pkg-config iproute2 ca-certificates gzip pigz golang-go golang-github-klauspost-compress-dev golang-github-klauspost-pgzip-dev postgresql gcc libc6-dev debootstrap python3)
  backports=(golang-1.21-go golang-1.22-go golang-1.23-go)
fi
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
missing=()
for pkg in "${packages[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done
missing_backports=()
for pkg in ${backports[@]+"${backports[@]}"}; do
  installed "$pkg" || missing_backports+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ] && [ ${#missing_backports[@]} -eq 0 ]; then
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if [ ${#missing_backports[@]} -gt 0 ]; then
  # Debian's own backports suite, signed by the archive key apt already trusts.
  sources=/etc/apt/sources.list.d/bookworm-backports.sources
  if ! grep -Eqs '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; then
    echo "adding $sources" >&2
    printf '%s\n' \
      'Types: deb' \
      'URIs: http://deb.debian.org/debian' \
      'Suites: bookworm-backports' \
      'Components: main' \
      'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg' |
      $sudo tee "$sources" >/dev/null
  fi
fi
echo "installing: ${missing[*]} ${missing_backports[*]}" >&2
$sudo apt-get update -qq
apt_install() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
if [ ${#missing[@]} -gt 0 ]; then
  apt_install "${missing[@]}"
fi
if [ ${#missing_backports[@]} -gt 0 ]; then
  apt_install -t bookworm-backports "${missing_backports[@]}"
fi
