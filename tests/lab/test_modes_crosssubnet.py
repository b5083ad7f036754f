"""IPIP CrossSubnet (issue 14) on ``topologies/crosssubnet.yaml``: two node subnets joined by a
router. The walkthrough's four flows pass, asserted on their pcaps: k8s-w0 -> k8s-w1 crosses
the router, so it is IPIP; pod traffic inside lan0 (k8s-w0 -> k8s-m) is plainly routed, and
the BGP routes say so (``via <node> dev eth0 proto bird`` inside the subnet, ``dev tunl0
onlink`` across it). The MTU check across the router (tunl0's 1480)."""

from __future__ import annotations

import pytest

from testbed.walkthrough import Flow
from tests.lab.modes_support import add_pod, four_flows, mode_lab, wait_healthy

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
    m = add_pod(wt, "k8s-m", "k8s-m")
    flows = four_flows(wt, "crosssubnet", extra_nodes=("k8s-m",))
    checks = next(f for f in flows if f.name == "cross-node").checks
    assert any(c.startswith("IPIP 172.30.8.11 > 172.30.9.11") for c in checks), checks
    # same subnet: pod k8s-w0 -> pod k8s-m is routed as it is (the captures are still running)
    a = wt.pods["k8s-w0"]
    from testbed.capture.group import CaptureGroup
    from testbed.walkthrough import CAPTURE_IFACES

    wt.captures = CaptureGroup.for_lab(wt.lab, ["k8s-w0", "k8s-m"], run=f"{wt.run_name}-same-subnet",
                                       ifaces=CAPTURE_IFACES)
    with wt.captures:
        assert wt.curl(a, f"http://{m.ip}", "HTTP 200 from pod k8s-m") == "200"
    f = Flow("same-subnet", f"pod {a.name} -> pod {m.name}", "curl")
    wt.check_wire(f, "k8s-w0", "k8s-m", a, m, ("k8s-w0", "k8s-m"))
    assert f.checks[0].startswith("plainly routed"), f.checks


def test_ipip_crosssubnet_mtu_across_the_router(wt):
    # k8s-w0 -> k8s-w1 crosses the router, so the path is tunl0's (host MTU - 20): a DF packet at
    # the pod MTU passes, one byte more fails in the pod (its eth0 is 1480 as well)
    assert wt.in_node("k8s-w0", "cat", "/var/lib/calico/mtu").strip() == "1480"
    res = wt.mtu_probe()
    assert (res["device"], res["tunnel_mtu"], res["pod_mtu"], res["fits"]) == ("tunl0", 1480, 1480, 1452), res
    assert res["too_big_rc"] != 0, res
    assert "mtu=1480" in res["too_big_output"] or "mtu = 1480" in res["too_big_output"], res
