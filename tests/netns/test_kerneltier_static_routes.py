"""The kernel tier's ``routes="static"`` path (testbed.kerneltier.cluster.program_routes)
programs the BGP part's routes through agent.bgp.kernel.KernelRoutes in a real netns.

The kernel tier itself runs under qemu; here a veth named ``tunl0`` stands in for the
ipip device (this machine's kernel has no ipip), which is all an ``onlink`` route needs.
"""

from __future__ import annotations

import pytest

from testbed.kerneltier.cluster import ClusterError, program_routes
from tests.support import sh

pytestmark = pytest.mark.netns


def _tunl0(ns: str) -> None:
    sh("ip", "link", "add", "tunl0", "type", "veth", "peer", "name", "tunl0p", netns=ns)
    sh("ip", "link", "set", "tunl0", "up", netns=ns)
    sh("ip", "link", "set", "tunl0p", "up", netns=ns)


def test_static_routes_are_the_bgp_parts_kernel_routes(netns):
    ns = netns("ktr")
    _tunl0(ns)
    program_routes(ns, "192.168.1.0/26", [("192.168.2.0/26", "172.30.0.12"),
                                          ("192.168.3.0/26", "172.30.0.13")])
    routes = sh("ip", "route", "show", "proto", "bird", netns=ns).splitlines()
    assert sorted(r.strip() for r in routes) == [
        "192.168.2.0/26 via 172.30.0.12 dev tunl0 onlink",
        "192.168.3.0/26 via 172.30.0.13 dev tunl0 onlink",
        "blackhole 192.168.1.0/26",
    ]


def test_a_refused_route_is_a_cluster_error_naming_it(netns):
    ns = netns("ktr")
    _tunl0(ns)
    with pytest.raises(ClusterError, match=r"`192.168.2.0/26 via 172.30.0.12 dev tunl0 proto bird` refused"):
        program_routes(ns, "192.168.1.0/26", [("192.168.2.0/26", "172.30.0.12")], onlink=False)
    # the routes the kernel took stay; the refused one is not there
    assert "192.168.2.0/26" not in sh("ip", "route", netns=ns)
    assert "blackhole 192.168.1.0/26" in sh("ip", "route", netns=ns)


def test_a_missing_tunnel_device_is_a_cluster_error(netns):
    ns = netns("ktr")
    with pytest.raises(ClusterError, match="tunl0"):
        program_routes(ns, "192.168.1.0/26", [("192.168.2.0/26", "172.30.0.12")])
