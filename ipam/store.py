"""IPAM objects in etcd, in Calico's etcd-mode key layout (calico.md section 7).

* blocks      ``/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-26``
* affinities  ``/calico/ipam/v2/host/<node>/ipv4/block/10.0.0.0-26`` = ``{"state", "deleted"}``
* handles     ``/calico/ipam/v2/handle/<handleID>`` = ``{"block": {cidr: n}, "deleted"}``
* config      ``/calico/ipam/v2/config``

Every write is a create (only if absent) or a compare-and-swap on the key's mod
revision; the caller retries on :class:`datastore.errors.Conflict`.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

from datastore import errors
from datastore.etcd import KV, prefix_end
from datastore.etcd import b64 as _b64
from datastore.etcd import kv_from_json as _kv
from datastore.resources import BlockAffinity, IPAMBlock, IPAMConfig, IPAMHandle
from ipam.block import Block, Handle, IPAMConfigRules

# Calico's etcd key layout lives in datastore.resources; these are its IPAM prefixes.
BLOCK_PREFIX = IPAMBlock.list_prefix()
HOST_PREFIX = BlockAffinity.list_prefix()
HANDLE_PREFIX = IPAMHandle.list_prefix()
CONFIG_KEY = IPAMConfig.key_for("default")

POOL_PREFIX = "/calico/resources/v3/projectcalico.org/ippools/"
#: how a block with no free ordinal serialises (compact JSON, as both we and datastore/ write it)
FULL_MARK = b'"unallocated":[]'

STATE_PENDING = "pending"
STATE_CONFIRMED = "confirmed"
STATE_PENDING_DELETION = "pendingDeletion"


def key_part_to_cidr(part: str) -> IPv4Network:
    """``10.0.0.0-26`` -> ``IPv4Network('10.0.0.0/26')``."""
    addr, _, plen = part.rpartition("-")
    return IPv4Network(f"{addr}/{plen}")


def block_key(cidr: IPv4Network | str) -> str:
    """etcd key of a block."""
    return IPAMBlock.key_for_cidr(str(cidr))


def affinity_prefix(host: str) -> str:
    """etcd prefix of every IPv4 block affinity of ``host``."""
    return BlockAffinity.node_prefix(host)


def affinity_key(host: str, cidr: IPv4Network | str) -> str:
    """etcd key of ``host``'s affinity to a block."""
    return BlockAffinity.key_for_node(host, str(cidr))


def handle_key(handle_id: str) -> str:
    """etcd key of a handle."""
    return IPAMHandle.key_for(handle_id)


@dataclass
class Affinity:
    """A block affinity as stored: which host, which block, which state."""

    host: str
    cidr: IPv4Network
    state: str
    deleted: bool
    revision: int


def _json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


#: (etcd endpoints, host) -> the blocks of the host's confirmed affinities at its last
#: allocation snapshot. Only a hint of which blocks to read in the snapshot's own
#: transaction: a host allocates from the same blocks again and again, so its free blocks
#: come in that one round trip; a stale hint costs the second read (get_free_blocks).
_AFFINE_HINT: dict[tuple[Any, str], tuple[IPv4Network, ...]] = {}
_HINTS_MAX = 4096


def affine_hint(key: tuple[Any, str]) -> tuple[IPv4Network, ...]:
    """The blocks affine to ``key`` = (datastore, host) at its last allocation snapshot."""
    return _AFFINE_HINT.get(key, ())


def remember_affine(key: tuple[Any, str], affinities: list[Affinity]) -> None:
    """Keep the blocks of ``key``'s confirmed affinities as the hint for its next snapshot."""
    if len(_AFFINE_HINT) >= _HINTS_MAX and key not in _AFFINE_HINT:
        _AFFINE_HINT.clear()
    _AFFINE_HINT[key] = tuple(a.cidr for a in affinities if not a.deleted and a.state == STATE_CONFIRMED)


def take_snapshot(local: threading.local, cidrs: list[IPv4Network]) -> list[Any] | None:
    """What the thread's last snapshot read for ``cidrs`` (``local.snapshot_blocks``), in
    order, or None when it did not read them all; the snapshot is used once."""
    snap = getattr(local, "snapshot_blocks", {})
    local.snapshot_blocks = {}
    if cidrs and all(c in snap for c in cidrs):
        return [snap[c] for c in cidrs]
    return None


class Store:
    """Typed reads and CAS writes of IPAM keys over :class:`datastore.etcd.EtcdClient`."""

    def __init__(self, etcd: Any):
        self.etcd = etcd
        #: per thread: the blocks read by its last alloc_snapshot (``snapshot_blocks``:
        #: cidr -> KVs), for its next get_free_blocks only
        self._local = threading.local()

    # -- batched reads (one round trip) ------------------------------------

    def read_many(self, ranges: list[tuple[str, bool]]) -> list[list[KV]]:
        """Read several keys / prefixes (``(key, is_prefix)``) in one etcd transaction."""
        ops = []
        for key, is_prefix in ranges:
            req: dict[str, Any] = {"key": _b64(key)}
            if is_prefix:
                req["range_end"] = _b64(prefix_end(key))
            ops.append({"request_range": req})
        doc = self.etcd.call("/v3/kv/txn", {"compare": [], "success": ops, "failure": []})
        out = []
        for resp in doc.get("responses") or []:
            kvs = (resp.get("response_range") or {}).get("kvs") or []
            out.append(sorted((_kv(d) for d in kvs), key=lambda kv: kv.key))
        while len(out) < len(ranges):
            out.append([])
        return out

    def alloc_snapshot(self, host: str) -> tuple[IPAMConfigRules, list[dict[str, Any]], list[Affinity]]:
        """IPAMConfig, every IPPool document and ``host``'s affinities, in one round trip.

        The same transaction reads the blocks of the host's affinities as of its last
        snapshot (:data:`_AFFINE_HINT`); :meth:`get_free_blocks` answers from them when
        they are the blocks it is asked for, so an allocation in an affine block reads once.
        """
        endpoints = getattr(self.etcd, "endpoints", None)
        hint_key = (tuple(endpoints), host) if isinstance(endpoints, list) else None
        hinted = affine_hint(hint_key) if hint_key else ()
        got = self.read_many([(CONFIG_KEY, False), (POOL_PREFIX, True), (affinity_prefix(host), True),
                              *((block_key(c), False) for c in hinted)])
        cfg_kvs, pool_kvs, aff_kvs = got[:3]
        self._local.snapshot_blocks = dict(zip(hinted, got[3:], strict=True))
        cfg = self._config(cfg_kvs[0]) if cfg_kvs else IPAMConfigRules()
        pools = [json.loads(kv.value) for kv in pool_kvs]
        affs = [a for a in (self._affinity(kv) for kv in aff_kvs) if a is not None]
        if hint_key is not None:
            remember_affine(hint_key, affs)
        return cfg, pools, affs

    def get_blocks(self, cidrs: list[IPv4Network]) -> dict[IPv4Network, tuple[Block, int]]:
        """Several blocks in one round trip (missing ones are left out)."""
        if not cidrs:
            return {}
        out = {}
        for cidr, kvs in zip(cidrs, self.read_many([(block_key(c), False) for c in cidrs]), strict=True):
            if kvs:
                out[cidr] = (Block.from_dict(json.loads(kvs[0].value)), kvs[0].mod_revision)
        return out

    def get_free_blocks(self, cidrs: list[IPv4Network]) -> dict[IPv4Network, tuple[Block, int]]:
        """Like :meth:`get_blocks` (one round trip) but only blocks with a free address.

        Full blocks are recognised from the stored bytes without decoding them, so
        a node with many full blocks pays little for each allocation.
        """
        if not cidrs:
            return {}
        read = take_snapshot(self._local, cidrs)  # read by alloc_snapshot's transaction just before
        if read is None:
            read = self.read_many([(block_key(c), False) for c in cidrs])
        out = {}
        for cidr, kvs in zip(cidrs, read, strict=True):
            if kvs and FULL_MARK not in kvs[0].value:
                out[cidr] = (Block.from_dict(json.loads(kvs[0].value)), kvs[0].mod_revision)
        return out

    # -- blocks -----------------------------------------------------------

    def get_block(self, cidr: IPv4Network | str) -> tuple[Block, int] | None:
        """The block and its mod revision, or None."""
        kv = self.etcd.get(block_key(cidr))
        if kv is None:
            return None
        return Block.from_dict(json.loads(kv.value)), kv.mod_revision

    def list_blocks(self) -> list[tuple[Block, Any]]:
        """Every block with its raw KV (for mod/create revisions), sorted by key."""
        kvs, _ = self.etcd.list(BLOCK_PREFIX)
        return [(Block.from_dict(json.loads(kv.value)), kv) for kv in kvs]

    def list_block_cidrs(self) -> list[IPv4Network]:
        """The CIDR of every block (keys only: cheap however full the blocks are)."""
        doc = self.etcd.call("/v3/kv/range", {"key": _b64(BLOCK_PREFIX),
                                              "range_end": _b64(prefix_end(BLOCK_PREFIX)), "keys_only": True})
        out = []
        for d in doc.get("kvs") or []:
            part = base64.b64decode(d["key"]).decode()[len(BLOCK_PREFIX):]
            try:
                out.append(key_part_to_cidr(part))
            except ValueError:
                continue
        return out

    def create_block(self, block: Block) -> int:
        """Create a block; raises AlreadyExists."""
        return self.etcd.create(block_key(block.cidr), _json(block.to_dict()))

    def update_block(self, block: Block, revision: int) -> int:
        """CAS-write a block; raises Conflict / NotFound."""
        return self.etcd.update(block_key(block.cidr), _json(block.to_dict()), revision)

    def commit_allocation(self, block: Block, block_rev: int, handle: Handle, handle_rev: int | None,
                          added: int = 0) -> tuple[int | None, tuple[Block, int] | None, tuple[Handle, int] | None]:
        """Write a block and its handle in one transaction (one CAS, one round trip).

        Succeeds only if the block is still at ``block_rev`` and the handle is
        still at ``handle_rev`` (``None``: the handle must not exist yet).
        Returns ``(revision, None, None)`` on success, else ``(None, fresh block,
        fresh handle)`` as read atomically by the failed transaction, so the
        caller can retry without another read.
        """
        bkey, hkey = block_key(block.cidr), handle_key(handle.handle_id)
        hcmp: dict[str, Any] = {"key": _b64(hkey), "result": "EQUAL"}
        if handle_rev is None:
            hcmp.update(target="CREATE", create_revision="0")
        else:
            hcmp.update(target="MOD", mod_revision=str(handle_rev))
        doc = self.etcd.call("/v3/kv/txn", {
            "compare": [{"key": _b64(bkey), "target": "MOD", "result": "EQUAL", "mod_revision": str(block_rev)},
                        hcmp],
            "success": [{"request_put": {"key": _b64(bkey), "value": base64.b64encode(
                            _json(block.to_dict())).decode()}},
                        {"request_put": {"key": _b64(hkey), "value": base64.b64encode(
                            self._handle_value(handle)).decode()}}],
            "failure": [{"request_range": {"key": _b64(bkey)}}, {"request_range": {"key": _b64(hkey)}}],
        })
        if doc.get("succeeded"):
            return int(doc.get("header", {}).get("revision", 0)), None, None
        resps = doc.get("responses") or [{}, {}]
        bkvs = (resps[0].get("response_range") or {}).get("kvs") or []
        hkvs = (resps[1].get("response_range") or {}).get("kvs") if len(resps) > 1 else None
        fresh_block = None
        if bkvs:
            kv = _kv(bkvs[0])
            fresh_block = (Block.from_dict(json.loads(kv.value)), kv.mod_revision)
        fresh_handle = None
        if hkvs:
            kv = _kv(hkvs[0])
            h = Handle.from_dict(json.loads(kv.value))
            h.handle_id = handle.handle_id
            fresh_handle = (h, kv.mod_revision)
        return None, fresh_block, fresh_handle

    def get_block_and_handle(self, cidr: IPv4Network, handle_id: str
                             ) -> tuple[tuple[Block, int] | None, tuple[Handle, int] | None]:
        """A block and a handle, read together (one round trip)."""
        bkvs, hkvs = self.read_many([(block_key(cidr), False), (handle_key(handle_id), False)])
        block = (Block.from_dict(json.loads(bkvs[0].value)), bkvs[0].mod_revision) if bkvs else None
        handle = None
        if hkvs:
            h = Handle.from_dict(json.loads(hkvs[0].value))
            h.handle_id = handle_id
            handle = (h, hkvs[0].mod_revision)
        return block, handle

    def get_handles(self, handle_ids: list[str]) -> dict[str, tuple[Handle, int]]:
        """Several handles in one round trip (missing ones are left out)."""
        out = {}
        for hid, kvs in zip(handle_ids, self.read_many([(handle_key(h), False) for h in handle_ids]),
                            strict=True):
            if kvs:
                h = Handle.from_dict(json.loads(kvs[0].value))
                h.handle_id = hid
                out[hid] = (h, kvs[0].mod_revision)
        return out

    def commit_release(self, block: Block, block_rev: int,
                       handles: list[tuple[str, Handle | None, int]], counts: dict[str, int] | None = None) -> bool:
        """Write a block after a release together with its handles, in one transaction.

        The block is deleted instead of written when it is empty and has no
        affinity. Each ``(handle_id, new, rev)`` is compared at ``rev`` and
        written, or deleted when ``new`` is None or empty. False if anything
        changed since it was read (the caller re-reads and retries).
        """
        bkey = block_key(block.cidr)
        compare = [{"key": _b64(bkey), "target": "MOD", "result": "EQUAL", "mod_revision": str(block_rev)}]
        if block.is_empty() and block.affinity is None:
            success: list[dict[str, Any]] = [{"request_delete_range": {"key": _b64(bkey)}}]
        else:
            success = [{"request_put": {"key": _b64(bkey),
                                        "value": base64.b64encode(_json(block.to_dict())).decode()}}]
        for hid, new, rev in handles:
            hkey = handle_key(hid)
            compare.append({"key": _b64(hkey), "target": "MOD", "result": "EQUAL", "mod_revision": str(rev)})
            if new is None or new.is_empty():
                success.append({"request_delete_range": {"key": _b64(hkey)}})
            else:
                success.append({"request_put": {"key": _b64(hkey),
                                                "value": base64.b64encode(self._handle_value(new)).decode()}})
        doc = self.etcd.call("/v3/kv/txn", {"compare": compare, "success": success, "failure": []})
        return bool(doc.get("succeeded"))

    def delete_block(self, cidr: IPv4Network | str, revision: int) -> None:
        """CAS-delete a block; raises Conflict / NotFound."""
        self.etcd.delete(block_key(cidr), mod_revision=revision)

    # -- affinities -------------------------------------------------------

    @staticmethod
    def _affinity(kv: Any) -> Affinity | None:
        rest = kv.key[len(HOST_PREFIX):]
        parts = rest.split("/")
        if len(parts) != 4 or parts[1:3] != ["ipv4", "block"]:
            return None
        data = json.loads(kv.value or b"{}")
        return Affinity(host=parts[0], cidr=key_part_to_cidr(parts[3]),
                        state=data.get("state", STATE_CONFIRMED) or STATE_CONFIRMED,
                        deleted=bool(data.get("deleted", False)), revision=kv.mod_revision)

    def list_affinities(self, host: str | None = None) -> list[Affinity]:
        """Block affinities of ``host`` (all hosts when None)."""
        prefix = affinity_prefix(host) if host else HOST_PREFIX
        kvs, _ = self.etcd.list(prefix)
        out = []
        for kv in kvs:
            aff = self._affinity(kv)
            if aff is not None:
                out.append(aff)
        return out

    def get_affinity(self, host: str, cidr: IPv4Network | str) -> Affinity | None:
        """One affinity, or None."""
        kv = self.etcd.get(affinity_key(host, cidr))
        return None if kv is None else self._affinity(kv)

    def create_affinity(self, host: str, cidr: IPv4Network | str, state: str) -> int:
        """Create an affinity; raises AlreadyExists."""
        return self.etcd.create(affinity_key(host, cidr), _json({"state": state, "deleted": False}))

    def update_affinity(self, host: str, cidr: IPv4Network | str, state: str, revision: int) -> int:
        """CAS-write an affinity's state."""
        return self.etcd.update(affinity_key(host, cidr), _json({"state": state, "deleted": False}),
                                revision)

    def delete_affinity(self, host: str, cidr: IPv4Network | str, revision: int | None = None) -> bool:
        """Delete an affinity (CAS when ``revision`` is given)."""
        return self.etcd.delete(affinity_key(host, cidr), mod_revision=revision)

    # -- handles ----------------------------------------------------------

    def get_handle(self, handle_id: str) -> tuple[Handle, int] | None:
        """A handle and its revision, or None."""
        kv = self.etcd.get(handle_key(handle_id))
        if kv is None:
            return None
        h = Handle.from_dict(json.loads(kv.value))
        h.handle_id = handle_id
        return h, kv.mod_revision

    def list_handles(self) -> list[Handle]:
        """Every handle."""
        kvs, _ = self.etcd.list(HANDLE_PREFIX)
        out = []
        for kv in kvs:
            h = Handle.from_dict(json.loads(kv.value))
            h.handle_id = kv.key[len(HANDLE_PREFIX):]
            out.append(h)
        return out

    def list_handles_with_revision(self) -> list[tuple[Handle, int]]:
        """Every handle with its mod revision."""
        kvs, _ = self.etcd.list(HANDLE_PREFIX)
        out = []
        for kv in kvs:
            h = Handle.from_dict(json.loads(kv.value))
            h.handle_id = kv.key[len(HANDLE_PREFIX):]
            out.append((h, kv.mod_revision))
        return out

    @staticmethod
    def _handle_value(h: Handle) -> bytes:
        return _json({"block": dict(h.block), "deleted": h.deleted})

    def update_handle(self, h: Handle, revision: int) -> int:
        """CAS-write a handle."""
        return self.etcd.update(handle_key(h.handle_id), self._handle_value(h), revision)

    def delete_handle(self, handle_id: str, revision: int) -> None:
        """CAS-delete a handle."""
        self.etcd.delete(handle_key(handle_id), mod_revision=revision)

    # -- config -----------------------------------------------------------

    def get_config(self) -> IPAMConfigRules:
        """The IPAMConfig singleton (Calico's defaults when absent)."""
        kv = self.etcd.get(CONFIG_KEY)
        if kv is None:
            return IPAMConfigRules()
        return self._config(kv)

    @staticmethod
    def _config(kv: KV) -> IPAMConfigRules:
        data = json.loads(kv.value)
        return IPAMConfigRules(
            strict_affinity=bool(data.get("strict_affinity", False)),
            auto_allocate_blocks=bool(data.get("auto_allocate_blocks", True)),
            max_blocks_per_host=int(data.get("maxBlocksPerHost", 0) or 0),
        )

    def put_config(self, cfg: IPAMConfigRules) -> int:
        """Validate and write the IPAMConfig singleton."""
        cfg.validate()
        return self.etcd.put(CONFIG_KEY, _json({
            "strict_affinity": cfg.strict_affinity,
            "auto_allocate_blocks": cfg.auto_allocate_blocks,
            "maxBlocksPerHost": cfg.max_blocks_per_host,
        }))


__all__ = ["Store", "Affinity", "errors", "block_key", "affinity_key", "handle_key",
           "STATE_PENDING", "STATE_CONFIRMED", "STATE_PENDING_DELETION"]
