#!/usr/bin/env bash
# Smoke-tests the static binaries from scripts/build-static.sh: `--version`, `check`
# (under qemu-user io_uring is refused with ENOSYS, so `check` must say so and name
# epoll as the engine it will use), and `serve` answering a heartbeat sent by an
# independent client (Python, from PROTOCOL.md) over UDP and over TCP. aarch64 runs
# under Debian's qemu-user-static; x86_64 runs natively (and uses io_uring).
#
# usage: scripts/smoke-static.sh [TARGET...]   (default: both musl targets)
# Sends only to 127.0.0.1; the server stops by itself (--run-for).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)
TMP=$(mktemp -d)
trap 'kill "$SERVER" 2>/dev/null || true; rm -rf "$TMP"' EXIT
SERVER=

fail() { echo "smoke-static: $*" >&2; exit 1; }

for t in "${TARGETS[@]}"; do
  bin=target/static/$t/ringbeat
  [ -x "$bin" ] || fail "$bin missing: run scripts/build-static.sh $t first"
  run=()
  if [ "$t" = aarch64-unknown-linux-musl ] && [ "$(uname -m)" != aarch64 ]; then
    command -v qemu-aarch64-static >/dev/null || fail "qemu-aarch64-static not found: apt-get install qemu-user-static"
    run=(qemu-aarch64-static)
  fi
  echo "== $t ${run[*]:+(under ${run[*]})}"
  "${run[@]}" "$bin" --version | tee "$TMP/version"
  grep -q '^ringbeat ' "$TMP/version" || fail "$t: --version printed no version"

  port=$((20000 + RANDOM % 20000))
  "${run[@]}" "$bin" check --cores 0 --listen "127.0.0.1:$port" > "$TMP/check" ||
    { cat "$TMP/check"; fail "$t: check failed"; }
  grep -E '^(ok|WARN) +engine ' "$TMP/check"
  if [ ${#run[@]} -gt 0 ]; then
    grep -q 'epoll (--engine auto): io_uring unavailable' "$TMP/check" ||
      { cat "$TMP/check"; fail "$t: check did not explain that io_uring is refused under emulation"; }
    grep -q 'emulator (qemu-user)' "$TMP/check" || fail "$t: check did not name the emulator"
  fi

  "${run[@]}" "$bin" serve --cores 0 --listen "127.0.0.1:$port" --run-for 20 \
    --stats-json "$TMP/stats.json" --stats-interval 0.5 2> "$TMP/serve.log" &
  SERVER=$!
  for _ in $(seq 100); do grep -q 'listening on' "$TMP/serve.log" && break; sleep 0.1; done
  grep -q 'listening on' "$TMP/serve.log" || { cat "$TMP/serve.log"; fail "$t: serve did not start"; }
  python3 - "$port" <<'PY'
import socket, struct, sys
port = int(sys.argv[1])
def frame(device_id, seq):
    # PROTOCOL.md: magic, version 1, kind 1 (heartbeat), flags bit 0 = ack requested,
    # device_id, seq, status, interval_ds (0 = default), sent_ns; little-endian.
    return b"RBHB" + struct.pack("<HBBQIHHQ", 1, 1, 1, device_id, seq, 0, 0, 12345)
def check(ack, device_id, seq, how):
    magic, ver, kind, flags, dev, s, status, interval, sent = struct.unpack("<4sHBBQIHHQ", ack)
    assert (magic, ver, kind, dev, s, status, sent) == (b"RBHB", 1, 2, device_id, seq, 0, 12345), (how, ack)
    print(f"{how}: ack for device {dev} seq {s}, status {status} (accepted)")
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.settimeout(5)
u.sendto(frame(42, 7), ("127.0.0.1", port))
check(u.recv(64), 42, 7, "UDP")
t = socket.create_connection(("127.0.0.1", port), timeout=5)
t.sendall(frame(43, 9))
ack = b""
while len(ack) < 32:
    chunk = t.recv(32 - len(ack))
    assert chunk, "TCP connection closed before the ack"
    ack += chunk
check(ack, 43, 9, "TCP")
PY
  kill -TERM "$SERVER"; wait "$SERVER" || true; SERVER=
  grep -E 'listening on' "$TMP/serve.log" | sed 's/^.*INFO //'
  grep -q 'heartbeats=2' "$TMP/serve.log" || { cat "$TMP/serve.log"; fail "$t: the server did not count both heartbeats"; }
done
echo "smoke-static: ok"
