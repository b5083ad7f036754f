"""BGPService end to end: datastore (real etcd) -> confd -> speakers in namespaces ->
kernel routes, control socket and `calicoctl node status` view."""

from __future__ import annotations

import re
import sys

import pytest

from agent.bgp import ctl
from agent.bgp.service import BGPService
from agent.bgp.status import render_node_status
from testbed.poll import wait_for
from tests.netns.test_bgp_mesh import FAST, NetLab, bird_routes
from tests.support import require_root, require_tool, sh

pytestmark = pytest.mark.netns


@pytest.fixture
def cluster(tmp_path, ds_client):
    require_root()
    from datastore.resources import BlockAffinity, IPPool, Metadata, Node, NodeBGPSpec

    lab = NetLab("172.31.1.0/24")
    services: list[BGPService] = []
    names = ["k8s-m", "k8s-w0", "k8s-w1"]
    ds_client.create(IPPool(metadata=Metadata(name="default-ipv4-ippool"),
                            spec=IPPool.Spec(cidr="192.168.0.0/16", block_size=26,
                                             ipip_mode="Always", nat_outgoing=True)))
    for i, name in enumerate(names):
        ns, addr = lab.add_node()
        ds_client.create(Node(metadata=Metadata(name=name),
                              spec=Node.Spec(bgp=NodeBGPSpec(ipv4_address=f"{addr}/24"))))
        ds_client.create(BlockAffinity(metadata=Metadata(name=f"{name}-192-168-{i}-0-26"),
                                       spec=BlockAffinity.Spec(node=name, cidr=f"192.168.{i}.0/26",
                                                               state="confirmed")))
        svc = BGPService(ds_client, name, ctl_path=str(tmp_path / f"{name}.ctl"), timers=FAST,
                         netns=ns)
        services.append(svc)
    lab.services = services
    lab.names = names
    try:
        for s in services:
            s.start()
        yield lab
    finally:
        for s in services:
            try:
                s.stop()
            except Exception:  # noqa: BLE001 - teardown goes on
                pass
        lab.close()


def routes_for(lab, i, blocks):
    out = {f"blackhole 192.168.{i}.0/26 proto bird"}
    for j, (_ns, a) in enumerate(lab.nodes):
        if j != i and j in blocks:
            out.add(f"192.168.{j}.0/26 via {a} dev tunl0 proto bird onlink")
    return {r.replace(" proto bird", "") for r in out}


def test_datastore_to_kernel_routes_and_node_status(cluster, tmp_path, ds_client):
    from datastore.resources import BlockAffinity, Metadata

    lab = cluster
    for i, (ns, _a) in enumerate(lab.nodes):
        wait_for(lambda ns=ns: bird_routes(ns), lambda r, i=i: r == routes_for(lab, i, {0, 1, 2}),
                 timeout=10, what=f"routes on {lab.names[i]}")
    sock = str(tmp_path / "k8s-w0.ctl")
    text = ctl.query(sock, "show protocols")
    status = render_node_status(text)
    assert status.startswith("Calico process is running.\n\nIPv4 BGP status\n")
    for _ns, a in lab.nodes[::2]:
        assert re.search(rf"\| {a} +\| node-to-node mesh \| up +\| [0-9:]{{8}} \| Established \|",
                         status), status
    assert status.count("Established") == 2
    since = {p["name"]: p["since"] for p in lab.services[1].status()["peers"]}

    # a newly claimed block reaches the other nodes; sessions are not reset by it
    ds_client.create(BlockAffinity(metadata=Metadata(name="k8s-w0-192-168-50-0-26"),
                                   spec=BlockAffinity.Spec(node="k8s-w0", cidr="192.168.50.0/26",
                                                           state="confirmed")))
    w0 = lab.nodes[1][1]
    wait_for(lambda: bird_routes(lab.nodes[2][0]),
             lambda r: f"192.168.50.0/26 via {w0} dev tunl0 onlink" in r, timeout=5,
             what="new block on k8s-w1")
    assert {p["name"]: p["since"] for p in lab.services[1].status()["peers"]} == since

    # the birdc-like CLI answers too
    out = sh(sys.executable, "-m", "agent.bgp.ctl", "-s", sock, "show", "route")
    assert "192.168.50.0/26" in out and "blackhole" in out
    # and so does BIRD's own client: the socket speaks BIRD's protocol
    birdc = require_tool("birdc")
    out = sh(birdc, "-s", sock, "show", "protocols")
    assert re.search(r"Mesh_172_31_1_10\s+BGP\s+master\s+up\s+\S+\s+Established", out), out
    cfg = ctl.query(sock, "show config")
    assert "protocol bgp Mesh_172_31_1_10 from bgp_template {" in cfg
    assert "route 192.168.50.0/26 blackhole;" in cfg
    with pytest.raises(ctl.CtlError, match="unknown command"):
        ctl.query(sock, "show nonsense")

    # a BGPPeer confd cannot use: the error is reported, the running config stays whole
    from datastore.resources import BGPPeer
    ds_client.create(BGPPeer(metadata=Metadata(name="bad"), spec=BGPPeer.Spec(
        peer_ip="172.31.1.99", as_number=64512, keepalive_time="ten")))
    wait_for(lambda: lab.services[1].status()["config_error"], lambda e: "invalid duration" in e,
             timeout=5, what="confd's error in the status")
    st = lab.services[1].status()
    assert st["established"] == 2 and len(st["peers"]) == 2
    ds_client.delete("BGPPeer", "bad")
    wait_for(lambda: lab.services[1].status()["config_error"], lambda e: e == "", timeout=5,
             what="error cleared")

    # mesh off: sessions go away and remote routes are withdrawn
    from datastore.resources import BGPConfiguration
    ds_client.create(BGPConfiguration(metadata=Metadata(name="default"),
                                      spec=BGPConfiguration.Spec(node_to_node_mesh_enabled=False)))
    wait_for(lambda: bird_routes(lab.nodes[0][0]), lambda r: r == routes_for(lab, 0, {0}),
             timeout=5, what="routes withdrawn after mesh off")
    assert "No IPv4 peers found." in render_node_status(ctl.query(sock, "show protocols"))
    assert lab.services[0].status()["synced"]
