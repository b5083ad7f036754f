"""The VXLAN manager's routes (calico.md section 7; Felix's ``routetable`` targets).

The driver owns every route on vxlan.calico (others found there are removed, as Felix's
main route table removes external routes on its interfaces) and every route of protocol
80 (``defaultVXLANProto``: the blackholes of local blocks and the CrossSubnet no-encap
routes on the parent device). Shapes, as ``ip route`` prints them:

* ``<block> via <remote tunnel IP> dev vxlan.calico onlink`` (protocol boot, not shown);
* ``<block> via <remote node IP> dev <parent> proto 80 onlink``;
* ``blackhole <block> proto 80``.

Routes to a device that does not exist yet wait (and are retried by the caller).
"""

from __future__ import annotations

import errno
import logging

from agent.felix.encap import BLACKHOLE, VXLAN, VXLAN_DEVICE, VXLAN_PROTO, VxlanPlan
from kernel import RTN_BLACKHOLE, RTPROT_BOOT, Kernel, Route, RouteAdd, RouteDel

log = logging.getLogger(__name__)


def _key(r: Route) -> tuple:
    return (r.dst, r.type, r.oif if r.type != RTN_BLACKHOLE else 0, r.gateway, bool(r.onlink), r.protocol)


class VxlanRouteDriver:
    """Keeps the VXLAN manager's routes in the main table of ``kernel``'s namespace."""

    def __init__(self, kernel: Kernel, device: str = VXLAN_DEVICE) -> None:
        self.kernel = kernel
        self.device = device
        self._actual: dict[str, Route] | None = None

    def read(self) -> dict[str, Route]:
        """Our routes now in the kernel: on the device, or of protocol 80."""
        dev = self.kernel.link(self.device)
        idx = dev.index if dev is not None else -1
        self._actual = {r.dst: r for r in self.kernel.routes()
                        if r.protocol == VXLAN_PROTO or (r.oif == idx and r.oif)}
        return self._actual

    def desired(self, plan: VxlanPlan, device_index: int | None, parent_index: int | None) -> tuple[
            dict[str, Route], list[str]]:
        """Kernel routes for ``plan``; plus the destinations that wait for a device."""
        out: dict[str, Route] = {}
        waiting: list[str] = list(plan.waiting)
        for dst, r in plan.routes.items():
            if r.kind == BLACKHOLE:
                out[dst] = Route(dst, type=RTN_BLACKHOLE, protocol=VXLAN_PROTO)
            elif r.kind == VXLAN:
                if not device_index:
                    waiting.append(dst)
                    continue
                out[dst] = Route(dst, oif=device_index, gateway=r.gateway, onlink=True, protocol=RTPROT_BOOT)
            else:
                if not parent_index:
                    waiting.append(dst)
                    continue
                out[dst] = Route(dst, oif=parent_index, gateway=r.gateway, onlink=True, protocol=VXLAN_PROTO)
        return out, sorted(waiting)

    def apply(self, plan: VxlanPlan, device_index: int | None, parent_index: int | None,
              resync: bool = False) -> tuple[int, list[str]]:
        """Make the routes match ``plan``; returns (changes made, destinations waiting)."""
        if resync or self._actual is None:
            self.read()
        actual = self._actual
        assert actual is not None
        want, waiting = self.desired(plan, device_index, parent_index)
        dels = [r for dst, r in sorted(actual.items()) if dst not in want]
        adds = [r for dst, r in sorted(want.items()) if dst not in actual or _key(actual[dst]) != _key(r)]
        ops: list[RouteAdd | RouteDel] = [RouteDel(r) for r in dels]
        ops += [RouteAdd(r, replace=True) for r in adds]
        if not ops:
            return 0, waiting
        results = self.kernel.submit(ops)
        for r, err in zip(dels, results, strict=False):
            if err is not None and err.errno not in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
                self._actual = None
                raise err
            actual.pop(r.dst, None)
        for r, err in zip(adds, results[len(dels):], strict=True):
            if err is not None and err.errno in (errno.ENODEV, errno.ENETDOWN):
                waiting.append(r.dst)  # the device went away or is down: retried later
                self._actual = None
                continue
            if err is not None:
                self._actual = None
                raise err
            actual[r.dst] = r
        return len(ops), sorted(set(waiting))

    def forget(self) -> None:
        """Re-read the kernel on the next apply (e.g. the device was made again)."""
        self._actual = None
