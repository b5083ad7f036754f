"""The watch hub's fan-out (pure logic): an event reaches exactly the subscriptions whose
prefix it is under, also when they are indexed by their first /registry/ segment."""

from __future__ import annotations

import pytest

from testbed.apiserver.storage import Entry, WatchHub, bucket_of

pytestmark = pytest.mark.unit


def drain(sub) -> list[str]:
    out = []
    while not sub.queue.empty():
        ev = sub.queue.get_nowait()
        out.append(f"{ev.type} {ev.key}")
    return out


def test_each_event_reaches_the_subscriptions_under_whose_prefix_it_is():
    hub = WatchHub(storage=None)  # type: ignore[arg-type]
    subs = {p: hub.subscribe(p, 0) for p in ("/registry/", "/registry/pods/", "/registry/pods/ns1/",
                                             "/registry/po", "/registry/minions/", "/registry/services/endpoints/",
                                             "/registry/crd.projectcalico.org/ippools/")}
    only_a = hub.subscribe("/registry/pods/", 0, accept=lambda ev: ev.key.endswith("/a"))
    keys = ["/registry/pods/ns1/a", "/registry/pods/ns2/b", "/registry/minions/n1",
            "/registry/services/specs/default/kubernetes", "/registry/services/endpoints/default/kubernetes",
            "/registry/crd.projectcalico.org/ippools/default", "/registry/crd.projectcalico.org/felixconfigurations/d"]
    hub._apply([(k, Entry(k, rev, {"metadata": {}}), rev, rev) for rev, k in enumerate(keys, 1)])
    hub._apply([("/registry/pods/ns1/a", None, 8, 0)])
    got = {p: drain(s) for p, s in subs.items()}
    assert got["/registry/"] == [f"ADDED {k}" for k in keys] + ["DELETED /registry/pods/ns1/a"]
    assert got["/registry/pods/"] == got["/registry/po"] == [
        "ADDED /registry/pods/ns1/a", "ADDED /registry/pods/ns2/b", "DELETED /registry/pods/ns1/a"]
    assert got["/registry/pods/ns1/"] == ["ADDED /registry/pods/ns1/a", "DELETED /registry/pods/ns1/a"]
    assert got["/registry/minions/"] == ["ADDED /registry/minions/n1"]
    assert got["/registry/services/endpoints/"] == ["ADDED /registry/services/endpoints/default/kubernetes"]
    assert got["/registry/crd.projectcalico.org/ippools/"] == ["ADDED /registry/crd.projectcalico.org/ippools/default"]
    assert drain(only_a) == ["ADDED /registry/pods/ns1/a", "DELETED /registry/pods/ns1/a"]
    subs["/registry/pods/"].close()
    hub._apply([("/registry/pods/ns1/c", Entry("/registry/pods/ns1/c", 9, {"metadata": {}}), 9, 9)])
    assert drain(subs["/registry/pods/"]) == [] and drain(subs["/registry/pods/ns1/"]) == ["ADDED /registry/pods/ns1/c"]
    assert subs["/registry/pods/"] not in hub.buckets["pods"] and subs["/registry/pods/"] not in hub.subscribers


def test_bucket_of():
    assert bucket_of("/registry/pods/ns/name") == "pods"
    assert bucket_of("/registry/pods/", partial=True) == "pods"
    assert bucket_of("/registry/", partial=True) == bucket_of("/registry/po", partial=True) == ""
    assert bucket_of("/registry/minions") == "minions"


def test_the_garbage_collector_is_woken_by_what_can_give_it_work():
    from testbed.apiserver.gc import needs_pass
    from testbed.apiserver.storage import WatchEvent

    def ev(typ: str, meta: dict, prev_meta: dict | None = None) -> WatchEvent:
        prev = Entry("/registry/x", 1, {"metadata": prev_meta}) if prev_meta is not None else None
        return WatchEvent(typ, "/registry/x", Entry("/registry/x", 2, {"metadata": meta}), 2, prev)

    refs = [{"uid": "u1", "kind": "Node", "name": "n1", "apiVersion": "v1"}]
    assert needs_pass(ev("DELETED", {}))
    assert needs_pass(ev("MODIFIED", {"deletionTimestamp": "t", "ownerReferences": refs}, {"ownerReferences": refs}))
    assert needs_pass(ev("ADDED", {"ownerReferences": refs}))
    assert needs_pass(ev("MODIFIED", {"ownerReferences": refs}, {}))
    assert needs_pass(ev("MODIFIED", {"ownerReferences": refs}, {"ownerReferences": refs + refs}))
    assert not needs_pass(ev("MODIFIED", {"ownerReferences": refs, "resourceVersion": "2"},
                             {"ownerReferences": refs, "resourceVersion": "1"}))  # a lease renewal
    assert not needs_pass(ev("ADDED", {"name": "no-owner"}))


def test_a_watch_from_a_revision_the_hub_has_not_reached_gets_only_later_events():
    """A client may watch from the revision etcd gave its write before the hub's stream has
    delivered that write: the write itself must not reach the watch (CI saw an extra ADDED)."""
    hub = WatchHub(storage=None)  # type: ignore[arg-type]
    key = "/registry/pods/sel/p"
    hub._apply([("/registry/pods/sel/q", Entry("/registry/pods/sel/q", 1, {"metadata": {}}), 1, 1)])
    sub = hub.subscribe("/registry/pods/", after=2)  # the hub is at 1: revision 2 not seen yet
    hub._apply([(key, Entry(key, 2, {"metadata": {}}), 2, 2), (key, Entry(key, 3, {"metadata": {}}), 3, 2)])
    hub._apply([(key, None, 4, 0)])
    assert drain(sub) == [f"MODIFIED {key}", f"DELETED {key}"]


def test_index_value_is_what_a_field_selector_pins_the_indexed_field_to():
    from testbed.apiserver.storage import index_value

    assert index_value("pods", [("spec.nodeName", "=", "w0")]) == "w0"
    assert index_value("pods", [("status.phase", "!=", "Failed"), ("spec.nodeName", "=", "")]) == ""
    assert index_value("pods", [("spec.nodeName", "!=", "w0")]) is None  # every node but one: not indexed
    assert index_value("pods", [("status.phase", "=", "Running")]) is None
    assert index_value("pods", []) is None
    assert index_value("services", [("spec.nodeName", "=", "w0")]) is None  # only pods are indexed


def test_a_pods_events_reach_the_watches_of_its_old_and_new_node_only():
    """Indexed by spec.nodeName (as kube-apiserver's watch cache): a kubelet's watch is offered
    its node's pods' events, the unbound-pods watch loses the pod at its binding, and watches
    without the index (another selector, none) still see everything."""
    hub = WatchHub(storage=None)  # type: ignore[arg-type]
    subs = {name: hub.subscribe("/registry/pods/", 0, index=value)
            for name, value in (("w0", "w0"), ("w1", "w1"), ("unbound", ""))}
    subs["all"] = hub.subscribe("/registry/pods/", 0)
    key = "/registry/pods/ns/p"

    def pod(rev: int, node: str | None) -> Entry:
        return Entry(key, rev, {"metadata": {"name": "p"}, "spec": {"nodeName": node} if node else {}})

    hub._apply([(key, pod(1, None), 1, 1)])  # created: Pending, unbound
    hub._apply([(key, pod(2, "w0"), 2, 1)])  # bound to w0
    hub._apply([(key, pod(3, "w0"), 3, 1)])  # its status written by w0's kubelet
    hub._apply([(key, None, 4, 0)])  # deleted
    other = "/registry/pods/ns/q"
    hub._apply([(other, Entry(other, 5, {"metadata": {}, "spec": {"nodeName": "w1"}}), 5, 5)])
    got = {name: drain(s) for name, s in subs.items()}
    assert got["w0"] == [f"MODIFIED {key}", f"MODIFIED {key}", f"DELETED {key}"]
    assert got["unbound"] == [f"ADDED {key}", f"MODIFIED {key}"]  # (the handler turns the 2nd into DELETED)
    assert got["w1"] == [f"ADDED {other}"]
    assert got["all"] == [f"ADDED {key}", f"MODIFIED {key}", f"MODIFIED {key}", f"DELETED {key}", f"ADDED {other}"]
    assert subs["w0"] in hub.indexed[("pods", "w0")] and subs["w0"] not in hub.buckets.get("pods", set())
    subs["w0"].close()
    assert subs["w0"] not in hub.indexed[("pods", "w0")] and subs["w0"] not in hub.subscribers
    # a watch started later is replayed the window's events after its revision, through its index
    late = hub.subscribe("/registry/pods/", 2, index="w0")
    assert drain(late) == [f"MODIFIED {key}", f"DELETED {key}"]
    assert drain(hub.subscribe("/registry/pods/", 4, index="w1")) == [f"ADDED {other}"]
    assert drain(hub.subscribe("/registry/pods/", 5)) == []
