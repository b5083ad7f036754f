"""Golden-byte tests for the BGP codecs (vectors computed by hand from RFC 4271/5492/6793)."""

from ipaddress import IPv4Address

import pytest

from agent.bgp import errors as E
from agent.bgp import messages as M
from agent.bgp.prefix import parse as N

pytestmark = pytest.mark.unit

MK = "ff" * 16

# The OPEN BIRD 1.6 sends with Calico's bird.cfg (proto/bgp/packets.c bgp_create_open):
# every capability in ONE optional parameter, in BIRD's order
OPEN_HEX = (
    MK + "003f" + "01"                              # length 63, OPEN
    + "04" + "fc00" + "00f0" + "ac1e000b"          # v4, AS 64512, hold 240, id 172.30.0.11
    + "22" + "02" + "20"                           # opt len 34: one capabilities param of 32
    + "0104" + "00010001"                          # 1 multiprotocol: AFI 1, reserved, SAFI 1
    + "0200"                                       # 2 route refresh
    + "4006" + "0078" + "00010100"                 # 64 GR: no R bit, 120 s; ipv4/unicast, F=0
    + "4104" + "0000fc00"                          # 65 4-octet AS 64512
    + "4504" + "00010103"                          # 69 ADD-PATH ipv4/unicast, send+receive
    + "4600"                                       # 70 enhanced route refresh
    + "4700"                                       # 71 long-lived GR, aware (no families)
)

# the same capabilities, one optional parameter each (RFC 5492 allows both; we accept both)
OPEN_MANY_PARAMS_HEX = (
    MK + "004b" + "01" + "04" + "fc00" + "00f0" + "ac1e000b" + "2e"
    + "0206" + "0104" + "00010001" + "0202" + "0200" + "0208" + "4006" + "0078" + "00010100"
    + "0206" + "4104" + "0000fc00" + "0206" + "4504" + "00010103" + "0202" + "4600"
    + "0202" + "4700"
)

OPEN_MSG = M.Open(asn=64512, hold_time=240, router_id=IPv4Address("172.30.0.11"), capabilities=[
    M.MultiProtocol(), M.RouteRefreshCap(), M.GracefulRestart(120),
    M.FourOctetAS(64512), M.AddPath(((1, 1, 3),)), M.EnhancedRouteRefreshCap(),
    M.LongLivedGR(())])

UPDATE_HEX = (
    MK + "0030" + "02" + "0000" + "0015"
    + "400101" + "00"            # ORIGIN IGP
    + "400200"                   # empty AS_PATH (iBGP)
    + "400304" + "ac1e000b"      # NEXT_HOP 172.30.0.11
    + "400504" + "00000064"      # LOCAL_PREF 100
    + "18" + "c0a801"            # 192.168.1.0/24
)


def hx(s: str) -> bytes:
    return bytes.fromhex(s)


def test_keepalive_golden():
    assert M.encode(M.Keepalive()) == hx(MK + "0013" + "04")
    assert M.decode(hx(MK + "001304")) == M.Keepalive()


def test_open_golden_roundtrip():
    assert M.encode(OPEN_MSG).hex() == OPEN_HEX
    assert M.decode(hx(OPEN_HEX)) == OPEN_MSG
    assert M.decode(hx(OPEN_MANY_PARAMS_HEX)) == OPEN_MSG


def test_speaker_sends_birds_capability_set_with_calicos_config():
    """calico.md section 9: multiprotocol IPv4, route refresh, GR able, 4-octet AS, ADD-PATH
    tx+rx (``add paths on``), enhanced route refresh, LLGR aware; byte for byte BIRD's."""
    from agent.bgp.config import PeerConfig, SpeakerConfig
    from agent.bgp.speaker import local_capabilities

    me = IPv4Address("172.30.0.11")
    cfg = SpeakerConfig(router_id=me, local_as=64512, local_address=me)
    peer = PeerConfig("Mesh_172_30_0_12", IPv4Address("172.30.0.12"), 64512)
    msg = M.Open(asn=64512, hold_time=240, router_id=me,
                 capabilities=local_capabilities(cfg, peer))
    assert M.encode(msg).hex() == OPEN_HEX


def test_open_my_as_is_as_trans_from_65535_as_bird():
    msg = M.Open(asn=65535, hold_time=90, router_id=IPv4Address("1.2.3.4"),
                 capabilities=[M.FourOctetAS(65535)])
    assert M.encode(msg)[20:22].hex() == "5ba0"
    assert M.decode(M.encode(msg)).asn == 65535


def test_open_large_as_uses_as_trans():
    msg = M.Open(asn=4200000001, hold_time=90, router_id=IPv4Address("1.2.3.4"),
                 capabilities=[M.FourOctetAS(4200000001)])
    raw = M.encode(msg)
    assert raw[20:22].hex() == "5ba0"            # AS_TRANS 23456
    assert M.decode(raw).asn == 4200000001


def test_open_parses_llgr_and_unknown_capability():
    caps = "4707" + "00010180" + "000e10" + "4903" + "abcdef"   # LLGR 3600 s; unknown 73
    body = "04" + "fc00" + "00f0" + "01020304" + "10" + "020e" + caps
    raw = hx(MK + f"{19 + len(body) // 2:04x}" + "01" + body)
    msg = M.decode(raw)
    assert msg.capabilities == [M.LongLivedGR(((1, 1, 0x80, 3600),)), M.Capability(73, hx("abcdef"))]


def test_update_golden_roundtrip():
    upd = M.Update(attributes=M.Attributes(origin=0, next_hop=IPv4Address("172.30.0.11"),
                                           local_pref=100),
                   nlri=[N("192.168.1.0/24")])
    assert M.encode(upd).hex() == UPDATE_HEX
    back = M.decode(hx(UPDATE_HEX))
    assert back.nlri == upd.nlri and back.attributes == upd.attributes
    assert not back.treat_as_withdraw


def test_update_as_path_med_rr_attributes_and_withdraw():
    attrs = M.Attributes(origin=2, as_path=((M.AS_SEQUENCE, (64512, 65001)),),
                         next_hop=IPv4Address("10.1.2.3"), med=7,
                         originator_id=IPv4Address("1.1.1.1"),
                         cluster_list=(IPv4Address("224.0.0.1"),))
    upd = M.Update(withdrawn=[N("10.0.0.0/8")], attributes=attrs,
                   nlri=[N("192.168.0.0/26"), N("0.0.0.0/0")])
    body = ("0002" + "080a"
            + "002d"
            + "400101" + "02"
            + "40020a" + "0202" + "0000fc00" + "0000fde9"
            + "400304" + "0a010203"
            + "800404" + "00000007"
            + "800904" + "01010101"
            + "800a04" + "e0000001"
            + "1ac0a80000" + "00")
    raw = M.encode(upd)
    assert raw.hex() == MK + f"{19 + len(body) // 2:04x}" + "02" + body
    assert M.decode(raw) == upd
    assert attrs.as_path_length() == 2 and attrs.first_as() == 64512


def test_update_addpath_ids():
    upd = M.Update(withdrawn=[N("10.0.0.0/24")], withdrawn_ids=[5],
                   attributes=M.Attributes(next_hop=IPv4Address("10.0.0.1")),
                   nlri=[N("10.1.0.0/16")], nlri_ids=[9])
    raw = M.encode(upd, addpath=True)
    assert raw[21:29].hex() == "00000005180a0000"
    back = M.decode(raw, addpath=True)
    assert back.nlri_ids == [9] and back.withdrawn_ids == [5] and back.nlri == upd.nlri


def test_end_of_rib():
    raw = hx(MK + "0017" + "02" + "00000000")
    assert M.decode(raw).is_end_of_rib()


def test_notification_and_route_refresh_golden():
    assert M.encode(M.Notification(6, 2)).hex() == MK + "0015" + "03" + "0602"
    assert M.decode(hx(MK + "0017" + "03" + "0202" + "fc00")) == M.Notification(2, 2, hx("fc00"))
    assert M.encode(M.RouteRefresh()).hex() == MK + "0017" + "05" + "00010001"
    assert M.decode(hx(MK + "0017" + "05" + "00010201")) == M.RouteRefresh(1, 1, 2)


# (message, the NOTIFICATION BIRD 1.6 sends for it: code, subcode, data), each read from
# proto/bgp/packets.c / attrs.c (bgp_rx, bgp_rx_packet, bgp_rx_open, bgp_parse_options,
# bgp_parse_capabilities, bgp_rx_update, DECODE_PREFIX, bgp_decode_attrs)
BIRD_NOTIFICATIONS = [
    ("marker", ("fe" + "ff" * 15) + "001304", 1, 1, ""),
    ("length below 19", MK + "001204", 1, 2, "0012"),
    ("length above 4096", MK + "100104" + "00" * (0x1001 - 19), 1, 2, "1001"),
    ("unknown type", MK + "001409" + "00", 1, 3, "09"),
    ("OPEN shorter than 29", MK + "001c01" + "04fc0000f001020304", 1, 2, "001c"),
    # the issue-16 case: BIRD checks the length against the parameters length first
    ("OPEN optional parameters length mismatch", MK + "001e01" + "04fc0000f001020304" + "05" + "02",
     1, 2, "001e"),
    ("OPEN version 3", MK + "001d01" + "03fc0000f001020304" + "00", 2, 1, "03"),
    ("OPEN truncated parameter", MK + "001f01" + "04fc0000f001020304" + "02" + "0205", 2, 0, ""),
    ("OPEN truncated capability", MK + "002101" + "04fc0000f001020304" + "04" + "0202" + "4104", 2, 0,
     ""),
    ("OPEN malformed 4-octet AS capability", MK + "002301" + "04fc0000f001020304" + "06" + "0204"
     + "4102" + "0000", 2, 0, ""),
    ("OPEN ADD-PATH mode 4", MK + "002501" + "04fc0000f001020304" + "08" + "0206" + "4504"
     + "00010104", 2, 0, ""),
    ("OPEN parameter type 3", MK + "002001" + "04fc0000f001020304" + "03" + "0301ff", 2, 4, "03"),
    ("OPEN hold time 2", MK + "001d01" + "04fc00000201020304" + "00", 2, 6, "0002"),
    ("OPEN identifier 0", MK + "001d01" + "04fc0000f000000000" + "00", 2, 3, "00000000"),
    ("UPDATE shorter than 23", MK + "001602" + "000000", 1, 2, "0016"),
    ("UPDATE withdrawn length overruns", MK + "001702" + "00050000", 3, 1, ""),
    ("UPDATE attribute length overruns", MK + "001a02" + "00000004" + "400101", 3, 1, ""),
    ("UPDATE NLRI without attributes", MK + "001902" + "00000000" + "1801", 3, 1, ""),
    ("UPDATE prefix length 33", MK + "001902" + "0002" + "21ff" + "0000", 3, 10, ""),
    ("UPDATE truncated prefix", MK + "001902" + "0002" + "18ff" + "0000", 3, 1, ""),
    ("UPDATE attribute header truncated", MK + "001802" + "0000" + "0001" + "40", 3, 1, ""),
    ("UPDATE unrecognized well-known attribute", MK + "001b02" + "0000" + "0004" + "4063" + "0100"
     + "", 3, 2, "40630100"),
    ("NOTIFICATION shorter than 21", MK + "001403" + "06", 1, 2, "0014"),
    ("ROUTE-REFRESH shorter than 23", MK + "001605" + "000100", 1, 2, "0016"),
    ("ROUTE-REFRESH longer than 23", MK + "001805" + "0001000100", 7, 1,
     MK + "001805" + "0001000100"),
]


@pytest.mark.parametrize("what, raw, code, sub, data", BIRD_NOTIFICATIONS,
                         ids=[c[0] for c in BIRD_NOTIFICATIONS])
def test_malformed_input_gets_birds_notification(what, raw, code, sub, data):
    with pytest.raises(E.BGPError) as info:
        M.decode(hx(raw))
    err = info.value
    assert (err.code, err.subcode, err.data.hex()) == (code, sub, data), (what, str(err))


def test_what_bird_accepts_we_accept():
    """BIRD does not check a KEEPALIVE's length, ignores an unknown ROUTE-REFRESH subtype,
    ignores a malformed multiprotocol capability (IPv4 build), accepts ADD-PATH mode 0 and
    takes a 4-octet AS that disagrees with My AS (a warning)."""
    assert M.decode(hx(MK + "001404" + "00")) == M.Keepalive()
    assert M.decode(hx(MK + "0017" + "05" + "00010901")).subtype == 9
    body = "04" + "fc00" + "00f0" + "01020304" + "0c" + "020a" + "0102" + "0001" + "4504" + "00010100"
    assert M.decode(hx(MK + f"{19 + len(body) // 2:04x}" + "01" + body)).capabilities == [
        M.Capability(1, hx("0001")), M.AddPath(((1, 1, 0),))]
    body = "04" + "fc00" + "00f0" + "01020304" + "08" + "0206" + "4104" + "0000fde8"
    assert M.decode(hx(MK + f"{19 + len(body) // 2:04x}" + "01" + body)).asn == 65000


def _update_with(attr_hex: str, nlri="18c0a801") -> bytes:
    body = "0000" + f"{len(attr_hex) // 2:04x}" + attr_hex + nlri
    return hx(MK + f"{19 + len(body) // 2:04x}" + "02" + body)


GOOD = {"origin": "40010100", "path": "400200", "nh": "400304ac1e000b"}


@pytest.mark.parametrize("attrs, why", [
    ("40010103" + GOOD["path"] + GOOD["nh"], "invalid ORIGIN"),
    (GOOD["origin"] + "40020302" + "01" + "00" + GOOD["nh"], "AS_PATH"),
    (GOOD["origin"] + GOOD["path"] + "40030300" + "0000", "NEXT_HOP length"),
    (GOOD["origin"] + GOOD["path"], "missing well-known"),
    (GOOD["origin"] + GOOD["path"] + GOOD["nh"] + "400403" + "000000", "flags"),
    (GOOD["origin"] + GOOD["path"] + GOOD["nh"] + "800a03" + "010203", "CLUSTER_LIST"),
    (GOOD["origin"] + GOOD["path"] + "400304e0000001", "invalid NEXT_HOP"),
])
def test_rfc7606_treat_as_withdraw(attrs, why):
    upd = M.decode(_update_with(attrs))
    assert upd.treat_as_withdraw
    assert upd.nlri == [] and upd.withdrawn == [N("192.168.1.0/24")]
    assert any(why in e for e in upd.errors), upd.errors


def test_unknown_optional_transitive_kept_with_partial_bit():
    upd = M.decode(_update_with(GOOD["origin"] + GOOD["path"] + GOOD["nh"] + "c0080400010002"))
    assert upd.attributes.other == ((0xE0, 8, hx("00010002")),)
    assert not upd.treat_as_withdraw


def test_duplicate_attribute_keeps_first():
    upd = M.decode(_update_with(GOOD["origin"] + "40010102" + GOOD["path"] + GOOD["nh"]))
    assert upd.attributes.origin == 0 and not upd.treat_as_withdraw
