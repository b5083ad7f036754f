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
    """127.0.0.1:<port> inside ``netns`` relayed to ``upstream`` (host, port) here (or in
    ``upstream_netns``)."""

    def __init__(self, netns: str, upstream: tuple[str, int], upstream_netns: str | None = None):
        self.upstream = upstream
        self.upstream_netns = upstream_netns
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
                up = connect_from(self.upstream_netns, self.upstream)
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


def connect_from(netns: str | None, addr: tuple[str, int], timeout: float = 5.0) -> socket.socket:
    """A TCP connection to ``addr`` made from inside ``netns`` (None: from here)."""
    from kernel.netns import entered

    with entered(f"/run/netns/{netns}" if netns else None):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(addr)
        s.settimeout(None)
    except OSError:
        s.close()
        raise
    return s


class OutwardRelay(NetnsRelay):
    """127.0.0.1:<port> on the machine relayed to ``target`` inside ``netns``."""

    def __init__(self, netns: str, target: tuple[str, int]):
        self.upstream = target
        self.upstream_netns = netns
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.closed = False
        self.cut = False
        threading.Thread(target=self._accept, daemon=True).start()


_PKI: dict[str, object] = {}


def session_pki(base: str):  # noqa: ANN201 - testbed.apiserver.pki.Pki
    """One PKI for the test session (RSA keys take a second to make)."""
    from testbed.apiserver import pki

    if "pki" not in _PKI:
        d = os.path.join(base, "calicolab-netns-pki")
        _PKI["pki"] = pki.write_pki(d, "control-plane", ["127.0.0.1"])
    return _PKI["pki"]


class NodeCluster:
    """A control plane inside node netns ``netns`` (see the module docstring).

    ``node_ip`` is put on the netns' loopback: the kubelet registers it as its InternalIP
    and serves its API there (:10250), where the API server reaches it for logs, exec and
    port-forward. ``controllers``: also run kube-controller-manager and the scheduler;
    ``proxy``: also kube-proxy (in the node netns, like a kube-proxy pod)."""

    def __init__(self, netns: str, node_ip: str, etcd: str, tmp: str, pki_base: str,
                 controllers: bool = False, proxy: bool = False, cluster_cidr: str = "10.244.0.0/16"):
        self.netns, self.node_ip, self.tmp = netns, node_ip, tmp
        subprocess.run(["ip", "-n", netns, "addr", "add", f"{node_ip}/32", "dev", "lo"], check=True)
        host, port = etcd.removeprefix("http://").split(":")
        self.etcd_relay = NetnsRelay(netns, (host, int(port)))
        self.pki = session_pki(pki_base)
        self.procs: list[subprocess.Popen] = []
        self.logs: dict[str, str] = {}
        self._start("apiserver", [sys.executable, "-m", "testbed.apiserver", "--etcd-servers",
                                  self.etcd_relay.endpoint, "--bind-address", "0.0.0.0", "--secure-port", "6443",
                                  "--cert-dir", self.pki.dir, "--advertise-address", node_ip])
        self.outward = OutwardRelay(netns, ("127.0.0.1", 6443))
        self.kubelet_relay = NetnsRelay(netns, ("127.0.0.1", 6443), upstream_netns=netns)
        self.admin_conf = os.path.join(tmp, "admin.conf")
        self._write_conf(self.admin_conf, f"https://127.0.0.1:{self.outward.port}", None)
        self.inside_conf = os.path.join(tmp, "inside.conf")
        self._write_conf(self.inside_conf, "https://127.0.0.1:6443", None)
        self.home = os.path.join(tmp, "home")
        os.makedirs(self.home, exist_ok=True)
        self.wait_ready()
        if controllers:
            self._start("controller-manager", [sys.executable, "-m", "testbed.k8s.controllers", "--kubeconfig",
                                               self.inside_conf, "--cluster-cidr", cluster_cidr,
                                               "--allocate-node-cidrs", "true"])
            self._start("scheduler", [sys.executable, "-m", "testbed.k8s.scheduler", "--kubeconfig",
                                      self.inside_conf])
        if proxy:
            self._start("kube-proxy", [sys.executable, "-m", "testbed.k8s.kubeproxy", "--kubeconfig",
                                       self.inside_conf, "--cluster-cidr", cluster_cidr])

    def _start(self, name: str, argv: list[str]) -> None:
        log = os.path.join(self.tmp, f"{name}.log")
        self.logs[name] = log
        env = dict(os.environ, PYTHONPATH=REPO)
        env.pop("KUBECONFIG", None)
        self.procs.append(subprocess.Popen(["ip", "netns", "exec", self.netns, *argv], stdout=subprocess.DEVNULL,
                                           stderr=open(log, "ab"), env=env, cwd=REPO))

    def _write_conf(self, path: str, server: str, user: tuple[str, tuple[str, ...]] | None) -> None:
        from testbed.apiserver import pki

        with open(self.pki.ca_crt, "rb") as f:
            ca = f.read()
        if user is None:
            with open(self.pki.admin_crt, "rb") as f:
                crt = f.read()
            with open(self.pki.admin_key, "rb") as f:
                key = f.read()
        else:
            crt, key = pki.issue_client(self.pki, user[0], user[1], ecdsa=True)
        with open(path, "w") as f:
            json.dump(pki.kubeconfig(server, ca, crt, key), f)

    def kubelet_conf(self, node: str) -> str:
        """A kubeconfig for ``node``'s kubelet (its own cert), through the cuttable relay."""
        path = os.path.join(self.tmp, f"kubelet-{node}.conf")
        self._write_conf(path, f"https://127.0.0.1:{self.kubelet_relay.port}",
                         (f"system:node:{node}", ("system:nodes",)))
        return path

    def client(self):  # noqa: ANN201
        """A kubeclient Client with the admin credentials (from the machine)."""
        from kubeclient import Client, from_kubeconfig

        return Client(from_kubeconfig(self.admin_conf))

    def wait_ready(self, timeout: float = 20.0) -> None:
        c = self.client()
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.procs[0].poll() is not None:
                raise AssertionError(f"apiserver exited: {self.log_tail('apiserver')}")
            try:
                if c.request("GET", "/readyz", raw=True) == b"ok":
                    return
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = exc
            time.sleep(0.05)
        raise AssertionError(f"apiserver not ready: {last}; {self.log_tail('apiserver')}")

    def log_tail(self, name: str, n: int = 3000) -> str:
        try:
            with open(self.logs[name], errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
        """The real kubectl against this node's API server (from the machine)."""
        from tests.apiserver_support import real_kubectl

        env = dict(os.environ, KUBECONFIG=self.admin_conf, HOME=self.home)
        return subprocess.run([real_kubectl(), *args], input=input, capture_output=True, text=True,
                              timeout=timeout, env=env)

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for r in (self.outward, self.kubelet_relay, self.etcd_relay):
            r.close()


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


def env_pids(key: str, value: str) -> list[int]:
    """PIDs whose environment has ``key=value`` (a pod inherits its kubelet's environment:
    NODE_NAME names the test's unique node, wherever the pod's namespaces are)."""
    want = f"{key}={value}".encode()
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                with open(f"/proc/{d}/environ", "rb") as f:
                    if want in f.read().split(b"\0"):
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

    def __init__(self, netns: str, node: str, node_ip: str, kubeconfig: str, tmp: str, control_plane: bool = False,
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
        self.env = dict(os.environ, NODE_NAME=node, PYTHONPATH=REPO)
        self.env.pop("CALICOLAB_LAB", None)
        self.env.pop("KUBECONFIG", None)
        self.argv = [sys.executable, "-m", "testbed.k8s.kubelet", "--node", node, "--node-ip", node_ip,
                     "--kubeconfig", kubeconfig, "--cni-conf-dir", self.conf_dir, "--cni-bin-dir", bin_dirs,
                     "--netns-dir", self.netns_dir, "--root-dir", self.root_dir,
                     *(["--control-plane"] if control_plane else []), *(extra or [])]
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
        victims = set(env_pids("NODE_NAME", self.node))  # the pods (each in a mount namespace of its own)
        if self.mnt_inode:
            victims |= set(mount_ns_pids(self.mnt_inode))
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.holder.poll() is None:
            self.holder.kill()
        self.holder.wait()
        self.log.close()
