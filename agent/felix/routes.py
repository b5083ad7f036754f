"""Route driver: the /32 of each local workload to its cali interface, and no other route on cali*.

Routes are ``<ip>/32 dev caliXXXX scope link`` with protocol boot (3), as the
CNI plugin and Felix (DeviceRouteProtocol) make them. Routes on interfaces
with the workload prefix that are not desired are removed (RemoveExternalRoutes).
Remote blocks and blackholes belong to the BGP speaker and are never touched.
"""

from __future__ import annotations

import errno
import logging
import socket

log = logging.getLogger(__name__)

RTPROT_BOOT = 3
RT_SCOPE_LINK = 253
MAIN_TABLE = 254


class RouteDriver:
    """Keeps workload routes in the main table of the current netns."""

    def __init__(self, prefix: str = "cali") -> None:
        from pyroute2 import IPRoute

        self.prefix = prefix
        self.ipr = IPRoute()
        self._links: dict[str, int] = {}
        self._actual: dict[str, str] | None = None  # dst/len -> ifname (routes on prefix ifaces)
        self._last_desired: dict[str, str] = {}
        self._scopes: dict[str, int] = {}

    def close(self) -> None:
        """Release the netlink socket."""
        self.ipr.close()

    def read(self) -> dict[str, str]:
        """Routes on interfaces with our prefix: {"ip/len": ifname}; refreshes link and route caches."""
        self._links = {}
        names = {}
        for link in self.ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            if name and name.startswith(self.prefix):
                self._links[name] = link["index"]
                names[link["index"]] = name
        actual = {}
        for r in self.ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE):
            oif = r.get_attr("RTA_OIF")
            if oif in names:
                dst = f"{r.get_attr('RTA_DST') or '0.0.0.0'}/{r['dst_len']}"
                actual[dst] = names[oif]
                self._scopes[dst] = r["scope"]
        self._actual = actual
        return actual

    def _index(self, ifname: str) -> int | None:
        idx = self._links.get(ifname)
        if idx is None:
            found = self.ipr.link_lookup(ifname=ifname)
            if not found:
                return None
            idx = self._links[ifname] = found[0]
        return idx

    def apply(self, desired: dict[str, str], resync: bool = False) -> tuple[int, list[str]]:
        """Make the routes match; returns (changes made, interfaces missing so routes wait for them)."""
        from pyroute2.netlink.exceptions import NetlinkError

        if resync or self._actual is None:
            self.read()
        actual = self._actual
        assert actual is not None
        changes = 0
        missing = []
        for dst, ifname in sorted(actual.items()):
            if desired.get(dst) != ifname:
                net, plen = dst.split("/")
                idx = self._links.get(ifname)
                try:
                    self.ipr.route("del", dst=net, dst_len=int(plen), oif=idx, table=MAIN_TABLE,
                                   scope=self._scopes.pop(dst, RT_SCOPE_LINK))
                    changes += 1
                except NetlinkError as exc:
                    if exc.code not in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
                        raise
                del actual[dst]
        prev = self._last_desired
        self._last_desired = dict(desired)
        for dst, ifname in desired.items():
            if actual.get(dst) == ifname and prev.get(dst) == ifname:
                continue  # (newly desired routes are always (re)written: the link may have been remade)
            idx = self._index(ifname)
            if idx is None:
                missing.append(ifname)
                continue
            net, plen = dst.split("/")
            try:
                self.ipr.route("replace", dst=net, dst_len=int(plen), oif=idx, scope=RT_SCOPE_LINK,
                               proto=RTPROT_BOOT, table=MAIN_TABLE)
            except NetlinkError as exc:
                if exc.code == errno.ENODEV:
                    self._links.pop(ifname, None)
                    missing.append(ifname)
                    continue
                raise
            actual[dst] = ifname
            changes += 1
        return changes, missing
