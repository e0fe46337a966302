#!/usr/bin/env bash
# Builds the two Debian packages with cargo-deb, into $CARGO_TARGET_DIR/debian (target/debian):
#   sideload-device_VERSION_ARCH.deb  the device: registry plugin, USB loader, units, udev rule
#   sideload_VERSION_ARCH.deb         the cloud side: sideload, sideload-sign, man pages, completions
# Package metadata: [package.metadata.deb] in registry-plugin/Cargo.toml and cli/Cargo.toml;
# maintainer scripts in packaging/device/.
#
#   scripts/deb.sh                 release build, reproducible: the same commit and toolchain
#                                  give the same .deb bytes (mtimes from SOURCE_DATE_EPOCH, which
#                                  defaults to the commit's time; paths remapped, so the checkout
#                                  and target directory do not matter); scripts/deb-repro.sh
#                                  checks it by building twice
#   scripts/deb.sh --profile dev   from the debug build the tests already made (CI: the package's
#                                  layout and install are tested without a second, release, build)
#   scripts/deb.sh --tool-only     only installs cargo-deb (CI does it while the tests run)
# Installs cargo-deb (pinned) with `cargo install --locked` when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
tool_only=false
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile=$2; shift 2 ;;
    --tool-only) tool_only=true; shift ;;
    *) echo "usage: $0 [--profile release|dev] [--tool-only]" >&2; exit 2 ;;
  esac
done
cargo_deb_version=3.8.0
if ! cargo deb --version 2>/dev/null | grep -q "$cargo_deb_version"; then
  echo "== installing cargo-deb $cargo_deb_version (cargo install, a few minutes, once)" >&2
  cargo install cargo-deb --locked --version "$cargo_deb_version"
fi
if $tool_only; then exit 0; fi
target=$(realpath -m "${CARGO_TARGET_DIR:-target}")
out=$target/$([ "$profile" = dev ] && echo debug || echo "$profile")
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}
echo "== building the binaries ($profile profile)" >&2
if [ "$profile" = dev ]; then
  # Exactly as the tests built them (no RUSTFLAGS, no SOURCE_DATE_EPOCH, which C build scripts
  # track), so that only the four binaries are linked again.
  cargo build --locked --profile dev --bins \
    -p sideload-cli -p sideload-signing -p sideload-registry-plugin -p sideload-usb-loader
else
  # Build paths leave no trace in the binaries (panic locations, debug info before stripping).
  cargo_home=$(realpath -m "${CARGO_HOME:-$HOME/.cargo}")
  # SOURCE_DATE_EPOCH is for cargo-deb only: C build scripts track it, and a new value every
  # commit would rebuild them all.
  RUSTFLAGS="--remap-path-prefix=$PWD=/sideload --remap-path-prefix=$cargo_home=/cargo --remap-path-prefix=$target=/target" \
    cargo build --locked --profile "$profile" --bins \
    -p sideload-cli -p sideload-signing -p sideload-registry-plugin -p sideload-usb-loader
fi
export SOURCE_DATE_EPOCH=$epoch
# Man pages and completions from the clap definitions (the binaries' hidden generate-docs).
rm -rf "$out/docs"
"$out/sideload" generate-docs "$out/docs"
"$out/sideload-sign" generate-docs "$out/docs"
gzip -9n "$out"/docs/man/*.1
touch -d "@$SOURCE_DATE_EPOCH" "$out"/docs/man/* "$out"/docs/completions/*
mkdir -p "$target/debian"
# The dev packages (CI's install test) are never shipped: fast compression, not the smallest.
fast=$([ "$profile" = dev ] && echo --fast || true)
for package in sideload-registry-plugin sideload-cli; do
  cargo deb --no-build --profile "$profile" $fast -p "$package" --output "$target/debian/"
done
ls -l "$target"/debian/*.deb >&2
