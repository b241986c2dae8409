#!/usr/bin/env bash
# TCP against UDP in the same runs: 2M devices, 32 heartbeats per datagram (UDP) or per
# gateway write (TCP, streamed over 64 connections), a rate scan; variants `udp`,
# `tcp` (io_uring, incremental buffers where the kernel has them), `tcp-bundles`
# (plain buffers with receive bundles, as on 6.10-6.11), `tcp-plain-buffers` (plain,
# no bundles, as before 6.10) and `tcp-epoll`, interleaved run by run. Server on
# CPU 0, load on CPU 1.
#
# usage: scripts/exp-tcp.sh [OUT_DIR]
#   env: RUNS=3 RATES=5000000,10000000,20000000 CONNECTIONS=64
# Sends only to 127.0.0.1; every run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results}
RUNS=${RUNS:-3}
RATES=${RATES:-5000000,10000000,20000000}
CONNECTIONS=${CONNECTIONS:-64}
cargo build --release --locked --workspace -q
target/release/ringbeat-bench sweep --kind rate --results "$OUT" --name "tcp-batch32" \
  --devices 2000000 --rates "$RATES" --batch 32 --runs "$RUNS" --duration 8 \
  --variant "udp=--proto=udp" \
  --variant "tcp=--proto=tcp --connections=$CONNECTIONS" \
  --variant "tcp-bundles=RINGBEAT_TCP_PLAIN_BUFFERS=1 --proto=tcp --connections=$CONNECTIONS" \
  --variant "tcp-plain-buffers=RINGBEAT_TCP_PLAIN_BUFFERS=1 RINGBEAT_TCP_NO_BUNDLES=1 --proto=tcp --connections=$CONNECTIONS" \
  --variant "tcp-epoll=--proto=tcp --connections=$CONNECTIONS --engine epoll"
