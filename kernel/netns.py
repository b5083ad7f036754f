"""The one ``setns(2)`` helper: move the calling thread into a namespace (and back).

``setns`` changes only the calling thread, so every helper here is thread-safe in
the sense that other threads stay where they are; sockets keep the namespace they
were created in, and children forked from the thread inherit it.

* :func:`entered` (context manager): run a block inside a namespace, then return;
* :func:`enter`: move the calling thread for good (a thread that lives there:
  a speaker thread, an executor's initializer);
* :func:`path` : ``/run/netns/<name>`` for a bare name;
* :func:`create`: a new network namespace bound at a path, ``lo`` up (``ip netns add`` +
  ``ip link set lo up``, in-process); :func:`remove` undoes it (``ip netns del``).
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


_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_IFREQ = "16sH22x"  # struct ifreq: the name, then ifr_flags at the start of its 24-byte union


def create(target: str | os.PathLike[str]) -> None:
    """Make a new network namespace and bind it at ``target`` (a file that must not exist
    yet; a bare name goes under /run/netns), with ``lo`` up: what ``ip netns add`` and
    ``ip link set lo up`` inside it do, without their two execs (a pod's sandbox took
    200-300 ms of a loaded lab's start in them). A short-lived thread of its own unshares
    (``unshare(CLONE_NEWNET)`` moves only the calling thread) and ends, so no other thread
    ever sees the new namespace. OSError naming the step on failure, the file removed."""
    import ctypes
    import fcntl
    import socket
    import struct
    import threading

    from kernel.mount import MS_BIND, mount

    p = path(target)
    try:
        os.makedirs(os.path.dirname(p), exist_ok=True)
        os.close(os.open(p, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
    except OSError as exc:
        raise OSError(exc.errno, f"creating network namespace {p}: {exc.strerror}") from None
    failure: list[BaseException] = []

    def make() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            if libc.unshare(CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
            mount(_SELF[CLONE_NEWNET], p, flags=MS_BIND, what=f"binding the new namespace at {p}")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                flags = struct.unpack(_IFREQ, fcntl.ioctl(s, _SIOCGIFFLAGS, struct.pack(_IFREQ, b"lo", 0)))[1]
                fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            failure.append(exc)

    t = threading.Thread(target=make, name="netns-create", daemon=True)
    t.start()
    t.join()
    if failure:
        remove(p)
        exc = failure[0]
        if isinstance(exc, OSError):
            raise OSError(exc.errno, f"creating network namespace {p}: {exc.strerror or exc}") from None
        raise exc


def remove(target: str | os.PathLike[str]) -> None:
    """Unbind the namespace at ``target`` (MNT_DETACH) and remove the file; nothing there,
    or nothing mounted on it, is no error."""
    import ctypes

    p = path(target)
    if os.path.exists(p):
        ctypes.CDLL(None, use_errno=True).umount2(p.encode(), 2)  # MNT_DETACH
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
