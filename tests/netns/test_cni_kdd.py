"""The real ``calico`` CNI executable with ``datastore_type: kubernetes``: the node netns holds
etcd and calicolab's API server; the plugin reads the pod and writes Calico's data through the
API (kubernetes.kubeconfig), as in a kubeadm cluster installed by calico.yaml."""

from __future__ import annotations

import pytest

from testbed.poll import wait_for
from tests.netns import cni_support
from tests.netns.cni_support import CniNode
from tests.netns.kdd_support import NetnsAPIServer

pytestmark = pytest.mark.netns
cni_node = cni_support.cni_node  # module-wide node netns + etcd (fixture)
API = "crd.projectcalico.org/v1"


@pytest.fixture(scope="module")
def api(cni_node: CniNode):
    with cni_node.client() as c:
        c.etcd.delete_prefix("/")
    server = NetnsAPIServer(cni_node.ns, cni_node.tmp / "api", "http://127.0.0.1:2379", "127.0.0.1")
    server.start()
    try:
        server.install_crds()
        from datastore.resources import IPPool, Metadata

        ds = server.call(server.datastore)
        server.call(ds.create, IPPool(metadata=Metadata(name="default-ipv4-ippool"),
                                      spec=IPPool.Spec(cidr="192.168.0.0/16", ipip_mode="Always", nat_outgoing=True)))
        yield server
    finally:
        server.stop()


def _conf(node: CniNode, api: NetnsAPIServer, **over):
    conf = node.conf("0.3.1", datastore_type="kubernetes", kubernetes={"kubeconfig": api.kubeconfig})
    conf.pop("etcd_endpoints")
    conf.update(over)
    return conf


def _pod(api: NetnsAPIServer, name: str, **ann) -> dict:
    return api.call(api.kube.create, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}, "annotations": ann},
        "spec": {"nodeName": "k8s-w0", "containers": [{"name": "c", "image": "nginx",
                                                       "ports": [{"name": "http", "containerPort": 80}]}]}})


def test_add_del_write_the_pod_annotations(cni_node, api, netns):
    node = cni_node
    pod = _pod(api, "nginx")
    ns = netns("cnik")
    conf = _conf(node, api)
    add = node.run("ADD", conf, cid="kdd0001", netns=f"/run/netns/{ns}", pod=("default", "nginx"))
    assert add.rc == 0, add.stdout + add.stderr
    address = add.json["ips"][0]["address"]
    assert address.startswith("192.168.") and address.endswith("/32")
    # the WorkloadEndpoint is the pod: the plugin wrote podIP, podIPs and containerID on it
    ann = api.call(api.kube.get, "v1", "pods", "nginx", "default")["metadata"]["annotations"]
    assert ann["cni.projectcalico.org/podIP"] == address
    assert ann["cni.projectcalico.org/podIPs"] == address
    assert ann["cni.projectcalico.org/containerID"] == "kdd0001"
    ds = api.call(api.datastore)
    (wep,) = api.call(ds.list, "WorkloadEndpoint", "default")
    assert (wep.metadata.name, wep.spec.ip_networks, wep.spec.interface_name) == (
        "k8s--w0-k8s-nginx-eth0", [address], "calic440f455693")
    assert wep.metadata.labels["app"] == "nginx" and [p.name for p in wep.spec.ports] == ["http"]
    # IPAM through custom resources with Calico's names
    handle = api.call(api.kube.get, API, "ipamhandles", "k8s-pod-network.kdd0001")
    (cidr,) = handle["spec"]["block"]
    block = api.call(api.kube.get, API, "ipamblocks", cidr.replace(".", "-").replace("/", "-"))
    assert block["spec"]["affinity"] == "host:k8s-w0"
    api.call(api.kube.get, API, "blockaffinities", "k8s-w0-" + cidr.replace(".", "-").replace("/", "-"))
    assert f"{address.split('/')[0]} dev calic440f455693 scope link" in node.ip("-4", "route")
    # a repeated ADD of the same container keeps its address
    again = node.run("ADD", conf, cid="kdd0001", netns=f"/run/netns/{ns}", pod=("default", "nginx"))
    assert again.rc == 0 and again.json["ips"][0]["address"] == address, again.stderr
    # DEL of another sandbox of the pod keeps the endpoint (containerID differs)
    other = node.run("DEL", conf, cid="old0001", netns="", pod=("default", "nginx"))
    assert other.rc == 0, other.stderr
    assert api.call(api.kube.get, "v1", "pods", "nginx", "default")["metadata"]["annotations"][
        "cni.projectcalico.org/podIP"] == address
    # DEL: podIP/podIPs blanked, containerID kept, the handle released
    dele = node.run("DEL", conf, cid="kdd0001", netns=f"/run/netns/{ns}", pod=("default", "nginx"))
    assert dele.rc == 0, dele.stdout + dele.stderr
    ann = api.call(api.kube.get, "v1", "pods", "nginx", "default")["metadata"]["annotations"]
    assert (ann["cni.projectcalico.org/podIP"], ann["cni.projectcalico.org/podIPs"],
            ann["cni.projectcalico.org/containerID"]) == ("", "", "kdd0001")
    handles = [h["metadata"]["name"] for h in api.call(api.kube.list, API, "ipamhandles")["items"]]
    assert "k8s-pod-network.kdd0001" not in handles
    assert api.call(ds.list, "WorkloadEndpoint", "default")[0].spec.ip_networks == []
    from ipam import IPAM

    report = api.call(lambda: IPAM(ds).check())
    assert report.problems == 0, report.problem_lines()
    api.call(api.kube.delete, "v1", "pods", "nginx", "default", grace_period=0)
    assert pod["metadata"]["uid"]


def test_pool_annotation_and_missing_kubeconfig_are_honoured_or_refused(cni_node, api, netns):
    node = cni_node
    ds = api.call(api.datastore)
    from datastore.resources import IPPool, Metadata

    api.call(ds.create, IPPool(metadata=Metadata(name="blue"), spec=IPPool.Spec(cidr="10.77.0.0/24")))
    _pod(api, "blue-pod", **{"cni.projectcalico.org/ipv4pools": '["blue"]'})
    ns = netns("cnik")
    conf = _conf(node, api)
    add = node.run("ADD", conf, cid="kdd0002", netns=f"/run/netns/{ns}", pod=("default", "blue-pod"))
    assert add.rc == 0, add.stderr
    assert add.json["ips"][0]["address"].startswith("10.77.0.")
    dele = node.run("DEL", conf, cid="kdd0002", netns=f"/run/netns/{ns}", pod=("default", "blue-pod"))
    assert dele.rc == 0, dele.stderr
    # datastore_type kubernetes without kubernetes.kubeconfig: refused naming the key, nothing done
    bad = dict(conf)
    bad.pop("kubernetes")
    res = node.run("ADD", bad, cid="kdd0003", netns=f"/run/netns/{ns}", pod=("default", "blue-pod"))
    assert res.rc != 0 and "kubernetes.kubeconfig" in res.stdout, res.stdout
    wait_for(lambda: api.call(api.kube.list, API, "ipamhandles")["items"], lambda items: not any(
        "kdd0003" in h["metadata"]["name"] for h in items), timeout=2, what="no handle for the refused ADD")
    api.call(api.kube.delete, "v1", "pods", "blue-pod", "default", grace_period=0)
    api.call(ds.delete, "IPPool", "blue")
