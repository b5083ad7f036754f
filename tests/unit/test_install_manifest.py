"""The manifest template and its rendering (testbed/k8s/install.py): pure, no lab."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from testbed.apiserver import validation
from testbed.k8s import images
from testbed.k8s.install import InstallError, InstallSettings, render, settings_for_lab

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


def _docs(text: str) -> dict[str, dict]:
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in yaml.safe_load_all(text) if d}


def _env(container: dict) -> dict[str, object]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_render_walkthrough_values():
    s = InstallSettings(etcd_endpoints=["http://172.30.0.10:2379"], pool_cidr="192.168.0.0/16", block_size=24,
                        ipip_mode="Always", nat_outgoing=True, leak_grace_period="2s")
    docs = _docs(render(s))
    assert sorted(docs) == ["ClusterRole/calico-cni-plugin", "ClusterRole/calico-kube-controllers",
                            "ClusterRole/calico-node", "ClusterRoleBinding/calico-cni-plugin",
                            "ClusterRoleBinding/calico-kube-controllers", "ClusterRoleBinding/calico-node",
                            "ConfigMap/calico-config", "DaemonSet/calico-node",
                            "Deployment/calico-kube-controllers", "Deployment/calico-typha",
                            "Service/calico-typha", "ServiceAccount/calico-cni-plugin",
                            "ServiceAccount/calico-kube-controllers", "ServiceAccount/calico-node"]
    assert all(d["metadata"]["namespace"] == "kube-system" for d in docs.values()
               if not d["kind"].startswith("ClusterRole"))
    # every pod runs as a ServiceAccount the manifest makes
    sas = {d["metadata"]["name"] for d in docs.values() if d["kind"] == "ServiceAccount"}
    assert {d["spec"]["template"]["spec"]["serviceAccountName"] for d in docs.values()
            if d["kind"] in ("DaemonSet", "Deployment")} <= sas
    cm = docs["ConfigMap/calico-config"]["data"]
    assert cm["etcd_endpoints"] == "http://172.30.0.10:2379" and cm["calico_backend"] == "bird"
    # calico.yaml's CNI settings: veth_mtu "0" (auto) and the conflist template, whose
    # node name and MTU install-cni fills on each node
    assert cm["veth_mtu"] == "0"
    assert '"nodename": "__KUBERNETES_NODE_NAME__"' in cm["cni_network_config"]
    assert '"mtu": __CNI_MTU__' in cm["cni_network_config"]
    assert '"etcd_endpoints": "http://172.30.0.10:2379"' in cm["cni_network_config"]
    # as calico-etcd.yaml: the plugin reads pods through the API (install-cni's kubeconfig)
    assert '"kubeconfig": "__KUBECONFIG_FILEPATH__"' in cm["cni_network_config"]
    node = docs["DaemonSet/calico-node"]["spec"]["template"]["spec"]
    assert node["hostNetwork"] is True
    c = node["containers"][0]
    assert images.repository(c["image"]) == "calico/node"
    assert c["image"] == "docker.io/calico/node:v3.28.1"  # the one version, datastore.version
    env = _env(c)
    refs = {e["name"]: e["valueFrom"]["configMapKeyRef"]["key"] for e in c["env"]
            if "configMapKeyRef" in e.get("valueFrom", {})}
    assert (refs["CNI_NETWORK_CONFIG"], refs["CNI_MTU"], refs["FELIX_IPINIPMTU"]) == (
        "cni_network_config", "veth_mtu", "veth_mtu")
    assert env["CALICO_IPV4POOL_CIDR"] == "192.168.0.0/16"
    assert env["CALICO_IPV4POOL_BLOCK_SIZE"] == "24"
    assert env["CALICO_IPV4POOL_IPIP"] == "Always"
    assert env["CALICO_IPV4POOL_NAT_OUTGOING"] == "true"
    assert env["IP"] == "autodetect" and env["DATASTORE_TYPE"] == "etcdv3"
    assert env["NODENAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["ETCD_ENDPOINTS"] == {"configMapKeyRef": {"name": "calico-config", "key": "etcd_endpoints"}}
    kc = docs["Deployment/calico-kube-controllers"]["spec"]
    assert kc["replicas"] == 1
    kenv = _env(kc["template"]["spec"]["containers"][0])
    assert kenv["ENABLED_CONTROLLERS"] == "policy,namespace,serviceaccount,workloadendpoint,node"
    assert kenv["LEAK_GRACE_PERIOD"] == "2s"
    assert images.repository(kc["template"]["spec"]["containers"][0]["image"]) == "calico/kube-controllers"
    typha = docs["Deployment/calico-typha"]["spec"]["template"]["spec"]["containers"][0]
    assert typha["ports"][0]["containerPort"] == 5473
    assert docs["Service/calico-typha"]["spec"]["ports"][0]["port"] == 5473


def test_rendered_objects_pass_the_api_servers_validation():
    text = render(InstallSettings(etcd_endpoints=["http://172.30.0.10:2379"]))
    for d in yaml.safe_load_all(text):
        if d:
            validation.default(d)
            assert validation.validate(d) == [], d["metadata"]["name"]
    for d in yaml.safe_load_all(text):
        if d and d["kind"] in ("DaemonSet", "Deployment"):
            for c in d["spec"]["template"]["spec"]["containers"]:
                assert images.known(c["image"]), c["image"]


def test_vxlan_pool_selects_vxlan_backend():
    docs = _docs(render(InstallSettings(etcd_endpoints=["http://10.1.0.1:2379"], ipip_mode="Never",
                                        vxlan_mode="Always")))
    assert docs["ConfigMap/calico-config"]["data"]["calico_backend"] == "vxlan"


@pytest.mark.parametrize("field,value,message", [
    ("pool_cidr", "192.168.0.1/16", "pool_cidr"),
    ("pool_cidr", "fd00::/64", "not IPv4"),
    ("block_size", 19, "block_size"),
    ("block_size", 8, "block_size"),
    ("ipip_mode", "always", "ipip_mode"),
    ("etcd_endpoints", [], "etcd_endpoints"),
    ("etcd_endpoints", ["172.30.0.10:2379"], "etcd_endpoints"),
    ("leak_grace_period", "15 minutes", "leak_grace_period"),
    ("bgp_timers", 'x"y', "bgp_timers"),
])
def test_bad_settings_are_named(field, value, message):
    s = InstallSettings(etcd_endpoints=["http://127.0.0.1:2379"])
    setattr(s, field, value)
    with pytest.raises(InstallError, match=message):
        render(s)


def test_both_encapsulations_refused():
    with pytest.raises(InstallError, match="Cannot enable both VXLAN and IPIP"):
        render(InstallSettings(etcd_endpoints=["http://127.0.0.1:2379"], vxlan_mode="Always"))


def test_unfilled_placeholder_is_an_error():
    with pytest.raises(InstallError, match="NOPE"):
        render(InstallSettings(etcd_endpoints=["http://127.0.0.1:2379"]), template="a: __NOPE__\n")


def test_settings_from_lab_state_use_topology():
    state = {"lab": "wt", "topology": str(REPO / "topologies" / "walkthrough.yaml"),
             "etcd_endpoints": ["http://172.30.0.10:2379"]}
    s = settings_for_lab(state, leak_grace_period="1s")
    assert (s.pool_cidr, s.block_size, s.ipip_mode, s.nat_outgoing) == ("192.168.0.0/16", 24, "Always", True)
    assert s.etcd_endpoints == ["http://172.30.0.10:2379"] and s.leak_grace_period == "1s"
    with pytest.raises(InstallError, match="unknown install setting 'bogus'"):
        settings_for_lab(state, bogus=1)


def test_images_map_calico_components():
    assert images.resolve("docker.io/calico/typha:v3.28.1", None, None, "/tmp").port == 5473
    argv = images.resolve("calico/kube-controllers:v3.28.1", None, None, "/tmp").argv
    assert argv[-4:] == ["-m", "agent.kubecontrollers", "--status-file", "/tmp/status/status.json"]


def test_operator_layout_for_a_kubernetes_datastore_lab():
    """manifests/calico-system.yaml as `up` renders it: the operator's namespace and workloads,
    the lab's pool, the control plane's API address for host-network pods, Typha behind its
    Service; every object passes the API server's validation and every image is known."""
    from testbed.k8s.install import render_operator_layout

    state = {"lab": "wt", "topology": str(REPO / "topologies" / "walkthrough.yaml"),
             "etcd_endpoints": ["http://172.30.0.10:2379"]}
    text = render_operator_layout(state, bgp_timers="connect_delay=0.1,connect_retry=1")
    docs = _docs(text)
    assert {k for k in docs if k.split("/")[0] in ("Namespace", "DaemonSet", "Deployment", "Service")} == {
        "Namespace/calico-system", "DaemonSet/calico-node", "Deployment/calico-typha",
        "Deployment/calico-kube-controllers", "Service/calico-typha", "DaemonSet/csi-node-driver"}
    for d in yaml.safe_load_all(text):
        if d:
            assert d["kind"] in ("Namespace", "ClusterRole", "ClusterRoleBinding", "CSIDriver") or \
                d["metadata"]["namespace"] == "calico-system", d["metadata"]
            validation.default(d)
            assert validation.validate(d) == [], d["metadata"]["name"]
    node = docs["DaemonSet/calico-node"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in node["containers"][0]["env"]}
    assert env["KUBERNETES_SERVICE_HOST"] == "172.30.0.10" and env["KUBERNETES_SERVICE_PORT"] == "6443"
    assert (env["DATASTORE_TYPE"], env["FELIX_TYPHAK8SSERVICENAME"], env["FELIX_TYPHAK8SNAMESPACE"]) == (
        "kubernetes", "calico-typha", "calico-system")
    assert (env["CALICO_IPV4POOL_CIDR"], env["CALICO_IPV4POOL_BLOCK_SIZE"], env["CALICO_IPV4POOL_IPIP"]) == (
        "192.168.0.0/16", "24", "Always")
    assert "ETCD_ENDPOINTS" not in env and node["hostNetwork"] is True
    assert node["serviceAccountName"] == "calico-node" and "ServiceAccount/calico-cni-plugin" in docs
    kc = docs["Deployment/calico-kube-controllers"]["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e.get("value") for e in kc["env"]}["ENABLED_CONTROLLERS"] == "node"
    # csi-node-driver (docs/csi.md): the csi.tigera.io driver and its registrar, the CSIDriver
    assert docs["CSIDriver/csi.tigera.io"]["spec"] == {"attachRequired": False, "podInfoOnMount": True,
                                                        "volumeLifecycleModes": ["Ephemeral"]}
    csi = docs["DaemonSet/csi-node-driver"]["spec"]["template"]["spec"]
    assert [c["name"] for c in csi["containers"]] == ["calico-csi", "csi-node-driver-registrar"]
    assert [images.resolve(c["image"], None, c.get("args"), "/tmp").argv[1:3] for c in csi["containers"]] == [
        ["-m", "agent.csi"], ["-m", "agent.csi.registrar"]]
    assert {vm["name"]: vm.get("mountPropagation") for vm in csi["containers"][0]["volumeMounts"]}["kubelet-dir"] \
        == "Bidirectional" and csi["containers"][0]["securityContext"]["privileged"] is True
    for kind in ("DaemonSet/calico-node", "Deployment/calico-typha", "Deployment/calico-kube-controllers",
                 "DaemonSet/csi-node-driver"):
        for c in docs[kind]["spec"]["template"]["spec"]["containers"]:
            assert images.known(c["image"]) and images.is_component(c["image"]), c["image"]


def test_a_kubernetes_datastore_lab_gets_the_kdd_manifest():
    """A lab of the Kubernetes datastore is installed with manifests/calico.yaml (the etcd one
    with calico-etcd.yaml): settings_for_lab takes the lab's datastore and API address."""
    state = {"lab": "lk", "datastore": "kubernetes", "topology": str(REPO / "topologies" / "walkthrough.yaml"),
             "etcd_endpoints": ["http://172.30.0.10:2379"]}
    s = settings_for_lab(state)
    assert s.datastore == "kubernetes" and s.extra["KUBERNETES_SERVICE_HOST"] == "172.30.0.10"
    docs = _docs(render(s))
    assert "DaemonSet/calico-node" in docs and "ConfigMap/kubernetes-services-endpoint" in docs
    assert "etcd_endpoints" not in docs["ConfigMap/calico-config"]["data"]
    assert settings_for_lab({**state, "datastore": "etcdv3"}).datastore == "etcdv3"


def _kdd_settings(**kw) -> InstallSettings:
    return InstallSettings(etcd_endpoints=[], datastore="kubernetes", block_size=24, leak_grace_period="2s",
                           extra={"KUBERNETES_SERVICE_HOST": "172.30.0.10", "KUBERNETES_SERVICE_PORT": "6443"}, **kw)


def test_kdd_manifest_has_calicos_calico_yaml_shape():
    """manifests/calico.yaml (the Kubernetes datastore) rendered: Calico's CRDs, RBAC,
    calico-config with the KDD conflist template, the calico-node DaemonSet with upgrade-ipam,
    install-cni and mount-bpffs, calico-kube-controllers on the pod network, Typha; all in
    kube-system; every object valid for the API server; every container a calicolab program."""
    from agent.installcni import KDD_NETWORK_CONFIG
    from datastore.crds import CRDS

    text = render(_kdd_settings())
    docs = _docs(text)
    crds = sorted(k.split("/", 1)[1] for k in docs if k.startswith("CustomResourceDefinition/"))
    assert len(crds) == len(CRDS) and "ippools.crd.projectcalico.org" in crds
    assert {k for k in docs if not k.startswith(("CustomResourceDefinition/", "ClusterRole"))} == {
        "ConfigMap/kubernetes-services-endpoint", "ConfigMap/calico-config", "PodDisruptionBudget/calico-kube-controllers",
        "ServiceAccount/calico-kube-controllers", "ServiceAccount/calico-node", "ServiceAccount/calico-cni-plugin",
        "DaemonSet/calico-node", "Deployment/calico-kube-controllers", "Deployment/calico-typha",
        "Service/calico-typha"}
    for d in docs.values():
        if d["kind"] not in ("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            assert d["metadata"]["namespace"] == "kube-system", d["metadata"]
        validation.default(d)
        assert validation.validate(d) == [], d["metadata"]["name"]
    cm = docs["ConfigMap/calico-config"]["data"]
    assert cm["cni_network_config"] == KDD_NETWORK_CONFIG  # install-cni's built-in copy is the same document
    assert docs["ConfigMap/kubernetes-services-endpoint"]["data"] == {
        "KUBERNETES_SERVICE_HOST": "172.30.0.10", "KUBERNETES_SERVICE_PORT": "6443"}
    spec = docs["DaemonSet/calico-node"]["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["upgrade-ipam", "install-cni", "mount-bpffs"]
    argv = {c["name"]: images.resolve(c["image"], c.get("command"), c.get("args"), "/t").argv
            for c in spec["initContainers"] + spec["containers"]}
    assert argv["upgrade-ipam"][-1] == "cni.upgrade" and argv["install-cni"][-1] == "agent.installcni"
    assert argv["mount-bpffs"][1:] == ["-init", "-best-effort"]
    env = _env(spec["containers"][0])
    assert (env["DATASTORE_TYPE"], env["CALICO_IPV4POOL_CIDR"], env["CALICO_IPV4POOL_BLOCK_SIZE"],
            env["CALICO_IPV4POOL_IPIP"], env["CALICO_IPV4POOL_VXLAN"]) == (
        "kubernetes", "192.168.0.0/16", "24", "Always", "Never")
    assert "ETCD_ENDPOINTS" not in env and "CNI_NETWORK_CONFIG" not in env  # install-cni's job
    kc = docs["Deployment/calico-kube-controllers"]["spec"]["template"]["spec"]
    assert not kc.get("hostNetwork") and _env(kc["containers"][0])["ENABLED_CONTROLLERS"] == "node"
    for kind in ("DaemonSet/calico-node", "Deployment/calico-kube-controllers", "Deployment/calico-typha"):
        for c in docs[kind]["spec"]["template"]["spec"]["containers"]:
            assert images.is_component(c["image"]), c["image"]


def test_kdd_manifest_needs_the_api_address_and_no_etcd():
    with pytest.raises(InstallError, match="KUBERNETES_SERVICE_HOST"):
        render(InstallSettings(etcd_endpoints=[], datastore="kubernetes"))
    assert "etcd_endpoints" not in render(_kdd_settings())
    bad = _kdd_settings()
    bad.block_size = 99
    with pytest.raises(InstallError, match="block_size: 99 is outside 20..32"):
        render(bad)


def test_an_apply_that_does_not_return_is_named_and_its_deadline_scales(monkeypatch, tmp_path):
    """kubectl apply that hangs: an InstallError naming the file and the scaled deadline (a VM under
    TCG sets CALICOLAB_DEADLINE_SCALE=10; the walkthrough's calico.yaml took over 60 s there)."""
    from testbed.k8s import install

    script = tmp_path / "slow-kubectl"
    script.write_text("#!/bin/sh\necho applying >&2\nexec sleep 30\n")
    script.chmod(0o755)
    monkeypatch.setattr(install, "kubectl_argv", lambda lab, *args: [str(script)])
    monkeypatch.setenv("CALICOLAB_DEADLINE_SCALE", "3")
    with pytest.raises(InstallError, match=r"kubectl apply -f calico\.yaml did not return within 1s: applying"):
        install._apply({"lab": "x"}, "kind: List\n", "calico.yaml", timeout=0.3)
