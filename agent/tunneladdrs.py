"""calico-node's ``allocate-tunnel-addrs``: keeps the node's IPIP and VXLAN tunnel addresses.

In Calico it is its own service inside calico-node [``node/pkg/allocateip/allocateip.go``],
started beside Felix and BIRD once start-up has written the nodename file; it reconciles the
addresses at start and again whenever the IP pools change. Here it is a thread of
calico-node: :class:`TunnelAllocator` runs ``allocate`` (``agent.startup.ensure_tunnel_addresses``)
once at start and again on each :meth:`TunnelAllocator.request` (Felix's pool-change hook),
retrying a failed pass with a back-off. Off the start-up path, a busy lab's late nodes start
Felix and BGP without waiting for the ~12 API round trips of the allocation (up to 18 s of a
late node's start-up in a 50-node lab, bench/lab_up.py).

The clock is injected (:mod:`agent.clock`), so the retry logic is unit-tested without a
datastore.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from agent.clock import Clock

log = logging.getLogger(__name__)

FIRST_RETRY = 0.2  # seconds before a failed pass is tried again; doubles up to MAX_RETRY
MAX_RETRY = 10.0


class TunnelAllocator:
    """Runs ``allocate()`` (-> ``{"ipip": addr|None, "vxlan": addr|None}``) at start and on
    every :meth:`request`, in its own thread, until ``stop`` is set."""

    def __init__(self, allocate: Callable[[], dict[str, str | None]], stop: threading.Event,
                 clock: Clock | None = None, first_retry: float = FIRST_RETRY,
                 max_retry: float = MAX_RETRY) -> None:
        self.allocate = allocate
        self.stop_event = stop
        self.clock = clock or Clock()
        self.first_retry, self.max_retry = first_retry, max_retry
        self.addrs: dict[str, str | None] = {"ipip": None, "vxlan": None}
        self.last_error = ""
        self.passes = 0
        #: set once a pass has succeeded (the addresses are in the Node)
        self.done = threading.Event()
        self._wake = threading.Event()
        self._wake.set()  # the first pass runs at once
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        """Run a pass again soon (the IP pools changed)."""
        self._wake.set()

    def start(self) -> threading.Thread:
        """Start the thread; returns it."""
        self._thread = threading.Thread(target=self.run, name="allocate-tunnel-addrs", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        """Wake the thread so it sees ``stop`` (the caller has set it) and ends."""
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)

    def run(self) -> None:
        """The loop: one pass per wake-up; a failed pass is retried after a back-off."""
        delay = self.first_retry
        while not self.stop_event.is_set():
            if not self.clock.wait(self._wake, 1.0):
                continue
            self._wake.clear()
            if self.stop_event.is_set():
                break
            try:
                addrs = self.allocate()
            except Exception as exc:  # noqa: BLE001 - logged, shown in /status, retried
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("allocate-tunnel-addrs: %s; retrying in %.1fs", self.last_error, delay)
                self.clock.wait(self.stop_event, delay)
                delay = min(delay * 2, self.max_retry)
                self._wake.set()
                continue
            delay = self.first_retry
            self.passes += 1
            self.last_error = ""
            if addrs != self.addrs or not self.done.is_set():
                log.info("allocate-tunnel-addrs: IPIP %s, VXLAN %s", addrs.get("ipip"), addrs.get("vxlan"))
            self.addrs = dict(addrs)
            self.done.set()

    def status(self) -> dict:
        """For calico-node's /status: ``done`` once a pass succeeded, the addresses, the last error."""
        return {"done": self.done.is_set(), "ipip": self.addrs.get("ipip"), "vxlan": self.addrs.get("vxlan"),
                "passes": self.passes, "error": self.last_error or None}
