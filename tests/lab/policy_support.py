"""The policy matrix's scaffolding: pods, probes from inside pods, and the proof of each verdict.

A probe is a real TCP connection made from a client pod's network namespace (the
test enters ``/proc/<pod pid>/ns/net``, opens a socket there and connects, with a
short timeout), so an allowed flow is a completed handshake and a denied one a
SYN nobody answers. Every probe is recorded (client port, time window) so the
captures taken meanwhile can prove it afterwards: an allowed probe's SYN-ACK on
the client's cali interface; a denied probe's SYN leaving the client, crossing
the server node's tunl0 when the policy that drops it is the server's, and never
reaching the server's cali interface.
"""

from __future__ import annotations

import concurrent.futures
import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kernel.netns import entered
from testbed.capture import counters
from testbed.capture import pcapassert as pa
from testbed.lab import state as labstate

INTERNET = "203.0.113.10"


@dataclass(frozen=True)
class PodInfo:
    name: str
    namespace: str
    node: str
    ip: str
    iface: str
    pid: int

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Target:
    """Where a probe goes: a pod (by name) or the in-lab internet host."""

    name: str
    ip: str
    node: str | None  # None: outside the cluster
    iface: str | None


@dataclass
class Probe:
    client: PodInfo
    target: Target
    port: int
    expect: bool
    ok: bool = False
    sport: int = 0
    t0: float = 0.0
    t1: float = 0.0
    case: str = ""
    denied_on: str = ""  # "ingress" (the server's policy) or "egress" (the client's)

    def label(self) -> str:
        return f"{self.client.key} -> {self.target.name}:{self.port}"


@dataclass
class Case:
    """One state of the matrix: what is applied, and the verdict for every probe."""

    name: str
    setup: Callable[[Matrix], None]
    expect: Callable[[PodInfo, Target, int], bool]
    ports: tuple[int, ...] = (80,)
    denied_on: str = "ingress"
    targets: tuple[str, ...] = ("web-0", "web-1", "web-o", "internet")
    after: Callable[[Matrix], None] | None = None  # extra checks (counters of a Log rule...)


def run(argv: list[str], input: str | None = None, check: bool = True,  # noqa: A002
        timeout: float = 60) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(argv[:8])}... exited {res.returncode}: {res.stderr.strip()[-800:]}")
    return res


@dataclass
class Matrix:
    lab: str
    pods: dict[str, PodInfo] = field(default_factory=dict)
    probes: list[Probe] = field(default_factory=list)
    drops: dict[str, list[counters.RuleCount]] = field(default_factory=dict)  # case -> drop rules counted
    pump_before: dict[str, dict | None] = field(default_factory=dict)
    pool: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(max_workers=32))

    # -- the user's commands ----------------------------------------------------------
    def cli(self, *args: str, input: str | None = None, check: bool = True) -> str:  # noqa: A002
        return run([sys.executable, "-m", "testbed.cli", "--lab", self.lab, *args], input=input, check=check).stdout

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:  # noqa: A002
        return self.cli("kubectl", *args, input=input, check=check)

    def calicoctl(self, *args: str, input: str | None = None, check: bool = True) -> str:  # noqa: A002
        return self.cli("calicoctl", *args, input=input, check=check)

    def netns(self, node: str) -> str:
        st = labstate.read_state(self.lab)
        assert st is not None
        return st["hosts"][node]["netns"]

    # -- pods --------------------------------------------------------------------------
    def load_pods(self, names: set[str], timeout: float = 90) -> None:
        """Wait until the named pods run with an IP and a WorkloadEndpoint; record them."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            items = json.loads(self.kubectl("get", "pods", "-A", "-o", "json"))["items"]
            weps = json.loads(self.calicoctl("get", "workloadendpoints", "-A", "-o", "json"))
            iface = {(w["metadata"]["namespace"], w["spec"]["pod"]): w["spec"]["interfaceName"]
                     for w in (weps.get("items") or [])}
            found = {}
            for p in items:
                md, st = p["metadata"], p.get("status") or {}
                key = (md.get("namespace", "default"), md["name"])
                if md["name"] not in names or st.get("phase") != "Running" or not st.get("podIP") \
                        or key not in iface:
                    continue
                pid = next(iter(json.loads(md["annotations"]["calicolab.io/pids"]).values()))
                found[md["name"]] = PodInfo(md["name"], key[0], p["spec"]["nodeName"], st["podIP"], iface[key], pid)
            last = ", ".join(sorted(names - set(found)))
            if set(found) == names:
                self.pods.update(found)
                return
            time.sleep(0.5)
        raise AssertionError(f"pods not Running with an IP and an endpoint after {timeout:.0f}s: {last}")

    def target(self, name: str) -> Target:
        if name == "internet":
            return Target("internet", INTERNET, None, None)
        p = self.pods[name]
        return Target(p.key, p.ip, p.node, p.iface)

    # -- probes ------------------------------------------------------------------------
    @staticmethod
    def _connect(probe: Probe, timeout: float) -> Probe:
        with entered(f"/proc/{probe.client.pid}/ns/net"):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        probe.t0 = time.time()
        try:
            s.connect((probe.target.ip, probe.port))
            probe.ok = True
        except OSError:
            probe.ok = False
        probe.t1 = time.time()
        try:
            probe.sport = s.getsockname()[1]
        finally:
            s.close()
        return probe

    def check(self, case: Case, clients: list[str], deadline: float = 20.0, timeout: float = 1.2) -> list[Probe]:
        """Probe every client x target x port until each verdict is the expected one (the policy
        may still be on its way); keeps the final round for the pcap checks. Returns it.

        ``timeout`` is past Linux's first SYN retransmission (1 s), so a denied probe sends its SYN
        twice and the proof on the server node's tunl0 does not hang on one packet (1.2 s: each
        round with a denied probe lasts that long, and the matrix has ~17 such rounds per datastore)."""
        end = time.monotonic() + deadline
        while True:
            batch = []
            for c in clients:
                cp = self.pods[c]
                for t in case.targets:
                    tgt = self.target(t)
                    if t != "internet" and self.pods[t].key == cp.key:
                        continue
                    for port in (case.ports if t.startswith("web") else (80,)):
                        batch.append(Probe(cp, tgt, port, case.expect(cp, tgt, port), case=case.name,
                                           denied_on=case.denied_on))
            done = list(self.pool.map(lambda p: self._connect(p, timeout), batch))
            wrong = [p for p in done if p.ok != p.expect]
            if not wrong:
                self.probes += done
                return done
            if time.monotonic() > end:
                raise AssertionError(f"case {case.name}: after {deadline:.0f}s these verdicts are still wrong: "
                                     + "; ".join(f"{p.label()} {'allowed' if p.ok else 'denied'} "
                                                 f"(expected {'allowed' if p.expect else 'denied'})" for p in wrong))

    def pump_stats(self) -> dict[str, dict]:
        """The userspace tunnel's packet counters per worker (None on a kernel tunl0)."""
        from testbed.lab import netns as nsmod
        from testbed.lab.state import HEALTH_PORT

        out = {}
        for n in ("k8s-w0", "k8s-w1"):
            try:
                _, body = nsmod.http_json(self.netns(n), "127.0.0.1", HEALTH_PORT, "/status", timeout=2.0)
                out[n] = (body or {}).get("pump") if isinstance(body, dict) else None
            except OSError:
                out[n] = None
        return out

    # -- proof: counters ---------------------------------------------------------------
    def counters(self) -> dict[str, list[counters.RuleCount]]:
        return {n: counters.read(self.netns(n)) for n in ("k8s-w0", "k8s-w1")}

    def check_drops(self, case: Case, before: dict, after: dict, probes: list[Probe]) -> None:
        """Every denied probe was counted by a Calico DROP rule of the endpoint it was denied at."""
        dropped = {n: counters.dropped_by(before[n], after[n]) for n in before}
        self.drops[case.name] = [r for rs in dropped.values() for r in rs]
        for p in probes:
            if p.expect:
                continue
            if p.denied_on == "ingress":
                node, iface, chains = p.target.node, p.target.iface, ("cali-tw-", "cali-pi-", "cali-gi-")
            else:
                node, iface, chains = p.client.node, p.client.iface, ("cali-fw-", "cali-po-", "cali-go-")
            assert node is not None and iface is not None
            own = [r for r in dropped[node] if r.chain == f"{chains[0]}{iface}" or r.chain.startswith(chains[1:])]
            assert own, (f"case {case.name}: {p.label()} was denied but no DROP rule of "
                         f"{chains[0]}{iface} (or its policies) on {node} counted a packet; counted: "
                         + "; ".join(r.describe() for r in dropped[node]))


def prove_on_pcaps(probes: list[Probe], cap_file: Callable[[str, str], object], captured: set[str]) -> int:
    """Check every recorded probe on the captures; returns how many were checked."""
    checked = 0
    for p in probes:
        if p.client.iface not in captured:
            continue
        client_side = pa.load(cap_file(p.client.node, p.client.iface))
        window = [f for f in client_side.frames if p.t0 - 0.05 <= f.time <= p.t1 + 0.5]
        mine = pa.Trace(client_side.path, window, client_side.linktype, client_side.label)
        syn = pa.inner(p.client.ip, p.target.ip, 6) & pa.tcp(sport=p.sport, dport=p.port, flags="S")
        synack = pa.inner(p.target.ip, p.client.ip, 6) & pa.tcp(sport=p.port, dport=p.sport, flags="SA")
        mine.expect(syn, what=f"{p.case}: the SYN of {p.label()} (port {p.sport}) leaving the client")
        if p.expect:
            mine.expect(synack, what=f"{p.case}: the SYN-ACK answering {p.label()}")
            checked += 1
            continue
        mine.expect_none(synack, what=f"{p.case}: a SYN-ACK answering the denied {p.label()}")
        if p.target.iface is not None and p.target.iface in captured:
            server = pa.load(cap_file(p.target.node or "", p.target.iface))
            srv = pa.Trace(server.path, [f for f in server.frames if p.t0 - 0.05 <= f.time <= p.t1 + 0.5],
                           server.linktype, server.label)
            srv.expect_none(syn, what=f"{p.case}: the denied SYN of {p.label()} reaching the server")
            cross = p.target.node != p.client.node
            if cross and p.denied_on == "ingress":
                tun = pa.load(cap_file(p.target.node or "", "tunl0"))
                t = pa.Trace(tun.path, [f for f in tun.frames if p.t0 - 0.05 <= f.time <= p.t1 + 0.5],
                             tun.linktype, tun.label)
                t.expect(syn, what=f"{p.case}: the denied SYN of {p.label()} decapsulated on "
                                   f"{p.target.node}/tunl0 (dropped after it)")
        checked += 1
    return checked
