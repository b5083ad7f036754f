"""LPM table of the userspace tunnel (which node does an inner destination go to)."""

import socket

import pytest

from agent.felix.lpm import LpmTable

pytestmark = pytest.mark.unit


def a(ip: str) -> bytes:
    return socket.inet_aton(ip)


def test_longest_prefix_wins():
    t = LpmTable([("192.168.0.0/16", "172.30.0.1"), ("192.168.1.0/26", "172.30.0.11"),
                  ("192.168.1.5/32", "172.30.0.12")])
    assert t.lookup(a("192.168.1.5")) == "172.30.0.12"
    assert t.lookup(a("192.168.1.6")) == "172.30.0.11"
    assert t.lookup(a("192.168.1.64")) == "172.30.0.1"
    assert t.lookup(a("10.0.0.1")) is None
    assert t.lookup(a("10.0.0.1")) is None  # memoised miss stays a miss
    assert len(t) == 3


def test_default_route_and_non_canonical_prefix():
    t = LpmTable([("0.0.0.0/0", "172.30.0.1"), ("192.168.1.9/26", "172.30.0.11")])
    assert t.lookup(a("192.168.1.63")) == "172.30.0.11"
    assert t.lookup(a("8.8.8.8")) == "172.30.0.1"


def test_bad_route_is_rejected():
    with pytest.raises(ValueError):
        LpmTable([("192.168.1.0/33", "172.30.0.1")])
    with pytest.raises(ValueError):
        LpmTable([("192.168.1.0/24", "gw")])
