"""sysctl driver: the global and per-workload-interface settings Felix makes (calico.md sections 1, 3)."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

PROC = "/proc/sys"


def read(key: str, root: str = PROC) -> str | None:
    """Value of sysctl ``key`` (dotted or slashed form), or None if it does not exist."""
    try:
        with open(os.path.join(root, key.replace(".", "/") if "/" not in key else key)) as f:
            return f.read().strip()
    except OSError:
        return None


def write(path: str, value: str, root: str = PROC, check_first: bool = True) -> bool:
    """Set ``path`` (relative to /proc/sys, slashed) to ``value``; True if it was written.

    With ``check_first`` the value is read first and left alone when equal.
    """
    full = os.path.join(root, path)
    try:
        if check_first:
            with open(full) as f:
                if f.read().strip() == value:
                    return False
        with open(full, "w") as f:
            f.write(value)
        return True
    except FileNotFoundError:
        return False


def global_settings() -> dict[str, str]:
    """ip_forward=1 (IPForwarding=Enabled) and conntrack accounting, as Felix's configureKernel."""
    return {"net/ipv4/ip_forward": "1", "net/netfilter/nf_conntrack_acct": "1"}


def interface_settings(iface: str, rp_filter: str) -> dict[str, str]:
    """The per-workload-interface set of the CNI plugin, re-applied by Felix, plus rp_filter."""
    if "/" in iface or iface in ("", ".", ".."):
        raise ValueError(f"bad interface name {iface!r}")
    return {
        f"net/ipv4/conf/{iface}/route_localnet": "1",
        f"net/ipv4/neigh/{iface}/proxy_delay": "0",
        f"net/ipv4/conf/{iface}/proxy_arp": "1",
        f"net/ipv4/conf/{iface}/forwarding": "1",
        f"net/ipv4/conf/{iface}/rp_filter": rp_filter,
        f"net/ipv6/conf/{iface}/accept_ra": "0",
    }


def default_rp_filter(root: str = PROC) -> str:
    """Felix's workload rp_filter: the value of conf/default/rp_filter (0 if unreadable)."""
    return read("net/ipv4/conf/default/rp_filter", root) or "0"


class SysctlDriver:
    """Applies the global set once per resync and each interface's set when it first appears."""

    def __init__(self, root: str = PROC) -> None:
        self.root = root
        self._done: set[str] = set()
        self._rp: str | None = None
        self._last: frozenset[str] = frozenset()

    def apply(self, interfaces: frozenset[str] | set[str], resync: bool = False) -> list[str]:
        """Set what is missing; returns the interfaces that are not there yet (retry later)."""
        if resync:
            self._done.clear()
            self._rp = None
        if "" not in self._done:
            for path, val in global_settings().items():
                write(path, val, self.root)
            self._done.add("")
        if self._rp is None:
            self._rp = default_rp_filter(self.root)
        rp = self._rp
        missing = []
        for iface in interfaces:
            if iface in self._done:
                continue
            if not os.path.isdir(os.path.join(self.root, "net/ipv4/conf", iface)):
                missing.append(iface)
                continue
            for path, val in interface_settings(iface, rp).items():
                write(path, val, self.root, check_first=False)
            self._done.add(iface)
        gone = self._last - interfaces if isinstance(interfaces, frozenset) else self._last - set(interfaces)
        self._done -= gone  # a re-made interface of the same name gets its settings again
        self._last = frozenset(interfaces)
        return missing
