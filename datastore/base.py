"""What every Calico datastore client shares, whatever keeps the data (etcd:
:class:`datastore.client.Client`; the Kubernetes API: :class:`datastore.kdd.KubeClient`):
Calico's client-side rules (defaults, validation, IPPool overlap and immutability), create /
update / apply on top of the backend's writes, the watch event type, and how
``DATASTORE_TYPE`` is resolved.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from datastore import errors
from datastore.resources import IPPool, Resource, resolve_kind


@dataclass(frozen=True)
class WatchEvent:
    """One change: ``type`` is ADDED, MODIFIED, DELETED, or SYNCED (initial state complete)."""

    type: str
    kind: str
    name: str
    namespace: str | None
    obj: Resource | None
    revision: int


class Datastore:
    """The calls Calico's components use; a backend provides the reads, the raw writes
    (``_write_create``, ``_write_update``), ``delete`` and ``watch_stream``."""

    #: ``DATASTORE_TYPE`` of this client
    datastore_type = ""
    typha: Any = None

    def describe(self) -> str:
        """Where the data is (for messages)."""
        raise NotImplementedError

    def get(self, kind: str | type[Resource], name: str, namespace: str | None = None) -> Resource:
        """The object ``name``; raises NotFound."""
        raise NotImplementedError

    def list(self, kind: str | type[Resource], namespace: str | None = None) -> list[Resource]:
        """Every object of ``kind`` (in ``namespace``; None = all namespaces)."""
        return self.list_with_revision(kind, namespace)[0]

    def list_with_revision(self, kind: str | type[Resource],
                           namespace: str | None = None) -> tuple[list[Resource], int]:
        """Like :meth:`list`, plus the store revision the list was read at."""
        raise NotImplementedError

    def _write_create(self, obj: Resource) -> Resource:
        raise NotImplementedError

    def _write_update(self, obj: Resource, current: Resource | None) -> Resource:
        raise NotImplementedError

    def _get_by_key(self, obj: Resource) -> Resource:
        raise NotImplementedError

    def delete(self, kind: str | type[Resource], name: str, namespace: str | None = None,
               resource_version: str | int | None = None, uid: str | None = None) -> Resource:
        """Delete and return the object; CAS if ``resource_version`` is given (and only the
        object with ``uid``, if given). Raises NotFound, Conflict."""
        raise NotImplementedError

    def watch_stream(self, kinds: Iterable[str | type[Resource]], revision: int | None = None,
                     stop: Any = None, retry_delay: float = 0.5) -> Any:
        """Like :meth:`watch`, as an object whose ``close()`` ends the iteration from any thread."""
        raise NotImplementedError

    # -- writes (Calico's client-side rules, then the backend's write) -------------------
    def _prepare(self, obj: Resource) -> None:
        obj.apply_defaults()
        obj.validate()

    def create(self, obj: Resource) -> Resource:
        """Store a new object; raises AlreadyExists, ValidationError."""
        self._prepare(obj)
        if isinstance(obj, IPPool):
            self._check_pool_overlap(obj)
        return self._write_create(obj)

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
        return self._write_update(obj, current)

    def apply(self, obj: Resource) -> Resource:
        """Create, or replace if it exists (calicoctl apply)."""
        try:
            existing = self._get_by_key(obj)
        except errors.NotFound:
            obj.metadata.resource_version = None
            return self.create(obj)
        obj.metadata.resource_version = existing.metadata.resource_version
        return self.update(obj)

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
              stop: Any = None, retry_delay: float = 0.5) -> Iterator[WatchEvent]:
        """Stream changes of ``kinds``: current state (ADDED..., SYNCED), then changes.

        With ``revision`` given, skip the initial listing and stream changes after
        it (no SYNCED event unless a compaction forces a resync). Stops when
        ``stop`` is set (checked between batches; use :meth:`watch_stream` for
        prompt cancellation).
        """
        yield from self.watch_stream(kinds, revision, stop, retry_delay)

def datastore_type(env: Mapping[str, str]) -> str:
    """``DATASTORE_TYPE`` as libcalico-go's apiconfig resolves it (``applyConfigDefaults``):
    the variable, else ``etcdv3`` when ``ETCD_ENDPOINTS`` is
    set, else ``kubernetes``. Anything else is refused naming the value."""
    dtype = (env.get("DATASTORE_TYPE") or "").strip()
    if not dtype:
        dtype = "etcdv3" if env.get("ETCD_ENDPOINTS") else "kubernetes"
    if dtype not in ("etcdv3", "kubernetes"):
        raise errors.DatastoreError(f"DATASTORE_TYPE={dtype!r} is not a Calico datastore type "
                                    "(use etcdv3 or kubernetes)")
    return dtype


def _cls(kind: str | type[Resource]) -> type[Resource]:
    return resolve_kind(kind) if isinstance(kind, str) else kind


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
