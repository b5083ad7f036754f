"""The pure calculation: Felix's inputs -> desired routes, iptables chains, ipsets, tunl0.

Follows calico.md section 3 (iptables dataplane, IPIP mode, no NetworkPolicy
yet: the namespace profiles ``kns.<ns>`` allow everything).
No kernel access here; see the drivers for that.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from agent.felix.model import (
    Chain,
    Desired,
    Endpoint,
    FelixInput,
    IPSet,
    TableState,
    TunnelWant,
)
from agent.felix.names import (
    IPSET_ALL_HOSTS,
    IPSET_ALL_POOLS,
    IPSET_MASQ_POOLS,
    endpoint_chain,
    length_limited_id,
    profile_chain,
)

MARK_ACCEPT = 0x10000
MARK_PASS = 0x20000
MARK_ALL = 0xFFFF0000
DISPATCH_SPLIT_AT = 32  # above this many endpoints, dispatch chains become a prefix tree


def _c(text: str) -> str:
    return f'-m comment --comment "{text}"'


def ipip_enabled(inp: FelixInput) -> bool:
    """IPIP is on when FelixConfiguration says so, else when any enabled pool uses it."""
    if inp.settings.ipip_enabled is not None:
        return inp.settings.ipip_enabled
    return any(p.ipip_mode in ("Always", "CrossSubnet") and not p.disabled for p in inp.pools)


def local_endpoints(inp: FelixInput) -> list[Endpoint]:
    """Endpoints with an interface of our prefix, sorted by interface name; duplicates by iface dropped."""
    seen: dict[str, Endpoint] = {}
    for ep in sorted(inp.endpoints, key=lambda e: (e.iface, e.key)):
        if ep.iface.startswith(inp.settings.interface_prefix) and ep.iface not in seen:
            seen[ep.iface] = ep
    return list(seen.values())


def calculate(inp: FelixInput) -> Desired:
    """Compute the desired dataplane for ``inp.hostname``."""
    s = inp.settings
    endpoints = local_endpoints(inp)
    ipip = ipip_enabled(inp)
    me = next((n for n in inp.nodes if n.name == inp.hostname), None)
    tunnel = None
    tunnel_mtu = s.ipip_mtu or (inp.host_mtu - 20)
    if ipip and me is not None and me.tunnel_addr:
        tunnel = TunnelWant(str(ipaddress.IPv4Address(me.tunnel_addr.split("/")[0])), tunnel_mtu)

    routes: dict[str, str] = {}
    for ep in endpoints:
        for ip in ep.ips:
            net = _v4(ip)
            if net is not None:
                routes[net] = ep.iface

    host_ips = frozenset(n.ip for n in inp.nodes if n.ip)
    active_pools = [p for p in inp.pools if not p.disabled]
    ipsets = {
        IPSET_ALL_HOSTS: IPSet(IPSET_ALL_HOSTS, "hash:net", host_ips),
        IPSET_ALL_POOLS: IPSet(IPSET_ALL_POOLS, "hash:net", frozenset(_net(p.cidr) for p in inp.pools)),
        IPSET_MASQ_POOLS: IPSet(IPSET_MASQ_POOLS, "hash:net",
                                frozenset(_net(p.cidr) for p in active_pools if p.nat_outgoing)),
    }
    return Desired(
        routes=routes,
        interfaces=frozenset(ep.iface for ep in endpoints),
        ipsets=ipsets,
        tables={"filter": filter_table(endpoints, inp, ipip), "nat": nat_table(inp, ipip)},
        tunnel=tunnel,
        ipip_sources=host_ips,
        mtu_file=tunnel_mtu if ipip else inp.host_mtu,
        interface_prefix=s.interface_prefix,
    )


@lru_cache(maxsize=65536)
def _v4(cidr: str) -> str | None:
    net = ipaddress.ip_network(cidr, strict=False)
    return str(net) if net.version == 4 else None


def _net(cidr: str) -> str:
    return str(ipaddress.ip_network(cidr, strict=False))


# ---------------------------------------------------------------------------
# filter table


def filter_table(endpoints: list[Endpoint], inp: FelixInput, ipip: bool) -> TableState:
    """cali-INPUT/FORWARD/OUTPUT, dispatch chains, per-endpoint and profile chains."""
    s = inp.settings
    pfx = s.interface_prefix
    t = TableState()
    t.inserts = {"INPUT": ("-j cali-INPUT",), "FORWARD": ("-j cali-FORWARD",), "OUTPUT": ("-j cali-OUTPUT",)}
    t.appends = {"FORWARD": (
        f'{_c("Policy explicitly accepted packet.")} -m mark --mark {MARK_ACCEPT:#x}/{MARK_ACCEPT:#x} -j ACCEPT',
        f"-j MARK --set-xmark {MARK_ACCEPT:#x}/{MARK_ACCEPT:#x}",
    )}

    inp_rules = []
    if ipip:
        inp_rules += [
            f'{_c("Allow IPIP packets from Calico hosts")} -p 4 -m set --match-set {IPSET_ALL_HOSTS} src '
            f"-m addrtype --dst-type LOCAL -j ACCEPT",
            f'{_c("Drop IPIP packets from non-Calico hosts")} -p 4 -j DROP',
        ]
    inp_rules += [
        f"-i {pfx}+ -g cali-wl-to-host",
        f"-m mark --mark {MARK_ACCEPT:#x}/{MARK_ACCEPT:#x} -j ACCEPT",
        f"-j MARK --set-xmark 0x0/{MARK_ALL:#x}",
        "-j cali-from-host-endpoint",
        f'{_c("Host endpoint policy accepted packet.")} -m mark --mark {MARK_ACCEPT:#x}/{MARK_ACCEPT:#x} -j ACCEPT',
    ]
    t.add("cali-INPUT", inp_rules)
    action = s.default_endpoint_to_host_action.upper()
    if action not in ("ACCEPT", "DROP", "RETURN"):
        raise ValueError(f"defaultEndpointToHostAction must be ACCEPT, DROP or RETURN; got {action!r}")
    t.add("cali-wl-to-host", [
        "-j cali-from-wl-dispatch",
        f'{_c("Configured DefaultEndpointToHostAction")} -j {action}',
    ])
    t.add("cali-FORWARD", [
        f"-j MARK --set-xmark 0x0/{MARK_ALL & ~MARK_ACCEPT & 0xFFFFFFFF:#x}",
        f"-m mark --mark 0x0/{MARK_ACCEPT:#x} -j cali-from-hep-forward",
        f"-i {pfx}+ -j cali-from-wl-dispatch",
        f"-o {pfx}+ -j cali-to-wl-dispatch",
        "-j cali-to-hep-forward",
        "-j cali-cidr-block",
    ])
    t.add("cali-OUTPUT", [
        f"-m mark --mark {MARK_ACCEPT:#x}/{MARK_ACCEPT:#x} -j ACCEPT",
        f"-o {pfx}+ -j RETURN",
        f"-j MARK --set-xmark 0x0/{MARK_ALL:#x}",
        "-j cali-to-host-endpoint",
        f'{_c("Host endpoint policy accepted packet.")} -m mark --mark {MARK_ACCEPT:#x}/{MARK_ACCEPT:#x} -j ACCEPT',
    ])
    for empty in ("cali-from-hep-forward", "cali-to-hep-forward", "cali-cidr-block",
                  "cali-from-host-endpoint", "cali-to-host-endpoint"):
        t.add(empty, [])

    for chain in dispatch_chains("cali-from-wl-dispatch", "-i", "fw", endpoints, pfx):
        t.chains[chain[0]] = _chain(chain[0], tuple(chain[1]))
    for chain in dispatch_chains("cali-to-wl-dispatch", "-o", "tw", endpoints, pfx):
        t.chains[chain[0]] = _chain(chain[0], tuple(chain[1]))

    profiles: set[str] = set()
    for ep in endpoints:
        for direction in ("fw", "tw"):
            name, rules = endpoint_chain_rules(direction, ep.iface, ep.profiles)
            t.chains[name] = _chain(name, rules)
        profiles.update(ep.profiles)
    for prof in sorted(profiles):
        for direction in ("pri", "pro"):
            name, rules = profile_chain_rules(direction, prof)
            t.chains[name] = _chain(name, rules)
    return t


@lru_cache(maxsize=65536)
def _chain(name: str, rules: tuple[str, ...]) -> Chain:
    """Chains are interned, so an unchanged chain is the very same object from one calculation to the next."""
    return Chain(name, rules)


def dispatch_chains(root: str, flag: str, kind: str, endpoints: list[Endpoint],
                    prefix: str) -> list[tuple[str, list[str]]]:
    """The dispatch chain (``-i/-o <iface> -g cali-fw/tw-<iface>``) as a prefix tree.

    Up to DISPATCH_SPLIT_AT endpoints fit in one chain; above that the
    interfaces are grouped by their next name character, one child chain per
    group (``<root>-<chars>``), recursively, so adding one endpoint rewrites
    only a small leaf chain (Felix's dispatch tree does the same). Subtrees
    are memoised on their interface names, so recomputing after one change
    only rebuilds the path to that change.
    """
    ifaces = tuple(sorted(ep.iface for ep in endpoints))
    return [(name, list(rules)) for name, rules in _subtree(root, flag, kind, prefix, root, prefix, ifaces)]


@lru_cache(maxsize=8192)
def _subtree(root: str, flag: str, kind: str, prefix: str, name: str, common: str,
             ifaces: tuple[str, ...]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    drop = f'{_c("Unknown interface")} -j DROP'
    if len(ifaces) <= DISPATCH_SPLIT_AT or all(len(i) <= len(common) for i in ifaces):
        return ((name, tuple(f"{flag} {i} -g {endpoint_chain(kind, i)}" for i in ifaces) + (drop,)),)
    groups: dict[str, list[str]] = {}
    rules = []
    depth = len(common)
    for i in ifaces:
        if len(i) == depth:
            rules.append(f"{flag} {i} -g {endpoint_chain(kind, i)}")
        else:
            groups.setdefault(i[depth], []).append(i)
    out: list[tuple[str, tuple[str, ...]]] = []
    for ch in sorted(groups):
        sub_common = common + ch
        child = length_limited_id(root + "-", sub_common[len(prefix):])
        rules.append(f"{flag} {sub_common}+ -g {child}")
        out += _subtree(root, flag, kind, prefix, child, sub_common, tuple(groups[ch]))
    return ((name, (*rules, drop)), *out)


@lru_cache(maxsize=65536)
def endpoint_chain_rules(direction: str, iface: str, profiles: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """``cali-fw-<iface>`` (pod egress) or ``cali-tw-<iface>`` (pod ingress) and its rules."""
    rules = [
        "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-m conntrack --ctstate INVALID -j DROP",
        f"-j MARK --set-xmark 0x0/{MARK_ACCEPT | MARK_PASS:#x}",
    ]
    if direction == "fw":
        rules += [
            f'{_c("Drop VXLAN encapped packets originating in workloads")} -p udp -m udp --dport 4789 -j DROP',
            f'{_c("Drop IPinIP encapped packets originating in workloads")} -p 4 -j DROP',
        ]
    pdir = "pro" if direction == "fw" else "pri"
    for prof in profiles:
        rules += [
            f"-j {profile_chain(pdir, prof)}",
            f'{_c("Return if profile accepted")} -m mark --mark {MARK_ACCEPT:#x}/{MARK_ACCEPT:#x} -j RETURN',
        ]
    rules.append(f'{_c("Drop if no profiles matched")} -j DROP')
    return endpoint_chain(direction, iface), tuple(rules)


@lru_cache(maxsize=4096)
def profile_chain_rules(direction: str, profile: str) -> tuple[str, tuple[str, ...]]:
    """Profile chains: ``kns.<ns>`` allows everything; other profiles carry no rules yet."""
    rules: tuple[str, ...] = ()
    if profile.startswith("kns."):
        rules = (f"-j MARK --set-xmark {MARK_ACCEPT:#x}/{MARK_ACCEPT:#x}",
                 f"-m mark --mark {MARK_ACCEPT:#x}/{MARK_ACCEPT:#x} -j RETURN")
    return profile_chain(direction, profile), rules


# ---------------------------------------------------------------------------
# nat table


def nat_table(inp: FelixInput, ipip: bool) -> TableState:
    """cali-PREROUTING/POSTROUTING/OUTPUT, cali-nat-outgoing and the tunl0 MASQUERADE rule."""
    t = TableState()
    t.inserts = {"PREROUTING": ("-j cali-PREROUTING",), "POSTROUTING": ("-j cali-POSTROUTING",),
                 "OUTPUT": ("-j cali-OUTPUT",)}
    t.add("cali-PREROUTING", ["-j cali-fip-dnat"])
    t.add("cali-OUTPUT", ["-j cali-fip-dnat"])
    t.add("cali-fip-dnat", [])
    t.add("cali-fip-snat", [])
    post = ["-j cali-fip-snat", "-j cali-nat-outgoing"]
    if ipip:
        post.append("-o tunl0 -m addrtype ! --src-type LOCAL --limit-iface-out "
                    "-m addrtype --src-type LOCAL -j MASQUERADE")
    t.add("cali-POSTROUTING", post)
    masq = f"-m set --match-set {IPSET_MASQ_POOLS} src -m set ! --match-set {IPSET_ALL_POOLS} dst -j MASQUERADE"
    if inp.settings.nat_random_fully:
        masq += " --random-fully"
    t.add("cali-nat-outgoing", [masq] if any(p.nat_outgoing and not p.disabled for p in inp.pools) else [])
    return t
