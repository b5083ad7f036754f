"""The clock calico-node's components read and wait on, injected so logic is unit-tested in virtual time.

:class:`Clock` is real time. :class:`FakeClock` is virtual: nothing moves until
:meth:`FakeClock.advance` (or a ``wait``/``sleep`` on it, which advances by the timeout
when nothing else ends the wait), and then due timers fire in order. Threads use
:meth:`Clock.wait` / :meth:`Clock.sleep`; asyncio code uses :meth:`Clock.asleep` and
:meth:`Clock.call_later` (from the loop's thread).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any


class Clock:
    """Real time."""

    def monotonic(self) -> float:
        """Seconds on a monotonic clock."""
        return time.monotonic()

    def time(self) -> float:
        """Wall-clock seconds since the epoch."""
        return time.time()

    def wait(self, event: threading.Event, timeout: float) -> bool:
        """Wait for ``event`` at most ``timeout`` seconds; True if it is set."""
        return event.wait(timeout)

    def sleep(self, seconds: float) -> None:
        """Block the calling thread."""
        time.sleep(seconds)

    async def asleep(self, seconds: float) -> None:
        """Sleep in the running asyncio loop."""
        await asyncio.sleep(seconds)

    def call_later(self, delay: float, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in the running asyncio loop after ``delay`` seconds; the handle has ``cancel()``."""
        return asyncio.get_running_loop().call_later(delay, fn)


class _Timer:
    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock(Clock):
    """Virtual time for unit tests; starts at ``start`` (monotonic) and ``wall`` (epoch)."""

    def __init__(self, start: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self.now = start
        self._wall_offset = wall - start
        self._timers: list[tuple[float, int, _Timer]] = []
        self._order = itertools.count()
        self._lock = threading.RLock()
        self.waits: list[float] = []  # every timeout a wait/sleep was asked for, in order

    def monotonic(self) -> float:
        """Virtual seconds."""
        return self.now

    def time(self) -> float:
        """Virtual wall clock."""
        return self.now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move time forward, firing due timers in order (each at its own time)."""
        end = self.now + max(0.0, seconds)
        while True:
            with self._lock:
                if not self._timers or self._timers[0][0] > end:
                    break
                at, _n, timer = heapq.heappop(self._timers)
                self.now = max(self.now, at)
            if not timer.cancelled:
                timer.fn()
        self.now = end

    def wait(self, event: threading.Event, timeout: float) -> bool:
        """Set already: True at once; else time jumps by ``timeout`` (firing timers)."""
        self.waits.append(timeout)
        if event.is_set():
            return True
        self.advance(timeout)
        return event.is_set()

    def sleep(self, seconds: float) -> None:
        """Time jumps by ``seconds``."""
        self.waits.append(seconds)
        self.advance(seconds)

    def call_later(self, delay: float, fn: Callable[[], Any]) -> _Timer:
        """Run ``fn`` when virtual time reaches now + ``delay``."""
        timer = _Timer(fn)
        with self._lock:
            heapq.heappush(self._timers, (self.now + delay, next(self._order), timer))
        return timer

    async def asleep(self, seconds: float) -> None:
        """Resume when virtual time reaches now + ``seconds`` (someone must advance it)."""
        fut = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        self.call_later(seconds, wake)
        await fut

    def pending(self) -> list[float]:
        """Due times of the timers not yet fired or cancelled."""
        with self._lock:
            return sorted(at for at, _n, t in self._timers if not t.cancelled)
