"""The pod's network plumbing as Calico's CNI plugin builds it (kernel side effects).

Host side: veth ``cali…`` with MAC ee:ee:ee:ee:ee:ee, proxy-ARP sysctls and the
route ``<ip>/32 dev cali… scope link``. Pod side: the peer, created directly in
the pod's netns as CNI_IFNAME, with ``<ip>/32``, ``169.254.1.1 dev eth0 scope
link`` and ``default via 169.254.1.1``. Everything runs in the namespace of the
calling thread (the node) plus the pod netns given by path.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from cni.netlink import RT_SCOPE_LINK, Link, Netlink, NetlinkError, in_netns, mac_to_bytes

HOST_MAC = "ee:ee:ee:ee:ee:ee"
GATEWAY = "169.254.1.1"

HOST_SYSCTLS = (
    ("ipv4/conf/{}/route_localnet", "1"),
    ("ipv4/neigh/{}/proxy_delay", "0"),
    ("ipv4/conf/{}/proxy_arp", "1"),
    ("ipv4/conf/{}/forwarding", "1"),
    ("ipv6/conf/{}/accept_ra", "0"),
)


class DataplaneError(Exception):
    """The plumbing could not be made (message says what and where)."""


@dataclass
class Plumbing:
    """What :func:`setup` made."""

    host: Link
    pod: Link


def write_sysctl(path: str, value: str) -> None:
    """Write ``/proc/sys/net/<path>``."""
    with open(f"/proc/sys/net/{path}", "w") as f:
        f.write(value)


def _set_host_sysctls(ifname: str) -> None:
    for tmpl, value in HOST_SYSCTLS:
        path = tmpl.format(ifname)
        try:
            write_sysctl(path, value)
        except FileNotFoundError:
            if path.startswith("ipv6/"):
                continue  # IPv6 disabled on this host
            raise


def setup(host_ifname: str, pod_ifname: str, netns_path: str, address: str, mtu: int,
          pod_mac: str | None = None, allow_ip_forwarding: bool = False) -> Plumbing:
    """Build the veth pair, sysctls, addresses and routes; on failure remove what was made.

    ``pod_mac`` (Calico's ``cni.projectcalico.org/hwAddr``) sets the pod side's MAC.
    The pod's ``net.ipv4.ip_forward`` is set to 0, or 1 with ``allow_ip_forwarding``
    (netconf ``container_settings.allow_ip_forwarding``), as Calico does.
    """
    if pod_mac is not None:
        try:
            mac_to_bytes(pod_mac)
            if len(pod_mac.split(":")) != 6:
                raise ValueError(pod_mac)
        except ValueError:
            raise DataplaneError(f"invalid pod MAC address {pod_mac!r}") from None
    try:
        ns_fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise DataplaneError(f"cannot open pod network namespace {netns_path}: {exc.strerror}") from None
    try:
        try:
            pod_nl = Netlink(netns_path)
        except OSError as exc:
            raise DataplaneError(f"cannot enter pod network namespace {netns_path}: {exc.strerror}") from None
        host_nl = Netlink()
        try:
            return _setup(host_nl, pod_nl, ns_fd, host_ifname, pod_ifname, netns_path, address, mtu, pod_mac,
                          allow_ip_forwarding)
        finally:
            host_nl.close()
            pod_nl.close()
    finally:
        os.close(ns_fd)


def _setup(host_nl: Netlink, pod_nl: Netlink, ns_fd: int, host_ifname: str, pod_ifname: str,
           netns_path: str, address: str, mtu: int, pod_mac: str | None,
           allow_ip_forwarding: bool = False) -> Plumbing:
    existing = pod_nl.link_get(pod_ifname)
    if existing is not None:
        raise DataplaneError(f"interface {pod_ifname} already exists in {netns_path}")
    old = host_nl.link_get(host_ifname)
    if old is not None:  # a stale veth of an earlier sandbox of this pod (Calico deletes it too)
        host_nl.link_delete(old.index)
    try:
        host_nl.veth_create(host_ifname, pod_ifname, ns_fd, mtu, mac=HOST_MAC, peer_mac=pod_mac)
    except NetlinkError as exc:
        raise DataplaneError(f"cannot create veth {host_ifname}/{pod_ifname}: {exc.strerror}") from None
    try:
        host = host_nl.link_get(host_ifname)
        if host is None:
            raise DataplaneError(f"veth {host_ifname} vanished right after creation")
        if host.mac != HOST_MAC:
            host_nl.link_set(host.index, mac=HOST_MAC)
        _set_host_sysctls(host_ifname)
        host_nl.link_set(host.index, up=True)
        pod = pod_nl.link_get(pod_ifname)
        if pod is None:
            raise DataplaneError(f"{pod_ifname} did not appear in {netns_path}")
        with in_netns(netns_path):
            write_sysctl("ipv4/ip_forward", "1" if allow_ip_forwarding else "0")
        pod_nl.link_set(pod.index, up=True)
        pod_nl.addr_add(pod.index, address, 32)
        pod_nl.route_add(f"{GATEWAY}/32", pod.index, scope=RT_SCOPE_LINK)
        pod_nl.route_add("0.0.0.0/0", pod.index, gateway=GATEWAY)
        try:
            host_nl.route_add(f"{address}/32", host.index, scope=RT_SCOPE_LINK)
        except NetlinkError as exc:
            if exc.errno != errno.EEXIST:
                raise
            same = [r for r in host_nl.route_list() if r.dst == f"{address}/32" and r.oif == host.index]
            if not same:  # Felix may have added the same route first; anything else is a conflict
                raise DataplaneError(f"route {address}/32 already exists on another interface") from None
        host = host_nl.link_get(host_ifname) or host
        pod = pod_nl.link_get(pod_ifname) or pod
        return Plumbing(host=host, pod=pod)
    except BaseException as exc:
        gone = host_nl.link_get(host_ifname)
        if gone is not None:
            try:
                host_nl.link_delete(gone.index)
            except NetlinkError:
                pass
        if isinstance(exc, NetlinkError):
            raise DataplaneError(f"configuring {host_ifname}/{pod_ifname} for {address}: {exc.strerror}") from None
        raise


def teardown(pod_ifname: str, netns_path: str) -> bool:
    """Delete the pod's interface inside its netns (the host end goes with it).

    Idempotent: a missing netns or interface is success. Returns True if something
    was deleted.
    """
    if not netns_path or not os.path.exists(netns_path):
        return False
    try:
        nl = Netlink(netns_path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EINVAL):
            return False
        raise DataplaneError(f"cannot enter {netns_path}: {exc.strerror}") from None
    try:
        link = nl.link_get(pod_ifname)
        if link is None:
            return False
        try:
            nl.link_delete(link.index)
        except NetlinkError as exc:
            if exc.errno == errno.ENODEV:
                return False
            raise DataplaneError(f"cannot delete {pod_ifname} in {netns_path}: {exc.strerror}") from None
        return True
    finally:
        nl.close()


def check(host_ifname: str, pod_ifname: str, netns_path: str, address: str, pod_mac: str = "") -> list[str]:
    """Compare the kernel with what ADD makes; return the problems found (empty = healthy)."""
    problems: list[str] = []
    with Netlink() as host_nl:
        host = host_nl.link_get(host_ifname)
        if host is None:
            problems.append(f"host interface {host_ifname} is missing")
        else:
            if host.mac != HOST_MAC:
                problems.append(f"host interface {host_ifname} has MAC {host.mac}, want {HOST_MAC}")
            if not host.up:
                problems.append(f"host interface {host_ifname} is down")
            routes = [r for r in host_nl.route_list() if r.dst == f"{address}/32"]
            if not any(r.oif == host.index for r in routes):
                problems.append(f"host route {address}/32 dev {host_ifname} is missing")
            try:
                with open(f"/proc/sys/net/ipv4/conf/{host_ifname}/proxy_arp") as f:
                    if f.read().strip() != "1":
                        problems.append(f"proxy_arp is off on {host_ifname}")
            except OSError:
                pass
    if not os.path.exists(netns_path):
        return problems + [f"pod network namespace {netns_path} is missing"]
    try:
        pod_nl = Netlink(netns_path)
    except OSError as exc:
        return problems + [f"cannot enter {netns_path}: {exc.strerror}"]
    with pod_nl:
        pod = pod_nl.link_get(pod_ifname)
        if pod is None:
            return problems + [f"interface {pod_ifname} is missing in {netns_path}"]
        if pod_mac and pod.mac != pod_mac.lower():
            problems.append(f"{pod_ifname} has MAC {pod.mac}, prevResult says {pod_mac}")
        if not pod.up:
            problems.append(f"{pod_ifname} is down in {netns_path}")
        if not any(a.index == pod.index and a.address == address and a.prefixlen == 32 for a in pod_nl.addr_list()):
            problems.append(f"{pod_ifname} in {netns_path} lacks {address}/32")
        routes = pod_nl.route_list()
        if not any(r.dst == f"{GATEWAY}/32" and r.oif == pod.index and r.scope == RT_SCOPE_LINK for r in routes):
            problems.append(f"route {GATEWAY} dev {pod_ifname} scope link is missing in {netns_path}")
        if not any(r.dst == "0.0.0.0/0" and r.gateway == GATEWAY and r.oif == pod.index for r in routes):
            problems.append(f"default via {GATEWAY} dev {pod_ifname} is missing in {netns_path}")
    return problems

