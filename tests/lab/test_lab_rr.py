"""Route reflection in a lab (issue 6): topologies/rr.yaml, mesh off, k8s-m the reflector.

What a user sees: `calicoctl node status` on each worker lists one session (to k8s-m), on
k8s-m one per worker; a worker reaches the other worker's block directly through the
tunnel (the reflector keeps the original next hop); pods on the two workers talk.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from ipaddress import ip_address, ip_network

import pytest

from agent.bgp.messages import decode
from testbed.lab import lifecycle as labmod
from testbed.lab import state as labstate
from testbed.poll import wait_for
from tests.support import require_root, require_tool, unique

pytestmark = pytest.mark.lab

TOPOLOGY = labstate.REPO / "topologies" / "rr.yaml"
ADDR = {"k8s-m": "172.30.0.10", "k8s-w0": "172.30.0.11", "k8s-w1": "172.30.0.12"}
FAST_BGP = "hold=9,connect_delay=0.5,connect_retry=1,error_wait_min=1"
PODS = """\
apiVersion: v1
kind: Pod
metadata: {name: rr-a, labels: {app: rr-a}}
spec:
  nodeName: k8s-w0
  containers: [{name: nginx, image: nginx}]
---
apiVersion: v1
kind: Pod
metadata:
  name: rr-b
  labels: {app: rr-b}
  annotations: {cni.projectcalico.org/ipv4pools: '["rr-extra"]'}
spec:
  nodeName: k8s-w1
  containers: [{name: nginx, image: nginx}]
"""
EXTRA_POOL = """\
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: rr-extra}
spec: {cidr: 172.29.0.0/16, blockSize: 26, ipipMode: Always, vxlanMode: Never, natOutgoing: false}
"""
ROW = re.compile(r"^\|\s*(\d+\.\d+\.\d+\.\d+)\s*\|\s*([^|]*?)\s*\|\s*(\w+)\s*\|[^|]*\|\s*([^|]*?)\s*\|$")


def cli(lab: str, *args: str, input: str | None = None,  # noqa: A002
        timeout: float = 30) -> subprocess.CompletedProcess:
    """``calicolab --lab LAB ARGS...`` as a user types it."""
    return subprocess.run([sys.executable, "-m", "testbed.cli", "--lab", lab, *args],
                          capture_output=True, text=True, input=input, timeout=timeout,
                          cwd=str(labstate.REPO))


def peers(lab: str, node: str) -> list[tuple[str, str, str, str]]:
    """(address, peer type, state, info) rows of `calicoctl node status` run in ``node``."""
    out = cli(lab, "exec", node, "--", "calicoctl", "node", "status").stdout
    return [m.groups() for m in map(ROW.match, out.splitlines()) if m]


def own_block(lab: str, node: str) -> str | None:
    """The block ``node`` originates (its `blackhole <cidr> proto bird` route)."""
    out = cli(lab, "exec", node, "--", "ip", "route").stdout
    m = re.search(r"^blackhole (\S+) proto bird", out, re.M)
    return m.group(1) if m else None


@pytest.fixture
def rr_lab(monkeypatch):
    require_root()
    require_tool("etcd")
    require_tool("mnexec")
    monkeypatch.setenv("CALICOLAB_BGP_TIMERS", FAST_BGP)   # inherited by every node's agent
    name = unique("rr")
    try:
        labmod.up(TOPOLOGY, name=name, progress=lambda msg: None, datastore="etcdv3")
        yield name
    finally:
        if labstate.read_state(name) is not None:
            labmod.down(name, progress=lambda msg: None)


def test_route_reflector_sessions_routes_and_pods(rr_lab, tmp_path):
    from testbed.capture import pcapassert as pa
    from testbed.capture.group import CaptureGroup

    lab = rr_lab
    # sessions: each worker one, to the reflector; the reflector one per worker
    est = ("node specific", "up", "Established")
    for w in ("k8s-w0", "k8s-w1"):
        wait_for(lambda w=w: peers(lab, w), lambda rows: rows == [(ADDR["k8s-m"], *est)],
                 timeout=15, what=f"{w}: exactly one session, to k8s-m, Established")
    wait_for(lambda: peers(lab, "k8s-m"),
             lambda rows: sorted(rows) == [(ADDR["k8s-w0"], *est), (ADDR["k8s-w1"], *est)],
             timeout=15, what="k8s-m: one Established session per worker")

    # the reflector's configuration, as confd computed it: both workers are rr clients
    cfg = cli(lab, "exec", "k8s-m", "--", "python", "-m", "agent.bgp.ctl", "show", "config").stdout
    assert cfg.count("rr client; rr cluster id 244.0.0.1;") == 2, cfg
    assert "protocol bgp Mesh_" not in cfg, cfg

    # routes: each worker reaches the other's block via that worker (original next hop)
    blocks = {n: wait_for(lambda n=n: own_block(lab, n), timeout=15, what=f"{n}'s block")
              for n in ADDR}
    for me, other in (("k8s-w0", "k8s-w1"), ("k8s-w1", "k8s-w0")):
        want = f"{blocks[other]} via {ADDR[other]} dev tunl0 proto bird onlink"
        mine = f"{blocks['k8s-m']} via {ADDR['k8s-m']} dev tunl0 proto bird onlink"
        wait_for(lambda me=me: cli(lab, "exec", me, "--", "ip", "route").stdout,
                 lambda out, want=want, mine=mine: want in out and mine in out,
                 timeout=15, what=f"{me}: '{want}' (reflected) and '{mine}'")

    # a new block on k8s-w1 (rr-b takes its address from a second pool) while we capture:
    # k8s-m reflects it to k8s-w0 with k8s-w1's next hop, ORIGINATOR_ID and its CLUSTER_LIST
    caps = CaptureGroup.for_lab(lab, ["k8s-w0", "k8s-w1"], root=tmp_path, ifaces="eth0").start()
    try:
        res = cli(lab, "calicoctl", "apply", "-f", "-", input=EXTRA_POOL)
        assert res.returncode == 0, res.stdout + res.stderr
        res = cli(lab, "kubectl", "apply", "-f", "-", input=PODS)
        assert res.returncode == 0, res.stderr

        def pod_ips() -> dict[str, str]:
            items = json.loads(cli(lab, "kubectl", "get", "pods", "-o", "json").stdout)["items"]
            return {p["metadata"]["name"]: p.get("status", {}).get("podIP") for p in items
                    if p.get("status", {}).get("phase") == "Running"}

        ips = wait_for(pod_ips, lambda d: d.get("rr-a") and d.get("rr-b"), timeout=30,
                       what="pods rr-a (k8s-w0) and rr-b (k8s-w1) Running with an IP")
        new_block = str(ip_network(f"{ips['rr-b']}/26", strict=False))
        assert ip_address(ips["rr-b"]) in ip_network("172.29.0.0/16"), ips
        want = f"{new_block} via {ADDR['k8s-w1']} dev tunl0 proto bird onlink"
        wait_for(lambda: cli(lab, "exec", "k8s-w0", "--", "ip", "route").stdout,
                 lambda out: want in out, timeout=15, what=f"k8s-w0: '{want}' (reflected)")
        # pods on the two workers reach each other through the reflected routes
        for src, dst in (("rr-a", "rr-b"), ("rr-b", "rr-a")):
            argv = ("curl", "-o", "/dev/null", "-s", "-m", "2", "-w", "%{http_code}",
                    f"http://{ips[dst]}")
            wait_for(lambda src=src, argv=argv: cli(lab, "exec", f"default/{src}", "--",
                                                    *argv).stdout,
                     lambda out: out.strip() == "200", timeout=15,
                     what=f"curl from {src} to {dst} ({ips[dst]}) prints 200")
    finally:
        caps.stop()
    w0_pcap, w1_pcap = caps.run_dir / "k8s-w0-eth0.pcap", caps.run_dir / "k8s-w1-eth0.pcap"
    # on the wire: the reflected UPDATE, k8s-m -> k8s-w0, next hop k8s-w1 unchanged
    ups = pa.assert_bgp_update(w0_pcap, src=ADDR["k8s-m"], dst=ADDR["k8s-w0"], nlri=new_block,
                               next_hop=ADDR["k8s-w1"])
    # both ends are our speakers: ADD-PATH is negotiated both ways, NLRI carry path ids
    attrs = decode(ups[0].raw, addpath=True).attributes
    assert attrs.originator_id == ip_address(ADDR["k8s-w1"]), attrs
    assert attrs.cluster_list == (ip_address("244.0.0.1"),), attrs
    # ... and the pod traffic tunnelled straight between the workers, not through k8s-m
    pa.assert_ipip(w1_pcap, outer_src=ADDR["k8s-w0"], outer_dst=ADDR["k8s-w1"],
                   inner_src=ips["rr-a"], inner_dst=ips["rr-b"])
    pa.assert_ipip(w1_pcap, outer_src=ADDR["k8s-w1"], outer_dst=ADDR["k8s-w0"],
                   inner_src=ips["rr-b"], inner_dst=ips["rr-a"])
