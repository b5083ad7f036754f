"""kube-controllers against a real etcd, the real IPAM and the API server (Kubernetes objects
read through the API): a deleted Kubernetes Node takes its Calico data with it; leaked pod
IPs go after the grace period only."""

from __future__ import annotations

import subprocess
import sys
import threading
from ipaddress import IPv4Address

import pytest

from agent.kubecontrollers.config import Config
from agent.kubecontrollers.controller import KubeControllers
from agent.kubecontrollers.kubesource import ApiSource
from datastore import Client
from datastore.resources import IPPool, Metadata, Node, NodeBGPSpec, WorkloadEndpoint
from ipam import IPAM
from testbed.poll import wait_for

pytestmark = pytest.mark.etcd


def k8s_node(api, name: str) -> None:
    api.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})


def k8s_pod(api, name: str, node: str, ip: str | None, ns: str = "default") -> None:
    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx"}]}, "status": {}}
    if ip:
        doc["status"] = {"podIP": ip, "podIPs": [{"ip": ip}]}
    api.create(doc, ns)


def k8s_delete(api, plural: str, name: str, ns: str | None = None) -> None:
    api.delete("v1", plural, name, ns, grace_period=0)


def calico_node(client: Client, ipam: IPAM, name: str, addr: str) -> IPv4Address:
    tunnel = ipam.allocate_tunnel_address(name)
    client.create(Node(metadata=Metadata(name=name),
                       spec=Node.Spec(bgp=NodeBGPSpec(ipv4_address=addr, ipv4_ipip_tunnel_addr=str(tunnel)))))
    return tunnel


def pod_ip(api, ipam: IPAM, pod: str, node: str, cid: str) -> IPv4Address:
    ip = ipam.auto_assign(1, f"k8s-pod-network.{cid}", {"node": node, "pod": pod, "namespace": "default"},
                          node)[0]
    k8s_pod(api, pod, node, str(ip))
    return ip


@pytest.fixture
def cluster(fresh_apiserver, etcd_endpoints):
    ds_client = Client(etcd_endpoints)
    api = fresh_apiserver.client()
    ds_client.create(IPPool(metadata=Metadata(name="default-ipv4-ippool"),
                            spec=IPPool.Spec(cidr="192.168.0.0/16", block_size=24, ipip_mode="Always")))
    ipam = IPAM(ds_client)
    for name, addr in (("w0", "172.30.0.11/24"), ("w1", "172.30.0.12/24")):
        k8s_node(api, name)
        calico_node(ds_client, ipam, name, addr)
    return ds_client, ipam, api


def allocated(ipam: IPAM) -> set[str]:
    return {str(ip) for b in ipam.blocks() for ip, _ in b.allocated()}


def test_deleted_node_loses_calico_node_affinities_ips_and_endpoints(cluster):
    client, ipam, api = cluster
    ip0 = pod_ip(api, ipam, "a", "w0", "c0")
    ip1 = pod_ip(api, ipam, "b", "w1", "c1")
    client.create(WorkloadEndpoint(
        metadata=Metadata(name="w1-k8s-b-eth0", namespace="default"),
        spec=WorkloadEndpoint.Spec(orchestrator="k8s", node="w1", pod="b", endpoint="eth0",
                                   ip_networks=[f"{ip1}/32"], interface_name="cali0123456789a")))
    assert [a.host for a in ipam.store.list_affinities("w1")] == ["w1"]
    # a frozen clock: a node merely absent would wait NODE_MISSING_MIN forever, so w1 can go
    # only because its deletion was seen, and that mark must outlive the scans that find w1 busy
    kc = KubeControllers(client, Config(enabled=["node"], leak_grace_period=900), ApiSource(api),
                         clock=lambda: 0.0)
    stop = threading.Event()
    t = threading.Thread(target=kc.run, args=(stop,), daemon=True)
    t.start()
    try:
        wait_for(lambda: kc.scans, what="first scan")
        assert kc.synced.wait(10), "the Kubernetes watch never listed"
        assert {n.metadata.name for n in client.list("Node")} == {"w0", "w1"}  # nothing deleted yet
        k8s_delete(api, "nodes", "w1")
        # pod b still exists (bound to w1 until pod GC deletes it): its IP, WEP and w1's
        # Calico data stay, so no new pod can get b's address
        scans = kc.scans
        wait_for(lambda: kc.scans, lambda v: v >= scans + 2, what="two scans after the Node's deletion", timeout=10)
        assert {n.metadata.name for n in client.list("Node")} == {"w0", "w1"}
        assert str(ip1) in allocated(ipam) and kc.waiting_nodes == {"w1"}
        assert [w.metadata.name for w in client.list("WorkloadEndpoint")] == ["w1-k8s-b-eth0"]
        k8s_delete(api, "pods", "b", "default")
        wait_for(lambda: [n.metadata.name for n in client.list("Node")], lambda v: v == ["w0"],
                 what="Calico Node w1 removed once its last pod was deleted", timeout=10)
    finally:
        stop.set()
        kc.dirty.set()
        t.join(5)
    assert ipam.store.list_affinities("w1") == []
    assert [a.host for a in ipam.store.list_affinities("w0")] == ["w0"]
    left = allocated(ipam)
    assert str(ip1) not in left and str(ip0) in left
    tunnel0 = client.get("Node", "w0").spec.bgp.ipv4_ipip_tunnel_addr
    assert left == {str(ip0), tunnel0}
    assert client.list("WorkloadEndpoint") == []
    assert kc.cleaned_nodes == ["w1"]


def test_calico_node_before_its_kubelet_keeps_its_tunnel_address(cluster):
    """A lab's calico-node may create its Calico Node (and tunnel address) before its kubelet
    registers the Kubernetes Node: the controller's scans meanwhile release nothing of it."""
    client, ipam, api = cluster
    tunnel = calico_node(client, ipam, "w2", "172.30.0.13/24")
    kc = KubeControllers(client, Config(enabled=["node"], leak_grace_period=900), ApiSource(api))
    result = kc.scan()
    assert result["released"] == [] and result["cleaned_nodes"] == [], result
    assert str(tunnel) in allocated(ipam)
    k8s_node(api, "w2")  # the kubelet registers (within NODE_MISSING_MIN)
    result = kc.scan()
    assert result["released"] == [] and result["cleaned_nodes"] == [], result
    assert str(tunnel) in allocated(ipam) and kc.missing_since == {}


class DeleteBeforeWatch(ApiSource):
    """The API-server source whose watch starts only after a Node was deleted (through the API
    server): the deletion falls between the controller's first scan and its watch's first
    list, so the watch never sees a DELETED event for it."""

    def __init__(self, api, first_scan: threading.Event) -> None:
        super().__init__(api)
        self.first_scan = first_scan

    def watch(self, resources, handler, stop):
        self.first_scan.wait(10)
        k8s_delete(self.client, "nodes", "w1")
        super().watch(resources, handler, stop)


def test_node_deleted_between_first_scan_and_watch_is_still_cleaned(cluster):
    """The watch's first full list (SYNCED) wakes a scan; the gc interval (300 s) does not
    run within the test's deadline, so only that scan can find the deleted Node."""
    client, ipam, api = cluster
    scanned = threading.Event()
    kc = KubeControllers(client, Config(enabled=["node"], leak_grace_period=900),
                         DeleteBeforeWatch(api, scanned))
    assert kc.config.gc_interval >= 60
    real_scan = kc.scan

    def scan():
        r = real_scan()
        scanned.set()
        return r

    kc.scan = scan
    stop = threading.Event()
    t = threading.Thread(target=kc.run, args=(stop,), daemon=True)
    t.start()
    try:
        wait_for(lambda: [n.metadata.name for n in client.list("Node")], lambda v: v == ["w0"],
                 what="Calico Node w1 removed without a DELETED event (gc interval 300 s)", timeout=10)
    finally:
        stop.set()
        kc.dirty.set()
        t.join(5)
    assert kc.cleaned_nodes == ["w1"]


def test_leaked_pod_ip_released_after_grace_and_recheck(cluster):
    client, ipam, api = cluster
    now = [1000.0]
    kc = KubeControllers(client, Config(enabled=["node"], leak_grace_period=10.0), ApiSource(api),
                         clock=lambda: now[0])
    live = pod_ip(api, ipam, "live", "w0", "c-live")
    gone = pod_ip(api, ipam, "gone", "w0", "c-gone")
    r = kc.scan()
    assert r["released"] == [] and r["candidates"] == 0
    k8s_delete(api, "pods", "gone", "default")
    r = kc.scan()
    assert r["released"] == [] and r["candidates"] == 1
    now[0] += 9.0
    assert kc.scan()["released"] == []
    assert str(gone) in allocated(ipam)
    now[0] += 1.0
    assert kc.scan()["released"] == [str(gone)]
    assert str(gone) not in allocated(ipam) and str(live) in allocated(ipam)
    assert ipam.store.get_handle("k8s-pod-network.c-gone") is None


def test_pod_back_before_grace_keeps_its_ip(cluster):
    client, ipam, api = cluster
    now = [0.0]
    kc = KubeControllers(client, Config(enabled=["node"], leak_grace_period=5.0), ApiSource(api),
                         clock=lambda: now[0])
    ip = pod_ip(api, ipam, "p", "w0", "c-p")
    k8s_delete(api, "pods", "p", "default")
    assert kc.scan()["candidates"] == 1
    k8s_pod(api, "p", "w0", None)  # re-created, no IP reported yet
    now[0] += 60
    assert kc.scan() == {"cleaned_nodes": [], "released": [], "candidates": 0}
    assert str(ip) in allocated(ipam)


def test_handle_with_a_live_address_is_kept(cluster):
    client, ipam, api = cluster
    now = [0.0]
    kc = KubeControllers(client, Config(enabled=["node"], leak_grace_period=1.0), ApiSource(api),
                         clock=lambda: now[0])
    ips = ipam.auto_assign(2, "k8s-pod-network.multi", {"node": "w0", "pod": "m", "namespace": "default"},
                           "w0")
    k8s_pod(api, "m", "w0", str(ips[0]))  # the pod reports only its first address
    kc.scan()
    now[0] += 100
    assert kc.scan()["released"] == []
    assert {str(i) for i in ips} <= allocated(ipam)


def test_entry_point_rejects_bad_config(etcd_endpoints):
    env = {"ETCD_ENDPOINTS": etcd_endpoints[0], "LEAK_GRACE_PERIOD": "soon", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "agent.kubecontrollers"], env=env, capture_output=True,
                          text=True, timeout=20)
    assert proc.returncode == 1 and "LEAK_GRACE_PERIOD='soon' is not a duration" in proc.stderr


