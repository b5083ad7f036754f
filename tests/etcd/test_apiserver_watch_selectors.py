"""A watch with a field or label selector sees an object that starts matching as ADDED and
one that stops matching as DELETED (kube-apiserver's filtered watches), which informers with
selectors (the scheduler's, the kubelet's) rely on."""

from __future__ import annotations

import threading

import pytest

from testbed.poll import wait_for

pytestmark = pytest.mark.etcd


def test_selector_transitions_are_added_and_deleted(apiserver):
    from kubeclient import AlreadyExists

    api = apiserver.client()
    try:
        api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "sel"}})
    except AlreadyExists:
        pass
    pod = api.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"tier": "a"}},
                      "spec": {"containers": [{"name": "c", "image": "busybox"}]}}, "sel")
    rv = pod["metadata"]["resourceVersion"]
    seen: dict[str, list[str]] = {"fields": [], "labels": []}
    watches = {"fields": api.watch("v1", "pods", "sel", resource_version=rv, field_selector="spec.nodeName=w0"),
               "labels": api.watch("v1", "pods", "sel", resource_version=rv, label_selector="tier=a")}

    def follow(name: str) -> None:
        for typ, _obj in watches[name]:
            if typ != "BOOKMARK":
                seen[name].append(typ)

    threads = [threading.Thread(target=follow, args=(n,), daemon=True) for n in watches]
    for t in threads:
        t.start()
    # bound to w0: enters the field selection (the scheduler's binding)
    api.request("POST", "/api/v1/namespaces/sel/pods/p/binding",
                {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"},
                 "target": {"apiVersion": "v1", "kind": "Node", "name": "w0"}})
    # relabelled: leaves the label selection
    api.patch("v1", "pods", "p", {"metadata": {"labels": {"tier": "b"}}}, "sel")
    wait_for(lambda: dict(seen), lambda s: s["fields"] == ["ADDED", "MODIFIED"] and s["labels"] == [
        "MODIFIED", "DELETED"], timeout=10, what="the selector transitions")
    for w in watches.values():
        w.close()


def test_node_selected_watches_see_a_pod_enter_and_leave_their_node(apiserver):
    """The kubelet's and the unbound-pods watches (``spec.nodeName=<node>``, ``spec.nodeName=``,
    which the API server indexes by node): binding a pod is DELETED for the unbound watch and
    ADDED for its node's, its deletion DELETED there; another node's watch sees nothing."""
    from kubeclient import AlreadyExists

    api = apiserver.client()
    try:
        api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "selnode"}})
    except AlreadyExists:
        pass
    pod = api.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                      "spec": {"containers": [{"name": "c", "image": "busybox"}]}}, "selnode")
    rv = pod["metadata"]["resourceVersion"]
    seen: dict[str, list[str]] = {"w0": [], "w1": [], "unbound": []}
    selectors = {"w0": "spec.nodeName=w0", "w1": "spec.nodeName=w1", "unbound": "spec.nodeName="}
    watches = {n: api.watch("v1", "pods", "selnode", resource_version=rv, field_selector=sel)
               for n, sel in selectors.items()}

    def follow(name: str) -> None:
        for typ, obj in watches[name]:
            if typ != "BOOKMARK":
                seen[name].append(f"{typ} {(obj.get('spec') or {}).get('nodeName') or '-'}")

    threads = [threading.Thread(target=follow, args=(n,), daemon=True) for n in watches]
    for t in threads:
        t.start()
    try:
        api.request("POST", "/api/v1/namespaces/selnode/pods/p/binding",
                    {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"},
                     "target": {"apiVersion": "v1", "kind": "Node", "name": "w0"}})
        api.patch("v1", "pods", "p", {"metadata": {"labels": {"x": "y"}}}, "selnode")
        api.delete("v1", "pods", "p", "selnode", grace_period=0)
        wait_for(lambda: {k: list(v) for k, v in seen.items()},
                 lambda s: s["w0"] == ["ADDED w0", "MODIFIED w0", "DELETED w0"] and s["unbound"] == ["DELETED w0"],
                 timeout=10, what="the node selections' transitions")
        assert seen["w1"] == []
    finally:
        for w in watches.values():
            w.close()
        try:
            api.delete("v1", "namespaces", "selnode")
        except Exception:  # noqa: BLE001 - already gone
            pass
