"""The pod's network plumbing as Calico's CNI plugin builds it (kernel side effects).

Host side: veth ``cali…`` with MAC ee:ee:ee:ee:ee:ee, proxy-ARP sysctls and the
route ``<ip>/32 dev cali… scope link``. Pod side: the peer, created directly in
the pod's netns as CNI_IFNAME, with ``<ip>/32``, ``169.254.1.1 dev eth0 scope
link`` and ``default via 169.254.1.1``.

Every function works on two kernel handles (:mod:`kernel`): the node's (default: the
calling thread's namespace) and the pod's (default: a handle bound to ``netns_path``).
Tests pass :class:`kernel.fake.FakeKernel` handles instead.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from kernel import RT_SCOPE_LINK, Kernel, KernelError, Link, Route, RouteAdd, Veth
from kernel.model import Addr, AddrAdd, LinkAdd, LinkSet
from kernel.netlink import Netlink
from kernel.rtnl import mac_bytes

HOST_MAC = "ee:ee:ee:ee:ee:ee"
GATEWAY = "169.254.1.1"

HOST_SYSCTLS = (
    ("net/ipv4/conf/{}/route_localnet", "1"),
    ("net/ipv4/neigh/{}/proxy_delay", "0"),
    ("net/ipv4/conf/{}/proxy_arp", "1"),
    ("net/ipv4/conf/{}/forwarding", "1"),
    ("net/ipv6/conf/{}/accept_ra", "0"),
)


class DataplaneError(Exception):
    """The plumbing could not be made (message says what and where)."""


@dataclass
class Plumbing:
    """What :func:`setup` made."""

    host: Link
    pod: Link


def _reason(exc: KernelError) -> str:
    return os.strerror(exc.errno) + (f" ({exc.detail})" if exc.detail else "")


@contextmanager
def _handles(host: Kernel | None, pod: Kernel | None, netns_path: str) -> Iterator[tuple[Kernel, Kernel]]:
    """The node's and the pod's handles, opening (and closing) the ones not given."""
    opened: list[Kernel] = []
    try:
        if pod is None:
            if not os.path.exists(netns_path):
                raise DataplaneError(f"cannot open pod network namespace {netns_path}: No such file or directory")
            try:
                pod = Netlink(netns_path)
            except KernelError as exc:
                raise DataplaneError(f"cannot enter pod network namespace {netns_path}: {_reason(exc)}") from None
            opened.append(pod)
        if host is None:
            host = Netlink()
            opened.append(host)
        yield host, pod
    finally:
        for k in opened:
            k.close()


def _set_host_sysctls(host: Kernel, ifname: str) -> None:
    for tmpl, value in HOST_SYSCTLS:
        key = tmpl.format(ifname)
        try:
            host.sysctl_set(key, value)
        except KernelError as exc:
            if exc.errno == errno.ENOENT and key.startswith("net/ipv6/"):
                continue  # IPv6 disabled on this host
            raise


def setup(host_ifname: str, pod_ifname: str, netns_path: str, address: str, mtu: int,
          pod_mac: str | None = None, allow_ip_forwarding: bool = False, queues: int = 1, *,
          host: Kernel | None = None, pod: Kernel | None = None) -> Plumbing:
    """Build the veth pair, sysctls, addresses and routes; on failure remove what was made.

    ``pod_mac`` (Calico's ``cni.projectcalico.org/hwAddr``) sets the pod side's MAC.
    ``queues``: each end's transmit and receive queues (netconf ``num_queues``; Calico makes
    one of each by default).
    The pod's ``net.ipv4.ip_forward`` is set to 0, or 1 with ``allow_ip_forwarding``
    (netconf ``container_settings.allow_ip_forwarding``), as Calico does.
    """
    if pod_mac is not None:
        try:
            mac_bytes(pod_mac)
        except ValueError:
            raise DataplaneError(f"invalid pod MAC address {pod_mac!r}") from None
    with _handles(host, pod, netns_path) as (host_k, pod_k):
        return _setup(host_k, pod_k, host_ifname, pod_ifname, netns_path, address, mtu, pod_mac,
                      allow_ip_forwarding, queues)


def _setup(host: Kernel, pod: Kernel, host_ifname: str, pod_ifname: str, netns_path: str, address: str,
           mtu: int, pod_mac: str | None, allow_ip_forwarding: bool, queues: int) -> Plumbing:
    if pod.link(pod_ifname) is not None:
        raise DataplaneError(f"interface {pod_ifname} already exists in {netns_path}")
    old = host.link(host_ifname)
    if old is not None:  # a stale veth of an earlier sandbox of this pod (Calico deletes it too)
        host.link_del(old.index)
    try:
        host.do(LinkAdd(Veth(host_ifname, pod_ifname, mtu=mtu, mac=HOST_MAC, peer_mac=pod_mac, peer_netns=pod,
                             queues=queues)))
    except KernelError as exc:
        raise DataplaneError(f"cannot create veth {host_ifname}/{pod_ifname}: {_reason(exc)}") from None
    try:
        h = host.link(host_ifname)
        if h is None:
            raise DataplaneError(f"veth {host_ifname} vanished right after creation")
        if h.mac != HOST_MAC:
            host.link_set(h.index, mac=HOST_MAC)
        _set_host_sysctls(host, host_ifname)
        host.link_set(h.index, up=True)
        p = pod.link(pod_ifname)
        if p is None:
            raise DataplaneError(f"{pod_ifname} did not appear in {netns_path}")
        pod.sysctl_set("net/ipv4/ip_forward", "1" if allow_ip_forwarding else "0")
        pod.do(LinkSet(p.index, up=True), AddrAdd(Addr(p.index, address, 32)),
               RouteAdd(Route(f"{GATEWAY}/32", oif=p.index, scope=RT_SCOPE_LINK)),
               RouteAdd(Route("0.0.0.0/0", oif=p.index, gateway=GATEWAY)))
        try:
            host.route_add(Route(f"{address}/32", oif=h.index, scope=RT_SCOPE_LINK))
        except KernelError as exc:
            if exc.errno != errno.EEXIST:
                raise
            same = [r for r in host.routes() if r.dst == f"{address}/32" and r.oif == h.index]
            if not same:  # Felix may have added the same route first; anything else is a conflict
                raise DataplaneError(f"route {address}/32 already exists on another interface") from None
        return Plumbing(host=host.link(host_ifname) or h, pod=pod.link(pod_ifname) or p)
    except BaseException as exc:
        gone = host.link(host_ifname)
        if gone is not None:
            try:
                host.link_del(gone.index)
            except KernelError:
                pass
        if isinstance(exc, KernelError):
            raise DataplaneError(f"configuring {host_ifname}/{pod_ifname} for {address}: {exc.strerror}") from None
        raise


def teardown(pod_ifname: str, netns_path: str, *, pod: Kernel | None = None) -> bool:
    """Delete the pod's interface inside its netns (the host end goes with it).

    Idempotent: a missing netns or interface is success. Returns True if something
    was deleted.
    """
    if pod is None:
        if not netns_path or not os.path.exists(netns_path):
            return False
        try:
            pod = Netlink(netns_path)
        except KernelError as exc:
            if exc.errno in (errno.ENOENT, errno.EINVAL):
                return False
            raise DataplaneError(f"cannot enter {netns_path}: {_reason(exc)}") from None
        try:
            return teardown(pod_ifname, netns_path, pod=pod)
        finally:
            pod.close()
    link = pod.link(pod_ifname)
    if link is None:
        return False
    try:
        pod.link_del(link.index)
    except KernelError as exc:
        if exc.errno == errno.ENODEV:
            return False
        raise DataplaneError(f"cannot delete {pod_ifname} in {netns_path}: {_reason(exc)}") from None
    return True


def check(host_ifname: str, pod_ifname: str, netns_path: str, address: str, pod_mac: str = "", *,
          host: Kernel | None = None, pod: Kernel | None = None) -> list[str]:
    """Compare the kernel with what ADD makes; return the problems found (empty = healthy)."""
    opened: list[Kernel] = []
    try:
        if host is None:
            host = Netlink()
            opened.append(host)
        problems = _check_host(host, host_ifname, address)
        if pod is None:
            if not os.path.exists(netns_path):
                return problems + [f"pod network namespace {netns_path} is missing"]
            try:
                pod = Netlink(netns_path)
            except KernelError as exc:
                return problems + [f"cannot enter {netns_path}: {_reason(exc)}"]
            opened.append(pod)
        return problems + _check_pod(pod, pod_ifname, netns_path, address, pod_mac)
    finally:
        for k in opened:
            k.close()


def _check_host(host: Kernel, host_ifname: str, address: str) -> list[str]:
    problems: list[str] = []
    h = host.link(host_ifname)
    if h is None:
        return [f"host interface {host_ifname} is missing"]
    if h.mac != HOST_MAC:
        problems.append(f"host interface {host_ifname} has MAC {h.mac}, want {HOST_MAC}")
    if not h.up:
        problems.append(f"host interface {host_ifname} is down")
    if not any(r.oif == h.index for r in host.routes() if r.dst == f"{address}/32"):
        problems.append(f"host route {address}/32 dev {host_ifname} is missing")
    if host.sysctl_get(f"net/ipv4/conf/{host_ifname}/proxy_arp") not in (None, "1"):
        problems.append(f"proxy_arp is off on {host_ifname}")
    return problems


def _check_pod(pod: Kernel, pod_ifname: str, netns_path: str, address: str, pod_mac: str) -> list[str]:
    p = pod.link(pod_ifname)
    if p is None:
        return [f"interface {pod_ifname} is missing in {netns_path}"]
    problems: list[str] = []
    if pod_mac and p.mac != pod_mac.lower():
        problems.append(f"{pod_ifname} has MAC {p.mac}, prevResult says {pod_mac}")
    if not p.up:
        problems.append(f"{pod_ifname} is down in {netns_path}")
    if not any(a.index == p.index and a.address == address and a.prefixlen == 32 for a in pod.addrs()):
        problems.append(f"{pod_ifname} in {netns_path} lacks {address}/32")
    routes = pod.routes()
    if not any(r.dst == f"{GATEWAY}/32" and r.oif == p.index and r.scope == RT_SCOPE_LINK for r in routes):
        problems.append(f"route {GATEWAY} dev {pod_ifname} scope link is missing in {netns_path}")
    if not any(r.dst == "0.0.0.0/0" and r.gateway == GATEWAY and r.oif == p.index for r in routes):
        problems.append(f"default via {GATEWAY} dev {pod_ifname} is missing in {netns_path}")
    return problems
