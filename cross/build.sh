#!/usr/bin/env bash
# Builds a stripped release octomild for TARGET from this x86_64 Debian host, installing the
# Rust target and the Debian cross toolchain first if they are missing, and prints its size.
#
#   cross/build.sh TARGET [PROFILE]
#
# TARGET: aarch64-unknown-linux-gnu | armv7-unknown-linux-gnueabihf |
#         aarch64-unknown-linux-musl | x86_64-unknown-linux-musl
# PROFILE: release (default: what ships) or ci-release (thin LTO, for CI's smoke builds).
# Linkers and qemu runners per target are in .cargo/config.toml; see docs/cross-builds.md.
set -euo pipefail
cd "$(dirname "$0")/.."

target=${1:?usage: cross/build.sh TARGET [PROFILE]}
profile=${2:-release}

# Debian packages that give each target a linker (and the libc to link against) and an
# emulator for `cargo test --target`; musl targets link rustc's bundled musl, so they need
# only a C compiler for ring.
case $target in
  aarch64-unknown-linux-gnu) packages="gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user" ;;
  armv7-unknown-linux-gnueabihf) packages="gcc-arm-linux-gnueabihf libc6-dev-armhf-cross qemu-user" ;;
  aarch64-unknown-linux-musl) packages="gcc-aarch64-linux-gnu qemu-user" ;;
  x86_64-unknown-linux-musl) packages="musl-tools" ;;
  armv7-unknown-linux-musleabihf)
    echo "$target: no prebuilt std for it is reachable from here; see docs/cross-builds.md" >&2
    exit 2 ;;
  *)
    echo "unsupported target $target; see docs/cross-builds.md" >&2
    exit 2 ;;
esac

missing=""
for p in $packages; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "installing:$missing"
  # The package lists may be stale or absent on a fresh machine: refresh them once.
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  # shellcheck disable=SC2086 # a list of package names, split on purpose
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends $missing
fi

# The std for the target. The pinned toolchain may be a `rustup toolchain link` to stable
# (see .ci/run), which rustup cannot add targets to: then add it to stable, whose sysroot
# the link shares.
sysroot=$(rustc --print sysroot)
if [ ! -d "$sysroot/lib/rustlib/$target/lib" ]; then
  rustup target add "$target" || rustup target add --toolchain stable "$target"
  [ -d "$sysroot/lib/rustlib/$target/lib" ] || {
    echo "rustup added $target, but not to $sysroot" >&2
    exit 1
  }
fi

start=$(date +%s)
cargo build --locked --profile "$profile" -p octomild --bin octomild --target "$target"
secs=$(($(date +%s) - start))

bin="${CARGO_TARGET_DIR:-target}/$target/$profile/octomild"
# The release profiles strip already (strip = true); this checks rather than trusts it.
if command -v file >/dev/null && file "$bin" | grep -q "not stripped"; then
  echo "$bin is not stripped" >&2
  exit 1
fi
size=$(stat -c %s "$bin")
printf '%s %s: %s bytes (%s MiB), built in %ss\n' "$target" "$profile" "$size" \
  "$(awk -v s="$size" 'BEGIN { printf "%.2f", s / 1048576 }')" "$secs"
