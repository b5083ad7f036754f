"""Felix's iptables mark bits (pure): allocated from ``iptablesMarkMask``, lowest bit first.

As ``felix/dataplane/driver.go`` with ``felix/markbits``: accept, pass,
scratch0, scratch1 (then the WireGuard bit if enabled), and the endpoint mark
takes every remaining bit. With the default mask 0xffff0000 (calico.md section 4):

| mark | bits |
|---|---|
| accept | 0x10000 |
| pass | 0x20000 |
| scratch0 | 0x40000 |
| scratch1 | 0x80000 |
| endpoint | 0xfff00000 |
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MASK = 0xFFFF0000


@dataclass(frozen=True)
class MarkBits:
    """The allocated marks."""

    accept: int
    pass_: int
    scratch0: int
    scratch1: int
    endpoint: int
    wireguard: int = 0

    @property
    def all_calico(self) -> int:
        """accept|pass|scratch0|scratch1 (``allCalicoMarkBits``): what the top-level chains clear."""
        return self.accept | self.pass_ | self.scratch0 | self.scratch1


def allocate(mask: int = DEFAULT_MASK, wireguard: bool = False) -> MarkBits:
    """Hand out single bits from ``mask`` lowest first, then the rest as the endpoint mark."""
    bits = [1 << i for i in range(32) if mask & (1 << i)]
    need = 5 if wireguard else 4
    if len(bits) < need:
        raise ValueError(f"iptablesMarkMask {mask:#x} has {len(bits)} bits; Felix needs at least {need}")
    accept, pass_, scratch0, scratch1 = bits[:4]
    wg = bits[4] if wireguard else 0
    rest = bits[need:]
    return MarkBits(accept, pass_, scratch0, scratch1, sum(rest), wg)
