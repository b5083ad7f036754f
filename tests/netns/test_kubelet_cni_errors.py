"""A failing CNI plugin: the pod shows the runtime's error, the half-made sandbox is undone
(DEL through the chain), and the kubelet retries until the chain succeeds."""

from __future__ import annotations

import os

import pytest

from testbed.poll import wait_for
from tests.netns.kubelet_support import KubeletProcess, bridge_conflist
from tests.support import require, require_root, unique

pytestmark = pytest.mark.netns

FLAKY = """#!/bin/sh
# A real plugin executable: fails its first ADD, afterwards passes prevResult through.
log={log}
echo "$CNI_COMMAND $CNI_CONTAINERID" >> "$log"
if [ "$CNI_COMMAND" = ADD ] && [ ! -e "$log.failed" ]; then
    touch "$log.failed"
    echo '{{"cniVersion": "1.0.0", "code": 11, "msg": "datastore not ready, try again later"}}'
    exit 1
fi
if [ "$CNI_COMMAND" = ADD ]; then
    exec python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin)["prevResult"]))'
fi
"""


def test_failed_add_is_undone_reported_and_retried(node_cluster, tmp_path):
    require_root()
    require(os.path.exists("/usr/lib/cni/bridge"), "needs containernetworking-plugins in /usr/lib/cni")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "flaky.log"
    (bindir / "flaky").write_text(FLAKY.format(log=log))
    (bindir / "flaky").chmod(0o755)
    cluster = node_cluster("k8e", "172.31.254.1")
    client = cluster.client()
    node = unique("node-")
    kubelet = KubeletProcess(cluster.netns, node, "172.31.254.1", cluster.kubelet_conf(node), str(tmp_path / "k"),
                             bin_dirs=f"{bindir}:/usr/lib/cni")
    try:
        conf = bridge_conflist("testnet", unique("cnb"), "10.244.6.0/24", str(tmp_path / "ipam"))
        conf["plugins"].append({"type": "flaky"})
        kubelet.write_conflist(conf)
        wait_for(lambda: client.list("v1", "nodes")["items"], lambda ns: any(n["metadata"]["name"] == node for n in ns),
                 timeout=15, what="node registered")
        client.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
                       "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx"}]}}, "default")
        failed = wait_for(lambda: client.get("v1", "pods", "web", "default")["status"], lambda st: st.get("message"),
                          timeout=15, what="the sandbox error on the pod")
        assert failed["message"].startswith("Failed to create pod sandbox:")
        assert 'type="flaky"' in failed["message"] and "try again later" in failed["message"]
        assert failed["containerStatuses"][0]["state"]["waiting"]["reason"] == "ContainerCreating"
        running = wait_for(lambda: client.get("v1", "pods", "web", "default")["status"],
                           lambda st: st.get("phase") == "Running", timeout=20, what="the pod Running after the retry")
        assert "message" not in running
        calls = log.read_text().split()
        first_id = calls[1]
        # first try: ADD failed, DEL ran through the chain for that sandbox; then a new sandbox's ADD
        assert calls[:4] == ["ADD", first_id, "DEL", first_id] and calls[4] == "ADD" and calls[5] != first_id
        # the bridge plugin's DEL released the first IP: only the pod's address is allocated
        ips = [f for f in os.listdir(tmp_path / "ipam" / "testnet") if f[0].isdigit()]
        assert ips == [running["podIP"]]
        assert len(kubelet.in_mount_ns("ls", kubelet.netns_dir).stdout.split()) == 1
        events = client.list("v1", "events", "default", field_selector="involvedObject.name=web")["items"]
        assert any(e["reason"] == "FailedCreatePodSandBox" and e["type"] == "Warning" for e in events), events
    finally:
        kubelet.stop()
