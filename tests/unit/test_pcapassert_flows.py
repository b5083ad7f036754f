"""pcapassert flow helpers: each must pass where the thing is present and fail where absent.

Captures are built with scapy (wrpcap) in the test's tmp dir: Ethernet captures
for cali/eth0 interfaces and raw-IP (linktype 101) captures for tunl0.
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import ARP, Ether
from scapy.utils import wrpcap

from testbed.capture import pcapassert as pa

pytestmark = pytest.mark.unit

# explicit MACs: a bare Ether() makes scapy resolve one by ARP on the machine's network
MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"

POD_A, POD_B = "192.168.1.2", "192.168.2.3"
NODE_A, NODE_B = "172.30.0.11", "172.30.0.12"
EXT = "203.0.113.10"
CLUSTER_IP = "10.96.0.20"
HOST_MAC, POD_MAC = "ee:ee:ee:ee:ee:ee", "0a:58:c0:a8:01:02"


def eth(pkt):
    return Ether(src=POD_MAC, dst=HOST_MAC) / pkt


def http_exchange(client: str, server: str, sport: int = 40000, dport: int = 80,
                  status: int = 200, isn: int = 1000) -> list:
    """The IP packets of a curl: handshake, GET, response, FIN."""
    req = b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: curl/7.88\r\n\r\n"
    resp = f"HTTP/1.1 {status} OK\r\nContent-Length: 2\r\n\r\nok".encode()
    c = IP(src=client, dst=server)
    s = IP(src=server, dst=client)
    return [
        c / TCP(sport=sport, dport=dport, flags="S", seq=isn),
        s / TCP(sport=dport, dport=sport, flags="SA", seq=5000, ack=isn + 1),
        c / TCP(sport=sport, dport=dport, flags="A", seq=isn + 1, ack=5001),
        c / TCP(sport=sport, dport=dport, flags="PA", seq=isn + 1, ack=5001) / req,
        s / TCP(sport=dport, dport=sport, flags="PA", seq=5001, ack=isn + 1 + len(req)) / resp,
        c / TCP(sport=sport, dport=dport, flags="FA", seq=isn + 1 + len(req), ack=5001 + len(resp)),
    ]


def write(tmp_path, name: str, pkts: list, linktype: int | None = None) -> str:
    path = tmp_path / f"{name}.pcap"
    for i, p in enumerate(pkts):
        p.time = 1700000000 + i * 0.001
    if linktype is None:
        wrpcap(str(path), pkts)
    else:
        wrpcap(str(path), pkts, linktype=linktype)
    return str(path)


def ipip_wrap(pkts: list, src: str = NODE_A, dst: str = NODE_B) -> list:
    out = []
    for p in pkts:
        i = p[IP]
        back = i.src == POD_B
        out.append(Ether(src=MAC_A, dst=MAC_B) / IP(src=dst if back else src, dst=src if back else dst, proto=4) / i)
    return out


# ----------------------------------------------------------------------------- reading


def test_load_reads_ethernet_and_raw_ip(tmp_path):
    e = pa.load(write(tmp_path, "k8s-w0-cali1234567890a", [eth(p) for p in http_exchange(POD_A, POD_B)]))
    r = pa.load(write(tmp_path, "k8s-w0-tunl0", http_exchange(POD_A, POD_B), linktype=101))
    assert (e.linktype, r.linktype) == (1, 101)
    assert len(e) == len(r) == 6
    assert e.node == "k8s-w0" and e.iface == "cali1234567890a" and r.iface == "tunl0"
    assert r.frames[0].inner.src == POD_A and r.frames[0].tcp_flags == "S"
    assert 'HTTP/1.1 200 OK' in r.frames[4].summary()


def test_load_rejects_empty_and_non_pcap_files(tmp_path):
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    with pytest.raises(pa.CaptureAssertionError, match="empty"):
        pa.load(empty)
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture at all, just text\n" * 4)
    with pytest.raises(pa.CaptureAssertionError, match="not a pcap"):
        pa.load(junk)
    with pytest.raises(FileNotFoundError):
        pa.load(tmp_path / "missing.pcap")


def test_bad_address_in_matcher_is_a_clear_error():
    with pytest.raises(ValueError, match="not an IP address or CIDR: '192.168.1'"):
        pa.inner("192.168.1")


# ----------------------------------------------------------------------------- HTTP


def test_http_exchange_passes_and_returns_the_four_frames(tmp_path):
    cap = write(tmp_path, "k8s-w0-caliaaaa", [eth(p) for p in http_exchange(POD_A, POD_B)])
    frames = pa.assert_http_exchange(cap, POD_A, POD_B)
    assert [f.index for f in frames] == [1, 2, 4, 5]


def test_http_exchange_fails_without_response(tmp_path):
    cap = write(tmp_path, "k8s-w0-caliaaaa", [eth(p) for p in http_exchange(POD_A, POD_B)[:4]])
    with pytest.raises(AssertionError) as err:
        pa.assert_http_exchange(cap, POD_A, POD_B)
    msg = str(err.value)
    assert "HTTP exchange 192.168.1.2 -> 192.168.2.3:80" in msg
    assert "k8s-w0-caliaaaa.pcap (interface caliaaaa" in msg
    assert "step 4: packet 192.168.2.3 > 192.168.1.2 proto TCP and TCP sport 80 and HTTP response status 200 -> NOT SEEN after #4" in msg
    assert '"GET / HTTP/1.1"' in msg  # the summary of what was there


def test_http_exchange_fails_on_wrong_status_and_wrong_addresses(tmp_path):
    cap = write(tmp_path, "n-eth0", [eth(p) for p in http_exchange(POD_A, POD_B, status=503)])
    with pytest.raises(AssertionError, match="HTTP response status 200"):
        pa.assert_http_exchange(cap, POD_A, POD_B)
    pa.assert_http_exchange(cap, POD_A, POD_B, status=503)
    with pytest.raises(AssertionError, match="step 1: .* -> NOT SEEN"):
        pa.assert_http_exchange(cap, POD_B, POD_A)


# ----------------------------------------------------------------------------- IPIP


def test_ipip_passes_with_outer_node_and_inner_pod_addresses(tmp_path):
    cap = write(tmp_path, "k8s-w0-eth0", ipip_wrap(http_exchange(POD_A, POD_B)))
    got = pa.assert_ipip(cap, outer_src=NODE_A, outer_dst=NODE_B, inner_src=POD_A,
                         inner_dst=POD_B, no_plain=["192.168.0.0/16"])
    assert len(got) == 4  # client -> server direction only
    pa.assert_ipip(cap, outer_src=NODE_B, outer_dst=NODE_A, inner_src=POD_B, inner_dst=POD_A)
    # the HTTP exchange is visible through the encapsulation as well
    pa.assert_http_exchange(cap, POD_A, POD_B)


def test_ipip_fails_when_traffic_is_not_encapsulated(tmp_path):
    cap = write(tmp_path, "k8s-w0-eth0", [Ether(src=MAC_A, dst=MAC_B) / p for p in http_exchange(POD_A, POD_B)])
    with pytest.raises(AssertionError) as err:
        pa.assert_ipip(cap, outer_src=NODE_A, outer_dst=NODE_B, inner_src=POD_A, inner_dst=POD_B)
    msg = str(err.value)
    assert "IPIP 172.30.0.11 > 172.30.0.12 carrying 192.168.1.2 > 192.168.2.3" in msg
    assert "found 0 matching among 6 packet(s)" in msg
    assert "IP 192.168.1.2.40000 > 192.168.2.3.80 TCP [S]" in msg


def test_ipip_fails_on_wrong_outer_address(tmp_path):
    cap = write(tmp_path, "k8s-w0-eth0", ipip_wrap(http_exchange(POD_A, POD_B), src="172.30.0.99"))
    with pytest.raises(AssertionError, match="found 0 matching"):
        pa.assert_ipip(cap, outer_src=NODE_A, outer_dst=NODE_B)


def test_ipip_fails_when_plain_pod_traffic_also_leaks(tmp_path):
    pkts = ipip_wrap(http_exchange(POD_A, POD_B)) + [Ether(src=MAC_A, dst=MAC_B) / IP(src=POD_A, dst=POD_B) / ICMP()]
    cap = write(tmp_path, "k8s-w0-eth0", pkts)
    with pytest.raises(AssertionError, match="no un-encapsulated pod traffic between"):
        pa.assert_ipip(cap, outer_src=NODE_A, outer_dst=NODE_B, inner_src=POD_A, inner_dst=POD_B)
    with pytest.raises(AssertionError, match="un-encapsulated traffic to or from 192.168.0.0/16"):
        pa.assert_no_plain(cap, "192.168.0.0/16")
    with pytest.raises(AssertionError, match="un-encapsulated traffic to or from 192.168.0.0/16"):
        pa.assert_ipip(cap, outer_src=NODE_A, outer_dst=NODE_B, no_plain="192.168.0.0/16")


# ----------------------------------------------------------------------------- tunl0


def test_on_tunnel_passes_on_raw_ip_capture(tmp_path):
    cap = write(tmp_path, "k8s-w1-tunl0", http_exchange(POD_A, POD_B), linktype=101)
    got = pa.assert_on_tunnel(cap, POD_A, POD_B, proto=6)
    assert len(got) == 4
    pa.assert_none(cap, pa.ipip())


def test_on_tunnel_fails_when_tunnel_saw_other_traffic_or_nothing(tmp_path):
    cap = write(tmp_path, "k8s-w1-tunl0", http_exchange("192.168.3.4", POD_B), linktype=101)
    with pytest.raises(AssertionError) as err:
        pa.assert_on_tunnel(cap, POD_A, POD_B)
    assert "decapsulated packets 192.168.1.2 > 192.168.2.3" in str(err.value)
    assert "192.168.3.4.40000 > 192.168.2.3.80" in str(err.value)
    # an IPIP frame is not a decapsulated packet
    enc = write(tmp_path, "k8s-w1-eth0", ipip_wrap(http_exchange(POD_A, POD_B)))
    with pytest.raises(AssertionError):
        pa.assert_on_tunnel(enc, POD_A, POD_B)


def test_assert_none_fails_when_traffic_is_present(tmp_path):
    empty = write(tmp_path, "k8s-w0-tunl0", [], linktype=101)
    pa.assert_none(empty)
    busy = write(tmp_path, "k8s-w0-tunl1", http_exchange(POD_A, POD_B), linktype=101)
    with pytest.raises(AssertionError, match="expected no traffic"):
        pa.assert_none(busy)
    with pytest.raises(AssertionError, match="no packet between"):
        pa.assert_none(busy, pa.between(POD_B, POD_A))


# ----------------------------------------------------------------------------- ARP


def arp_pair(answer_mac: str = HOST_MAC) -> list:
    return [
        Ether(src=POD_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=POD_MAC, psrc=POD_A,
                                                          pdst="169.254.1.1"),
        Ether(src=answer_mac, dst=POD_MAC) / ARP(op=2, hwsrc=answer_mac, psrc="169.254.1.1",
                                                 hwdst=POD_MAC, pdst=POD_A),
    ]


def test_arp_gateway_passes_with_proxy_arp_reply(tmp_path):
    pkts = arp_pair() + [eth(p) for p in http_exchange(POD_A, POD_B)]
    cap = write(tmp_path, "k8s-w0-caliaaaa", pkts)
    req, rep = pa.assert_arp_gateway(cap, asker=POD_A, before_traffic=True)
    assert (req.index, rep.index) == (1, 2)


def test_arp_gateway_fails_on_wrong_mac_missing_reply_or_late_arp(tmp_path):
    cap = write(tmp_path, "k8s-w0-caliaaaa", arp_pair("02:42:ac:11:00:02"))
    with pytest.raises(AssertionError) as err:
        pa.assert_arp_gateway(cap)
    assert "ARP reply 169.254.1.1 is-at ee:ee:ee:ee:ee:ee" in str(err.value)
    assert "is-at 02:42:ac:11:00:02" in str(err.value)
    cap2 = write(tmp_path, "k8s-w0-calibbbb", arp_pair()[:1])
    with pytest.raises(AssertionError, match="step 2: .* -> NOT SEEN"):
        pa.assert_arp_gateway(cap2)
    req, rep = arp_pair()
    syn = eth(http_exchange(POD_A, POD_B)[0])
    cap3 = write(tmp_path, "k8s-w0-calicccc", [req, syn, rep])
    with pytest.raises(AssertionError, match="came before the reply"):
        pa.assert_arp_gateway(cap3, asker=POD_A, before_traffic=True)
    cap4 = write(tmp_path, "k8s-w0-calidddd", [req, rep])
    with pytest.raises(AssertionError, match="an IP packet from 192.168.1.2 after the ARP reply"):
        pa.assert_arp_gateway(cap4, asker=POD_A, before_traffic=True)
    # traffic earlier in the capture (neighbour entry later flushed) is fine
    cap5 = write(tmp_path, "k8s-w0-calieeee", [syn.copy(), req, rep, syn])
    pa.assert_arp_gateway(cap5, asker=POD_A, before_traffic=True)


# ----------------------------------------------------------------------------- masquerade


def test_masqueraded_passes_when_pod_is_hidden_behind_node(tmp_path):
    cap = write(tmp_path, "ext-eth0", [Ether(src=MAC_A, dst=MAC_B) / p for p in http_exchange(NODE_A, EXT)])
    got = pa.assert_masqueraded(cap, node_ip=NODE_A, pod_ip=POD_A, dst=EXT, port=80)
    assert got[0].tcp_flags == "S"


def test_masqueraded_fails_when_pod_address_reaches_the_segment(tmp_path):
    cap = write(tmp_path, "ext-eth0", [Ether(src=MAC_A, dst=MAC_B) / p for p in http_exchange(POD_A, EXT)])
    with pytest.raises(AssertionError) as err:
        pa.assert_masqueraded(cap, node_ip=NODE_A, pod_ip=POD_A, dst=EXT)
    assert "masqueraded packets 172.30.0.11 > 203.0.113.10" in str(err.value)
    assert "192.168.1.2.40000 > 203.0.113.10.80" in str(err.value)
    mixed = write(tmp_path, "ext-eth1", [Ether(src=MAC_A, dst=MAC_B) / p for p in http_exchange(NODE_A, EXT)
                                         + http_exchange(POD_A, EXT)])
    with pytest.raises(AssertionError, match="carrying the pod address 192.168.1.2"):
        pa.assert_masqueraded(mixed, node_ip=NODE_A, pod_ip=POD_A, dst=EXT)


# ----------------------------------------------------------------------------- DNAT


def test_dnat_passes_on_pod_side_and_compared_with_client_side(tmp_path):
    client = write(tmp_path, "k8s-w1-caliclient", [eth(p) for p in http_exchange(POD_B, CLUSTER_IP)])
    pod = write(tmp_path, "k8s-w0-calipod", [eth(p) for p in http_exchange(POD_B, POD_A)])
    assert len(pa.assert_dnat(pod, cluster_ip=CLUSTER_IP, pod_ip=POD_A, client=POD_B)) == 1
    c, p = pa.assert_dnat(pod, cluster_ip=CLUSTER_IP, pod_ip=POD_A, client=POD_B,
                          client_side=client)
    assert (c.sport, c.seq) == (p.sport, p.seq) and c.inner.dst == CLUSTER_IP


def test_dnat_fails_without_translation_or_on_unrelated_connection(tmp_path):
    undnat = write(tmp_path, "k8s-w0-calipod", [eth(p) for p in http_exchange(POD_B, CLUSTER_IP)])
    with pytest.raises(AssertionError) as err:
        pa.assert_dnat(undnat, cluster_ip=CLUSTER_IP, pod_ip=POD_A)
    assert "SYN * > 192.168.1.2:80 (after DNAT)" in str(err.value)
    client = write(tmp_path, "k8s-w1-caliclient", [eth(p) for p in http_exchange(POD_B, CLUSTER_IP)])
    other = write(tmp_path, "k8s-w0-calipod2",
                  [eth(p) for p in http_exchange(POD_B, POD_A, sport=41000, isn=77)])
    with pytest.raises(AssertionError, match="no SYN with the same source port and sequence"):
        pa.assert_dnat(other, cluster_ip=CLUSTER_IP, pod_ip=POD_A, client_side=client)
    leak = write(tmp_path, "k8s-w0-calipod3", [eth(p) for p in http_exchange(POD_B, POD_A)
                                               + http_exchange(POD_B, CLUSTER_IP)])
    with pytest.raises(AssertionError, match="still addressed to the ClusterIP"):
        pa.assert_dnat(leak, cluster_ip=CLUSTER_IP, pod_ip=POD_A)


# ----------------------------------------------------------------------------- MTU


def big_ping(size: int) -> IP:
    return IP(src=POD_A, dst=POD_B, flags="DF") / ICMP() / (b"x" * size)


def test_frag_needed_passes_with_the_right_mtu(tmp_path):
    err = IP(src="169.254.1.1", dst=POD_A) / ICMP(type=3, code=4, nexthopmtu=1480) / big_ping(1453)
    cap = write(tmp_path, "k8s-w0-caliaaaa", [eth(big_ping(1453)), Ether(src=MAC_A, dst=MAC_B) / err])
    (f,) = pa.assert_frag_needed(cap, mtu=1480, to=POD_A, about_dst=POD_B)
    assert "frag-needed mtu 1480" in f.summary()


def test_frag_needed_fails_on_other_mtu_or_when_ping_passed(tmp_path):
    err = IP(src="169.254.1.1", dst=POD_A) / ICMP(type=3, code=4, nexthopmtu=1440) / big_ping(1453)
    cap = write(tmp_path, "k8s-w0-caliaaaa", [eth(big_ping(1453)), Ether(src=MAC_A, dst=MAC_B) / err])
    with pytest.raises(AssertionError) as e:
        pa.assert_frag_needed(cap, mtu=1480)
    assert "ICMP fragmentation-needed mtu 1480" in str(e.value)
    assert "frag-needed mtu 1440" in str(e.value)
    ok = IP(src=POD_B, dst=POD_A) / ICMP(type=0) / (b"x" * 1452)
    cap2 = write(tmp_path, "k8s-w0-calibbbb", [eth(big_ping(1452)), Ether(src=MAC_A, dst=MAC_B) / ok])
    with pytest.raises(AssertionError, match="found 0 matching among 2"):
        pa.assert_frag_needed(cap2, mtu=1480)


# ----------------------------------------------------------------------------- matchers


def test_matchers_combine_and_describe_themselves(tmp_path):
    cap = pa.load(write(tmp_path, "k8s-w0-eth0", ipip_wrap(http_exchange(POD_A, POD_B))))
    m = pa.ipip(outer_src=NODE_A) & pa.tcp(dport=80, flags="S")
    assert cap.count(m) == 1
    assert str(m) == "IPIP 172.30.0.11 > * carrying * > * and TCP dport 80 [S]"
    assert cap.count(~pa.ipip()) == 0
    assert cap.count(pa.tcp(flags="S") | pa.tcp(flags="SA")) == 2
    with pytest.raises(AssertionError, match="exactly 2 packet"):
        cap.expect(pa.tcp(flags="S"), exactly=2)


# ----------------------------------------------------------------------------- decoding


def test_decoder_agrees_with_scapy_on_many_shapes(tmp_path):
    """Our struct decoder vs scapy's dissection of the same frames."""
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import CookedLinux, Dot1Q
    from scapy.utils import wrpcapng

    pkts = [eth(p) for p in http_exchange(POD_A, POD_B)] + [
        Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=7) / IP(src=POD_A, dst=POD_B) / ICMP(id=0x42, seq=3),
        Ether(src=MAC_A, dst=MAC_B) / IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=1, dport=2, flags="S"),
        Ether(src=MAC_A, dst=MAC_B) / IP(src=POD_A, dst=POD_B, flags="MF", frag=0) / TCP(dport=80) / (b"a" * 40),
        Ether(src=MAC_A, dst=MAC_B) / IP(src=POD_A, dst=POD_B, frag=100, proto=6) / (b"b" * 40),
        Ether(bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=POD_A, dst=POD_B) / TCP(dport=80, flags="PA")
                    / b"GET / HTTP/1.1\r\n\r\n") + b"\0" * 6),  # padding is not payload
    ]
    path = write(tmp_path, "n-eth0", pkts)
    tr = pa.load(path)
    vlan, v6, frag0, frag1, padded = tr.frames[6:]
    assert (vlan.inner.src, vlan.icmp_type, vlan.icmp_id, vlan.icmp_seq) == (POD_A, 8, 0x42, 3)
    assert (v6.inner.version, v6.inner.src, v6.tcp_flags) == (6, "fd00::1", "S")
    assert frag0.dport == 80 and frag1.dport is None and frag1.inner.proto == 6
    assert padded.payload == b"GET / HTTP/1.1\r\n\r\n"
    for f in tr.frames[:6]:
        sp = f.packet  # scapy's view, on demand
        assert sp[IP].src == f.inner.src and sp[TCP].sport == f.sport
        assert str(sp[TCP].flags) == f.tcp_flags and sp[TCP].seq == f.seq
    # Linux cooked captures (tcpdump -i any) and pcapng files read too
    cooked = tmp_path / "n-any.pcap"
    wrpcap(str(cooked), [CookedLinux(proto=0x0800) / IP(src=POD_A, dst=POD_B) / ICMP()],
           linktype=113)
    (c,) = pa.load(cooked).frames
    assert (c.inner.dst, c.icmp_type) == (POD_B, 8)
    ng = tmp_path / "n-ng.pcapng"
    wrpcapng(str(ng), [eth(p) for p in http_exchange(POD_A, POD_B)])
    pa.assert_http_exchange(ng, POD_A, POD_B)


def test_load_ignores_a_last_record_still_being_written(tmp_path):
    path = write(tmp_path, "n-eth0", [eth(p) for p in http_exchange(POD_A, POD_B)])
    data = open(path, "rb").read()
    cut = tmp_path / "n-cut.pcap"
    cut.write_bytes(data[:-5])
    assert len(pa.load(cut)) == 5


# -- VXLAN and plain routing (issue 14) ----------------------------------------------------------

VTEP_A, VTEP_B = "66:5a:10:2b:3c:4d", "66:5b:20:3c:4d:5e"


def vxlan_wrap(pkts: list, src: str = NODE_A, dst: str = NODE_B, vni: int = 4096) -> list:
    from scapy.layers.inet import UDP
    from scapy.layers.vxlan import VXLAN

    return [Ether(src=MAC_A, dst=MAC_B) / IP(src=src, dst=dst) / UDP(sport=51234, dport=4789)
            / VXLAN(vni=vni, flags=0x08) / Ether(src=VTEP_A, dst=VTEP_B) / p for p in pkts]


def test_vxlan_frames_decode_outer_vni_inner_ethernet_and_pod_packet(tmp_path):
    path = write(tmp_path, "k8s-w1-eth0", vxlan_wrap(http_exchange(POD_A, POD_B)))
    frames = pa.load(path).frames
    f = frames[0]
    assert f.encap == "vxlan" and f.vni == 4096 and (f.vxlan_sport, f.vxlan_dport) == (51234, 4789)
    assert (f.outer.src, f.outer.dst, f.outer.proto) == (NODE_A, NODE_B, 17)
    assert (f.inner.src, f.inner.dst, f.tcp_flags, f.dport) == (POD_A, POD_B, "S", 80)
    assert (f.inner_eth_src, f.inner_eth_dst) == (VTEP_A, VTEP_B)
    assert f.describe().startswith(f"IP {NODE_A}.51234 > {NODE_B}.4789 VXLAN vni 4096 {VTEP_A} > {VTEP_B}: "
                                   f"IP {POD_A}.40000 > {POD_B}.80 TCP [S]")
    got = pa.assert_vxlan(path, outer_src=NODE_A, outer_dst=NODE_B, inner_src=POD_A, inner_dst=POD_B,
                          vni=4096, inner_mac_src=VTEP_A, inner_mac_dst=VTEP_B, no_plain="192.168.0.0/16")
    assert len(got) >= 3
    pa.assert_http_exchange(path, POD_A, POD_B)  # inner headers, as through IPIP
    assert not pa.ipip()(f) and not pa.plain()(f)


@pytest.mark.parametrize("bad, match", [
    (dict(vni=7), "vni 7"),
    (dict(inner_mac_src="66:00:00:00:00:01"), "ether 66:00:00:00:00:01"),
    (dict(outer_src=NODE_B), f"VXLAN {NODE_B} > {NODE_B}"),
    (dict(inner_dst="192.168.9.9"), "carrying 192.168.1.2 > 192.168.9.9"),
])
def test_assert_vxlan_fails_naming_what_differs(tmp_path, bad, match):
    path = write(tmp_path, "eth0", vxlan_wrap(http_exchange(POD_A, POD_B)))
    kw = dict(outer_src=NODE_A, outer_dst=NODE_B, inner_src=POD_A, inner_dst=POD_B, vni=4096,
              inner_mac_src=VTEP_A, inner_mac_dst=VTEP_B)
    kw.update(bad)
    with pytest.raises(pa.CaptureAssertionError, match=match):
        pa.assert_vxlan(path, **kw)


def test_assert_vxlan_fails_on_ipip_and_plain_traffic(tmp_path):
    ipip = write(tmp_path, "ipip", ipip_wrap(http_exchange(POD_A, POD_B)))
    with pytest.raises(pa.CaptureAssertionError, match="VXLAN"):
        pa.assert_vxlan(ipip, outer_src=NODE_A, outer_dst=NODE_B, inner_src=POD_A, inner_dst=POD_B)
    mixed = write(tmp_path, "mixed", vxlan_wrap(http_exchange(POD_A, POD_B))
                  + [Ether(src=MAC_A, dst=MAC_B) / p for p in http_exchange(POD_A, POD_B, sport=40001)])
    with pytest.raises(pa.CaptureAssertionError, match="un-encapsulated pod traffic"):
        pa.assert_vxlan(mixed, outer_src=NODE_A, outer_dst=NODE_B, inner_src=POD_A, inner_dst=POD_B)


def test_assert_routed_sees_pod_addresses_on_the_wire_and_refuses_encapsulation(tmp_path):
    routed = write(tmp_path, "routed", [Ether(src=MAC_A, dst=MAC_B) / p for p in http_exchange(POD_A, POD_B)])
    assert len(pa.assert_routed(routed, POD_A, POD_B, eth_dst=MAC_B)) >= 3
    with pytest.raises(pa.CaptureAssertionError, match="to 02:00:00:00:00:0c"):
        pa.assert_routed(routed, POD_A, POD_B, eth_dst="02:00:00:00:00:0c")
    for wrapped in (vxlan_wrap(http_exchange(POD_A, POD_B)), ipip_wrap(http_exchange(POD_A, POD_B))):
        path = write(tmp_path, "enc", wrapped + [Ether(src=MAC_A, dst=MAC_B) / IP(src=POD_A, dst=POD_B) / ICMP()])
        with pytest.raises(pa.CaptureAssertionError, match="expected plain routing"):
            pa.assert_routed(path, POD_A, POD_B)
