#!/usr/bin/env bash
# Liveness you can trust, measured: steady devices beside devices that stop at once,
# optionally with a flood of other device ids on the server's own CPU, and the events
# file read afterwards (scripts/liveness_events.py): false late/offline transitions
# among the steady devices, and how long after their thresholds the stopped ones were
# reported (time_ms - last_seen_ms - threshold, on the server's clock).
#
# usage: scripts/exp-liveness.sh overload|detection [OUT_DIR]
#   overload:  2,000 devices on 1 s intervals for 25 s, 100 of which stop after 8 s, and a 5 s
#              flood (3M hb/s offered in single-heartbeat datagrams from the server's
#              CPU, by 2,000 other device ids) from 5 s: the scenario that used to give
#              false late/offline storms.
#   detection: 1M devices on 2 s intervals (500K hb/s) for 30 s, 1,000 of which stop
#              at once after 8 s; without a flood, and with a 2 s flood of 1M hb/s (2x
#              the load) starting as they stop.
#   env: RUNS=3 PORT=7979
# Server on CPU 0, steady load on CPU 1, flood on CPU 0. Sends only to 127.0.0.1;
# every run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
KIND=${1:?usage: scripts/exp-liveness.sh overload|detection [OUT_DIR]}
OUT=${2:-results/$(date -u +%Y-%m-%d)-$KIND}
RUNS=${RUNS:-3}
PORT=${PORT:-7979}
case "$KIND" in
  overload)  STEADY=1900; SILENT=100; INTERVAL=1; TOTAL=25; SILENT_FOR=8
             SETTINGS="flood:5:5:3000000" ;;
  detection) STEADY=999000; SILENT=1000; INTERVAL=2; TOTAL=30; SILENT_FOR=8
             SETTINGS="quiet:0:0:0 flood:8:2:1000000" ;;
  *) echo "unknown experiment $KIND" >&2; exit 2 ;;
esac
LATE_MS=$(python3 -c "print(int(1.5 * $INTERVAL * 1000))")
OFFLINE_MS=$(python3 -c "print(int(3 * $INTERVAL * 1000))")
cargo build --release --locked --workspace -q
SERVER=target/release/ringbeat
LOAD=target/release/ringbeat-bench
mkdir -p "$OUT/raw"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "git: $(git rev-parse HEAD)$(git diff --quiet || echo ' (dirty)')"
  echo "kernel: $(uname -r)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') ($(nproc) CPUs)"
  echo "pinning: server --cores 0, steady load --cpus 1, flood --cpus 0"
  echo "devices: $STEADY steady (ids 1-$STEADY) + $SILENT stopping after ${SILENT_FOR} s (ids $((STEADY + 1))-$((STEADY + SILENT))), interval ${INTERVAL} s, ${TOTAL} s"
  echo "thresholds: late ${LATE_MS} ms, offline ${OFFLINE_MS} ms (server defaults 1.5x / 3x)"
  for k in net.core.rmem_max net.core.netdev_max_backlog; do
    echo "sysctl $k = $(sysctl -n $k 2>/dev/null || echo n/a)"
  done
} > "$OUT/environment.txt"
echo "setting,run,false_late,false_offline,silent_devices,silent_reported_late,silent_reported_offline,late_delay_ms_p50,late_delay_ms_p99,late_delay_ms_max,offline_delay_ms_p50,offline_delay_ms_p99,offline_delay_ms_max,kernel_drops,blind_ms,deferred,holds,behind_ms,events_dropped,steady_kept_schedule,flood_sent_hb" > "$OUT/runs.csv"
tmp=$(mktemp -d /tmp/ringbeat-liveness-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
for setting in $SETTINGS; do
  IFS=: read -r label flood_at flood_for flood_rate <<< "$setting"
  for run in $(seq 1 "$RUNS"); do
    tag="$label-$run"
    "$SERVER" serve --listen 127.0.0.1:$PORT --cores 0 --quiet --max-devices 4194304 \
      --events "$tmp/events.jsonl" --stats-json "$OUT/raw/$tag.server.json" \
      --stats-interval 1 --run-for $((TOTAL + 30)) 2> "$OUT/raw/$tag.server.log" &
    spid=$!
    sleep 1
    "$LOAD" load --target 127.0.0.1:$PORT --devices "$STEADY" --interval "$INTERVAL" \
      --duration "$TOTAL" --warmup 1 --cpus 1 --ack-every 0 \
      --json "$OUT/raw/$tag.steady.json" 2> "$OUT/raw/$tag.steady.log" &
    steady=$!
    "$LOAD" load --target 127.0.0.1:$PORT --first-id $((STEADY + 1)) --devices "$SILENT" \
      --interval "$INTERVAL" --duration "$SILENT_FOR" --warmup 1 --cpus 1 --ack-every 0 \
      --json "$OUT/raw/$tag.silent.json" 2> "$OUT/raw/$tag.silent.log" &
    silent=$!
    flood=""
    if [ "$flood_for" != 0 ]; then
      # `timeout`: a flood generator that falls behind its schedule (it shares the
      # server's CPU) must still stop on time, so the flood lasts what it says.
      (sleep "$flood_at"; exec timeout -s INT "$((flood_for + 1))" "$LOAD" load \
         --target 127.0.0.1:$PORT --first-id 100000001 \
         --devices 2000 --rate "$flood_rate" --duration "$flood_for" --warmup 0.5 \
         --cpus 0 --ack-every 0 --json "$OUT/raw/$tag.flood.json" \
         2> "$OUT/raw/$tag.flood.log") &
      flood=$!
    fi
    wait "$steady"
    # Stop the server right away: the steady devices' last heartbeats are less than
    # one interval old, so none of them may go late before it stops.
    kill -TERM "$spid"
    wait "$spid" || true
    wait "$silent" $flood || true
    python3 scripts/liveness_events.py "$tmp/events.jsonl" --steady "1-$STEADY" \
      --silent "$((STEADY + 1))-$((STEADY + SILENT))" --late-ms "$LATE_MS" \
      --offline-ms "$OFFLINE_MS" > "$OUT/raw/$tag.liveness.json"
    python3 - "$OUT" "$tag" "$label" "$run" >> "$OUT/runs.csv" <<'PY'
import json, os, sys
out, tag, label, run = sys.argv[1:5]
raw = lambda s: json.load(open(f"{out}/raw/{tag}.{s}.json"))
l, s, st = raw("liveness"), raw("server"), raw("steady")
flood = f"{out}/raw/{tag}.flood.json"
sent = json.load(open(flood))["sent"]["frames"] if os.path.exists(flood) else 0
print(",".join(str(x) for x in [label, run, l["false_late"], l["false_offline"], l["silent_devices"],
    l["silent_reported_late"], l["silent_reported_offline"], l["late_delay_ms_p50"], l["late_delay_ms_p99"],
    l["late_delay_ms_max"], l["offline_delay_ms_p50"], l["offline_delay_ms_p99"], l["offline_delay_ms_max"],
    s["kernel_drops"], s["blind_ms"], s["deferred"], s["holds"], s["behind_ms"], s["events_dropped"], st["generator"]["kept_schedule"], sent]))
PY
    tail -1 "$OUT/runs.csv"
    rm -f "$tmp/events.jsonl"
  done
done
