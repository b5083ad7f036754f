"""tunl0: the kernel ipip device where the kernel has it, else a persistent TUN + pump.

``ensure_tunl0(kernel, address, mtu)`` makes tunl0 look as Felix leaves it: link up,
the only address the tunnel IP as /32, the given MTU, in the namespace of the kernel
handle it is given (:mod:`kernel`). Which tunl0 a node gets is :func:`choose_datapath`'s
answer: the kernel's ipip device where the kernel has one; else (this project's machine,
no ``CONFIG_NET_IPIP``) the in-kernel tc-BPF tunnel (:mod:`agent.felix.bpftunnel`, set up
by Felix); else, as a fallback where BPF cannot run it, a persistent TUN named tunl0 on
which the caller runs :class:`agent.felix.pump.IpipPump` (:func:`open_tun`'s fd).

Run as ``python -m agent.felix.tunnel --address 192.168.0.1 --allow 172.30.0.11 ...``
to hold a userspace tunnel in the current netns until SIGTERM (used by tests
and benchmarks).
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import logging
import os
import re
import signal
import threading
from dataclasses import dataclass

from kernel import Ipip, Kernel, KernelError, Link, LinkAdd, Tun
from kernel.netlink import Netlink

log = logging.getLogger(__name__)

IPIP_OVERHEAD = 20
DEFAULT_HOST_MTU = 1460
MTU_IFACE_PATTERN = r"^((en|wl|ww|sl|ib)[Pcopsvx].*|(eth|wlan|wwan).*)"
MODES = ("auto", "kernel", "bpf", "userspace")

class TunnelError(RuntimeError):
    """tunl0 could not be set up as asked."""


@dataclass(frozen=True)
class TunnelInfo:
    """What ensure_tunl0 made: kind is "kernel" (ipip) or "userspace" (TUN + pump)."""

    kind: str  # "kernel", "bpf" or "userspace"
    ifname: str
    address: str
    mtu: int


def kernel_has_ipip(kernel: Kernel) -> bool:
    """True when this kernel can make ipip devices (module loaded, built in, or loadable);
    probed once per kernel handle."""
    return kernel.can_create("ipip")


def choose_datapath(kernel: Kernel, mode: str = "auto") -> tuple[str, str | None]:
    """(datapath, note) for tunnel mode ``mode``: "kernel" (ipip), "bpf" (tc-BPF, in-kernel,
    outlives calico-node) or "userspace" (TUN + pump in calico-node). "auto" picks the first
    this kernel can run; the note says why a fallback was taken. A forced mode the kernel
    cannot run is a TunnelError naming the reason."""
    if mode not in MODES:
        raise TunnelError(f"tunnel mode {mode!r} is not one of {', '.join(MODES)}")
    if mode == "userspace":
        return "userspace", None
    if mode == "kernel" or (mode == "auto" and kernel_has_ipip(kernel)):
        if not kernel_has_ipip(kernel):
            raise TunnelError("kernel tunl0 asked for, but this kernel has no ipip support")
        return "kernel", None
    reason = tc_bpf_unsupported(kernel)
    if reason is None:
        return "bpf", None
    if mode == "bpf":
        raise TunnelError(f"tc-BPF tunl0 asked for, but this kernel cannot run it: {reason}")
    return "userspace", f"fallback: no ipip in the kernel and tc-BPF unavailable ({reason})"


def tc_bpf_unsupported(kernel: Kernel) -> str | None:
    """Why the tc-BPF tunl0 cannot run on ``kernel`` (None: it can). A handle may answer for
    itself (``tc_bpf_reason()``, e.g. a fake in unit tests); a real netlink handle is probed
    (:func:`agent.felix.bpftunnel.unsupported_reason`); anything else has no BPF."""
    answer = getattr(kernel, "tc_bpf_reason", None)
    if answer is not None:
        return answer()
    if not isinstance(kernel, Netlink):
        return f"{type(kernel).__name__} is not a real kernel"
    from agent.felix.bpfprobe import unsupported_reason

    return unsupported_reason()


def detect_host_mtu(kernel: Kernel, pattern: str = MTU_IFACE_PATTERN) -> int:
    """Smallest MTU of the UP interfaces whose name matches ``pattern`` (Felix's findHostMTU), else 1460.

    Reads links over netlink (not /sys, which shows the machine's interfaces
    inside a Mininet host that did not remount sysfs).
    """
    rx = re.compile(pattern)
    found = [ln.mtu for ln in kernel.links(brief=True) if rx.match(ln.name) and ln.up]
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


def ensure_tunl0(kernel: Kernel, address: str, mtu: int, mode: str = "auto") -> TunnelInfo:
    """Make tunl0 exist in ``kernel``'s namespace, up, with ``address``/32 as its only address
    and MTU ``mtu``.

    mode "auto" picks the kernel ipip device when :func:`kernel_has_ipip`,
    else the userspace TUN; "kernel"/"userspace" force one (kernel fails
    clearly when the kernel lacks ipip). Idempotent. (The tc-BPF tunl0, mode
    "bpf", needs the allowed hosts and a bpffs: :class:`agent.felix.bpftunnel.BpfTunnel`.)
    """
    addr = _validate(address, mtu, mode)
    if mode == "bpf":
        raise TunnelError("the tc-BPF tunl0 is made by agent.felix.bpftunnel.BpfTunnel, not ensure_tunl0")
    if mode == "auto":
        mode = "kernel" if kernel_has_ipip(kernel) else "userspace"
    if mode == "kernel":
        if not kernel_has_ipip(kernel):
            raise TunnelError("kernel tunl0 asked for, but this kernel has no ipip support")
        ensure_kernel_tunl0(kernel, addr, mtu)
        return TunnelInfo("kernel", "tunl0", addr, mtu)
    ensure_tun_tunl0(kernel, addr, mtu)
    return TunnelInfo("userspace", "tunl0", addr, mtu)


def ensure_kernel_tunl0(kernel: Kernel, address: str, mtu: int) -> None:
    """Kernel path: the ipip tunl0 (auto-created by the module, else added), up, /32, MTU."""
    link = kernel.link("tunl0")
    if link is None:
        try:
            kernel.do(LinkAdd(Ipip("tunl0")))
        except KernelError as exc:
            if exc.errno != errno.EEXIST:
                raise TunnelError(f"cannot create ipip tunl0: {exc.strerror}") from exc
        link = kernel.link("tunl0")
        if link is None:
            raise TunnelError("ipip tunl0 vanished right after creation")
    if link.kind not in ("", "ipip"):
        raise TunnelError(f"tunl0 exists but is a {link.kind} device, not ipip")
    _set_link_and_address(kernel, link, address, mtu)


def open_tun(kernel: Kernel, ifname: str = "tunl0", vnet_hdr: bool = True) -> int:
    """Attach to (creating if needed) the TUN ``ifname``; returns the fd. Fails if someone else holds it.

    With ``vnet_hdr`` every read and write carries a 10-byte virtio-net header
    (lets the pump hand merged TCP segments to the kernel as one GSO frame).
    """
    try:
        return kernel.tun_open(ifname, vnet_hdr)
    except KernelError as exc:
        if exc.errno == errno.EBUSY:
            raise TunnelError(f"{ifname} is attached to another process (is another agent running?)") from exc
        raise TunnelError(f"{ifname} exists and is not a TUN device ({exc.strerror})") from exc


def ensure_tun_tunl0(kernel: Kernel, address: str, mtu: int) -> None:
    """Userspace path: a persistent TUN tunl0 (survives the agent), up, /32, MTU."""
    link = kernel.link("tunl0")
    if link is None or link.kind != "tun":
        try:
            kernel.do(LinkAdd(Tun("tunl0")))
        except KernelError as exc:
            if exc.errno == errno.EBUSY:
                raise TunnelError("tunl0 is attached to another process (is another agent running?)") from exc
            raise TunnelError(f"tunl0 exists and is not a TUN device ({exc.strerror})") from exc
        link = kernel.link("tunl0")
        if link is None:
            raise TunnelError("TUN tunl0 vanished right after creation")
    _set_link_and_address(kernel, link, address, mtu)


def _set_link_and_address(kernel: Kernel, link: Link, address: str, mtu: int) -> None:
    """tunl0 up with ``mtu`` (txqlen at least 1000) and ``address``/32 as its only IPv4 address."""
    if link.mtu != mtu or not link.up or link.txqlen < 1000:
        kernel.link_set(link.index, mtu=mtu, up=True, txqlen=max(1000, link.txqlen))
    set_only_address(kernel, link.index, address)


def set_only_address(kernel: Kernel, index: int, address: str) -> None:
    """``address``/32 as the only IPv4 address of link ``index``."""
    have = [a for a in kernel.addrs() if a.index == index]
    for a in have:
        if (a.address, a.prefixlen) != (address, 32):
            kernel.addr_del(index, a.cidr)
    if not any((a.address, a.prefixlen) == (address, 32) for a in have):
        kernel.addr_add(index, f"{address}/32")


def strip_tunl0(kernel: Kernel) -> bool:
    """IPIP is off: remove every IPv4 address from tunl0 (Felix's ``cleanUpIPIPAddrs``);
    True if there was one to remove. The device stays."""
    link = kernel.link("tunl0")
    if link is None:
        return False
    have = [a for a in kernel.addrs() if a.index == link.index]
    for a in have:
        kernel.addr_del(link.index, a.cidr)
    return bool(have)


def tunl0_kind(kernel: Kernel) -> str | None:
    """"kernel" (ipip), "bpf" (veth), "userspace" (TUN) or None: what tunl0 in ``kernel``'s
    namespace is."""
    link = kernel.link("tunl0")
    if link is None:
        return None
    if link.kind == "tun":
        return "userspace"
    if link.kind == "veth":
        return "bpf"
    return "kernel" if link.kind in ("ipip", "") else link.kind


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
    kernel = Netlink()
    mtu = args.mtu or tunnel_mtu(detect_host_mtu(kernel))
    ensure_tun_tunl0(kernel, _validate(args.address, mtu, "userspace"), mtu)
    fd = open_tun(kernel, "tunl0", vnet_hdr=not args.no_gro)
    pump = IpipPump(fd, allowed_sources=args.allow, vnet_hdr=not args.no_gro, kernel=kernel)
    pump.start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print("ready", flush=True)
    done.wait()
    pump.stop()
    os.close(fd)
    kernel.close()
    log.info("pump stats: %s", pump.stats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
