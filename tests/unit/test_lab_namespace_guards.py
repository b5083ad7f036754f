"""A lab never names, configures or cleans the machine's own namespaces: the supervisor's
check before it attaches or opens a host's netns, and clean's refusal to collect the members
of a "lab" netns that is the machine's (every process of the machine)."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.lab.clean import _netns_pids
from testbed.lab.supervisor import check_own_namespace

pytestmark = pytest.mark.unit


def test_the_machines_own_netns_is_refused():
    with pytest.raises(RuntimeError, match=r"^k8s-m \(pid 1\): its net namespace is the machine's own"):
        check_own_namespace("/proc/self/ns/net", "k8s-m (pid 1)")
    with pytest.raises(RuntimeError, match="mnt namespace is the machine's own"):
        check_own_namespace("/proc/thread-self/ns/mnt", "k8s-m", kind="mnt")


def test_clean_finds_no_member_of_a_name_for_the_machines_netns():
    assert _netns_pids(Path("/proc/self/ns/net")) == set()
    assert _netns_pids(Path("/nonexistent/netns")) == set()
