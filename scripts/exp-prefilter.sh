#!/usr/bin/env bash
# Experiment 5: the in-kernel prefilter. Valid heartbeats (every one asks for an ack)
# with a garbage flood beside them (bad lengths and magics), with and without
# `--kernel-prefilter`, on the io_uring and epoll engines: valid heartbeats lost (acks
# missing; must be 0 either way), malformed datagrams the server had to look at, kernel
# drops (the prefilter's drops are counted there) and server CPU. 3 runs each,
# interleaved, server on CPU 0, load and flood on CPU 1.
#
# usage: scripts/exp-prefilter.sh [OUT_DIR]
#   env: RATE=200000 GARBAGE_RATE=300000 DEVICES=200000 RUNS=3
# Sends only to 127.0.0.1; every run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results}
RATE=${RATE:-200000}
GARBAGE_RATE=${GARBAGE_RATE:-300000}
DEVICES=${DEVICES:-200000}
RUNS=${RUNS:-3}
cargo build --release --locked --workspace -q
variants=()
for e in uring epoll; do
  variants+=(--variant "$e-plain=--engine $e" --variant "$e-prefilter=--engine $e --kernel-prefilter")
done
target/release/ringbeat-bench sweep --kind rate --results "$OUT" --name prefilter \
  --devices "$DEVICES" --rates "$RATE" --garbage-rate "$GARBAGE_RATE" --ack-every-datagrams 1 \
  --runs "$RUNS" --duration 8 "${variants[@]}"
