"""Side-by-side harness for the BGP benchmarks: our speaker and BIRD 2 under equal terms.

Each node is a network namespace on one bridge (``tests.netns.test_bgp_mesh.NetLab``).
Each node runs ONE DAEMON PROCESS, as a lab does: ours is ``python -m agent.bgp.daemon -c
speaker.json`` (a calico-node's speaker), BIRD's is Debian's ``bird -f -c bird.conf``. Both
are started with ``ip netns exec``, reconfigured by rewriting their file and sending SIGHUP,
stopped with SIGTERM. Timers are matched (BIRD's timers are whole seconds: its connect delay
floor is 1 s).

Observation is the same for both:
* kernel routes: one rtnetlink multicast listener (RTMGRP_IPV4_ROUTE) per namespace, in this
  process, records when each ``proto bird`` route appears (no polling);
* RIB counts: the daemon's control socket (BIRD's ``show route count``; ours ``show status``).

Our processes run from bytecode compiled once into a private cache prefix
(PYTHONPYCACHEPREFIX), as an installed package would, and with ``python -S``: the
speaker daemon imports only the standard library and this repository (the kernel layer
is stdlib netlink), so the venv's site initialisation (~19 ms a process) is skipped;
BIRD is a compiled binary.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from agent.bgp import config as C  # noqa: E402
from agent.bgp.fsm import Timers  # noqa: E402
from kernel import netns  # noqa: E402
from tests.netns.test_bgp_mesh import NetLab  # noqa: E402

PY = os.path.join(ROOT, ".venv", "bin", "python")
RTPROT_BIRD = 12
RTMGRP_IPV4_ROUTE = 0x40
SO_RCVBUFFORCE = 33
PYC_PREFIX = os.path.join(tempfile.gettempdir(), "calicolab-bench-pyc")
# The harness runs at nice -5 and starts both daemons at nice 0 (like everything else on
# the machine): spawning and observing 30 daemons is not starved by their start-up
HARNESS_NICE = -5

# matched timers: Calico's template (hold 240, keepalive 80, GR 120) with BIRD's floors
# for the connection timers (whole seconds)
TIMERS = Timers(connect_delay=1, connect_retry=1, error_wait_min=1, error_wait_max=2)


def require_root_and_bird() -> None:
    """Exit with a message when the harness cannot run here."""
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    if not shutil.which("bird") or not shutil.which("birdc"):
        sys.exit("needs BIRD 2 (Debian package bird2: scripts/setup.sh installs it)")
    os.nice(HARNESS_NICE)


def load() -> list[float]:
    """The 1/5/15-minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def median(xs: list[float]) -> float:
    return round(statistics.median(xs), 4)


def compile_bytecode() -> None:
    """Compile what a speaker process imports into PYC_PREFIX (stdlib included: with a
    prefix set Python looks for every module's bytecode there)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = PYC_PREFIX
    subprocess.run([PY, "-c", "import agent.bgp.daemon, agent.bgp.runner, agent.bgp.speaker, "
                    "agent.bgp.kernel, agent.bgp.ctl, agent.bgp.status, argparse, logging, "
                    "json, signal, kernel.netlink"],
                   cwd=ROOT, env=env, check=True)


def bird_version() -> str:
    out = subprocess.run(["bird", "--version"], capture_output=True, text=True)
    return (out.stdout + out.stderr).strip()


# ------------------------------------------------------------------ kernel route watcher


class RouteWatch:
    """Records the arrival time of every ``proto bird`` IPv4 route in each namespace."""

    def __init__(self, namespaces: list[str]):
        self.sel = selectors.DefaultSelector()
        self.lock = threading.Lock()
        self.routes: dict[str, dict[str, float]] = {ns: {} for ns in namespaces}
        self.overflow: set[str] = set()
        self._stop = False
        for ns in namespaces:
            sock = self._open(ns)
            self.sel.register(sock, selectors.EVENT_READ, ns)
        self.thread = threading.Thread(target=self._loop, name="routewatch", daemon=True)
        self.thread.start()

    @staticmethod
    def _open(ns: str) -> socket.socket:
        out: list = []

        def inside() -> None:  # a socket stays in the namespace it was created in
            try:
                netns.enter(ns)
                s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
                s.bind((0, RTMGRP_IPV4_ROUTE))
                s.setblocking(False)
                out.append(s)
            except BaseException as exc:  # noqa: BLE001 - reported below
                out.append(exc)

        t = threading.Thread(target=inside)
        t.start()
        t.join()
        if isinstance(out[0], BaseException):
            raise out[0]
        return out[0]

    def _loop(self) -> None:
        while not self._stop:
            for key, _ev in self.sel.select(0.05):
                ns = key.data
                while True:
                    try:
                        data = key.fileobj.recv(1 << 20)
                    except BlockingIOError:
                        break
                    except OSError:  # ENOBUFS: the count is no longer trustworthy
                        self.overflow.add(ns)
                        break
                    self._parse(ns, data, time.monotonic())

    def _parse(self, ns: str, data: bytes, now: float) -> None:
        table = self.routes[ns]
        off, end = 0, len(data)
        while off + 16 <= end:
            length, mtype = struct.unpack_from("=IH", data, off)
            if length < 16:
                break
            if mtype in (24, 25) and data[off + 16 + 5] == RTPROT_BIRD:  # NEW/DELROUTE
                dst_len = data[off + 17]
                dst = b"\0\0\0\0"
                a = off + 16 + 12
                stop = off + length
                while a + 4 <= stop:
                    alen, atype = struct.unpack_from("=HH", data, a)
                    if alen < 4:
                        break
                    if atype == 1:  # RTA_DST
                        dst = data[a + 4:a + 8]
                        break
                    a += (alen + 3) & ~3
                key = f"{socket.inet_ntoa(dst)}/{dst_len}"
                with self.lock:
                    if mtype == 24:
                        table.setdefault(key, now)
                    else:
                        table.pop(key, None)
            off += (length + 3) & ~3

    def count(self, ns: str) -> int:
        with self.lock:
            return len(self.routes[ns])

    def when(self, ns: str, prefix: str) -> float | None:
        with self.lock:
            return self.routes[ns].get(prefix)

    def wait(self, pred, timeout: float, what: str) -> float:
        """Poll ``pred()`` (cheap: reads the recorded tables) until true; return the
        monotonic time at which it held. The recorded arrival times give the exact end."""
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out ({timeout} s) waiting for {what}; counts: "
                                   f"{[self.count(ns) for ns in self.routes]}")
            if self.overflow:
                raise RuntimeError(f"route monitor overflowed in {sorted(self.overflow)}")
            time.sleep(0.002)
        return time.monotonic()

    def last_arrival(self, namespaces: list[str], prefixes: set[str] | None = None) -> float:
        """The latest recorded arrival among ``prefixes`` (all when None) in ``namespaces``."""
        with self.lock:
            times = [t for ns in namespaces for p, t in self.routes[ns].items()
                     if prefixes is None or p in prefixes]
        return max(times)

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()
        self.sel.close()


# ------------------------------------------------------------------ daemons


@dataclass
class Node:
    """What a node's daemon is told: address, peers, originated prefixes."""

    ns: str
    address: IPv4Address
    peers: list[IPv4Address]
    blackholes: list[str] = field(default_factory=list)   # e.g. its block
    unicast: list[str] = field(default_factory=list)      # announced, not programmed locally
    kernel: bool = True
    subnet: IPv4Network | None = None


def passive(me: IPv4Address, peer: IPv4Address) -> bool:
    return C.passive_towards(me, peer)


class Daemon:
    """One node's daemon process (subclasses: ours, BIRD)."""

    kind = ""

    def __init__(self, node: Node, workdir: str):
        self.node = node
        self.dir = os.path.join(workdir, f"{self.kind}-{node.ns}")
        os.makedirs(self.dir, exist_ok=True)
        self.sock = os.path.join(self.dir, "ctl")
        self.proc: subprocess.Popen | None = None
        self.logf = os.path.join(self.dir, "log")

    def write_config(self) -> None:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict:
        return dict(os.environ)

    def start(self) -> None:
        self.write_config()
        # back to the niceness the harness was started with (see HARNESS_NICE)
        self.proc = subprocess.Popen(["nice", "-n", str(-HARNESS_NICE), "ip", "netns", "exec",
                                      self.node.ns, *self.command()],
                                     cwd=ROOT, env=self.env(), stdin=subprocess.DEVNULL,
                                     stdout=open(self.logf, "ab"), stderr=subprocess.STDOUT)

    def cpu_s(self) -> float:
        """The daemon's own CPU time so far (user + system, seconds; ``ip netns exec`` and
        ``nice`` exec it, so the process started is the daemon)."""
        if self.proc is None:
            return 0.0
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def run_ns(self) -> int:
        """Nanoseconds the daemon's threads have run so far (``/proc/<pid>/task/*/schedstat``:
        finer than :meth:`cpu_s`'s clock ticks, for the cost of one UPDATE)."""
        if self.proc is None:
            return 0
        total = 0
        try:
            tasks = os.listdir(f"/proc/{self.proc.pid}/task")
        except OSError:
            return 0
        for tid in tasks:
            try:
                with open(f"/proc/{self.proc.pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass  # a thread that ended meanwhile
        return total

    def reconfigure(self) -> None:
        """Rewrite the file from ``node`` and send SIGHUP."""
        self.write_config()
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def query(self, command: str) -> str:
        """One command on the daemon's control socket (BIRD's protocol, both daemons):
        every reply line, codes included, up to the final 'NNNN ' line."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(self.sock)
            f = s.makefile("rwb")
            f.readline()  # greeting
            f.write(command.encode() + b"\n")
            f.flush()
            lines = []
            while True:
                line = f.readline().decode()
                if not line:
                    raise RuntimeError(f"{self.kind}: control socket closed mid-reply")
                lines.append(line.rstrip("\n"))
                if line[:4].isdigit() and line[4:5] == " ":
                    return "\n".join(lines)

    def rib_routes(self) -> int:
        raise NotImplementedError

    def log_tail(self) -> str:
        try:
            with open(self.logf, errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""


class Ours(Daemon):
    """``python -m agent.bgp.daemon``: the calicolab speaker, one process per node."""

    kind = "calicolab"

    def write_config(self) -> None:
        n = self.node
        peers = tuple(C.PeerConfig(C.mesh_name(a), a, 64512, passive=passive(n.address, a))
                      for a in n.peers)
        cfg = C.SpeakerConfig(
            router_id=n.address, local_as=64512, local_address=n.address, peers=peers,
            export_pools=(IPv4Network("10.0.0.0/8"),),
            kernel=C.KernelPolicy(program=n.kernel), timers=TIMERS)
        data = C.to_dict(cfg)
        data["originate"] = n.blackholes
        data["originate_unicast"] = n.unicast
        path = os.path.join(self.dir, "speaker.json")
        with open(path + ".tmp", "w") as f:
            json.dump(data, f)
        os.replace(path + ".tmp", path)

    def command(self) -> list[str]:
        prof = os.environ.get("BGP_BENCH_PROFILE")  # a directory: cProfile every daemon
        if prof:
            os.makedirs(prof, exist_ok=True)
            out = os.path.join(prof, f"{self.node.address}-{time.monotonic_ns()}.prof")
            return [PY, "-m", "cProfile", "-o", out, "-m", "agent.bgp.daemon",
                    "-c", os.path.join(self.dir, "speaker.json"), "-s", self.sock] + (
                        [] if self.node.kernel else ["--no-kernel"])
        return [PY, "-S", "-m", "agent.bgp.daemon", "-c", os.path.join(self.dir, "speaker.json"),
                "-s", self.sock] + ([] if self.node.kernel else ["--no-kernel"])

    def env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPYCACHEPREFIX"] = PYC_PREFIX
        env["PYTHONPATH"] = ROOT  # with -S: the daemon needs only the stdlib and this repo
        return env

    def rib_routes(self) -> int:
        m = re.search(r"Routes: (\d+)", self.query("show status"))
        return int(m.group(1)) if m else -1


class Bird(Daemon):
    """Debian's BIRD 2 with the same peers, timers and routes."""

    kind = "bird"

    def write_config(self) -> None:
        n = self.node
        t = TIMERS
        static = "".join(f"  route {p} blackhole;\n" for p in n.blackholes + n.unicast)
        kernel = ("protocol kernel {\n  ipv4 { import none; export all; };\n"
                  "  merge paths on;\n}\n") if n.kernel else ""
        peers = "".join(
            f"protocol bgp Mesh_{str(a).replace('.', '_')} from mesh {{ neighbor {a} as 64512; "
            f"source address {n.address};{' passive on;' if passive(n.address, a) else ''} }}\n"
            for a in n.peers)
        conf = f"""router id {n.address};
protocol device {{ scan time 2; }}
{kernel}protocol static static1 {{
  ipv4;
{static}}}
template bgp mesh {{
  local as 64512;
  ipv4 {{ import all; export where source = RTS_STATIC; }};
  connect delay time {int(t.connect_delay)}; connect retry time {int(t.connect_retry)};
  error wait time {int(t.error_wait_min)},{int(t.error_wait_max)};
  hold time {int(t.hold)}; graceful restart; graceful restart time {int(t.graceful_restart)};
}}
{peers}"""
        path = os.path.join(self.dir, "bird.conf")
        with open(path + ".tmp", "w") as f:
            f.write(conf)
        os.replace(path + ".tmp", path)

    def command(self) -> list[str]:
        return ["bird", "-f", "-c", os.path.join(self.dir, "bird.conf"), "-s", self.sock,
                "-P", os.path.join(self.dir, "pid")]

    def rib_routes(self) -> int:
        m = re.search(r"(\d+) of \d+ routes", self.query("show route count"))
        return int(m.group(1)) if m else -1


IMPLS = {"calicolab": Ours, "bird": Bird}


class Bench:
    """A lab of ``n`` namespaces plus a route watcher; daemons started per run."""

    def __init__(self, n: int, subnet: str):
        self.lab = NetLab(subnet)
        self.watch: RouteWatch | None = None
        self.daemons: list[Daemon] = []
        self.workdir = tempfile.mkdtemp(prefix="bgpbench-")
        try:
            for _ in range(n):
                self.lab.add_node(tunnel=False)
            self.lab.static_neighbors()
            self.watch = RouteWatch([ns for ns, _a in self.lab.nodes])
        except BaseException:
            self.close()
            raise

    @property
    def namespaces(self) -> list[str]:
        return [ns for ns, _a in self.lab.nodes]

    def start(self, impl: str, nodes: list[Node]) -> None:
        cls = IMPLS[impl]
        self.daemons = [cls(n, self.workdir) for n in nodes]
        for d in self.daemons:
            d.start()

    def wait_sockets(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        for d in self.daemons:
            while not os.path.exists(d.sock):
                if d.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{d.kind} in {d.node.ns} did not start:\n{d.log_tail()}")
                time.sleep(0.01)

    def stop(self) -> None:
        for d in self.daemons:
            if d.proc is not None and d.proc.poll() is None:
                d.proc.send_signal(signal.SIGTERM)
        for d in self.daemons:
            d.stop()
        self.daemons = []
        # no route of a stopped daemon may leak into the next run
        for ns in self.namespaces:
            subprocess.run(["ip", "-n", ns, "route", "flush", "proto", "bird"],
                           capture_output=True)
        if self.watch is not None:
            self.watch.wait(lambda: all(self.watch.count(ns) == 0 for ns in self.namespaces),
                            10, "routes flushed between runs")

    def close(self) -> None:
        try:
            self.stop()
        finally:
            if self.watch is not None:
                self.watch.close()
            self.lab.close()
            shutil.rmtree(self.workdir, ignore_errors=True)


def print_table(title: str, rows: list[dict], cols: list[str]) -> None:
    """A plain table: one row per measurement."""
    print(title)
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols]
    print("  " + " | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  " + " | ".join(str(r.get(c, "")).ljust(w) for c, w in zip(cols, widths, strict=True)))


def write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
    print(f"wrote {path}")
