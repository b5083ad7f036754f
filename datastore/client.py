"""The Calico datastore client (etcdv3 mode): typed get/list/create/update/apply/delete/watch.

Writes are compare-and-swap on the etcd mod revision (``metadata.resourceVersion``).
``watch`` gives a consistent stream: the current state first (ADDED events and
one SYNCED), then changes; it resumes after a disconnect from the last revision
seen and, if that revision was compacted, resyncs by listing and emitting the
difference, so a consumer never misses a change.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from datastore import errors
from datastore.etcd import EtcdClient
from datastore.resources import (
    IPAM_PREFIX,
    V3_PREFIX,
    IPPool,
    Resource,
    kind_for_key,
    resolve_kind,
)

log = logging.getLogger(__name__)

DEFAULT_ENDPOINTS = "http://127.0.0.1:2379"


@dataclass(frozen=True)
class WatchEvent:
    """One change: ``type`` is ADDED, MODIFIED, DELETED, or SYNCED (initial state complete)."""

    type: str
    kind: str
    name: str
    namespace: str | None
    obj: Resource | None
    revision: int


class Client:
    """Typed access to Calico resources in etcd."""

    def __init__(self, endpoints: str | list[str] | None = None, *, timeout: float = 3.0,
                 etcd: EtcdClient | None = None, typha: Any = None):
        self.etcd = etcd or EtcdClient(endpoints or DEFAULT_ENDPOINTS, timeout=timeout)
        #: a :class:`datastore.typha.TyphaClient`: watches (without a start revision) come
        #: from Typha instead of etcd; reads and writes still go to etcd
        self.typha = typha

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, timeout: float = 3.0) -> Client:
        """Build from ``DATASTORE_TYPE`` (must be etcdv3 if set) and ``ETCD_ENDPOINTS``."""
        env = dict(os.environ) if env is None else env
        dtype = env.get("DATASTORE_TYPE", "etcdv3")
        if dtype not in ("etcdv3", ""):
            raise errors.DatastoreError(
                f"DATASTORE_TYPE={dtype!r} is not supported: calicolab uses the etcd datastore (etcdv3)")
        return cls(env.get("ETCD_ENDPOINTS") or DEFAULT_ENDPOINTS, timeout=timeout)

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

    def list(self, kind: str | type[Resource], namespace: str | None = None) -> list[Resource]:
        """Every object of ``kind`` (in ``namespace``; None = all namespaces)."""
        return self.list_with_revision(kind, namespace)[0]

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

    def _prepare(self, obj: Resource) -> None:
        obj.apply_defaults()
        obj.validate()

    def create(self, obj: Resource) -> Resource:
        """Store a new object; raises AlreadyExists, ValidationError."""
        self._prepare(obj)
        if isinstance(obj, IPPool):
            self._check_pool_overlap(obj)
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

    def update(self, obj: Resource) -> Resource:
        """Replace an existing object, compare-and-swap on ``metadata.resourceVersion``.

        Without a resourceVersion the current one is read first (last writer wins).
        Raises Conflict if the object changed since it was read, NotFound if gone.
        """
        self._prepare(obj)
        current = None
        if not obj.metadata.resource_version or isinstance(obj, IPPool):
            current = self._get_by_key(obj)
            if not obj.metadata.resource_version:
                obj.metadata.resource_version = current.metadata.resource_version
        if isinstance(obj, IPPool) and current is not None:
            self._check_pool_immutable(current, obj)
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

    def apply(self, obj: Resource) -> Resource:
        """Create, or replace if it exists (calicoctl apply)."""
        try:
            existing = self._get_by_key(obj)
        except errors.NotFound:
            obj.metadata.resource_version = None
            return self.create(obj)
        obj.metadata.resource_version = existing.metadata.resource_version
        return self.update(obj)

    def delete(self, kind: str | type[Resource], name: str, namespace: str | None = None,
               resource_version: str | int | None = None) -> Resource:
        """Delete and return the object; CAS if ``resource_version`` is given. Raises NotFound."""
        cls = _cls(kind)
        current = self.get(cls, name, namespace)
        rev = int(resource_version) if resource_version else current.revision
        try:
            self.etcd.delete(current.key(), rev)
        except errors.Conflict:
            raise errors.Conflict(f"{current.ident()} changed since revision {rev}") from None
        except errors.NotFound:
            raise errors.NotFound(f"{current.ident()} does not exist") from None
        return current

    # -- IPPool rules --------------------------------------------------------

    def _check_pool_overlap(self, pool: IPPool) -> None:
        net = pool.network()
        for other in self.list(IPPool):
            if other.metadata.name == pool.metadata.name:
                continue
            onet = other.network()
            if onet.version == net.version and onet.overlaps(net):
                raise errors.ValidationError(
                    f"{pool.ident()}.spec.cidr",
                    f"{net} overlaps with IPPool {other.metadata.name!r} ({onet})",
                )

    @staticmethod
    def _check_pool_immutable(current: Resource, new: IPPool) -> None:
        assert isinstance(current, IPPool)
        if ipaddress.ip_network(current.spec.cidr) != ipaddress.ip_network(new.spec.cidr):
            raise errors.ValidationError(f"{new.ident()}.spec.cidr",
                                         f"cannot be changed (is {current.spec.cidr})")
        if current.spec.block_size != new.spec.block_size:
            raise errors.ValidationError(f"{new.ident()}.spec.blockSize",
                                         f"cannot be changed (is {current.spec.block_size})")

    # -- watch ---------------------------------------------------------------

    def watch(self, kinds: Iterable[str | type[Resource]], revision: int | None = None,
              stop: threading.Event | None = None, retry_delay: float = 0.5) -> Iterator[WatchEvent]:
        """Stream changes of ``kinds``: current state (ADDED..., SYNCED), then changes.

        With ``revision`` given, skip the initial listing and stream changes after
        it (no SYNCED event unless a compaction forces a resync). Stops when
        ``stop`` is set (checked between batches; use :meth:`watch_stream` for
        prompt cancellation).
        """
        yield from WatchStream(self, kinds, revision, stop, retry_delay)


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
            yield from events
        while not self.stop.is_set():
            try:
                prefixes = self._prefixes()
                if len(prefixes) != 1:
                    raise AssertionError("one watch prefix expected")
                self._watch = self.client.etcd.watch(prefixes[0], rev + 1)
                if self.stop.is_set():
                    return
                for batch in self._watch:
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
                            yield WatchEvent("DELETED", cls.KIND, name, ns, None, ev.kv.mod_revision)
                        else:
                            etype = "MODIFIED" if ev.kv.key in self.known else "ADDED"
                            self.known[ev.kv.key] = ev.kv.mod_revision
                            yield WatchEvent(etype, cls.KIND, name, ns, obj, ev.kv.mod_revision)
                    if self.stop.is_set():
                        return
            except errors.Compacted:
                log.info("watch revision %s compacted; resyncing", rev)
                snap = self._snapshot_retrying()
                if snap is None:
                    return
                events, rev = snap
                yield from events
            except errors.DatastoreUnavailable as exc:
                if self.stop.is_set():
                    return
                log.warning("watch interrupted (%s); resuming from revision %s", exc, rev + 1)
                self.stop.wait(self.retry_delay)
            finally:
                self._watch = None


def _cls(kind: str | type[Resource]) -> type[Resource]:
    return resolve_kind(kind) if isinstance(kind, str) else kind


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
