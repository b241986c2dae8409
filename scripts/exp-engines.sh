#!/usr/bin/env bash
# Experiment 3: the three engines on the same core — heartbeats per server core-second
# and latency curves (rate scans up to and past saturation) at 1 and 32 heartbeats per
# datagram, 2M devices, all engines in the same run (interleaved run by run, 3 runs
# each, server on CPU 0, load on CPU 1).
#
# usage: scripts/exp-engines.sh [OUT_DIR]
#   env: DEVICES=2000000 RATES_1="250000,500000,1000000,1500000"
#        RATES_32="4000000,12000000,20000000" RUNS=3
# Sends only to 127.0.0.1; every run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results}
DEVICES=${DEVICES:-2000000}
RATES_1=${RATES_1:-250000,500000,1000000,1500000}
RATES_32=${RATES_32:-4000000,12000000,20000000}
RUNS=${RUNS:-3}
cargo build --release --locked --workspace -q
variants=()
for e in uring epoll tokio-uring; do variants+=(--variant "$e=--engine $e"); done
common=(--kind rate --results "$OUT" --devices "$DEVICES" --runs "$RUNS" --duration 8)
target/release/ringbeat-bench sweep "${common[@]}" --name engines-batch1 --batch 1 \
  --rates "$RATES_1" "${variants[@]}"
target/release/ringbeat-bench sweep "${common[@]}" --name engines-batch32 --batch 32 \
  --rates "$RATES_32" "${variants[@]}"
