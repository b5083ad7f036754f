"""The lab's systemd-networkd: a link that comes back gets its addresses and routes back.

A real node's network manager (systemd-networkd, ifupdown's hotplug) re-applies the
configured addresses and static routes of an interface when its carrier returns. Without
it, a flap of a node's uplink in the lab (``ip link set eth0 down; ... up``) left the node
without its default route for good: the kernel drops every route through a link that goes
down and brings back only the connected prefix. Then nothing but the node's own segment
answered, and proxy ARP for 169.254.1.1 (the pods' gateway, answered only when the node
has a route to it, here the default route) failed for every new pod.

:class:`HostNetwork` is what the topology configures on one host (pure data, from
:func:`host_network`); :func:`repair` compares it with a kernel handle (a
:class:`kernel.netlink.Netlink`, or :class:`kernel.fake.FakeKernel` in unit tests) and
adds what is missing on the links that are up; :class:`NetworkKeeper` is the supervisor's
thread that watches every host's links over rtnetlink and calls :func:`repair` when one
comes up (and once a second on a host whose repair did not complete).
"""

from __future__ import annotations

import ipaddress
import logging
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kernel.base import Kernel
from kernel.model import (
    IFF_LOWER_UP,
    RT_SCOPE_LINK,
    RT_SCOPE_UNIVERSE,
    RTPROT_BOOT,
    Addr,
    AddrAdd,
    KernelError,
    LinkSet,
    Route,
    RouteAdd,
)

log = logging.getLogger("networkd")

#: seconds between repair attempts on a host whose last repair failed (e.g. the gateway
#: route before the link's carrier is back)
RETRY = 1.0


@dataclass(frozen=True)
class HostNetwork:
    """One host's configured network: ``addresses`` (ifname, address, prefix length) and
    static ``routes`` (destination CIDR, gateway)."""

    host: str
    addresses: tuple[tuple[str, str, int], ...]
    routes: tuple[tuple[str, str], ...]

    @property
    def interfaces(self) -> set[str]:
        """The interfaces the topology configures."""
        return {ifname for ifname, _a, _p in self.addresses}


def host_network(topo, host: str) -> HostNetwork:
    """What the topology configures on ``host`` (as the supervisor's first configuration)."""
    addrs = tuple((ifname, str(addr), int(plen)) for ifname, _seg, addr, plen in topo.interface_of(host))
    routes = tuple((str(r.dst), str(r.via) if r.via is not None else "") for r in topo.routes_of(host))
    return HostNetwork(host, addrs, routes)


def configure_ops(net: HostNetwork, links: dict[str, int], mtus: dict[str, int] | None = None) -> list:
    """The operations of a host's first configuration (the supervisor sends them over
    rtnetlink), in the order and with the attributes of the ``ip`` commands they replace:
    ``lo`` up; per interface its MTU (``mtus``: ifname -> MTU, a segment spanning machines),
    ``ip addr add A/N dev X``, ``ip link set X up``; then every route: ``ip route add D via G``
    (the kernel picks the device) or, without a gateway, ``ip route add D dev <first
    interface> scope link``. ``links`` maps each interface name to its index."""
    ops: list = [LinkSet(links["lo"], up=True)]
    for ifname, address, plen in net.addresses:
        if ifname in (mtus or {}):
            ops.append(LinkSet(links[ifname], mtu=(mtus or {})[ifname]))
        ops += [AddrAdd(Addr(links[ifname], address, plen)), LinkSet(links[ifname], up=True)]
    uplink = net.addresses[0][0] if net.addresses else "eth0"
    for dst, via in net.routes:
        dst = "0.0.0.0/0" if dst == "default" else dst
        if via:
            ops.append(RouteAdd(Route(dst, gateway=via, protocol=RTPROT_BOOT)))
        else:
            ops.append(RouteAdd(Route(dst, oif=links[uplink], protocol=RTPROT_BOOT, scope=RT_SCOPE_LINK)))
    return ops


def bridge_ops(bridge: str, links: dict[str, int]) -> list:
    """A segment's bridge, once made (``ip link add B type bridge forward_delay 0 stp_state
    0``): ``ip link set dev B up``, ``ip link set dev lo up``."""
    return [LinkSet(links[bridge], up=True), LinkSet(links["lo"], up=True)]


def port_ops(port: int, bridge: int, mtu: int | None = None) -> list:
    """A host's port on its segment's bridge (indexes in the segment's namespace): its MTU if
    given (``ip link set dev P mtu M``), then ``ip link set dev P master B up``."""
    return ([LinkSet(port, mtu=mtu)] if mtu else []) + [LinkSet(port, master=bridge, up=True)]


def repair(kernel: Kernel, net: HostNetwork) -> list[str]:
    """Add what ``net`` configures and the kernel lost, on interfaces that are up and have
    their carrier; returns what was added (``address 172.30.0.11/24 dev eth0``, ``route
    0.0.0.0/0 via 172.30.0.1``). An interface that is administratively down stays down (a
    person took it down); raises KernelError when an addition fails."""
    links = {ln.name: ln for ln in kernel.links()}
    names = {ln.index: ln.name for ln in links.values()}
    up = {name for name, ln in links.items() if ln.up and ln.flags & IFF_LOWER_UP}
    have = {(names.get(a.index), a.address, a.prefixlen) for a in kernel.addrs()}
    ops: list = []
    for ifname, address, plen in net.addresses:
        if ifname in up and (ifname, address, plen) not in have:
            ops.append(AddrAdd(Addr(links[ifname].index, address, plen)))
    routes = {r.dst for r in kernel.routes()}
    wanted_routes = []
    for dst, via in net.routes:
        dst = "0.0.0.0/0" if dst == "default" else dst
        # "" : on-link through the host's first interface (testbed.lab.topology.Route)
        dev = _device_for(net, via) if via else (net.addresses[0][0] if net.addresses else None)
        if dst not in routes and dev in up:  # a gateway behind a down link waits for it
            wanted_routes.append(RouteAdd(Route(dst, oif=links[dev].index, gateway=via or None,
                                                protocol=RTPROT_BOOT,
                                                scope=RT_SCOPE_UNIVERSE if via else RT_SCOPE_LINK),
                                          replace=True))
    done: list[str] = []
    for batch in (ops, wanted_routes):  # addresses first: they bring the gateways' prefixes
        if not batch:
            continue
        errors = kernel.submit(batch)
        for op, err in zip(batch, errors, strict=True):
            if err is not None:
                raise err
            done.append(op.describe(names))
    return done


def _device_for(net: HostNetwork, gateway: str) -> str | None:
    """The configured interface whose prefix holds ``gateway``."""
    gw = ipaddress.IPv4Address(gateway)
    for ifname, address, plen in net.addresses:
        if gw in ipaddress.IPv4Interface(f"{address}/{plen}").network:
            return ifname
    return None


class NetworkKeeper:
    """Watches the links of every host of a lab and repairs a host when a link comes up.

    ``hosts`` maps a host name to (its netns path, its :class:`HostNetwork`); ``open_kernel``
    opens a subscribed kernel handle for a netns path (default: rtnetlink, RTMGRP_LINK).
    """

    def __init__(self, hosts: dict[str, tuple[str, HostNetwork]],
                 on_repair: Callable[[str, list[str]], None] | None = None,
                 open_kernel: Callable[[str], Kernel] | None = None) -> None:
        self.hosts = hosts
        self.on_repair = on_repair or (lambda host, done: log.info("%s: restored %s", host, ", ".join(done)))
        self.open_kernel = open_kernel or _open_rtnl
        self.kernels: dict[str, Kernel] = {}
        self.pending: dict[str, float] = {}
        self.repairs: dict[str, int] = {}
        self.errors: dict[str, str] = {}

    def start(self, stop: threading.Event) -> threading.Thread:
        """Open a handle per host and run :meth:`run` in a daemon thread."""
        for name, (path, _net) in self.hosts.items():
            try:
                self.kernels[name] = self.open_kernel(path)
            except OSError as exc:
                self.errors[name] = f"cannot watch its links: {exc}"
        t = threading.Thread(target=self.run, args=(stop,), name="networkd", daemon=True)
        t.start()
        return t

    def check(self, name: str) -> None:
        """Repair host ``name`` now; on failure try again after :data:`RETRY`."""
        kernel = self.kernels[name]
        try:
            done = repair(kernel, self.hosts[name][1])
        except OSError as exc:
            self.errors[name] = str(exc)
            self.pending[name] = time.monotonic() + RETRY
            return
        self.errors.pop(name, None)
        self.pending.pop(name, None)
        if done:
            self.repairs[name] = self.repairs.get(name, 0) + 1
            self.on_repair(name, done)

    def run(self, stop: threading.Event) -> None:
        """Until ``stop``: read link events, repair the hosts whose links changed."""
        by_fd = {k.fileno(): name for name, k in self.kernels.items()}
        while not stop.is_set() and by_fd:
            timeout = 0.5
            if self.pending:
                timeout = max(0.0, min(timeout, min(self.pending.values()) - time.monotonic()))
            try:
                ready, _, _ = select.select(list(by_fd), [], [], timeout)
            except (OSError, ValueError):
                return  # the handles were closed: the lab is going down
            changed: set[str] = set()
            for fd in ready:
                name = by_fd[fd]
                try:
                    events = self.kernels[name].events()
                except KernelError:
                    events = [(0, None)]  # events lost: look at everything
                except OSError:
                    by_fd.pop(fd, None)  # the namespace is gone
                    continue
                if events:
                    changed.add(name)
            now = time.monotonic()
            changed |= {n for n, due in self.pending.items() if due <= now}
            for name in sorted(changed):
                if not stop.is_set():
                    self.check(name)

    def close(self) -> None:
        """Close every handle."""
        for k in self.kernels.values():
            try:
                k.close()
            except OSError:
                pass


def _open_rtnl(path: str) -> Kernel:
    from kernel import rtnl
    from kernel.netlink import Netlink

    return Netlink(path, groups=rtnl.RTMGRP_LINK)
