#!/usr/bin/env bash
# Tests scripts/tune-kernel.sh against a fake sysctl tree: dry run changes nothing,
# --apply sets, saves and persists for boot, a second --apply keeps the first saved
# values, --revert restores them and removes the boot file, a second --revert does
# nothing; bad arguments and a non-root --apply get a clear message. Prints
# "N passed, M failed".
set -uo pipefail
cd "$(dirname "$0")/.."
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
mk() { mkdir -p "$T/sys/$(dirname "$1")"; echo "$2" > "$T/sys/$1"; }
mk net/core/rmem_max 212992
mk net/core/rmem_default 212992
mk net/core/wmem_max 99999999          # already above the recommendation: never lowered
mk net/core/netdev_max_backlog 1000
mk kernel/io_uring_disabled 2
run() { SYSCTL_ROOT="$T/sys" SYSCTL_D="$T/sysctl.d" bash scripts/tune-kernel.sh --state "$T/state" "$@"; }
val() { cat "$T/sys/$1"; }
pass=0; fail=0
check() { if [ "$2" = "$3" ]; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL: $1: got '$2', want '$3'"; fi; }

run > "$T/out"
check "dry run leaves rmem_max" "$(val net/core/rmem_max)" 212992
check "dry run saves nothing" "$([ -e "$T/state" ] && echo yes || echo no)" no
check "dry run shows the change" "$(grep -c 'net.core.rmem_max .*change' "$T/out")" 1

run --apply > /dev/null
check "apply raises rmem_max" "$(val net/core/rmem_max)" 67108864
check "apply sets io_uring_disabled" "$(val kernel/io_uring_disabled)" 0
check "apply never lowers wmem_max" "$(val net/core/wmem_max)" 99999999
check "apply saves originals" "$(grep -c '^net.core.rmem_max=212992$' "$T/state")" 1
check "apply persists for boot" "$(grep -c '^net.core.rmem_max = 67108864$' "$T/sysctl.d/60-ringbeat.conf")" 1

echo 5000 > "$T/sys/net/core/netdev_max_backlog"   # someone changes it meanwhile
run --apply > /dev/null
check "second apply keeps first saved value" "$(grep '^net.core.netdev_max_backlog=' "$T/state")" net.core.netdev_max_backlog=1000
check "second apply is idempotent" "$(val net/core/rmem_max)" 67108864

run --revert > /dev/null
check "revert restores rmem_max" "$(val net/core/rmem_max)" 212992
check "revert restores io_uring_disabled" "$(val kernel/io_uring_disabled)" 2
check "revert restores backlog" "$(val net/core/netdev_max_backlog)" 1000
check "revert removes state" "$([ -e "$T/state" ] && echo yes || echo no)" no
check "revert removes the boot file" "$([ -e "$T/sysctl.d/60-ringbeat.conf" ] && echo yes || echo no)" no
check "second revert is a no-op" "$(run --revert | head -1)" "nothing to revert ($T/state absent)"

# Bad arguments and a non-root --apply say what to do, never a raw shell error.
check "--port without a value" "$(run --port 2>&1 >/dev/null)" "tune-kernel.sh: --port needs a value, e.g. --port 7979 (see --help)"
check "--port not a port" "$(run --port x 2>&1 >/dev/null)" "tune-kernel.sh: --port x: not a port (1-65535) (see --help)"
# As a user other than root (setpriv, from util-linux, drops to nobody when the test
# runs as root).
as_user=()
[ "$(id -u)" = 0 ] && as_user=(setpriv --reuid 65534 --regid 65534 --clear-groups)
out=$("${as_user[@]}" bash scripts/tune-kernel.sh --apply 2>&1 >/dev/null; echo "rc=$?")
check "non-root --apply" "$(echo "$out" | grep -c 'run it as root')$(echo "$out" | tail -1)" "1rc=1"

# --role load: the generator's settings, saved and persisted apart from the server's.
run --role load --apply > /dev/null
check "load role raises rmem_default" "$(val net/core/rmem_default)" 4194304
check "load role has its own boot file" "$(grep -c '^net.core.wmem_max = 99999999$' "$T/sysctl.d/60-ringbeat-load.conf")" 1
check "load role leaves the server's rmem_max" "$(val net/core/rmem_max)" 212992
run --role load --revert > /dev/null
check "load role reverts" "$(val net/core/rmem_default)" 212992
check "--role bad" "$(run --role x 2>&1 >/dev/null)" "tune-kernel.sh: --role x: server or load (see --help)"

# Connection tracking with the real nft, in a network namespace of its own (an empty
# ruleset): --apply adds table inet ringbeat (both ways, UDP and TCP), a second --apply
# sees the exemption and keeps it, --revert removes the table; an exemption the
# administrator already has is seen and left alone.
mk net/netfilter/nf_conntrack_count 0
command -v nft >/dev/null || { echo "FAIL: nft not found (apt-get install nftables)"; exit 1; }
out=$(SYSCTL_ROOT="$T/sys" SYSCTL_D="$T/sysctl.d" T="$T" unshare -n bash -c '
  t() { bash scripts/tune-kernel.sh --state "$T/ct-state" "$@"; }
  t --apply >/dev/null; nft list table inet ringbeat | grep -c notrack
  t --apply | grep -c "already exempt"
  t --revert >/dev/null; nft list tables | grep -c ringbeat
  nft add table ip raw && nft add chain ip raw prerouting "{ type filter hook prerouting priority raw ; }" \
    && nft add rule ip raw prerouting udp dport 7979 notrack
  t | grep -c "conntrack .*port exempt"
  t --apply >/dev/null; nft list tables | grep -c ringbeat; t --revert >/dev/null
  nft list table ip raw | grep -c notrack
' 2>&1 | paste -sd ' ')
check "nft: add, keep, revert; an existing exemption seen and kept" "$out" "4 1 0 1 0 1"

echo "tune-kernel: $pass passed, $fail failed"
[ "$fail" = 0 ]
