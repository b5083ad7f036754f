"""Kubernetes -> Calico conversion (libcalico-go k8s conversion, calico.md section 6)."""

import pytest

from datastore.conversion import (
    k8s_networkpolicy_to_calico,
    k8s_selector,
    namespace_to_profile,
    pod_is_calico_endpoint,
    pod_labels,
    pod_profiles,
    serviceaccount_to_profile,
    simplify_ports,
)
from datastore.rules import PortRange

pytestmark = pytest.mark.unit


def np(spec, name="allow-web", ns="default"):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def test_selectors():
    assert k8s_selector({}, pod=True) == "projectcalico.org/orchestrator == 'k8s'"
    assert k8s_selector(None, pod=True) == "projectcalico.org/orchestrator == 'k8s'"
    assert k8s_selector(None, pod=False) == ""
    assert k8s_selector({}, pod=False) == "all()"
    sel = {"matchLabels": {"z": "1", "app": "web"},
           "matchExpressions": [{"key": "t", "operator": "In", "values": ["a", "b"]},
                                {"key": "u", "operator": "NotIn", "values": ["c"]},
                                {"key": "v", "operator": "Exists"}, {"key": "w", "operator": "DoesNotExist"}]}
    assert k8s_selector(sel, pod=True) == (
        "projectcalico.org/orchestrator == 'k8s' && app == 'web' && z == '1' && t in { 'a', 'b' } && "
        "u not in { 'c' } && has(v) && ! has(w)")


def test_policy_conversion_as_calico():
    pol, problems = k8s_networkpolicy_to_calico(np({
        "podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}},
                               "namespaceSelector": {"matchLabels": {"team": "a"}}},
                              {"ipBlock": {"cidr": "10.1.2.3/8", "except": ["10.2.0.0/16"]}}],
                     "ports": [{"port": 80}, {"port": 81}, {"protocol": "UDP", "port": 53},
                               {"port": "http"}, {"port": 8000, "endPort": 8080}]}],
    }))
    assert not problems
    d = pol.to_dict()
    assert d["metadata"] == {"name": "knp.default.allow-web", "namespace": "default"}
    assert d["spec"]["order"] == 1000 and d["spec"]["types"] == ["Ingress"]
    assert d["spec"]["selector"] == "projectcalico.org/orchestrator == 'k8s' && app == 'web'"
    rules = d["spec"]["ingress"]
    # protocols sorted (TCP, UDP) x peers; TCP ports unioned and adjacent numbers merged
    assert [(r["protocol"], r["destination"]) for r in rules] == [
        ("TCP", {"ports": ["http", "80:81", "8000:8080"]}), ("TCP", {"ports": ["http", "80:81", "8000:8080"]}),
        ("UDP", {"ports": [53]}), ("UDP", {"ports": [53]})]
    assert rules[0]["source"] == {"selector": "projectcalico.org/orchestrator == 'k8s' && role == 'client'",
                                  "namespaceSelector": "team == 'a'"}
    assert rules[1]["source"] == {"nets": ["10.0.0.0/8"], "notNets": ["10.2.0.0/16"]}
    assert all(r["action"] == "Allow" for r in rules)


def test_default_deny_egress_and_empty_peers():
    pol, _ = k8s_networkpolicy_to_calico(np({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))
    assert pol.spec.types == ["Ingress", "Egress"] and not pol.spec.ingress and not pol.spec.egress
    assert pol.spec.selector == "projectcalico.org/orchestrator == 'k8s'"
    pol, _ = k8s_networkpolicy_to_calico(np({"podSelector": {}, "policyTypes": ["Egress"],
                                             "egress": [{"to": [{"namespaceSelector": {}}]}, {}]}))
    assert pol.spec.types == ["Egress"]
    e0, e1 = pol.to_dict()["spec"]["egress"]
    assert e0 == {"action": "Allow", "source": {}, "destination": {
        "selector": "projectcalico.org/orchestrator == 'k8s'", "namespaceSelector": "all()"}}
    assert e1 == {"action": "Allow", "source": {}, "destination": {}}  # allow all egress


def test_bad_rules_are_dropped_with_a_message():
    pol, problems = k8s_networkpolicy_to_calico(np({"podSelector": {}, "ingress": [
        {"from": [{"ipBlock": {"cidr": "bogus"}}]}, {"ports": [{"port": 80}]}]}))
    assert len(pol.spec.ingress) == 1 and problems and "ingress[0]" in problems[0]


def test_profiles():
    prof = namespace_to_profile({"metadata": {"name": "shop", "labels": {"team": "a"}}})
    assert prof.to_dict() == {"apiVersion": "projectcalico.org/v3", "kind": "Profile", "metadata": {"name": "kns.shop"},
                              "spec": {"ingress": [{"action": "Allow", "source": {}, "destination": {}}],
                                       "egress": [{"action": "Allow", "source": {}, "destination": {}}],
                                       "labelsToApply": {"pcns.team": "a", "pcns.projectcalico.org/name": "shop"}}}
    sa = serviceaccount_to_profile({"metadata": {"name": "api", "namespace": "shop", "labels": {"x": "y"}}})
    assert sa.to_dict()["metadata"]["name"] == "ksa.shop.api"
    assert sa.to_dict()["spec"] == {"labelsToApply": {"pcsa.x": "y", "pcsa.projectcalico.org/name": "api"}}


def test_pods():
    assert pod_labels({"app": "web"}, "shop", "api") == {
        "app": "web", "projectcalico.org/namespace": "shop", "projectcalico.org/orchestrator": "k8s",
        "projectcalico.org/serviceaccount": "api"}
    assert "projectcalico.org/serviceaccount" not in pod_labels({}, "shop", "x" * 63)
    assert pod_profiles("shop", "api") == ["kns.shop", "ksa.shop.api"] and pod_profiles("shop", "") == ["kns.shop"]
    pod = {"spec": {"nodeName": "w0"}, "status": {"podIP": "10.0.0.1"}}
    assert pod_is_calico_endpoint(pod)
    assert not pod_is_calico_endpoint({"spec": {"nodeName": "w0", "hostNetwork": True},
                                       "status": {"podIP": "10.0.0.1"}})
    assert not pod_is_calico_endpoint({"spec": {}, "status": {"podIP": "10.0.0.1"}})


def test_simplify_ports():
    assert simplify_ports([PortRange(80, 80), PortRange(82, 82), PortRange(81, 81), PortRange(name="x")]) == [
        PortRange(name="x"), PortRange(80, 82)]
    assert simplify_ports([PortRange(80, 80)]) == [PortRange(80, 80)]
