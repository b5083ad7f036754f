"""The tc-BPF tunnel's pure parts: the outer-header rule of ip_tunnel_xmit, map key/value
layouts, and the programs as assembled (what they call, what they carry).

The programs' behaviour on real packets is checked by the kernel itself
(tests/netns/test_felix_bpf_tunnel.py runs them with BPF_PROG_TEST_RUN against
:func:`outer_header`).
"""

from __future__ import annotations

import socket
import struct

import pytest

from agent.felix import ipip_bpf as P
from agent.felix.pump import outer_header_for
from kernel.bpfasm import INSN_SIZE

pytestmark = pytest.mark.unit


def _inner(tos: int = 0, ttl: int = 63, df: bool = True, length: int = 84, ident: int = 0x1234) -> bytes:
    h = struct.pack("!BBHHHBBH4s4s", 0x45, tos, length, ident, 0x4000 if df else 0, ttl, 1, 0,
                    socket.inet_aton("192.168.10.5"), socket.inet_aton("192.168.20.7"))
    h = h[:10] + struct.pack("!H", P.ip_checksum(h)) + h[12:]
    return h + bytes(length - 20)


def test_outer_tos_is_the_inner_ecn_with_ce_as_ect0():
    """tos 0 (not inherit) + INET_ECN_encapsulate: DSCP never copied; ECT(0)/ECT(1) copied; CE -> ECT(0)."""
    assert [P.outer_tos(t) for t in (0x00, 0x01, 0x02, 0x03, 0xB8, 0xB9, 0xBA, 0xBB, 0xFF)] == [
        0, 1, 2, 2, 0, 1, 2, 2, 2]


@pytest.mark.parametrize("tos,ttl,df", [(0, 63, True), (0xB8, 1, False), (0x03, 255, True), (0x01, 7, False)])
def test_outer_header_fields(tos, ttl, df):
    inner = _inner(tos, ttl, df, length=1480)
    out = P.outer_header(inner, "172.31.9.1", "172.31.9.2", 0xBEEF)
    ver, otos, total, ident, frag, ottl, proto, csum, src, dst = struct.unpack("!BBHHHBBH4s4s", out)
    assert (ver, otos, total, ident, ottl, proto) == (0x45, P.outer_tos(tos), 1500, 0xBEEF, ttl, 4)
    assert frag == (0x4000 if df else 0)  # DF copied, never MF, offset 0 (nopmtudisc)
    assert P.ip_checksum(out) == 0  # a valid header checksum sums to zero
    assert (socket.inet_ntoa(src), socket.inet_ntoa(dst)) == ("172.31.9.1", "172.31.9.2")


def test_the_pump_and_the_programs_follow_one_rule():
    """The userspace pump fills the same per-packet fields (the kernel fills length, ID, checksum
    and source for its raw socket)."""
    for tos in range(0, 256, 7):
        for df in (True, False):
            inner = _inner(tos, 40, df)
            bpf_hdr = P.outer_header(inner, "10.0.0.1", "10.0.0.2", 1)
            pump_hdr = outer_header_for(inner, "10.0.0.2")
            for i in (0, 1, 6, 7, 8, 9, 16, 17, 18, 19):
                assert bpf_hdr[i] == pump_hdr[i], (tos, df, i)


def test_outer_header_refuses_what_is_not_ipv4():
    with pytest.raises(ValueError, match="not an IPv4 packet"):
        P.outer_header(b"\x60" + bytes(39), "10.0.0.1", "10.0.0.2", 1)


def test_map_layouts():
    assert P.hosts_key("172.31.9.2") == struct.pack("=I", 32) + socket.inet_aton("172.31.9.2")
    assert P.hosts_key("10.1.0.0/16") == struct.pack("=I", 16) + socket.inet_aton("10.1.0.0")
    assert P.hosts_key("10.1.2.3/16") == P.hosts_key("10.1.0.0/16")
    assert [P.hosts_member(P.hosts_key(m)) for m in ("172.31.9.2", "10.1.0.0/16")] == ["172.31.9.2", "10.1.0.0/16"]
    with pytest.raises(ValueError):
        P.hosts_key("node-1")
    assert P.remotes_key("172.31.9.2") == socket.inet_aton("172.31.9.2")
    raw = struct.pack("=IIQQ", 0x12345, 0, 7, 7000)
    assert P.remotes_value(raw) == {"next_id": 0x2345, "tx_packets": 7, "tx_bytes": 7000}
    assert P.hosts_value(struct.pack("=QQ", 3, 300)) == {"rx_packets": 3, "rx_bytes": 300}
    counts = P.counters_value(struct.pack("=7Q", 1, 2, 3, 4, 5, 6, 7))
    assert list(counts) == list(P.COUNTER_NAMES) and counts["rx_ecn_drop"] == 6
    assert (P.HOSTS_KEY.size, P.HOSTS_VALUE.size, P.REMOTES_KEY.size, P.REMOTES_VALUE.size) == (8, 16, 4, 24)


CFG = P.ProgConfig(tunl0_ifindex=7, peer_ifindex=8, tunl0_mac=bytes.fromhex("020000000007"),
                   peer_mac=bytes.fromhex("0a0b0c0d0e0f"), hosts_fd=11, remotes_fd=12, counters_fd=13)


def _slots(code: bytes) -> list[tuple[int, int, int, int]]:
    out = []
    for i in range(0, len(code), INSN_SIZE):
        op, regs, off, imm = struct.unpack_from("<BBhi", code, i)
        out.append((op, regs, off, imm))
    return out


def test_programs_call_only_the_helpers_they_need():
    calls = {name: {imm for op, _r, _o, imm in _slots(code) if op == 0x85}
             for name, code in (("encap", P.encap_program(CFG)), ("decap", P.decap_program(CFG)))}
    assert calls["encap"] == {P.MAP_LOOKUP, P.MAP_UPDATE, P.GET_PRANDOM_U32, P.SKB_LOAD_BYTES, P.FIB_LOOKUP,
                              P.CSUM_DIFF, P.SKB_ADJUST_ROOM, P.SKB_STORE_BYTES, P.REDIRECT_NEIGH}
    assert calls["decap"] == {P.MAP_LOOKUP, P.SKB_LOAD_BYTES, P.FIB_LOOKUP, P.L3_CSUM_REPLACE, P.SKB_STORE_BYTES,
                              P.SKB_ADJUST_ROOM, P.REDIRECT}


def test_programs_carry_the_nodes_devices_and_maps():
    enc, dec = _slots(P.encap_program(CFG)), _slots(P.decap_program(CFG))
    map_fds = lambda slots: {imm for op, regs, _o, imm in slots if op == 0x18 and regs >> 4 == 1}  # noqa: E731
    assert map_fds(enc) == {12, 13} and map_fds(dec) == {11, 13}
    assert (0x62, 0x0A, P.S_FIB + P.FIB_IFINDEX, 7) in enc  # oif tunl0 for the route lookups
    assert (0xB7, 0x01, 0, 8) in dec  # redirect to tunl0's peer
    macs = CFG.tunl0_mac + CFG.peer_mac
    words = {imm & 0xFFFFFFFF for op, _r, _o, imm in dec if op == 0xB4}
    assert {struct.unpack_from("<I", macs, i)[0] for i in (0, 4, 8)} <= words
    assert P.encap_program(CFG) != P.encap_program(P.ProgConfig(9, 8, CFG.tunl0_mac, CFG.peer_mac, 11, 12, 13))


def test_programs_end_in_exits_and_fit():
    for code in (P.encap_program(CFG), P.decap_program(CFG), P.fib_flags_probe()):
        slots = _slots(code)
        assert slots[-1][0] == 0x95 and len(slots) < 512
        for i, (op, _r, off, _imm) in enumerate(slots):
            if op & 0x07 in (0x05, 0x06) and op not in (0x85, 0x95):
                assert 0 <= i + 1 + off < len(slots), (i, off)
