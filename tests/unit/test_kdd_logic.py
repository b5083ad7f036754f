"""Pure logic of the Kubernetes datastore: datastore selection, client config, the custom
resource shapes (names, metadata annotation, UID reversal, IPAM specs), the generated CRDs,
Node/Pod conversions and the watch stream's event bookkeeping."""

from __future__ import annotations

import json
import uuid

import pytest

from datastore import crds, derived, errors
from datastore.client import datastore_type
from datastore.resources import (
    BlockAffinity,
    BlockAffinitySpec,
    IPAMBlock,
    IPAMConfig,
    IPAMHandle,
    IPPool,
    Metadata,
    NetworkPolicy,
    Node,
    NodeBGPSpec,
)

pytestmark = pytest.mark.unit


def test_datastore_type_resolution():
    assert datastore_type({}) == "kubernetes"  # apiconfig's default without etcd endpoints
    assert datastore_type({"ETCD_ENDPOINTS": "http://10.0.0.1:2379"}) == "etcdv3"
    assert datastore_type({"DATASTORE_TYPE": "kubernetes", "ETCD_ENDPOINTS": "http://x:2379"}) == "kubernetes"
    assert datastore_type({"DATASTORE_TYPE": "etcdv3"}) == "etcdv3"
    with pytest.raises(errors.DatastoreError, match="'consul' is not a Calico datastore type"):
        datastore_type({"DATASTORE_TYPE": "consul"})


def test_kube_config_from_env(tmp_path, monkeypatch):
    from datastore.kdd import kube_config_from_env

    kc = tmp_path / "kubeconfig"
    kc.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "clusters": [{"name": "k", "cluster": {"server": "https://10.0.0.10:6443", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "abc"}}]}))
    cfg = kube_config_from_env({"KUBECONFIG": str(kc)})
    assert cfg.server == "https://10.0.0.10:6443" and cfg.bearer() == "abc"
    cfg = kube_config_from_env({"K8S_API_ENDPOINT": "https://10.96.0.1:443/", "K8S_API_TOKEN": "t",
                                "K8S_CA_FILE": "/ca.crt", "K8S_CERT_FILE": "/c.crt", "K8S_KEY_FILE": "/k.key",
                                "K8S_INSECURE_SKIP_TLS_VERIFY": "true"})
    assert (cfg.server, cfg.bearer(), cfg.ca_file, cfg.cert_file, cfg.key_file, cfg.insecure) == \
        ("https://10.96.0.1:443", "t", "/ca.crt", "/c.crt", "/k.key", True)
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    (home / ".kube" / "config").write_text(kc.read_text())
    assert kube_config_from_env({"HOME": str(home)}).server == "https://10.0.0.10:6443"
    with pytest.raises(errors.DatastoreError, match="KUBECONFIG"):
        kube_config_from_env({"HOME": str(tmp_path / "nothing")})


def test_uid_reversal_is_its_own_inverse_and_keeps_version_and_variant():
    for _ in range(50):
        u = str(uuid.uuid4())
        r = crds.reverse_uid(u)
        assert crds.reverse_uid(r) == u
        assert r[14] == u[14] and r[19] == u[19]  # version nibble, variant byte untouched
    assert crds.reverse_uid("00000000-0000-4000-8000-000000000001") == "00000000-0000-4000-8000-000000000080"


def test_calico_metadata_travels_in_the_annotation():
    pool = IPPool(metadata=Metadata(name="p", uid=str(uuid.uuid4()), creation_timestamp="2024-07-30T00:00:00Z",
                                    labels={"team": "a", "projectcalico.org/owned": "x"},
                                    annotations={"note": "n", "projectcalico.org/owned": "y"}))
    pool.spec.cidr = "10.0.0.0/16"
    pool.apply_defaults()
    cr = crds.to_cr(pool)
    assert cr["metadata"]["labels"] == {"projectcalico.org/owned": "x"}
    ann = cr["metadata"]["annotations"]
    assert ann["projectcalico.org/owned"] == "y"
    assert ann["projectcalico.org/metadata"] == json.dumps(
        {"creationTimestamp": "2024-07-30T00:00:00Z", "labels": pool.metadata.labels,
         "annotations": pool.metadata.annotations}, separators=(",", ":"))
    back = crds.from_cr(IPPool, cr)
    assert back.to_dict() == pool.to_dict()


def test_ipam_custom_resources_have_calicos_shapes_and_names():
    block = IPAMBlock(metadata=Metadata(name="10-0-0-64-26"))
    block.spec.cidr = "10.0.0.64/26"
    block.spec.affinity = "host:w0"
    block.spec.allocations = [0, None]
    block.spec.unallocated = [1]
    cr = crds.to_cr(block)
    assert cr["metadata"]["name"] == "10-0-0-64-26"
    assert set(cr["spec"]) >= {"cidr", "allocations", "unallocated", "attributes", "strictAffinity", "deleted"}
    assert cr["metadata"]["annotations"] == {"projectcalico.org/metadata": '{"creationTimestamp":null}'}
    aff = BlockAffinity(spec=BlockAffinitySpec(state="confirmed", node="server1", cidr="10.254.82.0/29"))
    acr = crds.to_cr(aff)
    assert acr["metadata"]["name"] == "server1-10-254-82-0-29"  # #6968's example
    assert acr["spec"]["deleted"] == "false"
    assert crds.from_cr(BlockAffinity, acr).spec.deleted is False
    acr["spec"]["deleted"] = "true"
    assert crds.from_cr(BlockAffinity, acr).spec.deleted is True
    h = IPAMHandle(metadata=Metadata(name="K8s-Pod-Network.ABC"))
    h.spec.handle_id, h.spec.block = "K8s-Pod-Network.ABC", {"10.0.0.64/26": 1}
    hcr = crds.to_cr(h)
    assert hcr["metadata"]["name"] == "k8s-pod-network.abc" and hcr["spec"]["handleID"] == "K8s-Pod-Network.ABC"
    assert crds.from_cr(IPAMHandle, hcr).metadata.name == "K8s-Pod-Network.ABC"
    cfg = crds.to_cr(IPAMConfig(metadata=Metadata(name="default")))
    assert cfg["spec"] == {"strictAffinity": False, "autoAllocateBlocks": True}
    long = "n" * 260
    name = crds.affinity_name(long, "10.0.0.0/26")
    assert len(name) < 253 and name.endswith("-10-0-0-0-26-" + name.rsplit("-", 1)[1])


def test_policies_are_stored_under_their_tier_name():
    np = NetworkPolicy(metadata=Metadata(name="allow-web", namespace="shop"))
    cr = crds.to_cr(np)
    assert (cr["metadata"]["name"], cr["metadata"]["namespace"]) == ("default.allow-web", "shop")
    assert crds.from_cr(NetworkPolicy, cr).metadata.name == "allow-web"


def _structural(schema: dict, path: str) -> None:
    if schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("x-kubernetes-int-or-string"):
        return
    assert schema.get("type"), f"{path} has no type"
    for k, sub in (schema.get("properties") or {}).items():
        _structural(sub, f"{path}.{k}")
    if "items" in schema:
        _structural(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        _structural(schema["additionalProperties"], f"{path}{{}}")


def test_crd_definitions_are_calicos_eighteen_with_structural_schemas():
    defs = crds.crd_definitions()
    assert [d["metadata"]["name"].split(".")[0] for d in defs] == [
        "bgpconfigurations", "bgpfilters", "bgppeers", "blockaffinities", "caliconodestatuses",
        "clusterinformations", "felixconfigurations", "globalnetworkpolicies", "globalnetworksets", "hostendpoints",
        "ipamblocks", "ipamconfigs", "ipamhandles", "ippools", "ipreservations", "kubecontrollersconfigurations",
        "networkpolicies", "networksets"]
    for d in defs:
        assert d["spec"]["group"] == "crd.projectcalico.org"
        assert d["spec"]["scope"] == ("Namespaced" if d["spec"]["names"]["plural"] in ("networkpolicies",
                                                                                         "networksets") else "Cluster")
        _structural(d["spec"]["versions"][0]["schema"]["openAPIV3Schema"], d["metadata"]["name"])
    pool = next(d for d in defs if d["spec"]["names"]["kind"] == "IPPool")
    props = pool["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert props["blockSize"] == {"type": "integer"} and props["allowedUses"]["items"] == {"type": "string"}
    block = next(d for d in defs if d["spec"]["names"]["kind"] == "IPAMBlock")
    bprops = block["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert bprops["allocations"]["items"] == {"type": "integer", "nullable": True}


def test_the_shipped_crd_manifest_is_generated_from_the_code():
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[2] / "manifests" / "crds.yaml"
    assert shipped.read_text() == crds.render_yaml(), "regenerate: python -m datastore.crds > manifests/crds.yaml"


K8S_NODE = {
    "metadata": {"name": "k8s-w0", "resourceVersion": "42", "uid": "u-1", "creationTimestamp": "2024-01-01T00:00:00Z",
                 "labels": {"kubernetes.io/hostname": "k8s-w0"},
                 "annotations": {"projectcalico.org/IPv4Address": "172.30.0.11/24",
                                 "projectcalico.org/IPv4IPIPTunnelAddr": "192.168.18.64",
                                 "projectcalico.org/ASNumber": "64513",
                                 "projectcalico.org/RouteReflectorClusterID": "not-an-ip",
                                 "projectcalico.org/labels": '{"rr":"yes"}'}},
    "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
    "status": {"addresses": [{"type": "InternalIP", "address": "172.30.0.11"},
                             {"type": "Hostname", "address": "k8s-w0"}]},
}


def test_kubernetes_node_to_calico_node_and_back():
    node = derived.k8s_node_to_calico(K8S_NODE)
    d = node.to_dict()
    assert d["metadata"]["resourceVersion"] == "42" and d["metadata"]["uid"] == "u-1"
    assert d["metadata"]["labels"] == {"rr": "yes", "kubernetes.io/hostname": "k8s-w0"}
    assert d["metadata"]["annotations"] == {"projectcalico.org/kube-labels": '{"kubernetes.io/hostname":"k8s-w0"}'}
    assert d["spec"]["bgp"] == {"ipv4Address": "172.30.0.11/24", "ipv4IPIPTunnelAddr": "192.168.18.64",
                                "asNumber": 64513}  # an invalid cluster ID annotation is ignored
    assert d["spec"]["orchRefs"] == [{"nodeName": "k8s-w0", "orchestrator": "k8s"}]
    assert d["spec"]["addresses"] == [{"address": "172.30.0.11/24", "type": "CalicoNodeIP"},
                                      {"address": "172.30.0.11", "type": "InternalIP"}]
    assert d["status"] == {"podCIDRs": ["10.244.1.0/24"]}
    node.spec.bgp = NodeBGPSpec(ipv4_address="172.30.0.11/24", route_reflector_cluster_id="224.0.0.1")
    node.metadata.labels["extra"] = "1"
    merged = derived.merge_node_into_k8s(node, K8S_NODE)
    ann = merged["metadata"]["annotations"]
    assert ann["projectcalico.org/RouteReflectorClusterID"] == "224.0.0.1"
    assert "projectcalico.org/IPv4IPIPTunnelAddr" not in ann and "projectcalico.org/ASNumber" not in ann
    assert json.loads(ann["projectcalico.org/labels"]) == {"rr": "yes", "extra": "1"}
    assert merged["metadata"]["labels"] == K8S_NODE["metadata"]["labels"]
    assert K8S_NODE["metadata"]["annotations"]["projectcalico.org/ASNumber"] == "64513"  # input untouched
    assert isinstance(derived.k8s_node_to_calico(merged), Node)


POD = {
    "metadata": {"name": "web-1", "namespace": "shop", "uid": "pod-uid", "resourceVersion": "7",
                 "labels": {"app": "web"},
                 "annotations": {"cni.projectcalico.org/podIP": "10.0.0.5/32",
                                 "cni.projectcalico.org/podIPs": "10.0.0.5/32",
                                 "cni.projectcalico.org/containerID": "abc"}},
    "spec": {"nodeName": "k8s-w0", "serviceAccountName": "front",
             "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 80},
                                                    {"containerPort": 8080, "hostPort": 30080},
                                                    {"containerPort": 9000}]}]},
    "status": {"phase": "Running"},
}


def test_pod_to_workload_endpoint():
    assert derived.is_workload(POD)
    wep = derived.pod_to_workload_endpoint(POD)
    d = wep.to_dict()
    assert d["metadata"]["name"] == "k8s--w0-k8s-web--1-eth0"
    assert d["metadata"]["labels"] == {"app": "web", "projectcalico.org/namespace": "shop",
                                       "projectcalico.org/orchestrator": "k8s",
                                       "projectcalico.org/serviceaccount": "front"}
    assert d["spec"]["ipNetworks"] == ["10.0.0.5/32"] and d["spec"]["containerID"] == "abc"
    assert d["spec"]["profiles"] == ["kns.shop", "ksa.shop.front"]
    assert d["spec"]["interfaceName"] == derived.names.veth_name("shop", "web-1")
    assert d["spec"]["ports"] == [{"name": "http", "protocol": "TCP", "port": 80},
                                  {"protocol": "TCP", "port": 8080, "hostPort": 30080}]
    assert "mac" not in d["spec"]
    running = json.loads(json.dumps(POD))
    running["status"]["podIPs"] = [{"ip": "10.0.0.9"}]
    assert derived.pod_to_workload_endpoint(running).spec.ip_networks == ["10.0.0.9/32"]
    done = json.loads(json.dumps(POD))
    done["status"]["phase"] = "Succeeded"
    assert derived.pod_to_workload_endpoint(done).spec.ip_networks == []
    deleting = json.loads(json.dumps(POD))
    deleting["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    deleting["metadata"]["annotations"]["cni.projectcalico.org/podIP"] = ""
    assert derived.is_finished(deleting)
    host = json.loads(json.dumps(POD))
    host["spec"]["hostNetwork"] = True
    assert not derived.is_workload(host)
    assert derived.cni_annotations(wep) == {"cni.projectcalico.org/podIP": "10.0.0.5/32",
                                            "cni.projectcalico.org/podIPs": "10.0.0.5/32",
                                            "cni.projectcalico.org/containerID": "abc"}
    assert derived.annotation_patch({"a": "b"}, "7", "pod-uid") == {
        "metadata": {"annotations": {"a": "b"}, "resourceVersion": "7", "uid": "pod-uid"}}
    assert derived.parse_wep_name("k8s--w0-k8s-web--1-eth0") == ("k8s-w0", "k8s", "web-1", "eth0")
    assert derived.parse_wep_name("nonsense") is None


class _Inf:
    def __init__(self) -> None:
        self.relists = 1


def test_watch_stream_emits_only_real_changes_and_deletes_by_source():
    from datastore.kdd import KubeWatchStream

    class FakeClient:
        kinds: dict = {}
        interface_prefix = "cali"

    s = KubeWatchStream(FakeClient(), [])
    wep = derived.pod_to_workload_endpoint(POD)
    src = ("v1", "pods", "shop/web-1")
    s._emit("WorkloadEndpoint", src, wep, "7")
    again = derived.pod_to_workload_endpoint({**POD, "metadata": {**POD["metadata"], "resourceVersion": "8"}})
    s._emit("WorkloadEndpoint", src, again, "8")  # only the resourceVersion changed: nothing
    moved = json.loads(json.dumps(POD))
    moved["metadata"]["annotations"]["cni.projectcalico.org/podIP"] = "10.0.0.6/32"
    moved["metadata"]["annotations"]["cni.projectcalico.org/podIPs"] = "10.0.0.6/32"
    s._emit("WorkloadEndpoint", src, derived.pod_to_workload_endpoint(moved), "9")
    s._emit("WorkloadEndpoint", src, None, "10")  # the pod is no longer a workload (or is gone)
    s._emit("WorkloadEndpoint", src, None, "11")  # nothing more to delete
    events = []
    while not s._queue.empty():
        ev = s._queue.get()
        events.append((ev.type, ev.name, ev.revision))
    assert events == [("ADDED", "k8s--w0-k8s-web--1-eth0", 7), ("MODIFIED", "k8s--w0-k8s-web--1-eth0", 9),
                      ("DELETED", "k8s--w0-k8s-web--1-eth0", 10)]


def test_install_cni_kubernetes_conflist_and_kubeconfig(tmp_path):
    """install-cni in the Kubernetes datastore: calico.yaml's conflist (datastore_type kubernetes,
    kubernetes.kubeconfig -> <CNI_NET_DIR>/calico-kubeconfig, mode 0600, here a copy of the
    KUBECONFIG calico-node runs with); an upstream template's placeholders are filled too."""
    import os

    from agent.installcni import cni_kubeconfig, install_cni

    kube = tmp_path / "admin.conf"
    kube.write_text("apiVersion: v1\nkind: Config\n")
    for exe in ("calico", "calico-ipam"):
        (tmp_path / exe).write_text("")
    env = {"DATASTORE_TYPE": "kubernetes", "KUBECONFIG": str(kube), "CNI_NET_DIR": str(tmp_path / "net"),
           "CNI_BIN_DIR": str(tmp_path / "bin"), "CNI_MTU": "1480"}
    written = install_cni("k8s-w0", [], env, bin_source=str(tmp_path))
    conf = json.loads((tmp_path / "net" / "10-calico.conflist").read_text())
    calico = conf["plugins"][0]
    assert calico["datastore_type"] == "kubernetes" and calico["nodename"] == "k8s-w0" and calico["mtu"] == 1480
    assert calico["kubernetes"] == {"kubeconfig": str(tmp_path / "net" / "calico-kubeconfig")}
    assert "etcd_endpoints" not in calico
    kc = tmp_path / "net" / "calico-kubeconfig"
    assert str(kc) in written and oct(os.stat(kc).st_mode & 0o777) == "0o600"
    assert json.loads(kc.read_text()) == {"apiVersion": "v1", "kind": "Config"}  # the YAML one, as JSON
    upstream = ('{"name":"k8s-pod-network","cniVersion":"0.3.1","plugins":[{"type":"calico","log_level":"__LOG_LEVEL__",'
                '"datastore_type":"__DATASTORE_TYPE__","nodename":"__KUBERNETES_NODE_NAME__","mtu":__CNI_MTU__,'
                '"ipam":{"type":"calico-ipam"},"kubernetes":{"kubeconfig":"__KUBECONFIG_FILEPATH__"}}]}')
    install_cni("k8s-w0", [], {**env, "CNI_NETWORK_CONFIG": upstream}, bin_source=str(tmp_path))
    conf = json.loads((tmp_path / "net" / "10-calico.conflist").read_text())
    assert conf["plugins"][0]["log_level"] == "info" and conf["plugins"][0]["datastore_type"] == "kubernetes"
    # in a pod: a token of the calico-cni-plugin ServiceAccount would be requested; without
    # KUBERNETES_SERVICE_HOST/PORT and a token there is nothing to authenticate with
    with pytest.raises(ValueError, match="neither a ServiceAccount token"):
        cni_kubeconfig({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "CALICO_CNI_SERVICE_ACCOUNT": "x"},
                       sa_dir=str(tmp_path / "nosa"))
    with pytest.raises(ValueError, match="neither"):
        install_cni("k8s-w0", [], {"DATASTORE_TYPE": "kubernetes", "CNI_NET_DIR": str(tmp_path / "n2"),
                                   "CNI_BIN_DIR": str(tmp_path / "b2"), "KUBERNETES_SERVICE_PORT": "443"},
                    bin_source=str(tmp_path))


def test_node_status_pod_cidrs_are_the_kubernetes_nodes_spec_pod_cidrs():
    """``K8sNodeToCalico``: status.podCIDRs is a copy of spec.podCIDRs, every family in order;
    a Node that node IPAM has not given a CIDR yet has none, and calicoctl then prints
    ``status: {}`` (Go's empty NodeStatus struct), so jq's ``.status.podCIDRs[]`` fails there
    as on Calico."""
    from testbed.calicoctl.resources import printed

    dual = json.loads(json.dumps(K8S_NODE))
    dual["spec"] = {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"]}
    assert derived.k8s_node_to_calico(dual).status == {"podCIDRs": ["10.244.1.0/24", "fd00:10:244:1::/64"]}
    bare = json.loads(json.dumps(K8S_NODE))
    bare["spec"] = {}
    node = derived.k8s_node_to_calico(bare)
    assert node.status is None and "status" not in node.to_dict()  # nothing stored
    assert printed(node)["status"] == {}
    assert printed(derived.k8s_node_to_calico(K8S_NODE))["status"] == {"podCIDRs": ["10.244.1.0/24"]}
    wep = derived.pod_to_workload_endpoint(POD)
    assert "status" not in printed(wep)  # a WorkloadEndpoint has no status struct


def test_node_update_writes_over_the_node_it_just_read_without_reading_it_again():
    """A Calico Node update right after its get sends one PUT (no second GET, each one a
    round trip of a busy lab's start-up); an object at another resourceVersion is read first."""
    from datastore.kdd import KubeClient

    class FakeKube:
        def __init__(self) -> None:
            self.node = json.loads(json.dumps(K8S_NODE))
            self.calls: list[str] = []

        def get(self, api, plural, name, namespace=None):
            self.calls.append(f"GET {name}")
            return json.loads(json.dumps(self.node))

        def replace(self, obj, plural=None, sub=None):
            self.calls.append(f"PUT {obj['metadata']['name']}/{sub}")
            if obj["metadata"]["resourceVersion"] != self.node["metadata"]["resourceVersion"]:
                import kubeclient

                raise kubeclient.Conflict(409, "Conflict", "the object has been modified")
            self.node = json.loads(json.dumps(obj))
            self.node["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
            return json.loads(json.dumps(self.node))

    kube = FakeKube()
    kc = KubeClient(kube)
    node = kc.get("Node", "k8s-w0")
    node.spec.bgp.ipv4_ipip_tunnel_addr = "192.168.18.65"
    out = kc.update(node)
    assert kube.calls == ["GET k8s-w0", "PUT k8s-w0/status"]
    assert out.spec.bgp.ipv4_ipip_tunnel_addr == "192.168.18.65" and out.metadata.resource_version == "43"
    kube.node["metadata"]["resourceVersion"] = "50"  # someone else wrote the Node
    out.spec.bgp.ipv4_ipip_tunnel_addr = "192.168.18.66"
    with pytest.raises(errors.Conflict):
        kc.update(out)  # the write carries 43: the server has 50
    assert kube.calls[2:] == ["PUT k8s-w0/status"]
    fresh = kc.get("Node", "k8s-w0")
    fresh.spec.bgp.ipv4_ipip_tunnel_addr = "192.168.18.66"
    kc.node_sources["k8s-w0"]["metadata"]["resourceVersion"] = "49"  # a cache at another version
    kc.update(fresh)
    assert kube.calls[3:] == ["GET k8s-w0", "GET k8s-w0", "PUT k8s-w0/status"]
