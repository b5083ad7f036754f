"""The Calico datastore client (etcdv3 mode): typed get/list/create/update/apply/delete/watch.

Writes are compare-and-swap on the etcd mod revision (``metadata.resourceVersion``).
``watch`` gives a consistent stream: the current state first (ADDED events and
one SYNCED), then changes; it resumes after a disconnect from the last revision
seen and, if that revision was compacted, resyncs by listing and emitting the
difference, so a consumer never misses a change.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from datastore import errors
from datastore.base import Datastore, WatchEvent, _cls, _now, datastore_type
from datastore.etcd import EtcdClient
from datastore.resources import IPAM_PREFIX, V3_PREFIX, Metadata, Resource, kind_for_key

log = logging.getLogger(__name__)

DEFAULT_ENDPOINTS = "http://127.0.0.1:2379"


class Client(Datastore):
    """Typed access to Calico resources in etcd."""

    def __init__(self, endpoints: str | list[str] | None = None, *, timeout: float = 3.0,
                 etcd: EtcdClient | None = None, typha: Any = None):
        self.etcd = etcd or EtcdClient(endpoints or DEFAULT_ENDPOINTS, timeout=timeout)
        #: a :class:`datastore.typha.TyphaClient`: watches (without a start revision) come
        #: from Typha instead of etcd; reads and writes still go to etcd
        self.typha = typha

    #: ``DATASTORE_TYPE`` of this client
    datastore_type = "etcdv3"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, timeout: float = 3.0) -> Datastore:  # type: ignore[override]
        """The datastore client Calico's components build from their environment
        (libcalico-go's apiconfig): ``DATASTORE_TYPE``
        ``etcdv3`` with ``ETCD_ENDPOINTS``, or ``kubernetes`` (a :class:`datastore.kdd.KubeClient`
        from ``KUBECONFIG`` or the in-cluster config). Unset: ``etcdv3`` when ETCD_ENDPOINTS
        is set, else ``kubernetes``."""
        env = dict(os.environ) if env is None else env
        dtype = datastore_type(env)
        if dtype == "kubernetes":
            from datastore.kdd import KubeClient

            return KubeClient.from_env(env, timeout=timeout)
        return cls(env.get("ETCD_ENDPOINTS") or DEFAULT_ENDPOINTS,
                   timeout=timeout)

    def describe(self) -> str:
        """Where the data is (for messages)."""
        return f"etcd at {', '.join(f'http://{h}:{p}' for h, p in self.etcd.endpoints)}"

    # -- reads ---------------------------------------------------------------

    def get(self, kind: str | type[Resource], name: str, namespace: str | None = None) -> Resource:
        """The object ``name``; raises NotFound."""
        cls = _cls(kind)
        key = cls.key_for(name, namespace)
        kv = self.etcd.get(key)
        if kv is None:
            ns = f" in namespace {namespace}" if cls.NAMESPACED and namespace else ""
            raise errors.NotFound(f"{cls.KIND} {name!r}{ns} does not exist")
        return cls.decode_value(kv.key, kv.value, kv.mod_revision)

    def list_with_revision(self, kind: str | type[Resource],
                           namespace: str | None = None) -> tuple[list[Resource], int]:
        """Like :meth:`list`, plus the store revision the list was read at."""
        cls = _cls(kind)
        kvs, rev = self.etcd.list(cls.list_prefix(namespace))
        out = []
        for kv in kvs:
            if cls.ident_from_key(kv.key) is None:
                continue
            out.append(cls.decode_value(kv.key, kv.value, kv.mod_revision))
        return out, rev

    # -- writes --------------------------------------------------------------

    def _write_create(self, obj: Resource) -> Resource:
        md = obj.metadata
        if not obj.MODEL_STORED:
            md.uid = md.uid or str(uuid.uuid4())
            md.creation_timestamp = md.creation_timestamp or _now()
        try:
            rev = self.etcd.create(obj.key(), obj.encode_value())
        except errors.AlreadyExists:
            raise errors.AlreadyExists(f"{obj.ident()} already exists") from None
        md.resource_version = str(rev)
        return obj

    def _write_update(self, obj: Resource, current: Resource | None) -> Resource:
        if current is not None and not obj.MODEL_STORED:
            obj.metadata.uid = obj.metadata.uid or current.metadata.uid
            obj.metadata.creation_timestamp = obj.metadata.creation_timestamp or current.metadata.creation_timestamp
        try:
            rev = self.etcd.update(obj.key(), obj.encode_value(), obj.revision)
        except errors.Conflict:
            raise errors.Conflict(
                f"{obj.ident()} was modified by someone else (resourceVersion {obj.revision} is stale)"
            ) from None
        except errors.NotFound:
            raise errors.NotFound(f"{obj.ident()} does not exist") from None
        obj.metadata.resource_version = str(rev)
        return obj

    def _get_by_key(self, obj: Resource) -> Resource:
        kv = self.etcd.get(obj.key())
        if kv is None:
            raise errors.NotFound(f"{obj.ident()} does not exist")
        return type(obj).decode_value(kv.key, kv.value, kv.mod_revision)

    def delete(self, kind: str | type[Resource], name: str, namespace: str | None = None,
               resource_version: str | int | None = None, uid: str | None = None) -> Resource:
        """Delete and return the object; CAS if ``resource_version`` is given (and only the
        object with ``uid``, if given). Raises NotFound, Conflict."""
        cls = _cls(kind)
        if cls.KIND == "WorkloadEndpoint" and resource_version:
            # the CNI plugin's DEL, with the revision it read as the CAS (which also pins the
            # UID it read): no second read, as KubeClient.delete
            current = cls(metadata=Metadata(name=name, namespace=namespace or "default", uid=uid,
                                            resource_version=str(resource_version)))
        else:
            current = self.get(cls, name, namespace)
        if uid and current.metadata.uid and uid != current.metadata.uid:
            raise errors.Conflict(f"{current.ident()} is not the object with UID {uid}")
        rev = int(resource_version) if resource_version else current.revision
        try:
            self.etcd.delete(current.key(), rev)
        except errors.Conflict:
            raise errors.Conflict(f"{current.ident()} changed since revision {rev}") from None
        except errors.NotFound:
            raise errors.NotFound(f"{current.ident()} does not exist") from None
        return current

    def watch_stream(self, kinds: Iterable[str | type[Resource]], revision: int | None = None,  # type: ignore[override]
                     stop: threading.Event | None = None, retry_delay: float = 0.5) -> Any:
        """Like :meth:`watch`, as an object whose ``close()`` ends the iteration from any thread."""
        return WatchStream(self, kinds, revision, stop, retry_delay)


class WatchStream:
    """An iterable, cancellable watch over several kinds (see :meth:`Client.watch`)."""

    def __init__(self, client: Client, kinds: Iterable[str | type[Resource]], revision: int | None = None,
                 stop: threading.Event | None = None, retry_delay: float = 0.5):
        self.client = client
        self.classes = [_cls(k) for k in kinds]
        self.revision = revision
        self.stop = stop or threading.Event()
        self.retry_delay = retry_delay
        self._watch = None
        self.known: dict[str, int] = {}
        #: True while the event just yielded is followed by others already received (the rest
        #: of the initial listing, or of one etcd watch response): a consumer that recomputes
        #: from the whole state may wait for the last of them
        self.more = False

    def close(self) -> None:
        """Stop the stream (safe from any thread)."""
        self.stop.set()
        w = self._watch
        if w is not None:
            w.close()

    def _prefixes(self) -> list[str]:
        prefixes = {c.list_prefix() for c in self.classes}
        # One watch covers everything: the common root of our prefixes.
        if all(p.startswith(IPAM_PREFIX) for p in prefixes) and len(prefixes) == 1:
            return list(prefixes)
        if all(p.startswith(V3_PREFIX) for p in prefixes) and len(prefixes) == 1:
            return list(prefixes)
        return ["/calico/"]

    def _decode(self, key: str, value: bytes, rev: int) -> tuple[type[Resource], str | None, str,
                                                                Resource | None] | None:
        ident = kind_for_key(key)
        if ident is None:
            return None
        cls, ns, name = ident
        if cls not in self.classes:
            return None
        obj = None
        if value:
            try:
                obj = cls.decode_value(key, value, rev)
            except (errors.DatastoreError, ValueError, KeyError) as exc:
                log.warning("ignoring undecodable %s at %s: %s", cls.KIND, key, exc)
                return None
        return cls, ns, name, obj

    def _snapshot(self) -> tuple[list[WatchEvent], int]:
        events: list[WatchEvent] = []
        seen: dict[str, int] = {}
        rev = 0
        for prefix in self._prefixes():
            kvs, rev = self.client.etcd.list(prefix)
            for kv in kvs:
                dec = self._decode(kv.key, kv.value, kv.mod_revision)
                if dec is None:
                    continue
                cls, ns, name, obj = dec
                seen[kv.key] = kv.mod_revision
                if self.known.get(kv.key) == kv.mod_revision:
                    continue
                etype = "MODIFIED" if kv.key in self.known else "ADDED"
                events.append(WatchEvent(etype, cls.KIND, name, ns, obj, kv.mod_revision))
        for key in set(self.known) - set(seen):
            ident = kind_for_key(key)
            if ident:
                events.append(WatchEvent("DELETED", ident[0].KIND, ident[2], ident[1], None, rev))
        self.known = seen
        events.append(WatchEvent("SYNCED", "", "", None, None, rev))
        return events, rev

    def _snapshot_retrying(self) -> tuple[list[WatchEvent], int] | None:
        """:meth:`_snapshot`, retried with back-off (retry_delay doubling to 5 s) while etcd is
        unreachable or slow, as a consumer starting against a busy etcd must not die of it.
        None once the stream is stopped."""
        delay = self.retry_delay
        while not self.stop.is_set():
            try:
                return self._snapshot()
            except errors.DatastoreUnavailable as exc:
                log.warning("listing the current state failed (%s); retrying in %.1fs", exc, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, 5.0)
        return None

    def _batch(self, events: list[WatchEvent]) -> Iterator[WatchEvent]:
        """Yield ``events`` (received together), with :attr:`more` set while others follow."""
        last = len(events) - 1
        for i, ev in enumerate(events):
            self.more = i < last
            yield ev
        self.more = False

    def __iter__(self) -> Iterator[WatchEvent]:
        typha = getattr(self.client, "typha", None)
        if typha is not None and self.revision is None:
            self._watch = typha.stream(self.classes, stop=self.stop)
            try:
                yield from self._watch
            finally:
                self._watch = None
            return
        rev = self.revision
        if rev is None:
            snap = self._snapshot_retrying()
            if snap is None:
                return
            events, rev = snap
            yield from self._batch(events)
        while not self.stop.is_set():
            try:
                prefixes = self._prefixes()
                if len(prefixes) != 1:
                    raise AssertionError("one watch prefix expected")
                self._watch = self.client.etcd.watch(prefixes[0], rev + 1)
                if self.stop.is_set():
                    return
                for batch in self._watch:
                    out: list[WatchEvent] = []
                    for ev in batch:
                        rev = max(rev, ev.kv.mod_revision)
                        dec = self._decode(ev.kv.key, ev.kv.value if ev.type != "DELETE" else b"",
                                           ev.kv.mod_revision)
                        if dec is None:
                            continue
                        cls, ns, name, obj = dec
                        if ev.type == "DELETE":
                            if self.known.pop(ev.kv.key, None) is None and self.revision is None:
                                continue
                            out.append(WatchEvent("DELETED", cls.KIND, name, ns, None, ev.kv.mod_revision))
                        else:
                            etype = "MODIFIED" if ev.kv.key in self.known else "ADDED"
                            self.known[ev.kv.key] = ev.kv.mod_revision
                            out.append(WatchEvent(etype, cls.KIND, name, ns, obj, ev.kv.mod_revision))
                    yield from self._batch(out)
                    if self.stop.is_set():
                        return
            except errors.Compacted:
                log.info("watch revision %s compacted; resyncing", rev)
                snap = self._snapshot_retrying()
                if snap is None:
                    return
                events, rev = snap
                yield from self._batch(events)
            except errors.DatastoreUnavailable as exc:
                if self.stop.is_set():
                    return
                log.warning("watch interrupted (%s); resuming from revision %s", exc, rev + 1)
                self.stop.wait(self.retry_delay)
            finally:
                self._watch = None


__all__ = ["Client", "WatchEvent", "WatchStream", "datastore_type"]
