"""A hostNetwork DaemonSet (how calico.yaml installs calico-node) runs on a node that is
still NotReady, with env from fieldRef and configMapKeyRef."""

from __future__ import annotations

import pytest

from testbed.poll import wait_for
from tests.netns.kubelet_support import KubeletProcess
from tests.support import require_root, require_tool, unique

pytestmark = pytest.mark.netns

MANIFEST = """
apiVersion: v1
kind: ConfigMap
metadata: {name: agent-config, namespace: kube-system}
data: {backend: bird}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: kube-system}
spec:
  selector: {matchLabels: {k8s-app: agent}}
  template:
    metadata: {labels: {k8s-app: agent}}
    spec:
      hostNetwork: true
      tolerations: [{operator: Exists}]
      containers:
      - name: agent
        image: busybox
        command: [sh, -c, 'echo node=$NODENAME ip=$HOST_IP backend=$BACKEND; sleep 600']
        env:
        - name: NODENAME
          valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
        - name: HOST_IP
          valueFrom: {fieldRef: {fieldPath: status.hostIP}}
        - name: BACKEND
          valueFrom: {configMapKeyRef: {name: agent-config, key: backend}}
"""


def test_hostnetwork_daemonset_runs_before_the_network_is_ready(node_cluster, tmp_path):
    require_root()
    require_tool("nsenter")
    cluster = node_cluster("k8d", "172.31.253.1", controllers=True)
    client = cluster.client()
    node = unique("cp-")
    kubelet = KubeletProcess(cluster.netns, node, "172.31.253.1", cluster.kubelet_conf(node), str(tmp_path),
                             control_plane=True)
    try:
        wait_for(lambda: [n["metadata"]["name"] for n in client.list("v1", "nodes")["items"]],
                 lambda names: node in names, timeout=15, what="node registered")
        res = cluster.kubectl("apply", "-f", "-", input=MANIFEST)
        assert res.stdout.splitlines() == ["configmap/agent-config created", "daemonset.apps/agent created"], res
        pod = wait_for(lambda: client.list("v1", "pods", "kube-system", label_selector="k8s-app=agent")["items"],
                       lambda ps: len(ps) == 1 and ps[0]["status"].get("phase") == "Running", timeout=20,
                       what="the daemonset's pod Running")[0]
        assert pod["spec"]["nodeName"] == node and pod["status"]["podIP"] == "172.31.253.1"
        tolerated = {(t.get("key"), t.get("effect")) for t in pod["spec"]["tolerations"]}
        assert ("node.kubernetes.io/not-ready", "NoExecute") in tolerated  # added by the DaemonSet controller
        ready = next(c for c in client.get("v1", "nodes", node)["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "False"  # no CNI config: the network is not ready, the daemon runs anyway
        logs = wait_for(lambda: cluster.kubectl("logs", "-n", "kube-system", pod["metadata"]["name"]).stdout,
                        lambda out: "node=" in out, timeout=10, what="the daemon's output")
        assert logs.strip() == f"node={node} ip=172.31.253.1 backend=bird"
        table = wait_for(lambda: cluster.kubectl("get", "ds", "-n", "kube-system").stdout.splitlines(),
                         lambda t: len(t) == 2 and t[1].split()[1:6] == ["1", "1", "1", "1", "1"], timeout=10,
                         what="the DaemonSet's status counted")
        assert table[0].split()[:6] == ["NAME", "DESIRED", "CURRENT", "READY", "UP-TO-DATE", "AVAILABLE"]
        events = client.list("v1", "events", "kube-system", field_selector="involvedObject.name=agent")["items"]
        assert [(e["reason"], e["source"]["component"]) for e in events] == [
            ("SuccessfulCreate", "daemonset-controller")], events
    finally:
        kubelet.stop()
