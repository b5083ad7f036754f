"""Poll, never sleep: wait for a condition with a deadline (FRR topotests' run_and_expect).

Usage::

    from testbed.poll import wait_for
    routes = wait_for(lambda: node_routes("k8s-w0"), lambda r: "192.168.1.0/24" in r,
                      timeout=5, what="route to 192.168.1.0/24 on k8s-w0")

On timeout :class:`WaitTimeout` is raised and its message carries the last value seen,
so a failing test says what it was waiting for and what it found instead.

``CALICOLAB_DEADLINE_SCALE`` (default 1) multiplies every deadline: a machine that runs
Python 10-20x slower (a VM under TCG: docs/vagrant.md) waits as long relative to its pace.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def deadline_scale() -> float:
    """``CALICOLAB_DEADLINE_SCALE`` (>= 1; 1 when unset or invalid)."""
    try:
        return max(1.0, float(os.environ.get("CALICOLAB_DEADLINE_SCALE", "1")))
    except ValueError:
        return 1.0


class WaitTimeout(AssertionError):
    """A polled condition did not hold before the deadline."""

    def __init__(self, what: str, timeout: float, last: Any, error: BaseException | None):
        self.what, self.timeout, self.last, self.error = what, timeout, last, error
        msg = f"timed out after {timeout:.1f}s waiting for {what}; last seen: {last!r}"
        if error is not None:
            msg += f" (last error: {type(error).__name__}: {error})"
        super().__init__(msg)


def wait_for(
    probe: Callable[[], T],
    check: Callable[[T], bool] = bool,
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    max_interval: float = 0.25,
    what: str = "condition",
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``probe`` until ``check(result)`` is true; return that result.

    The interval starts at ``interval`` and doubles up to ``max_interval``.
    Exceptions listed in ``ignore`` raised by ``probe`` count as "not yet" and
    are reported if the deadline passes.
    """
    timeout *= deadline_scale()
    deadline = time.monotonic() + timeout
    last: Any = None
    error: BaseException | None = None
    delay = interval
    while True:
        try:
            last = probe()
            error = None
            if check(last):
                return last
        except ignore as exc:
            error = exc
        now = time.monotonic()
        if now >= deadline:
            raise WaitTimeout(what, timeout, last, error)
        time.sleep(min(delay, max(0.0, deadline - now)))
        delay = min(delay * 2, max_interval)
