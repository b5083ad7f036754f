"""The node's ctr front end: tables in ctr's format from pod objects."""

import json

import pytest

from testbed.k8s import ctr

pytestmark = pytest.mark.unit

POD = {
    "metadata": {"annotations": {"calicolab.io/pids": json.dumps({"nginx": 4242})}},
    "status": {"containerStatuses": [{"name": "nginx", "containerID": "containerd://abc123",
                                      "imageID": "docker.io/library/nginx:latest",
                                      "state": {"running": {}}}]},
}


def test_task_list_rows_and_layout():
    rows = ctr.tasks([POD, {"status": {}}])
    assert rows == [("abc123", 4242, "RUNNING")]
    assert ctr.table(("TASK", "PID", "STATUS"), rows).splitlines() == [
        "TASK      PID     STATUS", "abc123    4242    RUNNING"]


def test_containers_and_namespace_parsing():
    assert ctr.containers([POD]) == [("abc123", "docker.io/library/nginx:latest", "io.containerd.runc.v2")]
    assert ctr._parse(["-n", "k8s.io", "task", "ls"]) == ("k8s.io", ["task", "ls"])
    assert ctr._parse(["--namespace=x", "c", "list"]) == ("x", ["c", "list"])
