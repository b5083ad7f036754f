"""Pcap files as tcpdump leaves them: complete or not, and settled before tcpdump stops."""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Sequence
from pathlib import Path

from testbed.capture.errors import CaptureError

_PCAP_MAGICS = {0xA1B2C3D4: ("<", False), 0xD4C3B2A1: (">", False),
                0xA1B23C4D: ("<", True), 0x4D3CB2A1: (">", True)}


def check_pcap(path: str | os.PathLike[str]) -> int:
    """Check that ``path`` is a complete classic pcap file; return its packet count.

    Raises :class:`CaptureError` naming the problem: missing, empty, bad magic,
    or a last record cut short (tcpdump killed mid-write).
    """
    p = Path(path)
    if not p.exists():
        raise CaptureError(f"{p}: no capture file was written")
    data = p.read_bytes()
    if len(data) < 24:
        raise CaptureError(f"{p}: {len(data)} bytes, shorter than a pcap header (24): incomplete")
    magic = struct.unpack("<I", data[:4])[0]
    if magic not in _PCAP_MAGICS:
        raise CaptureError(f"{p}: not a pcap file (magic {magic:#010x})")
    order, _nano = _PCAP_MAGICS[magic]
    off, count = 24, 0
    while off < len(data):
        if off + 16 > len(data):
            raise CaptureError(f"{p}: truncated record header after {count} packet(s)")
        incl = struct.unpack(order + "I", data[off + 8:off + 12])[0]
        if off + 16 + incl > len(data):
            raise CaptureError(f"{p}: packet {count + 1} cut short ({len(data) - off - 16} of "
                               f"{incl} bytes): incomplete file")
        off += 16 + incl
        count += 1
    return count


def settle_files(paths: Sequence[Path], quiet: float, limit: float = 0.3) -> None:
    """Wait until no capture file grew for ``quiet`` seconds, at most ``limit`` seconds.

    With --immediate-mode a packet reaches the file within a millisecond or so;
    this gives the last packets of a test time to be written before SIGINT.
    Busy interfaces (etcd, BGP keepalives) never go quiet: hence the limit.
    """
    if not paths or quiet <= 0:
        return

    def sizes() -> tuple[int, ...]:
        return tuple(p.stat().st_size if p.exists() else -1 for p in paths)

    deadline = time.monotonic() + limit
    last, since = sizes(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(quiet / 4)
        now = sizes()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
