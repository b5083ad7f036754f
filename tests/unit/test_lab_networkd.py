"""The lab's network keeper (testbed.lab.networkd) on the fake kernel: a flapped uplink
gets its address and routes back; a link left down stays down."""

from __future__ import annotations

import pytest

from kernel.fake import FakeKernel
from kernel.model import IFF_LOWER_UP, LinkSet
from testbed.lab.networkd import (
    HostNetwork,
    bridge_ops,
    configure_ops,
    host_network,
    port_ops,
    repair,
)

pytestmark = pytest.mark.unit

NODE = HostNetwork("k8s-w0", (("eth0", "172.30.0.11", 24),), (("0.0.0.0/0", "172.30.0.1"),))


def node_kernel() -> FakeKernel:
    k = FakeKernel("k8s-w0")
    k.add_link("eth0", up=True, cidr="172.30.0.11/24")
    return k


def routes(k: FakeKernel) -> list[str]:
    return sorted(f"{r.dst} via {r.gateway}" if r.gateway else r.dst for r in k.routes())


def flap(k: FakeKernel, up: bool) -> None:
    assert k.submit([LinkSet(k.link("eth0").index, up=up)]) == [None]


def test_first_pass_configures_then_nothing_to_do():
    k = node_kernel()
    assert repair(k, NODE) == ["route 0.0.0.0/0 via 172.30.0.1 dev eth0"]
    assert routes(k) == ["0.0.0.0/0 via 172.30.0.1", "172.30.0.0/24"]
    assert repair(k, NODE) == []


def test_a_flap_restores_the_default_route():
    k = node_kernel()
    repair(k, NODE)
    flap(k, False)
    assert routes(k) == []  # the kernel dropped every route through eth0
    assert repair(k, NODE) == []  # eth0 is down: it stays down, nothing can be added
    flap(k, True)
    assert routes(k) == ["172.30.0.0/24"]  # only the connected prefix comes back by itself
    assert repair(k, NODE) == ["route 0.0.0.0/0 via 172.30.0.1 dev eth0"]
    assert routes(k) == ["0.0.0.0/0 via 172.30.0.1", "172.30.0.0/24"]


def test_a_lost_address_comes_back_before_its_gateway():
    k = FakeKernel("k8s-w0")
    link = k.add_link("eth0", up=True)
    assert link.flags & IFF_LOWER_UP
    assert repair(k, NODE) == ["address 172.30.0.11/24 dev eth0", "route 0.0.0.0/0 via 172.30.0.1 dev eth0"]


def test_host_network_from_the_walkthrough_topology():
    from testbed.lab.state import REPO
    from testbed.lab.topology import load

    topo = load(REPO / "topologies" / "walkthrough.yaml")
    assert host_network(topo, "k8s-w0") == NODE
    r0 = host_network(topo, "r0")
    assert r0.addresses == (("eth0", "172.30.0.1", 24), ("eth1", "203.0.113.1", 24)) and r0.routes == ()


def test_first_configuration_is_what_ip_did_and_networkd_finds_nothing_to_add():
    """The supervisor's first configuration (configure_ops, sent over rtnetlink) gives a host
    the topology's addresses and routes, in the order of the ``ip`` commands it replaced;
    the network keeper then has nothing to restore."""
    from kernel.model import AddrAdd, RouteAdd

    k = FakeKernel("k8s-w0")
    k.add_link("eth0", up=False)
    links = {ln.name: ln.index for ln in k.links()}
    ops = configure_ops(NODE, links)
    assert [type(op).__name__ for op in ops] == ["LinkSet", "AddrAdd", "LinkSet", "RouteAdd"]
    assert isinstance(ops[1], AddrAdd) and ops[1].addr.cidr == "172.30.0.11/24"
    route = ops[3].route if isinstance(ops[3], RouteAdd) else None
    assert route is not None and route.gateway == "172.30.0.1" and route.oif == 0 and not ops[3].replace
    assert k.submit(ops) == [None] * len(ops)
    assert k.link("eth0").up
    assert routes(k) == ["0.0.0.0/0 via 172.30.0.1", "172.30.0.0/24"]
    assert repair(k, NODE) == []


def test_first_configuration_on_link_route_and_spanning_mtu():
    """A node on a segment without a gateway: an on-link route through its first interface;
    a segment spanning machines: the interface's MTU first."""
    from kernel.model import RT_SCOPE_LINK, LinkSet

    net = HostNetwork("k8s-w0", (("eth0", "172.30.0.11", 24),), (("169.254.1.1/32", ""),))
    k = FakeKernel("k8s-w0")
    k.add_link("eth0", up=False)
    links = {ln.name: ln.index for ln in k.links()}
    ops = configure_ops(net, links, {"eth0": 1450})
    assert isinstance(ops[1], LinkSet) and ops[1].mtu == 1450
    route = ops[-1].route
    assert route.oif == links["eth0"] and route.scope == RT_SCOPE_LINK and route.gateway is None
    assert k.submit(ops) == [None] * len(ops)
    assert k.link("eth0").mtu == 1450 and "169.254.1.1/32" in routes(k)


def test_bridge_and_port_ops_bring_the_bridge_up_and_enslave_each_port():
    from kernel.model import Bridge, LinkAdd

    k = FakeKernel("lan0")
    for port in ("k8s-m", "k8s-w0"):
        k.add_link(port, up=False)
    assert k.submit([LinkAdd(Bridge("lan0", forward_delay=0, stp_state=0))]) == [None]
    links = {ln.name: ln.index for ln in k.links()}
    ops = bridge_ops("lan0", links)
    for port in ("k8s-m", "k8s-w0"):
        ops += port_ops(links[port], links["lan0"], mtu=1450)
    assert k.submit(ops) == [None] * len(ops)
    got = {ln.name: ln for ln in k.links()}
    assert got["lan0"].up and all(got[p].up and got[p].master == links["lan0"] and got[p].mtu == 1450
                                  for p in ("k8s-m", "k8s-w0"))
    assert [op.mtu for op in port_ops(links["k8s-m"], links["lan0"])] == [None]  # no MTU given: none set
