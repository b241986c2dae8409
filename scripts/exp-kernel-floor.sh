#!/usr/bin/env bash
# The kernel's floor at one heartbeat per datagram: the server against the bare
# receiver (`ringbeat-bench sink`: non-blocking recvmmsg in batches of 64, a 50 µs nap
# when empty, nothing else) at the same loads, interleaved run by run, so that the
# server's cost above the kernel's receive path is a ratio measured in one run.
# Variants: the sink, the server with its defaults (adaptive: 200 µs batches from
# 800K completions/s) and with fixed wake-up batches (50 µs: what the adaptive default
# did at every busy rate before). The last rate is beyond one core (overload: what
# each keeps applying while dropping).
#
# BATCH=32 measures the same at 32 heartbeats per datagram (1 KiB datagrams): the
# sink's figure, times 32, is what one core could take if the shard's own work cost
# nothing. ENGINES="epoll" adds the server on those engines as variants too.
#
# usage: scripts/exp-kernel-floor.sh [OUT_DIR]
#   env: RATES="1000000,1500000,2000000" DEVICES=2000000 RUNS=3 WAITS="50 200"
#        BATCH=1 ENGINES= NAME=kernel-floor (BATCH other than 1: kernel-floor-batchN)
# Sends only to 127.0.0.1; every run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results}
RATES=${RATES:-"1000000,1500000,2000000"}
DEVICES=${DEVICES:-2000000}
RUNS=${RUNS:-3}
WAITS=${WAITS-"50 200"}
BATCH=${BATCH:-1}
ENGINES=${ENGINES:-}
NAME=${NAME:-kernel-floor}
[ "$BATCH" = 1 ] || NAME=${NAME/%kernel-floor/kernel-floor-batch$BATCH}
cargo build --release --locked --workspace -q
variants=(--variant "default=")
for w in $WAITS; do variants+=(--variant "wait-$w=--wait-us $w"); done
for e in $ENGINES; do variants+=(--variant "$e=--engine $e"); done
target/release/ringbeat-bench sweep --kind rate --results "$OUT" --name "$NAME" \
  --devices "$DEVICES" --rates "$RATES" --batch "$BATCH" --runs "$RUNS" --duration 8 \
  --sink-baseline "${variants[@]}"
