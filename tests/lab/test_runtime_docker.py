"""Pods as Docker containers through the Docker SDK (issue 17), on a 2-node lab
(topologies/containers.yaml with ``--runtime docker``): the walkthrough's flows on pcaps,
what a user sees inside a pod and with ``docker ps`` in a node (cri-dockerd's names), bad
input, and ``calicolab clean`` after ``kill -9`` of every lab process leaving nothing."""

import pytest

from tests.lab import runtime_support as rs

pytestmark = pytest.mark.lab
RUNTIME = "docker"


@pytest.fixture(scope="module")
def lab(request):
    yield from rs.bring_up(request, RUNTIME)


def test_same_node_flow(lab):
    lab.check_same_node(rs.flow(lab, "same-node"))


def test_cross_node_flow_is_ipip(lab):
    lab.check_cross_node(rs.flow(lab, "cross-node"))


def test_pod_to_internet_is_masqueraded(lab):
    lab.check_internet(rs.flow(lab, "internet"))


def test_service_is_dnatted(lab):
    lab.check_service(rs.flow(lab, "service"))


def test_pod_is_a_docker_container(lab):
    """`docker ps` in the node lists the pod's sandbox and container under cri-dockerd's
    names, the container's PID is the pod's, and it was started with network none."""
    p = rs.pod(lab, "k8s-w1")
    uid = p["metadata"]["uid"]
    pid = rs.pod_pids(p)["nginx"]
    cid = p["status"]["containerStatuses"][0]["containerID"]
    assert cid.startswith("docker://")
    names = [n for n in lab.in_node("k8s-w1", "docker", "ps", "--format", "{{.Names}}").split() if uid in n]
    assert sorted(names) == sorted([f"k8s_nginx_k8s-w1_default_{uid}_0", f"k8s_POD_k8s-w1_default_{uid}_0"]), names
    fmt = "{{.State.Pid}} {{.HostConfig.NetworkMode}}"
    inspect = lab.in_node("k8s-w1", "docker", "inspect", "-f", fmt, cid.removeprefix("docker://")).split()
    sandbox = lab.in_node("k8s-w1", "docker", "inspect", "-f", fmt, f"k8s_POD_k8s-w1_default_{uid}_0").split()
    assert inspect[0] == str(pid) and inspect[1].startswith("container:"), inspect
    assert sandbox[1] == "none", sandbox
    # dockerd made no bridge and no NAT rules in the node: the pod is wired by Calico's CNI only
    assert "docker0" not in lab.in_node("k8s-w1", "ip", "link")
    assert "DOCKER" not in lab.in_node("k8s-w1", "iptables-save")


def test_inside_a_pod(lab):
    rs.check_inside_pod(lab, "k8s-w1")


def test_access_log_in_kubectl_logs(lab):
    rs.check_access_log(lab, "k8s-w1", "k8s-w0")


def test_two_containers_exec_c_and_describe(lab):
    rs.check_two_containers(lab, RUNTIME)


def test_bad_input(lab):
    rs.check_bad_input(lab, RUNTIME)


def test_clean_after_kill9_leaves_nothing(lab):
    pids = rs.container_pids(lab)
    assert pids and rs.runtime_processes(lab.lab)
    assert rs.kill9_everything(lab.lab) > 0
    rs.clean(lab.lab)
    rs.check_nothing_left(lab.lab, pids)


def test_down_leaves_nothing():
    rs.check_cleanup(RUNTIME, "down")
