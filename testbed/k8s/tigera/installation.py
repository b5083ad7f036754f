"""The operator's Installation resource: defaults, validation, and what it becomes (pure).

Follows tigera/operator v1.34.3 (the release that installs Calico v3.28.1; calico.md
section 12): ``pkg/controller/installation`` (core defaults and ``validateCustomResource``)
and ``pkg/controller/ippool`` (pool defaults, ``ValidatePools``, ``ToProjectCalicoV1``),
with their messages. What calicolab's operator does not implement is refused by name
(:func:`unimplemented`), never ignored: :data:`IMPLEMENTED` lists each spec field it acts on
and, where only some values are built, which.

One difference from v1.34.3, on purpose: two pools of the Installation that overlap are refused
here, before any pool is made, with libcalico-go's message (``IPPool(b) CIDR overlaps with
IPPool(a) CIDR ...``, ``lib/clientv3/ippool.go``). The operator itself does not check it; a
cluster finds out when Calico's IPPool validation refuses the second pool, after the first
was made. Here nothing is half-made.
"""

from __future__ import annotations

import copy
import ipaddress
from dataclasses import dataclass
from typing import Any

#: the only Installation (and APIServer) the operator acts on (utils.DefaultInstanceKey)
DEFAULT_NAME = "default"
DEFAULT_POOL_NAME = "default-ipv4-ippool"
DEFAULT_POOL_CIDR = "192.168.0.0/16"
#: the label the operator puts on the IP pools it owns (pool_controller.go)
MANAGED_BY = ("app.kubernetes.io/managed-by", "tigera-operator")
ENCAPSULATIONS = ("IPIPCrossSubnet", "IPIP", "VXLAN", "VXLANCrossSubnet", "None")
NAT_OUTGOING = ("Enabled", "Disabled")
NODE_SELECTOR_DEFAULT = "all()"
ALLOWED_USES_DEFAULT = ["Workload", "Tunnel"]

#: Installation spec fields calicolab's operator implements (dotted path; ``[]`` is every
#: element of a list) -> None (any value the operator's validation takes) or the values built
IMPLEMENTED: dict[str, tuple[Any, ...] | None] = {
    "variant": ("Calico",),
    "cni": None,
    "cni.type": ("Calico",),
    "cni.ipam": None,
    "cni.ipam.type": ("Calico",),
    "calicoNetwork": None,
    "calicoNetwork.bgp": ("Enabled", "Disabled"),
    "calicoNetwork.linuxDataplane": ("Iptables",),
    "calicoNetwork.windowsDataplane": ("Disabled",),
    "calicoNetwork.hostPorts": ("Enabled",),
    "calicoNetwork.multiInterfaceMode": ("None",),
    "calicoNetwork.linuxPolicySetupTimeoutSeconds": (0,),
    "calicoNetwork.nodeAddressAutodetectionV4": None,
    "calicoNetwork.nodeAddressAutodetectionV4.firstFound": None,
    "calicoNetwork.nodeAddressAutodetectionV4.interface": None,
    "calicoNetwork.nodeAddressAutodetectionV4.skipInterface": None,
    "calicoNetwork.nodeAddressAutodetectionV4.canReach": None,
    "calicoNetwork.nodeAddressAutodetectionV4.cidrs": None,
    "calicoNetwork.ipPools": None,
    "calicoNetwork.ipPools[]": None,
    "calicoNetwork.ipPools[].name": None,
    "calicoNetwork.ipPools[].cidr": None,
    "calicoNetwork.ipPools[].blockSize": None,
    "calicoNetwork.ipPools[].encapsulation": None,
    "calicoNetwork.ipPools[].natOutgoing": None,
    "calicoNetwork.ipPools[].nodeSelector": None,
    "calicoNetwork.ipPools[].disableBGPExport": None,
    "calicoNetwork.ipPools[].allowedUses": None,
}


class InstallationError(ValueError):
    """What the operator reports as Degraded: a TigeraStatus ``reason`` and the message
    (``"<what>: <error>"``, as the operator's status manager joins them)."""

    def __init__(self, reason: str, what: str, err: str = ""):
        super().__init__(f"{what}: {err}")
        self.reason, self.what, self.err = reason, what, err


def unimplemented(spec: dict) -> list[str]:
    """The Installation spec fields (``spec.x.y``, with the value where only some values are
    built) that calicolab's operator does not implement, in spec order."""
    out: list[str] = []

    def walk(value: Any, path: str) -> None:
        key = path
        if key and key not in IMPLEMENTED:
            out.append(f"spec.{key.replace('[]', '[*]')}")
            return
        allowed = IMPLEMENTED.get(key) if key else None
        if allowed is not None and value not in allowed and value is not None:
            built = ", ".join(str(a) for a in allowed)
            out.append(f"spec.{key.replace('[]', '[*]')}={value} (calicolab implements: {built})")
            return
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else k)
        elif isinstance(value, list) and key == "calicoNetwork.ipPools":
            for item in value:
                walk(item, key + "[]")

    walk(spec or {}, "")
    return out


def fill_defaults(spec: dict) -> dict:
    """The core controller's defaults (``fillDefaults`` in core_controller.go) for the fields
    calicolab implements: variant Calico, CNI and IPAM Calico, BGP Enabled, the Iptables
    dataplane, hostPorts Enabled, multiInterfaceMode None, linuxPolicySetupTimeoutSeconds 0,
    nodeAddressAutodetectionV4 firstFound. Returns a new spec."""
    s = copy.deepcopy(spec or {})
    s.setdefault("variant", "Calico")
    cni = s.setdefault("cni", {})
    cni.setdefault("type", "Calico")
    cni.setdefault("ipam", {}).setdefault("type", "Calico")
    net = s.setdefault("calicoNetwork", {})
    net.setdefault("linuxDataplane", "Iptables")
    net.setdefault("windowsDataplane", "Disabled")
    net.setdefault("bgp", "Enabled" if cni["type"] == "Calico" else "Disabled")
    if not net.get("nodeAddressAutodetectionV4"):
        net["nodeAddressAutodetectionV4"] = {"firstFound": True}
    if cni["type"] == "Calico":
        net.setdefault("linuxPolicySetupTimeoutSeconds", 0)
        net.setdefault("hostPorts", "Enabled")
        net.setdefault("multiInterfaceMode", "None")
    return s


def fill_pool_defaults(spec: dict, current_pools: list[dict]) -> dict:
    """The IP pool controller's defaults (``fillDefaults`` in pkg/controller/ippool/defaults.go):
    with no pools in the cluster and none in the Installation, one pool 192.168.0.0/16;
    with pools in the cluster and none in the Installation, none (managed out of band);
    then per IPv4 pool: allowedUses [Workload, Tunnel], encapsulation IPIP, natOutgoing
    Enabled, nodeSelector all(), blockSize 26, and a name (an existing pool's of the same
    CIDR, ``default-ipv4-ippool`` for a single pool, else the CIDR's). ``current_pools``
    are crd.projectcalico.org IPPool objects. Returns a new spec."""
    s = copy.deepcopy(spec)
    net = s.setdefault("calicoNetwork", {})
    if "ipPools" not in net or net["ipPools"] is None:
        net["ipPools"] = [] if current_pools else [{"name": DEFAULT_POOL_NAME, "cidr": DEFAULT_POOL_CIDR}]
    by_cidr = {((p.get("spec") or {}).get("cidr")): p["metadata"]["name"] for p in current_pools}
    pools = net["ipPools"]
    for pool in pools:
        if not isinstance(pool, dict):
            continue
        pool.setdefault("allowedUses", list(ALLOWED_USES_DEFAULT))
        try:
            v4 = ipaddress.ip_network(str(pool.get("cidr")), strict=False).version == 4
        except ValueError:
            v4 = None
        if v4:
            pool.setdefault("encapsulation", "IPIP")
            pool.setdefault("natOutgoing", "Enabled")
            pool.setdefault("nodeSelector", NODE_SELECTOR_DEFAULT)
            pool.setdefault("blockSize", 26)
        elif v4 is False:
            pool.setdefault("encapsulation", "None")
            pool.setdefault("natOutgoing", "Disabled")
            pool.setdefault("nodeSelector", NODE_SELECTOR_DEFAULT)
            pool.setdefault("blockSize", 122)
        if not pool.get("name"):
            if pool.get("cidr") in by_cidr:
                pool["name"] = by_cidr[pool["cidr"]]
            elif len(pools) == 1 and v4 is not None:
                pool["name"] = DEFAULT_POOL_NAME if v4 else "default-ipv6-ippool"
            elif v4 is not None:
                pool["name"] = cidr_to_name(pool["cidr"])
    return s


def cidr_to_name(cidr: str) -> str:
    """A pool name from its CIDR (``cidrToName``): ``10.0.0.0/16`` -> ``10.0.0.0-16``; IPv6
    expanded with ``:`` as ``.``."""
    net = ipaddress.ip_network(cidr, strict=False)
    addr = net.network_address.exploded.replace(":", ".")
    return f"{addr}-{net.prefixlen}"


def validate_installation(spec: dict) -> None:
    """``validateCustomResource`` for a defaulted spec, after the fields calicolab does not
    implement: raises :class:`InstallationError` (InvalidConfigurationError, "Invalid
    Installation provided")."""
    what = "Invalid Installation provided"
    missing = unimplemented(spec)
    if missing:
        raise InstallationError("InvalidConfigurationError", what,
                                f"not implemented by calicolab's operator: {'; '.join(missing)}")
    cni = spec.get("cni") or {}
    if cni.get("type") != "Calico":
        raise InstallationError("InvalidConfigurationError", what,
                                f"Invalid value '{cni.get('type')}' for spec.cni.type, it should be one of "
                                "Calico,GKE,AmazonVPC,AzureVNET")
    net = spec.get("calicoNetwork") or {}
    bgp = net.get("bgp")
    for pool in net.get("ipPools") or []:
        if not isinstance(pool, dict):
            continue
        cidr = str(pool.get("cidr", ""))
        enc = pool.get("encapsulation")
        if ":" in cidr and enc in ("IPIP", "IPIPCrossSubnet"):
            raise InstallationError("InvalidConfigurationError", what,
                                    f"IPIP encapsulation is not supported by IPv6 pools, but it is set for {cidr}")
        if enc in ("IPIP", "IPIPCrossSubnet") and bgp != "Enabled":
            raise InstallationError("InvalidConfigurationError", what, "IPIP encapsulation requires that BGP is enabled")
        if enc == "None" and bgp != "Enabled":
            raise InstallationError("InvalidConfigurationError", what,
                                    "Unencapsulated IP pools require that BGP is enabled")


def validate_pools(spec: dict) -> None:
    """``ValidatePools`` (pkg/controller/ippool/validation.go) of a defaulted spec, plus the
    overlap check (module docstring): raises :class:`InstallationError`
    (InvalidConfigurationError, "error validating IP pool configuration")."""
    what = "error validating IP pool configuration"

    def bad(msg: str) -> InstallationError:
        return InstallationError("InvalidConfigurationError", what, msg)

    pools = ((spec.get("calicoNetwork") or {}).get("ipPools")) or []
    cidrs: set[str] = set()
    names: set[str] = set()
    nets: list[tuple[str, Any]] = []
    for pool in pools:
        if not isinstance(pool, dict):
            raise bad(f"IP pool {pool!r} is not an object")
        cidr = str(pool.get("cidr", ""))
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise bad(f"IP pool CIDR ({cidr}) is invalid: invalid CIDR address: {cidr} ({exc})") from None
        if cidr in cidrs:
            raise bad(f"IP pool {cidr} is specified more than once")
        cidrs.add(cidr)
        if pool.get("name") in names:
            raise bad(f"IP pool {pool.get('name')} is specified more than once")
        names.add(pool.get("name"))
        if pool.get("natOutgoing") not in NAT_OUTGOING:
            raise bad(f"{pool.get('natOutgoing')} is invalid for natOutgoing, should be one of {','.join(NAT_OUTGOING)}")
        if not pool.get("nodeSelector"):
            raise bad("IP pool nodeSelector should not be empty")
        if pool.get("encapsulation") not in ENCAPSULATIONS:
            raise bad(f"{pool.get('encapsulation')} is invalid for ipPool.encapsulation, should be one of "
                      f"{','.join(ENCAPSULATIONS)}")
        bs = pool.get("blockSize")
        if bs is not None:
            if not isinstance(bs, int) or isinstance(bs, bool):
                raise bad(f"IP pool blockSize {bs!r} is not an integer")
            if net.version == 4 and not 20 <= bs <= 32:
                raise bad("IPv4 pool block size must be greater than 19 and less than or equal to 32")
            if net.version == 6 and not 116 <= bs <= 128:
                raise bad("IPv6 pool block size must be greater than 115 and less than or equal to 128")
            if net.prefixlen > bs:
                raise bad("IP pool size is too small. It must be equal to or greater than the block size.")
        for other_name, other in nets:
            if other.version == net.version and other.overlaps(net):
                raise bad(f"IPPool({pool.get('name')}) CIDR overlaps with IPPool({other_name}) CIDR {other}")
        nets.append((str(pool.get("name")), net))


def pool_resource(pool: dict) -> dict:
    """A defaulted Installation pool as a Calico IPPool (``ToProjectCalicoV1``; calicoctl's v3
    document, ``projectcalico.org/v3``), labelled as the operator's."""
    enc = pool.get("encapsulation")
    spec: dict[str, Any] = {
        "cidr": pool["cidr"],
        "ipipMode": {"IPIP": "Always", "IPIPCrossSubnet": "CrossSubnet"}.get(enc, "Never"),
        "vxlanMode": {"VXLAN": "Always", "VXLANCrossSubnet": "CrossSubnet"}.get(enc, "Never"),
        "natOutgoing": pool.get("natOutgoing") == "Enabled",
        "nodeSelector": pool.get("nodeSelector"),
    }
    if pool.get("blockSize") is not None:
        spec["blockSize"] = pool["blockSize"]
    if pool.get("disableBGPExport") is not None:
        spec["disableBGPExport"] = bool(pool["disableBGPExport"])
    if pool.get("allowedUses"):
        spec["allowedUses"] = list(pool["allowedUses"])
    return {"apiVersion": "projectcalico.org/v3", "kind": "IPPool",
            "metadata": {"name": pool["name"], "labels": {MANAGED_BY[0]: MANAGED_BY[1]}}, "spec": spec}


def autodetection_method(spec: dict) -> str:
    """calico-node's ``IP_AUTODETECTION_METHOD`` from nodeAddressAutodetectionV4 (render/node.go)."""
    ad = (spec.get("calicoNetwork") or {}).get("nodeAddressAutodetectionV4") or {}
    if ad.get("interface"):
        return f"interface={ad['interface']}"
    if ad.get("skipInterface"):
        return f"skip-interface={ad['skipInterface']}"
    if ad.get("canReach"):
        return f"can-reach={ad['canReach']}"
    if ad.get("cidrs"):
        return "cidr=" + ",".join(ad["cidrs"])
    return "first-found"


@dataclass(frozen=True)
class NodeSettings:
    """What calico-system is rendered from, out of a defaulted, validated Installation."""

    pool_cidr: str
    block_size: int
    ipip_mode: str
    vxlan_mode: str
    nat_outgoing: bool
    backend: str
    autodetection: str


def node_settings(spec: dict) -> NodeSettings:
    """calico-node's settings: its first IPv4 pool's (CALICO_IPV4POOL_*; the operator makes
    the pools and sets NO_DEFAULT_POOLS), the networking backend (``bird``, ``vxlan`` when BGP
    is Disabled) and the autodetection method."""
    net = spec.get("calicoNetwork") or {}
    v4 = [p for p in net.get("ipPools") or [] if ":" not in str(p.get("cidr", ""))]
    pool = pool_resource(v4[0])["spec"] if v4 else {"cidr": DEFAULT_POOL_CIDR, "blockSize": 26,
                                                       "ipipMode": "Never", "vxlanMode": "Never",
                                                       "natOutgoing": True}
    return NodeSettings(pool_cidr=str(ipaddress.ip_network(pool["cidr"], strict=False)),
                        block_size=int(pool.get("blockSize") or 26), ipip_mode=pool["ipipMode"],
                        vxlan_mode=pool["vxlanMode"], nat_outgoing=bool(pool["natOutgoing"]),
                        backend="bird" if net.get("bgp") == "Enabled" else "vxlan",
                        autodetection=autodetection_method(spec))


def needs_pools(spec: dict) -> bool:
    """True when the Installation asks for pools (the core controller then waits for them)."""
    return bool((spec.get("calicoNetwork") or {}).get("ipPools"))


def expected_typha_replicas(nodes: int) -> int:
    """The operator's Typha scale for ``nodes`` nodes (``GetExpectedTyphaScale``): 1 for 1-2,
    2 for 3-4, then one per 200 nodes plus one, at least 3."""
    if nodes <= 2:
        return 1
    if nodes <= 4:
        return 2
    return max(3, nodes // 200 + 2)
