"""The ceiling of the other design for tunl0 without kernel ipip: batched TUN I/O with GSO.

With ``TUNSETOFFLOAD`` (TSO) and a virtio-net header the userspace pump could read 64 KB
TCP super-packets from the TUN in one read, but it cannot send them as one: a raw socket
has no GSO and virtio-net has no IPIP GSO type. So the pump would cut each frame into
MTU-size IPIP packets itself, computing every segment's TCP checksum (the frame arrives
``CHECKSUM_PARTIAL``) and IP header in Python. This measures that work alone, with no
system call at all: the upper bound of that design, per core, next to the target (half of a
routed veth, ~8 Gbit/s here; bench/tunnel_throughput.py measures the routed veth).

Prints a table and writes JSON (default reports/bench/tun_gso_ceiling.json). No root needed.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import struct
import time

MSS = 1440  # tunl0 MTU 1480 - 40


def csum16(b: bytes) -> int:
    """The 16-bit one's complement sum of ``b`` (the fastest stdlib way: array + sum)."""
    if len(b) % 2:
        b += b"\0"
    s = sum(array.array("H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def segment(frame: bytes) -> list[tuple[bytes, bytes, bytes, bytes]]:
    """Cut a TSO payload into MSS segments with their outer, IP and TCP headers (checksummed)."""
    out = []
    ip, tcp, outer = bytearray(20), bytearray(20), bytearray(20)
    for off in range(0, len(frame), MSS):
        seg = frame[off:off + MSS]
        tcp[16:18] = struct.pack("!H", ~csum16(bytes(tcp) + seg) & 0xFFFF)
        struct.pack_into("!HxxxxxxH", ip, 2, 40 + len(seg), 0)
        struct.pack_into("!H", ip, 10, ~csum16(bytes(ip)) & 0xFFFF)
        out.append((bytes(outer), bytes(ip), bytes(tcp), seg))
    return out


def main() -> int:
    """Time both steps and print the ceilings."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--json", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                   "reports", "bench", "tun_gso_ceiling.json"))
    args = ap.parse_args()
    payload = os.urandom(45 * MSS)
    rows = []
    for name, fn in (("TCP checksum of 64 KB", csum16), ("segment 64 KB into IPIP packets", segment)):
        t = time.perf_counter()
        for _ in range(args.rounds):
            fn(payload)
        dt = (time.perf_counter() - t) / args.rounds
        rows.append({"step": name, "us_per_64k": round(dt * 1e6, 1),
                     "ceiling_gbit_s": round(len(payload) * 8 / dt / 1e9, 2), "loadavg": os.getloadavg()[0]})
    print(f"{'step (Python, one core, no syscalls)':<38} {'us/64KB':>8} {'ceiling Gbit/s':>15} {'loadavg':>8}")
    for r in rows:
        print(f"{r['step']:<38} {r['us_per_64k']:>8.0f} {r['ceiling_gbit_s']:>15.2f} {r['loadavg']:>8.2f}")
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"benchmark": "tun_gso_ceiling", "mss": MSS, "results": rows}, f, indent=2)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
