"""Pods as containerd containers (issue 17), on a 2-node lab (topologies/containers.yaml):
the walkthrough's flows on pcaps, what a user sees inside a pod and with ``ctr`` in a node,
bad input, and ``down`` leaving no daemon, shim, task, snapshot, mount or cgroup behind."""

import pytest

from tests.lab import runtime_support as rs

pytestmark = pytest.mark.lab
RUNTIME = "containerd"


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


def test_pod_is_a_containerd_container(lab):
    """`ctr -n k8s.io task list` / `containers ls` in the node show the pod's real tasks:
    the PID the pod runs as, its image, and its pause sandbox."""
    p = rs.pod(lab, "k8s-w1")
    pid = rs.pod_pids(p)["nginx"]
    cid = p["status"]["containerStatuses"][0]["containerID"]
    assert cid.startswith("containerd://")
    tasks = lab.in_node("k8s-w1", "ctr", "-n", "k8s.io", "task", "list")
    rows = {r.split()[0]: r.split()[1:] for r in tasks.splitlines()[1:]}
    assert rows[cid.removeprefix("containerd://")] == [str(pid), "RUNNING"], tasks
    ctrs = lab.in_node("k8s-w1", "ctr", "-n", "k8s.io", "containers", "ls")
    images = {r.split()[0]: r.split()[1] for r in ctrs.splitlines()[1:]}
    assert images[cid.removeprefix("containerd://")].startswith("docker.io/calicolab/nginx:"), ctrs
    assert any(i.startswith("docker.io/calicolab/pause:") for i in images.values()), ctrs
    # the pod's sandbox: a pause task whose netns the nginx container shares
    sandbox = [t for t, (tpid, _) in rows.items() if t != cid.removeprefix("containerd://")
               and images.get(t, "").startswith("docker.io/calicolab/pause:")
               and lab.in_node("k8s-w1", "ip", "netns", "identify", tpid).strip()
               == p["metadata"]["annotations"]["calicolab.io/netns"]]
    assert len(sandbox) == 1, tasks
    # the pod's netns is the sandbox's, named as containerd's CRI names it
    ns = p["metadata"]["annotations"]["calicolab.io/netns"]
    assert ns.startswith("cni-") and ns in rs.node_netns(lab, "k8s-w1")
    assert lab.in_node("k8s-w1", "ip", "netns", "identify", str(pid)).strip() == ns


def test_inside_a_pod(lab):
    rs.check_inside_pod(lab, "k8s-w1")


def test_access_log_in_kubectl_logs(lab):
    rs.check_access_log(lab, "k8s-w1", "k8s-w0")


def test_two_containers_exec_c_and_describe(lab):
    rs.check_two_containers(lab, RUNTIME)


def test_bad_input(lab):
    rs.check_bad_input(lab, RUNTIME)


def test_down_leaves_nothing(lab):
    pids = rs.container_pids(lab)
    assert pids and rs.runtime_processes(lab.lab)
    lab.down()
    rs.check_nothing_left(lab.lab, pids)


def test_clean_after_kill9_leaves_nothing():
    rs.check_cleanup(RUNTIME, "kill9")
