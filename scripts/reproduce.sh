#!/usr/bin/env bash
# Regenerates every figure the README quotes, one experiment after another, into
# OUT_DIR (default results/): each step is one experiment script or sweep command, run
# exactly as the README and the script's own header give it, so each result folder
# records its command, revision, kernel and CPU. Needs root (CPU DMA latency, RPS and
# kernel-tuning variants) and a clean git tree (sweeps refuse a dirty one).
#
# Run time: about 2 h 45 min on a 2-CPU machine (the minutes beside each step are what each
# took in the whole run of 2026-12-02, 117 min in all, or, for the steps added since,
# in the runs of 2026-12-03); the run prints each step's actual time and writes them
# all to OUT_DIR/reproduce-<date>.md (which must not exist yet: a second run on the
# same day wants another OUT_DIR).
#
# usage: scripts/reproduce.sh [--list] [--only NAME[,NAME...]] [OUT_DIR]
#
# Not regenerated here: the regression comparisons against earlier revisions
# (`scripts/exp-regression.sh REV`: they compare two builds, not the final code's
# figures), and variants tried and not kept (their patch is in their results folder,
# e.g. results/2026-12-02-uring-drain). Server on CPU 0, load on CPU 1, sends only to 127.0.0.0/8; every step
# stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

# name | estimated minutes | command ($OUT is the output directory)
STEPS=(
  "rate-scan-batch1|3|target/release/ringbeat-bench sweep --kind rate --name rate-scan-batch1 --results \$OUT --batch 1 --devices 2000000 --rates 250000,500000,1000000,1500000,2000000,2500000"
  "rate-scan-batch32|3|target/release/ringbeat-bench sweep --kind rate --name rate-scan-batch32 --results \$OUT --batch 32 --devices 2000000 --rates 2000000,5000000,10000000,15000000,20000000,25000000"
  "device-scan|7|target/release/ringbeat-bench sweep --kind devices --name device-scan --results \$OUT --batch 1 --interval 10 --duration 22 --warmup 12 --device-counts 100000,250000,500000,1000000,2000000,4000000"
  "foundation|4|scripts/bench-foundation.sh \$OUT/\$(date -u +%F)-foundation"
  "kernel-floor|7|scripts/exp-kernel-floor.sh \$OUT"
  "kernel-floor-pairs|8|RATES=1000000,1500000 RUNS=10 WAITS= NAME=kernel-floor-pairs scripts/exp-kernel-floor.sh \$OUT"
  "kernel-floor-batch32|3|BATCH=32 RATES=10000000,20000000 WAITS= ENGINES=epoll scripts/exp-kernel-floor.sh \$OUT"
  "engines|11|scripts/exp-engines.sh \$OUT"
  "engines-overload-batch32|7|target/release/ringbeat-bench sweep --kind rate --name engines-overload-batch32 --results \$OUT --devices 2000000 --rates 20000000 --batch 32 --runs 16 --variant 'uring=--engine uring' --variant 'epoll=--engine epoll'"
  "engines-overload-ack-each-batch32|4|target/release/ringbeat-bench sweep --kind rate --name engines-overload-ack-each-batch32 --results \$OUT --devices 2000000 --rates 20000000 --batch 32 --runs 10 --ack-every-datagrams 1 --variant 'uring=--engine uring' --variant 'epoll=--engine epoll'"
  "profile|2|scripts/exp-profile.sh \$OUT"
  "profile-layers-batch1|5|RATE=1000000 BATCH=1 RUNS=3 NAME=profile-layers-batch1 scripts/exp-profile.sh \$OUT"
  "profile-layers-batch32|5|RATE=10000000 BATCH=32 RUNS=3 NAME=profile-layers-batch32 scripts/exp-profile.sh \$OUT"
  "uring-window-batch32|3|target/release/ringbeat-bench sweep --kind rate --name uring-window-batch32 --results \$OUT --devices 2000000 --rates 20000000 --batch 32 --runs 5 --variant 'uring=--engine uring' --variant 'uring-nowindow=--engine uring --buf-window-kib 0' --variant 'uring-256=--engine uring --buf-window-kib 0 --buf-count 256' --variant 'epoll=--engine epoll'"
  "uring-window-scan-batch32|4|target/release/ringbeat-bench sweep --kind rate --name uring-window-scan-batch32 --results \$OUT --devices 2000000 --rates 4000000,10000000,20000000 --batch 32 --runs 3 --variant 'uring=--engine uring' --variant 'uring-nowindow=--engine uring --buf-window-kib 0' --variant 'epoll=--engine epoll'"
  "uring-window-scan-batch1|4|target/release/ringbeat-bench sweep --kind rate --name uring-window-scan-batch1 --results \$OUT --devices 2000000 --rates 500000,1000000,2000000 --batch 1 --runs 3 --variant 'uring=--engine uring' --variant 'uring-nowindow=--engine uring --buf-window-kib 0' --variant 'epoll=--engine epoll'"
  "batch-size|4|scripts/exp-batch-size.sh \$OUT/\$(date -u +%F)-batch-size"
  "rcvbuf|9|scripts/exp-rcvbuf.sh \$OUT"
  "wait-us|6|scripts/exp-wait-us.sh \$OUT"
  "wake-latency|3|scripts/exp-wake-latency.sh \$OUT"
  "liveness-slice|2|scripts/exp-liveness-slice.sh \$OUT"
  "prefilter|3|scripts/exp-prefilter.sh \$OUT"
  "prefilter-window|3|target/release/ringbeat-bench sweep --kind rate --results \$OUT --name prefilter-window --devices 200000 --rates 200000 --garbage-rate 300000 --ack-every-datagrams 1 --runs 3 --duration 8 --variant 'uring=--engine uring' --variant 'uring-nowindow=--engine uring --buf-window-kib 0' --variant 'epoll=--engine epoll'"
  "rps|8|scripts/exp-rps.sh \$OUT"
  "snapshot|2|scripts/exp-snapshot.sh \$OUT"
  "overload|2|scripts/exp-liveness.sh overload \$OUT/\$(date -u +%F)-overload"
  "detection|4|scripts/exp-liveness.sh detection \$OUT/\$(date -u +%F)-detection"
  "outputs|2|scripts/exp-outputs.sh \$OUT"
  "outputs-queue-1024|3|RINGBEAT_EVENT_QUEUE=1024 scripts/exp-outputs.sh \$OUT/event-queue-1024"
  "tcp|7|scripts/exp-tcp.sh \$OUT"
  "tcp-connections|2|scripts/exp-tcp-connections.sh \$OUT"
  "handoff|1|scripts/exp-handoff.sh \$OUT"
  "scaling|2|scripts/exp-scaling.sh \$OUT"
  "footprint|5|scripts/exp-footprint.sh \$OUT"
  "allowlist|4|scripts/exp-allowlist.sh \$OUT"
  "auth|10|scripts/exp-auth.sh \$OUT"
  "core-cost|1|scripts/exp-core-cost.sh \$OUT"
)

list=0
only=""
OUT=results
while [ $# -gt 0 ]; do
  case "$1" in
    --list) list=1 ;;
    --only)
      [ $# -ge 2 ] || { echo "reproduce: --only needs a name (see --list)" >&2; exit 2; }
      only="$2"; shift ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "reproduce: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) OUT="$1" ;;
  esac
  shift
done

selected=()
total=0
for s in "${STEPS[@]}"; do
  IFS='|' read -r name minutes _ <<< "$s"
  if [ -z "$only" ] || [[ ",$only," == *",$name,"* ]]; then
    selected+=("$s")
    total=$((total + minutes))
  fi
done
if [ -n "$only" ]; then
  for want in ${only//,/ }; do
    printf '%s\n' "${selected[@]}" | grep -q "^$want|" \
      || { echo "reproduce: no step named $want (see --list)" >&2; exit 2; }
  done
fi

if [ "$list" = 1 ]; then
  for s in "${selected[@]}"; do
    IFS='|' read -r name minutes cmd <<< "$s"
    printf '%-16s ~%3s min  %s\n' "$name" "$minutes" "$cmd"
  done
  echo "total: ~$total min"
  exit 0
fi

if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
  echo "reproduce: the git tree has uncommitted changes; commit them first, so every result says what code it measured" >&2
  exit 1
fi
[ "$(id -u)" = 0 ] || echo "reproduce: not root: the steps with CPU DMA latency, RPS or kernel-tuning variants will fail" >&2
# What a step needs beyond the build, checked before hours of runs rather than in them.
if printf '%s\n' "${selected[@]}" | grep -q '^outputs|'; then
  for c in mosquitto mosquitto_sub; do
    command -v $c >/dev/null \
      || { echo "reproduce: the outputs step needs $c (apt-get install mosquitto mosquitto-clients)" >&2; exit 1; }
  done
fi
cargo build --release --locked --workspace -q
mkdir -p "$OUT"
times="$OUT/reproduce-$(date -u +%F).md"
[ -e "$times" ] && { echo "reproduce: $times exists; give another OUT_DIR" >&2; exit 1; }
{
  echo "# scripts/reproduce.sh at $(git describe --always --dirty --abbrev=12), $(uname -r), $(nproc) CPUs"
  echo
  echo "| step | estimated | took |"
  echo "|---|---|---|"
} > "$times"
echo "reproduce: ${#selected[@]} steps, ~$total min estimated" >&2
start_all=$(date +%s)
for s in "${selected[@]}"; do
  IFS='|' read -r name minutes cmd <<< "$s"
  echo "== $name (~$minutes min): ${cmd//\$OUT/$OUT}" >&2
  t0=$(date +%s)
  OUT="$OUT" bash -c "set -euo pipefail; $cmd" \
    || { echo "reproduce: step $name failed (command above); the steps before it are in $OUT" >&2; exit 1; }
  took=$(( ($(date +%s) - t0 + 30) / 60 ))
  echo "| $name | ~$minutes min | $took min |" >> "$times"
  echo "== $name took $took min" >&2
done
echo "| **all** | ~$total min | $(( ($(date +%s) - start_all + 30) / 60 )) min |" >> "$times"
echo "reproduce: done; step times in $times" >&2
