"""The agent's kernel tunl0 path on the real ipip.ko, run INSIDE the qemu guest.

Collected only in the guest (``CALICOLAB_GUEST=1``, see tests/kernel/conftest.py); the host
tests in tests/kernel/test_kernel_tier.py report each of these from the guest's junit.xml and
assert on the pcaps they leave in the results share (``CALICOLAB_RESULTS``).

``CALICOLAB_KTIER_BREAK`` breaks the path on purpose, to prove these tests can fail:
``no-onlink`` makes the BGP part's next hops lose ``onlink``; ``tunnel-mtu`` gives tunl0 an MTU
100 bytes below host - 20 while pods keep the right one.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from testbed.kerneltier import cluster as kc
from testbed.kerneltier import flow
from tests.support import require

pytestmark = pytest.mark.kernel

UPLINK_MTU = 1500


def results_dir() -> Path:
    """The results share (read per call: testbed.kerneltier.guestrun reruns in one process)."""
    return Path(os.environ.get("CALICOLAB_RESULTS", "/tmp/results"))


@pytest.fixture(scope="module")
def cluster():
    """Three nodes with the agent's kernel tunl0, a BGP mesh (agent.bgp) programming the block
    routes, and one pod each."""
    from agent.felix.tunnel import kernel_has_ipip
    from kernel.netlink import Netlink

    with Netlink() as k:
        require(kernel_has_ipip(k), "this kernel cannot make ipip devices")
    brk = os.environ.get("CALICOLAB_KTIER_BREAK", "")
    if brk not in ("", "no-onlink", "tunnel-mtu"):
        raise ValueError(f"CALICOLAB_KTIER_BREAK={brk!r}: expected no-onlink or tunnel-mtu")
    c = kc.build(
        2 if brk else 3,  # a broken run only needs one cross-node pair: quicker under TCG
        datapath="kernel",
        uplink_mtu=UPLINK_MTU,
        tunnel_mtu=UPLINK_MTU - 20 - 100 if brk == "tunnel-mtu" else None,
        pod_mtu=UPLINK_MTU - 20,
        onlink=brk != "no-onlink",
    )
    yield c
    c.close()


def test_agent_auto_mode_loads_ipip_on_demand_and_picks_the_kernel(netns):
    """As on an ordinary VM: ipip.ko installed, not loaded. The agent's auto mode asks for an
    ipip device, the kernel loads the module (modprobe), and tunl0 is the kernel's.

    Runs first in this module, before anything else creates an ipip device.
    """
    from agent.felix import tunnel
    from kernel.netlink import Netlink

    require(not os.path.isdir("/sys/module/ipip"),
            "ipip is already loaded: this must run before any other ipip user")  # fmt: skip
    ns = netns("ktauto")
    with Netlink(ns) as k:  # a fresh handle, as a fresh agent process: it has not probed yet
        info = tunnel.ensure_tunl0(k, "192.168.77.0", 1480, mode="auto")
    assert os.path.isdir("/sys/module/ipip"), "the kernel did not load ipip on demand"
    assert info.kind == "kernel", info
    link = kc.run("ip", "-d", "link", "show", "tunl0", netns=ns)
    assert "ipip" in link and "mtu 1480" in link, link
    assert kc.run("ip", "-o", "-4", "addr", "show", "dev", "tunl0", netns=ns).split()[3] == (
        "192.168.77.0/32")  # fmt: skip


def test_tunl0_is_kernel_ipip_with_tunnel_address_and_mtu(cluster):
    """tunl0 is the ipip device, up, with the tunnel address as its only address (/32), MTU host-20."""
    state = flow.tunl0_state(cluster)
    for node, st in zip(cluster.nodes, state, strict=True):
        assert st["kind"] == "kernel", st
        assert st["addresses"] == [f"{node.tunnel_address}/32"], st
        assert st["mtu"] == UPLINK_MTU - 20, f"node {node.index}: tunl0 {st}"
        link = kc.run("ip", "-d", "link", "show", "tunl0", netns=node.netns)
        assert "ipip" in link and ",UP" in link, link


def test_block_routes_via_tunl0_proto_bird_onlink(cluster):
    """Every node routes every other node's block (learnt over BGP) via that node over tunl0."""
    for node in cluster.nodes:
        routes = kc.run("ip", "route", "show", "proto", "bird", netns=node.netns)
        lines = {" ".join(line.split()) for line in routes.splitlines()}
        assert f"blackhole {node.block}" in lines, routes
        for peer in cluster.nodes:
            if peer is not node:
                assert f"{peer.block} via {peer.address} dev tunl0 onlink" in lines, routes


def test_route_without_onlink_is_rejected(cluster):
    """The kernel refuses a tunl0 route whose gateway is not on link, unless it says onlink."""
    node, peer = cluster.node(1), cluster.node(2)
    res = subprocess.run(
        [kc.IP, "-n", node.netns, "route", "add", "192.168.99.0/26", "via", peer.address,
         "dev", "tunl0", "proto", "bird"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert res.returncode != 0, "the kernel accepted a tunl0 route without onlink"
    assert re.search(r"invalid gateway|unreachable", res.stderr, re.I), res.stderr


def test_pod_to_pod_across_kernel_tunnel(cluster):
    """pod-1 reaches pod-2 and pod-3 through the kernel tunnel; tunl0 counts the packets."""
    record = flow.cross_node_flow(cluster, results_dir() / "pcaps")
    flow.write(record, results_dir() / "flow-kernel.json")
    for ip, res in record["pings"].items():
        assert res["rc"] == 0 and res["loss_percent"] == 0, f"ping {ip}: {res['output']}"
    sent = (len(cluster.nodes) - 1) * flow.PING_COUNT
    assert record["tunl0_delta"][1]["tx"] >= sent, record["tunl0_delta"]
    assert record["tunl0_delta"][1]["rx"] >= sent, record["tunl0_delta"]
    for i in range(2, len(cluster.nodes) + 1):
        assert record["tunl0_delta"][i]["rx"] >= flow.PING_COUNT, record["tunl0_delta"]


def test_mtu_largest_df_ping_fits_and_one_more_fails(cluster):
    """DF ping of host-20-28 bytes passes; one byte more is refused (pod) or frag-needed (node)."""
    record = flow.mtu_behaviour(cluster, results_dir() / "pcaps")
    flow.write(record, results_dir() / "mtu-kernel.json")
    tunnel_mtu = UPLINK_MTU - 20
    pod, big = record["probes"]["pod"], record["probes"]["big_pod"]
    assert pod[0]["outcome"] == "ok", pod
    assert pod[1] == {"size": pod[1]["size"], "outcome": "local-mtu", "mtu": tunnel_mtu}, pod
    assert big[0]["outcome"] == "ok", big
    assert big[1]["outcome"] == "frag-needed" and big[1]["mtu"] == tunnel_mtu, big


def test_agent_tunl0_setup_repairs_drift(cluster):
    """ensure_tunl0 again on a drifted tunl0 (stray address, wrong MTU): back to its /32 + MTU."""
    node = cluster.node(3)
    kc.run("ip", "addr", "add", "10.99.0.1/24", "dev", "tunl0", netns=node.netns)
    kc.run("ip", "link", "set", "tunl0", "mtu", "1300", netns=node.netns)
    kc.kernel_tunl0(node.netns, node.tunnel_address, cluster.tunnel_mtu)
    st = flow.tunl0_state(cluster)[2]
    assert st == {"node": 3, "kind": "kernel", "mtu": cluster.tunnel_mtu,
                  "addresses": [f"{node.tunnel_address}/32"]}, st  # fmt: skip
    assert ",UP" in kc.run("ip", "link", "show", "tunl0", netns=node.netns)
    assert kc.expected_routes(cluster, node) <= kc.route_lines(node.netns)
    kc.wait_ping_ok(node.pods[0], cluster.node(1).pods[0].ip)
