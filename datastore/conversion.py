"""Kubernetes objects -> Calico objects, as libcalico-go's k8s ``conversion`` package (v3.28.1).

calico.md section 6: a Kubernetes NetworkPolicy becomes the Calico NetworkPolicy
``knp.default.<name>`` (order 1000, pod selectors with the orchestrator term,
ports unioned per protocol, one Allow rule per protocol and peer); a Namespace
becomes the Profile ``kns.<ns>`` (allow all, ``pcns.`` labels); a ServiceAccount
the Profile ``ksa.<ns>.<sa>`` (no rules, ``pcsa.`` labels); a Pod's labels, with
Calico's namespace/orchestrator/serviceaccount labels, are its WorkloadEndpoint's.

Inputs are Kubernetes objects as JSON (dicts), as the API serves them.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from datastore.resources import K8S_POLICY_PREFIX, Metadata, NetworkPolicy, Profile
from datastore.rules import EntityRule, PortRange, Rule, parse_port

NAMESPACE_PROFILE_PREFIX = "kns."
SERVICEACCOUNT_PROFILE_PREFIX = "ksa."
NAMESPACE_LABEL_PREFIX = "pcns."
SERVICEACCOUNT_LABEL_PREFIX = "pcsa."
NAME_LABEL = "projectcalico.org/name"
LABEL_NAMESPACE = "projectcalico.org/namespace"
LABEL_ORCHESTRATOR = "projectcalico.org/orchestrator"
LABEL_SERVICEACCOUNT = "projectcalico.org/serviceaccount"
ORCHESTRATOR_K8S = "k8s"
K8S_POLICY_ORDER = 1000


class ConversionError(ValueError):
    """A Kubernetes object could not be converted (the message says which part)."""


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    return obj.get("metadata") or {}


# ---------------------------------------------------------------------------
# profiles


def namespace_profile_name(namespace: str) -> str:
    return NAMESPACE_PROFILE_PREFIX + namespace


def serviceaccount_profile_name(namespace: str, sa: str) -> str:
    """``ksa.<ns>.<sa>`` (``serviceAccountNameToProfileName``)."""
    return f"{SERVICEACCOUNT_PROFILE_PREFIX}{namespace or 'default'}.{sa}"


def namespace_to_profile(ns: dict[str, Any]) -> Profile:
    """``NamespaceToProfile``: allow all both ways, ``pcns.`` labels plus ``pcns.projectcalico.org/name``."""
    md = _meta(ns)
    labels = {NAMESPACE_LABEL_PREFIX + k: v for k, v in (md.get("labels") or {}).items()}
    labels[NAMESPACE_LABEL_PREFIX + NAME_LABEL] = md["name"]
    prof = Profile(metadata=Metadata(name=namespace_profile_name(md["name"])))
    prof.spec.ingress = [Rule(action="Allow")]
    prof.spec.egress = [Rule(action="Allow")]
    prof.spec.labels_to_apply = labels
    return prof


def serviceaccount_to_profile(sa: dict[str, Any]) -> Profile:
    """``ServiceAccountToProfile``: no rules, ``pcsa.`` labels plus ``pcsa.projectcalico.org/name``."""
    md = _meta(sa)
    labels = {SERVICEACCOUNT_LABEL_PREFIX + k: v for k, v in (md.get("labels") or {}).items()}
    labels[SERVICEACCOUNT_LABEL_PREFIX + NAME_LABEL] = md["name"]
    prof = Profile(metadata=Metadata(name=serviceaccount_profile_name(md.get("namespace") or "default",
                                                                       md["name"])))
    prof.spec.labels_to_apply = labels
    return prof


# ---------------------------------------------------------------------------
# pods


def pod_labels(labels: dict[str, str] | None, namespace: str, service_account: str | None) -> dict[str, str]:
    """A pod's WorkloadEndpoint labels: its own plus Calico's namespace, orchestrator and
    (if shorter than 63 characters) service account labels."""
    out = dict(labels or {})
    out[LABEL_NAMESPACE] = namespace
    out[LABEL_ORCHESTRATOR] = ORCHESTRATOR_K8S
    if service_account and len(service_account) < 63:
        out[LABEL_SERVICEACCOUNT] = service_account
    return out


def pod_profiles(namespace: str, service_account: str | None) -> list[str]:
    """``kns.<ns>``, plus ``ksa.<ns>.<sa>`` when the pod has a service account."""
    out = [namespace_profile_name(namespace)]
    if service_account:
        out.append(serviceaccount_profile_name(namespace, service_account))
    return out


def pod_is_calico_endpoint(pod: dict[str, Any]) -> bool:
    """Scheduled, not host-networked, with an IP (kube-controllers' ``isReadyCalicoPod``)."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    return bool(spec.get("nodeName")) and not spec.get("hostNetwork") and bool(status.get("podIP"))


# ---------------------------------------------------------------------------
# NetworkPolicy


def k8s_selector(sel: dict[str, Any] | None, pod: bool) -> str:
    """``k8sSelectorToCalico``: matchLabels (sorted) and matchExpressions; pod selectors get
    ``projectcalico.org/orchestrator == 'k8s'`` first; an empty namespace selector is ``all()``."""
    parts = [f"{LABEL_ORCHESTRATOR} == '{ORCHESTRATOR_K8S}'"] if pod else []
    if sel is None:
        return " && ".join(parts)
    labels = sel.get("matchLabels") or {}
    exprs = sel.get("matchExpressions") or []
    if not pod and not labels and not exprs:
        return "all()"
    for k in sorted(labels):
        parts.append(f"{k} == '{labels[k]}'")
    for e in exprs:
        op, key, values = e.get("operator"), e.get("key"), "', '".join(e.get("values") or [])
        if op == "In":
            parts.append(f"{key} in {{ '{values}' }}")
        elif op == "NotIn":
            parts.append(f"{key} not in {{ '{values}' }}")
        elif op == "Exists":
            parts.append(f"has({key})")
        elif op == "DoesNotExist":
            parts.append(f"! has({key})")
        else:
            raise ConversionError(f"unknown label selector operator {op!r}")
    return " && ".join(parts)


def simplify_ports(ports: list[PortRange]) -> list[PortRange]:
    """``SimplifyPorts``: named ports kept, numbers merged into the fewest ranges."""
    if len(ports) <= 1:
        return ports
    named = [p for p in ports if p.name]
    nums = sorted({n for p in ports if not p.name for n in range(p.first, p.last + 1)})
    if len(nums) <= 1:
        return ports
    out = list(named)
    i = 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(PortRange(nums[i], nums[j]))
        i = j + 1
    return out


def _port_value(p: PortRange) -> int | str:
    """How Calico serialises a port: a number, ``"first:last"`` or the name."""
    if p.name:
        return p.name
    return p.first if p.first == p.last else f"{p.first}:{p.last}"


def _peer(peer: dict[str, Any] | None) -> tuple[str, str, list[str], list[str]]:
    """``k8sPeerToCalicoFields``: (selector, namespaceSelector, nets, notNets)."""
    if peer is None:
        return "", "", [], []
    block = peer.get("ipBlock")
    if block is not None:
        try:
            nets = [str(ipaddress.ip_network(block["cidr"], strict=False))]
            not_nets = [str(ipaddress.ip_network(c, strict=False)) for c in block.get("except") or []]
        except (KeyError, ValueError) as exc:
            raise ConversionError(f"ipBlock {block!r} is not valid: {exc}") from None
        return "", "", nets, not_nets
    return (k8s_selector(peer.get("podSelector"), pod=True),
            k8s_selector(peer.get("namespaceSelector"), pod=False), [], [])


def _rules(peers: list[dict[str, Any]] | None, ports: list[dict[str, Any]] | None, ingress: bool) -> list[Rule]:
    """``k8sRuleToCalico``: one Allow rule per protocol (sorted) and peer."""
    peer_list: list[dict[str, Any] | None] = list(peers or []) or [None]
    by_proto: dict[str, list[PortRange] | None] = {}
    for port in list(ports or []) or [None]:
        if port is None:
            by_proto = {"": None}
            break
        proto = str(port.get("protocol") or "TCP")
        value = port.get("port")
        if value is None:
            by_proto[proto] = None
            continue
        text = str(value)
        if port.get("endPort") is not None:
            text = f"{text}:{port['endPort']}"
        try:
            parsed = parse_port(text, "port")
        except ValueError as exc:
            raise ConversionError(f"invalid port {text!r}: {exc}") from None
        if proto not in by_proto or by_proto[proto]:
            by_proto[proto] = [*(by_proto.get(proto) or []), parsed]
    out = []
    for proto in sorted(by_proto):
        pr = by_proto[proto]
        port_values = [_port_value(p) for p in simplify_ports(pr)] if pr else []
        for peer in peer_list:
            sel, ns_sel, nets, not_nets = _peer(peer)
            entity = EntityRule(nets=nets, selector=sel, namespace_selector=ns_sel, not_nets=not_nets)
            rule = Rule(action="Allow", protocol=proto or None)
            if ingress:
                rule.source = entity
                rule.destination = EntityRule(ports=list(port_values))
            else:
                entity.ports = list(port_values)
                rule.destination = entity
            out.append(rule)
    return out


def k8s_policy_name(name: str) -> str:
    return K8S_POLICY_PREFIX + name


def k8s_networkpolicy_to_calico(np: dict[str, Any]) -> tuple[NetworkPolicy, list[str]]:
    """``K8sNetworkPolicyToCalico``: the Calico policy and the rules it had to drop (as messages)."""
    md = _meta(np)
    spec = np.get("spec") or {}
    problems: list[str] = []
    ingress: list[Rule] = []
    for i, r in enumerate(spec.get("ingress") or []):
        try:
            ingress += _rules(r.get("from"), r.get("ports"), True)
        except ConversionError as exc:
            problems.append(f"ingress[{i}]: {exc}")
    egress: list[Rule] = []
    for i, r in enumerate(spec.get("egress") or []):
        try:
            egress += _rules(r.get("to"), r.get("ports"), False)
        except ConversionError as exc:
            problems.append(f"egress[{i}]: {exc}")
    ptypes = spec.get("policyTypes") or []
    types = [t for t in ("Ingress", "Egress") if t in ptypes] or ["Ingress"]
    pol = NetworkPolicy(metadata=Metadata(name=k8s_policy_name(md["name"]), namespace=md.get("namespace") or "default"))
    pol.spec.order = K8S_POLICY_ORDER
    pol.spec.selector = k8s_selector(spec.get("podSelector") or {}, pod=True)
    pol.spec.ingress = ingress
    pol.spec.egress = egress
    pol.spec.types = types
    return pol, problems
