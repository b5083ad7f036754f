"""Kernel side: program ``proto bird`` (RTPROT_BIRD = 12) routes.

Changes go to the kernel in netlink batches (one send per up to 256 routes, one errno
back per route, :class:`agent.felix.netlink.Netlink`); pyroute2 is used only for dumps
and interface lookups. The driver runs in the network namespace of the thread that
creates it (the speaker's thread) and must be called from a plain thread, never from
inside a running asyncio loop (pyroute2's synchronous API runs its own loop): the
speaker calls it through a dedicated single-thread executor.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from ipaddress import IPv4Address, IPv4Network

from agent.bgp.routes import RTPROT_BIRD, KernelRoute, NextHop
from agent.felix.netlink import Netlink

log = logging.getLogger(__name__)
RTNH_F_ONLINK = 4
RTN_UNICAST, RTN_BLACKHOLE = 1, 6
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_MULTIPATH, RTA_TABLE = 1, 4, 5, 9, 15
RT_SCOPE_UNIVERSE, RT_SCOPE_NOWHERE = 0, 255
MAIN_TABLE = 254
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTNH = struct.Struct("=HBBi")


class RouteConflict(RuntimeError):
    """The destination already has a route we did not make."""


class KernelRoutes:
    """Diff-and-apply of the speaker's routes in the main table."""

    def __init__(self) -> None:
        from pyroute2 import IPRoute  # heavy import, only where the kernel is touched

        self.ipr = IPRoute()
        self.nl = Netlink()
        self._ifindex: dict[str, int] = {}
        self._ifname: dict[int, str] = {}
        self.errors: list[str] = []                     # history (last 20)
        self.failing: dict[IPv4Network, str] = {}      # prefixes failing right now
        self.owned: set[IPv4Network] = set()           # our routes (proto bird) in the table

    def close(self) -> None:
        """Release the netlink sockets."""
        self.ipr.close()
        self.nl.close()

    def _index(self, name: str) -> int:
        idx = self._ifindex.get(name)
        if idx is None:
            found = self.ipr.link_lookup(ifname=name)
            if not found:
                raise LookupError(f"device {name!r} does not exist")
            idx = found[0]
            self._ifindex[name] = idx
        return idx

    def _name(self, idx: int | None) -> str | None:
        if idx is None:
            return None
        if idx not in self._ifname:
            links = self.ipr.get_links(idx)
            self._ifname[idx] = links[0].get("IFLA_IFNAME") if links else str(idx)
        return self._ifname[idx]

    def dump(self) -> dict[IPv4Network, KernelRoute]:
        """The ``proto bird`` IPv4 routes now in the main table."""
        out: dict[IPv4Network, KernelRoute] = {}
        for r in self.ipr.route("dump", family=2, proto=RTPROT_BIRD, table=254):
            prefix = IPv4Network(f"{r.get('dst') or '0.0.0.0'}/{r['dst_len']}")
            if r["type"] == RTN_BLACKHOLE:
                out[prefix] = KernelRoute(prefix, blackhole=True)
                continue
            hops = []
            mp = r.get("multipath")
            if mp:
                for h in mp:
                    gw = dict(h["attrs"]).get("RTA_GATEWAY")
                    if gw:
                        hops.append(NextHop(IPv4Address(gw), self._name(h.get("oif")),
                                            bool(h["flags"] & RTNH_F_ONLINK)))
            elif r.get("gateway"):
                hops.append(NextHop(IPv4Address(r.get("gateway")), self._name(r.get("oif")),
                                    bool(r["flags"] & RTNH_F_ONLINK)))
            out[prefix] = KernelRoute(prefix, nexthops=tuple(sorted(hops)))
        self.owned = set(out)
        return out

    def _request(self, prefix: IPv4Network, route: KernelRoute | None) -> tuple[int, int, bytes] | None:
        """The netlink request for one change (None: nothing to do, e.g. removing a route
        that is not ours). Raises LookupError for a missing device."""
        dst = socket.inet_aton(str(prefix.network_address))
        attrs = _attr(RTA_DST, dst) + _attr(RTA_TABLE, struct.pack("=I", MAIN_TABLE))
        if route is None:
            if prefix not in self.owned:
                return None  # never delete someone else's route to the same destination
            body = _RTMSG.pack(socket.AF_INET, prefix.prefixlen, 0, 0, MAIN_TABLE, RTPROT_BIRD,
                               RT_SCOPE_NOWHERE, 0, 0)
            return RTM_DELROUTE, 0, body + attrs
        flags = NLM_F_CREATE | (NLM_F_REPLACE if prefix in self.owned else NLM_F_EXCL)
        rtype, rflags = RTN_UNICAST, 0
        if route.blackhole:
            rtype = RTN_BLACKHOLE
        elif len(route.nexthops) == 1:
            h = route.nexthops[0]
            attrs += _attr(RTA_GATEWAY, socket.inet_aton(str(h.gateway)))
            if h.device:
                attrs += _attr(RTA_OIF, struct.pack("=i", self._index(h.device)))
            rflags = RTNH_F_ONLINK if h.onlink else 0
        else:
            hops = b""
            for h in route.nexthops:
                gw = _attr(RTA_GATEWAY, socket.inet_aton(str(h.gateway)))
                idx = self._index(h.device) if h.device else 0
                hops += _RTNH.pack(_RTNH.size + len(gw), RTNH_F_ONLINK if h.onlink else 0, 0, idx) + gw
            attrs += _attr(RTA_MULTIPATH, hops)
        body = _RTMSG.pack(socket.AF_INET, prefix.prefixlen, 0, 0, MAIN_TABLE, RTPROT_BIRD,
                           RT_SCOPE_UNIVERSE, rtype, rflags)
        return RTM_NEWROUTE, flags, body + attrs

    def apply(self, changes: dict[IPv4Network, KernelRoute | None]) -> set[IPv4Network]:
        """Install/replace routes (value) or remove them (None), in netlink batches. A route
        to the same destination from anyone else (the connected subnet, Felix, an admin) is
        never replaced or deleted. Failures (e.g. tunl0 not created yet) are logged, kept in
        ``errors`` and returned for a later retry; they do not stop the other changes."""
        failed: set[IPv4Network] = set()
        todo: list[tuple[IPv4Network, KernelRoute | None]] = []
        reqs: list[tuple[int, int, bytes]] = []
        for prefix, route in changes.items():
            try:
                req = self._request(prefix, route)
            except Exception as exc:  # noqa: BLE001 - e.g. the device does not exist yet
                self._fail(failed, prefix, str(exc))
                continue
            if req is None:
                self.failing.pop(prefix, None)
                continue
            todo.append((prefix, route))
            reqs.append(req)
        results = self.nl.batch(reqs) if reqs else []
        for (prefix, route), code in zip(todo, results, strict=True):
            if route is None:
                if code in (0, errno.ESRCH, errno.ENOENT):
                    self.owned.discard(prefix)
                    self.failing.pop(prefix, None)
                else:
                    self._fail(failed, prefix, os.strerror(code))
            elif code == 0:
                self.owned.add(prefix)
                self.failing.pop(prefix, None)
            elif code == errno.EEXIST and prefix not in self.owned:
                self._fail(failed, prefix, f"{prefix} is already in the kernel from another source; "
                                           "not replacing it")
            else:
                self._fail(failed, prefix, os.strerror(code))
        return failed

    def _fail(self, failed: set[IPv4Network], prefix: IPv4Network, reason: str) -> None:
        failed.add(prefix)
        msg = f"kernel route {prefix}: {reason}"
        self._ifindex.clear()  # a device may have been re-created
        self._ifname.clear()
        if self.failing.get(prefix) != msg:  # log a failure once, not every retry
            log.warning(msg)
            self.errors = (self.errors + [msg])[-20:]
        self.failing[prefix] = msg

    def reconcile(self, desired: dict[IPv4Network, KernelRoute]) -> None:
        """Make the kernel's proto bird routes exactly ``desired``."""
        actual = self.dump()
        changes: dict[IPv4Network, KernelRoute | None] = {
            p: None for p in actual if p not in desired}
        changes.update({p: r for p, r in desired.items() if actual.get(p) != r})
        self.apply(changes)

    def flush(self) -> None:
        """Remove every proto bird route (stop without graceful restart)."""
        self.apply({p: None for p in self.dump()})


def _attr(kind: int, data: bytes) -> bytes:
    length = 4 + len(data)
    return struct.pack("=HH", length, kind) + data + b"\0" * ((-length) % 4)
