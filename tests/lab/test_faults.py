"""The fault suite: faults injected into a running walkthrough lab (plain `up`: calico-node,
etcd, the API server and the kubelets run as the lab's services), each checked by what a
user observes: pings between pods on two nodes, the node's routes, `calicolab status`.

One lab serves the module (tests run in file order; the last one cleans it); each fault
test waits, with a deadline, for the cluster to come back and says what it last saw.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from testbed.lab import faults
from testbed.lab import lifecycle as labmod
from testbed.lab import state as labstate
from testbed.lab.clean import clean_lab
from testbed.poll import wait_for
from tests.lab.lab_helpers import leftovers, template_of, write_topology
from tests.support import require_root, require_tool, unique

pytestmark = pytest.mark.lab

#: the issue's bound: restarted and converged within this many seconds
CONVERGED = 15.0
PODS = {"k8s-w0": "fault-a", "k8s-w1": "fault-b"}


cli = faults.cli
pods = faults.pods
pod_pid = faults.pod_pid
node_dataplane = faults.node_dataplane
duplicates = faults.duplicates


def running(lab: str, names: list[str]) -> dict[str, dict]:
    """Wait until ``names`` are Running with an IP; their pod objects."""
    return wait_for(lambda: pods(lab), lambda ps: all(faults.pod_running(ps.get(n)) for n in names),
                    timeout=30, what=f"pods {names} Running with an IP")


def apply_pod(lab: str, _tmp, name: str, node: str) -> None:
    faults.apply_pod(lab, name, node)


def status(lab: str) -> dict:
    res = cli("status", "--lab", lab, "--json")
    assert res.stdout, res.stderr
    return json.loads(res.stdout)


def service(info: dict, node: str, name: str) -> dict:
    return next(n for n in info["nodes"] if n["name"] == node)["services"][name]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A running walkthrough lab with pods fault-a on k8s-w0 and fault-b on k8s-w1."""
    require_root()
    for tool in ("mnexec", "etcd", "nsenter", "ping"):
        require_tool(tool)
    tmp = tmp_path_factory.mktemp("faults")
    name = unique("ft")
    topo = write_topology(tmp, name, template_of(labstate.REPO / "topologies" / "walkthrough.yaml"))
    try:
        # etcd mode: the faults here kill calico-node as the lab service `up` starts in etcd mode
        # (in the Kubernetes datastore it is a DaemonSet pod) and read Calico's etcd keys
        st = labmod.up(topo, progress=lambda _m: None, ready_timeout=30, datastore="etcdv3")
        for node, pod in PODS.items():
            apply_pod(name, tmp, pod, node)
        running(name, list(PODS.values()))
        yield {"name": name, "state": st, "tmp": tmp}
    finally:
        clean_lab(name)


@pytest.fixture
def probe(lab):
    """A ping from fault-a (k8s-w0) to fault-b (k8s-w1) every 0.1 s, across the IPIP tunnel."""
    ps = running(lab["name"], list(PODS.values()))
    dst = ps["fault-b"]["status"]["podIP"]
    prober = faults.Prober(pod_pid(ps["fault-a"]), dst)
    with prober:
        wait_for(lambda: prober.result()[0], lambda n: n >= 3, timeout=10,
                 what=f"pings from fault-a to fault-b ({dst}) answered before the fault")
        yield prober


def wait_restarted(lab: str, node: str, name: str, restarts: int, timeout: float = CONVERGED) -> dict:
    """Wait until `calicolab status` shows ``name`` on ``node`` running again after ``restarts``."""
    return wait_for(lambda: service(status(lab), node, name),
                    lambda s: s["state"] == "running" and s["restarts"] >= restarts, timeout=timeout,
                    what=f"{node}/{name} restarted ({restarts}) in `calicolab status`")


def felix_rules(rules: list[str]) -> list[str]:
    """Felix's lines of :func:`node_dataplane`'s rules: in its ``cali-`` chains, or marked with
    its ``cali:`` comment in the built-in ones."""
    return [r for r in rules if r.split()[2].startswith("cali-") or '--comment "cali:' in r]


def wait_healthy(lab: str, timeout: float = CONVERGED) -> dict:
    return wait_for(lambda: status(lab), lambda i: i["health"]["state"] == "healthy", timeout=timeout,
                    what="`calicolab status` healthy")


def test_kill_calico_node_is_restarted_and_converges(lab, probe):
    name = lab["name"]
    routes0, rules0 = node_dataplane(name, "k8s-w0")
    felix0 = felix_rules(rules0)
    t0 = time.time()
    faults.kill_service(name, "k8s-w0/calico-node")
    # status says what happened while it is down ...
    # (for up to 0.2 s after the kill it reads "restarting" with no exit recorded yet: wait past that)
    seen = wait_for(lambda: service(status(name), "k8s-w0", "calico-node"),
                    lambda s: (s["state"] == "restarting" and s["exit"] is not None)
                    or (s["state"] == "running" and s["restarts"] >= 1), timeout=5,
                    what="calico-node exit recorded (restarting with its exit status) or restarted")
    assert (seen["exit"] if seen["state"] == "restarting" else seen["last_exit"]) == -9, seen
    wait_restarted(name, "k8s-w0", "calico-node", 1)
    wait_healthy(name, timeout=CONVERGED - (time.time() - t0))
    wait_for(lambda: probe.answered_since(time.time() - 0.5), lambda n: n > 0, timeout=5,
             what="pings fault-a -> fault-b answered after the restart")
    routes1, rules1 = node_dataplane(name, "k8s-w0")
    assert duplicates(routes1) == [] and duplicates(rules1) == [], (duplicates(routes1), duplicates(rules1))
    assert sorted(routes1) == sorted(routes0), (routes0, routes1)
    # Felix's rules are those it had (kube-proxy's may change meanwhile: CoreDNS turning ready)
    felix1 = felix_rules(rules1)
    assert sorted(felix1) == sorted(felix0), (sorted(set(felix0) - set(felix1)), sorted(set(felix1) - set(felix0)))
    answered, lost, _ = probe.result()
    print(f"calico-node kill -9: converged in {time.time() - t0:.1f}s; probes answered {answered}, lost {lost}")


def test_kill_kubelet_is_restarted_by_its_systemd_policy(lab, probe):
    name = lab["name"]
    workloads = workload_pids(name)
    t0 = time.time()
    faults.kill_service(name, "k8s-w1/kubelet")
    s = wait_for(lambda: service(status(name), "k8s-w1", "kubelet"),
                 lambda s: s["state"] == "restarting" and s["exit"] is not None, timeout=5,
                 what="kubelet reported restarting with its exit status")
    assert s["exit"] == -9, s
    assert 0 < s["restart_in"] <= 10, s  # kubelet.service: RestartSec=10
    wait_restarted(name, "k8s-w1", "kubelet", 1)
    # the node's pods kept running and the kubelet adopted them: traffic never stopped
    wait_healthy(name, timeout=CONVERGED - (time.time() - t0))
    assert pods(name)["fault-b"]["status"]["phase"] == "Running"
    assert workload_pids(name) == workloads  # adopted: not stopped, not restarted
    answered, lost, _ = probe.result()
    assert lost == 0, probe.lines[-20:]


def tracebacks(lab: str) -> dict[str, int]:
    """How many tracebacks each service log of the lab holds."""
    return {p.name: p.read_text(errors="replace").count("Traceback (most recent call last)")
            for p in sorted((labstate.state_dir(lab) / "logs").glob("*.log"))}


def test_kill_etcd_and_apiserver_are_restarted(lab):
    """etcd and the API server: lab services of the control-plane node, or its static pods
    (whichever the lab runs them as); either way restarted without anyone's help."""
    name = lab["name"]
    workloads = workload_pids(name)
    for key in ("k8s-m/etcd", "k8s-m/kube-apiserver"):
        node, _, svc = key.partition("/")
        tb0 = tracebacks(name)
        before = faults.daemon_state(name, node, svc)[1]
        t0 = time.time()
        faults.kill_daemon(name, node, svc)
        wait_for(lambda node=node, svc=svc: faults.daemon_state(name, node, svc),
                 lambda s, before=before: s[0] and s[1] > before, timeout=CONVERGED,
                 ignore=(RuntimeError,), what=f"{key} running again after a restart")
        # the user's commands work again
        wait_for(lambda: cli("kubectl", "--lab", name, "get", "nodes"),
                 lambda r: r.returncode == 0 and r.stdout.count(" Ready") == 3,
                 timeout=CONVERGED - (time.time() - t0), what=f"kubectl get nodes after {key} restarted")
        wait_for(lambda: cli("calicoctl", "--lab", name, "get", "nodes"),
                 lambda r: r.returncode == 0 and "k8s-w1" in r.stdout,
                 timeout=CONVERGED - (time.time() - t0), what=f"calicoctl get nodes after {key} restarted")
        # the daemons said what went wrong in one line each, not a traceback per retry
        tb1 = tracebacks(name)
        assert {k: v - tb0.get(k, 0) for k, v in tb1.items() if v != tb0.get(k, 0)} == {}, key
    wait_healthy(name)
    # the kubelets' re-lists after the restarts stopped no pod: the same processes still run
    assert workload_pids(name) == workloads


def workload_pids(lab: str) -> dict[str, tuple[int, int]]:
    """``pod -> (PID, restartCount)`` of the fault pods, each PID checked alive."""
    out = {}
    for pod_name, p in sorted(pods(lab).items()):
        if pod_name in PODS.values():
            pid = pod_pid(p)
            assert labstate.pid_alive(pid), f"{pod_name}: its process {pid} is gone"
            out[pod_name] = (pid, p["status"]["containerStatuses"][0].get("restartCount", 0))
    return out


def test_link_flap_restores_the_node_routes(lab, probe):
    name = lab["name"]
    ns = labstate.netns_name(name, "k8s-w0")
    assert "default via 172.30.0.1 dev eth0" in faults_routes(ns)
    faults.set_link(name, "k8s-w0", "eth0", up=False)
    try:
        wait_for(lambda: faults_routes(ns), lambda r: "default via" not in r, timeout=5,
                 what="the kernel dropping the default route of a down eth0")
        time.sleep(2)  # the flap itself: the link stays down for 2 s
    finally:
        faults.set_link(name, "k8s-w0", "eth0", up=True)
    wait_for(lambda: faults_routes(ns), lambda r: "default via 172.30.0.1 dev eth0" in r, timeout=5,
             what="the default route back on k8s-w0 after the flap")
    wait_for(lambda: probe.answered_since(time.time() - 0.5), lambda n: n > 0, timeout=CONVERGED,
             what="pings fault-a -> fault-b answered after the flap")
    # a new pod on the flapped node reaches its gateway 169.254.1.1 by proxy ARP, and the other node
    apply_pod(name, lab["tmp"], "fault-c", "k8s-w0")
    ps = running(name, ["fault-c"])
    with faults.Prober(pod_pid(ps["fault-c"]), ps["fault-b"]["status"]["podIP"]) as p:
        wait_for(lambda: p.result()[0], lambda n: n >= 1, timeout=10,
                 what="a new pod on k8s-w0 answered from fault-b after the flap")
    with faults.Prober(pod_pid(ps["fault-c"]), "203.0.113.10") as p:
        wait_for(lambda: p.result()[0], lambda n: n >= 1, timeout=10,
                 what="the internet host answering a new pod on k8s-w0 after the flap")


def faults_routes(ns: str) -> str:
    return subprocess.run(["ip", "-n", ns, "route"], capture_output=True, text=True, check=True).stdout


def test_kill_typha_installed_by_manifest(tmp_path):
    """Calico installed as the walkthrough does (install-cni: calico.yaml's DaemonSet and the
    calico-typha Deployment): Typha killed is restarted by its kubelet, and calico-node,
    which takes its watches from Typha, programs a pod created afterwards."""
    require_root()
    name = unique("fy")
    topo = write_topology(tmp_path, name, template_of(labstate.REPO / "topologies" / "walkthrough.yaml"))
    try:
        labmod.up(topo, no_cni=True, progress=lambda _m: None, ready_timeout=30, datastore="etcdv3")
        res = cli("install-cni", "--lab", name, timeout=120)
        assert res.returncode == 0, res.stderr
        before = wait_for(lambda: faults.daemon_state(name, None, "calico-typha"), lambda s: s[0], timeout=30,
                          ignore=(KeyError, RuntimeError), what="calico-typha running")[1]
        faults.apply_pod(name, "ty-a", "k8s-w0")
        running(name, ["ty-a"])
        t0 = time.time()
        faults.kill_daemon(name, None, "calico-typha")
        wait_for(lambda: faults.daemon_state(name, None, "calico-typha"), lambda s: s[0] and s[1] > before,
                 timeout=CONVERGED, ignore=(KeyError, RuntimeError), what="calico-typha restarted by the kubelet")
        faults.apply_pod(name, "ty-b", "k8s-w1")
        ps = running(name, ["ty-a", "ty-b"])
        with faults.Prober(pod_pid(ps["ty-a"]), ps["ty-b"]["status"]["podIP"]) as p:
            wait_for(lambda: p.result()[0], lambda n: n >= 1, timeout=max(1.0, CONVERGED - (time.time() - t0)),
                     what="a pod made after the Typha restart answering across nodes")
        wait_healthy(name)
    finally:
        clean_lab(name)


def test_a_pod_reaches_no_labs_control_socket_or_etcd_data(lab):
    """A second lab runs; from a pod of the first, neither lab's control socket, state
    directory or etcd data exists (the node's /run/calicolab is an empty cover)."""
    from tests.lab.lab_helpers import SMALL

    other = unique("fo")
    try:
        ost = labmod.up(write_topology(lab["tmp"], other, SMALL), no_cni=True, progress=lambda _m: None,
                        ready_timeout=5, datastore="etcdv3")
        theirs = labstate.state_dir(other)
        assert (theirs / "control.sock").exists() and (theirs / "etcd").is_dir()  # the machine sees them
        pid = pod_pid(pods(lab["name"])["fault-a"])
        probe = ("import os, socket, sys\n"
                 "s = socket.socket(socket.AF_UNIX)\n"
                 "for path in sys.argv[1:]:\n"
                 "    try:\n"
                 "        s.connect(path) if path.endswith('.sock') else os.listdir(path)\n"
                 "        print('REACHED', path)\n"
                 "    except OSError as exc:\n"
                 "        print('refused', path, exc.strerror)\n"
                 "print('LISTING', sorted(os.listdir('/run/calicolab')))\n")
        mine = labstate.state_dir(lab["name"])
        res = subprocess.run(["nsenter", "-t", str(pid), "--net", "--mount", "--", sys.executable, "-c", probe,
                              str(theirs / "control.sock"), str(theirs / "etcd"), str(mine / "control.sock"),
                              str(mine / "etcd"), str(mine / "logs")], capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
        assert "REACHED" not in res.stdout, res.stdout
        assert "LISTING ['.pycache']" in res.stdout, res.stdout
    finally:
        clean_lab(other)
    assert leftovers(ost) == []


def test_clean_finds_a_process_started_in_a_pod_netns_from_outside(lab):
    """Last: it removes the module's lab. A process joined to a pod's netns by nsenter from
    the machine (not in the lab's cgroup, without its environment) goes with the lab."""
    name = lab["name"]

    def join() -> subprocess.Popen | None:
        # the PID is read afresh each attempt: an earlier fault may have restarted fault-b
        pid = pod_pid(pods(name)["fault-b"])
        try:
            target = os.readlink(f"/proc/{pid}/ns/net")
        except OSError:
            return None
        proc = subprocess.Popen(["nsenter", f"--net=/proc/{pid}/ns/net", "--", "sleep", "600"],
                                env={"PATH": "/usr/bin:/bin"}, start_new_session=True)
        for _ in range(40):
            if proc.poll() is not None:
                return None  # nsenter failed: the process went away meanwhile
            try:
                if os.readlink(f"/proc/{proc.pid}/ns/net") == target:
                    return proc
            except OSError:
                pass
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        return None

    stray = wait_for(join, lambda p: p is not None, timeout=30, what="a process joined to fault-b's netns")
    try:
        st = labstate.read_state(name)
        report = clean_lab(name)
        assert stray.wait(timeout=10) == -9, report
        assert leftovers(st) == []
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait()
