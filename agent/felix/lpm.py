"""Longest-prefix-match table from IPv4 prefixes to next hops (pure logic).

The userspace tunnel asks, for each inner destination address, which Calico
node to send the encapsulated packet to: the gateway of the kernel route for
that destination on tunl0. This table answers that question; results are
memoised per destination address because the same few addresses repeat.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


class LpmTable:
    """Immutable LPM table: ``lookup(dst_4_bytes) -> gateway_str | None``."""

    __slots__ = ("_by_len", "_memo")

    def __init__(self, routes: Iterable[tuple[str, str]] = ()) -> None:
        """``routes``: (prefix like "192.168.1.0/26", gateway like "172.30.0.11")."""
        by_len: dict[int, dict[int, str]] = {}
        for prefix, gateway in routes:
            net = ipaddress.IPv4Network(prefix, strict=False)
            ipaddress.IPv4Address(gateway)  # validate
            by_len.setdefault(net.prefixlen, {})[int(net.network_address)] = gateway
        self._by_len = sorted(
            ((plen, (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF, table) for plen, table in by_len.items()),
            key=lambda item: -item[0],
        )
        self._memo: dict[bytes, str | None] = {}

    def gateways(self) -> set[str]:
        """Every gateway in the table."""
        return {gw for _, _, table in self._by_len for gw in table.values()}

    def __len__(self) -> int:
        return sum(len(table) for _, _, table in self._by_len)

    def lookup(self, dst: bytes) -> str | None:
        """Gateway for the 4-byte destination address ``dst``, or None when no prefix covers it."""
        try:
            return self._memo[dst]
        except KeyError:
            pass
        addr = int.from_bytes(dst, "big")
        found = None
        for _plen, mask, table in self._by_len:
            gw = table.get(addr & mask)
            if gw is not None:
                found = gw
                break
        if len(self._memo) > 65536:
            self._memo.clear()
        self._memo[bytes(dst)] = found
        return found
