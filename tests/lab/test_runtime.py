"""Pods as containerd containers and as Docker containers through the Docker SDK (issue 17):
the same tests on a 2-node lab (topologies/containers.yaml) per runtime, one lab at a time
(the module fixture is parametrized over the runtime; pytest runs a runtime's tests together).
The walkthrough's flows on pcaps, what a user sees inside a pod and with the runtime's own
client in a node (``ctr``; ``docker ps`` with cri-dockerd's names), bad input, and both ends
of a lab, ``down`` and ``calicolab clean`` after ``kill -9`` of every lab process, leaving no
daemon, shim, task, snapshot, mount or cgroup behind."""

import pytest

from tests.lab import runtime_support as rs
from tests.lab.lab_helpers import flow

pytestmark = pytest.mark.lab

# How each runtime's labs end: (the module's walkthrough lab, a fresh one-pod lab). Between
# them both ways are proven on both runtimes, each once on the lab that ran everything.
ENDINGS = {"containerd": ("down", "kill9"), "docker": ("kill9", "down")}


@pytest.fixture(scope="module", params=rs.RUNTIMES)
def lab(request):
    yield from rs.runtime_lab(request, request.param)


def test_same_node_flow(lab):
    lab.check_same_node(flow(lab, "same-node"))


def test_cross_node_flow_is_ipip(lab):
    lab.check_cross_node(flow(lab, "cross-node"))


def test_pod_to_internet_is_masqueraded(lab):
    lab.check_internet(flow(lab, "internet"))


def test_service_is_dnatted(lab):
    lab.check_service(flow(lab, "service"))


def test_pod_is_a_containerd_or_docker_container(lab):
    """[containerd]: ``ctr task list``/``containers ls`` show the pod's tasks, PID, image and
    pause sandbox; [docker]: ``docker ps`` shows cri-dockerd's names, network none, no docker0."""
    check = {"containerd": rs.check_pod_is_a_containerd_container,
             "docker": rs.check_pod_is_a_docker_container}[lab.runtime]
    check(lab)


def test_inside_a_pod(lab):
    rs.check_inside_pod(lab, "k8s-w1")


def test_access_log_in_kubectl_logs(lab):
    rs.check_access_log(lab, "k8s-w1", "k8s-w0")


def test_two_containers_exec_c_and_describe(lab):
    rs.check_two_containers(lab, lab.runtime)


def test_bad_input(lab):
    rs.check_bad_input(lab, lab.runtime)


def test_walkthrough_lab_down_or_clean_after_kill9_leaves_nothing(lab):
    """The module's lab ends: [containerd] by ``down``, [docker] by ``kill -9`` then ``clean``."""
    rs.end_lab(lab, ENDINGS[lab.runtime][0])


def test_fresh_lab_clean_after_kill9_or_down_leaves_nothing(lab):
    """A fresh one-pod lab ends the other way: [containerd] ``kill -9`` then ``clean``, [docker]
    ``down`` (after the module's lab has ended)."""
    rs.check_cleanup(lab.runtime, ENDINGS[lab.runtime][1])
