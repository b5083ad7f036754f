"""The Kubernetes datastore (datastore.kdd) against calicolab's real API server: Calico's
resources as crd.projectcalico.org/v1 custom resources, objects derived from Nodes, Pods,
Namespaces and ServiceAccounts, CAS through resourceVersion, IPAM objects with Calico's
names, and the watch (list+watch, full resync after 410)."""

from __future__ import annotations

import json
import threading

import pytest

import kubeclient
from datastore import errors
from testbed.poll import wait_for

pytestmark = pytest.mark.etcd


@pytest.fixture(scope="module")
def kc(apiserver):
    from datastore.kdd import KubeClient, install_crds

    kube = apiserver.client()
    install_crds(kube)
    return KubeClient(kube)


def _pool(name: str, cidr: str, **spec):
    from datastore.resources import IPPool, Metadata

    p = IPPool(metadata=Metadata(name=name))
    p.spec.cidr = cidr
    for k, v in spec.items():
        setattr(p.spec, k, v)
    return p


def _node(kube, name: str, ip: str, pod_cidr: str, labels: dict | None = None) -> dict:
    return kube.create({"apiVersion": "v1", "kind": "Node",
                        "metadata": {"name": name, "labels": labels or {"kubernetes.io/hostname": name}},
                        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
                        "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})


def _pod(kube, name: str, node: str | None, ns: str = "default", **extra) -> dict:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
           "spec": {"containers": [{"name": "c", "image": "nginx",
                                    "ports": [{"name": "http", "containerPort": 80}, {"containerPort": 81}]}]}}
    if node:
        pod["spec"]["nodeName"] = node
    pod["spec"].update(extra)
    return kube.create(pod)


def test_ippool_is_a_custom_resource_with_calico_metadata_and_cas(kc, apiserver):
    pool = kc.create(_pool("kdd-p1", "10.50.0.0/16", ipip_mode="Always"))
    assert pool.metadata.resource_version and pool.metadata.uid
    cr = apiserver.client().get("crd.projectcalico.org/v1", "ippools", "kdd-p1")
    assert cr["apiVersion"] == "crd.projectcalico.org/v1" and cr["kind"] == "IPPool"
    assert cr["spec"]["cidr"] == "10.50.0.0/16" and cr["spec"]["blockSize"] == 26
    meta = json.loads(cr["metadata"]["annotations"]["projectcalico.org/metadata"])
    assert meta["creationTimestamp"] == pool.metadata.creation_timestamp
    # the Calico UID is the custom resource's with its bits reversed (ConvertUID)
    from datastore.crds import reverse_uid

    assert cr["metadata"]["uid"] == reverse_uid(pool.metadata.uid) != pool.metadata.uid
    # a stale resourceVersion is the API server's 409, nothing written
    stale = kc.get("IPPool", "kdd-p1")
    fresh = kc.get("IPPool", "kdd-p1")
    fresh.spec.nat_outgoing = True
    kc.update(fresh)
    stale.spec.disabled = True
    with pytest.raises(errors.Conflict):
        kc.update(stale)
    got = kc.get("IPPool", "kdd-p1")
    assert got.spec.nat_outgoing and not got.spec.disabled
    # Calico's rules hold in this mode too
    with pytest.raises(errors.ValidationError, match="overlaps"):
        kc.create(_pool("kdd-p2", "10.50.128.0/17"))
    got.spec.block_size = 24
    with pytest.raises(errors.ValidationError, match="blockSize"):
        kc.update(got)
    res = apiserver.kubectl("get", "ippools.crd.projectcalico.org")
    assert "kdd-p1" in res.stdout and "NAME" in res.stdout
    kc.delete("IPPool", "kdd-p1")
    with pytest.raises(errors.NotFound):
        kc.get("IPPool", "kdd-p1")


def test_policy_names_carry_the_tier(kc, apiserver):
    from datastore.resources import GlobalNetworkPolicy, Metadata

    gnp = GlobalNetworkPolicy(metadata=Metadata(name="deny-x"))
    gnp.spec.selector = "all()"
    kc.create(gnp)
    assert apiserver.client().get("crd.projectcalico.org/v1", "globalnetworkpolicies", "default.deny-x")
    assert kc.get("GlobalNetworkPolicy", "deny-x").metadata.name == "deny-x"
    kc.delete("GlobalNetworkPolicy", "deny-x")


def test_ipam_objects_have_calico_names_and_soft_delete(kc, apiserver):
    from ipam import IPAM

    kube = apiserver.client()
    kc.create(_pool("kdd-ipam", "10.60.0.0/24", block_size=28))
    ipam = IPAM(kc)
    ips = ipam.auto_assign(2, "K8s-Pod-Network.ABC", {"node": "n1"}, "n1")
    assert len(ips) == 2 and all(str(i).startswith("10.60.0.") for i in ips)
    block = kube.get("crd.projectcalico.org/v1", "ipamblocks", f"10-60-0-{int(str(ips[0]).split('.')[3]) & ~15}-28")
    assert block["spec"]["affinity"] == "host:n1"
    assert json.loads(block["metadata"]["annotations"]["projectcalico.org/metadata"]) == {"creationTimestamp": None}
    cidr = block["spec"]["cidr"]
    aff = kube.get("crd.projectcalico.org/v1", "blockaffinities", f"n1-{cidr.replace('.', '-').replace('/', '-')}")
    assert aff["spec"] == {"state": "confirmed", "node": "n1", "cidr": cidr, "deleted": "false"}
    handle = kube.get("crd.projectcalico.org/v1", "ipamhandles", "k8s-pod-network.abc")
    assert handle["spec"]["handleID"] == "K8s-Pod-Network.ABC" and handle["spec"]["block"] == {cidr: 2}
    report = ipam.check()  # no endpoint uses them yet: leaked, nothing else wrong
    assert sorted(report.leaked_ips) == sorted(ips) and report.problems == len(ips) and report.good_handles == 1
    assert sorted(ipam.release_by_handle("K8s-Pod-Network.ABC")) == sorted(ips)
    names = [h["metadata"]["name"] for h in kube.list("crd.projectcalico.org/v1", "ipamhandles")["items"]]
    assert "k8s-pod-network.abc" not in names
    # the node goes: its affinity and its (empty) block are deleted
    assert ipam.release_host_affinities("n1") == 1
    assert kube.list("crd.projectcalico.org/v1", "ipamblocks")["items"] == []
    assert kube.list("crd.projectcalico.org/v1", "blockaffinities")["items"] == []
    kc.delete("IPPool", "kdd-ipam")


def test_a_half_deleted_block_is_finished_by_the_next_read(kc, apiserver):
    """libcalico-go's soft delete: a block left with deleted=true (a writer died between the
    update and the DELETE) reads as gone, and the read completes the deletion."""
    from ipam.block import Block
    from ipam.kddstore import KubeStore, block_cr

    kube = apiserver.client()
    store = KubeStore(kube)
    b = Block.new("10.61.0.0/28", "host:n9")
    b.deleted = True
    kube.create(block_cr(b), plural="ipamblocks")
    assert store.get_block("10.61.0.0/28") is None
    with pytest.raises(kubeclient.NotFound):
        kube.get("crd.projectcalico.org/v1", "ipamblocks", "10-61-0-0-28")


def test_calico_node_is_the_kubernetes_node(kc, apiserver):
    kube = apiserver.client()
    _node(kube, "kdd-n1", "172.30.9.1", "10.244.1.0/24", {"kubernetes.io/hostname": "kdd-n1", "zone": "a"})
    node = kc.get("Node", "kdd-n1")
    assert node.status == {"podCIDRs": ["10.244.1.0/24"]}
    assert [(r.node_name, r.orchestrator) for r in node.spec.orch_refs] == [("kdd-n1", "k8s")]
    assert node.metadata.labels["zone"] == "a"
    assert [(a.address, a.type) for a in node.spec.addresses] == [("172.30.9.1", "InternalIP")]
    from datastore.resources import NodeBGPSpec

    node.spec.bgp = NodeBGPSpec(ipv4_address="172.30.9.1/24", ipv4_ipip_tunnel_addr="10.50.0.1", as_number=64513)
    kc.update(node)
    ann = kube.get("v1", "nodes", "kdd-n1")["metadata"]["annotations"]
    assert ann["projectcalico.org/IPv4Address"] == "172.30.9.1/24"
    assert ann["projectcalico.org/IPv4IPIPTunnelAddr"] == "10.50.0.1"
    assert ann["projectcalico.org/ASNumber"] == "64513"
    assert "projectcalico.org/labels" not in ann  # every label is the Kubernetes node's
    again = kc.get("Node", "kdd-n1")
    assert json.loads(again.metadata.annotations["projectcalico.org/kube-labels"]) == {
        "kubernetes.io/hostname": "kdd-n1", "zone": "a"}
    assert again.spec.bgp.ipv4_address == "172.30.9.1/24" and again.spec.bgp.as_number == 64513
    assert ("172.30.9.1/24", "CalicoNodeIP") in [(a.address, a.type) for a in again.spec.addresses]
    # a stale write is a conflict; Calico Nodes cannot be created or deleted in this datastore
    node.spec.bgp.as_number = 1
    with pytest.raises(errors.Conflict):
        kc.update(node)
    with pytest.raises(errors.DatastoreError, match="not supported"):
        kc.delete("Node", "kdd-n1")
    kube.delete("v1", "nodes", "kdd-n1")


def test_workload_endpoint_is_the_pod_and_cni_writes_annotations(kc, apiserver):
    kube = apiserver.client()
    _pod(kube, "kdd-web", "kdd-w1")
    _pod(kube, "kdd-unscheduled", None)
    _pod(kube, "kdd-hostnet", "kdd-w1", hostNetwork=True)
    weps = {w.metadata.name: w for w in kc.list("WorkloadEndpoint", "default")}
    assert "kdd--w1-k8s-kdd--web-eth0" in weps
    assert not any("unscheduled" in n or "hostnet" in n for n in weps)
    wep = weps["kdd--w1-k8s-kdd--web-eth0"]
    assert wep.spec.interface_name.startswith("cali") and len(wep.spec.interface_name) == 15
    assert wep.spec.profiles == ["kns.default", "ksa.default.default"]
    assert wep.metadata.labels["projectcalico.org/namespace"] == "default"
    assert [(p.name, p.port) for p in wep.spec.ports] == [("http", 80)]
    assert wep.spec.ip_networks == []
    # the CNI plugin's write: podIP, podIPs, containerID on the pod (status subresource)
    wep.spec.ip_networks = ["10.50.0.7/32"]
    wep.spec.container_id = "cid123"
    out = kc.create(wep)
    assert out.spec.ip_networks == ["10.50.0.7/32"] and out.spec.container_id == "cid123"
    ann = kube.get("v1", "pods", "kdd-web", "default")["metadata"]["annotations"]
    assert ann["cni.projectcalico.org/podIP"] == "10.50.0.7/32"
    assert ann["cni.projectcalico.org/podIPs"] == "10.50.0.7/32"
    assert ann["cni.projectcalico.org/containerID"] == "cid123"
    # a UID that is not the pod's fails (the API server's "metadata.uid: field is immutable"): nothing changes
    from datastore.resources import Metadata, WorkloadEndpoint

    other = WorkloadEndpoint(metadata=Metadata(name=wep.metadata.name, namespace="default",
                                               uid="00000000-0000-4000-8000-000000000000"))
    other.spec.node, other.spec.ip_networks = "kdd-w1", ["10.50.0.99/32"]
    with pytest.raises(errors.ValidationError, match="uid"):
        kc.update(other)
    pod = kube.get("v1", "pods", "kdd-web", "default")
    pod["metadata"]["uid"] = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(kubeclient.Conflict, match="Precondition failed: UID in precondition"):
        kube.replace(pod)  # a PUT's UID is a precondition (409)
    assert kube.get("v1", "pods", "kdd-web", "default")["metadata"]["annotations"][
        "cni.projectcalico.org/podIP"] == "10.50.0.7/32"
    # DEL: podIP/podIPs blanked, containerID kept
    kc.delete("WorkloadEndpoint", wep.metadata.name, "default")
    ann = kube.get("v1", "pods", "kdd-web", "default")["metadata"]["annotations"]
    assert ann["cni.projectcalico.org/podIP"] == "" and ann["cni.projectcalico.org/podIPs"] == ""
    assert ann["cni.projectcalico.org/containerID"] == "cid123"
    for p in ("kdd-web", "kdd-unscheduled", "kdd-hostnet"):
        kube.delete("v1", "pods", p, "default", grace_period=0)


def test_profiles_from_namespaces_and_serviceaccounts(kc, apiserver):
    kube = apiserver.client()
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kdd-ns", "labels": {"team": "x"}}})
    wait_for(lambda: [p.metadata.name for p in kc.list("Profile")],
             lambda names: "ksa.kdd-ns.default" in names, timeout=10, what="kdd-ns default ServiceAccount profile")
    names = [p.metadata.name for p in kc.list("Profile")]
    assert names[0] == "kns.default" or "projectcalico-default-allow" in names
    prof = kc.get("Profile", "kns.kdd-ns")
    assert prof.spec.labels_to_apply == {"pcns.team": "x", "pcns.projectcalico.org/name": "kdd-ns",
                                         "pcns.kubernetes.io/metadata.name": "kdd-ns"} or \
        prof.spec.labels_to_apply["pcns.team"] == "x"
    assert [r.action for r in prof.spec.ingress] == ["Allow"]
    assert kc.get("Profile", "projectcalico-default-allow").spec.egress[0].action == "Allow"
    sa = kc.get("Profile", "ksa.kdd-ns.default")
    assert sa.spec.labels_to_apply["pcsa.projectcalico.org/name"] == "default" and not sa.spec.ingress
    with pytest.raises(errors.DatastoreError, match="not supported"):
        kc.update(prof)


def test_watch_lists_then_streams_and_resyncs_after_410(kc, apiserver, tmp_path):
    """The watch: ADDED for what exists, SYNCED, then changes; while the API server is down
    a replica writes and etcd compacts: the watch's informers get 410 Gone, re-list, and the
    stream emits exactly what changed meanwhile."""
    from tests.apiserver_support import APIServerProcess

    kube = apiserver.client()
    kc.create(_pool("kdd-w-a", "10.70.0.0/24"))
    kc.create(_pool("kdd-w-b", "10.71.0.0/24"))
    _pod(kube, "kdd-wpod", "kdd-wn")
    events: list = []
    lock = threading.Lock()
    stream = kc.watch_stream(["IPPool", "WorkloadEndpoint"], retry_delay=0.2)

    def run() -> None:
        for ev in stream:
            with lock:
                events.append(ev)

    t = threading.Thread(target=run, daemon=True)
    t.start()

    def seen() -> list[tuple[str, str]]:
        with lock:
            return [(e.type, e.name) for e in events]

    try:
        wait_for(seen, lambda s: ("SYNCED", "") in s, timeout=15, what="initial sync")
        lists = stream.relists
        assert lists == 2  # ippools and pods, one list each
        first = seen()
        assert ("ADDED", "kdd-w-a") in first and ("ADDED", "kdd-w-b") in first
        assert ("ADDED", "kdd--wn-k8s-kdd--wpod-eth0") in first
        assert first.index(("ADDED", "kdd-w-a")) < first.index(("SYNCED", ""))
        p = kc.get("IPPool", "kdd-w-a")
        p.spec.nat_outgoing = True
        kc.update(p)
        wait_for(seen, lambda s: ("MODIFIED", "kdd-w-a") in s, timeout=10, what="MODIFIED")
        # a pod status change that changes nothing of the WorkloadEndpoint emits nothing
        n = len(seen())
        kube.patch("v1", "pods", "kdd-wpod", {"status": {"phase": "Pending", "message": "x"}}, "default",
                   sub="status")
        # the API server goes away; a replica (same etcd) takes writes; etcd compacts
        apiserver.stop()
        replica = APIServerProcess(tmp_path / "replica", apiserver.etcd)
        replica.start()
        try:
            rk = replica.client()
            rk.delete("crd.projectcalico.org/v1", "ippools", "kdd-w-b")
            from datastore.kdd import KubeClient

            KubeClient(rk).create(_pool("kdd-w-c", "10.72.0.0/24"))
            from tests.etcd.test_apiserver_api import _compact

            _compact(apiserver)
        finally:
            replica.stop()
        apiserver.start()
        wait_for(seen, lambda s: ("DELETED", "kdd-w-b") in s and ("ADDED", "kdd-w-c") in s, timeout=20,
                 what="resync after 410")
        assert stream.relists > lists  # the resync was a full list after 410 Gone
        after = seen()[n:]
        assert ("MODIFIED", "kdd--wn-k8s-kdd--wpod-eth0") not in after
        assert ("ADDED", "kdd-w-a") not in after  # unchanged objects are not re-announced
    finally:
        stream.close()
        t.join(5)
        for name in ("kdd-w-a", "kdd-w-c"):
            try:
                kc.delete("IPPool", name)
            except errors.NotFound:
                pass
        kube = apiserver.client()
        kube.delete("v1", "pods", "kdd-wpod", "default", grace_period=0)


def test_kubernetes_networkpolicies_are_served_as_knp_policies(kc, apiserver):
    """No policy controller in this mode: the datastore converts Kubernetes NetworkPolicies to
    read-only ``knp.default.<name>`` Calico policies, on get, list and watch."""
    kube = apiserver.client()
    kube.create({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                 "metadata": {"name": "allow-web", "namespace": "default"},
                 "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"],
                          "ingress": [{"ports": [{"port": 80}]}]}})
    names = [p.metadata.name for p in kc.list("NetworkPolicy", "default")]
    assert "knp.default.allow-web" in names
    pol = kc.get("NetworkPolicy", "knp.default.allow-web", "default")
    assert pol.spec.order == 1000 and pol.spec.selector == "projectcalico.org/orchestrator == 'k8s' && app == 'web'"
    with pytest.raises(errors.DatastoreError, match="change them with kubectl"):
        kc.update(pol)
    got: list = []
    stream = kc.watch_stream(["NetworkPolicy"])
    t = threading.Thread(target=lambda: got.extend(ev for ev in stream), daemon=True)
    t.start()
    try:
        wait_for(lambda: [(e.type, e.name) for e in got], lambda v: ("SYNCED", "") in v, timeout=10, what="sync")
        assert ("ADDED", "knp.default.allow-web") in [(e.type, e.name) for e in got]
        kube.delete("networking.k8s.io/v1", "networkpolicies", "allow-web", "default")
        wait_for(lambda: [(e.type, e.name) for e in got], lambda v: ("DELETED", "knp.default.allow-web") in v,
                 timeout=10, what="knp deleted")
    finally:
        stream.close()
        t.join(5)
