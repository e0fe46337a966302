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
# Idempotent: installs only what is missing.
set -euo pipefail
packages=(docker-registry skopeo umoci curl podman docker.io containerd runc protobuf-compiler systemd e2fsprogs dosfstools libudev-dev pkg-config iproute2 ca-certificates gzip pigz golang-go golang-github-klauspost-compress-dev golang-github-klauspost-pgzip-dev postgresql gcc libc6-dev)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing: ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
