#!/usr/bin/env bash
# Snapshots never stall a shard: latency at 1M heartbeats/s from 2M devices with a
# snapshot every 2 s (each a 2M-device, 112 MB file) against none, interleaved run by
# run (variants `no-snapshot` and `snapshot-every-2s`; --no-restore so every run starts
# empty and the warm-ups match).
#
# usage: scripts/exp-snapshot.sh [OUT_DIR]
#   env: RUNS=3 BATCH=32 RATE=1000000 DEVICES=2000000 EVERY=2
# Sends only to 127.0.0.1; every run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results}
RUNS=${RUNS:-3}
BATCH=${BATCH:-32}
RATE=${RATE:-1000000}
DEVICES=${DEVICES:-2000000}
EVERY=${EVERY:-2}
snap_dir=$(mktemp -d /tmp/ringbeat-snapshot-XXXXXX)
trap 'rm -rf "$snap_dir"' EXIT
cargo build --release --locked --workspace -q
target/release/ringbeat-bench sweep --kind rate --results "$OUT" --name "snapshot-batch$BATCH" \
  --devices "$DEVICES" --rates "$RATE" --batch "$BATCH" --runs "$RUNS" --duration 13 \
  --variant "no-snapshot=" \
  --variant "snapshot-every-${EVERY}s=--snapshot $snap_dir/devices.snap --snapshot-interval $EVERY --no-restore"
