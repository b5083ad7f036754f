"""Felix's per-endpoint iptables rendering (pure), v3.28.1: policies, profiles, endpoints, dispatch.

Follows ``felix/rules/{policy,endpoints,dispatch}.go`` (calico.md section 5):

* a rule becomes ``<match> -j MARK --set-mark <accept|pass>`` + ``-m mark --mark <bit> -j RETURN``
  (Allow / Pass), ``<match> -j DROP`` (Deny) or ``<match> -j LOG`` (Log, non-terminating);
  several CIDRs, more than 15 ports or named ports beside numeric ones become match
  blocks on the scratch marks; trailing RETURNs are stripped; the first rule carries
  ``Policy <id> ingress|egress`` (``Profile <name> ...``);
* ``cali-tw-``/``cali-fw-<iface>``: conntrack first, clear accept|pass, (from the workload)
  drop VXLAN and IPIP, each policy (or group of policies sharing a selector) with
  "Return if policy accepted", "Drop if no policies passed packet", then the profiles;
* dispatch chains split one level by the next character after the common prefix.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from agent.felix import match as m
from agent.felix.model import RuleConfig
from agent.felix.names import endpoint_chain, ipset_name, policy_chain, profile_chain
from agent.felix.policy import ParsedRule, Policy, Profile, Rule, parse_rule
from datastore.rules import PortRange

GROUP_RETURN_STRIDE = 5
MAX_GROUP_UID = 28 - len("cali-gi-")


# ---------------------------------------------------------------------------
# rules


def _port_list(ports: Sequence[PortRange]) -> list[str]:
    return [str(p.first) if p.first == p.last else f"{p.first}:{p.last}" for p in ports]


def split_ports(ports: Sequence[PortRange]) -> list[tuple[PortRange, ...]]:
    """``SplitPortList``: groups of at most 15 multiport slots (a range takes 2)."""
    splits: list[tuple[PortRange, ...]] = []
    cur: list[PortRange] = []
    slots = 15
    for p in ports:
        need = 1 if p.first == p.last else 2
        if slots < need:
            splits.append(tuple(cur))
            cur, slots = [], 15
        cur.append(p)
        slots -= need
    if cur:
        splits.append(tuple(cur))
    return splits


def _v4_only(nets: tuple[str, ...]) -> tuple[tuple[str, ...], bool]:
    """(the IPv4 nets, True if the list was non-empty and nothing IPv4 is left)."""
    if not nets:
        return (), False
    kept = tuple(n for n in nets if ":" not in n)
    return kept, not kept


def _proto_frag(p: str | int | None, negate: bool = False) -> str:
    return "" if p is None else m.proto(p, negate)


class _Blocks:
    """Felix's matchBlockBuilder: OR-ed match blocks AND-ed through the scratch marks."""

    def __init__(self, cfg: RuleConfig) -> None:
        self.all_pass = cfg.marks.scratch0
        self.this_pass = cfg.marks.scratch1
        self.used = False
        self.done_first_positive = False
        self.rules: list[str] = []

    def _initial(self, bits: int) -> None:
        if not self.used:
            self.rules.append(m.rule(m.set_masked_mark(bits, self.all_pass | self.this_pass)))
            self.used = True

    def _positive_mark(self) -> int:
        return self.this_pass if self.done_first_positive else self.all_pass

    def _finish_positive(self) -> None:
        if not self.done_first_positive:
            self.done_first_positive = True
            return
        self.rules.append(m.rule(m.clear_mark(self.all_pass), m.mark_clear(self.this_pass)))

    def ports(self, protocol: str | int | None, splits: list[tuple[PortRange, ...]], named: Iterable[str],
              which: str) -> None:
        self._initial(0)
        mark = self._positive_mark()
        for split in splits:
            self.rules.append(m.rule(m.set_mark(mark), _proto_frag(protocol), m.ports(which, _port_list(split))))
        for set_id in named:
            self.rules.append(m.rule(m.set_mark(mark), m.set_match(ipset_name(set_id), f"{which},{which}")))
        self._finish_positive()

    def cidrs(self, cidrs: Iterable[str], which: str) -> None:
        self._initial(0)
        mark = self._positive_mark()
        for c in cidrs:
            self.rules.append(m.rule(m.set_mark(mark), m.src_net(c) if which == "src" else m.dst_net(c)))
        self._finish_positive()

    def negated_cidrs(self, cidrs: Iterable[str], which: str) -> None:
        self._initial(self.all_pass)
        for c in cidrs:
            self.rules.append(m.rule(m.clear_mark(self.all_pass), m.src_net(c) if which == "src" else m.dst_net(c)))


def _rule_match(r: ParsedRule, src_nets: tuple[str, ...], dst_nets: tuple[str, ...], not_src: tuple[str, ...],
                not_dst: tuple[str, ...], src_ports: tuple[PortRange, ...], dst_ports: tuple[PortRange, ...],
                src_named: tuple[str, ...], dst_named: tuple[str, ...]) -> list[str]:
    """``CalculateRuleMatch``: positive matches, then the negated ones, in Felix's order."""
    out = [_proto_frag(r.protocol)]
    if src_nets:
        out.append(m.src_net(src_nets[0]))
    out += [m.set_match(ipset_name(i), "src") for i in r.src_ipset_ids]
    if src_ports:
        out.append(m.ports("src", _port_list(src_ports)))
    out += [m.set_match(ipset_name(i), "src,src") for i in src_named]
    if dst_nets:
        out.append(m.dst_net(dst_nets[0]))
    out += [m.set_match(ipset_name(i), "dst") for i in r.dst_ipset_ids]
    out += [m.set_match(ipset_name(i), "dst,dst") for i in r.dst_ipport_ids]
    if dst_ports:
        out.append(m.ports("dst", _port_list(dst_ports)))
    out += [m.set_match(ipset_name(i), "dst,dst") for i in dst_named]
    if r.icmp_type is not None:
        out.append(m.icmp(r.icmp_type, r.icmp_code))
    out.append(_proto_frag(r.not_protocol, negate=True))
    if not_src:
        out.append(m.src_net(not_src[0], negate=True))
    out += [m.set_match(ipset_name(i), "src", negate=True) for i in r.not_src_ipset_ids]
    out += [m.ports("src", _port_list(s), negate=True) for s in split_ports(r.not_src_ports)]
    out += [m.set_match(ipset_name(i), "src,src", negate=True) for i in r.not_src_named_port_ids]
    if not_dst:
        out.append(m.dst_net(not_dst[0], negate=True))
    out += [m.set_match(ipset_name(i), "dst", negate=True) for i in r.not_dst_ipset_ids]
    out += [m.ports("dst", _port_list(s), negate=True) for s in split_ports(r.not_dst_ports)]
    out += [m.set_match(ipset_name(i), "dst,dst", negate=True) for i in r.not_dst_named_port_ids]
    if r.not_icmp_type is not None:
        out.append(m.icmp(r.not_icmp_type, r.not_icmp_code, negate=True))
    return [f for f in out if f]


def _applies_to_v4(r: ParsedRule) -> bool:
    if r.ip_version == 6:
        return False
    return not (r.ip_version is None and r.protocol == "icmpv6")


def parsed_rule_to_iptables(r: ParsedRule, cfg: RuleConfig) -> list[tuple[list[str], str]]:
    """``ProtoRuleToIptablesRules`` for IPv4: a list of (comments, rule-without-comments)."""
    if not _applies_to_v4(r):
        return []
    src_nets, gone1 = _v4_only(r.src_nets)
    not_src, gone2 = _v4_only(r.not_src_nets)
    dst_nets, gone3 = _v4_only(r.dst_nets)
    not_dst, gone4 = _v4_only(r.not_dst_nets)
    if gone1 or gone2 or gone3 or gone4:
        return []
    b = _Blocks(cfg)
    src_ports, dst_ports = r.src_ports, r.dst_ports
    src_named, dst_named = r.src_named_port_ids, r.dst_named_port_ids
    splits = split_ports(src_ports)
    if len(splits) + len(src_named) > 1:
        b.ports(r.protocol, splits, src_named, "src")
        src_ports, src_named = (), ()
    splits = split_ports(dst_ports)
    if len(splits) + len(dst_named) > 1:
        b.ports(r.protocol, splits, dst_named, "dst")
        dst_ports, dst_named = (), ()
    if len(src_nets) > 1:
        b.cidrs(src_nets, "src")
        src_nets = ()
    if len(dst_nets) > 1:
        b.cidrs(dst_nets, "dst")
        dst_nets = ()
    if len(src_nets) + len(not_src) > 1:
        b.negated_cidrs(not_src, "src")
        not_src = ()
    if len(dst_nets) + len(not_dst) > 1:
        b.negated_cidrs(not_dst, "dst")
        not_dst = ()
    match = " ".join(_rule_match(r, src_nets, dst_nets, not_src, not_dst, src_ports, dst_ports,
                                 src_named, dst_named))
    if b.used:
        match = (match + " " if match else "") + m.mark_set(b.all_pass)
    if r.action in ("", "allow"):
        mark, actions = cfg.marks.accept, [m.RETURN]
    elif r.action in ("next-tier", "pass"):
        mark, actions = cfg.marks.pass_, [m.RETURN]
    elif r.action == "deny":
        mark, actions = 0, [cfg.deny]
    elif r.action == "log":
        mark, actions = 0, [m.log(cfg.log_prefix)]
    else:
        raise ValueError(f"unknown rule action {r.action!r}")
    out = [([], rl) for rl in b.rules]
    if mark:
        out.append(([], m.rule(m.set_mark(mark), match)))
        match = m.mark_set(mark)
    out += [([], m.rule(a, match)) for a in actions]
    notes = [f"{k}={v}" for k, v in r.annotations]
    return [(notes + c, body) for c, body in out]


@lru_cache(maxsize=65536)
def rules_to_iptables(rules: tuple[Rule, ...], cfg: RuleConfig, chain_comment: str) -> tuple[str, ...]:
    """``ProtoRulesToIptablesRules``: every rule, trailing RETURNs stripped, chain comment on the first."""
    rendered: list[tuple[list[str], str]] = []
    for rule in rules:
        rendered += parsed_rule_to_iptables(parse_rule(rule)[0], cfg)
    while rendered and rendered[-1][1].endswith(m.RETURN):
        rendered.pop()
    if not rendered:
        rendered = [([], "")]
    rendered[0] = (rendered[0][0] + [chain_comment], rendered[0][1])
    out = []
    for comments, body in rendered:
        parts = [m.rule(comment=c) for c in comments]
        if body:
            parts.append(body)
        out.append(" ".join(parts))
    return tuple(out)


def policy_chains(policy: Policy, cfg: RuleConfig) -> dict[str, tuple[str, ...]]:
    """``cali-pi-<id>`` and ``cali-po-<id>``."""
    return {
        policy_chain("pi", policy.id): rules_to_iptables(policy.inbound, cfg, f"Policy {policy.id} ingress"),
        policy_chain("po", policy.id): rules_to_iptables(policy.outbound, cfg, f"Policy {policy.id} egress"),
    }


def profile_chains(profile: Profile, cfg: RuleConfig) -> dict[str, tuple[str, ...]]:
    """``cali-pri-<name>`` and ``cali-pro-<name>``."""
    return {
        profile_chain("pri", profile.name): rules_to_iptables(profile.inbound, cfg,
                                                              f"Profile {profile.name} ingress"),
        profile_chain("pro", profile.name): rules_to_iptables(profile.outbound, cfg,
                                                              f"Profile {profile.name} egress"),
    }


# ---------------------------------------------------------------------------
# policy groups and endpoint chains


@dataclass(frozen=True)
class PolicyGroup:
    """Consecutive policies of an endpoint that share a selector (``rules.PolicyGroup``)."""

    direction: str  # inbound | outbound
    policies: tuple[str, ...]
    selector: str
    tier: str = "default"

    def inlined(self) -> bool:
        return len(self.policies) <= 1

    def chain_name(self) -> str:
        return _group_chain_name(self)


@lru_cache(maxsize=65536)
def _group_chain_name(g: PolicyGroup) -> str:
    h = hashlib.sha3_224()
    for part in (g.tier, g.selector, g.direction, str(len(g.policies)), *g.policies):
        h.update(part.encode() + b"\n")
    uid = base64.urlsafe_b64encode(h.digest()).decode().rstrip("=")[:MAX_GROUP_UID]
    return ("cali-gi-" if g.direction == "inbound" else "cali-go-") + uid


def group_policies(ids: Sequence[str], selectors: dict[str, str], direction: str) -> tuple[PolicyGroup, ...]:
    """``groupPolicies``: runs of policies with the same selector."""
    groups: list[PolicyGroup] = []
    cur: list[str] = []
    cur_sel: str | None = None
    for pid in ids:
        sel = selectors.get(pid, "")
        if cur and sel != cur_sel:
            groups.append(PolicyGroup(direction, tuple(cur), cur_sel or ""))
            cur = []
        cur_sel = sel
        cur.append(pid)
    if cur:
        groups.append(PolicyGroup(direction, tuple(cur), cur_sel or ""))
    return tuple(groups)


@lru_cache(maxsize=16384)
def group_chain_rules(g: PolicyGroup, cfg: RuleConfig) -> tuple[str, ...]:
    """``PolicyGroupToIptablesChains``: jump each policy, "Return on verdict" every 5 jumps."""
    both = cfg.marks.pass_ | cfg.marks.accept
    prefix = "pi" if g.direction == "inbound" else "po"
    rules = []
    for i, pid in enumerate(g.policies):
        if i and i % GROUP_RETURN_STRIDE == 0:
            rules.append(m.rule(m.RETURN, m.mark_not_clear(both), comment="Return on verdict"))
        cond = "" if i % GROUP_RETURN_STRIDE == 0 else m.mark_clear(both)
        rules.append(m.rule(m.jump(policy_chain(prefix, pid)), cond))
    return tuple(rules)


@lru_cache(maxsize=65536)
def endpoint_chain_rules(direction: str, iface: str, groups: tuple[PolicyGroup, ...], profiles: tuple[str, ...],
                         cfg: RuleConfig) -> tuple[str, tuple[str, ...]]:
    """``cali-tw-<iface>`` (to the workload, ``direction`` "tw") or ``cali-fw-<iface>`` ("fw")."""
    mk = cfg.marks
    rules: list[str] = []
    if cfg.filter_allow != m.ACCEPT:
        rules.append(m.rule(m.set_mark(mk.accept), m.ctstate("RELATED,ESTABLISHED")))
    rules += [m.rule(cfg.filter_allow, m.ctstate("RELATED,ESTABLISHED")),
              m.rule(cfg.deny, m.ctstate("INVALID")),
              m.rule(m.clear_mark(mk.accept | mk.pass_))]
    if direction == "fw":
        if not cfg.allow_vxlan_from_workloads:
            rules.append(m.rule(cfg.deny, m.proto(17), m.ports("dst", [str(cfg.vxlan_port)]),
                                comment=f"{cfg.deny_name} VXLAN encapped packets originating in workloads"))
        if not cfg.allow_ipip_from_workloads:
            rules.append(m.rule(cfg.deny, m.proto(4),
                                comment=f"{cfg.deny_name} IPinIP encapped packets originating in workloads"))
    prefix = "pi" if direction == "tw" else "po"
    if groups:
        jump_if_no_pass = m.mark_clear(mk.pass_) + " --jump "
        ret = m.rule(m.RETURN, m.mark_set(mk.accept), comment="Return if policy accepted")
        for g in groups:
            targets = [policy_chain(prefix, p) for p in g.policies] if len(g.policies) <= 1 else [g.chain_name()]
            for t in targets:
                rules.append(jump_if_no_pass + t)
                rules.append(ret)
        rules.append(m.rule(cfg.deny, m.mark_clear(mk.pass_),
                            comment=f"{cfg.deny_name} if no policies passed packet"))
    pdir = "pri" if direction == "tw" else "pro"
    for prof in profiles:
        rules.append(m.rule(m.jump(profile_chain(pdir, prof))))
        rules.append(m.rule(m.RETURN, m.mark_set(mk.accept), comment="Return if profile accepted"))
    rules.append(m.rule(cfg.deny, comment=f"{cfg.deny_name} if no profiles matched"))
    return endpoint_chain(direction, iface), tuple(rules)


# ---------------------------------------------------------------------------
# dispatch


def common_prefix(names: Sequence[str]) -> str:
    if not names:
        return ""
    lo, hi = min(names), max(names)
    i = 0
    while i < len(lo) and lo[i] == hi[i]:
        i += 1
    return lo[:i]


@lru_cache(maxsize=64)
def dispatch_chains(ifaces: tuple[str, ...], cfg: RuleConfig) -> dict[str, tuple[str, ...]]:
    """``cali-from-wl-dispatch`` / ``cali-to-wl-dispatch`` and their one-level children.

    ``ifaces`` must be sorted and unique. Each name is keyed by its first
    len(common prefix)+1 characters; a key held by one interface is a direct
    ``-g cali-fw-<iface>`` in the root, a key held by several a ``-i <key>+``
    goto to ``<root>-<char>`` listing them. Both end with DROP "Unknown interface".
    """
    common = common_prefix(ifaces)
    groups: dict[str, list[str]] = {}
    for name in ifaces:
        key = name[:len(common) + 1] if len(name) > len(common) else common
        groups.setdefault(key, []).append(name)
    end = m.rule(cfg.deny, comment="Unknown interface")
    out: dict[str, tuple[str, ...]] = {}
    for root, kind, flag in (("cali-from-wl-dispatch", "fw", m.in_iface), ("cali-to-wl-dispatch", "tw", m.out_iface)):
        root_rules = []
        for key, names in groups.items():
            if len(names) > 1:
                child = f"{root}-{key[len(common):]}"
                root_rules.append(m.rule(m.goto(child), flag(key + "+")))
                out[child] = tuple(m.rule(m.goto(endpoint_chain(kind, n)), flag(n)) for n in names) + (end,)
            else:
                root_rules.append(m.rule(m.goto(endpoint_chain(kind, names[0])), flag(names[0])))
        out[root] = (*root_rules, end)
    return out
