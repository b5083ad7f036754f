"""The API server warns about Kubernetes kinds calicolab does not act on (issue 20); a
NetworkPolicy is enforced since issue 13, so applying one prints no warning."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.etcd


def test_real_kubectl_applies_a_network_policy_without_a_warning(apiserver):
    netpol = ("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-all, namespace: default}\n"
              "spec: {podSelector: {}, policyTypes: [Ingress]}\n")
    res = apiserver.kubectl("apply", "-f", "-", input=netpol)
    assert "networkpolicy.networking.k8s.io/deny-all created" in res.stdout, res.stderr
    assert "Warning" not in res.stderr, res.stderr
    cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: default}\ndata: {a: b}\n"
    assert "Warning" not in apiserver.kubectl("apply", "-f", "-", input=cm).stderr
