"""Felix's policy model (pure): Calico v3 policies and profiles as Felix's calculation sees them.

Two steps, as in Calico:

1. The syncer's update processors (``libcalico-go/lib/backend/syncersv1/
   updateprocessors``) turn a v3 NetworkPolicy / GlobalNetworkPolicy / Profile
   into Felix's v1 model: the policy ID (``<ns>/<stored name>`` or ``<stored name>``),
   the policy selector with its namespace and service-account terms, and rule
   selectors that fold in namespaceSelector (``pcns.`` labels), serviceAccounts
   (``pcsa.`` labels) and the policy's own namespace (calico.md section 6).
2. The rule scanner (``felix/calc/rule_scanner.go``) turns each rule's selectors
   and named ports into ipset IDs: ``s:<hash>`` for a selector, ``n:<hash>`` for
   a named port, after folding negated selectors into a positive one where there
   is one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from datastore.rules import PortRange, parse_port
from datastore.selector import make_unique_id, normalise, parse_selector

NAMESPACE_LABEL = "projectcalico.org/namespace"
SERVICEACCOUNT_LABEL = "projectcalico.org/serviceaccount"
ORCHESTRATOR_LABEL = "projectcalico.org/orchestrator"
NAMESPACE_PREFIX = "pcns."
SERVICEACCOUNT_PREFIX = "pcsa."
NAME_LABEL = "projectcalico.org/name"


@dataclass(frozen=True)
class Rule:
    """A rule in Felix's v1 model (``model.Rule``) with combined selectors."""

    action: str = "allow"  # allow | deny | log | next-tier
    ip_version: int | None = None
    protocol: str | int | None = None  # v1: lower-case name or number
    not_protocol: str | int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    not_icmp_type: int | None = None
    not_icmp_code: int | None = None
    src_nets: tuple[str, ...] = ()
    not_src_nets: tuple[str, ...] = ()
    dst_nets: tuple[str, ...] = ()
    not_dst_nets: tuple[str, ...] = ()
    src_selector: str = ""
    not_src_selector: str = ""
    dst_selector: str = ""
    not_dst_selector: str = ""
    src_ports: tuple[PortRange, ...] = ()
    not_src_ports: tuple[PortRange, ...] = ()
    dst_ports: tuple[PortRange, ...] = ()
    not_dst_ports: tuple[PortRange, ...] = ()
    src_service: str = ""  # "<ns>/<name>"
    dst_service: str = ""
    annotations: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Policy:
    """A policy as Felix holds it (``model.Policy``), keyed by its ID."""

    id: str
    selector: str
    order: float | None = None
    types: tuple[str, ...] = ("ingress",)
    inbound: tuple[Rule, ...] = ()
    outbound: tuple[Rule, ...] = ()
    namespace: str = ""
    apply_on_forward: bool = False
    do_not_track: bool = False
    pre_dnat: bool = False

    def governs(self, direction: str) -> bool:
        """Whether the policy applies to ``ingress``/``egress`` (no types: both, for compatibility)."""
        return not self.types or direction in self.types

    def sort_key(self) -> tuple[int, float, str]:
        """Felix's PolKVLess: by order (none = last), then by ID."""
        return (1, 0.0, self.id) if self.order is None else (0, float(self.order), self.id)


@dataclass(frozen=True)
class Profile:
    """A profile: its rules and the labels it gives its endpoints."""

    name: str
    inbound: tuple[Rule, ...] = ()
    outbound: tuple[Rule, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)


def drop_profile(name: str) -> Profile:
    """Felix's default-drop profile for a profile an endpoint names but that does not exist."""
    return Profile(name, (Rule(action="deny"),), (Rule(action="deny"),))


# ---------------------------------------------------------------------------
# update processors: v3 -> v1


def _prefixed(text: str, prefix: str) -> str:
    return parse_selector(text).with_prefix(prefix).canonical()


def _prefix_and_append(current: str, new: str, prefix: str) -> str:
    """``prefixAndAppendSelector``."""
    if not new:
        return current
    pre = _prefixed(new, prefix)
    return f"({current}) && {pre}" if current else pre


def service_account_selector(names: list[str], selector: str) -> str:
    """``parseServiceAccounts``: ``pcsa.``-prefixed selector AND serviceaccount in {names}."""
    updated = _prefixed(selector, SERVICEACCOUNT_PREFIX) if selector else ""
    if not names:
        return updated
    joined = "', '".join(names)
    sel = parse_selector(f"{SERVICEACCOUNT_LABEL} in {{ '{joined}' }}").canonical()
    return f"({updated}) && ({sel})" if updated else sel


def entity_selector(er: Any, namespace: str) -> str:
    """``GetEntityRuleSelector``: the one selector an EntityRule's selector fields add up to."""
    sa = ""
    if er.service_accounts is not None:
        sa = service_account_selector(list(er.service_accounts.names), er.service_accounts.selector)
    ns_sel = ""
    if er.namespace_selector:
        ns_sel = _prefixed(er.namespace_selector, NAMESPACE_PREFIX)
        ns_sel = ns_sel.replace("all()", f"has({NAMESPACE_LABEL})")
        ns_sel = ns_sel.replace("global()", f"!has({NAMESPACE_LABEL})")
    elif namespace:
        ns_sel = f"{NAMESPACE_LABEL} == '{namespace}'"
    parts = [s for s in (sa, er.selector) if s]
    selector = parts[0] if len(parts) == 1 else ("(" + ") && (".join(parts) + ")" if parts else "")
    if ns_sel and (selector or er.not_selector or er.namespace_selector):
        selector = f"({ns_sel}) && ({selector})" if selector else ns_sel
    return selector


def _v1_protocol(p: int | str | None) -> str | int | None:
    if p is None:
        return None
    if isinstance(p, int):
        return p
    text = str(p)
    return int(text) if text.isdigit() else text.lower()


def _nets(nets: list[str]) -> tuple[str, ...]:
    out = []
    for n in nets:
        try:
            out.append(str(ipaddress.ip_network(n, strict=False)))
        except ValueError:
            continue
    return tuple(out)


def _ports(ports: list[int | str]) -> tuple[PortRange, ...]:
    return tuple(parse_port(p, "port") for p in ports)


def _service(svc: Any) -> str:
    if svc is None:
        return ""
    return f"{svc.namespace}/{svc.name}"


def rule_from_v3(r: Any, namespace: str) -> Rule:
    """``RuleAPIV2ToBackend``."""
    action = "next-tier" if r.action == "Pass" else r.action.lower()
    icmp, nicmp = r.icmp, r.not_icmp
    return Rule(
        action=action,
        ip_version=r.ip_version,
        protocol=_v1_protocol(r.protocol),
        not_protocol=_v1_protocol(r.not_protocol),
        icmp_type=icmp.type if icmp else None,
        icmp_code=icmp.code if icmp else None,
        not_icmp_type=nicmp.type if nicmp else None,
        not_icmp_code=nicmp.code if nicmp else None,
        src_nets=_nets(r.source.nets),
        not_src_nets=_nets(r.source.not_nets),
        dst_nets=_nets(r.destination.nets),
        not_dst_nets=_nets(r.destination.not_nets),
        src_selector=entity_selector(r.source, namespace),
        not_src_selector=r.source.not_selector,
        dst_selector=entity_selector(r.destination, namespace),
        not_dst_selector=r.destination.not_selector,
        src_ports=_ports(r.source.ports),
        not_src_ports=_ports(r.source.not_ports),
        dst_ports=_ports(r.destination.ports),
        not_dst_ports=_ports(r.destination.not_ports),
        src_service=_service(r.source.services),
        dst_service=_service(r.destination.services),
        annotations=tuple(sorted((r.metadata.annotations or {}).items())) if r.metadata else (),
    )


def policy_from_resource(obj: Any) -> Policy:
    """A NetworkPolicy or GlobalNetworkPolicy resource as Felix's policy (its update processor)."""
    spec = obj.spec
    stored = obj.storage_name()
    if obj.NAMESPACED:
        ns = obj.metadata.namespace or "default"
        pid = f"{ns}/{stored}"
        sel = spec.selector
        ns_sel = f"{NAMESPACE_LABEL} == '{ns}'"
        sel = ns_sel if not sel else f"({sel}) && {ns_sel}"
        sel = _prefix_and_append(sel, spec.service_account_selector, SERVICEACCOUNT_PREFIX)
        apply_on_forward, dnt, pre_dnat = True, False, False
    else:
        ns = ""
        pid = stored
        sel = spec.selector
        if spec.namespace_selector:
            sel = _prefix_and_append(sel, spec.namespace_selector, NAMESPACE_PREFIX)
            sel = sel.replace("all()", f"has({NAMESPACE_LABEL})")
        if spec.service_account_selector:
            sel = _prefix_and_append(sel, spec.service_account_selector, SERVICEACCOUNT_PREFIX)
            sel = sel.replace("all()", f"has({SERVICEACCOUNT_LABEL})")
        apply_on_forward, dnt, pre_dnat = spec.apply_on_forward, spec.do_not_track, spec.pre_dnat
    return Policy(
        id=pid,
        selector=normalise(sel),
        order=spec.order,
        types=tuple(t.lower() for t in spec.types),
        inbound=tuple(rule_from_v3(r, ns) for r in spec.ingress),
        outbound=tuple(rule_from_v3(r, ns) for r in spec.egress),
        namespace=ns,
        apply_on_forward=apply_on_forward,
        do_not_track=dnt,
        pre_dnat=pre_dnat,
    )


def profile_from_resource(obj: Any) -> Profile:
    """A Profile resource as Felix's profile (rules and labelsToApply)."""
    spec = obj.spec
    return Profile(obj.metadata.name,
                   tuple(rule_from_v3(r, "") for r in spec.ingress),
                   tuple(rule_from_v3(r, "") for r in spec.egress),
                   dict(spec.labels_to_apply or {}))


# ---------------------------------------------------------------------------
# rule scanner: selectors and named ports -> ipsets


@dataclass(frozen=True)
class IPSetSpec:
    """An ipset a rule needs: endpoints (and network sets) matching ``selector``, or, for a
    named port, ``ip,proto:port`` of matching endpoints that have a port of that name."""

    uid: str
    selector: str  # canonical
    named_port: str = ""
    protocol: str = ""  # tcp | udp | sctp, for named ports
    service: str = ""

    @property
    def ipset_type(self) -> str:
        return "hash:ip,port" if (self.named_port or self.service) else "hash:net"


@dataclass(frozen=True)
class ParsedRule:
    """A rule with its selectors replaced by ipset IDs (``calc.ParsedRule`` / ``proto.Rule``)."""

    action: str
    ip_version: int | None
    protocol: str | int | None
    not_protocol: str | int | None
    icmp_type: int | None
    icmp_code: int | None
    not_icmp_type: int | None
    not_icmp_code: int | None
    src_nets: tuple[str, ...]
    not_src_nets: tuple[str, ...]
    dst_nets: tuple[str, ...]
    not_dst_nets: tuple[str, ...]
    src_ports: tuple[PortRange, ...]
    not_src_ports: tuple[PortRange, ...]
    dst_ports: tuple[PortRange, ...]
    not_dst_ports: tuple[PortRange, ...]
    src_ipset_ids: tuple[str, ...]
    not_src_ipset_ids: tuple[str, ...]
    dst_ipset_ids: tuple[str, ...]
    not_dst_ipset_ids: tuple[str, ...]
    src_named_port_ids: tuple[str, ...]
    not_src_named_port_ids: tuple[str, ...]
    dst_named_port_ids: tuple[str, ...]
    not_dst_named_port_ids: tuple[str, ...]
    dst_ipport_ids: tuple[str, ...]
    annotations: tuple[tuple[str, str], ...]


def _combine(positive: str, negated: str) -> tuple[str, str]:
    """``combineMatchesIfPossible``: fold the negated selector into the positive one."""
    if positive and negated:
        return f"({positive}) && (!({negated}))", ""
    return positive, negated


def _named_port_proto(protocol: str | int | None) -> str:
    if protocol in ("udp", 17):
        return "udp"
    if protocol in ("sctp", 132):
        return "sctp"
    return "tcp"


def _selector_set(text: str) -> IPSetSpec:
    sel = parse_selector(text)
    return IPSetSpec(sel.unique_id(), sel.canonical())


def _named_port_set(text: str, port: str, proto: str) -> IPSetSpec:
    sel = parse_selector(text or "all()")
    uid = make_unique_id("n", f"{sel.unique_id()},{proto},{port}")
    return IPSetSpec(uid, sel.canonical(), named_port=port, protocol=proto)


@lru_cache(maxsize=65536)
def parse_rule(rule: Rule) -> tuple[ParsedRule, tuple[IPSetSpec, ...]]:
    """``ruleToParsedRule``: the rule with ipset IDs, and every ipset it needs."""
    src, not_src = _combine(rule.src_selector, rule.not_src_selector)
    dst, not_dst = _combine(rule.dst_selector, rule.not_dst_selector)
    proto = _named_port_proto(rule.protocol)

    def split(ports: tuple[PortRange, ...]) -> tuple[tuple[PortRange, ...], tuple[str, ...]]:
        return tuple(p for p in ports if not p.name), tuple(p.name for p in ports if p.name)

    src_num, src_named = split(rule.src_ports)
    dst_num, dst_named = split(rule.dst_ports)
    nsrc_num, nsrc_named = split(rule.not_src_ports)
    ndst_num, ndst_named = split(rule.not_dst_ports)
    src_np = [_named_port_set(src, n, proto) for n in src_named]
    dst_np = [_named_port_set(dst, n, proto) for n in dst_named]
    nsrc_np = [_named_port_set(src, n, proto) for n in nsrc_named]
    ndst_np = [_named_port_set(dst, n, proto) for n in ndst_named]
    # a positive selector needs its own set only if some port is numeric or none is named
    src_sets = [_selector_set(src)] if src and (src_num or not src_named) else []
    dst_sets = [_selector_set(dst)] if dst and (dst_num or not dst_named) else []
    ipport: list[IPSetSpec] = []
    if rule.dst_service:
        ipport.append(IPSetSpec(make_unique_id("svc", rule.dst_service), "", service=rule.dst_service))
    if rule.src_service:
        src_sets.append(IPSetSpec(make_unique_id("svcnoport", rule.src_service), "", service=rule.src_service))
    nsrc_sets = [_selector_set(not_src)] if not_src else []
    ndst_sets = [_selector_set(not_dst)] if not_dst else []

    def ids(sets: list[IPSetSpec]) -> tuple[str, ...]:
        return tuple(s.uid for s in sets)

    parsed = ParsedRule(
        action=rule.action, ip_version=rule.ip_version, protocol=rule.protocol, not_protocol=rule.not_protocol,
        icmp_type=rule.icmp_type, icmp_code=rule.icmp_code, not_icmp_type=rule.not_icmp_type,
        not_icmp_code=rule.not_icmp_code,
        src_nets=rule.src_nets, not_src_nets=rule.not_src_nets, dst_nets=rule.dst_nets,
        not_dst_nets=rule.not_dst_nets,
        src_ports=src_num, not_src_ports=nsrc_num, dst_ports=dst_num, not_dst_ports=ndst_num,
        src_ipset_ids=ids(src_sets), not_src_ipset_ids=ids(nsrc_sets), dst_ipset_ids=ids(dst_sets),
        not_dst_ipset_ids=ids(ndst_sets),
        src_named_port_ids=ids(src_np), not_src_named_port_ids=ids(nsrc_np), dst_named_port_ids=ids(dst_np),
        not_dst_named_port_ids=ids(ndst_np), dst_ipport_ids=ids(ipport),
        annotations=rule.annotations,
    )
    every = src_np + dst_np + nsrc_np + ndst_np + src_sets + dst_sets + ipport + nsrc_sets + ndst_sets
    return parsed, tuple(every)


def ipsets_of(rules: tuple[Rule, ...]) -> dict[str, IPSetSpec]:
    """Every ipset the rules need, by uid."""
    out: dict[str, IPSetSpec] = {}
    for r in rules:
        for spec in parse_rule(r)[1]:
            out[spec.uid] = spec
    return out
