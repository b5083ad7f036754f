"""testbed.lab.workloads: the objects `kubectl apply` creates for a topology's workloads (pure)."""

from __future__ import annotations

import json

import pytest

from kubeclient.client import BUILTIN
from testbed.lab import workloads

pytestmark = pytest.mark.unit

DEPLOYMENT = {"apiVersion": "apps/v1", "kind": "Deployment",
              "metadata": {"name": "nginx", "annotations": {"foo": "bar"}},
              "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "zz"}},
                       "template": {"metadata": {"labels": {"app": "zz"}},
                                    "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}}


def test_last_applied_is_what_kubectl_writes():
    # byte for byte what kubectl v1.3x wrote for this document (a lab, 2026-12-03): keys
    # sorted, no spaces, HTML characters as they are, namespace filled, an empty annotations
    # map when the document had none, a trailing newline
    cm = {"apiVersion": "v1", "kind": "ConfigMap",
          "metadata": {"name": "zz-test", "labels": {"b": "2", "a": "1"}}, "data": {"k": "v <&>", "a": "x"}}
    objs = workloads.plan([cm, DEPLOYMENT], BUILTIN)
    assert objs is not None
    assert objs[0]["metadata"]["annotations"][workloads.LAST_APPLIED] == (
        '{"apiVersion":"v1","data":{"a":"x","k":"v <&>"},"kind":"ConfigMap","metadata":{"annotations":{},'
        '"labels":{"a":"1","b":"2"},"name":"zz-test","namespace":"default"}}\n')
    assert objs[1]["metadata"]["annotations"][workloads.LAST_APPLIED] == (
        '{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"annotations":{"foo":"bar"},"name":"nginx",'
        '"namespace":"default"},"spec":{"replicas":0,"selector":{"matchLabels":{"app":"zz"}},"template":'
        '{"metadata":{"labels":{"app":"zz"}},"spec":{"containers":[{"image":"busybox","name":"c"}]}}}}\n')
    assert objs[1]["metadata"]["annotations"]["foo"] == "bar"
    assert objs[1]["metadata"]["namespace"] == "default"
    assert DEPLOYMENT["metadata"] == {"name": "nginx", "annotations": {"foo": "bar"}}  # the input is kept


def test_plan_keeps_order_and_namespaces():
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "lab-probe"}}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "lab-probe"},
           "spec": {"containers": [{"name": "c", "image": "nginx"}]}}
    objs = workloads.plan([ns, pod], BUILTIN, default_namespace="other")
    assert objs is not None
    assert [o["kind"] for o in objs] == ["Namespace", "Pod"]
    assert "namespace" not in objs[0]["metadata"]  # cluster-scoped
    assert objs[1]["metadata"]["namespace"] == "lab-probe"
    assert json.loads(objs[1]["metadata"]["annotations"][workloads.LAST_APPLIED])["metadata"]["namespace"] \
        == "lab-probe"
    assert [workloads.describe(o) for o in objs] == ["namespace/lab-probe created", "pod/web created"]
    assert workloads.describe(workloads.plan([DEPLOYMENT], BUILTIN)[0]) == "deployment.apps/nginx created"


def test_an_old_last_applied_annotation_is_replaced():
    doc = {"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "x", "annotations": {workloads.LAST_APPLIED: "stale"}}}
    (obj,) = workloads.plan([doc], BUILTIN)
    assert "stale" not in obj["metadata"]["annotations"][workloads.LAST_APPLIED]
    assert '"annotations":{}' in obj["metadata"]["annotations"][workloads.LAST_APPLIED]


@pytest.mark.parametrize("doc", [
    {"apiVersion": "crd.projectcalico.org/v1", "kind": "NetworkPolicy", "metadata": {"name": "p"}},  # not built in
    {"apiVersion": "apps/v1beta1", "kind": "Deployment", "metadata": {"name": "d"}},  # another version
    {"apiVersion": "v1", "kind": "List", "items": []},  # kubectl flattens it
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "p-"}},  # kubectl refuses it
    {"apiVersion": "v1", "kind": "Pod", "metadata": {}},
    "not a mapping",
])
def test_what_needs_the_real_kubectl(doc):
    ok = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}
    assert workloads.plan([ok, doc], BUILTIN) is None


class FakeClient:
    """Records creates; raises on the name given."""

    def __init__(self, fail: str = ""):
        self.made: list[tuple[str, str]] = []
        self.fail = fail

    def create(self, obj: dict, field_manager: str = "") -> dict:
        from kubeclient import Invalid

        if obj["metadata"]["name"] == self.fail:
            raise Invalid(422, "Invalid", "invalid")
        self.made.append((obj["metadata"]["name"], field_manager))
        return obj


def test_create_in_order_with_kubectls_field_manager():
    objs = workloads.plan([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}, DEPLOYMENT],
                          BUILTIN)
    client = FakeClient()
    assert workloads.create(client, objs) == ["namespace/a created", "deployment.apps/nginx created"]
    assert client.made == [("a", "kubectl-client-side-apply"), ("nginx", "kubectl-client-side-apply")]
    from kubeclient import KubeError

    with pytest.raises(KubeError):
        workloads.create(FakeClient(fail="a"), objs)
