#!/usr/bin/env bash
# Runs the whole system on this machine with embedded defaults: builds the binaries,
# starts octomil-cloud on a free loopback port with a temp state dir, and walks through
# the operator CLI. Ctrl-C stops everything and removes the temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bins --locked
bin=target/release
state=$(mktemp -d /tmp/octomil-local.XXXXXX)
trap 'kill "${cloud_pid:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$state"' EXIT INT TERM

"$bin/octomil-cloud" serve --state-dir "$state/cloud" 2>"$state/cloud.log" &
cloud_pid=$!
for _ in $(seq 300); do [ -f "$state/cloud/cloud.json" ] && break; sleep 0.1; done
[ -f "$state/cloud/cloud.json" ] || { cat "$state/cloud.log"; exit 1; }

json() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$state/cloud/cloud.json" "$1"; }
export OCTOMIL_API_URL=$(json http_url)
export OCTOMIL_CA_FILE=$(json ca_file)
export OCTOMIL_API_KEY=$(cat "$(json owner_api_key_file)")

say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "$*"; "$@"; }

echo "octomil-cloud is up at $OCTOMIL_API_URL (state: $state/cloud, log: $state/cloud.log)"
run "$bin/octomil" org settings
run "$bin/octomil" api-keys create --name ci-pipeline --scopes models:read,models:write,rollouts:write
run "$bin/octomil" org members add user@example.com --role admin
run "$bin/octomil" org settings --device-token-expiry 48h
run "$bin/octomil" bootstrap-tokens create --max-uses 10 --expires-in 7d
run "$bin/octomil" devices list

cat <<MSG

Use the CLI from another shell with:
  export OCTOMIL_API_URL=$OCTOMIL_API_URL
  export OCTOMIL_CA_FILE=$OCTOMIL_CA_FILE
  export OCTOMIL_API_KEY=\$(cat $(json owner_api_key_file))
Press Ctrl-C to stop.
MSG
wait "$cloud_pid"
