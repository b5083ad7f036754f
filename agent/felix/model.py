"""Plain data for Felix: its inputs (what the datastore says) and its outputs (desired dataplane)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from agent.felix.marks import DEFAULT_MASK, MarkBits, allocate

# ---------------------------------------------------------------------------
# Inputs (built from datastore resources by agent.felix.convert)


@dataclass(frozen=True)
class NamedPort:
    """A named port of an endpoint (``ports`` of a WorkloadEndpoint): protocol is tcp/udp/sctp."""

    name: str
    protocol: str
    port: int


@dataclass(frozen=True)
class Endpoint:
    """A workload endpoint as Felix sees it: interface, /32s, profiles, labels, named ports.

    ``node`` "" means the local node (so plain unit tests need not name it).
    """

    key: str  # "<namespace>/<name>"
    iface: str
    ips: tuple[str, ...]  # "192.168.1.5/32"
    profiles: tuple[str, ...] = ()
    node: str = ""
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    ports: tuple[NamedPort, ...] = ()
    allow_spoofed: tuple[str, ...] = ()  # allowSpoofedSourcePrefixes
    workload: str = ""  # "<namespace>/<pod>": the policy-sync API's workload ID
    mac: str = ""


@dataclass(frozen=True)
class NetSet:
    """A NetworkSet or GlobalNetworkSet: labels and CIDRs that selectors can match."""

    key: str
    nets: tuple[str, ...]
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    profiles: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pool:
    """An IP pool as Felix uses it."""

    cidr: str
    ipip_mode: str = "Never"
    nat_outgoing: bool = False
    disabled: bool = False
    vxlan_mode: str = "Never"


@dataclass(frozen=True)
class HostNode:
    """A Calico node: name, BGP address (CIDR or bare IP), IPIP tunnel address, VXLAN tunnel
    address and VTEP MAC (None: derived from the name)."""

    name: str
    ipv4_address: str | None = None
    tunnel_addr: str | None = None
    vxlan_tunnel_addr: str | None = None
    vxlan_mac: str | None = None

    @property
    def ip(self) -> str | None:
        """The node address without its prefix length."""
        return self.ipv4_address.split("/")[0] if self.ipv4_address else None


@dataclass(frozen=True)
class Block:
    """An IPAM block as Felix's route resolver uses it: CIDR, the node it is affine to (None:
    no affinity) and the addresses it lends to other nodes (``(ip, node)``, borrowed /32s)."""

    cidr: str
    node: str | None = None
    borrowed: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class FelixSettings:
    """The FelixConfiguration fields this Felix honours, with Calico's defaults."""

    ipip_enabled: bool | None = None  # None: derived from the pools
    ipip_mtu: int = 0  # 0: host MTU - 20
    interface_prefix: str = "cali"
    default_endpoint_to_host_action: str = "ACCEPT"  # calico.yaml sets ACCEPT (Felix's own default DROP)
    route_refresh_interval: float = 90.0
    iptables_refresh_interval: float = 180.0
    ipsets_refresh_interval: float = 90.0
    health_port: int = 9099
    nat_random_fully: bool = True
    iptables_mark_mask: int = DEFAULT_MASK
    iptables_filter_allow_action: str = "ACCEPT"
    iptables_filter_deny_action: str = "DROP"
    iptables_mangle_allow_action: str = "ACCEPT"
    log_prefix: str = "calico-packet"
    failsafe_inbound: tuple[tuple[str, int, str], ...] = (
        ("tcp", 22, ""), ("udp", 68, ""), ("tcp", 179, ""), ("tcp", 2379, ""), ("tcp", 2380, ""),
        ("tcp", 5473, ""), ("tcp", 6443, ""), ("tcp", 6666, ""), ("tcp", 6667, ""))
    failsafe_outbound: tuple[tuple[str, int, str], ...] = (
        ("udp", 53, ""), ("udp", 67, ""), ("tcp", 179, ""), ("tcp", 2379, ""), ("tcp", 2380, ""),
        ("tcp", 5473, ""), ("tcp", 6443, ""), ("tcp", 6666, ""), ("tcp", 6667, ""))
    vxlan_enabled: bool | None = None  # None: derived from the pools
    vxlan_mtu: int = 0  # 0: host MTU - 50
    vxlan_port: int = 4789
    vxlan_vni: int = 4096
    allow_vxlan_from_workloads: bool = False
    allow_ipip_from_workloads: bool = False
    policy_sync_path_prefix: str = ""  # "": the policy-sync API is off (agent.felix.policysync)


@dataclass(frozen=True)
class RuleConfig:
    """What the rule renderer needs (Felix's ``rules.Config`` plus the resolved actions)."""

    marks: MarkBits
    prefix: str = "cali"
    ipip: bool = False
    vxlan: bool = False
    filter_allow: str = "--jump ACCEPT"
    mangle_allow: str = "--jump ACCEPT"
    deny: str = "--jump DROP"
    deny_name: str = "Drop"
    endpoint_to_host: str = "--jump ACCEPT"
    log_prefix: str = "calico-packet"
    failsafe_inbound: tuple[tuple[str, int, str], ...] = ()
    failsafe_outbound: tuple[tuple[str, int, str], ...] = ()
    vxlan_port: int = 4789
    allow_vxlan_from_workloads: bool = False
    allow_ipip_from_workloads: bool = False


def rule_config(s: FelixSettings, ipip: bool, vxlan: bool = False) -> RuleConfig:
    """Resolve FelixSettings into the renderer's config (``rules.NewRenderer``)."""
    deny = s.iptables_filter_deny_action.upper()
    eth = s.default_endpoint_to_host_action.upper()
    if eth not in ("ACCEPT", "DROP", "REJECT", "RETURN"):
        raise ValueError(f"defaultEndpointToHostAction must be ACCEPT, DROP, REJECT or RETURN; got {eth!r}")
    return RuleConfig(
        marks=allocate(s.iptables_mark_mask),
        prefix=s.interface_prefix,
        ipip=ipip,
        vxlan=vxlan,
        filter_allow="--jump RETURN" if s.iptables_filter_allow_action.upper() == "RETURN" else "--jump ACCEPT",
        mangle_allow="--jump RETURN" if s.iptables_mangle_allow_action.upper() == "RETURN" else "--jump ACCEPT",
        deny="--jump REJECT" if deny == "REJECT" else "--jump DROP",
        deny_name="Reject" if deny == "REJECT" else "Drop",
        endpoint_to_host=f"--jump {eth}",
        log_prefix=s.log_prefix,
        failsafe_inbound=s.failsafe_inbound,
        failsafe_outbound=s.failsafe_outbound,
        vxlan_port=s.vxlan_port,
        allow_vxlan_from_workloads=s.allow_vxlan_from_workloads,
        allow_ipip_from_workloads=s.allow_ipip_from_workloads,
    )


@dataclass(frozen=True)
class FelixInput:
    """Everything the calculation needs.

    ``endpoints``: every workload endpoint of the cluster (a tuple or a mapping
    key -> Endpoint); those with ``node`` "" or ``hostname`` are local. Remote
    ones feed the selector ipsets. ``policies`` (id -> policy.Policy),
    ``profiles`` (name -> policy.Profile) and ``netsets`` (key -> NetSet) are the
    policy model; ``host_ips`` fills ``cali40this-host``.
    """

    hostname: str
    endpoints: tuple[Endpoint, ...] | Mapping[str, Endpoint] = ()
    nodes: tuple[HostNode, ...] = ()
    pools: tuple[Pool, ...] = ()
    settings: FelixSettings = field(default_factory=FelixSettings)
    host_mtu: int = 1500
    blocks: tuple[Block, ...] = ()  # every IPAM block (VXLAN routes come from them)
    policies: Mapping[str, Any] = field(default_factory=dict)
    profiles: Mapping[str, Any] = field(default_factory=dict)
    netsets: Mapping[str, NetSet] = field(default_factory=dict)
    host_ips: frozenset[str] = frozenset()

    def endpoint_map(self) -> Mapping[str, Endpoint]:
        """``endpoints`` as a mapping key -> Endpoint."""
        if isinstance(self.endpoints, Mapping):
            return self.endpoints
        return {ep.key: ep for ep in self.endpoints}


# ---------------------------------------------------------------------------
# Outputs


@dataclass(frozen=True)
class Chain:
    """An iptables chain: name and rule bodies (without ``-A <chain>`` and without the hash comment).

    ``refs``: the Calico chains its rules jump or go to (Felix programs only chains
    reachable from the hooks).
    """

    name: str
    rules: tuple[str, ...]
    refs: tuple[str, ...] = ()


@lru_cache(maxsize=131072)
def make_chain(name: str, rules: tuple[str, ...]) -> Chain:
    """A chain with its references; interned, so an unchanged chain is the very same object
    from one calculation to the next (the iptables driver skips it by identity)."""
    from agent.felix.match import referenced_chains

    return Chain(name, rules, referenced_chains(rules))


@dataclass
class TableState:
    """Desired content of one iptables table.

    ``chains``: Calico-owned chains (fully owned: rewritten as a whole when changed).
    ``inserts``: per kernel chain, rules Felix keeps at its top (the hooks).
    ``appends``: per kernel chain, rules Felix keeps at its end.
    """

    chains: dict[str, Chain] = field(default_factory=dict)
    inserts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    appends: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def add(self, name: str, rules: list[str] | tuple[str, ...]) -> None:
        """Add (or replace) a Calico chain."""
        self.chains[name] = make_chain(name, tuple(rules))

    def put(self, chain: Chain) -> None:
        """Add (or replace) a Calico chain made by :func:`make_chain`."""
        self.chains[chain.name] = chain


@dataclass(frozen=True)
class IPSet:
    """A desired ipset: name, type and members."""

    name: str
    type: str
    members: frozenset[str]


@dataclass(frozen=True)
class TunnelWant:
    """tunl0 as it should be (None in Desired when IPIP is off or the node has no tunnel address)."""

    address: str
    mtu: int


VXLAN_DEVICE = "vxlan.calico"
VXLAN_PROTO = 80  # defaultVXLANProto: no-encap and blackhole routes of the VXLAN manager
VXLAN, NOENCAP, BLACKHOLE = "vxlan", "noencap", "blackhole"  # route kinds (routetable.TargetType)


@dataclass(frozen=True)
class VxlanDevice:
    """vxlan.calico as it should be: VNI, UDP port, local (and parent) address, MAC, MTU,
    and its only address, the tunnel IP (as /32)."""

    vni: int
    port: int
    local: str
    mac: str
    mtu: int
    address: str
    name: str = VXLAN_DEVICE


@dataclass(frozen=True)
class Vtep:
    """A remote node's VXLAN tunnel endpoint."""

    node: str
    node_ip: str
    tunnel_ip: str
    mac: str


@dataclass(frozen=True)
class EncapRoute:
    """A route the VXLAN manager owns: ``vxlan`` (via the remote tunnel IP on vxlan.calico,
    onlink), ``noencap`` (via the remote node IP on the parent device, proto 80, onlink) or
    ``blackhole`` (proto 80)."""

    dst: str
    kind: str
    gateway: str | None = None
    node: str | None = None

    def render(self, parent: str = "<parent>") -> str:
        """``ip route`` text of the route."""
        if self.kind == BLACKHOLE:
            return f"blackhole {self.dst} proto {VXLAN_PROTO}"
        if self.kind == VXLAN:
            return f"{self.dst} via {self.gateway} dev {VXLAN_DEVICE} onlink"
        return f"{self.dst} via {self.gateway} dev {parent} proto {VXLAN_PROTO} onlink"


@dataclass(frozen=True)
class VxlanPlan:
    """Everything the VXLAN manager wants in the kernel. ``device`` None: no vxlan.calico
    (VXLAN off, or this node has no VTEP yet). ``routes``: dst -> route. ``waiting``: remote
    destinations that cannot be routed yet (the remote VTEP or node address is unknown)."""

    enabled: bool = False
    device: VxlanDevice | None = None
    parent_ip: str | None = None
    vteps: tuple[Vtep, ...] = ()
    routes: dict[str, EncapRoute] = field(default_factory=dict)
    waiting: tuple[str, ...] = ()

    @property
    def allowed_sources(self) -> frozenset[str]:
        """``cali40all-vxlan-net``: the remote VTEPs' node addresses."""
        return frozenset(v.node_ip for v in self.vteps)

    def neighbours(self) -> dict[str, str]:
        """Permanent ARP entries on vxlan.calico: remote tunnel IP -> VTEP MAC."""
        return {v.tunnel_ip: v.mac for v in self.vteps}

    def fdb(self) -> dict[str, str]:
        """FDB entries on vxlan.calico: VTEP MAC -> remote node IP."""
        return {v.mac: v.node_ip for v in self.vteps}


@dataclass
class Desired:
    """The whole desired dataplane of one node."""

    routes: dict[str, str] = field(default_factory=dict)  # "192.168.1.5/32" -> "cali1234..."
    interfaces: frozenset[str] = frozenset()  # workload interfaces (for the per-interface sysctls)
    ipsets: dict[str, IPSet] = field(default_factory=dict)
    tables: dict[str, TableState] = field(default_factory=dict)
    tunnel: TunnelWant | None = None
    ipip_sources: frozenset[str] = frozenset()  # node addresses allowed to send us IPIP
    mtu_file: int = 1500  # what /var/lib/calico/mtu should say
    interface_prefix: str = "cali"
    vxlan: VxlanPlan = field(default_factory=lambda: VxlanPlan())  # the VXLAN manager's device, VTEPs, routes


