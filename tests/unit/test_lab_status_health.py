"""`calicolab status`'s verdict from the per-node status (pure)."""

from __future__ import annotations

import pytest

from testbed.lab.lifecycle import health

pytestmark = pytest.mark.unit


def node(name, agent="ready", running=True, peers=(), **kw):
    return {"name": name, "agent": agent, "live": True,
            "services": {"calico-node": {"running": running, "exit": None if running else -9},
                         "kubelet": {"running": True, "exit": None}},
            "bgp": {"peers": [{"name": f"Mesh_{p}", "info": i} for p, i in peers]}, **kw}


def test_healthy_not_ready_and_broken():
    ok = {"nodes": [node("m", peers=[("a", "Established")]), node("w0")]}
    assert health(ok) == {"state": "healthy", "problems": []}
    slow = {"nodes": [node("m", agent="not ready", peers=[("172_30_0_11", "Active Socket: Connection refused")])]}
    assert health(slow)["state"] == "not ready"
    assert health(slow)["problems"] == ["m: calico-node not ready",
                                        "m: BGP not established with Mesh_172_30_0_11"]
    dead = {"nodes": [node("m"), node("w0", agent="health port unreachable (Connection refused)", running=False)]}
    h = health(dead)
    assert h["state"] == "broken" and h["problems"] == [
        "w0: calico-node exited (-9)", "w0: calico-node health port unreachable (Connection refused)"]
    failing = {"nodes": [node("m", last_error="apply: iptables-restore failed", live=False)]}
    assert health(failing)["problems"] == ["m: calico-node is not live", "m: calico-node: apply: iptables-restore failed"]
    bad_cfg = {"nodes": [node("m", bgp={"peers": [], "config_error": "BGPPeer x: invalid selector"})]}
    assert health(bad_cfg) == {"state": "broken", "problems": ["m: BGP: BGPPeer x: invalid selector"]}


def test_nodes_before_install_cni_are_not_broken():
    waiting = {"nodes": [{"name": "m", "agent": "not running", "services": {"kubelet": {"running": True}}}]}
    assert health(waiting) == {"state": "healthy", "problems": []}
    assert health(waiting, agents_expected=True)["state"] == "broken"
