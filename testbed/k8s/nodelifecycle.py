"""kube-controller-manager's node lifecycle controller, as pure decisions (the clock injected).

What it does on a cluster (pkg/controller/nodelifecycle, Kubernetes v1.28):

* **health**: a node's heartbeat is the later of its Lease ``kube-node-lease/<node>``
  renewal and its Ready condition's ``lastHeartbeatTime``; once no heartbeat came for the
  grace period (``--node-monitor-grace-period``, 40 s), every condition the kubelet posts
  turns ``Unknown`` with reason ``NodeStatusUnknown`` and message "Kubelet stopped posting
  node status." (``NodeStatusNeverUpdated`` / "Kubelet never posted node status." for a
  node that never did);
* **taints**: Ready ``False`` -> ``node.kubernetes.io/not-ready``, Ready ``Unknown`` ->
  ``node.kubernetes.io/unreachable``, each as ``NoSchedule`` and ``NoExecute`` (with
  ``timeAdded``), removed when the node is Ready again;
* **eviction** (the NoExecute taint manager): a pod on a node with a NoExecute taint it
  does not tolerate is deleted at once; one that tolerates it for ``tolerationSeconds`` is
  deleted that long after the taint was added; pods whose node is not Ready get their
  ``Ready`` condition set ``False`` (MarkPodsNotReady).

Every function here takes plain API objects (dicts) and returns what to write; the
controller applies it through the API server.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

#: --node-monitor-grace-period (v1.28 default)
GRACE_PERIOD = 40.0
NOT_READY = "node.kubernetes.io/not-ready"
UNREACHABLE = "node.kubernetes.io/unreachable"
#: nodes written at once (kube's node lifecycle controller: nodeUpdateWorkerSize): 50 nodes turning
#: Ready together on a loaded machine took 7-20 s to untaint one after the other
UPDATE_WORKERS = 8
#: conditions the kubelet posts (and the controller turns Unknown)
KUBELET_CONDITIONS = ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure")


def parse_time(text: str | None) -> float | None:
    """An RFC 3339 time (``2026-12-02T15:00:00Z``, with or without fractions) as a Unix time."""
    if not text:
        return None
    t = text.replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(t).timestamp()
    except ValueError:
        return None


def iso(ts: float) -> str:
    """A Unix time as the API writes it (seconds, ``Z``)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ready_status(node: dict) -> str | None:
    """The node's Ready condition status (``True``/``False``/``Unknown``), None if it has none."""
    for c in (node.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status")
    return None


def last_heartbeat(node: dict, lease: dict | None) -> float | None:
    """The later of the Lease's renewTime and the Ready condition's lastHeartbeatTime."""
    times = []
    if lease is not None:
        times.append(parse_time((lease.get("spec") or {}).get("renewTime")))
    for c in (node.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            times.append(parse_time(c.get("lastHeartbeatTime")))
    times = [t for t in times if t is not None]
    return max(times) if times else None


def stale_conditions(node: dict, lease: dict | None, now: float, grace: float = GRACE_PERIOD) -> list[dict] | None:
    """The node's conditions turned Unknown if its heartbeat is older than ``grace``
    (counted from its creation if it never sent one); None when nothing is to change."""
    beat = last_heartbeat(node, lease)
    since = beat if beat is not None else parse_time(node.get("metadata", {}).get("creationTimestamp"))
    if since is None or now - since <= grace:
        return None
    conds = [dict(c) for c in (node.get("status") or {}).get("conditions") or []]
    by_type = {c.get("type"): c for c in conds}
    changed = False
    for typ in KUBELET_CONDITIONS:
        c = by_type.get(typ)
        if c is None:
            if typ != "Ready":
                continue
            c = {"type": "Ready", "lastHeartbeatTime": iso(since)}
            conds.append(c)
            reason, message = "NodeStatusNeverUpdated", "Kubelet never posted node status."
        else:
            reason, message = "NodeStatusUnknown", "Kubelet stopped posting node status."
        if c.get("status") == "Unknown":
            continue
        c.update(status="Unknown", reason=reason, message=message, lastTransitionTime=iso(now))
        changed = True
    return conds if changed else None


def desired_taints(node: dict, now: float) -> list[dict] | None:
    """The node's taints with the not-ready/unreachable ones matching its Ready condition
    (kept with their ``timeAdded`` when already there); None when they are right already."""
    taints = list((node.get("spec") or {}).get("taints") or [])
    ready = ready_status(node)
    want = {"False": NOT_READY, "Unknown": UNREACHABLE}.get(ready or "")
    keep = [t for t in taints if t.get("key") not in (NOT_READY, UNREACHABLE) or t.get("key") == want]
    if want is not None:
        for effect in ("NoSchedule", "NoExecute"):
            if not any(t.get("key") == want and t.get("effect") == effect for t in keep):
                t = {"key": want, "effect": effect}
                if effect == "NoExecute":
                    t["timeAdded"] = iso(now)
                keep.append(t)
    return None if keep == taints else keep


def _toleration_for(pod: dict, taint: dict) -> dict | None:
    for t in (pod.get("spec") or {}).get("tolerations") or []:
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        if t.get("operator") == "Exists" and not t.get("key"):
            return t
        if t.get("key") == taint.get("key") and (t.get("operator") == "Exists"
                                                  or t.get("value", "") == taint.get("value", "")):
            return t
    return None


def eviction_time(pod: dict, taints: list[dict]) -> float | None:
    """When the taint manager deletes ``pod`` for the node's NoExecute ``taints``: the
    earliest ``timeAdded + tolerationSeconds`` (``timeAdded`` for an untolerated taint),
    None if it tolerates them all forever."""
    when: list[float] = []
    for taint in taints:
        if taint.get("effect") != "NoExecute":
            continue
        added = parse_time(taint.get("timeAdded")) or 0.0
        tol = _toleration_for(pod, taint)
        if tol is None:
            when.append(added)
        elif tol.get("tolerationSeconds") is not None:
            when.append(added + max(0, int(tol["tolerationSeconds"])))
    return min(when) if when else None


def pods_to_evict(pods: list[dict], nodes: dict[str, dict], now: float) -> tuple[list[dict], float | None]:
    """Pods due for eviction now (not being deleted already), and the next time one will be."""
    due, nxt = [], None
    for pod in pods:
        node = nodes.get((pod.get("spec") or {}).get("nodeName") or "")
        if node is None or pod["metadata"].get("deletionTimestamp"):
            continue
        when = eviction_time(pod, (node.get("spec") or {}).get("taints") or [])
        if when is None:
            continue
        if when <= now:
            due.append(pod)
        else:
            nxt = when if nxt is None else min(nxt, when)
    return due, nxt


def pods_to_mark_not_ready(pods: list[dict], nodes: dict[str, dict]) -> list[dict]:
    """Pods on a node whose Ready is not True that still say Ready=True (MarkPodsNotReady)."""
    out = []
    for pod in pods:
        node = nodes.get((pod.get("spec") or {}).get("nodeName") or "")
        if node is None or ready_status(node) == "True" or ready_status(node) is None:
            continue
        conds = (pod.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds):
            out.append(pod)
    return out


class NodeLifecycle:
    """The controller: one :meth:`reconcile` pass writes the decisions above through
    ``cluster`` (a :class:`testbed.k8s.apiclient.Cluster`: ``mutate``, ``delete``,
    ``event``). ``clock`` gives the wall time (Unix seconds); ``grace`` is
    ``--node-monitor-grace-period``.

    Pods are marked not ready when their node's Ready condition leaves ``True`` (as seen
    by the previous pass: the controller's MarkPodsNotReady on that transition, not on a
    node that has never been Ready, such as one still waiting for its CNI)."""

    def __init__(self, cluster, clock=None, grace: float = GRACE_PERIOD) -> None:
        import time

        self.cluster = cluster
        self.clock = clock or time.time
        self.grace = grace
        self.observed: dict[str, str | None] = {}  # node -> its Ready status in the previous pass
        self._pool: ThreadPoolExecutor | None = None  # the nodes' writes, UPDATE_WORKERS at once

    def _write_node(self, node: dict, lease: dict | None, now: float) -> dict:
        """A node's stale conditions turned Unknown, then its taints matched to its Ready
        condition, each a read-modify-write decided again on what is stored; the node as
        stored after."""
        name = node["metadata"]["name"]
        if stale_conditions(node, lease, now, self.grace) is not None:
            def put_status(n: dict) -> bool:
                # decided again on what is stored (a 409 means the kubelet may just have posted)
                conds = stale_conditions(n, lease, now, self.grace)
                if conds is None:
                    return False
                n.setdefault("status", {})["conditions"] = conds
                return True

            was = ready_status(node)
            node = self.cluster.mutate("Node", name, None, put_status, sub="status", current=node) or node
            if was != "Unknown" and ready_status(node) == "Unknown":
                self.cluster.event(node, "NodeNotReady", f"Node {name} status is now: NodeNotReady",
                                   component="node-controller")
        if desired_taints(node, now) is not None:
            def put_taints(n: dict) -> bool:
                taints = desired_taints(n, now)
                if taints is None:
                    return False
                n.setdefault("spec", {})["taints"] = taints
                return True

            node = self.cluster.mutate("Node", name, None, put_taints, current=node) or node
        return node

    def reconcile(self, nodes: list[dict], pods: list[dict], leases: list[dict]) -> float | None:
        """One pass: stale conditions -> Unknown, taints, pods marked not ready, evictions.
        Returns when the next eviction is due (None: none pending)."""
        now = self.clock()
        by_lease = {lz["metadata"]["name"]: lz for lz in leases
                    if lz["metadata"].get("namespace") == "kube-node-lease"}
        current: dict[str, dict] = {}
        went_bad: dict[str, dict] = {}
        todo = [(node, by_lease.get(node["metadata"]["name"])) for node in nodes]
        todo_writes = [t for t in todo if stale_conditions(t[0], t[1], now, self.grace) is not None
                       or desired_taints(t[0], now) is not None]
        if len(todo_writes) > 1:  # kube's node lifecycle controller: nodeUpdateWorkerSize (8) at once
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=UPDATE_WORKERS, thread_name_prefix="node-update")
            written = dict(zip((id(n) for n, _ in todo_writes),
                               self._pool.map(lambda t: self._write_node(t[0], t[1], now), todo_writes),
                               strict=True))
        else:
            written = {id(n): self._write_node(n, lz, now) for n, lz in todo_writes}
        for node, _lease in todo:
            name = node["metadata"]["name"]
            node = written.get(id(node), node)
            current[name] = node
            ready = ready_status(node)
            if self.observed.get(name) == "True" and ready != "True":
                went_bad[name] = node
            self.observed[name] = ready
        for gone in set(self.observed) - set(current):
            self.observed.pop(gone, None)
        for pod in pods_to_mark_not_ready(pods, went_bad):
            def not_ready(p: dict) -> None:
                for c in (p.get("status") or {}).get("conditions") or []:
                    if c.get("type") == "Ready":
                        c.update(status="False", lastTransitionTime=iso(now))

            meta = pod["metadata"]
            self.cluster.mutate("Pod", meta["name"], meta["namespace"], not_ready, sub="status", current=pod)
        due, nxt = pods_to_evict(pods, current, now)
        for pod in due:
            meta = pod["metadata"]
            if self.cluster.delete("Pod", meta["name"], meta["namespace"], uid=meta.get("uid")):
                self.cluster.event(pod, "TaintManagerEviction", f"Marking for deletion Pod {meta['namespace']}/"
                                   f"{meta['name']}", component="taint-controller")
        return nxt
