"""kube-controllers' pure decisions: node cleanup, IPAM leak candidates, grace, handles."""

from __future__ import annotations

import pytest

from agent.kubecontrollers.config import ConfigError, from_env
from agent.kubecontrollers.controller import pod_ips
from agent.kubecontrollers.decisions import (
    LEAKED,
    NODE_GONE,
    UNKNOWN,
    VALID,
    Allocation,
    CalicoNodeRef,
    ClusterView,
    classify,
    next_expiry,
    nodes_to_clean,
    plan_gc,
)

pytestmark = pytest.mark.unit


def pod_alloc(ip: str, pod: str, handle: str | None = None, node: str = "w0", seq: int = 1) -> Allocation:
    return Allocation(ip=ip, block="192.168.1.0/24", handle_id=handle or f"k8s-pod-network.{pod}",
                      attrs={"node": node, "pod": pod, "namespace": "default"}, sequence=seq)


VIEW = ClusterView(nodes={"m", "w0"}, pods={("default", "live"): ("192.168.1.2",),
                                            ("default", "starting"): ()})


def test_classify():
    assert classify(pod_alloc("192.168.1.2", "live"), VIEW) == VALID
    assert classify(pod_alloc("192.168.1.3", "starting"), VIEW) == VALID  # no IP reported yet
    assert classify(pod_alloc("192.168.1.4", "gone"), VIEW) == LEAKED
    assert classify(pod_alloc("192.168.1.5", "live"), VIEW) == LEAKED  # pod now has another IP
    assert classify(pod_alloc("192.168.1.6", "live", node="w9"), VIEW) == NODE_GONE
    tunnel = Allocation("192.168.1.0", "192.168.1.0/24", "ipip-tunnel-addr-w0",
                        {"node": "w0", "type": "ipipTunnelAddress"})
    assert classify(tunnel, VIEW) == VALID
    gone_tunnel = Allocation("192.168.2.0", "192.168.2.0/24", "ipip-tunnel-addr-w1", {})
    assert classify(gone_tunnel, VIEW) == NODE_GONE
    assert classify(Allocation("192.168.1.9", "192.168.1.0/24", "other", {}), VIEW) == UNKNOWN


def test_leak_released_only_after_grace():
    a = pod_alloc("192.168.1.4", "gone")
    p1 = plan_gc([a], VIEW, {}, now=100.0, grace=10.0)
    assert p1.candidates == {a.key: 100.0} and not p1.release_leaked
    p2 = plan_gc([a], VIEW, p1.candidates, now=109.0, grace=10.0)
    assert not p2.release_leaked and p2.candidates[a.key] == 100.0
    p3 = plan_gc([a], VIEW, p2.candidates, now=110.0, grace=10.0)
    assert p3.release_leaked == [a]
    assert next_expiry(p2.candidates, 10.0) == 110.0 and next_expiry({}, 10.0) is None


def test_candidate_that_becomes_valid_is_forgotten():
    a = pod_alloc("192.168.1.2", "live")
    p = plan_gc([a], VIEW, {a.key: 0.0}, now=1000.0, grace=10.0)
    assert p.candidates == {} and not p.release_leaked


def test_handle_with_one_live_ip_is_kept():
    live = pod_alloc("192.168.1.2", "live", handle="h")
    leaked = pod_alloc("192.168.1.7", "gone", handle="h")
    p = plan_gc([live, leaked], VIEW, {leaked.key: 0.0}, now=1000.0, grace=10.0)
    assert not p.release_leaked and leaked.key in p.candidates


def test_reallocated_address_restarts_the_clock():
    old = pod_alloc("192.168.1.4", "gone", seq=1)
    new = pod_alloc("192.168.1.4", "gone", seq=7)
    p = plan_gc([new], VIEW, {old.key: 0.0}, now=1000.0, grace=10.0)
    assert not p.release_leaked and p.candidates == {new.key: 1000.0}


def test_deleted_node_ips_go_at_once_and_zero_grace_keeps_leaks():
    a = pod_alloc("192.168.1.6", "x", node="w9")
    b = pod_alloc("192.168.1.4", "gone")
    p = plan_gc([a, b], VIEW, {b.key: 0.0}, now=1e6, grace=0)
    assert p.release_now == [a] and not p.release_leaked and b.key in p.candidates


def test_a_calico_node_not_yet_in_kubernetes_keeps_its_addresses():
    """calico-node registered before its kubelet: its tunnel address and pod addresses wait
    for the node's cleanup decision instead of going at once."""
    tunnel = Allocation("192.168.2.0", "192.168.2.0/24", "ipip-tunnel-addr-w2",
                        {"node": "w2", "type": "ipipTunnelAddress"})
    pod = pod_alloc("192.168.2.5", "p", node="w2")
    p = plan_gc([tunnel, pod], VIEW, {}, now=1.0, grace=10.0, calico_nodes={"m", "w0", "w2"})
    assert p.release_now == [] and p.candidates == {}
    p = plan_gc([tunnel, pod], VIEW, {}, now=1.0, grace=10.0, calico_nodes={"m", "w0"})
    assert p.release_now == [tunnel, pod]  # no Calico Node either: gone at once


def test_nodes_to_clean():
    refs = [CalicoNodeRef("m", "m"), CalicoNodeRef("w1", "w1"), CalicoNodeRef("w2", "w2"),
            CalicoNodeRef("calico-w3", "w3")]
    out, missing = nodes_to_clean(refs, {"m"}, deleted={"w1"}, missing_since={}, now=10.0, min_missing=2.0)
    assert out == ["w1"] and missing == {"w2": 10.0, "calico-w3": 10.0}
    refs = [r for r in refs if r.name != "w1"]  # cleaned up
    out, missing = nodes_to_clean(refs, {"m", "w3"}, deleted=set(), missing_since=missing, now=12.0,
                                  min_missing=2.0)
    assert out == ["w2"] and missing == {}


def test_config_from_env():
    cfg = from_env({"ENABLED_CONTROLLERS": "node,policy", "LEAK_GRACE_PERIOD": "1m30s"})
    assert cfg.enabled == ["node", "policy"] and cfg.leak_grace_period == 90.0
    assert cfg.gc_interval == 45.0 and cfg.unimplemented == []
    assert from_env({"ENABLED_CONTROLLERS": "profile,namespace,node"}).enabled == ["namespace", "node"]
    assert from_env({}).leak_grace_period == 900.0
    assert from_env({"RECONCILER_PERIOD": "500ms"}).reconciler_period == 0.5
    with pytest.raises(ConfigError, match="LEAK_GRACE_PERIOD='15 min'"):
        from_env({"LEAK_GRACE_PERIOD": "15 min"})
    with pytest.raises(ConfigError, match="Invalid controller 'nodes' provided"):
        from_env({"ENABLED_CONTROLLERS": "nodes"})
    with pytest.raises(ConfigError, match="Invalid controller 'loadbalancer'"):  # v3.30+ only
        from_env({"ENABLED_CONTROLLERS": "node,loadbalancer"})
    with pytest.raises(ConfigError, match="flannelmigration with other"):
        from_env({"ENABLED_CONTROLLERS": "node,flannelmigration"})
    with pytest.raises(ConfigError, match="DATASTORE_TYPE"):
        from_env({"DATASTORE_TYPE": "consul"})
    kdd = from_env({"DATASTORE_TYPE": "kubernetes", "ENABLED_CONTROLLERS": "node,policy,namespace"})
    assert not kdd.delete_nodes and kdd.not_needed == ["policy", "namespace"]
    assert from_env({"ETCD_ENDPOINTS": "http://127.0.0.1:2379"}).delete_nodes


def test_pod_ips():
    assert pod_ips({"status": {"podIPs": [{"ip": "1.2.3.4"}], "podIP": "1.2.3.4"}}) == ("1.2.3.4",)
    assert pod_ips({"status": {"podIP": "1.2.3.5"}}) == ("1.2.3.5",)
    assert pod_ips({"spec": {"hostNetwork": True}, "status": {"podIP": "172.30.0.11"}}) == ()
    assert pod_ips({}) == ()


def test_pods_of_a_deleted_node_keep_their_ips_until_they_are_deleted():
    """A deleted Kubernetes Node whose pods still exist (their kubelet stopped them, pod GC
    has not deleted them yet) keeps their addresses, its tunnel address and its Calico data:
    a new pod must never get an address a pod still holds."""
    from agent.kubecontrollers.decisions import busy_deleted_nodes

    view = ClusterView(nodes={"m", "w0"}, pods={("default", "orphan"): ("192.168.2.5",),
                                                ("default", "starting"): ()})
    orphan = pod_alloc("192.168.2.5", "orphan", node="w1")
    gone = pod_alloc("192.168.2.6", "deleted", node="w1")
    tunnel = Allocation("192.168.2.0", "192.168.2.0/24", "ipip-tunnel-addr-w1",
                        {"node": "w1", "type": "ipipTunnelAddress"})
    assert busy_deleted_nodes([orphan, gone, tunnel], view) == {"w1"}
    assert classify(orphan, view, {"w1"}) == VALID
    assert classify(gone, view, {"w1"}) == NODE_GONE  # its pod is gone: released at once
    assert classify(tunnel, view, {"w1"}) == VALID
    plan = plan_gc([orphan, gone, tunnel], view, {}, now=1.0, grace=900.0)
    assert plan.release_now == [gone]
    # w1's Calico Node is kept meanwhile: that keeps only the addresses its pods still hold
    assert plan_gc([orphan, gone, tunnel], view, {}, now=1.0, grace=900.0,
                   calico_nodes={"m", "w0", "w1"}).release_now == [gone]
    refs = [CalicoNodeRef("w1", "w1")]
    out, missing = nodes_to_clean(refs, {"m", "w0"}, deleted={"w1"}, missing_since={}, now=5.0, min_missing=2.0,
                                  busy={"w1"})
    assert out == [] and missing == {"w1": 5.0}
    # the orphan deleted (pod GC): everything of w1 goes
    view.pods.pop(("default", "orphan"))
    assert busy_deleted_nodes([orphan, tunnel], view) == set()
    assert plan_gc([orphan, tunnel], view, {}, now=8.0, grace=900.0).release_now == [orphan, tunnel]
    out, _ = nodes_to_clean(refs, {"m", "w0"}, deleted=set(), missing_since=missing, now=8.0, min_missing=2.0)
    assert out == ["w1"]
