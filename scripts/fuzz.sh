#!/usr/bin/env bash
# Fuzzes the datagram and stream paths, authenticated (version-2) frames, the snapshot
# loader, the config file reader and the devices-file parser with cargo-fuzz
# (libFuzzer, nightly toolchain), all targets at once, each for SECONDS. Starts from the committed seeds (fuzz/seeds/) plus any corpus kept in
# fuzz/corpus/. Fails if any target finds a crash (its input is kept in
# fuzz/artifacts/TARGET/).
#
# usage: scripts/fuzz.sh [SECONDS] [OUT_DIR]     (default 1200 s and results/<date>-fuzz)
#   env: TARGETS=${TARGETS:-"datagram stream snapshot config_file authenticated registry"}
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-1200}
OUT=${2:-results/$(date -u +%Y-%m-%d)-fuzz}
TARGETS=${TARGETS:-"datagram stream snapshot config_file authenticated registry"}
if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz: skipped, no nightly toolchain (rustup toolchain install nightly)"
  exit 0
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked -q
mkdir -p "$OUT"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "git: $(git rev-parse HEAD)$(git diff --quiet || echo ' (dirty)')"
  echo "toolchain: $(rustc +nightly --version)"
  echo "cargo-fuzz: $(cargo fuzz --version)"
  echo "kernel: $(uname -r)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') ($(nproc) CPUs)"
  echo "seconds per target: $SECS (all targets at once)"
} > "$OUT/environment.txt"
(cd fuzz && cargo +nightly fuzz build -O)
for t in $TARGETS; do
  mkdir -p "fuzz/corpus/$t"
  cp fuzz/seeds/$t/* "fuzz/corpus/$t/"
  (cd fuzz && cargo +nightly fuzz run -O "$t" "corpus/$t" -- \
     -max_total_time="$SECS" -print_final_stats=1) > "$OUT/$t.log" 2>&1 &
done
status=0
wait || status=$?
{
  echo "| target | seconds | runs | coverage (edges) | corpus | crashes |"
  echo "|---|---|---|---|---|---|"
  for t in $TARGETS; do
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$OUT/$t.log" | grep -o '[0-9]*$' || echo "?")
    cov=$(grep -o 'cov: [0-9]*' "$OUT/$t.log" | tail -1 | grep -o '[0-9]*' || echo "?")
    corp=$(grep -o 'corp: [0-9]*' "$OUT/$t.log" | tail -1 | grep -o '[0-9]*' || echo "?")
    crashes=$(ls "fuzz/artifacts/$t" 2>/dev/null | wc -l)
    echo "| $t | $SECS | $runs | $cov | $corp | $crashes |"
  done
} > "$OUT/summary.md"
cat "$OUT/summary.md"
if [ "$status" != 0 ] || ls fuzz/artifacts/*/crash-* >/dev/null 2>&1; then
  echo "fuzz: a target failed; see $OUT/*.log and fuzz/artifacts/" >&2
  exit 1
fi
