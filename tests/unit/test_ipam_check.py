"""Unit tests of ipam.check.build_report (the logic behind ``calicoctl ipam check``)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from ipam.block import Block, Handle, host_affinity
from ipam.check import build_report

pytestmark = pytest.mark.unit

IP = IPv4Address
NET = IPv4Network("10.0.0.0/28")


def _state():
    b = Block.new(NET, host_affinity("n1"))
    b.auto_assign(1, "ipip-tunnel-addr-n1", {"node": "n1", "type": "ipipTunnelAddress"})   # .0
    b.auto_assign(1, "k8s-pod-network.a", {"node": "n1", "pod": "a", "namespace": "default"})  # .1
    b.auto_assign(1, "k8s-pod-network.b", {"node": "n2", "pod": "b", "namespace": "default"})  # .2 borrowed
    handles = [(Handle("ipip-tunnel-addr-n1", {str(NET): 1}), 5), (Handle("k8s-pod-network.a", {str(NET): 1}), 6),
               (Handle("k8s-pod-network.b", {str(NET): 1}), 7)]
    nodes = [{"metadata": {"name": "n1"}, "spec": {"bgp": {"ipv4IPIPTunnelAddr": "10.0.0.0"}}}]
    weps = [{"metadata": {"name": "w-a", "namespace": "default"}, "spec": {"ipNetworks": ["10.0.0.1/32"]}},
            {"metadata": {"name": "w-b", "namespace": "default"}, "spec": {"ipNetworks": ["10.0.0.2/32"]}}]
    return b, handles, nodes, weps


def test_consistent_state_has_no_problems():
    b, handles, nodes, weps = _state()
    rep = build_report([b], [IPv4Network("10.0.0.0/24")], nodes, weps, handles, [("n1", NET, "confirmed")])
    assert rep.problems == 0, rep.problem_lines()
    assert rep.num_allocations == 3 and rep.tunnel_ips == 1 and rep.workload_ips == 2
    assert rep.good_handles == 3
    borrowed = rep.allocations[IP("10.0.0.2")][0]
    assert borrowed.borrowed and borrowed.node == "n2" and borrowed.in_use
    assert borrowed.attr_string() == "Main:k8s-pod-network.b Extra:namespace=default,node=n2,pod=b"
    doc = rep.to_report("v", "guid")
    assert doc["allocations"]["10.0.0.2"][0] == {
        "ip": "10.0.0.2", "handle": "k8s-pod-network.b", "sequenceNumber": 2, "pod": "b",
        "namespace": "default", "node": "n2", "inUse": True, "borrowed": True,
        "owners": ["Workload(default/w-b)"]}


def test_every_kind_of_problem_is_found():
    b, handles, nodes, weps = _state()
    weps[0]["spec"]["ipNetworks"] = []                                 # .1 leaks
    weps.append({"metadata": {"name": "w-c", "namespace": "x"}, "spec": {"ipNetworks": ["10.0.0.9/32"]}})
    weps.append({"metadata": {"name": "w-d", "namespace": "x"}, "spec": {"ipNetworks": ["172.16.0.1/32"]}})
    handles = [(Handle("ipip-tunnel-addr-n1", {str(NET): 2}), 5),      # count disagrees
               (Handle("k8s-pod-network.a", {str(NET): 1}), 6),
               (Handle("stale-handle", {str(NET): 1}), 8)]             # no allocation; .b missing
    affinities = [("n1", NET, "confirmed"), ("n3", IPv4Network("10.0.0.16/28"), "confirmed")]
    rep = build_report([b], [IPv4Network("10.0.0.0/24")], nodes, weps, handles, affinities)
    assert rep.leaked_ips == [IP("10.0.0.1")]
    assert rep.not_allocated == [IP("10.0.0.9")]
    assert rep.outside_pools == [IP("172.16.0.1")]
    assert rep.leaked_handles == [("stale-handle", 8)]
    assert rep.missing_handles == ["k8s-pod-network.b"]
    assert len(rep.handle_mismatches) == 1 and "ipip-tunnel-addr-n1" in rep.handle_mismatches[0]
    assert rep.other == ["affinity of n3 to 10.0.0.16/28 has no block"]
    assert rep.problems == 7
    lines = rep.problem_lines()
    assert "10.0.0.1 leaked; attrs Main:k8s-pod-network.a Extra:namespace=default,node=n1,pod=a" in lines
    assert "172.16.0.1 in use by Workload(x/w-d) is not in any active IP pool." in lines


def test_block_without_host_affinity_key_is_reported():
    b, handles, nodes, weps = _state()
    rep = build_report([b], [IPv4Network("10.0.0.0/24")], nodes, weps, handles, [])
    assert rep.other == ["block 10.0.0.0/28 is affine to n1 but that host has no affinity for it"]
