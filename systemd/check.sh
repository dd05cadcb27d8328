#!/usr/bin/env bash
# Gate on the shipped unit, as installed: `systemd-analyze verify` against a temp root that
# holds the built octomild at the ExecStart= path (with and without the plain-credentials
# drop-in), and `systemd-analyze security` exposure of 2.0 or less.
#
#   systemd/check.sh [BUILD_DIR]     # default: $CARGO_TARGET_DIR/release or target/release
#
# Any architecture's binary will do: verify checks that ExecStart= is an executable file,
# it does not run it.
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=${1:-${CARGO_TARGET_DIR:-target}/release}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

make -s install DESTDIR="$root" PREFIX=/usr BUILD_DIR="$build_dir"

# verify resolves every path inside --root: ExecReload= needs /bin/kill (merged /usr here,
# so /bin is a link to usr/bin), and the dependencies the unit gets by default
# (sysinit.target, shutdown.target, ...) must load. Take both from this host.
ln -s usr/bin "$root/bin"
cp "$(type -P kill)" "$root/usr/bin/kill"
cp /usr/lib/systemd/system/*.target "$root/usr/lib/systemd/system/"

verify() {
  local out
  # Warnings (unknown keys, bad values) do not change verify's exit code: treat any output
  # as a failure.
  if ! out=$(systemd-analyze verify --man=no --generators=no --root="$root" octomild.service 2>&1) \
    || [ -n "$out" ]; then
    echo "systemd-analyze verify failed ($1):" >&2
    echo "$out" >&2
    exit 1
  fi
  echo "verify ok ($1)"
}
verify "octomild.service"
dropin="$root/etc/systemd/system/octomild.service.d"
mkdir -p "$dropin"
cp systemd/octomild-plain-credentials.conf "$dropin/plain-credentials.conf"
verify "with the plain-credentials drop-in"

# The exposure is printed on a 0.0-10.0 scale but --threshold compares the internal 0-100
# value: 20 fails anything above 2.0.
if ! out=$(systemd-analyze security --offline=yes --threshold=20 \
  "$root/usr/lib/systemd/system/octomild.service" 2>&1); then
  echo "$out" >&2
  echo "octomild.service: exposure above 2.0 (see the table above)" >&2
  exit 1
fi
echo "$out" | tail -n 1
