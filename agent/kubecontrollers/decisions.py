"""Pure decisions of the node controller and IPAM garbage collection (no I/O).

Calico's rules (calico.md section 6; kube-controllers ``pkg/controllers/node``):

* a Calico Node whose Kubernetes Node is gone is cleaned up (its endpoints, IPs,
  tunnel address, block affinities and the Node itself) once none of its pod addresses is
  still valid (the IPAM controller's "Can't cleanup node yet - IPs still in use on this
  node": pods bound to a deleted Node keep their IPs until they are deleted);
* an allocation whose ``node`` attribute names a node that is gone is released at once,
  unless its pod still exists with that address, or a Calico Node of that name exists
  whose Kubernetes Node may still register (no pod of it holds an address): then it goes
  with that node's cleanup (``ipam.go`` ``checkAllocations`` marks a node's tunnel
  addresses as leaks only once it releases the node itself);
* a tunnel address is valid while its node exists, or while the node still has valid pod
  addresses;
* a pod address whose pod is gone (or now has other IPs) is a leak *candidate*; it is
  released only after ``leak_grace_period`` and a re-check, and only when *every*
  address on its handle is leaked;
* an allocation without node/pod attributes is not ours to judge and is left alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ipam.ipam import TUNNEL_TYPES

TUNNEL_HANDLE_PREFIXES = ("ipip-tunnel-addr-", "vxlan-tunnel-addr-")

VALID, NODE_GONE, LEAKED, UNKNOWN = "valid", "node-gone", "leaked", "unknown"


@dataclass(frozen=True)
class Allocation:
    """One allocated address as IPAM stores it."""

    ip: str
    block: str
    handle_id: str | None
    attrs: Mapping[str, str] = field(default_factory=dict)
    sequence: int | None = None

    @property
    def key(self) -> str:
        """Identity of this allocation: a re-allocated address is a new one."""
        return f"{self.ip}|{self.handle_id}|{self.sequence}"


@dataclass
class ClusterView:
    """What exists in Kubernetes: node names and pods -> their reported IPs."""

    nodes: set[str]
    pods: dict[tuple[str, str], tuple[str, ...]]


def tunnel_node(a: Allocation) -> str | None:
    """The node of a tunnel-address allocation, or None if ``a`` is not one."""
    for prefix in TUNNEL_HANDLE_PREFIXES:
        if a.handle_id and a.handle_id.startswith(prefix):
            return a.attrs.get("node") or a.handle_id[len(prefix):]
    if a.attrs.get("type") in TUNNEL_TYPES:
        return a.attrs.get("node") or None
    return None


def _pod_holds(a: Allocation, view: ClusterView) -> bool | None:
    """Whether the allocation's pod exists with this address (or has none reported yet);
    None when the allocation names no pod."""
    ns, pod = a.attrs.get("namespace"), a.attrs.get("pod")
    if not (ns and pod):
        return None
    ips = view.pods.get((ns, pod))
    if ips is None:
        return False
    return not ips or a.ip in ips  # other addresses: re-created under the same name


def classify(a: Allocation, view: ClusterView, busy_nodes: set[str] | frozenset[str] = frozenset()) -> str:
    """VALID, NODE_GONE (release now), LEAKED (a candidate) or UNKNOWN (leave alone).
    ``busy_nodes``: deleted nodes that still have valid pod addresses (their tunnel
    addresses stay until those pods are gone)."""
    tnode = tunnel_node(a)
    if tnode is not None:
        return VALID if tnode in view.nodes or tnode in busy_nodes else NODE_GONE
    node = a.attrs.get("node")
    holds = _pod_holds(a, view)
    if node and node not in view.nodes:
        return VALID if holds else NODE_GONE
    if holds is None:
        return UNKNOWN
    return VALID if holds else LEAKED


def busy_deleted_nodes(allocs: Iterable[Allocation], view: ClusterView) -> set[str]:
    """Nodes gone from Kubernetes that still have a pod address whose pod exists with it:
    their Calico data waits until those pods are deleted."""
    return {a.attrs["node"] for a in allocs if tunnel_node(a) is None and a.attrs.get("node")
            and a.attrs["node"] not in view.nodes and _pod_holds(a, view)}


@dataclass
class GCPlan:
    """What one scan decided."""

    release_now: list[Allocation] = field(default_factory=list)   # their node is gone
    release_leaked: list[Allocation] = field(default_factory=list)  # grace period over, whole handle
    candidates: dict[str, float] = field(default_factory=dict)     # allocation key -> first seen


def plan_gc(allocs: Iterable[Allocation], view: ClusterView, candidates: Mapping[str, float],
            now: float, grace: float, calico_nodes: Iterable[str] = ()) -> GCPlan:
    """Decide releases; ``candidates`` are the leak candidates of earlier scans (key ->
    first seen), the returned plan carries the updated set. ``grace`` <= 0 disables
    leak release (candidates are still tracked). An allocation of a node missing from
    Kubernetes whose Calico Node (``calico_nodes``) still exists is left to that node's
    cleanup (:func:`nodes_to_clean` decides when: a calico-node may register before its
    kubelet)."""
    plan = GCPlan()
    allocs = list(allocs)
    busy = busy_deleted_nodes(allocs, view)
    # a deleted node whose pods still hold addresses keeps exactly those (classify); its
    # other addresses are dead and go now
    keep = set(calico_nodes) - busy
    by_handle: dict[str | None, list[tuple[Allocation, str]]] = {}
    for a in allocs:
        verdict = classify(a, view, busy)
        if verdict == NODE_GONE:
            if (tunnel_node(a) or a.attrs.get("node")) not in keep:
                plan.release_now.append(a)
            continue
        if verdict == LEAKED:
            plan.candidates[a.key] = candidates.get(a.key, now)
        by_handle.setdefault(a.handle_id, []).append((a, verdict))
    if grace <= 0:
        return plan
    for handle, members in by_handle.items():
        if handle is None:
            continue
        if all(v == LEAKED and now - plan.candidates[a.key] >= grace for a, v in members):
            plan.release_leaked += [a for a, _ in members]
    return plan


def next_expiry(candidates: Mapping[str, float], grace: float) -> float | None:
    """When the oldest candidate's grace period ends (None without candidates)."""
    if not candidates or grace <= 0:
        return None
    return min(candidates.values()) + grace


@dataclass(frozen=True)
class CalicoNodeRef:
    """A Calico Node and the Kubernetes node it belongs to (orchRef k8s, else its name)."""

    name: str
    k8s_name: str


def nodes_to_clean(calico_nodes: Iterable[CalicoNodeRef], k8s_nodes: set[str], deleted: set[str],
                   missing_since: Mapping[str, float], now: float,
                   min_missing: float, busy: set[str] | frozenset[str] = frozenset()) -> tuple[list[str], dict[str, float]]:
    """Calico Nodes to clean up, and the updated ``missing_since`` map.

    A node whose Kubernetes Node was seen deleted (``deleted``) goes at once; one that
    is merely absent must stay absent for ``min_missing`` seconds over two scans, so a
    calico-node that registered before its kubelet is not removed. A node in ``busy``
    (pods of it still hold their addresses: :func:`busy_deleted_nodes`) waits, counted
    as missing.
    """
    out: list[str] = []
    still: dict[str, float] = {}
    for ref in calico_nodes:
        if ref.k8s_name in k8s_nodes:
            continue
        if ref.name in busy or ref.k8s_name in busy:
            still[ref.name] = missing_since.get(ref.name, now)
            continue
        if ref.k8s_name in deleted:
            out.append(ref.name)
            continue
        first = missing_since.get(ref.name, now)
        if now - first >= min_missing:
            out.append(ref.name)
        else:
            still[ref.name] = first
    return sorted(out), still
