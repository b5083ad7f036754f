"""The tunnel outlives calico-node (issue 16 item 2, issue 18's datapath) in a real lab.

The walkthrough's cluster brought up with ``up`` (calico-node started directly on every
node): on this machine (no kernel ipip) every node runs the tc-BPF tunl0. Pods on k8s-w0
and k8s-w1 ping each other every 0.1 s, both directions at once, while k8s-w1's
calico-node is killed with SIGKILL, stays dead for 6 s, and is started again by hand (or,
where the lab supervises its services, restarted by the lab). The pings go on until 30 more
probes crossed k8s-w1's tunl0 after the restarted agent is ready, then are interrupted (SIGINT,
as a user's Ctrl-C). Every probe must be answered: only the one in flight at the interrupt
may lack its reply.
The restarted agent adopts the pinned programs (same program ids, one filter per hook, one
tunl0). After ``down`` nothing of the tunnel is left on the machine: no program, no map, no
bpffs mount, no device; after the fixture's clean-up (also when the test failed) none of
the programs.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed.lab import lifecycle as labmod
from testbed.lab import state as labstate
from testbed.lab import topology as topomod
from testbed.lab.nodeshell import exec_argv
from testbed.poll import wait_for
from tests.lab.lab_helpers import leftovers
from tests.support import require, require_root, require_tool, unique

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
TOPOLOGY = REPO / "topologies" / "walkthrough.yaml"
OUTAGE_S = 6.0  # how long calico-node stays dead (the must-hold asks for at least 5 s)
PROBE_MAX_S = 90  # the pings' own deadline: they are interrupted long before (once recovered)
AFTER_READY = 30  # probes that must cross k8s-w1's tunl0 after the restarted agent is ready
SEQ = re.compile(r"\b(?:icmp_)?seq=(\d+)")


def cli(lab: str, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "testbed.cli", "--lab", lab, *args], capture_output=True,
                         text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"calicolab {' '.join(args)} exited {res.returncode}: {res.stderr}{res.stdout}")
    return res


def node_cmd(st: dict, node: str, *cmd: str) -> str:
    res = subprocess.run(exec_argv(st, node, list(cmd)), env=labstate.node_env(st, node),
                         capture_output=True, text=True, timeout=30)
    return res.stdout


def tunnel_programs(st: dict, node: str) -> dict[str, list[str]]:
    """The bpf filters on the node's uplink and on tunl0's peer (``tc filter show``'s lines)."""
    out = {}
    for dev in ("eth0", "tunl0-bpf"):
        lines = node_cmd(st, node, "tc", "filter", "show", "dev", dev, "ingress").splitlines()
        out[dev] = [ln for ln in lines if " id " in ln]
    return out


def prog_ids(programs: dict[str, list[str]]) -> set[int]:
    return {int(ln.split(" id ")[1].split()[0]) for lines in programs.values() for ln in lines}


def status(lab: str) -> dict:
    return json.loads(cli(lab, "status", "--json", check=False).stdout or "{}")


def node_status(lab: str, node: str) -> dict:
    """One node's row of ``calicolab status --json``."""
    return next((n for n in status(lab).get("nodes", []) if n["name"] == node), {})


POD = """apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: default}}
spec: {{nodeName: {node}, containers: [{{name: c, image: busybox}}]}}
"""


def pings_in_pod(pod: dict) -> list[int]:
    """PIDs of the ``ping`` processes in ``pod``'s network namespace (the probes this test
    started in it by ``calicolab exec``)."""
    pid = next(iter(json.loads(pod["metadata"]["annotations"]["calicolab.io/pids"]).values()))
    want = os.stat(f"/proc/{pid}/ns/net").st_ino
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/comm") as f:
                if f.read().strip() != "ping":
                    continue
            if os.stat(f"/proc/{d}/ns/net").st_ino == want:
                found.append(int(d))
        except OSError:
            continue
    return found


def ping_verdict(out: str) -> tuple[int, int, list[int]]:
    """(sent, answered, the sequence numbers answered) of one ping's output."""
    line = next((ln for ln in out.splitlines() if "packets transmitted" in ln), "")
    assert line, out[-500:]
    return int(line.split()[0]), int(line.split()[3]), sorted(int(m[1]) for m in SEQ.finditer(out))


def programs_alive(ids: set[int]) -> list[int]:
    """Those of the BPF program ids ``ids`` the kernel still holds."""
    from kernel import bpf

    out = []
    for i in sorted(ids):
        fd = bpf.prog_fd_by_id(i)
        if fd is not None:
            os.close(fd)
            out.append(i)
    return out


@pytest.fixture
def lab(tmp_path):
    """The walkthrough lab, a set the test fills with its tunnel programs' ids (after the lab
    is cleaned, also when the test failed, none of them may be left in the kernel) and a list
    of the processes the test starts in it (ended by PID first)."""
    require_root()
    for tool in ("mnexec", "etcd", "nsenter", "tc"):
        require_tool(tool)
    from agent.felix.bpfprobe import unsupported_reason

    require(unsupported_reason() is None, f"tc-BPF tunnel: {unsupported_reason()}")
    name = unique("to")
    ids: set[int] = set()
    procs: list[subprocess.Popen] = []
    try:
        # calico-node as the lab service `up` starts in etcd mode, killed and restarted by the test
        yield labmod.up(TOPOLOGY, name=name, progress=lambda _m: None, datastore="etcdv3"), ids, procs
    finally:
        from testbed.lab.clean import clean_lab

        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
        clean_lab(name)
        wait_for(lambda: programs_alive(ids), lambda left: not left, timeout=10,
                 what="every tunnel program freed once the lab is cleaned")


def test_kill_9_of_calico_node_loses_no_cross_node_probe(lab, tmp_path):
    st, all_ids, started = lab
    name = st["lab"]
    wait_for(lambda: status(name), lambda s: [n.get("agent") for n in s.get("nodes", [])] == ["ready"] * 3,
             timeout=60, what="calico-node ready on 3 nodes")
    nodes = {n["name"]: n for n in status(name)["nodes"]}
    assert {n["datapath"] for n in nodes.values()} == {"bpf"}, nodes
    for pod, node in (("pa", "k8s-w0"), ("pb", "k8s-w1")):
        path = tmp_path / f"{pod}.yaml"
        path.write_text(POD.format(name=pod, node=node))
        cli(name, "kubectl", "apply", "-f", str(path))

    def running_pods() -> dict[str, dict]:
        out = cli(name, "kubectl", "get", "pods", "-o", "json", check=False).stdout
        items = json.loads(out).get("items", []) if out.strip() else []
        return {p["metadata"]["name"]: p for p in items if p.get("status", {}).get("phase") == "Running"}

    pods = wait_for(running_pods, lambda m: "pa" in m and "pb" in m, timeout=60, what="pods pa and pb Running")
    ips = {n: p["status"].get("podIP") for n, p in pods.items()}
    wait_for(lambda: cli(name, "exec", "default/pa", "--", "ping", "-c", "1", "-W", "1", ips["pb"],
                         check=False).stdout, lambda o: " 0% packet loss" in o, timeout=30,
             what="pa -> pb over tunl0 (BGP routes in place)")
    before = tunnel_programs(st, "k8s-w1")
    assert len(before["eth0"]) == 1 and len(before["tunl0-bpf"]) == 1, before
    all_ids.update(*(prog_ids(tunnel_programs(st, n)) for n in nodes))
    assert len(all_ids) == 6, all_ids  # encap + decap on each of the 3 nodes

    probes = {d: subprocess.Popen([sys.executable, "-m", "testbed.cli", "--lab", name, "exec", f"default/{src}",
                                   "--", "ping", "-i", "0.1", "-w", str(PROBE_MAX_S), ips[dst]],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for d, (src, dst) in {"w0->w1": ("pa", "pb"), "w1->w0": ("pb", "pa")}.items()}
    probes_t0 = time.monotonic()
    try:
        agent = st["services"]["k8s-w1/calico-node"]
        wait_for(lambda: node_status(name, "k8s-w1").get("bpf") or {}, lambda b: (b.get("tx_packets") or 0) > 10,
                 timeout=10, what="probes flowing through k8s-w1's tunl0")
        # a lab that supervises its services (issue 16 item 1) restarts calico-node itself
        supervised = "restarts" in (node_status(name, "k8s-w1").get("services", {}).get("calico-node") or {})
        os.kill(agent["pid"], signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: labstate.pid_alive(agent["pid"], agent["start"]), lambda alive: not alive, timeout=5,
                 what="calico-node on k8s-w1 gone")
        restarted = None
        if supervised:
            wait_for(lambda: node_status(name, "k8s-w1").get("services", {}).get("calico-node") or {},
                     lambda s: s.get("running") and s.get("restarts", 0) >= 1, timeout=30,
                     what="calico-node on k8s-w1 restarted by the lab")
        else:
            wait_for(lambda: node_status(name, "k8s-w1").get("agent"), lambda a: a not in ("ready", "not ready"),
                     timeout=5, what="k8s-w1's health port closed")
            time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - killed)))  # the outage itself
            assert tunnel_programs(st, "k8s-w1") == before  # nothing moved while it was dead
            # start it again by hand, as the lab's `up` started it
            topo = topomod.load(st["topology"], name=name)
            env = labstate.node_env(st, "k8s-w1")
            env.update(topo.calico_node_env())
            env.setdefault("CALICOLAB_BGP_TIMERS", "connect_delay=0.1,connect_retry=1")
            with open(labstate.state_dir(name) / "logs" / "k8s-w1.calico-node.restarted.log", "ab") as log:
                restarted = subprocess.Popen(exec_argv(st, "k8s-w1", [str(labstate.VENV_BIN / "calico-node")]),
                                             env=env, stdout=log, stderr=subprocess.STDOUT, cwd="/")
            started.append(restarted)
        dead_for = time.monotonic() - killed
        wait_for(lambda: node_status(name, "k8s-w1").get("agent"), lambda a: a == "ready", timeout=60,
                 what="the restarted calico-node ready on k8s-w1")
        # the probes go on through the recovered node: AFTER_READY more cross its tunl0 (the
        # restarted agent's counters start at the adopted maps': read them once ready)
        tx0 = (node_status(name, "k8s-w1").get("bpf") or {}).get("tx_packets") or 0
        wait_for(lambda: (node_status(name, "k8s-w1").get("bpf") or {}).get("tx_packets") or 0,
                 lambda tx: tx >= tx0 + AFTER_READY, timeout=30,
                 what=f"{AFTER_READY} more probes through k8s-w1's tunl0 after its calico-node is ready")
        assert all(p.poll() is None for p in probes.values()), "a ping ended before the recovery was probed"
        window = time.monotonic() - probes_t0
        pings = [pid for pod in ("pa", "pb") for pid in pings_in_pod(pods[pod])]
        assert len(pings) == 2, f"ping processes in pa and pb: {pings}"
        for pid in pings:  # ours: ended by PID, as a user's Ctrl-C
            os.kill(pid, signal.SIGINT)
        results = {d: p.communicate(timeout=30)[0] for d, p in probes.items()}
    finally:
        for p in probes.values():
            if p.poll() is None:
                p.kill()
    for d, out in results.items():
        sent, got, seqs = ping_verdict(out)
        summary = f"{d}: {sent} sent, {got} answered over {window:.1f} s (agent dead for {dead_for:.1f} s)"
        assert sent >= window * 10 * 0.8, summary
        # every probe answered; only the last one sent may have been in flight at the interrupt
        assert got in (sent, sent - 1) and len(seqs) == got, f"{summary}\n{out[-800:]}"
        assert seqs == list(range(seqs[0], seqs[0] + got)) and seqs[0] in (0, 1), \
            f"{summary}: a gap in the answered sequence numbers\n{out[-800:]}"
    assert supervised or dead_for >= 5.0
    # the restarted agent adopted the pinned programs: the same ids, one filter per hook, one tunl0
    after = tunnel_programs(st, "k8s-w1")
    assert prog_ids(after) == prog_ids(before), (before, after)
    assert node_cmd(st, "k8s-w1", "ip", "-o", "link", "show").count("tunl0@") == 1
    assert node_cmd(st, "k8s-w1", "ls", "/sys/fs/bpf/calico/ipip").split() == [
        "cali_ipip_dec", "cali_ipip_enc", "cali_ipip_hosts", "cali_ipip_nodes", "cali_ipip_stats"]
    assert node_status(name, "k8s-w1")["datapath"] == "bpf"
    # the node's bpffs is its own: the machine's /sys/fs/bpf holds none of it
    assert not os.path.exists("/sys/fs/bpf/calico")
    if restarted is not None:
        restarted.kill()  # ours: ended by PID before the lab goes down
        restarted.wait(timeout=10)
    labmod.down(name, progress=lambda _m: None)
    assert leftovers(st) == []

    wait_for(lambda: programs_alive(all_ids), lambda left: not left, timeout=10,
             what="every tunnel program freed after down")
    assert not any(line.split()[4] == "/sys/fs/bpf" for line in Path("/proc/self/mountinfo").read_text().splitlines())
