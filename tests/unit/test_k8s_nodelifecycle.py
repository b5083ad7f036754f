"""The node lifecycle controller's decisions (testbed.k8s.nodelifecycle), on an injected clock."""

from __future__ import annotations

import pytest

from testbed.k8s.nodelifecycle import (
    NOT_READY,
    UNREACHABLE,
    desired_taints,
    eviction_time,
    iso,
    last_heartbeat,
    pods_to_evict,
    pods_to_mark_not_ready,
    stale_conditions,
)

pytestmark = pytest.mark.unit

T0 = 1_800_000_000.0


def node(ready="True", beat=T0, taints=None, name="k8s-w1"):
    conds = [{"type": t, "status": "False" if t != "Ready" else ready, "lastHeartbeatTime": iso(beat)}
             for t in ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")]
    return {"metadata": {"name": name, "creationTimestamp": iso(T0 - 100)},
            "spec": {"taints": taints or []}, "status": {"conditions": conds}}


def lease(renew):
    return {"spec": {"holderIdentity": "k8s-w1", "renewTime": iso(renew).replace("Z", ".123456Z")}}


def pod(name, node_name="k8s-w1", tolerations=(), ready=True):
    return {"metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node_name, "tolerations": list(tolerations)},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def test_heartbeat_is_the_later_of_lease_and_condition():
    assert last_heartbeat(node(beat=T0), lease(T0 + 30)) == pytest.approx(T0 + 30.123456)
    assert last_heartbeat(node(beat=T0), None) == T0


def test_conditions_turn_unknown_after_the_grace_period():
    n = node()
    assert stale_conditions(n, lease(T0 + 10), now=T0 + 50) is None  # 40 s since the lease: not yet
    conds = stale_conditions(n, lease(T0 + 10), now=T0 + 51)
    assert {c["type"]: c["status"] for c in conds} == dict.fromkeys(
        ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready"), "Unknown")
    ready = next(c for c in conds if c["type"] == "Ready")
    assert ready["reason"] == "NodeStatusUnknown" and ready["message"] == "Kubelet stopped posting node status."
    assert ready["lastTransitionTime"] == iso(T0 + 51) and ready["lastHeartbeatTime"] == iso(T0)
    n["status"]["conditions"] = conds
    assert stale_conditions(n, None, now=T0 + 100) is None  # already Unknown: nothing to write


def test_a_node_that_never_posted_status():
    n = {"metadata": {"name": "x", "creationTimestamp": iso(T0)}, "spec": {}, "status": {}}
    assert stale_conditions(n, None, now=T0 + 30) is None
    conds = stale_conditions(n, None, now=T0 + 41)
    assert conds == [{"type": "Ready", "status": "Unknown", "reason": "NodeStatusNeverUpdated",
                      "message": "Kubelet never posted node status.", "lastHeartbeatTime": iso(T0),
                      "lastTransitionTime": iso(T0 + 41)}]


def test_taints_follow_the_ready_condition():
    assert desired_taints(node("True"), T0) is None
    unknown = desired_taints(node("Unknown", taints=[{"key": "dedicated", "effect": "NoSchedule"}]), T0)
    assert unknown == [{"key": "dedicated", "effect": "NoSchedule"},
                       {"key": UNREACHABLE, "effect": "NoSchedule"},
                       {"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": iso(T0)}]
    # NotReady swaps unreachable for not-ready; Ready again removes them, keeps the others
    assert [t["key"] for t in desired_taints(node("False", taints=unknown), T0 + 5)] == [
        "dedicated", NOT_READY, NOT_READY]
    assert desired_taints(node("True", taints=unknown), T0 + 9) == [{"key": "dedicated", "effect": "NoSchedule"}]
    assert desired_taints(node("Unknown", taints=unknown), T0 + 9) is None  # timeAdded kept


def test_eviction_after_toleration_seconds():
    taints = [{"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": iso(T0)}]
    default = [{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]
    assert eviction_time(pod("a"), taints) == T0  # no toleration: at once
    assert eviction_time(pod("b", tolerations=default), taints) == T0 + 300
    assert eviction_time(pod("c", tolerations=[{"operator": "Exists"}]), taints) is None  # a DaemonSet's
    n = node("Unknown", taints=taints)
    due, nxt = pods_to_evict([pod("a"), pod("b", tolerations=default), pod("x", node_name="k8s-w0")],
                             {"k8s-w1": n}, now=T0 + 1)
    assert [p["metadata"]["name"] for p in due] == ["a"] and nxt == T0 + 300
    gone = pod("d")
    gone["metadata"]["deletionTimestamp"] = iso(T0)
    assert pods_to_evict([gone], {"k8s-w1": n}, now=T0 + 1) == ([], None)


def test_pods_of_a_not_ready_node_are_marked_not_ready():
    nodes = {"k8s-w1": node("Unknown"), "k8s-w0": node("True", name="k8s-w0")}
    out = pods_to_mark_not_ready([pod("a"), pod("b", ready=False), pod("c", node_name="k8s-w0")], nodes)
    assert [p["metadata"]["name"] for p in out] == ["a"]


class FakeCluster:
    """Records the controller's writes (the Cluster interface: mutate, delete, event)."""

    def __init__(self):
        self.writes, self.deleted, self.events = [], [], []

    def mutate(self, kind, name, namespace, fn, *, sub=None, current=None):
        import copy

        obj = copy.deepcopy(current)
        fn(obj)
        self.writes.append((kind, name, sub, obj))
        return obj

    def delete(self, kind, name, namespace, uid=None):
        self.deleted.append((kind, namespace, name))
        return True

    def event(self, obj, reason, message, type_="Normal", component=""):
        self.events.append((reason, component))


def test_the_controller_pass_on_a_node_whose_kubelet_stopped():
    from testbed.k8s.nodelifecycle import NodeLifecycle

    c = FakeCluster()
    default = [{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]
    ps = [pod("plain"), pod("web", tolerations=default), pod("ok", node_name="k8s-w0")]
    leases = [{"metadata": {"name": "k8s-w1", "namespace": "kube-node-lease"}, **lease(T0 + 5)}]
    now = [T0 + 10]
    ctl = NodeLifecycle(c, clock=lambda: now[0])
    # first pass: both nodes heartbeat in time, nothing to write
    assert ctl.reconcile([node(beat=T0), node(beat=T0 + 10, name="k8s-w0")], ps, leases) is None
    assert c.writes == [] and c.deleted == []
    now[0] = T0 + 60  # 55 s since k8s-w1's Lease: more than the 40 s grace period
    nxt = ctl.reconcile([node(beat=T0), node(beat=T0 + 60, name="k8s-w0")], ps, leases)
    kinds = [(k, n, sub) for k, n, sub, _ in c.writes]
    assert kinds == [("Node", "k8s-w1", "status"), ("Node", "k8s-w1", None), ("Pod", "plain", "status"),
                     ("Pod", "web", "status")]
    tainted = c.writes[1][3]["spec"]["taints"]
    assert [(t["key"], t["effect"]) for t in tainted] == [(UNREACHABLE, "NoSchedule"), (UNREACHABLE, "NoExecute")]
    assert c.deleted == [("Pod", "default", "plain")] and nxt == T0 + 60 + 300
    assert ("NodeNotReady", "node-controller") in c.events and ("TaintManagerEviction", "taint-controller") in c.events


def test_pods_are_marked_not_ready_only_when_their_node_leaves_ready():
    """A node that was never Ready (its CNI not installed yet) leaves its pods alone; one that
    turns NotReady after being Ready gets them marked once; a new controller (no previous
    pass) marks none."""
    from testbed.k8s.nodelifecycle import NodeLifecycle

    c = FakeCluster()
    now = [T0 + 1]
    ctl = NodeLifecycle(c, clock=lambda: now[0])
    ps = [pod("a")]
    ctl.reconcile([node("False", beat=T0)], ps, [])
    assert [w[:3] for w in c.writes if w[0] == "Pod"] == []
    ctl.reconcile([node("True", beat=T0)], ps, [])
    c.writes.clear()
    ctl.reconcile([node("False", beat=T0)], ps, [])
    assert [w[:3] for w in c.writes if w[0] == "Pod"] == [("Pod", "a", "status")]
    c.writes.clear()
    ctl.reconcile([node("False", beat=T0)], ps, [])  # still NotReady: not again
    assert [w[:3] for w in c.writes if w[0] == "Pod"] == []


def test_evictions_wait_for_toleration_seconds_then_happen():
    from testbed.k8s.nodelifecycle import NodeLifecycle

    c = FakeCluster()
    now = [T0 + 50]
    ctl = NodeLifecycle(c, clock=lambda: now[0], grace=4.0)
    short = [{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 2}]
    forever = [{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute"}]
    ps = [pod("short", tolerations=short), pod("forever", tolerations=forever)]
    taints = [{"key": UNREACHABLE, "effect": "NoSchedule"},
              {"key": UNREACHABLE, "effect": "NoExecute", "timeAdded": iso(T0 + 50)}]
    unknown = node("Unknown", beat=T0, taints=taints)
    assert ctl.reconcile([unknown], ps, []) == T0 + 52 and c.deleted == []
    now[0] = T0 + 52
    assert ctl.reconcile([unknown], ps, []) is None
    assert c.deleted == [("Pod", "default", "short")]


def test_controller_manager_flags_default_to_kubernetes_and_take_durations():
    from testbed.k8s import controllers

    p = controllers._duration
    assert p("40s") == 40.0 and p("500ms") == 0.5 and p("1m") == 60.0
    with pytest.raises(Exception, match="invalid duration"):
        p("forty")
    assert controllers.GRACE_PERIOD == 40.0 and controllers.NODE_MONITOR_PERIOD == 5.0


def test_daemonset_pods_keep_running_on_an_unreachable_node():
    """An unreachable node's NoSchedule taint keeps new DaemonSet pods off it, but a pod
    already running there stays (only NoExecute taints count for it, and the DaemonSet
    controller's tolerations cover not-ready/unreachable NoExecute)."""
    from testbed.k8s.controllers import daemon_nodes

    taints = [{"key": UNREACHABLE, "effect": "NoSchedule"}, {"key": UNREACHABLE, "effect": "NoExecute"}]
    nodes = [{"metadata": {"name": "w1"}, "spec": {"taints": taints}}]
    ds = {"spec": {"template": {"spec": {"containers": []}}}}
    assert daemon_nodes(ds, nodes) == []
    assert daemon_nodes(ds, nodes, {"w1"}) == ["w1"]
    nodes[0]["spec"]["taints"].append({"key": "evict-all", "effect": "NoExecute"})
    assert daemon_nodes(ds, nodes, {"w1"}) == []


def test_kubelet_terminal_pods_and_ready_status():
    from testbed.k8s.kubelet import pod_ready_status, terminal

    assert terminal({"status": {"phase": "Failed"}}) and terminal({"status": {"phase": "Succeeded"}})
    assert not terminal({"status": {"phase": "Running"}}) and not terminal({})
    assert pod_ready_status(pod("a")) == "True" and pod_ready_status(pod("b", ready=False)) == "False"
    assert pod_ready_status({"status": {}}) is None
