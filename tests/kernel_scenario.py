"""One sequence of kernel operations with the errno the kernel answers for each (test data).

Run against :class:`kernel.fake.FakeKernel` by tests/unit/test_kernel_fake.py and
against a real namespace by tests/netns/test_kernel_netlink.py: both must give the
expected answers, so the fake's semantics are checked against the kernel's.
Steps are functions of the kernel handle (indexes are looked up when the step runs).
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

from kernel import (
    AF_BRIDGE,
    NTF_SELF,
    RT_SCOPE_LINK,
    RTN_BLACKHOLE,
    Addr,
    AddrAdd,
    AddrDel,
    LinkAdd,
    LinkDel,
    LinkSet,
    Neigh,
    NeighAdd,
    NeighDel,
    NextHop,
    Route,
    RouteAdd,
    RouteDel,
    Tun,
    Veth,
    Vxlan,
)
from kernel.base import Kernel

ok = 0


def _i(k: Kernel, name: str) -> int:
    return k.index(name)


SCENARIO: list[tuple[str, Callable[[Kernel], list[Any]], list[int]]] = [
    ("veth pair", lambda k: [LinkAdd(Veth("v0", "v1", mtu=1480, mac="ee:ee:ee:ee:ee:ee"))], [ok]),
    ("name taken", lambda k: [LinkAdd(Veth("v0", "v2"))], [errno.EEXIST]),
    ("name too long", lambda k: [LinkAdd(Veth("averyveryverylongname", "v3"))], [errno.ERANGE]),
    ("up and address", lambda k: [LinkSet(_i(k, "v0"), up=True), LinkSet(_i(k, "v1"), up=True),
                                  AddrAdd(Addr(_i(k, "v0"), "10.1.0.1", 24))], [ok, ok, ok]),
    ("address again", lambda k: [AddrAdd(Addr(_i(k, "v0"), "10.1.0.1", 24))], [errno.EEXIST]),
    ("absent address", lambda k: [AddrDel(Addr(_i(k, "v0"), "10.1.0.77", 32))], [errno.EADDRNOTAVAIL]),
    ("MTU too small", lambda k: [LinkSet(_i(k, "v0"), mtu=10)], [errno.EINVAL]),
    ("device route", lambda k: [RouteAdd(Route("192.168.1.5/32", oif=_i(k, "v0"), scope=RT_SCOPE_LINK))], [ok]),
    ("second pair", lambda k: [LinkAdd(Veth("d0", "d1"))], [ok]),
    ("down device", lambda k: [RouteAdd(Route("192.168.1.6/32", oif=_i(k, "d0"), scope=RT_SCOPE_LINK))],
     [errno.ENETDOWN]),
    ("down device, onlink", lambda k: [RouteAdd(Route("10.47.0.0/24", oif=_i(k, "d0"), gateway="10.9.9.9",
                                                      onlink=True))], [errno.ENETDOWN]),
    ("gateway on link", lambda k: [RouteAdd(Route("10.2.0.0/24", oif=_i(k, "v0"), gateway="10.1.0.2"))], [ok]),
    ("gateway off link", lambda k: [RouteAdd(Route("10.3.0.0/24", oif=_i(k, "v0"), gateway="172.30.0.12"))],
     [errno.ENETUNREACH]),
    ("gateway off link, onlink", lambda k: [RouteAdd(Route("10.3.0.0/24", oif=_i(k, "v0"), gateway="172.30.0.12",
                                                           onlink=True, protocol=12))], [ok]),
    ("onlink without device", lambda k: [RouteAdd(Route("10.45.0.0/24", gateway="172.30.0.12", onlink=True))],
     [errno.ENODEV]),
    ("gateway with scope link", lambda k: [RouteAdd(Route("10.4.0.0/24", oif=_i(k, "v0"), gateway="10.1.0.2",
                                                          scope=RT_SCOPE_LINK))], [errno.ENETUNREACH]),
    ("no next hop", lambda k: [RouteAdd(Route("10.46.0.0/24"))], [errno.ENODEV]),
    ("route exists", lambda k: [RouteAdd(Route("10.2.0.0/24", oif=_i(k, "v0"), gateway="10.1.0.2"))],
     [errno.EEXIST]),
    ("replace", lambda k: [RouteAdd(Route("10.2.0.0/24", oif=_i(k, "v0"), scope=RT_SCOPE_LINK), replace=True)],
     [ok]),
    ("multipath", lambda k: [RouteAdd(Route("10.5.0.0/24", protocol=12, nexthops=(
        NextHop("10.1.0.2", _i(k, "v0")), NextHop("172.30.0.13", _i(k, "v0"), onlink=True))))], [ok]),
    ("blackhole", lambda k: [RouteAdd(Route("192.168.3.0/26", type=RTN_BLACKHOLE, protocol=12))], [ok]),
    ("unknown device", lambda k: [RouteAdd(Route("10.6.0.0/24", oif=999, scope=RT_SCOPE_LINK))], [errno.ENODEV]),
    ("delete absent", lambda k: [RouteDel(Route("10.7.0.0/24", protocol=0))], [errno.ESRCH]),
    ("delete other protocol", lambda k: [RouteDel(Route("10.3.0.0/24", protocol=3))], [errno.ESRCH]),
    ("delete", lambda k: [RouteDel(Route("10.3.0.0/24", protocol=12)),
                          RouteDel(Route("192.168.3.0/26", type=RTN_BLACKHOLE, protocol=12))], [ok, ok]),
    ("vxlan", lambda k: [LinkAdd(Vxlan("vxlan.calico", 4096, local="10.1.0.1", dev=_i(k, "v0"),
                                       mac="66:f9:37:c3:7e:94"))], [ok]),
    ("neighbour and FDB", lambda k: [
        LinkSet(_i(k, "vxlan.calico"), up=True),
        NeighAdd(Neigh(_i(k, "vxlan.calico"), "192.168.5.1", "66:00:00:00:00:01")),
        NeighAdd(Neigh(_i(k, "vxlan.calico"), "10.1.0.2", "66:00:00:00:00:01", family=AF_BRIDGE, flags=NTF_SELF)),
        NeighAdd(Neigh(_i(k, "vxlan.calico"), "192.168.5.1", "66:00:00:00:00:02"))], [ok, ok, ok, ok]),
    ("neighbour exists", lambda k: [NeighAdd(Neigh(_i(k, "vxlan.calico"), "192.168.5.1", "66:00:00:00:00:03"),
                                             replace=False)], [errno.EEXIST]),
    ("absent neighbour", lambda k: [NeighDel(Neigh(_i(k, "v0"), "10.1.0.77"))], [errno.ENOENT]),
    ("route via vxlan", lambda k: [RouteAdd(Route("192.168.6.0/26", oif=_i(k, "vxlan.calico"),
                                                  gateway="192.168.5.1", onlink=True))], [ok]),
    ("tun", lambda k: [LinkAdd(Tun("tunl0")), LinkAdd(Tun("tunl0")), LinkAdd(Tun("v0"))],
     [ok, ok, errno.EINVAL]),
    ("delete veth end", lambda k: [LinkDel(_i(k, "v1"))], [ok]),
    ("gone device", lambda k: [LinkDel(999)], [errno.ENODEV]),
]


def run_scenario(k: Kernel) -> list[tuple[str, list[int]]]:
    """Run every step; [(step, [errno per op])]."""
    out = []
    for name, ops, _want in SCENARIO:
        out.append((name, [r.errno if r is not None else 0 for r in k.submit(ops(k))]))
    return out


def state(k: Kernel) -> dict[str, Any]:
    """What the scenario leaves, with indexes replaced by names (to compare two kernels)."""
    names = {ln.index: ln.name for ln in k.links()}

    def hop(h: NextHop) -> tuple[Any, ...]:
        return (h.gateway, names.get(h.oif), h.onlink)

    routes = sorted((r.dst, r.type, r.protocol, r.scope, names.get(r.oif), r.gateway, r.onlink,
                     tuple(hop(h) for h in r.nexthops)) for r in k.routes())
    return {
        "links": sorted((ln.name, ln.kind, ln.mtu, ln.up) for ln in k.links()),
        "addrs": sorted((names[a.index], a.cidr) for a in k.addrs()),
        "routes": routes,
        "neighs": sorted((names[n.index], n.dst, n.lladdr) for n in k.neighs()),
        "fdb": sorted((names[n.index], n.dst, n.lladdr) for n in k.fdb() if names.get(n.index) == "vxlan.calico"),
    }
