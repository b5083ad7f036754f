"""The scheduler's placement (pure): unpinned pods spread over the Ready nodes."""

from __future__ import annotations

import pytest

from testbed.k8s.scheduler import plan_bindings, unschedulable_message

pytestmark = pytest.mark.unit


def node(name: str, ready: bool = True, taints: list[dict] | None = None) -> dict:
    taints = list(taints or []) + ([] if ready else [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"}])
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {"taints": taints} if taints else {},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def pod(name: str, at: str, node_name: str | None = None, owner: str | None = "web-abc",
        phase: str | None = None) -> dict:
    meta: dict = {"name": name, "namespace": "default", "creationTimestamp": at}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": owner,
                                    "controller": True}]
    p: dict = {"metadata": meta, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}
    if node_name:
        p["spec"]["nodeName"] = node_name
    if phase:
        p["status"] = {"phase": phase}
    return p


def placed(plan: list[tuple[dict, str | None]]) -> dict[str, str | None]:
    return {p["metadata"]["name"]: n for p, n in plan}


CP = node("cp", taints=[{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}])


def test_a_burst_of_pods_is_spread_over_the_ready_workers_least_pods_first():
    nodes = [CP, node("w0"), node("w1"), node("w2", ready=False)]
    pods = [pod(f"web-{i}", f"2026-01-01T00:00:0{i}Z") for i in range(5)]
    got = placed(plan_bindings(pods, nodes))
    assert sorted(got.values()) == ["w0", "w0", "w0", "w1", "w1"]
    assert got["web-0"] == "w0" and got["web-1"] == "w1"  # oldest first, alternating


def test_pods_already_bound_count_and_finished_ones_do_not():
    nodes = [node("w0"), node("w1")]
    pods = [pod("old-0", "2026-01-01T00:00:00Z", "w0"), pod("old-1", "2026-01-01T00:00:01Z", "w0"),
            pod("done", "2026-01-01T00:00:02Z", "w1", phase="Succeeded"),
            pod("done2", "2026-01-01T00:00:02Z", "w1", phase="Failed"),
            pod("new-0", "2026-01-01T00:01:00Z"), pod("new-1", "2026-01-01T00:01:01Z"),
            pod("new-2", "2026-01-01T00:01:02Z")]
    got = placed(plan_bindings(pods, nodes))
    assert got == {"new-0": "w1", "new-1": "w1", "new-2": "w0"}


def test_pods_of_a_controller_spread_even_where_other_pods_weigh_the_nodes_down():
    # w1 runs three unrelated pods, w0 one pod of the same ReplicaSet: the next replica
    # goes to w1 (spreading the ReplicaSet) before load decides
    nodes = [node("w0"), node("w1")]
    pods = [pod("web-0", "2026-01-01T00:00:00Z", "w0")]
    pods += [pod(f"db-{i}", "2026-01-01T00:00:00Z", "w1", owner="db-xyz") for i in range(3)]
    pods.append(pod("web-1", "2026-01-01T00:00:05Z"))
    assert placed(plan_bindings(pods, nodes)) == {"web-1": "w1"}


def test_no_feasible_node_is_reported_and_deleting_or_bound_pods_are_left_alone():
    nodes = [CP, node("w0", ready=False)]
    deleting = pod("going", "2026-01-01T00:00:00Z")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:09Z"
    pods = [pod("web-0", "2026-01-01T00:00:01Z"), deleting, pod("pinned", "2026-01-01T00:00:02Z", "w0")]
    assert placed(plan_bindings(pods, nodes)) == {"web-0": None}


def test_unschedulable_message_counts_the_reasons_as_kube_scheduler_words_them():
    nodes = [CP, node("w0", ready=False), node("w1", ready=False)]
    msg = unschedulable_message(pod("web-0", "t0"), nodes)
    assert msg.startswith("0/3 nodes are available: 1 node(s) had untolerated taint "
                          "{node-role.kubernetes.io/control-plane: }, 2 node(s) had untolerated taint "
                          "{node.kubernetes.io/not-ready: }."), msg
    assert msg.endswith("preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.")


def test_pods_of_another_scheduler_are_left_alone():
    p = pod("web-0", "t0")
    p["spec"]["schedulerName"] = "my-scheduler"
    assert plan_bindings([p], [node("w0")]) == []


def test_pods_whose_bindings_are_in_flight_are_assumed_bound_and_not_planned_again():
    """kube-scheduler's assume/bind: a pass does not wait for the bindings it started; the next
    pass counts a pod being bound on its node and does not place it a second time. A binding
    that fails is forgotten, so the pod is placed again."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from testbed.k8s.scheduler import Scheduler, assume

    release = threading.Event()

    class FakeCluster:
        def __init__(self) -> None:
            self.pods: list[dict] = []
            self.binds: list[tuple[str, str]] = []
            self.refuse: set[str] = set()
            self.marked = 0

        def list(self, kind: str) -> list[dict]:
            return list(self.pods) if kind == "Pod" else [node("w0"), node("w1")]

        def bind(self, p: dict, n: str) -> bool:
            release.wait(5)
            self.binds.append((p["metadata"]["name"], n))
            return p["metadata"]["name"] not in self.refuse

        def event(self, *a, **kw) -> None:
            pass

        def mark(self) -> None:
            self.marked += 1

    c = FakeCluster()
    sched = Scheduler(c)  # type: ignore[arg-type]
    for i in range(2):
        c.pods.append(pod(f"web-{i}", f"t{i}"))
        c.pods[-1]["metadata"]["uid"] = f"u{i}"
    assert sched.schedule() == 2  # started, not waited for (the binds block)
    c.pods.append(pod("web-2", "t2"))
    c.pods[-1]["metadata"]["uid"] = "u2"
    assert sched.schedule() == 1  # only the new pod: the others are assumed on w0 and w1
    assert assume(c.pods, sched.assumed)[2]["spec"]["nodeName"] in ("w0", "w1")
    c.refuse.add("web-2")
    release.set()
    sched.pool.shutdown(wait=True)
    assert sorted(n for n, _ in c.binds) == ["web-0", "web-1", "web-2"]
    assert sorted(sched.assumed) == ["u0", "u1"] and not sched.busy and c.marked == 1
    # the cache catches up with the two bindings: they are no longer assumptions
    for p, n in zip(c.pods[:2], ("w0", "w1"), strict=True):
        p["spec"]["nodeName"] = n
    c.refuse.clear()
    sched.pool = ThreadPoolExecutor(max_workers=1)
    assert sched.schedule() == 1  # web-2 again, its failed binding forgotten
    sched.pool.shutdown(wait=True)
    assert sorted(sched.assumed) == ["u2"] and [n for n, _ in c.binds].count("web-2") == 2
