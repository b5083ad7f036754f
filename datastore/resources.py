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
            raise ValidationError(f"{p}.vxlanMode", "IPIP and VXLAN cannot both be enabled on one pool")
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
class NodeSpec:
    bgp: NodeBGPSpec | None = None
    ipv4_vxlan_tunnel_addr: str | None = jfield("ipv4VXLANTunnelAddr")
    vxlan_tunnel_mac_addr: str | None = jfield("vxlanTunnelMACAddr")
    orch_refs: list[OrchRef] = field(default_factory=list)
    addresses: list[NodeAddress] = field(default_factory=list)


@dataclass
class Node(Resource):
    """A Calico node (one per Kubernetes node) with its BGP address and tunnel address."""

    KIND = "Node"
    PLURAL = "nodes"
    ALIASES = ("node", "nodes", "no")
    Spec = NodeSpec
    spec: NodeSpec = field(default_factory=NodeSpec)
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
class FelixConfigurationSpec:
    ipip_enabled: bool | None = jfield("ipipEnabled")
    ipip_mtu: int | None = jfield("ipipMTU")
    vxlan_enabled: bool | None = jfield("vxlanEnabled")
    vxlan_mtu: int | None = jfield("vxlanMTU")
    vxlan_port: int | None = None
    vxlan_vni: int | None = jfield("vxlanVNI")
    log_severity_screen: str | None = None
    log_severity_file: str | None = None
    reporting_interval: str | None = None
    reporting_ttl: str | None = jfield("reportingTTL")
    interface_prefix: str | None = None
    default_endpoint_to_host_action: str | None = None
    iptables_filter_allow_action: str | None = None
    iptables_refresh_interval: str | None = None
    iptables_post_write_check_interval: str | None = None
    ipsets_refresh_interval: str | None = None
    route_refresh_interval: str | None = None
    route_source: str | None = None
    remove_external_routes: bool | None = None
    health_enabled: bool | None = None
    health_host: str | None = None
    health_port: int | None = None
    prometheus_metrics_enabled: bool | None = None
    prometheus_metrics_port: int | None = None
    nat_outgoing_address: str | None = jfield("natOutgoingAddress")
    nat_port_range: str | None = jfield("natPortRange")
    chain_insert_mode: str | None = None
    iptables_backend: str | None = None
    nftables_mode: str | None = jfield("nftablesMode")
    bpf_enabled: bool | None = jfield("bpfEnabled")
    failsafe_inbound_host_ports: list[ProtoPort] | None = None
    failsafe_outbound_host_ports: list[ProtoPort] | None = None
    mtu_iface_pattern: str | None = jfield("mtuIfacePattern")
    ip_forwarding: str | None = jfield("ipForwarding")
    endpoint_reporting_enabled: bool | None = None
    netlink_timeout: str | None = None
    device_route_protocol: int | None = None
    program_cluster_routes: str | None = None
    wireguard_enabled: bool | None = None


@dataclass
class FelixConfiguration(Resource):
    """Felix settings: cluster-wide (``default``) or per node (``node.<name>``)."""

    KIND = "FelixConfiguration"
    PLURAL = "felixconfigurations"
    ALIASES = ("felixconfiguration", "felixconfigurations", "felixconfig", "felixconfigs")
    Spec = FelixConfigurationSpec
    spec: FelixConfigurationSpec = field(default_factory=FelixConfigurationSpec)

    def validate(self) -> None:
        super().validate()
        p = f"{self.ident()}.spec"
        if self.spec.ipip_mtu is not None and not 0 <= self.spec.ipip_mtu <= 65535:
            raise ValidationError(f"{p}.ipipMTU", f"must be 0..65535; got {self.spec.ipip_mtu}")
        for fname, jname in (("route_refresh_interval", "routeRefreshInterval"),
                             ("iptables_refresh_interval", "iptablesRefreshInterval"),
                             ("ipsets_refresh_interval", "ipsetsRefreshInterval"),
                             ("reporting_interval", "reportingInterval")):
            value = getattr(self.spec, fname)
            if value is not None:
                try:
                    parse_duration(value)
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

    def validate(self) -> None:
        super().validate()
        p = f"{self.ident()}.spec"
        validate_rules(self.spec.ingress, f"{p}.ingress", egress=False)
        validate_rules(self.spec.egress, f"{p}.egress", egress=True)
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


@dataclass
class GlobalNetworkPolicy(_PolicyBase):
    """A cluster-wide Calico policy."""

    KIND = "GlobalNetworkPolicy"
    PLURAL = "globalnetworkpolicies"
    ALIASES = ("globalnetworkpolicy", "globalnetworkpolicies", "gnp", "gnps")
    NAME_RE = _GNP_NAME_RE
    Spec = GlobalNetworkPolicySpec
    spec: GlobalNetworkPolicySpec = field(default_factory=GlobalNetworkPolicySpec)

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


@dataclass
class GlobalNetworkSet(_NetworkSetBase):
    """Cluster-wide CIDRs that policy selectors can match by label."""

    KIND = "GlobalNetworkSet"
    PLURAL = "globalnetworksets"
    ALIASES = ("globalnetworkset", "globalnetworksets", "gnetsets")
    Spec = NetworkSetSpec
    spec: NetworkSetSpec = field(default_factory=NetworkSetSpec)


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
    affinity_claim_time: str | None = None
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
            **({"affinityClaimTime": s.affinity_claim_time} if s.affinity_claim_time else {}),
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
            affinity_claim_time=d.get("affinityClaimTime"),
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


def resolve_kind(name: str) -> type[Resource]:
    """Map ``IPPool``, ``ippools``, ``pool``, ``wep`` ... to the resource class."""
    cls = KINDS.get(name) or _BY_ALIAS.get(name.lower())
    if cls is None:
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
        raise ValidationError(f"{where}kind", f"unknown resource type {kind!r} (known: {', '.join(sorted(KINDS))})")
    return cls.from_dict(doc, where)


def kind_for_key(key: str) -> tuple[type[Resource], str | None, str] | None:
    """(class, namespace, name) for an etcd key, or None for keys we do not model."""
    for cls in KINDS.values():
        ident = cls.ident_from_key(key)
        if ident is not None:
            return cls, ident[0], ident[1]
    return None
