"""Namespace calico-system as the operator renders an Installation: the settings of
manifests/calico-system.yaml from the Installation (:func:`settings_for_installation`),
rendered by :func:`testbed.k8s.install.render_calico_system`, the one rendering that
``calicolab up`` in the Kubernetes datastore uses too (``render_operator_layout``).
"""

from __future__ import annotations

import os

import yaml

from testbed.k8s.install import DEFAULT_BGP_TIMERS, InstallSettings, render_calico_system
from testbed.k8s.tigera.installation import node_settings

__all__ = ["objects", "render_calico_system", "settings_for_installation"]


def settings_for_installation(spec: dict, env: dict[str, str] | None = None) -> InstallSettings:
    """The render settings of a defaulted, validated Installation spec: its first IPv4 pool,
    BGP (the networking backend), node address autodetection, NO_DEFAULT_POOLS (the operator
    makes the pools); Felix's health port 9099 (the operator's FelixConfiguration default);
    the lab's BGP timers from ``$CALICOLAB_BGP_TIMERS`` (docs/bgp.md)."""
    env = os.environ if env is None else env
    ns = node_settings(spec)
    return InstallSettings(etcd_endpoints=[], datastore="kubernetes", pool_cidr=ns.pool_cidr,
                           block_size=ns.block_size, ipip_mode=ns.ipip_mode, vxlan_mode=ns.vxlan_mode,
                           nat_outgoing=ns.nat_outgoing, ip_autodetection_method=ns.autodetection,
                           networking_backend=ns.backend, no_default_pools=True,
                           bgp_timers=env.get("CALICOLAB_BGP_TIMERS") or DEFAULT_BGP_TIMERS)


def objects(text: str) -> list[dict]:
    """The rendered documents as objects, in order."""
    return [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
