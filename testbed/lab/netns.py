"""Reach into a lab node's namespaces from the machine (setns through kernel.netns).

A lab node's network namespace is attached on the machine as
``/run/netns/<lab>-<node>``; its mount namespace is held by the node's Mininet
shell (``/proc/<pid>/ns/mnt``). These helpers let the CLI and tests talk to
things inside a node (the lab's etcd, calico-node's health port) without a
route from the machine into the lab:

* :func:`enter` moves the calling *thread* into a netns for good (the CLI does
  this before running kubectl/calicoctl in-process, so every socket they open
  and every thread they start afterwards lives in the lab).
* :func:`socket_in` / :func:`http_get` open one socket inside a netns and
  return to where the thread was, so the caller itself stays put.
* :func:`nsenter_argv` builds the argv to run a command inside a node.

The setns(2) calls themselves are the project's one helper, :mod:`kernel.netns`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

from kernel import netns as _kns

__all__ = ["NETNS_DIR", "CLONE_NEWNET", "CLONE_NEWNS", "netns_path", "setns", "enter",
           "entered", "socket_in", "http_get", "http_json", "run_in", "nsenter_argv", "exists"]

NETNS_DIR = Path(_kns.NETNS_DIR)
CLONE_NEWNS = _kns.CLONE_NEWNS
CLONE_NEWNET = _kns.CLONE_NEWNET


def netns_path(name_or_path: str | os.PathLike) -> Path:
    """``/run/netns/<name>`` for a bare name; a path (``/proc/1/ns/net``) is kept as is."""
    return Path(_kns.path(name_or_path))


def exists(name: str) -> bool:
    """True if the named netns is attached on the machine."""
    return netns_path(name).exists()


def setns(path: str | os.PathLike, nstype: int = CLONE_NEWNET) -> None:
    """Move the calling thread into the namespace file at ``path`` (OSError if not allowed)."""
    _kns.setns(os.fspath(path), nstype)


def enter(name: str) -> None:
    """Move the calling thread into the netns ``name`` for good (FileNotFoundError if absent)."""
    path = netns_path(name)
    if not path.exists():
        raise FileNotFoundError(f"network namespace {name!r} does not exist ({path})")
    _kns.enter(str(path))


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the ``with`` body in netns ``name``, then return this thread to its own netns."""
    path = netns_path(name)
    if not path.exists():
        raise FileNotFoundError(f"network namespace {name!r} does not exist ({path})")
    with _kns.entered(str(path)):
        yield


def socket_in(name: str, family: int = socket.AF_INET,
              type: int = socket.SOCK_STREAM) -> socket.socket:
    """A new socket that lives in netns ``name``; the calling thread stays where it is."""
    with entered(name):
        return socket.socket(family, type)


def http_get(name: str, host: str, port: int, path: str = "/",
             timeout: float = 2.0) -> tuple[int, bytes]:
    """``GET http://host:port/path`` from inside netns ``name``: ``(status, body)``.

    Raises OSError (refused, unreachable, timeout) like a plain socket would.
    """
    sock = socket_in(name)
    try:
        sock.settimeout(timeout)
        sock.connect((host, port))
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
                     .encode())
        chunks: list[bytes] = []
        while True:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    finally:
        sock.close()
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise OSError(f"malformed HTTP response from {host}:{port}{path}: {raw[:80]!r}") from None
    return status, body


def http_json(name: str, host: str, port: int, path: str, timeout: float = 2.0) -> tuple[int, object]:
    """Like :func:`http_get` but decodes a JSON body (None if the body is not JSON)."""
    status, body = http_get(name, host, port, path, timeout)
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def nsenter_argv(netns: str, mnt_pid: int | None = None, wd: str | None = None) -> list[str]:
    """argv prefix running a command in netns ``netns`` (and the mount ns of ``mnt_pid``).

    ``wd`` is the working directory inside (default: the caller's, when it exists there).
    """
    argv = ["nsenter", f"--net={netns_path(netns)}"]
    if mnt_pid is not None:
        argv.append(f"--mount=/proc/{mnt_pid}/ns/mnt")
        try:
            wd = wd or os.getcwd()
        except OSError:
            wd = "/"
        argv.append(f"--wd={wd}")
    return argv + ["--"]


def run_in(name: str, fn, *args, **kwargs):  # noqa: ANN001, ANN201 - generic helper
    """Call ``fn(*args, **kwargs)`` on a fresh thread that lives in netns ``name``; return its result.

    The calling thread never changes namespace, so this is safe in a
    multi-threaded program (the supervisor); exceptions propagate.
    """
    box: dict = {}

    def target() -> None:
        try:
            enter(name)
            box["result"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["error"] = exc

    t = threading.Thread(target=target, name=f"netns:{name}", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("result")
