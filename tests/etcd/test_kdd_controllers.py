"""kube-controllers in the Kubernetes datastore (against the real API server): the node
controller releases a deleted node's IPs and block affinities (its Calico Node went with the
Kubernetes Node) and leaked pod IPs go after the grace period (test_kdd_datastore.py shows the
knp.default.* policies the datastore itself serves)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from agent.kubecontrollers.config import Config
from agent.kubecontrollers.controller import KubeControllers
from agent.kubecontrollers.kubesource import ApiSource
from datastore import errors
from testbed.poll import wait_for

pytestmark = pytest.mark.etcd
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def kdd(apiserver):
    from datastore.kdd import KubeClient, install_crds
    from datastore.resources import IPPool, Metadata

    kube = apiserver.client()
    install_crds(kube)
    kc = KubeClient(kube)
    kc.create(IPPool(metadata=Metadata(name="kc-pool"), spec=IPPool.Spec(cidr="10.90.0.0/16", block_size=26)))
    for name in ("kc-w0", "kc-w1"):
        kube.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
    return kc, kube


def _pod(kube, name: str, node: str, ip: str | None) -> None:
    pod = kube.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
                       "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx"}]}})
    if ip:
        pod["status"] = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
        kube.update_status(pod, plural="pods")


def test_node_controller_and_ipam_gc_in_the_kubernetes_datastore(kdd):
    from ipam import IPAM

    kc, kube = kdd
    ipam = IPAM(kc)
    t1 = ipam.allocate_tunnel_address("kc-w1")
    assert t1 is None  # the pool has no IPIP: no tunnel address
    keep = ipam.auto_assign(1, "k8s-pod-network.keep", {"node": "kc-w0", "pod": "keep", "namespace": "default"},
                            "kc-w0")[0]
    on_w1 = ipam.auto_assign(1, "k8s-pod-network.w1", {"node": "kc-w1", "pod": "p1", "namespace": "default"},
                             "kc-w1")[0]
    leaked = ipam.auto_assign(1, "k8s-pod-network.gone", {"node": "kc-w0", "pod": "gone", "namespace": "default"},
                              "kc-w0")[0]
    _pod(kube, "keep", "kc-w0", str(keep))
    _pod(kube, "p1", "kc-w1", str(on_w1))
    now = [0.0]
    ctl = KubeControllers(kc, Config(enabled=["node"], leak_grace_period=10.0, datastore_type="kubernetes"),
                          ApiSource(kube), clock=lambda: now[0])
    r = ctl.scan()
    assert r["released"] == [] and r["candidates"] == 1  # "gone" has no pod
    now[0] += 11
    assert ctl.scan()["released"] == [str(leaked)]
    assert ipam.store.get_handle("k8s-pod-network.gone") is None
    # the Kubernetes Node goes: its IPs and affinities are released; the Calico Node is not
    # deleted by the controller (it was the Kubernetes Node)
    stop = threading.Event()
    t = threading.Thread(target=ctl.run, args=(stop,), daemon=True)
    t.start()
    try:
        # deletions before the watch has listed would be seen only as absence (cleaned after
        # NODE_MISSING_MIN of the clock, which this test freezes)
        assert ctl.synced.wait(15), "kube-controllers' Kubernetes watch never listed"
        kube.delete("v1", "pods", "p1", "default", grace_period=0)
        kube.delete("v1", "nodes", "kc-w1")
        wait_for(lambda: ipam.store.list_affinities("kc-w1"), lambda a: a == [], timeout=15,
                 what="kc-w1's affinities released")
    finally:
        stop.set()
        ctl.dirty.set()
        t.join(5)
    left = {str(ip) for b in ipam.blocks() for ip, _ in b.allocated()}
    assert left == {str(keep)}
    assert "kc-w1" in ctl.cleaned_nodes
    with pytest.raises(errors.NotFound):
        kc.get("Node", "kc-w1")
    assert ipam.check().problems == 0 or ipam.check().leaked_ips == [keep]
    kube.delete("v1", "pods", "keep", "default", grace_period=0)


def test_kube_controllers_process_in_kdd_mode_says_what_it_does_not_run(apiserver, kdd, tmp_path):
    env = dict(os.environ, DATASTORE_TYPE="kubernetes", KUBECONFIG=apiserver.kubeconfig,
               ENABLED_CONTROLLERS="node,policy,namespace", LEAK_GRACE_PERIOD="1m", PYTHONPATH=REPO)
    env.pop("ETCD_ENDPOINTS", None)
    log = tmp_path / "kc.log"
    p = subprocess.Popen([sys.executable, "-m", "agent.kubecontrollers"], env=env, stdout=subprocess.DEVNULL,
                         stderr=open(log, "wb"), cwd=REPO)
    try:
        wait_for(log.read_text, lambda t: "nothing to do in the Kubernetes datastore" in t, timeout=20,
                 what="kube-controllers start-up log")
        assert p.poll() is None, log.read_text()
        assert "policy, namespace" in log.read_text()
    finally:
        p.terminate()
        p.wait(10)
