"""Felix's static chains for the filter, nat, raw and mangle tables (pure), v3.28.1.

Follows ``felix/rules/static.go`` and ``int_dataplane.go setUpIptablesNormal``
(calico.md section 4): one jump at the top of each kernel chain, the accept
rules appended to filter FORWARD, mark bits cleared with Felix's masks
(cali-FORWARD keeps the accept bit: 0xe0000; the others clear 0xf0000), the
raw table's anti-spoofing RPF check for packets from workloads, failsafe
chains (referenced only from host-endpoint chains, so not programmed while
there are no host endpoints), and empty host-endpoint dispatch chains (this
Felix has no HostEndpoints).
"""

from __future__ import annotations

from agent.felix import match as m
from agent.felix.model import RuleConfig, TableState
from agent.felix.names import IPSET_ALL_HOSTS, IPSET_ALL_POOLS, IPSET_ALL_VXLAN, IPSET_MASQ_POOLS

# chain names (felix/rules/rule_defs.go)
FORWARD, INPUT, OUTPUT = "cali-FORWARD", "cali-INPUT", "cali-OUTPUT"
PREROUTING, POSTROUTING = "cali-PREROUTING", "cali-POSTROUTING"
WL_TO_HOST = "cali-wl-to-host"
FROM_WL_DISPATCH, TO_WL_DISPATCH = "cali-from-wl-dispatch", "cali-to-wl-dispatch"
FROM_HEP, TO_HEP = "cali-from-host-endpoint", "cali-to-host-endpoint"
FROM_HEP_FWD, TO_HEP_FWD = "cali-from-hep-forward", "cali-to-hep-forward"
CIDR_BLOCK = "cali-cidr-block"
FAILSAFE_IN, FAILSAFE_OUT = "cali-failsafe-in", "cali-failsafe-out"
RPF_SKIP = "cali-rpf-skip"
NAT_OUTGOING, FIP_DNAT, FIP_SNAT = "cali-nat-outgoing", "cali-fip-dnat", "cali-fip-snat"
PROTO_IPIP, PROTO_UDP = 4, 17


def _accept_already_accepted(cfg: RuleConfig) -> str:
    return m.rule(cfg.filter_allow, m.mark_set(cfg.marks.accept))


def filter_chains(cfg: RuleConfig) -> dict[str, tuple[str, ...]]:
    """cali-FORWARD, cali-INPUT, cali-wl-to-host, cali-OUTPUT, failsafe and host-endpoint chains."""
    mk = cfg.marks
    wl = cfg.prefix + "+"
    inp: list[str] = []
    if cfg.ipip:
        inp += [
            m.rule(cfg.filter_allow, m.proto(PROTO_IPIP), m.set_match(IPSET_ALL_HOSTS, "src"), m.addrtype("dst"),
                   comment="Allow IPIP packets from Calico hosts"),
            m.rule(cfg.deny, m.proto(PROTO_IPIP), comment=f"{cfg.deny_name} IPIP packets from non-Calico hosts"),
        ]
    vxlan_port = m.ports("dst", [str(cfg.vxlan_port)])
    if cfg.vxlan:  # IPv4 VXLAN from the known VTEPs only, to this host (the drop is always DROP)
        inp += [
            m.rule(cfg.filter_allow, m.proto(PROTO_UDP), vxlan_port, m.set_match(IPSET_ALL_VXLAN, "src"),
                   m.addrtype("dst"), comment="Allow IPv4 VXLAN packets from allowed hosts"),
            m.rule(m.DROP, m.proto(PROTO_UDP), vxlan_port, m.addrtype("dst"),
                   comment="Drop IPv4 VXLAN packets from non-allowed hosts"),
        ]
    inp += [
        m.rule(m.goto(WL_TO_HOST), m.in_iface(wl)),
        _accept_already_accepted(cfg),
        m.rule(m.clear_mark(mk.all_calico)),
        m.rule(m.jump(FROM_HEP)),
        m.rule(cfg.filter_allow, m.mark_set(mk.accept), comment="Host endpoint policy accepted packet."),
    ]
    out: list[str] = [_accept_already_accepted(cfg), m.rule(m.RETURN, m.out_iface(wl))]
    if cfg.ipip:
        out.append(m.rule(cfg.filter_allow, m.proto(PROTO_IPIP), m.set_match(IPSET_ALL_HOSTS, "dst"),
                          m.addrtype("src"), comment="Allow IPIP packets to other Calico hosts"))
    if cfg.vxlan:
        out.append(m.rule(cfg.filter_allow, m.proto(PROTO_UDP), vxlan_port, m.addrtype("src"),
                          m.set_match(IPSET_ALL_VXLAN, "dst"), comment="Allow IPv4 VXLAN packets to other allowed hosts"))
    out += [
        m.rule(m.clear_mark(mk.all_calico)),
        m.rule(m.jump(TO_HEP), m.ctstate("DNAT", negate=True)),
        m.rule(cfg.filter_allow, m.mark_set(mk.accept), comment="Host endpoint policy accepted packet."),
    ]
    return {
        FORWARD: (
            m.rule(m.clear_mark(mk.all_calico & ~mk.accept)),
            m.rule(m.jump(FROM_HEP_FWD), m.mark_clear(mk.accept)),
            m.rule(m.jump(FROM_WL_DISPATCH), m.in_iface(wl)),
            m.rule(m.jump(TO_WL_DISPATCH), m.out_iface(wl)),
            m.rule(m.jump(TO_HEP_FWD)),
            m.rule(m.jump(CIDR_BLOCK)),
        ),
        INPUT: tuple(inp),
        WL_TO_HOST: (
            m.rule(m.jump(FROM_WL_DISPATCH)),
            m.rule(cfg.endpoint_to_host, comment="Configured DefaultEndpointToHostAction"),
        ),
        OUTPUT: tuple(out),
        FAILSAFE_IN: failsafe_in(cfg, "filter"),
        FAILSAFE_OUT: failsafe_out(cfg, "filter"),
        FROM_HEP_FWD: (), TO_HEP_FWD: (), CIDR_BLOCK: (), FROM_HEP: (), TO_HEP: (),
    }


def filter_hooks(cfg: RuleConfig) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]:
    """(inserts, appends) for the filter table's kernel chains."""
    inserts = {"FORWARD": (m.rule(m.jump(FORWARD)),), "INPUT": (m.rule(m.jump(INPUT)),),
               "OUTPUT": (m.rule(m.jump(OUTPUT)),)}
    appends = {"FORWARD": (
        m.rule(cfg.filter_allow, m.mark_set(cfg.marks.accept), comment="Policy explicitly accepted packet."),
        m.rule(m.set_mark(cfg.marks.accept)),
    )}
    return inserts, appends


def _failsafe(cfg: RuleConfig, ports: tuple[tuple[str, int, str], ...], which: str, nets: str) -> list[str]:
    out = []
    for proto, port, net in ports:
        if net and ":" in net:
            continue  # an IPv6 failsafe entry: not for the IPv4 tables
        extra = (m.src_net(net) if nets == "src" else m.dst_net(net)) if net else ""
        out.append(m.rule(m.ACCEPT, m.proto(proto), m.ports(which, [str(port)]), extra))
    return out


def failsafe_in(cfg: RuleConfig, table: str) -> tuple[str, ...]:
    """``cali-failsafe-in``: inbound failsafe ports by destination (raw: outbound ones by source too)."""
    rules = _failsafe(cfg, cfg.failsafe_inbound, "dst", "src")
    if table == "raw":
        rules += _failsafe(cfg, cfg.failsafe_outbound, "src", "src")
    return tuple(rules)


def failsafe_out(cfg: RuleConfig, table: str) -> tuple[str, ...]:
    """``cali-failsafe-out``: outbound failsafe ports by destination (raw: inbound ones by source too)."""
    rules = _failsafe(cfg, cfg.failsafe_outbound, "dst", "dst")
    if table == "raw":
        rules += _failsafe(cfg, cfg.failsafe_inbound, "src", "dst")
    return tuple(rules)


def raw_chains(cfg: RuleConfig, rpf_skip: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """raw cali-PREROUTING (anti-spoofing RPF for workload traffic), cali-OUTPUT, failsafes, rpf-skip.

    Felix also renders ``cali-wireguard-incoming-mark`` here; nothing references it
    without WireGuard, so Felix never programs it, and neither do we.
    """
    mk = cfg.marks
    from_wl = mk.scratch0
    return {
        FAILSAFE_IN: failsafe_in(cfg, "raw"),
        FAILSAFE_OUT: failsafe_out(cfg, "raw"),
        PREROUTING: (
            m.rule(m.clear_mark(mk.all_calico)),
            m.rule(m.set_mark(from_wl), m.in_iface(cfg.prefix + "+")),
            m.rule(m.jump(RPF_SKIP), m.mark_matches(from_wl, from_wl)),
            m.rule(cfg.deny, m.mark_matches(from_wl, from_wl), m.RPF_FAILED),
            m.rule(m.jump(FROM_HEP), m.mark_clear(from_wl)),
            m.rule(m.ACCEPT, m.mark_set(mk.accept)),
        ),
        OUTPUT: (
            m.rule(m.clear_mark(mk.all_calico)),
            m.rule(m.jump(TO_HEP)),
            m.rule(m.ACCEPT, m.mark_set(mk.accept)),
        ),
        RPF_SKIP: rpf_skip,
        FROM_HEP: (), TO_HEP: (),
    }


def rpf_skip_rules(spoofable: dict[str, tuple[str, ...]]) -> tuple[str, ...]:
    """``cali-rpf-skip``: ``-i <iface> -s <prefix> -j ACCEPT`` per allowSpoofedSourcePrefixes entry."""
    return tuple(m.rule(m.ACCEPT, m.in_iface(iface), m.src_net(prefix))
                 for iface in sorted(spoofable) for prefix in spoofable[iface])


def raw_hooks() -> dict[str, tuple[str, ...]]:
    return {"PREROUTING": (m.rule(m.jump(PREROUTING)),), "OUTPUT": (m.rule(m.jump(OUTPUT)),)}


def mangle_chains(cfg: RuleConfig) -> dict[str, tuple[str, ...]]:
    """mangle cali-PREROUTING / cali-POSTROUTING and the (unreferenced) failsafe chains."""
    mk = cfg.marks
    return {
        FAILSAFE_IN: failsafe_in(cfg, "mangle"),
        FAILSAFE_OUT: failsafe_out(cfg, "mangle"),
        PREROUTING: (
            m.rule(cfg.mangle_allow, m.ctstate("RELATED,ESTABLISHED")),
            m.rule(cfg.mangle_allow, m.mark_set(mk.accept)),
            m.rule(m.jump(FROM_HEP)),
            m.rule(cfg.mangle_allow, m.mark_set(mk.accept), comment="Host endpoint policy accepted packet."),
        ),
        POSTROUTING: (
            m.rule(m.RETURN, m.mark_set(mk.accept)),
            m.rule(m.clear_mark(mk.all_calico)),
            m.rule(m.jump(TO_HEP), m.ctstate("DNAT")),
            m.rule(m.RETURN, m.mark_set(mk.accept), comment="Host endpoint policy accepted packet."),
        ),
        FROM_HEP: (), TO_HEP: (),
    }


def mangle_hooks() -> dict[str, tuple[str, ...]]:
    return {"PREROUTING": (m.rule(m.jump(PREROUTING)),), "POSTROUTING": (m.rule(m.jump(POSTROUTING)),)}


def nat_table(cfg: RuleConfig, nat_outgoing: bool, tunnels: list[str] | tuple[str, ...],
              random_fully: bool) -> TableState:
    """cali-PREROUTING/POSTROUTING/OUTPUT, cali-nat-outgoing and one MASQUERADE rule per active
    tunnel device (tunl0, vxlan.calico) for host traffic that picked a non-tunnel source."""
    t = TableState()
    t.inserts = {"PREROUTING": (m.rule(m.jump(PREROUTING)),), "POSTROUTING": (m.rule(m.jump(POSTROUTING)),),
                 "OUTPUT": (m.rule(m.jump(OUTPUT)),)}
    t.add(PREROUTING, [m.rule(m.jump(FIP_DNAT))])
    t.add(OUTPUT, [m.rule(m.jump(FIP_DNAT))])
    t.add(FIP_DNAT, [])
    t.add(FIP_SNAT, [])
    # MasqAction renders --random-fully wherever the feature is detected (iptables >= 1.6.2)
    masq = m.MASQUERADE + (" --random-fully" if random_fully else "")
    post = [m.rule(m.jump(FIP_SNAT)), m.rule(m.jump(NAT_OUTGOING))]
    for dev in tunnels:
        post.append(m.rule(masq, m.out_iface(dev),
                           m.addrtype("src", negate=True, limit_iface_out=True), m.addrtype("src")))
    t.add(POSTROUTING, post)
    t.add(NAT_OUTGOING, [m.rule(masq, m.set_match(IPSET_MASQ_POOLS, "src"),
                                m.set_match(IPSET_ALL_POOLS, "dst", negate=True))] if nat_outgoing else [])
    return t


def table(chains: dict[str, tuple[str, ...]], inserts: dict[str, tuple[str, ...]],
          appends: dict[str, tuple[str, ...]] | None = None) -> TableState:
    """A TableState from static chains and hooks."""
    t = TableState()
    for name, rules in chains.items():
        t.add(name, rules)
    t.inserts = dict(inserts)
    t.appends = dict(appends or {})
    return t
