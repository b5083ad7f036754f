"""IPv4 prefixes as plain integers: ``key = network << 8 | length``.

The speaker handles prefixes by the hundred thousand; an ``ipaddress.IPv4Network`` costs
about 1-2 us to build and its hash is recomputed on every dict lookup, so the RIB, the codecs
and the kernel sync key everything by this integer instead (hashing and ordering an int
are native). Ordering keys orders by network address, then prefix length, as
``sorted(IPv4Network)`` does. Conversions to and from the stdlib types live here and are
used only at the edges (configuration, status text).
"""

from __future__ import annotations

import socket
from ipaddress import IPv4Address, IPv4Network

_MASKS = tuple((0xFFFFFFFF << (32 - n)) & 0xFFFFFFFF for n in range(33))
_aton = socket.inet_aton
_ntoa = socket.inet_ntoa


def make(network: int, length: int) -> int:
    """The key of ``network/length`` (host bits must already be zero)."""
    return network << 8 | length


def of(net: IPv4Network | int | str) -> int:
    """The key of an IPv4Network, a 'a.b.c.d/n' string or a key (returned unchanged).
    Host bits set in a string raise ValueError, as IPv4Network does."""
    if isinstance(net, int):
        return net
    if isinstance(net, IPv4Network):
        return int(net.network_address) << 8 | net.prefixlen
    return parse(net)


def parse(text: str) -> int:
    """'10.0.0.0/26' -> key; ValueError naming the text when it is not an IPv4 prefix."""
    addr, sep, length = text.partition("/")
    try:
        n = int(length) if sep else 32
        a = int.from_bytes(_aton(addr), "big")
    except (OSError, ValueError):
        raise ValueError(f"{text!r} is not an IPv4 prefix") from None
    if not 0 <= n <= 32 or addr.count(".") != 3:
        raise ValueError(f"{text!r} is not an IPv4 prefix")
    if a & ~_MASKS[n] & 0xFFFFFFFF:
        raise ValueError(f"{text!r} has host bits set")
    return a << 8 | n


def length(key: int) -> int:
    """Prefix length."""
    return key & 0xFF


def network(key: int) -> int:
    """Network address as an int."""
    return key >> 8


def text(key: int) -> str:
    """'a.b.c.d/n'."""
    return f"{_ntoa((key >> 8).to_bytes(4, 'big'))}/{key & 0xFF}"


def to_network(key: int) -> IPv4Network:
    """The stdlib object (for callers outside the speaker)."""
    return IPv4Network((key >> 8, key & 0xFF))


def contains(outer: int, inner: int) -> bool:
    """``inner`` is ``outer`` or a subnet of it."""
    n = outer & 0xFF
    return (inner & 0xFF) >= n and ((inner >> 8) & _MASKS[n]) == outer >> 8


def within(key: int, pools: tuple[int, ...]) -> bool:
    """``key`` lies inside one of ``pools``."""
    return any(contains(p, key) for p in pools)


def address_in(addr: int, outer: int) -> bool:
    """An address (int) lies inside the prefix ``outer``."""
    return (addr & _MASKS[outer & 0xFF]) == outer >> 8


def addr_int(addr: IPv4Address | int) -> int:
    """An address as an int."""
    return addr if isinstance(addr, int) else int(addr)
