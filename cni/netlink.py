"""A small rtnetlink client in the standard library: links, veths, addresses, routes.

Why not pyroute2: ``import pyroute2`` alone costs ~150 ms here and its netns
sockets fork a helper process; the CNI plugin's budget is 60 ms for the whole
ADD. This module speaks the few rtnetlink messages the plugin needs directly
(``socket.AF_NETLINK`` + ``struct``), and enters a pod's network namespace with
``setns(2)`` on the calling thread only, so it is safe in the threaded server.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

NETLINK_ROUTE = 0
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
NLA_F_NESTED = 0x8000

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO = 1, 3, 4, 18
IFLA_NET_NS_FD, IFLA_LINK_NETNSID = 28, 37
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFF_UP = 0x1
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_HOST = 0, 253, 254
RTN_UNICAST = 1
CLONE_NEWNET = 0x40000000

_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NLHDR = struct.Struct("=IHHII")
_RTA = struct.Struct("=HH")

_libc = ctypes.CDLL(None, use_errno=True)
_seq_lock = threading.Lock()
_seq = [int.from_bytes(os.urandom(2), "little")]


def _next_seq() -> int:
    with _seq_lock:
        _seq[0] = (_seq[0] + 1) & 0x7FFFFFFF
        return _seq[0]


def _attr(kind: int, data: bytes) -> bytes:
    length = _RTA.size + len(data)
    return _RTA.pack(length, kind) + data + b"\0" * ((4 - length % 4) % 4)


def _attr_str(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


def _attr_u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def _parse_attrs(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    off = 0
    while off + _RTA.size <= len(data):
        length, kind = _RTA.unpack_from(data, off)
        if length < _RTA.size:
            break
        out[kind & ~NLA_F_NESTED] = data[off + _RTA.size : off + length]
        off += (length + 3) & ~3
    return out


def mac_to_bytes(mac: str) -> bytes:
    """``ee:ee:ee:ee:ee:ee`` -> 6 bytes."""
    return bytes(int(x, 16) for x in mac.split(":"))


def mac_to_str(raw: bytes) -> str:
    """6 bytes -> ``ee:ee:ee:ee:ee:ee``."""
    return ":".join(f"{b:02x}" for b in raw)


@dataclass
class Link:
    """A network interface as the kernel reports it."""

    index: int
    name: str
    mac: str
    mtu: int
    flags: int
    kind: str = ""
    link_netnsid: int | None = None

    @property
    def up(self) -> bool:
        """True when IFF_UP is set."""
        return bool(self.flags & IFF_UP)


@dataclass
class Addr:
    """An IPv4 address on an interface."""

    address: str
    prefixlen: int
    index: int


@dataclass
class RouteEntry:
    """An IPv4 route of the main table."""

    dst: str  # CIDR, "0.0.0.0/0" for default
    oif: int
    gateway: str
    scope: int
    protocol: int
    table: int


class NetlinkError(OSError):
    """A netlink request failed; ``errno`` is the kernel's error."""


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def in_netns(path: str) -> Iterator[None]:
    """Run the block with the calling thread inside the network namespace at ``path``."""
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot open network namespace {path}: {exc.strerror}") from None
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _setns(target)
        except OSError as exc:
            raise OSError(exc.errno, f"{path} is not a network namespace ({exc.strerror})") from None
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


class Netlink:
    """One rtnetlink socket (in the namespace where it was opened)."""

    def __init__(self, netns: str | None = None) -> None:
        if netns:
            with in_netns(netns):
                self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        else:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, mtype: int, flags: int, payload: bytes) -> list[tuple[int, bytes]]:
        """Send one request; return the (type, body) replies; raise NetlinkError on a kernel error."""
        seq = _next_seq()
        msg = _NLHDR.pack(_NLHDR.size + len(payload), mtype, flags | NLM_F_REQUEST | NLM_F_ACK, seq, 0) + payload
        self.sock.send(msg)
        replies: list[tuple[int, bytes]] = []
        while True:
            data = self.sock.recv(1 << 20)
            off = 0
            while off + _NLHDR.size <= len(data):
                length, rtype, _rflags, rseq, _pid = _NLHDR.unpack_from(data, off)
                body = data[off + _NLHDR.size : off + length]
                off += (length + 3) & ~3
                if rseq != seq:
                    continue
                if rtype == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", body)
                    if code:
                        raise NetlinkError(-code, os.strerror(-code))
                    return replies
                if rtype == NLMSG_DONE:
                    return replies
                replies.append((rtype, body))  # a single answer is followed by the ACK

    # -- links -------------------------------------------------------------
    @staticmethod
    def _parse_link(body: bytes) -> Link:
        _fam, _type, index, flags, _change = _IFINFO.unpack_from(body)
        attrs = _parse_attrs(body[_IFINFO.size :])
        kind = ""
        if IFLA_LINKINFO in attrs:
            info = _parse_attrs(attrs[IFLA_LINKINFO])
            kind = info.get(IFLA_INFO_KIND, b"").rstrip(b"\0").decode()
        nsid = struct.unpack("=i", attrs[IFLA_LINK_NETNSID])[0] if IFLA_LINK_NETNSID in attrs else None
        return Link(
            index=index,
            name=attrs.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(),
            mac=mac_to_str(attrs.get(IFLA_ADDRESS, b"")),
            mtu=struct.unpack("=I", attrs[IFLA_MTU])[0] if IFLA_MTU in attrs else 0,
            flags=flags,
            kind=kind,
            link_netnsid=nsid,
        )

    def link_get(self, name: str) -> Link | None:
        """The link called ``name``, or None."""
        try:
            replies = self.request(RTM_GETLINK, 0, _IFINFO.pack(0, 0, 0, 0, 0) + _attr_str(IFLA_IFNAME, name))
        except NetlinkError as exc:
            if exc.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise
        for rtype, body in replies:
            if rtype == RTM_NEWLINK:
                return self._parse_link(body)
        return None

    def link_list(self) -> list[Link]:
        """All links of this namespace."""
        return [self._parse_link(b) for t, b in self.request(RTM_GETLINK, NLM_F_DUMP, _IFINFO.pack(0, 0, 0, 0, 0)) if t == RTM_NEWLINK]

    def veth_create(self, name: str, peer: str, peer_netns_fd: int, mtu: int, mac: str | None = None,
                    peer_mac: str | None = None) -> None:
        """Create veth ``name`` here with its peer ``peer`` made directly in the namespace ``peer_netns_fd``."""
        peer_msg = (
            _IFINFO.pack(0, 0, 0, 0, 0)
            + _attr_str(IFLA_IFNAME, peer)
            + _attr_u32(IFLA_MTU, mtu)
            + _attr_u32(IFLA_NET_NS_FD, peer_netns_fd)
        )
        if peer_mac:
            peer_msg += _attr(IFLA_ADDRESS, mac_to_bytes(peer_mac))
        linkinfo = _attr_str(IFLA_INFO_KIND, "veth") + _attr(IFLA_INFO_DATA | NLA_F_NESTED, _attr(VETH_INFO_PEER, peer_msg))
        body = _IFINFO.pack(0, 0, 0, 0, 0) + _attr_str(IFLA_IFNAME, name) + _attr_u32(IFLA_MTU, mtu)
        if mac:
            body += _attr(IFLA_ADDRESS, mac_to_bytes(mac))
        body += _attr(IFLA_LINKINFO | NLA_F_NESTED, linkinfo)
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)

    def link_set(self, index: int, *, up: bool | None = None, mac: str | None = None) -> None:
        """Set a link up/down and/or its MAC address."""
        flags = change = 0
        if up is not None:
            change = IFF_UP
            flags = IFF_UP if up else 0
        body = _IFINFO.pack(0, 0, index, flags, change)
        if mac:
            body += _attr(IFLA_ADDRESS, mac_to_bytes(mac))
        self.request(RTM_SETLINK, 0, body)

    def link_delete(self, index: int) -> None:
        """Delete a link (both ends, for a veth)."""
        self.request(RTM_DELLINK, 0, _IFINFO.pack(0, 0, index, 0, 0))

    # -- addresses ------------------------------------------------------------
    def addr_add(self, index: int, address: str, prefixlen: int) -> None:
        """Add an IPv4 address (``ip addr add address/prefixlen dev index``)."""
        packed = ipaddress.IPv4Address(address).packed
        body = _IFADDR.pack(socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, index)
        body += _attr(IFA_LOCAL, packed) + _attr(IFA_ADDRESS, packed)
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)

    def addr_list(self) -> list[Addr]:
        """All IPv4 addresses of this namespace."""
        out = []
        for rtype, body in self.request(RTM_GETADDR, NLM_F_DUMP, _IFADDR.pack(socket.AF_INET, 0, 0, 0, 0)):
            if rtype != RTM_NEWADDR:
                continue
            fam, plen, _fl, _scope, index = _IFADDR.unpack_from(body)
            attrs = _parse_attrs(body[_IFADDR.size :])
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if fam == socket.AF_INET and raw:
                out.append(Addr(str(ipaddress.IPv4Address(raw)), plen, index))
        return out

    # -- routes -----------------------------------------------------------------
    def route_add(self, dst: str, oif: int, gateway: str = "", scope: int = RT_SCOPE_UNIVERSE) -> None:
        """Add an IPv4 route to the main table with protocol boot (what iproute2 prints as no proto)."""
        net = ipaddress.IPv4Network(dst)
        body = _RTMSG.pack(socket.AF_INET, net.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, scope, RTN_UNICAST, 0)
        if net.prefixlen:
            body += _attr(RTA_DST, net.network_address.packed)
        body += _attr_u32(RTA_OIF, oif)
        if gateway:
            body += _attr(RTA_GATEWAY, ipaddress.IPv4Address(gateway).packed)
        self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body)

    def route_delete(self, dst: str, oif: int) -> None:
        """Delete the main-table route to ``dst`` through ``oif``."""
        net = ipaddress.IPv4Network(dst)
        body = _RTMSG.pack(socket.AF_INET, net.prefixlen, 0, 0, RT_TABLE_MAIN, 0, 0, 0, 0)
        if net.prefixlen:
            body += _attr(RTA_DST, net.network_address.packed)
        body += _attr_u32(RTA_OIF, oif)
        self.request(RTM_DELROUTE, 0, body)

    def route_list(self) -> list[RouteEntry]:
        """IPv4 routes of the main table."""
        out = []
        for rtype, body in self.request(RTM_GETROUTE, NLM_F_DUMP, _RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)):
            if rtype != RTM_NEWROUTE:
                continue
            fam, dlen, _sl, _tos, table, proto, scope, _rtype, _flags = _RTMSG.unpack_from(body)
            attrs = _parse_attrs(body[_RTMSG.size :])
            if RTA_TABLE in attrs:
                table = struct.unpack("=I", attrs[RTA_TABLE])[0]
            if fam != socket.AF_INET or table != RT_TABLE_MAIN:
                continue
            dst = str(ipaddress.IPv4Address(attrs[RTA_DST])) if RTA_DST in attrs else "0.0.0.0"
            out.append(
                RouteEntry(
                    dst=f"{dst}/{dlen}",
                    oif=struct.unpack("=I", attrs[RTA_OIF])[0] if RTA_OIF in attrs else 0,
                    gateway=str(ipaddress.IPv4Address(attrs[RTA_GATEWAY])) if RTA_GATEWAY in attrs else "",
                    scope=scope,
                    protocol=proto,
                    table=table,
                )
            )
        return out
