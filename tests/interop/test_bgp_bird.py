"""Interop with real BIRD 2 (Debian bird2) in its own namespace and control socket.

BIRD plays the top-of-rack router (a global BGPPeer) and, with the mesh off, the route
reflector. Faults: BIRD killed, malformed OPEN/UPDATE from a rogue peer. A capture of
TCP port 179 is decoded by tshark and scapy.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import time
from ipaddress import IPv4Address, IPv4Network

import pytest

from agent.bgp import messages as M
from agent.bgp.config import GLOBAL, PeerConfig
from agent.bgp.runner import SpeakerThread
from kernel import netns as kernel_netns
from testbed.poll import wait_for
from tests.netns.test_bgp_mesh import FAST, NetLab, bird_routes, block, mesh_config
from tests.support import require_root, require_tool, sh

pytestmark = pytest.mark.interop
# Deadline for convergence (sessions up, routes in): the wait ends as soon as it holds; the
# headroom is for a machine loaded by parallel suites. Timing properties keep their own bounds.
SETTLE = 20

TOR_ROUTE = "203.0.113.0/24"
CLUSTER_ID = "1.1.1.1"


def bird_conf(router_id: IPv4Address, nodes: list[IPv4Address], rr: bool) -> str:
    peers = "\n".join(
        f"protocol bgp node{i} from calico {{ neighbor {a} as 64512; }}" for i, a in enumerate(nodes))
    return f"""
router id {router_id};
protocol device {{ scan time 2; }}
protocol static {{ ipv4; route {TOR_ROUTE} blackhole; }}
template bgp calico {{
  local as 64512;
  ipv4 {{ import all; export all; add paths on; }};
  connect delay time 1; connect retry time 1; error wait time 1,2;
  hold time 3; keepalive time 1;
  graceful restart on; graceful restart time 3;
  {"rr client; rr cluster id " + CLUSTER_ID + ";" if rr else ""}
}}
{peers}
"""


class Bird:
    """One BIRD process in a namespace, with its own control socket."""

    def __init__(self, ns: str, tmp, conf: str):
        self.ns, self.conf = ns, tmp / "bird.conf"
        self.sock, self.pidfile, self.log = tmp / "bird.ctl", tmp / "bird.pid", tmp / "bird.log"
        self.conf.write_text(conf)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        bird = require_tool("bird")
        subprocess.run([bird, "-p", "-c", str(self.conf)], check=True)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, bird, "-c", str(self.conf), "-s", str(self.sock),
             "-P", str(self.pidfile), "-f"], stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        wait_for(lambda: self.sock.exists(), timeout=SETTLE, what="BIRD control socket")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None
        if self.sock.exists():
            self.sock.unlink()

    def birdc(self, *cmd: str) -> str:
        return sh(require_tool("birdc"), "-s", str(self.sock), *cmd)

    def established(self) -> set[str]:
        return {line.split()[0] for line in self.birdc("show", "protocols").splitlines()
                if " BGP " in line and "Established" in line}

    def routes(self) -> dict[str, set[str]]:
        """prefix -> set of next hops BIRD has (all paths)."""
        out: dict[str, set[str]] = {}
        cur = None
        for line in self.birdc("show", "route", "all").splitlines():
            m = re.match(r"^(\d+\.\d+\.\d+\.\d+/\d+)\s", line)
            if m:
                cur = m.group(1)
            m = re.search(r"BGP.next_hop: (\S+)", line)
            if m and cur:
                out.setdefault(cur, set()).add(m.group(1))
        return out


@pytest.fixture
def tor(tmp_path):
    """Three speaker nodes + a BIRD namespace on one bridge."""
    require_root()
    require_tool("bird")
    lab = NetLab("172.31.2.0/24")
    lab.speakers, lab.birds, lab.procs = [], [], []
    try:
        lab.bird_ns, lab.bird_ip = lab.add_node(host=1, tunnel=False)
        for _ in range(3):
            lab.add_node()
        yield lab
    finally:
        for p in lab.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
        for s in lab.speakers:
            try:
                s.stop()
            except Exception:  # noqa: BLE001 - teardown goes on
                pass
        for b in lab.birds:
            b.kill()
        lab.close()


def node_addrs(lab):
    return [a for _ns, a in lab.nodes[1:4]]


def start_speakers(lab, mesh: bool, extra_peers=()):
    addrs = node_addrs(lab)
    for i, (ns, a) in enumerate(lab.nodes[1:4]):
        cfg = mesh_config(a, addrs if mesh else [a], [block(i)])
        tor_peer = PeerConfig(f"Global_{str(lab.bird_ip).replace('.', '_')}", lab.bird_ip, 64512,
                              GLOBAL, multihop=True)
        peers = (*cfg.peers, tor_peer, *(extra_peers if i == 0 else ()))
        cfg = type(cfg)(**{**cfg.__dict__, "peers": peers})
        t = SpeakerThread(cfg, netns=ns)
        lab.speakers.append(t)
        t.start()


def start_bird(lab, tmp_path, rr: bool) -> Bird:
    b = Bird(lab.bird_ns, tmp_path, bird_conf(lab.bird_ip, node_addrs(lab), rr))
    lab.birds.append(b)
    b.start()
    return b


def expected_node_routes(lab, i, with_tor=True, peers=True):
    out = {f"blackhole {block(i)}"}
    if peers:
        for j, a in enumerate(node_addrs(lab)):
            if j != i:
                out.add(f"{block(j)} via {a} dev tunl0 onlink")
    if with_tor:
        out.add(f"{TOR_ROUTE} via {lab.bird_ip} dev eth0")
    return out


def test_bird_as_tor_learns_blocks_and_nodes_install_its_route(tor, tmp_path):
    pcap = tmp_path / "bgp.pcap"
    tcpdump = subprocess.Popen(["ip", "netns", "exec", tor.bird_ns, require_tool("tcpdump"),
                                "-i", "eth0", "-nn", "--immediate-mode", "-U", "-w", str(pcap),
                                "tcp", "port", "179"], stderr=subprocess.DEVNULL)
    tor.procs.append(tcpdump)
    wait_for(lambda: pcap.exists(), timeout=SETTLE, what="tcpdump started")
    bird = start_bird(tor, tmp_path, rr=False)
    start_speakers(tor, mesh=True)
    t0 = time.monotonic()
    wait_for(bird.established, lambda s: s == {"node0", "node1", "node2"}, timeout=SETTLE,
             what="BIRD sessions Established")
    took = time.monotonic() - t0
    print(f"BIRD sessions Established {took:.2f}s after both ends were up")
    addrs = node_addrs(tor)
    want = {str(block(i)): {str(a)} for i, a in enumerate(addrs)}
    wait_for(bird.routes, lambda r: all(r.get(p) == nh for p, nh in want.items()), timeout=SETTLE,
             what="every node's block in BIRD with the node as next hop")
    for i, (ns, _a) in enumerate(tor.nodes[1:4]):
        wait_for(lambda ns=ns: bird_routes(ns), lambda r, i=i: r == expected_node_routes(tor, i),
                 timeout=SETTLE, what=f"routes on node {i}")

    tor_peer = next(p for p in tor.speakers[0].status()["peers"] if p["type"] == "global")
    assert tor_peer["add_path_rx"], tor_peer          # BIRD sends path identifiers to us
    assert tor_peer["add_path_tx"], tor_peer          # and we send ours (BIRD decoded them)
    assert {1, 2, 64, 65, 69, 70} <= set(tor_peer["peer_capabilities"]), tor_peer
    assert (tor_peer["hold_time"], tor_peer["keepalive_time"]) == (3, 1)

    tcpdump.send_signal(signal.SIGINT)
    tcpdump.wait(5)
    # tshark decodes every BGP message without malformed/expert errors
    tshark = require_tool("tshark")
    text = sh(tshark, "-r", str(pcap), "-V", "-Y", "bgp", timeout=60)
    for kind in ("OPEN Message", "UPDATE Message", "KEEPALIVE Message"):
        assert f"Type: {kind}" in text, kind
    assert "Malformed" not in text and "[Severity level: Error]" not in text
    # tshark decodes our OPEN: every capability in ONE optional parameter, as BIRD sends
    # them (scapy's BGP layer reads only the first capability of a parameter)
    rows = sh(tshark, "-r", str(pcap), "-Y", f"bgp.type == 1 && ip.src == {addrs[0]}",
              "-T", "fields", "-e", "bgp.open.opt.param.type", "-e", "bgp.cap.type",
              timeout=60).split()
    assert rows, "no OPEN from node 0 in the capture"
    params, caps = rows[0], rows[1]
    assert params == "2", rows                     # one optional parameter, capabilities
    assert caps.split(",") == ["1", "2", "64", "65", "69", "70", "71"], rows


def test_mesh_off_bird_as_route_reflector(tor, tmp_path):
    start_speakers(tor, mesh=False)           # this time our speakers are up first
    bird = start_bird(tor, tmp_path, rr=True)
    t0 = time.monotonic()
    wait_for(bird.established, lambda s: len(s) == 3, timeout=SETTLE, what="RR sessions")
    print(f"RR sessions Established {time.monotonic() - t0:.2f}s after BIRD was up")
    for i, (ns, _a) in enumerate(tor.nodes[1:4]):
        wait_for(lambda ns=ns: bird_routes(ns), lambda r, i=i: r == expected_node_routes(tor, i),
                 timeout=SETTLE, what=f"reflected routes on node {i} (next hop = the owning node)")
    for s in tor.speakers:
        assert [p["type"] for p in s.status()["peers"]] == ["global"]


def test_bird_killed_routes_withdrawn_within_hold_then_back(tor, tmp_path):
    bird = start_bird(tor, tmp_path, rr=False)
    start_speakers(tor, mesh=True)
    ns0 = tor.nodes[1][0]
    wait_for(lambda: bird_routes(ns0), lambda r: r == expected_node_routes(tor, 0), timeout=SETTLE,
             what="initial routes")
    bird.kill()
    wait_for(lambda: bird_routes(ns0), lambda r: r == expected_node_routes(tor, 0, with_tor=False),
             timeout=FAST.hold + 2, what="BIRD's route withdrawn")
    bird.start()
    wait_for(lambda: bird_routes(ns0), lambda r: r == expected_node_routes(tor, 0), timeout=6,
             what="BIRD's route back")


def _frame(t: int, body: bytes) -> bytes:
    return b"\xff" * 16 + struct.pack("!HB", 19 + len(body), t) + body


def _read_msg(s: socket.socket) -> M.Message:
    head = b""
    while len(head) < 19:
        chunk = s.recv(19 - len(head))
        if not chunk:
            raise ConnectionError("closed")
        head += chunk
    length = struct.unpack("!H", head[16:18])[0]
    body = b""
    while len(body) < length - 19:
        body += s.recv(length - 19 - len(body))
    return M.decode(head + body)


def _read_until_notification(s: socket.socket) -> M.Notification:
    while True:
        msg = _read_msg(s)
        if isinstance(msg, M.Notification):
            return msg


def test_malformed_open_and_update_get_notifications_others_untouched(tor, tmp_path):
    rogue_ns, rogue_ip = tor.add_node(host=99, tunnel=False)
    rogue = PeerConfig("Global_" + str(rogue_ip).replace(".", "_"), rogue_ip, 64512, GLOBAL,
                       passive=True)
    bird = start_bird(tor, tmp_path, rr=False)
    start_speakers(tor, mesh=True, extra_peers=(rogue,))
    wait_for(bird.established, lambda s: len(s) == 3, timeout=SETTLE, what="BIRD sessions")
    ns0, a0 = tor.nodes[1]
    wait_for(lambda: bird_routes(ns0), lambda r: r == expected_node_routes(tor, 0), timeout=SETTLE,
             what="initial routes")
    before = {p["name"]: p["since"] for p in tor.speakers[0].status()["peers"]
              if p["state"] == "up"}

    def conn() -> socket.socket:
        # the socket is made inside the rogue's netns and keeps it; the test thread goes back
        with kernel_netns.entered(rogue_ns):
            return socket.create_connection((str(a0), 179), timeout=5)

    # 1: OPEN with version 3 (well formed otherwise: BIRD checks the length first)
    with conn() as s:
        _read_msg(s)  # the speaker's OPEN
        s.sendall(_frame(1, bytes.fromhex("03fc0000f0ac1f026300")))
        n = _read_until_notification(s)
        assert (n.code, n.subcode) == (2, 1), n
    # 2: a proper session, then an UPDATE whose attributes overrun the message
    with conn() as s:
        _read_msg(s)
        s.sendall(M.encode(M.Open(64512, 9, IPv4Address(str(rogue_ip)), [M.FourOctetAS(64512)])))
        s.sendall(M.encode(M.Keepalive()))
        # 3: treat-as-withdraw first (bad ORIGIN): no NOTIFICATION expected
        attrs = bytes.fromhex("40010107" + "400200" + "400304" + "ac1f0263")
        body = b"\x00\x00" + struct.pack("!H", len(attrs)) + attrs + bytes.fromhex("18c6336400")[:4]
        s.sendall(_frame(2, body))
        good = bytes.fromhex("40010100" + "400200" + "400304" + "ac1f0263")
        s.sendall(_frame(2, b"\x00\x00" + struct.pack("!H", len(good)) + good + bytes.fromhex("18c63365")))
        s.sendall(_frame(2, b"\x00\x00\x00\x30" + bytes.fromhex("400101")))
        n = _read_until_notification(s)
        assert (n.code, n.subcode) == (3, 1), n
    st = tor.speakers[0].status()
    assert st["counters"]["malformed"] >= 2 and st["counters"]["treat_as_withdraw"] >= 1
    # other sessions untouched, routes intact, speaker alive
    after = {p["name"]: p["since"] for p in st["peers"] if p["state"] == "up"}
    assert {k: v for k, v in after.items() if k != rogue.name} == before
    assert bird.established() == {"node0", "node1", "node2"}
    routes = bird_routes(ns0)
    assert expected_node_routes(tor, 0) <= routes
    # the treat-as-withdraw prefix never made it; the good one was withdrawn with the session
    assert not any(r.startswith(("198.51.100.", "198.51.101.")) for r in routes), routes
    assert IPv4Network("198.51.100.0/24")


def _import_updates(bird: Bird, proto: str) -> int:
    out = bird.birdc("show", "protocols", "all", proto)
    m = re.search(r"Import updates:\s+(\d+)", out)
    assert m, out
    return int(m.group(1))


def test_route_refresh_from_bird_is_answered_without_reset(tor, tmp_path):
    bird = start_bird(tor, tmp_path, rr=False)
    start_speakers(tor, mesh=False)
    wait_for(bird.routes, lambda r: str(block(0)) in r, timeout=SETTLE, what="node 0's block in BIRD")
    before = _import_updates(bird, "node0")
    since = tor.speakers[0].status()["peers"][0]["since"]
    bird.birdc("reload", "in", "node0")          # BIRD sends ROUTE-REFRESH to our speaker
    wait_for(lambda: _import_updates(bird, "node0"), lambda n: n > before, timeout=SETTLE,
             what="our re-advertisement counted by BIRD")
    assert tor.speakers[0].status()["peers"][0]["since"] == since
    assert bird.established() == {"node0", "node1", "node2"}


def _confd_state(addrs):
    from agent.confd import State
    from datastore.resources import BlockAffinity, IPPool, Metadata, Node, NodeBGPSpec

    st = State()
    st.pools["p"] = IPPool(metadata=Metadata(name="p"), spec=IPPool.Spec(
        cidr="192.168.0.0/16", block_size=26, ipip_mode="Always"))
    for i, a in enumerate(addrs):
        name = f"n{i}"
        st.nodes[name] = Node(metadata=Metadata(name=name),
                              spec=Node.Spec(bgp=NodeBGPSpec(ipv4_address=f"{a}/24")))
        st.affinities[name] = BlockAffinity(metadata=Metadata(name=name), spec=BlockAffinity.Spec(
            node=name, cidr=str(block(i)), state="confirmed"))
    return st


def test_confd_bird_cfg_runs_in_real_bird_and_meshes_with_our_speakers(tor, tmp_path):
    """Node 0 runs stock BIRD 2 with the bird.cfg our confd renders for it; nodes 1 and 2
    run our speaker. The mesh forms and the blocks flow both ways."""
    from agent.confd import compute, render_bird_cfg

    nodes = tor.nodes[1:4]
    addrs = [a for _ns, a in nodes]
    st = _confd_state(addrs)
    conf = render_bird_cfg(compute("n0", st, FAST))
    bird = Bird(nodes[0][0], tmp_path, conf)
    tor.birds.append(bird)
    bird.start()
    for i, (ns, _a) in enumerate(nodes[1:], start=1):
        t = SpeakerThread(compute(f"n{i}", st, FAST), netns=ns)
        tor.speakers.append(t)
        t.start()
    names = {f"Mesh_{str(a).replace('.', '_')}" for a in addrs[1:]}
    wait_for(bird.established, lambda s: s == names, timeout=SETTLE, what="BIRD's mesh sessions")
    # BIRD (stock: no krt_tunnel) installs the blocks of nodes 1 and 2 via their addresses
    wait_for(lambda: bird_routes(nodes[0][0]),
             lambda r: {f"{block(j)} via {addrs[j]} dev eth0" for j in (1, 2)} <= r,
             timeout=SETTLE, what="node 0 (BIRD) routes to the other blocks")
    for i in (1, 2):
        wait_for(lambda i=i: bird_routes(nodes[i][0]),
                 lambda r: f"{block(0)} via {addrs[0]} dev tunl0 onlink" in r, timeout=SETTLE,
                 what=f"node {i} route to BIRD's block")
