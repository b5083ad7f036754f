"""Pure parts of the lab: the plan written before anything exists, node env, CLI splitting."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.cli import _split_tool, build_parser
from testbed.lab import state as labstate
from testbed.lab.topology import load

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_plan_names_everything_before_creation():
    topo = load(ROOT / "topologies" / "walkthrough.yaml", name="wk")
    st = labstate.plan(topo)
    assert st["lab"] == "wk" and st["phase"] == "starting"
    assert sorted(st["netns"]) == sorted(["wk-k8s-m", "wk-k8s-w0", "wk-k8s-w1", "wk-r0",
                                          "wk-internet", "wk-lan0", "wk-inet"])
    assert st["hosts"]["k8s-m"] == {"kind": "node", "role": "control-plane",
                                    "address": "172.30.0.10", "segment": "lan0",
                                    "netns": "wk-k8s-m"}
    assert st["hosts"]["lan0"]["kind"] == "segment" and st["hosts"]["r0"]["kind"] == "router"
    assert st["etcd_endpoints"] == ["http://172.30.0.10:2379"]
    assert st["control_plane"] == "k8s-m"
    if st["cgroup"]:
        assert st["cgroup"].endswith("/calicolab/wk")


def test_node_env_contract():
    topo = load(ROOT / "topologies" / "walkthrough.yaml")
    env = labstate.node_env(labstate.plan(topo), "k8s-w0", base={"HOME": "/root"})
    assert env["NODE_NAME"] == "k8s-w0" and env["NODE_ROLE"] == "worker"
    assert env["ETCD_ENDPOINTS"] == "http://172.30.0.10:2379"
    assert env["CALICOLAB_LAB"] == "walkthrough" and env["DATASTORE_TYPE"] == "kubernetes"
    path = env["PATH"].split(":")
    # the node's own tools (ctr), then the venv's (kubectl, calicoctl, calico-node), then the system's
    assert path[:2] == [str(labstate.REPO / "testbed" / "lab" / "nodebin"), str(labstate.VENV_BIN)]
    assert path.index(str(labstate.VENV_BIN)) < path.index("/usr/bin")
    assert env["HOME"] == "/root"


@pytest.mark.parametrize("argv, want", [
    (["kubectl", "get", "nodes", "-o", "wide"], (None, "kubectl", ["get", "nodes", "-o", "wide"])),
    (["--lab", "a", "calicoctl", "-h"], ("a", "calicoctl", ["-h"])),
    (["kubectl", "--lab", "b", "-n", "kube-system", "get", "pods"],
     ("b", "kubectl", ["-n", "kube-system", "get", "pods"])),
    (["kubectl", "--lab=c", "get", "pods"], ("c", "kubectl", ["get", "pods"])),
    (["status"], None),
    (["--lab", "a", "exec", "w0", "--", "kubectl"], None),
])
def test_tool_arguments_pass_through_verbatim(argv, want):
    assert _split_tool(argv) == want


def test_parser_commands():
    p = build_parser()
    a = p.parse_args(["up", "topologies/walkthrough.yaml", "--name", "x", "--no-cni"])
    assert (a.command, a.topology, a.name, a.no_cni) == ("up", "topologies/walkthrough.yaml", "x", True)
    a = p.parse_args(["exec", "--lab", "l", "k8s-w0", "--", "ip", "-c", "route"])
    assert (a.lab, a.target, a.cmd) == ("l", "k8s-w0", ["ip", "-c", "route"])
    a = p.parse_args(["--lab", "l", "status", "--json"])
    assert (a.lab, a.json) == ("l", True)
    with pytest.raises(SystemExit):
        p.parse_args(["frobnicate"])
