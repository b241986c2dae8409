#!/usr/bin/env bash
# What --allow costs: the same load with no allowlist and with a four-entry one (the
# load's 127.0.0.0/8 last, so every datagram is compared against all four), at one
# heartbeat per datagram (where a per-datagram check weighs most) and at 32, variants
# interleaved run by run. Server on CPU 0, load on CPU 1; sends only to 127.0.0.1.
#
# usage: scripts/exp-allowlist.sh [OUT_DIR]   env: RUNS=3
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results}
RUNS=${RUNS:-3}
cargo build --release --locked --workspace -q
allow="--allow=10.0.0.0/8 --allow=192.168.0.0/16 --allow=fd00::/8 --allow=127.0.0.0/8"
target/release/ringbeat-bench sweep --kind rate --results "$OUT" --name allowlist-batch1 \
  --devices 200000 --rates 1500000,3000000 --batch 1 --runs "$RUNS" --duration 8 \
  --variant "none=" --variant "allow=$allow"
target/release/ringbeat-bench sweep --kind rate --results "$OUT" --name allowlist-batch32 \
  --devices 2000000 --rates 20000000 --batch 32 --runs "$RUNS" --duration 8 \
  --variant "none=" --variant "allow=$allow"
