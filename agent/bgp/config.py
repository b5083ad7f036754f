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
    originate: tuple[tuple[IPv4Network, bool], ...] = ()  # (prefix, blackhole?)
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
