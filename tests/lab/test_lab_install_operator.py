"""The first seed's install, by the Tigera operator, typed in a node shell of a lab in the
Kubernetes datastore (``calicolab up --no-cni``): ``kubectl create -f tigera-operator.yaml``,
then ``kubectl create -f custom-resources.yaml`` (the real kubectl); ``kubectl get tigerastatus``
shows calico Available and apiserver Degraded (calicolab has no Calico API server);
``kubectl get pods -n calico-system`` on every node; a pod-to-pod flow across nodes. Bad
Installations (issue 15's must-hold 3): blockSize 19 before any install, an overlapping pool
after it: TigeraStatus Degraded with the operator's reason, no IPPool made, calico-node not
rolled out again. One small module lab (3 nodes and a router)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from testbed.lab import state as labstate
from testbed.lab.clean import clean_lab
from testbed.poll import wait_for
from tests.lab.lab_helpers import leftovers
from tests.support import require_root, require_tool, unique

pytestmark = pytest.mark.lab

CLI = [sys.executable, "-m", "testbed.cli"]
MANIFESTS = labstate.REPO / "manifests"
NODES = ("k8s-m", "k8s-w0", "k8s-w1")
TOPOLOGY = """\
name: {name}
segments:
  - {{name: lan0, cidr: 172.30.82.0/24}}
  - {{name: inet, cidr: 203.0.113.0/24}}
routers:
  - name: r0
    interfaces:
      - {{segment: lan0, address: 172.30.82.1}}
      - {{segment: inet, address: 203.0.113.1}}
nodes:
  - {{name: k8s-m, role: control-plane, address: 172.30.82.10, segment: lan0}}
  - {{name: k8s-w0, role: worker, address: 172.30.82.11, segment: lan0}}
  - {{name: k8s-w1, role: worker, address: 172.30.82.12, segment: lan0}}
calico:
  datastore: kubernetes
"""
BAD_BLOCK = """\
apiVersion: operator.tigera.io/v1
kind: Installation
metadata: {name: default}
spec:
  calicoNetwork:
    ipPools: [{cidr: 192.168.0.0/16, blockSize: 19, encapsulation: VXLANCrossSubnet}]
"""
PODS = """\
apiVersion: v1
kind: Pod
metadata: {name: web-w0}
spec: {nodeName: k8s-w0, containers: [{name: nginx, image: nginx}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-w1}
spec: {nodeName: k8s-w1, containers: [{name: nginx, image: nginx}]}
"""


def cli(*args: str, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], input=input, capture_output=True, text=True, timeout=timeout,
                          cwd=str(labstate.REPO))


class Lab:
    """The module's lab: ``sh(line)`` types ``line`` into a node shell (``sh -c``)."""

    def __init__(self, name: str, state: dict):
        self.name, self.state = name, state

    def run(self, line: str, node: str = "k8s-m", input: str | None = None) -> subprocess.CompletedProcess:
        return cli("--lab", self.name, "exec", node, "--", "sh", "-c", line, input=input)

    def sh(self, line: str, node: str = "k8s-m", input: str | None = None) -> str:
        r = self.run(line, node, input)
        assert r.returncode == 0, f"{line!r} on {node} exited {r.returncode}: {r.stdout}{r.stderr}"
        return r.stdout

    def tigerastatus(self) -> dict[str, dict[str, tuple[str, str, str]]]:
        """``kubectl get tigerastatus -o json``: name -> type -> (status, reason, message)."""
        items = json.loads(self.sh("kubectl get tigerastatus -o json"))["items"]
        return {i["metadata"]["name"]: {c["type"]: (c["status"], c.get("reason", ""), c.get("message", ""))
                                        for c in (i.get("status") or {}).get("conditions") or []} for i in items}

    def table(self, line: str, node: str = "k8s-m") -> list[list[str]]:
        return [ln.split() for ln in self.sh(line, node).splitlines() if ln.strip()]


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[Lab]:
    require_root()
    for tool in ("etcd", "curl"):
        require_tool(tool)
    name = unique("op")
    topo = tmp_path_factory.mktemp("operator") / f"{name}.yaml"
    topo.write_text(TOPOLOGY.format(name=name))
    st = None
    try:
        r = cli("up", str(topo), "--no-cni", timeout=300)
        assert r.returncode == 0, r.stderr
        st = labstate.read_state(name)
        yield Lab(name, st)
    finally:
        down = cli("down", name, timeout=120)
        if st is not None:
            assert down.returncode == 0, down.stderr
            assert leftovers(st) == []
        else:
            clean_lab(name)


def test_operator_install_typed_in_a_node_shell(lab, tmp_path):
    # the operator, typed as the first seed does
    out = lab.sh(f"cd {MANIFESTS} && kubectl create -f tigera-operator.yaml")
    assert "deployment.apps/tigera-operator created" in out, out
    assert "customresourcedefinition.apiextensions.k8s.io/tigerastatuses.operator.tigera.io created" in out, out
    wait_for(lambda: lab.table("kubectl get pods -n tigera-operator"),
             lambda rows: len(rows) == 2 and rows[1][1:3] == ["1/1", "Running"], timeout=30,
             what="the tigera-operator pod Running")

    # bad input first: blockSize 19 -> ippools and calico Degraded, nothing made
    bad = tmp_path / "bad-installation.yaml"
    bad.write_text(BAD_BLOCK)
    lab.sh(f"kubectl create -f {bad}")
    st = wait_for(lab.tigerastatus, lambda s: s.get("ippools", {}).get("Degraded", ("",))[0] == "True"
                  and s.get("calico", {}).get("Degraded", ("",))[0] == "True", timeout=20,
                  what="tigerastatus ippools and calico Degraded for blockSize 19")
    assert st["ippools"]["Degraded"] == (
        "True", "InvalidConfigurationError", "error validating IP pool configuration: IPv4 pool block size must be "
        "greater than 19 and less than or equal to 32"), st
    assert st["calico"]["Degraded"][:2] == ("True", "ResourceNotFound"), st
    assert st["calico"]["Degraded"][2].startswith("waiting for enabled IP pools to be created"), st
    assert lab.run("kubectl get ippools.crd.projectcalico.org").stdout.strip() == ""
    assert "No resources found" in lab.run("kubectl get ippools.crd.projectcalico.org").stderr
    assert lab.run("kubectl get daemonsets -n calico-system").stdout.strip() == ""
    lab.sh("kubectl delete installation default")

    # the seed's custom resources: calico Available, apiserver Degraded and saying why
    out = lab.sh(f"cd {MANIFESTS} && kubectl create -f custom-resources.yaml")
    assert out.split("\n")[:2] == ["installation.operator.tigera.io/default created",
                                   "apiserver.operator.tigera.io/default created"], out
    rows = wait_for(lambda: lab.table("kubectl get tigerastatus"),
                    lambda r: any(x[0] == "calico" and x[1:4] == ["True", "False", "False"] for x in r),
                    timeout=60, what="kubectl get tigerastatus: calico True False False")
    assert rows[0] == ["NAME", "AVAILABLE", "PROGRESSING", "DEGRADED", "SINCE"], rows
    assert {r[0]: r[1:4] for r in rows[1:]} == {"apiserver": ["False", "False", "True"],
                                                "calico": ["True", "False", "False"],
                                                "ippools": ["True", "False", "False"]}, rows
    st = lab.tigerastatus()
    assert st["apiserver"]["Degraded"][1] == "NotApplicable"
    assert "does not implement the Calico API server" in st["apiserver"]["Degraded"][2]
    pool = json.loads(lab.sh("kubectl get ippools.crd.projectcalico.org default-ipv4-ippool -o json"))
    assert {k: pool["spec"].get(k) for k in ("cidr", "blockSize", "ipipMode", "vxlanMode", "natOutgoing",
                                               "nodeSelector")} == {
        "cidr": "192.168.0.0/16", "blockSize": 26, "ipipMode": "Never", "vxlanMode": "CrossSubnet",
        "natOutgoing": True, "nodeSelector": "all()"}, pool
    # made through Calico's datastore client: its labels are in the Calico metadata annotation
    meta = json.loads(pool["metadata"]["annotations"]["projectcalico.org/metadata"])
    assert meta["labels"] == {"app.kubernetes.io/managed-by": "tigera-operator"}, meta
    wait_for(lambda: lab.table("kubectl get nodes"),
             lambda r: sorted((x[0], x[1]) for x in r[1:]) == [(n, "Ready") for n in NODES], timeout=30,
             what="every node Ready")

    # kubectl get pods -n calico-system, typed on every node: calico-node on each node, Typha,
    # kube-controllers (and any other workload the layout holds), every pod Running and ready
    for node in NODES:
        rows = wait_for(lambda n=node: lab.table("kubectl get pods -n calico-system -o wide", n),
                        lambda r: len(r) > 1 and all(x[2] == "Running" and x[1].split("/")[0] == x[1].split("/")[1]
                                                     for x in r[1:]),
                        timeout=30, what=f"calico-system pods Running (on {node})")
        assert rows[0][:3] == ["NAME", "READY", "STATUS"], rows
        on = sorted(x[6] for x in rows[1:] if x[0].startswith("calico-node-"))
        assert on == sorted(NODES), rows
        assert sum(x[0].startswith("calico-typha-") for x in rows[1:]) == 1, rows
        assert sum(x[0].startswith("calico-kube-controllers-") for x in rows[1:]) == 1, rows

    # a pod-to-pod flow across nodes
    lab.sh("kubectl apply -f -", input=PODS)

    def ips() -> dict[str, str]:
        items = json.loads(lab.sh("kubectl get pods -o json"))["items"]
        return {p["metadata"]["name"]: p["status"].get("podIP") for p in items
                if p.get("status", {}).get("phase") == "Running"}

    got = wait_for(ips, lambda d: d.get("web-w0") and d.get("web-w1"), timeout=30, what="pods web-w0, web-w1 Running")
    wait_for(lambda: cli("--lab", lab.name, "exec", "default/web-w0", "--", "curl", "-o", "/dev/null", "-s", "-m",
                         "2", "-w", "%{http_code}", f"http://{got['web-w1']}").stdout,
             lambda code: code.strip() == "200", timeout=20,
             what=f"curl from pod web-w0 (k8s-w0) to pod web-w1 (k8s-w1, {got['web-w1']}) prints 200")

    # an overlapping pool added to the Installation: ippools Degraded, no IPPool made, calico-node
    # not rolled out again; removed again: Available
    gen = json.loads(lab.sh("kubectl get daemonset calico-node -n calico-system -o json"))["metadata"]["generation"]
    lab.sh("kubectl patch installation default --type=json -p "
           "'[{\"op\":\"add\",\"path\":\"/spec/calicoNetwork/ipPools/-\","
           "\"value\":{\"name\":\"overlap\",\"cidr\":\"192.168.128.0/20\"}}]'")
    st = wait_for(lab.tigerastatus, lambda s: s["ippools"].get("Degraded", ("",))[0] == "True", timeout=20,
                  what="tigerastatus ippools Degraded for the overlapping pool")
    assert st["ippools"]["Degraded"] == (
        "True", "InvalidConfigurationError", "error validating IP pool configuration: IPPool(overlap) CIDR "
        "overlaps with IPPool(default-ipv4-ippool) CIDR 192.168.0.0/16"), st
    names = [r[0] for r in lab.table("kubectl get ippools.crd.projectcalico.org")[1:]]
    assert names == ["default-ipv4-ippool"], names
    ds = json.loads(lab.sh("kubectl get daemonset calico-node -n calico-system -o json"))
    assert ds["metadata"]["generation"] == gen, ds["metadata"]
    lab.sh("kubectl patch installation default --type=json -p '[{\"op\":\"remove\",\"path\":\"/spec/calicoNetwork/ipPools/1\"}]'")
    wait_for(lab.tigerastatus, lambda s: s["ippools"].get("Available", ("",))[0] == "True"
             and s["ippools"].get("Degraded", ("",))[0] == "False", timeout=20,
             what="tigerastatus ippools Available again")

    # `calicolab install-cni --operator` on a lab where the operator is installed already: kubectl
    # create refuses, and the command says so (bench/install_operator.py runs its whole path)
    r = cli("--lab", lab.name, "install-cni", "--operator", timeout=60)
    assert r.returncode != 0 and "kubectl create -f tigera-operator.yaml failed" in r.stderr, r.stderr
    assert "AlreadyExists" in r.stderr or "already exists" in r.stderr, r.stderr
