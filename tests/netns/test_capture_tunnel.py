"""Captures of real tunnel traffic: IPIP on the wire, raw-IP frames on a TUN tunl0,
and a kernel-made ICMP fragmentation-needed, asserted with testbed.capture.pcapassert.

This machine's kernel has no ipip module, so the tunnel is done the way the
agent's userspace datapath does it: a raw IPPROTO_IPIP socket sends and
receives protocol-4 packets, and the receiver writes the inner packet into a
TUN device named tunl0 (created while the capture runs, so it is picked up late).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest
from scapy.layers.inet import IP, TCP

from testbed.capture import pcapassert as pa
from testbed.capture.group import CaptureGroup
from testbed.poll import wait_for
from testbed.report import flows as report
from tests.support import require_tool, sh

pytestmark = pytest.mark.netns

NODE_A, NODE_B = "192.0.2.11", "192.0.2.12"
POD_A, POD_B = "192.168.1.2", "192.168.2.3"

TUN_HELPER = textwrap.dedent('''
    import fcntl, os, socket, struct, subprocess, sys
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", b"tunl0", 0x0001 | 0x1000))  # TUN, NO_PI
    subprocess.run(["ip", "addr", "add", "192.168.2.1/32", "dev", "tunl0"], check=True)
    subprocess.run(["ip", "link", "set", "tunl0", "mtu", "1480", "up"], check=True)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, 4)
    print("ready", flush=True)
    n = 0
    while True:
        pkt, _ = raw.recvfrom(65535)
        inner = pkt[(pkt[0] & 0x0F) * 4:]
        os.write(fd, inner)
        n += 1
        print(f"got {n}", flush=True)
''')

SENDER = ("import socket, sys\n"
          "s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 4)\n"
          "for h in sys.argv[2:]:\n"
          "    s.sendto(bytes.fromhex(h), (sys.argv[1], 0))\n")


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
    helper = subprocess.Popen(["ip", "netns", "exec", b, sys.executable, "-c", TUN_HELPER],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(helper.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: list(lines), lambda ls: "ready\n" in ls or helper.poll() is not None,
                 timeout=10, what="the TUN helper to create tunl0")
        assert "ready\n" in lines, f"TUN helper failed: {helper.stderr.read()}"
        assert group.wait_for_iface("node-b", "tunl0", timeout=15) == ["tunl0"]
        inner = [bytes(IP(src=POD_A, dst=POD_B) / TCP(sport=41000 + i, dport=80, flags="S", seq=7000 * (i + 1)))
                 for i in range(3)]
        sh("ip", "netns", "exec", a, sys.executable, "-c", SENDER, NODE_B,
           *[p.hex() for p in inner])
        wait_for(lambda: list(lines), lambda ls: "got 3\n" in ls, timeout=10,
                 what="the tunnel helper to decapsulate 3 packets")
    finally:
        helper.kill()
        helper.wait()
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
