#!/usr/bin/env bash
# Memory footprint and table growth, into results/<date>-footprint/:
#  - idle resident memory with --cores 0 and default flags, and per further shard:
#    the x86_64 release build, the static x86_64 build, and the static aarch64 build
#    under qemu-user (RSS there includes the emulator's own memory);
#  - resident bytes per tracked device at fill levels from 10K to 2M devices (default
#    flags, one shard): the RSS growth while the devices first appear, after a warm-up
#    that makes the receive ring and ack slots resident, over the devices the server
#    counts (x86_64; and the aarch64 build under qemu at three levels);
#  - p99 latency while 2M devices first appear (the table grows from empty) against
#    p99 of the same rate once they are known, on the same server (RUNS runs; with
#    BASELINE_BIN also for that binary, runs alternating, e.g. a build from before a
#    change to the table; BASELINE_WHAT says in the README which build it is);
#  - milliseconds from the server's start to its first ack.
# Server on CPU 0, load on CPU 1; sends only to 127.0.0.1; everything stops by itself.
#
# usage: scripts/exp-footprint.sh [OUT_DIR]    env: RUNS=7 BASELINE_BIN= BASELINE_WHAT=
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_BASE=${1:-results}
RUNS=${RUNS:-7}
. scripts/results-dir.sh
OUT=$(new_results_dir exp-footprint "$OUT_BASE" footprint)
cargo build --release --locked --workspace -q
bash scripts/build-static.sh > /tmp/rb-static-sizes.txt
mkdir -p "$OUT"
tail -6 /tmp/rb-static-sizes.txt > "$OUT/static-sizes.md"
REL=target/release/ringbeat
BENCH=target/release/ringbeat-bench
X86=target/static/x86_64-unknown-linux-musl/ringbeat
ARM=target/static/aarch64-unknown-linux-musl/ringbeat
F="python3 scripts/footprint.py"

echo "== idle"
$F idle "$REL" > "$OUT/idle-x86_64-release.csv"
$F idle "$X86" > "$OUT/idle-x86_64-static.csv"
$F idle "$ARM" qemu-aarch64-static > "$OUT/idle-aarch64-static-qemu.csv"
echo "== per device"
$F per-device "$REL" "$BENCH" 10000,20000,50000,100000,200000,370000,500000,1000000,2000000 \
  > "$OUT/per-device-x86_64.csv"
$F per-device "$ARM" "$BENCH" 10000,100000,1000000 qemu-aarch64-static \
  > "$OUT/per-device-aarch64-qemu.csv"
echo "== ramp"
$F ramp "$REL${BASELINE_BIN:+:$BASELINE_BIN}" "$BENCH" 2000000 2000000 "$RUNS" > "$OUT/ramp.csv"
if [ -n "${BASELINE_BIN:-}" ]; then
  echo "== saturation against the baseline"
  for i in 1 2 3; do
    for b in "$BASELINE_BIN" "$REL"; do
      label=$([ "$b" = "$REL" ] && echo this || echo baseline)
      "$BENCH" sweep --kind rate --results "$OUT/saturation" --name "$label-$i" --devices 2000000 \
        --rates 20000000 --batch 32 --runs 1 --duration 6 --server-bin "$b" >/dev/null
    done
  done
fi
echo "== first ack"
$F first-ack "$REL" "$RUNS" > "$OUT/first-ack.csv"

python3 - "$OUT" "$RUNS" "${BASELINE_BIN:-}" "${BASELINE_WHAT:-}" <<'PY'
import csv, os, statistics, subprocess, sys
out, runs, baseline, baseline_what = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rows = lambda f: list(csv.DictReader(open(os.path.join(out, f))))
med = lambda xs: statistics.median(float(x) for x in xs)
rev = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], capture_output=True, text=True).stdout.strip()
kernel = os.uname().release
L = []
L.append("# Memory footprint and table growth\n")
L.append("```sh\nscripts/exp-footprint.sh" + (f"   # BASELINE_BIN: {baseline_what or os.path.basename(baseline)}" if baseline else "") + "\n```\n")
L.append(f"git revision {rev}, kernel {kernel}, {os.cpu_count()} CPUs; server on CPU 0, load on CPU 1; default flags (`--max-devices` 4,194,304) unless said.\n")
L.append("## Idle resident memory\n")
L.append("| build | one shard (`--cores 0`) | two shards | each further shard |\n|---|---|---|---|")
for name, f in [("x86_64 release (glibc)", "idle-x86_64-release.csv"), ("x86_64 static (musl)", "idle-x86_64-static.csv"), ("aarch64 static (musl) under qemu-user", "idle-aarch64-static-qemu.csv")]:
    r = {x["shards"]: int(x["rss_kib"]) for x in rows(f)}
    two = f"{r['2'] / 1024:.1f} MiB" if "2" in r else "n/a"
    more = f"{(r['2'] - r['1']) / 1024:.1f} MiB" if "2" in r else "n/a"
    L.append(f"| {name} | {r['1'] / 1024:.1f} MiB | {two} | {more} |")
L.append("\nUnder qemu-user the process is the emulator: its RSS includes qemu's own code and translation cache; qemu-user does not emulate SO_ATTACH_REUSEPORT_CBPF (the shards' steering program), so only one shard runs there.\n")
L.append("## Resident bytes per tracked device\n")
L.append("RSS growth while the devices first appear (after a warm-up that makes the receive ring and ack slots resident), over the devices the server then counts.\n")
L.append("| devices | x86_64 B/device | aarch64 (qemu) B/device |\n|---|---|---|")
arm = {x["devices"]: x["bytes_per_device"] for x in rows("per-device-aarch64-qemu.csv")}
for x in rows("per-device-x86_64.csv"):
    L.append(f"| {int(x['devices']):,} | {x['bytes_per_device']} | {arm.get(x['devices'], '')} |")
L.append("\n## p99 while 2M devices first appear\n")
L.append(f"2M hb/s in 32-heartbeat datagrams: the first second every device is new (the index grows from 1,024 buckets to 3.1M), then one second more of the same devices on the same server (not measured: the last growth finishes), then the steady second, measured. {runs} runs, each with a fresh server; latency from the intended send time.\n")
sys.path.insert(0, "scripts")
from footprint import ramp_markdown
L += ramp_markdown(rows("ramp.csv"), "0", "this build")
if baseline:
    L.append(f"The baseline is given as BASELINE_BIN ({baseline_what or 'another build'}); its runs alternated with this build's.\n")
    L += ramp_markdown(rows("ramp.csv"), "1", "baseline")
sat = os.path.join(out, "saturation")
if os.path.isdir(sat):
    L.append("## Throughput at saturation against the baseline\n")
    L.append("20M hb/s offered, 2M devices, 32 per datagram, 3 runs of each binary interleaved (`saturation/`): heartbeats per server core-second.\n")
    got = {"this": [], "baseline": []}
    for d in sorted(os.listdir(sat)):
        r = list(csv.DictReader(open(os.path.join(sat, d, "points.csv"))))[0]
        label = "this" if "-this-" in d else "baseline"
        got[label].append(float(r["server_hb_per_core_second"]))
    L.append("| build | runs (M hb per core-second) | median |\n|---|---|---|")
    for k in ["baseline", "this"]:
        L.append(f"| {k} | {', '.join(f'{v / 1e6:.2f}' for v in got[k])} | **{statistics.median(got[k]) / 1e6:.2f}** |")
    L.append("")
fa = rows("first-ack.csv")
L.append(f"## Start to first ack\n\nFrom spawning `ringbeat serve --cores 0` to the first ack of a heartbeat resent every millisecond: median **{med(x['ms_to_first_ack'] for x in fa):.1f} ms** over {len(fa)} runs (`first-ack.csv`).\n")
L.append("## Static binaries (`scripts/build-static.sh`)\n")
L.append(open(os.path.join(out, "static-sizes.md")).read())
open(os.path.join(out, "README.md"), "w").write("\n".join(L))
PY
echo "wrote $OUT"
