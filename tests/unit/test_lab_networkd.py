"""The lab's network keeper (testbed.lab.networkd) on the fake kernel: a flapped uplink
gets its address and routes back; a link left down stays down."""

from __future__ import annotations

import pytest

from kernel.fake import FakeKernel
from kernel.model import IFF_LOWER_UP, LinkSet
from testbed.lab.networkd import HostNetwork, host_network, repair

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
