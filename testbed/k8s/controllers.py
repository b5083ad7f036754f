"""The control plane's controllers, level-triggered: each pass reads the whole state and
moves it one step towards the desired one.

* node IPAM: every Node gets ``spec.podCIDR``, the next free /24 of the cluster's pod
  CIDR (kube-controller-manager --allocate-node-cidrs, as kubeadm sets it up).
* deployments: each Deployment owns a ReplicaSet ``<deploy>-<template-hash>`` with its
  replicas (older templates' ReplicaSets scaled to 0); status counts the pods.
* replicasets: ``replicas`` Pods ``<rs>-<5>``; extra pods deleted (unscheduled, unready,
  newest first).
* daemonsets: one pod per eligible node (NotReady nodes too: CNI daemons start first),
  bound directly to it, replaced when the template changes.
* garbage collection: what a Deployment, ReplicaSet or DaemonSet owned goes with it.
* scheduler: unbound pods go to the Ready, schedulable node (taints and nodeSelector
  honoured) with the fewest pods.
* endpoints: each Service with a selector gets Endpoints listing the ready pods that
  match it (addresses) and those not ready (notReadyAddresses).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import secrets
import threading
from collections.abc import Callable

from testbed.k8s import errors
from testbed.k8s.model import selector_matches
from testbed.k8s.printers import node_ready
from testbed.k8s.store import Store

log = logging.getLogger("controllers")

_ALNUM = "bcdfghjklmnpqrstvwxz2456789"  # the alphabet of Kubernetes' generated name suffixes


def random_suffix(n: int = 5) -> str:
    """A random name suffix from Kubernetes' alphabet (no vowels, no ambiguous digits)."""
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


def template_hash(template: dict) -> str:
    """A stable short hash of a pod template (the pod-template-hash label)."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
    n = int(digest[:16], 16)
    out = ""
    for _ in range(10):
        out += _ALNUM[n % len(_ALNUM)]
        n //= len(_ALNUM)
    return out


def pod_ready(pod: dict) -> bool:
    """The pod's Ready condition is True."""
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def owner_uid(pod: dict, kind: str = "Deployment") -> str | None:
    """UID of the controller of ``kind`` (Deployment, DaemonSet) that owns the pod, if any."""
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == kind:
            return ref.get("uid")
    return None


# --- node IPAM ---------------------------------------------------------------------------------

def allocate_pod_cidrs(store: Store, nodes: list[dict], pod_cidr: str, mask: int = 24) -> int:
    """Give every node without one a free /``mask`` of ``pod_cidr``; returns how many."""
    net = ipaddress.ip_network(pod_cidr)
    if mask < net.prefixlen:
        mask = net.prefixlen
    used = {n["spec"].get("podCIDR") for n in nodes if (n.get("spec") or {}).get("podCIDR")}
    free = (str(s) for s in net.subnets(new_prefix=mask) if str(s) not in used)
    count = 0
    for node in sorted(nodes, key=lambda n: n["metadata"]["name"]):
        if (node.get("spec") or {}).get("podCIDR"):
            continue
        cidr = next(free, None)
        if cidr is None:
            log.warning("pod CIDR %s exhausted; node %s gets none", pod_cidr, node["metadata"]["name"])
            return count

        def assign(n: dict, cidr: str = cidr) -> bool:
            if n.setdefault("spec", {}).get("podCIDR"):
                return False
            n["spec"]["podCIDR"] = cidr
            n["spec"]["podCIDRs"] = [cidr]
            return True

        store.mutate("Node", node["metadata"]["name"], None, assign)
        count += 1
    return count


# --- deployments -------------------------------------------------------------------------------

def _pod_for(owner: dict, thash: str, node: str | None = None) -> dict:
    meta, spec = owner["metadata"], owner["spec"]
    tmeta = spec["template"].get("metadata") or {}
    labels = dict(tmeta.get("labels") or {})
    if owner["kind"] == "DaemonSet":
        labels["controller-revision-hash"] = thash
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": f"{meta['name']}-{random_suffix()}", "namespace": meta["namespace"],
            "labels": labels, "annotations": dict(tmeta.get("annotations") or {}),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": owner["kind"], "name": meta["name"],
                                 "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": json.loads(json.dumps(spec["template"]["spec"])),
    }
    if node:
        pod["spec"]["nodeName"] = node
    return pod


def _set_status(store: Store, obj: dict, status: dict) -> None:
    if obj.get("status") == status:
        return

    def put(o: dict) -> None:
        o["status"] = status

    store.mutate(obj["kind"], obj["metadata"]["name"], obj["metadata"]["namespace"], put)


def _replicaset_for(d: dict, thash: str) -> dict:
    meta, spec = d["metadata"], d["spec"]
    template = json.loads(json.dumps(spec["template"]))
    template.setdefault("metadata", {}).setdefault("labels", {})["pod-template-hash"] = thash
    selector = dict(spec["selector"]["matchLabels"], **{"pod-template-hash": thash})
    return {
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {
            "name": f"{meta['name']}-{thash}", "namespace": meta["namespace"],
            "labels": dict(template["metadata"]["labels"]),
            "annotations": {"deployment.kubernetes.io/revision": str(meta.get("generation", 1))},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"],
                                 "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": {"replicas": spec.get("replicas", 1), "selector": {"matchLabels": selector}, "template": template},
    }


def _owned(objs: list[dict], kind: str) -> dict[str, list[dict]]:
    by_owner: dict[str, list[dict]] = {}
    for o in objs:
        uid = owner_uid(o, kind)
        if uid:
            by_owner.setdefault(uid, []).append(o)
    return by_owner


def reconcile_deployments(store: Store, deployments: list[dict], replicasets: list[dict], pods: list[dict]) -> None:
    """Each Deployment owns a ReplicaSet ``<name>-<template-hash>`` with its replicas; the
    ReplicaSets of older templates are scaled to 0 (kept, as revision history); status
    counts the pods. ReplicaSets whose Deployment is gone are deleted."""
    rs_by_owner = _owned(replicasets, "Deployment")
    live = {d["metadata"]["uid"] for d in deployments}
    for uid, owned in rs_by_owner.items():
        if uid not in live:
            for rs in owned:
                _delete(store, rs)
    pods_by_rs = _owned(pods, "ReplicaSet")
    for d in deployments:
        thash = template_hash(d["spec"]["template"])
        want = d["spec"].get("replicas", 1)
        owned = rs_by_owner.get(d["metadata"]["uid"], [])
        current = next((rs for rs in owned if rs["metadata"].get("labels", {}).get("pod-template-hash") == thash), None)
        if current is None:
            try:
                current = store.create(_replicaset_for(d, thash))
            except errors.AlreadyExists:
                current = store.find("ReplicaSet", f"{d['metadata']['name']}-{thash}", d["metadata"]["namespace"])
            except errors.K8sError as exc:
                log.warning("deployment %s/%s: cannot create its replicaset: %s", d["metadata"]["namespace"],
                            d["metadata"]["name"], exc)
                continue
        for rs in owned:
            target = want if rs is current else 0
            if rs["spec"].get("replicas") != target:
                def scale(o: dict, target: int = target) -> None:
                    o["spec"]["replicas"] = target

                store.mutate("ReplicaSet", rs["metadata"]["name"], rs["metadata"]["namespace"], scale)
        all_pods = [p for rs in owned for p in pods_by_rs.get(rs["metadata"]["uid"], [])
                    if not p["metadata"].get("deletionTimestamp")]
        updated = [p for p in all_pods if p["metadata"].get("labels", {}).get("pod-template-hash") == thash]
        ready = sum(1 for p in all_pods if pod_ready(p))
        status = {
            "observedGeneration": d["metadata"].get("generation", 1), "replicas": len(all_pods),
            "updatedReplicas": len(updated), "readyReplicas": ready, "availableReplicas": ready,
            "conditions": [{"type": "Available", "status": "True" if ready >= want else "False",
                            "reason": "MinimumReplicasAvailable" if ready >= want else "MinimumReplicasUnavailable"}],
        }
        if ready < len(all_pods):
            status["unavailableReplicas"] = len(all_pods) - ready
        if not ready:
            status.pop("readyReplicas")
            status.pop("availableReplicas")
        _set_status(store, d, status)


def reconcile_replicasets(store: Store, replicasets: list[dict], pods: list[dict]) -> None:
    """Create/delete pods so each ReplicaSet has ``replicas``; update status; delete pods
    whose ReplicaSet is gone."""
    by_owner = _owned(pods, "ReplicaSet")
    live = {rs["metadata"]["uid"] for rs in replicasets}
    for uid, owned in by_owner.items():
        if uid not in live:
            for pod in owned:
                _delete(store, pod)
    for rs in replicasets:
        current = [p for p in by_owner.get(rs["metadata"]["uid"], []) if not p["metadata"].get("deletionTimestamp")]
        want = rs["spec"].get("replicas", 1)
        if len(current) < want:
            for _ in range(want - len(current)):
                try:
                    current.append(store.create(_pod_for(rs, "")))
                except errors.K8sError as exc:
                    log.warning("replicaset %s/%s: cannot create pod: %s", rs["metadata"]["namespace"],
                                rs["metadata"]["name"], exc)
                    break
        elif len(current) > want:
            # delete unscheduled first, then not ready, then the newest
            victims = sorted(current, key=lambda p: (bool(p["spec"].get("nodeName")), pod_ready(p),
                                                     p["metadata"].get("creationTimestamp", "")))
            for pod in victims[: len(current) - want]:
                _delete(store, pod)
                current.remove(pod)
        ready = sum(1 for p in current if pod_ready(p))
        status = {"replicas": len(current), "fullyLabeledReplicas": len(current),
                  "observedGeneration": rs["metadata"].get("generation", 1)}
        if ready:
            status.update(readyReplicas=ready, availableReplicas=ready)
        _set_status(store, rs, status)


def _delete(store: Store, obj: dict) -> None:
    try:
        store.delete(obj["kind"], obj["metadata"]["name"], obj["metadata"]["namespace"])
    except errors.NotFound:
        pass


# --- daemonsets --------------------------------------------------------------------------------

#: taints a DaemonSet pod tolerates without asking (the DaemonSet controller adds these)
DAEMON_TOLERATED = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable",
                    "node.kubernetes.io/disk-pressure", "node.kubernetes.io/memory-pressure",
                    "node.kubernetes.io/pid-pressure", "node.kubernetes.io/unschedulable",
                    "node.kubernetes.io/network-unavailable")


def daemon_nodes(ds: dict, nodes: list[dict]) -> list[str]:
    """Nodes that should run one pod of the DaemonSet (ready or not: CNI daemons start first)."""
    tspec = ds["spec"]["template"]["spec"]
    pod = {"spec": tspec}
    out = []
    for node in nodes:
        sel = tspec.get("nodeSelector") or {}
        if sel and not all((node["metadata"].get("labels") or {}).get(k) == v for k, v in sel.items()):
            continue
        taints = (node.get("spec") or {}).get("taints") or []
        if any(t.get("effect") in ("NoSchedule", "NoExecute") and t.get("key") not in DAEMON_TOLERATED
               and not _tolerates(pod, t) for t in taints):
            continue
        out.append(node["metadata"]["name"])
    return sorted(out)


def reconcile_daemonsets(store: Store, daemonsets: list[dict], pods: list[dict], nodes: list[dict]) -> None:
    """One current pod per eligible node for each DaemonSet; delete the rest; update status."""
    by_owner: dict[str, list[dict]] = {}
    for pod in pods:
        uid = owner_uid(pod, "DaemonSet")
        if uid:
            by_owner.setdefault(uid, []).append(pod)
    live = {d["metadata"]["uid"] for d in daemonsets}
    for uid, owned in by_owner.items():
        if uid not in live:
            for pod in owned:
                _delete(store, pod)
    for ds in daemonsets:
        thash = template_hash(ds["spec"]["template"])
        wanted = daemon_nodes(ds, nodes)
        owned = [p for p in by_owner.get(ds["metadata"]["uid"], []) if not p["metadata"].get("deletionTimestamp")]
        current: dict[str, dict] = {}
        for pod in owned:
            node = pod["spec"].get("nodeName")
            fresh = pod["metadata"].get("labels", {}).get("controller-revision-hash") == thash
            if node not in wanted or not fresh or node in current:
                _delete(store, pod)
            else:
                current[node] = pod
        for node in wanted:
            if node not in current:
                try:
                    current[node] = store.create(_pod_for(ds, thash, node))
                except errors.K8sError as exc:
                    log.warning("daemonset %s: cannot create pod on %s: %s", ds["metadata"]["name"], node, exc)
        ready = sum(1 for p in current.values() if pod_ready(p))
        status = {"desiredNumberScheduled": len(wanted), "currentNumberScheduled": len(current),
                  "updatedNumberScheduled": len(current), "numberReady": ready, "numberAvailable": ready,
                  "numberMisscheduled": 0, "observedGeneration": ds["metadata"].get("generation", 1)}
        if ds.get("status") != status:
            def set_status(obj: dict, status: dict = status) -> None:
                obj["status"] = status

            store.mutate("DaemonSet", ds["metadata"]["name"], ds["metadata"]["namespace"], set_status)


# --- scheduler ---------------------------------------------------------------------------------

def _tolerates(pod: dict, taint: dict) -> bool:
    for t in pod["spec"].get("tolerations") or []:
        if t.get("operator") == "Exists" and not t.get("key"):
            return True
        if t.get("key") == taint.get("key") and (t.get("operator") == "Exists" or t.get("value") == taint.get("value")):
            if not t.get("effect") or t.get("effect") == taint.get("effect"):
                return True
    return False


def feasible_nodes(pod: dict, nodes: list[dict]) -> list[dict]:
    """Nodes the pod may run on: Ready, schedulable, taints tolerated, nodeSelector matched."""
    out = []
    for node in nodes:
        spec = node.get("spec") or {}
        if spec.get("unschedulable") or not node_ready(node):
            continue
        if any(t.get("effect") in ("NoSchedule", "NoExecute") and not _tolerates(pod, t)
               for t in spec.get("taints") or []):
            continue
        sel = pod["spec"].get("nodeSelector") or {}
        if sel and not all((node["metadata"].get("labels") or {}).get(k) == v for k, v in sel.items()):
            continue
        out.append(node)
    return out


TERMINAL_PHASES = ("Succeeded", "Failed")


def _owner(pod: dict) -> tuple[str, str, str] | None:
    """The pod's controller (kind, namespace, name), if any."""
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref.get("controller", True):
            return ref.get("kind", ""), pod["metadata"].get("namespace", ""), ref.get("name", "")
    return None


def plan_bindings(pods: list[dict], nodes: list[dict]) -> list[tuple[dict, str | None]]:
    """Where each unbound pod goes, oldest first: ``(pod, node name)``, or ``(pod, None)``
    when no node is feasible.

    Like kube-scheduler's default scoring, roughly: among the feasible nodes, the one
    with the fewest pods of the same controller (PodTopologySpread's default hostname
    spreading), then the fewest pods in all (least allocated), then the name. Pods
    that finished (Succeeded/Failed) no longer count; each placement counts for the
    next pod, so a burst of pods is spread over the nodes Ready at the time."""
    load = {n["metadata"]["name"]: 0 for n in nodes}
    owned: dict[tuple[str, tuple | None], int] = {}
    for p in pods:
        node = p["spec"].get("nodeName")
        if node in load and (p.get("status") or {}).get("phase") not in TERMINAL_PHASES:
            load[node] += 1
            owner = _owner(p)
            if owner is not None:
                owned[(node, owner)] = owned.get((node, owner), 0) + 1
    plan: list[tuple[dict, str | None]] = []
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", "")):
        if pod["spec"].get("nodeName") or pod["metadata"].get("deletionTimestamp"):
            continue
        choices = feasible_nodes(pod, nodes)
        if not choices:
            plan.append((pod, None))
            continue
        owner = _owner(pod)

        def score(n: dict, owner: tuple | None = owner) -> tuple[int, int, str]:
            name = n["metadata"]["name"]
            same = owned.get((name, owner), 0) if owner is not None else 0
            return same, load[name], name

        name = min(choices, key=score)["metadata"]["name"]
        load[name] += 1
        if owner is not None:
            owned[(name, owner)] = owned.get((name, owner), 0) + 1
        plan.append((pod, name))
    return plan


BIND_WORKERS = 8  # bindings written at once (kube-scheduler binds asynchronously too)


def schedule(store: Store, pods: list[dict], nodes: list[dict]) -> int:
    """Bind unbound pods as :func:`plan_bindings` places them; returns how many were bound.

    The placements are decided in order (each counts for the next); the writes go to
    the store concurrently, so a burst of pods reaches the kubelets together instead of
    one store round trip after another."""
    def unschedulable(pod: dict) -> None:
        msg = f"0/{len(nodes)} nodes are available: no Ready node without a taint the pod tolerates."

        def put(p: dict) -> bool:
            conds = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg}]
            if (p.get("status") or {}).get("conditions") == conds:
                return False
            p.setdefault("status", {})["conditions"] = conds
            p["status"]["phase"] = "Pending"
            return True

        store.mutate("Pod", pod["metadata"]["name"], pod["metadata"]["namespace"], put)

    def bind(pod: dict, name: str) -> bool:
        def put(p: dict) -> bool:
            if p["spec"].get("nodeName"):
                return False
            p["spec"]["nodeName"] = name
            p.setdefault("status", {})["conditions"] = [{"type": "PodScheduled", "status": "True"}]
            return True

        store.mutate("Pod", pod["metadata"]["name"], pod["metadata"]["namespace"], put)
        return True

    plan = plan_bindings(pods, nodes)
    if len(plan) <= 1:
        return sum(bind(pod, name) if name else unschedulable(pod) or 0 for pod, name in plan)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(BIND_WORKERS, len(plan)), thread_name_prefix="bind") as pool:
        futures = [pool.submit(bind, pod, name) if name else pool.submit(unschedulable, pod)
                   for pod, name in plan]
        results = [f.result() for f in futures]  # the first error is raised, as before
    return sum(1 for (_, name), r in zip(plan, results, strict=True) if name and r)


# --- endpoints ---------------------------------------------------------------------------------

def _target_port(port: dict, pod: dict) -> int | None:
    target = port.get("targetPort", port["port"])
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    for c in pod["spec"].get("containers") or []:
        for cp in c.get("ports") or []:
            if cp.get("name") == target:
                return cp["containerPort"]
    return None


def desired_endpoints(svc: dict, pods: list[dict]) -> dict:
    """The Endpoints object the controller wants for a Service."""
    ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
    selector = svc["spec"].get("selector")
    groups: dict[str, dict] = {}
    for pod in sorted(pods, key=lambda p: (p.get("status") or {}).get("podIP") or ""):
        if pod["metadata"].get("namespace") != ns or not selector_matches(selector, pod["metadata"].get("labels")):
            continue
        ip = (pod.get("status") or {}).get("podIP")
        if not ip or pod["metadata"].get("deletionTimestamp"):
            continue
        ports = []
        for p in svc["spec"].get("ports") or []:
            tp = _target_port(p, pod)
            if tp is None:
                continue
            ep = {"port": tp, "protocol": p.get("protocol", "TCP")}
            if p.get("name"):
                ep["name"] = p["name"]
            ports.append(ep)
        if not ports:
            continue
        key = json.dumps(ports, sort_keys=True)
        subset = groups.setdefault(key, {"ports": ports})
        addr = {"ip": ip, "nodeName": pod["spec"].get("nodeName"),
                "targetRef": {"kind": "Pod", "name": pod["metadata"]["name"], "namespace": ns,
                              "uid": pod["metadata"].get("uid")}}
        subset.setdefault("addresses" if pod_ready(pod) else "notReadyAddresses", []).append(addr)
    ep = {"apiVersion": "v1", "kind": "Endpoints",
          "metadata": {"name": name, "namespace": ns, "labels": dict(svc["metadata"].get("labels") or {})}}
    subsets = [groups[k] for k in sorted(groups)]
    if subsets:
        ep["subsets"] = subsets
    return ep


def reconcile_endpoints(store: Store, services: list[dict], endpoints: list[dict], pods: list[dict]) -> None:
    """Write Endpoints for every Service with a selector; drop those of deleted Services."""
    existing = {(e["metadata"]["namespace"], e["metadata"]["name"]): e for e in endpoints}
    wanted = set()
    for svc in services:
        if not svc["spec"].get("selector"):
            continue
        key = (svc["metadata"]["namespace"], svc["metadata"]["name"])
        wanted.add(key)
        want = desired_endpoints(svc, pods)
        have = existing.get(key)
        if have is None:
            try:
                store.create(want)
            except errors.AlreadyExists:
                pass
            continue
        if have.get("subsets") != want.get("subsets") or have["metadata"].get("labels", {}) != want["metadata"]["labels"]:
            def put(obj: dict, want: dict = want) -> None:
                obj.pop("subsets", None)
                if "subsets" in want:
                    obj["subsets"] = want["subsets"]
                obj["metadata"]["labels"] = want["metadata"]["labels"]

            store.mutate("Endpoints", key[1], key[0], put)
    live = {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in services}
    for key in existing:
        if key not in wanted and key not in live:
            store.remove("Endpoints", key[1], key[0])


# --- the manager -------------------------------------------------------------------------------

class ControllerManager:
    """Runs every controller whenever the watched state changes (and every few seconds)."""

    def __init__(self, store: Store, pod_cidr: str | None = None, node_cidr_mask: int = 24):
        self.store = store
        self.pod_cidr = pod_cidr
        self.node_cidr_mask = node_cidr_mask

    def reconcile(self) -> None:
        """One pass of every controller."""
        store = self.store
        nodes = store.list("Node")
        if self.pod_cidr is None:
            self.pod_cidr = store.cluster_config()["podSubnet"]
        if any(not (n.get("spec") or {}).get("podCIDR") for n in nodes):
            allocate_pod_cidrs(store, nodes, self.pod_cidr, self.node_cidr_mask)
        reconcile_deployments(store, store.list("Deployment"), store.list("ReplicaSet"), store.list("Pod"))
        reconcile_replicasets(store, store.list("ReplicaSet"), store.list("Pod"))
        reconcile_daemonsets(store, store.list("DaemonSet"), store.list("Pod"), nodes)
        pods = store.list("Pod")
        schedule(store, pods, nodes)
        reconcile_endpoints(store, store.list("Service"), store.list("Endpoints"), store.list("Pod"))

    def run(self, stop: threading.Event, on_error: Callable[[Exception], None] | None = None) -> None:
        """Reconcile until ``stop`` is set, woken by a watch on the store."""
        from testbed.k8s.informer import ChangeFeed

        feed = ChangeFeed(self.store, interesting=lambda ev: ev.kind != "Endpoints" or ev.type == "DELETED")
        feed.start(stop)
        while not stop.is_set():
            try:
                self.reconcile()
            except Exception as exc:  # keep the control plane alive; log and retry
                log.exception("controller pass failed")
                if on_error:
                    on_error(exc)
                stop.wait(0.5)
            feed.wait(stop, timeout=5.0)
            stop.wait(0.02)  # let a burst of changes land: one pass for all of them
