#!/usr/bin/env python3
"""Writes a devices file (the server's --devices-file, the harness's --auth-keys) for
the ids FIRST..FIRST+N-1, each with a random 128-bit key unless --no-keys.

    scripts/devices-file.py 2000000 --out /tmp/devices.txt
    scripts/devices-file.py 100 --first 4242 --no-keys --interval 30s
"""
import argparse
import os
import sys


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("devices", type=int, help="how many devices")
    p.add_argument("--first", type=int, default=1, help="the first id (default 1)")
    p.add_argument("--no-keys", action="store_true", help="list ids without keys")
    p.add_argument("--interval", help="an expected interval for every device, e.g. 30s")
    p.add_argument("--out", help="file to write (default: standard output)")
    a = p.parse_args()
    if a.devices < 1 or a.first < 1 or a.first + a.devices - 1 >= 2**64:
        sys.exit("error: need devices >= 1 and ids between 1 and 2^64 - 1")
    out = open(a.out, "w") if a.out else sys.stdout
    keys = os.urandom(16 * a.devices) if not a.no_keys else b""
    suffix = f" interval={a.interval}" if a.interval else ""
    chunk = []
    for i in range(a.devices):
        line = str(a.first + i)
        if not a.no_keys:
            line += " key=" + keys[16 * i:16 * i + 16].hex()
        chunk.append(line + suffix + "\n")
        if len(chunk) == 65536:
            out.write("".join(chunk))
            chunk = []
    out.write("".join(chunk))
    if a.out:
        out.close()


if __name__ == "__main__":
    main()
