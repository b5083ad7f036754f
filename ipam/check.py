"""IPAM consistency check (what ``calicoctl ipam check`` reports), as pure logic.

:func:`build_report` cross-references what the blocks record (allocations)
with what uses addresses (Node tunnel addresses, WorkloadEndpoint IPs) and
with the handles and affinities, the way calicoctl's IPAMChecker does:

* allocated but not in use (leaked addresses),
* in use but not in any active pool / in an active pool without allocation,
* handles with no allocation (leaked handles), handles named by allocations
  but missing,
* calicolab additions: handle counts that disagree with the blocks, and
  block/affinity inconsistencies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from ipam.block import Block, Handle


@dataclass
class AllocationRecord:
    """One allocated address with what is known about it."""

    ip: IPv4Address
    block: IPv4Network
    handle: str | None
    sequence_number: int | None
    attrs: dict[str, str]
    node: str
    borrowed: bool
    in_use: bool = False
    owners: list[str] = field(default_factory=list)

    def attr_string(self) -> str:
        """``Main:<handle> Extra:k=v,...`` as calicoctl prints attributes."""
        extra = ",".join(f"{k}={self.attrs[k]}" for k in sorted(self.attrs))
        return f"Main:{self.handle or '<none>'} Extra:{extra}"

    def to_dict(self) -> dict[str, Any]:
        """The report-file shape of one allocation."""
        out: dict[str, Any] = {"ip": str(self.ip)}
        if self.handle:
            out["handle"] = self.handle
        if self.sequence_number is not None:
            out["sequenceNumber"] = self.sequence_number
        for key, name in (("pod", "pod"), ("namespace", "namespace"), ("type", "type"),
                          ("timestamp", "creationTimestamp")):
            if self.attrs.get(key):
                out[name] = self.attrs[key]
        if self.node:
            out["node"] = self.node
        out["inUse"] = self.in_use
        if self.borrowed:
            out["borrowed"] = True
        out["owners"] = list(self.owners)
        return out


@dataclass
class CheckReport:
    """Everything :func:`build_report` found."""

    blocks: list[tuple[IPv4Network, str | None]] = field(default_factory=list)
    active_pools: list[IPv4Network] = field(default_factory=list)
    tunnel_ips: int = 0
    workload_ips: int = 0
    allocations: dict[IPv4Address, list[AllocationRecord]] = field(default_factory=dict)
    in_use: dict[IPv4Address, list[str]] = field(default_factory=dict)
    leaked_ips: list[IPv4Address] = field(default_factory=list)
    outside_pools: list[IPv4Address] = field(default_factory=list)
    not_allocated: list[IPv4Address] = field(default_factory=list)
    leaked_handles: list[tuple[str, int]] = field(default_factory=list)
    good_handles: int = 0
    missing_handles: list[str] = field(default_factory=list)
    handle_mismatches: list[str] = field(default_factory=list)
    other: list[str] = field(default_factory=list)

    @property
    def num_allocations(self) -> int:
        """Allocated addresses recorded by the blocks."""
        return sum(len(v) for v in self.allocations.values())

    @property
    def problems(self) -> int:
        """Total number of problems."""
        return (len(self.leaked_ips) + len(self.outside_pools) + len(self.not_allocated)
                + len(self.leaked_handles) + len(self.missing_handles) + len(self.handle_mismatches)
                + len(self.other))

    def problem_lines(self) -> list[str]:
        """One human-readable line per problem."""
        lines = []
        for ip in self.leaked_ips:
            for a in self.allocations[ip]:
                lines.append(f"{ip} leaked; attrs {a.attr_string()}")
        for ip in self.outside_pools:
            lines += [f"{ip} in use by {o} is not in any active IP pool." for o in self.in_use[ip]]
        for ip in self.not_allocated:
            lines += [f"{ip} in use by {o} and in active IPAM pool but has no IPAM allocation."
                      for o in self.in_use[ip]]
        lines += [f"{h} doesn't have any active IPs." for h, _ in self.leaked_handles]
        lines += [f"{h} is in use in a block but doesn't exist." for h in self.missing_handles]
        return lines + self.handle_mismatches + self.other

    def to_report(self, version: str, cluster_guid: str = "", cluster_type: str = "",
                  cluster_info_revision: str = "", datastore_locked: bool = False) -> dict[str, Any]:
        """The machine-readable report (``calicoctl ipam check -o FILE``)."""
        return {
            "version": version,
            "clusterGUID": cluster_guid,
            "datastoreLocked": datastore_locked,
            "clusterInformationRevision": cluster_info_revision,
            "clusterType": cluster_type,
            "allocations": {str(ip): [a.to_dict() for a in recs] for ip, recs in sorted(self.allocations.items())},
            "leakedHandles": [{"ID": h, "Revision": str(rev)} for h, rev in self.leaked_handles],
        }


def _ip_of(text: str) -> IPv4Address | None:
    try:
        return IPv4Address(text.split("/")[0])
    except ValueError:
        return None


def build_report(blocks: Iterable[Block], active_pools: Iterable[IPv4Network],
                 nodes: Iterable[dict[str, Any]], endpoints: Iterable[dict[str, Any]],
                 handles: Iterable[tuple[Handle, int]],
                 affinities: Iterable[tuple[str, IPv4Network, str]]) -> CheckReport:
    """Cross-check IPAM state. ``nodes``/``endpoints`` are calicoctl-shaped documents,
    ``handles`` are ``(handle, revision)``, ``affinities`` are ``(host, cidr, state)``."""
    rep = CheckReport(active_pools=list(active_pools))
    blocks = list(blocks)
    affinity_set = {(h, c) for h, c, _ in affinities}
    confirmed = [(h, c) for h, c, s in affinities if s == "confirmed"]
    counted: dict[str, dict[str, int]] = {}
    for b in sorted(blocks, key=lambda b: int(b.cidr.network_address)):
        rep.blocks.append((b.cidr, b.affinity))
        rep.other += b.check()
        if b.host and (b.host, b.cidr) not in affinity_set:
            rep.other.append(f"block {b.cidr} is affine to {b.host} but that host has no affinity for it")
        for ip, attr in b.allocated():
            node = attr.secondary.get("node") or (b.host or "")
            rec = AllocationRecord(ip=ip, block=b.cidr, handle=attr.handle_id,
                                   sequence_number=b.sequence_number_of(ip), attrs=dict(attr.secondary),
                                   node=node, borrowed=bool(b.host) and node != b.host)
            rep.allocations.setdefault(ip, []).append(rec)
            if attr.handle_id:
                per = counted.setdefault(attr.handle_id, {})
                per[str(b.cidr)] = per.get(str(b.cidr), 0) + 1
    block_cidrs = {b.cidr for b in blocks}
    for host, cidr in confirmed:
        if cidr not in block_cidrs:
            rep.other.append(f"affinity of {host} to {cidr} has no block")

    def in_use(ip: IPv4Address | None, owner: str) -> None:
        if ip is None:
            return
        rep.in_use.setdefault(ip, []).append(owner)
        for rec in rep.allocations.get(ip, []):
            rec.in_use = True
            rec.owners.append(owner)

    for doc in nodes:
        name = (doc.get("metadata") or {}).get("name", "")
        spec = doc.get("spec") or {}
        for addr in (spec.get("ipv4VXLANTunnelAddr"), (spec.get("bgp") or {}).get("ipv4IPIPTunnelAddr")):
            if addr:
                rep.tunnel_ips += 1
                in_use(_ip_of(addr), f"Node({name})")
    for doc in endpoints:
        meta = doc.get("metadata") or {}
        for net in (doc.get("spec") or {}).get("ipNetworks") or []:
            rep.workload_ips += 1
            in_use(_ip_of(net), f"Workload({meta.get('namespace')}/{meta.get('name')})")

    rep.leaked_ips = sorted(ip for ip in rep.allocations if ip not in rep.in_use)
    for ip in sorted(rep.in_use):
        if ip in rep.allocations:
            continue
        if any(ip in p for p in rep.active_pools):
            rep.not_allocated.append(ip)
        else:
            rep.outside_pools.append(ip)
    stored = {}
    for h, rev in handles:
        stored[h.handle_id] = h
        if h.handle_id in counted:
            rep.good_handles += 1
            if h.block != counted[h.handle_id]:
                rep.handle_mismatches.append(
                    f"handle {h.handle_id} counts {h.block} but the blocks hold {counted[h.handle_id]}")
        else:
            rep.leaked_handles.append((h.handle_id, rev))
    rep.missing_handles = sorted(h for h in counted if h not in stored)
    return rep
