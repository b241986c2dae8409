#!/usr/bin/env bash
# Kernel and limit settings for ringbeat: shows current vs recommended values, and with
# --apply sets them (root) after saving the old ones; --revert restores the saved ones.
# Dry-run (show only) by default. Idempotent: a second --apply keeps the values saved by
# the first, and --revert with nothing saved does nothing.
#
# With --apply the values also go to $SYSCTL_D/60-ringbeat.conf so they survive a
# reboot; --revert removes that file.
#
# Connection tracking: when nf_conntrack is loaded, every UDP flow and TCP connection
# to the port costs a conntrack entry (and its lock) per packet. Unless the ruleset
# already exempts the port, --apply (with nft) adds its own table `inet ringbeat` that
# exempts the port both ways (heartbeats in, acks out; UDP and TCP) at raw priority,
# and --revert deletes that table. The table is not persisted: add it to your
# nftables configuration (the commands are printed) if the host keeps one.
#
# usage: scripts/tune-kernel.sh [--apply | --revert] [--role server|load] [--state FILE] [--port PORT]
#   --role ROLE   server (default): the machine running ringbeat; load: a machine running
#                 ringbeat-bench load (its ack sockets and GSO send bursts)
#   --state FILE  where --apply saves the old values (default /var/lib/ringbeat/tune-kernel.saved)
#   --port PORT   the port to exempt from connection tracking (default 7979)
# env: SYSCTL_ROOT (default /proc/sys) — the tree read and written, for testing;
#      SYSCTL_D (default /etc/sysctl.d) — where the persistent file goes;
#      NFT (default nft) — the nft command (tests pass a stand-in).
set -euo pipefail

MODE=show
STATE=/var/lib/ringbeat/tune-kernel.saved
PORT=7979
ROLE=server
NFT=${NFT:-nft}
ROOT=${SYSCTL_ROOT:-/proc/sys}
SYSCTL_D=${SYSCTL_D:-/etc/sysctl.d}
PERSIST="$SYSCTL_D/60-ringbeat.conf"
usage_error() { echo "tune-kernel.sh: $1 (see --help)" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --apply) MODE=apply ;;
    --revert) MODE=revert ;;
    --state) [ $# -ge 2 ] && [ -n "$2" ] || usage_error "--state needs a file"; STATE=$2; shift ;;
    --role)
      [ $# -ge 2 ] || usage_error "--role needs server or load"
      case "$2" in server|load) ROLE=$2 ;; *) usage_error "--role $2: server or load" ;; esac
      shift ;;
    --port)
      [ $# -ge 2 ] || usage_error "--port needs a value, e.g. --port 7979"
      [[ "$2" =~ ^[0-9]+$ ]] && [ "$2" -ge 1 ] && [ "$2" -le 65535 ] || usage_error "--port $2: not a port (1-65535)"
      PORT=$2; shift ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) usage_error "unknown argument: $1" ;;
  esac
  shift
done
if [ "$MODE" != show ] && [ "$ROOT" = /proc/sys ] && [ "$(id -u)" != 0 ]; then
  echo "tune-kernel.sh --$MODE changes kernel settings: run it as root (sudo $0 --$MODE)" >&2
  exit 1
fi

# name | recommended | minimum-is-enough (1: raise only, never lower) | why
if [ "$ROLE" = server ]; then
  SETTINGS=(
    "net.core.rmem_max|67108864|1|lets --rcvbuf go up to 64 MiB without SO_RCVBUFFORCE (the default 4 MiB needs 4194304)"
    "net.core.netdev_max_backlog|16384|1|per-CPU input backlog (loopback and RPS deliver through it; overflow shows in /proc/net/softnet_stat)"
    "kernel.io_uring_disabled|0|0|io_uring must be allowed (1 = root or kernel.io_uring_group only, 2 = off)"
  )
else
  SETTINGS=(
    "net.core.rmem_default|4194304|1|receive buffer of sockets that do not ask (the generator's ack sockets)"
    "net.core.wmem_max|16777216|1|send buffers for the generator's GSO bursts"
    "net.core.netdev_max_backlog|16384|1|per-CPU input backlog (on loopback the sender's CPU runs the receive path)"
  )
fi
# A server's saved values and boot file are kept apart from a load machine's.
[ "$ROLE" = load ] && { STATE="$STATE.load"; PERSIST="$SYSCTL_D/60-ringbeat-load.conf"; }

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
  [ "$ROLE" = server ] || return 0
  case "$(conntrack_state)" in
    off) printf '%-30s %-12s %-12s %s\n' "conntrack" "not loaded" "untracked" ok ;;
    exempt) printf '%-30s %-12s %-12s %s\n' "conntrack" "port exempt" "untracked" "ok (the ruleset has notrack for port $PORT)" ;;
    *) printf '%-30s %-12s %-12s %s\n' "conntrack" "tracked" "untracked" \
      "every flow to port $PORT costs a conntrack entry: --apply adds table inet ringbeat (with nft), or: $(nft_commands | paste -sd '&' | sed 's/&/ \&\& /g')" ;;
  esac
}

# The rules exempting $PORT from connection tracking, both ways, UDP and TCP, in a table
# of their own (so --revert removes exactly them). TCP notrack: a stateful firewall
# rule that accepts only "established" traffic on this port must accept it by port.
nft_commands() {
  cat <<NFT
$NFT add table inet ringbeat
$NFT add chain inet ringbeat pre '{ type filter hook prerouting priority raw ; }'
$NFT add chain inet ringbeat out '{ type filter hook output priority raw ; }'
$NFT add rule inet ringbeat pre udp dport $PORT notrack
$NFT add rule inet ringbeat pre tcp dport $PORT notrack
$NFT add rule inet ringbeat out udp sport $PORT notrack
$NFT add rule inet ringbeat out tcp sport $PORT notrack
NFT
}

# off: nf_conntrack not loaded; exempt: the ruleset already has notrack for $PORT
# (ours or the administrator's, nft or iptables); tracked otherwise.
conntrack_state() {
  if [ ! -r "$ROOT/net/netfilter/nf_conntrack_count" ]; then echo off; return; fi
  local rules=""
  command -v "$NFT" >/dev/null 2>&1 && rules=$("$NFT" list ruleset 2>/dev/null || true)
  command -v iptables-save >/dev/null 2>&1 && rules+=$'\n'$(iptables-save -t raw 2>/dev/null || true)
  if grep -Eq "(dport|sport|dports) ($PORT|[{][^}]*\b$PORT\b[^}]*[}]).*notrack|--dport $PORT .*(NOTRACK|--notrack)" <<< "$rules"; then
    echo exempt
  else
    echo tracked
  fi
}

apply_conntrack() {
  [ "$ROLE" = server ] || return 0
  case "$(conntrack_state)" in
    off) echo "conntrack not loaded: nothing to exempt"; return ;;
    exempt) echo "conntrack: port $PORT already exempt (kept)"; return ;;
  esac
  if ! command -v "$NFT" >/dev/null 2>&1; then
    echo "conntrack: nft not found; exempt port $PORT yourself, e.g. iptables -t raw -A PREROUTING -p udp --dport $PORT -j CT --notrack (and tcp; and OUTPUT with --sport)"
    return
  fi
  local cmd
  while IFS= read -r cmd; do
    eval "$cmd" || { echo "conntrack: '$cmd' failed; the rules so far are in table inet ringbeat" >&2; return 1; }
  done < <(nft_commands)
  echo "nft=ringbeat" >> "$STATE"
  echo "conntrack: added table inet ringbeat exempting port $PORT (UDP and TCP, both ways); not persisted: add it to your nftables configuration to keep it across reboots"
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
  apply_conntrack
}

revert() {
  if [ ! -s "$STATE" ]; then echo "nothing to revert ($STATE absent)"; return 0; fi
  while IFS='=' read -r name value; do
    [ -n "$name" ] || continue
    if [ "$name" = nft ]; then
      "$NFT" delete table inet ringbeat 2>/dev/null && echo "removed table inet ringbeat" || echo "table inet ringbeat already gone"
      continue
    fi
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
