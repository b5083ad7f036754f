"""A lab node's private directories, mounted by system calls instead of shell commands.

Every node of a lab has its own ``/etc/kubernetes``, ``/var/lib/calico``, ``/run/netns``...
(bind mounts of directories under the lab's state dir, or tmpfs; the supervisor's
``NODE_DIRS``), and sees none of the lab's state dir but the directories it needs (a tmpfs
over ``/run/calicolab`` with those bound back: :func:`plan`'s ``hide``). Made through the
node's shell, that was ~40 processes per node (``mkdir -p``, ``mount``: each parses the
machine's mount table), ~0.1 s of CPU per node on the way to the kubelets.

:func:`plan` (pure) lists the operations, in the order the shell ran them; :func:`apply`
performs them with ``mkdir(2)``/``open(2)``/``mount(2)`` in the calling process's mount
namespace. A multi-threaded process (the supervisor) cannot enter another mount namespace
(``setns`` refuses a process whose threads share its filesystem context), so
:class:`Mounter` forks a helper while the supervisor is still single-threaded; the helper
enters each node's mount namespace in turn (``/proc/<shell pid>/ns/mnt``) and applies that
node's plan. It exits when the supervisor closes its end or dies (PR_SET_PDEATHSIG), and
lives in the lab's cgroup (recorded like a service while it runs).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kernel.mount import MS_BIND, mount

__all__ = ["Op", "plan", "apply", "Mounter", "MounterError"]

#: one operation: ("mkdir", path, mode or None) | ("bind", source, target) |
#: ("tmpfs", source, target, options or None) | ("open", slot, path) | ("bindfd", slot, target)
#: | ("close", slot)
Op = tuple

PR_SET_PDEATHSIG = 1


class MounterError(RuntimeError):
    """A node's private directories could not be made (names the node and the operation)."""


def plan(dirs: Sequence[str | tuple[str, str]], hide: tuple[str | os.PathLike, Sequence[str | os.PathLike]] | None
         ) -> list[Op]:
    """The operations making a node's private ``dirs`` (a mount point: a tmpfs; (mount point,
    backing dir): a bind mount), then, given ``hide`` = (root, keep), covering ``root`` with an
    empty tmpfs and binding back only the directories in ``keep``, each to its own path: they
    are opened before the cover goes on and bound from the open descriptor
    (``/proc/self/fd/N``), the only name left for them."""
    ops: list[Op] = []
    for d in dirs:
        if isinstance(d, tuple):
            mount_point, backing = d
            ops += [("mkdir", str(backing), None), ("mkdir", str(mount_point), None),
                    ("bind", str(backing), str(mount_point))]
        else:
            ops += [("mkdir", str(d), None), ("tmpfs", "tmpfs", str(d), None)]
    if hide:
        root, keep = hide
        for i, path in enumerate(keep):
            ops += [("mkdir", str(path), 0o700), ("open", i, str(path))]
        ops.append(("tmpfs", "calicolab-private", str(root), "mode=0755,size=1m"))
        for i, path in enumerate(keep):
            ops += [("mkdir", str(path), None), ("bindfd", i, str(path)), ("close", i)]
    return ops


def describe(op: Op) -> str:
    """The shell command ``op`` stands for (error messages)."""
    kind = op[0]
    if kind == "mkdir":
        mode = f"-m {op[2]:o} " if op[2] is not None else ""
        return f"mkdir -p {mode}{op[1]}"
    if kind == "bind":
        return f"mount --bind {op[1]} {op[2]}"
    if kind == "tmpfs":
        return f"mount -t tmpfs {'-o ' + op[3] + ' ' if op[3] else ''}{op[1]} {op[2]}"
    if kind == "open":
        return f"exec {10 + op[1]}<{op[2]}"
    if kind == "bindfd":
        return f"mount --bind /proc/self/fd/<{op[2]}> {op[2]}"
    return f"exec {10 + op[1]}<&-"


def apply(ops: Sequence[Op]) -> None:
    """Perform ``ops`` (:func:`plan`) in order in this process's mount namespace; OSError
    naming the first that failed (the descriptors it opened are closed either way)."""
    fds: dict[int, int] = {}
    try:
        for op in ops:
            kind = op[0]
            try:
                if kind == "mkdir":
                    if op[2] is None:
                        os.makedirs(op[1], exist_ok=True)
                    elif not os.path.isdir(op[1]):
                        os.makedirs(op[1], mode=op[2], exist_ok=True)
                elif kind == "bind":
                    mount(op[1], op[2], None, MS_BIND)
                elif kind == "tmpfs":
                    mount(op[1], op[2], "tmpfs", 0, op[3])
                elif kind == "open":
                    fds[op[1]] = os.open(op[2], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                elif kind == "bindfd":
                    mount(f"/proc/self/fd/{fds[op[1]]}", op[2], None, MS_BIND)
                elif kind == "close":
                    os.close(fds.pop(op[1]))
                else:
                    raise ValueError(f"unknown operation {op!r}")
            except OSError as exc:
                raise OSError(exc.errno, f"{describe(op)}: {exc.strerror}") from None
    finally:
        for fd in fds.values():
            os.close(fd)


class Mounter:
    """A forked helper that applies plans inside nodes' mount namespaces (see the module doc).

    :meth:`start` forks it (call while the process is single-threaded); :meth:`mount` sends
    one node's plan and waits for the answer (thread-safe: one request at a time);
    :meth:`close` ends it and reaps it."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.sock: socket.socket | None = None
        self.lock = threading.Lock()

    def start(self) -> int:
        """Fork the helper; its PID. RuntimeError if this process already runs threads."""
        if threading.active_count() != 1:
            raise RuntimeError("the mount helper must be forked before any thread starts")
        from kernel import netns as _kns  # noqa: F401 - imported here, not in the child

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # the helper: never returns
            code = 1
            try:
                ours.close()
                _serve(theirs)
                code = 0
            finally:
                os._exit(code)
        theirs.close()
        self.pid, self.sock = pid, ours
        return pid

    def mount(self, name: str, shell_pid: int, ops: Sequence[Op]) -> None:
        """Apply ``ops`` in the mount namespace of ``shell_pid`` (node ``name``'s shell)."""
        if self.sock is None:
            raise MounterError(f"{name}: private dirs: the mount helper is not running")
        with self.lock:
            try:
                self.sock.send(json.dumps({"pid": shell_pid, "ops": list(ops)}).encode())
                data = self.sock.recv(65536)
            except OSError as exc:
                raise MounterError(f"{name}: private dirs: mount helper: {exc}") from None
        if not data:
            raise MounterError(f"{name}: private dirs: the mount helper exited")
        reply = json.loads(data)
        if not reply.get("ok"):
            raise MounterError(f"{name}: private dirs: {reply.get('error')}")

    def close(self) -> None:
        """Tell the helper to exit and reap it."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.pid is not None:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.pid = None


def _serve(sock: socket.socket) -> None:
    """The helper's loop: one request (a node's shell PID and plan) at a time, until EOF."""
    from kernel.netns import CLONE_NEWNS, setns

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:
        return  # the supervisor is gone already
    keep = sock.fileno()
    os.closerange(3, keep)  # the progress pipe, logs, state files: the supervisor's only
    os.closerange(keep + 1, 1 << 16)
    machine = os.stat("/proc/self/ns/mnt")  # where the helper starts: the machine's
    while True:
        data = sock.recv(1 << 20)
        if not data:
            return
        req = json.loads(data)
        try:
            target = Path(f"/proc/{int(req['pid'])}/ns/mnt")
            st = os.stat(target)
            if (st.st_dev, st.st_ino) == (machine.st_dev, machine.st_ino):
                raise ValueError(f"pid {req['pid']} is in the machine's mount namespace: refused")
            setns(target, CLONE_NEWNS)
            apply([tuple(op) for op in req["ops"]])
            reply: dict[str, Any] = {"ok": True}
        except (OSError, ValueError, KeyError) as exc:
            reply = {"ok": False, "error": str(exc)}
        sock.send(json.dumps(reply).encode())
