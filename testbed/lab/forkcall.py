"""Run one function in a forked child of a (still single-threaded) process and wait for it.

The supervisor makes the lab's PKI (RSA and ECDSA keys, certificates, kubeconfigs: ~0.4 s
of CPU) while it builds the network. On a thread it shared the interpreter lock with the
build's Python work (the node shells' ptys, the netlink handles); a forked child runs on the
machine's other CPU for the whole time, and imports nothing into the supervisor.

:class:`ForkCall` forks at :meth:`ForkCall.start` (refused once a thread runs: a fork of a
multi-threaded process may inherit a lock some other thread held); the child runs the
function, reports a failure on a pipe and leaves with ``os._exit`` (no atexit handler, no
flush of the parent's buffers). It closes every inherited descriptor but its pipe and stdio,
and dies with the parent (PR_SET_PDEATHSIG). :meth:`ForkCall.wait` reaps it and raises
:class:`ForkCallError` with the child's error.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import traceback
from collections.abc import Callable

__all__ = ["ForkCall", "ForkCallError"]

PR_SET_PDEATHSIG = 1


class ForkCallError(RuntimeError):
    """The child failed: its exception (type and message), or how it ended."""


class ForkCall:
    """``fn()`` in a forked child (see the module doc)."""

    def __init__(self, fn: Callable[[], object], what: str) -> None:
        self.fn, self.what = fn, what
        self.pid: int | None = None
        self._rfd: int | None = None
        self._result: ForkCallError | None = None
        self._done = False

    def start(self) -> int:
        """Fork the child; its PID. RuntimeError if this process already runs threads."""
        if threading.active_count() != 1:
            raise RuntimeError(f"{self.what}: a child must be forked before any thread starts")
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                os.close(rfd)
                code = _child(self.fn, wfd)
            finally:
                os._exit(code)
        os.close(wfd)
        self.pid, self._rfd = pid, rfd
        return pid

    def wait(self) -> None:
        """Wait for the child; ForkCallError if it failed (again on every later call)."""
        if not self._done and self.pid is not None and self._rfd is not None:
            chunks = []
            while True:
                data = os.read(self._rfd, 65536)
                if not data:
                    break
                chunks.append(data)
            os.close(self._rfd)
            _, status = os.waitpid(self.pid, 0)
            code = os.waitstatus_to_exitcode(status)
            self._done = True
            message = b"".join(chunks).decode(errors="replace").strip()
            if message or code != 0:
                how = f"exited with status {code}" if code >= 0 else f"killed by signal {-code}"
                self._result = ForkCallError(f"{self.what}: {message or how}")
        if self._result is not None:
            raise self._result


def _child(fn: Callable[[], object], wfd: int) -> int:
    """In the child: die with the parent, close what is not ours, run ``fn``; the exit code."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    os.closerange(3, wfd)
    os.closerange(wfd + 1, 1 << 16)
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        os.write(wfd, f"{type(exc).__name__}: {exc}".encode())
        try:
            traceback.print_exc()  # the supervisor's log
        except (OSError, ValueError):
            pass
        return 1
    return 0
