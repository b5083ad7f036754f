"""The tc-BPF tunl0 in namespaces: what only it has (the datapath-generic checks, real IPIP,
TTL/DF/ECN, source filtering, bulk TCP, run for it in test_felix_tunnel.py).

* the programs' packets, run by the kernel (``BPF_PROG_TEST_RUN``) on crafted frames and
  compared with :func:`agent.felix.ipip_bpf.outer_header` (the rule ``ip_tunnel_xmit`` follows);
* what a user sees: ``ip link``/``ip route``/``tcpdump -i tunl0`` both ways, counters;
* security: IPIP from a host outside cali40all-hosts-net reaches netfilter's INPUT, where
  cali-INPUT's ``-p 4 -j DROP`` drops (and counts) it;
* no process: forwarding with nothing of ours running; adopting what is there (same programs),
  an upgrade replacing the programs while a flood runs (nothing lost), pins lost and found;
* removal leaves nothing: filters, qdiscs, devices, pins, programs.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading

import pytest

from agent.felix import ipip_bpf as P
from agent.felix.bpftunnel import BpfTunnel, unsupported_reason
from kernel import bpf
from kernel.netlink import Netlink
from kernel.netns import entered
from kernel.tc import Tc
from testbed.poll import wait_for
from tests.netns.felix_support import (
    PY,
    Topo,
    echo_request,
    ping_until_ok,
    run,
    send_ipip,
    two_node_bpf_tunnel,
)
from tests.support import require, require_root, require_tool

pytestmark = pytest.mark.netns
A, B = "172.31.9.1", "172.31.9.2"


@pytest.fixture
def env():
    require_root()
    require(unsupported_reason() is None, f"tc-BPF tunnel: {unsupported_reason()}")
    t = Topo()
    try:
        e = two_node_bpf_tunnel(t)
        e["topo"] = t
        ping_until_ok(e["pa"], e["ipb"], timeout=10)  # pod a -> pod b
        yield e
    finally:
        t.close()


def _pins(e: dict, node: str) -> str:
    return os.path.join(e["topo"].bpf_dir(e[node]), "calico", "ipip")


def _ifindex(ns: str, name: str) -> int:
    with entered(ns):
        return socket.if_nametoindex(name)


def _mac(ns: str, name: str) -> bytes:
    return bytes.fromhex(run("cat", f"/sys/class/net/{name}/address", netns=ns).strip().replace(":", ""))


def _test_run(e: dict, node: str, prog: str, frame: bytes, dev: str) -> bpf.TestRun:
    fd = bpf.obj_get(os.path.join(_pins(e, node), prog))
    assert fd is not None, f"{prog} is not pinned in {node}"
    idx = _ifindex(e[node], dev)
    try:
        with entered(e[node]):
            return bpf.prog_test_run(fd, frame, ctx=bpf.skb_ctx(ifindex=idx, ingress_ifindex=idx))
    finally:
        os.close(fd)


@pytest.mark.parametrize("tos,ttl,df", [(0x00, 63, True), (0xB8, 19, True), (0x03, 63, False),
                                        (0x01, 6, False), (0x02, 1, True), (0xFF, 255, False)])
def test_encap_builds_the_outer_header_ip_tunnel_xmit_builds(env, tos, ttl, df):
    """Every field of the outer header: TOS (inner ECN, CE -> ECT(0), no DSCP), total length,
    ID (a per-node counter, +1 per packet), DF only from the inner packet, TTL inherited,
    protocol 4, checksum, source = the address `ip route get <node>` picks, destination =
    the gateway of the inner destination's tunl0 route; the inner packet untouched."""
    inner = bytearray(echo_request("192.168.10.5", "192.168.20.7", 9, 1, tos, ttl))
    if df:
        inner[6] |= 0x40
        inner[10:12] = b"\0\0"
        inner[10:12] = struct.pack("!H", P.ip_checksum(bytes(inner[:20])))
    frame = bytes(12) + b"\x08\x00" + bytes(inner)
    first = _test_run(env, "a", P.PROG_ENCAP, frame, P.PEER_NAME)
    second = _test_run(env, "a", P.PROG_ENCAP, frame, P.PEER_NAME)
    assert (first.retval, second.retval) == (P.TC_ACT_REDIRECT, P.TC_ACT_REDIRECT)
    ident = struct.unpack_from("!H", first.data, 18)[0]
    assert first.data[14:34] == P.outer_header(bytes(inner), A, B, ident)
    assert second.data[14:34] == P.outer_header(bytes(inner), A, B, (ident + 1) & 0xFFFF)
    assert first.data[34:] == bytes(inner)
    src = run("ip", "-o", "route", "get", B, netns=env["a"]).split(" src ")[1].split()[0]
    assert src == A


def test_encap_drops_what_has_no_tunl0_route_and_counts_it(env):
    frame = bytes(12) + b"\x08\x00" + echo_request("192.168.10.5", "10.99.0.1", 9, 1)
    res = _test_run(env, "a", P.PROG_ENCAP, frame, P.PEER_NAME)
    assert res.retval == P.TC_ACT_SHOT
    stats = run(PY, "-m", "agent.felix.bpftunnel", "--stats", "--bpffs", env["topo"].bpf_dir(env["a"]),
                netns=env["a"])
    assert '"tx_no_route": 1' in stats, stats


def test_decap_delivers_to_tunl0_and_follows_ip_tunnel_rcv(env):
    """From an allowed node to a local address: the outer header goes, the frame is addressed to
    tunl0 (from its peer) and redirected; outer CE marks an ECN-capable inner packet (checksum
    fixed), drops a not-ECT one; everything else continues up the stack untouched."""
    a = env["a"]
    mac = _mac(a, "eth0")
    tunl0, peer = _mac(a, "tunl0"), _mac(a, P.PEER_NAME)

    def frame(src: str, dst: str, outer_tos: int, inner_tos: int, frag: int = 0) -> tuple[bytes, bytes]:
        inner = echo_request("192.168.20.7", "192.168.10.5", 5, 1, inner_tos, 63)
        outer = bytearray(P.outer_header(inner, src, dst, 7))
        outer[1] = outer_tos
        outer[6:8] = struct.pack("!H", frag)
        outer[10:12] = b"\0\0"
        outer[10:12] = struct.pack("!H", P.ip_checksum(bytes(outer)))
        return mac + bytes(6) + b"\x08\x00" + bytes(outer) + inner, inner

    pkt, inner = frame(B, A, 0, 0x02)
    res = _test_run(env, "a", P.PROG_DECAP, pkt, "eth0")
    assert res.retval == P.TC_ACT_REDIRECT and res.data == tunl0 + peer + b"\x08\x00" + inner
    pkt, inner = frame(B, A, 0x03, 0x02)
    res = _test_run(env, "a", P.PROG_DECAP, pkt, "eth0")
    assert res.retval == P.TC_ACT_REDIRECT and res.data[15] == 0x03 and P.ip_checksum(res.data[14:34]) == 0
    assert res.data[34:] == inner[20:]
    pkt, _ = frame(B, A, 0x03, 0x00)
    assert _test_run(env, "a", P.PROG_DECAP, pkt, "eth0").retval == P.TC_ACT_SHOT
    unspec = P.TC_ACT_UNSPEC & 0xFFFFFFFF
    for src, dst, frag in (("172.31.9.77", A, 0), (B, "172.31.9.99", 0), (B, A, 0x2000), (B, A, 0x0001)):
        pkt, _ = frame(src, dst, 0, 0, frag)
        res = _test_run(env, "a", P.PROG_DECAP, pkt, "eth0")
        assert (res.retval, res.data) == (unspec, pkt), (src, dst, frag)
    stats = run(PY, "-m", "agent.felix.bpftunnel", "--stats", "--bpffs", env["topo"].bpf_dir(a), netns=a)
    assert '"rx_ecn_drop": 1' in stats, stats


def test_what_a_user_sees(env):
    """ip link/ip route/tcpdump -i tunl0 (both directions, inner packets only)/counters."""
    require_tool("tcpdump")
    a = env["a"]
    link = run("ip", "-o", "link", "show", "tunl0", netns=a)
    assert "mtu 1480" in link and "NOARP" in link and "LOWER_UP" in link, link
    assert run("ip", "-o", "-4", "addr", "show", "dev", "tunl0", netns=a).split()[3] == "192.168.10.0/32"
    assert run("ip", "route", "show", "dev", "tunl0", netns=a).splitlines() == ["192.168.20.0/26 via 172.31.9.2 onlink "]
    before = run("ip", "-s", "-o", "link", "show", "tunl0", netns=a)
    cap = env["topo"].spawn(a, "tcpdump", "-nli", "tunl0", "--immediate-mode", "icmp",
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    cap.stderr.readline()
    out = run("ping", "-c", "3", "-i", "0.2", "-W", "1", env["ipb"], netns=env["pa"])
    assert " 0% packet loss" in out
    os.set_blocking(cap.stdout.fileno(), False)
    lines: list[str] = []

    def seen() -> list[str]:
        lines.extend(cap.stdout.readlines())
        return lines

    wait_for(seen, lambda ls: sum("ICMP echo reply" in ln for ln in ls) >= 3
             and sum("ICMP echo request" in ln for ln in ls) >= 3, timeout=5, what="tcpdump -i tunl0")
    cap.terminate()
    assert all(" IP 192.168.10.5 > 192.168.20.7: ICMP echo request" in ln or
               " IP 192.168.20.7 > 192.168.10.5: ICMP echo reply" in ln for ln in lines), lines
    after = run("ip", "-s", "-o", "link", "show", "tunl0", netns=a)

    def packets(text: str) -> tuple[int, int]:
        f = text.split("\\")
        rx = next(i for i, x in enumerate(f) if "RX:" in x)
        tx = next(i for i, x in enumerate(f) if "TX:" in x)
        return int(f[rx + 1].split()[1]), int(f[tx + 1].split()[1])

    assert packets(after)[0] - packets(before)[0] >= 3 and packets(after)[1] - packets(before)[1] >= 3


def test_ipip_from_a_non_calico_host_meets_cali_inputs_drop(env):
    """The decap program leaves IPIP from outside cali40all-hosts-net to the stack: netfilter
    INPUT's `-p 4 -j DROP` (Felix's rule) drops and counts it; the allowed node's tunnel
    traffic never reaches INPUT (its ACCEPT rule's counter stays 0: a documented difference)."""
    b = env["b"]
    rogue = env["topo"].netns("r")
    run("ip", "link", "add", "eth1", "netns", b, "type", "veth", "peer", "name", "eth0", "netns", rogue)
    run("ip", "-n", b, "addr", "add", "172.31.8.1/24", "dev", "eth1")
    run("ip", "-n", b, "link", "set", "eth1", "up")
    run("ip", "-n", rogue, "addr", "add", "172.31.8.9/24", "dev", "eth0")
    run("ip", "-n", rogue, "link", "set", "eth0", "up")
    run("ipset", "create", "hosts", "hash:net", netns=b)
    run("ipset", "add", "hosts", A, netns=b)
    run("iptables", "-A", "INPUT", "-p", "4", "-m", "set", "--match-set", "hosts", "src", "-m", "addrtype",
        "--dst-type", "LOCAL", "-j", "ACCEPT", netns=b)
    run("iptables", "-A", "INPUT", "-p", "4", "-j", "DROP", netns=b)
    send_ipip(rogue, "172.31.8.1", [echo_request("192.168.10.99", "192.168.20.7", 1, 1)] * 5)
    assert " 0% packet loss" in run("ping", "-c", "3", "-W", "1", env["ipb"], netns=env["pa"])

    def counters() -> list[int]:
        rules = run("iptables", "-L", "INPUT", "-vnx", netns=b).splitlines()[2:]
        return [int(r.split()[0]) for r in rules]

    wait_for(counters, lambda c: c[1] == 5, timeout=5, what="5 drops by -p 4 -j DROP")
    assert counters() == [0, 5]


def test_forwarding_with_no_process_running(env):
    """Nothing of calicolab runs in the nodes (the set-up command exited); TCP flows anyway."""
    for node in ("a", "b"):
        assert run("ip", "netns", "pids", env[node]).split() == []
    srv = env["topo"].spawn(env["pb"], "iperf3", "-s", "-1", "-B", env["ipb"], stdout=subprocess.DEVNULL)
    wait_for(lambda: run("ss", "-ltn", netns=env["pb"]), lambda o: ":5201" in o, timeout=5, what="iperf3 -s")
    out = run("iperf3", "-c", env["ipb"], "-t", "1", "-J", netns=env["pa"])
    srv.wait(timeout=10)
    assert '"bits_per_second"' in out


def _flood(ns: str, dst: str, stop: threading.Event, result: dict) -> None:
    """Pings every 10 ms until ``stop``; counts sent and answered."""
    p = subprocess.Popen(["ip", "netns", "exec", ns, "ping", "-i", "0.01", "-W", "1", dst],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stop.wait()
    p.send_signal(2)
    out, _ = p.communicate(timeout=10)
    line = next(ln for ln in out.splitlines() if "packets transmitted" in ln)
    result["sent"], result["got"] = int(line.split()[0]), int(line.split()[3])


def test_adopt_upgrade_and_lost_pins(env, monkeypatch):
    """A second set-up adopts (same program ids, nothing replaced); new program code replaces
    both programs in place while 10 ms pings run both ways (none lost) and keeps the maps;
    pins lost (e.g. with a bpffs that went away) are found again through the filters."""
    a = env["a"]
    again = env["topo"].bpf_tunnel(a, "192.168.10.0", [B])
    assert again["adopted"] and again["replaced"] == [] and again["prog_ids"] == env["sa"]["prog_ids"]

    stop, results = threading.Event(), [{}, {}]
    floods = [threading.Thread(target=_flood, args=(env["pa"], env["ipb"], stop, results[0])),
              threading.Thread(target=_flood, args=(env["pb"], env["ipa"], stop, results[1]))]
    for f in floods:
        f.start()
    kernel = Netlink(a)
    tunnel = BpfTunnel(kernel, env["topo"].bpf_dir(a))

    def tx() -> int:
        return int(run("cat", "/sys/class/net/tunl0/statistics/tx_packets", netns=a))

    try:
        start = tx()
        wait_for(tx, lambda n: n >= start + 30, timeout=10, what="30 pings through tunl0 before the upgrade")
        real_encap, real_decap = P.encap_program, P.decap_program
        monkeypatch.setattr(P, "encap_program", lambda cfg: bytes.fromhex("b700000000000000") + real_encap(cfg))
        monkeypatch.setattr(P, "decap_program", lambda cfg: bytes.fromhex("b700000000000000") + real_decap(cfg))
        with entered(a):
            st = tunnel.ensure("192.168.10.0", 1480, [B])
        assert not st.adopted and sorted(st.replaced) == sorted(
            [f"{P.PROG_ENCAP}@{_ifindex(a, P.PEER_NAME)}", f"{P.PROG_DECAP}@{_ifindex(a, 'eth0')}"])
        assert st.map_ids == env["sa"]["map_ids"]
        assert set(st.prog_ids.values()).isdisjoint(env["sa"]["prog_ids"].values())
        start = tx()
        wait_for(tx, lambda n: n >= start + 30, timeout=10, what="30 pings through tunl0 after the upgrade")
    finally:
        stop.set()
        for f in floods:
            f.join(15)
        tunnel.close()
    for r in results:
        assert r["sent"] > 20 and r["got"] == r["sent"], results
    for name in os.listdir(_pins(env, "a")):
        os.unlink(os.path.join(_pins(env, "a"), name))
    with entered(a):
        st2 = BpfTunnel(kernel, env["topo"].bpf_dir(a)).ensure("192.168.10.0", 1480, [B])
    kernel.close()
    assert st2.adopted and st2.prog_ids == st.prog_ids and st2.map_ids == st.map_ids
    assert sorted(os.listdir(_pins(env, "a"))) == sorted([P.PROG_ENCAP, P.PROG_DECAP, P.HOSTS, P.REMOTES,
                                                          P.COUNTERS])


def test_remove_leaves_nothing(env):
    a = env["a"]
    ids = env["sa"]["prog_ids"].values()
    out = run(PY, "-m", "agent.felix.bpftunnel", "--remove", "--bpffs", env["topo"].bpf_dir(a), netns=a)
    assert '"tunl0"' in out and '"filter eth0"' in out
    links = run("ip", "-o", "link", "show", netns=a)
    assert "tunl0" not in links and P.PEER_NAME not in links
    with Tc(a) as tc:
        assert not tc.has_clsact(_ifindex(a, "eth0"))
    assert not os.path.exists(_pins(env, "a"))

    def alive() -> list[int]:
        out = []
        for i in ids:
            fd = bpf.prog_fd_by_id(i)
            if fd is not None:
                os.close(fd)
                out.append(i)
        return out

    wait_for(alive, lambda left: not left, timeout=5, what="the programs freed")


def test_allowed_hosts_follow_a_difference_and_keep_their_counters(env):
    """Felix syncs the allowed-hosts map by difference (sync_allowed with the previous members):
    a joining node is one update, a leaving one one delete; the remaining hosts keep their
    packet counters; a full sync (no previous) lands on the same map."""
    from agent.felix.bpftunnel import BpfTunnel

    assert " 0% packet loss" in run("ping", "-c", "2", "-i", "0.2", "-W", "1", env["ipb"], netns=env["pa"])
    t = BpfTunnel(None, env["topo"].bpf_dir(env["b"]))
    t._ensure_maps_only()
    try:
        before = t.stats()["hosts"]
        assert set(before) == {A} and before[A]["rx_packets"] >= 2, before
        t.sync_allowed({A, "172.31.9.3", "10.9.0.0/16"}, previous={A})
        grown = t.stats()["hosts"]
        assert set(grown) == {A, "172.31.9.3", "10.9.0.0/16"}
        assert grown[A]["rx_packets"] >= before[A]["rx_packets"]  # not reset by the update
        t.sync_allowed({A, "10.9.0.0/16"}, previous={A, "172.31.9.3", "10.9.0.0/16"})
        assert set(t.stats()["hosts"]) == {A, "10.9.0.0/16"}
        t.sync_allowed({A})  # the full sync (Felix's refresh) reads the map back
        assert set(t.stats()["hosts"]) == {A}
    finally:
        t.close()
    assert " 0% packet loss" in run("ping", "-c", "2", "-i", "0.2", "-W", "1", env["ipb"], netns=env["pa"])
