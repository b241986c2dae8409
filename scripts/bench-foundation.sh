#!/usr/bin/env bash
# Heartbeats per server core-second, event density and drops for the io_uring engine,
# at 1 and 32 heartbeats per datagram with 2M devices. Server pinned to one CPU, load
# generator to another; each point is run several times and the median reported.
#
# usage: scripts/bench-foundation.sh [OUT_DIR]   (env: RUNS=3 SERVER_CPU=0 LOAD_CPU=1
#        DEVICES=2000000 DURATION=8 WARMUP=3 POINTS="1:1000000 ..." SERVER_ARGS="..."
#        ACKS_PER_DATAGRAM=100)
# Latency is sampled on one datagram in ACKS_PER_DATAGRAM (--ack-every 100 × batch):
# an ack is a datagram the server must send, and on loopback its send also runs the
# receive path on the server's CPU, so sampling per frame would charge the server an ack
# cost that grows with the batch size.
# Sends only to 127.0.0.1; every run is bounded by --duration / --run-for.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/$(date -u +%Y-%m-%d)-foundation}
RUNS=${RUNS:-3}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
DEVICES=${DEVICES:-2000000}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-3}
PORT=${PORT:-7979}
ACKS_PER_DATAGRAM=${ACKS_PER_DATAGRAM:-100}
SERVER_ARGS=${SERVER_ARGS:-}
# batch:offered heartbeats per second
POINTS=${POINTS:-"1:1000000 1:1500000 1:2000000 32:10000000 32:16000000 32:20000000"}

cargo build --release --locked --workspace -q
SERVER=target/release/ringbeat
LOAD=target/release/ringbeat-bench
mkdir -p "$OUT/raw"

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "git: $(git rev-parse HEAD)$(git diff --quiet || echo ' (dirty)')"
  echo "kernel: $(uname -r)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') ($(nproc) CPUs)"
  echo "pinning: server --cores $SERVER_CPU, load --cpus $LOAD_CPU"
  echo "server flags: --cores $SERVER_CPU $SERVER_ARGS"
  echo "load: --devices $DEVICES --duration $DURATION --warmup $WARMUP --ack-every $ACKS_PER_DATAGRAM×batch"
  for k in net.core.rmem_max net.core.rmem_default net.core.wmem_max net.core.netdev_max_backlog net.core.skb_defer_max kernel.io_uring_disabled; do
    echo "sysctl $k = $(sysctl -n $k 2>/dev/null || echo n/a)"
  done
  echo "thp: $(cat /sys/kernel/mm/transparent_hugepage/enabled)"
} > "$OUT/environment.txt"

echo "batch,offered_hb_per_s,run,server_hb_per_s,server_cpu_util,hb_per_core_second,kernel_drops,ring_dry,wakeups_per_s,hb_per_wakeup,cqes_per_enter,p50_us,p99_us,p999_us,max_us,acks_missing,generator_kept_schedule" > "$OUT/runs.csv"

for point in $POINTS; do
  batch=${point%%:*}; rate=${point##*:}
  for run in $(seq 1 "$RUNS"); do
    tag="b${batch}-r${rate}-${run}"
    "$SERVER" serve --listen 127.0.0.1:$PORT --cores "$SERVER_CPU" --quiet \
      --stats-json "$OUT/raw/$tag.server.json" --stats-interval 0.5 \
      --run-for $((DURATION + 3)) $SERVER_ARGS 2> "$OUT/raw/$tag.server.log" &
    spid=$!
    sleep 1
    "$LOAD" load --target 127.0.0.1:$PORT --devices "$DEVICES" --rate "$rate" --batch "$batch" \
      --duration "$DURATION" --warmup "$WARMUP" --cpus "$LOAD_CPU" --ack-every $((ACKS_PER_DATAGRAM * batch)) \
      --server-pid "$spid" --server-stats "$OUT/raw/$tag.server.json" \
      --json "$OUT/raw/$tag.load.json" --hgrm "$OUT/raw/$tag.hgrm" 2> "$OUT/raw/$tag.load.log"
    wait "$spid"
    python3 - "$OUT/raw/$tag.load.json" "$batch" "$rate" "$run" "$WARMUP" "$DURATION" >> "$OUT/runs.csv" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); s = d["server"]; l = d["latency_intended"]
measured = float(sys.argv[6]) - float(sys.argv[5])
# A ratio over nothing (no wake-ups past saturation) is null in the JSON: empty here.
r = lambda v, n=None: "" if v is None else round(v, n)
print(",".join(str(x) for x in [sys.argv[2], sys.argv[3], sys.argv[4],
    round(s["heartbeats"] / measured), r(s["cpu_utilisation"], 3), r(s["heartbeats_per_core_second"]),
    s["kernel_drops"], s["ring_dry"], r(s["wakeups_per_s"]), r(s["heartbeats_per_wakeup"], 1),
    r(s["cqes_per_enter"], 1), l["p50_us"], l["p99_us"], l["p999_us"], l["max_us"],
    d["acks"]["missing"], d["generator"]["kept_schedule"]]))
PY
    tail -1 "$OUT/runs.csv"
  done
done

python3 - "$OUT/runs.csv" > "$OUT/summary.md" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
keys = sorted({(int(r["batch"]), int(r["offered_hb_per_s"])) for r in rows})
cols = ["server_hb_per_s", "server_cpu_util", "hb_per_core_second", "kernel_drops", "wakeups_per_s", "hb_per_wakeup", "cqes_per_enter", "p50_us", "p99_us", "p999_us"]
print("Medians of %d runs per point.\n" % max(int(r["run"]) for r in rows))
print("| batch | offered hb/s | " + " | ".join(cols) + " | generator kept schedule |")
print("|" + "---|" * (len(cols) + 3))
for b, rate in keys:
    rs = [r for r in rows if int(r["batch"]) == b and int(r["offered_hb_per_s"]) == rate]
    vals = [[float(r[c]) for r in rs if r[c] != ""] for c in cols]
    med = ["n/a" if not v else statistics.median(v) for v in vals]
    kept = sum(r["generator_kept_schedule"] == "True" for r in rs)
    show = lambda m: m if isinstance(m, str) else f"{m:,.0f}" if m >= 100 else f"{m:.2f}"
    print("| %d | %d | " % (b, rate) + " | ".join(show(m) for m in med) + f" | {kept}/{len(rs)} |")
PY
cat "$OUT/summary.md"
