"""When a lab's supervisor restarts a daemon that exited (pure logic; the clock is injected).

A node has two restarters: systemd restarts the kubelet and containerd (their units say
``Restart=always``, a fixed ``RestartSec`` and no start limit), and the kubelet restarts the
containers of static pods (etcd, kube-apiserver) and DaemonSet pods (calico-node) with its
CrashLoopBackOff. The lab supervisor starts some of these daemons itself (``up``'s direct
start of calico-node, calico-kube-controllers, etcd and the API server), so it restarts each
the way its real restarter would:

* :data:`SYSTEMD_UNITS`: a fixed delay, forever (kubelet.service ``RestartSec=10``,
  containerd.service ``RestartSec=5``, docker.service ``RestartSec=2``; docker's unit also has
  a start limit of 3 in 60 s, which is not modelled);
* everything else: :func:`crashloop_delay`, the project kubelet's back-off (1 s, then 10 s
  doubling to 5 min), reset once the daemon has run for :data:`BACKOFF_RESET` seconds
  (the kubelet forgets a container's back-off after twice its 5 min cap).

:class:`Restarter` is the state of one daemon; the supervisor asks it what to do at each pass.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

#: systemd units of a node and their ``RestartSec`` (seconds): the kubelet's unit as the
#: Kubernetes packages ship it, containerd's as containerd ships it.
SYSTEMD_UNITS: dict[str, float] = {"kubelet": 10.0, "containerd": 5.0, "dockerd": 2.0}

#: the CrashLoopBackOff cap (kubelet ``MaxContainerBackOff``)
BACKOFF_MAX = 300.0
#: a daemon that ran this long without exiting starts its back-off over
BACKOFF_RESET = 2 * BACKOFF_MAX


def crashloop_delay(restarts: int) -> float:
    """Seconds the kubelet waits before restart number ``restarts + 1`` of a container
    (``restarts`` = how many times it was restarted already): 1 s, then 10 s doubling to
    :data:`BACKOFF_MAX`."""
    if restarts <= 0:
        return 1.0
    return min(10.0 * 2 ** (restarts - 1), BACKOFF_MAX)


def describe_exit(code: int | None) -> str:
    """An exit status as a person reads it: ``status 1``, ``signal 9 (SIGKILL)``."""
    if code is None:
        return "an unknown status (not its child)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "?"
        return f"signal {-code} ({name})"
    return f"status {code}"


@dataclass
class Restarter:
    """The restart state of one daemon (``service`` is its short name, e.g. ``kubelet``)."""

    service: str
    restarts: int = 0
    started_at: float = 0.0
    next_start: float | None = None
    last_exit: int | None = None
    history: list[tuple[float, int | None]] = field(default_factory=list)

    @property
    def policy(self) -> str:
        """``systemd Restart=always RestartSec=N`` or ``kubelet CrashLoopBackOff``."""
        sec = SYSTEMD_UNITS.get(self.service)
        return f"systemd Restart=always RestartSec={sec:g}" if sec is not None else "kubelet CrashLoopBackOff"

    def delay(self, ran_for: float) -> float:
        """The wait before the next start, for a daemon that ran ``ran_for`` seconds."""
        sec = SYSTEMD_UNITS.get(self.service)
        if sec is not None:
            return sec
        if ran_for >= BACKOFF_RESET:
            self.restarts = 0
        return crashloop_delay(self.restarts)

    def started(self, now: float) -> None:
        """The daemon was (re)started at ``now``."""
        self.started_at = now
        self.next_start = None

    def exited(self, code: int | None, now: float) -> float:
        """The daemon exited with ``code`` at ``now``: schedule its restart; returns the delay."""
        wait = self.delay(now - self.started_at)
        self.last_exit = code
        self.next_start = now + wait
        self.history.append((now, code))
        del self.history[:-20]
        return wait

    def due(self, now: float) -> bool:
        """True when a scheduled restart should happen now."""
        return self.next_start is not None and now >= self.next_start

    def restarted(self, now: float) -> None:
        """The scheduled restart was done."""
        self.restarts += 1
        self.started(now)
