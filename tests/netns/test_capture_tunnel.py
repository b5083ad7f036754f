"""Captures of real tunnel traffic: IPIP on the wire, raw-IP frames on a TUN tunl0,
and a kernel-made ICMP fragmentation-needed, asserted with testbed.capture.pcapassert.

This machine's kernel has no ipip module, so the tunnel is done the way the
agent's userspace datapath does it: a raw IPPROTO_IPIP socket sends and
receives protocol-4 packets, and the receiver writes the inner packet into a
TUN device named tunl0 (created while the capture runs, so it is picked up late).
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading

import pytest
from scapy.layers.inet import IP, TCP

from kernel.netlink import Netlink
from kernel.netns import entered
from testbed.capture import pcapassert as pa
from testbed.capture.group import CaptureGroup
from testbed.poll import wait_for
from testbed.report import flows as report
from tests.support import require_tool, sh

pytestmark = pytest.mark.netns

NODE_A, NODE_B = "192.0.2.11", "192.0.2.12"
POD_A, POD_B = "192.168.1.2", "192.168.2.3"



class TunHelper:
    """The receiving half of a userspace IPIP tunnel in netns ``ns`` (in this process): a
    non-persistent TUN tunl0 192.168.2.1/32 (it goes away when :meth:`close` closes its fd)
    and a raw protocol-4 socket whose packets' inner halves are written into the TUN."""

    def __init__(self, ns: str) -> None:
        self.kernel = Netlink(ns)
        self.fd = self.kernel.tun_open("tunl0", vnet_hdr=False, persist=False)
        tunl0 = self.kernel.index("tunl0")
        self.kernel.addr_add(tunl0, "192.168.2.1/32")
        self.kernel.link_set(tunl0, mtu=1480, up=True)
        with entered(ns):
            self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, 4)
        self.raw.settimeout(0.2)
        self.got = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pkt, _ = self.raw.recvfrom(65535)
            except TimeoutError:
                continue
            os.write(self.fd, pkt[(pkt[0] & 0x0F) * 4:])
            self.got += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.raw.close()
        os.close(self.fd)
        self.kernel.close()


def send_ipip(ns: str, to: str, packets: list[bytes]) -> None:
    """Send ``packets`` IPIP-encapsulated to ``to`` from a raw socket made in netns ``ns``."""
    with entered(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 4)
    with s:
        for p in packets:
            s.sendto(p, (to, 0))


@pytest.fixture
def nodes(netns):
    """Two 'nodes' on one veth: a/eth0 192.0.2.11 <-> b/eth0 192.0.2.12."""
    require_tool("tcpdump")
    a, b = netns("cta"), netns("ctb")
    sh("ip", "link", "add", "eth0", "netns", a, "type", "veth", "peer", "eth0", "netns", b)
    for ns, ip in ((a, NODE_A), (b, NODE_B)):
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
    return a, b


def test_ipip_on_eth0_and_inner_packets_on_tun_tunl0(nodes, tmp_path):
    a, b = nodes
    group = CaptureGroup({"node-a": a, "node-b": b}, tmp_path, ifaces="eth0,tunl0").start()
    helper = TunHelper(b)
    try:
        assert group.wait_for_iface("node-b", "tunl0", timeout=15) == ["tunl0"]
        inner = [bytes(IP(src=POD_A, dst=POD_B) / TCP(sport=41000 + i, dport=80, flags="S", seq=7000 * (i + 1)))
                 for i in range(3)]
        send_ipip(a, NODE_B, inner)
        wait_for(lambda: helper.got, lambda n: n == 3, timeout=10,
                 what="the tunnel helper to decapsulate 3 packets")
    finally:
        helper.close()
    res = group.stop()
    assert res.errors == [], res.errors
    (tun_res,) = [r for r in res.files if r.iface == "tunl0"]
    assert tun_res.exited_early and tun_res.packets == 3  # the TUN went away with its helper
    assert "ok (interface went away)" in res.table()
    eth0 = group.trace("node-a", "eth0")
    frames = pa.assert_ipip(eth0, outer_src=NODE_A, outer_dst=NODE_B, inner_src=POD_A,
                            inner_dst=POD_B, no_plain=["192.168.0.0/16"], at_least=3)
    assert [f.sport for f in frames] == [41000, 41001, 41002]
    pa.assert_ipip(group.trace("node-b", "eth0"), outer_src=NODE_A, outer_dst=NODE_B,
                   inner_src=POD_A, inner_dst=POD_B, at_least=3)
    tunl0 = group.trace("node-b", "tunl0")
    assert tunl0.linktype in (12, 101, 228)  # raw IP, no Ethernet header
    pa.assert_on_tunnel(tunl0, POD_A, POD_B, proto=6, at_least=3)
    pa.assert_none(tunl0, pa.ipip())
    # and the assertion fails on the wrong capture: eth0 holds no decapsulated packet
    with pytest.raises(AssertionError, match="decapsulated packets 192.168.1.2 > 192.168.2.3"):
        pa.assert_on_tunnel(eth0, POD_A, POD_B)
    tshark = require_tool("tshark")
    out = subprocess.run([tshark, "-n", "-r", str(group.file("node-b", "tunl0"))],
                         capture_output=True, text=True, check=True).stdout
    assert "192.168.1.2 → 192.168.2.3" in out and "41000 → 80" in out
    # the report follows each SYN hop by hop: a/eth0 (IPIP) -> b/eth0 (IPIP) -> b/tunl0 (inner)
    hops = report.flow_hops(res.paths(), pa.between(POD_A, POD_B))
    assert report.path_taken(hops) == ["node-a/eth0", "node-b/eth0", "node-b/tunl0"]
    first = [h for h in hops if h.key == hops[0].key]
    assert [h.where for h in first] == ["node-a/eth0", "node-b/eth0", "node-b/tunl0"]
    assert "ipip:" in first[0].summary and "ipip:" not in first[2].summary


def test_kernel_fragmentation_needed_is_seen(netns, tmp_path):
    """A router with a 1400-byte link answers a DF ping of 1400+28 bytes with ICMP 3/4 mtu 1400."""
    require_tool("tcpdump")
    a, r, b = netns("cfa"), netns("cfr"), netns("cfb")
    sh("ip", "link", "add", "eth0", "netns", a, "type", "veth", "peer", "ra", "netns", r)
    sh("ip", "link", "add", "rb", "netns", r, "type", "veth", "peer", "eth0", "netns", b)
    sh("ip", "-n", r, "link", "set", "rb", "mtu", "1400")
    sh("ip", "-n", b, "link", "set", "eth0", "mtu", "1400")
    for ns, dev, addr in ((a, "eth0", "198.51.100.2/24"), (r, "ra", "198.51.100.1/24"),
                          (r, "rb", "203.0.113.1/24"), (b, "eth0", "203.0.113.2/24")):
        sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
    sh("ip", "-n", a, "route", "add", "default", "via", "198.51.100.1")
    sh("ip", "-n", b, "route", "add", "default", "via", "203.0.113.1")
    sh("sysctl", "-qw", "net.ipv4.ip_forward=1", netns=r)
    with CaptureGroup({"a": a}, tmp_path, ifaces="eth0") as group:
        ok = subprocess.run(["ip", "netns", "exec", a, "ping", "-c", "1", "-W", "5", "-M", "do",
                             "-s", str(1400 - 28), "203.0.113.2"], capture_output=True)
        assert ok.returncode == 0, ok.stderr
        big = subprocess.run(["ip", "netns", "exec", a, "ping", "-c", "1", "-W", "1", "-M", "do",
                              "-s", str(1400 - 28 + 1), "203.0.113.2"], capture_output=True)
        assert big.returncode != 0
    (f,) = pa.assert_frag_needed(group.trace("a", "eth0"), mtu=1400, to="198.51.100.2",
                                 about_dst="203.0.113.2")
    assert f.inner.src == "198.51.100.1"
    with pytest.raises(AssertionError, match="ICMP fragmentation-needed mtu 1480"):
        pa.assert_frag_needed(group.trace("a", "eth0"), mtu=1480)
