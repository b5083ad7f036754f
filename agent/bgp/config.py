"""The speaker's configuration as plain data (what confd computes, what BIRD's bird.cfg says)."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

from agent.bgp.fsm import Timers

MESH, GLOBAL, NODE = "node-to-node mesh", "global", "node specific"


@dataclass(frozen=True)
class PeerConfig:
    """One BGP neighbour (one BIRD ``protocol bgp``)."""

    name: str                      # Mesh_172_30_0_11, Global_10_0_0_1, Node_10_0_0_2
    address: IPv4Address
    asn: int
    peer_type: str = MESH          # MESH | GLOBAL | NODE (the node status PEER TYPE)
    port: int = 179
    passive: bool = False
    rr_client: bool = False
    keepalive: float | None = None
    graceful_restart_time: float | None = None
    multihop: bool = False


@dataclass(frozen=True)
class KernelPolicy:
    """How received routes reach the kernel (BIRD's calico_kernel_programming filter)."""

    ipip_pools: tuple[IPv4Network, ...] = ()          # ipipMode Always: via tunl0 onlink
    cross_subnet_pools: tuple[IPv4Network, ...] = ()  # tunl0 unless next hop is in our subnet
    reject_pools: tuple[IPv4Network, ...] = ()        # VXLAN pools: Felix programs those
    local_subnet: IPv4Network | None = None           # this node's ipv4Address prefix
    tunnel_device: str = "tunl0"
    program: bool = True                              # False: keep routes out of the kernel


@dataclass(frozen=True)
class SpeakerConfig:
    """Everything the speaker needs; confd produces one per node and datastore change."""

    router_id: IPv4Address
    local_as: int
    local_address: IPv4Address
    peers: tuple[PeerConfig, ...] = ()
    # (prefix, blackhole?); a prefix is an IPv4Network or an agent.bgp.prefix key (int),
    # which is what large configurations use (100k IPv4Network objects cost 0.2 s)
    originate: tuple[tuple[IPv4Network | int, bool], ...] = ()
    export_pools: tuple[IPv4Network, ...] = ()            # pools whose routes may be exported
    kernel: KernelPolicy = field(default_factory=KernelPolicy)
    cluster_id: IPv4Address | None = None
    listen_port: int = 179
    listen_address: str = "0.0.0.0"
    timers: Timers = field(default_factory=Timers)

    def validate(self) -> None:
        """Reject inconsistent configuration with a message naming the culprit."""
        self.timers.validate()
        names = [p.name for p in self.peers]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate peer name(s): {', '.join(sorted(dup))}")
        addrs = [(p.address, p.port) for p in self.peers]
        if len(set(addrs)) != len(addrs):
            raise ValueError("two peers share one address and port")
        if not 0 < self.local_as < 2 ** 32:
            raise ValueError(f"invalid local AS {self.local_as}")
        for p in self.peers:
            if not 0 < p.asn < 2 ** 32:
                raise ValueError(f"peer {p.name}: invalid AS {p.asn}")
            if p.address == self.local_address:
                raise ValueError(f"peer {p.name}: address {p.address} is our own")


def mesh_name(ip: IPv4Address | str) -> str:
    """Calico's mesh protocol name: Mesh_172_30_0_11."""
    return "Mesh_" + str(ip).replace(".", "_")


def passive_towards(my_ip: IPv4Address | str, peer_ip: IPv4Address | str) -> bool:
    """Calico's rule: ``passive on`` when the peer's address is the larger STRING."""
    return str(peer_ip) > str(my_ip)


def to_dict(cfg: SpeakerConfig) -> dict:
    """The configuration as JSON-able data (what ``python -m agent.bgp.runner -c`` reads)."""
    from agent.bgp import prefix

    def net(n: IPv4Network | int) -> str:
        return prefix.text(n) if isinstance(n, int) else str(n)

    k = cfg.kernel
    return {
        "router_id": str(cfg.router_id), "local_as": cfg.local_as,
        "local_address": str(cfg.local_address),
        "peers": [{**p.__dict__, "address": str(p.address)} for p in cfg.peers],
        "originate": [net(n) for n, bh in cfg.originate if bh],
        "originate_unicast": [net(n) for n, bh in cfg.originate if not bh],
        "export_pools": [str(p) for p in cfg.export_pools],
        "kernel": {"ipip_pools": [str(p) for p in k.ipip_pools],
                   "cross_subnet_pools": [str(p) for p in k.cross_subnet_pools],
                   "reject_pools": [str(p) for p in k.reject_pools],
                   "local_subnet": str(k.local_subnet) if k.local_subnet else None,
                   "tunnel_device": k.tunnel_device, "program": k.program},
        "cluster_id": str(cfg.cluster_id) if cfg.cluster_id else None,
        "listen_port": cfg.listen_port, "listen_address": cfg.listen_address,
        "timers": dict(cfg.timers.__dict__),
    }


def from_dict(d: dict) -> SpeakerConfig:
    """Inverse of :func:`to_dict`; unknown keys and bad values raise ValueError naming them.
    Originated prefixes become prefix keys (ints), the rest stdlib objects."""
    from agent.bgp import prefix

    known = {"router_id", "local_as", "local_address", "peers", "originate",
             "originate_unicast", "export_pools", "kernel", "cluster_id", "listen_port",
             "listen_address", "timers"}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"speaker config: unknown key(s) {', '.join(sorted(unknown))}")
    try:
        peers = []
        for p in d.get("peers", []):
            extra = set(p) - set(PeerConfig.__dataclass_fields__)
            if extra:
                raise ValueError(f"peer {p.get('name')}: unknown key(s) {', '.join(sorted(extra))}")
            peers.append(PeerConfig(**{**p, "address": IPv4Address(p["address"])}))
        k = d.get("kernel", {})
        kernel = KernelPolicy(
            ipip_pools=tuple(IPv4Network(x) for x in k.get("ipip_pools", ())),
            cross_subnet_pools=tuple(IPv4Network(x) for x in k.get("cross_subnet_pools", ())),
            reject_pools=tuple(IPv4Network(x) for x in k.get("reject_pools", ())),
            local_subnet=IPv4Network(k["local_subnet"]) if k.get("local_subnet") else None,
            tunnel_device=k.get("tunnel_device", "tunl0"), program=k.get("program", True))
        originate = tuple((prefix.parse(x), True) for x in d.get("originate", ())) + tuple(
            (prefix.parse(x), False) for x in d.get("originate_unicast", ()))
        cfg = SpeakerConfig(
            router_id=IPv4Address(d["router_id"]), local_as=int(d["local_as"]),
            local_address=IPv4Address(d["local_address"]), peers=tuple(peers),
            originate=originate,
            export_pools=tuple(IPv4Network(x) for x in d.get("export_pools", ())),
            kernel=kernel,
            cluster_id=IPv4Address(d["cluster_id"]) if d.get("cluster_id") else None,
            listen_port=int(d.get("listen_port", 179)),
            listen_address=d.get("listen_address", "0.0.0.0"),
            timers=Timers(**d.get("timers", {})))
    except KeyError as exc:
        raise ValueError(f"speaker config: missing {exc.args[0]}") from None
    except TypeError as exc:
        raise ValueError(f"speaker config: {exc}") from None
    cfg.validate()
    return cfg
