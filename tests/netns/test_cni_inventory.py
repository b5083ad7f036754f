"""The CNI plugin refuses what it cannot honour (issue 20): a netconf key or a pod
annotation calicolab does not implement fails ADD with an error naming it, and nothing is
left behind (no veth, no WorkloadEndpoint, no address)."""

from __future__ import annotations

import pytest

from tests.netns import cni_support

pytestmark = pytest.mark.netns
cni_node = cni_support.cni_node  # module-wide node netns + etcd (fixture)
node = cni_support.node  # that node, emptied, with the default pool (fixture)
node_api = cni_support.node_api  # an API server on that node's etcd (fixture)


def _left(node) -> tuple[list, list]:
    with node.client() as c:
        return c.list("WorkloadEndpoint"), [b for b in c.list("IPAMBlock") if any(
            a is not None for a in b.spec.allocations)]


def test_unimplemented_annotation_and_netconf_key_fail_add_by_name(node, node_api, netns):
    pod_ns = netns("cniv")
    node_api.call(node_api.kube.create, {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": "fip", "namespace": "default",
        "annotations": {"cni.projectcalico.org/floatingIPs": '["203.0.113.9"]'}},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]}}, "default")
    res = node.run("ADD", node.conf(kubernetes={"kubeconfig": node_api.kubeconfig}), cid="inv1", netns=f"/run/netns/{pod_ns}", pod=("default", "fip"))
    assert res.rc != 0 and res.json["code"] == 7, res.stdout + res.stderr
    assert "pod annotation cni.projectcalico.org/floatingIPs is not supported by calicolab" in res.json["msg"]
    assert "cali" not in node.ip("-o", "link", "show")
    assert _left(node) == ([], [])

    conf = node.conf(log_file_max_size=100)
    res = node.run("ADD", conf, cid="inv2", netns=f"/run/netns/{pod_ns}", pod=("default", "plain"))
    assert res.rc != 0 and res.json["code"] == 7
    assert "'log_file_max_size' = 100 is not supported by calicolab: the log file is not rotated" in res.json["msg"]
    assert _left(node) == ([], [])
