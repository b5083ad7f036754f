"""A Felix restart leaves no window where a denied flow passes (issue 13's must-hold).

calico-node runs in a node namespace with a real etcd; two pods on that node; a
GlobalNetworkPolicy denies ingress to the server. A probe loop connects client ->
server every few milliseconds while the agent is stopped (SIGTERM, then kill -9) and
started again. Felix must not flush or rebuild the filter table when it starts: it reads
what the kernel holds, finds its own rules by their hashes and writes nothing. Proof:
no probe ever connects, the policy's DROP rule is there at every sample taken during
the restarts and its packet counter only grows (a rewritten chain would reset it), and
the filter table is byte-for-byte the same afterwards.
"""

from __future__ import annotations

import signal
import socket
import threading
import time

import pytest

from datastore.resources import GlobalNetworkPolicy, Metadata
from datastore.rules import Rule
from kernel.netns import entered
from testbed.capture import counters
from testbed.poll import wait_for
from tests.netns.agent_support import running, strip_counters
from tests.netns.felix_support import run

pytestmark = pytest.mark.netns


@pytest.fixture
def cluster():
    with running() as c:
        yield c


def connects(pod_ns: str, ip: str, port: int, timeout: float) -> bool:
    with entered(pod_ns):
        s = socket.socket()
    s.settimeout(timeout)
    try:
        s.connect((ip, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def test_restart_keeps_denied_flows_denied(cluster):
    c = cluster
    c.start("w0", c.w0)
    c.wait_ready("w0", c.w0)
    client_ns, _ = c.add_pod(c.w0, "w0", "pod-c", "cali0c0000001")
    server_ns, server_ip = c.add_pod(c.w0, "w0", "pod-s", "cali0d0000001")

    def label_server():
        wep = c.client.get("WorkloadEndpoint", "w0-k8s-pod-s-eth0", "default")
        wep.metadata.labels = {"app": "server", "projectcalico.org/namespace": "default"}
        c.client.update(wep)
    c.ds.call(label_server)
    c.topo.spawn(server_ns, "busybox", "httpd", "-f", "-p", "80", "-h", "/")
    wait_for(lambda: connects(f"/run/netns/{client_ns}", server_ip, 80, 0.5), timeout=15,
             what="client -> server allowed before the policy")

    gnp = GlobalNetworkPolicy(metadata=Metadata(name="deny-server"))
    gnp.spec.selector = "app == 'server'"
    gnp.spec.types = ["Ingress"]
    gnp.spec.ingress = [Rule(action="Deny")]
    c.ds.call(lambda: c.client.create(gnp))
    wait_for(lambda: connects(f"/run/netns/{client_ns}", server_ip, 80, 0.3), lambda ok: not ok, timeout=15,
             what="client -> server denied by the policy")

    def drop_rule() -> counters.RuleCount | None:
        rules = counters.read(c.w0)
        return next((r for r in rules if r.chain == "cali-pi-default.deny-server" and r.target == "DROP"), None)

    first = drop_rule()
    assert first is not None, "no DROP rule in cali-pi-default.deny-server"
    table_before = strip_counters(run("iptables-save", "-t", "filter", netns=c.w0))

    stop = threading.Event()
    passed: list[float] = []
    attempts = [0]
    samples: list[counters.RuleCount | None] = []

    def probe_loop() -> None:
        while not stop.is_set():
            attempts[0] += 1
            if connects(f"/run/netns/{client_ns}", server_ip, 80, 0.2):
                passed.append(time.time())

    def sample_loop() -> None:
        while not stop.is_set():
            samples.append(drop_rule())
            stop.wait(0.05)

    threads = [threading.Thread(target=probe_loop, daemon=True) for _ in range(4)]
    threads.append(threading.Thread(target=sample_loop, daemon=True))
    for t in threads:
        t.start()
    try:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            c.topo.stop(c.agents["w0"], sig)
            time.sleep(0.3)  # the node without its agent: the kernel keeps enforcing
            c.start("w0", c.w0)
            c.wait_ready("w0", c.w0)
            time.sleep(1.0)  # and the first seconds of the new agent
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)

    assert passed == [], f"{len(passed)} denied connection(s) got through during the restarts"
    assert attempts[0] > 40, attempts
    assert samples and all(s is not None for s in samples), "the DROP rule was missing at some moment"
    counts = [s.packets for s in samples if s is not None]
    assert counts == sorted(counts) and counts[-1] > first.packets, \
        "the DROP rule's counter was reset (the chain was rewritten) or counted nothing"
    assert strip_counters(run("iptables-save", "-t", "filter", netns=c.w0)) == table_before
