"""The lab's readiness wait on calico-node's /status tunnels (testbed.lab.supervisor.tunnels_settled)."""

from __future__ import annotations

import pytest

from testbed.lab.supervisor import tunnels_settled

pytestmark = pytest.mark.unit


def test_settled_only_once_the_pass_is_done_and_felix_shows_the_address():
    done = {"done": True, "ipip": "192.168.9.0", "vxlan": None}
    assert not tunnels_settled({"tunnels": {**done, "done": False}, "tunnel_address": None})
    assert not tunnels_settled({"tunnels": done, "tunnel_address": None})  # Felix has not applied it yet
    assert not tunnels_settled({"tunnels": done, "tunnel_address": "192.168.1.0"})
    assert tunnels_settled({"tunnels": done, "tunnel_address": "192.168.9.0"})


def test_vxlan_is_checked_on_vxlan_calico_and_no_tunnel_needs_nothing():
    vx = {"done": True, "ipip": None, "vxlan": "192.168.9.64"}
    assert not tunnels_settled({"tunnels": vx, "vxlan": None})
    assert not tunnels_settled({"tunnels": vx, "vxlan": {"address": None}})
    assert tunnels_settled({"tunnels": vx, "vxlan": {"address": "192.168.9.64"}})
    assert tunnels_settled({"tunnels": {"done": True, "ipip": None, "vxlan": None}})
    assert tunnels_settled({"tunnel_address": None})  # no allocator in this calico-node
