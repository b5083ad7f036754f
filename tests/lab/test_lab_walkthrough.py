"""The issue's must-hold: walkthrough lab NotReady with --no-cni, Ready after install-cni, in the
default datastore (Kubernetes: install-cni applies the project's calico.yaml, Calico's calico.yaml
shape, into kube-system: the second seed; calico-etcd.yaml in an etcd lab)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from testbed.lab import state as labstate
from testbed.lab.clean import clean_lab
from testbed.poll import wait_for
from tests.lab.lab_helpers import leftovers
from tests.support import require, require_root, require_tool, unique

pytestmark = pytest.mark.lab


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """A fresh `calicolab` process each time, as from a new terminal."""
    return subprocess.run([sys.executable, "-m", "testbed.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=str(labstate.REPO))


def node_table(lab: str) -> dict[str, str]:
    res = cli("kubectl", "--lab", lab, "get", "nodes")
    assert res.returncode == 0, res.stderr
    rows = [line.split() for line in res.stdout.splitlines()[1:] if line.strip()]
    return {r[0]: r[1] for r in rows}


@pytest.fixture
def lab_name():
    require_root()
    require_tool("etcd")
    require_tool("mnexec")
    for module in ("testbed.k8s.kubelet", "testbed.apiserver", "agent.main"):
        import importlib.util

        require(importlib.util.find_spec(module) is not None, f"needs {module}")
    name = unique("wt")
    yield name
    clean_lab(name)


def test_walkthrough_notready_then_ready(lab_name, tmp_path):
    topo = str(labstate.REPO / "topologies" / "walkthrough.yaml")
    res = cli("up", topo, "--name", lab_name, "--no-cni")
    assert res.returncode == 0, res.stderr
    st = labstate.read_state(lab_name)
    assert st is not None
    assert node_table(lab_name) == {"k8s-m": "NotReady", "k8s-w0": "NotReady",
                                    "k8s-w1": "NotReady"}
    res = cli("install-cni", "--lab", lab_name)
    assert res.returncode == 0, res.stderr
    wait_for(lambda: node_table(lab_name), lambda t: set(t.values()) == {"Ready"} and len(t) == 3,
             timeout=30, what="3 nodes Ready after install-cni")
    # Ready nodes can still be converging (a block CoreDNS's pods just claimed is on its way
    # to the other nodes' routes: `status` says "degraded" and exits 1 until it lands)
    def verdict() -> tuple[int, dict, str]:
        r = cli("status", "--lab", lab_name, "--json")
        return r.returncode, (json.loads(r.stdout) if r.stdout.startswith("{") else {}), r.stderr

    rc, info, _ = wait_for(verdict, lambda v: v[0] == 0, timeout=30, what="status exit 0 after install-cni")
    nodes = info["nodes"]
    assert [n["agent"] for n in nodes] == ["ready"] * 3, nodes
    assert {n["datapath"] for n in nodes} <= {"kernel", "bpf", "userspace"}
    # a pod pinned to k8s-w0: `exec NS/POD` lands in its netns, `exec NODE` sees its netns
    pod = tmp_path / "pod.yaml"
    pod.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: probe, namespace: default}\n"
                   "spec: {nodeName: k8s-w0, containers: [{name: c, image: busybox}]}\n")
    res = cli("kubectl", "--lab", lab_name, "apply", "-f", str(pod))
    assert res.returncode == 0, res.stderr
    wait_for(lambda: cli("kubectl", "--lab", lab_name, "get", "pod", "probe").stdout,
             lambda out: "Running" in out, timeout=30, what="pod probe Running")
    res = cli("--lab", lab_name, "exec", "default/probe", "--", "ip", "route")
    assert res.returncode == 0 and "default via 169.254.1.1" in res.stdout, res.stdout + res.stderr
    # each node's sandbox netns are exactly those of the pods bound to it (probe on k8s-w0;
    # CoreDNS's pods wherever the scheduler put them: waited for, they may still be starting)
    def netns_by_node() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
        res = cli("kubectl", "--lab", lab_name, "get", "pods", "-A", "-o", "json")
        assert res.returncode == 0, res.stderr
        sandboxes: dict[str, set[str]] = {}
        for p in json.loads(res.stdout)["items"]:
            ns_name = (p["metadata"].get("annotations") or {}).get("calicolab.io/netns")
            if ns_name and not p["spec"].get("hostNetwork"):
                sandboxes.setdefault(p["spec"]["nodeName"], set()).add(ns_name)
        listed = {}
        for node in ("k8s-m", "k8s-w0", "k8s-w1"):
            res = cli("--lab", lab_name, "exec", node, "--", "ip", "netns", "list")
            assert res.returncode == 0, res.stderr
            listed[node] = {line.split()[0] for line in res.stdout.splitlines() if line.startswith("cni-")}
        return sandboxes, listed

    sandboxes, listed = wait_for(netns_by_node, lambda v: all(v[1][n] == v[0].get(n, set()) for n in v[1]),
                                 timeout=15, what="every node's cni- netns = its pods' sandboxes")
    probe_netns = json.loads(cli("kubectl", "--lab", lab_name, "get", "pod", "probe", "-o", "json").stdout)[
        "metadata"]["annotations"]["calicolab.io/netns"]
    assert probe_netns in listed["k8s-w0"]

    # install-cni applied calico.yaml (the default datastore, kubernetes; calico-etcd.yaml in etcd
    # mode), both into kube-system: a calico-node pod (hostNetwork) per node, its init containers done
    st = labstate.read_state(lab_name)
    assert st is not None and st["datastore"] == "kubernetes", st and st["datastore"]
    res = cli("kubectl", "--lab", lab_name, "get", "pods", "-n", "kube-system", "-o", "json")
    assert res.returncode == 0, res.stderr
    calico = [p for p in json.loads(res.stdout)["items"]
              if p["metadata"]["name"].startswith("calico-node-")]
    assert sorted(p["spec"]["nodeName"] for p in calico) == ["k8s-m", "k8s-w0", "k8s-w1"], calico
    assert {s["name"]: s["state"]["terminated"]["reason"] for p in calico for s in p["status"]["initContainerStatuses"]
            } == {"upgrade-ipam": "Completed", "install-cni": "Completed", "mount-bpffs": "Completed"}
    pids = [pid for p in calico
            for pid in json.loads(p["metadata"]["annotations"]["calicolab.io/pids"]).values()]
    assert len(pids) == 3 and all(os.path.exists(f"/proc/{pid}") for pid in pids), pids
    st = labstate.read_state(lab_name)
    assert st is not None
    res = cli("down", lab_name)
    assert res.returncode == 0, res.stderr
    assert leftovers(st) == []
    alive = [pid for pid in pids if _running(pid)]
    assert alive == [], f"calico-node processes still running after down: {alive}"


def _running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie waiting for its (re)parent to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
