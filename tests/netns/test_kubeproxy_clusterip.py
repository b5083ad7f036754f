"""kube-proxy in a real node netns: a ClusterIP is DNATed to the Service's pods, balanced at
random over both, and the rules follow the Service (removed with it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from testbed.k8s.store import Store
from testbed.poll import wait_for
from tests.netns.kubelet_support import KubeletProcess, NetnsRelay, ptp_conflist
from tests.support import require, require_root, require_tool, unique

pytestmark = pytest.mark.netns


def kubectl(endpoints: list[str], *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ETCD_ENDPOINTS=",".join(endpoints))
    return subprocess.run([sys.executable, "-m", "testbed.kubectl", *args], capture_output=True, text=True,
                          env=env, timeout=30)


@pytest.fixture
def cluster(netns, etcd_endpoints, tmp_path):
    """A control-plane node (kubelet + kube-proxy + controllers) with routed pod links."""
    require_root()
    require_tool("iptables-restore")
    require_tool("curl")
    require(os.path.exists("/usr/lib/cni/ptp"), "needs containernetworking-plugins in /usr/lib/cni")
    ns = netns("k8p")
    host, port = etcd_endpoints[0].removeprefix("http://").split(":")
    relay = NetnsRelay(ns, (host, int(port)))
    store = Store.from_endpoints(etcd_endpoints)
    name = unique("cp-")
    kubelet = KubeletProcess(ns, name, "172.31.251.1", relay.endpoint, str(tmp_path), controllers=True)
    kubelet.write_conflist(ptp_conflist("podnet", "10.244.9.0/24", str(tmp_path / "ipam")))
    try:
        yield kubelet, store, ns
    finally:
        kubelet.stop()
        relay.close()


def test_cluster_ip_is_dnat_balanced_across_endpoints(cluster, etcd_endpoints):
    kubelet, store, ns = cluster
    wait_for(lambda: store.find("Node", kubelet.node, None), lambda n: n is not None, timeout=15,
             what="node registered")
    manifest = f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      nodeName: {kubelet.node}
      containers: [{{name: nginx, image: nginx, ports: [{{containerPort: 80, name: http}}]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  nodeName: {kubelet.node}
  containers: [{{name: box, image: busybox}}]
"""
    env = dict(os.environ, ETCD_ENDPOINTS=",".join(etcd_endpoints))
    res = subprocess.run([sys.executable, "-m", "testbed.kubectl", "apply", "-f", "-"], input=manifest,
                         capture_output=True, text=True, env=env, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["deployment.apps/web created", "pod/client created"]
    res = kubectl(etcd_endpoints, "expose", "deployment", "web", "--port", "8080", "--target-port", "http")
    assert res.stdout.strip() == "service/web exposed", res
    svc = store.get("Service", "web")
    cip = svc["spec"]["clusterIP"]

    pods = wait_for(lambda: [p for p in store.list("Pod") if p["status"].get("phase") == "Running"],
                    lambda ps: len(ps) == 3, timeout=20, what="3 pods Running")
    web_ips = sorted(p["status"]["podIP"] for p in pods if p["metadata"]["name"].startswith("web-"))
    ep = wait_for(lambda: store.find("Endpoints", "web"),
                  lambda e: e and len((e.get("subsets") or [{}])[0].get("addresses") or []) == 2, timeout=10,
                  what="Endpoints with both pods")
    assert sorted(a["ip"] for a in ep["subsets"][0]["addresses"]) == web_ips
    assert ep["subsets"][0]["ports"] == [{"port": 80, "protocol": "TCP"}]

    def nat() -> str:
        return subprocess.run(["ip", "netns", "exec", ns, "iptables-save", "-t", "nat"], capture_output=True,
                              text=True).stdout

    rules = wait_for(nat, lambda t: t.count("-j DNAT") == 2, timeout=10, what="two DNAT rules")
    assert f"-A KUBE-SERVICES -d {cip}/32 -p tcp" in rules
    assert "-m statistic --mode random --probability 0.50000000000" in rules
    for ip in web_ips:
        assert f"--to-destination {ip}:80" in rules
    assert "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES" in rules
    assert "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES" in rules

    # from the client pod, through the ClusterIP, both backends answer (retrying: the machine may be busy)
    seen: set[str] = set()

    def backends_seen() -> set:
        out = kubectl(etcd_endpoints, "exec", "client", "--", "curl", "-s", "--max-time", "3",
                      f"http://{cip}:8080/")
        seen.update({line.split("calicolab pod ")[1].split(".")[0] for line in out.stdout.splitlines()
                     if "calicolab pod" in line})
        return set(seen)

    wait_for(backends_seen, lambda s: len(s) == 2, timeout=30, what="both backends behind the ClusterIP")
    assert all(s.startswith("web-") for s in seen), seen

    # the Service goes: its chains go; the ClusterIP no longer answers
    res = kubectl(etcd_endpoints, "delete", "service", "web")
    assert res.returncode == 0, res
    wait_for(nat, lambda t: "KUBE-SVC-" not in t and "KUBE-SEP-" not in t, timeout=10,
             what="service chains removed")
