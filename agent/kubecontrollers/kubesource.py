"""Where calico-kube-controllers read Kubernetes objects from: one small interface.

:class:`KubeSource` lists and watches Namespaces, ServiceAccounts, Pods,
NetworkPolicies and Nodes as Kubernetes JSON objects; :class:`ApiSource` reads them
through the Kubernetes API (``kubeclient``, list+watch informers), as Calico's controllers
do, with the kubeconfig in ``KUBECONFIG`` (the lab's fast path gives its service the node's
``/etc/kubernetes/admin.conf``) or the pod's in-cluster config (its ServiceAccount token, as
the ``calico-kube-controllers`` Deployment runs it). The API server is the only reader of
its ``/registry`` keys in etcd.
"""

from __future__ import annotations

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

#: resource -> (apiVersion,)
RESOURCES = {
    "namespaces": ("v1",),
    "serviceaccounts": ("v1",),
    "pods": ("v1",),
    "networkpolicies": ("networking.k8s.io/v1",),
    "nodes": ("v1",),
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


class ApiSource:
    """Kubernetes objects through the API server (kubeclient informers)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def list(self, resource: str) -> list[dict[str, Any]]:
        api = RESOURCES[resource][0]
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


def from_env(env: dict[str, str], etcd: Any = None) -> KubeSource:
    """The API source: ``KUBECONFIG`` (or ~/.kube/config) when given, else the in-cluster
    config. Raises :class:`kubeclient.ConfigError` when there is neither."""
    from kubeclient import Client

    return ApiSource(Client.from_config(env.get("KUBECONFIG") or None))
