#!/usr/bin/env bash
# What one heartbeat costs the shard core alone (`ringbeat-bench core-cost`: no kernel,
# no load generator): version 1, version 1 with a registry, version 2, alternated pass
# by pass, at 2M and 100K devices, RUNS runs each, on CPU 0. With BASELINE_BIN (a
# ringbeat-bench built from another revision; BASELINE_WHAT says in the README which),
# its runs alternate with this tree's, so a change is compared in one sitting. Writes
# results/<date>-NAME/: every run's JSON (every pass), the stdout, and a README with the
# fastest pass's ns per heartbeat (median over runs) and the ratios.
#
# usage: scripts/exp-core-cost.sh [OUT_DIR]
#   env: RUNS=3 NAME=core-cost BASELINE_BIN= BASELINE_WHAT=
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_BASE=${1:-results}
RUNS=${RUNS:-3}
NAME=${NAME:-core-cost}
. scripts/results-dir.sh
require_clean_tree exp-core-cost
OUT=$(new_results_dir exp-core-cost "$OUT_BASE" "$NAME")
cargo build --release --locked -p ringbeat-bench -q
mkdir -p "$OUT"
builds=(this)
[ -n "${BASELINE_BIN:-}" ] && builds=(baseline this)
for i in $(seq 1 "$RUNS"); do
  for size in 2m 100k; do
    case $size in
      2m) args=(--devices 2000000 --passes 5) ;;
      100k) args=(--devices 100000 --passes 15) ;;
    esac
    for b in "${builds[@]}"; do
      bin=target/release/ringbeat-bench
      [ "$b" = baseline ] && bin=$BASELINE_BIN
      echo "== run $i, $size devices, $b build" | tee -a "$OUT/stdout.txt"
      "$bin" core-cost "${args[@]}" --cpu 0 --json "$OUT/$b-$size-run$i.json" \
        | tee -a "$OUT/stdout.txt"
    done
  done
done
python3 - "$OUT" "$RUNS" "${BASELINE_WHAT:-}" "${builds[@]}" <<'EOF'
import json, statistics, subprocess, sys
out, runs, baseline_what, builds = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                     text=True, check=True).stdout.strip()
kernel = subprocess.run(["uname", "-r"], capture_output=True, text=True).stdout.strip()
lines = [
    f"# What a heartbeat costs the shard core: version 1, with a registry, version 2",
    "",
    "`ringbeat-bench core-cost`: the server's `ShardCore` on the server's memory, pre-built",
    "32-frame datagrams taken on one thread pinned to CPU 0 (no kernel, no load",
    "generator); every device once per pass in one fixed random order; one frame in 100",
    "asks for an ack; variants alternated pass by pass.",
    "",
    f"- revision: `{rev}` (the `this` build)",
]
if "baseline" in builds:
    lines.append(f"- baseline build: {baseline_what or 'given by BASELINE_BIN'}; its runs alternate with this build's")
lines += [
    f"- kernel: {kernel}",
    f"- runs: {runs} per size and build",
    "",
    "```sh",
    f"RUNS={runs} scripts/exp-core-cost.sh",
    "```",
    "",
    "Raw: `BUILD-SIZE-runN.json` (every pass), `stdout.txt`.",
    "",
    "## Fastest pass, ns per heartbeat (median over runs; each run's in brackets)",
    "",
    "| build | devices | version 1 | version 1 + registry | version 2 | v2 / v1 (heartbeats per second) | v2 / v1 + registry |",
    "|---|---|---:|---:|---:|---:|---:|",
]
for b in builds:
    for size, label in (("2m", "2M"), ("100k", "100K")):
        best = {}
        for i in range(1, runs + 1):
            with open(f"{out}/{b}-{size}-run{i}.json") as f:
                for v in json.load(f)["variants"]:
                    best.setdefault(v["variant"], []).append(v["best_ns_per_heartbeat"])
        med = {k: statistics.median(x) for k, x in best.items()}
        cell = lambda k: f"{med[k]:.1f} ({', '.join(f'{x:.1f}' for x in best[k])})"
        lines.append(
            f"| {b} | {label} | {cell('v1')} | {cell('v1-registry')} | {cell('v2')} | "
            f"{med['v1'] / med['v2']:.2f}× | {med['v1-registry'] / med['v2']:.2f}× |"
        )
lines.append("")
with open(f"{out}/README.md", "w") as f:
    f.write("\n".join(lines))
print("\n".join(lines))
EOF
echo "results in $OUT"
