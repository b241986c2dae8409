#!/usr/bin/env python3
"""A ringbeat client written from PROTOCOL.md alone (no project code): sends one
heartbeat, version 1 or (with --key) authenticated version 2, over UDP or TCP, waits for
its ack, checks it (echoed fields; for version 2 the tag under the same key) and prints
the ack status. Exit status: 0 when the ack says accepted, 1 otherwise.

    scripts/rbclient.py 127.0.0.1:7979 --device 42
    scripts/rbclient.py 127.0.0.1:7979 --device 42 --key 000102030405060708090a0b0c0d0e0f --boot 3 --seq 7 --tcp
"""
import argparse
import socket
import struct
import sys
import time

MASK = (1 << 64) - 1
STATUS = {0: "accepted", 1: "table_full", 2: "unknown_device", 3: "auth_required",
          4: "auth_failed", 5: "replayed", 6: "busy"}


def _rotl(x, b):
    return ((x << b) | (x >> (64 - b))) & MASK


def siphash_2_4_128(key, msg):
    """SipHash-2-4 with 128-bit output (the reference algorithm)."""
    k0, k1 = struct.unpack("<QQ", key)
    v = [k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D ^ 0xEE,
         k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573]

    def sipround():
        v[0] = (v[0] + v[1]) & MASK; v[1] = _rotl(v[1], 13) ^ v[0]; v[0] = _rotl(v[0], 32)
        v[2] = (v[2] + v[3]) & MASK; v[3] = _rotl(v[3], 16) ^ v[2]
        v[0] = (v[0] + v[3]) & MASK; v[3] = _rotl(v[3], 21) ^ v[0]
        v[2] = (v[2] + v[1]) & MASK; v[1] = _rotl(v[1], 17) ^ v[2]; v[2] = _rotl(v[2], 32)

    whole = len(msg) - len(msg) % 8
    for i in range(0, whole, 8):
        m = struct.unpack_from("<Q", msg, i)[0]
        v[3] ^= m
        sipround(); sipround()
        v[0] ^= m
    last = ((len(msg) & 0xFF) << 56) | int.from_bytes(msg[whole:], "little")
    v[3] ^= last
    sipround(); sipround()
    v[0] ^= last
    v[2] ^= 0xEE
    for _ in range(4):
        sipround()
    out = struct.pack("<Q", v[0] ^ v[1] ^ v[2] ^ v[3])
    v[1] ^= 0xDD
    for _ in range(4):
        sipround()
    return out + struct.pack("<Q", v[0] ^ v[1] ^ v[2] ^ v[3])


def heartbeat(device, seq, interval_ds, sent_ns, key=None, boot=0):
    version = 1 if key is None else 2
    head = b"RBHB" + struct.pack("<HBBQIHHQ", version, 1, 1, device, seq, 0, interval_ds, sent_ns)
    if key is None:
        return head
    body = head + struct.pack("<I", boot) + bytes(12)
    return body + siphash_2_4_128(key, body)


def read_ack(frame, key, device, seq, sent_ns, boot):
    if frame[:4] != b"RBHB":
        sys.exit("ack: bad magic")
    version, kind, flags, dev, aseq, status, interval_ds, asent = struct.unpack_from("<HBBQIHHQ", frame, 4)
    want = 1 if key is None else 2
    if (version, kind, dev, aseq, asent) != (want, 2, device, seq, sent_ns):
        sys.exit(f"ack does not echo the heartbeat: version {version} kind {kind} device {dev} seq {aseq}")
    if key is not None:
        (aboot,) = struct.unpack_from("<I", frame, 32)
        tag_ok = frame[48:64] == siphash_2_4_128(key, frame[:48])
        if not tag_ok and not (status != 0 and frame[48:64] == bytes(16)):
            sys.exit("ack: wrong tag (not from a server holding the device's key)")
        if aboot != boot:
            sys.exit(f"ack: boot {aboot}, sent {boot}")
    return status, interval_ds


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("target", help="HOST:PORT")
    p.add_argument("--device", type=int, required=True)
    p.add_argument("--seq", type=int, default=1)
    p.add_argument("--interval-ds", type=int, default=100)
    p.add_argument("--key", help="32 hex digits: send version 2 tagged with this key")
    p.add_argument("--boot", type=int, default=0, help="version 2 restart counter")
    p.add_argument("--tcp", action="store_true")
    a = p.parse_args()
    host, port = a.target.rsplit(":", 1)
    key = bytes.fromhex(a.key) if a.key else None
    sent_ns = time.monotonic_ns()
    frame = heartbeat(a.device, a.seq, a.interval_ds, sent_ns, key, a.boot)
    if a.tcp:
        with socket.create_connection((host, int(port)), timeout=3) as s:
            s.sendall(frame)
            ack = b""
            while len(ack) < len(frame):
                chunk = s.recv(len(frame) - len(ack))
                if not chunk:
                    sys.exit("connection closed before the ack")
                ack += chunk
    else:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(3)
            s.sendto(frame, (host, int(port)))
            ack, _ = s.recvfrom(4096)
    if len(ack) != len(frame):
        sys.exit(f"ack of {len(ack)} bytes for a {len(frame)}-byte heartbeat")
    status, interval_ds = read_ack(ack, key, a.device, a.seq, sent_ns, a.boot)
    print(f"status {status} ({STATUS.get(status, 'unknown')}), expected interval {interval_ds / 10} s")
    sys.exit(0 if status == 0 else 1)


if __name__ == "__main__":
    main()
