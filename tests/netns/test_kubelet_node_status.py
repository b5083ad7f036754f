"""The Node's Ready condition converges even when the write that should flip it fails:
the API server is unreachable from the node at the moment the CNI config appears, and once
it answers again the kubelet writes Ready (retry plus its periodic node status sync)."""

from __future__ import annotations

import os

import pytest

from testbed.poll import wait_for
from tests.netns.kubelet_support import KubeletProcess, bridge_conflist
from tests.support import require, require_root, require_tool, unique

pytestmark = pytest.mark.netns


def ready_status(cluster, node: str) -> str | None:
    from kubeclient import NotFound

    try:
        n = cluster.client().get("v1", "nodes", node)
    except NotFound:
        return None
    for c in ((n or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status")
    return None


@pytest.fixture
def node(request, node_cluster, tmp_path):
    require_root()
    require_tool("nsenter")
    require(os.path.exists("/usr/lib/cni/bridge"), "needs containernetworking-plugins in /usr/lib/cni")
    cluster = node_cluster("k8s", "172.31.251.1")
    extra = getattr(request, "param", None)
    name = unique("node-")
    kubelet = KubeletProcess(cluster.netns, name, "172.31.251.1", cluster.kubelet_conf(name), str(tmp_path),
                             extra=extra)
    try:
        yield kubelet, cluster.kubelet_relay, cluster
    finally:
        kubelet.stop()


def test_node_becomes_ready_after_the_ready_write_failed(node, tmp_path):
    kubelet, relay, cluster = node
    wait_for(lambda: ready_status(cluster, kubelet.node), lambda s: s == "False", timeout=15,
             what="node registered NotReady (no CNI config yet)")
    wait_for(kubelet.logs, lambda text: "kubelet running" in text, timeout=15, what="the kubelet's main loop")

    relay.set_cut(True)  # the API server unreachable from the node ...
    kubelet.write_conflist(bridge_conflist("testnet", unique("cnb"), "10.244.9.0/24", str(tmp_path / "ipam")))
    # ... while the kubelet notices the config and tries to mark the node Ready
    wait_for(kubelet.logs, lambda text: "Ready=True not written" in text, timeout=15,
             what="the kubelet's failed attempt to write Ready=True")
    assert ready_status(cluster, kubelet.node) == "False"

    relay.set_cut(False)
    wait_for(lambda: ready_status(cluster, kubelet.node), lambda s: s == "True", timeout=10,
             what="node Ready once the API server answers again")
    assert "network ready" in kubelet.logs()


@pytest.mark.parametrize("node", [["--node-status-update-frequency", "1s"]], indirect=True)
def test_node_status_sync_puts_back_a_ready_condition_changed_behind_its_back(node, tmp_path):
    """The periodic sync (nodeStatusUpdateFrequency) corrects a Node whose Ready
    condition someone else overwrote; the kubelet did not see any change of its own."""
    kubelet, _relay, cluster = node
    kubelet.write_conflist(bridge_conflist("testnet", unique("cnb"), "10.244.10.0/24", str(tmp_path / "ipam")))
    wait_for(lambda: ready_status(cluster, kubelet.node), lambda s: s == "True", timeout=15, what="node Ready")

    def flip(n: dict) -> None:
        for c in n["status"]["conditions"]:
            if c["type"] == "Ready":
                c.update(status="Unknown", reason="NodeStatusUnknown", message="Kubelet stopped posting node status.")

    client = cluster.client()
    n = client.get("v1", "nodes", kubelet.node)
    flip(n)
    client.replace(n, sub="status")
    wait_for(lambda: ready_status(cluster, kubelet.node), lambda s: s == "True", timeout=15,
             what="the kubelet's node status sync to write Ready=True again")
