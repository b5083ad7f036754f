"""An in-memory kernel behind the same interface as :class:`kernel.netlink.Netlink`.

For unit tests of the logic above the kernel (Felix's route driver, the BGP kernel
sync, the CNI plumbing): it answers as the kernel does where that logic cares:

* links get the next free ifindex; names are unique (EEXIST); a kind this kernel
  lacks fails with EOPNOTSUPP (default: no ``ipip``, like the project's machine);
  a veth's peer may live in another FakeKernel and deleting either end deletes both;
  a vxlan device goes with its lower device;
  deleting a link (or taking it down) removes the routes through it, and deleting it
  removes its addresses and neighbours;
* an address on an up link adds its connected route (``proto kernel scope link``);
* routes: same (table, dst, tos, metric) -> EEXIST unless replacing; an unknown
  device -> ENODEV; a down device -> ENETDOWN; a gateway must lie in a connected
  (scope link) prefix of the device unless the hop is ``onlink`` -> ENETUNREACH (also
  for a gateway route given scope link); onlink without a device, or no next hop at
  all -> ENODEV; deleting a route that is not there -> ESRCH;
* neighbours and FDB entries (AF_BRIDGE), add/replace/delete (ENOENT if absent);
* sysctls: the per-interface keys appear and disappear with the interface.

``log`` lists every operation that succeeded, ``batches`` the size of every
:meth:`FakeKernel.submit` call, and ``fault`` (a callable op -> errno or None)
makes chosen operations fail, for back-off and retry tests.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kernel.base import Kernel
from kernel.model import (
    AF_BRIDGE,
    AF_INET,
    IFF_LOWER_UP,
    IFF_UP,
    RT_SCOPE_HOST,
    RT_SCOPE_LINK,
    RT_TABLE_MAIN,
    RTN_BLACKHOLE,
    RTN_PROHIBIT,
    RTN_UNICAST,
    RTN_UNREACHABLE,
    RTPROT_KERNEL,
    Addr,
    AddrAdd,
    AddrDel,
    Bridge,
    Ipip,
    KernelError,
    Link,
    LinkAdd,
    LinkDel,
    LinkSet,
    Neigh,
    NeighAdd,
    NeighDel,
    Route,
    RouteAdd,
    RouteDel,
    Tun,
    Veth,
    Vxlan,
)
from kernel.rtnl import RTM_DELADDR, RTM_NEWADDR, RTMGRP_IPV4_IFADDR

IFF_BROADCAST, IFF_POINTOPOINT, IFF_LOOPBACK, IFF_NOARP, IFF_MULTICAST = 0x2, 0x10, 0x8, 0x80, 0x1000
DEFAULT_KINDS = frozenset({"veth", "vxlan", "bridge", "tun"})
_macs = itertools.count(1)


class _Refused(Exception):
    def __init__(self, code: int, detail: str | None = None) -> None:
        super().__init__(code, detail)
        self.code, self.detail = code, detail


@dataclass
class _Link:
    index: int
    name: str
    kind: str
    mtu: int = 1500
    flags: int = IFF_BROADCAST | IFF_MULTICAST
    mac: str = ""
    txqlen: int = 1000
    master: int = 0
    parent: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    peer: tuple[FakeKernel, int] | None = None
    tx_csum: bool = True

    def view(self) -> Link:
        flags = self.flags | (IFF_LOWER_UP if self.flags & IFF_UP else 0)
        return Link(self.index, self.name, self.kind, self.mtu, flags, self.mac, self.txqlen, self.master,
                    self.parent, None, 6 if self.flags & IFF_UP else 2, dict(self.info))


def _mac() -> str:
    n = next(_macs)
    return f"02:00:00:{n >> 16 & 0xFF:02x}:{n >> 8 & 0xFF:02x}:{n & 0xFF:02x}"


class _Subscription:
    """A FakeKernel's event subscription: a queue plus a pipe whose read end polls readable
    while events wait (the shape of a subscribed netlink socket)."""

    def __init__(self, kernel: FakeKernel, groups: int) -> None:
        self.kernel, self.groups = kernel, groups
        self._queue: list[tuple[int, Any]] = []
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        self._lock = threading.Lock()

    def push(self, mtype: int, obj: Any) -> None:
        with self._lock:
            self._queue.append((mtype, obj))
            os.write(self._w, b"x")

    def fileno(self) -> int:
        return self._r

    def events(self) -> list[tuple[int, Any]]:
        """What waits, emptied (as one read of a netlink socket)."""
        with self._lock:
            out, self._queue = self._queue, []
            try:
                while os.read(self._r, 4096):
                    pass
            except BlockingIOError:
                pass
            return out

    def close(self) -> None:
        if self in self.kernel._subs:
            self.kernel._subs.remove(self)
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass


class FakeKernel(Kernel):
    """One fake network namespace. ``kinds``: the link kinds it can create."""

    def __init__(self, name: str = "fake", kinds: frozenset[str] | set[str] = DEFAULT_KINDS) -> None:
        self.name = name
        self.kinds = frozenset(kinds)
        self._next_index = 1
        self._links: dict[int, _Link] = {}
        self._addrs: list[Addr] = []
        self._routes: list[Route] = []
        self._neighs: list[Neigh] = []
        self.sysctls: dict[str, str] = {"net/ipv4/ip_forward": "0", "net/netfilter/nf_conntrack_acct": "0",
                                        "net/ipv4/conf/default/rp_filter": "0",
                                        "net/ipv4/conf/all/rp_filter": "0"}
        self.log: list[Any] = []
        self.batches: list[int] = []
        self.fault: Callable[[Any], int | None] | None = None
        self.closed = False
        self._subs: list[_Subscription] = []
        lo = self._new_link("lo", "", mtu=65536, flags=IFF_LOOPBACK | IFF_UP, mac="00:00:00:00:00:00")
        self._addrs.append(Addr(lo.index, "127.0.0.1", 8, scope=RT_SCOPE_HOST, label="lo"))
        if "ipip" in self.kinds:  # the ipip module makes the fallback tunl0 in every namespace
            self._new_link("tunl0", "ipip", mtu=1480, flags=IFF_NOARP, mac="")

    def __repr__(self) -> str:
        return f"FakeKernel({self.name})"

    # -- primitives -------------------------------------------------------------------------
    def submit(self, ops: Sequence[Any]) -> list[KernelError | None]:
        """Apply ``ops`` one by one; one result per op."""
        self.batches.append(len(ops))
        out: list[KernelError | None] = []
        for op in ops:
            try:
                code = self.fault(op) if self.fault is not None else None
                if code:
                    raise _Refused(code, "injected fault")
                self._apply(op)
            except _Refused as exc:
                out.append(KernelError(exc.code, op.describe(self._names()), exc.detail))
                continue
            self.log.append(op)
            out.append(None)
        return out

    def links(self, brief: bool = False) -> list[Link]:
        """Every link, by index (``brief`` changes nothing here)."""
        return [ln.view() for _, ln in sorted(self._links.items())]

    def link(self, name: str) -> Link | None:
        """The link called ``name``, or None."""
        ln = self._by_name(name)
        return ln.view() if ln else None

    def addrs(self, family: int = AF_INET) -> list[Addr]:
        """Every address of ``family``."""
        return [a for a in self._addrs if a.family == family]

    def routes(self, table: int = RT_TABLE_MAIN, family: int = AF_INET, protocol: int | None = None) -> list[Route]:
        """Routes of ``table`` (0: all), optionally of one protocol."""
        return [r for r in self._routes if r.family == family and (not table or r.table == table)
                and (protocol is None or r.protocol == protocol)]

    def neighs(self, family: int = AF_INET) -> list[Neigh]:
        """Neighbour (or, for AF_BRIDGE, FDB) entries."""
        return [n for n in self._neighs if n.family == family]

    def route_get(self, dst: str) -> Route | None:
        """Longest-prefix match in the main table (None: unreachable)."""
        ip = ipaddress.IPv4Address(dst)
        best = None
        for r in self._routes:
            net = ipaddress.IPv4Network(r.dst)
            if r.table == RT_TABLE_MAIN and ip in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, r)
        if best is None:
            return None
        r = best[1]
        if r.type != RTN_UNICAST:
            raise KernelError(errno.EINVAL, f"route to {dst}")
        src = r.prefsrc or next((a.address for a in self._addrs if a.index == r.oif), None)
        return Route(f"{dst}/32", oif=r.oif, gateway=r.gateway, prefsrc=src, protocol=0)

    def sysctl_get(self, key: str) -> str | None:
        """The fake /proc/sys value."""
        return self.sysctls.get(key)

    def sysctl_set(self, key: str, value: str) -> None:
        """Set an existing fake /proc/sys value (ENOENT otherwise)."""
        if key not in self.sysctls:
            raise KernelError(errno.ENOENT, f"sysctl {key}={value}")
        self.sysctls[key] = value

    def tun_open(self, name: str, vnet_hdr: bool = True, persist: bool = True) -> int:
        """The fake has no file descriptors to give (a TUN's packets need the real kernel)."""
        raise KernelError(errno.EOPNOTSUPP, f"tun link {name}", "the fake kernel has no TUN file descriptors")

    def tx_checksum(self, name: str) -> bool:
        """Transmit checksum offload of ``name`` (on unless turned off)."""
        ln = self._by_name(name)
        if ln is None:
            raise KernelError(errno.ENODEV, f"link {name} (ethtool)")
        return ln.tx_csum

    def set_tx_checksum(self, name: str, on: bool) -> None:
        """Turn transmit checksum offload of ``name`` on or off."""
        ln = self._by_name(name)
        if ln is None:
            raise KernelError(errno.ENODEV, f"link {name} (ethtool)")
        ln.tx_csum = on

    def subscribe(self, groups: int) -> _Subscription:
        """A subscription to ``groups`` (rtnl.RTMGRP_*): address changes made through
        :meth:`submit` arrive as (RTM_NEWADDR / RTM_DELADDR, Addr) with a readable ``fileno()``,
        as on a netlink socket (only RTMGRP_IPV4_IFADDR is modelled)."""
        sub = _Subscription(self, groups)
        self._subs.append(sub)
        return sub

    def _notify(self, group: int, mtype: int, obj: Any) -> None:
        for sub in self._subs:
            if sub.groups & group:
                sub.push(mtype, obj)

    def close(self) -> None:
        """Mark closed (state stays readable)."""
        self.closed = True

    # -- test helpers --------------------------------------------------------------------------
    def add_link(self, name: str, kind: str = "", *, mtu: int = 1500, up: bool = True, cidr: str | None = None) -> Link:
        """Set-up helper: a link (e.g. a node's eth0) bypassing kind checks, optionally up with an address."""
        ln = self._new_link(name, kind, mtu=mtu, mac=_mac())
        if up:
            self._set_up(ln, True)
        if cidr:
            self._apply(AddrAdd(Addr(ln.index, cidr.split("/")[0], int(cidr.split("/")[1]))))
        return ln.view()

    # -- semantics ------------------------------------------------------------------------------
    def _names(self) -> dict[int, str]:
        return {i: ln.name for i, ln in self._links.items()}

    def _by_name(self, name: str) -> _Link | None:
        for ln in self._links.values():
            if ln.name == name:
                return ln
        return None

    def _get(self, index: int) -> _Link:
        ln = self._links.get(index)
        if ln is None:
            raise _Refused(errno.ENODEV)
        return ln

    def _new_link(self, name: str, kind: str, **kw: Any) -> _Link:
        if self._by_name(name) is not None:
            raise _Refused(errno.EEXIST)
        if len(name) > 15:
            raise _Refused(errno.ERANGE, "Attribute failed policy validation")
        if not name or "/" in name or " " in name:
            raise _Refused(errno.EINVAL, f"bad interface name {name!r}")
        ln = _Link(self._next_index, name, kind, **kw)
        self._next_index += 1
        self._links[ln.index] = ln
        rp = self.sysctls.get("net/ipv4/conf/default/rp_filter", "0")
        self.sysctls.update({
            f"net/ipv4/conf/{name}/forwarding": self.sysctls["net/ipv4/ip_forward"],
            f"net/ipv4/conf/{name}/proxy_arp": "0", f"net/ipv4/conf/{name}/route_localnet": "0",
            f"net/ipv4/conf/{name}/rp_filter": rp, f"net/ipv4/neigh/{name}/proxy_delay": "80",
            f"net/ipv6/conf/{name}/accept_ra": "1"})
        return ln

    def _drop_sysctls(self, name: str) -> None:
        for key in [k for k in self.sysctls if f"/{name}/" in k]:
            del self.sysctls[key]

    def _apply(self, op: Any) -> None:
        handler = {LinkAdd: self._link_add, LinkSet: self._link_set, LinkDel: self._link_del,
                   AddrAdd: self._addr_add, AddrDel: self._addr_del, RouteAdd: self._route_add,
                   RouteDel: self._route_del, NeighAdd: self._neigh_add, NeighDel: self._neigh_del}.get(type(op))
        if handler is None:
            raise TypeError(f"not a kernel operation: {op!r}")
        handler(op)

    # links
    def _link_add(self, op: LinkAdd) -> None:
        spec = op.spec
        if isinstance(spec, Tun):
            have = self._by_name(spec.name)
            if have is not None:
                if have.kind != "tun":
                    raise _Refused(errno.EINVAL, "exists and is not a TUN device")
                return  # attaching to a persistent TUN
        if spec.kind not in self.kinds:
            raise _Refused(errno.EOPNOTSUPP, f"unknown link kind {spec.kind}")
        if isinstance(spec, Veth):
            other = spec.peer_netns if spec.peer_netns is not None else self
            if not isinstance(other, FakeKernel):
                raise _Refused(errno.EINVAL, "a fake veth peer must live in a FakeKernel")
            if self._by_name(spec.name) is not None or other._by_name(spec.peer) is not None:
                raise _Refused(errno.EEXIST)
            a = self._new_link(spec.name, "veth", mtu=spec.mtu or 1500, mac=spec.mac or _mac())
            b = other._new_link(spec.peer, "veth", mtu=spec.mtu or 1500, mac=spec.peer_mac or _mac())
            a.peer, b.peer = (other, b.index), (self, a.index)
            a.parent, b.parent = b.index, a.index
        elif isinstance(spec, Vxlan):
            mtu = spec.mtu or 1450
            if spec.dev:
                mtu = spec.mtu or self._get(spec.dev).mtu - 50
            info = {"vni": spec.vni, "port": spec.port, "learning": spec.learning}
            if spec.local:
                info["local"] = spec.local
            if spec.dev:
                info["dev"] = spec.dev
            self._new_link(spec.name, "vxlan", mtu=mtu, mac=spec.mac or _mac(), info=info)
        elif isinstance(spec, Ipip):
            info = {k: v for k, v in (("local", spec.local), ("remote", spec.remote)) if v}
            self._new_link(spec.name, "ipip", mtu=spec.mtu or 1480, flags=IFF_NOARP, mac="", info=info)
        elif isinstance(spec, Bridge):
            self._new_link(spec.name, "bridge", mtu=spec.mtu or 1500, mac=spec.mac or _mac())
        elif isinstance(spec, Tun):
            self._new_link(spec.name, "tun", flags=IFF_POINTOPOINT | IFF_NOARP | IFF_MULTICAST, mac="",
                           txqlen=500, info={"type": "tun", "pi": False, "vnet_hdr": True, "persist": True})
        else:
            raise TypeError(f"not a link kind: {spec!r}")

    def _link_set(self, op: LinkSet) -> None:
        ln = self._get(op.index)
        if op.netns_fd is not None:
            raise _Refused(errno.EOPNOTSUPP, "the fake cannot move links between namespaces")
        if op.mtu is not None and not 68 <= op.mtu <= 65535:
            raise _Refused(errno.EINVAL, f"MTU {op.mtu} out of range")
        if op.name is not None and op.name != ln.name:
            if self._by_name(op.name) is not None:
                raise _Refused(errno.EEXIST)
            old = ln.name
            for key in [k for k in self.sysctls if f"/{old}/" in k]:
                self.sysctls[key.replace(f"/{old}/", f"/{op.name}/")] = self.sysctls.pop(key)
            ln.name = op.name
        if op.master is not None:
            if op.master and op.master not in self._links:
                raise _Refused(errno.ENODEV)
            ln.master = op.master
        if op.mtu is not None:
            ln.mtu = op.mtu
        if op.mac is not None:
            ln.mac = op.mac
        if op.txqlen is not None:
            ln.txqlen = op.txqlen
        if op.arp is not None:
            ln.flags = (ln.flags & ~IFF_NOARP) | (0 if op.arp else IFF_NOARP)
        if op.up is not None:
            self._set_up(ln, op.up)

    def _set_up(self, ln: _Link, up: bool) -> None:
        if bool(ln.flags & IFF_UP) == up:
            return
        if up:
            ln.flags |= IFF_UP
            for a in self._addrs:
                if a.index == ln.index:
                    self._connected(a, add=True)
        else:
            ln.flags &= ~IFF_UP
            self._routes = [r for r in self._routes if ln.index not in {h.oif for h in r.hops()}]

    def _link_del(self, op: LinkDel) -> None:
        ln = self._get(op.index)
        self._forget(ln)
        if ln.peer is not None:
            other, idx = ln.peer
            peer = other._links.get(idx)
            if peer is not None:
                other._forget(peer)

    def _forget(self, ln: _Link) -> None:
        del self._links[ln.index]
        for upper in [x for x in self._links.values() if x.kind == "vxlan" and x.info.get("dev") == ln.index]:
            self._forget(upper)  # a vxlan device goes with its lower device
        self._addrs = [a for a in self._addrs if a.index != ln.index]
        self._routes = [r for r in self._routes if ln.index not in {h.oif for h in r.hops()}]
        self._neighs = [n for n in self._neighs if n.index != ln.index]
        self._drop_sysctls(ln.name)

    # addresses
    def _addr_add(self, op: AddrAdd) -> None:
        a = op.addr
        ln = self._get(a.index)
        if any((x.index, x.address, x.prefixlen) == (a.index, a.address, a.prefixlen) for x in self._addrs):
            raise _Refused(errno.EEXIST)
        a = replace(a, label=a.label or ln.name)
        self._addrs.append(a)
        if ln.flags & IFF_UP:
            self._connected(a, add=True)
        self._notify(RTMGRP_IPV4_IFADDR, RTM_NEWADDR, a)

    def _addr_del(self, op: AddrDel) -> None:
        a = op.addr
        for x in self._addrs:
            if (x.index, x.address, x.prefixlen) == (a.index, a.address, a.prefixlen):
                self._addrs.remove(x)
                self._connected(x, add=False)
                self._notify(RTMGRP_IPV4_IFADDR, RTM_DELADDR, x)
                return
        raise _Refused(errno.EADDRNOTAVAIL)

    def _connected(self, a: Addr, add: bool) -> None:
        if a.family != AF_INET or a.prefixlen >= 32:
            return
        net = str(ipaddress.IPv4Interface(a.cidr).network)
        route = Route(net, oif=a.index, protocol=RTPROT_KERNEL, scope=RT_SCOPE_LINK, prefsrc=a.address)
        self._routes = [r for r in self._routes if r != route]
        if add:
            self._routes.append(route)

    # routes
    @staticmethod
    def _key(r: Route) -> tuple[Any, ...]:
        return (r.family, r.table, str(ipaddress.ip_network(r.dst, strict=False)), r.tos, r.priority or 0)

    def _route_add(self, op: RouteAdd) -> None:
        r = op.route
        try:
            net = ipaddress.ip_network(r.dst)
        except ValueError:
            raise _Refused(errno.EINVAL, f"bad destination {r.dst!r}") from None
        r = replace(r, dst=str(net))
        if r.type == RTN_UNICAST:
            hops = r.hops()
            if not hops:
                raise _Refused(errno.ENODEV, "a unicast route needs a device or a gateway")
            resolved = [self._check_hop(h, r) for h in hops]  # the kernel fills in the gateway's device
            if r.nexthops:
                r = replace(r, nexthops=tuple(replace(h, oif=oif) for h, oif in zip(r.nexthops, resolved, strict=True)))
            else:
                r = replace(r, oif=resolved[0])
        elif r.type in (RTN_BLACKHOLE, RTN_UNREACHABLE, RTN_PROHIBIT):
            if r.hops():
                raise _Refused(errno.EINVAL, "a blackhole route has no next hop")
        key = self._key(r)
        for i, have in enumerate(self._routes):
            if self._key(have) == key:
                if not op.replace:
                    raise _Refused(errno.EEXIST)
                self._routes[i] = r
                return
        self._routes.append(r)

    def _check_hop(self, h: Any, r: Route) -> int:
        """Refuse a hop the kernel refuses; returns its device index."""
        ln = self._links.get(h.oif) if h.oif else None
        if h.oif and ln is None:
            raise _Refused(errno.ENODEV)
        if h.gateway is None:
            if ln is None:
                raise _Refused(errno.EINVAL, "a device route needs a device")
            if not ln.flags & IFF_UP:
                raise _Refused(errno.ENETDOWN, "Nexthop device is not up")
            return h.oif
        if h.onlink:
            if ln is None:
                raise _Refused(errno.ENODEV, "Nexthop device required for onlink")
            if not ln.flags & IFF_UP:
                raise _Refused(errno.ENETDOWN, "Nexthop device is not up")
            return h.oif
        gw = ipaddress.IPv4Address(h.gateway)
        if r.scope >= RT_SCOPE_LINK:  # the gateway lookup then only sees host routes
            raise _Refused(errno.ENETUNREACH, "Nexthop has invalid gateway")
        for have in self._routes:
            if (have.table == RT_TABLE_MAIN and have.type == RTN_UNICAST and have.scope >= RT_SCOPE_LINK
                    and not have.gateway and gw in ipaddress.IPv4Network(have.dst)
                    and (not h.oif or have.oif == h.oif) and self._links[have.oif].flags & IFF_UP):
                return have.oif
        raise _Refused(errno.ENETUNREACH, "Nexthop has invalid gateway")

    def _route_del(self, op: RouteDel) -> None:
        want = op.route
        key = self._key(want)
        for have in self._routes:
            if self._key(have)[:4] != key[:4]:
                continue
            if want.priority is not None and (have.priority or 0) != want.priority:
                continue
            if want.type not in (0, RTN_UNICAST) and have.type != want.type:
                continue
            if want.protocol and have.protocol != want.protocol:
                continue
            first = have.hops()[0] if have.hops() else None
            if want.oif and (first is None or first.oif != want.oif):
                continue
            if want.gateway and (first is None or first.gateway != want.gateway):
                continue
            self._routes.remove(have)
            return
        raise _Refused(errno.ESRCH)

    # neighbours
    @staticmethod
    def _nkey(n: Neigh) -> tuple[Any, ...]:
        if n.family == AF_BRIDGE:
            return (AF_BRIDGE, n.index, n.lladdr, n.dst)
        return (n.family, n.index, n.dst)

    def _neigh_add(self, op: NeighAdd) -> None:
        n = op.neigh
        self._get(n.index)
        if n.family != AF_BRIDGE and (not n.dst or not n.lladdr):
            raise _Refused(errno.EINVAL, "a neighbour needs an address and a link-layer address")
        key = self._nkey(n)
        for i, have in enumerate(self._neighs):
            if self._nkey(have) == key:
                if not op.replace:
                    raise _Refused(errno.EEXIST)
                self._neighs[i] = n
                return
        self._neighs.append(n)

    def _neigh_del(self, op: NeighDel) -> None:
        key = self._nkey(op.neigh)
        for have in self._neighs:
            if self._nkey(have) == key:
                self._neighs.remove(have)
                return
        raise _Refused(errno.ENOENT)
