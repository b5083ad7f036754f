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
