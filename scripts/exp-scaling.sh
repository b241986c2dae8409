#!/usr/bin/env bash
# How the server scales with shards: for N = 1 .. MAX shards, the server on CPUs
# 0..N-1 and one load generator thread per shard on CPUs N..2N-1, at one heartbeat per
# datagram (each datagram steered to its device's owner: no hand-off) and at 32 (a
# gateway's datagram mixes devices of every shard: (N-1)/N of its frames are handed
# off). For each: heartbeats per second and per server core-second at saturation
# (RATE_HIGH_1 / RATE_HIGH_32 per shard offered), the hand-off share, and p99 latency at
# a moderate load (RATE_LOW_1 / RATE_LOW_32 per shard). Medians of RUNS runs. Sends only
# to 127.0.0.1. On a machine with fewer than 2N CPUs the larger N are left out, and the
# README says so.
#
# usage: scripts/exp-scaling.sh [OUT_DIR]
#   env: RUNS=3 MAX=<nproc/2> DEVICES=2000000 DURATION=7 WARMUP=2
#        RATE_HIGH_1=3000000 RATE_HIGH_32=25000000 RATE_LOW_1=500000 RATE_LOW_32=4000000
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results}
RUNS=${RUNS:-3}
CPUS=$(nproc)
MAX=${MAX:-$((CPUS / 2))}
DEVICES=${DEVICES:-2000000}
DURATION=${DURATION:-7}
WARMUP=${WARMUP:-2}
RATE_HIGH_1=${RATE_HIGH_1:-3000000}
RATE_HIGH_32=${RATE_HIGH_32:-25000000}
RATE_LOW_1=${RATE_LOW_1:-500000}
RATE_LOW_32=${RATE_LOW_32:-4000000}
if [ "$MAX" -lt 1 ]; then
  echo "exp-scaling: needs at least 2 CPUs (one shard, one load generator)" >&2
  exit 1
fi
. scripts/results-dir.sh
require_clean_tree exp-scaling
dir=$(new_results_dir exp-scaling "$OUT" scaling)
cargo build --release --locked --workspace -q
mkdir -p "$dir/raw"
{
  echo "revision: $(git rev-parse HEAD)"
  echo "kernel: $(uname -r)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //') ($CPUS CPUs)"
  echo "shards measured: 1..$MAX (2 CPUs per shard: one for it, one for its load)"
} > "$dir/environment.txt"
port=17979
run() { # shards batch rate tag
  local n=$1 batch=$2 rate=$3 tag=$4
  local stats="$dir/raw/$tag.server.json"
  target/release/ringbeat serve --listen "127.0.0.1:$port" --cores "0-$((n - 1))" --quiet \
    --stats-json "$stats" --stats-interval 0.5 > "$dir/raw/$tag.server.log" 2>&1 &
  local pid=$!
  for _ in $(seq 50); do
    grep -q "listening on" "$dir/raw/$tag.server.log" 2>/dev/null && break
    sleep 0.1
  done
  target/release/ringbeat-bench load --target "127.0.0.1:$port" --devices "$DEVICES" \
    --rate "$rate" --batch "$batch" --duration "$DURATION" --warmup "$WARMUP" \
    --cpus "$n-$((2 * n - 1))" --server-pid "$pid" --server-stats "$stats" \
    --json "$dir/raw/$tag.load.json" > "$dir/raw/$tag.load.txt" 2>&1 || true
  kill "$pid"; wait "$pid" || true
}
for n in $(seq 1 "$MAX"); do
  for r in $(seq 1 "$RUNS"); do
    for batch in 1 32; do
      high=RATE_HIGH_$batch; low=RATE_LOW_$batch
      run "$n" "$batch" $(( ${!high} * n )) "n$n-b$batch-high-r$r"
      run "$n" "$batch" $(( ${!low} * n )) "n$n-b$batch-low-r$r"
    done
  done
done
python3 - "$dir" "$MAX" "$CPUS" "$0 $*" <<'PY'
import glob, json, statistics, sys
d, most, cpus, cmd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def load(tag):
    out = []
    for f in sorted(glob.glob(f"{d}/raw/{tag}-r*.load.json")):
        try:
            out.append(json.load(open(f)))
        except (OSError, ValueError):
            pass
    return out
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
rows = []
for n in range(1, most + 1):
    for batch in (1, 32):
        hi, lo = load(f"n{n}-b{batch}-high"), load(f"n{n}-b{batch}-low")
        s = [r.get("server") or {} for r in hi]
        rows.append({
            "shards": n, "batch": batch, "runs": len(hi),
            "hb_per_s": med([x.get("heartbeats", 0) / max(r["config"]["duration_s"] - r["config"]["warmup_s"], 1e-9) for x, r in zip(s, hi)]),
            "hb_per_core_s": med([x.get("heartbeats_per_core_second") for x in s]),
            "handoff_share": med([x.get("forwarded", 0) / x["frames_valid"] if x.get("frames_valid") else None for x in s]),
            "kernel_drops": med([x.get("kernel_drops") for x in s]),
            "p99_us_low_load": med([r["latency_intended"].get("p99_us") for r in lo]),
        })
json.dump(rows, open(f"{d}/scaling.json", "w"), indent=1)
def f(v, fmt):
    return "-" if v is None else fmt.format(v)
one = {r["batch"]: r for r in rows if r["shards"] == 1}
lines = ["# Scaling with shards", "", "```sh", cmd.strip(), "```", "",
         f"Machine: {cpus} CPUs, so shard counts 1..{most} were measured (each shard needs a",
         "CPU of its own and one for its load generator). Saturation figures offer more than",
         "the shards take; p99 is at a moderate load (the script's RATE_LOW_*).", "",
         "| shards | per datagram | hb/s at saturation | hb per server core-second | vs 1 shard per core | hand-off share | kernel drops | p99 at moderate load |",
         "|---:|---:|---:|---:|---:|---:|---:|---:|"]
for r in rows:
    base = one.get(r["batch"], {}).get("hb_per_core_s")
    eff = r["hb_per_core_s"] / base if base and r["hb_per_core_s"] else None
    lines.append(f"| {r['shards']} | {r['batch']} | {f(r['hb_per_s'], '{:,.0f}')} | {f(r['hb_per_core_s'], '{:,.0f}')} | {f(eff, '{:.2f}')} | {f(r['handoff_share'], '{:.1%}')} | {f(r['kernel_drops'], '{:,.0f}')} | {f(r['p99_us_low_load'], '{:,.0f} µs')} |")
if most < 16:
    lines += ["", f"Only {most} shard count(s) fit this machine; on a machine with 2 × N CPUs the same",
              "command measures 1..N (`MAX=N` to choose)."]
lines += ["", "Raw: `raw/` (each run's server log and counters, the load's output and JSON), `scaling.json`."]
open(f"{d}/README.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
