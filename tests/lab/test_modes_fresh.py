"""Labs started in a mode (issue 14), as a user starts them with ``--topology``: VXLAN Always
without BGP (``topologies/vxlan.yaml``, calico_backend vxlan as calico-vxlan.yaml) and no
encapsulation with BGP (``topologies/noencap.yaml``). On each: the routes the mode puts in
the nodes, the walkthrough's four flows asserted on their pcaps, the MTU check and
``calicolab status`` healthy. One lab at a time (each module-scoped fixture is torn down
before the next is made: the tests are grouped by lab)."""

from __future__ import annotations

import pytest

from tests.lab.modes_support import check_mtu, four_flows, mode_lab, status, wait_healthy

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module", params=["vxlan", "noencap"])
def wt(request):
    with mode_lab(request, "mf" + request.param[0], request.param) as w:
        yield w


def test_four_flows_routes_and_mtu_in_the_topologys_mode(wt):
    node_ip = {n: wt.nodes[n]["address"] for n in ("k8s-m", "k8s-w0", "k8s-w1")}
    info = wait_healthy(wt)
    routes = wt.in_node("k8s-w0", "ip", "route")
    mtu_file = wt.in_node("k8s-w0", "cat", "/var/lib/calico/mtu").strip()
    if wt.mode.name == "VXLAN Always":
        # calico-vxlan.yaml: no BGP speaker; Felix routes every remote block over vxlan.calico
        assert all(n.get("bgp") is None and n["encap"] == "vxlan" for n in info["nodes"]), info["nodes"]
        assert "proto bird" not in routes and "dev tunl0" not in routes, routes
        for other in ("k8s-m", "k8s-w1"):
            assert f"via {wt.nodes[other]['vxlan_tunnel']} dev vxlan.calico onlink" in routes, routes
        assert "blackhole " in routes and " proto 80" in routes, routes  # its own block
        link = wt.in_node("k8s-w0", "ip", "-d", "link", "show", "vxlan.calico")
        for word in ("mtu 1450", "vxlan id 4096", f"local {node_ip['k8s-w0']}", "dstport 4789", "nolearning"):
            assert word in link, (word, link)
        assert wt.vtep_mac("k8s-w0") in link, link
        fdb = wt.in_node("k8s-w0", "bridge", "fdb", "show", "dev", "vxlan.calico")
        for other in ("k8s-m", "k8s-w1"):
            assert f"{wt.vtep_mac(other)} dst {node_ip[other]} self permanent" in fdb, fdb
        assert mtu_file == "1450"
        expect = (f"VXLAN {node_ip['k8s-w0']} > {node_ip['k8s-w1']}:4789 vni 4096, "
                  f"ether {wt.vtep_mac('k8s-w0')} > {wt.vtep_mac('k8s-w1')}")
        mtu = ("vxlan.calico", 1450, 1450, 1422)
    else:
        assert wt.mode.name == "no encapsulation", wt.mode.name
        # BGP routes every remote block via the owning node on eth0; no tunnel device in use.
        # Without a tunnel address a node owns a block only once it runs a pod.
        blocks = wt.block_affinities()
        assert blocks.get("k8s-w1"), blocks
        for other in ("k8s-m", "k8s-w1"):
            for cidr in blocks.get(other, []):
                assert f"{cidr} via {node_ip[other]} dev eth0 proto bird" in routes, routes
        assert "dev tunl0" not in routes and "vxlan.calico" not in routes, routes
        assert wt.in_node("k8s-w0", "ip", "-o", "link", "show", "vxlan.calico", check=False).strip() == ""
        assert "inet " not in wt.in_node("k8s-w0", "ip", "-4", "-o", "addr", "show", "dev", "tunl0", check=False)
        assert mtu_file == "1500"
        expect = "plainly routed "
        mtu = ("eth0", 1500, 1500, 1472)
    flows = four_flows(wt, wt.topology.stem)
    checks = next(f for f in flows if f.name == "cross-node").checks
    assert any(c.startswith(expect) for c in checks), (expect, checks)
    check_mtu(wt, *mtu)  # a DF packet at the pod MTU passes, one byte more fails
    code, doc = status(wt)
    assert code == 0 and doc["health"]["state"] == "healthy", doc
