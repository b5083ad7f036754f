"""Pure computation of the kernel routes the speaker wants (BIRD's kernel protocol + Calico's
``calico_kernel_programming`` filter + ``krt_tunnel``)."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from agent.bgp.config import KernelPolicy
from agent.bgp.rib import LOCAL, Path

RTPROT_BIRD = 12


@dataclass(frozen=True, order=True)
class NextHop:
    """One next hop: gateway, optional device (None: kernel resolves), onlink flag."""

    gateway: IPv4Address
    device: str | None = None
    onlink: bool = False


@dataclass(frozen=True)
class KernelRoute:
    """A route as ``ip route`` shows it: blackhole, or unicast via one or more next hops."""

    prefix: IPv4Network
    blackhole: bool = False
    nexthops: tuple[NextHop, ...] = ()

    def render(self) -> str:
        """iproute2-like text, e.g. '192.168.1.0/26 via 172.30.0.11 dev tunl0 proto bird onlink'."""
        if self.blackhole:
            return f"blackhole {self.prefix} proto bird"
        if len(self.nexthops) == 1:
            h = self.nexthops[0]
            dev = f" dev {h.device}" if h.device else ""
            return f"{self.prefix} via {h.gateway}{dev} proto bird" + (" onlink" if h.onlink else "")
        hops = " ".join(f"nexthop {_hop(h)}" for h in self.nexthops)
        return f"{self.prefix} proto bird {hops}"


def _hop(h: NextHop) -> str:
    s = f"via {h.gateway}"
    if h.device:
        s += f" dev {h.device}"
    if h.onlink:
        s += " onlink"
    return s


def _in(prefix: IPv4Network, pools: tuple[IPv4Network, ...]) -> bool:
    return any(prefix.subnet_of(p) for p in pools)


def next_hop_for(prefix: IPv4Network, gateway: IPv4Address, policy: KernelPolicy) -> NextHop:
    """Tunnel or direct, following the pool's IPIP mode."""
    if _in(prefix, policy.ipip_pools):
        return NextHop(gateway, policy.tunnel_device, True)
    if _in(prefix, policy.cross_subnet_pools):
        if policy.local_subnet is not None and gateway in policy.local_subnet:
            return NextHop(gateway)
        return NextHop(gateway, policy.tunnel_device, True)
    return NextHop(gateway)


def kernel_route(prefix: IPv4Network, paths: list[Path], policy: KernelPolicy) -> KernelRoute | None:
    """The kernel route for a Loc-RIB entry (best path first, then ECMP paths), or None."""
    if not paths or not policy.program:
        return None
    best = paths[0]
    if _in(prefix, policy.reject_pools):
        return None  # VXLAN pools: Felix programs those, blackholes included
    if best.source == LOCAL:
        return KernelRoute(prefix, blackhole=True) if best.blackhole else None
    hops = sorted({next_hop_for(prefix, p.next_hop, policy) for p in paths if p.next_hop})
    if not hops:
        return None
    return KernelRoute(prefix, nexthops=tuple(hops))
