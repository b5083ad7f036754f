"""The userspace tunnel's receive coalescer (TCP segments -> one GSO frame)."""

import socket
import struct

import pytest

from agent.felix.gro import VNET_HDR_LEN, VNET_NONE, Coalescer, ip_checksum

pytestmark = pytest.mark.unit

SRC, DST = "192.168.1.5", "192.168.2.7"
OPTS = bytes([1, 1, 8, 10]) + struct.pack("!II", 1000, 2000)  # NOP NOP timestamps


def seg(seq: int, payload: bytes, flags: int = 0x10, ack: int = 77, window: int = 500, opts: bytes = OPTS,
        proto: int = 6, frag: int = 0x4000, ident: int = 1) -> bytes:
    doff = 20 + len(opts)
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, seq, ack, (doff // 4) << 4, flags, window, 0xBEEF, 0) + opts
    total = 20 + len(tcp) + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, ident, frag, 63, proto, 0,
                     socket.inet_aton(SRC), socket.inet_aton(DST))
    ip = ip[:10] + ip_checksum(ip).to_bytes(2, "big") + ip[12:]
    return ip + tcp + payload


def test_in_order_full_segments_become_one_gso_frame():
    c = Coalescer()
    mss = 1428 - len(OPTS)
    p = [bytes([i]) * mss for i in range(3)]
    assert c.add(seg(100, p[0], ident=1)) == []
    assert c.add(seg(100 + mss, p[1], ident=2)) == []
    assert c.add(seg(100 + 2 * mss, p[2], ident=3)) == []
    [frame] = c.flush()
    flags, gso, hdr_len, gso_size, csum_start, csum_off = struct.unpack("=BBHHHH", frame[:VNET_HDR_LEN])
    assert (flags, gso, hdr_len, gso_size, csum_start, csum_off) == (1, 1, 20 + 20 + len(OPTS), mss, 20, 16)
    pkt = frame[VNET_HDR_LEN:]
    assert len(pkt) == hdr_len + 3 * mss and pkt[hdr_len:] == b"".join(p)
    assert struct.unpack("!H", pkt[2:4])[0] == len(pkt)  # total length
    assert ip_checksum(pkt[:20]) == struct.unpack("!H", pkt[10:12])[0]
    assert struct.unpack("!I", pkt[24:28])[0] == 100  # first segment's sequence number
    # TCP checksum field holds the (uncomplemented) pseudo-header sum for CHECKSUM_PARTIAL.
    s = sum(struct.unpack("!4H", pkt[12:20])) + 6 + (len(pkt) - 20)
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    assert struct.unpack("!H", pkt[36:38])[0] == s
    assert c.merged == 3


def test_short_or_psh_segment_ends_the_frame():
    c = Coalescer()
    assert c.add(seg(0, b"a" * 1000)) == []
    [frame] = c.add(seg(1000, b"b" * 10, flags=0x18))
    pkt = frame[VNET_HDR_LEN:]
    assert pkt[33] & 0x08 and pkt[-10:] == b"b" * 10 and c.flows == {}


def test_things_that_are_not_merged_pass_through_unchanged():
    c = Coalescer()
    icmp = seg(0, b"x" * 8, proto=1)
    assert c.add(icmp) == [VNET_NONE + icmp]
    syn = seg(0, b"", flags=0x02)
    assert c.add(syn) == [VNET_NONE + syn]
    first = seg(0, b"a" * 100)
    assert c.add(first) == []
    # A gap in sequence numbers: the pending segment goes out alone (unchanged), the new one waits.
    gap = seg(500, b"c" * 100)
    assert c.add(gap) == [VNET_NONE + first]
    # A different ack number cannot be merged either.
    other_ack = seg(600, b"d" * 100, ack=78)
    assert c.add(other_ack) == [VNET_NONE + gap]
    fin = seg(700, b"e" * 100, flags=0x11)
    assert c.add(fin) == [VNET_NONE + other_ack, VNET_NONE + fin]
    assert c.flush() == []


def test_frame_size_is_bounded():
    c = Coalescer(max_segments=2)
    out = []
    for i in range(5):
        out += c.add(seg(i * 1000, b"z" * 1000))
    out += c.flush()
    sizes = [len(f) - VNET_HDR_LEN for f in out]
    hdr = 40 + len(OPTS)
    assert sizes == [hdr + 2000, hdr + 2000, hdr + 1000]
