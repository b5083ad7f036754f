"""calicoctl with the policy kinds against a real etcd: apply/get/delete/patch, tables, bad input
(nothing written), Kubernetes-owned policies refused, and ``patch`` for every kind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from datastore import Client
from tests.etcd.test_calicoctl_cli import ctl

pytestmark = pytest.mark.etcd

NAMESPACES = """\
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: kns.shop}
spec:
  ingress: [{action: Allow}]
  egress: [{action: Allow}]
  labelsToApply: {pcns.projectcalico.org/name: shop, pcns.team: a}
"""

POLICIES = """\
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: allow-web, namespace: shop}
spec:
  order: 100
  selector: app == 'web'
  ingress:
  - action: Allow
    protocol: TCP
    source: {selector: role == 'client'}
    destination: {ports: [80, "8000:8080", http]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-db}
spec:
  order: 10.5
  selector: role == 'db'
  egress: [{action: Deny, protocol: UDP, destination: {nets: [10.0.0.0/8]}}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkSet
metadata: {name: inet, labels: {role: internet}}
spec: {nets: [203.0.113.0/24]}
"""


@pytest.fixture
def ep(etcd_endpoints, tmp_path: Path):
    (tmp_path / "ns.yaml").write_text(NAMESPACES)
    res = ctl(etcd_endpoints, "apply", "-f", str(tmp_path / "ns.yaml"))
    assert res.returncode == 0, res.stderr
    return etcd_endpoints


def keys(endpoints: list[str]) -> list[str]:
    kvs, _ = Client(",".join(endpoints)).etcd.list("/calico/resources/v3/projectcalico.org/")
    return sorted(kv.key for kv in kvs)


def test_apply_get_and_tables(ep, tmp_path: Path):
    f = tmp_path / "p.yaml"
    f.write_text(POLICIES)
    res = ctl(ep, "apply", "-f", str(f), proc=True)
    assert (res.returncode, res.stdout) == (0, "Successfully applied 3 resource(s)\n"), res.stderr
    assert "/calico/resources/v3/projectcalico.org/networkpolicies/shop/default.allow-web" in keys(ep)
    assert "/calico/resources/v3/projectcalico.org/globalnetworkpolicies/default.deny-db" in keys(ep)

    assert ctl(ep, "get", "networkpolicy", "-n", "shop").stdout.splitlines() == ["NAME", "allow-web"]
    assert ctl(ep, "get", "networkpolicies", "-A", "-o", "wide").stdout.splitlines() == [
        "NAMESPACE   NAME        ORDER   SELECTOR", "shop        allow-web   100     app == 'web'"]
    assert ctl(ep, "get", "gnp", "-o", "wide").stdout.splitlines() == [
        "NAME      ORDER   SELECTOR", "deny-db   10.5    role == 'db'"]
    assert ctl(ep, "get", "profiles", "-o", "wide").stdout.splitlines() == [
        "NAME       LABELS", "kns.shop   pcns.projectcalico.org/name=shop,pcns.team=a"]
    assert ctl(ep, "get", "globalnetworksets", "-o", "wide").stdout.splitlines() == [
        "NAME   NETS", "inet   203.0.113.0/24"]
    doc = yaml.safe_load(ctl(ep, "get", "np", "allow-web", "-n", "shop", "-o", "yaml").stdout)
    assert doc["metadata"]["name"] == "allow-web" and doc["spec"]["types"] == ["Ingress"]
    assert doc["spec"]["ingress"][0] == {"action": "Allow", "protocol": "TCP",
                                         "source": {"selector": "role == 'client'"},
                                         "destination": {"ports": [80, "8000:8080", "http"]}}
    gnp = json.loads(ctl(ep, "get", "gnp", "deny-db", "-o", "json").stdout)
    assert gnp["spec"]["types"] == ["Egress"] and gnp["spec"]["egress"][0]["source"] == {}
    res = ctl(ep, "delete", "networkpolicy", "allow-web", "-n", "shop")
    assert (res.returncode, res.stdout) == (0, "Successfully deleted 1 'NetworkPolicy' resource(s)\n")


@pytest.mark.parametrize(("doc", "words"), [
    ({"spec": {"selector": "app = 'web'"}}, "NetworkPolicy(shop/bad).spec.selector: invalid selector"),
    ({"spec": {"ingress": [{"action": "Accept"}]}}, "spec.ingress[0].action: unknown action 'Accept'"),
    ({"spec": {"ingress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": [65536]}}]}},
     "spec.ingress[0].destination.ports[0]: port 65536 is out of range"),
    ({"metadata": {"namespace": "nope"}}, "NetworkPolicy(nope/bad).metadata.namespace: namespace 'nope' does "
                                          "not exist"),
])
def test_bad_policies_are_rejected_with_the_field_and_nothing_written(ep, tmp_path: Path, doc, words):
    base = {"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
            "metadata": {"name": "bad", "namespace": "shop"}, "spec": {"selector": "all()"}}
    for part in ("metadata", "spec"):
        base[part].update(doc.get(part, {}))
    good = {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy", "metadata": {"name": "ok"},
            "spec": {}}
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump_all([good, base]))
    before = keys(ep)
    res = ctl(ep, "apply", "-f", str(f), proc=True)
    assert res.returncode == 1
    assert words in res.stderr, res.stderr
    assert res.stderr.startswith("Failed to apply 'resource' resource: ")
    assert keys(ep) == before  # the good document before it was not written either


def test_kubernetes_policies_are_refused(ep, tmp_path: Path):
    f = tmp_path / "knp.yaml"
    f.write_text("apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\n"
                 "metadata: {name: knp.default.x, namespace: shop}\nspec: {}\n")
    res = ctl(ep, "apply", "-f", str(f))
    assert res.returncode == 1 and "kubernetes network policies must be managed through the kubernetes API" in \
        res.stderr
    # written by the policy controller: calicoctl shows it but will not change or delete it
    from datastore.resources import NetworkPolicy, from_document

    obj = from_document(yaml.safe_load(f.read_text()))
    assert isinstance(obj, NetworkPolicy)
    Client(",".join(ep)).create(obj)
    assert ctl(ep, "get", "np", "-n", "shop").stdout.splitlines() == ["NAME", "knp.default.x"]
    res = ctl(ep, "delete", "np", "knp.default.x", "-n", "shop")
    assert res.returncode == 1 and "operation delete is not supported" in res.stderr
    res = ctl(ep, "patch", "np", "knp.default.x", "-n", "shop", "-p", '{"spec":{"order":1}}')
    assert res.returncode == 1 and "managed through the kubernetes API" in res.stderr


def test_patch_as_calicoctl(ep, tmp_path: Path):
    f = tmp_path / "p.yaml"
    f.write_text(POLICIES + "---\napiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p1}\n"
                            "spec: {cidr: 192.168.0.0/16, ipipMode: Always}\n")
    assert ctl(ep, "apply", "-f", str(f)).returncode == 0
    res = ctl(ep, "patch", "ippool", "p1", "-p", '{"spec":{"ipipMode":"CrossSubnet"}}', proc=True)
    assert (res.returncode, res.stdout) == (0, "Successfully patched 1 'IPPool' resource\n"), res.stderr
    pool = Client(",".join(ep)).get("IPPool", "p1")
    assert pool.spec.ipip_mode == "CrossSubnet" and pool.spec.cidr == "192.168.0.0/16"
    # maps merge (labels kept), lists are replaced whole, null deletes
    res = ctl(ep, "patch", "networkPolicy", "allow-web", "-n", "shop", "-p",
              '{"metadata":{"labels":{"a":"b"}},"spec":{"selector":null,"ingress":[{"action":"Deny"}]}}')
    assert res.returncode == 0, res.stderr
    res = ctl(ep, "patch", "networkPolicy", "allow-web", "-n", "shop", "-p", '{"metadata":{"labels":{"c":"d"}}}')
    assert res.returncode == 0, res.stderr
    np = Client(",".join(ep)).get("NetworkPolicy", "allow-web", "shop")
    assert np.metadata.labels == {"a": "b", "c": "d"} and np.spec.selector == ""
    assert [r.action for r in np.spec.ingress] == ["Deny"] and np.spec.order == 100
    res = ctl(ep, "patch", "Profiles", "kns.shop", "-p", '{"spec":{"labelsToApply":{"pcns.team":"b"}}}')
    assert res.returncode == 0, res.stderr
    assert Client(",".join(ep)).get("Profile", "kns.shop").spec.labels_to_apply == {
        "pcns.projectcalico.org/name": "shop", "pcns.team": "b"}
    for kind, name, patch in (("gnp", "deny-db", '{"spec":{"order":5}}'),
                              ("globalnetworkset", "inet", '{"spec":{"nets":["198.51.100.0/24"]}}')):
        res = ctl(ep, "patch", kind, name, "--patch", patch, "--type", "merge")
        assert res.returncode == 0 and "not implemented by calicoctl v3.28.1 either" in res.stderr, res.stderr


@pytest.mark.parametrize(("args", "words"), [
    (["ippool", "p1", "-p", "{bad json"], "invalid JSON"),
    (["ippool", "p1", "-p", '{"spec":{"blockSize":19}}'], "spec.blockSize: must be between 20 and 32"),
    (["ippool", "p1", "-p", '{"spec":{"cidr":"10.0.0.0/8"}}'], "spec.cidr: cannot be changed"),
    (["ippool", "nope", "-p", "{}"], "resource does not exist: IPPool(nope)"),
    (["gnp", "g", "-p", '{"spec":{"ingress":[{"action":"Jump"}]}}'], "unknown action 'Jump'"),
    (["bogus", "x", "-p", "{}"], "unknown resource type 'bogus'"),
])
def test_patch_bad_input_writes_nothing(ep, tmp_path: Path, args, words):
    f = tmp_path / "p.yaml"
    f.write_text("apiVersion: projectcalico.org/v3\nkind: IPPool\nmetadata: {name: p1}\n"
                 "spec: {cidr: 192.168.0.0/16}\n---\napiVersion: projectcalico.org/v3\n"
                 "kind: GlobalNetworkPolicy\nmetadata: {name: g}\nspec: {}\n")
    assert ctl(ep, "apply", "-f", str(f)).returncode == 0
    client = Client(",".join(ep))
    before = [(o.key(), o.metadata.resource_version) for k in ("IPPool", "GlobalNetworkPolicy") for o in client.list(k)]
    res = ctl(ep, "patch", *args, proc=True)
    assert res.returncode == 1 and words in res.stderr, res.stderr
    after = [(o.key(), o.metadata.resource_version) for k in ("IPPool", "GlobalNetworkPolicy") for o in client.list(k)]
    assert after == before
