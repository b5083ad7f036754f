"""Garbage collection by ownerReferences and namespace deletion (kube-controller-manager's
garbagecollector and namespace controllers, run inside the API server).

- Background: an object all of whose owners are gone is deleted (owners are checked
  against etcd, not the cache, before anything is deleted).
- Foreground: an owner being deleted with the ``foregroundDeletion`` finalizer has its
  dependents deleted (in foreground too); when none remain the finalizer is removed,
  which completes the owner's deletion.
- Orphan: an owner with the ``orphan`` finalizer has itself removed from its dependents'
  ownerReferences, then the finalizer is removed.
- Namespaces being deleted: every namespaced object in them is deleted; once none remain
  the ``kubernetes`` finalizer is removed from ``spec.finalizers`` and the namespace goes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from testbed.apiserver.objects import deep
from testbed.apiserver.status import APIError
from testbed.apiserver.storage import Entry

log = logging.getLogger("apiserver.gc")


def needs_pass(ev: Any) -> bool:
    """Whether a watch event can give the collector work: a deletion, an object being
    deleted, or owner references that are new (an added object's, or changed ones). A
    status or lease update that keeps its owner references (most of a lab's start-up
    traffic: node leases, pod status) waits for the periodic pass like anything else."""
    meta = ev.entry.obj.get("metadata") or {}
    if ev.type == "DELETED" or meta.get("deletionTimestamp"):
        return True
    refs = meta.get("ownerReferences")
    if not refs:
        return False
    if ev.type != "MODIFIED" or ev.prev is None:
        return True
    return refs != (ev.prev.obj.get("metadata") or {}).get("ownerReferences")


class OwnerIndex:
    """The owner references of the API server's cached objects, kept from its watch events
    (pure): which key holds each UID, which keys name each owner UID, which objects are being
    deleted. A pass of the collector looks only at owners that are gone or being deleted
    (kube-controller-manager's garbage collector keeps such a graph from its informers
    likewise) instead of every object of the cache."""

    def __init__(self) -> None:
        self.uid_key: dict[str, str] = {}
        self.key_uid: dict[str, str] = {}
        self.owners: dict[str, tuple[str, ...]] = {}  # key -> the owner UIDs it names
        self.dependents: dict[str, set[str]] = {}  # owner UID -> the keys naming it
        self.deleting: set[str] = set()  # keys of objects with a deletionTimestamp

    def put(self, key: str, obj: dict) -> None:
        """``key`` now holds ``obj`` (added or modified)."""
        self.remove(key)
        meta = obj.get("metadata") or {}
        uid = meta.get("uid")
        if uid:
            self.uid_key[uid] = key
            self.key_uid[key] = uid
        owners = tuple(dict.fromkeys(r["uid"] for r in meta.get("ownerReferences") or []
                                     if isinstance(r, dict) and r.get("uid")))
        if owners:
            self.owners[key] = owners
            for u in owners:
                self.dependents.setdefault(u, set()).add(key)
        if meta.get("deletionTimestamp"):
            self.deleting.add(key)

    def remove(self, key: str) -> None:
        """``key`` is gone (deleted)."""
        uid = self.key_uid.pop(key, None)
        if uid is not None and self.uid_key.get(uid) == key:
            del self.uid_key[uid]
        for u in self.owners.pop(key, ()):
            deps = self.dependents.get(u)
            if deps is not None:
                deps.discard(key)
                if not deps:
                    del self.dependents[u]
        self.deleting.discard(key)

    def apply(self, ev: Any) -> None:
        """Apply one watch event (:class:`testbed.apiserver.storage.WatchEvent`)."""
        if ev.type == "DELETED":
            self.remove(ev.key)
        else:
            self.put(ev.key, ev.entry.obj)

    def missing_owners(self) -> list[str]:
        """Owner UIDs that some object names and no cached object has."""
        return [u for u in self.dependents if u not in self.uid_key]

    def dependent_keys(self, uid: str) -> list[str]:
        """The keys of the objects naming ``uid`` as an owner (sorted)."""
        return sorted(self.dependents.get(uid, ()))


class Collector:
    """The in-server garbage collector and namespace finalizer."""

    def __init__(self, h: Any):
        self.h = h
        self._kick: asyncio.Event | None = None
        self.index = OwnerIndex()

    def _subscribe(self) -> Any:
        """Subscribe to every change from the hub's revision and index its cache as of that
        revision (no await in between: the two agree)."""
        hub = self.h.storage.hub
        sub = hub.subscribe("/registry/", hub.rev)
        self.index = OwnerIndex()
        for e in hub.cache.values():
            self.index.put(e.key, e.obj)
        return sub

    def _drain(self, sub: Any) -> None:
        """Apply the events already queued to the index (an error stays queued for run)."""
        q = sub.queue
        while q.qsize():
            ev = q.get_nowait()
            if isinstance(ev, Exception):
                q.put_nowait(ev)
                return
            self.index.apply(ev)

    def kick(self) -> None:
        """Ask for a pass soon (after a deletion)."""
        if self._kick is not None:
            self._kick.set()

    async def run(self) -> None:
        self._kick = asyncio.Event()
        sub = self._subscribe()
        try:
            while True:
                self._drain(sub)
                try:
                    await self.sweep()
                except APIError as err:
                    log.info("gc pass: %s", err.message)
                except Exception:  # noqa: BLE001
                    log.exception("gc pass failed")
                # next pass: after a deletion/owner change, or every 2 s (namespace contents, foreground waits)
                await self._wait(sub, 2.0)
                if sub.queue.qsize() and isinstance(sub.queue._queue[-1], Exception):  # type: ignore[attr-defined]
                    sub.close()
                    sub = self._subscribe()
                await asyncio.sleep(0.02)
        finally:
            sub.close()

    async def _wait(self, sub: Any, timeout: float) -> None:
        """Apply watch events to the index until one asks for a pass, a kick comes or
        ``timeout`` seconds pass. Every event taken from the queue is applied: the queue is
        read by tasks this method cancels before it returns (a read left pending, as a
        cancelled ``wait_for`` leaves it, would take the next event where nobody applies it)."""
        assert self._kick is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            get = asyncio.ensure_future(sub.queue.get())
            kick = asyncio.ensure_future(self._kick.wait())
            try:
                done, _ = await asyncio.wait({get, kick}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (get, kick):
                    if not t.done():
                        t.cancel()  # a cancelled Queue.get takes nothing from the queue
            wanted = kick in done
            if wanted:
                self._kick.clear()
            if get in done:  # also when the kick came at once: the index must see every event
                ev = get.result()
                if isinstance(ev, Exception):
                    sub.queue.put_nowait(ev)
                    return
                self.index.apply(ev)
                wanted = wanted or needs_pass(ev)
            if wanted or not done:
                return

    async def sweep(self) -> None:
        """One pass over the owners that are gone or being deleted (:class:`OwnerIndex`)."""
        cache = self.h.storage.hub.cache
        idx = self.index

        def deps(uid: str) -> list[Entry]:
            return [cache[k] for k in idx.dependent_keys(uid) if k in cache]

        deleting = [cache[k] for k in sorted(idx.deleting) if k in cache]
        # namespaces being deleted
        terminating = [e for e in deleting if e.key.startswith("/registry/namespaces/")]
        if terminating:
            entries = list(cache.values())
            for e in terminating:
                await self.finalize_namespace(e, entries)
        # owners gone: their dependents go unless another owner remains (checked in etcd)
        for uid in idx.missing_owners():
            for d in deps(uid):
                await self.maybe_collect(d)
        # owners being deleted (foreground / orphan)
        for owner in deleting:
            ometa = owner.obj.get("metadata") or {}
            uid, fins = ometa.get("uid"), ometa.get("finalizers") or []
            if not uid:
                continue
            if "orphan" in fins:
                for d in deps(uid):
                    await self.drop_owner_ref(d, uid)
            elif "foregroundDeletion" in fins:
                for d in deps(uid):
                    await self.delete(d, "Foreground")
        for e in deleting:
            meta = e.obj.get("metadata") or {}
            fins = meta.get("finalizers") or []
            uid = meta.get("uid")
            live_deps = deps(uid) if uid else []
            if "orphan" in fins:
                if not any(any(r.get("uid") == uid for r in (cache[d.key].obj.get("metadata") or {})
                               .get("ownerReferences") or []) for d in live_deps if d.key in cache):
                    await self.remove_finalizer(e, "orphan")
            elif "foregroundDeletion" in fins and not live_deps:
                await self.remove_finalizer(e, "foregroundDeletion")

    def _rt(self, e: Entry) -> Any:
        return self.h.registry.for_key(e.key)

    async def owner_exists(self, dep: Entry, ref: dict) -> bool:
        """Check an owner against etcd (the cache may not have a just-created owner yet)."""
        api, kind, name = ref.get("apiVersion", ""), ref.get("kind", ""), ref.get("name", "")
        rt = self.h.registry.by_kind(api, kind)
        if rt is None:
            return True  # an owner of a kind we do not serve: never collect on its account
        ns = (dep.obj.get("metadata") or {}).get("namespace") if rt.namespaced else None
        cur = await self.h.storage.get(rt.key(name, ns))
        return cur is not None and (cur.obj.get("metadata") or {}).get("uid") == ref.get("uid")

    async def maybe_collect(self, dep: Entry) -> None:
        refs = [r for r in (dep.obj.get("metadata") or {}).get("ownerReferences") or [] if isinstance(r, dict)]
        for ref in refs:
            if await self.owner_exists(dep, ref):
                return
        await self.delete(dep, "Background")

    async def delete(self, e: Entry, policy: str) -> None:
        rt = self._rt(e)
        if rt is None:
            return
        meta = e.obj.get("metadata") or {}
        if meta.get("deletionTimestamp") and policy == "Background":
            return
        try:
            await self.h.delete_object(rt, meta.get("name", ""), meta.get("namespace"),
                                       {"propagationPolicy": policy})
        except APIError as err:
            if err.code not in (404, 409):
                raise

    async def drop_owner_ref(self, e: Entry, uid: str) -> None:
        rt = self._rt(e)
        for _ in range(5):
            cur = await self.h.storage.get(e.key)
            if cur is None:
                return
            obj = deep(cur.obj)
            refs = [r for r in obj["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
            if len(refs) == len(obj["metadata"].get("ownerReferences") or []):
                return
            if refs:
                obj["metadata"]["ownerReferences"] = refs
            else:
                obj["metadata"].pop("ownerReferences", None)
            try:
                await self.h.update_object(rt, cur, obj, manager="garbage-collector")
                return
            except APIError as err:
                if err.reason != "Conflict":
                    raise

    async def remove_finalizer(self, e: Entry, fin: str) -> None:
        rt = self._rt(e)
        for _ in range(5):
            cur = await self.h.storage.get(e.key)
            if cur is None:
                return
            obj = deep(cur.obj)
            fins = [f for f in obj["metadata"].get("finalizers") or [] if f != fin]
            if fins:
                obj["metadata"]["finalizers"] = fins
            else:
                obj["metadata"].pop("finalizers", None)
            try:
                await self.h.update_object(rt, cur, obj, manager="garbage-collector")
                return
            except APIError as err:
                if err.reason != "Conflict":
                    raise

    async def finalize_namespace(self, ns_entry: Entry, entries: list[Entry]) -> None:
        ns = ns_entry.obj["metadata"]["name"]
        left = 0
        for e in entries:
            rt = self._rt(e)
            if rt is None or not rt.namespaced or (e.obj.get("metadata") or {}).get("namespace") != ns:
                continue
            left += 1
            if not (e.obj.get("metadata") or {}).get("deletionTimestamp"):
                await self.delete(e, "Background")
        if left:
            return
        cur = await self.h.storage.get(ns_entry.key)
        if cur is None:
            return
        obj = deep(cur.obj)
        fins = [f for f in (obj.get("spec") or {}).get("finalizers") or [] if f != "kubernetes"]
        if fins == (obj.get("spec") or {}).get("finalizers"):
            return
        obj.setdefault("spec", {})["finalizers"] = fins
        if not fins:
            obj["spec"].pop("finalizers")
        try:
            await self.h.update_object(self._rt(ns_entry), cur, obj, sub="finalize", manager="namespace-controller")
        except APIError as err:
            if err.code not in (404, 409):
                raise
