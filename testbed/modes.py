"""Calico's network modes as a user observes them on a node (pure).

A pool's mode is its ``ipipMode`` and ``vxlanMode`` (calico.md sections 2, 7, 9):

* IPIP (Always, CrossSubnet): the BGP speaker routes remote blocks ``via <node IP> dev
  tunl0 proto bird onlink`` (CrossSubnet: ``via <node IP> dev eth0 proto bird`` inside the
  subnet); the wire carries IP protocol 4;
* VXLAN (Always, CrossSubnet): Felix routes them ``via <remote VXLAN tunnel IP> dev
  vxlan.calico onlink`` (CrossSubnet: ``via <node IP> dev eth0 proto 80 onlink`` inside
  the subnet); the wire carries UDP 4789, VNI 4096, the VTEP MACs and the pod packet;
* neither (no encapsulation): BGP routes them ``via <node IP> dev eth0 proto bird``; the
  wire carries the pod packet itself.

:func:`expected_route` is what ``ip route`` on a node must show for a remote block, and
:func:`dataplane_problems` compares a node's routes and links with that, naming what is
missing (``calicolab status`` reports such a node as degraded).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

ON = ("Always", "CrossSubnet")
TUNL0, VXLAN_DEV = "tunl0", "vxlan.calico"


@dataclass(frozen=True)
class Mode:
    """A pool's encapsulation: its ``ipipMode`` and ``vxlanMode``."""

    ipip: str = "Never"
    vxlan: str = "Never"

    @classmethod
    def of_pool(cls, spec: Mapping[str, object]) -> Mode:
        """From an IPPool spec as calicoctl prints it (``ipipMode``, ``vxlanMode``)."""
        return cls(str(spec.get("ipipMode") or "Never"), str(spec.get("vxlanMode") or "Never"))

    @property
    def encap(self) -> str | None:
        """"vxlan", "ipip" or None (no encapsulation); VXLAN wins, as in Felix."""
        if self.vxlan in ON:
            return "vxlan"
        if self.ipip in ON:
            return "ipip"
        return None

    @property
    def cross_subnet(self) -> bool:
        """Encapsulate only towards nodes of another subnet."""
        return (self.vxlan if self.encap == "vxlan" else self.ipip) == "CrossSubnet"

    @property
    def device(self) -> str | None:
        """The tunnel device the mode needs on every node (None without encapsulation)."""
        return {"vxlan": VXLAN_DEV, "ipip": TUNL0}.get(self.encap or "")

    @property
    def name(self) -> str:
        """``IPIP Always``, ``VXLAN CrossSubnet``, ``no encapsulation`` (as the diagram says)."""
        if self.encap == "vxlan":
            return f"VXLAN {self.vxlan}"
        if self.encap == "ipip":
            return f"IPIP {self.ipip}"
        return "no encapsulation"


@dataclass(frozen=True)
class NodeInfo:
    """What a node's Calico Node says: its address with prefix, tunnel addresses, VTEP MAC."""

    name: str
    address: str  # "172.30.0.11/24" (a bare address counts as /32)
    ipip_tunnel: str | None = None
    vxlan_tunnel: str | None = None
    vxlan_mac: str | None = None

    @property
    def ip(self) -> str:
        """The address without its prefix."""
        return self.address.split("/")[0]

    @property
    def subnet(self) -> IPv4Network:
        """The node's subnet (the prefix of ``spec.bgp.ipv4Address``)."""
        return ipaddress.IPv4Interface(self.address).network

    @classmethod
    def of_node(cls, doc: Mapping[str, object]) -> NodeInfo:
        """From a Calico Node as calicoctl prints it (JSON)."""
        spec = doc.get("spec") or {}
        assert isinstance(spec, dict)
        bgp = spec.get("bgp") or {}
        meta = doc.get("metadata") or {}
        assert isinstance(meta, dict) and isinstance(bgp, dict)
        return cls(str(meta.get("name", "")), str(bgp.get("ipv4Address") or ""), bgp.get("ipv4IPIPTunnelAddr"),
                   spec.get("ipv4VXLANTunnelAddr"), spec.get("vxlanTunnelMACAddr"))  # type: ignore[arg-type]


def encapsulated(mode: Mode, me: NodeInfo, other: NodeInfo) -> bool:
    """Whether traffic from ``me`` to ``other``'s pods is encapsulated in ``mode``."""
    if mode.encap is None:
        return False
    if not mode.cross_subnet:
        return True
    try:
        return IPv4Address(other.ip) not in me.subnet
    except ValueError:
        return True


@dataclass(frozen=True)
class RouteWant:
    """The route a node needs to a remote block: gateway, device (None: the uplink, any
    non-tunnel device), protocol as ``ip route`` names it, onlink."""

    gateway: str
    device: str | None
    proto: str | None
    onlink: bool

    def text(self, dst: str = "", uplink: str = "eth0") -> str:
        """``ip route`` text, e.g. ``192.168.2.0/24 via 192.168.2.0 dev vxlan.calico onlink``."""
        parts = ([dst] if dst else []) + [f"via {self.gateway}", f"dev {self.device or uplink}"]
        if self.proto:
            parts.append(f"proto {self.proto}")
        if self.onlink:
            parts.append("onlink")
        return " ".join(parts)


def expected_route(mode: Mode, me: NodeInfo, other: NodeInfo) -> RouteWant | None:
    """The route ``me`` needs to a block of ``other`` (None: not known yet, e.g. VXLAN
    without the other's tunnel address)."""
    enc = encapsulated(mode, me, other)
    if mode.encap == "vxlan":
        if enc:
            return RouteWant(other.vxlan_tunnel, VXLAN_DEV, None, True) if other.vxlan_tunnel else None
        return RouteWant(other.ip, None, "80", True)
    if mode.encap == "ipip" and enc:
        return RouteWant(other.ip, TUNL0, "bird", True)
    return RouteWant(other.ip, None, "bird", False)


@dataclass(frozen=True)
class KernelRoute:
    """A route read from a node: destination, gateway, device name, blackhole or not."""

    dst: str
    gateway: str | None = None
    device: str | None = None
    blackhole: bool = False


def _pool_of(block: IPv4Network, pools: Mapping[str, Mode]) -> Mode | None:
    best: tuple[int, Mode] | None = None
    for cidr, mode in pools.items():
        net = IPv4Network(cidr)
        if block.subnet_of(net) and (best is None or net.prefixlen > best[0]):
            best = (net.prefixlen, mode)
    return best[1] if best else None


def dataplane_problems(me: str, nodes: Mapping[str, NodeInfo], pools: Mapping[str, Mode],
                       blocks: Mapping[str, str], routes: Iterable[KernelRoute],
                       links: Iterable[str]) -> list[str]:
    """What ``me`` lacks for the pools' modes: a tunnel device the mode needs (or its
    tunnel address), and a route covering every block affine to another node, through the
    device the mode says. ``blocks``: block CIDR -> node; ``routes``: the node's main table;
    ``links``: its interface names. Each problem names the node and what is missing."""
    info = nodes.get(me)
    if info is None:
        return [f"{me}: no Calico Node"]
    have_links = set(links)
    out: list[str] = []
    needed = {m.device: m for m in pools.values() if m.device}
    for dev, mode in sorted(needed.items()):
        addr = info.ipip_tunnel if dev == TUNL0 else info.vxlan_tunnel
        field = "spec.bgp.ipv4IPIPTunnelAddr" if dev == TUNL0 else "spec.ipv4VXLANTunnelAddr"
        if not addr:
            out.append(f"{me}: no {mode.encap.upper() if mode.encap else ''} tunnel address ({field}) for "
                       f"{mode.name}")
        elif dev not in have_links:
            out.append(f"{me}: tunnel device {dev} is missing ({mode.name})")
    table = {r.dst: r for r in routes}
    for cidr, owner in sorted(blocks.items(), key=lambda kv: IPv4Network(kv[0])):
        if owner == me or owner not in nodes:
            continue
        net = IPv4Network(cidr)
        mode = _pool_of(net, pools)
        if mode is None:
            continue
        r = table.get(str(net))
        if r is None or r.blackhole:
            out.append(f"{me}: no route to {net} ({owner}'s block, {mode.name})")
            continue
        want = expected_route(mode, info, nodes[owner])
        if want is None:
            continue
        tunnels = {TUNL0, VXLAN_DEV}
        wrong_dev = (want.device is not None and r.device != want.device) or (
            want.device is None and r.device in tunnels)
        if wrong_dev or (r.gateway is not None and r.gateway != want.gateway):
            out.append(f"{me}: {net} ({owner}'s block) goes via {r.gateway or '-'} dev {r.device or '-'}; "
                       f"{mode.name} needs {want.text(uplink='<uplink>')}")
    return out
