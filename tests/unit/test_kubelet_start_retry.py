"""A container that could not be created is tried again, as a kubelet's pod worker does: its
waiting reason (CreateContainerConfigError, ImagePullBackOff, ...) stays in the pod's status
until a try starts it. A ConfigMap, Secret or ServiceAccount made a moment after the pod (an
operator's rendering, ``kubectl apply`` of a namespace and its pod) must not leave the pod
waiting forever.

The kubelet's container creation and its clock are replaced; nothing is started."""

from __future__ import annotations

import pytest

from testbed.k8s import kubelet as kmod
from testbed.k8s.kubelet import Kubelet
from testbed.k8s.podstatus import ContainerInfo
from testbed.k8s.runtime import PodState

pytestmark = pytest.mark.unit

NODE = "w1"
POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
       "spec": {"nodeName": NODE, "containers": [{"name": "main", "image": "busybox"}]}}


class View:
    client = None

    def event(self, *args, **kwargs) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def kubelet(tmp_path, monkeypatch):
    clock = Clock()
    monkeypatch.setattr(kmod.time, "monotonic", clock)
    k = Kubelet(View(), NODE, "172.30.0.12", cni_conf_dir=str(tmp_path / "net.d"),
                netns_dir=str(tmp_path / "netns"), root_dir=str(tmp_path / "root"), workers=1)
    state = PodState(uid="u1", namespace="default", name="p", sandbox_id="s1", netns="", node=NODE, lab="")
    k.states["u1"] = state
    outcomes: list[ContainerInfo] = []

    def create(st, pod, c, init):
        info = outcomes.pop(0)
        if info.running:
            st.pids[c["name"]] = 4242
        return info

    monkeypatch.setattr(k, "_create_container", create)
    yield k, state, outcomes, clock
    k.pool.shutdown(wait=True)


def failed(reason: str, message: str) -> ContainerInfo:
    return ContainerInfo("main", "busybox", waiting_reason=reason, waiting_message=message)


@pytest.mark.parametrize("reason, message, delays", [
    # the kubelet's volume manager and pod worker: 1 s doubling to 10 s
    ("CreateContainerConfigError", 'configmap "colors" not found', [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]),
    # the kubelet's image back-off: 10 s doubling to 5 min
    ("ImagePullBackOff", 'Back-off pulling image "nope"', [10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]),
])
def test_a_failed_start_is_shown_and_retried_with_backoff(kubelet, reason, message, delays):
    k, state, outcomes, clock = kubelet
    c = POD["spec"]["containers"][0]
    seen = []
    for _ in delays:
        outcomes.append(failed(reason, message))
        k._start_container(state, POD, c)
        seen.append(k.start_failures[("u1", "main")][2] - clock.now)
    assert seen == delays
    info = k._infos(state, POD)[0]
    assert (info.waiting_reason, info.waiting_message) == (reason, message)


def test_check_processes_submits_the_retry_when_due_and_a_start_clears_the_error(kubelet, monkeypatch):
    k, state, outcomes, clock = kubelet
    c = POD["spec"]["containers"][0]
    tries: list[tuple[str, str]] = []
    monkeypatch.setattr(k, "_submit", lambda uid, fn, *args: tries.append(args))
    outcomes.append(failed("CreateContainerConfigError", 'secret "certs" not found'))
    k._start_container(state, POD, c)
    k.check_processes()
    assert tries == []  # not due yet
    clock.now += 1.0
    k.check_processes()
    k.check_processes()  # submitted once: not due again until that try sets the next time
    assert tries == [("u1", "main")]
    outcomes.append(ContainerInfo("main", "busybox", running=True))
    k._start_container(state, POD, c)
    assert k.start_failures == {}
    assert k._infos(state, POD)[0].waiting_reason is None


def test_init_containers_are_left_to_their_own_loop(kubelet):
    k, state, outcomes, _clock = kubelet
    outcomes.append(failed("CreateContainerConfigError", 'configmap "x" not found'))
    k._start_container(state, POD, {"name": "init", "image": "busybox"}, init=True)
    assert k.start_failures == {}
