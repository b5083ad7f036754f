"""The kernel layer against a real kernel, in namespaces made by the test.

Only what a real kernel must answer: the golden-byte round trip (what the kernel
sends back for objects we created, and for objects ``ip`` created, decodes to what
``ip -j`` and pyroute2 report; our requests are the bytes ``ip`` sends), the fake's
answers checked against the kernel's, batching, setns, sysctls and TUNs in a
namespace reached from outside.
"""

from __future__ import annotations

import errno
import json
import os
import re
import struct
import subprocess
import threading

import pytest

from kernel import (
    RT_SCOPE_LINK,
    RTN_BLACKHOLE,
    KernelError,
    LinkAdd,
    NextHop,
    Route,
    RouteAdd,
    Tun,
    Veth,
    Vxlan,
    rtnl,
)
from kernel import netns as kns
from kernel.fake import FakeKernel
from kernel.netlink import Netlink
from tests.kernel_scenario import SCENARIO, run_scenario, state
from tests.support import require_tool, sh
from tests.unit.test_kernel_rtnl import REQUESTS

pytestmark = pytest.mark.netns


def ip_json(ns: str, *args: str) -> list[dict]:
    """``ip -j -n ns args`` parsed."""
    return json.loads(sh("ip", "-j", "-n", ns, *args) or "[]")


def test_scenario_answers_and_state_match_the_fake(netns):
    ns = netns("kns")
    with Netlink(ns) as real:
        got = run_scenario(real)
        assert got == [(name, want) for name, _ops, want in SCENARIO]
        fake = FakeKernel()
        run_scenario(fake)
        real_state, fake_state = state(real), state(fake)
    # the real namespace also has the kernel's own IPv6 and local-table objects: compare ours
    assert real_state["routes"] == fake_state["routes"]
    assert real_state["addrs"] == fake_state["addrs"]
    assert real_state["neighs"] == fake_state["neighs"] and real_state["fdb"] == fake_state["fdb"]
    assert real_state["links"] == fake_state["links"]


def _strace_requests(argv: list[str]) -> list[bytes]:
    """The netlink messages ``argv`` sends (strace's hex dump of its writes), lookups dropped."""
    res = subprocess.run(["strace", "-f", "-qq", "-e", "trace=sendmsg,sendto", "-e", "write=3,4,5,6",
                          "-o", "/dev/stderr", *argv], capture_output=True, text=True, timeout=30)
    msgs: list[bytearray] = []
    for line in res.stderr.splitlines():
        if re.match(r"^\d+\s+send", line):
            msgs.append(bytearray())
        m = re.match(r"^\s*\|\s+[0-9a-f]{5}\s+((?:[0-9a-f]{2}\s+)+)", line)
        if m and msgs:
            msgs[-1] += bytes.fromhex("".join(m.group(1).split()))
    return [bytes(m) for m in msgs if len(m) >= 16 and struct.unpack_from("=H", m, 4)[0] not in (18, 22, 26, 30)]


def test_our_requests_are_the_bytes_ip_sends_live(netns):
    require_tool("strace")
    ns = netns("kip")
    sh("ip", "-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    sh("ip", "-n", ns, "link", "set", "v0", "up")
    sh("ip", "-n", ns, "addr", "add", "10.1.0.1/24", "dev", "v0")
    sh("ip", "-n", ns, "link", "add", "vxlan.calico", "type", "vxlan", "id", "4096", "dstport", "4789")
    assert (sh("ip", "-n", ns, "-o", "link", "show", "v0").split(":")[0],
            sh("ip", "-n", ns, "-o", "link", "show", "vxlan.calico").split(":")[0]) == ("3", "4")
    for command, op, _golden in REQUESTS:
        tool, *args = command.split()
        sent = _strace_requests([tool, "-n", ns, *args])
        assert sent, f"strace saw no request from {command}"
        zero = sent[-1][:8] + b"\0" * 8 + sent[-1][16:]
        assert zero == rtnl.encode(op, 0), command


def test_what_ip_creates_decodes_as_ip_reports_it(netns):
    ns = netns("kdec")
    for cmd in ("link add v0 mtu 1480 address ee:ee:ee:ee:ee:ee type veth peer name v1", "link set v0 up",
                "link set v1 up", "addr add 10.1.0.1/24 dev v0",
                "link add vxlan.calico address 66:f9:37:c3:7e:94 type vxlan dev v0 id 4096 local 10.1.0.1 "
                "nolearning dstport 4789", "link set vxlan.calico up",
                "tuntap add tunl0 mode tun vnet_hdr", "link set tunl0 mtu 1440 up",
                "addr add 192.168.3.0/32 dev tunl0",
                "route add 192.168.1.5/32 dev v0 scope link",
                "route add 192.168.2.0/26 via 172.30.0.12 dev v0 proto bird onlink",
                "route add 192.168.4.0/26 proto bird nexthop via 10.1.0.2 dev v0 nexthop via 172.30.0.13 dev v0 onlink",
                "route add blackhole 192.168.3.0/26 proto bird", "route add default via 10.1.0.254 dev v0 metric 20",
                "neigh replace 192.168.5.1 lladdr 66:00:00:00:00:01 dev vxlan.calico nud permanent"):
        sh("ip", "-n", ns, *cmd.split())
    sh("bridge", "-n", ns, "fdb", "replace", "66:00:00:00:00:01", "dev", "vxlan.calico", "dst", "10.1.0.2",
       "self", "permanent")
    with Netlink(ns) as k:
        links = {ln.name: ln for ln in k.links()}
        for j in ip_json(ns, "-d", "link", "show"):
            ln = links[j["ifname"]]
            assert (ln.index, ln.mtu, ln.mac or None) == (j["ifindex"], j["mtu"], j.get("address") or None)
            assert ln.kind == j.get("linkinfo", {}).get("info_kind", "")
            if ln.kind == "vxlan":
                d = j["linkinfo"]["info_data"]
                assert ln.info == {"vni": d["id"], "port": d["port"], "local": d["local"],
                                   "dev": links["v0"].index, "learning": d["learning"]}
        addrs = {(a.index, a.cidr) for a in k.addrs()}
        assert addrs == {(j["ifindex"], f"{a['local']}/{a['prefixlen']}")
                         for j in ip_json(ns, "-4", "addr", "show") for a in j["addr_info"]}
        ours = {r.dst: r for r in k.routes()}
        for j in ip_json(ns, "-4", "route", "show"):
            dst = "0.0.0.0/0" if j["dst"] == "default" else (j["dst"] if "/" in j["dst"] else j["dst"] + "/32")
            r = ours.pop(dst)
            assert r.protocol == {"kernel": 2, "bird": 12, "boot": 3}.get(j.get("protocol", "boot"))
            assert (r.type == RTN_BLACKHOLE) == (j.get("type") == "blackhole")
            assert r.gateway == j.get("gateway") and r.priority == j.get("metric")
            assert r.onlink == ("onlink" in j.get("flags", []))
            assert [(h.gateway, h.oif, h.onlink) for h in r.nexthops] == [
                (h["gateway"], links[h["dev"]].index, "onlink" in h.get("flags", [])) for h in j.get("nexthops", [])]
        assert ours == {}
        [n] = [n for n in k.neighs() if n.index == links["vxlan.calico"].index]
        assert (n.dst, n.lladdr) == ("192.168.5.1", "66:00:00:00:00:01")
        fdb = [(n.lladdr, n.dst) for n in k.fdb() if n.index == links["vxlan.calico"].index]
        assert fdb == [(f["mac"], f["dst"]) for f in json.loads(sh("bridge", "-n", ns, "-j", "fdb", "show", "dev",
                                                                   "vxlan.calico"))]


def test_what_we_create_reads_back_in_pyroute2(netns):
    """pyroute2 as an independent oracle for what our requests made."""
    from pyroute2 import NetNS

    ns = netns("kpr")
    with Netlink(ns) as k:
        v0 = k.link_add(Veth("v0", "v1", mtu=1480, mac="ee:ee:ee:ee:ee:ee"))
        k.link_set(v0.index, up=True)
        k.link_set(k.index("v1"), up=True)
        k.addr_add(v0.index, "10.1.0.1/24")
        vx = k.link_add(Vxlan("vxlan.calico", 4096, local="10.1.0.1", dev=v0.index))
        k.do(RouteAdd(Route("192.168.2.0/26", oif=v0.index, gateway="172.30.0.12", onlink=True, protocol=12)),
             RouteAdd(Route("192.168.4.0/26", protocol=12, nexthops=(NextHop("10.1.0.2", v0.index),
                                                                    NextHop("172.30.0.13", v0.index, True)))),
             RouteAdd(Route("192.168.3.0/26", type=RTN_BLACKHOLE, protocol=12)),
             RouteAdd(Route("192.168.1.5/32", oif=v0.index, scope=RT_SCOPE_LINK)))
    with NetNS(ns) as ipr:
        link = ipr.get_links(vx.index)[0]
        data = link.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_DATA")
        assert (data.get_attr("IFLA_VXLAN_ID"), data.get_attr("IFLA_VXLAN_PORT"),
                data.get_attr("IFLA_VXLAN_LOCAL"), data.get_attr("IFLA_VXLAN_LEARNING")) == (
                    4096, 4789, "10.1.0.1", 0)
        assert ipr.get_links(v0.index)[0].get_attr("IFLA_ADDRESS") == "ee:ee:ee:ee:ee:ee"
        routes = {r.get_attr("RTA_DST"): r for r in ipr.get_routes(family=2, table=254)}
        r = routes["192.168.2.0"]
        assert (r["proto"], r["flags"] & 4, r.get_attr("RTA_GATEWAY"), r.get_attr("RTA_OIF")) == (
            12, 4, "172.30.0.12", v0.index)
        mp = routes["192.168.4.0"].get_attr("RTA_MULTIPATH")
        assert [(h.get_attr("RTA_GATEWAY"), h["oif"], h["flags"] & 4) for h in mp] == [
            ("10.1.0.2", v0.index, 0), ("172.30.0.13", v0.index, 4)]
        assert routes["192.168.3.0"]["type"] == RTN_BLACKHOLE
        assert routes["192.168.1.5"]["scope"] == RT_SCOPE_LINK and routes["192.168.1.5"]["proto"] == 3


def test_batches_map_each_error_to_its_object(netns):
    ns = netns("kbat")
    with Netlink(ns) as k:
        v0 = k.link_add(Veth("v0", "v1"))
        k.link_set(v0.index, up=True)
        k.addr_add(v0.index, "10.1.0.1/24")
        ops = [RouteAdd(Route(f"10.{100 + i // 250}.{i % 250}.0/24" if i != 300 else "10.1.0.0/24", oif=v0.index,
                              gateway="10.1.0.2" if i != 7 else "172.16.0.1", scope=0)) for i in range(2, 600)]
        res = k.submit(ops)  # three sends (BATCH = 256)
        bad = {i + 2: r for i, r in enumerate(res) if r is not None}
        assert set(bad) == {7, 300}
        assert bad[7].errno == errno.ENETUNREACH and "route 10.100.7.0/24 via 172.16.0.1 dev v0" in str(bad[7])
        assert bad[7].detail == "Nexthop has invalid gateway"
        assert bad[300].errno == errno.EEXIST and "10.1.0.0/24" in str(bad[300])
        assert len([r for r in k.routes() if r.gateway == "10.1.0.2"]) == len(ops) - 2
        with pytest.raises(KernelError) as exc:
            k.link_set(9999, up=True)
        assert exc.value.errno == errno.ENODEV and "link #9999" in str(exc.value)


def test_veth_peer_sysctls_and_tun_in_other_namespaces(netns):
    node, pod = netns("knode"), netns("kpod")
    own = os.stat("/proc/thread-self/ns/net").st_ino
    with Netlink(node) as host, Netlink(pod) as podk:
        host.link_add(Veth("cali1", "eth0", mtu=1480, peer_netns=podk))
        assert podk.link("eth0") is not None and host.link("eth0") is None
        host.sysctl_set("net/ipv4/conf/cali1/proxy_arp", "1")
        assert host.sysctl_get("net/ipv4/conf/cali1/proxy_arp") == "1"
        assert podk.sysctl_get("net/ipv4/conf/cali1/proxy_arp") is None
        with pytest.raises(KernelError) as exc:
            podk.sysctl_set("net/ipv4/conf/cali1/proxy_arp", "1")
        assert exc.value.errno == errno.ENOENT
        host.do(LinkAdd(Tun("tunl0")))
        assert host.link("tunl0").kind == "tun" and podk.link("tunl0") is None
    assert os.stat("/proc/thread-self/ns/net").st_ino == own
    assert "tunl0" in sh("ip", "-n", node, "link", "show", "tunl0")


def test_setns_helper_moves_only_the_calling_thread(netns):
    ns = netns("kset")
    target = os.stat(f"/run/netns/{ns}").st_ino
    own = os.stat("/proc/thread-self/ns/net").st_ino
    seen: dict[str, int] = {}
    inside, leave = threading.Event(), threading.Event()

    def worker() -> None:
        with kns.entered(ns):
            seen["worker"] = os.stat("/proc/thread-self/ns/net").st_ino
            inside.set()
            leave.wait(5)
        seen["after"] = os.stat("/proc/thread-self/ns/net").st_ino

    t = threading.Thread(target=worker)
    t.start()
    assert inside.wait(5)
    seen["main"] = os.stat("/proc/thread-self/ns/net").st_ino
    leave.set()
    t.join(5)
    assert seen == {"worker": target, "main": own, "after": own}
    with pytest.raises(OSError) as exc:
        with kns.entered("no-such-netns-x1"):
            pass
    assert exc.value.errno == errno.ENOENT and "/run/netns/no-such-netns-x1" in str(exc.value)
    assert os.stat("/proc/thread-self/ns/net").st_ino == own
    with pytest.raises(KernelError) as exc:
        Netlink("no-such-netns-x1")
    assert "no-such-netns-x1" in str(exc.value)


def test_link_events_arrive_on_a_subscribed_handle(netns):
    ns = netns("kev")
    with Netlink(ns, groups=rtnl.RTMGRP_LINK) as watch, Netlink(ns) as k:
        k.link_add(Veth("cali1", "cali2"))
        names: set[str] = set()

        def more() -> set[str]:
            import select

            if select.select([watch], [], [], 0.2)[0]:
                names.update(o.name for t, o in watch.events() if t == rtnl.RTM_NEWLINK)
            return names

        from testbed.poll import wait_for

        wait_for(more, lambda s: {"cali1", "cali2"} <= s, timeout=5, what="RTM_NEWLINK events for the veth pair")
        watch.request_dump()
        dumped: list = []
        wait_for(lambda: dumped.extend(watch.events()) or dumped,
                 lambda d: any(t == rtnl.NLMSG_DONE for t, _ in d), timeout=5, what="the link dump's end")
        assert {o.name for t, o in dumped if t == rtnl.RTM_NEWLINK} == {"lo", "cali1", "cali2"}
