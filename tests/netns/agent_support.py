"""calico-node on two node namespaces with a real etcd (test scaffolding, not product).

Node namespaces w0 and w1 share a link (eth0, ``W0``/``W1`` /24 unless a subclass says
otherwise); etcd runs inside w0 on its node address (as in a lab). :class:`TwoNodes` is that
setup and the calico-node processes started in the nodes (each logging to ``<dir>/<name>.log``,
health on :9099); :class:`Cluster` adds the etcd datastore's view (Nodes, IPAM, pods wired by
the test). :func:`running` makes one for a test and removes everything it made afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from datastore.conversion import namespace_to_profile
from testbed.lab.supervisor import tunnels_settled
from testbed.poll import wait_for
from tests.netns.felix_support import PY, REPO, InNetns, Topo, run, start_etcd
from tests.support import require_root, require_tool

W0, W1 = "172.31.9.1", "172.31.9.2"


class TwoNodes:
    """Two linked node namespaces, etcd in w0, a scratch dir, and the agents started in them."""

    addresses = (W0, W1)
    dir_prefix = "felix-agent-"
    ready_timeout = 40.0

    def __init__(self, topo: Topo) -> None:
        self.topo = topo
        self.w0, self.w1 = topo.node("w"), topo.node("w")
        a0, a1 = self.addresses
        topo.link_nodes(self.w0, self.w1, f"{a0}/24", f"{a1}/24")
        self.etcd = start_etcd(topo, self.w0, a0)
        self.dir = tempfile.mkdtemp(prefix=self.dir_prefix)
        topo.cleanup_dirs.append(self.dir)
        self.agents: dict[str, subprocess.Popen] = {}
        try:
            self.setup()
        except BaseException:
            self.close()  # what setup started outside the topology (a client thread, a server)
            raise

    def setup(self) -> None:
        """What the subclass adds on the nodes (datastore clients, servers, objects)."""

    def env(self, name: str, **extra: str) -> dict[str, str]:
        """The environment of node ``name``'s calico-node (subclasses say what it holds)."""
        raise NotImplementedError

    def start(self, name: str, ns: str, *argv: str, **env: str) -> subprocess.Popen:
        """Start ``python -m agent.main`` (or ``argv``) in ``ns`` as ``name``, with the env of
        node ``name.split('-')[0]`` plus ``env``; output goes to ``<dir>/<name>.log``."""
        log = open(os.path.join(self.dir, f"{name}.log"), "ab")
        p = self.topo.spawn(ns, PY, *(argv or ("-m", "agent.main")), env=self.env(name.split("-")[0], **env),
                            cwd=REPO, stdout=log, stderr=log)
        self.agents[name] = p
        return p

    def log(self, name: str) -> str:
        """What process ``name`` printed so far."""
        with open(os.path.join(self.dir, f"{name}.log")) as f:
            return f.read()

    def status(self, ns: str) -> dict:
        """The agent's health document on :9099/status in ``ns`` ({} while it does not answer)."""
        out = run("curl", "-s", "-m", "2", "http://127.0.0.1:9099/status", netns=ns, check=False)
        return json.loads(out) if out.strip() else {}

    def wait_ready(self, name: str, ns: str, timeout: float | None = None) -> dict:
        """Poll until agent ``name`` reports ready and its tunnel addresses are on their devices
        (allocate-tunnel-addrs runs beside Felix, as the lab's readiness wait also waits for);
        fails with its log if it exited."""
        def probe():
            p = self.agents[name]
            if p.poll() is not None:
                raise AssertionError(f"calico-node {name} exited {p.returncode}:\n{self.log(name)[-3000:]}")
            return self.status(ns)
        return wait_for(probe, lambda s: s.get("ready") is True and tunnels_settled(s),
                        timeout=timeout or self.ready_timeout,
                        what=f"calico-node {name} ready with its tunnel addresses")

    def close(self) -> None:
        """Release what :meth:`setup` made besides the topology (also a half-done setup's)."""


class Cluster(TwoNodes):
    """calico-node in the etcd datastore on both nodes; the test wires pods and (with BGP off,
    ``CALICO_NETWORKING_BACKEND=none``) installs the cross-node block routes itself."""

    def setup(self) -> None:
        self.ds = InNetns(self.w0)
        self.client = self.ds.call(self._client)
        wait_for(lambda: self.ds.call(lambda: self.client.etcd.revision()), timeout=10,
                 ignore=(Exception,), what="etcd in w0")
        # what calico-kube-controllers' namespace controller writes for the pods' namespace
        self.ds.call(lambda: self.client.create(namespace_to_profile({"metadata": {"name": "default"}})))

    def _client(self):
        from datastore import Client

        return Client([self.etcd])

    def env(self, name: str, **extra: str) -> dict[str, str]:
        base = os.path.join(self.dir, name)
        env = dict(os.environ)
        env.update({
            "NODE_NAME": name, "ETCD_ENDPOINTS": self.etcd, "IP": "autodetect", "DATASTORE_TYPE": "etcdv3",
            "CALICO_IPV4POOL_CIDR": "192.168.0.0/16", "CALICO_IPV4POOL_BLOCK_SIZE": "26",
            "CALICO_IPV4POOL_IPIP": "Always", "CALICO_IPV4POOL_NAT_OUTGOING": "true",
            "CALICO_NETWORKING_BACKEND": "none", "FELIX_HEALTHPORT": "9099",
            "FELIX_ROUTEREFRESHINTERVAL": "1", "FELIX_IPTABLESREFRESHINTERVAL": "1",
            "FELIX_IPSETSREFRESHINTERVAL": "1",
            "CALICO_VAR_LIB_DIR": f"{base}/var-lib-calico", "CALICO_VAR_RUN_DIR": f"{base}/var-run-calico",
            "CNI_NET_DIR": f"{base}/cni-net.d", "CNI_BIN_DIR": f"{base}/cni-bin",
            "CALICO_TUNNEL_BPFFS": self.topo.bpf_dir(name),
        })
        env.update(extra)
        return env

    def add_pod(self, node_ns: str, node: str, pod: str, iface: str) -> tuple[str, str]:
        """Allocate an IP through IPAM, write the WorkloadEndpoint, wire the pod netns (no route)."""
        def alloc():
            from datastore.resources import Metadata, WorkloadEndpoint
            from ipam import IPAM

            ip = IPAM(self.client).auto_assign(1, f"k8s-pod-network.{pod}", {"node": node, "pod": pod,
                                                                              "namespace": "default"}, node)[0]
            wep = WorkloadEndpoint(metadata=Metadata(name=f"{node}-k8s-{pod}-eth0", namespace="default"))
            wep.spec.orchestrator, wep.spec.node, wep.spec.pod, wep.spec.endpoint = "k8s", node, pod, "eth0"
            wep.spec.ip_networks = [f"{ip}/32"]
            wep.spec.profiles = ["kns.default", "ksa.default.default"]
            wep.spec.interface_name = iface
            self.client.create(wep)
            return str(ip)
        ip = self.ds.call(alloc)
        ns = self.topo.pod(node_ns, ip, iface, route=False)
        return ns, ip

    def node(self, name: str):
        """The Calico Node ``name`` as the datastore holds it."""
        return self.ds.call(lambda: self.client.get("Node", name))

    def close(self) -> None:
        if hasattr(self, "ds"):
            self.ds.close()


@contextmanager
def running(cls: type[TwoNodes] = Cluster, *tools: str) -> Iterator:
    """A ``cls`` on a fresh :class:`Topo` (root, etcd, curl and ``tools`` required); at exit its
    agents are stopped, ``cls.close`` runs and every namespace, process and dir is removed,
    also when the test failed."""
    require_root()
    for tool in ("etcd", "curl", *tools):
        require_tool(tool)
    topo = Topo()
    c = None
    try:
        c = cls(topo)
        yield c
    finally:
        if c is not None:
            for p in c.agents.values():
                topo.stop(p)
            c.close()
        topo.close()


def strip_counters(text: str) -> str:
    """``iptables-save`` output without its ``#`` comment lines (the dump's timestamps)."""
    return "\n".join(ln for ln in text.splitlines() if not ln.startswith("#"))
