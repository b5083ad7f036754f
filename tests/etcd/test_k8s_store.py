"""The Kubernetes object store and controllers against a real etcd."""

from __future__ import annotations

import ipaddress
import json
import threading

import pytest

from testbed.k8s import errors
from testbed.k8s.controllers import ControllerManager, reconcile_endpoints, schedule
from testbed.k8s.podstatus import node_object
from testbed.k8s.store import Store
from testbed.poll import wait_for

pytestmark = pytest.mark.etcd


@pytest.fixture
def store(etcd_endpoints) -> Store:
    s = Store.from_endpoints(etcd_endpoints)
    s.ensure_cluster("192.168.0.0/16", "10.96.0.0/12")
    return s


def pod(name: str, node: str | None = None, labels: dict | None = None, ns: str = "default") -> dict:
    spec: dict = {"containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 80, "name": "http"}]}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
            "spec": spec}


def add_node(store: Store, name: str, ready: bool = True, ip: str = "172.30.0.11") -> dict:
    return store.create(node_object(name, ip, {"kubernetes.io/hostname": name}, [], {"kubeletVersion": "v1.28.15"},
                                    {"pods": "110"}, ready, "2026-01-01T00:00:00Z"))


def test_objects_live_under_registry_keys_with_mod_revision_as_resource_version(store):
    created = store.create(pod("web"))
    kv = store.etcd.get("/registry/pods/default/web")
    assert kv is not None and json.loads(kv.value)["metadata"]["name"] == "web"
    assert created["metadata"]["resourceVersion"] == str(kv.mod_revision)
    assert store.get("Pod", "web")["metadata"]["uid"] == created["metadata"]["uid"]
    add_node(store, "k8s-w0")
    assert store.etcd.get("/registry/minions/k8s-w0") is not None
    assert {n["metadata"]["name"] for n in store.list("Namespace")} >= {"default", "kube-system", "calico-system"}


def test_update_is_compare_and_swap(store):
    first = store.create(pod("web"))
    stale = json.loads(json.dumps(first))
    first["metadata"]["labels"] = {"a": "b"}
    store.update(first)
    stale["metadata"]["labels"] = {"a": "c"}
    with pytest.raises(errors.Conflict, match='pods "web"'):
        store.update(stale)
    assert store.get("Pod", "web")["metadata"]["labels"] == {"a": "b"}


def test_create_duplicate_and_missing_namespace_and_unknown_node_are_clear_errors(store):
    store.create(pod("web"))
    with pytest.raises(errors.AlreadyExists, match='pods "web" already exists'):
        store.create(pod("web"))
    with pytest.raises(errors.NotFound, match='namespaces "nope" not found'):
        store.create(pod("web", ns="nope"))
    add_node(store, "k8s-w0")
    with pytest.raises(errors.Invalid, match='node "k8s-w9" does not exist.*k8s-w0'):
        store.create(pod("pinned", node="k8s-w9"))
    assert store.find("Pod", "pinned") is None


def test_apply_reports_created_configured_unchanged(store):
    obj = pod("web", labels={"app": "web"})
    assert store.apply(obj)[1] == "created"
    assert store.apply(obj)[1] == "unchanged"
    obj["metadata"]["labels"] = {"app": "web2"}
    assert store.apply(obj)[1] == "configured"
    assert store.get("Pod", "web")["metadata"]["labels"] == {"app": "web2"}


def test_apply_keeps_what_the_system_set_and_pod_specs_are_immutable(store):
    add_node(store, "k8s-w0")
    obj = pod("web", labels={"app": "web"})
    store.apply(obj)
    bound = store.get("Pod", "web")
    bound["spec"]["nodeName"] = "k8s-w0"  # the scheduler binds it, the kubelet annotates it
    bound["metadata"]["annotations"] = {"calicolab.io/pids": "{}"}
    store.update(bound)
    obj["metadata"]["annotations"] = {"note": "x"}
    again, action = store.apply(obj)
    assert action == "configured" and again["spec"]["nodeName"] == "k8s-w0"
    assert again["metadata"]["annotations"] == {"calicolab.io/pids": "{}", "note": "x"}
    obj["spec"]["containers"][0]["image"] = "busybox"
    with pytest.raises(errors.Invalid, match="Forbidden: pod updates.*spec.containers"):
        store.apply(obj)


def test_services_get_a_unique_cluster_ip_in_the_service_cidr_released_on_delete(store):
    ips = set()
    for i in range(5):
        svc = store.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"s{i}"},
                            "spec": {"selector": {"app": "x"}, "ports": [{"port": 80}]}})
        ip = svc["spec"]["clusterIP"]
        assert ipaddress.ip_address(ip) in ipaddress.ip_network("10.96.0.0/12")
        ips.add(ip)
    assert len(ips) == 5
    taken = store.get("Service", "s0")["spec"]["clusterIP"]
    with pytest.raises(errors.Invalid, match="already allocated"):
        store.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "dup"},
                      "spec": {"clusterIP": taken, "ports": [{"port": 80}]}})
    store.delete("Service", "s0")
    again = store.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "dup"},
                          "spec": {"clusterIP": taken, "ports": [{"port": 80}]}})
    assert again["spec"]["clusterIP"] == taken


def test_deleting_a_pod_on_a_node_marks_it_for_its_kubelet(store):
    add_node(store, "k8s-w0")
    store.create(pod("web", node="k8s-w0"))
    store.delete("Pod", "web")
    marked = store.get("Pod", "web")
    assert marked["metadata"]["deletionTimestamp"]
    store.delete("Pod", "web", force=True)
    assert store.find("Pod", "web") is None


def test_scheduler_spreads_over_ready_untainted_nodes(store):
    add_node(store, "w0")
    add_node(store, "w1")
    add_node(store, "sick", ready=False)
    for i in range(4):
        store.create(pod(f"p{i}"))
    schedule(store, store.list("Pod"), store.list("Node"))
    placed = [p["spec"].get("nodeName") for p in store.list("Pod")]
    assert sorted(placed) == ["w0", "w0", "w1", "w1"]


def test_endpoints_follow_ready_pods_matching_the_selector(store):
    store.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                  "spec": {"selector": {"app": "web"}, "ports": [{"port": 8080, "targetPort": "http"}]}})
    for name, ip, ready in (("a", "192.168.1.2", True), ("b", "192.168.2.2", False), ("c", "192.168.3.2", True)):
        p = store.create(pod(name, labels={"app": "web" if name != "c" else "other"}))
        p["status"] = {"podIP": ip, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
        store.update(p)
    reconcile_endpoints(store, store.list("Service"), store.list("Endpoints"), store.list("Pod"))
    ep = store.get("Endpoints", "web")
    assert ep["subsets"] == [{
        "ports": [{"port": 80, "protocol": "TCP"}],
        "addresses": [{"ip": "192.168.1.2", "nodeName": None, "targetRef": {
            "kind": "Pod", "name": "a", "namespace": "default", "uid": store.get("Pod", "a")["metadata"]["uid"]}}],
        "notReadyAddresses": [{"ip": "192.168.2.2", "nodeName": None, "targetRef": {
            "kind": "Pod", "name": "b", "namespace": "default", "uid": store.get("Pod", "b")["metadata"]["uid"]}}],
    }]
    store.delete("Service", "web")
    reconcile_endpoints(store, store.list("Service"), store.list("Endpoints"), store.list("Pod"))
    assert store.find("Endpoints", "web") is None


def test_controller_manager_runs_deployments_and_node_cidrs(store):
    add_node(store, "k8s-w0")
    add_node(store, "k8s-w1", ip="172.30.0.12")
    store.create({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "nginx"},
                  "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "nginx"}},
                           "template": {"metadata": {"labels": {"app": "nginx"}},
                                        "spec": {"nodeName": "k8s-w0", "containers": [{"name": "nginx", "image": "nginx"}]}}}})
    stop = threading.Event()
    cm = ControllerManager(store)
    t = threading.Thread(target=cm.run, args=(stop,), daemon=True)
    t.start()
    try:
        pods = wait_for(lambda: store.list("Pod"), lambda ps: len(ps) == 3, timeout=10, what="3 nginx pods")
        assert all(p["metadata"]["name"].startswith("nginx-") and p["spec"]["nodeName"] == "k8s-w0" for p in pods)
        assert all(p["metadata"]["labels"]["app"] == "nginx" and p["metadata"]["labels"]["pod-template-hash"] for p in pods)
        rs = store.list("ReplicaSet")
        assert len(rs) == 1 and rs[0]["metadata"]["name"] == f"nginx-{pods[0]['metadata']['labels']['pod-template-hash']}"
        assert rs[0]["spec"]["replicas"] == 3 and rs[0]["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
        assert all(p["metadata"]["ownerReferences"][0] == {
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs[0]["metadata"]["name"],
            "uid": rs[0]["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True} for p in pods)
        assert all(p["metadata"]["name"].startswith(rs[0]["metadata"]["name"] + "-") for p in pods)
        cidrs = wait_for(lambda: sorted(n["spec"].get("podCIDR", "") for n in store.list("Node")),
                         lambda c: all(c), timeout=10, what="node pod CIDRs")
        assert cidrs == ["192.168.0.0/24", "192.168.1.0/24"]
        d = store.get("Deployment", "nginx")
        d["spec"]["replicas"] = 1
        d["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:1.25"
        store.update(d)
        live = wait_for(lambda: [p for p in store.list("Pod") if not p["metadata"].get("deletionTimestamp")],
                        lambda ps: len(ps) == 1 and ps[0]["spec"]["containers"][0]["image"] == "nginx:1.25",
                        timeout=10, what="one pod of the new template")
        sets = {r["metadata"]["name"]: r["spec"]["replicas"] for r in store.list("ReplicaSet")}
        assert sets == {rs[0]["metadata"]["name"]: 0,
                        f"nginx-{live[0]['metadata']['labels']['pod-template-hash']}": 1}
        wait_for(lambda: store.get("Deployment", "nginx").get("status", {}),
                 lambda st: st.get("replicas") == 1 and st.get("updatedReplicas") == 1, timeout=10,
                 what="deployment status counting the new pod")
        store.delete("Deployment", "nginx")
        wait_for(lambda: [p for p in store.list("Pod") if not p["metadata"].get("deletionTimestamp")],
                 lambda ps: not ps, timeout=10, what="pods of the deleted deployment to be deleted")
        assert store.list("ReplicaSet") == []
    finally:
        stop.set()
        t.join(timeout=5)


def test_daemonset_puts_one_pod_on_every_node_even_not_ready(store):
    add_node(store, "k8s-m")
    store.mutate("Node", "k8s-m", None, lambda n: n["spec"].update(
        taints=[{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]))
    add_node(store, "k8s-w0", ready=False)
    ds = {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "calico-node", "namespace": "kube-system"},
          "spec": {"selector": {"matchLabels": {"k8s-app": "calico-node"}},
                   "template": {"metadata": {"labels": {"k8s-app": "calico-node"}},
                                "spec": {"hostNetwork": True, "tolerations": [{"operator": "Exists"}],
                                         "containers": [{"name": "calico-node", "image": "calico/node:v3.28.1"}]}}}}
    store.create(ds)
    stop = threading.Event()
    t = threading.Thread(target=ControllerManager(store).run, args=(stop,), daemon=True)
    t.start()
    try:
        pods = wait_for(lambda: store.list("Pod", "kube-system"), lambda ps: len(ps) == 2, timeout=10,
                        what="one calico-node pod per node")
        assert sorted(p["spec"]["nodeName"] for p in pods) == ["k8s-m", "k8s-w0"]
        assert all(p["metadata"]["name"].startswith("calico-node-") for p in pods)
        wait_for(lambda: store.get("DaemonSet", "calico-node", "kube-system").get("status", {}),
                 lambda st: st.get("desiredNumberScheduled") == 2 and st.get("currentNumberScheduled") == 2,
                 timeout=10, what="daemonset status")
        add_node(store, "k8s-w1", ip="172.30.0.12")
        wait_for(lambda: sorted(p["spec"]["nodeName"] for p in store.list("Pod", "kube-system")),
                 lambda names: names == ["k8s-m", "k8s-w0", "k8s-w1"], timeout=10, what="a pod on the new node")
        store.delete("DaemonSet", "calico-node", "kube-system")
        wait_for(lambda: [p for p in store.list("Pod", "kube-system") if not p["metadata"].get("deletionTimestamp")],
                 lambda ps: not ps, timeout=10, what="daemonset pods deleted with it")
    finally:
        stop.set()
        t.join(timeout=5)
