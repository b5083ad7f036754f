"""calico-kube-controllers' policy, namespace, serviceaccount and workloadendpoint controllers
against a real etcd, reading Kubernetes through calicolab's API server."""

from __future__ import annotations

import threading

import pytest

from agent.kubecontrollers.kubesource import ApiSource
from agent.kubecontrollers.objects import ObjectControllers
from datastore import Client, errors
from datastore.resources import Metadata, NetworkPolicy, Profile, WorkloadEndpoint
from testbed.poll import wait_for

pytestmark = pytest.mark.etcd

ENABLED = ["policy", "namespace", "serviceaccount", "workloadendpoint"]


def put(api, api_version: str, plural: str, doc: dict) -> None:
    """Create or replace a Kubernetes object through the API."""
    from kubeclient import NotFound

    ns = doc["metadata"].get("namespace")
    doc = {"apiVersion": api_version, "kind": {"namespaces": "Namespace", "serviceaccounts": "ServiceAccount",
                                               "networkpolicies": "NetworkPolicy", "pods": "Pod"}[plural], **doc}
    try:
        cur = api.get(api_version, plural, doc["metadata"]["name"], ns)
    except NotFound:
        status = doc.pop("status", None)
        created = api.create(doc, ns, plural=plural)
        if status:
            created["status"] = status
            api.update_status(created, ns, plural=plural)
        return
    doc["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
    if plural == "pods":
        doc["spec"] = cur["spec"]
    api.replace(doc, ns, plural=plural)


@pytest.fixture
def running(fresh_apiserver, etcd_endpoints):
    client = Client(",".join(etcd_endpoints))
    api = fresh_apiserver.client()
    stop = threading.Event()
    ctl = ObjectControllers(client, ApiSource(api), ENABLED, reconciler_period=300)
    yield client, ctl, stop, api
    stop.set()


def start(ctl: ObjectControllers, stop: threading.Event) -> threading.Thread:
    t = threading.Thread(target=ctl.run, args=(stop,), daemon=True)
    t.start()
    return t


def get_or_none(client: Client, kind: str, name: str, ns: str | None = None):
    try:
        return client.get(kind, name, ns)
    except errors.NotFound:
        return None


def test_profiles_policies_and_endpoint_labels_follow_kubernetes(running):
    client, ctl, stop, api = running
    # stale objects the controllers own (a namespace deleted while they were down) and one they don't
    client.create(Profile(metadata=Metadata(name="kns.gone")))
    client.create(Profile(metadata=Metadata(name="mine")))
    stale = NetworkPolicy(metadata=Metadata(name="knp.default.old", namespace="shop"))
    client.create(stale)
    put(api, "v1", "namespaces", {"metadata": {"name": "shop", "labels": {"team": "a"}}})
    put(api, "v1", "serviceaccounts", {"metadata": {"name": "api", "namespace": "shop"}})
    put(api, "networking.k8s.io/v1", "networkpolicies", {
        "metadata": {"name": "deny", "namespace": "shop"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]}})
    # a pod the CNI plugin has already made an endpoint for
    wep = WorkloadEndpoint(metadata=Metadata(name="w0-k8s-web-eth0", namespace="shop",
                                             labels={"app": "web", "projectcalico.org/namespace": "shop",
                                                     "projectcalico.org/orchestrator": "k8s"}))
    wep.spec.node, wep.spec.pod, wep.spec.orchestrator, wep.spec.endpoint = "w0", "web", "k8s", "eth0"
    wep.spec.interface_name = "cali0000000000a"
    client.create(wep)
    pod = {"metadata": {"name": "web", "namespace": "shop", "labels": {"app": "web"}},
           "spec": {"nodeName": "w0", "serviceAccountName": "api", "automountServiceAccountToken": False,
                    "containers": [{"name": "c", "image": "busybox"}]}, "status": {"podIP": "10.0.0.5"}}
    put(api, "v1", "pods", dict(pod))
    start(ctl, stop)

    kns = wait_for(lambda: get_or_none(client, "Profile", "kns.shop"), lambda p: p is not None, timeout=10,
                   what="kns.shop")
    # the API server labels every namespace with its name, as Kubernetes does
    assert kns.spec.labels_to_apply == {"pcns.team": "a", "pcns.projectcalico.org/name": "shop",
                                        "pcns.kubernetes.io/metadata.name": "shop"}
    assert [r.action for r in kns.spec.ingress] == ["Allow"]
    ksa = wait_for(lambda: get_or_none(client, "Profile", "ksa.shop.api"), lambda p: p is not None, timeout=10,
                   what="ksa.shop.api")
    assert ksa.spec.labels_to_apply == {"pcsa.projectcalico.org/name": "api"} and not ksa.spec.ingress
    knp = wait_for(lambda: get_or_none(client, "NetworkPolicy", "knp.default.deny", "shop"),
                   lambda p: p is not None, timeout=10, what="knp.default.deny")
    assert knp.spec.selector == "projectcalico.org/orchestrator == 'k8s' && app == 'web'"
    assert knp.spec.order == 1000 and knp.spec.types == ["Ingress"]
    # stale owned objects deleted; others untouched
    wait_for(lambda: get_or_none(client, "Profile", "kns.gone"), lambda p: p is None, timeout=10,
             what="kns.gone deleted")
    wait_for(lambda: get_or_none(client, "NetworkPolicy", "knp.default.old", "shop"), lambda p: p is None,
             timeout=10, what="stale knp deleted")
    assert get_or_none(client, "Profile", "mine") is not None
    # the pod's service account reaches its endpoint
    got = wait_for(lambda: client.get("WorkloadEndpoint", "w0-k8s-web-eth0", "shop"),
                   lambda w: w.spec.service_account_name == "api", timeout=10, what="wep service account")
    assert got.metadata.labels["projectcalico.org/serviceaccount"] == "api"

    # changes: namespace labels, pod labels, the policy, deletions
    put(api, "v1", "namespaces", {"metadata": {"name": "shop", "labels": {"team": "b"}}})
    wait_for(lambda: client.get("Profile", "kns.shop").spec.labels_to_apply.get("pcns.team"),
             lambda v: v == "b", timeout=10, what="namespace label change")
    put(api, "v1", "pods", {**pod, "metadata": {**pod["metadata"], "labels": {"app": "db"}}})
    got = wait_for(lambda: client.get("WorkloadEndpoint", "w0-k8s-web-eth0", "shop"),
                   lambda w: w.metadata.labels.get("app") == "db", timeout=10, what="pod label change")
    assert got.spec.interface_name == "cali0000000000a"  # the rest of the endpoint is left alone
    put(api, "networking.k8s.io/v1", "networkpolicies", {
        "metadata": {"name": "deny", "namespace": "shop"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}})
    wait_for(lambda: client.get("NetworkPolicy", "knp.default.deny", "shop").spec.types,
             lambda t: t == ["Ingress", "Egress"], timeout=10, what="policy update")
    api.delete("networking.k8s.io/v1", "networkpolicies", "deny", "shop")
    api.delete("v1", "serviceaccounts", "api", "shop")
    wait_for(lambda: get_or_none(client, "NetworkPolicy", "knp.default.deny", "shop"), lambda p: p is None,
             timeout=10, what="policy deleted")
    wait_for(lambda: get_or_none(client, "Profile", "ksa.shop.api"), lambda p: p is None, timeout=10,
             what="ksa deleted")
    assert not any(a[3] == "updated" and a[0] == "namespace" and a[2] == "mine" for a in ctl.applied)


def test_controllers_read_kubernetes_through_the_api_server(apiserver):
    """The same controllers on :class:`ApiSource`: Namespaces, ServiceAccounts, NetworkPolicies and
    Pods written through calicolab's API server (kubeclient), never read from /registry keys."""
    from agent.kubecontrollers.kubesource import ApiSource, from_env

    kc = apiserver.client()
    assert isinstance(from_env({"KUBECONFIG": apiserver.kubeconfig}, None), ApiSource)
    client = Client(apiserver.etcd)
    stop = threading.Event()
    ctl = ObjectControllers(client, ApiSource(kc), ENABLED, reconciler_period=300)
    kc.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "a"}}})
    kc.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "api", "namespace": "shop"}})
    kc.create({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "deny", "namespace": "shop"},
               "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]}})
    wep = WorkloadEndpoint(metadata=Metadata(name="w0-k8s-web-eth0", namespace="shop",
                                             labels={"app": "web", "projectcalico.org/namespace": "shop",
                                                     "projectcalico.org/orchestrator": "k8s"}))
    wep.spec.node, wep.spec.pod, wep.spec.orchestrator, wep.spec.endpoint = "w0", "web", "k8s", "eth0"
    wep.spec.interface_name = "cali0000000000a"
    client.create(wep)
    kc.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "shop",
                                                               "labels": {"app": "web"}},
               "spec": {"nodeName": "w0", "serviceAccountName": "api",
                        "containers": [{"name": "c", "image": "busybox"}]}})
    pod = kc.get("v1", "pods", "web", "shop")
    pod["status"] = {"phase": "Running", "podIP": "10.0.0.5"}  # as the kubelet reports it
    kc.update_status(pod, "shop")
    t = start(ctl, stop)
    try:
        kns = wait_for(lambda: get_or_none(client, "Profile", "kns.shop"), lambda p: p is not None, timeout=10,
                       what="kns.shop")
        # the API server labels every namespace with its name, as Kubernetes does
        assert kns.spec.labels_to_apply == {"pcns.team": "a", "pcns.projectcalico.org/name": "shop",
                                            "pcns.kubernetes.io/metadata.name": "shop"}
        wait_for(lambda: get_or_none(client, "Profile", "ksa.shop.api"), lambda p: p is not None, timeout=10,
                 what="ksa.shop.api")
        knp = wait_for(lambda: get_or_none(client, "NetworkPolicy", "knp.default.deny", "shop"),
                       lambda p: p is not None, timeout=10, what="knp.default.deny")
        assert knp.spec.selector == "projectcalico.org/orchestrator == 'k8s' && app == 'web'"
        wait_for(lambda: client.get("WorkloadEndpoint", "w0-k8s-web-eth0", "shop"),
                 lambda w: w.spec.service_account_name == "api", timeout=10, what="wep service account")

        kc.patch("v1", "namespaces", "shop", {"metadata": {"labels": {"team": "b"}}})
        wait_for(lambda: client.get("Profile", "kns.shop").spec.labels_to_apply.get("pcns.team"),
                 lambda v: v == "b", timeout=10, what="namespace label change")
        kc.patch("v1", "pods", "web", {"metadata": {"labels": {"app": "db"}}}, "shop")
        wait_for(lambda: client.get("WorkloadEndpoint", "w0-k8s-web-eth0", "shop"),
                 lambda w: w.metadata.labels.get("app") == "db", timeout=10, what="pod label change")
        kc.delete("networking.k8s.io/v1", "networkpolicies", "deny", "shop")
        wait_for(lambda: get_or_none(client, "NetworkPolicy", "knp.default.deny", "shop"), lambda p: p is None,
                 timeout=10, what="policy deleted")
    finally:
        stop.set()
        t.join(timeout=10)
