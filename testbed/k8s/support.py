"""Kubernetes kinds Calico acts on, and whether calicolab does (docs/inventory.md): the API
server warns when an object of a kind calicolab does not act on is written."""

from __future__ import annotations

from datastore.inventory import Support, works

CALICO_SUPPORT: dict[str, Support] = {
    "NetworkPolicy": works("tests/lab/test_policy_matrix.py::test_policy_matrix",
                           "tests/etcd/test_kubecontrollers_objects.py::"
                           "test_profiles_policies_and_endpoint_labels_follow_kubernetes",
                           note="kube-controllers' policy controller converts it to the Calico NetworkPolicy "
                                "knp.default.<name> (etcd mode); Felix enforces it (docs/policy.md)"),
}


def calico_warnings(kind: str, name: str) -> list[str]:
    """The warnings the API server returns for a ``kind`` object calicolab does not act on."""
    support = CALICO_SUPPORT.get(kind)
    if support is None or support.implemented:
        return []
    return [f"{kind} {name} has no effect in calicolab: {support.note} (see docs/inventory.md)"]
