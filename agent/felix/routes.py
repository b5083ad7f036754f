"""Route driver: the /32 of each local workload to its cali interface, and no other route on cali*.

Routes are ``<ip>/32 dev caliXXXX scope link`` with protocol boot (3), as the
CNI plugin and Felix (DeviceRouteProtocol) make them. Routes on interfaces
with the workload prefix that are not desired are removed (RemoveExternalRoutes).
Remote blocks and blackholes belong to the BGP speaker and are never touched.
Changes go to the kernel handle the driver is given (:mod:`kernel`), in batches.
"""

from __future__ import annotations

import errno
import logging

from kernel import RT_SCOPE_LINK, RT_TABLE_MAIN, RTPROT_BOOT, Kernel, Route, RouteAdd, RouteDel

log = logging.getLogger(__name__)


class RouteDriver:
    """Keeps workload routes in the main table of ``kernel``'s namespace."""

    def __init__(self, kernel: Kernel, prefix: str = "cali") -> None:
        self.kernel = kernel
        self.prefix = prefix
        self._links: dict[str, int] = {}
        self._actual: dict[str, str] | None = None  # dst/len -> ifname (routes on prefix ifaces)
        self._last_desired: dict[str, str] = {}

    def refresh_links(self) -> dict[str, int]:
        """Re-read the interfaces with our prefix: {name: index}."""
        self._links = {ln.name: ln.index for ln in self.kernel.links(brief=True) if ln.name.startswith(self.prefix)}
        return self._links

    def read(self) -> dict[str, str]:
        """Routes on interfaces with our prefix: {"ip/len": ifname}; refreshes link and route caches."""
        names = {idx: name for name, idx in self.refresh_links().items()}
        self._actual = {r.dst: names[r.oif] for r in self.kernel.routes(RT_TABLE_MAIN) if r.oif in names}
        return self._actual

    def apply(self, desired: dict[str, str], resync: bool = False) -> tuple[int, list[str]]:
        """Make the routes match; returns (changes made, interfaces missing so routes wait for them)."""
        if resync or self._actual is None:
            self.read()
        actual = self._actual
        assert actual is not None
        dels = [dst for dst, ifname in sorted(actual.items()) if desired.get(dst) != ifname]
        prev = self._last_desired
        self._last_desired = dict(desired)
        # Newly desired routes are always (re)written: their link may have been re-made meanwhile.
        adds = [(dst, ifname) for dst, ifname in desired.items()
                if not (actual.get(dst) == ifname and prev.get(dst) == ifname)]
        if any(ifname not in self._links for _, ifname in adds):
            self.refresh_links()
        missing = sorted({ifname for _, ifname in adds if ifname not in self._links})
        adds = [(dst, ifname) for dst, ifname in adds if ifname in self._links]
        ops: list[RouteAdd | RouteDel] = [
            RouteDel(Route(dst, oif=self._links.get(actual[dst], 0), protocol=0)) for dst in dels]
        ops += [RouteAdd(Route(dst, oif=self._links[ifname], scope=RT_SCOPE_LINK, protocol=RTPROT_BOOT),
                         replace=True) for dst, ifname in adds]
        results = self.kernel.submit(ops) if ops else []
        for dst, err in zip(dels, results, strict=False):
            if err is not None and err.errno not in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
                raise err
            del actual[dst]
        for (dst, ifname), err in zip(adds, results[len(dels):], strict=True):
            if err is not None and err.errno in (errno.ENODEV, errno.ENETDOWN):
                self._links.pop(ifname, None)  # link went away or is down: retry later
                missing.append(ifname)
                continue
            if err is not None:
                raise err
            actual[dst] = ifname
        return len(ops), sorted(set(missing))
