#!/usr/bin/env bash
# Experiment: heartbeats per datagram (1 … 64) at saturation — heartbeats/s and
# datagrams/s the server applies, and heartbeats per core-second: where the kernel's
# per-datagram cost stops dominating. One `ringbeat-bench sweep` per batch size (3 runs
# each, server on CPU 0, load on CPU 1), offered at min(K × 2.2M, 26M) heartbeats/s,
# which saturates the server at every K; then a combined table.
#
# usage: scripts/exp-batch-size.sh [OUT_DIR]   (env: DEVICES=100000 BATCHES="1 2 4 8 16 32 64")
# Sends only to 127.0.0.1; every run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/$(date -u +%Y-%m-%d)-batch-size}
DEVICES=${DEVICES:-100000}
BATCHES=${BATCHES:-"1 2 4 8 16 32 64"}
cargo build --release --locked --workspace -q
mkdir -p "$OUT"
for k in $BATCHES; do
  rate=$(( k * 2200000 )); [ "$rate" -gt 26000000 ] && rate=26000000
  target/release/ringbeat-bench sweep --kind rate --name "batch-$k" --results "$OUT" \
    --batch "$k" --devices "$DEVICES" --rates "$rate" > "$OUT/batch-$k.log" 2>&1
done
python3 - "$OUT" $BATCHES > "$OUT/summary.md" <<'PY'
import csv, glob, sys
out, batches = sys.argv[1], sys.argv[2:]
print("| heartbeats per datagram | offered hb/s | applied hb/s | applied datagrams/s | hb per server core-second | core busy | kernel drops | p50 µs |")
print("|---|---|---|---|---|---|---|---|")
for k in batches:
    (path,) = glob.glob(f"{out}/*-batch-{k}/points.csv")
    r = next(csv.DictReader(open(path)))
    hb = float(r["achieved_hb_per_s"])
    print(f"| {k} | {float(r['offered_hb_per_s']):,.0f} | {hb:,.0f} | {hb/int(k):,.0f} | {float(r['server_hb_per_core_second']):,.0f} | {float(r['server_cpu_util']):.2f} | {float(r['kernel_drops']):,.0f} | {float(r['p50_us']):.0f} |")
PY
cat "$OUT/summary.md"
