#!/usr/bin/env bash
# Liveness walk in slices vs all at once: p99 at 1M heartbeats/s (2M devices, so each
# device every 2 s and ~10,000 wheel rechecks per 10 ms tick), 32 heartbeats per
# datagram, with the kernel's default idle states and with `--cpu-dma-latency-us 0`
# (which takes idle wake-ups out of the tail, see exp-wake-latency.sh). io_uring engine,
# server on CPU 0, load on CPU 1, every setting a `--variant` interleaved run by run (3
# runs each). Needs root for the PM QoS variants.
#
# usage: sudo scripts/exp-liveness-slice.sh [OUT_DIR]   (env: DEVICES=2000000 RATE=1000000 RUNS=3)
# Sends only to 127.0.0.1; every run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results}
DEVICES=${DEVICES:-2000000}
RATE=${RATE:-1000000}
RUNS=${RUNS:-3}
cargo build --release --locked --workspace -q
target/release/ringbeat-bench sweep --kind rate --results "$OUT" --name liveness-slice \
  --devices "$DEVICES" --rates "$RATE" --batch 32 --ack-every-datagrams 10 \
  --runs "$RUNS" --duration 8 \
  --variant "whole-tick=--liveness-slice 0" --variant "slice-256=" \
  --variant "whole-tick-no-deep-idle=--liveness-slice 0 --cpu-dma-latency-us 0" \
  --variant "slice-256-no-deep-idle=--cpu-dma-latency-us 0"
