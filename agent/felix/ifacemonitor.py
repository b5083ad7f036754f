"""Felix's interface monitor, for the host's own addresses (``cali40this-host``).

Calico's Felix subscribes to the kernel's address notifications (its ifacemonitor) and
feeds every address change to the host-IP manager, so ``cali40this-host`` follows the
host's addresses at once: the tunnel address Felix gives ``tunl0``, an address an
operator adds, an uplink's address coming back after a link flap. Here the same:
one thread on a netlink socket subscribed to ``RTMGRP_IPV4_IFADDR`` calls
``on_change`` after each burst of RTM_NEWADDR / RTM_DELADDR; the callback re-reads the
addresses and decides whether anything changed. A lost-events error (ENOBUFS) counts
as a change (the callback re-reads everything).
"""

from __future__ import annotations

import errno
import logging
import select
import threading
from collections.abc import Callable, Iterable
from typing import Any

from kernel import Kernel, KernelError, rtnl

log = logging.getLogger(__name__)

ADDR_EVENTS = frozenset({rtnl.RTM_NEWADDR, rtnl.RTM_DELADDR})
POLL_MS = 500  # how often the thread looks at its stop flag while the kernel is quiet


def addresses_touched(events: Iterable[tuple[int, Any]]) -> bool:
    """True when a batch of netlink events holds an IPv4 address added or removed."""
    return any(mtype in ADDR_EVENTS and getattr(obj, "family", rtnl.AF_INET) == rtnl.AF_INET
               for mtype, obj in events)


class AddrMonitor:
    """Calls ``on_change()`` (on the monitor's thread) whenever the kernel adds or removes an
    IPv4 address in ``kernel``'s namespace. ``start()`` subscribes before it returns, so no
    change made after ``start()`` is missed; ``stop()`` ends the thread and closes the socket."""

    def __init__(self, kernel: Kernel, on_change: Callable[[], None]) -> None:
        self.kernel = kernel
        self.on_change = on_change
        self.changes = 0  # batches that called on_change (status, tests)
        self._nl: Any = None
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> threading.Thread:
        """Subscribe and start the thread (returned, so the owner can watch its liveness)."""
        self._nl = self.kernel.subscribe(rtnl.RTMGRP_IPV4_IFADDR)
        self.thread = threading.Thread(target=self._loop, name="felix-ifacemonitor", daemon=True)
        self.thread.start()
        return self.thread

    def stop(self) -> None:
        """Stop the thread and close the subscribed socket."""
        self._stop.set()
        if self.thread is not None:
            self.thread.join(timeout=2)
        if self._nl is not None:
            self._nl.close()
            self._nl = None

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self._nl.fileno(), select.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(POLL_MS):
                continue
            changed = False
            while True:  # drain the burst, then re-read once
                try:
                    batch = self._nl.events()
                except KernelError as exc:
                    if exc.errno != errno.ENOBUFS:
                        raise
                    log.warning("address notifications were lost: re-reading the host's addresses")
                    changed = True
                    continue
                if not batch:
                    break
                changed = changed or addresses_touched(batch)
            if changed and not self._stop.is_set():
                self.changes += 1
                try:
                    self.on_change()
                except Exception:  # noqa: BLE001 - a failed re-read must not end the monitor
                    log.exception("handling an address change failed")
