"""IPIP CrossSubnet (issue 14) on ``topologies/crosssubnet.yaml``: two node subnets joined by a
router. The walkthrough's four flows pass, asserted on their pcaps: k8s-w0 -> k8s-w1 crosses
the router, so it is IPIP; pod traffic inside lan0 (k8s-w0 -> k8s-m) is plainly routed, and
the BGP routes say so (``via <node> dev eth0 proto bird`` inside the subnet, ``dev tunl0
onlink`` across it). The MTU check across the router (tunl0's 1480)."""

from __future__ import annotations

import pytest

from tests.lab.modes_support import check_crosssubnet_flows, check_mtu, mode_lab, wait_healthy

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def wt(request):
    with mode_lab(request, "mxi", "crosssubnet") as w:
        yield w


def test_ipip_crosssubnet_four_flows_and_same_subnet_routed(wt):
    assert wt.mode.name == "IPIP CrossSubnet"
    routes = wt.in_node("k8s-w0", "ip", "route")
    assert f"via {wt.nodes['k8s-m']['address']} dev eth0 proto bird" in routes, routes
    assert f"via {wt.nodes['k8s-w1']['address']} dev tunl0 proto bird onlink" in routes, routes
    wait_healthy(wt)
    check_crosssubnet_flows(wt, "crosssubnet", cross_node="IPIP 172.30.8.11 > 172.30.9.11")


def test_ipip_crosssubnet_mtu_across_the_router(wt):
    # k8s-w0 -> k8s-w1 crosses the router, so the path is tunl0's (host MTU - 20): a DF packet at
    # the pod MTU passes, one byte more fails in the pod (its eth0 is 1480 as well)
    assert wt.in_node("k8s-w0", "cat", "/var/lib/calico/mtu").strip() == "1480"
    check_mtu(wt, "tunl0", 1480, 1480, 1452)
