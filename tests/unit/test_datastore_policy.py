"""Policy kinds: Calico v3 shapes, defaults, storage names and validation naming the field."""

import copy
import json

import pytest

from datastore import errors
from datastore.resources import (
    GlobalNetworkPolicy,
    GlobalNetworkSet,
    NetworkPolicy,
    NetworkSet,
    Profile,
    from_document,
    kind_for_key,
    policy_name_from_storage,
    policy_storage_name,
    resolve_kind,
)
from datastore.rules import PortRange, parse_port

pytestmark = pytest.mark.unit

NP = {
    "apiVersion": "projectcalico.org/v3",
    "kind": "NetworkPolicy",
    "metadata": {"name": "allow-web", "namespace": "shop"},
    "spec": {
        "order": 100,
        "selector": "app == 'web'",
        "ingress": [{
            "action": "Allow",
            "protocol": "TCP",
            "source": {"selector": "role == 'client'", "namespaceSelector": "team == 'a'"},
            "destination": {"ports": [80, "8000:8080", "http"]},
        }],
        "egress": [{"action": "Deny", "protocol": "UDP", "destination": {"nets": ["10.0.0.0/8"],
                                                                         "notPorts": [53]}}],
    },
}


def load(doc):
    obj = from_document(copy.deepcopy(doc))
    obj.apply_defaults()
    obj.validate()
    return obj


def test_networkpolicy_shape_defaults_and_storage_name():
    np = load(NP)
    assert isinstance(np, NetworkPolicy)
    doc = np.to_dict()
    assert doc["spec"]["types"] == ["Ingress", "Egress"]  # defaulted from the rules present
    # Go encodes the non-pointer EntityRule structs even when empty
    assert doc["spec"]["egress"][0]["source"] == {}
    assert doc["spec"]["ingress"][0]["destination"] == {"ports": [80, "8000:8080", "http"]}
    # stored under the tier-prefixed name, shown without it
    assert np.key() == "/calico/resources/v3/projectcalico.org/networkpolicies/shop/default.allow-web"
    assert json.loads(np.encode_value())["metadata"]["name"] == "default.allow-web"
    back = NetworkPolicy.decode_value(np.key(), np.encode_value(), 7)
    assert back.metadata.name == "allow-web" and back.metadata.resource_version == "7"
    assert kind_for_key(np.key()) == (NetworkPolicy, "shop", "allow-web")
    assert np.storage_name() == "default.allow-web"


def test_k8s_policy_names_are_stored_unchanged():
    assert policy_storage_name("knp.default.deny") == "knp.default.deny"
    assert policy_name_from_storage("knp.default.deny") == "knp.default.deny"
    assert policy_storage_name("x") == "default.x" and policy_name_from_storage("default.x") == "x"
    doc = copy.deepcopy(NP)
    doc["metadata"]["name"] = "knp.default.allow-web"
    np = load(doc)
    assert np.key().endswith("/networkpolicies/shop/knp.default.allow-web")


@pytest.mark.parametrize(("ingress", "egress", "types"), [
    ([], [], ["Ingress"]), ([{"action": "Allow"}], [], ["Ingress"]),
    ([], [{"action": "Allow"}], ["Egress"]), ([{"action": "Allow"}], [{"action": "Allow"}], ["Ingress", "Egress"]),
])
def test_default_types_as_calico(ingress, egress, types):
    gnp = load({"kind": "GlobalNetworkPolicy", "metadata": {"name": "g"},
                "spec": {"ingress": ingress, "egress": egress}})
    assert gnp.spec.types == types


def mutate(path_value):
    doc = copy.deepcopy(NP)
    path, value = path_value
    cur = doc
    keys = path.split(".")
    for k in keys[:-1]:
        cur = cur[int(k)] if k.isdigit() else cur[k]
    last = keys[-1]
    if last.isdigit():
        cur[int(last)] = value
    else:
        cur[last] = value
    return doc


@pytest.mark.parametrize(("change", "field", "words"), [
    (("spec.selector", "app = 'web'"), "spec.selector", "invalid selector"),
    (("spec.ingress.0.action", "Accept"), "spec.ingress[0].action", "unknown action 'Accept'"),
    (("spec.ingress.0.destination.ports", [70000]), "spec.ingress[0].destination.ports[0]", "out of range"),
    (("spec.ingress.0.destination.ports", [0]), "spec.ingress[0].destination.ports[0]", "between 1 and 65535"),
    (("spec.ingress.0.destination.ports", ["90:80"]), "spec.ingress[0].destination.ports[0]", "greater than"),
    (("spec.ingress.0.destination.ports", ["Bad_Name"]), "spec.ingress[0].destination.ports[0]", "named port"),
    (("spec.ingress.0.protocol", "tcp"), "spec.ingress[0].protocol", "protocol name invalid"),
    (("spec.ingress.0.protocol", 0), "spec.ingress[0].protocol", "protocol number invalid"),
    (("spec.ingress.0.protocol", "ICMP"), "spec.ingress[0].destination.ports", "must set protocol"),
    (("spec.egress.0.destination.nets", ["10.0.0.0/33"]), "spec.egress[0].destination.nets[0]", "valid CIDR"),
    (("spec.egress.0.destination.nets", ["10.0.0.0/8", "fd00::/64"]), "spec.egress[0].destination.nets",
     "both IPv4 and IPv6"),
    (("spec.ingress.0.source.selector", "global()"), "spec.ingress[0].source.selector", "global()"),
    (("spec.ingress.0.source.namespaceSelector", "global() && a == 'b'"),
     "spec.ingress[0].source.namespaceSelector", "cannot be combined"),
    (("spec.types", ["Ingress", "Ingress"]), "spec.types", "more than once"),
    (("spec.types", ["ingress"]), "spec.types[0]", "Ingress or Egress"),
    (("metadata.name", "Allow_Web"), "metadata.name", "lower case"),
    (("metadata.name", "default.x"), "metadata.name", "lower case"),
    (("spec.tier", "security"), "spec.tier", "unknown field"),
    (("spec.ingress.0.icmp", {"code": 1}), "spec.ingress[0].icmp", "protocol to ICMP"),
])
def test_bad_policies_name_the_field(change, field, words):
    with pytest.raises(errors.ValidationError) as exc:
        load(mutate(change))
    assert field in exc.value.field, (exc.value.field, str(exc.value))
    assert words in str(exc.value)


def test_icmp_fields():
    rule = {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8, "code": 0}, "notICMP": {"type": 3}}
    gnp = load({"kind": "GlobalNetworkPolicy", "metadata": {"name": "icmp"}, "spec": {"ingress": [rule]}})
    assert gnp.to_dict()["spec"]["ingress"][0]["notICMP"] == {"type": 3}
    bad = copy.deepcopy(rule)
    bad["icmp"] = {"code": 1}
    with pytest.raises(errors.ValidationError, match="without an ICMP type"):
        load({"kind": "GlobalNetworkPolicy", "metadata": {"name": "icmp"}, "spec": {"ingress": [bad]}})
    bad["icmp"] = {"type": 255}
    with pytest.raises(errors.ValidationError, match="0-254"):
        load({"kind": "GlobalNetworkPolicy", "metadata": {"name": "icmp"}, "spec": {"ingress": [bad]}})


def test_gnp_name_is_a_dns_label_and_has_global_fields():
    gnp = load({"kind": "GlobalNetworkPolicy", "metadata": {"name": "deny-all"},
                "spec": {"order": 10.5, "namespaceSelector": "has(team)", "serviceAccountSelector": "role == 'x'",
                         "applyOnForward": True, "selector": "all()"}})
    assert isinstance(gnp, GlobalNetworkPolicy)
    assert gnp.to_dict()["spec"]["order"] == 10.5
    assert gnp.key() == "/calico/resources/v3/projectcalico.org/globalnetworkpolicies/default.deny-all"
    with pytest.raises(errors.ValidationError, match="metadata.name"):
        load({"kind": "GlobalNetworkPolicy", "metadata": {"name": "a.b"}, "spec": {}})
    with pytest.raises(errors.ValidationError, match="applyOnForward"):
        load({"kind": "GlobalNetworkPolicy", "metadata": {"name": "x"}, "spec": {"preDNAT": True}})


def test_profile_rules_and_labels():
    prof = load({"kind": "Profile", "metadata": {"name": "kns.shop"},
                 "spec": {"ingress": [{"action": "Allow"}], "egress": [{"action": "Allow"}],
                          "labelsToApply": {"pcns.projectcalico.org/name": "shop"}}})
    assert isinstance(prof, Profile)
    assert prof.to_dict()["spec"]["ingress"] == [{"action": "Allow", "destination": {}, "source": {}}]
    with pytest.raises(errors.ValidationError, match=r"labelsToApply\.bad key"):
        load({"kind": "Profile", "metadata": {"name": "p"}, "spec": {"labelsToApply": {"bad key": "v"}}})


def test_network_sets():
    ns = load({"kind": "NetworkSet", "metadata": {"name": "ext", "namespace": "shop", "labels": {"role": "db"}},
               "spec": {"nets": ["203.0.113.0/24"]}})
    assert isinstance(ns, NetworkSet) and ns.key().endswith("/networksets/shop/ext")
    gns = load({"kind": "GlobalNetworkSet", "metadata": {"name": "inet"}, "spec": {"nets": ["0.0.0.0/0"]}})
    assert isinstance(gns, GlobalNetworkSet)
    with pytest.raises(errors.ValidationError, match=r"spec\.nets\[0\]"):
        load({"kind": "GlobalNetworkSet", "metadata": {"name": "x"}, "spec": {"nets": ["nope"]}})
    with pytest.raises(errors.ValidationError, match="projectcalico.org/namespace"):
        load({"kind": "NetworkSet", "metadata": {"name": "x", "labels": {"projectcalico.org/namespace": "a"}},
              "spec": {}})


def test_kind_aliases_as_calicoctl():
    for alias in ("networkpolicy", "networkpolicies", "policy", "np", "pol", "pols"):
        assert resolve_kind(alias) is NetworkPolicy
    for alias in ("globalnetworkpolicy", "gnp", "gnps"):
        assert resolve_kind(alias) is GlobalNetworkPolicy
    assert resolve_kind("netsets") is NetworkSet and resolve_kind("gnetsets") is GlobalNetworkSet


def test_parse_port_forms():
    assert parse_port(80, "p") == PortRange(80, 80)
    assert parse_port("80", "p") == PortRange(80, 80)
    assert parse_port("80:90", "p") == PortRange(80, 90)
    assert parse_port("http", "p") == PortRange(name="http")
    assert str(PortRange(80, 90)) == "80:90" and str(PortRange(80, 80)) == "80"


def test_services_and_http_only_where_calico_allows_them():
    for rules, words in ((("ingress", {"action": "Allow", "destination": {"services": {"name": "a"}}}),
                          "not allowed in ingress rule destination"),
                         (("egress", {"action": "Allow", "source": {"services": {"name": "a"}}}),
                          "not allowed in egress rule source"),
                         (("egress", {"action": "Allow", "http": {"methods": ["GET"]}}), "not allowed in egress")):
        with pytest.raises(errors.ValidationError, match=words):
            load({"kind": "NetworkPolicy", "metadata": {"name": "p"}, "spec": {rules[0]: [rules[1]]}})
    # a profile's rules are not checked by direction (Calico has no such check for profiles)
    load({"kind": "Profile", "metadata": {"name": "p"},
          "spec": {"ingress": [{"action": "Allow", "destination": {"services": {"name": "a", "namespace": "b"}}}]}})
