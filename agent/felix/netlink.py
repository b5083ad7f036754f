"""A small, fast rtnetlink client (stdlib only): link and route dumps, batched route changes.

pyroute2 costs milliseconds per request; Felix programs a route per endpoint,
so this module packs many requests into one send and reads the acks back,
and parses only the attributes Felix needs.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

NETLINK_ROUTE = 0
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_GETLINK, RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 18, 24, 25, 26
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP = 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
IFLA_IFNAME, IFLA_MTU, IFLA_EXT_MASK = 3, 4, 29
RTEXT_FILTER_SKIP_STATS = 1 << 3
RT_SCOPE_NOWHERE = 255
RTN_UNICAST = 1

_HDR = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_IFINFO = struct.Struct("=BxHiII")
_RTA = struct.Struct("=HH")
BATCH = 256


@dataclass(frozen=True)
class Link:
    """A network interface: index, name, MTU, flags."""

    index: int
    name: str
    mtu: int
    flags: int


@dataclass(frozen=True)
class Route:
    """An IPv4 route (the fields Felix reads)."""

    dst: str
    dst_len: int
    oif: int | None
    gateway: str | None
    table: int
    protocol: int
    scope: int
    type: int


class NetlinkError(OSError):
    """The kernel refused a request."""


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, data: bytes) -> bytes:
    length = _RTA.size + len(data)
    return _RTA.pack(length, kind) + data + b"\0" * (_align(length) - length)


def _attrs(buf: bytes, off: int, end: int, want: frozenset[int] | None = None) -> dict[int, bytes]:
    """Attributes in buf[off:end] ({type: payload}); stops early once every type in ``want`` is found."""
    out = {}
    unpack = _RTA.unpack_from
    while off + 4 <= end:
        length, kind = unpack(buf, off)
        if length < 4:
            break
        kind &= 0x3FFF
        if want is None or kind in want:
            out[kind] = buf[off + 4:off + length]
            if want is not None and len(out) == len(want):
                break
        off += (length + 3) & ~3
    return out


_LINK_ATTRS = frozenset({IFLA_IFNAME, IFLA_MTU})


class Netlink:
    """One NETLINK_ROUTE socket in the current network namespace."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, 33, 4 << 20)  # SO_RCVBUFFORCE
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((0, 0))
        self.seq = os.getpid() & 0xFFFF

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def _next(self) -> int:
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        return self.seq

    # -- dumps ---------------------------------------------------------------------
    def _dump(self, msg_type: int, body: bytes) -> Iterator[tuple[int, bytes, int]]:
        seq = self._next()
        self.sock.send(_HDR.pack(_HDR.size + len(body), msg_type, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
        while True:
            data = self.sock.recv(1 << 20)
            off = 0
            while off + _HDR.size <= len(data):
                length, mtype, _flags, mseq, _pid = _HDR.unpack_from(data, off)
                if length < _HDR.size:
                    return
                if mseq == seq:
                    if mtype == NLMSG_DONE:
                        return
                    if mtype == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", data, off + _HDR.size)[0]
                        if code:
                            raise NetlinkError(code, os.strerror(code))
                        return
                    yield mtype, data, off
                off += _align(length)

    def links(self) -> list[Link]:
        """All interfaces of this netns."""
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_EXT_MASK, struct.pack("=I", RTEXT_FILTER_SKIP_STATS))
        out = []
        for _t, data, off in self._dump(RTM_GETLINK, body):
            length = _HDR.unpack_from(data, off)[0]
            _fam, _type, index, flags, _change = _IFINFO.unpack_from(data, off + _HDR.size)
            a = _attrs(data, off + _HDR.size + _IFINFO.size, off + length, _LINK_ATTRS)
            name = a.get(IFLA_IFNAME, b"").rstrip(b"\0").decode()
            mtu = struct.unpack("=I", a[IFLA_MTU])[0] if IFLA_MTU in a else 0
            out.append(Link(index, name, mtu, flags))
        return out

    def routes(self, table: int = 254) -> list[Route]:
        """IPv4 routes of ``table`` (0 = all tables)."""
        body = _RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)
        out = []
        for _t, data, off in self._dump(RTM_GETROUTE, body):
            length = _HDR.unpack_from(data, off)[0]
            _f, dst_len, _s, _tos, tbl, proto, scope, rtype, _fl = _RTMSG.unpack_from(data, off + _HDR.size)
            a = _attrs(data, off + _HDR.size + _RTMSG.size, off + length)
            tbl = struct.unpack("=I", a[RTA_TABLE])[0] if RTA_TABLE in a else tbl
            if table and tbl != table:
                continue
            out.append(Route(
                socket.inet_ntoa(a[RTA_DST]) if RTA_DST in a else "0.0.0.0", dst_len,
                struct.unpack("=i", a[RTA_OIF])[0] if RTA_OIF in a else None,
                socket.inet_ntoa(a[RTA_GATEWAY]) if RTA_GATEWAY in a else None,
                tbl, proto, scope, rtype))
        return out

    # -- changes ---------------------------------------------------------------------
    @staticmethod
    def route_msg(op: str, dst: str, dst_len: int, oif: int | None, *, scope: int = 253, protocol: int = 3,
                  table: int = 254) -> tuple[int, int, bytes]:
        """(type, flags, body) of a route "replace" or "del" request."""
        if op == "replace":
            mtype, flags = RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE
            rtype = RTN_UNICAST
        elif op == "del":
            mtype, flags, scope, protocol, rtype = RTM_DELROUTE, 0, RT_SCOPE_NOWHERE, 0, 0
        else:
            raise ValueError(f"route op must be 'replace' or 'del', got {op!r}")
        body = _RTMSG.pack(socket.AF_INET, dst_len, 0, 0, table if table < 256 else 252, protocol, scope, rtype, 0)
        body += _attr(RTA_DST, socket.inet_aton(dst)) + _attr(RTA_TABLE, struct.pack("=I", table))
        if oif is not None:
            body += _attr(RTA_OIF, struct.pack("=i", oif))
        return mtype, flags, body

    def batch(self, requests: list[tuple[int, int, bytes]]) -> list[int]:
        """Send requests (acked, in batches); returns one errno per request (0 = ok)."""
        results = [0] * len(requests)
        for start in range(0, len(requests), BATCH):
            chunk = requests[start:start + BATCH]
            seqs = {}
            parts = []
            for i, (mtype, flags, body) in enumerate(chunk):
                seq = self._next()
                seqs[seq] = start + i
                parts.append(_HDR.pack(_HDR.size + len(body), mtype, NLM_F_REQUEST | NLM_F_ACK | flags, seq, 0) + body)
            self.sock.sendall(b"".join(parts))
            pending = set(seqs)
            while pending:
                data = self.sock.recv(1 << 20)
                off = 0
                while off + _HDR.size <= len(data):
                    length, mtype, _flags, mseq, _pid = _HDR.unpack_from(data, off)
                    if length < _HDR.size:
                        break
                    if mtype == NLMSG_ERROR and mseq in pending:
                        results[seqs[mseq]] = -struct.unpack_from("=i", data, off + _HDR.size)[0]
                        pending.discard(mseq)
                    off += _align(length)
        return results


def check(results: list[int], ignore: tuple[int, ...] = ()) -> None:
    """Raise NetlinkError for the first result that is an error not in ``ignore``."""
    for code in results:
        if code and code not in ignore:
            raise NetlinkError(code, os.strerror(code))


__all__ = ["Link", "Netlink", "NetlinkError", "Route", "check", "errno"]
