"""Calico IPAM on etcd: auto-assign, assign, release, tunnel addresses, check.

Semantics follow libcalico-go's ``lib/ipam`` (calico.md section 2):

1. fill this host's affine blocks (confirmed affinities in the selected pools);
2. claim a new block (pending affinity -> create block -> confirmed affinity),
   walking each pool's blocks from a per-host offset, capped at 20 blocks per
   host; a block that exists is taken only if it is ours and has room (v3.28.1 has
   no reclaim of other hosts' empty blocks and no ``affinityClaimTime``: v3.32+);
3. only then, and only if strictAffinity is off, borrow from other hosts' blocks.

Every write is a CAS with up to 100 attempts, re-reading on conflict. A handle
is incremented before the block write that uses it (so an address is never
held without its handle knowing), and corrected if the write loses.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from datastore import errors
from ipam.block import (
    DEFAULT_BLOCK_SIZE,
    BadSequenceNumber,
    Block,
    Handle,
    IPAMConfigRules,
    IPAMError,
    affinity_host,
    block_of,
    block_walk,
    host_affinity,
)
from ipam.check import CheckReport, build_report
from ipam.store import (
    STATE_CONFIRMED,
    STATE_PENDING,
    STATE_PENDING_DELETION,
    Store,
)

DATASTORE_RETRIES = 100
RESOURCE_PREFIX = "/calico/resources/v3/projectcalico.org/"
TUNNEL_HANDLE_PREFIX = "ipip-tunnel-addr-"
#: Per encapsulation: the handle prefix and the ``type`` attribute of a node's tunnel address
#: (allocateip.go ``generateHandleAndAttributes``).
TUNNEL_KINDS = {"ipip": ("ipip-tunnel-addr-", "ipipTunnelAddress"),
                "vxlan": ("vxlan-tunnel-addr-", "vxlanTunnelAddress")}
#: the ``type`` attributes of tunnel addresses (never a workload's, never a borrowed route)
TUNNEL_TYPES = tuple(kind for _, kind in TUNNEL_KINDS.values())


def borrowed(spec: Any) -> tuple[tuple[int, str], ...]:
    """``(ordinal, node)`` of each address of an IPAMBlock's spec allocated to another node
    than the block's ``host:`` affinity, tunnel addresses left out: the borrowed /32s Felix
    routes and confd originates."""
    host = affinity_host(spec.affinity)
    out = []
    for ordinal, idx in enumerate(spec.allocations):
        if idx is None or idx >= len(spec.attributes):
            continue
        attrs = spec.attributes[idx].secondary or {}
        node = attrs.get("node")
        if node and node != host and attrs.get("type") not in TUNNEL_TYPES:
            out.append((ordinal, node))
    return tuple(out)


class BlockLimitError(IPAMError):
    """The host already holds its maximum number of blocks (libcalico-go's ``ErrBlockLimit``)."""

    def __init__(self, host: str, limit: int):
        self.host, self.limit = host, limit
        super().__init__("cannot allocate new block due to per host block limit")


class PoolsExhausted(IPAMError):
    """Not enough free addresses in the selected pools."""

    def __init__(self, pools: Sequence[IPv4Network], wanted: int, got: int):
        self.wanted, self.got = wanted, got
        names = " ".join(str(p) for p in pools)  # Go's %v of a slice
        # IPAMAssignments.PartialFulfillmentError, with the message autoAssign records
        super().__init__(
            f"Assigned {got} out of {wanted} requested IPv4 addresses; "
            f"No IPs available in pools: [{names}]"
        )


class NoPools(IPAMError):
    """No usable pool for this request."""


class TooManyConflicts(IPAMError):
    """A CAS kept losing for all retries."""


@dataclass
class Pool:
    """What IPAM needs from an IPPool."""

    name: str
    cidr: IPv4Network
    block_size: int = DEFAULT_BLOCK_SIZE
    ipip_mode: str = "Never"
    vxlan_mode: str = "Never"
    disabled: bool = False
    node_selector: str = "all()"
    allowed_uses: list[str] = field(default_factory=lambda: ["Workload", "Tunnel"])

    @classmethod
    def from_resource_dict(cls, doc: dict[str, Any]) -> Pool:
        """Build from a calicoctl-shaped IPPool dict."""
        spec = doc.get("spec") or {}
        return cls(
            name=(doc.get("metadata") or {}).get("name", ""),
            cidr=ipaddress.ip_network(spec["cidr"], strict=False),  # type: ignore[arg-type]
            block_size=int(spec.get("blockSize") or DEFAULT_BLOCK_SIZE),
            ipip_mode=spec.get("ipipMode") or "Never",
            vxlan_mode=spec.get("vxlanMode") or "Never",
            disabled=bool(spec.get("disabled", False)),
            node_selector=spec.get("nodeSelector") or "all()",
            allowed_uses=list(spec.get("allowedUses") or ["Workload", "Tunnel"]),
        )


def _ipv4(value: IPv4Address | str) -> IPv4Address:
    """Parse an IPv4 address or raise IPAMError naming the bad value."""
    try:
        return IPv4Address(value)
    except ValueError:
        raise IPAMError(f"invalid IPv4 address {value!r}") from None


class IPAM:
    """Calico IPAM over a datastore client (or a bare :class:`datastore.etcd.EtcdClient`)."""

    def __init__(self, client: Any, *, retries: int = DATASTORE_RETRIES,
                 clock: Callable[[], float] = time.time):
        self.client = client
        etcd = getattr(client, "etcd", None)
        self.etcd = etcd if etcd is not None else client
        kube = getattr(client, "kube", None)
        if kube is not None and etcd is None:  # the Kubernetes datastore (datastore.kdd.KubeClient)
            from ipam.kddstore import KubeStore

            self.store: Any = KubeStore(kube)
            self.etcd = None
        else:
            self.store = Store(self.etcd)
        self.retries = retries
        self.clock = clock
        self.last_revision = 0  # etcd revision of the last block write that allocated

    # ------------------------------------------------------------------
    # resources owned by others (pools, nodes, endpoints)

    def _resource_dicts(self, kind: str, plural: str) -> list[dict[str, Any]]:
        lister = getattr(self.client, "list", None)
        if lister is not None and self.client is not self.etcd:
            return [obj.to_dict() for obj in lister(kind)]
        kvs, _ = self.etcd.list(RESOURCE_PREFIX + plural + "/")
        return [json.loads(kv.value) for kv in kvs]

    def pools(self) -> list[Pool]:
        """Every configured IPv4 pool."""
        out = []
        for doc in self._resource_dicts("IPPool", "ippools"):
            try:
                pool = Pool.from_resource_dict(doc)
            except (KeyError, ValueError):
                continue
            if pool.cidr.version == 4:
                out.append(pool)
        return out

    def _node_labels(self, host: str) -> dict[str, str]:
        getter = getattr(self.client, "get", None)
        if getter is not None and self.client is not self.etcd:
            try:
                node = getter("Node", host)
            except errors.NotFound:
                return {}
            return dict(node.to_dict().get("metadata", {}).get("labels") or {})
        kv = self.etcd.get(RESOURCE_PREFIX + "nodes/" + host)
        if kv is None:
            return {}
        return dict(json.loads(kv.value).get("metadata", {}).get("labels") or {})

    def _selects(self, pool: Pool, host: str, labels: Callable[[], dict[str, str]]) -> bool:
        sel = (pool.node_selector or "all()").strip()
        if sel in ("all()", ""):
            return True
        from datastore.selector import parse_selector

        return bool(parse_selector(sel).matches(labels()))

    def select_pools(self, host: str, pools: Iterable[str] | None = None,
                     intended_use: str = "Workload", every: list[Pool] | None = None) -> list[Pool]:
        """The pools an allocation for ``host`` may use.

        ``pools`` names pools by name or CIDR (as the CNI netconf and pod
        annotations do); an unknown or disabled one is an error. Without it,
        every enabled pool that allows ``intended_use`` and selects the node.
        """
        every = self.pools() if every is None else every
        cache: dict[str, dict[str, str]] = {}

        def labels() -> dict[str, str]:
            if "l" not in cache:
                cache["l"] = self._node_labels(host)
            return cache["l"]

        if pools:
            chosen = []
            for want in pools:
                match = [p for p in every if p.name == want or str(p.cidr) == want]
                if not match:
                    try:
                        net = ipaddress.ip_network(want, strict=False)
                        match = [p for p in every if p.cidr == net]
                    except ValueError:
                        pass
                if not match:
                    raise NoPools(f"the requested IP pool {want!r} does not exist")
                if match[0].disabled:
                    raise NoPools(f"the requested IP pool {want!r} is disabled")
                chosen.append(match[0])
            return chosen
        return [p for p in every
                if not p.disabled and intended_use in p.allowed_uses and self._selects(p, host, labels)]

    # ------------------------------------------------------------------
    # config

    def get_config(self) -> IPAMConfigRules:
        """The IPAMConfig (defaults: strictAffinity false, autoAllocateBlocks true, cap 20)."""
        return self.store.get_config()

    def set_config(self, cfg: IPAMConfigRules) -> None:
        """Validate and store the IPAMConfig; :class:`ipam.block.InvalidConfig` if refused."""
        self.store.put_config(cfg)

    # ------------------------------------------------------------------
    # allocation

    def _assign_in_block(self, cidr: IPv4Network, num: int, handle_id: str, attrs: dict[str, str],
                         host: str, affine_only: bool,
                         prefetched: tuple[Block, int] | None = None) -> list[IPv4Address]:
        """Take up to ``num`` addresses from one block.

        The block and the handle are written in one etcd transaction that
        compares both revisions (one CAS); when it loses, the transaction's own
        failure branch returns the current block and handle and we retry, up to
        ``retries`` times. The first attempt assumes a new handle.
        """
        got = prefetched if prefetched is not None else self.store.get_block(cidr)
        handle: tuple[Handle, int] | None = None
        for _ in range(self.retries):
            if got is None:
                return []
            block, rev = got
            if affine_only and block.host != host:
                return []
            if not block.unallocated:
                return []
            ips = block.auto_assign(num, handle_id, attrs)
            h = Handle(handle_id, dict(handle[0].block)) if handle else Handle(handle_id)
            h.increment(cidr, len(ips))
            done, got, handle = self.store.commit_allocation(block, rev, h, handle[1] if handle else None,
                                                             added=len(ips))
            if done is not None:
                self.last_revision = done
                return ips
        raise TooManyConflicts(f"block {cidr}: gave up after {self.retries} conflicting writes")

    def _try_claim(self, host: str, cidr: IPv4Network) -> bool:
        """The pending -> block -> confirmed claim protocol; False if another host won."""
        try:
            rev = self.store.create_affinity(host, cidr, STATE_PENDING)
        except errors.AlreadyExists:
            aff = self.store.get_affinity(host, cidr)
            if aff is None:
                return False
            rev = aff.revision
        # newBlock: the sequence number starts at the creation time in Unix nanoseconds
        block = Block.new(cidr, host_affinity(host), sequence_number=int(self.clock() * 1e9))
        try:
            self.store.create_block(block)
        except errors.AlreadyExists:
            got = self.store.get_block(cidr)
            if got is None or got[0].host != host:
                try:
                    self.store.delete_affinity(host, cidr, rev)
                except (errors.Conflict, errors.NotFound):
                    pass
                return False
        for _ in range(self.retries):
            try:
                self.store.update_affinity(host, cidr, STATE_CONFIRMED, rev)
                return True
            except errors.Conflict:
                aff = self.store.get_affinity(host, cidr)
                if aff is None:
                    return False
                if aff.state == STATE_CONFIRMED:
                    return True
                rev = aff.revision
            except errors.NotFound:
                return False
        raise TooManyConflicts(f"affinity {host} {cidr}: gave up after {self.retries} writes")

    def _claim_new_block(self, host: str, pools: Sequence[Pool]) -> IPv4Network | None:
        """Find and claim a block for ``host``; None when the pools have no free block."""
        existing = {b.cidr: (b, kv) for b, kv in self.store.list_blocks()}
        for pool in pools:
            for cidr in block_walk(pool.cidr, pool.block_size, host):
                have = existing.get(cidr)
                if have is None or (have[0].host == host and have[0].unallocated):
                    if self._try_claim(host, cidr):
                        return cidr
        return None

    def auto_assign(self, num: int, handle_id: str, attrs: dict[str, str] | None, hostname: str,
                    pools: Iterable[str] | None = None,
                    intended_use: str = "Workload") -> list[IPv4Address]:
        """Allocate ``num`` IPv4 addresses for ``hostname`` under ``handle_id``.

        Either all ``num`` addresses are allocated or none (partial results are
        released before the error is raised): :class:`PoolsExhausted`,
        :class:`BlockLimitError`, :class:`NoPools`.
        """
        if not isinstance(num, int) or num < 1:
            raise IPAMError(f"num must be a positive integer, got {num!r}")
        if not handle_id:
            raise IPAMError("handle_id must not be empty")
        if not hostname:
            raise IPAMError("hostname must not be empty")
        attrs = dict(attrs or {})
        cfg, pool_docs, affinities = self.store.alloc_snapshot(hostname)
        every = []
        for doc in pool_docs:
            try:
                pool = Pool.from_resource_dict(doc)
            except (KeyError, ValueError, TypeError):
                continue
            if pool.cidr.version == 4:
                every.append(pool)
        chosen = self.select_pools(hostname, pools, intended_use, every)
        if not chosen:
            raise NoPools(f"no IP pools available for {intended_use} addresses on node {hostname}")
        got: list[IPv4Address] = []
        try:
            affine = [a.cidr for a in affinities
                      if not a.deleted and a.state == STATE_CONFIRMED
                      and any(a.cidr.subnet_of(p.cidr) for p in chosen)]
            current = self.store.get_free_blocks(affine)
            for cidr in affine:
                if len(got) >= num:
                    break
                have = current.get(cidr)
                if have is None or have[0].host != hostname or not have[0].unallocated:
                    continue
                got += self._assign_in_block(cidr, num - len(got), handle_id, attrs, hostname, True,
                                             prefetched=have)
            if len(got) < num and cfg.auto_allocate_blocks:
                tried: set[IPv4Network] = set()
                while len(got) < num:
                    owned = len([a for a in self.store.list_affinities(hostname) if not a.deleted])
                    if owned >= cfg.block_limit:
                        raise BlockLimitError(hostname, cfg.block_limit)
                    cidr = self._claim_new_block(hostname, chosen)
                    if cidr is None or cidr in tried:  # no free block (or one that keeps filling up)
                        break
                    tried.add(cidr)
                    got += self._assign_in_block(cidr, num - len(got), handle_id, attrs, hostname, True)
            if len(got) < num and not cfg.strict_affinity:
                got += self._borrow(num - len(got), handle_id, attrs, hostname, chosen)
            if len(got) < num:
                raise PoolsExhausted([p.cidr for p in chosen], num, len(got))
        except BaseException:
            if got:
                self.release_ips(got)
            raise
        return got

    def _borrow(self, num: int, handle_id: str, attrs: dict[str, str], host: str,
                pools: Sequence[Pool]) -> list[IPv4Address]:
        got: list[IPv4Address] = []
        existing = {b.cidr: b for b, _ in self.store.list_blocks()}
        for pool in pools:
            for cidr in block_walk(pool.cidr, pool.block_size, host):
                if len(got) >= num:
                    return got
                block = existing.get(cidr)
                if block is None or not block.unallocated:
                    continue
                got += self._assign_in_block(cidr, num - len(got), handle_id, attrs, host, False)
        return got

    def assign_ip(self, ip: IPv4Address | str, handle_id: str, attrs: dict[str, str] | None,
                  hostname: str) -> None:
        """Allocate one specific address (claiming its block for ``hostname`` if unclaimed)."""
        ip = _ipv4(ip)
        pool = next((p for p in self.pools() if ip in p.cidr), None)
        if pool is None:
            raise IPAMError(f"{ip} is not in any configured IP pool")
        cfg = self.get_config()
        cidr = block_of(ip, pool.block_size)
        attrs = dict(attrs or {})
        got = self.store.get_block(cidr)
        handle = self.store.get_handle(handle_id)
        for _ in range(self.retries):
            if got is None:
                self._try_claim(hostname, cidr)
                got = self.store.get_block(cidr)
                continue
            block, rev = got
            if cfg.strict_affinity and block.host != hostname:
                raise IPAMError(f"{ip}: block {cidr} is affine to {block.host}, not {hostname}, "
                                "and strictAffinity is on")
            block.assign(ip, handle_id, attrs)
            h = Handle(handle_id, dict(handle[0].block)) if handle else Handle(handle_id)
            h.increment(cidr, 1)
            done, got, handle = self.store.commit_allocation(block, rev, h, handle[1] if handle else None,
                                                             added=1)
            if done is not None:
                self.last_revision = done
                return
        raise TooManyConflicts(f"assign {ip}: gave up after {self.retries} conflicting writes")

    # ------------------------------------------------------------------
    # release

    def _block_cidr_of(self, ips: Iterable[IPv4Address]) -> dict[IPv4Address, IPv4Network | None]:
        """The block each address belongs to: from its pool's block size, else by scanning block keys."""
        pools = self.pools()
        out: dict[IPv4Address, IPv4Network | None] = {}
        cidrs: list[IPv4Network] | None = None
        for ip in ips:
            pool = next((p for p in pools if ip in p.cidr), None)
            if pool is not None:
                out[ip] = block_of(ip, pool.block_size)
                continue
            if cidrs is None:
                cidrs = self.store.list_block_cidrs()
            out[ip] = next((c for c in cidrs if ip in c), None)
        return out

    def _blocks_for(self, ips: Iterable[IPv4Address]) -> dict[IPv4Network | None, list[IPv4Address]]:
        out: dict[IPv4Network | None, list[IPv4Address]] = {}
        for ip, cidr in self._block_cidr_of(ips).items():
            out.setdefault(cidr, []).append(ip)
        return out

    def release_ips(self, ips: Iterable[IPv4Address | str],
                    sequence_numbers: dict[IPv4Address, int] | None = None) -> list[IPv4Address]:
        """Release addresses; returns those that were not allocated.

        With ``sequence_numbers`` ({ip: seq}), an address whose allocation stamp
        differs is refused with :class:`ipam.block.BadSequenceNumber` (nothing
        in that block is released).
        """
        wanted = [_ipv4(ip) for ip in ips]
        not_allocated: list[IPv4Address] = []
        for cidr, group in self._blocks_for(wanted).items():
            if cidr is None:
                not_allocated += group
                continue
            not_allocated += self._release_in_block(cidr, group, sequence_numbers)
        return not_allocated

    def _release_in_block(self, cidr: IPv4Network, ips: list[IPv4Address],
                          seqs: dict[IPv4Address, int] | None) -> list[IPv4Address]:
        """Free ``ips`` of one block; block and handle counts change in one transaction."""
        for _ in range(self.retries):
            got = self.store.get_block(cidr)
            if got is None:
                return list(ips)
            block, rev = got
            unalloc, counts = block.release(ips, seqs)
            if not counts and len(unalloc) == len(ips):
                return unalloc
            if self._commit_release(block, rev, counts):
                return unalloc
        raise TooManyConflicts(f"block {cidr}: gave up after {self.retries} conflicting writes")

    def _commit_release(self, block: Block, rev: int, counts: dict[str, int],
                        handles: dict[str, tuple[Handle, int]] | None = None) -> bool:
        if handles is None:
            handles = self.store.get_handles(sorted(counts))
        ops: list[tuple[str, Handle | None, int]] = []
        for hid in sorted(counts):
            if hid not in handles:
                continue  # no handle object (check reports it); nothing to decrement
            h, hrev = handles[hid]
            new = Handle(hid, dict(h.block))
            new.decrement(block.cidr, min(counts[hid], new.block.get(str(block.cidr), 0)))
            ops.append((hid, new, hrev))
        return self.store.commit_release(block, rev, ops, counts)

    def release_by_handle(self, handle_id: str) -> list[IPv4Address]:
        """Release every address of ``handle_id``; returns them (empty if the handle is unknown).

        Block by block, each block write and the handle's decrement go in one
        transaction; the handle disappears with its last address.
        """
        got = self.store.get_handle(handle_id)
        if got is None:
            return []
        freed: list[IPv4Address] = []
        for cidr_text in list(got[0].block):
            cidr = IPv4Network(cidr_text)
            for _ in range(self.retries):
                got_block, got_handle = self.store.get_block_and_handle(cidr, handle_id)
                handles = {handle_id: got_handle} if got_handle is not None else {}
                if got_block is None:
                    if handles:  # the block is gone: drop its count from the handle
                        h, hrev = handles[handle_id]
                        new = Handle(handle_id, {k: v for k, v in h.block.items() if k != str(cidr)})
                        if not self._commit_handle_only(new, hrev):
                            continue
                    break
                block, block_rev = got_block
                ips, counts = block.release_by_handle(handle_id)
                if not ips:
                    if handles and str(cidr) in handles[handle_id][0].block:
                        h, hrev = handles[handle_id]
                        new = Handle(handle_id, {k: v for k, v in h.block.items() if k != str(cidr)})
                        if not self._commit_handle_only(new, hrev):
                            continue
                    break
                if self._commit_release(block, block_rev, counts, handles):
                    freed += ips
                    break
            else:
                raise TooManyConflicts(f"block {cidr}: gave up after {self.retries} conflicting writes")
        return freed

    @staticmethod
    def _decode_handle(handle_id: str, value: bytes) -> Handle:
        h = Handle.from_dict(json.loads(value))
        h.handle_id = handle_id
        return h

    def _commit_handle_only(self, new: Handle, rev: int) -> bool:
        try:
            if new.is_empty():
                self.store.delete_handle(new.handle_id, rev)
            else:
                self.store.update_handle(new, rev)
            return True
        except (errors.Conflict, errors.NotFound):
            return False

    def release_host_affinities(self, host: str) -> int:
        """Give up every block affinity of ``host`` (the node is gone); returns how many.

        See :meth:`_release_affinity` for the per-block protocol.
        """
        return sum(self._release_affinity(aff.host, aff.cidr) for aff in self.store.list_affinities(host))

    def release_pool_affinities(self, pool_cidr: IPv4Network | str) -> int:
        """Give up every host's affinity to blocks inside ``pool_cidr`` (the pool is being
        deleted, as Calico's IPPool delete does after disabling it); returns how many."""
        net = IPv4Network(pool_cidr)
        return sum(self._release_affinity(aff.host, aff.cidr) for aff in self.store.list_affinities()
                   if aff.cidr.subnet_of(net))

    def _release_affinity(self, host: str, cidr: IPv4Network) -> bool:
        """Affinity -> ``pendingDeletion``; delete the block if empty, else clear its
        affinity (it is deleted with its last address); delete the affinity. All CAS."""
        for _ in range(self.retries):
            cur = self.store.get_affinity(host, cidr)
            if cur is None:
                return False
            got = self.store.get_block(cidr)
            try:
                if got is None or got[0].host != host:
                    self.store.delete_affinity(host, cidr, cur.revision)
                    return True
                aff_rev = self.store.update_affinity(host, cidr, STATE_PENDING_DELETION, cur.revision)
                block, rev = got
                if block.is_empty():
                    self.store.delete_block(block.cidr, rev)
                else:
                    block.affinity = None
                    self.store.update_block(block, rev)
                self.store.delete_affinity(host, cidr, aff_rev)
            except (errors.Conflict, errors.NotFound):
                continue
            return True
        raise TooManyConflicts(f"affinity {host} {cidr}: gave up after {self.retries} writes")

    # ------------------------------------------------------------------
    # queries

    def ip_info(self, ip: IPv4Address | str) -> dict[str, Any]:
        """Everything IPAM knows about one address (``calicoctl ipam show --ip``)."""
        ip = _ipv4(ip)
        pool = next((p for p in self.pools() if ip in p.cidr), None)
        info: dict[str, Any] = {"ip": ip, "pool": pool.name if pool else None, "in_use": False,
                                "block": None, "affinity": None, "handle_id": None, "attrs": {},
                                "sequence_number": None}
        cidr = self._block_cidr_of([ip])[ip]
        got = self.store.get_block(cidr) if cidr is not None else None
        if got is not None:
            block = got[0]
            info["block"] = block.cidr
            info["affinity"] = block.affinity
            attr = block.attribute_of(ip)
            if attr is not None:
                info.update(in_use=True, handle_id=attr.handle_id, attrs=dict(attr.secondary),
                            sequence_number=block.sequence_number_of(ip))
        return info

    def get_assignment_attributes(self, ip: IPv4Address | str) -> tuple[dict[str, str], str | None]:
        """``(secondary attributes, handle_id)`` of an allocated address; IPAMError if free."""
        info = self.ip_info(ip)
        if not info["in_use"]:
            raise IPAMError(f"{info['ip']} is not assigned")
        return info["attrs"], info["handle_id"]

    def blocks(self) -> list[Block]:
        """Every block."""
        return [b for b, _ in self.store.list_blocks()]

    # ------------------------------------------------------------------
    # tunnel addresses

    @staticmethod
    def tunnel_handle(node: str, kind: str = "ipip") -> str:
        """``ipip-tunnel-addr-<node>`` (``vxlan-tunnel-addr-<node>`` for ``kind="vxlan"``)."""
        return _tunnel_kind(kind)[0] + node

    def tunnel_pools(self, node: str, kind: str = "ipip") -> list[Pool]:
        """Enabled pools that allow Tunnel use, select ``node`` and have ``kind`` (ipip or
        vxlan) mode Always or CrossSubnet (allocateip.go ``determineEnabledPoolCIDRs``)."""
        _tunnel_kind(kind)
        return [p for p in self.select_pools(node, None, "Tunnel")
                if (p.vxlan_mode if kind == "vxlan" else p.ipip_mode) in ("Always", "CrossSubnet")]

    def allocate_tunnel_address(self, node: str, kind: str = "ipip") -> IPv4Address | None:
        """The node's IPIP (or VXLAN) tunnel address, allocated if it has none; None
        (and any address it held released) without such pools.

        Idempotent: an address already held by ``<kind>-tunnel-addr-<node>`` inside
        a current pool of that kind is returned as is.
        """
        handle = self.tunnel_handle(node, kind)
        pools = self.tunnel_pools(node, kind)
        got = self.store.get_handle(handle)
        if got is not None:
            held = [ip for cidr in got[0].block
                    for ip in self._handle_ips_in_block(handle, IPv4Network(cidr))]
            good = [ip for ip in held if any(ip in p.cidr for p in pools)]
            if good:
                return good[0]
            self.release_by_handle(handle)
        if not pools:
            return None
        attr = _tunnel_kind(kind)[1]
        return self.auto_assign(1, handle, {"node": node, "type": attr}, node,
                                pools=[p.name for p in pools], intended_use="Tunnel")[0]

    def _handle_ips_in_block(self, handle_id: str, cidr: IPv4Network) -> list[IPv4Address]:
        got = self.store.get_block(cidr)
        return got[0].ips_of_handle(handle_id) if got else []

    def release_tunnel_address(self, node: str, kind: str | None = None) -> list[IPv4Address]:
        """Release the node's tunnel address of ``kind`` (ipip, vxlan; None: both), e.g. when
        the encapsulation is disabled, the pool removed or the node deleted."""
        out: list[IPv4Address] = []
        for k in ([kind] if kind else list(TUNNEL_KINDS)):
            out += self.release_by_handle(self.tunnel_handle(node, k))
        return out

    # ------------------------------------------------------------------
    # consistency check

    def check(self) -> CheckReport:
        """Cross-check blocks, affinities, handles, nodes' tunnel IPs and endpoints' IPs."""
        return build_report(
            blocks=self.blocks(),
            active_pools=[p.cidr for p in self.pools() if not p.disabled],
            nodes=self._resource_dicts("Node", "nodes"),
            endpoints=self._resource_dicts("WorkloadEndpoint", "workloadendpoints"),
            handles=self.store.list_handles_with_revision(),
            affinities=[(a.host, a.cidr, a.state) for a in self.store.list_affinities()],
        )


def _tunnel_kind(kind: str) -> tuple[str, str]:
    try:
        return TUNNEL_KINDS[kind]
    except KeyError:
        raise ValueError(f"tunnel kind {kind!r} is not one of {', '.join(TUNNEL_KINDS)}") from None


__all__ = ["IPAM", "Pool", "CheckReport", "BlockLimitError", "PoolsExhausted", "NoPools",
           "TooManyConflicts", "IPAMError", "BadSequenceNumber"]
