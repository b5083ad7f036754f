"""Plain data for Felix: its inputs (what the datastore says) and its outputs (desired dataplane)."""

from __future__ import annotations

from dataclasses import dataclass, field

# ---------------------------------------------------------------------------
# Inputs (built from datastore resources by agent.felix.convert)


@dataclass(frozen=True)
class Endpoint:
    """A local workload endpoint: its host interface, /32s and profiles."""

    key: str  # "<namespace>/<name>"
    iface: str
    ips: tuple[str, ...]  # "192.168.1.5/32"
    profiles: tuple[str, ...] = ()


@dataclass(frozen=True)
class Pool:
    """An IP pool as Felix uses it."""

    cidr: str
    ipip_mode: str = "Never"
    nat_outgoing: bool = False
    disabled: bool = False


@dataclass(frozen=True)
class HostNode:
    """A Calico node: name, BGP address (CIDR or bare IP) and IPIP tunnel address."""

    name: str
    ipv4_address: str | None = None
    tunnel_addr: str | None = None

    @property
    def ip(self) -> str | None:
        """The node address without its prefix length."""
        return self.ipv4_address.split("/")[0] if self.ipv4_address else None


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


@dataclass(frozen=True)
class FelixInput:
    """Everything the calculation needs."""

    hostname: str
    endpoints: tuple[Endpoint, ...] = ()
    nodes: tuple[HostNode, ...] = ()
    pools: tuple[Pool, ...] = ()
    settings: FelixSettings = field(default_factory=FelixSettings)
    host_mtu: int = 1500


# ---------------------------------------------------------------------------
# Outputs


@dataclass(frozen=True)
class Chain:
    """An iptables chain: name and rule bodies (without ``-A <chain>`` and without the hash comment)."""

    name: str
    rules: tuple[str, ...]


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
        self.chains[name] = Chain(name, tuple(rules))


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


