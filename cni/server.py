"""The warm CNI server that calico-node runs (Cilium/Multus "thick plugin" style).

The thin ``calico``/``calico-ipam`` executables forward each invocation here over
a unix socket; the server runs :func:`cni.plugin.run` in a thread of the agent
process, which already has the modules imported and a connection to etcd.

A request is refused (and the client falls back to in-process execution) when the
caller is in another network namespace than the server, because the host side of the
veth must be made where the runtime called the plugin. A caller in another *mount*
namespace (the kubelet, when calico-node runs as a pod with mounts of its own) is
served by a worker that joins the caller's mount namespace for that request
(``setns(2)`` on the worker thread alone, after ``unshare(CLONE_FS)``), so paths like
CNI_NETNS, /var/lib/calico and the kubeconfig resolve exactly as the caller sees them.

calico-node runs it as its own child process (``python -m cni.server``), as runit runs
confd and BIRD beside Felix in Calico's calico-node: the agent does not import the
CNI plugin's code (docs/CONVENTIONS.md layers).

Protocol (:mod:`cni.wire`): the client writes one request (plugin, its network and
mount namespace inodes, stdin, environment) and shuts down its write side; the server
answers ``ok`` with exit code, stdout and stderr, or ``refused`` with a reason, and closes.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import select
import signal
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from cni import wire
from kernel import netns as _netns

MAX_REQUEST = 4 << 20
WORKERS = 8  # long-lived workers keep their (thread-local) etcd connections warm
#: seconds an ADD or DEL that comes while calico-node is still starting (no nodename file yet:
#: its conflist is written first, as Calico's install-cni init container does) is held for the
#: start-up to finish, instead of failing at once and waiting for the runtime's retry (the
#: testbed kubelet's come 1, 2, 4, 8, 10 s apart: a start-up longer than the wait, as in a big
#: lab on a loaded machine, would cost up to that much after it ended); after that it fails with
#: Calico's error. Well under the kubelet's 60 s CNI timeout
STARTUP_WAIT = 30.0


_CLONE_FS = 0x00000200
_thread_fs = threading.local()


def _own_ns() -> tuple[int, int]:
    return os.stat("/proc/self/ns/net").st_ino, os.stat("/proc/self/ns/mnt").st_ino


def _private_fs() -> None:
    """Give the calling thread filesystem attributes of its own (``unshare(CLONE_FS)``, once
    per thread): ``setns(2)`` into a mount namespace refuses a thread that shares them."""
    if getattr(_thread_fs, "private", False):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_FS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_FS): {os.strerror(err)}")
    _thread_fs.private = True


def _caller_mounts(pid: int, mnt: bytes) -> int:
    """An fd of the mount namespace of the connected caller ``pid`` (SO_PEERCRED), checked
    against the inode the caller reported; OSError if it cannot be opened or differs."""
    fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    if b"%d" % os.fstat(fd).st_ino != mnt:
        os.close(fd)
        raise OSError(f"process {pid}'s mount namespace is not the one it reported")
    return fd


class CNIServer:
    """Serve CNI requests on ``sock_path`` from a background thread.

    ``CNIServer(sock_path="/var/run/calico/cni.sock").start()`` in calico-node;
    ``.stop()`` at shutdown removes the socket.
    """

    def __init__(self, sock_path: str = "/var/run/calico/cni.sock") -> None:
        self.sock_path = sock_path
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="cni-request")
        self._ns = _own_ns()
        self.served = 0
        self.refused = 0

    def start(self, on_listening: Callable[[], None] | None = None) -> CNIServer:
        """Bind the socket (replacing a stale one), import the plugin's modules, serve in a
        daemon thread. The socket listens before the imports (~0.3 s, more under a lab's
        start-up load): a request that comes meanwhile waits in the backlog and is served
        then, instead of finding no server and paying the same imports in-process.
        ``on_listening`` is called once the socket listens (before the imports)."""
        os.makedirs(os.path.dirname(self.sock_path) or ".", exist_ok=True)
        try:
            st = os.lstat(self.sock_path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise RuntimeError(f"{self.sock_path} exists and is not a socket; refusing to replace it")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(self.sock_path)
                raise RuntimeError(f"another CNI server is already listening on {self.sock_path}")
            except OSError:
                os.unlink(self.sock_path)  # stale socket of a dead server
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old_umask = os.umask(0o077)
        try:
            sock.bind(self.sock_path)
        finally:
            os.umask(old_umask)
        sock.listen(128)
        self._sock = sock
        if on_listening is not None:
            on_listening()
        # the plugin and the datastore/IPAM/netlink modules its first request would import
        import datastore.client  # noqa: F401
        import ipam.ipam  # noqa: F401
        from cni import dataplane, plugin  # noqa: F401
        from ipam import kddstore

        # IPAM's reader threads, started here: started by a worker, they would share its
        # filesystem attributes, and the worker could not leave a caller's mount namespace again
        kddstore.readers()
        self._thread = threading.Thread(target=self._serve, name="cni-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting and remove the socket."""
        self._stopping.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=False)
        try:
            os.unlink(self.sock_path)
        except FileNotFoundError:
            pass

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                if self._stopping.is_set():
                    return
                continue
            self._pool.submit(self._handle, conn, time.monotonic())

    def _handle(self, conn: socket.socket, accepted: float) -> None:
        with conn:
            try:
                reply = self._process(conn, (time.monotonic() - accepted) * 1000)
            except Exception as exc:  # never let one bad request kill the server
                reply = [b"refused", f"bad request: {exc}".encode()]
            if reply[0] == b"refused":  # the caller then does the work in-process, slower: say why
                print(f"refused a request: {reply[1].decode('utf-8', 'replace')}", flush=True)
            try:
                conn.sendall(wire.encode(reply))
            except OSError:
                pass

    def _process(self, conn: socket.socket, queued_ms: float = 0.0) -> list[bytes]:
        """Read one request, check the caller, run the plugin; the reply's fields. ``queued_ms``:
        how long the connection waited for this worker (the CNI log says it)."""
        pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        if uid != os.geteuid():
            self.refused += 1
            return [b"refused", f"caller uid {uid} is not the server's uid".encode()]
        chunks, size = [], 0
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_REQUEST:
                self.refused += 1
                return [b"refused", b"request too large"]
            chunks.append(chunk)
        fields = wire.decode(b"".join(chunks))
        if len(fields) < 4:
            raise ValueError(f"{len(fields)} fields, at least 4 expected")
        plugin, net, mnt, stdin = fields[0].decode("utf-8", "replace"), fields[1], fields[2], fields[3]
        if (os.stat("/proc/thread-self/ns/net").st_ino, os.stat("/proc/thread-self/ns/mnt").st_ino) != self._ns:
            # defensive: a worker that could not leave a pod netns (or a caller's mount
            # namespace) must never serve again
            self.refused += 1
            return [b"refused", b"server worker is not in the node's network or the server's mount namespace"]
        if net != b"%d" % self._ns[0]:
            self.refused += 1
            return [b"refused", b"caller is in another network namespace than the CNI server"]
        if plugin not in ("calico", "calico-ipam"):
            self.refused += 1
            return [b"refused", f"unknown plugin {plugin!r}".encode()]
        env = {}
        for item in fields[4:]:
            key, sep, value = item.partition(b"=")
            if sep:
                env[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        from cni import plugin as _plugin  # imported by start()

        if mnt == b"%d" % self._ns[1]:
            code, out, err = _plugin.run(plugin, env, stdin, startup_wait=STARTUP_WAIT, queued_ms=queued_ms)
        else:  # paths resolve in the caller's mount namespace, as for a plugin it executed
            try:
                _private_fs()
                fd = _caller_mounts(pid, mnt)
            except OSError as exc:
                self.refused += 1
                return [b"refused", f"cannot join the caller's mount namespace: {exc}".encode()]
            try:
                with _netns.entered(fd, _netns.CLONE_NEWNS):
                    code, out, err = _plugin.run(plugin, env, stdin, startup_wait=STARTUP_WAIT, queued_ms=queued_ms)
            finally:
                os.close(fd)
        self.served += 1
        return [b"ok", b"%d" % code, out.encode("utf-8", "surrogateescape"), err.encode("utf-8", "surrogateescape")]


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int | None) -> None:
    """SIGTERM this process when the process that started it (``parent``) ends: the parent
    death signal when ``parent`` is our parent process, else (the lab's zygote forked us for
    it: kernel.zygote) a thread watching its pidfd."""
    if parent is None:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() == parent:
        return
    libc.prctl(_PR_SET_PDEATHSIG, 0, 0, 0, 0)
    try:
        fd = os.pidfd_open(parent)
    except ProcessLookupError:  # it ended already
        os.kill(os.getpid(), signal.SIGTERM)
        return

    def watch() -> None:
        select.select([fd], [], [])
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    """``python -m cni.server [--socket PATH] [--parent PID]``: serve until SIGTERM or SIGINT.

    Prints ``listening`` once the socket listens (calico-node waits for it before it writes
    the CNI config), ``ready`` once the plugin's modules are imported and ``served=N refused=M``
    when it stops. With ``--parent`` (calico-node passes its PID) it also stops when that
    process ends.
    """
    from kernel.preload import before_threads

    before_threads()  # before any thread imports lazily (kernel.preload)
    ap = argparse.ArgumentParser(prog="python -m cni.server", description=__doc__.split("\n\n")[0])
    ap.add_argument("--socket", default="/var/run/calico/cni.sock", help="unix socket to serve on")
    ap.add_argument("--parent", type=int, default=None, help="stop when this PID ends")
    args = ap.parse_args(argv)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGINT])
    _die_with_parent(args.parent)
    srv = CNIServer(args.socket).start(on_listening=lambda: print("listening", flush=True))
    print("ready", flush=True)
    signal.sigwait([signal.SIGTERM, signal.SIGINT])
    srv.stop()
    print(f"served={srv.served} refused={srv.refused}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
