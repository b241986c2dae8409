#!/usr/bin/env bash
# Who pays for the kernel's receive path? Over loopback the kernel runs IP/UDP receive
# (softirq) on the *sending* CPU, so the load generator's core, not the server's, pays
# for it; on a NIC whose interrupts go to the server's cores, the server pays. This
# runs the same rate scan twice, with loopback's receive steering (RPS) off and then
# pointed at the server's CPU, for the uring and epoll engines (interleaved, 3 runs
# each; server on CPU 0, load on CPU 1). Needs root for
# /sys/class/net/lo/queues/rx-0/rps_cpus; the old value is restored on exit.
#
# usage: sudo scripts/exp-rps.sh [OUT_DIR]
#   env: DEVICES=1000000 RATES="250000,500000,750000,1000000" RUNS=3
# Sends only to 127.0.0.1; every run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results}
DEVICES=${DEVICES:-1000000}
RATES=${RATES:-250000,500000,750000,1000000}
RUNS=${RUNS:-3}
RPS=/sys/class/net/lo/queues/rx-0/rps_cpus
[ -w "$RPS" ] || { echo "cannot write $RPS (run as root)" >&2; exit 1; }
cargo build --release --locked --workspace -q
old=$(cat "$RPS")
trap 'echo "$old" > "$RPS"' EXIT
variants=(--variant "uring=--engine uring" --variant "epoll=--engine epoll")
common=(--kind rate --results "$OUT" --devices "$DEVICES" --rates "$RATES" --runs "$RUNS" --duration 8)
echo 0 > "$RPS"
target/release/ringbeat-bench sweep "${common[@]}" --name rps-off "${variants[@]}"
echo 1 > "$RPS"   # CPU 0, the server's
target/release/ringbeat-bench sweep "${common[@]}" --name rps-server-cpu "${variants[@]}"
