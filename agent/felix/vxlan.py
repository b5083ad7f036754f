"""vxlan.calico: the kernel VXLAN device Felix's VXLAN manager keeps (calico.md section 7).

``ensure_vxlan_device(kernel, want)`` makes it look as ``configureVXLANDevice`` leaves it:
VNI and UDP port as configured (4096, 4789), ``local`` the node's address and ``dev`` the
interface that holds that address (the parent), learning off, the VTEP MAC, the MTU
(host MTU - 50), transmit checksum offload off (``ChecksumOffloadBroken``), the tunnel
IP as its only address (/32), up. A device whose VNI, port, local address or parent
differ is deleted and made again. ``remove_vxlan_device`` deletes it when VXLAN is off
(``cleanUpVXLANDevice``); its routes and neighbour entries go with it.
"""

from __future__ import annotations

import errno
import logging

from agent.felix.encap import VXLAN_DEVICE, VxlanDevice
from kernel import Kernel, KernelError, Link, LinkAdd, LinkDel, Vxlan

log = logging.getLogger(__name__)


class VxlanError(RuntimeError):
    """vxlan.calico could not be set up as asked (the message says why)."""


def parent_of(kernel: Kernel, address: str) -> Link:
    """The link holding ``address`` (the VTEP's parent device, ``getParentInterface``)."""
    for a in kernel.addrs():
        if a.address == address:
            ln = kernel.link_by_index(a.index)
            if ln is not None:
                return ln
    raise VxlanError(f"Unable to find parent interface with address {address}")


def incompatible(link: Link, want: VxlanDevice, parent: int) -> str:
    """Why an existing vxlan.calico cannot be kept (``vxlanLinksIncompat``), "" if it can."""
    if link.kind != "vxlan":
        return f"link type: {link.kind or 'none'} vs vxlan"
    info = link.info
    if info.get("vni") != want.vni:
        return f"vni: {info.get('vni')} vs {want.vni}"
    if info.get("dev") and info["dev"] != parent:
        return f"vtep (external) interface: {info['dev']} vs {parent}"
    if info.get("local") and info["local"] != want.local:
        return f"vtep (external) IP: {info['local']} vs {want.local}"
    if info.get("port") and info["port"] != want.port:
        return f"port: {info['port']} vs {want.port}"
    return ""


def ensure_vxlan_device(kernel: Kernel, want: VxlanDevice) -> tuple[Link, Link]:
    """Make vxlan.calico match ``want`` in ``kernel``'s namespace; returns (device, parent)."""
    parent = parent_of(kernel, want.local)
    spec = Vxlan(want.name, vni=want.vni, port=want.port, local=want.local, dev=parent.index,
                 learning=False, mtu=want.mtu, mac=want.mac)
    link = kernel.link(want.name)
    if link is not None and (why := incompatible(link, want, parent.index)):
        log.warning("%s exists with incompatible configuration: %s; recreating device", want.name, why)
        kernel.do(LinkDel(link.index))
        link = None
    if link is None:
        res = kernel.submit([LinkAdd(spec)])[0]
        if res is not None and res.errno != errno.EEXIST:  # EEXIST: made meanwhile by someone else
            raise VxlanError(f"failed to create {want.name}: {res.strerror}")
        link = kernel.link(want.name)
        if link is None:
            raise VxlanError(f"can't locate created vxlan device {want.name}")
        log.info("created %s (VNI %d, port %d, local %s dev %s, MAC %s)", want.name, want.vni, want.port,
                 want.local, parent.name, want.mac)
    changes = {}
    if link.mtu != want.mtu:
        changes["mtu"] = want.mtu
    if link.mac.lower() != want.mac:
        changes["mac"] = want.mac
    if changes:
        kernel.link_set(link.index, **changes)
    have = [a for a in kernel.addrs() if a.index == link.index]
    for a in have:
        if (a.address, a.prefixlen) != (want.address, 32):
            log.warning("removing unwanted address %s from %s", a.cidr, want.name)
            kernel.addr_del(link.index, a.cidr)
    if not any((a.address, a.prefixlen) == (want.address, 32) for a in have):
        kernel.addr_add(link.index, f"{want.address}/32")
    if kernel.tx_checksum(want.name):
        kernel.set_tx_checksum(want.name, False)
    if not link.up:
        kernel.link_set(link.index, up=True)
    got = kernel.link(want.name)
    if got is None:
        raise VxlanError(f"{want.name} vanished while being configured")
    return got, parent


def remove_vxlan_device(kernel: Kernel, name: str = VXLAN_DEVICE) -> bool:
    """Delete vxlan.calico if it exists (VXLAN turned off); True if it was there."""
    link = kernel.link(name)
    if link is None:
        return False
    try:
        kernel.do(LinkDel(link.index))
    except KernelError as exc:
        if exc.errno not in (errno.ENODEV, errno.ENOENT):
            raise
        return False
    log.info("VXLAN is off: deleted %s", name)
    return True
