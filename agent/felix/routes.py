"""Route driver: the /32 of each local workload to its cali interface, and no other route on cali*.

Routes are ``<ip>/32 dev caliXXXX scope link`` with protocol boot (3), as the
CNI plugin and Felix (DeviceRouteProtocol) make them. Routes on interfaces
with the workload prefix that are not desired are removed (RemoveExternalRoutes).
Remote blocks and blackholes belong to the BGP speaker and are never touched.
Changes go to the kernel in netlink batches (:mod:`agent.felix.netlink`).
"""

from __future__ import annotations

import errno
import logging

from agent.felix.netlink import Netlink, check

log = logging.getLogger(__name__)

RTPROT_BOOT = 3
RT_SCOPE_LINK = 253
MAIN_TABLE = 254


class RouteDriver:
    """Keeps workload routes in the main table of the current netns."""

    def __init__(self, prefix: str = "cali") -> None:
        self.prefix = prefix
        self.nl = Netlink()
        self._links: dict[str, int] = {}
        self._actual: dict[str, str] | None = None  # dst/len -> ifname (routes on prefix ifaces)
        self._last_desired: dict[str, str] = {}

    def close(self) -> None:
        """Release the netlink socket."""
        self.nl.close()

    def refresh_links(self) -> dict[str, int]:
        """Re-read the interfaces with our prefix: {name: index}."""
        self._links = {ln.name: ln.index for ln in self.nl.links() if ln.name.startswith(self.prefix)}
        return self._links

    def read(self) -> dict[str, str]:
        """Routes on interfaces with our prefix: {"ip/len": ifname}; refreshes link and route caches."""
        names = {idx: name for name, idx in self.refresh_links().items()}
        self._actual = {f"{r.dst}/{r.dst_len}": names[r.oif] for r in self.nl.routes(MAIN_TABLE) if r.oif in names}
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
        reqs = []
        for dst in dels:
            net, plen = dst.split("/")
            reqs.append(Netlink.route_msg("del", net, int(plen), self._links.get(actual[dst])))
        for dst, ifname in adds:
            net, plen = dst.split("/")
            reqs.append(Netlink.route_msg("replace", net, int(plen), self._links[ifname], scope=RT_SCOPE_LINK,
                                          protocol=RTPROT_BOOT, table=MAIN_TABLE))
        results = self.nl.batch(reqs) if reqs else []
        check(results[:len(dels)], ignore=(errno.ESRCH, errno.ENOENT, errno.ENODEV))
        for dst in dels:
            del actual[dst]
        for (dst, ifname), code in zip(adds, results[len(dels):], strict=True):
            if code in (errno.ENODEV, errno.ENETDOWN):
                self._links.pop(ifname, None)  # link went away or is down: retry later
                missing.append(ifname)
                continue
            if code:
                check([code])
            actual[dst] = ifname
        return len(reqs), sorted(set(missing))
