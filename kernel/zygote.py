"""Client side of the lab's zygote (:mod:`testbed.lab.zygote`): start one of the project's
Python programs as a fork of an interpreter that has imported the heavy modules already.

A caller that would run ``<venv python> -m agent.csi`` (or a console script of the venv, such
as ``calico-node``) asks the zygote named by ``$CALICOLAB_ZYGOTE`` (a unix socket) instead:
:func:`spawn` sends the argv, environment, working directory, CPU priority, stdio and the
namespaces (open fds, SCM_RIGHTS) plus a pod's bind mounts; the zygote forks, the child enters
them and runs the program. The zygote is the child's parent: it reaps it and sends its exit
status back over the request's connection. :class:`ZygoteProcess` is what the caller keeps:
``pid``, ``poll()``, ``wait(timeout)``, ``returncode`` (negative: the signal, as
:class:`subprocess.Popen`), ``send_signal``/``terminate``/``kill`` through a pidfd (no PID
reuse race). When the zygote goes away the process keeps running: its end is then seen on the
pidfd and its exit code is unknown (:data:`UNKNOWN_EXIT`, logged).

Pure parts (:func:`run_spec`, :func:`encode`, :func:`decode`) are unit-tested; standard library
only (``kernel`` is importable by every layer).
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import threading
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: the environment variable naming the lab's zygote socket ("" or unset: exec as usual)
ENV = "CALICOLAB_ZYGOTE"
#: values of $CALICOLAB_ZYGOTE that mean "no zygote" (the supervisor starts none)
OFF = ("0", "off", "false", "no")
#: values of $CALICOLAB_ZYGOTE, in the supervisor's environment, that mean its own zygote
ON = ("", "1", "on", "true", "yes")
#: the exit code reported when the zygote went away before the process ended (as the
#: kubelet's "unknown": -1)
UNKNOWN_EXIT = -1
#: the fds a request may carry, in this order when present
FD_NAMES = ("stdin", "stdout", "stderr", "mnt", "net")
_HEADER = struct.Struct("!I")
MAX_FRAME = 1 << 20
CONNECT_TIMEOUT = 10.0


class ZygoteError(Exception):
    """The zygote could not start the program (the caller falls back to exec)."""


@dataclass(frozen=True)
class RunSpec:
    """How the child runs its program: ``kind`` ``module`` (``-m target``) or ``path`` (a
    script file), with ``argv`` the program's ``sys.argv``."""

    kind: str
    target: str
    argv: list[str]


def same_python(exe: str, python: str) -> bool:
    """True when ``exe`` (a path) is the interpreter ``python`` names: the same path, or a
    ``python``/``python3``/``python3.N`` name in the same directory (a venv's bin) resolving to
    the same file. A bare name or another interpreter is False."""
    if "/" not in exe:
        return False
    a, b = os.path.abspath(exe), os.path.abspath(python)
    if a == b:
        return True
    if os.path.dirname(a) != os.path.dirname(b) or not os.path.basename(a).startswith("python"):
        return False
    try:
        return os.path.realpath(a) == os.path.realpath(b)
    except OSError:
        return False


def _shebang(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            first = f.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    parts = first[2:].strip().split()
    return parts[0].decode(errors="replace") if len(parts) == 1 else None


def run_spec(argv: list[str], python: str, cwd: str | None = None) -> RunSpec | None:
    """What the zygote would run for ``argv`` (pure, but for reading a script's first line):
    ``<python> -m mod args`` -> module ``mod``; ``<python> script args`` and a script whose
    ``#!`` line names ``<python>`` (the venv's console scripts) -> path. Anything else
    (interpreter flags, ``-c``, another program) -> None: it is exec'd as usual."""
    if not argv:
        return None
    exe = argv[0]
    if "/" in exe and not os.path.isabs(exe) and cwd:
        exe = os.path.join(cwd, exe)
    if same_python(exe, python):
        if len(argv) >= 3 and argv[1] == "-m" and argv[2] and not argv[2].startswith("-"):
            return RunSpec("module", argv[2], [argv[2], *argv[3:]])
        if len(argv) >= 2 and argv[1] and not argv[1].startswith("-"):
            script = argv[1]
            return RunSpec("path", script, argv[1:])
        return None
    if "/" in exe:
        interp = _shebang(exe)
        if interp is not None and same_python(interp, python):
            return RunSpec("path", exe, [argv[0], *argv[1:]])
    return None


def encode(msg: dict[str, Any]) -> bytes:
    """One frame: a 4-byte big-endian length, then the message as JSON."""
    body = json.dumps(msg, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise ValueError(f"zygote message of {len(body)} bytes (at most {MAX_FRAME})")
    return _HEADER.pack(len(body)) + body


def decode(buf: bytes) -> tuple[dict[str, Any] | None, bytes]:
    """The first complete frame of ``buf`` and what follows it; (None, buf) when incomplete.
    A frame that is not a JSON object is a ValueError."""
    if len(buf) < _HEADER.size:
        return None, buf
    (n,) = _HEADER.unpack_from(buf)
    if n > MAX_FRAME:
        raise ValueError(f"zygote frame of {n} bytes (at most {MAX_FRAME})")
    if len(buf) < _HEADER.size + n:
        return None, buf
    msg = json.loads(buf[_HEADER.size:_HEADER.size + n])
    if not isinstance(msg, dict):
        raise ValueError(f"zygote frame is not an object: {msg!r}")
    return msg, buf[_HEADER.size + n:]


class FrameReader:
    """Frames (and the fds sent with them) read from a stream socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""
        self.fds: list[int] = []
        self.eof = False

    def fill(self) -> bool:
        """One read (blocking as the socket is); False at EOF."""
        data, fds, _flags, _addr = socket.recv_fds(self.sock, 65536, 8)
        self.fds += fds
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def next(self) -> dict[str, Any] | None:
        """The next complete frame already read, or None."""
        msg, self.buf = decode(self.buf)
        return msg

    def read(self) -> dict[str, Any]:
        """Block until a whole frame arrived (ConnectionError at EOF)."""
        while True:
            msg = self.next()
            if msg is not None:
                return msg
            if not self.fill():
                raise ConnectionError("the zygote closed the connection")


class ZygoteProcess:
    """A program the zygote started, used as a :class:`subprocess.Popen` (pid, poll, wait,
    returncode, send_signal, terminate, kill)."""

    def __init__(self, args: list[str], pid: int, sock: socket.socket, reader: FrameReader, pidfd: int | None):
        self.args = args
        self.pid = pid
        self.returncode: int | None = None
        self.stdin = self.stdout = self.stderr = None
        self._sock: socket.socket | None = sock
        self._reader = reader
        self._pidfd = pidfd
        self._lock = threading.Lock()

    def _finish(self, code: int) -> None:
        self.returncode = code
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def _check(self) -> None:
        """Take what arrived (under the lock): the exit frame, or the zygote's hang-up."""
        if self.returncode is not None:
            return
        if self._sock is not None:
            while select.select([self._sock], [], [], 0)[0]:
                try:
                    more = self._reader.fill()
                except OSError:
                    more = False
                msg = self._reader.next()
                if msg is not None and "exit" in msg:
                    self._finish(int(msg["exit"]))
                    return
                if not more:
                    log.warning("zygote connection for pid %d lost (the zygote exited?): its exit code "
                                "will be unknown (%d)", self.pid, UNKNOWN_EXIT)
                    self._sock.close()
                    self._sock = None
                    break
        if self._sock is None:  # the zygote is gone: the pidfd says when the process ends
            if self._pidfd is None or select.select([self._pidfd], [], [], 0)[0]:
                log.warning("pid %d ended while its zygote was gone: exit code unknown", self.pid)
                self._finish(UNKNOWN_EXIT)

    def poll(self) -> int | None:
        """The exit code once the process ended (negative: killed by that signal), else None."""
        with self._lock:
            self._check()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the end; :class:`subprocess.TimeoutExpired` after ``timeout`` seconds."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            code = self.poll()
            if code is not None:
                return code
            left = 0.05 if deadline is None else min(0.05, deadline - time.monotonic())
            if left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            sock, pidfd = self._sock, self._pidfd  # another thread may finish it meanwhile
            watch = [sock] if sock is not None else [pidfd] if pidfd is not None else []
            if watch:
                try:
                    select.select(watch, [], [], left)
                except (OSError, ValueError, TypeError):  # closed by another thread meanwhile
                    pass

    def send_signal(self, sig: int) -> None:
        """Signal the process (through its pidfd: never another process that got its PID)."""
        with self._lock:
            self._check()
            if self.returncode is not None:
                return
            try:
                if self._pidfd is not None:
                    signal.pidfd_send_signal(self._pidfd, sig)
                else:
                    os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        """SIGTERM."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL."""
        self.send_signal(signal.SIGKILL)

    def __del__(self) -> None:
        try:
            if self._sock is not None:
                self._sock.close()
            if self._pidfd is not None:
                os.close(self._pidfd)
        except (OSError, AttributeError):
            pass


def spawn(target: str, argv: list[str], *, env: dict[str, str], cwd: str | None = None,
          stdin: int | None = None, stdout: int | None = None, stderr: int | None = None,
          mnt: int | None = None, net: int | None = None, mounts: list[tuple[str, str]] | None = None,
          propagation: str = "slave", priority: int | None = None) -> ZygoteProcess:
    """Ask the zygote ``target`` (a socket path or ``fd:N:PID``: :func:`connect`) to start ``argv`` (which :func:`run_spec` must accept).
    ``stdin``/``stdout``/``stderr``: fds for the child (None: /dev/null); ``mnt``/``net``: fds
    of the mount and network namespaces it enters (mount first; None: the zygote's);
    ``mounts``: a pod's bind mounts, made in a new mount namespace (propagation ``slave`` or
    ``unchanged``) as :func:`testbed.k8s.runtime.process_argv` does; ``priority``: its absolute
    nice value. Raises :class:`ZygoteError` (or OSError) when it did not start."""
    fds: list[int] = []
    names: list[str] = []
    for name, fd in zip(FD_NAMES, (stdin, stdout, stderr, mnt, net), strict=True):
        if fd is not None:
            fds.append(fd)
            names.append(name)
    req = {"argv": list(argv), "env": dict(env), "cwd": cwd or "/", "fds": names,
           "mounts": [list(m) for m in mounts] if mounts else None, "propagation": propagation,
           "priority": priority}
    sock = connect(target)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        socket.send_fds(sock, [encode(req)], fds)
        reader = FrameReader(sock)
        try:
            reply = reader.read()
        except TimeoutError:
            # the caller starts the program by exec now: tell the zygote, which ends the child
            # it may fork (or have forked) for this request, so there is never a second copy
            try:
                sock.sendall(encode({"abandon": True}))
            except OSError:
                pass
            raise ZygoteError(f"no answer in {CONNECT_TIMEOUT:.0f} s (request abandoned)") from None
        got = reader.fds
        reader.fds = []
        if "error" in reply or "pid" not in reply:
            for fd in got:
                os.close(fd)
            raise ZygoteError(str(reply.get("error") or f"unexpected reply {reply!r}"))
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    pidfd = got[0] if got else None
    for fd in got[1:]:
        os.close(fd)
    proc = ZygoteProcess(list(argv), int(reply["pid"]), sock, reader, pidfd)
    with proc._lock:
        msg = reader.next()  # a quick exit may have come with the pid
        if msg is not None and "exit" in msg:
            proc._finish(int(msg["exit"]))
    return proc


def parse_target(value: str) -> tuple[str, int, int] | tuple[str, str]:
    """``$CALICOLAB_ZYGOTE`` -> ``("fd", channel fd, zygote pid)`` (``fd:N:PID``: the channel a
    zygote's child inherits) or ``("path", socket path)``; ValueError when it is neither."""
    if value.startswith("fd:"):
        parts = value.split(":")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            raise ValueError(f"{ENV}={value!r}: fd:<fd>:<zygote pid> or a socket path")
        return "fd", int(parts[1]), int(parts[2])
    if not value.startswith("/"):
        raise ValueError(f"{ENV}={value!r}: fd:<fd>:<zygote pid> or a socket path")
    return "path", value


def connect(target: str) -> socket.socket:
    """A connection to the zygote for one request: through its socket path (the supervisor),
    or through the channel a zygote's child inherited (``fd:N:PID``; nodes and pods have no
    path to the lab's state dir): a new socketpair whose one end goes over the channel. The
    channel must be a socket whose peer is the zygote ``PID`` (an fd number inherited by
    mistake names something else: ZygoteError)."""
    where = parse_target(target)
    if where[0] == "path":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.connect(where[1])
        except BaseException:
            sock.close()
            raise
        return sock
    _, fd, zpid = where
    try:
        channel = socket.fromfd(fd, socket.AF_UNIX, socket.SOCK_SEQPACKET)
    except OSError as exc:
        raise ZygoteError(f"{ENV}: fd {fd} is not the zygote's channel ({exc.strerror})") from None
    try:
        cred = channel.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        peer = struct.unpack("3i", cred)[0]
        if channel.type != socket.SOCK_SEQPACKET or peer != zpid:
            raise ZygoteError(f"{ENV}: fd {fd} is not the channel of zygote {zpid} (peer pid {peer})")
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            socket.send_fds(channel, [b"c"], [theirs.fileno()])
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        return mine
    finally:
        channel.close()


def socket_path(environ: dict[str, str] | None = None) -> str | None:
    """The zygote the environment names (a socket path or ``fd:N:PID``; None: not configured)."""
    value = (os.environ if environ is None else environ).get(ENV) or ""
    return None if not value or value.lower() in OFF else value
