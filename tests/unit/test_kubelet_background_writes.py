"""What the kubelet does in the background while a pod's network is set up: its
ContainerCreating status write (the next status write waits for it, so statuses land in
order) and its volumes' API reads (used by the containers' first start, made again for a
restart or when they failed, so the error is the container's)."""

from __future__ import annotations

import threading

import pytest

from testbed.k8s.kubelet import Kubelet
from testbed.k8s.runtime import PodState
from testbed.k8s.volumes import VolumeError

pytestmark = pytest.mark.unit


def pod() -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default", "uid": "u1", "resourceVersion": "7"},
            "spec": {"nodeName": "w1", "containers": [{"name": "a", "image": "nginx"}, {"name": "b", "image": "nginx"}]},
            "status": {"phase": "Pending"}}


class View:
    """The kubelet's cluster view: status writes recorded in order (a ContainerCreating one held
    until released)."""

    def __init__(self) -> None:
        self.client = None  # (no API call here besides the status writes)
        self.writes: list[str] = []
        self.hold = threading.Event()

    def mutate(self, kind, name, namespace, fn, *, sub=None, current=None):
        p = pod()
        fn(p)
        state = next(iter(p["status"]["containerStatuses"][0].get("state") or {}))
        if state == "waiting":  # the ContainerCreating write is slow
            self.hold.wait(5)
        self.writes.append(state)
        return p

    def list(self, kind, namespace=None):
        return []

    def mark(self, kind="*"):
        pass

    def event(self, *a, **kw):
        pass


class Volumes:
    """A VolumeMaker recording its calls (``fail``: every call raises)."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[str] = []
        self.fail = fail

    def mounts(self, p, c, pod_dir):
        self.calls.append(c["name"])
        if self.fail:
            raise VolumeError('configmap "cfg" not found')
        return [(f"{pod_dir}/volumes/{c['name']}", "/etc/x")]


@pytest.fixture
def kubelet(tmp_path):
    k = Kubelet(View(), "w1", "172.30.0.12", cni_conf_dir=str(tmp_path / "net.d"),  # type: ignore[arg-type]
                netns_dir=str(tmp_path / "netns"), root_dir=str(tmp_path / "root"), workers=2)
    yield k
    k.status_pool.shutdown(wait=True)
    k.pool.shutdown(wait=True)


def state() -> PodState:
    return PodState(uid="u1", namespace="default", name="web", sandbox_id="s1", netns="", node="w1")


def test_the_next_status_write_waits_for_the_background_one(kubelet):
    from testbed.k8s.podstatus import ContainerInfo

    k = kubelet
    p = pod()
    creating = [ContainerInfo(c["name"], c["image"], waiting_reason="ContainerCreating") for c in p["spec"]["containers"]]
    k.status_pending["u1"] = k.status_pool.submit(k._write_status, p, creating, [], sandbox_ready=False,
                                                  wait_pending=False)
    running = [ContainerInfo(c["name"], c["image"]) for c in p["spec"]["containers"]]
    for info in running:
        info.running = True
    threading.Timer(0.2, k.cluster.hold.set).start()  # the background write is slow
    k._write_status(p, running, ["192.168.0.5"])
    assert k.cluster.writes == ["waiting", "running"] and "u1" not in k.status_pending


def test_the_first_start_uses_the_mounts_made_during_cni_add(kubelet):
    k = kubelet
    k.volumes = Volumes()
    p, st = pod(), state()
    k.prepared["u1"] = k.status_pool.submit(k._prepare_mounts, p, st)
    for c in p["spec"]["containers"]:
        assert k._mounts(st, p, c, init=False)[0][1] == "/etc/x"
    assert k.volumes.calls == ["a", "b"]  # made once, in the background
    st.restarts["a"] = 1  # a restart makes them again
    k._mounts(st, p, p["spec"]["containers"][0], init=False)
    assert k.volumes.calls == ["a", "b", "a"]


def test_mounts_that_failed_in_the_background_fail_the_container_start(kubelet):
    k = kubelet
    k.volumes = Volumes(fail=True)
    p, st = pod(), state()
    k.prepared["u1"] = k.status_pool.submit(k._prepare_mounts, p, st)
    with pytest.raises(VolumeError, match="not found"):
        k._mounts(st, p, p["spec"]["containers"][0], init=False)
    assert k.volumes.calls == ["a", "a"]  # the background try, then the container's own
