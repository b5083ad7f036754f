"""tunl0 without kernel ipip, in namespaces: real IPIP on the wire, source filtering, outer
header fields, ECN, bulk TCP, for both datapaths: the in-kernel tc-BPF tunnel (``bpf``, set up by
``python -m agent.felix.bpftunnel``, no process stays) and the userspace fallback
(``userspace``: the pump runs as its own process, ``python -m agent.felix.tunnel``). The pump's
restart test is its own; the tc-BPF tunnel's own tests are in test_felix_bpf_tunnel.py.

Traffic is made in this process by sockets opened inside the pods' namespaces
(kernel.netns.entered). tunl0's set-up logic is unit-tested on the fake kernel
(tests/unit/test_felix_kernel.py).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading

import pytest

from testbed.capture import pcapassert
from testbed.poll import wait_for
from tests.netns.felix_support import (
    Topo,
    connect_in,
    echo_pair,
    echo_request,
    listen_in,
    ping_until_ok,
    run,
    say,
    send_ipip,
    stop_capture_when,
    two_node_bpf_tunnel,
    two_node_tunnel,
)
from tests.support import require_root, require_tool

pytestmark = pytest.mark.netns


@pytest.fixture
def topo():
    require_root()
    t = Topo()
    yield t
    t.close()


@pytest.fixture(params=["bpf", "userspace"])
def two_nodes(request, topo):
    """Nodes a and b with pods, joined by the tc-BPF or the userspace tunnel."""
    if request.param == "bpf":
        from agent.felix.bpftunnel import unsupported_reason
        from tests.support import require

        require(unsupported_reason() is None, f"tc-BPF tunnel: {unsupported_reason()}")
        return two_node_bpf_tunnel(topo)
    return two_node_tunnel(topo)


def test_pod_to_pod_over_userspace_tunnel_is_real_ipip(topo, two_nodes):
    require_tool("tcpdump")
    env = two_nodes
    pcap = f"/tmp/felix-tunnel-{topo.tag}.pcap"
    cap = topo.spawn(env["b"], "tcpdump", "-ni", "eth0", "--immediate-mode", "-U", "-w", pcap, "ip proto 4",
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cap.stderr.readline()  # "listening on eth0 ..."
    ping_until_ok(env["pa"], env["ipb"])
    from scapy.all import ICMP, IP, rdpcap
    from scapy.error import Scapy_Exception

    def ipip() -> list:
        try:
            return [p for p in rdpcap(pcap) if IP in p and p[IP].proto == 4]
        except (OSError, EOFError, Scapy_Exception):  # nothing written yet, or a record being written
            return []

    # the reply is in flight to tcpdump when ping returns: wait until the pcap (-U: written
    # per packet) holds both directions, then stop the capture
    both = {("172.31.9.1", "172.31.9.2"), ("172.31.9.2", "172.31.9.1")}
    pkts = wait_for(ipip, lambda ps: {(p[IP].src, p[IP].dst) for p in ps} >= both, timeout=5,
                    what="IPIP both ways in node b's eth0 capture")
    cap.send_signal(signal.SIGINT)
    cap.wait(timeout=5)
    assert pkts, "no protocol-4 packets on node b's eth0"
    outer_pairs = {(p[IP].src, p[IP].dst) for p in pkts}
    assert outer_pairs == both
    inner = [p[IP].payload for p in pkts]
    assert {(i.src, i.dst, i[ICMP].type) for i in inner} == {
        ("192.168.10.5", "192.168.20.7", 8), ("192.168.20.7", "192.168.10.5", 0)}


def test_ipip_from_unknown_source_is_not_delivered(topo, two_nodes):
    env = two_nodes
    # A third host on node b's segment sends IPIP to b: it must not be decapsulated.
    rogue = topo.netns("r")
    run("ip", "link", "add", "eth1", "netns", env["b"], "type", "veth", "peer", "name", "eth0", "netns", rogue)
    run("ip", "-n", env["b"], "addr", "add", "172.31.8.1/24", "dev", "eth1")
    run("ip", "-n", env["b"], "link", "set", "eth1", "up")
    run("ip", "-n", rogue, "addr", "add", "172.31.8.9/24", "dev", "eth0")
    run("ip", "-n", rogue, "link", "set", "eth0", "up")
    probe = [echo_request("192.168.10.99", "192.168.20.7", 1, 1)] * 5  # the rogue's: id 1
    known = [echo_request("192.168.10.99", "192.168.20.7", 2, 1)]  # the known node's: id 2
    cap = topo.spawn(env["pb"], "tcpdump", "-ni", "eth0", "--immediate-mode", "-l", "icmp",
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cap.stderr.readline()
    ping_until_ok(env["pa"], env["ipb"])  # both pumps up with their routes
    send_ipip(rogue, "172.31.8.1", probe)
    # The same packet from a known node does arrive (proves the sender is right); it is sent
    # again on each look until one arrives (one send can be lost on a loaded machine), the
    # rogue's packets went first and only once.
    run("ip", "-n", env["a"], "route", "add", "172.31.8.0/24", "dev", "eth0")
    os.set_blocking(cap.stdout.fileno(), False)
    seen: list[str] = []

    def requests() -> list[str]:
        seen.extend(cap.stdout.readlines())
        return [ln for ln in seen if "192.168.10.99 > 192.168.20.7" in ln]

    def send_and_look() -> list[str]:
        send_ipip(env["a"], "172.31.9.2", known)
        return requests()

    wait_for(send_and_look, lambda r: any(", id 2," in ln for ln in r), timeout=10,
             what="an echo request from the known node")
    cap.send_signal(signal.SIGINT)
    cap.wait(timeout=5)
    assert not [ln for ln in requests() if ", id 1," in ln], seen  # none of the rogue's


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_established_flow_survives_pump_restart(topo, how):
    env = two_node_tunnel(topo)
    ping_until_ok(env["pa"], env["ipb"])
    cli = echo_pair(env["pb"], env["pa"], "192.168.20.7", 7007)
    assert say(cli, "before") == "before"
    topo.stop(env["ta"], how)
    # The TUN persists with its routes while no pump runs.
    assert "192.168.20.0/26 via 172.31.9.2 dev tunl0" in run("ip", "route", netns=env["a"])
    topo.tunnel(env["a"], "192.168.10.0", ["172.31.9.2"])
    assert say(cli, "after") == "after"
    routes = run("ip", "route", "show", "dev", "tunl0", netns=env["a"]).splitlines()
    assert routes == ["192.168.20.0/26 via 172.31.9.2 onlink "]
    assert say(cli, "still") == "still"  # the same connection
    cli.close()


def test_bulk_tcp_through_the_tunnel_arrives_intact(topo, two_nodes):
    """Megabytes over TCP (GSO frames encapsulated in the kernel; the pump merges received
    segments into GSO frames): the bytes match end to end."""
    env = two_nodes
    ping_until_ok(env["pa"], env["ipb"])
    srv = listen_in(env["pb"], "192.168.20.7", 7008)
    got: dict[str, object] = {}

    def receive() -> None:
        with srv:
            c, _ = srv.accept()
            h, n = hashlib.sha256(), 0
            with c:
                while d := c.recv(1 << 16):
                    h.update(d)
                    n += len(d)
            got.update(n=n, sha=h.hexdigest())

    t = threading.Thread(target=receive, daemon=True)
    t.start()
    data = os.urandom(8 << 20)
    with connect_in(env["pa"], "192.168.20.7", 7008, timeout=60) as c:
        c.sendall(data)
    t.join(60)
    assert got == {"n": len(data), "sha": hashlib.sha256(data).hexdigest()}
    if "tb" not in env:
        return  # the tc-BPF tunnel: no pump
    topo.stop(env["tb"])
    stats = env["tb"].stderr.read()
    assert "rx_merged" in stats and "'rx_merged': 0" not in stats, stats


def test_outer_ttl_df_and_ecn_follow_the_inner_packet(topo, two_nodes):
    """As the kernel's tunl0 (ttl inherit, nopmtudisc, tos 0): outer TTL = inner TTL (after the
    node forwarded it), outer DF = inner DF, outer TOS = inner ECN bits (CE -> ECT(0)), no DSCP."""
    require_tool("tcpdump")
    env = two_nodes
    ping_until_ok(env["pa"], env["ipb"])
    pcap = f"/tmp/felix-tunnel-ttl-{topo.tag}.pcap"
    cap = topo.spawn(env["b"], "tcpdump", "-ni", "eth0", "--immediate-mode", "-U", "-w", pcap, "ip proto 4",
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cap.stderr.readline()  # "listening on eth0 ..."
    try:
        pings = {  # payload size -> ping options; the size tells the requests apart in the capture
            101: ["-M", "do", "-t", "20", "-Q", "0xb8"],  # DF, TTL 20 (19 once node a forwarded it), DSCP EF
            102: ["-M", "dont", "-Q", "0x03"],  # no DF, TTL 64 (63), ECN CE
            103: ["-M", "dont", "-t", "7", "-Q", "0x01"],  # no DF, TTL 7 (6), ECT(1)
        }
        for size, opts in pings.items():
            out = run("ping", "-c", "1", "-W", "2", "-s", str(size), *opts, env["ipb"], netns=env["pa"],
                      check=False)
            assert " 0% packet loss" in out, out
    except BaseException:
        cap.send_signal(signal.SIGINT)
        cap.wait(timeout=5)
        raise
    # every request and its reply in the file before tcpdump stops
    stop_capture_when(cap, pcap, *(
        pcapassert.ipip() & pcapassert.icmp(t) & pcapassert.Match(f"of {n} bytes", lambda f, n=n: f.inner.length == n + 28)
        for n in pings for t in (8, 0)))
    from scapy.all import ICMP, IP, rdpcap

    try:
        frames = [p[IP] for p in rdpcap(pcap) if IP in p and p[IP].proto == 4]
    finally:
        os.unlink(pcap)
    by_size = {}
    for o in frames:
        i = o.payload
        ecn = i.tos & 3
        # Every IPIP packet, both directions (node b's pump wraps the replies).
        assert (o.ttl, bool(o.flags.DF), o.tos) == (i.ttl, bool(i.flags.DF), 2 if ecn == 3 else ecn), (
            o.summary(), o.ttl, o.flags, o.tos, i.ttl, i.flags, i.tos)
        assert o.frag == 0 and not o.flags.MF
        if ICMP in i and i[ICMP].type == 8:
            by_size[i.len - 28] = (o.ttl, bool(o.flags.DF), o.tos, i.ttl, bool(i.flags.DF), i.tos)
    assert by_size == {
        101: (19, True, 0x00, 19, True, 0xB8),
        102: (63, False, 0x02, 63, False, 0x03),
        103: (6, False, 0x01, 6, False, 0x01),
    }
    assert any(ICMP in o.payload and o.payload[ICMP].type == 0 for o in frames), "no echo replies captured"


def test_outer_ce_is_carried_into_the_inner_packet_or_drops_it(topo, two_nodes):
    """Receive side as the kernel's ip_tunnel_rcv: outer CE -> inner CE if ECN-capable, else dropped."""
    require_tool("tcpdump")
    env = two_nodes
    ping_until_ok(env["pa"], env["ipb"])
    cap = topo.spawn(env["pb"], "tcpdump", "-nvi", "eth0", "--immediate-mode", "-l",
                     "icmp[icmptype] == 8 and icmp[4:2] == 77",
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cap.stderr.readline()
    for seq, outer_tos, inner_tos in ((1, 3, 2), (2, 3, 0), (3, 0, 0), (4, 3, 1)):
        send_ipip(env["a"], "172.31.9.2", [echo_request("192.168.10.5", "192.168.20.7", 77, seq, inner_tos, 63)] * 3,
                   outer_tos)
    os.set_blocking(cap.stdout.fileno(), False)
    lines: list[str] = []

    def seen() -> dict[int, list[str]]:
        lines.extend(cap.stdout.readlines())
        text = "".join(lines).replace("\n    ", " ")  # -v puts the ICMP part on a second line
        got: dict[int, list[str]] = {}
        for ln in text.splitlines():
            if "seq " in ln:
                got.setdefault(int(ln.split("seq ")[1].split(",")[0]), []).append(ln.split("tos ")[1].split(",")[0])
        return got

    # seq 1: ECT(0) under CE -> CE; seq 2: not-ECT under CE -> dropped; seq 3: plain; seq 4: ECT(1) -> CE
    wait_for(seen, lambda g: all(len(g.get(s, [])) >= 3 for s in (1, 3, 4)), timeout=5,
             what="the echo requests sent over IPIP arriving in pod b")
    cap.send_signal(signal.SIGINT)
    cap.wait(timeout=5)
    assert seen() == {1: ["0x3"] * 3, 3: ["0x0"] * 3, 4: ["0x3"] * 3}, lines
