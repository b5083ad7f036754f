"""kube-proxy in a real node netns: a ClusterIP is DNATed to the Service's pods, balanced at
random over both, and the rules follow the Service (removed with it)."""

from __future__ import annotations

import os
import subprocess

import pytest

from kubeclient import NotFound
from testbed.poll import wait_for
from tests.netns.kubelet_support import KubeletProcess, ptp_conflist
from tests.support import require, require_root, require_tool, unique

pytestmark = pytest.mark.netns


@pytest.fixture
def cluster(node_cluster, tmp_path):
    """A control-plane node (kubelet, kube-proxy, controller-manager, scheduler) with routed pod links."""
    require_root()
    require_tool("iptables-restore")
    require_tool("curl")
    require(os.path.exists("/usr/lib/cni/ptp"), "needs containernetworking-plugins in /usr/lib/cni")
    c = node_cluster("k8p", "172.31.251.1", controllers=True, proxy=True, cluster_cidr="10.244.9.0/24")
    name = unique("cp-")
    kubelet = KubeletProcess(c.netns, name, "172.31.251.1", c.kubelet_conf(name), str(tmp_path))
    kubelet.write_conflist(ptp_conflist("podnet", "10.244.9.0/24", str(tmp_path / "ipam")))
    try:
        yield kubelet, c, c.netns
    finally:
        kubelet.stop()


def test_cluster_ip_is_dnat_balanced_across_endpoints(cluster):
    kubelet, c, ns = cluster
    client = c.client()
    wait_for(lambda: [n["metadata"]["name"] for n in client.list("v1", "nodes")["items"]],
             lambda names: kubelet.node in names, timeout=15, what="node registered")
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
    res = c.kubectl("apply", "-f", "-", input=manifest)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["deployment.apps/web created", "pod/client created"]
    res = c.kubectl("expose", "deployment", "web", "--port", "8080", "--target-port", "http")
    assert res.stdout.strip() == "service/web exposed", res
    svc = client.get("v1", "services", "web", "default")
    cip = svc["spec"]["clusterIP"]

    pods = wait_for(lambda: [p for p in client.list("v1", "pods", "default")["items"]
                             if (p.get("status") or {}).get("phase") == "Running"],
                    lambda ps: len(ps) == 3, timeout=20, what="3 pods Running")
    web_ips = sorted(p["status"]["podIP"] for p in pods if p["metadata"]["name"].startswith("web-"))

    def endpoints() -> dict | None:
        try:
            return client.get("v1", "endpoints", "web", "default")
        except NotFound:
            return None

    ep = wait_for(endpoints, lambda e: e and len((e.get("subsets") or [{}])[0].get("addresses") or []) == 2,
                  timeout=10, what="Endpoints with both pods")
    assert sorted(a["ip"] for a in ep["subsets"][0]["addresses"]) == web_ips
    assert ep["subsets"][0]["ports"] == [{"port": 80, "protocol": "TCP"}]
    # the EndpointSlice controller is its own loop, as in kube-controller-manager: its slice may
    # follow the Endpoints a moment later, so it is polled, and then must hold exactly both pods
    slices = wait_for(lambda: client.list("discovery.k8s.io/v1", "endpointslices", "default",
                                          label_selector="kubernetes.io/service-name=web")["items"],
                      lambda ss: len(ss) == 1 and len(ss[0].get("endpoints") or []) == 2,
                      timeout=10, what="one EndpointSlice with both pods")
    assert sorted(e["addresses"][0] for e in slices[0]["endpoints"]) == web_ips

    def nat() -> str:
        return subprocess.run(["ip", "netns", "exec", ns, "iptables-save", "-t", "nat"], capture_output=True,
                              text=True).stdout

    def web_dnat(text: str) -> int:
        return sum(1 for line in text.splitlines() if '"default/web"' in line and "-j DNAT" in line)

    rules = wait_for(nat, lambda t: web_dnat(t) == 2, timeout=10, what="two DNAT rules for web")
    # the API server's own Service (default/kubernetes 10.96.0.1:443) is DNATed too, as kube-proxy does
    assert "-d 10.96.0.1/32 -p tcp" in rules and "--to-destination 172.31.251.1:6443" in rules
    assert f"-A KUBE-SERVICES -d {cip}/32 -p tcp" in rules
    assert "-m statistic --mode random --probability 0.50000000000" in rules
    for ip in web_ips:
        assert f"--to-destination {ip}:80" in rules
    assert "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES" in rules
    assert "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES" in rules

    # from the client pod, through the ClusterIP, both backends answer (retrying: the machine may be busy)
    seen: set[str] = set()

    def backends_seen() -> set:
        out = c.kubectl("exec", "client", "--", "curl", "-s", "--max-time", "3", f"http://{cip}:8080/")
        seen.update({line.split("calicolab pod ")[1].split(".")[0] for line in out.stdout.splitlines()
                     if "calicolab pod" in line})
        return set(seen)

    wait_for(backends_seen, lambda s: len(s) == 2, timeout=30, what="both backends behind the ClusterIP")
    assert all(s.startswith("web-") for s in seen), seen

    # the Service goes: its chains go; the ClusterIP no longer answers
    res = c.kubectl("delete", "service", "web")
    assert res.returncode == 0, res
    wait_for(nat, lambda t: "default/web" not in t and web_dnat(t) == 0, timeout=10,
             what="the web service's chains removed")
