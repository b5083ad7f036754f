"""Admission of a big lab's nodes at start-up: at most a window of nodes starting at once.

Every node starts a kubelet and a calico-node (and calico-node its CNI server); each costs
a few hundred ms of CPU to start (imports, TLS contexts, first lists and watches). Started
all together on a small machine, 100 nodes put ~200 processes in the run queue at once and
starve the control plane (etcd, the API server): the lab never became Ready (docs/performance.md).

:class:`StartWindow` is the pure logic: nodes are admitted in the lab's order (the control
plane first), at most ``window`` of them *starting* at a time; a node stops counting as
starting once it is settled (the supervisor's probe: its calico-node answers /readiness) or
after ``settle_timeout`` s (a node that never settles does not hold the others back). The
supervisor (:mod:`testbed.lab.supervisor`) asks :meth:`StartWindow.admit` on a short
interval and starts what it returns; the clock and the probe are the caller's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

#: the environment variable that sets the window (a positive number of nodes)
WINDOW_ENV = "CALICOLAB_START_WINDOW"
#: nodes starting at once per CPU of the machine (2 CPUs: 16); labs up to that size start
#: every node at once, as before
NODES_PER_CPU = 8
#: a node still not settled after this many seconds stops holding a place in the window
SETTLE_TIMEOUT = 15.0


def window_size(cpus: int | None, override: str | None = None) -> int:
    """The window for a machine of ``cpus`` CPUs, or ``override`` (the value of
    CALICOLAB_START_WINDOW: a positive number of nodes). Raises ValueError naming a bad override."""
    if override not in (None, ""):
        try:
            value = int(override)  # type: ignore[arg-type]
        except ValueError:
            value = 0
        if value < 1:
            raise ValueError(f"CALICOLAB_START_WINDOW={override!r}: expected a positive number of nodes")
        return value
    return NODES_PER_CPU * max(1, cpus or 1)


class StartWindow:
    """Which nodes to start next; see the module docstring."""

    def __init__(self, order: Iterable[str], window: int, settle_timeout: float = SETTLE_TIMEOUT):
        if window < 1:
            raise ValueError(f"window must be at least 1 node (got {window})")
        self.waiting: list[str] = list(order)
        self.window = window
        self.settle_timeout = settle_timeout
        self.starting: dict[str, float] = {}  # node -> when it was admitted
        self.settled: list[str] = []
        self.timed_out: list[str] = []

    @property
    def done(self) -> bool:
        """True once every node has been admitted."""
        return not self.waiting

    def admit(self, now: float, is_settled: Callable[[str], bool]) -> list[str]:
        """Retire the starting nodes that settled (``is_settled(node)``) or timed out, then
        admit waiting nodes, in order, while fewer than ``window`` are starting. Returns the
        nodes admitted by this call (the caller starts them)."""
        for node, since in list(self.starting.items()):
            if is_settled(node):
                del self.starting[node]
                self.settled.append(node)
            elif now - since >= self.settle_timeout:
                del self.starting[node]
                self.timed_out.append(node)
        admitted = []
        while self.waiting and len(self.starting) < self.window:
            node = self.waiting.pop(0)
            self.starting[node] = now
            admitted.append(node)
        return admitted
