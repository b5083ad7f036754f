"""What the plugin reads about the pod from the Kubernetes API, and Calico's use of it.

Calico's plugin GETs the Pod (and its Namespace) for labels, service account, ports
and the ``cni.projectcalico.org/*`` annotations, through the Kubernetes API with the
netconf's ``kubernetes.kubeconfig`` (in both datastores, as calico.yaml and
calico-etcd.yaml configure it); the API server's own etcd keys are never read. The parsing
and the rules (labels, profiles, pool/IP annotations with pod > namespace > netconf
precedence) are pure functions.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any

from cni.spec import E_INVALID_CONFIG, CNIError
from datastore.inventory import Support, findings, missing, works

ANN_IPV4POOLS = "cni.projectcalico.org/ipv4pools"
ANN_IPADDRS = "cni.projectcalico.org/ipAddrs"
ANN_HWADDR = "cni.projectcalico.org/hwAddr"

_T_PLUGIN = "tests/netns/test_cni_plugin.py::"
#: The pod (and namespace) annotations Calico's CNI plugin reads (calico.md section 1), with
#: what calicolab does with each; ADD refuses one it cannot honour, naming it.
ANNOTATIONS: dict[str, Support] = {
    ANN_IPV4POOLS: works("tests/unit/test_cni_k8s.py::test_pool_precedence_pod_over_namespace_over_netconf",
                         _T_PLUGIN + "test_pod_labels_ports_and_annotations_from_the_kubernetes_store"),
    "cni.projectcalico.org/ipv6pools": missing("IPv6 is not implemented: calicolab is IPv4 only",
                                               sample='["fd00:10::/64"]'),
    ANN_IPADDRS: works("tests/unit/test_cni_k8s.py::test_ip_addrs_annotation",
                       _T_PLUGIN + "test_pod_labels_ports_and_annotations_from_the_kubernetes_store"),
    "cni.projectcalico.org/ipAddrsNoIpam": missing("addresses outside IPAM are not implemented",
                                                   sample='["10.9.9.9"]'),
    "cni.projectcalico.org/floatingIPs": missing("floating IPs are not implemented", sample='["203.0.113.9"]'),
    ANN_HWADDR: works(_T_PLUGIN + "test_pod_labels_ports_and_annotations_from_the_kubernetes_store"),
    "cni.projectcalico.org/allowedSourcePrefixes": missing("Felix renders no cali-rpf-skip exceptions",
                                                           sample='["10.0.0.0/8"]'),
}


def refuse_unimplemented(pod_ann: dict[str, str], ns_ann: dict[str, str] | None = None) -> None:
    """ADD's refusal of an annotation calicolab cannot honour (error naming it)."""
    for where, ann in (("pod", pod_ann), ("namespace", ns_ann or {})):
        for f in findings(where, {k: v for k, v in ann.items() if k in ANNOTATIONS}, ANNOTATIONS,
                          roots=tuple(k for k in ann if k in ANNOTATIONS)):
            raise CNIError(E_INVALID_CONFIG, f"{where} annotation {f.path} is not supported by calicolab: "
                                             f"{f.support.note} (docs/inventory.md)")


@dataclass
class PodInfo:
    """The parts of a Pod Calico uses."""

    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    service_account: str = ""
    ports: list[dict[str, Any]] = field(default_factory=list)  # {name, protocol, port}


def parse_pod(doc: dict[str, Any]) -> PodInfo:
    """Extract labels, annotations, service account and named container ports from Pod JSON."""
    meta = doc.get("metadata") or {}
    spec = doc.get("spec") or {}
    ports = []
    for c in spec.get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") and p.get("containerPort"):
                ports.append({"name": p["name"], "protocol": (p.get("protocol") or "TCP"),
                              "port": int(p["containerPort"])})
    return PodInfo(labels=dict(meta.get("labels") or {}), annotations=dict(meta.get("annotations") or {}),
                   service_account=spec.get("serviceAccountName") or spec.get("serviceAccount") or "",
                   ports=ports)


def get_pod(kube: Any, namespace: str, name: str) -> dict[str, Any] | None:
    """The Pod through the Kubernetes API (``kube``: a :class:`kubeclient.Client`), or None."""
    import kubeclient

    try:
        return kube.get("v1", "pods", name, namespace)
    except kubeclient.NotFound:
        return None
    except kubeclient.KubeError as exc:
        from datastore import errors

        raise errors.DatastoreUnavailable(f"cannot read pod {namespace}/{name} from the Kubernetes API: {exc}") \
            from None


def get_namespace_annotations(kube: Any, namespace: str) -> dict[str, str]:
    """Annotations of the Namespace through the Kubernetes API (empty if none)."""
    import kubeclient

    try:
        ns = kube.get("v1", "namespaces", namespace)
    except kubeclient.NotFound:
        return {}
    except kubeclient.KubeError as exc:
        from datastore import errors

        raise errors.DatastoreUnavailable(f"cannot read namespace {namespace} from the Kubernetes API: {exc}") \
            from None
    return dict((ns.get("metadata") or {}).get("annotations") or {})


def wep_labels(pod: PodInfo | None, namespace: str) -> dict[str, str]:
    """WorkloadEndpoint labels: the pod's plus Calico's namespace/orchestrator/serviceaccount."""
    from datastore.conversion import pod_labels

    return pod_labels(pod.labels if pod else {}, namespace, pod.service_account if pod else None)


def profiles(namespace: str, pod: PodInfo | None) -> list[str]:
    """``kns.<ns>`` plus ``ksa.<ns>.<sa>`` when the pod has a service account."""
    from datastore.conversion import pod_profiles

    return pod_profiles(namespace, pod.service_account if pod else None)


def _json_list(value: str, what: str) -> list[str]:
    try:
        items = json.loads(value)
    except ValueError:
        raise CNIError(E_INVALID_CONFIG, f"annotation {what} is not a JSON list: {value!r}") from None
    if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
        raise CNIError(E_INVALID_CONFIG, f"annotation {what} must be a JSON list of strings, got {value!r}")
    return items


def requested_pools(pod_ann: dict[str, str], ns_ann: dict[str, str], netconf_pools: list[str]) -> list[str]:
    """Pools to allocate from: pod annotation > namespace annotation > netconf (> all: [])."""
    if ANN_IPV4POOLS in pod_ann:
        return _json_list(pod_ann[ANN_IPV4POOLS], ANN_IPV4POOLS)
    if ANN_IPV4POOLS in ns_ann:
        return _json_list(ns_ann[ANN_IPV4POOLS], ANN_IPV4POOLS)
    return list(netconf_pools)


def requested_ips(pod_ann: dict[str, str]) -> list[str]:
    """Specific IPv4 addresses asked for with ``cni.projectcalico.org/ipAddrs`` (validated)."""
    if ANN_IPADDRS not in pod_ann:
        return []
    ips = _json_list(pod_ann[ANN_IPADDRS], ANN_IPADDRS)
    for ip in ips:
        try:
            ipaddress.IPv4Address(ip)
        except ValueError:
            raise CNIError(E_INVALID_CONFIG, f"annotation {ANN_IPADDRS}: {ip!r} is not an IPv4 address") from None
    return ips
