#!/usr/bin/env bash
# Experiment 2: wake-up batching. `--wait-us` 0 … 500 and the adaptive default, at a
# light and a heavy rate: server CPU per heartbeat against p99 latency, the trade-off
# curve and where the default sits on it. io_uring engine, one shard on CPU 0, load on
# CPU 1, every setting a `--variant` interleaved run by run (3 runs each).
#
# usage: scripts/exp-wait-us.sh [OUT_DIR]
#   env: WAITS="0 20 50 100 500" RATES="300000 1000000" DEVICES=1000000 RUNS=3
# Sends only to 127.0.0.1; every run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results}
WAITS=${WAITS:-"0 20 50 100 500"}
RATES=${RATES:-"300000 1000000"}
DEVICES=${DEVICES:-1000000}
RUNS=${RUNS:-3}
cargo build --release --locked --workspace -q
variants=(--variant "adaptive=")
for w in $WAITS; do variants+=(--variant "wait-$w=--wait-us $w"); done
for r in $RATES; do
  target/release/ringbeat-bench sweep --kind rate --results "$OUT" --name "wait-us-$r" \
    --devices "$DEVICES" --rates "$r" --runs "$RUNS" --duration 8 "${variants[@]}"
done
