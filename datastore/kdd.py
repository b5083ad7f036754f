"""The Kubernetes datastore (KDD, ``DATASTORE_TYPE=kubernetes``): Calico's resources kept
in the Kubernetes API, as libcalico-go's k8s backend keeps them (calico.md section 8).

:class:`KubeClient` has the API of :class:`datastore.client.Client` (get, list, create,
update, apply, delete, watch) over a :class:`kubeclient.Client`:

* most kinds are custom resources ``crd.projectcalico.org/v1`` (:mod:`datastore.crds`);
  a write is a POST or a PUT carrying ``metadata.resourceVersion``, so a stale write is
  the API server's 409 (:class:`~datastore.errors.Conflict`);
* IPAMBlock, BlockAffinity and IPAMHandle are deleted as libcalico-go deletes them: first
  an update setting ``deleted`` (a CAS on the resourceVersion, which a plain DELETE would
  not check), then a DELETE with the UID as precondition; a read that finds ``deleted``
  set finishes the deletion and answers NotFound;
* Node is the Kubernetes Node (writes update its annotations through ``nodes/<n>/status``),
  WorkloadEndpoint is the Pod (the CNI plugin's write patches the pod's annotations through
  ``pods/<p>/status``), Profile is a Namespace or ServiceAccount (read-only) or the static
  ``projectcalico-default-allow`` (:mod:`datastore.derived`);
* :meth:`KubeClient.watch` lists and watches the Kubernetes resources behind the kinds
  asked for with :class:`kubeclient.Informer` (a 410 Gone is a full re-list whose
  differences are emitted), converts every object and emits the same
  :class:`~datastore.client.WatchEvent` stream as the etcd client.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from datastore import conversion, crds, derived, errors
from datastore.base import Datastore, WatchEvent, _cls
from datastore.resources import (
    K8S_POLICY_PREFIX,
    BlockAffinity,
    IPAMBlock,
    IPAMHandle,
    Metadata,
    Node,
    Profile,
    Resource,
    WorkloadEndpoint,
)
from datastore.rules import Rule

log = logging.getLogger(__name__)

DEFAULT_ALLOW_PROFILE = "projectcalico-default-allow"
NAMESPACE_PROFILE_PREFIX = conversion.NAMESPACE_PROFILE_PREFIX
SERVICEACCOUNT_PROFILE_PREFIX = conversion.SERVICEACCOUNT_PROFILE_PREFIX
K8S_NP = ("networking.k8s.io/v1", "networkpolicies")
#: soft-deleted IPAM kinds (``deleted`` set by an update before the DELETE)
SOFT_DELETED = (IPAMBlock, BlockAffinity, IPAMHandle)


def _kube_error(exc: BaseException, what: str) -> errors.DatastoreError:
    """A kubeclient error as the datastore error a caller handles."""
    import kubeclient

    if isinstance(exc, kubeclient.NotFound):
        return errors.NotFound(f"{what} does not exist")
    if isinstance(exc, kubeclient.AlreadyExists):
        return errors.AlreadyExists(f"{what} already exists")
    if isinstance(exc, kubeclient.Conflict):
        return errors.Conflict(f"{what} was modified by someone else: {exc}")
    if isinstance(exc, kubeclient.Invalid):
        causes = "; ".join(f"{c.get('field', '')}: {c.get('message', '')}" for c in exc.causes) or str(exc)
        return errors.ValidationError(what, f"the API server refused it: {causes}")
    if isinstance(exc, kubeclient.Gone):
        return errors.Compacted(f"{what}: {exc}")
    if isinstance(exc, kubeclient.ConnectionFailed | kubeclient.ConfigError):
        return errors.DatastoreUnavailable(str(exc))
    if isinstance(exc, kubeclient.ApiError) and exc.code in (500, 503, 504):
        return errors.DatastoreUnavailable(f"the Kubernetes API server failed: {exc}")
    return errors.DatastoreError(f"{what}: {exc}")


def _rev(rv: Any) -> int:
    """A resourceVersion as the integer WatchEvent carries (the API server's are etcd revisions)."""
    text = str(rv or "")
    head = text.split("/", 1)[0] or (text.split("/", 1)[1] if "/" in text else "")
    return int(head) if head.isdigit() else 0


def kube_config_from_env(env: Mapping[str, str]) -> Any:
    """The Kubernetes client config as libcalico-go's apiconfig finds it: ``KUBECONFIG``,
    else ``K8S_API_ENDPOINT`` (+ ``K8S_API_TOKEN``, ``K8S_CA_FILE``, ``K8S_CERT_FILE``,
    ``K8S_KEY_FILE``, ``K8S_INSECURE_SKIP_TLS_VERIFY``), else ``$HOME/.kube/config`` if it
    exists, else the in-cluster config (ServiceAccount mount, KUBERNETES_SERVICE_HOST/PORT)."""
    from kubeclient import config as kconfig

    def get(name: str) -> str:
        return env.get(name) or ""

    path = get("KUBECONFIG")
    if path:
        return kconfig.from_kubeconfig(path.split(os.pathsep)[0])
    endpoint = get("K8S_API_ENDPOINT")
    if endpoint:
        return kconfig.Config(server=endpoint.rstrip("/"), ca_file=get("K8S_CA_FILE") or None,
                              cert_file=get("K8S_CERT_FILE") or None, key_file=get("K8S_KEY_FILE") or None,
                              token=get("K8S_API_TOKEN") or None,
                              insecure=get("K8S_INSECURE_SKIP_TLS_VERIFY").lower() == "true")
    home = env.get("HOME")
    if home and os.path.exists(os.path.join(home, ".kube", "config")):
        return kconfig.from_kubeconfig(os.path.join(home, ".kube", "config"))
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    token = os.path.join(kconfig.SA_DIR, "token")
    if host and port and os.path.exists(token):
        if ":" in host:
            host = f"[{host}]"
        ns = "default"
        try:
            with open(os.path.join(kconfig.SA_DIR, "namespace")) as f:
                ns = f.read().strip() or "default"
        except OSError:
            pass
        return kconfig.Config(server=f"https://{host}:{port}", ca_file=os.path.join(kconfig.SA_DIR, "ca.crt"),
                              token_file=token, namespace=ns)
    raise errors.DatastoreError(
        "DATASTORE_TYPE=kubernetes needs the Kubernetes API: set KUBECONFIG (or K8S_API_ENDPOINT), "
        "or run in a pod with a ServiceAccount token and KUBERNETES_SERVICE_HOST/PORT")


# ---------------------------------------------------------------------------
# per-kind storage


class _Kind:
    """How one Calico kind is kept in the Kubernetes API."""

    cls: type[Resource]
    #: the Kubernetes resources (api_version, plural) a watch of this kind follows
    sources: tuple[tuple[str, str], ...] = ()

    def __init__(self, cls: type[Resource]):
        self.cls = cls

    def get(self, kc: KubeClient, name: str, ns: str | None) -> Resource:
        raise NotImplementedError

    def list(self, kc: KubeClient, ns: str | None) -> tuple[list[Resource], int]:
        raise NotImplementedError

    def create(self, kc: KubeClient, obj: Resource) -> Resource:
        raise self.unsupported("create", obj.ident())

    def update(self, kc: KubeClient, obj: Resource) -> Resource:
        raise self.unsupported("update", obj.ident())

    def delete(self, kc: KubeClient, obj: Resource, rv: str | None) -> Resource:
        raise self.unsupported("delete", obj.ident())

    def convert(self, kc: KubeClient, api: str, plural: str, k8s: dict) -> Resource | None:
        """The Calico object a watched Kubernetes object is (None: none)."""
        raise NotImplementedError

    def static(self) -> list[Resource]:
        """Objects that exist without a Kubernetes object behind them."""
        return []

    def unsupported(self, op: str, ident: str) -> errors.DatastoreError:
        return errors.DatastoreError(f"{ident}: operation {op} is not supported on {self.cls.KIND} in the "
                                     f"Kubernetes datastore ({self.why})")

    why = ""


class _CRDKind(_Kind):
    """A kind stored 1:1 as a custom resource."""

    def __init__(self, cls: type[Resource]):
        super().__init__(cls)
        self.crd = crds.BY_KIND[cls.KIND]
        self.sources = ((crds.API_VERSION, self.crd.plural),)

    def _ns(self, ns: str | None) -> str | None:
        return (ns or "default") if self.crd.namespaced else None

    def _what(self, name: str, ns: str | None) -> str:
        return f"{self.cls.KIND}({ns + '/' if self.crd.namespaced and ns else ''}{name})"

    def get_raw(self, kc: KubeClient, name: str, ns: str | None) -> dict:
        try:
            return kc.kube.get(crds.API_VERSION, self.crd.plural, crds.name_for(self.cls, name), self._ns(ns))
        except Exception as exc:  # noqa: BLE001 - mapped to a datastore error
            raise kc.map_error(exc, self._what(name, ns), self.crd) from None

    def get(self, kc: KubeClient, name: str, ns: str | None) -> Resource:
        cr = self.get_raw(kc, name, ns)
        obj = crds.from_cr(self.cls, cr)
        if self.cls in SOFT_DELETED and getattr(obj.spec, "deleted", False):
            # a half-done delete (libcalico-go's Get finishes it and reports NotFound)
            self._hard_delete(kc, cr)
            raise errors.NotFound(f"{self._what(name, ns)} does not exist (it was being deleted)")
        return obj

    def list(self, kc: KubeClient, ns: str | None) -> tuple[list[Resource], int]:
        try:
            items, rv = kc.kube.list_all(crds.API_VERSION, self.crd.plural, self._ns(ns) if ns else None)
        except Exception as exc:  # noqa: BLE001
            import kubeclient

            if isinstance(exc, kubeclient.NotFound):
                return [], 0  # no CRD: nothing of this kind (as libcalico-go's List)
            raise kc.map_error(exc, f"{self.cls.KIND} list", self.crd) from None
        out = []
        for cr in items:
            try:
                out.append(crds.from_cr(self.cls, cr))
            except errors.ValidationError as exc:
                log.warning("ignoring %s %s: %s", self.cls.KIND, (cr.get("metadata") or {}).get("name"), exc)
        return out, _rev(rv)

    def create(self, kc: KubeClient, obj: Resource) -> Resource:
        cr = crds.to_cr(obj)
        cr["metadata"].pop("resourceVersion", None)
        try:
            out = kc.kube.create(cr, cr["metadata"].get("namespace"), plural=self.crd.plural)
        except Exception as exc:  # noqa: BLE001
            raise kc.map_error(exc, obj.ident(), self.crd) from None
        return crds.from_cr(self.cls, out)

    def update(self, kc: KubeClient, obj: Resource) -> Resource:
        cr = crds.to_cr(obj)
        try:
            out = kc.kube.replace(cr, cr["metadata"].get("namespace"), plural=self.crd.plural)
        except Exception as exc:  # noqa: BLE001
            raise kc.map_error(exc, obj.ident(), self.crd) from None
        return crds.from_cr(self.cls, out)

    def delete(self, kc: KubeClient, obj: Resource, rv: str | None) -> Resource:
        if self.cls in SOFT_DELETED:
            # soft delete (a CAS on the resourceVersion), then the DELETE by UID
            obj.spec.deleted = True  # type: ignore[attr-defined]
            obj.metadata.resource_version = rv or obj.metadata.resource_version
            marked = self.update(kc, obj)
            self._hard_delete(kc, crds.to_cr(marked))
            obj.spec.deleted = False  # type: ignore[attr-defined]
            return obj
        pre: dict[str, str] = {}
        if rv:
            pre["resourceVersion"] = str(rv)
        if obj.metadata.uid:
            pre["uid"] = crds.reverse_uid(obj.metadata.uid)
        try:
            kc.kube.delete(crds.API_VERSION, self.crd.plural, crds.cr_name(obj), self._ns(obj.metadata.namespace),
                           preconditions=pre or None)
        except Exception as exc:  # noqa: BLE001
            raise kc.map_error(exc, obj.ident(), self.crd) from None
        return obj

    def _hard_delete(self, kc: KubeClient, cr: dict) -> None:
        m = cr.get("metadata") or {}
        pre = {"uid": m["uid"]} if m.get("uid") else None
        try:
            kc.kube.delete(crds.API_VERSION, self.crd.plural, m["name"], m.get("namespace"), preconditions=pre)
        except Exception as exc:  # noqa: BLE001
            import kubeclient

            if isinstance(exc, kubeclient.NotFound):
                return
            raise kc.map_error(exc, f"{self.cls.KIND}({m.get('name')})", self.crd) from None

    def convert(self, kc: KubeClient, api: str, plural: str, k8s: dict) -> Resource | None:
        try:
            obj = crds.from_cr(self.cls, k8s)
        except errors.ValidationError as exc:
            log.warning("ignoring %s %s: %s", self.cls.KIND, (k8s.get("metadata") or {}).get("name"), exc)
            return None
        if self.cls in SOFT_DELETED and getattr(obj.spec, "deleted", False):
            return None
        return obj


class _NodeKind(_Kind):
    """Calico Node = Kubernetes Node + ``projectcalico.org/*`` annotations."""

    sources = (("v1", "nodes"),)
    why = "a Calico Node is the Kubernetes Node of that name; create or delete the Kubernetes Node"

    def get(self, kc: KubeClient, name: str, ns: str | None) -> Resource:
        try:
            k8s = kc.kube.get("v1", "nodes", name)
        except Exception as exc:  # noqa: BLE001
            raise kc.map_error(exc, f"Node({name})") from None
        kc.node_sources[name] = k8s
        return derived.k8s_node_to_calico(k8s)

    def list(self, kc: KubeClient, ns: str | None) -> tuple[list[Resource], int]:
        try:
            items, rv = kc.kube.list_all("v1", "nodes")
        except Exception as exc:  # noqa: BLE001
            raise kc.map_error(exc, "Node list") from None
        return [derived.k8s_node_to_calico(n) for n in items], _rev(rv)

    def update(self, kc: KubeClient, obj: Resource) -> Resource:
        assert isinstance(obj, Node)
        name = obj.metadata.name
        k8s = kc.node_sources.get(name)
        if not (k8s and obj.metadata.resource_version and str(obj.metadata.resource_version) ==
                str((k8s.get("metadata") or {}).get("resourceVersion"))):
            # the Node was not just read at that version here: read it (the write still carries
            # the resourceVersion, so a Node changed meanwhile is a Conflict either way)
            try:
                k8s = kc.kube.get("v1", "nodes", name)
            except Exception as exc:  # noqa: BLE001
                raise kc.map_error(exc, obj.ident()) from None
        if obj.metadata.resource_version and str(obj.metadata.resource_version) != \
                str((k8s.get("metadata") or {}).get("resourceVersion")):
            raise errors.Conflict(f"{obj.ident()} was modified by someone else "
                                  f"(resourceVersion {obj.metadata.resource_version} is stale)")
        new = derived.merge_node_into_k8s(obj, k8s)
        try:
            out = kc.kube.replace(new, plural="nodes", sub="status")
        except Exception as exc:  # noqa: BLE001
            kc.node_sources.pop(name, None)
            raise kc.map_error(exc, obj.ident()) from None
        kc.node_sources[name] = out
        return derived.k8s_node_to_calico(out)

    def convert(self, kc: KubeClient, api: str, plural: str, k8s: dict) -> Resource | None:
        return derived.k8s_node_to_calico(k8s)


class _WorkloadEndpointKind(_Kind):
    """WorkloadEndpoint = a scheduled, non-hostNetwork Pod."""

    sources = (("v1", "pods"),)
    why = "a WorkloadEndpoint is its Pod; the CNI plugin's writes set the pod's cni.projectcalico.org annotations"

    def _pod_name(self, name: str) -> str:
        parsed = derived.parse_wep_name(name)
        if parsed is None or not parsed[2]:
            raise errors.NotFound(f"WorkloadEndpoint {name!r}: malformed name - unable to determine the Pod name")
        return parsed[2]

    def get(self, kc: KubeClient, name: str, ns: str | None) -> Resource:
        ns = ns or "default"
        pod_name = self._pod_name(name)
        try:
            pod = kc.kube.get("v1", "pods", pod_name, ns)
        except Exception as exc:  # noqa: BLE001
            raise kc.map_error(exc, f"WorkloadEndpoint({ns}/{name})") from None
        if not derived.is_workload(pod):
            raise errors.NotFound(f"WorkloadEndpoint({ns}/{name}) does not exist")
        wep = derived.pod_to_workload_endpoint(pod, kc.interface_prefix)
        if wep.metadata.name != name:
            raise errors.NotFound(f"WorkloadEndpoint({ns}/{name}) does not exist")
        return wep

    def list(self, kc: KubeClient, ns: str | None) -> tuple[list[Resource], int]:
        try:
            items, rv = kc.kube.list_all("v1", "pods", ns)
        except Exception as exc:  # noqa: BLE001
            raise kc.map_error(exc, "WorkloadEndpoint list") from None
        return [derived.pod_to_workload_endpoint(p, kc.interface_prefix) for p in items
                if derived.is_workload(p)], _rev(rv)

    def _patch(self, kc: KubeClient, obj: Resource, annotations: dict[str, str], rv: str | None,
               uid: str | None) -> Resource:
        ns = obj.metadata.namespace or "default"
        pod_name = self._pod_name(obj.metadata.name)
        patch = derived.annotation_patch(annotations, rv, uid)
        try:
            pod = kc.kube.patch("v1", "pods", pod_name, patch, ns, patch_type="strategic", sub="status")
        except Exception as exc:  # noqa: BLE001
            raise kc.map_error(exc, obj.ident()) from None
        return derived.pod_to_workload_endpoint(pod, kc.interface_prefix)

    def create(self, kc: KubeClient, obj: Resource) -> Resource:
        """The CNI plugin's create: the pod's podIP/podIPs/containerID annotations (PatchModeCNI:
        the UID as precondition when known, no resourceVersion)."""
        assert isinstance(obj, WorkloadEndpoint)
        return self._patch(kc, obj, derived.cni_annotations(obj), None, obj.metadata.uid)

    update = create

    def delete(self, kc: KubeClient, obj: Resource, rv: str | None) -> Resource:
        """The CNI plugin's DEL: podIP and podIPs blanked (containerID kept), with the
        resourceVersion and UID as preconditions."""
        self._patch(kc, obj, {derived.ANN_POD_IP: "", derived.ANN_POD_IPS: ""}, rv, obj.metadata.uid)
        return obj

    def convert(self, kc: KubeClient, api: str, plural: str, k8s: dict) -> Resource | None:
        if not derived.is_workload(k8s):
            return None
        try:
            return derived.pod_to_workload_endpoint(k8s, kc.interface_prefix)
        except ValueError as exc:
            log.warning("ignoring pod %s: %s", (k8s.get("metadata") or {}).get("name"), exc)
            return None


def namespace_to_profile(ns: dict) -> Profile:
    """``kns.<ns>`` (:func:`datastore.conversion.namespace_to_profile`) with the Namespace's UID,
    creation time and ``<nsrev>/`` as resourceVersion (``JoinProfileRevisions``)."""
    m = ns.get("metadata") or {}
    p = conversion.namespace_to_profile(ns)
    p.metadata.uid, p.metadata.creation_timestamp = m.get("uid"), m.get("creationTimestamp")
    p.metadata.resource_version = f"{m.get('resourceVersion', '')}/"
    return p


def serviceaccount_to_profile(sa: dict) -> Profile:
    """``ksa.<ns>.<sa>`` (:func:`datastore.conversion.serviceaccount_to_profile`), resourceVersion
    ``/<sarev>``."""
    m = sa.get("metadata") or {}
    p = conversion.serviceaccount_to_profile(sa)
    p.metadata.uid, p.metadata.creation_timestamp = m.get("uid"), m.get("creationTimestamp")
    p.metadata.resource_version = f"/{m.get('resourceVersion', '')}"
    return p


def default_allow_profile() -> Profile:
    """The static ``projectcalico-default-allow`` profile (``resources.DefaultAllowProfile``)."""
    p = Profile(metadata=Metadata(name=DEFAULT_ALLOW_PROFILE, resource_version="0"))
    p.spec.ingress = [Rule(action="Allow")]
    p.spec.egress = [Rule(action="Allow")]
    return p


class _ProfileKind(_Kind):
    """Profiles from Namespaces (``kns.``) and ServiceAccounts (``ksa.``), read-only."""

    sources = (("v1", "namespaces"), ("v1", "serviceaccounts"))
    why = "profiles are derived from Namespaces and ServiceAccounts"

    def get(self, kc: KubeClient, name: str, ns: str | None) -> Resource:
        if name == DEFAULT_ALLOW_PROFILE:
            return default_allow_profile()
        try:
            if name.startswith(NAMESPACE_PROFILE_PREFIX):
                return namespace_to_profile(kc.kube.get("v1", "namespaces", name[len(NAMESPACE_PROFILE_PREFIX):]))
            if name.startswith(SERVICEACCOUNT_PROFILE_PREFIX):
                rest = name[len(SERVICEACCOUNT_PROFILE_PREFIX):]
                sa_ns, _, sa = rest.partition(".")
                if sa_ns and sa:
                    return serviceaccount_to_profile(kc.kube.get("v1", "serviceaccounts", sa, sa_ns))
        except Exception as exc:  # noqa: BLE001
            raise kc.map_error(exc, f"Profile({name})") from None
        raise errors.NotFound(f"Profile({name}) does not exist")

    def list(self, kc: KubeClient, ns: str | None) -> tuple[list[Resource], int]:
        try:
            nss, nrv = kc.kube.list_all("v1", "namespaces")
            sas, srv = kc.kube.list_all("v1", "serviceaccounts")
        except Exception as exc:  # noqa: BLE001
            raise kc.map_error(exc, "Profile list") from None
        out: list[Resource] = [default_allow_profile()]
        out += [namespace_to_profile(n) for n in nss]
        out += [serviceaccount_to_profile(s) for s in sas]
        return out, max(_rev(nrv), _rev(srv))

    def convert(self, kc: KubeClient, api: str, plural: str, k8s: dict) -> Resource | None:
        return namespace_to_profile(k8s) if plural == "namespaces" else serviceaccount_to_profile(k8s)

    def static(self) -> list[Resource]:
        return [default_allow_profile()]


class _NetworkPolicyKind(_CRDKind):
    """Calico NetworkPolicies (custom resources) plus the Kubernetes NetworkPolicies, converted
    by the datastore to ``knp.default.<name>`` (read-only): in the Kubernetes datastore there is
    no policy controller (calico.md section 6)."""

    why = "knp.default.* policies are Kubernetes NetworkPolicies; change them with kubectl"

    def __init__(self, cls: type[Resource]):
        super().__init__(cls)
        self.sources = (*self.sources, K8S_NP)

    @staticmethod
    def _k8s(name: str) -> bool:
        return name.startswith(conversion.K8S_POLICY_PREFIX)

    @staticmethod
    def _converted(np: dict) -> Resource:
        pol, problems = conversion.k8s_networkpolicy_to_calico(np)
        for p in problems:
            log.warning("NetworkPolicy %s/%s: %s", (np.get("metadata") or {}).get("namespace"),
                        (np.get("metadata") or {}).get("name"), p)
        m = np.get("metadata") or {}
        pol.metadata.uid, pol.metadata.creation_timestamp = m.get("uid"), m.get("creationTimestamp")
        pol.metadata.resource_version = m.get("resourceVersion")
        return pol

    def get(self, kc: KubeClient, name: str, ns: str | None) -> Resource:
        if not self._k8s(name):
            return super().get(kc, name, ns)
        try:
            np = kc.kube.get(*K8S_NP, name[len(K8S_POLICY_PREFIX):], ns or "default")
        except Exception as exc:  # noqa: BLE001
            raise kc.map_error(exc, f"NetworkPolicy({ns or 'default'}/{name})") from None
        return self._converted(np)

    def list(self, kc: KubeClient, ns: str | None) -> tuple[list[Resource], int]:
        out, rev = super().list(kc, ns)
        try:
            items, krv = kc.kube.list_all(*K8S_NP, ns)
        except Exception as exc:  # noqa: BLE001
            raise kc.map_error(exc, "NetworkPolicy list") from None
        return out + [self._converted(np) for np in items], max(rev, _rev(krv))

    def _own(self, obj: Resource) -> None:
        if self._k8s(obj.metadata.name):
            raise errors.DatastoreError(f"{obj.ident()}: {self.why}")

    def create(self, kc: KubeClient, obj: Resource) -> Resource:
        self._own(obj)
        return super().create(kc, obj)

    def update(self, kc: KubeClient, obj: Resource) -> Resource:
        self._own(obj)
        return super().update(kc, obj)

    def delete(self, kc: KubeClient, obj: Resource, rv: str | None) -> Resource:
        self._own(obj)
        return super().delete(kc, obj, rv)

    def convert(self, kc: KubeClient, api: str, plural: str, k8s: dict) -> Resource | None:
        if api == K8S_NP[0]:
            return self._converted(k8s)
        return super().convert(kc, api, plural, k8s)


def _kinds() -> dict[str, _Kind]:
    from datastore.resources import KINDS

    out: dict[str, _Kind] = {}
    for kind, cls in KINDS.items():
        if kind == "Node":
            out[kind] = _NodeKind(cls)
        elif kind == "WorkloadEndpoint":
            out[kind] = _WorkloadEndpointKind(cls)
        elif kind == "Profile":
            out[kind] = _ProfileKind(cls)
        elif kind == "NetworkPolicy":
            out[kind] = _NetworkPolicyKind(cls)
        else:
            out[kind] = _CRDKind(cls)
    return out


# ---------------------------------------------------------------------------
# the client


class KubeClient(Datastore):
    """Calico's datastore in the Kubernetes API (``DATASTORE_TYPE=kubernetes``)."""

    datastore_type = "kubernetes"

    def __init__(self, kube: Any, *, typha: Any = None, interface_prefix: str | None = None):
        self.kube = kube
        self.etcd = None
        self.typha = typha
        from datastore.names import interface_prefix as _prefix

        self.interface_prefix = interface_prefix or _prefix(os.environ.get("FELIX_INTERFACEPREFIX"))
        self.kinds = _kinds()
        #: the Kubernetes Node each Calico Node was last read from or written to, by name
        #: (an update at the same resourceVersion writes over it without reading it again)
        self.node_sources: dict[str, dict] = {}

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, timeout: float = 3.0) -> KubeClient:
        """From ``KUBECONFIG`` / ``K8S_API_ENDPOINT`` / in-cluster config (:func:`kube_config_from_env`)."""
        from kubeclient import Client as Kube

        env = dict(os.environ) if env is None else env
        try:
            cfg = kube_config_from_env(env)
        except errors.DatastoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bad kubeconfig
            raise errors.DatastoreError(f"cannot load the Kubernetes client configuration: {exc}") from None
        cfg.timeout = max(timeout, 1.0)
        cfg.user_agent = "calicolab/datastore"
        from datastore.names import interface_prefix

        return cls(Kube(cfg), interface_prefix=interface_prefix(env.get("FELIX_INTERFACEPREFIX")))

    def describe(self) -> str:
        return f"the Kubernetes API at {self.kube.config.server}"

    def map_error(self, exc: BaseException, what: str, crd: crds.CRD | None = None) -> errors.DatastoreError:
        """A kubeclient error as a datastore error (a missing CRD is named)."""
        import kubeclient

        if isinstance(exc, errors.DatastoreError):
            return exc
        if crd is not None and isinstance(exc, kubeclient.NotFound) and \
                (exc.details.get("kind") or "") not in (crd.plural, "") and "could not find" in str(exc):
            return errors.DatastoreError(f"{what}: the CustomResourceDefinition {crd.name} is not installed "
                                         "(apply manifests/crds.yaml or Calico's manifest)")
        if crd is not None and isinstance(exc, kubeclient.NotFound) and not exc.details.get("name"):
            return errors.DatastoreError(f"{what}: the CustomResourceDefinition {crd.name} is not installed "
                                         "(apply manifests/crds.yaml or Calico's manifest)")
        return _kube_error(exc, what)

    def _kind(self, kind: str | type[Resource]) -> _Kind:
        return self.kinds[_cls(kind).KIND]

    # -- reads ---------------------------------------------------------------
    def get(self, kind: str | type[Resource], name: str, namespace: str | None = None) -> Resource:
        return self._kind(kind).get(self, name, namespace)

    def list_with_revision(self, kind: str | type[Resource],
                           namespace: str | None = None) -> tuple[list[Resource], int]:
        objs, rev = self._kind(kind).list(self, namespace)
        objs.sort(key=lambda o: (o.metadata.namespace or "", o.metadata.name))
        return objs, rev

    # -- writes --------------------------------------------------------------
    def _write_create(self, obj: Resource) -> Resource:
        k = self._kind(type(obj))
        if isinstance(k, _CRDKind) and not obj.MODEL_STORED:
            import datetime
            import uuid

            obj.metadata.uid = obj.metadata.uid or str(uuid.uuid4())
            obj.metadata.creation_timestamp = obj.metadata.creation_timestamp or \
                datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        out = k.create(self, obj)
        obj.metadata = out.metadata
        return out

    def _write_update(self, obj: Resource, current: Resource | None) -> Resource:
        k = self._kind(type(obj))
        if current is not None and isinstance(k, _CRDKind) and not obj.MODEL_STORED:
            obj.metadata.uid = obj.metadata.uid or current.metadata.uid
            obj.metadata.creation_timestamp = obj.metadata.creation_timestamp or current.metadata.creation_timestamp
        return k.update(self, obj)

    def _get_by_key(self, obj: Resource) -> Resource:
        return self.get(type(obj), obj.metadata.name, obj.metadata.namespace)

    def apply(self, obj: Resource) -> Resource:
        """Create, or replace if it exists. A WorkloadEndpoint's create and update are the same
        patch of its pod (the CNI plugin's CreateOrUpdate), so it is written without a read."""
        if isinstance(self._kind(type(obj)), _WorkloadEndpointKind):
            self._prepare(obj)
            return self._kind(type(obj)).create(self, obj)
        return super().apply(obj)

    def delete(self, kind: str | type[Resource], name: str, namespace: str | None = None,
               resource_version: str | int | None = None, uid: str | None = None) -> Resource:
        k = self._kind(kind)
        if isinstance(k, _WorkloadEndpointKind) and resource_version:
            # the CNI plugin's DEL, with what it read as preconditions: no second read
            wep = WorkloadEndpoint(metadata=Metadata(name=name, namespace=namespace or "default", uid=uid))
            return k.delete(self, wep, str(resource_version))
        current = k.get(self, name, namespace)
        if uid and current.metadata.uid and uid != current.metadata.uid:
            raise errors.Conflict(f"{current.ident()} is not the object with UID {uid}")
        rv = str(resource_version) if resource_version else current.metadata.resource_version
        return k.delete(self, current, rv)

    # -- watch ---------------------------------------------------------------
    def watch_stream(self, kinds: Iterable[str | type[Resource]], revision: int | None = None,
                     stop: threading.Event | None = None, retry_delay: float = 0.5) -> Any:
        """A cancellable WatchEvent stream (through Typha when one is configured)."""
        if self.typha is not None and revision is None:
            return self.typha.stream([_cls(k) for k in kinds], stop=stop)
        return KubeWatchStream(self, kinds, stop, retry_delay)


class KubeWatchStream:
    """Informers on the Kubernetes resources behind ``kinds``, their events converted to
    Calico WatchEvents: the current state (ADDED...), one SYNCED, then changes."""

    def __init__(self, client: KubeClient, kinds: Iterable[str | type[Resource]],
                 stop: threading.Event | None = None, retry_delay: float = 0.5):
        self.client = client
        self.classes = [_cls(k) for k in kinds]
        self.stop = stop or threading.Event()
        self.retry_delay = retry_delay
        self._queue: queue.Queue[WatchEvent | None] = queue.Queue()
        self._informers: list[Any] = []
        # (kind, ns, name) -> the last emitted document (to drop changes that change nothing)
        self._known: dict[tuple[str, str | None, str], dict] = {}
        # (api, plural, k8s key) -> the Calico key that Kubernetes object is
        self._owner: dict[tuple[str, str, str], tuple[str, str | None, str]] = {}
        self._lock = threading.Lock()
        self._closed = False

    @property
    def relists(self) -> int:
        """Full lists done by the informers so far (one each at start, one more per 410 Gone)."""
        return sum(inf.relists for inf in self._informers)

    def close(self) -> None:
        """Stop the stream and its informers (safe from any thread)."""
        self.stop.set()
        self._closed = True
        for inf in self._informers:
            inf.stop(wait=0)
        self._queue.put(None)

    def _emit(self, kind: str, src: tuple[str, str, str], obj: Resource | None, rv: Any) -> None:
        with self._lock:
            old_key = self._owner.get(src)
            key = (kind, obj.metadata.namespace if obj is not None else None,
                   obj.metadata.name) if obj is not None else old_key
            if obj is None:
                self._owner.pop(src, None)
                if old_key is not None and self._known.pop(old_key, None) is not None:
                    self._queue.put(WatchEvent("DELETED", old_key[0], old_key[2], old_key[1], None, _rev(rv)))
                return
            assert key is not None
            if old_key is not None and old_key != key and self._known.pop(old_key, None) is not None:
                self._queue.put(WatchEvent("DELETED", old_key[0], old_key[2], old_key[1], None, _rev(rv)))
            self._owner[src] = key
            doc = obj.to_dict()
            doc["metadata"].pop("resourceVersion", None)
            prev = self._known.get(key)
            if prev == doc:
                return
            self._known[key] = doc
            self._queue.put(WatchEvent("MODIFIED" if prev is not None else "ADDED", kind, key[2], key[1], obj,
                                       _rev(rv)))

    def _handler(self, handler: _Kind, api: str, plural: str) -> Any:
        from kubeclient import key_of

        def on(typ: str, obj: dict, old: dict | None) -> None:
            src = (api, plural, key_of(obj))
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if typ == "DELETED":
                self._emit(handler.cls.KIND, src, None, rv)
                return
            self._emit(handler.cls.KIND, src, handler.convert(self.client, api, plural, obj), rv)

        return on

    def _start(self) -> None:
        from kubeclient import Informer

        for cls in self.classes:
            handler = self.client.kinds[cls.KIND]
            for obj in handler.static():
                self._emit(cls.KIND, ("", "static", obj.metadata.name), obj, 0)
            for api, plural in handler.sources:
                inf = Informer(self.client.kube, api, plural, retry_delay=self.retry_delay)
                inf.add_handler(self._handler(handler, api, plural))
                self._informers.append(inf)
        for inf in self._informers:
            inf.start()

        def synced() -> None:
            for inf in self._informers:
                while not inf.synced.wait(0.2):
                    if self.stop.is_set():
                        return
            rev = max((_rev(inf.resource_version) for inf in self._informers), default=0)
            self._queue.put(WatchEvent("SYNCED", "", "", None, None, rev))

        threading.Thread(target=synced, daemon=True, name="kdd-watch-synced").start()

    def __iter__(self) -> Iterator[WatchEvent]:
        self._start()
        try:
            while not self.stop.is_set():
                try:
                    ev = self._queue.get(timeout=0.5)
                except queue.Empty:
                    continue
                if ev is None:
                    return
                yield ev
        finally:
            for inf in self._informers:
                inf.stop(wait=0)


__all__ = ["KubeClient", "KubeWatchStream", "install_crds", "kube_config_from_env"]


def install_crds(kube: Any, timeout: float = 20.0, workers: int = 1) -> list[str]:
    """Create Calico's CRDs (:func:`datastore.crds.crd_definitions`) that are missing and wait
    until the API server serves them; returns the names created. For tests and tools; a
    cluster gets them from the install manifest.

    ``workers`` > 1 sends the creates (and the checks that each is served) that many at a
    time, one connection each: the lab's start-up installs them while the API server is still
    busy with its first clients, and one create after the other waited up to ~0.17 s each."""
    import time

    import kubeclient

    deadline = time.monotonic() + timeout

    def install(crd: dict) -> str | None:
        name = crd["metadata"]["name"]
        try:
            kube.create(crd, plural="customresourcedefinitions")
            made: str | None = name
        except kubeclient.AlreadyExists:
            made = None
        while True:
            try:
                kube.list(crds.API_VERSION, crd["spec"]["names"]["plural"], limit=1)
                return made
            except kubeclient.NotFound:
                if time.monotonic() > deadline:
                    raise errors.DatastoreError(f"the API server does not serve {name} after {timeout:.0f}s") \
                        from None
                time.sleep(0.05)

    defs = crds.crd_definitions()
    if workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="crd") as pool:
            results = list(pool.map(install, defs))
    else:
        results = [install(crd) for crd in defs]
    return [name for name in results if name is not None]
