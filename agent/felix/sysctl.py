"""sysctl driver: the global and per-workload-interface settings Felix makes (calico.md sections 1, 3)."""

from __future__ import annotations

import errno
import logging

from kernel import Kernel

log = logging.getLogger(__name__)


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


def default_rp_filter(kernel: Kernel) -> str:
    """Felix's workload rp_filter: the value of conf/default/rp_filter (0 if unreadable)."""
    return kernel.sysctl_get("net/ipv4/conf/default/rp_filter") or "0"


class SysctlDriver:
    """Applies the global set once per resync and each interface's set when it first appears,
    through ``kernel`` (the namespace's /proc/sys)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        self._done: set[str] = set()
        self._rp: str | None = None
        self._last: frozenset[str] = frozenset()

    def _write(self, key: str, value: str, check_first: bool = True) -> bool:
        """Set ``key`` unless (with ``check_first``) it already has ``value``; False if it does not exist."""
        if check_first:
            have = self.kernel.sysctl_get(key)
            if have is None:
                return False
            if have == value:
                return False
        try:
            self.kernel.sysctl_set(key, value)
        except OSError as exc:
            if exc.errno != errno.ENOENT:  # absent (e.g. IPv6 off) is fine; anything else is not
                raise
            return False
        return True

    def apply(self, interfaces: frozenset[str] | set[str], resync: bool = False) -> list[str]:
        """Set what is missing; returns the interfaces that are not there yet (retry later)."""
        if resync:
            self._done.clear()
            self._rp = None
        if "" not in self._done:
            for key, val in global_settings().items():
                self._write(key, val)
            self._done.add("")
        if self._rp is None:
            self._rp = default_rp_filter(self.kernel)
        rp = self._rp
        missing = []
        for iface in interfaces:
            if iface in self._done:
                continue
            settings = list(interface_settings(iface, rp).items())
            key, val = settings[0]  # an IPv4 key: absent means the interface is not there yet
            if not self._write(key, val, check_first=False):
                missing.append(iface)
                continue
            for key, val in settings[1:]:
                self._write(key, val, check_first=False)
            self._done.add(iface)
        gone = self._last - interfaces if isinstance(interfaces, frozenset) else self._last - set(interfaces)
        self._done -= gone  # a re-made interface of the same name gets its settings again
        self._last = frozenset(interfaces)
        return missing
