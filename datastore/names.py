"""Calico's derived names: host veth names, WorkloadEndpoint names, IPAM handle IDs
(calico.md section 1). Pure logic; the one place the project computes them."""

from __future__ import annotations

import hashlib

DEFAULT_PREFIX = "cali"


def interface_prefix(env_value: str | None) -> str:
    """The host-side interface prefix: first entry of ``FELIX_INTERFACEPREFIX`` (default ``cali``)."""
    if not env_value:
        return DEFAULT_PREFIX
    first = env_value.split(",")[0].strip()
    return first or DEFAULT_PREFIX


def veth_name(namespace: str | None, pod: str | None, container_id: str = "",
              prefix: str = DEFAULT_PREFIX) -> str:
    """Host veth name: ``prefix`` + the first 11 hex digits of sha1("<namespace>.<pod>")
    (``VethNameForWorkload``); without a pod (other orchestrators) ``prefix`` +
    containerID[:11]. At most 15 characters (IFNAMSIZ)."""
    if namespace and pod:
        digest = hashlib.sha1(f"{namespace}.{pod}".encode()).hexdigest()
        return (prefix + digest[:11])[:15]
    return (prefix + container_id[:11])[:15]


def _escape(segment: str) -> str:
    return segment.replace("-", "--")


def workload_endpoint_name(node: str, orchestrator: str, workload: str, endpoint: str) -> str:
    """``<node>-<orch>-<workload>-<endpoint>`` with ``-`` doubled inside each segment.

    ``workload_endpoint_name("node1", "k8s", "pod-1", "eth0") == "node1-k8s-pod--1-eth0"``;
    the CNI plugin uses orchestrator ``k8s`` with the pod name, or ``cni`` with the
    container ID when no pod is named.
    """
    return "-".join(_escape(s) for s in (node, orchestrator, workload, endpoint))


def handle_id(network_name: str, container_id: str) -> str:
    """IPAM handle of a pod's addresses: ``<netconf.name>.<containerID>``."""
    return f"{network_name}.{container_id}"
