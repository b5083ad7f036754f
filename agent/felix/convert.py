"""Datastore resources -> Felix's plain inputs (pure; no datastore calls).

FelixConfiguration precedence follows Felix: built-in defaults < ``default``
< ``node.<hostname>`` < ``FELIX_*`` environment variables.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from agent import envvars
from agent.felix.model import Block, Endpoint, FelixSettings, HostNode, NamedPort, NetSet, Pool
from agent.felix.policy import (
    NAMESPACE_LABEL,
    NAMESPACE_PREFIX,
    SERVICEACCOUNT_LABEL,
    SERVICEACCOUNT_PREFIX,
    Policy,
    Profile,
    policy_from_resource,
    profile_from_resource,
)
from datastore.duration import parse_duration
from ipam.block import affinity_host
from ipam.ipam import borrowed

_ENV = {
    "FELIX_IPINIPENABLED": "ipip_enabled",
    "FELIX_IPINIPMTU": "ipip_mtu",
    "FELIX_INTERFACEPREFIX": "interface_prefix",
    "FELIX_DEFAULTENDPOINTTOHOSTACTION": "default_endpoint_to_host_action",
    "FELIX_ROUTEREFRESHINTERVAL": "route_refresh_interval",
    "FELIX_IPTABLESREFRESHINTERVAL": "iptables_refresh_interval",
    "FELIX_IPSETSREFRESHINTERVAL": "ipsets_refresh_interval",
    "FELIX_HEALTHPORT": "health_port",
    "FELIX_VXLANENABLED": "vxlan_enabled",
    "FELIX_VXLANMTU": "vxlan_mtu",
    "FELIX_VXLANPORT": "vxlan_port",
    "FELIX_VXLANVNI": "vxlan_vni",
    "FELIX_POLICYSYNCPATHPREFIX": "policy_sync_path_prefix",
}
_INTS = ("ipip_mtu", "health_port", "vxlan_mtu", "vxlan_port", "vxlan_vni")
_BOOLS = ("ipip_enabled", "vxlan_enabled")
_LIMITS = {"vxlan_port": (1, 65535), "vxlan_vni": (0, 16777215), "vxlan_mtu": (0, 65535), "ipip_mtu": (0, 65535)}


class ConfigError(ValueError):
    """A Felix configuration value is unusable (the message names it)."""


def endpoint_from_wep(wep: Any) -> Endpoint | None:
    """A WorkloadEndpoint resource as a Felix endpoint (None without an interface name).

    As Calico's workload endpoint update processor: ``pcns.``/``pcsa.`` labels
    on the endpoint itself are dropped (a pod must not pretend to be in another
    namespace), the service account label comes from ``spec.serviceAccountName``,
    and only named ports are kept.
    """
    spec = wep.spec
    if not spec.interface_name:
        return None
    ips = []
    for net in spec.ip_networks:
        try:
            ips.append(str(ipaddress.ip_network(net, strict=False)))
        except ValueError:
            continue
    labels = {k: v for k, v in (wep.metadata.labels or {}).items()
              if not k.startswith((NAMESPACE_PREFIX, SERVICEACCOUNT_PREFIX))}
    if spec.service_account_name:
        labels[SERVICEACCOUNT_LABEL] = spec.service_account_name
    ports = tuple(NamedPort(p.name, (p.protocol or "TCP").lower(), p.port) for p in spec.ports if p.name)
    spoof = []
    for prefix in spec.allow_spoofed_source_prefixes:
        try:
            spoof.append(str(ipaddress.ip_network(prefix, strict=False)))
        except ValueError:
            continue
    return Endpoint(key=f"{wep.metadata.namespace}/{wep.metadata.name}", iface=spec.interface_name,
                    ips=tuple(ips), profiles=tuple(spec.profiles), node=spec.node, labels=labels,
                    ports=ports, allow_spoofed=tuple(spoof),
                    workload=f"{wep.metadata.namespace}/{spec.pod}" if spec.pod else "", mac=spec.mac or "")


def netset_from_resource(obj: Any) -> NetSet:
    """A NetworkSet (namespace label and ``kns.`` profile added, as Calico) or GlobalNetworkSet."""
    nets = []
    for n in obj.spec.nets:
        try:
            nets.append(str(ipaddress.ip_network(n, strict=False)))
        except ValueError:
            continue
    labels = dict(obj.metadata.labels or {})
    profiles: tuple[str, ...] = ()
    key = obj.metadata.name
    if obj.NAMESPACED:
        ns = obj.metadata.namespace or "default"
        labels[NAMESPACE_LABEL] = ns
        profiles = (f"kns.{ns}",)
        key = f"{ns}/{key}"
    return NetSet(key=f"{obj.KIND}/{key}", nets=tuple(nets), labels=labels, profiles=profiles)


def policy_key(kind: str, name: str, namespace: str | None) -> str:
    """The key Felix's caches use: the policy ID (``<ns>/default.<name>``), the profile name, or
    ``<Kind>/[<ns>/]<name>`` for network sets."""
    if kind in ("NetworkPolicy", "GlobalNetworkPolicy"):
        from datastore.resources import policy_storage_name

        stored = policy_storage_name(name)
        return f"{namespace or 'default'}/{stored}" if kind == "NetworkPolicy" else stored
    if kind == "Profile":
        return name
    return f"{kind}/{namespace}/{name}" if namespace else f"{kind}/{name}"


def policy_from(obj: Any) -> Policy:
    """A NetworkPolicy / GlobalNetworkPolicy resource as Felix's policy."""
    return policy_from_resource(obj)


def profile_from(obj: Any) -> Profile:
    """A Profile resource as Felix's profile."""
    return profile_from_resource(obj)


def host_from_node(node: Any) -> HostNode:
    """A Node resource as Felix's view of a host (BGP address, IPIP and VXLAN tunnel
    addresses, VTEP MAC)."""
    bgp = node.spec.bgp
    return HostNode(node.metadata.name, bgp.ipv4_address if bgp else None,
                    bgp.ipv4_ipip_tunnel_addr if bgp else None,
                    node.spec.ipv4_vxlan_tunnel_addr or None, node.spec.vxlan_tunnel_mac_addr or None)


def pool_from_ippool(pool: Any) -> Pool | None:
    """An IPv4 IPPool resource as Felix's pool (None for IPv6 pools)."""
    net = ipaddress.ip_network(pool.spec.cidr, strict=False)
    if net.version != 4:
        return None
    return Pool(str(net), pool.spec.ipip_mode or "Never", bool(pool.spec.nat_outgoing), bool(pool.spec.disabled),
                pool.spec.vxlan_mode or "Never")


def block_from_ipamblock(block: Any) -> Block | None:
    """An IPAMBlock as the route resolver uses it: its CIDR, the node of its ``host:``
    affinity and the addresses allocated to other nodes (borrowed; tunnel addresses are
    not workloads). None for a deleted or IPv6 block."""
    spec = block.spec
    try:
        net = ipaddress.ip_network(spec.cidr, strict=False)
    except ValueError:
        return None
    if net.version != 4 or spec.deleted:
        return None
    lent = tuple((str(net.network_address + ordinal), node) for ordinal, node in borrowed(spec))
    return Block(str(net), affinity_host(spec.affinity) or None, lent)


def _bool(text: str, what: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "1", "yes", "enabled"):
        return True
    if low in ("false", "0", "no", "disabled"):
        return False
    raise ConfigError(f"{what}={text!r} is not a boolean (true/false)")


def settings(hostname: str, configs: Mapping[str, Any], env: Mapping[str, str]) -> FelixSettings:
    """Merge FelixConfiguration ``default``, ``node.<hostname>`` and FELIX_* env into FelixSettings."""
    vals: dict[str, Any] = {}
    for name in ("default", f"node.{hostname}"):
        cfg = configs.get(name)
        if cfg is None:
            continue
        s = cfg.spec
        for attr in ("ipip_enabled", "interface_prefix", "default_endpoint_to_host_action", "health_port",
                     "vxlan_enabled", "vxlan_port", "vxlan_vni", "policy_sync_path_prefix"):
            if getattr(s, attr, None) is not None:
                vals[attr] = getattr(s, attr)
        for attr in ("ipip_mtu", "vxlan_mtu"):
            if getattr(s, attr, None):
                vals[attr] = int(getattr(s, attr))
        for attr in ("route_refresh_interval", "iptables_refresh_interval", "ipsets_refresh_interval"):
            raw = getattr(s, attr, None)
            if raw:
                try:
                    vals[attr] = parse_duration(raw)
                except ValueError as exc:
                    raise ConfigError(f"FelixConfiguration({name}).spec.{attr}: {exc}") from None
    for var, attr in _ENV.items():
        raw = envvars.get(env, var, None)
        if raw is None or raw == "":
            continue
        try:
            if attr in _BOOLS:
                vals[attr] = _bool(raw, var)
            elif attr in _INTS:
                vals[attr] = int(raw)
            elif attr.endswith("_interval"):
                vals[attr] = parse_duration(raw, bare_seconds=True)  # Felix's env: seconds
            else:
                vals[attr] = raw
        except ValueError as exc:
            raise ConfigError(f"{var}={raw!r}: {exc}") from None
    for attr, (lo, hi) in _LIMITS.items():
        if attr in vals and not lo <= int(vals[attr]) <= hi:
            raise ConfigError(f"{attr}: {vals[attr]} is out of range {lo}..{hi}")
    if "interface_prefix" in vals:
        vals["interface_prefix"] = str(vals["interface_prefix"]).split(",")[0]
    return FelixSettings(**vals)


def pools_from(pools: Iterable[Any]) -> tuple[Pool, ...]:
    """Felix pools from IPPool resources (IPv6 skipped), sorted by CIDR."""
    out = [p for p in (pool_from_ippool(x) for x in pools) if p is not None]
    return tuple(sorted(out, key=lambda p: p.cidr))
