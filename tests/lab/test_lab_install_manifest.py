"""The walkthrough's step 2 by manifest: a lab without a CNI, `kubectl apply -f calico.yaml`,
then calico-node on every node, one calico-kube-controllers, one calico-typha (serving
every calico-node), nodes Ready, pods on two workers talking, and a deleted Node's Calico
data removed by kube-controllers."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from testbed.k8s.install import install_by_manifest
from testbed.lab import lifecycle as labmod
from testbed.lab import netns as nsmod
from testbed.poll import wait_for
from tests.support import require_root, require_tool, unique

pytestmark = pytest.mark.lab

# A router gives the nodes their default route (as a real node has one): without any
# route to 169.254.1.1 a node's proxy ARP would not answer its pods.
TOPOLOGY = """\
name: {name}
segments:
  - {{name: lan0, cidr: 172.30.63.0/24}}
  - {{name: inet, cidr: 203.0.113.0/24}}
routers:
  - name: r0
    interfaces:
      - {{segment: lan0, address: 172.30.63.1}}
      - {{segment: inet, address: 203.0.113.1}}
nodes:
  - {{name: k8s-m, role: control-plane, address: 172.30.63.10, segment: lan0}}
  - {{name: k8s-w0, role: worker, address: 172.30.63.11, segment: lan0}}
  - {{name: k8s-w1, role: worker, address: 172.30.63.12, segment: lan0}}
calico:
  pool: {{cidr: 192.168.0.0/16, blockSize: 24, ipipMode: Always, vxlanMode: Never, natOutgoing: true}}
"""
NODES = ("k8s-m", "k8s-w0", "k8s-w1")
PODS = """\
apiVersion: v1
kind: Pod
metadata: {name: k8s-w0}
spec: {nodeName: k8s-w0, containers: [{name: nginx, image: nginx}]}
---
apiVersion: v1
kind: Pod
metadata: {name: k8s-w1}
spec: {nodeName: k8s-w1, containers: [{name: nginx, image: nginx}]}
"""


def cli(lab: str, *args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "testbed.cli", "--lab", lab, *args], input=input,
                          capture_output=True, text=True, timeout=timeout)


def table(out: str) -> list[dict[str, str]]:
    lines = [ln for ln in out.splitlines() if ln.strip()]
    if not lines:
        return []
    head = lines[0].split()
    rows = []
    for ln in lines[1:]:
        row: dict[str, str] = {}
        for key, value in zip(head, ln.split(), strict=False):
            row.setdefault(key, value)  # "NOMINATED NODE" must not overwrite NODE
        rows.append(row)
    return rows


@pytest.fixture
def lab(tmp_path):
    require_root()
    for tool in ("mnexec", "etcd", "curl"):
        require_tool(tool)
    name = unique("inst")
    path = tmp_path / f"{name}.yaml"
    path.write_text(TOPOLOGY.format(name=name))
    # the lab's manifest is calico-etcd.yaml's shape: the etcd datastore (in the Kubernetes one
    # install-cni lays out calico-system instead: test_kdd_commands.py, test_lab_walkthrough.py)
    state = labmod.up(path, no_cni=True, progress=lambda _m: None, ready_timeout=5, datastore="etcdv3")
    try:
        yield state
    finally:
        labmod.down(name)


def test_install_by_manifest(lab):
    name = lab["lab"]
    wait_for(lambda: table(cli(name, "kubectl", "get", "nodes").stdout),
             lambda ns: sorted((n["NAME"], n["STATUS"]) for n in ns) == [(n, "NotReady") for n in NODES],
             timeout=20, what="every node registered and NotReady (no CNI yet)")

    out = install_by_manifest(lab, leak_grace_period="2s")
    assert sorted(out) == ["clusterrole.rbac.authorization.k8s.io/calico-cni-plugin created",
                           "clusterrole.rbac.authorization.k8s.io/calico-kube-controllers created",
                           "clusterrole.rbac.authorization.k8s.io/calico-node created",
                           "clusterrolebinding.rbac.authorization.k8s.io/calico-cni-plugin created",
                           "clusterrolebinding.rbac.authorization.k8s.io/calico-kube-controllers created",
                           "clusterrolebinding.rbac.authorization.k8s.io/calico-node created",
                           "configmap/calico-config created", "daemonset.apps/calico-node created",
                           "deployment.apps/calico-kube-controllers created",
                           "deployment.apps/calico-typha created", "service/calico-typha created",
                           "serviceaccount/calico-cni-plugin created",
                           "serviceaccount/calico-kube-controllers created",
                           "serviceaccount/calico-node created"], out

    def pods() -> list[dict[str, str]]:  # Calico's (kube-system also holds the control plane and add-ons)
        return [r for r in table(cli(name, "kubectl", "get", "pods", "-n", "kube-system", "-o", "wide").stdout)
                if r["NAME"].startswith("calico-")]

    def settled(rows: list[dict[str, str]]) -> bool:
        running = [r for r in rows if r["STATUS"] == "Running" and r["READY"] == "1/1"]
        return (sorted(r["NODE"] for r in running if r["NAME"].startswith("calico-node-")) == list(NODES)
                and sum(r["NAME"].startswith("calico-kube-controllers-") for r in running) == 1
                and sum(r["NAME"].startswith("calico-typha-") for r in running) == 1
                and len(rows) == len(running))

    rows = wait_for(pods, settled, timeout=30, what="calico pods Running in kube-system")
    for r in rows:
        if r["NAME"].startswith("calico-node-"):
            assert re.fullmatch(r"calico-node-[a-z0-9]{5}", r["NAME"]), r
            assert r["IP"] == lab["hosts"][r["NODE"]]["address"], r  # hostNetwork
        else:
            assert re.fullmatch(r"calico-(kube-controllers|typha)-[a-z0-9]+-[a-z0-9]{5}", r["NAME"]), r
    wait_for(lambda: table(cli(name, "kubectl", "get", "nodes").stdout),
             lambda ns: sorted((n["NAME"], n["STATUS"]) for n in ns) == [(n, "Ready") for n in NODES],
             timeout=20, what="every node Ready")

    # every calico-node's Felix and confd take their watch from Typha (its log names them)
    typha = next(r["NAME"] for r in rows if r["NAME"].startswith("calico-typha-"))
    wait_for(lambda: cli(name, "kubectl", "logs", "-n", "kube-system", typha).stdout,
             lambda log: all(f"({n}, syncer {s})" in log for n in NODES for s in ("felix", "bgp")),
             timeout=20, what="Typha serving felix and bgp syncers of every node")

    # pods on two workers reach each other
    res = cli(name, "kubectl", "apply", "-f", "-", input=PODS)
    assert res.returncode == 0, res.stderr

    def pod_ips() -> dict[str, str]:
        items = json.loads(cli(name, "kubectl", "get", "pods", "-o", "json").stdout)["items"]
        return {p["metadata"]["name"]: p["status"].get("podIP") for p in items
                if p.get("status", {}).get("phase") == "Running"}

    ips = wait_for(pod_ips, lambda d: d.get("k8s-w0") and d.get("k8s-w1"), timeout=30,
                   what="pods k8s-w0 and k8s-w1 Running")
    wait_for(lambda: cli(name, "exec", "default/k8s-w0", "--", "curl", "-o", "/dev/null", "-s", "-m", "2",
                         "-w", "%{http_code}", f"http://{ips['k8s-w1']}").stdout,
             lambda code: code.strip() == "200", timeout=20,
             what=f"curl from pod k8s-w0 to pod k8s-w1 ({ips['k8s-w1']}) prints 200")

    # deleting k8s-w1's Node object: kube-controllers removes its Calico Node and affinities
    def affinities() -> list[str]:
        from ipam.store import Store

        def read() -> list[str]:
            from datastore import Client

            store = Store(Client(lab["etcd_endpoints"]).etcd)
            return sorted({a.host for a in store.list_affinities()})

        return nsmod.run_in(lab["hosts"]["k8s-m"]["netns"], read)

    assert affinities() == sorted(NODES)
    res = cli(name, "kubectl", "delete", "node", "k8s-w1")
    assert res.returncode == 0, res.stderr
    # pod k8s-w1 is stopped by its kubelet but still exists (pod GC would delete it after
    # 40 s): it holds its IP, so k8s-w1's Calico data stays until the pods bound to k8s-w1
    # are deleted
    wait_for(lambda: json.loads(cli(name, "kubectl", "get", "pod", "k8s-w1", "-o", "json").stdout)["status"],
             lambda st: st.get("phase") == "Failed" and st.get("reason") == "NodeNotFound", timeout=15,
             what="pod k8s-w1 stopped (Failed, NodeNotFound) by the kubelet of the deleted node")
    assert "k8s-w1" in {r["NAME"] for r in table(cli(name, "calicoctl", "get", "nodes").stdout)}
    res = cli(name, "kubectl", "delete", "pods", "-A", "--field-selector", "spec.nodeName=k8s-w1")
    assert res.returncode == 0, res.stderr
    wait_for(lambda: table(cli(name, "calicoctl", "get", "nodes").stdout),
             lambda rows: sorted(r["NAME"] for r in rows) == ["k8s-m", "k8s-w0"], timeout=30,
             what="calicoctl get nodes without k8s-w1")
    wait_for(affinities, lambda hosts: hosts == ["k8s-m", "k8s-w0"], timeout=10,
             what="k8s-w1's block affinities released")
