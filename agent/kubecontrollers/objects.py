"""calico-kube-controllers' policy, namespace, serviceaccount and workloadendpoint controllers
(etcd mode), as ``kube-controllers/pkg/controllers/{networkpolicy,namespace,serviceaccount,pod}``.

Each keeps the Calico objects it owns equal to what Kubernetes says:

* ``policy``: NetworkPolicy -> Calico NetworkPolicy ``knp.default.<name>`` (Calico's conversion);
  Calico ``knp.default.*`` policies without a Kubernetes NetworkPolicy are deleted;
* ``namespace``: Namespace -> Profile ``kns.<ns>``; ``kns.*`` profiles of gone namespaces deleted;
* ``serviceaccount``: ServiceAccount -> Profile ``ksa.<ns>.<sa>``; stale ``ksa.*`` deleted;
* ``workloadendpoint``: a pod's labels and service account reach its WorkloadEndpoint
  (which the CNI plugin creates); nothing is created or deleted.

Kubernetes events mark keys dirty; one worker applies them (retried with back-off, 5 times,
as Calico's work queue), and every ``reconciler_period`` (and at start) a full resync lists
both sides and fixes any difference.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.kubecontrollers.kubesource import SOURCE_ERRORS, KubeSource
from datastore import conversion, errors
from datastore.names import workload_endpoint_name
from datastore.resources import (
    K8S_POLICY_PREFIX,
    NetworkPolicy,
    Profile,
    Resource,
    WorkloadEndpoint,
)

log = logging.getLogger(__name__)

#: Calico's per-key retry budget before a key waits for the next resync
MAX_RETRIES = 5

Key = tuple[str, str, str]  # (controller, namespace, name)


def _md(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


@dataclass
class Controller:
    """One controller: the Kubernetes resource it follows and how it maps to Calico objects."""

    name: str
    resource: str
    #: Kubernetes object -> {(namespace, name): desired Calico object or data}
    desired_of: Callable[[dict[str, Any]], dict[tuple[str, str], Any]]
    #: bring the Calico side of one key to ``want`` (None: the Kubernetes object is gone)
    apply: Callable[[Any, tuple[str, str], Any], str | None]
    #: the Calico side's current keys this controller owns (for deleting stale ones)
    owned_keys: Callable[[Any], set[tuple[str, str]]] | None = None
    desired: dict[tuple[str, str], Any] = field(default_factory=dict)
    sources: dict[str, set[tuple[str, str]]] = field(default_factory=dict)  # k8s key -> desired keys


def _same(a: Resource, b: Resource) -> bool:
    da, db = a.to_dict(), b.to_dict()
    return da.get("spec") == db.get("spec") and (da["metadata"].get("labels") or {}) == (
        db["metadata"].get("labels") or {})


def _write(client: Any, want: Resource) -> str | None:
    """Create or update ``want`` unless the stored object already matches."""
    try:
        have = client.get(type(want), want.metadata.name, want.metadata.namespace)
    except errors.NotFound:
        client.create(want)
        return "created"
    if _same(have, want):
        return None
    want.metadata.resource_version = have.metadata.resource_version
    want.metadata.uid = have.metadata.uid
    want.metadata.creation_timestamp = have.metadata.creation_timestamp
    client.update(want)
    return "updated"


def _delete(client: Any, cls: type[Resource], name: str, namespace: str | None) -> str | None:
    try:
        client.delete(cls, name, namespace)
    except errors.NotFound:
        return None
    return "deleted"


# -- the four controllers ------------------------------------------------------------


def namespace_controller() -> Controller:
    def desired_of(ns: dict[str, Any]) -> dict[tuple[str, str], Any]:
        return {("", conversion.namespace_profile_name(_md(ns)["name"])): conversion.namespace_to_profile(ns)}

    def apply(client: Any, key: tuple[str, str], want: Any) -> str | None:
        return _write(client, want) if want is not None else _delete(client, Profile, key[1], None)

    def owned(client: Any) -> set[tuple[str, str]]:
        return {("", p.metadata.name) for p in client.list(Profile)
                if p.metadata.name.startswith(conversion.NAMESPACE_PROFILE_PREFIX)}

    return Controller("namespace", "namespaces", desired_of, apply, owned)


def serviceaccount_controller() -> Controller:
    def desired_of(sa: dict[str, Any]) -> dict[tuple[str, str], Any]:
        prof = conversion.serviceaccount_to_profile(sa)
        return {("", prof.metadata.name): prof}

    def apply(client: Any, key: tuple[str, str], want: Any) -> str | None:
        return _write(client, want) if want is not None else _delete(client, Profile, key[1], None)

    def owned(client: Any) -> set[tuple[str, str]]:
        return {("", p.metadata.name) for p in client.list(Profile)
                if p.metadata.name.startswith(conversion.SERVICEACCOUNT_PROFILE_PREFIX)}

    return Controller("serviceaccount", "serviceaccounts", desired_of, apply, owned)


def policy_controller() -> Controller:
    def desired_of(np: dict[str, Any]) -> dict[tuple[str, str], Any]:
        pol, problems = conversion.k8s_networkpolicy_to_calico(np)
        for p in problems:
            log.warning("NetworkPolicy %s/%s: dropping a rule that couldn't be converted: %s",
                        pol.metadata.namespace, _md(np).get("name"), p)
        return {(pol.metadata.namespace or "default", pol.metadata.name): pol}

    def apply(client: Any, key: tuple[str, str], want: Any) -> str | None:
        return _write(client, want) if want is not None else _delete(client, NetworkPolicy, key[1], key[0])

    def owned(client: Any) -> set[tuple[str, str]]:
        return {(p.metadata.namespace or "default", p.metadata.name) for p in client.list(NetworkPolicy)
                if p.metadata.name.startswith(K8S_POLICY_PREFIX)}

    return Controller("policy", "networkpolicies", desired_of, apply, owned)


@dataclass(frozen=True)
class EndpointData:
    """What the pod controller writes into a WorkloadEndpoint (``converter.WorkloadEndpointData``)."""

    node: str
    labels: tuple[tuple[str, str], ...]
    service_account: str


def workloadendpoint_controller() -> Controller:
    def desired_of(pod: dict[str, Any]) -> dict[tuple[str, str], Any]:
        md, spec = _md(pod), pod.get("spec") or {}
        ns, name = md.get("namespace") or "default", md["name"]
        if not conversion.pod_is_calico_endpoint(pod):
            return {}
        sa = spec.get("serviceAccountName") or ""
        labels = conversion.pod_labels(md.get("labels") or {}, ns, sa)
        return {(ns, name): EndpointData(spec["nodeName"], tuple(sorted(labels.items())), sa)}

    def apply(client: Any, key: tuple[str, str], want: Any) -> str | None:
        if want is None:
            return None  # the CNI plugin deletes the endpoint with the pod's sandbox
        name = workload_endpoint_name(want.node, "k8s", key[1], "eth0")
        try:
            wep = client.get(WorkloadEndpoint, name, key[0])
        except errors.NotFound:
            return None  # not created by the CNI plugin yet; its ADD writes the current labels
        labels = dict(want.labels)
        if (wep.metadata.labels or {}) == labels and wep.spec.service_account_name == want.service_account:
            return None
        wep.metadata.labels = labels
        wep.spec.service_account_name = want.service_account
        client.update(wep)
        return "updated"

    return Controller("workloadendpoint", "pods", desired_of, apply, None)


FACTORIES: dict[str, Callable[[], Controller]] = {
    "namespace": namespace_controller,
    "serviceaccount": serviceaccount_controller,
    "policy": policy_controller,
    "workloadendpoint": workloadendpoint_controller,
}


# -- running ---------------------------------------------------------------------------


class ObjectControllers:
    """The enabled controllers over one datastore client and one Kubernetes source."""

    def __init__(self, client: Any, source: KubeSource, enabled: list[str], reconciler_period: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.source = source
        self.controllers = {n: FACTORIES[n]() for n in enabled if n in FACTORIES}
        self.by_resource = {c.resource: c for c in self.controllers.values()}
        self.reconciler_period = reconciler_period
        self.clock = clock
        self._lock = threading.Lock()
        self._dirty: dict[Key, int] = {}  # key -> failed attempts
        self._retry_at: dict[Key, float] = {}
        self._wake = threading.Event()
        self.applied: list[tuple[str, str, str, str]] = []  # (controller, ns, name, what) for tests/status
        self.resyncs = 0

    # -- Kubernetes events -------------------------------------------------------------
    def on_event(self, typ: str, resource: str, obj: dict[str, Any]) -> None:
        """A Kubernetes object changed: recompute what it wants and mark the keys dirty."""
        c = self.by_resource.get(resource)
        if c is None:
            return
        md = _md(obj)
        k8s_key = f"{md.get('namespace', '')}/{md.get('name', '')}"
        with self._lock:
            old = c.sources.pop(k8s_key, set())
            for key in old:
                c.desired.pop(key, None)
            new: dict[tuple[str, str], Any] = {} if typ == "DELETED" else c.desired_of(obj)
            c.desired.update(new)
            if new:
                c.sources[k8s_key] = set(new)
            for key in old | set(new):
                self._dirty.setdefault((c.name, *key), 0)
        self._wake.set()

    # -- the worker --------------------------------------------------------------------
    def process(self) -> int:
        """Apply every dirty key that is due; returns how many were handled."""
        now = self.clock()
        with self._lock:
            due = [k for k in self._dirty if self._retry_at.get(k, 0) <= now]
        done = 0
        for key in due:
            cname, ns, name = key
            c = self.controllers[cname]
            with self._lock:
                want = c.desired.get((ns, name))
            try:
                what = c.apply(self.client, (ns, name), want)
            except errors.DatastoreUnavailable:
                raise
            except errors.DatastoreError as exc:
                with self._lock:
                    tries = self._dirty.get(key, 0) + 1
                    if tries >= MAX_RETRIES:
                        log.warning("%s controller: dropping %s/%s after %d tries: %s", cname, ns, name, tries, exc)
                        self._dirty.pop(key, None)
                        self._retry_at.pop(key, None)
                    else:
                        log.info("%s controller: %s/%s failed (%s); retrying", cname, ns, name, exc)
                        self._dirty[key] = tries
                        self._retry_at[key] = now + 0.005 * (2 ** tries)
                continue
            with self._lock:
                self._dirty.pop(key, None)
                self._retry_at.pop(key, None)
            done += 1
            if what:
                log.info("%s controller: %s %s%s", cname, what, f"{ns}/" if ns else "", name)
                self.applied.append((cname, ns, name, what))
        return done

    def resync(self) -> None:
        """List both sides: every desired key and every stale owned key becomes dirty."""
        for c in self.controllers.values():
            objs = self.source.list(c.resource)
            with self._lock:
                c.desired, c.sources = {}, {}
                for obj in objs:
                    md = _md(obj)
                    want = c.desired_of(obj)
                    c.desired.update(want)
                    if want:
                        c.sources[f"{md.get('namespace', '')}/{md.get('name', '')}"] = set(want)
                keys = set(c.desired)
            if c.owned_keys is not None:
                keys |= c.owned_keys(self.client)
            with self._lock:
                for key in keys:
                    self._dirty.setdefault((c.name, *key), 0)
        self.resyncs += 1
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Watch Kubernetes and keep the Calico side in step until ``stop`` is set."""
        if not self.controllers:
            return
        log.info("starting controllers: %s", ", ".join(self.controllers))
        # wake the worker when stopped (it sleeps on _wake, up to a reconciler period)
        threading.Thread(target=lambda: (stop.wait(), self._wake.set()), name="k8s-objects-stop",
                         daemon=True).start()
        watcher = threading.Thread(target=self.source.watch, args=(tuple(self.by_resource), self.on_event, stop),
                                   name="k8s-objects", daemon=True)
        next_resync = 0.0
        started = False
        while not stop.is_set():
            try:
                if self.clock() >= next_resync:
                    self.resync()
                    next_resync = self.clock() + self.reconciler_period
                    if not started:
                        watcher.start()
                        started = True
                self.process()
            except (errors.DatastoreError, *SOURCE_ERRORS) as exc:
                log.warning("controllers: %s; retrying", exc)
                stop.wait(1.0)
                continue
            with self._lock:
                pending = [self._retry_at.get(k, 0) for k in self._dirty]
            wait = max(0.0, min([next_resync - self.clock(), *[t - self.clock() for t in pending]]))
            self._wake.wait(min(wait, self.reconciler_period))
            self._wake.clear()
