"""The lab's zygote: a fork server that has imported the heavy modules of the lab's Python
processes once, so each kubelet, calico-node, CNI server, kube-proxy, CSI driver, API server...
starts as a fork of it instead of a new interpreter that imports them again.

One per lab (per machine of a lab), started by the supervisor first thing as the recorded
service ``supervisor/zygote`` (down and clean end it by PID). It listens on a unix socket in
the lab's state dir (``<state>/zygote/zygote.sock``, 0600, the supervisor's: no node or pod
sees the state dir) and gives each child a channel of its own (an inherited socket,
``$CALICOLAB_ZYGOTE=fd:N:PID``) over which that child (a kubelet, calico-node) asks for
children in turn. It serves requests of :mod:`kernel.zygote`: for each it forks; the child
enters the caller's mount namespace, for a pod makes its own (unshare, slave
or unchanged propagation, the rbind mounts, as :data:`testbed.k8s.runtime._POD_INIT` does),
enters the network namespace, starts a session, takes the priority and the ``SCHED_BATCH``
policy (:mod:`kernel.schedpolicy`; the zygote itself keeps the default), resets signals, replaces
the environment, takes the stdio fds, closes the zygote's sockets, rewrites its command line
(``/proc/<pid>/cmdline``: what ps, pgrep and the tests see) and returns out of the serve loop
to :func:`main`, which runs the program with :mod:`runpy` as ``python -m``/``python script``
would: ``SystemExit``, exceptions, ``atexit`` and buffered output behave as at a normal
interpreter exit (which a child takes without the interpreter's teardown: :func:`finish`).
Before each fork what the zygote holds is frozen (``gc.freeze``): the children's garbage
collections never walk the preloaded heap they share. The zygote reaps its children (a pidfd each in its selector) and sends each
exit status to the connection that asked for the child.

What it imports (:data:`PRELOAD`) was audited: none of these modules starts a thread or reads
the environment at import, except :mod:`testbed.lab.state` (``CALICOLAB_RUN``, the same value
in every process of a lab); the zygote checks ``threading.active_count() == 1`` before it
serves and before each fork.

Run: ``python -m testbed.lab.zygote --socket PATH`` (the supervisor does).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import os
import selectors
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any

from kernel import autogroup, schedpolicy
from kernel import zygote as proto
from kernel.mount import MS_BIND, MS_REC, MS_SLAVE, mount
from kernel.netns import CLONE_NEWNET, CLONE_NEWNS, setns

#: what the lab's processes import: the standard library's heavy parts, the third-party
#: packages, then the project's program modules (their own imports come with them)
#: in the order they are asked for: the kubelets first (requests are served between two
#: imports, so a kubelet does not wait for calico-node's modules), then the control plane's
#: static pods, then calico-node and the DaemonSets
PRELOAD = (
    "asyncio", "ssl", "json", "http.client", "email.utils", "concurrent.futures", "argparse",
    "ipaddress", "uuid", "secrets", "subprocess", "selectors", "dataclasses", "hashlib", "base64",
    "kernel.preload", "testbed.k8s.kubelet",
    "aiohttp", "aiohttp.web", "yaml", "cryptography.x509", "cryptography.hazmat.primitives.asymmetric.rsa",
    "cryptography.hazmat.primitives.asymmetric.ec", "cryptography.hazmat.primitives.serialization",
    "testbed.apiserver", "testbed.apiserver.server", "testbed.k8s.controllers", "testbed.k8s.scheduler",
    "http.server", "urllib.request", "logging.handlers", "hmac", "pyroute2", "grpc", "kernel.netlink",
    "agent.main", "agent.felix", "agent.startup", "cni.server", "cni.plugin", "testbed.k8s.kubeproxy",
    "agent.csi", "agent.csi.registrar", "agent.typha", "agent.kubecontrollers", "testbed.k8s.dns",
    # what the programs import after their start (sys.modules of each child of a 3-node lab's
    # zygote 3 s after its fork, minus the zygote's): calico-node's Felix, confd, BGP, IPAM...
    "agent.bgp", "agent.bgp.config", "agent.bgp.ctl", "agent.bgp.errors", "agent.bgp.fsm",
    "agent.bgp.kernel", "agent.bgp.messages", "agent.bgp.prefix", "agent.bgp.rib", "agent.bgp.routes",
    "agent.bgp.runner", "agent.bgp.service", "agent.bgp.speaker", "agent.clock", "agent.confd",
    "agent.confd.compute", "agent.confd.watcher", "agent.csi.driver", "agent.csi.node", "agent.envvars",
    "agent.felix.bpfprobe", "agent.felix.bpftunnel", "agent.felix.calc", "agent.felix.convert",
    "agent.felix.daemon", "agent.felix.encap", "agent.felix.ifacemonitor", "agent.felix.ipip_bpf",
    "agent.felix.ipsets", "agent.felix.iptables", "agent.felix.labelindex", "agent.felix.marks",
    "agent.felix.match", "agent.felix.model", "agent.felix.names", "agent.felix.policy",
    "agent.felix.policysync", "agent.felix.render", "agent.felix.routes", "agent.felix.static",
    "agent.felix.sysctl", "agent.felix.tunnel", "agent.felix.vxlan", "agent.felix.vxlanfdb",
    "agent.felix.vxlanroutes", "agent.health", "agent.kubecontrollers.config",
    "agent.kubecontrollers.controller", "agent.kubecontrollers.decisions",
    "agent.kubecontrollers.kubesource", "agent.kubecontrollers.main", "agent.kubecontrollers.objects",
    "agent.kubecontrollers.status", "agent.nodeflags", "agent.typha.config", "agent.typha.server",
    "agent.unimplemented", "cni.dataplane", "cryptography.hazmat.backends",
    "cryptography.hazmat.backends.openssl", "cryptography.hazmat.primitives.kdf",
    "cryptography.hazmat.primitives.kdf.scrypt", "cryptography.hazmat.primitives.serialization.pkcs12",
    "cryptography.hazmat.primitives.serialization.pkcs7", "datastore.base", "datastore.calico_api",
    "datastore.client", "datastore.codec", "datastore.conversion", "datastore.crds",
    "datastore.derived", "datastore.kdd", "datastore.resources", "datastore.rules",
    "datastore.selector", "datastore.typha", "grpc._channel", "grpc._interceptor", "grpc._server",
    "grpc._simple_stubs", "grpc._utilities", "grpc.experimental", "ipam", "ipam.block", "ipam.check",
    "ipam.ipam", "ipam.kddstore", "ipam.store", "kernel.bpf", "kernel.bpfasm", "kernel.tc",
    "stringprep", "testbed.apiserver.bootstrap", "testbed.apiserver.crd", "testbed.apiserver.gc",
    "testbed.apiserver.goregexp", "testbed.apiserver.kubelet", "testbed.apiserver.openapi",
    "testbed.k8s.pluginwatcher", "encodings.idna",
)

CLONE_NEWNS_FLAG = CLONE_NEWNS
PR_SET_NAME = 15
#: the zygote's own argv and environment are padded to this many bytes: a child writes its
#: command line and environment there (what /proc/<pid>/cmdline and environ show: ps, pgrep,
#: kubectl exec's environment); a child whose do not fit is refused (the caller execs it)
CMDLINE_ROOM = 8192
ENV_ROOM = 65536
PAD_FLAG = "--room"
ROOM_ENV = "CALICOLAB_ZYGOTE_ROOM"

_libc = ctypes.CDLL(None, use_errno=True)


def _log(msg: str) -> None:
    sys.stderr.write(f"{time.strftime('%H:%M:%S')} zygote[{os.getpid()}]: {msg}\n")
    sys.stderr.flush()


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def preload(modules: tuple[str, ...] = PRELOAD, between: Any = None) -> tuple[list[str], Any]:
    """Import ``modules``; returns the errors (one line each) of those that failed, and what
    ``between()`` (called after each import) returned when it returned something (then the
    rest is not imported: a forked child's program runs)."""
    errors = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a module that does not import is not preloaded
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
        got = between() if between is not None else None
        if got is not None:
            return errors, got
    return errors, None


# ---------------------------------------------------------------------- the child's side
def _mount_ns(mounts: list[list[str]], propagation: str) -> None:
    """A mount namespace of the process' own with ``mounts`` bound (``mount --rbind``)."""
    _check(_libc.unshare(CLONE_NEWNS_FLAG), "unshare(CLONE_NEWNS)")
    if propagation == "slave":
        mount(None, "/", None, MS_REC | MS_SLAVE, what="making / a slave mount")
    elif propagation != "unchanged":
        raise ValueError(f"mount propagation {propagation!r} (slave or unchanged)")
    for src, dst in mounts:
        if not os.path.exists(dst):
            if os.path.isdir(src):
                os.makedirs(dst, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                open(dst, "a").close()
        mount(src, dst, None, MS_BIND | MS_REC, what=f"mount --rbind {src} {dst}")


def areas() -> tuple[tuple[int, int], tuple[int, int]]:
    """This process' argument and environment areas ((start, end) addresses: what
    ``/proc/<pid>/cmdline`` and ``/proc/<pid>/environ`` show)."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[45]), int(fields[46])), (int(fields[47]), int(fields[48]))


def packed(items: list[str]) -> bytes:
    """NUL-terminated strings, as the kernel lays out argv and the environment."""
    return b"".join(x.encode(errors="surrogateescape") + b"\0" for x in items)


def _write_area(area: tuple[int, int], data: bytes) -> None:
    """Write ``data`` (which fits: checked before the fork) over an area, padded with NULs."""
    start, end = area
    size = end - start
    if size > 0 and len(data) <= size:
        ctypes.memmove(start, data.ljust(size, b"\0"), size)


def _set_name(name: str) -> None:
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(os.path.basename(name).encode()[:15]), 0, 0, 0)


def _hung_up(conn: socket.socket) -> bool:
    """True if the caller of ``conn`` gave up on its request: it closed the connection (end of
    stream waiting to be read) or sent something after it (its only other message is
    ``{"abandon": true}``); never waits (a socket with a timeout would first wait for data:
    non-blocking for the peek)."""
    timeout = conn.gettimeout()
    conn.setblocking(False)
    try:
        conn.recv(1, socket.MSG_PEEK)
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        conn.settimeout(timeout)


def enter(req: dict[str, Any], fds: dict[str, int]) -> None:
    """In the forked child: take the request's namespaces, mounts, session, priority (and the
    batch policy), signals, environment, working directory and stdio (any failure ends the
    child with 127, as the pod's init did)."""
    if "mnt" in fds:
        setns(fds["mnt"], CLONE_NEWNS)
        os.close(fds.pop("mnt"))
    if req.get("mounts"):
        _mount_ns(req["mounts"], req.get("propagation") or "slave")
    if "net" in fds:
        setns(fds["net"], CLONE_NEWNET)
        os.close(fds.pop("net"))
    os.setsid()
    if req.get("priority") is not None:
        prio = max(-20, min(19, int(req["priority"])))
        os.setpriority(os.PRIO_PROCESS, 0, prio)
        if prio:  # a session of its own: its nice weighs against the others' only as the session's
            autogroup.set_nice(prio)
    schedpolicy.set_batch()  # the lab's processes, and what they exec, as batch work (the module says why)
    os.chdir(req.get("cwd") or "/")
    null = os.open(os.devnull, os.O_RDWR)
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.dup2(fds.get(name, null), i)
    for fd in {null, *fds.values()}:
        if fd > 2:
            os.close(fd)
    # a fresh interpreter's signal state: SIGINT raises KeyboardInterrupt, SIGPIPE and SIGXFSZ
    # ignored, everything else default, nothing blocked
    signal.set_wakeup_fd(-1)
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        want: Any = signal.SIG_DFL
        if sig == signal.SIGINT:
            want = signal.default_int_handler
        elif sig in (signal.SIGPIPE, signal.SIGXFSZ):
            want = signal.SIG_IGN
        try:
            signal.signal(sig, want)
        except (OSError, ValueError):
            pass
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    env = {str(k): str(v) for k, v in (req.get("env") or {}).items()}
    old_pp = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ.clear()
    os.environ.update(env)
    new_pp = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    rest = [p for p in sys.path[1:] if p not in old_pp]
    sys.path[:] = [sys.path[0], *new_pp, *rest]
    sys.pycache_prefix = env.get("PYTHONPYCACHEPREFIX") or None
    sys.dont_write_bytecode = bool(env.get("PYTHONDONTWRITEBYTECODE"))
    import logging

    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(logging.WARNING)
    args, envs = areas()
    _write_area(args, packed(req["argv"]))
    _write_area(envs, packed([f"{k}={v}" for k, v in env.items()]))


def run(spec: proto.RunSpec, argv: list[str]) -> None:
    """Run the program as ``python -m``/``python script`` would (in the child, at top level),
    then end the process as the interpreter would (:func:`finish`)."""
    try:
        _run(spec, argv)
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:  # what the interpreter does with sys.exit("message")
            print(exc.code, file=sys.stderr)
            code = 1
    # any other exception propagates: the interpreter prints it and exits 1 (or by SIGINT)
    finish(code)


def finish(code: int) -> None:
    """End a forked child as a normal interpreter exit would, observably (non-daemon threads
    joined, ``atexit`` handlers run, buffered output flushed; exit ``code``), without the
    interpreter's teardown: that tears down the zygote's ~800 preloaded modules, touching
    every object of the inherited heap (copy-on-write faults over all of it): ~0.3 s of CPU
    per exiting child on an idle machine (an init container, a kubectl exec), 4 ms this way."""
    import atexit

    try:
        threading._shutdown()  # type: ignore[attr-defined]  # the interpreter's first exit step
    except Exception:  # noqa: BLE001 - as the interpreter, go on exiting
        traceback.print_exc()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # noqa: BLE001 - the interpreter's exit code for a failed flush
            code = code or 120
    os._exit(code)


def _run(spec: proto.RunSpec, argv: list[str]) -> None:
    import runpy

    sys.orig_argv = list(argv)
    if spec.kind == "module":
        sys.path[0] = os.getcwd()
        sys.argv = ["-m", *spec.argv[1:]]
        sys.modules.pop(spec.target, None)  # preloaded: run_module would warn and run it anyway
        sys.modules.pop(spec.target + ".__main__", None)
        runpy.run_module(spec.target, run_name="__main__", alter_sys=True)
    else:
        path = spec.target
        sys.path[0] = os.path.dirname(os.path.abspath(path))
        sys.argv = list(spec.argv)
        _set_name(path)
        runpy.run_path(path, run_name="__main__")


# ---------------------------------------------------------------------- the server
#: nice steps the zygote serves above the lab's priority. Every process of a lab starts as its
#: fork, one request at a time, and a request costs it ~3 ms of CPU; among a 50-node lab's ~150
#: busy processes on 2 cores it waited on the run queue ~7x as long as it ran
#: (/proc/PID/schedstat during an operator install), so a fork took ~0.4 s, callers timed out
#: after 10 s and exec'd instead (docs/performance.md). The boost is its session's
#: (:func:`kernel.autogroup.set_nice`) as well as its own. Its children take the caller's priority,
#: or the lab's (:attr:`Server.base_priority`), never this one.
SERVE_BOOST = 20


def serve_priority(base: int) -> int:
    """The zygote's nice value while it serves, for a lab at nice ``base``."""
    return max(-20, base - SERVE_BOOST)


class Server:
    """The selector loop: accept requests, fork, reap, report exits."""

    def __init__(self, path: str):
        self.path = path
        #: the lab's priority (the supervisor's): a child whose request names none takes it
        self.base_priority = os.getpriority(os.PRIO_PROCESS, 0)
        self.sel = selectors.DefaultSelector()
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        # the path appears only once the socket listens (bound under a temporary name, then
        # renamed): whoever waits for the file to exist can connect at once
        tmp = os.path.join(os.path.dirname(path), f".zygote-{os.getpid()}")
        try:
            os.unlink(tmp)  # left by a zygote of the same PID that died before its rename
        except FileNotFoundError:
            pass
        old = os.umask(0o177)
        try:
            self.listener.bind(tmp)
        finally:
            os.umask(old)
        self.listener.listen(256)
        os.rename(tmp, path)
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        #: the signal wake-up pair (:meth:`wake_on_signals`): read end, write end
        self.wake: tuple[socket.socket, socket.socket] | None = None
        #: pidfd -> (pid, the request's connection)
        self.children: dict[int, tuple[int, socket.socket]] = {}
        #: a started child's caller connection (fd) -> (connection, child's pidfd, pid): watched
        #: for an abandoned request until the first thing it says (or its hang-up)
        self.callers: dict[int, tuple[socket.socket, int, int]] = {}
        #: fd -> the zygote's end of a child's channel (requests from the child come on it)
        self.channels: dict[int, socket.socket] = {}

    def wake_on_signals(self) -> None:
        """Make a signal wake :meth:`step` from its ``select()`` (main thread only): the
        interpreter writes a byte to a socket the selector watches (``signal.set_wakeup_fd``)
        when a signal comes. Without it a SIGTERM that lands between the interpreter's last
        look at pending signals and the ``epoll_wait()`` that follows ran its handler only
        at the next request: the zygote of a CI run, idle, outlived its SIGTERM."""
        r, w = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        r.setblocking(False)
        w.setblocking(False)
        signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)
        self.wake = (r, w)
        self.sel.register(r, selectors.EVENT_READ, "wakeup")

    def serve(self) -> tuple[proto.RunSpec, list[str]]:
        """Serve until SIGTERM; in a forked child, return what it runs."""
        while True:
            child = self.step(None)
            if child is not None:
                return child

    def step(self, timeout: float | None) -> tuple[proto.RunSpec, list[str]] | None:
        """Serve what is ready (waiting up to ``timeout``); in a forked child, what it runs."""
        for key, _ in self.sel.select(timeout):
            if self.sel.get_map().get(key.fd) is not key:
                continue  # stale: an earlier event of this batch closed it (its fd may be reused)
            child = None
            if key.fileobj is self.listener:
                try:
                    conn, _ = self.listener.accept()
                except OSError:
                    continue
                child = self._handle(conn)
            elif key.data == "wakeup":  # a signal came: its handler runs as this returns
                try:
                    while key.fileobj.recv(4096):  # type: ignore[union-attr]
                        pass
                except OSError:  # BlockingIOError: drained
                    pass
            elif key.data == "caller":
                self._caller(key.fd)
            elif key.data == "channel":
                for conn in self._channel(key.fd):
                    child = self._handle(conn)
                    if child is not None:
                        break
            else:
                self._reap(key.fd)
            if child is not None:
                return child
        return None

    def _channel(self, fd: int) -> list[socket.socket]:
        """The connections a child sent over its channel (none at its end: closed)."""
        ch = self.channels[fd]
        try:
            data, fds, _flags, _addr = socket.recv_fds(ch, 16, 8)
        except OSError:
            data, fds = b"", []
        if not data:
            for x in fds:
                os.close(x)
            self.sel.unregister(fd)
            del self.channels[fd]
            ch.close()
            return []
        return [socket.socket(fileno=x) for x in fds]

    def _handle(self, conn: socket.socket) -> tuple[proto.RunSpec, list[str]] | None:
        """Serve one request; in the forked child, return what it runs."""
        conn.settimeout(5.0)
        reader = proto.FrameReader(conn)
        try:
            req = reader.read()
            fds = reader.fds
            names = list(req.get("fds") or [])
            if len(names) != len(fds) or any(n not in proto.FD_NAMES for n in names):
                raise ValueError(f"fds {names} named, {len(fds)} sent")
            argv = [str(a) for a in req.get("argv") or []]
            spec = proto.run_spec(argv, sys.executable, req.get("cwd"))
            if spec is None:
                raise ValueError(f"not a program of this interpreter ({sys.executable}): {argv[:3]}")
            env_size = len(packed([f"{k}={v}" for k, v in (req.get("env") or {}).items()])) + 40
            room = [end - start for start, end in areas()]
            if len(packed(argv)) > room[0] or env_size > room[1]:
                raise ValueError(f"command line ({len(packed(argv))} bytes) or environment ({env_size} bytes) "
                                 f"larger than the zygote's room for them ({room[0]}, {room[1]})")
            if threading.active_count() != 1:
                raise RuntimeError(f"the zygote has {threading.active_count()} threads: it does not fork")
        except (OSError, ValueError, RuntimeError) as exc:
            for fd in reader.fds:
                os.close(fd)
            _log(f"refused a request: {exc}")
            try:
                conn.sendall(proto.encode({"error": str(exc)}))
            except OSError:
                pass
            conn.close()
            return None
        byname = dict(zip(names, fds, strict=True))
        if req.get("priority") is None:
            req["priority"] = self.base_priority
        if reader.buf or _hung_up(conn):  # the caller gave up waiting (and execs it): no second copy
            for fd in fds:
                os.close(fd)
            conn.close()
            _log(f"dropped a request whose caller went away: {' '.join(argv[:4])}")
            return None
        sys.stdout.flush()
        sys.stderr.flush()
        # what exists now (the preloaded modules) goes to the permanent generation: the child's
        # collections never walk it, so they neither spend CPU on it nor write its pages
        # (copy-on-write: each of the lab's ~300 children would copy the heap it shares)
        gc.freeze()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        zpid = os.getpid()
        pid = os.fork()
        if pid == 0:
            try:
                self._close_all()
                conn.close()
                mine.close()
                # the child's channel: it (a kubelet, calico-node) asks for children through it
                req["env"] = {**(req.get("env") or {}), proto.ENV: f"fd:{theirs.detach()}:{zpid}"}
                enter(req, byname)
            except BaseException:  # noqa: BLE001 - the child never returns into the server
                try:
                    os.write(2, f"zygote: starting {' '.join(argv)} failed:\n{traceback.format_exc()}".encode())
                finally:
                    os._exit(127)
            return spec, argv
        for fd in fds:
            os.close(fd)
        theirs.close()
        self.channels[mine.fileno()] = mine
        self.sel.register(mine, selectors.EVENT_READ, "channel")
        pidfd = os.pidfd_open(pid)
        told = True
        try:
            socket.send_fds(conn, [proto.encode({"pid": pid})], [pidfd])
        except OSError as exc:
            told = False
            # the caller does not know this child and may have started the program by exec:
            # end it (ours, by its pidfd) rather than leave a second copy running
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _log(f"pid {pid}: the caller went away before its reply ({exc}): killed it")
        conn.settimeout(None)
        self.children[pidfd] = (pid, conn)
        self.sel.register(pidfd, selectors.EVENT_READ, None)
        if told:  # a caller that timed out just as the pid went out abandons the request now: watched
            self.callers[conn.fileno()] = (conn, pidfd, pid)
            self.sel.register(conn, selectors.EVENT_READ, "caller")
        return None

    def _caller(self, fd: int) -> None:
        """The caller of a started child wrote (``{"abandon": true}``: it timed out waiting for
        the pid and starts the program by exec: the child is ended) or hung up (a kubelet that
        restarted: the child stays, it is adopted by PID). Either way it is not watched again."""
        conn, pidfd, pid = self.callers.pop(fd)
        self.sel.unregister(conn)
        try:
            data = conn.recv(4096)
        except OSError:
            data = b""
        if data and pidfd in self.children:
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _log(f"pid {pid}: its caller abandoned the request (timed out, started it by exec): killed it")

    def _reap(self, pidfd: int) -> None:
        pid, conn = self.children[pidfd]
        try:
            wpid, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # reaped already (cannot happen: only this loop reaps)
            wpid, status = pid, None
        if wpid == 0:
            return  # not ended yet: keep watching
        self.sel.unregister(pidfd)
        os.close(pidfd)
        del self.children[pidfd]
        if self.callers.pop(conn.fileno(), None) is not None:
            self.sel.unregister(conn)
        code = os.waitstatus_to_exitcode(status) if status is not None else proto.UNKNOWN_EXIT
        try:
            conn.sendall(proto.encode({"exit": code}))
        except OSError:
            pass  # the caller went away (e.g. a kubelet restarted): it adopts by PID
        conn.close()

    def _close_all(self) -> None:
        """In the child: close every fd of the zygote (listener, selector, pidfds, others'
        connections and channels)."""
        if self.wake is not None:
            signal.set_wakeup_fd(-1)
            for sock in self.wake:
                sock.close()
            self.wake = None
        self.sel.close()
        self.listener.close()
        for pidfd, (_pid, conn) in self.children.items():
            os.close(pidfd)
            conn.close()
        self.children.clear()
        self.callers.clear()
        for ch in self.channels.values():
            ch.close()
        self.channels.clear()


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m testbed.lab.zygote``: preload, serve; in a child, run the
    requested program and let the interpreter exit as that program's would."""
    ap = argparse.ArgumentParser(prog="testbed.lab.zygote", description=__doc__.splitlines()[0])
    ap.add_argument("--socket", required=True)
    ap.add_argument(PAD_FLAG, default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    server = Server(args.socket)  # bound first: requests queue while the modules import
    try:
        prio = serve_priority(server.base_priority)
        os.setpriority(os.PRIO_PROCESS, 0, prio)
        autogroup.set_nice(prio)
    except PermissionError as exc:  # not root (no CAP_SYS_NICE): serves at the lab's priority
        _log(f"serving at the lab's priority {server.base_priority}: {exc}")
    # its requests' waits on the run queue: a woken normal task waits for the running one's slice
    # (~3.6 ms a wake-up in a 100-node start: 12 s in all against 5 s of work, so bursts of
    # requests queued past the callers' patience); as a real-time task it runs at once. Its
    # children start as SCHED_OTHER at nice 0 (reset on fork), then take their own priority and
    # policy (enter). From the start: requests are served between the preload's imports too
    rt = schedpolicy.set_fifo_reset_on_fork()
    me = os.getpid()
    # SIGTERM ends the zygote (its socket removed); its children live on (each its own session)
    server.wake_on_signals()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    t0 = time.monotonic()
    os.environ.pop(ROOM_ENV, None)
    mine_args, mine_env = areas()
    _write_area(mine_args, packed([sys.executable, "-m", "testbed.lab.zygote", "--socket", args.socket]))
    _write_area(mine_env, packed([f"{k}={v}" for k, v in os.environ.items()]))
    try:
        # requests arriving meanwhile are served between two imports (a child imports the rest
        # it needs itself)
        errors, child = preload(between=lambda: server.step(0))
        if child is None:
            for e in errors:
                _log(f"not preloaded: {e}")
            if threading.active_count() != 1:
                _log(f"threads after the imports: {[t.name for t in threading.enumerate()]}: not serving")
                sys.exit(1)
            _log(f"serving {args.socket}: {len(sys.modules)} modules imported in {time.monotonic() - t0:.2f}s"
                 f"{' (SCHED_FIFO)' if rt else ' (the kernel refused SCHED_FIFO: at its nice value)'}")
            child = server.serve()
    finally:
        if os.getpid() == me:
            try:
                os.unlink(args.socket)
            except FileNotFoundError:
                pass
    spec, child_argv = child
    run(spec, child_argv)


def argv(python: str, path: str) -> list[str]:
    """The zygote's command line (padded: its children write theirs over it)."""
    return [python, "-m", "testbed.lab.zygote", "--socket", path, f"{PAD_FLAG}={'-' * CMDLINE_ROOM}"]


def environ(env: dict[str, str]) -> dict[str, str]:
    """The zygote's environment: ``env`` padded (its children write theirs over it)."""
    return {**env, ROOM_ENV: "-" * ENV_ROOM}


if __name__ == "__main__":
    main()
