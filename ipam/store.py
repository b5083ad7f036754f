"""IPAM objects in etcd, in Calico's etcd-mode key layout (calico.md section 7).

* blocks      ``/calico/ipam/v2/assignment/ipv4/block/10.0.0.0-26``
* affinities  ``/calico/ipam/v2/host/<node>/ipv4/block/10.0.0.0-26`` = ``{"state", "deleted"}``
* handles     ``/calico/ipam/v2/handle/<handleID>`` = ``{"block": {cidr: n}, "deleted"}``
* config      ``/calico/ipam/v2/config``

Every write is a create (only if absent) or a compare-and-swap on the key's mod
revision; the caller retries on :class:`datastore.errors.Conflict`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

from datastore import errors
from ipam.block import Block, Handle, IPAMConfigRules

IPAM_PREFIX = "/calico/ipam/v2/"
BLOCK_PREFIX = "/calico/ipam/v2/assignment/ipv4/block/"
HOST_PREFIX = "/calico/ipam/v2/host/"
HANDLE_PREFIX = "/calico/ipam/v2/handle/"
CONFIG_KEY = "/calico/ipam/v2/config"

STATE_PENDING = "pending"
STATE_CONFIRMED = "confirmed"
STATE_PENDING_DELETION = "pendingDeletion"


def cidr_to_key_part(cidr: IPv4Network | str) -> str:
    """``10.0.0.0/26`` -> ``10.0.0.0-26``."""
    return str(cidr).replace("/", "-")


def key_part_to_cidr(part: str) -> IPv4Network:
    """``10.0.0.0-26`` -> ``IPv4Network('10.0.0.0/26')``."""
    addr, _, plen = part.rpartition("-")
    return IPv4Network(f"{addr}/{plen}")


def block_key(cidr: IPv4Network | str) -> str:
    """etcd key of a block."""
    return BLOCK_PREFIX + cidr_to_key_part(cidr)


def affinity_prefix(host: str) -> str:
    """etcd prefix of every IPv4 block affinity of ``host``."""
    return f"{HOST_PREFIX}{host}/ipv4/block/"


def affinity_key(host: str, cidr: IPv4Network | str) -> str:
    """etcd key of ``host``'s affinity to a block."""
    return affinity_prefix(host) + cidr_to_key_part(cidr)


def handle_key(handle_id: str) -> str:
    """etcd key of a handle."""
    return HANDLE_PREFIX + handle_id


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


class Store:
    """Typed reads and CAS writes of IPAM keys over :class:`datastore.etcd.EtcdClient`."""

    def __init__(self, etcd: Any):
        self.etcd = etcd

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

    def create_block(self, block: Block) -> int:
        """Create a block; raises AlreadyExists."""
        return self.etcd.create(block_key(block.cidr), _json(block.to_dict()))

    def update_block(self, block: Block, revision: int) -> int:
        """CAS-write a block; raises Conflict / NotFound."""
        return self.etcd.update(block_key(block.cidr), _json(block.to_dict()), revision)

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

    @staticmethod
    def _handle_value(h: Handle) -> bytes:
        return _json({"block": dict(h.block), "deleted": h.deleted})

    def create_handle(self, h: Handle) -> int:
        """Create a handle; raises AlreadyExists."""
        return self.etcd.create(handle_key(h.handle_id), self._handle_value(h))

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
