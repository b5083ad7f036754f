"""The running controllers: read Kubernetes and Calico state from etcd, apply the
decisions of :mod:`agent.kubecontrollers.decisions` with the datastore and IPAM.

Kubernetes Nodes and Pods come from a :class:`~agent.kubecontrollers.kubesource.KubeSource`
(the API, or the API server's etcd keys in labs without one); a watch wakes a scan when a
Node or Pod is deleted, and a full scan runs every ``leak_grace_period / 2`` (or sooner,
when a leak candidate's grace period ends).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.kubecontrollers.config import Config
from agent.kubecontrollers.decisions import (
    Allocation,
    CalicoNodeRef,
    ClusterView,
    busy_deleted_nodes,
    next_expiry,
    nodes_to_clean,
    plan_gc,
)
from agent.kubecontrollers.kubesource import SOURCE_ERRORS, SYNCED, KubeSource
from datastore import Client, errors

log = logging.getLogger(__name__)
#: how long a Calico Node must lack its Kubernetes Node (over two scans) without a
#: delete event before it is cleaned up
NODE_MISSING_MIN = 2.0


def pod_ips(doc: dict[str, Any]) -> tuple[str, ...]:
    """The IPs a Pod reports (``status.podIPs``, else ``status.podIP``)."""
    st = doc.get("status") or {}
    ips = [p.get("ip") for p in st.get("podIPs") or [] if p.get("ip")]
    if not ips and st.get("podIP"):
        ips = [st["podIP"]]
    if (doc.get("spec") or {}).get("hostNetwork"):
        return ()  # a host-network pod's IP is its node's, never an IPAM allocation
    return tuple(ips)


class KubeControllers:
    """The ``node`` controller (with IPAM GC) over one datastore client."""

    def __init__(self, client: Client, config: Config, source: KubeSource,
                 clock: Callable[[], float] = time.monotonic):
        from ipam import IPAM

        self.client = client
        self.source = source
        self.ipam = IPAM(client)
        self.config = config
        self.clock = clock
        self.candidates: dict[str, float] = {}
        self.missing_since: dict[str, float] = {}
        # Kubernetes Nodes seen deleted; a mark stays until the node's Calico data is cleaned
        # (a scan may see the node busy, or a view that still lists it)
        self.deleted_nodes: set[str] = set()
        self.synced = threading.Event()  # the Kubernetes watch has listed what exists
        self.waiting_nodes: set[str] = set()  # deleted nodes whose pods still hold IPs
        self.dirty = threading.Event()
        self.scans = 0
        self.released: list[str] = []       # every address released (for status and tests)
        self.cleaned_nodes: list[str] = []
        self._lock = threading.Lock()
        self._dlock = threading.Lock()

    # -- reading ---------------------------------------------------------------------
    def cluster_view(self) -> ClusterView:
        """Kubernetes Nodes and Pods (with their IPs)."""
        nodes = {(n.get("metadata") or {}).get("name", "") for n in self.source.list("nodes")}
        pods: dict[tuple[str, str], tuple[str, ...]] = {}
        for p in self.source.list("pods"):
            md = p.get("metadata") or {}
            try:
                pods[(md.get("namespace") or "default", md["name"])] = pod_ips(p)
            except (KeyError, AttributeError):
                continue
        return ClusterView(nodes=nodes, pods=pods)

    def allocations(self) -> list[Allocation]:
        """Every allocated address of every block."""
        out = []
        for block, _kv in self.ipam.store.list_blocks():
            for ip, attr in block.allocated():
                out.append(Allocation(ip=str(ip), block=str(block.cidr), handle_id=attr.handle_id,
                                      attrs=dict(attr.secondary), sequence=block.sequence_number_of(ip)))
        return out

    def calico_nodes(self) -> list[CalicoNodeRef]:
        """Calico Nodes with the Kubernetes node each belongs to. In the Kubernetes datastore a
        Calico Node goes with its Kubernetes Node, so the hosts of block affinities stand in for
        them (a deleted node's affinities are what is left to clean)."""
        if not self.config.delete_nodes:
            return [CalicoNodeRef(h, h) for h in sorted({a.host for a in self.ipam.store.list_affinities()})]
        out = []
        for n in self.client.list("Node"):
            ref = next((r.node_name for r in n.spec.orch_refs if r.orchestrator == "k8s" and r.node_name),
                       None)
            out.append(CalicoNodeRef(n.metadata.name, ref or n.metadata.name))
        return out

    # -- one pass --------------------------------------------------------------------
    def scan(self) -> dict[str, Any]:
        """Clean up deleted nodes, then garbage-collect IPAM; returns what was done."""
        with self._lock:
            self.scans += 1
            now = self.clock()
            view = self.cluster_view()
            with self._dlock:
                deleted = set(self.deleted_nodes)
            allocs = self.allocations()
            busy = busy_deleted_nodes(allocs, view)
            for name in sorted(busy - self.waiting_nodes):
                log.info("node %s was deleted from Kubernetes, but pods bound to it still hold their IPs: "
                         "its Calico data stays until they are deleted", name)
            self.waiting_nodes = busy
            refs = self.calico_nodes()
            gone, self.missing_since = nodes_to_clean(refs, view.nodes, deleted,
                                                      self.missing_since, now, NODE_MISSING_MIN, busy)
            for name in gone:
                self.clean_node(name)
            with self._dlock:  # cleaned, or nothing of Calico's names it any more
                self.deleted_nodes -= set(gone) | (deleted - {r.k8s_name for r in refs} - busy)
            if gone:
                allocs = self.allocations()
            plan = plan_gc(allocs, view, self.candidates, now, self.config.leak_grace_period,
                           calico_nodes={r.name for r in refs if r.name not in gone})
            released = self._release(plan.release_now, "its node no longer exists")
            if plan.release_leaked:
                released += self._release_leaked(plan.release_leaked)
            released_keys = {a.key for a in plan.release_leaked}
            self.candidates = {k: v for k, v in plan.candidates.items() if k not in released_keys}
            return {"cleaned_nodes": gone, "released": released, "candidates": len(self.candidates)}

    def _release_leaked(self, allocs: list[Allocation]) -> list[str]:
        """Re-check leaked allocations against a fresh read, then release the rest."""
        view = self.cluster_view()
        fresh = {a.key: a for a in self.allocations()}
        recheck = plan_gc([fresh[a.key] for a in allocs if a.key in fresh], view,
                          {a.key: self.candidates.get(a.key, 0.0) for a in allocs}, self.clock(),
                          self.config.leak_grace_period)
        keep = {a.key for a in recheck.release_leaked}
        return self._release([a for a in allocs if a.key in keep],
                             f"leaked for more than {self.config.leak_grace_period:g}s")

    def _release(self, allocs: list[Allocation], why: str) -> list[str]:
        """Release addresses, guarded by their allocation sequence numbers."""
        import ipaddress

        from ipam.block import BadSequenceNumber

        done = []
        for a in allocs:
            ip = ipaddress.IPv4Address(a.ip)
            seqs = {ip: a.sequence} if a.sequence is not None else None
            try:
                unalloc = self.ipam.release_ips([ip], seqs)
            except BadSequenceNumber:
                log.info("%s was re-allocated meanwhile; not releasing it", a.ip)
                continue
            if not unalloc:
                log.info("released %s (handle %s, %s): %s", a.ip, a.handle_id, dict(a.attrs), why)
                done.append(a.ip)
        self.released += done
        return done

    def clean_node(self, name: str) -> None:
        """Remove Calico's data of a deleted node: endpoints, IPs, tunnel address, block
        affinities, per-node BGP/Felix configuration, and the Calico Node itself."""
        log.info("node %s was deleted from Kubernetes: cleaning up its Calico data", name)
        if self.config.delete_nodes:
            for wep in self.client.list("WorkloadEndpoint"):
                if wep.spec.node == name:
                    self._delete("WorkloadEndpoint", wep.metadata.name, wep.metadata.namespace)
        mine = [a for a in self.allocations() if a.attrs.get("node") == name]
        self._release(mine, f"node {name} was deleted")
        self.ipam.release_tunnel_address(name)
        released = self.ipam.release_host_affinities(name)
        log.info("node %s: released %d block affinities", name, released)
        if not self.config.delete_nodes:  # the Calico Node went with the Kubernetes Node
            self.cleaned_nodes.append(name)
            return
        for kind in ("BGPConfiguration", "FelixConfiguration"):
            self._delete(kind, f"node.{name}")
        for peer in self.client.list("BGPPeer"):
            if peer.spec.node == name:
                self._delete("BGPPeer", peer.metadata.name)
        self._delete("Node", name)
        self.cleaned_nodes.append(name)

    def _delete(self, kind: str, name: str, namespace: str | None = None) -> None:
        try:
            self.client.delete(kind, name, namespace)
        except errors.NotFound:
            pass

    # -- running ---------------------------------------------------------------------
    def on_kubernetes_event(self, typ: str, resource: str, obj: dict) -> None:
        """A Node or Pod deleted in Kubernetes wakes a scan (a Node's data is cleaned at once);
        so does the watch's first full list (what went between the first scan and it)."""
        if typ == SYNCED:
            self.synced.set()
            self.dirty.set()
            return
        name = (obj.get("metadata") or {}).get("name", "")
        if typ == "ADDED" and resource == "nodes":  # the name is a node again
            with self._dlock:
                self.deleted_nodes.discard(name)
        if typ != "DELETED":
            return
        if resource == "nodes":
            with self._dlock:
                self.deleted_nodes.add(name)
        self.dirty.set()

    def watch_kubernetes(self, stop: threading.Event) -> None:
        """Follow Nodes and Pods; deletions wake a scan."""
        self.source.watch(("nodes", "pods"), self.on_kubernetes_event, stop)

    def run(self, stop: threading.Event) -> None:
        """Scan at start, on deletions, every gc interval and when a candidate expires."""
        if self.config.unimplemented:
            log.warning("controllers not implemented in calicolab, not running: %s",
                        ", ".join(self.config.unimplemented))
        if self.config.not_needed:
            log.warning("controllers with nothing to do in the Kubernetes datastore (profiles and "
                        "WorkloadEndpoints are derived, NetworkPolicies converted by the datastore), "
                        "not running: %s", ", ".join(self.config.not_needed))
        if "node" not in self.config.enabled:
            log.info("node controller disabled by ENABLED_CONTROLLERS; nothing to do")
            stop.wait()
            return
        watcher = threading.Thread(target=self._watch_forever, args=(stop,), name="k8s-watch", daemon=True)
        watcher.start()
        while not stop.is_set():
            try:
                result = self.scan()
                if result["cleaned_nodes"] or result["released"]:
                    log.info("scan: %s", result)
            except (errors.DatastoreError, *SOURCE_ERRORS) as exc:
                log.warning("scan failed: %s; retrying", exc)
                stop.wait(1.0)
                continue
            wait = self.config.gc_interval
            expiry = next_expiry(self.candidates, self.config.leak_grace_period)
            if expiry is not None:
                wait = min(wait, max(0.05, expiry - self.clock()))
            if self.missing_since:
                wait = min(wait, NODE_MISSING_MIN / 2)
            self.dirty.wait(wait)
            self.dirty.clear()

    def _watch_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.watch_kubernetes(stop)
            except (errors.DatastoreError, *SOURCE_ERRORS) as exc:
                log.warning("cannot watch Kubernetes: %s", exc)
                stop.wait(1.0)
