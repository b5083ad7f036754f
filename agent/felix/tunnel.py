"""tunl0: the kernel ipip device where the kernel has it, else a persistent TUN + pump.

``ensure_tunl0(address, mtu)`` makes tunl0 look as Felix leaves it: link up,
the only address the tunnel IP as /32, the given MTU. On this project's
machine (no ``CONFIG_NET_IPIP``) it makes a persistent TUN named tunl0; the
caller then runs :class:`agent.felix.pump.IpipPump` on :func:`attach_tun`'s fd.

Run as ``python -m agent.felix.tunnel --address 192.168.0.1 --allow 172.30.0.11 ...``
to hold a userspace tunnel in the current netns until SIGTERM (used by tests
and benchmarks).
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import ipaddress
import logging
import os
import re
import signal
import struct
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IPIP_OVERHEAD = 20
DEFAULT_HOST_MTU = 1460
MTU_IFACE_PATTERN = r"^((en|wl|ww|sl|ib)[Pcopsvx].*|(eth|wlan|wwan).*)"
MODES = ("auto", "kernel", "userspace")

_ipip_cache: bool | None = None


class TunnelError(RuntimeError):
    """tunl0 could not be set up as asked."""


@dataclass(frozen=True)
class TunnelInfo:
    """What ensure_tunl0 made: kind is "kernel" (ipip) or "userspace" (TUN + pump)."""

    kind: str
    ifname: str
    address: str
    mtu: int


def kernel_has_ipip() -> bool:
    """True when this kernel can make ipip devices (module loaded, built in, or loadable)."""
    global _ipip_cache
    if _ipip_cache is not None:
        return _ipip_cache
    if os.path.isdir("/sys/module/ipip"):
        _ipip_cache = True
        return True
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    probe = f"calprb{os.getpid() % 100000}"
    with IPRoute() as ipr:
        try:
            ipr.link("add", ifname=probe, kind="ipip")
        except NetlinkError as exc:
            _ipip_cache = exc.code == errno.EEXIST
            return _ipip_cache
        except Exception:  # noqa: BLE001 - pyroute2 may refuse kinds it cannot map
            _ipip_cache = False
            return False
        idx = ipr.link_lookup(ifname=probe)
        if idx:
            ipr.link("del", index=idx[0])
    _ipip_cache = True
    return True


def detect_host_mtu(pattern: str = MTU_IFACE_PATTERN) -> int:
    """Smallest MTU of the UP interfaces whose name matches ``pattern`` (Felix's findHostMTU), else 1460.

    Reads links over netlink (not /sys, which shows the machine's interfaces
    inside a Mininet host that did not remount sysfs).
    """
    from agent.felix.netlink import Netlink

    rx = re.compile(pattern)
    nl = Netlink()
    try:
        found = [ln.mtu for ln in nl.links() if rx.match(ln.name) and ln.flags & 0x1]
    finally:
        nl.close()
    return min(found) if found else DEFAULT_HOST_MTU


def tunnel_mtu(host_mtu: int) -> int:
    """tunl0 MTU for a host MTU (IPIP adds a 20-byte outer header)."""
    return host_mtu - IPIP_OVERHEAD


def _validate(address: str, mtu: int, mode: str) -> str:
    try:
        addr = ipaddress.IPv4Address(address.split("/")[0])
    except ValueError as exc:
        raise TunnelError(f"tunnel address {address!r} is not an IPv4 address") from exc
    if not 68 <= mtu <= 65535:
        raise TunnelError(f"tunl0 MTU {mtu} out of range 68..65535")
    if mode not in MODES:
        raise TunnelError(f"tunnel mode {mode!r} is not one of {', '.join(MODES)}")
    return str(addr)


def ensure_tunl0(address: str, mtu: int, mode: str = "auto") -> TunnelInfo:
    """Make tunl0 exist, up, with ``address``/32 as its only address and MTU ``mtu``.

    mode "auto" picks the kernel ipip device when :func:`kernel_has_ipip`,
    else the userspace TUN; "kernel"/"userspace" force one (kernel fails
    clearly when the kernel lacks ipip). Idempotent.
    """
    addr = _validate(address, mtu, mode)
    if mode == "auto":
        mode = "kernel" if kernel_has_ipip() else "userspace"
    if mode == "kernel":
        if not kernel_has_ipip():
            raise TunnelError("kernel tunl0 asked for, but this kernel has no ipip support")
        ensure_kernel_tunl0(addr, mtu)
        return TunnelInfo("kernel", "tunl0", addr, mtu)
    ensure_tun_tunl0(addr, mtu)
    return TunnelInfo("userspace", "tunl0", addr, mtu)


def ensure_kernel_tunl0(address: str, mtu: int) -> None:
    """Kernel path: the ipip tunl0 (auto-created by the module, else added), up, /32, MTU."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname="tunl0")
        if not idx:
            try:
                ipr.link("add", ifname="tunl0", kind="ipip")
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise TunnelError(f"cannot create ipip tunl0: {exc}") from exc
            idx = ipr.link_lookup(ifname="tunl0")
        link = ipr.get_links(idx[0])[0]
        info = link.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        if kind not in (None, "ipip"):
            raise TunnelError(f"tunl0 exists but is a {kind} device, not ipip")
        _set_link_and_address(ipr, idx[0], address, mtu)


def open_tun(ifname: str = "tunl0", vnet_hdr: bool = True) -> int:
    """Attach to (creating if needed) the TUN ``ifname``; returns the fd. Fails if someone else holds it.

    With ``vnet_hdr`` every read and write carries a 10-byte virtio-net header
    (lets the pump hand merged TCP segments to the kernel as one GSO frame).
    """
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
    ifr = struct.pack("16sH22x", ifname.encode(), flags)
    try:
        fcntl.ioctl(fd, TUNSETIFF, ifr)
    except OSError as exc:
        os.close(fd)
        if exc.errno == errno.EBUSY:
            raise TunnelError(f"{ifname} is attached to another process (is another agent running?)") from exc
        raise TunnelError(f"{ifname} exists and is not a TUN device ({exc.strerror})") from exc
    fcntl.ioctl(fd, TUNSETPERSIST, 1)
    return fd


def ensure_tun_tunl0(address: str, mtu: int) -> None:
    """Userspace path: a persistent TUN tunl0 (survives the agent), up, /32, MTU."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname="tunl0")
        if not idx:
            fd = open_tun("tunl0")  # creates it persistent; detach again
            os.close(fd)
            idx = ipr.link_lookup(ifname="tunl0")
        _set_link_and_address(ipr, idx[0], address, mtu)


def _set_link_and_address(ipr, index: int, address: str, mtu: int) -> None:
    link = ipr.get_links(index)[0]
    if link.get_attr("IFLA_MTU") != mtu or not link["flags"] & 1 or link.get_attr("IFLA_TXQLEN", 0) < 1000:
        ipr.link("set", index=index, mtu=mtu, state="up", txqlen=max(1000, link.get_attr("IFLA_TXQLEN") or 0))
    have = [(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(family=2, index=index)]
    for a, plen in have:
        if (a, plen) != (address, 32):
            ipr.addr("del", index=index, address=a, prefixlen=plen)
    if (address, 32) not in have:
        ipr.addr("add", index=index, address=address, prefixlen=32)


def tunl0_kind() -> str | None:
    """"kernel" (ipip), "userspace" (TUN) or None: what tunl0 in this netns is (read over netlink)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname="tunl0")
        if not idx:
            return None
        info = ipr.get_links(idx[0])[0].get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    if kind == "tun":
        return "userspace"
    return "kernel" if kind in ("ipip", None) else kind


def main(argv: list[str] | None = None) -> int:
    """Hold a userspace tunl0 + pump in the current netns until SIGTERM/SIGINT."""
    from agent.felix.pump import IpipPump

    p = argparse.ArgumentParser(prog="python -m agent.felix.tunnel", description=main.__doc__)
    p.add_argument("--address", required=True, help="tunnel address (tunl0 gets it as /32)")
    p.add_argument("--mtu", type=int, default=0, help="tunl0 MTU (0: host MTU - 20)")
    p.add_argument("--allow", action="append", default=[], help="node address whose IPIP is accepted")
    p.add_argument("--no-gro", action="store_true", help="write every segment to the TUN on its own")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    mtu = args.mtu or tunnel_mtu(detect_host_mtu())
    ensure_tun_tunl0(_validate(args.address, mtu, "userspace"), mtu)
    fd = open_tun("tunl0", vnet_hdr=not args.no_gro)
    pump = IpipPump(fd, allowed_sources=args.allow, vnet_hdr=not args.no_gro)
    pump.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print("ready", flush=True)
    done.wait()
    pump.stop()
    os.close(fd)
    log.info("pump stats: %s", pump.stats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
