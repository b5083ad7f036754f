"""Calico's derived names: host veth names and WorkloadEndpoint names (calico.md section 1)."""

from __future__ import annotations

import hashlib


def veth_name_for_workload(namespace: str, pod: str, prefix: str = "cali") -> str:
    """``cali`` + the first 11 hex digits of sha1("<namespace>.<pod>") (15 characters)."""
    digest = hashlib.sha1(f"{namespace}.{pod}".encode()).hexdigest()
    return f"{prefix}{digest[:11]}"


def veth_name_for_container(container_id: str, prefix: str = "cali") -> str:
    """``cali`` + containerID[:11], used when no Kubernetes pod is named."""
    return f"{prefix}{container_id[:11]}"


def _escape(segment: str) -> str:
    return segment.replace("-", "--")


def workload_endpoint_name(node: str, orchestrator: str, workload: str, endpoint: str) -> str:
    """``<node>-<orch>-<workload>-<endpoint>`` with ``-`` doubled inside each segment.

    ``workload_endpoint_name("node1", "k8s", "pod-1", "eth0") == "node1-k8s-pod--1-eth0"``.
    """
    return "-".join(_escape(s) for s in (node, orchestrator, workload, endpoint))
