"""A container with a port that does not listen within the kubelet's start-up window is
written not ready; the kubelet keeps checking, and the pod turns Ready once it listens (a
real kubelet keeps probing). Before, readiness was decided once and such a pod (a slow
Typha under load) stayed not ready for good.

The kubelet runs against an injected API view; the runtime's ``listening``/``alive`` checks
are replaced, nothing touches the kernel."""

from __future__ import annotations

import pytest

from testbed.k8s import kubelet as kubelet_mod
from testbed.k8s.kubelet import Kubelet
from testbed.k8s.podstatus import ContainerInfo
from testbed.k8s.runtime import PodState
from tests.unit.test_kubelet_pod_gone import NODE, View
from tests.unit.test_kubelet_pod_gone import Api as PodApi

pytestmark = pytest.mark.unit


@pytest.fixture
def kubelet(tmp_path, monkeypatch):
    k = Kubelet(View(PodApi()), NODE, "172.30.0.12", cni_conf_dir=str(tmp_path / "net.d"),
                netns_dir=str(tmp_path / "netns"), root_dir=str(tmp_path / "root"), workers=1)
    listening: dict[int, bool] = {}
    monkeypatch.setattr(kubelet_mod.runtime, "listening", lambda pid, port: listening.get(pid, False))
    monkeypatch.setattr(kubelet_mod.runtime, "alive", lambda pid: True)
    monkeypatch.setattr(k, "_alive", lambda uid, name, pid: True)
    submitted: list[tuple] = []
    monkeypatch.setattr(k, "_submit", lambda uid, fn, *args: submitted.append((fn.__name__, *args)))
    yield k, listening, submitted
    k.pool.shutdown(wait=True)


def test_a_late_listener_turns_ready_when_it_listens(kubelet):
    k, listening, submitted = kubelet
    state = PodState(uid="u1", namespace="calico-system", name="calico-typha-x", sandbox_id="s", netns="",
                     node=NODE, pids={"typha": 101, "side": 102})
    k.states["u1"] = state
    infos = [ContainerInfo("typha", "calico/typha", running=True), ContainerInfo("side", "busybox", running=True)]
    infos[0].port = 5473
    infos[1].port, infos[1].ready = None, True
    k._wait_ready(state, {"metadata": {"uid": "u1"}}, infos, timeout=0.05)
    assert infos[0].ready is False and k.unready == {"u1": {"typha": 5473}}
    k._check_late_listeners()
    assert submitted == [] and k.unready == {"u1": {"typha": 5473}}  # still not listening
    listening[101] = True
    k._check_late_listeners()
    assert submitted == [("_resync_status", "u1")] and k.unready == {}
    k._check_late_listeners()
    assert len(submitted) == 1  # written once


def test_listening_in_the_window_or_a_pod_gone_leaves_nothing_to_check(kubelet):
    k, listening, submitted = kubelet
    state = PodState(uid="u2", namespace="default", name="web", sandbox_id="s", netns="", node=NODE,
                     pids={"nginx": 201})
    k.states["u2"] = state
    listening[201] = True
    info = ContainerInfo("nginx", "nginx", running=True)
    info.port = 80
    k._wait_ready(state, {"metadata": {"uid": "u2"}}, [info], timeout=0.05)
    assert info.ready is True and k.unready == {}
    k.unready["u3"] = {"c": 80}  # a pod the kubelet no longer runs
    k._check_late_listeners()
    assert k.unready == {} and submitted == []
