"""A kubelet that crashes and comes back adopts its running pods (and runs their probes again)
and cleans up the pods deleted while it was away (CNI DEL, processes, sandbox netns)."""

from __future__ import annotations

import json
import os

import pytest

from kubeclient import NotFound
from testbed.k8s.runtime import alive
from testbed.poll import wait_for
from tests.netns.kubelet_support import KubeletProcess, bridge_conflist
from tests.support import require, require_root, require_tool, unique

pytestmark = pytest.mark.netns


@pytest.fixture
def node(node_cluster, tmp_path):
    require_root()
    require_tool("nsenter")
    require(os.path.exists("/usr/lib/cni/bridge"), "needs containernetworking-plugins in /usr/lib/cni")
    cluster = node_cluster("k8r", "172.31.252.1")
    name = unique("node-")
    kubelet = KubeletProcess(cluster.netns, name, "172.31.252.1", cluster.kubelet_conf(name), str(tmp_path))
    try:
        yield kubelet, cluster.client()
    finally:
        kubelet.stop()


def pod(client, name: str) -> dict | None:
    try:
        return client.get("v1", "pods", name, "default")
    except NotFound:
        return None


def ready(client, name: str) -> str | None:
    p = pod(client, name) or {}
    return next((c["status"] for c in (p.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), None)


def running(client, name: str) -> dict:
    return wait_for(lambda: pod(client, name), lambda p: p["status"].get("phase") == "Running", timeout=20,
                    what=f"pod {name} Running")


def test_restarted_kubelet_adopts_live_pods_and_cleans_deleted_ones(node, tmp_path):
    kubelet, client = node
    data_dir = tmp_path / "ipam"
    kubelet.write_conflist(bridge_conflist("testnet", unique("cnb"), "10.244.8.0/24", str(data_dir)))
    wait_for(lambda: [n["metadata"]["name"] for n in client.list("v1", "nodes")["items"]],
             lambda names: kubelet.node in names, timeout=15, what="node registered")
    for name in ("keep", "gone"):
        c = {"name": "c", "image": "nginx"}
        if name == "keep":  # readiness is a file in its working directory (busybox httpd's root)
            c["readinessProbe"] = {"exec": {"command": ["cat", "ready-flag"]}, "periodSeconds": 1}
        client.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                       "spec": {"nodeName": kubelet.node, "containers": [c]}}, "default")
    keep, gone = running(client, "keep"), running(client, "gone")
    keep_pid = json.loads(keep["metadata"]["annotations"]["calicolab.io/pids"])["c"]
    flag = f"/proc/{keep_pid}/cwd/ready-flag"
    assert ready(client, "keep") == "False"
    with open(flag, "w"):
        pass
    wait_for(lambda: ready(client, "keep"), lambda r: r == "True", timeout=20, what="keep Ready by its probe")
    gone_pid = json.loads(gone["metadata"]["annotations"]["calicolab.io/pids"])["c"]
    gone_ns = gone["metadata"]["annotations"]["calicolab.io/netns"]

    kubelet.kill()
    client.delete("v1", "pods", "gone", "default", grace_period=0)  # force-deleted while the kubelet is down
    assert alive(gone_pid) and (data_dir / "testnet" / gone["status"]["podIP"]).exists()
    kubelet.restart()

    wait_for(lambda: alive(gone_pid), lambda up: not up, timeout=20,
             what="the deleted pod's process to be killed")
    wait_for(lambda: (data_dir / "testnet" / gone["status"]["podIP"]).exists(), lambda e: not e, timeout=10,
             what="CNI DEL to release the deleted pod's IP")
    wait_for(lambda: kubelet.in_mount_ns("ls", kubelet.netns_dir).stdout.split(), lambda names: gone_ns not in names,
             timeout=10, what="the deleted pod's netns to be removed after its CNI DEL")
    # the surviving pod was adopted, not restarted
    assert alive(keep_pid)
    after = pod(client, "keep")
    assert after["status"]["podIP"] == keep["status"]["podIP"]
    assert json.loads(after["metadata"]["annotations"]["calicolab.io/pids"])["c"] == keep_pid
    # its readiness probe runs again in the restarted kubelet: Ready while the file is there
    # (after the restart's not-ready until the first success), not ready once it is gone
    wait_for(lambda: ready(client, "keep"), lambda r: r == "True", timeout=20, what="the adopted pod Ready")
    os.unlink(flag)
    wait_for(lambda: ready(client, "keep"), lambda r: r == "False", timeout=20,
             what="the adopted pod not Ready once its probe fails")
    # and the kubelet still manages it: delete tears it down
    client.delete("v1", "pods", "keep", "default")
    wait_for(lambda: pod(client, "keep"), lambda p: p is None, timeout=20, what="pod keep removed")
    assert not alive(keep_pid)  # (a zombie until init reaps it: its parent kubelet died)
    assert kubelet.in_mount_ns("ls", kubelet.netns_dir).stdout.split() == []
