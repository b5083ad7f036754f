"""A Kubernetes NetworkPolicy is never accepted silently (issue 20): the API server answers
with a warning that the real kubectl prints, naming it and saying it has no effect."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.etcd


def test_real_kubectl_shows_the_api_servers_warning_for_a_network_policy(apiserver):
    netpol = ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all, namespace: default}\n"
              "spec: {podSelector: {}, policyTypes: [Ingress]}\n")
    res = apiserver.kubectl("apply", "-f", "-", input=netpol)
    assert "networkpolicy.networking.k8s.io/deny-all created" in res.stdout, res.stderr
    assert "Warning: NetworkPolicy deny-all has no effect in calicolab: policy is not enforced" in res.stderr
    cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: default}\ndata: {a: b}\n"
    assert "Warning" not in apiserver.kubectl("apply", "-f", "-", input=cm).stderr
