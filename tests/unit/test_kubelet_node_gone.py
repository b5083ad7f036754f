"""The kubelet whose Node object was deleted runs no pod for it: it stops the containers of
the pods bound to it and reports them Failed (their sandbox and IP stay until the pods are
deleted), starts no new one and restarts none, also after it restarts. A pod the node
controller marked not ready while the node was unreachable gets its Ready status back.

The kubelet runs against an injected cluster view; starting and stopping pods is recorded
instead of touching the kernel."""

from __future__ import annotations

import copy
import time

import pytest

from kubeclient import ConnectionFailed, NotFound
from testbed.k8s.kubelet import NODE_GONE_REASON, Kubelet
from testbed.k8s.runtime import PodState

pytestmark = pytest.mark.unit

NODE = "w1"


def pod(name: str, uid: str, phase: str = "Running", ready: str = "True", reason: str | None = None) -> dict:
    status = {"phase": phase, "podIP": "10.244.1.7", "podIPs": [{"ip": "10.244.1.7"}],
              "conditions": [{"type": "Ready", "status": ready}]}
    if reason:
        status["reason"] = reason
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": uid, "resourceVersion": "7"},
            "spec": {"nodeName": NODE, "containers": [{"name": "c", "image": "busybox"}]}, "status": status}


class View:
    """The kubelet's cluster view: its pod and Node caches, and what the API server answers."""

    def __init__(self) -> None:
        self.client = None
        self.pods: list[dict] = []
        self.node: dict | None = {"metadata": {"name": NODE}}  # the informer's Node
        self.api_node: dict | None = {"metadata": {"name": NODE}}  # what a GET answers
        self.api_down = False
        self.status_writes: list[dict] = []
        self.events: list[str] = []

    def list(self, kind: str, namespace: str | None = None) -> list[dict]:
        assert kind == "Pod"
        return list(self.pods)

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict | None:
        assert kind == "Node"
        return self.node

    def fetch(self, kind: str, name: str, namespace: str | None = None) -> dict | None:
        assert kind == "Node"
        if self.api_down:
            raise ConnectionFailed("cannot reach the API server: connection refused")
        return self.api_node

    def synced(self) -> bool:
        return True

    def mutate(self, kind, name, namespace, fn, *, sub=None, current=None):
        p = copy.deepcopy(next(p for p in self.pods if p["metadata"]["name"] == name))
        if fn(p) is not False:
            self.status_writes.append(p)
            for i, q in enumerate(self.pods):
                if q["metadata"]["name"] == name:
                    self.pods[i] = p
        return p

    def mark(self, kind: str = "*") -> None:
        pass

    def event(self, obj, reason, *args, **kwargs) -> None:
        self.events.append(reason)


@pytest.fixture
def kubelet(tmp_path):
    view = View()
    k = Kubelet(view, NODE, "172.30.0.12", cni_conf_dir=str(tmp_path / "net.d"), netns_dir=str(tmp_path / "netns"),
                root_dir=str(tmp_path / "root"), workers=2)
    k.network_ready = True
    k.registered = True
    did: list[tuple[str, str]] = []
    k._setup = lambda p: did.append(("setup", p["metadata"]["name"]))  # type: ignore[method-assign]
    k.stop_pod = lambda state, cni_del=True, grace=2.0, pod=None: did.append(("stop", state.name))  # type: ignore[method-assign]
    killed: list[str] = []
    k._kill_containers = lambda state, grace=2.0: killed.append(state.name)  # type: ignore[method-assign]
    yield k, view, did, killed
    k.pool.shutdown(wait=True)


def running(k: Kubelet, view: View, name: str, uid: str) -> PodState:
    view.pods.append(pod(name, uid))
    state = PodState(uid=uid, namespace="default", name=name, sandbox_id="s-" + uid, netns=f"/run/netns/cni-{uid}",
                     node=NODE, pids={"c": 4242}, cni_result={"ips": [{"address": "10.244.1.7/32"}]},
                     started_at={"c": "2026-12-02T19:00:00Z"})
    k.states[uid] = state
    return state


def settle(k: Kubelet) -> None:
    deadline = time.monotonic() + 5
    while k.busy:
        assert time.monotonic() < deadline, f"pod workers still busy: {k.busy}"
        time.sleep(0.01)


def test_a_deleted_node_stops_its_pods_keeps_their_ips_and_starts_none(kubelet):
    k, view, did, killed = kubelet
    running(k, view, "web", "u-w")
    view.pods.append(pod("new", "u-n", phase="Pending", ready="False"))
    view.node = view.api_node = None  # kubectl delete node w1
    assert k.check_node() is True and k.node_gone
    k.sync_pods()
    settle(k)
    assert killed == ["web"]  # its containers, not its sandbox: no CNI DEL, the IP stays
    assert did == []  # nothing set up, nothing torn down
    web = next(p for p in view.pods if p["metadata"]["name"] == "web")
    assert web["status"]["phase"] == "Failed" and web["status"]["reason"] == NODE_GONE_REASON
    assert web["status"]["podIP"] == "10.244.1.7"
    assert web["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137
    new = next(p for p in view.pods if p["metadata"]["name"] == "new")
    assert new["status"]["phase"] == "Failed" and "no longer exists" in new["status"]["message"]
    assert view.events.count(NODE_GONE_REASON) == 2
    # refused once: later passes write nothing more, and no exit of a refused pod restarts it
    writes = len(view.status_writes)
    k.sync_pods()
    settle(k)
    k.check_processes()
    settle(k)
    assert len(view.status_writes) == writes and k.restart_at == {}


def test_the_pod_deleted_later_is_torn_down_with_cni_del(kubelet):
    k, view, did, _ = kubelet
    running(k, view, "web", "u-w")
    view.node = view.api_node = None
    k.check_node()
    k.sync_pods()
    settle(k)
    view.pods = [p for p in view.pods if p["metadata"]["name"] != "web"]  # pod GC: force-deleted

    class Api:  # the API server confirms the pod is gone
        @staticmethod
        def get(api, plural, name, namespace=None):
            raise NotFound(404, "NotFound", f'pods "{name}" not found')

    k.api = Api()  # type: ignore[assignment]
    k.sync_pods()
    settle(k)
    assert did == [("stop", "web")]


def test_a_node_missing_from_the_cache_but_not_confirmed_gone_changes_nothing(kubelet):
    k, view, did, killed = kubelet
    running(k, view, "web", "u-w")
    view.node = None  # the informer lost it ...
    view.api_down = True  # ... and the API server cannot say
    assert k.check_node() is False and not k.node_gone
    assert k.node_recheck > 0  # asked again a second later, not only on the next Node event
    view.api_down = False  # it can: the Node exists (the cache was behind)
    assert k.check_node() is False and not k.node_gone
    k.sync_pods()
    settle(k)
    assert killed == [] and view.status_writes == []


def test_a_restarted_kubelet_never_restarts_a_pod_stopped_for_a_deleted_node(kubelet):
    k, view, did, _ = kubelet
    view.pods = [pod("web", "u-w", phase="Failed", ready="False", reason=NODE_GONE_REASON),
                 pod("done", "u-d", phase="Succeeded", ready="False")]
    # adopted with its sandbox (the IP is held until the pod is deleted); its process is gone
    k.states["u-w"] = PodState(uid="u-w", namespace="default", name="web", sandbox_id="s", netns="/x",
                               node=NODE, pids={"c": 4242})
    k._on_exit("u-w", "c", -1)
    assert k.restart_at == {} and view.status_writes == []
    k.sync_pods()
    settle(k)
    assert did == []  # the terminal pod that has no sandbox here is not started either


def test_ready_is_written_again_after_the_node_controller_marked_the_pod_not_ready(kubelet):
    k, view, did, _ = kubelet
    running(k, view, "web", "u-w")
    k.ready_written["u-w"] = True  # what this kubelet last wrote
    view.pods[0]["status"]["conditions"][0]["status"] = "False"  # MarkPodsNotReady while unreachable
    k._alive = lambda uid, name, pid: True  # type: ignore[method-assign]
    k.sync_pods()
    settle(k)
    ready = next(c for c in view.pods[0]["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and view.pods[0]["status"]["phase"] == "Running"
    k.ready_written["u-w"] = False  # a pod this kubelet itself reported not ready is left alone
    view.pods[0]["status"]["conditions"][0]["status"] = "False"
    writes = len(view.status_writes)
    k.sync_pods()
    settle(k)
    assert len(view.status_writes) == writes
