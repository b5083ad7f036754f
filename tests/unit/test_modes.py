"""The network modes as a user observes them (testbed.modes, pure): expected routes per mode
and CrossSubnet decision, and the per-node dataplane check behind `calicolab status`."""

from __future__ import annotations

import pytest

from testbed.modes import (
    KernelRoute,
    Mode,
    NodeInfo,
    dataplane_problems,
    encapsulated,
    expected_route,
)

pytestmark = pytest.mark.unit

M = NodeInfo("k8s-m", "172.30.8.10/24", "192.168.0.1", "192.168.0.2", None)
W0 = NodeInfo("k8s-w0", "172.30.8.11/24", "192.168.1.1", "192.168.1.2", None)
W1 = NodeInfo("k8s-w1", "172.30.9.11/24", "192.168.2.1", "192.168.2.2", None)
NODES = {n.name: n for n in (M, W0, W1)}
BLOCKS = {"192.168.0.0/24": "k8s-m", "192.168.1.0/24": "k8s-w0", "192.168.2.0/24": "k8s-w1"}


def test_mode_names_devices_and_precedence():
    assert Mode("Always").name == "IPIP Always" and Mode("Always").device == "tunl0"
    assert Mode(vxlan="CrossSubnet").name == "VXLAN CrossSubnet" and Mode(vxlan="CrossSubnet").cross_subnet
    assert Mode().name == "no encapsulation" and Mode().device is None and Mode().encap is None
    assert Mode.of_pool({"ipipMode": "Never", "vxlanMode": "Always"}).device == "vxlan.calico"


def test_expected_route_per_mode_and_subnet():
    def text(mode, me, other):
        return expected_route(mode, me, other).text("192.168.2.0/24")

    assert text(Mode("Always"), W0, M) == "192.168.2.0/24 via 172.30.8.10 dev tunl0 proto bird onlink"
    assert text(Mode("CrossSubnet"), W0, M) == "192.168.2.0/24 via 172.30.8.10 dev eth0 proto bird"
    assert text(Mode("CrossSubnet"), W0, W1) == "192.168.2.0/24 via 172.30.9.11 dev tunl0 proto bird onlink"
    assert text(Mode(vxlan="Always"), W0, M) == "192.168.2.0/24 via 192.168.0.2 dev vxlan.calico onlink"
    assert text(Mode(vxlan="CrossSubnet"), W0, M) == "192.168.2.0/24 via 172.30.8.10 dev eth0 proto 80 onlink"
    assert text(Mode(vxlan="CrossSubnet"), W0, W1) == "192.168.2.0/24 via 192.168.2.2 dev vxlan.calico onlink"
    assert text(Mode(), W0, W1) == "192.168.2.0/24 via 172.30.9.11 dev eth0 proto bird"
    assert not encapsulated(Mode(vxlan="CrossSubnet"), W0, M) and encapsulated(Mode(vxlan="Always"), W0, M)
    slash32 = NodeInfo("k8s-w0", "172.30.8.11/32")
    assert encapsulated(Mode("CrossSubnet"), slash32, M)  # calico#1584
    assert expected_route(Mode(vxlan="Always"), W0, NodeInfo("x", "172.30.8.12/24")) is None


def routes_vxlan(me: NodeInfo) -> list[KernelRoute]:
    out = [KernelRoute(f"192.168.{i}.0/24", n.vxlan_tunnel, "vxlan.calico")
           for i, n in enumerate((M, W0, W1)) if n.name != me.name]
    return out + [KernelRoute("172.30.8.0/24", None, "eth0")]


def test_a_complete_node_has_no_problem_and_each_gap_is_named():
    vx = {"192.168.0.0/16": Mode(vxlan="Always")}
    links = ["lo", "eth0", "vxlan.calico", "cali1234"]
    assert dataplane_problems("k8s-w0", NODES, vx, BLOCKS, routes_vxlan(W0), links) == []
    assert dataplane_problems("k8s-w0", NODES, vx, BLOCKS, routes_vxlan(W0), ["lo", "eth0"]) == [
        "k8s-w0: tunnel device vxlan.calico is missing (VXLAN Always)"]
    # the case: the pool switched to VXLAN, the BGP routes went, nothing replaced them
    assert dataplane_problems("k8s-w0", NODES, vx, BLOCKS, [KernelRoute("172.30.8.0/24", None, "eth0")],
                              ["eth0"]) == [
        "k8s-w0: tunnel device vxlan.calico is missing (VXLAN Always)",
        "k8s-w0: no route to 192.168.0.0/24 (k8s-m's block, VXLAN Always)",
        "k8s-w0: no route to 192.168.2.0/24 (k8s-w1's block, VXLAN Always)"]
    # routes still through tunl0 after the switch: wrong device, named with what is needed
    old = [KernelRoute("192.168.0.0/24", "172.30.8.10", "tunl0"), KernelRoute("192.168.2.0/24", "172.30.9.11", "tunl0")]
    got = dataplane_problems("k8s-w0", NODES, vx, BLOCKS, old, links)
    assert got[0] == ("k8s-w0: 192.168.0.0/24 (k8s-m's block) goes via 172.30.8.10 dev tunl0; VXLAN Always "
                      "needs via 192.168.0.2 dev vxlan.calico onlink")
    # a blackhole does not cover a remote block; no tunnel address is named as such
    ipip = {"192.168.0.0/16": Mode("Always")}
    nodes = {**NODES, "k8s-w0": NodeInfo("k8s-w0", "172.30.8.11/24")}
    got = dataplane_problems("k8s-w0", nodes, ipip, BLOCKS, [KernelRoute("192.168.0.0/24", blackhole=True)], links)
    assert got[0] == "k8s-w0: no IPIP tunnel address (spec.bgp.ipv4IPIPTunnelAddr) for IPIP Always"
    assert got[1] == "k8s-w0: no route to 192.168.0.0/24 (k8s-m's block, IPIP Always)"


def test_no_encapsulation_needs_no_device_and_refuses_tunnel_routes():
    plain = {"192.168.0.0/16": Mode()}
    ok = [KernelRoute("192.168.0.0/24", "172.30.8.10", "eth0"), KernelRoute("192.168.2.0/24", "172.30.8.1", "eth0")]
    got = dataplane_problems("k8s-w0", NODES, plain, BLOCKS, ok, ["eth0"])
    assert got == ["k8s-w0: 192.168.2.0/24 (k8s-w1's block) goes via 172.30.8.1 dev eth0; no encapsulation "
                   "needs via 172.30.9.11 dev <uplink> proto bird"]


def test_a_node_read_through_the_kernel_layer():
    from kernel import RTN_BLACKHOLE, Route, Vxlan
    from kernel.fake import FakeKernel
    from testbed.lab.dataplane import read_kernel

    k = FakeKernel("k8s-w0")
    k.add_link("eth0", cidr="172.30.8.11/24")
    vx = k.link_add(Vxlan("vxlan.calico", vni=4096, dev=k.index("eth0")))
    k.link_set(vx.index, up=True)
    k.route_add(Route("192.168.0.0/24", oif=vx.index, gateway="192.168.0.2", onlink=True))
    k.route_add(Route("192.168.1.0/24", type=RTN_BLACKHOLE, protocol=80))
    k.route_add(Route("192.168.2.0/24", oif=vx.index, gateway="192.168.2.2", onlink=True))
    routes, links = read_kernel(k)
    assert KernelRoute("192.168.1.0/24", blackhole=True) in routes
    vx_mode = {"192.168.0.0/16": Mode(vxlan="Always")}
    assert dataplane_problems("k8s-w0", NODES, vx_mode, BLOCKS, routes, links) == []
