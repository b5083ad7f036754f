"""A small Calico IPIP cluster in network namespaces, with either tunl0 datapath.

Used inside the qemu guest (``datapath="kernel"``: the real ipip.ko tunl0) and on the
host (``datapath="bpf"``: Felix's tc-BPF tunl0, ``python -m agent.felix.bpftunnel``, with a
bpffs of the cluster's own; ``datapath="userspace"``: the fallback TUN tunl0 + pump,
``python -m agent.felix.tunnel``) so the datapaths are driven by the same code and can be
compared.

Shape (per node ``i`` = 1..n)::

    switch netns: bridge br0 ── veth ── node netns: eth0 172.30.0.1<i>/24 (MTU uplink_mtu)
    node: tunl0 192.168.<i>.0/32 (MTU uplink-20, set by agent.felix.tunnel.ensure_tunl0)
          192.168.<j>.0/26 via 172.30.0.1<j> dev tunl0 proto bird onlink  (agent.bgp, per peer)
          blackhole 192.168.<i>.0/26 proto bird
          192.168.<i>.<k>/32 dev cali<hash> scope link                   (each pod)
    pod netns: eth0 192.168.<i>.<k>/32, 169.254.1.1 dev eth0 scope link,
               default via 169.254.1.1 dev eth0 (proxy ARP on the host veth)

Everything lives in namespaces created here with unique names; :meth:`Cluster.close`
kills the processes started here (by PID) and deletes those namespaces.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from datastore.names import veth_name
from testbed.poll import wait_for

IP = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "/sbin/ip"  # never busybox's applet
REPO = Path(__file__).resolve().parents[2]
DATAPATHS = ("kernel", "bpf", "userspace")
ROUTE_SOURCES = ("bgp", "static")


class ClusterError(RuntimeError):
    """The namespaces could not be wired as asked (the message names the step and the error)."""


def run(*args: str, netns: str | None = None, check: bool = True, timeout: float = 30) -> str:
    """Run a command (inside ``netns`` if given) and return stdout; ClusterError on failure."""
    cmd = ([IP, "netns", "exec", netns] if netns else []) + list(args)
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise ClusterError(f"`{' '.join(cmd)}` exited {res.returncode}: {res.stderr.strip()}")
    return res.stdout


def sysctl(netns: str, key: str, value: str) -> None:
    """Write one sysctl inside ``netns``."""
    path = "/proc/sys/" + key.replace(".", "/")
    run("sh", "-c", f"echo {value} > {path}", netns=netns)


@dataclass
class Pod:
    """A pod: its netns, address and host-side veth on its node."""

    name: str
    netns: str
    ip: str
    node: Node
    host_iface: str
    mtu: int


@dataclass
class Node:
    """A node: its netns, uplink address, IPAM block and tunnel address."""

    index: int
    netns: str
    address: str
    block: str
    tunnel_address: str
    pods: list[Pod] = field(default_factory=list)


@dataclass
class Capture:
    """A running tcpdump inside a node; :meth:`stop` ends it with SIGINT and returns the pcap."""

    proc: subprocess.Popen
    path: Path
    log: Path

    def stop(self) -> Path:
        """Stop cleanly (SIGINT flushes the file) and return the pcap path."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.path


@dataclass
class Cluster:
    """The namespaces, links and processes of one cluster."""

    datapath: str
    uplink_mtu: int
    tunnel_mtu: int
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:5])
    nodes: list[Node] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)
    speakers: list = field(default_factory=list)  # agent.bgp.runner.SpeakerThread
    undo: list = field(default_factory=list)  # callables run at close (deliberate breaks)
    switch: str = ""
    bpffs: str | None = None  # the bpf filesystem of the "bpf" datapath (unmounted at close)

    # -- building blocks -------------------------------------------------------------
    def netns(self, role: str) -> str:
        """Create netns ``kt<role><tag>`` with lo up; recorded for :meth:`close`."""
        name = f"kt{role}{self.tag}"
        run(IP, "netns", "add", name)
        self.namespaces.append(name)
        run(IP, "-n", name, "link", "set", "lo", "up")
        return name

    def spawn(self, netns: str, *args: str, **kw) -> subprocess.Popen:
        """Start a process inside ``netns``; killed by PID at :meth:`close`."""
        proc = subprocess.Popen([IP, "netns", "exec", netns, *args], **kw)
        self.procs.append(proc)
        return proc

    def node(self, name_or_index: int) -> Node:
        """Node by 1-based index."""
        return self.nodes[name_or_index - 1]

    def add_pod(self, node: Node, name: str, ip: str, mtu: int | None = None) -> Pod:
        """Wire a pod to ``node`` as Calico's CNI plugin does (see module docstring)."""
        mtu = mtu or self.tunnel_mtu
        ns = self.netns(f"p{node.index}{len(node.pods)}")
        iface = veth_name("default", f"{name}-{self.tag}")
        run(IP, "link", "add", "eth0", "netns", ns, "mtu", str(mtu), "type", "veth",
            "peer", "name", iface, "netns", node.netns, "mtu", str(mtu))  # fmt: skip
        run(IP, "-n", node.netns, "link", "set", iface, "address", "ee:ee:ee:ee:ee:ee", "up")
        for key, val in (("proxy_arp", "1"), ("forwarding", "1"), ("route_localnet", "1")):
            sysctl(node.netns, f"net.ipv4.conf.{iface}.{key}", val)
        sysctl(node.netns, f"net.ipv4.neigh.{iface}.proxy_delay", "0")
        run(IP, "-n", ns, "addr", "add", f"{ip}/32", "dev", "eth0")
        run(IP, "-n", ns, "link", "set", "eth0", "up")
        run(IP, "-n", ns, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link")
        run(IP, "-n", ns, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0")
        run(IP, "-n", node.netns, "route", "add", f"{ip}/32", "dev", iface, "scope", "link")
        pod = Pod(name, ns, ip, node, iface, mtu)
        node.pods.append(pod)
        return pod

    def capture(self, node: Node, iface: str, path: Path, timeout: float = 20) -> Capture:
        """Start tcpdump on ``iface`` of ``node`` writing ``path``; returns once it listens."""
        path.parent.mkdir(parents=True, exist_ok=True)
        log = path.with_suffix(".tcpdump.log")
        with open(log, "wb") as err:
            proc = self.spawn(
                node.netns, "tcpdump", "-n", "-i", iface, "-w", str(path), "-U",
                "--immediate-mode", "-s", "256",
                stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        wait_for(
            lambda: (proc.poll(), log.read_text(errors="replace")),
            lambda r: r[0] is not None or "listening on" in r[1],
            timeout=timeout,
            what=f"tcpdump listening on {iface} in {node.netns}",
        )
        if proc.poll() is not None:
            raise ClusterError(f"tcpdump on {iface} in {node.netns} exited: {log.read_text()}")
        return Capture(proc, path, log)

    def close(self) -> None:
        """Stop the BGP speakers, kill what was started here (by PID), delete our namespaces."""
        for speaker in reversed(self.speakers):
            try:
                speaker.stop(graceful=False, timeout=5)
            except Exception:  # noqa: BLE001 - teardown goes on
                pass
        self.speakers.clear()
        while self.undo:
            self.undo.pop()()
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.kill()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        for ns in reversed(self.namespaces):
            for pid in run(IP, "netns", "pids", ns, check=False).split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            run(IP, "netns", "delete", ns, check=False)
        self.namespaces.clear()
        if self.bpffs is not None:
            subprocess.run(["umount", "-l", self.bpffs], capture_output=True)
            os.rmdir(self.bpffs)
            self.bpffs = None


# -- tunl0 and routes ----------------------------------------------------------------


def kernel_tunl0(netns: str, address: str, mtu: int) -> None:
    """The agent's kernel tunl0 setup (``ensure_tunl0(..., mode="kernel")``) run in ``netns``."""
    from agent.felix.tunnel import ensure_tunl0
    from kernel.netlink import Netlink

    with Netlink(netns) as k:  # bound to the node's netns
        info = ensure_tunl0(k, address, mtu, mode="kernel")
    if info.kind != "kernel":
        raise ClusterError(f"ensure_tunl0 in {netns} gave a {info.kind} tunnel, not kernel ipip")


POOL = "192.168.0.0/16"


def program_routes(netns: str, own_block: str, peers: list[tuple[str, str]], *,
                   onlink: bool = True) -> None:  # fmt: skip
    """The BGP part's kernel routes in ``netns``, through its own code (agent.bgp).

    ``agent.bgp.routes.next_hop_for`` picks the next hop for a block of an IPIP pool
    (``via <node> dev tunl0 onlink``) and ``agent.bgp.kernel.KernelRoutes`` installs
    ``proto bird`` routes, plus ``blackhole <own block> proto bird``.  ``peers`` are
    (block, node address).  ``onlink=False`` strips the flag (a deliberate break): the kernel
    then refuses the route and ClusterError says so.
    """
    from dataclasses import replace
    from ipaddress import IPv4Address, IPv4Network

    from agent.bgp import prefix as PF
    from agent.bgp.config import KernelPolicy
    from agent.bgp.kernel import KernelRoutes
    from agent.bgp.routes import KernelRoute, next_hop_for
    from kernel.netlink import Netlink

    policy = KernelPolicy(ipip_pools=(IPv4Network(POOL),))
    routes = [KernelRoute(IPv4Network(own_block), blackhole=True)]
    for block, via in peers:
        hop = next_hop_for(IPv4Network(block), IPv4Address(via), policy)
        if not onlink:
            hop = replace(hop, onlink=False)
        routes.append(KernelRoute(IPv4Network(block), nexthops=(hop,)))
    with Netlink(netns) as k:  # bound to the node's netns
        kr = KernelRoutes(k)
        failed = kr.apply({PF.of(r.prefix): r for r in routes})  # the speaker's prefix keys
    if failed:
        refused = "; ".join(f"`{r.render()}` refused: {kr.failing[PF.of(r.prefix)]}"
                            for r in routes if PF.of(r.prefix) in failed)
        raise ClusterError(f"in {netns}: {refused}")


def build(
    n_nodes: int = 3,
    *,
    datapath: str = "kernel",
    uplink_mtu: int = 1500,
    tunnel_mtu: int | None = None,
    pod_mtu: int | None = None,
    onlink: bool = True,
    routes: str = "bgp",
    route_timeout: float = 90.0,
) -> Cluster:
    """Build the cluster (one pod ``pod-<i>`` per node); on any error it is removed again.

    ``tunnel_mtu`` defaults to ``uplink_mtu - 20`` (Felix's rule); pods get ``pod_mtu``
    (default: the correct tunnel MTU, as the CNI plugin reads it from Felix's MTU file).
    ``routes="bgp"`` runs the BGP part's speaker (agent.bgp) in every node, a full mesh over
    the uplinks, and waits until each node has its peers' block routes; ``"static"`` installs
    the same routes with the BGP part's kernel driver directly (no sessions).
    ``onlink=False`` and a wrong ``tunnel_mtu`` exist to break the path on purpose.
    """
    if routes not in ROUTE_SOURCES:
        raise ValueError(f"routes {routes!r} is not one of {', '.join(ROUTE_SOURCES)}")
    if datapath not in DATAPATHS:
        raise ValueError(f"datapath {datapath!r} is not one of {', '.join(DATAPATHS)}")
    if not 2 <= n_nodes <= 9:
        raise ValueError(f"n_nodes must be 2..9, not {n_nodes}")
    right_mtu = uplink_mtu - 20
    cluster = Cluster(datapath, uplink_mtu, tunnel_mtu or right_mtu)
    try:
        _wire(cluster, n_nodes, pod_mtu or right_mtu, onlink, routes, route_timeout)
    except BaseException:
        cluster.close()
        raise
    return cluster


def _wire(cluster: Cluster, n_nodes: int, pod_mtu: int, onlink: bool, routes: str,
          route_timeout: float) -> None:  # fmt: skip
    sw = cluster.switch = cluster.netns("sw")
    run(IP, "-n", sw, "link", "add", "br0", "type", "bridge")
    run(IP, "-n", sw, "link", "set", "br0", "up")
    for i in range(1, n_nodes + 1):
        ns = cluster.netns(f"n{i}")
        node = Node(i, ns, f"172.30.0.1{i}", f"192.168.{i}.0/26", f"192.168.{i}.0")
        cluster.nodes.append(node)
        mtu = str(cluster.uplink_mtu)
        run(IP, "link", "add", "eth0", "netns", ns, "mtu", mtu, "type", "veth",
            "peer", "name", f"n{i}", "netns", sw, "mtu", mtu)  # fmt: skip
        run(IP, "-n", sw, "link", "set", f"n{i}", "master", "br0", "up")
        run(IP, "-n", ns, "addr", "add", f"{node.address}/24", "dev", "eth0")
        run(IP, "-n", ns, "link", "set", "eth0", "up")
        # proxy ARP for 169.254.1.1 needs a route to it that is not via the pod's veth
        run(IP, "-n", ns, "route", "add", "169.254.1.1/32", "dev", "eth0", "scope", "link")
        sysctl(ns, "net.ipv4.ip_forward", "1")
    for node in cluster.nodes:
        peers = [p.address for p in cluster.nodes if p is not node]
        if cluster.datapath == "kernel":
            kernel_tunl0(node.netns, node.tunnel_address, cluster.tunnel_mtu)
        elif cluster.datapath == "bpf":
            _bpf_tunl0(cluster, node, peers)
        else:
            _userspace_tunl0(cluster, node, peers)
    if routes == "bgp":
        _bgp_mesh(cluster, onlink, route_timeout)
    for node in cluster.nodes:
        if routes == "static":
            peers = [(p.block, p.address) for p in cluster.nodes if p is not node]
            program_routes(node.netns, node.block, peers, onlink=onlink)
        cluster.add_pod(node, f"pod-{node.index}", f"192.168.{node.index}.1", mtu=pod_mtu)


def expected_routes(cluster: Cluster, node: Node) -> set[str]:
    """The ``proto bird`` routes ``node`` must have, as ``ip route`` prints them."""
    want = {f"blackhole {node.block} proto bird"}
    for peer in cluster.nodes:
        if peer is not node:
            want.add(f"{peer.block} via {peer.address} dev tunl0 proto bird onlink")
    return want


def route_lines(netns: str) -> set[str]:
    """``ip route`` of ``netns``, one normalised line each."""
    return {" ".join(line.split()) for line in run(IP, "-n", netns, "route").splitlines()}


def _strip_onlink(cluster: Cluster) -> None:
    """Deliberate break: the BGP part's next hops lose ``onlink`` while the cluster lives."""
    from dataclasses import replace

    import agent.bgp.routes as bgp_routes

    original = bgp_routes.next_hop_for

    def without_onlink(*args, **kwargs):
        return replace(original(*args, **kwargs), onlink=False)

    bgp_routes.next_hop_for = without_onlink
    cluster.undo.append(lambda: setattr(bgp_routes, "next_hop_for", original))


def _bgp_mesh(cluster: Cluster, onlink: bool, timeout: float) -> None:
    """One BGP speaker (agent.bgp) per node, Calico's full mesh, AS 64512; wait for routes."""
    from ipaddress import IPv4Address, IPv4Network

    from agent.bgp.config import KernelPolicy, PeerConfig, SpeakerConfig, mesh_name, passive_towards
    from agent.bgp.fsm import Timers
    from agent.bgp.runner import SpeakerThread

    if not onlink:
        _strip_onlink(cluster)
    pool = IPv4Network(POOL)
    # short retry timers (a lab's), a hold time that tolerates a slow TCG guest
    timers = Timers(hold=30, connect_delay=0.1, connect_retry=1, error_wait_min=0.5,
                    error_wait_max=2, graceful_restart=30)  # fmt: skip
    for node in cluster.nodes:
        me = IPv4Address(node.address)
        peers = tuple(
            PeerConfig(mesh_name(p.address), IPv4Address(p.address), 64512,
                       passive=passive_towards(me, p.address))  # fmt: skip
            for p in cluster.nodes if p is not node
        )
        config = SpeakerConfig(
            router_id=me, local_as=64512, local_address=me, peers=peers,
            originate=((IPv4Network(node.block), True),), export_pools=(pool,),
            kernel=KernelPolicy(ipip_pools=(pool,)), timers=timers,
        )  # fmt: skip
        speaker = SpeakerThread(config, netns=node.netns, name=f"bgp-{node.netns}")
        cluster.speakers.append(speaker)
        speaker.start(timeout=30)

    def probe() -> dict:
        state = {}
        for node, speaker in zip(cluster.nodes, cluster.speakers, strict=True):
            errors = speaker.status().get("kernel_errors") or []
            if errors:
                raise ClusterError(f"the BGP speaker in {node.netns} could not program routes: "
                                   f"{errors}")  # fmt: skip
            state[node.netns] = sorted(expected_routes(cluster, node) - route_lines(node.netns))
        return state

    wait_for(probe, lambda missing: not any(missing.values()), timeout=timeout,
             interval=0.1, what="every node's BGP routes via tunl0 (missing per node)")  # fmt: skip


def _bpf_tunl0(cluster: Cluster, node: Node, peers: list[str]) -> None:
    """The tc-BPF tunl0 (no process stays), pinned in a bpffs of this cluster's."""
    import tempfile

    from kernel import bpf

    if cluster.bpffs is None:
        cluster.bpffs = tempfile.mkdtemp(prefix=f"kt-bpffs-{cluster.tag}-")
        bpf.mount_bpffs(cluster.bpffs)
    args = [sys.executable, "-m", "agent.felix.bpftunnel", "--address", node.tunnel_address,
            "--mtu", str(cluster.tunnel_mtu), "--bpffs", os.path.join(cluster.bpffs, node.netns)]
    for peer in peers:
        args += ["--allow", peer]
    res = subprocess.run([IP, "netns", "exec", node.netns, *args], capture_output=True, text=True, cwd=REPO,
                         timeout=60)
    if res.returncode != 0:
        raise ClusterError(f"tc-BPF tunl0 in {node.netns}: {res.stderr.strip()}")


def _userspace_tunl0(cluster: Cluster, node: Node, peers: list[str]) -> None:
    args = [sys.executable, "-m", "agent.felix.tunnel", "--address", node.tunnel_address,
            "--mtu", str(cluster.tunnel_mtu)]  # fmt: skip
    for peer in peers:
        args += ["--allow", peer]
    proc = cluster.spawn(
        node.netns, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if line.strip() != "ready":
        proc.kill()
        err = proc.stderr.read() if proc.stderr else ""
        raise ClusterError(f"userspace tunl0 in {node.netns} did not start: {line!r} {err}")


# -- what a user observes ------------------------------------------------------------

PING_LOSS = re.compile(r"(\d+)% packet loss")
FRAG_NEEDED = re.compile(r"Frag needed and DF set \(mtu = (\d+)\)")
LOCAL_MTU = re.compile(r"message too long, mtu[= ]+(\d+)", re.I)


def ping(pod: Pod, dst: str, *, count: int = 3, size: int | None = None, df: bool = False,
         interval: float = 0.2, deadline: float = 10) -> subprocess.CompletedProcess:  # fmt: skip
    """Run iputils ping inside ``pod``; returns the finished process (stdout + stderr)."""
    args = ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "2", "-w", str(deadline)]
    if size is not None:
        args += ["-s", str(size)]
    if df:
        args += ["-M", "do"]
    return subprocess.run(
        [IP, "netns", "exec", pod.netns, *args, dst],
        capture_output=True, text=True, timeout=deadline + 10,
    )  # fmt: skip


def mtu_probe(pod: Pod, dst: str, size: int, rounds: int = 5) -> dict:
    """DF pings of ICMP payload ``size``; classify what the pod saw.

    Returns {"size", "outcome": "ok" | "frag-needed" | "local-mtu" | "lost", "mtu": int|None}.
    A round is 3 pings; rounds repeat only while everything is silently lost (a datapath that
    drops some packets still gets its verdict), up to ``rounds``.
    """
    text = ""
    for _ in range(rounds):
        res = ping(pod, dst, count=3, size=size, df=True, interval=0.2, deadline=3)
        text = res.stdout + res.stderr
        loss = PING_LOSS.search(text)
        if loss and int(loss.group(1)) < 100:
            return {"size": size, "outcome": "ok", "mtu": None}
        if m := FRAG_NEEDED.search(text):
            return {"size": size, "outcome": "frag-needed", "mtu": int(m.group(1))}
        if m := LOCAL_MTU.search(text):
            return {"size": size, "outcome": "local-mtu", "mtu": int(m.group(1))}
    return {"size": size, "outcome": "lost", "mtu": None, "output": text.strip()[-300:]}


def link_counters(netns: str, iface: str) -> tuple[int, int]:
    """(tx_packets, rx_packets) of ``iface`` in ``netns``."""
    out = run("cat", f"/sys/class/net/{iface}/statistics/tx_packets",
              f"/sys/class/net/{iface}/statistics/rx_packets", netns=netns).split()  # fmt: skip
    return int(out[0]), int(out[1])


def wait_ping_ok(pod: Pod, dst: str, timeout: float = 20) -> str:
    """Poll single pings until one answers (ARP/proxy ARP settling); returns its output."""
    res = wait_for(
        lambda: ping(pod, dst, count=1, deadline=2),
        lambda r: r.returncode == 0,
        timeout=timeout,
        interval=0.1,
        what=f"ping {pod.name} -> {dst}",
    )
    return res.stdout

