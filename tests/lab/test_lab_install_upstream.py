"""The second seed's install, as its user did it, in the Kubernetes datastore: a cluster
without a CNI (``up --no-cni --datastore kubernetes``), Calico v3.28.1's own ``calico.yaml``
(testbed.k8s.upstream: the pinned file, never shipped), ``CALICO_IPV4POOL_BLOCK_SIZE`` set to
24 (the walkthrough's one edit; nothing else changed) and ``kubectl apply -f calico.yaml``
typed in a node shell. First the bad input of issue 15 (block size 99): calico-node in
CrashLoopBackOff with Calico's log line and nothing made; then the good file: the init
containers (upgrade-ipam, install-cni, mount-bpffs) complete, calico-node and
calico-kube-controllers run in kube-system, the nodes turn Ready, the pool is the kubeadm pod
network CIDR in /24 blocks, and pods on two workers talk. One 3-node lab for the module."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from testbed.lab import lifecycle as labmod
from testbed.lab import state as labstate
from testbed.poll import wait_for
from tests.lab.lab_helpers import leftovers
from tests.support import require_root, require_tool, unique, upstream_manifest

pytestmark = pytest.mark.lab

# the router gives the nodes a default route, as a real node has (the kubernetes Service's
# ClusterIP is reached through it by host-network pods)
TOPOLOGY = """\
name: {name}
segments:
  - {{name: lan0, cidr: 172.30.66.0/24}}
  - {{name: inet, cidr: 203.0.113.0/24}}
routers:
  - name: r0
    interfaces:
      - {{segment: lan0, address: 172.30.66.1}}
      - {{segment: inet, address: 203.0.113.1}}
nodes:
  - {{name: k8s-m, role: control-plane, address: 172.30.66.10, segment: lan0}}
  - {{name: k8s-w0, role: worker, address: 172.30.66.11, segment: lan0}}
  - {{name: k8s-w1, role: worker, address: 172.30.66.12, segment: lan0}}
calico:
  datastore: kubernetes
  pool: {{cidr: 192.168.0.0/16, blockSize: 24, ipipMode: Always, vxlanMode: Never, natOutgoing: true}}
"""
NODES = ("k8s-m", "k8s-w0", "k8s-w1")
#: the seed's edit, typed: the block size env var inserted before the commented-out pool CIDR
EDIT = ("sed 's|^            # - name: CALICO_IPV4POOL_CIDR|            - name: CALICO_IPV4POOL_BLOCK_SIZE\\n"
        "              value: \"{size}\"\\n&|' {src} > calico.yaml")
PODS = """\
apiVersion: v1
kind: Pod
metadata: {name: w0}
spec: {nodeName: k8s-w0, containers: [{name: nginx, image: nginx}]}
---
apiVersion: v1
kind: Pod
metadata: {name: w1}
spec: {nodeName: k8s-w1, containers: [{name: nginx, image: nginx}]}
"""


def cli(*args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "testbed.cli", *args], input=input, capture_output=True,
                          text=True, timeout=timeout, cwd=str(labstate.REPO))


class Lab:
    def __init__(self, name: str, workdir: Path, upstream: str):
        self.name, self.workdir, self.upstream = name, workdir, upstream

    def sh(self, line: str, node: str = "k8s-m", check: bool = True) -> str:
        """``line`` typed into a shell of ``node`` (in the user's working directory)."""
        r = cli("--lab", self.name, "exec", node, "--", "sh", "-c", f"cd {self.workdir} && {line}")
        if check:
            assert r.returncode == 0, f"{line!r} on {node} exited {r.returncode}: {r.stdout}{r.stderr}"
        return r.stdout

    def kube(self, *args: str) -> dict:
        return json.loads(self.sh("kubectl " + " ".join(args) + " -o json"))

    def calico_pods(self) -> list[dict]:
        return [p for p in self.kube("get", "pods", "-n", "kube-system")["items"]
                if p["metadata"]["name"].startswith("calico-")]


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    require_root()
    require_tool("etcd")
    require_tool("jq")
    src = upstream_manifest("calico.yaml")  # skips, saying why, on a machine without it
    name = unique("up")
    work = tmp_path_factory.mktemp("seed2")
    topo = work / f"{name}.yaml"
    topo.write_text(TOPOLOGY.format(name=name))
    st = None
    try:
        st = labmod.up(topo, no_cni=True, progress=lambda _m: None, ready_timeout=5, datastore="kubernetes")
        yield Lab(name, work, src)
    finally:
        labmod.down(name)
        if st is not None:
            assert leftovers(st) == []


def _diff(lab: Lab) -> list[str]:
    out = subprocess.run(["diff", lab.upstream, str(lab.workdir / "calico.yaml")], capture_output=True, text=True)
    return [ln for ln in out.stdout.splitlines() if ln[:1] in "<>"]


def test_bad_block_size_crash_loops_and_makes_nothing(lab):
    lab.sh(EDIT.format(size=99, src=lab.upstream))
    assert _diff(lab) == [">             - name: CALICO_IPV4POOL_BLOCK_SIZE", '>               value: "99"']
    out = lab.sh("kubectl apply -f calico.yaml")
    assert "daemonset.apps/calico-node created" in out and "deployment.apps/calico-kube-controllers created" in out

    def crashing() -> list[dict]:
        return [p for p in lab.calico_pods() if p["metadata"]["name"].startswith("calico-node-")]

    def crash_looping(pods: list[dict]) -> bool:
        statuses = [cs for p in pods for cs in (p.get("status") or {}).get("containerStatuses") or []]
        return len(pods) == 3 and len(statuses) == 3 and all(
            cs.get("restartCount", 0) >= 1 or (cs["state"].get("waiting") or {}).get("reason") == "CrashLoopBackOff"
            for cs in statuses)

    pods = wait_for(crashing, crash_looping, timeout=40, what="calico-node restarting on every node")
    # the current run's log, or the previous run's while a restarted one has not logged yet
    name = pods[0]["metadata"]["name"]
    wait_for(lambda: lab.sh(f"kubectl logs -n kube-system {name} -c calico-node; "
                            f"kubectl logs -n kube-system {name} -c calico-node --previous", check=False),
             lambda log: "Invalid blocksize 99 for version 4" in log, timeout=20,
             what="Calico's log line in calico-node's log")
    wait_for(lambda: lab.sh("kubectl get pods -n kube-system -l k8s-app=calico-node"),
             lambda table: "CrashLoopBackOff" in table, timeout=30, what="kubectl shows calico-node CrashLoopBackOff")
    # nothing half-made: no pool, no block, no tunnel address
    assert lab.kube("get", "ippools.crd.projectcalico.org")["items"] == []
    assert lab.kube("get", "ipamblocks.crd.projectcalico.org")["items"] == []
    nodes = lab.kube("get", "nodes")["items"]
    assert not any(k.startswith("projectcalico.org/IPv4IPIPTunnelAddr")
                   for n in nodes for k in (n["metadata"].get("annotations") or {})), nodes


def test_upstream_manifest_installs(lab):
    lab.sh(EDIT.format(size=24, src=lab.upstream))
    assert _diff(lab) == [">             - name: CALICO_IPV4POOL_BLOCK_SIZE", '>               value: "24"']
    out = lab.sh("kubectl apply -f calico.yaml")
    assert "daemonset.apps/calico-node configured" in out, out

    def settled(pods: list[dict]) -> bool:
        nodes = sorted(p["spec"].get("nodeName", "") for p in pods if p["metadata"]["name"].startswith("calico-node-"))
        kc = [p for p in pods if p["metadata"]["name"].startswith("calico-kube-controllers-")]
        return nodes == list(NODES) and len(kc) == 1 and all(
            (p.get("status") or {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
            and all(cs.get("ready") for cs in p["status"].get("containerStatuses") or [{}]) for p in pods)

    pods = wait_for(lab.calico_pods, settled, timeout=60, what="calico-node x3 and calico-kube-controllers Running")
    wait_for(lambda: lab.kube("get", "nodes")["items"],
             lambda ns: sorted((n["metadata"]["name"], next(c["status"] for c in n["status"]["conditions"]
                                                            if c["type"] == "Ready")) for n in ns)
             == [(n, "True") for n in NODES], timeout=30, what="every node Ready")
    table = lab.sh("kubectl get pods -n kube-system -o wide")
    for p in pods:
        assert [ln.split()[1:3] for ln in table.splitlines() if ln.startswith(p["metadata"]["name"])] == [
            ["1/1", "Running"]], table
    node_pod = next(p for p in pods if p["metadata"]["name"].startswith("calico-node-"))
    # the init containers did their job, in order, each Completed
    inits = node_pod["status"]["initContainerStatuses"]
    assert [(s["name"], s["state"]["terminated"]["reason"]) for s in inits] == [
        ("upgrade-ipam", "Completed"), ("install-cni", "Completed"), ("mount-bpffs", "Completed")]
    name = node_pod["metadata"]["name"]
    assert "no migration necessary" in lab.sh(f"kubectl logs -n kube-system {name} -c upgrade-ipam")
    assert "Done configuring CNI" in lab.sh(f"kubectl logs -n kube-system {name} -c install-cni")
    for node in NODES:  # install-cni wrote the conflist and the kubeconfig the kubelet's CNI calls use
        conf = json.loads(lab.sh("cat /etc/cni/net.d/10-calico.conflist", node=node))
        assert conf["plugins"][0]["datastore_type"] == "kubernetes" and conf["plugins"][0]["nodename"] == node
        assert lab.sh("test -s /etc/cni/net.d/calico-kubeconfig && ls -l /opt/cni/bin/calico", node=node)
    # the default pool: kubeadm's pod network CIDR (no CALICO_IPV4POOL_CIDR in the file), /24, IPIP Always
    pool = lab.kube("get", "ippools.crd.projectcalico.org", "default-ipv4-ippool")["spec"]
    assert (pool["cidr"], pool["blockSize"], pool["ipipMode"], pool["natOutgoing"]) == (
        "192.168.0.0/16", 24, "Always", True)
    # calico-node's start-up (ensureDefaultConfig) made FelixConfiguration default through Calico's
    # own CRD, whose enum patterns are Go regexps with (?i) after ^ (the API server refused it
    # with a 500 before: Python's re rejects that), and ClusterInformation default
    fc = yaml.safe_load(lab.sh("kubectl get felixconfiguration default -o yaml"))
    assert (fc["spec"].get("reportingInterval"), fc["spec"].get("logSeverityScreen")) == ("0s", "Info"), fc
    ci = yaml.safe_load(lab.sh("kubectl get clusterinformation default -o yaml"))["spec"]
    assert (ci["calicoVersion"], ci["clusterType"], ci["datastoreReady"]) == (
        "v3.28.1", "k8s,bgp,kubeadm,kdd", True), ci
    assert re.fullmatch(r"[0-9a-f]{32}", ci["clusterGUID"]), ci
    kc = next(p for p in pods if p["metadata"]["name"].startswith("calico-kube-controllers-"))
    assert kc["status"]["podIP"].startswith("192.168.")  # on the pod network, as upstream's Deployment

    # pods on two workers talk across nodes
    assert "pod/w0 created" in lab.sh(f"cat > pods.yaml <<'EOF'\n{PODS}EOF\nkubectl apply -f pods.yaml")
    ips = wait_for(lambda: {p["metadata"]["name"]: (p.get("status") or {}).get("podIP")
                            for p in lab.kube("get", "pods")["items"] if p["status"].get("phase") == "Running"},
                   lambda d: d.get("w0") and d.get("w1"), timeout=30, what="pods w0 and w1 Running")
    code = wait_for(lambda: lab.sh(f"kubectl exec w0 -- curl -o /dev/null -s -m 2 -w '%{{http_code}}' "
                                   f"http://{ips['w1']}", check=False),
                    lambda out: out.strip() == "200", timeout=20, what=f"curl from w0 to w1 ({ips['w1']}) prints 200")
    assert code.strip() == "200"
