"""rtnetlink codec: operations -> request bytes, kernel messages -> model objects.

Pure functions, no sockets (ExaBGP's codec shape). Requests are laid out as
iproute2 lays out the same command (attribute order included), so golden-byte
tests compare them with what ``ip``/``bridge`` send; parsers read what the
kernel sends back (tests/unit/test_kernel_rtnl.py, tests/netns/test_kernel_netlink.py).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any

from kernel.model import (
    AF_BRIDGE,
    AF_INET,
    AF_INET6,
    IFF_NOARP,
    RT_SCOPE_NOWHERE,
    RT_TABLE_MAIN,
    RTNH_F_ONLINK,
    Addr,
    AddrAdd,
    AddrDel,
    Bridge,
    Ipip,
    Link,
    LinkAdd,
    LinkDel,
    LinkSet,
    Neigh,
    NeighAdd,
    NeighDel,
    NextHop,
    Route,
    RouteAdd,
    RouteDel,
    Tun,
    Veth,
    Vxlan,
)

# netlink
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_ECHO, NLM_F_DUMP_INTR = 0x1, 0x2, 0x4, 0x8, 0x10
NLM_F_ROOT, NLM_F_MATCH, NLM_F_DUMP = 0x100, 0x200, 0x300
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE, NLM_F_APPEND = 0x100, 0x200, 0x400, 0x800
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200
NLMSGERR_ATTR_MSG = 1
NLA_F_NESTED, NLA_F_NET_BYTEORDER = 0x8000, 0x4000
NLA_TYPE_MASK = 0x3FFF
RTMGRP_LINK, RTMGRP_NEIGH, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE = 0x1, 0x4, 0x10, 0x40

# message types
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30

# attributes
IFLA_ADDRESS, IFLA_BROADCAST, IFLA_IFNAME, IFLA_MTU, IFLA_LINK = 1, 2, 3, 4, 5
IFLA_MASTER, IFLA_TXQLEN, IFLA_OPERSTATE, IFLA_LINKINFO = 10, 13, 16, 18
IFLA_NET_NS_FD, IFLA_EXT_MASK, IFLA_NUM_TX_QUEUES, IFLA_NUM_RX_QUEUES, IFLA_LINK_NETNSID = 28, 29, 31, 32, 37
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFLA_VXLAN_ID, IFLA_VXLAN_GROUP, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL = 1, 2, 3, 4
IFLA_VXLAN_TTL, IFLA_VXLAN_LEARNING, IFLA_VXLAN_PORT = 5, 7, 15
IFLA_IPTUN_LINK, IFLA_IPTUN_LOCAL, IFLA_IPTUN_REMOTE, IFLA_IPTUN_TTL = 1, 2, 3, 4
IFLA_IPTUN_PMTUDISC = 10
IFLA_BR_FORWARD_DELAY, IFLA_BR_STP_STATE = 1, 5  # linux/if_link.h, bridge IFLA_INFO_DATA
IFLA_TUN_OWNER, IFLA_TUN_GROUP, IFLA_TUN_TYPE, IFLA_TUN_PI = 1, 2, 3, 4
IFLA_TUN_VNET_HDR, IFLA_TUN_PERSIST, IFLA_TUN_MULTI_QUEUE = 5, 6, 7
RTEXT_FILTER_SKIP_STATS = 1 << 3
IFA_ADDRESS, IFA_LOCAL, IFA_LABEL, IFA_FLAGS = 1, 2, 3, 8
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC = 1, 4, 5, 6, 7
RTA_MULTIPATH, RTA_TABLE = 9, 15
NDA_DST, NDA_LLADDR, NDA_PORT, NDA_VNI, NDA_MASTER = 1, 2, 6, 7, 9

HDR = struct.Struct("=IHHII")       # nlmsghdr: len, type, flags, seq, pid
IFINFO = struct.Struct("=BxHiII")   # ifinfomsg: family, type, index, flags, change
IFADDR = struct.Struct("=BBBBI")    # ifaddrmsg: family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
NDMSG = struct.Struct("=BxxxiHBB")  # ndmsg: family, ifindex, state, flags, type
RTNH = struct.Struct("=HBBi")       # rtnexthop: len, flags, hops, ifindex
RTA = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")

_KIND_INFO = {"veth", "vxlan", "ipip", "tun", "bridge"}


# ----------------------------------------------------------------------------- attributes


def attr(kind: int, data: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    length = 4 + len(data)
    return RTA.pack(length, kind) + data + b"\0" * (-length % 4)


def attr_u8(kind: int, value: int) -> bytes:
    """An 8-bit attribute."""
    return attr(kind, bytes((value,)))


def attr_u32(kind: int, value: int) -> bytes:
    """A 32-bit host-order attribute."""
    return attr(kind, _U32.pack(value))


def attr_be16(kind: int, value: int) -> bytes:
    """A 16-bit network-order attribute (ports)."""
    return attr(kind, struct.pack("!H", value))


def attr_str(kind: int, text: str) -> bytes:
    """A NUL-terminated string attribute."""
    return attr(kind, text.encode() + b"\0")


def nest(kind: int, *parts: bytes) -> bytes:
    """A nested attribute (without NLA_F_NESTED, as iproute2 sends IFLA_LINKINFO)."""
    return attr(kind, b"".join(parts))


def attrs(buf: bytes | bytearray | memoryview, off: int = 0, end: int | None = None,
          want: frozenset[int] | None = None) -> dict[int, bytes]:
    """Attributes in ``buf[off:end]`` as {type (flags stripped): payload}; with ``want``, only
    those types are copied out (a link carries ~40 attributes, callers read ~10)."""
    end = len(buf) if end is None else end
    out: dict[int, bytes] = {}
    unpack = RTA.unpack_from
    while off + 4 <= end:
        length, kind = unpack(buf, off)
        if length < 4:
            break
        kind &= NLA_TYPE_MASK
        if want is None or kind in want:
            out[kind] = bytes(buf[off + 4:off + length])
        off += (length + 3) & ~3
    return out


def mac_bytes(mac: str) -> bytes:
    """``"ee:ee:ee:ee:ee:ee"`` -> 6 bytes (ValueError naming the bad MAC)."""
    parts = mac.split(":")
    try:
        raw = bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"invalid MAC address {mac!r}") from None
    if len(raw) != 6 or any(len(p) not in (1, 2) for p in parts):
        raise ValueError(f"invalid MAC address {mac!r}")
    return raw


def mac_str(raw: bytes) -> str:
    """6 bytes -> ``"ee:ee:ee:ee:ee:ee"``."""
    return ":".join(f"{b:02x}" for b in raw)


def ip_bytes(address: str, family: int = AF_INET) -> bytes:
    """Packed address (ValueError naming a bad one)."""
    try:
        if family == AF_INET:
            return socket.inet_aton(address) if address.count(".") == 3 else _bad(address)
        return socket.inet_pton(family, address)
    except OSError:
        raise ValueError(f"invalid IP address {address!r}") from None


def _bad(address: str) -> bytes:
    raise ValueError(f"invalid IP address {address!r}")


def ip_str(raw: bytes) -> str:
    """Packed IPv4/IPv6 address -> text."""
    if len(raw) == 4:
        return socket.inet_ntoa(raw)
    return socket.inet_ntop(AF_INET6, raw)


def family_of(address: str) -> int:
    """AF_INET6 if ``address`` contains ':', else AF_INET."""
    return AF_INET6 if ":" in address else AF_INET


# ----------------------------------------------------------------------------- messages


def message(mtype: int, flags: int, seq: int, body: bytes, pid: int = 0) -> bytes:
    """A whole netlink message (header + body)."""
    return HDR.pack(HDR.size + len(body), mtype, flags, seq, pid) + body


def messages(buf: bytes | bytearray | memoryview, n: int | None = None) -> Iterator[tuple[int, int, int, int, int]]:
    """Walk the messages in ``buf[:n]``: yields (type, flags, seq, offset of body, end)."""
    n = len(buf) if n is None else n
    off = 0
    unpack = HDR.unpack_from
    while off + 16 <= n:
        length, mtype, flags, seq, _pid = unpack(buf, off)
        if length < 16 or off + length > n:
            break
        yield mtype, flags, seq, off + 16, off + length
        off += (length + 3) & ~3


def parse_error(buf: bytes | bytearray | memoryview, off: int, end: int, flags: int) -> tuple[int, str | None]:
    """An NLMSG_ERROR body: (errno, 0 for an ack; the extended-ack text if any)."""
    code = -_I32.unpack_from(buf, off)[0]
    detail = None
    if code and flags & NLM_F_ACK_TLVS:
        inner_len = HDR.unpack_from(buf, off + 4)[0]
        tlv = off + 4 + (16 if flags & NLM_F_CAPPED else (inner_len + 3) & ~3)
        msg = attrs(buf, tlv, end).get(NLMSGERR_ATTR_MSG)
        if msg:
            detail = msg.rstrip(b"\0").decode(errors="replace")
    return code, detail


# ----------------------------------------------------------------------------- requests


def request(op: Any) -> tuple[int, int, bytes]:
    """(message type, flags without REQUEST/ACK, body) of an operation."""
    if isinstance(op, RouteAdd):
        flags = NLM_F_CREATE | (NLM_F_REPLACE if op.replace else NLM_F_EXCL)
        return RTM_NEWROUTE, flags, route_body(op.route)
    if isinstance(op, RouteDel):
        return RTM_DELROUTE, 0, route_body(op.route, delete=True)
    if isinstance(op, LinkAdd):
        return RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, link_add_body(op.spec)
    if isinstance(op, LinkSet):
        return RTM_NEWLINK, 0, link_set_body(op)
    if isinstance(op, LinkDel):
        return RTM_DELLINK, 0, IFINFO.pack(0, 0, op.index, 0, 0)
    if isinstance(op, AddrAdd):
        return RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, addr_body(op.addr)
    if isinstance(op, AddrDel):
        return RTM_DELADDR, 0, addr_body(op.addr)
    if isinstance(op, NeighAdd):
        return RTM_NEWNEIGH, NLM_F_CREATE | (NLM_F_REPLACE if op.replace else NLM_F_EXCL), neigh_body(op.neigh)
    if isinstance(op, NeighDel):
        return RTM_DELNEIGH, 0, neigh_body(op.neigh)
    raise TypeError(f"not a kernel operation: {op!r}")


def encode(op: Any, seq: int, pid: int = 0) -> bytes:
    """The whole request message of ``op`` (acked)."""
    mtype, flags, body = request(op)
    return message(mtype, NLM_F_REQUEST | NLM_F_ACK | flags, seq, body, pid)


def route_body(r: Route, delete: bool = False) -> bytes:
    """rtmsg + attributes of a route (``delete``: match any scope/type, as ``ip route del``)."""
    fam = r.family
    dst, _, plen = r.dst.partition("/")
    dst_len = int(plen) if plen else (32 if fam == AF_INET else 128)
    table = r.table if r.table < 256 else 0
    flags = r.flags | (RTNH_F_ONLINK if r.onlink and not r.nexthops else 0)
    if delete:
        body = RTMSG.pack(fam, dst_len, 0, r.tos, table, r.protocol, RT_SCOPE_NOWHERE,
                          r.type if r.type != 1 else 0, flags)
    else:
        body = RTMSG.pack(fam, dst_len, 0, r.tos, table, r.protocol, r.scope, r.type, flags)
    if dst_len:
        body += attr(RTA_DST, ip_bytes(dst, fam))
    if r.prefsrc:
        body += attr(RTA_PREFSRC, ip_bytes(r.prefsrc, fam))
    if r.gateway and not r.nexthops:
        body += attr(RTA_GATEWAY, ip_bytes(r.gateway, fam))
    if r.priority is not None:
        body += attr_u32(RTA_PRIORITY, r.priority)
    if r.table >= 256:
        body += attr_u32(RTA_TABLE, r.table)
    if r.oif and not r.nexthops:
        body += attr_u32(RTA_OIF, r.oif)
    if r.nexthops:
        hops = b""
        for h in r.nexthops:
            gw = attr(RTA_GATEWAY, ip_bytes(h.gateway, fam)) if h.gateway else b""
            hops += RTNH.pack(RTNH.size + len(gw), h.flags | (RTNH_F_ONLINK if h.onlink else 0),
                              h.weight - 1, h.oif) + gw
        body += attr(RTA_MULTIPATH, hops)
    return body


def addr_body(a: Addr) -> bytes:
    """ifaddrmsg + IFA_LOCAL + IFA_ADDRESS (``ip addr add A/N dev X``)."""
    raw = ip_bytes(a.address, a.family)
    body = IFADDR.pack(a.family, a.prefixlen, a.flags & 0xFF, a.scope, a.index)
    body += attr(IFA_LOCAL, raw) + attr(IFA_ADDRESS, raw)
    if a.label:
        body += attr_str(IFA_LABEL, a.label)
    return body


def neigh_body(n: Neigh) -> bytes:
    """ndmsg + attributes: ``ip neigh`` (DST, LLADDR) or ``bridge fdb`` (LLADDR, DST, PORT, VNI)."""
    body = NDMSG.pack(n.family, n.index, n.state, n.flags, 0)
    dst = attr(NDA_DST, ip_bytes(n.dst, family_of(n.dst))) if n.dst else b""
    ll = attr(NDA_LLADDR, mac_bytes(n.lladdr)) if n.lladdr else b""
    if n.family == AF_BRIDGE:
        body += ll + dst
        if n.port is not None:
            body += attr_be16(NDA_PORT, n.port)
        if n.vni is not None:
            body += attr_u32(NDA_VNI, n.vni)
        if n.master is not None:
            body += attr_u32(NDA_MASTER, n.master)
        return body
    return body + dst + ll


def link_add_body(spec: Any) -> bytes:
    """ifinfomsg + attributes creating a link of ``spec``'s kind (iproute2's layout)."""
    if isinstance(spec, Tun):
        raise ValueError(f"TUN device {spec.name}: rtnetlink cannot create TUN devices (use /dev/net/tun)")
    body = IFINFO.pack(0, 0, 0, 0, 0) + _common(spec.name, getattr(spec, "mtu", 0), getattr(spec, "mac", None),
                                                queues=getattr(spec, "queues", 0))
    if isinstance(spec, Veth):
        peer = IFINFO.pack(0, 0, 0, 0, 0) + _common(spec.peer, spec.mtu, spec.peer_mac,
                                                    None if spec.peer_netns is None else _netns_fd(spec.peer_netns),
                                                    queues=spec.queues)
        data = nest(VETH_INFO_PEER, peer)
    elif isinstance(spec, Vxlan):
        data = attr_u32(IFLA_VXLAN_LINK, spec.dev) if spec.dev else b""
        data += attr_u32(IFLA_VXLAN_ID, spec.vni)
        if spec.local:
            data += attr(IFLA_VXLAN_LOCAL, ip_bytes(spec.local))
        data += attr_u8(IFLA_VXLAN_LEARNING, 1 if spec.learning else 0)
        data += attr_be16(IFLA_VXLAN_PORT, spec.port)
    elif isinstance(spec, Ipip):
        data = b""
        if spec.dev:
            data += attr_u32(IFLA_IPTUN_LINK, spec.dev)
        if spec.local:
            data += attr(IFLA_IPTUN_LOCAL, ip_bytes(spec.local))
        if spec.remote:
            data += attr(IFLA_IPTUN_REMOTE, ip_bytes(spec.remote))
        if spec.ttl:
            data += attr_u8(IFLA_IPTUN_TTL, spec.ttl)
        if not spec.pmtudisc:
            data += attr_u8(IFLA_IPTUN_PMTUDISC, 0)
    elif isinstance(spec, Bridge):
        data = b""
        if spec.forward_delay is not None:
            data += attr_u32(IFLA_BR_FORWARD_DELAY, spec.forward_delay)
        if spec.stp_state is not None:
            data += attr_u32(IFLA_BR_STP_STATE, spec.stp_state)
    else:
        raise TypeError(f"not a link kind: {spec!r}")
    info = attr(IFLA_INFO_KIND, spec.kind.encode())  # no NUL, as iproute2 sends it
    if data:
        info += nest(IFLA_INFO_DATA, data)
    return body + nest(IFLA_LINKINFO, info)


def _common(name: str, mtu: int, mac: str | None, netns_fd: int | None = None, queues: int = 0) -> bytes:
    out = attr_u32(IFLA_MTU, mtu) if mtu else b""
    if mac:
        out += attr(IFLA_ADDRESS, mac_bytes(mac))
    if queues:
        out += attr_u32(IFLA_NUM_TX_QUEUES, queues) + attr_u32(IFLA_NUM_RX_QUEUES, queues)
    if netns_fd is not None:
        out += attr_u32(IFLA_NET_NS_FD, netns_fd)
    return out + attr_str(IFLA_IFNAME, name)


def _netns_fd(target: Any) -> int:
    if isinstance(target, int):
        return target
    fd = getattr(target, "netns_fd", None)
    if fd is None:
        raise ValueError(f"veth peer namespace {target!r} has no namespace fd")
    return fd() if callable(fd) else fd


def link_set_body(op: LinkSet) -> bytes:
    """ifinfomsg (up/down in flags/change) + the attributes to change."""
    flags = change = 0
    if op.up is not None:
        change, flags = 1, (1 if op.up else 0)
    if op.arp is not None:
        change |= IFF_NOARP
        flags |= 0 if op.arp else IFF_NOARP
    body = IFINFO.pack(0, 0, op.index, flags, change)
    if op.name is not None:
        body += attr_str(IFLA_IFNAME, op.name)
    if op.mtu is not None:
        body += attr_u32(IFLA_MTU, op.mtu)
    if op.mac is not None:
        body += attr(IFLA_ADDRESS, mac_bytes(op.mac))
    if op.txqlen is not None:
        body += attr_u32(IFLA_TXQLEN, op.txqlen)
    if op.master is not None:
        body += attr_u32(IFLA_MASTER, op.master)
    if op.netns_fd is not None:
        body += attr_u32(IFLA_NET_NS_FD, op.netns_fd)
    return body


def dump_request(mtype: int, family: int = 0) -> bytes:
    """The body of a dump request of ``mtype`` (links skip their statistics)."""
    if mtype == RTM_GETLINK:
        return IFINFO.pack(0, 0, 0, 0, 0) + attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS)
    if mtype == RTM_GETADDR:
        return IFADDR.pack(family, 0, 0, 0, 0)
    if mtype == RTM_GETROUTE:
        return RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
    if mtype == RTM_GETNEIGH:
        return NDMSG.pack(family, 0, 0, 0, 0)
    raise ValueError(f"no dump of message type {mtype}")


def link_get_request(name: str) -> bytes:
    """The body of RTM_GETLINK for one link by name."""
    return IFINFO.pack(0, 0, 0, 0, 0) + attr_u32(IFLA_EXT_MASK, RTEXT_FILTER_SKIP_STATS) + attr_str(IFLA_IFNAME, name)


def route_get_request(dst: str) -> bytes:
    """The body of RTM_GETROUTE for the route the kernel would use towards ``dst``."""
    fam = family_of(dst)
    return RTMSG.pack(fam, 32 if fam == AF_INET else 128, 0, 0, 0, 0, 0, 0, 0) + attr(RTA_DST, ip_bytes(dst, fam))


# ----------------------------------------------------------------------------- parsers


_LINK_ATTRS = frozenset({IFLA_IFNAME, IFLA_MTU, IFLA_ADDRESS, IFLA_TXQLEN, IFLA_MASTER, IFLA_LINK, IFLA_LINK_NETNSID,
                         IFLA_OPERSTATE, IFLA_LINKINFO})


def parse_link_brief(buf: bytes | bytearray | memoryview, off: int = 0, end: int | None = None) -> Link:
    """Index, flags, name and MTU only: the walk stops once both attributes are read (they come
    first), so a dump of 1,000 links parses in a third of the time. Other fields stay empty."""
    end = len(buf) if end is None else end
    _fam, _type, index, flags, _change = IFINFO.unpack_from(buf, off)
    name, mtu, found = "", 0, 0
    unpack = RTA.unpack_from
    o = off + IFINFO.size
    while o + 4 <= end and found < 2:
        length, kind = unpack(buf, o)
        if length < 4:
            break
        kind &= NLA_TYPE_MASK
        if kind == IFLA_IFNAME:
            name = bytes(buf[o + 4:o + length]).split(b"\0", 1)[0].decode()
            found += 1
        elif kind == IFLA_MTU:
            mtu = _U32.unpack_from(buf, o + 4)[0]
            found += 1
        o += (length + 3) & ~3
    return Link(index, name, "", mtu, flags)


def parse_link(buf: bytes | bytearray | memoryview, off: int = 0, end: int | None = None) -> Link:
    """An RTM_NEWLINK/RTM_DELLINK body at ``buf[off:end]``.

    One pass over the ~40 attributes a link carries, reading only the ones :class:`Link` holds.
    """
    end = len(buf) if end is None else end
    _fam, _type, index, flags, _change = IFINFO.unpack_from(buf, off)
    name, mtu, mac, txqlen, master, parent, nsid, oper, li = "", 0, "", 0, 0, 0, None, 0, None
    unpack, u32 = RTA.unpack_from, _U32.unpack_from
    o = off + IFINFO.size
    while o + 4 <= end:
        length, kind = unpack(buf, o)
        if length < 4:
            break
        kind &= NLA_TYPE_MASK
        if kind in _LINK_ATTRS:
            if kind == IFLA_IFNAME:
                name = bytes(buf[o + 4:o + length]).split(b"\0", 1)[0].decode()
            elif kind == IFLA_MTU:
                mtu = u32(buf, o + 4)[0]
            elif kind == IFLA_ADDRESS:
                mac = mac_str(bytes(buf[o + 4:o + length]))
            elif kind == IFLA_TXQLEN:
                txqlen = u32(buf, o + 4)[0]
            elif kind == IFLA_MASTER:
                master = u32(buf, o + 4)[0]
            elif kind == IFLA_LINK:
                parent = u32(buf, o + 4)[0]
            elif kind == IFLA_LINK_NETNSID:
                nsid = _I32.unpack_from(buf, o + 4)[0]
            elif kind == IFLA_OPERSTATE:
                oper = buf[o + 4]
            else:
                li = bytes(buf[o + 4:o + length])
        o += (length + 3) & ~3
    kind_name, info = "", {}
    if li is not None:
        la = attrs(li)
        kind_name = la.get(IFLA_INFO_KIND, b"").rstrip(b"\0").decode()
        data = la.get(IFLA_INFO_DATA)
        if data is not None and kind_name in _KIND_INFO:
            info = _parse_info(kind_name, attrs(data))
    return Link(index, name, kind_name, mtu, flags, mac, txqlen, master, parent, nsid, oper, info)


def _parse_info(kind: str, d: dict[int, bytes]) -> dict[str, Any]:
    u32 = _U32.unpack
    if kind == "vxlan":
        out: dict[str, Any] = {}
        if IFLA_VXLAN_ID in d:
            out["vni"] = u32(d[IFLA_VXLAN_ID])[0]
        if IFLA_VXLAN_PORT in d:
            out["port"] = struct.unpack("!H", d[IFLA_VXLAN_PORT])[0]
        if IFLA_VXLAN_LOCAL in d:
            out["local"] = ip_str(d[IFLA_VXLAN_LOCAL])
        if IFLA_VXLAN_LINK in d:
            out["dev"] = u32(d[IFLA_VXLAN_LINK])[0]
        if IFLA_VXLAN_LEARNING in d:
            out["learning"] = bool(d[IFLA_VXLAN_LEARNING][0])
        return out
    if kind == "ipip":
        out = {}
        if IFLA_IPTUN_LINK in d:
            out["dev"] = u32(d[IFLA_IPTUN_LINK])[0]
        for key, code in (("local", IFLA_IPTUN_LOCAL), ("remote", IFLA_IPTUN_REMOTE)):
            if code in d:
                out[key] = ip_str(d[code])
        if IFLA_IPTUN_TTL in d:
            out["ttl"] = d[IFLA_IPTUN_TTL][0]
        if IFLA_IPTUN_PMTUDISC in d:
            out["pmtudisc"] = bool(d[IFLA_IPTUN_PMTUDISC][0])
        return out
    if kind == "tun":
        out = {}
        if IFLA_TUN_TYPE in d:
            out["type"] = {1: "tun", 2: "tap"}.get(d[IFLA_TUN_TYPE][0], str(d[IFLA_TUN_TYPE][0]))
        for key, code in (("pi", IFLA_TUN_PI), ("vnet_hdr", IFLA_TUN_VNET_HDR),
                          ("persist", IFLA_TUN_PERSIST), ("multi_queue", IFLA_TUN_MULTI_QUEUE)):
            if code in d:
                out[key] = bool(d[code][0])
        return out
    return {}


def parse_addr(buf: bytes | bytearray | memoryview, off: int = 0, end: int | None = None) -> Addr:
    """An RTM_NEWADDR body."""
    end = len(buf) if end is None else end
    fam, plen, flags, scope, index = IFADDR.unpack_from(buf, off)
    a = attrs(buf, off + IFADDR.size, end)
    raw = a.get(IFA_LOCAL) or a.get(IFA_ADDRESS) or b""
    if IFA_FLAGS in a:
        flags = _U32.unpack(a[IFA_FLAGS])[0]
    return Addr(index=index, address=ip_str(raw) if raw else "", prefixlen=plen, family=fam, scope=scope,
                flags=flags, label=a.get(IFA_LABEL, b"").rstrip(b"\0").decode())


def parse_route(buf: bytes | bytearray | memoryview, off: int = 0, end: int | None = None) -> Route:
    """An RTM_NEWROUTE body (single path, multipath, blackhole...), in one pass."""
    end = len(buf) if end is None else end
    fam, dst_len, _src_len, tos, table, proto, scope, rtype, rflags = RTMSG.unpack_from(buf, off)
    dst = gw = prefsrc = None
    oif, prio, mp = 0, None, None
    unpack, u32 = RTA.unpack_from, _U32.unpack_from
    o = off + RTMSG.size
    while o + 4 <= end:
        length, kind = unpack(buf, o)
        if length < 4:
            break
        kind &= NLA_TYPE_MASK
        if kind == RTA_DST:
            dst = ip_str(bytes(buf[o + 4:o + length]))
        elif kind == RTA_OIF:
            oif = u32(buf, o + 4)[0]
        elif kind == RTA_GATEWAY:
            gw = ip_str(bytes(buf[o + 4:o + length]))
        elif kind == RTA_TABLE:
            table = u32(buf, o + 4)[0]
        elif kind == RTA_PRIORITY:
            prio = u32(buf, o + 4)[0]
        elif kind == RTA_PREFSRC:
            prefsrc = ip_str(bytes(buf[o + 4:o + length]))
        elif kind == RTA_MULTIPATH:
            mp = bytes(buf[o + 4:o + length])
        o += (length + 3) & ~3
    hops: tuple[NextHop, ...] = ()
    if mp is not None:
        out = []
        o = 0
        while o + RTNH.size <= len(mp):
            ln, hflags, hhops, ifindex = RTNH.unpack_from(mp, o)
            if ln < RTNH.size:
                break
            ha = attrs(mp, o + RTNH.size, o + ln)
            hgw = ip_str(ha[RTA_GATEWAY]) if RTA_GATEWAY in ha else None
            out.append(NextHop(hgw, ifindex, bool(hflags & RTNH_F_ONLINK), hhops + 1, hflags & ~RTNH_F_ONLINK))
            o += (ln + 3) & ~3
        hops = tuple(out)
    if dst is None:
        dst = "0.0.0.0" if fam == AF_INET else "::"
    return Route(f"{dst}/{dst_len}", oif, gw, bool(rflags & RTNH_F_ONLINK), table, proto, scope, rtype, prefsrc,
                 prio, hops, fam, tos, rflags & ~RTNH_F_ONLINK)


def parse_neigh(buf: bytes | bytearray | memoryview, off: int = 0, end: int | None = None) -> Neigh:
    """An RTM_NEWNEIGH body (ARP entry, or FDB entry for family AF_BRIDGE)."""
    end = len(buf) if end is None else end
    fam, index, state, flags, _type = NDMSG.unpack_from(buf, off)
    a = attrs(buf, off + NDMSG.size, end)
    return Neigh(
        index=index,
        dst=ip_str(a[NDA_DST]) if NDA_DST in a else None,
        lladdr=mac_str(a[NDA_LLADDR]) if NDA_LLADDR in a and len(a[NDA_LLADDR]) == 6 else None,
        family=fam, state=state, flags=flags,
        vni=_U32.unpack(a[NDA_VNI])[0] if NDA_VNI in a else None,
        port=struct.unpack("!H", a[NDA_PORT])[0] if NDA_PORT in a else None,
        master=_U32.unpack(a[NDA_MASTER])[0] if NDA_MASTER in a else None,
    )


PARSERS = {RTM_NEWLINK: parse_link, RTM_DELLINK: parse_link, RTM_NEWADDR: parse_addr, RTM_DELADDR: parse_addr,
           RTM_NEWROUTE: parse_route, RTM_DELROUTE: parse_route, RTM_NEWNEIGH: parse_neigh,
           RTM_DELNEIGH: parse_neigh}


def parse(buf: bytes | bytearray | memoryview, n: int | None = None) -> Iterator[tuple[int, Any]]:
    """Every rtnetlink object in ``buf[:n]`` as (message type, model object);
    NLMSG_DONE is yielded as (NLMSG_DONE, None), other control messages are skipped."""
    for mtype, _flags, _seq, off, end in messages(buf, n):
        p = PARSERS.get(mtype)
        if p is not None:
            yield mtype, p(buf, off, end)
        elif mtype == NLMSG_DONE:
            yield mtype, None


__all__ = ["RT_TABLE_MAIN", "attr", "attrs", "encode", "message", "messages", "parse", "parse_addr",
           "parse_link", "parse_neigh", "parse_route", "request"]
