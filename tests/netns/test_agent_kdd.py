"""calico-node in the Kubernetes datastore (DATASTORE_TYPE=kubernetes, KUBECONFIG): two node
namespaces, etcd and calicolab's API server in w0 (as on a control plane), Calico's CRDs; the
Kubernetes Nodes exist (a kubelet registered them) and kube-system/kubeadm-config says this is
a kubeadm cluster. Start-up, the BGP mesh (confd on the CRDs and Node annotations), Felix
routes for pods that are real Pods (their IPs in the CNI plugin's annotations), and Typha in
front of both Felixes and confds, found through its Service's Endpoints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from testbed.poll import wait_for
from tests.netns.agent_support import TwoNodes, running
from tests.netns.felix_support import ping_until_ok, run
from tests.netns.kdd_support import NetnsAPIServer

pytestmark = pytest.mark.netns

W0, W1 = "172.31.19.1", "172.31.19.2"
API = "crd.projectcalico.org/v1"
KUBEADM = ("apiVersion: kubeadm.k8s.io/v1beta4\nkind: ClusterConfiguration\nnetworking:\n"
           "  podSubnet: 10.88.0.0/16\n  serviceSubnet: 10.96.0.0/12\n")


class KddCluster(TwoNodes):
    """The two nodes with calicolab's API server in w0 (on the etcd there), Calico's CRDs, the
    Kubernetes Nodes and kube-system/kubeadm-config; calico-node in the Kubernetes datastore."""

    addresses = (W0, W1)
    dir_prefix = "kdd-agent-"
    ready_timeout = 60.0

    def setup(self) -> None:
        self.api = NetnsAPIServer(self.w0, Path(self.dir) / "api", self.etcd, W0)
        self.api.start()
        self.api.install_crds()
        self.ds = self.api.call(self.api.datastore)
        kube = self.api.kube
        for name, ip, cidr in (("w0", W0, "10.244.0.0/24"), ("w1", W1, "10.244.1.0/24")):
            self.api.call(kube.create, {"apiVersion": "v1", "kind": "Node",
                                        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
                                        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
                                        "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
        self.api.call(kube.create, {"apiVersion": "v1", "kind": "ConfigMap",
                                    "metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
                                    "data": {"ClusterConfiguration": KUBEADM}})

    def env(self, name: str, **extra: str) -> dict[str, str]:
        base = os.path.join(self.dir, name)
        env = {k: v for k, v in os.environ.items() if k not in ("ETCD_ENDPOINTS", "KUBECONFIG")}
        env.update({
            "NODE_NAME": name, "DATASTORE_TYPE": "kubernetes", "KUBECONFIG": self.api.kubeconfig,
            "IP": "autodetect", "CLUSTER_TYPE": "k8s,bgp", "CALICO_IPV4POOL_IPIP": "Always",
            "CALICO_NETWORKING_BACKEND": "bird", "CALICOLAB_BGP_TIMERS": "hold=9,connect_delay=0.5,connect_retry=1",
            "FELIX_HEALTHPORT": "9099", "FELIX_ROUTEREFRESHINTERVAL": "1", "FELIX_IPTABLESREFRESHINTERVAL": "1",
            "CALICO_VAR_LIB_DIR": f"{base}/var-lib-calico", "CALICO_VAR_RUN_DIR": f"{base}/var-run-calico",
            "CNI_NET_DIR": f"{base}/cni-net.d", "CNI_BIN_DIR": f"{base}/cni-bin",
        })
        env.update(extra)
        return env

    def pod(self, node_ns: str, node: str, name: str) -> tuple[str, str]:
        """A Pod object with the CNI plugin's annotations (address from IPAM), and its netns wired."""
        from datastore import names
        from ipam import IPAM

        ip = self.api.call(lambda: IPAM(self.ds).auto_assign(1, f"k8s-pod-network.{name}", {
            "node": node, "pod": name, "namespace": "default"}, node)[0])
        self.api.call(self.api.kube.create, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default",
                         "annotations": {"cni.projectcalico.org/podIP": f"{ip}/32",
                                         "cni.projectcalico.org/podIPs": f"{ip}/32",
                                         "cni.projectcalico.org/containerID": name}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}})
        iface = names.veth_name("default", name)
        return self.topo.pod(node_ns, str(ip), iface, route=False), str(ip)

    def close(self) -> None:
        if hasattr(self, "api"):
            self.api.stop()


@pytest.fixture
def kdd():
    with running(KddCluster) as c:
        yield c


def test_calico_node_in_the_kubernetes_datastore(kdd):
    c = kdd
    c.start("w0", c.w0)
    c.start("w1", c.w1)
    s0 = c.wait_ready("w0", c.w0)
    c.wait_ready("w1", c.w1)
    kube = c.api.kube
    # start-up wrote the Calico Node into the Kubernetes Node's annotations
    k0 = c.api.call(kube.get, "v1", "nodes", "w0")["metadata"]["annotations"]
    assert k0["projectcalico.org/IPv4Address"] == f"{W0}/24"
    assert k0["projectcalico.org/IPv4IPIPTunnelAddr"] == s0["tunnel_address"]
    n1 = c.api.call(c.ds.get, "Node", "w1")
    assert n1.spec.bgp.ipv4_address == f"{W1}/24" and n1.status == {"podCIDRs": ["10.244.1.0/24"]}
    # the default pool from kubeadm's podSubnet (no CALICO_IPV4POOL_CIDR), as a custom resource
    (pool,) = c.api.call(kube.list, API, "ippools")["items"]
    assert (pool["metadata"]["name"], pool["spec"]["cidr"], pool["spec"]["ipipMode"]) == (
        "default-ipv4-ippool", "10.88.0.0/16", "Always")
    ci = c.api.call(c.ds.get, "ClusterInformation", "default")
    assert (ci.spec.cluster_type, ci.spec.calico_version, ci.spec.datastore_ready) == (
        "k8s,bgp,kubeadm,kdd", "v3.28.1", True)
    # install-cni: calico.yaml's conflist for the Kubernetes datastore and the CNI kubeconfig
    env0 = c.env("w0")
    with open(os.path.join(env0["CNI_NET_DIR"], "10-calico.conflist")) as f:
        plugin = json.load(f)["plugins"][0]
    assert plugin["datastore_type"] == "kubernetes"
    assert plugin["kubernetes"]["kubeconfig"] == os.path.join(env0["CNI_NET_DIR"], "calico-kubeconfig")
    # the BGP mesh from the Node annotations and the IPAM custom resources: each node's
    # block reaches the other over tunl0
    pa, ipa = c.pod(c.w0, "w0", "pod-a")
    pb, ipb = c.pod(c.w1, "w1", "pod-b")
    wait_for(lambda: run("ip", "-4", "route", netns=c.w0), lambda r: "dev tunl0 proto bird onlink" in r and
             f"{ipa} dev cali" in r, timeout=40, what="w0: w1's block via tunl0 and pod-a's route")
    wait_for(lambda: run("ip", "-4", "route", netns=c.w1), lambda r: "dev tunl0 proto bird onlink" in r and
             f"{ipb} dev cali" in r, timeout=40, what="w1: w0's block via tunl0 and pod-b's route")
    ping_until_ok(pa, ipb)
    # the pod goes: Felix removes its route (the WorkloadEndpoint was derived from the Pod)
    c.api.call(kube.delete, "v1", "pods", "pod-a", "default", grace_period=0)
    wait_for(lambda: run("ip", "-4", "route", netns=c.w0), lambda r: f"{ipa} dev cali" not in r, timeout=20,
             what="pod-a's route removed")

    # Typha in front: both calico-nodes restarted with FELIX_TYPHAK8SSERVICENAME; Typha (in w0)
    # holds the only API watches; its Service's Endpoints tell the nodes where it is
    for name in ("w0", "w1"):
        c.topo.stop(c.agents.pop(name))
    c.start("typha", c.w0, "-m", "agent.typha", TYPHA_SERVERPORT="5473")
    c.api.call(kube.create, {"apiVersion": "v1", "kind": "Service",
                             "metadata": {"name": "calico-typha", "namespace": "kube-system"},
                             "spec": {"ports": [{"name": "calico-typha", "port": 5473, "protocol": "TCP"}]}})
    eps = {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "calico-typha", "namespace": "kube-system"},
           "subsets": [{"addresses": [{"ip": W0}], "ports": [{"name": "calico-typha", "port": 5473}]}]}
    try:
        c.api.call(kube.create, eps)
    except Exception:  # noqa: BLE001 - the endpoints controller may have made an empty one
        cur = c.api.call(kube.get, "v1", "endpoints", "calico-typha", "kube-system")
        eps["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
        c.api.call(kube.replace, eps)
    c.start("w0", c.w0, FELIX_TYPHAK8SSERVICENAME="calico-typha")
    c.start("w1", c.w1, FELIX_TYPHAK8SSERVICENAME="calico-typha")
    c.wait_ready("w0", c.w0)
    c.wait_ready("w1", c.w1)
    assert "take their watches from Typha (Service kube-system/calico-typha)" in c.log("w1")
    pc, ipc = c.pod(c.w0, "w0", "pod-c")
    wait_for(lambda: run("ip", "-4", "route", netns=c.w0), lambda r: f"{ipc} dev cali" in r, timeout=20,
             what="pod-c's route, through Typha")
    ping_until_ok(pc, ipb)
    assert "connected to Typha" in c.log("w1")
