"""BGP speakers in real namespaces: full mesh over veths, kernel routes, faults.

Each node is a namespace with eth0 on a bridge inside a "switch" namespace and a TUN
device named tunl0 (this kernel has no ipip) to program routes onto. The speakers run in
this process, each in its own thread that entered its node's namespace.
"""

from __future__ import annotations

import socket
import subprocess
import time
from ipaddress import IPv4Address, IPv4Network

import pytest

from agent.bgp.config import (
    GLOBAL,
    NODE,
    KernelPolicy,
    PeerConfig,
    SpeakerConfig,
    mesh_name,
    passive_towards,
)
from agent.bgp.fsm import Timers
from agent.bgp.runner import SpeakerThread
from testbed.poll import wait_for
from tests.support import require_root, require_tool, sh, unique

pytestmark = pytest.mark.netns
# Deadline for convergence (sessions up, routes in): the wait ends as soon as it holds; the
# headroom is for a machine loaded by parallel suites. Timing properties keep their own bounds.
SETTLE = 20

POOL = IPv4Network("192.168.0.0/16")
FAST = Timers(hold=3, connect_delay=0.1, connect_retry=0.5, error_wait_min=0.2,
              error_wait_max=1, graceful_restart=3)


class NetLab:
    """Namespaces on one bridge. ``add_node()`` returns (netns, address)."""

    def __init__(self, subnet: str = "172.31.0.0/24"):
        self.subnet = IPv4Network(subnet)
        self.switch = unique("bsw")
        self.nodes: list[tuple[str, IPv4Address]] = []
        self.made: list[str] = []
        self._ns_add(self.switch)
        sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.switch, "link", "set", "br0", "up")

    def _ns_add(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.made.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def add_node(self, host: int | None = None, tunnel: bool = True) -> tuple[str, IPv4Address]:
        n = len(self.nodes)
        ns = unique("bnd")
        self._ns_add(ns)
        addr = self.subnet.network_address + (host if host is not None else 10 + n)
        port = f"p{n}"
        sh("ip", "-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0",
           "netns", ns)
        sh("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{addr}/{self.subnet.prefixlen}", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        if tunnel:
            sh("ip", "-n", ns, "tuntap", "add", "dev", "tunl0", "mode", "tun")
            sh("ip", "-n", ns, "link", "set", "tunl0", "up")
        self.nodes.append((ns, addr))
        return ns, addr

    def static_neighbors(self) -> None:
        """Permanent ARP entries between all nodes. The kernel's neighbour table limit
        (gc_thresh3, 1024 by default) is shared by every namespace, and permanent entries
        are exempt from it: large meshes (the benchmark) need this, small tests do not."""
        import json

        macs = {}
        for ns, addr in self.nodes:
            info = json.loads(sh("ip", "-j", "-n", ns, "link", "show", "eth0"))
            macs[addr] = info[0]["address"]
        for ns, addr in self.nodes:
            batch = "".join(f"neigh replace {a} lladdr {m} dev eth0 nud permanent\n"
                            for a, m in macs.items() if a != addr)
            subprocess.run(["ip", "-n", ns, "-batch", "-"], input=batch, text=True, check=True)

    def close(self) -> None:
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)


def bird_routes(ns: str) -> set[str]:
    """`ip route show proto bird` lines, minus the TUN's carrier noise."""
    out = sh("ip", "-n", ns, "route", "show", "proto", "bird")
    return {" ".join(w for w in line.split() if w != "linkdown") for line in out.splitlines()}


def block(i: int) -> IPv4Network:
    return IPv4Network(f"192.168.{i}.0/26")


def mesh_config(me: IPv4Address, all_addrs: list[IPv4Address], blocks: list[IPv4Network],
                timers: Timers = FAST, **kw) -> SpeakerConfig:
    peers = tuple(PeerConfig(mesh_name(a), a, 64512, passive=passive_towards(me, a))
                  for a in all_addrs if a != me)
    return SpeakerConfig(router_id=me, local_as=64512, local_address=me, peers=peers,
                         originate=tuple((b, True) for b in blocks), export_pools=(POOL,),
                         kernel=KernelPolicy(ipip_pools=(POOL,)), timers=timers, **kw)


@pytest.fixture
def lab():
    require_root()
    require_tool("ip")
    lab = NetLab()
    speakers: list[SpeakerThread] = []
    lab.speakers = speakers
    yield lab
    for s in speakers:
        try:
            s.stop()
        except Exception:  # noqa: BLE001 - teardown must go on
            pass
    lab.close()


def start_mesh(lab: NetLab, n: int) -> list[SpeakerThread]:
    nodes = [lab.add_node() for _ in range(n)]
    addrs = [a for _ns, a in nodes]
    for i, (ns, a) in enumerate(nodes):
        t = SpeakerThread(mesh_config(a, addrs, [block(i)]), netns=ns)
        lab.speakers.append(t)
        t.start()
    return lab.speakers


def expected_routes(lab: NetLab, i: int, present: set[int] | None = None) -> set[str]:
    present = set(range(len(lab.nodes))) if present is None else present
    out = {f"blackhole {block(i)}"}
    for j, (_ns, a) in enumerate(lab.nodes):
        if j != i and j in present:
            out.add(f"{block(j)} via {a} dev tunl0 onlink")
    return out


def test_three_node_mesh_programs_tunnel_routes_and_blackholes(lab):
    speakers = start_mesh(lab, 3)
    for i, (ns, _a) in enumerate(lab.nodes):
        wait_for(lambda ns=ns: bird_routes(ns), lambda r, i=i: r == expected_routes(lab, i),
                 timeout=SETTLE, what=f"mesh routes on node {i}")
    for s in speakers:
        st = s.status()
        assert st["established"] == 2, st
        assert all(p["type"] == "node-to-node mesh" and p["state"] == "up" for p in st["peers"])
        # every session's socket sends without Nagle's delay (asyncio's transports set it)
        nodelay = s.call(lambda s=s: [c.transport.get_extra_info("socket").getsockopt(
            socket.IPPROTO_TCP, socket.TCP_NODELAY) for p in s.speaker.peers.values()
            for c in p.connections() if c.transport is not None])
        assert len(nodelay) == 2 and all(nodelay), nodelay
    counters = [s.status()["counters"] for s in speakers]
    assert [c["sessions_up"] for c in counters] == [2, 2, 2] and not any(c["sessions_down"] for c in counters)
    # one side of each pair connects (the passive rule): three sessions accepted, none refused
    assert sum(c["accepted"] for c in counters) == 3 and not any(c["rejected"] for c in counters), counters


def test_passive_rule_larger_string_waits(lab):
    # 172.31.0.9 vs 172.31.0.10: as strings "172.31.0.9" is the larger. Calico puts
    # `passive on` on a node's protocol when the PEER's address is the larger string, so
    # .10 waits passively and .9 (numerically smaller) connects to .10's port 179.
    a_ns, a = lab.add_node(host=9)
    b_ns, b = lab.add_node(host=10)
    for ns, me in ((a_ns, a), (b_ns, b)):
        t = SpeakerThread(mesh_config(me, [a, b], []), netns=ns)
        lab.speakers.append(t)
        t.start()
    wait_for(lambda: [s.status()["established"] for s in lab.speakers], lambda v: v == [1, 1],
             timeout=SETTLE, what="session up")
    out = sh("ss", "-Htn", "state", "established", netns=b_ns).split()
    assert f"{b}:179" in out and f"{a}:179" not in out, out


def test_a_peer_that_closes_our_connection_is_called_again_after_the_connect_delay(lab):
    """A lab's nodes start together, and a passive node whose config does not list a new
    peer yet closes that peer's connection (BIRD: "Unexpected connect from unknown
    address"). BIRD tries again after MAX(1 s, connect delay), not after its error wait,
    which follows protocol errors only; so does the speaker. The error wait here is 30 s:
    three refusals within the deadline show the retries came after the connect delay."""
    a_ns, a = lab.add_node(host=9)      # active towards .10 (the larger string waits)
    b_ns, b = lab.add_node(host=10)
    slow_errors = Timers(hold=9, connect_delay=0.1, connect_retry=1, error_wait_min=30, error_wait_max=30)
    active = SpeakerThread(mesh_config(a, [a, b], [], timers=slow_errors), netns=a_ns)
    passive = SpeakerThread(mesh_config(b, [b], [], timers=slow_errors), netns=b_ns)  # knows no peer yet
    lab.speakers += [active, passive]
    active.start()
    passive.start()
    wait_for(lambda: passive.status()["counters"]["rejected"], lambda n: n >= 3, timeout=SETTLE,
             what="three connections from the unknown peer refused")
    assert active.status()["established"] == 0
    passive.apply(mesh_config(b, [a, b], [], timers=slow_errors))
    wait_for(lambda: [s.status()["established"] for s in (active, passive)], lambda v: v == [1, 1],
             timeout=SETTLE, what="the session once the passive side knows its peer")


def test_withdrawal_and_reannouncement_follow_config(lab):
    speakers = start_mesh(lab, 3)
    ns1 = lab.nodes[1][0]
    wait_for(lambda: bird_routes(ns1), lambda r: r == expected_routes(lab, 1), timeout=SETTLE,
             what="initial routes")
    addrs = [a for _ns, a in lab.nodes]
    speakers[0].apply(mesh_config(addrs[0], addrs, [block(0), IPv4Network("192.168.100.0/26")]))
    wait_for(lambda: bird_routes(ns1),
             lambda r: f"192.168.100.0/26 via {addrs[0]} dev tunl0 onlink" in r, timeout=SETTLE,
             what="new block on node 1")
    speakers[0].apply(mesh_config(addrs[0], addrs, []))
    wait_for(lambda: bird_routes(ns1), lambda r: r == expected_routes(lab, 1, {1, 2}), timeout=SETTLE,
             what="node 0's blocks withdrawn on node 1")
    # sessions that did not change were not reset by the config changes
    assert speakers[1].status()["established"] == 2


def test_peer_link_cut_withdraws_within_hold_time_and_recovers(lab):
    start_mesh(lab, 3)
    ns0, ns2 = lab.nodes[0][0], lab.nodes[2][0]
    wait_for(lambda: bird_routes(ns0), lambda r: r == expected_routes(lab, 0), timeout=SETTLE,
             what="initial routes")
    sh("ip", "-n", ns2, "link", "set", "eth0", "down")      # node 2 vanishes, no FIN
    wait_for(lambda: bird_routes(ns0), lambda r: r == expected_routes(lab, 0, {0, 1}),
             timeout=FAST.hold + 2, what="node 2's block withdrawn after the hold time")
    sh("ip", "-n", ns2, "link", "set", "eth0", "up")
    wait_for(lambda: bird_routes(ns0), lambda r: r == expected_routes(lab, 0), timeout=8,
             what="node 2's block back")


def test_stop_flushes_routes_and_notifies_peers(lab):
    speakers = start_mesh(lab, 2)
    ns0, ns1 = lab.nodes[0][0], lab.nodes[1][0]
    wait_for(lambda: bird_routes(ns1), lambda r: r == expected_routes(lab, 1), timeout=SETTLE,
             what="initial routes")
    speakers[0].stop(graceful=False)
    assert bird_routes(ns0) == set()                        # own routes flushed
    wait_for(lambda: bird_routes(ns1), lambda r: r == {f"blackhole {block(1)}"}, timeout=2,
             what="routes withdrawn at once after Cease")
    # node 1 (the active side towards node 0) keeps trying, and says why, as BIRD does
    wait_for(lambda: speakers[1].status()["peers"][0],
             lambda p: p["state"] == "start" and "Socket: Connection refused" in p["info"],
             timeout=SETTLE, what="'Active  Socket: Connection refused' in node 1's status")


def test_graceful_restart_keeps_routes_then_refreshes(lab):
    speakers = start_mesh(lab, 2)
    ns0, ns1 = lab.nodes[0][0], lab.nodes[1][0]
    wait_for(lambda: bird_routes(ns1), lambda r: r == expected_routes(lab, 1), timeout=SETTLE,
             what="initial routes")
    speakers[0].stop(graceful=True)
    assert f"blackhole {block(0)}" in bird_routes(ns0)     # kept in our kernel
    # the peer sees the TCP connection close when its loop next runs: waited for, not assumed
    wait_for(lambda: speakers[1].status()["established"], lambda v: v == 0, timeout=SETTLE,
             what="the peer's session down")
    assert bird_routes(ns1) == expected_routes(lab, 1)  # stale, kept
    addrs = [a for _ns, a in lab.nodes]
    again = SpeakerThread(mesh_config(addrs[0], addrs, [block(0)]), netns=ns0)
    lab.speakers.append(again)
    again.start()
    # the restarted speaker keeps the routes it finds in the kernel while peers come back
    assert bird_routes(ns0) == expected_routes(lab, 0)
    wait_for(lambda: speakers[1].status()["established"], lambda v: v == 1, timeout=SETTLE,
             what="session back")
    assert bird_routes(ns1) == expected_routes(lab, 1)
    again.stop(graceful=True)
    stopped = time.monotonic()
    wait_for(lambda: bird_routes(ns1), lambda r: r == {f"blackhole {block(1)}"},
             timeout=FAST.graceful_restart + SETTLE, what="stale routes dropped after restart time")
    # kept stale for the whole restart time, which starts when the peer sees the session go
    assert time.monotonic() - stopped >= FAST.graceful_restart


def test_collision_between_two_active_peers_leaves_one_session(lab):
    """Both ends connect at once (neither passive, as with external peers): RFC 4271 6.8
    keeps exactly one connection (the one opened by the higher BGP identifier when both
    OPENs cross; the first one Established when one side was quicker)."""
    a_ns, a = lab.add_node()
    b_ns, b = lab.add_node()
    for ns, me, other in ((a_ns, a, b), (b_ns, b, a)):
        cfg = mesh_config(me, [me], [], timers=Timers(hold=9, connect_delay=0.2, connect_retry=1))
        peer = PeerConfig(f"Global_{str(other).replace('.', '_')}", other, 64512, GLOBAL)
        t = SpeakerThread(type(cfg)(**{**cfg.__dict__, "peers": (peer,)}), netns=ns)
        lab.speakers.append(t)
    for t in lab.speakers:
        t.start()
    wait_for(lambda: [s.status()["established"] for s in lab.speakers], lambda v: v == [1, 1],
             timeout=SETTLE, what="one session each side")
    wait_for(lambda: sh("ss", "-Htn", "state", "established", netns=a_ns).split(),
             lambda o: o.count(f"{b}:179") + o.count(f"{a}:179") == 1, timeout=SETTLE,
             what="exactly one TCP connection left")
    assert [s.status()["established"] for s in lab.speakers] == [1, 1]


def test_ecmp_and_cross_subnet_kernel_routes(lab):
    """Two nodes announce the same prefix: the third installs both next hops. In a
    CrossSubnet pool a same-subnet next hop goes straight out eth0, no tunnel."""
    nodes = [lab.add_node() for _ in range(3)]
    addrs = [a for _ns, a in nodes]
    anycast = IPv4Network("10.77.0.0/26")
    pool = IPv4Network("10.77.0.0/16")
    for i, (ns, a) in enumerate(nodes):
        cfg = mesh_config(a, addrs, [anycast] if i < 2 else [])
        cfg = type(cfg)(**{**cfg.__dict__, "export_pools": (POOL, pool),
                           "kernel": KernelPolicy(ipip_pools=(POOL,), cross_subnet_pools=(pool,),
                                                  local_subnet=lab.subnet)})
        t = SpeakerThread(cfg, netns=ns)
        lab.speakers.append(t)
        t.start()
    ns2 = nodes[2][0]

    def multipath():
        return sh("ip", "-n", ns2, "route", "show", str(anycast))

    out = wait_for(multipath, lambda o: o.count("nexthop via") == 2, timeout=SETTLE,
                   what="ECMP route with two next hops")
    assert "proto bird" in out and "tunl0" not in out, out
    for a in addrs[:2]:
        assert f"nexthop via {a} dev eth0 weight 1" in out, out


def test_our_speaker_as_route_reflector(lab):
    """Mesh off; node 0 has a cluster id and reflects between its clients."""
    nodes = [lab.add_node() for _ in range(3)]
    addrs = [a for _ns, a in nodes]
    for i, (ns, a) in enumerate(nodes):
        if i == 0:
            peers = tuple(PeerConfig(f"Node_{str(x).replace('.', '_')}", x, 64512, NODE,
                                     passive=passive_towards(a, x), rr_client=True)
                          for x in addrs[1:])
            extra = {"cluster_id": IPv4Address("224.0.0.1")}
        else:
            peers = (PeerConfig(f"Node_{str(addrs[0]).replace('.', '_')}", addrs[0], 64512, NODE,
                                passive=passive_towards(a, addrs[0])),)
            extra = {}
        cfg = mesh_config(a, [a], [block(i)])
        t = SpeakerThread(type(cfg)(**{**cfg.__dict__, "peers": peers, **extra}), netns=ns)
        lab.speakers.append(t)
        t.start()
    for i, (ns, _a) in enumerate(nodes):
        wait_for(lambda ns=ns: bird_routes(ns), lambda r, i=i: r == expected_routes(lab, i),
                 timeout=SETTLE, what=f"reflected routes on node {i} (next hop = owning node)")


def test_thirty_node_mesh_converges_with_short_connect_retry(lab):
    """Regression (issue 18): with a connect-retry timer shorter than a connect can take, a
    retry in Connect used to start a second attempt beside the one in flight; both attached
    to one connection (two readers on one stream: 'withdrawn routes length 65535', Cease 7
    collisions towards passive peers) and a 30-node mesh never converged. Every session
    must come up and every node must hold every other node's block."""
    n = 30
    timers = Timers(hold=9, connect_delay=0.1, connect_retry=0.3, error_wait_min=0.2,
                    error_wait_max=1, graceful_restart=3)
    nodes = [lab.add_node() for _ in range(n)]
    lab.static_neighbors()
    addrs = [a for _ns, a in nodes]
    for i, (ns, a) in enumerate(nodes):
        t = SpeakerThread(mesh_config(a, addrs, [block(i)], timers=timers), netns=ns,
                          program_kernel=False, name=f"bgp{i}")
        lab.speakers.append(t)
        t.start()

    def summary() -> tuple[list[int], list[int], int, int]:
        sts = [s.status() for s in lab.speakers]
        return ([st["established"] for st in sts], [st["routes"] for st in sts],
                sum(st["counters"]["malformed"] for st in sts),
                sum(st["counters"]["collisions"] for st in sts))

    wait_for(summary, lambda v: v[0] == [n - 1] * n and v[1] == [n] * n, timeout=SETTLE,
             what=f"{n}-node mesh: every session Established, {n} routes on every node "
                  "(established, routes, malformed, collisions)")
    # Calico's passive rule means exactly one side connects: no collision, nothing malformed
    _est, _routes, malformed, collisions = summary()
    assert (malformed, collisions) == (0, 0), (malformed, collisions)
