#!/usr/bin/env bash
# Where the server's CPU goes at one load, per engine: the server on CPU 0 (--cores 0),
# the load on CPU 1, and after the devices have appeared `perf record` samples CPU 0
# for PERF_S seconds while the load's own report gives heartbeats per server
# core-second. Writes each engine's top symbols, user/kernel split and rate, and what
# each layer costs per datagram received (the shard core, the engine's own code, the
# engine's kernel layer -- io_uring's, or the recvmmsg/sendmmsg/epoll system calls --,
# system call entry, and the kernel's network path both share): the layer's share of
# the CPU's busy samples times the shard's CPU time per datagram. With RUNS > 1 the
# engines alternate run by run (each run starting one engine further on) and the
# tables give medians over runs.
#
# usage: scripts/exp-profile.sh [OUT_DIR]
#   env: ENGINES="uring epoll" RATE=20000000 BATCH=32 DEVICES=2000000 PERF_S=5 RUNS=1
#        NAME=profile-batch$BATCH (the folder is OUT_DIR/<date>-NAME)
# Needs perf (Debian package linux-perf) and root. Sends only to 127.0.0.1; each run
# stops by itself (about 50 s per engine and run).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results}
ENGINES=${ENGINES:-uring epoll}
RATE=${RATE:-20000000}
BATCH=${BATCH:-32}
DEVICES=${DEVICES:-2000000}
PERF_S=${PERF_S:-5}
RUNS=${RUNS:-1}
NAME=${NAME:-profile-batch$BATCH}
command -v perf >/dev/null || { echo "exp-profile: needs perf (apt-get install linux-perf)" >&2; exit 1; }
dir="$OUT/$(date -u +%Y-%m-%d)-$NAME"
[ -e "$dir" ] && { echo "exp-profile: $dir exists; give another OUT_DIR or NAME (results are never overwritten)" >&2; exit 1; }
cargo build --release --locked --workspace -q
mkdir -p "$dir/raw"
{
  echo "revision: $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (uncommitted changes)')"
  echo "kernel: $(uname -r)"; echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-) ($(nproc) CPUs)"
  echo "load: $DEVICES devices, $RATE hb/s offered, $BATCH per datagram; perf on CPU 0 for $PERF_S s after 14 s; $RUNS run(s) per engine"
} > "$dir/environment.txt"
read -r -a engines <<< "$ENGINES"
for run in $(seq 1 "$RUNS"); do
  for i in "${!engines[@]}"; do
    engine=${engines[$(( (i + run - 1) % ${#engines[@]} ))]}
    raw="$dir/raw/$engine.r$run"
    target/release/ringbeat serve --listen 127.0.0.1:7979 --cores 0 --quiet --max-devices 4194304 \
      --engine "$engine" --stats-json "$raw.server.json" --stats-interval 1 \
      --run-for 40 2> "$raw.server.log" &
    server=$!
    sleep 1
    target/release/ringbeat-bench load --target 127.0.0.1:7979 --devices "$DEVICES" --rate "$RATE" \
      --batch "$BATCH" --duration 20 --warmup 8 --cpus 1 --server-pid "$server" \
      --server-stats "$raw.server.json" --json "$raw.load.json" \
      > "$raw.load.log" 2>&1 &
    load=$!
    sleep 14
    perf record -q -C 0 -o "$raw.perf.data" -- sleep "$PERF_S" 2> /dev/null
    wait "$load"
    kill -TERM "$server"; wait "$server" || true
    perf report -i "$raw.perf.data" --stdio --sort sym 2> /dev/null \
      | grep -E '^\s+[0-9.]+%' > "$raw.symbols.txt"
    rm -f "$raw.perf.data"
  done
done
python3 scripts/profile_summary.py "$dir" "$ENGINES" "$RATE" "$BATCH" "$DEVICES" "$RUNS" "$NAME"
