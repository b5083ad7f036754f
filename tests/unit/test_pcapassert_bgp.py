"""pcapassert BGP helpers: OPEN capabilities and UPDATE NLRI/next hop from tcp/179 captures.

BGP bytes are built here by hand (RFC 4271/4760/5492/6793/7911 layouts) and put
into TCP segments with scapy; one UPDATE is split over two segments and one
segment is retransmitted, so reassembly is exercised.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from testbed.capture import pcapassert as pa

pytestmark = pytest.mark.unit

# explicit MACs: a bare Ether() makes scapy resolve one by ARP on the machine's network
MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"

N1, N2 = "172.30.0.11", "172.30.0.12"
MARKER = b"\xff" * 16


def msg(mtype: int, body: bytes) -> bytes:
    return MARKER + struct.pack("!HB", 19 + len(body), mtype) + body


def cap(code: int, value: bytes) -> bytes:
    return bytes([code, len(value)]) + value


def bgp_open(asn: int, router_id: str, hold: int = 240, add_path: bool = True) -> bytes:
    caps = [cap(1, struct.pack("!HBB", 1, 0, 1)), cap(2, b""),
            cap(64, struct.pack("!H", 120)), cap(65, struct.pack("!I", asn)),
            cap(70, b""), cap(71, b"")]
    if add_path:
        caps.append(cap(69, struct.pack("!HBB", 1, 1, 3)))
    params = b"".join(bytes([2, len(c)]) + c for c in caps)
    body = struct.pack("!BHH4sB", 4, asn if asn < 65536 else 23456, hold,
                       ipaddress.IPv4Address(router_id).packed, len(params)) + params
    return msg(1, body)


def prefix(p: str, path_id: int | None) -> bytes:
    net = ipaddress.IPv4Network(p)
    nbytes = (net.prefixlen + 7) // 8
    pid = struct.pack("!I", path_id) if path_id is not None else b""
    return pid + bytes([net.prefixlen]) + net.network_address.packed[:nbytes]


def bgp_update(nlri: list[str], next_hop: str, asn: int, withdrawn: list[str] = (),
               path_id: int | None = 1) -> bytes:
    attrs = (bytes([0x40, 1, 1, 0])  # ORIGIN IGP
             + bytes([0x40, 2, 0])  # AS_PATH empty (iBGP)
             + bytes([0x40, 3, 4]) + ipaddress.IPv4Address(next_hop).packed
             + bytes([0x40, 5, 4]) + struct.pack("!I", 100))  # LOCAL_PREF
    wd = b"".join(prefix(p, path_id) for p in withdrawn)
    nl = b"".join(prefix(p, path_id) for p in nlri)
    return msg(2, struct.pack("!H", len(wd)) + wd + struct.pack("!H", len(attrs)) + attrs + nl)


KEEPALIVE = msg(4, b"")


def session(tmp_path, *, add_path: bool = True, n2_update: bytes | None = None,
            name: str = "k8s-w0-eth0") -> str:
    """A capture of one iBGP session N1:179 <- N2:50000: OPENs, KEEPALIVEs, UPDATEs."""
    pid = 1 if add_path else None
    u1 = bgp_update(["192.168.1.0/26"], N1, 64512, path_id=pid)
    u2 = n2_update if n2_update is not None else bgp_update(["192.168.2.0/26"], N2, 64512,
                                                            path_id=pid)
    seq = {N1: 1000, N2: 9000}
    pkts = [
        IP(src=N2, dst=N1) / TCP(sport=50000, dport=179, flags="S", seq=seq[N2] - 1),
        IP(src=N1, dst=N2) / TCP(sport=179, dport=50000, flags="SA", seq=seq[N1] - 1),
    ]

    def send(src: str, data: bytes, retransmit_at: int | None = None) -> None:
        dst = N2 if src == N1 else N1
        sport, dport = (179, 50000) if src == N1 else (50000, 179)
        pkts.append(IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags="PA",
                                               seq=seq[src]) / data)
        seq[src] += len(data)

    send(N2, bgp_open(64512, N2, add_path=add_path))
    send(N1, bgp_open(64512, N1, add_path=add_path) + KEEPALIVE)
    send(N2, KEEPALIVE)
    # N1's UPDATE split over two segments, the first one retransmitted
    half = len(u1) // 2
    start = seq[N1]
    send(N1, u1[:half])
    pkts.append(pkts[-1].copy())
    send(N1, u1[half:])
    assert seq[N1] == start + len(u1)
    send(N2, u2 + KEEPALIVE)
    path = tmp_path / f"{name}.pcap"
    wrpcap(str(path), [Ether(src=MAC_A, dst=MAC_B) / p for p in pkts])
    return str(path)


def test_bgp_messages_reassembles_and_decodes(tmp_path):
    msgs = pa.bgp_messages(session(tmp_path))
    assert [m.type_name for m in msgs] == ["OPEN", "OPEN", "KEEPALIVE", "KEEPALIVE", "UPDATE",
                                           "UPDATE", "KEEPALIVE"]
    upd = msgs[4]
    assert (upd.src, upd.nlri, upd.next_hop, upd.error) == (N1, ["192.168.1.0/26"], N1, None)
    assert "nlri 192.168.1.0/26 next-hop 172.30.0.11" in upd.summary()


def test_bgp_open_passes_with_bird_capabilities(tmp_path):
    path = session(tmp_path)
    m = pa.assert_bgp_open(path, src=N1, dst=N2, asn=64512, router_id=N1, hold_time=240,
                           capabilities=["multiprotocol", "route-refresh", "graceful-restart",
                                         "4-octet-as", "add-path", 70, 71])
    assert m.frame.index == 4


def test_bgp_open_fails_on_missing_capability_or_wrong_as(tmp_path):
    path = session(tmp_path, add_path=False)
    with pytest.raises(AssertionError) as err:
        pa.assert_bgp_open(path, src=N1, capabilities=["add-path"])
    msg_ = str(err.value)
    assert "BGP OPEN 172.30.0.11 > * with capabilities add-path" in msg_
    assert "172.30.0.11 > 172.30.0.12 BGP OPEN AS 64512 hold 240 id 172.30.0.11" in msg_
    with pytest.raises(AssertionError, match="AS 65000"):
        pa.assert_bgp_open(path, asn=65000)
    with pytest.raises(ValueError, match="unknown BGP capability name 'addpath'"):
        pa.assert_bgp_open(path, capabilities=["addpath"])


def test_bgp_update_passes_with_and_without_add_path(tmp_path):
    for add_path in (True, False):
        path = session(tmp_path, add_path=add_path, name=f"n-{add_path}")
        (u,) = pa.assert_bgp_update(path, src=N2, dst=N1, nlri="192.168.2.0/26", next_hop=N2)
        assert u.nlri == ["192.168.2.0/26"]
        pa.assert_bgp_update(path, src=N1, nlri=["192.168.1.0/26"], next_hop=N1)


def test_bgp_update_fails_on_wrong_next_hop_or_missing_prefix(tmp_path):
    path = session(tmp_path)
    with pytest.raises(AssertionError) as err:
        pa.assert_bgp_update(path, src=N2, nlri="192.168.2.0/26", next_hop=N1)
    assert "BGP UPDATE 172.30.0.12 > * with 192.168.2.0/26 via 172.30.0.11" in str(err.value)
    assert "nlri 192.168.2.0/26 next-hop 172.30.0.12" in str(err.value)
    with pytest.raises(AssertionError, match="192.168.9.0/26"):
        pa.assert_bgp_update(path, nlri="192.168.9.0/26")
    with pytest.raises(AssertionError, match="withdrawal of 192.168.1.0/26"):
        pa.assert_bgp_update(path, withdrawn="192.168.1.0/26")


def test_bgp_update_withdrawal_is_decoded(tmp_path):
    wd = bgp_update([], N2, 64512, withdrawn=["192.168.2.0/26"])
    path = session(tmp_path, n2_update=wd)
    (u,) = pa.assert_bgp_update(path, src=N2, withdrawn="192.168.2.0/26")
    assert u.nlri == [] and "withdrawn 192.168.2.0/26" in u.summary()


def test_bgp_assertions_fail_on_capture_without_bgp(tmp_path):
    path = tmp_path / "k8s-w0-eth0.pcap"
    wrpcap(str(path), [Ether(src=MAC_A, dst=MAC_B) / IP(src=N1, dst=N2) / TCP(dport=80)])
    with pytest.raises(AssertionError, match="no BGP message at all"):
        pa.assert_bgp_open(path)
    with pytest.raises(AssertionError, match="with any content"):
        pa.assert_bgp_update(path)
