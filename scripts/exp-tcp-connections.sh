#!/usr/bin/env bash
# Connection scale: how many concurrent TCP connections one shard holds, and what each
# costs. The load opens N connections (one per device, from source addresses
# 127.B.0.1, .2, ... at 8,000 each), then every device sends one heartbeat per
# INTERVAL seconds with an ack requested on each. Recorded: the server's resident
# memory and the kernel's slab memory before and with all connections open (per
# connection), /proc/net/sockstat, the accept rate, and the ack latency at that scale.
# Server on CPU 0, load on CPU 1. Raises fs.nr_open and the open-files limit for the
# run (root), and puts fs.nr_open back at the end.
#
# usage: scripts/exp-tcp-connections.sh [OUT_DIR]
#   env: CONNECTIONS=1000000 INTERVAL=30 DURATION=90 WARMUP=40 HOLD=10
# Sends only to 127.0.0.1; every run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results}
N=${CONNECTIONS:-1000000}
INTERVAL=${INTERVAL:-30}
DURATION=${DURATION:-90}
WARMUP=${WARMUP:-40}
# Seconds the connections are held open before the first heartbeat: the server's
# memory per connection is read then, before devices fill the table.
HOLD=${HOLD:-10}
PORT=7979
[ "$(id -u)" = 0 ] || { echo "needs root (fs.nr_open and the open-files limit for $N connections)" >&2; exit 1; }
cargo build --release --locked --workspace -q
dir="$OUT/$(date -u +%Y-%m-%d)-tcp-connections"
rm -rf "$dir"; mkdir -p "$dir/raw"
old_nr_open=$(cat /proc/sys/fs/nr_open)
fds=$((N + 100000))
server_pid=; sampler_pid=
trap 'sysctl -qw fs.nr_open=$old_nr_open 2>/dev/null; kill $server_pid $sampler_pid 2>/dev/null || true' EXIT
[ "$old_nr_open" -ge "$fds" ] || sysctl -qw fs.nr_open=$fds 2>/dev/null || true
limit_note=""
if ! (ulimit -Hn $fds) 2>/dev/null; then
  # Without CAP_SYS_RESOURCE (many containers) the hard limit cannot be raised: the
  # largest count this process may hold is what it allows.
  hard=$(ulimit -Hn)
  if [ $((N + 1100)) -gt "$hard" ]; then
    limit_note="Asked for $N connections; the open-files hard limit is $hard and this process may not raise it (no CAP_SYS_RESOURCE), so $((hard - 1100)) were opened (the server keeps 1,024 descriptors for the rest)."
    N=$((hard - 1100))
    echo "$limit_note" >&2
  fi
  fds=$hard
fi
ulimit -Hn $fds; ulimit -Sn $fds
{
  echo "revision: $(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (uncommitted changes)')"
  echo "kernel: $(uname -r)"; echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
  echo "memory: $(grep MemTotal /proc/meminfo)"
  for k in net.ipv4.ip_local_port_range net.core.somaxconn net.ipv4.tcp_max_syn_backlog net.ipv4.tcp_rmem net.ipv4.tcp_wmem fs.nr_open; do
    echo "$k = $(sysctl -n $k | tr '\t' ' ')"; done
  echo "open files: $(ulimit -Hn)"
} > "$dir/environment.txt"

run_for=$((DURATION + 120))
taskset -c 0 target/release/ringbeat serve --listen 127.0.0.1:$PORT --cores 0 --quiet \
  --max-connections $N --tcp-idle-timeout 600 --run-for $run_for \
  --stats-interval 1 --stats-json "$dir/raw/server.json" 2> "$dir/raw/server.log" &
server_pid=$!
sleep 1
# Resident memory from smaps_rollup (exact; VmRSS is updated lazily), and the kernel
# objects a connection needs at both ends (socket, inode, file, dentry, io_uring
# request, epoll item), from /proc/slabinfo: active objects × object size.
rss_kb() { awk '/^Rss:/ {print $2}' /proc/$server_pid/smaps_rollup; }
slab_kb() {
  awk '$1 ~ /^(TCP|sock_inode_cache|filp|dentry|io_kiocb|eventpoll_epi|eventpoll_pwq)$/ {s += $2 * $4} END {print int(s / 1024)}' /proc/slabinfo
}
tcp_mem_pages() { awk '/^TCP:/ {for (i=1;i<=NF;i++) if ($i=="mem") print $(i+1)}' /proc/net/sockstat; }
sleep 2
base_sockstat=$(cat /proc/net/sockstat | tr '\n' ' ')
base_rss=$(rss_kb); base_slab=$(slab_kb)
# Every second: time, server RSS, slab, TCP socket pages, connections open and accepted.
(
  echo "t_s,rss_kb,slab_kb,tcp_mem_pages,tcp_open,tcp_accepted,acks_sent"
  start=$(date +%s.%N)
  while kill -0 $server_pid 2>/dev/null; do
    s=$(python3 -c "import json,sys
try:
  d=json.load(open('$dir/raw/server.json')); print(d['tcp_open'], d['tcp_accepted'], d['acks_sent'], sep=',')
except Exception: print('0,0,0')")
    echo "$(python3 -c "import time; print(round(time.time()-$start,1))"),$(rss_kb),$(slab_kb),$(tcp_mem_pages),$s"
    sleep 1
  done
) > "$dir/raw/samples.csv" 2>/dev/null &
sampler_pid=$!
taskset -c 1 target/release/ringbeat-bench load --target 127.0.0.1:$PORT --proto tcp \
  --connections $N --devices $N --batch 1 --interval $INTERVAL --duration $DURATION \
  --warmup $WARMUP --ack-every 1 --cpus 1 --grace 2 --tcp-flush-us 0 --tcp-hold $HOLD \
  --server-pid $server_pid --server-stats "$dir/raw/server.json" \
  --json "$dir/raw/load.json" --hgrm "$dir/raw/load.hgrm" 2> "$dir/raw/load.log"
# The last sample with every connection open and no heartbeat applied yet.
peak=$(python3 - "$dir/raw/samples.csv" <<'PY'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r['rss_kb']]
most = max(int(r['tcp_open']) for r in rows)
held = [r for r in rows if int(r['tcp_open']) == most and int(r['acks_sent']) == 0]
best = (held or [r for r in rows if int(r['tcp_open']) == most])[-1]
print(best['rss_kb'], best['slab_kb'], best['tcp_mem_pages'], best['tcp_open'])
PY
)
read -r peak_rss peak_slab peak_tcp_pages peak_open <<< "$peak"
peak_sockstat=$(cat /proc/net/sockstat | tr '\n' ' ')
kill -TERM $server_pid; wait $server_pid || true
LIMIT_NOTE="$limit_note" python3 - "$dir" "$N" "$INTERVAL" "$base_rss" "$base_slab" "$peak_rss" "$peak_slab" "$peak_tcp_pages" "$peak_open" "$base_sockstat" "$peak_sockstat" <<'PY'
import json, re, sys
d, n, interval, base_rss, base_slab, peak_rss, peak_slab, tcp_pages, peak_open, base_ss, peak_ss = sys.argv[1:]
n, peak_open = int(n), int(peak_open)
load = json.load(open(f"{d}/raw/load.json"))
log = open(f"{d}/raw/load.log").read()
m = re.search(r"(\d+) TCP connections open in ([\d.]+) s", log)
opened, open_s = (int(m.group(1)), float(m.group(2))) if m else (0, float('nan'))
rows = list(__import__('csv').DictReader(open(f"{d}/raw/samples.csv")))
acc = [int(r['tcp_accepted']) for r in rows if r['tcp_accepted']]
peak_accept = max((b - a for a, b in zip(acc, acc[1:])), default=0)
user_b = (int(peak_rss) - int(base_rss)) * 1024 / max(peak_open, 1)
slab_b = (int(peak_slab) - int(base_slab)) * 1024 / max(peak_open, 1)
lat = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in load.get("latency_intended", {}).items()}
acks = load.get("acks", {})
lines = [
  "# TCP connection scale",
  "",
  "One shard (CPU 0) holding one TCP connection per device; the load (CPU 1) opens them",
  f"all, then each device sends a heartbeat every {interval} s with an ack requested.",
  "",
  "```sh", f"CONNECTIONS={n} INTERVAL={interval} scripts/exp-tcp-connections.sh", "```", "",
  __import__('os').environ.get("LIMIT_NOTE", ""), "",
  "| measure | value |", "|---|---|",
  f"| connections asked / open at the peak | {n:,} / {peak_open:,} |",
  f"| opened by the load in | {open_s:.1f} s ({opened / open_s if open_s else 0:,.0f} connections/s) |",
  f"| accepts in the busiest second (server) | {peak_accept:,} |",
  f"| server resident memory growth per connection (all open, before the first heartbeat) | {user_b:.0f} B |",
  f"| kernel objects per connection, both ends (socket, inode, file, dentry, io_uring request, epoll item; slabinfo) | {slab_b:.0f} B |",
  f"| TCP socket memory at the peak (sockstat, pages) | {tcp_pages} |",
  f"| acks received / expected | {acks.get('received', 'n/a')} / {acks.get('expected', 'n/a')} |",
  f"| ack latency from intended send, p50 / p99 / p99.9 / max (µs) | {lat.get('p50_us','n/a')} / {lat.get('p99_us','n/a')} / {lat.get('p999_us','n/a')} / {lat.get('max_us','n/a')} |",
  "",
  "What limits the count here, and what a million would take: the open-files hard",
  f"limit bounds one process to that many descriptors (the server raises its soft limit",
  f"to it; raising the hard limit needs CAP_SYS_RESOURCE, `LimitNOFILE=` under systemd).",
  f"Ports do not limit it: the load spreads connections 8,000 per source address. At the",
  f"measured costs, 1,000,000 connections take {user_b * 1e6 / 2**20:,.0f} MiB of server memory and",
  f"about {slab_b * 1e6 / 2**30:,.1f} GiB of kernel objects for both ends (half of it the server's",
  f"sockets on a real network), plus socket buffers while data waits.",
  "",
  f"sockstat before: `{base_ss.strip()}`", "",
  f"sockstat at the end: `{peak_ss.strip()}`", "",
  "Raw: `raw/samples.csv` (every second: RSS, slab, TCP pages, connections open and",
  "accepted, acks), `raw/load.json`, `raw/load.hgrm`, `raw/server.json`, logs.",
]
open(f"{d}/README.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
