#!/usr/bin/env bash
# What the outputs sustain: DEVICES devices come online over SPREAD seconds (one
# heartbeat each from the load generator), so the shard makes DEVICES / SPREAD
# transitions a second; measured: how fast the events file and MQTT (a local Mosquitto,
# retained state per device) take them, what was dropped, and, after the broker is
# restarted empty, how long the resync of every device's state takes.
# Server shards on CPU 0 (its output threads float); load and broker on CPU 1.
#
# usage: scripts/exp-outputs.sh [OUT_DIR]
#   env: DEVICES=1000000 SPREAD=10; RINGBEAT_EVENT_QUEUE=N (the server's per-shard event
#        queue, 65536 by default) makes the queues drop on purpose, to see presence
#        still get every device's state
# Sends only to 127.0.0.1; every run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results}
DEVICES=${DEVICES:-1000000}
SPREAD=${SPREAD:-10}
command -v mosquitto >/dev/null || { echo "needs mosquitto (apt-get install mosquitto)" >&2; exit 1; }
command -v mosquitto_sub >/dev/null \
  || { echo "needs mosquitto_sub, the subscriber that counts the retained states (apt-get install mosquitto-clients)" >&2; exit 1; }
cargo build --release --locked --workspace -q
dir="$OUT/$(date -u +%Y-%m-%d)-outputs"
[ -e "$dir" ] && { echo "exp-outputs: $dir exists; give another OUT_DIR (results are never overwritten)" >&2; exit 1; }
mkdir -p "$dir/raw"
work=$(mktemp -d /tmp/ringbeat-outputs-XXXXXX)
broker_pid=; server_pid=
trap 'kill $server_pid $broker_pid 2>/dev/null || true; rm -rf "$work"' EXIT
{
  echo "revision: $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (uncommitted changes)')"
  echo "kernel: $(uname -r)"; echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
  echo "mosquitto: $(mosquitto -h 2>/dev/null | head -1)"
} > "$dir/environment.txt"
mqtt_port=18830
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n' $mqtt_port > "$work/mosquitto.conf"
start_broker() {
  taskset -c 1 mosquitto -c "$work/mosquitto.conf" >/dev/null 2>&1 &
  broker_pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$mqtt_port) 2>/dev/null && return; sleep 0.05; done
  echo "mosquitto did not start" >&2; exit 1
}
start_broker
target/release/ringbeat serve --listen 127.0.0.1:7979 --cores 0 --quiet \
  --max-devices $((DEVICES * 2)) --late-after 50 --offline-after 100 \
  --events "$work/events.jsonl" --mqtt mqtt://127.0.0.1:$mqtt_port --server-id bench \
  --stats-interval 0.25 --stats-json "$dir/raw/server.json" --run-for 300 2> "$dir/raw/server.log" &
server_pid=$!
sleep 1
# Every second: events written, MQTT states published, dropped.
sample() {
  python3 - "$dir/raw/server.json" <<'PY'
import json, sys, time
d = json.load(open(sys.argv[1]))
print(round(time.time(), 3), d["events"], d["events_dropped"], d["events_output"]["written"],
      d["mqtt"]["published_states"], d["mqtt"]["superseded"], d["mqtt"]["connects"], d["mqtt"]["connected"])
PY
}
echo "unix_s events events_dropped events_written mqtt_published_states mqtt_superseded mqtt_connects mqtt_connected" > "$dir/raw/samples.txt"
( while kill -0 $server_pid 2>/dev/null; do sample >> "$dir/raw/samples.txt" 2>/dev/null || true; sleep 0.25; done ) &
sampler=$!
t0=$(date +%s.%N)
# Each device once, spread over SPREAD seconds (late only after 50 intervals).
taskset -c 1 target/release/ringbeat-bench load --target 127.0.0.1:7979 --devices $DEVICES \
  --rate $((DEVICES / SPREAD)) --batch 32 --duration $SPREAD --warmup 0.1 --ack-every 0 --cpus 1 \
  > "$dir/raw/load.log" 2>&1
wait_for() { # column value timeout_s
  local col=$1 want=$2 secs=$3 end=$(( $(date +%s) + $3 ))
  while [ "$(date +%s)" -lt $end ]; do
    v=$(tail -1 "$dir/raw/samples.txt" | awk -v c=$col '{print $c}')
    [ "${v:-0}" -ge "$want" ] 2>/dev/null && { date +%s.%N; return; }
    sleep 0.1
  done
  echo "timeout"
}
# Both outputs are timed from the samples, each by its own first sample that has it
# all: the events file once every event is written or counted dropped (a dropped one
# is never written), MQTT once every device's state is published (a device whose
# transition was dropped gets its state sent again).
first_at() { # awk condition over the samples' columns → that sample's time, or "timeout"
  awk "NR > 1 && ($1) { print \$1; found = 1; exit } END { if (!found) print \"timeout\" }" "$dir/raw/samples.txt"
}
end=$(( $(date +%s) + 120 ))
while [ "$(date +%s)" -lt $end ]; do
  last=$(tail -1 "$dir/raw/samples.txt")
  read -r _ _ dropped written published _ <<< "$last"
  [ "$((written + dropped))" -ge "$DEVICES" ] 2>/dev/null && [ "$published" -ge "$DEVICES" ] 2>/dev/null && break
  sleep 0.1
done
t_events=$(first_at "\$3 + \$4 >= $DEVICES")
t_mqtt=$(first_at "\$5 >= $DEVICES")
first=$(tail -1 "$dir/raw/samples.txt")
# The broker restarts empty: time until every device's state is published again.
kill $broker_pid; wait $broker_pid 2>/dev/null || true
sleep 2
published_before=$(tail -1 "$dir/raw/samples.txt" | awk '{print $5}')
t_restart=$(date +%s.%N)
start_broker
t_resync=$(wait_for 5 $((published_before + DEVICES)) 180)
# Distinct devices whose state a new subscriber receives (retained, then live).
# mosquitto_sub ends at its -W timeout (exit 27) once the stream goes quiet; any other
# failure leaves the count unmeasured, said so in the table, never a 0.
retained=$( { timeout 60 mosquitto_sub -h 127.0.0.1 -p $mqtt_port -t 'ringbeat/devices/+/state' -v -W 20 \
  2> "$dir/raw/subscriber.log" || true; } | cut -d' ' -f1 | sort -u | wc -l)
[ "$retained" -gt 0 ] || retained="n/a (the subscriber received nothing: raw/subscriber.log)"
# (The server may have ended already: its --run-for bounds a run whose waits timed out.)
kill -TERM $server_pid 2>/dev/null || true; wait $server_pid || true
kill $sampler 2>/dev/null || true
SPREAD=$SPREAD python3 - "$dir" "$DEVICES" "$t0" "$t_events" "$t_mqtt" "$t_restart" "$t_resync" "$first" "${retained:-n/a}" <<'PY'
import sys
d, n, t0, te, tm, tr, ts, first, retained = sys.argv[1:]
n, t0, tr = int(n), float(t0), float(tr)
def span(a, b):
    return "timeout" if b == "timeout" else f"{float(b) - a:.1f} s"
def rate(a, b):
    return "n/a" if b == "timeout" else f"{n / (float(b) - a):,.0f}/s"
f = first.split()
env = __import__('os').environ
queue = f"RINGBEAT_EVENT_QUEUE={env['RINGBEAT_EVENT_QUEUE']} " if env.get("RINGBEAT_EVENT_QUEUE") else ""
refreshes = __import__('json').load(open(f"{d}/raw/server.json")).get("presence_refreshes", "n/a")
lines = [
  "# Outputs under a burst: events file and MQTT presence", "",
  "```sh", f"{queue}DEVICES={n} scripts/exp-outputs.sh", "```", "",
  f"{n:,} devices come online over {__import__('os').environ['SPREAD']} s (the load sends each one heartbeat), so the",
  "shard makes that many transitions at that rate. Server shards on CPU 0 (its output",
  "threads float); load and a local Mosquitto (no persistence) on CPU 1.", "",
  "| measure | value |", "|---|---|",
  f"| every event written to the events file (or counted dropped) after the load began | {span(t0, te)} ({rate(t0, te)}) |",
  f"| all states published to MQTT after the load began | {span(t0, tm)} ({rate(t0, tm)}) |",
  f"| events / dropped by the shards' queues / written | {int(f[1]):,} / {int(f[2]):,} / {int(f[3]):,} |",
  f"| device states sent to MQTT again because their transition was dropped (`presence_refreshes`) | {refreshes if isinstance(refreshes, str) else f'{refreshes:,}'} |",
  f"| after a broker restart (retained messages lost): every state published again in | {span(tr, ts)} |",
  f"| devices whose state a new subscriber then received | {retained} |", "",
  "Raw: `raw/samples.txt` (every 250 ms: events, dropped, written, MQTT states published,",
  "superseded, connects, connected), `raw/server.json`, logs.",
]
open(f"{d}/README.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
