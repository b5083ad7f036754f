"""Names Calico derives for a workload: host veth, WorkloadEndpoint, IPAM handle (pure logic)."""

from __future__ import annotations

import hashlib

DEFAULT_PREFIX = "cali"


def interface_prefix(env_value: str | None) -> str:
    """The host-side interface prefix: first entry of ``FELIX_INTERFACEPREFIX`` (default ``cali``)."""
    if not env_value:
        return DEFAULT_PREFIX
    first = env_value.split(",")[0].strip()
    return first or DEFAULT_PREFIX


def veth_name(namespace: str | None, pod: str | None, container_id: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Host veth name: prefix + sha1("<ns>.<pod>")[:11]; prefix + containerID[:11] without k8s args."""
    if namespace and pod:
        digest = hashlib.sha1(f"{namespace}.{pod}".encode()).hexdigest()
        return (prefix + digest[:11])[:15]
    return (prefix + container_id[:11])[:15]


def _escape(segment: str) -> str:
    return segment.replace("-", "--")


def wep_name(node: str, pod: str | None, container_id: str, endpoint: str) -> str:
    """WorkloadEndpoint name: ``<node>-k8s-<pod>-<iface>`` (or ``<node>-cni-<cid>-<iface>``), '-' doubled."""
    if pod:
        return "-".join([_escape(node), "k8s", _escape(pod), _escape(endpoint)])
    return "-".join([_escape(node), "cni", _escape(container_id), _escape(endpoint)])


def handle_id(network_name: str, container_id: str) -> str:
    """IPAM handle of a pod's addresses: ``<netconf.name>.<containerID>``."""
    return f"{network_name}.{container_id}"
