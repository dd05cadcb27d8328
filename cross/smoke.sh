#!/usr/bin/env bash
# Smoke test of a cross-built daemon under qemu-user: the native octomil-cloud on loopback,
# the foreign octomild registers with it, serves a device key over its socket, and stops
# cleanly on SIGTERM. Proves the binary CI built for the board really works, end to end.
#
#   cross/smoke.sh TARGET BINARY [NATIVE_BUILD_DIR]
#
# NATIVE_BUILD_DIR holds native octomil-cloud and octomild (the client side), default
# $CARGO_TARGET_DIR/debug or target/debug: what `cargo test --workspace` leaves behind.
set -euo pipefail

target=${1:?usage: cross/smoke.sh TARGET BINARY [NATIVE_BUILD_DIR]}
binary=$(realpath "${2:?usage: cross/smoke.sh TARGET BINARY [NATIVE_BUILD_DIR]}")
native=$(realpath "${3:-${CARGO_TARGET_DIR:-target}/debug}")

case $target in
  aarch64-unknown-linux-gnu) runner=(qemu-aarch64 -L /usr/aarch64-linux-gnu) ;;
  armv7-unknown-linux-gnueabihf) runner=(qemu-arm -L /usr/arm-linux-gnueabihf) ;;
  aarch64-unknown-linux-musl) runner=(qemu-aarch64) ;;
  x86_64-unknown-linux-musl) runner=() ;;
  *)
    echo "no runner for $target" >&2
    exit 2 ;;
esac

dir=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

# Polls "$@" every 0.1 s until it succeeds; gives up after $1 seconds, printing $2's log.
poll() {
  local secs=$1 log=$2
  shift 2
  local deadline=$(($(date +%s) + secs))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "timed out after ${secs}s waiting for: $*" >&2
      cat "$log" >&2
      exit 1
    fi
    sleep 0.1
  done
}

"$native/octomil-cloud" serve --state-dir "$dir/cloud" >"$dir/cloud.log" 2>&1 &
pids+=($!)
poll 60 "$dir/cloud.log" test -f "$dir/cloud/cloud.json"
url=$(sed -n 's/.*"http_url": *"\([^"]*\)".*/\1/p' "$dir/cloud/cloud.json")

cat >"$dir/octomild.toml" <<TOML
cloud_url = "$url"
ca_file = "$dir/cloud/ca.pem"
bootstrap_token_file = "$dir/cloud/bootstrap_token"
device_id = "smoke-$target"
state_dir = "$dir/state"
socket = "$dir/run/octomild.sock"
TOML
"${runner[@]}" "$binary" run --config "$dir/octomild.toml" >"$dir/octomild.log" 2>&1 &
daemon=$!
pids+=("$daemon")
# `octomild status` exits 0 only once the device is registered and holds a valid key.
poll 120 "$dir/octomild.log" "$native/octomild" status --socket "$dir/run/octomild.sock"
token=$("$native/octomild" token --socket "$dir/run/octomild.sock")
case $token in
  edg_live_* | edg_test_*) ;;
  *)
    echo "unexpected token answer: $token" >&2
    exit 1 ;;
esac

kill -TERM "$daemon"
status=0
wait "$daemon" || status=$?
[ "$status" = 0 ] || {
  echo "octomild exited $status on SIGTERM" >&2
  cat "$dir/octomild.log" >&2
  exit 1
}
echo "$target: $(basename "$binary") registered as smoke-$target, served a key, stopped cleanly"
