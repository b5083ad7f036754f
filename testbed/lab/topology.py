"""Topology files (``topologies/*.yaml``) -> a validated, immutable model.

Pure logic: nothing here touches the kernel. The lab (:mod:`testbed.lab`) only
ever builds from a :class:`Topology` that passed :func:`load`, so bad input is
rejected before any namespace exists.

Schema (camelCase keys, as Calico's own YAML)::

    name: walkthrough                  # lab name: [a-z0-9-], at most 24 chars
    segments:                          # L2 segments (one Linux bridge each)
      - {name: lan0, cidr: 172.30.0.0/24}
      - {name: inet, cidr: 203.0.113.0/24}
    routers:                           # in-lab routers between segments
      - name: r0
        interfaces:
          - {segment: lan0, address: 172.30.0.1}
          - {segment: inet, address: 203.0.113.1}
    nodes:                             # the Kubernetes nodes
      - {name: k8s-m, role: control-plane, address: 172.30.0.10, segment: lan0}
      - {name: k8s-w0, role: worker, address: 172.30.0.11, segment: lan0}
    external:                          # hosts on documentation prefixes ("the internet")
      - {name: internet, address: 203.0.113.10, segment: inet}
    calico:
      pool: {cidr: 192.168.0.0/16, blockSize: 26, ipipMode: Always, vxlanMode: Never,
             natOutgoing: true}
      bgp: {mesh: true, asNumber: 64512, routeReflectors: [], externalPeers: []}
    runtime: netns                     # pods as processes (netns), or containers of
                                       # containerd or docker (docs/runtimes.md)
    workloads:                         # Kubernetes manifests applied once the lab is up
      - file: ../examples/nginx.yaml   # relative to this file
      - manifest: {apiVersion: v1, kind: Pod, ...}
    hosts:                             # other machines the lab spans (reached over SSH)
      - {name: h1, address: 198.51.100.7, user: root, key: keys/id_ed25519,
         port: 22, hostKey: keys/h1.pub, repo: /vagrant, runDir: /run/calicolab}

Nodes, routers and external hosts take ``host: NAME`` (default: this machine, ``local``);
a segment with members on several hosts is carried between them by VXLAN
(:mod:`testbed.multihost`).

Every error is a :class:`TopologyError` naming the file, the line and the field.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import yaml

from datastore.inventory import Support, findings, works

__all__ = [
    "TopologyError", "Segment", "RouterInterface", "Router", "NodeSpec", "ExternalHost",
    "PoolSpec", "ExternalPeer", "BGPSpec", "CalicoSpec", "Workload", "Topology", "Route",
    "HostSpec", "LOCAL_HOST", "load", "loads", "DOCUMENTATION_PREFIXES", "FORBIDDEN_PREFIXES",
]

#: RFC 5737 prefixes: the only place an in-lab "internet" host may live.
DOCUMENTATION_PREFIXES = tuple(
    IPv4Network(p) for p in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
)
#: Prefixes a lab may never use: 10/8 covers this machine's resolver; the rest
#: are loopback, link-local (169.254.1.1 is Calico's fake gateway), multicast.
FORBIDDEN_PREFIXES = tuple(
    IPv4Network(p)
    for p in ("10.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "0.0.0.0/8",
              "240.0.0.0/4")
)
ROLES = ("control-plane", "worker")
#: pod runtimes a lab can run (testbed.k8s.cri.RUNTIMES)
RUNTIMES = ("netns", "containerd", "docker")
ENCAP_MODES = ("Never", "Always", "CrossSubnet")
#: ``calico.datastore``: Calico's two datastores (libcalico-go's apiconfig names)
DATASTORES = ("kubernetes", "etcdv3")
#: the lab's datastore when the topology does not say (``up --datastore`` overrides both): Calico's
#: own default, kubernetes (its CRDs in the API server); a lab over several machines must say etcdv3
DEFAULT_DATASTORE = "kubernetes"
_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
LAB_NAME_MAX = 24
#: Hosts name bridge ports after themselves and segments name their bridge: not "lo".
RESERVED_NAMES = frozenset({"lo"})
#: Mininet names every node after its netns; a bridge name must fit IFNAMSIZ.
SEGMENT_NAME_MAX = 15
NODE_NAME_MAX = 40
#: the machine running calicolab, where members without ``host:`` live
LOCAL_HOST = "local"
HOST_NAME_MAX = 24


_T_MODEL = "tests/unit/test_topology_model.py::"
_T_LIFE = "tests/lab/test_lab_lifecycle.py::"
_T_WALK = "tests/lab/test_walkthrough.py::"
_T_MH = "tests/unit/test_multihost_logic.py::"
_T_MHLAB = "tests/lab/test_multihost_lab.py::"

#: Every topology field (dotted, list entries transparent) and what the lab does with it.
#: The parser allows exactly these keys (:func:`_keys`), and refuses a value a lab cannot
#: honour, naming the field (:func:`_refuse_unimplemented`).
TOPOLOGY_FIELDS: dict[str, Support] = {
    "name": works(_T_MODEL + "test_defaults_and_name_override", _T_LIFE + "test_several_labs_at_once"),
    "segments.name": works(_T_MODEL + "test_walkthrough_file", _T_LIFE + "test_up_node_view_and_down"),
    "segments.cidr": works(_T_MODEL + "test_overlapping_segments", _T_LIFE + "test_up_node_view_and_down"),
    "segments.gateway": works(_T_MODEL + "test_two_routers_need_an_explicit_gateway"),
    "routers.name": works(_T_MODEL + "test_router_chain_routes",
                          _T_LIFE + "test_crosssubnet_nodes_reach_etcd_through_the_router"),
    "routers.interfaces.segment": works(_T_MODEL + "test_router_chain_routes",
                                        _T_LIFE + "test_crosssubnet_nodes_reach_etcd_through_the_router"),
    "routers.interfaces.address": works(_T_MODEL + "test_router_chain_routes",
                                        _T_LIFE + "test_crosssubnet_nodes_reach_etcd_through_the_router"),
    "nodes.name": works(_T_MODEL + "test_walkthrough_file", _T_LIFE + "test_up_node_view_and_down"),
    "nodes.role": works(_T_MODEL + "test_walkthrough_file", _T_LIFE + "test_up_node_view_and_down"),
    "nodes.address": works(_T_MODEL + "test_walkthrough_file", _T_LIFE + "test_up_node_view_and_down"),
    "nodes.segment": works(_T_MODEL + "test_walkthrough_file", _T_LIFE + "test_up_node_view_and_down"),
    "external.name": works(_T_MODEL + "test_external_host_must_be_on_documentation_prefix",
                           _T_WALK + "test_pod_to_internet_is_masqueraded"),
    "external.address": works(_T_MODEL + "test_external_host_must_be_on_documentation_prefix",
                              _T_WALK + "test_pod_to_internet_is_masqueraded"),
    "external.segment": works(_T_MODEL + "test_external_host_must_be_on_documentation_prefix",
                              _T_WALK + "test_pod_to_internet_is_masqueraded"),
    "calico.datastore": works(_T_MODEL + "test_datastore_setting_and_the_node_environment",
                              "tests/lab/test_walkthrough_kdd.py::"
                              "test_six_flows_pass_on_their_pcaps_in_the_kubernetes_datastore",
                              "tests/lab/test_kdd_commands.py::"
                              "test_node_shells_run_the_real_kubectl_and_name_the_datastore",
                              _T_WALK + "test_cross_node_flow_is_ipip",
                              note="kubernetes (the default, as Calico's) or etcdv3; a lab over several "
                                   "machines (hosts:) must say etcdv3"),
    "calico.pool.cidr": works("tests/unit/test_install_manifest.py::test_settings_from_lab_state_use_topology",
                              _T_WALK + "test_cross_node_flow_is_ipip"),
    "calico.pool.blockSize": works("tests/unit/test_install_manifest.py::test_settings_from_lab_state_use_topology"),
    "calico.pool.ipipMode": works(_T_MODEL + "test_crosssubnet_routed", _T_WALK + "test_cross_node_flow_is_ipip"),
    "calico.pool.vxlanMode": works(_T_MODEL + "test_mode_topologies",
                                   "tests/lab/test_modes_vxlan.py::test_vxlan_crosssubnet_without_bgp_four_flows",
                                   note="Always/CrossSubnet run calico-node without BGP (calico_backend: vxlan)"),
    "calico.pool.natOutgoing": works(_T_WALK + "test_pod_to_internet_is_masqueraded"),
    "calico.bgp.mesh": works(_T_LIFE + "test_topology_bgp_settings_become_calico_resources",
                             "tests/lab/test_lab_rr.py::test_route_reflector_sessions_routes_and_pods"),
    "calico.bgp.asNumber": works(_T_LIFE + "test_topology_bgp_settings_become_calico_resources"),
    "calico.bgp.routeReflectors": works("tests/lab/test_lab_rr.py::test_route_reflector_sessions_routes_and_pods"),
    "calico.bgp.externalPeers.name": works(_T_LIFE + "test_topology_bgp_settings_become_calico_resources"),
    "calico.bgp.externalPeers.address": works(_T_LIFE + "test_topology_bgp_settings_become_calico_resources"),
    "calico.bgp.externalPeers.asNumber": works(_T_LIFE + "test_topology_bgp_settings_become_calico_resources"),
    "calico.bgp.externalPeers.node": works(_T_LIFE + "test_topology_bgp_settings_become_calico_resources"),
    "runtime": works("tests/unit/test_runtime_logic.py::test_topology_runtime_field_and_override",
                     "tests/lab/test_runtime.py::test_pod_is_a_containerd_or_docker_container"),
    "workloads.file": works(_T_MODEL + "test_workloads_file_and_inline", _T_WALK + "test_same_node_flow"),
    "workloads.manifest": works(_T_MODEL + "test_workloads_file_and_inline"),
    # labs over several machines (testbed.multihost, docs/multihost.md)
    "nodes.host": works(_T_MH + "test_hosts_and_placement", _T_MHLAB + "test_walkthrough_over_two_ssh_hosts"),
    "routers.host": works(_T_MH + "test_hosts_and_placement", _T_MHLAB + "test_walkthrough_over_two_ssh_hosts"),
    "external.host": works(_T_MH + "test_hosts_and_placement", _T_MHLAB + "test_walkthrough_over_two_ssh_hosts"),
    "hosts.name": works(_T_MH + "test_hosts_and_placement", _T_MHLAB + "test_walkthrough_over_two_ssh_hosts"),
    "hosts.address": works(_T_MH + "test_hosts_and_placement",
                           _T_MHLAB + "test_bad_host_is_refused_naming_it_before_anything_is_made"),
    "hosts.user": works(_T_MH + "test_hosts_and_placement", _T_MHLAB + "test_walkthrough_over_two_ssh_hosts"),
    "hosts.key": works(_T_MH + "test_hosts_and_placement",
                       _T_MHLAB + "test_bad_host_is_refused_naming_it_before_anything_is_made"),
    "hosts.port": works(_T_MH + "test_hosts_and_placement", _T_MHLAB + "test_walkthrough_over_two_ssh_hosts"),
    "hosts.hostKey": works(_T_MH + "test_hosts_and_placement",
                           _T_MHLAB + "test_bad_host_is_refused_naming_it_before_anything_is_made"),
    "hosts.repo": works(_T_MH + "test_hosts_and_placement", _T_MHLAB + "test_walkthrough_over_two_ssh_hosts"),
    "hosts.runDir": works(_T_MH + "test_hosts_and_placement", _T_MHLAB + "test_walkthrough_over_two_ssh_hosts"),
}


def _keys(prefix: str = "") -> tuple[str, ...]:
    """The keys allowed directly under ``prefix`` (``""`` = the top level), in order."""
    out: list[str] = []
    pre = f"{prefix}." if prefix else ""
    for path in TOPOLOGY_FIELDS:
        if path.startswith(pre):
            key = path[len(pre):].split(".")[0]
            if key not in out:
                out.append(key)
    return tuple(out)


def _refuse_unimplemented(doc: _Doc, data: dict) -> None:
    """A topology that asks for what a lab cannot honour is refused, naming the field."""
    bad = findings("topology", data, TOPOLOGY_FIELDS, roots=tuple(data))
    if not bad:
        return
    f = bad[0]
    path = _locate(data, f.path.split("."), ())
    raise doc.err(path, f"{f.value!r} is not implemented in calicolab: {f.support.note} (docs/inventory.md)")


def _locate(data: Any, parts: list[str], path: tuple) -> tuple:
    """The document path (with list indices) of the first value at dotted ``parts``."""
    if not parts:
        return path
    if isinstance(data, list):
        for i, item in enumerate(data):
            found = _locate(item, parts, path + (i,))
            if found:
                return found
        return ()
    if isinstance(data, dict) and parts[0] in data:
        return _locate(data[parts[0]], parts[1:], path + (parts[0],)) or path + (parts[0],)
    return ()


class TopologyError(ValueError):
    """A topology file is invalid. ``str()`` reads ``file:line: field: problem``."""

    def __init__(self, file: str, line: int | None, fieldpath: str, problem: str):
        self.file, self.line, self.field, self.problem = file, line, fieldpath, problem
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {fieldpath}: {problem}" if fieldpath else f"{where}: {problem}")


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Segment:
    """An L2 segment: one Linux bridge with the hosts attached to it."""

    name: str
    cidr: IPv4Network
    gateway: IPv4Address | None = None  # a router's address here, default route of nodes


@dataclass(frozen=True)
class RouterInterface:
    """One leg of a router on a segment."""

    segment: str
    address: IPv4Address


@dataclass(frozen=True)
class Router:
    """An in-lab router (a host with ip_forward) joining segments."""

    name: str
    interfaces: tuple[RouterInterface, ...]
    host: str = LOCAL_HOST


@dataclass(frozen=True)
class NodeSpec:
    """A Kubernetes node of the lab."""

    name: str
    role: str
    address: IPv4Address
    segment: str
    host: str = LOCAL_HOST

    @property
    def is_control_plane(self) -> bool:
        """True for the (single) control-plane node."""
        return self.role == "control-plane"


@dataclass(frozen=True)
class ExternalHost:
    """A host on a documentation prefix, the walkthrough's "internet"."""

    name: str
    address: IPv4Address
    segment: str
    host: str = LOCAL_HOST


@dataclass(frozen=True)
class HostSpec:
    """Another machine the lab spans: reached over SSH, it holds the members placed on it."""

    name: str
    address: str  # an IP address or a DNS name, as ssh takes it
    user: str
    key: str  # path of the private key (absolute: resolved against the topology file)
    port: int = 22
    host_key: str = ""  # the host's public key ("ssh-ed25519 AAAA..."), or "" (see multihost.ssh)
    repo: str = ""  # calicolab's checkout there ("": the same path as here)
    run_dir: str = ""  # the lab state root there ("": /run/calicolab)


@dataclass(frozen=True)
class PoolSpec:
    """The default IPv4 pool calico-node creates (CALICO_IPV4POOL_*)."""

    cidr: IPv4Network = IPv4Network("192.168.0.0/16")
    block_size: int = 26
    ipip_mode: str = "Always"
    vxlan_mode: str = "Never"
    nat_outgoing: bool = True


@dataclass(frozen=True)
class ExternalPeer:
    """A BGP peer outside the cluster (e.g. a BIRD on an external host)."""

    address: IPv4Address
    as_number: int
    name: str = ""
    node: str = ""  # empty: a global peer (all nodes); else only that node peers


@dataclass(frozen=True)
class BGPSpec:
    """Cluster BGP settings (BGPConfiguration default + BGPPeers)."""

    mesh: bool = True
    as_number: int = 64512
    route_reflectors: tuple[str, ...] = ()
    external_peers: tuple[ExternalPeer, ...] = ()


@dataclass(frozen=True)
class CalicoSpec:
    """Calico settings of the lab."""

    pool: PoolSpec = field(default_factory=PoolSpec)
    bgp: BGPSpec = field(default_factory=BGPSpec)
    #: ``kubernetes`` (Calico's resources as CRDs in the API server) or ``etcdv3``
    datastore: str = DEFAULT_DATASTORE


@dataclass(frozen=True)
class Workload:
    """Kubernetes documents to apply once the lab is up."""

    source: str  # the manifest's path, or "<inline workloads[i]>"
    documents: tuple[dict, ...]


#: the gateway address Calico's CNI gives every pod (its default route's next hop, answered
#: by the node's proxy ARP on the pod's cali interface)
CALICO_GATEWAY = IPv4Network("169.254.1.1/32")


@dataclass(frozen=True)
class Route:
    """A static route a lab host needs: destination via gateway, or (``via`` None) on-link
    through the host's own segment interface."""

    dst: IPv4Network
    via: IPv4Address | None


@dataclass(frozen=True)
class Topology:
    """A validated lab description."""

    name: str
    path: str
    segments: tuple[Segment, ...]
    nodes: tuple[NodeSpec, ...]
    routers: tuple[Router, ...] = ()
    external: tuple[ExternalHost, ...] = ()
    calico: CalicoSpec = field(default_factory=CalicoSpec)
    workloads: tuple[Workload, ...] = ()
    runtime: str = "netns"  # who runs the pods: netns (processes), containerd, docker
    hosts: tuple[HostSpec, ...] = ()

    # -- placement on machines
    @property
    def multihost(self) -> bool:
        """True when the lab names other machines (``hosts:``)."""
        return bool(self.hosts)

    def host_of(self, name: str) -> str:
        """The machine (a ``hosts[].name`` or :data:`LOCAL_HOST`) holding node/router/external ``name``."""
        for m in (*self.nodes, *self.routers, *self.external):
            if m.name == name:
                return m.host
        raise KeyError(name)

    def machines(self) -> list[str]:
        """Every machine holding a member, in the order of first use (``local`` included if used)."""
        out: list[str] = []
        for m in (*self.nodes, *self.routers, *self.external):
            if m.host not in out:
                out.append(m.host)
        return out

    def host_spec(self, name: str) -> HostSpec:
        """The ``hosts:`` entry called ``name`` (KeyError if none)."""
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def names_on(self, machine: str | None) -> list[str]:
        """:meth:`host_names` placed on ``machine`` (all of them for None)."""
        return [n for n in self.host_names() if machine is None or self.host_of(n) == machine]

    def segment_machines(self, segment: str) -> list[str]:
        """The machines with a member on ``segment``, in :meth:`machines` order."""
        on = {self.host_of(n) for n in self.host_names()
              if any(leg[1] == segment for leg in self.interface_of(n))}
        return [m for m in self.machines() if m in on]

    def segments_on(self, machine: str | None) -> list[Segment]:
        """The segments with a member on ``machine`` (all of them for None)."""
        return [s for s in self.segments if machine is None or machine in self.segment_machines(s.name)]

    def spanning_segments(self) -> list[Segment]:
        """Segments with members on more than one machine (carried between them by VXLAN)."""
        return [s for s in self.segments if len(self.segment_machines(s.name)) > 1]

    # -- lookups
    @property
    def control_plane(self) -> NodeSpec:
        """The control-plane node (runs etcd)."""
        return next(n for n in self.nodes if n.is_control_plane)

    @property
    def workers(self) -> tuple[NodeSpec, ...]:
        """The worker nodes, in file order."""
        return tuple(n for n in self.nodes if not n.is_control_plane)

    def node(self, name: str) -> NodeSpec:
        """The node called ``name`` (KeyError if none)."""
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def segment(self, name: str) -> Segment:
        """The segment called ``name`` (KeyError if none)."""
        for s in self.segments:
            if s.name == name:
                return s
        raise KeyError(name)

    @property
    def etcd_endpoints(self) -> list[str]:
        """Client URLs of the lab's etcd (on the control-plane node's address)."""
        return [f"http://{self.control_plane.address}:2379"]

    def host_names(self) -> list[str]:
        """Every Mininet host of the lab: nodes, routers, external hosts."""
        return ([n.name for n in self.nodes] + [r.name for r in self.routers]
                + [e.name for e in self.external])

    def interface_of(self, host: str) -> list[tuple[str, str, IPv4Address, int]]:
        """``(ifname, segment, address, prefixlen)`` for each leg of ``host``."""
        for n in (*self.nodes, *self.external):
            if n.name == host:
                return [("eth0", n.segment, n.address, self.segment(n.segment).cidr.prefixlen)]
        for r in self.routers:
            if r.name == host:
                return [(f"eth{i}", i_.segment, i_.address, self.segment(i_.segment).cidr.prefixlen)
                        for i, i_ in enumerate(r.interfaces)]
        raise KeyError(host)

    def routes_of(self, host: str) -> list[Route]:
        """Static routes ``host`` needs to reach every segment of the lab.

        Nodes and external hosts route through their segment's gateway (a default
        route, confined to the lab: the only next hops are lab routers); routers
        get a route per segment they are not on, towards the next router on a
        shortest path. A node on a segment without a gateway gets an on-link route to
        :data:`CALICO_GATEWAY` instead: a real node's default route covers that address,
        and without a route to it the node's proxy ARP does not answer its pods' ARP for
        their gateway (no pod would reach even its own node).
        """
        for n in self.nodes:
            if n.name == host:
                gw = self.segment(n.segment).gateway
                return [Route(IPv4Network("0.0.0.0/0"), gw)] if gw else [Route(CALICO_GATEWAY, None)]
        for n in self.external:
            if n.name == host:
                gw = self.segment(n.segment).gateway
                return [Route(IPv4Network("0.0.0.0/0"), gw)] if gw else []
        for r in self.routers:
            if r.name == host:
                return self._router_routes(r)
        raise KeyError(host)

    def _router_routes(self, router: Router) -> list[Route]:
        # BFS over segments; edges are routers (other than the one we are on).
        mine = {i.segment for i in router.interfaces}
        first_hop: dict[str, IPv4Address] = {}
        frontier: list[tuple[str, IPv4Address]] = []
        for seg in mine:
            for other in self.routers:
                if other.name == router.name:
                    continue
                legs = {i.segment: i.address for i in other.interfaces}
                if seg in legs:
                    for s2 in legs:
                        if s2 not in mine and s2 not in first_hop:
                            first_hop[s2] = legs[seg]
                            frontier.append((s2, legs[seg]))
        while frontier:
            seg, hop = frontier.pop(0)
            for other in self.routers:
                legs = {i.segment for i in other.interfaces}
                if seg in legs:
                    for s2 in legs:
                        if s2 not in mine and s2 not in first_hop:
                            first_hop[s2] = hop
                            frontier.append((s2, hop))
        return [Route(self.segment(s).cidr, hop) for s, hop in sorted(first_hop.items())]

    def expected_bgp_sessions(self) -> int:
        """BGP sessions inside the cluster: N(N-1)/2 for a full mesh, else RR clients.

        With route reflectors and mesh off, every non-RR node peers with every RR
        and the RRs peer with each other.
        """
        n = len(self.nodes)
        if self.calico.bgp.mesh and not self.calico.bgp.route_reflectors:
            return n * (n - 1) // 2
        rr = len(self.calico.bgp.route_reflectors)
        return rr * (n - rr) + rr * (rr - 1) // 2

    def calico_node_env(self) -> dict[str, str]:
        """The calico-node environment the manifest would set (calico.yaml)."""
        pool = self.calico.pool
        return {
            "CALICO_IPV4POOL_CIDR": str(pool.cidr),
            "CALICO_IPV4POOL_BLOCK_SIZE": str(pool.block_size),
            "CALICO_IPV4POOL_IPIP": pool.ipip_mode,
            "CALICO_IPV4POOL_VXLAN": pool.vxlan_mode,
            "CALICO_IPV4POOL_NAT_OUTGOING": "true" if pool.nat_outgoing else "false",
            "CALICO_NETWORKING_BACKEND": "bird" if pool.vxlan_mode == "Never" else "vxlan",
            "IP": "autodetect",
            "IP_AUTODETECTION_METHOD": "interface=eth0",
            "DATASTORE_TYPE": self.calico.datastore,
            "FELIX_HEALTHPORT": "9099",
        }


# --------------------------------------------------------------------------- YAML with marks


class _Doc:
    """Plain data from YAML plus the line of every field path."""

    def __init__(self, file: str):
        self.file = file
        self.lines: dict[tuple, int] = {}

    def err(self, path: tuple, problem: str) -> TopologyError:
        """An error for ``path`` at the nearest line known."""
        p = path
        while p and p not in self.lines:
            p = p[:-1]
        return TopologyError(self.file, self.lines.get(p), _fmt(path), problem)


def _fmt(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _plain(node: yaml.Node, loader: yaml.SafeLoader, doc: _Doc, path: tuple) -> Any:
    doc.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict = {}
        for knode, vnode in node.value:
            if knode.tag == "tag:yaml.org,2002:merge":
                raise TopologyError(doc.file, knode.start_mark.line + 1, _fmt(path),
                                    "YAML merge keys (<<) are not supported")
            key = loader.construct_object(knode, deep=True)
            if not isinstance(key, str):
                raise TopologyError(doc.file, knode.start_mark.line + 1, _fmt(path),
                                    f"keys must be strings, got {key!r}")
            if key in out:
                raise TopologyError(doc.file, knode.start_mark.line + 1, _fmt(path + (key,)),
                                    "duplicate key")
            out[key] = _plain(vnode, loader, doc, path + (key,))
            doc.lines[path + (key,)] = knode.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_plain(v, loader, doc, path + (i,)) for i, v in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def _compose(text: str, file: str) -> tuple[Any, _Doc]:
    doc = _Doc(file)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise TopologyError(file, None, "", "the file is empty")
        return _plain(node, loader, doc, ()), doc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise TopologyError(file, line, "", f"malformed YAML: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise TopologyError(file, None, "", f"malformed YAML: {exc}") from None
    finally:
        loader.dispose()


# --------------------------------------------------------------------------- field readers


class _Reader:
    """Typed access to one mapping of the document, rejecting unknown keys."""

    def __init__(self, doc: _Doc, data: Any, path: tuple, allowed: tuple[str, ...]):
        self.doc, self.path = doc, path
        if not isinstance(data, dict):
            raise doc.err(path, f"expected a mapping, got {_kind(data)}")
        for key in data:
            if key not in allowed:
                raise doc.err(path + (key,), f"unknown field (allowed: {', '.join(allowed)})")
        self.data = data

    def has(self, key: str) -> bool:
        return key in self.data

    def sub(self, key: str) -> tuple:
        return self.path + (key,)

    def raw(self, key: str, default: Any = None, required: bool = False) -> Any:
        if key not in self.data or self.data[key] is None:
            if required:
                raise self.doc.err(self.path, f"missing required field '{key}'")
            return default
        return self.data[key]

    def str(self, key: str, default: str | None = None, required: bool = False) -> Any:
        v = self.raw(key, default, required)
        if v is not None and not isinstance(v, str):
            raise self.doc.err(self.sub(key), f"expected a string, got {_kind(v)} {v!r}")
        return v

    def name(self, key: str, maxlen: int) -> str:
        v = self.str(key, required=True)
        if len(v) > maxlen or not _NAME_RE.match(v):
            raise self.doc.err(self.sub(key), f"invalid name {v!r}: use lowercase letters, digits "
                               f"and '-', not at either end, at most {maxlen} characters")
        return v

    def bool(self, key: str, default: bool) -> bool:
        v = self.raw(key, default)
        if not isinstance(v, bool):
            raise self.doc.err(self.sub(key), f"expected true or false, got {v!r}")
        return v

    def int(self, key: str, default: int, lo: int, hi: int) -> int:
        v = self.raw(key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.doc.err(self.sub(key), f"expected an integer, got {v!r}")
        if not lo <= v <= hi:
            raise self.doc.err(self.sub(key), f"{v} is out of range {lo}..{hi}")
        return v

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        v = self.raw(key, default)
        if v not in choices:
            raise self.doc.err(self.sub(key), f"{v!r} is not one of {', '.join(choices)}")
        return v

    def list(self, key: str) -> list:
        v = self.raw(key, [])
        if not isinstance(v, list):
            raise self.doc.err(self.sub(key), f"expected a list, got {_kind(v)}")
        return v

    def network(self, key: str, default: str | None = None) -> IPv4Network:
        v = self.raw(key, default, required=default is None)
        text = str(v)
        try:
            loose = IPv4Network(text, strict=False)
        except ValueError:
            raise self.doc.err(self.sub(key), f"{v!r} is not an IPv4 CIDR") from None
        if "/" not in text:
            raise self.doc.err(self.sub(key), f"{v!r} has no prefix length (e.g. {v}/24)")
        if IPv4Address(text.split("/")[0]) != loose.network_address:
            raise self.doc.err(self.sub(key), f"{v!r} has host bits set (did you mean {loose}?)")
        return loose

    def address(self, key: str) -> tuple[IPv4Address, int | None]:
        v = self.raw(key, required=True)
        text = str(v)
        try:
            iface = ipaddress.IPv4Interface(text)
        except ValueError:
            raise self.doc.err(self.sub(key), f"{v!r} is not an IPv4 address") from None
        return iface.ip, (iface.network.prefixlen if "/" in text else None)


def _kind(v: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", int: "an integer",
            bool: "a boolean", float: "a number", type(None): "nothing"}.get(type(v), type(v).__name__)


# --------------------------------------------------------------------------- loading


#: the Kubernetes datastore lab starts Typha, the CRDs and calico-node from the control plane's
#: machine only; a lab over several machines (``hosts:``) is etcd-only for now, and says so in
#: its file (``calico.datastore: etcdv3``): the default, kubernetes, is refused there by name
_KDD_MULTIHOST = ("the Kubernetes datastore is not implemented for a lab over several machines "
                  "(hosts:); use etcdv3")
_KDD_MULTIHOST_DEFAULT = ("not given, so the default, kubernetes, which is not implemented for a lab "
                          "over several machines (hosts:): write 'datastore: etcdv3' under 'calico:'")


def load(path: str | Path, name: str | None = None, runtime: str | None = None,
         datastore: str | None = None) -> Topology:
    """Read and validate the topology file at ``path``; ``name`` overrides the lab name,
    ``runtime`` the file's ``runtime``, ``datastore`` its ``calico.datastore`` (``up --datastore``)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise TopologyError(str(path), None, "", f"cannot read: {exc.strerror}") from None
    return loads(text, file=str(path), base=p.parent, name=name, runtime=runtime, datastore=datastore)


def loads(text: str, file: str = "<string>", base: Path | None = None,
          name: str | None = None, runtime: str | None = None, datastore: str | None = None) -> Topology:
    """Validate topology YAML ``text``; ``file`` names it in errors, ``base`` resolves manifests;
    ``datastore`` (``up --datastore``) overrides ``calico.datastore``."""
    if datastore is not None and datastore not in DATASTORES:
        raise TopologyError(file, None, "calico.datastore",
                            f"--datastore {datastore!r} is not one of {', '.join(DATASTORES)}")
    data, doc = _compose(text, file)
    top = _Reader(doc, data, (), _keys())

    lab = top.name("name", LAB_NAME_MAX)
    if name is not None:
        if len(name) > LAB_NAME_MAX or not _NAME_RE.match(name):
            raise TopologyError(file, None, "name", f"invalid lab name {name!r}: lowercase letters, "
                                f"digits and '-', at most {LAB_NAME_MAX} characters")
        lab = name
    rt = top.choice("runtime", "netns", RUNTIMES)
    if runtime is not None:
        if runtime not in RUNTIMES:
            raise TopologyError(file, None, "runtime", f"container runtime {runtime!r} is not implemented in "
                                f"calicolab (choose one of: {', '.join(RUNTIMES)})")
        rt = runtime
    names: dict[str, tuple] = {}
    hosts = _hosts(doc, top.list("hosts"), base)
    host_names = [h.name for h in hosts]

    def machine(r: _Reader) -> str:
        """The ``host:`` of a member: local, or one of the ``hosts:``."""
        h = r.str("host", LOCAL_HOST)
        if h != LOCAL_HOST and h not in host_names:
            raise doc.err(r.sub("host"), f"unknown host {h!r} (hosts: "
                          f"{', '.join(host_names + [LOCAL_HOST])})")
        return h

    def claim(n: str, path: tuple) -> None:
        if n in RESERVED_NAMES:
            raise doc.err(path, f"{n!r} is reserved (it would clash with the loopback device)")
        if n in names:
            raise doc.err(path, f"duplicate name {n!r} (already used at {_fmt(names[n])})")
        names[n] = path

    # segments
    segs: list[Segment] = []
    seg_items = top.list("segments")
    if not seg_items:
        raise doc.err(("segments",), "at least one segment is required")
    for i, item in enumerate(seg_items):
        r = _Reader(doc, item, ("segments", i), _keys("segments"))
        sname = r.name("name", SEGMENT_NAME_MAX)
        claim(sname, r.sub("name"))
        cidr = r.network("cidr")
        if cidr.prefixlen > 30:
            raise doc.err(r.sub("cidr"), f"{cidr} is too small for a segment (at most /30)")
        _check_allowed(doc, r.sub("cidr"), cidr)
        for other in segs:
            if other.cidr.overlaps(cidr):
                raise doc.err(r.sub("cidr"), f"{cidr} overlaps segment {other.name} ({other.cidr})")
        gw = None
        if r.has("gateway"):
            gw, _ = r.address("gateway")
        segs.append(Segment(sname, cidr, gw))
    seg_by = {s.name: s for s in segs}
    used_addr: dict[IPv4Address, tuple] = {}

    def place(path: tuple, r: _Reader, seg_name: str, key: str = "address") -> IPv4Address:
        if seg_name not in seg_by:
            raise doc.err(r.sub("segment"), f"unknown segment {seg_name!r} "
                          f"(segments: {', '.join(seg_by)})")
        seg = seg_by[seg_name]
        addr, plen = r.address(key)
        if addr not in seg.cidr:
            raise doc.err(r.sub(key), f"{addr} is outside its segment {seg.name} ({seg.cidr})")
        if plen is not None and plen != seg.cidr.prefixlen:
            raise doc.err(r.sub(key), f"prefix /{plen} differs from segment {seg.name} ({seg.cidr})")
        if addr in (seg.cidr.network_address, seg.cidr.broadcast_address):
            raise doc.err(r.sub(key), f"{addr} is the network or broadcast address of {seg.cidr}")
        if addr in used_addr:
            raise doc.err(r.sub(key), f"address {addr} is already used at {_fmt(used_addr[addr])}")
        used_addr[addr] = r.sub(key)
        return addr

    # routers
    routers: list[Router] = []
    for i, item in enumerate(top.list("routers")):
        r = _Reader(doc, item, ("routers", i), _keys("routers"))

        rname = r.name("name", NODE_NAME_MAX)
        claim(rname, r.sub("name"))
        legs: list[RouterInterface] = []
        items = r.list("interfaces")
        if len(items) < 2:
            raise doc.err(r.sub("interfaces"), "a router needs at least two interfaces")
        for j, leg in enumerate(items):
            lr = _Reader(doc, leg, r.sub("interfaces") + (j,), _keys("routers.interfaces"))
            sname = lr.str("segment", required=True)
            if any(x.segment == sname for x in legs):
                raise doc.err(lr.sub("segment"), f"router {rname} is on segment {sname} twice")
            legs.append(RouterInterface(sname, place(lr.path, lr, sname)))
        routers.append(Router(rname, tuple(legs), machine(r)))

    # segment gateways: explicit, else the only router on the segment
    for i, seg in enumerate(segs):
        on = [leg for rt in routers for leg in rt.interfaces if leg.segment == seg.name]
        if seg.gateway is not None:
            if not any(leg.address == seg.gateway for leg in on):
                raise doc.err(("segments", i, "gateway"),
                              f"{seg.gateway} is not a router address on segment {seg.name}")
        elif len(on) == 1:
            segs[i] = Segment(seg.name, seg.cidr, on[0].address)
        elif len(on) > 1:
            raise doc.err(("segments", i), f"segment {seg.name} has {len(on)} routers: "
                          "say which one is the gateway ('gateway: <address>')")
    seg_by = {s.name: s for s in segs}

    # nodes
    nodes: list[NodeSpec] = []
    node_items = top.list("nodes")
    if not node_items:
        raise doc.err(("nodes",), "at least one node is required")
    for i, item in enumerate(node_items):
        r = _Reader(doc, item, ("nodes", i), _keys("nodes"))

        nname = r.name("name", NODE_NAME_MAX)
        claim(nname, r.sub("name"))
        role = r.choice("role", "worker", ROLES)
        sname = r.str("segment", required=True)
        nodes.append(NodeSpec(nname, role, place(r.path, r, sname), sname, machine(r)))
    cps = [n for n in nodes if n.is_control_plane]
    if len(cps) != 1:
        raise doc.err(("nodes",), f"exactly one node must have role control-plane, found {len(cps)}")

    # external hosts
    externals: list[ExternalHost] = []
    for i, item in enumerate(top.list("external")):
        r = _Reader(doc, item, ("external", i), _keys("external"))

        ename = r.name("name", NODE_NAME_MAX)
        claim(ename, r.sub("name"))
        sname = r.str("segment", required=True)
        addr = place(r.path, r, sname)
        seg = seg_by[sname]
        if not any(seg.cidr.subnet_of(d) for d in DOCUMENTATION_PREFIXES):
            raise doc.err(r.sub("segment"), f"external host {ename} must be on a documentation "
                          f"prefix (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24), not {seg.cidr}")
        if any(n.segment == sname for n in nodes):
            raise doc.err(r.sub("segment"), f"segment {sname} holds Kubernetes nodes; put external "
                          "hosts on their own segment behind a router")
        externals.append(ExternalHost(ename, addr, sname, machine(r)))

    calico = _calico(doc, top.raw("calico", {}), segs, {n.name for n in nodes}, used_addr)
    if datastore is not None:
        calico = replace(calico, datastore=datastore)
    if hosts and calico.datastore == "kubernetes":
        if datastore is not None:
            raise TopologyError(file, None, "calico.datastore", f"--datastore kubernetes: {_KDD_MULTIHOST}")
        given = isinstance(top.raw("calico", {}), dict) and "datastore" in top.raw("calico", {})
        raise doc.err(("calico", "datastore"), _KDD_MULTIHOST if given else _KDD_MULTIHOST_DEFAULT)
    workloads = _workloads(doc, top.list("workloads"), base, {n.name for n in nodes})
    _refuse_unimplemented(doc, data)
    used = {m.host for m in (*nodes, *routers, *externals)}
    for i, h in enumerate(hosts):
        if h.name not in used:
            raise doc.err(("hosts", i, "name"), f"host {h.name!r} holds no node, router or external "
                          "host of the lab (give some 'host: " + h.name + "', or remove it)")
        _check_underlay(doc, ("hosts", i, "address"), h, segs)

    return Topology(lab, file, tuple(segs), tuple(nodes), tuple(routers), tuple(externals),
                    calico, workloads, rt, tuple(hosts))


_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]*$")
_PUBKEY_RE = re.compile(r"^(ssh-[a-z0-9-]+|ecdsa-sha2-nistp\d+) [A-Za-z0-9+/=]+( .*)?$")


def _hosts(doc: _Doc, items: list, base: Path | None) -> list[HostSpec]:
    """``hosts:``: the other machines, each reached over SSH (nothing is contacted here)."""
    out: list[HostSpec] = []
    for i, item in enumerate(items):
        r = _Reader(doc, item, ("hosts", i), _keys("hosts"))
        hname = r.name("name", HOST_NAME_MAX)
        if hname == LOCAL_HOST:
            raise doc.err(r.sub("name"), f"{LOCAL_HOST!r} is this machine; give the host another name")
        if any(h.name == hname for h in out):
            raise doc.err(r.sub("name"), f"duplicate host {hname!r}")
        addr = str(r.raw("address", required=True))
        if not _HOSTNAME_RE.match(addr):
            raise doc.err(r.sub("address"), f"{addr!r} is not an IP address or a host name")
        user = r.str("user", required=True)
        if not _USER_RE.match(user):
            raise doc.err(r.sub("user"), f"{user!r} is not a user name")
        key = r.str("key", required=True)
        host_key = r.str("hostKey", "")
        if host_key and not _PUBKEY_RE.match(host_key.strip()):
            host_key = _resolve(base, host_key)
        paths = {}
        for field_ in ("repo", "runDir"):
            v = r.str(field_, "")
            if v and not v.startswith("/"):
                raise doc.err(r.sub(field_), f"{v!r} must be an absolute path on host {hname}")
            paths[field_] = v.rstrip("/") if v != "/" else v
        out.append(HostSpec(hname, addr, user, _resolve(base, key), r.int("port", 22, 1, 65535),
                            host_key.strip(), paths["repo"], paths["runDir"]))
    return out


def _resolve(base: Path | None, path: str) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else ((base or Path(".")) / p).resolve())


def _check_underlay(doc: _Doc, path: tuple, h: HostSpec, segs: list[Segment]) -> None:
    """A host's own address must be outside the lab's segments (the lab's addresses there
    would shadow it). The pod pool may overlap: pods live in the nodes' namespaces."""
    try:
        ip = IPv4Address(h.address)
    except ValueError:
        return  # a name: resolved when connecting
    for s in segs:
        if ip in s.cidr:
            raise doc.err(path, f"host {h.name}'s address {ip} is inside segment {s.name} ({s.cidr}): "
                          "the hosts' own network must be outside the lab's segments")


def _check_allowed(doc: _Doc, path: tuple, net: IPv4Network) -> None:
    for bad in FORBIDDEN_PREFIXES:
        if net.overlaps(bad):
            raise doc.err(path, f"{net} overlaps {bad}, which a lab may never use")


def _calico(doc: _Doc, data: Any, segs: list[Segment], node_names: set[str],
            used: dict[IPv4Address, tuple]) -> CalicoSpec:
    c = _Reader(doc, data, ("calico",), _keys("calico"))
    p = _Reader(doc, c.raw("pool", {}), ("calico", "pool"), _keys("calico.pool"))
    cidr = p.network("cidr", "192.168.0.0/16")
    _check_allowed(doc, p.sub("cidr"), cidr)
    for s in segs:
        if s.cidr.overlaps(cidr):
            raise doc.err(p.sub("cidr"), f"pool {cidr} overlaps segment {s.name} ({s.cidr})")
    block = p.int("blockSize", 26, 20, 32)
    if block < cidr.prefixlen:
        raise doc.err(p.sub("blockSize"), f"block size /{block} is larger than the pool {cidr}")
    ipip = p.choice("ipipMode", "Always", ENCAP_MODES)
    vxlan = p.choice("vxlanMode", "Never", ENCAP_MODES)
    if ipip != "Never" and vxlan != "Never":
        raise doc.err(p.sub("vxlanMode"), "Cannot enable both VXLAN and IPIP on the same IPPool")
    pool = PoolSpec(cidr, block, ipip, vxlan, p.bool("natOutgoing", True))

    b = _Reader(doc, c.raw("bgp", {}), ("calico", "bgp"), _keys("calico.bgp"))
    rrs: list[str] = []
    for i, rr in enumerate(b.list("routeReflectors")):
        if rr not in node_names:
            raise doc.err(b.sub("routeReflectors") + (i,), f"unknown node {rr!r}")
        if rr in rrs:
            raise doc.err(b.sub("routeReflectors") + (i,), f"duplicate route reflector {rr!r}")
        rrs.append(rr)
    mesh = b.bool("mesh", True)
    if not mesh and not rrs and len(node_names) > 1 and not b.list("externalPeers"):
        raise doc.err(b.sub("mesh"), "mesh is off and there are no route reflectors or external "
                      "peers: nodes would learn no routes")
    peers: list[ExternalPeer] = []
    for i, item in enumerate(b.list("externalPeers")):
        r = _Reader(doc, item, b.sub("externalPeers") + (i,), _keys("calico.bgp.externalPeers"))
        addr, _ = r.address("address")
        if not any(addr in s.cidr for s in segs):
            raise doc.err(r.sub("address"), f"{addr} is not on any segment of the lab")
        node = r.str("node", "")
        if node and node not in node_names:
            raise doc.err(r.sub("node"), f"unknown node {node!r}")
        peers.append(ExternalPeer(addr, r.int("asNumber", 0, 1, 4294967295) if r.has("asNumber")
                                  else _missing(doc, r, "asNumber"), r.str("name", ""), node))
    return CalicoSpec(pool, BGPSpec(mesh, b.int("asNumber", 64512, 1, 4294967295),
                                    tuple(rrs), tuple(peers)),
                      c.choice("datastore", DEFAULT_DATASTORE, DATASTORES))


def _missing(doc: _Doc, r: _Reader, key: str) -> Any:
    raise doc.err(r.path, f"missing required field '{key}'")


def _workloads(doc: _Doc, items: list, base: Path | None, node_names: set[str]) -> tuple[Workload, ...]:
    out: list[Workload] = []
    for i, item in enumerate(items):
        path = ("workloads", i)
        if isinstance(item, str):
            item = {"file": item}
        r = _Reader(doc, item, path, _keys("workloads"))
        if r.has("file") == r.has("manifest"):
            raise doc.err(path, "give exactly one of 'file' or 'manifest'")
        if r.has("file"):
            rel = r.str("file", required=True)
            mpath = (base or Path(".")) / rel
            try:
                docs = [d for d in yaml.safe_load_all(mpath.read_text()) if d is not None]
            except OSError as exc:
                raise doc.err(r.sub("file"), f"cannot read manifest {mpath}: {exc.strerror}") from None
            except yaml.YAMLError as exc:
                raise doc.err(r.sub("file"), f"manifest {mpath} is malformed YAML: {exc}") from None
            source = str(mpath)
        else:
            m = r.raw("manifest", required=True)
            docs = m if isinstance(m, list) else [m]
            source = f"<inline workloads[{i}]>"
        for j, d in enumerate(docs):
            where = r.sub("manifest") + ((j,) if len(docs) > 1 else ()) if r.has("manifest") \
                else r.sub("file")
            _check_manifest(doc, where, source, d, node_names)
        out.append(Workload(source, tuple(docs)))
    return tuple(out)


def _check_manifest(doc: _Doc, path: tuple, source: str, d: Any, node_names: set[str]) -> None:
    if not isinstance(d, dict):
        raise doc.err(path, f"{source}: a manifest document must be a mapping")
    for key in ("apiVersion", "kind"):
        if not isinstance(d.get(key), str):
            raise doc.err(path, f"{source}: document without '{key}'")
    meta = d.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str):
        raise doc.err(path, f"{source}: {d['kind']} without metadata.name")
    for pod_spec in _pod_specs(d):
        nn = pod_spec.get("nodeName")
        if nn is not None and nn not in node_names:
            raise doc.err(path, f"{source}: {d['kind']} {meta['name']} has nodeName {nn!r}, "
                          f"which is not a node of the lab ({', '.join(sorted(node_names))})")


def _pod_specs(d: dict) -> Iterator[dict]:
    spec = d.get("spec")
    if not isinstance(spec, dict):
        return
    if d.get("kind") == "Pod":
        yield spec
        return
    tmpl = spec.get("template")
    if isinstance(tmpl, dict) and isinstance(tmpl.get("spec"), dict):
        yield tmpl["spec"]
