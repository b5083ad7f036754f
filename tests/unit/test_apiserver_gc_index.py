"""The garbage collector's owner index (testbed.apiserver.gc.OwnerIndex), fed watch events."""

from __future__ import annotations

from testbed.apiserver.gc import OwnerIndex, needs_pass
from testbed.apiserver.storage import Entry, WatchEvent


def obj(uid: str, owners: tuple[str, ...] = (), deleting: bool = False) -> dict:
    meta: dict = {"uid": uid, "ownerReferences": [{"uid": o, "kind": "X", "name": o} for o in owners]}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-05T00:00:00Z"
    return {"metadata": meta}


def ev(typ: str, key: str, o: dict, prev: dict | None = None) -> WatchEvent:
    return WatchEvent(typ, key, Entry(key, 1, o), 1, Entry(key, 0, prev) if prev is not None else None)


def test_an_owner_that_goes_leaves_its_dependents_to_collect():
    idx = OwnerIndex()
    idx.apply(ev("ADDED", "/registry/daemonsets/ds", obj("ds-uid")))
    idx.apply(ev("ADDED", "/registry/pods/a", obj("a", ("ds-uid",))))
    idx.apply(ev("ADDED", "/registry/pods/b", obj("b", ("ds-uid", "other"))))
    assert idx.missing_owners() == ["other"]
    assert idx.dependent_keys("ds-uid") == ["/registry/pods/a", "/registry/pods/b"]
    idx.apply(ev("DELETED", "/registry/daemonsets/ds", obj("ds-uid")))
    assert sorted(idx.missing_owners()) == ["ds-uid", "other"]
    idx.apply(ev("DELETED", "/registry/pods/a", obj("a", ("ds-uid",))))
    idx.apply(ev("DELETED", "/registry/pods/b", obj("b", ("ds-uid", "other"))))
    assert idx.missing_owners() == [] and idx.dependents == {} and idx.uid_key == {}


def test_changed_owner_references_and_deletion_marks_follow_the_events():
    idx = OwnerIndex()
    idx.apply(ev("ADDED", "/registry/pods/a", obj("a", ("rs1",))))
    idx.apply(ev("MODIFIED", "/registry/pods/a", obj("a", ("rs2",)), prev=obj("a", ("rs1",))))
    assert idx.dependent_keys("rs1") == [] and idx.dependent_keys("rs2") == ["/registry/pods/a"]
    idx.apply(ev("MODIFIED", "/registry/pods/a", obj("a", ("rs2",), deleting=True)))
    assert idx.deleting == {"/registry/pods/a"}
    idx.apply(ev("MODIFIED", "/registry/pods/a", obj("a")))  # orphaned: no owners left
    assert idx.dependents == {} and idx.deleting == set()
    assert idx.uid_key == {"a": "/registry/pods/a"}


def test_only_deletions_and_new_owner_references_ask_for_a_pass():
    assert needs_pass(ev("ADDED", "/registry/pods/a", obj("a", ("rs",))))
    assert not needs_pass(ev("ADDED", "/registry/leases/l", obj("l")))
    assert not needs_pass(ev("MODIFIED", "/registry/pods/a", obj("a", ("rs",)), prev=obj("a", ("rs",))))
    assert needs_pass(ev("DELETED", "/registry/pods/a", obj("a")))


def test_no_event_is_lost_to_a_wait_that_timed_out():
    """The collector waits for events with a timeout; an event queued after a wait ended
    must still reach the index (a read left pending by a timed-out wait used to take it)."""
    import asyncio
    from types import SimpleNamespace

    from testbed.apiserver.gc import Collector

    async def main() -> None:
        col = Collector(h=None)
        col._kick = asyncio.Event()
        sub = SimpleNamespace(queue=asyncio.Queue())
        await col._wait(sub, 0.02)  # nothing came: returns at its timeout
        sub.queue.put_nowait(ev("MODIFIED", "/registry/namespaces/ns", obj("ns-uid", deleting=True)))
        await asyncio.sleep(0)  # a read still pending would run now and take the event
        col._drain(sub)
        assert col.index.deleting == {"/registry/namespaces/ns"}
        col.kick()  # a kick with an event queued: both are taken
        sub.queue.put_nowait(ev("ADDED", "/registry/leases/l", obj("l")))
        await col._wait(sub, 5.0)
        assert col.index.uid_key.get("l") == "/registry/leases/l"

    asyncio.run(main())
