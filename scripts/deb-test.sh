#!/usr/bin/env bash
# The device package on a clean Debian: builds both packages (scripts/deb.sh), installs
# sideload-device with apt on a fresh Debian bookworm root (debootstrap minbase, plus systemd and
# the package's dependencies), checks its units with `systemd-analyze verify`, runs the registry
# and the plugin from their installed files and config, as their units would, in a network
# namespace of their own, then removes and purges the package and checks that the root is as it
# was before the install (paths, types, modes, owners, sizes; contents under /etc).
#
#   scripts/deb-test.sh [--profile dev|release]     (CI: dev, the binaries the tests built)
#   scripts/deb-test.sh --prepare    only installs cargo-deb and makes the cached minbase root:
#                                    network and one core, which CI does while the tests run
#
# Needs root (chroot, mount, unshare) and Debian's mirror the first time: the root with the
# dependencies installed is cached as a tarball in $SIDELOAD_DEB_TEST_CACHE
# (/var/tmp/sideload-deb-test), keyed by the package's Depends line. systemd is not PID 1 inside
# a chroot, so the units themselves are verified, not started under systemd.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
prepare=false
[ "${1:-}" = --profile ] && profile=$2
[ "${1:-}" = --prepare ] && prepare=true
t0=$SECONDS
phase() { printf 'deb-test: %-60s (%ds)\n' "$*" $((SECONDS - t0)); }
fail() { echo "deb-test: FAILED: $*" >&2; exit 1; }

cache=${SIDELOAD_DEB_TEST_CACHE:-/var/tmp/sideload-deb-test}
minbase=$cache/bookworm-minbase.tar
mkdir -p "$cache"
# Unpacks tarball $1 into a new directory under $2 and prints its path.
# (mktemp makes it 0700; a root directory must be 0755, or no user but root can run anything.)
unpack() { local dir; dir=$(mktemp -d "$2/root.XXXXXX"); tar -C "$dir" -xf "$1"; chmod 0755 "$dir"; echo "$dir"; }
# The clean root: bookworm minbase, cached once.
make_minbase() {
  [ ! -f "$minbase" ] || return 0
  command -v debootstrap >/dev/null || apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
  build=$(mktemp -d "$cache/root.XXXXXX")
  chmod 0755 "$build"
  debootstrap --variant=minbase bookworm "$build" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 ||
    fail "debootstrap (log: $cache/debootstrap.log)"
  tar -C "$build" -cf "$minbase.part" . && mv "$minbase.part" "$minbase"
  rm -rf --one-file-system "$build"
  phase "debootstrap: bookworm minbase"
}
if $prepare; then
  scripts/deb.sh --tool-only
  make_minbase
  phase "prepared: cargo-deb and the minbase root"
  exit 0
fi

scripts/deb.sh --profile "$profile"
phase "packages built"
target=$(realpath -m "${CARGO_TARGET_DIR:-target}")
out=$target/$([ "$profile" = dev ] && echo debug || echo "$profile")
deb=$(ls -t "$target"/debian/sideload-device_*.deb | head -n 1)

# Then systemd (the device runs it) and the package's dependencies from the mirror (cached
# per Depends line).
make_minbase
deps="systemd $(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/ //g' | tr '\n' ' ')"
base=$cache/bookworm-$(echo "$deps" | sha256sum | cut -c1-16).tar
if [ ! -f "$base" ]; then
  build=$(unpack "$minbase" "$cache")
  cp /etc/resolv.conf "$build/etc/resolv.conf"
  chroot "$build" apt-get update -qq
  chroot "$build" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $deps >/dev/null
  chroot "$build" apt-get clean
  tar -C "$build" -cf "$base.part" . && mv "$base.part" "$base"
  rm -rf --one-file-system "$build"
  phase "installed on it: $deps"
fi

root=$(unpack "$base" "${TMPDIR:-/tmp}")
cleanup() {
  umount "$root/proc" 2>/dev/null || true
  rm -rf --one-file-system "$root"
}
trap cleanup EXIT
mount -t proc proc "$root/proc"
in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"; }
# Everything but what apt, dpkg and logs touch on any install, and /run (a tmpfs on a booted
# system; systemd-analyze leaves a marker there).
listing() {
  in_root find / -xdev \( -path /proc -o -path /tmp -o -path /run -o -path /var/cache -o -path /var/lib/apt \
    -o -path /var/log -o -name '*-old' -o -path /var/lib/dpkg/triggers \) -prune -o -printf '%p %y %m %u:%g %s\n' | sort
  in_root find /etc -type f -exec sha256sum {} + | sort
}
listing >"$root.before"
phase "fresh root unpacked"

cp "$deb" "$root/tmp/"
in_root apt-get install -y -qq --no-install-recommends "/tmp/$(basename "$deb")" >"$root.install.log" 2>&1 ||
  { cat "$root.install.log"; fail "apt-get install"; }
grep -q 'no trust policy yet' "$root.install.log" || fail "postinst did not say the trust policy is missing"
[ "$(in_root dpkg-query -W -f='${Conffiles}' sideload-device | grep -c /etc/sideload/)" = 3 ] ||
  fail "expected 3 conffiles in /etc/sideload"
[ -L "$root/etc/systemd/system/multi-user.target.wants/sideload-registry-plugin.service" ] ||
  fail "sideload-registry-plugin.service is not enabled"
phase "installed with apt: $(in_root dpkg-query -W -f='${Package} ${Version} ${Installed-Size} KiB' sideload-device)"

# The units, as systemd would load them (the registry's with the drop-in).
in_root systemd-analyze verify sideload-registry-plugin.service sideload-usb@sdz1.service \
  docker-registry.service 2>&1 | { grep -v 'dev-sdz1.device' || true; } | tee "$root.verify.log"
[ ! -s "$root.verify.log" ] || fail "systemd-analyze verify reported the lines above"
in_root systemd-delta --no-pager --type=extended | grep -q 10-sideload-loopback.conf ||
  fail "the docker-registry drop-in is not seen"
phase "systemd-analyze verify: 3 units clean, drop-in applied"

# Run them from the installed files, as the units would: the registry as docker-registry, the
# plugin with the installed config and a trust policy, on loopback in a namespace of their own.
"$out/sideload-sign" keygen --name deb-test --dir "$root/tmp" >/dev/null
{ echo "threshold = 1"; "$out/sideload-sign" pubkey "$root/tmp/deb-test.pub"; } >"$root/etc/sideload/trust.toml"
in_root sideload-registry-plugin --check-config
# Every setting has a default: without the config file the check passes too.
mv "$root/etc/sideload/registry-plugin.toml" "$root/etc/sideload/registry-plugin.toml.aside"
in_root sideload-registry-plugin --check-config >/dev/null || fail "--check-config without a config file"
mv "$root/etc/sideload/registry-plugin.toml.aside" "$root/etc/sideload/registry-plugin.toml"
install -d -m 0700 "$root/var/lib/sideload" "$root/var/lib/sideload/usb" # StateDirectory=
mkdir -p "$root/tmp/stick/sideload"
export root
unshare --net --fork bash -euo pipefail -c '
  ip link set lo up
  chroot --userspec=docker-registry:docker-registry "$root" /usr/bin/docker-registry serve /etc/sideload/registry.yml >"$root.registry.log" 2>&1 &
  registry=$!
  chroot "$root" /usr/bin/sideload-registry-plugin --config /etc/sideload/registry-plugin.toml >"$root.plugin.log" 2>&1 &
  plugin=$!
  for _ in $(seq 100); do
    curl -fsS http://127.0.0.1:5000/sideload/v1/health 2>/dev/null | grep -q "\"status\":\"ok\"" && break
    sleep 0.2
  done
  curl -fsS http://127.0.0.1:5000/sideload/v1/health; echo
  chroot "$root" /usr/bin/sideload-usb-loader --dry-run /tmp/stick
  kill -TERM "$plugin"; wait "$plugin"
  kill -TERM "$registry"; wait "$registry" || true
' || { cat "$root.plugin.log"; fail "the daemons did not run"; }
phase "registry and plugin ran from the package (health ok), USB loader dry run"

in_root apt-get remove -y -qq sideload-device >/dev/null
[ -f "$root/etc/sideload/registry-plugin.toml" ] || fail "remove deleted a conffile"
[ ! -e "$root/usr/bin/sideload-registry-plugin" ] || fail "remove left the binary"
rm "$root/etc/sideload/trust.toml" # the admin's own file; purge keeps it otherwise
in_root apt-get purge -y -qq sideload-device >/dev/null
listing >"$root.after"
diff -u "$root.before" "$root.after" || fail "purge left the differences above"
phase "removed and purged: nothing left behind"
rm -f "$root".*
