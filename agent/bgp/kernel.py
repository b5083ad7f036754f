"""Kernel side: program ``proto bird`` (RTPROT_BIRD = 12) routes with pyroute2.

The driver runs in the network namespace of the thread that creates it (the speaker's
thread) and must be called from a plain thread, never from inside a running asyncio loop
(pyroute2's synchronous API runs its own loop): the speaker calls it through a dedicated
single-thread executor.
"""

from __future__ import annotations

import errno
import logging
from ipaddress import IPv4Address, IPv4Network

from agent.bgp.routes import RTPROT_BIRD, KernelRoute, NextHop

log = logging.getLogger(__name__)
RTNH_F_ONLINK = 4
RTN_UNICAST, RTN_BLACKHOLE = 1, 6


class RouteConflict(RuntimeError):
    """The destination already has a route we did not make."""


class KernelRoutes:
    """Diff-and-apply of the speaker's routes in the main table."""

    def __init__(self) -> None:
        from pyroute2 import IPRoute  # heavy import, only where the kernel is touched

        self.ipr = IPRoute()
        self._ifindex: dict[str, int] = {}
        self._ifname: dict[int, str] = {}
        self.errors: list[str] = []                     # history (last 20)
        self.failing: dict[IPv4Network, str] = {}      # prefixes failing right now
        self.owned: set[IPv4Network] = set()           # our routes (proto bird) in the table

    def close(self) -> None:
        """Release the netlink socket."""
        self.ipr.close()

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

    def _hop_args(self, h: NextHop) -> dict:
        args: dict = {"gateway": str(h.gateway)}
        if h.device:
            args["oif"] = self._index(h.device)
        if h.onlink:
            args["flags"] = RTNH_F_ONLINK
        return args

    def install(self, route: KernelRoute) -> None:
        """Add one route, or replace it if it is ours. A route to the same destination
        from anyone else (the connected subnet, Felix, an admin) is never replaced: that
        raises RouteConflict."""
        dst = str(route.prefix)
        op = "replace" if route.prefix in self.owned else "add"
        if route.blackhole:
            args: dict = {"type": "blackhole"}
        elif len(route.nexthops) == 1:
            args = self._hop_args(route.nexthops[0])
        else:
            args = {"multipath": [self._hop_args(h) for h in route.nexthops]}
        try:
            self.ipr.route(op, dst=dst, proto=RTPROT_BIRD, **args)
        except Exception as exc:
            if op == "add" and getattr(exc, "code", None) == errno.EEXIST:
                raise RouteConflict(f"{dst} is already in the kernel from another source; "
                                    f"not replacing it") from None
            raise
        self.owned.add(route.prefix)

    def remove(self, prefix: IPv4Network) -> None:
        """Delete our route for a prefix (absent is fine)."""
        if prefix not in self.owned:
            return  # never delete someone else's route to the same destination
        try:
            self.ipr.route("del", dst=str(prefix), proto=RTPROT_BIRD)
        except Exception as exc:  # noqa: BLE001 - ESRCH/ENOENT: already gone
            if "No such process" not in str(exc) and "ESRCH" not in str(exc) and getattr(
                    exc, "code", None) not in (3, 2):
                raise
        self.owned.discard(prefix)

    def apply(self, changes: dict[IPv4Network, KernelRoute | None]) -> set[IPv4Network]:
        """Install/replace routes (value) or remove them (None). Failures (e.g. tunl0 not
        created yet) are logged, kept in ``errors`` and returned for a later retry; they do
        not stop the other changes."""
        failed: set[IPv4Network] = set()
        for prefix, route in changes.items():
            try:
                if route is None:
                    self.remove(prefix)
                else:
                    self.install(route)
                self.failing.pop(prefix, None)
            except Exception as exc:  # noqa: BLE001 - report and continue with the others
                failed.add(prefix)
                msg = f"kernel route {prefix}: {exc}"
                self._ifindex.clear()  # a device may have been re-created
                self._ifname.clear()
                if self.failing.get(prefix) != msg:  # log a failure once, not every retry
                    log.warning(msg)
                    self.errors = (self.errors + [msg])[-20:]
                self.failing[prefix] = msg
        return failed

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
