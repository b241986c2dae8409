#!/usr/bin/env bash
# Is the current code slower than an earlier revision? Builds REV in a temporary
# worktree and runs it against this checkout's server in the same sweeps, interleaved
# run by run (variants `before` = REV, `after` = this checkout), at 1 and 32 heartbeats
# per datagram, 2M devices: the ratio of heartbeats per server core-second is measured
# in one run, so the shared machine's noise falls on both alike.
#
# usage: scripts/exp-regression.sh REV [OUT_DIR]
#   env: RUNS=3 BATCHES="1 32" RATES_1="1000000,1500000" RATES_32="10000000,20000000"
#        DEVICES=2000000 NAME=regression-REV
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
short=$(git rev-parse --short "$REV")
NAME=${NAME:-regression-$short}
tree=$(mktemp -d /tmp/ringbeat-before-XXXXXX)
trap 'git worktree remove --force "$tree" >/dev/null 2>&1 || true' EXIT
git worktree add --detach "$tree" "$REV" >/dev/null
# The earlier revision's build stays in this checkout's target/ (reused on reruns).
CARGO_TARGET_DIR="$PWD/target/before-$short" cargo build --release --locked \
  --manifest-path "$tree/Cargo.toml" -p ringbeat -q
before="$PWD/target/before-$short/release/ringbeat"
cargo build --release --locked --workspace -q
for batch in $BATCHES; do
  rates=$RATES_1
  [ "$batch" = 32 ] && rates=$RATES_32
  target/release/ringbeat-bench sweep --kind rate --results "$OUT" \
    --name "$NAME-batch$batch" --devices "$DEVICES" --rates "$rates" \
    --batch "$batch" --runs "$RUNS" \
    --variant "before=@$before" --variant "after="
done
