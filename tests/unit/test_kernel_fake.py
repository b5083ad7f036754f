"""The in-memory kernel answers as the kernel does (tests/netns/test_kernel_netlink.py runs
the same scenario, tests.kernel_scenario, against a real namespace and compares)."""

from __future__ import annotations

import errno

import pytest

from kernel import (
    AF_BRIDGE,
    NTF_SELF,
    RT_SCOPE_LINK,
    RTN_BLACKHOLE,
    Addr,
    AddrAdd,
    Ipip,
    KernelError,
    LinkAdd,
    LinkSet,
    Neigh,
    NextHop,
    Route,
    RouteAdd,
    Tun,
    Veth,
    Vxlan,
)
from kernel.fake import FakeKernel
from tests.kernel_scenario import SCENARIO, run_scenario

pytestmark = pytest.mark.unit


def test_scenario_answers():
    """Every step's errno as tests/kernel_scenario.py expects (the netns test checks the
    real kernel gives the same)."""
    got = run_scenario(FakeKernel())
    assert got == [(name, want) for name, _ops, want in SCENARIO]


def test_ifindex_allocation_and_veth_across_namespaces():
    host, pod = FakeKernel("host"), FakeKernel("pod")
    assert [ln.name for ln in host.links()] == ["lo"] and host.link("lo").index == 1
    a = host.link_add(Veth("cali1", "eth0", mtu=1480, mac="ee:ee:ee:ee:ee:ee", peer_netns=pod))
    assert (a.index, a.mtu, a.mac) == (2, 1480, "ee:ee:ee:ee:ee:ee")
    b = pod.link("eth0")
    assert b.index == 2 and b.parent == a.index and a.parent == b.index
    assert host.sysctl_get("net/ipv4/conf/cali1/proxy_arp") == "0"
    pod.link_del(b.index)  # deleting one end deletes both
    assert host.link("cali1") is None and host.sysctl_get("net/ipv4/conf/cali1/proxy_arp") is None


def test_link_deletion_and_down_remove_routes_and_addresses():
    k = FakeKernel()
    eth = k.add_link("eth0", cidr="10.0.0.1/24")
    assert Route("10.0.0.0/24", oif=eth.index, protocol=2, scope=RT_SCOPE_LINK, prefsrc="10.0.0.1") in k.routes()
    k.route_add(Route("10.9.0.0/16", oif=eth.index, gateway="10.0.0.2"))
    k.link_set(eth.index, up=False)
    assert k.routes() == []  # the kernel flushes IPv4 routes through a device that goes down
    k.link_set(eth.index, up=True)
    assert [r.dst for r in k.routes()] == ["10.0.0.0/24"]  # connected route back, static one gone
    k.route_add(Route("10.9.0.0/16", oif=eth.index, gateway="10.0.0.2"))
    k.link_del(eth.index)
    assert k.routes() == [] and k.addrs() == [a for a in k.addrs() if a.index == 1]


def test_route_semantics():
    k = FakeKernel()
    eth = k.add_link("eth0", cidr="10.0.0.1/24").index
    r = Route("192.168.1.0/26", oif=eth, gateway="10.0.0.2", protocol=12)
    k.route_add(r)
    with pytest.raises(KernelError) as exc:
        k.route_add(r)
    assert exc.value.errno == errno.EEXIST and "route 192.168.1.0/26 via 10.0.0.2 dev eth0" in str(exc.value)
    k.route_add(Route("192.168.1.0/26", type=RTN_BLACKHOLE, protocol=12), replace=True)
    assert [x.type for x in k.routes(protocol=12)] == [RTN_BLACKHOLE]
    with pytest.raises(KernelError) as exc:
        k.route_add(Route("192.168.2.0/26", oif=eth, gateway="172.30.0.9"))
    assert exc.value.errno == errno.ENETUNREACH
    k.route_add(Route("192.168.2.0/26", oif=eth, gateway="172.30.0.9", onlink=True))
    mp = Route("192.168.3.0/26", protocol=12, nexthops=(NextHop("10.0.0.2", eth), NextHop("172.30.0.9", eth, True)))
    k.route_add(mp)
    assert mp in k.routes()
    with pytest.raises(KernelError) as exc:
        k.route_del(Route("192.168.9.0/26", protocol=12))
    assert exc.value.errno == errno.ESRCH
    with pytest.raises(KernelError) as exc:  # protocol given: only that protocol's route matches
        k.route_del(Route("192.168.2.0/26", protocol=12))
    assert exc.value.errno == errno.ESRCH
    k.route_del(Route("192.168.2.0/26", protocol=0))
    with pytest.raises(KernelError) as exc:
        k.route_add(Route("192.168.4.0/26", oif=99))
    assert exc.value.errno == errno.ENODEV
    down = k.add_link("cali1", up=False).index
    with pytest.raises(KernelError) as exc:
        k.route_add(Route("192.168.1.5/32", oif=down, scope=RT_SCOPE_LINK))
    assert exc.value.errno == errno.ENETDOWN


def test_batches_report_each_result_and_fault_injection():
    k = FakeKernel()
    eth = k.add_link("eth0", cidr="10.0.0.1/24").index
    ops = [RouteAdd(Route(f"192.168.{i}.0/26", oif=eth, gateway="10.0.0.2")) for i in range(3)]
    k.fault = lambda op: errno.ENOBUFS if isinstance(op, RouteAdd) and op.route.dst.startswith("192.168.1.") else None
    res = k.submit(ops)
    assert [r.errno if r else 0 for r in res] == [0, errno.ENOBUFS, 0]
    assert k.batches[-1] == 3 and len([o for o in k.log if isinstance(o, RouteAdd)]) == 2


def test_kinds_tun_vxlan_fdb():
    k = FakeKernel()
    assert not k.can_create("ipip") and k.can_create("vxlan")
    with pytest.raises(KernelError) as exc:
        k.link_add(Ipip("tunl1"))
    assert exc.value.errno == errno.EOPNOTSUPP
    assert FakeKernel(kinds={"ipip"}).link("tunl0").kind == "ipip"  # the module's fallback device
    k.do(LinkAdd(Tun("tunl0")))
    k.do(LinkAdd(Tun("tunl0")))  # attaching to the persistent TUN again is fine
    assert k.link("tunl0").kind == "tun"
    eth = k.add_link("eth0", cidr="10.0.0.1/24").index
    with pytest.raises(KernelError) as exc:
        k.do(LinkAdd(Tun("eth0")))
    assert exc.value.errno == errno.EINVAL
    vx = k.link_add(Vxlan("vxlan.calico", 4096, local="10.0.0.1", dev=eth))
    assert vx.mtu == 1450 and vx.info["vni"] == 4096
    fdb = Neigh(vx.index, "10.0.0.2", "66:00:00:00:00:02", family=AF_BRIDGE, flags=NTF_SELF)
    k.neigh_add(fdb)
    k.neigh_add(fdb)  # replace
    assert k.fdb() == [fdb]
    with pytest.raises(KernelError) as exc:
        k.do(AddrAdd(Addr(eth, "10.0.0.1", 24)))
    assert exc.value.errno == errno.EEXIST
    with pytest.raises(KernelError):
        k.do(LinkSet(eth, mtu=10))


def test_sysctls_and_route_get():
    k = FakeKernel()
    eth = k.add_link("eth0", cidr="10.0.0.1/24").index
    k.route_add(Route("0.0.0.0/0", oif=eth, gateway="10.0.0.254"))
    assert k.route_get("8.8.8.8").prefsrc == "10.0.0.1"
    k.sysctl_set("net/ipv4/conf/eth0/proxy_arp", "1")
    assert k.sysctl_get("net/ipv4/conf/eth0/proxy_arp") == "1"
    with pytest.raises(KernelError) as exc:
        k.sysctl_set("net/ipv4/conf/nope/proxy_arp", "1")
    assert exc.value.errno == errno.ENOENT and "nope" in str(exc.value)
    k.route_del(Route("0.0.0.0/0", protocol=0))
    assert k.route_get("8.8.8.8") is None
