"""Helpers for the kubelet / kube-proxy netns tests (Kubernetes-side area).

* :class:`NetnsRelay` makes the session etcd (on the machine's loopback) reachable on
  127.0.0.1 inside a test netns: a real TCP relay whose listening socket is created in
  the netns (kernel.netns.entered: setns on the calling thread, and back) and whose upstream connections are made
  from the test process' own netns.
* :class:`KubeletProcess` runs ``python -m testbed.k8s.kubelet`` inside a node netns with
  ``ip netns exec`` (which also gives it a private mount namespace, as a lab node has),
  with temporary CNI config / netns / state dirs, and at teardown removes everything it
  started: the kubelet, every process of its mount namespace (pods), by PID.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from kernel.netns import entered

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def listen_in_netns(netns: str, host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket that lives in the named netns (made there; the thread comes back)."""
    with entered(netns):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(128)
    return s


class NetnsRelay:
    """127.0.0.1:<port> inside ``netns`` relayed to ``upstream`` (host, port) here."""

    def __init__(self, netns: str, upstream: tuple[str, int]):
        self.upstream = upstream
        self.sock = listen_in_netns(netns)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self.closed = False
        self.cut = False  # while True, etcd is unreachable from the node (see set_cut)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_cut(self, cut: bool) -> None:
        """Cut (or restore) the node's path to etcd: open connections are shut and new
        ones closed as soon as they are accepted, so the node sees etcd go away."""
        self.cut = cut
        if cut:
            for s in list(self.conns):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if self.cut:
                client.close()
                continue
            try:
                up = socket.create_connection(self.upstream, timeout=5)
                up.settimeout(None)
            except OSError:
                client.close()
                continue
            self.conns += [client, up]
            for a, b in ((client, up), (up, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.closed = True
        for s in [self.sock, *self.conns]:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def bridge_conflist(name: str, bridge: str, subnet: str, data_dir: str) -> dict:
    """A real two-plugin chain of the reference plugins: bridge + host-local, then portmap."""
    return {
        "cniVersion": "1.0.0", "name": name,
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": data_dir}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def ptp_conflist(name: str, subnet: str, data_dir: str) -> dict:
    """Routed /32-style pod links (like Calico's) from the reference ptp + host-local plugins."""
    return {
        "cniVersion": "1.0.0", "name": name,
        "plugins": [{"type": "ptp", "ipMasq": False,
                     "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": data_dir,
                              "routes": [{"dst": "0.0.0.0/0"}]}}],
    }


def mount_ns_pids(inode: int) -> list[int]:
    """PIDs whose mount namespace has this inode."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.stat(f"/proc/{d}/ns/mnt").st_ino == inode:
                    pids.append(int(d))
            except OSError:
                pass
    return pids


class KubeletProcess:
    """A kubelet inside a node netns, with its own mount namespace and temp dirs.

    Like a lab node, the node's mount namespace is held by a process of its own
    (``ip netns exec <ns> sleep``), so the kubelet can be killed and started again
    (:meth:`restart`) and find the pod netns it bound there.
    """

    def __init__(self, netns: str, node: str, node_ip: str, etcd: str, tmp: str, controllers: bool = False,
                 extra: list[str] | None = None, bin_dirs: str = "/usr/lib/cni"):
        self.netns, self.node, self.tmp = netns, node, tmp
        self.conf_dir = os.path.join(tmp, "net.d")
        self.netns_dir = os.path.join(tmp, "netns")
        self.root_dir = os.path.join(tmp, "kubelet")
        for d in (self.conf_dir, self.netns_dir, self.root_dir):
            os.makedirs(d, exist_ok=True)
        self.log_path = os.path.join(tmp, "kubelet.log")
        self.log = open(self.log_path, "ab")
        self.holder = subprocess.Popen(["ip", "netns", "exec", netns, "sleep", "infinity"],
                                       stdout=subprocess.DEVNULL, stderr=self.log)
        self.mnt_inode = self._mount_inode()
        self.env = dict(os.environ, NODE_NAME=node, ETCD_ENDPOINTS=etcd, PYTHONPATH=REPO)
        self.env.pop("CALICOLAB_LAB", None)
        self.argv = [sys.executable, "-m", "testbed.k8s.kubelet", "--node", node, "--node-ip", node_ip,
                     "--cni-conf-dir", self.conf_dir, "--cni-bin-dir", bin_dirs,
                     "--netns-dir", self.netns_dir, "--root-dir", self.root_dir,
                     *(["--controllers"] if controllers else []), *(extra or [])]
        self.proc = self._start()

    def _start(self) -> subprocess.Popen:
        if self.mnt_inode is None:
            raise AssertionError("the node's mount namespace holder did not start")
        return subprocess.Popen(["nsenter", "-t", str(self.holder.pid), "-n", "-m", "--", *self.argv],
                                stdout=self.log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO)

    def _mount_inode(self) -> int | None:
        root = os.stat("/proc/self/ns/mnt").st_ino
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self.holder.poll() is None:
            try:
                ino = os.stat(f"/proc/{self.holder.pid}/ns/mnt").st_ino
                if ino != root:  # ip netns exec has unshared it and exec'd sleep
                    return ino
            except OSError:
                pass
            time.sleep(0.005)
        return None

    def kill(self) -> None:
        """SIGKILL the kubelet only (its pods keep running), as a crash would."""
        self.proc.kill()
        self.proc.wait()

    def restart(self) -> None:
        """Start the kubelet again in the same node (after :meth:`kill`)."""
        self.proc = self._start()

    def write_conflist(self, conf: dict, filename: str = "10-test.conflist") -> str:
        path = os.path.join(self.conf_dir, filename)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(conf, f)
        os.replace(tmp, path)
        return path

    def in_mount_ns(self, *cmd: str) -> subprocess.CompletedProcess:
        """Run a command in the node's network + mount namespaces (what a node shell sees)."""
        return subprocess.run(["nsenter", "-t", str(self.holder.pid), "-n", "-m", "--", *cmd],
                              capture_output=True, text=True, timeout=10)

    def logs(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-4000:]

    def stop(self) -> None:
        """SIGTERM the kubelet, then SIGKILL everything of the node's mount namespace
        (pods, the holder): all of it was started by this helper."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.mnt_inode:
            for pid in mount_ns_pids(self.mnt_inode):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self.holder.poll() is None:
            self.holder.kill()
        self.holder.wait()
        self.log.close()
