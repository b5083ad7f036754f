"""Namespace topologies for Felix's tests and benchmarks (test scaffolding, not product).

Two "nodes" (netns) joined by a veth pair named eth0 on both ends, and "pods"
(netns) wired to a node the way the CNI plugin does it: a veth whose host end
is ``cali<hex>``, the pod address as /32, ``169.254.1.1 dev eth0 scope link``
and ``default via 169.254.1.1``; proxy ARP on the host end.
Everything is made in namespaces created here and removed by :meth:`Topo.close`.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kernel import netns
from testbed.poll import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY = os.path.join(REPO, ".venv", "bin", "python")


def run(*args: str, netns: str | None = None, check: bool = True, input: str | None = None) -> str:
    """Run a command (in ``netns`` if given); stdout, or AssertionError with stderr."""
    cmd = (["ip", "netns", "exec", netns] if netns else []) + list(args)
    res = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=60)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {res.returncode}: {res.stderr.strip()}")
    return res.stdout


def sysctl(netns: str, key: str, value: str) -> None:
    """Write one sysctl inside ``netns``."""
    run("sh", "-c", f"echo {value} > /proc/sys/{key.replace('.', '/')}", netns=netns)


@dataclass
class Topo:
    """Namespaces, processes and links made for one test; :meth:`close` removes them all."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)
    cleanup_dirs: list[str] = field(default_factory=list)
    bpffs: str | None = None  # a bpf filesystem of this topology's own (tc-BPF tunnels), unmounted at close

    def netns(self, role: str) -> str:
        """Create netns ``f<role><tag><n>`` with lo up."""
        name = f"f{role}{self.tag}{len(self.namespaces)}"
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def node(self, role: str) -> str:
        """A node netns with ip_forward=1 and a route for proxy ARP of 169.254.1.1."""
        ns = self.netns(role)
        sysctl(ns, "net.ipv4.ip_forward", "1")
        return ns

    def link_nodes(self, a: str, b: str, addr_a: str, addr_b: str, mtu: int = 1500) -> None:
        """veth eth0<->eth0 between nodes a and b, addresses as CIDRs (e.g. 172.31.9.1/24)."""
        run("ip", "link", "add", "eth0", "netns", a, "mtu", str(mtu), "type", "veth",
            "peer", "name", "eth0", "netns", b, "mtu", str(mtu))
        for ns, addr in ((a, addr_a), (b, addr_b)):
            run("ip", "-n", ns, "addr", "add", addr, "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", ns, "route", "add", "169.254.1.1/32", "dev", "eth0")

    def pod(self, node: str, ip: str, iface: str, mtu: int = 1480, route: bool = True) -> str:
        """A pod netns wired to ``node`` through host veth ``iface``; returns the pod netns."""
        ns = self.netns("p")
        run("ip", "link", "add", "eth0", "netns", ns, "mtu", str(mtu), "type", "veth",
            "peer", "name", iface, "netns", node, "mtu", str(mtu))
        run("ip", "-n", node, "link", "set", iface, "address", "ee:ee:ee:ee:ee:ee", "up")
        for key, val in (("proxy_arp", "1"), ("forwarding", "1")):
            sysctl(node, f"net.ipv4.conf.{iface}.{key}", val)
        sysctl(node, f"net.ipv4.neigh.{iface}.proxy_delay", "0")
        run("ip", "-n", ns, "addr", "add", f"{ip}/32", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        run("ip", "-n", ns, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
        run("ip", "-n", ns, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
        if route:
            run("ip", "-n", node, "route", "add", f"{ip}/32", "dev", iface, "scope", "link")
        return ns

    def spawn(self, netns: str, *args: str, **kw) -> subprocess.Popen:
        """Start a process inside ``netns``; it is killed (by PID) at close."""
        p = subprocess.Popen(["ip", "netns", "exec", netns, *args], **kw)
        self.procs.append(p)
        return p

    def tunnel(self, node: str, address: str, allow: list[str]) -> subprocess.Popen:
        """Run the userspace tunl0 + pump (python -m agent.felix.tunnel) in ``node``; waits for ready."""
        args = [PY, "-m", "agent.felix.tunnel", "--address", address]
        for a in allow:
            args += ["--allow", a]
        p = self.spawn(node, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        line = p.stdout.readline()
        if line.strip() != "ready":
            try:  # how it ended (a signal shows as a negative code), before we end it ourselves
                how = f"exit {p.wait(timeout=5)}"
            except subprocess.TimeoutExpired:
                p.kill()
                how = "still running: killed"
            raise AssertionError(f"tunnel in {node} did not start ({how}): {line!r} {p.stderr.read()}")
        return p

    def bpf_dir(self, node: str) -> str:
        """The bpffs directory of ``node`` (a bpffs mounted once per topology in the machine's
        mount namespace, as a node's /sys/fs/bpf; one sub-directory per node)."""
        from kernel import bpf

        if self.bpffs is None:
            self.bpffs = tempfile.mkdtemp(prefix="felix-bpffs-")
            bpf.mount_bpffs(self.bpffs)
        return os.path.join(self.bpffs, node)

    def bpf_tunnel(self, node: str, address: str, allow: list[str], *extra: str) -> dict:
        """Set up the tc-BPF tunl0 in ``node`` (python -m agent.felix.bpftunnel; no process stays);
        its JSON answer."""
        import json

        args = [PY, "-m", "agent.felix.bpftunnel", "--address", address, "--bpffs", self.bpf_dir(node), *extra]
        for a in allow:
            args += ["--allow", a]
        res = subprocess.run(["ip", "netns", "exec", node, *args], capture_output=True, text=True, cwd=REPO,
                             timeout=60)
        if res.returncode != 0:
            raise AssertionError(f"tc-BPF tunnel in {node}: {res.stderr.strip()}")
        return json.loads(res.stdout.strip().splitlines()[-1])

    def stop(self, p: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
        """Signal one of our processes and reap it."""
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def close(self) -> None:
        """Kill our processes by PID and delete our namespaces (and with them their links)."""
        for p in reversed(self.procs):
            if p.poll() is None:
                p.kill()
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        for ns in reversed(self.namespaces):
            pids = run("ip", "netns", "pids", ns, check=False).split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            run("ip", "netns", "delete", ns, check=False)
        import shutil

        if self.bpffs is not None:
            subprocess.run(["umount", "-l", self.bpffs], capture_output=True)
            self.cleanup_dirs.append(self.bpffs)
            self.bpffs = None
        for d in self.cleanup_dirs:
            shutil.rmtree(d, ignore_errors=True)


class InNetns:
    """Runs callables on one thread that has entered netns ``name`` (the rest of the process stays put).

    Sockets are bound to the netns they are created in, so objects made through
    :meth:`call` (e.g. a datastore Client) must also be used through it.
    """

    def __init__(self, name: str) -> None:
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, initializer=netns.enter,
                                                          initargs=(name,))

    def call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """Run ``fn(*args, **kw)`` inside the netns and return its result."""
        return self.pool.submit(fn, *args, **kw).result(timeout=60)

    def close(self) -> None:
        """Stop the thread."""
        self.pool.shutdown(wait=True)


def listen_in(ns: str, addr: str, port: int) -> socket.socket:
    """A listening TCP socket made inside netns ``ns`` (the calling thread comes back)."""
    with netns.entered(ns):
        s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(1)
    return s


def connect_in(ns: str, addr: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection from inside netns ``ns``."""
    with netns.entered(ns):
        c = socket.socket()
    c.settimeout(timeout)
    c.connect((addr, port))
    return c


def echo_pair(server_ns: str, client_ns: str, addr: str, port: int, timeout: float = 30) -> socket.socket:
    """An echo server at ``addr:port`` in ``server_ns`` (a thread here) and a client socket from
    ``client_ns`` connected to it; :func:`say` talks over it."""
    srv = listen_in(server_ns, addr, port)

    def serve() -> None:
        with srv:
            c, _ = srv.accept()
            with c:
                while d := c.recv(4096):
                    c.sendall(d)

    threading.Thread(target=serve, daemon=True).start()
    return connect_in(client_ns, addr, port, timeout)


def say(cli: socket.socket, word: str) -> str:
    """Send ``word`` over an echo connection; what came back."""
    cli.sendall(word.encode())
    return cli.recv(4096).decode()


def ping_until_ok(ns: str, dst: str, timeout: float = 20) -> str:
    """Ping ``dst`` from ``ns``, one echo per try, until a reply comes back (a tunnel or the agent
    may still be loading its routes); fails with the last ping's output at ``timeout``."""
    return wait_for(lambda: run("ping", "-c", "1", "-W", "1", dst, netns=ns, check=False),
                    lambda out: " 0% packet loss" in out, timeout=timeout, what=f"ping {dst} from {ns}")


def stop_capture_when(proc: subprocess.Popen, path: str, *want: Any, timeout: float = 5) -> None:
    """SIGINT the tcpdump ``proc`` writing ``path`` (``-U -w``) once every
    :class:`testbed.capture.pcapassert.Match` in ``want`` holds for a frame in the file.

    A ping's reply can be back before tcpdump has read the packets from its socket: a SIGINT
    right after the ping loses them (a CI run's capture held the request, not the reply)."""
    from testbed.capture import pcapassert

    def missing() -> list[str]:
        try:
            trace = pcapassert.load(path)  # a last record still being written is left out
        except (OSError, pcapassert.CaptureAssertionError) as e:  # no file or no header yet
            return [f"{path} not readable yet: {e}"]
        return [str(m) for m in want if not trace.select(m)]

    try:
        wait_for(missing, lambda m: not m, timeout=timeout, what=f"the packets in {path}")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=5)


def start_etcd(topo: Topo, netns: str, address: str, port: int = 2379) -> str:
    """A real etcd inside ``netns`` listening on ``address:port``; killed by PID at topo.close()."""
    data = tempfile.mkdtemp(prefix="felix-etcd-")
    url = f"http://{address}:{port}"
    peer = f"http://127.0.0.1:{port + 1}"
    topo.spawn(netns, "etcd", "--name", "t", "--data-dir", data, "--listen-client-urls", url,
               "--advertise-client-urls", url, "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
               "--initial-cluster", f"t={peer}", "--log-level", "error", "--logger", "zap",
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    topo.cleanup_dirs.append(data)
    return url


def csum(b: bytes) -> int:
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def echo_request(src: str, dst: str, ident: int, seq: int, tos: int = 0, ttl: int = 64) -> bytes:
    """An IPv4 ICMP echo request (header checksummed), as bytes."""
    icmp = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"x" * 8
    icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
    h = struct.pack("!BBHHHBBH4s4s", 0x45, tos, 20 + len(icmp), seq, 0, ttl, 1, 0, socket.inet_aton(src),
                    socket.inet_aton(dst))
    return h[:10] + struct.pack("!H", csum(h)) + h[12:] + icmp


def send_ipip(ns: str, to: str, packets: list[bytes], outer_tos: int = 0) -> None:
    """Send ``packets`` IPIP-encapsulated to ``to`` from netns ``ns`` (a raw protocol-4 socket made there)."""
    with netns.entered(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 4)
    with s:
        if outer_tos:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, outer_tos)
        for pkt in packets:
            s.sendto(pkt, (to, 0))


def two_node_tunnel(topo: Topo, mtu: int = 1500) -> dict:
    """Nodes A and B with userspace tunnels, pod a (192.168.10.5) on A and pod b (192.168.20.7) on B."""
    a, b = topo.node("a"), topo.node("b")
    topo.link_nodes(a, b, "172.31.9.1/24", "172.31.9.2/24", mtu=mtu)
    pa = topo.pod(a, "192.168.10.5", "cali0a0000001", mtu=mtu - 20)
    pb = topo.pod(b, "192.168.20.7", "cali0b0000001", mtu=mtu - 20)
    ta = topo.tunnel(a, "192.168.10.0", ["172.31.9.2"])
    tb = topo.tunnel(b, "192.168.20.0", ["172.31.9.1"])
    run("ip", "-n", a, "route", "add", "192.168.20.0/26", "via", "172.31.9.2", "dev", "tunl0", "onlink")
    run("ip", "-n", b, "route", "add", "192.168.10.0/26", "via", "172.31.9.1", "dev", "tunl0", "onlink")
    return {"a": a, "b": b, "pa": pa, "pb": pb, "ta": ta, "tb": tb, "ipa": "192.168.10.5", "ipb": "192.168.20.7"}


def two_node_bpf_tunnel(topo: Topo, mtu: int = 1500) -> dict:
    """Nodes A and B with tc-BPF tunnels, pod a (192.168.10.5) on A and pod b (192.168.20.7) on B."""
    a, b = topo.node("a"), topo.node("b")
    topo.link_nodes(a, b, "172.31.9.1/24", "172.31.9.2/24", mtu=mtu)
    pa = topo.pod(a, "192.168.10.5", "cali0a0000001", mtu=mtu - 20)
    pb = topo.pod(b, "192.168.20.7", "cali0b0000001", mtu=mtu - 20)
    sa = topo.bpf_tunnel(a, "192.168.10.0", ["172.31.9.2"])
    sb = topo.bpf_tunnel(b, "192.168.20.0", ["172.31.9.1"])
    run("ip", "-n", a, "route", "add", "192.168.20.0/26", "via", "172.31.9.2", "dev", "tunl0", "onlink")
    run("ip", "-n", b, "route", "add", "192.168.10.0/26", "via", "172.31.9.1", "dev", "tunl0", "onlink")
    return {"a": a, "b": b, "pa": pa, "pb": pb, "sa": sa, "sb": sb, "ipa": "192.168.10.5", "ipb": "192.168.20.7"}


if __name__ == "__main__":  # manual poking: python tests/netns/felix_support.py
    t = Topo()
    try:
        env = two_node_tunnel(t)
        print(run("ping", "-c", "3", "-W", "1", env["ipb"], netns=env["pa"], check=False))
    finally:
        t.close()
    sys.exit(0)
