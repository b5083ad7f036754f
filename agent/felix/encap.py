"""Encapsulation decisions and the VXLAN manager's desired kernel state (pure).

Follows calico.md sections 3 and 7 (``felix/calc/l3_route_resolver.go``,
``felix/calc/vxlan_resolver.go``, ``felix/dataplane/linux/vxlan_mgr.go``,
``int_dataplane.go determinePodMTU``):

* a pool's type is VXLAN when its ``vxlanMode`` is Always or CrossSubnet, else IPIP
  when its ``ipipMode`` is, else no encapsulation; CrossSubnet (either mode) sends
  to a node *in this node's subnet* (the prefix of ``spec.bgp.ipv4Address``)
  unencapsulated;
* VXLAN is on when FelixConfiguration ``vxlanEnabled`` says so, else when an
  enabled pool uses it; then Felix (not BGP) routes every remote block of a VXLAN
  pool: ``<block> via <remote tunnel IP> dev vxlan.calico onlink`` (protocol boot),
  or, CrossSubnet within the subnet, ``<block> via <remote node IP> dev <parent>
  proto 80 onlink``; blackholes its own blocks (``proto 80``); borrowed /32s of
  remote nodes are routed like blocks;
* one VTEP per remote node with an IPv4 address and a VXLAN tunnel address: a
  permanent ARP entry (tunnel IP -> VTEP MAC) and an FDB entry (VTEP MAC -> node
  IP) on vxlan.calico; the node IPs make ``cali40all-vxlan-net``;
* the VTEP MAC is ``Node.spec.vxlanTunnelMACAddr``, else ``0x66`` + sha1(node
  name)[0:5] (node1 -> 66:f9:37:c3:7e:94);
* the pod MTU (``/var/lib/calico/mtu``) is the smallest MTU of the enabled
  encapsulations, else the host's.
"""

from __future__ import annotations

import hashlib
import ipaddress
from ipaddress import IPv4Address, IPv4Network

from agent.felix.model import (
    BLACKHOLE,
    NOENCAP,
    VXLAN,
    VXLAN_DEVICE,
    VXLAN_PROTO,
    Block,
    EncapRoute,
    FelixInput,
    HostNode,
    Pool,
    Vtep,
    VxlanDevice,
    VxlanPlan,
)

__all__ = ["BLACKHOLE", "NOENCAP", "VXLAN", "VXLAN_DEVICE", "VXLAN_PROTO", "EncapRoute", "Vtep", "VxlanDevice",
           "VxlanPlan", "vtep_mac", "pool_type", "cross_subnet", "node_subnet", "same_subnet", "ipip_enabled",
           "vxlan_enabled", "ipip_mtu", "vxlan_mtu", "pod_mtu", "block_routes", "plan"]

IPIP_OVERHEAD = 20
VXLAN_OVERHEAD = 50
ENCAP_ON = ("Always", "CrossSubnet")


def vtep_mac(node: str) -> str:
    """The VTEP MAC Felix derives for ``node`` when its Node has no ``vxlanTunnelMACAddr``:
    ``0x66`` ('f') then the first five bytes of sha1(node name) (``vtepMACForHost``)."""
    digest = hashlib.sha1(node.encode()).digest()
    return ":".join(f"{b:02x}" for b in b"f" + digest[:5])


def pool_type(pool: Pool) -> str:
    """``"vxlan"``, ``"ipip"`` or ``"none"`` (no encapsulation), as ``poolTypeForPool``."""
    if pool.vxlan_mode in ENCAP_ON:
        return "vxlan"
    if pool.ipip_mode in ENCAP_ON:
        return "ipip"
    return "none"


def cross_subnet(pool: Pool) -> bool:
    """True when the pool encapsulates only across subnets (either mode CrossSubnet)."""
    return pool.ipip_mode == "CrossSubnet" or pool.vxlan_mode == "CrossSubnet"


def node_subnet(node: HostNode) -> IPv4Network | None:
    """The node's subnet: the prefix of ``spec.bgp.ipv4Address`` (a bare address is a /32,
    which makes CrossSubnet encapsulate towards every node, calico#1584)."""
    if not node.ipv4_address:
        return None
    try:
        return ipaddress.IPv4Interface(node.ipv4_address).network
    except ValueError:
        return None


def same_subnet(me: HostNode | None, other: HostNode | None) -> bool:
    """Whether ``other``'s address lies in ``me``'s subnet (``nodeInOurSubnet``); False when
    either is unknown."""
    if me is None or other is None or not other.ip:
        return False
    net = node_subnet(me)
    try:
        return net is not None and IPv4Address(other.ip) in net
    except ValueError:
        return False


def ipip_enabled(inp: FelixInput) -> bool:
    """IPIP is on when FelixConfiguration says so, else when any enabled pool uses it."""
    if inp.settings.ipip_enabled is not None:
        return inp.settings.ipip_enabled
    return any(p.ipip_mode in ENCAP_ON and not p.disabled for p in inp.pools)


def vxlan_enabled(inp: FelixInput) -> bool:
    """VXLAN is on when FelixConfiguration ``vxlanEnabled`` says so, else when any enabled
    pool has vxlanMode Always or CrossSubnet."""
    if inp.settings.vxlan_enabled is not None:
        return inp.settings.vxlan_enabled
    return any(p.vxlan_mode in ENCAP_ON and not p.disabled for p in inp.pools)


def ipip_mtu(inp: FelixInput) -> int:
    """tunl0's MTU: ``ipipMTU``, else host MTU - 20."""
    return inp.settings.ipip_mtu or inp.host_mtu - IPIP_OVERHEAD


def vxlan_mtu(inp: FelixInput) -> int:
    """vxlan.calico's MTU: ``vxlanMTU``, else host MTU - 50."""
    return inp.settings.vxlan_mtu or inp.host_mtu - VXLAN_OVERHEAD


def pod_mtu(inp: FelixInput) -> int:
    """What /var/lib/calico/mtu says: the smallest MTU of the enabled encapsulations, else
    the host MTU (``determinePodMTU``)."""
    mtus = [m for m, on in ((ipip_mtu(inp), ipip_enabled(inp)), (vxlan_mtu(inp), vxlan_enabled(inp))) if on]
    return min(mtus) if mtus else inp.host_mtu


# ---------------------------------------------------------------------------
# the VXLAN manager's desired state


def _enclosing_pool(net: IPv4Network, pools: list[tuple[IPv4Network, Pool]]) -> Pool | None:
    best: tuple[int, Pool] | None = None
    for cidr, pool in pools:
        if net.subnet_of(cidr) and (best is None or cidr.prefixlen > best[0]):
            best = (cidr.prefixlen, pool)
    return best[1] if best else None


def block_routes(blocks: tuple[Block, ...] | list[Block]) -> dict[str, str]:
    """Destination -> node: every block with a host affinity (the block-via-host route), and
    every address a block lends to another node (a borrowed /32, ``NonAffineAllocations``;
    tunnel addresses are not workload routes)."""
    out: dict[str, str] = {}
    for b in blocks:
        if b.node:
            out[b.cidr] = b.node
    for b in blocks:
        for ip, node in b.borrowed:
            if node and node != b.node:
                out.setdefault(f"{ip}/32", node)
    return out


def plan(inp: FelixInput) -> VxlanPlan:
    """The VXLAN manager's desired device, VTEPs, routes and blackholes for ``inp.hostname``."""
    if not vxlan_enabled(inp):
        return VxlanPlan()
    nodes = {n.name: n for n in inp.nodes}
    me = nodes.get(inp.hostname)
    s = inp.settings
    device = None
    if me is not None and me.ip and me.vxlan_tunnel_addr:
        device = VxlanDevice(vni=s.vxlan_vni, port=s.vxlan_port, local=me.ip,
                             mac=(me.vxlan_mac or vtep_mac(me.name)).lower(), mtu=vxlan_mtu(inp),
                             address=me.vxlan_tunnel_addr.split("/")[0])
    vteps = {n.name: Vtep(n.name, n.ip, n.vxlan_tunnel_addr.split("/")[0], (n.vxlan_mac or vtep_mac(n.name)).lower())
             for n in inp.nodes if n.name != inp.hostname and n.ip and n.vxlan_tunnel_addr}
    pools = [(IPv4Network(p.cidr), p) for p in inp.pools]
    routes: dict[str, EncapRoute] = {}
    waiting: list[str] = []
    for dst, node in sorted(block_routes(inp.blocks).items()):
        net = IPv4Network(dst)
        pool = _enclosing_pool(net, pools)
        if pool is None or pool_type(pool) != "vxlan":
            continue
        if node == inp.hostname:
            if net.prefixlen < 32:
                routes[dst] = EncapRoute(dst, BLACKHOLE)
            continue
        other = nodes.get(node)
        if cross_subnet(pool) and same_subnet(me, other):
            assert other is not None and other.ip
            routes[dst] = EncapRoute(dst, NOENCAP, other.ip, node)
        elif node in vteps:
            routes[dst] = EncapRoute(dst, VXLAN, vteps[node].tunnel_ip, node)
        else:
            waiting.append(dst)
    return VxlanPlan(True, device, me.ip if me is not None else None, tuple(sorted(vteps.values(), key=lambda v: v.node)),
                     routes, tuple(waiting))
