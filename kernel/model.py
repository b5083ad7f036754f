"""What the kernel holds and what callers ask of it, as plain data (no I/O).

Objects read from the kernel: :class:`Link`, :class:`Addr`, :class:`Route`
(with :class:`NextHop` for multipath), :class:`Neigh` (ARP entries and, with
family :data:`AF_BRIDGE`, FDB entries). Link kinds we create: :class:`Veth`,
:class:`Vxlan`, :class:`Ipip`, :class:`Bridge`, :class:`Tun`. Operations:
:class:`LinkAdd`, :class:`LinkSet`, :class:`LinkDel`, :class:`AddrAdd`,
:class:`AddrDel`, :class:`RouteAdd`, :class:`RouteDel`, :class:`NeighAdd`,
:class:`NeighDel`; :mod:`kernel.rtnl` turns them into rtnetlink requests and
:class:`kernel.fake.FakeKernel` interprets them.

Addresses are strings (``"10.0.0.1"``, destinations ``"10.0.0.0/24"``), interfaces
are referred to by index, as rtnetlink does. Objects read from the kernel are frozen
(hashable); link kinds and operations are plain dataclasses, which are cheaper to
define (the CNI executable imports this module on every exec).
"""

from __future__ import annotations

import errno as _errno
import os
import socket
from dataclasses import dataclass, field
from typing import Any

AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6
AF_BRIDGE = 7

IFF_UP = 0x1
IFF_NOARP = 0x80
IFF_LOWER_UP = 0x10000

RT_TABLE_MAIN, RT_TABLE_LOCAL = 254, 255
RTPROT_UNSPEC, RTPROT_KERNEL, RTPROT_BOOT, RTPROT_STATIC, RTPROT_BIRD = 0, 2, 3, 4, 12
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_HOST, RT_SCOPE_NOWHERE = 0, 253, 254, 255
RTN_UNICAST, RTN_LOCAL, RTN_BROADCAST, RTN_BLACKHOLE, RTN_UNREACHABLE, RTN_PROHIBIT = 1, 2, 3, 6, 7, 8
RTNH_F_DEAD, RTNH_F_PERVASIVE, RTNH_F_ONLINK, RTNH_F_OFFLOAD, RTNH_F_LINKDOWN = 1, 2, 4, 8, 16

NUD_INCOMPLETE, NUD_REACHABLE, NUD_STALE, NUD_NOARP, NUD_PERMANENT = 0x01, 0x02, 0x04, 0x40, 0x80
NTF_USE, NTF_SELF, NTF_MASTER, NTF_EXT_LEARNED = 0x01, 0x02, 0x04, 0x10

VXLAN_PORT = 4789


class KernelError(OSError):
    """The kernel (or the fake) refused an operation; names the object and the reason.

    ``errno`` is the kernel's error number, ``what`` the object (``"route 10.0.0.0/24
    via 172.30.0.11 dev tunl0 onlink"``), ``detail`` the kernel's extended-ack text
    when it sent one.
    """

    def __init__(self, code: int, what: str, detail: str | None = None) -> None:
        reason = os.strerror(code) if code else "error"
        super().__init__(code, f"{what}: {reason}" + (f" ({detail})" if detail else ""))
        self.what = what
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:
        return (KernelError, (self.errno, self.what, self.detail))


# ----------------------------------------------------------------------------- objects


@dataclass(frozen=True)
class Link:
    """A network interface as the kernel reports it.

    ``parent`` is IFLA_LINK (a veth's peer index, a tunnel's lower device); ``info``
    the kind's parsed IFLA_INFO_DATA, e.g. ``{"vni": 4096, "port": 4789, "local":
    "10.0.0.1", "learning": False, "dev": 2}`` for vxlan, ``{"type": "tun",
    "persist": True, "vnet_hdr": True, "pi": False}`` for a TUN.
    """

    index: int
    name: str
    kind: str = ""
    mtu: int = 0
    flags: int = 0
    mac: str = ""
    txqlen: int = 0
    master: int = 0
    parent: int = 0
    link_netnsid: int | None = None
    operstate: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def up(self) -> bool:
        """IFF_UP is set (administratively up)."""
        return bool(self.flags & IFF_UP)


@dataclass(frozen=True)
class Addr:
    """An address on an interface (``ip addr``)."""

    index: int
    address: str
    prefixlen: int
    family: int = AF_INET
    scope: int = RT_SCOPE_UNIVERSE
    flags: int = 0
    label: str = ""

    @property
    def cidr(self) -> str:
        """``address/prefixlen``."""
        return f"{self.address}/{self.prefixlen}"


@dataclass(frozen=True, order=True)
class NextHop:
    """One next hop: gateway (None for a device hop), interface index, onlink, weight (1..256)."""

    gateway: str | None = None
    oif: int = 0
    onlink: bool = False
    weight: int = 1
    flags: int = 0  # other RTNH_F_* bits the kernel reported (dead, linkdown)


@dataclass(frozen=True)
class Route:
    """A route: unicast (one next hop in ``oif``/``gateway`` or several in ``nexthops``),
    blackhole/unreachable/prohibit (``type``), in ``table`` with ``protocol`` and ``scope``.

    ``dst`` is a CIDR string (``"0.0.0.0/0"`` for default). ``priority`` is the metric
    (None: not given). ``flags`` keeps the kernel's other RTM/RTNH flags as reported.
    """

    dst: str
    oif: int = 0
    gateway: str | None = None
    onlink: bool = False
    table: int = RT_TABLE_MAIN
    protocol: int = RTPROT_BOOT
    scope: int = RT_SCOPE_UNIVERSE
    type: int = RTN_UNICAST
    prefsrc: str | None = None
    priority: int | None = None
    nexthops: tuple[NextHop, ...] = ()
    family: int = AF_INET
    tos: int = 0
    flags: int = 0

    @property
    def network(self) -> str:
        """Destination address without the length."""
        return self.dst.partition("/")[0]

    @property
    def dst_len(self) -> int:
        """Destination prefix length."""
        return int(self.dst.partition("/")[2] or (32 if self.family == AF_INET else 128))

    def hops(self) -> tuple[NextHop, ...]:
        """The next hops, single-path routes as a one-element tuple (empty for blackholes)."""
        if self.nexthops:
            return self.nexthops
        if self.oif or self.gateway:
            return (NextHop(self.gateway, self.oif, self.onlink),)
        return ()


@dataclass(frozen=True)
class Neigh:
    """A neighbour entry: ARP (family AF_INET: ``dst`` -> ``lladdr``) or an FDB entry
    (family AF_BRIDGE: ``lladdr`` -> remote ``dst``, ``flags`` NTF_SELF for a vxlan
    device's own table)."""

    index: int
    dst: str | None = None
    lladdr: str | None = None
    family: int = AF_INET
    state: int = NUD_PERMANENT
    flags: int = 0
    vni: int | None = None
    port: int | None = None
    master: int | None = None


# ----------------------------------------------------------------------------- link kinds


@dataclass
class Veth:
    """A veth pair; the peer is made directly in ``peer_netns`` (a netns fd, or a kernel
    handle: the real one passes its namespace's fd, the fake its peer fake) if given.

    ``queues``: transmit and receive queues of each end (``numtxqueues``/``numrxqueues``; 0:
    the kernel's default, one per possible CPU, of which the kernel then leaves one active:
    reducing them waits for an RCU grace period while the device is registered, under the
    RTNL lock every other link, address and route change on the machine waits for)."""

    name: str
    peer: str
    mtu: int = 0
    mac: str | None = None
    peer_mac: str | None = None
    peer_netns: Any = None
    queues: int = 0
    kind = "veth"


@dataclass
class Vxlan:
    """A VXLAN device (Felix's vxlan.calico: VNI 4096, port 4789, local = node IP,
    ``dev`` = the parent's index, learning off)."""

    name: str
    vni: int
    port: int = VXLAN_PORT
    local: str | None = None
    dev: int = 0
    learning: bool = False
    mtu: int = 0
    mac: str | None = None
    kind = "vxlan"


@dataclass
class Ipip:
    """An IPIP tunnel device (``ip link add NAME type ipip [local] [remote] [dev]``)."""

    name: str
    local: str | None = None
    remote: str | None = None
    dev: int = 0
    ttl: int = 0
    pmtudisc: bool = True
    mtu: int = 0
    kind = "ipip"


@dataclass
class Bridge:
    """A Linux bridge; ``forward_delay`` (centiseconds) and ``stp_state`` (0: off) are sent
    when given (``ip link add NAME type bridge forward_delay 0 stp_state 0``)."""

    name: str
    mtu: int = 0
    mac: str | None = None
    forward_delay: int | None = None
    stp_state: int | None = None
    kind = "bridge"


@dataclass
class Tun:
    """A persistent TUN device (made with /dev/net/tun: rtnetlink cannot create TUNs)."""

    name: str
    kind = "tun"


LinkSpec = Veth | Vxlan | Ipip | Bridge | Tun


# ----------------------------------------------------------------------------- operations


def _dev(index: int, names: dict[int, str]) -> str:
    return names.get(index) or f"#{index}"


@dataclass
class LinkAdd:
    """Create a link (``spec`` is one of the kinds above)."""

    spec: Any

    def describe(self, names: dict[int, str]) -> str:
        """``"vxlan link vxlan.calico"``."""
        return f"{self.spec.kind} link {self.spec.name}"


@dataclass
class LinkSet:
    """Change a link: up/down, MTU, MAC, txqlen, name, master (0: none), netns (an fd),
    ARP on/off (``arp=False`` sets IFF_NOARP, as ``ip link set X arp off``)."""

    index: int
    up: bool | None = None
    mtu: int | None = None
    mac: str | None = None
    txqlen: int | None = None
    name: str | None = None
    master: int | None = None
    netns_fd: int | None = None
    arp: bool | None = None

    def describe(self, names: dict[int, str]) -> str:
        """``"link cali12 (set up mtu 1480)"``."""
        parts = [k if k != "up" else ("up" if v else "down")
                 for k, v in (("up", self.up), ("mtu", self.mtu), ("address", self.mac),
                              ("txqlen", self.txqlen), ("name", self.name), ("master", self.master),
                              ("netns", self.netns_fd)) if v is not None]
        if self.arp is not None:
            parts.append("arp on" if self.arp else "arp off")
        return f"link {_dev(self.index, names)} (set {' '.join(parts)})"


@dataclass
class LinkDel:
    """Delete a link (a veth takes its peer with it)."""

    index: int

    def describe(self, names: dict[int, str]) -> str:
        """``"link cali12 (delete)"``."""
        return f"link {_dev(self.index, names)} (delete)"


@dataclass
class AddrAdd:
    """Add an address (fails with EEXIST if present)."""

    addr: Addr

    def describe(self, names: dict[int, str]) -> str:
        """``"address 10.0.0.1/32 dev eth0"``."""
        return f"address {self.addr.cidr} dev {_dev(self.addr.index, names)}"


@dataclass
class AddrDel:
    """Remove an address."""

    addr: Addr

    def describe(self, names: dict[int, str]) -> str:
        """``"address 10.0.0.1/32 dev eth0 (delete)"``."""
        return f"address {self.addr.cidr} dev {_dev(self.addr.index, names)} (delete)"


def describe_route(r: Route, names: dict[int, str]) -> str:
    """iproute2-like text of a route, devices by name where known."""
    kind = {RTN_BLACKHOLE: "blackhole ", RTN_UNREACHABLE: "unreachable ", RTN_PROHIBIT: "prohibit "}
    s = f"route {kind.get(r.type, '')}{r.dst}"
    if r.nexthops:
        for h in r.nexthops:
            s += " nexthop" + (f" via {h.gateway}" if h.gateway else "") + (
                f" dev {_dev(h.oif, names)}" if h.oif else "") + (" onlink" if h.onlink else "")
    else:
        s += (f" via {r.gateway}" if r.gateway else "") + (f" dev {_dev(r.oif, names)}" if r.oif else "")
        s += " onlink" if r.onlink else ""
    if r.table != RT_TABLE_MAIN:
        s += f" table {r.table}"
    return s


@dataclass
class RouteAdd:
    """Add a route (EEXIST if one with the same key exists), or with ``replace`` add-or-replace."""

    route: Route
    replace: bool = False

    def describe(self, names: dict[int, str]) -> str:
        """``"route 10.0.0.0/24 via 1.2.3.4 dev eth0"``."""
        return describe_route(self.route, names)


@dataclass
class RouteDel:
    """Delete the route matching ``route``'s destination and table, and its protocol,
    next hop (oif/gateway) and type where given (ESRCH if none matches)."""

    route: Route

    def describe(self, names: dict[int, str]) -> str:
        """``"route 10.0.0.0/24 dev eth0 (delete)"``."""
        return describe_route(self.route, names) + " (delete)"


def describe_neigh(n: Neigh, names: dict[int, str]) -> str:
    """``neigh 10.0.0.2 lladdr ... dev x`` or ``fdb <mac> dst <ip> dev x``."""
    if n.family == AF_BRIDGE:
        return f"fdb {n.lladdr} dst {n.dst} dev {_dev(n.index, names)}"
    ll = f" lladdr {n.lladdr}" if n.lladdr else ""
    return f"neigh {n.dst}{ll} dev {_dev(n.index, names)}"


@dataclass
class NeighAdd:
    """Add a neighbour/FDB entry, or with ``replace`` (the default) add-or-replace."""

    neigh: Neigh
    replace: bool = True

    def describe(self, names: dict[int, str]) -> str:
        """See :func:`describe_neigh`."""
        return describe_neigh(self.neigh, names)


@dataclass
class NeighDel:
    """Remove a neighbour/FDB entry."""

    neigh: Neigh

    def describe(self, names: dict[int, str]) -> str:
        """See :func:`describe_neigh`."""
        return describe_neigh(self.neigh, names) + " (delete)"


Op = LinkAdd | LinkSet | LinkDel | AddrAdd | AddrDel | RouteAdd | RouteDel | NeighAdd | NeighDel

# errnos a delete treats as "already gone"
GONE = (_errno.ESRCH, _errno.ENOENT, _errno.ENODEV, _errno.EADDRNOTAVAIL)
