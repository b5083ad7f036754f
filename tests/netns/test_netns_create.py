"""kernel.netns.create makes a pod sandbox's namespace in-process, as ``ip netns add`` then
``ip link set lo up`` would: a new namespace bound at the path with ``lo`` up, the caller's
threads left where they were, and nothing left behind when it fails."""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import pytest

from kernel import netns
from testbed.k8s import runtime

pytestmark = pytest.mark.netns


def test_create_binds_a_new_namespace_with_lo_up(tmp_path):
    path = str(tmp_path / "netns" / f"cni-{uuid.uuid4()}")
    before = os.stat("/proc/thread-self/ns/net").st_ino
    netns.create(path)
    try:
        assert os.stat("/proc/thread-self/ns/net").st_ino == before  # the caller stayed home
        assert os.stat(path).st_ino != before                     # a namespace of its own
        out = subprocess.run(["nsenter", f"--net={path}", "ip", "-j", "link", "show", "lo"],
                             capture_output=True, text=True, check=True).stdout
        (lo,) = json.loads(out)
        assert "UP" in lo["flags"] and lo["operstate"] == "UNKNOWN", lo
        links = json.loads(subprocess.run(["nsenter", f"--net={path}", "ip", "-j", "link"],
                                          capture_output=True, text=True, check=True).stdout)
        assert [ln["ifname"] for ln in links] == ["lo"]
        with pytest.raises(OSError, match="creating network namespace .*File exists"):
            netns.create(path)  # the path is taken: refused, the namespace there kept
        assert os.path.exists(path)
    finally:
        runtime.remove_netns(path)
    assert not os.path.exists(path)


def test_create_failure_names_the_path_and_leaves_nothing(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with pytest.raises(runtime.SandboxError, match=f"creating network namespace {blocked}/ns"):
        runtime.create_netns(str(blocked / "ns"))
