"""A hostNetwork DaemonSet (how calico.yaml installs calico-node) runs on a node that is
still NotReady, with env from fieldRef and configMapKeyRef."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from testbed.k8s.store import Store
from testbed.poll import wait_for
from tests.netns.kubelet_support import KubeletProcess, NetnsRelay
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


def test_hostnetwork_daemonset_runs_before_the_network_is_ready(netns, etcd_endpoints, tmp_path):
    require_root()
    require_tool("nsenter")
    ns = netns("k8d")
    host, port = etcd_endpoints[0].removeprefix("http://").split(":")
    relay = NetnsRelay(ns, (host, int(port)))
    store = Store.from_endpoints(etcd_endpoints)
    node = unique("cp-")
    kubelet = KubeletProcess(ns, node, "172.31.253.1", relay.endpoint, str(tmp_path), controllers=True)
    env = dict(os.environ, ETCD_ENDPOINTS=",".join(etcd_endpoints))
    try:
        wait_for(lambda: store.find("Node", node, None), lambda n: n is not None, timeout=15, what="node registered")
        res = subprocess.run([sys.executable, "-m", "testbed.kubectl", "apply", "-f", "-"], input=MANIFEST,
                             capture_output=True, text=True, env=env, timeout=30)
        assert res.stdout.splitlines() == ["configmap/agent-config created", "daemonset.apps/agent created"], res
        pod = wait_for(lambda: store.list("Pod", "kube-system"),
                       lambda ps: len(ps) == 1 and ps[0]["status"].get("phase") == "Running", timeout=20,
                       what="the daemonset's pod Running")[0]
        assert pod["spec"]["nodeName"] == node and pod["status"]["podIP"] == "172.31.253.1"
        ready = next(c for c in store.get("Node", node, None)["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "False"  # no CNI config: the network is not ready, the daemon runs anyway
        logs = wait_for(lambda: subprocess.run([sys.executable, "-m", "testbed.kubectl", "logs", "-n", "kube-system",
                                                pod["metadata"]["name"]], capture_output=True, text=True,
                                               env=env).stdout,
                        lambda out: "node=" in out, timeout=10, what="the daemon's output")
        assert logs.strip() == f"node={node} ip=172.31.253.1 backend=bird"
        table = subprocess.run([sys.executable, "-m", "testbed.kubectl", "get", "ds", "-n", "kube-system"],
                               capture_output=True, text=True, env=env).stdout.splitlines()
        assert table[0].split()[:6] == ["NAME", "DESIRED", "CURRENT", "READY", "UP-TO-DATE", "AVAILABLE"]
    finally:
        kubelet.stop()
        relay.close()
