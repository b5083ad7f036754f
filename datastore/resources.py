"""Calico v3 resources as typed dataclasses, with calicoctl's YAML/JSON shapes.

Python attributes are snake_case; ``to_dict()`` gives the camelCase document
calicoctl prints (``apiVersion: projectcalico.org/v3``, ``kind``, ``metadata``,
``spec``). ``from_dict()`` is strict: unknown fields and wrong types raise
:class:`~datastore.errors.ValidationError` naming the field, e.g.
``IPPool(p1).spec.blokSize: unknown field``.

The IPAM kinds (IPAMBlock, BlockAffinity, IPAMHandle, IPAMConfig) are stored in
etcd in libcalico-go's *model* format under ``/calico/ipam/v2/...`` (calico.md
section 7) and shown by calicoctl as v3 resources; their ``encode_value`` /
``decode_value`` translate.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from datastore import codec
from datastore.codec import jfield
from datastore.duration import parse_duration
from datastore.errors import ValidationError
from datastore.inventory import Finding, Support, findings, missing, works, works_for
from datastore.rules import Rule, check_selector, default_types, validate_rules, validate_types

API_VERSION = "projectcalico.org/v3"
V3_PREFIX = "/calico/resources/v3/projectcalico.org/"
IPAM_PREFIX = "/calico/ipam/v2/"


@dataclass
class Metadata:
    """Kubernetes-style object metadata."""

    name: str = ""
    namespace: str | None = None
    uid: str | None = None
    creation_timestamp: str | None = jfield("creationTimestamp")
    resource_version: str | None = jfield("resourceVersion")
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


@dataclass
class Resource:
    """Base of every resource kind: ``metadata`` + ``spec`` (+ ``status`` on some)."""

    KIND: ClassVar[str] = ""
    PLURAL: ClassVar[str] = ""
    NAMESPACED: ClassVar[bool] = False
    ALIASES: ClassVar[tuple[str, ...]] = ()
    Spec: ClassVar[type] = dict
    #: True for the IPAM kinds, stored in libcalico-go's model format (no uid/timestamps).
    MODEL_STORED: ClassVar[bool] = False
    #: what calicolab does with each field (``spec.x.y`` -> Support), see datastore.inventory;
    #: a field whose entry is not implemented covers the fields inside it
    INVENTORY: ClassVar[dict[str, Support]] = {}

    metadata: Metadata = field(default_factory=Metadata)

    # -- identity ----------------------------------------------------------

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str | None:
        return self.metadata.namespace

    @property
    def revision(self) -> int:
        """The etcd mod revision this object was read at (0 if never stored)."""
        return int(self.metadata.resource_version or 0)

    def ident(self) -> str:
        """``Kind(name)`` or ``Kind(ns/name)``, used in messages."""
        ns = f"{self.metadata.namespace}/" if self.NAMESPACED and self.metadata.namespace else ""
        return f"{self.KIND}({ns}{self.metadata.name})"

    # -- keys --------------------------------------------------------------

    @classmethod
    def key_for(cls, name: str, namespace: str | None = None) -> str:
        """The etcd key of the object ``name`` (in ``namespace``)."""
        if cls.NAMESPACED:
            return f"{V3_PREFIX}{cls.PLURAL}/{namespace or 'default'}/{name}"
        return f"{V3_PREFIX}{cls.PLURAL}/{name}"

    @classmethod
    def list_prefix(cls, namespace: str | None = None) -> str:
        """The etcd prefix holding every object of this kind (in ``namespace``)."""
        if cls.NAMESPACED and namespace:
            return f"{V3_PREFIX}{cls.PLURAL}/{namespace}/"
        return f"{V3_PREFIX}{cls.PLURAL}/"

    @classmethod
    def ident_from_key(cls, key: str) -> tuple[str | None, str] | None:
        """(namespace, name) for a key of this kind, or None if not ours."""
        prefix = f"{V3_PREFIX}{cls.PLURAL}/"
        if not key.startswith(prefix):
            return None
        rest = key[len(prefix):].split("/")
        if cls.NAMESPACED and len(rest) == 2:
            return rest[0], rest[1]
        if not cls.NAMESPACED and len(rest) == 1:
            return None, rest[0]
        return None

    def key(self) -> str:
        return self.key_for(self.metadata.name, self.metadata.namespace)

    # -- documents -----------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The calicoctl-shaped document (camelCase, omitempty)."""
        doc: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": self.KIND,
            "metadata": codec.to_json(self.metadata),
            "spec": codec.to_json(getattr(self, "spec", None)) or {},
        }
        status = getattr(self, "status", None)
        if status:
            doc["status"] = codec.to_json(status)
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str = "") -> Resource:
        """Build from a calicoctl-shaped document; ``where`` prefixes error paths (file:line)."""
        if not isinstance(doc, dict):
            raise ValidationError(where or cls.KIND, "a resource must be a mapping")
        name = (doc.get("metadata") or {}).get("name", "") if isinstance(doc.get("metadata"), dict) else ""
        path = f"{where}{cls.KIND}({name})"
        api = doc.get("apiVersion", API_VERSION)
        if api != API_VERSION:
            raise ValidationError(f"{path}.apiVersion", f"must be {API_VERSION}, got {api!r}")
        if doc.get("kind", cls.KIND) != cls.KIND:
            raise ValidationError(f"{path}.kind", f"must be {cls.KIND}, got {doc.get('kind')!r}")
        extra = set(doc) - {"apiVersion", "kind", "metadata", "spec", "status"}
        if extra:
            raise ValidationError(f"{path}.{sorted(extra)[0]}", "unknown field")
        if "status" in doc and not hasattr(cls, "status"):
            raise ValidationError(f"{path}.status", "unknown field")
        md = codec.from_json(Metadata, doc.get("metadata") or {}, f"{path}.metadata")
        kwargs: dict[str, Any] = {"metadata": md}
        if cls.Spec is not dict:
            kwargs["spec"] = codec.from_json(cls.Spec, doc.get("spec") or {}, f"{path}.spec")
        if "status" in doc:
            if not isinstance(doc["status"], dict):
                raise ValidationError(f"{path}.status", "must be a mapping")
            kwargs["status"] = doc["status"]
        return cls(**kwargs)

    # -- storage -------------------------------------------------------------

    def encode_value(self) -> bytes:
        """The bytes stored in etcd (v3 document without resourceVersion)."""
        doc = self.to_dict()
        doc["metadata"].pop("resourceVersion", None)
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def decode_value(cls, key: str, value: bytes, revision: int) -> Resource:
        """Decode what :meth:`encode_value` stored; stamps resourceVersion."""
        obj = cls.from_dict(json.loads(value))
        obj.metadata.resource_version = str(revision)
        return obj

    # -- semantics -----------------------------------------------------------

    def apply_defaults(self) -> None:
        """Fill in defaults the way Calico's client does before storing."""

    def validate(self) -> None:
        """Raise ValidationError naming the field if the object is invalid."""
        if not self.metadata.name:
            raise ValidationError(f"{self.KIND}.metadata.name", "is required")
        if not _NAME_RE.match(self.metadata.name):
            raise ValidationError(
                f"{self.ident()}.metadata.name",
                "must consist of lower case alphanumerics, '-' or '.', and start and end with an alphanumeric",
            )
        if self.NAMESPACED and not self.metadata.namespace:
            self.metadata.namespace = "default"


_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_IFACE_RE = re.compile(r"^[a-zA-Z0-9_.:-]{1,15}$")

# -- inventory: the tests that show a field's effect, and why others have none ----------
_T_IPAM = "tests/etcd/test_ipam_alloc.py::"
_T_BLOCK = "tests/unit/test_ipam_block.py::"
_T_WALK = "tests/lab/test_walkthrough.py::"
_T_CONFD = "tests/unit/test_confd_compute.py::"
_T_CNI = "tests/netns/test_cni_plugin.py::"
_T_STARTUP = "tests/netns/test_agent_startup.py::"
_T_EFFECTS = "tests/unit/test_settings_effects.py::"
_T_EFFECTS_DS = "tests/etcd/test_settings_effects.py::"
_NO_V6 = "IPv6 is not implemented: calicolab is IPv4 only"
_NO_VXLAN = "IPv6 VXLAN is not built: calicolab is IPv4 only"
_T_ENCAP = "tests/unit/test_felix_encap.py::"
_T_VXLAN_NETNS = "tests/netns/test_agent_vxlan.py::test_vxlan_mode_without_bgp_then_crosssubnet_then_off"
_T_MODES = "tests/lab/test_modes_switch.py::"
_NO_WIREGUARD = "WireGuard encryption is not implemented: traffic between nodes is not encrypted"
_NO_BPF = "the eBPF dataplane is not built: Felix programs iptables"
_NO_XDP = "XDP is not used (it only serves untracked policy on host endpoints)"
_NO_MD5 = "BGP passwords (TCP MD5) are not implemented: sessions run without authentication"
_NO_SVC_ADV = "Service IPs are not advertised over BGP"
_NO_COMMUNITIES = "BGP communities are not set on exported routes"
_NO_HEP = "host endpoints are not implemented, so no failsafe rules are rendered"
_NO_METRICS = "no Prometheus metrics are served"
_NO_REPORTS = "Felix writes no endpoint status"
_OPENSTACK = "OpenStack only"
_DEBUG = "Felix debug aids are not implemented"
_FIXED_IPT = "iptables-restore runs with fixed checks and locking"
_FIXED_ACTIONS = "the rule actions are fixed (ACCEPT and DROP)"
_FIXED_LOG = "calico-node logs to stderr at CALICO_LOG_LEVEL"
_FIXED_HEALTH = "calico-node's health server always runs on 127.0.0.1:FELIX_HEALTHPORT (9099)"
_SOFT_DELETE = "soft deletion belongs to the Kubernetes datastore; in etcd the key is deleted"
_SECRET = {"secretKeyRef": {"name": "bgp-secrets", "key": "password"}}
_MTU_PATTERN = r"^((en|wl|ww|sl|ib)[Pcopsvx].*|(eth|wlan|wwan).*)"


def _zero_duration(value: str) -> bool:
    return parse_duration(value) == 0


#: Metadata fields, common to every kind.
METADATA_INVENTORY: dict[str, Support] = {
    "metadata.name": works("tests/etcd/test_datastore_client.py::test_crud_uses_calico_keys_and_cas"),
    "metadata.namespace": works("tests/etcd/test_calicoctl_cli.py::test_stdin_json_nodes_and_weps_and_delete"),
    "metadata.uid": works("tests/etcd/test_datastore_client.py::test_crud_uses_calico_keys_and_cas"),
    "metadata.creationTimestamp": works("tests/etcd/test_datastore_client.py::test_crud_uses_calico_keys_and_cas"),
    "metadata.resourceVersion": works("tests/etcd/test_datastore_client.py::test_crud_uses_calico_keys_and_cas"),
    "metadata.labels": works(_T_IPAM + "test_pool_selection_rules", _T_CONFD + "test_selector_peering_reaches_the_reflector_side_too"),
    "metadata.annotations": works(_T_EFFECTS_DS + "test_metadata_is_stored_and_shown"),
}


def _cidr(value: str, path: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValidationError(path, f"{value!r} is not a valid CIDR") from None


def _ip(value: str, path: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ValidationError(path, f"{value!r} is not a valid IP address") from None


def _oneof(value: str | None, allowed: tuple[str, ...], path: str) -> None:
    if value not in allowed:
        raise ValidationError(path, f"must be one of {', '.join(allowed)}; got {value!r}")


def _check_selector(sel: str | None, path: str) -> None:
    if not sel:
        return
    from datastore.selector import SelectorError, parse_selector

    try:
        parse_selector(sel)
    except SelectorError as exc:
        raise ValidationError(path, str(exc)) from None


# ---------------------------------------------------------------------------
# IPPool


@dataclass
class IPPoolSpec:
    cidr: str = ""
    vxlan_mode: str | None = jfield("vxlanMode")
    ipip_mode: str | None = jfield("ipipMode")
    nat_outgoing: bool = False
    disabled: bool = False
    disable_bgp_export: bool = jfield("disableBGPExport", False)
    node_selector: str | None = None
    namespace_selector: str | None = None
    block_size: int = 0
    allowed_uses: list[str] = field(default_factory=list)


@dataclass
class IPPool(Resource):
    """An IP pool pods and tunnels get addresses from (calico.md section 2)."""

    KIND = "IPPool"
    PLURAL = "ippools"
    ALIASES = ("ippool", "ippools", "pool", "pools", "ipp", "ipps")
    Spec = IPPoolSpec
    spec: IPPoolSpec = field(default_factory=IPPoolSpec)
    INVENTORY = {
        "spec.cidr": works_for(
            lambda v: ":" not in v, _T_IPAM + "test_pool_selection_rules", _T_WALK + "test_cross_node_flow_is_ipip",
            ok_doc="IPv4 CIDRs", sample="fd00:10::/64",
            note="IPv6 pools are not implemented: calicolab assigns, routes and tunnels IPv4 only"),
        "spec.vxlanMode": works(_T_ENCAP + "test_vxlan_always_routes_every_remote_block_via_the_vtep_and_blackholes_its_own",
                                _T_ENCAP + "test_vxlan_cross_subnet_routes_same_subnet_nodes_unencapsulated",
                                _T_VXLAN_NETNS, _T_MODES + "test_ipip_to_vxlan_by_calicoctl_patch",
                                "tests/lab/test_modes_vxlan.py::test_vxlan_crosssubnet_without_bgp_four_flows"),
        "spec.ipipMode": works(_T_WALK + "test_cross_node_flow_is_ipip",
                               "tests/netns/test_bgp_mesh.py::test_ecmp_and_cross_subnet_kernel_routes",
                               _T_IPAM + "test_tunnel_address_released_when_ipip_is_turned_off"),
        "spec.natOutgoing": works(_T_WALK + "test_pod_to_internet_is_masqueraded",
                                  "tests/unit/test_felix_calc.py::test_mangle_and_nat"),
        "spec.disabled": works(_T_IPAM + "test_pool_selection_rules"),
        "spec.disableBGPExport": works(_T_CONFD + "test_disable_bgp_export_cross_subnet_vxlan_and_borrowed"),
        "spec.blockSize": works(_T_IPAM + "test_borrow_only_when_no_free_block_and_not_strict",
                                _T_IPAM + "test_per_host_block_limit"),
        "spec.nodeSelector": works(_T_IPAM + "test_pool_selection_rules"),
        "spec.allowedUses": works_for(
            lambda v: set(v) <= {"Workload", "Tunnel"}, _T_IPAM + "test_pool_selection_rules",
            ok_doc="Workload, Tunnel", sample=["LoadBalancer"],
            note="LoadBalancer (v3.30+): calicolab has no load-balancer IP allocation"),
        "spec.namespaceSelector": missing("IPAM picks pools by node and annotations only", since="v3.31"),
    }

    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.spec.cidr, strict=False)

    def apply_defaults(self) -> None:
        net = _cidr(self.spec.cidr, f"{self.ident()}.spec.cidr") if self.spec.cidr else None
        if not self.spec.block_size:
            self.spec.block_size = 122 if net is not None and net.version == 6 else 26
        self.spec.ipip_mode = self.spec.ipip_mode or "Never"
        self.spec.vxlan_mode = self.spec.vxlan_mode or "Never"
        self.spec.node_selector = self.spec.node_selector or "all()"
        if not self.spec.allowed_uses:
            self.spec.allowed_uses = ["Workload", "Tunnel"]
        if net is not None:
            self.spec.cidr = str(net)

    def validate(self) -> None:
        super().validate()
        p = f"{self.ident()}.spec"
        if not self.spec.cidr:
            raise ValidationError(f"{p}.cidr", "is required")
        net = _cidr(self.spec.cidr, f"{p}.cidr")
        lo, hi = (116, 128) if net.version == 6 else (20, 32)
        bs = self.spec.block_size
        if not lo <= bs <= hi:
            raise ValidationError(f"{p}.blockSize", f"must be between {lo} and {hi} for IPv{net.version}; got {bs}")
        if bs < net.prefixlen:
            raise ValidationError(
                f"{p}.blockSize", f"block size /{bs} is larger than the pool's CIDR {net} (prefix /{net.prefixlen})")
        _oneof(self.spec.ipip_mode, ("Always", "CrossSubnet", "Never"), f"{p}.ipipMode")
        _oneof(self.spec.vxlan_mode, ("Always", "CrossSubnet", "Never"), f"{p}.vxlanMode")
        if self.spec.ipip_mode != "Never" and self.spec.vxlan_mode != "Never":
            raise ValidationError(f"{p}.vxlanMode", "Cannot enable both VXLAN and IPIP on the same IPPool")
        if net.version == 6 and self.spec.ipip_mode != "Never":
            raise ValidationError(f"{p}.ipipMode", "IPIP is not supported on an IPv6 pool")
        for i, use in enumerate(self.spec.allowed_uses):
            _oneof(use, ("Workload", "Tunnel", "LoadBalancer"), f"{p}.allowedUses[{i}]")
        _check_selector(self.spec.node_selector, f"{p}.nodeSelector")
        if net.version == 4 and (net.is_loopback or net.is_link_local):
            raise ValidationError(f"{p}.cidr", f"{net} overlaps a reserved range (loopback or link-local)")


# ---------------------------------------------------------------------------
# Node


@dataclass
class NodeBGPSpec:
    ipv4_address: str | None = jfield("ipv4Address")
    ipv6_address: str | None = jfield("ipv6Address")
    ipv4_ipip_tunnel_addr: str | None = jfield("ipv4IPIPTunnelAddr")
    as_number: int | None = jfield("asNumber")
    route_reflector_cluster_id: str | None = jfield("routeReflectorClusterID")


@dataclass
class OrchRef:
    node_name: str | None = None
    orchestrator: str = ""


@dataclass
class NodeAddress:
    address: str = ""
    type: str | None = None


@dataclass
class NodeWireguardSpec:
    interface_ipv4_address: str | None = jfield("interfaceIPv4Address")
    interface_ipv6_address: str | None = jfield("interfaceIPv6Address")


@dataclass
class NodeSpec:
    bgp: NodeBGPSpec | None = None
    ipv4_vxlan_tunnel_addr: str | None = jfield("ipv4VXLANTunnelAddr")
    vxlan_tunnel_mac_addr: str | None = jfield("vxlanTunnelMACAddr")
    ipv6_vxlan_tunnel_addr: str | None = jfield("ipv6VXLANTunnelAddr")
    vxlan_tunnel_mac_addr_v6: str | None = jfield("vxlanTunnelMACAddrV6")
    orch_refs: list[OrchRef] = field(default_factory=list)
    wireguard: NodeWireguardSpec | None = None
    addresses: list[NodeAddress] = field(default_factory=list)


@dataclass
class Node(Resource):
    """A Calico node (one per Kubernetes node) with its BGP address and tunnel address."""

    KIND = "Node"
    PLURAL = "nodes"
    ALIASES = ("node", "nodes", "no")
    Spec = NodeSpec
    spec: NodeSpec = field(default_factory=NodeSpec)
    INVENTORY = {
        "spec.bgp.asNumber": works(_T_CONFD + "test_as_numbers_and_mesh_off_with_global_peer"),
        "spec.bgp.ipv4Address": works(_T_STARTUP + "test_startup_registers_node_and_allocates_first_ip_of_first_block",
                                      _T_CONFD + "test_mesh_peers_names_passive_and_exports"),
        "spec.bgp.ipv6Address": missing(_NO_V6),
        "spec.bgp.ipv4IPIPTunnelAddr": works(
            _T_STARTUP + "test_startup_registers_node_and_allocates_first_ip_of_first_block",
            "tests/unit/test_felix_calc.py::test_routes_tunnel_and_mtu"),
        "spec.bgp.routeReflectorClusterID": works(_T_CONFD + "test_route_reflector_topology",
                                                  "tests/lab/test_lab_rr.py::test_route_reflector_sessions_routes_and_pods"),
        "spec.ipv4VXLANTunnelAddr": works(_T_VXLAN_NETNS, _T_MODES + "test_ipip_to_vxlan_by_calicoctl_patch"),
        "spec.vxlanTunnelMACAddr": works(
            _T_ENCAP + "test_vxlan_always_routes_every_remote_block_via_the_vtep_and_blackholes_its_own",
            note="calico-node never writes it (as v3.28.1); Felix derives the MAC when it is unset"),
        "spec.ipv6VXLANTunnelAddr": missing(_NO_VXLAN),
        "spec.vxlanTunnelMACAddrV6": missing(_NO_VXLAN),
        "spec.orchRefs.nodeName": works(_T_EFFECTS + "test_orch_refs_name_the_kubernetes_node"),
        "spec.orchRefs.orchestrator": works(_T_EFFECTS + "test_orch_refs_name_the_kubernetes_node"),
        "spec.wireguard": missing(_NO_WIREGUARD),
        "spec.addresses": missing("calicolab reads no node address list (spec.bgp.ipv4Address is the node "
                                  "address); in the Kubernetes datastore the list is derived from the Kubernetes "
                                  "Node (CalicoNodeIP, InternalIP, ExternalIP) for display",
                                  ok=lambda v: all(isinstance(a, dict) and a.get("type") in
                                                   ("CalicoNodeIP", "InternalIP", "ExternalIP") for a in v or []),
                                  ok_doc="the addresses the Kubernetes datastore derives"),
        "status": works_for(lambda v: set(v or {}) <= {"podCIDRs"},
                            "tests/etcd/test_kdd_datastore.py::test_calico_node_is_the_kubernetes_node",
                            "tests/etcd/test_calicoctl_kdd.py::test_seed_commands_in_the_kubernetes_datastore",
                            ok_doc="podCIDRs",
                            note="status.podCIDRs is the Kubernetes Node's spec.podCIDRs in the Kubernetes datastore "
                                 "(node.go); nothing writes it in etcd mode, as in Calico; no WireGuard keys",
                            sample={"wireguardPublicKey": "x"}),
    }
    status: dict[str, Any] | None = None

    def validate(self) -> None:
        super().validate()
        bgp = self.spec.bgp
        p = f"{self.ident()}.spec.bgp"
        if bgp is not None:
            if bgp.ipv4_address:
                _cidr(bgp.ipv4_address, f"{p}.ipv4Address")
                if "/" not in bgp.ipv4_address:
                    _ip(bgp.ipv4_address, f"{p}.ipv4Address")
            if bgp.ipv4_ipip_tunnel_addr:
                _ip(bgp.ipv4_ipip_tunnel_addr, f"{p}.ipv4IPIPTunnelAddr")
            if bgp.as_number is not None and not 0 < bgp.as_number < 2**32:
                raise ValidationError(f"{p}.asNumber", f"must be 1..4294967295; got {bgp.as_number}")

    def ipv4(self) -> ipaddress.IPv4Interface | None:
        """The node's BGP IPv4 address with its prefix, or None."""
        if self.spec.bgp and self.spec.bgp.ipv4_address:
            return ipaddress.IPv4Interface(self.spec.bgp.ipv4_address)
        return None


# ---------------------------------------------------------------------------
# WorkloadEndpoint


@dataclass
class IPNAT:
    internal_ip: str = jfield("internalIP", "")
    external_ip: str = jfield("externalIP", "")


@dataclass
class EndpointPort:
    name: str = ""
    protocol: str = ""
    port: int = 0
    host_port: int = 0
    host_ip: str | None = jfield("hostIP")


@dataclass
class WorkloadEndpointSpec:
    orchestrator: str = ""
    workload: str = ""
    node: str = ""
    container_id: str = jfield("containerID", "")
    pod: str = ""
    endpoint: str = ""
    service_account_name: str = ""
    ip_networks: list[str] = jfield("ipNetworks", default_factory=list)
    ip_nats: list[IPNAT] = jfield("ipNATs", default_factory=list)
    ipv4_gateway: str = jfield("ipv4Gateway", "")
    ipv6_gateway: str = jfield("ipv6Gateway", "")
    profiles: list[str] = field(default_factory=list)
    interface_name: str = ""
    mac: str = ""
    ports: list[EndpointPort] = field(default_factory=list)
    allow_spoofed_source_prefixes: list[str] = field(default_factory=list)


@dataclass
class WorkloadEndpoint(Resource):
    """A pod's network interface as Calico sees it (written by the CNI plugin)."""

    KIND = "WorkloadEndpoint"
    PLURAL = "workloadendpoints"
    NAMESPACED = True
    ALIASES = ("workloadendpoint", "workloadendpoints", "wep", "weps")
    Spec = WorkloadEndpointSpec
    spec: WorkloadEndpointSpec = field(default_factory=WorkloadEndpointSpec)
    INVENTORY = {
        "spec.orchestrator": works(_T_CNI + "test_add_check_del_every_version"),
        "spec.workload": missing("the workload ID of non-Kubernetes orchestrators; calicolab's CNI writes pod"),
        "spec.node": works(_T_CNI + "test_add_check_del_every_version",
                           "tests/netns/test_agent_twonode.py::test_two_node_agent_end_to_end"),
        "spec.containerID": works(_T_CNI + "test_add_check_del_every_version",
                                  _T_CNI + "test_del_of_other_container_keeps_wep_and_allocation"),
        "spec.pod": works(_T_CNI + "test_add_check_del_every_version"),
        "spec.endpoint": works(_T_CNI + "test_add_check_del_every_version"),
        "spec.serviceAccountName": works(_T_CNI + "test_pod_labels_ports_and_annotations_from_the_kubernetes_store"),
        "spec.ipNetworks": works(_T_CNI + "test_add_check_del_every_version",
                                 "tests/unit/test_felix_calc.py::test_routes_tunnel_and_mtu"),
        "spec.ipNATs": missing("floating IPs are not implemented (cali-fip-dnat and cali-fip-snat stay empty)"),
        "spec.ipv4Gateway": missing("informational in Calico's WEPs for other orchestrators; calicolab's pods "
                                    "always route via 169.254.1.1"),
        "spec.ipv6Gateway": missing(_NO_V6),
        "spec.profiles": works(_T_CNI + "test_pod_labels_ports_and_annotations_from_the_kubernetes_store",
                               "tests/unit/test_felix_calc.py::test_endpoint_chains_with_profiles_and_missing_profile_drops"),
        "spec.interfaceName": works(_T_CNI + "test_add_check_del_every_version",
                                    "tests/unit/test_felix_calc.py::test_endpoint_chains_with_profiles_and_missing_profile_drops"),
        "spec.mac": works(_T_CNI + "test_add_check_del_every_version"),
        "spec.ports.name": works(_T_CNI + "test_pod_labels_ports_and_annotations_from_the_kubernetes_store",
                                 "tests/unit/test_felix_policy.py::test_policy_order_groups_and_ipset_members"),
        "spec.ports.protocol": works(_T_CNI + "test_pod_labels_ports_and_annotations_from_the_kubernetes_store"),
        "spec.ports.port": works(_T_CNI + "test_pod_labels_ports_and_annotations_from_the_kubernetes_store"),
        "spec.ports.hostPort": missing("host ports come from the portmap plugin, not from the WorkloadEndpoint"),
        "spec.ports.hostIP": missing("host ports come from the portmap plugin, not from the WorkloadEndpoint"),
        "spec.allowSpoofedSourcePrefixes": works(
            "tests/unit/test_felix_calc.py::test_raw_prerouting_rpf_and_unreferenced_failsafes"),
    }

    def validate(self) -> None:
        super().validate()
        p = f"{self.ident()}.spec"
        if not self.spec.node:
            raise ValidationError(f"{p}.node", "is required")
        if self.spec.interface_name and not _IFACE_RE.match(self.spec.interface_name):
            raise ValidationError(f"{p}.interfaceName", f"{self.spec.interface_name!r} is not a valid interface name")
        for i, net in enumerate(self.spec.ip_networks):
            _cidr(net, f"{p}.ipNetworks[{i}]")


# ---------------------------------------------------------------------------
# BGP


@dataclass
class CIDRItem:
    cidr: str = ""


@dataclass
class BGPConfigurationSpec:
    log_severity_screen: str | None = None
    node_to_node_mesh_enabled: bool | None = None
    as_number: int | None = jfield("asNumber")
    service_cluster_ips: list[CIDRItem] = jfield("serviceClusterIPs", default_factory=list)
    service_external_ips: list[CIDRItem] = jfield("serviceExternalIPs", default_factory=list)
    service_load_balancer_ips: list[CIDRItem] = jfield("serviceLoadBalancerIPs", default_factory=list)
    listen_port: int | None = None
    node_mesh_password: Any = None
    node_mesh_max_restart_time: str | None = None
    bind_mode: str | None = None
    ignored_interfaces: list[str] = field(default_factory=list)
    communities: Any = None
    prefix_advertisements: Any = None
    local_workload_peering_ipv4: str | None = jfield("localWorkloadPeeringIPV4")


@dataclass
class BGPConfiguration(Resource):
    """Cluster-wide (``default``) or per-node (``node.<name>``) BGP settings."""

    KIND = "BGPConfiguration"
    PLURAL = "bgpconfigurations"
    ALIASES = ("bgpconfiguration", "bgpconfigurations", "bgpconfig", "bgpconfigs")
    Spec = BGPConfigurationSpec
    spec: BGPConfigurationSpec = field(default_factory=BGPConfigurationSpec)
    INVENTORY = {
        "spec.logSeverityScreen": missing("the BGP speaker logs at calico-node's log level", ok=("Info",),
                                          sample="Debug"),
        "spec.nodeToNodeMeshEnabled": works(_T_CONFD + "test_as_numbers_and_mesh_off_with_global_peer",
                                            "tests/lab/test_lab_rr.py::test_route_reflector_sessions_routes_and_pods"),
        "spec.asNumber": works(_T_CONFD + "test_as_numbers_and_mesh_off_with_global_peer"),
        "spec.serviceClusterIPs": missing(_NO_SVC_ADV),
        "spec.serviceExternalIPs": missing(_NO_SVC_ADV),
        "spec.serviceLoadBalancerIPs": missing(_NO_SVC_ADV),
        "spec.listenPort": works(_T_CONFD + "test_listen_port_and_bind_mode"),
        "spec.nodeMeshPassword": missing(_NO_MD5, sample=_SECRET),
        "spec.nodeMeshMaxRestartTime": works(_T_EFFECTS + "test_graceful_restart_times_reach_the_peers"),
        "spec.bindMode": works(_T_CONFD + "test_listen_port_and_bind_mode"),
        "spec.ignoredInterfaces": missing("the speaker exports no interface routes (BIRD's protocol direct), "
                                          "so there is nothing to ignore"),
        "spec.communities": missing(_NO_COMMUNITIES, sample=[{"name": "c1", "value": "64512:100"}]),
        "spec.prefixAdvertisements": missing(_NO_COMMUNITIES,
                                             sample=[{"cidr": "192.168.0.0/16", "communities": ["c1"]}]),
        "spec.localWorkloadPeeringIPV4": missing("peering with workloads is not implemented", since="v3.30"),
    }

    def validate(self) -> None:
        super().validate()
        p = f"{self.ident()}.spec"
        if self.spec.as_number is not None and not 0 < self.spec.as_number < 2**32:
            raise ValidationError(f"{p}.asNumber", f"must be 1..4294967295; got {self.spec.as_number}")
        if self.spec.listen_port is not None and not 0 < self.spec.listen_port < 65536:
            raise ValidationError(f"{p}.listenPort", f"must be 1..65535; got {self.spec.listen_port}")
        if self.spec.log_severity_screen is not None:
            _oneof(self.spec.log_severity_screen, ("Debug", "Info", "Warning", "Error", "Fatal", "None"),
                   f"{p}.logSeverityScreen")


@dataclass
class BGPPeerSpec:
    node: str = ""
    peer_ip: str = jfield("peerIP", "")
    as_number: int | None = jfield("asNumber")
    node_selector: str = ""
    peer_selector: str = ""
    keep_original_next_hop: bool = False
    next_hop_mode: str | None = None
    password: Any = None
    source_address: str | None = None
    max_restart_time: str | None = None
    keepalive_time: str | None = None
    num_allowed_local_as_numbers: int | None = jfield("numAllowedLocalASNumbers")
    ttl_security: int | None = None
    filters: list[str] = field(default_factory=list)
    reachable_by: str | None = None
    reverse_peering: str | None = None


@dataclass
class BGPPeer(Resource):
    """A BGP peering: global (no node), for one node, or by selectors."""

    KIND = "BGPPeer"
    PLURAL = "bgppeers"
    ALIASES = ("bgppeer", "bgppeers", "bgpp", "bgpps")
    Spec = BGPPeerSpec
    spec: BGPPeerSpec = field(default_factory=BGPPeerSpec)
    INVENTORY = {
        "spec.node": works(_T_CONFD + "test_reverse_peering_manual_and_node_specific_selector_peer"),
        "spec.peerIP": works(_T_CONFD + "test_as_numbers_and_mesh_off_with_global_peer",
                             "tests/interop/test_bgp_bird.py::test_bird_as_tor_learns_blocks_and_nodes_install_its_route"),
        "spec.asNumber": works(_T_CONFD + "test_as_numbers_and_mesh_off_with_global_peer"),
        "spec.nodeSelector": works(_T_CONFD + "test_selector_peering_reaches_the_reflector_side_too"),
        "spec.peerSelector": works(_T_CONFD + "test_selector_peering_reaches_the_reflector_side_too",
                                   "tests/lab/test_lab_rr.py::test_route_reflector_sessions_routes_and_pods"),
        "spec.keepOriginalNextHop": missing("the speaker always sends itself as next hop to eBGP peers"),
        "spec.nextHopMode": missing("the speaker always sends itself as next hop to eBGP peers", since="v3.31"),
        "spec.password": missing(_NO_MD5, sample=_SECRET),
        "spec.sourceAddress": missing("sessions always come from the node address", ok=("UseNodeIP",)),
        "spec.maxRestartTime": works(_T_EFFECTS + "test_graceful_restart_times_reach_the_peers"),
        "spec.keepaliveTime": works(_T_CONFD + "test_as_numbers_and_mesh_off_with_global_peer", since="v3.32"),
        "spec.numAllowedLocalASNumbers": missing("AS paths holding the local AS are always rejected"),
        "spec.ttlSecurity": missing("sessions use no GTSM (TTL security)"),
        "spec.filters": missing("BGPFilter is not implemented"),
        "spec.reachableBy": missing("no route to the peer is added"),
        "spec.reversePeering": works(_T_CONFD + "test_reverse_peering_manual_and_node_specific_selector_peer",
                                     since="v3.31"),
    }

    def peer_address(self) -> tuple[str, int | None]:
        """(ip, port) from ``peerIP`` (``ip``, ``ip:port`` or ``[v6]:port``)."""
        value = self.spec.peer_ip
        if value.startswith("["):
            host, _, port = value[1:].partition("]:")
            return host, int(port) if port else None
        if value.count(":") == 1:
            host, port = value.split(":")
            return host, int(port)
        return value, None

    def validate(self) -> None:
        super().validate()
        p = f"{self.ident()}.spec"
        if self.spec.peer_ip:
            try:
                host, port = self.peer_address()
            except ValueError:
                raise ValidationError(f"{p}.peerIP", f"{self.spec.peer_ip!r} is not IP or IP:port") from None
            _ip(host, f"{p}.peerIP")
            if port is not None and not 0 < port < 65536:
                raise ValidationError(f"{p}.peerIP", f"port must be 1..65535; got {port}")
            if self.spec.as_number is None:
                raise ValidationError(f"{p}.asNumber", "is required when peerIP is set")
        elif not self.spec.peer_selector:
            raise ValidationError(f"{p}.peerIP", "either peerIP or peerSelector is required")
        if self.spec.node and self.spec.node_selector:
            raise ValidationError(f"{p}.nodeSelector", "cannot be set together with node")
        if self.spec.peer_selector and self.spec.peer_ip:
            raise ValidationError(f"{p}.peerIP", "must be empty when peerSelector is specified")
        if self.spec.peer_selector and self.spec.as_number is not None:
            raise ValidationError(f"{p}.asNumber", "must be empty when peerSelector is specified")
        if self.spec.reverse_peering not in (None, "", "Auto", "Manual"):
            raise ValidationError(f"{p}.reversePeering",
                                  f"must be Auto or Manual; got {self.spec.reverse_peering!r}")
        if self.spec.as_number is not None and not 0 < self.spec.as_number < 2**32:
            raise ValidationError(f"{p}.asNumber", f"must be 1..4294967295; got {self.spec.as_number}")
        _check_selector(self.spec.node_selector, f"{p}.nodeSelector")
        _check_selector(self.spec.peer_selector, f"{p}.peerSelector")


# ---------------------------------------------------------------------------
# Felix, cluster information, profiles


@dataclass
class ProtoPort:
    protocol: str = ""
    port: int = 0
    net: str | None = None


@dataclass
class HealthTimeoutOverride:
    name: str = ""
    timeout: str = ""


@dataclass
class RouteTableRange:
    min: int = 0
    max: int = 0


@dataclass
class FelixConfigurationSpec:
    """Every field of Calico v3.28.1's FelixConfigurationSpec (``felixconfig.go``), in its
    order, then fields of later releases; what calicolab does with each: ``INVENTORY``."""

    use_internal_dataplane_driver: bool | None = None
    dataplane_driver: str | None = None
    dataplane_watchdog_timeout: str | None = None
    ipv6_support: bool | None = None
    route_refresh_interval: str | None = None
    interface_refresh_interval: str | None = None
    iptables_refresh_interval: str | None = None
    iptables_post_write_check_interval: str | None = None
    iptables_lock_file_path: str | None = None
    iptables_lock_timeout: str | None = None
    iptables_lock_probe_interval: str | None = None
    feature_detect_override: str | None = None
    feature_gates: str | None = None
    ipsets_refresh_interval: str | None = None
    max_ipset_size: int | None = None
    iptables_backend: str | None = None
    xdp_refresh_interval: str | None = None
    netlink_timeout: str | None = None
    metadata_addr: str | None = None
    metadata_port: int | None = None
    openstack_region: str | None = None
    interface_prefix: str | None = None
    interface_exclude: str | None = None
    chain_insert_mode: str | None = None
    default_endpoint_to_host_action: str | None = None
    iptables_filter_allow_action: str | None = None
    iptables_mangle_allow_action: str | None = None
    iptables_filter_deny_action: str | None = None
    log_prefix: str | None = None
    log_file_path: str | None = None
    log_severity_file: str | None = None
    log_severity_screen: str | None = None
    log_severity_sys: str | None = None
    log_debug_filename_regex: str | None = None
    ipip_enabled: bool | None = None
    ipip_mtu: int | None = jfield("ipipMTU")
    vxlan_enabled: bool | None = None
    vxlan_mtu: int | None = jfield("vxlanMTU")
    vxlan_mtu_v6: int | None = jfield("vxlanMTUV6")
    vxlan_port: int | None = None
    vxlan_vni: int | None = jfield("vxlanVNI")
    allow_vxlan_packets_from_workloads: bool | None = jfield("allowVXLANPacketsFromWorkloads")
    allow_ipip_packets_from_workloads: bool | None = jfield("allowIPIPPacketsFromWorkloads")
    reporting_interval: str | None = None
    reporting_ttl: str | None = jfield("reportingTTL")
    endpoint_reporting_enabled: bool | None = None
    endpoint_reporting_delay: str | None = None
    endpoint_status_path_prefix: str | None = None
    iptables_mark_mask: int | None = None
    disable_conntrack_invalid_check: bool | None = None
    health_enabled: bool | None = None
    health_host: str | None = None
    health_port: int | None = None
    health_timeout_overrides: list[HealthTimeoutOverride] | None = None
    prometheus_metrics_enabled: bool | None = None
    prometheus_metrics_host: str | None = None
    prometheus_metrics_port: int | None = None
    prometheus_go_metrics_enabled: bool | None = None
    prometheus_process_metrics_enabled: bool | None = None
    prometheus_wire_guard_metrics_enabled: bool | None = None
    failsafe_inbound_host_ports: list[ProtoPort] | None = None
    failsafe_outbound_host_ports: list[ProtoPort] | None = None
    kube_node_port_ranges: list[str] | None = None
    policy_sync_path_prefix: str | None = None
    usage_reporting_enabled: bool | None = None
    usage_reporting_initial_delay: str | None = None
    usage_reporting_interval: str | None = None
    nat_port_range: str | None = None
    nat_outgoing_address: str | None = None
    device_route_source_address: str | None = None
    device_route_source_address_i_pv6: str | None = None
    device_route_protocol: int | None = None
    remove_external_routes: bool | None = None
    external_nodes_list: list[str] | None = None
    debug_memory_profile_path: str | None = None
    debug_disable_log_dropping: bool | None = None
    debug_simulate_calc_graph_hang_after: str | None = None
    debug_simulate_dataplane_hang_after: str | None = None
    debug_simulate_dataplane_apply_delay: str | None = None
    debug_host: str | None = None
    debug_port: int | None = None
    iptables_nat_outgoing_interface_filter: str | None = jfield("iptablesNATOutgoingInterfaceFilter")
    sidecar_acceleration_enabled: bool | None = None
    xdp_enabled: bool | None = None
    generic_xdp_enabled: bool | None = jfield("genericXDPEnabled")
    bpf_enabled: bool | None = None
    bpf_disable_unprivileged: bool | None = None
    bpf_log_level: str | None = None
    bpf_log_filters: dict[str, str] | None = None
    bpf_ctlb_log_filter: str | None = jfield("bpfCTLBLogFilter")
    bpf_data_iface_pattern: str | None = None
    bpf_l3_iface_pattern: str | None = None
    bpf_connect_time_load_balancing_enabled: bool | None = None
    bpf_connect_time_load_balancing: str | None = None
    bpf_host_networked_nat_without_ctlb: str | None = jfield("bpfHostNetworkedNATWithoutCTLB")
    bpf_external_service_mode: str | None = None
    bpf_dsr_optout_cidrs: list[str] | None = jfield("bpfDSROptoutCIDRs")
    bpf_ext_to_service_connmark: int | None = None
    bpf_kube_proxy_iptables_cleanup_enabled: bool | None = None
    bpf_kube_proxy_min_sync_period: str | None = None
    bpf_kube_proxy_endpoint_slices_enabled: bool | None = None
    bpf_psnat_ports: str | None = jfield("bpfPSNATPorts")
    bpf_map_size_nat_frontend: int | None = jfield("bpfMapSizeNATFrontend")
    bpf_map_size_nat_backend: int | None = jfield("bpfMapSizeNATBackend")
    bpf_map_size_nat_affinity: int | None = jfield("bpfMapSizeNATAffinity")
    bpf_map_size_route: int | None = None
    bpf_map_size_conntrack: int | None = None
    bpf_map_size_ip_sets: int | None = jfield("bpfMapSizeIPSets")
    bpf_map_size_if_state: int | None = None
    bpf_host_conntrack_bypass: bool | None = None
    bpf_enforce_rpf: str | None = jfield("bpfEnforceRPF")
    bpf_policy_debug_enabled: bool | None = None
    bpf_force_track_packets_from_ifaces: list[str] | None = None
    bpf_disable_gro_for_ifaces: str | None = jfield("bpfDisableGROForIfaces")
    bpf_exclude_cidrs_from_nat: list[str] | None = jfield("bpfExcludeCIDRsFromNAT")
    route_source: str | None = None
    route_table_ranges: list[RouteTableRange] | None = None
    route_table_range: RouteTableRange | None = None
    route_sync_disabled: bool | None = None
    wireguard_enabled: bool | None = None
    wireguard_enabled_v6: bool | None = None
    wireguard_listening_port: int | None = None
    wireguard_listening_port_v6: int | None = None
    wireguard_routing_rule_priority: int | None = None
    wireguard_interface_name: str | None = None
    wireguard_interface_name_v6: str | None = None
    wireguard_mtu: int | None = jfield("wireguardMTU")
    wireguard_mtu_v6: int | None = jfield("wireguardMTUV6")
    wireguard_host_encryption_enabled: bool | None = None
    wireguard_keep_alive: str | None = None
    aws_src_dst_check: str | None = None
    service_loop_prevention: str | None = None
    workload_source_spoofing: str | None = None
    mtu_iface_pattern: str | None = None
    floating_i_ps: str | None = None
    windows_manage_firewall_rules: str | None = None
    nftables_mode: str | None = None
    ip_forwarding: str | None = None
    program_cluster_routes: str | None = None


@dataclass
class FelixConfiguration(Resource):
    """Felix settings: cluster-wide (``default``) or per node (``node.<name>``)."""

    KIND = "FelixConfiguration"
    PLURAL = "felixconfigurations"
    ALIASES = ("felixconfiguration", "felixconfigurations", "felixconfig", "felixconfigs")
    Spec = FelixConfigurationSpec
    spec: FelixConfigurationSpec = field(default_factory=FelixConfigurationSpec)
    INVENTORY = {
        "spec.useInternalDataplaneDriver": missing("Felix always programs the dataplane itself", ok=(True,)),
        "spec.dataplaneDriver": missing("Felix always programs the dataplane itself"),
        "spec.dataplaneWatchdogTimeout": missing(_FIXED_HEALTH),
        "spec.ipv6Support": missing(_NO_V6, ok=(False,)),
        "spec.routeRefreshInterval": works(_T_EFFECTS + "test_felix_configuration_fields_reach_the_dataplane"),
        "spec.interfaceRefreshInterval": missing("interfaces are looked at on every apply"),
        "spec.iptablesRefreshInterval": works(_T_EFFECTS + "test_felix_configuration_fields_reach_the_dataplane"),
        "spec.iptablesPostWriteCheckInterval": missing(_FIXED_IPT),
        "spec.iptablesLockFilePath": missing(_FIXED_IPT),
        "spec.iptablesLockTimeout": missing(_FIXED_IPT),
        "spec.iptablesLockProbeInterval": missing(_FIXED_IPT),
        "spec.featureDetectOverride": missing("no feature detection to override"),
        "spec.featureGates": missing("no feature gates"),
        "spec.ipsetsRefreshInterval": works(_T_EFFECTS + "test_felix_configuration_fields_reach_the_dataplane"),
        "spec.maxIpsetSize": missing("ipsets are created with the kernel's default size"),
        "spec.iptablesBackend": missing("the machine's iptables-restore is used", ok=("Auto",)),
        "spec.xdpRefreshInterval": missing(_NO_XDP),
        "spec.netlinkTimeout": missing("netlink requests use the library's timeout"),
        "spec.metadataAddr": missing(_OPENSTACK),
        "spec.metadataPort": missing(_OPENSTACK),
        "spec.openstackRegion": missing(_OPENSTACK),
        "spec.interfacePrefix": works(_T_EFFECTS + "test_felix_configuration_fields_reach_the_dataplane"),
        "spec.interfaceExclude": missing("every interface without the workload prefix is left alone"),
        "spec.chainInsertMode": missing("Calico's chains are always inserted at the top", ok=("Insert",)),
        "spec.defaultEndpointToHostAction": works(_T_EFFECTS + "test_felix_configuration_fields_reach_the_dataplane"),
        "spec.iptablesFilterAllowAction": missing(_FIXED_ACTIONS, ok=("Accept", "ACCEPT")),
        "spec.iptablesMangleAllowAction": missing(_FIXED_ACTIONS, ok=("Accept", "ACCEPT")),
        "spec.iptablesFilterDenyAction": missing(_FIXED_ACTIONS, ok=("Drop", "DROP")),
        "spec.logPrefix": missing("no policy Log rules are rendered", ok=("calico-packet",)),
        "spec.logFilePath": missing(_FIXED_LOG),
        "spec.logSeverityFile": missing(_FIXED_LOG),
        "spec.logSeverityScreen": missing(_FIXED_LOG, ok=("Info",)),
        "spec.logSeveritySys": missing(_FIXED_LOG),
        "spec.logDebugFilenameRegex": missing(_FIXED_LOG),
        "spec.ipipEnabled": works(_T_EFFECTS + "test_felix_configuration_fields_reach_the_dataplane",
                                  "tests/unit/test_felix_calc.py::test_ipip_derivation"),
        "spec.ipipMTU": works(_T_EFFECTS + "test_felix_configuration_fields_reach_the_dataplane",
                              "tests/unit/test_felix_calc.py::test_remote_and_foreign_endpoints_are_not_local"),
        "spec.vxlanEnabled": works(_T_ENCAP + "test_ipip_and_unencapsulated_pools_are_left_to_bgp",
                                   _T_ENCAP + "test_felix_configuration_vxlan_fields_take_effect"),
        "spec.vxlanMTU": works(_T_ENCAP + "test_felix_configuration_vxlan_fields_take_effect",
                               _T_ENCAP + "test_pod_mtu_is_the_smallest_enabled_encapsulation"),
        "spec.vxlanMTUV6": missing(_NO_VXLAN),
        "spec.vxlanPort": works(_T_ENCAP + "test_felix_configuration_vxlan_fields_take_effect"),
        "spec.vxlanVNI": works(_T_ENCAP + "test_felix_configuration_vxlan_fields_take_effect"),
        "spec.allowVXLANPacketsFromWorkloads": missing("workloads' VXLAN packets are always dropped", ok=(False,)),
        "spec.allowIPIPPacketsFromWorkloads": missing("workloads' IPIP packets are always dropped", ok=(False,)),
        "spec.reportingInterval": missing("Felix writes no status reports", ok=_zero_duration, ok_doc="0s"),
        "spec.reportingTTL": missing("Felix writes no status reports"),
        "spec.endpointReportingEnabled": missing(_NO_REPORTS, ok=(False,)),
        "spec.endpointReportingDelay": missing(_NO_REPORTS),
        "spec.endpointStatusPathPrefix": missing(_NO_REPORTS),
        "spec.iptablesMarkMask": missing("the mark bits are fixed (0xffff0000)", ok=(0xFFFF0000,)),
        "spec.disableConntrackInvalidCheck": missing("INVALID packets are always dropped", ok=(False,)),
        "spec.healthEnabled": missing(_FIXED_HEALTH, ok=(True,)),
        "spec.healthHost": missing(_FIXED_HEALTH, ok=("127.0.0.1", "localhost")),
        "spec.healthPort": missing(_FIXED_HEALTH, ok=(9099,)),
        "spec.healthTimeoutOverrides": missing(_FIXED_HEALTH),
        "spec.prometheusMetricsEnabled": missing(_NO_METRICS, ok=(False,)),
        "spec.prometheusMetricsHost": missing(_NO_METRICS),
        "spec.prometheusMetricsPort": missing(_NO_METRICS),
        "spec.prometheusGoMetricsEnabled": missing(_NO_METRICS),
        "spec.prometheusProcessMetricsEnabled": missing(_NO_METRICS),
        "spec.prometheusWireGuardMetricsEnabled": missing(_NO_METRICS),
        "spec.failsafeInboundHostPorts": missing(_NO_HEP),
        "spec.failsafeOutboundHostPorts": missing(_NO_HEP),
        "spec.kubeNodePortRanges": missing("kube-proxy IPVS and eBPF node ports are not implemented"),
        "spec.policySyncPathPrefix": works(
            "tests/unit/test_csi_driver.py::test_felix_settings_policy_sync_path_prefix",
            "tests/lab/test_kdd_commands.py::test_a_pod_with_a_csi_tigera_io_volume_gets_felixs_policy_sync_socket",
            note="Sync streams carry the workload's endpoint updates and removes and InSync only: no "
                 "policy, profile, IP set, namespace or service account messages (docs/csi.md)"),
        "spec.usageReportingEnabled": missing("calicolab reports no usage", ok=(False,)),
        "spec.usageReportingInitialDelay": missing("calicolab reports no usage"),
        "spec.usageReportingInterval": missing("calicolab reports no usage"),
        "spec.natPortRange": missing("MASQUERADE uses the kernel's port range"),
        "spec.natOutgoingAddress": missing("outgoing NAT always MASQUERADEs"),
        "spec.deviceRouteSourceAddress": missing("workload routes carry no source hint"),
        "spec.deviceRouteSourceAddressIPv6": missing(_NO_V6),
        "spec.deviceRouteProtocol": missing("workload routes always use protocol boot (3)", ok=(3,)),
        "spec.removeExternalRoutes": missing("other routes on workload interfaces are always removed", ok=(True,)),
        "spec.externalNodesList": missing("IPIP is accepted from Calico nodes only"),
        "spec.debugMemoryProfilePath": missing(_DEBUG),
        "spec.debugDisableLogDropping": missing(_DEBUG),
        "spec.debugSimulateCalcGraphHangAfter": missing(_DEBUG),
        "spec.debugSimulateDataplaneHangAfter": missing(_DEBUG),
        "spec.debugSimulateDataplaneApplyDelay": missing(_DEBUG),
        "spec.debugHost": missing(_DEBUG),
        "spec.debugPort": missing(_DEBUG),
        "spec.iptablesNATOutgoingInterfaceFilter": missing("outgoing NAT matches every interface"),
        "spec.sidecarAccelerationEnabled": missing("no sidecar acceleration", ok=(False,)),
        "spec.xdpEnabled": missing(_NO_XDP, ok=(True,)),
        "spec.genericXDPEnabled": missing(_NO_XDP, ok=(False,)),
        "spec.bpfEnabled": missing(_NO_BPF, ok=(False,)),
        **dict.fromkeys((
            "spec.bpfDisableUnprivileged", "spec.bpfLogLevel", "spec.bpfLogFilters", "spec.bpfCTLBLogFilter",
            "spec.bpfDataIfacePattern", "spec.bpfL3IfacePattern", "spec.bpfConnectTimeLoadBalancingEnabled",
            "spec.bpfConnectTimeLoadBalancing", "spec.bpfHostNetworkedNATWithoutCTLB", "spec.bpfExternalServiceMode",
            "spec.bpfDSROptoutCIDRs", "spec.bpfExtToServiceConnmark", "spec.bpfKubeProxyIptablesCleanupEnabled",
            "spec.bpfKubeProxyMinSyncPeriod", "spec.bpfKubeProxyEndpointSlicesEnabled", "spec.bpfPSNATPorts",
            "spec.bpfMapSizeNATFrontend", "spec.bpfMapSizeNATBackend", "spec.bpfMapSizeNATAffinity",
            "spec.bpfMapSizeRoute", "spec.bpfMapSizeConntrack", "spec.bpfMapSizeIPSets", "spec.bpfMapSizeIfState",
            "spec.bpfHostConntrackBypass", "spec.bpfEnforceRPF", "spec.bpfPolicyDebugEnabled",
            "spec.bpfForceTrackPacketsFromIfaces", "spec.bpfDisableGROForIfaces", "spec.bpfExcludeCIDRsFromNAT",
        ), missing(_NO_BPF)),
        "spec.routeSource": missing("Felix routes workload endpoints only", ok=("CalicoIPAM",)),
        "spec.routeTableRanges": missing("routes go to the main table only"),
        "spec.routeTableRange": missing("routes go to the main table only"),
        "spec.routeSyncDisabled": missing("routes are always synchronised", ok=(False,)),
        "spec.wireguardEnabled": missing(_NO_WIREGUARD, ok=(False,)),
        "spec.wireguardEnabledV6": missing(_NO_WIREGUARD, ok=(False,)),
        **dict.fromkeys((
            "spec.wireguardListeningPort", "spec.wireguardListeningPortV6", "spec.wireguardRoutingRulePriority",
            "spec.wireguardInterfaceName", "spec.wireguardInterfaceNameV6", "spec.wireguardMTU",
            "spec.wireguardMTUV6", "spec.wireguardKeepAlive",
        ), missing(_NO_WIREGUARD)),
        "spec.wireguardHostEncryptionEnabled": missing(_NO_WIREGUARD, ok=(False,)),
        "spec.awsSrcDstCheck": missing("no cloud integration", ok=("DoNothing",)),
        "spec.serviceLoopPrevention": missing("no service loop prevention rules are rendered"),
        "spec.workloadSourceSpoofing": missing("workloads can never spoof source addresses", ok=("Disabled",)),
        "spec.mtuIfacePattern": missing("the host MTU comes from Calico's default pattern", ok=(_MTU_PATTERN,)),
        "spec.floatingIPs": missing("floating IPs are not implemented", ok=("Disabled",)),
        "spec.windowsManageFirewallRules": missing("Windows only", ok=("Disabled",)),
        "spec.nftablesMode": missing("Felix programs iptables", ok=("Disabled",), since="v3.29"),
        "spec.ipForwarding": missing("Felix always enables IPv4 forwarding", ok=("Enabled",), since="v3.29"),
        "spec.programClusterRoutes": missing("the BGP speaker programs the block routes (as BIRD)",
                                             ok=("Disabled",), since="v3.31"),
    }
    #: the fields Calico types as durations (``metav1.Duration``: 90s, 1m30s, 500ms)
    DURATIONS: ClassVar[tuple[str, ...]] = (
        "dataplaneWatchdogTimeout", "routeRefreshInterval", "interfaceRefreshInterval",
        "iptablesRefreshInterval", "iptablesPostWriteCheckInterval", "iptablesLockTimeout",
        "iptablesLockProbeInterval", "ipsetsRefreshInterval", "xdpRefreshInterval", "netlinkTimeout",
        "reportingInterval", "reportingTTL", "endpointReportingDelay", "usageReportingInitialDelay",
        "usageReportingInterval", "debugSimulateCalcGraphHangAfter", "debugSimulateDataplaneHangAfter",
        "debugSimulateDataplaneApplyDelay", "bpfKubeProxyMinSyncPeriod", "wireguardKeepAlive")

    def validate(self) -> None:
        super().validate()
        p = f"{self.ident()}.spec"
        if self.spec.ipip_mtu is not None and not 0 <= self.spec.ipip_mtu <= 65535:
            raise ValidationError(f"{p}.ipipMTU", f"must be 0..65535; got {self.spec.ipip_mtu}")
        doc = codec.to_json(self.spec)
        for jname in self.DURATIONS:
            if doc.get(jname) is not None:
                try:
                    parse_duration(doc[jname])
                except ValueError as exc:
                    raise ValidationError(f"{p}.{jname}", str(exc)) from None


@dataclass
class ClusterInformationSpec:
    cluster_guid: str | None = jfield("clusterGUID")
    cluster_type: str | None = None
    calico_version: str | None = None
    datastore_ready: bool | None = None
    variant: str | None = None


@dataclass
class ClusterInformation(Resource):
    """The singleton ``default``: cluster GUID, version, and datastoreReady."""

    KIND = "ClusterInformation"
    PLURAL = "clusterinformations"
    ALIASES = ("clusterinformation", "clusterinformations", "clusterinfo", "clusterinfos")
    Spec = ClusterInformationSpec
    spec: ClusterInformationSpec = field(default_factory=ClusterInformationSpec)
    INVENTORY = {
        "spec.clusterGUID": works(_T_STARTUP + "test_startup_registers_node_and_allocates_first_ip_of_first_block"),
        "spec.clusterType": works(_T_EFFECTS_DS + "test_cluster_information_written_at_start_up"),
        "spec.calicoVersion": works(_T_EFFECTS_DS + "test_cluster_information_written_at_start_up"),
        "spec.datastoreReady": works(_T_CNI + "test_datastore_not_ready_refuses_add_and_status"),
        "spec.variant": missing("calicolab does not write or read it"),
    }


_LABEL_NAME_RE = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                            r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def _check_labels(labels: dict[str, str] | None, path: str) -> None:
    """Kubernetes label rules: qualified names (prefix <= 253, name <= 63) and values <= 63."""
    for k, v in (labels or {}).items():
        name = k.rsplit("/", 1)[-1]
        if not _LABEL_NAME_RE.match(k) or len(name) > 63 or len(k) - len(name) > 254:
            raise ValidationError(f"{path}.{k}", "is not a valid label name (a qualified name: [prefix/]name, "
                                                 "name <= 63 alphanumerics, '-', '_' or '.')")
        if not isinstance(v, str) or not _LABEL_VALUE_RE.match(v) or len(v) > 63:
            raise ValidationError(f"{path}.{k}", f"{v!r} is not a valid label value (<= 63 alphanumerics, "
                                                 "'-', '_' or '.', starting and ending alphanumeric)")


_T_POLICY = "tests/unit/test_felix_policy.py::"


def _rule_inventory(prefix: str) -> dict[str, Support]:
    """Entries for every field of a rule list (``spec.ingress`` / ``spec.egress``)."""
    from datastore.inventory import field_paths

    tests = {
        "": (_T_POLICY + "test_rule_actions",),
        "action": (_T_POLICY + "test_rule_actions",),
        "ipVersion": (_T_POLICY + "test_rule_actions",),
        "protocol": (_T_POLICY + "test_rule_actions",),
        "notProtocol": (_T_POLICY + "test_rule_actions",),
        "icmp": (_T_POLICY + "test_rule_actions",),
        "notICMP": (_T_POLICY + "test_rule_actions",),
        "nets": (_T_POLICY + "test_match_blocks_for_several_cidrs_and_ports",),
        "notNets": (_T_POLICY + "test_match_blocks_for_several_cidrs_and_ports",),
        "ports": (_T_POLICY + "test_rule_actions", _T_POLICY + "test_selectors_become_ipsets"),
        "notPorts": (_T_POLICY + "test_rule_actions",),
        "selector": (_T_POLICY + "test_selectors_become_ipsets",),
        "notSelector": (_T_POLICY + "test_selectors_become_ipsets",),
        "namespaceSelector": (_T_POLICY + "test_profile_labels_are_inherited_for_namespace_selectors",
                              _T_POLICY + "test_k8s_policy_selectors_as_felix_sees_them"),
        "serviceAccounts": (_T_POLICY + "test_calico_policy_names_service_accounts_and_gnp_namespace_selector",),
        "metadata": (_T_POLICY + "test_rule_actions",),
    }
    out: dict[str, Support] = {prefix: works(*tests[""])}
    for path, _ in field_paths(Rule, prefix + "."):
        rest = path[len(prefix) + 1:]
        parts = rest.split(".")
        key = parts[1] if parts[0] in ("source", "destination") and len(parts) > 1 else parts[0]
        if parts[0] in ("source", "destination") and len(parts) == 1:
            key = ""
        if key in ("services", "http") and not (rest.endswith(".services") or rest == "http"):
            continue  # covered by the services/http entry above it
        if key == "services":
            out[path] = missing("Felix here does not watch Kubernetes Services: a rule naming one matches "
                                "nothing (an empty ipset)", sample={"name": "web", "namespace": "default"})
        elif key == "http":
            out[path] = missing("HTTP matches need Calico's application layer policy (Dikastes); Felix "
                                "renders the rule's layer 3/4 part, as Calico does without it",
                                sample={"methods": ["GET"]})
        else:
            out[path] = works(*tests[key])
    return out


@dataclass
class ProfileSpec:
    ingress: list[Rule] = field(default_factory=list)
    egress: list[Rule] = field(default_factory=list)
    labels_to_apply: dict[str, str] = field(default_factory=dict)


@dataclass
class Profile(Resource):
    """A profile (``kns.<namespace>``, ``ksa.<ns>.<sa>``): rules and labels applied to endpoints."""

    KIND = "Profile"
    PLURAL = "profiles"
    ALIASES = ("profile", "profiles", "pro", "pros")
    Spec = ProfileSpec
    spec: ProfileSpec = field(default_factory=ProfileSpec)
    INVENTORY = {
        **_rule_inventory("spec.ingress"), **_rule_inventory("spec.egress"),
        "spec.labelsToApply": works(_T_POLICY + "test_profile_labels_are_inherited_for_namespace_selectors"),
    }

    def validate(self) -> None:
        super().validate()
        p = f"{self.ident()}.spec"
        validate_rules(self.spec.ingress, f"{p}.ingress", egress=False, policy=False)
        validate_rules(self.spec.egress, f"{p}.egress", egress=True, policy=False)
        _check_labels(self.spec.labels_to_apply, f"{p}.labelsToApply")


# ---------------------------------------------------------------------------
# Policies and network sets (calico.md sections 5 and 6)

#: Kubernetes NetworkPolicies converted by Calico are named knp.default.<name>
K8S_POLICY_PREFIX = "knp.default."
_POLICY_LABEL_FMT = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_POLICY_SUBDOMAIN_FMT = _POLICY_LABEL_FMT + r"(\." + _POLICY_LABEL_FMT + r")*"
_NP_NAME_RE = re.compile(rf"^(({_POLICY_LABEL_FMT})|((?:knp|ossg)\.default\.({_POLICY_SUBDOMAIN_FMT})))$")
_GNP_NAME_RE = re.compile(rf"^({_POLICY_LABEL_FMT})$")
PERFORMANCE_HINTS = ("AssumeNeededOnEveryNode",)


def policy_storage_name(name: str) -> str:
    """The name a policy is stored (and known to Felix) under: ``default.<name>`` (the tier),
    except ``knp.``/``ossg.`` names (libcalico-go ``convertPolicyNameForStorage``)."""
    if name.startswith(("knp.", "ossg.")):
        return name
    return "default." + name


def policy_name_from_storage(name: str) -> str:
    """The user-facing name of a stored policy (``convertPolicyNameFromStorage``)."""
    if name.startswith(("knp.", "ossg.")):
        return name
    return name.split(".", 1)[-1]


_REFUSED_HERE = works("tests/unit/test_datastore_policy.py::test_services_and_http_only_where_calico_allows_them",
                      note="refused here by Calico's policy validator")
_NO_HEP_POLICY = ("applies to host endpoints, which calicolab does not implement: the policy has no effect "
                  "on workloads")
_POLICY_INVENTORY: dict[str, Support] = {
    "spec.order": works(_T_POLICY + "test_policy_order_groups_and_ipset_members"),
    **_rule_inventory("spec.ingress"), **_rule_inventory("spec.egress"),
    **{f"{where}{sub}": _REFUSED_HERE for where, subs in (
        ("spec.ingress.destination.services", ("", ".name", ".namespace")),
        ("spec.egress.source.services", ("", ".name", ".namespace")),
        ("spec.egress.http", ("", ".methods", ".paths", ".paths.exact", ".paths.prefix"))) for sub in subs},
    "spec.selector": works(_T_POLICY + "test_policy_order_groups_and_ipset_members",
                           _T_POLICY + "test_k8s_policy_selectors_as_felix_sees_them"),
    "spec.types": works(_T_POLICY + "test_new_policy_then_delete_restores_the_chain",
                        "tests/unit/test_datastore_policy.py::test_default_types_as_calico"),
    "spec.serviceAccountSelector": works(
        _T_POLICY + "test_calico_policy_names_service_accounts_and_gnp_namespace_selector"),
    "spec.namespaceSelector": works(_T_POLICY + "test_calico_policy_names_service_accounts_and_gnp_namespace_selector"),
    "spec.doNotTrack": missing("untracked policy " + _NO_HEP_POLICY, sample=True),
    "spec.preDNAT": missing("pre-DNAT policy " + _NO_HEP_POLICY, sample=True),
    "spec.applyOnForward": works(_T_POLICY + "test_apply_on_forward_does_not_change_workload_chains",
                                 note="workload chains police forwarded traffic whatever its value; it matters "
                                      "to host endpoints, which calicolab does not implement"),
    "spec.performanceHints": missing("a hint for Felix's policy calculation; calicolab computes every policy "
                                     "that selects a local endpoint", sample=["AssumeNeededOnEveryNode"]),
}


@dataclass
class NetworkPolicySpec:
    order: int | float | None = None
    ingress: list[Rule] = field(default_factory=list)
    egress: list[Rule] = field(default_factory=list)
    selector: str = ""
    types: list[str] = field(default_factory=list)
    service_account_selector: str = ""
    performance_hints: list[str] = field(default_factory=list)


@dataclass
class GlobalNetworkPolicySpec:
    order: int | float | None = None
    ingress: list[Rule] = field(default_factory=list)
    egress: list[Rule] = field(default_factory=list)
    selector: str = ""
    types: list[str] = field(default_factory=list)
    do_not_track: bool = False
    pre_dnat: bool = jfield("preDNAT", False)
    apply_on_forward: bool = False
    service_account_selector: str = ""
    namespace_selector: str = ""
    performance_hints: list[str] = field(default_factory=list)


class _PolicyBase(Resource):
    """Shared by NetworkPolicy and GlobalNetworkPolicy: tier-prefixed storage names, types, rules."""

    NAME_RE: ClassVar[re.Pattern[str]] = _GNP_NAME_RE

    @classmethod
    def key_for(cls, name: str, namespace: str | None = None) -> str:
        return super().key_for(policy_storage_name(name), namespace)

    @classmethod
    def ident_from_key(cls, key: str) -> tuple[str | None, str] | None:
        ident = super().ident_from_key(key)
        return None if ident is None else (ident[0], policy_name_from_storage(ident[1]))

    def storage_name(self) -> str:
        """``default.<name>`` (or the knp. name): the name in etcd and Felix's policy ID."""
        return policy_storage_name(self.metadata.name)

    def encode_value(self) -> bytes:
        doc = self.to_dict()
        doc["metadata"].pop("resourceVersion", None)
        doc["metadata"]["name"] = self.storage_name()
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def decode_value(cls, key: str, value: bytes, revision: int) -> Resource:
        obj = super().decode_value(key, value, revision)
        obj.metadata.name = policy_name_from_storage(obj.metadata.name)
        return obj

    def apply_defaults(self) -> None:
        spec = self.spec  # type: ignore[attr-defined]
        if not spec.types:
            spec.types = default_types(spec.ingress, spec.egress)

    def validate(self) -> None:
        name = self.metadata.name
        if not name:
            raise ValidationError(f"{self.KIND}.metadata.name", "is required")
        if self.NAMESPACED and not self.metadata.namespace:
            self.metadata.namespace = "default"
        if len(name) > 253:
            raise ValidationError(f"{self.ident()}.metadata.name", f"name is too long by {len(name) - 253} bytes")
        if not self.NAME_RE.match(name):
            raise ValidationError(f"{self.ident()}.metadata.name",
                                  "name must consist of lower case alphanumeric characters or '-' "
                                  f"(regex: {_POLICY_LABEL_FMT})")
        _check_labels(self.metadata.labels, f"{self.ident()}.metadata.labels")
        spec = self.spec  # type: ignore[attr-defined]
        p = f"{self.ident()}.spec"
        check_selector(spec.selector, f"{p}.selector")
        check_selector(spec.service_account_selector, f"{p}.serviceAccountSelector")
        validate_types(spec.types, f"{p}.types")
        validate_rules(spec.ingress, f"{p}.ingress", egress=False)
        validate_rules(spec.egress, f"{p}.egress", egress=True)
        seen = set()
        for i, hint in enumerate(spec.performance_hints):
            if hint not in PERFORMANCE_HINTS or hint in seen:
                raise ValidationError(f"{p}.performanceHints[{i}]",
                                      f"must be one of {', '.join(PERFORMANCE_HINTS)}, each at most once")
            seen.add(hint)


@dataclass
class NetworkPolicy(_PolicyBase):
    """A namespaced Calico policy (``knp.default.<name>`` when converted from Kubernetes)."""

    KIND = "NetworkPolicy"
    PLURAL = "networkpolicies"
    NAMESPACED = True
    ALIASES = ("networkpolicy", "networkpolicies", "policy", "np", "policies", "pol", "pols")
    NAME_RE = _NP_NAME_RE
    Spec = NetworkPolicySpec
    spec: NetworkPolicySpec = field(default_factory=NetworkPolicySpec)
    INVENTORY = {k: v for k, v in _POLICY_INVENTORY.items()
                 if k not in ("spec.doNotTrack", "spec.preDNAT", "spec.applyOnForward", "spec.namespaceSelector")}


@dataclass
class GlobalNetworkPolicy(_PolicyBase):
    """A cluster-wide Calico policy."""

    KIND = "GlobalNetworkPolicy"
    PLURAL = "globalnetworkpolicies"
    ALIASES = ("globalnetworkpolicy", "globalnetworkpolicies", "gnp", "gnps")
    NAME_RE = _GNP_NAME_RE
    Spec = GlobalNetworkPolicySpec
    spec: GlobalNetworkPolicySpec = field(default_factory=GlobalNetworkPolicySpec)
    INVENTORY = _POLICY_INVENTORY

    def validate(self) -> None:
        super().validate()
        s = self.spec
        p = f"{self.ident()}.spec"
        check_selector(s.namespace_selector, f"{p}.namespaceSelector")
        if s.do_not_track and s.pre_dnat:
            raise ValidationError(f"{p}.preDNAT", "PreDNAT and DoNotTrack cannot both be true, for a given PolicySpec")
        if s.pre_dnat and s.egress:
            raise ValidationError(f"{p}.egress", "PreDNAT PolicySpec cannot have any Egress rules")
        if s.pre_dnat and "Egress" in s.types:
            raise ValidationError(f"{p}.types", "PreDNAT PolicySpec cannot have 'egress' Type")
        if not s.apply_on_forward and (s.do_not_track or s.pre_dnat):
            raise ValidationError(f"{p}.applyOnForward", "ApplyOnForward must be true if either PreDNAT or "
                                                         "DoNotTrack is true, for a given PolicySpec")
        for kind, rules in (("egress", s.egress), ("ingress", s.ingress)):
            for i, rule in enumerate(rules):
                svc = rule.destination.services if kind == "egress" else rule.source.services
                side = "destination" if kind == "egress" else "source"
                if svc is not None and not svc.namespace:
                    raise ValidationError(f"{p}.{kind}[{i}].{side}.services.namespace", "must specify a namespace")


@dataclass
class NetworkSetSpec:
    nets: list[str] = field(default_factory=list)


class _NetworkSetBase(Resource):
    def validate(self) -> None:
        super().validate()
        labels = self.metadata.labels or {}
        if "projectcalico.org/namespace" in labels:
            raise ValidationError(f"{self.ident()}.metadata.labels.projectcalico.org/namespace",
                                  "projectcalico.org/namespace is not a valid label name")
        _check_labels(labels, f"{self.ident()}.metadata.labels")
        for i, net in enumerate(self.spec.nets):  # type: ignore[attr-defined]
            _cidr(net, f"{self.ident()}.spec.nets[{i}]")


@dataclass
class NetworkSet(_NetworkSetBase):
    """Namespaced CIDRs that policy selectors can match by label."""

    KIND = "NetworkSet"
    PLURAL = "networksets"
    NAMESPACED = True
    ALIASES = ("networkset", "networksets", "netsets")
    Spec = NetworkSetSpec
    spec: NetworkSetSpec = field(default_factory=NetworkSetSpec)
    INVENTORY = {"spec.nets": works(_T_POLICY + "test_network_sets_feed_selector_ipsets")}


@dataclass
class GlobalNetworkSet(_NetworkSetBase):
    """Cluster-wide CIDRs that policy selectors can match by label."""

    KIND = "GlobalNetworkSet"
    PLURAL = "globalnetworksets"
    ALIASES = ("globalnetworkset", "globalnetworksets", "gnetsets")
    Spec = NetworkSetSpec
    spec: NetworkSetSpec = field(default_factory=NetworkSetSpec)
    INVENTORY = {"spec.nets": works(_T_POLICY + "test_network_sets_feed_selector_ipsets")}


# ---------------------------------------------------------------------------
# IPAM kinds (model format in etcd)


def cidr_dashed(cidr: str) -> str:
    """``192.168.0.0/24`` -> ``192.168.0.0-24`` (the etcd key form)."""
    return cidr.replace("/", "-")


def cidr_name(cidr: str) -> str:
    """``192.168.0.0/24`` -> ``192-168-0-0-24`` (the v3 object name form)."""
    return cidr.replace(".", "-").replace("/", "-").replace(":", "-")


def _cidr_from_name(name: str) -> str:
    parts = name.split("-")
    if len(parts) < 5:
        raise ValidationError("metadata.name", f"{name!r} does not name an IPv4 block like 192-168-0-0-26")
    return ".".join(parts[-5:-1]) + "/" + parts[-1]


@dataclass
class AllocationAttribute:
    handle_id: str | None = jfield("handle_id")
    secondary: dict[str, str] | None = None


@dataclass
class IPAMBlockSpec:
    cidr: str = ""
    affinity: str | None = None
    strict_affinity: bool = False
    allocations: list[int | None] = field(default_factory=list)
    unallocated: list[int] = field(default_factory=list)
    attributes: list[AllocationAttribute] = field(default_factory=list)
    sequence_number: int = 0
    sequence_number_for_allocation: dict[str, int] = field(default_factory=dict)
    deleted: bool = False


@dataclass
class IPAMBlock(Resource):
    """One IPAM block: the compare-and-swap unit of allocation."""

    KIND = "IPAMBlock"
    MODEL_STORED = True
    PLURAL = "ipamblocks"
    ALIASES = ("ipamblock", "ipamblocks")
    Spec = IPAMBlockSpec
    spec: IPAMBlockSpec = field(default_factory=IPAMBlockSpec)
    INVENTORY = {
        "spec.cidr": works(_T_BLOCK + "test_block_json_round_trip", _T_IPAM + "test_first_node_tunnel_then_pod_claim_protocol"),
        "spec.affinity": works(_T_IPAM + "test_first_node_tunnel_then_pod_claim_protocol"),
        "spec.strictAffinity": works(_T_BLOCK + "test_block_json_round_trip"),
        "spec.allocations": works(_T_BLOCK + "test_new_block_fifo_starts_at_zero"),
        "spec.unallocated": works(_T_BLOCK + "test_freed_ordinal_goes_to_tail_least_recently_freed_reused"),
        "spec.attributes.handle_id": works(_T_BLOCK + "test_attributes_shared_by_handle_and_compacted_on_release"),
        "spec.attributes.secondary": works(_T_BLOCK + "test_attributes_shared_by_handle_and_compacted_on_release"),
        "spec.sequenceNumber": works(_T_BLOCK + "test_sequence_number_bumped_per_write_and_stamped"),
        "spec.sequenceNumberForAllocation": works(
            _T_BLOCK + "test_stale_sequence_number_release_refused_and_nothing_changed"),
        "spec.deleted": missing(_SOFT_DELETE, ok=(False,)),
    }

    @classmethod
    def key_for(cls, name: str, namespace: str | None = None) -> str:
        return f"{IPAM_PREFIX}assignment/ipv4/block/{cidr_dashed(_cidr_from_name(name))}"

    @classmethod
    def key_for_cidr(cls, cidr: str) -> str:
        return f"{IPAM_PREFIX}assignment/ipv4/block/{cidr_dashed(cidr)}"

    @classmethod
    def list_prefix(cls, namespace: str | None = None) -> str:
        return f"{IPAM_PREFIX}assignment/ipv4/block/"

    @classmethod
    def ident_from_key(cls, key: str) -> tuple[str | None, str] | None:
        prefix = cls.list_prefix()
        if not key.startswith(prefix) or "/" in key[len(prefix):]:
            return None
        return None, cidr_name(_undash(key[len(prefix):]))

    def key(self) -> str:
        return self.key_for_cidr(self.spec.cidr)

    def encode_value(self) -> bytes:
        s = self.spec
        doc = {
            "cidr": s.cidr,
            "affinity": s.affinity,
            "strictAffinity": s.strict_affinity,
            "allocations": s.allocations,
            "unallocated": s.unallocated,
            "attributes": [{"handle_id": a.handle_id, "secondary": a.secondary} for a in s.attributes],
            "deleted": s.deleted,
            "sequenceNumber": s.sequence_number,
            "sequenceNumberForAllocation": s.sequence_number_for_allocation or {},
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def decode_value(cls, key: str, value: bytes, revision: int) -> IPAMBlock:
        d = json.loads(value)
        spec = IPAMBlockSpec(
            cidr=d["cidr"],
            affinity=d.get("affinity"),
            strict_affinity=bool(d.get("strictAffinity", False)),
            allocations=list(d.get("allocations") or []),
            unallocated=list(d.get("unallocated") or []),
            attributes=[AllocationAttribute(a.get("handle_id"), a.get("secondary"))
                        for a in d.get("attributes") or []],
            sequence_number=int(d.get("sequenceNumber", 0)),
            sequence_number_for_allocation={k: int(v) for k, v in
                                            (d.get("sequenceNumberForAllocation") or {}).items()},
            deleted=bool(d.get("deleted", False)),
        )
        return cls(metadata=Metadata(name=cidr_name(spec.cidr), resource_version=str(revision)), spec=spec)

    def validate(self) -> None:
        _cidr(self.spec.cidr, f"{self.ident()}.spec.cidr")


def _undash(dashed: str) -> str:
    head, _, tail = dashed.rpartition("-")
    return f"{head}/{tail}"


@dataclass
class BlockAffinitySpec:
    state: str = ""
    node: str = ""
    cidr: str = ""
    deleted: bool = False
    type: str = "host"


@dataclass
class BlockAffinity(Resource):
    """A node's claim on a block: ``pending`` -> ``confirmed`` (-> ``pendingDeletion``)."""

    KIND = "BlockAffinity"
    MODEL_STORED = True
    PLURAL = "blockaffinities"
    ALIASES = ("blockaffinity", "blockaffinities", "affinity", "affinities")
    Spec = BlockAffinitySpec
    spec: BlockAffinitySpec = field(default_factory=BlockAffinitySpec)
    INVENTORY = {
        "spec.state": works(_T_IPAM + "test_first_node_tunnel_then_pod_claim_protocol"),
        "spec.node": works(_T_IPAM + "test_first_node_tunnel_then_pod_claim_protocol"),
        "spec.cidr": works(_T_IPAM + "test_first_node_tunnel_then_pod_claim_protocol"),
        "spec.deleted": missing(_SOFT_DELETE, ok=(False,)),
        "spec.type": missing("only host affinities exist", ok=("host",), since="v3.30"),
    }

    @classmethod
    def key_for_node(cls, node: str, cidr: str) -> str:
        return f"{IPAM_PREFIX}host/{node}/ipv4/block/{cidr_dashed(cidr)}"

    @classmethod
    def key_for(cls, name: str, namespace: str | None = None) -> str:
        cidr = _cidr_from_name(name)
        node = name[: -(len(cidr_name(cidr)) + 1)]
        return cls.key_for_node(node, cidr)

    @classmethod
    def list_prefix(cls, namespace: str | None = None) -> str:
        return f"{IPAM_PREFIX}host/"

    @classmethod
    def node_prefix(cls, node: str) -> str:
        return f"{IPAM_PREFIX}host/{node}/ipv4/block/"

    @classmethod
    def ident_from_key(cls, key: str) -> tuple[str | None, str] | None:
        m = _AFF_RE.match(key)
        if not m:
            return None
        return None, f"{m.group(1)}-{cidr_name(_undash(m.group(2)))}"

    def key(self) -> str:
        return self.key_for_node(self.spec.node, self.spec.cidr)

    def encode_value(self) -> bytes:
        return json.dumps({"state": self.spec.state, "deleted": self.spec.deleted},
                          separators=(",", ":")).encode()

    @classmethod
    def decode_value(cls, key: str, value: bytes, revision: int) -> BlockAffinity:
        m = _AFF_RE.match(key)
        if not m:
            raise ValidationError("key", f"{key} is not a block affinity key")
        d = json.loads(value) if value else {}
        node, cidr = m.group(1), _undash(m.group(2))
        spec = BlockAffinitySpec(state=d.get("state", ""), node=node, cidr=cidr,
                                 deleted=bool(d.get("deleted", False)))
        return cls(metadata=Metadata(name=f"{node}-{cidr_name(cidr)}", resource_version=str(revision)),
                   spec=spec)

    def validate(self) -> None:
        _oneof(self.spec.state, ("pending", "confirmed", "pendingDeletion", ""), f"{self.ident()}.spec.state")
        _cidr(self.spec.cidr, f"{self.ident()}.spec.cidr")


_AFF_RE = re.compile(r"^/calico/ipam/v2/host/([^/]+)/ipv4/block/([^/]+)$")


@dataclass
class IPAMHandleSpec:
    handle_id: str = jfield("handleID", "")
    block: dict[str, int] = field(default_factory=dict)
    deleted: bool = False


@dataclass
class IPAMHandle(Resource):
    """An allocation handle: which blocks hold how many of its IPs (for release by handle)."""

    KIND = "IPAMHandle"
    MODEL_STORED = True
    PLURAL = "ipamhandles"
    ALIASES = ("ipamhandle", "ipamhandles")
    Spec = IPAMHandleSpec
    spec: IPAMHandleSpec = field(default_factory=IPAMHandleSpec)
    INVENTORY = {
        "spec.handleID": works(_T_IPAM + "test_release_by_handle_and_ip_and_fifo_reuse"),
        "spec.block": works(_T_BLOCK + "test_handle_counts"),
        "spec.deleted": missing(_SOFT_DELETE, ok=(False,)),
    }

    @classmethod
    def key_for(cls, name: str, namespace: str | None = None) -> str:
        return f"{IPAM_PREFIX}handle/{name}"

    @classmethod
    def list_prefix(cls, namespace: str | None = None) -> str:
        return f"{IPAM_PREFIX}handle/"

    @classmethod
    def ident_from_key(cls, key: str) -> tuple[str | None, str] | None:
        prefix = cls.list_prefix()
        if key.startswith(prefix) and "/" not in key[len(prefix):]:
            return None, key[len(prefix):]
        return None

    def key(self) -> str:
        return self.key_for(self.spec.handle_id or self.metadata.name)

    def encode_value(self) -> bytes:
        return json.dumps({"block": self.spec.block, "deleted": self.spec.deleted},
                          separators=(",", ":")).encode()

    @classmethod
    def decode_value(cls, key: str, value: bytes, revision: int) -> IPAMHandle:
        handle = key[len(cls.list_prefix()):]
        d = json.loads(value) if value else {}
        spec = IPAMHandleSpec(handle_id=handle, block={k: int(v) for k, v in (d.get("block") or {}).items()},
                              deleted=bool(d.get("deleted", False)))
        return cls(metadata=Metadata(name=handle, resource_version=str(revision)), spec=spec)

    def validate(self) -> None:
        if not (self.spec.handle_id or self.metadata.name):
            raise ValidationError(f"{self.KIND}.spec.handleID", "is required")


@dataclass
class IPAMConfigSpec:
    strict_affinity: bool = False
    auto_allocate_blocks: bool | None = None
    max_blocks_per_host: int = 0


@dataclass
class IPAMConfig(Resource):
    """The IPAM singleton ``default`` (strictAffinity, autoAllocateBlocks, maxBlocksPerHost)."""

    KIND = "IPAMConfig"
    MODEL_STORED = True
    PLURAL = "ipamconfigs"
    ALIASES = ("ipamconfig", "ipamconfigs", "ipamconfiguration", "ipamconfigurations")
    Spec = IPAMConfigSpec
    spec: IPAMConfigSpec = field(default_factory=IPAMConfigSpec)
    INVENTORY = {
        "spec.strictAffinity": works(_T_IPAM + "test_borrow_only_when_no_free_block_and_not_strict"),
        "spec.autoAllocateBlocks": works(_T_EFFECTS_DS + "test_auto_allocate_blocks_false_claims_no_block"),
        "spec.maxBlocksPerHost": works(_T_IPAM + "test_per_host_block_limit"),
    }

    @classmethod
    def key_for(cls, name: str, namespace: str | None = None) -> str:
        return f"{IPAM_PREFIX}config"

    @classmethod
    def list_prefix(cls, namespace: str | None = None) -> str:
        return f"{IPAM_PREFIX}config"

    @classmethod
    def ident_from_key(cls, key: str) -> tuple[str | None, str] | None:
        return (None, "default") if key == f"{IPAM_PREFIX}config" else None

    def key(self) -> str:
        return self.key_for("default")

    def apply_defaults(self) -> None:
        if self.spec.auto_allocate_blocks is None:
            self.spec.auto_allocate_blocks = True

    def encode_value(self) -> bytes:
        return json.dumps({"strict_affinity": self.spec.strict_affinity,
                           "auto_allocate_blocks": bool(self.spec.auto_allocate_blocks
                                                        if self.spec.auto_allocate_blocks is not None else True),
                           "maxBlocksPerHost": self.spec.max_blocks_per_host},
                          separators=(",", ":")).encode()

    @classmethod
    def decode_value(cls, key: str, value: bytes, revision: int) -> IPAMConfig:
        d = json.loads(value) if value else {}
        spec = IPAMConfigSpec(strict_affinity=bool(d.get("strict_affinity", False)),
                              auto_allocate_blocks=bool(d.get("auto_allocate_blocks", True)),
                              max_blocks_per_host=int(d.get("maxBlocksPerHost", 0)))
        return cls(metadata=Metadata(name="default", resource_version=str(revision)), spec=spec)

    def validate(self) -> None:
        p = "IPAMConfig(default).spec"
        if self.metadata.name and self.metadata.name != "default":
            raise ValidationError("IPAMConfig.metadata.name", "must be 'default'")
        auto = True if self.spec.auto_allocate_blocks is None else self.spec.auto_allocate_blocks
        if not self.spec.strict_affinity and not auto:
            raise ValidationError(f"{p}.autoAllocateBlocks", "cannot be false while strictAffinity is false")
        if self.spec.max_blocks_per_host < 0:
            raise ValidationError(f"{p}.maxBlocksPerHost", "must not be negative")
        if self.spec.max_blocks_per_host > 0 and not self.spec.strict_affinity:
            raise ValidationError(f"{p}.maxBlocksPerHost", "requires strictAffinity to be true")


# ---------------------------------------------------------------------------
# Registry

KINDS: dict[str, type[Resource]] = {
    cls.KIND: cls
    for cls in (IPPool, Node, WorkloadEndpoint, BGPConfiguration, BGPPeer, FelixConfiguration,
                ClusterInformation, Profile, NetworkPolicy, GlobalNetworkPolicy, NetworkSet, GlobalNetworkSet,
                IPAMBlock, BlockAffinity, IPAMHandle, IPAMConfig)
}

_BY_ALIAS: dict[str, type[Resource]] = {}
for _cls in KINDS.values():
    _BY_ALIAS[_cls.KIND.lower()] = _cls
    _BY_ALIAS[_cls.PLURAL] = _cls
    for _a in _cls.ALIASES:
        _BY_ALIAS[_a] = _cls


#: Calico v3.28.1 kinds calicolab does not store, with what would be missing: calicoctl
#: refuses them by name rather than store what nothing acts on (their fields are listed in
#: docs/inventory.md from datastore.calico_api).
NOT_STORED: dict[str, str] = {
    "HostEndpoint": "host endpoints (policy on the nodes' own interfaces) are not implemented",
    "BGPFilter": "BGP import/export filters are not implemented",
    "IPReservation": "IPAM does not skip reserved addresses",
    "KubeControllersConfiguration": "kube-controllers takes its settings from its environment "
                                    "(ENABLED_CONTROLLERS, LEAK_GRACE_PERIOD)",
    "CalicoNodeStatus": "no node status objects are written (calicoctl node status asks the BGP speaker)",
}
_NOT_STORED_ALIASES: dict[str, str] = {}
for _kind in NOT_STORED:
    _low = _kind.lower()
    for _a in (_low, _low + "s", _low[:-1] + "ies" if _low.endswith("y") else _low + "es"):
        _NOT_STORED_ALIASES[_a] = _kind
_NOT_STORED_ALIASES.update({"hep": "HostEndpoint", "heps": "HostEndpoint", "caliconodestatuses": "CalicoNodeStatus"})


def not_stored_error(kind: str, where: str = "") -> ValidationError:
    """The error for a Calico kind calicolab does not implement (naming it and why)."""
    return ValidationError(f"{where}kind", f"{kind} is a Calico kind calicolab does not implement: "
                           f"{NOT_STORED[kind]}; it is not stored (see docs/inventory.md)")


def resolve_kind(name: str) -> type[Resource]:
    """Map ``IPPool``, ``ippools``, ``pool``, ``wep`` ... to the resource class."""
    cls = KINDS.get(name) or _BY_ALIAS.get(name.lower())
    if cls is None:
        missing_kind = name if name in NOT_STORED else _NOT_STORED_ALIASES.get(name.lower())
        if missing_kind:
            raise not_stored_error(missing_kind)
        raise ValidationError("kind", f"unknown resource type {name!r} (known: {', '.join(sorted(KINDS))})")
    return cls


def from_document(doc: Any, where: str = "") -> Resource:
    """Build the right resource class from a calicoctl document (kind read from ``doc``)."""
    if not isinstance(doc, dict):
        raise ValidationError(where or "document", "a resource must be a mapping")
    kind = doc.get("kind")
    if not kind:
        raise ValidationError(f"{where}kind", "is required")
    cls = KINDS.get(kind)
    if cls is None:
        if kind in NOT_STORED:
            raise not_stored_error(kind, where)
        raise ValidationError(f"{where}kind", f"unknown resource type {kind!r} (known: {', '.join(sorted(KINDS))})")
    return cls.from_dict(doc, where)


def unimplemented(obj: Resource) -> list[Finding]:
    """The fields of ``obj`` set to values calicolab does not honour (none for a fully honoured object)."""
    return findings(obj.ident(), obj.to_dict(), obj.INVENTORY, roots=("spec", "status"))


def kind_for_key(key: str) -> tuple[type[Resource], str | None, str] | None:
    """(class, namespace, name) for an etcd key, or None for keys we do not model."""
    for cls in KINDS.values():
        ident = cls.ident_from_key(key)
        if ident is not None:
            return cls, ident[0], ident[1]
    return None
