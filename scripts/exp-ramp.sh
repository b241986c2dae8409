#!/usr/bin/env bash
# The table's growth under a ramp, into results/<date>-ramp/: p99 latency (from the
# intended send time) while 2M devices first appear at 2M hb/s (the table grows from
# empty), against the same rate once they are known, on the same server; beside it the
# shard's own loop-busy time in each window (from its /metrics), which the machine's
# noise between iterations does not reach. RUNS runs, each with a fresh server. Server
# on CPU 0, load on CPU 1; sends only to 127.0.0.1; stops by itself. (The same
# measurement is part of scripts/exp-footprint.sh.)
#
# usage: scripts/exp-ramp.sh [OUT_DIR]    env: RUNS=21
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_BASE=${1:-results}
RUNS=${RUNS:-21}
. scripts/results-dir.sh
OUT=$(new_results_dir exp-ramp "$OUT_BASE" ramp)
require_clean_tree exp-ramp
cargo build --release --locked --workspace -q
mkdir -p "$OUT"
python3 scripts/footprint.py ramp target/release/ringbeat target/release/ringbeat-bench \
  2000000 2000000 "$RUNS" > "$OUT/ramp.csv"
python3 scripts/footprint.py ramp-readme "$OUT" "$RUNS"
echo "wrote $OUT"
