#!/usr/bin/env bash
# Builds statically linked `ringbeat` and `ringbeat-bench` (musl libc, no glibc needed
# on the target) for x86_64 and aarch64 edge boards, copies them to target/static/TARGET/
# and prints their sizes.
#
# usage: scripts/build-static.sh [TARGET...]
#   default targets: x86_64-unknown-linux-musl aarch64-unknown-linux-musl
# Needs: `rustup target add TARGET`; Debian `musl-tools` (musl-gcc, for mimalloc's C
# on x86_64) and `gcc-aarch64-linux-gnu` (C compiler and linker driver for aarch64).
# Built without the `tokio-uring` comparison engine (tokio-uring does not build for
# musl); `--engine auto`, `uring` and `epoll` are all there.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)
OUT=target/static

need() {
  command -v "$1" >/dev/null || { echo "build-static: $1 not found: $2" >&2; exit 1; }
}
for t in "${TARGETS[@]}"; do
  rustup target list --installed 2>/dev/null | grep -qx "$t" ||
    { echo "build-static: Rust target $t missing: rustup target add $t" >&2; exit 1; }
  case $t in
    x86_64-unknown-linux-musl)
      need musl-gcc "apt-get install musl-tools"
      export CC_x86_64_unknown_linux_musl=musl-gcc ;;
    aarch64-unknown-linux-musl)
      need aarch64-linux-gnu-gcc "apt-get install gcc-aarch64-linux-gnu"
      export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
      export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_MUSL_LINKER=aarch64-linux-gnu-gcc ;;
    *) echo "build-static: unsupported target $t" >&2; exit 1 ;;
  esac
  cargo build --locked --profile dist --target "$t" --no-default-features \
    -p ringbeat -p ringbeat-bench
  mkdir -p "$OUT/$t"
  for bin in ringbeat ringbeat-bench; do
    cp "target/$t/dist/$bin" "$OUT/$t/$bin"
    desc=$(file -b "$OUT/$t/$bin")
    case $desc in
      *"statically linked"*|*"static-pie linked"*) ;;
      *) echo "build-static: $OUT/$t/$bin is not static: $desc" >&2; exit 1 ;;
    esac
  done
done
echo
echo "| target | binary | bytes | MiB |"
echo "|---|---|---|---|"
for t in "${TARGETS[@]}"; do
  for bin in ringbeat ringbeat-bench; do
    b=$(stat -c %s "$OUT/$t/$bin")
    awk -v t="$t" -v n="$bin" -v b="$b" 'BEGIN { printf "| %s | %s | %d | %.1f |\n", t, n, b, b / 1048576 }'
  done
done
