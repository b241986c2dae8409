#!/usr/bin/env bash
# What the device registry and authenticated (version-2) heartbeats cost: the same load
# against the server without a registry (v1), with a registry of every device without
# keys (v1-registry: one lookup per frame), and with keys, the load sending version-2
# frames (v2: a lookup, a SipHash-2-4-128 tag check and a replay window per frame), at
# one heartbeat per datagram and at 32 (at saturation, and at a steady 4M per second),
# variants interleaved run by run; and the steady load again with 100K devices (their
# registry, windows and table fit in the caches: what the tags and the checks cost by
# themselves); and a steady load over TCP. Server on CPU
# 0, load on CPU 1; sends only to 127.0.0.1. The devices files (random keys) are
# written to a temporary folder and removed afterwards.
#
# usage: scripts/exp-auth.sh [OUT_DIR]
#   env: RUNS=3 SUFFIX= (appended to each results folder's name, e.g. to measure again
#   on a day that already has them)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results}
RUNS=${RUNS:-3}
SUFFIX=${SUFFIX:-}
cargo build --release --locked --workspace -q
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 scripts/devices-file.py 2000000 --out "$tmp/keys.txt"
python3 scripts/devices-file.py 2000000 --no-keys --out "$tmp/ids.txt"
python3 scripts/devices-file.py 100000 --out "$tmp/keys100k.txt"
python3 scripts/devices-file.py 100000 --no-keys --out "$tmp/ids100k.txt"
variants=(--variant "v1=" --variant "v1-registry=--devices-file=$tmp/ids.txt"
  --variant "v2=--devices-file=$tmp/keys.txt --auth-keys=$tmp/keys.txt")
target/release/ringbeat-bench sweep --kind rate --results "$OUT" --name auth-batch1"$SUFFIX" \
  --devices 200000 --rates 1500000,3000000 --batch 1 --runs "$RUNS" --duration 8 \
  "${variants[@]}"
target/release/ringbeat-bench sweep --kind rate --results "$OUT" --name auth-batch32"$SUFFIX" \
  --devices 2000000 --rates 20000000 --batch 32 --runs "$RUNS" --duration 8 \
  "${variants[@]}"
# A load the version-2 generator holds steady (the 20M above arrives in bursts): below
# version 1's saturation, so compare the CPU each variant needs for the same heartbeats.
target/release/ringbeat-bench sweep --kind rate --results "$OUT" --name auth-batch32-steady"$SUFFIX" \
  --devices 2000000 --rates 4000000 --batch 32 --runs "$RUNS" --duration 8 \
  "${variants[@]}"
target/release/ringbeat-bench sweep --kind rate --results "$OUT" --name auth-batch32-steady-100k"$SUFFIX" \
  --devices 100000 --rates 4000000 --batch 32 --runs "$RUNS" --duration 8 \
  --variant "v1=" --variant "v1-registry=--devices-file=$tmp/ids100k.txt" \
  --variant "v2=--devices-file=$tmp/keys100k.txt --auth-keys=$tmp/keys100k.txt"
# The steady load again over TCP (64 connections; each write a gateway's 32 frames).
target/release/ringbeat-bench sweep --kind rate --results "$OUT" --name auth-tcp-batch32-steady"$SUFFIX" \
  --devices 2000000 --rates 2000000 --batch 32 --runs "$RUNS" --duration 8 \
  --variant "v1=--proto=tcp --connections=64" \
  --variant "v1-registry=--proto=tcp --connections=64 --devices-file=$tmp/ids.txt" \
  --variant "v2=--proto=tcp --connections=64 --devices-file=$tmp/keys.txt --auth-keys=$tmp/keys.txt"
