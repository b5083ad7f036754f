"""The kernel handle's interface, shared by the real one (:class:`kernel.netlink.Netlink`)
and the in-memory one (:class:`kernel.fake.FakeKernel`).

Subclasses implement the primitives (:meth:`Kernel.submit`, the dumps, sysctls);
the conveniences (``route_add``, ``link``, ``do``...) are written once here on top.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Sequence
from typing import Any

from kernel.model import (
    AF_BRIDGE,
    AF_INET,
    RT_TABLE_MAIN,
    Addr,
    AddrAdd,
    AddrDel,
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
    Vxlan,
)


class Kernel:
    """One network namespace's kernel state: links, addresses, routes, neighbours, sysctls."""

    # -- primitives -----------------------------------------------------------------------
    def submit(self, ops: Sequence[Any]) -> list[KernelError | None]:
        """Apply ``ops`` in order (batched where the transport allows); one result per op:
        None for success, else the :class:`KernelError` naming the object. Never raises for
        a refused op (every op is attempted)."""
        raise NotImplementedError

    def links(self, brief: bool = False) -> list[Link]:
        """Every link of the namespace; with ``brief`` only index, flags, name and MTU are
        read (the other fields may stay empty), which is cheaper on big dumps."""
        raise NotImplementedError

    def link(self, name: str) -> Link | None:
        """The link called ``name``, or None."""
        raise NotImplementedError

    def addrs(self, family: int = AF_INET) -> list[Addr]:
        """Every address of ``family``."""
        raise NotImplementedError

    def routes(self, table: int = RT_TABLE_MAIN, family: int = AF_INET, protocol: int | None = None) -> list[Route]:
        """Routes of ``table`` (0: every table), optionally only those of ``protocol``."""
        raise NotImplementedError

    def neighs(self, family: int = AF_INET) -> list[Neigh]:
        """Neighbour entries of ``family`` (AF_BRIDGE: the FDB)."""
        raise NotImplementedError

    def route_get(self, dst: str) -> Route | None:
        """The route the kernel picks towards ``dst`` (``ip route get``), or None if unreachable."""
        raise NotImplementedError

    def sysctl_get(self, key: str) -> str | None:
        """Value of ``/proc/sys/<key>`` (slashed key, e.g. ``net/ipv4/ip_forward``) in this
        namespace, None if it does not exist."""
        raise NotImplementedError

    def sysctl_set(self, key: str, value: str) -> None:
        """Write ``/proc/sys/<key>`` in this namespace (KernelError ENOENT if it does not exist)."""
        raise NotImplementedError

    def tun_open(self, name: str, vnet_hdr: bool = True, persist: bool = True) -> int:
        """An fd attached to the TUN ``name`` (created, persistent unless told, if absent)."""
        raise NotImplementedError

    def tx_checksum(self, name: str) -> bool:
        """Whether transmit checksum offload is on for link ``name`` (``ethtool -k``
        tx-checksumming; KernelError ENODEV if there is no such link)."""
        raise NotImplementedError

    def set_tx_checksum(self, name: str, on: bool) -> None:
        """Turn transmit checksum offload of link ``name`` on or off (``ethtool -K NAME tx
        on|off``; Felix turns it off on vxlan.calico)."""
        raise NotImplementedError

    def subscribe(self, groups: int) -> Any:
        """A new handle on the same namespace subscribed to the multicast ``groups``
        (rtnl.RTMGRP_*): ``fileno()`` for poll, ``events()`` -> [(message type, object)],
        ``close()``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the handle."""

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- conveniences ---------------------------------------------------------------------
    def do(self, *ops: Any) -> None:
        """Apply ``ops``; raise the first error (after attempting them all)."""
        for res in self.submit(ops):
            if res is not None:
                raise res

    def check(self, ops: Sequence[Any], ignore: Iterable[int] = ()) -> list[KernelError | None]:
        """:meth:`submit`, with errors whose errno is in ``ignore`` turned into None."""
        skip = set(ignore)
        return [None if r is not None and r.errno in skip else r for r in self.submit(ops)]

    def link_by_index(self, index: int) -> Link | None:
        """The link with ``index``, or None."""
        for ln in self.links():
            if ln.index == index:
                return ln
        return None

    def index(self, name: str) -> int:
        """The index of link ``name`` (KernelError ENODEV naming it if absent)."""
        ln = self.link(name)
        if ln is None:
            raise KernelError(errno.ENODEV, f"link {name}")
        return ln.index

    def link_add(self, spec: Any) -> Link:
        """Create a link; returns it as the kernel reports it."""
        self.do(LinkAdd(spec))
        ln = self.link(spec.name)
        if ln is None:
            raise KernelError(errno.ENODEV, f"{spec.kind} link {spec.name}", "vanished right after creation")
        return ln

    def link_set(self, index: int, **changes: Any) -> None:
        """Change a link (see :class:`kernel.model.LinkSet` for the keywords)."""
        self.do(LinkSet(index, **changes))

    def link_del(self, index: int) -> None:
        """Delete a link."""
        self.do(LinkDel(index))

    def addr_add(self, index: int, cidr: str) -> None:
        """Add ``a.b.c.d/len`` to link ``index``."""
        self.do(AddrAdd(_addr(index, cidr)))

    def addr_del(self, index: int, cidr: str) -> None:
        """Remove ``a.b.c.d/len`` from link ``index``."""
        self.do(AddrDel(_addr(index, cidr)))

    def route_add(self, route: Route, replace: bool = False) -> None:
        """Add (or with ``replace`` add-or-replace) a route."""
        self.do(RouteAdd(route, replace))

    def route_del(self, route: Route) -> None:
        """Delete the route matching ``route``."""
        self.do(RouteDel(route))

    def neigh_add(self, neigh: Neigh, replace: bool = True) -> None:
        """Add (by default add-or-replace) a neighbour or FDB entry."""
        self.do(NeighAdd(neigh, replace))

    def neigh_del(self, neigh: Neigh) -> None:
        """Remove a neighbour or FDB entry."""
        self.do(NeighDel(neigh))

    def fdb(self) -> list[Neigh]:
        """The bridge-family neighbour table (FDB entries, e.g. a vxlan device's remote VTEPs)."""
        return self.neighs(AF_BRIDGE)

    def can_create(self, kind: str) -> bool:
        """Whether this kernel can make links of ``kind`` (probed once per handle by making
        and deleting a probe link)."""
        cache: dict[str, bool] = self.__dict__.setdefault("_can_create", {})
        if kind not in cache:
            cache[kind] = self._probe(kind)
        return cache[kind]

    def _probe(self, kind: str) -> bool:
        name = f"calprb{id(self) % 100000}"
        specs = {"ipip": Ipip(name), "vxlan": Vxlan(name, vni=1, port=4789)}
        if kind not in specs:
            raise ValueError(f"cannot probe for link kind {kind!r}")
        res = self.submit([LinkAdd(specs[kind])])[0]
        if res is None:
            ln = self.link(name)
            if ln is not None:
                self.submit([LinkDel(ln.index)])
            return True
        return res.errno == errno.EEXIST


def _addr(index: int, cidr: str) -> Addr:
    address, _, plen = cidr.partition("/")
    fam = 10 if ":" in address else AF_INET
    return Addr(index, address, int(plen) if plen else (32 if fam == AF_INET else 128), fam)
