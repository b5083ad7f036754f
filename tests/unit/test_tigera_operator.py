"""calicolab's Tigera operator (testbed/k8s/tigera): Installation defaults and validation with
the operator's messages, the pools it makes, TigeraStatus conditions, and one reconcile pass
against an in-memory API (pure, no lab)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from datastore import errors as dserrors
from datastore.resources import FelixConfiguration, IPPool
from testbed.apiserver.tables import jsonpath_value
from testbed.k8s import images
from testbed.k8s.tigera import installation as inst
from testbed.k8s.tigera.controller import NO_APISERVER, Operator
from testbed.k8s.tigera.render import objects, render_calico_system, settings_for_installation
from testbed.k8s.tigera.status import Component, merge_conditions, sync_state

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


def seed_spec() -> dict:
    docs = list(yaml.safe_load_all((REPO / "manifests" / "custom-resources.yaml").read_text()))
    return copy.deepcopy(next(d for d in docs if d and d["kind"] == "Installation")["spec"])


def defaulted(spec: dict, current: list[dict] | None = None) -> dict:
    return inst.fill_pool_defaults(inst.fill_defaults(spec), current or [])


# ------------------------------------------------------------------ defaults and validation
def test_empty_installation_gets_the_operators_default_pool():
    spec = defaulted({})
    assert spec["calicoNetwork"]["ipPools"] == [{
        "name": "default-ipv4-ippool", "cidr": "192.168.0.0/16", "allowedUses": ["Workload", "Tunnel"],
        "encapsulation": "IPIP", "natOutgoing": "Enabled", "nodeSelector": "all()", "blockSize": 26}]
    assert spec["calicoNetwork"]["bgp"] == "Enabled"
    assert spec["cni"] == {"type": "Calico", "ipam": {"type": "Calico"}}
    assert spec["variant"] == "Calico"
    assert spec["calicoNetwork"]["nodeAddressAutodetectionV4"] == {"firstFound": True}
    inst.validate_installation(spec)
    inst.validate_pools(spec)


def test_pools_in_the_cluster_and_none_in_the_installation_means_none():
    current = [{"metadata": {"name": "p"}, "spec": {"cidr": "10.0.0.0/16"}}]
    assert defaulted({}, current)["calicoNetwork"]["ipPools"] == []


def test_seed_custom_resources_keep_their_pool_and_several_pools_are_named_by_cidr():
    pool = defaulted(seed_spec())["calicoNetwork"]["ipPools"][0]
    assert pool == {"name": "default-ipv4-ippool", "cidr": "192.168.0.0/16", "blockSize": 26,
                    "encapsulation": "VXLANCrossSubnet", "natOutgoing": "Enabled", "nodeSelector": "all()",
                    "allowedUses": ["Workload", "Tunnel"]}
    two = defaulted({"calicoNetwork": {"ipPools": [{"cidr": "10.1.0.0/16"}, {"cidr": "10.2.0.0/16"}]}})
    assert [p["name"] for p in two["calicoNetwork"]["ipPools"]] == ["10.1.0.0-16", "10.2.0.0-16"]


@pytest.mark.parametrize("pool, message", [
    ({"cidr": "192.168.0.0/16", "blockSize": 19},
     "IPv4 pool block size must be greater than 19 and less than or equal to 32"),
    ({"cidr": "192.168.0.0/16", "blockSize": 33},
     "IPv4 pool block size must be greater than 19 and less than or equal to 32"),
    ({"cidr": "192.168.0.0/28", "blockSize": 26},
     "IP pool size is too small. It must be equal to or greater than the block size."),
    ({"cidr": "192.168.0.0/16", "natOutgoing": "Maybe"},
     "Maybe is invalid for natOutgoing, should be one of Enabled,Disabled"),
    ({"cidr": "192.168.0.0/16", "encapsulation": "GRE"},
     "GRE is invalid for ipPool.encapsulation, should be one of IPIPCrossSubnet,IPIP,VXLAN,VXLANCrossSubnet,None"),
    ({"cidr": "300.1.0.0/16"}, "IP pool CIDR (300.1.0.0/16) is invalid"),
])
def test_pool_validation_names_what_is_wrong_as_the_operator_does(pool, message):
    spec = defaulted({"calicoNetwork": {"ipPools": [pool]}})
    with pytest.raises(inst.InstallationError) as exc:
        inst.validate_pools(spec)
    assert exc.value.reason == "InvalidConfigurationError"
    assert str(exc.value).startswith("error validating IP pool configuration: " + message), str(exc.value)


def test_overlapping_and_repeated_pools_are_refused():
    spec = defaulted({"calicoNetwork": {"ipPools": [
        {"name": "a", "cidr": "192.168.0.0/16"}, {"name": "b", "cidr": "192.168.128.0/20"}]}})
    with pytest.raises(inst.InstallationError, match=r"IPPool\(b\) CIDR overlaps with IPPool\(a\) CIDR 192.168.0.0/16"):
        inst.validate_pools(spec)
    spec = defaulted({"calicoNetwork": {"ipPools": [
        {"name": "a", "cidr": "10.0.0.0/16"}, {"name": "b", "cidr": "10.0.0.0/16"}]}})
    with pytest.raises(inst.InstallationError, match="IP pool 10.0.0.0/16 is specified more than once"):
        inst.validate_pools(spec)


def test_fields_not_implemented_are_named_never_ignored():
    spec = inst.fill_defaults({"kubernetesProvider": "EKS", "calicoNetwork": {
        "mtu": 1400, "linuxDataplane": "BPF", "ipPools": [{"cidr": "10.0.0.0/16", "disabled": True}]}})
    assert inst.unimplemented(spec) == [
        "spec.kubernetesProvider", "spec.calicoNetwork.mtu",
        "spec.calicoNetwork.linuxDataplane=BPF (calicolab implements: Iptables)",
        "spec.calicoNetwork.ipPools[*].disabled"]
    with pytest.raises(inst.InstallationError) as exc:
        inst.validate_installation(spec)
    assert str(exc.value).startswith("Invalid Installation provided: not implemented by calicolab's operator: "
                                     "spec.kubernetesProvider; spec.calicoNetwork.mtu")
    assert inst.unimplemented(defaulted(seed_spec())) == []


def test_ipip_and_unencapsulated_pools_need_bgp():
    for enc, msg in (("IPIP", "IPIP encapsulation requires that BGP is enabled"),
                     ("None", "Unencapsulated IP pools require that BGP is enabled")):
        spec = defaulted({"calicoNetwork": {"bgp": "Disabled", "ipPools": [{"cidr": "10.0.0.0/16", "encapsulation": enc}]}})
        with pytest.raises(inst.InstallationError, match=msg):
            inst.validate_installation(spec)
    inst.validate_installation(defaulted({"calicoNetwork": {"bgp": "Disabled", "ipPools": [
        {"cidr": "10.0.0.0/16", "encapsulation": "VXLAN"}]}}))


@pytest.mark.parametrize("enc, ipip, vxlan", [("IPIP", "Always", "Never"), ("IPIPCrossSubnet", "CrossSubnet", "Never"),
                                             ("VXLAN", "Never", "Always"), ("VXLANCrossSubnet", "Never", "CrossSubnet"),
                                             ("None", "Never", "Never")])
def test_pool_resource_maps_encapsulation_to_the_pools_modes(enc, ipip, vxlan):
    doc = inst.pool_resource({"name": "p", "cidr": "10.0.0.0/16", "blockSize": 24, "encapsulation": enc,
                              "natOutgoing": "Disabled", "nodeSelector": "all()", "allowedUses": ["Workload", "Tunnel"]})
    assert doc["spec"] == {"cidr": "10.0.0.0/16", "ipipMode": ipip, "vxlanMode": vxlan, "natOutgoing": False,
                           "nodeSelector": "all()", "blockSize": 24, "allowedUses": ["Workload", "Tunnel"]}
    assert doc["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "tigera-operator"}
    IPPool.from_dict(doc).validate()


def test_typha_scale_follows_the_node_count():
    assert [inst.expected_typha_replicas(n) for n in (1, 2, 3, 4, 5, 50, 199, 400)] == [1, 1, 2, 2, 3, 3, 3, 4]


# ------------------------------------------------------------------ rendering
def test_the_seed_installation_renders_calico_system_with_the_operators_node_settings():
    text = render_calico_system(settings_for_installation(defaulted(seed_spec()), env={}), "172.30.1.10", 6443)
    docs = {f"{d['kind']}/{d['metadata']['name']}": d for d in objects(text)}
    assert {"DaemonSet/calico-node", "Deployment/calico-typha", "Deployment/calico-kube-controllers",
            "Namespace/calico-system"} <= set(docs)
    env = {e["name"]: e.get("value") for e in
           docs["DaemonSet/calico-node"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CALICO_NETWORKING_BACKEND"] == "bird"  # BGP Enabled, whatever the pool's encapsulation
    assert env["NO_DEFAULT_POOLS"] == "true"
    assert env["IP_AUTODETECTION_METHOD"] == "first-found"
    assert env["CALICO_IPV4POOL_VXLAN"] == "CrossSubnet" and env["CALICO_IPV4POOL_IPIP"] == "Never"
    assert env["KUBERNETES_SERVICE_HOST"] == "172.30.1.10" and env["DATASTORE_TYPE"] == "kubernetes"
    bgp_off = settings_for_installation(defaulted({"calicoNetwork": {"bgp": "Disabled", "ipPools": [
        {"cidr": "10.0.0.0/16", "encapsulation": "VXLAN"}]}}), env={})
    assert bgp_off.networking_backend == "vxlan"


def test_operator_image_runs_calicolabs_operator():
    assert images.is_component("quay.io/tigera/operator:v1.34.3")
    wl = images.resolve("quay.io/tigera/operator:v1.34.3", ["operator"], None, "/tmp")
    assert wl.argv[-2:] == ["-m", "testbed.k8s.tigera"]


def test_manifests_shape():
    docs = [d for d in yaml.safe_load_all((REPO / "manifests" / "tigera-operator.yaml").read_text()) if d]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Namespace", "tigera-operator"), ("Deployment", "tigera-operator"),
            ("CustomResourceDefinition", "installations.operator.tigera.io"),
            ("CustomResourceDefinition", "apiservers.operator.tigera.io"),
            ("CustomResourceDefinition", "tigerastatuses.operator.tigera.io")} <= kinds
    ts = next(d for d in docs if d["metadata"]["name"] == "tigerastatuses.operator.tigera.io")
    cols = ts["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in cols] == ["Available", "Progressing", "Degraded", "Since"]
    obj = {"status": {"conditions": [{"type": "Available", "status": "True", "lastTransitionTime": "t"},
                                     {"type": "Degraded", "status": "False"}]}}
    assert [jsonpath_value(obj, c["jsonPath"]) for c in cols] == [["True"], [], ["False"], ["t"]]
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert images.repository(dep["spec"]["template"]["spec"]["containers"][0]["image"]) == "tigera/operator"


# ------------------------------------------------------------------ status
def _ds(desired: int, ready: int, gen: int = 1) -> dict:
    return {"metadata": {"name": "calico-node", "namespace": "calico-system", "generation": gen},
            "spec": {"selector": {"matchLabels": {"k8s-app": "calico-node"}}},
            "status": {"desiredNumberScheduled": desired, "updatedNumberScheduled": desired, "numberReady": ready,
                       "numberAvailable": ready, "numberUnavailable": desired - ready, "observedGeneration": gen}}


def _pod(reason: str) -> dict:
    return {"metadata": {"name": "calico-node-abcde", "namespace": "calico-system", "labels": {"k8s-app": "calico-node"}},
            "status": {"containerStatuses": [{"name": "calico-node", "state": {"waiting": {"reason": reason}}}]}}


def test_status_progressing_then_available_then_pod_failure():
    c = Component("calico", ready_to_monitor=True)
    c.progressing, c.failing = sync_state([_ds(3, 1)], [], [])
    c.synced = True
    assert c.progressing == ['DaemonSet "calico-system/calico-node" is not available (awaiting 2 nodes)']
    assert [x[:2] for x in c.conditions()] == [("Available", "False"), ("Progressing", "True"), ("Degraded", "False")]
    c.progressing, c.failing = sync_state([_ds(3, 3)], [], [])
    assert c.conditions() == [("Available", "True", "AllObjectsAvailable", "All objects available"),
                              ("Progressing", "False", "AllObjectsAvailable", "All Objects Available"),
                              ("Degraded", "False", "AllObjectsAvailable", "All Objects Available")]
    c.progressing, c.failing = sync_state([_ds(3, 2)], [], [_pod("CrashLoopBackOff")])
    assert c.conditions()[2] == ("Degraded", "True", "PodFailure",
                                 "Pod calico-system/calico-node-abcde has crash looping container: calico-node")
    c.set_degraded("InvalidConfigurationError", "Invalid Installation provided: x")
    assert c.conditions()[2][2:] == ("InvalidConfigurationError",
                                     "Invalid Installation provided: x\n"
                                     "Pod calico-system/calico-node-abcde has crash looping container: calico-node")


def test_condition_keeps_its_transition_time_until_its_status_changes():
    old = merge_conditions([], [("Available", "False", "Unknown", "")], "t1")
    same = merge_conditions(old, [("Available", "False", "Unknown", ""), ("Degraded", "False", "Unknown", "")], "t2")
    assert [c["lastTransitionTime"] for c in same] == ["t1", "t2"]
    flipped = merge_conditions(same, [("Available", "True", "AllObjectsAvailable", "All objects available")], "t3")
    assert flipped[0]["lastTransitionTime"] == "t3" and flipped[1]["lastTransitionTime"] == "t2"


# ------------------------------------------------------------------ one reconcile pass (in-memory API)
class FakeKube:
    """The Kubernetes API as a dict (pure-logic test double)."""

    def __init__(self):
        self.objs: dict[tuple[str, str, str], dict] = {}
        self.applied: list[dict] = []
        self.uid = 0

    def _key(self, plural: str, name: str, ns: str | None) -> tuple[str, str, str]:
        return plural, ns or "", name

    def get(self, api, plural, name, namespace=None, sub=None):
        import kubeclient

        o = self.objs.get(self._key(plural, name, namespace))
        if o is None:
            raise kubeclient.NotFound(404, "NotFound", f"{plural} {name} not found")
        return copy.deepcopy(o)

    def create(self, obj, namespace=None, *, plural=None, **_):
        self.uid += 1
        o = copy.deepcopy(obj)
        o["metadata"]["uid"] = f"uid-{self.uid}"
        o.pop("status", None)
        self.objs[self._key(plural, o["metadata"]["name"], o["metadata"].get("namespace"))] = o
        return copy.deepcopy(o)

    def update_status(self, obj, namespace=None, *, plural=None):
        self.objs[self._key(plural, obj["metadata"]["name"], obj["metadata"].get("namespace"))]["status"] = \
            copy.deepcopy(obj["status"])
        return obj

    def patch(self, api, plural, name, patch, namespace=None, **_):
        o = self.objs[self._key(plural, name, namespace)]
        o.update(copy.deepcopy(patch))
        return copy.deepcopy(o)

    def apply(self, obj, namespace=None, *, field_manager="", force=True, **_):
        plural = {"DaemonSet": "daemonsets", "Deployment": "deployments"}.get(obj["kind"], obj["kind"].lower())
        key = self._key(plural, obj["metadata"]["name"], obj["metadata"].get("namespace"))
        self.applied.append(obj)
        o = copy.deepcopy(obj)
        o["metadata"]["generation"] = 1
        self.objs[key] = {**self.objs.get(key, {}), **o}
        return o

    def list(self, api, plural, namespace=None, **_):
        return {"items": [copy.deepcopy(o) for (p, ns, _n), o in self.objs.items()
                          if p == plural and (namespace is None or ns == namespace)]}

    def delete(self, api, plural, name, namespace=None, **_):
        self.objs.pop(self._key(plural, name, namespace))


class FakeCalico:
    """Calico's datastore as a dict, with the pool overlap rule (pure-logic test double)."""

    def __init__(self):
        self.store: dict[tuple[str, str], object] = {}

    def list(self, kind):
        return [copy.deepcopy(o) for (k, _), o in self.store.items() if k == kind.KIND]

    def get(self, kind, name):
        if (kind.KIND, name) not in self.store:
            raise dserrors.NotFound(f"{kind.KIND} {name} not found")
        return copy.deepcopy(self.store[(kind.KIND, name)])

    def create(self, obj):
        obj.apply_defaults()
        obj.validate()
        self.store[(obj.KIND, obj.metadata.name)] = obj
        return obj

    def update(self, obj):
        self.store[(obj.KIND, obj.metadata.name)] = obj
        return obj

    def delete(self, kind, name):
        return self.store.pop((kind.KIND, name))


def _operator() -> tuple[Operator, FakeKube, FakeCalico]:
    kube, calico = FakeKube(), FakeCalico()
    t = [1_700_000_000.0]
    op = Operator(kube, calico, api_host="172.30.1.10", api_port=6443, clock=lambda: t[0], log=lambda _m: None)
    return op, kube, calico


def _installation(kube: FakeKube, spec: dict) -> None:
    kube.create({"apiVersion": "operator.tigera.io/v1", "kind": "Installation", "metadata": {"name": "default"},
                 "spec": spec}, plural="installations")


def _status(kube: FakeKube, name: str) -> dict[str, tuple[str, str, str]]:
    conds = kube.objs[("tigerastatuses", "", name)]["status"]["conditions"]
    return {c["type"]: (c["status"], c["reason"], c["message"]) for c in conds}


def test_block_size_19_is_degraded_and_nothing_is_made():
    op, kube, calico = _operator()
    _installation(kube, {"calicoNetwork": {"ipPools": [{"cidr": "192.168.0.0/16", "blockSize": 19}]}})
    op.reconcile()
    assert calico.list(IPPool) == [] and kube.applied == []
    assert ("daemonsets", "calico-system", "calico-node") not in kube.objs
    assert _status(kube, "ippools")["Degraded"] == (
        "True", "InvalidConfigurationError",
        "error validating IP pool configuration: IPv4 pool block size must be greater than 19 and less than or "
        "equal to 32")
    assert _status(kube, "calico")["Degraded"] == ("True", "ResourceNotFound",
                                                   "waiting for enabled IP pools to be created: ")


def test_seed_installation_is_reconciled_then_available_and_a_bad_edit_changes_nothing():
    op, kube, calico = _operator()
    _installation(kube, seed_spec())
    kube.create({"apiVersion": "operator.tigera.io/v1", "kind": "APIServer", "metadata": {"name": "default"},
                 "spec": {}}, plural="apiservers")
    op.reconcile()
    pools = calico.list(IPPool)
    assert [(p.metadata.name, p.spec.cidr, p.spec.block_size, p.spec.vxlan_mode, p.spec.nat_outgoing,
             p.spec.node_selector) for p in pools] == [
        ("default-ipv4-ippool", "192.168.0.0/16", 26, "CrossSubnet", True, "all()")]
    fc = calico.get(FelixConfiguration, "default")
    assert (fc.spec.health_port, fc.spec.vxlan_vni) == (9099, 4096)
    kinds = [(o["kind"], o["metadata"]["name"]) for o in kube.applied]
    assert ("DaemonSet", "calico-node") in kinds and ("Deployment", "calico-typha") in kinds
    assert all(o["metadata"]["ownerReferences"][0]["kind"] == "Installation" for o in kube.applied)
    assert kube.objs[("installations", "", "default")]["spec"]["calicoNetwork"]["ipPools"][0]["allowedUses"] == \
        ["Workload", "Tunnel"]  # the defaults are written back
    assert _status(kube, "ippools")["Available"][0] == "True"
    assert _status(kube, "apiserver")["Degraded"] == ("True", "NotApplicable", NO_APISERVER)
    assert _status(kube, "apiserver")["Available"][0] == "False"

    # the workloads come up: calico Available
    for (plural, _ns, _name), o in kube.objs.items():
        if plural == "daemonsets":
            o["status"] = _ds(3, 3)["status"]
        elif plural == "deployments":
            o["status"] = {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "availableReplicas": 1}
    op.reconcile()
    assert _status(kube, "calico")["Available"] == ("True", "AllObjectsAvailable", "All objects available")
    status = kube.objs[("installations", "", "default")]["status"]
    assert status["variant"] == "Calico" and status["calicoVersion"] == "v3.28.1"

    # an overlapping second pool: ippools Degraded, no pool made, calico-system not re-rendered
    applied = len(kube.applied)
    spec = kube.objs[("installations", "", "default")]["spec"]
    spec["calicoNetwork"]["ipPools"].append({"name": "extra", "cidr": "192.168.64.0/18"})
    op.reconcile()
    assert _status(kube, "ippools")["Degraded"][:2] == ("True", "InvalidConfigurationError")
    assert "IPPool(extra) CIDR overlaps with IPPool(default-ipv4-ippool) CIDR 192.168.0.0/16" in \
        _status(kube, "ippools")["Degraded"][2]
    assert [p.metadata.name for p in calico.list(IPPool)] == ["default-ipv4-ippool"]
    assert len(kube.applied) == applied
    assert _status(kube, "calico")["Available"][0] == "True"

    # a pool that does not overlap needs the Calico API server to be added, as in v1.34
    spec = kube.objs[("installations", "", "default")]["spec"]
    spec["calicoNetwork"]["ipPools"][-1] = {"name": "extra", "cidr": "10.10.0.0/16"}
    op.reconcile()
    assert _status(kube, "ippools")["Degraded"] == (
        "True", "ResourceNotReady", "Unable to modify IP pools while Calico API server is unavailable: ")
    assert [p.metadata.name for p in calico.list(IPPool)] == ["default-ipv4-ippool"]

    # back to the seed's pool: Available again
    kube.objs[("installations", "", "default")]["spec"]["calicoNetwork"]["ipPools"].pop()
    op.reconcile()
    assert _status(kube, "ippools")["Degraded"][0] == "False"


def test_unimplemented_field_is_degraded_by_name():
    op, kube, calico = _operator()
    spec = seed_spec()
    spec["calicoNetwork"]["mtu"] = 1400
    _installation(kube, spec)
    op.reconcile()
    st = _status(kube, "calico")["Degraded"]
    assert st[:2] == ("True", "InvalidConfigurationError") and "spec.calicoNetwork.mtu" in st[2]
    assert calico.list(IPPool) == [] and kube.applied == []


def test_deleted_installation_clears_its_statuses_and_a_new_one_is_rendered_again():
    op, kube, _calico = _operator()
    _installation(kube, seed_spec())
    op.reconcile()
    first = len(kube.applied)
    assert first and _status(kube, "calico")["Progressing"][0] == "True"
    kube.delete("operator.tigera.io/v1", "installations", "default")
    op.reconcile()
    for name in ("calico", "ippools"):
        assert {t: s for t, (s, _r, _m) in _status(kube, name).items()} == {
            "Available": "False", "Progressing": "False", "Degraded": "False"}
    _installation(kube, seed_spec())  # a new uid: applied again at once (not after the resync)
    op.reconcile()
    assert len(kube.applied) == 2 * first
    owners = {o["metadata"]["ownerReferences"][0]["uid"] for o in kube.applied[first:]}
    assert owners == {kube.objs[("installations", "", "default")]["metadata"]["uid"]}


def test_kubernetes_services_endpoint_configmap_sets_the_api_address():
    op, kube, _calico = _operator()
    kube.create({"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": "kubernetes-services-endpoint", "namespace": "tigera-operator"},
                 "data": {"KUBERNETES_SERVICE_HOST": "10.0.0.5", "KUBERNETES_SERVICE_PORT": "8443"}},
                plural="configmaps")
    _installation(kube, seed_spec())
    op.reconcile()
    ds = next(o for o in kube.applied if o["kind"] == "DaemonSet")
    env = {e["name"]: e.get("value") for e in ds["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (env["KUBERNETES_SERVICE_HOST"], env["KUBERNETES_SERVICE_PORT"]) == ("10.0.0.5", "8443")
