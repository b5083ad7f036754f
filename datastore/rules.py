"""Calico v3 policy rules: ``Rule``, ``EntityRule`` and friends, with Calico's validation.

Shapes follow ``api/pkg/apis/projectcalico/v3/policy_common.go`` (v3.28.1);
the checks follow ``libcalico-go/lib/validator/v3/validator.go``
(``validateRule``, ``validateEntityRule``, ``validatePort``, ``validateProtocol``,
``validateICMPFields``). Every error names the field path, e.g.
``NetworkPolicy(default/p).spec.ingress[0].destination.ports[1]``.

Ports are numbers (``80``), ranges (``"8000:8080"``) or named ports (``"http"``);
protocols are ``TCP``, ``UDP``, ``ICMP``, ``ICMPv6``, ``SCTP``, ``UDPLite`` or a
number 1-255, as Calico's API spells them.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from datastore.codec import jfield, struct_field
from datastore.errors import ValidationError

ACTIONS = ("Allow", "Deny", "Log", "Pass")
PROTOCOL_NAMES = ("TCP", "UDP", "ICMP", "ICMPv6", "SCTP", "UDPLite")
#: protocol numbers of the names (for numeric comparisons)
PROTOCOL_NUMBERS = {"TCP": 6, "UDP": 17, "ICMP": 1, "ICMPv6": 58, "SCTP": 132, "UDPLite": 136}
POLICY_TYPES = ("Ingress", "Egress")
_PORT_NAME_RE = re.compile(r"^[a-zA-Z0-9_.-]{1,128}$")
_K8S_PORT_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_GLOBAL_SEL = "global()"


@dataclass
class ICMPFields:
    """``icmp`` / ``notICMP``: type 0-254 and optional code 0-255."""

    type: int | None = None
    code: int | None = None


@dataclass
class ServiceMatch:
    """``services``: a Kubernetes Service by name (and namespace)."""

    name: str = ""
    namespace: str = ""


@dataclass
class ServiceAccountMatch:
    """``serviceAccounts``: service accounts by name and/or selector."""

    names: list[str] = field(default_factory=list)
    selector: str = ""


@dataclass
class HTTPPath:
    exact: str = ""
    prefix: str = ""


@dataclass
class HTTPMatch:
    """``http``: application-layer match (needs Dikastes; not enforced by iptables)."""

    methods: list[str] = field(default_factory=list)
    paths: list[HTTPPath] = field(default_factory=list)


@dataclass
class RuleMetadata:
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class EntityRule:
    """The ``source`` or ``destination`` of a rule."""

    nets: list[str] = field(default_factory=list)
    selector: str = ""
    namespace_selector: str = ""
    services: ServiceMatch | None = None
    ports: list[int | str] = field(default_factory=list)
    not_nets: list[str] = field(default_factory=list)
    not_selector: str = ""
    not_ports: list[int | str] = field(default_factory=list)
    service_accounts: ServiceAccountMatch | None = None


@dataclass
class Rule:
    """One ingress or egress rule (Calico v3 ``Rule``)."""

    action: str = ""
    ip_version: int | None = jfield("ipVersion")
    protocol: int | str | None = None
    icmp: ICMPFields | None = jfield("icmp")
    not_protocol: int | str | None = None
    not_icmp: ICMPFields | None = jfield("notICMP")
    source: EntityRule = struct_field(EntityRule)
    destination: EntityRule = struct_field(EntityRule)
    http: HTTPMatch | None = jfield("http")
    metadata: RuleMetadata | None = None


# ---------------------------------------------------------------------------
# ports and protocols


@dataclass(frozen=True)
class PortRange:
    """A parsed port: ``first..last`` (a single port has first == last) or a named port."""

    first: int = 0
    last: int = 0
    name: str = ""

    def __str__(self) -> str:
        if self.name:
            return self.name
        return str(self.first) if self.first == self.last else f"{self.first}:{self.last}"


def parse_port(value: int | str, path: str) -> PortRange:
    """A rule port (``80``, ``"80"``, ``"80:90"``, ``"http"``) as Calico's numorstring.Port parses it."""
    if isinstance(value, bool):
        raise ValidationError(path, f"must be a port number, range or name; got {value!r}")
    if isinstance(value, int):
        if not 1 <= value <= 65535:
            raise ValidationError(path, f"port {value} is out of range: port numbers must be between 1 and 65535")
        return PortRange(value, value)
    text = str(value)
    if text.isdigit():
        return parse_port(int(text), path)
    m = re.fullmatch(r"(\d+):(\d+)", text)
    if m:
        lo, hi = int(m.group(1)), int(m.group(2))
        for n in (lo, hi):
            if not 1 <= n <= 65535:
                raise ValidationError(path, f"port range {text!r} is out of range: port numbers must be "
                                            "between 1 and 65535")
        if lo > hi:
            raise ValidationError(path, f"port range {text!r} is invalid: minimum port number ({lo}) is greater "
                                        f"than maximum port number ({hi})")
        return PortRange(lo, hi)
    if not _PORT_NAME_RE.match(text):
        raise ValidationError(path, f"invalid name for named port ({text})")
    if len(text) > 15 or not _K8S_PORT_NAME_RE.match(text) or "--" in text or not re.search("[a-z]", text):
        raise ValidationError(path, f"invalid named port {text!r}: at most 15 lower-case letters, digits and '-', "
                                    "with at least one letter, no '--', not starting or ending with '-'")
    return PortRange(name=text)


def protocol_name(value: int | str | None, path: str) -> str | int | None:
    """The protocol as Calico's API holds it: one of PROTOCOL_NAMES, or a number 1-255."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValidationError(path, f"protocol name invalid: {value!r}")
    if isinstance(value, int):
        if not 1 <= value <= 255:
            raise ValidationError(path, f"protocol number invalid: {value} (must be 1-255)")
        return value
    text = str(value)
    if text.isdigit():
        return protocol_name(int(text), path)
    if text not in PROTOCOL_NAMES:
        raise ValidationError(path, f"protocol name invalid: {text!r} (use one of {', '.join(PROTOCOL_NAMES)} "
                                    "or a number 1-255)")
    return text


def protocol_number(value: int | str | None) -> int | None:
    """The IP protocol number of a validated protocol (None for no protocol)."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    return PROTOCOL_NUMBERS.get(value)


def supports_ports(value: int | str | None) -> bool:
    """TCP, UDP and SCTP carry ports (numorstring.Protocol.SupportsPorts)."""
    return protocol_number(value) in (6, 17, 132)


# ---------------------------------------------------------------------------
# validation


def check_selector(text: str | None, path: str, allow_global: bool = False) -> None:
    """Raise ValidationError naming ``path`` if ``text`` is not a valid selector."""
    if not text:
        return
    from datastore.selector import SelectorError, parse_selector

    try:
        sel = parse_selector(text)
    except SelectorError as exc:
        raise ValidationError(path, str(exc)) from None
    if _GLOBAL_SEL in text:
        if not allow_global:
            raise ValidationError(path, "global() can only be used in an EntityRule namespaceSelector")
        if re.search(r"(&&|\|\|) global\(\)|global\(\) (&&|\|\|)", sel.canonical()):
            raise ValidationError(path, "global() cannot be combined with other selectors")


def _check_nets(nets: list[str], path: str) -> set[int]:
    versions = set()
    for i, n in enumerate(nets):
        try:
            versions.add(ipaddress.ip_network(n, strict=False).version)
        except ValueError:
            raise ValidationError(f"{path}[{i}]", f"{n!r} is not a valid CIDR") from None
    return versions


def validate_entity(er: EntityRule, path: str) -> None:
    """Selectors parse; global() only alone in namespaceSelector; services used consistently."""
    check_selector(er.selector, f"{path}.selector")
    check_selector(er.not_selector, f"{path}.notSelector")
    check_selector(er.namespace_selector, f"{path}.namespaceSelector", allow_global=True)
    if er.service_accounts is not None:
        check_selector(er.service_accounts.selector, f"{path}.serviceAccounts.selector")
        for i, name in enumerate(er.service_accounts.names):
            if not name:
                raise ValidationError(f"{path}.serviceAccounts.names[{i}]", "must not be empty")
    for fname, ports in (("ports", er.ports), ("notPorts", er.not_ports)):
        for i, p in enumerate(ports):
            parse_port(p, f"{path}.{fname}[{i}]")
    if er.services is not None:
        sp = f"{path}.services"
        if not er.services.name:
            raise ValidationError(f"{sp}.name", "must specify a service name")
        if er.namespace_selector:
            raise ValidationError(sp, "cannot specify NamespaceSelector and Services on the same rule")
        if er.selector or er.not_selector:
            raise ValidationError(sp, "cannot specify Selector/NotSelector and Services on the same rule")
        if er.service_accounts is not None:
            raise ValidationError(sp, "cannot specify ServiceAccounts and Services on the same rule")
        if er.nets or er.not_nets:
            raise ValidationError(sp, "cannot specify Nets/NotNets and Services on the same rule")


def validate_rule(rule: Rule, path: str) -> None:
    """Calico's validateRule, naming the field of the first problem found."""
    if rule.action not in ACTIONS:
        raise ValidationError(f"{path}.action", f"unknown action {rule.action!r}: must be one of "
                                                f"{', '.join(ACTIONS)}")
    if rule.ip_version is not None and rule.ip_version not in (4, 6):
        raise ValidationError(f"{path}.ipVersion", f"must be 4 or 6; got {rule.ip_version}")
    rule.protocol = protocol_name(rule.protocol, f"{path}.protocol")
    rule.not_protocol = protocol_name(rule.not_protocol, f"{path}.notProtocol")
    validate_entity(rule.source, f"{path}.source")
    validate_entity(rule.destination, f"{path}.destination")
    if not supports_ports(rule.protocol):
        for side, er in (("source", rule.source), ("destination", rule.destination)):
            if er.ports:
                raise ValidationError(f"{path}.{side}.ports",
                                      "rules that specify ports must set protocol to TCP or UDP or SCTP")
            if er.not_ports:
                raise ValidationError(f"{path}.{side}.notPorts",
                                      "rules that specify ports must set protocol to TCP or UDP or SCTP")
    icmp_protos = ("ICMP", "ICMPv6", 1, 58)
    for fname, icmp in (("icmp", rule.icmp), ("notICMP", rule.not_icmp)):
        if icmp is None:
            continue
        if fname == "icmp" and rule.protocol not in icmp_protos:
            raise ValidationError(f"{path}.icmp", "rules that specify ICMP fields must set protocol to ICMP")
        if icmp.type is not None and not 0 <= icmp.type <= 254:
            raise ValidationError(f"{path}.{fname}.type", f"must be 0-254; got {icmp.type}")
        if icmp.code is not None and not 0 <= icmp.code <= 255:
            raise ValidationError(f"{path}.{fname}.code", f"must be 0-255; got {icmp.code}")
        if icmp.code is not None and icmp.type is None:
            raise ValidationError(f"{path}.{fname}.code", "ICMP code specified without an ICMP type")
    for proto in (rule.protocol, rule.not_protocol):
        if proto in ("ICMP", 1) and rule.ip_version not in (None, 4):
            raise ValidationError(f"{path}.ipVersion", "must set ipversion to '4' with protocol icmp")
        if proto in ("ICMPv6", 58) and rule.ip_version not in (None, 6):
            raise ValidationError(f"{path}.ipVersion", "must set ipversion to '6' with protocol icmpv6")
    seen: set[int] = set()
    for side, er in (("source", rule.source), ("destination", rule.destination)):
        for fname, nets in (("nets", er.nets), ("notNets", er.not_nets)):
            versions = _check_nets(nets, f"{path}.{side}.{fname}")
            if rule.ip_version is not None and versions - {rule.ip_version}:
                raise ValidationError(f"{path}.{side}.{fname}", "rule IP version doesn't match CIDR version")
            if len(versions) > 1 or (versions and seen and versions != seen):
                raise ValidationError(f"{path}.{side}.{fname}", "rule contains both IPv4 and IPv6 CIDRs")
            seen |= versions
    if rule.http is not None:
        if rule.action != "Allow":
            raise ValidationError(f"{path}.http", "only valid for Allow rules")
        if rule.protocol not in (None, "TCP", 6):
            raise ValidationError(f"{path}.protocol", "rules that specify HTTP match must set protocol to TCP")
    if rule.destination.services is not None and (rule.destination.ports or rule.destination.not_ports):
        raise ValidationError(f"{path}.destination.ports", "cannot specify ports with a service selector")


def validate_rules(rules: list[Rule], path: str, egress: bool, policy: bool = True) -> None:
    """Every rule of an ingress (``egress=False``) or egress list; ``policy``: the checks
    Calico's (Global)NetworkPolicy validators add (services and http by direction)."""
    for i, rule in enumerate(rules):
        rp = f"{path}[{i}]"
        validate_rule(rule, rp)
        if not policy:
            continue
        if egress and rule.source.services is not None:
            raise ValidationError(f"{rp}.source.services", "not allowed in egress rule source")
        if egress and rule.http is not None:
            raise ValidationError(f"{rp}.http", "not allowed in egress rule")
        if not egress and rule.destination.services is not None:
            raise ValidationError(f"{rp}.destination.services", "not allowed in ingress rule destination")


def default_types(ingress: list[Rule], egress: list[Rule]) -> list[str]:
    """Calico's defaultPolicyTypesField: Ingress unless there are only egress rules; both if both."""
    if not egress:
        return ["Ingress"]
    if not ingress:
        return ["Egress"]
    return ["Ingress", "Egress"]


def validate_types(types: list[str], path: str) -> None:
    """Each of Ingress/Egress at most once."""
    seen = set()
    for i, t in enumerate(types):
        if t not in POLICY_TYPES:
            raise ValidationError(f"{path}[{i}]", f"must be Ingress or Egress; got {t!r}")
        if t in seen:
            raise ValidationError(path, f"'{t}' type specified more than once")
        seen.add(t)
