"""Which TCP ports listen in a network namespace, asked by sock_diag netlink (what ``ss -ltn``
does) instead of reading ``/proc/<pid>/net/tcp``.

Reading ``/proc/<pid>/net/tcp`` makes the kernel walk the whole established-connections hash
of the machine (every namespace's sockets share it) for each read: in a 50-node lab, with
thousands of BGP, watch and pod connections, one read of a port not yet listening cost 12 ms
of CPU (31 ms wall), and the kubelet reads it every few milliseconds while a container starts. A
``SOCK_DIAG_BY_FAMILY`` dump asking for the LISTEN state only walks the listening hash.

:func:`request` and :func:`parse` are pure (golden bytes in tests/unit/test_sockdiag.py), on
:mod:`kernel.rtnl`'s netlink message framing;
:func:`listening_ports` opens the netlink socket inside the namespace and asks.
"""

from __future__ import annotations

import os
import socket
import struct

from kernel import rtnl

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
TCP_LISTEN = 10
# struct inet_diag_req_v2: family, protocol, ext, pad, states, then inet_diag_sockid
# (sport, dport big-endian; src[4], dst[4]; if; cookie[2])
_REQ = struct.Struct("=BBBxI")
_SOCKID_LEN = 48  # a zeroed inet_diag_sockid: no address or port filter
# struct inet_diag_msg: family, state, timer, retrans, then the sockid (sport first)
_MSG_HEAD = struct.Struct("=BBBB")
_SPORT = struct.Struct("!H")


def request(family: int = socket.AF_INET, seq: int = 1) -> bytes:
    """The netlink dump request for the TCP sockets of ``family`` in LISTEN state."""
    body = _REQ.pack(family, socket.IPPROTO_TCP, 0, 1 << TCP_LISTEN) + bytes(_SOCKID_LEN)
    return rtnl.message(SOCK_DIAG_BY_FAMILY, rtnl.NLM_F_REQUEST | rtnl.NLM_F_DUMP, seq, body)


def parse(data: bytes) -> tuple[set[int], bool]:
    """(local ports of the LISTEN sockets in ``data``, True once the dump is done); OSError
    for a netlink error message or a message that cannot be walked."""
    ports: set[int] = set()
    walked = 0
    for mtype, flags, _seq, body, end in rtnl.messages(data):
        walked = (end + 3) & ~3
        if mtype == rtnl.NLMSG_DONE:
            return ports, True
        if mtype == rtnl.NLMSG_ERROR:
            err, detail = rtnl.parse_error(data, body, end, flags)
            if err:
                raise OSError(err, f"sock_diag: {detail or os.strerror(err)}")
        elif mtype == SOCK_DIAG_BY_FAMILY and end - body >= _MSG_HEAD.size + _SPORT.size:
            _family, state, _timer, _retrans = _MSG_HEAD.unpack_from(data, body)
            if state == TCP_LISTEN:
                ports.add(_SPORT.unpack_from(data, body + _MSG_HEAD.size)[0])
    if walked < len(data):
        raise OSError(f"sock_diag: malformed netlink message at byte {walked} of {len(data)}")
    return ports, False


def listening_ports(netns: str | os.PathLike[str] | None = None) -> set[int]:
    """The TCP ports (IPv4 and IPv6) with a listening socket in ``netns`` (a namespace file
    such as ``/proc/<pid>/ns/net``; None: this thread's). OSError if it cannot be asked."""
    from kernel.netns import entered

    with entered(netns):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
    try:
        sock.settimeout(2.0)
        ports: set[int] = set()
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), start=1):
            sock.send(request(family, seq))
            done = False
            while not done:
                got, done = parse(sock.recv(65536))
                ports |= got
        return ports
    finally:
        sock.close()
