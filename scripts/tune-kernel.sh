#!/usr/bin/env bash
# Kernel and limit settings for ringbeat: shows current vs recommended values, and with
# --apply sets them (root) after saving the old ones; --revert restores the saved ones.
# Dry-run (show only) by default. Idempotent: a second --apply keeps the values saved by
# the first, and --revert with nothing saved does nothing.
#
# With --apply the values also go to $SYSCTL_D/60-ringbeat.conf so they survive a
# reboot; --revert removes that file.
#
# usage: scripts/tune-kernel.sh [--apply | --revert] [--state FILE] [--port PORT]
#   --state FILE  where --apply saves the old values (default /var/lib/ringbeat/tune-kernel.saved)
#   --port PORT   the UDP port to check connection tracking for (default 7979)
# env: SYSCTL_ROOT (default /proc/sys) — the tree read and written, for testing;
#      SYSCTL_D (default /etc/sysctl.d) — where the persistent file goes.
set -euo pipefail

MODE=show
STATE=/var/lib/ringbeat/tune-kernel.saved
PORT=7979
ROOT=${SYSCTL_ROOT:-/proc/sys}
SYSCTL_D=${SYSCTL_D:-/etc/sysctl.d}
PERSIST="$SYSCTL_D/60-ringbeat.conf"
usage_error() { echo "tune-kernel.sh: $1 (see --help)" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --apply) MODE=apply ;;
    --revert) MODE=revert ;;
    --state) [ $# -ge 2 ] && [ -n "$2" ] || usage_error "--state needs a file"; STATE=$2; shift ;;
    --port)
      [ $# -ge 2 ] || usage_error "--port needs a value, e.g. --port 7979"
      [[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -ge 1 ] && [ "$2" -le 65535 ] || usage_error "--port $2: not a port (1-65535)"
      PORT=$2; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) usage_error "unknown argument: $1" ;;
  esac
  shift
done
if [ "$MODE" != show ] && [ "$ROOT" = /proc/sys ] && [ "$(id -u)" != 0 ]; then
  echo "tune-kernel.sh --$MODE changes kernel settings: run it as root (sudo $0 --$MODE)" >&2
  exit 1
fi

# name | recommended | minimum-is-enough (1: raise only, never lower) | why
SETTINGS=(
  "net.core.rmem_max|67108864|1|lets --rcvbuf go up to 64 MiB without SO_RCVBUFFORCE (the default 4 MiB needs 4194304)"
  "net.core.rmem_default|4194304|1|receive buffer of sockets that do not ask (the load generator's ack sockets)"
  "net.core.wmem_max|16777216|1|send buffers for the load generator's GSO bursts"
  "net.core.netdev_max_backlog|16384|1|per-CPU input backlog (loopback and RPS deliver through it; overflow shows in /proc/net/softnet_stat)"
  "kernel.io_uring_disabled|0|0|io_uring must be allowed (1 = root or kernel.io_uring_group only, 2 = off)"
)

path_of() { echo "$ROOT/$(echo "$1" | tr . /)"; }
current() { local p; p=$(path_of "$1"); [ -r "$p" ] && tr -s ' \t' ' ' < "$p" || echo "n/a"; }

target_of() { # the value --apply would set: the recommended one, or the current if already higher
  local cur=$2 rec=$3 raise_only=$4
  if [ "$raise_only" = 1 ] && [[ "$cur" =~ ^[0-9]+$ ]] && [ "$cur" -ge "$rec" ]; then echo "$cur"; else echo "$rec"; fi
}

show() {
  printf '%-30s %-12s %-12s %s\n' setting current recommended verdict
  for s in "${SETTINGS[@]}"; do
    IFS='|' read -r name rec raise why <<< "$s"
    cur=$(current "$name")
    tgt=$(target_of "$name" "$cur" "$rec" "$raise")
    if [ "$cur" = "$tgt" ]; then verdict=ok; else verdict="change: $why"; fi
    printf '%-30s %-12s %-12s %s\n' "$name" "$cur" "$rec" "$verdict"
  done
  local nofile memlock
  nofile=$(ulimit -n); memlock=$(ulimit -l)
  printf '%-30s %-12s %-12s %s\n' "nofile (this shell)" "$nofile" "65536" \
    "$([ "$nofile" = unlimited ] || [ "$nofile" -ge 65536 ] && echo ok || echo 'raise: ulimit -n 65536, or LimitNOFILE=65536 in the service unit')"
  printf '%-30s %-12s %-12s %s\n' "memlock (this shell)" "$memlock" "unlimited" \
    "info: Linux 5.12+ charges io_uring memory to the cgroup; older kernels need ulimit -l >= ring sizes"
  if [ -r "$ROOT/net/netfilter/nf_conntrack_count" ]; then
    printf '%-30s %-12s %-12s %s\n' "conntrack" "loaded" "untracked" \
      "every UDP flow to port $PORT gets a conntrack entry; exempt it: nft add rule inet raw prerouting udp dport $PORT notrack (or iptables -t raw -A PREROUTING -p udp --dport $PORT -j NOTRACK)"
  else
    printf '%-30s %-12s %-12s %s\n' "conntrack" "not loaded" "untracked" ok
  fi
}

apply() {
  mkdir -p "$(dirname "$STATE")"
  local fresh=0
  if [ ! -s "$STATE" ]; then fresh=1; : > "$STATE.tmp"; fi
  for s in "${SETTINGS[@]}"; do
    IFS='|' read -r name rec raise _ <<< "$s"
    cur=$(current "$name")
    [ "$cur" = "n/a" ] && { echo "skip $name: not present in this kernel"; continue; }
    tgt=$(target_of "$name" "$cur" "$rec" "$raise")
    # Save the original only on the first --apply, so a second one keeps it.
    if [ "$fresh" = 1 ]; then echo "$name=$cur" >> "$STATE.tmp"; fi
    if [ "$cur" != "$tgt" ]; then
      echo "$tgt" > "$(path_of "$name")"
      echo "set $name = $tgt (was $cur)"
    else
      echo "keep $name = $cur"
    fi
  done
  if [ "$fresh" = 1 ]; then mv "$STATE.tmp" "$STATE"; echo "saved the old values in $STATE"; else echo "old values already saved in $STATE (kept)"; fi
  # The same values at boot.
  mkdir -p "$SYSCTL_D"
  {
    echo "# ringbeat's kernel settings (scripts/tune-kernel.sh --apply; --revert removes this file)"
    for s in "${SETTINGS[@]}"; do
      IFS='|' read -r name _ _ _ <<< "$s"
      cur=$(current "$name")
      [ "$cur" = "n/a" ] || echo "$name = $cur"
    done
  } > "$PERSIST"
  echo "wrote $PERSIST (applied at boot)"
}

revert() {
  if [ ! -s "$STATE" ]; then echo "nothing to revert ($STATE absent)"; return 0; fi
  while IFS='=' read -r name value; do
    [ -n "$name" ] || continue
    cur=$(current "$name")
    if [ "$cur" != "$value" ]; then echo "$value" > "$(path_of "$name")"; echo "restored $name = $value (was $cur)"; else echo "keep $name = $value"; fi
  done < "$STATE"
  rm -f "$STATE" "$PERSIST"
  echo "reverted; removed $STATE and $PERSIST"
}

case "$MODE" in
  show) show; echo; echo "dry run: nothing changed (use --apply as root; --revert undoes it)" ;;
  apply) apply; echo; show ;;
  revert) revert; echo; show ;;
esac
