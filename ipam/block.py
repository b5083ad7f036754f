"""Pure Calico IPAM data structures: allocation blocks, handles, pools, config rules.

Nothing here talks to etcd; :mod:`ipam.ipam` reads and writes these objects with
compare-and-swap.  The shapes follow libcalico-go's ``model.AllocationBlock``,
``model.IPAMHandle`` and ``model.IPAMConfig`` (calico.md section 2):

* a block holds ``allocations`` (ordinal -> attribute index or ``None``), an
  ``unallocated`` FIFO that starts as ``0..N-1`` (pop the head, push freed
  ordinals on the tail), ``attributes`` (``{handle_id, secondary}``) shared by
  the ordinals of one handle, and a ``sequenceNumber`` bumped on every write and
  stamped per ordinal so a release carrying a stale number is refused;
* a handle counts, per block CIDR, how many addresses it holds there.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

MIN_BLOCK_SIZE = 20
MAX_BLOCK_SIZE = 32
DEFAULT_BLOCK_SIZE = 26
DEFAULT_MAX_BLOCKS_PER_HOST = 20
AFFINITY_HOST_PREFIX = "host:"


class IPAMError(Exception):
    """Base class of every IPAM failure; the message says what went wrong."""


class BadSequenceNumber(IPAMError):
    """A release carried a sequence number that does not match the ordinal's stamp."""


class InvalidPool(IPAMError, ValueError):
    """An IP pool definition is invalid; ``field`` names the offending field."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        super().__init__(f"{field_name}: {message}")


class InvalidConfig(IPAMError, ValueError):
    """An IPAMConfig combination Calico refuses."""


# ---------------------------------------------------------------------------
# pools


def parse_pool_cidr(cidr: str) -> IPv4Network:
    """Parse an IPv4 pool CIDR strictly (host bits must be zero); raise :class:`InvalidPool`."""
    if not isinstance(cidr, str) or not cidr:
        raise InvalidPool("spec.cidr", f"invalid CIDR {cidr!r}: must be a string like 192.168.0.0/16")
    if "/" not in cidr:
        raise InvalidPool("spec.cidr", f"invalid CIDR {cidr!r}: missing /prefix-length")
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise InvalidPool("spec.cidr", f"invalid CIDR {cidr!r}") from None
    if net.version != 4:
        raise InvalidPool("spec.cidr", f"invalid CIDR {cidr!r}: only IPv4 pools are supported")
    return net


def validate_pool(cidr: str, block_size: int | None, others: Iterable[tuple[str, str]] = ()) -> IPv4Network:
    """Check a pool as Calico's validator does and return its (normalised) network.

    ``others`` are ``(name, cidr)`` of the pools already present (excluding this one);
    an overlap with any of them is refused naming ``spec.cidr`` and the other pool.
    """
    net = parse_pool_cidr(cidr)
    size = DEFAULT_BLOCK_SIZE if block_size is None else block_size
    if isinstance(size, bool) or not isinstance(size, int):
        raise InvalidPool("spec.blockSize", f"must be an integer, got {size!r}")
    if not MIN_BLOCK_SIZE <= size <= MAX_BLOCK_SIZE:
        raise InvalidPool(
            "spec.blockSize",
            f"{size} is out of range: IPv4 block size must be between {MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE}",
        )
    if net.prefixlen > size:
        raise InvalidPool(
            "spec.cidr",
            f"pool {net} is smaller than its block size /{size}: the prefix length must be <= blockSize",
        )
    for other_name, other_cidr in others:
        try:
            other = ipaddress.ip_network(other_cidr, strict=False)
        except ValueError:
            continue
        if other.version == 4 and net.overlaps(other):
            raise InvalidPool(
                "spec.cidr", f"IPPool({other_name}) CIDR {other} overlaps with {net}"
            )
    return net


def block_count(pool: IPv4Network, block_size: int) -> int:
    """Number of blocks of ``/block_size`` a pool holds."""
    return 1 << (block_size - pool.prefixlen)


def block_at(pool: IPv4Network, block_size: int, index: int) -> IPv4Network:
    """The ``index``-th block of a pool (0-based)."""
    step = 1 << (32 - block_size)
    base = int(pool.network_address) + index * step
    return IPv4Network((base, block_size))


def block_of(ip: IPv4Address, block_size: int) -> IPv4Network:
    """The block of ``/block_size`` containing ``ip``."""
    return IPv4Network((int(ip), block_size), strict=False)


def fnv1_32(data: bytes) -> int:
    """FNV-1 (not 1a) 32-bit hash, as Go's ``hash/fnv.New32``."""
    h = 0x811C9DC5
    for byte in data:
        h = (h * 0x01000193) & 0xFFFFFFFF
        h ^= byte
    return h


def walk_start(hostname: str, nblocks: int) -> int:
    """Deterministic per-host start index for the block walk (FNV-1 of the hostname)."""
    if nblocks <= 0:
        return 0
    return fnv1_32(hostname.encode()) % nblocks


def block_walk(pool: IPv4Network, block_size: int, hostname: str) -> Iterator[IPv4Network]:
    """Every block of the pool once, starting at the host's offset and wrapping around.

    As in Calico, /32 blocks start at a random offset instead (one address per
    block: a fixed per-host start would make every claim walk the same prefix).
    """
    n = block_count(pool, block_size)
    start = random.randrange(n) if block_size == MAX_BLOCK_SIZE else walk_start(hostname, n)
    for i in range(n):
        yield block_at(pool, block_size, (start + i) % n)


# ---------------------------------------------------------------------------
# IPAM config


@dataclass
class IPAMConfigRules:
    """The IPAMConfig singleton (strictAffinity, autoAllocateBlocks, maxBlocksPerHost)."""

    strict_affinity: bool = False
    auto_allocate_blocks: bool = True
    max_blocks_per_host: int = 0

    def validate(self) -> None:
        """Refuse the combinations Calico refuses; raise :class:`InvalidConfig`."""
        if not self.strict_affinity and not self.auto_allocate_blocks:
            raise InvalidConfig("Cannot disable 'StrictAffinity' and 'AutoAllocateBlocks' at the same time")
        if self.max_blocks_per_host < 0:
            raise InvalidConfig("IPAMConfig: maxBlocksPerHost must be >= 0")
        if self.max_blocks_per_host > 0 and not self.strict_affinity:
            raise InvalidConfig("MaxBlocksPerHost requires StrictAffinity to be enabled")

    @property
    def block_limit(self) -> int:
        """The effective per-host block cap (0 means Calico's default of 20)."""
        return self.max_blocks_per_host or DEFAULT_MAX_BLOCKS_PER_HOST


# ---------------------------------------------------------------------------
# blocks


def host_affinity(node: str) -> str:
    """The block affinity string for a node: ``host:<node>``."""
    return AFFINITY_HOST_PREFIX + node


def affinity_host(affinity: str | None) -> str | None:
    """The node named by a ``host:<node>`` affinity, else ``None``."""
    if affinity and affinity.startswith(AFFINITY_HOST_PREFIX):
        return affinity[len(AFFINITY_HOST_PREFIX):]
    return None


@dataclass
class Attribute:
    """One allocation attribute: the handle and the secondary attributes (node, pod, ...)."""

    handle_id: str | None
    secondary: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Calico's JSON shape ``{"handle_id": ..., "secondary": {...}}``."""
        return {"handle_id": self.handle_id, "secondary": dict(self.secondary)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Attribute:
        """Inverse of :meth:`to_dict`."""
        return cls(handle_id=data.get("handle_id"), secondary=dict(data.get("secondary") or {}))


@dataclass
class Block:
    """An allocation block (one CAS unit in the datastore)."""

    cidr: IPv4Network
    affinity: str | None = None
    allocations: list[int | None] = field(default_factory=list)
    unallocated: list[int] = field(default_factory=list)
    attributes: list[Attribute] = field(default_factory=list)
    sequence_number: int = 0
    sequence_number_for_allocation: dict[str, int] = field(default_factory=dict)
    deleted: bool = False
    strict_affinity: bool = False

    @classmethod
    def new(cls, cidr: IPv4Network | str, affinity: str | None = None,
            sequence_number: int = 0) -> Block:
        """A fresh empty block: every ordinal free, FIFO ``0..N-1`` (``newBlock``; IPAM passes
        the creation time in Unix nanoseconds as the first sequence number)."""
        net = IPv4Network(cidr)
        n = net.num_addresses
        return cls(cidr=net, affinity=affinity, allocations=[None] * n,
                   unallocated=list(range(n)), sequence_number=sequence_number)

    # -- queries ------------------------------------------------------------

    @property
    def size(self) -> int:
        """Number of addresses in the block."""
        return self.cidr.num_addresses

    @property
    def host(self) -> str | None:
        """The node this block is affine to, if any."""
        return affinity_host(self.affinity)

    def num_free(self) -> int:
        """Free addresses."""
        return len(self.unallocated)

    def num_allocated(self) -> int:
        """Allocated addresses."""
        return self.size - len(self.unallocated)

    def is_empty(self) -> bool:
        """True when nothing is allocated."""
        return len(self.unallocated) == self.size

    def ordinal(self, ip: IPv4Address) -> int:
        """The ordinal of ``ip`` in this block; ``ValueError`` if outside."""
        if ip not in self.cidr:
            raise ValueError(f"{ip} is not in block {self.cidr}")
        return int(ip) - int(self.cidr.network_address)

    def address(self, ordinal: int) -> IPv4Address:
        """The address of ``ordinal``."""
        return IPv4Address(int(self.cidr.network_address) + ordinal)

    def attribute_of(self, ip: IPv4Address) -> Attribute | None:
        """The attribute of an allocated ``ip``, or ``None`` when it is free."""
        idx = self.allocations[self.ordinal(ip)]
        return None if idx is None else self.attributes[idx]

    def allocated(self) -> Iterator[tuple[IPv4Address, Attribute]]:
        """Every allocated address with its attribute, in ordinal order."""
        for o, idx in enumerate(self.allocations):
            if idx is not None:
                yield self.address(o), self.attributes[idx]

    def ips_of_handle(self, handle_id: str) -> list[IPv4Address]:
        """Addresses held by ``handle_id`` in this block."""
        return [ip for ip, attr in self.allocated() if attr.handle_id == handle_id]

    def sequence_number_of(self, ip: IPv4Address) -> int | None:
        """The sequence number stamped on an allocated ``ip``."""
        return self.sequence_number_for_allocation.get(str(self.ordinal(ip)))

    # -- mutations (each bumps the sequence number once) --------------------

    def _find_or_add_attribute(self, handle_id: str | None, secondary: dict[str, str]) -> int:
        for i, attr in enumerate(self.attributes):
            if attr.handle_id == handle_id and attr.secondary == secondary:
                return i
        self.attributes.append(Attribute(handle_id, dict(secondary)))
        return len(self.attributes) - 1

    def auto_assign(self, num: int, handle_id: str | None, attrs: dict[str, str]) -> list[IPv4Address]:
        """Take up to ``num`` addresses from the FIFO head; returns the addresses taken."""
        if num <= 0 or not self.unallocated:
            return []
        take = self.unallocated[:num]
        del self.unallocated[:num]
        return self._allocate(take, handle_id, attrs)

    def assign(self, ip: IPv4Address, handle_id: str | None, attrs: dict[str, str]) -> None:
        """Allocate one specific address; :class:`IPAMError` if it is already in use."""
        o = self.ordinal(ip)
        if self.allocations[o] is not None:
            raise IPAMError(f"Address already assigned in block: {ip} is in use")
        self.unallocated.remove(o)
        self._allocate([o], handle_id, attrs)

    def _allocate(self, ordinals: list[int], handle_id: str | None, attrs: dict[str, str]) -> list[IPv4Address]:
        idx = self._find_or_add_attribute(handle_id, attrs)
        for o in ordinals:
            self.allocations[o] = idx
            self.sequence_number_for_allocation[str(o)] = self.sequence_number
        self.sequence_number += 1
        return [self.address(o) for o in ordinals]

    def release(self, ips: Iterable[IPv4Address],
                sequence_numbers: dict[IPv4Address, int] | None = None) -> tuple[list[IPv4Address], dict[str, int]]:
        """Free ``ips``.

        Returns ``(not_allocated, handle_counts)``: the addresses that were already
        free, and per handle how many addresses this call freed (to decrement the
        handle objects).  A sequence number given for an address that does not
        match its stamp raises :class:`BadSequenceNumber` and changes nothing.
        """
        ips = list(ips)
        seqs = sequence_numbers or {}
        to_free: list[int] = []
        unallocated: list[IPv4Address] = []
        for ip in ips:
            o = self.ordinal(ip)
            if self.allocations[o] is None:
                unallocated.append(ip)
                continue
            if ip in seqs:
                stamp = self.sequence_number_for_allocation.get(str(o))
                if stamp != seqs[ip]:
                    raise BadSequenceNumber(
                        f"release of {ip} refused: sequence number {seqs[ip]} does not match "
                        f"the allocation's {stamp} (block {self.cidr} was modified)"
                    )
            if o not in to_free:
                to_free.append(o)
        counts = self._free(to_free)
        return unallocated, counts

    def release_by_handle(self, handle_id: str) -> tuple[list[IPv4Address], dict[str, int]]:
        """Free every address of ``handle_id``; returns ``(freed, handle_counts)``."""
        ordinals = [o for o, idx in enumerate(self.allocations)
                    if idx is not None and self.attributes[idx].handle_id == handle_id]
        counts = self._free(ordinals)
        return [self.address(o) for o in ordinals], counts

    def _free(self, ordinals: list[int]) -> dict[str, int]:
        counts: dict[str, int] = {}
        if not ordinals:
            return counts
        for o in ordinals:
            idx = self.allocations[o]
            assert idx is not None
            handle = self.attributes[idx].handle_id
            if handle:
                counts[handle] = counts.get(handle, 0) + 1
            self.allocations[o] = None
            self.unallocated.append(o)
            self.sequence_number_for_allocation.pop(str(o), None)
        self._compact_attributes()
        self.sequence_number += 1
        return counts

    def _compact_attributes(self) -> None:
        """Drop attributes no ordinal refers to any more and renumber the rest."""
        used = sorted({idx for idx in self.allocations if idx is not None})
        if len(used) == len(self.attributes):
            return
        remap = {old: new for new, old in enumerate(used)}
        self.attributes = [self.attributes[old] for old in used]
        self.allocations = [None if idx is None else remap[idx] for idx in self.allocations]

    # -- JSON (Calico's etcd value shape) -----------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The block as Calico v3.28.1 stores it (``model.AllocationBlock`` JSON, field order
        as the struct; no ``affinityClaimTime``, which is v3.32+)."""
        out: dict[str, Any] = {"cidr": str(self.cidr), "affinity": self.affinity}
        out.update({
            "strictAffinity": self.strict_affinity,
            "allocations": list(self.allocations),
            "unallocated": list(self.unallocated),
            "attributes": [a.to_dict() for a in self.attributes],
            "deleted": self.deleted,
            "sequenceNumber": self.sequence_number,
            "sequenceNumberForAllocation": dict(self.sequence_number_for_allocation),
        })
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Block:
        """Inverse of :meth:`to_dict` (also accepts snake_case keys)."""
        def pick(*names: str, default: Any = None) -> Any:
            for n in names:
                if n in data and data[n] is not None:
                    return data[n]
            return default

        cidr = IPv4Network(pick("cidr"))
        n = cidr.num_addresses
        return cls(
            cidr=cidr,
            affinity=pick("affinity"),
            allocations=list(pick("allocations", default=[None] * n)),
            unallocated=list(pick("unallocated", default=list(range(n)))),
            attributes=[Attribute.from_dict(a) for a in pick("attributes", default=[])],
            deleted=bool(pick("deleted", default=False)),
            strict_affinity=bool(pick("strictAffinity", "strict_affinity", default=False)),
            sequence_number=int(pick("sequenceNumber", "sequence_number", default=0)),
            sequence_number_for_allocation={
                str(k): int(v) for k, v in
                pick("sequenceNumberForAllocation", "sequence_number_for_allocation", default={}).items()
            },
        )

    def check(self) -> list[str]:
        """Internal consistency problems of this block (empty when sound)."""
        problems: list[str] = []
        n = self.size
        if len(self.allocations) != n:
            problems.append(f"block {self.cidr}: {len(self.allocations)} allocations for {n} addresses")
            return problems
        free = {o for o, idx in enumerate(self.allocations) if idx is None}
        if len(set(self.unallocated)) != len(self.unallocated):
            problems.append(f"block {self.cidr}: duplicate ordinals in unallocated")
        if set(self.unallocated) != free:
            problems.append(f"block {self.cidr}: unallocated list does not match free ordinals")
        for o, idx in enumerate(self.allocations):
            if idx is not None and not 0 <= idx < len(self.attributes):
                problems.append(f"block {self.cidr}: ordinal {o} points at missing attribute {idx}")
        return problems


@dataclass
class Handle:
    """An IPAM handle: how many addresses it holds in each block (a secondary index)."""

    handle_id: str
    block: dict[str, int] = field(default_factory=dict)
    deleted: bool = False

    def increment(self, block_cidr: IPv4Network | str, num: int = 1) -> None:
        """Record ``num`` more addresses in a block."""
        key = str(block_cidr)
        self.block[key] = self.block.get(key, 0) + num

    def decrement(self, block_cidr: IPv4Network | str, num: int = 1) -> None:
        """Record ``num`` fewer addresses in a block; :class:`IPAMError` on underflow."""
        key = str(block_cidr)
        have = self.block.get(key, 0)
        if num > have:
            raise IPAMError(f"handle {self.handle_id}: cannot release {num} from {key}, holds {have}")
        if have == num:
            self.block.pop(key, None)
        else:
            self.block[key] = have - num

    def is_empty(self) -> bool:
        """True when the handle holds no address."""
        return not self.block

    def total(self) -> int:
        """Addresses held in all blocks."""
        return sum(self.block.values())

    def to_dict(self) -> dict[str, Any]:
        """Calico's JSON shape (``model.IPAMHandle``)."""
        return {"handleID": self.handle_id, "block": dict(self.block), "deleted": self.deleted}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Handle:
        """Inverse of :meth:`to_dict`."""
        return cls(handle_id=data.get("handleID") or data.get("handle_id") or "",
                   block={str(k): int(v) for k, v in (data.get("block") or {}).items()},
                   deleted=bool(data.get("deleted", False)))
