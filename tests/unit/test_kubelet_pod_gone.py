"""The kubelet stops a running pod that left its pod list only when the API server confirms
the pod is gone: after an API server or etcd restart, a re-list that failed, came back
partial or empty must never count as pod deletions (no container stopped or restarted).

The kubelet runs against an injected API view (a cache it lists from, an API it asks);
stopping a pod is recorded instead of touching the kernel."""

from __future__ import annotations

import shutil
import time

import pytest

from kubeclient import ConnectionFailed, NotFound
from kubeclient.informer import Informer
from testbed.k8s.kubelet import Kubelet
from testbed.k8s.runtime import PodState

pytestmark = pytest.mark.unit

NODE = "w1"


def pod(name: str, uid: str, node: str = NODE) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": uid, "resourceVersion": "7"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Running"}}


class Api:
    """The API server as the kubelet asks it: GET a pod (answers set by the test)."""

    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], dict] = {}
        self.down = False
        self.gets: list[str] = []

    def get(self, api: str, plural: str, name: str, namespace: str | None = None) -> dict:
        assert (api, plural) == ("v1", "pods")
        self.gets.append(name)
        if self.down:
            raise ConnectionFailed("cannot reach the API server: connection refused")
        try:
            return self.pods[(namespace or "", name)]
        except KeyError:
            raise NotFound(404, "NotFound", f'pods "{name}" not found') from None


class View:
    """The kubelet's cluster view: the pod cache it lists from (what its informer holds)."""

    def __init__(self, api: Api) -> None:
        self.client = api
        self.cache: list[dict] = []
        self.marks = 0

    def list(self, kind: str, namespace: str | None = None) -> list[dict]:
        assert kind == "Pod"
        return list(self.cache)

    def mark(self, kind: str = "*") -> None:
        self.marks += 1

    def event(self, *args, **kwargs) -> None:
        pass


@pytest.fixture
def kubelet(tmp_path):
    api = Api()
    view = View(api)
    k = Kubelet(view, NODE, "172.30.0.12", cni_conf_dir=str(tmp_path / "net.d"), netns_dir=str(tmp_path / "netns"),
                root_dir=str(tmp_path / "root"), workers=2)
    k.network_ready = True
    stopped: list[str] = []

    def stop_pod(state: PodState, cni_del: bool = True, grace: float = 2.0, pod: dict | None = None) -> None:
        stopped.append(state.name)
        k.states.pop(state.uid, None)
        shutil.rmtree(state.pod_dir(k.root_dir), ignore_errors=True)  # as stop_pod removes its state

    k.stop_pod = stop_pod  # type: ignore[method-assign]
    yield k, view, api, stopped
    k.pool.shutdown(wait=True)


def running(k: Kubelet, view: View, api: Api, name: str, uid: str, static: bool = False) -> PodState:
    """A pod the kubelet runs, in the cache and the API."""
    p = pod(name, uid)
    view.cache.append(p)
    api.pods[("default", name)] = p
    state = PodState(uid=uid, namespace="default", name=name, sandbox_id="s-" + uid, netns="",
                     node=NODE, pids={"c": 4242}, static=static)
    k.states[uid] = state
    return state


def settle(k: Kubelet) -> None:
    """Wait (deadline 5 s) until the kubelet's pod workers are idle."""
    deadline = time.monotonic() + 5
    while k.busy:
        assert time.monotonic() < deadline, f"pod workers still busy: {k.busy}"
        time.sleep(0.01)


def test_an_empty_relist_while_the_api_server_is_down_stops_nothing(kubelet):
    k, view, api, stopped = kubelet
    running(k, view, api, "fault-b", "u-b")
    view.cache = []  # the re-list after the restart came back without it ...
    api.down = True  # ... and the API server does not answer
    for _ in range(3):
        k.sync_pods()
        settle(k)
    assert stopped == []
    assert "u-b" in k.states
    assert "u-b" in k.unconfirmed  # asked again later, not forgotten


def test_a_partial_relist_while_the_pod_still_exists_stops_nothing(kubelet):
    k, view, api, stopped = kubelet
    running(k, view, api, "fault-a", "u-a")
    running(k, view, api, "fault-b", "u-b")
    view.cache = [p for p in view.cache if p["metadata"]["name"] == "fault-a"]  # fault-b missing
    k.sync_pods()
    settle(k)
    assert stopped == [] and set(k.states) == {"u-a", "u-b"}
    assert api.gets == ["fault-b"]
    # asked again only after the recheck delay, not on every pass
    k.sync_pods()
    settle(k)
    assert api.gets == ["fault-b"]
    k.unconfirmed["u-b"] = 0.0
    assert k._retry_due()


def test_a_pod_deleted_in_the_api_is_stopped(kubelet):
    k, view, api, stopped = kubelet
    running(k, view, api, "gone", "u-g")
    running(k, view, api, "stays", "u-s")
    view.cache = [p for p in view.cache if p["metadata"]["name"] == "stays"]
    del api.pods[("default", "gone")]  # force-deleted (grace 0): never seen Terminating
    k.sync_pods()
    settle(k)
    assert stopped == ["gone"]
    assert set(k.states) == {"u-s"}


def test_a_pod_unconfirmed_while_the_api_was_down_is_stopped_once_it_answers(kubelet):
    k, view, api, stopped = kubelet
    running(k, view, api, "gone", "u-g")
    view.cache = []
    del api.pods[("default", "gone")]
    api.down = True
    k.sync_pods()
    settle(k)
    assert stopped == []
    api.down = False
    k.unconfirmed["u-g"] = 0.0  # the recheck is due
    k.sync_pods()
    settle(k)
    assert stopped == ["gone"] and k.unconfirmed == {}


def test_a_pod_of_the_same_name_but_another_uid_means_ours_is_gone(kubelet):
    k, view, api, stopped = kubelet
    running(k, view, api, "web", "u-old")
    view.cache = []
    api.pods[("default", "web")] = pod("web", "u-new")
    k.sync_pods()
    settle(k)
    assert stopped == ["web"]


def test_a_static_pod_gone_from_its_manifests_is_stopped_without_asking(kubelet):
    k, view, api, stopped = kubelet
    running(k, view, api, "etcd-m", "u-static", static=True)
    view.cache = []
    api.down = True
    k.sync_pods()
    settle(k)
    assert stopped == ["etcd-m"] and api.gets == []


def test_a_restarted_kubelet_adopts_its_pods_when_the_list_lacks_them_and_the_api_cannot_say(kubelet, tmp_path):
    k, view, api, stopped = kubelet
    for name, uid in (("kept", "u-k"), ("gone", "u-g")):
        PodState(uid=uid, namespace="default", name=name, sandbox_id="s", netns="", node=NODE,
                 lab=k.lab, cni_result={"ips": []}, pids={"c": 4242}).save(k.root_dir)
    api.pods[("default", "kept")] = pod("kept", "u-k")
    view.cache = []  # the first list after the restart lacks both
    k.adopt()
    assert stopped == ["gone"]  # the API server confirmed it is gone
    assert set(k.states) == {"u-k"}
    api.down = True
    k.states.clear()
    k.adopt()  # no answer at all: kept for the next pass to confirm
    assert set(k.states) == {"u-k"}


class PagingClient:
    """A client whose list fails when ``fail`` is set (the API server restarting mid-list)."""

    def __init__(self) -> None:
        self.items = [pod("a", "u-a"), pod("b", "u-b")]
        self.fail = False

    def list_all(self, api, plural, namespace=None, *, label_selector="", field_selector="", page=500):
        if self.fail:
            raise ConnectionFailed("watch: cannot reach the API server")
        return list(self.items), "10"


def test_the_informer_keeps_its_store_when_a_relist_fails():
    client = PagingClient()
    inf = Informer(client, "v1", "pods")  # type: ignore[arg-type]
    events: list[tuple[str, str]] = []
    inf.add_handler(lambda typ, obj, old: events.append((typ, obj["metadata"]["name"])))
    inf.relist()
    client.fail = True
    with pytest.raises(ConnectionFailed):
        inf.relist()
    assert sorted(o["metadata"]["name"] for o in inf.snapshot()) == ["a", "b"]
    assert events == [("ADDED", "a"), ("ADDED", "b")]


def test_an_etcd_answer_cut_short_is_an_error_not_an_empty_list():
    from datastore import errors
    from datastore.etcd import EtcdClient

    etcd = EtcdClient(["http://127.0.0.1:1"])
    with pytest.raises(errors.DatastoreUnavailable, match="unreadable answer"):
        etcd._decode(200, b'{"header":{"revision":"12"},"kvs":[{"key":"L3Jl', 0)
    assert etcd._decode(200, b'{"header":{"revision":"12"}}', 0)["header"]["revision"] == "12"

