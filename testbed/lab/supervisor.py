"""The lab supervisor: builds a lab's Mininet network and keeps it alive.

Started detached (``setsid``) by :func:`testbed.lab.up`::

    python -m testbed.lab.supervisor --topology FILE --name LAB --progress-fd N [--no-cni]

It joins the lab's cgroup, builds the network (one Mininet host per node,
router and external host; one Linux bridge per segment in its own netns),
attaches every netns on the machine as ``LAB-<name>``, starts etcd in the
control-plane node and the per-node services that exist, reports progress
lines and finally ``ready`` on the progress fd, then waits. SIGTERM (``down``)
stops the services, etcd and Mininet and removes what is left. Requests arrive
on ``/run/calicolab/LAB/control.sock`` (``install-cni``, ``status``, ``stop``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pty
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from kernel import zygote
from testbed.lab import netns as nsmod
from testbed.lab import state as labstate
from testbed.lab.restarts import Restarter, describe_exit
from testbed.lab.topology import Topology, load
from testbed.poll import deadline_scale

#: BGP session timers of a lab's calico-nodes: BIRD waits its connect delay (Calico's
#: template keeps BIRD's default; ours is 2 s) before the first connect and 5 s between
#: attempts; every node of a lab starts at once, so that wait is all that stood between
#: a pod running and its block's route on the other nodes. Hold and restart timers stay
#: Calico's. Set CALICOLAB_BGP_TIMERS to override (see docs/bgp.md).
BGP_TIMERS_ENV = "CALICOLAB_BGP_TIMERS"
LAB_BGP_TIMERS = "connect_delay=0.1,connect_retry=1"

#: seconds between the supervisor's checks of its services
REAP_INTERVAL = 0.2
#: seconds between admissions of a big lab's waiting nodes (testbed.lab.admission)
ADMIT_INTERVAL = 0.1
#: Calico's CRDs created this many at a time (the Kubernetes datastore's start-up): one at a
#: time, each waited up to ~0.17 s for the API server's start-up burst (3 nodes: 0.74 s for 18)
CRD_WORKERS = 6
#: the zygote's socket directory in the lab's state dir (the supervisor's only)
ZYGOTE_DIR = "zygote"

#: Node directories private to each node: (mount point, name of the backing dir).
#: None: a tmpfs (runtime state that must vanish with the node).
NODE_DIRS: tuple[tuple[str, str | None], ...] = (
    ("/etc/cni/net.d", "cni-net.d"),
    ("/opt/cni/bin", "cni-bin"),
    ("/var/lib/calico", "var-lib-calico"),
    ("/var/log/calico", "log"),
    ("/var/lib/kubelet", "var-lib-kubelet"),
    ("/var/lib/cni", "var-lib-cni"),
    ("/etc/kubernetes", "etc-kubernetes"),
    ("/var/lib/etcd", "var-lib-etcd"),
    ("/etc/netns", "etc-netns"),
    ("/var/run/calico", None),
    ("/var/run/secrets", None),
    ("/var/run/nodeagent", None),  # csi.tigera.io's per-pod dirs and Felix's policy-sync sockets
    ("/run/netns", None),
)


def _log(msg: str) -> None:
    now = time.time()
    print(f"{time.strftime('%H:%M:%S', time.localtime(now))}.{int(now * 1000) % 1000:03d} "
          f"labd: {msg}", flush=True)


def _prefer_stdlib_distutils() -> None:
    """Let Mininet's ``from distutils.version import StrictVersion`` (for Open vSwitch
    versions, which a lab never compares) find the standard library's distutils. In the venv,
    setuptools' distutils shim (its distutils-precedence.pth) answers that import with
    setuptools' own copy, which imports setuptools and pkg_resources: importing mininet.net
    took 123 ms, 24 ms without the shim (-X importtime, quiet machine), all of it before the
    first host. Without a standard-library distutils (Python >= 3.12) the shim's is used."""
    if "distutils" in sys.modules:
        return
    shims = [(i, f) for i, f in enumerate(sys.meta_path) if type(f).__module__ == "_distutils_hack"]
    if not shims:
        return
    for _i, f in shims:
        sys.meta_path.remove(f)
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # "distutils is deprecated"
            import distutils.version  # noqa: F401
    except ImportError:
        pass
    finally:
        for i, f in shims:
            sys.meta_path.insert(i, f)


def check_own_namespace(path: str, what: str, kind: str = "net") -> None:
    """Refuse (RuntimeError) a namespace file ``path`` that is this process's own ``kind``
    namespace, i.e. the machine's: a lab must never name, configure or clean it."""
    a, b = os.stat(path), os.stat(f"/proc/self/ns/{kind}")
    if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
        raise RuntimeError(f"{what}: its {kind} namespace is the machine's own; refusing to touch it")


def tunnels_settled(status: dict) -> bool:
    """From calico-node's /status/tunnels: its allocate-tunnel-addrs pass is done and Felix has put
    each allocated address on its device (tunl0's for IPIP, vxlan.calico's for VXLAN), so a
    lab reported ready shows them, as a node that has run a while does. A calico-node
    without the ``tunnels`` section (none allocated beside Felix) counts as settled."""
    tunnels = status.get("tunnels")
    if not tunnels:
        return True
    if not tunnels.get("done"):
        return False
    if tunnels.get("ipip") and status.get("tunnel_address") != tunnels["ipip"]:
        return False
    return not (tunnels.get("vxlan") and (status.get("vxlan") or {}).get("address") != tunnels["vxlan"])


def _has_main(module: str) -> bool:
    """True if ``python -m module`` would run something (module exists with a main guard)."""
    try:
        spec = importlib.util.find_spec(module)
        if spec is None:
            return False
        if spec.submodule_search_locations is not None:  # a package: needs __main__.py
            return importlib.util.find_spec(module + ".__main__") is not None
    except (ImportError, ValueError):
        return False
    try:
        return "__main__" in Path(spec.origin or "").read_text()
    except OSError:
        return False


class Supervisor:
    """Owns one lab: the Mininet network, the services, the state file."""

    def __init__(self, topo: Topology, no_cni: bool, progress_fd: int | None,
                 ready_timeout: float = 30.0):
        self.topo = topo
        self.lab = topo.name
        self.no_cni = no_cni
        self.progress_fd = progress_fd
        self.ready_timeout = ready_timeout
        self.sdir = labstate.state_dir(self.lab)
        self.state: dict[str, Any] = labstate.read_state(self.lab) or labstate.plan(topo)
        # this machine's part of the lab (all of it on one machine): multihost.controller
        self.part = labstate.part()
        self.names = topo.names_on(self.part or None)
        self.segments = topo.segments_on(self.part or None)
        self.local_nodes = [n for n in topo.nodes if n.name in self.names]
        self.has_cp = topo.control_plane.name in self.names
        self.net: Any = None
        self.hosts: dict[str, Any] = {}
        #: the build's rtnetlink handle of each host's and segment's netns (closed after it)
        self.kernels: dict[str, Any] = {}
        #: the mount helper of the build (testbed.lab.privatedirs), forked before any thread
        self.mounter: Any = None
        self.procs: dict[str, subprocess.Popen] = {}
        #: how to start each service again (host, service, argv, extra env), and its restart state
        self.specs: dict[str, tuple[str, str, list[str], dict[str, str] | None]] = {}
        self.restarters: dict[str, Restarter] = {}
        self.networkd: Any = None
        self.stop_event = threading.Event()
        self.lock = threading.RLock()
        self.server: socket.socket | None = None
        #: the forked child making the PKI (start_pki), until join_pki reaps it
        self.pki: Any = None
        #: set once every node has been started (at once, or by admit_nodes' thread)
        self.admitted = threading.Event()
        self.admitted.set()
        self.kc_thread: threading.Thread | None = None  # start_kube_controllers
        #: Calico's datastore is the Kubernetes API (CRDs), not etcd (topology calico.datastore)
        self.kdd = topo.calico.datastore == "kubernetes"
        #: the lab's zygote socket (testbed.lab.zygote), once started; None: every process execs
        self.zygote: str | None = None
        self.zygote_ready = False

    # ---------------------------------------------------------------- reporting
    def progress(self, msg: str) -> None:
        """A progress line for `calicolab up` (and the supervisor log)."""
        _log(msg)
        self._emit(f"progress: {msg}")

    def _emit(self, line: str) -> None:
        if self.progress_fd is None:
            return
        try:
            os.write(self.progress_fd, (line + "\n").encode())
        except OSError:
            pass  # `up` went away (e.g. ^C); the lab keeps going

    def _close_progress(self) -> None:
        if self.progress_fd is not None:
            try:
                os.close(self.progress_fd)
            except OSError:
                pass
            self.progress_fd = None

    def save(self) -> None:
        """Write the state file (under the lock)."""
        with self.lock:
            labstate.write_state(self.lab, self.state)

    # ---------------------------------------------------------------- build
    def setup_process(self) -> None:
        """Join the lab cgroup and record the supervisor before creating anything."""
        cg = self.state.get("cgroup")
        if cg:
            try:
                for attempt in range(5):  # a concurrent clean may remove the empty parent
                    try:
                        Path(cg).mkdir(parents=True, exist_ok=True)
                        break
                    except FileNotFoundError:
                        if attempt == 4:
                            raise
                labstate.join_cgroup(cg)
            except OSError as exc:
                _log(f"no cgroup for the lab ({exc}); clean will rely on recorded PIDs")
                self.state["cgroup"] = None
        self.state["supervisor"] = {"pid": os.getpid(), "start": labstate.proc_starttime(os.getpid())}
        self.state["phase"] = "starting"
        self.save()
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = min(max(soft, 65536), hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    def build(self, on_ready: Any = None) -> None:
        """Create the Mininet network: hosts, segment bridges, links, addresses, routes.

        Every shell (segments and hosts) is spawned first and waited for together; the
        private directories are mounted by the mount helper (:mod:`testbed.lab.privatedirs`),
        links, bridges, addresses and routes are made over rtnetlink from here (one socket per
        namespace, :mod:`kernel.netlink`): no ``ip``/``mount``/``sysctl`` process per step.
        Each host is then taken through its own steps (shell, mounts, links, ports, addresses
        and routes) on a thread of its own, the control plane's first; ``on_ready(name)`` is
        called as soon as host ``name`` is done (the control plane's kubelet starts then, while
        the other hosts are still being built)."""
        _prefer_stdlib_distutils()
        from mininet import net as mnet
        from mininet.link import Intf, Link
        from mininet.log import setLogLevel
        from mininet.node import Host
        from mininet.nodelib import LinuxBridge

        from kernel.model import Bridge, LinkAdd, Veth
        from testbed.lab import networkd, privatedirs

        setLogLevel("error")
        # Mininet.init() raises machine-wide sysctls (ARP cache, buffers): a lab
        # must not touch the machine's namespace, so skip it (limits are set above).
        mnet.Mininet.inited = True
        mounter = self.mounter

        def kernel_of(node: Any) -> Any:
            return self.kernel(node.name)

        def submit(node: Any, ops: list, what: str) -> None:
            for err in kernel_of(node).submit(ops):
                if err is not None:
                    raise RuntimeError(f"{what}: {err}")

        class LazyShell:
            """A Mininet node that starts without waiting for its shell.

            Mininet waits for each node's shell prompt before creating the next; a lab
            creates every shell first and waits for all of them in :meth:`finish_start` (the
            waits overlap), then mounts the private directories.
            """

            def startShell(self, mnopts: str | None = None) -> None:  # noqa: N802 (Mininet's name)
                if self.shell:
                    return
                flags = "-cd" + ("n" if self.inNamespace else "")
                argv = ["mnexec", flags, "env", "PS1=" + chr(127), "bash", "--norc",
                        "--noediting", "-is", "mininet:" + self.name]
                self.master, self.slave = pty.openpty()
                self.shell = self._popen(argv, stdin=self.slave, stdout=self.slave,
                                         stderr=self.slave, close_fds=False)
                self.stdin = self.stdout = os.fdopen(self.master, "r")
                self.pid = self.shell.pid
                self.pollOut = select.poll()
                self.pollOut.register(self.stdout)
                self.outToNode[self.stdout.fileno()] = self
                self.inToNode[self.stdin.fileno()] = self
                self.execed, self.lastCmd, self.lastPid, self.readbuf = False, None, None, ""
                self.started = False

            def finish_start(self) -> None:
                """Wait for the shell's first prompt, set it up, mount the private dirs."""
                while True:
                    data = self.read(1024)
                    if data and data[-1] == chr(127):
                        break
                    self.pollOut.poll()
                self.waiting = False
                self.cmd("unset HISTFILE; stty -echo; set +m")
                self.started = True
                self.mountPrivateDirs()

            def mountPrivateDirs(self) -> None:  # noqa: N802 (Mininet's name)
                if not getattr(self, "started", True):
                    return  # called by Node.__init__ before the shell is up: see finish_start
                ops = privatedirs.plan(self.privateDirs, getattr(self, "hide", None))
                if ops:
                    mounter.mount(self.name, self.pid, ops)

            def unmountPrivateDirs(self) -> None:  # noqa: N802
                pass  # the mount namespace dies with the node

        class LabHost(LazyShell, Host):
            """A lab host (node, router, external host): see :class:`LazyShell`."""

        class LabIntf(Intf):
            """An interface configured by the lab in one batch (not 4 ifconfig calls each).

            The MAC is set when the veth pair is made; addresses and link state are
            set by :meth:`Supervisor._configure` and the bridge's start.
            """

            def config(self, **_params: Any) -> dict:
                return {}

        class LabLink(Link):
            """A veth pair made over rtnetlink (``ip link add N1 type veth peer name N2 netns
            <node2>``, as Mininet runs it in node1's shell), one queue each way per end
            (``numtxqueues 1 numrxqueues 1``: the kernel's default of one per CPU is cut to one
            active queue right away, waiting for an RCU grace period under the RTNL lock)."""

            @staticmethod
            def makeIntfPair(intfname1: str, intfname2: str, addr1: str | None = None,  # noqa: N802
                             addr2: str | None = None, node1: Any = None, node2: Any = None,
                             deleteIntfs: bool = True) -> None:  # noqa: N803
                submit(node1, [LinkAdd(Veth(intfname1, intfname2, mac=addr1, peer_mac=addr2,
                                            peer_netns=kernel_of(node2), queues=1))],
                       f"link {node1.name}:{intfname1} - {node2.name}:{intfname2}")

        class SegmentBridge(LazyShell, LinuxBridge):
            """A segment: a Linux bridge (no STP) in its own netns; each host enslaves its
            port once it is linked (:meth:`Supervisor._host_steps`)."""

            def start(self, _controllers: Any) -> None:
                submit(self, [LinkAdd(Bridge(self.name, forward_delay=0, stp_state=0))], f"segment {self.name}")
                links = {ln.name: ln.index for ln in kernel_of(self).links(brief=True)}
                self.bridge_index = links[self.name]
                submit(self, networkd.bridge_ops(self.name, links), f"segment {self.name}")

            def stop(self, deleteIntfs: bool = True) -> None:  # noqa: N803
                self.cmd(f"ip link del dev {self.name}")

        topo = self.topo
        spans = self._span_mtus()
        names = self.names
        first = topo.segments[0].cidr
        self.net = net = mnet.Mininet(topo=None, controller=None, switch=SegmentBridge,
                                      host=LabHost, link=LabLink, intf=LabIntf, build=False,
                                      ipBase=str(first),
                                      autoSetMacs=False, waitConnected=False)
        self.progress(f"creating {len(self.segments)} segment(s) and {len(names)} host(s)"
                      + (f" on {self.part}" if self.part else ""))
        for i, seg in enumerate(self.segments):
            sw = net.addSwitch(seg.name, inNamespace=True, dpid=f"{i + 1:016x}")
            self.hosts[seg.name] = sw
            self._record_host(seg.name, sw)
        nodedir = self.sdir / "nodes"
        for name in names:
            kind = self.state["hosts"][name]["kind"]
            dirs: list = []
            if kind == "node":
                for mp, backing in NODE_DIRS:
                    dirs.append((mp, str(nodedir / name / backing)) if backing else mp)
            h = net.addHost(name, ip=None, privateDirs=dirs)
            if kind == "node":
                # pods and node processes see no lab's state (control sockets, etcd data,
                # logs): only the compiled-module cache and, on the control plane, etcd's data
                keep = [labstate.PYCACHE]
                if name == topo.control_plane.name:
                    keep.append(self.sdir / "etcd")
                if topo.runtime != "netns":  # the lab's container runtime dirs: the same path
                    keep.append(self.sdir / "rt")  # in every mount namespace (kubectl logs)
                h.hide = (labstate.RUN_ROOT, keep)
            self.hosts[name] = h
            self._record_host(name, h)
        self.save()
        segs = [seg.name for seg in self.segments]
        # every shell's prompt first: only then has mnexec made its namespaces (before, the
        # shell's /proc/<pid>/ns/net is still the machine's, and a name attached to it then
        # names the machine's netns: clean would have killed every process of the machine)
        self._parallel(lambda name: self.hosts[name].finish_start(), segs + names)
        self._attach_netns()
        self._parallel(lambda name: self.hosts[name].start([]), segs)
        self._tunnels(spans)
        self.progress(f"linking and configuring {len(names)} host(s)")
        cp = topo.control_plane.name
        link_lock = threading.Lock()  # Mininet's bookkeeping (ports, intfs) is not thread-safe

        def host(name: str) -> None:
            self._host_steps(name, link_lock, spans)
            if on_ready is not None:
                on_ready(name)

        self._parallel(host, sorted(names, key=lambda n: n != cp))  # the control plane first
        self.start_networkd()

    def _host_steps(self, name: str, link_lock: threading.Lock, spans: dict[str, int]) -> None:
        """One host, once its shell is up (:meth:`build`): a
        veth to each of its segments (its port enslaved to the segment's bridge, with the
        MTU of a segment spanning machines), then :meth:`_configure`."""
        from testbed.lab.networkd import port_ops

        h = self.hosts[name]
        for ifname, seg, _addr, _plen in self.topo.interface_of(name):
            port = self._port_name(seg, name, ifname)
            with link_lock:
                self.net.addLink(h, self.hosts[seg], intfName1=ifname, intfName2=port)
            k = self.kernel(seg)
            found = k.link(port)
            if found is None:
                raise RuntimeError(f"segment {seg}: port {port} of {name} vanished")
            for err in k.submit(port_ops(found.index, self.hosts[seg].bridge_index, spans.get(seg))):
                if err is not None:
                    raise RuntimeError(f"segment {seg}: {err}")
        self._configure(name)

    def kernel(self, name: str) -> Any:
        """The build's rtnetlink handle (:class:`kernel.netlink.Netlink`) of host or segment
        ``name``'s network namespace, opened on first use."""
        k = self.kernels.get(name)
        if k is None:
            from kernel.netlink import Netlink

            path = f"/proc/{self.hosts[name].pid}/ns/net"
            check_own_namespace(path, name)
            k = self.kernels[name] = Netlink(path)
        return k

    def start_mounter(self) -> None:
        """Fork the build's mount helper (:class:`testbed.lab.privatedirs.Mounter`) while this
        process has no thread yet; recorded as the service ``supervisor/mounts`` until
        :meth:`close_build` reaps it (clean ends it by PID if the supervisor dies first)."""
        from testbed.lab.privatedirs import Mounter

        self.mounter = Mounter()
        self._record_helper("supervisor/mounts", self.mounter.start())

    def _record_helper(self, key: str, pid: int) -> None:
        """Record a forked helper of the supervisor (clean ends it by PID if need be)."""
        with self.lock:
            self.state["services"][key] = {
                "pid": pid, "start": labstate.proc_starttime(pid), "argv": ["(fork of the supervisor)"],
                "log": None, "started": time.time(), "exit": None, "restarts": 0, "restart_policy": None,
                "next_start": None, "last_exit": None, "from_machine": True}

    def _forget_helper(self, key: str) -> None:
        """A forked helper was reaped: no more record of it."""
        with self.lock:
            self.state["services"].pop(key, None)

    def close_build(self) -> None:
        """End the mount helper and close the build's rtnetlink handles."""
        if self.mounter is not None:
            self.mounter.close()
            self.mounter = None
            self._forget_helper("supervisor/mounts")
        for k in self.kernels.values():
            k.close()
        self.kernels.clear()

    def start_networkd(self) -> None:
        """Keep every host's addresses and routes (testbed.lab.networkd): a link that comes
        back up gets them back, as systemd-networkd does on a node."""
        from testbed.lab.networkd import NetworkKeeper, host_network

        hosts = {name: (f"/run/netns/{self.state['hosts'][name]['netns']}", host_network(self.topo, name))
                 for name in self.names}

        def restored(host: str, done: list[str]) -> None:
            _log(f"networkd: {host}: a link came back up; restored {', '.join(done)}")

        self.networkd = NetworkKeeper(hosts, on_repair=restored)
        self.networkd.start(self.stop_event)
        for host, err in sorted(self.networkd.errors.items()):
            _log(f"networkd: {host}: {err}")

    @staticmethod
    def _parallel(fn: Any, names: list[str]) -> None:
        """``fn(name)`` for every host at once (each talks only to its own shell), in the
        order of ``names`` as far as the threads go."""
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(32, max(1, len(names)))) as pool:
            for fut in [pool.submit(fn, n) for n in names]:
                fut.result()

    def _port_name(self, seg: str, host: str, ifname: str) -> str:
        base = host if ifname == "eth0" else f"{host}-{ifname}"
        if len(base) <= 15:
            return base
        idx = self.topo.host_names().index(host)
        return f"p{idx}-{ifname}"[:15]

    def _record_host(self, name: str, node: Any) -> None:
        rec = self.state["hosts"][name]
        rec["pid"] = node.pid
        rec["start"] = labstate.proc_starttime(node.pid)

    def _span_mtus(self) -> dict[str, int]:
        """The MTU of each of this machine's segments that span machines (VXLAN between them)."""
        from testbed.multihost import vxlan

        out = {}
        for seg, spec in (self.state.get("tunnels") or {}).items():
            under = min((vxlan.underlay_mtu(p) for p in spec["peers"]),
                        default=vxlan.DEFAULT_UNDERLAY_MTU)
            out[seg] = vxlan.segment_mtu(min(under, vxlan.DEFAULT_UNDERLAY_MTU))
        return out

    def _tunnels(self, spans: dict[str, int]) -> None:
        """The VXLAN port of every segment bridge shared with other machines."""
        from testbed.multihost import vxlan

        for seg, spec in sorted((self.state.get("tunnels") or {}).items()):
            peers = ", ".join(spec["peers"])
            self.progress(f"segment {seg}: VXLAN {spec['vni']} to {peers} (MTU {spans[seg]})")
            vxlan.create(self.state["hosts"][seg]["netns"], seg, spec, spans[seg])

    def _configure(self, name: str) -> None:
        """Host ``name``'s addresses, routes and (nodes, routers) IP forwarding, over its
        namespace's rtnetlink handle (what ``ip addr/link/route`` and ``sysctl -w`` did)."""
        from testbed.lab.networkd import configure_ops, host_network

        topo, k = self.topo, self.kernel(name)
        kind = self.state["hosts"][name]["kind"]
        spans = self._span_mtus() if self.state.get("tunnels") else {}
        mtus = {ifname: spans[seg] for ifname, seg, _a, _p in topo.interface_of(name) if seg in spans}
        links = {ln.name: ln.index for ln in k.links(brief=True)}
        for err in k.submit(configure_ops(host_network(topo, name), links, mtus)):
            if err is not None:
                raise RuntimeError(f"configuring {name}: {err}")
        if kind in ("node", "router"):
            k.sysctl_set("net/ipv4/ip_forward", "1")

    def _attach_netns(self) -> None:
        """Name every host's and segment's netns ``/run/netns/<lab>-<name>`` (one ``ip -batch``),
        after checking that none is the machine's own (a shell that has not made its own yet)."""
        for n, node in self.hosts.items():
            check_own_namespace(f"/proc/{node.pid}/ns/net", f"{n} (pid {node.pid})")
        batch = "".join(f"netns attach {self.state['hosts'][n]['netns']} {node.pid}\n"
                        for n, node in self.hosts.items())
        res = subprocess.run(["ip", "-batch", "-"], input=batch, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"ip netns attach failed: {res.stderr.strip()}")

    # ---------------------------------------------------------------- services
    def start_service(self, host: str, service: str, argv: list[str],
                      extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start ``argv`` inside ``host`` (net + mount ns), log to logs/<host>.<service>.log."""
        logdir = self.sdir / "logs"
        logdir.mkdir(exist_ok=True)
        logpath = logdir / f"{host}.{service}.log"
        env = labstate.node_env(self.state, host)
        env.update(extra_env or {})
        with open(logpath, "ab") as log:
            proc = self._zygote_start(host, argv, env, log.fileno())
            if proc is None:
                proc = self.hosts[host].popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                              stderr=subprocess.STDOUT, env=env, cwd="/")
        key = f"{host}/{service}"
        with self.lock:
            self.procs[key] = proc
            self.specs[key] = (host, service, argv, extra_env)
            rst = self.restarters.setdefault(key, Restarter(service))
            rst.started(time.monotonic())
            self.state["services"][key] = {"pid": proc.pid, "start": labstate.proc_starttime(proc.pid),
                                           "argv": argv, "log": str(logpath),
                                           "started": time.time(), "exit": None,
                                           "restarts": rst.restarts, "restart_policy": rst.policy,
                                           "next_start": None, "last_exit": rst.last_exit}
        _log(f"started {key} pid {proc.pid}: {' '.join(argv)}")
        return proc

    def start_zygote(self) -> None:
        """The lab's zygote (:mod:`testbed.lab.zygote`): a pre-imported fork server the lab's
        Python processes start from (kubelets here; their pods and calico-node's CNI server
        through the channel each of its children inherits: $CALICOLAB_ZYGOTE=fd:N:PID, no node
        sees the socket in the lab's state dir); recorded as the service ``supervisor/zygote``.
        CALICOLAB_ZYGOTE=off in the environment: none."""
        from testbed.lab import zygote as zmod

        value = os.environ.get(zygote.ENV, "")
        if value.lower() in zygote.OFF:
            _log(f"{zygote.ENV}={value}: no zygote, every process execs")
            return
        if value.lower() not in zygote.ON:  # unset or "on": a zygote; anything else is a mistake
            raise RuntimeError(f"{zygote.ENV}={value!r}: 'off' (no zygote) or 'on' / unset (the lab's own zygote)")
        zdir = self.sdir / ZYGOTE_DIR
        zdir.mkdir(mode=0o700, exist_ok=True)
        path = str(zdir / "zygote.sock")
        self.start_daemon("supervisor", "zygote", zmod.argv(sys.executable, path), env_wrap=zmod.environ)
        self.zygote = path

    def _zygote_start(self, host: str, argv: list[str], env: dict[str, str], log_fd: int) -> Any:
        """Start ``argv`` in ``host``'s network and mount namespaces as a fork of the lab's
        zygote (what ``host.popen``'s ``mnexec -da`` does by exec); None: exec it (no zygote, not
        the venv's Python, or the zygote failed: logged)."""
        if self.zygote is None or zygote.run_spec(argv, sys.executable, "/") is None:
            return None
        if not self.zygote_ready:  # it binds its socket first thing: a moment after its start
            deadline = time.monotonic() + 10
            while not os.path.exists(self.zygote) and time.monotonic() < deadline:
                time.sleep(0.01)
            self.zygote_ready = True
        pid = self.hosts[host].pid
        fds: list[int] = []
        try:
            fds = [os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC) for ns in ("mnt", "net")]
            return zygote.spawn(self.zygote, argv, env=env, cwd="/", stdout=log_fd, stderr=log_fd,
                                mnt=fds[0], net=fds[1], priority=os.getpriority(os.PRIO_PROCESS, 0))
        except (OSError, zygote.ZygoteError, ValueError) as exc:
            _log(f"warning: the zygote did not start {' '.join(argv[:3])} on {host} ({exc}): starting it by exec")
            return None
        finally:
            for fd in fds:
                os.close(fd)

    def start_external_services(self) -> None:
        """The walkthrough's "internet": every external host serves HTTP 200 on :80.

        busybox httpd with a one-page document root under the lab's state dir;
        recorded like every other service, so down/clean end it by PID.
        """
        from testbed.k8s.images import BUSYBOX

        for ext in self.topo.external:
            if ext.name not in self.names:
                continue
            www = self.sdir / "www" / ext.name
            www.mkdir(parents=True, exist_ok=True)
            (www / "index.html").write_text(
                f"<html><body><h1>{ext.name}</h1><p>calicolab's in-lab internet host "
                f"{ext.address} (lab {self.lab}).</p></body></html>\n")
            self.start_service(ext.name, "httpd",
                               [BUSYBOX, "httpd", "-f", "-p", f"{ext.address}:80", "-h", str(www)])

    def start_pki(self) -> None:
        """Make the PKI, the kubeconfigs and the static pod manifests (testbed.lab.kubeadm) in a
        forked child (:mod:`testbed.lab.forkcall`; forked before any thread starts, recorded as
        the service ``supervisor/pki`` until :meth:`join_pki` reaps it): its imports
        (cryptography, yaml: ~0.1 s) and keys (the ServiceAccount's RSA 2048 key: 0.12-0.42 s
        of CPU) run on another CPU while the network is built. On a thread they shared the
        interpreter lock with the build, and the kubelets waited for them."""
        from testbed.lab.forkcall import ForkCall

        pool = str(self.topo.calico.pool.cidr)
        # one machine's part of a lab over several: the kubeconfigs of every node, the other
        # machines' copied to them (testbed.multihost.controller)
        state = dict(self.state, hosts=labstate.members(self.topo)) if self.part else self.state

        def make() -> None:
            from testbed.lab import kubeadm

            kubeadm.init(state, pool)

        self.pki = ForkCall(make, "making the lab's PKI")
        self._record_helper("supervisor/pki", self.pki.start())

    def join_pki(self) -> None:
        """Wait for the PKI's child; raise if it failed."""
        if self.pki is None:
            return
        try:
            self.pki.wait()
        finally:
            self._forget_helper("supervisor/pki")

    def wait_apiserver(self, timeout: float = 30.0) -> None:
        """Wait until the API server (a static pod of the control-plane node) answers
        /readyz ``ok`` (admin credentials); ``timeout`` scales with CALICOLAB_DEADLINE_SCALE
        (a VM under TCG)."""
        from testbed.lab import kubeadm
        from testbed.poll import deadline_scale

        timeout *= deadline_scale()

        cp = self.topo.control_plane
        key = f"{cp.name}/kubelet"
        conf = str(kubeadm.admin_conf(self.state))

        def poll() -> None:
            from kubeclient import Client, from_kubeconfig

            client = Client(from_kubeconfig(conf))
            client.config.timeout = 2.0
            deadline = time.monotonic() + timeout
            last: Any = None
            while time.monotonic() < deadline:
                proc = self.procs.get(key)
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"the kubelet of {cp.name} (which runs the control plane's static "
                                       f"pods) exited ({proc.returncode}); see "
                                       f"{self.sdir / 'logs' / (cp.name + '.kubelet.log')}")
                try:
                    if client.request("GET", "/readyz", raw=True) == b"ok":
                        return
                except Exception as exc:  # noqa: BLE001 - not up yet
                    last = exc
                time.sleep(0.02)
            raise RuntimeError(f"kube-apiserver on {cp.name} not ready after {timeout:.0f}s (last: {last}); "
                               f"its log: kubectl logs, or the kubelet root dir of {cp.name}, "
                               "pods/<uid>/containers/kube-apiserver/log")

        nsmod.run_in(self.state["hosts"][cp.name]["netns"], poll)

    def wait_etcd(self) -> None:
        """Wait until the lab's etcd answers /health from the control-plane node (on another
        machine's part: from one of this machine's nodes, over the lab's network)."""
        cp = self.topo.control_plane
        if not self.local_nodes:
            return  # routers and external hosts only: nothing here talks to etcd
        ns = self.state["hosts"][cp.name if self.has_cp else self.local_nodes[0].name]["netns"]
        wait = (30 if self.has_cp else 60) * deadline_scale()
        deadline = time.monotonic() + wait
        last: Any = None
        kubelet = self.procs.get(f"{cp.name}/kubelet")
        while time.monotonic() < deadline:
            if self.has_cp and kubelet is not None and kubelet.poll() is not None:
                raise RuntimeError(f"the kubelet of {cp.name} (which runs etcd as a static pod) exited "
                                   f"({kubelet.returncode}); see {self.sdir / 'logs' / (cp.name + '.kubelet.log')}")
            try:
                code, body = nsmod.http_get(ns, str(cp.address), 2379, "/health", timeout=1.0)
                last = (code, body[:80])
                if code == 200 and b'"true"' in body:
                    return
            except OSError as exc:
                last = exc
            time.sleep(0.02)
        raise RuntimeError(f"etcd on {cp.name} not healthy after {wait:.0f}s (last: {last!r}); it runs as the "
                           f"static pod etcd-{cp.name} (see the control plane's kubelet log)")

    def start_node_services(self, nodes: list[str] | None = None) -> None:
        """The kubelet on every node (on ``nodes`` only, when given: a big lab's nodes are
        admitted a window at a time, :meth:`admit_nodes`), with its own credentials
        (/etc/kubernetes/kubelet.conf).

        The control-plane node's kubelet runs the control plane as static pods from
        /etc/kubernetes/manifests (etcd, kube-apiserver, kube-controller-manager,
        kube-scheduler: testbed.lab.kubeadm), as on a kubeadm cluster; kube-proxy comes as
        a DaemonSet once the API server is up (kubeadm_init).
        """
        from testbed.lab import kubeadm

        self.join_pki()

        py = sys.executable
        rt = self.topo.runtime
        if rt != "netns":
            self.start_runtime_daemons()
        # kubeadm init on the control plane, then a join per worker, in the topology's order
        order = self.node_order()
        started = []
        for n in self.local_nodes:
            if nodes is not None and n.name not in nodes:
                continue
            if f"{n.name}/kubelet" in self.procs:
                continue  # started already (the control plane's, as soon as its node was built)
            argv = [py, "-m", "testbed.k8s.kubelet", "--node", n.name, "--node-ip", str(n.address),
                    "--kubeconfig", kubeadm.KUBELET_CONF, "--cluster-dns", kubeadm.CLUSTER_DNS,
                    "--cluster-domain", kubeadm.CLUSTER_DOMAIN]
            if n.is_control_plane:
                argv += ["--control-plane", "--pod-manifest-path", f"/etc/kubernetes/{kubeadm.MANIFESTS}"]
            elif order.index(n.name) > 0:  # kubeadm join after init, one node after the other
                argv += ["--join-after", order[order.index(n.name) - 1]]
            if rt != "netns":
                argv += ["--container-runtime", rt, "--runtime-dir", str(labstate.runtime_dir(self.lab, n.name))]
            self.start_service(n.name, "kubelet", argv)
            started.append(n.name)
        if self.has_cp and self.topo.control_plane.name in started:
            self.progress(f"starting the kubelets (the control plane as static pods on "
                          f"{self.topo.control_plane.name})")
        self.save()

    def node_order(self) -> list[str]:
        """The nodes in the order they join: the control plane, then the workers in the
        topology's order (kubeadm init, then a join per worker)."""
        return [self.topo.control_plane.name, *(m.name for m in self.topo.nodes if not m.is_control_plane)]

    def start_window(self) -> int:
        """How many nodes may be starting at once (testbed.lab.admission; CALICOLAB_START_WINDOW
        overrides it, e.g. for bench/lab_up.py's comparison)."""
        from testbed.lab import admission

        return admission.window_size(os.cpu_count(), os.environ.get(admission.WINDOW_ENV))

    def admit_nodes(self, window: int) -> list[str]:
        """Start the first ``window`` nodes' kubelet and calico-node now and the others on a
        thread, each once a starting node's calico-node answers /readiness (or after
        :data:`testbed.lab.admission.SETTLE_TIMEOUT`). Returns every node calico-node will run on."""
        from testbed.lab import admission

        mine = {n.name for n in self.local_nodes}
        gate = admission.StartWindow([n for n in self.node_order() if n in mine], window)
        self.admitted.clear()  # before the first start: start_kube_controllers waits for it

        def ready(name: str) -> bool:
            try:
                code, _ = nsmod.http_get(self.state["hosts"][name]["netns"], "127.0.0.1",
                                         labstate.HEALTH_PORT, "/readiness", timeout=0.5)
            except OSError:
                return False
            return code == 200

        def start(names: list[str]) -> None:
            with self.lock:  # teardown takes the lock to stop everything: nothing starts after it
                if self.stop_event.is_set():
                    return
                self.start_node_services(names)
                self.start_calico_nodes(names)

        first = gate.admit(time.monotonic(), ready)
        start(first)
        self.progress(f"starting {len(first)} of {len(mine)} node(s); the others as nodes settle "
                      f"(at most {window} starting at once)")

        def run() -> None:
            try:
                while not gate.done and not self.stop_event.wait(ADMIT_INTERVAL):
                    more = gate.admit(time.monotonic(), ready)
                    if more:
                        start(more)
                        _log(f"admitted {', '.join(more)} ({len(gate.waiting)} waiting)")
                if gate.timed_out:
                    _log(f"admission: not settled within {gate.settle_timeout:.0f}s: {', '.join(gate.timed_out)}")
            except Exception:  # noqa: BLE001 - reported; wait_agents_ready warns about the rest
                _log("admitting nodes failed:\n" + traceback.format_exc())
            finally:
                self.admitted.set()

        threading.Thread(target=run, name="admission", daemon=True).start()
        return [n for n in self.node_order() if n in mine]

    def start_runtime_daemons(self) -> None:
        """One containerd per node (and, for ``runtime: docker``, one dockerd on it), each in
        the node's network namespace through ``nsenter --net`` (the machine's mount namespace
        and cgroup view, which containerd and runc need), with root, state and sockets under
        the node's runtime dir. Recorded as services: down and clean stop them by PID."""
        from testbed.k8s import containerd, dockerrt

        rt = self.topo.runtime
        self.progress(f"starting {rt} on {len(self.local_nodes)} node(s)")
        for n in self.local_nodes:
            base = labstate.runtime_dir(self.lab, n.name)
            nspath = nsmod.netns_path(self.state["hosts"][n.name]["netns"])
            self.start_daemon(n.name, "containerd", containerd.daemon_argv(nspath, base / "containerd"))
        deadline = time.monotonic() + 30
        for n in self.local_nodes:
            ctr = containerd.Ctr(containerd.socket_path(labstate.runtime_dir(self.lab, n.name) / "containerd"))
            while not ctr.ready():
                if time.monotonic() > deadline or self.procs[f"{n.name}/containerd"].poll() is not None:
                    raise RuntimeError(f"containerd on {n.name} did not answer within 30s "
                                       f"(see logs/{n.name}.containerd.log)")
                time.sleep(0.05)
        if rt != "docker":
            return
        for n in self.local_nodes:
            base = labstate.runtime_dir(self.lab, n.name)
            nspath = nsmod.netns_path(self.state["hosts"][n.name]["netns"])
            self.start_daemon(n.name, "dockerd", dockerrt.daemon_argv(nspath, base, self.lab, n.name))
        for n in self.local_nodes:
            sock = dockerrt.socket_path(labstate.runtime_dir(self.lab, n.name))
            while not dockerrt.ready(sock):
                if time.monotonic() > deadline + 30 or self.procs[f"{n.name}/dockerd"].poll() is not None:
                    raise RuntimeError(f"dockerd on {n.name} did not answer within 60s "
                                       f"(see logs/{n.name}.dockerd.log)")
                time.sleep(0.1)

    def start_daemon(self, host: str, service: str, argv: list[str],
                     env_wrap: Any = None) -> subprocess.Popen:
        """Start ``argv`` (an ``nsenter --net`` command line) from the supervisor: the
        machine's mount namespace, the lab's cgroup; logged and recorded like a service."""
        logdir = self.sdir / "logs"
        logdir.mkdir(exist_ok=True)
        logpath = logdir / f"{host}.{service}.log"
        env = labstate.node_env(self.state, host)
        if env_wrap is not None:
            env = env_wrap(env)
        with open(logpath, "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    env=env, cwd="/", start_new_session=True)
        key = f"{host}/{service}"
        with self.lock:
            self.procs[key] = proc
            self.specs[key] = (host, service, argv, None)
            rst = self.restarters.setdefault(key, Restarter(service))
            rst.started(time.monotonic())
            self.state["services"][key] = {"pid": proc.pid, "start": labstate.proc_starttime(proc.pid),
                                           "argv": argv, "log": str(logpath),
                                           "started": time.time(), "exit": None,
                                           "restarts": rst.restarts, "restart_policy": rst.policy,
                                           "next_start": None, "last_exit": rst.last_exit,
                                           "from_machine": True}
        _log(f"started {key} pid {proc.pid}: {' '.join(a if len(a) < 300 else a[:40] + '...' for a in argv)}")
        return proc

    def kubeadm_init(self) -> None:
        """What `kubeadm init` leaves in the API once the control plane answers: the
        kubeadm-config ConfigMap and the add-ons, kube-proxy (a DaemonSet on every node) and
        CoreDNS (Deployment coredns, Service kube-dns 10.96.0.10)."""
        from testbed.lab import kubeadm

        pool = str(self.topo.calico.pool.cidr)
        conf = str(kubeadm.admin_conf(self.state))

        def work() -> list[str]:
            from kubeclient import Client, from_kubeconfig

            client = Client(from_kubeconfig(conf))
            return kubeadm.apply_addons(client, [kubeadm.kubeadm_config(pool), *kubeadm.kube_proxy_addon(
                self.state, pool), *kubeadm.coredns_addon()])

        made = nsmod.run_in(self.state["hosts"][self.topo.control_plane.name]["netns"], work)
        if made:
            self.progress("kubeadm add-ons: " + ", ".join(made))

    def apply_bgp_config(self, patch_nodes: bool) -> None:
        """The topology's BGP settings as Calico resources (what a user would calicoctl apply).

        Mesh off or a non-default AS -> BGPConfiguration ``default``; every external
        peer -> a BGPPeer (global, or for one node); route reflectors -> a BGPPeer
        ``peer-with-route-reflectors`` (all nodes peer with nodes labelled
        ``route-reflector=true``) and, once their Node resources exist
        (``patch_nodes``), that label and a routeReflectorClusterID on each RR node.
        """
        bgp = self.topo.calico.bgp
        if bgp.mesh and bgp.as_number == 64512 and not bgp.external_peers \
                and not bgp.route_reflectors:
            return
        if importlib.util.find_spec("datastore.client") is None:
            self._skip("BGP settings: datastore not present")
            return

        def work() -> list[str]:
            from datastore import errors
            from datastore.resources import BGPConfiguration, BGPPeer, Metadata, NodeBGPSpec

            client = self.datastore_client()
            done = []
            if not bgp.mesh or bgp.as_number != 64512:
                client.apply(BGPConfiguration(
                    metadata=Metadata(name="default"),
                    spec=BGPConfiguration.Spec(node_to_node_mesh_enabled=bgp.mesh,
                                               as_number=bgp.as_number)))
                done.append("BGPConfiguration default")
            for i, peer in enumerate(bgp.external_peers):
                name = peer.name or f"external-{i}"
                client.apply(BGPPeer(metadata=Metadata(name=name), spec=BGPPeer.Spec(
                    node=peer.node, peer_ip=str(peer.address), as_number=peer.as_number)))
                done.append(f"BGPPeer {name}")
            if bgp.route_reflectors:
                client.apply(BGPPeer(metadata=Metadata(name="peer-with-route-reflectors"),
                                     spec=BGPPeer.Spec(node_selector="all()",
                                                       peer_selector="route-reflector == 'true'")))
                done.append("BGPPeer peer-with-route-reflectors")
            for rr in bgp.route_reflectors if patch_nodes else ():
                for _attempt in range(10):
                    try:
                        node = client.get("Node", rr)
                    except errors.NotFound:
                        break
                    node.metadata.labels = dict(node.metadata.labels or {},
                                                **{"route-reflector": "true"})
                    node.spec.bgp = node.spec.bgp or NodeBGPSpec()
                    node.spec.bgp.route_reflector_cluster_id = "244.0.0.1"
                    try:
                        client.update(node)
                        done.append(f"route reflector {rr}")
                        break
                    except errors.Conflict:
                        continue
            return done

        done = nsmod.run_in(self.state["hosts"][self.topo.control_plane.name]["netns"], work)
        if done:
            self.progress("BGP settings: " + ", ".join(done))

    def datastore_client(self) -> Any:
        """Calico's datastore as the lab's components see it (call inside the control-plane
        netns): the API server's custom resources (admin kubeconfig), or the lab's etcd."""
        from datastore import Client

        if self.kdd:
            from testbed.lab import kubeadm

            return Client.from_env({"DATASTORE_TYPE": "kubernetes",
                                    "KUBECONFIG": str(kubeadm.admin_conf(self.state))}, timeout=5.0)
        return Client(self.state["etcd_endpoints"])

    def install_crds(self) -> None:
        """The Kubernetes datastore: Calico's CRDs (crd.projectcalico.org/v1, what the install
        manifest carries) in the API server, before any Calico component starts."""
        from testbed.lab import kubeadm

        conf = str(kubeadm.admin_conf(self.state))

        def work() -> list[str]:
            from datastore.kdd import install_crds
            from kubeclient import Client, from_kubeconfig

            return install_crds(Client(from_kubeconfig(conf)), workers=CRD_WORKERS)

        made = nsmod.run_in(self.state["hosts"][self.topo.control_plane.name]["netns"], work)
        self.progress(f"Kubernetes datastore: {len(made)} Calico CRDs (crd.projectcalico.org/v1) installed")

    def wait_nodes(self, ready: bool) -> None:
        """Wait (bounded) until every node is registered (and Ready if ``ready``); warn otherwise."""
        if not any(k.endswith("/kubelet") for k in self.procs):
            return
        from testbed.lab import kubeadm

        conf = str(kubeadm.admin_conf(self.state))
        want = {n.name for n in self.topo.nodes}
        timeout = self.ready_timeout

        def poll() -> dict[str, bool]:
            # watched, not polled: a list of every Node every 50 ms cost the API server and the
            # supervisor ~1-2 CPU-seconds of a 50-node start-up
            from kubeclient import Client, Informer, from_kubeconfig

            changed = threading.Event()
            nodes = Informer(Client(from_kubeconfig(conf)), "v1", "nodes")
            nodes.add_handler(lambda *_: changed.set())
            nodes.start()
            deadline = time.monotonic() + timeout
            seen: dict[str, bool] = {}
            try:
                while time.monotonic() < deadline:
                    changed.clear()
                    seen = {}
                    for obj in nodes.snapshot():
                        conds = (obj.get("status") or {}).get("conditions") or []
                        # Ready, and its not-ready NoSchedule taint is gone: the workloads go in
                        # next, and a pod applied before that cannot be scheduled there (3 nodes:
                        # 3 of 4 pods on one worker). The NoExecute one may stay a moment: every
                        # pod tolerates it for 300 s (DefaultTolerationSeconds, at admission)
                        taints = (obj.get("spec") or {}).get("taints") or []
                        seen[obj["metadata"]["name"]] = any(
                            c.get("type") == "Ready" and c.get("status") == "True" for c in conds) and not any(
                            t.get("key") == "node.kubernetes.io/not-ready" and t.get("effect") == "NoSchedule"
                            for t in taints)
                    if want <= set(seen) and (not ready or all(seen[n] for n in want)):
                        return seen
                    changed.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            finally:
                nodes.stop(wait=0)
            return seen

        what = "Ready" if ready else "registered"
        self.progress(f"waiting for {len(want)} node(s) to be {what}")
        seen = nsmod.run_in(self.state["hosts"][self.topo.control_plane.name]["netns"], poll)
        missing = sorted(n for n in want if n not in seen or (ready and not seen[n]))
        if missing:
            self.progress(f"warning: node(s) {', '.join(missing)} not {what} after "
                          f"{timeout:.0f}s (see logs/<node>.kubelet.log)")

    def _skip(self, msg: str) -> None:
        self.progress(f"skipping {msg}")
        if msg not in self.state["skipped"]:
            self.state["skipped"].append(msg)

    def calico_node_env(self) -> dict[str, str]:
        """calico-node's environment from the topology, plus the lab's BGP start-up timers
        (:data:`LAB_BGP_TIMERS`) unless CALICOLAB_BGP_TIMERS is set already."""
        env = dict(self.topo.calico_node_env())
        if BGP_TIMERS_ENV not in env and BGP_TIMERS_ENV not in os.environ:
            env[BGP_TIMERS_ENV] = LAB_BGP_TIMERS
        # run as a lab service, not a pod, calico-node has no ServiceAccount token: the
        # Kubernetes API (install-cni's calico-kubeconfig for the CNI plugin) with the node's
        # admin kubeconfig instead
        env.setdefault("KUBECONFIG", "/etc/kubernetes/admin.conf")
        return env

    def start_calico_nodes(self, nodes: list[str] | None = None) -> list[str]:
        """``up`` without --no-cni (etcd datastore): start calico-node on every node (on
        ``nodes`` only, when given: :meth:`admit_nodes`) directly, as a lab service (the fast
        path for big labs: no DaemonSet round trip, no Typha in between). The Kubernetes
        datastore installs the operator's layout instead (:meth:`install_operator_layout`)."""
        exe = labstate.VENV_BIN / "calico-node"
        if not exe.exists():
            raise RuntimeError(f"calico-node is not installed ({exe} missing): run scripts/setup.sh")
        started = []
        for n in self.local_nodes:
            if nodes is not None and n.name not in nodes:
                continue
            proc = self.procs.get(f"{n.name}/calico-node")
            if proc is not None and proc.poll() is None:
                continue
            self.start_service(n.name, "calico-node", [str(exe)], self.calico_node_env())
            started.append(n.name)
        self.start_kube_controllers()
        self.state["cni_installed"] = True
        self.save()
        return started

    def install_operator_layout(self, direct: bool = False) -> list[str]:
        """The Kubernetes datastore: Calico as the Tigera operator lays it out, applied through
        the API server (manifests/calico-system.yaml, testbed.k8s.install): the DaemonSet
        controller puts a ``calico-node-<5>`` pod on every node, Deployments run calico-typha
        (Felix and confd behind it, found through its Service, as Calico recommends in this
        mode) and calico-kube-controllers (the node controller only: the rest is derived by
        the datastore); the kubelets run them. Returns the nodes calico-node will run on.

        ``kubectl apply -f -`` of the rendered layout (``install-cni``), or with ``direct`` (``up``)
        the same objects created through the API as the operator creates them (no kubectl
        process: its start and discovery were ~0.45 s on the path to calico-node's pods)."""
        from testbed.k8s.install import install_operator_layout, render_operator_layout

        self.progress("installing Calico in namespace calico-system (the operator's layout: calico-node "
                      "DaemonSet, calico-typha and calico-kube-controllers Deployments)")
        timers = os.environ.get(BGP_TIMERS_ENV) or LAB_BGP_TIMERS
        if direct:
            import yaml

            from testbed.lab import kubeadm

            docs = [d for d in yaml.safe_load_all(render_operator_layout(self.state, bgp_timers=timers)) if d]
            conf = str(kubeadm.admin_conf(self.state))

            def work() -> list[str]:
                from kubeclient import Client, from_kubeconfig

                return kubeadm.apply_addons(Client(from_kubeconfig(conf)), docs)

            lines = nsmod.run_in(self.state["hosts"][self.topo.control_plane.name]["netns"], work)
        else:
            lines = install_operator_layout(self.state, bgp_timers=timers)
        for line in lines:
            _log(f"install: {line}")
        self.state["cni_installed"] = True
        self.state["skipped"] = [m for m in self.state.get("skipped", []) if not m.startswith("calico-node")]
        self.save()
        return [n.name for n in self.local_nodes]

    def start_kube_controllers(self) -> None:
        """calico-kube-controllers as calico-etcd.yaml runs it (one instance, host network): the
        namespace/serviceaccount profiles, Kubernetes NetworkPolicies, pod labels, node clean-up
        (on the control plane's machine only, when the lab spans several: testbed.multihost).

        Started on a thread once every node of the lab is registered (bounded by the lab's
        ready timeout): its node controller cleans up a Calico Node whose Kubernetes Node is
        missing (after NODE_MISSING_MIN), and calico-node runs here as a lab service from the
        start, before the kubelets' one-after-the-other joins are done (in a 100-node start
        the last joins ~60 s after its calico-node). Started earlier, it cleaned up nodes not
        yet joined, and (before its allocations rule) released their tunnel addresses, which
        IPAM gave to pods that then never answered. With the DaemonSet, calico-node runs only
        on a registered node, as on a cluster."""
        cp = self.topo.control_plane.name
        proc = self.procs.get(f"{cp}/calico-kube-controllers")
        if not self.has_cp or (proc is not None and proc.poll() is None) or \
                (self.kc_thread is not None and self.kc_thread.is_alive()):
            return

        def run() -> None:
            self.admitted.wait()  # a big lab's last nodes start late (admit_nodes)
            self.wait_registered(self.ready_timeout * deadline_scale())
            with self.lock:  # teardown takes the lock to stop everything: nothing starts after it
                if self.stop_event.is_set():
                    return
                self.start_service(cp, "calico-kube-controllers", [sys.executable, "-m", "agent.kubecontrollers"],
                                   {"DATASTORE_TYPE": self.topo.calico.datastore,
                                    "ENABLED_CONTROLLERS": "policy,namespace,serviceaccount,workloadendpoint,node",
                                    # Kubernetes objects through the API server (kubeadm's admin.conf)
                                    "KUBECONFIG": "/etc/kubernetes/admin.conf"})
                self.save()

        self.kc_thread = threading.Thread(target=run, name="kube-controllers", daemon=True)
        self.kc_thread.start()

    def wait_registered(self, timeout: float) -> bool:
        """Wait until every node of the lab has a Node in the API (each kubelet registered),
        at most ``timeout`` s (also while the API server is not up yet); False if not all did."""
        from testbed.lab import kubeadm

        conf = str(kubeadm.admin_conf(self.state))
        want = {n.name for n in self.topo.nodes}

        def poll() -> bool:
            from kubeclient import Client, from_kubeconfig

            client = Client(from_kubeconfig(conf))
            client.config.timeout = 2.0
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not self.stop_event.is_set():
                try:
                    if want <= {o["metadata"]["name"] for o in client.list("v1", "nodes")["items"]}:
                        return True
                except Exception:  # noqa: BLE001 - not up yet: keep polling until the deadline
                    pass
                time.sleep(0.05)
            return False

        if not nsmod.run_in(self.state["hosts"][self.topo.control_plane.name]["netns"], poll):
            _log(f"not every node registered within {timeout:.0f}s; starting calico-kube-controllers anyway")
            return False
        return True

    def install_cni(self, operator: bool = False, manifest: str | None = None) -> list[str]:
        """Install Calico as the walkthrough's second seed does, by manifest: render the manifest
        of the lab's datastore (manifests/calico.yaml, or calico-etcd.yaml) and ``kubectl apply``
        it (testbed.k8s.install), or apply the file ``manifest`` as it is (``install-cni
        --manifest FILE``: Calico's own calico.yaml). The DaemonSet controller then puts a
        ``calico-node-<5>`` pod on every node (plus calico-kube-controllers and calico-typha),
        which the kubelets run. ``operator``: the Tigera operator installed Calico already
        (``install-cni --operator``, testbed.k8s.tigera.install): recorded, nothing applied.
        Returns the nodes calico-node will run on."""
        from testbed.k8s.install import apply_file, install_by_manifest

        if operator:
            if not self.kdd:
                raise RuntimeError("the operator installs Calico in the Kubernetes datastore only")
            self.state["cni_installed"] = True
            self.state["skipped"] = [m for m in self.state.get("skipped", []) if not m.startswith("calico-node")]
            self.save()
            return [n.name for n in self.local_nodes]

        if importlib.util.find_spec("agent.main") is None:
            raise RuntimeError("calico-node is not available yet (agent/main.py missing)")
        if self.state.get("cni_installed"):
            return []  # already installed (by manifest, or started directly by `up`)
        if not self.has_cp:  # the control plane's machine applied calico.yaml: its DaemonSet
            self.state["cni_installed"] = True  # runs calico-node here, through the kubelets
            self.save()
            return [n.name for n in self.local_nodes]
        timers = os.environ.get(BGP_TIMERS_ENV) or self.calico_node_env().get(BGP_TIMERS_ENV,
                                                                              LAB_BGP_TIMERS)
        lines = apply_file(self.state, manifest) if manifest else install_by_manifest(self.state, bgp_timers=timers)
        for line in lines:
            _log(f"install-cni: {line}")
        self.state["cni_installed"] = True
        self.state["skipped"] = [m for m in self.state.get("skipped", []) if not m.startswith("calico-node")]
        self.save()
        return [n.name for n in self.local_nodes]

    def wait_agents_ready(self, nodes: list[str]) -> None:
        """Wait (bounded) until calico-node on ``nodes`` answers /readiness 200 and its
        /status/tunnels shows the tunnel addresses allocated and on the node's devices
        (:func:`tunnels_settled`: allocate-tunnel-addrs runs beside Felix, as in Calico, so
        /readiness can come first); warn otherwise (the bound counts from the last node's
        admission, :meth:`admit_nodes`). A sweep asks every pending node; sweeps are 50 ms
        apart, more with many nodes pending (at most ~100 requests a second: at 50 ms, a
        50-node lab's sweeps were 1,000 a second of calico-node and supervisor CPU)."""
        self.admitted.wait()
        deadline = time.monotonic() + self.ready_timeout
        pending = set(nodes)
        ready: set[str] = set()
        while pending and time.monotonic() < deadline:
            for name in sorted(pending):
                proc = self.procs.get(f"{name}/calico-node")
                if proc is not None and proc.poll() is not None:
                    self.progress(f"warning: calico-node on {name} exited ({proc.returncode})")
                    pending.discard(name)
                    continue
                netns = self.state["hosts"][name]["netns"]
                try:
                    if name not in ready:
                        code, _ = nsmod.http_get(netns, "127.0.0.1", labstate.HEALTH_PORT, "/readiness",
                                                 timeout=0.5)
                        if code != 200:
                            continue
                        ready.add(name)
                    code, body = nsmod.http_get(netns, "127.0.0.1", labstate.HEALTH_PORT,
                                                "/status/tunnels", timeout=0.5)
                    if code == 404 or (code == 200 and tunnels_settled(json.loads(body))):
                        pending.discard(name)
                except (OSError, ValueError):
                    pass
            time.sleep(max(0.05, 0.01 * len(pending)))
        if pending - ready:
            self.progress(f"warning: calico-node not ready after {self.ready_timeout:.0f}s on "
                          f"{', '.join(sorted(pending - ready))} (see logs/<node>.calico-node.log)")
        if pending & ready:
            self.progress(f"warning: calico-node ready but its tunnel address not allocated or not on "
                          f"tunl0/vxlan.calico after {self.ready_timeout:.0f}s on "
                          f"{', '.join(sorted(pending & ready))} (its /status/tunnels says why)")

    def start_workloads(self) -> tuple[subprocess.Popen | None, bytes] | None:
        """Prepare the workloads (every one, in file order, as one multi-document stream) for
        :meth:`finish_workloads`, which applies them once the nodes are Ready, so the scheduler
        spreads the pods over every node, as on a cluster that was up before they were applied
        (applied earlier, every pod lands on the first node to become Ready).

        Objects that ``kubectl apply`` would simply create are created through the API as it
        creates them (testbed.lab.workloads: no kubectl process, its start, discovery and
        OpenAPI downloads were 0.4-0.7 s between Ready and the pods); any other stream goes to
        `kubectl apply -f -` in the control-plane node, started now so its start-up overlaps
        the nodes'."""
        if not self.topo.workloads:
            return None
        import yaml

        from kubeclient.client import BUILTIN
        from testbed.lab import workloads

        wdir = self.sdir / "workloads"
        wdir.mkdir(exist_ok=True)
        path = wdir / "all.yaml"
        docs = [d for w in self.topo.workloads for d in w.documents]
        text = yaml.safe_dump_all(docs, sort_keys=False)
        path.write_text(text)
        if workloads.plan(docs, BUILTIN) is not None:
            return None, text.encode()
        return self._kubectl_apply(), text.encode()

    def _kubectl_apply(self) -> subprocess.Popen:
        """`kubectl apply -f -` in the control-plane node (admin credentials), stdin a pipe."""
        cp = self.topo.control_plane.name
        env = labstate.node_env(self.state, cp)
        env["KUBECONFIG"] = "/etc/kubernetes/admin.conf"
        return self.hosts[cp].popen([str(labstate.VENV_BIN / "kubectl"), "apply", "-f", "-"],
                                    env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)

    def finish_workloads(self, started: tuple[subprocess.Popen | None, bytes] | None) -> None:
        """Apply the workloads (created through the API, or handed to the waiting `kubectl
        apply`, :meth:`start_workloads`); raise if that failed."""
        if started is None:
            return
        proc, text = started
        self.progress("applying " + ", ".join(w.source for w in self.topo.workloads))
        if proc is None:
            import yaml

            from kubeclient import KubeError
            from kubeclient.client import BUILTIN
            from testbed.lab import kubeadm, workloads

            objs = workloads.plan([d for d in yaml.safe_load_all(text) if d is not None], BUILTIN) or []
            conf = str(kubeadm.admin_conf(self.state))

            def work() -> list[str] | str:
                from kubeclient import Client, from_kubeconfig

                try:
                    return workloads.create(Client(from_kubeconfig(conf)), objs)
                except (KubeError, OSError) as exc:
                    return f"{type(exc).__name__}: {exc}"

            made = nsmod.run_in(self.state["hosts"][self.topo.control_plane.name]["netns"], work)
            if not isinstance(made, str):
                for line in made:
                    _log(f"workloads: {line}")
                return
            # kubectl says what is wrong in its own words; what was created is unchanged for it
            _log(f"workloads: creating through the API failed ({made}); handing them to kubectl apply")
            proc = self._kubectl_apply()
        out, err = proc.communicate(text, timeout=120 * deadline_scale())
        if proc.returncode != 0:
            raise RuntimeError("kubectl apply of the workloads failed: "
                               f"{(err or out).decode(errors='replace').strip()}")

    # ---------------------------------------------------------------- control socket
    def serve_control(self) -> None:
        """Accept control requests on control.sock in a thread."""
        path = self.sdir / "control.sock"
        if path.exists():
            path.unlink()
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(path))
        os.chmod(path, 0o600)
        srv.listen(8)
        self.server = srv
        threading.Thread(target=self._accept_loop, name="control", daemon=True).start()

    def _accept_loop(self) -> None:
        assert self.server is not None
        while not self.stop_event.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            try:
                while not data.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                req = json.loads(data or b"{}")
                reply = self.dispatch(req)
            except Exception as exc:  # noqa: BLE001 - reported to the caller
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            try:
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                pass

    def dispatch(self, req: dict) -> dict:
        """Handle one control request."""
        cmd = req.get("cmd")
        if cmd == "ping":
            return {"ok": True, "phase": self.state["phase"]}
        if cmd == "install-cni":
            with self.lock:
                started = self.install_cni(operator=bool(req.get("operator")), manifest=req.get("manifest") or None)
            self.wait_agents_ready(started)
            if self.has_cp:
                self.apply_bgp_config(patch_nodes=True)
                self.wait_nodes(ready=True)
            return {"ok": True, "started": started}
        if cmd == "stop":
            self.stop_event.set()
            return {"ok": True}
        return {"ok": False, "error": f"unknown request {cmd!r}"}

    # ---------------------------------------------------------------- run / stop
    def run(self) -> int:
        """Build, start, report ready, then hold the lab until told to stop."""
        t0 = time.monotonic()
        timings: dict[str, float] = {}
        self.state["timings"] = timings

        def mark(phase: str) -> None:
            timings[phase] = round(time.monotonic() - t0, 3)

        try:
            self.setup_process()
            self.start_mounter()  # forked before any thread starts
            if self.has_cp:
                self.start_pki()  # forked too
            self.start_zygote()  # its imports overlap the network's build
            cp = self.topo.control_plane.name

            def node_built(name: str) -> None:
                # the control plane's kubelet (etcd and the API server, the critical path)
                # starts as soon as its own node is up, while the other hosts are being built
                if name == cp and self.has_cp and self.topo.runtime == "netns":
                    self.start_node_services([cp])
                    mark("control-plane kubelet")

            self.build(on_ready=node_built)
            self.close_build()
            mark("network")
            # etcd, kubelets and calico-nodes start together: the node services
            # retry until the datastore answers, and their start-up overlaps etcd's.
            self.start_external_services()
            started: list[str] = []
            calico = not self.no_cni and not self.kdd and importlib.util.find_spec("agent.main") is not None
            window = self.start_window()
            if calico and self.topo.runtime == "netns" and len(self.local_nodes) > window:
                # a big lab: a window of nodes (kubelet + calico-node) starting at once
                started = self.admit_nodes(window)
                mark("kubelets")
            else:
                self.start_node_services()
                mark("kubelets")
                if self.no_cni:
                    self._skip("calico-node: --no-cni (run `calicolab install-cni` later)")
                elif importlib.util.find_spec("agent.main") is None:
                    self._skip("calico-node: agent.main not present")
                elif not self.kdd:
                    self.progress("starting calico-node on every node")
                    started = self.start_calico_nodes()
            self.wait_etcd()
            mark("etcd")
            applying = None
            if self.has_cp:
                self.wait_apiserver()
                mark("apiserver")
                if self.kdd:
                    # calico-node's DaemonSet once the CRDs are served: its controller puts a pod on
                    # each node as its kubelet registers the Node (the Calico Node is the Kubernetes
                    # Node), so nothing waits for the registrations here (a big lab's nodes register
                    # a window at a time). kubeadm's add-ons come after: no calico-node needs them,
                    # and CoreDNS waits for the CNI anyway; made first they held up calico-node's
                    # pods (~0.5 s of a 3-node start, bench/lab_up.py --datastore kubernetes)
                    self.install_crds()
                    mark("crds")
                    if not self.no_cni and importlib.util.find_spec("agent.main") is not None:
                        started = self.install_operator_layout(direct=True)
                        mark("calico-system")
                self.kubeadm_init()
                applying = self.start_workloads()
                self.apply_bgp_config(patch_nodes=False)
            nodes_ready = False
            if self.has_cp and started:
                # every node Ready (its kubelet found the CNI config calico-node's install-cni
                # wrote, as on a cluster): the workloads go in now, while calico-node finishes its
                # start-up (Felix's first sync, BGP), as `kubectl apply` after `kubectl wait node
                # --for=condition=Ready --all` would; Felix programs the pods as they come. Applied
                # after calico-node's readiness, they waited ~0.6 s more (3 nodes, bench/lab_up.py)
                self.admitted.wait()  # a big lab's last nodes start late (admit_nodes)
                self.wait_nodes(ready=True)
                mark("nodes")
                self.finish_workloads(applying)
                nodes_ready = True
            if started:
                self.wait_agents_ready(started)
                if self.has_cp:
                    self.apply_bgp_config(patch_nodes=True)
                mark("calico-node ready")
            if self.has_cp and not nodes_ready:
                self.wait_nodes(ready=bool(self.state.get("cni_installed")))
                mark("nodes")
                self.finish_workloads(applying)
            if self.kc_thread is not None:  # started once the nodes registered (start_kube_controllers)
                self.kc_thread.join()
            self.serve_control()
            self.state["phase"] = "ready"
            self.state["ready_after"] = round(time.monotonic() - t0, 3)
            self.save()
            self.progress(f"lab {self.lab} ready in {time.monotonic() - t0:.2f}s")
            self._emit("ready")
        except Exception as exc:  # noqa: BLE001 - reported, then everything is removed
            _log("build failed:\n" + traceback.format_exc())
            self._emit(f"error: {exc}")
            self._close_progress()
            self.state["phase"] = "failed"
            self.state["error"] = str(exc)
            self.save()
            self.teardown()
            return 1
        self._close_progress()
        while not self.stop_event.wait(REAP_INTERVAL):
            self._reap()
        self.teardown()
        return 0

    def _reap(self) -> None:
        """Notice services that exited and restart them as their restarter would
        (:mod:`testbed.lab.restarts`): one log line per exit and per restart."""
        changed = False
        now = time.monotonic()
        with self.lock:
            for key, proc in list(self.procs.items()):
                rec = self.state["services"].get(key)
                rst = self.restarters.get(key)
                if rec is None or rst is None:
                    continue
                rc = proc.poll()
                if rc is not None and rec.get("exit") is None:
                    wait = rst.exited(rc, now)
                    rec.update(exit=rc, last_exit=rc, next_start=time.time() + wait)
                    changed = True
                    _log(f"{key} (pid {proc.pid}) exited with {describe_exit(rc)}; restart "
                         f"{rst.restarts + 1} in {wait:g}s ({rst.policy})")
                elif rc is not None and rst.due(now) and not self.stop_event.is_set():
                    host, service, argv, extra_env = self.specs[key]
                    rst.restarted(now)
                    try:
                        if rec.get("from_machine"):
                            new = self.start_daemon(host, service, argv)
                        else:
                            new = self.start_service(host, service, argv, extra_env)
                    except Exception as exc:  # noqa: BLE001 - e.g. the node's shell is gone
                        wait = rst.exited(None, now)
                        rec.update(next_start=time.time() + wait, start_error=str(exc))
                        _log(f"restarting {key} failed: {exc}; next try in {wait:g}s")
                    else:
                        _log(f"restarted {key}: pid {new.pid} (restart {rst.restarts})")
                    changed = True
        if changed:
            self.save()

    def teardown(self) -> None:
        """Stop services, etcd and Mininet, then remove whatever is left (clean)."""
        self.state["phase"] = "stopping"
        try:
            self.save()
        except OSError:
            pass
        if self.server is not None:
            try:
                self.server.close()
            except OSError:
                pass
        with self.lock:  # admit_nodes starts no node after this
            self.stop_event.set()
            procs = [p for p in self.procs.values() if p.poll() is None]
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)  # mnexec -d made each its own session
            except OSError:
                p.terminate()
        deadline = time.monotonic() + 3
        for p in procs:
            try:
                p.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except OSError:
                    p.kill()
                p.wait()
        # the pods (the kubelets leave them running) and anything else of the lab go while
        # the links are up, so their TCP connections close at once (clean.kill_processes);
        # the Mininet shells stay for net.stop
        from testbed.lab.clean import kill_processes

        shells = {rec["pid"] for rec in self.state["hosts"].values() if rec.get("pid")}
        try:
            kill_processes(self.lab, shells)
        except OSError:
            _log("killing the lab's processes failed:\n" + traceback.format_exc())
        try:
            self.close_build()
        except OSError:
            _log("closing the build's helpers failed:\n" + traceback.format_exc())
        if self.networkd is not None:
            self.networkd.close()
        if self.net is not None:
            try:
                self.net.stop()
            except Exception:  # noqa: BLE001 - clean below removes what stop missed
                _log("net.stop failed:\n" + traceback.format_exc())
        _log("stopped; cleaning up")
        from testbed.lab.clean import clean_lab

        # leave the lab's cgroup first: clean kills every process in it
        root = labstate.cgroup_mount()
        if root is not None:
            labstate.join_cgroup(root)
        report = clean_lab(self.lab)
        _log(report.summary())


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m testbed.lab.supervisor``."""
    from kernel.preload import before_threads

    before_threads()  # before any thread imports lazily (kernel.preload)
    ap = argparse.ArgumentParser(prog="testbed.lab.supervisor", description=__doc__.splitlines()[0])
    ap.add_argument("--topology", required=True)
    ap.add_argument("--name")
    ap.add_argument("--no-cni", action="store_true")
    ap.add_argument("--datastore", choices=("kubernetes", "etcdv3"))
    ap.add_argument("--progress-fd", type=int)
    ap.add_argument("--ready-timeout", type=float, default=30.0)
    ap.add_argument("--runtime", default=None)
    args = ap.parse_args(argv)
    if args.progress_fd is not None:
        # only this process writes progress: the node shells (Popen with close_fds=False) and
        # every daemon must not inherit the pipe, or `up` would see no EOF if this process died
        os.set_inheritable(args.progress_fd, False)
    topo = load(args.topology, name=args.name, runtime=args.runtime, datastore=args.datastore)
    sup = Supervisor(topo, args.no_cni, args.progress_fd, args.ready_timeout)

    def on_signal(signum: int, _frame: Any) -> None:
        _log(f"signal {signum}: stopping")
        sup.stop_event.set()
        if sup.state.get("phase") == "starting":
            raise KeyboardInterrupt  # abort a build in progress; run() tears down

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        return sup.run()
    except KeyboardInterrupt:
        sup.teardown()
        return 1


if __name__ == "__main__":
    sys.exit(main())
