"""Where calico-kube-controllers read Kubernetes objects from: one small interface.

:class:`KubeSource` lists and watches Namespaces, ServiceAccounts, Pods,
NetworkPolicies and Nodes as Kubernetes JSON objects. Two implementations:

* :class:`ApiSource`: through the Kubernetes API (``kubeclient``, list+watch
  informers), as Calico's controllers do; used whenever a kubeconfig is
  available (``KUBECONFIG``, ``~/.kube/config`` or in-cluster);
* :class:`RegistrySource`: the fallback without any kubeconfig, reading the objects
  where calicolab's API server keeps them in etcd (``/registry/...``). Every lab path
  gives kube-controllers a kubeconfig (the supervisor's service and the lab's
  ``calico/kube-controllers`` image both use the node's ``/etc/kubernetes/admin.conf``),
  so in a lab they read through the API; the node controller's etcd tests still write
  ``/registry`` keys directly and use it.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)

try:
    from kubeclient.errors import KubeError
except ImportError:  # pragma: no cover - kubeclient is part of the project
    KubeError = OSError  # type: ignore[assignment,misc]

#: what reading Kubernetes may raise while the API server is starting or unreachable (retried)
SOURCE_ERRORS: tuple[type[BaseException], ...] = (KubeError, OSError)

#: resource -> (apiVersion, /registry prefix)
RESOURCES = {
    "namespaces": ("v1", "/registry/namespaces/"),
    "serviceaccounts": ("v1", "/registry/serviceaccounts/"),
    "pods": ("v1", "/registry/pods/"),
    "networkpolicies": ("networking.k8s.io/v1", "/registry/networkpolicies/"),
    "nodes": ("v1", "/registry/minions/"),
}

Handler = Callable[[str, str, dict[str, Any]], None]  # (ADDED|MODIFIED|DELETED|SYNCED, resource, object)

#: the event a source emits once its first full list is in: an object deleted between a
#: caller's own list and the watch's list has no DELETED event, so the caller looks again
SYNCED = "SYNCED"


class KubeSource(Protocol):
    """Kubernetes objects for the controllers."""

    def list(self, resource: str) -> list[dict[str, Any]]:
        """Every object of ``resource`` (a plural such as "pods")."""

    def watch(self, resources: tuple[str, ...], handler: Handler, stop: threading.Event) -> None:
        """Call ``handler`` for every change of ``resources`` until ``stop`` is set (blocks);
        ``(SYNCED, "", {})`` once the first list of every resource is in."""


class RegistrySource:
    """Kubernetes objects read from the API server's etcd keys (``/registry/<resource>/...``)."""

    def __init__(self, etcd: Any) -> None:
        self.etcd = etcd

    def list(self, resource: str) -> list[dict[str, Any]]:
        _, prefix = RESOURCES[resource]
        kvs, _ = self.etcd.list(prefix)
        out = []
        for kv in kvs:
            try:
                out.append(json.loads(kv.value))
            except ValueError:
                log.warning("ignoring undecodable %s at %s", resource, kv.key)
        return out

    def watch(self, resources: tuple[str, ...], handler: Handler, stop: threading.Event) -> None:
        from datastore import errors

        prefixes = {RESOURCES[r][1]: r for r in resources}
        known: dict[str, dict[str, Any]] = {}
        rev = None
        while not stop.is_set():
            try:
                if rev is None:
                    fresh: dict[str, dict[str, Any]] = {}
                    rev = 0
                    for prefix in prefixes:
                        kvs, rev = self.etcd.list(prefix)
                        for kv in kvs:
                            try:
                                fresh[kv.key] = json.loads(kv.value)
                            except ValueError:
                                continue
                    for key, obj in fresh.items():
                        if key not in known:
                            handler("ADDED", self._res(prefixes, key), obj)
                        elif known[key] != obj:
                            handler("MODIFIED", self._res(prefixes, key), obj)
                    for key in set(known) - set(fresh):
                        handler("DELETED", self._res(prefixes, key), known[key])
                    if not known:
                        handler(SYNCED, "", {})
                    known = fresh
                for batch in self.etcd.watch("/registry/", rev + 1):
                    for ev in batch:
                        rev = max(rev, ev.kv.mod_revision)
                        res = self._res(prefixes, ev.kv.key)
                        if res is None:
                            continue
                        if ev.type == "DELETE":
                            old = known.pop(ev.kv.key, None)
                            if old is not None:
                                handler("DELETED", res, old)
                            continue
                        try:
                            obj = json.loads(ev.kv.value)
                        except ValueError:
                            continue
                        typ = "MODIFIED" if ev.kv.key in known else "ADDED"
                        known[ev.kv.key] = obj
                        handler(typ, res, obj)
                    if stop.is_set():
                        return
            except errors.Compacted:
                rev = None
            except errors.DatastoreError as exc:
                if stop.is_set():
                    return
                log.warning("watch of /registry/ interrupted: %s; resuming", exc)
                stop.wait(0.5)

    @staticmethod
    def _res(prefixes: dict[str, str], key: str) -> str | None:
        for prefix, res in prefixes.items():
            if key.startswith(prefix):
                return res
        return None


class ApiSource:
    """Kubernetes objects through the API server (kubeclient informers)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def list(self, resource: str) -> list[dict[str, Any]]:
        api, _ = RESOURCES[resource]
        items, _ = self.client.list_all(api, resource)
        return items

    def watch(self, resources: tuple[str, ...], handler: Handler, stop: threading.Event) -> None:
        from kubeclient import Informer

        informers = []
        for res in resources:
            inf = Informer(self.client, RESOURCES[res][0], res)
            inf.add_handler(lambda typ, obj, old, res=res: handler(typ, res, obj))
            informers.append(inf.start())
        while not stop.is_set() and not all(inf.wait_synced(0.5) for inf in informers):
            pass
        if not stop.is_set():
            handler(SYNCED, "", {})
        try:
            stop.wait()
        finally:
            for inf in informers:
                inf.stop()


def from_env(env: dict[str, str], etcd: Any) -> KubeSource:
    """The API when a kubeconfig is available (and kubeclient is installed), else the registry."""
    import importlib.util
    import os

    if importlib.util.find_spec("kubeclient") is not None:
        from kubeclient import Client, ConfigError

        path = env.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
        in_cluster = bool(env.get("KUBERNETES_SERVICE_HOST"))
        if env.get("KUBECONFIG") or os.path.exists(path) or in_cluster:
            try:
                return ApiSource(Client.from_config(env.get("KUBECONFIG")))
            except ConfigError as exc:
                log.warning("no usable kubeconfig (%s); reading Kubernetes objects from etcd", exc)
    log.warning("no kubeconfig (KUBECONFIG, ~/.kube/config or in-cluster): reading Kubernetes objects from "
                "etcd's /registry keys, which only a calicolab lab's API server keeps there")
    return RegistrySource(etcd)
