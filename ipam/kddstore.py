"""IPAM objects in the Kubernetes datastore: custom resources ``crd.projectcalico.org/v1``
(calico.md section 8), with the interface of :class:`ipam.store.Store`.

* blocks      ``ipamblocks/10-0-0-0-26`` (spec: every field of the block)
* affinities  ``blockaffinities/<node>-10-0-0-0-26`` (spec ``{state, node, cidr, deleted: "false"}``)
* handles     ``ipamhandles/<handle ID lower-cased>`` (spec ``{handleID, block, deleted}``)
* config      ``ipamconfigs/default``

Revisions are resourceVersions; every write is a POST (create) or a PUT carrying the
resourceVersion read (a compare-and-swap: 409 Conflict if it changed). The Kubernetes API
has no multi-object transaction, so a block and its handle are written as libcalico-go
writes them: on allocation the handle first, then the block (and the handle's count
undone if the block write loses); on release the block first, then each handle. Blocks,
affinities and handles are deleted by an update setting ``deleted`` (a CAS) followed by a
DELETE with the UID as precondition; a read that finds ``deleted`` set finishes it.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from ipaddress import IPv4Network
from typing import Any

from datastore import crds, errors
from datastore.resources import cidr_name
from ipam.block import Block, Handle, IPAMConfigRules
from ipam.store import STATE_CONFIRMED, Affinity, affine_hint, remember_affine, take_snapshot

API = crds.API_VERSION
BLOCKS, AFFINITIES, HANDLES, CONFIGS, POOLS = "ipamblocks", "blockaffinities", "ipamhandles", "ipamconfigs", "ippools"
#: what libcalico-go's conversion writes as the Calico metadata of an IPAM object
EMPTY_META = json.dumps({"creationTimestamp": None}, separators=(",", ":"))


def _meta(name: str, rv: Any = None, uid: str | None = None) -> dict[str, Any]:
    m: dict[str, Any] = {"name": name, "annotations": {crds.METADATA_ANNOTATION: EMPTY_META}}
    if rv:
        m["resourceVersion"] = str(rv)
    if uid:
        m["uid"] = uid
    return m


def block_spec(block: Block) -> dict[str, Any]:
    """The IPAMBlock custom resource's spec."""
    spec = block.to_dict()
    if spec.get("affinity") is None:
        spec.pop("affinity", None)
    spec["attributes"] = [{k: v for k, v in a.items() if v is not None} for a in spec["attributes"]]
    return spec


def block_cr(block: Block, rv: Any = None, uid: str | None = None) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "IPAMBlock", "metadata": _meta(cidr_name(str(block.cidr)), rv, uid),
            "spec": block_spec(block)}


def affinity_cr(host: str, cidr: IPv4Network | str, state: str, deleted: bool = False, rv: Any = None,
                uid: str | None = None) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "BlockAffinity", "metadata": _meta(crds.affinity_name(host, str(cidr)), rv, uid),
            "spec": {"state": state, "node": host, "cidr": str(cidr), "deleted": "true" if deleted else "false"}}


def handle_cr(h: Handle, rv: Any = None, uid: str | None = None) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "IPAMHandle", "metadata": _meta(crds.handle_name(h.handle_id), rv, uid),
            "spec": {"handleID": h.handle_id, "block": dict(h.block), "deleted": h.deleted}}


def _rv(obj: dict) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


def _uid(obj: dict) -> str | None:
    return (obj.get("metadata") or {}).get("uid")


def _deleted(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _block(cr: dict) -> Block:
    return Block.from_dict(cr.get("spec") or {})


def _handle(cr: dict) -> Handle:
    spec = cr.get("spec") or {}
    h = Handle.from_dict({"block": spec.get("block") or {}, "deleted": bool(spec.get("deleted"))})
    h.handle_id = spec.get("handleID") or (cr.get("metadata") or {}).get("name", "")
    return h


#: threads reading an allocation's objects at once (each keeps its own API connection)
READ_WORKERS = 4
_readers: ThreadPoolExecutor | None = None
_readers_lock = threading.Lock()


def _forget_readers() -> None:
    """In a forked child: the parent's reader threads do not exist here (their executor would
    take work and never run it); the child starts its own when it needs them."""
    global _readers, _readers_lock
    _readers, _readers_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_readers)


def readers() -> ThreadPoolExecutor:
    """The reader threads, all of them started now if they are not yet, by the calling thread.

    A thread shares the filesystem attributes (``CLONE_FS``) of the thread that started it, and
    the kernel lets a thread enter another mount namespace only while it shares them with no
    other (``setns`` fails with EINVAL). The CNI server's workers enter their callers' mount
    namespaces (:mod:`cni.server`), so the server starts the readers from its main thread
    before it serves: had a worker started them, it could never leave its caller's namespace
    again. A pool that started threads on demand would start them from whichever thread
    submitted first."""
    global _readers
    with _readers_lock:
        if _readers is None:
            pool = ThreadPoolExecutor(READ_WORKERS, thread_name_prefix="ipam-read")
            started = threading.Barrier(READ_WORKERS + 1)
            for _ in range(READ_WORKERS):  # each submit starts a thread while none is idle
                pool.submit(started.wait)
            started.wait()
            _readers = pool
        return _readers


def _concurrently(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run independent reads at once; their results in order (the first error is raised)."""
    if len(calls) <= 1:
        return [c() for c in calls]
    pool = readers()
    futures = [pool.submit(c) for c in calls[1:]]
    first = calls[0]()  # the calling thread reads too
    return [first, *(f.result() for f in futures)]


class KubeStore:
    """Typed reads and CAS writes of IPAM custom resources over a :class:`kubeclient.Client`."""

    def __init__(self, kube: Any):
        self.kube = kube
        self._local = threading.local()  # the blocks alloc_snapshot read, per allocating thread

    # -- transport -----------------------------------------------------------
    def _err(self, exc: BaseException, what: str) -> BaseException:
        from datastore.kdd import _kube_error

        return _kube_error(exc, what)

    def _get(self, plural: str, name: str) -> dict | None:
        import kubeclient

        try:
            return self.kube.get(API, plural, name)
        except kubeclient.NotFound:
            return None
        except Exception as exc:  # noqa: BLE001
            raise self._err(exc, f"{plural}/{name}") from None

    def _list(self, plural: str) -> list[dict]:
        import kubeclient

        try:
            items, _ = self.kube.list_all(API, plural)
        except kubeclient.NotFound:
            return []
        except Exception as exc:  # noqa: BLE001
            raise self._err(exc, f"{plural} list") from None
        return items

    def _create(self, plural: str, cr: dict) -> dict:
        try:
            return self.kube.create(cr, plural=plural)
        except Exception as exc:  # noqa: BLE001
            raise self._err(exc, f"{plural}/{cr['metadata']['name']}") from None

    def _replace(self, plural: str, cr: dict) -> dict:
        try:
            return self.kube.replace(cr, plural=plural)
        except Exception as exc:  # noqa: BLE001
            raise self._err(exc, f"{plural}/{cr['metadata']['name']}") from None

    def _hard_delete(self, plural: str, name: str, uid: str | None) -> None:
        import kubeclient

        try:
            self.kube.delete(API, plural, name, preconditions={"uid": uid} if uid else None)
        except kubeclient.NotFound:
            pass
        except Exception as exc:  # noqa: BLE001
            raise self._err(exc, f"{plural}/{name}") from None

    def _soft_delete(self, plural: str, cr: dict) -> None:
        """Mark ``deleted`` with a CAS on ``cr``'s resourceVersion, then DELETE by UID."""
        marked = json.loads(json.dumps(cr))
        marked["spec"]["deleted"] = "true" if plural == AFFINITIES else True
        out = self._replace(plural, marked)
        self._hard_delete(plural, out["metadata"]["name"], _uid(out))

    def _live(self, plural: str, name: str) -> dict | None:
        """GET, finishing a half-done delete (``deleted`` set): None if gone."""
        cr = self._get(plural, name)
        if cr is not None and _deleted((cr.get("spec") or {}).get("deleted")):
            self._hard_delete(plural, name, _uid(cr))
            return None
        return cr

    # -- batched reads ---------------------------------------------------------
    def alloc_snapshot(self, host: str) -> tuple[IPAMConfigRules, list[dict[str, Any]], list[Affinity]]:
        """IPAMConfig, every IPPool (as v3 documents) and ``host``'s affinities.

        From a host's second allocation in the process on, the reads are made at once (one
        round trip of latency instead of four, inside the host's IPAM lock: 49 pods on one node
        allocate one after the other), with the blocks affine to ``host`` at its last
        allocation (:func:`ipam.store.affine_hint`); :meth:`get_free_blocks` answers from those
        when they are the blocks it is asked for."""
        key = (str(getattr(getattr(self.kube, "config", None), "server", "")), host)
        hinted = affine_hint(key)
        calls = [self.get_config, lambda: self._list(POOLS), lambda: self.list_affinities(host),
                 *((lambda c=c: self.get_block(c)) for c in hinted)]
        # a host's first allocation in this process reads on the calling thread: the readers'
        # connections would each cost a TLS handshake for one use (a node whose CNI server
        # allocates once or twice); a host that allocates again (a burst of pods) pays them once
        got = _concurrently(calls) if hinted else [c() for c in calls]
        cfg, pool_crs, affs = got[:3]
        self._local.snapshot_blocks = dict(zip(hinted, got[3:], strict=True))
        pools = [{"metadata": {"name": (p.get("metadata") or {}).get("name", "")}, "spec": p.get("spec") or {}}
                 for p in pool_crs]
        remember_affine(key, affs)
        return cfg, pools, affs

    def get_blocks(self, cidrs: list[IPv4Network]) -> dict[IPv4Network, tuple[Block, Any]]:
        out = {}
        for c in cidrs:
            got = self.get_block(c)
            if got is not None:
                out[c] = got
        return out

    def get_free_blocks(self, cidrs: list[IPv4Network]) -> dict[IPv4Network, tuple[Block, Any]]:
        read = take_snapshot(self._local, cidrs)  # read by alloc_snapshot just before
        if read is None:
            got = self.get_blocks(cidrs)
        else:
            got = {c: v for c, v in zip(cidrs, read, strict=True) if v is not None}
        return {c: v for c, v in got.items() if v[0].unallocated}

    def get_block_and_handle(self, cidr: IPv4Network, handle_id: str
                             ) -> tuple[tuple[Block, Any] | None, tuple[Handle, Any] | None]:
        return self.get_block(cidr), self.get_handle(handle_id)

    # -- blocks ----------------------------------------------------------------
    def get_block(self, cidr: IPv4Network | str) -> tuple[Block, Any] | None:
        cr = self._live(BLOCKS, cidr_name(str(cidr)))
        return None if cr is None else (_block(cr), _rv(cr))

    def list_blocks(self) -> list[tuple[Block, Any]]:
        out = []
        for cr in self._list(BLOCKS):
            if not _deleted((cr.get("spec") or {}).get("deleted")):
                out.append((_block(cr), _rv(cr)))
        out.sort(key=lambda b: b[0].cidr)
        return out

    def list_block_cidrs(self) -> list[IPv4Network]:
        return [b.cidr for b, _ in self.list_blocks()]

    def create_block(self, block: Block) -> Any:
        return _rv(self._create(BLOCKS, block_cr(block)))

    def update_block(self, block: Block, revision: Any) -> Any:
        return _rv(self._replace(BLOCKS, block_cr(block, revision)))

    def delete_block(self, cidr: IPv4Network | str, revision: Any) -> None:
        """Soft, then hard delete of a block still at ``revision`` (Conflict otherwise)."""
        cr = self._get(BLOCKS, cidr_name(str(cidr)))
        if cr is None:
            raise errors.NotFound(f"IPAMBlock {cidr} does not exist")
        cr["metadata"]["resourceVersion"] = str(revision)
        self._soft_delete(BLOCKS, cr)

    def commit_allocation(self, block: Block, block_rev: Any, handle: Handle, handle_rev: Any | None,
                          added: int = 0) -> tuple[Any | None, tuple[Block, Any] | None, tuple[Handle, Any] | None]:
        """The handle (CAS), then the block (CAS); if the block write loses, the handle's
        ``added`` addresses are taken back. Returns (revision, None, None) on success, else
        (None, fresh block, fresh handle) for the caller's retry."""
        try:
            if handle_rev is None:
                hout = self._create(HANDLES, handle_cr(handle))
            else:
                hout = self._replace(HANDLES, handle_cr(handle, handle_rev))
        except (errors.Conflict, errors.AlreadyExists):
            return None, self.get_block(block.cidr), self.get_handle(handle.handle_id)
        try:
            rev = self.update_block(block, block_rev)
        except (errors.Conflict, errors.NotFound):
            self._decrement(handle.handle_id, str(block.cidr), added, hout)
            return None, self.get_block(block.cidr), self.get_handle(handle.handle_id)
        return rev, None, None

    def _decrement(self, handle_id: str, cidr: str, count: int, cur: dict | None = None) -> None:
        """Take ``count`` addresses of ``cidr`` off a handle (retrying on conflict); an empty
        handle is deleted."""
        for _ in range(100):
            if cur is None:
                cur = self._live(HANDLES, crds.handle_name(handle_id))
                if cur is None:
                    return
            h = _handle(cur)
            h.decrement(IPv4Network(cidr), min(count, h.block.get(cidr, 0)))
            try:
                if h.is_empty():
                    self._soft_delete(HANDLES, handle_cr(h, _rv(cur), _uid(cur)))
                else:
                    self._replace(HANDLES, handle_cr(h, _rv(cur), _uid(cur)))
                return
            except (errors.Conflict, errors.NotFound):
                cur = None
        raise errors.Conflict(f"IPAMHandle {handle_id}: gave up after 100 conflicting writes")

    def get_handles(self, handle_ids: list[str]) -> dict[str, tuple[Handle, Any]]:
        out = {}
        for hid in handle_ids:
            got = self.get_handle(hid)
            if got is not None:
                out[hid] = got
        return out

    def commit_release(self, block: Block, block_rev: Any, handles: list[tuple[str, Handle | None, Any]],
                       counts: dict[str, int] | None = None) -> bool:
        """The block (CAS; deleted when empty and without affinity), then each handle's count.
        False if the block changed since it was read (nothing written)."""
        try:
            if block.is_empty() and block.affinity is None:
                self.delete_block(block.cidr, block_rev)
            else:
                self.update_block(block, block_rev)
        except (errors.Conflict, errors.NotFound):
            return False
        counts = counts or {}
        for hid, new, rev in handles:
            if new is not None and rev:
                try:
                    cr = handle_cr(new, rev)
                    if new.is_empty():
                        self._soft_delete(HANDLES, cr)
                    else:
                        self._replace(HANDLES, cr)
                    continue
                except (errors.Conflict, errors.NotFound):
                    pass  # changed since read: take our addresses off what it is now
            if counts.get(hid):
                self._decrement(hid, str(block.cidr), counts[hid])
        return True

    # -- affinities --------------------------------------------------------------
    @staticmethod
    def _affinity(cr: dict) -> Affinity | None:
        spec = cr.get("spec") or {}
        try:
            cidr = IPv4Network(spec.get("cidr", ""))
        except ValueError:
            return None
        return Affinity(host=spec.get("node", ""), cidr=cidr, state=spec.get("state") or STATE_CONFIRMED,
                        deleted=_deleted(spec.get("deleted")), revision=_rv(cr))  # type: ignore[arg-type]

    def list_affinities(self, host: str | None = None) -> list[Affinity]:
        """Affinities of ``host`` (all when None), not marked deleted (``listV1``)."""
        out = []
        for cr in self._list(AFFINITIES):
            a = self._affinity(cr)
            if a is not None and not a.deleted and (host is None or a.host == host):
                out.append(a)
        out.sort(key=lambda a: (a.host, a.cidr))
        return out

    def get_affinity(self, host: str, cidr: IPv4Network | str) -> Affinity | None:
        cr = self._live(AFFINITIES, crds.affinity_name(host, str(cidr)))
        return None if cr is None else self._affinity(cr)

    def create_affinity(self, host: str, cidr: IPv4Network | str, state: str) -> Any:
        return _rv(self._create(AFFINITIES, affinity_cr(host, cidr, state)))

    def update_affinity(self, host: str, cidr: IPv4Network | str, state: str, revision: Any) -> Any:
        return _rv(self._replace(AFFINITIES, affinity_cr(host, cidr, state, rv=revision)))

    def delete_affinity(self, host: str, cidr: IPv4Network | str, revision: Any = None) -> bool:
        name = crds.affinity_name(host, str(cidr))
        cur = self._get(AFFINITIES, name)
        if cur is None:
            if revision is not None:
                raise errors.NotFound(f"BlockAffinity {name} does not exist")
            return False
        if revision is not None:
            cur["metadata"]["resourceVersion"] = str(revision)
        self._soft_delete(AFFINITIES, cur)
        return True

    # -- handles -----------------------------------------------------------------
    def get_handle(self, handle_id: str) -> tuple[Handle, Any] | None:
        cr = self._live(HANDLES, crds.handle_name(handle_id))
        if cr is None:
            return None
        h = _handle(cr)
        h.handle_id = handle_id
        return h, _rv(cr)

    def list_handles(self) -> list[Handle]:
        return [h for h, _ in self.list_handles_with_revision()]

    def list_handles_with_revision(self) -> list[tuple[Handle, Any]]:
        out = []
        for cr in self._list(HANDLES):
            if not _deleted((cr.get("spec") or {}).get("deleted")):
                out.append((_handle(cr), _rv(cr)))
        out.sort(key=lambda h: h[0].handle_id)
        return out

    def update_handle(self, h: Handle, revision: Any) -> Any:
        return _rv(self._replace(HANDLES, handle_cr(h, revision)))

    def delete_handle(self, handle_id: str, revision: Any) -> None:
        cur = self._get(HANDLES, crds.handle_name(handle_id))
        if cur is None:
            raise errors.NotFound(f"IPAMHandle {handle_id} does not exist")
        cur["metadata"]["resourceVersion"] = str(revision)
        self._soft_delete(HANDLES, cur)

    # -- config --------------------------------------------------------------------
    def get_config(self) -> IPAMConfigRules:
        cr = self._get(CONFIGS, "default")
        if cr is None:
            return IPAMConfigRules()
        spec = cr.get("spec") or {}
        return IPAMConfigRules(strict_affinity=bool(spec.get("strictAffinity", False)),
                               auto_allocate_blocks=bool(spec.get("autoAllocateBlocks", True)),
                               max_blocks_per_host=int(spec.get("maxBlocksPerHost") or 0))

    def put_config(self, cfg: IPAMConfigRules) -> Any:
        cfg.validate()
        spec: dict[str, Any] = {"strictAffinity": cfg.strict_affinity, "autoAllocateBlocks": cfg.auto_allocate_blocks}
        if cfg.max_blocks_per_host:
            spec["maxBlocksPerHost"] = cfg.max_blocks_per_host
        for _ in range(10):
            cur = self._get(CONFIGS, "default")
            cr = {"apiVersion": API, "kind": "IPAMConfig", "metadata": _meta("default", _rv(cur) if cur else None),
                  "spec": spec}
            try:
                return _rv(self._replace(CONFIGS, cr) if cur else self._create(CONFIGS, cr))
            except (errors.Conflict, errors.AlreadyExists):
                continue
        raise errors.Conflict("IPAMConfig default: gave up after 10 conflicting writes")
