"""kube-scheduler: ``python -m testbed.k8s.scheduler --kubeconfig FILE``.

Watches unbound pods (``schedulerName: default-scheduler``) and the Nodes; places each pod
(:func:`plan_bindings`) and posts ``pods/<p>/binding``, with the events a real scheduler
records: ``Scheduled`` ("Successfully assigned <ns>/<pod> to <node>") or
``FailedScheduling`` ("0/3 nodes are available: 3 node(s) had untolerated taint
{node.kubernetes.io/not-ready: }. ...") while no node fits (the pod stays Pending with
condition PodScheduled=False, reason Unschedulable).

Feasibility is kube-scheduler's filters that matter here: ``spec.unschedulable``, taints
with effect NoSchedule/NoExecute against the pod's tolerations (a NotReady node carries
``node.kubernetes.io/not-ready:NoSchedule``), ``nodeSelector``. Scoring, roughly as the
default plugins do: the node with the fewest pods of the same controller (default
PodTopologySpread over hostnames), then the fewest pods (least allocated), then the name;
each placement counts for the next pod, so a burst is spread.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor

from kubeclient import KubeError
from testbed.k8s.apiclient import Cluster, client_from, now_iso
from testbed.k8s.controllers import tolerates

log = logging.getLogger("scheduler")

TERMINAL_PHASES = ("Succeeded", "Failed")
BIND_WORKERS = 8  # bindings written at once (kube-scheduler binds asynchronously too)
SCHEDULER_NAME = "default-scheduler"


def _taint_text(t: dict) -> str:
    return f"{{{t.get('key')}: {t.get('value', '')}}}"


def filter_reason(pod: dict, node: dict) -> str | None:
    """Why ``pod`` cannot go to ``node`` (kube-scheduler's wording), or None if it can."""
    spec = node.get("spec") or {}
    if spec.get("unschedulable") and not tolerates(pod["spec"], {"key": "node.kubernetes.io/unschedulable",
                                                                 "effect": "NoSchedule"}):
        return "node(s) were unschedulable"
    for t in spec.get("taints") or []:
        if t.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(pod["spec"], t):
            return f"node(s) had untolerated taint {_taint_text(t)}"
    sel = pod["spec"].get("nodeSelector") or {}
    if sel and not all((node["metadata"].get("labels") or {}).get(k) == v for k, v in sel.items()):
        return "node(s) didn't match Pod's node affinity/selector"
    return None


def feasible_nodes(pod: dict, nodes: list[dict]) -> list[dict]:
    """Nodes the pod may run on."""
    return [n for n in nodes if not n["metadata"].get("deletionTimestamp") and filter_reason(pod, n) is None]


def unschedulable_message(pod: dict, nodes: list[dict]) -> str:
    """``0/N nodes are available: ...`` as kube-scheduler words it."""
    reasons = Counter(filter_reason(pod, n) or "" for n in nodes)
    parts = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()) if r)
    total = len(nodes)
    msg = f"0/{total} nodes are available" + (f": {parts}." if parts else ".")
    return msg + f" preemption: 0/{total} nodes are available: {total} Preemption is not helpful for scheduling."


def _owner(pod: dict) -> tuple[str, str, str] | None:
    for ref in pod["metadata"].get("ownerReferences") or []:
        if ref.get("controller", True):
            return ref.get("kind", ""), pod["metadata"].get("namespace", ""), ref.get("name", "")
    return None


def plan_bindings(pods: list[dict], nodes: list[dict]) -> list[tuple[dict, str | None]]:
    """Where each unbound pod goes, oldest first: ``(pod, node name)``, or ``(pod, None)``
    when no node is feasible (pure)."""
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
        if (pod["spec"].get("schedulerName") or SCHEDULER_NAME) != SCHEDULER_NAME:
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


def assume(pods: list[dict], assumed: dict[str, str]) -> list[dict]:
    """``pods`` with each assumed pod (uid -> node: its binding is in flight) shown bound to its
    node, as kube-scheduler's cache assumes a pod bound while its binding is written (pure)."""
    out = []
    for p in pods:
        node = assumed.get(p["metadata"].get("uid", ""))
        if node and not p["spec"].get("nodeName"):
            p = dict(p, spec=dict(p["spec"], nodeName=node))
        out.append(p)
    return out


class Scheduler:
    """Binds pods to nodes through the API. Placements are decided in order (each counts for
    the next); the bindings are written in the background, the pods *assumed* bound meanwhile
    (kube-scheduler's assume/bind): a pass does not wait for the last pass's writes, so pods
    created while a burst is being bound are placed at once (50 nodes: a pass binding 34 pods
    took 4.7 s on a loaded API server, and the pods created meanwhile waited for it)."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.pool = ThreadPoolExecutor(max_workers=BIND_WORKERS, thread_name_prefix="bind")
        self.reported: dict[str, str] = {}  # pod uid -> the FailedScheduling message last reported
        self.lock = threading.Lock()
        self.assumed: dict[str, str] = {}  # pod uid -> node: its binding is written or in flight
        self.busy: set[str] = set()  # pod uids with a write in flight (binding or FailedScheduling)

    def _unschedulable(self, pod: dict, nodes: list[dict]) -> None:
        msg = unschedulable_message(pod, nodes)
        uid = pod["metadata"]["uid"]
        if self.reported.get(uid) == msg:
            return

        def put(p: dict) -> bool:
            st = p.setdefault("status", {})
            conds = [c for c in st.get("conditions") or [] if c.get("type") != "PodScheduled"]
            conds.append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg,
                          "lastProbeTime": None, "lastTransitionTime": now_iso()})
            st["conditions"] = conds
            st["phase"] = "Pending"
            return True

        self.cluster.mutate("Pod", pod["metadata"]["name"], pod["metadata"]["namespace"], put, sub="status",
                            current=pod)
        self.cluster.event(pod, "FailedScheduling", msg, "Warning")
        self.reported[uid] = msg

    def _bind(self, pod: dict, node: str) -> bool:
        if not self.cluster.bind(pod, node):
            return False
        self.reported.pop(pod["metadata"]["uid"], None)
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        self.cluster.event(pod, "Scheduled", f"Successfully assigned {ns}/{name} to {node}")
        return True

    def _done(self, uid: str, binding: bool, fut: Future) -> None:
        """A write finished: a binding that failed is forgotten (the pod is planned again)."""
        try:
            ok = fut.result()
        except (KubeError, OSError) as exc:
            log.warning("scheduling: %s", exc)
            ok = False
        with self.lock:
            self.busy.discard(uid)
            if binding and not ok:
                self.assumed.pop(uid, None)
        if binding and not ok:
            self.cluster.mark()

    def schedule(self) -> int:
        """Place the unbound pods and start writing their bindings; returns how many bindings
        were started. A pod whose write is in flight is not planned again."""
        pods = self.cluster.list("Pod")
        nodes = self.cluster.list("Node")
        live = {p["metadata"]["uid"]: p for p in pods}
        with self.lock:
            for uid in [u for u, _ in self.assumed.items()
                        if u not in live or live[u]["spec"].get("nodeName")]:
                if uid not in self.busy:  # the cache caught up with the binding (or the pod is gone)
                    self.assumed.pop(uid)
            view = assume(pods, self.assumed)
            busy = set(self.busy)
        started = 0
        for pod, name in plan_bindings(view, nodes):
            uid = pod["metadata"]["uid"]
            if uid in busy:
                continue
            with self.lock:
                self.busy.add(uid)
                if name:
                    self.assumed[uid] = name
            if name:
                fut = self.pool.submit(self._bind, pod, name)
                started += 1
            else:
                fut = self.pool.submit(self._unschedulable, pod, nodes)
            fut.add_done_callback(lambda f, uid=uid, b=bool(name): self._done(uid, b, f))
        for uid in [u for u in self.reported if u not in live]:
            self.reported.pop(uid)
        return started

    def run(self, stop: threading.Event) -> None:
        self.cluster.start()
        while not stop.is_set() and not self.cluster.wait_synced(timeout=5, stop=stop):
            log.info("waiting for the informers to sync")
        while not stop.is_set():
            try:
                self.schedule()
            except (KubeError, OSError) as exc:
                log.warning("scheduling pass failed: %s", exc)
                stop.wait(0.5)
            except Exception:
                log.exception("scheduling pass failed")
                stop.wait(0.5)
            self.cluster.wait(stop, timeout=5.0)
            stop.wait(0.01)


def main(argv: list[str] | None = None) -> int:
    """``python -m testbed.k8s.scheduler`` (kube-scheduler's flag names)."""
    p = argparse.ArgumentParser(prog="python -m testbed.k8s.scheduler", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("--kubeconfig", default=None, help="default $KUBECONFIG, else in-cluster")
    p.add_argument("--leader-elect", default="false", choices=("true", "false"),
                   help="one scheduler per lab: no election")
    p.add_argument("-v", "--v", default="2")
    args = p.parse_args(argv)
    if args.leader_elect == "true":
        p.error("--leader-elect=true: calicolab runs one scheduler per lab; use false")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s kube-scheduler %(levelname)s %(message)s")
    try:
        client = client_from(args.kubeconfig, "kube-scheduler")
    except KubeError as exc:
        print(f"kube-scheduler: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    cluster = Cluster(client, {"Pod": {"field_selector": "status.phase!=Succeeded,status.phase!=Failed"},
                               "Node": {}}, component="default-scheduler")
    cluster.wake_on_signals(stop)
    Scheduler(cluster).run(stop)
    cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
