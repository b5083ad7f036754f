"""Kubernetes object model: validation, defaults, keys, selectors."""

from __future__ import annotations

import pytest

from testbed.k8s.errors import Invalid
from testbed.k8s.model import (
    kind_for,
    kind_of_key,
    label_selector_matches,
    parse_label_selector,
    registry_key,
    validate,
)

pytestmark = pytest.mark.unit


def pod(**spec) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
            "spec": {"containers": [{"name": "c", "image": "nginx"}], **spec}}


def test_pod_gets_the_api_server_defaults():
    obj = validate(pod())
    assert obj["metadata"]["namespace"] == "default"
    assert obj["spec"]["restartPolicy"] == "Always"


@pytest.mark.parametrize("mutate, field, text", [
    (lambda o: o["spec"].update(bogus=1), "spec.bogus", 'unknown field "bogus"'),
    (lambda o: o["spec"]["containers"][0].pop("image"), "spec.containers[0].image", "Required value"),
    (lambda o: o["spec"].update(containers=[]), "spec.containers", "at least one container"),
    (lambda o: o["metadata"].update(name="Web_1"), "metadata.name", "RFC 1123"),
    (lambda o: o["spec"]["containers"][0].update(ports=[{"containerPort": 70000}]),
     "spec.containers[0].ports[0].containerPort", "between 1 and 65535"),
    (lambda o: o["spec"].update(nodeName=5), "spec.nodeName", "expected a string"),
    (lambda o: o.update(apiVersion="apps/v1"), "apiVersion", 'needs apiVersion "v1"'),
    (lambda o: o["metadata"].update(labels={"app": 1}), "metadata.labels.app", "expected a string"),
    (lambda o: o["spec"].update(restartPolicy="Sometimes"), "spec.restartPolicy", "Unsupported value"),
])
def test_bad_pods_name_the_field(mutate, field, text):
    obj = pod()
    mutate(obj)
    with pytest.raises(Invalid) as err:
        validate(obj, "pods.yaml")
    assert err.value.field == field
    assert text in str(err.value) and str(err.value).startswith("pods.yaml: ")


def test_unknown_kind_and_missing_kind():
    with pytest.raises(Invalid, match='no matches for kind "Gadget"'):
        validate({"apiVersion": "v1", "kind": "Gadget", "metadata": {"name": "x"}})
    with pytest.raises(Invalid, match="Kind' is missing"):
        validate({"apiVersion": "v1", "metadata": {"name": "x"}})


def test_deployment_selector_must_match_template():
    d = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
         "spec": {"selector": {"matchLabels": {"app": "web"}},
                  "template": {"metadata": {"labels": {"app": "other"}},
                               "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}
    with pytest.raises(Invalid, match="selector` does not match template `labels`"):
        validate(d)
    d["spec"]["template"]["metadata"]["labels"] = {"app": "web"}
    assert validate(d)["spec"]["replicas"] == 1


def test_service_defaults_and_only_cluster_ip():
    s = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
         "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}}
    out = validate(s)
    assert out["spec"]["type"] == "ClusterIP"
    assert out["spec"]["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 80}]
    s["spec"]["type"] = "LoadBalancer"
    with pytest.raises(Invalid, match="spec.type"):
        validate(s)


def test_registry_keys_follow_kubernetes():
    assert registry_key("Pod", "web", "default") == "/registry/pods/default/web"
    assert registry_key("Node", "k8s-w0") == "/registry/minions/k8s-w0"
    assert registry_key("Service", "web", "kube-system") == "/registry/services/specs/kube-system/web"
    assert registry_key("Endpoints", "web", "default") == "/registry/services/endpoints/default/web"
    assert registry_key("Deployment", "web", "default") == "/registry/deployments/default/web"
    assert kind_of_key("/registry/services/endpoints/default/web") == "Endpoints"
    assert kind_of_key("/registry/ranges/serviceips/10.96.0.1") is None


def test_kind_aliases_like_kubectl():
    assert kind_for("po").kind == "Pod"
    assert kind_for("deploy").kind == "Deployment"
    assert kind_for("svc").kind == "Service"
    assert kind_for("ep").kind == "Endpoints"
    assert kind_for("no").kind == "Node"
    assert kind_for("ns").kind == "Namespace"
    with pytest.raises(Invalid, match='resource type "gizmos"'):
        kind_for("gizmos")


def test_label_selectors():
    terms = parse_label_selector("app=web,tier!=db,env,!canary")
    assert label_selector_matches(terms, {"app": "web", "env": "x"})
    assert not label_selector_matches(terms, {"app": "web", "env": "x", "tier": "db"})
    assert not label_selector_matches(terms, {"app": "web"})
    assert not label_selector_matches(terms, {"app": "web", "env": "x", "canary": "1"})
