"""The resource types the API server serves: built-in kinds and, added at run time,
the kinds of CustomResourceDefinitions.

Each :class:`ResourceType` carries what discovery, the REST paths and storage need:
group/version/kind, plural and short names, scope, categories, subresources, the etcd
key prefix (kube-apiserver's own layout), and the
name of the official Python client's model class the schema is derived from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass
class ResourceType:
    """One REST resource (``pods``, ``deployments.apps``, a CRD's plural)."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool
    prefix: str  # etcd key prefix below /registry/, without trailing slash
    model: str | None = None  # kubernetes client model class (schema source)
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    verbs: tuple[str, ...] = tuple(VERBS)
    crd: dict[str, Any] | None = None  # the CRD object for custom resources
    storage_version: str | None = None
    served_versions: tuple[str, ...] = field(default=())

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def gvr(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def key(self, name: str, namespace: str | None) -> str:
        """The etcd key of an object."""
        if self.namespaced:
            return f"/registry/{self.prefix}/{namespace}/{name}"
        return f"/registry/{self.prefix}/{name}"

    def list_prefix(self, namespace: str | None = None) -> str:
        """The etcd prefix of every object (in ``namespace`` when given)."""
        if self.namespaced and namespace:
            return f"/registry/{self.prefix}/{namespace}/"
        return f"/registry/{self.prefix}/"


def _rt(group: str, version: str, kind: str, plural: str, namespaced: bool, prefix: str | None = None,
        model: str | None = None, short: tuple[str, ...] = (), cats: tuple[str, ...] = (),
        subs: tuple[str, ...] = (), verbs: tuple[str, ...] = tuple(VERBS)) -> ResourceType:
    return ResourceType(group, version, kind, plural, namespaced, prefix or plural, model, short, cats, subs, verbs)


ALL = ("all",)

BUILTINS: list[ResourceType] = [
    # core/v1
    _rt("", "v1", "Namespace", "namespaces", False, model="V1Namespace", short=("ns",), subs=("status", "finalize"),
        verbs=("create", "delete", "get", "list", "patch", "update", "watch")),
    _rt("", "v1", "Node", "nodes", False, prefix="minions", model="V1Node", short=("no",), subs=("status",)),
    _rt("", "v1", "Pod", "pods", True, model="V1Pod", short=("po",), cats=ALL,
        subs=("status", "binding", "log", "exec", "attach", "portforward", "eviction")),
    _rt("", "v1", "Service", "services", True, prefix="services/specs", model="V1Service", short=("svc",), cats=ALL,
        subs=("status",), verbs=("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")),
    _rt("", "v1", "Endpoints", "endpoints", True, prefix="services/endpoints", model="V1Endpoints", short=("ep",)),
    _rt("", "v1", "ConfigMap", "configmaps", True, model="V1ConfigMap", short=("cm",)),
    _rt("", "v1", "Secret", "secrets", True, model="V1Secret"),
    _rt("", "v1", "ServiceAccount", "serviceaccounts", True, model="V1ServiceAccount", short=("sa",), subs=("token",)),
    _rt("", "v1", "Event", "events", True, model="CoreV1Event", short=("ev",)),
    # apps/v1
    _rt("apps", "v1", "Deployment", "deployments", True, model="V1Deployment", short=("deploy",), cats=ALL,
        subs=("status", "scale")),
    _rt("apps", "v1", "ReplicaSet", "replicasets", True, model="V1ReplicaSet", short=("rs",), cats=ALL,
        subs=("status", "scale")),
    _rt("apps", "v1", "DaemonSet", "daemonsets", True, model="V1DaemonSet", short=("ds",), cats=ALL, subs=("status",)),
    _rt("apps", "v1", "StatefulSet", "statefulsets", True, model="V1StatefulSet", short=("sts",), cats=ALL,
        subs=("status", "scale")),
    _rt("apps", "v1", "ControllerRevision", "controllerrevisions", True, model="V1ControllerRevision"),
    # batch/v1
    _rt("batch", "v1", "Job", "jobs", True, model="V1Job", cats=ALL, subs=("status",)),
    _rt("batch", "v1", "CronJob", "cronjobs", True, model="V1CronJob", short=("cj",), cats=ALL, subs=("status",)),
    # networking.k8s.io/v1
    _rt("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies", True, model="V1NetworkPolicy",
        short=("netpol",)),
    # policy/v1
    _rt("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", True, model="V1PodDisruptionBudget",
        short=("pdb",), subs=("status",)),
    # rbac.authorization.k8s.io/v1 (stored, not enforced: see docs/apiserver.md)
    _rt("rbac.authorization.k8s.io", "v1", "Role", "roles", True, model="V1Role"),
    _rt("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", False, model="V1ClusterRole"),
    _rt("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", True, model="V1RoleBinding"),
    _rt("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", False,
        model="V1ClusterRoleBinding"),
    # discovery.k8s.io/v1
    _rt("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", True, model="V1EndpointSlice"),
    # coordination.k8s.io/v1
    _rt("coordination.k8s.io", "v1", "Lease", "leases", True, model="V1Lease"),
    # events.k8s.io/v1 (same objects as core/v1 events, converted)
    _rt("events.k8s.io", "v1", "Event", "events", True, model="EventsV1Event", short=("ev",)),
    # scheduling.k8s.io/v1
    _rt("scheduling.k8s.io", "v1", "PriorityClass", "priorityclasses", False, model="V1PriorityClass",
        short=("pc",)),
    # storage.k8s.io/v1
    _rt("storage.k8s.io", "v1", "CSIDriver", "csidrivers", False, model="V1CSIDriver"),
    _rt("storage.k8s.io", "v1", "CSINode", "csinodes", False, model="V1CSINode"),
    _rt("storage.k8s.io", "v1", "StorageClass", "storageclasses", False, model="V1StorageClass", short=("sc",)),
    # create-only reviews (answered, never stored)
    _rt("authentication.k8s.io", "v1", "SelfSubjectReview", "selfsubjectreviews", False, model="V1SelfSubjectReview",
        verbs=("create",)),
    _rt("authentication.k8s.io", "v1", "TokenReview", "tokenreviews", False, model="V1TokenReview",
        verbs=("create",)),
    _rt("authorization.k8s.io", "v1", "SelfSubjectAccessReview", "selfsubjectaccessreviews", False,
        model="V1SelfSubjectAccessReview", verbs=("create",)),
    _rt("authorization.k8s.io", "v1", "SelfSubjectRulesReview", "selfsubjectrulesreviews", False,
        model="V1SelfSubjectRulesReview", verbs=("create",)),
    _rt("authorization.k8s.io", "v1", "SubjectAccessReview", "subjectaccessreviews", False,
        model="V1SubjectAccessReview", verbs=("create",)),
    # apiextensions.k8s.io/v1
    _rt("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", False,
        prefix="apiextensions.k8s.io/customresourcedefinitions", model="V1CustomResourceDefinition",
        short=("crd", "crds"), cats=("api-extensions",), subs=("status",)),
    # apiregistration.k8s.io/v1
    _rt("apiregistration.k8s.io", "v1", "APIService", "apiservices", False,
        prefix="apiregistration.k8s.io/apiservices", model="V1APIService", cats=("api-extensions",),
        subs=("status",)),
]

# Preferred order of groups in discovery (as kube-apiserver lists them).
GROUP_ORDER = ["", "apiregistration.k8s.io", "apps", "events.k8s.io", "authentication.k8s.io",
               "authorization.k8s.io", "autoscaling", "batch", "certificates.k8s.io", "networking.k8s.io",
               "policy", "rbac.authorization.k8s.io", "storage.k8s.io", "admissionregistration.k8s.io",
               "apiextensions.k8s.io", "scheduling.k8s.io", "coordination.k8s.io", "node.k8s.io",
               "discovery.k8s.io", "flowcontrol.apiserver.k8s.io"]


class Registry:
    """Every served resource type, by (group, version, plural) and by etcd prefix."""

    def __init__(self) -> None:
        self._by_gvr: dict[tuple[str, str, str], ResourceType] = {}
        self._prefixes: list[tuple[str, ResourceType]] = []
        self._groups: dict[str, list[str]] = {}
        for rt in BUILTINS:
            self.add(rt)

    def add(self, rt: ResourceType) -> None:
        """Serve ``rt`` (replacing a type of the same group/version/plural)."""
        self._by_gvr[(rt.group, rt.version, rt.plural)] = rt
        self._reindex()

    def remove(self, group: str, version: str, plural: str) -> None:
        """Stop serving a type (a deleted CRD)."""
        self._by_gvr.pop((group, version, plural), None)
        self._reindex()

    def _reindex(self) -> None:
        seen: dict[str, ResourceType] = {}
        for rt in self._by_gvr.values():
            # events.k8s.io/v1 events share core's storage; the core type owns the prefix
            if rt.prefix in seen and not (rt.group == "" or rt.storage_version == rt.version):
                continue
            seen[rt.prefix] = rt
        self._prefixes = sorted(((f"/registry/{p}/", rt) for p, rt in seen.items()), key=lambda x: -len(x[0]))
        self._groups = self._group_versions()

    def get(self, group: str, version: str, plural: str) -> ResourceType | None:
        return self._by_gvr.get((group, version, plural))

    def all(self) -> list[ResourceType]:
        return list(self._by_gvr.values())

    def by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        for rt in self._by_gvr.values():
            if rt.api_version == api_version and rt.kind == kind:
                return rt
        return None

    def for_key(self, key: str) -> ResourceType | None:
        """The (storage-owning) type of an etcd key."""
        for prefix, rt in self._prefixes:
            if key.startswith(prefix):
                return rt
        return None

    def sharing_storage(self, rt: ResourceType) -> list[ResourceType]:
        """Every served type stored under ``rt``'s prefix (core and events.k8s.io Events;
        the versions of a CRD)."""
        return [r for r in self._by_gvr.values() if r.prefix == rt.prefix]

    def groups(self) -> dict[str, list[str]]:
        """group -> served versions (preferred first); kept from the last change of the served
        types (every request asks: do not mutate it)."""
        return self._groups

    def _group_versions(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for rt in self._by_gvr.values():
            vs = out.setdefault(rt.group, [])
            if rt.version not in vs:
                vs.append(rt.version)
        for vs in out.values():
            vs.sort(key=_version_priority)
        order = {g: i for i, g in enumerate(GROUP_ORDER)}
        return dict(sorted(out.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [rt for rt in self._by_gvr.values() if rt.group == group and rt.version == version]


def _version_priority(v: str) -> tuple:
    """Kubernetes' version ordering: GA > beta > alpha, higher numbers first."""
    import re

    m = re.match(r"^v(\d+)(?:(alpha|beta)(\d+))?$", v)
    if not m:
        return (3, 0, 0, v)
    major = int(m.group(1))
    stage = {None: 0, "beta": 1, "alpha": 2}[m.group(2)]
    minor = int(m.group(3) or 0)
    return (stage, -major, -minor, v)
