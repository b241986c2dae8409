#!/usr/bin/env bash
# Checks deploy/systemd/ringbeat.service with `systemd-analyze verify`, against the
# binary built here (installed under a temporary root at the unit's paths).
#
# usage: scripts/verify-systemd.sh [RINGBEAT_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/ringbeat}
[ -x "$bin" ] || { echo "no ringbeat binary at $bin: cargo build --release first" >&2; exit 1; }
root=$(mktemp -d /tmp/ringbeat-unit-XXXXXX)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/local/bin" "$root/etc/systemd/system"
cp "$bin" "$root/usr/local/bin/ringbeat"
# The unit with its paths moved under the temporary root (verify checks that every
# executable it names exists).
sed "s|/usr/local/bin/ringbeat|$root/usr/local/bin/ringbeat|g" deploy/systemd/ringbeat.service \
  > "$root/etc/systemd/system/ringbeat.service"
out=$(SYSTEMD_LOG_LEVEL=warning systemd-analyze verify "$root/etc/systemd/system/ringbeat.service" 2>&1 || true)
# Warnings about units this one does not own (the host's) are not its problems.
mine=$(printf '%s\n' "$out" | grep -F "ringbeat.service" || true)
if [ -n "$mine" ]; then
  printf '%s\n' "$mine" >&2
  exit 1
fi
echo "deploy/systemd/ringbeat.service: verified"
