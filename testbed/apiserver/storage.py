"""The API server's storage: Kubernetes objects as JSON under ``/registry/`` in etcd,
with one etcd watch fanned out to every API watcher (kube-apiserver's watch cache).

- ``resourceVersion`` is the key's etcd mod revision; an update is a CAS on it.
- :class:`WatchHub` loads ``/registry/`` once, then follows one etcd watch; it keeps the
  decoded objects (so lists and DELETED events need no second decode) and a window of
  recent events, from which API watches starting at a recent resourceVersion are served.
- Lists are consistent reads: a keys-only range read at the current (or requested)
  revision says which objects exist and at which revision; objects the hub already
  holds at that revision are not read again.

etcd is reached with ``datastore.etcd_aio.AsyncEtcdClient``: keep-alive connections
and the hub's watch stream on the event loop (no thread pool: its hand-offs cost more
CPU than the calls).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from datastore import errors as ds_errors
from datastore.etcd import b64, kv_from_json, prefix_end
from datastore.etcd_aio import AsyncEtcdClient

log = logging.getLogger("apiserver.storage")

REGISTRY = "/registry/"


class Entry:
    """One stored object at one revision; ``obj`` is shared and must not be mutated."""

    __slots__ = ("key", "rev", "obj", "_raw", "create_rev")

    def __init__(self, key: str, rev: int, obj: dict, create_rev: int = 0):
        self.key, self.rev, self.obj, self.create_rev = key, rev, obj, create_rev
        self._raw: bytes | None = None

    @property
    def raw(self) -> bytes:
        """The object's JSON (with its resourceVersion), encoded once."""
        if self._raw is None:
            self._raw = json.dumps(self.obj, separators=(",", ":")).encode()
        return self._raw


def decode(key: str, value: bytes, rev: int, create_rev: int = 0) -> Entry:
    """An :class:`Entry` from a stored value (resourceVersion set to ``rev``)."""
    obj = json.loads(value)
    obj.setdefault("metadata", {})["resourceVersion"] = str(rev)
    return Entry(key, rev, obj, create_rev)


def encode(obj: dict) -> bytes:
    """The stored form of an object: JSON without resourceVersion."""
    meta = obj.get("metadata") or {}
    rv = meta.pop("resourceVersion", None)
    try:
        return json.dumps(obj, separators=(",", ":")).encode()
    finally:
        if rv is not None:
            meta["resourceVersion"] = rv


@dataclass
class WatchEvent:
    """A change seen by the hub: ``type`` ADDED/MODIFIED/DELETED."""

    type: str
    key: str
    entry: Entry  # for DELETED: the last state, with rev = the deletion revision
    rev: int
    prev: Entry | None = None  # for MODIFIED: the state before (selector transitions)


class Gone(Exception):
    """A resourceVersion older than what can be served (compacted, or before the window)."""


class ShuttingDown(Exception):
    """Put on every subscription when the API server stops: its watch ends at once, as
    kube-apiserver ends watches on SIGTERM (``--shutdown-watch-termination-grace-period``
    defaults to 0); the client re-watches wherever it can."""


#: the field the hub indexes its watches of a bucket by: kube-apiserver's watch cache indexes
#: pods by ``spec.nodeName`` (pkg/registry/core/pod/storage: the cacher's IndexerFuncs,
#: ``NodeNameTriggerFunc``), so a pod's event reaches only the watches selecting its node (one
#: kubelet's), not every kubelet's watch to be filtered there
INDEXED_FIELDS = {"pods": "spec.nodeName"}


def index_value(bucket: str, fields: list[tuple[str, str, str]]) -> str | None:
    """The value a watch's field selector pins its bucket's indexed field to (``pods`` and
    ``spec.nodeName=w0``: ``w0``; ``spec.nodeName=``: ``""``, unbound pods), None when it does
    not pin it (the watch is offered every event of its bucket)."""
    path = INDEXED_FIELDS.get(bucket)
    if path is None:
        return None
    for field, op, value in fields:
        if field == path and op == "=":
            return value
    return None


def _field(obj: dict, path: str) -> str:
    v: Any = obj
    for part in path.split("."):
        v = v.get(part) if isinstance(v, dict) else None
    return "" if v is None else str(v)


def event_index_values(ev: WatchEvent, path: str) -> set[str]:
    """The indexed field's values an event concerns: the object's, and before a MODIFIED its
    previous state's too (a pod bound to w0 leaves the ``spec.nodeName=`` selection and enters
    ``spec.nodeName=w0``'s: both watches must see it)."""
    out = {_field(ev.entry.obj, path)}
    if ev.prev is not None:
        out.add(_field(ev.prev.obj, path))
    return out


class Subscription:
    """One API watch's feed of hub events under ``prefix`` (``index``: the value its field
    selector pins the bucket's :data:`INDEXED_FIELDS` field to, see :func:`index_value`)."""

    def __init__(self, hub: WatchHub, prefix: str, accept: Callable[[WatchEvent], bool] | None = None,
                 api_watch: bool = False, after: int = 0, index: str | None = None):
        self.hub, self.prefix, self.accept = hub, prefix, accept
        self.after = after  # events at or before this revision are not this watch's
        self.bucket = bucket_of(prefix, partial=True)
        self.index = index if self.bucket in INDEXED_FIELDS else None
        self.api_watch = api_watch  # a client's watch (ended at shutdown), not the server's own feed
        self.queue: asyncio.Queue[WatchEvent | Exception] = asyncio.Queue()

    def offer(self, ev: WatchEvent) -> None:
        """Queue ``ev`` if it is this watch's: after its start revision, under its prefix, in its
        index (if indexed) and accepted by its filter."""
        if self.index is not None and self.index not in event_index_values(ev, INDEXED_FIELDS[self.bucket]):
            return
        # (a watch may start from a revision the hub has not processed yet: the client got it
        # from a write that etcd answered before the hub's stream delivered it)
        if ev.rev > self.after and ev.key.startswith(self.prefix) and (self.accept is None or self.accept(ev)):
            self.queue.put_nowait(ev)

    def close(self) -> None:
        self.hub.subscribers.discard(self)
        b = self.hub.buckets.get(self.bucket) if self.index is None else \
            self.hub.indexed.get((self.bucket, self.index))
        if b is not None:
            b.discard(self)


def bucket_of(path: str, partial: bool = False) -> str:
    """The first segment under /registry/ of a key (``pods`` of /registry/pods/ns/name), by
    which the hub offers an event only to the subscriptions that can want it; "" for a
    subscription prefix that does not end its first segment (/registry/, /registry/po),
    offered every event."""
    rest = path[len(REGISTRY):] if path.startswith(REGISTRY) else ""
    i = rest.find("/")
    return rest[:i] if i >= 0 else ("" if partial else rest)


class Storage:
    """Async CRUD on etcd for the API server."""

    def __init__(self, endpoints: list[str], timeout: float = 5.0, connections: int = 16):
        self.etcd = AsyncEtcdClient(endpoints, timeout=timeout, max_connections=connections)
        self.endpoints = endpoints
        self.hub = WatchHub(self)

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One etcd gateway request (``/v3/kv/compaction`` ...): its answer's document."""
        return await self.etcd.call(path, body)

    # --- reads ---------------------------------------------------------------------------
    async def get(self, key: str) -> Entry | None:
        kv = await self.etcd.get(key)
        if kv is None:
            return None
        cached = self.hub.cache.get(key)
        if cached is not None and cached.rev == kv.mod_revision:
            return cached
        return decode(key, kv.value, kv.mod_revision, kv.create_revision)

    async def _range(self, prefix: str, start: str | None, revision: int | None, keys_only: bool,
                     limit: int = 0) -> tuple[list[Any], int, bool]:
        body: dict[str, Any] = {"key": b64(start or prefix), "range_end": b64(prefix_end(prefix))}
        if revision:
            body["revision"] = str(revision)
        if keys_only:
            body["keys_only"] = True
        if limit:
            body["limit"] = str(limit)
        doc = await self.etcd.call("/v3/kv/range", body)
        if "header" not in doc:  # every etcd answer has one: without it, it is no list (never "empty")
            raise ds_errors.DatastoreUnavailable(f"etcd answered a range of {prefix} without a header")
        return doc.get("kvs") or [], int(doc["header"].get("revision", 0)), bool(doc.get("more"))

    async def list(self, prefix: str, revision: int | None = None, start: str | None = None,
                   limit: int = 0) -> tuple[list[Entry], int, bool]:
        """Objects under ``prefix`` at ``revision`` (None: now), from key ``start``, at most
        ``limit`` (0: all). Returns (entries sorted by key, revision read at, more)."""
        kvs, rev, more = await self._range(prefix, start, revision, True, limit)
        cache = self.hub.cache
        out: list[Entry | None] = []
        missing = False
        for d in kvs:
            key = base64.b64decode(d["key"]).decode()
            mod = int(d.get("mod_revision", 0))
            e = cache.get(key)
            if e is not None and e.rev == mod:
                out.append(e)
            else:
                out.append(None)
                missing = True
        if missing:
            full, _, _ = await self._range(prefix, start, revision or rev, False, limit)
            byk = {}
            for d in full:
                kv = kv_from_json(d)
                byk[kv.key] = kv
            for i, d in enumerate(kvs):
                if out[i] is None:
                    kv = byk[base64.b64decode(d["key"]).decode()]
                    out[i] = decode(kv.key, kv.value, kv.mod_revision, kv.create_revision)
        return [e for e in out if e is not None], rev, more

    async def revision(self) -> int:
        return await self.etcd.revision()

    async def check_not_compacted(self, rev: int) -> None:
        """Raise :class:`Gone` if etcd compacted ``rev``."""
        try:
            await self.etcd.call("/v3/kv/range", {"key": b64("\0"), "count_only": True, "revision": str(rev)})
        except ds_errors.Compacted as exc:
            raise Gone(str(exc)) from None
        except ds_errors.DatastoreError as exc:
            if "future revision" not in str(exc):
                raise

    # --- writes ---------------------------------------------------------------------------
    async def create(self, key: str, obj: dict) -> int:
        """Store a new object; raises datastore AlreadyExists. Returns its revision."""
        return await self.etcd.create(key, encode(obj))

    async def update(self, key: str, obj: dict, rev: int) -> int:
        """CAS write at ``rev``; raises datastore Conflict / NotFound."""
        return await self.etcd.update(key, encode(obj), rev)

    async def delete(self, key: str, rev: int) -> int:
        """CAS delete at ``rev``; returns the deletion revision."""
        return await self.etcd.delete(key, rev)

    async def put_raw(self, key: str, value: bytes) -> int:
        return await self.etcd.put(key, value)

    async def create_raw(self, key: str, value: bytes) -> int:
        return await self.etcd.create(key, value)

    async def delete_raw(self, key: str) -> bool:
        return await self.etcd.delete(key, None) > 0

    async def list_raw(self, prefix: str) -> list[Any]:
        kvs, _ = await self.etcd.list(prefix)
        return kvs

    def close(self) -> None:
        self.hub.stop()
        self.etcd.close()


class WatchHub:
    """One etcd watch on /registry/, fanned out to API watches (the watch cache)."""

    WINDOW = 20000

    def __init__(self, storage: Storage):
        self.storage = storage
        self.cache: dict[str, Entry] = {}
        self.events: collections.deque[WatchEvent] = collections.deque(maxlen=self.WINDOW)
        self.subscribers: set[Subscription] = set()
        self.buckets: dict[str, set[Subscription]] = {}  # the unindexed subscribers by bucket_of(prefix)
        self.indexed: dict[tuple[str, str], set[Subscription]] = {}  # the indexed ones by (bucket, value)
        self.start_rev = 0  # events after this revision are all seen (while in the window)
        self.rev = 0  # last revision processed
        self._task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ready = asyncio.Event()
        self._progress: list[tuple[int, asyncio.Future]] = []
        self.closing = False  # the API server is stopping: watches end (ShuttingDown)

    async def start(self) -> None:
        """Load /registry and start following etcd."""
        self.loop = asyncio.get_running_loop()
        delay = 0.2
        while True:  # etcd may come up after us (as kube-apiserver, wait for it)
            try:
                await self._load()
                break
            except ds_errors.DatastoreUnavailable as exc:
                log.warning("waiting for etcd: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        self._task = asyncio.create_task(self._follow(), name="watch-hub")
        self.ready.set()

    async def _load(self) -> None:
        kvs, rev = await self.storage.etcd.list(REGISTRY)
        cache = {}
        for kv in kvs:
            try:
                cache[kv.key] = decode(kv.key, kv.value, kv.mod_revision, kv.create_revision)
            except ValueError:
                log.warning("undecodable object at %s skipped", kv.key)
        self.cache = cache
        self.start_rev = self.rev = rev
        self.events.clear()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _follow(self) -> None:
        while True:
            try:
                async for batch in self.storage.etcd.watch(REGISTRY, self.rev + 1):
                    decoded = []
                    for ev in batch:
                        if ev.type == "DELETE":
                            decoded.append((ev.kv.key, None, ev.kv.mod_revision, 0))
                        else:
                            try:
                                e = decode(ev.kv.key, ev.kv.value, ev.kv.mod_revision, ev.kv.create_revision)
                            except ValueError:
                                continue
                            decoded.append((ev.kv.key, e, ev.kv.mod_revision, ev.kv.create_revision))
                    if decoded:
                        self._apply(decoded)
            except ds_errors.Compacted:
                log.warning("watch hub fell behind a compaction; reloading /registry")
                try:
                    await asyncio.wait_for(self._reload(), 30)
                except Exception:  # noqa: BLE001
                    await asyncio.sleep(0.5)
            except Exception as exc:  # etcd restarting: follow again from where we were
                log.info("watch hub: etcd watch broke (%s); resuming from %d", exc, self.rev + 1)
                await asyncio.sleep(0.2)

    async def _reload(self) -> None:
        await self._load()
        for sub in list(self.subscribers):
            sub.queue.put_nowait(Gone("the watch cache was reset after an etcd compaction"))
        self.subscribers.clear()
        self.buckets.clear()
        self.indexed.clear()

    def _apply(self, decoded: list[tuple[str, Entry | None, int, int]]) -> None:
        for key, e, rev, create_rev in decoded:
            if rev <= self.rev:
                continue
            if e is None:
                old = self.cache.pop(key, None)
                if old is None:
                    self.rev = rev
                    continue
                obj = dict(old.obj)
                obj["metadata"] = dict(old.obj.get("metadata") or {}, resourceVersion=str(rev))
                ev = WatchEvent("DELETED", key, Entry(key, rev, obj), rev)
            else:
                prev = self.cache.get(key)
                typ = "ADDED" if create_rev == rev or prev is None else "MODIFIED"
                self.cache[key] = e
                ev = WatchEvent(typ, key, e, rev, prev if typ == "MODIFIED" else None)
            self.rev = rev
            self.events.append(ev)
            if len(self.events) == self.WINDOW:
                self.start_rev = self.events[0].rev - 1
            bucket = bucket_of(key)
            for group in (self.buckets.get(bucket), self.buckets.get("")):
                if group:
                    for sub in list(group):
                        sub.offer(ev)
            path = INDEXED_FIELDS.get(bucket)
            if path is not None and self.indexed:
                for value in event_index_values(ev, path):
                    group = self.indexed.get((bucket, value))
                    if group:
                        for sub in list(group):
                            sub.offer(ev)
        if self._progress:
            keep = []
            for want, fut in self._progress:
                if self.rev >= want:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    keep.append((want, fut))
            self._progress = keep

    def subscribe(self, prefix: str, after: int, accept: Callable[[WatchEvent], bool] | None = None,
                  api_watch: bool = False, index: str | None = None) -> Subscription:
        """A subscription receiving every event under ``prefix`` with revision > ``after``
        (replayed from the window first). Raises :class:`Gone` if the window does not reach back.
        ``api_watch``: a client's watch, ended by :meth:`end_watches`. ``index``: the value the
        watch's field selector pins its bucket's indexed field to (:func:`index_value`): it is
        offered only the events of objects with that value, now or before."""
        if after < self.start_rev:
            raise Gone(f"too old resource version: {after} ({self.start_rev + 1})")
        sub = Subscription(self, prefix, accept, api_watch, after, index)
        for ev in self._since(after):
            sub.offer(ev)
        if self.closing and api_watch:
            sub.queue.put_nowait(ShuttingDown("the API server is shutting down"))
        self.subscribers.add(sub)
        if sub.index is None:
            self.buckets.setdefault(sub.bucket, set()).add(sub)
        else:
            self.indexed.setdefault((sub.bucket, sub.index), set()).add(sub)
        return sub

    def _since(self, after: int) -> list[WatchEvent]:
        """The window's events with revision > ``after``, oldest first (read from the newest
        end: a watch usually starts near the head, and the window holds up to WINDOW events)."""
        out = []
        for ev in reversed(self.events):
            if ev.rev <= after:
                break
            out.append(ev)
        out.reverse()
        return out

    def end_watches(self) -> None:
        """The API server is stopping: every client's watch, open or opened from now on, ends."""
        self.closing = True
        for sub in list(self.subscribers):
            if sub.api_watch:
                sub.queue.put_nowait(ShuttingDown("the API server is shutting down"))

    async def wait_for(self, rev: int, timeout: float = 3.0) -> bool:
        """Wait until the hub processed revision ``rev`` (or any later event)."""
        if self.rev >= rev:
            return True
        fut = asyncio.get_running_loop().create_future()
        self._progress.append((rev, fut))
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False
