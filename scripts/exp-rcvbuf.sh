#!/usr/bin/env bash
# Experiment 1: SO_RCVBUF (4 KiB … 64 MiB) under steady load near saturation and under
# bursty load (io_uring engine) — kernel drops, wake-ups/s (the shard threads' voluntary context
# switches, the kernel's own count), heartbeats per wake-up, p99/p999 — for the io_uring
# and epoll engines. One `ringbeat-bench sweep` per load shape, every size and engine a
# `--variant`, interleaved run by run (3 runs each, server on CPU 0, load on CPU 1).
#
# usage: scripts/exp-rcvbuf.sh [OUT_DIR]
#   env: SIZES="4K 64K 256K 1M 4M 64M" ENGINES="uring epoll"
#        BURSTY_ENGINES="uring" DEVICES=1000000
#        STEADY_RATE=1400000 BURSTY_RATE=800000 BURST=100:0.5 RUNS=3
# Sends only to 127.0.0.1; every run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results}
SIZES=${SIZES:-"4K 64K 256K 1M 4M 64M"}
ENGINES=${ENGINES:-"uring epoll"}
BURSTY_ENGINES=${BURSTY_ENGINES:-uring}
DEVICES=${DEVICES:-1000000}
STEADY_RATE=${STEADY_RATE:-1400000}
BURSTY_RATE=${BURSTY_RATE:-800000}
BURST=${BURST:-100:0.5}
RUNS=${RUNS:-3}
cargo build --release --locked --workspace -q
variants_for() {
  variants=()
  for e in "$@"; do
    for s in $SIZES; do variants+=(--variant "$e-$s=--engine $e --rcvbuf $s"); done
  done
}
common=(--kind rate --results "$OUT" --devices "$DEVICES" --runs "$RUNS" --duration 8)
variants_for $ENGINES
target/release/ringbeat-bench sweep "${common[@]}" --name rcvbuf-steady \
  --rates "$STEADY_RATE" "${variants[@]}"
variants_for $BURSTY_ENGINES
target/release/ringbeat-bench sweep "${common[@]}" --name rcvbuf-bursty \
  --rates "$BURSTY_RATE" --burst "$BURST" "${variants[@]}"
