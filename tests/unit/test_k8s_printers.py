"""kubectl output: tables, custom-columns (the walkthrough's), names, ages."""

from __future__ import annotations

import time

import pytest

from testbed.k8s.errors import Invalid
from testbed.k8s.podstatus import node_object
from testbed.k8s.printers import (
    custom_columns,
    human_duration,
    jsonpath,
    name_of,
    parse_path,
    pod_status,
    table,
)

pytestmark = pytest.mark.unit

NOW = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
WALKTHROUGH = ("NAME:.metadata.name,VERSION:.status.nodeInfo.kubeletVersion,"
               "INTERNAL-IP:.status.addresses[0].address,POD-CIDR:.spec.podCIDR")


def node(name: str, ip: str, ready: bool, cidr: str | None, control_plane: bool = False) -> dict:
    labels = {"node-role.kubernetes.io/control-plane": ""} if control_plane else {}
    n = node_object(name, ip, labels, [], {"kubeletVersion": "v1.28.15"}, {}, ready, NOW)
    n["metadata"]["creationTimestamp"] = NOW
    if cidr:
        n["spec"]["podCIDR"] = cidr
    return n


def test_walkthrough_custom_columns():
    nodes = [node("k8s-m", "172.30.0.10", True, "192.168.0.0/24", True),
             node("k8s-w0", "172.30.0.11", False, None)]
    assert custom_columns(WALKTHROUGH, nodes) == (
        "NAME     VERSION    INTERNAL-IP   POD-CIDR\n"
        "k8s-m    v1.28.15   172.30.0.10   192.168.0.0/24\n"
        "k8s-w0   v1.28.15   172.30.0.11   <none>\n"
    )


def test_node_table_status_roles_version():
    out = table("Node", [node("k8s-m", "172.30.0.10", True, None, True), node("k8s-w0", "172.30.0.11", False, None)])
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert lines[1].split()[:3] == ["k8s-m", "Ready", "control-plane"]
    assert lines[2].split()[:3] == ["k8s-w0", "NotReady", "<none>"]
    assert lines[1].split()[4] == "v1.28.15"
    wide = table("Node", [node("k8s-m", "172.30.0.10", True, None)], wide=True).splitlines()
    assert "INTERNAL-IP" in wide[0] and "172.30.0.10" in wide[1]


def pod(name: str, phase: str, waiting: str | None = None, deleting: bool = False) -> dict:
    state = {"waiting": {"reason": waiting}} if waiting else {"running": {"startedAt": NOW}}
    p = {"kind": "Pod", "metadata": {"name": name, "namespace": "default", "creationTimestamp": NOW},
         "spec": {"nodeName": "k8s-w0", "containers": [{"name": "c", "image": "nginx"}]},
         "status": {"phase": phase, "podIP": "192.168.1.5",
                    "containerStatuses": [{"name": "c", "ready": not waiting, "restartCount": 2, "state": state}]}}
    if deleting:
        p["metadata"]["deletionTimestamp"] = NOW
    return p


def test_pod_table_and_status_column():
    pods = [pod("a", "Running"), pod("b", "Pending", "ImagePullBackOff"), pod("c", "Running", deleting=True)]
    assert [pod_status(p) for p in pods] == ["Running", "ImagePullBackOff", "Terminating"]
    lines = table("Pod", pods, wide=True, all_namespaces=True).splitlines()
    assert lines[0].split() == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE",
                                "NOMINATED", "NODE", "READINESS", "GATES"]
    assert lines[1].split()[:5] == ["default", "a", "1/1", "Running", "2"]
    assert lines[2].split()[2:4] == ["0/1", "ImagePullBackOff"]
    assert "192.168.1.5" in lines[1] and "k8s-w0" in lines[1]


def test_table_columns_are_padded_like_tabwriter():
    out = table("Namespace", [{"kind": "Namespace", "metadata": {"name": "default", "creationTimestamp": NOW},
                               "status": {"phase": "Active"}}])
    assert out.splitlines()[0] == "NAME      STATUS   AGE"
    assert out.splitlines()[1].startswith("default   Active   ")


def test_service_and_endpoints_rows():
    svc = {"kind": "Service", "metadata": {"name": "web", "creationTimestamp": NOW},
           "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.20", "selector": {"app": "web"},
                    "ports": [{"port": 80, "protocol": "TCP"}]}}
    line = table("Service", [svc], wide=True).splitlines()[1].split()
    assert line[:5] == ["web", "ClusterIP", "10.96.0.20", "<none>", "80/TCP"] and line[-1] == "app=web"
    ep = {"kind": "Endpoints", "metadata": {"name": "web", "creationTimestamp": NOW},
          "subsets": [{"addresses": [{"ip": f"192.168.1.{i}"} for i in range(1, 6)], "ports": [{"port": 80}]}]}
    assert table("Endpoints", [ep]).splitlines()[1].split()[1:5] == [
        "192.168.1.1:80,192.168.1.2:80,192.168.1.3:80", "+", "2", "more..."]


def test_paths_and_values():
    assert parse_path(".status.addresses[0].address") == ["status", "addresses", 0, "address"]
    assert parse_path("{.items[*].metadata.name}") == ["items", "*", "metadata", "name"]
    assert parse_path(".metadata.labels['app.kubernetes.io/name']") == ["metadata", "labels", "app.kubernetes.io/name"]
    with pytest.raises(Invalid, match="unexpected path string"):
        parse_path(".a..b")
    objs = [{"metadata": {"name": "x", "labels": {"a": "1", "b": "2"}}, "l": [1, 2]}]
    assert custom_columns("L:.metadata.labels,ALL:.l[*],N:.l", objs).splitlines()[1].split() == [
        "map[a:1", "b:2]", "1,2", "[1", "2]"]
    assert jsonpath("{.items[*].metadata.name}", {"items": objs * 2}) == "x x"


def test_names_and_durations():
    assert name_of({"kind": "Deployment", "metadata": {"name": "web"}}) == "deployment.apps/web"
    assert name_of({"kind": "Pod", "metadata": {"name": "web"}}) == "pod/web"
    assert [human_duration(s) for s in (5, 119, 130, 600, 3 * 3600 + 60, 30 * 3600, 3 * 86400 + 3600, 400 * 86400)] == [
        "5s", "119s", "2m10s", "10m", "3h1m", "30h", "3d1h", "400d"]
