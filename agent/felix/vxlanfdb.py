"""The static ARP and FDB entries of vxlan.calico, one pair per remote VTEP (Felix's
``vxlanfdb``, calico.md section 7).

* ARP: ``<remote tunnel IP> dev vxlan.calico lladdr <VTEP MAC> PERMANENT``;
* FDB (AF_BRIDGE, NTF_SELF): ``<VTEP MAC> dev vxlan.calico dst <remote node IP> self permanent``.

Both tables are keyed by MAC, as Felix keys them; permanent entries on the device that
are not wanted are removed. The driver caches what it wrote and re-reads the kernel
on resync (or when the device was made again).
"""

from __future__ import annotations

import errno

from kernel import AF_BRIDGE, AF_INET, NTF_SELF, NUD_PERMANENT, Kernel, Neigh, NeighAdd, NeighDel


class VxlanFdb:
    """Keeps vxlan.calico's permanent ARP and FDB entries equal to the desired VTEPs."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self._index = 0
        self._arp: dict[str, tuple[str, str]] | None = None  # mac -> (tunnel ip, mac)
        self._fdb: dict[str, tuple[str, str]] | None = None  # mac -> (node ip, mac)

    def read(self, index: int) -> None:
        """Re-read the device's permanent entries from the kernel."""
        self._index = index
        self._arp, self._fdb = {}, {}
        for n in self.kernel.neighs(AF_INET):
            if n.index == index and n.lladdr and n.dst and n.state & NUD_PERMANENT:
                self._arp[n.lladdr.lower()] = (n.dst, n.lladdr.lower())
        for n in self.kernel.neighs(AF_BRIDGE):
            if n.index == index and n.lladdr and n.dst and n.state & NUD_PERMANENT:
                self._fdb[n.lladdr.lower()] = (n.dst, n.lladdr.lower())

    def apply(self, index: int, arp: dict[str, str], fdb: dict[str, str], resync: bool = False) -> int:
        """Program ``arp`` (tunnel IP -> MAC) and ``fdb`` (MAC -> node IP) on link ``index``;
        returns the number of changes."""
        if resync or self._arp is None or self._fdb is None or index != self._index:
            self.read(index)
        assert self._arp is not None and self._fdb is not None
        want_arp = {mac.lower(): (ip, mac.lower()) for ip, mac in arp.items()}
        want_fdb = {mac.lower(): (ip, mac.lower()) for mac, ip in fdb.items()}
        ops: list[NeighAdd | NeighDel] = []
        tables = ((self._arp, want_arp, AF_INET, 0), (self._fdb, want_fdb, AF_BRIDGE, NTF_SELF))
        for have, want, family, flags in tables:
            for mac, (ip, _) in sorted(want.items()):
                if have.get(mac) != (ip, mac):
                    ops.append(NeighAdd(Neigh(index, ip, mac, family, NUD_PERMANENT, flags)))
            for mac, (ip, _) in sorted(have.items()):
                if want.get(mac) != (ip, mac):
                    ops.append(NeighDel(Neigh(index, ip, mac, family, NUD_PERMANENT, flags)))
        if not ops:
            return 0
        for op, err in zip(ops, self.kernel.submit(ops), strict=True):
            if err is not None and not (isinstance(op, NeighDel) and err.errno in (errno.ENOENT, errno.ESRCH)):
                self._arp = self._fdb = None  # re-read next time
                raise err
        self._arp, self._fdb = want_arp, want_fdb
        return len(ops)

    def forget(self) -> None:
        """The device is gone (its entries with it): start from the kernel next time."""
        self._arp = self._fdb = None
