#!/usr/bin/env bash
# The unit under a real systemd: installs octomild (`make install`, as from the tarball) into
# a Debian 12 minbase tree, boots it with systemd-nspawn, and follows docs/install.md's install
# walk-through against a native octomil-cloud on loopback (the container shares the host's
# network): encrypted credentials, registration, the socket's owner, group and mode, a group
# member served and a stranger refused, reload, restart without the bootstrap token.
#
#   systemd/nspawn-test.sh [BUILD_DIR]   # native octomild and octomil-cloud; default
#                                        # $CARGO_TARGET_DIR/debug or target/debug
#
# Needs root, debootstrap and systemd-container (installed if missing), and Debian 12's
# packages from wherever this machine's own apt sources get them (debootstrap's default when
# they name no bookworm archive).
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=$(realpath "${1:-${CARGO_TARGET_DIR:-target}/debug}")
need=""
command -v debootstrap >/dev/null || need="$need debootstrap"
command -v systemd-nspawn >/dev/null || need="$need systemd-container"
if [ -n "$need" ]; then
  apt-get update -qq
  # shellcheck disable=SC2086 # a list of package names, split on purpose
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need
fi

work=$(mktemp -d)
root="$work/root"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # nspawn powers the container off on SIGTERM; wait so that nothing is mounted below $work.
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  done
  rm -rf "$work"
}
trap cleanup EXIT

# Polls "$@" every 0.1 s until it succeeds; gives up after $1 seconds.
poll() {
  local secs=$1
  shift
  local deadline=$(($(date +%s) + secs))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "timed out waiting for: $*" >&2; return 1; }
    sleep 0.1
  done
}

# The archive this machine's apt already uses for bookworm's main component, if any: no host
# is named here. Without one, debootstrap picks its own default.
archive=$(apt-get indextargets --format '$(REPO_URI)' 'Release: bookworm' 'Component: main' \
  'Identifier: Packages' 2>/dev/null | head -n 1 || true)
# procps: /bin/kill for ExecReload= (the .deb depends on it; a tarball install needs it too).
# shellcheck disable=SC2086 # $archive is one URL or nothing
debootstrap --variant=minbase --include=systemd,procps bookworm "$root" $archive \
  >"$work/debootstrap.log" 2>&1 \
  || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
make -s install DESTDIR="$root" PREFIX=/usr BUILD_DIR="$build_dir"
chroot "$root" systemd-sysusers octomil.conf
chroot "$root" systemctl enable octomild.service

"$build_dir/octomil-cloud" serve --state-dir "$work/cloud" >"$work/cloud.log" 2>&1 &
pids+=($!)
poll 60 test -f "$work/cloud/cloud.json"
url=$(sed -n 's/.*"http_url": *"\([^"]*\)".*/\1/p' "$work/cloud/cloud.json")
cp "$work/cloud/ca.pem" "$root/root/ca.pem"
cp "$work/cloud/bootstrap_token" "$root/root/bootstrap_token"

# --keep-unit and --register=no: there is no systemd or machined on the host side to ask.
systemd-nspawn -q --keep-unit --register=no -D "$root" -b --console=pipe \
  >"$work/nspawn.log" 2>&1 </dev/null &
nspawn=$!
pids+=("$nspawn")
# The container's PID 1, seen from here: the systemd that descends from our nspawn.
init_pid() {
  local p q
  for p in $(pgrep -x systemd); do
    q=$p
    while [ -n "$q" ] && [ "$q" -gt 1 ]; do
      [ "$q" = "$nspawn" ] && { echo "$p"; return 0; }
      q=$(ps -o ppid= -p "$q" | tr -d ' ')
    done
  done
  return 1
}
poll 60 init_pid || { cat "$work/nspawn.log" >&2; exit 1; }
init=$(init_pid)
in_container() { nsenter -t "$init" -a /bin/bash -c "$1"; }
poll 60 in_container 'systemctl is-system-running | grep -qE "running|degraded"'

in_container "
set -euo pipefail
# Installed but not configured: skipped, not failed.
systemctl show octomild -p ConditionResult | grep -q no
systemd-tmpfiles --create octomil.conf
install -m 0644 /root/ca.pem /etc/octomil/ca.pem
cp /etc/octomil/octomild.toml.example /etc/octomil/octomild.toml
sed -i 's|^cloud_url = .*|cloud_url = \"$url\"|' /etc/octomil/octomild.toml
gid=\$(getent group octomil-clients | cut -d: -f3)
sed -i \"s|^#allowed_gids = .*|allowed_gids = [\$gid]|\" /etc/octomil/octomild.toml
systemd-creds setup 2>/dev/null
head -c 32 /dev/urandom | systemd-creds encrypt --name=octomil-seal-key - \
  /etc/credstore.encrypted/octomil-seal-key 2>/dev/null
systemd-creds encrypt --name=octomil-bootstrap-token /root/bootstrap_token \
  /etc/credstore.encrypted/octomil-bootstrap-token 2>/dev/null
rm /root/bootstrap_token
systemctl start octomild
for i in \$(seq 1 300); do octomild status >/dev/null 2>&1 && break; sleep 0.1; done
octomild status
journalctl -u octomild | grep -q 'source=SystemdCredential'
stat -c '%A %U %G' /run/octomil/octomild.sock | grep -qx 'srw-rw---- octomil octomil-clients'
stat -c '%a %U' /var/lib/octomil | grep -qx '700 octomil'
useradd -m member && usermod -aG octomil-clients member && useradd -m stranger
su -s /bin/sh member -c 'octomild token' | grep -q '^edg_'
rc=0; su -s /bin/sh stranger -c 'octomild token' >/dev/null 2>&1 || rc=\$?
[ \"\$rc\" = 77 ] || { echo \"stranger got exit \$rc, want 77\"; exit 1; }
systemctl reload octomild
rm /etc/credstore.encrypted/octomil-bootstrap-token
systemctl restart octomild
for i in \$(seq 1 300); do octomild status >/dev/null 2>&1 && break; sleep 0.1; done
octomild status >/dev/null
[ \"\$(systemctl show octomild -p NRestarts --value)\" = 0 ]
systemctl show octomild -p StatusText -p WatchdogUSec
" || {
  echo "walk-through failed; the daemon's journal:" >&2
  in_container 'journalctl -u octomild --no-pager | tail -40' >&2 || true
  exit 1
}
echo "nspawn: octomild installed, registered, served its group and refused others, reloaded and restarted under systemd $(in_container 'systemctl --version | head -1 | cut -d" " -f2')"
