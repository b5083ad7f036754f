"""Datastore resources -> Felix's plain inputs (pure; no datastore calls).

FelixConfiguration precedence follows Felix: built-in defaults < ``default``
< ``node.<hostname>`` < ``FELIX_*`` environment variables.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from agent import envvars
from agent.felix.model import Endpoint, FelixSettings, HostNode, Pool
from datastore.duration import parse_duration

_ENV = {
    "FELIX_IPINIPENABLED": "ipip_enabled",
    "FELIX_IPINIPMTU": "ipip_mtu",
    "FELIX_INTERFACEPREFIX": "interface_prefix",
    "FELIX_DEFAULTENDPOINTTOHOSTACTION": "default_endpoint_to_host_action",
    "FELIX_ROUTEREFRESHINTERVAL": "route_refresh_interval",
    "FELIX_IPTABLESREFRESHINTERVAL": "iptables_refresh_interval",
    "FELIX_IPSETSREFRESHINTERVAL": "ipsets_refresh_interval",
    "FELIX_HEALTHPORT": "health_port",
}


class ConfigError(ValueError):
    """A Felix configuration value is unusable (the message names it)."""


def endpoint_from_wep(wep: Any) -> Endpoint | None:
    """A WorkloadEndpoint resource as a Felix endpoint (None without an interface name)."""
    spec = wep.spec
    if not spec.interface_name:
        return None
    ips = []
    for net in spec.ip_networks:
        try:
            ips.append(str(ipaddress.ip_network(net, strict=False)))
        except ValueError:
            continue
    return Endpoint(key=f"{wep.metadata.namespace}/{wep.metadata.name}", iface=spec.interface_name,
                    ips=tuple(ips), profiles=tuple(spec.profiles))


def host_from_node(node: Any) -> HostNode:
    """A Node resource as Felix's view of a host."""
    bgp = node.spec.bgp
    return HostNode(node.metadata.name, bgp.ipv4_address if bgp else None,
                    bgp.ipv4_ipip_tunnel_addr if bgp else None)


def pool_from_ippool(pool: Any) -> Pool | None:
    """An IPv4 IPPool resource as Felix's pool (None for IPv6 pools)."""
    net = ipaddress.ip_network(pool.spec.cidr, strict=False)
    if net.version != 4:
        return None
    return Pool(str(net), pool.spec.ipip_mode or "Never", bool(pool.spec.nat_outgoing), bool(pool.spec.disabled))


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
        for attr in ("ipip_enabled", "interface_prefix", "default_endpoint_to_host_action", "health_port"):
            if getattr(s, attr, None) is not None:
                vals[attr] = getattr(s, attr)
        if s.ipip_mtu:
            vals["ipip_mtu"] = int(s.ipip_mtu)
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
            if attr == "ipip_enabled":
                vals[attr] = _bool(raw, var)
            elif attr in ("ipip_mtu", "health_port"):
                vals[attr] = int(raw)
            elif attr.endswith("_interval"):
                vals[attr] = parse_duration(raw, bare_seconds=True)  # Felix's env: seconds
            else:
                vals[attr] = raw
        except ValueError as exc:
            raise ConfigError(f"{var}={raw!r}: {exc}") from None
    if "interface_prefix" in vals:
        vals["interface_prefix"] = str(vals["interface_prefix"]).split(",")[0]
    return FelixSettings(**vals)


def pools_from(pools: Iterable[Any]) -> tuple[Pool, ...]:
    """Felix pools from IPPool resources (IPv6 skipped), sorted by CIDR."""
    out = [p for p in (pool_from_ippool(x) for x in pools) if p is not None]
    return tuple(sorted(out, key=lambda p: p.cidr))
