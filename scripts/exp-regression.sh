#!/usr/bin/env bash
# Is the current code slower than an earlier revision? Builds REV in a temporary
# worktree and runs it against this checkout's server in the same sweeps, interleaved
# run by run (variants `before` = REV, `after` = this checkout), at 1 and 32 heartbeats
# per datagram, 2M devices: the ratio of heartbeats per server core-second is measured
# in one run, so the shared machine's noise falls on both alike.
#
# With MODES="v1 v1-huge v1-registry v2" each build also runs with its table on huge
# pages (v1-huge, `--huge-pages`), with a devices file of every device (v1-registry)
# and with keys, the load sending version-2 frames (v2); the files are written to a
# temporary folder and removed afterwards.
#
# usage: scripts/exp-regression.sh REV [OUT_DIR]
#   env: RUNS=3 BATCHES="1 32" RATES_1="1000000,1500000" RATES_32="10000000,20000000"
#        DEVICES=2000000 NAME=regression-REV MODES=v1
# Sends only to 127.0.0.1; every run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:?usage: scripts/exp-regression.sh REV [OUT_DIR]}
OUT=${2:-results}
RUNS=${RUNS:-3}
RATES_1=${RATES_1:-"1000000,1500000"}
RATES_32=${RATES_32:-"10000000,20000000"}
DEVICES=${DEVICES:-2000000}
BATCHES=${BATCHES:-"1 32"}
MODES=${MODES:-v1}
short=$(git rev-parse --short "$REV")
NAME=${NAME:-regression-$short}
tree=$(mktemp -d /tmp/ringbeat-before-XXXXXX)
files=$(mktemp -d)
trap 'git worktree remove --force "$tree" >/dev/null 2>&1 || true; rm -rf "$files"' EXIT
git worktree add --detach "$tree" "$REV" >/dev/null
# The earlier revision's build stays in this checkout's target/ (reused on reruns).
CARGO_TARGET_DIR="$PWD/target/before-$short" cargo build --release --locked \
  --manifest-path "$tree/Cargo.toml" -p ringbeat -q
before="target/before-$short/release/ringbeat"
cargo build --release --locked --workspace -q
variants=()
for mode in $MODES; do
  case $mode in
    v1)
      flags="" suffix=-v1
      [ "$MODES" = v1 ] && suffix="" ;;
    v1-registry)
      [ -f "$files/ids.txt" ] ||
        python3 scripts/devices-file.py "$DEVICES" --no-keys --out "$files/ids.txt"
      flags="--devices-file=$files/ids.txt" suffix=-v1-registry ;;
    v1-huge)
      flags="--huge-pages" suffix=-v1-huge ;;
    v2)
      [ -f "$files/keys.txt" ] || python3 scripts/devices-file.py "$DEVICES" --out "$files/keys.txt"
      flags="--devices-file=$files/keys.txt --auth-keys=$files/keys.txt" suffix=-v2 ;;
    *) echo "exp-regression: unknown mode '$mode' in MODES (v1, v1-huge, v1-registry, v2)" >&2; exit 2 ;;
  esac
  variants+=(--variant "before$suffix=@$before $flags" --variant "after$suffix=$flags")
done
for batch in $BATCHES; do
  rates=$RATES_1
  [ "$batch" = 32 ] && rates=$RATES_32
  target/release/ringbeat-bench sweep --kind rate --results "$OUT" \
    --name "$NAME-batch$batch" --devices "$DEVICES" --rates "$rates" \
    --batch "$batch" --runs "$RUNS" \
    "${variants[@]}"
done
