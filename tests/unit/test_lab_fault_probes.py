"""Reading ping's output into answered and lost probes (testbed.lab.faults, pure)."""

from __future__ import annotations

import pytest

from testbed.lab.faults import duplicates, lost_probes

pytestmark = pytest.mark.unit


def reply(t: float, seq: int) -> str:
    return f"[{t:.6f}] 64 bytes from 192.168.1.5: icmp_seq={seq} ttl=62 time=0.210 ms"


def no_answer(t: float, seq: int) -> str:
    return f"[{t:.6f}] no answer yet for icmp_seq={seq}"


def test_lost_probes_are_the_unanswered_ones_before_the_last_reply():
    lines = ["PING 192.168.1.5 (192.168.1.5) 56(84) bytes of data.",
             reply(100.0, 1), reply(100.1, 2), no_answer(100.3, 3), no_answer(100.4, 4),
             reply(100.45, 4),  # a late reply: not lost
             reply(100.5, 5), no_answer(100.7, 6)]  # 6 is still in flight: not counted
    assert lost_probes(lines) == (4, 1, [100.3])


def test_nothing_answered_counts_nothing_lost_yet():
    assert lost_probes([no_answer(1.0, 1), no_answer(1.1, 2)]) == (0, 0, [])


def test_duplicates():
    assert duplicates(["a", "b", "a", "c", "b"]) == ["a", "b"]
    assert duplicates([]) == []
