#!/usr/bin/env bash
# Where the server's CPU goes at one load, per engine: the server on CPU 0 (--cores 0),
# the load on CPU 1, and after the devices have appeared `perf record` samples CPU 0
# for PERF_S seconds while the load's own report gives heartbeats per server
# core-second. Writes each engine's top symbols, user/kernel split and rate.
#
# usage: scripts/exp-profile.sh [OUT_DIR]
#   env: ENGINES="uring epoll" RATE=20000000 BATCH=32 DEVICES=2000000 PERF_S=5
# Needs perf (Debian package linux-perf) and root. Sends only to 127.0.0.1; each run
# stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results}
ENGINES=${ENGINES:-uring epoll}
RATE=${RATE:-20000000}
BATCH=${BATCH:-32}
DEVICES=${DEVICES:-2000000}
PERF_S=${PERF_S:-5}
command -v perf >/dev/null || { echo "exp-profile: needs perf (apt-get install linux-perf)" >&2; exit 1; }
dir="$OUT/$(date -u +%Y-%m-%d)-profile-batch$BATCH"
[ -e "$dir" ] && { echo "exp-profile: $dir exists; give another OUT_DIR (results are never overwritten)" >&2; exit 1; }
cargo build --release --locked --workspace -q
mkdir -p "$dir/raw"
{
  echo "revision: $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (uncommitted changes)')"
  echo "kernel: $(uname -r)"; echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-) ($(nproc) CPUs)"
  echo "load: $DEVICES devices, $RATE hb/s offered, $BATCH per datagram; perf on CPU 0 for $PERF_S s after 14 s"
} > "$dir/environment.txt"
for engine in $ENGINES; do
  target/release/ringbeat serve --listen 127.0.0.1:7979 --cores 0 --quiet --max-devices 4194304 \
    --engine "$engine" --stats-json "$dir/raw/$engine.server.json" --stats-interval 1 \
    --run-for 40 2> "$dir/raw/$engine.server.log" &
  server=$!
  sleep 1
  target/release/ringbeat-bench load --target 127.0.0.1:7979 --devices "$DEVICES" --rate "$RATE" \
    --batch "$BATCH" --duration 20 --warmup 8 --cpus 1 --server-pid "$server" \
    --server-stats "$dir/raw/$engine.server.json" --json "$dir/raw/$engine.load.json" \
    > "$dir/raw/$engine.load.log" 2>&1 &
  load=$!
  sleep 14
  perf record -q -C 0 -o "$dir/raw/$engine.perf.data" -- sleep "$PERF_S" 2> /dev/null
  wait "$load"
  kill -TERM "$server"; wait "$server" || true
  perf report -i "$dir/raw/$engine.perf.data" --stdio --sort sym 2> /dev/null \
    | grep -E '^\s+[0-9.]+%' > "$dir/raw/$engine.symbols.txt"
  rm -f "$dir/raw/$engine.perf.data"
done
python3 - "$dir" "$ENGINES" "$RATE" "$BATCH" "$DEVICES" <<'PY'
import json, sys
d, engines, rate, batch, devices = sys.argv[1:]
engines = engines.split()
lines = [f"# Where the server's CPU goes: {int(rate):,} hb/s offered, {batch} per datagram, {int(devices):,} devices", "",
         "```sh", f"ENGINES=\"{' '.join(engines)}\" RATE={rate} BATCH={batch} DEVICES={devices} scripts/exp-profile.sh", "```", "",
         "| engine | hb per server core-second | user | kernel |", "|---|---|---|---|"]
tops = {}
for e in engines:
    rows = []
    for line in open(f"{d}/raw/{e}.symbols.txt"):
        share, kind, sym = line.split(None, 2)
        rows.append((float(share.rstrip('%')), kind, sym.strip()))
    tops[e] = rows
    user = sum(s for s, k, _ in rows if k == "[.]")
    kernel = sum(s for s, k, _ in rows if k == "[k]")
    server = json.load(open(f"{d}/raw/{e}.load.json")).get("server") or {}
    hb = server.get("heartbeats_per_core_second")
    lines.append(f"| {e} | {f'{hb / 1e6:.2f}M' if hb else 'not measured'} | {user:.1f}% | {kernel:.1f}% |")
lines += ["", "Top 20 symbols on the server's CPU (share of its samples):", ""]
for e in engines:
    lines += [f"**{e}**", "", "| share | | symbol |", "|---|---|---|"]
    lines += [f"| {s:.2f}% | {'user' if k == '[.]' else 'kernel'} | `{sym}` |" for s, k, sym in tops[e][:20]]
    lines.append("")
lines.append("Raw: `raw/<engine>.symbols.txt` (every symbol), the load's JSON and log, the server's stats.")
open(f"{d}/README.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
