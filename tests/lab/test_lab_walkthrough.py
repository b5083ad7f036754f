"""The issue's must-hold: walkthrough lab NotReady with --no-cni, Ready after install-cni."""

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
    res = cli("status", "--lab", lab_name, "--json")
    assert res.returncode == 0, res.stderr
    nodes = json.loads(res.stdout)["nodes"]
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
    res = cli("--lab", lab_name, "exec", "k8s-w0", "--", "ip", "netns", "list")
    assert res.returncode == 0 and res.stdout.count("cni-") == 1, res.stdout
    res = cli("--lab", lab_name, "exec", "k8s-w1", "--", "ip", "netns", "list")
    assert res.returncode == 0 and "cni-" not in res.stdout, res.stdout

    # install-cni applied calico.yaml: a calico-node pod (hostNetwork) on every node
    res = cli("kubectl", "--lab", lab_name, "get", "pods", "-n", "kube-system", "-o", "json")
    assert res.returncode == 0, res.stderr
    calico = [p for p in json.loads(res.stdout)["items"]
              if p["metadata"]["name"].startswith("calico-node-")]
    assert sorted(p["spec"]["nodeName"] for p in calico) == ["k8s-m", "k8s-w0", "k8s-w1"], calico
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
