"""VXLAN without BGP (issue 14) on ``topologies/crosssubnet-vxlan.yaml``: calico-node runs with
``calico_backend: vxlan`` (no BGP speaker), the pool is vxlanMode CrossSubnet, and Felix alone
routes the remote blocks from the IPAM blocks: over vxlan.calico across the router (k8s-w0 ->
k8s-w1), unencapsulated inside lan0 (``via <node> dev eth0 proto 80 onlink``). The
walkthrough's four flows pass, asserted on their pcaps (UDP 4789, VNI 4096, node addresses
outside, the VTEP MACs and pod addresses inside); the MTU check; the lab's status."""

from __future__ import annotations

import pytest

from tests.lab.modes_support import (
    check_crosssubnet_flows,
    check_mtu,
    mode_lab,
    status,
    wait_healthy,
)

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def wt(request):
    with mode_lab(request, "mxv", "crosssubnet-vxlan") as w:
        yield w


def test_vxlan_crosssubnet_without_bgp_four_flows(wt):
    assert wt.mode.name == "VXLAN CrossSubnet"
    info = wait_healthy(wt)
    assert all(n.get("bgp") is None and n["encap"] == "vxlan" for n in info["nodes"]), info["nodes"]
    assert "proto bird" not in wt.in_node("k8s-w0", "ip", "route")
    node_status = wt.in_node("k8s-w0", "calicoctl", "node", "status", check=False)
    assert node_status == "Calico process is running.\n\nThe BGP backend process (BIRD) is not running.\n\n", \
        node_status  # calicoctl, with calico_backend: vxlan
    routes = wt.in_node("k8s-w0", "ip", "route")
    assert f"via {wt.nodes['k8s-m']['address']} dev eth0 proto 80 onlink" in routes, routes
    assert f"via {wt.nodes['k8s-w1']['vxlan_tunnel']} dev vxlan.calico onlink" in routes, routes
    # same subnet: pod k8s-w0 -> pod k8s-m is routed unencapsulated by Felix
    check_crosssubnet_flows(wt, "vxlan-crosssubnet", cross_node="VXLAN 172.30.10.11 > 172.30.11.11:4789 vni 4096")
    code, _ = status(wt)
    assert code == 0


def test_vxlan_mtu_df_at_pod_mtu_passes_one_more_fails(wt):
    assert wt.in_node("k8s-w0", "cat", "/var/lib/calico/mtu").strip() == "1450"
    check_mtu(wt, "vxlan.calico", 1450, 1450, 1422)  # the pods were made in VXLAN mode: eth0 1450, as vxlan.calico
