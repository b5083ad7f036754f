"""`calicolab status`'s verdict from the per-node status (pure)."""

from __future__ import annotations

import pytest

from testbed.lab.lifecycle import describe_service, health, service_status

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
        "w0: calico-node(crashed: signal 9 (SIGKILL))",
        "w0: calico-node health port unreachable (Connection refused)"]
    failing = {"nodes": [node("m", last_error="apply: iptables-restore failed", live=False)]}
    assert health(failing)["problems"] == ["m: calico-node is not live", "m: calico-node: apply: iptables-restore failed"]
    bad_cfg = {"nodes": [node("m", bgp={"peers": [], "config_error": "BGPPeer x: invalid selector"})]}
    assert health(bad_cfg) == {"state": "broken", "problems": ["m: BGP: BGPPeer x: invalid selector"]}


def test_nodes_before_install_cni_are_not_broken():
    waiting = {"nodes": [{"name": "m", "agent": "not running", "services": {"kubelet": {"running": True}}}]}
    assert health(waiting) == {"state": "healthy", "problems": []}
    assert health(waiting, agents_expected=True)["state"] == "broken"


def test_a_restarting_or_crashed_service_is_reported_as_such():
    rec = {"pid": 4242, "start": 1, "exit": -9, "last_exit": -9, "restarts": 1, "next_start": 110.0}
    svc = service_status(rec, now=100.0, alive=False)
    assert svc["state"] == "restarting" and svc["restart_in"] == 10.0
    assert describe_service("kubelet", svc) == "kubelet(restarting in 10s after signal 9 (SIGKILL), 1 restart)"
    h = health({"nodes": [{"name": "w0", "agent": "not running", "services": {"kubelet": svc}}]})
    assert h == {"state": "broken",
                 "problems": ["w0: kubelet(restarting in 10s after signal 9 (SIGKILL), 1 restart)"]}
    # restarted: running again, the count stays visible
    up = service_status(dict(rec, exit=None, next_start=None, restarts=2), now=111.0, alive=True)
    assert up["state"] == "running" and describe_service("kubelet", up) == "kubelet(2 restarts)"
    # exited, nothing will restart it (e.g. an old lab without restarts): crashed
    dead = service_status({"pid": 4242, "exit": 1}, now=0.0, alive=False)
    assert dead["state"] == "crashed" and describe_service("etcd", dead) == "etcd(crashed: status 1)"


def test_a_supervised_service_that_just_exited_is_restarting_not_crashed():
    rec = {"pid": 4242, "start": 1, "exit": None, "restarts": 0, "restart_policy": "systemd Restart=always"}
    svc = service_status(rec, now=0.0, alive=False)
    assert svc["state"] == "restarting" and describe_service("kubelet", svc) == "kubelet(exited, restart pending)"


def test_missing_routes_or_tunnel_make_a_ready_node_degraded_and_a_converging_one_not_ready():
    gone = ["w0: tunnel device vxlan.calico is missing (VXLAN Always)",
            "w0: no route to 192.168.2.0/24 (w1's block, VXLAN Always)"]
    h = health({"nodes": [node("m"), node("w0", missing=gone)]})
    assert h == {"state": "degraded", "problems": gone}
    # while BGP is still coming up, missing routes are expected: not ready, not degraded
    h = health({"nodes": [node("w0", peers=[("a", "Connect")], missing=gone)]})
    assert h["state"] == "not ready" and gone[1] in h["problems"]
    # a broken lab stays broken
    assert health({"nodes": [node("m", running=False, agent="x"), node("w0", missing=gone)]})["state"] == "broken"


def test_status_command_prints_degraded_nodes_and_exits_1(monkeypatch, capsys):
    from testbed import cli
    from testbed.lab import lifecycle

    gone = ["k8s-w1: tunnel device vxlan.calico is missing (VXLAN Always)"]
    nodes = [node("k8s-w0", datapath="kernel", encap="vxlan", dataplane="ok", role="worker", address="172.30.0.11",
                  netns="l-k8s-w0"),
             node("k8s-w1", datapath="kernel", encap="vxlan", dataplane="degraded", missing=gone, role="worker",
                  address="172.30.0.12", netns="l-k8s-w1")]
    info = {"lab": "l", "phase": "running", "etcd_endpoints": ["http://172.30.0.10:2379"], "supervisor": 1,
            "nodes": nodes, "skipped": [], "others": []}
    info["health"] = health(info)
    monkeypatch.setattr(lifecycle, "status", lambda lab: info)
    assert cli._status("l", False) == 1
    out = capsys.readouterr().out
    assert "status: DEGRADED: k8s-w1: tunnel device vxlan.calico is missing (VXLAN Always)" in out
    rows = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("k8s-w")}
    assert rows["k8s-w1"].rstrip().endswith("degraded") and "vxlan (kernel)" in rows["k8s-w1"]


def test_routes_missing_for_a_moment_are_convergence_and_a_lasting_gap_is_degraded():
    from testbed.lab.lifecycle import settled_health

    gap = ["w0: no route to 192.168.2.0/24 (w1's block, IPIP Always)"]
    clock = [0.0]

    def sleep(s):
        clock[0] += s

    info = {"nodes": [node("m"), node("w0", missing=list(gap))]}
    reads = []

    def route_arrives():  # BGP delivers the block's route on the second re-read
        reads.append(clock[0])
        if len(reads) == 2:
            info["nodes"][1]["missing"] = []

    assert settled_health(info, True, route_arrives, settle=3.0, clock=lambda: clock[0], sleep=sleep) == {
        "state": "healthy", "problems": []}
    assert reads == [0.25, 0.5]
    # the gap lasts: degraded after the settle time, naming it
    info["nodes"][1]["missing"] = list(gap)
    clock[0] = 0.0
    v = settled_health(info, True, lambda: None, settle=3.0, clock=lambda: clock[0], sleep=sleep)
    assert v == {"state": "degraded", "problems": gap} and clock[0] >= 3.0
    # a missing tunnel device is not convergence: degraded at once, no re-read
    dev = ["w0: tunnel device vxlan.calico is missing (VXLAN Always)"]
    info["nodes"][1]["missing"] = dev + gap
    clock[0] = 0.0
    v = settled_health(info, True, lambda: pytest.fail("re-read"), settle=3.0, clock=lambda: clock[0], sleep=sleep)
    assert v["state"] == "degraded" and clock[0] == 0.0
