"""A pod's start asks the API server once for what its containers' env and token volumes
name, as the kubelet's object and token managers serve them: calico.yaml's calico-node pod
(three init containers and calico-node, each naming calico-config and mounting the projected
ServiceAccount token) reads calico-config once and gets one token, instead of a GET per
reference and a TokenRequest per container on its start's critical path. A failed init
container, a restarted container and a token near its expiry read again.

The kubelet runs against an injected API view that counts the requests."""

from __future__ import annotations

import pytest

from testbed.k8s import kubelet as kmod
from testbed.k8s.kubelet import Kubelet

pytestmark = pytest.mark.unit

NODE = "w1"
CM = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "calico-config", "namespace": "kube-system"},
      "data": {"calico_backend": "bird", "veth_mtu": "0", "cni_network_config": "{}"}}


def calico_node_pod(uid: str) -> dict:
    """The env of calico.yaml's calico-node pod: its init containers' and calico-node's references."""
    endpoint = {"configMapRef": {"name": "kubernetes-services-endpoint", "optional": True}}

    def ref(name: str, key: str) -> dict:
        return {"name": name, "valueFrom": {"configMapKeyRef": {"name": "calico-config", "key": key}}}

    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "calico-node-x", "namespace": "kube-system", "uid": uid},
            "spec": {"nodeName": NODE, "serviceAccountName": "calico-node",
                     "initContainers": [
                         {"name": "upgrade-ipam", "image": "calico/cni", "envFrom": [endpoint],
                          "env": [ref("CALICO_NETWORKING_BACKEND", "calico_backend")]},
                         {"name": "install-cni", "image": "calico/cni", "envFrom": [endpoint],
                          "env": [ref("CNI_NETWORK_CONFIG", "cni_network_config"), ref("CNI_MTU", "veth_mtu")]},
                         {"name": "mount-bpffs", "image": "calico/node"}],
                     "containers": [
                         {"name": "calico-node", "image": "calico/node", "envFrom": [endpoint],
                          "env": [ref("CALICO_NETWORKING_BACKEND", "calico_backend"),
                                  ref("FELIX_IPINIPMTU", "veth_mtu"), ref("FELIX_VXLANMTU", "veth_mtu")]}]}}


class Api:
    """The API server: GETs of ConfigMaps and TokenRequests, counted."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict] = {("kube-system", "calico-config"): CM}
        self.gets: list[str] = []
        self.tokens: list[str] = []

    def request(self, method: str, path: str, body: dict) -> dict:
        assert method == "POST" and path.endswith("/token"), path
        self.tokens.append(path)
        return {"status": {"token": f"token-{len(self.tokens)}"}}


class View:
    """The kubelet's cluster view: fetch is a GET to :class:`Api`."""

    def __init__(self, api: Api) -> None:
        self.client = api

    def fetch(self, kind: str, name: str, namespace: str | None = None) -> dict | None:
        assert kind == "ConfigMap"
        self.client.gets.append(name)
        return self.client.objects.get((namespace or "", name))

    def event(self, *args, **kwargs) -> None:
        pass


@pytest.fixture
def kubelet(tmp_path):
    api = Api()
    k = Kubelet(View(api), NODE, "172.30.0.12", cni_conf_dir=str(tmp_path / "net.d"),
                netns_dir=str(tmp_path / "netns"), root_dir=str(tmp_path / "root"), workers=1)
    yield k, api
    k.pool.shutdown(wait=True)


def start_env(k: Kubelet, pod: dict) -> list[dict[str, str]]:
    """The env of each container in the order a start makes them (init containers first)."""
    return [k._container_env(pod, c) for c in pod["spec"]["initContainers"] + pod["spec"]["containers"]]


def test_a_pod_start_reads_each_configmap_once(kubelet):
    k, api = kubelet
    pod = calico_node_pod("u1")
    envs = start_env(k, pod)
    assert sorted(api.gets) == ["calico-config", "kubernetes-services-endpoint"]
    assert envs[1]["CNI_NETWORK_CONFIG"] == "{}" and envs[3]["CALICO_NETWORKING_BACKEND"] == "bird"
    start_env(k, calico_node_pod("u2"))  # another pod (another node's, or a new one) reads for itself
    assert len(api.gets) == 4


def test_a_failed_init_container_or_a_restart_reads_again(kubelet):
    k, api = kubelet
    pod = calico_node_pod("u1")
    start_env(k, pod)
    api.objects[("kube-system", "calico-config")] = {**CM, "data": {**CM["data"], "calico_backend": "vxlan"}}
    assert k._container_env(pod, pod["spec"]["containers"][0])["CALICO_NETWORKING_BACKEND"] == "bird"
    k._forget_pod_reads("u1")  # what a failed init container and a restart do
    assert k._container_env(pod, pod["spec"]["containers"][0])["CALICO_NETWORKING_BACKEND"] == "vxlan"


def test_a_missing_configmap_is_read_again_after_the_ttl(kubelet, monkeypatch):
    k, api = kubelet
    pod = calico_node_pod("u1")
    del api.objects[("kube-system", "calico-config")]
    with pytest.raises(kmod.VolumeError, match="calico-config"):
        k._container_env(pod, pod["spec"]["containers"][0])
    api.objects[("kube-system", "calico-config")] = CM
    now = kmod.time.monotonic()
    monkeypatch.setattr(kmod.time, "monotonic", lambda: now + kmod.POD_READ_TTL)
    assert k._container_env(pod, pod["spec"]["containers"][0])["CALICO_NETWORKING_BACKEND"] == "bird"


def test_one_token_per_pod_until_most_of_its_lifetime_has_passed(kubelet, monkeypatch):
    k, api = kubelet
    pod, other = calico_node_pod("u1"), calico_node_pod("u2")
    toks = [k._token("kube-system", "calico-node", [], 3607, pod) for _ in range(4)]  # 4 containers
    assert toks == ["token-1"] * 4 and len(api.tokens) == 1
    assert k._token("kube-system", "calico-node", [], 3607, other) == "token-2"  # bound to another pod
    assert k._token("kube-system", "calico-node", ["vault"], 3607, pod) == "token-3"  # another audience
    now = kmod.time.monotonic()
    monkeypatch.setattr(kmod.time, "monotonic", lambda: now + 0.8 * 3607)
    assert k._token("kube-system", "calico-node", [], 3607, pod) == "token-4"
