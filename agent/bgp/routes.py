"""Pure computation of the kernel routes the speaker wants (BIRD's kernel protocol + Calico's
``calico_kernel_programming`` filter + ``krt_tunnel``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from ipaddress import IPv4Address, IPv4Network

from agent.bgp import prefix as PF
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
    """A route as ``ip route`` shows it: blackhole, or unicast via one or more next hops.

    ``prefix`` (an IPv4Network or a prefix key) is for display only and takes no part in
    equality: the speaker keys routes by prefix and shares one KernelRoute between every
    prefix routed the same way."""

    prefix: IPv4Network | int | None = field(default=None, compare=False)
    blackhole: bool = False
    nexthops: tuple[NextHop, ...] = ()

    def render(self, prefix: IPv4Network | int | None = None) -> str:
        """iproute2-like text, e.g. '192.168.1.0/26 via 172.30.0.11 dev tunl0 proto bird onlink'."""
        p = self.prefix if prefix is None else prefix
        p = PF.text(p) if isinstance(p, int) else p
        if self.blackhole:
            return f"blackhole {p} proto bird"
        if len(self.nexthops) == 1:
            h = self.nexthops[0]
            dev = f" dev {h.device}" if h.device else ""
            return f"{p} via {h.gateway}{dev} proto bird" + (" onlink" if h.onlink else "")
        hops = " ".join(f"nexthop {_hop(h)}" for h in self.nexthops)
        return f"{p} proto bird {hops}"


def _hop(h: NextHop) -> str:
    s = f"via {h.gateway}"
    if h.device:
        s += f" dev {h.device}"
    if h.onlink:
        s += " onlink"
    return s


@lru_cache(maxsize=64)
def _pools(policy: KernelPolicy) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...],
                                          int | None]:
    """The policy's pools and subnet as prefix keys (computed once per policy)."""
    return (tuple(map(PF.of, policy.ipip_pools)), tuple(map(PF.of, policy.cross_subnet_pools)),
            tuple(map(PF.of, policy.reject_pools)),
            PF.of(policy.local_subnet) if policy.local_subnet is not None else None)


def pool_class(prefix: int | IPv4Network, policy: KernelPolicy) -> int:
    """0 plain, 1 IPIP Always, 2 CrossSubnet, 3 rejected (VXLAN): what the filter does."""
    key = PF.of(prefix)
    ipip, cross, reject, _subnet = _pools(policy)
    if reject and PF.within(key, reject):
        return 3
    if ipip and PF.within(key, ipip):
        return 1
    if cross and PF.within(key, cross):
        return 2
    return 0


def _hop_for(cls: int, gateway: IPv4Address, policy: KernelPolicy) -> NextHop:
    if cls == 1:
        return NextHop(gateway, policy.tunnel_device, True)
    if cls == 2:
        subnet = _pools(policy)[3]
        if subnet is not None and PF.address_in(int(gateway), subnet):
            return NextHop(gateway)
        return NextHop(gateway, policy.tunnel_device, True)
    return NextHop(gateway)


def next_hop_for(prefix: int | IPv4Network, gateway: IPv4Address,
                 policy: KernelPolicy) -> NextHop:
    """Tunnel or direct, following the pool's IPIP mode."""
    return _hop_for(pool_class(prefix, policy), gateway, policy)


def route_for(cls: int, paths: tuple[Path, ...] | list[Path], policy: KernelPolicy,
              prefix: int | IPv4Network) -> KernelRoute | None:
    """The kernel route for a Loc-RIB entry of ``prefix`` (pool class ``cls``), with no
    prefix attached: the speaker shares it between prefixes routed the same way. Next hops
    come from :func:`next_hop_for` (the one place that decides tunnel or direct)."""
    if not paths or not policy.program or cls == 3:
        return None  # VXLAN pools: Felix programs those, blackholes included
    best = paths[0]
    if best.source == LOCAL:
        return KernelRoute(blackhole=True) if best.blackhole else None
    hops = sorted({next_hop_for(prefix, p.next_hop, policy) for p in paths if p.next_hop})
    if not hops:
        return None
    return KernelRoute(nexthops=tuple(hops))


def kernel_route(prefix: int | IPv4Network, paths: tuple[Path, ...] | list[Path],
                 policy: KernelPolicy) -> KernelRoute | None:
    """The kernel route for a Loc-RIB entry (best path first, then ECMP paths), or None."""
    r = route_for(pool_class(prefix, policy), paths, policy, prefix)
    return None if r is None else KernelRoute(prefix, r.blackhole, r.nexthops)
