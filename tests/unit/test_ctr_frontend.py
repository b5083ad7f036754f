"""The node's ctr front end: tables in ctr's format from the kubelet's pod states."""

import pytest

from testbed.k8s import ctr
from testbed.k8s.runtime import PodState

pytestmark = pytest.mark.unit

POD = PodState(uid="u", namespace="default", name="web", sandbox_id="s", netns="/run/netns/cni-x",
               pids={"nginx": 4242}, container_ids={"nginx": "abc123"},
               images={"nginx": "docker.io/library/nginx:latest"}, ticks={"nginx": 7})


def test_task_list_rows_and_layout():
    stopped = PodState(uid="v", namespace="default", name="b", sandbox_id="t", netns="", pids={"c": 99},
                       container_ids={"c": "def456"})
    rows = ctr.tasks([POD, stopped], alive=lambda pid, ticks: pid == 4242 and ticks == 7)
    assert rows == [("abc123", 4242, "RUNNING"), ("def456", 99, "STOPPED")]
    rows = rows[:1]
    assert ctr.table(("TASK", "PID", "STATUS"), rows).splitlines() == [
        "TASK      PID     STATUS", "abc123    4242    RUNNING"]


def test_containers_and_namespace_parsing():
    assert ctr.containers([POD]) == [("abc123", "docker.io/library/nginx:latest", "io.containerd.runc.v2")]
    assert ctr._parse(["-n", "k8s.io", "task", "ls"]) == ("k8s.io", ["task", "ls"])
    assert ctr._parse(["--namespace=x", "c", "list"]) == ("x", ["c", "list"])
