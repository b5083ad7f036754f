"""Unit tests of the pod-derived rules: labels, profiles, pool and IP annotations."""

from __future__ import annotations

import pytest

from cni import k8s
from cni.spec import CNIError

pytestmark = pytest.mark.unit

POD = {
    "metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"},
                 "annotations": {"cni.projectcalico.org/ipv4pools": '["blue-pool"]'}},
    "spec": {"serviceAccountName": "frontend",
             "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 80},
                                                    {"containerPort": 81},
                                                    {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
}


def test_pod_parsing_labels_and_profiles():
    pod = k8s.parse_pod(POD)
    assert pod.service_account == "frontend"
    assert pod.ports == [{"name": "http", "protocol": "TCP", "port": 80}, {"name": "dns", "protocol": "UDP", "port": 53}]
    assert k8s.wep_labels(pod, "shop") == {
        "app": "web", "projectcalico.org/namespace": "shop", "projectcalico.org/orchestrator": "k8s",
        "projectcalico.org/serviceaccount": "frontend"}
    assert k8s.profiles("shop", pod) == ["kns.shop", "ksa.shop.frontend"]
    assert k8s.profiles("shop", None) == ["kns.shop"]
    assert k8s.wep_labels(None, "x") == {"projectcalico.org/namespace": "x", "projectcalico.org/orchestrator": "k8s"}


def test_pool_precedence_pod_over_namespace_over_netconf():
    ns_ann = {k8s.ANN_IPV4POOLS: '["10.9.0.0/16"]'}
    assert k8s.requested_pools(k8s.parse_pod(POD).annotations, ns_ann, ["netconf-pool"]) == ["blue-pool"]
    assert k8s.requested_pools({}, ns_ann, ["netconf-pool"]) == ["10.9.0.0/16"]
    assert k8s.requested_pools({}, {}, ["netconf-pool"]) == ["netconf-pool"]
    assert k8s.requested_pools({}, {}, []) == []


@pytest.mark.parametrize("value", ["not json", '{"a": 1}', "[1]", '[""]'])
def test_bad_pool_annotation_is_error_7(value):
    with pytest.raises(CNIError) as err:
        k8s.requested_pools({k8s.ANN_IPV4POOLS: value}, {}, [])
    assert err.value.code == 7 and k8s.ANN_IPV4POOLS in err.value.msg


def test_ip_addrs_annotation():
    assert k8s.requested_ips({k8s.ANN_IPADDRS: '["192.168.5.5"]'}) == ["192.168.5.5"]
    assert k8s.requested_ips({}) == []
    with pytest.raises(CNIError) as err:
        k8s.requested_ips({k8s.ANN_IPADDRS: '["192.168.5.500"]'})
    assert "192.168.5.500" in err.value.msg
