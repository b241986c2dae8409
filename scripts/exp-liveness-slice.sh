#!/usr/bin/env bash
# Liveness walk in slices vs all at once: p99 at 1M heartbeats/s (2M devices, one per
# datagram, so each device every 2 s and ~10,000 wheel rechecks per 10 ms tick), with
# the adaptive wait and with `--wait-us 0`. io_uring engine, server on CPU 0, load on
# CPU 1, every setting a `--variant` interleaved run by run (3 runs each).
#
# usage: scripts/exp-liveness-slice.sh [OUT_DIR]   (env: DEVICES=2000000 RATE=1000000 RUNS=3)
# Sends only to 127.0.0.1; every run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results}
DEVICES=${DEVICES:-2000000}
RATE=${RATE:-1000000}
RUNS=${RUNS:-3}
cargo build --release --locked --workspace -q
target/release/ringbeat-bench sweep --kind rate --results "$OUT" --name liveness-slice \
  --devices "$DEVICES" --rates "$RATE" --runs "$RUNS" --duration 7 --warmup 2 \
  --variant "whole-tick=--liveness-slice 0" --variant "slice-256=" \
  --variant "whole-tick-wait0=--liveness-slice 0 --wait-us 0" --variant "slice-256-wait0=--wait-us 0"
