#!/usr/bin/env bash
# Where the latency tail comes from: idle CPUs that halt and take long to wake. p99 at
# 1M heartbeats/s (2M devices) at 1 and 32 heartbeats per datagram, with the kernel's
# default idle behaviour and with `--cpu-dma-latency-us 0` (the server holds a PM QoS
# request keeping every CPU out of slow idle states). io_uring engine, server on CPU 0,
# load on CPU 1, interleaved run by run (3 runs each). Needs root (PM QoS).
#
# usage: sudo scripts/exp-wake-latency.sh [OUT_DIR]   (env: DEVICES=2000000 RATE=1000000 RUNS=3)
# Sends only to 127.0.0.1; every run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results}
DEVICES=${DEVICES:-2000000}
RATE=${RATE:-1000000}
RUNS=${RUNS:-3}
cargo build --release --locked --workspace -q
variants=(--variant "default=" --variant "no-deep-idle=--cpu-dma-latency-us 0")
common=(--kind rate --results "$OUT" --devices "$DEVICES" --rates "$RATE" --runs "$RUNS" --duration 8)
target/release/ringbeat-bench sweep "${common[@]}" --name wake-latency-batch1 --batch 1 \
  --ack-every-datagrams 100 "${variants[@]}"
target/release/ringbeat-bench sweep "${common[@]}" --name wake-latency-batch32 --batch 32 \
  --ack-every-datagrams 10 "${variants[@]}"
