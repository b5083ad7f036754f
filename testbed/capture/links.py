"""Link events of one network namespace over rtnetlink: the capture's interface watcher.

:func:`link_socket` opens a ``NETLINK_ROUTE`` socket subscribed to link events inside a
netns, :func:`request_dump` asks for every link, and :func:`parse_link_messages` decodes
what arrives (pure, unit-testable).
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

from testbed.capture.errors import CaptureError

_CLONE_NEWNET = 0x40000000
_RTM_NEWLINK, _RTM_DELLINK, _RTM_GETLINK = 16, 17, 18
_NLMSG_DONE, _NLMSG_ERROR = 3, 2
_IFF_UP = 0x1
_IFLA_IFNAME = 3


def _libc() -> Any:
    return ctypes.CDLL("libc.so.6", use_errno=True)


def netns_path(netns: str | None) -> str | None:
    if netns is None:
        return None
    if "/" in netns:
        return netns
    return f"/run/netns/{netns}"


def link_socket(netns: str | None) -> socket.socket:
    """A NETLINK_ROUTE socket subscribed to link events, created inside ``netns``.

    The network namespace is switched for the calling thread only, and restored.
    """
    path = netns_path(netns)
    if path is None:
        return _bind_link_socket()
    libc = _libc()
    orig = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        os.close(orig)
        raise CaptureError(f"network namespace {netns!r} does not exist ({path})") from None
    try:
        if libc.setns(target, _CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise CaptureError(f"cannot enter network namespace {netns!r}: {os.strerror(e)}")
        try:
            return _bind_link_socket()
        finally:
            if libc.setns(orig, _CLONE_NEWNET) != 0:  # pragma: no cover - would be fatal
                raise CaptureError("cannot return to the original network namespace")
    finally:
        os.close(target)
        os.close(orig)


def _bind_link_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((0, 1))  # RTMGRP_LINK
    return sock


def request_dump(sock: socket.socket, seq: int) -> None:
    hdr = struct.pack("=IHHII", 16 + 16, _RTM_GETLINK, 0x1 | 0x300, seq, 0)
    sock.send(hdr + struct.pack("=BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0))


def parse_link_messages(data: bytes) -> Iterator[tuple[str, int, str | None, bool]]:
    """Decode rtnetlink link messages: yields ``(event, ifindex, name, up)``.

    ``event`` is "new", "del" or "done" (end of a dump). Pure function, unit-testable.
    """
    off = 0
    while off + 16 <= len(data):
        length, mtype, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, off)
        if length < 16:
            break
        if mtype == _NLMSG_DONE:
            yield ("done", 0, None, False)
        elif mtype in (_RTM_NEWLINK, _RTM_DELLINK) and length >= 32:
            _fam, _type, index, flags, _chg = struct.unpack_from("=BxHiII", data, off + 16)
            name = None
            a = off + 32
            end = off + length
            while a + 4 <= end:
                alen, atype = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if atype == _IFLA_IFNAME:
                    name = data[a + 4:a + alen].split(b"\0", 1)[0].decode()
                a += (alen + 3) & ~3
            yield ("new" if mtype == _RTM_NEWLINK else "del", index, name, bool(flags & _IFF_UP))
        off += (length + 3) & ~3
