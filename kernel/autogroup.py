"""A session's CPU weight under the kernel's autogroups.

With ``kernel.sched_autogroup_enabled`` (on in Debian's kernels) every session (``setsid``) is
a scheduling group of its own that shares the CPU equally with the other sessions, whatever
the nice values of its processes: a process' nice weighs only against its own session's. A
lab starts each of its processes in a session of its own, so a nice value it means to count
(the control plane's, the zygote's) is also written as the session's
(``/proc/<pid>/autogroup``, sched(7)).
"""

from __future__ import annotations


def set_nice(nice: int, pid: int | str = "self") -> bool:
    """Give the session of process ``pid`` the CPU weight of ``nice`` (-20..19). False where the
    kernel has no autogroups or refused (a negative value without CAP_SYS_NICE; more than one
    write in 100 ms without CAP_SYS_ADMIN): the processes then keep only their own nice."""
    return write_nice(f"/proc/{pid}/autogroup", nice)


def write_nice(path: str, nice: int) -> bool:
    """Write ``nice`` to the autogroup file ``path``; False on any refusal (see :func:`set_nice`)."""
    try:
        with open(path, "w") as f:
            f.write(str(max(-20, min(19, int(nice)))))
    except OSError:
        return False
    return True


def nice_of(pid: int | str = "self") -> int | None:
    """The nice value of ``pid``'s session (None without autogroups)."""
    try:
        with open(f"/proc/{pid}/autogroup") as f:
            return int(f.read().split()[-1])
    except (OSError, ValueError, IndexError):
        return None
