"""The Kubernetes object store: Kubernetes kinds as JSON in etcd, as the API server keeps them.

Keys are ``/registry/<resource>/<namespace>/<name>`` (``/registry/minions/<name>`` for
Nodes, ``/registry/services/specs/...`` for Services, as Kubernetes does), values the
object's JSON, and ``metadata.resourceVersion`` is the key's etcd mod revision, so an
update is a compare-and-swap on it. The etcd client is ``datastore.etcd.EtcdClient``
(anything with its get/list/put/create/update/delete/watch methods works).
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from testbed.k8s import errors
from testbed.k8s.model import (
    DEFAULT_NAMESPACE,
    KINDS,
    SYSTEM_NAMESPACES,
    kind_of_key,
    registry_key,
    registry_prefix,
    validate,
)

DEFAULT_POD_CIDR = "192.168.0.0/16"
DEFAULT_SERVICE_CIDR = "10.96.0.0/12"
SERVICE_IP_PREFIX = "/registry/ranges/serviceips/"
KUBEADM_CONFIG = ("kube-system", "kubeadm-config")


def now_iso() -> str:
    """The current time in Kubernetes' timestamp format."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Event:
    """One change seen by :meth:`Store.watch`."""

    type: str  # ADDED | MODIFIED | DELETED
    kind: str
    name: str
    namespace: str | None
    obj: dict | None
    revision: int


class Store:
    """CRUD and watch of Kubernetes objects kept in etcd."""

    def __init__(self, etcd: Any):
        self.etcd = etcd

    @classmethod
    def from_endpoints(cls, endpoints: list[str] | None = None, timeout: float = 3.0) -> Store:
        """A store on the etcd at ``endpoints`` (default: $ETCD_ENDPOINTS, else 127.0.0.1:2379)."""
        from datastore.etcd import EtcdClient

        if endpoints is None:
            env = os.environ.get("ETCD_ENDPOINTS", "http://127.0.0.1:2379")
            endpoints = [e.strip() for e in env.split(",") if e.strip()]
        return cls(EtcdClient(endpoints, timeout=timeout))

    # --- low level ---------------------------------------------------------------------
    def _call(self, fn: Callable, *args: Any) -> Any:
        try:
            return fn(*args)
        except errors.K8sError:
            raise
        except Exception as exc:  # map datastore errors without importing them eagerly
            name = type(exc).__name__
            if name in ("DatastoreUnavailable", "ConnectionError", "URLError", "TimeoutError"):
                raise errors.Unavailable(f"the datastore (etcd) is unavailable: {exc}") from exc
            raise

    @staticmethod
    def _decode(kv: Any) -> dict:
        obj = json.loads(kv.value)
        obj.setdefault("metadata", {})["resourceVersion"] = str(kv.mod_revision)
        return obj

    @staticmethod
    def _encode(obj: dict) -> bytes:
        body = copy.deepcopy(obj)
        body.get("metadata", {}).pop("resourceVersion", None)
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    # --- reads -------------------------------------------------------------------------
    def get(self, kind: str, name: str, namespace: str | None = DEFAULT_NAMESPACE) -> dict:
        """The object, or :class:`errors.NotFound`."""
        kv = self._call(self.etcd.get, registry_key(kind, name, namespace))
        if kv is None:
            raise errors.NotFound(KINDS[kind].resource, name)
        return self._decode(kv)

    def find(self, kind: str, name: str, namespace: str | None = DEFAULT_NAMESPACE) -> dict | None:
        """The object, or None."""
        try:
            return self.get(kind, name, namespace)
        except errors.NotFound:
            return None

    def list(self, kind: str, namespace: str | None = None) -> list[dict]:
        """Every object of ``kind`` (in ``namespace``; None = all namespaces), sorted by key."""
        return self.list_with_revision(kind, namespace)[0]

    def list_with_revision(self, kind: str, namespace: str | None = None) -> tuple[list[dict], int]:
        """Like :meth:`list`, plus the etcd revision the list was read at."""
        kvs, rev = self._call(self.etcd.list, registry_prefix(kind, namespace))
        return [self._decode(kv) for kv in kvs], rev

    # --- writes ------------------------------------------------------------------------
    def create(self, obj: dict, where: str = "") -> dict:
        """Validate and store a new object; fills uid, creationTimestamp, ClusterIP."""
        obj = validate(copy.deepcopy(obj), where)
        kind = obj["kind"]
        meta = obj["metadata"]
        ns = meta.get("namespace")
        if KINDS[kind].namespaced and kind != "Namespace" and ns not in SYSTEM_NAMESPACES:
            if self.find("Namespace", ns, None) is None:
                raise errors.NotFound("namespaces", ns)
        self.check_references(obj, where)
        meta.pop("resourceVersion", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_iso()
        if kind in ("Deployment", "ReplicaSet", "DaemonSet"):
            meta["generation"] = 1
        if kind == "Namespace":
            obj["status"] = {"phase": "Active"}
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
        if kind == "Pod":
            obj.setdefault("status", {"phase": "Pending", "qosClass": "BestEffort"})
        allocated = None
        if kind == "Service" and obj["spec"].get("clusterIP") != "None":
            allocated = self._allocate_cluster_ip(obj["spec"].get("clusterIP"), meta)
            obj["spec"]["clusterIP"] = allocated
            obj["spec"]["clusterIPs"] = [allocated]
            obj["spec"].setdefault("ipFamilies", ["IPv4"])
            obj["spec"].setdefault("ipFamilyPolicy", "SingleStack")
            obj.setdefault("status", {"loadBalancer": {}})
        key = registry_key(kind, meta["name"], ns)
        try:
            rev = self._call(self.etcd.create, key, self._encode(obj))
        except Exception as exc:
            if allocated:
                self._release_cluster_ip(allocated)
            if type(exc).__name__ == "AlreadyExists":
                raise errors.AlreadyExists(KINDS[kind].resource, meta["name"]) from None
            raise
        meta["resourceVersion"] = str(rev)
        return obj

    def update(self, obj: dict, where: str = "") -> dict:
        """Replace an object if it is unchanged since read (CAS on resourceVersion)."""
        obj = validate(copy.deepcopy(obj), where)
        kind, meta = obj["kind"], obj["metadata"]
        rv = meta.get("resourceVersion")
        key = registry_key(kind, meta["name"], meta.get("namespace"))
        if not rv:
            raise errors.Invalid("metadata.resourceVersion", "must be specified for an update", where)
        try:
            rev = self._call(self.etcd.update, key, self._encode(obj), int(rv))
        except Exception as exc:
            name = type(exc).__name__
            if name == "Conflict":
                raise errors.Conflict(KINDS[kind].resource, meta["name"]) from None
            if name == "NotFound":
                raise errors.NotFound(KINDS[kind].resource, meta["name"]) from None
            raise
        meta["resourceVersion"] = str(rev)
        return obj

    def mutate(self, kind: str, name: str, namespace: str | None, fn: Callable[[dict], bool | None],
               attempts: int = 20) -> dict | None:
        """Read-modify-write with retry on conflict. ``fn`` edits the object in place and
        returns False to skip the write. Returns the stored object (None if it is gone)."""
        for _ in range(attempts):
            obj = self.find(kind, name, namespace)
            if obj is None:
                return None
            before = copy.deepcopy(obj)
            if fn(obj) is False or obj == before:
                return obj
            try:
                return self.update(obj)
            except errors.Conflict:
                continue
            except errors.NotFound:
                return None
        raise errors.Conflict(KINDS[kind].resource, name)

    def apply(self, obj: dict, where: str = "") -> tuple[dict, str]:
        """Create or reconfigure (``kubectl apply``); returns (object, "created"|"configured"|"unchanged")."""
        obj = validate(copy.deepcopy(obj), where)
        kind, meta = obj["kind"], obj["metadata"]
        for _ in range(20):
            current = self.find(kind, meta["name"], meta.get("namespace"))
            if current is None:
                try:
                    return self.create(obj, where), "created"
                except errors.AlreadyExists:
                    continue
            merged = copy.deepcopy(current)
            for field in ("spec", "data", "subsets"):
                if field in obj:
                    new = copy.deepcopy(obj[field])
                    if kind == "Service":  # the allocated ClusterIP is immutable
                        new["clusterIP"] = current["spec"].get("clusterIP")
                        new["clusterIPs"] = current["spec"].get("clusterIPs")
                        for k, v in current["spec"].items():
                            new.setdefault(k, v)
                    if kind == "Pod":  # fields set by the system (nodeName) stay; the rest is immutable
                        for k, v in current["spec"].items():
                            new.setdefault(k, v)
                        if new != current["spec"]:
                            changed = sorted(k for k in set(new) | set(current["spec"])
                                             if new.get(k) != current["spec"].get(k))
                            raise errors.Invalid(
                                "spec", f"Forbidden: pod updates may not change fields other than "
                                f"metadata (changed: {', '.join('spec.' + k for k in changed)}); "
                                "delete and re-create the pod", where)
                    merged[field] = new
            if "labels" in meta:
                merged["metadata"]["labels"] = meta["labels"]
            if "annotations" in meta:  # keys the system added (the kubelet's) are kept
                merged["metadata"]["annotations"] = {**(current["metadata"].get("annotations") or {}),
                                                     **(meta["annotations"] or {})}
            if merged == current:
                return current, "unchanged"
            self.check_references(merged, where)
            if kind in ("Deployment", "ReplicaSet", "DaemonSet") and merged.get("spec") != current.get("spec"):
                merged["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
            try:
                return self.update(merged, where), "configured"
            except errors.Conflict:
                continue
        raise errors.Conflict(KINDS[kind].resource, meta["name"])

    def delete(self, kind: str, name: str, namespace: str | None = DEFAULT_NAMESPACE,
               force: bool = False) -> dict:
        """Delete an object. A Pod running on a node is only marked (deletionTimestamp) so
        its kubelet can tear it down and remove it, unless ``force``. Returns the object."""
        obj = self.get(kind, name, namespace)
        if kind == "Pod" and not force and obj["spec"].get("nodeName") and not obj["metadata"].get("deletionTimestamp"):
            if self.find("Node", obj["spec"]["nodeName"], None) is not None:
                def mark(pod: dict) -> None:
                    pod["metadata"]["deletionTimestamp"] = now_iso()
                    pod["metadata"]["deletionGracePeriodSeconds"] = pod["spec"].get(
                        "terminationGracePeriodSeconds", 30)

                return self.mutate(kind, name, namespace, mark) or obj
        if kind == "Pod" and obj["metadata"].get("deletionTimestamp") and not force:
            return obj
        self.remove(kind, name, namespace)
        return obj

    def remove(self, kind: str, name: str, namespace: str | None, resource_version: str | None = None) -> bool:
        """Remove the object from etcd now (the kubelet's final delete). True if it was there."""
        key = registry_key(kind, name, namespace)
        mod = int(resource_version) if resource_version else None
        try:
            gone = self._call(self.etcd.delete, key, mod)
        except Exception as exc:
            if type(exc).__name__ == "Conflict":
                raise errors.Conflict(KINDS[kind].resource, name) from None
            raise
        if gone and kind in ("Service", "Namespace"):
            ns = name if kind == "Namespace" else namespace
            for kv in self._call(self.etcd.list, SERVICE_IP_PREFIX)[0]:
                owner = json.loads(kv.value)
                if owner.get("namespace") == ns and (kind == "Namespace" or owner.get("name") == name):
                    self._release_cluster_ip(kv.key[len(SERVICE_IP_PREFIX):])
        if gone and kind == "Namespace":
            for k in KINDS.values():
                if k.namespaced:
                    self._call(self.etcd.delete_prefix, registry_prefix(k.kind, name))
        return bool(gone)

    # --- helpers -----------------------------------------------------------------------
    def check_references(self, obj: dict, where: str = "") -> None:
        """A Pod (or Deployment template) pinned to a node that does not exist is an error."""
        spec = obj.get("spec") or {}
        if obj["kind"] == "Pod":
            node, path = spec.get("nodeName"), "spec.nodeName"
        elif obj["kind"] in ("Deployment", "ReplicaSet", "DaemonSet"):
            node, path = (spec.get("template") or {}).get("spec", {}).get("nodeName"), "spec.template.spec.nodeName"
        else:
            return
        if node and self.find("Node", node, None) is None:
            names = ", ".join(n["metadata"]["name"] for n in self.list("Node")) or "none registered"
            raise errors.Invalid(path, f'node "{node}" does not exist (nodes: {names})', where)

    def cluster_config(self) -> dict[str, str]:
        """podSubnet / serviceSubnet from kube-system/kubeadm-config (defaults if absent)."""
        import yaml

        cfg = {"podSubnet": DEFAULT_POD_CIDR, "serviceSubnet": DEFAULT_SERVICE_CIDR}
        cm = self.find("ConfigMap", KUBEADM_CONFIG[1], KUBEADM_CONFIG[0])
        if cm:
            doc = yaml.safe_load(cm.get("data", {}).get("ClusterConfiguration", "")) or {}
            for k, v in (doc.get("networking") or {}).items():
                if k in cfg and v:
                    cfg[k] = str(v)
        return cfg

    def _allocate_cluster_ip(self, wanted: str | None, meta: dict) -> str:
        net = ipaddress.ip_network(self.cluster_config()["serviceSubnet"])
        owner = json.dumps({"namespace": meta.get("namespace"), "name": meta["name"]}).encode()
        if wanted:
            if ipaddress.ip_address(wanted) not in net:
                raise errors.Invalid("spec.clusterIP", f'Invalid value: "{wanted}": provided IP is not in the valid range {net}')
            try:
                self._call(self.etcd.create, SERVICE_IP_PREFIX + wanted, owner)
            except Exception as exc:
                if type(exc).__name__ == "AlreadyExists":
                    raise errors.Invalid("spec.clusterIP", f'Invalid value: "{wanted}": provided IP is already allocated') from None
                raise
            return wanted
        size = net.num_addresses - 2
        for _ in range(64):
            ip = str(net.network_address + random.randint(11, max(11, min(size, 65534))))
            try:
                self._call(self.etcd.create, SERVICE_IP_PREFIX + ip, owner)
                return ip
            except Exception as exc:
                if type(exc).__name__ != "AlreadyExists":
                    raise
        raise errors.K8sError(f"no free ClusterIP in {net}")

    def _release_cluster_ip(self, ip: str) -> None:
        self._call(self.etcd.delete, SERVICE_IP_PREFIX + ip, None)

    def ensure_cluster(self, pod_cidr: str = DEFAULT_POD_CIDR, service_cidr: str = DEFAULT_SERVICE_CIDR) -> None:
        """What kubeadm init leaves behind: the system namespaces and kube-system/kubeadm-config."""
        import yaml

        for ns in SYSTEM_NAMESPACES:
            try:
                self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
            except errors.AlreadyExists:
                pass
        cfg = {
            "apiVersion": "kubeadm.k8s.io/v1beta3", "kind": "ClusterConfiguration",
            "kubernetesVersion": KUBE_VERSION, "clusterName": "kubernetes",
            "networking": {"dnsDomain": "cluster.local", "podSubnet": pod_cidr, "serviceSubnet": service_cidr},
        }
        cm = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": KUBEADM_CONFIG[1], "namespace": KUBEADM_CONFIG[0]},
              "data": {"ClusterConfiguration": yaml.safe_dump(cfg, sort_keys=True)}}
        try:
            self.create(cm)
        except errors.AlreadyExists:
            pass

    def watch(self, revision: int, on_open: Callable[[Any], None] | None = None) -> Iterator[Event]:
        """Changes to every Kubernetes object after ``revision`` (raises on compaction).
        ``on_open`` receives the underlying watch (whose ``close()`` stops it)."""
        w = self.etcd.watch("/registry/", revision + 1)
        if on_open is not None:
            on_open(w)
        for batch in w:
            for ev in batch:
                kind = kind_of_key(ev.kv.key)
                if kind is None:
                    continue
                parts = ev.kv.key[len(registry_prefix(kind)):].split("/")
                ns, name = (parts[0], parts[-1]) if KINDS[kind].namespaced else (None, parts[-1])
                if ev.type == "DELETE":
                    yield Event("DELETED", kind, name, ns, None, ev.kv.mod_revision)
                else:
                    typ = "ADDED" if ev.kv.create_revision == ev.kv.mod_revision else "MODIFIED"
                    yield Event(typ, kind, name, ns, self._decode(ev.kv), ev.kv.mod_revision)

    def revision(self) -> int:
        """The current etcd revision."""
        return self._call(self.etcd.revision)


KUBE_VERSION = "v1.28.15"
