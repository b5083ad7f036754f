"""The Mininet lab: up/down, what a node looks like, several labs at once, clean after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kernel import autogroup, schedpolicy
from testbed.lab import lifecycle as labmod
from testbed.lab import netns as nsmod
from testbed.lab import state as labstate
from testbed.lab.clean import clean_lab
from testbed.poll import wait_for
from tests.lab.lab_helpers import ROUTED, SMALL, leftovers, template_of, write_topology
from tests.support import require_root, require_tool, sh, unique

pytestmark = pytest.mark.lab


@pytest.fixture
def make_lab(tmp_path):
    """``make_lab(template) -> state`` of a running lab; every lab is cleaned at teardown."""
    require_root()
    for tool in ("mnexec", "etcd", "nsenter"):
        require_tool(tool)
    made: list[str] = []

    def make(template: str = SMALL, **kwargs) -> dict:
        name = unique("lt")
        made.append(name)
        path = write_topology(tmp_path, name, template)
        # etcd mode: these tests read and write Calico's data as etcd keys (EtcdClient, Client
        # on the lab's etcd endpoints)
        kwargs.setdefault("datastore", "etcdv3")
        return labmod.up(path, no_cni=True, progress=lambda _m: None, ready_timeout=5, **kwargs)

    yield make
    for name in made:
        clean_lab(name)


def _root_links() -> set[str]:
    return {line.split(": ")[1].split("@")[0]
            for line in sh("ip", "-o", "link").splitlines()}


def _etcd_put_get(netns: str, endpoint: str, key: str) -> bytes | None:
    from datastore.etcd import EtcdClient

    def op() -> bytes | None:
        c = EtcdClient([endpoint], timeout=3.0)
        c.put(key, b"hello")
        kv = c.get(key)
        return kv.value if kv else None

    return nsmod.run_in(netns, op)


def test_up_node_view_and_down(make_lab):
    links_before = _root_links()
    routes_before = sh("ip", "route")
    st = make_lab(ROUTED)
    lab = st["lab"]
    assert st["phase"] == "ready"
    # each node is reachable by name from the machine, uplink renamed to eth0
    addrs = sh("ip", "netns", "exec", f"{lab}-w0", "ip", "-o", "-4", "addr")
    assert "eth0    inet 172.30.61.11/24" in addrs, addrs
    # default route to the in-lab router only; the internet host answers through it
    assert "default via 172.30.61.1 dev eth0" in sh("ip", "-n", f"{lab}-w0", "route")
    sh("ip", "netns", "exec", f"{lab}-w1", "ping", "-c1", "-W2", "203.0.113.10")
    # etcd on the control-plane node address, reachable from a worker ...
    health = sh("ip", "netns", "exec", f"{lab}-w0", "curl", "-s", "-m", "3",
                "http://172.30.61.10:2379/health")
    assert '"health":"true"' in health
    # ... and from this process (the CLI's way: setns into the control-plane netns)
    assert _etcd_put_get(f"{lab}-m", "http://172.30.61.10:2379", "/calicolab-test/k") == b"hello"
    # the topology's workloads were applied (the real kubectl apply in the control-plane node)
    from kubeclient import Client, from_kubeconfig
    from testbed.lab import kubeadm

    conf = str(kubeadm.admin_conf(st))
    ns_obj = nsmod.run_in(f"{lab}-m", lambda: Client(from_kubeconfig(conf)).get("v1", "namespaces", "lab-probe"))
    assert ns_obj["metadata"]["name"] == "lab-probe"
    # the control plane's static pods weigh on the CPU as a session (kernel autogroups), a node's
    # pods as any other, and all run as batch work (kernel.schedpolicy: the zygote's forks and
    # what they exec, etcd): what /proc says of each started pod's processes
    def started() -> dict[str, list[int]]:
        pods = nsmod.run_in(f"{lab}-m", lambda: Client(from_kubeconfig(conf)).list("v1", "pods", "kube-system"))
        out = {}
        for p in pods["items"]:
            pids = json.loads((p["metadata"].get("annotations") or {}).get("calicolab.io/pids") or "{}")
            if pids:
                out[p["metadata"]["name"].rsplit("-", 1)[0]] = [int(pid) for pid in pids.values()]
        return out

    # (mirror pods and their annotations follow the static pods' start)
    pods = wait_for(started, lambda w: {"kube-apiserver", "etcd", "kube-controller-manager", "kube-proxy"} <= set(w),
                    timeout=30, what="kube-system's pods started")
    weight = {name: autogroup.nice_of(pids[0]) for name, pids in pods.items()}
    assert weight["kube-apiserver"] == weight["etcd"] == weight["kube-controller-manager"] == -20, weight
    assert weight["kube-proxy"] == 0, weight
    policies = {pid: schedpolicy.policy_of(pid) for pids in pods.values() for pid in pids}
    assert set(policies.values()) == {"SCHED_BATCH"}, policies
    # the lab's API server on the control plane's :6443: the real kubectl in a worker's shell
    # (KUBECONFIG=/etc/kubernetes/admin.conf) sees the nodes, and only the control plane holds the PKI
    from testbed.lab.nodeshell import run_in_node

    kubectl = str(labstate.VENV_BIN / "kubectl")
    got = run_in_node(st, "w0", [kubectl, "get", "nodes", "-o", "name"], capture_output=True, text=True)
    assert got.returncode == 0 and set(got.stdout.split()) >= {"node/m", "node/w0", "node/w1"}, got
    assert "https://172.30.61.10:6443" in run_in_node(st, "w1", [kubectl, "config", "view", "-o", "name"],
                                                      capture_output=True, text=True).stdout + \
        run_in_node(st, "w1", ["cat", "/etc/kubernetes/admin.conf"], capture_output=True, text=True).stdout
    pki = run_in_node(st, "m", ["ls", "/etc/kubernetes/pki"], capture_output=True, text=True).stdout.split()
    assert {"ca.crt", "ca.key", "apiserver.crt", "sa.key"} <= set(pki), pki
    assert run_in_node(st, "w0", ["ls", "/etc/kubernetes/pki"], capture_output=True,
                       text=True).stdout.split() == ["ca.crt"]
    conf = subprocess.run([sys.executable, "-m", "testbed.cli", "kubeconfig", "--lab", lab],
                          capture_output=True, text=True)
    assert conf.returncode == 0 and '"server": "https://172.30.61.10:6443"' in conf.stdout, conf
    # the machine's namespace gained no link and lost no route
    assert _root_links() == links_before
    assert sh("ip", "route") == routes_before
    # private node dirs: a file in w0's /etc/cni/net.d is not in m's nor on the machine
    run_in_node(st, "w0", ["sh", "-c", "echo {} > /etc/cni/net.d/99-probe.conf"], check=True)
    seen_m = run_in_node(st, "m", ["ls", "/etc/cni/net.d"], capture_output=True, text=True).stdout
    seen_w0 = run_in_node(st, "w0", ["ls", "/etc/cni/net.d"], capture_output=True, text=True).stdout
    assert "99-probe.conf" in seen_w0 and "99-probe.conf" not in seen_m
    assert not Path("/etc/cni/net.d/99-probe.conf").exists()
    # pod netns made inside a node stay inside it
    pod_ns = unique("cni-")
    run_in_node(st, "w0", ["ip", "netns", "add", pod_ns], check=True)
    assert pod_ns in run_in_node(st, "w0", ["ip", "netns", "list"], capture_output=True,
                                 text=True).stdout
    assert not Path("/run/netns", pod_ns).exists()
    assert pod_ns not in run_in_node(st, "w1", ["ip", "netns", "list"], capture_output=True,
                                     text=True).stdout
    labmod.down(lab, progress=lambda _m: None)
    assert leftovers(st) == []
    assert not Path("/run/netns", pod_ns).exists()


def test_several_labs_at_once(make_lab):
    a = make_lab()
    b = make_lab()
    assert a["lab"] != b["lab"]
    # same addresses in both labs, yet separate etcds
    _etcd_put_get(f"{a['lab']}-m", "http://172.30.60.10:2379", "/calicolab-test/who")
    from datastore.etcd import EtcdClient

    def get_b() -> object:
        return EtcdClient(["http://172.30.60.10:2379"], timeout=3.0).get("/calicolab-test/who")

    assert nsmod.run_in(f"{b['lab']}-m", get_b) is None
    assert {a["lab"], b["lab"]} <= set(labstate.running_labs())
    labmod.down(a["lab"], progress=lambda _m: None)
    assert leftovers(a) == []
    # the other lab is untouched
    assert labstate.is_running(labstate.read_state(b["lab"]))
    sh("ip", "netns", "exec", f"{b['lab']}-w0", "ping", "-c1", "-W2", "172.30.60.10")


def test_clean_after_kill_9_leaves_nothing(make_lab):
    st = make_lab()
    lab = st["lab"]
    # a stray process inside a node, as a user's tcpdump would be
    stray = subprocess.Popen(["ip", "netns", "exec", f"{lab}-w0", "sleep", "300"])
    try:
        node_ns = os.stat(f"/run/netns/{lab}-w0").st_ino
        wait_for(lambda: os.stat(f"/proc/{stray.pid}/ns/net").st_ino, lambda ino: ino == node_ns, timeout=5,
                 ignore=(OSError,), what="the stray process to be inside the node's netns")
        recorded = [st["supervisor"], *[h for h in st["hosts"].values()],
                    *st["services"].values()]
        pids = [r["pid"] for r in recorded if r.get("pid")]
        assert len(pids) >= 5  # supervisor, 3 Mininet shells, etcd
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: [p for p in pids if labstate.pid_alive(p)], lambda alive: not alive,
                 timeout=5, what="recorded lab processes to die")
        assert not labstate.is_running(labstate.read_state(lab))
        report = clean_lab(lab)
        assert not report.errors, report.errors
        assert leftovers(st) == []
        wait_for(lambda: stray.poll(), lambda rc: rc is not None, timeout=5,
                 what="the stray process in the node to be killed")
    finally:
        if stray.poll() is None:
            stray.kill()
        stray.wait()


def test_up_failure_creates_nothing(make_lab, tmp_path):
    st = make_lab()
    with pytest.raises(labstate.LabError) as info:
        labmod.up(Path(st["topology"]), no_cni=True, progress=lambda _m: None, datastore="etcdv3")
    assert "already running" in str(info.value) and info.value.exit_code == labstate.EXIT_EXISTS
    assert labstate.is_running(labstate.read_state(st["lab"]))


BGP_LAB = SMALL + """\
calico:
  bgp:
    mesh: false
    asNumber: 65001
    routeReflectors: [m]
    externalPeers:
      - {{name: tor, address: 172.30.60.99, asNumber: 65100}}
"""


def test_topology_bgp_settings_become_calico_resources(make_lab):
    st = make_lab(BGP_LAB)

    def read() -> dict:
        from datastore import Client

        c = Client(st["etcd_endpoints"])
        return {"config": c.get("BGPConfiguration", "default").to_dict()["spec"],
                "peers": {p.metadata.name: p.to_dict()["spec"] for p in c.list("BGPPeer")}}

    got = nsmod.run_in(f"{st['lab']}-m", read)
    assert got["config"]["nodeToNodeMeshEnabled"] is False and got["config"]["asNumber"] == 65001
    assert got["peers"]["tor"]["peerIP"] == "172.30.60.99"
    assert got["peers"]["tor"]["asNumber"] == 65100
    assert got["peers"]["peer-with-route-reflectors"]["peerSelector"] == "route-reflector == 'true'"


def test_crosssubnet_nodes_reach_etcd_through_the_router(make_lab):
    st = make_lab(template_of(labstate.REPO / "topologies" / "crosssubnet.yaml"))
    lab = st["lab"]
    # k8s-w1 is on lan1: its default route is r0's leg there, and r0 forwards to lan0
    assert "default via 172.30.9.1 dev eth0" in sh("ip", "-n", f"{lab}-k8s-w1", "route")
    health = sh("ip", "netns", "exec", f"{lab}-k8s-w1", "curl", "-s", "-m", "3",
                "http://172.30.8.10:2379/health")
    assert '"health":"true"' in health
    ttl = sh("ip", "netns", "exec", f"{lab}-k8s-w1", "ping", "-c1", "-W2", "172.30.8.10")
    assert "ttl=63" in ttl  # one routed hop (r0)
    ttl = sh("ip", "netns", "exec", f"{lab}-k8s-w0", "ping", "-c1", "-W2", "172.30.8.10")
    assert "ttl=64" in ttl  # same segment
