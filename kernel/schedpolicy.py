"""The CPU scheduling policy of a lab's processes: ``SCHED_BATCH`` (sched(7)).

A lab runs far more busy processes than the machine has cores (~150 at 50 nodes on 2), most
of them multi-threaded Python. Under the default policy a woken thread preempts the running
one when it has waited long enough, and in a CPython process the one preempted is often the
thread that just woke it while holding the GIL (a ``Queue.put``, an ``Event.set``): the woken
thread cannot run Python until the preempted one is scheduled again, behind the rest of the
run queue. ``SCHED_BATCH`` keeps the same nice values and CPU shares and only drops that
wake-up preemption, as the kernel documents it for non-interactive, CPU-bound work.
"""

from __future__ import annotations

import os

#: the policies by their value in ``/proc/<pid>/stat`` / sched_getscheduler(2)
NAMES = {0: "SCHED_OTHER", 1: "SCHED_FIFO", 2: "SCHED_RR", 3: "SCHED_BATCH", 5: "SCHED_IDLE", 6: "SCHED_DEADLINE"}


def set_batch(pid: int = 0) -> bool:
    """Run ``pid`` (0: the caller; every thread it starts and program it execs after this
    inherits it) as ``SCHED_BATCH``. False where the kernel refused; the process then keeps
    its policy."""
    try:
        os.sched_setscheduler(pid, os.SCHED_BATCH, os.sched_param(0))
    except OSError:
        return False
    return True


def set_fifo_reset_on_fork(pid: int = 0, priority: int = 1) -> bool:
    """Run ``pid`` as ``SCHED_FIFO`` at ``priority`` (1: the lowest real-time priority) with
    ``SCHED_RESET_ON_FORK``: it runs as soon as it wakes, ahead of every normal and batch task,
    and a child it forks starts as ``SCHED_OTHER`` at nice 0 (sched(7)). For a server whose
    every request is short (the lab's zygote); the kernel's real-time throttling keeps 5 % of
    each CPU for the rest even if it spun. False where the kernel refused."""
    try:
        os.sched_setscheduler(pid, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(priority))
    except OSError:
        return False
    return True


def policy_of(pid: int = 0) -> str | None:
    """The name of ``pid``'s scheduling policy (``SCHED_BATCH``...), None if it is gone."""
    try:
        value = os.sched_getscheduler(pid) & ~os.SCHED_RESET_ON_FORK
    except OSError:
        return None
    return NAMES.get(value, str(value))
