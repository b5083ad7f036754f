"""Kubernetes kinds of the testbed: their storage keys, schemas and validation.

Objects stay plain dicts in Kubernetes' own shape (apiVersion/kind/metadata/spec/status),
so what is stored, printed with ``-o yaml`` and read from a manifest is the same thing.
:func:`validate` checks a manifest against a small schema (unknown fields are errors)
plus the semantic rules of each kind, and fills the defaults the API server would.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from datastore.inventory import Support, works
from testbed.k8s.errors import Invalid


@dataclass(frozen=True)
class Kind:
    """One resource kind: API group/version, etcd prefix, names kubectl accepts."""

    kind: str
    api_version: str
    resource: str  # plural, as in error messages ("pods")
    prefix: str  # etcd key prefix under /registry/
    namespaced: bool
    aliases: tuple[str, ...]
    group_name: str  # for -o name: "pod", "deployment.apps"


KINDS: dict[str, Kind] = {
    k.kind: k
    for k in (
        Kind("Namespace", "v1", "namespaces", "namespaces", False, ("ns", "namespace", "namespaces"), "namespace"),
        Kind("Node", "v1", "nodes", "minions", False, ("no", "node", "nodes"), "node"),
        Kind("Pod", "v1", "pods", "pods", True, ("po", "pod", "pods"), "pod"),
        Kind("Deployment", "apps/v1", "deployments", "deployments", True,
             ("deploy", "deployment", "deployments", "deployment.apps", "deployments.apps"), "deployment.apps"),
        Kind("ReplicaSet", "apps/v1", "replicasets", "replicasets", True,
             ("rs", "replicaset", "replicasets", "replicaset.apps", "replicasets.apps"), "replicaset.apps"),
        Kind("DaemonSet", "apps/v1", "daemonsets", "daemonsets", True,
             ("ds", "daemonset", "daemonsets", "daemonset.apps", "daemonsets.apps"), "daemonset.apps"),
        Kind("Service", "v1", "services", "services/specs", True, ("svc", "service", "services"), "service"),
        Kind("Endpoints", "v1", "endpoints", "services/endpoints", True, ("ep", "endpoints", "endpoint"), "endpoints"),
        Kind("ConfigMap", "v1", "configmaps", "configmaps", True, ("cm", "configmap", "configmaps"), "configmap"),
        Kind("ServiceAccount", "v1", "serviceaccounts", "serviceaccounts", True,
             ("sa", "serviceaccount", "serviceaccounts"), "serviceaccount"),
        Kind("NetworkPolicy", "networking.k8s.io/v1", "networkpolicies", "networkpolicies", True,
             ("netpol", "networkpolicy", "networkpolicies", "networkpolicy.networking.k8s.io"),
             "networkpolicy.networking.k8s.io"),
    )
}

_ALIASES = {alias: k for k in KINDS.values() for alias in k.aliases}

#: Kubernetes kinds Calico acts on that calicolab does not (yet): the inventory lists them,
#: and kubectl prints the API server's ``Warning:`` for each one applied (docs/inventory.md).
CALICO_SUPPORT: dict[str, Support] = {
    "NetworkPolicy": works("tests/lab/test_policy_matrix.py::test_policy_matrix",
                           "tests/etcd/test_kubecontrollers_objects.py::"
                           "test_profiles_policies_and_endpoint_labels_follow_kubernetes",
                           note="kube-controllers' policy controller converts it to the Calico NetworkPolicy "
                                "knp.default.<name> (etcd mode); Felix enforces it (docs/policy.md)"),
}


def calico_warnings(kind: str, name: str) -> list[str]:
    """The warnings the API server returns for a ``kind`` object calicolab does not act on."""
    support = CALICO_SUPPORT.get(kind)
    if support is None or support.implemented:
        return []
    return [f"{kind} {name} has no effect in calicolab: {support.note} (see docs/inventory.md)"]

DEFAULT_NAMESPACE = "default"
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease", "calico-system")


def kind_for(name: str) -> Kind:
    """The kind a kubectl resource word names (``po``, ``pods``, ``Deployment``...)."""
    k = _ALIASES.get(name.lower()) or KINDS.get(name)
    if k is None:
        raise Invalid("", f'the server doesn\'t have a resource type "{name}"')
    return k


def registry_key(kind: str, name: str, namespace: str | None = None) -> str:
    """Where an object lives in etcd: ``/registry/<resource>/<namespace>/<name>``."""
    k = KINDS[kind]
    if k.namespaced:
        return f"/registry/{k.prefix}/{namespace or DEFAULT_NAMESPACE}/{name}"
    return f"/registry/{k.prefix}/{name}"


def registry_prefix(kind: str, namespace: str | None = None) -> str:
    """The etcd prefix listing every object of ``kind`` (in ``namespace`` if given)."""
    k = KINDS[kind]
    if k.namespaced and namespace:
        return f"/registry/{k.prefix}/{namespace}/"
    return f"/registry/{k.prefix}/"


def kind_of_key(key: str) -> str | None:
    """The kind stored at an etcd key, or None for keys that are not objects."""
    for k in KINDS.values():
        if key.startswith(f"/registry/{k.prefix}/"):
            return k.kind
    return None


# --- schemas -------------------------------------------------------------------------------
# A schema is: a type (str, int, bool, float), ANY, MAPSTR (string -> string),
# [schema] (a list of it), or a dict field -> schema (unknown fields rejected).

ANY = object()
MAPSTR = object()
INTSTR = object()

META = {
    "name": str, "generateName": str, "namespace": str, "labels": MAPSTR, "annotations": MAPSTR,
    "uid": str, "resourceVersion": str, "creationTimestamp": str, "generation": int,
    "deletionTimestamp": str, "deletionGracePeriodSeconds": int, "ownerReferences": [ANY],
    "finalizers": [str], "managedFields": [ANY], "selfLink": str,
}

CONTAINER = {
    "name": str, "image": str, "command": [str], "args": [str], "workingDir": str,
    "ports": [{"containerPort": int, "protocol": str, "name": str, "hostPort": int, "hostIP": str}],
    "env": [{"name": str, "value": str, "valueFrom": ANY}], "imagePullPolicy": str,
    "resources": ANY, "readinessProbe": ANY, "livenessProbe": ANY, "securityContext": ANY,
    "volumeMounts": [ANY], "stdin": bool, "tty": bool, "terminationMessagePath": str,
    "terminationMessagePolicy": str,
}

POD_SPEC = {
    "containers": [CONTAINER], "initContainers": [ANY], "nodeName": str, "nodeSelector": MAPSTR,
    "restartPolicy": str, "terminationGracePeriodSeconds": int, "tolerations": [ANY],
    "affinity": ANY, "hostNetwork": bool, "dnsPolicy": str, "schedulerName": str,
    "securityContext": ANY, "serviceAccountName": str, "serviceAccount": str, "volumes": [ANY],
    "hostname": str, "subdomain": str, "priority": int, "enableServiceLinks": bool,
    "preemptionPolicy": str,
}

SCHEMAS: dict[str, dict] = {
    "Namespace": {"spec": {"finalizers": [str]}, "status": ANY},
    "Node": {
        "spec": {"podCIDR": str, "podCIDRs": [str], "taints": [ANY], "unschedulable": bool, "providerID": str},
        "status": ANY,
    },
    "Pod": {"spec": POD_SPEC, "status": ANY},
    "Deployment": {
        "spec": {
            "replicas": int, "selector": {"matchLabels": MAPSTR, "matchExpressions": [ANY]},
            "template": {"metadata": META, "spec": POD_SPEC}, "strategy": ANY,
            "revisionHistoryLimit": int, "progressDeadlineSeconds": int, "minReadySeconds": int,
            "paused": bool,
        },
        "status": ANY,
    },
    "ReplicaSet": {
        "spec": {
            "replicas": int, "selector": {"matchLabels": MAPSTR, "matchExpressions": [ANY]},
            "template": {"metadata": META, "spec": POD_SPEC}, "minReadySeconds": int,
        },
        "status": ANY,
    },
    "DaemonSet": {
        "spec": {
            "selector": {"matchLabels": MAPSTR, "matchExpressions": [ANY]},
            "template": {"metadata": META, "spec": POD_SPEC}, "updateStrategy": ANY,
            "revisionHistoryLimit": int, "minReadySeconds": int,
        },
        "status": ANY,
    },
    "Service": {
        "spec": {
            "type": str, "clusterIP": str, "clusterIPs": [str], "selector": MAPSTR,
            "ports": [{"name": str, "protocol": str, "port": int, "targetPort": INTSTR, "nodePort": int,
                       "appProtocol": str}],
            "sessionAffinity": str, "ipFamilies": [str], "ipFamilyPolicy": str,
            "internalTrafficPolicy": str, "externalTrafficPolicy": str, "externalIPs": [str],
        },
        "status": ANY,
    },
    "Endpoints": {
        "subsets": [{
            "addresses": [{"ip": str, "nodeName": str, "hostname": str, "targetRef": ANY}],
            "notReadyAddresses": [{"ip": str, "nodeName": str, "hostname": str, "targetRef": ANY}],
            "ports": [{"name": str, "port": int, "protocol": str, "appProtocol": str}],
        }],
    },
    "ConfigMap": {"data": MAPSTR, "binaryData": MAPSTR, "immutable": bool},
    "ServiceAccount": {"secrets": [ANY], "imagePullSecrets": [ANY], "automountServiceAccountToken": bool},
    "NetworkPolicy": {
        "spec": {
            "podSelector": {"matchLabels": MAPSTR, "matchExpressions": [ANY]},
            "policyTypes": [str],
            "ingress": [{"from": [ANY], "ports": [{"protocol": str, "port": INTSTR, "endPort": int}]}],
            "egress": [{"to": [ANY], "ports": [{"protocol": str, "port": INTSTR, "endPort": int}]}],
        },
    },
}

_TYPE_NAMES = {str: "string", int: "integer", bool: "boolean", float: "number"}


def _check(value: Any, schema: Any, path: str, where: str) -> None:
    if schema is ANY:
        return
    if schema is MAPSTR:
        if not isinstance(value, dict):
            raise Invalid(path, f"expected a map of strings, got {type(value).__name__}", where)
        for k, v in value.items():
            if not isinstance(v, str):
                raise Invalid(f"{path}.{k}", f"expected a string, got {v!r} (quote it in YAML)", where)
        return
    if schema is INTSTR:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise Invalid(path, f"expected an integer or a string, got {value!r}", where)
        return
    if isinstance(schema, list):
        if not isinstance(value, list):
            raise Invalid(path, f"expected a list, got {type(value).__name__}", where)
        for i, item in enumerate(value):
            _check(item, schema[0], f"{path}[{i}]", where)
        return
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise Invalid(path, f"expected an object, got {type(value).__name__}", where)
        for k, v in value.items():
            sub = f"{path}.{k}" if path else k
            if k not in schema:
                raise Invalid(sub, f'unknown field "{k}"', where)
            if v is None:
                continue
            _check(v, schema[k], sub, where)
        return
    if schema is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise Invalid(path, f"expected an integer, got {value!r}", where)
    if schema is not int and not isinstance(value, schema):
        raise Invalid(path, f"expected a {_TYPE_NAMES[schema]}, got {value!r}", where)


_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_KEY_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")


def _check_name(name: Any, path: str, where: str, label: bool = False) -> None:
    if not isinstance(name, str) or not name:
        raise Invalid(path, "name is required", where)
    limit = 63 if label else 253
    rx = _DNS1123_LABEL if label else _DNS1123_SUBDOMAIN
    if len(name) > limit or not rx.match(name):
        kind = "DNS-1123 label" if label else "DNS-1123 subdomain"
        raise Invalid(path, f'Invalid value: "{name}": a lowercase RFC 1123 {kind} must consist of '
                      "lower case alphanumeric characters, '-' or '.', and must start and end "
                      "with an alphanumeric character", where)


def _check_labels(labels: dict[str, str] | None, path: str, where: str) -> None:
    for key, value in (labels or {}).items():
        name = key.rsplit("/", 1)[-1]
        if not name or len(name) > 63 or not _LABEL_KEY_NAME.match(name):
            raise Invalid(f"{path}", f'Invalid value: "{key}": not a valid label key', where)
        if len(value) > 63 or not _LABEL_VALUE.match(value):
            raise Invalid(f"{path}.{key}", f'Invalid value: "{value}": not a valid label value', where)


def _check_pod_spec(spec: dict, path: str, where: str) -> None:
    containers = spec.get("containers")
    if not containers:
        raise Invalid(f"{path}.containers", "Required value: at least one container", where)
    seen: set[str] = set()
    for i, c in enumerate(containers):
        cpath = f"{path}.containers[{i}]"
        _check_name(c.get("name"), f"{cpath}.name", where, label=True)
        if c["name"] in seen:
            raise Invalid(f"{cpath}.name", f'Duplicate value: "{c["name"]}"', where)
        seen.add(c["name"])
        if not c.get("image"):
            raise Invalid(f"{cpath}.image", "Required value", where)
        for j, p in enumerate(c.get("ports") or []):
            port = p.get("containerPort")
            if not isinstance(port, int) or not 1 <= port <= 65535:
                raise Invalid(f"{cpath}.ports[{j}].containerPort",
                              f"Invalid value: {port!r}: must be between 1 and 65535", where)
            p.setdefault("protocol", "TCP")
    policy = spec.setdefault("restartPolicy", "Always")
    if policy not in ("Always", "OnFailure", "Never"):
        raise Invalid(f"{path}.restartPolicy", f'Unsupported value: "{policy}": supported values: '
                      '"Always", "OnFailure", "Never"', where)
    if spec.get("nodeName"):
        _check_name(spec["nodeName"], f"{path}.nodeName", where)


def _selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def validate(obj: Any, where: str = "") -> dict:
    """Check a manifest and return it with the API server's defaults filled in.

    Raises :class:`Invalid` naming the bad field (``spec.containers[0].image``) and,
    when given, ``where`` (the file it came from).
    """
    if not isinstance(obj, dict):
        raise Invalid("", f"expected a Kubernetes object (a mapping), got {type(obj).__name__}", where)
    kind = obj.get("kind")
    if not kind:
        raise Invalid("kind", "Object 'Kind' is missing", where)
    if kind not in KINDS:
        raise Invalid("kind", f'no matches for kind "{kind}" (supported: {", ".join(KINDS)})', where)
    k = KINDS[kind]
    api = obj.get("apiVersion")
    if api != k.api_version:
        raise Invalid("apiVersion", f'kind {kind} needs apiVersion "{k.api_version}", got {api!r}', where)
    schema = {"apiVersion": str, "kind": str, "metadata": META, **SCHEMAS[kind]}
    _check(obj, schema, "", where)
    meta = obj.setdefault("metadata", {}) or {}
    obj["metadata"] = meta
    _check_name(meta.get("name"), "metadata.name", where, label=kind in ("Service", "Namespace"))
    if k.namespaced:
        ns = meta.setdefault("namespace", DEFAULT_NAMESPACE)
        _check_name(ns, "metadata.namespace", where, label=True)
    elif meta.get("namespace"):
        meta.pop("namespace")
    _check_labels(meta.get("labels"), "metadata.labels", where)
    spec = obj.get("spec") or {}
    if kind == "Pod":
        if "spec" not in obj:
            raise Invalid("spec", "Required value", where)
        _check_pod_spec(spec, "spec", where)
    elif kind in ("Deployment", "ReplicaSet", "DaemonSet"):
        _validate_deployment(obj, where)
    elif kind == "Service":
        _validate_service(obj, where)
    elif kind == "Endpoints":
        for i, subset in enumerate(obj.get("subsets") or []):
            for j, addr in enumerate((subset.get("addresses") or []) + (subset.get("notReadyAddresses") or [])):
                _check_ip(addr.get("ip"), f"subsets[{i}].addresses[{j}].ip", where)
    elif kind == "NetworkPolicy":
        _validate_network_policy(obj, where)
    elif kind == "Node":
        for field in ("podCIDR",):
            if spec.get(field):
                _check_cidr(spec[field], f"spec.{field}", where)
    return obj


def _check_ip(value: Any, path: str, where: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise Invalid(path, f'Invalid value: "{value}": must be a valid IP address', where) from None


def _check_cidr(value: Any, path: str, where: str) -> None:
    try:
        ipaddress.ip_network(value)
    except ValueError:
        raise Invalid(path, f'Invalid value: "{value}": must be a valid CIDR', where) from None


def _validate_deployment(obj: dict, where: str) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise Invalid("spec", "Required value", where)
    replicas = spec.setdefault("replicas", 1) if obj["kind"] != "DaemonSet" else 0
    if replicas < 0:
        raise Invalid("spec.replicas", f"Invalid value: {replicas}: must be greater than or equal to 0", where)
    selector = (spec.get("selector") or {}).get("matchLabels")
    if not selector:
        raise Invalid("spec.selector", "Required value (spec.selector.matchLabels)", where)
    template = spec.get("template")
    if not template or not template.get("spec"):
        raise Invalid("spec.template.spec", "Required value", where)
    labels = (template.get("metadata") or {}).get("labels") or {}
    _check_labels(labels, "spec.template.metadata.labels", where)
    if not _selector_matches(selector, labels):
        raise Invalid("spec.template.metadata.labels",
                      f"Invalid value: {labels}: `selector` does not match template `labels`", where)
    _check_pod_spec(template["spec"], "spec.template.spec", where)
    if obj["kind"] == "Deployment":
        spec.setdefault("strategy", {"type": "RollingUpdate"})
    elif obj["kind"] == "DaemonSet":
        spec.setdefault("updateStrategy", {"type": "RollingUpdate"})


def _validate_service(obj: dict, where: str) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise Invalid("spec", "Required value", where)
    stype = spec.setdefault("type", "ClusterIP")
    if stype != "ClusterIP":
        raise Invalid("spec.type", f'Unsupported value: "{stype}": the testbed supports "ClusterIP" only', where)
    ports = spec.get("ports") or []
    if not ports:
        raise Invalid("spec.ports", "Required value", where)
    names: set[str] = set()
    for i, p in enumerate(ports):
        port = p.get("port")
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise Invalid(f"spec.ports[{i}].port", f"Invalid value: {port!r}: must be between 1 and 65535", where)
        proto = p.setdefault("protocol", "TCP")
        if proto not in ("TCP", "UDP", "SCTP"):
            raise Invalid(f"spec.ports[{i}].protocol", f'Unsupported value: "{proto}"', where)
        if len(ports) > 1 and not p.get("name"):
            raise Invalid(f"spec.ports[{i}].name", "Required value (when more than one port)", where)
        if p.get("name"):
            if p["name"] in names:
                raise Invalid(f"spec.ports[{i}].name", f'Duplicate value: "{p["name"]}"', where)
            names.add(p["name"])
        p.setdefault("targetPort", port)
    cip = spec.get("clusterIP")
    if cip and cip != "None":
        _check_ip(cip, "spec.clusterIP", where)
    _check_labels(spec.get("selector"), "spec.selector", where)
    spec.setdefault("sessionAffinity", "None")


def _validate_network_policy(obj: dict, where: str) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict) or "podSelector" not in spec:
        raise Invalid("spec.podSelector", "Required value", where)
    spec["podSelector"] = spec["podSelector"] or {}
    types = spec.get("policyTypes")
    if types is None:  # the API server's default
        types = ["Ingress"] + (["Egress"] if spec.get("egress") else [])
        spec["policyTypes"] = types
    for i, t in enumerate(types):
        if t not in ("Ingress", "Egress"):
            raise Invalid(f"spec.policyTypes[{i}]", f'Unsupported value: "{t}": supported values: "Ingress", "Egress"',
                          where)
    for direction in ("ingress", "egress"):
        for i, rule in enumerate(spec.get(direction) or []):
            for j, port in enumerate(rule.get("ports") or []):
                proto = port.setdefault("protocol", "TCP")
                if proto not in ("TCP", "UDP", "SCTP"):
                    raise Invalid(f"spec.{direction}[{i}].ports[{j}].protocol", f'Unsupported value: "{proto}"', where)


def selector_matches(selector: dict[str, str] | None, labels: dict[str, str] | None) -> bool:
    """Equality-based label selector match (an empty selector matches nothing for Services)."""
    if not selector:
        return False
    return _selector_matches(selector, labels or {})


def parse_label_selector(text: str) -> list[tuple[str, str, str | None]]:
    """Parse kubectl's ``-l`` syntax (``a=b,c!=d,e,!f``) into (key, op, value) terms."""
    terms: list[tuple[str, str, str | None]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "!=" in part:
            k, v = part.split("!=", 1)
            terms.append((k.strip(), "!=", v.strip()))
        elif "==" in part:
            k, v = part.split("==", 1)
            terms.append((k.strip(), "=", v.strip()))
        elif "=" in part:
            k, v = part.split("=", 1)
            terms.append((k.strip(), "=", v.strip()))
        elif part.startswith("!"):
            terms.append((part[1:].strip(), "!", None))
        else:
            terms.append((part, "exists", None))
    for k, _, _ in terms:
        if not k:
            raise Invalid("selector", f'unable to parse requirement in "{text}"')
    return terms


def label_selector_matches(terms: list[tuple[str, str, str | None]], labels: dict[str, str] | None) -> bool:
    """True when ``labels`` satisfy every term of a parsed ``-l`` selector."""
    labels = labels or {}
    for key, op, value in terms:
        if op == "=" and labels.get(key) != value:
            return False
        if op == "!=" and labels.get(key) == value:
            return False
        if op == "exists" and key not in labels:
            return False
        if op == "!" and key in labels:
            return False
    return True
