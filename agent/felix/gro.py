"""Receive offload for the userspace tunnel: merge consecutive TCP segments into one GSO frame (pure).

The receive side of the pump writes decapsulated packets into the TUN. One
write per segment means one trip through the node's forwarding path and the
pod's TCP stack per 1.4 kB. Like the kernel's GRO, this coalescer merges
in-order segments of one TCP flow (same addresses, ports, ack, window,
options; only ACK/PSH flags; all but the last of full size) into a single
frame carrying a virtio-net header (``GSO_TCPV4``, checksum partial), which a
TUN opened with ``IFF_VNET_HDR`` accepts as one large packet. Everything else
passes through unchanged with an empty virtio-net header.

Merged frames keep the first segment's headers (sequence number, IP ID),
with total length and IP checksum recomputed and the TCP checksum field set
to the pseudo-header sum, as the kernel expects for CHECKSUM_PARTIAL. The
segments' own TCP checksums are not re-verified (the outer hop is a local
link; the kernel's GRO relies on the NIC for the same).
"""

from __future__ import annotations

import struct

VNET_HDR_LEN = 10
VNET_NONE = bytes(VNET_HDR_LEN)
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_GSO_TCPV4 = 1
TCP_ACK, TCP_PSH = 0x10, 0x08
MAX_FRAME = 62000
MAX_SEGMENTS = 44

_VNET = struct.Struct("=BBHHHH")


class _Flow:
    __slots__ = ("first", "hlen", "mss", "next_seq", "match", "payloads", "size", "psh")

    def __init__(self, pkt: bytes, hlen: int, mss: int, next_seq: int, match: bytes) -> None:
        self.first = pkt
        self.hlen = hlen
        self.mss = mss
        self.next_seq = next_seq
        self.match = match
        self.payloads = [pkt[hlen:]]
        self.size = len(pkt)
        self.psh = False


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ip_checksum(header: bytes | bytearray) -> int:
    """The IPv4 header checksum of ``header`` (its checksum field taken as zero)."""
    words = struct.unpack(f"!{len(header) // 2}H", bytes(header[:10]) + b"\0\0" + bytes(header[12:]))
    return ~_fold(sum(words)) & 0xFFFF


class Coalescer:
    """Feed decapsulated IPv4 packets with :meth:`add`; write the frames it returns, then :meth:`flush`."""

    def __init__(self, max_frame: int = MAX_FRAME, max_segments: int = MAX_SEGMENTS) -> None:
        self.max_frame = max_frame
        self.max_segments = max_segments
        self.flows: dict[bytes, _Flow] = {}
        self.merged = 0  # segments that went into a multi-segment frame

    def add(self, pkt: bytes) -> list[bytes]:
        """Take one IPv4 packet; returns frames (virtio-net header + packet) that are ready now."""
        n = len(pkt)
        if n < 40 or pkt[0] != 0x45 or pkt[9] != 6 or (pkt[6] & 0x3F) or pkt[7]:
            return [VNET_NONE + pkt]  # not plain TCP/IPv4 without options, or a fragment
        total = (pkt[2] << 8) | pkt[3]
        doff = (pkt[32] >> 4) * 4
        hlen = 20 + doff
        flags = pkt[33]
        plen = total - hlen
        key = pkt[12:24]
        flow = self.flows.get(key)
        if total != n or doff < 20 or plen <= 0 or flags & ~(TCP_ACK | TCP_PSH) or not flags & TCP_ACK:
            out = [self._finish(self.flows.pop(key))] if flow is not None else []
            out.append(VNET_NONE + pkt)
            return out
        seq = int.from_bytes(pkt[24:28], "big")
        match = pkt[0:2] + pkt[6:10] + pkt[28:33] + pkt[34:36] + pkt[38:hlen]
        out = []
        if flow is not None:
            if (seq == flow.next_seq and match == flow.match and plen <= flow.mss
                    and len(flow.payloads) < self.max_segments and flow.size + plen <= self.max_frame):
                flow.payloads.append(pkt[hlen:])
                flow.size += plen
                flow.next_seq = (seq + plen) & 0xFFFFFFFF
                if flags & TCP_PSH or plen < flow.mss:
                    flow.psh = bool(flags & TCP_PSH)
                    return [self._finish(self.flows.pop(key))]
                return []
            out.append(self._finish(self.flows.pop(key)))
        if flags & TCP_PSH:
            out.append(VNET_NONE + pkt)
            return out
        self.flows[key] = _Flow(pkt, hlen, plen, (seq + plen) & 0xFFFFFFFF, match)
        return out

    def flush(self) -> list[bytes]:
        """Frames for every flow still being merged (call when no more packets are waiting)."""
        out = [self._finish(f) for f in self.flows.values()]
        self.flows.clear()
        return out

    def _finish(self, f: _Flow) -> bytes:
        if len(f.payloads) == 1:
            return VNET_NONE + f.first
        self.merged += len(f.payloads)
        first = f.first
        hlen = f.hlen
        payload = b"".join(f.payloads)
        total = hlen + len(payload)
        ip = bytearray(first[:20])
        ip[2:4] = total.to_bytes(2, "big")
        ip[10:12] = ip_checksum(ip).to_bytes(2, "big")
        tcp = bytearray(first[20:hlen])
        if f.psh:
            tcp[13] |= TCP_PSH
        tcp_len = total - 20
        pseudo = sum(struct.unpack("!4H", first[12:20])) + 6 + tcp_len
        tcp[16:18] = _fold(pseudo).to_bytes(2, "big")
        vnet = _VNET.pack(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, hlen, f.mss, 20, 16)
        return vnet + bytes(ip) + bytes(tcp) + payload
