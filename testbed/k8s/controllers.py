"""kube-controller-manager: ``python -m testbed.k8s.controllers --kubeconfig FILE``.

An API client: informers (list+watch) on Nodes, Pods, Deployments, ReplicaSets,
DaemonSets, Services, Endpoints and EndpointSlices; level-triggered, each pass moves the
cached state one step towards the desired one and writes through the API server:

* node IPAM (``--allocate-node-cidrs``): every Node gets ``spec.podCIDR``, the next free
  ``/--node-cidr-mask-size`` of ``--cluster-cidr`` (as kubeadm sets it up);
* deployments: a ReplicaSet ``<deploy>-<template-hash>`` per template with the Deployment's
  replicas (older templates' ReplicaSets scaled to 0 and kept as revision history); status
  (``deployments/<d>/status``) counts the pods, ``readyReplicas``/``availableReplicas`` only
  the ready ones; events ``ScalingReplicaSet``;
* replicasets: ``replicas`` Pods ``<rs>-<5>``; extra pods deleted (unscheduled, unready,
  newest first); events ``SuccessfulCreate``/``SuccessfulDelete``;
* daemonsets: one pod per eligible node (NotReady nodes too: CNI daemons start first),
  bound to it directly, with the tolerations the DaemonSet controller adds; replaced when
  the template changes;
* endpoints and endpointslices: for each Service with a selector, the pods it selects
  (ready ones as ``addresses``/``ready: true``, the others as ``notReadyAddresses``);
* node lifecycle (:mod:`testbed.k8s.nodelifecycle`): a node whose kubelet stopped renewing
  its Lease for ``--node-monitor-grace-period`` (40 s) turns Unknown, NotReady and Unknown
  nodes get the not-ready/unreachable NoSchedule and NoExecute taints, their pods are marked
  not ready, and pods that do not tolerate a NoExecute taint (for longer than their
  ``tolerationSeconds``) are evicted; checked every ``--node-monitor-period`` (5 s);
* pod GC: a pod bound to a node that has not existed for 40 s (the podgc controller's
  quarantine) is deleted (force, grace 0), as no kubelet will ever finish it.

Garbage collection (ownerReferences) and namespace deletion run in the API server
(docs/apiserver.md). The scheduler is its own process (:mod:`testbed.k8s.scheduler`).
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import logging
import os
import secrets
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from kubeclient import AlreadyExists, ApiError, KubeError
from testbed.k8s.apiclient import Cluster, client_from
from testbed.k8s.nodelifecycle import GRACE_PERIOD, NodeLifecycle

log = logging.getLogger("controllers")

_ALNUM = "bcdfghjklmnpqrstvwxz2456789"  # the alphabet of Kubernetes' generated name suffixes
WATCHED = ("Node", "Pod", "Deployment", "ReplicaSet", "DaemonSet", "Service", "Endpoints", "EndpointSlice",
           "Lease")
ENDPOINTSLICE_MANAGER = "endpointslice-controller.k8s.io"
ORPHAN_QUARANTINE = 40.0  # seconds a pod's node must be missing before pod GC deletes the pod
#: seconds one controller may spend creating pods in one pass before the others get their turn.
#: kube-controller-manager runs its controllers side by side; here they take turns in one loop,
#: so without a slice a DaemonSet rolling out to 50 nodes on a loaded machine (kube-proxy pods at
#: ~3 s per create) held every Deployment's first ReplicaSet back for 4.5 minutes
CREATE_SLICE = 1.0
#: pods one controller has in flight at most: kube-controller-manager's ReplicaSet and DaemonSet
#: controllers create pods in slow-start batches (1, 2, 4, ... ``slowStartBatch``), each batch
#: at once; one create after the other, a 20-node lab's calico-node pods took 6 s to create
#: (0.3 s per create on the API server's start-up load, bench/lab_up.py)
CREATE_BATCH_MAX = 16
#: a controller pass longer than this is logged (seconds)
SLOW_PASS = 1.0
#: test-only: overrides :data:`ORPHAN_QUARANTINE` (podgc's is a constant, no flag); the node
#: lifecycle lab test sets it so it does not sit through 40 s (docs/kubernetes.md)
QUARANTINE_ENV = "CALICOLAB_PODGC_QUARANTINE"
NODE_MONITOR_PERIOD = 5.0  # --node-monitor-period (v1.28 default)


def orphan_quarantine(env: dict[str, str]) -> float:
    """Pod GC's quarantine in seconds: :data:`ORPHAN_QUARANTINE`, or ``CALICOLAB_PODGC_QUARANTINE``
    (test-only, a positive number of seconds). Raises ValueError naming a bad value."""
    raw = env.get(QUARANTINE_ENV)
    if raw is None:
        return ORPHAN_QUARANTINE
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ValueError(f"{QUARANTINE_ENV}={raw!r}: expected a positive number of seconds")
    return value


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


def node_ready(node: dict) -> bool:
    """True when the node's Ready condition is True."""
    for c in (node.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def owner_uid(obj: dict, kind: str = "Deployment") -> str | None:
    """UID of the controller of ``kind`` that owns the object, if any."""
    for ref in obj["metadata"].get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == kind:
            return ref.get("uid")
    return None


def _owned(objs: list[dict], kind: str) -> dict[str, list[dict]]:
    by_owner: dict[str, list[dict]] = {}
    for o in objs:
        uid = owner_uid(o, kind)
        if uid:
            by_owner.setdefault(uid, []).append(o)
    return by_owner


def _active(pods: list[dict]) -> list[dict]:
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")
            and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]


def _owner_ref(owner: dict) -> dict:
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


# --- node IPAM ---------------------------------------------------------------------------------

def plan_pod_cidrs(nodes: list[dict], pod_cidr: str, mask: int = 24) -> dict[str, str]:
    """node name -> the /``mask`` of ``pod_cidr`` it gets (nodes without one; pure)."""
    net = ipaddress.ip_network(pod_cidr)
    mask = max(mask, net.prefixlen)
    used = {n["spec"].get("podCIDR") for n in nodes if (n.get("spec") or {}).get("podCIDR")}
    free = (str(s) for s in net.subnets(new_prefix=mask) if str(s) not in used)
    out = {}
    for node in sorted(nodes, key=lambda n: n["metadata"]["name"]):
        if (node.get("spec") or {}).get("podCIDR"):
            continue
        cidr = next(free, None)
        if cidr is None:
            log.warning("pod CIDR %s exhausted; node %s gets none", pod_cidr, node["metadata"]["name"])
            break
        out[node["metadata"]["name"]] = cidr
    return out


# --- pods of controllers -------------------------------------------------------------------------

#: tolerations the DaemonSet controller adds to every DaemonSet pod
DAEMON_TOLERATIONS = (
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
)
HOST_NETWORK_TOLERATION = {"key": "node.kubernetes.io/network-unavailable", "operator": "Exists",
                           "effect": "NoSchedule"}


def pod_for(owner: dict, thash: str, node: str | None = None) -> dict:
    """A new pod of ``owner`` (a ReplicaSet or DaemonSet) from its template (pure)."""
    meta, spec = owner["metadata"], owner["spec"]
    tmeta = spec["template"].get("metadata") or {}
    labels = dict(tmeta.get("labels") or {})
    pspec = json.loads(json.dumps(spec["template"]["spec"]))
    if owner["kind"] == "DaemonSet":
        labels["controller-revision-hash"] = thash
        labels.setdefault("pod-template-generation", str(meta.get("generation", 1)))
        tols = pspec.setdefault("tolerations", [])
        extra = list(DAEMON_TOLERATIONS) + ([HOST_NETWORK_TOLERATION] if pspec.get("hostNetwork") else [])
        for t in extra:
            if not any(x.get("key") == t["key"] and x.get("effect") == t["effect"] for x in tols):
                tols.append(dict(t))
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{meta['name']}-{random_suffix()}", "namespace": meta["namespace"],
                     "labels": labels, "ownerReferences": [_owner_ref(owner)]},
        "spec": pspec,
    }
    if tmeta.get("annotations"):
        pod["metadata"]["annotations"] = dict(tmeta["annotations"])
    if node:
        pod["spec"]["nodeName"] = node
    return pod


def replicaset_for(d: dict, thash: str, revision: int) -> dict:
    """The ReplicaSet of Deployment ``d``'s current template (pure)."""
    meta, spec = d["metadata"], d["spec"]
    template = json.loads(json.dumps(spec["template"]))
    template.setdefault("metadata", {}).setdefault("labels", {})["pod-template-hash"] = thash
    selector = json.loads(json.dumps(spec["selector"]))
    selector.setdefault("matchLabels", {})["pod-template-hash"] = thash
    want = spec.get("replicas", 1)
    return {
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {
            "name": f"{meta['name']}-{thash}", "namespace": meta["namespace"],
            "labels": dict(template["metadata"]["labels"]),
            "annotations": {"deployment.kubernetes.io/revision": str(revision),
                            "deployment.kubernetes.io/desired-replicas": str(want),
                            "deployment.kubernetes.io/max-replicas": str(want)},
            "ownerReferences": [_owner_ref(d)],
        },
        "spec": {"replicas": want, "selector": selector, "template": template,
                 **({"minReadySeconds": spec["minReadySeconds"]} if spec.get("minReadySeconds") else {})},
    }


def deployment_status(d: dict, current: dict | None, owned: list[dict], pods_by_rs: dict[str, list[dict]],
                      thash: str) -> dict:
    """The Deployment's status from its ReplicaSets' pods: only ready pods count as
    ready/available (pure)."""
    want = d["spec"].get("replicas", 1)
    pods = [p for rs in owned for p in _active(pods_by_rs.get(rs["metadata"]["uid"], []))]
    updated = [p for p in pods if (p["metadata"].get("labels") or {}).get("pod-template-hash") == thash]
    ready = sum(1 for p in pods if pod_ready(p))
    available = ready >= want
    status: dict = {"observedGeneration": d["metadata"].get("generation", 1), "replicas": len(pods),
                    "updatedReplicas": len(updated)}
    if ready:
        status["readyReplicas"] = ready
        status["availableReplicas"] = ready
    if len(pods) - ready > 0 or want > ready:
        status["unavailableReplicas"] = max(len(pods), want) - ready
    old = {c.get("type"): c for c in (d.get("status") or {}).get("conditions") or []}

    def cond(typ: str, ok: bool, reason: str, message: str) -> dict:
        c = {"type": typ, "status": "True" if ok else "False", "reason": reason, "message": message}
        prev = old.get(typ)
        from testbed.k8s.apiclient import now_iso

        now = now_iso()
        c["lastUpdateTime"] = prev.get("lastUpdateTime", now) if prev and prev.get("reason") == reason else now
        c["lastTransitionTime"] = prev.get("lastTransitionTime", now) if prev and \
            prev.get("status") == c["status"] else now
        return c

    rs_name = current["metadata"]["name"] if current else ""
    done = len(updated) >= want and ready >= want and len(pods) == len(updated)
    status["conditions"] = [
        cond("Available", available, "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
             "Deployment has minimum availability." if available else
             "Deployment does not have minimum availability."),
        cond("Progressing", True, "NewReplicaSetAvailable" if done else "ReplicaSetUpdated",
             f'ReplicaSet "{rs_name}" has successfully progressed.' if done else
             f'ReplicaSet "{rs_name}" is progressing.'),
    ]
    return status


def replicaset_status(rs: dict, pods: list[dict]) -> dict:
    """A ReplicaSet's status (pure)."""
    ready = sum(1 for p in pods if pod_ready(p))
    status = {"replicas": len(pods), "fullyLabeledReplicas": len(pods),
              "observedGeneration": rs["metadata"].get("generation", 1)}
    if ready:
        status.update(readyReplicas=ready, availableReplicas=ready)
    return status


# --- daemonsets --------------------------------------------------------------------------------

def tolerates(pod_spec: dict, taint: dict) -> bool:
    """True if the pod tolerates the taint."""
    for t in pod_spec.get("tolerations") or []:
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        if t.get("operator") == "Exists" and not t.get("key"):
            return True
        if t.get("key") == taint.get("key") and (t.get("operator") == "Exists" or
                                                 t.get("value", "") == taint.get("value", "")):
            return True
    return False


def daemon_nodes(ds: dict, nodes: list[dict], running: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """Nodes that should run one pod of the DaemonSet (Ready or not: CNI daemons start
    first), taints checked with the tolerations the DaemonSet controller adds (pure). On
    the nodes in ``running`` (a pod of it runs there already) only NoExecute taints count,
    as the DaemonSet controller's shouldContinueRunning: an unreachable node's NoSchedule
    taint does not remove its calico-node or kube-proxy."""
    tspec = json.loads(json.dumps(ds["spec"]["template"]["spec"]))
    tspec.setdefault("tolerations", []).extend(DAEMON_TOLERATIONS)
    tspec["tolerations"].append({"key": "node.kubernetes.io/not-ready", "operator": "Exists",
                                 "effect": "NoSchedule"})
    if tspec.get("hostNetwork"):
        tspec["tolerations"].append(HOST_NETWORK_TOLERATION)
    out = []
    for node in nodes:
        if node["metadata"].get("deletionTimestamp"):
            continue
        sel = tspec.get("nodeSelector") or {}
        if sel and not all((node["metadata"].get("labels") or {}).get(k) == v for k, v in sel.items()):
            continue
        taints = (node.get("spec") or {}).get("taints") or []
        effects = ("NoExecute",) if node["metadata"]["name"] in running else ("NoSchedule", "NoExecute")
        if any(t.get("effect") in effects and not tolerates(tspec, t) for t in taints):
            continue
        out.append(node["metadata"]["name"])
    return sorted(out)


# --- endpoints ---------------------------------------------------------------------------------

def selector_matches(selector: dict[str, str] | None, labels: dict[str, str] | None) -> bool:
    """A Service's equality selector (an empty one selects nothing)."""
    if not selector:
        return False
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


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


def _service_pods(svc: dict, pods: list[dict]) -> list[dict]:
    ns, selector = svc["metadata"]["namespace"], svc["spec"].get("selector")
    out = []
    for pod in sorted(pods, key=lambda p: (p.get("status") or {}).get("podIP") or ""):
        if pod["metadata"].get("namespace") != ns or not selector_matches(selector, pod["metadata"].get("labels")):
            continue
        if not (pod.get("status") or {}).get("podIP") or (pod.get("status") or {}).get("phase") in (
                "Succeeded", "Failed"):
            continue
        out.append(pod)
    return out


def _ready_for(svc: dict, pod: dict) -> bool:
    return pod_ready(pod) and not pod["metadata"].get("deletionTimestamp") or \
        bool(svc["spec"].get("publishNotReadyAddresses"))


def desired_endpoints(svc: dict, pods: list[dict]) -> dict:
    """The Endpoints object the endpoints controller wants for a Service (pure)."""
    ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
    groups: dict[str, dict] = {}
    for pod in _service_pods(svc, pods):
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
        addr = {"ip": pod["status"]["podIP"], "nodeName": pod["spec"].get("nodeName"),
                "targetRef": {"kind": "Pod", "name": pod["metadata"]["name"], "namespace": ns,
                              "uid": pod["metadata"].get("uid")}}
        if pod["spec"].get("hostname") and pod["spec"].get("subdomain") == name:
            addr["hostname"] = pod["spec"]["hostname"]
        subset.setdefault("addresses" if _ready_for(svc, pod) else "notReadyAddresses", []).append(addr)
    labels = dict(svc["metadata"].get("labels") or {})
    if svc["spec"].get("clusterIP") == "None":
        labels["service.kubernetes.io/headless"] = ""
    ep = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": name, "namespace": ns, "labels": labels}}
    subsets = [groups[k] for k in sorted(groups)]
    if subsets:
        ep["subsets"] = subsets
    return ep


def desired_slice(svc: dict, pods: list[dict]) -> dict:
    """The content (``endpoints``, ``ports``, labels) of the Service's EndpointSlice (pure)."""
    ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
    ports: list[dict] = []
    endpoints = []
    for pod in _service_pods(svc, pods):
        pports = []
        for p in svc["spec"].get("ports") or []:
            tp = _target_port(p, pod)
            if tp is None:
                continue
            pports.append({"name": p.get("name", ""), "port": tp, "protocol": p.get("protocol", "TCP")})
        if not pports:
            continue
        if not ports:
            ports = pports
        ready = _ready_for(svc, pod)
        terminating = bool(pod["metadata"].get("deletionTimestamp"))
        ep = {"addresses": [pod["status"]["podIP"]],
              "conditions": {"ready": ready, "serving": pod_ready(pod), "terminating": terminating},
              "targetRef": {"kind": "Pod", "name": pod["metadata"]["name"], "namespace": ns,
                            "uid": pod["metadata"].get("uid")}}
        if pod["spec"].get("nodeName"):
            ep["nodeName"] = pod["spec"]["nodeName"]
        if pod["spec"].get("hostname") and pod["spec"].get("subdomain") == name:
            ep["hostname"] = pod["spec"]["hostname"]
        endpoints.append(ep)
    labels = {k: v for k, v in (svc["metadata"].get("labels") or {}).items()}
    labels.update({"kubernetes.io/service-name": name,
                   "endpointslice.kubernetes.io/managed-by": ENDPOINTSLICE_MANAGER})
    if svc["spec"].get("clusterIP") == "None":
        labels["service.kubernetes.io/headless"] = ""
    return {"addressType": "IPv4", "endpoints": endpoints, "ports": ports or None, "labels": labels}


# --- the manager -------------------------------------------------------------------------------

def _component(owner: dict) -> str:
    """The controller that reports events about ``owner`` (its source component)."""
    return {"ReplicaSet": "replicaset-controller", "DaemonSet": "daemonset-controller",
            "Deployment": "deployment-controller"}.get(owner.get("kind", ""), "kube-controller-manager")


class ControllerManager:
    """Runs every controller whenever the watched state changes (and every few seconds)."""

    def __init__(self, cluster: Cluster, pod_cidr: str | None = None, node_cidr_mask: int = 24,
                 allocate_node_cidrs: bool = True, clock: Callable[[], float] | None = None,
                 node_monitor_grace: float = GRACE_PERIOD, node_monitor_period: float = NODE_MONITOR_PERIOD,
                 wall_clock: Callable[[], float] | None = None, quarantine: float = ORPHAN_QUARANTINE):
        import time

        self.cluster = cluster
        self.clock = clock or time.monotonic
        self.lifecycle = NodeLifecycle(cluster, wall_clock or time.time, node_monitor_grace)
        self.node_monitor_period = node_monitor_period
        self.next_eviction: float | None = None  # wall time of the next NoExecute eviction
        self.missing_nodes: dict[str, float] = {}  # node name -> when first seen missing (pod GC)
        self.quarantine = quarantine  # pod GC's (ORPHAN_QUARANTINE unless a test set it)
        self.pod_cidr = pod_cidr
        self.node_cidr_mask = node_cidr_mask
        self.allocate_node_cidrs = allocate_node_cidrs and bool(pod_cidr)
        self._local = threading.local()  # `more`: per controller loop (each its own thread)
        self._pool = ThreadPoolExecutor(max_workers=CREATE_BATCH_MAX, thread_name_prefix="create")
        self._batch: dict[str, int] = {}  # owner uid -> its next batch (a rollout cut by CREATE_SLICE)

    @property
    def more(self) -> bool:
        """A controller of this thread's loop used up its CREATE_SLICE: pass again at once."""
        return getattr(self._local, "more", False)

    @more.setter
    def more(self, value: bool) -> None:
        self._local.more = value

    # --- helpers ---------------------------------------------------------------------------
    def _set_status(self, obj: dict, status: dict) -> None:
        if obj.get("status") == status:
            return

        def put(o: dict) -> None:
            o["status"] = status

        self.cluster.mutate(obj["kind"], obj["metadata"]["name"], obj["metadata"].get("namespace"), put,
                            sub="status", current=obj)

    def _delete_pod(self, owner: dict, pod: dict) -> None:
        meta = pod["metadata"]
        if self.cluster.delete("Pod", meta["name"], meta["namespace"], uid=meta.get("uid")):
            self.cluster.event(owner, "SuccessfulDelete", f"Deleted pod: {meta['name']}",
                               component=_component(owner))

    def _slice_over(self, started: float) -> bool:
        """True (and another pass is due at once) when a controller that began creating pods
        at ``started`` has used its CREATE_SLICE in this pass."""
        if self.clock() - started < CREATE_SLICE:
            return False
        self.more = True
        return True

    def _create_pod(self, owner: dict, pod: dict) -> dict | None:
        try:
            created = self.cluster.create(pod)
        except AlreadyExists:
            return None
        except ApiError as exc:
            log.warning("%s %s/%s: cannot create pod: %s", owner["kind"], owner["metadata"]["namespace"],
                        owner["metadata"]["name"], exc)
            self.cluster.event(owner, "FailedCreate", f"Error creating: {exc}", "Warning",
                               component=_component(owner))
            return None
        self.cluster.event(owner, "SuccessfulCreate", f"Created pod: {created['metadata']['name']}",
                           component=_component(owner))
        return created

    def _create_pods(self, owner: dict, pods: list[dict], started: float) -> list[dict]:
        """Create ``pods`` for ``owner`` as kube-controller-manager's ``slowStartBatch`` does:
        batches of 1, 2, 4, ... (at most :data:`CREATE_BATCH_MAX`), each batch's creates at
        once; no further batch after one with a failed create, or once this pass's
        CREATE_SLICE is used. Returns the pods created, in ``pods``' order."""
        made: list[dict] = []
        uid = owner["metadata"].get("uid", "")
        # the batch size carries over to the owner's next pass (its slice ended, not its
        # rollout): restarted at 1 each pass, a 100-node lab's DaemonSets got ~7 pods a pass
        i, batch = 0, self._batch.get(uid, 1)
        while i < len(pods) and not self._slice_over(started):
            chunk = pods[i:i + batch]
            if len(chunk) == 1:
                results = [self._create_pod(owner, chunk[0])]
            else:
                results = list(self._pool.map(lambda p: self._create_pod(owner, p), chunk))
            made += [r for r in results if r is not None]
            if any(r is None for r in results):
                self._batch.pop(uid, None)
                return made
            i += len(chunk)
            batch = min(2 * batch, CREATE_BATCH_MAX)
        if i < len(pods):
            self._batch[uid] = batch
        else:
            self._batch.pop(uid, None)
        return made

    # --- controllers -----------------------------------------------------------------------
    def reconcile_node_cidrs(self, nodes: list[dict]) -> None:
        if not self.allocate_node_cidrs:
            return
        def write(item: tuple[str, str]) -> None:
            name, cidr = item

            def assign(n: dict) -> bool:
                if n.setdefault("spec", {}).get("podCIDR"):
                    return False
                n["spec"]["podCIDR"] = cidr
                n["spec"]["podCIDRs"] = [cidr]
                return True

            self.cluster.mutate("Node", name, None, assign)

        # written at once, as kube's range allocator has workers for it (cidrUpdateWorkers): 50
        # nodes registering together, one write after the other, held node lifecycle back
        list(self._pool.map(write, plan_pod_cidrs(nodes, self.pod_cidr or "", self.node_cidr_mask).items()))

    def reconcile_deployments(self, deployments: list[dict], replicasets: list[dict], pods: list[dict]) -> None:
        rs_by_owner = _owned(replicasets, "Deployment")
        pods_by_rs = _owned(pods, "ReplicaSet")
        for d in deployments:
            if d["metadata"].get("deletionTimestamp"):
                continue
            thash = template_hash(d["spec"]["template"])
            want = d["spec"].get("replicas", 1)
            owned = [rs for rs in rs_by_owner.get(d["metadata"]["uid"], [])
                     if not rs["metadata"].get("deletionTimestamp")]
            current = next((rs for rs in owned
                            if (rs["metadata"].get("labels") or {}).get("pod-template-hash") == thash), None)
            revisions = [int((rs["metadata"].get("annotations") or {}).get("deployment.kubernetes.io/revision")
                             or 0) for rs in owned]
            if current is None:
                try:
                    current = self.cluster.create(replicaset_for(d, thash, max(revisions, default=0) + 1))
                    self.cluster.event(d, "ScalingReplicaSet",
                                       f"Scaled up replica set {current['metadata']['name']} from 0 to {want}",
                                       component="deployment-controller")
                    owned.append(current)
                except AlreadyExists:
                    continue  # in the cache soon
                except ApiError as exc:
                    log.warning("deployment %s/%s: cannot create its replicaset: %s", d["metadata"]["namespace"],
                                d["metadata"]["name"], exc)
                    continue
            for rs in owned:
                target = want if rs is current else 0
                have = rs["spec"].get("replicas", 1)
                if have != target:
                    def scale(o: dict, target: int = target) -> None:
                        o["spec"]["replicas"] = target
                        ann = o["metadata"].setdefault("annotations", {})
                        if target:
                            ann["deployment.kubernetes.io/desired-replicas"] = str(target)
                            ann["deployment.kubernetes.io/max-replicas"] = str(target)

                    self.cluster.mutate("ReplicaSet", rs["metadata"]["name"], rs["metadata"]["namespace"], scale,
                                        current=rs)
                    verb = "up" if target > have else "down"
                    self.cluster.event(d, "ScalingReplicaSet", f"Scaled {verb} replica set "
                                       f"{rs['metadata']['name']} from {have} to {target}",
                                       component="deployment-controller")
            rev = (current["metadata"].get("annotations") or {}).get("deployment.kubernetes.io/revision")
            if rev and (d["metadata"].get("annotations") or {}).get("deployment.kubernetes.io/revision") != rev:
                def annotate(o: dict, rev: str = rev) -> None:
                    o["metadata"].setdefault("annotations", {})["deployment.kubernetes.io/revision"] = rev

                d = self.cluster.mutate("Deployment", d["metadata"]["name"], d["metadata"]["namespace"], annotate,
                                        current=d) or d
            self._set_status(d, deployment_status(d, current, owned, pods_by_rs, thash))

    def reconcile_replicasets(self, replicasets: list[dict], pods: list[dict]) -> None:
        by_owner = _owned(pods, "ReplicaSet")
        started = self.clock()
        for rs in replicasets:
            if rs["metadata"].get("deletionTimestamp"):
                continue
            current = _active(by_owner.get(rs["metadata"]["uid"], []))
            want = rs["spec"].get("replicas", 1)
            if len(current) < want:
                current += self._create_pods(rs, [pod_for(rs, "") for _ in range(want - len(current))], started)
            elif len(current) > want:
                # delete unscheduled first, then not ready, then the newest
                victims = sorted(current, key=lambda p: (bool(p["spec"].get("nodeName")), pod_ready(p),
                                                         p["metadata"].get("creationTimestamp", "")))
                for pod in victims[: len(current) - want]:
                    self._delete_pod(rs, pod)
                    current.remove(pod)
            self._set_status(rs, replicaset_status(rs, current))

    def reconcile_daemonsets(self, daemonsets: list[dict], pods: list[dict], nodes: list[dict]) -> None:
        by_owner = _owned(pods, "DaemonSet")
        started = self.clock()
        for ds in daemonsets:
            if ds["metadata"].get("deletionTimestamp"):
                continue
            thash = template_hash(ds["spec"]["template"])
            owned = [p for p in by_owner.get(ds["metadata"]["uid"], []) if not p["metadata"].get("deletionTimestamp")]
            wanted = daemon_nodes(ds, nodes, {p["spec"].get("nodeName") for p in owned})
            current: dict[str, dict] = {}
            for pod in owned:
                node = pod["spec"].get("nodeName")
                fresh = (pod["metadata"].get("labels") or {}).get("controller-revision-hash") == thash
                if node not in wanted or not fresh or node in current:
                    self._delete_pod(ds, pod)
                else:
                    current[node] = pod
            missing = [node for node in wanted if node not in current]
            for pod in self._create_pods(ds, [pod_for(ds, thash, node) for node in missing], started):
                current[pod["spec"]["nodeName"]] = pod
            ready = sum(1 for p in current.values() if pod_ready(p))
            status = {"desiredNumberScheduled": len(wanted), "currentNumberScheduled": len(current),
                      "updatedNumberScheduled": len(current), "numberReady": ready, "numberAvailable": ready,
                      "numberMisscheduled": 0, "observedGeneration": ds["metadata"].get("generation", 1)}
            if len(wanted) - ready:
                status["numberUnavailable"] = len(wanted) - ready
            self._set_status(ds, status)

    def reconcile_endpoints(self, services: list[dict], endpoints: list[dict], pods: list[dict]) -> None:
        existing = {(e["metadata"]["namespace"], e["metadata"]["name"]): e for e in endpoints}
        for svc in services:
            if not svc["spec"].get("selector"):
                continue
            key = (svc["metadata"]["namespace"], svc["metadata"]["name"])
            want = desired_endpoints(svc, pods)
            have = existing.get(key)
            if have is None:
                try:
                    self.cluster.create(want)
                except AlreadyExists:
                    pass
                continue
            if have.get("subsets") != want.get("subsets") or (have["metadata"].get("labels") or {}) != \
                    want["metadata"]["labels"]:
                def put(obj: dict, want: dict = want) -> None:
                    obj.pop("subsets", None)
                    if "subsets" in want:
                        obj["subsets"] = want["subsets"]
                    obj["metadata"]["labels"] = want["metadata"]["labels"]

                self.cluster.mutate("Endpoints", key[1], key[0], put, current=have)

    def reconcile_slices(self, services: list[dict], slices: list[dict], pods: list[dict]) -> None:
        mine: dict[tuple[str, str], list[dict]] = {}
        for s in slices:
            labels = s["metadata"].get("labels") or {}
            if labels.get("endpointslice.kubernetes.io/managed-by") == ENDPOINTSLICE_MANAGER:
                mine.setdefault((s["metadata"]["namespace"], labels.get("kubernetes.io/service-name", "")),
                                []).append(s)
        for svc in services:
            if not svc["spec"].get("selector"):
                continue
            key = (svc["metadata"]["namespace"], svc["metadata"]["name"])
            want = desired_slice(svc, pods)
            have = mine.get(key) or []
            if not have:
                obj = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                       "metadata": {"generateName": f"{key[1]}-", "namespace": key[0], "labels": want["labels"],
                                    "ownerReferences": [_owner_ref(svc)]},
                       "addressType": "IPv4", "endpoints": want["endpoints"], "ports": want["ports"]}
                try:
                    self.cluster.create(obj)
                except ApiError as exc:
                    log.warning("endpointslice for %s/%s: %s", key[0], key[1], exc)
                continue
            first = have[0]
            for extra in have[1:]:
                self.cluster.delete("EndpointSlice", extra["metadata"]["name"], key[0])
            if first.get("endpoints") != want["endpoints"] or first.get("ports") != want["ports"] or \
                    (first["metadata"].get("labels") or {}) != want["labels"]:
                def put(obj: dict, want: dict = want) -> None:
                    obj["endpoints"] = want["endpoints"]
                    obj["ports"] = want["ports"]
                    obj["metadata"]["labels"] = want["labels"]

                self.cluster.mutate("EndpointSlice", first["metadata"]["name"], key[0], put, current=first)

    def gc_orphaned_pods(self, pods: list[dict], nodes: list[dict]) -> list[str]:
        """Force-delete pods bound to nodes missing for ``quarantine`` (:data:`ORPHAN_QUARANTINE`) seconds."""
        now = self.clock()
        names = {n["metadata"]["name"] for n in nodes}
        bound = {p["spec"]["nodeName"] for p in pods if p["spec"].get("nodeName")}
        self.missing_nodes = {n: self.missing_nodes.get(n, now) for n in bound - names}
        done = []
        for p in pods:
            node = p["spec"].get("nodeName")
            if node in self.missing_nodes and now - self.missing_nodes[node] >= self.quarantine:
                meta = p["metadata"]
                if self.cluster.delete("Pod", meta["name"], meta["namespace"], grace=0, uid=meta.get("uid")):
                    log.info("pod %s/%s: its node %s does not exist: deleted", meta["namespace"], meta["name"], node)
                    done.append(f"{meta['namespace']}/{meta['name']}")
        return done

    # --- the controllers' loops ------------------------------------------------------------
    def pass_nodes(self) -> None:
        """Node IPAM, the node lifecycle controller and pod GC (each reading the cache at its turn)."""
        c = self.cluster
        self.reconcile_node_cidrs(c.list("Node"))
        self.next_eviction = self.lifecycle.reconcile(c.list("Node"), c.list("Pod"), c.list("Lease"))
        self.gc_orphaned_pods(c.list("Pod"), c.list("Node"))

    def pass_workloads(self) -> None:
        """The Deployment and ReplicaSet controllers."""
        c = self.cluster
        self.reconcile_deployments(c.list("Deployment"), c.list("ReplicaSet"), c.list("Pod"))
        self.reconcile_replicasets(c.list("ReplicaSet"), c.list("Pod"))

    def pass_daemonsets(self) -> None:
        """The DaemonSet controller (the nodes read at its turn)."""
        c = self.cluster
        self.reconcile_daemonsets(c.list("DaemonSet"), c.list("Pod"), c.list("Node"))

    def pass_endpoints(self) -> None:
        """The Endpoints and EndpointSlice controllers."""
        c = self.cluster
        pods = c.list("Pod")
        services = c.list("Service")
        self.reconcile_endpoints(services, c.list("Endpoints"), pods)
        self.reconcile_slices(services, c.list("EndpointSlice"), pods)

    def loops(self) -> list[tuple[str, Callable[[], None], frozenset[str]]]:
        """The controller loops :meth:`run` runs side by side, as kube-controller-manager runs
        its controllers: (name, one pass, the kinds whose changes wake it). One loop per group,
        so the Deployment and ReplicaSet controllers never wait behind the node lifecycle
        controller's taint writes (50 nodes turning Ready on a loaded machine: one pass of
        them took 7-20 s while a Deployment waited for its ReplicaSet and pods) or a
        DaemonSet's status writes, and a node turned Ready is untainted, a ready calico-typha
        put in its Service's endpoints, a new node given its DaemonSet pods, each by its own
        loop without waiting for the others' passes. In :meth:`reconcile` (one pass of all,
        in this order) the ones a node's start-up waits for go first."""
        return [("nodes", self.pass_nodes, frozenset({"Node", "Pod"})),
                ("endpoints", self.pass_endpoints, frozenset({"Service", "Endpoints", "EndpointSlice", "Pod"})),
                ("daemonsets", self.pass_daemonsets, frozenset({"DaemonSet", "Pod", "Node"})),
                ("workloads", self.pass_workloads, frozenset({"Deployment", "ReplicaSet", "Pod"}))]

    def reconcile(self) -> None:
        """One pass of every controller, over the cached state, one after the other in
        :meth:`loops`' order (each reads the cache at its turn)."""
        self.more = False
        for _name, one_pass, _kinds in self.loops():
            one_pass()

    def _pass_timeout(self) -> float:
        """How long the loop may sleep without a change: the node monitor period, sooner
        for a pending eviction or a missing node (pod GC)."""
        timeout = min(self.node_monitor_period, 1.0 if self.missing_nodes else 5.0)
        if self.next_eviction is not None:
            timeout = min(timeout, max(0.05, self.next_eviction - self.lifecycle.clock()))
        return timeout

    def _loop(self, name: str, one_pass: Callable[[], None], wake: _Wake, stop: threading.Event,
              on_error: Callable[[Exception], None] | None) -> None:
        """One controller loop: a pass whenever one of its kinds changed (after a short
        settle, so a burst of changes makes one pass), at least every few seconds."""
        while not stop.is_set():
            self.more = False
            wake.clear()
            began = self.clock()
            try:
                one_pass()
                took = self.clock() - began
                if took > SLOW_PASS:
                    log.info("%s controller pass took %.2f s", name, took)
            except (KubeError, OSError) as exc:  # keep the control plane alive; retry
                log.warning("%s controller pass failed: %s", name, exc)
                if on_error:
                    on_error(exc)
                stop.wait(0.5)
                wake.set()
            except Exception as exc:
                log.exception("%s controller pass failed", name)
                if on_error:
                    on_error(exc)
                stop.wait(0.5)
            if not self.more:
                wake.wait(stop, self._pass_timeout())
            stop.wait(0.02)  # let a burst of changes land: one pass for all of them

    def run(self, stop: threading.Event, on_error: Callable[[Exception], None] | None = None) -> None:
        """Run the controller loops (:meth:`loops`) until ``stop`` is set, woken by the informers."""
        self.cluster.start()
        while not stop.is_set() and not self.cluster.wait_synced(timeout=5, stop=stop):
            log.info("waiting for the informers to sync")
        threads, wakes = [], []
        for name, one_pass, kinds in self.loops():
            wake = _Wake()
            for kind in kinds:
                self.cluster.informers[kind].add_handler(lambda _t, _o, _old, w=wake: w.set())
            wakes.append(wake)
            t = threading.Thread(target=self._loop, args=(name, one_pass, wake, stop, on_error),
                                 name=f"controller-{name}", daemon=True)
            t.start()
            threads.append(t)
        stop.wait()
        for wake in wakes:
            wake.set()
        for t in threads:
            t.join(timeout=5)


class _Wake:
    """A controller loop's wake-up: set by its informers' handlers (any change of its kinds)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._set = True

    def set(self) -> None:
        with self._cond:
            self._set = True
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._set = False

    def wait(self, stop: threading.Event, timeout: float) -> None:
        with self._cond:
            if not self._set and not stop.is_set():
                self._cond.wait(timeout)


def _duration(text: str) -> float:
    """A flag's Go duration (``40s``, ``500ms``, ``1m``), > 0."""
    from datastore.duration import parse_duration

    try:
        value = parse_duration(text, bare_seconds=False)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (use e.g. 40s, 500ms, 1m)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"duration {text!r} must be positive")
    return value


def main(argv: list[str] | None = None) -> int:
    """``python -m testbed.k8s.controllers`` (kube-controller-manager's flag names)."""
    p = argparse.ArgumentParser(prog="python -m testbed.k8s.controllers", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("--kubeconfig", default=None, help="default $KUBECONFIG, else in-cluster")
    p.add_argument("--cluster-cidr", default="", help="the pod network (kubeadm --pod-network-cidr)")
    p.add_argument("--allocate-node-cidrs", default="false", choices=("true", "false"))
    p.add_argument("--node-cidr-mask-size", type=int, default=24)
    p.add_argument("--node-monitor-grace-period", type=_duration, default=GRACE_PERIOD, metavar="DURATION",
                   help="how long a node may go without a heartbeat (Lease renewal or Ready condition) "
                        "before it is Unknown (default 40s)")
    p.add_argument("--node-monitor-period", type=_duration, default=NODE_MONITOR_PERIOD, metavar="DURATION",
                   help="how often node health is checked (default 5s)")
    p.add_argument("--controllers", default="*",
                   help="accepted as kube-controller-manager's; calicolab runs its set always")
    p.add_argument("--use-service-account-credentials", default="false", choices=("true", "false"))
    p.add_argument("--leader-elect", default="false", choices=("true", "false"),
                   help="one controller-manager per lab: no election")
    p.add_argument("-v", "--v", default="2")
    args = p.parse_args(argv)
    if args.controllers not in ("*", "*,bootstrapsigner,tokencleaner"):
        p.error(f"--controllers={args.controllers}: calicolab runs a fixed set (see the module docstring)")
    if args.leader_elect == "true":
        p.error("--leader-elect=true: calicolab runs one controller-manager per lab; use false")
    try:
        quarantine = orphan_quarantine(dict(os.environ))
    except ValueError as exc:
        p.error(str(exc))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s kube-controller-manager %(levelname)s %(message)s")
    try:
        client = client_from(args.kubeconfig, "kube-controller-manager")
    except KubeError as exc:
        print(f"kube-controller-manager: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    cluster = Cluster(client, WATCHED, component="kube-controller-manager")
    cluster.wake_on_signals(stop)
    cm = ControllerManager(cluster, args.cluster_cidr or None, args.node_cidr_mask_size,
                           args.allocate_node_cidrs == "true", node_monitor_grace=args.node_monitor_grace_period,
                           node_monitor_period=args.node_monitor_period, quarantine=quarantine)
    cm.run(stop)
    cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
