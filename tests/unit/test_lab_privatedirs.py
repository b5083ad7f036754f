"""testbed.lab.privatedirs: a node's private directories as system calls, in the order the
node's shell ran them (plan), and applied to a scratch tree (apply, without mounts)."""

from __future__ import annotations

import os

import pytest

from testbed.lab import privatedirs
from testbed.lab.privatedirs import plan

pytestmark = pytest.mark.unit


def test_plan_binds_backing_dirs_and_mounts_tmpfs():
    ops = plan([("/etc/kubernetes", "/run/calicolab/l/nodes/m/etc-kubernetes"), "/run/netns"], None)
    assert ops == [
        ("mkdir", "/run/calicolab/l/nodes/m/etc-kubernetes", None), ("mkdir", "/etc/kubernetes", None),
        ("bind", "/run/calicolab/l/nodes/m/etc-kubernetes", "/etc/kubernetes"),
        ("mkdir", "/run/netns", None), ("tmpfs", "tmpfs", "/run/netns", None),
    ]


def test_plan_hides_the_state_dir_and_binds_back_what_the_node_keeps():
    """Each kept directory is opened before the tmpfs covers the root, and bound back from
    its descriptor once covered (the path itself then names the empty tmpfs)."""
    ops = plan([], ("/run/calicolab", ["/run/calicolab/.pycache", "/run/calicolab/l/etcd"]))
    assert ops == [
        ("mkdir", "/run/calicolab/.pycache", 0o700), ("open", 0, "/run/calicolab/.pycache"),
        ("mkdir", "/run/calicolab/l/etcd", 0o700), ("open", 1, "/run/calicolab/l/etcd"),
        ("tmpfs", "calicolab-private", "/run/calicolab", "mode=0755,size=1m"),
        ("mkdir", "/run/calicolab/.pycache", None), ("bindfd", 0, "/run/calicolab/.pycache"), ("close", 0),
        ("mkdir", "/run/calicolab/l/etcd", None), ("bindfd", 1, "/run/calicolab/l/etcd"), ("close", 1),
    ]
    assert plan([], None) == []


def test_apply_makes_directories_and_names_the_failing_step(tmp_path, monkeypatch):
    mounts: list[tuple] = []
    monkeypatch.setattr(privatedirs, "mount", lambda source, target, fstype=None, flags=0, data=None, what="":
                        mounts.append((source, target, fstype, flags, data)))
    keep = tmp_path / "state" / "keep"
    privatedirs.apply([("mkdir", str(keep), 0o700), ("open", 0, str(keep)),
                       ("tmpfs", "calicolab-private", str(tmp_path / "state"), "size=1m"),
                       ("bindfd", 0, str(keep)), ("close", 0), ("bind", str(keep), str(tmp_path / "b"))])
    assert keep.is_dir() and (keep.stat().st_mode & 0o777) == 0o700
    assert mounts[0] == ("calicolab-private", str(tmp_path / "state"), "tmpfs", 0, "size=1m")
    assert mounts[1][0].startswith("/proc/self/fd/") and mounts[1][1:] == (str(keep), None, privatedirs.MS_BIND, None)
    assert mounts[2] == (str(keep), str(tmp_path / "b"), None, privatedirs.MS_BIND, None)
    fds = set(os.listdir("/proc/self/fd"))

    def refuse(*_a):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(privatedirs, "mount", refuse)
    with pytest.raises(OSError, match=r"mount --bind .*/keep /x: Operation not permitted"):
        privatedirs.apply([("open", 0, str(keep)), ("bind", str(keep), "/x")])
    assert set(os.listdir("/proc/self/fd")) == fds  # the opened descriptor was closed
