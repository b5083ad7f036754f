"""The one ``setns(2)`` helper: move the calling thread into a namespace (and back).

``setns`` changes only the calling thread, so every helper here is thread-safe in
the sense that other threads stay where they are; sockets keep the namespace they
were created in, and children forked from the thread inherit it.

* :func:`entered` (context manager): run a block inside a namespace, then return;
* :func:`enter`: move the calling thread for good (a thread that lives there:
  a speaker thread, an executor's initializer);
* :func:`path` : ``/run/netns/<name>`` for a bare name.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"
_SELF = {CLONE_NEWNET: "/proc/thread-self/ns/net", CLONE_NEWNS: "/proc/thread-self/ns/mnt"}

_setns_impl = getattr(os, "setns", None)  # Python >= 3.12


def _setns(fd: int, nstype: int) -> None:
    global _setns_impl
    if _setns_impl is None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]

        def impl(fd: int, nstype: int) -> None:
            if libc.setns(fd, nstype) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))

        _setns_impl = impl
    _setns_impl(fd, nstype)


def path(name_or_path: str | os.PathLike[str]) -> str:
    """``/run/netns/<name>`` for a bare name; a path (``/proc/1/ns/net``) is kept."""
    s = os.fspath(name_or_path)
    return s if "/" in s else f"{NETNS_DIR}/{s}"


def open_ns(target: str | os.PathLike[str]) -> int:
    """An O_RDONLY fd of the namespace file (FileNotFoundError naming it if absent)."""
    p = path(target)
    try:
        return os.open(p, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot open namespace {p}: {exc.strerror}") from None


def setns(target: str | os.PathLike[str] | int, nstype: int = CLONE_NEWNET) -> None:
    """Move the calling thread into ``target`` (a name, a path, or an open fd)."""
    if isinstance(target, int):
        try:
            _setns(target, nstype)
        except OSError as exc:
            raise OSError(exc.errno, f"setns(fd {target}): {exc.strerror}") from None
        return
    fd = open_ns(target)
    try:
        _setns(fd, nstype)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot enter namespace {path(target)}: {exc.strerror}") from None
    finally:
        os.close(fd)


def enter(target: str | os.PathLike[str] | int, nstype: int = CLONE_NEWNET) -> None:
    """Move the calling thread into ``target`` for good (same as :func:`setns`)."""
    setns(target, nstype)


@contextmanager
def entered(target: str | os.PathLike[str] | int | None, nstype: int = CLONE_NEWNET) -> Iterator[None]:
    """Run the block with the calling thread inside ``target`` (None: stay), then move it back."""
    if target is None:
        yield
        return
    home = os.open(_SELF[nstype], os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(target, nstype)
        try:
            yield
        finally:
            _setns(home, nstype)
    finally:
        os.close(home)


def same(a: str | os.PathLike[str], b: str | os.PathLike[str] = _SELF[CLONE_NEWNET]) -> bool:
    """True when the two namespace files are the same namespace (default: this thread's)."""
    sa, sb = os.stat(path(a)), os.stat(b if "/" in os.fspath(b) else path(b))
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
