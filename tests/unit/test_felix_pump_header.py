"""The userspace tunl0's outer header: what Linux ip_tunnel_xmit builds for the fallback tunl0."""

import socket
import struct

import pytest

from agent.felix.pump import OUTER_LEN, encapsulate_into, outer_header_for, outer_template

pytestmark = pytest.mark.unit

GW = "172.31.9.2"


def inner(ttl: int = 63, tos: int = 0, frag: int = 0x4000, proto: int = 1) -> bytes:
    """An inner IPv4 header + 8 bytes of payload."""
    return struct.pack("!BBHHHBBH4s4s", 0x45, tos, 28, 0x1234, frag, ttl, proto, 0xABCD,
                       socket.inet_aton("192.168.10.5"), socket.inet_aton("192.168.20.7")) + bytes(8)


def fields(hdr: bytes) -> dict:
    ver_ihl, tos, length, ident, frag, ttl, proto, csum, src, dst = struct.unpack("!BBHHHBBH4s4s", hdr)
    return {"ver_ihl": ver_ihl, "tos": tos, "len": length, "id": ident, "frag": frag, "ttl": ttl,
            "proto": proto, "csum": csum, "src": socket.inet_ntoa(src), "dst": socket.inet_ntoa(dst)}


@pytest.mark.parametrize("ttl", [1, 63, 64, 255])
def test_outer_ttl_is_the_inner_ttl(ttl):
    assert fields(outer_header_for(inner(ttl=ttl), GW))["ttl"] == ttl


@pytest.mark.parametrize(("inner_frag", "outer_frag"), [
    (0x4000, 0x4000),  # DF copied
    (0x0000, 0x0000),  # no DF: none of its own (nopmtudisc)
    (0x2000, 0x0000),  # inner MF is not the outer's business
    (0x4000 | 0x2000 | 185, 0x4000),  # a DF fragment? only DF carries over, never MF or offset
    (0x00B9, 0x0000),  # a last fragment at offset 185*8
])
def test_outer_df_follows_the_inner_df_only(inner_frag, outer_frag):
    assert fields(outer_header_for(inner(frag=inner_frag), GW))["frag"] == outer_frag


@pytest.mark.parametrize(("inner_tos", "outer_tos"), [
    (0x00, 0x00),
    (0xB8, 0x00),  # DSCP EF is not copied (tos 0, not inherit)
    (0x01, 0x01),  # ECT(1)
    (0x02, 0x02),  # ECT(0)
    (0x03, 0x02),  # CE becomes ECT(0) (RFC 6040 normal mode)
    (0xBB, 0x02),
    (0x2A, 0x02),
])
def test_outer_tos_carries_only_the_ecn_bits(inner_tos, outer_tos):
    assert fields(outer_header_for(inner(tos=inner_tos), GW))["tos"] == outer_tos


def test_kernel_filled_fields_are_zero_and_the_rest_fixed():
    f = fields(outer_header_for(inner(ttl=7), GW))
    assert f == {"ver_ihl": 0x45, "tos": 0, "len": 0, "id": 0, "frag": 0x4000, "ttl": 7, "proto": 4,
                 "csum": 0, "src": "0.0.0.0", "dst": GW}


def test_encapsulate_in_place_leaves_the_inner_packet_untouched():
    pkt = inner(ttl=41, tos=0x03, frag=0)
    buf = bytearray(b"\xff" * OUTER_LEN) + bytearray(pkt)  # stale bytes from an earlier packet
    encapsulate_into(buf, outer_template(GW))
    assert bytes(buf[OUTER_LEN:]) == pkt
    f = fields(bytes(buf[:OUTER_LEN]))
    assert (f["ttl"], f["tos"], f["frag"], f["id"], f["src"]) == (41, 2, 0, 0, "0.0.0.0")


def test_non_ipv4_is_refused_by_name():
    with pytest.raises(ValueError, match="not an IPv4 packet"):
        outer_header_for(b"\x60" + bytes(39), GW)
    with pytest.raises(ValueError, match="not an IPv4 packet"):
        outer_header_for(b"\x45", GW)


def _outer_and_inner(outer_tos: int, inner_tos: int) -> bytearray:
    from agent.felix.gro import ip_checksum

    pkt = bytearray(inner(tos=inner_tos))
    pkt[10:12] = ip_checksum(pkt[:20]).to_bytes(2, "big")
    outer = bytearray(outer_header_for(bytes(pkt), GW))
    outer[1] = outer_tos
    return outer + pkt


@pytest.mark.parametrize(("inner_tos", "after"), [(0x01, 0x03), (0x02, 0x03), (0x03, 0x03), (0xBA, 0xBB)])
def test_outer_ce_marks_an_ecn_capable_inner_packet(inner_tos, after):
    from agent.felix.gro import ip_checksum
    from agent.felix.pump import ecn_decapsulate

    buf = _outer_and_inner(0x03, inner_tos)
    assert ecn_decapsulate(buf, OUTER_LEN) is True
    hdr = buf[OUTER_LEN:OUTER_LEN + 20]
    assert hdr[1] == after
    assert int.from_bytes(hdr[10:12], "big") == ip_checksum(hdr)  # still valid
    orig = _outer_and_inner(0x03, inner_tos)
    assert buf[:OUTER_LEN + 1] == orig[:OUTER_LEN + 1] and buf[OUTER_LEN + 2:OUTER_LEN + 10] == \
        orig[OUTER_LEN + 2:OUTER_LEN + 10] and buf[OUTER_LEN + 12:] == orig[OUTER_LEN + 12:]


def test_outer_ce_over_a_not_ect_inner_packet_is_dropped():
    from agent.felix.pump import ecn_decapsulate

    buf = _outer_and_inner(0x03, 0xB8)
    before = bytes(buf)
    assert ecn_decapsulate(buf, OUTER_LEN) is False
    assert bytes(buf) == before
