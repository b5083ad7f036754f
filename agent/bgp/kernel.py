"""Kernel side: program ``proto bird`` (RTPROT_BIRD = 12) routes through a kernel handle.

The driver is given its kernel (:class:`kernel.netlink.Netlink` bound to the node's netns,
or :class:`kernel.fake.FakeKernel` in unit tests); changes go to it in batches
(:meth:`kernel.base.Kernel.submit`: one send per up to 256 routes, one result per route).
The speaker calls it from its dedicated kernel thread so the event loop never blocks on
netlink.
"""

from __future__ import annotations

import errno
import logging
from ipaddress import IPv4Address

from agent.bgp import prefix as PF
from agent.bgp.routes import RTPROT_BIRD, KernelRoute, NextHop
from kernel import RTN_BLACKHOLE, Kernel, KernelError, Route, RouteAdd, RouteDel
from kernel import NextHop as KNextHop

log = logging.getLogger(__name__)


class RouteConflict(RuntimeError):
    """The destination already has a route we did not make."""


class KernelRoutes:
    """Diff-and-apply of the speaker's routes in the main table of ``kernel``."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self._ifindex: dict[str, int] = {}
        self._ifname: dict[int, str] = {}
        self.errors: list[str] = []                     # history (last 20)
        # prefixes are agent.bgp.prefix keys (ints), as everywhere in the speaker
        self.failing: dict[int, str] = {}              # prefixes failing right now
        self.owned: set[int] = set()                   # our routes (proto bird) in the table

    def close(self) -> None:
        """Nothing of its own to release (the kernel handle belongs to its creator)."""

    def _index(self, name: str) -> int:
        idx = self._ifindex.get(name)
        if idx is None:
            idx = self._ifindex[name] = self.kernel.index(name)  # KernelError ENODEV naming it
        return idx

    def _name(self, idx: int) -> str | None:
        if not idx:
            return None
        if idx not in self._ifname:
            self._ifname = {ln.index: ln.name for ln in self.kernel.links(brief=True)}
        return self._ifname.get(idx, str(idx))

    def dump(self) -> dict[int, KernelRoute]:
        """The ``proto bird`` IPv4 routes now in the main table."""
        out: dict[int, KernelRoute] = {}
        for r in self.kernel.routes(protocol=RTPROT_BIRD):
            prefix = PF.parse(r.dst)
            if r.type == RTN_BLACKHOLE:
                out[prefix] = KernelRoute(prefix, blackhole=True)
                continue
            hops = [NextHop(IPv4Address(h.gateway), self._name(h.oif), h.onlink) for h in r.hops() if h.gateway]
            out[prefix] = KernelRoute(prefix, nexthops=tuple(sorted(hops)))
        self.owned = set(out)
        return out

    def _op(self, prefix: int, route: KernelRoute | None) -> RouteAdd | RouteDel | None:
        """The kernel operation for one change (None: nothing to do, e.g. removing a route
        that is not ours). Raises KernelError for a missing device."""
        if route is None:
            if prefix not in self.owned:
                return None  # never delete someone else's route to the same destination
            return RouteDel(Route(PF.text(prefix), protocol=RTPROT_BIRD))
        dst = PF.text(prefix)
        if route.blackhole:
            r = Route(dst, protocol=RTPROT_BIRD, type=RTN_BLACKHOLE)
        elif len(route.nexthops) == 1:
            h = route.nexthops[0]
            r = Route(dst, oif=self._index(h.device) if h.device else 0, gateway=str(h.gateway),
                      onlink=h.onlink, protocol=RTPROT_BIRD)
        else:
            r = Route(dst, protocol=RTPROT_BIRD, nexthops=tuple(
                KNextHop(str(h.gateway), self._index(h.device) if h.device else 0, h.onlink)
                for h in route.nexthops))
        return RouteAdd(r, replace=prefix in self.owned)

    def apply(self, changes: dict[int, KernelRoute | None]) -> set[int]:
        """Install/replace routes (value) or remove them (None), in batches. A route to the
        same destination from anyone else (the connected subnet, Felix, an admin) is never
        replaced or deleted. Failures (e.g. tunl0 not created yet) are logged, kept in
        ``errors`` and returned for a later retry; they do not stop the other changes."""
        failed: set[int] = set()
        todo: list[tuple[int, KernelRoute | None]] = []
        ops: list[RouteAdd | RouteDel] = []
        for prefix, route in changes.items():
            try:
                op = self._op(prefix, route)
            except KernelError as exc:  # e.g. the device does not exist yet
                self._fail(failed, prefix, exc.strerror)
                continue
            if op is None:
                self.failing.pop(prefix, None)
                continue
            todo.append((prefix, route))
            ops.append(op)
        results = self.kernel.submit(ops) if ops else []
        for (prefix, route), err in zip(todo, results, strict=True):
            code = err.errno if err is not None else 0
            if route is None:
                if code in (0, errno.ESRCH, errno.ENOENT):
                    self.owned.discard(prefix)
                    self.failing.pop(prefix, None)
                else:
                    self._fail(failed, prefix, err.strerror)
            elif code == 0:
                self.owned.add(prefix)
                self.failing.pop(prefix, None)
            elif code == errno.EEXIST and prefix not in self.owned:
                self._fail(failed, prefix, f"{PF.text(prefix)} is already in the kernel from "
                                           "another source; not replacing it")
            else:
                self._fail(failed, prefix, err.strerror)
        return failed

    def _fail(self, failed: set[int], prefix: int, reason: str) -> None:
        failed.add(prefix)
        msg = f"kernel route {PF.text(prefix)}: {reason}"
        self._ifindex.clear()  # a device may have been re-created
        self._ifname.clear()
        if self.failing.get(prefix) != msg:  # log a failure once, not every retry
            log.warning(msg)
            self.errors = (self.errors + [msg])[-20:]
        self.failing[prefix] = msg

    def reconcile(self, desired: dict[int, KernelRoute]) -> set[int]:
        """Make the kernel's proto bird routes exactly ``desired``; returns the prefixes that failed."""
        actual = self.dump()
        changes: dict[int, KernelRoute | None] = {
            p: None for p in actual if p not in desired}
        changes.update({p: r for p, r in desired.items() if actual.get(p) != r})
        return self.apply(changes)

    def flush(self) -> None:
        """Remove every proto bird route (stop without graceful restart)."""
        self.apply({p: None for p in self.dump()})
