"""The walkthrough, end to end: what ``calicolab demo`` runs and the flow tests assert.

It replays ../shared/reference/walkthrough.md on the lab of
``topologies/walkthrough.yaml``:

1. the cluster comes up without a CNI: every node ``NotReady`` (NetworkPluginNotReady);
2. ``install-cni`` (the walkthrough's ``kubectl apply -f calico.yaml``): nodes ``Ready``;
3. IPAM and BGP as the user inspects them (``calicoctl ipam show --show-blocks``,
   tunnel addresses, ``ip -c route``, ``calicoctl node status``);
4. the workloads: a Deployment ``nginx`` with 2 replicas pinned to k8s-w0, and pods
   ``k8s-w0`` and ``k8s-w1`` pinned to their nodes;
5. the four flows under tcpdump on every ``cali*``, ``tunl0``, ``vxlan.calico`` and
   ``eth0`` (and the external host's ``eth0``): same node, cross node (IPIP, VXLAN or
   plainly routed, as the pool's mode says: :mod:`testbed.modes`), pod to the internet
   (masquerade), and through a Service (DNAT); then section 10, policy: a Kubernetes
   NetworkPolicy denies ingress to nginx (the curl from pod k8s-w1 fails: its SYN
   leaves the pod, crosses k8s-w0's tunnel and is dropped before nginx's cali
   interface, by the rule whose counter shows it), then one allows pod k8s-w1 by
   label (200 again, the ``cali-pi-`` chain and the ``cali40s:`` ipset on the node);
6. each flow's pcaps checked with :mod:`testbed.capture.pcapassert`, the results table,
   and an HTML report with the packets hop by hop and a diagram of the lab.

Every step goes through the same commands a user types (``calicolab kubectl``,
``calicolab calicoctl``, ``calicolab exec``), so what the demo shows is what a
user sees. Waits poll with a deadline (:func:`testbed.poll.wait_for`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.capture import pcapassert as pa
from testbed.modes import Mode, NodeInfo, encapsulated, expected_route
from testbed.poll import WaitTimeout, deadline_scale, wait_for

REPO = Path(__file__).resolve().parents[1]
POLICY_DENY_NAME = "deny-ingress-nginx"
POLICY_DENY = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-ingress-nginx
spec:
  podSelector:
    matchLabels: {app: nginx}
  policyTypes: [Ingress]
"""
POLICY_ALLOW_NAME = "allow-nginx-from-k8s-w1"
POLICY_ALLOW = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-nginx-from-k8s-w1
spec:
  podSelector:
    matchLabels: {app: nginx}
  ingress:
  - from:
    - podSelector:
        matchLabels: {app: k8s-w1}
    ports:
    - {port: 80}
"""
TOPOLOGY = REPO / "topologies" / "walkthrough.yaml"
POD_GATEWAY = "169.254.1.1"
CALI_MAC = "ee:ee:ee:ee:ee:ee"
CAPTURE_IFACES = "cali*,tunl0,vxlan.calico,eth0"
FOUR_FLOWS = ("same-node", "cross-node", "internet", "service")

WORKLOADS = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: nginx
  labels: {app: nginx}
spec:
  replicas: 2
  selector:
    matchLabels: {app: nginx}
  template:
    metadata:
      labels: {app: nginx}
    spec:
      nodeName: k8s-w0
      containers:
      - name: nginx
        image: nginx
---
apiVersion: v1
kind: Pod
metadata:
  name: k8s-w0
  labels: {app: k8s-w0}
spec:
  nodeName: k8s-w0
  containers:
  - name: nginx
    image: nginx
---
apiVersion: v1
kind: Pod
metadata:
  name: k8s-w1
  labels: {app: k8s-w1}
spec:
  nodeName: k8s-w1
  containers:
  - name: nginx
    image: nginx
"""


class WalkthroughError(RuntimeError):
    """A step of the walkthrough failed; the message says which and what was seen."""


@dataclass
class Step:
    """One step as the table and the report show it."""

    name: str
    seconds: float
    output: str = ""


@dataclass
class Pod:
    """A pod the flows use."""

    name: str
    node: str
    ip: str
    iface: str  # the host-side cali interface
    namespace: str = "default"


@dataclass
class Flow:
    """One flow: what ran, what the user saw, and the pcap checks."""

    name: str
    title: str
    command: str
    result: str = ""
    ok: bool = False
    error: str | None = None
    pcaps: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    match: Any = None
    hop_files: list[Path] = field(default_factory=list)
    since: float = field(default_factory=time.time)  # packets before this belong to earlier flows
    ends: list[str] = field(default_factory=list)  # pod/host names outlined in the diagram
    expect: str = "200"  # what curl must print for the flow to be ok ("000": denied)
    drop: tuple[str, str] | None = None  # (node, the rule that dropped it) for a denied flow
    state: dict[str, str] = field(default_factory=dict)  # node state read while the flow ran (checked later)


def _run(argv: list[str], timeout: float = 60, check: bool = True,
         input: str | None = None) -> subprocess.CompletedProcess:  # noqa: A002
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout * deadline_scale(),
                         input=input)
    if check and res.returncode != 0:
        raise WalkthroughError(f"`{' '.join(argv)}` exited {res.returncode}: "
                               f"{(res.stderr or res.stdout).strip()[-600:]}")
    return res


class Walkthrough:
    """Drives one lab through the walkthrough. Use :meth:`run` or the steps one by one."""

    def __init__(self, lab: str = "walkthrough", topology: Path = TOPOLOGY,
                 progress: Callable[[str], None] | None = None, run: str | None = None,
                 runtime: str | None = None, datastore: str | None = None):
        self.lab = lab
        #: kubernetes or etcdv3 (None: the topology's calico.datastore, else the default kubernetes)
        self.datastore = datastore
        self.topology = Path(topology)
        self.runtime = runtime  # None: the topology's (netns, containerd or docker)
        self.progress = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.steps: list[Step] = []
        self.pods: dict[str, Pod] = {}
        self.nodes: dict[str, dict[str, Any]] = {}
        self.flows: list[Flow] = []
        self.captures: Any = None
        self.run_name = run or time.strftime("run-%Y%m%d-%H%M%S")
        self.cluster_ip: str | None = None
        self.mode = Mode()  # the pool's mode as last read (inspect, read_mode)
        self.info: dict[str, NodeInfo] = {}  # the Calico Nodes as last read
        self.t0 = time.monotonic()

    # -- commands as a user types them ------------------------------------------------

    def cli(self, *args: str, timeout: float = 60, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess:  # noqa: A002
        """``calicolab --lab LAB ARGS...``"""
        return _run([sys.executable, "-m", "testbed.cli", "--lab", self.lab, *args],
                    timeout=timeout, check=check, input=input)

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> str:  # noqa: A002
        return self.cli("kubectl", *args, check=check, input=input).stdout

    def calicoctl(self, *args: str) -> str:
        return self.cli("calicoctl", *args).stdout

    def in_node(self, node: str, *cmd: str, check: bool = True, timeout: float = 30) -> str:
        return self.cli("exec", node, "--", *cmd, check=check, timeout=timeout).stdout

    def in_pod(self, pod: str, *cmd: str, check: bool = True,
               timeout: float = 30) -> subprocess.CompletedProcess:
        return self.cli("exec", f"default/{pod}", "--", *cmd, check=check, timeout=timeout)

    def _step(self, name: str, t_start: float, output: str = "") -> None:
        secs = time.monotonic() - t_start
        self.steps.append(Step(name, secs, output))
        self.progress(f"[{time.monotonic() - self.t0:5.1f}s] {name} ({secs:.1f}s)")

    # -- 1-2: the cluster without and with Calico -------------------------------------

    def node_conditions(self) -> dict[str, dict[str, str]]:
        """Per node, the Ready condition's status and reason (from ``kubectl get nodes -o json``)."""
        doc = json.loads(self.kubectl("get", "nodes", "-o", "json"))
        out = {}
        for item in doc.get("items", []):
            cond = next((c for c in item.get("status", {}).get("conditions", [])
                         if c.get("type") == "Ready"), {})
            out[item["metadata"]["name"]] = {"status": cond.get("status", "Unknown"),
                                             "reason": cond.get("reason", ""),
                                             "message": cond.get("message", "")}
        return out

    def up(self) -> None:
        """Bring the lab up without a CNI and check every node is NotReady for that reason."""
        from testbed.lab import lifecycle as labmod

        t = time.monotonic()
        from testbed.lab.topology import load

        nodes = len(load(self.topology).nodes)
        labmod.up(self.topology, name=self.lab, no_cni=True, progress=self.progress, runtime=self.runtime,
                  timeout=120 * deadline_scale(), datastore=self.datastore)
        self._step("cluster up without a CNI (calicolab up --no-cni)", t)
        t = time.monotonic()
        conds = wait_for(self.node_conditions, lambda c: len(c) >= nodes, timeout=30,
                         what=f"{nodes} nodes registered")
        not_ready = {n: c for n, c in conds.items() if c["status"] != "True"}
        if len(not_ready) != len(conds) or any(c["reason"] != "NetworkPluginNotReady"
                                               for c in not_ready.values()):
            raise WalkthroughError(f"expected every node NotReady with NetworkPluginNotReady, got {conds}")
        self._step("kubectl get nodes: all NotReady (NetworkPluginNotReady: cni config uninitialized)",
                   t, self.kubectl("get", "nodes"))

    def install(self) -> None:
        """``install-cni`` and wait until every node is Ready."""
        from testbed.lab import lifecycle as labmod

        t = time.monotonic()
        labmod.install_cni(self.lab, timeout=120 * deadline_scale())
        wait_for(self.node_conditions, lambda c: c and all(v["status"] == "True" for v in c.values()),
                 timeout=60, what="every node Ready after install-cni")
        self._step("install Calico (calicolab install-cni): all nodes Ready", t,
                   self.kubectl("get", "nodes", "-o", "wide"))

    # -- 3: IPAM and routes ------------------------------------------------------------

    def inspect(self) -> None:
        """Read what the walkthrough's section 3-4 looks at: blocks, tunnel addresses, routes."""
        t = time.monotonic()
        self.read_mode()
        field = {"ipip": "spec.bgp.ipv4IPIPTunnelAddr", "vxlan": "spec.ipv4VXLANTunnelAddr"}.get(self.mode.encap or "")
        missing = [n for n, v in self.nodes.items() if field and not v["tunnel"]]
        if missing:
            raise WalkthroughError(f"nodes without {field} ({self.mode.name}): {missing}")
        blocks = self.calicoctl("ipam", "show", "--show-blocks")
        self._step(f"calicoctl ipam show --show-blocks; tunnel addresses from calicoctl get nodes ({self.mode.name})",
                   t, blocks)

    def read_mode(self) -> Mode:
        """The pool's mode (``calicoctl get ippools``) and every node's address and tunnel
        addresses (``calicoctl get nodes``); ``nodes[n]["tunnel"]`` is the active mode's."""
        pools = self._items(self.calicoctl("get", "ippools", "-o", "json"))
        modes = {Mode.of_pool(p.get("spec", {})) for p in pools if not p.get("spec", {}).get("disabled")}
        if len(modes) != 1:
            raise WalkthroughError(f"expected one enabled IP pool mode, found {sorted(m.name for m in modes)}")
        self.mode = modes.pop()
        for item in self._items(self.calicoctl("get", "nodes", "-o", "json")):
            info = NodeInfo.of_node(item)
            self.info[info.name] = info
            tunnel = {"ipip": info.ipip_tunnel, "vxlan": info.vxlan_tunnel}.get(self.mode.encap or "")
            self.nodes[info.name] = {"address": info.ip, "tunnel": tunnel, "ipip_tunnel": info.ipip_tunnel,
                                     "vxlan_tunnel": info.vxlan_tunnel}
        return self.mode

    @staticmethod
    def _items(text: str) -> list[dict]:
        doc = json.loads(text)
        return doc.get("items", [doc]) if isinstance(doc, dict) else doc

    def vtep_mac(self, node: str) -> str:
        """A node's VXLAN tunnel MAC: its Node's ``vxlanTunnelMACAddr``, else Felix's derivation."""
        from agent.felix.encap import vtep_mac

        info = self.info.get(node)
        return (info.vxlan_mac if info and info.vxlan_mac else vtep_mac(node)).lower()

    def expected_routes(self) -> dict[str, list[str]]:
        """Per node, the ``ip route`` text it needs towards every other node's blocks: one
        line per block affine to the other node; a node without a block yet (no encapsulation
        and no pod: nothing to route) is expected only when the mode gives it a tunnel address,
        which comes from a block of its own."""
        blocks = self.block_affinities()
        out: dict[str, list[str]] = {}
        for me in sorted(self.info):
            lines = []
            for o in sorted(self.info):
                want = expected_route(self.mode, self.info[me], self.info[o]) if o != me else None
                if want is None:
                    continue
                if blocks.get(o):
                    lines += [want.text(cidr) for cidr in sorted(blocks[o])]
                elif self.mode.encap is not None:
                    lines.append(want.text())
            out[me] = lines
        return out

    def wait_routes(self, timeout: float = 30) -> None:
        """Every node routes every other node's blocks as the pool's mode says (IPIP: BGP via
        tunl0; VXLAN: Felix via vxlan.calico; no encapsulation or CrossSubnet inside the
        subnet: via the uplink)."""
        t = time.monotonic()
        for node, wants in self.expected_routes().items():
            wait_for(lambda node=node: self.in_node(node, "ip", "route"),
                     lambda out, wants=wants: all(w in out for w in wants),
                     timeout=timeout, what=f"{self.mode.name} routes on {node}: {wants}")
        self._step(f"routes converged ({self.mode.name}): every remote block routed on every node", t,
                   self.in_node("k8s-w0", "ip", "route"))

    def tunnel_files(self, *nodes: str) -> list[Path]:
        """The capture files of the mode's tunnel device on ``nodes`` (none without encapsulation)."""
        dev = self.mode.device
        return [self.captures.file(n, dev) for n in nodes] if dev else []

    # -- 4: workloads --------------------------------------------------------------------

    def deploy(self) -> None:
        """Apply the Deployment and the two pinned pods; wait until all run with an IP."""
        t = time.monotonic()
        self.kubectl("apply", "-f", "-", input=WORKLOADS)

        def pods() -> list[dict]:
            return json.loads(self.kubectl("get", "pods", "-o", "json")).get("items", [])

        def ready(items: list[dict]) -> bool:
            return len(items) == 4 and all(p.get("status", {}).get("phase") == "Running"
                                           and p.get("status", {}).get("podIP") for p in items)

        items = wait_for(pods, ready, timeout=60, what="4 pods Running with an IP")
        weps = json.loads(self.calicoctl("get", "workloadendpoints", "-o", "json"))
        wep_items = weps.get("items", []) if isinstance(weps, dict) else weps
        iface = {w["spec"]["pod"]: w["spec"]["interfaceName"] for w in wep_items}
        for p in items:
            name = p["metadata"]["name"]
            if name not in iface:
                raise WalkthroughError(f"pod {name} has no WorkloadEndpoint (calicoctl get wep)")
            self.pods[name] = Pod(name, p["spec"]["nodeName"], p["status"]["podIP"], iface[name])
        self._step("workloads Running: nginx x2 on k8s-w0, pods k8s-w0 and k8s-w1", t,
                   self.kubectl("get", "pods", "-o", "wide"))

    def nginx_pods(self) -> tuple[Pod, Pod]:
        a, b = sorted((p for n, p in self.pods.items() if n.startswith("nginx-")), key=lambda p: p.name)
        return a, b

    # -- 5: captures and flows ---------------------------------------------------------

    def start_captures(self, run: str | None = None) -> None:
        from testbed.multihost.capture import lab_captures

        t = time.monotonic()
        self.captures = lab_captures(self.lab, ["k8s-w0", "k8s-w1", "internet"],
                                     run=run or self.run_name, ifaces=CAPTURE_IFACES)
        self.captures.start()
        self._step(f"tcpdump on {CAPTURE_IFACES.replace(',', ', ')} -> {self.captures.run_dir}", t)

    def curl(self, pod: Pod, url: str, what: str, timeout: float = 20) -> str:
        """curl from ``pod`` until it prints 200 (Felix may still be programming a new endpoint)."""
        argv = ("curl", "-o", "/dev/null", "-s", "-m", "2", "-w", "%{http_code}", url)
        return wait_for(lambda: self.in_pod(pod.name, *argv, check=False).stdout.strip(),
                        lambda code: code == "200", timeout=timeout, what=what)

    def flow_same_node(self) -> Flow:
        a, b = self.nginx_pods()
        f = Flow("same-node", f"pod {a.name} -> pod {b.name} on k8s-w0",
                 f"curl -o /dev/null -s -w \"%{{http_code}}\" http://{b.ip}")
        f.result = self.curl(a, f"http://{b.ip}", f"HTTP 200 from {b.name}")
        f.match = pa.between(a.ip, b.ip)
        f.ends = [a.name, b.name]
        f.hop_files = [self.captures.file("k8s-w0", a.iface), self.captures.file("k8s-w0", b.iface),
                       *self.tunnel_files("k8s-w0")]
        return f

    def flow_cross_node(self) -> Flow:
        a, b = self.pods["k8s-w0"], self.pods["k8s-w1"]
        # Forget the gateway's MAC so the capture shows the proxy-ARP exchange first.
        self.in_pod(a.name, "ip", "neigh", "flush", "dev", "eth0")
        f = Flow("cross-node", f"pod {a.name} (k8s-w0) -> pod {b.name} (k8s-w1)",
                 f"curl -o /dev/null -s -w \"%{{http_code}}\" http://{b.ip}")
        f.result = self.curl(a, f"http://{b.ip}", f"HTTP 200 from {b.name}")
        f.match = pa.between(a.ip, b.ip) | pa.arp_request(POD_GATEWAY) | pa.arp_reply(POD_GATEWAY)
        f.ends = [a.name, b.name]
        via = self.tunnel_files("k8s-w0", "k8s-w1") if self.crosses_tunnel("k8s-w0", "k8s-w1") else []
        f.hop_files = [self.captures.file("k8s-w0", a.iface), *via[:1],
                       self.captures.file("k8s-w0", "eth0"), self.captures.file("k8s-w1", "eth0"),
                       *via[1:], self.captures.file("k8s-w1", b.iface)]
        return f

    def crosses_tunnel(self, src: str, dst: str) -> bool:
        """Whether pod traffic from node ``src`` to node ``dst`` is encapsulated in the mode."""
        return encapsulated(self.mode, self.info[src], self.info[dst])

    def flow_internet(self) -> Flow:
        a = self.pods["k8s-w0"]
        f = Flow("internet", f"pod {a.name} -> the internet (203.0.113.10)",
                 "curl -o /dev/null -s -w \"%{http_code}\" http://203.0.113.10")
        f.result = self.curl(a, "http://203.0.113.10", "HTTP 200 from the in-lab internet host")
        node_ip = self.nodes["k8s-w0"]["address"]
        f.match = pa.between(a.ip, "203.0.113.10") | pa.between(node_ip, "203.0.113.10")
        f.ends = [a.name, "internet"]
        f.hop_files = [self.captures.file("k8s-w0", a.iface), self.captures.file("k8s-w0", "eth0"),
                       self.captures.file("internet", "eth0")]
        return f

    def flow_service(self) -> Flow:
        target, client = self.pods["k8s-w0"], self.pods["k8s-w1"]
        if self.kubectl("get", "service", target.name, "-o", "name", check=False).strip() == "":
            self.kubectl("expose", "pod", target.name, "--port", "80")
        svc = json.loads(self.kubectl("get", "service", target.name, "-o", "json"))
        self.cluster_ip = svc["spec"]["clusterIP"]
        f = Flow("service", f"pod {client.name} -> Service {target.name} ({self.cluster_ip}) "
                 f"-> pod {target.name}",
                 f"curl -o /dev/null -s -w \"%{{http_code}}\" http://{self.cluster_ip}")
        f.result = self.curl(client, f"http://{self.cluster_ip}", f"HTTP 200 via ClusterIP {self.cluster_ip}")
        f.match = (pa.between(client.ip, self.cluster_ip) | pa.between(client.ip, target.ip))
        f.ends = [client.name, target.name]
        f.hop_files = [self.captures.file("k8s-w1", client.iface), self.captures.file("k8s-w1", "eth0"),
                       self.captures.file("k8s-w0", "eth0"), self.captures.file("k8s-w0", target.iface)]
        return f

    # -- 10: policy -------------------------------------------------------------------------

    def _drop_counters(self, node: str) -> list[Any]:
        from testbed.capture import counters

        return counters.parse(self.in_node(node, "iptables-save", "-c", "-t", "filter"), "filter")

    def flow_policy_denied(self) -> Flow:
        """A Kubernetes NetworkPolicy selecting nginx with no ingress rule: the cross-node curl fails."""
        from testbed.capture import counters

        a, target = self.pods["k8s-w1"], self.nginx_pods()[0]
        self.kubectl("apply", "-f", "-", input=POLICY_DENY)
        f = Flow("policy-denied", f"pod {a.name} (k8s-w1) -> {target.name} (k8s-w0) after {POLICY_DENY_NAME}",
                 f"kubectl apply -f deny.yaml; curl -m 2 -o /dev/null -s -w '%{{http_code}}' http://{target.ip}",
                 expect="000")
        argv = ("curl", "-o", "/dev/null", "-s", "-m", "2", "-w", "%{http_code}", f"http://{target.ip}")
        # Felix programs the policy within milliseconds; poll until the connection is refused service
        wait_for(lambda: self.in_pod(a.name, *argv, check=False).stdout.strip(), lambda code: code == "000",
                 timeout=20, what=f"curl to {target.name} denied by {POLICY_DENY_NAME}")
        before = self._drop_counters("k8s-w0")
        f.since = time.time()
        f.result = self.in_pod(a.name, *argv, check=False).stdout.strip() or "000"
        dropped = counters.dropped_by(before, self._drop_counters("k8s-w0"))
        if dropped:
            f.drop = ("k8s-w0", dropped[0].describe())
        f.match = pa.between(a.ip, target.ip)
        f.ends = [a.name, target.name]
        via = self.tunnel_files("k8s-w1", "k8s-w0") if self.crosses_tunnel("k8s-w1", "k8s-w0") else []
        f.hop_files = [self.captures.file("k8s-w1", a.iface), *via[:1],
                       self.captures.file("k8s-w1", "eth0"), self.captures.file("k8s-w0", "eth0"),
                       *via[1:], self.captures.file("k8s-w0", target.iface)]
        return f

    def flow_policy_allowed(self) -> Flow:
        """A second NetworkPolicy allows pod k8s-w1 by its label: 200 again."""
        a, target = self.pods["k8s-w1"], self.nginx_pods()[0]
        self.kubectl("apply", "-f", "-", input=POLICY_ALLOW)
        f = Flow("policy-allowed", f"pod {a.name} (k8s-w1) -> {target.name} (k8s-w0) after {POLICY_ALLOW_NAME}",
                 f"kubectl apply -f allow.yaml; curl -o /dev/null -s -w '%{{http_code}}' http://{target.ip}")
        f.result = self.curl(a, f"http://{target.ip}", f"HTTP 200 from {target.name} once allowed")
        # read now: the policies are deleted once the flows have run, before the checks
        f.state = {"iptables": self.in_node("k8s-w0", "iptables-save", "-t", "filter"),
                   "ipsets": self.in_node("k8s-w0", "ipset", "list")}
        f.match = pa.between(a.ip, target.ip)
        f.ends = [a.name, target.name]
        via = self.tunnel_files("k8s-w0") if self.crosses_tunnel("k8s-w1", "k8s-w0") else []
        f.hop_files = [self.captures.file("k8s-w1", a.iface), *via, self.captures.file("k8s-w0", target.iface)]
        return f

    def run_flows(self, only: tuple[str, ...] | None = None) -> None:
        """Run the flows (``only``: these, e.g. :data:`FOUR_FLOWS`) under the running capture."""
        t = time.monotonic()
        self.flows = []
        for fn in (self.flow_same_node, self.flow_cross_node, self.flow_internet, self.flow_service,
                   self.flow_policy_denied, self.flow_policy_allowed):
            if only is not None and fn.__name__.removeprefix("flow_").replace("_", "-") not in only:
                continue
            try:
                flow = fn()
            except (WalkthroughError, WaitTimeout) as exc:
                flow = Flow(fn.__name__.removeprefix("flow_").replace("_", "-"), fn.__name__, "",
                            result="no answer", error=str(exc))
            self.flows.append(flow)
            self.progress(f"  flow {flow.name}: {flow.result}")
        self.captures.stop()
        for name in (POLICY_ALLOW_NAME, POLICY_DENY_NAME):
            self.kubectl("delete", "networkpolicy", name, check=False)
        self._step("six flows run under capture (four paths, then a policy denying and one allowing)", t)

    # -- 6: the checks on the pcaps -------------------------------------------------------

    def check_flows(self) -> None:
        """Assert each flow on its pcaps; a flow is ok only if curl printed 200 and every check held."""
        checks = {"same-node": self.check_same_node, "cross-node": self.check_cross_node,
                  "internet": self.check_internet, "service": self.check_service,
                  "policy-denied": self.check_policy_denied, "policy-allowed": self.check_policy_allowed}
        for flow in self.flows:
            if flow.error is None:
                try:
                    checks[flow.name](flow)
                    flow.ok = flow.result == flow.expect
                except AssertionError as exc:
                    flow.error = str(exc)
            flow.pcaps = [str(p) for p in flow.hop_files if p.exists()]

    def check_same_node(self, f: Flow) -> None:
        a, b = self.nginx_pods()
        pa.assert_http_exchange(self.captures.file("k8s-w0", a.iface), a.ip, b.ip, status=200)
        f.checks.append(f"HTTP {a.ip} -> {b.ip} 200 on k8s-w0/{a.iface}")
        pa.assert_http_exchange(self.captures.file("k8s-w0", b.iface), a.ip, b.ip, status=200)
        f.checks.append(f"HTTP {a.ip} -> {b.ip} 200 on k8s-w0/{b.iface}")
        for path in self.tunnel_files("k8s-w0"):
            pa.assert_none(path, pa.between(a.ip, b.ip))
            f.checks.append(f"nothing between them on k8s-w0/{self.mode.device}")
        pa.assert_none(self.captures.file("k8s-w0", "eth0"), pa.between(a.ip, b.ip))
        f.checks.append("nothing between them on k8s-w0/eth0")

    def check_cross_node(self, f: Flow) -> None:
        a, b = self.pods["k8s-w0"], self.pods["k8s-w1"]
        cali = self.captures.file("k8s-w0", a.iface)
        pa.assert_arp_gateway(cali, gateway=POD_GATEWAY, mac=CALI_MAC, asker=a.ip, before_traffic=True)
        f.checks.append(f"ARP who-has {POD_GATEWAY} answered by {CALI_MAC}, then the SYN, on {a.iface}")
        self.check_wire(f, "k8s-w0", "k8s-w1", a, b, ("k8s-w0", "k8s-w1"))
        pa.assert_http_exchange(self.captures.file("k8s-w1", b.iface), a.ip, b.ip, status=200)
        f.checks.append(f"HTTP 200 on k8s-w1/{b.iface}")

    def check_wire(self, f: Flow, src: str, dst: str, a: Pod, b: Pod, at: tuple[str, ...]) -> None:
        """Pod ``a`` (on node ``src``) -> pod ``b`` (on ``dst``) on the uplinks of the nodes
        ``at`` as the mode puts it on the wire: IPIP, VXLAN (UDP 4789, VNI 4096, node
        addresses outside, the VTEP MACs and pod addresses inside), or plainly routed; and
        the inner packets on both tunnel devices when encapsulated."""
        na, nb = self.nodes[src]["address"], self.nodes[dst]["address"]
        enc = self.mode.encap if self.crosses_tunnel(src, dst) else None
        for node in at:
            eth0 = self.captures.file(node, "eth0")
            if enc == "ipip":
                pa.assert_ipip(eth0, outer_src=na, outer_dst=nb, inner_src=a.ip, inner_dst=b.ip)
                pa.assert_no_plain(eth0, a.ip, b.ip)
                f.checks.append(f"IPIP {na} > {nb} carrying {a.ip} > {b.ip} on {node}/eth0, no plain pod packets")
            elif enc == "vxlan":
                ma, mb = self.vtep_mac(src), self.vtep_mac(dst)
                pa.assert_vxlan(eth0, outer_src=na, outer_dst=nb, inner_src=a.ip, inner_dst=b.ip, vni=4096,
                                inner_mac_src=ma, inner_mac_dst=mb, port=4789)
                f.checks.append(f"VXLAN {na} > {nb}:4789 vni 4096, ether {ma} > {mb}, carrying {a.ip} > {b.ip} "
                                f"on {node}/eth0, no plain pod packets")
            else:
                pa.assert_routed(eth0, a.ip, b.ip)
                f.checks.append(f"plainly routed {a.ip} > {b.ip} on {node}/eth0 (no IPIP, no VXLAN)")
        if enc is not None:
            for node in (src, dst):
                pa.assert_on_tunnel(self.captures.file(node, self.mode.device or ""), a.ip, b.ip)
                f.checks.append(f"inner packets {a.ip} > {b.ip} on {node}/{self.mode.device}")

    def check_internet(self, f: Flow) -> None:
        a = self.pods["k8s-w0"]
        node_ip = self.nodes["k8s-w0"]["address"]
        pa.assert_masqueraded(self.captures.file("internet", "eth0"), node_ip=node_ip, pod_ip=a.ip,
                              dst="203.0.113.10")
        f.checks.append(f"on internet/eth0 the source is {node_ip} (masqueraded), never {a.ip}")
        pa.assert_http_exchange(self.captures.file("k8s-w0", a.iface), a.ip, "203.0.113.10", status=200)
        f.checks.append(f"HTTP 200 seen on k8s-w0/{a.iface} with the pod's own address")

    def check_service(self, f: Flow) -> None:
        target, client = self.pods["k8s-w0"], self.pods["k8s-w1"]
        assert self.cluster_ip
        pa.assert_dnat(self.captures.file("k8s-w0", target.iface), cluster_ip=self.cluster_ip,
                       pod_ip=target.ip, client=client.ip,
                       client_side=self.captures.file("k8s-w1", client.iface))
        f.checks.append(f"SYN to {self.cluster_ip}:80 on k8s-w1/{client.iface} arrives DNATed to "
                        f"{target.ip}:80 on k8s-w0/{target.iface}")

    def check_policy_denied(self, f: Flow) -> None:
        a, target = self.pods["k8s-w1"], self.nginx_pods()[0]
        # where it crosses k8s-w0: its tunnel device (tunl0, vxlan.calico), else its uplink
        dev = self.mode.device if self.crosses_tunnel("k8s-w1", "k8s-w0") else "eth0"
        pa.assert_dropped(self.captures.file("k8s-w1", a.iface), self.captures.file("k8s-w0", target.iface),
                          client=a.ip, server=target.ip, port=80, tunnel=self.captures.file("k8s-w0", dev),
                          since=f.since, until=self._next_since(f))
        f.checks.append(f"SYN {a.ip} > {target.ip}:80 on k8s-w1/{a.iface} and k8s-w0/{dev}, none on "
                        f"k8s-w0/{target.iface}, no SYN-ACK")
        if f.drop is None or "Drop if no policies passed packet" not in f.drop[1]:
            raise AssertionError(f"no Calico DROP rule on k8s-w0 counted the SYNs (got {f.drop})")
        f.checks.append(f"dropped on k8s-w0 by {f.drop[1]}")

    def _next_since(self, f: Flow) -> float | None:
        """When the flow after ``f`` started (its packets are not ``f``'s)."""
        i = self.flows.index(f)
        return self.flows[i + 1].since if i + 1 < len(self.flows) else None

    def check_policy_allowed(self, f: Flow) -> None:
        a, target = self.pods["k8s-w1"], self.nginx_pods()[0]
        pa.assert_http_exchange(self.captures.file("k8s-w0", target.iface), a.ip, target.ip, status=200)
        f.checks.append(f"HTTP 200 on k8s-w0/{target.iface}")
        chains = f.state.get("iptables", "")
        if "knp.default.allow-nginx-from-k8s-w1 ingress" not in chains:
            raise AssertionError("no cali-pi- chain of knp.default.allow-nginx-from-k8s-w1 on k8s-w0")
        sets = f.state.get("ipsets", "")
        if "cali40s:" not in sets or a.ip not in sets:
            raise AssertionError(f"no cali40s: ipset holding {a.ip} on k8s-w0")
        f.checks.append(f"cali-pi- chain of the policy and a cali40s: ipset holding {a.ip} on k8s-w0")

    # -- MTU -------------------------------------------------------------------------------

    def mtu_probe(self) -> dict[str, Any]:
        """DF pings pod k8s-w0 -> pod k8s-w1: the largest that fits the path passes, one byte
        more fails. The path's MTU is the smaller of the pod's eth0 and the device the mode
        routes through on k8s-w0 (tunl0, vxlan.calico or eth0). When the pod's MTU is the
        larger (pods made before a switch to a mode with more overhead), the node answers the
        oversized packet with an ICMP fragmentation-needed; that exchange is captured on the
        pod's cali interface (``capture``)."""
        from testbed.capture.group import CaptureGroup

        a, b = self.pods["k8s-w0"], self.pods["k8s-w1"]
        dev = self.mode.device if self.crosses_tunnel("k8s-w0", "k8s-w1") else "eth0"
        link = self.in_node("k8s-w0", "ip", "-o", "link", "show", dev)
        mtu = int(link.split(" mtu ")[1].split()[0])
        pod_link = self.in_pod(a.name, "ip", "-o", "link", "show", "eth0").stdout
        pod_mtu = int(pod_link.split(" mtu ")[1].split()[0])
        fits = min(mtu, pod_mtu) - 28
        # forget a path MTU the pod learned from an ICMP in an earlier mode (after a switch)
        self.in_pod(a.name, "ip", "route", "flush", "cache", check=False)

        def ping(size: int) -> subprocess.CompletedProcess:
            return self.in_pod(a.name, "ping", "-M", "do", "-c", "1", "-W", "2", "-s", str(size), b.ip,
                               check=False)

        ok = wait_for(lambda: ping(fits), lambda r: r.returncode == 0, timeout=10,
                      what=f"DF ping of {fits} bytes {a.ip} -> {b.ip}")
        cap = CaptureGroup.for_lab(self.lab, ["k8s-w0"], run=f"{self.run_name}-mtu-{dev}", ifaces=a.iface)
        with cap:
            too_big = ping(fits + 1)
        return {"tunnel_mtu": mtu, "device": dev, "pod_mtu": pod_mtu, "fits": fits, "fits_output": ok.stdout,
                "too_big_rc": too_big.returncode, "too_big_output": too_big.stdout + too_big.stderr,
                "capture": cap.file("k8s-w0", a.iface)}

    # -- report ------------------------------------------------------------------------------

    def lab_model(self) -> Any:
        from testbed.lab.topology import load
        from testbed.report.diagram import HostBox, LabModel, NodeBox, PodBox, Segment

        topo = load(self.topology, name=self.lab)
        blocks = self.block_affinities()
        datapaths = self._datapaths()
        nodes = []
        for n in topo.nodes:
            info = self.nodes.get(n.name, {})
            pods = [PodBox(p.name, p.ip, p.iface) for p in sorted(self.pods.values(), key=lambda p: p.name)
                    if p.node == n.name]
            nodes.append(NodeBox(n.name, str(n.address), n.segment, n.role, blocks.get(n.name, []),
                                 info.get("tunnel"), tunnel_dev=self.mode.device or "-",
                                 datapath=datapaths.get(n.name, ""), ready=True, pods=pods))
        segs = [Segment(s.name, str(s.cidr)) for s in topo.segments]
        hosts = [HostBox(e.name, {e.segment: str(e.address)}) for e in topo.external]
        hosts += [HostBox(r.name, {i.segment: str(i.address) for i in r.interfaces}, kind="router")
                  for r in topo.routers]
        pool = topo.calico.pool
        return LabModel(self.lab, nodes, segs, hosts, pool=str(pool.cidr), mode=self.mode.name,
                        tunnels=self.tunnel_pairs(), bgp=None if self.bgp_on() else [])

    def tunnel_pairs(self) -> list[tuple[str, str]]:
        """The node pairs whose pod traffic is encapsulated in the mode (the diagram's arcs)."""
        names = sorted(self.info)
        return [(x, y) for i, x in enumerate(names) for y in names[i + 1:] if self.crosses_tunnel(x, y)]

    def bgp_on(self) -> bool:
        """Whether the lab runs BGP (calico_backend bird; vxlan runs none)."""
        from testbed.lab.topology import load

        return load(self.topology, name=self.lab).calico_node_env()["CALICO_NETWORKING_BACKEND"] == "bird"

    def block_affinities(self) -> dict[str, list[str]]:
        """Node -> the CIDRs of its confirmed block affinities (calicoctl get blockaffinities)."""
        out: dict[str, list[str]] = {}
        try:
            doc = json.loads(self.calicoctl("get", "blockaffinities", "-o", "json"))
        except (WalkthroughError, ValueError):
            return out
        for item in doc.get("items", []) if isinstance(doc, dict) else doc:
            spec = item.get("spec", {})
            if spec.get("state") == "confirmed":
                out.setdefault(spec.get("node", ""), []).append(spec.get("cidr", ""))
        return out

    def _datapaths(self) -> dict[str, str]:
        """Each node's tunl0 datapath (kernel or userspace), from ``calicolab status --json``."""
        try:
            st = json.loads(self.cli("status", "--json").stdout)
        except (WalkthroughError, ValueError):
            return {}
        return {n["name"]: str(n.get("datapath") or "") for n in st.get("nodes", []) if "name" in n}

    def report_flows(self) -> list[Any]:
        from testbed.report import flows as report

        out = []
        for i, f in enumerate(self.flows):
            files = [p for p in f.hop_files if p.exists()]
            until = self.flows[i + 1].since if i + 1 < len(self.flows) else None
            hops = (report.flow_hops(files, f.match, since=f.since - 0.05, until=until)
                    if files and f.match is not None else [])
            out.append(report.FlowResult(f.name, f.title, result=f.result, ok=f.ok, hops=hops,
                                         pcaps=f.pcaps, description=f"{f.command}\n" + "\n".join(
                                             f"check: {c}" for c in f.checks),
                                         error=f.error, highlight=f.ends, drop=f.drop, mode=self.flow_mode(f)))
        return out

    def flow_mode(self, f: Flow) -> str:
        """The network mode and what it did to this flow between the nodes."""
        pair = {"cross-node": ("k8s-w0", "k8s-w1"), "service": ("k8s-w1", "k8s-w0")}.get(f.name)
        if pair is None or not self.info:
            return self.mode.name
        if self.crosses_tunnel(*pair):
            how = {"ipip": "encapsulated in IPIP (protocol 4) over tunl0",
                   "vxlan": "encapsulated in VXLAN (UDP 4789, VNI 4096) over vxlan.calico"}[self.mode.encap or ""]
        else:
            how = "routed unencapsulated over eth0"
        return f"{self.mode.name}: {pair[0]} -> {pair[1]} {how}"

    def write_report(self) -> Path:
        from testbed.report import flows as report

        path = Path(self.captures.run_dir) / "report.html"
        report.write_report(path, self.report_flows(), self.lab_model(),
                            title=f"calicolab walkthrough: lab {self.lab}")
        return path

    def table(self) -> str:
        from testbed.report import flows as report

        return report.results_table(self.report_flows())

    # -- all of it ---------------------------------------------------------------------

    def down(self) -> None:
        from testbed.lab import lifecycle as labmod
        from testbed.lab import state as labstate

        try:
            labmod.down(self.lab, progress=lambda m: None)
        except labstate.LabError as exc:
            self.progress(f"warning: {exc}")

    def run(self, keep: bool = False) -> tuple[bool, Path | None]:
        """The whole demo; returns (every flow ok, report path)."""
        report_path = None
        try:
            self.up()
            self.install()
            self.inspect()
            self.wait_routes()
            self.deploy()
            self.start_captures()
            self.run_flows()
            self.check_flows()
            report_path = self.write_report()
        finally:
            if self.captures is not None and self.captures.result is None:
                self.captures.stop()
            if not keep:
                t = time.monotonic()
                self.down()
                self._step("lab torn down (calicolab down)", t)
        return all(f.ok for f in self.flows) and len(self.flows) == 6, report_path


def main(argv: list[str] | None = None) -> int:
    """``calicolab demo``: replay the walkthrough with captures, print the table, write the report."""
    ap = argparse.ArgumentParser(
        prog="calicolab demo",
        description="Replay the walkthrough on topologies/walkthrough.yaml: NotReady -> install "
                    "Calico -> Ready, then six flows (same node, cross node over IPIP, pod to the "
                    "internet, through a Service, then a NetworkPolicy denying and one allowing) under "
                    "tcpdump, checked on the pcaps, with a table and an HTML report. --topology runs it in "
                    "another network mode (topologies/vxlan.yaml, noencap.yaml, crosssubnet.yaml, "
                    "crosssubnet-vxlan.yaml).")
    ap.add_argument("--name", default="walkthrough", help="lab name (default: walkthrough)")
    ap.add_argument("--keep", action="store_true",
                    help="leave the lab running afterwards (calicolab shell k8s-w0; calicolab down)")
    ap.add_argument("--topology", default=str(TOPOLOGY),
                    help="the lab (default topologies/walkthrough.yaml: IPIP Always; its nodes and hosts "
                    "may be spread over machines: topologies/vagrant-multi.yaml); its pool's mode decides "
                    "what the cross-node flow must look like on the wire")
    ap.add_argument("--datastore", choices=("kubernetes", "etcdv3"),
                    help="Calico's datastore: kubernetes (Calico's default) or etcdv3 (default: the "
                    "topology's calico.datastore, else kubernetes)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("calicolab demo: needs root (network namespaces, Mininet): run it with sudo",
              file=sys.stderr)
        return 1
    wt = Walkthrough(args.name, Path(args.topology), datastore=args.datastore)
    t0 = time.monotonic()
    try:
        ok, report_path = wt.run(keep=args.keep)
    except (WalkthroughError, WaitTimeout) as exc:
        print(f"calicolab demo: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the lab layer's own errors carry their message
        print(f"calicolab demo: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print()
    print(wt.table())
    for f in wt.flows:
        if f.error:
            print(f"\n{f.name}: {f.error}")
    print(f"\nnetwork mode: {wt.mode.name}")
    print(f"pcaps:  {wt.captures.run_dir if wt.captures else '-'}")
    print(f"report: {report_path or '-'}")
    print(f"done in {time.monotonic() - t0:.1f}s" + (f"; lab {wt.lab} kept: calicolab shell k8s-w0"
                                                     if args.keep else "; lab torn down"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
